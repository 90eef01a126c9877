/*
 * The simulator's certificate authority: checks CSRs as AWS IoT does (spec §3.4), issues
 * device certificates like AWS IoT's (CN=AWS IoT Certificate, notAfter 2049-12-31T23:59:59Z)
 * and computes certificate ids.
 */
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>

/* A certificate id is the SHA-256 of the DER certificate in lowercase hex (64 characters). */
#define CERT_ID_LEN 64

struct ca;

/* Load the CA certificate and its private key (PEM files). */
int ca_load(const char *cert_path, const char *key_path, struct ca **ret);
struct ca *ca_free(struct ca *ca);

/*
 * Parse a PEM CSR, verify its self-signature and its key (RSA >= 2048 bits, or EC on
 * P-256/P-384/P-521). On failure returns -EINVAL with the reason in errbuf.
 */
int ca_check_csr(const char *pem, size_t len, EVP_PKEY **ret_key, char *errbuf, size_t errsize);

/* Issue a certificate for key, signed by ca. */
int ca_issue(struct ca *ca, EVP_PKEY *key, X509 **ret);

/* SHA-256 of the DER encoding, as 64 lowercase hex digits plus NUL. */
int ca_certificate_id(X509 *cert, char ret[CERT_ID_LEN + 1]);

/* The certificate as a PEM string (heap). */
int ca_certificate_pem(X509 *cert, char **ret);

/* A fresh key: RSA 2048 (what CreateKeysAndCertificate hands out) or EC P-256. */
int ca_new_rsa_key(EVP_PKEY **ret);
int ca_new_ec_key(EVP_PKEY **ret);

/* A private key as PEM; RSA keys in the traditional "RSA PRIVATE KEY" form AWS uses. */
int ca_private_key_pem(EVP_PKEY *key, char **ret);

/* The id of a PEM certificate file, for the claim. */
int ca_file_certificate_id(const char *path, char ret[CERT_ID_LEN + 1]);
