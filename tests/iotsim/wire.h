/*
 * The MQTT surface of the Fleet Provisioning API (spec/aws-fleet-provisioning.md §1):
 * operations, topic names and the shape of a /rejected payload.
 */
#pragma once

#include <errno.h>
#include <json-c/json.h>

#include "macro.h"

enum api_op {
	API_CSR,      /* CreateCertificateFromCsr */
	API_CREATE,   /* CreateKeysAndCertificate */
	API_REGISTER, /* RegisterThing */
	_API_OP_MAX,
	_API_OP_INVALID = -EINVAL,
};

enum wire_kind {
	WIRE_REQUEST,
	WIRE_ACCEPTED,
	WIRE_REJECTED,
};

enum wire_format {
	WIRE_JSON,
	WIRE_CBOR,
};

/* Template names are 1-36 characters of [0-9A-Za-z_-] (spec §1.2, CreateProvisioningTemplate). */
#define TEMPLATE_NAME_MAX 36

/* PUBLISH payloads above 128 KiB are refused by AWS IoT (spec §3.2). */
#define WIRE_PAYLOAD_MAX (128 * 1024)

struct wire_topic {
	enum api_op op;
	enum wire_kind kind;
	enum wire_format format;
	char template_name[TEMPLATE_NAME_MAX + 1]; /* RegisterThing only */
};

/* errorCode strings the simulator sends (AWS publishes no complete list, spec §1.6). */
#define ERR_INVALID_REQUEST "InvalidRequestException"
#define ERR_INVALID_TOKEN   "InvalidCertificateOwnershipToken"
#define ERR_NOT_FOUND       "ResourceNotFoundException"
#define ERR_ACCESS_DENIED   "AccessDeniedException"
#define ERR_CONFLICT        "ResourceConflictsException"
#define ERR_TOO_LARGE       "RequestEntityTooLargeException"
#define ERR_THROTTLED       "ThrottlingException"
#define ERR_INTERNAL        "InternalFailureException"

struct wire_error {
	int status;
	char code[64];
	char message[512];
};

/* Classify an MQTT topic; -EINVAL when it is not one of the API's topics. */
int wire_parse_topic(const char *topic, struct wire_topic *ret);

/* True for 1-36 characters of [0-9A-Za-z_-]. */
int wire_template_name_valid(const char *name);

/* "CreateCertificateFromCsr", ... */
const char *api_op_name(enum api_op op);

/* "csr", "create", "register": the names fault specs use. */
const char *api_op_short(enum api_op op);
enum api_op api_op_from_short(const char *s);

/* Fill e; message is printf-style. */
void wire_error_set(struct wire_error *e, int status, const char *code, const char *fmt, ...)
    _printf_(4, 5);

/* {"statusCode": int, "errorCode": str, "errorMessage": str} as a new object. */
json_object *wire_rejection(const struct wire_error *e);
