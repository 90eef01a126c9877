/*
 * Are the committed credentials usable? The boot fast path compares identity.json's manifest
 * with two fstatat() calls and never touches OpenSSL (PEM parsing alone costs more than the
 * rest of an already-provisioned boot); the deep check parses and matches key and certificate.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "credentials.h"
#include "keygen.h"
#include "macro.h"
#include "openssl-util.h"
#include "store.h"

/* Key PEMs are a few KB (RSA-4096 PKCS#8 is ~3.3 KB); a bigger device.key is not ours. */
#define CRED_KEY_PEM_MAX (64u * 1024u)
/* device.crt is AWS's certificatePem, bounded by the protocol (spec §1.3). */
#define CRED_CERT_PEM_MAX PROTO_CERT_PEM_MAX
/* A configured certificate file may hold a chain; only the first certificate is read. */
#define CRED_CERT_FILE_MAX (1024u * 1024u)
/*
 * identity.json carries DeviceConfiguration: its protocol limits with every character escaped
 * as \u00XX at worst (x6), plus room for the other fields. Far above any real file.
 */
#define CRED_IDENTITY_JSON_MAX                                                                     \
	(6u * PROTO_DEVCONF_ENTRIES_MAX * (PROTO_DEVCONF_KEY_MAX + PROTO_DEVCONF_VALUE_MAX) +      \
	 64u * 1024u)
#define NSEC_PER_SEC INT64_C(1000000000)

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put)

static const char *const cred_state_table[_CRED_STATE_MAX] = {
    [CRED_MISSING] = "missing",
    [CRED_VALID] = "valid",
    [CRED_INVALID] = "invalid",
    [CRED_UNVERIFIED] = "unverified",
};

const char *cred_state_to_string(enum cred_state s)
{
	if (s < 0 || s >= _CRED_STATE_MAX)
		return NULL;
	return cred_state_table[s];
}

void cred_info_clear(struct cred_info *i)
{
	if (!i)
		return;
	free(i->thing_name);
	free(i->certificate_id);
	*i = (struct cred_info){0};
}

/* ---- deep check (OpenSSL) ---- */

/* Certificates are never encrypted; without this OpenSSL would prompt on the terminal. */
static int no_password(char *buf, int size, int rwflag, void *userdata)
{
	return 0;
}

static int asn1_time_to_sec(const ASN1_TIME *t, int64_t *ret)
{
	struct tm tm;

	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return -EBADMSG;
	*ret = (int64_t)timegm(&tm);
	return 0;
}

static int certificate_validity(X509 *cert, int64_t *ret_not_before, int64_t *ret_not_after)
{
	int64_t nb, na;

	if (asn1_time_to_sec(X509_get0_notBefore(cert), &nb) < 0 ||
	    asn1_time_to_sec(X509_get0_notAfter(cert), &na) < 0)
		return -EBADMSG;
	*ret_not_before = nb;
	*ret_not_after = na;
	return 0;
}

static int parse_certificate(const char *pem, X509 **ret)
{
	_cleanup_(BIO_free_allp) BIO *bio = NULL;
	size_t len = strlen(pem);
	X509 *cert;
	int r;

	if (len > CRED_CERT_FILE_MAX)
		return -EBADMSG;
	bio = BIO_new_mem_buf(pem, (int)len);
	if (!bio)
		return ossl_error("Failed to allocate BIO");
	cert = PEM_read_bio_X509(bio, NULL, no_password, NULL);
	if (!cert) {
		r = ossl_error("Failed to parse certificate");
		return r == -ENOMEM ? r : -EBADMSG;
	}
	*ret = cert;
	return 0;
}

/*
 * The key, decoded as the type of the certificate's public key. Told no type, OpenSSL 3's
 * PEM key decoder tries every decoder it has: 4.8 M instructions against 1.7 M, and this
 * runs in every provisioning. Whatever goes wrong is left to keygen's generic loader.
 */
static int load_key_of_certificate_type(const char *key_pem, X509 *cert, EVP_PKEY **ret)
{
	EVP_PKEY *pub = X509_get0_pubkey(cert);
	const char *type = pub ? EVP_PKEY_get0_type_name(pub) : NULL;
	_cleanup_(BIO_free_allp) BIO *bio = NULL;
	OSSL_DECODER_CTX *dctx = NULL;
	EVP_PKEY *key = NULL;
	size_t len = strlen(key_pem);

	if (type && len <= INT_MAX)
		bio = BIO_new_mem_buf(key_pem, (int)len);
	if (bio)
		dctx = OSSL_DECODER_CTX_new_for_pkey(&key, "PEM", NULL, type, EVP_PKEY_KEYPAIR,
		                                     NULL, NULL);
	if (dctx && OSSL_DECODER_from_bio(dctx, bio) == 1 && key) {
		OSSL_DECODER_CTX_free(dctx);
		*ret = key;
		return 0;
	}
	OSSL_DECODER_CTX_free(dctx);
	EVP_PKEY_free(key);
	ERR_clear_error();
	return keygen_load_private_key(key_pem, ret);
}

int cred_verify_pair(const char *key_pem, const char *cert_pem, int64_t now_sec,
                     int64_t *ret_not_before, int64_t *ret_not_after)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	_cleanup_(X509_freep) X509 *cert = NULL;
	int64_t nb, na;
	int r;

	if (!key_pem || !cert_pem)
		return -EINVAL;
	r = parse_certificate(cert_pem, &cert);
	if (r < 0)
		return r;
	r = load_key_of_certificate_type(key_pem, cert, &key);
	if (r < 0)
		return r;
	r = certificate_validity(cert, &nb, &na);
	if (r < 0)
		return r;
	if (EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
		ERR_clear_error();
		return -EKEYREJECTED;
	}
	if (now_sec != 0 && (now_sec < nb || now_sec > na))
		return -EKEYEXPIRED;
	if (ret_not_before)
		*ret_not_before = nb;
	if (ret_not_after)
		*ret_not_after = na;
	return 0;
}

int cred_certificate_file_validity(const char *path, int64_t *ret_not_before,
                                   int64_t *ret_not_after)
{
	_cleanup_(X509_freep) X509 *cert = NULL;
	_cleanup_fclose_ FILE *f = NULL;
	int64_t nb, na;
	int r;

	if (!path)
		return -EINVAL;
	f = fopen(path, "re");
	if (!f)
		return NEG_ERRNO();
	cert = PEM_read_X509(f, NULL, no_password, NULL);
	if (!cert) {
		r = ossl_error("Failed to parse certificate file");
		return r == -ENOMEM ? r : -EBADMSG;
	}
	r = certificate_validity(cert, &nb, &na);
	if (r < 0)
		return r;
	if (ret_not_before)
		*ret_not_before = nb;
	if (ret_not_after)
		*ret_not_after = na;
	return 0;
}

/* ---- fast path (no OpenSSL) ---- */

/* The verdict being built: INVALID verdicts carry a static reason. */
struct verdict {
	enum cred_state state;
	struct cred_info info;
};

static int invalid(struct verdict *v, const char *reason)
{
	v->state = CRED_INVALID;
	v->info.reason = reason;
	return 0;
}

static int json_get_int64(json_object *o, const char *key, int64_t *ret)
{
	json_object *v;

	if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return -ENOENT;
	*ret = json_object_get_int64(v);
	return 0;
}

static const char *json_get_nonempty(json_object *o, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string) ||
	    json_object_get_string_len(v) <= 0)
		return NULL;
	return json_object_get_string(v);
}

/* Open current/ (following that one link); classify its absence. 1 = opened, 0 = verdict. */
static int open_current(int state_dirfd, int *ret_fd, struct verdict *v)
{
	struct stat st;
	int fd;

	fd = openat(state_dirfd, STORE_CURRENT_LINK, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		*ret_fd = fd;
		return 1;
	}
	if (errno == ENOTDIR)
		return invalid(v, "current is not a directory");
	if (errno != ENOENT)
		return NEG_ERRNO();
	if (fstatat(state_dirfd, STORE_CURRENT_LINK, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return invalid(v, "current points to a missing generation");
	v->state = CRED_MISSING;
	return 0;
}

/* Read identity.json. 1 = parsed, 0 = verdict. */
static int read_identity(int cur_fd, json_object **ret, struct verdict *v)
{
	_cleanup_free_ char *text = NULL;
	json_object *o;
	int r;

	r = store_read_file(cur_fd, STORE_IDENTITY_JSON, CRED_IDENTITY_JSON_MAX, &text, NULL);
	if (r == -ENOENT)
		return invalid(v, "identity.json is missing");
	if (r == -ELOOP || r == -EISDIR || r == -EBADFD || r == -EFBIG)
		return invalid(v, "identity.json is not a regular file of sane size");
	if (r < 0)
		return r;
	o = json_tokener_parse(text);
	if (!o || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return invalid(v, "identity.json does not parse");
	}
	*ret = o;
	return 1;
}

static int take_identity_fields(json_object *identity, struct verdict *v)
{
	const char *thing = json_get_nonempty(identity, "thingName");
	const char *id = json_get_nonempty(identity, "certificateId");
	int64_t usec;

	if (!thing || !id)
		return invalid(v, "identity.json lacks thingName or certificateId");
	v->info.thing_name = strdup(thing);
	v->info.certificate_id = strdup(id);
	if (!v->info.thing_name || !v->info.certificate_id)
		return -ENOMEM;
	if (json_get_int64(identity, "provisionedAtUsec", &usec) == 0 && usec > 0)
		v->info.provisioned_at_usec = (uint64_t)usec;
	return 1;
}

/*
 * Does name in cur_fd match its manifest entry? 1 = yes, 0 = no (fall back to the deep
 * check), -ENOENT = the file is gone or is not a regular file.
 */
static int file_matches_manifest(int cur_fd, const char *name, json_object *manifest)
{
	json_object *entry = NULL;
	int64_t size, mtime;
	struct stat st;

	if (fstatat(cur_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? -ENOENT : NEG_ERRNO();
	if (!S_ISREG(st.st_mode))
		return -ENOENT;
	if (!manifest || !json_object_object_get_ex(manifest, name, &entry) ||
	    json_get_int64(entry, "size", &size) < 0 ||
	    json_get_int64(entry, "mtimeNsec", &mtime) < 0)
		return 0;
	return size == (int64_t)st.st_size &&
	       mtime == (int64_t)st.st_mtim.tv_sec * NSEC_PER_SEC + st.st_mtim.tv_nsec;
}

/* 1 = both files match the manifest, 0 = a verdict or "use the deep check" (*ret_deep). */
static int check_manifest(int cur_fd, json_object *identity, bool *ret_deep, struct verdict *v)
{
	static const char *const files[] = {STORE_KEY_FILE, STORE_CERT_FILE};
	json_object *manifest = NULL;
	bool match = true;

	(void)json_object_object_get_ex(identity, "manifest", &manifest);
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		int r = file_matches_manifest(cur_fd, files[i], manifest);

		if (r == -ENOENT)
			return invalid(v, "device.key or device.crt is missing");
		if (r < 0)
			return r;
		match = match && r > 0;
	}
	*ret_deep = !match;
	return match;
}

static int deep_check(int cur_fd, int64_t now_sec, struct verdict *v)
{
	_cleanup_erase_ char *key = NULL;
	_cleanup_free_ char *cert = NULL;
	int64_t not_after;
	int r;

	r = store_read_file(cur_fd, STORE_KEY_FILE, CRED_KEY_PEM_MAX, &key, NULL);
	if (r == 0)
		r = store_read_file(cur_fd, STORE_CERT_FILE, CRED_CERT_PEM_MAX, &cert, NULL);
	if (r == -ENOENT || r == -ELOOP || r == -EISDIR || r == -EBADFD || r == -EFBIG)
		return invalid(v, "device.key or device.crt is not a regular file of sane size");
	if (r < 0)
		return r;
	r = cred_verify_pair(key, cert, now_sec, NULL, &not_after);
	if (r == -EBADMSG)
		return invalid(v, "device.key or device.crt does not parse");
	if (r == -EKEYREJECTED)
		return invalid(v, "device.key does not belong to device.crt");
	if (r == -EKEYEXPIRED)
		return invalid(v, "the certificate has expired or is not yet valid");
	if (r < 0)
		return r;
	v->info.not_after = not_after;
	v->state = CRED_VALID;
	return 0;
}

static int check_expiry(json_object *identity, int64_t now_sec, struct verdict *v)
{
	int64_t not_after;

	if (json_get_int64(identity, "certificateNotAfter", &not_after) < 0)
		return invalid(v, "identity.json lacks certificateNotAfter");
	v->info.not_after = not_after;
	if (now_sec != 0 && now_sec > not_after)
		return invalid(v, "the certificate has expired");
	v->state = CRED_VALID;
	return 0;
}

/* Absent counts as not verified: only a successful verify connect writes true. */
static bool identity_verified(json_object *identity)
{
	json_object *v;

	return json_object_object_get_ex(identity, "verified", &v) &&
	       json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
}

/* A whole identity nobody has connected with yet is told apart, never taken for valid. */
static void judge_verified(json_object *identity, struct verdict *v)
{
	if (v->state != CRED_VALID || identity_verified(identity))
		return;
	v->state = CRED_UNVERIFIED;
	v->info.reason = "committed, but no connection with it has succeeded yet";
}

static int check_current(int state_dirfd, int64_t now_sec, struct verdict *v)
{
	_cleanup_(json_object_putp) json_object *identity = NULL;
	_cleanup_close_ int cur_fd = -1;
	bool deep = false;
	int r;

	r = open_current(state_dirfd, &cur_fd, v);
	if (r <= 0)
		return r;
	r = read_identity(cur_fd, &identity, v);
	if (r <= 0)
		return r;
	r = take_identity_fields(identity, v);
	if (r <= 0)
		return r;
	r = check_manifest(cur_fd, identity, &deep, v);
	if (r < 0 || (r == 0 && !deep))
		return r;
	/* Restored from a backup, or touched: the files may still be fine, so look inside. */
	r = deep ? deep_check(cur_fd, now_sec, v) : check_expiry(identity, now_sec, v);
	if (r < 0)
		return r;
	judge_verified(identity, v);
	return 0;
}

int cred_check(int state_dirfd, int64_t now_sec, enum cred_state *ret_state,
               struct cred_info *ret_info)
{
	struct verdict v = {.state = CRED_INVALID};
	int r;

	if (state_dirfd < 0 || !ret_state)
		return -EINVAL;
	r = check_current(state_dirfd, now_sec, &v);
	if (r < 0) {
		cred_info_clear(&v.info);
		return r;
	}
	*ret_state = v.state;
	if (ret_info)
		*ret_info = v.info;
	else
		cred_info_clear(&v.info);
	return 0;
}
