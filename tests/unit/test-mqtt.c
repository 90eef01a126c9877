/*
 * Tests for mqtt.c against a real mosquitto broker on loopback, with real TLS and client
 * certificates made by the openssl command for each run. Exits 77 (skip) without them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "macro.h"
#include "mqtt.h"
#include "transport.h"

#define MOSQUITTO_BIN "/usr/sbin/mosquitto"
#define OPENSSL_BIN   "/usr/bin/openssl"
#define CLIENT_ID     "fleetprovd-test"
#define EVENTS_MAX    32
#define STEP_USEC     (50 * USEC_PER_MSEC)

/*
 * Four listeners: the normal one, one whose certificate names another host, one that
 * refuses clients without a user name (CONNACK 5), and one without TLS.
 */
static struct {
	char dir[64];
	uint16_t port_ok, port_wrong_host, port_no_anon, port_plain, port_closed;
	pid_t broker;
} env;

struct recorded {
	struct transport_event ev;
	char detail[256];
	char topic[256];
	char payload[256];
};

struct harness {
	sd_event *event;
	struct mqtt *mqtt;
	struct transport t;
	struct recorded events[EVENTS_MAX];
	size_t n_events;
	bool in_call;       /* inside an ops call: events must not arrive now */
	unsigned reentrant; /* events that did arrive inside an ops call */
	bool disconnect_on_message;
};

static char *path_in(const char *name)
{
	static char buf[8][256];
	static unsigned next;
	char *p = buf[next++ % ARRAY_SIZE(buf)];

	snprintf(p, sizeof(buf[0]), "%s/%s", env.dir, name);
	return p;
}

static void on_event(const struct transport_event *ev, void *userdata)
{
	struct harness *h = userdata;
	struct recorded *r;

	if (h->in_call)
		h->reentrant++;
	if (h->n_events >= EVENTS_MAX)
		return;
	r = &h->events[h->n_events++];
	r->ev = *ev;
	snprintf(r->detail, sizeof(r->detail), "%s", ev->detail ? ev->detail : "");
	if (ev->type == TRANSPORT_EVENT_MESSAGE) {
		snprintf(r->topic, sizeof(r->topic), "%s", ev->topic);
		memcpy(r->payload, ev->payload, ev->len < sizeof(r->payload) ? ev->len : 0);
		if (h->disconnect_on_message)
			h->t.ops->disconnect(h->t.impl);
	}
}

static void harness_init(struct harness *h)
{
	memset(h, 0, sizeof(*h));
	assert_int_equal(sd_event_new(&h->event), 0);
	assert_int_equal(mqtt_new(h->event, &h->mqtt), 0);
	h->t = mqtt_transport(h->mqtt);
	h->t.ops->set_handler(h->t.impl, on_event, h);
}

static void harness_done(struct harness *h)
{
	h->mqtt = mqtt_free(h->mqtt);
	h->event = sd_event_unref(h->event);
}

static uint64_t now_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

/* Run the loop until the n-th event arrived; false on timeout. */
static bool run_until_events(struct harness *h, size_t n, uint64_t timeout_usec)
{
	uint64_t end = now_usec() + timeout_usec;

	while (h->n_events < n && now_usec() < end)
		assert_true(sd_event_run(h->event, STEP_USEC) >= 0);
	return h->n_events >= n;
}

static const struct recorded *wait_event(struct harness *h, enum transport_event_type type)
{
	size_t n = h->n_events + 1;

	if (!run_until_events(h, n, 10 * USEC_PER_SEC))
		fail_msg("no event of type %d within 10 s", type);
	if (h->events[n - 1].ev.type != type)
		fail_msg("event %d (failure %d: %s), expected %d", h->events[n - 1].ev.type,
		         h->events[n - 1].ev.failure, h->events[n - 1].detail, type);
	return &h->events[n - 1];
}

static struct transport_identity identity(uint16_t port, const char *ca, const char *cert,
                                          const char *key)
{
	return (struct transport_identity){
	    .host = "localhost",
	    .port = port,
	    .ca_file = path_in(ca),
	    .cert_file = path_in(cert),
	    .key_file = path_in(key),
	    .client_id = CLIENT_ID,
	    .keepalive_sec = 30,
	};
}

static int do_connect(struct harness *h, const struct transport_identity *id)
{
	int r;

	h->in_call = true;
	r = h->t.ops->connect(h->t.impl, id);
	h->in_call = false;
	return r;
}

static const struct recorded *connect_expect_failure(struct harness *h,
                                                     const struct transport_identity *id,
                                                     enum transport_failure failure)
{
	const struct recorded *r;

	assert_int_equal(do_connect(h, id), 0);
	r = wait_event(h, TRANSPORT_EVENT_DISCONNECTED);
	if (r->ev.failure != failure)
		fail_msg("failure %d (%s: %s), expected %d (%s)", r->ev.failure,
		         transport_failure_to_string(r->ev.failure), r->detail, failure,
		         transport_failure_to_string(failure));
	assert_int_equal(h->reentrant, 0);
	assert_non_null(r->ev.detail);
	assert_true(r->detail[0] != '\0');
	return r;
}

static void connect_ok(struct harness *h, const char *client_id)
{
	struct transport_identity id =
	    identity(env.port_ok, "ca1.crt", "client1.crt", "client1.key");

	id.client_id = client_id;
	assert_int_equal(do_connect(h, &id), 0);
	wait_event(h, TRANSPORT_EVENT_CONNECTED);
	assert_int_equal(h->reentrant, 0);
}

/* Nothing more may arrive: run the loop for a while and look. */
static void expect_quiet(struct harness *h, uint64_t usec)
{
	size_t n = h->n_events;

	run_until_events(h, n + 1, usec);
	assert_int_equal(h->n_events, n);
}

/* ---- tests ---- */

static void test_connect_subscribe_publish(void **state)
{
	static const char payload[] = "{\"a\":\"b/c\"}\0binary\xff";
	const char *const filters[] = {"test/fleetprovd/accepted", "test/fleetprovd/rejected"};
	struct transport_identity id =
	    identity(env.port_ok, "ca1.crt", "client1.crt", "client1.key");
	struct harness h;
	const struct recorded *r;
	size_t n;

	harness_init(&h);
	connect_ok(&h, CLIENT_ID);
	/* One connection at a time. */
	assert_int_equal(h.t.ops->connect(h.t.impl, &id), -EBUSY);

	h.in_call = true;
	assert_int_equal(h.t.ops->subscribe(h.t.impl, filters, ARRAY_SIZE(filters)), 0);
	h.in_call = false;
	r = wait_event(&h, TRANSPORT_EVENT_SUBSCRIBED);
	assert_true(r->ev.granted_ok);

	h.in_call = true;
	assert_int_equal(h.t.ops->publish(h.t.impl, filters[1], payload, sizeof(payload)), 0);
	h.in_call = false;
	/* PUBACK and the echoed message may come in either order. */
	n = h.n_events;
	assert_true(run_until_events(&h, n + 2, 10 * USEC_PER_SEC));
	for (size_t i = n; i < n + 2; i++) {
		r = &h.events[i];
		if (r->ev.type == TRANSPORT_EVENT_PUBLISHED)
			continue;
		assert_int_equal(r->ev.type, TRANSPORT_EVENT_MESSAGE);
		assert_string_equal(r->topic, filters[1]);
		assert_int_equal(r->ev.len, sizeof(payload));
		assert_memory_equal(r->payload, payload, sizeof(payload));
	}
	assert_int_not_equal(h.events[n].ev.type, h.events[n + 1].ev.type);
	assert_int_equal(h.reentrant, 0);

	/* disconnect is silent, and the object can connect again. */
	h.t.ops->disconnect(h.t.impl);
	expect_quiet(&h, 300 * USEC_PER_MSEC);
	connect_ok(&h, CLIENT_ID);
	h.t.ops->disconnect(h.t.impl);
	harness_done(&h);
}

static void test_large_payload(void **state)
{
	/* Bigger than a TLS record and the default socket buffers: partial writes happen. */
	const size_t len = 120 * 1024;
	_cleanup_free_ char *big = malloc(len);
	const char *const filters[] = {"test/fleetprovd/big"};
	struct harness h;
	size_t n;

	assert_non_null(big);
	for (size_t i = 0; i < len; i++)
		big[i] = (char)('a' + i % 26);
	harness_init(&h);
	connect_ok(&h, CLIENT_ID);
	assert_int_equal(h.t.ops->subscribe(h.t.impl, filters, 1), 0);
	assert_true(wait_event(&h, TRANSPORT_EVENT_SUBSCRIBED)->ev.granted_ok);
	assert_int_equal(h.t.ops->publish(h.t.impl, filters[0], big, len), 0);
	n = h.n_events;
	assert_true(run_until_events(&h, n + 2, 10 * USEC_PER_SEC));
	assert_true(h.events[n].ev.type == TRANSPORT_EVENT_MESSAGE ||
	            h.events[n + 1].ev.type == TRANSPORT_EVENT_MESSAGE);
	for (size_t i = n; i < n + 2; i++)
		if (h.events[i].ev.type == TRANSPORT_EVENT_MESSAGE)
			assert_int_equal(h.events[i].ev.len, len);
	h.t.ops->disconnect(h.t.impl);
	harness_done(&h);
}

static void test_session_taken_over(void **state)
{
	struct harness a, b;
	const struct recorded *r;

	/* spec §3.2: a second connection with the same client id ends the first. */
	harness_init(&a);
	harness_init(&b);
	connect_ok(&a, CLIENT_ID "-twin");
	connect_ok(&b, CLIENT_ID "-twin");
	r = wait_event(&a, TRANSPORT_EVENT_DISCONNECTED);
	assert_int_equal(r->ev.failure, TRANSPORT_FAIL_LOST);
	assert_int_equal(a.reentrant, 0);
	/* Gone means gone: publishing needs a new connect. */
	assert_int_equal(a.t.ops->publish(a.t.impl, "test/x", "1", 1), -ENOTCONN);
	b.t.ops->disconnect(b.t.impl);
	harness_done(&a);
	harness_done(&b);
}

static void test_disconnect_inside_handler(void **state)
{
	const char *const filters[] = {"test/fleetprovd/bye"};
	struct harness h;

	harness_init(&h);
	connect_ok(&h, CLIENT_ID);
	assert_int_equal(h.t.ops->subscribe(h.t.impl, filters, 1), 0);
	wait_event(&h, TRANSPORT_EVENT_SUBSCRIBED);
	/* Tearing down from inside libmosquitto's message callback must be safe. */
	h.disconnect_on_message = true;
	assert_int_equal(h.t.ops->publish(h.t.impl, filters[0], "x", 1), 0);
	assert_true(run_until_events(&h, h.n_events + 1, 10 * USEC_PER_SEC));
	run_until_events(&h, h.n_events + 1, 300 * USEC_PER_MSEC);
	assert_int_equal(h.events[h.n_events - 1].ev.type, TRANSPORT_EVENT_MESSAGE);
	assert_int_equal(h.t.ops->publish(h.t.impl, filters[0], "x", 1), -ENOTCONN);
	connect_ok(&h, CLIENT_ID);
	h.t.ops->disconnect(h.t.impl);
	harness_done(&h);
}

static void test_server_not_trusted(void **state)
{
	struct transport_identity id =
	    identity(env.port_ok, "ca2.crt", "client1.crt", "client1.key");
	struct harness h;
	const struct recorded *r;

	harness_init(&h);
	r = connect_expect_failure(&h, &id, TRANSPORT_FAIL_TLS_UNTRUSTED);
	/* OpenSSL's verify error, e.g. "self-signed certificate in certificate chain". */
	assert_non_null(strstr(r->detail, "certificate"));
	assert_int_equal(r->ev.connack, -1);
	harness_done(&h);
}

static void test_server_wrong_host(void **state)
{
	struct transport_identity id =
	    identity(env.port_wrong_host, "ca1.crt", "client1.crt", "client1.key");
	struct harness h;
	const struct recorded *r;

	harness_init(&h);
	r = connect_expect_failure(&h, &id, TRANSPORT_FAIL_TLS_UNTRUSTED);
	assert_non_null(strstr(r->detail, "host name verification failed"));
	harness_done(&h);
}

static void test_client_cert_unknown(void **state)
{
	struct transport_identity id =
	    identity(env.port_ok, "ca1.crt", "client2.crt", "client2.key");
	struct harness h;
	const struct recorded *r;

	harness_init(&h);
	r = connect_expect_failure(&h, &id, TRANSPORT_FAIL_NOT_AUTHORIZED);
	assert_int_equal(r->ev.connack, -1);
	harness_done(&h);
}

static void test_connack_not_authorized(void **state)
{
	struct transport_identity id =
	    identity(env.port_no_anon, "ca1.crt", "client1.crt", "client1.key");
	struct harness h;
	const struct recorded *r;

	harness_init(&h);
	r = connect_expect_failure(&h, &id, TRANSPORT_FAIL_NOT_AUTHORIZED);
	assert_int_equal(r->ev.connack, 5);
	harness_done(&h);
}

static void test_server_without_tls(void **state)
{
	struct transport_identity id =
	    identity(env.port_plain, "ca1.crt", "client1.crt", "client1.key");
	struct harness h;

	/* The broker takes ClientHello for a broken MQTT packet and hangs up. */
	harness_init(&h);
	connect_expect_failure(&h, &id, TRANSPORT_FAIL_TLS);
	harness_done(&h);
}

static void test_credentials(void **state)
{
	struct {
		const char *cert, *key, *ca, *detail;
	} cases[] = {
	    {"client1.crt", "missing.key", "ca1.crt", "missing.key"},
	    {"missing.crt", "client1.key", "ca1.crt", "missing.crt"},
	    {"client1.crt", "client1.key", "missing-ca.crt", "missing-ca.crt"},
	    {"client1.crt", "client2.key", "ca1.crt", "does not match"},
	    {"garbage.pem", "client1.key", "ca1.crt", "garbage.pem"},
	    {"client1.crt", "garbage.pem", "ca1.crt", "garbage.pem"},
	};
	struct harness h;

	harness_init(&h);
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct transport_identity id =
		    identity(env.port_ok, cases[i].ca, cases[i].cert, cases[i].key);
		const struct recorded *r =
		    connect_expect_failure(&h, &id, TRANSPORT_FAIL_CREDENTIALS);

		if (!strstr(r->detail, cases[i].detail))
			fail_msg("case %zu: detail '%s' lacks '%s'", i, r->detail, cases[i].detail);
	}
	/* The same object connects fine once the files are right. */
	connect_ok(&h, CLIENT_ID);
	h.t.ops->disconnect(h.t.impl);
	harness_done(&h);
}

static void test_nothing_listening(void **state)
{
	struct transport_identity id =
	    identity(env.port_closed, "ca1.crt", "client1.crt", "client1.key");
	struct harness h;
	const struct recorded *r;

	harness_init(&h);
	r = connect_expect_failure(&h, &id, TRANSPORT_FAIL_TCP);
	assert_non_null(strstr(r->detail, "refused"));
	harness_done(&h);
}

static void test_dns(void **state)
{
	struct transport_identity id =
	    identity(env.port_ok, "ca1.crt", "client1.crt", "client1.key");
	struct harness h;
	const struct recorded *r;

	/* RFC 6761: ".invalid" never resolves. */
	id.host = "nonexistent.invalid";
	harness_init(&h);
	r = connect_expect_failure(&h, &id, TRANSPORT_FAIL_DNS);
	assert_non_null(strstr(r->detail, "nonexistent.invalid"));
	harness_done(&h);
}

static void test_disconnect_cancels_pending_failure(void **state)
{
	struct transport_identity id =
	    identity(env.port_ok, "ca1.crt", "client1.crt", "missing.key");
	struct harness h;

	harness_init(&h);
	assert_int_equal(do_connect(&h, &id), 0);
	h.t.ops->disconnect(h.t.impl);
	expect_quiet(&h, 300 * USEC_PER_MSEC);
	/* Freeing with a connection in progress is fine too. */
	id.key_file = path_in("client1.key");
	assert_int_equal(do_connect(&h, &id), 0);
	harness_done(&h);
}

static void test_misuse(void **state)
{
	struct transport_identity id =
	    identity(env.port_ok, "ca1.crt", "client1.crt", "client1.key");
	const char *const filters[] = {"test/x"};
	struct harness h;

	assert_null(mqtt_free(NULL));
	assert_int_equal(mqtt_new(NULL, &h.mqtt), -EINVAL);
	harness_init(&h);
	assert_int_equal(h.t.ops->subscribe(h.t.impl, filters, 1), -ENOTCONN);
	assert_int_equal(h.t.ops->publish(h.t.impl, "test/x", "1", 1), -ENOTCONN);
	assert_int_equal(h.t.ops->subscribe(h.t.impl, filters, 0), -EINVAL);
	assert_int_equal(h.t.ops->connect(h.t.impl, NULL), -EINVAL);
	id.host = "";
	assert_int_equal(h.t.ops->connect(h.t.impl, &id), -EINVAL);
	id.host = "localhost";
	id.client_id = NULL;
	assert_int_equal(h.t.ops->connect(h.t.impl, &id), -EINVAL);
	h.t.ops->disconnect(h.t.impl);
	expect_quiet(&h, 100 * USEC_PER_MSEC);
	assert_string_equal(transport_failure_to_string(TRANSPORT_FAIL_DNS), "DNS lookup failed");
	assert_string_equal(transport_failure_to_string(_TRANSPORT_FAIL_MAX), "unknown failure");
	harness_done(&h);
}

/* ---- the broker ---- */

static uint16_t free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	uint16_t port;

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static bool port_open(uint16_t port)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
	                        .sin_port = htons(port),
	                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

	if (fd >= 0)
		close(fd);
	return ok;
}

_printf_(1, 2) static void sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (system(cmd) != 0)
		fail_msg("command failed: %s", cmd);
}

/* CA 1 signs the broker and client 1; CA 2 signs client 2, whom the broker does not know. */
static void make_certificates(void)
{
	sh("cd '%s' && exec >openssl.log 2>&1 && "
	   "for n in ca1 ca2 server client1 client2; do " OPENSSL_BIN
	   " genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $n.key || exit 1; done && "
	   "for n in ca1 ca2; do " OPENSSL_BIN " req -x509 -new -key $n.key -days 2 "
	   "-subj /CN=fleetprovd-test-$n -out $n.crt || exit 1; done && "
	   "printf 'subjectAltName=DNS:localhost\\nextendedKeyUsage=serverAuth\\n' >server.ext && "
	   "printf 'subjectAltName=DNS:wrong.example\\nextendedKeyUsage=serverAuth\\n' >wrong.ext && "
	   "printf 'extendedKeyUsage=clientAuth\\n' >client.ext && "
	   "sign() { " OPENSSL_BIN " req -new -key $1.key -subj /CN=$3 | " OPENSSL_BIN
	   " x509 -req -CA $2.crt -CAkey $2.key -set_serial $6 -days 2 -extfile $4 -out $5; } && "
	   "sign server ca1 localhost server.ext server.crt 1 && "
	   "sign server ca1 wrong.example wrong.ext server-wrong.crt 2 && "
	   "sign client1 ca1 fleetprovd-client1 client.ext client1.crt 3 && "
	   "sign client2 ca2 fleetprovd-client2 client.ext client2.crt 4 && "
	   "printf 'not a certificate\\n' >garbage.pem",
	   env.dir);
}

static void write_broker_config(void)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/mosquitto.conf", env.dir);
	f = fopen(path, "we");
	assert_non_null(f);
	fprintf(f, "per_listener_settings true\n%s", geteuid() == 0 ? "user root\n" : "");
	fprintf(f, "log_dest stderr\nlog_type all\n");
	for (int i = 0; i < 3; i++) {
		uint16_t port = i == 0   ? env.port_ok
		                : i == 1 ? env.port_wrong_host
		                         : env.port_no_anon;

		fprintf(f, "listener %u localhost\n", port);
		fprintf(f, "allow_anonymous %s\n", i == 2 ? "false" : "true");
		fprintf(f, "cafile %s/ca1.crt\nkeyfile %s/server.key\n", env.dir, env.dir);
		fprintf(f, "certfile %s/%s\n", env.dir, i == 1 ? "server-wrong.crt" : "server.crt");
		fprintf(f, "require_certificate true\n");
		if (i == 0)
			fprintf(f, "use_identity_as_username true\n");
	}
	fprintf(f, "listener %u localhost\nallow_anonymous true\n", env.port_plain);
	assert_int_equal(fclose(f), 0);
}

static void start_broker(void)
{
	char conf[256], log[256];
	uint64_t end;

	snprintf(conf, sizeof(conf), "%s/mosquitto.conf", env.dir);
	snprintf(log, sizeof(log), "%s/mosquitto.log", env.dir);
	env.broker = fork();
	assert_true(env.broker >= 0);
	if (env.broker == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		execl(MOSQUITTO_BIN, "mosquitto", "-c", conf, (char *)NULL);
		_exit(127);
	}
	end = now_usec() + 10 * USEC_PER_SEC;
	while (!(port_open(env.port_ok) && port_open(env.port_wrong_host) &&
	         port_open(env.port_no_anon))) {
		if (now_usec() > end || waitpid(env.broker, NULL, WNOHANG) != 0)
			fail_msg("mosquitto did not start, see %s", log);
		usleep(20000);
	}
}

static int setup(void **state)
{
	snprintf(env.dir, sizeof(env.dir), "/tmp/fleetprovd-test-mqtt-XXXXXX");
	if (!mkdtemp(env.dir))
		return -1;
	env.port_ok = free_port();
	env.port_wrong_host = free_port();
	env.port_no_anon = free_port();
	env.port_plain = free_port();
	env.port_closed = free_port();
	make_certificates();
	write_broker_config();
	start_broker();
	return 0;
}

static int teardown(void **state)
{
	if (env.broker > 0) {
		kill(env.broker, SIGTERM);
		waitpid(env.broker, NULL, 0);
	}
	if (env.dir[0] && !getenv("FLEETPROVD_TEST_KEEP"))
		sh("rm -rf '%s'", env.dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_connect_subscribe_publish),
	    cmocka_unit_test(test_large_payload),
	    cmocka_unit_test(test_session_taken_over),
	    cmocka_unit_test(test_disconnect_inside_handler),
	    cmocka_unit_test(test_server_not_trusted),
	    cmocka_unit_test(test_server_wrong_host),
	    cmocka_unit_test(test_client_cert_unknown),
	    cmocka_unit_test(test_connack_not_authorized),
	    cmocka_unit_test(test_server_without_tls),
	    cmocka_unit_test(test_credentials),
	    cmocka_unit_test(test_nothing_listening),
	    cmocka_unit_test(test_dns),
	    cmocka_unit_test(test_disconnect_cancels_pending_failure),
	    cmocka_unit_test(test_misuse),
	};

	if (access(MOSQUITTO_BIN, X_OK) < 0 || access(OPENSSL_BIN, X_OK) < 0) {
		fprintf(stderr, "mosquitto or openssl not installed, skipping\n");
		return 77;
	}
	/* OpenSSL writes with write(): a reset connection must not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	if (getenv("FLEETPROVD_TEST_DEBUG"))
		log_set_max_level(LOG_DEBUG);
	return cmocka_run_group_tests(tests, setup, teardown);
}
