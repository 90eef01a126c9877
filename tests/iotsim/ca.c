/* Local certificate authority for the simulator: CSR checks, issuing, certificate ids. */
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ca.h"
#include "openssl-util.h"
#include "util.h"

/* Certificates AWS IoT issues expire at 2049-12-31T23:59:59Z (spec §3.4). */
#define ISSUED_NOT_AFTER "20491231235959Z"
/* Their subject is fixed (spec §2.3). */
#define ISSUED_COMMON_NAME "AWS IoT Certificate"
/* Smallest RSA key AWS accepts in a CSR (spec §3.4). */
#define RSA_MIN_BITS 2048
#define SERIAL_BYTES 16

DEFINE_TRIVIAL_CLEANUP_FUNC(ASN1_INTEGER *, ASN1_INTEGER_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(BIGNUM *, BN_free)

struct ca {
	X509 *cert;
	EVP_PKEY *key;
};

static int read_pem_file(const char *path, X509 **ret_cert, EVP_PKEY **ret_key)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");

	if (!f)
		return NEG_ERRNO();
	if (ret_cert)
		*ret_cert = PEM_read_X509(f, NULL, NULL, NULL);
	else
		*ret_key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	return (ret_cert ? (void *)*ret_cert : (void *)*ret_key) ? 0 : -EBADMSG;
}

int ca_load(const char *cert_path, const char *key_path, struct ca **ret)
{
	struct ca *ca = calloc(1, sizeof(*ca));
	int r;

	if (!ca)
		return -ENOMEM;
	r = read_pem_file(cert_path, &ca->cert, NULL);
	if (r >= 0)
		r = read_pem_file(key_path, NULL, &ca->key);
	if (r >= 0 && X509_check_private_key(ca->cert, ca->key) != 1)
		r = -EBADMSG;
	if (r < 0) {
		ca_free(ca);
		return r;
	}
	*ret = ca;
	return 0;
}

struct ca *ca_free(struct ca *ca)
{
	if (!ca)
		return NULL;
	X509_free(ca->cert);
	EVP_PKEY_free(ca->key);
	free(ca);
	return NULL;
}

static int check_key_policy(EVP_PKEY *key, char *errbuf, size_t errsize)
{
	char group[64] = "";

	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_RSA:
		if (EVP_PKEY_get_bits(key) >= RSA_MIN_BITS)
			return 0;
		snprintf(errbuf, errsize, "RSA key of %d bits; at least %d bits are required",
		         EVP_PKEY_get_bits(key), RSA_MIN_BITS);
		return -EINVAL;
	case EVP_PKEY_EC:
		if (!EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group,
		                                    sizeof(group), NULL))
			break;
		if (strcmp(group, "prime256v1") == 0 || strcmp(group, "secp384r1") == 0 ||
		    strcmp(group, "secp521r1") == 0)
			return 0;
		snprintf(errbuf, errsize,
		         "EC key on curve %s; only P-256, P-384 and P-521 are supported", group);
		return -EINVAL;
	default:
		break;
	}
	snprintf(errbuf, errsize, "unsupported key type %s; use RSA (2048 bits or more) or EC",
	         EVP_PKEY_get0_type_name(key) ? EVP_PKEY_get0_type_name(key) : "?");
	return -EINVAL;
}

int ca_check_csr(const char *pem, size_t len, EVP_PKEY **ret_key, char *errbuf, size_t errsize)
{
	_cleanup_(BIO_free_allp) BIO *bio = BIO_new_mem_buf(pem, (int)len);
	_cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
	EVP_PKEY *key;
	int r;

	if (!bio)
		return -ENOMEM;
	req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
	if (!req) {
		snprintf(errbuf, errsize, "the certificate signing request could not be parsed");
		return -EINVAL;
	}
	key = X509_REQ_get0_pubkey(req);
	if (!key) {
		snprintf(errbuf, errsize,
		         "the certificate signing request has no usable public key");
		return -EINVAL;
	}
	r = check_key_policy(key, errbuf, errsize);
	if (r < 0)
		return r;
	if (X509_REQ_verify(req, key) != 1) {
		snprintf(errbuf, errsize,
		         "the signature of the certificate signing request is not valid");
		return -EINVAL;
	}
	if (!EVP_PKEY_up_ref(key))
		return -ENOMEM;
	*ret_key = key;
	return 0;
}

static int set_random_serial(X509 *cert)
{
	unsigned char bytes[SERIAL_BYTES];
	_cleanup_(BN_freep) BIGNUM *bn = NULL;

	if (RAND_bytes(bytes, sizeof(bytes)) != 1)
		return -EIO;
	bytes[0] &= 0x7f; /* positive */
	bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
	if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)))
		return -ENOMEM;
	return 0;
}

static int add_extension(X509 *cert, X509V3_CTX *ctx, int nid, const char *value)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
	int ok;

	if (!ext)
		return -EINVAL;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : -ENOMEM;
}

static int add_extensions(struct ca *ca, X509 *cert, EVP_PKEY *key)
{
	X509V3_CTX ctx;
	int r;

	X509V3_set_ctx(&ctx, ca->cert, cert, NULL, NULL, 0);
	r = add_extension(cert, &ctx, NID_basic_constraints, "critical,CA:FALSE");
	if (r >= 0)
		r = add_extension(cert, &ctx, NID_key_usage,
		                  EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA
		                      ? "critical,digitalSignature,keyEncipherment"
		                      : "critical,digitalSignature");
	if (r >= 0)
		r = add_extension(cert, &ctx, NID_subject_key_identifier, "hash");
	if (r >= 0)
		r = add_extension(cert, &ctx, NID_authority_key_identifier, "keyid:always");
	return r;
}

static int set_names_and_validity(struct ca *ca, X509 *cert)
{
	X509_NAME *subject = X509_get_subject_name(cert);

	if (!X509_set_version(cert, X509_VERSION_3) ||
	    !X509_set_issuer_name(cert, X509_get_subject_name(ca->cert)) ||
	    !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
	                                (const unsigned char *)ISSUED_COMMON_NAME, -1, -1, 0))
		return -ENOMEM;
	if (!X509_gmtime_adj(X509_getm_notBefore(cert), 0) ||
	    !ASN1_TIME_set_string_X509(X509_getm_notAfter(cert), ISSUED_NOT_AFTER))
		return -ENOMEM;
	return 0;
}

int ca_issue(struct ca *ca, EVP_PKEY *key, X509 **ret)
{
	_cleanup_(X509_freep) X509 *cert = X509_new();
	int r;

	if (!cert)
		return -ENOMEM;
	r = set_random_serial(cert);
	if (r >= 0)
		r = set_names_and_validity(ca, cert);
	if (r < 0)
		return r;
	if (!X509_set_pubkey(cert, key))
		return -ENOMEM;
	r = add_extensions(ca, cert, key);
	if (r < 0)
		return r;
	if (X509_sign(cert, ca->key, EVP_sha256()) <= 0)
		return -EIO;
	*ret = TAKE_PTR(cert);
	return 0;
}

int ca_certificate_id(X509 *cert, char ret[CERT_ID_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (X509_digest(cert, EVP_sha256(), md, &n) != 1 || n * 2 != CERT_ID_LEN)
		return -EIO;
	util_hex(md, n, ret);
	return 0;
}

static int bio_to_string(BIO *bio, char **ret)
{
	char *data;
	long n = BIO_get_mem_data(bio, &data);
	char *copy;

	if (n <= 0)
		return -EIO;
	copy = strndup(data, (size_t)n);
	if (!copy)
		return -ENOMEM;
	*ret = copy;
	return 0;
}

int ca_certificate_pem(X509 *cert, char **ret)
{
	_cleanup_(BIO_free_allp) BIO *bio = BIO_new(BIO_s_mem());

	if (!bio || PEM_write_bio_X509(bio, cert) != 1)
		return -ENOMEM;
	return bio_to_string(bio, ret);
}

int ca_private_key_pem(EVP_PKEY *key, char **ret)
{
	_cleanup_(BIO_free_allp) BIO *bio = BIO_new(BIO_s_mem());

	if (!bio || PEM_write_bio_PrivateKey_traditional(bio, key, NULL, NULL, 0, NULL, NULL) != 1)
		return -ENOMEM;
	return bio_to_string(bio, ret);
}

int ca_new_rsa_key(EVP_PKEY **ret)
{
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)RSA_MIN_BITS);

	if (!key)
		return -EIO;
	*ret = key;
	return 0;
}

int ca_new_ec_key(EVP_PKEY **ret)
{
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

	if (!key)
		return -EIO;
	*ret = key;
	return 0;
}

int ca_file_certificate_id(const char *path, char ret[CERT_ID_LEN + 1])
{
	_cleanup_(X509_freep) X509 *cert = NULL;
	int r = read_pem_file(path, &cert, NULL);

	if (r < 0)
		return r;
	return ca_certificate_id(cert, ret);
}
