/*
 * Unit tests for the provisioning state machine. The real state machine, store, keygen,
 * credentials and protocol run on a real sd-event loop against a temporary state
 * directory; only MQTT is replaced, by a scripted fake behind the transport ops table.
 * The fake plays AWS IoT: it signs the CSR it receives with a throwaway CA (so the
 * certificate really belongs to the device key), issues tokens, and answers with the
 * scripted accepted, rejected, malformed, duplicated, wrong-key or missing replies.
 */
#include <fcntl.h>
#include <ftw.h>
#include <json-c/json.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-event.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "credentials.h"
#include "keygen.h"
#include "log.h"
#include "openssl-util.h"
#include "provision.h"
#include "store.h"

#define TEMPLATE      "TestTemplate"
#define CLIENT_ID     "gw-test-1"
#define THING_NAME    "thing-GW-1"
#define CSR_TOPIC     "$aws/certificates/create-from-csr/json"
#define REG_TOPIC     "$aws/provisioning-templates/" TEMPLATE "/provision/json"
#define MAX_CALLS     32
#define MAX_QUEUE     16
#define MAX_SCRIPT    8
#define WATCHDOG_USEC (60 * USEC_PER_SEC)

/* ---- a throwaway CA and claim files, shared by all tests ---- */

static struct {
	char dir[64];
	EVP_PKEY *ca_key;
	X509 *ca_cert;
	char ca_file[128], claim_cert[128], claim_key[128], future_claim_cert[128];
} fx;

static char *bio_to_string(BIO *bio)
{
	char *data;
	long n = BIO_get_mem_data(bio, &data);
	char *s = malloc((size_t)n + 1);

	assert_non_null(s);
	memcpy(s, data, (size_t)n);
	s[n] = '\0';
	return s;
}

static char *cert_to_pem(X509 *cert)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s;

	assert_int_equal(PEM_write_bio_X509(bio, cert), 1);
	s = bio_to_string(bio);
	BIO_free(bio);
	return s;
}

static char *key_to_pem(EVP_PKEY *key)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s;

	assert_int_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
	s = bio_to_string(bio);
	BIO_free(bio);
	return s;
}

/* A certificate for pub signed by the CA (or self-signed when the CA does not exist yet). */
static X509 *make_cert(EVP_PKEY *pub, const char *cn, int64_t not_before_offset)
{
	X509 *cert = X509_new();
	X509_NAME *name = X509_NAME_new();
	static long serial = 1;

	assert_non_null(cert);
	X509_set_version(cert, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(cert, name);
	X509_set_issuer_name(cert, fx.ca_cert ? X509_get_subject_name(fx.ca_cert) : name);
	X509_gmtime_adj(X509_getm_notBefore(cert), (long)not_before_offset);
	X509_gmtime_adj(X509_getm_notAfter(cert), 30L * 24 * 3600);
	X509_set_pubkey(cert, pub);
	assert_true(X509_sign(cert, fx.ca_key, EVP_sha256()) > 0);
	X509_NAME_free(name);
	return cert;
}

static void write_file(const char *path, const char *content, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
	close(fd);
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = calloc(1, (size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	return buf;
}

static void write_cert_file(const char *path, EVP_PKEY *key, int64_t not_before_offset)
{
	X509 *cert = make_cert(key, "claim", not_before_offset);
	char *pem = cert_to_pem(cert);

	write_file(path, pem, 0644);
	free(pem);
	X509_free(cert);
}

static int group_setup(void **state)
{
	EVP_PKEY *claim_key = EVP_EC_gen("P-256");
	char *pem;

	snprintf(fx.dir, sizeof(fx.dir), "/tmp/test-provision-XXXXXX");
	assert_non_null(mkdtemp(fx.dir));
	fx.ca_key = EVP_EC_gen("P-256");
	assert_non_null(fx.ca_key);
	fx.ca_cert = make_cert(fx.ca_key, "Test CA", -3600);
	snprintf(fx.ca_file, sizeof(fx.ca_file), "%s/ca.pem", fx.dir);
	snprintf(fx.claim_cert, sizeof(fx.claim_cert), "%s/claim.crt", fx.dir);
	snprintf(fx.claim_key, sizeof(fx.claim_key), "%s/claim.key", fx.dir);
	snprintf(fx.future_claim_cert, sizeof(fx.future_claim_cert), "%s/future.crt", fx.dir);
	pem = cert_to_pem(fx.ca_cert);
	write_file(fx.ca_file, pem, 0644);
	free(pem);
	write_cert_file(fx.claim_cert, claim_key, -3600);
	write_cert_file(fx.future_claim_cert, claim_key, 24 * 3600);
	pem = key_to_pem(claim_key);
	write_file(fx.claim_key, pem, 0600);
	free(pem);
	EVP_PKEY_free(claim_key);
	return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void remove_tree(const char *dir)
{
	nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int group_teardown(void **state)
{
	remove_tree(fx.dir);
	X509_free(fx.ca_cert);
	EVP_PKEY_free(fx.ca_key);
	return 0;
}

/* ---- the fake AWS IoT behind the transport ops table ---- */

enum reply_kind {
	REPLY_ACCEPT, /* the default once a script runs out */
	REPLY_REJECT, /* statusCode/errorCode from the script */
	REPLY_TOKEN_INVALID,
	REPLY_NONE,      /* never answer: the deadline must fire */
	REPLY_MALFORMED, /* not JSON */
	REPLY_OVERSIZED, /* over the 128 KB MQTT limit */
	REPLY_WRONG_KEY, /* a valid certificate, for somebody else's key */
	REPLY_DUPLICATE, /* accepted, delivered twice */
	REPLY_LOST,      /* the connection drops instead of an answer */
};

struct reply {
	enum reply_kind kind;
	int status;
	const char *code;
};

struct connect_step {
	enum transport_failure failure; /* TRANSPORT_OK: CONNACK 0 */
	int connack;
};

struct queued {
	struct transport_event ev;
	char *topic;
	char *payload;
};

struct call {
	char what[48];
	uint64_t at_usec;
};

struct fake {
	sd_event *event;
	sd_event_source *defer;
	transport_event_fn cb;
	void *userdata;
	struct queued queue[MAX_QUEUE];
	size_t n_queue;
	bool connected, subscribed;

	/* The script. */
	struct connect_step connects[MAX_SCRIPT];
	struct reply csr_replies[MAX_SCRIPT], reg_replies[MAX_SCRIPT];
	bool suback_refused;

	/* What happened. */
	struct call calls[MAX_CALLS];
	size_t n_calls;
	unsigned n_connect, n_csr, n_reg;
	char *csrs[MAX_SCRIPT];       /* CSR PEMs received */
	char *tokens[MAX_SCRIPT];     /* tokens issued, in order */
	char *reg_tokens[MAX_SCRIPT]; /* tokens received in RegisterThing */
	char *reg_serial[MAX_SCRIPT]; /* the SerialNumber parameter received */
	char *connect_client_ids[MAX_SCRIPT];
	char *connect_cert_files[MAX_SCRIPT];
};

static uint64_t mono_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

static void record(struct fake *f, const char *fmt, ...) _printf_(2, 3);
static void record(struct fake *f, const char *fmt, ...)
{
	va_list ap;

	assert_true(f->n_calls < MAX_CALLS);
	va_start(ap, fmt);
	vsnprintf(f->calls[f->n_calls].what, sizeof(f->calls[0].what), fmt, ap);
	va_end(ap);
	f->calls[f->n_calls++].at_usec = mono_usec();
}

static void enqueue(struct fake *f, struct transport_event ev, const char *topic,
                    const char *payload, size_t len)
{
	struct queued *q;

	assert_true(f->n_queue < MAX_QUEUE);
	q = &f->queue[f->n_queue++];
	*q = (struct queued){.ev = ev};
	if (topic) {
		q->topic = strdup(topic);
		q->payload = malloc(len + 1);
		assert_non_null(q->payload);
		memcpy(q->payload, payload, len);
		q->payload[len] = '\0';
	}
	assert_true(sd_event_source_set_enabled(f->defer, SD_EVENT_ONESHOT) >= 0);
}

static void queued_free(struct queued *q)
{
	free(q->topic);
	free(q->payload);
}

static void clear_queue(struct fake *f)
{
	for (size_t i = 0; i < f->n_queue; i++)
		queued_free(&f->queue[i]);
	f->n_queue = 0;
}

/* Events come one per loop iteration, in order, like a socket that becomes readable. */
static int deliver(sd_event_source *s, void *userdata)
{
	struct fake *f = userdata;
	struct queued q;

	if (f->n_queue == 0)
		return 0;
	q = f->queue[0];
	memmove(&f->queue[0], &f->queue[1], (f->n_queue - 1) * sizeof(q));
	f->n_queue--;
	if (f->n_queue > 0)
		sd_event_source_set_enabled(f->defer, SD_EVENT_ONESHOT);
	q.ev.topic = q.topic;
	q.ev.payload = q.payload;
	f->cb(&q.ev, f->userdata);
	queued_free(&q);
	return 0;
}

static void fake_set_handler(void *impl, transport_event_fn cb, void *userdata)
{
	struct fake *f = impl;

	f->cb = cb;
	f->userdata = userdata;
}

static int fake_connect(void *impl, const struct transport_identity *id)
{
	struct fake *f = impl;
	struct connect_step step = {TRANSPORT_OK, 0};

	assert_false(f->connected);
	assert_string_equal(id->host, "iot.test.invalid");
	if (f->n_connect < MAX_SCRIPT) {
		step = f->connects[f->n_connect];
		f->connect_client_ids[f->n_connect] = strdup(id->client_id);
		f->connect_cert_files[f->n_connect] = strdup(id->cert_file);
	}
	f->n_connect++;
	record(f, "connect %s", id->client_id);
	if (step.failure != TRANSPORT_OK) {
		enqueue(f,
		        (struct transport_event){.type = TRANSPORT_EVENT_DISCONNECTED,
		                                 .failure = step.failure,
		                                 .connack = step.connack,
		                                 .detail = "scripted failure"},
		        NULL, NULL, 0);
		return 0;
	}
	f->connected = true;
	enqueue(f, (struct transport_event){.type = TRANSPORT_EVENT_CONNECTED, .connack = -1}, NULL,
	        NULL, 0);
	return 0;
}

static int fake_subscribe(void *impl, const char *const *filters, size_t n)
{
	static const char *const expected[] = {CSR_TOPIC "/accepted", CSR_TOPIC "/rejected",
	                                       REG_TOPIC "/accepted", REG_TOPIC "/rejected"};
	struct fake *f = impl;

	assert_true(f->connected);
	assert_int_equal(n, ARRAY_SIZE(expected));
	for (size_t i = 0; i < n; i++)
		assert_string_equal(filters[i], expected[i]);
	record(f, "subscribe %zu", n);
	f->subscribed = !f->suback_refused;
	enqueue(f,
	        (struct transport_event){.type = TRANSPORT_EVENT_SUBSCRIBED,
	                                 .granted_ok = !f->suback_refused},
	        NULL, NULL, 0);
	return 0;
}

static void reply(struct fake *f, const char *topic, const char *payload)
{
	enqueue(f,
	        (struct transport_event){.type = TRANSPORT_EVENT_MESSAGE, .len = strlen(payload)},
	        topic, payload, strlen(payload));
}

static void reply_json(struct fake *f, const char *topic, json_object *o)
{
	reply(f, topic, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
}

static void reply_rejected(struct fake *f, const char *base, int status, const char *code,
                           const char *message)
{
	json_object *o = json_object_new_object();
	char topic[256];

	json_object_object_add(o, "statusCode", json_object_new_int(status));
	json_object_object_add(o, "errorCode", json_object_new_string(code));
	json_object_object_add(o, "errorMessage", json_object_new_string(message));
	snprintf(topic, sizeof(topic), "%s/rejected", base);
	reply_json(f, topic, o);
}

static char *fingerprint_hex(X509 *cert)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned n = 0;
	char *hex = malloc(2 * EVP_MAX_MD_SIZE + 1);

	assert_non_null(hex);
	assert_int_equal(X509_digest(cert, EVP_sha256(), md, &n), 1);
	for (unsigned i = 0; i < n; i++)
		sprintf(hex + 2 * i, "%02x", md[i]);
	return hex;
}

static json_object *certificate_reply(struct fake *f, const char *csr_pem, bool wrong_key)
{
	BIO *bio = BIO_new_mem_buf(csr_pem, -1);
	X509_REQ *req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
	EVP_PKEY *other = wrong_key ? EVP_EC_gen("P-256") : NULL;
	X509 *cert;
	json_object *o = json_object_new_object();
	char token[64], *pem, *id;

	assert_non_null(req);
	cert = make_cert(other ? other : X509_REQ_get0_pubkey(req), "device", -60);
	pem = cert_to_pem(cert);
	id = fingerprint_hex(cert);
	snprintf(token, sizeof(token), "secret-token-%u-%08lx", f->n_csr, (unsigned long)random());
	if (!wrong_key && f->n_csr <= MAX_SCRIPT)
		f->tokens[f->n_csr - 1] = strdup(token);
	json_object_object_add(o, "certificateId", json_object_new_string(id));
	json_object_object_add(o, "certificatePem", json_object_new_string(pem));
	json_object_object_add(o, "certificateOwnershipToken", json_object_new_string(token));
	free(pem);
	free(id);
	X509_free(cert);
	EVP_PKEY_free(other);
	X509_REQ_free(req);
	BIO_free(bio);
	return o;
}

static json_object *registration_reply(void)
{
	json_object *o = json_object_new_object(), *conf = json_object_new_object();

	json_object_object_add(conf, "region", json_object_new_string("lab"));
	json_object_object_add(o, "thingName", json_object_new_string(THING_NAME));
	json_object_object_add(o, "deviceConfiguration", conf);
	return o;
}

static const char *json_get(json_object *o, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		return NULL;
	return json_object_get_string(v);
}

static char *oversized_payload(void)
{
	size_t n = 200 * 1024;
	char *s = malloc(n + 3);

	assert_non_null(s);
	s[0] = '{';
	memset(s + 1, ' ', n);
	strcpy(s + 1 + n, "}");
	return s;
}

/* Everything but the accepted reply and its duplicate is the same for both operations. */
static bool reply_special(struct fake *f, const struct reply *r, const char *base)
{
	char topic[256], *big;

	snprintf(topic, sizeof(topic), "%s/accepted", base);
	switch (r->kind) {
	case REPLY_REJECT:
		reply_rejected(f, base, r->status, r->code, "scripted rejection");
		return true;
	case REPLY_TOKEN_INVALID:
		reply_rejected(f, base, 400, "InvalidCertificateOwnershipToken",
		               "Certificate ownership token is invalid or expired.");
		return true;
	case REPLY_NONE:
		return true;
	case REPLY_MALFORMED:
		reply(f, topic, "{\"certificateId\": [1, 2");
		return true;
	case REPLY_OVERSIZED:
		big = oversized_payload();
		reply(f, topic, big);
		free(big);
		return true;
	case REPLY_LOST:
		f->connected = f->subscribed = false;
		enqueue(f,
		        (struct transport_event){.type = TRANSPORT_EVENT_DISCONNECTED,
		                                 .failure = TRANSPORT_FAIL_LOST,
		                                 .connack = -1},
		        NULL, NULL, 0);
		return true;
	default:
		return false;
	}
}

static void handle_csr(struct fake *f, json_object *req)
{
	struct reply r = f->n_csr < MAX_SCRIPT ? f->csr_replies[f->n_csr] : (struct reply){0};
	const char *csr = json_get(req, "certificateSigningRequest");
	json_object *o;

	assert_non_null(csr);
	if (f->n_csr < MAX_SCRIPT)
		f->csrs[f->n_csr] = strdup(csr);
	f->n_csr++;
	record(f, "publish csr");
	if (reply_special(f, &r, CSR_TOPIC))
		return;
	o = certificate_reply(f, csr, r.kind == REPLY_WRONG_KEY);
	if (r.kind == REPLY_DUPLICATE)
		reply(f, CSR_TOPIC "/accepted",
		      json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	reply_json(f, CSR_TOPIC "/accepted", o);
}

static void handle_register(struct fake *f, json_object *req)
{
	struct reply r = f->n_reg < MAX_SCRIPT ? f->reg_replies[f->n_reg] : (struct reply){0};
	const char *token = json_get(req, "certificateOwnershipToken");
	json_object *params, *serial;

	assert_non_null(token);
	assert_true(json_object_object_get_ex(req, "parameters", &params));
	assert_true(json_object_object_get_ex(params, "SerialNumber", &serial));
	if (f->n_reg < MAX_SCRIPT) {
		f->reg_tokens[f->n_reg] = strdup(token);
		f->reg_serial[f->n_reg] = strdup(json_object_get_string(serial));
	}
	f->n_reg++;
	record(f, "publish register");
	if (reply_special(f, &r, REG_TOPIC))
		return;
	if (r.kind == REPLY_DUPLICATE)
		reply_json(f, REG_TOPIC "/accepted", registration_reply());
	reply_json(f, REG_TOPIC "/accepted", registration_reply());
}

static int fake_publish(void *impl, const char *topic, const void *payload, size_t len)
{
	struct fake *f = impl;
	char *text = strndup(payload, len);
	json_object *req = json_tokener_parse(text);

	/* Subscribe first (spec §1.1): a publish before the SUBACK may lose the reply. */
	assert_true(f->connected && f->subscribed);
	assert_non_null(req);
	if (strcmp(topic, CSR_TOPIC) == 0)
		handle_csr(f, req);
	else if (strcmp(topic, REG_TOPIC) == 0)
		handle_register(f, req);
	else
		fail_msg("publish to unexpected topic '%s'", topic);
	/* The PUBACK comes after the reply: the state machine must not wait for it. */
	if (f->connected)
		enqueue(f, (struct transport_event){.type = TRANSPORT_EVENT_PUBLISHED}, NULL, NULL,
		        0);
	json_object_put(req);
	free(text);
	return 0;
}

static void fake_disconnect(void *impl)
{
	struct fake *f = impl;

	record(f, "disconnect");
	clear_queue(f);
	f->connected = f->subscribed = false;
}

static const struct transport_ops fake_ops = {
    .set_handler = fake_set_handler,
    .connect = fake_connect,
    .subscribe = fake_subscribe,
    .publish = fake_publish,
    .disconnect = fake_disconnect,
};

static void fake_free(struct fake *f)
{
	clear_queue(f);
	sd_event_source_disable_unref(f->defer);
	for (size_t i = 0; i < MAX_SCRIPT; i++) {
		free(f->csrs[i]);
		free(f->tokens[i]);
		free(f->reg_tokens[i]);
		free(f->reg_serial[i]);
		free(f->connect_client_ids[i]);
		free(f->connect_cert_files[i]);
	}
}

/* ---- the harness: one provisioning run on a real event loop ---- */

struct harness {
	char state_dir[128];
	struct config cfg;
	struct param_value param_items[1];
	struct param_list params;
	struct prov_settings settings;
	struct fake fake;
	sd_event *event;
	struct store *store;
	struct prov *prov;
	enum prov_result result;
	bool done, timed_out;
	enum prov_state cancel_in_state; /* PROV_IDLE: never cancel */
	enum prov_state state_at_cancel;
	bool start_verify; /* start as main does for a CRED_UNVERIFIED identity */
};

static void harness_init_at(struct harness *h, const char *state_dir)
{
	*h = (struct harness){0};
	snprintf(h->state_dir, sizeof(h->state_dir), "%s", state_dir);
	h->cfg = (struct config){
	    .endpoint = (char *)"iot.test.invalid",
	    .port = 8883,
	    .ca_file = fx.ca_file,
	    .claim_certificate = fx.claim_cert,
	    .claim_private_key = fx.claim_key,
	    .template_name = (char *)TEMPLATE,
	    .key_type = KEY_EC_P256,
	    .state_dir = h->state_dir,
	    .keepalive_sec = 60,
	};
	h->param_items[0] = (struct param_value){(char *)"SerialNumber", (char *)"GW-1"};
	h->params = (struct param_list){h->param_items, 1};
	h->settings = (struct prov_settings){
	    .config = &h->cfg,
	    .params = &h->params,
	    .client_id = CLIENT_ID,
	    .csr_subject = "CN=" CLIENT_ID,
	    .connect_timeout_usec = 3 * USEC_PER_SEC,
	    .response_timeout_usec = 3 * USEC_PER_SEC,
	    .retry_base_usec = 20 * USEC_PER_MSEC,
	    .retry_cap_usec = 40 * USEC_PER_MSEC,
	    .retry_permanent_usec = 20 * USEC_PER_SEC,
	    .token_max_age_usec = 3300 * USEC_PER_SEC,
	    .clock_floor_sec = 1,
	};
	assert_int_equal(sd_event_new(&h->event), 0);
	h->fake.event = h->event;
	assert_int_equal(sd_event_add_defer(h->event, &h->fake.defer, deliver, &h->fake), 0);
	assert_int_equal(sd_event_source_set_enabled(h->fake.defer, SD_EVENT_OFF), 0);
	assert_int_equal(store_open(h->state_dir, &h->store), 0);
}

static void harness_init(struct harness *h)
{
	static unsigned n;
	char dir[128];

	snprintf(dir, sizeof(dir), "%s/state-%u", fx.dir, n++);
	harness_init_at(h, dir);
}

static void on_done(enum prov_result result, void *userdata)
{
	struct harness *h = userdata;

	assert_false(h->done); /* exactly once */
	h->done = true;
	h->result = result;
	sd_event_exit(h->event, 0);
}

static int on_watchdog(sd_event_source *s, uint64_t usec, void *userdata)
{
	struct harness *h = userdata;

	h->timed_out = true;
	return sd_event_exit(h->event, 0);
}

/* SIGTERM as main delivers it, once the machine has settled in the state under test. */
static int on_cancel_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
	struct harness *h = userdata;

	if (prov_get_state(h->prov) != h->cancel_in_state)
		return sd_event_source_set_time_relative(s, 20 * USEC_PER_MSEC) < 0 ||
		       sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
	h->state_at_cancel = prov_get_state(h->prov);
	prov_cancel(h->prov);
	return 0;
}

static enum cred_state cred_state_of(const struct harness *h)
{
	enum cred_state state = _CRED_STATE_MAX;

	assert_int_equal(cred_check(store_dirfd(h->store), 0, &state, NULL), 0);
	return state;
}

/* What main does when the fast path finds an identity committed but never verified. */
static void start_verify(struct harness *h)
{
	struct cred_info info = {0};
	enum cred_state state;

	assert_int_equal(cred_check(store_dirfd(h->store), 0, &state, &info), 0);
	assert_int_equal(state, CRED_UNVERIFIED);
	assert_int_equal(prov_start_verify(h->prov, info.thing_name, NULL), -EINVAL);
	assert_int_equal(prov_start_verify(h->prov, info.thing_name, info.certificate_id), 0);
	assert_int_equal(prov_start_verify(h->prov, info.thing_name, info.certificate_id), -EBUSY);
	assert_int_equal(prov_start(h->prov), -EBUSY);
	cred_info_clear(&info);
}

static enum prov_result harness_run(struct harness *h)
{
	struct transport t = {&fake_ops, &h->fake};

	assert_int_equal(prov_new(h->event, &h->settings, h->store, t, on_done, h, &h->prov), 0);
	assert_int_equal(prov_get_state(h->prov), PROV_IDLE);
	assert_int_equal(sd_event_add_time_relative(h->event, NULL, CLOCK_MONOTONIC, WATCHDOG_USEC,
	                                            0, on_watchdog, h),
	                 0);
	if (h->cancel_in_state != PROV_IDLE)
		assert_int_equal(sd_event_add_time_relative(h->event, NULL, CLOCK_MONOTONIC,
		                                            100 * USEC_PER_MSEC, 1000,
		                                            on_cancel_timer, h),
		                 0);
	if (h->start_verify)
		start_verify(h);
	else
		assert_int_equal(prov_start(h->prov), 0);
	assert_int_equal(sd_event_loop(h->event), 0);
	assert_false(h->timed_out);
	assert_true(h->done);
	return h->result;
}

static void harness_stop(struct harness *h)
{
	prov_free(h->prov);
	fake_free(&h->fake);
	store_free(h->store);
	sd_event_unref(h->event);
}

static void harness_finish(struct harness *h)
{
	harness_stop(h);
	remove_tree(h->state_dir);
}

/* The process ends (or the power goes) and the next boot starts on the same state dir. */
static void harness_reboot(struct harness *h)
{
	char dir[sizeof(h->state_dir)];
	struct config cfg = h->cfg;

	memcpy(dir, h->state_dir, sizeof(dir));
	harness_stop(h);
	harness_init_at(h, dir);
	h->cfg.verify = cfg.verify;
}

/* "connect gw-test-1,subscribe 4,..." from the recorded calls, for one-line assertions. */
static const char *calls(const struct harness *h)
{
	static char buf[MAX_CALLS * 50];
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < h->fake.n_calls; i++)
		off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", i ? "," : "",
		                        h->fake.calls[i].what);
	return buf;
}

/* Time between the i-th and j-th recorded calls. */
static uint64_t gap_usec(const struct harness *h, size_t i, size_t j)
{
	assert_true(i < h->fake.n_calls && j < h->fake.n_calls);
	return h->fake.calls[j].at_usec - h->fake.calls[i].at_usec;
}

static size_t find_call(const struct harness *h, const char *what, unsigned nth)
{
	for (size_t i = 0; i < h->fake.n_calls; i++)
		if (strcmp(h->fake.calls[i].what, what) == 0 && nth-- == 0)
			return i;
	fail_msg("call '%s' not found in %s", what, calls(h));
	return 0;
}

static char *state_file(const struct harness *h, const char *rel)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", h->state_dir, rel);
	return read_file(path);
}

static bool state_file_exists(const struct harness *h, const char *rel)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", h->state_dir, rel);
	return access(path, F_OK) == 0;
}

static bool csr_matches_key_pem(const char *csr_pem, const char *key_pem)
{
	EVP_PKEY *key = NULL;
	bool ok;

	assert_int_equal(keygen_load_private_key(key_pem, &key), 0);
	ok = keygen_csr_matches_key(csr_pem, key) == 0;
	EVP_PKEY_free(key);
	return ok;
}

/* The committed identity is complete, and its key is the key of every CSR that was sent. */
static void assert_committed(const struct harness *h)
{
	char *key = state_file(h, "current/device.key");
	char *crt = state_file(h, "current/device.crt");
	char *identity = state_file(h, "current/identity.json");
	int64_t nb, na;

	assert_non_null(key);
	assert_non_null(crt);
	assert_non_null(identity);
	assert_true(state_file_exists(h, "current/identity.env"));
	assert_non_null(strstr(identity, THING_NAME));
	assert_int_equal(cred_verify_pair(key, crt, 0, &nb, &na), 0);
	for (unsigned i = 0; i < h->fake.n_csr && i < MAX_SCRIPT; i++)
		assert_true(csr_matches_key_pem(h->fake.csrs[i], key));
	assert_false(state_file_exists(h, "pending"));
	free(key);
	free(crt);
	free(identity);
}

/* ---- the tests ---- */

static void test_happy_path(void **state)
{
	struct harness h;

	harness_init(&h);
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,publish csr,publish register,"
	                               "disconnect");
	assert_int_equal(prov_requests_sent(h.prov), 2);
	assert_int_equal(prov_get_state(h.prov), PROV_DONE);
	/* RegisterThing carried the token AWS issued and the template parameters. */
	assert_string_equal(h.fake.reg_tokens[0], h.fake.tokens[0]);
	assert_string_equal(h.fake.reg_serial[0], "GW-1");
	assert_committed(&h);
	/* verify = false: nothing connected with it; main accepts that with this setting. */
	assert_int_equal(cred_state_of(&h), CRED_UNVERIFIED);
	harness_finish(&h);
}

static void test_verify_connects_with_new_identity(void **state)
{
	struct harness h;
	char expected[256];

	harness_init(&h);
	h.cfg.verify = true;
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,publish csr,publish register,"
	                               "disconnect,connect " THING_NAME ",disconnect");
	snprintf(expected, sizeof(expected), "%s/current/device.crt", h.state_dir);
	assert_string_equal(h.fake.connect_cert_files[1], expected);
	assert_string_equal(h.fake.connect_cert_files[0], fx.claim_cert);
	assert_committed(&h);
	/* Proven, and recorded as such before READY: the next boot takes the fast path. */
	assert_int_equal(cred_state_of(&h), CRED_VALID);
	harness_finish(&h);
}

static void test_verify_refused_is_permanent(void **state)
{
	struct harness h;

	harness_init(&h);
	h.cfg.verify = true;
	h.settings.max_attempts = 1;
	h.fake.connects[1] = (struct connect_step){TRANSPORT_FAIL_NOT_AUTHORIZED, 5};
	assert_int_equal(harness_run(&h), PROV_RESULT_GAVE_UP);
	/* Committed all the same; only the proof is missing, and the next boot can tell. */
	assert_true(state_file_exists(&h, "current/device.crt"));
	assert_false(state_file_exists(&h, "pending"));
	assert_int_equal(cred_state_of(&h), CRED_UNVERIFIED);
	harness_finish(&h);
}

/*
 * The boot after a refused (or interrupted) verify goes straight back to VERIFYING with the
 * committed identity: no claim connection, no CSR, no second registration.
 */
static void test_unverified_identity_resumes_at_verify(void **state)
{
	struct harness h;
	char *crt_before, *crt_after;

	harness_init(&h);
	h.cfg.verify = true;
	h.settings.max_attempts = 1;
	h.fake.connects[1] = (struct connect_step){TRANSPORT_FAIL_NOT_AUTHORIZED, 5};
	assert_int_equal(harness_run(&h), PROV_RESULT_GAVE_UP);
	crt_before = state_file(&h, "current/device.crt");

	/* Still refused: still unverified, and still nothing but a connect was tried. */
	harness_reboot(&h);
	h.settings.max_attempts = 1;
	h.start_verify = true;
	h.fake.connects[0] = (struct connect_step){TRANSPORT_FAIL_NOT_AUTHORIZED, 5};
	assert_int_equal(harness_run(&h), PROV_RESULT_GAVE_UP);
	assert_string_equal(calls(&h), "connect " THING_NAME);
	assert_int_equal(cred_state_of(&h), CRED_UNVERIFIED);

	/* Before the clock is set the proof waits too, and needs no claim to do so. */
	harness_reboot(&h);
	h.start_verify = true;
	h.settings.clock_floor_sec = (int64_t)time(NULL) + 24 * 3600;
	h.cfg.claim_certificate = "/nonexistent/claim.crt";
	h.cancel_in_state = PROV_CLOCK_WAIT;
	assert_int_equal(harness_run(&h), PROV_RESULT_CANCELLED);
	assert_int_equal(h.fake.n_connect, 0);
	assert_int_equal(cred_state_of(&h), CRED_UNVERIFIED);

	/* Activated in the cloud: the proof succeeds. A commit cut short left pending/. */
	harness_reboot(&h);
	h.start_verify = true;
	h.cfg.claim_certificate = "/nonexistent/claim.crt";
	assert_int_equal(store_pending_save_attempt(h.store, 1, 1, "left over"), 0);
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_string_equal(calls(&h), "connect " THING_NAME ",disconnect");
	assert_int_equal(prov_requests_sent(h.prov), 0);
	assert_int_equal(cred_state_of(&h), CRED_VALID);
	crt_after = state_file(&h, "current/device.crt");
	assert_string_equal(crt_before, crt_after);
	assert_committed(&h);
	free(crt_before);
	free(crt_after);
	harness_finish(&h);
}

static void test_transient_connect_failures_back_off(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.connects[0] = (struct connect_step){TRANSPORT_FAIL_DNS, -1};
	h.fake.connects[1] = (struct connect_step){TRANSPORT_FAIL_TCP, -1};
	h.fake.connects[2] = (struct connect_step){TRANSPORT_FAIL_TLS, -1};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_connect, 4);
	assert_int_equal(h.fake.n_csr, 1);
	/* Backoff, not the permanent schedule: at least the 20 ms floor, far below 10 s. */
	for (unsigned i = 0; i < 3; i++) {
		uint64_t gap = gap_usec(&h, find_call(&h, "connect gw-test-1", i),
		                        find_call(&h, "connect gw-test-1", i + 1));
		assert_true(gap >= 20 * USEC_PER_MSEC);
		assert_true(gap < 10 * USEC_PER_SEC);
	}
	assert_committed(&h);
	harness_finish(&h);
}

static void test_throttled_csr_is_retried(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.csr_replies[0] = (struct reply){REPLY_REJECT, 429, "ThrottlingException"};
	h.fake.csr_replies[1] = (struct reply){REPLY_REJECT, 503, "ServiceUnavailable"};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_csr, 3);
	assert_int_equal(h.fake.n_reg, 1);
	assert_int_equal(h.fake.n_connect, 3);
	assert_int_equal(prov_requests_sent(h.prov), 4);
	assert_true(gap_usec(&h, find_call(&h, "publish csr", 0), find_call(&h, "publish csr", 2)) <
	            10 * USEC_PER_SEC);
	assert_committed(&h);
	harness_finish(&h);
}

/*
 * A 429 waits 1 s (here the 200 ms base) plus a draw from retry.throttle, not from
 * retry.base. Every retry here comes after the end of its window (the floor is longer than
 * the window), so each 429 opens one twice as long: the retries come within 20, 40, 80 and
 * 160 ms of the floor (plus 50 ms for a slow machine), where draws from the base windows
 * (200, 400, 800, 1600 ms) would all be that short only about once in 600 runs.
 */
static void test_throttling_draws_from_its_own_window(void **state)
{
	const uint64_t floor = 200 * USEC_PER_MSEC, window = 20 * USEC_PER_MSEC,
	               slack = 50 * USEC_PER_MSEC;
	struct harness h;

	harness_init(&h);
	h.settings.retry_base_usec = floor;
	h.settings.retry_cap_usec = 10 * USEC_PER_SEC;
	h.settings.retry_throttle_usec = window;
	for (unsigned i = 0; i < 4; i++)
		h.fake.csr_replies[i] = (struct reply){REPLY_REJECT, 429, "ThrottlingException"};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_csr, 5);
	for (unsigned i = 0; i < 4; i++) {
		uint64_t gap = gap_usec(&h, find_call(&h, "disconnect", i),
		                        find_call(&h, "connect gw-test-1", i + 1));
		assert_true(gap >= floor);
		assert_true(gap <= floor + (window << i) + slack);
	}
	assert_committed(&h);
	harness_finish(&h);
}

/*
 * A retry throttled again inside its window tries again within what is left of that
 * window, so the crowd is through when the window ends; only one throttled after the end
 * opens a new, longer window. Checked against the recorded times of each rejection.
 */
static void test_throttled_again_inside_the_window(void **state)
{
	const uint64_t floor = 20 * USEC_PER_MSEC, window = 600 * USEC_PER_MSEC,
	               slack = 50 * USEC_PER_MSEC, margin = 5 * USEC_PER_MSEC;
	struct harness h;
	uint64_t until, len = window;
	unsigned inside = 0;

	harness_init(&h);
	h.settings.retry_base_usec = floor;
	h.settings.retry_cap_usec = 10 * USEC_PER_SEC;
	h.settings.retry_throttle_usec = window;
	for (unsigned i = 0; i < 5; i++)
		h.fake.csr_replies[i] = (struct reply){REPLY_REJECT, 429, "ThrottlingException"};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	until = h.fake.calls[find_call(&h, "disconnect", 0)].at_usec + window;
	for (unsigned i = 1; i < 5; i++) {
		uint64_t rejected = h.fake.calls[find_call(&h, "disconnect", i)].at_usec;
		uint64_t next = h.fake.calls[find_call(&h, "connect gw-test-1", i + 1)].at_usec;

		if (rejected + margin < until) {
			assert_true(next <= until + floor + slack);
			inside++;
		} else if (rejected > until + margin) {
			len *= 2;
			until = rejected + len;
			assert_true(next <= until + floor + slack);
		}
	}
	/* Most retries land inside the first window; a run where none did checks nothing. */
	assert_true(inside > 0);
	assert_committed(&h);
	harness_finish(&h);
}

static void test_register_server_error_keeps_token(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.reg_replies[0] = (struct reply){REPLY_REJECT, 500, "InternalFailure"};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,publish csr,publish register,"
	                               "disconnect,connect gw-test-1,subscribe 4,publish register,"
	                               "disconnect");
	assert_string_equal(h.fake.reg_tokens[0], h.fake.reg_tokens[1]);
	assert_committed(&h);
	harness_finish(&h);
}

static void test_no_reply_times_out_and_retries(void **state)
{
	struct harness h;
	uint64_t waited;

	harness_init(&h);
	h.settings.response_timeout_usec = 300 * USEC_PER_MSEC;
	h.fake.csr_replies[0] = (struct reply){REPLY_NONE, 0, NULL};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_csr, 2);
	assert_int_equal(h.fake.n_connect, 2);
	waited = gap_usec(&h, find_call(&h, "publish csr", 0), find_call(&h, "disconnect", 0));
	assert_true(waited >= 300 * USEC_PER_MSEC);
	assert_committed(&h);
	harness_finish(&h);
}

static void test_lost_connection_resumes_at_register(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.reg_replies[0] = (struct reply){REPLY_LOST, 0, NULL};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_csr, 1);
	assert_int_equal(h.fake.n_reg, 2);
	assert_int_equal(h.fake.n_connect, 2);
	assert_string_equal(h.fake.reg_tokens[0], h.fake.reg_tokens[1]);
	assert_committed(&h);
	harness_finish(&h);
}

static void test_duplicate_replies_are_ignored(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.csr_replies[0] = (struct reply){REPLY_DUPLICATE, 0, NULL};
	h.fake.reg_replies[0] = (struct reply){REPLY_DUPLICATE, 0, NULL};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,publish csr,publish register,"
	                               "disconnect");
	assert_int_equal(prov_requests_sent(h.prov), 2);
	assert_committed(&h);
	harness_finish(&h);
}

static void test_bad_replies_are_transient(void **state)
{
	static const enum reply_kind kinds[] = {REPLY_MALFORMED, REPLY_OVERSIZED, REPLY_WRONG_KEY};

	for (size_t i = 0; i < ARRAY_SIZE(kinds); i++) {
		struct harness h;

		harness_init(&h);
		h.settings.max_attempts = 2;
		h.fake.csr_replies[0] = (struct reply){kinds[i], 0, NULL};
		assert_int_equal(harness_run(&h), PROV_RESULT_READY);
		assert_int_equal(h.fake.n_csr, 2);
		assert_int_equal(h.fake.n_connect, 2);
		assert_committed(&h);
		harness_finish(&h);
	}
	{
		struct harness h;

		harness_init(&h);
		h.settings.max_attempts = 2;
		h.fake.reg_replies[0] = (struct reply){REPLY_MALFORMED, 0, NULL};
		assert_int_equal(harness_run(&h), PROV_RESULT_READY);
		assert_int_equal(h.fake.n_reg, 2);
		assert_committed(&h);
		harness_finish(&h);
	}
}

static void test_invalid_token_restarts_with_same_key(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.reg_replies[0] = (struct reply){REPLY_TOKEN_INVALID, 0, NULL};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	/* At once, on the same connection: no backoff, no reconnect. */
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,publish csr,publish register,"
	                               "publish csr,publish register,disconnect");
	assert_string_equal(h.fake.csrs[0], h.fake.csrs[1]);
	assert_string_equal(h.fake.reg_tokens[1], h.fake.tokens[1]);
	assert_string_not_equal(h.fake.reg_tokens[0], h.fake.reg_tokens[1]);
	assert_int_equal(prov_requests_sent(h.prov), 4);
	assert_committed(&h); /* checks both CSRs against the committed key */
	harness_finish(&h);
}

static void test_invalid_token_twice_backs_off(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.reg_replies[0] = (struct reply){REPLY_TOKEN_INVALID, 0, NULL};
	h.fake.reg_replies[1] = (struct reply){REPLY_TOKEN_INVALID, 0, NULL};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_connect, 2);
	assert_int_equal(h.fake.n_csr, 3);
	assert_int_equal(h.fake.n_reg, 3);
	assert_committed(&h);
	harness_finish(&h);
}

static void test_permanent_rejection_waits_slow_schedule(void **state)
{
	struct harness h;
	uint64_t gap;

	harness_init(&h);
	h.settings.retry_permanent_usec = 400 * USEC_PER_MSEC;
	h.fake.reg_replies[0] = (struct reply){REPLY_REJECT, 403, "AccessDeniedException"};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_csr, 1); /* the certificate is kept */
	assert_int_equal(h.fake.n_reg, 2);
	gap = gap_usec(&h, find_call(&h, "disconnect", 0), find_call(&h, "connect gw-test-1", 1));
	/* Jittered in [T/2, T], never the 20-40 ms backoff of transient errors. */
	assert_true(gap >= 200 * USEC_PER_MSEC);
	assert_committed(&h);
	harness_finish(&h);
}

static void test_permanent_rejections_give_up_with_max_attempts(void **state)
{
	static const struct {
		bool csr;
		int status;
		const char *code;
	} cases[] = {
	    {true, 400, "InvalidCsr"},
	    {true, 403, "AccessDenied"},
	    {false, 400, "InvalidParameters"},
	    {false, 404, "ResourceNotFoundException"},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct harness h;
		char *attempt;
		char status[16];

		harness_init(&h);
		h.settings.max_attempts = 1;
		if (cases[i].csr)
			h.fake.csr_replies[0] =
			    (struct reply){REPLY_REJECT, cases[i].status, cases[i].code};
		else
			h.fake.reg_replies[0] =
			    (struct reply){REPLY_REJECT, cases[i].status, cases[i].code};
		assert_int_equal(harness_run(&h), PROV_RESULT_GAVE_UP);
		assert_int_equal(h.fake.n_connect, 1);
		assert_false(state_file_exists(&h, "current"));
		/* The attempt is on record for `fleetprovd status`, with AWS's status code. */
		attempt = state_file(&h, "pending/attempt.json");
		assert_non_null(attempt);
		snprintf(status, sizeof(status), "%d", cases[i].status);
		assert_non_null(strstr(attempt, status));
		assert_non_null(strstr(attempt, cases[i].code));
		assert_true(state_file_exists(&h, "pending/device.key"));
		free(attempt);
		harness_finish(&h);
	}
}

static void test_suback_refused_is_permanent(void **state)
{
	struct harness h;

	harness_init(&h);
	h.settings.max_attempts = 1;
	h.fake.suback_refused = true;
	assert_int_equal(harness_run(&h), PROV_RESULT_GAVE_UP);
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,disconnect");
	assert_int_equal(prov_requests_sent(h.prov), 0);
	harness_finish(&h);
}

static void test_refused_connections_are_permanent(void **state)
{
	static const struct connect_step steps[] = {
	    {TRANSPORT_FAIL_TLS_UNTRUSTED, -1},
	    {TRANSPORT_FAIL_NOT_AUTHORIZED, 5},
	    {TRANSPORT_FAIL_REFUSED, 2},
	};

	for (size_t i = 0; i < ARRAY_SIZE(steps); i++) {
		struct harness h;

		harness_init(&h);
		h.settings.max_attempts = 2;
		h.settings.retry_permanent_usec = 300 * USEC_PER_MSEC;
		h.fake.connects[0] = steps[i];
		h.fake.connects[1] = steps[i];
		assert_int_equal(harness_run(&h), PROV_RESULT_GAVE_UP);
		assert_int_equal(h.fake.n_connect, 2);
		assert_true(gap_usec(&h, 0, find_call(&h, "connect gw-test-1", 1)) >=
		            150 * USEC_PER_MSEC);
		harness_finish(&h);
	}
}

static void test_server_unavailable_is_transient(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.connects[0] = (struct connect_step){TRANSPORT_FAIL_REFUSED, 3};
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_connect, 2);
	assert_true(gap_usec(&h, 0, find_call(&h, "connect gw-test-1", 1)) < 10 * USEC_PER_SEC);
	harness_finish(&h);
}

static void test_max_attempts_gives_up(void **state)
{
	struct harness h;
	json_object *record_json, *v;
	char *attempt;

	harness_init(&h);
	h.settings.max_attempts = 3;
	for (unsigned i = 0; i < MAX_SCRIPT; i++)
		h.fake.connects[i] = (struct connect_step){TRANSPORT_FAIL_DNS, -1};
	assert_int_equal(harness_run(&h), PROV_RESULT_GAVE_UP);
	assert_int_equal(h.fake.n_connect, 3);
	assert_int_equal(prov_get_state(h.prov), PROV_FAILED);
	attempt = state_file(&h, "pending/attempt.json");
	assert_non_null(attempt);
	record_json = json_tokener_parse(attempt);
	assert_non_null(record_json);
	assert_true(json_object_object_get_ex(record_json, "attempt", &v));
	assert_int_equal(json_object_get_int(v), 3);
	assert_non_null(strstr(json_get(record_json, "lastError"), "DNS"));
	json_object_put(record_json);
	free(attempt);
	harness_finish(&h);
}

static void test_unreadable_claim_credentials_is_config(void **state)
{
	struct harness h;

	harness_init(&h);
	h.fake.connects[0] = (struct connect_step){TRANSPORT_FAIL_CREDENTIALS, -1};
	assert_int_equal(harness_run(&h), PROV_RESULT_CONFIG);
	assert_int_equal(h.fake.n_connect, 1);
	harness_finish(&h);

	/* A claim key that is not there at all is caught before any connection. */
	harness_init(&h);
	h.cfg.claim_private_key = (char *)"/nonexistent/claim.key";
	assert_int_equal(harness_run(&h), PROV_RESULT_CONFIG);
	assert_int_equal(h.fake.n_connect, 0);
	harness_finish(&h);
}

static void test_unreadable_key_file_is_config(void **state)
{
	struct harness h;

	harness_init(&h);
	h.cfg.key_file = (char *)"/nonexistent/device.key";
	assert_int_equal(harness_run(&h), PROV_RESULT_CONFIG);
	assert_int_equal(h.fake.n_connect, 0);
	assert_false(state_file_exists(&h, "pending/device.key"));
	harness_finish(&h);
}

static char *write_user_key(const char *name, EVP_PKEY **ret_key)
{
	char path[256], *pem = NULL;

	snprintf(path, sizeof(path), "%s/%s", fx.dir, name);
	assert_int_equal(keygen_generate(KEY_EC_P256, ret_key), 0);
	assert_int_equal(keygen_private_key_pem(*ret_key, &pem), 0);
	write_file(path, pem, 0600);
	free(pem);
	return strdup(path);
}

static char *write_user_csr(const char *name, EVP_PKEY *key)
{
	char path[256], *pem = NULL;

	snprintf(path, sizeof(path), "%s/%s", fx.dir, name);
	assert_int_equal(keygen_build_csr(key, "CN=user-csr", &pem), 0);
	write_file(path, pem, 0644);
	free(pem);
	return strdup(path);
}

static void test_csr_file_for_another_key_is_config(void **state)
{
	EVP_PKEY *key = NULL, *other = NULL;
	char *key_path = write_user_key("mine.key", &key);
	char *other_path = write_user_key("other.key", &other);
	char *csr_path = write_user_csr("other.csr", other);
	struct harness h;

	harness_init(&h);
	h.cfg.key_file = key_path;
	h.cfg.csr_file = csr_path;
	assert_int_equal(harness_run(&h), PROV_RESULT_CONFIG);
	assert_int_equal(h.fake.n_connect, 0);
	harness_finish(&h);
	EVP_PKEY_free(key);
	EVP_PKEY_free(other);
	free(key_path);
	free(other_path);
	free(csr_path);
}

static void test_user_key_and_csr_are_used(void **state)
{
	EVP_PKEY *key = NULL;
	char *key_path = write_user_key("user.key", &key);
	char *csr_path = write_user_csr("user.csr", key);
	char *csr = read_file(csr_path), *committed;
	EVP_PKEY *committed_key = NULL;
	struct harness h;

	harness_init(&h);
	h.cfg.key_file = key_path;
	h.cfg.csr_file = csr_path;
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_string_equal(h.fake.csrs[0], csr);
	committed = state_file(&h, "current/device.key");
	assert_int_equal(keygen_load_private_key(committed, &committed_key), 0);
	assert_int_equal(EVP_PKEY_eq(committed_key, key), 1);
	assert_committed(&h);
	harness_finish(&h);
	EVP_PKEY_free(key);
	EVP_PKEY_free(committed_key);
	free(committed);
	free(csr);
	free(key_path);
	free(csr_path);
}

/* pending/ as a run that stopped after CreateCertificateFromCsr would leave it. */
static void make_pending(struct harness *h, uint64_t age_usec, bool registered, char **ret_csr)
{
	EVP_PKEY *key = NULL;
	char *key_pem = NULL, *csr_pem = NULL;
	struct fake issuer = {0};
	json_object *o;
	struct proto_cert_accepted c;
	struct timespec ts;

	assert_int_equal(keygen_generate(KEY_EC_P256, &key), 0);
	assert_int_equal(keygen_private_key_pem(key, &key_pem), 0);
	assert_int_equal(keygen_build_csr(key, "CN=" CLIENT_ID, &csr_pem), 0);
	assert_int_equal(store_pending_save_key(h->store, key_pem, csr_pem), 0);
	issuer.n_csr = MAX_SCRIPT + 1; /* do not record the token */
	o = certificate_reply(&issuer, csr_pem, false);
	c = (struct proto_cert_accepted){(char *)json_get(o, "certificateId"),
	                                 (char *)json_get(o, "certificatePem"),
	                                 (char *)json_get(o, "certificateOwnershipToken")};
	clock_gettime(CLOCK_REALTIME, &ts);
	assert_int_equal(store_pending_save_certificate(
	                     h->store, &c, (uint64_t)ts.tv_sec * USEC_PER_SEC - age_usec),
	                 0);
	if (registered) {
		struct proto_devconf_entry e = {(char *)"region", (char *)"lab"};
		struct proto_register_accepted r = {(char *)THING_NAME, &e, 1};
		assert_int_equal(store_pending_save_registration(h->store, &r), 0);
	}
	json_object_put(o);
	free(key_pem);
	EVP_PKEY_free(key);
	*ret_csr = csr_pem;
}

static void test_resume_from_certificate_starts_at_register(void **state)
{
	struct harness h;
	char *csr;

	harness_init(&h);
	make_pending(&h, 60 * USEC_PER_SEC, false, &csr);
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,publish register,disconnect");
	assert_int_equal(prov_requests_sent(h.prov), 1);
	assert_committed(&h);
	harness_finish(&h);
	free(csr);
}

static void test_resume_registered_needs_no_network(void **state)
{
	struct harness h;
	char *csr;

	harness_init(&h);
	make_pending(&h, 60 * USEC_PER_SEC, true, &csr);
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_int_equal(h.fake.n_calls, 0);
	assert_int_equal(prov_requests_sent(h.prov), 0);
	assert_committed(&h);
	harness_finish(&h);
	free(csr);
}

static void test_expired_token_requests_new_certificate(void **state)
{
	struct harness h;
	char *csr, *key;

	harness_init(&h);
	h.settings.token_max_age_usec = 3300 * USEC_PER_SEC;
	make_pending(&h, 7200 * USEC_PER_SEC, false, &csr);
	key = state_file(&h, "pending/device.key");
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,publish csr,publish register,"
	                               "disconnect");
	/* The same key and the same CSR: no new key material for a stale token. */
	assert_string_equal(h.fake.csrs[0], csr);
	assert_true(csr_matches_key_pem(h.fake.csrs[0], key));
	assert_string_equal(h.fake.reg_tokens[0], h.fake.tokens[0]);
	assert_committed(&h);
	harness_finish(&h);
	free(csr);
	free(key);
}

static void test_cancel_keeps_pending(void **state)
{
	struct harness h;

	harness_init(&h);
	h.settings.response_timeout_usec = 30 * USEC_PER_SEC;
	h.fake.csr_replies[0] = (struct reply){REPLY_NONE, 0, NULL};
	h.cancel_in_state = PROV_CSR_SENT;
	assert_int_equal(harness_run(&h), PROV_RESULT_CANCELLED);
	assert_int_equal(h.state_at_cancel, PROV_CSR_SENT);
	assert_string_equal(calls(&h), "connect gw-test-1,subscribe 4,publish csr,disconnect");
	assert_true(state_file_exists(&h, "pending/device.key"));
	assert_true(state_file_exists(&h, "pending/request.csr"));
	assert_false(state_file_exists(&h, "current"));
	harness_finish(&h);
}

static void test_clock_behind_waits(void **state)
{
	struct harness h;

	harness_init(&h);
	h.settings.clock_floor_sec = (int64_t)time(NULL) + 24 * 3600;
	h.cancel_in_state = PROV_CLOCK_WAIT;
	assert_int_equal(harness_run(&h), PROV_RESULT_CANCELLED);
	assert_int_equal(h.state_at_cancel, PROV_CLOCK_WAIT);
	assert_int_equal(h.fake.n_connect, 0);
	/* The key is made and stored before the wait, so nothing is lost by waiting. */
	assert_true(state_file_exists(&h, "pending/device.key"));
	harness_finish(&h);

	/* A claim certificate that is not valid yet means the clock is behind as well. */
	harness_init(&h);
	h.cfg.claim_certificate = fx.future_claim_cert;
	h.cancel_in_state = PROV_CLOCK_WAIT;
	assert_int_equal(harness_run(&h), PROV_RESULT_CANCELLED);
	assert_int_equal(h.state_at_cancel, PROV_CLOCK_WAIT);
	assert_int_equal(h.fake.n_connect, 0);
	harness_finish(&h);
}

static void test_secrets_never_logged(void **state)
{
	char log_path[256], *log, *key, *line, *save = NULL;
	int saved_stderr, fd, level = log_get_max_level();
	struct harness h;

	snprintf(log_path, sizeof(log_path), "%s/debug.log", fx.dir);
	fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	saved_stderr = dup(STDERR_FILENO);
	dup2(fd, STDERR_FILENO);
	log_set_max_level(LOG_DEBUG);

	harness_init(&h);
	h.fake.reg_replies[0] = (struct reply){REPLY_TOKEN_INVALID, 0, NULL};
	h.fake.csr_replies[1] = (struct reply){REPLY_REJECT, 403, "Forbidden"};
	h.settings.retry_permanent_usec = 50 * USEC_PER_MSEC;
	assert_int_equal(harness_run(&h), PROV_RESULT_READY);

	fflush(stderr);
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	close(fd);
	log_set_max_level(level);

	log = read_file(log_path);
	key = state_file(&h, "current/device.key");
	assert_non_null(log);
	/* Debug output was captured, so the absence of secrets below means something. */
	assert_non_null(strstr(log, "State csr-sent -> register-sent"));
	assert_non_null(strstr(log, "403"));
	/* Tokens 0 and 2 were issued (the second CSR was refused); neither was logged. */
	assert_non_null(h.fake.tokens[0]);
	assert_non_null(h.fake.tokens[2]);
	for (unsigned i = 0; i < MAX_SCRIPT; i++)
		if (h.fake.tokens[i])
			assert_null(strstr(log, h.fake.tokens[i]));
	for (line = strtok_r(key, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (strncmp(line, "-----", 5) != 0 && strstr(log, line))
			fail_msg("key line '%s' is in the log", line);
	free(log);
	free(key);
	harness_finish(&h);
}

static void test_state_names(void **state)
{
	assert_string_equal(prov_state_to_string(PROV_CSR_SENT), "csr-sent");
	assert_string_equal(prov_state_to_string(PROV_DONE), "done");
	for (int s = 0; s < _PROV_STATE_MAX; s++)
		assert_non_null(prov_state_to_string((enum prov_state)s));
	assert_null(prov_state_to_string(_PROV_STATE_MAX));
	assert_null(prov_state_to_string(_PROV_STATE_INVALID));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_happy_path),
	    cmocka_unit_test(test_verify_connects_with_new_identity),
	    cmocka_unit_test(test_verify_refused_is_permanent),
	    cmocka_unit_test(test_unverified_identity_resumes_at_verify),
	    cmocka_unit_test(test_transient_connect_failures_back_off),
	    cmocka_unit_test(test_throttled_csr_is_retried),
	    cmocka_unit_test(test_throttling_draws_from_its_own_window),
	    cmocka_unit_test(test_throttled_again_inside_the_window),
	    cmocka_unit_test(test_register_server_error_keeps_token),
	    cmocka_unit_test(test_no_reply_times_out_and_retries),
	    cmocka_unit_test(test_lost_connection_resumes_at_register),
	    cmocka_unit_test(test_duplicate_replies_are_ignored),
	    cmocka_unit_test(test_bad_replies_are_transient),
	    cmocka_unit_test(test_invalid_token_restarts_with_same_key),
	    cmocka_unit_test(test_invalid_token_twice_backs_off),
	    cmocka_unit_test(test_permanent_rejection_waits_slow_schedule),
	    cmocka_unit_test(test_permanent_rejections_give_up_with_max_attempts),
	    cmocka_unit_test(test_suback_refused_is_permanent),
	    cmocka_unit_test(test_refused_connections_are_permanent),
	    cmocka_unit_test(test_server_unavailable_is_transient),
	    cmocka_unit_test(test_max_attempts_gives_up),
	    cmocka_unit_test(test_unreadable_claim_credentials_is_config),
	    cmocka_unit_test(test_unreadable_key_file_is_config),
	    cmocka_unit_test(test_csr_file_for_another_key_is_config),
	    cmocka_unit_test(test_user_key_and_csr_are_used),
	    cmocka_unit_test(test_resume_from_certificate_starts_at_register),
	    cmocka_unit_test(test_resume_registered_needs_no_network),
	    cmocka_unit_test(test_expired_token_requests_new_certificate),
	    cmocka_unit_test(test_cancel_keeps_pending),
	    cmocka_unit_test(test_clock_behind_waits),
	    cmocka_unit_test(test_secrets_never_logged),
	    cmocka_unit_test(test_state_names),
	};

	/* Keep the test output readable; test_secrets_never_logged raises it to debug itself. */
	log_set_max_level(LOG_WARNING);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
