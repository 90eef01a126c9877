/*
 * The three Fleet Provisioning response parsers on arbitrary bytes: they face whatever the
 * network delivers on the accepted and rejected topics. Besides memory safety, every
 * documented promise of protocol.h is checked: the return codes, "outputs written on success
 * only", the field limits, and classify/hint on every parsed rejection.
 */
#include <ctype.h>
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "protocol.h"

/* Fills an output struct before a call so a write on failure is visible afterwards. */
#define SENTINEL 0xA5

static int parse_result_valid(int r)
{
	return r == 0 || r == -EBADMSG || r == -EMSGSIZE || r == -ENOMEM;
}

static int untouched(const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i] != SENTINEL)
			return 0;
	return 1;
}

static int bounded(const char *s, size_t max)
{
	return s && strnlen(s, max + 1) <= max;
}

static void check_after_parse(int r, size_t size, const void *out, size_t out_size)
{
	FUZZ_CHECK(parse_result_valid(r));
	if (size > PROTO_PAYLOAD_MAX)
		FUZZ_CHECK(r == -EMSGSIZE);
	if (r < 0)
		FUZZ_CHECK(untouched(out, out_size));
}

static void fuzz_cert_accepted(const uint8_t *data, size_t size)
{
	struct proto_cert_accepted a;
	int r;

	memset(&a, SENTINEL, sizeof(a));
	r = proto_parse_cert_accepted(data, size, &a);
	check_after_parse(r, size, &a, sizeof(a));
	if (r < 0)
		return;

	FUZZ_CHECK(a.certificate_id && strlen(a.certificate_id) == PROTO_CERT_ID_LEN);
	for (const char *p = a.certificate_id; *p; p++)
		FUZZ_CHECK(isxdigit((unsigned char)*p));
	FUZZ_CHECK(bounded(a.certificate_pem, PROTO_CERT_PEM_MAX));
	FUZZ_CHECK(bounded(a.ownership_token, PROTO_TOKEN_MAX));

	proto_cert_accepted_clear(&a);
	FUZZ_CHECK(!a.certificate_id && !a.certificate_pem && !a.ownership_token);
}

static void fuzz_register_accepted(const uint8_t *data, size_t size)
{
	struct proto_register_accepted a;
	int r;

	memset(&a, SENTINEL, sizeof(a));
	r = proto_parse_register_accepted(data, size, &a);
	check_after_parse(r, size, &a, sizeof(a));
	if (r < 0)
		return;

	/* thingName may be absent (spec §1.5: UNCONFIRMED), but never over its limit. */
	FUZZ_CHECK(!a.thing_name || bounded(a.thing_name, PROTO_THING_NAME_MAX));
	FUZZ_CHECK(a.n_device_configuration <= PROTO_DEVCONF_ENTRIES_MAX);
	FUZZ_CHECK(a.n_device_configuration == 0 || a.device_configuration);
	for (size_t i = 0; i < a.n_device_configuration; i++) {
		FUZZ_CHECK(bounded(a.device_configuration[i].key, PROTO_DEVCONF_KEY_MAX));
		FUZZ_CHECK(bounded(a.device_configuration[i].value, PROTO_DEVCONF_VALUE_MAX));
	}

	proto_register_accepted_clear(&a);
	FUZZ_CHECK(!a.thing_name && !a.device_configuration && a.n_device_configuration == 0);
}

static void check_rejection_handling(const struct proto_rejection *rej)
{
	for (int op = 0; op < _PROTO_OP_MAX; op++) {
		enum proto_error_class c = proto_rejection_classify((enum proto_op)op, rej);
		const char *hint = proto_rejection_hint((enum proto_op)op, rej);

		FUZZ_CHECK(c == PROTO_ERROR_TRANSIENT || c == PROTO_ERROR_RESTART_FLOW ||
		           c == PROTO_ERROR_PERMANENT);
		/* strlen makes ASan read the whole hint: it must be a live, terminated string. */
		FUZZ_CHECK(hint && strlen(hint) > 0);
	}
}

static void fuzz_rejection(const uint8_t *data, size_t size)
{
	struct proto_rejection rej;
	int r;

	memset(&rej, SENTINEL, sizeof(rej));
	r = proto_parse_rejection(data, size, &rej);
	check_after_parse(r, size, &rej, sizeof(rej));
	if (r < 0)
		return;

	FUZZ_CHECK(!rej.error_code || bounded(rej.error_code, PROTO_ERROR_CODE_MAX));
	FUZZ_CHECK(!rej.error_message || bounded(rej.error_message, PROTO_ERROR_MESSAGE_MAX));
	check_rejection_handling(&rej);

	proto_rejection_clear(&rej);
	FUZZ_CHECK(!rej.error_code && !rej.error_message);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The raw bytes, not a NUL-terminated copy: a payload from the broker has no NUL. */
	fuzz_cert_accepted(data, size);
	fuzz_register_accepted(data, size);
	fuzz_rejection(data, size);
	return 0;
}
