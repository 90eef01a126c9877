/*
 * Unit tests of the simulator's provisioning template engine (template.h): every intrinsic
 * function with its errors, parameters, mappings, each resource type and its
 * OverrideSettings, DeviceConfiguration, the example templates under templates/, and a
 * sweep of malformed and type-confused documents that must fail cleanly.
 *
 * Templates are written with single quotes for readability; jparse() turns them into
 * double quotes before parsing.
 */
#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "template.h"

#ifndef TEMPLATES_DIR
#error "TEMPLATES_DIR must point at tests/iotsim/templates"
#endif

#define CERT_ID "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"

#define BASE_PARAMS                                                                                \
	"'Parameters': {'Serial': {'Type': 'String'},"                                             \
	" 'Sku': {'Type': 'String', 'Default': 'GW-100-EU'},"                                      \
	" 'Empty': {'Type': 'String', 'Default': ''},"                                             \
	" 'AWS::IoT::Certificate::Id': {'Type': 'String'}}"
#define BASE_MAPPINGS                                                                              \
	"'Mappings': {'Rev': {'A': {'Group': 'g-a', 'List': ['x', 'y'], 'Num': 7},"                \
	" 'B2': {'Group': 'g-b'}}}"
#define BASE_REQUEST "{'Serial': 'S1'}"

static json_object *jparse(const char *text)
{
	char *copy = strdup(text);
	json_object *o;

	assert_non_null(copy);
	for (char *p = copy; *p; p++)
		if (*p == '\'')
			*p = '"';
	o = json_tokener_parse(copy);
	if (!o && strcmp(copy, "null") != 0)
		fail_msg("test input does not parse: %s", copy);
	free(copy);
	return o;
}

static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	assert_true(n >= 0);
	return s;
}

static char *dc_template(const char *expr)
{
	return format("{" BASE_PARAMS ", " BASE_MAPPINGS
	              ", 'Resources': {}, 'DeviceConfiguration': {'v': %s}}",
	              expr);
}

static char *res_template(const char *resources)
{
	return format("{" BASE_PARAMS ", " BASE_MAPPINGS ", 'Resources': %s}", resources);
}

static json_object *load(const char *name)
{
	char path[4096];
	json_object *o;

	snprintf(path, sizeof(path), "%s/%s", TEMPLATES_DIR, name);
	o = json_object_from_file(path);
	if (!o)
		fail_msg("cannot load %s: %s", path, json_util_get_last_err());
	return o;
}

/* Evaluate; on success the result, on failure assert the message holds needle. */
static json_object *evaluate(const char *tmpl_text, const char *request, const char *cert_id)
{
	json_object *tmpl = jparse(tmpl_text), *params = request ? jparse(request) : NULL;
	json_object *out = NULL;
	char err[512] = "";
	int r;

	r = tmpl_evaluate(tmpl, params, cert_id, &out, err, sizeof(err));
	if (r < 0)
		fail_msg("tmpl_evaluate failed (%d): %s\ntemplate: %s", r, err, tmpl_text);
	assert_non_null(out);
	json_object_put(tmpl);
	json_object_put(params);
	return out;
}

static void expect_error(const char *tmpl_text, const char *request, const char *needle)
{
	json_object *tmpl = jparse(tmpl_text), *params = request ? jparse(request) : NULL;
	json_object *sentinel = (json_object *)&sentinel, *out = sentinel;
	char err[512] = "";
	int r;

	r = tmpl_evaluate(tmpl, params, CERT_ID, &out, err, sizeof(err));
	if (r != -EINVAL)
		fail_msg("expected -EINVAL, got %d for %s", r, tmpl_text);
	assert_ptr_equal(out, sentinel); /* ret is written only on success */
	if (!strstr(err, needle))
		fail_msg("expected '%s' in the error '%s'", needle, err);
	json_object_put(tmpl);
	json_object_put(params);
}

/* A static error: tmpl_validate rejects it and so does tmpl_evaluate. */
static void expect_invalid(const char *tmpl_text, const char *needle)
{
	json_object *tmpl = jparse(tmpl_text);
	char err[512] = "";
	int r = tmpl_validate(tmpl, err, sizeof(err));

	if (r != -EINVAL)
		fail_msg("expected tmpl_validate -EINVAL, got %d for %s", r, tmpl_text);
	if (!strstr(err, needle))
		fail_msg("expected '%s' in the validation error '%s'", needle, err);
	json_object_put(tmpl);
	expect_error(tmpl_text, BASE_REQUEST, needle);
}

static void expect_valid(const char *tmpl_text)
{
	json_object *tmpl = jparse(tmpl_text);
	char err[512] = "";

	if (tmpl_validate(tmpl, err, sizeof(err)) != 0)
		fail_msg("tmpl_validate rejected a valid template: %s\n%s", err, tmpl_text);
	json_object_put(tmpl);
}

static const char *str_at(json_object *o, const char *k1, const char *k2)
{
	json_object *v;

	if (!json_object_object_get_ex(o, k1, &v))
		fail_msg("no key %s", k1);
	if (k2 && !json_object_object_get_ex(v, k2, &v))
		fail_msg("no key %s.%s", k1, k2);
	if (!json_object_is_type(v, json_type_string))
		fail_msg("%s.%s is not a string but %s", k1, k2 ? k2 : "",
		         json_object_to_json_string(v));
	return json_object_get_string(v);
}

static bool is_null_at(json_object *o, const char *k1, const char *k2)
{
	json_object *v;

	if (!json_object_object_get_ex(o, k1, &v))
		fail_msg("no key %s", k1);
	if (k2 && !json_object_object_get_ex(v, k2, &v))
		fail_msg("no key %s.%s", k1, k2);
	return v == NULL;
}

static void expect_dc(const char *expr, const char *want)
{
	char *text = dc_template(expr);
	json_object *out = evaluate(text, BASE_REQUEST, CERT_ID);

	assert_string_equal(str_at(out, "deviceConfiguration", "v"), want);
	json_object_put(out);
	free(text);
}

static void expect_dc_error(const char *expr, const char *needle)
{
	char *text = dc_template(expr);

	expect_error(text, BASE_REQUEST, needle);
	free(text);
}

static void expect_dc_invalid(const char *expr, const char *needle)
{
	char *text = dc_template(expr);

	expect_invalid(text, needle);
	free(text);
}

static void expect_res_error(const char *resources, const char *needle)
{
	char *text = res_template(resources);

	expect_error(text, BASE_REQUEST, needle);
	free(text);
}

static void expect_res_invalid(const char *resources, const char *needle)
{
	char *text = res_template(resources);

	expect_invalid(text, needle);
	free(text);
}

static json_object *evaluate_resources(const char *resources)
{
	char *text = res_template(resources);
	json_object *out = evaluate(text, BASE_REQUEST, CERT_ID);

	free(text);
	return out;
}

/* ---------------------------------------------------------------------------------------- */
/* The example templates                                                                    */

static json_object *evaluate_file(const char *name, const char *request, const char *cert_id)
{
	json_object *tmpl = load(name), *params = request ? jparse(request) : NULL, *out = NULL;
	char err[512] = "";

	assert_int_equal(tmpl_validate(tmpl, err, sizeof(err)), 0);
	if (tmpl_evaluate(tmpl, params, cert_id, &out, err, sizeof(err)) != 0)
		fail_msg("%s: %s", name, err);
	json_object_put(tmpl);
	json_object_put(params);
	return out;
}

static void test_gateway_template(void **state)
{
	json_object *out = evaluate_file(
	    "gateway.json", "{'SerialNumber': 'GW-0042', 'DeviceLocation': 'lab'}", CERT_ID);
	json_object *groups, *policies;

	assert_string_equal(str_at(out, "thing", "ThingName"), "gw-GW-0042");
	assert_string_equal(
	    json_object_get_string(json_object_object_get(
	        json_object_object_get(json_object_object_get(out, "thing"), "AttributePayload"),
	        "location")),
	    "lab");
	assert_true(is_null_at(out, "thing", "ThingTypeName"));
	assert_true(is_null_at(out, "thing", "BillingGroup"));
	groups = json_object_object_get(json_object_object_get(out, "thing"), "ThingGroups");
	assert_true(json_object_is_type(groups, json_type_array));
	assert_int_equal(json_object_array_length(groups), 0);
	assert_string_equal(
	    json_object_get_string(json_object_object_get(
	        json_object_object_get(json_object_object_get(out, "thing"), "OverrideSettings"),
	        "AttributePayload")),
	    "MERGE");
	assert_string_equal(str_at(out, "certificate", "CertificateId"), CERT_ID);
	assert_string_equal(str_at(out, "certificate", "Status"), "ACTIVE");
	policies = json_object_object_get(out, "policies");
	assert_int_equal(json_object_array_length(policies), 1);
	assert_string_equal(str_at(json_object_array_get_idx(policies, 0), "PolicyName", NULL),
	                    "GatewayOperationalPolicy");
	assert_string_equal(str_at(out, "deviceConfiguration", "telemetryTopic"),
	                    "fleet/gw-GW-0042/telemetry");
	assert_string_equal(str_at(out, "deviceConfiguration", "location"), "lab");
	assert_string_equal(str_at(out, "deviceConfiguration", "macAddress"), "");
	assert_string_equal(str_at(out, "deviceConfiguration", "region"), "eu-west-1");
	assert_string_equal(str_at(out, "parameters", "SerialNumber"), "GW-0042");
	assert_string_equal(str_at(out, "parameters", "AWS::IoT::Certificate::Id"), CERT_ID);
	json_object_put(out);
}

static void test_gateway_defaults(void **state)
{
	json_object *out = evaluate_file(
	    "gateway.json", "{'SerialNumber': 'GW-7', 'MacAddress': '00:11:22:33:44:55'}", CERT_ID);

	assert_string_equal(str_at(out, "parameters", "DeviceLocation"), "unknown");
	assert_string_equal(str_at(out, "deviceConfiguration", "location"), "unknown");
	assert_string_equal(str_at(out, "deviceConfiguration", "macAddress"), "00:11:22:33:44:55");
	assert_string_equal(str_at(out, "deviceConfiguration", "telemetryIntervalSec"), "60");
	json_object_put(out);
}

static void test_gateway_missing_serial(void **state)
{
	json_object *tmpl = load("gateway.json"), *empty = json_object_new_object();
	json_object *sentinel = (json_object *)&sentinel, *out = sentinel;
	char err[256] = "";

	assert_int_equal(tmpl_evaluate(tmpl, NULL, CERT_ID, &out, err, sizeof(err)), -EINVAL);
	assert_ptr_equal(out, sentinel);
	assert_non_null(strstr(err, "Parameter 'SerialNumber' is required but was not provided"));
	err[0] = '\0';
	assert_int_equal(tmpl_evaluate(tmpl, empty, CERT_ID, &out, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "SerialNumber"));
	json_object_put(empty);
	json_object_put(tmpl);
}

static void test_minimal_template(void **state)
{
	json_object *out = evaluate_file("minimal.json", NULL, CERT_ID);

	assert_true(is_null_at(out, "thing", NULL));
	assert_string_equal(str_at(out, "certificate", "CertificateId"), CERT_ID);
	assert_string_equal(str_at(out, "certificate", "Status"), "ACTIVE");
	assert_int_equal(json_object_array_length(json_object_object_get(out, "policies")), 0);
	assert_string_equal(str_at(out, "deviceConfiguration", "mode"), "certificate-only");
	json_object_put(out);
}

static void test_inactive_template(void **state)
{
	json_object *out = evaluate_file("inactive.json", "{'SerialNumber': 'GW-9'}", CERT_ID);

	assert_string_equal(str_at(out, "certificate", "Status"), "INACTIVE");
	assert_string_equal(str_at(out, "thing", "ThingName"), "gw-GW-9");
	assert_string_equal(str_at(out, "deviceConfiguration", "note"),
	                    "gw-GW-9 awaits activation");
	json_object_put(out);
}

static void test_strict_fail_template(void **state)
{
	json_object *out = evaluate_file("strict-fail.json", "{'SerialNumber': 'GW-3'}", CERT_ID);
	json_object *os =
	    json_object_object_get(json_object_object_get(out, "thing"), "OverrideSettings");

	assert_string_equal(str_at(os, "AttributePayload", NULL), "FAIL");
	assert_string_equal(str_at(os, "ThingTypeName", NULL), "FAIL");
	assert_string_equal(str_at(os, "ThingGroups", NULL), "FAIL");
	os = json_object_object_get(json_object_object_get(out, "certificate"), "OverrideSettings");
	assert_string_equal(str_at(os, "Status", NULL), "FAIL");
	json_object_put(out);
}

static void test_bad_unknown_fn_template(void **state)
{
	json_object *tmpl = load("bad-unknown-fn.json"), *params = jparse("{'SerialNumber': 'x'}");
	json_object *out = NULL;
	char err[256] = "";

	assert_int_equal(tmpl_validate(tmpl, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "Unsupported intrinsic function Fn::If"));
	assert_non_null(strstr(err, "Resource 'thing'"));
	err[0] = '\0';
	assert_int_equal(tmpl_evaluate(tmpl, params, CERT_ID, &out, err, sizeof(err)), -EINVAL);
	assert_null(out);
	assert_non_null(strstr(err, "Fn::If"));
	json_object_put(params);
	json_object_put(tmpl);
}

static void test_full_template(void **state)
{
	json_object *out =
	    evaluate_file("full.json", "{'SerialNumber': 'X1', 'HardwareRev': 'B2'}", CERT_ID);
	json_object *thing = json_object_object_get(out, "thing");
	json_object *groups = json_object_object_get(thing, "ThingGroups"), *policy, *doc;

	assert_string_equal(str_at(thing, "ThingName", NULL), "gw-X1");
	assert_string_equal(str_at(thing, "AttributePayload", "hw"), "B2");
	assert_string_equal(str_at(thing, "AttributePayload", "model"), "100");
	assert_string_equal(str_at(thing, "ThingTypeName", NULL), "GatewayRevB");
	assert_int_equal(json_object_array_length(groups), 2);
	assert_string_equal(json_object_get_string(json_object_array_get_idx(groups, 0)),
	                    "gateways");
	assert_string_equal(json_object_get_string(json_object_array_get_idx(groups, 1)),
	                    "gw-rev-b");
	assert_string_equal(str_at(thing, "BillingGroup", NULL), "billing-EU");
	assert_string_equal(str_at(thing, "OverrideSettings", "ThingGroups"), "MERGE");
	assert_string_equal(str_at(out, "certificate", "Status"), "ACTIVE");
	policy = json_object_array_get_idx(json_object_object_get(out, "policies"), 0);
	doc = json_tokener_parse(str_at(policy, "PolicyDocument", NULL));
	assert_non_null(doc);
	assert_string_equal(
	    json_object_get_string(json_object_array_get_idx(
	        json_object_object_get(
	            json_object_array_get_idx(json_object_object_get(doc, "Statement"), 0),
	            "Resource"),
	        0)),
	    "arn:aws:iot:*:*:topic/fleet/gw-X1/*");
	assert_string_equal(str_at(out, "deviceConfiguration", "telemetryTopic"),
	                    "fleet/gw-X1/telemetry");
	assert_string_equal(str_at(out, "deviceConfiguration", "region"), "EU");
	assert_string_equal(str_at(out, "deviceConfiguration", "certificate"), CERT_ID);
	json_object_put(doc);
	json_object_put(out);
}

/* Every file validates, except those named bad-*, which must not. */
static void test_all_template_files(void **state)
{
	DIR *d = opendir(TEMPLATES_DIR);
	struct dirent *de;
	unsigned good = 0, bad = 0;

	assert_non_null(d);
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		json_object *tmpl;
		char err[256] = "";
		int r;

		if (len < 5 || strcmp(de->d_name + len - 5, ".json") != 0)
			continue;
		tmpl = load(de->d_name);
		r = tmpl_validate(tmpl, err, sizeof(err));
		if (strncmp(de->d_name, "bad-", 4) == 0) {
			if (r != -EINVAL || err[0] == '\0')
				fail_msg("%s was accepted", de->d_name);
			bad++;
		} else {
			if (r != 0)
				fail_msg("%s: %s", de->d_name, err);
			good++;
		}
		json_object_put(tmpl);
	}
	closedir(d);
	assert_true(good >= 5);
	assert_true(bad >= 1);
}

/* ---------------------------------------------------------------------------------------- */
/* Intrinsic functions                                                                      */

static void test_ref(void **state)
{
	expect_dc("{'Ref': 'Serial'}", "S1");
	expect_dc("{'Ref': 'Sku'}", "GW-100-EU");
	expect_dc("{'Ref': 'Empty'}", "");
	expect_dc("{'Ref': 'AWS::IoT::Certificate::Id'}", CERT_ID);
	expect_dc_invalid("{'Ref': 'Nope'}", "Ref to 'Nope', which is not a declared parameter");
	expect_dc_invalid("{'Ref': ['Serial']}", "Ref expects a parameter name");
	expect_dc_invalid("{'Ref': 'Serial', 'Extra': 1}", "Ref must be the only key");
}

static void test_ref_certificate_id(void **state)
{
	/* Undeclared, it still resolves when the service knows the certificate. */
	json_object *out = evaluate("{'Resources': {}, 'DeviceConfiguration': {'id': {'Ref': "
	                            "'AWS::IoT::Certificate::Id'}}}",
	                            NULL, "abc");

	assert_string_equal(str_at(out, "deviceConfiguration", "id"), "abc");
	assert_string_equal(str_at(out, "parameters", "AWS::IoT::Certificate::Id"), "abc");
	json_object_put(out);

	/* The service's value wins over one a device sends. */
	out = evaluate("{" BASE_PARAMS ", 'Resources': {}, 'DeviceConfiguration': {'id': {'Ref': "
	               "'AWS::IoT::Certificate::Id'}}}",
	               "{'Serial': 's', 'AWS::IoT::Certificate::Id': 'spoofed'}", "real");
	assert_string_equal(str_at(out, "deviceConfiguration", "id"), "real");
	json_object_put(out);

	/* Without a certificate id there is nothing to refer to. */
	json_object *tmpl = jparse("{'Resources': {}, 'DeviceConfiguration': {'id': {'Ref': "
	                           "'AWS::IoT::Certificate::Id'}}}");
	char err[256] = "";

	out = NULL;
	assert_int_equal(tmpl_evaluate(tmpl, NULL, NULL, &out, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "AWS::IoT::Certificate::Id"));
	json_object_put(tmpl);
}

static void test_join(void **state)
{
	expect_dc("{'Fn::Join': ['-', ['a', {'Ref': 'Serial'}, 1, true]]}", "a-S1-1-true");
	expect_dc("{'Fn::Join': ['', ['gw-', {'Ref': 'Serial'}]]}", "gw-S1");
	expect_dc("{'Fn::Join': [', ', []]}", "");
	expect_dc("{'Fn::Join': ['+', {'Fn::Split': ['-', {'Ref': 'Sku'}]}]}", "GW+100+EU");
	expect_dc("{'Fn::Join': ['/', {'Fn::FindInMap': ['Rev', 'A', 'List']}]}", "x/y");
	expect_dc_invalid("{'Fn::Join': 'abc'}", "Fn::Join expects a list of 2 arguments");
	expect_dc_invalid("{'Fn::Join': ['-']}", "Fn::Join expects a list of 2 arguments");
	expect_dc_invalid("{'Fn::Join': [{'Ref': 'Serial'}, ['a']]}",
	                  "Fn::Join delimiter must be a literal string");
	expect_dc_error("{'Fn::Join': ['-', 'abc']}", "Fn::Join argument 2 must be a list");
	expect_dc_error("{'Fn::Join': ['-', ['a', null]]}", "Fn::Join list element must be a "
	                                                    "string, not null");
	expect_dc_error("{'Fn::Join': ['-', ['a', {'k': 'v'}]]}", "Fn::Join list element");
	expect_dc_error("{'Fn::Join': ['-', ['a', ['b']]]}", "not array");
}

static void test_select(void **state)
{
	expect_dc("{'Fn::Select': [0, ['a', 'b']]}", "a");
	expect_dc("{'Fn::Select': ['1', ['a', 'b']]}", "b");
	expect_dc("{'Fn::Select': [2, {'Fn::Split': ['-', {'Ref': 'Sku'}]}]}", "EU");
	expect_dc("{'Fn::Select': [{'Fn::Select': [0, ['1']]}, ['a', 'b']]}", "b");
	expect_dc_error("{'Fn::Select': [2, ['a', 'b']]}",
	                "Fn::Select index 2 is out of range for a list of 2");
	expect_dc_error("{'Fn::Select': [0, []]}", "out of range");
	expect_dc_error("{'Fn::Select': [-1, ['a']]}", "out of range");
	expect_dc_error("{'Fn::Select': ['x', ['a']]}", "Fn::Select index 'x' is not a number");
	expect_dc_error("{'Fn::Select': ['1x', ['a', 'b']]}", "is not a number");
	expect_dc_error("{'Fn::Select': ['-1', ['a']]}", "is not a number");
	expect_dc_error("{'Fn::Select': ['99999999999999999999', ['a']]}", "is not a number");
	expect_dc_error("{'Fn::Select': [1.5, ['a', 'b']]}", "index must be a number");
	expect_dc_error("{'Fn::Select': [null, ['a']]}", "index must be a number");
	expect_dc_error("{'Fn::Select': [0, 'ab']}", "Fn::Select argument 2 must be a list");
	expect_dc_error("{'Fn::Select': [0, [null]]}", "null");
	expect_dc_invalid("{'Fn::Select': [0]}", "Fn::Select expects a list of 2 arguments");
	expect_dc_invalid("{'Fn::Select': {'a': 1}}", "Fn::Select expects a list");
}

static void test_split(void **state)
{
	expect_dc("{'Fn::Select': [1, {'Fn::Split': [',', 'a,b,c']}]}", "b");
	expect_dc("{'Fn::Join': ['|', {'Fn::Split': [',', 'abc']}]}", "abc");
	expect_dc("{'Fn::Join': ['|', {'Fn::Split': [',', 'a,,b,']}]}", "a||b|");
	expect_dc("{'Fn::Join': ['|', {'Fn::Split': ['::', 'a::b']}]}", "a|b");
	expect_dc("{'Fn::Join': ['|', {'Fn::Split': ['-', {'Ref': 'Empty'}]}]}", "");
	expect_dc_invalid("{'Fn::Split': ['', 'abc']}", "Fn::Split delimiter must not be empty");
	expect_dc_invalid("{'Fn::Split': [1, 'abc']}", "Fn::Split delimiter must be a literal");
	expect_dc_invalid("{'Fn::Split': ['-']}", "Fn::Split expects a list of 2 arguments");
	expect_dc_error("{'Fn::Join': ['', {'Fn::Split': ['-', ['a']]}]}",
	                "Fn::Split argument 2 must be a string");
	/* A list is not a valid DeviceConfiguration value. */
	expect_dc_error("{'Fn::Split': ['-', 'a-b']}", "DeviceConfiguration 'v'");
}

static void test_find_in_map(void **state)
{
	expect_dc("{'Fn::FindInMap': ['Rev', 'A', 'Group']}", "g-a");
	expect_dc("{'Fn::FindInMap': ['Rev', {'Fn::Join': ['', ['B', '2']]}, 'Group']}", "g-b");
	expect_dc("{'Fn::FindInMap': ['Rev', 'A', 'Num']}", "7");
	expect_dc_error("{'Fn::FindInMap': ['Rev', 'C', 'Group']}",
	                "Fn::FindInMap: top-level key 'C' not found in Mappings");
	expect_dc_error("{'Fn::FindInMap': ['Rev', 'B2', 'List']}",
	                "Fn::FindInMap: second-level key 'List' not found");
	expect_dc_error("{'Fn::FindInMap': [{'Ref': 'Serial'}, 'A', 'Group']}",
	                "Fn::FindInMap: mapping 'S1' not found");
	expect_dc_error("{'Fn::FindInMap': ['Rev', ['A'], 'Group']}",
	                "Fn::FindInMap argument must be a string");
	expect_dc_invalid("{'Fn::FindInMap': ['Nope', 'A', 'Group']}",
	                  "Fn::FindInMap: mapping 'Nope' is not defined in Mappings");
	expect_dc_invalid("{'Fn::FindInMap': ['Rev', 'A']}",
	                  "Fn::FindInMap expects a list of 3 arguments");
	expect_invalid("{'Resources': {}, 'DeviceConfiguration': {'v': {'Fn::FindInMap': ['M', "
	               "'a', 'b']}}}",
	               "the template has no Mappings");
}

static void test_sub(void **state)
{
	expect_dc("{'Fn::Sub': 'fleet/gw-${Serial}/telemetry'}", "fleet/gw-S1/telemetry");
	expect_dc("{'Fn::Sub': '${Serial}${Sku}'}", "S1GW-100-EU");
	expect_dc("{'Fn::Sub': 'no variables'}", "no variables");
	expect_dc("{'Fn::Sub': 'cert ${AWS::IoT::Certificate::Id}'}", "cert " CERT_ID);
	expect_dc("{'Fn::Sub': 'literal ${!Serial} and $ alone and {Serial}'}",
	          "literal ${Serial} and $ alone and {Serial}");
	expect_dc("{'Fn::Sub': ['${A}/${Serial}', {'A': {'Fn::Select': [0, ['x']]}}]}", "x/S1");
	expect_dc("{'Fn::Sub': ['${Serial}', {'Serial': 'overridden'}]}", "overridden");
	expect_dc("{'Fn::Sub': ['n=${N}', {'N': 3}]}", "n=3");
	expect_dc_error("{'Fn::Sub': 'x ${Missing} y'}",
	                "Fn::Sub: variable '${Missing}' is neither a parameter nor a variable");
	expect_dc_error("{'Fn::Sub': 'x ${Serial'}", "Fn::Sub: '${' without a closing '}'");
	expect_dc_error("{'Fn::Sub': 'x ${}'}", "empty variable name");
	expect_dc_error("{'Fn::Sub': ['${A}', {'A': ['list']}]}", "Fn::Sub variable 'A'");
	expect_dc_invalid("{'Fn::Sub': ['${A}', {'A': 'a'}, 'extra']}",
	                  "Fn::Sub expects a string or a list [string, {variables}]");
	expect_dc_invalid("{'Fn::Sub': [{'Ref': 'Serial'}, {}]}", "Fn::Sub expects a string");
	expect_dc_invalid("{'Fn::Sub': ['${A}', ['a']]}", "Fn::Sub expects a string");
	expect_dc_invalid("{'Fn::Sub': 42}", "Fn::Sub expects a string");
	expect_dc_invalid("{'Fn::Sub': ['${A}', {'A': {'Fn::If': []}}]}",
	                  "Unsupported intrinsic function Fn::If");
}

static void test_nested_functions(void **state)
{
	expect_dc("{'Fn::Join': ['/', [{'Fn::Select': [1, {'Fn::Split': ['-', {'Fn::Sub': "
	          "'${Sku}-x'}]}]}, {'Fn::FindInMap': ['Rev', {'Fn::Select': ['0', ['A']]}, "
	          "'Group']}, {'Fn::Sub': ['${V}', {'V': {'Fn::Join': ['', ['v', {'Ref': "
	          "'Serial'}]]}}]}]]}",
	          "100/g-a/vS1");
	expect_dc_error("{'Fn::Join': ['', [{'Fn::Select': [5, {'Fn::Split': ['-', 'a-b']}]}]]}",
	                "Fn::Select index 5 is out of range");
}

static void test_unsupported_functions(void **state)
{
	static const char *const names[] = {
	    "Fn::If",     "Fn::Equals", "Fn::Not",    "Fn::And",         "Fn::Or",
	    "Fn::GetAtt", "Fn::Base64", "Fn::GetAZs", "Fn::ImportValue", "Fn::Unknown",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *expr = format("{'Fn::Join': ['', [{'%s': ['a', 'b']}]]}", names[i]);
		char *want = format("Unsupported intrinsic function %s", names[i]);

		expect_dc_invalid(expr, want);
		free(expr);
		free(want);
	}
	expect_dc_invalid("{'Fn::Sub': 'x', 'Fn::Join': ['', []]}", "must be the only key");
	expect_dc_invalid("{'Fn::Join': ['', []], 'other': 1}",
	                  "Fn::Join must be the only key of its object");
}

/* ---------------------------------------------------------------------------------------- */
/* Sections and parameters                                                                  */

static void test_top_level_sections(void **state)
{
	expect_invalid("{'Resources': {}, 'Conditions': {'C': {'Fn::Equals': ['a', 'a']}}}",
	               "Unsupported template section 'Conditions'");
	expect_invalid("{'Resources': {}, 'Outputs': {}}",
	               "Unsupported template section 'Outputs'");
	expect_invalid("{'AWSTemplateFormatVersion': '2010-09-09', 'Resources': {}}",
	               "Unsupported template section");
	expect_invalid("{'Parameters': {}}", "Resources section is required");
	expect_invalid("{'Resources': []}", "Resources must be an object, not array");
	expect_invalid("['Resources']", "must be a JSON object");
	expect_invalid("'Resources'", "must be a JSON object");
	expect_invalid("{'Resources': {}, 'DeviceConfiguration': 'x'}",
	               "DeviceConfiguration must be an object");
	expect_valid("{'Resources': {}}");
}

static void test_parameters(void **state)
{
	json_object *out = evaluate("{" BASE_PARAMS ", 'Resources': {}}",
	                            "{'Serial': 'S9', 'Sku': 'given', 'Undeclared': 'ignored', "
	                            "'AlsoUndeclared': 5}",
	                            CERT_ID);

	assert_string_equal(str_at(out, "parameters", "Serial"), "S9");
	assert_string_equal(str_at(out, "parameters", "Sku"), "given");
	assert_string_equal(str_at(out, "parameters", "Empty"), "");
	assert_false(json_object_object_get_ex(json_object_object_get(out, "parameters"),
	                                       "Undeclared", NULL));
	json_object_put(out);

	out = evaluate("{'Parameters': {'N': {'Type': 'String', 'Default': 5, 'Description': "
	               "'a number'}}, 'Resources': {}, 'DeviceConfiguration': {'n': {'Ref': "
	               "'N'}}}",
	               "{}", CERT_ID);
	assert_string_equal(str_at(out, "deviceConfiguration", "n"), "5");
	json_object_put(out);

	expect_error("{" BASE_PARAMS ", 'Resources': {}}", "{'Serial': 7}",
	             "Parameter 'Serial' must be a string");
	expect_error("{" BASE_PARAMS ", 'Resources': {}}", "{'Serial': null}",
	             "Parameter 'Serial' must be a string");
	expect_error("{" BASE_PARAMS ", 'Resources': {}}", "['Serial']",
	             "request parameters must be an object");
	expect_error("{" BASE_PARAMS ", 'Resources': {}}", "{'Sku': 'x'}",
	             "Parameter 'Serial' is required but was not provided");
	expect_invalid("{'Parameters': {'P': {'Type': 'Number'}}, 'Resources': {}}",
	               "Parameter 'P' must have \"Type\": \"String\"");
	expect_invalid("{'Parameters': {'P': {'Default': 'x'}}, 'Resources': {}}",
	               "Parameter 'P' must have");
	expect_invalid("{'Parameters': {'P': {'Type': 'String', 'Default': {'Ref': 'Q'}}}, "
	               "'Resources': {}}",
	               "Parameter 'P': Default must be a string");
	expect_invalid("{'Parameters': {'P': {'Type': 'String', 'Default': null}}, "
	               "'Resources': {}}",
	               "Parameter 'P': Default must be a string, not null");
	expect_invalid("{'Parameters': {'P': {'Type': 'String', 'AllowedValues': ['a']}}, "
	               "'Resources': {}}",
	               "Parameter 'P' has unsupported attribute 'AllowedValues'");
	expect_invalid("{'Parameters': {'P': 'String'}, 'Resources': {}}",
	               "Parameter 'P' must be an object");
	expect_invalid("{'Parameters': ['P'], 'Resources': {}}", "Parameters must be an object");
}

static void test_mappings(void **state)
{
	expect_valid("{'Mappings': {'M': {'a': {'s': 'x', 'n': 1, 'b': true, 'l': ['p', 2]}}}, "
	             "'Resources': {}}");
	expect_invalid("{'Mappings': {'M': {'a': {'b': {'Ref': 'P'}}}}, 'Resources': {}}",
	               "Mappings cannot contain intrinsic functions");
	expect_invalid("{'Mappings': {'M': {'a': {'b': {'Fn::Join': ['', []]}}}}, 'Resources': {}}",
	               "Mapping 'M' value 'a.b'");
	expect_invalid("{'Mappings': {'M': {'a': {'b': [['x']]}}}, 'Resources': {}}",
	               "must be a string or a list of strings");
	expect_invalid("{'Mappings': {'M': {'a': {'b': [null]}}}, 'Resources': {}}",
	               "must be a string or a list of strings");
	expect_invalid("{'Mappings': {'M': {'a': {'b': null}}}, 'Resources': {}}",
	               "must be a string or a list of strings");
	expect_invalid("{'Mappings': {'M': {'Ref': 'P'}}, 'Resources': {}}",
	               "Mapping 'M' key 'Ref' must be an object");
	expect_invalid("{'Mappings': {'M': 'x'}, 'Resources': {}}",
	               "Mapping 'M' must be an object");
	expect_invalid("{'Mappings': [], 'Resources': {}}", "Mappings must be an object");
}

/* ---------------------------------------------------------------------------------------- */
/* Resources                                                                                */

#define CERT_RES                                                                                   \
	"'certificate': {'Type': 'AWS::IoT::Certificate', 'Properties': {'CertificateId': "        \
	"{'Ref': 'AWS::IoT::Certificate::Id'}}}"

static void test_thing_resource(void **state)
{
	json_object *out = evaluate_resources(
	    "{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'gw:a_b-1', "
	    "'AttributePayload': {'n': 1, 'v.x': 'a/b@c#d=e[f]', 'e': ''}, 'ThingTypeName': "
	    "'Type1', 'ThingGroups': {'Fn::Split': [',', 'g1,g2']}, 'BillingGroup': 'bg'}}}");
	json_object *thing = json_object_object_get(out, "thing");

	assert_string_equal(str_at(thing, "ThingName", NULL), "gw:a_b-1");
	assert_string_equal(str_at(thing, "AttributePayload", "n"), "1");
	assert_string_equal(str_at(thing, "AttributePayload", "v.x"), "a/b@c#d=e[f]");
	assert_string_equal(str_at(thing, "AttributePayload", "e"), "");
	assert_string_equal(str_at(thing, "ThingTypeName", NULL), "Type1");
	assert_int_equal(json_object_array_length(json_object_object_get(thing, "ThingGroups")), 2);
	assert_string_equal(str_at(thing, "BillingGroup", NULL), "bg");
	assert_int_equal(
	    json_object_object_length(json_object_object_get(thing, "OverrideSettings")), 0);
	assert_true(is_null_at(out, "certificate", NULL));
	json_object_put(out);

	expect_res_invalid("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {}}}",
	                   "Resource 't': property ThingName is required for AWS::IoT::Thing");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a b'}}}",
	                 "Resource 't' (AWS::IoT::Thing): property ThingName: 'a b' is not a "
	                 "valid name");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': ''}}}",
	                 "is not a valid name");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': "
	                 "{'Ref': 'Empty'}}}}",
	                 "property ThingName");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': ['a']}}}",
	                 "property ThingName: the value must be a string");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	                 "'AttributePayload': ['x']}}}",
	                 "property AttributePayload: must be a map");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	                 "'AttributePayload': {'k': {'x': 'y'}}}}}",
	                 "attribute 'k'");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	                 "'AttributePayload': {'k': 'New York'}}}}",
	                 "'New York' is not a valid attribute value");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	                 "'AttributePayload': {'k k': 'v'}}}}",
	                 "'k k' is not a valid attribute name");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	                 "'ThingGroups': 'g'}}}",
	                 "property ThingGroups");
	expect_res_error("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	                 "'ThingGroups': ['ok', 'not ok']}}}",
	                 "property ThingGroups item 1");
	expect_res_invalid("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	                   "'PackageVersions': {}}}}",
	                   "property PackageVersions is not supported for AWS::IoT::Thing");
	expect_res_invalid("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a'}}, "
	                   "'u': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'b'}}}",
	                   "a template may hold only one AWS::IoT::Thing");
}

static void test_thing_name_length(void **state)
{
	char name[131];
	char *res;

	memset(name, 'n', sizeof(name) - 1);
	name[128] = '\0';
	res = format("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': '%s'}}}", name);
	json_object_put(evaluate_resources(res));
	free(res);
	name[128] = 'n';
	name[129] = '\0';
	res = format("{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': '%s'}}}", name);
	expect_res_error(res, "is not a valid name (1-128");
	free(res);
}

static void test_thing_overrides(void **state)
{
	json_object *out = evaluate_resources(
	    "{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a'}, "
	    "'OverrideSettings': {'AttributePayload': 'MERGE', 'ThingGroups': 'MERGE', "
	    "'ThingTypeName': 'DO_NOTHING'}}}");

	assert_string_equal(
	    str_at(json_object_object_get(out, "thing"), "OverrideSettings", "ThingGroups"),
	    "MERGE");
	assert_string_equal(
	    str_at(json_object_object_get(out, "thing"), "OverrideSettings", "ThingTypeName"),
	    "DO_NOTHING");
	json_object_put(out);

#define THING_WITH(os)                                                                             \
	"{'t': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a'}, "                     \
	"'OverrideSettings': " os "}}"
	expect_res_invalid(THING_WITH("{'ThingTypeName': 'MERGE'}"),
	                   "OverrideSettings 'ThingTypeName': MERGE is only valid for "
	                   "AttributePayload and ThingGroups");
	expect_res_invalid(THING_WITH("{'ThingGroups': 'SKIP'}"),
	                   "OverrideSettings 'ThingGroups' must be DO_NOTHING, REPLACE, MERGE or "
	                   "FAIL");
	expect_res_invalid(THING_WITH("{'ThingGroups': 'merge'}"), "must be DO_NOTHING");
	expect_res_invalid(THING_WITH("{'ThingGroups': {'Ref': 'Serial'}}"), "must be DO_NOTHING");
	expect_res_invalid(THING_WITH("{'ThingGroups': null}"), "must be DO_NOTHING");
	expect_res_invalid(THING_WITH("{'Status': 'REPLACE'}"),
	                   "OverrideSettings 'Status' is not valid for AWS::IoT::Thing");
	expect_res_invalid(THING_WITH("{'ATTRIBUTE_PAYLOAD': 'REPLACE'}"), "is not valid for");
	expect_res_invalid(THING_WITH("['REPLACE']"), "OverrideSettings must be an object");
#undef THING_WITH
}

static void test_certificate_resource(void **state)
{
	json_object *out = evaluate_resources(
	    "{'c': {'Type': 'AWS::IoT::Certificate', 'Properties': {'CertificateId': {'Ref': "
	    "'AWS::IoT::Certificate::Id'}, 'Status': {'Fn::Sub': 'inACTIVE'}, "
	    "'ThingPrincipalType': 'EXCLUSIVE_THING'}, 'OverrideSettings': {'Status': "
	    "'DO_NOTHING'}}}");

	assert_string_equal(str_at(out, "certificate", "CertificateId"), CERT_ID);
	assert_string_equal(str_at(out, "certificate", "Status"), "INACTIVE");
	assert_string_equal(
	    str_at(json_object_object_get(out, "certificate"), "OverrideSettings", "Status"),
	    "DO_NOTHING");
	json_object_put(out);

#define CERT_WITH(props) "{'c': {'Type': 'AWS::IoT::Certificate', 'Properties': " props "}}"
	out = evaluate_resources(CERT_WITH("{'CertificateId': 'x', 'Status': 'active'}"));
	assert_string_equal(str_at(out, "certificate", "Status"), "ACTIVE");
	json_object_put(out);

	expect_res_invalid(CERT_WITH("{'Status': 'ACTIVE'}"),
	                   "property CertificateId is required for AWS::IoT::Certificate");
	expect_res_invalid(CERT_WITH("{'CertificateSigningRequest': 'csr'}"),
	                   "property CertificateSigningRequest is not supported in a fleet "
	                   "provisioning template");
	expect_res_invalid(CERT_WITH("{'CertificateId': 'x', 'CertificatePem': 'pem'}"),
	                   "property CertificatePem is not supported");
	expect_res_invalid(CERT_WITH("{'CertificateId': 'x', 'CACertificatePem': 'pem'}"),
	                   "property CACertificatePem is not supported");
	expect_res_invalid(CERT_WITH("{'CertificateId': 'x', 'Owner': 'me'}"),
	                   "property Owner is not supported for AWS::IoT::Certificate");
	expect_res_error(CERT_WITH("{'CertificateId': 'x', 'Status': 'PENDING'}"),
	                 "Resource 'c' (AWS::IoT::Certificate): property Status: 'PENDING' is "
	                 "neither ACTIVE nor INACTIVE");
	expect_res_error(CERT_WITH("{'CertificateId': 'x', 'Status': null}"),
	                 "property Status: the value must be a string");
	expect_res_error(CERT_WITH("{'CertificateId': {'k': 'v'}}"),
	                 "property CertificateId: the value must be a string");
	expect_res_error(CERT_WITH("{'CertificateId': 'x', 'ThingPrincipalType': 'SHARED'}"),
	                 "'SHARED' is neither EXCLUSIVE_THING nor NON_EXCLUSIVE_THING");
	expect_res_invalid("{'c': {'Type': 'AWS::IoT::Certificate', 'Properties': "
	                   "{'CertificateId': 'x'}, 'OverrideSettings': {'Status': 'MERGE'}}}",
	                   "OverrideSettings 'Status': MERGE is only valid");
	expect_res_invalid("{'c': {'Type': 'AWS::IoT::Certificate', 'Properties': "
	                   "{'CertificateId': 'x'}, 'OverrideSettings': {'ThingGroups': "
	                   "'REPLACE'}}}",
	                   "OverrideSettings 'ThingGroups' is not valid for AWS::IoT::Certificate");
	expect_res_invalid("{" CERT_RES ", 'd': {'Type': 'AWS::IoT::Certificate', 'Properties': "
	                   "{'CertificateId': 'y'}}}",
	                   "a template may hold only one AWS::IoT::Certificate");
#undef CERT_WITH
}

static void test_policy_resource(void **state)
{
	json_object *out = evaluate_resources(
	    "{'p1': {'Type': 'AWS::IoT::Policy', 'Properties': {'PolicyName': {'Fn::Sub': "
	    "'pol-${Serial}'}}}, 'p2': {'Type': 'AWS::IoT::Policy', 'Properties': "
	    "{'PolicyDocument': '{\\'Version\\': \\'2012-10-17\\', \\'Statement\\': []}'}}, "
	    "'p3': {'Type': 'AWS::IoT::Policy', 'Properties': {'PolicyDocument': {'Version': "
	    "'2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 'iot:Connect', "
	    "'Resource': {'Fn::Sub': 'arn:aws:iot:*:*:client/${Serial}'}}]}}}}");
	json_object *policies = json_object_object_get(out, "policies"), *doc;

	assert_int_equal(json_object_array_length(policies), 3);
	assert_string_equal(str_at(json_object_array_get_idx(policies, 0), "PolicyName", NULL),
	                    "pol-S1");
	doc = json_tokener_parse(
	    str_at(json_object_array_get_idx(policies, 1), "PolicyDocument", NULL));
	assert_string_equal(str_at(doc, "Version", NULL), "2012-10-17");
	json_object_put(doc);
	doc = json_tokener_parse(
	    str_at(json_object_array_get_idx(policies, 2), "PolicyDocument", NULL));
	assert_string_equal(
	    str_at(json_object_array_get_idx(json_object_object_get(doc, "Statement"), 0),
	           "Resource", NULL),
	    "arn:aws:iot:*:*:client/S1");
	json_object_put(doc);
	json_object_put(out);

#define POLICY_WITH(props) "{'p': {'Type': 'AWS::IoT::Policy', 'Properties': " props "}}"
	expect_res_invalid(POLICY_WITH("{}"),
	                   "Resource 'p': exactly one of PolicyName and PolicyDocument");
	expect_res_invalid(POLICY_WITH("{'PolicyName': 'a', 'PolicyDocument': {}}"),
	                   "exactly one of PolicyName and PolicyDocument");
	expect_res_error(POLICY_WITH("{'PolicyDocument': 'not json'}"),
	                 "property PolicyDocument: is not a JSON object");
	expect_res_error(POLICY_WITH("{'PolicyDocument': ['a']}"),
	                 "property PolicyDocument: must be a JSON string or object");
	expect_res_error(POLICY_WITH("{'PolicyName': 'bad name'}"),
	                 "property PolicyName: 'bad name' is not a valid name");
	expect_res_invalid(POLICY_WITH("{'PolicyName': 'a', 'PolicyArn': 'b'}"),
	                   "property PolicyArn is not supported for AWS::IoT::Policy");
	expect_res_invalid("{'p': {'Type': 'AWS::IoT::Policy', 'Properties': {'PolicyName': "
	                   "'a'}, 'OverrideSettings': {}}}",
	                   "AWS::IoT::Policy resources have no OverrideSettings");
#undef POLICY_WITH
}

static void test_resource_shape(void **state)
{
	expect_res_invalid("{'r': {'Type': 'AWS::IoT::Role', 'Properties': {}}}",
	                   "Resource 'r': Type must be one of AWS::IoT::Thing");
	expect_res_invalid("{'r': {'Properties': {}}}", "Type must be one of");
	expect_res_invalid("{'r': {'Type': 5, 'Properties': {}}}", "Type must be one of");
	expect_res_invalid("{'r': {'Type': 'AWS::IoT::Policy'}}", "Properties are required");
	expect_res_invalid("{'r': {'Type': 'AWS::IoT::Policy', 'Properties': []}}",
	                   "Properties must be an object");
	expect_res_invalid("{'r': {'Type': 'AWS::IoT::Policy', 'Properties': {'PolicyName': 'a'}, "
	                   "'DependsOn': 'x'}}",
	                   "unsupported resource attribute 'DependsOn'");
	expect_res_invalid("{'r': 'AWS::IoT::Policy'}", "a resource must be an object");
	expect_res_invalid("{'r': null}", "a resource must be an object");
}

/* ---------------------------------------------------------------------------------------- */
/* DeviceConfiguration                                                                      */

static void test_device_configuration(void **state)
{
	json_object *out = evaluate("{'Resources': {}, 'DeviceConfiguration': {'i': 42, 'd': 1.5, "
	                            "'b': false, 's': 'x'}}",
	                            NULL, CERT_ID);

	assert_string_equal(str_at(out, "deviceConfiguration", "i"), "42");
	assert_string_equal(str_at(out, "deviceConfiguration", "d"), "1.5");
	assert_string_equal(str_at(out, "deviceConfiguration", "b"), "false");
	assert_string_equal(str_at(out, "deviceConfiguration", "s"), "x");
	json_object_put(out);

	out = evaluate("{'Resources': {}}", NULL, CERT_ID);
	assert_true(json_object_is_type(json_object_object_get(out, "deviceConfiguration"),
	                                json_type_object));
	assert_int_equal(
	    json_object_object_length(json_object_object_get(out, "deviceConfiguration")), 0);
	json_object_put(out);

	expect_dc_invalid("{'nested': 'x'}",
	                  "DeviceConfiguration 'v': nested objects and lists are not supported");
	expect_dc_invalid("['a', 'b']", "nested objects and lists are not supported");
	expect_dc_error("{'Fn::FindInMap': ['Rev', 'A', 'List']}",
	                "DeviceConfiguration 'v': the value (DeviceConfiguration is flat) must be "
	                "a string, not array");
	expect_dc_error("{'Fn::Select': [0, [['a']]]}", "must be a string, not array");
	expect_dc_error("{'Fn::Select': [0, [{'a': 'b'}]]}", "must be a string, not object");
	expect_dc_error("null", "must be a string, not null");
}

/* ---------------------------------------------------------------------------------------- */
/* Robustness                                                                               */

static void test_arguments(void **state)
{
	json_object *tmpl = jparse("{'Resources': {}}"), *out = NULL;
	char err[8];

	assert_int_equal(tmpl_validate(NULL, NULL, 0), -EINVAL);
	assert_int_equal(tmpl_evaluate(NULL, NULL, NULL, &out, NULL, 0), -EINVAL);
	assert_null(out);
	assert_int_equal(tmpl_evaluate(tmpl, NULL, CERT_ID, NULL, err, sizeof(err)), -EINVAL);
	/* A short buffer is truncated, never overrun. */
	assert_int_equal(strlen(err), sizeof(err) - 1);
	json_object_put(tmpl);

	tmpl = jparse("{'Resources': {}, 'Conditions': {}}");
	assert_int_equal(tmpl_evaluate(tmpl, NULL, CERT_ID, &out, NULL, 0), -EINVAL);
	assert_int_equal(tmpl_evaluate(tmpl, NULL, CERT_ID, &out, err, 1), -EINVAL);
	assert_string_equal(err, "");
	json_object_put(tmpl);
}

/* {"Fn::Join": ["", [ ... ]]} nested n times around a string. */
static json_object *nested_joins(unsigned n)
{
	json_object *node = json_object_new_string("x");

	for (unsigned i = 0; i < n; i++) {
		json_object *fn = json_object_new_object(), *args = json_object_new_array(),
		            *list = json_object_new_array();

		json_object_array_add(list, node);
		json_object_array_add(args, json_object_new_string(""));
		json_object_array_add(args, list);
		json_object_object_add(fn, "Fn::Join", args);
		node = fn;
	}
	return node;
}

static json_object *dc_document(json_object *value)
{
	json_object *tmpl = json_object_new_object(), *dc = json_object_new_object();

	json_object_object_add(tmpl, "Resources", json_object_new_object());
	json_object_object_add(dc, "v", value);
	json_object_object_add(tmpl, "DeviceConfiguration", dc);
	return tmpl;
}

static void test_deep_nesting(void **state)
{
	json_object *tmpl = dc_document(nested_joins(10)), *out = NULL, *deep;
	char err[256] = "";

	assert_int_equal(tmpl_evaluate(tmpl, NULL, CERT_ID, &out, err, sizeof(err)), 0);
	assert_string_equal(str_at(out, "deviceConfiguration", "v"), "x");
	json_object_put(out);
	json_object_put(tmpl);

	out = NULL;
	tmpl = dc_document(nested_joins(5000));
	assert_int_equal(tmpl_validate(tmpl, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "nested deeper than"));
	assert_int_equal(tmpl_evaluate(tmpl, NULL, CERT_ID, &out, err, sizeof(err)), -EINVAL);
	assert_null(out);
	json_object_put(tmpl);

	/* Deep plain data inside a policy document is bounded too. */
	deep = json_object_new_string("leaf");
	for (int i = 0; i < 5000; i++) {
		json_object *o = json_object_new_object();

		json_object_object_add(o, "k", deep);
		deep = o;
	}
	tmpl = jparse("{'Resources': {'p': {'Type': 'AWS::IoT::Policy', 'Properties': {}}}}");
	json_object_object_add(
	    json_object_object_get(
	        json_object_object_get(json_object_object_get(tmpl, "Resources"), "p"),
	        "Properties"),
	    "PolicyDocument", deep);
	assert_int_equal(tmpl_validate(tmpl, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "nested deeper than"));
	json_object_put(tmpl);
}

static void test_string_limit(void **state)
{
	size_t n = 70 * 1024;
	char *big = malloc(n + 1);
	json_object *tmpl, *params = json_object_new_object(), *out = NULL;
	char err[256] = "";

	assert_non_null(big);
	memset(big, 'a', n);
	big[n] = '\0';
	json_object_object_add(params, "Serial", json_object_new_string(big));
	tmpl = jparse("{" BASE_PARAMS ", 'Resources': {}, 'DeviceConfiguration': {'v': "
	              "{'Fn::Join': ['', [{'Ref': 'Serial'}, {'Ref': 'Serial'}]]}, 'w': "
	              "{'Fn::Sub': '${Serial}${Serial}'}}}");
	assert_int_equal(tmpl_evaluate(tmpl, params, CERT_ID, &out, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "Fn::Join result is longer than"));
	json_object_put(tmpl);
	tmpl = jparse("{" BASE_PARAMS ", 'Resources': {}, 'DeviceConfiguration': {'w': "
	              "{'Fn::Sub': '${Serial}${Serial}'}}}");
	assert_int_equal(tmpl_evaluate(tmpl, params, CERT_ID, &out, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "Fn::Sub result is longer than"));
	assert_null(out);
	json_object_put(tmpl);
	json_object_put(params);
	free(big);
}

/* Documents that are wrong in shape or type at some spot: all must fail with a message. */
static void test_malformed_inputs(void **state)
{
	static const char *const docs[] = {
	    "null",
	    "0",
	    "true",
	    "[]",
	    "{}",
	    "{'Resources': null}",
	    "{'Resources': 'x'}",
	    "{'Resources': {'a': []}}",
	    "{'Resources': {'a': {}}}",
	    "{'Resources': {'a': {'Type': null}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': null}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': 'x'}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': "
	    "null}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': {}}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	    "'AttributePayload': 'x'}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	    "'ThingGroups': [null]}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	    "'ThingGroups': [[]]}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a', "
	    "'BillingGroup': []}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Thing', 'Properties': {'ThingName': 'a'}, "
	    "'OverrideSettings': null}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Certificate', 'Properties': "
	    "{'CertificateId': null}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Certificate', 'Properties': "
	    "{'CertificateId': []}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Policy', 'Properties': {'PolicyName': "
	    "null}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Policy', 'Properties': {'PolicyDocument': "
	    "null}}}}",
	    "{'Resources': {'a': {'Type': 'AWS::IoT::Policy', 'Properties': {'PolicyDocument': "
	    "'[1]'}}}}",
	    "{'Resources': {}, 'DeviceConfiguration': []}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Ref': null}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Ref': {}}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Join': null}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Join': [null, null]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Join': ['', null]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Join': ['', [[[]]]]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Select': null}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Select': [{}, []]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Select': [[], []]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Select': ['', ['a']]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Split': null}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Split': [null, 'a']}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Split': ['-', null]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Split': ['-', {}]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::FindInMap': null}}}",
	    "{'Mappings': {}, 'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::FindInMap': "
	    "[null, null, null]}}}",
	    "{'Mappings': {'M': {}}, 'Resources': {}, 'DeviceConfiguration': {'a': "
	    "{'Fn::FindInMap': ['M', {}, 'b']}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Sub': null}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Sub': []}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Sub': [null, null]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Sub': ['${x}', {'x': null}]}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::Sub': '${'}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Fn::': 1}}}",
	    "{'Resources': {}, 'DeviceConfiguration': {'a': {'Ref': 'x', 'Fn::Sub': 'y'}}}",
	    "{'Parameters': null, 'Resources': {}}",
	    "{'Parameters': {'': null}, 'Resources': {}}",
	    "{'Parameters': {'a': {'Type': null}}, 'Resources': {}}",
	    "{'Parameters': {'a': {'Type': 'String', 'Default': []}}, 'Resources': {}}",
	    "{'Mappings': null, 'Resources': {}}",
	    "{'Mappings': {'M': null}, 'Resources': {}}",
	    "{'Mappings': {'M': {'a': null}}, 'Resources': {}}",
	    "{'Mappings': {'M': {'a': {'b': {}}}}, 'Resources': {}}",
	};
	json_object *params = jparse("{'a': 'v'}");

	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
		json_object *tmpl = jparse(docs[i]), *out = NULL;
		char err[256] = "";
		int r;

		r = tmpl_evaluate(tmpl, params, CERT_ID, &out, err, sizeof(err));
		if (r != -EINVAL || out || err[0] == '\0')
			fail_msg("document %zu (%s): r=%d err='%s'", i, docs[i], r, err);
		json_object_put(tmpl);
	}
	json_object_put(params);
}

static const char *const replacements[] = {
    "null",
    "0",
    "-1",
    "1.5",
    "true",
    "''",
    "'x y'",
    "[]",
    "[null]",
    "{}",
    "{'Ref': 'Nope'}",
    "{'Fn::If': []}",
    "{'Fn::Join': ['', []]}",
    "{'Ref': 'SerialNumber'}",
};

struct sweep {
	json_object *root;
	json_object *params;
	unsigned ok, rejected;
};

static void sweep_evaluate(struct sweep *s)
{
	json_object *out = NULL;
	char err[256] = "";
	int r = tmpl_evaluate(s->root, s->params, CERT_ID, &out, err, sizeof(err));

	if (r == 0) {
		assert_true(json_object_is_type(out, json_type_object));
		json_object_put(out);
		s->ok++;
	} else {
		if (r != -EINVAL || out || err[0] == '\0')
			fail_msg("r=%d err='%s'", r, err);
		s->rejected++;
	}
}

/* Replace each value below node in turn by each replacement, evaluate, and put it back. */
static void sweep_node(struct sweep *s, json_object *node)
{
	if (json_object_is_type(node, json_type_object)) {
		struct json_object_iter it;

		json_object_object_foreachC(node, it)
		{
			json_object *orig = json_object_get(it.val);

			for (size_t i = 0; i < sizeof(replacements) / sizeof(replacements[0]);
			     i++) {
				json_object_object_add(node, it.key, jparse(replacements[i]));
				sweep_evaluate(s);
			}
			json_object_object_add(node, it.key, orig);
			sweep_node(s, orig);
		}
	} else if (json_object_is_type(node, json_type_array)) {
		for (size_t n = 0; n < json_object_array_length(node); n++) {
			json_object *orig = json_object_get(json_object_array_get_idx(node, n));

			for (size_t i = 0; i < sizeof(replacements) / sizeof(replacements[0]);
			     i++) {
				json_object_array_put_idx(node, n, jparse(replacements[i]));
				sweep_evaluate(s);
			}
			json_object_array_put_idx(node, n, orig);
			sweep_node(s, orig);
		}
	}
}

static void test_type_confusion_sweep(void **state)
{
	static const char *const files[] = {"gateway.json", "full.json", "strict-fail.json",
	                                    "minimal.json"};

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		struct sweep s = {
		    .root = load(files[i]),
		    .params = jparse("{'SerialNumber': 'S', 'HardwareRev': 'A'}"),
		};
		char *before = strdup(json_object_to_json_string(s.root));

		sweep_node(&s, s.root);
		/* The document is restored, and the sweep both accepted and rejected. */
		assert_string_equal(before, json_object_to_json_string(s.root));
		assert_true(s.ok > 0);
		assert_true(s.rejected > 50);
		free(before);
		json_object_put(s.root);
		json_object_put(s.params);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_gateway_template),
	    cmocka_unit_test(test_gateway_defaults),
	    cmocka_unit_test(test_gateway_missing_serial),
	    cmocka_unit_test(test_minimal_template),
	    cmocka_unit_test(test_inactive_template),
	    cmocka_unit_test(test_strict_fail_template),
	    cmocka_unit_test(test_bad_unknown_fn_template),
	    cmocka_unit_test(test_full_template),
	    cmocka_unit_test(test_all_template_files),
	    cmocka_unit_test(test_ref),
	    cmocka_unit_test(test_ref_certificate_id),
	    cmocka_unit_test(test_join),
	    cmocka_unit_test(test_select),
	    cmocka_unit_test(test_split),
	    cmocka_unit_test(test_find_in_map),
	    cmocka_unit_test(test_sub),
	    cmocka_unit_test(test_nested_functions),
	    cmocka_unit_test(test_unsupported_functions),
	    cmocka_unit_test(test_top_level_sections),
	    cmocka_unit_test(test_parameters),
	    cmocka_unit_test(test_mappings),
	    cmocka_unit_test(test_thing_resource),
	    cmocka_unit_test(test_thing_name_length),
	    cmocka_unit_test(test_thing_overrides),
	    cmocka_unit_test(test_certificate_resource),
	    cmocka_unit_test(test_policy_resource),
	    cmocka_unit_test(test_resource_shape),
	    cmocka_unit_test(test_device_configuration),
	    cmocka_unit_test(test_arguments),
	    cmocka_unit_test(test_deep_nesting),
	    cmocka_unit_test(test_string_limit),
	    cmocka_unit_test(test_malformed_inputs),
	    cmocka_unit_test(test_type_confusion_sweep),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
