/*
 * The CBOR variant of the API's payloads (spec §1.1): maps with text-string keys, text
 * strings, integers, booleans, null, floats and arrays, converted to and from the JSON
 * values the handlers work with. Definite lengths only, as AWS's SDK encoders write them.
 */
#pragma once

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

/* One CBOR data item filling exactly len bytes, as a new JSON value; NULL if invalid. */
json_object *cbor_decode(const uint8_t *buf, size_t len);

/* obj as CBOR in a heap buffer. */
int cbor_encode(json_object *obj, uint8_t **ret, size_t *ret_len);
