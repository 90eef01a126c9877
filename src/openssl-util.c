/* OpenSSL error queue handling shared by keygen and credentials. */
#include <errno.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "openssl-util.h"

/* One debug line: a few queued errors fit, a longer queue is cut rather than spread over lines. */
#define OSSL_ERROR_LINE_MAX 512

int ossl_error(const char *what)
{
	char line[OSSL_ERROR_LINE_MAX] = "", one[256];
	size_t used = 0;
	unsigned long e;
	int r = -EIO;

	/* Drain everything, even past what fits, so a stale error never shows up later. */
	while ((e = ERR_get_error()) != 0) {
		if (ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE)
			r = -ENOMEM;
		ERR_error_string_n(e, one, sizeof(one));
		if (used < sizeof(line) - 1) {
			int n = snprintf(line + used, sizeof(line) - used, "%s%s", used ? "; " : "",
			                 one);
			used = n < 0 ? sizeof(line) : used + (size_t)n;
		}
	}
	log_debug("%s: %s", what, line[0] ? line : "no OpenSSL error queued");
	return r;
}
