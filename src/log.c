/*
 * Logging to stderr with "<N>" priority prefixes, or natively to the journal (with
 * structured fields) when stderr is connected to it: systemd sets JOURNAL_STREAM to the
 * device:inode of that stream, which is how we know.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include "log.h"

static int max_level = LOG_INFO;
static bool to_journal;

static bool stderr_is_journal(void)
{
	const char *e = secure_getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
		return false;
	if (fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(void)
{
	to_journal = stderr_is_journal();
}

void log_set_max_level(int level)
{
	max_level = level;
}

int log_get_max_level(void)
{
	return max_level;
}

int log_level_from_string(const char *s)
{
	static const char *const names[] = {
	    [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",     [LOG_CRIT] = "crit",
	    [LOG_ERR] = "err",     [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	    [LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
	};

	if (!s)
		return -EINVAL;
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (strcmp(s, names[i]) == 0)
			return (int)i;
	if (strcmp(s, "error") == 0)
		return LOG_ERR;
	if (s[0] >= '0' && s[0] <= '7' && s[1] == '\0')
		return s[0] - '0';
	return -EINVAL;
}

static void send_journal(int level, const struct log_fields *f, const char *msg)
{
	char attempt[32], status[32];
	struct iovec iov[8];
	char *bufs[8] = {0};
	size_t n = 0;

#define ADD(fmt, val)                                                                              \
	do {                                                                                       \
		if (asprintf(&bufs[n], fmt, val) >= 0) {                                           \
			iov[n].iov_base = bufs[n];                                                 \
			iov[n].iov_len = strlen(bufs[n]);                                          \
			n++;                                                                       \
		}                                                                                  \
	} while (0)

	ADD("MESSAGE=%s", msg);
	ADD("PRIORITY=%d", level);
	if (f) {
		if (f->message_id)
			ADD("MESSAGE_ID=%s", f->message_id);
		if (f->step)
			ADD("FLEETPROVD_STEP=%s", f->step);
		if (f->attempt) {
			snprintf(attempt, sizeof(attempt), "%u", f->attempt);
			ADD("FLEETPROVD_ATTEMPT=%s", attempt);
		}
		if (f->aws_status) {
			snprintf(status, sizeof(status), "%d", f->aws_status);
			ADD("AWS_STATUS_CODE=%s", status);
		}
		if (f->aws_error)
			ADD("AWS_ERROR_CODE=%s", f->aws_error);
		if (f->thing_name)
			ADD("FLEETPROVD_THING_NAME=%s", f->thing_name);
	}
#undef ADD
	if (sd_journal_sendv(iov, (int)n) < 0)
		fprintf(stderr, "<%d>%s\n", level, msg);
	for (size_t i = 0; i < n; i++)
		free(bufs[i]);
}

int log_internal(int level, int error, const struct log_fields *fields, const char *fmt, ...)
{
	int saved_errno = errno;
	char msg[2048];
	va_list ap;

	if (error < 0)
		error = -error;
	if (level > max_level) {
		errno = saved_errno;
		return -error;
	}

	/* Callers format the error themselves (ERRNO_STR); errno is restored for them below. */
	errno = error;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	if (to_journal)
		send_journal(level, fields, msg);
	else
		fprintf(stderr, "<%d>%s\n", level, msg);

	errno = saved_errno;
	return -error;
}
