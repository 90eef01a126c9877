/* The state directory: atomic files, the pending attempt and committed generations. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "keygen.h"
#include "log.h"
#include "macro.h"
#include "openssl-util.h"
#include "store.h"

/* An RSA-4096 PKCS#8 PEM is about 3.3 KB; anything near this bound is not a key we wrote. */
#define STORE_KEY_PEM_MAX (64u * 1024u)
/* A CSR is smaller than its key's PEM plus a subject bounded by RFC 5280. */
#define STORE_CSR_PEM_MAX (64u * 1024u)
/* certificate.json: PEM and token at their protocol limits, JSON-escaped (x2), plus keys. */
#define STORE_CERTIFICATE_JSON_MAX (2u * (PROTO_CERT_PEM_MAX + PROTO_TOKEN_MAX) + 4096u)
/*
 * registration.json and identity.json carry DeviceConfiguration: its protocol limits, each
 * character escaped as \u00XX at worst (x6), plus room for the other fields.
 */
#define STORE_DEVCONF_JSON_MAX                                                                     \
	(6u * PROTO_DEVCONF_ENTRIES_MAX * (PROTO_DEVCONF_KEY_MAX + PROTO_DEVCONF_VALUE_MAX) +      \
	 64u * 1024u)
/* attempt.json holds two numbers and one error sentence. */
#define STORE_ATTEMPT_JSON_MAX (64u * 1024u)
/* Temp names collide only by chance; after this many tries something else is wrong. */
#define STORE_TEMP_TRIES 64
/* ".<name>.XXXXXX" must still fit NAME_MAX. */
#define STORE_TEMP_SUFFIX_LEN 6
#define STORE_CURRENT_TMP     "current.tmp"

struct store {
	int dirfd;
	char *path;
};

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put)
DEFINE_TRIVIAL_CLEANUP_FUNC(DIR *, closedir)

static int mkdirat_mode(int dirfd, const char *name, mode_t mode)
{
	/* Created with its final mode: the umask (UMask=0077 in the unit) must not apply. */
	mode_t old = umask(0);
	int r = mkdirat(dirfd, name, mode);
	int saved = errno;

	umask(old);
	errno = saved;
	return r < 0 ? NEG_ERRNO() : 0;
}

static int fsync_fd(int fd)
{
	return fsync(fd) < 0 ? NEG_ERRNO() : 0;
}

/* Open a directory below dirfd, never through a symlink. */
static int open_dir_at(int dirfd, const char *name, int *ret)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return NEG_ERRNO();
	*ret = fd;
	return 0;
}

/* Open dirfd/name, creating it with mode first if missing (and making the new entry durable). */
static int ensure_dir_at(int dirfd, const char *name, mode_t mode, int *ret)
{
	int r = mkdirat_mode(dirfd, name, mode);

	if (r < 0 && r != -EEXIST)
		return r;
	if (r == 0) {
		r = fsync_fd(dirfd);
		if (r < 0)
			return r;
	}
	return open_dir_at(dirfd, name, ret);
}

/* mkdir -p for the parents of the state directory; the state directory itself gets 0750. */
static int mkdir_parents(const char *path)
{
	_cleanup_free_ char *p = strdup(path);

	if (!p)
		return -ENOMEM;
	for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
		*s = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST)
			return NEG_ERRNO();
		*s = '/';
	}
	return 0;
}

static int open_state_dir(const char *path, int *ret)
{
	int fd, r;

	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		r = mkdir_parents(path);
		if (r < 0)
			return r;
		r = mkdirat_mode(AT_FDCWD, path, STORE_MODE_GEN_DIR);
		if (r < 0 && r != -EEXIST)
			return r;
		fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	}
	if (fd < 0)
		return NEG_ERRNO();
	*ret = fd;
	return 0;
}

int store_open(const char *state_dir, struct store **ret)
{
	_cleanup_(store_freep) struct store *s = NULL;
	size_t len;
	int r;

	if (!state_dir || !*state_dir || !ret)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dirfd = -1;
	s->path = strdup(state_dir);
	if (!s->path)
		return -ENOMEM;
	/* identity.env names files below this path: no "//" in them. */
	for (len = strlen(s->path); len > 1 && s->path[len - 1] == '/'; len--)
		s->path[len - 1] = '\0';
	r = open_state_dir(s->path, &s->dirfd);
	if (r < 0)
		return r;
	*ret = TAKE_PTR(s);
	return 0;
}

struct store *store_free(struct store *s)
{
	if (!s)
		return NULL;
	closep(&s->dirfd);
	free(s->path);
	free(s);
	return NULL;
}

int store_dirfd(const struct store *s)
{
	return s ? s->dirfd : -EBADF;
}

const char *store_path(const struct store *s)
{
	return s ? s->path : NULL;
}

static bool name_valid(const char *name)
{
	size_t len = name ? strlen(name) : 0;

	return len > 0 && len <= NAME_MAX - 2 - STORE_TEMP_SUFFIX_LEN && !strchr(name, '/') &&
	       strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

/* ".<name>.XXXXXX": hidden, in the same directory (rename must not cross filesystems). */
static void temp_name(const char *name, char *buf, size_t size)
{
	static const char alphabet[] =
	    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	static uint64_t counter;
	char suffix[STORE_TEMP_SUFFIX_LEN + 1];
	struct timespec ts;
	uint64_t x;

	/* Not a secret, only unlikely to collide; O_EXCL catches the rest. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	x = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32) ^
	    (++counter * UINT64_C(0x9e3779b97f4a7c15));
	for (size_t i = 0; i < STORE_TEMP_SUFFIX_LEN; i++, x /= sizeof(alphabet) - 1)
		suffix[i] = alphabet[x % (sizeof(alphabet) - 1)];
	suffix[STORE_TEMP_SUFFIX_LEN] = '\0';
	snprintf(buf, size, ".%s.%s", name, suffix);
}

static int create_temp(int dirfd, const char *name, mode_t mode, char *ret_name, size_t size)
{
	for (int i = 0; i < STORE_TEMP_TRIES; i++) {
		mode_t old;
		int fd, saved;

		temp_name(name, ret_name, size);
		old = umask(0);
		fd = openat(dirfd, ret_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		            mode);
		saved = errno;
		umask(old);
		if (fd >= 0)
			return fd;
		if (saved != EEXIST)
			return saved > 0 ? -saved : -EIO;
	}
	return -EEXIST;
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return NEG_ERRNO();
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Write, flush to disk and close the temp file; the close error counts (NFS reports there). */
static int fill_temp(int fd, const void *data, size_t len)
{
	int r = write_all(fd, data, len);

	if (r == 0)
		r = fsync_fd(fd);
	if (close(fd) < 0 && r == 0)
		r = NEG_ERRNO();
	return r;
}

int store_write_atomic(int dirfd, const char *name, const void *data, size_t len, unsigned mode)
{
	char tmp[NAME_MAX + 1];
	int fd, r;

	if (dirfd < 0 || !name_valid(name) || (!data && len > 0) || (mode & ~07777u))
		return -EINVAL;
	fd = create_temp(dirfd, name, (mode_t)mode, tmp, sizeof(tmp));
	if (fd < 0)
		return fd;
	r = fill_temp(fd, data, len);
	if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		r = NEG_ERRNO();
	if (r < 0) {
		(void)unlinkat(dirfd, tmp, 0);
		return r;
	}
	/* The rename is only durable once the directory is. */
	return fsync_fd(dirfd);
}

/* Read up to size bytes (the size fstat reported) and make sure nothing follows. */
static int read_exact(int fd, char *buf, size_t size)
{
	size_t got = 0;
	char extra;

	while (got < size) {
		ssize_t n = read(fd, buf + got, size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return NEG_ERRNO();
		if (n == 0)
			return -EBUSY; /* shrank while we read: not a file written by rename */
		got += (size_t)n;
	}
	/* Files here are replaced by rename, never rewritten in place: growth means tampering. */
	if (read(fd, &extra, 1) != 0)
		return -EBUSY;
	return 0;
}

static int verify_regular(const struct stat *st)
{
	if (S_ISREG(st->st_mode))
		return 0;
	return S_ISDIR(st->st_mode) ? -EISDIR : -EBADFD;
}

int store_read_file(int dirfd, const char *name, size_t max, char **ret, size_t *ret_len)
{
	_cleanup_close_ int fd = -1;
	struct stat st;
	size_t size;
	char *buf;
	int r;

	if (!name || !ret)
		return -EINVAL;
	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return NEG_ERRNO();
	if (fstat(fd, &st) < 0)
		return NEG_ERRNO();
	r = verify_regular(&st);
	if (r < 0)
		return r;
	if (st.st_size < 0 || (uint64_t)st.st_size > max)
		return -EFBIG;
	size = (size_t)st.st_size;
	buf = malloc(size + 1);
	if (!buf)
		return -ENOMEM;
	r = read_exact(fd, buf, size);
	if (r < 0) {
		/* We do not know whether this was a key: erase it like one. */
		erase_and_free(buf, size + 1);
		return r;
	}
	buf[size] = '\0';
	*ret = buf;
	if (ret_len)
		*ret_len = size;
	return 0;
}

static int unlink_if_exists(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
		return NEG_ERRNO();
	return 0;
}

/* ---- JSON helpers ---- */

/* Overwrite a json-c string's storage before the object is freed (it held a secret). */
static void json_erase_string(json_object *o)
{
	if (json_object_is_type(o, json_type_string))
		explicit_bzero((char *)json_object_get_string(o),
		               (size_t)json_object_get_string_len(o));
}

static int json_add(json_object *o, const char *key, json_object *v)
{
	if (!v || json_object_object_add(o, key, v) < 0) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

static int json_add_string(json_object *o, const char *key, const char *value)
{
	return value ? json_add(o, key, json_object_new_string(value)) : 0;
}

/* Serialize o and write it atomically; secret output is erased once written. */
static int write_json_at(int dirfd, const char *name, json_object *o, unsigned mode, bool secret)
{
	const int flags =
	    JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE;
	_cleanup_free_ char *text = NULL;
	const char *s;
	size_t len;
	int r;

	s = json_object_to_json_string_length(o, flags, &len);
	if (!s)
		return -ENOMEM;
	text = malloc(len + 2);
	if (!text) {
		r = -ENOMEM;
		goto finish;
	}
	memcpy(text, s, len);
	text[len] = '\n';
	text[len + 1] = '\0';
	r = store_write_atomic(dirfd, name, text, len + 1, mode);
finish:
	if (secret) {
		explicit_bzero((char *)s, len);
		if (text)
			explicit_bzero(text, len + 1);
	}
	return r;
}

/* Parse a JSON object file; anything else (truncated, not an object) is -EBADMSG. */
static int read_json_at(int dirfd, const char *name, size_t max, bool secret, json_object **ret)
{
	_cleanup_free_ char *text = NULL;
	json_object *o;
	size_t len;
	int r;

	r = store_read_file(dirfd, name, max, &text, &len);
	if (r < 0)
		return r;
	o = json_tokener_parse(text);
	if (secret)
		explicit_bzero(text, len);
	if (!o)
		return -EBADMSG;
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return -EBADMSG;
	}
	*ret = o;
	return 0;
}

/* A string member of at most max bytes (and at least one), or NULL. */
static const char *json_get_string(json_object *o, const char *key, size_t max)
{
	json_object *v;
	int len;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	len = json_object_get_string_len(v);
	if (len <= 0 || (size_t)len > max)
		return NULL;
	return json_object_get_string(v);
}

/* A non-negative integer member, or -1. */
static int64_t json_get_uint(json_object *o, const char *key)
{
	json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return -1;
	n = json_object_get_int64(v);
	return n < 0 ? -1 : n;
}

/* AWS certificate ids are exactly 64 hex characters (spec §1.3); they name a directory here. */
static bool certificate_id_valid(const char *id)
{
	if (!id || strlen(id) != PROTO_CERT_ID_LEN)
		return false;
	return strspn(id, "0123456789abcdefABCDEF") == PROTO_CERT_ID_LEN;
}

/* ---- pending/ ---- */

static int open_pending(struct store *s, bool create, int *ret)
{
	if (!s)
		return -EINVAL;
	if (create)
		return ensure_dir_at(s->dirfd, STORE_PENDING_DIR, STORE_MODE_PENDING_DIR, ret);
	return open_dir_at(s->dirfd, STORE_PENDING_DIR, ret);
}

static int unlink_certificate_files(int fd)
{
	int r = unlink_if_exists(fd, STORE_REGISTRATION_JSON);

	if (r == 0)
		r = unlink_if_exists(fd, STORE_CERTIFICATE_JSON);
	if (r == 0)
		r = fsync_fd(fd);
	return r;
}

int store_pending_save_csr(struct store *s, const char *csr_pem)
{
	_cleanup_close_ int fd = -1;
	int r;

	if (!csr_pem)
		return -EINVAL;
	r = open_pending(s, true, &fd);
	if (r < 0)
		return r;
	return store_write_atomic(fd, STORE_CSR_FILE, csr_pem, strlen(csr_pem), STORE_MODE_PUBLIC);
}

int store_pending_save_key(struct store *s, const char *key_pem, const char *csr_pem)
{
	_cleanup_close_ int fd = -1;
	int r;

	if (!key_pem || !csr_pem)
		return -EINVAL;
	r = open_pending(s, true, &fd);
	if (r < 0)
		return r;
	/* A certificate left from an earlier key must be gone before the new key is on disk. */
	r = unlink_certificate_files(fd);
	if (r < 0)
		return r;
	r = store_write_atomic(fd, STORE_KEY_FILE, key_pem, strlen(key_pem), STORE_MODE_KEY);
	if (r < 0)
		return r;
	return store_pending_save_csr(s, csr_pem);
}

static json_object *certificate_json(const struct proto_cert_accepted *c, uint64_t issued_at_usec)
{
	_cleanup_(json_object_putp) json_object *o = json_object_new_object();

	if (!o || json_add_string(o, "certificateId", c->certificate_id) < 0 ||
	    json_add_string(o, "certificatePem", c->certificate_pem) < 0 ||
	    json_add_string(o, "certificateOwnershipToken", c->ownership_token) < 0 ||
	    json_add(o, "issuedAtUsec", json_object_new_int64((int64_t)issued_at_usec)) < 0)
		return NULL;
	return TAKE_PTR(o);
}

static void certificate_json_free(json_object *o)
{
	json_object *token;

	if (!o)
		return;
	if (json_object_object_get_ex(o, "certificateOwnershipToken", &token))
		json_erase_string(token);
	json_object_put(o);
}

int store_pending_save_certificate(struct store *s, const struct proto_cert_accepted *c,
                                   uint64_t issued_at_usec)
{
	_cleanup_close_ int fd = -1;
	json_object *o;
	int r;

	if (!c || !certificate_id_valid(c->certificate_id) || !c->certificate_pem ||
	    !c->ownership_token || issued_at_usec > INT64_MAX)
		return -EINVAL;
	r = open_pending(s, true, &fd);
	if (r < 0)
		return r;
	o = certificate_json(c, issued_at_usec);
	if (!o)
		return -ENOMEM;
	r = write_json_at(fd, STORE_CERTIFICATE_JSON, o, STORE_MODE_SECRET, true);
	certificate_json_free(o);
	return r;
}

int store_pending_drop_certificate(struct store *s)
{
	_cleanup_close_ int fd = -1;
	int r;

	r = open_pending(s, false, &fd);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	return unlink_certificate_files(fd);
}

static json_object *devconf_json(const struct proto_devconf_entry *e, size_t n)
{
	_cleanup_(json_object_putp) json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!e[i].key || !e[i].value || json_add_string(o, e[i].key, e[i].value) < 0)
			return NULL;
	return TAKE_PTR(o);
}

int store_pending_save_registration(struct store *s, const struct proto_register_accepted *r)
{
	_cleanup_(json_object_putp) json_object *o = NULL;
	_cleanup_close_ int fd = -1;
	int k;

	if (!r || !r->thing_name || (r->n_device_configuration > 0 && !r->device_configuration))
		return -EINVAL;
	k = open_pending(s, true, &fd);
	if (k < 0)
		return k;
	o = json_object_new_object();
	if (!o || json_add_string(o, "thingName", r->thing_name) < 0 ||
	    json_add(o, "deviceConfiguration",
	             devconf_json(r->device_configuration, r->n_device_configuration)) < 0)
		return -ENOMEM;
	return write_json_at(fd, STORE_REGISTRATION_JSON, o, STORE_MODE_SECRET, false);
}

int store_pending_save_attempt(struct store *s, uint64_t started_at_usec, unsigned attempt,
                               const char *last_error)
{
	_cleanup_(json_object_putp) json_object *o = NULL;
	_cleanup_close_ int fd = -1;
	int r;

	if (started_at_usec > INT64_MAX)
		return -EINVAL;
	r = open_pending(s, true, &fd);
	if (r < 0)
		return r;
	o = json_object_new_object();
	if (!o ||
	    json_add(o, "startedAtUsec", json_object_new_int64((int64_t)started_at_usec)) < 0 ||
	    json_add(o, "attempt", json_object_new_int64(attempt)) < 0 ||
	    json_add_string(o, "lastError", last_error) < 0)
		return -ENOMEM;
	return write_json_at(fd, STORE_ATTEMPT_JSON, o, STORE_MODE_SECRET, false);
}

/*
 * Unlink every non-directory entry of the directory fd (never following anything). A fresh fd
 * for the listing: a dup would share (and exhaust) the caller's directory offset.
 */
static int remove_dir_files(int fd)
{
	_cleanup_(closedirp) DIR *d = NULL;
	struct dirent *de;
	int dfd, r = 0;

	dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return NEG_ERRNO();
	d = fdopendir(dfd);
	if (!d) {
		r = NEG_ERRNO();
		close(dfd);
		return r;
	}
	while ((errno = 0, de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (unlinkat(fd, de->d_name, 0) < 0 && errno != ENOENT && r == 0)
			r = NEG_ERRNO();
	}
	if (errno != 0 && r == 0)
		r = NEG_ERRNO();
	return r;
}

/* Remove dirfd/name and the files in it; a missing directory is fine. */
static int remove_dir_at(int dirfd, const char *name)
{
	_cleanup_close_ int fd = -1;
	int r;

	r = open_dir_at(dirfd, name, &fd);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	r = remove_dir_files(fd);
	if (r < 0)
		return r;
	if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		return NEG_ERRNO();
	return 0;
}

int store_pending_remove(struct store *s)
{
	int r;

	if (!s)
		return -EINVAL;
	r = remove_dir_at(s->dirfd, STORE_PENDING_DIR);
	if (r < 0)
		return r;
	return fsync_fd(s->dirfd);
}

/* ---- loading pending/ ---- */

static void devconf_free(struct proto_devconf_entry *e, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(e[i].key);
		free(e[i].value);
	}
	free(e);
}

void store_pending_clear(struct store_pending *p)
{
	if (!p)
		return;
	erase_and_freep(&p->key_pem);
	free(p->csr_pem);
	free(p->certificate_id);
	free(p->certificate_pem);
	erase_and_freep(&p->ownership_token);
	free(p->registration.thing_name);
	devconf_free(p->registration.device_configuration, p->registration.n_device_configuration);
	free(p->last_error);
	*p = (struct store_pending){0};
}

/* The key must parse: a damaged key cannot be reused and the flow must start over. */
static int load_key(int fd, char **ret, EVP_PKEY **ret_key)
{
	_cleanup_erase_ char *pem = NULL;
	int r;

	r = store_read_file(fd, STORE_KEY_FILE, STORE_KEY_PEM_MAX, &pem, NULL);
	if (r == -EFBIG)
		return -EBADMSG;
	if (r < 0)
		return r;
	r = keygen_load_private_key(pem, ret_key);
	if (r < 0)
		return r;
	*ret = TAKE_PTR(pem);
	return 0;
}

/* A CSR that is missing, damaged or for another key is dropped: it can be made again. */
static void load_csr(int fd, EVP_PKEY *key, struct store_pending *p)
{
	_cleanup_free_ char *pem = NULL;

	if (store_read_file(fd, STORE_CSR_FILE, STORE_CSR_PEM_MAX, &pem, NULL) < 0)
		return;
	if (keygen_csr_matches_key(pem, key) < 0)
		return;
	p->csr_pem = TAKE_PTR(pem);
}

static int load_certificate_fields(json_object *o, struct store_pending *p)
{
	const char *id = json_get_string(o, "certificateId", PROTO_CERT_ID_LEN);
	const char *pem = json_get_string(o, "certificatePem", PROTO_CERT_PEM_MAX);
	const char *token = json_get_string(o, "certificateOwnershipToken", PROTO_TOKEN_MAX);
	int64_t issued = json_get_uint(o, "issuedAtUsec");

	if (!certificate_id_valid(id) || !pem || !token || issued < 0)
		return -EBADMSG;
	p->certificate_id = strdup(id);
	p->certificate_pem = strdup(pem);
	p->ownership_token = strdup(token);
	p->issued_at_usec = (uint64_t)issued;
	if (!p->certificate_id || !p->certificate_pem || !p->ownership_token)
		return -ENOMEM;
	return 0;
}

/* A certificate.json that does not parse is treated as absent: the flow restarts from the CSR. */
static int load_certificate(int fd, struct store_pending *p)
{
	json_object *o = NULL;
	int r;

	r = read_json_at(fd, STORE_CERTIFICATE_JSON, STORE_CERTIFICATE_JSON_MAX, true, &o);
	if (r == -ENOENT || r == -EBADMSG || r == -EFBIG)
		return 0;
	if (r < 0)
		return r;
	/* Fields are only taken once all of them were validated: -EBADMSG leaves p untouched. */
	r = load_certificate_fields(o, p);
	certificate_json_free(o);
	return r == -EBADMSG ? 0 : r;
}

static int devconf_parse(json_object *o, struct proto_register_accepted *reg)
{
	size_t n = 0, max;

	if (!json_object_is_type(o, json_type_object))
		return -EBADMSG;
	max = (size_t)json_object_object_length(o);
	if (max > PROTO_DEVCONF_ENTRIES_MAX)
		return -EBADMSG;
	reg->device_configuration = calloc(max ? max : 1, sizeof(*reg->device_configuration));
	if (!reg->device_configuration)
		return -ENOMEM;
	json_object_object_foreach(o, key, v)
	{
		if (!json_object_is_type(v, json_type_string) ||
		    strlen(key) > PROTO_DEVCONF_KEY_MAX ||
		    (size_t)json_object_get_string_len(v) > PROTO_DEVCONF_VALUE_MAX)
			return -EBADMSG;
		reg->device_configuration[n].key = strdup(key);
		reg->device_configuration[n].value = strdup(json_object_get_string(v));
		reg->n_device_configuration = ++n;
		if (!reg->device_configuration[n - 1].key ||
		    !reg->device_configuration[n - 1].value)
			return -ENOMEM;
	}
	return 0;
}

static int registration_parse(json_object *o, struct proto_register_accepted *reg)
{
	const char *thing = json_get_string(o, "thingName", PROTO_THING_NAME_MAX);
	json_object *devconf;

	if (!thing)
		return -EBADMSG;
	reg->thing_name = strdup(thing);
	if (!reg->thing_name)
		return -ENOMEM;
	if (!json_object_object_get_ex(o, "deviceConfiguration", &devconf))
		return 0;
	return devconf_parse(devconf, reg);
}

/* Only meaningful with a certificate; a damaged one is treated as absent. */
static int load_registration(int fd, struct store_pending *p)
{
	_cleanup_(json_object_putp) json_object *o = NULL;
	struct proto_register_accepted reg = {0};
	int r;

	r = read_json_at(fd, STORE_REGISTRATION_JSON, STORE_DEVCONF_JSON_MAX, false, &o);
	if (r == -ENOENT || r == -EBADMSG || r == -EFBIG)
		return 0;
	if (r < 0)
		return r;
	r = registration_parse(o, &reg);
	if (r < 0) {
		free(reg.thing_name);
		devconf_free(reg.device_configuration, reg.n_device_configuration);
		return r == -EBADMSG ? 0 : r;
	}
	p->registration = reg;
	p->registered = true;
	return 0;
}

/* Bookkeeping only: a damaged attempt.json is ignored. */
static int load_attempt(int fd, struct store_pending *p)
{
	_cleanup_(json_object_putp) json_object *o = NULL;
	const char *err;
	int64_t started, attempt;

	if (read_json_at(fd, STORE_ATTEMPT_JSON, STORE_ATTEMPT_JSON_MAX, false, &o) < 0)
		return 0;
	started = json_get_uint(o, "startedAtUsec");
	attempt = json_get_uint(o, "attempt");
	err = json_get_string(o, "lastError", STORE_ATTEMPT_JSON_MAX);
	p->started_at_usec = started > 0 ? (uint64_t)started : 0;
	p->attempt = attempt > 0 && attempt <= UINT_MAX ? (unsigned)attempt : 0;
	if (err) {
		p->last_error = strdup(err);
		if (!p->last_error)
			return -ENOMEM;
	}
	return 0;
}

static int load_pending_files(int fd, struct store_pending *p)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	int r;

	r = load_key(fd, &p->key_pem, &key);
	if (r < 0)
		return r;
	load_csr(fd, key, p);
	r = load_certificate(fd, p);
	if (r < 0)
		return r;
	if (p->certificate_id) {
		r = load_registration(fd, p);
		if (r < 0)
			return r;
	}
	return load_attempt(fd, p);
}

int store_pending_load(struct store *s, struct store_pending *ret)
{
	struct store_pending p = {0};
	_cleanup_close_ int fd = -1;
	int r;

	if (!ret)
		return -EINVAL;
	r = open_pending(s, false, &fd);
	if (r < 0)
		return r;
	r = load_pending_files(fd, &p);
	if (r < 0) {
		store_pending_clear(&p);
		return r;
	}
	*ret = p;
	return 0;
}

/* ---- commit ---- */

/* systemd's EnvironmentFile= and sh both read "..." with \ " ` $ escaped; newlines stay literal. */
static void env_put_escaped(FILE *f, const char *value)
{
	for (const char *p = value ? value : ""; *p; p++) {
		if (strchr("\\\"`$", *p))
			fputc('\\', f);
		fputc(*p, f);
	}
}

static void env_put(FILE *f, const char *key, const char *value)
{
	fprintf(f, "%s=\"", key);
	env_put_escaped(f, value);
	fputs("\"\n", f);
}

/* FLEETPROVD_CONFIG_<KEY>: upper case, anything outside [A-Z0-9_] becomes '_'. */
static void env_put_config(FILE *f, const char *key, const char *value)
{
	fputs("FLEETPROVD_CONFIG_", f);
	for (const char *p = key; *p; p++) {
		char c = *p;

		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		else if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
			c = '_';
		fputc(c, f);
	}
	env_put(f, "", value);
}

/* Consumers read the files through current/, so a later commit needs no change on their side. */
static void env_put_path(FILE *f, const char *key, const char *state_dir, const char *file)
{
	fprintf(f, "%s=\"", key);
	env_put_escaped(f, state_dir);
	fprintf(f, "/%s/%s\"\n", STORE_CURRENT_LINK, file);
}

static int identity_env(const struct store *s, const struct store_identity *id, char **ret,
                        size_t *ret_len)
{
	_cleanup_fclose_ FILE *f = NULL;
	char *text = NULL, port[8];
	size_t len = 0;

	f = open_memstream(&text, &len);
	if (!f)
		return -ENOMEM;
	snprintf(port, sizeof(port), "%u", (unsigned)id->port);
	fputs("# fleetprovd identity; generated with identity.json, do not edit.\n", f);
	env_put(f, "FLEETPROVD_THING_NAME", id->thing_name);
	env_put(f, "FLEETPROVD_CERTIFICATE_ID", id->certificate_id);
	env_put(f, "FLEETPROVD_ENDPOINT", id->endpoint);
	env_put(f, "FLEETPROVD_PORT", port);
	env_put(f, "FLEETPROVD_TEMPLATE", id->template_name);
	env_put(f, "FLEETPROVD_CA_FILE", id->ca_file);
	env_put_path(f, "FLEETPROVD_CERTIFICATE_FILE", s->path, STORE_CERT_FILE);
	env_put_path(f, "FLEETPROVD_PRIVATE_KEY_FILE", s->path, STORE_KEY_FILE);
	for (size_t i = 0; i < id->n_device_configuration; i++)
		env_put_config(f, id->device_configuration[i].key,
		               id->device_configuration[i].value);
	if (ferror(f) || fclose(TAKE_PTR(f)) != 0) {
		free(text);
		return -ENOMEM;
	}
	*ret = text;
	*ret_len = len;
	return 0;
}

/* {"size": N, "mtimeNsec": N} of a file just written, for the boot fast path. */
static int manifest_entry(int dirfd, const char *name, json_object *manifest)
{
	_cleanup_(json_object_putp) json_object *o = NULL;
	struct stat st;
	int64_t mtime;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return NEG_ERRNO();
	mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	o = json_object_new_object();
	if (!o || json_add(o, "size", json_object_new_int64((int64_t)st.st_size)) < 0 ||
	    json_add(o, "mtimeNsec", json_object_new_int64(mtime)) < 0)
		return -ENOMEM;
	return json_add(manifest, name, TAKE_PTR(o));
}

/* Taken after the files are final: the fast path compares exactly these values. */
static int add_manifest(json_object *identity, int gen_fd)
{
	_cleanup_(json_object_putp) json_object *o = json_object_new_object();
	int r;

	if (!o)
		return -ENOMEM;
	r = manifest_entry(gen_fd, STORE_KEY_FILE, o);
	if (r == 0)
		r = manifest_entry(gen_fd, STORE_CERT_FILE, o);
	if (r < 0)
		return r;
	return json_add(identity, "manifest", TAKE_PTR(o));
}

static void format_rfc3339(uint64_t usec, char *buf, size_t size)
{
	time_t t = (time_t)(usec / USEC_PER_SEC);
	struct tm tm;

	if (!gmtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, size, "1970-01-01T00:00:00Z");
}

static int identity_add_fields(json_object *o, const struct store_identity *id, uint64_t usec)
{
	char when[32];

	format_rfc3339(usec, when, sizeof(when));
	if (json_add_string(o, "thingName", id->thing_name) < 0 ||
	    json_add_string(o, "certificateId", id->certificate_id) < 0 ||
	    json_add_string(o, "endpoint", id->endpoint) < 0 ||
	    json_add(o, "port", json_object_new_int(id->port)) < 0 ||
	    json_add_string(o, "template", id->template_name) < 0 ||
	    json_add_string(o, "caFile", id->ca_file) < 0 ||
	    json_add(o, "deviceConfiguration",
	             devconf_json(id->device_configuration, id->n_device_configuration)) < 0 ||
	    json_add_string(o, "provisionedAt", when) < 0 ||
	    json_add(o, "provisionedAtUsec", json_object_new_int64((int64_t)usec)) < 0 ||
	    json_add(o, "certificateNotAfter", json_object_new_int64(id->not_after)) < 0 ||
	    /* Nothing has connected with it yet: store_mark_verified() says when one has. */
	    json_add(o, "verified", json_object_new_boolean(false)) < 0)
		return -ENOMEM;
	return 0;
}

static int write_identity_json(int gen_fd, const struct store_identity *id)
{
	_cleanup_(json_object_putp) json_object *o = json_object_new_object();
	uint64_t usec = id->provisioned_at_usec;
	struct timespec ts;
	int r;

	if (!o)
		return -ENOMEM;
	if (usec == 0 && clock_gettime(CLOCK_REALTIME, &ts) == 0)
		usec = (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
	r = identity_add_fields(o, id, usec);
	if (r < 0)
		return r;
	r = add_manifest(o, gen_fd);
	if (r < 0)
		return r;
	return write_json_at(gen_fd, STORE_IDENTITY_JSON, o, STORE_MODE_PUBLIC, false);
}

static int write_generation_files(const struct store *s, int gen_fd,
                                  const struct store_identity *id)
{
	_cleanup_free_ char *env = NULL;
	size_t env_len;
	int r;

	r = store_write_atomic(gen_fd, STORE_KEY_FILE, id->key_pem, strlen(id->key_pem),
	                       STORE_MODE_KEY);
	if (r < 0)
		return r;
	r = store_write_atomic(gen_fd, STORE_CERT_FILE, id->certificate_pem,
	                       strlen(id->certificate_pem), STORE_MODE_PUBLIC);
	if (r < 0)
		return r;
	r = identity_env(s, id, &env, &env_len);
	if (r < 0)
		return r;
	r = store_write_atomic(gen_fd, STORE_IDENTITY_ENV, env, env_len, STORE_MODE_PUBLIC);
	if (r < 0)
		return r;
	/* Last: its presence and manifest vouch for the files above. */
	return write_identity_json(gen_fd, id);
}

/* Point current at gen atomically: a new symlink under a temp name renamed over the old one. */
static int switch_current(int dirfd, const char *gen)
{
	int r = unlink_if_exists(dirfd, STORE_CURRENT_TMP);

	if (r < 0)
		return r;
	if (symlinkat(gen, dirfd, STORE_CURRENT_TMP) < 0)
		return NEG_ERRNO();
	if (renameat(dirfd, STORE_CURRENT_TMP, dirfd, STORE_CURRENT_LINK) < 0) {
		r = NEG_ERRNO();
		(void)unlinkat(dirfd, STORE_CURRENT_TMP, 0);
		return r;
	}
	return fsync_fd(dirfd);
}

static int remove_other_generations(int dirfd, const char *keep)
{
	_cleanup_(closedirp) DIR *d = NULL;
	struct dirent *de;
	int dfd, r = 0, k;

	dfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return NEG_ERRNO();
	d = fdopendir(dfd);
	if (!d) {
		r = NEG_ERRNO();
		close(dfd);
		return r;
	}
	while ((de = readdir(d))) {
		if (strncmp(de->d_name, STORE_GEN_PREFIX, strlen(STORE_GEN_PREFIX)) != 0 ||
		    strcmp(de->d_name, keep) == 0)
			continue;
		k = remove_dir_at(dirfd, de->d_name);
		if (k < 0 && r == 0)
			r = k;
	}
	return r;
}

static bool identity_valid(const struct store_identity *id)
{
	return id && id->thing_name && *id->thing_name &&
	       certificate_id_valid(id->certificate_id) && id->certificate_pem && id->key_pem &&
	       (id->n_device_configuration == 0 || id->device_configuration);
}

int store_commit(struct store *s, const struct store_identity *id)
{
	char gen[sizeof(STORE_GEN_PREFIX) + PROTO_CERT_ID_LEN];
	_cleanup_close_ int gen_fd = -1;
	int r;

	if (!s || !identity_valid(id))
		return -EINVAL;
	snprintf(gen, sizeof(gen), "%s%s", STORE_GEN_PREFIX, id->certificate_id);
	/* An interrupted commit may have left gen-<id>/: its files are simply replaced. */
	r = ensure_dir_at(s->dirfd, gen, STORE_MODE_GEN_DIR, &gen_fd);
	if (r < 0)
		return r;
	r = write_generation_files(s, gen_fd, id);
	if (r < 0)
		return r;
	r = switch_current(s->dirfd, gen);
	if (r < 0)
		return r;
	/*
	 * Committed. What follows is housekeeping: leftovers cost disk space, not correctness
	 * (a valid current wins over pending/ at the next start), so failures are not errors.
	 */
	r = store_pending_remove(s);
	if (r < 0)
		log_debug_errno(r, "Failed to remove %s/, ignoring: %s", STORE_PENDING_DIR,
		                ERRNO_STR(r));
	r = remove_other_generations(s->dirfd, gen);
	if (r < 0)
		log_debug_errno(r, "Failed to remove old generations, ignoring: %s", ERRNO_STR(r));
	(void)fsync_fd(s->dirfd);
	return 0;
}

static int identity_set_verified(json_object *o, uint64_t usec)
{
	char when[32];

	format_rfc3339(usec, when, sizeof(when));
	if (json_add(o, "verified", json_object_new_boolean(true)) < 0 ||
	    json_add_string(o, "verifiedAt", when) < 0 ||
	    json_add(o, "verifiedAtUsec", json_object_new_int64((int64_t)usec)) < 0)
		return -ENOMEM;
	return 0;
}

int store_mark_verified(struct store *s, const char *certificate_id, uint64_t verified_at_usec)
{
	_cleanup_(json_object_putp) json_object *o = NULL;
	_cleanup_close_ int cur_fd = -1;
	const char *id;
	int r;

	if (!s || !certificate_id_valid(certificate_id) || verified_at_usec > INT64_MAX)
		return -EINVAL;
	/* Through the link: the generation it names right now is the one to update. */
	cur_fd = openat(s->dirfd, STORE_CURRENT_LINK, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cur_fd < 0)
		return NEG_ERRNO();
	r = read_json_at(cur_fd, STORE_IDENTITY_JSON, STORE_DEVCONF_JSON_MAX, false, &o);
	if (r < 0)
		return r;
	id = json_get_string(o, "certificateId", PROTO_CERT_ID_LEN);
	if (!id || strcmp(id, certificate_id) != 0)
		return -ESTALE;
	r = identity_set_verified(o, verified_at_usec);
	if (r < 0)
		return r;
	/* The manifest covers key and certificate only, so it stays true as it is. */
	return write_json_at(cur_fd, STORE_IDENTITY_JSON, o, STORE_MODE_PUBLIC, false);
}
