/*
 * The pre-provisioning hook (spec §2.5), played by a local executable: it gets the hook
 * JSON on stdin and prints {"allowProvisioning": bool, "parameterOverrides": {...}}.
 * It runs beside the broker without blocking it: non-blocking pipes, polled from the
 * broker's tick, killed at AWS's 5 s deadline.
 */
#pragma once

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

/* AWS fails provisioning when the hook takes longer than 5 seconds (spec §2.5). */
#define HOOK_TIMEOUT_USEC (5 * USEC_PER_SEC)
/* A hook answer is a few hundred bytes; more is a broken hook. */
#define HOOK_OUTPUT_MAX (64 * 1024)

struct hook;

/* Start exe with input on its stdin. */
int hook_start(const char *exe, const char *input, size_t len, uint64_t now_usec,
               struct hook **ret);

/* Move data and check for exit or the deadline: 0 while running, 1 once finished. */
int hook_poll(struct hook *h, uint64_t now_usec);

/*
 * The verdict of a finished hook: 0 when provisioning is allowed, with *ret_overrides (a
 * new object of string values, or NULL); -EACCES with the reason in errbuf otherwise.
 */
int hook_result(struct hook *h, json_object **ret_overrides, char *errbuf, size_t errsize);

/* Kill and reap a hook still running; free everything. */
struct hook *hook_free(struct hook *h);
