/* Minimal CBOR (RFC 8949) codec for Fleet Provisioning payloads. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cbor.h"
#include "util.h"

/* API payloads nest two levels (parameters, deviceConfiguration); deeper is an attack. */
#define CBOR_DEPTH_MAX 16

enum {
	MAJOR_UINT = 0,
	MAJOR_NEGINT = 1,
	MAJOR_BYTES = 2,
	MAJOR_TEXT = 3,
	MAJOR_ARRAY = 4,
	MAJOR_MAP = 5,
	MAJOR_TAG = 6,
	MAJOR_SIMPLE = 7,
};

struct reader {
	const uint8_t *p, *end;
};

/* The argument of a head: the value of additional info 0-27. */
static int read_argument(struct reader *r, uint8_t info, uint64_t *ret)
{
	size_t n;
	uint64_t v = 0;

	if (info < 24) {
		*ret = info;
		return 0;
	}
	if (info > 27)
		return -EINVAL; /* reserved, or an indefinite length */
	n = (size_t)1 << (info - 24);
	if ((size_t)(r->end - r->p) < n)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		v = v << 8 | *r->p++;
	*ret = v;
	return 0;
}

static int read_head(struct reader *r, uint8_t *ret_major, uint8_t *ret_info, uint64_t *ret_arg)
{
	if (r->p >= r->end)
		return -EINVAL;
	*ret_major = *r->p >> 5;
	*ret_info = *r->p++ & 0x1f;
	/* Simple values and floats keep their raw additional info. */
	if (*ret_major == MAJOR_SIMPLE && *ret_info < 24) {
		*ret_arg = *ret_info;
		return 0;
	}
	return read_argument(r, *ret_info, ret_arg);
}

/* IEEE 754 half precision (RFC 8949 appendix D). */
static double half_to_double(uint16_t h)
{
	int exp = (h >> 10) & 0x1f;
	double mant = h & 0x3ff, v;

	if (exp == 0)
		v = ldexp(mant, -24);
	else if (exp != 31)
		v = ldexp(mant + 1024, exp - 25);
	else
		v = mant == 0 ? INFINITY : NAN;
	return h & 0x8000 ? -v : v;
}

static json_object *decode_simple(uint8_t info, uint64_t arg)
{
	union {
		uint32_t u;
		float f;
	} f32;
	union {
		uint64_t u;
		double d;
	} f64;

	switch (info) {
	case 20:
	case 21:
		return json_object_new_boolean(info == 21);
	case 22:
	case 23:
		return json_object_new_null();
	case 25:
		return json_object_new_double(half_to_double((uint16_t)arg));
	case 26:
		f32.u = (uint32_t)arg;
		return json_object_new_double(f32.f);
	case 27:
		f64.u = arg;
		return json_object_new_double(f64.d);
	default:
		return NULL;
	}
}

static json_object *decode_item(struct reader *r, int depth);

static json_object *decode_text(struct reader *r, uint64_t len)
{
	if (len > (uint64_t)(r->end - r->p))
		return NULL;
	r->p += len;
	return json_object_new_string_len((const char *)r->p - len, (int)len);
}

static json_object *decode_array(struct reader *r, uint64_t n, int depth)
{
	json_object *arr = json_object_new_array();

	for (uint64_t i = 0; arr && i < n; i++) {
		json_object *v = decode_item(r, depth + 1);

		if (!v || json_object_array_add(arr, v) < 0) {
			json_object_put(v);
			json_object_put(arr);
			return NULL;
		}
	}
	return arr;
}

static json_object *decode_map(struct reader *r, uint64_t n, int depth)
{
	json_object *map = json_object_new_object();

	for (uint64_t i = 0; map && i < n; i++) {
		json_object *key = decode_item(r, depth + 1), *v = NULL;

		/* JSON objects have string keys: so do the API's CBOR maps. */
		if (key && json_object_is_type(key, json_type_string))
			v = decode_item(r, depth + 1);
		if (!v) {
			json_object_put(key);
			json_object_put(map);
			return NULL;
		}
		json_object_object_add(map, json_object_get_string(key), v);
		json_object_put(key);
	}
	return map;
}

static json_object *decode_item(struct reader *r, int depth)
{
	uint8_t major, info;
	uint64_t arg;

	if (depth > CBOR_DEPTH_MAX || read_head(r, &major, &info, &arg) < 0)
		return NULL;
	switch (major) {
	case MAJOR_UINT:
		return arg > INT64_MAX ? NULL : json_object_new_int64((int64_t)arg);
	case MAJOR_NEGINT:
		return arg > INT64_MAX ? NULL : json_object_new_int64(-1 - (int64_t)arg);
	case MAJOR_TEXT:
		return decode_text(r, arg);
	case MAJOR_ARRAY:
		return arg > (uint64_t)(r->end - r->p) ? NULL : decode_array(r, arg, depth);
	case MAJOR_MAP:
		return arg > (uint64_t)(r->end - r->p) ? NULL : decode_map(r, arg, depth);
	case MAJOR_TAG:
		return decode_item(r,
		                   depth + 1); /* e.g. the self-describe tag: the content counts */
	case MAJOR_SIMPLE:
		return decode_simple(info, arg);
	default:
		return NULL; /* byte strings have no JSON counterpart in this API */
	}
}

json_object *cbor_decode(const uint8_t *buf, size_t len)
{
	struct reader r = {buf, buf + len};
	json_object *obj = decode_item(&r, 0);

	if (obj && r.p != r.end) {
		json_object_put(obj);
		return NULL;
	}
	return obj;
}

struct writer {
	uint8_t *buf;
	size_t len, size;
	bool failed;
};

static void put(struct writer *w, const void *data, size_t n)
{
	if (w->failed)
		return;
	if (w->len + n > w->size) {
		size_t size = (w->len + n) * 2 + 64;
		uint8_t *grown = realloc(w->buf, size);

		if (!grown) {
			w->failed = true;
			return;
		}
		w->buf = grown;
		w->size = size;
	}
	memcpy(w->buf + w->len, data, n);
	w->len += n;
}

static void put_head(struct writer *w, uint8_t major, uint64_t arg)
{
	uint8_t head[9];
	size_t n;
	uint8_t info;

	if (arg < 24) {
		n = 0;
		info = (uint8_t)arg;
	} else if (arg <= UINT8_MAX) {
		n = 1;
		info = 24;
	} else if (arg <= UINT16_MAX) {
		n = 2;
		info = 25;
	} else if (arg <= UINT32_MAX) {
		n = 4;
		info = 26;
	} else {
		n = 8;
		info = 27;
	}
	head[0] = (uint8_t)(major << 5 | info);
	for (size_t i = 0; i < n; i++)
		head[1 + i] = (uint8_t)(arg >> (8 * (n - 1 - i)));
	put(w, head, 1 + n);
}

static void put_double(struct writer *w, double d)
{
	uint8_t out[9] = {0xfb}; /* major 7, additional info 27: double precision */
	uint64_t bits;

	memcpy(&bits, &d, sizeof(bits));
	for (int i = 0; i < 8; i++)
		out[1 + i] = (uint8_t)(bits >> (8 * (7 - i)));
	put(w, out, sizeof(out));
}

static void encode_item(struct writer *w, json_object *obj)
{
	switch (json_object_get_type(obj)) {
	case json_type_null:
		put(w, (uint8_t[]){0xf6}, 1);
		break;
	case json_type_boolean:
		put(w, (uint8_t[]){json_object_get_boolean(obj) ? 0xf5 : 0xf4}, 1);
		break;
	case json_type_int: {
		int64_t v = json_object_get_int64(obj);

		put_head(w, v < 0 ? MAJOR_NEGINT : MAJOR_UINT,
		         v < 0 ? (uint64_t)(-1 - v) : (uint64_t)v);
		break;
	}
	case json_type_double:
		put_double(w, json_object_get_double(obj));
		break;
	case json_type_string:
		put_head(w, MAJOR_TEXT, (uint64_t)json_object_get_string_len(obj));
		put(w, json_object_get_string(obj), (size_t)json_object_get_string_len(obj));
		break;
	case json_type_array:
		put_head(w, MAJOR_ARRAY, json_object_array_length(obj));
		for (size_t i = 0; i < json_object_array_length(obj); i++)
			encode_item(w, json_object_array_get_idx(obj, i));
		break;
	case json_type_object:
		put_head(w, MAJOR_MAP, (uint64_t)json_object_object_length(obj));
		json_object_object_foreach(obj, key, value)
		{
			put_head(w, MAJOR_TEXT, strlen(key));
			put(w, key, strlen(key));
			encode_item(w, value);
		}
		break;
	}
}

int cbor_encode(json_object *obj, uint8_t **ret, size_t *ret_len)
{
	struct writer w = {0};

	encode_item(&w, obj);
	if (w.failed || !w.buf) {
		free(w.buf);
		return -ENOMEM;
	}
	*ret = w.buf;
	*ret_len = w.len;
	return 0;
}
