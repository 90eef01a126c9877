/* Thin sd_notify wrappers. Without NOTIFY_SOCKET they do nothing and return 0. */
#pragma once

#include <stdint.h>

#include "macro.h"

int notify_ready(const char *status);
int notify_status(const char *fmt, ...) _printf_(1, 2);
int notify_extend_timeout(uint64_t usec);
int notify_stopping(void);
