/*
 * Run one command the way systemd runs a Type=notify service and measure it:
 *   spawn-ready TIMEOUT_MS COMMAND [ARG...]
 * prints "ready_us exit_us cpu_us max_rss_kib exit_code anon_kib file_kib": microseconds
 * from the start to READY=1 (-1 if it never came) and to the exit, CPU time, peak RSS, and
 * the resident memory when READY=1 arrived split into the process's own (anonymous) pages
 * and file pages (libraries, shared with every other process that maps them); -1 if the
 * process was already gone.
 *
 * Why a separate program: the peak RSS the kernel reports for a child includes the memory
 * of the process it was forked from, up to its exec. Forked from the Python benchmark that
 * would be Python's 15 MiB; forked from this small program it is the command's own peak.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* A notify datagram: systemd itself reads at most this much (NOTIFY_BUFFER_MAX). */
#define NOTIFY_MAX 4096

static long long now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int notify_socket(struct sockaddr_un *ret_addr)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0)
		return -errno;
	/* An abstract address: nothing to clean up, nothing shared with other runs. */
	snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "fleetprovd-bench/%d",
	         (int)getpid());
	/* An abstract name is as long as the address says, NULs included: give its length. */
	if (bind(fd, (struct sockaddr *)&addr,
	         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
	                     strlen(addr.sun_path + 1))) < 0) {
		close(fd);
		return -errno;
	}
	*ret_addr = addr;
	return fd;
}

/* Reads every queued datagram; true if one of them has a READY=1 line. */
static bool read_ready(int fd)
{
	char buf[NOTIFY_MAX + 1];
	bool ready = false;
	ssize_t n;

	while ((n = recv(fd, buf, NOTIFY_MAX, 0)) >= 0) {
		buf[n] = '\0';
		for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
			if (strcmp(line, "READY=1") == 0)
				ready = true;
	}
	return ready;
}

/* RssAnon and RssFile from /proc/PID/status, in KiB. */
static void read_rss(pid_t pid, long *ret_anon, long *ret_file)
{
	char path[64], line[256];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		sscanf(line, "RssAnon: %ld kB", ret_anon);
		sscanf(line, "RssFile: %ld kB", ret_file);
	}
	fclose(f);
}

static pid_t spawn(char **argv, const struct sockaddr_un *addr)
{
	char env[sizeof(addr->sun_path) + 1];
	pid_t pid;

	/* "@" names the abstract address, as systemd's NOTIFY_SOCKET does. */
	snprintf(env, sizeof(env), "@%s", addr->sun_path + 1);
	if (setenv("NOTIFY_SOCKET", env, 1) < 0)
		return -1;
	pid = fork();
	if (pid == 0) {
		execvp(argv[0], argv);
		_exit(127);
	}
	return pid;
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr;
	struct rusage usage;
	long long start, ready_at = -1, exit_at, deadline;
	long anon = -1, file = -1;
	int sock, pidfd, status;
	pid_t pid;

	if (argc < 3) {
		fprintf(stderr, "usage: %s TIMEOUT_MS COMMAND [ARG...]\n", argv[0]);
		return 2;
	}
	sock = notify_socket(&addr);
	if (sock < 0) {
		fprintf(stderr, "notify socket: %s\n", strerror(-sock));
		return 2;
	}
	start = now_us();
	deadline = start + atoll(argv[1]) * 1000LL;
	pid = spawn(argv + 2, &addr);
	if (pid < 0 || (pidfd = pidfd_open(pid, 0)) < 0) {
		fprintf(stderr, "spawning %s: %s\n", argv[2], strerror(errno));
		return 2;
	}
	/* Both READY=1 and the exit wake poll at once: the timing has no polling interval. */
	for (;;) {
		struct pollfd fds[] = {{.fd = pidfd, .events = POLLIN},
		                       {.fd = sock, .events = POLLIN}};
		long long left = deadline - now_us();

		/* Read every datagram, READY=1 or not: a full queue would block the sender. */
		if (read_ready(sock) && ready_at < 0) {
			ready_at = now_us();
			read_rss(pid, &anon, &file);
		}
		if (left <= 0) {
			kill(pid, SIGKILL);
			break;
		}
		if (poll(fds, 2, (int)(left / 1000) + 1) < 0 && errno != EINTR)
			break;
		if (fds[0].revents) {
			if (read_ready(sock) && ready_at < 0)
				ready_at = now_us();
			break;
		}
	}
	if (wait4(pid, &status, 0, &usage) < 0) {
		fprintf(stderr, "wait4: %s\n", strerror(errno));
		return 2;
	}
	exit_at = now_us();
	printf("%lld %lld %lld %ld %d %ld %ld\n", ready_at < 0 ? -1 : ready_at - start,
	       exit_at - start,
	       (long long)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000LL +
	           usage.ru_utime.tv_usec + usage.ru_stime.tv_usec,
	       usage.ru_maxrss, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
	       anon, file);
	return 0;
}
