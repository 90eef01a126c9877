/* Runs pre-provisioning hook executables without blocking the broker. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hook.h"
#include "util.h"

extern char **environ;

struct hook {
	pid_t pid;
	int in_fd;  /* our end of the hook's stdin */
	int out_fd; /* our end of the hook's stdout */
	char *input;
	size_t input_len, input_off;
	char *output;
	size_t output_len;
	bool overflow;
	bool finished;
	bool timed_out;
	int status;
	uint64_t deadline_usec;
};

static int set_nonblock(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return NEG_ERRNO();
	return 0;
}

static int spawn(struct hook *h, const char *exe, int child_in, int child_out)
{
	posix_spawn_file_actions_t actions;
	posix_spawnattr_t attr;
	sigset_t defaults, empty;
	char *argv[] = {(char *)exe, NULL};
	int r;

	/* The broker ignores SIGPIPE; the hook gets ordinary signal handling, and its own
	 * process group so that a timeout kills whatever it started too. */
	sigemptyset(&empty);
	sigemptyset(&defaults);
	sigaddset(&defaults, SIGPIPE);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
	                                    POSIX_SPAWN_SETPGROUP);
	posix_spawnattr_setsigdefault(&attr, &defaults);
	posix_spawnattr_setsigmask(&attr, &empty);
	posix_spawnattr_setpgroup(&attr, 0);
	posix_spawn_file_actions_init(&actions);
	posix_spawn_file_actions_adddup2(&actions, child_in, STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&actions, child_out, STDOUT_FILENO);
	r = posix_spawn(&h->pid, exe, &actions, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&actions);
	posix_spawnattr_destroy(&attr);
	return -r;
}

static int open_pipes(int in[2], int out[2])
{
	if (pipe2(in, O_CLOEXEC) < 0)
		return NEG_ERRNO();
	if (pipe2(out, O_CLOEXEC) < 0) {
		int r = NEG_ERRNO();

		close(in[0]);
		close(in[1]);
		return r;
	}
	return 0;
}

int hook_start(const char *exe, const char *input, size_t len, uint64_t now_usec, struct hook **ret)
{
	struct hook *h = calloc(1, sizeof(*h));
	int in[2], out[2], r;

	if (!h)
		return -ENOMEM;
	*h = (struct hook){.pid = -1, .in_fd = -1, .out_fd = -1};
	h->input = strndup(input, len);
	r = h->input ? open_pipes(in, out) : -ENOMEM;
	if (r < 0) {
		hook_free(h);
		return r;
	}
	h->input_len = len;
	h->in_fd = in[1];
	h->out_fd = out[0];
	h->deadline_usec = now_usec + HOOK_TIMEOUT_USEC;
	r = spawn(h, exe, in[0], out[1]);
	close(in[0]);
	close(out[1]);
	if (r >= 0)
		r = set_nonblock(h->in_fd);
	if (r >= 0)
		r = set_nonblock(h->out_fd);
	if (r < 0) {
		hook_free(h);
		return r;
	}
	*ret = h;
	return 0;
}

static void feed_input(struct hook *h)
{
	while (h->in_fd >= 0 && h->input_off < h->input_len) {
		ssize_t n = write(h->in_fd, h->input + h->input_off, h->input_len - h->input_off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0)
			break; /* EPIPE: the hook does not read its input; that is its business */
		h->input_off += (size_t)n;
	}
	closep(&h->in_fd);
}

static void drain_output(struct hook *h)
{
	char buf[4096];

	while (h->out_fd >= 0) {
		ssize_t n = read(h->out_fd, buf, sizeof(buf));
		char *grown;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		if (h->output_len + (size_t)n > HOOK_OUTPUT_MAX) {
			h->overflow = true;
			continue;
		}
		grown = realloc(h->output, h->output_len + (size_t)n + 1);
		if (!grown)
			return;
		h->output = grown;
		memcpy(h->output + h->output_len, buf, (size_t)n);
		h->output_len += (size_t)n;
		h->output[h->output_len] = '\0';
	}
}

static void kill_and_reap(struct hook *h)
{
	if (h->pid <= 0)
		return;
	(void)kill(-h->pid, SIGKILL);
	(void)kill(h->pid, SIGKILL);
	while (waitpid(h->pid, &h->status, 0) < 0 && errno == EINTR)
		;
	h->pid = -1;
}

int hook_poll(struct hook *h, uint64_t now_usec)
{
	pid_t pid;

	if (h->finished)
		return 1;
	feed_input(h);
	drain_output(h);
	pid = waitpid(h->pid, &h->status, WNOHANG);
	if (pid == h->pid) {
		h->pid = -1;
		drain_output(h); /* what it wrote just before exiting */
		h->finished = true;
	} else if (now_usec >= h->deadline_usec) {
		kill_and_reap(h);
		h->timed_out = true;
		h->finished = true;
	}
	return h->finished ? 1 : 0;
}

static int process_failure(struct hook *h, char *errbuf, size_t errsize)
{
	if (h->timed_out)
		snprintf(errbuf, errsize, "Pre-provisioning hook timed out after %d seconds",
		         (int)(HOOK_TIMEOUT_USEC / USEC_PER_SEC));
	else if (WIFSIGNALED(h->status))
		snprintf(errbuf, errsize, "Pre-provisioning hook failed: killed by signal %d",
		         WTERMSIG(h->status));
	else if (!WIFEXITED(h->status) || WEXITSTATUS(h->status) != 0)
		snprintf(errbuf, errsize, "Pre-provisioning hook failed: exit status %d",
		         WEXITSTATUS(h->status));
	else if (h->overflow)
		snprintf(errbuf, errsize, "Pre-provisioning hook returned more than %d bytes",
		         HOOK_OUTPUT_MAX);
	else
		return 0;
	return -EACCES;
}

static int check_overrides(json_object *answer, json_object **ret)
{
	json_object *overrides;

	*ret = NULL;
	if (!json_object_object_get_ex(answer, "parameterOverrides", &overrides) ||
	    json_object_is_type(overrides, json_type_null))
		return 0;
	if (!json_object_is_type(overrides, json_type_object))
		return -EINVAL;
	json_object_object_foreach(overrides, key, value)
	{
		(void)key;
		if (!json_object_is_type(value, json_type_string))
			return -EINVAL;
	}
	*ret = json_object_get(overrides);
	return 0;
}

int hook_result(struct hook *h, json_object **ret_overrides, char *errbuf, size_t errsize)
{
	_cleanup_(json_object_putp) json_object *answer = NULL;
	json_object *allow, *overrides = NULL;
	int r = process_failure(h, errbuf, errsize);

	if (r < 0)
		return r;
	answer = h->output ? util_json_parse(h->output, h->output_len) : NULL;
	if (!answer || !json_object_is_type(answer, json_type_object) ||
	    !json_object_object_get_ex(answer, "allowProvisioning", &allow) ||
	    !json_object_is_type(allow, json_type_boolean) ||
	    check_overrides(answer, &overrides) < 0) {
		snprintf(errbuf, errsize, "Pre-provisioning hook returned an invalid response");
		return -EACCES;
	}
	if (!json_object_get_boolean(allow)) {
		json_object_put(overrides);
		snprintf(errbuf, errsize,
		         "Pre-provisioning hook denied provisioning (allowProvisioning is false)");
		return -EACCES;
	}
	*ret_overrides = overrides;
	return 0;
}

struct hook *hook_free(struct hook *h)
{
	if (!h)
		return NULL;
	kill_and_reap(h);
	closep(&h->in_fd);
	closep(&h->out_fd);
	free(h->input);
	free(h->output);
	free(h);
	return NULL;
}
