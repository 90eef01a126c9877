/*
 * Unit tests for log: level names and numbers, level filtering, the return value and errno
 * contract, and the "<N>message" lines on stderr. stderr is redirected to a memfd around
 * each logging call only, so cmocka's own failure messages still reach the real stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "macro.h"

/* Big enough for any one record, including a cut-off oversized message. */
#define CAPTURE_MAX 8192

static int capture_fd = -1;
static int real_stderr = -1;

static void start_capture(void)
{
	assert_int_equal(ftruncate(capture_fd, 0), 0);
	assert_int_equal(lseek(capture_fd, 0, SEEK_SET), 0);
	assert_int_equal(dup2(capture_fd, STDERR_FILENO), STDERR_FILENO);
}

/* Restore stderr; buf gets what was written meanwhile, NUL-terminated. */
static void stop_capture(char *buf, size_t size)
{
	ssize_t n;

	fflush(stderr);
	assert_int_equal(dup2(real_stderr, STDERR_FILENO), STDERR_FILENO);
	n = pread(capture_fd, buf, size - 1, 0);
	assert_true(n >= 0);
	buf[n] = '\0';
}

#define CAPTURE(buf, stmt)                                                                         \
	do {                                                                                       \
		start_capture();                                                                   \
		stmt;                                                                              \
		stop_capture((buf), sizeof(buf));                                                  \
	} while (0)

static int setup(void **state)
{
	(void)state;
	capture_fd = memfd_create("stderr", MFD_CLOEXEC);
	real_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
	if (capture_fd < 0 || real_stderr < 0)
		return -1;
	unsetenv("JOURNAL_STREAM");
	log_init();
	log_set_max_level(LOG_INFO);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	dup2(real_stderr, STDERR_FILENO);
	close(real_stderr);
	close(capture_fd);
	unsetenv("JOURNAL_STREAM");
	return 0;
}

static void test_level_names(void **state)
{
	static const struct {
		const char *name;
		int level;
	} names[] = {
	    {"emerg", LOG_EMERG},   {"alert", LOG_ALERT}, {"crit", LOG_CRIT},
	    {"err", LOG_ERR},       {"error", LOG_ERR},   {"warning", LOG_WARNING},
	    {"notice", LOG_NOTICE}, {"info", LOG_INFO},   {"debug", LOG_DEBUG},
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		assert_int_equal(log_level_from_string(names[i].name), names[i].level);
}

static void test_level_numbers(void **state)
{
	char s[2] = {0};

	(void)state;
	for (int level = LOG_EMERG; level <= LOG_DEBUG; level++) {
		s[0] = (char)('0' + level);
		assert_int_equal(log_level_from_string(s), level);
	}
}

static void test_level_bad_input(void **state)
{
	static const char *const bad[] = {
	    "",     "8",    "9",    "-1",   "07",     "10",        " 3",  "3 ",
	    "Info", "INFO", "warn", "errr", "debug ", "infodebug", "0x3", "emergency",
	};

	(void)state;
	assert_int_equal(log_level_from_string(NULL), -EINVAL);
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		if (log_level_from_string(bad[i]) != -EINVAL)
			fail_msg("'%s' was accepted as a level", bad[i]);
	}
}

static void test_stderr_format(void **state)
{
	char out[CAPTURE_MAX], want[256];
	int r;

	(void)state;
	CAPTURE(out, log_info("Hello %s %d", "gateway", 42));
	assert_string_equal(out, "<6>Hello gateway 42\n");

	CAPTURE(out,
	        r = log_error_errno(-ENOENT, "Failed to open '%s': %s", "x", ERRNO_STR(-ENOENT)));
	snprintf(want, sizeof(want), "<%d>Failed to open 'x': %s\n", LOG_ERR, strerror(ENOENT));
	assert_string_equal(out, want);
	assert_int_equal(r, -ENOENT);

	CAPTURE(out, log_warning("%s", "100% literal"));
	assert_string_equal(out, "<4>100% literal\n");
}

/* Structured fields do not change the stderr line: they only exist in the journal. */
static void test_fields_ignored_on_stderr(void **state)
{
	const struct log_fields f = {
	    .message_id = "bb0236d4b58441ad86388e68af923f8a",
	    .step = "Done",
	    .attempt = 3,
	    .aws_status = 429,
	    .aws_error = "ThrottlingException",
	    .thing_name = "gw-1",
	};
	char out[CAPTURE_MAX];

	(void)state;
	CAPTURE(out, log_internal(LOG_NOTICE, 0, &f, "Provisioned"));
	assert_string_equal(out, "<5>Provisioned\n");
}

static void test_level_filtering(void **state)
{
	char out[CAPTURE_MAX];

	(void)state;
	assert_int_equal(log_get_max_level(), LOG_INFO);
	CAPTURE(out, log_debug("hidden"));
	assert_string_equal(out, "");
	CAPTURE(out, log_info("shown"));
	assert_string_equal(out, "<6>shown\n");

	log_set_max_level(LOG_DEBUG);
	assert_int_equal(log_get_max_level(), LOG_DEBUG);
	CAPTURE(out, log_debug("now shown"));
	assert_string_equal(out, "<7>now shown\n");

	log_set_max_level(LOG_ERR);
	CAPTURE(out, log_warning("hidden"));
	assert_string_equal(out, "");
	CAPTURE(out, log_error("error"));
	assert_string_equal(out, "<3>error\n");
}

static void test_return_value(void **state)
{
	(void)state;
	log_set_max_level(LOG_EMERG - 1); /* nothing is printed, the contract still holds */
	assert_int_equal(log_error_errno(-EACCES, "x"), -EACCES);
	assert_int_equal(log_error_errno(EACCES, "x"), -EACCES);
	assert_int_equal(log_debug_errno(-ENOMEM, "x"), -ENOMEM);
	assert_int_equal(log_info("x"), 0);
	assert_int_equal(log_internal(LOG_ERR, -EPROTO, NULL, "x"), -EPROTO);
}

static void test_errno_preserved(void **state)
{
	char out[CAPTURE_MAX];
	int r;

	(void)state;
	errno = EXDEV;
	CAPTURE(out, r = log_error_errno(-ENOENT, "printed: %s", ERRNO_STR(-ENOENT)));
	assert_int_equal(errno, EXDEV);
	assert_int_equal(r, -ENOENT);
	assert_true(out[0] != '\0');

	errno = EXDEV;
	CAPTURE(out, log_debug_errno(-ENOENT, "filtered"));
	assert_int_equal(errno, EXDEV);
	assert_string_equal(out, "");

	errno = 0;
	CAPTURE(out, log_info("no error"));
	assert_int_equal(errno, 0);
}

/* A message longer than the buffer is cut, not overflowed, and still ends the line. */
static void test_long_message_truncated(void **state)
{
	char out[CAPTURE_MAX];
	_cleanup_free_ char *big = malloc(CAPTURE_MAX);
	size_t len;

	(void)state;
	assert_non_null(big);
	memset(big, 'k', CAPTURE_MAX - 1);
	big[CAPTURE_MAX - 1] = '\0';
	CAPTURE(out, log_info("%s", big));
	len = strlen(out);
	assert_true(len > 4 && len < CAPTURE_MAX - 1);
	assert_memory_equal(out, "<6>", 3);
	assert_int_equal(out[len - 1], '\n');
	assert_int_equal(strspn(out + 3, "k"), len - 4);
}

/* JOURNAL_STREAM naming another stream, or malformed, keeps the stderr format. */
static void test_journal_stream_mismatch(void **state)
{
	static const char *const bad[] = {"", "garbage", "12", ":", "1:x"};
	char out[CAPTURE_MAX], value[64];
	struct stat st;

	(void)state;
	assert_int_equal(fstat(capture_fd, &st), 0);
	snprintf(value, sizeof(value), "%llu:%llu", (unsigned long long)st.st_dev,
	         (unsigned long long)st.st_ino + 1);

	setenv("JOURNAL_STREAM", value, 1);
	CAPTURE(out, log_init(); log_info("a"));
	assert_string_equal(out, "<6>a\n");
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		setenv("JOURNAL_STREAM", bad[i], 1);
		CAPTURE(out, log_init(); log_info("b"));
		assert_string_equal(out, "<6>b\n");
	}
}

/*
 * JOURNAL_STREAM matching stderr, but no journald socket: records must not vanish (sd-journal
 * ignores a missing socket), so they stay on the stream. Only checkable without journald.
 */
static void test_journal_stream_without_journald(void **state)
{
	char out[CAPTURE_MAX], value[64];
	struct stat st;

	(void)state;
	if (access("/run/systemd/journal/socket", F_OK) == 0)
		skip();
	assert_int_equal(fstat(capture_fd, &st), 0);
	snprintf(value, sizeof(value), "%llu:%llu", (unsigned long long)st.st_dev,
	         (unsigned long long)st.st_ino);
	setenv("JOURNAL_STREAM", value, 1);
	CAPTURE(out, log_init(); log_warning("kept"));
	assert_string_equal(out, "<4>kept\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_level_names),
	    cmocka_unit_test(test_level_numbers),
	    cmocka_unit_test(test_level_bad_input),
	    cmocka_unit_test_setup_teardown(test_stderr_format, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_fields_ignored_on_stderr, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_level_filtering, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_return_value, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_errno_preserved, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_long_message_truncated, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_journal_stream_mismatch, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_journal_stream_without_journald, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
