/*
 * Access-token checks and pre-signed URL signatures (envd's v1 scheme):
 *   "v1_" + base64(sha256("<path>:<read|write>:<user>:<token>[:<expiration>]"))
 * with the standard alphabet and the trailing '=' removed.
 */
#ifndef HUTCH_AGENT_AUTH_H
#define HUTCH_AGENT_AUTH_H

#include <stddef.h>

/* Constant-time equality of two NUL-terminated strings (length may leak). */
int auth_equal(const char *a, const char *b);

/*
 * 1 when no access token is configured, or when given (may be NULL) equals
 * it; 0 otherwise.
 */
int auth_token_ok(const char *given);

/*
 * Writes the v1 signature; expiration may be NULL. Returns 0, or -ENOSPC
 * when out is too small (hashing cannot fail).
 */
int auth_sign_v1(const char *path, const char *operation, const char *user,
		 const char *token, const char *expiration, char *out, size_t cap);

#endif
