/*
 * Cost of key generation + CSR per key type, as fleetprovd does it at first boot.
 * Prints one line per type: the median, min and max of N runs in milliseconds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "keygen.h"
#include "macro.h"
#include "openssl-util.h"

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int compare_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static int time_one(enum key_type type, double *ret_ms)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	_cleanup_free_ char *csr = NULL;
	double start = now_ms();
	int r;

	r = keygen_generate(type, &key);
	if (r < 0)
		return r;
	r = keygen_build_csr(key, "CN=bench", &csr);
	if (r < 0)
		return r;
	*ret_ms = now_ms() - start;
	return 0;
}

int main(int argc, char **argv)
{
	static const enum key_type types[] = {KEY_EC_P256, KEY_EC_P384, KEY_RSA_2048, KEY_RSA_3072};
	int runs = argc > 1 ? atoi(argv[1]) : 15;
	double *ms;

	if (runs < 1 || !(ms = calloc((size_t)runs, sizeof(*ms))))
		return 2;
	for (size_t t = 0; t < ARRAY_SIZE(types); t++) {
		for (int i = 0; i < runs; i++)
			if (time_one(types[t], &ms[i]) < 0) {
				fprintf(stderr, "keygen %s failed\n", key_type_to_string(types[t]));
				return 1;
			}
		qsort(ms, (size_t)runs, sizeof(*ms), compare_double);
		printf("keygen %-9s median %8.2f ms  min %8.2f  max %8.2f  (%d runs)\n",
		       key_type_to_string(types[t]), ms[runs / 2], ms[0], ms[runs - 1], runs);
	}
	free(ms);
	return 0;
}
