/* mosquitto 2.0 plugin entry points: options, event wiring, the periodic tick. */
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "access.h"
#include "api.h"
#include "plugin.h"
#include "template.h"
#include "util.h"

/* AWS limits a template body to 10240 characters (spec §2.1). */
#define TEMPLATE_BODY_MAX 10240
/* How often the fault control file is looked at, and expired tokens swept. */
#define FAULTS_CHECK_USEC (50 * USEC_PER_MSEC)
#define SWEEP_USEC        (250 * USEC_PER_MSEC)
/* A fault control file is a handful of lines. */
#define FAULTS_FILE_MAX (64 * 1024)

/* Only the entry points mosquitto looks up are exported (the module builds hidden). */
#define PLUGIN_EXPORT __attribute__((visibility("default")))

static mosquitto_plugin_id_t *plugin_id;

void iotsim_log(int level, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	mosquitto_log_printf(level, "iotsim: %s", buf);
}

struct sim_template *iotsim_template(struct iotsim *sim, const char *name)
{
	for (size_t i = 0; i < sim->n_templates; i++)
		if (strcmp(sim->templates[i].name, name) == 0)
			return &sim->templates[i];
	return NULL;
}

static struct sim_template *template_slot(struct iotsim *sim, const char *name)
{
	struct sim_template *t = iotsim_template(sim, name);

	if (t)
		return t;
	t = realloc(sim->templates, (sim->n_templates + 1) * sizeof(*t));
	if (!t)
		return NULL;
	sim->templates = t;
	t = &sim->templates[sim->n_templates];
	*t = (struct sim_template){.name = strdup(name)};
	if (!t->name)
		return NULL;
	sim->n_templates++;
	return t;
}

static int load_template_doc(struct sim_template *t, const char *path)
{
	char why[512] = "";
	struct stat st;
	int r;

	if (stat(path, &st) < 0 || st.st_size > TEMPLATE_BODY_MAX) {
		iotsim_log(MOSQ_LOG_ERR, "template %s: '%s' is missing or larger than %d bytes",
		           t->name, path, TEMPLATE_BODY_MAX);
		return -EINVAL;
	}
	json_object_put(t->doc); /* a template given twice: the last one counts */
	t->doc = json_object_from_file(path);
	if (!t->doc || !json_object_is_type(t->doc, json_type_object)) {
		iotsim_log(MOSQ_LOG_ERR, "template %s: '%s' is not a JSON object", t->name, path);
		return -EINVAL;
	}
	r = tmpl_validate(t->doc, why, sizeof(why));
	if (r == -ENOSYS) {
		iotsim_log(MOSQ_LOG_WARNING, "template %s: no template engine, not validated",
		           t->name);
		return 0;
	}
	if (r < 0)
		iotsim_log(MOSQ_LOG_ERR, "template %s: %s", t->name, why);
	return r;
}

static void free_strv(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
}

static int split_claim_templates(struct iotsim *sim, const char *list)
{
	_cleanup_free_ char *copy = strdup(list);
	char *save = NULL, *name;
	size_t n = 0;

	if (!copy)
		return -ENOMEM;
	free_strv(sim->claim_templates);
	sim->claim_templates = calloc(strlen(list) / 2 + 2, sizeof(char *));
	if (!sim->claim_templates)
		return -ENOMEM;
	for (name = strtok_r(copy, ", ", &save); name; name = strtok_r(NULL, ", ", &save))
		if (!(sim->claim_templates[n++] = strdup(name)))
			return -ENOMEM;
	return 0;
}

static int set_string(char **slot, const char *value)
{
	free(*slot);
	*slot = strdup(value);
	return *slot ? 0 : -ENOMEM;
}

struct options {
	char *ca_cert, *ca_key, *claim_cert;
};

static int apply_option(struct iotsim *sim, struct options *o, const char *key, const char *value)
{
	struct sim_template *t;

	if (strcmp(key, "dir") == 0)
		return set_string(&sim->dir, value);
	if (strcmp(key, "ca_cert") == 0)
		return set_string(&o->ca_cert, value);
	if (strcmp(key, "ca_key") == 0)
		return set_string(&o->ca_key, value);
	if (strcmp(key, "claim_cert") == 0)
		return set_string(&o->claim_cert, value);
	if (strcmp(key, "faults_file") == 0)
		return set_string(&sim->faults_path, value);
	if (strcmp(key, "claim_templates") == 0)
		return split_claim_templates(sim, value);
	if (strcmp(key, "token_ttl") == 0) {
		long secs = strtol(value, NULL, 10);

		if (secs <= 0)
			return -EINVAL;
		sim->token_ttl_ms = secs * 1000;
		return 0;
	}
	if (strncmp(key, "template_", 9) == 0 || strncmp(key, "hook_", 5) == 0) {
		const char *name = strchr(key, '_') + 1;

		if (!wire_template_name_valid(name) || !(t = template_slot(sim, name)))
			return -EINVAL;
		if (key[0] == 'h')
			return set_string(&t->hook, value);
		return load_template_doc(t, value);
	}
	iotsim_log(MOSQ_LOG_WARNING, "unknown option plugin_opt_%s, ignoring", key);
	return 0;
}

static int read_small_file(const char *path, char **ret)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	_cleanup_free_ char *buf = calloc(1, FAULTS_FILE_MAX + 1);
	size_t n;

	if (!buf)
		return -ENOMEM;
	if (!f) {
		if (errno != ENOENT)
			return NEG_ERRNO();
		*ret = TAKE_PTR(buf); /* no file: no faults */
		return 0;
	}
	n = fread(buf, 1, FAULTS_FILE_MAX + 1, f);
	if (n > FAULTS_FILE_MAX)
		return -EFBIG;
	buf[n] = '\0';
	*ret = TAKE_PTR(buf);
	return 0;
}

/* The control file says which version it is with a line "# generation N". */
static long parse_generation(const char *text)
{
	const char *g = strstr(text, "# generation ");

	return g ? strtol(g + 13, NULL, 10) : 0;
}

/* Record in registry/faults.json which rules are in force, so a writer can wait for it. */
static void write_faults_state(struct iotsim *sim, long generation, const char *error)
{
	_cleanup_(json_object_putp) json_object *state = json_object_new_object();
	json_object *list = json_object_new_array();

	for (size_t i = 0; i < faults_count(sim->faults); i++)
		json_object_array_add(list, json_object_new_string(faults_spec(sim->faults, i)));
	json_object_object_add(state, "generation", json_object_new_int64(generation));
	json_object_object_add(state, "faults", list);
	json_object_object_add(state, "error", error ? json_object_new_string(error) : NULL);
	(void)util_write_json(registry_dirfd(sim->registry), "faults.json", state);
}

static int load_faults(struct iotsim *sim, bool at_start)
{
	_cleanup_free_ char *text = NULL;
	struct faults *f = NULL;
	char why[256] = "unreadable";
	long generation;
	int r;

	r = read_small_file(sim->faults_path, &text);
	if (r >= 0)
		r = faults_parse(text, &f, why, sizeof(why));
	generation = text ? parse_generation(text) : 0;
	if (r < 0) {
		iotsim_log(at_start ? MOSQ_LOG_ERR : MOSQ_LOG_WARNING, "%s: %s%s", sim->faults_path,
		           why, at_start ? "" : ", keeping the faults in force");
		write_faults_state(sim, generation, why);
		return r;
	}
	faults_free(sim->faults);
	sim->faults = f;
	sim->faults_generation = generation;
	write_faults_state(sim, generation, NULL);
	if (!at_start)
		iotsim_log(MOSQ_LOG_INFO, "fault rules now in force: %zu (generation %ld)",
		           faults_count(f), generation);
	return 0;
}

/* Remember the control file's identity; true when it differs from last time. */
static bool faults_file_changed(struct iotsim *sim)
{
	struct stat st = {0};
	long long mtime_ns;
	bool changed;

	if (stat(sim->faults_path, &st) < 0 && errno != ENOENT)
		return false;
	mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
	changed = mtime_ns != sim->faults_seen.mtime_ns ||
	          (long long)st.st_size != sim->faults_seen.size ||
	          (long long)st.st_ino != sim->faults_seen.ino;
	sim->faults_seen.mtime_ns = mtime_ns;
	sim->faults_seen.size = (long long)st.st_size;
	sim->faults_seen.ino = (long long)st.st_ino;
	return changed;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct iotsim *sim = userdata;

	return access_authenticate(sim, ed->client);
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;

	return access_check(userdata, ed->client, ed->topic, ed->access);
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;

	return api_handle_message(userdata, ed->client, ed->topic, ed->payload, ed->payloadlen);
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct iotsim *sim = userdata;
	uint64_t now = util_now_usec();
	int n;

	api_tick(sim, now);
	(void)reply_flush(sim->replies, now);
	if (now >= sim->next_faults_check_usec) {
		sim->next_faults_check_usec = now + FAULTS_CHECK_USEC;
		if (faults_file_changed(sim))
			(void)load_faults(sim, false);
	}
	if (now >= sim->next_sweep_usec) {
		sim->next_sweep_usec = now + SWEEP_USEC;
		n = registry_sweep(sim->registry, util_realtime_msec());
		if (n > 0)
			iotsim_log(
			    MOSQ_LOG_INFO,
			    "deleted %d certificate(s) whose ownership token expired before RegisterThing",
			    n);
	}
	/* Flushed here, after the requests of this loop pass and before their answers leave. */
	(void)stats_flush(sim->stats);
	return MOSQ_ERR_SUCCESS;
}

static const struct {
	int event;
	MOSQ_FUNC_generic_callback cb;
} callbacks[] = {
    {MOSQ_EVT_BASIC_AUTH, on_basic_auth},
    {MOSQ_EVT_ACL_CHECK, on_acl_check},
    {MOSQ_EVT_MESSAGE, on_message},
    {MOSQ_EVT_TICK, on_tick},
};

/* Unregister the first n callbacks. */
static void unregister_callbacks(size_t n)
{
	for (size_t i = 0; i < n; i++)
		(void)mosquitto_callback_unregister(plugin_id, callbacks[i].event, callbacks[i].cb,
		                                    NULL);
}

static struct iotsim *iotsim_free(struct iotsim *sim)
{
	if (!sim)
		return NULL;
	api_cleanup(sim);
	for (size_t i = 0; i < sim->n_templates; i++) {
		free(sim->templates[i].name);
		json_object_put(sim->templates[i].doc);
		free(sim->templates[i].hook);
	}
	free(sim->templates);
	free_strv(sim->claim_templates);
	reply_queue_free(sim->replies);
	faults_free(sim->faults);
	stats_free(sim->stats);
	registry_free(sim->registry);
	ca_free(sim->ca);
	free(sim->faults_path);
	free(sim->dir);
	free(sim);
	return NULL;
}

static int default_path(char **slot, const char *dir, const char *name)
{
	if (*slot)
		return 0;
	return asprintf(slot, "%s/%s", dir, name) < 0 ? -ENOMEM : 0;
}

static int check_templates(struct iotsim *sim)
{
	for (size_t i = 0; i < sim->n_templates; i++)
		if (!sim->templates[i].doc) {
			iotsim_log(MOSQ_LOG_ERR, "hook for template %s, which is not configured",
			           sim->templates[i].name);
			return -EINVAL;
		}
	return 0;
}

static int open_state(struct iotsim *sim, struct options *o)
{
	int r;

	if ((r = default_path(&o->ca_cert, sim->dir, "ca.pem")) < 0 ||
	    (r = default_path(&o->ca_key, sim->dir, "ca.key")) < 0 ||
	    (r = default_path(&o->claim_cert, sim->dir, "claim.crt")) < 0 ||
	    (r = default_path(&sim->faults_path, sim->dir, "faults")) < 0)
		return r;
	if ((r = ca_load(o->ca_cert, o->ca_key, &sim->ca)) < 0)
		return (void)iotsim_log(MOSQ_LOG_ERR, "cannot load the CA '%s' / '%s'", o->ca_cert,
		                        o->ca_key),
		       r;
	if ((r = ca_file_certificate_id(o->claim_cert, sim->claim_id)) < 0)
		return (void)iotsim_log(MOSQ_LOG_ERR, "cannot read the claim '%s'", o->claim_cert),
		       r;
	if ((r = registry_open(sim->dir, &sim->registry)) < 0)
		return (void)iotsim_log(MOSQ_LOG_ERR, "cannot open the registry in '%s'", sim->dir),
		       r;
	if ((r = stats_new(registry_dirfd(sim->registry), &sim->stats)) < 0 ||
	    (r = reply_queue_new(&sim->replies)) < 0)
		return r;
	(void)faults_file_changed(sim);
	return load_faults(sim, true);
}

static int configure(struct iotsim *sim, struct mosquitto_opt *options, int option_count)
{
	struct options o = {0};
	int r = 0;

	sim->token_ttl_ms = (int64_t)TOKEN_TTL_DEFAULT_SEC * 1000;
	for (int i = 0; i < option_count && r >= 0; i++) {
		r = apply_option(sim, &o, options[i].key, options[i].value);
		if (r < 0)
			iotsim_log(MOSQ_LOG_ERR, "bad option plugin_opt_%s", options[i].key);
	}
	if (r >= 0 && !sim->dir) {
		iotsim_log(MOSQ_LOG_ERR, "plugin_opt_dir is required");
		r = -EINVAL;
	}
	if (r >= 0)
		r = check_templates(sim);
	if (r >= 0)
		r = open_state(sim, &o);
	free(o.ca_cert);
	free(o.ca_key);
	free(o.claim_cert);
	return r;
}

PLUGIN_EXPORT int mosquitto_plugin_version(int supported_version_count,
                                           const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++)
		if (supported_versions[i] == MOSQ_PLUGIN_VERSION)
			return MOSQ_PLUGIN_VERSION;
	return -1;
}

PLUGIN_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                                        struct mosquitto_opt *options, int option_count)
{
	struct iotsim *sim = calloc(1, sizeof(*sim));

	if (!sim)
		return MOSQ_ERR_NOMEM;
	if (configure(sim, options, option_count) < 0) {
		iotsim_free(sim);
		return MOSQ_ERR_INVAL;
	}
	plugin_id = identifier;
	for (size_t i = 0; i < ARRAY_SIZE(callbacks); i++)
		if (mosquitto_callback_register(identifier, callbacks[i].event, callbacks[i].cb,
		                                NULL, sim) != MOSQ_ERR_SUCCESS) {
			unregister_callbacks(i);
			iotsim_free(sim);
			return MOSQ_ERR_UNKNOWN;
		}
	iotsim_log(MOSQ_LOG_INFO, "ready: %zu template(s), claim %s, token lifetime %lld s",
	           sim->n_templates, sim->claim_id, (long long)(sim->token_ttl_ms / 1000));
	*userdata = sim;
	return MOSQ_ERR_SUCCESS;
}

PLUGIN_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options,
                                           int option_count)
{
	unregister_callbacks(ARRAY_SIZE(callbacks));
	(void)stats_flush(((struct iotsim *)userdata)->stats);
	iotsim_free(userdata);
	return MOSQ_ERR_SUCCESS;
}
