/* Client certificate authentication and topic authorisation. */
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <string.h>

#include "access.h"
#include "openssl-util.h"
#include "util.h"
#include "wire.h"

static const char *certificate_verdict(struct iotsim *sim, const char *id)
{
	json_object *rec;
	const char *status;

	if (strcmp(id, sim->claim_id) == 0)
		return NULL;
	rec = registry_get(sim->registry, REGISTRY_CERTIFICATES, id);
	if (!rec)
		return "is not registered";
	status = util_json_get_string(rec, "status");
	if (!status || strcmp(status, CERT_STATUS_ACTIVE) != 0)
		return status && strcmp(status, CERT_STATUS_INACTIVE) == 0 ? "is INACTIVE"
		                                                           : "is not ACTIVE";
	return NULL;
}

int access_authenticate(struct iotsim *sim, struct mosquitto *client)
{
	_cleanup_(X509_freep) X509 *cert = mosquitto_client_certificate(client);
	const char *client_id = str_or(mosquitto_client_id(client), "");
	char id[CERT_ID_LEN + 1];
	const char *refusal;
	int claim;

	if (!cert || ca_certificate_id(cert, id) < 0) {
		iotsim_log(MOSQ_LOG_NOTICE, "refused '%s': no client certificate", client_id);
		stats_connection(sim->stats, "refused");
		return MOSQ_ERR_AUTH;
	}
	refusal = certificate_verdict(sim, id);
	if (refusal) {
		iotsim_log(MOSQ_LOG_NOTICE, "refused '%s': certificate %s %s", client_id, id,
		           refusal);
		stats_connection(sim->stats, "refused");
		return MOSQ_ERR_AUTH;
	}
	/* The username records who this is for the ACL checks; whatever the client sent as
	 * username means nothing to AWS IoT. */
	claim = strcmp(id, sim->claim_id) == 0;
	if (mosquitto_set_username(client, claim ? ACCESS_CLAIM_USERNAME : id) != MOSQ_ERR_SUCCESS)
		return MOSQ_ERR_AUTH;
	stats_connection(sim->stats, claim ? "claim" : "device");
	return MOSQ_ERR_SUCCESS;
}

int access_is_claim(struct mosquitto *client)
{
	const char *user = mosquitto_client_username(client);

	return user && strcmp(user, ACCESS_CLAIM_USERNAME) == 0;
}

static int claim_may_use_template(struct iotsim *sim, const char *name)
{
	if (!sim->claim_templates)
		return 1;
	for (char **t = sim->claim_templates; *t; t++)
		if (strcmp(*t, name) == 0)
			return 1;
	return 0;
}

static int claim_allowed(struct iotsim *sim, const char *topic, int access)
{
	struct wire_topic t;

	if (access == MOSQ_ACL_UNSUBSCRIBE)
		return 1;
	/* Exact API topics only: a wildcard filter is not one, as with exact policy ARNs. */
	if (wire_parse_topic(topic, &t) < 0)
		return 0;
	if (t.op == API_REGISTER && !claim_may_use_template(sim, t.template_name))
		return 0;
	if (access == MOSQ_ACL_WRITE)
		return t.kind == WIRE_REQUEST;
	return t.kind != WIRE_REQUEST;
}

int access_check(struct iotsim *sim, struct mosquitto *client, const char *topic, int access)
{
	const char *user = mosquitto_client_username(client);
	int allowed;

	if (!user)
		allowed = 0;
	else if (access_is_claim(client))
		allowed = claim_allowed(sim, topic, access);
	else
		allowed = access == MOSQ_ACL_UNSUBSCRIBE || strncmp(topic, "$aws/", 5) != 0;
	if (allowed)
		return MOSQ_ERR_SUCCESS;
	iotsim_log(MOSQ_LOG_NOTICE, "denied %s on '%s' to '%s'",
	           access == MOSQ_ACL_WRITE       ? "publish"
	           : access == MOSQ_ACL_SUBSCRIBE ? "subscribe"
	                                          : "receive",
	           topic, str_or(mosquitto_client_id(client), ""));
	/* AWS IoT closes an MQTT 3.1.1 connection that publishes where it may not. */
	if (access == MOSQ_ACL_WRITE)
		(void)reply_kick(sim->replies, str_or(mosquitto_client_id(client), ""), 0);
	return MOSQ_ERR_ACL_DENIED;
}
