/*
 * Logging. Lines go to stderr with a "<N>" syslog priority prefix that journald understands;
 * when stderr is the journal (JOURNAL_STREAM matches) records are sent natively with
 * structured fields. Only provision.c and main.c log above debug level (design.md).
 * Every log call preserves errno.
 */
#pragma once

#include <stdarg.h>
#include <string.h>
#include <syslog.h>

#include "macro.h"

/* Structured context attached to a record; every member is optional (NULL / 0 = absent). */
struct log_fields {
	const char *message_id; /* MESSAGE_ID=, a 128-bit id in hex (see fleetprovd.catalog) */
	const char *step;       /* FLEETPROVD_STEP= */
	unsigned attempt;       /* FLEETPROVD_ATTEMPT= */
	int aws_status;         /* AWS_STATUS_CODE= */
	const char *aws_error;  /* AWS_ERROR_CODE= */
	const char *thing_name; /* FLEETPROVD_THING_NAME= */
};

/* Detect the journal; idempotent. */
void log_init(void);
void log_set_max_level(int level);
int log_get_max_level(void);
/* Parse "err", "warning", "info", "debug" (or 0..7); returns the level or -EINVAL. */
int log_level_from_string(const char *s);

/*
 * The build is -Wpedantic, which rejects glibc's "%m"; messages spell the error out with
 * ERRNO_STR(r) instead: log_error_errno(r, "Failed to write '%s': %s", path, ERRNO_STR(r)).
 */
#define ERRNO_STR(r) strerror((r) < 0 ? -(r) : (r))

/* Log one record; returns -abs(error) so callers can "return log_...(r, ...)". */
int log_internal(int level, int error, const struct log_fields *fields, const char *fmt, ...)
    _printf_(4, 5);

#define log_full_errno(level, error, ...) log_internal((level), (error), NULL, __VA_ARGS__)
#define log_debug(...)                    log_internal(LOG_DEBUG, 0, NULL, __VA_ARGS__)
#define log_info(...)                     log_internal(LOG_INFO, 0, NULL, __VA_ARGS__)
#define log_notice(...)                   log_internal(LOG_NOTICE, 0, NULL, __VA_ARGS__)
#define log_warning(...)                  log_internal(LOG_WARNING, 0, NULL, __VA_ARGS__)
#define log_error(...)                    log_internal(LOG_ERR, 0, NULL, __VA_ARGS__)
#define log_debug_errno(e, ...)           log_internal(LOG_DEBUG, (e), NULL, __VA_ARGS__)
#define log_warning_errno(e, ...)         log_internal(LOG_WARNING, (e), NULL, __VA_ARGS__)
#define log_error_errno(e, ...)           log_internal(LOG_ERR, (e), NULL, __VA_ARGS__)
