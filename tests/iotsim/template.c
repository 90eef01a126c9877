/*
 * Provisioning template engine of the local AWS IoT simulator (spec/aws-fleet-provisioning.md
 * §2). tmpl_validate() checks the static shape of a template once, when the simulator loads
 * it; tmpl_evaluate() validates again (so a caller can never hand it an unchecked document)
 * and then evaluates it for one RegisterThing request.
 *
 * Choices made where AWS documents nothing (each is repeated at the code it governs):
 *   - Top-level sections other than Parameters, Mappings, Resources and DeviceConfiguration
 *     (Conditions, Outputs, AWSTemplateFormatVersion, ...) are rejected; Resources is
 *     required, as in CloudFormation, from which the template syntax is taken; a section
 *     that is present must be an object (null does not count as absent).
 *   - Parameters accept only "Type": "String" (the only type any AWS example uses) plus an
 *     optional scalar "Default" and an ignored "Description".
 *   - Request parameters the template does not declare are ignored (the service passes
 *     them to the pre-provisioning hook, so a device may legitimately send extra ones);
 *     they do not appear in the evaluated "parameters".
 *   - AWS::IoT::Certificate::Id is always resolvable when a certificate id is known, even if
 *     undeclared, and the service's value wins over one sent by the device.
 *   - Numbers and booleans are accepted wherever a string is expected and are rendered as
 *     their JSON text ("42", "true"); null, lists and objects are errors there.
 *   - Intrinsic functions: Ref, Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap, Fn::Sub
 *     (inline "${Name}", "${!Literal}" escape, and the [string, {vars}] list form). Any
 *     other "Fn::" key is rejected, and so is an object mixing a function key with others.
 *     Delimiters of Fn::Join and Fn::Split must be literal strings, as in CloudFormation.
 *   - At most one AWS::IoT::Thing and one AWS::IoT::Certificate resource: RegisterThing
 *     answers with a single thingName and registers a single certificate. Policies may
 *     repeat and are reported in document order.
 *   - Thing, thing type, group and policy names and attribute names and values are checked
 *     against the CreateThing / CreatePolicy patterns, as the service would on creation.
 *   - Thing.PackageVersions is rejected (not in the 2022 documentation and not modelled by
 *     the simulator). Certificate.ThingPrincipalType is validated and not reported.
 *   - Resources accept only Type, Properties and OverrideSettings (no DependsOn, Condition).
 *   - OverrideSettings values are literal strings and case-sensitive; only the key spelling
 *     of AWS's examples (AttributePayload, ThingTypeName, ThingGroups) is accepted; the
 *     evaluated "OverrideSettings" lists only the keys the template sets.
 */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <json-c/printbuf.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "macro.h"
#include "template.h"

/*
 * Recursion bound for documents built in memory; json-c's tokener already stops parsed
 * text at 32 levels, and no sensible template nests functions more than a few deep.
 */
#define TMPL_MAX_DEPTH 64
/* No evaluated string can be larger than an MQTT message to AWS IoT (128 KiB, spec §3.2). */
#define TMPL_MAX_STRING (128 * 1024)
/* CreateThing / CreateThingType / CreateThingGroup / CreateBillingGroup: 1-128 characters. */
#define TMPL_MAX_NAME 128
/* CreateThing AttributePayload: names up to 128, values up to 800 characters. */
#define TMPL_MAX_ATTR_NAME  128
#define TMPL_MAX_ATTR_VALUE 800
/* CreatePolicy policyName: 1-128 characters. */
#define TMPL_MAX_POLICY_NAME 128

#define CERT_ID_PARAM "AWS::IoT::Certificate::Id"
#define TYPE_THING    "AWS::IoT::Thing"
#define TYPE_CERT     "AWS::IoT::Certificate"
#define TYPE_POLICY   "AWS::IoT::Policy"

/* Extra characters the AWS name patterns allow besides [A-Za-z0-9]. */
#define NAME_CHARS        ":_-"
#define ATTR_NAME_CHARS   "_.,@/:#-"
#define ATTR_VALUE_CHARS  "_.,@/:#=[]-"
#define POLICY_NAME_CHARS "_+=,.@-"

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put)
DEFINE_TRIVIAL_CLEANUP_FUNC(struct printbuf *, printbuf_free)

struct tmpl_ctx {
	json_object *declared; /* the Parameters section (borrowed, may be NULL) */
	json_object *mappings; /* the Mappings section (borrowed, may be NULL) */
	json_object *params;   /* resolved parameter values; NULL while only validating */
	char *errbuf;
	size_t errsize;
};

_printf_(2, 3) static int fail(struct tmpl_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	if (ctx->errbuf && ctx->errsize > 0) {
		va_start(ap, fmt);
		vsnprintf(ctx->errbuf, ctx->errsize, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* Put "where: " in front of the message an inner call left, so errors name their place. */
_printf_(3, 4) static int fail_within(struct tmpl_ctx *ctx, int r, const char *fmt, ...)
{
	char where[256];
	va_list ap;

	if (!ctx->errbuf || ctx->errsize == 0)
		return r;
	_cleanup_free_ char *inner = strdup(ctx->errbuf);
	if (!inner)
		return r;
	va_start(ap, fmt);
	vsnprintf(where, sizeof(where), fmt, ap);
	va_end(ap);
	snprintf(ctx->errbuf, ctx->errsize, "%s: %s", where, inner);
	return r;
}

static bool streq(const char *a, const char *b)
{
	return strcmp(a, b) == 0;
}

static bool is_type(json_object *o, enum json_type t)
{
	return json_object_get_type(o) == t;
}

static const char *type_name(json_object *o)
{
	return json_type_to_name(json_object_get_type(o));
}

static bool is_function_key(const char *key)
{
	return streq(key, "Ref") || strncmp(key, "Fn::", 4) == 0;
}

static bool name_in(const char *name, const char *const *list)
{
	for (; *list; list++)
		if (streq(name, *list))
			return true;
	return false;
}

/* The name patterns of the AWS APIs: [A-Za-z0-9] plus a few punctuation characters. */
static bool valid_name(json_object *s, const char *extra, size_t min, size_t max)
{
	const char *p = json_object_get_string(s);
	size_t len = (size_t)json_object_get_string_len(s);

	if (len < min || len > max || strlen(p) != len)
		return false;
	for (; *p; p++)
		if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') &&
		    !(*p >= '0' && *p <= '9') && !strchr(extra, *p))
			return false;
	return true;
}

/*
 * Is o a function object ({"Ref": x} or {"Fn::Name": x})? Returns 1 and the name and
 * argument, 0 for a plain object, or -EINVAL for an object that mixes a function key with
 * other keys (CloudFormation rejects those too).
 */
static int as_function(struct tmpl_ctx *ctx, json_object *o, const char **ret_name,
                       json_object **ret_arg)
{
	struct json_object_iter it;
	const char *found = NULL;

	json_object_object_foreachC(o, it)
	{
		if (is_function_key(it.key)) {
			found = it.key;
			*ret_arg = it.val;
		}
	}
	if (!found)
		return 0;
	if (json_object_object_length(o) != 1)
		return fail(ctx, "%s must be the only key of its object", found);
	*ret_name = found;
	return 1;
}

/* A scalar's text: strings as they are, numbers and booleans as their JSON text. */
static int scalar_text(struct tmpl_ctx *ctx, json_object *v, const char *what, const char **ret)
{
	switch (json_object_get_type(v)) {
	case json_type_string:
	case json_type_int:
	case json_type_double:
	case json_type_boolean:
		*ret = json_object_get_string(v);
		return 0;
	default:
		return fail(ctx, "%s must be a string, not %s", what, type_name(v));
	}
}

static int append(struct tmpl_ctx *ctx, struct printbuf *pb, const char *s, size_t len,
                  const char *fn)
{
	if (len > TMPL_MAX_STRING || (size_t)pb->bpos + len > TMPL_MAX_STRING)
		return fail(ctx, "%s result is longer than %d characters", fn, TMPL_MAX_STRING);
	if (printbuf_memappend(pb, s, (int)len) < 0)
		return -ENOMEM;
	return 0;
}

static int printbuf_to_string(struct printbuf *pb, json_object **ret)
{
	json_object *s = json_object_new_string_len(pb->buf, pb->bpos);

	if (!s)
		return -ENOMEM;
	*ret = s;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Static checks of intrinsic function arguments (tmpl_validate)                           */

static int check_expr(struct tmpl_ctx *ctx, json_object *node, unsigned depth);

static int check_list_arg(struct tmpl_ctx *ctx, const char *fn, json_object *arg, size_t n)
{
	if (!is_type(arg, json_type_array) || json_object_array_length(arg) != n)
		return fail(ctx, "%s expects a list of %zu arguments", fn, n);
	return 0;
}

static int check_ref(struct tmpl_ctx *ctx, json_object *arg)
{
	const char *name;

	if (!is_type(arg, json_type_string))
		return fail(ctx, "Ref expects a parameter name, not %s", type_name(arg));
	name = json_object_get_string(arg);
	if (!streq(name, CERT_ID_PARAM) && !json_object_object_get_ex(ctx->declared, name, NULL))
		return fail(ctx, "Ref to '%s', which is not a declared parameter", name);
	return 0;
}

static int check_delimited(struct tmpl_ctx *ctx, const char *fn, json_object *arg, bool nonempty)
{
	json_object *delim;
	int r = check_list_arg(ctx, fn, arg, 2);

	if (r < 0)
		return r;
	delim = json_object_array_get_idx(arg, 0);
	if (!is_type(delim, json_type_string))
		return fail(ctx, "%s delimiter must be a literal string", fn);
	if (nonempty && json_object_get_string_len(delim) == 0)
		return fail(ctx, "%s delimiter must not be empty", fn);
	return 0;
}

static int check_find_in_map(struct tmpl_ctx *ctx, json_object *arg)
{
	json_object *map;
	int r = check_list_arg(ctx, "Fn::FindInMap", arg, 3);

	if (r < 0)
		return r;
	map = json_object_array_get_idx(arg, 0);
	if (!ctx->mappings)
		return fail(ctx, "Fn::FindInMap is used but the template has no Mappings");
	if (is_type(map, json_type_string) &&
	    !json_object_object_get_ex(ctx->mappings, json_object_get_string(map), NULL))
		return fail(ctx, "Fn::FindInMap: mapping '%s' is not defined in Mappings",
		            json_object_get_string(map));
	return 0;
}

static int check_sub(struct tmpl_ctx *ctx, json_object *arg)
{
	if (is_type(arg, json_type_string))
		return 0;
	if (!is_type(arg, json_type_array) || json_object_array_length(arg) != 2 ||
	    !is_type(json_object_array_get_idx(arg, 0), json_type_string) ||
	    !is_type(json_object_array_get_idx(arg, 1), json_type_object))
		return fail(ctx, "Fn::Sub expects a string or a list [string, {variables}]");
	return 0;
}

static int check_function(struct tmpl_ctx *ctx, const char *fn, json_object *arg)
{
	if (streq(fn, "Ref"))
		return check_ref(ctx, arg);
	if (streq(fn, "Fn::Join"))
		return check_delimited(ctx, fn, arg, false);
	if (streq(fn, "Fn::Split"))
		return check_delimited(ctx, fn, arg, true);
	if (streq(fn, "Fn::Select"))
		return check_list_arg(ctx, fn, arg, 2);
	if (streq(fn, "Fn::FindInMap"))
		return check_find_in_map(ctx, arg);
	if (streq(fn, "Fn::Sub"))
		return check_sub(ctx, arg);
	return fail(ctx, "Unsupported intrinsic function %s", fn);
}

static int check_expr(struct tmpl_ctx *ctx, json_object *node, unsigned depth)
{
	struct json_object_iter it;
	const char *fn;
	json_object *arg;
	int r;

	if (depth > TMPL_MAX_DEPTH)
		return fail(ctx, "Template is nested deeper than %d levels", TMPL_MAX_DEPTH);
	if (is_type(node, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(node); i++) {
			r = check_expr(ctx, json_object_array_get_idx(node, i), depth + 1);
			if (r < 0)
				return r;
		}
		return 0;
	}
	if (!is_type(node, json_type_object))
		return 0;
	r = as_function(ctx, node, &fn, &arg);
	if (r < 0)
		return r;
	if (r > 0) {
		r = check_function(ctx, fn, arg);
		return r < 0 ? r : check_expr(ctx, arg, depth + 1);
	}
	json_object_object_foreachC(node, it)
	{
		r = check_expr(ctx, it.val, depth + 1);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Evaluation of intrinsic functions                                                        */

static int eval_expr(struct tmpl_ctx *ctx, json_object *node, unsigned depth, json_object **ret);

/* Evaluate node and return its text in a new string object. */
static int eval_string(struct tmpl_ctx *ctx, json_object *node, unsigned depth, const char *what,
                       json_object **ret)
{
	_cleanup_(json_object_putp) json_object *v = NULL;
	const char *text;
	json_object *s;
	int r;

	r = eval_expr(ctx, node, depth, &v);
	if (r < 0)
		return r;
	r = scalar_text(ctx, v, what, &text);
	if (r < 0)
		return r;
	s = is_type(v, json_type_string) ? json_object_get(v) : json_object_new_string(text);
	if (!s)
		return -ENOMEM;
	*ret = s;
	return 0;
}

static int eval_list(struct tmpl_ctx *ctx, json_object *node, unsigned depth, const char *what,
                     json_object **ret)
{
	_cleanup_(json_object_putp) json_object *v = NULL;
	int r = eval_expr(ctx, node, depth, &v);

	if (r < 0)
		return r;
	if (!is_type(v, json_type_array))
		return fail(ctx, "%s must be a list, not %s", what, type_name(v));
	*ret = TAKE_PTR(v);
	return 0;
}

static int fn_ref(struct tmpl_ctx *ctx, json_object *arg, unsigned depth, json_object **ret)
{
	const char *name = json_object_get_string(arg);
	json_object *v;

	if (!json_object_object_get_ex(ctx->params, name, &v)) {
		if (streq(name, CERT_ID_PARAM))
			return fail(ctx, "Ref: parameter '%s' has no value", name);
		return fail(ctx, "Ref to '%s', which is not a declared parameter", name);
	}
	*ret = json_object_get(v);
	return 0;
}

static int fn_join(struct tmpl_ctx *ctx, json_object *arg, unsigned depth, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *list = NULL;
	_cleanup_(printbuf_freep) struct printbuf *pb = printbuf_new();
	json_object *delim = json_object_array_get_idx(arg, 0);
	const char *text;
	int r;

	if (!pb)
		return -ENOMEM;
	r = eval_list(ctx, json_object_array_get_idx(arg, 1), depth + 1, "Fn::Join argument 2",
	              &list);
	if (r < 0)
		return r;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		json_object *el = json_object_array_get_idx(list, i);

		r = scalar_text(ctx, el, "Fn::Join list element", &text);
		if (r < 0)
			return r;
		if (i > 0)
			r = append(ctx, pb, json_object_get_string(delim),
			           (size_t)json_object_get_string_len(delim), "Fn::Join");
		if (r >= 0)
			r = append(ctx, pb, text, strlen(text), "Fn::Join");
		if (r < 0)
			return r;
	}
	return printbuf_to_string(pb, ret);
}

static int select_index(struct tmpl_ctx *ctx, json_object *v, int64_t *ret)
{
	const char *s;
	char *end;

	if (is_type(v, json_type_int)) {
		*ret = json_object_get_int64(v);
	} else if (is_type(v, json_type_string)) {
		s = json_object_get_string(v);
		if (*s < '0' || *s > '9')
			return fail(ctx, "Fn::Select index '%s' is not a number", s);
		errno = 0;
		*ret = strtoll(s, &end, 10);
		if (errno != 0 || *end != '\0')
			return fail(ctx, "Fn::Select index '%s' is not a number", s);
	} else {
		return fail(ctx, "Fn::Select index must be a number, not %s", type_name(v));
	}
	return 0;
}

/* Neither nulls nor out-of-range indexes are checked by AWS, and both fail provisioning. */
static int fn_select(struct tmpl_ctx *ctx, json_object *arg, unsigned depth, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *index = NULL, *list = NULL;
	int64_t i;
	size_t n;
	int r;

	r = eval_expr(ctx, json_object_array_get_idx(arg, 0), depth + 1, &index);
	if (r >= 0)
		r = select_index(ctx, index, &i);
	if (r >= 0)
		r = eval_list(ctx, json_object_array_get_idx(arg, 1), depth + 1,
		              "Fn::Select argument 2", &list);
	if (r < 0)
		return r;
	n = json_object_array_length(list);
	if (i < 0 || (uint64_t)i >= n)
		return fail(ctx, "Fn::Select index %" PRId64 " is out of range for a list of %zu",
		            i, n);
	*ret = json_object_get(json_object_array_get_idx(list, (size_t)i));
	if (!*ret)
		return fail(ctx, "Fn::Select selected a null element");
	return 0;
}

static int add_string(json_object *list, const char *s, size_t len)
{
	json_object *v = json_object_new_string_len(s, (int)len);

	if (!v)
		return -ENOMEM;
	if (json_object_array_add(list, v) < 0) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

static int fn_split(struct tmpl_ctx *ctx, json_object *arg, unsigned depth, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *source = NULL, *list = json_object_new_array();
	const char *delim = json_object_get_string(json_object_array_get_idx(arg, 0));
	size_t dlen = strlen(delim);
	const char *p, *hit;
	int r;

	if (!list)
		return -ENOMEM;
	r = eval_string(ctx, json_object_array_get_idx(arg, 1), depth + 1, "Fn::Split argument 2",
	                &source);
	if (r < 0)
		return r;
	for (p = json_object_get_string(source);; p = hit + dlen) {
		hit = strstr(p, delim);
		r = add_string(list, p, hit ? (size_t)(hit - p) : strlen(p));
		if (r < 0)
			return r;
		if (!hit)
			break;
	}
	*ret = TAKE_PTR(list);
	return 0;
}

static int fn_find_in_map(struct tmpl_ctx *ctx, json_object *arg, unsigned depth, json_object **ret)
{
	static const char *const what[] = {"mapping", "top-level key", "second-level key"};
	json_object *level = ctx->mappings, *next;
	int r;

	for (size_t i = 0; i < ARRAY_SIZE(what); i++) {
		_cleanup_(json_object_putp) json_object *key = NULL;

		r = eval_string(ctx, json_object_array_get_idx(arg, i), depth + 1,
		                "Fn::FindInMap argument", &key);
		if (r < 0)
			return r;
		if (!json_object_object_get_ex(level, json_object_get_string(key), &next))
			return fail(ctx, "Fn::FindInMap: %s '%s' not found in Mappings", what[i],
			            json_object_get_string(key));
		level = next;
	}
	*ret = json_object_get(level);
	return 0;
}

static int sub_variables(struct tmpl_ctx *ctx, json_object *vars, unsigned depth, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = json_object_new_object();
	struct json_object_iter it;
	int r;

	if (!out)
		return -ENOMEM;
	json_object_object_foreachC(vars, it)
	{
		json_object *s = NULL;

		r = eval_string(ctx, it.val, depth + 1, "Fn::Sub variable", &s);
		if (r < 0)
			return fail_within(ctx, r, "Fn::Sub variable '%s'", it.key);
		if (json_object_object_add(out, it.key, s) < 0) {
			json_object_put(s);
			return -ENOMEM;
		}
	}
	*ret = TAKE_PTR(out);
	return 0;
}

/* The value of "${name}": the list form's own variables first, then the parameters. */
static int sub_lookup(struct tmpl_ctx *ctx, json_object *vars, const char *name, size_t len,
                      const char **ret)
{
	_cleanup_free_ char *key = strndup(name, len);
	json_object *v;

	if (!key)
		return -ENOMEM;
	if (len == 0)
		return fail(ctx, "Fn::Sub: empty variable name '${}'");
	if (!(vars && json_object_object_get_ex(vars, key, &v)) &&
	    !json_object_object_get_ex(ctx->params, key, &v))
		return fail(ctx, "Fn::Sub: variable '${%s}' is neither a parameter nor a variable",
		            key);
	*ret = json_object_get_string(v);
	return 0;
}

static int substitute(struct tmpl_ctx *ctx, const char *text, json_object *vars, json_object **ret)
{
	_cleanup_(printbuf_freep) struct printbuf *pb = printbuf_new();
	const char *p = text, *open, *close, *value;
	int r;

	if (!pb)
		return -ENOMEM;
	while ((open = strstr(p, "${"))) {
		r = append(ctx, pb, p, (size_t)(open - p), "Fn::Sub");
		if (r < 0)
			return r;
		if (open[2] == '!') {
			/* "${!Name}" is the escape for a literal "${Name}". */
			r = append(ctx, pb, "${", 2, "Fn::Sub");
			p = open + 3;
		} else {
			close = strchr(open + 2, '}');
			if (!close)
				return fail(ctx, "Fn::Sub: '${' without a closing '}' in '%s'",
				            text);
			r = sub_lookup(ctx, vars, open + 2, (size_t)(close - open - 2), &value);
			if (r >= 0)
				r = append(ctx, pb, value, strlen(value), "Fn::Sub");
			p = close + 1;
		}
		if (r < 0)
			return r;
	}
	r = append(ctx, pb, p, strlen(p), "Fn::Sub");
	return r < 0 ? r : printbuf_to_string(pb, ret);
}

static int fn_sub(struct tmpl_ctx *ctx, json_object *arg, unsigned depth, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *vars = NULL;
	int r;

	if (is_type(arg, json_type_string))
		return substitute(ctx, json_object_get_string(arg), NULL, ret);
	r = sub_variables(ctx, json_object_array_get_idx(arg, 1), depth, &vars);
	if (r < 0)
		return r;
	return substitute(ctx, json_object_get_string(json_object_array_get_idx(arg, 0)), vars,
	                  ret);
}

static const struct intrinsic {
	const char *name;
	int (*eval)(struct tmpl_ctx *ctx, json_object *arg, unsigned depth, json_object **ret);
} intrinsics[] = {
    {"Ref", fn_ref},
    {"Fn::Join", fn_join},
    {"Fn::Select", fn_select},
    {"Fn::Split", fn_split},
    {"Fn::FindInMap", fn_find_in_map},
    {"Fn::Sub", fn_sub},
};

static int eval_function(struct tmpl_ctx *ctx, const char *fn, json_object *arg, unsigned depth,
                         json_object **ret)
{
	/* The static check rejects everything a function cannot take, so eval can trust arg. */
	int r = check_function(ctx, fn, arg);

	if (r < 0)
		return r;
	for (size_t i = 0; i < ARRAY_SIZE(intrinsics); i++)
		if (streq(fn, intrinsics[i].name))
			return intrinsics[i].eval(ctx, arg, depth, ret);
	return fail(ctx, "Unsupported intrinsic function %s", fn);
}

static int eval_array(struct tmpl_ctx *ctx, json_object *node, unsigned depth, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = json_object_new_array();
	int r;

	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < json_object_array_length(node); i++) {
		json_object *v = NULL;

		r = eval_expr(ctx, json_object_array_get_idx(node, i), depth + 1, &v);
		if (r < 0)
			return r;
		if (json_object_array_add(out, v) < 0) {
			json_object_put(v);
			return -ENOMEM;
		}
	}
	*ret = TAKE_PTR(out);
	return 0;
}

static int eval_object(struct tmpl_ctx *ctx, json_object *node, unsigned depth, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = NULL;
	struct json_object_iter it;
	const char *fn;
	json_object *arg;
	int r = as_function(ctx, node, &fn, &arg);

	if (r < 0)
		return r;
	if (r > 0)
		return eval_function(ctx, fn, arg, depth + 1, ret);
	out = json_object_new_object();
	if (!out)
		return -ENOMEM;
	json_object_object_foreachC(node, it)
	{
		json_object *v = NULL;

		r = eval_expr(ctx, it.val, depth + 1, &v);
		if (r < 0)
			return r;
		if (json_object_object_add(out, it.key, v) < 0) {
			json_object_put(v);
			return -ENOMEM;
		}
	}
	*ret = TAKE_PTR(out);
	return 0;
}

/* Evaluate node into a new reference (NULL for a JSON null). */
static int eval_expr(struct tmpl_ctx *ctx, json_object *node, unsigned depth, json_object **ret)
{
	if (depth > TMPL_MAX_DEPTH)
		return fail(ctx, "Template is nested deeper than %d levels", TMPL_MAX_DEPTH);
	switch (json_object_get_type(node)) {
	case json_type_object:
		return eval_object(ctx, node, depth, ret);
	case json_type_array:
		return eval_array(ctx, node, depth, ret);
	default:
		*ret = json_object_get(node);
		return 0;
	}
}

/* ---------------------------------------------------------------------------------------- */
/* Sections: Parameters, Mappings, DeviceConfiguration                                      */

static int validate_parameter(struct tmpl_ctx *ctx, const char *name, json_object *decl)
{
	static const char *const keys[] = {"Type", "Default", "Description", NULL};
	struct json_object_iter it;
	json_object *v;
	const char *text;

	if (!is_type(decl, json_type_object))
		return fail(ctx, "Parameter '%s' must be an object with a Type", name);
	json_object_object_foreachC(decl, it)
	{
		if (!name_in(it.key, keys))
			return fail(ctx, "Parameter '%s' has unsupported attribute '%s'", name,
			            it.key);
	}
	if (!json_object_object_get_ex(decl, "Type", &v) || !is_type(v, json_type_string) ||
	    !streq(json_object_get_string(v), "String"))
		return fail(ctx, "Parameter '%s' must have \"Type\": \"String\"", name);
	if (json_object_object_get_ex(decl, "Default", &v) &&
	    scalar_text(ctx, v, "Default", &text) < 0)
		return fail_within(ctx, -EINVAL, "Parameter '%s'", name);
	return 0;
}

static int validate_parameters(struct tmpl_ctx *ctx)
{
	struct json_object_iter it;
	int r;

	if (!ctx->declared)
		return 0;
	json_object_object_foreachC(ctx->declared, it)
	{
		r = validate_parameter(ctx, it.key, it.val);
		if (r < 0)
			return r;
	}
	return 0;
}

static bool mapping_value_ok(json_object *v)
{
	if (is_type(v, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			json_object *el = json_object_array_get_idx(v, i);

			if (!el || is_type(el, json_type_array) || is_type(el, json_type_object))
				return false;
		}
		return true;
	}
	return v && !is_type(v, json_type_object);
}

/* Mappings are plain data: AWS forbids parameters, pseudo parameters and functions there. */
static int validate_mappings(struct tmpl_ctx *ctx)
{
	struct json_object_iter map, top, second;

	if (!ctx->mappings)
		return 0;
	json_object_object_foreachC(ctx->mappings, map)
	{
		if (!is_type(map.val, json_type_object))
			return fail(ctx, "Mapping '%s' must be an object", map.key);
		json_object_object_foreachC(map.val, top)
		{
			if (!is_type(top.val, json_type_object))
				return fail(ctx, "Mapping '%s' key '%s' must be an object", map.key,
				            top.key);
			json_object_object_foreachC(top.val, second)
			{
				if (!mapping_value_ok(second.val))
					return fail(
					    ctx,
					    "Mapping '%s' value '%s.%s' must be a string or a list of strings (Mappings cannot contain intrinsic functions)",
					    map.key, top.key, second.key);
			}
		}
	}
	return 0;
}

static int validate_device_configuration(struct tmpl_ctx *ctx, json_object *dc)
{
	struct json_object_iter it;
	const char *fn;
	json_object *arg;
	int r;

	if (!dc)
		return 0;
	json_object_object_foreachC(dc, it)
	{
		r = is_type(it.val, json_type_object) ? as_function(ctx, it.val, &fn, &arg) : 0;
		if (r == 0 &&
		    (is_type(it.val, json_type_object) || is_type(it.val, json_type_array)))
			r = fail(ctx, "nested objects and lists are not supported");
		if (r >= 0)
			r = check_expr(ctx, it.val, 0);
		if (r < 0)
			return fail_within(ctx, r, "DeviceConfiguration '%s'", it.key);
	}
	return 0;
}

/* Each value becomes a string: DeviceConfiguration is flat [D-TMPL]. */
static int eval_device_configuration(struct tmpl_ctx *ctx, json_object *dc, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = json_object_new_object();
	struct json_object_iter it;
	int r;

	if (!out)
		return -ENOMEM;
	json_object_object_foreachC(dc, it)
	{
		json_object *s = NULL;

		r = eval_string(ctx, it.val, 0, "the value (DeviceConfiguration is flat)", &s);
		if (r < 0)
			return fail_within(ctx, r, "DeviceConfiguration '%s'", it.key);
		if (json_object_object_add(out, it.key, s) < 0) {
			json_object_put(s);
			return -ENOMEM;
		}
	}
	*ret = TAKE_PTR(out);
	return 0;
}

static int add_owned(json_object *obj, const char *key, json_object **v)
{
	if (json_object_object_add(obj, key, *v) < 0)
		return -ENOMEM;
	*v = NULL;
	return 0;
}

static int add_value(json_object *obj, const char *key, const char *value)
{
	json_object *v = json_object_new_string(value);

	if (!v)
		return -ENOMEM;
	if (json_object_object_add(obj, key, v) < 0) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

/* A declared parameter's value: the service's certificate id, the request, the Default. */
static int resolve_parameter(struct tmpl_ctx *ctx, const char *name, json_object *decl,
                             json_object *request, const char *certificate_id, const char **ret)
{
	json_object *v;

	if (certificate_id && streq(name, CERT_ID_PARAM)) {
		*ret = certificate_id;
		return 0;
	}
	if (request && json_object_object_get_ex(request, name, &v)) {
		if (!is_type(v, json_type_string))
			return fail(ctx, "Parameter '%s' must be a string, not %s", name,
			            type_name(v));
		*ret = json_object_get_string(v);
		return 0;
	}
	if (json_object_object_get_ex(decl, "Default", &v))
		return scalar_text(ctx, v, "Default", ret);
	return fail(ctx, "Parameter '%s' is required but was not provided", name);
}

/* Undeclared request parameters are ignored: devices may send extras for the hook. */
static int resolve_parameters(struct tmpl_ctx *ctx, json_object *request,
                              const char *certificate_id, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = json_object_new_object();
	struct json_object_iter it;
	const char *value;
	int r;

	if (!out)
		return -ENOMEM;
	if (request && !is_type(request, json_type_object))
		return fail(ctx, "The request parameters must be an object of strings");
	if (ctx->declared) {
		json_object_object_foreachC(ctx->declared, it)
		{
			r = resolve_parameter(ctx, it.key, it.val, request, certificate_id, &value);
			if (r >= 0)
				r = add_value(out, it.key, value);
			if (r < 0)
				return r;
		}
	}
	if (certificate_id && !json_object_object_get_ex(out, CERT_ID_PARAM, NULL)) {
		r = add_value(out, CERT_ID_PARAM, certificate_id);
		if (r < 0)
			return r;
	}
	*ret = TAKE_PTR(out);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Resources                                                                                */

struct override_rule {
	const char *key;
	bool merge; /* MERGE is valid only for the thing's AttributePayload and ThingGroups */
};

struct resource_type {
	const char *type;
	const char *const *properties;         /* allowed property names, NULL-terminated */
	const char *required;                  /* a property that must be present, or NULL */
	const struct override_rule *overrides; /* allowed OverrideSettings, or NULL for none */
	int (*validate)(struct tmpl_ctx *ctx, json_object *props);
	int (*evaluate)(struct tmpl_ctx *ctx, json_object *res, json_object **ret);
};

/* An evaluated value that names an AWS resource, as a new string checked against the API. */
static int name_value(struct tmpl_ctx *ctx, json_object *v, const char *chars, size_t max,
                      json_object **ret)
{
	_cleanup_(json_object_putp) json_object *s = NULL;
	const char *text;
	int r = scalar_text(ctx, v, "the value", &text);

	if (r < 0)
		return r;
	s = json_object_new_string(text);
	if (!s)
		return -ENOMEM;
	if (!valid_name(s, chars, 1, max))
		return fail(ctx, "'%s' is not a valid name (1-%zu of [A-Za-z0-9%s])", text, max,
		            chars);
	*ret = TAKE_PTR(s);
	return 0;
}

/* An optional name property; absent gives NULL (a JSON null in the result). */
static int eval_name(struct tmpl_ctx *ctx, json_object *props, const char *key, const char *chars,
                     size_t max, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *v = NULL;
	json_object *node;
	int r;

	if (!json_object_object_get_ex(props, key, &node)) {
		*ret = NULL;
		return 0;
	}
	r = eval_expr(ctx, node, 0, &v);
	if (r >= 0)
		r = name_value(ctx, v, chars, max, ret);
	if (r < 0)
		return fail_within(ctx, r, "property %s", key);
	return 0;
}

/* One attribute of the already evaluated AttributePayload, checked as CreateThing would. */
static int add_attribute(struct tmpl_ctx *ctx, const char *name, json_object *value,
                         json_object *out)
{
	_cleanup_(json_object_putp) json_object *name_s = json_object_new_string(name), *s = NULL;
	const char *text;
	int r;

	if (!name_s)
		return -ENOMEM;
	if (!valid_name(name_s, ATTR_NAME_CHARS, 1, TMPL_MAX_ATTR_NAME))
		return fail(ctx, "'%s' is not a valid attribute name", name);
	r = scalar_text(ctx, value, "the attribute value", &text);
	if (r < 0)
		return fail_within(ctx, r, "attribute '%s'", name);
	s = json_object_new_string(text);
	if (!s)
		return -ENOMEM;
	if (!valid_name(s, ATTR_VALUE_CHARS, 0, TMPL_MAX_ATTR_VALUE))
		return fail(ctx, "attribute '%s': '%s' is not a valid attribute value", name, text);
	return add_owned(out, name, &s);
}

static int eval_attributes(struct tmpl_ctx *ctx, json_object *props, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *v = NULL, *out = json_object_new_object();
	struct json_object_iter it;
	json_object *node;
	int r;

	if (!out)
		return -ENOMEM;
	if (json_object_object_get_ex(props, "AttributePayload", &node)) {
		r = eval_expr(ctx, node, 0, &v);
		if (r >= 0 && !is_type(v, json_type_object))
			r = fail(ctx, "must be a map of names to values, not %s", type_name(v));
		if (r < 0)
			return fail_within(ctx, r, "property AttributePayload");
		json_object_object_foreachC(v, it)
		{
			r = add_attribute(ctx, it.key, it.val, out);
			if (r < 0)
				return fail_within(ctx, r, "property AttributePayload");
		}
	}
	*ret = TAKE_PTR(out);
	return 0;
}

static int eval_groups(struct tmpl_ctx *ctx, json_object *props, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *list = NULL, *out = json_object_new_array();
	json_object *node;
	int r;

	if (!out)
		return -ENOMEM;
	if (json_object_object_get_ex(props, "ThingGroups", &node)) {
		r = eval_list(ctx, node, 0, "the value", &list);
		if (r < 0)
			return fail_within(ctx, r, "property ThingGroups");
		for (size_t i = 0; i < json_object_array_length(list); i++) {
			json_object *group = NULL;

			r = name_value(ctx, json_object_array_get_idx(list, i), NAME_CHARS,
			               TMPL_MAX_NAME, &group);
			if (r < 0)
				return fail_within(ctx, r, "property ThingGroups item %zu", i);
			if (json_object_array_add(out, group) < 0) {
				json_object_put(group);
				return -ENOMEM;
			}
		}
	}
	*ret = TAKE_PTR(out);
	return 0;
}

/* OverrideSettings were validated as literal strings: copy them as they are. */
static int copy_overrides(json_object *res, json_object *out)
{
	json_object *os, *copy = NULL;

	if (!json_object_object_get_ex(res, "OverrideSettings", &os))
		copy = json_object_new_object();
	else if (json_object_deep_copy(os, &copy, NULL) < 0)
		copy = NULL;
	if (!copy)
		return -ENOMEM;
	return add_owned(out, "OverrideSettings", &copy);
}

static int eval_thing(struct tmpl_ctx *ctx, json_object *res, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = json_object_new_object(), *name = NULL,
	                                        *attrs = NULL, *type = NULL, *groups = NULL,
	                                        *billing = NULL;
	json_object *props = json_object_object_get(res, "Properties");
	int r;

	if (!out)
		return -ENOMEM;
	r = eval_name(ctx, props, "ThingName", NAME_CHARS, TMPL_MAX_NAME, &name);
	if (r >= 0)
		r = eval_attributes(ctx, props, &attrs);
	if (r >= 0)
		r = eval_name(ctx, props, "ThingTypeName", NAME_CHARS, TMPL_MAX_NAME, &type);
	if (r >= 0)
		r = eval_groups(ctx, props, &groups);
	if (r >= 0)
		r = eval_name(ctx, props, "BillingGroup", NAME_CHARS, TMPL_MAX_NAME, &billing);
	if (r >= 0)
		r = add_owned(out, "ThingName", &name);
	if (r >= 0)
		r = add_owned(out, "AttributePayload", &attrs);
	if (r >= 0)
		r = add_owned(out, "ThingTypeName", &type);
	if (r >= 0)
		r = add_owned(out, "ThingGroups", &groups);
	if (r >= 0)
		r = add_owned(out, "BillingGroup", &billing);
	if (r >= 0)
		r = copy_overrides(res, out);
	if (r < 0)
		return r;
	*ret = TAKE_PTR(out);
	return 0;
}

static int eval_status(struct tmpl_ctx *ctx, json_object *props, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *s = NULL;
	json_object *node;
	const char *status = "ACTIVE"; /* the documented default */
	int r;

	if (json_object_object_get_ex(props, "Status", &node)) {
		r = eval_string(ctx, node, 0, "the value", &s);
		if (r < 0)
			return fail_within(ctx, r, "property Status");
		/* AWS's own samples write "Active", so the service ignores case. */
		if (strcasecmp(json_object_get_string(s), "ACTIVE") == 0)
			status = "ACTIVE";
		else if (strcasecmp(json_object_get_string(s), "INACTIVE") == 0)
			status = "INACTIVE";
		else
			return fail(ctx, "property Status: '%s' is neither ACTIVE nor INACTIVE",
			            json_object_get_string(s));
	}
	*ret = json_object_new_string(status);
	return *ret ? 0 : -ENOMEM;
}

/* Validated and not reported: the simulator does not model exclusive thing principals. */
static int check_principal_type(struct tmpl_ctx *ctx, json_object *props)
{
	_cleanup_(json_object_putp) json_object *s = NULL;
	json_object *node;
	const char *v;
	int r;

	if (!json_object_object_get_ex(props, "ThingPrincipalType", &node))
		return 0;
	r = eval_string(ctx, node, 0, "the value", &s);
	if (r < 0)
		return fail_within(ctx, r, "property ThingPrincipalType");
	v = json_object_get_string(s);
	if (!streq(v, "EXCLUSIVE_THING") && !streq(v, "NON_EXCLUSIVE_THING"))
		return fail(
		    ctx,
		    "property ThingPrincipalType: '%s' is neither EXCLUSIVE_THING nor NON_EXCLUSIVE_THING",
		    v);
	return 0;
}

static int eval_certificate(struct tmpl_ctx *ctx, json_object *res, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = json_object_new_object(), *id = NULL,
	                                        *status = NULL;
	json_object *props = json_object_object_get(res, "Properties");
	int r;

	if (!out)
		return -ENOMEM;
	r = eval_string(ctx, json_object_object_get(props, "CertificateId"), 0, "the value", &id);
	if (r < 0)
		r = fail_within(ctx, r, "property CertificateId");
	if (r >= 0)
		r = eval_status(ctx, props, &status);
	if (r >= 0)
		r = check_principal_type(ctx, props);
	if (r >= 0)
		r = add_owned(out, "CertificateId", &id);
	if (r >= 0)
		r = add_owned(out, "Status", &status);
	if (r >= 0)
		r = copy_overrides(res, out);
	if (r < 0)
		return r;
	*ret = TAKE_PTR(out);
	return 0;
}

/* The document may be an (escaped) JSON string or a JSON object; both leave as a string. */
static int eval_policy_document(struct tmpl_ctx *ctx, json_object *node, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *doc = NULL, *parsed = NULL;
	const char *text;
	int r;

	r = eval_expr(ctx, node, 0, &doc);
	if (r < 0)
		return r;
	if (is_type(doc, json_type_object)) {
		text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
		*ret = text ? json_object_new_string(text) : NULL;
		return *ret ? 0 : -ENOMEM;
	}
	if (!is_type(doc, json_type_string))
		return fail(ctx, "must be a JSON string or object, not %s", type_name(doc));
	parsed = json_tokener_parse(json_object_get_string(doc));
	if (!is_type(parsed, json_type_object))
		return fail(ctx, "is not a JSON object");
	*ret = TAKE_PTR(doc);
	return 0;
}

static int eval_policy(struct tmpl_ctx *ctx, json_object *res, json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = json_object_new_object(), *v = NULL;
	json_object *props = json_object_object_get(res, "Properties"), *node;
	const char *key;
	int r;

	if (!out)
		return -ENOMEM;
	if (json_object_object_get_ex(props, "PolicyDocument", &node)) {
		key = "PolicyDocument";
		r = eval_policy_document(ctx, node, &v);
		if (r < 0)
			r = fail_within(ctx, r, "property PolicyDocument");
	} else {
		key = "PolicyName";
		r = eval_name(ctx, props, key, POLICY_NAME_CHARS, TMPL_MAX_POLICY_NAME, &v);
	}
	if (r >= 0)
		r = add_owned(out, key, &v);
	if (r < 0)
		return r;
	*ret = TAKE_PTR(out);
	return 0;
}

static int validate_certificate(struct tmpl_ctx *ctx, json_object *props)
{
	static const char *const other_sources[] = {"CertificateSigningRequest", "CertificatePem",
	                                            "CACertificatePem"};

	for (size_t i = 0; i < ARRAY_SIZE(other_sources); i++)
		if (json_object_object_get_ex(props, other_sources[i], NULL))
			return fail(
			    ctx,
			    "property %s is not supported in a fleet provisioning template; use CertificateId",
			    other_sources[i]);
	return 0;
}

static int validate_policy(struct tmpl_ctx *ctx, json_object *props)
{
	bool name = json_object_object_get_ex(props, "PolicyName", NULL);
	bool doc = json_object_object_get_ex(props, "PolicyDocument", NULL);

	if (name == doc)
		return fail(ctx, "exactly one of PolicyName and PolicyDocument is required");
	return 0;
}

static const char *const thing_properties[] = {
    "ThingName", "AttributePayload", "ThingTypeName", "ThingGroups", "BillingGroup", NULL,
};
static const char *const cert_properties[] = {
    "CertificateId",
    "Status",
    "ThingPrincipalType",
    "CertificateSigningRequest",
    "CertificatePem",
    "CACertificatePem",
    NULL,
};
static const char *const policy_properties[] = {"PolicyName", "PolicyDocument", NULL};

static const struct override_rule thing_overrides[] = {
    {"AttributePayload", true},
    {"ThingTypeName", false},
    {"ThingGroups", true},
    {NULL, false},
};
static const struct override_rule cert_overrides[] = {{"Status", false}, {NULL, false}};

static const struct resource_type resource_types[] = {
    {TYPE_THING, thing_properties, "ThingName", thing_overrides, NULL, eval_thing},
    {TYPE_CERT, cert_properties, "CertificateId", cert_overrides, validate_certificate,
     eval_certificate},
    {TYPE_POLICY, policy_properties, NULL, NULL, validate_policy, eval_policy},
};

static const struct override_rule *find_override(const struct override_rule *rules, const char *key)
{
	for (; rules && rules->key; rules++)
		if (streq(rules->key, key))
			return rules;
	return NULL;
}

static int validate_overrides(struct tmpl_ctx *ctx, const struct resource_type *t, json_object *os)
{
	static const char *const actions[] = {"DO_NOTHING", "REPLACE", "MERGE", "FAIL", NULL};
	const struct override_rule *rule;
	struct json_object_iter it;
	const char *v;

	if (!t->overrides)
		return fail(ctx, "%s resources have no OverrideSettings", t->type);
	if (!is_type(os, json_type_object))
		return fail(ctx, "OverrideSettings must be an object");
	json_object_object_foreachC(os, it)
	{
		rule = find_override(t->overrides, it.key);
		if (!rule)
			return fail(ctx, "OverrideSettings '%s' is not valid for %s", it.key,
			            t->type);
		v = is_type(it.val, json_type_string) ? json_object_get_string(it.val) : "";
		if (!name_in(v, actions))
			return fail(
			    ctx, "OverrideSettings '%s' must be DO_NOTHING, REPLACE, MERGE or FAIL",
			    it.key);
		if (streq(v, "MERGE") && !rule->merge)
			return fail(
			    ctx,
			    "OverrideSettings '%s': MERGE is only valid for AttributePayload and ThingGroups",
			    it.key);
	}
	return 0;
}

static int validate_properties(struct tmpl_ctx *ctx, const struct resource_type *t,
                               json_object *props)
{
	struct json_object_iter it;
	int r;

	if (!is_type(props, json_type_object))
		return fail(ctx, "Properties must be an object");
	json_object_object_foreachC(props, it)
	{
		if (!name_in(it.key, t->properties))
			return fail(ctx, "property %s is not supported for %s", it.key, t->type);
		r = check_expr(ctx, it.val, 0);
		if (r < 0)
			return fail_within(ctx, r, "property %s", it.key);
	}
	/* Type-specific checks first: they explain misuse better than "X is required". */
	r = t->validate ? t->validate(ctx, props) : 0;
	if (r < 0)
		return r;
	if (t->required && !json_object_object_get_ex(props, t->required, NULL))
		return fail(ctx, "property %s is required for %s", t->required, t->type);
	return 0;
}

static const struct resource_type *find_resource_type(json_object *res)
{
	json_object *type;

	if (!json_object_object_get_ex(res, "Type", &type) || !is_type(type, json_type_string))
		return NULL;
	for (size_t i = 0; i < ARRAY_SIZE(resource_types); i++)
		if (streq(json_object_get_string(type), resource_types[i].type))
			return &resource_types[i];
	return NULL;
}

static int validate_resource(struct tmpl_ctx *ctx, json_object *res,
                             const struct resource_type **ret)
{
	static const char *const keys[] = {"Type", "Properties", "OverrideSettings", NULL};
	const struct resource_type *t;
	struct json_object_iter it;
	json_object *v;
	int r;

	if (!is_type(res, json_type_object))
		return fail(ctx, "a resource must be an object with Type and Properties");
	json_object_object_foreachC(res, it)
	{
		if (!name_in(it.key, keys))
			return fail(ctx, "unsupported resource attribute '%s'", it.key);
	}
	t = find_resource_type(res);
	if (!t)
		return fail(ctx, "Type must be one of %s, %s, %s", TYPE_THING, TYPE_CERT,
		            TYPE_POLICY);
	if (!json_object_object_get_ex(res, "Properties", &v))
		return fail(ctx, "Properties are required");
	r = validate_properties(ctx, t, v);
	if (r >= 0 && json_object_object_get_ex(res, "OverrideSettings", &v))
		r = validate_overrides(ctx, t, v);
	if (r < 0)
		return r;
	*ret = t;
	return 0;
}

/* One thing and one certificate: RegisterThing reports one thingName, one certificate. */
static int validate_resources(struct tmpl_ctx *ctx, json_object *resources)
{
	const struct resource_type *t;
	struct json_object_iter it;
	unsigned things = 0, certs = 0;
	int r;

	if (!is_type(resources, json_type_object))
		return fail(ctx, "Resources section is required");
	json_object_object_foreachC(resources, it)
	{
		r = validate_resource(ctx, it.val, &t);
		if (r < 0)
			return fail_within(ctx, r, "Resource '%s'", it.key);
		things += streq(t->type, TYPE_THING);
		certs += streq(t->type, TYPE_CERT);
		if (things > 1 || certs > 1)
			return fail(ctx, "Resource '%s': a template may hold only one %s", it.key,
			            t->type);
	}
	return 0;
}

static int place_resource(json_object *out, const struct resource_type *t, json_object **v)
{
	if (streq(t->type, TYPE_THING))
		return add_owned(out, "thing", v);
	if (streq(t->type, TYPE_CERT))
		return add_owned(out, "certificate", v);
	if (json_object_array_add(json_object_object_get(out, "policies"), *v) < 0)
		return -ENOMEM;
	*v = NULL;
	return 0;
}

static int eval_resources(struct tmpl_ctx *ctx, json_object *resources, json_object *out)
{
	struct json_object_iter it;
	int r;

	json_object_object_foreachC(resources, it)
	{
		_cleanup_(json_object_putp) json_object *v = NULL;
		const struct resource_type *t = find_resource_type(it.val);

		r = t->evaluate(ctx, it.val, &v);
		if (r < 0)
			return fail_within(ctx, r, "Resource '%s' (%s)", it.key, t->type);
		r = place_resource(out, t, &v);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Entry points                                                                             */

static int validate_document(struct tmpl_ctx *ctx, json_object *tmpl)
{
	static const char *const sections[] = {"Parameters", "Mappings", "Resources",
	                                       "DeviceConfiguration", NULL};
	struct json_object_iter it;
	int r;

	if (!is_type(tmpl, json_type_object))
		return fail(ctx, "A provisioning template must be a JSON object");
	json_object_object_foreachC(tmpl, it)
	{
		if (!name_in(it.key, sections))
			return fail(
			    ctx,
			    "Unsupported template section '%s' (allowed: Parameters, Mappings, Resources, DeviceConfiguration)",
			    it.key);
	}
	/* A section that is present must be an object, even if empty ("null" is not absent). */
	json_object_object_foreachC(tmpl, it)
	{
		if (!is_type(it.val, json_type_object))
			return fail(ctx, "%s must be an object, not %s", it.key, type_name(it.val));
	}
	ctx->declared = json_object_object_get(tmpl, "Parameters");
	ctx->mappings = json_object_object_get(tmpl, "Mappings");
	r = validate_parameters(ctx);
	if (r >= 0)
		r = validate_mappings(ctx);
	if (r >= 0)
		r = validate_resources(ctx, json_object_object_get(tmpl, "Resources"));
	if (r >= 0)
		r = validate_device_configuration(
		    ctx, json_object_object_get(tmpl, "DeviceConfiguration"));
	return r;
}

int tmpl_validate(json_object *tmpl, char *errbuf, size_t errsize)
{
	struct tmpl_ctx ctx = {.errbuf = errbuf, .errsize = errsize};

	return validate_document(&ctx, tmpl);
}

static int new_result(json_object **ret)
{
	_cleanup_(json_object_putp) json_object *out = json_object_new_object();
	json_object *policies = json_object_new_array(), *dc = json_object_new_object();

	/* "parameters" is filled in later; adding it now fixes the key order of the result. */
	if (!out || !policies || !dc || json_object_object_add(out, "parameters", NULL) < 0 ||
	    json_object_object_add(out, "thing", NULL) < 0 ||
	    json_object_object_add(out, "certificate", NULL) < 0 ||
	    add_owned(out, "policies", &policies) < 0 ||
	    add_owned(out, "deviceConfiguration", &dc) < 0) {
		json_object_put(policies);
		json_object_put(dc);
		return -ENOMEM;
	}
	*ret = TAKE_PTR(out);
	return 0;
}

int tmpl_evaluate(json_object *tmpl, json_object *params, const char *certificate_id,
                  json_object **ret, char *errbuf, size_t errsize)
{
	struct tmpl_ctx ctx = {.errbuf = errbuf, .errsize = errsize};
	_cleanup_(json_object_putp) json_object *out = NULL, *resolved = NULL, *dc = NULL;
	json_object *section;
	int r;

	if (!ret)
		return fail(&ctx, "tmpl_evaluate needs a place for its result");
	r = validate_document(&ctx, tmpl);
	if (r >= 0)
		r = resolve_parameters(&ctx, params, certificate_id, &resolved);
	if (r >= 0)
		r = new_result(&out);
	/* out owns the resolved parameters from here on; the context only borrows them. */
	ctx.params = resolved;
	if (r >= 0)
		r = add_owned(out, "parameters", &resolved);
	if (r >= 0)
		r = eval_resources(&ctx, json_object_object_get(tmpl, "Resources"), out);
	if (r >= 0 && json_object_object_get_ex(tmpl, "DeviceConfiguration", &section)) {
		r = eval_device_configuration(&ctx, section, &dc);
		if (r >= 0)
			r = add_owned(out, "deviceConfiguration", &dc);
	}
	if (r < 0)
		return r;
	*ret = TAKE_PTR(out);
	return 0;
}
