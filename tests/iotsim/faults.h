/*
 * Fault injection rules, one per line of text:
 *   throttle:API:N                               token bucket of N requests/s per API -> 429
 *   reject:API:COUNT:STATUS:ERRORCODE[:MESSAGE]  reject the next COUNT requests
 *   delay:API:MS[:COUNT]                         answer MS milliseconds late
 *   drop:API[:COUNT]                             process, never answer
 *   duplicate:API[:COUNT]                        answer twice
 *   malformed:API[:COUNT]                        invalid JSON on the accepted topic
 *   wrongtypes:API[:COUNT]                       valid JSON, fields of the wrong types
 *   oversize:API[:COUNT]                         a ~1 MiB payload on the accepted topic
 *   badcert:API[:COUNT]                          certificatePem that is not a certificate
 *   wrongkey:API[:COUNT]                         a valid certificate for a different key
 *   disconnect:API[:COUNT]                       drop the connection instead of answering
 * API is csr, create, register or all; COUNT omitted means forever. Blank lines and lines
 * starting with '#' are ignored.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

enum fault_kind {
	FAULT_THROTTLE,
	FAULT_REJECT,
	FAULT_DELAY,
	FAULT_DROP,
	FAULT_DUPLICATE,
	FAULT_MALFORMED,
	FAULT_WRONGTYPES,
	FAULT_OVERSIZE,
	FAULT_BADCERT,
	FAULT_WRONGKEY,
	FAULT_DISCONNECT,
	_FAULT_KIND_MAX,
};

struct fault {
	enum fault_kind kind;
	unsigned ops;            /* bit (1 << op) for each API it applies to */
	long remaining;          /* uses left; -1 = forever */
	unsigned long ms;        /* delay */
	double rate;             /* throttle, requests per second */
	struct wire_error error; /* reject */
	double tokens[_API_OP_MAX];
	uint64_t refilled_usec[_API_OP_MAX];
};

struct faults;

/* Parse rules; on a bad line returns -EINVAL with the line and the reason in errbuf. */
int faults_parse(const char *text, struct faults **ret, char *errbuf, size_t errsize);
struct faults *faults_free(struct faults *f);

/* Number of rules, and the text of rule i (for reporting what is in force). */
size_t faults_count(const struct faults *f);
const char *faults_spec(const struct faults *f, size_t i);

/* The first rule of kind that applies to op and has uses left; one use is consumed. */
const struct fault *faults_take(struct faults *f, enum api_op op, enum fault_kind kind);

/* Token buckets: true when a request of op at now exceeds a throttle rule. */
bool faults_throttled(struct faults *f, enum api_op op, uint64_t now_usec);
