/*
 * Shared by the libFuzzer harnesses: the entry points (declared because the build demands a
 * prototype for every non-static function), a contract check that survives NDEBUG, and a
 * NUL-terminated copy of the input for the text APIs.
 */
#pragma once

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A broken contract is a finding like a crash: abort so libFuzzer saves the input. */
#define FUZZ_CHECK(expr)                                                                           \
	do {                                                                                       \
		if (!(expr)) {                                                                     \
			fprintf(stderr, "%s:%d: contract violated: %s\n", __FILE__, __LINE__,      \
			        #expr);                                                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* The input as a C string; an embedded NUL simply ends the text early. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (!s)
		abort();
	if (size > 0)
		memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

/* true if the text written into a caller's buffer of size n is NUL-terminated within it. */
static inline int fuzz_terminated(const char *buf, size_t n)
{
	return n == 0 || memchr(buf, '\0', n) != NULL;
}
