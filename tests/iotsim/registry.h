/*
 * What the simulated AWS account holds: things, certificates (with status, attached things
 * and policies, and their ownership token's hash and expiry) and policies. Kept in memory as
 * JSON records and mirrored to DIR/registry/<kind>/<key>.json, each written atomically, so
 * that tests and people can read the outcome.
 */
#pragma once

#include <json-c/json.h>
#include <stdint.h>

enum registry_kind {
	REGISTRY_THINGS,
	REGISTRY_CERTIFICATES,
	REGISTRY_POLICIES,
	_REGISTRY_KIND_MAX,
};

#define CERT_STATUS_PENDING  "PENDING_ACTIVATION"
#define CERT_STATUS_ACTIVE   "ACTIVE"
#define CERT_STATUS_INACTIVE "INACTIVE"

struct registry;

/* Open (creating) dir/registry and load what an earlier run left there. */
int registry_open(const char *dir, struct registry **ret);
struct registry *registry_free(struct registry *r);

/* The directory fd of dir/registry, for files next to the records (stats). */
int registry_dirfd(struct registry *r);

/* The record of key, borrowed, or NULL. */
json_object *registry_get(struct registry *r, enum registry_kind kind, const char *key);

/* Insert or replace a record (takes the reference) and write it out. */
int registry_put(struct registry *r, enum registry_kind kind, const char *key, json_object *rec);

/* Write out a record the caller changed in place. */
int registry_save(struct registry *r, enum registry_kind kind, const char *key);

/*
 * Add a PENDING_ACTIVATION certificate whose ownership token is token (only its SHA-256 is
 * kept) and which expires at token_expires_ms (wall clock).
 */
int registry_add_certificate(struct registry *r, const char *id, const char *pem, const char *token,
                             int64_t token_expires_ms, const char *client_id, const char *api);

/*
 * The certificate a token belongs to: 0 and *ret_id (borrowed), -ENOENT for a token never
 * issued (or whose certificate is gone), -ETIMEDOUT for an expired one.
 */
int registry_lookup_token(struct registry *r, const char *token, int64_t now_ms,
                          const char **ret_id);

/*
 * Delete certificates still PENDING_ACTIVATION whose token has expired, as AWS does
 * (spec §1.3). Returns how many were deleted.
 */
int registry_sweep(struct registry *r, int64_t now_ms);
