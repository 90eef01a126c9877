/*
 * The state directory (design.md decision 5):
 *
 *   <state_dir>/pending/            in-flight attempt (0700)
 *       device.key                  private key, 0640, written before any network traffic
 *       request.csr                 the CSR sent (reused on restart-flow: same key)
 *       certificate.json            certificateId, certificatePem, ownership token, issuedAt (0600)
 *       registration.json           RegisterThing's accepted reply, once received
 *       attempt.json                attempt counter, start time and last error (for status)
 *   <state_dir>/gen-<certId>/       one committed identity (0750)
 *       device.key (0640) device.crt identity.json identity.env (0644)
 *   <state_dir>/current -> gen-<certId>
 *
 * Every file: temp file in the same directory created with its final mode, write, fsync,
 * rename, fsync the directory. A reader never sees a half-written identity.
 * identity.json is written last in a generation and records the size and mtime of
 * device.key and device.crt, so the boot fast path can check the files without parsing PEM.
 * It also records whether a connection with the identity has succeeded ("verified"): a
 * commit writes false, store_mark_verified() rewrites it true once the verify connect worked,
 * so a crash or a refusal between the two is seen at the next boot (design.md decision 1).
 * Non-logging.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

#define STORE_PENDING_DIR       "pending"
#define STORE_CURRENT_LINK      "current"
#define STORE_GEN_PREFIX        "gen-"
#define STORE_KEY_FILE          "device.key"
#define STORE_CERT_FILE         "device.crt"
#define STORE_IDENTITY_JSON     "identity.json"
#define STORE_IDENTITY_ENV      "identity.env"
#define STORE_CSR_FILE          "request.csr"
#define STORE_CERTIFICATE_JSON  "certificate.json"
#define STORE_REGISTRATION_JSON "registration.json"
#define STORE_ATTEMPT_JSON      "attempt.json"

#define STORE_MODE_KEY         0640 /* group fleetprovd: consumer services join the group */
#define STORE_MODE_SECRET      0600 /* ownership token */
#define STORE_MODE_PUBLIC      0644
#define STORE_MODE_GEN_DIR     0750
#define STORE_MODE_PENDING_DIR 0700

struct store;

/* Open (creating it 0750 if missing) the state directory. */
int store_open(const char *state_dir, struct store **ret);
struct store *store_free(struct store *s);
static inline void store_freep(struct store **s)
{
	store_free(*s);
}
int store_dirfd(const struct store *s);
const char *store_path(const struct store *s);

/* Atomically replace dirfd/name with data, creating it with mode (umask does not apply). */
int store_write_atomic(int dirfd, const char *name, const void *data, size_t len, unsigned mode);
/* Read a whole regular file (O_NOFOLLOW) of at most max bytes; ret is NUL-terminated. */
int store_read_file(int dirfd, const char *name, size_t max, char **ret, size_t *ret_len);

struct store_pending {
	char *key_pem; /* secret */
	char *csr_pem;
	/* Set once CreateCertificateFromCsr was accepted (else NULL / 0). */
	char *certificate_id;
	char *certificate_pem;
	char *ownership_token;   /* secret */
	uint64_t issued_at_usec; /* CLOCK_REALTIME */
	/* Set once RegisterThing was accepted: commit without asking the cloud again. */
	bool registered;
	struct proto_register_accepted registration;
	/* Bookkeeping for `fleetprovd status`. */
	uint64_t started_at_usec;
	unsigned attempt;
	char *last_error;
};

/* Load the pending attempt; -ENOENT when there is none (or it holds no key). */
int store_pending_load(struct store *s, struct store_pending *ret);
/* Start an attempt: key (0640) then CSR, both durable before returning. */
int store_pending_save_key(struct store *s, const char *key_pem, const char *csr_pem);
/* Replace the CSR (restart-flow keeps the key). */
int store_pending_save_csr(struct store *s, const char *csr_pem);
int store_pending_save_certificate(struct store *s, const struct proto_cert_accepted *c,
                                   uint64_t issued_at_usec);
/* Forget certificate and token (expired or rejected), keep key and CSR. */
int store_pending_drop_certificate(struct store *s);
int store_pending_save_registration(struct store *s, const struct proto_register_accepted *r);
int store_pending_save_attempt(struct store *s, uint64_t started_at_usec, unsigned attempt,
                               const char *last_error);
int store_pending_remove(struct store *s);
void store_pending_clear(struct store_pending *p);

struct store_identity {
	const char *thing_name;
	const char *certificate_id;
	const char *certificate_pem;
	const char *key_pem;
	const char *endpoint;
	uint16_t port;
	const char *ca_file;
	const char *template_name;
	const struct proto_devconf_entry *device_configuration;
	size_t n_device_configuration;
	uint64_t provisioned_at_usec;
	int64_t not_after; /* certificate notAfter, seconds since the epoch */
};

/*
 * Write gen-<certId>/ (key, certificate, identity.env, identity.json last), fsync it,
 * point current at it atomically, fsync the state dir, then remove pending/ and
 * generations other than the new one.
 */
int store_commit(struct store *s, const struct store_identity *id);
/*
 * Record in current/identity.json that a connection with the identity certificate_id
 * succeeded ("verified": true, "verifiedAt"), atomically. -ESTALE when current/ holds another
 * identity, -ENOENT when there is none.
 */
int store_mark_verified(struct store *s, const char *certificate_id, uint64_t verified_at_usec);
