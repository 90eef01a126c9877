/*
 * Answering one API request: the accepted or rejected payload goes to the requesting
 * client only, after the response faults (drop, malformed, wrongtypes, oversize, badcert,
 * duplicate, delay) have had their say, and is counted in the stats.
 */
#pragma once

#include <json-c/json.h>

#include "plugin.h"
#include "wire.h"

struct api_request {
	enum api_op op;
	enum wire_format format; /* answers use the request's format */
	char *client_id;
	char *topic; /* the request topic; answers go to topic + "/accepted" or "/rejected" */
};

/* Copy a request identity (for answers given later, after a hook). */
int api_request_copy(const struct api_request *from, struct api_request *to);
void api_request_clear(struct api_request *req);

/* Send body (taken) on the accepted topic. */
void respond_accepted(struct iotsim *sim, const struct api_request *req, json_object *body);

/* Send e on the rejected topic. */
void respond_rejected(struct iotsim *sim, const struct api_request *req,
                      const struct wire_error *e);
