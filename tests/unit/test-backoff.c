/*
 * Unit tests for backoff: full-jitter bounds against an independently computed ceiling,
 * the cap, reset, and no overflow however many attempts or however large the cap.
 * Randomness comes from a fixed xorshift sequence, so every run checks the same draws.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backoff.h"
#include "macro.h"

/* A deterministic stand-in for random_u64(): xorshift64, never 0 for a non-zero seed. */
static uint64_t next_random(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* min(cap, base * 2^attempt) computed without ever overflowing. */
static uint64_t expected_ceiling(uint64_t base, uint64_t cap, unsigned attempt)
{
	uint64_t c = base;

	for (unsigned i = 0; i < attempt; i++) {
		if (c >= cap || c > UINT64_MAX / 2)
			return cap;
		c *= 2;
	}
	return c < cap ? c : cap;
}

static void test_first_delays_double(void **state)
{
	struct backoff b;

	backoff_init(&b, USEC_PER_SEC, 300 * USEC_PER_SEC);
	/* Asking for exactly the ceiling returns the ceiling: the interval is closed. */
	assert_int_equal(backoff_ceiling(&b), 1 * USEC_PER_SEC);
	assert_int_equal(backoff_next(&b, 1 * USEC_PER_SEC), 1 * USEC_PER_SEC);
	assert_int_equal(backoff_ceiling(&b), 2 * USEC_PER_SEC);
	assert_int_equal(backoff_next(&b, 2 * USEC_PER_SEC), 2 * USEC_PER_SEC);
	assert_int_equal(backoff_ceiling(&b), 4 * USEC_PER_SEC);
	assert_int_equal(backoff_next(&b, 0), 0);
	assert_int_equal(backoff_ceiling(&b), 8 * USEC_PER_SEC);
	assert_int_equal(b.attempt, 3);
}

static void test_full_jitter_bounds(void **state)
{
	const uint64_t base = 250 * USEC_PER_MSEC, cap = 300 * USEC_PER_SEC;
	uint64_t rnd = 0x9e3779b97f4a7c15u;
	struct backoff b;

	backoff_init(&b, base, cap);
	for (unsigned attempt = 0; attempt < 200; attempt++) {
		uint64_t ceiling = expected_ceiling(base, cap, attempt);
		uint64_t delay;

		assert_int_equal(backoff_ceiling(&b), ceiling);
		delay = backoff_next(&b, next_random(&rnd));
		assert_true(delay <= ceiling);
		assert_true(delay <= cap);
	}
}

/* Full jitter means the whole interval is used: the mean of many draws is near the middle. */
static void test_jitter_spreads_over_interval(void **state)
{
	const uint64_t base = 1000, cap = 1000;
	uint64_t rnd = 12345, sum = 0, lo = UINT64_MAX, hi = 0;
	struct backoff b;

	backoff_init(&b, base, cap);
	for (unsigned i = 0; i < 10000; i++) {
		uint64_t d = backoff_next(&b, next_random(&rnd));
		sum += d;
		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
	}
	assert_true(lo < 50);
	assert_true(hi > 950);
	assert_true(sum / 10000 > 450 && sum / 10000 < 550);
}

static void test_cap_respected(void **state)
{
	uint64_t rnd = 42;
	struct backoff b;

	backoff_init(&b, 3, 1000);
	for (unsigned i = 0; i < 1000; i++)
		assert_true(backoff_next(&b, next_random(&rnd)) <= 1000);
	assert_int_equal(backoff_ceiling(&b), 1000);
	/* A draw of the cap itself is allowed, one above it never comes back. */
	assert_int_equal(backoff_next(&b, 1000), 1000);
	assert_int_equal(backoff_next(&b, 1001), 0);
}

static void test_reset(void **state)
{
	struct backoff b;

	backoff_init(&b, 100, 100000);
	for (unsigned i = 0; i < 10; i++)
		(void)backoff_next(&b, 0);
	assert_int_equal(backoff_ceiling(&b), 100000);
	backoff_reset(&b);
	assert_int_equal(b.attempt, 0);
	assert_int_equal(backoff_ceiling(&b), 100);
	assert_int_equal(backoff_next(&b, 100), 100);
	assert_int_equal(backoff_ceiling(&b), 200);
}

static void test_huge_attempt_counts(void **state)
{
	uint64_t rnd = 7;
	struct backoff b;

	backoff_init(&b, USEC_PER_SEC, 300 * USEC_PER_SEC);
	b.attempt = UINT32_MAX - 2;
	for (unsigned i = 0; i < 10; i++) {
		assert_int_equal(backoff_ceiling(&b), 300 * USEC_PER_SEC);
		assert_true(backoff_next(&b, next_random(&rnd)) <= 300 * USEC_PER_SEC);
	}
	/* The counter saturates instead of wrapping back to the shortest delay. */
	assert_int_equal(b.attempt, UINT32_MAX);
	assert_int_equal(backoff_ceiling(&b), 300 * USEC_PER_SEC);
}

/* Doubling near the top of uint64_t must saturate at the cap, never wrap to a small value. */
static void test_no_overflow_with_huge_cap(void **state)
{
	const uint64_t base = 3;
	uint64_t previous = 0, rnd = 99;
	struct backoff b;

	backoff_init(&b, base, UINT64_MAX);
	for (unsigned attempt = 0; attempt < 130; attempt++) {
		uint64_t ceiling = backoff_ceiling(&b);

		assert_true(ceiling >= previous);
		assert_true(ceiling >= base);
		previous = ceiling;
		(void)backoff_next(&b, next_random(&rnd));
	}
	assert_true(previous > UINT64_MAX / 4);
}

static void test_zero_base(void **state)
{
	struct backoff b;

	backoff_init(&b, 0, 1000);
	for (unsigned i = 0; i < 70; i++)
		assert_int_equal(backoff_next(&b, UINT64_MAX), 0);
}

static void test_random_u64_varies(void **state)
{
	uint64_t a = random_u64(), c = random_u64(), d = random_u64();

	/* Three equal 64-bit draws in a row would mean no randomness at all. */
	assert_false(a == c && c == d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_first_delays_double),
	    cmocka_unit_test(test_full_jitter_bounds),
	    cmocka_unit_test(test_jitter_spreads_over_interval),
	    cmocka_unit_test(test_cap_respected),
	    cmocka_unit_test(test_reset),
	    cmocka_unit_test(test_huge_attempt_counts),
	    cmocka_unit_test(test_no_overflow_with_huge_cap),
	    cmocka_unit_test(test_zero_base),
	    cmocka_unit_test(test_random_u64_varies),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
