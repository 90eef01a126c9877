/*
 * The provisioning state machine (design.md data flow, decisions 1, 6, 7, 8, 13).
 *
 * PREPARING -> CLOCK_WAIT -> CONNECTING -> SUBSCRIBING -> CSR_SENT -> REGISTER_SENT
 *           -> COMMITTING -> VERIFYING -> DONE, with BACKOFF between failed attempts.
 *
 * Each state has one entry function (enter_*); transport events go through
 * on_transport_event, which switches on the state and then on the event; every waiting
 * state arms the single deadline timer. pending/ mirrors what AWS IoT has already done, so a
 * retry or a restart resumes at the right step and never registers a certificate twice.
 * This is the module that logs and reports STATUS=; secrets (key, token) never reach either.
 */
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "credentials.h"
#include "keygen.h"
#include "log.h"
#include "message-ids.h"
#include "notify.h"
#include "openssl-util.h"
#include "protocol.h"
#include "provision.h"

/* A clock that is behind is re-read this often; time sync usually needs a few seconds. */
#define CLOCK_RECHECK_USEC (5 * USEC_PER_SEC)
/* EXTEND_TIMEOUT_USEC= covers each wait plus this, for the work that follows the wait. */
#define EXTEND_MARGIN_USEC (30 * USEC_PER_SEC)
/* spec §5.6 step 9: AWS IoT allows one CONNECT per second per client id. */
#define RECONNECT_MIN_USEC USEC_PER_SEC
/* A user-supplied key or CSR: an RSA 4096 PKCS#8 PEM is about 3.3 KB. */
#define USER_PEM_MAX (64u * 1024u)
/* Tokens refused more than this in one run mean something else is wrong: back off then. */
#define RESTART_FLOWS_AT_ONCE_MAX 1u
/* Reasons and hints go to the log, STATUS= and attempt.json; four 256-byte topics must fit. */
#define TEXT_MAX 1536

enum error_class {
	ERROR_TRANSIENT,
	ERROR_PERMANENT,
	ERROR_CONFIG,
};

/* One failed attempt, described for the log, STATUS= and attempt.json. */
struct failure {
	enum error_class class;
	char reason[TEXT_MAX]; /* what happened, for the log and attempt.json */
	char status[TEXT_MAX]; /* the STATUS= words; empty means reason */
	char hint[TEXT_MAX];   /* the likely fix (permanent class), may be empty */
	bool rejection;        /* an AWS "rejected" reply or a refused connection */
	int aws_status;
	const char *aws_error;
	bool throttled; /* paced by the throttle window (429 or a Throttling* errorCode) */
};

struct prov {
	sd_event *event;
	struct prov_settings settings; /* pointers borrowed from the caller */
	struct store *store;
	struct transport transport;
	prov_done_fn done;
	void *userdata;

	enum prov_state state;
	enum prov_result result;
	sd_event_source *timer; /* the one deadline, backoff or clock re-check */
	sd_event_source *done_source;
	bool connect_issued; /* a connect was started and not yet closed */
	bool finished;
	uint64_t last_connect_usec;                   /* CLOCK_BOOTTIME; 0 before the first */
	char last_client_id[PROTO_CLIENT_ID_MAX + 1]; /* the client id it used */

	struct proto_topics topics[_PROTO_OP_MAX];
	struct store_pending pending; /* mirror of pending/: key, CSR, certificate, registration */
	bool have_pending;            /* key and CSR are durable */
	bool committed;               /* current/ holds the new identity; only verify is left */
	bool pair_checked;            /* this run saw the pending key and certificate match */
	int64_t pair_not_after;       /* and the certificate's notAfter */
	int64_t claim_not_before;
	bool clock_wait_logged;

	struct backoff backoff;          /* transient failures */
	struct backoff throttle_backoff; /* throttling: its first window is retry.throttle */
	uint64_t throttle_until; /* CLOCK_BOOTTIME end of the current throttle window, or 0 */
	unsigned failures;       /* failed attempts in this run: max_attempts counts these */
	unsigned restart_flows;  /* ownership tokens refused in this run */
	unsigned requests_sent;
	char last_permanent[TEXT_MAX]; /* logged at error once, repeats at notice */

	char *verify_cert_file;
	char *verify_key_file;
};

static const char *const state_names[_PROV_STATE_MAX] = {
    [PROV_IDLE] = "idle",
    [PROV_PREPARING] = "preparing",
    [PROV_CLOCK_WAIT] = "clock-wait",
    [PROV_CONNECTING] = "connecting",
    [PROV_SUBSCRIBING] = "subscribing",
    [PROV_CSR_SENT] = "csr-sent",
    [PROV_REGISTER_SENT] = "register-sent",
    [PROV_COMMITTING] = "committing",
    [PROV_VERIFYING] = "verifying",
    [PROV_BACKOFF] = "backoff",
    [PROV_DONE] = "done",
    [PROV_FAILED] = "failed",
};

/* FLEETPROVD_STEP= values: AWS's operation names where there is one (journalctl filters). */
static const char *const step_names[_PROV_STATE_MAX] = {
    [PROV_IDLE] = "Start",
    [PROV_PREPARING] = "Prepare",
    [PROV_CLOCK_WAIT] = "ClockWait",
    [PROV_CONNECTING] = "Connect",
    [PROV_SUBSCRIBING] = "Subscribe",
    [PROV_CSR_SENT] = "CreateCertificateFromCsr",
    [PROV_REGISTER_SENT] = "RegisterThing",
    [PROV_COMMITTING] = "Commit",
    [PROV_VERIFYING] = "Verify",
    [PROV_BACKOFF] = "Backoff",
    [PROV_DONE] = "Done",
    [PROV_FAILED] = "Failed",
};

const char *prov_state_to_string(enum prov_state s)
{
	if (s < 0 || s >= _PROV_STATE_MAX)
		return NULL;
	return state_names[s];
}

static void enter_preparing(struct prov *p);
static void enter_clock_wait(struct prov *p);
static void enter_connecting(struct prov *p);
static void enter_subscribing(struct prov *p);
static void enter_committing(struct prov *p);
static void enter_verifying(struct prov *p);
static void enter_backoff(struct prov *p, uint64_t delay_usec);
static void enter_done(struct prov *p);
static void send_csr(struct prov *p);
static void send_register(struct prov *p);

/* --- small helpers ----------------------------------------------------------------------- */

static uint64_t now_usec(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000u;
}

static void format_duration(uint64_t usec, char *buf, size_t size)
{
	uint64_t sec = (usec + USEC_PER_SEC / 2) / USEC_PER_SEC;

	if (usec < USEC_PER_SEC)
		snprintf(buf, size, "%" PRIu64 " ms", usec / USEC_PER_MSEC);
	else if (sec < 120)
		snprintf(buf, size, "%" PRIu64 " s", sec);
	else if (sec % 60 == 0)
		snprintf(buf, size, "%" PRIu64 " min", sec / 60);
	else
		snprintf(buf, size, "%" PRIu64 " min %" PRIu64 " s", sec / 60, sec % 60);
}

static void format_utc(int64_t sec, char *buf, size_t size)
{
	time_t t = (time_t)sec;
	struct tm tm;

	if (!gmtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(buf, size, "%" PRId64, sec);
}

static void *mfree(void *p)
{
	free(p);
	return NULL;
}

static const char *step_name(enum prov_state s)
{
	const char *name = s >= 0 && s < _PROV_STATE_MAX ? step_names[s] : NULL;

	return name ? name : "Unknown";
}

static const char *thing_name(const struct prov *p)
{
	return p->pending.registration.thing_name;
}

static struct log_fields fields(const struct prov *p, const char *message_id)
{
	return (struct log_fields){
	    .message_id = message_id,
	    .step = step_name(p->state),
	    .attempt = p->failures + 1,
	    .thing_name = thing_name(p),
	};
}

static void set_state(struct prov *p, enum prov_state s)
{
	if (p->state != s)
		log_debug("State %s -> %s", state_names[p->state], state_names[s]);
	p->state = s;
}

static void close_transport(struct prov *p)
{
	if (!p->connect_issued)
		return;
	p->connect_issued = false;
	p->transport.ops->disconnect(p->transport.impl);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata);

/* Arm the one timer; systemd is told to wait at least as long (only matters under it). */
static int arm_timer(struct prov *p, uint64_t usec)
{
	/* 5% slack lets the kernel coalesce wake-ups without blurring short test timeouts. */
	uint64_t accuracy = usec / 20 + 1;
	int r;

	(void)notify_extend_timeout(usec + EXTEND_MARGIN_USEC);
	if (!p->timer)
		return sd_event_add_time_relative(p->event, &p->timer, CLOCK_BOOTTIME, usec,
		                                  accuracy, on_timer, p);
	r = sd_event_source_set_time_relative(p->timer, usec);
	if (r >= 0)
		r = sd_event_source_set_time_accuracy(p->timer, accuracy);
	if (r >= 0)
		r = sd_event_source_set_enabled(p->timer, SD_EVENT_ONESHOT);
	return r;
}

static void disarm_timer(struct prov *p)
{
	if (p->timer)
		(void)sd_event_source_set_enabled(p->timer, SD_EVENT_OFF);
}

static int on_done_dispatch(sd_event_source *s, void *userdata)
{
	struct prov *p = userdata;

	(void)sd_event_source_set_enabled(s, SD_EVENT_OFF);
	p->done(p->result, p->userdata);
	return 0;
}

/* The end, whatever the result: done() runs from the loop, exactly once. */
static void finish(struct prov *p, enum prov_result result)
{
	int r;

	if (p->finished)
		return;
	p->finished = true;
	p->result = result;
	close_transport(p);
	disarm_timer(p);
	set_state(p, result == PROV_RESULT_READY ? PROV_DONE : PROV_FAILED);
	r = sd_event_add_defer(p->event, &p->done_source, on_done_dispatch, p);
	if (r < 0) {
		log_error_errno(r, "Failed to schedule the end of provisioning: %s", ERRNO_STR(r));
		p->done(result, p->userdata);
	}
}

/* Out of memory or an sd-event failure: nothing sensible is left to do. */
static void fail_internal(struct prov *p, int r, const char *what)
{
	log_error_errno(r, "%s: %s", what, ERRNO_STR(r));
	finish(p, PROV_RESULT_GAVE_UP);
}

static void fail_config(struct prov *p, const char *fmt, ...) _printf_(2, 3);
static void fail_config(struct prov *p, const char *fmt, ...)
{
	struct log_fields f = fields(p, MESSAGE_ID_CONFIG_ERROR);
	char msg[TEXT_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_internal(LOG_ERR, 0, &f, "%s", msg);
	(void)notify_status("Configuration error: %s", msg);
	finish(p, PROV_RESULT_CONFIG);
}

/* --- failures, classification and retries ----------------------------------------------- */

static void save_attempt(struct prov *p, const char *reason)
{
	int r;

	if (!p->have_pending)
		return;
	r = store_pending_save_attempt(p->store, p->pending.started_at_usec,
	                               p->pending.attempt + p->failures, reason);
	if (r < 0)
		log_warning_errno(r, "Failed to record the attempt in '%s/%s': %s, ignoring",
		                  store_path(p->store), STORE_PENDING_DIR, ERRNO_STR(r));
}

static void log_failure(struct prov *p, const struct failure *f)
{
	struct log_fields lf = fields(p, f->rejection ? MESSAGE_ID_REJECTED : NULL);
	const char *hint = f->hint[0] ? f->hint : NULL;
	int level = LOG_WARNING;

	lf.aws_status = f->aws_status;
	lf.aws_error = f->aws_error;
	if (f->class == ERROR_CONFIG) {
		lf.message_id = MESSAGE_ID_CONFIG_ERROR;
		level = LOG_ERR;
	} else if (f->class == ERROR_PERMANENT) {
		/* Logged once at error; the same refusal on every slow retry is only a notice. */
		level = strcmp(p->last_permanent, f->reason) == 0 ? LOG_NOTICE : LOG_ERR;
		snprintf(p->last_permanent, sizeof(p->last_permanent), "%s", f->reason);
	}
	if (hint)
		log_internal(level, 0, &lf, "%s. %s", f->reason, hint);
	else
		log_internal(level, 0, &lf, "%s", f->reason);
}

/*
 * Throttling has its own window. A 429 or a ThrottlingException says the account's quota is
 * spent by a crowd of unknown size; what serves the crowd best is its retries spread evenly
 * over the time the quota needs for all of it (gateways / TPS: retry.throttle). Windows
 * growing from retry.base instead (1, 2, 4, 8 s) send a site of a few hundred gateways back in
 * waves that are mostly throttled again. A retry throttled again inside the window was
 * unlucky, not early: it tries again within what is left of the same window, so the crowd is
 * through when the window ends. Throttled after the window's end, the crowd was larger than
 * the window allowed for: a new window twice as long begins.
 */
static uint64_t throttle_delay(struct prov *p)
{
	uint64_t now = now_usec(CLOCK_BOOTTIME), window;

	if (p->throttle_until > now)
		return random_u64() % (p->throttle_until - now + 1);
	window = backoff_ceiling(&p->throttle_backoff);
	p->throttle_until = now + window;
	return backoff_next(&p->throttle_backoff, random_u64());
}

/*
 * Transient failures wait 1 s (every retry reconnects, and AWS IoT takes one CONNECT per
 * second per client id; tests use shorter bases) plus a random part, full jitter over the
 * backoff window. The second is added, not a lower bound: a bound would put every gateway
 * whose draw fell below it on the same instant, the wave the jitter is there to prevent.
 */
static uint64_t retry_delay(struct prov *p, const struct failure *f)
{
	uint64_t floor = p->settings.retry_base_usec < RECONNECT_MIN_USEC
	                     ? p->settings.retry_base_usec
	                     : RECONNECT_MIN_USEC;

	if (f->class == ERROR_PERMANENT) {
		/* Jittered in [T/2, T]: a fleet healed by one fix in the cloud does not return at
		 * once. */
		uint64_t half = p->settings.retry_permanent_usec / 2;
		return p->settings.retry_permanent_usec - random_u64() % (half + 1);
	}
	if (f->throttled)
		return floor + throttle_delay(p);
	return floor + backoff_next(&p->backoff, random_u64());
}

static void schedule_retry(struct prov *p, const struct failure *f)
{
	struct log_fields lf = fields(p, MESSAGE_ID_RETRYING);
	uint64_t delay = retry_delay(p, f);
	char when[32];

	lf.attempt = p->failures;
	format_duration(delay, when, sizeof(when));
	log_internal(LOG_INFO, 0, &lf, "Retrying in %s (retry %u)", when, p->failures);
	(void)notify_status("%s, retry %u in %s", f->status[0] ? f->status : f->reason, p->failures,
	                    when);
	enter_backoff(p, delay);
}

/* The one place an attempt fails: log, count, record, then give up or schedule a retry. */
static void fail(struct prov *p, const struct failure *f)
{
	struct log_fields lf;

	close_transport(p);
	disarm_timer(p);
	log_failure(p, f);
	if (f->class == ERROR_CONFIG) {
		(void)notify_status("Configuration error: %s", f->reason);
		finish(p, PROV_RESULT_CONFIG);
		return;
	}
	p->failures++;
	save_attempt(p, f->reason);
	if (p->settings.max_attempts > 0 && p->failures >= p->settings.max_attempts) {
		lf = fields(p, NULL);
		lf.attempt = p->failures;
		log_internal(
		    LOG_ERR, 0, &lf,
		    "Giving up after %u failed attempts (retry.max_attempts); last error: %s",
		    p->failures, f->reason);
		(void)notify_status("Gave up after %u attempts: %s", p->failures, f->reason);
		finish(p, PROV_RESULT_GAVE_UP);
		return;
	}
	schedule_retry(p, f);
}

static void fail_transient(struct prov *p, const char *fmt, ...) _printf_(2, 3);
static void fail_transient(struct prov *p, const char *fmt, ...)
{
	struct failure f = {.class = ERROR_TRANSIENT};
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(f.reason, sizeof(f.reason), fmt, ap);
	va_end(ap);
	fail(p, &f);
}

/* A transport operation failed synchronously; unless an event already moved us on. */
static void transport_call_failed(struct prov *p, enum prov_state expected, int r, const char *what)
{
	if (p->state != expected || p->finished)
		return;
	fail_transient(p, "%s failed: %s", what, ERRNO_STR(r));
}

/* --- PREPARING: key first, durable before any network ------------------------------------ */

static int read_user_file(const char *path, char **ret)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	_cleanup_free_ char *buf = NULL;
	size_t len = 0;
	ssize_t n;

	if (fd < 0)
		return NEG_ERRNO();
	buf = malloc(USER_PEM_MAX + 1);
	if (!buf)
		return -ENOMEM;
	while ((n = read(fd, buf + len, USER_PEM_MAX + 1 - len)) > 0)
		len += (size_t)n;
	if (n < 0)
		return NEG_ERRNO();
	if (len > USER_PEM_MAX)
		return -EFBIG;
	buf[len] = '\0';
	*ret = TAKE_PTR(buf);
	return 0;
}

static int load_user_key(struct prov *p, EVP_PKEY **ret)
{
	const char *path = p->settings.config->key_file;
	_cleanup_free_ char *pem = NULL;
	int r;

	r = read_user_file(path, &pem);
	if (r >= 0) {
		r = keygen_load_private_key(pem, ret);
		explicit_bzero(pem, strlen(pem));
	}
	if (r < 0) {
		fail_config(p, "Cannot use key.file '%s': %s", path,
		            r == -EBADMSG ? "not a supported PEM private key" : ERRNO_STR(r));
		return r;
	}
	log_info("Using the private key from key.file '%s'", path);
	return 0;
}

static int make_key(struct prov *p, EVP_PKEY **ret)
{
	enum key_type type = p->settings.config->key_type;
	int r;

	if (p->settings.config->key_file)
		return load_user_key(p, ret);
	r = keygen_generate(type, ret);
	if (r < 0) {
		fail_internal(p, r, "Failed to generate a private key");
		return r;
	}
	log_info("Generated a new %s private key", key_type_to_string(type));
	return 0;
}

static int make_csr(struct prov *p, EVP_PKEY *key, char **ret)
{
	const char *path = p->settings.config->csr_file;
	_cleanup_free_ char *csr = NULL;
	int r;

	if (!path) {
		r = keygen_build_csr(key, p->settings.csr_subject, ret);
		if (r < 0)
			fail_config(p, "Cannot build a CSR with subject '%s': %s",
			            p->settings.csr_subject ? p->settings.csr_subject : "",
			            ERRNO_STR(r));
		return r;
	}
	r = read_user_file(path, &csr);
	if (r < 0) {
		fail_config(p, "Cannot read key.csr_file '%s': %s", path, ERRNO_STR(r));
		return r;
	}
	r = keygen_csr_matches_key(csr, key);
	if (r < 0) {
		fail_config(p, "key.csr_file '%s' %s", path,
		            r == -EKEYREJECTED ? "does not belong to the private key"
		                               : "is not a valid PEM certificate request");
		return r;
	}
	log_info("Using the certificate request from key.csr_file '%s'", path);
	*ret = TAKE_PTR(csr);
	return 0;
}

/* A new attempt: key and CSR, written to pending/ before anything leaves the device. */
static int create_pending(struct prov *p)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	_cleanup_erase_ char *key_pem = NULL;
	_cleanup_free_ char *csr_pem = NULL;
	int r;

	r = make_key(p, &key);
	if (r < 0)
		return r;
	r = keygen_private_key_pem(key, &key_pem);
	if (r < 0) {
		fail_internal(p, r, "Failed to encode the private key");
		return r;
	}
	r = make_csr(p, key, &csr_pem);
	if (r < 0)
		return r;
	r = store_pending_save_key(p->store, key_pem, csr_pem);
	if (r < 0) {
		fail_transient(p, "Failed to save the private key to '%s/%s': %s",
		               store_path(p->store), STORE_PENDING_DIR, ERRNO_STR(r));
		return r;
	}
	/*
	 * PEM bodies are not logged, though public: an EC key's last PEM line is its public
	 * point and can coincide with a line of the CSR, which defeats "no key line in the log".
	 */
	log_debug("Saved the private key and a %zu-byte certificate request to '%s/%s'",
	          strlen(csr_pem), store_path(p->store), STORE_PENDING_DIR);
	p->pending.key_pem = TAKE_PTR(key_pem);
	p->pending.csr_pem = TAKE_PTR(csr_pem);
	p->pending.started_at_usec = now_usec(CLOCK_REALTIME);
	p->have_pending = true;
	return 0;
}

/* Pending key but no CSR (interrupted between the two writes): rebuild it from the key. */
static int complete_pending(struct prov *p)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	_cleanup_free_ char *csr_pem = NULL;
	int r;

	r = keygen_load_private_key(p->pending.key_pem, &key);
	if (r < 0)
		return r;
	r = keygen_build_csr(key, p->settings.csr_subject, &csr_pem);
	if (r < 0)
		return r;
	r = store_pending_save_csr(p->store, csr_pem);
	if (r < 0)
		return r;
	p->pending.csr_pem = TAKE_PTR(csr_pem);
	return 0;
}

static int load_pending(struct prov *p)
{
	int r;

	r = store_pending_load(p->store, &p->pending);
	if (r == -ENOENT)
		return r;
	if (r >= 0 && !p->pending.csr_pem)
		r = complete_pending(p);
	if (r < 0) {
		log_warning_errno(r,
		                  "Cannot use the pending attempt in '%s/%s' (%s), starting over",
		                  store_path(p->store), STORE_PENDING_DIR, ERRNO_STR(r));
		store_pending_clear(&p->pending);
		(void)store_pending_remove(p->store);
		return -ENOENT;
	}
	p->have_pending = true;
	if (p->pending.registered)
		log_info("Resuming: thing '%s' is already registered, committing it",
		         thing_name(p) ? thing_name(p) : "");
	else if (p->pending.certificate_id)
		log_info("Resuming with certificate %s issued earlier", p->pending.certificate_id);
	else
		log_info("Resuming the pending attempt with its private key");
	return 0;
}

static void enter_preparing(struct prov *p)
{
	int r;

	set_state(p, PROV_PREPARING);
	(void)notify_status("Preparing the private key and certificate request");
	if (!p->have_pending && load_pending(p) == -ENOENT) {
		r = create_pending(p);
		if (r < 0)
			return;
	}
	if (p->pending.registered)
		enter_committing(p);
	else
		enter_clock_wait(p);
}

/* Where a retry resumes: what pending/ says has been done decides it. */
static void resume(struct prov *p)
{
	if (p->committed)
		enter_verifying(p);
	else if (p->pending.registered)
		enter_committing(p);
	else if (!p->have_pending)
		enter_preparing(p);
	else
		enter_clock_wait(p);
}

/* --- CLOCK_WAIT ------------------------------------------------------------------------- */

/* The claim files must be readable now: an unreadable one is a configuration error. */
static int check_claim_files(struct prov *p)
{
	const struct config *c = p->settings.config;
	const struct {
		const char *key, *path;
	} files[] = {
	    {"claim.private_key", c->claim_private_key},
	    {"ca_file", c->ca_file},
	};
	int64_t not_after;
	int r;

	r = cred_certificate_file_validity(c->claim_certificate, &p->claim_not_before, &not_after);
	if (r < 0) {
		fail_config(p, "Cannot read claim.certificate '%s': %s", c->claim_certificate,
		            r == -EBADMSG ? "not a PEM certificate" : ERRNO_STR(r));
		return r;
	}
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		_cleanup_close_ int fd = open(files[i].path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
		if (fd < 0) {
			r = NEG_ERRNO();
			fail_config(p, "Cannot read %s '%s': %s", files[i].key, files[i].path,
			            ERRNO_STR(r));
			return r;
		}
	}
	return 0;
}

/* true (with the reason in why) if the wall clock cannot be trusted for TLS yet. */
static bool clock_is_behind(const struct prov *p, char *why, size_t size)
{
	int64_t now = (int64_t)(now_usec(CLOCK_REALTIME) / USEC_PER_SEC);
	char now_text[64], limit_text[64];

	format_utc(now, now_text, sizeof(now_text));
	if (now < p->settings.clock_floor_sec) {
		format_utc(p->settings.clock_floor_sec, limit_text, sizeof(limit_text));
		snprintf(why, size, "the clock reads %s, before the build time of fleetprovd (%s)",
		         now_text, limit_text);
		return true;
	}
	if (now < p->claim_not_before) {
		format_utc(p->claim_not_before, limit_text, sizeof(limit_text));
		snprintf(why, size,
		         "the clock reads %s, before the claim certificate becomes valid (%s)",
		         now_text, limit_text);
		return true;
	}
	return false;
}

static void check_clock(struct prov *p)
{
	struct log_fields lf = fields(p, MESSAGE_ID_CLOCK_WAIT);
	char why[TEXT_MAX];
	int r;

	if (!clock_is_behind(p, why, sizeof(why))) {
		if (p->clock_wait_logged)
			log_info("The clock is now plausible, continuing");
		if (p->committed)
			enter_verifying(p); /* a boot resuming an identity never verified */
		else
			enter_connecting(p);
		return;
	}
	if (!p->clock_wait_logged) {
		log_internal(LOG_NOTICE, 0, &lf, "Waiting for a trustworthy clock: %s", why);
		p->clock_wait_logged = true;
	}
	(void)notify_status("Waiting for the clock: %s", why);
	r = arm_timer(p, CLOCK_RECHECK_USEC);
	if (r < 0)
		fail_internal(p, r, "Failed to arm the clock timer");
}

static void enter_clock_wait(struct prov *p)
{
	set_state(p, PROV_CLOCK_WAIT);
	/* Verifying uses the new identity: the claim may already be gone from the device. */
	if (!p->committed && check_claim_files(p) < 0)
		return;
	check_clock(p);
}

/* --- CONNECTING and SUBSCRIBING (claim identity) ----------------------------------------- */

static void start_connect(struct prov *p, const struct transport_identity *id)
{
	enum prov_state state = p->state;
	int r;

	r = arm_timer(p, p->settings.connect_timeout_usec);
	if (r < 0) {
		fail_internal(p, r, "Failed to arm the connect deadline");
		return;
	}
	p->connect_issued = true;
	p->last_connect_usec = now_usec(CLOCK_BOOTTIME);
	snprintf(p->last_client_id, sizeof(p->last_client_id), "%s", id->client_id);
	r = p->transport.ops->connect(p->transport.impl, id);
	if (r < 0)
		transport_call_failed(p, state, r, "Starting the connection");
}

static void enter_connecting(struct prov *p)
{
	const struct config *c = p->settings.config;
	const struct transport_identity id = {
	    .host = c->endpoint,
	    .port = c->port,
	    .ca_file = c->ca_file,
	    .cert_file = c->claim_certificate,
	    .key_file = c->claim_private_key,
	    .client_id = p->settings.client_id,
	    .keepalive_sec = c->keepalive_sec,
	};

	set_state(p, PROV_CONNECTING);
	log_info("Connecting to %s:%u as '%s'", c->endpoint, c->port, p->settings.client_id);
	(void)notify_status("Connecting to %s:%u as %s", c->endpoint, c->port,
	                    p->settings.client_id);
	start_connect(p, &id);
}

static void enter_subscribing(struct prov *p)
{
	const char *filters[] = {
	    p->topics[PROTO_OP_CREATE_CERT_FROM_CSR].accepted,
	    p->topics[PROTO_OP_CREATE_CERT_FROM_CSR].rejected,
	    p->topics[PROTO_OP_REGISTER_THING].accepted,
	    p->topics[PROTO_OP_REGISTER_THING].rejected,
	};
	int r;

	set_state(p, PROV_SUBSCRIBING);
	(void)notify_status("Connected to %s, subscribing to the provisioning topics",
	                    p->settings.config->endpoint);
	r = arm_timer(p, p->settings.response_timeout_usec);
	if (r < 0) {
		fail_internal(p, r, "Failed to arm the subscribe deadline");
		return;
	}
	/* All four in one SUBSCRIBE (spec §5.6 step 7): one SUBACK gates both operations. */
	r = p->transport.ops->subscribe(p->transport.impl, filters, ARRAY_SIZE(filters));
	if (r < 0)
		transport_call_failed(p, PROV_SUBSCRIBING, r, "Subscribing");
}

static void subscribe_refused(struct prov *p)
{
	struct failure f = {.class = ERROR_PERMANENT, .rejection = true};

	snprintf(f.reason, sizeof(f.reason),
	         "The claim policy does not allow subscribing to '%s', '%s', '%s' and '%s'",
	         p->topics[PROTO_OP_CREATE_CERT_FROM_CSR].accepted,
	         p->topics[PROTO_OP_CREATE_CERT_FROM_CSR].rejected,
	         p->topics[PROTO_OP_REGISTER_THING].accepted,
	         p->topics[PROTO_OP_REGISTER_THING].rejected);
	snprintf(f.status, sizeof(f.status),
	         "Claim policy does not allow subscribing to the provisioning topics");
	snprintf(f.hint, sizeof(f.hint),
	         "Allow iot:Subscribe on the topicfilter/ ARNs of these topics in the claim "
	         "certificate's policy");
	fail(p, &f);
}

/* --- CSR_SENT and REGISTER_SENT ----------------------------------------------------------- */

/* Publish one request; the reply may come before the PUBACK, so the state is set first. */
static void publish_request(struct prov *p, enum proto_op op, const char *payload, size_t len)
{
	enum prov_state state = op == PROTO_OP_REGISTER_THING ? PROV_REGISTER_SENT : PROV_CSR_SENT;
	int r;

	set_state(p, state);
	r = arm_timer(p, p->settings.response_timeout_usec);
	if (r < 0) {
		fail_internal(p, r, "Failed to arm the response deadline");
		return;
	}
	p->requests_sent++;
	r = p->transport.ops->publish(p->transport.impl, p->topics[op].request, payload, len);
	if (r < 0) {
		p->requests_sent--;
		transport_call_failed(p, state, r, "Publishing the request");
	}
}

static void send_csr(struct prov *p)
{
	_cleanup_free_ char *payload = NULL;
	size_t len;
	int r;

	r = proto_build_csr_request(p->pending.csr_pem, &payload, &len);
	if (r < 0) {
		fail_config(p, "Cannot send the certificate signing request: %s", ERRNO_STR(r));
		return;
	}
	log_info("Requesting a certificate (CreateCertificateFromCsr)");
	(void)notify_status("Waiting for AWS to issue a certificate");
	publish_request(p, PROTO_OP_CREATE_CERT_FROM_CSR, payload, len);
}

static bool token_is_fresh(const struct prov *p)
{
	uint64_t now = now_usec(CLOCK_REALTIME);

	/* A clock now before the issue time means the age is unknown: do not trust the token. */
	return now >= p->pending.issued_at_usec &&
	       now - p->pending.issued_at_usec < p->settings.token_max_age_usec;
}

static void forget_certificate(struct prov *p)
{
	int r;

	r = store_pending_drop_certificate(p->store);
	if (r < 0)
		log_warning_errno(r,
		                  "Failed to remove the stale certificate from '%s/%s': %s, "
		                  "ignoring",
		                  store_path(p->store), STORE_PENDING_DIR, ERRNO_STR(r));
	p->pending.certificate_id = mfree(p->pending.certificate_id);
	p->pending.certificate_pem = mfree(p->pending.certificate_pem);
	p->pair_checked = false;
	if (p->pending.ownership_token) {
		erase_and_free(p->pending.ownership_token, strlen(p->pending.ownership_token));
		p->pending.ownership_token = NULL;
	}
	p->pending.issued_at_usec = 0;
}

static void send_register(struct prov *p)
{
	_cleanup_erase_ char *payload = NULL; /* holds the ownership token */
	size_t len;
	int r;

	if (!token_is_fresh(p)) {
		log_info("The ownership token of certificate %s is too old (token_max_age), "
		         "requesting a new certificate with the same key",
		         p->pending.certificate_id);
		forget_certificate(p);
		send_csr(p);
		return;
	}
	r = proto_build_register_request(p->pending.ownership_token, p->settings.params, &payload,
	                                 &len);
	if (r < 0) {
		fail_config(p,
		            "Cannot build the RegisterThing request from the template "
		            "parameters: %s",
		            ERRNO_STR(r));
		return;
	}
	log_info("Registering the thing with template '%s' (RegisterThing)",
	         p->settings.config->template_name);
	(void)notify_status("Registering thing with template %s",
	                    p->settings.config->template_name);
	publish_request(p, PROTO_OP_REGISTER_THING, payload, len);
}

static void reply_malformed(struct prov *p, int r, const char *what)
{
	struct failure f = {.class = ERROR_TRANSIENT};

	snprintf(f.reason, sizeof(f.reason), "Protocol error: %s reply from AWS IoT is %s",
	         step_name(p->state), r == -EMSGSIZE ? "too large" : (what ? what : "malformed"));
	snprintf(f.status, sizeof(f.status), "Unusable %s reply from AWS", step_name(p->state));
	fail(p, &f);
}

static void on_certificate_accepted(struct prov *p, const void *payload, size_t len)
{
	_cleanup_(proto_cert_accepted_clear) struct proto_cert_accepted c = {0};
	int64_t not_before, not_after;
	uint64_t issued_at;
	int r;

	r = proto_parse_cert_accepted(payload, len, &c);
	if (r < 0) {
		reply_malformed(p, r, NULL);
		return;
	}
	r = cred_verify_pair(p->pending.key_pem, c.certificate_pem, 0, &not_before, &not_after);
	if (r < 0) {
		reply_malformed(p, r,
		                r == -EKEYREJECTED ? "a certificate for another key"
		                                   : "not a usable certificate");
		return;
	}
	log_debug("Certificate %s (%zu bytes of PEM) matches our key, valid until %" PRId64,
	          c.certificate_id, strlen(c.certificate_pem), not_after);
	issued_at = now_usec(CLOCK_REALTIME);
	/* Durable before RegisterThing: after a power cut we resume with this token. */
	r = store_pending_save_certificate(p->store, &c, issued_at);
	if (r < 0) {
		fail_transient(p, "Failed to save the certificate to '%s/%s': %s",
		               store_path(p->store), STORE_PENDING_DIR, ERRNO_STR(r));
		return;
	}
	log_info("AWS IoT issued certificate %s", c.certificate_id);
	p->pending.certificate_id = TAKE_PTR(c.certificate_id);
	p->pending.certificate_pem = TAKE_PTR(c.certificate_pem);
	p->pair_checked = true;
	p->pair_not_after = not_after;
	p->pending.ownership_token = TAKE_PTR(c.ownership_token);
	p->pending.issued_at_usec = issued_at;
	backoff_reset(&p->backoff);
	backoff_reset(&p->throttle_backoff);
	p->throttle_until = 0;
	send_register(p);
}

static void on_registered(struct prov *p, const void *payload, size_t len)
{
	struct proto_register_accepted reg = {0};
	int r;

	r = proto_parse_register_accepted(payload, len, &reg);
	if (r < 0) {
		reply_malformed(p, r, NULL);
		return;
	}
	/* Held in memory even if saving fails: a retry then commits instead of registering again.
	 */
	p->pending.registration = reg;
	p->pending.registered = true;
	r = store_pending_save_registration(p->store, &p->pending.registration);
	if (r < 0)
		log_warning_errno(r, "Failed to save the registration to '%s/%s': %s, ignoring",
		                  store_path(p->store), STORE_PENDING_DIR, ERRNO_STR(r));
	close_transport(p);
	disarm_timer(p);
	backoff_reset(&p->backoff);
	backoff_reset(&p->throttle_backoff);
	p->throttle_until = 0;
	log_info("Registered as thing '%s'", thing_name(p) ? thing_name(p) : "");
	enter_committing(p);
}

static void describe_rejection(struct prov *p, enum proto_op op, const struct proto_rejection *rej,
                               struct failure *f)
{
	const char *step = step_name(p->state);

	snprintf(f->reason, sizeof(f->reason), "%s rejected by AWS IoT: %d %s: %s", step,
	         rej->status_code, rej->error_code ? rej->error_code : "(no errorCode)",
	         rej->error_message ? rej->error_message : "(no errorMessage)");
	if (f->throttled)
		snprintf(f->status, sizeof(f->status), "Throttled by AWS (%d %s)", rej->status_code,
		         rej->error_code ? rej->error_code : "");
	else if (f->class == ERROR_TRANSIENT)
		snprintf(f->status, sizeof(f->status), "AWS IoT error on %s (%d)", step,
		         rej->status_code);
	else
		snprintf(f->status, sizeof(f->status), "%s rejected by AWS (%d %s)", step,
		         rej->status_code, rej->error_code ? rej->error_code : "");
	if (f->class == ERROR_PERMANENT) {
		snprintf(f->hint, sizeof(f->hint), "%s", proto_rejection_hint(op, rej));
		/* protocol's hints are clauses; here they follow a sentence. */
		f->hint[0] = (char)toupper((unsigned char)f->hint[0]);
	}
}

/* Token invalid or expired: the same key asks for a new certificate at once. */
static void restart_flow(struct prov *p, const struct proto_rejection *rej)
{
	struct log_fields lf = fields(p, MESSAGE_ID_REJECTED);

	lf.aws_status = rej->status_code;
	lf.aws_error = rej->error_code;
	log_internal(LOG_WARNING, 0, &lf,
	             "RegisterThing refused the ownership token (%d %s: %s); requesting a new "
	             "certificate with the same key",
	             rej->status_code, rej->error_code ? rej->error_code : "",
	             rej->error_message ? rej->error_message : "");
	p->restart_flows++;
	send_csr(p);
}

static void on_rejected(struct prov *p, enum proto_op op, const void *payload, size_t len)
{
	_cleanup_(proto_rejection_clear) struct proto_rejection rej = {0};
	struct failure f = {.rejection = true};
	enum proto_error_class class;
	int r;

	r = proto_parse_rejection(payload, len, &rej);
	if (r < 0) {
		reply_malformed(p, r, NULL);
		return;
	}
	class = proto_rejection_classify(op, &rej);
	if (class == PROTO_ERROR_RESTART_FLOW) {
		forget_certificate(p);
		if (p->restart_flows < RESTART_FLOWS_AT_ONCE_MAX) {
			restart_flow(p, &rej);
			return;
		}
	}
	f.class = class == PROTO_ERROR_PERMANENT ? ERROR_PERMANENT : ERROR_TRANSIENT;
	f.aws_status = rej.status_code;
	f.aws_error = rej.error_code;
	f.throttled = proto_rejection_is_throttle(&rej);
	describe_rejection(p, op, &rej, &f);
	fail(p, &f);
}

static void on_message(struct prov *p, const struct transport_event *ev)
{
	enum proto_op op = p->state == PROV_REGISTER_SENT ? PROTO_OP_REGISTER_THING
	                                                  : PROTO_OP_CREATE_CERT_FROM_CSR;

	switch (proto_topics_match(&p->topics[op], ev->topic)) {
	case PROTO_REPLY_ACCEPTED:
		if (op == PROTO_OP_REGISTER_THING)
			on_registered(p, ev->payload, ev->len);
		else
			on_certificate_accepted(p, ev->payload, ev->len);
		break;
	case PROTO_REPLY_REJECTED:
		on_rejected(p, op, ev->payload, ev->len);
		break;
	case PROTO_REPLY_NONE:
		/* A duplicate or a reply to the other operation: only one request is in flight. */
		log_debug("Ignoring a message on '%s' while waiting for the %s reply", ev->topic,
		          step_name(p->state));
		break;
	}
}

/* --- COMMITTING, VERIFYING, DONE ---------------------------------------------------------- */

static int commit_identity(struct prov *p, int64_t not_after)
{
	const struct config *c = p->settings.config;
	const struct proto_register_accepted *reg = &p->pending.registration;
	const struct store_identity id = {
	    .thing_name = reg->thing_name,
	    .certificate_id = p->pending.certificate_id,
	    .certificate_pem = p->pending.certificate_pem,
	    .key_pem = p->pending.key_pem,
	    .endpoint = c->endpoint,
	    .port = c->port,
	    .ca_file = c->ca_file,
	    .template_name = c->template_name,
	    .device_configuration = reg->device_configuration,
	    .n_device_configuration = reg->n_device_configuration,
	    .provisioned_at_usec = now_usec(CLOCK_REALTIME),
	    .not_after = not_after,
	};

	return store_commit(p->store, &id);
}

/* Only a damaged pending/ gets here: the pair was checked when the certificate arrived. */
static void discard_damaged_pending(struct prov *p, int r)
{
	log_error_errno(r, "The pending certificate and key are unusable (%s), starting over",
	                ERRNO_STR(r));
	store_pending_clear(&p->pending);
	p->have_pending = false;
	p->pair_checked = false;
	(void)store_pending_remove(p->store);
	fail_transient(p, "Commit: the pending identity was damaged");
}

/*
 * A pair checked when the certificate arrived is not decoded again (a key decode is a
 * good part of the CPU of a provisioning); one resumed from pending/ is checked here.
 */
static int check_pending_pair(struct prov *p)
{
	int64_t not_before, not_after;
	int r;

	if (p->pair_checked)
		return 0;
	r = cred_verify_pair(p->pending.key_pem, p->pending.certificate_pem, 0, &not_before,
	                     &not_after);
	if (r < 0)
		return r;
	p->pair_checked = true;
	p->pair_not_after = not_after;
	return 0;
}

static void enter_committing(struct prov *p)
{
	int r;

	set_state(p, PROV_COMMITTING);
	(void)notify_status("Saving the identity of thing %s", thing_name(p) ? thing_name(p) : "");
	r = check_pending_pair(p);
	if (r < 0) {
		discard_damaged_pending(p, r);
		return;
	}
	r = commit_identity(p, p->pair_not_after);
	if (r < 0) {
		fail_transient(p, "Failed to commit the new identity to '%s': %s",
		               store_path(p->store), ERRNO_STR(r));
		return;
	}
	p->committed = true;
	p->have_pending =
	    false; /* store_commit removed pending/; a failed verify must not recreate it */
	log_debug("Committed the identity under '%s/%s'", store_path(p->store), STORE_CURRENT_LINK);
	if (p->settings.config->verify)
		enter_verifying(p);
	else
		enter_done(p);
}

static int verify_paths(struct prov *p)
{
	const char *dir = store_path(p->store);

	if (p->verify_cert_file)
		return 0;
	if (asprintf(&p->verify_cert_file, "%s/%s/%s", dir, STORE_CURRENT_LINK, STORE_CERT_FILE) <
	    0) {
		p->verify_cert_file = NULL;
		return -ENOMEM;
	}
	if (asprintf(&p->verify_key_file, "%s/%s/%s", dir, STORE_CURRENT_LINK, STORE_KEY_FILE) <
	    0) {
		p->verify_key_file = NULL;
		p->verify_cert_file = mfree(p->verify_cert_file);
		return -ENOMEM;
	}
	return 0;
}

/* The thing name is the operational client id (AWS's usual policy variable). */
static const char *verify_client_id(const struct prov *p)
{
	return thing_name(p) ? thing_name(p) : p->settings.client_id;
}

/* How long a CONNECT as client_id must wait: AWS IoT takes one per second per client id. */
static uint64_t connect_pacing(const struct prov *p, const char *client_id)
{
	uint64_t gap = p->settings.retry_base_usec < RECONNECT_MIN_USEC
	                   ? p->settings.retry_base_usec
	                   : RECONNECT_MIN_USEC;
	uint64_t since = now_usec(CLOCK_BOOTTIME) - p->last_connect_usec;

	if (p->last_connect_usec == 0 || since >= gap || strcmp(p->last_client_id, client_id) != 0)
		return 0;
	return gap - since;
}

static void enter_verifying(struct prov *p)
{
	const struct config *c = p->settings.config;
	struct transport_identity id = {
	    .host = c->endpoint,
	    .port = c->port,
	    .ca_file = c->ca_file,
	    .client_id = verify_client_id(p),
	    .keepalive_sec = c->keepalive_sec,
	};
	uint64_t pause_usec = connect_pacing(p, id.client_id);
	int r;

	if (pause_usec > 0) {
		/* The claim connection used this client id a moment ago (spec §5.6 step 9). */
		log_debug("Connecting as '%s' again in %" PRIu64 " ms", id.client_id,
		          pause_usec / USEC_PER_MSEC);
		enter_backoff(p, pause_usec);
		return;
	}
	set_state(p, PROV_VERIFYING);
	r = verify_paths(p);
	if (r < 0) {
		fail_internal(p, r, "Failed to build the credential paths");
		return;
	}
	id.cert_file = p->verify_cert_file;
	id.key_file = p->verify_key_file;
	log_info("Verifying the new certificate: connecting to %s:%u as '%s'", c->endpoint, c->port,
	         id.client_id);
	(void)notify_status("Verifying the new certificate: connecting to %s:%u as %s", c->endpoint,
	                    c->port, id.client_id);
	start_connect(p, &id);
}

/* The connect with the new identity worked: say so on disk before READY=1. */
static void mark_verified(struct prov *p)
{
	int r;

	r = store_mark_verified(p->store, p->pending.certificate_id, now_usec(CLOCK_REALTIME));
	if (r < 0)
		/* The proof stands; only the next boot will connect once more to redo it. */
		log_warning_errno(r, "Failed to record the verification in '%s/%s/%s': %s",
		                  store_path(p->store), STORE_CURRENT_LINK, STORE_IDENTITY_JSON,
		                  ERRNO_STR(r));
	/*
	 * A commit interrupted after the current switch leaves pending/ behind; the identity
	 * it would have become is the one just proven.
	 */
	r = store_pending_remove(p->store);
	if (r < 0)
		log_debug_errno(r, "Failed to remove '%s/%s', ignoring: %s", store_path(p->store),
		                STORE_PENDING_DIR, ERRNO_STR(r));
}

static void enter_done(struct prov *p)
{
	struct log_fields lf = fields(p, MESSAGE_ID_PROVISIONED);
	char status[TEXT_MAX];

	close_transport(p);
	if (p->state == PROV_VERIFYING)
		mark_verified(p);
	set_state(p, PROV_DONE);
	lf.step = step_name(PROV_DONE);
	log_internal(LOG_INFO, 0, &lf, "Provisioned as thing '%s' (certificate %s)",
	             thing_name(p) ? thing_name(p) : "", p->pending.certificate_id);
	snprintf(status, sizeof(status), "Provisioned as thing %s",
	         thing_name(p) ? thing_name(p) : "");
	(void)notify_ready(status);
	finish(p, PROV_RESULT_READY);
}

/* --- transport failures ------------------------------------------------------------------- */

static void describe_network_failure(struct prov *p, const struct transport_event *ev,
                                     struct failure *f)
{
	const struct config *c = p->settings.config;
	const char *what;

	switch (ev->failure) {
	case TRANSPORT_FAIL_DNS:
		snprintf(f->status, sizeof(f->status),
		         "Waiting for network: DNS lookup of %s failed", c->endpoint);
		what = "DNS lookup failed";
		break;
	case TRANSPORT_FAIL_TCP:
		snprintf(f->status, sizeof(f->status), "Waiting for network: cannot reach %s:%u",
		         c->endpoint, c->port);
		what = "TCP connection failed";
		break;
	case TRANSPORT_FAIL_TLS:
		what = "TLS handshake failed";
		break;
	case TRANSPORT_FAIL_REFUSED:
		what = "server unavailable (CONNACK 3)";
		break;
	case TRANSPORT_FAIL_PROTOCOL:
		what = "MQTT protocol error";
		break;
	default:
		what = p->state == PROV_CONNECTING || p->state == PROV_VERIFYING
		           ? "connection closed"
		           : "connection lost";
		break;
	}
	snprintf(f->reason, sizeof(f->reason), "%s: %s:%u: %s%s%s%s", step_name(p->state),
	         c->endpoint, c->port, what, ev->detail ? " (" : "", ev->detail ? ev->detail : "",
	         ev->detail ? ")" : "");
}

static void describe_refusal(struct prov *p, const struct transport_event *ev, struct failure *f)
{
	const struct config *c = p->settings.config;
	bool verify = p->state == PROV_VERIFYING;
	const char *client = verify ? verify_client_id(p) : p->settings.client_id;

	f->rejection = true;
	if (ev->failure == TRANSPORT_FAIL_TLS_UNTRUSTED) {
		snprintf(f->reason, sizeof(f->reason),
		         "%s: the server certificate of %s:%u is not trusted%s%s%s",
		         step_name(p->state), c->endpoint, c->port, ev->detail ? " (" : "",
		         ev->detail ? ev->detail : "", ev->detail ? ")" : "");
		snprintf(f->hint, sizeof(f->hint),
		         "Check that ca_file '%s' holds the CA of the endpoint (Amazon Root CA 1 "
		         "for iot:Data-ATS) and that endpoint is the name in its certificate",
		         c->ca_file);
		return;
	}
	snprintf(f->reason, sizeof(f->reason),
	         "%s: AWS IoT refused the connection as '%s': %s (CONNACK %d)%s%s%s",
	         step_name(p->state), client,
	         ev->failure == TRANSPORT_FAIL_NOT_AUTHORIZED ? "not authorized" : "refused",
	         ev->connack, ev->detail ? " (" : "", ev->detail ? ev->detail : "",
	         ev->detail ? ")" : "");
	if (verify)
		snprintf(f->hint, sizeof(f->hint),
		         "Check that template '%s' activates the certificate and attaches a policy "
		         "that allows iot:Connect for client id '%s'",
		         c->template_name, client);
	else if (ev->failure == TRANSPORT_FAIL_REFUSED && ev->connack == 2)
		snprintf(f->hint, sizeof(f->hint), "Check that client id '%s' is valid and unique",
		         client);
	else
		snprintf(
		    f->hint, sizeof(f->hint),
		    "Check the claim certificate '%s' is registered and active in this account "
		    "and region and its policy allows iot:Connect for client id '%s'",
		    c->claim_certificate, client);
}

static void transport_failed(struct prov *p, const struct transport_event *ev)
{
	const struct config *c = p->settings.config;
	struct failure f = {.class = ERROR_TRANSIENT};

	p->connect_issued = false; /* the transport closed itself */
	switch (ev->failure) {
	case TRANSPORT_FAIL_CREDENTIALS:
		if (p->state != PROV_VERIFYING) {
			f.class = ERROR_CONFIG;
			snprintf(f.reason, sizeof(f.reason),
			         "Cannot use claim.certificate '%s', claim.private_key '%s' or "
			         "ca_file '%s' (%s)",
			         c->claim_certificate, c->claim_private_key, c->ca_file,
			         ev->detail ? ev->detail : "unreadable or mismatched");
			break;
		}
		f.class = ERROR_PERMANENT;
		snprintf(f.reason, sizeof(f.reason), "Verify: cannot load '%s' and '%s' (%s)",
		         p->verify_cert_file, p->verify_key_file, ev->detail ? ev->detail : "");
		break;
	case TRANSPORT_FAIL_TLS_UNTRUSTED:
	case TRANSPORT_FAIL_NOT_AUTHORIZED:
		f.class = ERROR_PERMANENT;
		describe_refusal(p, ev, &f);
		break;
	case TRANSPORT_FAIL_REFUSED:
		/* CONNACK 3, "server unavailable", passes; 1 and 2 do not. */
		if (ev->connack != 3) {
			f.class = ERROR_PERMANENT;
			describe_refusal(p, ev, &f);
			break;
		}
		describe_network_failure(p, ev, &f);
		break;
	default:
		describe_network_failure(p, ev, &f);
		break;
	}
	fail(p, &f);
}

/* --- the transition function -------------------------------------------------------------- */

static void unexpected_event(struct prov *p, const struct transport_event *ev)
{
	switch (ev->type) {
	case TRANSPORT_EVENT_DISCONNECTED:
		transport_failed(p, ev);
		break;
	case TRANSPORT_EVENT_PUBLISHED:
		log_debug("PUBACK received in state %s", state_names[p->state]);
		break;
	case TRANSPORT_EVENT_MESSAGE:
		log_debug("Ignoring a message on '%s' in state %s", ev->topic,
		          state_names[p->state]);
		break;
	default:
		fail_transient(p, "Protocol error: unexpected transport event %d in state %s",
		               (int)ev->type, state_names[p->state]);
		break;
	}
}

static void on_subscribed(struct prov *p, const struct transport_event *ev)
{
	if (!ev->granted_ok)
		subscribe_refused(p);
	else if (p->pending.certificate_id)
		send_register(p); /* resume: the certificate was issued before */
	else
		send_csr(p);
}

/* The transition function: state first, then event; what a state does not expect is judged
 * by unexpected_event. */
static void on_transport_event(const struct transport_event *ev, void *userdata)
{
	struct prov *p = userdata;
	bool handled = false;

	switch (p->state) {
	case PROV_CONNECTING:
		if ((handled = ev->type == TRANSPORT_EVENT_CONNECTED))
			enter_subscribing(p);
		break;
	case PROV_SUBSCRIBING:
		if ((handled = ev->type == TRANSPORT_EVENT_SUBSCRIBED))
			on_subscribed(p, ev);
		break;
	case PROV_CSR_SENT:
	case PROV_REGISTER_SENT:
		if ((handled = ev->type == TRANSPORT_EVENT_MESSAGE))
			on_message(p, ev);
		break;
	case PROV_VERIFYING:
		if ((handled = ev->type == TRANSPORT_EVENT_CONNECTED))
			enter_done(p);
		break;
	default:
		/* Nothing is connected in the other states: a late event from a closed session. */
		log_debug("Ignoring transport event %d in state %s", (int)ev->type,
		          state_names[p->state]);
		handled = true;
		break;
	}
	if (!handled)
		unexpected_event(p, ev);
}

static void deadline_passed(struct prov *p)
{
	const struct config *c = p->settings.config;
	struct failure f = {.class = ERROR_TRANSIENT};
	uint64_t waited = p->state == PROV_CONNECTING || p->state == PROV_VERIFYING
	                      ? p->settings.connect_timeout_usec
	                      : p->settings.response_timeout_usec;
	char when[32];

	format_duration(waited, when, sizeof(when));
	if (p->state == PROV_CONNECTING || p->state == PROV_VERIFYING) {
		snprintf(f.reason, sizeof(f.reason), "%s: no answer from %s:%u within %s",
		         step_name(p->state), c->endpoint, c->port, when);
		snprintf(f.status, sizeof(f.status), "Waiting for network: no answer from %s:%u",
		         c->endpoint, c->port);
	} else if (p->state == PROV_SUBSCRIBING) {
		snprintf(f.reason, sizeof(f.reason), "Subscribe: no SUBACK within %s", when);
	} else {
		snprintf(f.reason, sizeof(f.reason), "%s: no reply from AWS IoT within %s",
		         step_name(p->state), when);
	}
	fail(p, &f);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
	struct prov *p = userdata;

	switch (p->state) {
	case PROV_CLOCK_WAIT:
		check_clock(p);
		break;
	case PROV_BACKOFF:
		resume(p);
		break;
	case PROV_CONNECTING:
	case PROV_SUBSCRIBING:
	case PROV_CSR_SENT:
	case PROV_REGISTER_SENT:
	case PROV_VERIFYING:
		deadline_passed(p);
		break;
	default:
		break;
	}
	return 0;
}

static void enter_backoff(struct prov *p, uint64_t delay_usec)
{
	int r;

	set_state(p, PROV_BACKOFF);
	r = arm_timer(p, delay_usec);
	if (r < 0)
		fail_internal(p, r, "Failed to arm the retry timer");
}

/* --- public interface --------------------------------------------------------------------- */

int prov_new(sd_event *event, const struct prov_settings *settings, struct store *store,
             struct transport transport, prov_done_fn done, void *userdata, struct prov **ret)
{
	_cleanup_(prov_freep) struct prov *p = NULL;
	int r;

	if (!event || !settings || !settings->config || !settings->client_id || !store ||
	    !transport.ops || !done || !ret || settings->connect_timeout_usec == 0 ||
	    settings->response_timeout_usec == 0)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->event = sd_event_ref(event);
	p->settings = *settings;
	p->store = store;
	p->transport = transport;
	p->done = done;
	p->userdata = userdata;
	backoff_init(&p->backoff, settings->retry_base_usec, settings->retry_cap_usec);
	backoff_init(&p->throttle_backoff,
	             settings->retry_throttle_usec ? settings->retry_throttle_usec
	                                           : settings->retry_base_usec,
	             settings->retry_cap_usec);
	r = proto_topics_init(PROTO_OP_CREATE_CERT_FROM_CSR, NULL,
	                      &p->topics[PROTO_OP_CREATE_CERT_FROM_CSR]);
	if (r < 0)
		return r;
	r = proto_topics_init(PROTO_OP_REGISTER_THING, settings->config->template_name,
	                      &p->topics[PROTO_OP_REGISTER_THING]);
	if (r < 0)
		return r;
	transport.ops->set_handler(transport.impl, on_transport_event, p);
	*ret = TAKE_PTR(p);
	return 0;
}

int prov_start(struct prov *p)
{
	if (p->state != PROV_IDLE)
		return -EBUSY;
	enter_preparing(p);
	return 0;
}

int prov_start_verify(struct prov *p, const char *thing_name, const char *certificate_id)
{
	if (!p || !thing_name || !certificate_id)
		return -EINVAL;
	if (p->state != PROV_IDLE)
		return -EBUSY;
	p->pending.registration.thing_name = strdup(thing_name);
	p->pending.certificate_id = strdup(certificate_id);
	if (!p->pending.registration.thing_name || !p->pending.certificate_id)
		return -ENOMEM;
	p->committed = true;
	log_debug("Resuming at verification of thing '%s' (certificate %s)", thing_name,
	          certificate_id);
	/* Early in a boot the clock may not be set yet, and TLS needs it like a claim does. */
	enter_clock_wait(p);
	return 0;
}

/* What a stop leaves for the next start, in words for the log. */
static const char *left_for_next_start(const struct prov *p)
{
	if (p->committed)
		return "the saved identity is verified at the next start";
	if (p->have_pending)
		return "the pending attempt is kept for the next start";
	return "nothing was started";
}

void prov_cancel(struct prov *p)
{
	if (!p || p->finished)
		return;
	log_info("Stopping; %s", left_for_next_start(p));
	finish(p, PROV_RESULT_CANCELLED);
}

enum prov_state prov_get_state(const struct prov *p)
{
	return p->state;
}

unsigned prov_requests_sent(const struct prov *p)
{
	return p->requests_sent;
}

struct prov *prov_free(struct prov *p)
{
	if (!p)
		return NULL;
	close_transport(p);
	sd_event_source_disable_unref(p->timer);
	sd_event_source_disable_unref(p->done_source);
	sd_event_unref(p->event);
	store_pending_clear(&p->pending);
	free(p->verify_cert_file);
	free(p->verify_key_file);
	free(p);
	return NULL;
}
