/*
 * The three operations of the Fleet Provisioning MQTT API (spec §1.3-§1.5):
 * CreateCertificateFromCsr, CreateKeysAndCertificate and RegisterThing, JSON and CBOR, with
 * the request faults (disconnect, throttle, reject, wrongkey) and pre-provisioning hooks.
 */
#pragma once

#include <mosquitto_broker.h>
#include <stdint.h>

#include "plugin.h"

/*
 * A PUBLISH the broker received. Requests to the API are answered (to this client only)
 * and swallowed: MOSQ_ERR_ACL_DENIED, which the broker acknowledges without forwarding.
 * Anything else: MOSQ_ERR_SUCCESS, routed as usual.
 */
int api_handle_message(struct iotsim *sim, struct mosquitto *client, const char *topic,
                       const void *payload, uint32_t len);

/* Finish RegisterThing requests whose hook has answered (or run out of time). */
void api_tick(struct iotsim *sim, uint64_t now_usec);

/* Drop RegisterThing requests still waiting for a hook (shutdown). */
void api_cleanup(struct iotsim *sim);
