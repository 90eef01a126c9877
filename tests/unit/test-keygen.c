/* keygen: every key type, PKCS#8 round trip, CSR contents and signature, subject parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#else
#define RUNNING_ON_VALGRIND 0
#endif

#include "keygen.h"
#include "macro.h"
#include "openssl-util.h"

static X509_REQ *parse_csr(const char *pem)
{
	_cleanup_(BIO_free_allp) BIO *bio = BIO_new_mem_buf(pem, -1);

	assert_non_null(bio);
	return PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
}

static char *csr_to_pem(X509_REQ *req)
{
	_cleanup_(BIO_free_allp) BIO *bio = BIO_new(BIO_s_mem());
	char *data, *s;
	long n;

	assert_non_null(bio);
	assert_int_equal(PEM_write_bio_X509_REQ(bio, req), 1);
	n = BIO_get_mem_data(bio, &data);
	assert_true(n > 0);
	s = strndup(data, (size_t)n);
	assert_non_null(s);
	return s;
}

static void check_key_type(enum key_type type, const char *algorithm, int bits, const char *group)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	char name[64], encoding[64];

	assert_int_equal(keygen_generate(type, &key), 0);
	assert_non_null(key);
	assert_true(EVP_PKEY_is_a(key, algorithm));
	assert_int_equal(EVP_PKEY_get_bits(key), bits);
	if (!group)
		return;
	assert_int_equal(EVP_PKEY_get_group_name(key, name, sizeof(name), NULL), 1);
	assert_string_equal(name, group);
	/* AWS accepts only named curves, not explicit parameters. */
	assert_int_equal(EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_EC_ENCODING, encoding,
	                                                sizeof(encoding), NULL),
	                 1);
	assert_string_equal(encoding, OSSL_PKEY_EC_ENCODING_GROUP);
}

static void test_generate_ec(void **state)
{
	check_key_type(KEY_EC_P256, "EC", 256, "prime256v1");
	check_key_type(KEY_EC_P384, "EC", 384, "secp384r1");
}

static void test_generate_rsa(void **state)
{
	check_key_type(KEY_RSA_2048, "RSA", 2048, NULL);
	/* Big prime searches take minutes under valgrind; they exercise OpenSSL, not fleetprovd. */
	if (RUNNING_ON_VALGRIND)
		return;
	check_key_type(KEY_RSA_3072, "RSA", 3072, NULL);
	check_key_type(KEY_RSA_4096, "RSA", 4096, NULL);
}

static void test_generate_bad_type(void **state)
{
	EVP_PKEY *key = NULL;

	assert_int_equal(keygen_generate(_KEY_TYPE_MAX, &key), -EINVAL);
	assert_int_equal(keygen_generate(_KEY_TYPE_INVALID, &key), -EINVAL);
	assert_int_equal(keygen_generate(KEY_EC_P256, NULL), -EINVAL);
	assert_null(key);
}

static void test_pem_round_trip(void **state)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL, *loaded = NULL, *other = NULL;
	_cleanup_erase_ char *pem = NULL;

	assert_int_equal(keygen_generate(KEY_EC_P256, &key), 0);
	assert_int_equal(keygen_private_key_pem(key, &pem), 0);
	assert_non_null(strstr(pem, "-----BEGIN PRIVATE KEY-----\n"));
	assert_non_null(strstr(pem, "-----END PRIVATE KEY-----\n"));
	assert_int_equal(keygen_load_private_key(pem, &loaded), 0);
	assert_int_equal(EVP_PKEY_eq(key, loaded), 1);

	assert_int_equal(keygen_generate(KEY_EC_P256, &other), 0);
	assert_int_not_equal(EVP_PKEY_eq(other, loaded), 1);
	ERR_clear_error();
}

static void test_pem_rsa_round_trip(void **state)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL, *loaded = NULL;
	_cleanup_erase_ char *pem = NULL;

	assert_int_equal(keygen_generate(KEY_RSA_2048, &key), 0);
	assert_int_equal(keygen_private_key_pem(key, &pem), 0);
	assert_non_null(strstr(pem, "-----BEGIN PRIVATE KEY-----\n"));
	assert_int_equal(keygen_load_private_key(pem, &loaded), 0);
	assert_int_equal(EVP_PKEY_eq(key, loaded), 1);
}

static void test_load_bad_pem(void **state)
{
	EVP_PKEY *key = NULL;

	assert_int_equal(keygen_load_private_key("", &key), -EBADMSG);
	assert_int_equal(keygen_load_private_key("garbage", &key), -EBADMSG);
	assert_int_equal(
	    keygen_load_private_key(
	        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", &key),
	    -EBADMSG);
	assert_int_equal(keygen_load_private_key(NULL, &key), -EINVAL);
	assert_null(key);
	/* The queue was drained: nothing stale is left for the next OpenSSL user. */
	assert_int_equal(ERR_peek_error(), 0);
}

/* An encrypted key must fail, not block on a password prompt. */
static void test_load_encrypted_pem(void **state)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	_cleanup_(BIO_free_allp) BIO *bio = BIO_new(BIO_s_mem());
	EVP_PKEY *loaded = NULL;
	char *data;
	long n;

	assert_int_equal(keygen_generate(KEY_EC_P256, &key), 0);
	assert_int_equal(PEM_write_bio_PKCS8PrivateKey(bio, key, EVP_aes_128_cbc(), NULL, 0, NULL,
	                                               (void *)"secret"),
	                 1);
	n = BIO_write(bio, "", 1); /* NUL-terminate the PEM in the BIO */
	assert_int_equal(n, 1);
	BIO_get_mem_data(bio, &data);
	assert_non_null(strstr(data, "ENCRYPTED PRIVATE KEY"));
	assert_int_equal(keygen_load_private_key(data, &loaded), -EBADMSG);
	assert_null(loaded);
}

static void check_entry(X509_NAME *name, int index, int nid, const char *value)
{
	X509_NAME_ENTRY *e = X509_NAME_get_entry(name, index);
	const ASN1_STRING *s;

	assert_non_null(e);
	assert_int_equal(OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)), nid);
	s = X509_NAME_ENTRY_get_data(e);
	assert_int_equal(ASN1_STRING_length(s), (int)strlen(value));
	assert_memory_equal(ASN1_STRING_get0_data(s), value, strlen(value));
}

static void check_csr(enum key_type type, int signature_nid)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	_cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
	_cleanup_free_ char *pem = NULL;
	X509_NAME *name;

	assert_int_equal(keygen_generate(type, &key), 0);
	assert_int_equal(keygen_build_csr(key,
	                                  "CN=gw-1,O=Example\\, Inc.,OU=Gateways,C=DE,ST=Bavaria,"
	                                  "L=Munich,serialNumber=SN-0001",
	                                  &pem),
	                 0);
	assert_true(strncmp(pem, "-----BEGIN CERTIFICATE REQUEST-----\n", 36) == 0);
	req = parse_csr(pem);
	assert_non_null(req);
	assert_int_equal(X509_REQ_get_version(req), 0);
	assert_int_equal(X509_REQ_get_signature_nid(req), signature_nid);
	assert_int_equal(X509_REQ_verify(req, X509_REQ_get0_pubkey(req)), 1);
	assert_int_equal(EVP_PKEY_eq(X509_REQ_get0_pubkey(req), key), 1);

	name = X509_REQ_get_subject_name(req);
	assert_int_equal(X509_NAME_entry_count(name), 7);
	check_entry(name, 0, NID_commonName, "gw-1");
	check_entry(name, 1, NID_organizationName, "Example, Inc.");
	check_entry(name, 2, NID_organizationalUnitName, "Gateways");
	check_entry(name, 3, NID_countryName, "DE");
	check_entry(name, 4, NID_stateOrProvinceName, "Bavaria");
	check_entry(name, 5, NID_localityName, "Munich");
	check_entry(name, 6, NID_serialNumber, "SN-0001");
	assert_int_equal(keygen_csr_matches_key(pem, key), 0);
}

static void test_csr_ec(void **state)
{
	check_csr(KEY_EC_P256, NID_ecdsa_with_SHA256);
	check_csr(KEY_EC_P384, NID_ecdsa_with_SHA256);
}

static void test_csr_rsa(void **state)
{
	check_csr(KEY_RSA_2048, NID_sha256WithRSAEncryption);
}

static void check_subject_entries(EVP_PKEY *key, const char *subject, int expected)
{
	_cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
	_cleanup_free_ char *pem = NULL;

	assert_int_equal(keygen_build_csr(key, subject, &pem), 0);
	req = parse_csr(pem);
	assert_non_null(req);
	assert_int_equal(X509_NAME_entry_count(X509_REQ_get_subject_name(req)), expected);
	assert_int_equal(keygen_csr_matches_key(pem, key), 0);
}

static void test_csr_subject_forms(void **state)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	_cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
	_cleanup_free_ char *pem = NULL;

	assert_int_equal(keygen_generate(KEY_EC_P256, &key), 0);
	check_subject_entries(key, NULL, 0);
	check_subject_entries(key, "", 0);
	/* Space after a comma, lower-case attribute names. */
	check_subject_entries(key, "cn=a, o=b", 2);

	/* Escapes: "\," and "\\" become "," and "\"; "=" inside a value is plain text. */
	assert_int_equal(keygen_build_csr(key, "CN=a\\,b\\\\c=d", &pem), 0);
	req = parse_csr(pem);
	assert_non_null(req);
	check_entry(X509_REQ_get_subject_name(req), 0, NID_commonName, "a,b\\c=d");
}

static void test_csr_bad_subject(void **state)
{
	static const char *const bad[] = {
	    "XX=foo",             /* unknown attribute */
	    "CN",                 /* no '=' */
	    "CN=",                /* empty value */
	    "CN=a,",              /* trailing comma */
	    "CN=a,,O=b", "C=DEU", /* countryName is exactly two characters */
	    "CN=a\\",             /* dangling escape */
	    "=a",        "CN =a",
	};
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
	char *pem = NULL, long_subject[2048];

	assert_int_equal(keygen_generate(KEY_EC_P256, &key), 0);
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		assert_int_equal(keygen_build_csr(key, bad[i], &pem), -EINVAL);
		assert_null(pem);
	}
	memset(long_subject, 'a', sizeof(long_subject) - 1);
	memcpy(long_subject, "CN=", 3);
	long_subject[sizeof(long_subject) - 1] = '\0';
	assert_int_equal(keygen_build_csr(key, long_subject, &pem), -EINVAL);
	/* 65 characters: over RFC 5280's ub-common-name. */
	long_subject[3 + 65] = '\0';
	assert_int_equal(keygen_build_csr(key, long_subject, &pem), -EINVAL);
	long_subject[3 + 64] = '\0';
	assert_int_equal(keygen_build_csr(key, long_subject, &pem), 0);
	free(pem);
	assert_int_equal(keygen_build_csr(NULL, "CN=a", &pem), -EINVAL);
	assert_int_equal(ERR_peek_error(), 0);
}

static void test_csr_matches_key(void **state)
{
	_cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL, *other = NULL;
	_cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
	_cleanup_free_ char *pem = NULL, *tampered = NULL;
	_cleanup_(X509_NAME_freep) X509_NAME *name = X509_NAME_new();

	assert_int_equal(keygen_generate(KEY_EC_P256, &key), 0);
	assert_int_equal(keygen_generate(KEY_EC_P256, &other), 0);
	assert_int_equal(keygen_build_csr(key, "CN=gw-1", &pem), 0);

	assert_int_equal(keygen_csr_matches_key(pem, key), 0);
	assert_int_equal(keygen_csr_matches_key(pem, other), -EKEYREJECTED);
	assert_int_equal(keygen_csr_matches_key("garbage", key), -EBADMSG);
	assert_int_equal(keygen_csr_matches_key(NULL, key), -EINVAL);

	/* Change the subject after signing: the signature no longer covers the request. */
	req = parse_csr(pem);
	assert_non_null(req);
	assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
	                                            (const unsigned char *)"evil", -1, -1, 0),
	                 1);
	assert_int_equal(X509_REQ_set_subject_name(req, name), 1);
	tampered = csr_to_pem(req);
	assert_int_equal(keygen_csr_matches_key(tampered, key), -EBADMSG);
	assert_int_equal(ERR_peek_error(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_generate_ec),
	    cmocka_unit_test(test_generate_rsa),
	    cmocka_unit_test(test_generate_bad_type),
	    cmocka_unit_test(test_pem_round_trip),
	    cmocka_unit_test(test_pem_rsa_round_trip),
	    cmocka_unit_test(test_load_bad_pem),
	    cmocka_unit_test(test_load_encrypted_pem),
	    cmocka_unit_test(test_csr_ec),
	    cmocka_unit_test(test_csr_rsa),
	    cmocka_unit_test(test_csr_subject_forms),
	    cmocka_unit_test(test_csr_bad_subject),
	    cmocka_unit_test(test_csr_matches_key),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
