/* Applies an evaluated provisioning template to the registry. */
#include <openssl/evp.h>
#include <string.h>

#include "apply.h"
#include "util.h"

/* Thing names: 1-128 characters of [a-zA-Z0-9:_-] (AWS IoT CreateThing). */
#define THING_NAME_MAX   128
#define THING_NAME_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-"
/* Policy names: 1-128 characters of [\w+=,.@-] (AWS IoT CreatePolicy). */
#define POLICY_NAME_MAX   128
#define POLICY_NAME_CHARS THING_NAME_CHARS "+=,.@"

struct thing_property {
	const char *template_key; /* as in the template and its OverrideSettings */
	const char *record_key;   /* as in the registry record */
};

static const struct thing_property thing_properties[] = {
    {"AttributePayload", "attributes"},
    {"ThingTypeName", "thingTypeName"},
    {"ThingGroups", "thingGroups"},
    {"BillingGroup", "billingGroup"},
};

static bool name_valid(const char *name, size_t max, const char *chars)
{
	size_t n = name ? strlen(name) : 0;

	return n > 0 && n <= max && strspn(name, chars) == n;
}

static json_object *get(json_object *obj, const char *key)
{
	json_object *v;

	return obj && json_object_object_get_ex(obj, key, &v) ? v : NULL;
}

static void stamp(json_object *rec, const char *key)
{
	char now[UTIL_TIME_LEN];

	util_format_time(util_realtime_msec(), now, sizeof(now));
	json_object_object_add(rec, key, json_object_new_string(now));
}

static json_object *new_thing(const char *name, const char *template_name)
{
	json_object *rec = json_object_new_object();

	json_object_object_add(rec, "thingName", json_object_new_string(name));
	json_object_object_add(rec, "attributes", json_object_new_object());
	json_object_object_add(rec, "thingTypeName", NULL);
	json_object_object_add(rec, "thingGroups", json_object_new_array());
	json_object_object_add(rec, "billingGroup", NULL);
	json_object_object_add(rec, "principals", json_object_new_array());
	json_object_object_add(rec, "templateName", json_object_new_string(template_name));
	json_object_object_add(rec, "version", json_object_new_int(0));
	stamp(rec, "createdAt");
	return rec;
}

/* MERGE: union of objects (new values win) or of arrays; anything else is replaced. */
static json_object *merged(json_object *cur, json_object *val)
{
	json_object *out = NULL;

	if (json_object_is_type(cur, json_type_object) &&
	    json_object_is_type(val, json_type_object)) {
		json_object_deep_copy(cur, &out, NULL);
		json_object_object_foreach(val, k, v)
		{
			json_object_object_add(out, k, json_object_get(v));
		}
		return out;
	}
	if (json_object_is_type(cur, json_type_array) &&
	    json_object_is_type(val, json_type_array)) {
		json_object_deep_copy(cur, &out, NULL);
		for (size_t i = 0; i < json_object_array_length(val); i++)
			util_json_array_add_unique(
			    out, json_object_get_string(json_object_array_get_idx(val, i)));
		return out;
	}
	return json_object_get(val);
}

/* Set one property of rec (a fresh thing or a copy of the existing one). */
static int update_property(json_object *rec, json_object *spec, bool exists,
                           const struct thing_property *p, bool *changed, struct wire_error *e)
{
	json_object *val = get(spec, p->template_key), *cur = get(rec, p->record_key);
	const char *setting = util_json_get_string(get(spec, "OverrideSettings"), p->template_key);

	if (!val || json_object_equal(cur, val))
		return 0;
	if (!exists || util_streq_ci(setting, "REPLACE")) {
		json_object_object_add(rec, p->record_key, json_object_get(val));
	} else if (util_streq_ci(setting, "MERGE")) {
		json_object *m = merged(cur, val);

		if (json_object_equal(cur, m)) {
			json_object_put(m);
			return 0;
		}
		json_object_object_add(rec, p->record_key, m);
	} else if (util_streq_ci(setting, "FAIL")) {
		wire_error_set(
		    e, 409, ERR_CONFLICT,
		    "Thing %s already exists with a different %s (OverrideSettings: FAIL)",
		    json_object_get_string(get(rec, "thingName")), p->template_key);
		return -EEXIST;
	} else {
		return 0; /* DO_NOTHING, also when unspecified */
	}
	*changed = true;
	return 0;
}

/* The thing record as it will be after this registration, in *ret (NULL: no thing). */
static int plan_thing(struct registry *reg, json_object *spec, const char *cert_id,
                      const char *template_name, json_object **ret, struct wire_error *e)
{
	const char *name = util_json_get_string(spec, "ThingName");
	json_object *existing, *rec = NULL;
	bool changed = false;
	int r = 0;

	*ret = NULL;
	if (!spec || json_object_is_type(spec, json_type_null))
		return 0;
	if (!name_valid(name, THING_NAME_MAX, THING_NAME_CHARS)) {
		wire_error_set(e, 400, ERR_INVALID_REQUEST, "Invalid thing name '%s'",
		               str_or(name, ""));
		return -EINVAL;
	}
	existing = registry_get(reg, REGISTRY_THINGS, name);
	if (existing)
		json_object_deep_copy(existing, &rec, NULL);
	else
		rec = new_thing(name, template_name);
	for (size_t i = 0; i < ARRAY_SIZE(thing_properties) && r >= 0; i++)
		r = update_property(rec, spec, existing != NULL, &thing_properties[i], &changed, e);
	if (r >= 0 && util_json_array_add_unique(get(rec, "principals"), cert_id) > 0)
		changed = true;
	if (r < 0) {
		json_object_put(rec);
		return r;
	}
	if (changed || !existing) {
		json_object_int_inc(get(rec, "version"), 1);
		stamp(rec, "updatedAt");
	}
	*ret = rec;
	return 0;
}

/* The status the certificate will have, in *ret_status (a static string). */
static int plan_certificate(json_object *cert, json_object *spec, const char *cert_id,
                            const char **ret_status, struct wire_error *e)
{
	const char *cur = str_or(util_json_get_string(cert, "status"), CERT_STATUS_PENDING);
	const char *want = util_json_get_string(spec, "Status");
	const char *setting = util_json_get_string(get(spec, "OverrideSettings"), "Status");
	const char *id = util_json_get_string(spec, "CertificateId");

	*ret_status = cur;
	if (!spec || json_object_is_type(spec, json_type_null))
		return 0;
	if (id && strcmp(id, cert_id) != 0) {
		wire_error_set(
		    e, 400, ERR_INVALID_REQUEST,
		    "The template's certificate %s is not the certificate of the ownership token",
		    id);
		return -EINVAL;
	}
	if (!want || util_streq_ci(want, CERT_STATUS_ACTIVE))
		want = CERT_STATUS_ACTIVE;
	else if (util_streq_ci(want, CERT_STATUS_INACTIVE))
		want = CERT_STATUS_INACTIVE;
	else {
		wire_error_set(e, 400, ERR_INVALID_REQUEST, "Invalid certificate status '%s'",
		               want);
		return -EINVAL;
	}
	if (strcmp(cur, CERT_STATUS_PENDING) == 0 || util_streq_ci(setting, "REPLACE"))
		*ret_status = want;
	else if (util_streq_ci(setting, "FAIL") && strcmp(cur, want) != 0) {
		wire_error_set(e, 409, ERR_CONFLICT,
		               "Certificate %s is already %s (OverrideSettings: FAIL)", cert_id,
		               cur);
		return -EEXIST;
	}
	return 0;
}

/* The name a policy goes by: PolicyName, or the SHA-256 of PolicyDocument (spec §2.4). */
static int policy_name(json_object *policy, char name[POLICY_NAME_MAX + 1], struct wire_error *e)
{
	const char *given = util_json_get_string(policy, "PolicyName");
	const char *doc = util_json_get_string(policy, "PolicyDocument");
	unsigned char md[32];

	if (given && name_valid(given, POLICY_NAME_MAX, POLICY_NAME_CHARS)) {
		snprintf(name, POLICY_NAME_MAX + 1, "%s", given);
		return 0;
	}
	if (!given && doc) {
		EVP_Digest(doc, strlen(doc), md, NULL, EVP_sha256(), NULL);
		util_hex(md, sizeof(md), name);
		return 0;
	}
	wire_error_set(e, 400, ERR_INVALID_REQUEST, "Invalid policy name '%s'", str_or(given, ""));
	return -EINVAL;
}

static int check_policies(json_object *policies, struct wire_error *e)
{
	char name[POLICY_NAME_MAX + 1];

	for (size_t i = 0; policies && i < json_object_array_length(policies); i++) {
		int r = policy_name(json_object_array_get_idx(policies, i), name, e);

		if (r < 0)
			return r;
	}
	return 0;
}

static void attach_policies(struct registry *reg, json_object *policies, json_object *cert,
                            const char *cert_id)
{
	char name[POLICY_NAME_MAX + 1];
	struct wire_error ignored;

	for (size_t i = 0; policies && i < json_object_array_length(policies); i++) {
		json_object *p = json_object_array_get_idx(policies, i), *rec;

		if (policy_name(p, name, &ignored) < 0)
			continue;
		rec = registry_get(reg, REGISTRY_POLICIES, name);
		if (!rec) {
			rec = json_object_new_object();
			json_object_object_add(rec, "policyName", json_object_new_string(name));
			json_object_object_add(rec, "policyDocument",
			                       json_object_get(get(p, "PolicyDocument")));
			json_object_object_add(rec, "targets", json_object_new_array());
			registry_put(reg, REGISTRY_POLICIES, name, rec);
		}
		util_json_array_add_unique(get(rec, "targets"), cert_id);
		registry_save(reg, REGISTRY_POLICIES, name);
		util_json_array_add_unique(get(cert, "policies"), name);
	}
}

static json_object *accepted_payload(json_object *thing, json_object *eval)
{
	json_object *body = json_object_new_object();
	json_object *config = get(eval, "deviceConfiguration");

	if (thing)
		json_object_object_add(body, "thingName", json_object_get(get(thing, "thingName")));
	json_object_object_add(body, "deviceConfiguration",
	                       config ? json_object_get(config) : json_object_new_object());
	return body;
}

int apply_registration(struct registry *reg, json_object *eval, const char *cert_id,
                       const char *template_name, json_object **ret_response, struct wire_error *e)
{
	json_object *cert = registry_get(reg, REGISTRY_CERTIFICATES, cert_id);
	json_object *thing = NULL, *policies = get(eval, "policies");
	const char *status;
	int r;

	if (!cert) {
		wire_error_set(e, 400, ERR_INVALID_TOKEN,
		               "Certificate ownership token is invalid.");
		return -ENOENT;
	}
	r = plan_certificate(cert, get(eval, "certificate"), cert_id, &status, e);
	if (r >= 0)
		r = check_policies(policies, e);
	if (r >= 0)
		r = plan_thing(reg, get(eval, "thing"), cert_id, template_name, &thing, e);
	if (r < 0)
		return r;
	/* All checks passed: now change the registry. */
	*ret_response = accepted_payload(thing, eval);
	if (thing) {
		util_json_array_add_unique(get(cert, "things"),
		                           json_object_get_string(get(thing, "thingName")));
		registry_put(reg, REGISTRY_THINGS, json_object_get_string(get(thing, "thingName")),
		             thing);
	}
	json_object_object_add(cert, "status", json_object_new_string(status));
	json_object_object_add(cert, "templateName", json_object_new_string(template_name));
	json_object_int_inc(get(cert, "registrations"), 1);
	stamp(cert, "registeredAt");
	attach_policies(reg, policies, cert, cert_id);
	return registry_save(reg, REGISTRY_CERTIFICATES, cert_id);
}
