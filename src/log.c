/*
 * Logging to stderr with "<N>" priority prefixes, or natively to the journal (with
 * structured fields) when stderr is connected to it: systemd sets JOURNAL_STREAM to the
 * device:inode of that stream, which is how we know.
 */
/* CODE_FILE= and friends would always name this file, not the caller: leave them out. */
#define SD_JOURNAL_SUPPRESS_LOCATION

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"

/* SYSLOG_IDENTIFIER=: what "journalctl -t fleetprovd" matches, whatever argv[0] was. */
#define LOG_IDENTIFIER "fleetprovd"
/* Longest formatted message; longer ones are cut (a log line, not a data channel). */
#define LOG_MESSAGE_MAX 2048
/*
 * One "KEY=value" field besides MESSAGE=. The longest values are AWS names and codes: thing
 * names and error codes are at most 128 characters (include/protocol.h), so nothing real is
 * cut.
 */
#define LOG_FIELD_MAX 256
/* SYSLOG_IDENTIFIER, PRIORITY, ERRNO and the six members of struct log_fields. */
#define LOG_FIELDS_MAX 9
/* Where journald receives native records (systemd's JOURNAL_NATIVE_PROTOCOL). */
#define JOURNAL_SOCKET "/run/systemd/journal/socket"

/* A journal record built on the stack: logging must not fail for want of memory. */
struct record {
	struct iovec iov[1 + LOG_FIELDS_MAX];
	char fields[LOG_FIELDS_MAX][LOG_FIELD_MAX];
	size_t n_fields;
};

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
	/*
	 * sd-journal drops records without an error when its socket is missing (a sandbox that
	 * hides /run/systemd/journal); the stream still reaches journald, so use it then.
	 */
	to_journal = stderr_is_journal() && access(JOURNAL_SOCKET, F_OK) == 0;
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

static void add_field(struct record *r, const char *fmt, ...) _printf_(2, 3);
static void add_field(struct record *r, const char *fmt, ...)
{
	char *field = r->fields[r->n_fields];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(field, LOG_FIELD_MAX, fmt, ap);
	va_end(ap);
	r->iov[1 + r->n_fields++] = (struct iovec){.iov_base = field, .iov_len = strlen(field)};
}

static int send_journal(int level, int error, const struct log_fields *f, const char *message)
{
	struct record r = {.n_fields = 0};

	/* message is "MESSAGE=..." so that it needs no copy. */
	r.iov[0] = (struct iovec){.iov_base = (char *)message, .iov_len = strlen(message)};
	add_field(&r, "SYSLOG_IDENTIFIER=%s", LOG_IDENTIFIER);
	add_field(&r, "PRIORITY=%d", level);
	if (error > 0)
		add_field(&r, "ERRNO=%d", error);
	if (f && f->message_id)
		add_field(&r, "MESSAGE_ID=%s", f->message_id);
	if (f && f->step)
		add_field(&r, "FLEETPROVD_STEP=%s", f->step);
	if (f && f->attempt > 0)
		add_field(&r, "FLEETPROVD_ATTEMPT=%u", f->attempt);
	if (f && f->aws_status != 0)
		add_field(&r, "AWS_STATUS_CODE=%d", f->aws_status);
	if (f && f->aws_error)
		add_field(&r, "AWS_ERROR_CODE=%s", f->aws_error);
	if (f && f->thing_name)
		add_field(&r, "FLEETPROVD_THING_NAME=%s", f->thing_name);
	return sd_journal_sendv(r.iov, (int)(1 + r.n_fields));
}

int log_internal(int level, int error, const struct log_fields *fields, const char *fmt, ...)
{
	static const char prefix[] = "MESSAGE=";
	char buf[sizeof(prefix) - 1 + LOG_MESSAGE_MAX];
	char *message = buf + sizeof(prefix) - 1;
	int saved_errno = errno;
	va_list ap;

	if (error < 0)
		error = -error;
	if (level > max_level) {
		errno = saved_errno;
		return -error;
	}

	/* Callers format the error themselves (ERRNO_STR); errno is restored for them below. */
	errno = error;
	memcpy(buf, prefix, sizeof(prefix) - 1);
	va_start(ap, fmt);
	vsnprintf(message, LOG_MESSAGE_MAX, fmt, ap);
	va_end(ap);

	/* Unreachable journal (journald restarting, a sandbox without the socket): stderr. */
	if (!to_journal || send_journal(level, error, fields, buf) < 0)
		fprintf(stderr, "<%d>%s\n", level, message);

	errno = saved_errno;
	return -error;
}
