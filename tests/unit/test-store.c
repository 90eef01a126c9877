/* store: atomic writes and modes under any umask, the pending attempt, commit and recovery. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keygen.h"
#include "macro.h"
#include "openssl-util.h"
#include "store.h"

#define CERT_ID_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define CERT_ID_B "0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF"
#define FAKE_CERT "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

struct fixture {
	char root[64];
	char state[128];
	struct store *store;
	char *key_pem;
	char *csr_pem;
};

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put)

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void make_key(char **ret_key, char **ret_csr)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;

	assert_int_equal(keygen_generate(KEY_EC_P256, &key), 0);
	assert_int_equal(keygen_private_key_pem(key, ret_key), 0);
	assert_int_equal(keygen_build_csr(key, "CN=gw-test", ret_csr), 0);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->root, "/tmp/fleetprovd-test-store-XXXXXX");
	assert_non_null(mkdtemp(f->root));
	snprintf(f->state, sizeof(f->state), "%s/var/lib/fleetprovd", f->root);
	umask(022);
	assert_int_equal(store_open(f->state, &f->store), 0);
	make_key(&f->key_pem, &f->csr_pem);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	umask(022);
	store_free(f->store);
	erase_and_freep(&f->key_pem);
	free(f->csr_pem);
	nftw(f->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static mode_t mode_at(int dirfd, const char *name)
{
	struct stat st;

	assert_int_equal(fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW), 0);
	return st.st_mode & 07777;
}

static char *read_at(int dirfd, const char *name)
{
	char *text = NULL;
	size_t len;

	assert_int_equal(store_read_file(dirfd, name, 1 << 20, &text, &len), 0);
	assert_int_equal(strlen(text), len);
	return text;
}

/* Names in dirfd, sorted and joined with ' ': catches leftover temp files. */
static char *list_dir(int dirfd)
{
	struct dirent **names;
	char *out = calloc(1, 4096);
	int n, fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	char path[64];

	assert_true(fd >= 0);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = scandir(path, &names, NULL, alphasort);
	assert_true(n >= 0);
	for (int i = 0; i < n; i++) {
		if (strcmp(names[i]->d_name, ".") != 0 && strcmp(names[i]->d_name, "..") != 0) {
			strcat(out, *out ? " " : "");
			strcat(out, names[i]->d_name);
		}
		free(names[i]);
	}
	free(names);
	close(fd);
	return out;
}

static int pending_fd(struct fixture *f)
{
	int fd = openat(store_dirfd(f->store), STORE_PENDING_DIR,
	                O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);

	assert_true(fd >= 0);
	return fd;
}

static void test_open_creates_state_dir(void **state)
{
	static const mode_t masks[] = {0, 022, 077};
	struct fixture *f = *state;
	char path[PATH_MAX + 16];
	struct stat st;

	assert_int_equal(stat(f->state, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0750);
	for (size_t i = 0; i < ARRAY_SIZE(masks); i++) {
		_cleanup_(store_freep) struct store *s = NULL;

		snprintf(path, sizeof(path), "%s/other-%zu/", f->root, i);
		umask(masks[i]);
		assert_int_equal(store_open(path, &s), 0);
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 07777, 0750);
		/* A trailing slash is dropped: identity.env paths must not hold "//". */
		path[strlen(path) - 1] = '\0';
		assert_string_equal(store_path(s), path);
	}
	assert_int_equal(store_open("", NULL), -EINVAL);
}

static void test_write_atomic_modes(void **state)
{
	static const mode_t masks[] = {0, 077, 0777};
	static const unsigned modes[] = {STORE_MODE_KEY, STORE_MODE_SECRET, STORE_MODE_PUBLIC};
	struct fixture *f = *state;
	int dirfd = store_dirfd(f->store);
	_cleanup_free_ char *names = NULL;

	for (size_t i = 0; i < ARRAY_SIZE(masks); i++)
		for (size_t j = 0; j < ARRAY_SIZE(modes); j++) {
			_cleanup_free_ char *text = NULL;
			char name[32], data[64];

			snprintf(name, sizeof(name), "f-%zu-%zu", i, j);
			snprintf(data, sizeof(data), "data %zu %zu", i, j);
			umask(masks[i]);
			assert_int_equal(
			    store_write_atomic(dirfd, name, data, strlen(data), modes[j]), 0);
			assert_int_equal(mode_at(dirfd, name), modes[j]);
			text = read_at(dirfd, name);
			assert_string_equal(text, data);
		}
	/* Nothing but the files themselves: no temp file is left behind. */
	names = list_dir(dirfd);
	assert_string_equal(names, "f-0-0 f-0-1 f-0-2 f-1-0 f-1-1 f-1-2 f-2-0 f-2-1 f-2-2");
}

static void test_write_atomic_replaces(void **state)
{
	struct fixture *f = *state;
	int dirfd = store_dirfd(f->store);
	_cleanup_free_ char *a = NULL, *b = NULL, *names = NULL;
	struct stat before, after;

	assert_int_equal(store_write_atomic(dirfd, "x", "first version", 13, 0600), 0);
	assert_int_equal(fstatat(dirfd, "x", &before, 0), 0);
	a = read_at(dirfd, "x");
	assert_int_equal(store_write_atomic(dirfd, "x", "second", 6, 0644), 0);
	assert_int_equal(fstatat(dirfd, "x", &after, 0), 0);
	b = read_at(dirfd, "x");
	assert_string_equal(a, "first version");
	assert_string_equal(b, "second");
	/* A new inode: readers holding the old file never see it change under them. */
	assert_int_not_equal(before.st_ino, after.st_ino);
	assert_int_equal(after.st_mode & 07777, 0644);
	assert_int_equal(store_write_atomic(dirfd, "empty", "", 0, 0600), 0);
	names = list_dir(dirfd);
	assert_string_equal(names, "empty x");
}

static void test_write_atomic_failure_leaves_nothing(void **state)
{
	struct fixture *f = *state;
	int dirfd = store_dirfd(f->store);
	_cleanup_free_ char *names = NULL;

	/* rename() over a non-empty directory fails after the temp file was written. */
	assert_int_equal(mkdirat(dirfd, "busy", 0700), 0);
	assert_int_equal(store_write_atomic(dirfd, "busy/inner", "x", 1, 0600), -EINVAL);
	assert_int_equal(mkdirat(dirfd, "busy/inner", 0700), 0);
	assert_true(store_write_atomic(dirfd, "busy", "data", 4, 0600) < 0);
	names = list_dir(dirfd);
	assert_string_equal(names, "busy");

	assert_int_equal(store_write_atomic(dirfd, "", "x", 1, 0600), -EINVAL);
	assert_int_equal(store_write_atomic(dirfd, "..", "x", 1, 0600), -EINVAL);
	assert_int_equal(store_write_atomic(dirfd, "m", "x", 1, 010600), -EINVAL);
	assert_int_equal(store_write_atomic(-1, "m", "x", 1, 0600), -EINVAL);
}

static void test_read_file(void **state)
{
	struct fixture *f = *state;
	int dirfd = store_dirfd(f->store);
	_cleanup_free_ char *text = NULL;
	char *none = NULL;
	size_t len = 0;

	assert_int_equal(store_write_atomic(dirfd, "ten", "0123456789", 10, 0600), 0);
	assert_int_equal(store_read_file(dirfd, "ten", 10, &text, &len), 0);
	assert_int_equal(len, 10);
	assert_string_equal(text, "0123456789");
	assert_int_equal(store_read_file(dirfd, "ten", 9, &none, &len), -EFBIG);
	assert_int_equal(store_read_file(dirfd, "missing", 10, &none, &len), -ENOENT);
	assert_int_equal(symlinkat("ten", dirfd, "link"), 0);
	assert_int_equal(store_read_file(dirfd, "link", 10, &none, &len), -ELOOP);
	assert_int_equal(mkdirat(dirfd, "dir", 0700), 0);
	assert_int_equal(store_read_file(dirfd, "dir", 10, &none, &len), -EISDIR);
	assert_null(none);
}

static void save_full_attempt(struct fixture *f)
{
	struct proto_cert_accepted cert = {
	    .certificate_id = (char *)CERT_ID_A,
	    .certificate_pem = (char *)FAKE_CERT,
	    .ownership_token = (char *)"token/with\"quotes\\and\nnewline",
	};
	struct proto_devconf_entry devconf[] = {
	    {.key = (char *)"mqttTopic", .value = (char *)"gw/1/data"},
	    {.key = (char *)"region", .value = (char *)"eu-central-1"},
	};
	struct proto_register_accepted reg = {
	    .thing_name = (char *)"gw-1",
	    .device_configuration = devconf,
	    .n_device_configuration = ARRAY_SIZE(devconf),
	};

	assert_int_equal(store_pending_save_key(f->store, f->key_pem, f->csr_pem), 0);
	assert_int_equal(store_pending_save_certificate(f->store, &cert, 1700000000123456), 0);
	assert_int_equal(store_pending_save_registration(f->store, &reg), 0);
	assert_int_equal(store_pending_save_attempt(f->store, 1700000000000001, 3, "timeout"), 0);
}

static void check_pending_modes(struct fixture *f)
{
	_cleanup_close_ int fd = pending_fd(f);

	assert_int_equal(mode_at(store_dirfd(f->store), STORE_PENDING_DIR), 0700);
	assert_int_equal(mode_at(fd, STORE_KEY_FILE), 0640);
	assert_int_equal(mode_at(fd, STORE_CSR_FILE), 0644);
	assert_int_equal(mode_at(fd, STORE_CERTIFICATE_JSON), 0600);
}

static void test_pending_round_trip(void **state)
{
	struct fixture *f = *state;
	struct store_pending p = {0};

	assert_int_equal(store_pending_load(f->store, &p), -ENOENT);
	umask(077);
	save_full_attempt(f);
	check_pending_modes(f);

	assert_int_equal(store_pending_load(f->store, &p), 0);
	assert_string_equal(p.key_pem, f->key_pem);
	assert_string_equal(p.csr_pem, f->csr_pem);
	assert_string_equal(p.certificate_id, CERT_ID_A);
	assert_string_equal(p.certificate_pem, FAKE_CERT);
	assert_string_equal(p.ownership_token, "token/with\"quotes\\and\nnewline");
	assert_int_equal(p.issued_at_usec, 1700000000123456);
	assert_true(p.registered);
	assert_string_equal(p.registration.thing_name, "gw-1");
	assert_int_equal(p.registration.n_device_configuration, 2);
	assert_string_equal(p.registration.device_configuration[0].key, "mqttTopic");
	assert_string_equal(p.registration.device_configuration[0].value, "gw/1/data");
	assert_string_equal(p.registration.device_configuration[1].key, "region");
	assert_string_equal(p.registration.device_configuration[1].value, "eu-central-1");
	assert_int_equal(p.started_at_usec, 1700000000000001);
	assert_int_equal(p.attempt, 3);
	assert_string_equal(p.last_error, "timeout");
	store_pending_clear(&p);
	assert_null(p.key_pem);
	assert_false(p.registered);
}

static void test_pending_modes_umask0(void **state)
{
	struct fixture *f = *state;

	umask(0);
	save_full_attempt(f);
	check_pending_modes(f);
}

static void test_pending_key_only(void **state)
{
	struct fixture *f = *state;
	struct store_pending p = {0};

	assert_int_equal(store_pending_save_key(f->store, f->key_pem, f->csr_pem), 0);
	assert_int_equal(store_pending_load(f->store, &p), 0);
	assert_string_equal(p.key_pem, f->key_pem);
	assert_string_equal(p.csr_pem, f->csr_pem);
	assert_null(p.certificate_id);
	assert_null(p.ownership_token);
	assert_false(p.registered);
	assert_int_equal(p.attempt, 0);
	assert_null(p.last_error);
	store_pending_clear(&p);
}

static void test_pending_drop_certificate(void **state)
{
	struct fixture *f = *state;
	_cleanup_close_ int fd = -1;
	_cleanup_free_ char *names = NULL;
	struct store_pending p = {0};

	save_full_attempt(f);
	assert_int_equal(store_pending_drop_certificate(f->store), 0);
	fd = pending_fd(f);
	names = list_dir(fd);
	assert_string_equal(names, "attempt.json device.key request.csr");
	assert_int_equal(store_pending_load(f->store, &p), 0);
	assert_string_equal(p.key_pem, f->key_pem);
	assert_string_equal(p.csr_pem, f->csr_pem);
	assert_null(p.certificate_id);
	assert_null(p.ownership_token);
	assert_false(p.registered);
	store_pending_clear(&p);
	/* Nothing pending at all is fine too. */
	assert_int_equal(store_pending_remove(f->store), 0);
	assert_int_equal(store_pending_drop_certificate(f->store), 0);
}

/* A new key starts a new attempt: a certificate for the old key must not survive it. */
static void test_pending_new_key_drops_certificate(void **state)
{
	struct fixture *f = *state;
	_cleanup_erase_ char *key2 = NULL;
	_cleanup_free_ char *csr2 = NULL;
	struct store_pending p = {0};

	save_full_attempt(f);
	make_key(&key2, &csr2);
	assert_int_equal(store_pending_save_key(f->store, key2, csr2), 0);
	assert_int_equal(store_pending_load(f->store, &p), 0);
	assert_string_equal(p.key_pem, key2);
	assert_string_equal(p.csr_pem, csr2);
	assert_null(p.certificate_id);
	assert_false(p.registered);
	store_pending_clear(&p);
}

static void test_pending_damaged_files(void **state)
{
	struct fixture *f = *state;
	_cleanup_erase_ char *key2 = NULL;
	_cleanup_free_ char *csr2 = NULL;
	_cleanup_close_ int fd = -1;
	struct store_pending p = {0};
	const char *truncated = "{\"certificateId\": \"aaaa";

	save_full_attempt(f);
	fd = pending_fd(f);
	/* A truncated certificate.json: the flow restarts from the CSR (key and CSR kept). */
	assert_int_equal(
	    store_write_atomic(fd, STORE_CERTIFICATE_JSON, truncated, strlen(truncated), 0600), 0);
	assert_int_equal(store_pending_load(f->store, &p), 0);
	assert_string_equal(p.key_pem, f->key_pem);
	assert_non_null(p.csr_pem);
	assert_null(p.certificate_id);
	assert_null(p.ownership_token);
	assert_false(p.registered);
	store_pending_clear(&p);

	/* A CSR for another key cannot be sent: it is dropped and made again by the caller. */
	make_key(&key2, &csr2);
	assert_int_equal(store_pending_save_csr(f->store, csr2), 0);
	assert_int_equal(store_pending_load(f->store, &p), 0);
	assert_null(p.csr_pem);
	store_pending_clear(&p);

	/* A damaged key cannot be reused. */
	assert_int_equal(store_write_atomic(fd, STORE_KEY_FILE, "-----BEGIN", 10, 0640), 0);
	assert_int_equal(store_pending_load(f->store, &p), -EBADMSG);
	assert_null(p.key_pem);

	/* No key: nothing to resume. */
	assert_int_equal(unlinkat(fd, STORE_KEY_FILE, 0), 0);
	assert_int_equal(store_pending_load(f->store, &p), -ENOENT);
}

static void test_pending_symlinks_refused(void **state)
{
	struct fixture *f = *state;
	_cleanup_close_ int fd = -1;
	struct store_pending p = {0};
	char target[PATH_MAX + 16];

	assert_int_equal(store_pending_save_key(f->store, f->key_pem, f->csr_pem), 0);
	fd = pending_fd(f);
	/* A valid key, but reached through a symlink: refused, never followed. */
	snprintf(target, sizeof(target), "%s/elsewhere.key", f->root);
	assert_int_equal(renameat(fd, STORE_KEY_FILE, AT_FDCWD, target), 0);
	assert_int_equal(symlinkat(target, fd, STORE_KEY_FILE), 0);
	assert_int_equal(store_pending_load(f->store, &p), -ELOOP);
	assert_null(p.key_pem);

	/* pending/ itself as a symlink to another directory is refused as well. */
	assert_int_equal(store_pending_remove(f->store), 0);
	assert_int_equal(symlinkat(f->root, store_dirfd(f->store), STORE_PENDING_DIR), 0);
	/* O_DIRECTORY|O_NOFOLLOW on a symlink: the kernel says ENOTDIR. */
	assert_int_equal(store_pending_load(f->store, &p), -ENOTDIR);
	assert_int_equal(store_pending_save_key(f->store, f->key_pem, f->csr_pem), -ENOTDIR);
	assert_int_equal(faccessat(AT_FDCWD, f->root, F_OK, 0), 0);
	snprintf(target, sizeof(target), "%s/" STORE_KEY_FILE, f->root);
	assert_int_equal(access(target, F_OK), -1);
}

static void test_pending_bad_args(void **state)
{
	struct fixture *f = *state;
	struct proto_cert_accepted cert = {
	    .certificate_id = (char *)"../../etc",
	    .certificate_pem = (char *)FAKE_CERT,
	    .ownership_token = (char *)"t",
	};

	assert_int_equal(store_pending_save_key(f->store, NULL, f->csr_pem), -EINVAL);
	assert_int_equal(store_pending_save_certificate(f->store, &cert, 1), -EINVAL);
	assert_int_equal(store_pending_load(f->store, NULL), -EINVAL);
	store_pending_clear(NULL);
}

/* ---- commit ---- */

static const struct proto_devconf_entry commit_devconf[] = {
    {.key = (char *)"mqtt-topic.prefix", .value = (char *)"gw/1"},
    {.key = (char *)"greeting", .value = (char *)"say \"hi\" $HOME `id` \\ done\nline two"},
};

static struct store_identity make_identity(struct fixture *f, const char *cert_id)
{
	return (struct store_identity){
	    .thing_name = "gw-1",
	    .certificate_id = cert_id,
	    .certificate_pem = FAKE_CERT,
	    .key_pem = f->key_pem,
	    .endpoint = "abc-ats.iot.eu-central-1.amazonaws.com",
	    .port = 8883,
	    .ca_file = "/etc/fleetprovd/AmazonRootCA1.pem",
	    .template_name = "GatewayTemplate",
	    .device_configuration = commit_devconf,
	    .n_device_configuration = ARRAY_SIZE(commit_devconf),
	    .provisioned_at_usec = 1700000000123456,
	    .not_after = 2000000000,
	};
}

static const char *json_str(json_object *o, const char *key)
{
	json_object *v;

	assert_true(json_object_object_get_ex(o, key, &v));
	assert_true(json_object_is_type(v, json_type_string));
	return json_object_get_string(v);
}

static int64_t json_int(json_object *o, const char *key)
{
	json_object *v;

	assert_true(json_object_object_get_ex(o, key, &v));
	assert_true(json_object_is_type(v, json_type_int));
	return json_object_get_int64(v);
}

static void check_manifest_entry(json_object *manifest, int gen_fd, const char *name)
{
	json_object *e;
	struct stat st;

	assert_true(json_object_object_get_ex(manifest, name, &e));
	assert_int_equal(fstatat(gen_fd, name, &st, AT_SYMLINK_NOFOLLOW), 0);
	assert_int_equal(json_int(e, "size"), st.st_size);
	assert_int_equal(json_int(e, "mtimeNsec"),
	                 (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
}

static void check_identity_json(int gen_fd)
{
	_cleanup_free_ char *text = read_at(gen_fd, STORE_IDENTITY_JSON);
	_cleanup_(json_object_putp) json_object *o = json_tokener_parse(text);
	json_object *devconf, *manifest;

	assert_non_null(o);
	assert_string_equal(json_str(o, "thingName"), "gw-1");
	assert_string_equal(json_str(o, "certificateId"), CERT_ID_B);
	assert_string_equal(json_str(o, "endpoint"), "abc-ats.iot.eu-central-1.amazonaws.com");
	assert_int_equal(json_int(o, "port"), 8883);
	assert_string_equal(json_str(o, "template"), "GatewayTemplate");
	assert_string_equal(json_str(o, "caFile"), "/etc/fleetprovd/AmazonRootCA1.pem");
	assert_string_equal(json_str(o, "provisionedAt"), "2023-11-14T22:13:20Z");
	assert_int_equal(json_int(o, "provisionedAtUsec"), 1700000000123456);
	assert_int_equal(json_int(o, "certificateNotAfter"), 2000000000);
	assert_true(json_object_object_get_ex(o, "deviceConfiguration", &devconf));
	assert_int_equal(json_object_object_length(devconf), 2);
	assert_string_equal(json_str(devconf, "mqtt-topic.prefix"), "gw/1");
	assert_string_equal(json_str(devconf, "greeting"), commit_devconf[1].value);
	assert_true(json_object_object_get_ex(o, "manifest", &manifest));
	assert_int_equal(json_object_object_length(manifest), 2);
	check_manifest_entry(manifest, gen_fd, STORE_KEY_FILE);
	check_manifest_entry(manifest, gen_fd, STORE_CERT_FILE);
	/* A commit proves nothing yet: store_mark_verified() is for after the connect. */
	assert_true(json_object_object_get_ex(o, "verified", &devconf));
	assert_true(json_object_is_type(devconf, json_type_boolean));
	assert_false(json_object_get_boolean(devconf));
	assert_false(json_object_object_get_ex(o, "verifiedAt", NULL));
}

static void check_identity_env(struct fixture *f, int gen_fd)
{
	_cleanup_free_ char *text = read_at(gen_fd, STORE_IDENTITY_ENV), *expected = NULL;

	assert_true(
	    asprintf(&expected,
	             "# fleetprovd identity; generated with identity.json, do not edit.\n"
	             "FLEETPROVD_THING_NAME=\"gw-1\"\n"
	             "FLEETPROVD_CERTIFICATE_ID=\"" CERT_ID_B "\"\n"
	             "FLEETPROVD_ENDPOINT=\"abc-ats.iot.eu-central-1.amazonaws.com\"\n"
	             "FLEETPROVD_PORT=\"8883\"\n"
	             "FLEETPROVD_TEMPLATE=\"GatewayTemplate\"\n"
	             "FLEETPROVD_CA_FILE=\"/etc/fleetprovd/AmazonRootCA1.pem\"\n"
	             "FLEETPROVD_CERTIFICATE_FILE=\"%s/current/device.crt\"\n"
	             "FLEETPROVD_PRIVATE_KEY_FILE=\"%s/current/device.key\"\n"
	             "FLEETPROVD_CONFIG_MQTT_TOPIC_PREFIX=\"gw/1\"\n"
	             "FLEETPROVD_CONFIG_GREETING=\"say \\\"hi\\\" \\$HOME \\`id\\` \\\\ done\n"
	             "line two\"\n",
	             f->state, f->state) > 0);
	assert_string_equal(text, expected);
}

/* The shell reads identity.env back to exactly the values written. */
static void check_env_sourced_by_shell(struct fixture *f)
{
	char cmd[PATH_MAX * 2], out[512] = "";
	size_t n;
	FILE *p;

	snprintf(cmd, sizeof(cmd),
	         "/bin/sh -c '. \"$1\" && printf %%s \"$FLEETPROVD_CONFIG_GREETING\"' sh "
	         "%s/current/identity.env",
	         f->state);
	p = popen(cmd, "re");
	assert_non_null(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	assert_int_equal(pclose(p), 0);
	assert_string_equal(out, commit_devconf[1].value);
}

static void check_current(struct fixture *f, const char *cert_id)
{
	char target[PATH_MAX], expected[128];
	ssize_t n;

	n = readlinkat(store_dirfd(f->store), STORE_CURRENT_LINK, target, sizeof(target) - 1);
	assert_true(n > 0);
	target[n] = '\0';
	snprintf(expected, sizeof(expected), STORE_GEN_PREFIX "%s", cert_id);
	assert_string_equal(target, expected);
}

static void test_commit(void **state)
{
	struct fixture *f = *state;
	struct store_identity id = make_identity(f, CERT_ID_B);
	_cleanup_free_ char *names = NULL, *gen_names = NULL, *key = NULL, *crt = NULL;
	_cleanup_close_ int gen_fd = -1;

	save_full_attempt(f);
	umask(077);
	assert_int_equal(store_commit(f->store, &id), 0);

	check_current(f, CERT_ID_B);
	names = list_dir(store_dirfd(f->store));
	assert_string_equal(names, "current gen-" CERT_ID_B);
	gen_fd =
	    openat(store_dirfd(f->store), STORE_CURRENT_LINK, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(gen_fd >= 0);
	gen_names = list_dir(gen_fd);
	assert_string_equal(gen_names, "device.crt device.key identity.env identity.json");
	assert_int_equal(mode_at(store_dirfd(f->store), "gen-" CERT_ID_B), 0750);
	assert_int_equal(mode_at(gen_fd, STORE_KEY_FILE), 0640);
	assert_int_equal(mode_at(gen_fd, STORE_CERT_FILE), 0644);
	assert_int_equal(mode_at(gen_fd, STORE_IDENTITY_ENV), 0644);
	assert_int_equal(mode_at(gen_fd, STORE_IDENTITY_JSON), 0644);
	key = read_at(gen_fd, STORE_KEY_FILE);
	crt = read_at(gen_fd, STORE_CERT_FILE);
	assert_string_equal(key, f->key_pem);
	assert_string_equal(crt, FAKE_CERT);
	check_identity_json(gen_fd);
	check_identity_env(f, gen_fd);
	check_env_sourced_by_shell(f);
}

static void test_commit_umask0(void **state)
{
	struct fixture *f = *state;
	struct store_identity id = make_identity(f, CERT_ID_B);
	_cleanup_close_ int gen_fd = -1;

	umask(0);
	assert_int_equal(store_commit(f->store, &id), 0);
	gen_fd =
	    openat(store_dirfd(f->store), STORE_CURRENT_LINK, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(gen_fd >= 0);
	assert_int_equal(mode_at(store_dirfd(f->store), "gen-" CERT_ID_B), 0750);
	assert_int_equal(mode_at(gen_fd, STORE_KEY_FILE), 0640);
	assert_int_equal(mode_at(gen_fd, STORE_CERT_FILE), 0644);
	assert_int_equal(mode_at(gen_fd, STORE_IDENTITY_JSON), 0644);
}

static void test_commit_replaces_generation(void **state)
{
	struct fixture *f = *state;
	struct store_identity a = make_identity(f, CERT_ID_A), b = make_identity(f, CERT_ID_B);
	_cleanup_free_ char *names = NULL;

	assert_int_equal(store_commit(f->store, &a), 0);
	check_current(f, CERT_ID_A);
	save_full_attempt(f);
	assert_int_equal(store_commit(f->store, &b), 0);
	check_current(f, CERT_ID_B);
	names = list_dir(store_dirfd(f->store));
	assert_string_equal(names, "current gen-" CERT_ID_B);
}

/*
 * Power cut during a commit: gen-B/ was half written and current.tmp created, but current
 * still points at gen-A. Committing B again must finish the job.
 */
static void test_commit_interrupted(void **state)
{
	struct fixture *f = *state;
	struct store_identity a = make_identity(f, CERT_ID_A), b = make_identity(f, CERT_ID_B);
	int dirfd = store_dirfd(f->store);
	_cleanup_free_ char *names = NULL, *key = NULL;
	_cleanup_close_ int gen_fd = -1;

	assert_int_equal(store_commit(f->store, &a), 0);
	save_full_attempt(f);
	assert_int_equal(mkdirat(dirfd, "gen-" CERT_ID_B, 0700), 0);
	gen_fd = openat(dirfd, "gen-" CERT_ID_B, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(gen_fd >= 0);
	assert_int_equal(store_write_atomic(gen_fd, STORE_KEY_FILE, "trunc", 5, 0600), 0);
	assert_int_equal(store_write_atomic(gen_fd, ".device.crt.Ab12Cd", "-----", 5, 0600), 0);
	assert_int_equal(symlinkat("gen-" CERT_ID_B, dirfd, "current.tmp"), 0);
	check_current(f, CERT_ID_A);

	assert_int_equal(store_commit(f->store, &b), 0);
	check_current(f, CERT_ID_B);
	names = list_dir(dirfd);
	assert_string_equal(names, "current gen-" CERT_ID_B);
	key = read_at(gen_fd, STORE_KEY_FILE);
	assert_string_equal(key, f->key_pem);
	/* The reused directory keeps its mode: only files are replaced. */
	assert_int_equal(mode_at(gen_fd, STORE_KEY_FILE), 0640);
	check_identity_json(gen_fd);
}

/* Only identity.json changes, atomically, and the manifest still matches the files. */
static void test_mark_verified(void **state)
{
	struct fixture *f = *state;
	struct store_identity id = make_identity(f, CERT_ID_B);
	_cleanup_free_ char *text = NULL, *gen_names = NULL;
	_cleanup_(json_object_putp) json_object *o = NULL;
	_cleanup_close_ int gen_fd = -1;
	json_object *v;

	assert_int_equal(store_mark_verified(f->store, CERT_ID_B, 1700000500000000), -ENOENT);
	assert_int_equal(store_commit(f->store, &id), 0);
	assert_int_equal(store_mark_verified(f->store, CERT_ID_A, 1700000500000000), -ESTALE);
	assert_int_equal(store_mark_verified(f->store, "nope", 1700000500000000), -EINVAL);
	assert_int_equal(store_mark_verified(NULL, CERT_ID_B, 1700000500000000), -EINVAL);
	umask(077);
	assert_int_equal(store_mark_verified(f->store, CERT_ID_B, 1700000500000000), 0);

	gen_fd =
	    openat(store_dirfd(f->store), STORE_CURRENT_LINK, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(gen_fd >= 0);
	gen_names = list_dir(gen_fd);
	assert_string_equal(gen_names, "device.crt device.key identity.env identity.json");
	assert_int_equal(mode_at(gen_fd, STORE_IDENTITY_JSON), 0644);
	text = read_at(gen_fd, STORE_IDENTITY_JSON);
	o = json_tokener_parse(text);
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "verified", &v));
	assert_true(json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v));
	assert_string_equal(json_str(o, "verifiedAt"), "2023-11-14T22:21:40Z");
	assert_int_equal(json_int(o, "verifiedAtUsec"), 1700000500000000);
	/* Everything else is as committed, the manifest included. */
	assert_string_equal(json_str(o, "thingName"), "gw-1");
	assert_int_equal(json_int(o, "provisionedAtUsec"), 1700000000123456);
	assert_true(json_object_object_get_ex(o, "manifest", &v));
	check_manifest_entry(v, gen_fd, STORE_KEY_FILE);
	check_manifest_entry(v, gen_fd, STORE_CERT_FILE);
	/* Idempotent: a second proof only moves the time. */
	assert_int_equal(store_mark_verified(f->store, CERT_ID_B, 1700000600000000), 0);
}

static void test_commit_bad_args(void **state)
{
	struct fixture *f = *state;
	struct store_identity id = make_identity(f, "../../../etc");
	_cleanup_free_ char *names = NULL;

	assert_int_equal(store_commit(f->store, &id), -EINVAL);
	id = make_identity(f, CERT_ID_A);
	id.key_pem = NULL;
	assert_int_equal(store_commit(f->store, &id), -EINVAL);
	id = make_identity(f, CERT_ID_A);
	id.thing_name = "";
	assert_int_equal(store_commit(f->store, &id), -EINVAL);
	assert_int_equal(store_commit(f->store, NULL), -EINVAL);
	names = list_dir(store_dirfd(f->store));
	assert_string_equal(names, "");
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_open_creates_state_dir),
	    T(test_write_atomic_modes),
	    T(test_write_atomic_replaces),
	    T(test_write_atomic_failure_leaves_nothing),
	    T(test_read_file),
	    T(test_pending_round_trip),
	    T(test_pending_modes_umask0),
	    T(test_pending_key_only),
	    T(test_pending_drop_certificate),
	    T(test_pending_new_key_drops_certificate),
	    T(test_pending_damaged_files),
	    T(test_pending_symlinks_refused),
	    T(test_pending_bad_args),
	    T(test_commit),
	    T(test_commit_umask0),
	    T(test_commit_replaces_generation),
	    T(test_commit_interrupted),
	    T(test_mark_verified),
	    T(test_commit_bad_args),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
