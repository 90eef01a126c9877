/*
 * libmosquitto behind the transport ops table, on sd-event (design.md decisions 3 and 13).
 *
 * Every connect makes a fresh struct mosquitto (clean session, MQTT 3.1.1) and every
 * failure or disconnect destroys it, so a reconnect never inherits queued packets or TLS
 * state. libmosquitto runs without its thread: its socket is an sd-event I/O source and
 * mosquitto_loop_misc (keepalive) runs from a 1 s timer. Events reach the handler from
 * the event loop only: a failure found inside an ops call waits for a defer source.
 *
 * What libmosquitto 2.0.11 does, and how this file copes (lib/net_mosq.c, lib/loop.c):
 *  - The name is resolved with a blocking getaddrinfo() inside mosquitto_connect_async():
 *    the client library has no asynchronous resolver. The TCP connect is non-blocking.
 *  - SNI is always sent: SSL_set_tlsext_host_name(ssl, host) in net__socket_connect_step3.
 *  - mosquitto_connect_async() calls SSL_connect() once. On a fast link (loopback) the
 *    server's answer is already there, so the whole handshake, and even its failure,
 *    can happen inside that call; the SSL object is freed again before it returns.
 *  - Afterwards the handshake is driven only by mosquitto_loop_read() (want_connect);
 *    mosquitto_loop_write() does nothing until it is done, so this file polls the
 *    direction OpenSSL waits for and calls loop_read for both.
 *  - A handshake failure in loop_read closes the socket and returns MOSQ_ERR_TLS without
 *    calling on_disconnect. A reset during the handshake (SSL_ERROR_SYSCALL) is reported
 *    as success with the handshake still pending, on a dead socket: the poll flags catch it.
 *  - Before on_disconnect runs, the SSL object is already freed, and the OpenSSL error
 *    queue is printed to the log callback and cleared. So the cause of a failure is
 *    collected as it happens: an info callback on the SSL object (alerts, handshake
 *    progress, verify result), the state seen at each step, and the first OpenSSL error
 *    code in libmosquitto's log lines ("OpenSSL Error[0]: error:0A000086:...").
 *  - MOSQ_OPT_SSL_CTX with MOSQ_OPT_SSL_CTX_WITH_DEFAULTS is unusable: its verify callback
 *    finds no client (tls_ex_index_mosq is only allocated when libmosquitto creates the
 *    context itself) and rejects every server (mosquitto #2463, fixed in 2.0.15). Without
 *    the defaults, libmosquitto takes the context as it is and only makes the SSL object
 *    (SNI included). So this file builds the context: CA, certificate and key are parsed
 *    once per connection (letting libmosquitto load them as well doubled the CPU of a
 *    connect: the key decoder alone is ~4 M instructions), an unreadable or mismatched
 *    file is told apart from a network problem before anything is sent, and OpenSSL
 *    itself checks the chain and the host name (X509_VERIFY_PARAM), with a precise verify
 *    error. Its info callback is on the context, so it sees the first SSL_connect too.
 *  - Its sockets are not O_CLOEXEC; the connection socket is fixed up here.
 *  - mosquitto_new() sets SIGPIPE to SIG_IGN for the whole process.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netdb.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "log.h"
#include "macro.h"
#include "mqtt.h"
#include "openssl-util.h"

/* loop_misc only checks keepalive, whose resolution is seconds. */
#define MQTT_MISC_INTERVAL_USEC (1 * USEC_PER_SEC)
#define MQTT_MISC_ACCURACY_USEC (100 * USEC_PER_MSEC)
/* Failure details are one line of text in a log record or STATUS=. */
#define MQTT_DETAIL_MAX 256
/* spec §3.3: ALPN protocol for X.509 client authentication on port 443. */
#define MQTT_ALPN_PORT 443
#define MQTT_ALPN      "x-amzn-mqtt-ca"
/* spec §1.1: every request and subscription uses QoS 1. */
#define MQTT_QOS 1
/* MQTT 3.1.1 §3.9.3: a SUBACK return code of 0x80 means the filter was refused. */
#define MQTT_SUBACK_FAILURE 0x80
/* spec §3.2: AWS IoT refuses an unauthorised client with CONNACK 7 where MQTT uses 5. */
#define MQTT_CONNACK_AWS_NOT_AUTHORIZED 7
/* How libmosquitto starts its own error lines (lib/net_mosq.c, lib/tls_mosq.c). */
#define LIB_ERROR_PREFIX "Error: "
/* TLS alert descriptions are one byte (RFC 8446 §6). */
#define TLS_ALERT_DESC_MAX 255

DEFINE_TRIVIAL_CLEANUP_FUNC(SSL_CTX *, SSL_CTX_free)

struct mqtt;

/* One connection attempt: lives from connect until it fails or is closed. */
struct mqtt_conn {
	struct mqtt *owner; /* NULL once detached: callbacks then do nothing */
	struct mosquitto *mosq;
	sd_event_source *io, *misc;
	int fd;
	unsigned busy;        /* libmosquitto calls in progress; free only at 0 */
	bool graceful;        /* send DISCONNECT before closing */
	bool connack_seen;    /* CONNACK 0: failures from now on are LOST */
	int last_publish_mid; /* PUBLISHED is reported for this message only */

	/* What is known about the way up, for classifying a failure. */
	bool tcp_up;            /* TCP connect finished */
	bool tls_done;          /* TLS handshake finished */
	bool cert_requested;    /* the server asked for our certificate */
	bool connect_queued;    /* libmosquitto queued CONNECT (TCP connect did not fail) */
	bool host_mismatch;     /* the server certificate does not name the endpoint */
	int early_errno;        /* a TCP error OpenSSL hit inside mosquitto_connect_async */
	long verify_result;     /* our verdict on the server certificate */
	int alert_received;     /* fatal TLS alert description from the server, or -1 */
	unsigned long ossl_err; /* first OpenSSL error libmosquitto logged, or 0 */
	char lib_error[MQTT_DETAIL_MAX]; /* first error line libmosquitto logged */

	bool failed;
	enum transport_failure failure;
	int connack;
	char detail[MQTT_DETAIL_MAX];
};

struct mqtt {
	sd_event *event;
	transport_event_fn handler;
	void *userdata;
	struct mqtt_conn *conn;
	/* A failure waiting to be reported from the event loop, never from inside a call. */
	sd_event_source *deferred;
	bool pending;
	struct transport_event pending_event;
	char pending_detail[MQTT_DETAIL_MAX];
};

static void conn_update_io(struct mqtt_conn *conn);

/* ---- connection lifetime ---- */

static void conn_free(struct mqtt_conn *conn)
{
	if (!conn)
		return;
	conn->io = sd_event_source_disable_unref(conn->io);
	conn->misc = sd_event_source_disable_unref(conn->misc);
	if (conn->mosq) {
		/* Not inside a libmosquitto callback now, so a queued DISCONNECT is written. */
		if (conn->graceful && mosquitto_socket(conn->mosq) >= 0)
			(void)mosquitto_loop_write(conn->mosq, 1);
		mosquitto_destroy(conn->mosq);
	}
	free(conn);
}

/* Cut conn loose from its owner; it is freed now, or when the running call returns. */
static void conn_detach(struct mqtt_conn *conn)
{
	if (conn->owner && conn->owner->conn == conn)
		conn->owner->conn = NULL;
	conn->owner = NULL;
	if (conn->io)
		(void)sd_event_source_set_enabled(conn->io, SD_EVENT_OFF);
	if (conn->misc)
		(void)sd_event_source_set_enabled(conn->misc, SD_EVENT_OFF);
	if (conn->busy == 0)
		conn_free(conn);
}

_printf_(3, 4) static void conn_fail(struct mqtt_conn *conn, enum transport_failure failure,
                                     const char *fmt, ...)
{
	va_list ap;

	if (conn->failed)
		return; /* the first cause is the real one */
	conn->failed = true;
	conn->failure = failure;
	va_start(ap, fmt);
	vsnprintf(conn->detail, sizeof(conn->detail), fmt, ap);
	va_end(ap);
	log_debug("MQTT connection failed: %s: %s", transport_failure_to_string(failure),
	          conn->detail);
}

/* Hand conn's failure to the owner for deferred delivery, then drop conn. */
static void conn_close_failed(struct mqtt_conn *conn)
{
	struct mqtt *m = conn->owner;

	if (m) {
		m->pending_event = (struct transport_event){
		    .type = TRANSPORT_EVENT_DISCONNECTED,
		    .failure = conn->failure,
		    .connack = conn->connack,
		    .detail = m->pending_detail,
		};
		snprintf(m->pending_detail, sizeof(m->pending_detail), "%s", conn->detail);
		m->pending = true;
		(void)sd_event_source_set_enabled(m->deferred, SD_EVENT_ONESHOT);
	}
	conn_detach(conn);
}

static void emit(struct mqtt_conn *conn, const struct transport_event *ev)
{
	struct mqtt *m = conn->owner;

	if (m && m->handler)
		m->handler(ev, m->userdata);
}

static int deferred_dispatch(sd_event_source *s, void *userdata)
{
	struct mqtt *m = userdata;
	struct transport_event ev;
	char detail[MQTT_DETAIL_MAX];

	if (!m->pending)
		return 0;
	/* Copy first: the handler may connect again, which may fail and fill these in. */
	ev = m->pending_event;
	snprintf(detail, sizeof(detail), "%s", m->pending_detail);
	ev.detail = detail;
	m->pending = false;
	if (m->handler)
		m->handler(&ev, m->userdata);
	return 0;
}

static void cancel_pending(struct mqtt *m)
{
	m->pending = false;
	(void)sd_event_source_set_enabled(m->deferred, SD_EVENT_OFF);
}

/* ---- watching the way up ---- */

/* Look at the SSL object while it exists: libmosquitto frees it before reporting. */
static void note_tls_state(struct mqtt_conn *conn)
{
	SSL *ssl = mosquitto_ssl_get(conn->mosq);
	long verify;

	if (!ssl)
		return;
	verify = SSL_get_verify_result(ssl);
	if (verify != X509_V_OK)
		conn->verify_result = verify;
	if (SSL_is_init_finished(ssl))
		conn->tcp_up = conn->tls_done = true;
}

static void tls_info(const SSL *ssl, int where, int ret)
{
	/* One context per connection: its app data is the connection. */
	struct mqtt_conn *conn = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	int state = SSL_get_state(ssl);

	if (!conn)
		return;
	/* SSL_CB_READ_ALERT shares its ALERT bit with SSL_CB_WRITE_ALERT: test both bits. */
	if ((where & SSL_CB_ALERT) && (where & SSL_CB_READ) && (ret >> 8) == SSL3_AL_FATAL &&
	    conn->alert_received < 0)
		conn->alert_received = ret & 0xff;
	/* We send an alert when we refuse the server: the verdict is set by then. */
	if ((where & SSL_CB_ALERT) && (where & SSL_CB_WRITE) &&
	    SSL_get_verify_result(ssl) != X509_V_OK)
		conn->verify_result = SSL_get_verify_result(ssl);
	if (where & SSL_CB_HANDSHAKE_DONE)
		conn->tcp_up = conn->tls_done = true;
	if ((where & SSL_CB_CONNECT_LOOP) && state == TLS_ST_CW_CERT)
		conn->cert_requested = true;
	if ((where & SSL_CB_CONNECT_LOOP) && state == TLS_ST_CR_SRVR_HELLO)
		conn->tcp_up = true;
}

/*
 * The first OpenSSL error of a failed handshake, from libmosquitto's log line
 * "OpenSSL Error[0]: error:0A000418:SSL routines::tlsv1 alert unknown ca". A received
 * alert has the reason SSL_AD_REASON_OFFSET + its description.
 */
static void note_ossl_error(struct mqtt_conn *conn, const char *line)
{
	const char *p = strstr(line, "OpenSSL Error");
	unsigned long e;
	int reason;

	if (conn->ossl_err || !p || !(p = strstr(p, "error:")) || sscanf(p, "error:%lx", &e) != 1)
		return;
	conn->ossl_err = e;
	reason = ERR_GET_REASON(e);
	if (ERR_GET_LIB(e) != ERR_LIB_SSL)
		return;
	/* Both need the server's answer, so TCP was up. */
	if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
		conn->tcp_up = true;
		if (conn->verify_result == X509_V_OK)
			conn->verify_result = X509_V_ERR_UNSPECIFIED;
	}
	if (reason >= SSL_AD_REASON_OFFSET && reason <= SSL_AD_REASON_OFFSET + TLS_ALERT_DESC_MAX) {
		conn->tcp_up = true;
		if (conn->alert_received < 0)
			conn->alert_received = reason - SSL_AD_REASON_OFFSET;
	}
}

static void on_log(struct mosquitto *mosq, void *userdata, int level, const char *line)
{
	struct mqtt_conn *conn = userdata;

	/* libmosquitto logs packet metadata (topic, size), never payloads, so no token. */
	log_debug("libmosquitto: %s", line);
	if (!conn || !line)
		return;
	if (strstr(line, "sending CONNECT"))
		conn->connect_queued = true;
	if (level != MOSQ_LOG_ERR)
		return;
	if (!conn->lib_error[0])
		snprintf(conn->lib_error, sizeof(conn->lib_error), "%s", line);
	if (strstr(line, "host name verification failed"))
		conn->host_mismatch = true;
	note_ossl_error(conn, line);
}

/* ---- failure classification ---- */

/* TLS alerts with which a server turns down the client certificate (RFC 8446 §6.2). */
static bool alert_rejects_certificate(int alert)
{
	switch (alert) {
	case SSL_AD_BAD_CERTIFICATE:
	case SSL_AD_UNSUPPORTED_CERTIFICATE:
	case SSL_AD_CERTIFICATE_REVOKED:
	case SSL_AD_CERTIFICATE_EXPIRED:
	case SSL_AD_CERTIFICATE_UNKNOWN:
	case SSL_AD_UNKNOWN_CA:
	case SSL_AD_ACCESS_DENIED:
	case SSL_AD_CERTIFICATE_REQUIRED:
		return true;
	default:
		return false;
	}
}

/*
 * The first error libmosquitto logged, without its decoration: "Error: " on its own
 * messages, "OpenSSL Error[0]: error:0A000086:SSL routines::" on OpenSSL's.
 */
static const char *lib_error_text(const struct mqtt_conn *conn)
{
	const char *p = strstr(conn->lib_error, "::");

	if (!conn->lib_error[0])
		return NULL;
	if (p)
		return p + 2;
	if (strncmp(conn->lib_error, LIB_ERROR_PREFIX, strlen(LIB_ERROR_PREFIX)) == 0)
		return conn->lib_error + strlen(LIB_ERROR_PREFIX);
	return conn->lib_error;
}

static const char *cause_text(const struct mqtt_conn *conn, int rc, int err)
{
	if (rc == MOSQ_ERR_ERRNO && err > 0 && err != EPROTO)
		return strerror(err);
	if (rc == MOSQ_ERR_CONN_LOST)
		return "connection closed by the server";
	if (lib_error_text(conn))
		return lib_error_text(conn);
	if (rc == MOSQ_ERR_ERRNO && err > 0)
		return strerror(err);
	return mosquitto_strerror(rc);
}

static void fail_untrusted(struct mqtt_conn *conn)
{
	if (conn->host_mismatch || conn->verify_result == X509_V_ERR_HOSTNAME_MISMATCH ||
	    conn->verify_result == X509_V_ERR_IP_ADDRESS_MISMATCH)
		conn_fail(conn, TRANSPORT_FAIL_TLS_UNTRUSTED,
		          "host name verification failed: the server certificate does not name "
		          "the endpoint");
	else if (conn->verify_result == X509_V_ERR_UNSPECIFIED && lib_error_text(conn))
		conn_fail(conn, TRANSPORT_FAIL_TLS_UNTRUSTED, "%s", lib_error_text(conn));
	else
		conn_fail(conn, TRANSPORT_FAIL_TLS_UNTRUSTED, "%s",
		          X509_verify_cert_error_string(conn->verify_result));
}

static void fail_with_alert(struct mqtt_conn *conn)
{
	const char *alert = SSL_alert_desc_string_long(conn->alert_received);

	if (alert_rejects_certificate(conn->alert_received))
		conn_fail(conn, TRANSPORT_FAIL_NOT_AUTHORIZED,
		          "server rejected the client certificate: TLS alert '%s'", alert);
	else
		conn_fail(conn, TRANSPORT_FAIL_TLS, "TLS alert from the server: '%s'", alert);
}

static void fail_timeout(struct mqtt_conn *conn)
{
	if (!conn->tcp_up)
		conn_fail(conn, TRANSPORT_FAIL_TCP, "connection timed out");
	else if (!conn->tls_done)
		conn_fail(conn, TRANSPORT_FAIL_TLS, "TLS handshake timed out");
	else
		conn_fail(conn, TRANSPORT_FAIL_LOST, "no CONNACK within the keepalive interval");
}

static int tcp_errno(const struct mqtt_conn *conn, int err)
{
	if (err > 0)
		return err;
	return conn->early_errno > 0 ? conn->early_errno : ECONNABORTED;
}

/* A failure before CONNACK: which layer said no, and why. */
static void fail_before_connack(struct mqtt_conn *conn, int rc, int err)
{
	note_tls_state(conn);
	/* A reset seen by OpenSSL's first write is the cause; later calls only find ENOTCONN. */
	if (conn->early_errno > 0 && (err == 0 || err == ENOTCONN))
		err = conn->early_errno;
	/* Only an established connection can be reset: TCP was up, TLS went wrong. */
	if (err == ECONNRESET || err == EPIPE || conn->early_errno == ECONNRESET ||
	    conn->early_errno == EPIPE)
		conn->tcp_up = true;
	if (conn->verify_result != X509_V_OK || conn->host_mismatch)
		fail_untrusted(conn);
	else if (conn->alert_received >= 0)
		fail_with_alert(conn);
	else if (rc == MOSQ_ERR_KEEPALIVE)
		fail_timeout(conn);
	else if (!conn->tcp_up && rc != MOSQ_ERR_TLS)
		conn_fail(conn, TRANSPORT_FAIL_TCP, "%s", strerror(tcp_errno(conn, err)));
	else if (conn->tls_done)
		/* Servers, AWS among them, drop an unwanted client certificate without a word. */
		conn_fail(conn, TRANSPORT_FAIL_NOT_AUTHORIZED,
		          "server closed the connection after the TLS handshake, before CONNACK: "
		          "it likely does not accept our certificate (%s)",
		          cause_text(conn, rc, err));
	else if (conn->cert_requested)
		conn_fail(conn, TRANSPORT_FAIL_NOT_AUTHORIZED,
		          "server closed the connection after asking for our certificate (%s)",
		          cause_text(conn, rc, err));
	else
		conn_fail(conn, TRANSPORT_FAIL_TLS, "%s", cause_text(conn, rc, err));
}

static void fail_after_connack(struct mqtt_conn *conn, int rc, int err)
{
	switch (rc) {
	case MOSQ_ERR_PROTOCOL:
	case MOSQ_ERR_MALFORMED_PACKET:
	case MOSQ_ERR_MALFORMED_UTF8:
	case MOSQ_ERR_OVERSIZE_PACKET:
	case MOSQ_ERR_DUPLICATE_PROPERTY:
		conn_fail(conn, TRANSPORT_FAIL_PROTOCOL, "%s", mosquitto_strerror(rc));
		break;
	case MOSQ_ERR_KEEPALIVE:
		conn_fail(conn, TRANSPORT_FAIL_LOST, "no answer to the keepalive ping");
		break;
	default:
		conn_fail(conn, TRANSPORT_FAIL_LOST, "%s", cause_text(conn, rc, err));
	}
}

static void fail_with_rc(struct mqtt_conn *conn, int rc, int err)
{
	if (conn->connack_seen)
		fail_after_connack(conn, rc, err);
	else
		fail_before_connack(conn, rc, err);
}

/* ---- libmosquitto callbacks ---- */

static void on_connect(struct mosquitto *mosq, void *userdata, int rc)
{
	struct mqtt_conn *conn = userdata;
	struct transport_event ev = {.type = TRANSPORT_EVENT_CONNECTED, .connack = -1};

	if (!conn->owner)
		return;
	if (rc == 0) {
		conn->connack_seen = true;
		emit(conn, &ev);
		return;
	}
	conn->connack = rc;
	if (rc == CONNACK_REFUSED_BAD_USERNAME_PASSWORD || rc == CONNACK_REFUSED_NOT_AUTHORIZED ||
	    rc == MQTT_CONNACK_AWS_NOT_AUTHORIZED)
		conn_fail(conn, TRANSPORT_FAIL_NOT_AUTHORIZED, "%s", mosquitto_connack_string(rc));
	else
		conn_fail(conn, TRANSPORT_FAIL_REFUSED, "%s", mosquitto_connack_string(rc));
}

static void on_disconnect(struct mosquitto *mosq, void *userdata, int rc)
{
	struct mqtt_conn *conn = userdata;
	int err = errno;

	if (!conn->owner || conn->graceful)
		return;
	fail_with_rc(conn, rc == MOSQ_ERR_SUCCESS ? MOSQ_ERR_CONN_LOST : rc, err);
}

static void on_subscribe(struct mosquitto *mosq, void *userdata, int mid, int qos_count,
                         const int *granted_qos)
{
	struct mqtt_conn *conn = userdata;
	struct transport_event ev = {
	    .type = TRANSPORT_EVENT_SUBSCRIBED, .connack = -1, .granted_ok = qos_count > 0};

	if (!conn->owner)
		return;
	for (int i = 0; i < qos_count; i++)
		if (granted_qos[i] >= MQTT_SUBACK_FAILURE)
			ev.granted_ok = false;
	emit(conn, &ev);
}

static void on_publish(struct mosquitto *mosq, void *userdata, int mid)
{
	struct mqtt_conn *conn = userdata;
	struct transport_event ev = {.type = TRANSPORT_EVENT_PUBLISHED, .connack = -1};

	if (!conn->owner || mid != conn->last_publish_mid)
		return;
	emit(conn, &ev);
}

static void on_message(struct mosquitto *mosq, void *userdata, const struct mosquitto_message *msg)
{
	struct mqtt_conn *conn = userdata;
	struct transport_event ev = {
	    .type = TRANSPORT_EVENT_MESSAGE,
	    .connack = -1,
	    .topic = msg->topic,
	    .payload = msg->payload,
	    .len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0,
	};

	if (!conn->owner || !msg->topic)
		return;
	emit(conn, &ev);
}

/* ---- event loop glue ---- */

/* After a libmosquitto call made from the loop: tear down on failure, else re-arm. */
static void conn_settle(struct mqtt_conn *conn, int rc, int err)
{
	if (!conn->owner) {
		if (conn->busy == 0)
			conn_free(conn);
		return;
	}
	if (rc != MOSQ_ERR_SUCCESS)
		fail_with_rc(conn, rc, err);
	else if (mosquitto_socket(conn->mosq) < 0)
		fail_with_rc(conn, MOSQ_ERR_CONN_LOST, 0);
	if (conn->failed) {
		conn_close_failed(conn);
		return;
	}
	conn_update_io(conn);
}

static int socket_error(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return errno;
	return err;
}

/* Drive the TCP connect and the TLS handshake, which only loop_read advances. */
static int handshake_step(struct mqtt_conn *conn, uint32_t revents, int *ret_err)
{
	int rc;

	if (!conn->tcp_up && (revents & (EPOLLERR | EPOLLHUP))) {
		/* Read SO_ERROR before OpenSSL touches the socket: its write would consume it. */
		*ret_err = socket_error(conn->fd);
		return MOSQ_ERR_ERRNO;
	}
	if (revents & EPOLLOUT)
		conn->tcp_up = true;
	rc = mosquitto_loop_read(conn->mosq, 1);
	*ret_err = errno;
	if (rc == MOSQ_ERR_SUCCESS)
		note_tls_state(conn);
	if (rc == MOSQ_ERR_SUCCESS && !conn->tls_done &&
	    (revents & (EPOLLERR | EPOLLHUP | EPOLLRDHUP))) {
		/* A reset mid-handshake leaves libmosquitto waiting on a dead socket. */
		*ret_err = socket_error(conn->fd);
		return *ret_err ? MOSQ_ERR_ERRNO : MOSQ_ERR_CONN_LOST;
	}
	return rc;
}

static int io_dispatch(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
	struct mqtt_conn *conn = userdata;
	int rc = MOSQ_ERR_SUCCESS, err = 0;

	conn->busy++;
	note_tls_state(conn);
	if (!conn->tls_done) {
		rc = handshake_step(conn, revents, &err);
	} else {
		if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
			rc = mosquitto_loop_read(conn->mosq, 1);
			err = errno;
		}
		if (rc == MOSQ_ERR_SUCCESS && conn->owner && (revents & EPOLLOUT) &&
		    mosquitto_socket(conn->mosq) >= 0) {
			rc = mosquitto_loop_write(conn->mosq, 1);
			err = errno;
		}
	}
	conn->busy--;
	conn_settle(conn, rc, err);
	return 0;
}

static int misc_dispatch(sd_event_source *s, uint64_t usec, void *userdata)
{
	struct mqtt_conn *conn = userdata;
	int rc, err;

	conn->busy++;
	rc = mosquitto_loop_misc(conn->mosq);
	err = errno;
	conn->busy--;
	if (conn->owner && sd_event_source_set_time_relative(s, MQTT_MISC_INTERVAL_USEC) >= 0)
		(void)sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
	conn_settle(conn, rc == MOSQ_ERR_NO_CONN ? MOSQ_ERR_CONN_LOST : rc, err);
	return 0;
}

static void conn_update_io(struct mqtt_conn *conn)
{
	uint32_t events = EPOLLIN | EPOLLRDHUP;
	SSL *ssl = mosquitto_ssl_get(conn->mosq);

	if (!conn->io)
		return;
	if (!conn->tls_done) {
		/* Poll only the direction OpenSSL waits for, or the handshake would spin. */
		if (!conn->tcp_up || (ssl && SSL_want_write(ssl)))
			events |= EPOLLOUT;
	} else if (mosquitto_want_write(conn->mosq)) {
		events |= EPOLLOUT;
	}
	(void)sd_event_source_set_io_events(conn->io, events);
}

/* ---- connecting ---- */

static int mosq_to_errno(int rc)
{
	switch (rc) {
	case MOSQ_ERR_SUCCESS:
		return 0;
	case MOSQ_ERR_NOMEM:
		return -ENOMEM;
	case MOSQ_ERR_NO_CONN:
		return -ENOTCONN;
	case MOSQ_ERR_PAYLOAD_SIZE:
	case MOSQ_ERR_OVERSIZE_PACKET:
		return -EMSGSIZE;
	case MOSQ_ERR_INVAL:
	case MOSQ_ERR_MALFORMED_UTF8:
	case MOSQ_ERR_QOS_NOT_SUPPORTED:
		return -EINVAL;
	case MOSQ_ERR_NOT_SUPPORTED:
		return -EOPNOTSUPP;
	default:
		return -EIO;
	}
}

static int file_readable(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

static const char *ossl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *reason = e ? ERR_reason_error_string(e) : NULL;

	return reason ? reason : "unusable";
}

/* The key loaded but belongs to another certificate. */
static bool ossl_key_mismatch(void)
{
	unsigned long e = ERR_peek_last_error();

	return ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
}

/*
 * The key, decoded as the type its certificate names. Told nothing, OpenSSL 3's PEM key
 * decoder tries every decoder it has: about 4.8 M instructions a key against 1.7 M when
 * given the type, and key decodes were a fifth of the CPU of a provisioning.
 */
static bool tls_use_key_of_certificate_type(SSL_CTX *ctx, const char *path)
{
	X509 *cert = SSL_CTX_get0_certificate(ctx);
	EVP_PKEY *pub = cert ? X509_get0_pubkey(cert) : NULL;
	const char *type = pub ? EVP_PKEY_get0_type_name(pub) : NULL;
	_cleanup_(BIO_free_allp) BIO *bio = NULL;
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	OSSL_DECODER_CTX *dctx;
	bool ok;

	if (!type || !(bio = BIO_new_file(path, "r")))
		return false;
	dctx = OSSL_DECODER_CTX_new_for_pkey(&key, "PEM", NULL, type, EVP_PKEY_KEYPAIR, NULL, NULL);
	ok = dctx && OSSL_DECODER_from_bio(dctx, bio) == 1 && key &&
	     SSL_CTX_use_PrivateKey(ctx, key) == 1;
	OSSL_DECODER_CTX_free(dctx);
	return ok;
}

static int tls_use_key(SSL_CTX *ctx, const char *path)
{
	if (tls_use_key_of_certificate_type(ctx, path))
		return 1;
	/* Whatever went wrong (another type, a mismatch, no key), the generic load says it. */
	ERR_clear_error();
	return SSL_CTX_use_PrivateKey_file(ctx, path, SSL_FILETYPE_PEM);
}

static void tls_load_files(struct mqtt_conn *conn, SSL_CTX *ctx,
                           const struct transport_identity *id)
{
	ERR_clear_error();
	if (SSL_CTX_load_verify_file(ctx, id->ca_file) != 1) {
		conn_fail(conn, TRANSPORT_FAIL_CREDENTIALS, "cannot load CA file '%s': %s",
		          id->ca_file, ossl_reason());
	} else if (SSL_CTX_use_certificate_chain_file(ctx, id->cert_file) != 1) {
		conn_fail(conn, TRANSPORT_FAIL_CREDENTIALS, "cannot load certificate '%s': %s",
		          id->cert_file, ossl_reason());
	} else if (tls_use_key(ctx, id->key_file) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		if (ossl_key_mismatch() || ERR_peek_last_error() == 0)
			conn_fail(conn, TRANSPORT_FAIL_CREDENTIALS,
			          "certificate '%s' does not match key '%s'", id->cert_file,
			          id->key_file);
		else
			conn_fail(conn, TRANSPORT_FAIL_CREDENTIALS, "cannot load key '%s': %s",
			          id->key_file, ossl_reason());
	}
	ERR_clear_error();
}

/* Who the server must be: OpenSSL checks the name (or address) in its certificate. */
static int tls_expect_host(SSL_CTX *ctx, const char *host)
{
	X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
	unsigned char addr[sizeof(struct in6_addr)];

	X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1)
		return X509_VERIFY_PARAM_set1_ip_asc(param, host);
	return X509_VERIFY_PARAM_set1_host(param, host, 0);
}

/* TLS 1.2+, peer verified against ca_file with the host name, ALPN on 443 (spec §3.3). */
static bool tls_configure(SSL_CTX *ctx, struct mqtt_conn *conn, const struct transport_identity *id)
{
	static const unsigned char alpn[] = "\x0e" MQTT_ALPN;

	SSL_CTX_set_app_data(ctx, conn);
	SSL_CTX_set_info_callback(ctx, tls_info);
	/* What libmosquitto's defaults set: no compression, buffers freed while idle. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 &&
	       tls_expect_host(ctx, id->host) == 1 &&
	       (id->port != MQTT_ALPN_PORT ||
	        SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1) == 0);
}

/*
 * The TLS context of one connection. The files are checked here, before anything is sent:
 * libmosquitto would only say "TLS error" at connect time, and a wrong file is a
 * configuration problem, not a network one, so it must be told apart and named.
 */
static SSL_CTX *tls_context_new(struct mqtt_conn *conn, const struct transport_identity *id)
{
	_cleanup_(SSL_CTX_freep) SSL_CTX *ctx = NULL;
	const char *const what[] = {"CA file", "certificate", "key"};
	const char *const paths[] = {id->ca_file, id->cert_file, id->key_file};
	int r;

	for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
		r = file_readable(paths[i]);
		if (r < 0) {
			conn_fail(conn, TRANSPORT_FAIL_CREDENTIALS, "cannot read %s '%s': %s",
			          what[i], paths[i], strerror(-r));
			return NULL;
		}
	}
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || !tls_configure(ctx, conn, id)) {
		conn_fail(conn, TRANSPORT_FAIL_TLS, "cannot set up a TLS context: %s",
		          ossl_reason());
		return NULL;
	}
	tls_load_files(conn, ctx, id);
	return conn->failed ? NULL : TAKE_PTR(ctx);
}

/* Options for AWS IoT: MQTT 3.1.1 over the TLS context ctx (libmosquitto takes a reference). */
static int conn_configure(struct mqtt_conn *conn, SSL_CTX *ctx)
{
	int rc;

	mosquitto_log_callback_set(conn->mosq, on_log);
	mosquitto_connect_callback_set(conn->mosq, on_connect);
	mosquitto_disconnect_callback_set(conn->mosq, on_disconnect);
	mosquitto_subscribe_callback_set(conn->mosq, on_subscribe);
	mosquitto_publish_callback_set(conn->mosq, on_publish);
	mosquitto_message_callback_set(conn->mosq, on_message);

	rc = mosquitto_int_option(conn->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_int_option(conn->mosq, MOSQ_OPT_TCP_NODELAY, 1);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_int_option(conn->mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_void_option(conn->mosq, MOSQ_OPT_SSL_CTX, ctx);
	return mosq_to_errno(rc);
}

/* Follow the handshake that mosquitto_connect_async started. */
static void conn_watch_tls(struct mqtt_conn *conn)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);

	if (getpeername(conn->fd, (struct sockaddr *)&peer, &len) == 0)
		conn->tcp_up = true;
	note_tls_state(conn);
}

static int conn_add_sources(struct mqtt_conn *conn, sd_event *event)
{
	int r;

	conn->fd = mosquitto_socket(conn->mosq);
	if (conn->fd < 0)
		return -ENOTCONN;
	/* libmosquitto does not open its socket with SOCK_CLOEXEC. */
	(void)fcntl(conn->fd, F_SETFD, FD_CLOEXEC);
	conn_watch_tls(conn);
	r = sd_event_add_io(event, &conn->io, conn->fd, EPOLLIN | EPOLLRDHUP, io_dispatch, conn);
	if (r < 0)
		return r;
	(void)sd_event_source_set_description(conn->io, "mqtt-io");
	r = sd_event_add_time_relative(event, &conn->misc, CLOCK_MONOTONIC, MQTT_MISC_INTERVAL_USEC,
	                               MQTT_MISC_ACCURACY_USEC, misc_dispatch, conn);
	if (r < 0)
		return r;
	(void)sd_event_source_set_description(conn->misc, "mqtt-misc");
	conn_update_io(conn);
	return 0;
}

static bool is_connect_errno(int err)
{
	switch (err) {
	case ECONNREFUSED:
	case ECONNRESET:
	case ECONNABORTED:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case ETIMEDOUT:
	case EPIPE:
		return true;
	default:
		return false;
	}
}

/* Start the connection; a failure here is recorded in conn, not returned. */
static int conn_start(struct mqtt_conn *conn, const struct transport_identity *id, sd_event *event)
{
	int rc, err;

	errno = 0;
	rc = mosquitto_connect_async(conn->mosq, id->host, id->port, (int)id->keepalive_sec);
	err = errno;
	/*
	 * A refused non-blocking connect shows up as the error of OpenSSL's first write, which
	 * consumes SO_ERROR, and libmosquitto calls that success (SSL_ERROR_SYSCALL): keep it.
	 */
	if (rc == MOSQ_ERR_SUCCESS && is_connect_errno(err))
		conn->early_errno = err;
	/* CONNECT is only written once TLS is up: a failure after queueing it came later. */
	if (rc != MOSQ_ERR_SUCCESS && conn->connect_queued)
		conn->tcp_up = conn->tls_done = true;
	switch (rc) {
	case MOSQ_ERR_SUCCESS:
		return conn_add_sources(conn, event);
	case MOSQ_ERR_EAI:
		/* errno holds the getaddrinfo() code here (lib/net_mosq.c). */
		conn_fail(conn, TRANSPORT_FAIL_DNS, "cannot resolve '%s': %s", id->host,
		          gai_strerror(err));
		return 0;
	case MOSQ_ERR_INVAL:
	case MOSQ_ERR_NOMEM:
		return mosq_to_errno(rc);
	default:
		fail_before_connack(conn, rc, err);
		return 0;
	}
}

static bool identity_valid(const struct transport_identity *id)
{
	return id && id->host && *id->host && id->port > 0 && id->ca_file && id->cert_file &&
	       id->key_file && id->client_id && *id->client_id;
}

static int conn_new(struct mqtt *m, const struct transport_identity *id, struct mqtt_conn **ret)
{
	struct mqtt_conn *conn = calloc(1, sizeof(*conn));

	if (!conn)
		return -ENOMEM;
	conn->fd = -1;
	conn->alert_received = -1;
	conn->verify_result = X509_V_OK;
	conn->connack = -1;
	conn->last_publish_mid = -1;
	conn->mosq = mosquitto_new(id->client_id, true, conn);
	if (!conn->mosq) {
		int r = errno == ENOMEM ? -ENOMEM : -EINVAL;

		free(conn);
		return r;
	}
	conn->owner = m;
	*ret = conn;
	return 0;
}

static int mqtt_connect(void *impl, const struct transport_identity *id)
{
	struct mqtt *m = impl;
	_cleanup_(SSL_CTX_freep) SSL_CTX *ctx = NULL;
	struct mqtt_conn *conn;
	int r = 0;

	if (!identity_valid(id))
		return -EINVAL;
	if (m->conn)
		return -EBUSY;
	cancel_pending(m);
	r = conn_new(m, id, &conn);
	if (r < 0)
		return r;
	m->conn = conn;
	ctx = tls_context_new(conn, id);
	if (ctx)
		r = conn_configure(conn, ctx);
	if (r >= 0 && !conn->failed)
		r = conn_start(conn, id, m->event);
	if (r < 0 && !conn->failed) {
		conn_detach(conn);
		return r;
	}
	if (conn->failed)
		conn_close_failed(conn);
	return 0;
}

/* ---- the other operations ---- */

/* I/O errors while writing surface as DISCONNECTED, from the loop, like any other loss. */
static int conn_after_request(struct mqtt_conn *conn, int rc)
{
	int err = errno;

	switch (rc) {
	case MOSQ_ERR_SUCCESS:
	case MOSQ_ERR_ERRNO:
	case MOSQ_ERR_CONN_LOST:
	case MOSQ_ERR_TLS:
		break;
	default:
		return mosq_to_errno(rc);
	}
	if (rc != MOSQ_ERR_SUCCESS && conn->busy == 0) {
		fail_with_rc(conn, rc, err);
		conn_close_failed(conn);
	} else {
		conn_update_io(conn);
	}
	return 0;
}

static int mqtt_subscribe(void *impl, const char *const *filters, size_t n)
{
	struct mqtt *m = impl;
	int rc, mid;

	if (!filters || n == 0 || n > INT16_MAX)
		return -EINVAL;
	if (!m->conn || !m->conn->connack_seen)
		return -ENOTCONN;
	rc = mosquitto_subscribe_multiple(m->conn->mosq, &mid, (int)n, (char *const *)filters,
	                                  MQTT_QOS, 0, NULL);
	return conn_after_request(m->conn, rc);
}

static int mqtt_publish(void *impl, const char *topic, const void *payload, size_t len)
{
	struct mqtt *m = impl;
	int rc, mid;

	if (!topic || (!payload && len > 0))
		return -EINVAL;
	if (len > INT32_MAX)
		return -EMSGSIZE;
	if (!m->conn || !m->conn->connack_seen)
		return -ENOTCONN;
	rc = mosquitto_publish(m->conn->mosq, &mid, topic, (int)len, payload, MQTT_QOS, false);
	if (rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_ERRNO || rc == MOSQ_ERR_CONN_LOST)
		m->conn->last_publish_mid = mid;
	return conn_after_request(m->conn, rc);
}

static void mqtt_disconnect(void *impl)
{
	struct mqtt *m = impl;
	struct mqtt_conn *conn = m->conn;

	cancel_pending(m);
	if (!conn)
		return;
	if (conn->connack_seen) {
		/* libmosquitto may report our own DISCONNECT from inside the call. */
		conn->graceful = true;
		if (mosquitto_disconnect(conn->mosq) != MOSQ_ERR_SUCCESS)
			conn->graceful = false;
	}
	conn_detach(conn);
}

static void mqtt_set_handler(void *impl, transport_event_fn cb, void *userdata)
{
	struct mqtt *m = impl;

	m->handler = cb;
	m->userdata = userdata;
}

static const struct transport_ops mqtt_ops = {
    .set_handler = mqtt_set_handler,
    .connect = mqtt_connect,
    .subscribe = mqtt_subscribe,
    .publish = mqtt_publish,
    .disconnect = mqtt_disconnect,
};

struct transport mqtt_transport(struct mqtt *m)
{
	return (struct transport){.ops = &mqtt_ops, .impl = m};
}

/* ---- object ---- */

static int lib_init_once(void)
{
	static bool ready;

	if (ready)
		return 0;
	if (mosquitto_lib_init() != MOSQ_ERR_SUCCESS)
		return -EIO;
	ready = true;
	return 0;
}

int mqtt_new(sd_event *event, struct mqtt **ret)
{
	struct mqtt *m;
	int r;

	if (!event)
		return -EINVAL;
	r = lib_init_once();
	if (r < 0)
		return r;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->event = sd_event_ref(event);
	r = sd_event_add_defer(event, &m->deferred, deferred_dispatch, m);
	if (r < 0) {
		mqtt_free(m);
		return r;
	}
	(void)sd_event_source_set_description(m->deferred, "mqtt-deferred");
	(void)sd_event_source_set_enabled(m->deferred, SD_EVENT_OFF);
	*ret = m;
	return 0;
}

struct mqtt *mqtt_free(struct mqtt *m)
{
	if (!m)
		return NULL;
	if (m->conn)
		conn_detach(m->conn);
	m->deferred = sd_event_source_disable_unref(m->deferred);
	sd_event_unref(m->event);
	free(m);
	return NULL;
}
