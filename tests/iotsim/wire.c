/* Topic classification and the /rejected payload of the Fleet Provisioning MQTT API. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "wire.h"

#define CERTS_PREFIX     "$aws/certificates/"
#define TEMPLATES_PREFIX "$aws/provisioning-templates/"

static const char *const op_names[_API_OP_MAX] = {
    [API_CSR] = "CreateCertificateFromCsr",
    [API_CREATE] = "CreateKeysAndCertificate",
    [API_REGISTER] = "RegisterThing",
};

static const char *const op_short[_API_OP_MAX] = {
    [API_CSR] = "csr",
    [API_CREATE] = "create",
    [API_REGISTER] = "register",
};

const char *api_op_name(enum api_op op)
{
	return op >= 0 && op < _API_OP_MAX ? op_names[op] : "unknown";
}

const char *api_op_short(enum api_op op)
{
	return op >= 0 && op < _API_OP_MAX ? op_short[op] : "unknown";
}

enum api_op api_op_from_short(const char *s)
{
	for (int i = 0; i < _API_OP_MAX; i++)
		if (strcmp(s, op_short[i]) == 0)
			return (enum api_op)i;
	return _API_OP_INVALID;
}

int wire_template_name_valid(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > TEMPLATE_NAME_MAX)
		return 0;
	return strspn(name, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-") ==
	       n;
}

/* rest is "<json|cbor>[/accepted|/rejected]". */
static int parse_format_and_kind(const char *rest, struct wire_topic *t)
{
	const char *slash = strchr(rest, '/');
	size_t flen = slash ? (size_t)(slash - rest) : strlen(rest);

	if (flen == 4 && strncmp(rest, "json", 4) == 0)
		t->format = WIRE_JSON;
	else if (flen == 4 && strncmp(rest, "cbor", 4) == 0)
		t->format = WIRE_CBOR;
	else
		return -EINVAL;
	if (!slash)
		t->kind = WIRE_REQUEST;
	else if (strcmp(slash, "/accepted") == 0)
		t->kind = WIRE_ACCEPTED;
	else if (strcmp(slash, "/rejected") == 0)
		t->kind = WIRE_REJECTED;
	else
		return -EINVAL;
	return 0;
}

static int parse_register_topic(const char *rest, struct wire_topic *t)
{
	const char *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : 0;

	if (!slash || n == 0 || n > TEMPLATE_NAME_MAX)
		return -EINVAL;
	memcpy(t->template_name, rest, n);
	t->template_name[n] = '\0';
	if (!wire_template_name_valid(t->template_name))
		return -EINVAL;
	if (strncmp(slash, "/provision/", 11) != 0)
		return -EINVAL;
	t->op = API_REGISTER;
	return parse_format_and_kind(slash + 11, t);
}

int wire_parse_topic(const char *topic, struct wire_topic *ret)
{
	struct wire_topic t = {0};
	int r;

	if (strncmp(topic, CERTS_PREFIX "create-from-csr/", strlen(CERTS_PREFIX) + 16) == 0) {
		t.op = API_CSR;
		r = parse_format_and_kind(topic + strlen(CERTS_PREFIX) + 16, &t);
	} else if (strncmp(topic, CERTS_PREFIX "create/", strlen(CERTS_PREFIX) + 7) == 0) {
		t.op = API_CREATE;
		r = parse_format_and_kind(topic + strlen(CERTS_PREFIX) + 7, &t);
	} else if (strncmp(topic, TEMPLATES_PREFIX, strlen(TEMPLATES_PREFIX)) == 0) {
		r = parse_register_topic(topic + strlen(TEMPLATES_PREFIX), &t);
	} else {
		r = -EINVAL;
	}
	if (r < 0)
		return r;
	*ret = t;
	return 0;
}

void wire_error_set(struct wire_error *e, int status, const char *code, const char *fmt, ...)
{
	va_list ap;

	e->status = status;
	snprintf(e->code, sizeof(e->code), "%s", code);
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
}

json_object *wire_rejection(const struct wire_error *e)
{
	json_object *obj = json_object_new_object();

	if (!obj)
		return NULL;
	json_object_object_add(obj, "statusCode", json_object_new_int(e->status));
	json_object_object_add(obj, "errorCode", json_object_new_string(e->code));
	json_object_object_add(obj, "errorMessage", json_object_new_string(e->message));
	return obj;
}
