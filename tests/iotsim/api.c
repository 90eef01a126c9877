/* Request handlers of the Fleet Provisioning MQTT API. */
#include <mosquitto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "apply.h"
#include "cbor.h"
#include "hook.h"
#include "openssl-util.h"
#include "respond.h"
#include "template.h"
#include "util.h"

/* Ownership tokens: opaque, about the size of AWS's (whose code reserves 512 bytes). */
#define TOKEN_RANDOM_BYTES 300
#define TOKEN_LEN          (4 * ((TOKEN_RANDOM_BYTES + 2) / 3))
/* Templates live in no real account: this ARN only tells a hook which one it is. */
#define TEMPLATE_ARN_PREFIX "arn:aws:iot:local:000000000000:provisioningtemplate/"

struct pending_registration {
	struct pending_registration *next;
	struct api_request req;
	char *template_name;
	char cert_id[CERT_ID_LEN + 1];
	json_object *params;
	struct hook *hook;
};

static void reject(struct iotsim *sim, const struct api_request *req, int status, const char *code,
                   const char *message)
{
	struct wire_error e;

	wire_error_set(&e, status, code, "%s", message);
	respond_rejected(sim, req, &e);
}

/* The payload as a JSON object, or a 400 rejection sent and NULL returned. */
static json_object *parse_object(struct iotsim *sim, const struct api_request *req,
                                 const void *payload, uint32_t len)
{
	bool json = req->format == WIRE_JSON;
	json_object *obj = json ? util_json_parse(payload, len) : cbor_decode(payload, len);

	if (obj && json_object_is_type(obj, json_type_object))
		return obj;
	if (obj)
		reject(sim, req, 400, ERR_INVALID_REQUEST,
		       json ? "The payload must be a JSON object"
		            : "The payload must be a CBOR map");
	else
		reject(sim, req, 400, ERR_INVALID_REQUEST,
		       json ? "The payload is not valid JSON" : "The payload is not valid CBOR");
	json_object_put(obj);
	return NULL;
}

static int new_token(char token[TOKEN_LEN + 1])
{
	unsigned char bytes[TOKEN_RANDOM_BYTES];

	if (RAND_bytes(bytes, sizeof(bytes)) != 1)
		return -EIO;
	EVP_EncodeBlock((unsigned char *)token, bytes, sizeof(bytes));
	return 0;
}

/*
 * Issue a certificate for key, register it PENDING_ACTIVATION with a fresh ownership token
 * and fill body with certificateId, certificatePem and certificateOwnershipToken.
 */
static int issue(struct iotsim *sim, const struct api_request *req, EVP_PKEY *key,
                 json_object *body)
{
	_cleanup_(X509_freep) X509 *cert = NULL;
	_cleanup_free_ char *pem = NULL;
	char id[CERT_ID_LEN + 1], token[TOKEN_LEN + 1];
	int r;

	r = ca_issue(sim->ca, key, &cert);
	if (r >= 0)
		r = ca_certificate_id(cert, id);
	if (r >= 0)
		r = ca_certificate_pem(cert, &pem);
	if (r >= 0)
		r = new_token(token);
	if (r >= 0)
		r = registry_add_certificate(sim->registry, id, pem, token,
		                             util_realtime_msec() + sim->token_ttl_ms,
		                             req->client_id, api_op_name(req->op));
	if (r < 0)
		return r;
	json_object_object_add(body, "certificateId", json_object_new_string(id));
	json_object_object_add(body, "certificatePem", json_object_new_string(pem));
	json_object_object_add(body, "certificateOwnershipToken", json_object_new_string(token));
	iotsim_log(MOSQ_LOG_INFO, "%s from '%s': issued certificate %s", api_op_name(req->op),
	           req->client_id, id);
	OPENSSL_cleanse(token, sizeof(token));
	return 0;
}

static void send_issued(struct iotsim *sim, const struct api_request *req, EVP_PKEY *key,
                        json_object *body)
{
	if (issue(sim, req, key, body) < 0) {
		json_object_put(body);
		reject(sim, req, 500, ERR_INTERNAL, "The certificate could not be issued");
		return;
	}
	respond_accepted(sim, req, body);
}

static void handle_csr(struct iotsim *sim, const struct api_request *req, const void *payload,
                       uint32_t len)
{
	_cleanup_(json_object_putp) json_object *request = parse_object(sim, req, payload, len);
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	json_object *csr;
	char why[256], message[320];

	if (!request)
		return;
	if (!json_object_object_get_ex(request, "certificateSigningRequest", &csr) ||
	    !json_object_is_type(csr, json_type_string) || json_object_get_string_len(csr) == 0) {
		reject(sim, req, 400, ERR_INVALID_REQUEST,
		       "certificateSigningRequest is required and must be a non-empty string");
		return;
	}
	if (ca_check_csr(json_object_get_string(csr), (size_t)json_object_get_string_len(csr), &key,
	                 why, sizeof(why)) < 0) {
		snprintf(message, sizeof(message), "Invalid certificate signing request: %s", why);
		reject(sim, req, 400, ERR_INVALID_REQUEST, message);
		return;
	}
	/* wrongkey: a perfectly good certificate, for a key the device does not have. */
	if (faults_take(sim->faults, req->op, FAULT_WRONGKEY)) {
		EVP_PKEY_free(TAKE_PTR(key));
		if (ca_new_ec_key(&key) < 0) {
			reject(sim, req, 500, ERR_INTERNAL, "Key generation failed");
			return;
		}
	}
	send_issued(sim, req, key, json_object_new_object());
}

static void handle_create(struct iotsim *sim, const struct api_request *req, const void *payload,
                          uint32_t len)
{
	_cleanup_(json_object_putp) json_object *request = NULL;
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	_cleanup_free_ char *key_pem = NULL;
	json_object *body;

	/* The docs publish an empty payload, the SDKs "{}" (spec §1.4): both are fine. */
	if (len > 0 && !(request = parse_object(sim, req, payload, len)))
		return;
	if (ca_new_rsa_key(&key) < 0 || ca_private_key_pem(key, &key_pem) < 0) {
		reject(sim, req, 500, ERR_INTERNAL, "Key generation failed");
		return;
	}
	/* wrongkey: hand out a private key that does not belong to the certificate. */
	if (faults_take(sim->faults, req->op, FAULT_WRONGKEY)) {
		EVP_PKEY_free(TAKE_PTR(key));
		if (ca_new_ec_key(&key) < 0) {
			reject(sim, req, 500, ERR_INTERNAL, "Key generation failed");
			return;
		}
	}
	body = json_object_new_object();
	json_object_object_add(body, "privateKey", json_object_new_string(key_pem));
	OPENSSL_cleanse(key_pem, strlen(key_pem));
	send_issued(sim, req, key, body);
}

/* Evaluate the template with params and apply it; answers the request either way. */
static void finish_registration(struct iotsim *sim, const struct api_request *req,
                                struct sim_template *tmpl, const char *cert_id, json_object *params)
{
	_cleanup_(json_object_putp) json_object *eval = NULL;
	json_object *body = NULL;
	struct wire_error e;
	char why[sizeof(e.message)] = "";
	int r;

	r = tmpl_evaluate(tmpl->doc, params, cert_id, &eval, why, sizeof(why));
	if (r < 0) {
		if (r == -EINVAL)
			reject(sim, req, 400, ERR_INVALID_REQUEST, why);
		else
			reject(sim, req, 500, ERR_INTERNAL,
			       "The provisioning template could not be evaluated");
		return;
	}
	if (apply_registration(sim->registry, eval, cert_id, tmpl->name, &body, &e) < 0) {
		respond_rejected(sim, req, &e);
		return;
	}
	iotsim_log(MOSQ_LOG_INFO, "RegisterThing from '%s': certificate %s registered as '%s'",
	           req->client_id, cert_id,
	           str_or(util_json_get_string(body, "thingName"), "(no thing)"));
	respond_accepted(sim, req, body);
}

static bool string_map(json_object *obj)
{
	if (!json_object_is_type(obj, json_type_object))
		return false;
	json_object_object_foreach(obj, key, value)
	{
		(void)key;
		if (!json_object_is_type(value, json_type_string))
			return false;
	}
	return true;
}

/* The token of a RegisterThing request; rejects and returns NULL when unusable. */
static const char *registration_token(struct iotsim *sim, const struct api_request *req,
                                      json_object *request)
{
	json_object *token;
	const char *id = NULL;
	int r;

	if (!json_object_object_get_ex(request, "certificateOwnershipToken", &token) ||
	    json_object_is_type(token, json_type_null) ||
	    (json_object_is_type(token, json_type_string) &&
	     json_object_get_string_len(token) == 0)) {
		reject(sim, req, 400, ERR_INVALID_TOKEN,
		       "Certificate ownership token cannot be empty.");
		return NULL;
	}
	if (!json_object_is_type(token, json_type_string)) {
		reject(sim, req, 400, ERR_INVALID_REQUEST,
		       "certificateOwnershipToken must be a string");
		return NULL;
	}
	r = registry_lookup_token(sim->registry, json_object_get_string(token),
	                          util_realtime_msec(), &id);
	if (r == -ETIMEDOUT)
		reject(sim, req, 400, ERR_INVALID_TOKEN,
		       "Certificate ownership token has expired.");
	else if (r < 0)
		reject(sim, req, 400, ERR_INVALID_TOKEN, "Certificate ownership token is invalid.");
	return r < 0 ? NULL : id;
}

static char *hook_input(struct iotsim *sim, const struct api_request *req, const char *tmpl_name,
                        const char *cert_id, json_object *params, size_t *ret_len)
{
	_cleanup_(json_object_putp) json_object *in = json_object_new_object();
	json_object *cert = registry_get(sim->registry, REGISTRY_CERTIFICATES, cert_id);
	char arn[sizeof(TEMPLATE_ARN_PREFIX) + TEMPLATE_NAME_MAX];

	snprintf(arn, sizeof(arn), TEMPLATE_ARN_PREFIX "%s", tmpl_name);
	json_object_object_add(in, "claimCertificateId", json_object_new_string(sim->claim_id));
	json_object_object_add(in, "certificateId", json_object_new_string(cert_id));
	json_object_object_add(
	    in, "certificatePem",
	    json_object_new_string(str_or(util_json_get_string(cert, "certificatePem"), "")));
	json_object_object_add(in, "templateArn", json_object_new_string(arn));
	json_object_object_add(in, "clientId", json_object_new_string(req->client_id));
	json_object_object_add(in, "parameters", json_object_get(params));
	return util_json_dump(in, ret_len);
}

static void start_hook(struct iotsim *sim, const struct api_request *req, struct sim_template *tmpl,
                       const char *cert_id, json_object *params)
{
	struct pending_registration *p = calloc(1, sizeof(*p));
	_cleanup_free_ char *input = NULL;
	size_t len = 0;

	input = hook_input(sim, req, tmpl->name, cert_id, params, &len);
	if (!p || !input || api_request_copy(req, &p->req) < 0 ||
	    !(p->template_name = strdup(tmpl->name))) {
		free(p ? p->template_name : NULL);
		free(p);
		reject(sim, req, 500, ERR_INTERNAL, "Out of memory");
		return;
	}
	if (hook_start(tmpl->hook, input, len, util_now_usec(), &p->hook) < 0) {
		api_request_clear(&p->req);
		free(p->template_name);
		free(p);
		reject(sim, req, 403, ERR_ACCESS_DENIED,
		       "Pre-provisioning hook could not be started");
		return;
	}
	snprintf(p->cert_id, sizeof(p->cert_id), "%s", cert_id);
	p->params = json_object_get(params);
	p->next = sim->pending;
	sim->pending = p;
}

static void handle_register(struct iotsim *sim, const struct api_request *req,
                            const char *template_name, const void *payload, uint32_t len)
{
	struct sim_template *tmpl = iotsim_template(sim, template_name);
	_cleanup_(json_object_putp) json_object *request = NULL;
	_cleanup_(json_object_putp) json_object *params = NULL;
	json_object *given = NULL;
	char message[128];
	const char *cert_id;

	if (!tmpl) {
		snprintf(message, sizeof(message), "Template %s does not exist", template_name);
		reject(sim, req, 404, ERR_NOT_FOUND, message);
		return;
	}
	request = parse_object(sim, req, payload, len);
	if (!request)
		return;
	if (json_object_object_get_ex(request, "parameters", &given) &&
	    !json_object_is_type(given, json_type_null) && !string_map(given)) {
		reject(sim, req, 400, ERR_INVALID_REQUEST,
		       "parameters must be an object whose values are strings");
		return;
	}
	cert_id = registration_token(sim, req, request);
	if (!cert_id)
		return;
	if (given && string_map(given))
		json_object_deep_copy(given, &params, NULL);
	else
		params = json_object_new_object();
	if (tmpl->hook)
		start_hook(sim, req, tmpl, cert_id, params);
	else
		finish_registration(sim, req, tmpl, cert_id, params);
}

static struct pending_registration *pending_free(struct pending_registration *p)
{
	hook_free(p->hook);
	api_request_clear(&p->req);
	json_object_put(p->params);
	free(p->template_name);
	free(p);
	return NULL;
}

/* The hook has answered: deny, or merge its overrides (they win) and go on. */
static void hook_finished(struct iotsim *sim, struct pending_registration *p)
{
	_cleanup_(json_object_putp) json_object *overrides = NULL;
	struct sim_template *tmpl = iotsim_template(sim, p->template_name);
	char why[256];

	if (hook_result(p->hook, &overrides, why, sizeof(why)) < 0) {
		reject(sim, &p->req, 403, ERR_ACCESS_DENIED, why);
		return;
	}
	if (overrides) {
		json_object_object_foreach(overrides, key, value)
		{
			json_object_object_add(p->params, key, json_object_get(value));
		}
	}
	finish_registration(sim, &p->req, tmpl, p->cert_id, p->params);
}

void api_tick(struct iotsim *sim, uint64_t now_usec)
{
	struct pending_registration **link = &sim->pending;

	while (*link) {
		struct pending_registration *p = *link;

		if (hook_poll(p->hook, now_usec) == 0) {
			link = &p->next;
			continue;
		}
		*link = p->next;
		hook_finished(sim, p);
		pending_free(p);
	}
}

void api_cleanup(struct iotsim *sim)
{
	while (sim->pending) {
		struct pending_registration *p = sim->pending;

		sim->pending = p->next;
		pending_free(p);
	}
}

/* Faults that act before the request is looked at; true when the request is done with. */
static bool request_faults(struct iotsim *sim, const struct api_request *req)
{
	const struct fault *f;

	if (faults_take(sim->faults, req->op, FAULT_DISCONNECT)) {
		iotsim_log(MOSQ_LOG_INFO, "%s from '%s': disconnecting the client (fault)",
		           api_op_name(req->op), req->client_id);
		(void)reply_kick(sim->replies, req->client_id, 0);
		return true;
	}
	if (faults_throttled(sim->faults, req->op, util_now_usec())) {
		reject(sim, req, 429, ERR_THROTTLED, "Rate exceeded");
		return true;
	}
	f = faults_take(sim->faults, req->op, FAULT_REJECT);
	if (f) {
		respond_rejected(sim, req, &f->error);
		return true;
	}
	return false;
}

static void dispatch(struct iotsim *sim, const struct api_request *req, const struct wire_topic *t,
                     const void *payload, uint32_t len)
{
	char message[128];

	if (request_faults(sim, req))
		return;
	if (len > WIRE_PAYLOAD_MAX) {
		snprintf(message, sizeof(message), "The payload exceeds the limit of %d bytes",
		         WIRE_PAYLOAD_MAX);
		reject(sim, req, 413, ERR_TOO_LARGE, message);
		return;
	}
	switch (t->op) {
	case API_CSR:
		handle_csr(sim, req, payload, len);
		break;
	case API_CREATE:
		handle_create(sim, req, payload, len);
		break;
	case API_REGISTER:
		handle_register(sim, req, t->template_name, payload, len);
		break;
	default:
		break;
	}
}

int api_handle_message(struct iotsim *sim, struct mosquitto *client, const char *topic,
                       const void *payload, uint32_t len)
{
	struct wire_topic t;
	struct api_request req;

	if (wire_parse_topic(topic, &t) < 0 || t.kind != WIRE_REQUEST)
		return MOSQ_ERR_SUCCESS;
	req = (struct api_request){
	    .op = t.op,
	    .format = t.format,
	    .client_id = (char *)(str_or(mosquitto_client_id(client), "")),
	    .topic = (char *)topic,
	};
	stats_request(sim->stats, req.op, req.client_id);
	dispatch(sim, &req, &t, payload, len);
	return MOSQ_ERR_ACL_DENIED;
}
