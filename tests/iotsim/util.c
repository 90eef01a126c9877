/* Small helpers shared by the simulator's modules. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

uint64_t util_now_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

int64_t util_realtime_msec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void util_format_time(int64_t msec, char *buf, size_t size)
{
	time_t secs = (time_t)(msec / 1000);
	struct tm tm;
	char base[24];

	gmtime_r(&secs, &tm);
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, size, "%s.%03dZ", base, (int)(msec % 1000));
}

void util_hex(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0xf];
	}
	out[2 * n] = '\0';
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return NEG_ERRNO();
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

int util_write_atomic(int dirfd, const char *name, const char *data, size_t len)
{
	char tmp[NAME_MAX + 1];
	_cleanup_close_ int fd = -1;
	int r;

	/* No fsync: readers only need to never see a half-written file, not crash safety. */
	if ((size_t)snprintf(tmp, sizeof(tmp), ".%s.tmp", name) >= sizeof(tmp))
		return -ENAMETOOLONG;
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return NEG_ERRNO();
	r = write_all(fd, data, len);
	if (r < 0) {
		(void)unlinkat(dirfd, tmp, 0);
		return r;
	}
	if (renameat(dirfd, tmp, dirfd, name) < 0) {
		r = NEG_ERRNO();
		(void)unlinkat(dirfd, tmp, 0);
		return r;
	}
	return 0;
}

int util_write_json(int dirfd, const char *name, json_object *obj)
{
	size_t len;
	const char *text = json_object_to_json_string_length(
	    obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	_cleanup_free_ char *line = NULL;

	if (!text)
		return -ENOMEM;
	/* End with a newline so the files behave like text files. */
	line = malloc(len + 2);
	if (!line)
		return -ENOMEM;
	memcpy(line, text, len);
	line[len] = '\n';
	line[len + 1] = '\0';
	return util_write_atomic(dirfd, name, line, len + 1);
}

static bool only_whitespace(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strchr(" \t\r\n", s[i]) || s[i] == '\0')
			return false;
	return true;
}

json_object *util_json_parse(const char *buf, size_t len)
{
	json_tokener *tok;
	json_object *obj;

	if (len == 0 || len > INT32_MAX)
		return NULL;
	tok = json_tokener_new();
	if (!tok)
		return NULL;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	obj = json_tokener_parse_ex(tok, buf, (int)len);
	/* Incomplete input, a parse error or anything but whitespace after the value all make
	 * the payload invalid. */
	if (!obj || json_tokener_get_error(tok) != json_tokener_success ||
	    !only_whitespace(buf + json_tokener_get_parse_end(tok),
	                     len - json_tokener_get_parse_end(tok))) {
		json_object_put(obj);
		obj = NULL;
	}
	json_tokener_free(tok);
	return obj;
}

char *util_json_dump(json_object *obj, size_t *ret_len)
{
	size_t len;
	const char *text = json_object_to_json_string_length(
	    obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	char *copy;

	if (!text)
		return NULL;
	copy = strndup(text, len);
	if (copy && ret_len)
		*ret_len = len;
	return copy;
}

const char *util_json_get_string(json_object *obj, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

int util_json_array_add_unique(json_object *arr, const char *s)
{
	size_t n = json_object_array_length(arr);

	for (size_t i = 0; i < n; i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(arr, i)), s) == 0)
			return 0;
	return json_object_array_add(arr, json_object_new_string(s)) < 0 ? -ENOMEM : 1;
}

bool util_streq_ci(const char *a, const char *b)
{
	return a && b && strcasecmp(a, b) == 0;
}
