/*
 * fleetprovd: parse the command line, load the configuration, then either take the boot
 * fast path (credentials already valid: READY, exit) or run the provisioning state machine
 * on sd-event. main is a script (style.md rule 15); only main exits.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "build-config.h"
#include "check.h"
#include "config.h"
#include "credentials.h"
#include "log.h"
#include "message-ids.h"
#include "mqtt.h"
#include "notify.h"
#include "params.h"
#include "protocol.h"
#include "provision.h"
#include "status.h"
#include "store.h"

/* Exit codes (documented in --help and fleetprovd(8)). */
#define EXIT_USAGE  2
#define EXIT_CONFIG 78 /* EX_CONFIG: the unit has RestartPreventExitStatus=78 */

enum command {
	COMMAND_RUN,
	COMMAND_CHECK,
	COMMAND_STATUS,
	_COMMAND_MAX,
};

static const char *const command_names[_COMMAND_MAX] = {
    [COMMAND_RUN] = "run",
    [COMMAND_CHECK] = "check",
    [COMMAND_STATUS] = "status",
};

static const char *arg_config_path = DEFAULT_CONFIG_PATH;
static const char *arg_state_dir;
static int arg_log_level = -1;
static bool arg_check_config;
static bool arg_json;
static enum command arg_command = COMMAND_RUN;

static const struct log_fields config_error_fields = {.message_id = MESSAGE_ID_CONFIG_ERROR};

static void help(void)
{
	printf("Usage: %s [OPTIONS] [run|check|status]\n"
	       "\n"
	       "Provision this gateway as an AWS IoT thing (Fleet Provisioning by claim).\n"
	       "\n"
	       "Commands:\n"
	       "  run                  Provision unless already provisioned (default)\n"
	       "  check                Run preflight diagnostics\n"
	       "  status               Show the identity and any pending attempt\n"
	       "\n"
	       "Options:\n"
	       "  -c, --config PATH    Configuration file (default: %s)\n"
	       "  -s, --state-dir DIR  State directory (overrides state_dir)\n"
	       "  -l, --log-level LVL  err, warning, notice, info or debug (overrides log_level)\n"
	       "      --check-config   Validate the configuration and exit\n"
	       "      --json           JSON output for check and status\n"
	       "  -h, --help           Show this help\n"
	       "  -V, --version        Show the version\n"
	       "\n"
	       "Exit codes:\n"
	       "  0   ready (provisioned now or before), or stopped by SIGTERM/SIGINT\n"
	       "  1   failure (gave up after retry.max_attempts, a check failed)\n"
	       "  2   usage error\n"
	       "  78  configuration error (EX_CONFIG)\n",
	       program_invocation_short_name, DEFAULT_CONFIG_PATH);
}

static int parse_command(const char *name)
{
	for (int i = 0; i < _COMMAND_MAX; i++)
		if (strcmp(name, command_names[i]) == 0)
			return i;
	return -EINVAL;
}

/* Returns 1 to go on, 0 to exit successfully (help, version), -EINVAL on a usage error. */
static int parse_argv(int argc, char *argv[])
{
	enum { ARG_CHECK_CONFIG = 0x100, ARG_JSON };
	static const struct option options[] = {
	    {"check-config", no_argument, NULL, ARG_CHECK_CONFIG},
	    {"config", required_argument, NULL, 'c'},
	    {"help", no_argument, NULL, 'h'},
	    {"json", no_argument, NULL, ARG_JSON},
	    {"log-level", required_argument, NULL, 'l'},
	    {"state-dir", required_argument, NULL, 's'},
	    {"version", no_argument, NULL, 'V'},
	    {0},
	};
	int c, r;

	while ((c = getopt_long(argc, argv, "c:hl:s:V", options, NULL)) >= 0) {
		switch (c) {
		case 'c':
			arg_config_path = optarg;
			break;
		case 'h':
			help();
			return 0;
		case 'l':
			arg_log_level = log_level_from_string(optarg);
			if (arg_log_level < 0) {
				fprintf(stderr, "Unknown log level '%s'.\n", optarg);
				return -EINVAL;
			}
			break;
		case 's':
			arg_state_dir = optarg;
			break;
		case 'V':
			printf("fleetprovd %s\n", PACKAGE_VERSION);
			return 0;
		case ARG_CHECK_CONFIG:
			arg_check_config = true;
			break;
		case ARG_JSON:
			arg_json = true;
			break;
		default:
			return -EINVAL;
		}
	}
	if (optind < argc) {
		r = parse_command(argv[optind]);
		if (r < 0 || optind + 1 < argc) {
			fprintf(stderr, "Unknown command '%s'; see --help.\n", argv[optind]);
			return -EINVAL;
		}
		arg_command = (enum command)r;
	}
	return 1;
}

static int load_config(struct config **ret)
{
	struct config_error err = {0};
	char line[sizeof(err) + 16];
	int r;

	r = config_load(arg_config_path, ret, &err);
	if (r < 0) {
		config_error_format(&err, line, sizeof(line));
		log_internal(LOG_ERR, r, &config_error_fields, "%s", line);
		return r;
	}
	return 0;
}

/* --check-config: the file parses and validates, nothing else is touched. */
static int run_check_config(void)
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	struct config_error err = {0};
	char line[sizeof(err) + 16];

	if (config_load(arg_config_path, &cfg, &err) < 0) {
		config_error_format(&err, line, sizeof(line));
		fprintf(stderr, "%s\n", line);
		return EXIT_CONFIG;
	}
	printf("configuration OK\n");
	return EXIT_SUCCESS;
}

static const char *state_dir(const struct config *cfg)
{
	return arg_state_dir ? arg_state_dir : cfg->state_dir;
}

static int64_t trusted_now_sec(void)
{
	time_t now = time(NULL);

	/* Before the build time the clock is unset: do not judge expiry by it. */
	return now < (time_t)BUILD_EPOCH ? 0 : (int64_t)now;
}

/* What the boot fast path found out. */
enum boot_need {
	BOOT_READY,     /* the identity is usable: READY=1 was sent */
	BOOT_PROVISION, /* nothing usable: provision */
	BOOT_VERIFY,    /* committed but not yet proven with verify = true: connect with it */
};

static void announce_ready(const struct cred_info *info)
{
	struct log_fields f = {.message_id = MESSAGE_ID_ALREADY_PROVISIONED};
	char status[PROTO_THING_NAME_MAX + 64];

	f.thing_name = info->thing_name;
	log_internal(LOG_INFO, 0, &f, "Already provisioned as thing '%s' (certificate %s)",
	             info->thing_name ? info->thing_name : "", info->certificate_id);
	snprintf(status, sizeof(status), "Provisioned as thing %s",
	         info->thing_name ? info->thing_name : "");
	(void)notify_ready(status);
}

/*
 * The boot fast path: a committed, valid identity means READY at once. It must stay cheap:
 * no parameters, no OpenSSL, no MQTT, no event loop (the already-provisioned boot budget).
 * An identity never proven by a connection is enough only when the configuration asks for
 * no proof (verify = false). Returns an enum boot_need; ret_info is for BOOT_VERIFY.
 */
static int fast_path(const struct config *cfg, struct store *store, struct cred_info *ret_info)
{
	_cleanup_(cred_info_clear) struct cred_info info = {0};
	enum cred_state state;
	int r;

	r = cred_check(store_dirfd(store), trusted_now_sec(), &state, &info);
	if (r < 0)
		return log_error_errno(r, "Failed to check the credentials in '%s': %s",
		                       store_path(store), ERRNO_STR(r));
	if (state == CRED_MISSING)
		return BOOT_PROVISION;
	if (state == CRED_UNVERIFIED && cfg->verify) {
		log_notice("The identity in '%s/%s' (thing '%s') was saved but never verified, "
		           "verifying it now",
		           store_path(store), STORE_CURRENT_LINK, info.thing_name);
		*ret_info = info;
		info = (struct cred_info){0};
		return BOOT_VERIFY;
	}
	if (state != CRED_VALID && state != CRED_UNVERIFIED) {
		log_notice("The identity in '%s/%s' is not usable (%s), provisioning again",
		           store_path(store), STORE_CURRENT_LINK,
		           info.reason ? info.reason : cred_state_to_string(state));
		return BOOT_PROVISION;
	}
	announce_ready(&info);
	return BOOT_READY;
}

/* The CSR subject default "CN=<client id>", escaped for keygen's RFC 4514-like syntax. */
static int default_subject(const char *client_id, char **ret)
{
	size_t n = strlen(client_id);
	char *s = malloc(3 + 2 * n + 1), *q;

	if (!s)
		return -ENOMEM;
	q = stpcpy(s, "CN=");
	for (const char *c = client_id; *c; c++) {
		if (*c == ',' || *c == '\\')
			*q++ = '\\';
		*q++ = *c;
	}
	*q = '\0';
	*ret = s;
	return 0;
}

/* client_id (default: the machine id) and the CSR subject, with ${Name} expanded. */
static int expand_identity(const struct config *cfg, const struct param_list *params,
                           char **ret_client_id, char **ret_subject)
{
	const struct config_param machine_id = {.name = (char *)"machine_id",
	                                        .source = PARAM_SOURCE_MACHINE_ID};
	_cleanup_free_ char *client_id = NULL, *subject = NULL;
	char err[512];
	int r;

	if (cfg->client_id)
		r = params_expand(cfg->client_id, params, &client_id, err, sizeof(err));
	else
		r = params_resolve_one(&machine_id, &client_id, err, sizeof(err));
	if (r < 0)
		return log_internal(LOG_ERR, r, &config_error_fields, "client_id: %s", err);
	if (!proto_client_id_valid(client_id))
		return log_internal(LOG_ERR, -EINVAL, &config_error_fields,
		                    "client_id: '%s' is not a valid MQTT client id "
		                    "(1-128 characters, not starting with '$')",
		                    client_id);
	if (cfg->csr_subject)
		r = params_expand(cfg->csr_subject, params, &subject, err, sizeof(err));
	else
		r = default_subject(client_id, &subject);
	if (r < 0)
		return log_internal(LOG_ERR, r, &config_error_fields, "key.subject: %s",
		                    r == -ENOMEM ? ERRNO_STR(r) : err);
	*ret_client_id = TAKE_PTR(client_id);
	*ret_subject = TAKE_PTR(subject);
	return 0;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
	struct prov *p = userdata;

	(void)notify_stopping();
	log_info("Received %s", strsignal((int)si->ssi_signo));
	prov_cancel(p);
	return 0;
}

static int add_signals(sd_event *event, struct prov *p)
{
	sigset_t mask;
	int r;

	/* sd-event needs the signals blocked before it can take them through a signalfd. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		return NEG_ERRNO();
	r = sd_event_add_signal(event, NULL, SIGTERM, on_signal, p);
	if (r >= 0)
		r = sd_event_add_signal(event, NULL, SIGINT, on_signal, p);
	return r;
}

struct run_result {
	sd_event *event;
	enum prov_result result;
};

static void on_done(enum prov_result result, void *userdata)
{
	struct run_result *rr = userdata;

	rr->result = result;
	(void)sd_event_exit(rr->event, 0);
}

static struct prov_settings make_settings(const struct config *cfg, const struct param_list *params,
                                          const char *client_id, const char *subject)
{
	return (struct prov_settings){
	    .config = cfg,
	    .params = params,
	    .client_id = client_id,
	    .csr_subject = subject,
	    .connect_timeout_usec = cfg->connect_timeout_sec * USEC_PER_SEC,
	    .response_timeout_usec = cfg->response_timeout_sec * USEC_PER_SEC,
	    .retry_base_usec = cfg->retry_base_sec * USEC_PER_SEC,
	    .retry_cap_usec = cfg->retry_cap_sec * USEC_PER_SEC,
	    .retry_permanent_usec = cfg->retry_permanent_sec * USEC_PER_SEC,
	    .retry_throttle_usec = cfg->retry_throttle_sec * USEC_PER_SEC,
	    .token_max_age_usec = cfg->token_max_age_sec * USEC_PER_SEC,
	    .max_attempts = cfg->max_attempts,
	    .clock_floor_sec = BUILD_EPOCH,
	};
}

static int exit_code(enum prov_result result)
{
	switch (result) {
	case PROV_RESULT_READY:
	case PROV_RESULT_CANCELLED:
		return EXIT_SUCCESS;
	case PROV_RESULT_CONFIG:
		return EXIT_CONFIG;
	default:
		return EXIT_FAILURE;
	}
}

/* Start from scratch (or pending/), or only verify the committed identity in verify_only. */
static int start(struct prov *prov, const struct cred_info *verify_only)
{
	if (verify_only)
		return prov_start_verify(prov, verify_only->thing_name,
		                         verify_only->certificate_id);
	return prov_start(prov);
}

/* The event loop part of run: provision, then map the result to an exit code. */
static int provision(struct store *store, const struct prov_settings *settings,
                     const struct cred_info *verify_only)
{
	_cleanup_(sd_event_unrefp) sd_event *event = NULL;
	_cleanup_(mqtt_freep) struct mqtt *mqtt = NULL;
	_cleanup_(prov_freep) struct prov *prov = NULL;
	struct run_result rr = {.result = PROV_RESULT_GAVE_UP};
	int r;

	r = sd_event_default(&event);
	if (r < 0) {
		log_error_errno(r, "Failed to create the event loop: %s", ERRNO_STR(r));
		return EXIT_FAILURE;
	}
	rr.event = event;
	r = mqtt_new(event, &mqtt);
	if (r < 0) {
		log_error_errno(r, "Failed to set up MQTT: %s", ERRNO_STR(r));
		return EXIT_FAILURE;
	}
	r = prov_new(event, settings, store, mqtt_transport(mqtt), on_done, &rr, &prov);
	if (r < 0) {
		log_error_errno(r, "Failed to set up provisioning: %s", ERRNO_STR(r));
		return EXIT_FAILURE;
	}
	r = add_signals(event, prov);
	if (r >= 0)
		r = start(prov, verify_only);
	if (r >= 0)
		r = sd_event_loop(event);
	if (r < 0) {
		log_error_errno(r, "Event loop failed: %s", ERRNO_STR(r));
		return EXIT_FAILURE;
	}
	return exit_code(rr.result);
}

static int run(const struct config *cfg)
{
	_cleanup_(cred_info_clear) struct cred_info verify_only = {0};
	_cleanup_(store_freep) struct store *store = NULL;
	_cleanup_(param_list_clear) struct param_list params = {0};
	_cleanup_free_ char *client_id = NULL, *subject = NULL;
	struct prov_settings settings;
	char err[512];
	int need, r;

	r = store_open(state_dir(cfg), &store);
	if (r < 0) {
		log_error_errno(r, "Failed to open the state directory '%s': %s", state_dir(cfg),
		                ERRNO_STR(r));
		return EXIT_FAILURE;
	}
	need = fast_path(cfg, store, &verify_only);
	if (need < 0)
		return EXIT_FAILURE;
	if (need == BOOT_READY)
		return EXIT_SUCCESS;
	if (need == BOOT_VERIFY) {
		/* The thing name is the client id; no parameter source needs to work for that. */
		settings = make_settings(cfg, &params, verify_only.thing_name, NULL);
		return provision(store, &settings, &verify_only);
	}

	r = params_resolve(cfg, &params, err, sizeof(err));
	if (r < 0) {
		log_internal(LOG_ERR, r, &config_error_fields, "template.parameters: %s", err);
		return EXIT_CONFIG;
	}
	r = expand_identity(cfg, &params, &client_id, &subject);
	if (r < 0)
		return r == -ENOMEM ? EXIT_FAILURE : EXIT_CONFIG;
	settings = make_settings(cfg, &params, client_id, subject);
	return provision(store, &settings, NULL);
}

static int command_run(const struct config *cfg)
{
	return run(cfg);
}

static int command_check(const struct config *cfg)
{
	return check_run(cfg, arg_json, stdout);
}

static int command_status(const struct config *cfg)
{
	return status_run(state_dir(cfg), arg_json, stdout);
}

static int (*const commands[_COMMAND_MAX])(const struct config *cfg) = {
    [COMMAND_RUN] = command_run,
    [COMMAND_CHECK] = command_check,
    [COMMAND_STATUS] = command_status,
};

int main(int argc, char *argv[])
{
	_cleanup_(config_freep) struct config *cfg = NULL;
	int r;

	r = parse_argv(argc, argv);
	if (r <= 0)
		return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;
	if (arg_check_config)
		return run_check_config();

	log_init();
	if (arg_log_level >= 0)
		log_set_max_level(arg_log_level);
	r = load_config(&cfg);
	if (r < 0)
		return r == -ENOMEM ? EXIT_FAILURE : EXIT_CONFIG;
	if (arg_log_level < 0)
		log_set_max_level(cfg->log_level);
	return commands[arg_command](cfg);
}
