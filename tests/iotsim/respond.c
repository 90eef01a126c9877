/* Sends API responses to the requesting client, through the response faults. */
#include <mosquitto.h>
#include <stdio.h>
#include <string.h>

#include "cbor.h"
#include "respond.h"
#include "util.h"

/* oversize: about 1 MiB, far above the 128 KiB AWS allows for a PUBLISH (spec §3.2). */
#define OVERSIZE_PADDING (1024 * 1024)
/* badcert: PEM armour around something that is not a certificate. */
#define BAD_CERTIFICATE_PEM                                                                        \
	"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGUgZnJvbSBBV1MgSW9U\n"                  \
	"-----END CERTIFICATE-----\n"

int api_request_copy(const struct api_request *from, struct api_request *to)
{
	to->op = from->op;
	to->format = from->format;
	to->client_id = strdup(from->client_id);
	to->topic = strdup(from->topic);
	if (!to->client_id || !to->topic) {
		api_request_clear(to);
		return -ENOMEM;
	}
	return 0;
}

void api_request_clear(struct api_request *req)
{
	free(req->client_id);
	free(req->topic);
	req->client_id = req->topic = NULL;
}

/* wrongtypes: every field keeps its name and gets a value of another JSON type. */
static void mangle_types(json_object *body)
{
	json_object_object_foreach(body, key, value)
	{
		json_object *other;

		if (json_object_is_type(value, json_type_string))
			other = json_object_new_int((int32_t)json_object_get_string_len(value));
		else if (json_object_is_type(value, json_type_object))
			other = json_object_new_array();
		else
			other = json_object_new_string("wrong type");
		json_object_object_add(body, key, other);
	}
}

static void add_padding(json_object *body)
{
	_cleanup_free_ char *pad = malloc(OVERSIZE_PADDING + 1);

	if (!pad)
		return;
	memset(pad, 'x', OVERSIZE_PADDING);
	pad[OVERSIZE_PADDING] = '\0';
	json_object_object_add(body, "padding", json_object_new_string(pad));
}

/* Accepted payload after the mangling faults; *ret_malformed asks for cut-off JSON. */
static void mangle_accepted(struct iotsim *sim, enum api_op op, json_object *body,
                            bool *ret_malformed)
{
	*ret_malformed = faults_take(sim->faults, op, FAULT_MALFORMED) != NULL;
	if (*ret_malformed)
		return;
	if (faults_take(sim->faults, op, FAULT_OVERSIZE))
		add_padding(body);
	else if (faults_take(sim->faults, op, FAULT_WRONGTYPES))
		mangle_types(body);
	else if (op != API_REGISTER && faults_take(sim->faults, op, FAULT_BADCERT))
		json_object_object_add(body, "certificatePem",
		                       json_object_new_string(BAD_CERTIFICATE_PEM));
}

/* body in the request's payload format, as a heap buffer. */
static char *serialize(const struct api_request *req, json_object *body, size_t *ret_len)
{
	uint8_t *buf = NULL;

	if (req->format == WIRE_JSON)
		return util_json_dump(body, ret_len);
	return cbor_encode(body, &buf, ret_len) < 0 ? NULL : (char *)buf;
}

static void queue(struct iotsim *sim, const struct api_request *req, const char *suffix,
                  const char *payload, size_t len)
{
	const struct fault *delay = faults_take(sim->faults, req->op, FAULT_DELAY);
	int copies = faults_take(sim->faults, req->op, FAULT_DUPLICATE) ? 2 : 1;
	uint64_t due = delay ? util_now_usec() + delay->ms * USEC_PER_MSEC : 0;
	char topic[512];

	snprintf(topic, sizeof(topic), "%s/%s", req->topic, suffix);
	for (int i = 0; i < copies; i++)
		if (reply_publish(sim->replies, req->client_id, topic, payload, len, due) < 0)
			iotsim_log(MOSQ_LOG_ERR, "out of memory queueing a response");
}

static bool dropped(struct iotsim *sim, const struct api_request *req)
{
	if (!faults_take(sim->faults, req->op, FAULT_DROP))
		return false;
	stats_dropped(sim->stats, req->op);
	iotsim_log(MOSQ_LOG_INFO, "%s from '%s': response dropped (fault)", api_op_name(req->op),
	           req->client_id);
	return true;
}

void respond_accepted(struct iotsim *sim, const struct api_request *req, json_object *body)
{
	_cleanup_(json_object_putp) json_object *owned = body;
	_cleanup_free_ char *payload = NULL;
	size_t len = 0;
	bool malformed;

	stats_response(sim->stats, req->op, req->client_id, 200, NULL);
	if (dropped(sim, req))
		return;
	mangle_accepted(sim, req->op, body, &malformed);
	payload = serialize(req, body, &len);
	if (!payload)
		return;
	/* Cut the document in half: no parser can accept what is left. */
	if (malformed)
		len /= 2;
	queue(sim, req, "accepted", payload, len);
}

void respond_rejected(struct iotsim *sim, const struct api_request *req, const struct wire_error *e)
{
	_cleanup_(json_object_putp) json_object *body = wire_rejection(e);
	_cleanup_free_ char *payload = NULL;
	size_t len = 0;

	stats_response(sim->stats, req->op, req->client_id, e->status, e->code);
	iotsim_log(MOSQ_LOG_INFO, "%s from '%s': rejected %d %s: %s", api_op_name(req->op),
	           req->client_id, e->status, e->code, e->message);
	if (dropped(sim, req) || !body)
		return;
	payload = serialize(req, body, &len);
	if (payload)
		queue(sim, req, "rejected", payload, len);
}
