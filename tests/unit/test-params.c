/* Unit tests for the params module: every source, value checks, commands, expansion. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "macro.h"
#include "params.h"

static char tmpdir[] = "/tmp/test-params-XXXXXX";

/* A value no resolver writes: proves outputs stay untouched on failure. */
static char untouched[] = "untouched";

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int setup(void **state)
{
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	params_set_root(NULL);
	return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void mkdir_p(const char *path)
{
	char buf[PATH_MAX];

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		assert_true(mkdir(buf, 0755) == 0 || errno == EEXIST);
		*p = '/';
	}
	assert_true(mkdir(buf, 0755) == 0 || errno == EEXIST);
}

/* Write len bytes (NULs allowed) to tmpdir/name; returns the full path in a static buffer. */
static const char *write_file(const char *name, const char *data, size_t len, mode_t mode)
{
	static char path[PATH_MAX];
	char dir[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	snprintf(dir, sizeof(dir), "%s", path);
	*strrchr(dir, '/') = '\0';
	mkdir_p(dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
	return path;
}

static const char *write_script(const char *name, const char *body)
{
	char text[4096];

	snprintf(text, sizeof(text), "#!/bin/sh\n%s\n", body);
	return write_file(name, text, strlen(text), 0755);
}

/* Resolve one source; on success the value is checked against want (NULL: expect failure). */
static int resolve(enum param_source source, const char *arg, uint32_t timeout_ms, const char *want,
                   char *errbuf, size_t errsize)
{
	struct config_param p = {
	    .name = (char *)"P", .source = source, .arg = (char *)arg, .timeout_ms = timeout_ms};
	char *value = untouched;
	int r;

	errbuf[0] = '\0';
	r = params_resolve_one(&p, &value, errbuf, errsize);
	if (r < 0) {
		assert_ptr_equal(value, untouched);
		assert_true(errbuf[0] != '\0');
		if (want)
			fail_msg("'%s': %s", arg ? arg : "", errbuf);
		return r;
	}
	if (!want)
		fail_msg("'%s': resolved to '%s', expected a failure", arg ? arg : "", value);
	assert_string_equal(value, want);
	free(value);
	return r;
}

static void assert_contains(const char *haystack, const char *needle)
{
	if (!strstr(haystack, needle))
		fail_msg("'%s' does not contain '%s'", haystack, needle);
}

static void test_literal(void **state)
{
	static const struct {
		const char *value;
		const char *error; /* NULL: valid */
	} cases[] = {
	    {"Seattle", NULL},
	    {"Zürich € \xf0\x9d\x84\x9e", NULL},
	    {"", "parameter 'P': the literal value is empty"},
	    {"\x1b[31mred", "contains control character U+001B (byte 0)"},
	    {"a\x7f", "contains control character U+007F (byte 1)"},
	    {"ab\xc2\x85", "contains control character U+0085 (byte 2)"},
	    {"tab\there", "U+0009"},
	    {"\xc0\xaf", "is not valid UTF-8 (byte 0)"},      /* overlong '/' */
	    {"x\xed\xa0\x80", "is not valid UTF-8 (byte 1)"}, /* surrogate */
	    {"\xe2\x82", "is not valid UTF-8"},               /* cut short */
	    {"\xf4\x90\x80\x80", "is not valid UTF-8"},       /* past U+10FFFF */
	    {"\xff", "is not valid UTF-8"},
	};
	char errbuf[256], big[PARAM_VALUE_MAX + 2];

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		int r = resolve(PARAM_SOURCE_VALUE, cases[i].value, 0,
		                cases[i].error ? NULL : cases[i].value, errbuf, sizeof(errbuf));
		if (!cases[i].error)
			continue;
		assert_int_equal(r, -EINVAL);
		assert_contains(errbuf, cases[i].error);
		assert_contains(errbuf, "parameter 'P': the literal value");
	}
	memset(big, 'a', PARAM_VALUE_MAX);
	big[PARAM_VALUE_MAX] = '\0';
	resolve(PARAM_SOURCE_VALUE, big, 0, big, errbuf, sizeof(errbuf));
	big[PARAM_VALUE_MAX] = 'a';
	big[PARAM_VALUE_MAX + 1] = '\0';
	assert_int_equal(resolve(PARAM_SOURCE_VALUE, big, 0, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);
	assert_contains(errbuf, "is 1025 bytes long, more than the limit of 1024");
}

static void test_file(void **state)
{
	static const struct {
		const char *data;
		size_t len;
		const char *want; /* NULL: expect the error */
		const char *error;
	} cases[] = {
	    /* DMI style: blank padding; device-tree style: NUL terminated. */
	    {"  SN123 \t\0\0\0\nsecond\n", 20, "SN123", NULL},
	    {"\0\0 ABC-1 \0", 10, "ABC-1", NULL},
	    {"abc", 3, "abc", NULL},
	    {"abc\r\n", 5, "abc", NULL},
	    {"\nabc\n", 5, NULL, "is empty"},
	    {"   \n", 4, NULL, "is empty"},
	    {"", 0, NULL, "is empty"},
	    {"AB\0CD\n", 6, NULL, "contains control character U+0000 (byte 2)"},
	};
	char errbuf[512], want[600], big[8192];
	const char *path;

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		path = write_file("value", cases[i].data, cases[i].len, 0644);
		if (resolve(PARAM_SOURCE_FILE, path, 0, cases[i].want, errbuf, sizeof(errbuf)) >= 0)
			continue;
		assert_contains(errbuf, cases[i].error);
		snprintf(want, sizeof(want), "parameter 'P': the value from file '%s'", path);
		assert_contains(errbuf, want);
	}

	/* Only the first line counts: a short line before a long tail is fine. */
	memset(big, 'a', sizeof(big));
	big[PARAM_VALUE_MAX] = '\n';
	path = write_file("big", big, sizeof(big), 0644);
	big[PARAM_VALUE_MAX] = '\0';
	resolve(PARAM_SOURCE_FILE, path, 0, big, errbuf, sizeof(errbuf));

	/* A complete first line over the value limit, and one past the read limit. */
	memset(big, 'a', sizeof(big));
	path = write_file("big", big, 4096, 0644);
	assert_int_equal(resolve(PARAM_SOURCE_FILE, path, 0, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);
	assert_contains(errbuf, "is 4096 bytes long, more than the limit of 1024");
	path = write_file("big", big, 4097, 0644);
	assert_int_equal(resolve(PARAM_SOURCE_FILE, path, 0, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);
	assert_contains(errbuf, "the first line of the value from file");
	assert_contains(errbuf, "is longer than 4096 bytes");
}

static void test_file_errors(void **state)
{
	char errbuf[512], want[PATH_MAX + 128], path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/missing", tmpdir);
	assert_int_equal(resolve(PARAM_SOURCE_FILE, path, 0, NULL, errbuf, sizeof(errbuf)),
	                 -ENOENT);
	snprintf(want, sizeof(want), "parameter 'P': cannot read '%s': No such file or directory",
	         path);
	assert_string_equal(errbuf, want);

	assert_int_equal(resolve(PARAM_SOURCE_FILE, tmpdir, 0, NULL, errbuf, sizeof(errbuf)),
	                 -EISDIR);

	/* A FIFO must neither block the daemon nor be read. */
	snprintf(path, sizeof(path), "%s/fifo", tmpdir);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(resolve(PARAM_SOURCE_FILE, path, 0, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);
	assert_contains(errbuf, "is not a regular file");

	assert_int_equal(
	    resolve(PARAM_SOURCE_FILE, "relative/path", 0, NULL, errbuf, sizeof(errbuf)), -EINVAL);
	assert_int_equal(resolve(PARAM_SOURCE_FILE, NULL, 0, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);

	/* procfs reports size 0 for files that do have content. */
	resolve(PARAM_SOURCE_FILE, "/proc/sys/kernel/ostype", 0, "Linux", errbuf, sizeof(errbuf));
}

static void test_interface_mac(void **state)
{
	static const char *const bad_names[] = {"../../etc", "a/b", "",  "abcdefghijklmnop",
	                                        "eth 0",     "a:b", ".", ".."};
	char errbuf[512], root[PATH_MAX];

	write_file("root/sys/class/net/eth7/address", "AA:bb:CC:dd:EE:0f\n", 18, 0644);
	write_file("root/sys/class/net/lo/address", "00:00:00:00:00:00\n", 18, 0644);
	write_file("root/sys/class/net/ib0/address",
	           "00:00:01:04:fe:80:00:00:00:00:00:00:00:11:22:33:44:55:66:77\n", 60, 0644);
	snprintf(root, sizeof(root), "%s/root", tmpdir);
	params_set_root(root);

	resolve(PARAM_SOURCE_INTERFACE_MAC, "eth7", 0, "aa:bb:cc:dd:ee:0f", errbuf, sizeof(errbuf));
	assert_int_equal(resolve(PARAM_SOURCE_INTERFACE_MAC, "lo", 0, NULL, errbuf, sizeof(errbuf)),
	                 -EADDRNOTAVAIL);
	assert_string_equal(errbuf, "parameter 'P': interface 'lo' has no hardware address "
	                            "(00:00:00:00:00:00)");
	assert_int_equal(
	    resolve(PARAM_SOURCE_INTERFACE_MAC, "ib0", 0, NULL, errbuf, sizeof(errbuf)), -EINVAL);
	assert_contains(errbuf, "interface 'ib0' has no Ethernet address");
	assert_int_equal(
	    resolve(PARAM_SOURCE_INTERFACE_MAC, "eth9", 0, NULL, errbuf, sizeof(errbuf)), -ENODEV);
	assert_string_equal(errbuf, "parameter 'P': no network interface 'eth9'");
	for (size_t i = 0; i < ARRAY_SIZE(bad_names); i++) {
		assert_int_equal(resolve(PARAM_SOURCE_INTERFACE_MAC, bad_names[i], 0, NULL, errbuf,
		                         sizeof(errbuf)),
		                 -EINVAL);
		assert_contains(errbuf, "is not a valid network interface name");
	}

	/* The real sysfs: loopback has no hardware address. */
	params_set_root(NULL);
	assert_int_equal(resolve(PARAM_SOURCE_INTERFACE_MAC, "lo", 0, NULL, errbuf, sizeof(errbuf)),
	                 -EADDRNOTAVAIL);
}

static void test_machine_id(void **state)
{
	_cleanup_fclose_ FILE *f = NULL;
	char errbuf[512], root[PATH_MAX], real[64] = "";

	snprintf(root, sizeof(root), "%s/mid", tmpdir);
	params_set_root(root);
	assert_int_equal(resolve(PARAM_SOURCE_MACHINE_ID, NULL, 0, NULL, errbuf, sizeof(errbuf)),
	                 -ENOENT);
	assert_contains(errbuf, "/mid/etc/machine-id': No such file or directory");

	write_file("mid/etc/machine-id", "3D1219C7C4C5404AAA1F6D2A48ADFDA4\n", 33, 0444);
	resolve(PARAM_SOURCE_MACHINE_ID, NULL, 0, "3d1219c7c4c5404aaa1f6d2a48adfda4", errbuf,
	        sizeof(errbuf));
	write_file("mid/etc/machine-id", "uninitialized\n", 14, 0444);
	assert_int_equal(resolve(PARAM_SOURCE_MACHINE_ID, NULL, 0, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);
	assert_contains(errbuf, "'/etc/machine-id' holds no machine ID");
	write_file("mid/etc/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfdag\n", 33, 0444);
	assert_int_equal(resolve(PARAM_SOURCE_MACHINE_ID, NULL, 0, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);

	params_set_root(NULL);
	f = fopen("/etc/machine-id", "re");
	if (!f || !fgets(real, sizeof(real), f))
		return; /* a container without a machine ID */
	real[strcspn(real, "\n")] = '\0';
	resolve(PARAM_SOURCE_MACHINE_ID, NULL, 0, real, errbuf, sizeof(errbuf));
}

static void test_hostname(void **state)
{
	char host[HOST_NAME_MAX + 1] = "", errbuf[256];

	assert_int_equal(gethostname(host, sizeof(host)), 0);
	resolve(PARAM_SOURCE_HOSTNAME, NULL, 0, host, errbuf, sizeof(errbuf));
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void assert_no_children(void)
{
	assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);
}

static void test_command_output(void **state)
{
	char errbuf[512], cmd[PATH_MAX + 16];
	const char *path;

	resolve(PARAM_SOURCE_COMMAND, "/bin/echo   hello \t  world", 1000, "hello world", errbuf,
	        sizeof(errbuf));
	resolve(PARAM_SOURCE_COMMAND, "/usr/bin/printf ab\\ncd", 1000, "ab", errbuf,
	        sizeof(errbuf));
	path = write_script("stdin", "read x || echo eof");
	resolve(PARAM_SOURCE_COMMAND, path, 1000, "eof", errbuf, sizeof(errbuf));
	path = write_script("stderr", "echo noise >&2; echo out");
	resolve(PARAM_SOURCE_COMMAND, path, 1000, "out", errbuf, sizeof(errbuf));
	path = write_script("args", "echo \"$#:$1:$2\"");
	snprintf(cmd, sizeof(cmd), "%s one two", path);
	resolve(PARAM_SOURCE_COMMAND, cmd, 1000, "2:one:two", errbuf, sizeof(errbuf));

	path = write_script("silent", "echo only-noise >&2");
	assert_int_equal(resolve(PARAM_SOURCE_COMMAND, path, 1000, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);
	assert_contains(errbuf, "parameter 'P': the output of command '");
	assert_contains(errbuf, "' is empty");

	/* Far more output than the pipe holds: read to the end, keep the first line. */
	path = write_script("flood", "yes first | head -c 1000000");
	resolve(PARAM_SOURCE_COMMAND, path, 5000, "first", errbuf, sizeof(errbuf));
	path = write_script("longline", "head -c 100000 /dev/zero | tr '\\000' a");
	assert_int_equal(resolve(PARAM_SOURCE_COMMAND, path, 5000, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);
	assert_contains(errbuf, "is longer than 4096 bytes");
	assert_no_children();
}

static void test_command_environment(void **state)
{
	char errbuf[512];
	const char *path;
	sigset_t term, old;
	int fd;

	/* No descriptor of the daemon reaches the command, CLOEXEC or not. */
	fd = open("/dev/null", O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(dup2(fd, 77), 77);
	path =
	    write_script("fds", "if [ -e /proc/$$/fd/77 ]; then echo leaked; else echo clean; fi");
	resolve(PARAM_SOURCE_COMMAND, path, 2000, "clean", errbuf, sizeof(errbuf));
	close(77);
	close(fd);

	/* sd-event blocks SIGTERM in the daemon; the command must not inherit that. */
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	assert_int_equal(sigprocmask(SIG_BLOCK, &term, &old), 0);
	path = write_script("term", "kill -TERM $$; echo survived");
	assert_int_equal(resolve(PARAM_SOURCE_COMMAND, path, 2000, NULL, errbuf, sizeof(errbuf)),
	                 -EIO);
	assert_contains(errbuf, "was killed by signal SIGTERM");
	assert_int_equal(sigprocmask(SIG_SETMASK, &old, NULL), 0);
	assert_no_children();
}

static void test_command_failures(void **state)
{
	char errbuf[512], many[512] = "/bin/echo";
	const char *path;

	assert_int_equal(
	    resolve(PARAM_SOURCE_COMMAND, "/bin/false", 1000, NULL, errbuf, sizeof(errbuf)), -EIO);
	assert_string_equal(errbuf,
	                    "parameter 'P': command '/bin/false' failed with exit status 1");
	path = write_script("exit3", "echo partial; exit 3");
	assert_int_equal(resolve(PARAM_SOURCE_COMMAND, path, 1000, NULL, errbuf, sizeof(errbuf)),
	                 -EIO);
	assert_contains(errbuf, "failed with exit status 3");

	assert_int_equal(
	    resolve(PARAM_SOURCE_COMMAND, "/nonexistent/hwrev", 1000, NULL, errbuf, sizeof(errbuf)),
	    -ENOENT);
	assert_string_equal(errbuf, "parameter 'P': cannot run command '/nonexistent/hwrev': No "
	                            "such file or directory");
	path = write_file("noexec", "#!/bin/sh\necho x\n", 17, 0644);
	assert_int_equal(resolve(PARAM_SOURCE_COMMAND, path, 1000, NULL, errbuf, sizeof(errbuf)),
	                 -EACCES);

	assert_int_equal(
	    resolve(PARAM_SOURCE_COMMAND, "echo hi", 1000, NULL, errbuf, sizeof(errbuf)), -EINVAL);
	assert_contains(errbuf, "must be an absolute program path");
	assert_int_equal(resolve(PARAM_SOURCE_COMMAND, "   ", 1000, NULL, errbuf, sizeof(errbuf)),
	                 -EINVAL);
	for (int i = 0; i < 40; i++)
		strcat(many, " x");
	assert_int_equal(resolve(PARAM_SOURCE_COMMAND, many, 1000, NULL, errbuf, sizeof(errbuf)),
	                 -E2BIG);
	assert_int_equal(
	    resolve(PARAM_SOURCE_COMMAND, "/bin/echo", 0, NULL, errbuf, sizeof(errbuf)), -EINVAL);
	assert_contains(errbuf, "needs a timeout");
	assert_no_children();
}

static void test_command_timeout(void **state)
{
	char errbuf[512];
	uint64_t start = now_ms(), elapsed;
	const char *path;

	assert_int_equal(
	    resolve(PARAM_SOURCE_COMMAND, "/bin/sleep 5", 100, NULL, errbuf, sizeof(errbuf)),
	    -ETIME);
	elapsed = now_ms() - start;
	assert_true(elapsed >= 100);
	assert_true(elapsed < 2000);
	assert_string_equal(errbuf, "parameter 'P': command '/bin/sleep 5' did not finish within "
	                            "100 ms and was killed");
	assert_no_children();

	/* A command that exits while a child of its own keeps stdout open is done when it exits. */
	path = write_script("daemonizes", "/bin/sleep 3 & echo quick");
	start = now_ms();
	resolve(PARAM_SOURCE_COMMAND, path, 2500, "quick", errbuf, sizeof(errbuf));
	assert_true(now_ms() - start < 2000);
	assert_no_children();
}

static struct config *load(const char *text)
{
	struct config *c = NULL;
	struct config_error err;

	if (config_load_string(text, "params.conf", &c, &err) < 0)
		fail_msg("%s", err.message);
	return c;
}

static void test_resolve_all(void **state)
{
	_cleanup_(config_freep) struct config *c = NULL;
	struct param_list l = {0}, sentinel = {.items = (struct param_value *)untouched, .n = 42};
	char text[2048], errbuf[512];
	const char *path = write_file("serial", "SN-42   \n", 9, 0644);

	snprintf(text, sizeof(text),
	         "endpoint = \"localhost\"; template = { name = \"T\"; parameters = ("
	         "{ name = \"Serial\"; file = \"%s\"; },"
	         "{ name = \"Site\"; value = \"plant-7\"; },"
	         "{ name = \"Rev\"; command = \"/bin/echo B2\"; timeout_ms = 2000; } ); };",
	         path);
	c = load(text);
	assert_int_equal(params_resolve(c, &l, errbuf, sizeof(errbuf)), 0);
	assert_int_equal(l.n, 3);
	assert_string_equal(params_get(&l, "Serial"), "SN-42");
	assert_string_equal(params_get(&l, "Site"), "plant-7");
	assert_string_equal(params_get(&l, "Rev"), "B2");
	assert_null(params_get(&l, "serial"));
	assert_null(params_get(&l, NULL));
	assert_null(params_get(NULL, "Serial"));
	param_list_clear(&l);
	assert_int_equal(l.n, 0);
	assert_null(l.items);
	param_list_clear(&l);
	param_list_clear(NULL);

	/* A failure names the parameter and leaves the output alone. */
	c = config_free(c);
	c = load("endpoint = \"localhost\"; template = { name = \"T\"; parameters = ("
	         "{ name = \"Site\"; value = \"plant-7\"; },"
	         "{ name = \"Serial\"; file = \"/nonexistent/serial\"; } ); };");
	assert_int_equal(params_resolve(c, &sentinel, errbuf, sizeof(errbuf)), -ENOENT);
	assert_ptr_equal(sentinel.items, untouched);
	assert_int_equal(sentinel.n, 42);
	assert_string_equal(errbuf,
	                    "parameter 'Serial': cannot read '/nonexistent/serial': No such "
	                    "file or directory");

	/* No parameters: an empty list. */
	c = config_free(c);
	c = load("endpoint = \"localhost\"; template = { name = \"T\"; };");
	assert_int_equal(params_resolve(c, &l, errbuf, sizeof(errbuf)), 0);
	assert_int_equal(l.n, 0);
	param_list_clear(&l);
}

static void test_expand(void **state)
{
	static struct param_value items[] = {
	    {.name = (char *)"SerialNumber", .value = (char *)"SN1"},
	    {.name = (char *)"Site", .value = (char *)"plant-7"},
	    {.name = (char *)"Empty", .value = (char *)""},
	    {.name = (char *)"Dollar", .value = (char *)"${Site}"},
	};
	static const struct param_list l = {.items = items, .n = ARRAY_SIZE(items)};
	static const struct {
		const char *tmpl;
		const char *want;  /* NULL: -EINVAL */
		const char *error; /* with want NULL: part of the message */
	} cases[] = {
	    {"gw-${SerialNumber}", "gw-SN1", NULL},
	    {"${Site}/${SerialNumber}${Site}", "plant-7/SN1plant-7", NULL},
	    {"CN=${SerialNumber},O=Example", "CN=SN1,O=Example", NULL},
	    {"no references", "no references", NULL},
	    {"", "", NULL},
	    {"$$", "$", NULL},
	    {"$$${Site}", "$plant-7", NULL},
	    {"$${Site}", "${Site}", NULL},
	    {"price $5 $", "price $5 $", NULL},
	    {"a${Empty}b", "ab", NULL},
	    {"${Dollar}", "${Site}", NULL}, /* values are not expanded again */
	    {"gw-${Serial}", NULL, "'${Serial}' is not a configured template parameter"},
	    {"${serialnumber}", NULL, "'${serialnumber}'"},
	    {"${}", NULL, "'${}' is not a configured template parameter"},
	    {"gw-${SerialNumber", NULL, "unterminated '${' at offset 3"},
	    {"${", NULL, "unterminated '${' at offset 0"},
	    {"ok ${Site} then ${", NULL, "unterminated"},
	};
	char errbuf[256];

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *out = untouched;
		int r = params_expand(cases[i].tmpl, &l, &out, errbuf, sizeof(errbuf));

		if (cases[i].want) {
			if (r < 0)
				fail_msg("'%s': %s", cases[i].tmpl, errbuf);
			assert_string_equal(out, cases[i].want);
			free(out);
			continue;
		}
		assert_int_equal(r, -EINVAL);
		assert_ptr_equal(out, untouched);
		assert_contains(errbuf, cases[i].error);
	}
}

static void test_expand_without_list(void **state)
{
	char errbuf[256], *out = NULL;

	assert_int_equal(params_expand("plain $$", NULL, &out, errbuf, sizeof(errbuf)), 0);
	assert_string_equal(out, "plain $");
	free(out);
	assert_int_equal(params_expand("${A}", NULL, &out, errbuf, sizeof(errbuf)), -EINVAL);
	assert_int_equal(params_expand(NULL, NULL, &out, errbuf, sizeof(errbuf)), -EINVAL);
	/* No error buffer is fine too. */
	assert_int_equal(params_expand("${A}", NULL, &out, NULL, 0), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_literal),
	    cmocka_unit_test(test_file),
	    cmocka_unit_test(test_file_errors),
	    cmocka_unit_test(test_interface_mac),
	    cmocka_unit_test(test_machine_id),
	    cmocka_unit_test(test_hostname),
	    cmocka_unit_test(test_command_output),
	    cmocka_unit_test(test_command_environment),
	    cmocka_unit_test(test_command_failures),
	    cmocka_unit_test(test_command_timeout),
	    cmocka_unit_test(test_resolve_all),
	    cmocka_unit_test(test_expand),
	    cmocka_unit_test(test_expand_without_list),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
