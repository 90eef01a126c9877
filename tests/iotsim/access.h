/*
 * Identity and authorisation, as AWS IoT applies them to certificates (design.md):
 * at CONNECT a client certificate must be the registered claim or an ACTIVE certificate of
 * the registry; the claim may only use the provisioning topics of its templates (a tight
 * claim policy, spec §4.1), device certificates anything outside "$aws/".
 */
#pragma once

#include <mosquitto_broker.h>

#include "plugin.h"

/* The username the simulator gives a claim connection (device connections get their id). */
#define ACCESS_CLAIM_USERNAME "iotsim-claim"

/* MOSQ_ERR_SUCCESS or MOSQ_ERR_AUTH (CONNACK "not authorised"). */
int access_authenticate(struct iotsim *sim, struct mosquitto *client);

/* MOSQ_ERR_SUCCESS or MOSQ_ERR_ACL_DENIED; a denied PUBLISH also disconnects the client. */
int access_check(struct iotsim *sim, struct mosquitto *client, const char *topic, int access);

/* True when the client connected with the claim certificate. */
int access_is_claim(struct mosquitto *client);
