/* The simulated account's things, certificates and policies, mirrored to JSON files. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry.h"
#include "util.h"

#define SHA256_HEX_LEN 64

static const char *const kind_dirs[_REGISTRY_KIND_MAX] = {
    [REGISTRY_THINGS] = "things",
    [REGISTRY_CERTIFICATES] = "certificates",
    [REGISTRY_POLICIES] = "policies",
};

struct registry {
	int dirfd;
	int kind_fds[_REGISTRY_KIND_MAX];
	json_object *records[_REGISTRY_KIND_MAX]; /* key -> record */
	json_object *tokens;                      /* token SHA-256 hex -> certificate id */
};

static void token_hash(const char *token, char out[SHA256_HEX_LEN + 1])
{
	unsigned char md[32];

	EVP_Digest(token, strlen(token), md, NULL, EVP_sha256(), NULL);
	util_hex(md, sizeof(md), out);
}

static int open_subdir(int dirfd, const char *name)
{
	int fd;

	if (mkdirat(dirfd, name, 0755) < 0 && errno != EEXIST)
		return NEG_ERRNO();
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? NEG_ERRNO() : fd;
}

static json_object *read_record(int dirfd, const char *name)
{
	_cleanup_close_ int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return NULL;
	return json_object_from_fd(fd);
}

/* Load every <key>.json of one kind; files that do not parse are skipped. */
static int load_kind(struct registry *r, enum registry_kind kind)
{
	int fd = dup(r->kind_fds[kind]);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return NEG_ERRNO();
	}
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		json_object *rec;
		char key[NAME_MAX + 1];

		if (de->d_name[0] == '.' || n <= 5 || strcmp(de->d_name + n - 5, ".json") != 0)
			continue;
		rec = read_record(r->kind_fds[kind], de->d_name);
		if (!rec)
			continue;
		snprintf(key, sizeof(key), "%.*s", (int)(n - 5), de->d_name);
		json_object_object_add(r->records[kind], key, rec);
	}
	closedir(d);
	return 0;
}

static void index_tokens(struct registry *r)
{
	json_object_object_foreach(r->records[REGISTRY_CERTIFICATES], id, rec)
	{
		const char *hash = util_json_get_string(rec, "ownershipTokenSha256");

		if (hash)
			json_object_object_add(r->tokens, hash, json_object_new_string(id));
	}
}

static int registry_init(struct registry *r, const char *dir)
{
	_cleanup_close_ int top = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int fd;

	if (top < 0)
		return NEG_ERRNO();
	r->dirfd = open_subdir(top, "registry");
	if (r->dirfd < 0)
		return r->dirfd;
	r->tokens = json_object_new_object();
	if (!r->tokens)
		return -ENOMEM;
	for (int k = 0; k < _REGISTRY_KIND_MAX; k++) {
		fd = open_subdir(r->dirfd, kind_dirs[k]);
		if (fd < 0)
			return fd;
		r->kind_fds[k] = fd;
		r->records[k] = json_object_new_object();
		if (!r->records[k])
			return -ENOMEM;
		fd = load_kind(r, (enum registry_kind)k);
		if (fd < 0)
			return fd;
	}
	index_tokens(r);
	return 0;
}

int registry_open(const char *dir, struct registry **ret)
{
	struct registry *r = calloc(1, sizeof(*r));
	int rc;

	if (!r)
		return -ENOMEM;
	r->dirfd = -1;
	for (int k = 0; k < _REGISTRY_KIND_MAX; k++)
		r->kind_fds[k] = -1;
	rc = registry_init(r, dir);
	if (rc < 0) {
		registry_free(r);
		return rc;
	}
	*ret = r;
	return 0;
}

struct registry *registry_free(struct registry *r)
{
	if (!r)
		return NULL;
	for (int k = 0; k < _REGISTRY_KIND_MAX; k++) {
		closep(&r->kind_fds[k]);
		json_object_put(r->records[k]);
	}
	closep(&r->dirfd);
	json_object_put(r->tokens);
	free(r);
	return NULL;
}

int registry_dirfd(struct registry *r)
{
	return r->dirfd;
}

json_object *registry_get(struct registry *r, enum registry_kind kind, const char *key)
{
	json_object *rec;

	return json_object_object_get_ex(r->records[kind], key, &rec) ? rec : NULL;
}

static int record_file_name(const char *key, char *buf, size_t size)
{
	/* Keys are validated by the caller; this guards the file name itself. */
	if (key[0] == '\0' || key[0] == '.' || strchr(key, '/'))
		return -EINVAL;
	if ((size_t)snprintf(buf, size, "%s.json", key) >= size)
		return -ENAMETOOLONG;
	return 0;
}

int registry_save(struct registry *r, enum registry_kind kind, const char *key)
{
	json_object *rec = registry_get(r, kind, key);
	char name[NAME_MAX + 1];
	int rc;

	if (!rec)
		return -ENOENT;
	rc = record_file_name(key, name, sizeof(name));
	if (rc < 0)
		return rc;
	return util_write_json(r->kind_fds[kind], name, rec);
}

int registry_put(struct registry *r, enum registry_kind kind, const char *key, json_object *rec)
{
	char name[NAME_MAX + 1];
	int rc = record_file_name(key, name, sizeof(name));

	if (rc < 0) {
		json_object_put(rec);
		return rc;
	}
	if (json_object_object_add(r->records[kind], key, rec) < 0)
		return -ENOMEM;
	return util_write_json(r->kind_fds[kind], name, rec);
}

static json_object *new_certificate_record(const char *id, const char *pem, const char *hash,
                                           int64_t token_expires_ms, const char *client_id,
                                           const char *api)
{
	json_object *rec = json_object_new_object();
	char created[UTIL_TIME_LEN], expires[UTIL_TIME_LEN];

	if (!rec)
		return NULL;
	util_format_time(util_realtime_msec(), created, sizeof(created));
	util_format_time(token_expires_ms, expires, sizeof(expires));
	json_object_object_add(rec, "certificateId", json_object_new_string(id));
	json_object_object_add(rec, "status", json_object_new_string(CERT_STATUS_PENDING));
	json_object_object_add(rec, "things", json_object_new_array());
	json_object_object_add(rec, "policies", json_object_new_array());
	json_object_object_add(rec, "createdAt", json_object_new_string(created));
	json_object_object_add(rec, "createdBy", json_object_new_string(api));
	json_object_object_add(rec, "clientId", json_object_new_string(client_id));
	json_object_object_add(rec, "ownershipTokenSha256", json_object_new_string(hash));
	json_object_object_add(rec, "ownershipTokenExpiresAt", json_object_new_string(expires));
	json_object_object_add(rec, "ownershipTokenExpiresAtMs",
	                       json_object_new_int64(token_expires_ms));
	json_object_object_add(rec, "registrations", json_object_new_int(0));
	json_object_object_add(rec, "certificatePem", json_object_new_string(pem));
	return rec;
}

int registry_add_certificate(struct registry *r, const char *id, const char *pem, const char *token,
                             int64_t token_expires_ms, const char *client_id, const char *api)
{
	char hash[SHA256_HEX_LEN + 1];
	json_object *rec;

	token_hash(token, hash);
	rec = new_certificate_record(id, pem, hash, token_expires_ms, client_id, api);
	if (!rec)
		return -ENOMEM;
	json_object_object_add(r->tokens, hash, json_object_new_string(id));
	return registry_put(r, REGISTRY_CERTIFICATES, id, rec);
}

int registry_lookup_token(struct registry *r, const char *token, int64_t now_ms,
                          const char **ret_id)
{
	char hash[SHA256_HEX_LEN + 1];
	json_object *id, *rec, *expires;

	token_hash(token, hash);
	if (!json_object_object_get_ex(r->tokens, hash, &id))
		return -ENOENT;
	rec = registry_get(r, REGISTRY_CERTIFICATES, json_object_get_string(id));
	if (!rec)
		return -ENOENT;
	if (!json_object_object_get_ex(rec, "ownershipTokenExpiresAtMs", &expires) ||
	    json_object_get_int64(expires) <= now_ms)
		return -ETIMEDOUT;
	*ret_id = json_object_get_string(id);
	return 0;
}

static bool pending_and_expired(json_object *rec, int64_t now_ms)
{
	json_object *expires;

	if (strcmp(str_or(util_json_get_string(rec, "status"), ""), CERT_STATUS_PENDING) != 0)
		return false;
	return json_object_object_get_ex(rec, "ownershipTokenExpiresAtMs", &expires) &&
	       json_object_get_int64(expires) <= now_ms;
}

int registry_sweep(struct registry *r, int64_t now_ms)
{
	json_object *certs = r->records[REGISTRY_CERTIFICATES];
	struct lh_entry *e, *next;
	int n = 0;

	/* Walk the table by hand: deleting from it inside json_object_object_foreach is unsafe. */
	for (e = lh_table_head(json_object_get_object(certs)); e; e = next) {
		json_object *rec = (json_object *)lh_entry_v(e);
		char id[NAME_MAX + 1], name[NAME_MAX + 1];
		const char *hash;

		next = lh_entry_next(e);
		if (!pending_and_expired(rec, now_ms))
			continue;
		snprintf(id, sizeof(id), "%s", (const char *)lh_entry_k(e));
		hash = util_json_get_string(rec, "ownershipTokenSha256");
		if (hash)
			json_object_object_del(r->tokens, hash);
		if (record_file_name(id, name, sizeof(name)) >= 0)
			(void)unlinkat(r->kind_fds[REGISTRY_CERTIFICATES], name, 0);
		json_object_object_del(certs, id);
		n++;
	}
	return n;
}
