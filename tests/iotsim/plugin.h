/*
 * The local AWS IoT Core simulator: a mosquitto 2.0 broker plugin implementing the Fleet
 * Provisioning MQTT API (spec/aws-fleet-provisioning.md §1-§2) with a local CA, a registry
 * on disk, pre-provisioning hooks and fault injection. This header holds the state the
 * modules share; plugin.c wires it to the broker's events.
 */
#pragma once

#include <json-c/json.h>
#include <mosquitto_broker.h>
#include <stdint.h>

#include "ca.h"
#include "faults.h"
#include "registry.h"
#include "reply.h"
#include "stats.h"

/* AWS ownership tokens are valid for one hour (spec §1.3). */
#define TOKEN_TTL_DEFAULT_SEC 3600

struct sim_template {
	char *name;
	json_object *doc;
	char *hook; /* executable, or NULL */
};

struct pending_registration;

struct iotsim {
	char *dir;
	struct ca *ca;
	struct registry *registry;
	struct stats *stats;
	struct faults *faults;
	struct reply_queue *replies;
	struct pending_registration *pending; /* RegisterThing requests waiting for a hook */

	struct sim_template *templates;
	size_t n_templates;
	char **claim_templates; /* NULL-terminated; NULL means any template name */
	char claim_id[CERT_ID_LEN + 1];
	int64_t token_ttl_ms;

	char *faults_path;
	long faults_generation;
	struct {
		long long mtime_ns, size, ino;
	} faults_seen;
	uint64_t next_faults_check_usec;
	uint64_t next_sweep_usec;
};

/* The template called name, or NULL. */
struct sim_template *iotsim_template(struct iotsim *sim, const char *name);

/* Log through the broker, prefixed "iotsim: ". level is a MOSQ_LOG_* value. */
void iotsim_log(int level, const char *fmt, ...) _printf_(2, 3);
