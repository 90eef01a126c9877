/*
 * Key and CSR generation with OpenSSL 3 EVP (design.md decision 4). In memory only: the
 * caller persists the key (store) before the CSR leaves the device. Non-logging.
 */
#pragma once

#include <openssl/evp.h>

#include "config.h"

int keygen_generate(enum key_type type, EVP_PKEY **ret);
/* PKCS#8 PEM of the private key; ret is secret: free with erase_and_free. */
int keygen_private_key_pem(EVP_PKEY *key, char **ret);
int keygen_load_private_key(const char *pem, EVP_PKEY **ret);
/*
 * SHA-256 signed PKCS#10 CSR in PEM. subject is "CN=gw-1,O=Example" (RFC 4514-like,
 * commas separate RDNs, "\," escapes) or NULL for an empty subject.
 */
int keygen_build_csr(EVP_PKEY *key, const char *subject, char **ret_pem);
/* 0 if the CSR parses, is self-signed correctly and carries key's public key, else
 * -EKEYREJECTED/-EBADMSG. */
int keygen_csr_matches_key(const char *csr_pem, EVP_PKEY *key);
