/*
 * The Fleet Provisioning MQTT API (spec/aws-fleet-provisioning.md §1): topic builders,
 * request builders and response parsers. Pure: no I/O, no globals, no logging.
 * Every field of an untrusted reply is type- and size-checked against the limits below.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "params.h"

/* spec §3.2: AWS IoT rejects PUBLISH payloads over 128 KB; nothing legitimate is bigger. */
#define PROTO_PAYLOAD_MAX (128u * 1024u)
/* spec §1.2 / A-TPL: 1-36 characters of [0-9A-Za-z_-]. */
#define PROTO_TEMPLATE_NAME_MAX 36
/* spec §1.3 / A-CKC: exactly 64 hex characters. */
#define PROTO_CERT_ID_LEN 64
/* spec §1.3: the REST twin allows PEM up to 65536 characters. */
#define PROTO_CERT_PEM_MAX 65536
/* spec §1.3: undocumented; AWS code reserves 512 bytes. Generous, but bounded. */
#define PROTO_TOKEN_MAX 8192
/* spec §1.5 / D-LIM19: thing names are at most 128 bytes. */
#define PROTO_THING_NAME_MAX 128
/* DeviceConfiguration is flat string->string; bound each piece and the count. */
#define PROTO_DEVCONF_KEY_MAX     2048
#define PROTO_DEVCONF_VALUE_MAX   4096
#define PROTO_DEVCONF_ENTRIES_MAX 256
/* Rejection texts are copied into logs: keep them short. */
#define PROTO_ERROR_CODE_MAX    128
#define PROTO_ERROR_MESSAGE_MAX 1024
/* spec §3.2: topics are at most 256 bytes. */
#define PROTO_TOPIC_MAX 256
/* spec §3.2: client ids are at most 128 bytes and must not begin with '$'. */
#define PROTO_CLIENT_ID_MAX 128

enum proto_op {
	PROTO_OP_CREATE_CERT_FROM_CSR,
	PROTO_OP_REGISTER_THING,
	_PROTO_OP_MAX,
};

struct proto_topics {
	char request[PROTO_TOPIC_MAX + 1];
	char accepted[PROTO_TOPIC_MAX + 1];
	char rejected[PROTO_TOPIC_MAX + 1];
};

enum proto_reply {
	PROTO_REPLY_NONE, /* topic is not a reply to this operation */
	PROTO_REPLY_ACCEPTED,
	PROTO_REPLY_REJECTED,
};

/* true if name is a valid template name (spec §1.2). */
int proto_template_name_valid(const char *name);
/*
 * true if id is a valid MQTT client id for AWS IoT (spec §3.2): 1-128 bytes, not starting
 * with '$'. Stricter than AWS: printable ASCII only, no space, '+', '#' or '/', because the
 * id must also be written into the claim policy's iot:Connect resource.
 */
int proto_client_id_valid(const char *id);

/* Build the JSON topics of op; template_name is needed for RegisterThing only. */
int proto_topics_init(enum proto_op op, const char *template_name, struct proto_topics *ret);
enum proto_reply proto_topics_match(const struct proto_topics *t, const char *topic);

/* {"certificateSigningRequest": csr_pem}; ret is a new NUL-terminated string. */
int proto_build_csr_request(const char *csr_pem, char **ret, size_t *ret_len);
/* {"certificateOwnershipToken": token, "parameters": {...}}. ret holds the token: erase it. */
int proto_build_register_request(const char *token, const struct param_list *params, char **ret,
                                 size_t *ret_len);

struct proto_cert_accepted {
	char *certificate_id;
	char *certificate_pem;
	char *ownership_token; /* secret: never log */
};

struct proto_devconf_entry {
	char *key;
	char *value;
};

struct proto_register_accepted {
	char *thing_name;
	struct proto_devconf_entry *device_configuration;
	size_t n_device_configuration;
};

struct proto_rejection {
	int status_code;
	char *error_code;    /* may be NULL */
	char *error_message; /* may be NULL */
};

/*
 * Parsers. Return 0, -EBADMSG (not JSON, wrong types, missing fields, bad id),
 * -EMSGSIZE (payload or a field over its limit). Outputs are written on success only.
 * The payload need not be NUL-terminated; it must be exactly one JSON object (trailing
 * bytes other than whitespace are -EBADMSG). Strings holding a NUL are -EBADMSG.
 *
 * cert_accepted: all three strings required; certificateId is 64 hex characters,
 * certificatePem starts with "-----BEGIN CERTIFICATE-----".
 * register_accepted: thingName is REQUIRED (1-128 of [a-zA-Z0-9:_-], AWS's thing name
 * syntax): fleetprovd names the identity after it, so a template without a Thing resource
 * is unusable and is reported as -EBADMSG. deviceConfiguration is optional; its values
 * are strings, or numbers/booleans kept in their JSON spelling ("42", "true"); null,
 * arrays and nested objects are -EBADMSG.
 * rejection: statusCode (integer 0-999) is required; errorCode and errorMessage are
 * optional, cut to their limits on a character boundary (not an error), with control
 * characters replaced by spaces so they are safe to log.
 */
int proto_parse_cert_accepted(const void *payload, size_t len, struct proto_cert_accepted *ret);
int proto_parse_register_accepted(const void *payload, size_t len,
                                  struct proto_register_accepted *ret);
int proto_parse_rejection(const void *payload, size_t len, struct proto_rejection *ret);

void proto_cert_accepted_clear(struct proto_cert_accepted *r); /* erases the token */
void proto_register_accepted_clear(struct proto_register_accepted *r);
void proto_rejection_clear(struct proto_rejection *r);

/* How a rejection should be handled (design.md decision 7). */
enum proto_error_class {
	PROTO_ERROR_TRANSIENT,    /* 429, 5xx, Throttling*: backoff and retry */
	PROTO_ERROR_RESTART_FLOW, /* ownership token invalid or expired: new CSR */
	PROTO_ERROR_PERMANENT,    /* 400, 403, 404, ...: log once, retry slowly */
};
/*
 * 429 and 5xx, or an errorCode starting Throttling, ServiceUnavailable or InternalFailure
 * whatever the status: TRANSIENT. RegisterThing 4xx whose errorCode or errorMessage names the
 * ownership token: RESTART_FLOW. Other 4xx: PERMANENT. Any other status (not a documented
 * rejection): TRANSIENT.
 */
enum proto_error_class proto_rejection_classify(enum proto_op op, const struct proto_rejection *r);
/* AWS throttled the request: 429, or an errorCode starting Throttling (sent with 400). */
bool proto_rejection_is_throttle(const struct proto_rejection *r);
/* A one-sentence likely fix for an admin, never NULL. */
const char *proto_rejection_hint(enum proto_op op, const struct proto_rejection *r);
