/*
 * credentials: the fast path (manifest, no OpenSSL), the deep fallback, and every way a
 * committed identity can be unusable. Fixtures are real keys, real self-signed certificates
 * and real store_commit() output.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "credentials.h"
#include "keygen.h"
#include "macro.h"
#include "openssl-util.h"
#include "store.h"

#define CERT_ID   "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"
#define PROBE_ARG "--count-openssl-allocations"
#define DAY       (24 * 3600L)

struct fixture {
	char root[64];
	char state[128];
	struct store *store;
	EVP_PKEY *key;
	char *key_pem;
	char *cert_pem;
	int64_t not_after;
};

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* A self-signed certificate for key, valid from now+nb to now+na seconds. */
static char *make_cert(EVP_PKEY *key, long nb, long na)
{
	_cleanup_(X509_freep) X509 *x = X509_new();
	_cleanup_(BIO_free_allp) BIO *bio = BIO_new(BIO_s_mem());
	X509_NAME *name;
	char *data, *s;
	long n;

	assert_non_null(x);
	assert_non_null(bio);
	assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), nb));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), na));
	assert_int_equal(X509_set_pubkey(x, key), 1);
	name = X509_get_subject_name(x);
	assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
	                                            (const unsigned char *)"gw-1", -1, -1, 0),
	                 1);
	assert_int_equal(X509_set_issuer_name(x, name), 1);
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	assert_int_equal(PEM_write_bio_X509(bio, x), 1);
	n = BIO_get_mem_data(bio, &data);
	s = strndup(data, (size_t)n);
	assert_non_null(s);
	return s;
}

static char *make_key_pem(EVP_PKEY **ret_key)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	char *pem;

	assert_int_equal(keygen_generate(KEY_EC_P256, &key), 0);
	assert_int_equal(keygen_private_key_pem(key, &pem), 0);
	if (ret_key)
		*ret_key = TAKE_PTR(key);
	return pem;
}

static void commit_unverified(struct fixture *f, const char *cert_pem, int64_t not_after)
{
	const struct store_identity id = {
	    .thing_name = "gw-1",
	    .certificate_id = CERT_ID,
	    .certificate_pem = cert_pem,
	    .key_pem = f->key_pem,
	    .endpoint = "example-ats.iot.eu-west-1.amazonaws.com",
	    .port = 8883,
	    .ca_file = "/etc/fleetprovd/ca.pem",
	    .template_name = "T",
	    .provisioned_at_usec = 1700000000000000,
	    .not_after = not_after,
	};

	assert_int_equal(store_commit(f->store, &id), 0);
}

/* Committed, then proven by a connection: what a finished provisioning leaves. */
static void commit(struct fixture *f, const char *cert_pem, int64_t not_after)
{
	commit_unverified(f, cert_pem, not_after);
	assert_int_equal(store_mark_verified(f->store, CERT_ID, 1700000100000000), 0);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->root, "/tmp/fleetprovd-test-credentials-XXXXXX");
	assert_non_null(mkdtemp(f->root));
	snprintf(f->state, sizeof(f->state), "%s/state", f->root);
	assert_int_equal(store_open(f->state, &f->store), 0);
	f->key_pem = make_key_pem(&f->key);
	f->cert_pem = make_cert(f->key, -3600, 30 * DAY);
	assert_int_equal(cred_verify_pair(f->key_pem, f->cert_pem, 0, NULL, &f->not_after), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	store_free(f->store);
	EVP_PKEY_free(f->key);
	erase_and_freep(&f->key_pem);
	free(f->cert_pem);
	nftw(f->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static enum cred_state check(struct fixture *f, int64_t now, struct cred_info *info)
{
	enum cred_state s = _CRED_STATE_MAX;

	assert_int_equal(cred_check(store_dirfd(f->store), now, &s, info), 0);
	return s;
}

static void assert_invalid(struct fixture *f, int64_t now, const char *reason)
{
	struct cred_info info = {0};

	assert_int_equal(check(f, now, &info), CRED_INVALID);
	assert_non_null(info.reason);
	assert_non_null(strstr(info.reason, reason));
	cred_info_clear(&info);
}

static int current_fd(struct fixture *f)
{
	int fd =
	    openat(store_dirfd(f->store), STORE_CURRENT_LINK, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	return fd;
}

/* Move a file's mtime, as a restore from backup does: the manifest no longer matches. */
static void touch(struct fixture *f, const char *name)
{
	_cleanup_close_ int fd = current_fd(f);
	const struct timespec times[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_sec = 1600000000}};

	assert_int_equal(utimensat(fd, name, times, AT_SYMLINK_NOFOLLOW), 0);
}

/*
 * Replace a file in current/, moving its mtime off the commit's as a restore or an edit
 * would: within one clock tick a same-size replacement keeps both values the fast path trusts.
 */
static void replace(struct fixture *f, const char *name, const char *data)
{
	_cleanup_close_ int fd = current_fd(f);

	assert_int_equal(store_write_atomic(fd, name, data, strlen(data), 0644), 0);
	touch(f, name);
}

/* ---- counting OpenSSL's allocations in a fresh process ---- */

static unsigned long ossl_allocations;

static void *count_malloc(size_t n, const char *file, int line)
{
	ossl_allocations++;
	return malloc(n);
}

static void *count_realloc(void *p, size_t n, const char *file, int line)
{
	ossl_allocations++;
	return realloc(p, n);
}

static void count_free(void *p, const char *file, int line)
{
	free(p);
}

/* Child side: the hooks only install before OpenSSL's first allocation, hence a new process. */
static int probe_main(const char *state_dir)
{
	_cleanup_close_ int fd = -1;
	enum cred_state s;

	if (CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free) != 1)
		return 2;
	fd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || cred_check(fd, (int64_t)time(NULL), &s, NULL) < 0)
		return 3;
	printf("%s %lu\n", cred_state_to_string(s), ossl_allocations);
	return 0;
}

/* Run cred_check in a fresh process; returns how often OpenSSL allocated memory. */
static unsigned long probe(struct fixture *f, const char *expected_state)
{
	char exe[PATH_MAX], cmd[PATH_MAX * 2], state_name[16];
	unsigned long count;
	ssize_t n;
	FILE *p;

	/* readlink, not execve("/proc/self/exe"): valgrind reports the test binary here. */
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = '\0';
	snprintf(cmd, sizeof(cmd), "'%s' " PROBE_ARG " '%s'", exe, f->state);
	p = popen(cmd, "re");
	assert_non_null(p);
	assert_int_equal(fscanf(p, "%15s %lu", state_name, &count), 2);
	assert_int_equal(pclose(p), 0);
	assert_string_equal(state_name, expected_state);
	return count;
}

/* ---- tests ---- */

static void test_state_strings(void **state)
{
	assert_string_equal(cred_state_to_string(CRED_MISSING), "missing");
	assert_string_equal(cred_state_to_string(CRED_VALID), "valid");
	assert_string_equal(cred_state_to_string(CRED_INVALID), "invalid");
	assert_string_equal(cred_state_to_string(CRED_UNVERIFIED), "unverified");
	assert_null(cred_state_to_string(_CRED_STATE_MAX));
}

static void test_missing(void **state)
{
	struct fixture *f = *state;
	struct cred_info info = {0};
	enum cred_state s;

	assert_int_equal(check(f, 0, &info), CRED_MISSING);
	assert_null(info.reason);
	assert_null(info.thing_name);
	/* An attempt in flight is not a committed identity. */
	assert_int_equal(store_pending_save_attempt(f->store, 1, 1, NULL), 0);
	assert_int_equal(check(f, (int64_t)time(NULL), NULL), CRED_MISSING);
	assert_int_equal(cred_check(-1, 0, &s, NULL), -EINVAL);
	assert_int_equal(cred_check(store_dirfd(f->store), 0, NULL, NULL), -EINVAL);
}

static void test_valid(void **state)
{
	struct fixture *f = *state;
	struct cred_info info = {0};

	commit(f, f->cert_pem, f->not_after);
	assert_int_equal(check(f, (int64_t)time(NULL), &info), CRED_VALID);
	assert_string_equal(info.thing_name, "gw-1");
	assert_string_equal(info.certificate_id, CERT_ID);
	assert_int_equal(info.not_after, f->not_after);
	assert_int_equal(info.provisioned_at_usec, 1700000000000000);
	assert_null(info.reason);
	cred_info_clear(&info);
	assert_null(info.thing_name);
	assert_int_equal(check(f, 0, NULL), CRED_VALID);
}

/* Committed but never connected with: whole, yet told apart from valid, on both paths. */
static void test_unverified(void **state)
{
	struct fixture *f = *state;
	struct cred_info info = {0};

	commit_unverified(f, f->cert_pem, f->not_after);
	assert_int_equal(check(f, (int64_t)time(NULL), &info), CRED_UNVERIFIED);
	assert_string_equal(info.thing_name, "gw-1");
	assert_string_equal(info.certificate_id, CERT_ID);
	assert_int_equal(info.not_after, f->not_after);
	assert_non_null(info.reason);
	cred_info_clear(&info);
	assert_int_equal(probe(f, "unverified"), 0);
	touch(f, STORE_KEY_FILE);
	assert_int_equal(check(f, (int64_t)time(NULL), NULL), CRED_UNVERIFIED);
	/* Broken beats unverified: provisioning again is the only way out. */
	replace(f, STORE_CERT_FILE, "-----BEGIN CERTIFICATE-----\nnonsense\n");
	assert_invalid(f, (int64_t)time(NULL), "does not parse");
}

/* Only "verified": true counts; absent (an older identity.json) or any other value does not. */
static void test_verified_flag_is_strict(void **state)
{
	struct fixture *f = *state;
	_cleanup_close_ int fd = -1;
	_cleanup_free_ char *text = NULL;
	char *at;

	commit(f, f->cert_pem, f->not_after);
	assert_int_equal(check(f, 0, NULL), CRED_VALID);
	fd = current_fd(f);
	assert_int_equal(store_read_file(fd, STORE_IDENTITY_JSON, 1u << 20, &text, NULL), 0);
	assert_non_null(strstr(text, "\"verifiedAt\""));
	at = strstr(text, "\"verified\": true");
	assert_non_null(at);
	memcpy(at, "\"verified\": 1   ", strlen("\"verified\": true"));
	/* The manifest covers key and certificate only: the fast path still reads this file. */
	assert_int_equal(store_write_atomic(fd, STORE_IDENTITY_JSON, text, strlen(text), 0644), 0);
	assert_int_equal(check(f, 0, NULL), CRED_UNVERIFIED);
	memcpy(at, "\"verifiex\": true", strlen("\"verified\": true"));
	assert_int_equal(store_write_atomic(fd, STORE_IDENTITY_JSON, text, strlen(text), 0644), 0);
	assert_int_equal(check(f, 0, NULL), CRED_UNVERIFIED);
}

/* The boot fast path must not touch OpenSSL; the deep check does (so the probe can tell). */
static void test_fast_path_skips_openssl(void **state)
{
	struct fixture *f = *state;

	commit(f, f->cert_pem, f->not_after);
	assert_int_equal(probe(f, "valid"), 0);
	touch(f, STORE_CERT_FILE);
	assert_true(probe(f, "valid") > 0);
}

/* Restored from a backup: new mtimes, same good files. The deep check vouches for them. */
static void test_manifest_mismatch_still_valid(void **state)
{
	struct fixture *f = *state;
	struct cred_info info = {0};

	commit(f, f->cert_pem, f->not_after);
	touch(f, STORE_KEY_FILE);
	assert_int_equal(check(f, (int64_t)time(NULL), &info), CRED_VALID);
	assert_int_equal(info.not_after, f->not_after);
	assert_string_equal(info.thing_name, "gw-1");
	cred_info_clear(&info);
}

static void test_key_mismatch(void **state)
{
	struct fixture *f = *state;
	_cleanup_erase_ char *other = make_key_pem(NULL);

	commit(f, f->cert_pem, f->not_after);
	replace(f, STORE_KEY_FILE, other);
	assert_invalid(f, (int64_t)time(NULL), "does not belong");
	assert_invalid(f, 0, "does not belong");
}

static void test_expired(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *old = make_cert(f->key, -10 * DAY, -DAY);
	int64_t not_after;

	assert_int_equal(cred_verify_pair(f->key_pem, old, 0, NULL, &not_after), 0);
	commit(f, old, not_after);
	/* Fast path: from identity.json's certificateNotAfter. */
	assert_invalid(f, (int64_t)time(NULL), "expired");
	/* Clock not trusted: expiry is not judged. */
	assert_int_equal(check(f, 0, NULL), CRED_VALID);
	/* Deep path: from the certificate itself. */
	touch(f, STORE_CERT_FILE);
	assert_invalid(f, (int64_t)time(NULL), "expired");
	assert_int_equal(check(f, 0, NULL), CRED_VALID);
}

static void test_not_yet_valid_deep(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *future = make_cert(f->key, DAY, 10 * DAY);

	commit(f, future, (int64_t)time(NULL) + 10 * DAY);
	touch(f, STORE_CERT_FILE);
	assert_invalid(f, (int64_t)time(NULL), "not yet valid");
}

static void test_garbage_certificate(void **state)
{
	struct fixture *f = *state;

	commit(f, f->cert_pem, f->not_after);
	replace(f, STORE_CERT_FILE, "-----BEGIN CERTIFICATE-----\nnonsense\n");
	assert_invalid(f, (int64_t)time(NULL), "does not parse");
	replace(f, STORE_CERT_FILE, f->cert_pem);
	assert_int_equal(check(f, (int64_t)time(NULL), NULL), CRED_VALID);
	replace(f, STORE_KEY_FILE, "");
	assert_invalid(f, (int64_t)time(NULL), "does not parse");
}

static void test_broken_identity(void **state)
{
	struct fixture *f = *state;
	_cleanup_close_ int fd = -1;

	commit(f, f->cert_pem, f->not_after);
	fd = current_fd(f);
	replace(f, STORE_IDENTITY_JSON, "{\"thingName\": \"gw-1\", \"certif");
	assert_invalid(f, 0, "does not parse");
	replace(f, STORE_IDENTITY_JSON, "[1, 2]");
	assert_invalid(f, 0, "does not parse");
	replace(f, STORE_IDENTITY_JSON, "{\"certificateId\": \"" CERT_ID "\"}");
	assert_invalid(f, 0, "lacks thingName");
	assert_int_equal(unlinkat(fd, STORE_IDENTITY_JSON, 0), 0);
	assert_invalid(f, 0, "identity.json is missing");
}

static void test_missing_files(void **state)
{
	struct fixture *f = *state;
	_cleanup_close_ int fd = -1;

	commit(f, f->cert_pem, f->not_after);
	fd = current_fd(f);
	assert_int_equal(unlinkat(fd, STORE_CERT_FILE, 0), 0);
	assert_invalid(f, 0, "missing");
	/* A symlink where the key was is not the key. */
	assert_int_equal(symlinkat("/etc/passwd", fd, STORE_CERT_FILE), 0);
	assert_invalid(f, 0, "missing");
}

static void test_broken_current(void **state)
{
	struct fixture *f = *state;
	int dirfd = store_dirfd(f->store);

	assert_int_equal(symlinkat("gen-gone", dirfd, STORE_CURRENT_LINK), 0);
	assert_invalid(f, 0, "missing generation");
	assert_int_equal(unlinkat(dirfd, STORE_CURRENT_LINK, 0), 0);
	assert_int_equal(store_write_atomic(dirfd, STORE_CURRENT_LINK, "x", 1, 0600), 0);
	assert_invalid(f, 0, "not a directory");
}

static void test_verify_pair(void **state)
{
	struct fixture *f = *state;
	_cleanup_erase_ char *other = make_key_pem(NULL);
	_cleanup_free_ char *old = make_cert(f->key, -10 * DAY, -DAY);
	int64_t now = (int64_t)time(NULL), nb = 0, na = 0;

	assert_int_equal(cred_verify_pair(f->key_pem, f->cert_pem, now, &nb, &na), 0);
	assert_true(nb <= now - 3600 + 5 && nb >= now - 3600 - 5);
	assert_true(na >= now + 30 * DAY - 5 && na <= now + 30 * DAY + 5);
	assert_int_equal(cred_verify_pair(other, f->cert_pem, now, NULL, NULL), -EKEYREJECTED);
	assert_int_equal(cred_verify_pair(f->key_pem, old, now, NULL, NULL), -EKEYEXPIRED);
	assert_int_equal(cred_verify_pair(f->key_pem, old, 0, NULL, NULL), 0);
	assert_int_equal(cred_verify_pair(f->key_pem, "garbage", now, NULL, NULL), -EBADMSG);
	assert_int_equal(cred_verify_pair("garbage", f->cert_pem, now, NULL, NULL), -EBADMSG);
	assert_int_equal(cred_verify_pair(NULL, f->cert_pem, now, NULL, NULL), -EINVAL);
}

static void test_certificate_file_validity(void **state)
{
	struct fixture *f = *state;
	char path[192];
	int64_t nb = 0, na = 0, nb2, na2;
	FILE *out;

	snprintf(path, sizeof(path), "%s/claim.crt", f->root);
	out = fopen(path, "we");
	assert_non_null(out);
	fputs(f->cert_pem, out);
	assert_int_equal(fclose(out), 0);
	assert_int_equal(cred_certificate_file_validity(path, &nb, &na), 0);
	assert_int_equal(cred_verify_pair(f->key_pem, f->cert_pem, 0, &nb2, &na2), 0);
	assert_int_equal(nb, nb2);
	assert_int_equal(na, na2);

	out = fopen(path, "we");
	assert_non_null(out);
	fputs("not a certificate\n", out);
	assert_int_equal(fclose(out), 0);
	assert_int_equal(cred_certificate_file_validity(path, &nb, &na), -EBADMSG);
	snprintf(path, sizeof(path), "%s/absent.crt", f->root);
	assert_int_equal(cred_certificate_file_validity(path, &nb, &na), -ENOENT);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(int argc, char *argv[])
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_state_strings),
	    T(test_missing),
	    T(test_valid),
	    T(test_unverified),
	    T(test_verified_flag_is_strict),
	    T(test_fast_path_skips_openssl),
	    T(test_manifest_mismatch_still_valid),
	    T(test_key_mismatch),
	    T(test_expired),
	    T(test_not_yet_valid_deep),
	    T(test_garbage_certificate),
	    T(test_broken_identity),
	    T(test_missing_files),
	    T(test_broken_current),
	    T(test_verify_pair),
	    T(test_certificate_file_validity),
	};

	if (argc == 3 && strcmp(argv[1], PROBE_ARG) == 0)
		return probe_main(argv[2]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
