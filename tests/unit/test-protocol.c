/* Unit tests for protocol.c: topics, request builders, reply parsers, rejection handling. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "macro.h"
#include "protocol.h"

#define FIXTURES TEST_SRCDIR "/unit/fixtures/protocol/"

#define CERT_ID "3f1c0a9e5b7d2c4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e"
#define CERT_PEM                                                                                   \
	"-----BEGIN CERTIFICATE-----\n"                                                            \
	"MIIBszCCAVmgAwIBAgIUQ2/+x9kT0rY3fW8/Lb1e4mZk2hEwCgYIKoZIzj0EAwIw\n"                       \
	"GzEZMBcGA1UEAwwQQVdTIElvVCBDZXJ0aWZpY2F0ZTAeFw0yNjAxMDEwMDAwMDBa\n"                       \
	"-----END CERTIFICATE-----\n"
#define TOKEN "eyJ2ZXJzaW9uIjoiMjAxOS0wNC0xOSIsImV4cGlyZXMiOjE3Mzk0NjE2MDB9/opaque+token=="

DEFINE_TRIVIAL_CLEANUP_FUNC(struct json_object *, json_object_put)

struct blob {
	char *data;
	size_t len;
};

static void blob_free(struct blob *b)
{
	free(b->data);
}

/* A fixture's bytes, not NUL-terminated on purpose: the parsers must honour len. */
static struct blob fixture(const char *name)
{
	char path[512];
	struct stat st;
	struct blob b;
	int fd;

	snprintf(path, sizeof(path), FIXTURES "%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail_msg("cannot open fixture '%s'", path);
	assert_int_equal(fstat(fd, &st), 0);
	b.len = (size_t)st.st_size;
	b.data = malloc(b.len ? b.len : 1);
	assert_non_null(b.data);
	assert_int_equal(read(fd, b.data, b.len), (ssize_t)b.len);
	close(fd);
	return b;
}

static char *fixture_string(const char *name)
{
	struct blob b = fixture(name);
	char *s = strndup(b.data, b.len);

	blob_free(&b);
	assert_non_null(s);
	return s;
}

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* printf into a fresh string. */
_printf_(1, 2) static char *format(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, fmt);
	assert_true(vasprintf(&s, fmt, ap) >= 0);
	va_end(ap);
	return s;
}

static struct json_object *parse_json(const char *s)
{
	struct json_object *o = json_tokener_parse(s);

	assert_non_null(o);
	assert_true(json_object_is_type(o, json_type_object));
	return o;
}

static const char *member(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		return NULL;
	assert_true(json_object_is_type(v, json_type_string));
	return json_object_get_string(v);
}

/* ---- names and topics ---- */

static void test_template_name_valid(void **state)
{
	_cleanup_free_ char *max = repeat('T', PROTO_TEMPLATE_NAME_MAX);
	_cleanup_free_ char *over = repeat('T', PROTO_TEMPLATE_NAME_MAX + 1);

	assert_true(proto_template_name_valid("GatewayTemplate"));
	assert_true(proto_template_name_valid("a"));
	assert_true(proto_template_name_valid("gw_Template-09"));
	assert_true(proto_template_name_valid(max));
	assert_false(proto_template_name_valid(over));
	assert_false(proto_template_name_valid(NULL));
	assert_false(proto_template_name_valid(""));
	assert_false(proto_template_name_valid("Gateway Template"));
	assert_false(proto_template_name_valid("a/b"));
	assert_false(proto_template_name_valid("a+"));
	assert_false(proto_template_name_valid("#"));
	assert_false(proto_template_name_valid("a.b"));
	assert_false(proto_template_name_valid("Gr\xc3\xbc\xc3\x9f"
	                                       "e"));
}

static void test_client_id_valid(void **state)
{
	_cleanup_free_ char *max = repeat('c', PROTO_CLIENT_ID_MAX);
	_cleanup_free_ char *over = repeat('c', PROTO_CLIENT_ID_MAX + 1);

	assert_true(proto_client_id_valid("gw-GW-00042"));
	assert_true(proto_client_id_valid("x"));
	assert_true(proto_client_id_valid("a$b:c@d.e_f~g"));
	assert_true(proto_client_id_valid(max));
	assert_false(proto_client_id_valid(over));
	assert_false(proto_client_id_valid(NULL));
	assert_false(proto_client_id_valid(""));
	assert_false(proto_client_id_valid("$aws"));
	assert_false(proto_client_id_valid("gw 1"));
	assert_false(proto_client_id_valid("gw+1"));
	assert_false(proto_client_id_valid("gw#1"));
	assert_false(proto_client_id_valid("gw/1"));
	assert_false(proto_client_id_valid("gw\t1"));
	assert_false(proto_client_id_valid("gw\x7f"));
	assert_false(proto_client_id_valid("gw-\xc3\xa9"));
}

static void test_topics_csr(void **state)
{
	struct proto_topics t;

	/* The template name plays no part in the CSR topics. */
	assert_int_equal(proto_topics_init(PROTO_OP_CREATE_CERT_FROM_CSR, NULL, &t), 0);
	assert_string_equal(t.request, "$aws/certificates/create-from-csr/json");
	assert_string_equal(t.accepted, "$aws/certificates/create-from-csr/json/accepted");
	assert_string_equal(t.rejected, "$aws/certificates/create-from-csr/json/rejected");
}

static void test_topics_register(void **state)
{
	_cleanup_free_ char *max = repeat('T', PROTO_TEMPLATE_NAME_MAX);
	struct proto_topics t;

	assert_int_equal(proto_topics_init(PROTO_OP_REGISTER_THING, "GatewayTemplate", &t), 0);
	assert_string_equal(t.request,
	                    "$aws/provisioning-templates/GatewayTemplate/provision/json");
	assert_string_equal(t.accepted,
	                    "$aws/provisioning-templates/GatewayTemplate/provision/json/accepted");
	assert_string_equal(t.rejected,
	                    "$aws/provisioning-templates/GatewayTemplate/provision/json/rejected");

	/* spec §1.2: the longest RegisterThing topic is 88 bytes. */
	assert_int_equal(proto_topics_init(PROTO_OP_REGISTER_THING, max, &t), 0);
	assert_int_equal(strlen(t.rejected), 88);
}

static void test_topics_invalid(void **state)
{
	struct proto_topics t, before;

	memset(&t, 'x', sizeof(t));
	before = t;
	assert_int_equal(proto_topics_init(PROTO_OP_REGISTER_THING, NULL, &t), -EINVAL);
	assert_int_equal(proto_topics_init(PROTO_OP_REGISTER_THING, "", &t), -EINVAL);
	assert_int_equal(proto_topics_init(PROTO_OP_REGISTER_THING, "a/+/b", &t), -EINVAL);
	assert_int_equal(proto_topics_init(_PROTO_OP_MAX, "GatewayTemplate", &t), -EINVAL);
	/* Outputs are written on success only. */
	assert_memory_equal(&t, &before, sizeof(t));
}

static void test_topics_match(void **state)
{
	struct proto_topics csr, reg;

	assert_int_equal(proto_topics_init(PROTO_OP_CREATE_CERT_FROM_CSR, NULL, &csr), 0);
	assert_int_equal(proto_topics_init(PROTO_OP_REGISTER_THING, "GatewayTemplate", &reg), 0);

	assert_int_equal(
	    proto_topics_match(&csr, "$aws/certificates/create-from-csr/json/accepted"),
	    PROTO_REPLY_ACCEPTED);
	assert_int_equal(
	    proto_topics_match(&csr, "$aws/certificates/create-from-csr/json/rejected"),
	    PROTO_REPLY_REJECTED);
	assert_int_equal(proto_topics_match(&reg, reg.accepted), PROTO_REPLY_ACCEPTED);
	assert_int_equal(proto_topics_match(&reg, reg.rejected), PROTO_REPLY_REJECTED);

	/* Exact comparison only: no prefixes, suffixes, case folding or other operations. */
	assert_int_equal(proto_topics_match(&csr, csr.request), PROTO_REPLY_NONE);
	assert_int_equal(proto_topics_match(&csr, reg.accepted), PROTO_REPLY_NONE);
	assert_int_equal(proto_topics_match(&reg, csr.rejected), PROTO_REPLY_NONE);
	assert_int_equal(
	    proto_topics_match(&csr, "$aws/certificates/create-from-csr/json/accepted/"),
	    PROTO_REPLY_NONE);
	assert_int_equal(proto_topics_match(&csr, "$aws/certificates/create-from-csr/json/accept"),
	                 PROTO_REPLY_NONE);
	assert_int_equal(
	    proto_topics_match(&csr, "$AWS/certificates/create-from-csr/json/accepted"),
	    PROTO_REPLY_NONE);
	assert_int_equal(
	    proto_topics_match(&csr, "$aws/certificates/create-from-csr/cbor/accepted"),
	    PROTO_REPLY_NONE);
	assert_int_equal(proto_topics_match(&csr, ""), PROTO_REPLY_NONE);
	assert_int_equal(proto_topics_match(&csr, NULL), PROTO_REPLY_NONE);
	assert_int_equal(proto_topics_match(NULL, csr.accepted), PROTO_REPLY_NONE);
}

/* ---- request builders ---- */

#define CSR_PEM                                                                                    \
	"-----BEGIN CERTIFICATE REQUEST-----\n"                                                    \
	"MIIBVjCB/AIBADAa+b/c==\n"                                                                 \
	"-----END CERTIFICATE REQUEST-----\n"

static void test_build_csr_golden(void **state)
{
	_cleanup_free_ char *golden = fixture_string("csr-request.golden.json");
	_cleanup_free_ char *out = NULL;
	_cleanup_(json_object_putp) struct json_object *o = NULL;
	size_t len = 0;

	assert_int_equal(proto_build_csr_request(CSR_PEM, &out, &len), 0);
	assert_string_equal(out, golden);
	assert_int_equal(len, strlen(out));

	/* Compact, '/' unescaped, newlines escaped: one line a person can read. */
	assert_null(strstr(out, "\\/"));
	assert_null(strchr(out, '\n'));

	o = parse_json(out);
	assert_int_equal(json_object_object_length(o), 1);
	assert_string_equal(member(o, "certificateSigningRequest"), CSR_PEM);
}

static void test_build_csr_escaping(void **state)
{
	static const char odd[] = "-----BEGIN-----\r\n\t\"quoted\" back\\slash \x01\x1f\x7f "
	                          "Gr\xc3\xbc\xc3\x9f"
	                          "e /a/b\n";
	_cleanup_free_ char *out = NULL;
	_cleanup_(json_object_putp) struct json_object *o = NULL;
	size_t len;

	assert_int_equal(proto_build_csr_request(odd, &out, &len), 0);
	assert_non_null(strstr(out, "\\u0001"));
	assert_non_null(strstr(out, "\\u001f"));
	assert_non_null(strstr(out, "\\\"quoted\\\""));
	assert_null(strstr(out, "\\/"));
	o = parse_json(out);
	assert_string_equal(member(o, "certificateSigningRequest"), odd);
}

static void test_build_csr_invalid(void **state)
{
	_cleanup_free_ char *huge = repeat('A', PROTO_PAYLOAD_MAX);
	char *out = (char *)0x1;
	size_t len = 7;

	assert_int_equal(proto_build_csr_request(NULL, &out, &len), -EINVAL);
	assert_int_equal(proto_build_csr_request("", &out, &len), -EINVAL);
	assert_int_equal(proto_build_csr_request("bad \xff utf-8", &out, &len), -EINVAL);
	assert_int_equal(proto_build_csr_request("overlong \xc0\xaf", &out, &len), -EINVAL);
	assert_int_equal(proto_build_csr_request(huge, &out, &len), -EMSGSIZE);
	assert_ptr_equal(out, (char *)0x1);
	assert_int_equal(len, 7);
}

static struct param_value golden_params[] = {
    {.name = "SerialNumber", .value = "GW-00042"},
    {.name = "HardwareRev", .value = "B2"},
};

static void test_build_register_golden(void **state)
{
	const struct param_list params = {.items = golden_params, .n = ARRAY_SIZE(golden_params)};
	const struct param_list empty = {.items = NULL, .n = 0};
	_cleanup_free_ char *golden = fixture_string("register-request.golden.json");
	_cleanup_free_ char *golden_none = fixture_string("register-request-noparams.golden.json");
	_cleanup_free_ char *out = NULL, *out_null = NULL, *out_empty = NULL;
	size_t len;

	assert_int_equal(proto_build_register_request("tok/en+==", &params, &out, &len), 0);
	assert_string_equal(out, golden);
	assert_int_equal(len, strlen(golden));

	/* No "parameters" member at all without parameters: not even an empty object. */
	assert_int_equal(proto_build_register_request("tok/en+==", NULL, &out_null, &len), 0);
	assert_string_equal(out_null, golden_none);
	assert_int_equal(proto_build_register_request("tok/en+==", &empty, &out_empty, &len), 0);
	assert_string_equal(out_empty, golden_none);
}

static void test_build_register_roundtrip(void **state)
{
	struct param_value items[] = {
	    {.name = "SerialNumber", .value = "GW-00042"},
	    {.name = "Location", .value = "Halle 3/\"Nord\"\\Tor\n"},
	    {.name = "Empty", .value = ""},
	    {.name = "Name",
	     .value = "Gr\xc3\xbc\xc3\x9f"
	              "e"},
	};
	const struct param_list params = {.items = items, .n = ARRAY_SIZE(items)};
	_cleanup_free_ char *out = NULL;
	_cleanup_(json_object_putp) struct json_object *o = NULL;
	struct json_object *p;
	size_t len;

	assert_int_equal(proto_build_register_request(TOKEN, &params, &out, &len), 0);
	o = parse_json(out);
	assert_int_equal(json_object_object_length(o), 2);
	assert_string_equal(member(o, "certificateOwnershipToken"), TOKEN);
	assert_true(json_object_object_get_ex(o, "parameters", &p));
	assert_int_equal(json_object_object_length(p), ARRAY_SIZE(items));
	for (size_t i = 0; i < ARRAY_SIZE(items); i++)
		assert_string_equal(member(p, items[i].name), items[i].value);
}

static void test_build_register_invalid(void **state)
{
	struct param_value dup[] = {{.name = "A", .value = "1"}, {.name = "A", .value = "2"}};
	struct param_value noname[] = {{.name = "", .value = "1"}};
	struct param_value novalue[] = {{.name = "A", .value = NULL}};
	struct param_value badutf8[] = {{.name = "A", .value = "\xe2\x82"}};
	const struct param_list l_dup = {.items = dup, .n = 2};
	const struct param_list l_noname = {.items = noname, .n = 1};
	const struct param_list l_novalue = {.items = novalue, .n = 1};
	const struct param_list l_badutf8 = {.items = badutf8, .n = 1};
	const struct param_list l_noitems = {.items = NULL, .n = 3};
	_cleanup_free_ char *max = repeat('t', PROTO_TOKEN_MAX);
	_cleanup_free_ char *over = repeat('t', PROTO_TOKEN_MAX + 1);
	_cleanup_free_ char *big_value = repeat('v', PROTO_PAYLOAD_MAX);
	struct param_value big[] = {{.name = "Big", .value = big_value}};
	const struct param_list l_big = {.items = big, .n = 1};
	_cleanup_erase_ char *ok = NULL;
	char *out = (char *)0x1;
	size_t len = 7;

	assert_int_equal(proto_build_register_request(NULL, NULL, &out, &len), -EINVAL);
	assert_int_equal(proto_build_register_request("", NULL, &out, &len), -EINVAL);
	assert_int_equal(proto_build_register_request(over, NULL, &out, &len), -EMSGSIZE);
	assert_int_equal(proto_build_register_request("t", &l_dup, &out, &len), -EINVAL);
	assert_int_equal(proto_build_register_request("t", &l_noname, &out, &len), -EINVAL);
	assert_int_equal(proto_build_register_request("t", &l_novalue, &out, &len), -EINVAL);
	assert_int_equal(proto_build_register_request("t", &l_badutf8, &out, &len), -EINVAL);
	assert_int_equal(proto_build_register_request("t", &l_noitems, &out, &len), -EINVAL);
	assert_int_equal(proto_build_register_request("t", &l_big, &out, &len), -EMSGSIZE);
	assert_ptr_equal(out, (char *)0x1);
	assert_int_equal(len, 7);

	assert_int_equal(proto_build_register_request(max, NULL, &ok, &len), 0);
	assert_int_equal(len, strlen("{\"certificateOwnershipToken\":\"\"}") + PROTO_TOKEN_MAX);
}

/* ---- CreateCertificateFromCsr accepted ---- */

static void test_parse_cert_accepted(void **state)
{
	struct blob b = fixture("cert-accepted.json");
	struct proto_cert_accepted a;

	assert_int_equal(proto_parse_cert_accepted(b.data, b.len, &a), 0);
	assert_string_equal(a.certificate_id, CERT_ID);
	/* The JSON "\n" escapes become real newlines; the PEM is kept byte for byte. */
	assert_string_equal(a.certificate_pem, CERT_PEM);
	assert_string_equal(a.ownership_token, TOKEN);
	proto_cert_accepted_clear(&a);
	assert_null(a.certificate_id);
	assert_null(a.certificate_pem);
	assert_null(a.ownership_token);
	blob_free(&b);
}

static void test_parse_cert_accepted_pretty(void **state)
{
	struct blob b = fixture("cert-accepted-pretty.json");
	struct proto_cert_accepted a;

	/* Whitespace, key order, upper-case hex, unknown members and a final newline are fine. */
	assert_int_equal(proto_parse_cert_accepted(b.data, b.len, &a), 0);
	assert_int_equal(strlen(a.certificate_id), PROTO_CERT_ID_LEN);
	assert_int_equal(strcasecmp(a.certificate_id, CERT_ID), 0);
	assert_string_equal(a.certificate_pem, CERT_PEM);
	proto_cert_accepted_clear(&a);
	blob_free(&b);
}

static void test_parse_not_nul_terminated(void **state)
{
	struct blob b = fixture("cert-accepted.json");
	_cleanup_free_ char *buf = malloc(b.len + 8);
	struct proto_cert_accepted a;

	/* The bytes after len are garbage and must not be looked at. */
	assert_non_null(buf);
	memcpy(buf, b.data, b.len);
	memcpy(buf + b.len, "}}}junk!", 8);
	assert_int_equal(proto_parse_cert_accepted(buf, b.len, &a), 0);
	proto_cert_accepted_clear(&a);
	/* One byte short is a truncated document. */
	assert_int_equal(proto_parse_cert_accepted(buf, b.len - 1, &a), -EBADMSG);
	blob_free(&b);
}

struct bad_fixture {
	const char *name;
	int expected;
};

static void check_cert_fixture(const struct bad_fixture *f)
{
	struct blob b = fixture(f->name);
	struct proto_cert_accepted a, before;
	int r;

	memset(&a, 0x5a, sizeof(a));
	before = a;
	r = proto_parse_cert_accepted(b.data, b.len, &a);
	if (r != f->expected)
		fail_msg("%s: got %d, expected %d", f->name, r, f->expected);
	assert_memory_equal(&a, &before, sizeof(a));
	blob_free(&b);
}

static void test_parse_cert_accepted_bad_fixtures(void **state)
{
	static const struct bad_fixture cases[] = {
	    {"not-json.txt", -EBADMSG},
	    {"cert-accepted-array.json", -EBADMSG},
	    {"cert-accepted-trailing.json", -EBADMSG},
	    {"cert-accepted-two-docs.json", -EBADMSG},
	    {"cert-accepted-truncated.json", -EBADMSG},
	    {"cert-accepted-id-63.json", -EBADMSG},
	    {"cert-accepted-id-65.json", -EBADMSG},
	    {"cert-accepted-id-nonhex.json", -EBADMSG},
	    {"cert-accepted-id-number.json", -EBADMSG},
	    {"cert-accepted-no-id.json", -EBADMSG},
	    {"cert-accepted-no-pem.json", -EBADMSG},
	    {"cert-accepted-no-token.json", -EBADMSG},
	    {"cert-accepted-pem-array.json", -EBADMSG},
	    {"cert-accepted-pem-not-cert.json", -EBADMSG},
	    {"cert-accepted-pem-empty.json", -EBADMSG},
	    {"cert-accepted-token-bool.json", -EBADMSG},
	    {"cert-accepted-token-null.json", -EBADMSG},
	    {"cert-accepted-token-empty.json", -EBADMSG},
	    {"cert-accepted-token-nul.json", -EBADMSG},
	    {"register-accepted.json", -EBADMSG},
	    {"rejected-403.json", -EBADMSG},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		check_cert_fixture(&cases[i]);
}

static char *cert_json(const char *id, const char *pem, const char *token)
{
	return format("{\"certificateId\":\"%s\",\"certificatePem\":\"%s\","
	              "\"certificateOwnershipToken\":\"%s\"}",
	              id, pem, token);
}

static void test_parse_cert_accepted_limits(void **state)
{
	_cleanup_free_ char *tok_max = repeat('t', PROTO_TOKEN_MAX);
	_cleanup_free_ char *tok_over = repeat('t', PROTO_TOKEN_MAX + 1);
	_cleanup_free_ char *pem_body = repeat('A', PROTO_CERT_PEM_MAX);
	_cleanup_free_ char *pem_over = format("-----BEGIN CERTIFICATE-----%s", pem_body);
	_cleanup_free_ char *j_tok_max = cert_json(CERT_ID, "-----BEGIN CERTIFICATE-----", tok_max);
	_cleanup_free_ char *j_tok_over =
	    cert_json(CERT_ID, "-----BEGIN CERTIFICATE-----", tok_over);
	_cleanup_free_ char *j_pem_over = cert_json(CERT_ID, pem_over, TOKEN);
	struct proto_cert_accepted a;

	assert_int_equal(proto_parse_cert_accepted(j_tok_max, strlen(j_tok_max), &a), 0);
	assert_int_equal(strlen(a.ownership_token), PROTO_TOKEN_MAX);
	proto_cert_accepted_clear(&a);
	assert_int_equal(proto_parse_cert_accepted(j_tok_over, strlen(j_tok_over), &a), -EMSGSIZE);
	assert_int_equal(proto_parse_cert_accepted(j_pem_over, strlen(j_pem_over), &a), -EMSGSIZE);
}

static void test_parse_oversize_payload(void **state)
{
	/* Garbage larger than the limit: the size is checked before any parsing. */
	_cleanup_free_ char *junk = repeat('{', PROTO_PAYLOAD_MAX + 1);
	struct proto_cert_accepted a;
	struct proto_register_accepted g;
	struct proto_rejection j;

	assert_int_equal(proto_parse_cert_accepted(junk, PROTO_PAYLOAD_MAX + 1, &a), -EMSGSIZE);
	assert_int_equal(proto_parse_register_accepted(junk, PROTO_PAYLOAD_MAX + 1, &g), -EMSGSIZE);
	assert_int_equal(proto_parse_rejection(junk, PROTO_PAYLOAD_MAX + 1, &j), -EMSGSIZE);
	/* At the limit it is parsed (and found to be garbage). */
	assert_int_equal(proto_parse_rejection(junk, PROTO_PAYLOAD_MAX, &j), -EBADMSG);
}

static void test_parse_raw_nul(void **state)
{
	static const char raw[] = "{\"statusCode\":400,\"errorCode\":\"Bad\0Code\"}";
	static const char after[] = "{\"statusCode\":400}\0";
	struct proto_rejection j;

	assert_int_equal(proto_parse_rejection(raw, sizeof(raw) - 1, &j), -EBADMSG);
	/* A NUL after the document is trailing garbage too. */
	assert_int_equal(proto_parse_rejection(after, sizeof(after), &j), -EBADMSG);
	assert_int_equal(proto_parse_rejection(after, sizeof(after) - 2, &j), 0);
	proto_rejection_clear(&j);
}

static void test_parse_deep_nesting(void **state)
{
	_cleanup_free_ char *opening = repeat('[', 40), *closing = repeat(']', 40);
	_cleanup_free_ char *deep = format("{\"statusCode\":400,\"x\":%s1%s}", opening, closing);
	_cleanup_free_ char *deep_obj = NULL;
	struct proto_rejection j;
	char *p;

	assert_int_equal(proto_parse_rejection(deep, strlen(deep), &j), -EBADMSG);

	/* 20000 nested objects (under the size limit): a recursive parser would blow the stack. */
	deep_obj = malloc(20000 * 5 + 1);
	assert_non_null(deep_obj);
	p = deep_obj;
	for (int i = 0; i < 20000; i++)
		p += sprintf(p, "{\"a\":");
	*p = '\0';
	assert_int_equal(proto_parse_rejection(deep_obj, strlen(deep_obj), &j), -EBADMSG);
}

static void test_parse_empty(void **state)
{
	struct proto_cert_accepted a;
	struct proto_register_accepted g;
	struct proto_rejection j;

	assert_int_equal(proto_parse_cert_accepted("", 0, &a), -EBADMSG);
	assert_int_equal(proto_parse_register_accepted(NULL, 0, &g), -EBADMSG);
	assert_int_equal(proto_parse_rejection("   ", 3, &j), -EBADMSG);
	assert_int_equal(proto_parse_rejection("400", 3, &j), -EBADMSG);
	assert_int_equal(proto_parse_rejection("\"x\"", 3, &j), -EBADMSG);
	assert_int_equal(proto_parse_rejection("{\"statusCode\":400", 17, &j), -EBADMSG);
	assert_int_equal(proto_parse_rejection("{\"statusCode\":4\xff}", 17, &j), -EBADMSG);
}

/* ---- RegisterThing accepted ---- */

static const char *devconf_get(const struct proto_register_accepted *g, const char *key)
{
	for (size_t i = 0; i < g->n_device_configuration; i++)
		if (strcmp(g->device_configuration[i].key, key) == 0)
			return g->device_configuration[i].value;
	return NULL;
}

static void test_parse_register_accepted(void **state)
{
	struct blob b = fixture("register-accepted.json");
	struct proto_register_accepted g;

	assert_int_equal(proto_parse_register_accepted(b.data, b.len, &g), 0);
	assert_string_equal(g.thing_name, "gw-GW-00042");
	assert_int_equal(g.n_device_configuration, 6);
	assert_string_equal(devconf_get(&g, "telemetryTopic"), "fleet/gw-GW-00042/telemetry");
	assert_string_equal(devconf_get(&g, "region"), "eu-west-1");
	/* Numbers and booleans keep their JSON spelling. */
	assert_string_equal(devconf_get(&g, "maxRetries"), "5");
	assert_string_equal(devconf_get(&g, "debug"), "false");
	assert_string_equal(devconf_get(&g, "ratio"), "0.25");
	assert_string_equal(devconf_get(&g, "label"), "Gr\xc3\xbc\xc3\x9f"
	                                              "e");
	proto_register_accepted_clear(&g);
	assert_null(g.thing_name);
	assert_null(g.device_configuration);
	assert_int_equal(g.n_device_configuration, 0);
	blob_free(&b);
}

static void test_parse_register_accepted_minimal(void **state)
{
	static const char *const names[] = {
	    "register-accepted-minimal.json",
	    "register-accepted-devconf-null.json",
	    "register-accepted-devconf-empty.json",
	};
	static const char *const things[] = {"gw-GW-00042", "arn:thing_01", "gw-1"};

	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		struct blob b = fixture(names[i]);
		struct proto_register_accepted g;

		assert_int_equal(proto_parse_register_accepted(b.data, b.len, &g), 0);
		assert_string_equal(g.thing_name, things[i]);
		assert_int_equal(g.n_device_configuration, 0);
		proto_register_accepted_clear(&g);
		blob_free(&b);
	}
}

static void check_register_fixture(const struct bad_fixture *f)
{
	struct blob b = fixture(f->name);
	struct proto_register_accepted g, before;
	int r;

	memset(&g, 0x5a, sizeof(g));
	before = g;
	r = proto_parse_register_accepted(b.data, b.len, &g);
	if (r != f->expected)
		fail_msg("%s: got %d, expected %d", f->name, r, f->expected);
	assert_memory_equal(&g, &before, sizeof(g));
	blob_free(&b);
}

static void test_parse_register_bad_fixtures(void **state)
{
	static const struct bad_fixture cases[] = {
	    {"not-json.txt", -EBADMSG},
	    {"register-accepted-no-thing.json", -EBADMSG},
	    {"register-accepted-thing-number.json", -EBADMSG},
	    {"register-accepted-thing-empty.json", -EBADMSG},
	    {"register-accepted-thing-bad-chars.json", -EBADMSG},
	    {"register-accepted-devconf-nested.json", -EBADMSG},
	    {"register-accepted-devconf-array.json", -EBADMSG},
	    {"register-accepted-devconf-value-null.json", -EBADMSG},
	    {"register-accepted-devconf-string.json", -EBADMSG},
	    {"register-accepted-devconf-empty-key.json", -EBADMSG},
	    {"cert-accepted.json", -EBADMSG},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		check_register_fixture(&cases[i]);
}

/* {"thingName":"gw-1","deviceConfiguration":{"k0":"v", ..., "k<n-1>":"v"}} */
static char *devconf_json(size_t n, size_t key_len, size_t value_len)
{
	_cleanup_free_ char *key = repeat('k', key_len), *value = repeat('v', value_len);
	char *s = format("{\"thingName\":\"gw-1\",\"deviceConfiguration\":{");
	char *next;

	for (size_t i = 0; i < n; i++) {
		next = format("%s%s\"%s%zu\":\"%s\"", s, i ? "," : "", key, i, value);
		free(s);
		s = next;
	}
	next = format("%s}}", s);
	free(s);
	return next;
}

static void test_parse_register_limits(void **state)
{
	_cleanup_free_ char *thing_max = repeat('t', PROTO_THING_NAME_MAX);
	_cleanup_free_ char *thing_over = repeat('t', PROTO_THING_NAME_MAX + 1);
	_cleanup_free_ char *j_max = format("{\"thingName\":\"%s\"}", thing_max);
	_cleanup_free_ char *j_over = format("{\"thingName\":\"%s\"}", thing_over);
	_cleanup_free_ char *entries_max = devconf_json(PROTO_DEVCONF_ENTRIES_MAX, 1, 1);
	_cleanup_free_ char *entries_over = devconf_json(PROTO_DEVCONF_ENTRIES_MAX + 1, 1, 1);
	/* One digit of index follows the key, so key_len - 1 reaches the limit exactly. */
	_cleanup_free_ char *key_max = devconf_json(1, PROTO_DEVCONF_KEY_MAX - 1, 1);
	_cleanup_free_ char *key_over = devconf_json(1, PROTO_DEVCONF_KEY_MAX, 1);
	_cleanup_free_ char *value_max = devconf_json(1, 1, PROTO_DEVCONF_VALUE_MAX);
	_cleanup_free_ char *value_over = devconf_json(1, 1, PROTO_DEVCONF_VALUE_MAX + 1);
	struct proto_register_accepted g;

	assert_int_equal(proto_parse_register_accepted(j_max, strlen(j_max), &g), 0);
	proto_register_accepted_clear(&g);
	assert_int_equal(proto_parse_register_accepted(j_over, strlen(j_over), &g), -EMSGSIZE);

	assert_int_equal(proto_parse_register_accepted(entries_max, strlen(entries_max), &g), 0);
	assert_int_equal(g.n_device_configuration, PROTO_DEVCONF_ENTRIES_MAX);
	proto_register_accepted_clear(&g);
	assert_int_equal(proto_parse_register_accepted(entries_over, strlen(entries_over), &g),
	                 -EMSGSIZE);

	assert_int_equal(proto_parse_register_accepted(key_max, strlen(key_max), &g), 0);
	assert_int_equal(strlen(g.device_configuration[0].key), PROTO_DEVCONF_KEY_MAX);
	proto_register_accepted_clear(&g);
	assert_int_equal(proto_parse_register_accepted(key_over, strlen(key_over), &g), -EMSGSIZE);

	assert_int_equal(proto_parse_register_accepted(value_max, strlen(value_max), &g), 0);
	proto_register_accepted_clear(&g);
	assert_int_equal(proto_parse_register_accepted(value_over, strlen(value_over), &g),
	                 -EMSGSIZE);
}

static void test_parse_register_devconf_nul(void **state)
{
	static const char value_nul[] =
	    "{\"thingName\":\"gw-1\",\"deviceConfiguration\":{\"a\":\"x\\u0000y\"}}";
	static const char key_nul[] =
	    "{\"thingName\":\"gw-1\",\"deviceConfiguration\":{\"a\\u0000b\":\"x\"}}";
	static const char nan[] = "{\"thingName\":\"gw-1\",\"deviceConfiguration\":{\"a\":NaN}}";
	static const char thing_nul[] = "{\"thingName\":\"gw\\u0000-1\"}";
	/* An escaped backslash followed by "u0000" is harmless text. */
	static const char not_nul[] =
	    "{\"thingName\":\"gw-1\",\"deviceConfiguration\":{\"path\":\"C:\\\\u0000\"}}";
	struct proto_register_accepted g;

	assert_int_equal(proto_parse_register_accepted(value_nul, strlen(value_nul), &g), -EBADMSG);
	assert_int_equal(proto_parse_register_accepted(key_nul, strlen(key_nul), &g), -EBADMSG);
	assert_int_equal(proto_parse_register_accepted(nan, strlen(nan), &g), -EBADMSG);
	assert_int_equal(proto_parse_register_accepted(thing_nul, strlen(thing_nul), &g), -EBADMSG);
	assert_int_equal(proto_parse_register_accepted(not_nul, strlen(not_nul), &g), 0);
	assert_string_equal(g.device_configuration[0].value, "C:\\u0000");
	proto_register_accepted_clear(&g);
}

/* ---- rejections ---- */

static void test_parse_rejection(void **state)
{
	struct blob b = fixture("rejected-token-400.json");
	struct proto_rejection j;

	assert_int_equal(proto_parse_rejection(b.data, b.len, &j), 0);
	assert_int_equal(j.status_code, 400);
	assert_string_equal(j.error_code, "InvalidCertificateOwnershipToken");
	assert_string_equal(j.error_message, "Certificate ownership token cannot be empty.");
	proto_rejection_clear(&j);
	assert_null(j.error_code);
	assert_null(j.error_message);
	blob_free(&b);

	b = fixture("rejected-status-only.json");
	assert_int_equal(proto_parse_rejection(b.data, b.len, &j), 0);
	assert_int_equal(j.status_code, 404);
	assert_null(j.error_code);
	assert_null(j.error_message);
	proto_rejection_clear(&j);
	blob_free(&b);

	b = fixture("rejected-code-null.json");
	assert_int_equal(proto_parse_rejection(b.data, b.len, &j), 0);
	assert_null(j.error_code);
	assert_null(j.error_message);
	proto_rejection_clear(&j);
	blob_free(&b);
}

static void test_parse_rejection_sanitized(void **state)
{
	struct blob b = fixture("rejected-message-control.json");
	struct proto_rejection j;

	assert_int_equal(proto_parse_rejection(b.data, b.len, &j), 0);
	assert_string_equal(j.error_code, "Bad Code");
	assert_string_equal(j.error_message, "line one AWS_ERROR_CODE=forged  end");
	proto_rejection_clear(&j);
	blob_free(&b);
}

static void test_parse_rejection_truncated(void **state)
{
	_cleanup_free_ char *code = repeat('C', PROTO_ERROR_CODE_MAX + 50);
	_cleanup_free_ char *msg = repeat('m', PROTO_ERROR_MESSAGE_MAX + 50);
	_cleanup_free_ char *json = NULL, *umlauts = NULL, *json_u = NULL;
	struct proto_rejection j;

	json =
	    format("{\"statusCode\":400,\"errorCode\":\"%s\",\"errorMessage\":\"%s\"}", code, msg);
	assert_int_equal(proto_parse_rejection(json, strlen(json), &j), 0);
	assert_int_equal(strlen(j.error_code), PROTO_ERROR_CODE_MAX);
	assert_int_equal(strlen(j.error_message), PROTO_ERROR_MESSAGE_MAX);
	assert_memory_equal(j.error_code, code, PROTO_ERROR_CODE_MAX);
	proto_rejection_clear(&j);

	/* 'ü' is two bytes: a cut never splits it, so the result stays valid UTF-8. */
	umlauts = malloc(PROTO_ERROR_CODE_MAX * 2 + 2);
	assert_non_null(umlauts);
	umlauts[0] = 'x';
	for (size_t i = 0; i < PROTO_ERROR_CODE_MAX; i++)
		memcpy(umlauts + 1 + 2 * i, "\xc3\xbc", 2);
	umlauts[1 + 2 * PROTO_ERROR_CODE_MAX] = '\0';
	json_u = format("{\"statusCode\":400,\"errorCode\":\"%s\"}", umlauts);
	assert_int_equal(proto_parse_rejection(json_u, strlen(json_u), &j), 0);
	assert_int_equal(strlen(j.error_code), PROTO_ERROR_CODE_MAX - 1);
	assert_int_equal((unsigned char)j.error_code[PROTO_ERROR_CODE_MAX - 2], 0xbc);
	proto_rejection_clear(&j);
}

static void check_rejection_fixture(const struct bad_fixture *f)
{
	struct blob b = fixture(f->name);
	struct proto_rejection j, before;
	int r;

	memset(&j, 0x5a, sizeof(j));
	before = j;
	r = proto_parse_rejection(b.data, b.len, &j);
	if (r != f->expected)
		fail_msg("%s: got %d, expected %d", f->name, r, f->expected);
	assert_memory_equal(&j, &before, sizeof(j));
	blob_free(&b);
}

static void test_parse_rejection_bad_fixtures(void **state)
{
	static const struct bad_fixture cases[] = {
	    {"not-json.txt", -EBADMSG},
	    {"rejected-no-status.json", -EBADMSG},
	    {"rejected-status-string.json", -EBADMSG},
	    {"rejected-status-double.json", -EBADMSG},
	    {"rejected-status-negative.json", -EBADMSG},
	    {"rejected-code-number.json", -EBADMSG},
	    {"rejected-message-object.json", -EBADMSG},
	    {"cert-accepted.json", -EBADMSG},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		check_rejection_fixture(&cases[i]);
}

/* ---- classification and hints ---- */

struct class_case {
	const char *fixture;
	enum proto_op op;
	enum proto_error_class expected;
	const char *hint_contains;
};

static void test_classify_and_hint(void **state)
{
	static const struct class_case cases[] = {
	    {"rejected-csr-400.json", PROTO_OP_CREATE_CERT_FROM_CSR, PROTO_ERROR_PERMANENT,
	     "key.type"},
	    {"rejected-params-400.json", PROTO_OP_REGISTER_THING, PROTO_ERROR_PERMANENT,
	     "template.parameters"},
	    {"rejected-token-400.json", PROTO_OP_REGISTER_THING, PROTO_ERROR_RESTART_FLOW,
	     "new CSR"},
	    /* Token trouble reported on the CSR step cannot be fixed by a new CSR. */
	    {"rejected-token-400.json", PROTO_OP_CREATE_CERT_FROM_CSR, PROTO_ERROR_PERMANENT,
	     "key.type"},
	    {"rejected-token-message.json", PROTO_OP_REGISTER_THING, PROTO_ERROR_RESTART_FLOW,
	     "new CSR"},
	    {"rejected-403.json", PROTO_OP_REGISTER_THING, PROTO_ERROR_PERMANENT, "hook"},
	    {"rejected-403.json", PROTO_OP_CREATE_CERT_FROM_CSR, PROTO_ERROR_PERMANENT,
	     "create-from-csr"},
	    {"rejected-404.json", PROTO_OP_REGISTER_THING, PROTO_ERROR_PERMANENT, "template.name"},
	    {"rejected-409.json", PROTO_OP_REGISTER_THING, PROTO_ERROR_PERMANENT,
	     "OverrideSettings"},
	    {"rejected-429.json", PROTO_OP_REGISTER_THING, PROTO_ERROR_TRANSIENT, "throttled"},
	    {"rejected-429.json", PROTO_OP_CREATE_CERT_FROM_CSR, PROTO_ERROR_TRANSIENT,
	     "throttled"},
	    {"rejected-500.json", PROTO_OP_CREATE_CERT_FROM_CSR, PROTO_ERROR_TRANSIENT,
	     "internal error"},
	    {"rejected-503.json", PROTO_OP_REGISTER_THING, PROTO_ERROR_TRANSIENT, "internal error"},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct blob b = fixture(cases[i].fixture);
		struct proto_rejection j;
		const char *hint;

		assert_int_equal(proto_parse_rejection(b.data, b.len, &j), 0);
		if (proto_rejection_classify(cases[i].op, &j) != cases[i].expected)
			fail_msg("%s (op %d): class %d, expected %d", cases[i].fixture, cases[i].op,
			         proto_rejection_classify(cases[i].op, &j), cases[i].expected);
		hint = proto_rejection_hint(cases[i].op, &j);
		assert_non_null(hint);
		if (!strstr(hint, cases[i].hint_contains))
			fail_msg("%s: hint '%s' lacks '%s'", cases[i].fixture, hint,
			         cases[i].hint_contains);
		proto_rejection_clear(&j);
		blob_free(&b);
	}
}

static void test_classify_unusual_status(void **state)
{
	struct proto_rejection j = {.status_code = 0};
	static const int transient[] = {0, 200, 302, 399, 429, 500, 502, 599, 999};
	static const int permanent[] = {400, 401, 403, 404, 409, 413, 422, 499};

	for (size_t i = 0; i < ARRAY_SIZE(transient); i++) {
		j.status_code = transient[i];
		assert_int_equal(proto_rejection_classify(PROTO_OP_REGISTER_THING, &j),
		                 PROTO_ERROR_TRANSIENT);
		assert_non_null(proto_rejection_hint(PROTO_OP_REGISTER_THING, &j));
	}
	for (size_t i = 0; i < ARRAY_SIZE(permanent); i++) {
		j.status_code = permanent[i];
		assert_int_equal(proto_rejection_classify(PROTO_OP_CREATE_CERT_FROM_CSR, &j),
		                 PROTO_ERROR_PERMANENT);
		assert_non_null(proto_rejection_hint(PROTO_OP_CREATE_CERT_FROM_CSR, &j));
	}
	/* A throttled or failing service is transient even when the text names the token. */
	j = (struct proto_rejection){.status_code = 503, .error_code = "OwnershipTokenStore"};
	assert_int_equal(proto_rejection_classify(PROTO_OP_REGISTER_THING, &j),
	                 PROTO_ERROR_TRANSIENT);
	assert_non_null(proto_rejection_hint(PROTO_OP_REGISTER_THING, NULL));
}

/* AWS sends ThrottlingException as 400 (docs/aws-behaviour.md §1): the errorCode decides too. */
static void test_classify_by_error_code(void **state)
{
	static char *const transient[] = {"ThrottlingException", "ThrottlingException.Account",
	                                  "ServiceUnavailableException",
	                                  "InternalFailureException"};
	static char *const permanent[] = {"InvalidRequestException", "Throttlin", "throttling",
	                                  "AccessDeniedException"};
	struct proto_rejection j = {.status_code = 400};

	for (size_t i = 0; i < ARRAY_SIZE(transient); i++) {
		j.error_code = transient[i];
		assert_int_equal(proto_rejection_classify(PROTO_OP_CREATE_CERT_FROM_CSR, &j),
		                 PROTO_ERROR_TRANSIENT);
		assert_int_equal(proto_rejection_is_throttle(&j), i < 2);
	}
	for (size_t i = 0; i < ARRAY_SIZE(permanent); i++) {
		j.error_code = permanent[i];
		assert_int_equal(proto_rejection_classify(PROTO_OP_REGISTER_THING, &j),
		                 PROTO_ERROR_PERMANENT);
		assert_false(proto_rejection_is_throttle(&j));
	}
	j = (struct proto_rejection){.status_code = 429};
	assert_true(proto_rejection_is_throttle(&j));
	assert_false(proto_rejection_is_throttle(NULL));
}

static void test_hint_never_echoes_peer_text(void **state)
{
	struct proto_rejection j = {
	    .status_code = 400,
	    .error_code = "InvalidCertificateOwnershipToken",
	    .error_message = "token " TOKEN " expired",
	};

	for (int op = 0; op < _PROTO_OP_MAX; op++) {
		for (int status = 100; status < 1000; status++) {
			const char *hint;

			j.status_code = status;
			hint = proto_rejection_hint((enum proto_op)op, &j);
			assert_non_null(hint);
			assert_null(strstr(hint, TOKEN));
			assert_null(strstr(hint, j.error_message));
		}
	}
}

static void test_clear_null_and_empty(void **state)
{
	struct proto_cert_accepted a = {0};
	struct proto_register_accepted g = {0};
	struct proto_rejection j = {0};

	proto_cert_accepted_clear(NULL);
	proto_register_accepted_clear(NULL);
	proto_rejection_clear(NULL);
	proto_cert_accepted_clear(&a);
	proto_register_accepted_clear(&g);
	proto_rejection_clear(&j);
	assert_null(a.ownership_token);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_template_name_valid),
	    cmocka_unit_test(test_client_id_valid),
	    cmocka_unit_test(test_topics_csr),
	    cmocka_unit_test(test_topics_register),
	    cmocka_unit_test(test_topics_invalid),
	    cmocka_unit_test(test_topics_match),
	    cmocka_unit_test(test_build_csr_golden),
	    cmocka_unit_test(test_build_csr_escaping),
	    cmocka_unit_test(test_build_csr_invalid),
	    cmocka_unit_test(test_build_register_golden),
	    cmocka_unit_test(test_build_register_roundtrip),
	    cmocka_unit_test(test_build_register_invalid),
	    cmocka_unit_test(test_parse_cert_accepted),
	    cmocka_unit_test(test_parse_cert_accepted_pretty),
	    cmocka_unit_test(test_parse_not_nul_terminated),
	    cmocka_unit_test(test_parse_cert_accepted_bad_fixtures),
	    cmocka_unit_test(test_parse_cert_accepted_limits),
	    cmocka_unit_test(test_parse_oversize_payload),
	    cmocka_unit_test(test_parse_raw_nul),
	    cmocka_unit_test(test_parse_deep_nesting),
	    cmocka_unit_test(test_parse_empty),
	    cmocka_unit_test(test_parse_register_accepted),
	    cmocka_unit_test(test_parse_register_accepted_minimal),
	    cmocka_unit_test(test_parse_register_bad_fixtures),
	    cmocka_unit_test(test_parse_register_limits),
	    cmocka_unit_test(test_parse_register_devconf_nul),
	    cmocka_unit_test(test_parse_rejection),
	    cmocka_unit_test(test_parse_rejection_sanitized),
	    cmocka_unit_test(test_parse_rejection_truncated),
	    cmocka_unit_test(test_parse_rejection_bad_fixtures),
	    cmocka_unit_test(test_classify_and_hint),
	    cmocka_unit_test(test_classify_unusual_status),
	    cmocka_unit_test(test_classify_by_error_code),
	    cmocka_unit_test(test_hint_never_echoes_peer_text),
	    cmocka_unit_test(test_clear_null_and_empty),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
