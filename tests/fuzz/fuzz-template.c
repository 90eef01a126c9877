/*
 * The simulator's provisioning template engine on arbitrary JSON. The simulator is test
 * infrastructure, but a template engine that crashes or leaks on an odd template would
 * hide daemon bugs behind simulator bugs. Only documents that pass tmpl_validate are
 * evaluated, as in the simulator, with fixed request parameters.
 */
#include <json-c/json.h>
#include <string.h>

#include "fuzz.h"
#include "template.h"

/* A template body is at most 10240 characters (spec §2.1); nest no deeper than json-c's default. */
#define TEMPLATE_DEPTH_MAX 32
#define ERRBUF_SIZE        512

static const char certificate_id[] =
    "3f1c0a9e5b7d2c4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e";

static json_object *parse_json(const uint8_t *data, size_t size)
{
	json_tokener *tok = json_tokener_new_ex(TEMPLATE_DEPTH_MAX);
	json_object *obj;

	if (!tok)
		abort();
	obj = json_tokener_parse_ex(tok, (const char *)data, (int)size);
	if (obj && json_tokener_get_error(tok) != json_tokener_success) {
		json_object_put(obj);
		obj = NULL;
	}
	json_tokener_free(tok);
	return obj;
}

static json_object *request_params(void)
{
	json_object *p = json_object_new_object();

	if (!p)
		abort();
	json_object_object_add(p, "SerialNumber", json_object_new_string("GW-00042"));
	json_object_object_add(p, "HardwareRev", json_object_new_string("B2"));
	json_object_object_add(p, "DeviceLocation", json_object_new_string("lab"));
	return p;
}

static void evaluate(json_object *tmpl, json_object *params)
{
	char errbuf[ERRBUF_SIZE];
	json_object *out = NULL;
	int r;

	memset(errbuf, 'x', sizeof(errbuf));
	r = tmpl_evaluate(tmpl, params, certificate_id, &out, errbuf, sizeof(errbuf));
	if (r < 0) {
		FUZZ_CHECK(fuzz_terminated(errbuf, sizeof(errbuf)));
		return;
	}
	FUZZ_CHECK(out && json_object_is_type(out, json_type_object));
	/* Serialising walks the whole result: a dangling reference shows up under ASan. */
	FUZZ_CHECK(json_object_to_json_string(out) != NULL);
	json_object_put(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char errbuf[ERRBUF_SIZE];
	json_object *tmpl, *params;

	if (size > INT32_MAX)
		return 0;
	tmpl = parse_json(data, size);
	if (!tmpl)
		return 0;
	memset(errbuf, 'x', sizeof(errbuf));
	if (tmpl_validate(tmpl, errbuf, sizeof(errbuf)) < 0) {
		FUZZ_CHECK(fuzz_terminated(errbuf, sizeof(errbuf)));
		json_object_put(tmpl);
		return 0;
	}
	params = request_params();
	evaluate(tmpl, params);
	evaluate(tmpl, NULL);
	json_object_put(params);
	json_object_put(tmpl);
	return 0;
}
