/* Unit tests for the config module: defaults, every key, every error class, the example file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <libconfig.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "build-config.h"
#include "config.h"
#include "macro.h"

#define FIXTURES    TEST_SRCDIR "/unit/fixtures/config"
#define EXAMPLE     TEST_SRCDIR "/../conf/fleetprovd.conf"
#define UNKNOWN_KEY "unknown key; valid keys here: "
#define PROBE_KEY   "zz_probe"

/* The two required settings, on lines 1 and 2. */
#define BASE "endpoint = \"localhost\";\ntemplate = { name = \"T\"; };\n"

/* Template with a parameter list whose first entry starts on line 5. */
#define PARAMS(entries)                                                                            \
	"endpoint = \"localhost\";\ntemplate = {\n  name = \"T\";\n  parameters = (\n" entries     \
	"\n  );\n};\n"

static char *read_text(const char *path)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t size = 0;
	ssize_t n;

	assert_non_null(f);
	n = getdelim(&buf, &size, '\0', f);
	assert_true(n >= 0);
	return buf;
}

static void test_defaults(void **state)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;

	assert_int_equal(config_load_string(BASE, "min.conf", &c, &err), 0);
	assert_string_equal(c->path, "min.conf");
	assert_string_equal(c->endpoint, "localhost");
	assert_int_equal(c->port, 8883);
	assert_string_equal(c->ca_file, "/etc/fleetprovd/AmazonRootCA1.pem");
	assert_string_equal(c->claim_certificate, "/etc/fleetprovd/claim.crt");
	assert_string_equal(c->claim_private_key, "/etc/fleetprovd/claim.key");
	assert_string_equal(c->template_name, "T");
	assert_null(c->params);
	assert_int_equal(c->n_params, 0);
	assert_null(c->client_id);
	assert_int_equal(c->key_type, KEY_EC_P256);
	assert_null(c->csr_subject);
	assert_null(c->key_file);
	assert_null(c->csr_file);
	assert_string_equal(c->state_dir, DEFAULT_STATE_DIR);
	assert_true(c->verify);
	assert_int_equal(c->keepalive_sec, 60);
	assert_int_equal(c->connect_timeout_sec, 30);
	assert_int_equal(c->response_timeout_sec, 30);
	assert_int_equal(c->retry_base_sec, 1);
	assert_int_equal(c->retry_cap_sec, 300);
	assert_int_equal(c->retry_permanent_sec, 900);
	assert_int_equal(c->max_attempts, 0);
	assert_int_equal(c->retry_throttle_sec, 10);
	assert_int_equal(c->token_max_age_sec, 3300);
	assert_int_equal(c->log_level, LOG_INFO);
}

static void assert_param(const struct config_param *p, const char *name, enum param_source source,
                         const char *arg, uint32_t timeout_ms)
{
	assert_string_equal(p->name, name);
	assert_int_equal(p->source, source);
	if (arg)
		assert_string_equal(p->arg, arg);
	else
		assert_null(p->arg);
	assert_int_equal(p->timeout_ms, timeout_ms);
}

static void test_every_key(void **state)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;

	assert_int_equal(config_load(FIXTURES "/full.conf", &c, &err), 0);
	assert_string_equal(c->path, FIXTURES "/full.conf");
	assert_string_equal(c->endpoint, "abc123example-ats.iot.eu-west-1.amazonaws.com");
	assert_int_equal(c->port, 443);
	assert_string_equal(c->ca_file, "/etc/ssl/certs/ca-certificates.crt");
	assert_string_equal(c->claim_certificate, "/opt/claim/claim.pem");
	assert_string_equal(c->claim_private_key, "/opt/claim/claim.key");
	assert_string_equal(c->template_name, "Gateway_Template-2");
	assert_int_equal(c->n_params, 7);
	assert_param(&c->params[0], "SerialNumber", PARAM_SOURCE_FILE,
	             "/sys/class/dmi/id/product_serial", 0);
	assert_param(&c->params[1], "DeviceLocation", PARAM_SOURCE_VALUE, "Zürich €", 0);
	assert_param(&c->params[2], "MacAddress", PARAM_SOURCE_INTERFACE_MAC, "eth0", 0);
	assert_param(&c->params[3], "MachineId", PARAM_SOURCE_MACHINE_ID, NULL, 0);
	assert_param(&c->params[4], "Host", PARAM_SOURCE_HOSTNAME, NULL, 0);
	assert_param(&c->params[5], "aws:HwRev.v1-x", PARAM_SOURCE_COMMAND,
	             "/usr/libexec/hwrev --short", 250);
	assert_param(&c->params[6], "Board", PARAM_SOURCE_COMMAND, "/usr/bin/board-id", 5000);
	assert_string_equal(c->client_id, "gw-${SerialNumber}-$$");
	assert_int_equal(c->key_type, KEY_RSA_3072);
	assert_string_equal(c->csr_subject, "CN=${SerialNumber},O=Example");
	assert_string_equal(c->key_file, "/etc/fleetprovd/device.key");
	assert_string_equal(c->csr_file, "/etc/fleetprovd/device.csr");
	assert_string_equal(c->state_dir, "/data/fleetprovd");
	assert_false(c->verify);
	assert_int_equal(c->keepalive_sec, 1200);
	assert_int_equal(c->connect_timeout_sec, 600);
	assert_int_equal(c->response_timeout_sec, 1);
	assert_int_equal(c->retry_base_sec, 3600);
	assert_int_equal(c->retry_cap_sec, 86400);
	assert_int_equal(c->retry_permanent_sec, 1);
	assert_int_equal(c->max_attempts, 5);
	assert_int_equal(c->retry_throttle_sec, 86400);
	assert_int_equal(c->token_max_age_sec, 60);
	assert_int_equal(c->log_level, LOG_DEBUG);
}

/* Accepted spellings that are easy to break: 64-bit and hex integers, empty lists, levels. */
static void test_valid_variants(void **state)
{
	static const struct {
		const char *text;
		uint16_t port;
		int log_level;
	} cases[] = {
	    {BASE "port = 8883L;", 8883, LOG_INFO},
	    {BASE "port = 0x22B3;", 8883, LOG_INFO},
	    {BASE "log_level = 7;", 8883, LOG_DEBUG},
	    {BASE "log_level = \"3\";", 8883, LOG_ERR},
	    {BASE "log_level = \"warning\";", 8883, LOG_WARNING},
	    {BASE "log_level = \"error\"; // a comment\n/* another */", 8883, LOG_ERR},
	    {"endpoint = \"localhost\"; template = { name = \"T\"; parameters = (); };", 8883,
	     LOG_INFO},
	    {"endpoint = \"localhost\"; template = { name = \"T\"; parameters = []; };", 8883,
	     LOG_INFO},
	    {BASE "retry = { base = 300; cap = 300; };", 8883, LOG_INFO},
	    {BASE "client_id = \"a$b$$c$\";", 8883, LOG_INFO},
	    /* "@include" inside a comment is no directive. */
	    {BASE "/*\n@include \"x\"\n*/", 8883, LOG_INFO},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		_cleanup_(config_freep) struct config *c = NULL;
		struct config_error err;
		int r = config_load_string(cases[i].text, "v.conf", &c, &err);

		if (r < 0)
			fail_msg("case %zu: %s", i, err.message);
		assert_int_equal(c->port, cases[i].port);
		assert_int_equal(c->log_level, cases[i].log_level);
		assert_int_equal(c->n_params, 0);
	}
}

struct bad_case {
	const char *text;
	int line;
	const char *key;
	const char *message; /* must occur in the message */
};

static const struct bad_case bad_cases[] = {
    /* Unknown keys, at every level. */
    {BASE "bogus = 1;", 3, "bogus", UNKNOWN_KEY "endpoint, port, ca_file, claim, template"},
    {BASE "claim = { certificate = \"/a\"; cert = \"/b\"; };", 3, "claim.cert",
     UNKNOWN_KEY "certificate, private_key"},
    {BASE "key = {\n  tpye = \"ec-p256\";\n};", 4, "key.tpye",
     UNKNOWN_KEY "type, subject, file, csr_file"},
    {BASE "timeouts = { connect = 5; read = 5; };", 3, "timeouts.read",
     UNKNOWN_KEY "connect, response"},
    {BASE "retry = { base = 1; jitter = true; };", 3, "retry.jitter",
     UNKNOWN_KEY "base, cap, permanent, max_attempts"},
    {"endpoint = \"localhost\";\ntemplate = {\n  name = \"T\";\n  version = 2;\n};", 4,
     "template.version", UNKNOWN_KEY "name, parameters"},
    {PARAMS("{ name = \"A\"; value = \"a\"; },\n{ name = \"B\"; vaule = \"b\"; }"), 6,
     "template.parameters.[1].vaule", UNKNOWN_KEY "name, value, file, interface_mac"},
    /* Unknown keys are found before missing required ones. */
    {"claim = { key = \"/x\"; };", 1, "claim.key", UNKNOWN_KEY},

    /* Wrong types. */
    {BASE "port = \"8883\";", 3, "port", "must be an integer between 1 and 65535, got \"8883\""},
    {BASE "port = 8883.0;", 3, "port", "must be an integer between 1 and 65535, got 8883.0"},
    {BASE "verify = 1;", 3, "verify", "must be true or false, got 1"},
    {BASE "verify = \"yes\";", 3, "verify", "must be true or false, got \"yes\""},
    {BASE "ca_file = 5;", 3, "ca_file", "must be an absolute path in quotes, got 5"},
    {BASE "claim = \"x\";", 3, "claim", "must be a group { ... }, got \"x\""},
    {BASE "timeouts = ( 1 );", 3, "timeouts", "must be a group { ... }, got a list ( ... )"},
    {BASE "log_level = true;", 3, "log_level", "or 0..7, got true"},
    {"endpoint = \"localhost\";\ntemplate = { name = \"T\"; parameters = \"x\"; };", 2,
     "template.parameters", "must be a list ( { ... }, { ... } ), got \"x\""},
    {"endpoint = \"localhost\";\ntemplate = { name = \"T\"; parameters = [ 1, 2 ]; };", 2,
     "template.parameters", "got an array [ ... ]"},
    {PARAMS("\"x\", \"y\""), 5, "template.parameters.[0]",
     "must be a group { name = ...; ... }, got \"x\""},
    {PARAMS("{ name = 5; value = \"x\"; }"), 5, "template.parameters.[0].name",
     "must be a string in quotes, got 5"},
    {PARAMS("{ name = \"A\"; hostname = \"yes\"; }"), 5, "template.parameters.[0].hostname",
     "must be true or false"},

    /* Out of range. */
    {BASE "port = 0;", 3, "port", "must be an integer between 1 and 65535, got 0"},
    {BASE "port = 65536;", 3, "port", "got 65536"},
    {BASE "keepalive = 5;", 3, "keepalive", "must be an integer between 30 and 1200, got 5"},
    {BASE "keepalive = 1201;", 3, "keepalive", "got 1201"},
    {BASE "timeouts = { connect = 0; };", 3, "timeouts.connect",
     "must be an integer between 1 and 600, got 0"},
    {BASE "timeouts = { response = 601; };", 3, "timeouts.response", "got 601"},
    {BASE "retry = { base = 0; };", 3, "retry.base", "between 1 and 3600, got 0"},
    {BASE "retry = { cap = 86401; };", 3, "retry.cap", "and 86400, got 86401"},
    {BASE "retry = {\n  base = 10;\n  cap = 5;\n};", 5, "retry.cap",
     "must be an integer between 10 (retry.base) and 86400, got 5"},
    {BASE "retry = { base = 600; };", 3, "retry.base", "is larger than retry.cap (300"},
    {BASE "retry = { permanent = 0; };", 3, "retry.permanent", "between 1 and 86400, got 0"},
    {BASE "retry = { throttle = 0; };", 3, "retry.throttle", "between 1 and 86400, got 0"},
    {BASE "retry = { max_attempts = -1; };", 3, "retry.max_attempts",
     "between 0 and 2147483647, got -1"},
    {BASE "token_max_age = 59;", 3, "token_max_age", "between 60 and 3540, got 59"},
    {BASE "token_max_age = 3541;", 3, "token_max_age", "got 3541"},
    {BASE "log_level = \"loud\";", 3, "log_level", "got \"loud\""},
    {BASE "log_level = 8;", 3, "log_level", "got 8"},
    {PARAMS("{ name = \"A\"; command = \"/bin/x\"; timeout_ms = 0; }"), 5,
     "template.parameters.[0].timeout_ms", "between 1 and 60000, got 0"},
    {PARAMS("{ name = \"A\"; command = \"/bin/x\"; timeout_ms = 60001; }"), 5,
     "template.parameters.[0].timeout_ms", "got 60001"},
    /* libconfig would wrap these to small numbers without a word. */
    {BASE "port = 4294975179;", 3, "", "integer 4294975179 is out of range"},
    {BASE "\n\nport = 0x100000000;", 5, "", "integer 0x100000000 is out of range"},
    {BASE "port = -99999999999999999999L;", 3, "", "is out of range"},

    /* Relative paths. */
    {BASE "ca_file = \"certs/ca.pem\";", 3, "ca_file",
     "must be an absolute path (starting with '/'), got \"certs/ca.pem\""},
    {BASE "claim = { private_key = \"claim.key\"; };", 3, "claim.private_key", "absolute path"},
    {BASE "claim = { certificate = \"\"; };", 3, "claim.certificate", "absolute path"},
    {BASE "key = { file = \"device.key\"; };", 3, "key.file", "absolute path"},
    {BASE "key = { file = \"/k\"; csr_file = \"./c\"; };", 3, "key.csr_file", "absolute path"},
    {BASE "state_dir = \"var/lib\";", 3, "state_dir", "absolute path"},
    {PARAMS("{ name = \"A\"; file = \"relative\"; }"), 5, "template.parameters.[0].file",
     "absolute path"},

    /* Missing required keys: the parent's line. */
    {"template = { name = \"T\"; };", 0, "endpoint", "is required"},
    {"endpoint = \"localhost\";", 0, "template", "is required"},
    {"endpoint = \"localhost\";\ntemplate = {\n};", 2, "template.name", "is required"},
    {PARAMS("{ value = \"x\"; }"), 5, "template.parameters.[0].name", "is required"},

    /* Endpoint. */
    {"endpoint = \"mqtts://x.example.com\";", 1, "endpoint", "without a scheme"},
    {"endpoint = \"x.example.com:8883\";", 1, "endpoint", "set the port with 'port'"},
    {"endpoint = \"x.example.com/mqtt\";", 1, "endpoint", "without a path"},
    {"endpoint = \"bad_host.example.com\";", 1, "endpoint", "must be a host name"},
    {"endpoint = \"a..example.com\";", 1, "endpoint", "must be a host name"},
    {"endpoint = \"-a.example.com\";", 1, "endpoint", "must be a host name"},
    {"endpoint = \"a-.example.com\";", 1, "endpoint", "must be a host name"},
    {"endpoint = \"example.com.\";", 1, "endpoint", "must be a host name"},
    {"endpoint = \"\";", 1, "endpoint", "must be a host name"},

    /* Template name. */
    {"endpoint = \"localhost\";\ntemplate = { name = \"Gate way\"; };", 2, "template.name",
     "must be 1 to 36 characters"},
    {"endpoint = \"localhost\";\ntemplate = { name = \"\"; };", 2, "template.name",
     "must be 1 to 36 characters"},
    {"endpoint = \"localhost\";\ntemplate = { name = \"abcdefghijabcdefghijabcdefghijabcdefg\"; "
     "};",
     2, "template.name", "must be 1 to 36 characters"},

    /* Parameters. */
    {PARAMS("{ name = \"A\"; }"), 5, "template.parameters.[0]",
     "parameter 'A' needs one source: value, file, interface_mac, machine_id, hostname or "
     "command"},
    {PARAMS("{ name = \"A\"; value = \"x\";\n  file = \"/x\"; }"), 6,
     "template.parameters.[0].file",
     "parameter 'A' already takes its value from 'value'; a parameter has exactly one source"},
    {PARAMS("{ name = \"A\"; value = \"x\"; },\n{ name = \"A\"; hostname = true; }"), 6,
     "template.parameters.[1].name", "duplicate parameter name 'A' (first defined on line 5)"},
    {PARAMS("{ name = \"A B\"; value = \"x\"; }"), 5, "template.parameters.[0].name",
     "must be 1 to 128 characters of letters, digits, '_', ':', '.' and '-', got \"A B\""},
    {PARAMS("{ name = \"\"; value = \"x\"; }"), 5, "template.parameters.[0].name",
     "must be 1 to 128 characters"},
    {PARAMS("{ name = \"A\"; value = \"x\"; timeout_ms = 10; }"), 5,
     "template.parameters.[0].timeout_ms", "only applies to a parameter with 'command'"},
    {PARAMS("{ name = \"A\"; machine_id = false; }"), 5, "template.parameters.[0].machine_id",
     "can only be true"},
    {PARAMS("{ name = \"A\"; hostname = false; }"), 5, "template.parameters.[0].hostname",
     "can only be true"},
    {PARAMS("{ name = \"A\"; command = \"hwrev --short\"; }"), 5, "template.parameters.[0].command",
     "must start with the absolute path of a program"},
    {PARAMS("{ name = \"A\"; command = \"\"; }"), 5, "template.parameters.[0].command",
     "absolute path"},
    {PARAMS("{ name = \"A\"; interface_mac = \"eth0/../x\"; }"), 5,
     "template.parameters.[0].interface_mac", "must be a network interface name"},
    {PARAMS("{ name = \"A\"; interface_mac = \"averyverylongname\"; }"), 5,
     "template.parameters.[0].interface_mac", "1 to 15 characters"},
    {PARAMS("{ name = \"A\"; interface_mac = \"\"; }"), 5, "template.parameters.[0].interface_mac",
     "must be a network interface name"},
    {PARAMS("{ name = \"A\"; value = \"\"; }"), 5, "template.parameters.[0].value",
     "parameter 'A': the literal value is empty"},
    {PARAMS("{ name = \"A\"; value = \"a\\nb\"; }"), 5, "template.parameters.[0].value",
     "contains control character U+000A"},

    /* Cross checks. */
    {BASE "key = { csr_file = \"/etc/x.csr\"; };", 3, "key.csr_file", "needs key.file"},
    {BASE "key = { type = \"ed25519\"; };", 3, "key.type",
     "must be one of \"ec-p256\", \"ec-p384\", \"rsa-2048\", \"rsa-3072\", \"rsa-4096\", got "
     "\"ed25519\""},
    {BASE "key = { type = 256; };", 3, "key.type", "must be a string in quotes, got 256"},
    {BASE "client_id = \"gw-${Serial}\";", 3, "client_id",
     "'${Serial}' is not a configured template parameter"},
    {PARAMS("{ name = \"Serial\"; value = \"1\"; }") "client_id = \"gw-${Serial\";", 8, "client_id",
     "unterminated '${'"},
    {PARAMS("{ name = \"Serial\"; value = \"1\"; }") "key = {\n subject = \"CN=${serial}\";\n};", 9,
     "key.subject", "'${serial}' is not a configured template parameter"},
    {BASE "key = { subject = \"\"; };", 3, "key.subject", "must not be empty"},
    {BASE "client_id = \"\";", 3, "client_id", "must not be empty"},
    {BASE "client_id = \"$$SYS\";", 3, "client_id", "must not start with '$'"},
    {BASE "client_id = \"01234567890123456789012345678901234567890123456789012345678901234567"
          "89012345678901234567890123456789012345678901234567890123456789\";",
     3, "client_id", "must be at most 128 bytes"},

    /* Syntax: libconfig's own line; directives are refused. */
    {BASE "port = ;", 3, "", "syntax error"},
    {BASE "port = 1;\nport = 2;", 4, "", "duplicate setting name"},
    {BASE "@include \"/etc/hostname\"", 3, "", "directives such as @include are not supported"},
    /* Inside a string "@include" is text: the error is about the unknown key. */
    {BASE "x = \"a\n@include b\";", 3, "x", UNKNOWN_KEY},
};

static void check_bad_case(size_t i, const struct bad_case *t)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;
	int r = config_load_string(t->text, "case.conf", &c, &err);

	if (r != -EINVAL)
		fail_msg("case %zu: returned %d for:\n%s", i, r, t->text);
	assert_null(c);
	assert_string_equal(err.file, "case.conf");
	if (err.line != t->line || strcmp(err.key, t->key) != 0 || !strstr(err.message, t->message))
		fail_msg("case %zu:\n%s\ngot line %d key '%s' message '%s'\nwant line %d key '%s' "
		         "message '%s'",
		         i, t->text, err.line, err.key, err.message, t->line, t->key, t->message);
}

static void test_errors(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(bad_cases); i++)
		check_bad_case(i, &bad_cases[i]);
}

/* The message must say exactly what is expected; the substring checks above allow more. */
static void test_error_message_exact(void **state)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;
	char buf[512];

	assert_int_equal(config_load_string(BASE "keepalive = 5;", "f.conf", &c, &err), -EINVAL);
	assert_string_equal(err.message, "must be an integer between 30 and 1200, got 5");
	config_error_format(&err, buf, sizeof(buf));
	assert_string_equal(buf,
	                    "f.conf:3: keepalive: must be an integer between 30 and 1200, got 5");
}

static void test_error_format(void **state)
{
	struct config_error err = {.file = "a.conf", .line = 7, .key = "retry.cap", .message = "m"};
	char buf[128], tiny[8];

	config_error_format(&err, buf, sizeof(buf));
	assert_string_equal(buf, "a.conf:7: retry.cap: m");
	err.line = 0;
	config_error_format(&err, buf, sizeof(buf));
	assert_string_equal(buf, "a.conf: retry.cap: m");
	err.key[0] = '\0';
	config_error_format(&err, buf, sizeof(buf));
	assert_string_equal(buf, "a.conf: m");
	err.file[0] = '\0';
	err.line = 3;
	snprintf(err.key, sizeof(err.key), "port");
	config_error_format(&err, buf, sizeof(buf));
	assert_string_equal(buf, "port: m");
	config_error_format(&err, tiny, sizeof(tiny));
	assert_string_equal(tiny, "port: m");
	config_error_format(&err, tiny, 4);
	assert_string_equal(tiny, "por");
}

static void test_load_file_errors(void **state)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;
	char buf[512];

	assert_int_equal(config_load(FIXTURES "/does-not-exist.conf", &c, &err), -ENOENT);
	assert_null(c);
	assert_string_equal(err.file, FIXTURES "/does-not-exist.conf");
	assert_int_equal(err.line, 0);
	assert_non_null(strstr(err.message, "'" FIXTURES "/does-not-exist.conf'"));
	assert_non_null(strstr(err.message, "No such file or directory"));

	assert_int_equal(config_load(FIXTURES, &c, &err), -EISDIR);
	assert_non_null(strstr(err.message, "'" FIXTURES "'"));

	assert_int_equal(config_load(FIXTURES "/syntax-error.conf", &c, &err), -EINVAL);
	assert_string_equal(err.file, FIXTURES "/syntax-error.conf");
	assert_int_equal(err.line, 4);
	assert_string_equal(err.key, "");
	config_error_format(&err, buf, sizeof(buf));
	assert_string_equal(buf, FIXTURES "/syntax-error.conf:4: syntax error");

	assert_int_equal(config_load(FIXTURES "/nested-unknown.conf", &c, &err), -EINVAL);
	assert_int_equal(err.line, 7);
	assert_string_equal(err.key, "template.parameters.[1].vaule");
	assert_null(c);
}

static void test_minimal_fixture(void **state)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;

	assert_int_equal(config_load(FIXTURES "/minimal.conf", &c, &err), 0);
	assert_string_equal(c->endpoint, "localhost");
	assert_string_equal(c->template_name, "T");
	assert_null(config_free(NULL));
	assert_null(config_free(TAKE_PTR(c)));
}

static void test_key_type_names(void **state)
{
	for (int t = 0; t < _KEY_TYPE_MAX; t++)
		assert_int_equal(key_type_from_string(key_type_to_string((enum key_type)t)), t);
	assert_string_equal(key_type_to_string(KEY_RSA_4096), "rsa-4096");
	assert_null(key_type_to_string(_KEY_TYPE_MAX));
	assert_null(key_type_to_string(_KEY_TYPE_INVALID));
	assert_int_equal(key_type_from_string("EC-P256"), _KEY_TYPE_INVALID);
	assert_int_equal(key_type_from_string(NULL), _KEY_TYPE_INVALID);
}

/* The example with its defaults left commented out is a working configuration. */
static void test_example_parses(void **state)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;
	char buf[512];

	if (config_load(EXAMPLE, &c, &err) < 0) {
		config_error_format(&err, buf, sizeof(buf));
		fail_msg("%s", buf);
	}
	assert_string_equal(c->template_name, "GatewayTemplate");
	assert_int_equal(c->port, 8883);
	assert_int_equal(c->n_params, 0);
	assert_null(c->client_id);
}

/* Settings are commented out as "#key" (or "#<tab>key"); prose is "# text". */
static char *uncomment(const char *text)
{
	char *out = malloc(strlen(text) + 1), *o = out;
	bool line_start = true;

	assert_non_null(out);
	for (const char *p = text; *p; p++) {
		if (line_start && p[0] == '#' && p[1] && !strchr(" \n#", p[1])) {
			line_start = false;
			continue;
		}
		line_start = *p == '\n';
		*o++ = *p;
	}
	*o = '\0';
	return out;
}

/* Uncommented, every documented default and example parses, and the defaults are the real ones. */
static void test_example_uncommented(void **state)
{
	_cleanup_free_ char *text = read_text(EXAMPLE);
	_cleanup_free_ char *all = uncomment(text);
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;
	char buf[512];

	assert_string_not_equal(text, all);
	if (config_load_string(all, "uncommented", &c, &err) < 0) {
		config_error_format(&err, buf, sizeof(buf));
		fail_msg("%s", buf);
	}
	assert_int_equal(c->port, 8883);
	assert_string_equal(c->ca_file, "/etc/fleetprovd/AmazonRootCA1.pem");
	assert_string_equal(c->claim_certificate, "/etc/fleetprovd/claim.crt");
	assert_string_equal(c->claim_private_key, "/etc/fleetprovd/claim.key");
	assert_int_equal(c->n_params, 6);
	/* One example of each source. */
	for (int s = 0; s < _PARAM_SOURCE_MAX; s++) {
		size_t n = 0;

		for (size_t i = 0; i < c->n_params; i++)
			n += c->params[i].source == (enum param_source)s;
		assert_int_equal(n, 1);
	}
	assert_int_equal(c->params[5].source, PARAM_SOURCE_COMMAND);
	assert_int_equal(c->params[5].timeout_ms, 5000);
	assert_string_equal(c->client_id, "gw-${SerialNumber}");
	assert_int_equal(c->key_type, KEY_EC_P256);
	assert_non_null(c->csr_subject);
	assert_non_null(c->key_file);
	assert_non_null(c->csr_file);
	assert_string_equal(c->state_dir, "/var/lib/fleetprovd");
	assert_true(c->verify);
	assert_int_equal(c->keepalive_sec, 60);
	assert_int_equal(c->connect_timeout_sec, 30);
	assert_int_equal(c->response_timeout_sec, 30);
	assert_int_equal(c->retry_base_sec, 1);
	assert_int_equal(c->retry_cap_sec, 300);
	assert_int_equal(c->retry_permanent_sec, 900);
	assert_int_equal(c->max_attempts, 0);
	assert_int_equal(c->retry_throttle_sec, 10);
	assert_int_equal(c->token_max_age_sec, 3300);
	assert_int_equal(c->log_level, LOG_INFO);
}

/*
 * Discovering the accepted keys through the parser: a probe with an unknown key at some
 * level makes it list the keys it accepts there. Paths are segments; "[0]" is a list entry.
 */
#define MAX_DEPTH 8
#define MAX_KEYS  32

struct discovery {
	config_t example; /* the uncommented example */
	size_t n_found;
	bool found_timeout_ms, found_max_attempts;
};

/* Configuration text that puts inner at the given path. */
static void wrap(const char *const *segs, size_t n, const char *inner, char *buf, size_t size)
{
	bool list = n >= 2 && strcmp(segs[1], "[0]") == 0;
	char tmp[1024];

	if (n == 0) {
		snprintf(buf, size, "%s", inner);
		return;
	}
	wrap(segs + (list ? 2 : 1), n - (list ? 2 : 1), inner, tmp, sizeof(tmp));
	snprintf(buf, size, list ? "%s = ( { %s } );" : "%s = { %s };", segs[0], tmp);
}

static void join(const char *const *segs, size_t n, const char *last, char *buf, size_t size)
{
	buf[0] = '\0';
	for (size_t i = 0; i < n; i++)
		snprintf(buf + strlen(buf), size - strlen(buf), "%s%s", i ? "." : "", segs[i]);
	snprintf(buf + strlen(buf), size - strlen(buf), "%s%s", n ? "." : "", last);
}

/* The keys accepted at this path, or 0 when the path is not a group there. */
static size_t probe(const char *const *segs, size_t n, char keys[][64], size_t max)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct config_error err;
	char text[1024], want[256], *list, *save = NULL;
	size_t count = 0;

	wrap(segs, n, PROBE_KEY " = 0;", text, sizeof(text));
	join(segs, n, PROBE_KEY, want, sizeof(want));
	assert_int_equal(config_load_string(text, "probe", &c, &err), -EINVAL);
	if (strcmp(err.key, want) != 0)
		return 0;
	assert_true(strncmp(err.message, UNKNOWN_KEY, strlen(UNKNOWN_KEY)) == 0);
	list = err.message + strlen(UNKNOWN_KEY);
	for (char *k = strtok_r(list, ", ", &save); k; k = strtok_r(NULL, ", ", &save)) {
		assert_true(count < max);
		snprintf(keys[count++], 64, "%s", k);
	}
	return count;
}

/* Whether the example sets this path; a "[0]" segment matches any list entry. */
static bool example_has(const config_setting_t *s, const char *const *segs, size_t n)
{
	if (!s)
		return false;
	if (n == 0)
		return true;
	if (!config_setting_is_aggregate(s))
		return false;
	if (strcmp(segs[0], "[0]") == 0) {
		for (int i = 0; i < config_setting_length(s); i++)
			if (example_has(config_setting_get_elem(s, (unsigned)i), segs + 1, n - 1))
				return true;
		return false;
	}
	return example_has(config_setting_get_member(s, segs[0]), segs + 1, n - 1);
}

static void discover(struct discovery *d, const char **segs, size_t n)
{
	char keys[MAX_KEYS][64], path[256];
	size_t count = probe(segs, n, keys, MAX_KEYS);

	assert_true(count > 0);
	assert_true(n + 2 < MAX_DEPTH);
	for (size_t i = 0; i < count; i++) {
		segs[n] = keys[i];
		join(segs, n, keys[i], path, sizeof(path));
		if (!example_has(config_root_setting(&d->example), segs, n + 1))
			fail_msg("conf/fleetprovd.conf does not document '%s'", path);
		d->n_found++;
		d->found_timeout_ms |= strcmp(keys[i], "timeout_ms") == 0;
		d->found_max_attempts |= strcmp(keys[i], "max_attempts") == 0;
		if (probe(segs, n + 1, (char[MAX_KEYS][64]){0}, MAX_KEYS) > 0) {
			discover(d, segs, n + 1);
			continue;
		}
		segs[n + 1] = "[0]";
		if (probe(segs, n + 2, (char[MAX_KEYS][64]){0}, MAX_KEYS) > 0)
			discover(d, segs, n + 2);
	}
}

static void test_example_documents_every_key(void **state)
{
	_cleanup_free_ char *text = read_text(EXAMPLE);
	_cleanup_free_ char *all = uncomment(text);
	struct discovery d = {0};
	const char *segs[MAX_DEPTH];

	config_init(&d.example);
	assert_int_equal(config_read_string(&d.example, all), CONFIG_TRUE);
	discover(&d, segs, 0);
	config_destroy(&d.example);
	/* Proves the walk went into groups and into list entries. */
	assert_true(d.found_timeout_ms);
	assert_true(d.found_max_attempts);
	assert_true(d.n_found >= 30);
}

/* The check above can fail: a key missing from a document is reported. */
static void test_documentation_check_can_fail(void **state)
{
	config_t partial;
	const char *segs[] = {"retry", "max_attempts"};
	const char *list[] = {"template", "parameters", "[0]", "timeout_ms"};

	config_init(&partial);
	assert_int_equal(config_read_string(&partial,
	                                    "retry = { base = 1; };\n"
	                                    "template = { parameters = ( { name = \"a\"; } ); };"),
	                 CONFIG_TRUE);
	assert_false(example_has(config_root_setting(&partial), segs, 2));
	assert_true(example_has(config_root_setting(&partial), segs, 1));
	assert_false(example_has(config_root_setting(&partial), list, 4));
	config_destroy(&partial);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_every_key),
	    cmocka_unit_test(test_valid_variants),
	    cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_error_message_exact),
	    cmocka_unit_test(test_error_format),
	    cmocka_unit_test(test_load_file_errors),
	    cmocka_unit_test(test_minimal_fixture),
	    cmocka_unit_test(test_key_type_names),
	    cmocka_unit_test(test_example_parses),
	    cmocka_unit_test(test_example_uncommented),
	    cmocka_unit_test(test_example_documents_every_key),
	    cmocka_unit_test(test_documentation_check_can_fail),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
