/* Capped exponential backoff with full jitter (design.md decision 7). */
#include <sys/random.h>
#include <time.h>

#include "backoff.h"

void backoff_init(struct backoff *b, uint64_t base_usec, uint64_t cap_usec)
{
	*b = (struct backoff){.base_usec = base_usec, .cap_usec = cap_usec, .attempt = 0};
}

uint64_t backoff_ceiling(const struct backoff *b)
{
	uint64_t ceiling = b->base_usec;

	/* Doubling stops at the cap, and before it would wrap around. */
	for (unsigned i = 0; i < b->attempt && ceiling < b->cap_usec; i++) {
		if (ceiling > UINT64_MAX / 2)
			return b->cap_usec;
		ceiling *= 2;
	}
	return ceiling < b->cap_usec ? ceiling : b->cap_usec;
}

uint64_t backoff_next(struct backoff *b, uint64_t random)
{
	uint64_t ceiling = backoff_ceiling(b);

	if (b->attempt < UINT32_MAX)
		b->attempt++;
	if (ceiling == UINT64_MAX)
		return random;
	return random % (ceiling + 1);
}

void backoff_reset(struct backoff *b)
{
	b->attempt = 0;
}

uint64_t random_u64(void)
{
	uint64_t v;
	struct timespec ts;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) == (ssize_t)sizeof(v))
		return v;
	/* No entropy yet this early in boot: the clock still decorrelates devices a little. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_nsec * 6364136223846793005ULL + (uint64_t)ts.tv_sec;
}
