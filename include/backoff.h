/*
 * Retry delays (design.md decision 7): exponential with full jitter, so a site that reboots
 * at once spreads its retries out instead of hammering the service in waves.
 * Pure: the caller supplies randomness, which keeps it testable.
 */
#pragma once

#include <stdint.h>

struct backoff {
	uint64_t base_usec;
	uint64_t cap_usec;
	unsigned attempt;
};

void backoff_init(struct backoff *b, uint64_t base_usec, uint64_t cap_usec);
/* Delay before the next retry: uniform in [0, min(cap, base * 2^attempt)], then attempt++. */
uint64_t backoff_next(struct backoff *b, uint64_t random);
/* The upper bound backoff_next would draw from now (for STATUS= texts). */
uint64_t backoff_ceiling(const struct backoff *b);
void backoff_reset(struct backoff *b);
/* A uniformly random 64-bit value from getrandom(); never fails (falls back to time). */
uint64_t random_u64(void);
