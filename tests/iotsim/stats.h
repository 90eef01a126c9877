/*
 * Request counters, mirrored to DIR/registry/stats.json:
 *   {"requests": {api: n}, "accepted": {api: n}, "rejected": {api: n}, "dropped": {api: n},
 *    "errorCodes": {code: n}, "statusCodes": {"429": n},
 *    "clients": {clientId: {api: n, "accepted": n, "rejected": n}},
 *    "connections": {"claim": n, "device": n, "refused": n}}
 */
#pragma once

#include "wire.h"

struct stats;

/* dirfd is borrowed; stats.json is written there. */
int stats_new(int dirfd, struct stats **ret);
struct stats *stats_free(struct stats *s);

void stats_request(struct stats *s, enum api_op op, const char *client_id);

/* status 200 counts as accepted; anything else as rejected with error_code. */
void stats_response(struct stats *s, enum api_op op, const char *client_id, int status,
                    const char *error_code);

/* A response that was computed but never sent (fault injection). */
void stats_dropped(struct stats *s, enum api_op op);

/* what: "claim", "device" or "refused". */
void stats_connection(struct stats *s, const char *what);

/* Write stats.json if anything changed since the last flush. */
int stats_flush(struct stats *s);
