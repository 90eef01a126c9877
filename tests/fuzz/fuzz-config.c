/*
 * The configuration parser on arbitrary text: an admin's typo must give an error message,
 * never a crash. On success the promised invariants are checked; on failure the error
 * struct is formatted into buffers of several sizes, down to one byte.
 */
#include <errno.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "macro.h"

/*
 * libconfig before 1.7.3 leaks a string token that a syntax error makes the parser discard
 * (hyperrealm/libconfig#142, fixed by #155); Debian 12 ships 1.5. Such tokens are allocated
 * by its scanner (libconfig_yylex, or strbuf_append when it collects a string), which no
 * fleetprovd code calls, so only those leaks are ignored.
 */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
	return "leak:libconfig_yylex\nleak:strbuf_append\n";
}

static void check_config(const struct config *c)
{
	FUZZ_CHECK(c->endpoint && c->template_name && c->state_dir);
	FUZZ_CHECK(c->port > 0);
	FUZZ_CHECK(key_type_to_string(c->key_type) != NULL);
	FUZZ_CHECK(c->n_params == 0 || c->params);
	for (size_t i = 0; i < c->n_params; i++) {
		FUZZ_CHECK(c->params[i].name);
		FUZZ_CHECK(c->params[i].source < _PARAM_SOURCE_MAX);
	}
	/* A user-supplied CSR is only usable with its key (config.h). */
	FUZZ_CHECK(!c->csr_file || c->key_file);
}

static void check_error(const struct config_error *err)
{
	static const size_t sizes[] = {1, 16, 512};
	char buf[512];

	FUZZ_CHECK(fuzz_terminated(err->file, sizeof(err->file)));
	FUZZ_CHECK(fuzz_terminated(err->key, sizeof(err->key)));
	FUZZ_CHECK(fuzz_terminated(err->message, sizeof(err->message)));
	FUZZ_CHECK(err->message[0] != '\0');

	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		memset(buf, 'x', sizeof(buf));
		config_error_format(err, buf, sizes[i]);
		FUZZ_CHECK(fuzz_terminated(buf, sizes[i]));
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_free_ char *text = fuzz_strndup(data, size);
	/* Not NULL: the output must stay untouched on failure. */
	struct config *sentinel = (struct config *)&text, *c = sentinel;
	struct config_error err;
	int r;

	memset(&err, 0, sizeof(err));
	r = config_load_string(text, "fuzz.conf", &c, &err);
	if (r < 0) {
		FUZZ_CHECK(c == sentinel);
		check_error(&err);
		return 0;
	}
	FUZZ_CHECK(c && c != sentinel);
	check_config(c);
	FUZZ_CHECK(config_free(c) == NULL);
	return 0;
}
