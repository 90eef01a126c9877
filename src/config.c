/*
 * The configuration file: libconfig text parsed once into a validated struct config.
 *
 * Two passes. The schema pass walks the whole tree against the key tables below and rejects
 * unknown keys, wrong types and out-of-range integers. The value pass then copies values over
 * the defaults and runs the checks that need more than one key. Every error names file, line
 * and dotted key, and says what was expected.
 */
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libconfig.h>

#include "build-config.h"
#include "config.h"
#include "log.h"
#include "macro.h"
#include "params.h"
#include "protocol.h"

/* A real configuration is a few KiB; a file this large is a mistake, not a configuration. */
#define CONFIG_FILE_MAX (1024 * 1024)

/* AWS IoT MQTT with X.509 client certificates (spec §3.3). */
#define DEFAULT_PORT              8883
#define DEFAULT_CA_FILE           "/etc/fleetprovd/AmazonRootCA1.pem"
#define DEFAULT_CLAIM_CERTIFICATE "/etc/fleetprovd/claim.crt"
#define DEFAULT_CLAIM_PRIVATE_KEY "/etc/fleetprovd/claim.key"

/* AWS IoT clamps keep-alive to 30..1200 s (spec §3.2); reject what it would silently change. */
#define KEEPALIVE_MIN     30
#define KEEPALIVE_MAX     1200
#define KEEPALIVE_DEFAULT 60

/* Connect and response deadlines: long enough for a slow cellular link, short enough to retry. */
#define TIMEOUT_MIN     1
#define TIMEOUT_MAX     600
#define TIMEOUT_DEFAULT 30

/* Backoff for transient errors and the slow schedule for permanent ones (design.md decision 7). */
#define RETRY_BASE_MIN             1
#define RETRY_BASE_MAX             3600
#define RETRY_BASE_DEFAULT         1
#define RETRY_CAP_MAX              86400
#define RETRY_CAP_DEFAULT          300
#define RETRY_PERMANENT_MIN        1
#define RETRY_PERMANENT_MAX        86400
#define RETRY_PERMANENT_DEFAULT    900
#define RETRY_MAX_ATTEMPTS_MAX     INT32_MAX
#define RETRY_MAX_ATTEMPTS_DEFAULT 0
/*
 * The first retry window after throttling (429, or a Throttling* errorCode): it should be the time
 * the account's quota needs to serve every gateway that may start at once (gateways / TPS). The
 * default serves a hundred gateways at RegisterThing's default quota of 10 TPS (spec §3.1).
 */
#define RETRY_THROTTLE_MIN     1
#define RETRY_THROTTLE_MAX     86400
#define RETRY_THROTTLE_DEFAULT 10

/*
 * Ownership tokens live 1 hour (spec §1.3). Reusing one needs a margin for the RegisterThing
 * round trip, hence at most 59 min; 55 min by default as the spec suggests (§1.5).
 */
#define TOKEN_MAX_AGE_MIN     60
#define TOKEN_MAX_AGE_MAX     3540
#define TOKEN_MAX_AGE_DEFAULT 3300

/* A parameter command must not hold up boot for long; 5 s by default. */
#define COMMAND_TIMEOUT_MIN_MS     1
#define COMMAND_TIMEOUT_MAX_MS     60000
#define COMMAND_TIMEOUT_DEFAULT_MS 5000

/* Template parameter names: 1..128 characters of [A-Za-z0-9_:.-]. */
#define PARAM_NAME_MAX 128

/* RFC 1035: 253 characters in a host name, 63 in a label. */
#define HOST_NAME_MAX_LEN 253
#define HOST_LABEL_MAX    63

/* Values quoted in error messages are cut here so the message keeps its tail. */
#define QUOTE_MAX 64

enum value_kind {
	KIND_STRING,
	KIND_PATH, /* a string holding an absolute path */
	KIND_UINT, /* an integer within [min, max] */
	KIND_BOOL,
	KIND_GROUP,     /* { ... } with the keys in children */
	KIND_LIST,      /* ( { ... }, ... ): every element a group with the keys in children */
	KIND_LOG_LEVEL, /* a level name or 0..7 */
};

struct key_spec {
	const char *name;
	enum value_kind kind;
	uint32_t min, max;
	const struct key_spec *children;
};

/* The accepted keys. conf/fleetprovd.conf documents each one; test-config checks it does. */
static const struct key_spec claim_keys[] = {
    {.name = "certificate", .kind = KIND_PATH},
    {.name = "private_key", .kind = KIND_PATH},
    {.name = NULL},
};

static const struct key_spec param_keys[] = {
    {.name = "name", .kind = KIND_STRING},
    {.name = "value", .kind = KIND_STRING},
    {.name = "file", .kind = KIND_PATH},
    {.name = "interface_mac", .kind = KIND_STRING},
    {.name = "machine_id", .kind = KIND_BOOL},
    {.name = "hostname", .kind = KIND_BOOL},
    {.name = "command", .kind = KIND_STRING},
    {.name = "timeout_ms",
     .kind = KIND_UINT,
     .min = COMMAND_TIMEOUT_MIN_MS,
     .max = COMMAND_TIMEOUT_MAX_MS},
    {.name = NULL},
};

static const struct key_spec template_keys[] = {
    {.name = "name", .kind = KIND_STRING},
    {.name = "parameters", .kind = KIND_LIST, .children = param_keys},
    {.name = NULL},
};

static const struct key_spec key_keys[] = {
    {.name = "type", .kind = KIND_STRING},
    {.name = "subject", .kind = KIND_STRING},
    {.name = "file", .kind = KIND_PATH},
    {.name = "csr_file", .kind = KIND_PATH},
    {.name = NULL},
};

static const struct key_spec timeouts_keys[] = {
    {.name = "connect", .kind = KIND_UINT, .min = TIMEOUT_MIN, .max = TIMEOUT_MAX},
    {.name = "response", .kind = KIND_UINT, .min = TIMEOUT_MIN, .max = TIMEOUT_MAX},
    {.name = NULL},
};

static const struct key_spec retry_keys[] = {
    {.name = "base", .kind = KIND_UINT, .min = RETRY_BASE_MIN, .max = RETRY_BASE_MAX},
    /* The lower bound is retry.base; the value pass checks that. */
    {.name = "cap", .kind = KIND_UINT, .min = RETRY_BASE_MIN, .max = RETRY_CAP_MAX},
    {.name = "permanent",
     .kind = KIND_UINT,
     .min = RETRY_PERMANENT_MIN,
     .max = RETRY_PERMANENT_MAX},
    {.name = "max_attempts", .kind = KIND_UINT, .min = 0, .max = RETRY_MAX_ATTEMPTS_MAX},
    {.name = "throttle", .kind = KIND_UINT, .min = RETRY_THROTTLE_MIN, .max = RETRY_THROTTLE_MAX},
    {.name = NULL},
};

static const struct key_spec root_keys[] = {
    {.name = "endpoint", .kind = KIND_STRING},
    {.name = "port", .kind = KIND_UINT, .min = 1, .max = UINT16_MAX},
    {.name = "ca_file", .kind = KIND_PATH},
    {.name = "claim", .kind = KIND_GROUP, .children = claim_keys},
    {.name = "template", .kind = KIND_GROUP, .children = template_keys},
    {.name = "client_id", .kind = KIND_STRING},
    {.name = "key", .kind = KIND_GROUP, .children = key_keys},
    {.name = "state_dir", .kind = KIND_PATH},
    {.name = "verify", .kind = KIND_BOOL},
    {.name = "keepalive", .kind = KIND_UINT, .min = KEEPALIVE_MIN, .max = KEEPALIVE_MAX},
    {.name = "timeouts", .kind = KIND_GROUP, .children = timeouts_keys},
    {.name = "retry", .kind = KIND_GROUP, .children = retry_keys},
    {.name = "token_max_age",
     .kind = KIND_UINT,
     .min = TOKEN_MAX_AGE_MIN,
     .max = TOKEN_MAX_AGE_MAX},
    {.name = "log_level", .kind = KIND_LOG_LEVEL},
    {.name = NULL},
};

/* The member of a parameter entry that names each source, indexed by enum param_source. */
static const char *const param_source_keys[_PARAM_SOURCE_MAX] = {
    [PARAM_SOURCE_VALUE] = "value",
    [PARAM_SOURCE_FILE] = "file",
    [PARAM_SOURCE_INTERFACE_MAC] = "interface_mac",
    [PARAM_SOURCE_MACHINE_ID] = "machine_id",
    [PARAM_SOURCE_HOSTNAME] = "hostname",
    [PARAM_SOURCE_COMMAND] = "command",
};

static const char *const key_type_names[_KEY_TYPE_MAX] = {
    [KEY_EC_P256] = "ec-p256",   [KEY_EC_P384] = "ec-p384",   [KEY_RSA_2048] = "rsa-2048",
    [KEY_RSA_3072] = "rsa-3072", [KEY_RSA_4096] = "rsa-4096",
};

const char *key_type_to_string(enum key_type t)
{
	if (t < 0 || t >= _KEY_TYPE_MAX)
		return NULL;
	return key_type_names[t];
}

enum key_type key_type_from_string(const char *s)
{
	if (!s)
		return _KEY_TYPE_INVALID;
	for (size_t i = 0; i < ARRAY_SIZE(key_type_names); i++)
		if (strcmp(s, key_type_names[i]) == 0)
			return (enum key_type)i;
	return _KEY_TYPE_INVALID;
}

static void appendf(char *buf, size_t size, const char *fmt, ...) _printf_(3, 4);
static void appendf(char *buf, size_t size, const char *fmt, ...)
{
	size_t len = strnlen(buf, size);
	va_list ap;

	if (len + 1 >= size)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + len, size - len, fmt, ap);
	va_end(ap);
}

void config_error_format(const struct config_error *err, char *buf, size_t size)
{
	if (!buf || size == 0)
		return;
	buf[0] = '\0';
	if (!err)
		return;
	if (err->file[0])
		appendf(buf, size, "%s:", err->file);
	if (err->file[0] && err->line > 0)
		appendf(buf, size, "%d:", err->line);
	if (err->key[0])
		appendf(buf, size, "%s%s:", buf[0] ? " " : "", err->key);
	appendf(buf, size, "%s%s", buf[0] ? " " : "", err->message);
}

/* The dotted path of a setting in libconfig's own lookup syntax: "template.parameters.[2].file". */
static void setting_path(const config_setting_t *s, char *buf, size_t size)
{
	const char *name;

	if (!s || config_setting_is_root(s)) {
		buf[0] = '\0';
		return;
	}
	setting_path(config_setting_parent(s), buf, size);
	name = config_setting_name(s);
	if (name)
		appendf(buf, size, "%s%s", buf[0] ? "." : "", name);
	else
		appendf(buf, size, "%s[%d]", buf[0] ? "." : "", config_setting_index(s));
}

/*
 * Fill err for setting s, or for its missing member when missing is set (the line is then the
 * parent's: the closest place the admin can look at).
 */
static int error_at(struct config_error *err, const config_setting_t *s, const char *missing,
                    const char *fmt, ...) _printf_(4, 5);
static int error_at(struct config_error *err, const config_setting_t *s, const char *missing,
                    const char *fmt, ...)
{
	va_list ap;

	err->line = s ? (int)config_setting_source_line(s) : 0;
	setting_path(s, err->key, sizeof(err->key));
	if (missing)
		appendf(err->key, sizeof(err->key), "%s%s", err->key[0] ? "." : "", missing);
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static int error_oom(struct config_error *err)
{
	err->line = 0;
	err->key[0] = '\0';
	snprintf(err->message, sizeof(err->message), "out of memory");
	return -ENOMEM;
}

/* Quote a string for a message: cut long ones, and keep control characters out of the log. */
static void quote(const char *s, char *buf, size_t size)
{
	size_t n = 0, len = strlen(s);

	for (size_t i = 0; i < len && i < QUOTE_MAX && n + 1 < size; i++) {
		unsigned char ch = (unsigned char)s[i];
		buf[n++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
	}
	buf[n] = '\0';
	if (len > QUOTE_MAX)
		appendf(buf, size, "...");
}

/* What a setting holds, for the "got ..." part of a message. */
static void describe(const config_setting_t *s, char *buf, size_t size)
{
	char q[QUOTE_MAX * 2];

	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		snprintf(buf, size, "%lld", config_setting_get_int64(s));
		break;
	case CONFIG_TYPE_FLOAT:
		/* "8883.0", not "8883": the point is why an integer key rejects it. */
		snprintf(buf, size, "%.15g", config_setting_get_float(s));
		if (!strpbrk(buf, ".eEin"))
			appendf(buf, size, ".0");
		break;
	case CONFIG_TYPE_BOOL:
		snprintf(buf, size, "%s", config_setting_get_bool(s) ? "true" : "false");
		break;
	case CONFIG_TYPE_STRING:
		quote(config_setting_get_string(s), q, sizeof(q));
		snprintf(buf, size, "\"%s\"", q);
		break;
	case CONFIG_TYPE_GROUP:
		snprintf(buf, size, "a group { ... }");
		break;
	case CONFIG_TYPE_LIST:
		snprintf(buf, size, "a list ( ... )");
		break;
	case CONFIG_TYPE_ARRAY:
		snprintf(buf, size, "an array [ ... ]");
		break;
	default:
		snprintf(buf, size, "nothing");
		break;
	}
}

static bool is_integer(const config_setting_t *s)
{
	return config_setting_type(s) == CONFIG_TYPE_INT ||
	       config_setting_type(s) == CONFIG_TYPE_INT64;
}

static int check_uint(const config_setting_t *s, const struct key_spec *k, struct config_error *err)
{
	char got[QUOTE_MAX * 2];
	long long v;

	if (is_integer(s)) {
		v = config_setting_get_int64(s);
		if (v >= (long long)k->min && v <= (long long)k->max)
			return 0;
	}
	describe(s, got, sizeof(got));
	return error_at(err, s, NULL,
	                "must be an integer between %" PRIu32 " and %" PRIu32 ", got %s", k->min,
	                k->max, got);
}

static int check_path(const config_setting_t *s, struct config_error *err)
{
	char got[QUOTE_MAX * 2];
	const char *v;

	describe(s, got, sizeof(got));
	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return error_at(err, s, NULL, "must be an absolute path in quotes, got %s", got);
	v = config_setting_get_string(s);
	if (v[0] != '/')
		return error_at(err, s, NULL,
		                "must be an absolute path (starting with '/'), got %s", got);
	if (strlen(v) >= PATH_MAX)
		return error_at(err, s, NULL, "must be a path shorter than %d bytes", PATH_MAX);
	return 0;
}

static int check_log_level(const config_setting_t *s, struct config_error *err)
{
	char got[QUOTE_MAX * 2];

	if (config_setting_type(s) == CONFIG_TYPE_STRING &&
	    log_level_from_string(config_setting_get_string(s)) >= 0)
		return 0;
	if (is_integer(s) && config_setting_get_int64(s) >= LOG_EMERG &&
	    config_setting_get_int64(s) <= LOG_DEBUG)
		return 0;
	describe(s, got, sizeof(got));
	return error_at(err, s, NULL,
	                "must be one of \"emerg\", \"alert\", \"crit\", \"err\", \"warning\", "
	                "\"notice\", \"info\", \"debug\" or 0..7, got %s",
	                got);
}

static int check_type(const config_setting_t *s, int type, const char *what,
                      struct config_error *err)
{
	char got[QUOTE_MAX * 2];

	if (config_setting_type(s) == type)
		return 0;
	describe(s, got, sizeof(got));
	return error_at(err, s, NULL, "must be %s, got %s", what, got);
}

static int check_members(const config_setting_t *group, const struct key_spec *keys,
                         struct config_error *err);

static int check_list(const config_setting_t *s, const struct key_spec *k, struct config_error *err)
{
	int r;

	/* "()" and "[]" both read as "no entries". */
	if (config_setting_type(s) == CONFIG_TYPE_ARRAY && config_setting_length(s) == 0)
		return 0;
	r = check_type(s, CONFIG_TYPE_LIST, "a list ( { ... }, { ... } )", err);
	if (r < 0)
		return r;
	for (int i = 0; i < config_setting_length(s); i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

		r = check_type(e, CONFIG_TYPE_GROUP, "a group { name = ...; ... }", err);
		if (r < 0)
			return r;
		r = check_members(e, k->children, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int check_setting(const config_setting_t *s, const struct key_spec *k,
                         struct config_error *err)
{
	int r;

	switch (k->kind) {
	case KIND_STRING:
		return check_type(s, CONFIG_TYPE_STRING, "a string in quotes", err);
	case KIND_PATH:
		return check_path(s, err);
	case KIND_UINT:
		return check_uint(s, k, err);
	case KIND_BOOL:
		return check_type(s, CONFIG_TYPE_BOOL, "true or false", err);
	case KIND_GROUP:
		r = check_type(s, CONFIG_TYPE_GROUP, "a group { ... }", err);
		return r < 0 ? r : check_members(s, k->children, err);
	case KIND_LIST:
		return check_list(s, k, err);
	case KIND_LOG_LEVEL:
		return check_log_level(s, err);
	}
	return -EINVAL;
}

static const struct key_spec *find_key(const struct key_spec *keys, const char *name)
{
	for (const struct key_spec *k = keys; name && k->name; k++)
		if (strcmp(k->name, name) == 0)
			return k;
	return NULL;
}

static int error_unknown(const config_setting_t *s, const struct key_spec *keys,
                         struct config_error *err)
{
	char valid[sizeof(err->message)] = "";

	for (const struct key_spec *k = keys; k->name; k++)
		appendf(valid, sizeof(valid), "%s%s", k == keys ? "" : ", ", k->name);
	return error_at(err, s, NULL, "unknown key; valid keys here: %s", valid);
}

static int check_members(const config_setting_t *group, const struct key_spec *keys,
                         struct config_error *err)
{
	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *m = config_setting_get_elem(group, (unsigned)i);
		const struct key_spec *k = find_key(keys, config_setting_name(m));
		int r;

		if (!k)
			return error_unknown(m, keys, err);
		r = check_setting(m, k, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* NULL when the group itself is absent, so optional groups need no special case. */
static const config_setting_t *member(const config_setting_t *group, const char *name)
{
	return group ? config_setting_get_member(group, name) : NULL;
}

static int take_string(const config_setting_t *group, const char *name, char **dst,
                       struct config_error *err)
{
	const config_setting_t *s = member(group, name);
	char *copy;

	if (!s)
		return 0;
	copy = strdup(config_setting_get_string(s));
	if (!copy)
		return error_oom(err);
	free(*dst);
	*dst = copy;
	return 0;
}

/* Only after the schema pass: the type and range are known good. */
static void take_uint(const config_setting_t *group, const char *name, uint32_t *dst)
{
	const config_setting_t *s = member(group, name);

	if (s)
		*dst = (uint32_t)config_setting_get_int64(s);
}

static void take_bool(const config_setting_t *group, const char *name, bool *dst)
{
	const config_setting_t *s = member(group, name);

	if (s)
		*dst = config_setting_get_bool(s);
}

static bool host_name_is_valid(const char *s)
{
	size_t label = 0, len = strlen(s);

	if (len == 0 || len > HOST_NAME_MAX_LEN)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!isalnum((unsigned char)s[i]) && s[i] != '-')
			return false;
		if (s[i] == '-' && label == 0)
			return false;
		if (++label > HOST_LABEL_MAX)
			return false;
	}
	return label > 0 && s[len - 1] != '-';
}

static int check_endpoint(const config_setting_t *s, struct config_error *err)
{
	const char *v = config_setting_get_string(s);
	char q[QUOTE_MAX * 2];

	quote(v, q, sizeof(q));
	if (strstr(v, "://"))
		return error_at(
		    err, s, NULL,
		    "must be a bare host name without a scheme such as mqtts://, got \"%s\"", q);
	if (strchr(v, ':'))
		return error_at(err, s, NULL,
		                "must be a bare host name; set the port with 'port', got \"%s\"",
		                q);
	if (strchr(v, '/'))
		return error_at(err, s, NULL, "must be a bare host name without a path, got \"%s\"",
		                q);
	if (!host_name_is_valid(v))
		return error_at(err, s, NULL,
		                "must be a host name (letters, digits, '-' and '.', e.g. "
		                "\"abc123-ats.iot.eu-west-1.amazonaws.com\"), got \"%s\"",
		                q);
	return 0;
}

static int parse_connection(const config_setting_t *root, struct config *c,
                            struct config_error *err)
{
	const config_setting_t *claim = member(root, "claim");
	const config_setting_t *endpoint = member(root, "endpoint");
	int r;

	if (!endpoint)
		return error_at(err, root, "endpoint",
		                "is required: the AWS IoT data endpoint, as printed by "
		                "'aws iot describe-endpoint --endpoint-type iot:Data-ATS'");
	r = check_endpoint(endpoint, err);
	if (r < 0)
		return r;
	if (member(root, "port"))
		c->port = (uint16_t)config_setting_get_int64(member(root, "port"));
	r = take_string(root, "endpoint", &c->endpoint, err);
	if (r >= 0)
		r = take_string(root, "ca_file", &c->ca_file, err);
	if (r >= 0)
		r = take_string(claim, "certificate", &c->claim_certificate, err);
	if (r >= 0)
		r = take_string(claim, "private_key", &c->claim_private_key, err);
	return r;
}

static bool template_name_is_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > PROTO_TEMPLATE_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
			return false;
	return true;
}

static bool param_name_is_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > PARAM_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("_:.-", s[i]))
			return false;
	return true;
}

/* The kernel's rule for interface names (dev_valid_name): no '/', ':' or spaces, < IFNAMSIZ. */
static bool interface_name_is_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len >= IFNAMSIZ || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '/' || s[i] == ':' || isspace((unsigned char)s[i]) ||
		    iscntrl((unsigned char)s[i]))
			return false;
	return true;
}

/* The source member of parameter entry g; -EINVAL unless there is exactly one. */
static int find_source(const config_setting_t *g, const char *name, enum param_source *ret,
                       struct config_error *err)
{
	const config_setting_t *first = NULL;
	enum param_source found = PARAM_SOURCE_VALUE;

	for (int i = 0; i < _PARAM_SOURCE_MAX; i++) {
		const config_setting_t *s = member(g, param_source_keys[i]);

		if (!s)
			continue;
		if (first)
			return error_at(err, s, NULL,
			                "parameter '%s' already takes its value from '%s'; "
			                "a parameter has exactly one source",
			                name, config_setting_name(first));
		first = s;
		found = (enum param_source)i;
	}
	if (!first)
		return error_at(err, g, NULL,
		                "parameter '%s' needs one source: value, file, interface_mac, "
		                "machine_id, hostname or command",
		                name);
	*ret = found;
	return 0;
}

/* Checks that need no I/O, so a typo fails "fleetprovd --check-config", not the first boot. */
static int check_source(const config_setting_t *s, const struct config_param *p,
                        struct config_error *err)
{
	char errbuf[sizeof(err->message)];
	_cleanup_free_ char *value = NULL;
	char q[QUOTE_MAX * 2];
	int r;

	switch (p->source) {
	case PARAM_SOURCE_VALUE:
		r = params_resolve_one(p, &value, errbuf, sizeof(errbuf));
		if (r == -ENOMEM)
			return error_oom(err);
		return r < 0 ? error_at(err, s, NULL, "%s", errbuf) : 0;
	case PARAM_SOURCE_INTERFACE_MAC:
		quote(p->arg, q, sizeof(q));
		if (!interface_name_is_valid(p->arg))
			return error_at(err, s, NULL,
			                "must be a network interface name (1 to %d characters, no "
			                "'/', ':' or spaces), got \"%s\"",
			                IFNAMSIZ - 1, q);
		return 0;
	case PARAM_SOURCE_MACHINE_ID:
	case PARAM_SOURCE_HOSTNAME:
		if (!config_setting_get_bool(s))
			return error_at(err, s, NULL,
			                "can only be true (it selects the source); remove the line "
			                "instead");
		return 0;
	case PARAM_SOURCE_COMMAND:
		quote(p->arg, q, sizeof(q));
		if (p->arg[0] != '/')
			return error_at(err, s, NULL,
			                "must start with the absolute path of a program (it runs "
			                "without a shell), got \"%s\"",
			                q);
		return 0;
	default:
		return 0;
	}
}

static int parse_param(const config_setting_t *g, struct config_param *p, struct config_error *err)
{
	const config_setting_t *name = member(g, "name");
	const config_setting_t *timeout = member(g, "timeout_ms");
	const config_setting_t *source;
	char q[QUOTE_MAX * 2];
	int r;

	if (!name)
		return error_at(err, g, "name", "is required: the template parameter's name");
	quote(config_setting_get_string(name), q, sizeof(q));
	if (!param_name_is_valid(config_setting_get_string(name)))
		return error_at(err, name, NULL,
		                "must be 1 to %d characters of letters, digits, '_', ':', '.' and "
		                "'-', got \"%s\"",
		                PARAM_NAME_MAX, q);
	r = find_source(g, config_setting_get_string(name), &p->source, err);
	if (r < 0)
		return r;
	if (timeout && p->source != PARAM_SOURCE_COMMAND)
		return error_at(err, timeout, NULL, "only applies to a parameter with 'command'");
	p->name = strdup(config_setting_get_string(name));
	if (!p->name)
		return error_oom(err);
	source = member(g, param_source_keys[p->source]);
	if (config_setting_type(source) == CONFIG_TYPE_STRING) {
		p->arg = strdup(config_setting_get_string(source));
		if (!p->arg)
			return error_oom(err);
	}
	if (p->source == PARAM_SOURCE_COMMAND) {
		p->timeout_ms = COMMAND_TIMEOUT_DEFAULT_MS;
		take_uint(g, "timeout_ms", &p->timeout_ms);
	}
	return check_source(source, p, err);
}

static int check_duplicate(const config_setting_t *list, int i, const struct config *c,
                           struct config_error *err)
{
	for (int j = 0; j < i; j++) {
		if (strcmp(c->params[j].name, c->params[i].name) != 0)
			continue;
		return error_at(
		    err, member(config_setting_get_elem(list, (unsigned)i), "name"), NULL,
		    "duplicate parameter name '%s' (first defined on line %u)", c->params[i].name,
		    config_setting_source_line(config_setting_get_elem(list, (unsigned)j)));
	}
	return 0;
}

static int parse_params(const config_setting_t *list, struct config *c, struct config_error *err)
{
	int n = list ? config_setting_length(list) : 0;

	if (n == 0)
		return 0;
	c->params = calloc((size_t)n, sizeof(*c->params));
	if (!c->params)
		return error_oom(err);
	for (int i = 0; i < n; i++) {
		/* Counted before parsing so config_free sees every partly filled entry. */
		c->n_params++;
		int r = parse_param(config_setting_get_elem(list, (unsigned)i), &c->params[i], err);
		if (r < 0)
			return r;
		r = check_duplicate(list, i, c, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int parse_template(const config_setting_t *root, struct config *c, struct config_error *err)
{
	const config_setting_t *tmpl = member(root, "template");
	const config_setting_t *name = member(tmpl, "name");
	char q[QUOTE_MAX * 2];
	int r;

	if (!tmpl)
		return error_at(err, root, "template",
		                "is required: template = { name = \"...\"; } with the name of the "
		                "fleet provisioning template");
	if (!name)
		return error_at(err, tmpl, "name",
		                "is required: the name of the fleet provisioning template");
	quote(config_setting_get_string(name), q, sizeof(q));
	if (!template_name_is_valid(config_setting_get_string(name)))
		return error_at(err, name, NULL,
		                "must be 1 to %d characters of letters, digits, '_' and '-', got "
		                "\"%s\"",
		                PROTO_TEMPLATE_NAME_MAX, q);
	r = take_string(tmpl, "name", &c->template_name, err);
	if (r < 0)
		return r;
	return parse_params(member(tmpl, "parameters"), c, err);
}

/*
 * Expand a "${Name}" template against placeholders now, so an unknown name or a stray "${"
 * fails at load time. ret_expanded is the result with every parameter one character long.
 */
static int check_references(const config_setting_t *s, const struct config *c, char **ret_expanded,
                            struct config_error *err)
{
	static char placeholder[] = "x";
	_cleanup_free_ struct param_value *items = NULL;
	char errbuf[sizeof(err->message)];
	struct param_list l = {0};
	char *out = NULL;
	int r;

	if (c->n_params > 0) {
		items = calloc(c->n_params, sizeof(*items));
		if (!items)
			return error_oom(err);
	}
	for (size_t i = 0; i < c->n_params; i++)
		items[i] = (struct param_value){.name = c->params[i].name, .value = placeholder};
	l = (struct param_list){.items = items, .n = c->n_params};
	r = params_expand(config_setting_get_string(s), &l, &out, errbuf, sizeof(errbuf));
	if (r == -ENOMEM)
		return error_oom(err);
	if (r < 0)
		return error_at(err, s, NULL, "%s", errbuf);
	*ret_expanded = out;
	return 0;
}

static int parse_client_id(const config_setting_t *root, struct config *c, struct config_error *err)
{
	const config_setting_t *s = member(root, "client_id");
	_cleanup_free_ char *expanded = NULL;
	int r;

	if (!s)
		return 0;
	r = check_references(s, c, &expanded, err);
	if (r < 0)
		return r;
	if (expanded[0] == '\0')
		return error_at(err, s, NULL, "must not be empty; remove the line for the default");
	/* Spec §3.2: AWS IoT reserves client ids starting with '$'. */
	if (expanded[0] == '$')
		return error_at(err, s, NULL, "must not start with '$' (reserved by AWS IoT)");
	if (strlen(expanded) > PROTO_CLIENT_ID_MAX)
		return error_at(err, s, NULL, "must be at most %d bytes long", PROTO_CLIENT_ID_MAX);
	return take_string(root, "client_id", &c->client_id, err);
}

static int parse_key(const config_setting_t *root, struct config *c, struct config_error *err)
{
	const config_setting_t *key = member(root, "key");
	const config_setting_t *type = member(key, "type");
	const config_setting_t *subject = member(key, "subject");
	_cleanup_free_ char *expanded = NULL;
	char got[QUOTE_MAX * 2];
	int r;

	if (type) {
		describe(type, got, sizeof(got));
		r = key_type_from_string(config_setting_get_string(type));
		if (r < 0)
			return error_at(err, type, NULL,
			                "must be one of \"ec-p256\", \"ec-p384\", \"rsa-2048\", "
			                "\"rsa-3072\", \"rsa-4096\", got %s",
			                got);
		c->key_type = (enum key_type)r;
	}
	if (subject) {
		r = check_references(subject, c, &expanded, err);
		if (r < 0)
			return r;
		if (expanded[0] == '\0')
			return error_at(err, subject, NULL,
			                "must not be empty; remove the line for CN=<client id>");
	}
	if (member(key, "csr_file") && !member(key, "file"))
		return error_at(err, member(key, "csr_file"), NULL,
		                "needs key.file: a supplied CSR must come with the private key it "
		                "was made from");
	r = take_string(key, "subject", &c->csr_subject, err);
	if (r >= 0)
		r = take_string(key, "file", &c->key_file, err);
	if (r >= 0)
		r = take_string(key, "csr_file", &c->csr_file, err);
	return r;
}

static int parse_retry(const config_setting_t *root, struct config *c, struct config_error *err)
{
	const config_setting_t *retry = member(root, "retry");

	take_uint(retry, "base", &c->retry_base_sec);
	take_uint(retry, "cap", &c->retry_cap_sec);
	take_uint(retry, "permanent", &c->retry_permanent_sec);
	take_uint(retry, "max_attempts", &c->max_attempts);
	take_uint(retry, "throttle", &c->retry_throttle_sec);
	if (c->retry_cap_sec >= c->retry_base_sec)
		return 0;
	if (member(retry, "cap"))
		return error_at(err, member(retry, "cap"), NULL,
		                "must be an integer between %" PRIu32 " (retry.base) and %d, got "
		                "%" PRIu32,
		                c->retry_base_sec, RETRY_CAP_MAX, c->retry_cap_sec);
	return error_at(err, member(retry, "base"), NULL,
	                "is larger than retry.cap (%d by default); raise retry.cap as well",
	                RETRY_CAP_DEFAULT);
}

static int parse_behaviour(const config_setting_t *root, struct config *c, struct config_error *err)
{
	const config_setting_t *timeouts = member(root, "timeouts");
	const config_setting_t *level = member(root, "log_level");

	take_bool(root, "verify", &c->verify);
	take_uint(root, "keepalive", &c->keepalive_sec);
	take_uint(timeouts, "connect", &c->connect_timeout_sec);
	take_uint(timeouts, "response", &c->response_timeout_sec);
	take_uint(root, "token_max_age", &c->token_max_age_sec);
	if (level)
		c->log_level = is_integer(level)
		                   ? (int)config_setting_get_int64(level)
		                   : log_level_from_string(config_setting_get_string(level));
	return take_string(root, "state_dir", &c->state_dir, err);
}

static struct config *config_new_defaults(const char *name)
{
	_cleanup_(config_freep) struct config *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	*c = (struct config){
	    .port = DEFAULT_PORT,
	    .key_type = KEY_EC_P256,
	    .verify = true,
	    .keepalive_sec = KEEPALIVE_DEFAULT,
	    .connect_timeout_sec = TIMEOUT_DEFAULT,
	    .response_timeout_sec = TIMEOUT_DEFAULT,
	    .retry_base_sec = RETRY_BASE_DEFAULT,
	    .retry_cap_sec = RETRY_CAP_DEFAULT,
	    .retry_permanent_sec = RETRY_PERMANENT_DEFAULT,
	    .max_attempts = RETRY_MAX_ATTEMPTS_DEFAULT,
	    .retry_throttle_sec = RETRY_THROTTLE_DEFAULT,
	    .token_max_age_sec = TOKEN_MAX_AGE_DEFAULT,
	    .log_level = LOG_INFO,
	};
	c->path = strdup(name);
	c->ca_file = strdup(DEFAULT_CA_FILE);
	c->claim_certificate = strdup(DEFAULT_CLAIM_CERTIFICATE);
	c->claim_private_key = strdup(DEFAULT_CLAIM_PRIVATE_KEY);
	c->state_dir = strdup(DEFAULT_STATE_DIR);
	if (!c->path || !c->ca_file || !c->claim_certificate || !c->claim_private_key ||
	    !c->state_dir)
		return NULL;
	return TAKE_PTR(c);
}

static int parse_values(const config_setting_t *root, struct config *c, struct config_error *err)
{
	int r;

	r = parse_connection(root, c, err);
	if (r >= 0)
		r = parse_template(root, c, err);
	if (r >= 0)
		r = parse_client_id(root, c, err);
	if (r >= 0)
		r = parse_key(root, c, err);
	if (r >= 0)
		r = parse_retry(root, c, err);
	if (r >= 0)
		r = parse_behaviour(root, c, err);
	return r;
}

static int error_line(struct config_error *err, int line, const char *fmt, ...) _printf_(3, 4);
static int error_line(struct config_error *err, int line, const char *fmt, ...)
{
	va_list ap;

	err->line = line;
	err->key[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/*
 * libconfig 1.5 reads an integer without an L suffix with atoi(): "port = 4294975179;" becomes
 * 8883. Check the range of each such literal before libconfig sees it. *p is at its start.
 */
static int check_integer(const char **p, int line, struct config_error *err)
{
	const char *start = *p, *q = *p;
	bool hex = q[0] == '0' && (q[1] == 'x' || q[1] == 'X');
	bool out_of_range;
	long long v;
	int len;

	if (hex)
		for (q += 2; isxdigit((unsigned char)*q); q++)
			;
	else
		for (q += (*q == '-' || *q == '+'); isdigit((unsigned char)*q); q++)
			;
	if (!hex && (*q == '.' || *q == 'e' || *q == 'E')) {
		/* A float: libconfig reads it with strtod, which saturates. */
		for (q++; isalnum((unsigned char)*q) || (*q && strchr(".+-", *q)); q++)
			;
		*p = q;
		return 0;
	}
	*p = q;
	len = (int)(q - start) > QUOTE_MAX ? QUOTE_MAX : (int)(q - start);
	errno = 0;
	if (hex)
		out_of_range = strtoull(start, NULL, 16) > (unsigned long long)INT_MAX;
	else
		v = strtoll(start, NULL, 10), out_of_range = v < INT_MIN || v > INT_MAX;
	if (errno == ERANGE)
		return error_line(err, line, "integer %.*s is out of range", len, start);
	if (out_of_range && *q != 'L')
		return error_line(
		    err, line, "integer %.*s is out of range (%d to %d; add L for a 64-bit value)",
		    len, start, INT_MIN, INT_MAX);
	return 0;
}

static const char *skip_string(const char *p, int *line)
{
	for (p++; *p && *p != '"'; p++) {
		if (*p == '\n')
			(*line)++;
		else if (*p == '\\' && p[1])
			p++;
	}
	return *p ? p + 1 : p;
}

static const char *skip_block_comment(const char *p, int *line)
{
	for (p += 2; *p && !(p[0] == '*' && p[1] == '/'); p++)
		if (*p == '\n')
			(*line)++;
	return *p ? p + 2 : p;
}

/*
 * What libconfig would accept but fleetprovd must not: "@include" (the configuration is one
 * file; an include could also read any file or block on a FIFO) and integers that libconfig
 * would silently wrap. A small lexer that knows strings, comments and names is enough.
 */
static int check_raw_text(const char *p, struct config_error *err)
{
	bool line_start = true;
	int line = 1, r;

	while (*p) {
		if (*p == '\n') {
			line++, line_start = true, p++;
		} else if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\f') {
			p++;
		} else if (line_start && *p == '@') {
			return error_line(err, line,
			                  "directives such as @include are not supported");
		} else if (*p == '"') {
			p = skip_string(p, &line), line_start = false;
		} else if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
			p += strcspn(p, "\n");
		} else if (p[0] == '/' && p[1] == '*') {
			p = skip_block_comment(p, &line), line_start = false;
		} else if (isalpha((unsigned char)*p) || *p == '*' || *p == '_') {
			p += strspn(
			    p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_*-");
			line_start = false;
		} else if (isdigit((unsigned char)*p) ||
		           ((*p == '-' || *p == '+') && isdigit((unsigned char)p[1]))) {
			r = check_integer(&p, line, err);
			if (r < 0)
				return r;
			line_start = false;
		} else {
			p++, line_start = false;
		}
	}
	return 0;
}

static void libconfig_destroyp(config_t *lc)
{
	config_destroy(lc);
}

static int parse_text(const char *text, const char *name, struct config **ret,
                      struct config_error *err)
{
	_cleanup_(libconfig_destroyp) config_t lc;
	_cleanup_(config_freep) struct config *c = NULL;
	const config_setting_t *root;
	int r;

	config_init(&lc);
	if (config_read_string(&lc, text) != CONFIG_TRUE)
		return error_line(err, config_error_line(&lc), "%s",
		                  config_error_text(&lc) ? config_error_text(&lc) : "syntax error");
	root = config_root_setting(&lc);
	r = check_members(root, root_keys, err);
	if (r < 0)
		return r;
	c = config_new_defaults(name);
	if (!c)
		return error_oom(err);
	r = parse_values(root, c, err);
	if (r < 0)
		return r;
	*ret = TAKE_PTR(c);
	return 0;
}

int config_load_string(const char *text, const char *name, struct config **ret,
                       struct config_error *reterr)
{
	struct config_error ignored;
	struct config_error *err = reterr ? reterr : &ignored;
	int r;

	*err = (struct config_error){0};
	if (!name)
		name = "<string>";
	snprintf(err->file, sizeof(err->file), "%s", name);
	if (!text || !ret)
		return error_line(err, 0, "no configuration text");
	r = check_raw_text(text, err);
	if (r < 0)
		return r;
	return parse_text(text, name, ret, err);
}

static int error_errno(struct config_error *err, int r, const char *fmt, ...) _printf_(3, 4);
static int error_errno(struct config_error *err, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	appendf(err->message, sizeof(err->message), ": %s", strerror(-r));
	return r;
}

/* The whole file in one NUL-terminated buffer. */
static int read_file(const char *path, char **ret, struct config_error *err)
{
	_cleanup_close_ int fd = -1;
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	struct stat st;

	/* O_NONBLOCK: a FIFO in place of the file must not hang the boot; fstat rejects it. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return error_errno(err, NEG_ERRNO(), "cannot open '%s'", path);
	if (fstat(fd, &st) < 0)
		return error_errno(err, NEG_ERRNO(), "cannot stat '%s'", path);
	if (S_ISDIR(st.st_mode))
		return error_errno(err, -EISDIR, "cannot read '%s'", path);
	if (!S_ISREG(st.st_mode))
		return error_errno(err, -EINVAL, "'%s' is not a regular file", path);
	buf = malloc(CONFIG_FILE_MAX + 1);
	if (!buf)
		return error_oom(err);
	for (;;) {
		ssize_t n = read(fd, buf + len, CONFIG_FILE_MAX + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return error_errno(err, NEG_ERRNO(), "cannot read '%s'", path);
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > CONFIG_FILE_MAX)
			return error_errno(err, -EFBIG, "cannot read '%s' (limit %d bytes)", path,
			                   CONFIG_FILE_MAX);
	}
	buf[len] = '\0';
	if (strlen(buf) != len)
		return error_line(err, 0, "'%s' contains a NUL byte; is it a text file?", path);
	*ret = TAKE_PTR(buf);
	return 0;
}

int config_load(const char *path, struct config **ret, struct config_error *reterr)
{
	struct config_error ignored;
	struct config_error *err = reterr ? reterr : &ignored;
	_cleanup_free_ char *text = NULL;
	int r;

	*err = (struct config_error){0};
	if (!path || !ret)
		return error_line(err, 0, "no configuration file");
	snprintf(err->file, sizeof(err->file), "%s", path);
	r = read_file(path, &text, err);
	if (r < 0)
		return r;
	return config_load_string(text, path, ret, err);
}

struct config *config_free(struct config *c)
{
	if (!c)
		return NULL;
	for (size_t i = 0; i < c->n_params; i++) {
		free(c->params[i].name);
		free(c->params[i].arg);
	}
	free(c->params);
	free(c->path);
	free(c->endpoint);
	free(c->ca_file);
	free(c->claim_certificate);
	free(c->claim_private_key);
	free(c->template_name);
	free(c->client_id);
	free(c->csr_subject);
	free(c->key_file);
	free(c->csr_file);
	free(c->state_dir);
	free(c);
	return NULL;
}
