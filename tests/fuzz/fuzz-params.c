/*
 * Template parameters on arbitrary text: "${Name}" expansion of client_id and the CSR
 * subject, and the two sources whose text the daemon does not control, a literal value and
 * a file's first line (a DMI serial number can hold anything). The file is created once and
 * rewritten for each input, so every run reads exactly the bytes libFuzzer chose.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "macro.h"
#include "params.h"

/* Error buffers as callers size them, and a tiny one to exercise truncation. */
#define ERRBUF_SIZE 256
#define ERRBUF_TINY 8

static char value_path[] = "/tmp/fleetprovd-fuzz-params-XXXXXX";
static int value_fd = -1;

static struct param_value fixed_values[] = {
    {(char *)"SerialNumber", (char *)"GW-00042"},
    {(char *)"HardwareRev", (char *)"B2"},
    {(char *)"Empty", (char *)""},
    {(char *)"Dollar", (char *)"$${x}"},
};
static const struct param_list fixed_params = {fixed_values, ARRAY_SIZE(fixed_values)};

static void remove_value_file(void)
{
	unlink(value_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	value_fd = mkostemp(value_path, O_CLOEXEC);
	if (value_fd < 0) {
		perror("mkostemp");
		abort();
	}
	atexit(remove_value_file);
	return 0;
}

static void fuzz_expand(const char *text, size_t errsize)
{
	char errbuf[ERRBUF_SIZE];
	_cleanup_free_ char *out = NULL;
	int r;

	memset(errbuf, 'x', sizeof(errbuf));
	r = params_expand(text, &fixed_params, &out, errbuf, errsize);
	if (r < 0) {
		FUZZ_CHECK(!out);
		FUZZ_CHECK(fuzz_terminated(errbuf, errsize));
		return;
	}
	FUZZ_CHECK(out);
}

static bool is_trim_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* params.h: a resolved value ends up in a thing name or client id, so no control characters. */
static bool has_control(const char *v)
{
	for (const unsigned char *c = (const unsigned char *)v; *c; c++)
		if (*c < 0x20 || *c == 0x7f)
			return true;
	return false;
}

static void check_resolved(int r, char *value, const char *errbuf)
{
	size_t n;

	if (r < 0) {
		FUZZ_CHECK(!value);
		FUZZ_CHECK(fuzz_terminated(errbuf, ERRBUF_SIZE));
		return;
	}
	FUZZ_CHECK(value);
	n = strlen(value);
	FUZZ_CHECK(n <= PARAM_VALUE_MAX);
	FUZZ_CHECK(!has_control(value));
	FUZZ_CHECK(n == 0 || (!is_trim_space(value[0]) && !is_trim_space(value[n - 1])));
	free(value);
}

static void fuzz_resolve_file(const uint8_t *data, size_t size)
{
	struct config_param p = {(char *)"Serial", PARAM_SOURCE_FILE, value_path, 0};
	char errbuf[ERRBUF_SIZE], *value = NULL;

	FUZZ_CHECK(pwrite(value_fd, data, size, 0) == (ssize_t)size);
	FUZZ_CHECK(ftruncate(value_fd, (off_t)size) == 0);
	memset(errbuf, 'x', sizeof(errbuf));
	check_resolved(params_resolve_one(&p, &value, errbuf, sizeof(errbuf)), value, errbuf);
}

static void fuzz_resolve_value(char *text)
{
	struct config_param p = {(char *)"Serial", PARAM_SOURCE_VALUE, text, 0};
	char errbuf[ERRBUF_SIZE], *value = NULL;
	int r;

	memset(errbuf, 'x', sizeof(errbuf));
	r = params_resolve_one(&p, &value, errbuf, sizeof(errbuf));
	if (r < 0) {
		FUZZ_CHECK(!value);
		FUZZ_CHECK(fuzz_terminated(errbuf, sizeof(errbuf)));
		return;
	}
	FUZZ_CHECK(value && strlen(value) <= PARAM_VALUE_MAX);
	FUZZ_CHECK(!has_control(value));
	free(value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_free_ char *text = fuzz_strndup(data, size);

	fuzz_expand(text, ERRBUF_SIZE);
	fuzz_expand(text, ERRBUF_TINY);
	fuzz_resolve_value(text);
	fuzz_resolve_file(data, size);
	return 0;
}
