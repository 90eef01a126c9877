/*
 * The seam between the provisioning state machine and MQTT: a small ops table that
 * mqtt.c implements and unit tests fake (style.md rule 11). All operations are
 * asynchronous; results arrive as transport events on the caller's event loop.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct transport_identity {
	const char *host; /* endpoint host name: DNS, SNI and hostname verification */
	uint16_t port;    /* 443 implies ALPN "x-amzn-mqtt-ca" */
	const char *ca_file;
	const char *cert_file;
	const char *key_file;
	const char *client_id;
	uint32_t keepalive_sec;
};

/* Why a connection could not be made or was lost. Drives the error class in provision. */
enum transport_failure {
	TRANSPORT_OK,
	TRANSPORT_FAIL_DNS,            /* name does not resolve (no network yet?) */
	TRANSPORT_FAIL_TCP,            /* refused, unreachable, timed out */
	TRANSPORT_FAIL_TLS,            /* handshake failed for a reason other than trust */
	TRANSPORT_FAIL_TLS_UNTRUSTED,  /* server certificate not trusted by ca_file / wrong host */
	TRANSPORT_FAIL_CREDENTIALS,    /* our certificate or key cannot be loaded */
	TRANSPORT_FAIL_NOT_AUTHORIZED, /* CONNACK 4/5 or AWS's 7, or closed right after TLS */
	TRANSPORT_FAIL_REFUSED,        /* other CONNACK refusals (1-3) */
	TRANSPORT_FAIL_LOST,           /* connection closed or reset after CONNACK */
	TRANSPORT_FAIL_PROTOCOL,       /* malformed MQTT, oversized packet */
	_TRANSPORT_FAIL_MAX,
};
const char *transport_failure_to_string(enum transport_failure f);

enum transport_event_type {
	TRANSPORT_EVENT_CONNECTED,    /* CONNACK 0 */
	TRANSPORT_EVENT_DISCONNECTED, /* failure says why; also for failed connects */
	TRANSPORT_EVENT_SUBSCRIBED,   /* SUBACK; granted_ok false if any filter got 0x80 */
	TRANSPORT_EVENT_PUBLISHED,    /* PUBACK for the last publish */
	TRANSPORT_EVENT_MESSAGE,      /* incoming PUBLISH */
};

struct transport_event {
	enum transport_event_type type;
	enum transport_failure failure; /* DISCONNECTED only */
	int connack;                    /* CONNACK code when failure is a refusal, else -1 */
	const char *detail;  /* human-readable cause (library or OpenSSL text), may be NULL */
	int granted_ok;      /* SUBSCRIBED only */
	const char *topic;   /* MESSAGE only */
	const void *payload; /* MESSAGE only, valid during the callback */
	size_t len;
};

typedef void (*transport_event_fn)(const struct transport_event *ev, void *userdata);

struct transport_ops {
	/* Route events to cb(ev, userdata) from now on. */
	void (*set_handler)(void *impl, transport_event_fn cb, void *userdata);
	/* Start connecting; CONNECTED or DISCONNECTED follows. Copies what it needs from id. */
	int (*connect)(void *impl, const struct transport_identity *id);
	/* Subscribe QoS 1 to n filters in one SUBSCRIBE; SUBSCRIBED follows. */
	int (*subscribe)(void *impl, const char *const *filters, size_t n);
	/* Publish QoS 1; PUBLISHED follows on PUBACK. */
	int (*publish)(void *impl, const char *topic, const void *payload, size_t len);
	/* Close the connection (DISCONNECT sent if connected); no event follows. */
	void (*disconnect)(void *impl);
};

struct transport {
	const struct transport_ops *ops;
	void *impl;
};
