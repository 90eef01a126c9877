/*
 * Outgoing responses and connection kicks, in order. Each goes to exactly one client
 * (mosquitto_broker_publish with its client id), as AWS answers only the connection that
 * asked (spec §1.1). Entries wait until their due time (delay faults) and until the
 * broker's next tick, so nothing is published or kicked from inside a packet handler.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct reply_queue;

int reply_queue_new(struct reply_queue **ret);
struct reply_queue *reply_queue_free(struct reply_queue *q);

/* Queue a QoS 1 publish of payload (copied) to topic for client_id, due at due_usec. */
int reply_publish(struct reply_queue *q, const char *client_id, const char *topic,
                  const char *payload, size_t len, uint64_t due_usec);

/* Queue disconnecting client_id. */
int reply_kick(struct reply_queue *q, const char *client_id, uint64_t due_usec);

/* Send everything that is due; returns how many entries remain. */
size_t reply_flush(struct reply_queue *q, uint64_t now_usec);
