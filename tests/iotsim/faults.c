/* Parsing and bookkeeping of fault injection rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faults.h"

/* A spec line is short; anything longer is a mistake. */
#define SPEC_MAX   1024
#define FIELDS_MAX 6

struct rule {
	struct fault fault;
	char *spec;
};

struct faults {
	struct rule *rules;
	size_t n;
};

static const char *const kind_names[_FAULT_KIND_MAX] = {
    [FAULT_THROTTLE] = "throttle",     [FAULT_REJECT] = "reject",
    [FAULT_DELAY] = "delay",           [FAULT_DROP] = "drop",
    [FAULT_DUPLICATE] = "duplicate",   [FAULT_MALFORMED] = "malformed",
    [FAULT_WRONGTYPES] = "wrongtypes", [FAULT_OVERSIZE] = "oversize",
    [FAULT_BADCERT] = "badcert",       [FAULT_WRONGKEY] = "wrongkey",
    [FAULT_DISCONNECT] = "disconnect",
};

static int parse_kind(const char *s, enum fault_kind *ret)
{
	for (int i = 0; i < _FAULT_KIND_MAX; i++)
		if (strcmp(s, kind_names[i]) == 0) {
			*ret = (enum fault_kind)i;
			return 0;
		}
	return -EINVAL;
}

static int parse_ops(const char *s, enum fault_kind kind, unsigned *ret)
{
	enum api_op op;

	if (strcmp(s, "all") == 0) {
		*ret = (1u << _API_OP_MAX) - 1;
		/* Certificate faults only make sense where a certificate is returned. */
		if (kind == FAULT_BADCERT || kind == FAULT_WRONGKEY)
			*ret &= ~(1u << API_REGISTER);
		return 0;
	}
	op = api_op_from_short(s);
	if (op < 0)
		return -EINVAL;
	if ((kind == FAULT_BADCERT || kind == FAULT_WRONGKEY) && op == API_REGISTER)
		return -EINVAL;
	*ret = 1u << op;
	return 0;
}

static int parse_ulong(const char *s, unsigned long max, unsigned long *ret)
{
	char *end;
	unsigned long v;

	if (!s || !*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* Split at most max fields on ':'; the last field keeps any further colons (a message). */
static size_t split(char *s, char **fields, size_t max)
{
	size_t n = 0;

	while (n < max - 1) {
		char *colon = strchr(s, ':');

		fields[n++] = s;
		if (!colon)
			return n;
		*colon = '\0';
		s = colon + 1;
	}
	fields[n++] = s;
	return n;
}

static int parse_reject(char **fields, size_t n, struct fault *f)
{
	unsigned long count, status;

	if (n < 5 || parse_ulong(fields[2], 1000000000UL, &count) < 0 ||
	    parse_ulong(fields[3], 599, &status) < 0 || status < 400 || !*fields[4])
		return -EINVAL;
	f->remaining = (long)count;
	wire_error_set(&f->error, (int)status, fields[4], "%s",
	               n > 5 ? fields[5] : "Injected fault");
	return 0;
}

/* The numeric field after API: throttle rate or delay milliseconds. */
static int parse_amount(char **fields, size_t n, struct fault *f)
{
	unsigned long v;

	if (n < 3 || parse_ulong(fields[2], 10000000UL, &v) < 0)
		return -EINVAL;
	if (f->kind == FAULT_THROTTLE) {
		if (v == 0 || n != 3)
			return -EINVAL;
		f->rate = (double)v;
		for (int i = 0; i < _API_OP_MAX; i++)
			f->tokens[i] = f->rate;
		return 0;
	}
	f->ms = v;
	return 0;
}

static int parse_optional_count(char **fields, size_t n, size_t at, struct fault *f)
{
	unsigned long count;

	if (n == at)
		return 0;
	if (n != at + 1 || parse_ulong(fields[at], 1000000000UL, &count) < 0)
		return -EINVAL;
	f->remaining = (long)count;
	return 0;
}

static int parse_rule(const char *spec, struct fault *f)
{
	char buf[SPEC_MAX], *fields[FIELDS_MAX];
	size_t n;

	if (strlen(spec) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, spec);
	n = split(buf, fields, FIELDS_MAX);
	*f = (struct fault){.remaining = -1};
	if (n < 2 || parse_kind(fields[0], &f->kind) < 0 ||
	    parse_ops(fields[1], f->kind, &f->ops) < 0)
		return -EINVAL;
	switch (f->kind) {
	case FAULT_REJECT:
		return parse_reject(fields, n, f);
	case FAULT_THROTTLE:
		return parse_amount(fields, n, f);
	case FAULT_DELAY:
		if (parse_amount(fields, n, f) < 0)
			return -EINVAL;
		return parse_optional_count(fields, n, 3, f);
	default:
		return parse_optional_count(fields, n, 2, f);
	}
}

static int add_rule(struct faults *f, const char *spec)
{
	struct rule *rules = realloc(f->rules, (f->n + 1) * sizeof(*rules));

	if (!rules)
		return -ENOMEM;
	f->rules = rules;
	if (parse_rule(spec, &rules[f->n].fault) < 0)
		return -EINVAL;
	rules[f->n].spec = strdup(spec);
	if (!rules[f->n].spec)
		return -ENOMEM;
	f->n++;
	return 0;
}

static char *trim(char *s)
{
	char *end;

	s += strspn(s, " \t\r");
	end = s + strlen(s);
	while (end > s && strchr(" \t\r", end[-1]))
		*--end = '\0';
	return s;
}

int faults_parse(const char *text, struct faults **ret, char *errbuf, size_t errsize)
{
	struct faults *f = calloc(1, sizeof(*f));
	_cleanup_free_ char *copy = strdup(text);
	char *save = NULL, *line;
	int r = 0;

	if (!f || !copy) {
		free(f);
		return -ENOMEM;
	}
	for (line = strtok_r(copy, "\n", &save); line && r >= 0;
	     line = strtok_r(NULL, "\n", &save)) {
		line = trim(line);
		if (*line == '\0' || *line == '#')
			continue;
		r = add_rule(f, line);
		if (r == -EINVAL)
			snprintf(errbuf, errsize, "invalid fault spec '%s'", line);
	}
	if (r < 0) {
		faults_free(f);
		return r;
	}
	*ret = f;
	return 0;
}

struct faults *faults_free(struct faults *f)
{
	if (!f)
		return NULL;
	for (size_t i = 0; i < f->n; i++)
		free(f->rules[i].spec);
	free(f->rules);
	free(f);
	return NULL;
}

size_t faults_count(const struct faults *f)
{
	return f ? f->n : 0;
}

const char *faults_spec(const struct faults *f, size_t i)
{
	return f->rules[i].spec;
}

const struct fault *faults_take(struct faults *f, enum api_op op, enum fault_kind kind)
{
	for (size_t i = 0; f && i < f->n; i++) {
		struct fault *fault = &f->rules[i].fault;

		if (fault->kind != kind || !(fault->ops & (1u << op)) || fault->remaining == 0)
			continue;
		if (fault->remaining > 0)
			fault->remaining--;
		return fault;
	}
	return NULL;
}

bool faults_throttled(struct faults *f, enum api_op op, uint64_t now_usec)
{
	for (size_t i = 0; f && i < f->n; i++) {
		struct fault *fault = &f->rules[i].fault;
		double elapsed;

		if (fault->kind != FAULT_THROTTLE || !(fault->ops & (1u << op)))
			continue;
		/* Refill at rate per second, never above one second's worth (the burst). */
		elapsed = fault->refilled_usec[op]
		              ? (double)(now_usec - fault->refilled_usec[op]) / 1e6
		              : 0;
		fault->refilled_usec[op] = now_usec;
		fault->tokens[op] += elapsed * fault->rate;
		if (fault->tokens[op] > fault->rate)
			fault->tokens[op] = fault->rate;
		if (fault->tokens[op] < 1.0)
			return true;
		fault->tokens[op] -= 1.0;
	}
	return false;
}
