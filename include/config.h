/*
 * The configuration file (libconfig syntax), parsed once into a validated struct.
 * Nothing below main reads the file or the environment. Non-logging: errors come back in
 * struct config_error, naming file, line and key.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum key_type {
	KEY_EC_P256,
	KEY_EC_P384,
	KEY_RSA_2048,
	KEY_RSA_3072,
	KEY_RSA_4096,
	_KEY_TYPE_MAX,
	_KEY_TYPE_INVALID = -EINVAL,
};

const char *key_type_to_string(enum key_type t);
enum key_type key_type_from_string(const char *s);

/* Where a template parameter's value comes from (design.md decision 9). */
enum param_source {
	PARAM_SOURCE_VALUE,         /* value = "literal" */
	PARAM_SOURCE_FILE,          /* file = "/path": first line, trimmed */
	PARAM_SOURCE_INTERFACE_MAC, /* interface_mac = "eth0": aa:bb:cc:dd:ee:ff */
	PARAM_SOURCE_MACHINE_ID,    /* machine_id = true: /etc/machine-id */
	PARAM_SOURCE_HOSTNAME,      /* hostname = true */
	PARAM_SOURCE_COMMAND,       /* command = "/usr/libexec/hwrev": first line of stdout */
	_PARAM_SOURCE_MAX,
};

struct config_param {
	char *name;
	enum param_source source;
	char *arg;           /* literal, path, interface or command; NULL when unused */
	uint32_t timeout_ms; /* command only */
};

struct config {
	char *path; /* the file this came from */

	char *endpoint; /* host name: used for DNS, SNI and the hostname check */
	uint16_t port;  /* 8883, or 443 with ALPN x-amzn-mqtt-ca */
	char *ca_file;
	char *claim_certificate;
	char *claim_private_key;

	char *template_name;
	struct config_param *params;
	size_t n_params;

	char *client_id; /* "${Name}" references to parameters are expanded */
	enum key_type key_type;
	char *csr_subject; /* e.g. "CN=${SerialNumber}", expanded like client_id */
	char *key_file;    /* optional user-supplied private key (PEM) */
	char *csr_file;    /* optional user-supplied CSR (PEM), needs key_file */

	char *state_dir;
	bool verify; /* connect with the new credentials before READY */

	uint32_t keepalive_sec;
	uint32_t connect_timeout_sec;
	uint32_t response_timeout_sec;
	uint32_t retry_base_sec; /* transient errors: full-jitter exponential backoff */
	uint32_t retry_cap_sec;
	uint32_t retry_permanent_sec; /* permanent rejections retry on this slow schedule */
	uint32_t max_attempts;        /* 0 = forever */
	uint32_t retry_throttle_sec;  /* throttling (429 or ThrottlingException): first window */
	uint32_t token_max_age_sec; /* resume RegisterThing with a stored token younger than this */

	int log_level; /* LOG_* from syslog.h */
};

struct config_error {
	char file[256];
	int line;      /* 0 when unknown */
	char key[128]; /* dotted path, e.g. "template.parameters.[2].file"; may be empty */
	char message[256];
};

/* Format "file:line: key: message" into buf. */
void config_error_format(const struct config_error *err, char *buf, size_t size);

/*
 * Parse and validate the file at path. Every default is applied here.
 * Returns 0 and a new config, or -EINVAL (bad content: *reterr filled), -ENOENT/-EACCES/...
 * (cannot read the file: *reterr filled too).
 */
int config_load(const char *path, struct config **ret, struct config_error *reterr);

/* The same from a string (for tests and fuzzing); name is used in error messages. */
int config_load_string(const char *text, const char *name, struct config **ret,
                       struct config_error *reterr);

struct config *config_free(struct config *c);
static inline void config_freep(struct config **c)
{
	config_free(*c);
}
