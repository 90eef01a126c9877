/* Delivery of responses to single clients, with optional delays. */
#include <errno.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <stdlib.h>
#include <string.h>

#include "reply.h"

#define RESPONSE_QOS 1

struct reply {
	struct reply *next;
	char *client_id;
	char *topic; /* NULL: disconnect the client */
	char *payload;
	size_t len;
	uint64_t due_usec;
};

struct reply_queue {
	struct reply *head;
	struct reply **tail;
};

int reply_queue_new(struct reply_queue **ret)
{
	struct reply_queue *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	q->tail = &q->head;
	*ret = q;
	return 0;
}

static void reply_free(struct reply *r)
{
	free(r->client_id);
	free(r->topic);
	free(r->payload);
	free(r);
}

struct reply_queue *reply_queue_free(struct reply_queue *q)
{
	if (!q)
		return NULL;
	while (q->head) {
		struct reply *r = q->head;

		q->head = r->next;
		reply_free(r);
	}
	free(q);
	return NULL;
}

static int append(struct reply_queue *q, const char *client_id, const char *topic,
                  const char *payload, size_t len, uint64_t due_usec)
{
	struct reply *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->client_id = strdup(client_id);
	r->topic = topic ? strdup(topic) : NULL;
	r->payload = len ? malloc(len) : NULL;
	if (!r->client_id || (topic && !r->topic) || (len && !r->payload)) {
		reply_free(r);
		return -ENOMEM;
	}
	if (len)
		memcpy(r->payload, payload, len);
	r->len = len;
	r->due_usec = due_usec;
	*q->tail = r;
	q->tail = &r->next;
	return 0;
}

int reply_publish(struct reply_queue *q, const char *client_id, const char *topic,
                  const char *payload, size_t len, uint64_t due_usec)
{
	return append(q, client_id, topic, payload, len, due_usec);
}

int reply_kick(struct reply_queue *q, const char *client_id, uint64_t due_usec)
{
	return append(q, client_id, NULL, NULL, 0, due_usec);
}

static void deliver(struct reply *r)
{
	if (!r->topic) {
		(void)mosquitto_kick_client_by_clientid(r->client_id, false);
		return;
	}
	/* A client that has gone away simply does not get it, like on AWS. */
	(void)mosquitto_broker_publish_copy(r->client_id, r->topic, (int)r->len, r->payload,
	                                    RESPONSE_QOS, false, NULL);
}

size_t reply_flush(struct reply_queue *q, uint64_t now_usec)
{
	struct reply **link = &q->head;
	size_t left = 0;

	while (*link) {
		struct reply *r = *link;

		if (r->due_usec > now_usec) {
			link = &r->next;
			left++;
			continue;
		}
		deliver(r);
		*link = r->next;
		reply_free(r);
	}
	q->tail = link;
	return left;
}
