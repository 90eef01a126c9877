/* sd_notify wrappers: the daemon's only channel to systemd. */
#include <stdarg.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "notify.h"

int notify_ready(const char *status)
{
	if (status)
		return sd_notifyf(0, "READY=1\nSTATUS=%s", status);
	return sd_notify(0, "READY=1");
}

int notify_status(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return sd_notifyf(0, "STATUS=%s", buf);
}

int notify_extend_timeout(uint64_t usec)
{
	return sd_notifyf(0, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)usec);
}

int notify_stopping(void)
{
	return sd_notify(0, "STOPPING=1");
}
