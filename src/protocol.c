/*
 * The Fleet Provisioning MQTT API in JSON (spec/aws-fleet-provisioning.md §1).
 *
 * Requests are written by a small exact-size JSON writer instead of json-c's serialiser:
 * the RegisterThing request carries the ownership token, and json-c would leave copies of
 * it in freed string and printbuf memory. Here the only copy is the buffer handed to the
 * caller, who erases it. Replies are parsed with json-c under explicit limits.
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "protocol.h"

/* Replies are one object holding at most one flat object; 8 levels bounds the parser. */
#define PROTO_JSON_DEPTH_MAX 8
/* Every certificate PEM AWS returns begins with this line (spec §1.3). */
#define PEM_CERT_BEGIN "-----BEGIN CERTIFICATE-----"
/* HTTP-style status codes are three digits; anything else is not a status. */
#define PROTO_STATUS_MAX 999

#define TOPIC_CSR          "$aws/certificates/create-from-csr/json"
#define TOPIC_REGISTER_PRE "$aws/provisioning-templates/"
#define TOPIC_REGISTER_SUF "/provision/json"

DEFINE_TRIVIAL_CLEANUP_FUNC(struct json_object *, json_object_put)
DEFINE_TRIVIAL_CLEANUP_FUNC(struct json_tokener *, json_tokener_free)

static bool is_template_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       c == '_' || c == '-';
}

int proto_template_name_valid(const char *name)
{
	size_t n;

	if (!name)
		return false;
	n = strlen(name);
	if (n < 1 || n > PROTO_TEMPLATE_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_template_char(name[i]))
			return false;
	return true;
}

/*
 * AWS allows any UTF-8 up to 128 bytes except a leading '$' (spec §3.2). fleetprovd is
 * stricter: printable ASCII without space, '+', '#' or '/', because the id also has to be
 * written into the claim policy's iot:Connect resource ARN, where wildcards, slashes and
 * invisible characters turn into policy mistakes that only show up as CONNACK refusals.
 */
int proto_client_id_valid(const char *id)
{
	size_t n;

	if (!id)
		return false;
	n = strlen(id);
	if (n < 1 || n > PROTO_CLIENT_ID_MAX || id[0] == '$')
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)id[i];

		if (c <= ' ' || c >= 0x7f || c == '+' || c == '#' || c == '/')
			return false;
	}
	return true;
}

static int topics_fill(struct proto_topics *t)
{
	int r;

	r = snprintf(t->accepted, sizeof(t->accepted), "%s/accepted", t->request);
	if (r < 0 || (size_t)r >= sizeof(t->accepted))
		return -ENAMETOOLONG;
	r = snprintf(t->rejected, sizeof(t->rejected), "%s/rejected", t->request);
	if (r < 0 || (size_t)r >= sizeof(t->rejected))
		return -ENAMETOOLONG;
	return 0;
}

int proto_topics_init(enum proto_op op, const char *template_name, struct proto_topics *ret)
{
	struct proto_topics t;
	int r;

	memset(&t, 0, sizeof(t));
	switch (op) {
	case PROTO_OP_CREATE_CERT_FROM_CSR:
		r = snprintf(t.request, sizeof(t.request), "%s", TOPIC_CSR);
		break;
	case PROTO_OP_REGISTER_THING:
		if (!proto_template_name_valid(template_name))
			return -EINVAL;
		r = snprintf(t.request, sizeof(t.request), "%s%s%s", TOPIC_REGISTER_PRE,
		             template_name, TOPIC_REGISTER_SUF);
		break;
	default:
		return -EINVAL;
	}
	if (r < 0 || (size_t)r >= sizeof(t.request))
		return -ENAMETOOLONG;
	r = topics_fill(&t);
	if (r < 0)
		return r;
	*ret = t;
	return 0;
}

enum proto_reply proto_topics_match(const struct proto_topics *t, const char *topic)
{
	if (!t || !topic)
		return PROTO_REPLY_NONE;
	if (strcmp(topic, t->accepted) == 0)
		return PROTO_REPLY_ACCEPTED;
	if (strcmp(topic, t->rejected) == 0)
		return PROTO_REPLY_REJECTED;
	return PROTO_REPLY_NONE;
}

/* Length of the UTF-8 sequence starting at s, or 0 if it is not a valid one. */
static size_t utf8_seq_len(const unsigned char *s)
{
	size_t n;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		cp = s[0] & 0x1fu;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		cp = s[0] & 0x0fu;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		cp = s[0] & 0x07u;
	} else
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3fu);
	}
	/* Overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8. */
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

static bool utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		size_t n = utf8_seq_len(p);

		if (n == 0)
			return false;
		p += n;
	}
	return true;
}

/*
 * The JSON writer runs twice over the same input: with out == NULL it only counts, so the
 * second pass can write into one buffer of exactly the right size.
 */
static size_t put_raw(char *out, size_t pos, const char *s)
{
	size_t n = strlen(s);

	if (out)
		memcpy(out + pos, s, n);
	return pos + n;
}

static size_t put_escaped_char(char *out, size_t pos, unsigned char c)
{
	static const char hex[] = "0123456789abcdef";
	char buf[7] = {'\\', 0, 0, 0, 0, 0, 0};

	switch (c) {
	case '"':
	case '\\':
		buf[1] = (char)c;
		break;
	case '\n':
		buf[1] = 'n';
		break;
	case '\r':
		buf[1] = 'r';
		break;
	case '\t':
		buf[1] = 't';
		break;
	case '\b':
		buf[1] = 'b';
		break;
	case '\f':
		buf[1] = 'f';
		break;
	default:
		memcpy(buf + 1, "u00", 3);
		buf[4] = hex[c >> 4];
		buf[5] = hex[c & 0xf];
	}
	return put_raw(out, pos, buf);
}

/* A JSON string. '/' is not escaped: PEM must travel as it is (spec §1.3). */
static size_t put_string(char *out, size_t pos, const char *s)
{
	pos = put_raw(out, pos, "\"");
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < 0x20 || *p == '"' || *p == '\\') {
			pos = put_escaped_char(out, pos, *p);
			continue;
		}
		if (out)
			out[pos] = (char)*p;
		pos++;
	}
	return put_raw(out, pos, "\"");
}

static size_t put_member(char *out, size_t pos, const char *key, const char *value)
{
	pos = put_string(out, pos, key);
	pos = put_raw(out, pos, ":");
	return put_string(out, pos, value);
}

static size_t write_csr_request(char *out, const char *csr_pem)
{
	size_t pos = put_raw(out, 0, "{");

	pos = put_member(out, pos, "certificateSigningRequest", csr_pem);
	return put_raw(out, pos, "}");
}

static size_t write_register_request(char *out, const char *token, const struct param_list *params)
{
	size_t pos = put_raw(out, 0, "{");

	pos = put_member(out, pos, "certificateOwnershipToken", token);
	if (params && params->n > 0) {
		pos = put_raw(out, pos, ",\"parameters\":{");
		for (size_t i = 0; i < params->n; i++) {
			if (i > 0)
				pos = put_raw(out, pos, ",");
			pos = put_member(out, pos, params->items[i].name, params->items[i].value);
		}
		pos = put_raw(out, pos, "}");
	}
	return put_raw(out, pos, "}");
}

int proto_build_csr_request(const char *csr_pem, char **ret, size_t *ret_len)
{
	size_t n;
	char *buf;

	if (!csr_pem || !*csr_pem || !utf8_valid(csr_pem))
		return -EINVAL;
	n = write_csr_request(NULL, csr_pem);
	if (n > PROTO_PAYLOAD_MAX)
		return -EMSGSIZE;
	buf = malloc(n + 1);
	if (!buf)
		return -ENOMEM;
	write_csr_request(buf, csr_pem);
	buf[n] = '\0';
	*ret = buf;
	*ret_len = n;
	return 0;
}

static int params_check(const struct param_list *params)
{
	if (!params)
		return 0;
	if (params->n > 0 && !params->items)
		return -EINVAL;
	for (size_t i = 0; i < params->n; i++) {
		const struct param_value *p = &params->items[i];

		if (!p->name || !*p->name || !p->value)
			return -EINVAL;
		if (!utf8_valid(p->name) || !utf8_valid(p->value))
			return -EINVAL;
		/* A JSON object with a repeated key means whatever the reader decides. */
		for (size_t j = 0; j < i; j++)
			if (strcmp(params->items[j].name, p->name) == 0)
				return -EINVAL;
	}
	return 0;
}

int proto_build_register_request(const char *token, const struct param_list *params, char **ret,
                                 size_t *ret_len)
{
	size_t n;
	char *buf;
	int r;

	if (!token || !*token || !utf8_valid(token))
		return -EINVAL;
	if (strlen(token) > PROTO_TOKEN_MAX)
		return -EMSGSIZE;
	r = params_check(params);
	if (r < 0)
		return r;
	n = write_register_request(NULL, token, params);
	if (n > PROTO_PAYLOAD_MAX)
		return -EMSGSIZE;
	buf = malloc(n + 1);
	if (!buf)
		return -ENOMEM;
	write_register_request(buf, token, params);
	buf[n] = '\0';
	*ret = buf;
	*ret_len = n;
	return 0;
}

static bool only_json_whitespace(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
			return false;
	return true;
}

/*
 * true if a JSON string in p escapes a NUL character. json-c keeps object keys as C
 * strings, so a key "a\u0000b" would silently turn into "a"; refusing the escape outright
 * covers keys and values alike. Backslashes only occur inside strings in valid JSON, and
 * walking escape by escape keeps "\\u0000" (an escaped backslash) from matching.
 */
static bool has_escaped_nul(const char *p, size_t n)
{
	for (size_t i = 0; i + 1 < n; i++) {
		if (p[i] != '\\')
			continue;
		if (p[i + 1] == 'u' && n - i >= 6 && memcmp(p + i + 2, "0000", 4) == 0)
			return true;
		i++; /* skip the escaped character */
	}
	return false;
}

/*
 * Parse payload as one JSON object and nothing else. The size is checked before any
 * parsing, the nesting depth is bounded, UTF-8 is validated, and trailing bytes (a second
 * document, garbage, a NUL) make the whole payload invalid.
 */
static int parse_object(const void *payload, size_t len, struct json_object **ret)
{
	_cleanup_(json_tokener_freep) struct json_tokener *tok = NULL;
	_cleanup_(json_object_putp) struct json_object *obj = NULL;
	size_t end;

	if (len > PROTO_PAYLOAD_MAX)
		return -EMSGSIZE;
	if (!payload || len == 0 || has_escaped_nul(payload, len))
		return -EBADMSG;
	tok = json_tokener_new_ex(PROTO_JSON_DEPTH_MAX);
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	obj = json_tokener_parse_ex(tok, payload, (int)len);
	if (!obj || json_tokener_get_error(tok) != json_tokener_success)
		return -EBADMSG;
	end = json_tokener_get_parse_end(tok);
	if (end > len || !only_json_whitespace((const char *)payload + end, len - end))
		return -EBADMSG;
	if (!json_object_is_type(obj, json_type_object))
		return -EBADMSG;
	*ret = TAKE_PTR(obj);
	return 0;
}

/*
 * The string value v, checked: -EBADMSG if it is not a string or holds a NUL (which would
 * silently shorten it in C), -EMSGSIZE if longer than max bytes.
 */
static int string_value(struct json_object *v, size_t max, const char **ret, size_t *ret_len)
{
	const char *s;
	size_t n;

	if (!json_object_is_type(v, json_type_string))
		return -EBADMSG;
	s = json_object_get_string(v);
	n = (size_t)json_object_get_string_len(v);
	if (!s || strlen(s) != n)
		return -EBADMSG;
	if (n > max)
		return -EMSGSIZE;
	*ret = s;
	*ret_len = n;
	return 0;
}

/* A required string member of obj, copied: -EBADMSG if absent, null or empty. */
static int required_string(struct json_object *obj, const char *key, size_t max, char **ret)
{
	struct json_object *v;
	const char *s;
	size_t n;
	char *copy;
	int r;

	if (!json_object_object_get_ex(obj, key, &v) || !v)
		return -EBADMSG;
	r = string_value(v, max, &s, &n);
	if (r < 0)
		return r;
	if (n == 0)
		return -EBADMSG;
	copy = strndup(s, n);
	if (!copy)
		return -ENOMEM;
	*ret = copy;
	return 0;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool cert_id_valid(const char *id)
{
	if (strlen(id) != PROTO_CERT_ID_LEN)
		return false;
	for (size_t i = 0; i < PROTO_CERT_ID_LEN; i++)
		if (!is_hex(id[i]))
			return false;
	return true;
}

int proto_parse_cert_accepted(const void *payload, size_t len, struct proto_cert_accepted *ret)
{
	_cleanup_(json_object_putp) struct json_object *obj = NULL;
	_cleanup_free_ char *id = NULL, *pem = NULL;
	_cleanup_erase_ char *token = NULL;
	int r;

	r = parse_object(payload, len, &obj);
	if (r < 0)
		return r;
	/* The id names a directory later: exactly 64 hex characters (spec §1.3). */
	r = required_string(obj, "certificateId", PROTO_CERT_ID_LEN, &id);
	if (r == -EMSGSIZE || (r >= 0 && !cert_id_valid(id)))
		return -EBADMSG;
	if (r < 0)
		return r;
	r = required_string(obj, "certificatePem", PROTO_CERT_PEM_MAX, &pem);
	if (r < 0)
		return r;
	if (strncmp(pem, PEM_CERT_BEGIN, strlen(PEM_CERT_BEGIN)) != 0)
		return -EBADMSG;
	r = required_string(obj, "certificateOwnershipToken", PROTO_TOKEN_MAX, &token);
	if (r < 0)
		return r;
	*ret = (struct proto_cert_accepted){
	    .certificate_id = TAKE_PTR(id),
	    .certificate_pem = TAKE_PTR(pem),
	    .ownership_token = TAKE_PTR(token),
	};
	return 0;
}

/* AWS thing names (CreateThing API): 1-128 of [a-zA-Z0-9:_-]. */
static bool thing_name_valid(const char *name)
{
	for (const char *p = name; *p; p++)
		if (!is_template_char(*p) && *p != ':')
			return false;
	return *name != '\0';
}

/*
 * DeviceConfiguration is documented as flat string->string (spec §2.1). Numbers and
 * booleans are accepted and kept in their JSON spelling ("42", "true"), because a template
 * author can write them without quotes and the value is still meaningful. null, NaN,
 * arrays and objects are rejected: there is no faithful flat string for them.
 */
static int devconf_value(struct json_object *v, char **ret)
{
	enum json_type type = json_object_get_type(v);
	const char *s;
	size_t n;
	int r;

	if (type == json_type_string) {
		r = string_value(v, PROTO_DEVCONF_VALUE_MAX, &s, &n);
		if (r < 0)
			return r;
	} else if (type == json_type_int || type == json_type_boolean ||
	           (type == json_type_double && isfinite(json_object_get_double(v)))) {
		s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
		if (!s)
			return -ENOMEM;
		n = strlen(s);
		if (n > PROTO_DEVCONF_VALUE_MAX)
			return -EMSGSIZE;
	} else
		return -EBADMSG;
	*ret = strndup(s, n);
	return *ret ? 0 : -ENOMEM;
}

static void devconf_free(struct proto_devconf_entry *e, size_t n)
{
	for (size_t i = 0; e && i < n; i++) {
		free(e[i].key);
		free(e[i].value);
	}
	free(e);
}

static int devconf_entry(const char *key, struct json_object *v, struct proto_devconf_entry *e)
{
	size_t n = strlen(key);
	int r;

	if (n == 0)
		return -EBADMSG;
	if (n > PROTO_DEVCONF_KEY_MAX)
		return -EMSGSIZE;
	r = devconf_value(v, &e->value);
	if (r < 0)
		return r;
	e->key = strdup(key);
	return e->key ? 0 : -ENOMEM;
}

static int parse_devconf(struct json_object *obj, struct proto_devconf_entry **ret, size_t *ret_n)
{
	struct proto_devconf_entry *entries;
	size_t count, i = 0;
	int r = 0;

	if (!json_object_is_type(obj, json_type_object))
		return -EBADMSG;
	count = (size_t)json_object_object_length(obj);
	if (count > PROTO_DEVCONF_ENTRIES_MAX)
		return -EMSGSIZE;
	entries = calloc(count ? count : 1, sizeof(*entries));
	if (!entries)
		return -ENOMEM;
	json_object_object_foreach(obj, key, v)
	{
		if (r < 0 || i >= count)
			break;
		r = devconf_entry(key, v, &entries[i++]);
	}
	if (r < 0) {
		devconf_free(entries, count);
		return r;
	}
	*ret = entries;
	*ret_n = i;
	return 0;
}

int proto_parse_register_accepted(const void *payload, size_t len,
                                  struct proto_register_accepted *ret)
{
	_cleanup_(json_object_putp) struct json_object *obj = NULL;
	_cleanup_free_ char *thing = NULL;
	struct proto_devconf_entry *entries = NULL;
	struct json_object *dc;
	size_t n = 0;
	int r;

	r = parse_object(payload, len, &obj);
	if (r < 0)
		return r;
	/* Required: fleetprovd names the identity after the thing (see protocol.h). */
	r = required_string(obj, "thingName", PROTO_THING_NAME_MAX, &thing);
	if (r < 0)
		return r;
	if (!thing_name_valid(thing))
		return -EBADMSG;
	if (json_object_object_get_ex(obj, "deviceConfiguration", &dc) && dc) {
		r = parse_devconf(dc, &entries, &n);
		if (r < 0)
			return r;
	}
	*ret = (struct proto_register_accepted){
	    .thing_name = TAKE_PTR(thing),
	    .device_configuration = entries,
	    .n_device_configuration = n,
	};
	return 0;
}

/*
 * Copy an optional rejection text, cut to max bytes on a character boundary. Control
 * characters become spaces: the text ends up in log lines, where a newline from the peer
 * could otherwise fake a record.
 */
static int rejection_text(struct json_object *obj, const char *key, size_t max, char **ret)
{
	struct json_object *v;
	const char *s;
	size_t n, cut = 0;
	char *copy;
	int r;

	if (!json_object_object_get_ex(obj, key, &v) || !v) {
		*ret = NULL;
		return 0;
	}
	r = string_value(v, SIZE_MAX, &s, &n);
	if (r < 0)
		return r;
	/* The tokener validated UTF-8, so stepping by sequence length stays in bounds. */
	while (cut < n) {
		size_t step = utf8_seq_len((const unsigned char *)s + cut);

		if (step == 0 || cut + step > max)
			break;
		cut += step;
	}
	copy = strndup(s, cut);
	if (!copy)
		return -ENOMEM;
	for (char *p = copy; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	*ret = copy;
	return 0;
}

static int status_code(struct json_object *obj, int *ret)
{
	struct json_object *v;
	int64_t code;

	if (!json_object_object_get_ex(obj, "statusCode", &v) ||
	    !json_object_is_type(v, json_type_int))
		return -EBADMSG;
	code = json_object_get_int64(v);
	if (code < 0 || code > PROTO_STATUS_MAX)
		return -EBADMSG;
	*ret = (int)code;
	return 0;
}

int proto_parse_rejection(const void *payload, size_t len, struct proto_rejection *ret)
{
	_cleanup_(json_object_putp) struct json_object *obj = NULL;
	_cleanup_free_ char *code = NULL, *message = NULL;
	int status, r;

	r = parse_object(payload, len, &obj);
	if (r < 0)
		return r;
	r = status_code(obj, &status);
	if (r < 0)
		return r;
	r = rejection_text(obj, "errorCode", PROTO_ERROR_CODE_MAX, &code);
	if (r < 0)
		return r;
	r = rejection_text(obj, "errorMessage", PROTO_ERROR_MESSAGE_MAX, &message);
	if (r < 0)
		return r;
	*ret = (struct proto_rejection){
	    .status_code = status,
	    .error_code = TAKE_PTR(code),
	    .error_message = TAKE_PTR(message),
	};
	return 0;
}

void proto_cert_accepted_clear(struct proto_cert_accepted *r)
{
	if (!r)
		return;
	free(r->certificate_id);
	free(r->certificate_pem);
	erase_and_freep(&r->ownership_token);
	*r = (struct proto_cert_accepted){0};
}

void proto_register_accepted_clear(struct proto_register_accepted *r)
{
	if (!r)
		return;
	free(r->thing_name);
	devconf_free(r->device_configuration, r->n_device_configuration);
	*r = (struct proto_register_accepted){0};
}

void proto_rejection_clear(struct proto_rejection *r)
{
	if (!r)
		return;
	free(r->error_code);
	free(r->error_message);
	*r = (struct proto_rejection){0};
}

static bool mentions_token(const struct proto_rejection *r)
{
	return (r->error_code && strcasestr(r->error_code, "OwnershipToken")) ||
	       (r->error_message && (strcasestr(r->error_message, "ownership token") ||
	                             strcasestr(r->error_message, "OwnershipToken")));
}

static bool mentions_conflict(const struct proto_rejection *r)
{
	return r->status_code == 409 || (r->error_code && strcasestr(r->error_code, "Conflict"));
}

static bool is_transient_status(int status)
{
	return status == 429 || status >= 500 || status < 400;
}

static bool error_code_starts(const struct proto_rejection *r, const char *prefix)
{
	return r->error_code && strncmp(r->error_code, prefix, strlen(prefix)) == 0;
}

/*
 * AWS's API reference lists ThrottlingException as HTTP 400 for CreateCertificateFromCsr
 * and RegisterThing (docs/aws-behaviour.md §1), so the errorCode decides as much as the
 * status. The prefixes also catch variants AWS may coin (ThrottlingException.Account).
 */
bool proto_rejection_is_throttle(const struct proto_rejection *r)
{
	return r && (r->status_code == 429 || error_code_starts(r, "Throttling"));
}

static bool is_transient_error_code(const struct proto_rejection *r)
{
	return error_code_starts(r, "Throttling") || error_code_starts(r, "ServiceUnavailable") ||
	       error_code_starts(r, "InternalFailure");
}

/*
 * The table (design.md decision 7; the statusCodes AWS is known to send are in spec §1.6):
 *   429, 5xx                                            TRANSIENT
 *   errorCode Throttling*, ServiceUnavailable*,         TRANSIENT, whatever the status
 *   InternalFailure*                                    (AWS sends ThrottlingException as 400)
 *   RegisterThing 4xx naming the ownership token        RESTART_FLOW (expired or invalid)
 *   other 4xx                                           PERMANENT
 *   anything else (< 400 or > 599: not a documented     TRANSIENT: the service said no
 *   rejection status)                                   without saying why; back off
 * The token test is not tied to 400: AWS documents no status for an expired token, and
 * a new CSR is the only fix for a refused token whatever the status.
 */
enum proto_error_class proto_rejection_classify(enum proto_op op, const struct proto_rejection *r)
{
	if (!r)
		return PROTO_ERROR_PERMANENT;
	if (is_transient_status(r->status_code) || is_transient_error_code(r))
		return PROTO_ERROR_TRANSIENT;
	if (op == PROTO_OP_REGISTER_THING && mentions_token(r))
		return PROTO_ERROR_RESTART_FLOW;
	return PROTO_ERROR_PERMANENT;
}

static const char *hint_4xx(enum proto_op op, const struct proto_rejection *r)
{
	bool csr = op == PROTO_OP_CREATE_CERT_FROM_CSR;

	switch (r->status_code) {
	case 400:
		return csr ? "the CSR was refused: check key.type (RSA >= 2048 or EC "
		             "P-256/384/521) and key.subject"
		           : "the template rejected the parameters: check that template.parameters "
		             "match the template's Parameters";
	case 401:
	case 403:
		return csr ? "the claim certificate's policy denied it: check that the claim "
		             "policy allows the create-from-csr topics (see README)"
		           : "the claim certificate's policy or the pre-provisioning hook denied it: "
		             "check that the claim policy allows the provision topics (see README) "
		             "and the hook's logs";
	case 404:
		return "the provisioning template was not found or is disabled: check "
		       "template.name and that the template exists and is enabled";
	default:
		return "AWS IoT refused the request: see the status, errorCode and errorMessage; "
		       "it is retried on the slow schedule";
	}
}

const char *proto_rejection_hint(enum proto_op op, const struct proto_rejection *r)
{
	if (!r)
		return "no rejection details";
	if (proto_rejection_is_throttle(r))
		return "throttled by AWS: retrying with backoff";
	if (r->status_code >= 500 || is_transient_error_code(r))
		return "AWS IoT had an internal error: retrying with backoff";
	if (r->status_code < 400)
		return "AWS IoT sent an unexpected status: retrying with backoff";
	if (op == PROTO_OP_REGISTER_THING && mentions_token(r))
		return "the certificate ownership token was refused (expired or invalid): starting "
		       "over with a new CSR";
	if (mentions_conflict(r))
		return "a resource conflicts with the template's OverrideSettings (FAIL on an "
		       "existing thing or certificate): change the template or remove the "
		       "conflicting resource";
	return hint_4xx(op, r);
}
