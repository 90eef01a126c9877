/*
 * libmosquitto behind the transport ops table, driven by sd-event: the socket is an I/O
 * source, mosquitto_loop_misc runs from a timer. No threads, no sleeps. TLS 1.2+, server
 * verified against ca_file with hostname check and SNI; ALPN "x-amzn-mqtt-ca" on 443.
 * Non-logging (debug only): failures come back as transport events.
 */
#pragma once

#include <systemd/sd-event.h>

#include "transport.h"

struct mqtt;

/* Calls mosquitto_lib_init on first use. Events go to the handler set through the ops table. */
int mqtt_new(sd_event *event, struct mqtt **ret);
struct mqtt *mqtt_free(struct mqtt *m);
static inline void mqtt_freep(struct mqtt **m)
{
	mqtt_free(*m);
}

/*
 * The ops-table view of m, for provision. connect returns -EINVAL (incomplete identity),
 * -EBUSY (a connection exists: disconnect first) or -ENOMEM; every other failure, an
 * unreadable key or a DNS error included, arrives later as DISCONNECTED from the event
 * loop. subscribe and publish return -ENOTCONN before CONNECTED. DISCONNECTED carries
 * connack = -1 unless a CONNACK refused the connection.
 */
struct transport mqtt_transport(struct mqtt *m);
