/*
 * The provisioning state machine (design.md data flow and decisions 1, 6, 7, 8, 13).
 * One thread on sd-event. Every waiting state arms a deadline; failures are classified and
 * retried with full-jitter backoff; progress is reported with STATUS= and logged with
 * structured fields. Talks to MQTT only through struct transport.
 */
#pragma once

#include <errno.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "params.h"
#include "store.h"
#include "transport.h"

enum prov_state {
	PROV_IDLE,
	PROV_PREPARING,     /* loading pending/ or generating key + CSR */
	PROV_CLOCK_WAIT,    /* wall clock before build time or claim notBefore */
	PROV_CONNECTING,    /* claim connection: TCP + TLS + CONNACK */
	PROV_SUBSCRIBING,   /* waiting for SUBACK of accepted + rejected */
	PROV_CSR_SENT,      /* CreateCertificateFromCsr published, waiting for the reply */
	PROV_REGISTER_SENT, /* RegisterThing published, waiting for the reply */
	PROV_COMMITTING,
	PROV_VERIFYING, /* connecting with the new credentials */
	PROV_BACKOFF,
	PROV_DONE,
	PROV_FAILED,
	_PROV_STATE_MAX,
	_PROV_STATE_INVALID = -EINVAL,
};
const char *prov_state_to_string(enum prov_state s);

enum prov_result {
	PROV_RESULT_READY,   /* credentials committed (and verified): exit 0 */
	PROV_RESULT_CONFIG,  /* configuration class (unreadable claim key, bad CSR file): exit 78 */
	PROV_RESULT_GAVE_UP, /* max_attempts reached: exit 1 */
	PROV_RESULT_CANCELLED, /* SIGTERM/SIGINT: pending state kept, exit 0 */
	_PROV_RESULT_MAX,
};

struct prov_settings {
	const struct config *config; /* endpoint, port, CA, claim, template, key type, verify */
	const struct param_list *params;
	const char *client_id;   /* expanded */
	const char *csr_subject; /* expanded, may be NULL */
	/* Timing, copied from config by main; tests shrink them to milliseconds. */
	uint64_t connect_timeout_usec;
	uint64_t response_timeout_usec;
	uint64_t retry_base_usec;
	uint64_t retry_cap_usec;
	uint64_t retry_permanent_usec;
	uint64_t retry_throttle_usec; /* first window after throttling; 0 = retry_base_usec */
	uint64_t token_max_age_usec;
	unsigned max_attempts;   /* 0 = forever */
	int64_t clock_floor_sec; /* wall clock must be past this (build time) */
};

struct prov;
typedef void (*prov_done_fn)(enum prov_result result, void *userdata);

/* transport is used for the claim connection and for the verify connection. */
int prov_new(sd_event *event, const struct prov_settings *settings, struct store *store,
             struct transport transport, prov_done_fn done, void *userdata, struct prov **ret);
/* Begin (or resume from pending/); done is called exactly once, from the event loop. */
int prov_start(struct prov *p);
/*
 * Instead of prov_start: current/ holds a committed identity that was never verified
 * (CRED_UNVERIFIED, verify = true). Resume at VERIFYING: connect with it, then READY; no new
 * key, CSR or registration.
 */
int prov_start_verify(struct prov *p, const char *thing_name, const char *certificate_id);
/* Stop at the next safe point (SIGTERM): pending state is kept, done(CANCELLED) follows. */
void prov_cancel(struct prov *p);
enum prov_state prov_get_state(const struct prov *p);
/* Requests published so far (CSR + RegisterThing), for benchmarks and tests. */
unsigned prov_requests_sent(const struct prov *p);
struct prov *prov_free(struct prov *p);
static inline void prov_freep(struct prov **p)
{
	prov_free(*p);
}
