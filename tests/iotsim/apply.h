/*
 * The resources step of RegisterThing: apply an evaluated provisioning template (the
 * result of tmpl_evaluate in template.h) to the registry for one certificate. The thing is
 * created, or updated as its OverrideSettings say (DO_NOTHING when unspecified; FAIL
 * conflicts only when a value would change, so a repeated registration with the same token
 * stays harmless); the certificate gets the template's status (ACTIVE by default) and is
 * attached to the thing and the policies.
 */
#pragma once

#include <json-c/json.h>

#include "registry.h"
#include "wire.h"

/*
 * Everything is checked before anything changes. On success *ret_response is the
 * RegisterThing accepted payload {"thingName", "deviceConfiguration"}; on failure a
 * negative errno with e filled (400 for bad values, 409 ResourceConflictsException).
 */
int apply_registration(struct registry *reg, json_object *eval, const char *cert_id,
                       const char *template_name, json_object **ret_response, struct wire_error *e);
