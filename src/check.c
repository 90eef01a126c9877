/*
 * `fleetprovd check`: preflight diagnostics. Each check reports ok, warn or fail with the
 * fix an admin should apply. The network checks go layer by layer (DNS, TCP, TLS, MQTT) so
 * the first failing line names the layer that is broken.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "build-config.h"
#include "check.h"
#include "macro.h"
#include "mqtt.h"
#include "openssl-util.h"
#include "params.h"
#include "protocol.h"

/* Each network step gets this long; check is interactive, it must not hang. */
#define CHECK_NET_TIMEOUT_MS 5000
/* Warn this long before the claim certificate expires. */
#define CHECK_EXPIRY_WARN_SEC (30 * 24 * 3600)

DEFINE_TRIVIAL_CLEANUP_FUNC(SSL_CTX *, SSL_CTX_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(SSL *, SSL_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(struct addrinfo *, freeaddrinfo)
DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put)

enum check_level { CHECK_OK, CHECK_WARN, CHECK_FAIL };

struct check_report {
	FILE *out;
	json_object *array; /* NULL in text mode */
	unsigned failures;
	unsigned warnings;
};

_printf_(5, 6) static void report(struct check_report *r, const char *name, enum check_level level,
                                  const char *fix, const char *fmt, ...)
{
	static const char *const words[] = {"ok", "warn", "fail"};
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	r->failures += level == CHECK_FAIL;
	r->warnings += level == CHECK_WARN;

	if (r->array) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "check", json_object_new_string(name));
		json_object_object_add(o, "result", json_object_new_string(words[level]));
		json_object_object_add(o, "message", json_object_new_string(msg));
		if (fix && level != CHECK_OK)
			json_object_object_add(o, "fix", json_object_new_string(fix));
		json_object_array_add(r->array, o);
		return;
	}
	fprintf(r->out, "%-4s  %-18s %s\n", words[level], name, msg);
	if (fix && level != CHECK_OK)
		fprintf(r->out, "      %-18s fix: %s\n", "", fix);
}

static int64_t asn1_time_to_epoch(const ASN1_TIME *t)
{
	struct tm tm;

	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return (int64_t)timegm(&tm);
}

static X509 *load_certificate(const char *path)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");

	return f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
}

static EVP_PKEY *load_private_key(const char *path)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");

	return f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
}

static void check_claim_certificate(struct check_report *r, const struct config *cfg, X509 *crt,
                                    int64_t now)
{
	int64_t not_before = asn1_time_to_epoch(X509_get0_notBefore(crt));
	int64_t not_after = asn1_time_to_epoch(X509_get0_notAfter(crt));

	if (now > not_after)
		report(r, "claim certificate", CHECK_FAIL,
		       "issue a new claim certificate and put it in the image", "'%s' expired",
		       cfg->claim_certificate);
	else if (now < not_before)
		report(r, "claim certificate", CHECK_WARN, "set the clock (or wait for time sync)",
		       "'%s' is not valid yet by this machine's clock", cfg->claim_certificate);
	else if (not_after - now < CHECK_EXPIRY_WARN_SEC)
		report(r, "claim certificate", CHECK_WARN,
		       "rotate the claim certificate before it expires",
		       "'%s' expires in %lld days", cfg->claim_certificate,
		       (long long)((not_after - now) / 86400));
	else
		report(r, "claim certificate", CHECK_OK, NULL, "'%s' parses and is valid",
		       cfg->claim_certificate);
}

static void check_claim_key_mode(struct check_report *r, const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return;
	if (st.st_mode & 0007)
		report(r, "claim key mode", CHECK_FAIL, "chmod 0640 (owner root, group fleetprovd)",
		       "'%s' is readable by other users (mode %04o)", path, st.st_mode & 07777);
	else
		report(r, "claim key mode", CHECK_OK, NULL, "'%s' mode %04o, owner %u:%u", path,
		       st.st_mode & 07777, st.st_uid, st.st_gid);
}

static void check_claim(struct check_report *r, const struct config *cfg, int64_t now)
{
	_cleanup_(X509_freep) X509 *crt = load_certificate(cfg->claim_certificate);
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = load_private_key(cfg->claim_private_key);

	if (!crt)
		report(r, "claim certificate", CHECK_FAIL,
		       "put the claim certificate (PEM) at claim.certificate",
		       "cannot read a PEM certificate from '%s'", cfg->claim_certificate);
	else
		check_claim_certificate(r, cfg, crt, now);

	if (!key)
		report(
		    r, "claim key", CHECK_FAIL,
		    "put the claim private key (PEM, unencrypted) at claim.private_key and make it "
		    "readable by the fleetprovd user",
		    "cannot read a PEM private key from '%s'", cfg->claim_private_key);
	else if (crt && X509_check_private_key(crt, key) != 1)
		report(r, "claim key", CHECK_FAIL,
		       "claim.certificate and claim.private_key must be the same pair",
		       "'%s' does not belong to '%s'", cfg->claim_private_key,
		       cfg->claim_certificate);
	else
		report(r, "claim key", CHECK_OK, NULL, "'%s' parses%s", cfg->claim_private_key,
		       crt ? " and matches the certificate" : "");
	check_claim_key_mode(r, cfg->claim_private_key);
	ERR_clear_error();
}

static void check_ca(struct check_report *r, const struct config *cfg)
{
	_cleanup_fclose_ FILE *f = fopen(cfg->ca_file, "re");
	STACK_OF(X509_INFO) *infos = f ? PEM_X509_INFO_read(f, NULL, NULL, NULL) : NULL;
	int n = 0;

	for (int i = 0; infos && i < sk_X509_INFO_num(infos); i++)
		n += sk_X509_INFO_value(infos, i)->x509 != NULL;
	sk_X509_INFO_pop_free(infos, X509_INFO_free);
	ERR_clear_error();

	if (n == 0)
		report(r, "CA bundle", CHECK_FAIL,
		       "point ca_file at Amazon Root CA 1 (and CA 3), PEM format",
		       "no PEM certificate in '%s'", cfg->ca_file);
	else
		report(r, "CA bundle", CHECK_OK, NULL, "'%s' holds %d certificate%s", cfg->ca_file,
		       n, n == 1 ? "" : "s");
}

static void check_clock(struct check_report *r, const struct config *cfg, int64_t now)
{
	_cleanup_(X509_freep) X509 *crt = load_certificate(cfg->claim_certificate);
	int64_t not_before = crt ? asn1_time_to_epoch(X509_get0_notBefore(crt)) : 0;

	if (now < (int64_t)BUILD_EPOCH)
		report(r, "clock", CHECK_FAIL, "enable time sync (systemd-timesyncd) or set an RTC",
		       "the clock says %lld, before this build was made (%lld)", (long long)now,
		       (long long)BUILD_EPOCH);
	else if (now < not_before)
		report(r, "clock", CHECK_FAIL, "enable time sync (systemd-timesyncd) or set an RTC",
		       "the clock is before the claim certificate's notBefore");
	else
		report(r, "clock", CHECK_OK, NULL, "wall clock is plausible");
}

static void check_state_dir(struct check_report *r, const struct config *cfg)
{
	struct stat st;

	if (stat(cfg->state_dir, &st) < 0) {
		report(r, "state directory", CHECK_WARN,
		       "systemd creates it (StateDirectory=fleetprovd) when the service starts",
		       "'%s' does not exist yet", cfg->state_dir);
		return;
	}
	if (!S_ISDIR(st.st_mode))
		report(r, "state directory", CHECK_FAIL,
		       "remove it; systemd recreates the directory", "'%s' is not a directory",
		       cfg->state_dir);
	else if (st.st_mode & 0007)
		report(r, "state directory", CHECK_WARN, "chmod 0750",
		       "'%s' is accessible by other users (mode %04o)", cfg->state_dir,
		       st.st_mode & 07777);
	else
		report(r, "state directory", CHECK_OK, NULL, "'%s' mode %04o, owner %u:%u",
		       cfg->state_dir, st.st_mode & 07777, st.st_uid, st.st_gid);
}

static void check_identity_inputs(struct check_report *r, const struct config *cfg,
                                  char **ret_client_id)
{
	_cleanup_free_ char *client_id = NULL;
	struct param_list params = {0};
	char err[512];

	if (params_resolve(cfg, &params, err, sizeof(err)) < 0) {
		report(r, "parameters", CHECK_FAIL, "fix the source in template.parameters", "%s",
		       err);
		return;
	}
	report(r, "parameters", CHECK_OK, NULL, "%zu template parameter%s resolved", params.n,
	       params.n == 1 ? "" : "s");

	if (cfg->client_id) {
		if (params_expand(cfg->client_id, &params, &client_id, err, sizeof(err)) < 0)
			report(r, "client id", CHECK_FAIL, "fix client_id", "%s", err);
	} else {
		struct config_param machine = {.name = (char *)"machine-id",
		                               .source = PARAM_SOURCE_MACHINE_ID};
		if (params_resolve_one(&machine, &client_id, err, sizeof(err)) < 0)
			report(r, "client id", CHECK_FAIL, "set client_id", "%s", err);
	}
	if (client_id && !proto_client_id_valid(client_id))
		report(r, "client id", CHECK_FAIL,
		       "client ids are 1-128 printable characters without '+', '#', '/' or a "
		       "leading '$'",
		       "'%s' is not a valid MQTT client id", client_id);
	else if (client_id)
		report(r, "client id", CHECK_OK, NULL, "'%s'", client_id);
	param_list_clear(&params);
	*ret_client_id = TAKE_PTR(client_id);
}

/* Non-blocking connect with a deadline; returns a connected fd or -1. */
static int tcp_connect(const struct addrinfo *ai, char *err, size_t errsize)
{
	_cleanup_close_ int fd =
	    socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
	struct pollfd pfd;
	int soerr = 0;
	socklen_t len = sizeof(soerr);

	if (fd < 0)
		return snprintf(err, errsize, "socket: %s", strerror(errno)), -1;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
		return snprintf(err, errsize, "%s", strerror(errno)), -1;
	pfd = (struct pollfd){.fd = fd, .events = POLLOUT};
	if (poll(&pfd, 1, CHECK_NET_TIMEOUT_MS) <= 0)
		return snprintf(err, errsize, "timed out after %d ms", CHECK_NET_TIMEOUT_MS), -1;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr != 0) {
		return snprintf(err, errsize, "%s", strerror(soerr)), -1;
	}
	return TAKE_FD(fd);
}

static int open_tcp(struct check_report *r, const struct config *cfg, uint16_t port,
                    const char *name, enum check_level failure_level)
{
	_cleanup_(freeaddrinfop) struct addrinfo *ai = NULL;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
	char service[8], err[256] = "";
	int gai, fd = -1;

	snprintf(service, sizeof(service), "%u", port);
	gai = getaddrinfo(cfg->endpoint, service, &hints, &ai);
	if (gai != 0) {
		report(r, "DNS", CHECK_FAIL, "check endpoint, the network and /etc/resolv.conf",
		       "cannot resolve '%s': %s", cfg->endpoint, gai_strerror(gai));
		return -1;
	}
	for (struct addrinfo *p = ai; p && fd < 0; p = p->ai_next)
		fd = tcp_connect(p, err, sizeof(err));
	if (fd < 0)
		report(r, name, failure_level,
		       "check that the firewall allows outgoing TCP to this port",
		       "cannot connect to %s:%u: %s", cfg->endpoint, port, err);
	return fd;
}

static void tls_failure(struct check_report *r, const char *name, SSL *ssl,
                        const struct config *cfg, uint16_t port, enum check_level level)
{
	long verify = SSL_get_verify_result(ssl);
	char detail[256];

	ERR_error_string_n(ERR_peek_last_error(), detail, sizeof(detail));
	ERR_clear_error();
	if (verify != X509_V_OK)
		report(
		    r, name, CHECK_FAIL,
		    "point ca_file at the CA that signs the endpoint (Amazon Root CA 1/3 for AWS) "
		    "and check endpoint is the exact host name",
		    "%s:%u: server certificate not trusted: %s", cfg->endpoint, port,
		    X509_verify_cert_error_string(verify));
	else
		report(r, name, level, "check that nothing intercepts TLS on this network",
		       "%s:%u: TLS handshake failed: %s", cfg->endpoint, port, detail);
}

static SSL_CTX *tls_context(const struct config *cfg)
{
	_cleanup_(SSL_CTX_freep) SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL) != 1)
		return NULL;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	/* The claim is presented like the daemon does, so servers that demand it answer. */
	if (SSL_CTX_use_certificate_file(ctx, cfg->claim_certificate, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, cfg->claim_private_key, SSL_FILETYPE_PEM) != 1)
		ERR_clear_error();
	return TAKE_PTR(ctx);
}

/* DNS + TCP + TLS on one port; with alpn set, also require the server to agree to it. */
static void check_tls(struct check_report *r, const struct config *cfg, uint16_t port, bool alpn,
                      enum check_level failure_level)
{
	static const unsigned char alpn_proto[] = "\x0ex-amzn-mqtt-ca";
	const char *name = alpn ? "TLS 443+ALPN" : "TLS";
	_cleanup_(SSL_CTX_freep) SSL_CTX *ctx = tls_context(cfg);
	_cleanup_(SSL_freep) SSL *ssl = NULL;
	_cleanup_close_ int fd = -1;
	const unsigned char *chosen = NULL;
	unsigned chosen_len = 0;
	struct pollfd pfd;
	int rc;

	if (!ctx) {
		report(r, name, CHECK_FAIL, "fix ca_file", "cannot load CA bundle '%s'",
		       cfg->ca_file);
		ERR_clear_error();
		return;
	}
	fd = open_tcp(r, cfg, port, alpn ? "TCP 443" : "TCP", failure_level);
	if (fd < 0)
		return;
	if (!alpn)
		report(r, "TCP", CHECK_OK, NULL, "connected to %s:%u", cfg->endpoint, port);
	ssl = SSL_new(ctx);
	if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_set_tlsext_host_name(ssl, cfg->endpoint) != 1 ||
	    SSL_set1_host(ssl, cfg->endpoint) != 1 ||
	    (alpn && SSL_set_alpn_protos(ssl, alpn_proto, sizeof(alpn_proto) - 1) != 0)) {
		report(r, name, CHECK_FAIL, NULL, "cannot set up TLS");
		ERR_clear_error();
		return;
	}
	while ((rc = SSL_connect(ssl)) != 1) {
		int e = SSL_get_error(ssl, rc);

		pfd = (struct pollfd){.fd = fd,
		                      .events = e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
		if ((e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) ||
		    poll(&pfd, 1, CHECK_NET_TIMEOUT_MS) <= 0) {
			tls_failure(r, name, ssl, cfg, port, failure_level);
			return;
		}
	}
	SSL_get0_alpn_selected(ssl, &chosen, &chosen_len);
	if (alpn && chosen_len == 0)
		report(r, name, failure_level, "use port 8883, or ask the network admin about 443",
		       "%s:443 did not accept ALPN x-amzn-mqtt-ca", cfg->endpoint);
	else
		report(r, name, CHECK_OK, NULL, "%s with %s:%u, server certificate verified",
		       SSL_get_version(ssl), cfg->endpoint, port);
	(void)SSL_shutdown(ssl);
}

struct mqtt_probe {
	sd_event *event;
	struct transport_event result;
	char detail[256];
	bool done;
};

static void on_probe_event(const struct transport_event *ev, void *userdata)
{
	struct mqtt_probe *probe = userdata;

	if (probe->done ||
	    (ev->type != TRANSPORT_EVENT_CONNECTED && ev->type != TRANSPORT_EVENT_DISCONNECTED))
		return;
	probe->result = *ev;
	snprintf(probe->detail, sizeof(probe->detail), "%s", ev->detail ? ev->detail : "");
	probe->done = true;
	sd_event_exit(probe->event, 0);
}

static int on_probe_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
	struct mqtt_probe *probe = userdata;

	return sd_event_exit(probe->event, 0);
}

static void check_mqtt(struct check_report *r, const struct config *cfg, const char *client_id)
{
	_cleanup_(sd_event_unrefp) sd_event *event = NULL;
	_cleanup_(mqtt_freep) struct mqtt *m = NULL;
	struct mqtt_probe probe = {0};
	struct transport t;
	struct transport_identity id = {
	    .host = cfg->endpoint,
	    .port = cfg->port,
	    .ca_file = cfg->ca_file,
	    .cert_file = cfg->claim_certificate,
	    .key_file = cfg->claim_private_key,
	    .client_id = client_id,
	    .keepalive_sec = cfg->keepalive_sec,
	};

	if (sd_event_new(&event) < 0 || mqtt_new(event, &m) < 0) {
		report(r, "MQTT", CHECK_FAIL, NULL, "cannot set up the MQTT client");
		return;
	}
	probe.event = event;
	t = mqtt_transport(m);
	t.ops->set_handler(t.impl, on_probe_event, &probe);
	if (sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC,
	                               (uint64_t)CHECK_NET_TIMEOUT_MS * USEC_PER_MSEC * 2, 0,
	                               on_probe_timeout, &probe) < 0 ||
	    t.ops->connect(t.impl, &id) < 0) {
		report(r, "MQTT", CHECK_FAIL, NULL, "cannot start the MQTT connection");
		return;
	}
	(void)sd_event_loop(event);
	t.ops->disconnect(t.impl);

	if (!probe.done)
		report(r, "MQTT", CHECK_FAIL, "check the endpoint and the network",
		       "no CONNACK from %s:%u", cfg->endpoint, cfg->port);
	else if (probe.result.type == TRANSPORT_EVENT_CONNECTED)
		report(r, "MQTT", CHECK_OK, NULL, "the claim certificate may connect as '%s'",
		       client_id);
	else
		report(r, "MQTT", CHECK_FAIL,
		       "check the claim certificate is registered and ACTIVE in AWS IoT and its "
		       "policy allows iot:Connect for this client id",
		       "connecting as '%s' failed: %s%s%s", client_id,
		       transport_failure_to_string(probe.result.failure), *probe.detail ? ": " : "",
		       probe.detail);
}

static void check_network(struct check_report *r, const struct config *cfg, const char *client_id)
{
	unsigned failures = r->failures;

	check_tls(r, cfg, cfg->port, cfg->port == 443, CHECK_FAIL);
	/* Sites that block 8883 often allow 443: knowing that saves a truck roll. */
	if (cfg->port != 443)
		check_tls(r, cfg, 443, true, CHECK_WARN);
	if (r->failures == failures && client_id)
		check_mqtt(r, cfg, client_id);
}

int check_run(const struct config *cfg, bool json, FILE *out)
{
	_cleanup_(json_object_putp) json_object *array = json ? json_object_new_array() : NULL;
	_cleanup_free_ char *client_id = NULL;
	struct check_report r = {.out = out, .array = array};
	int64_t now = (int64_t)time(NULL);

	report(&r, "configuration", CHECK_OK, NULL, "'%s' is valid", cfg->path);
	check_claim(&r, cfg, now);
	check_ca(&r, cfg);
	check_clock(&r, cfg, now);
	check_state_dir(&r, cfg);
	check_identity_inputs(&r, cfg, &client_id);
	check_network(&r, cfg, client_id);

	if (json)
		fprintf(out, "%s\n",
		        json_object_to_json_string_ext(array, JSON_C_TO_STRING_PRETTY |
		                                                  JSON_C_TO_STRING_NOSLASHESCAPE));
	else
		fprintf(out, "%u failed, %u warning%s\n", r.failures, r.warnings,
		        r.warnings == 1 ? "" : "s");
	return r.failures ? 1 : 0;
}
