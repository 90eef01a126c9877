/* `fleetprovd status`: report the committed identity and any pending attempt. */
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "credentials.h"
#include "macro.h"
#include "status.h"
#include "store.h"

/* identity.json and the pending files are small; anything bigger is not ours. */
#define STATUS_FILE_MAX (256u * 1024u)

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put)

static json_object *read_json(int dirfd, const char *name)
{
	_cleanup_free_ char *text = NULL;
	size_t len;

	if (dirfd < 0 || store_read_file(dirfd, name, STATUS_FILE_MAX, &text, &len) < 0)
		return NULL;
	return json_tokener_parse(text);
}

static const char *get_string(json_object *o, const char *key)
{
	json_object *v;

	if (!o || !json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static int64_t get_int(json_object *o, const char *key)
{
	json_object *v;

	if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return 0;
	return json_object_get_int64(v);
}

static void format_time(int64_t sec, char *buf, size_t size)
{
	time_t t = (time_t)sec;
	struct tm tm;

	if (sec <= 0 || !gmtime_r(&t, &tm) ||
	    strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(buf, size, "unknown");
}

static void format_age(int64_t seconds, char *buf, size_t size)
{
	if (seconds < 0)
		snprintf(buf, size, "in the future (clock changed?)");
	else if (seconds < 120)
		snprintf(buf, size, "%" PRId64 " s ago", seconds);
	else if (seconds < 7200)
		snprintf(buf, size, "%" PRId64 " min ago", seconds / 60);
	else
		snprintf(buf, size, "%" PRId64 " h ago", seconds / 3600);
}

/* Which step a pending attempt is at, from the files it has written so far. */
static const char *pending_step(int pending_fd)
{
	if (faccessat(pending_fd, STORE_REGISTRATION_JSON, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return "registered, committing";
	if (faccessat(pending_fd, STORE_CERTIFICATE_JSON, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return "certificate issued, RegisterThing next";
	return "key generated, CreateCertificateFromCsr next";
}

static json_object *identity_status(int dirfd, int64_t now)
{
	_cleanup_(json_object_putp) json_object *identity = NULL;
	struct cred_info info = {0};
	enum cred_state state;
	json_object *o = json_object_new_object();

	if (cred_check(dirfd, now, &state, &info) < 0)
		state = CRED_INVALID;
	json_object_object_add(o, "state", json_object_new_string(cred_state_to_string(state)));
	if (info.reason)
		json_object_object_add(o, "reason", json_object_new_string(info.reason));
	cred_info_clear(&info);

	identity = read_json(dirfd, STORE_CURRENT_LINK "/" STORE_IDENTITY_JSON);
	if (!identity)
		return o;
	static const char *const copied[] = {"thingName", "certificateId", "endpoint", "template",
	                                     "provisionedAt"};
	for (size_t i = 0; i < ARRAY_SIZE(copied); i++) {
		const char *v = get_string(identity, copied[i]);
		if (v)
			json_object_object_add(o, copied[i], json_object_new_string(v));
	}
	json_object_object_add(o, "certificateNotAfter",
	                       json_object_new_int64(get_int(identity, "certificateNotAfter")));
	return o;
}

static json_object *pending_status(int dirfd, int64_t now)
{
	_cleanup_(json_object_putp) json_object *attempt = NULL, *cert = NULL;
	_cleanup_close_ int fd = -1;
	json_object *o;

	if (dirfd >= 0)
		fd = openat(dirfd, STORE_PENDING_DIR,
		            O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return NULL;

	o = json_object_new_object();
	json_object_object_add(o, "step", json_object_new_string(pending_step(fd)));
	attempt = read_json(fd, STORE_ATTEMPT_JSON);
	if (attempt) {
		int64_t started = get_int(attempt, "startedAtUsec") / 1000000;
		const char *err = get_string(attempt, "lastError");

		json_object_object_add(o, "attempt",
		                       json_object_new_int64(get_int(attempt, "attempt")));
		json_object_object_add(o, "startedAt", json_object_new_int64(started));
		json_object_object_add(o, "ageSeconds", json_object_new_int64(now - started));
		if (err)
			json_object_object_add(o, "lastError", json_object_new_string(err));
	}
	/* The token in certificate.json is a secret: only its certificate id and age are shown. */
	cert = read_json(fd, STORE_CERTIFICATE_JSON);
	if (cert) {
		const char *id = get_string(cert, "certificateId");
		int64_t issued = get_int(cert, "issuedAtUsec") / 1000000;

		if (id)
			json_object_object_add(o, "certificateId", json_object_new_string(id));
		json_object_object_add(o, "tokenAgeSeconds", json_object_new_int64(now - issued));
	}
	return o;
}

/* For printing: "%s" with NULL is undefined behaviour, and a release build rejects it. */
static const char *text_of(json_object *o, const char *key)
{
	const char *s = get_string(o, key);

	return s ? s : "unknown";
}

static void print_text(FILE *out, const char *state_dir, json_object *identity,
                       json_object *pending)
{
	char when[64], age[64];

	fprintf(out, "State directory: %s\n", state_dir);
	fprintf(out, "Identity:        %s", text_of(identity, "state"));
	if (get_string(identity, "reason"))
		fprintf(out, " (%s)", text_of(identity, "reason"));
	fputc('\n', out);
	if (get_string(identity, "thingName")) {
		format_time(get_int(identity, "certificateNotAfter"), when, sizeof(when));
		fprintf(out, "  Thing name:    %s\n", text_of(identity, "thingName"));
		fprintf(out, "  Certificate:   %s\n", text_of(identity, "certificateId"));
		fprintf(out, "  Expires:       %s\n", when);
		fprintf(out, "  Provisioned:   %s\n", text_of(identity, "provisionedAt"));
		fprintf(out, "  Endpoint:      %s (template %s)\n", text_of(identity, "endpoint"),
		        text_of(identity, "template"));
	}
	if (!pending) {
		fprintf(out, "Pending attempt: none\n");
		return;
	}
	fprintf(out, "Pending attempt: %s\n", text_of(pending, "step"));
	if (get_int(pending, "attempt")) {
		format_age(get_int(pending, "ageSeconds"), age, sizeof(age));
		fprintf(out, "  Attempt:       %" PRId64 ", started %s\n",
		        get_int(pending, "attempt"), age);
	}
	if (get_string(pending, "certificateId")) {
		format_age(get_int(pending, "tokenAgeSeconds"), age, sizeof(age));
		fprintf(out, "  Certificate:   %s (issued %s)\n", text_of(pending, "certificateId"),
		        age);
	}
	if (get_string(pending, "lastError"))
		fprintf(out, "  Last error:    %s\n", text_of(pending, "lastError"));
}

int status_run(const char *state_dir, bool json, FILE *out)
{
	_cleanup_(json_object_putp) json_object *identity = NULL, *pending = NULL;
	_cleanup_close_ int dirfd = -1;
	int64_t now = (int64_t)time(NULL);

	dirfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0 && errno != ENOENT) {
		fprintf(stderr, "Cannot open state directory '%s': %s\n", state_dir,
		        strerror(errno));
		return 1;
	}
	identity = dirfd >= 0 ? identity_status(dirfd, now) : json_object_new_object();
	if (dirfd < 0)
		json_object_object_add(identity, "state", json_object_new_string("missing"));
	pending = pending_status(dirfd, now);

	if (json) {
		_cleanup_(json_object_putp) json_object *o = json_object_new_object();

		json_object_object_add(o, "stateDirectory", json_object_new_string(state_dir));
		json_object_object_add(o, "identity", json_object_get(identity));
		json_object_object_add(o, "pending", pending ? json_object_get(pending) : NULL);
		fprintf(out, "%s\n",
		        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
		                                              JSON_C_TO_STRING_NOSLASHESCAPE));
	} else {
		print_text(out, state_dir, identity, pending);
	}
	return 0;
}
