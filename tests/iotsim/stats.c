/* Request counters of the simulator, written to stats.json for tests and benchmarks. */
#include <stdbool.h>
#include <stdio.h>

#include "stats.h"
#include "util.h"

struct stats {
	int dirfd;
	bool dirty;
	json_object *root;
};

static json_object *child(json_object *parent, const char *key)
{
	json_object *obj;

	if (json_object_object_get_ex(parent, key, &obj))
		return obj;
	obj = json_object_new_object();
	json_object_object_add(parent, key, obj);
	return obj;
}

static void bump(json_object *obj, const char *key)
{
	json_object *v;

	if (!obj)
		return;
	if (json_object_object_get_ex(obj, key, &v))
		json_object_int_inc(v, 1);
	else
		json_object_object_add(obj, key, json_object_new_int64(1));
}

int stats_new(int dirfd, struct stats **ret)
{
	struct stats *s = calloc(1, sizeof(*s));
	static const char *const sections[] = {"requests", "accepted",   "rejected",
	                                       "dropped",  "errorCodes", "statusCodes",
	                                       "clients",  "connections"};

	if (!s)
		return -ENOMEM;
	s->dirfd = dirfd;
	s->root = json_object_new_object();
	if (!s->root) {
		free(s);
		return -ENOMEM;
	}
	for (size_t i = 0; i < ARRAY_SIZE(sections); i++)
		child(s->root, sections[i]);
	s->dirty = true;
	*ret = s;
	return 0;
}

struct stats *stats_free(struct stats *s)
{
	if (!s)
		return NULL;
	json_object_put(s->root);
	free(s);
	return NULL;
}

void stats_request(struct stats *s, enum api_op op, const char *client_id)
{
	bump(child(s->root, "requests"), api_op_name(op));
	bump(child(child(s->root, "clients"), client_id), api_op_name(op));
	s->dirty = true;
}

void stats_response(struct stats *s, enum api_op op, const char *client_id, int status,
                    const char *error_code)
{
	const char *outcome = status == 200 ? "accepted" : "rejected";
	char code[16];

	bump(child(s->root, outcome), api_op_name(op));
	bump(child(child(s->root, "clients"), client_id), outcome);
	if (status != 200) {
		snprintf(code, sizeof(code), "%d", status);
		bump(child(s->root, "statusCodes"), code);
		bump(child(s->root, "errorCodes"), error_code);
	}
	s->dirty = true;
}

void stats_dropped(struct stats *s, enum api_op op)
{
	bump(child(s->root, "dropped"), api_op_name(op));
	s->dirty = true;
}

void stats_connection(struct stats *s, const char *what)
{
	bump(child(s->root, "connections"), what);
	s->dirty = true;
}

int stats_flush(struct stats *s)
{
	int r;

	if (!s->dirty)
		return 0;
	r = util_write_json(s->dirfd, "stats.json", s->root);
	if (r >= 0)
		s->dirty = false;
	return r;
}
