/* Key and CSR generation with OpenSSL 3 EVP, in memory only (design.md decision 4). */
#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>
#include <strings.h>

#include "keygen.h"
#include "macro.h"
#include "openssl-util.h"

/*
 * RFC 5280's upper bounds (64 characters for most attributes) keep any real subject far below
 * this; a longer one is a configuration mistake, not something to hand to OpenSSL.
 */
#define KEYGEN_SUBJECT_MAX 1024

struct key_spec {
	const char *curve; /* EC named curve, or NULL for RSA */
	size_t rsa_bits;
};

static const struct key_spec key_specs[_KEY_TYPE_MAX] = {
    [KEY_EC_P256] = {.curve = "P-256"},  [KEY_EC_P384] = {.curve = "P-384"},
    [KEY_RSA_2048] = {.rsa_bits = 2048}, [KEY_RSA_3072] = {.rsa_bits = 3072},
    [KEY_RSA_4096] = {.rsa_bits = 4096},
};

/* The subject attributes a gateway CSR needs; AWS copies none of them into the thing. */
static const struct {
	const char *name;
	int nid;
} subject_attrs[] = {
    {"CN", NID_commonName},
    {"O", NID_organizationName},
    {"OU", NID_organizationalUnitName},
    {"C", NID_countryName},
    {"ST", NID_stateOrProvinceName},
    {"L", NID_localityName},
    {"serialNumber", NID_serialNumber},
};

/* PEM input here is never encrypted; without this OpenSSL would prompt on the terminal. */
static int no_password(char *buf, int size, int rwflag, void *userdata)
{
	return 0;
}

/* Report an OpenSSL failure that means "the input is bad", unless it was really out of memory. */
static int ossl_bad_input(const char *what, int bad)
{
	int r = ossl_error(what);

	return r == -ENOMEM ? r : bad;
}

int keygen_generate(enum key_type type, EVP_PKEY **ret)
{
	const struct key_spec *spec;
	EVP_PKEY *key;

	if (type < 0 || type >= _KEY_TYPE_MAX || !ret)
		return -EINVAL;
	spec = &key_specs[type];
	/* OpenSSL 3 writes EC keys with the named-curve encoding by default, as AWS requires. */
	if (spec->curve)
		key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", spec->curve);
	else
		key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", spec->rsa_bits);
	if (!key)
		return ossl_error("Failed to generate key");
	*ret = key;
	return 0;
}

/* Copy a memory BIO's contents out as a NUL-terminated string. */
static int bio_to_string(BIO *bio, char **ret)
{
	char *data, *s;
	long n;

	n = BIO_get_mem_data(bio, &data);
	if (n <= 0)
		return -EIO;
	s = malloc((size_t)n + 1);
	if (!s)
		return -ENOMEM;
	memcpy(s, data, (size_t)n);
	s[n] = '\0';
	*ret = s;
	return 0;
}

int keygen_private_key_pem(EVP_PKEY *key, char **ret)
{
	_cleanup_(BIO_free_allp) BIO *bio = NULL;

	if (!key || !ret)
		return -EINVAL;
	/* A secure-memory BIO clears its buffer when freed: the PEM is the secret itself. */
	bio = BIO_new(BIO_s_secmem());
	if (!bio)
		return ossl_error("Failed to allocate BIO");
	/* PEM_write_bio_PrivateKey emits unencrypted PKCS#8 ("BEGIN PRIVATE KEY") in OpenSSL 3. */
	if (PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1)
		return ossl_error("Failed to encode private key");
	return bio_to_string(bio, ret);
}

static int pem_bio(const char *pem, BIO **ret)
{
	size_t len = strlen(pem);
	BIO *bio;

	if (len > INT_MAX)
		return -EINVAL;
	bio = BIO_new_mem_buf(pem, (int)len);
	if (!bio)
		return ossl_error("Failed to allocate BIO");
	*ret = bio;
	return 0;
}

int keygen_load_private_key(const char *pem, EVP_PKEY **ret)
{
	_cleanup_(BIO_free_allp) BIO *bio = NULL;
	EVP_PKEY *key;
	int r;

	if (!pem || !ret)
		return -EINVAL;
	r = pem_bio(pem, &bio);
	if (r < 0)
		return r;
	key = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
	if (!key)
		return ossl_bad_input("Failed to parse private key", -EBADMSG);
	*ret = key;
	return 0;
}

static int subject_attr_nid(const char *name, size_t len)
{
	for (size_t i = 0; i < ARRAY_SIZE(subject_attrs); i++)
		if (strlen(subject_attrs[i].name) == len &&
		    strncasecmp(subject_attrs[i].name, name, len) == 0)
			return subject_attrs[i].nid;
	return -EINVAL;
}

/*
 * Parse one "ATTR=value" at *p into name, unescaping "\x" to x, and move *p past the comma
 * that ends it. An empty value or a trailing comma is refused: both are typing mistakes.
 */
static int subject_add_rdn(const char **p, X509_NAME *name)
{
	_cleanup_free_ char *value = NULL;
	const char *s = *p, *eq;
	size_t n = 0;
	int nid;

	while (*s == ' ')
		s++;
	eq = strchr(s, '=');
	if (!eq)
		return -EINVAL;
	nid = subject_attr_nid(s, (size_t)(eq - s));
	if (nid < 0)
		return nid;
	value = malloc(strlen(eq));
	if (!value)
		return -ENOMEM;
	for (s = eq + 1; *s && *s != ','; s++) {
		if (*s == '\\' && *++s == '\0')
			return -EINVAL;
		value[n++] = *s;
	}
	if (n == 0 || (*s == ',' && s[1] == '\0'))
		return -EINVAL;
	/* Per-attribute limits (C is exactly 2) are OpenSSL's: a failure here is bad input. */
	if (!X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, (const unsigned char *)value,
	                                (int)n, -1, 0))
		return ossl_bad_input("Failed to add subject attribute", -EINVAL);
	*p = *s ? s + 1 : s;
	return 0;
}

static int subject_parse(const char *subject, X509_NAME **ret)
{
	_cleanup_(X509_NAME_freep) X509_NAME *name = NULL;
	const char *p = subject ? subject : "";
	int r;

	if (strlen(p) > KEYGEN_SUBJECT_MAX)
		return -EINVAL;
	name = X509_NAME_new();
	if (!name)
		return ossl_error("Failed to allocate subject");
	while (*p) {
		r = subject_add_rdn(&p, name);
		if (r < 0)
			return r;
	}
	*ret = TAKE_PTR(name);
	return 0;
}

static int csr_to_pem(X509_REQ *req, char **ret)
{
	_cleanup_(BIO_free_allp) BIO *bio = NULL;

	bio = BIO_new(BIO_s_mem());
	if (!bio)
		return ossl_error("Failed to allocate BIO");
	if (PEM_write_bio_X509_REQ(bio, req) != 1)
		return ossl_error("Failed to encode CSR");
	return bio_to_string(bio, ret);
}

int keygen_build_csr(EVP_PKEY *key, const char *subject, char **ret_pem)
{
	_cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
	_cleanup_(X509_NAME_freep) X509_NAME *name = NULL;
	int r;

	if (!key || !ret_pem)
		return -EINVAL;
	r = subject_parse(subject, &name);
	if (r < 0)
		return r;
	req = X509_REQ_new();
	if (!req)
		return ossl_error("Failed to allocate CSR");
	if (X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1 ||
	    X509_REQ_set_subject_name(req, name) != 1 || X509_REQ_set_pubkey(req, key) != 1)
		return ossl_error("Failed to fill CSR");
	if (X509_REQ_sign(req, key, EVP_sha256()) <= 0)
		return ossl_error("Failed to sign CSR");
	return csr_to_pem(req, ret_pem);
}

int keygen_csr_matches_key(const char *csr_pem, EVP_PKEY *key)
{
	_cleanup_(BIO_free_allp) BIO *bio = NULL;
	_cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
	EVP_PKEY *pub;
	int r;

	if (!csr_pem || !key)
		return -EINVAL;
	r = pem_bio(csr_pem, &bio);
	if (r < 0)
		return r;
	req = PEM_read_bio_X509_REQ(bio, NULL, no_password, NULL);
	if (!req)
		return ossl_bad_input("Failed to parse CSR", -EBADMSG);
	pub = X509_REQ_get0_pubkey(req);
	if (!pub)
		return ossl_bad_input("CSR carries no usable public key", -EBADMSG);
	if (X509_REQ_verify(req, pub) != 1)
		return ossl_bad_input("CSR signature does not verify", -EBADMSG);
	if (EVP_PKEY_eq(pub, key) != 1) {
		ERR_clear_error();
		return -EKEYREJECTED;
	}
	return 0;
}
