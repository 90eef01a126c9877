/*
 * Are the operational credentials under the state directory usable?
 * cred_check is the boot fast path: it reads current/identity.json and compares its
 * manifest (size and mtime of key and certificate) and expiry, without parsing PEM.
 * cred_verify_pair is the deep check used before commit, by `check`, and when the
 * manifest does not match. Non-logging.
 */
#pragma once

#include <stdint.h>

enum cred_state {
	CRED_MISSING, /* nothing committed */
	CRED_VALID,
	CRED_INVALID, /* committed but broken, mismatched or expired: provision again */
	/*
	 * Committed and whole, but no connection with it has succeeded yet (identity.json
	 * "verified" is not true): with verify = true it must be proven before READY=1.
	 */
	CRED_UNVERIFIED,
	_CRED_STATE_MAX,
};
const char *cred_state_to_string(enum cred_state s);

struct cred_info {
	char *thing_name;
	char *certificate_id;
	int64_t not_after;
	uint64_t provisioned_at_usec;
	const char *reason; /* static text when INVALID or UNVERIFIED, else NULL */
};
void cred_info_clear(struct cred_info *i);

/*
 * Fast check of current/. now_sec is the wall clock; pass 0 when the clock is not trusted
 * (expiry is then not judged). When the manifest does not match, falls back to the deep
 * check of the files. An identity that would be VALID but was never verified is UNVERIFIED;
 * whether that is good enough depends on the configuration, which the caller knows.
 * ret_info may be NULL.
 */
int cred_check(int state_dirfd, int64_t now_sec, enum cred_state *ret_state,
               struct cred_info *ret_info);

/*
 * Deep check: both PEMs parse, the key belongs to the certificate, and now_sec (if not 0)
 * is inside the validity window. Returns 0, -EBADMSG (does not parse), -EKEYREJECTED
 * (key does not match), -EKEYEXPIRED (expired or not yet valid).
 */
int cred_verify_pair(const char *key_pem, const char *cert_pem, int64_t now_sec,
                     int64_t *ret_not_before, int64_t *ret_not_after);

/* notBefore/notAfter of a PEM certificate file (for the clock check and `check`). */
int cred_certificate_file_validity(const char *path, int64_t *ret_not_before,
                                   int64_t *ret_not_after);
