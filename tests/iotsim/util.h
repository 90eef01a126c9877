/* Small helpers shared by the simulator's modules: clocks, hex, JSON and atomic file writes. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put)

/* CLOCK_MONOTONIC in microseconds: deadlines, delays, token buckets. */
uint64_t util_now_usec(void);

/* Wall clock in milliseconds since the epoch: what the registry records. */
int64_t util_realtime_msec(void);

/* "2026-11-02T10:11:12.345Z" into buf (at least UTIL_TIME_LEN bytes). */
#define UTIL_TIME_LEN 32
void util_format_time(int64_t msec, char *buf, size_t size);

/* Lowercase hex of n bytes into out (2n + 1 bytes). */
void util_hex(const unsigned char *in, size_t n, char *out);

/* Write name in dirfd atomically (temp file in the same directory, then rename). */
int util_write_atomic(int dirfd, const char *name, const char *data, size_t len);

/* Same, for a JSON value, pretty-printed so people can read it. */
int util_write_json(int dirfd, const char *name, json_object *obj);

/*
 * Parse exactly len bytes as one strict JSON value (valid UTF-8, nothing after it).
 * Returns the value or NULL.
 */
json_object *util_json_parse(const char *buf, size_t len);

/* Serialise as compact JSON without escaping '/', as a heap string. */
char *util_json_dump(json_object *obj, size_t *ret_len);

/* obj[key] when it is a string, else NULL (borrowed). */
const char *util_json_get_string(json_object *obj, const char *key);

/* Add s to the JSON array arr unless an equal string is already there. */
int util_json_array_add_unique(json_object *arr, const char *s);

/* Case-insensitive equality that accepts NULL. */
bool util_streq_ci(const char *a, const char *b);

/* s, or fallback when s is NULL. */
static inline const char *str_or(const char *s, const char *fallback)
{
	return s ? s : fallback;
}
