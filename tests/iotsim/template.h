/*
 * Provisioning template evaluation as AWS IoT does it for RegisterThing
 * (spec/aws-fleet-provisioning.md §2): Parameters with Default, Mappings, Ref, Fn::Join,
 * Fn::Select, Fn::Split, Fn::FindInMap, Fn::Sub (inline "${Name}"), the service-filled
 * AWS::IoT::Certificate::Id, Thing / Certificate / Policy resources with OverrideSettings,
 * and a flat DeviceConfiguration. Pure: no I/O, no globals.
 */
#pragma once

#include <json-c/json.h>
#include <stddef.h>

/*
 * Check a template document once, when the simulator loads it: top-level keys, the
 * Parameters/Mappings/Resources/DeviceConfiguration shapes, resource types and
 * OverrideSettings values. Returns 0, or -EINVAL with the reason in errbuf.
 */
int tmpl_validate(json_object *tmpl, char *errbuf, size_t errsize);

/*
 * Evaluate tmpl for one RegisterThing request.
 *   params:         the request's "parameters" object (string -> string), may be NULL
 *   certificate_id: fills AWS::IoT::Certificate::Id
 * On success *ret is a new object:
 *   {
 *     "parameters": {name: value, ...},              (after defaults)
 *     "thing": null | {"ThingName": s, "AttributePayload": {s: s}, "ThingTypeName": s|null,
 *                      "ThingGroups": [s], "BillingGroup": s|null,
 *                      "OverrideSettings": {"AttributePayload": "MERGE", ...}},
 *     "certificate": null | {"CertificateId": s, "Status": "ACTIVE"|"INACTIVE",
 *                            "OverrideSettings": {"Status": ...}},
 *     "policies": [{"PolicyName": s} | {"PolicyDocument": s}],
 *     "deviceConfiguration": {s: s}
 *   }
 * A missing required parameter, an unknown or misused function, a bad reference, an
 * out-of-range Fn::Select or a nested DeviceConfiguration is -EINVAL with an
 * AWS-style message in errbuf (the plugin sends it as a 400 rejection).
 */
int tmpl_evaluate(json_object *tmpl, json_object *params, const char *certificate_id,
                  json_object **ret, char *errbuf, size_t errsize);
