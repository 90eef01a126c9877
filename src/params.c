/*
 * Template parameter sources (design.md decision 9): a literal, the first line of a file, an
 * interface's MAC address, the machine ID, the host name or the first line a command prints.
 * Every value is checked before it goes into a RegisterThing request or an MQTT client id.
 */
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "params.h"

/* DMI, sysfs and machine-id values are one short line; a bounded read keeps a bad path cheap. */
#define PARAM_READ_MAX 4096

/* A program and a few options: the command line is split on blanks, not run by a shell. */
#define COMMAND_ARGS_MAX 32

/* machine-id(5): 32 lower-case hexadecimal characters. */
#define MACHINE_ID_LEN 32

/* "aa:bb:cc:dd:ee:ff": an Ethernet (EUI-48) address as sysfs prints it. */
#define MAC_ADDRESS_LEN 17

/* Without a pidfd, how often at most to ask whether a command has exited. */
#define CHILD_RECHECK_MAX_MS 50

#define MACHINE_ID_PATH "/etc/machine-id"
#define SYS_CLASS_NET   "/sys/class/net"

/* Quoted names and paths are cut here so a message keeps its tail. */
#define QUOTE_MAX 128

/* Prefix for the fixed system paths above; only tests change it. */
static const char *root_prefix = "";

void params_set_root(const char *prefix)
{
	root_prefix = prefix ? prefix : "";
}

static int fail(char *errbuf, size_t errsize, int r, const char *fmt, ...) _printf_(4, 5);
static int fail(char *errbuf, size_t errsize, int r, const char *fmt, ...)
{
	va_list ap;

	if (errbuf && errsize > 0) {
		va_start(ap, fmt);
		vsnprintf(errbuf, errsize, fmt, ap);
		va_end(ap);
	}
	return r;
}

static const char *param_name(const struct config_param *p)
{
	return p->name ? p->name : "?";
}

/* "the value from file '/x'": the noun phrase used in every message about a value. */
static void describe_source(const struct config_param *p, char *buf, size_t size)
{
	const char *arg = p->arg ? p->arg : "";

	switch (p->source) {
	case PARAM_SOURCE_VALUE:
		snprintf(buf, size, "the literal value");
		break;
	case PARAM_SOURCE_FILE:
		snprintf(buf, size, "the value from file '%.*s'", QUOTE_MAX, arg);
		break;
	case PARAM_SOURCE_INTERFACE_MAC:
		snprintf(buf, size, "the MAC address of interface '%.*s'", QUOTE_MAX, arg);
		break;
	case PARAM_SOURCE_MACHINE_ID:
		snprintf(buf, size, "the machine ID");
		break;
	case PARAM_SOURCE_HOSTNAME:
		snprintf(buf, size, "the host name");
		break;
	case PARAM_SOURCE_COMMAND:
		snprintf(buf, size, "the output of command '%.*s'", QUOTE_MAX, arg);
		break;
	default:
		snprintf(buf, size, "an unknown source");
		break;
	}
}

/* Length of the UTF-8 sequence at s (n bytes available), or 0 when it is not valid UTF-8. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *ret_cp)
{
	static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
	size_t len;
	uint32_t cp;

	if (s[0] < 0x80) {
		*ret_cp = s[0];
		return 1;
	}
	if ((s[0] & 0xe0) == 0xc0)
		len = 2, cp = s[0] & 0x1fu;
	else if ((s[0] & 0xf0) == 0xe0)
		len = 3, cp = s[0] & 0x0fu;
	else if ((s[0] & 0xf8) == 0xf0)
		len = 4, cp = s[0] & 0x07u;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3fu);
	}
	/* Overlong forms, surrogates and code points past Unicode are all invalid. */
	if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	*ret_cp = cp;
	return len;
}

static int validate_value(const struct config_param *p, const char *v, size_t len, char *errbuf,
                          size_t errsize)
{
	char what[QUOTE_MAX * 2];

	describe_source(p, what, sizeof(what));
	if (len == 0)
		return fail(errbuf, errsize, -EINVAL, "parameter '%s': %s is empty", param_name(p),
		            what);
	if (len > PARAM_VALUE_MAX)
		return fail(errbuf, errsize, -EINVAL,
		            "parameter '%s': %s is %zu bytes long, more than the limit of %d",
		            param_name(p), what, len, PARAM_VALUE_MAX);
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		size_t n = utf8_decode((const unsigned char *)v + i, len - i, &cp);

		if (n == 0)
			return fail(errbuf, errsize, -EINVAL,
			            "parameter '%s': %s is not valid UTF-8 (byte %zu)",
			            param_name(p), what, i);
		/* C0, DEL and C1 controls have no place in a thing name or an MQTT client id. */
		if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
			return fail(
			    errbuf, errsize, -EINVAL,
			    "parameter '%s': %s contains control character U+%04X (byte %zu)",
			    param_name(p), what, cp, i);
		i += n;
	}
	return 0;
}

static bool is_padding(char c)
{
	/* DMI strings are often padded with blanks, some firmware pads with NULs. */
	return c == '\0' || c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* The first line of buf[0..len), without padding at either end. */
static void first_line(const char *buf, size_t len, const char **ret_start, size_t *ret_len)
{
	const char *nl = memchr(buf, '\n', len);
	size_t n = nl ? (size_t)(nl - buf) : len;

	while (n > 0 && is_padding(buf[0]))
		buf++, n--;
	while (n > 0 && is_padding(buf[n - 1]))
		n--;
	*ret_start = buf;
	*ret_len = n;
}

/* Check the first line of buf[0..len) and hand it out as a new string. */
static int finish_value(const struct config_param *p, const char *buf, size_t len, bool complete,
                        char **ret, char *errbuf, size_t errsize)
{
	char what[QUOTE_MAX * 2];
	const char *start;
	size_t n;
	char *v;
	int r;

	/* Without a newline in the first PARAM_READ_MAX bytes, the line was cut. */
	if (!complete && !memchr(buf, '\n', len)) {
		describe_source(p, what, sizeof(what));
		return fail(errbuf, errsize, -EINVAL,
		            "parameter '%s': the first line of %s is longer than %d bytes",
		            param_name(p), what, PARAM_READ_MAX);
	}
	first_line(buf, len, &start, &n);
	r = validate_value(p, start, n, errbuf, errsize);
	if (r < 0)
		return r;
	v = strndup(start, n);
	if (!v)
		return fail(errbuf, errsize, -ENOMEM, "out of memory");
	*ret = v;
	return 0;
}

/*
 * Read up to PARAM_READ_MAX bytes of a regular file. *ret_complete tells whether that was
 * the whole file.
 */
static int read_head(const char *path, char *buf, size_t *ret_len, bool *ret_complete)
{
	_cleanup_close_ int fd = -1;
	size_t len = 0;
	struct stat st;

	/* O_NONBLOCK: a FIFO at that path must not hang the boot; fstat then rejects it. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return NEG_ERRNO();
	if (fstat(fd, &st) < 0)
		return NEG_ERRNO();
	if (S_ISDIR(st.st_mode))
		return -EISDIR;
	if (!S_ISREG(st.st_mode))
		return -EBADFD;
	/* One byte past the limit tells a cut line from a line that fills the buffer exactly. */
	while (len <= PARAM_READ_MAX) {
		ssize_t n = read(fd, buf + len, PARAM_READ_MAX + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return NEG_ERRNO();
		if (n == 0)
			break;
		len += (size_t)n;
		if (memchr(buf, '\n', len))
			break;
	}
	*ret_complete = len <= PARAM_READ_MAX;
	*ret_len = len > PARAM_READ_MAX ? PARAM_READ_MAX : len;
	return 0;
}

static int read_first_line(const struct config_param *p, const char *path, char **ret, char *errbuf,
                           size_t errsize)
{
	char buf[PARAM_READ_MAX + 1];
	bool complete = false;
	size_t len = 0;
	int r;

	r = read_head(path, buf, &len, &complete);
	if (r == -EBADFD)
		return fail(errbuf, errsize, -EINVAL,
		            "parameter '%s': '%.*s' is not a regular file", param_name(p),
		            QUOTE_MAX, path);
	if (r < 0)
		return fail(errbuf, errsize, r, "parameter '%s': cannot read '%.*s': %s",
		            param_name(p), QUOTE_MAX, path, strerror(-r));
	return finish_value(p, buf, len, complete, ret, errbuf, errsize);
}

static int resolve_file(const struct config_param *p, char **ret, char *errbuf, size_t errsize)
{
	if (!p->arg || p->arg[0] != '/')
		return fail(errbuf, errsize, -EINVAL,
		            "parameter '%s': file source needs an absolute path", param_name(p));
	return read_first_line(p, p->arg, ret, errbuf, errsize);
}

/* The kernel's rule for interface names (dev_valid_name), which also keeps the path inside sysfs.
 */
static bool interface_name_is_valid(const char *s)
{
	size_t len = strnlen(s, IFNAMSIZ);

	if (len == 0 || len >= IFNAMSIZ || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '/' || s[i] == ':' || isspace((unsigned char)s[i]) ||
		    iscntrl((unsigned char)s[i]))
			return false;
	return true;
}

static bool mac_is_valid(const char *s)
{
	if (strlen(s) != MAC_ADDRESS_LEN)
		return false;
	for (size_t i = 0; i < MAC_ADDRESS_LEN; i++)
		if (i % 3 == 2 ? s[i] != ':' : !isxdigit((unsigned char)s[i]))
			return false;
	return true;
}

static void ascii_lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

static int resolve_mac(const struct config_param *p, char **ret, char *errbuf, size_t errsize)
{
	_cleanup_free_ char *path = NULL, *v = NULL;
	int r;

	if (!p->arg || !interface_name_is_valid(p->arg))
		return fail(errbuf, errsize, -EINVAL,
		            "parameter '%s': '%.*s' is not a valid network interface name",
		            param_name(p), QUOTE_MAX, p->arg ? p->arg : "");
	if (asprintf(&path, "%s" SYS_CLASS_NET "/%s/address", root_prefix, p->arg) < 0)
		return fail(errbuf, errsize, -ENOMEM, "out of memory");
	if (access(path, F_OK) < 0 && errno == ENOENT)
		return fail(errbuf, errsize, -ENODEV, "parameter '%s': no network interface '%s'",
		            param_name(p), p->arg);
	r = read_first_line(p, path, &v, errbuf, errsize);
	if (r < 0)
		return r;
	if (!mac_is_valid(v))
		return fail(errbuf, errsize, -EINVAL,
		            "parameter '%s': interface '%s' has no Ethernet address (got '%s')",
		            param_name(p), p->arg, v);
	/* Loopback and some virtual links report all zeros: no identity in that. */
	if (strcmp(v, "00:00:00:00:00:00") == 0)
		return fail(
		    errbuf, errsize, -EADDRNOTAVAIL,
		    "parameter '%s': interface '%s' has no hardware address (00:00:00:00:00:00)",
		    param_name(p), p->arg);
	ascii_lower(v);
	*ret = TAKE_PTR(v);
	return 0;
}

static int resolve_machine_id(const struct config_param *p, char **ret, char *errbuf,
                              size_t errsize)
{
	_cleanup_free_ char *path = NULL, *v = NULL;
	int r;

	if (asprintf(&path, "%s" MACHINE_ID_PATH, root_prefix) < 0)
		return fail(errbuf, errsize, -ENOMEM, "out of memory");
	r = read_first_line(p, path, &v, errbuf, errsize);
	if (r < 0)
		return r;
	if (strlen(v) != MACHINE_ID_LEN || strspn(v, "0123456789abcdefABCDEF") != MACHINE_ID_LEN)
		return fail(errbuf, errsize, -EINVAL,
		            "parameter '%s': '%s' holds no machine ID (want %d hexadecimal "
		            "characters, got '%.*s')",
		            param_name(p), MACHINE_ID_PATH, MACHINE_ID_LEN, QUOTE_MAX, v);
	ascii_lower(v);
	*ret = TAKE_PTR(v);
	return 0;
}

static int resolve_hostname(const struct config_param *p, char **ret, char *errbuf, size_t errsize)
{
	char buf[HOST_NAME_MAX + 1] = "";

	if (gethostname(buf, sizeof(buf)) < 0) {
		int r = NEG_ERRNO();
		return fail(errbuf, errsize, r, "parameter '%s': cannot get the host name: %s",
		            param_name(p), strerror(-r));
	}
	/* gethostname() need not terminate a truncated name. */
	buf[sizeof(buf) - 1] = '\0';
	return finish_value(p, buf, strlen(buf), true, ret, errbuf, errsize);
}

/* A running command: its pid, a pidfd to wait on, and the read end of its stdout. */
struct child {
	pid_t pid;
	int pidfd;
	int out;
	bool reaped;
	int status;
};

static void child_reap(struct child *c)
{
	if (!c->reaped && c->pid > 0) {
		/* Only reached on error paths or after the deadline: nothing to wait for. */
		(void)kill(c->pid, SIGKILL);
		while (waitpid(c->pid, &c->status, 0) < 0 && errno == EINTR)
			;
		c->reaped = true;
	}
	closep(&c->pidfd);
	closep(&c->out);
	c->pidfd = c->out = -1;
}

/* Split on blanks, in place. Returns argc, or -E2BIG for too many words. */
static int split_argv(char *line, char **argv, size_t max)
{
	size_t argc = 0;
	char *save = NULL;

	for (char *w = strtok_r(line, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
		if (argc + 1 >= max)
			return -E2BIG;
		argv[argc++] = w;
	}
	argv[argc] = NULL;
	return (int)argc;
}

static int spawn_actions(posix_spawn_file_actions_t *fa, posix_spawnattr_t *attr, int out)
{
	sigset_t none, all;
	int r;

	sigemptyset(&none);
	sigfillset(&all);
	/* stdin from /dev/null, stdout into the pipe, stderr discarded, nothing else inherited. */
	r = posix_spawn_file_actions_addopen(fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	if (r == 0)
		r = posix_spawn_file_actions_adddup2(fa, out, STDOUT_FILENO);
	if (r == 0)
		r = posix_spawn_file_actions_addopen(fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
	if (r == 0)
		r = posix_spawn_file_actions_addclosefrom_np(fa, STDERR_FILENO + 1);
	/* The daemon blocks signals for sd-event; the command must start with a clean slate. */
	if (r == 0)
		r = posix_spawnattr_setsigmask(attr, &none);
	if (r == 0)
		r = posix_spawnattr_setsigdefault(attr, &all);
	if (r == 0)
		r = posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	return -r;
}

static int spawn_child(char *const argv[], struct child *c)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	int pipefd[2], r;

	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return NEG_ERRNO();
	c->out = pipefd[0];
	_cleanup_close_ int in = pipefd[1];
	/* Reading must never block: the deadline is kept by poll() alone. */
	if (fcntl(c->out, F_SETFL, O_NONBLOCK) < 0)
		return NEG_ERRNO();
	if (posix_spawn_file_actions_init(&fa) != 0)
		return -ENOMEM;
	if (posix_spawnattr_init(&attr) != 0) {
		posix_spawn_file_actions_destroy(&fa);
		return -ENOMEM;
	}
	r = spawn_actions(&fa, &attr, in);
	if (r == 0)
		r = -posix_spawn(&c->pid, argv[0], &fa, &attr, argv, environ);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	if (r < 0)
		return r;
	c->pidfd = pidfd_open(c->pid, 0);
	if (c->pidfd < 0 && errno != ENOSYS)
		return NEG_ERRNO();
	return 0;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Read what is there; keep up to the buffer's size and drop the rest so the child never stalls. */
static int drain(struct child *c, char *buf, size_t size, size_t *len)
{
	char scratch[PARAM_READ_MAX];

	for (;;) {
		bool keep = *len < size;
		ssize_t n =
		    read(c->out, keep ? buf + *len : scratch, keep ? size - *len : sizeof(scratch));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 0;
		if (n < 0)
			return NEG_ERRNO();
		if (n == 0) {
			closep(&c->out);
			c->out = -1;
			return 0;
		}
		if (keep)
			*len += (size_t)n;
	}
}

/* Reap the child if it has exited. */
static int try_reap(struct child *c)
{
	pid_t w = waitpid(c->pid, &c->status, WNOHANG);

	if (w < 0 && errno == EINTR)
		return 0;
	if (w < 0) {
		/* Not ours to reap (ECHILD): never signal that pid again. */
		c->reaped = true;
		return NEG_ERRNO();
	}
	if (w == c->pid)
		c->reaped = true;
	return 0;
}

/*
 * Collect stdout until the child exits; -ETIME once the deadline passes. The pidfd wakes us
 * when the child exits. Without one (kernel < 5.3, or valgrind), poll() wakes up at growing
 * intervals to ask waitpid(); a command that exits quickly still costs only a few ms.
 */
static int wait_child(struct child *c, uint32_t timeout_ms, char *buf, size_t size, size_t *len)
{
	uint64_t deadline = now_ms() + timeout_ms;
	int recheck_ms = 1, r;

	while (!c->reaped) {
		struct pollfd fds[2] = {{.fd = c->out, .events = POLLIN},
		                        {.fd = c->pidfd, .events = POLLIN}};
		uint64_t now = now_ms();
		int wait_ms;

		if (now >= deadline)
			return -ETIME;
		wait_ms = (int)(deadline - now);
		if (c->pidfd < 0) {
			wait_ms = wait_ms < recheck_ms ? wait_ms : recheck_ms;
			recheck_ms = recheck_ms * 2 > CHILD_RECHECK_MAX_MS ? CHILD_RECHECK_MAX_MS
			                                                   : recheck_ms * 2;
		}
		/* A negative fd is skipped by poll(): the pipe at EOF, or no pidfd. */
		r = poll(fds, ARRAY_SIZE(fds), wait_ms);
		if (r < 0 && errno != EINTR)
			return NEG_ERRNO();
		if (r > 0 && c->out >= 0 && fds[0].revents) {
			r = drain(c, buf, size, len);
			if (r < 0)
				return r;
		}
		if (c->pidfd < 0 || fds[1].revents) {
			r = try_reap(c);
			if (r < 0)
				return r;
		}
	}
	/* Output written just before exit is still in the pipe. */
	return c->out >= 0 ? drain(c, buf, size, len) : 0;
}

static int command_status(const struct config_param *p, int status, char *errbuf, size_t errsize)
{
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	if (WIFEXITED(status))
		return fail(errbuf, errsize, -EIO,
		            "parameter '%s': command '%.*s' failed with exit status %d",
		            param_name(p), QUOTE_MAX, p->arg, WEXITSTATUS(status));
	if (WIFSIGNALED(status))
		return fail(errbuf, errsize, -EIO,
		            "parameter '%s': command '%.*s' was killed by signal SIG%s",
		            param_name(p), QUOTE_MAX, p->arg,
		            sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?");
	return fail(errbuf, errsize, -EIO, "parameter '%s': command '%.*s' ended abnormally",
	            param_name(p), QUOTE_MAX, p->arg);
}

static int run_command(const struct config_param *p, char *buf, size_t *len, bool *complete,
                       char *errbuf, size_t errsize)
{
	_cleanup_(child_reap) struct child c = {.pidfd = -1, .out = -1};
	_cleanup_free_ char *line = strdup(p->arg);
	char *argv[COMMAND_ARGS_MAX + 1];
	int r;

	if (!line)
		return fail(errbuf, errsize, -ENOMEM, "out of memory");
	r = split_argv(line, argv, ARRAY_SIZE(argv));
	if (r <= 0 || argv[0][0] != '/')
		return fail(
		    errbuf, errsize, r < 0 ? r : -EINVAL,
		    "parameter '%s': command '%.*s' must be an absolute program path and at "
		    "most %d arguments",
		    param_name(p), QUOTE_MAX, p->arg, COMMAND_ARGS_MAX - 1);
	/* posix_spawn() reports a failed exec, but not everywhere (valgrind): ask first. */
	if (faccessat(AT_FDCWD, argv[0], X_OK, AT_EACCESS) < 0)
		r = NEG_ERRNO();
	else
		r = spawn_child(argv, &c);
	if (r < 0)
		return fail(errbuf, errsize, r, "parameter '%s': cannot run command '%.*s': %s",
		            param_name(p), QUOTE_MAX, p->arg, strerror(-r));
	r = wait_child(&c, p->timeout_ms, buf, PARAM_READ_MAX + 1, len);
	if (r == -ETIME)
		return fail(errbuf, errsize, r,
		            "parameter '%s': command '%.*s' did not finish within %" PRIu32
		            " ms and was killed",
		            param_name(p), QUOTE_MAX, p->arg, p->timeout_ms);
	if (r < 0)
		return fail(errbuf, errsize, r, "parameter '%s': command '%.*s': %s", param_name(p),
		            QUOTE_MAX, p->arg, strerror(-r));
	*complete = *len <= PARAM_READ_MAX;
	*len = *len > PARAM_READ_MAX ? PARAM_READ_MAX : *len;
	return command_status(p, c.status, errbuf, errsize);
}

static int resolve_command(const struct config_param *p, char **ret, char *errbuf, size_t errsize)
{
	char buf[PARAM_READ_MAX + 1];
	bool complete = false;
	size_t len = 0;
	int r;

	if (!p->arg)
		return fail(errbuf, errsize, -EINVAL,
		            "parameter '%s': command source needs a command", param_name(p));
	if (p->timeout_ms == 0)
		return fail(errbuf, errsize, -EINVAL, "parameter '%s': command needs a timeout",
		            param_name(p));
	r = run_command(p, buf, &len, &complete, errbuf, errsize);
	if (r < 0)
		return r;
	return finish_value(p, buf, len, complete, ret, errbuf, errsize);
}

static int resolve_literal(const struct config_param *p, char **ret, char *errbuf, size_t errsize)
{
	size_t len = p->arg ? strlen(p->arg) : 0;
	char *v;
	int r;

	r = validate_value(p, p->arg ? p->arg : "", len, errbuf, errsize);
	if (r < 0)
		return r;
	v = strdup(p->arg);
	if (!v)
		return fail(errbuf, errsize, -ENOMEM, "out of memory");
	*ret = v;
	return 0;
}

int params_resolve_one(const struct config_param *p, char **ret_value, char *errbuf, size_t errsize)
{
	if (!p || !ret_value)
		return fail(errbuf, errsize, -EINVAL, "no parameter");
	switch (p->source) {
	case PARAM_SOURCE_VALUE:
		return resolve_literal(p, ret_value, errbuf, errsize);
	case PARAM_SOURCE_FILE:
		return resolve_file(p, ret_value, errbuf, errsize);
	case PARAM_SOURCE_INTERFACE_MAC:
		return resolve_mac(p, ret_value, errbuf, errsize);
	case PARAM_SOURCE_MACHINE_ID:
		return resolve_machine_id(p, ret_value, errbuf, errsize);
	case PARAM_SOURCE_HOSTNAME:
		return resolve_hostname(p, ret_value, errbuf, errsize);
	case PARAM_SOURCE_COMMAND:
		return resolve_command(p, ret_value, errbuf, errsize);
	default:
		return fail(errbuf, errsize, -EINVAL, "parameter '%s': unknown source %d",
		            param_name(p), (int)p->source);
	}
}

int params_resolve(const struct config *cfg, struct param_list *ret, char *errbuf, size_t errsize)
{
	_cleanup_(param_list_clear) struct param_list l = {0};
	int r;

	if (!cfg || !ret)
		return fail(errbuf, errsize, -EINVAL, "no configuration");
	if (cfg->n_params > 0) {
		l.items = calloc(cfg->n_params, sizeof(*l.items));
		if (!l.items)
			return fail(errbuf, errsize, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < cfg->n_params; i++) {
		/* Counted first so the cleanup sees a half-filled entry. */
		struct param_value *item = &l.items[l.n++];

		item->name = strdup(cfg->params[i].name);
		if (!item->name)
			return fail(errbuf, errsize, -ENOMEM, "out of memory");
		r = params_resolve_one(&cfg->params[i], &item->value, errbuf, errsize);
		if (r < 0)
			return r;
	}
	*ret = l;
	l = (struct param_list){0};
	return 0;
}

static const char *lookup(const struct param_list *l, const char *name, size_t len)
{
	for (size_t i = 0; l && i < l->n; i++)
		if (l->items[i].name && strlen(l->items[i].name) == len &&
		    memcmp(l->items[i].name, name, len) == 0)
			return l->items[i].value;
	return NULL;
}

const char *params_get(const struct param_list *l, const char *name)
{
	return name ? lookup(l, name, strlen(name)) : NULL;
}

/* Write n bytes at out + *len when out is set; always count them. */
static int emit(char *out, size_t *len, const char *s, size_t n)
{
	if (n > SIZE_MAX - 1 - *len)
		return -E2BIG;
	if (out)
		memcpy(out + *len, s, n);
	*len += n;
	return 0;
}

/* One walk over tmpl: measures when out is NULL, writes when it is not. */
static int expand(const char *tmpl, const struct param_list *l, char *out, size_t *ret_len,
                  char *errbuf, size_t errsize)
{
	size_t len = 0;
	int r = 0;

	for (const char *p = tmpl; *p && r == 0;) {
		if (p[0] == '$' && p[1] == '$') {
			r = emit(out, &len, "$", 1), p += 2;
		} else if (p[0] == '$' && p[1] == '{') {
			const char *name = p + 2, *end = strchr(name, '}');
			const char *v;

			if (!end)
				return fail(errbuf, errsize, -EINVAL,
				            "unterminated '${' at offset %zu: write '${Name}', or "
				            "'$$' for a literal '$'",
				            (size_t)(p - tmpl));
			v = lookup(l, name, (size_t)(end - name));
			if (!v)
				return fail(errbuf, errsize, -EINVAL,
				            "'${%.*s}' is not a configured template parameter",
				            (int)(end - name) > QUOTE_MAX ? QUOTE_MAX
				                                          : (int)(end - name),
				            name);
			r = emit(out, &len, v, strlen(v)), p = end + 1;
		} else {
			r = emit(out, &len, p, 1), p++;
		}
	}
	if (r < 0)
		return fail(errbuf, errsize, r, "expansion is too long");
	*ret_len = len;
	return 0;
}

int params_expand(const char *tmpl, const struct param_list *l, char **ret, char *errbuf,
                  size_t errsize)
{
	size_t len = 0, written = 0;
	char *out;
	int r;

	if (!tmpl || !ret)
		return fail(errbuf, errsize, -EINVAL, "no template");
	r = expand(tmpl, l, NULL, &len, errbuf, errsize);
	if (r < 0)
		return r;
	out = malloc(len + 1);
	if (!out)
		return fail(errbuf, errsize, -ENOMEM, "out of memory");
	r = expand(tmpl, l, out, &written, errbuf, errsize);
	if (r < 0) {
		free(out);
		return r;
	}
	out[written] = '\0';
	*ret = out;
	return 0;
}

void param_list_clear(struct param_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++) {
		free(l->items[i].name);
		free(l->items[i].value);
	}
	free(l->items);
	*l = (struct param_list){0};
}
