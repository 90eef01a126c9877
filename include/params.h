/*
 * Template parameters: resolving each configured source (literal, file, MAC, machine-id,
 * hostname, command) to a validated value, and expanding "${Name}" in client_id and the
 * CSR subject. Non-logging.
 */
#pragma once

#include <stddef.h>

#include "config.h"

/* Values must fit RegisterThing and MQTT client ids; see protocol.h for the wire limits. */
#define PARAM_VALUE_MAX 1024

struct param_value {
	char *name;
	char *value;
};

struct param_list {
	struct param_value *items;
	size_t n;
};

/*
 * Resolve every configured parameter. On failure returns a negative errno and writes a
 * human-readable reason (naming the parameter and its source) into errbuf.
 */
int params_resolve(const struct config *cfg, struct param_list *ret, char *errbuf, size_t errsize);

/* Resolve a single source; ret_value is a new string. */
int params_resolve_one(const struct config_param *p, char **ret_value, char *errbuf,
                       size_t errsize);

/* Look a value up by name; NULL when absent. */
const char *params_get(const struct param_list *l, const char *name);

/*
 * Expand "${Name}" references in tmpl. Unknown names and an unterminated "${" are
 * -EINVAL with the reason in errbuf. "$$" is a literal "$".
 */
int params_expand(const char *tmpl, const struct param_list *l, char **ret, char *errbuf,
                  size_t errsize);

void param_list_clear(struct param_list *l);

/*
 * Tests only: read /etc/machine-id and /sys/class/net/<if>/address below prefix instead of
 * "/". NULL restores "/". The string is not copied and must stay valid while it is in use.
 */
void params_set_root(const char *prefix);
