/*
 * Access-token comparison and envd's v1 pre-signed URL signatures (auth.h).
 */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "state.h"

int auth_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	/*
	 * Tokens are fixed-length in practice, so only their length may leak;
	 * the bytes are compared without an early exit.
	 */
	if (la != lb)
		return 0;
	return CRYPTO_memcmp(a, b, la) == 0;
}

int auth_token_ok(const char *given)
{
	return state_token_matches(given);
}

/* SHA-256 over the parts joined by ':', without building the joined string. */
static int digest_parts(const char *const *parts, size_t n, unsigned char *md)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok;

	if (!ctx)
		return -ENOMEM;
	ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t i = 0; ok && i < n; i++) {
		if (i > 0)
			ok = EVP_DigestUpdate(ctx, ":", 1);
		if (ok)
			ok = EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]));
	}
	if (ok)
		ok = EVP_DigestFinal_ex(ctx, md, NULL);
	EVP_MD_CTX_free(ctx);
	return ok ? 0 : -EIO;
}

int auth_sign_v1(const char *path, const char *operation, const char *user,
		 const char *token, const char *expiration, char *out, size_t cap)
{
	const char *parts[5] = { path ? path : "", operation ? operation : "",
				 user ? user : "", token ? token : "", expiration };
	unsigned char md[SHA256_DIGEST_LENGTH];
	/* EVP_EncodeBlock writes 4 bytes per 3 input bytes, plus a NUL. */
	unsigned char b64[4 * ((SHA256_DIGEST_LENGTH + 2) / 3) + 1];
	int len;

	int r = digest_parts(parts, expiration ? 5 : 4, md);

	if (r < 0)
		return r;
	len = EVP_EncodeBlock(b64, md, sizeof(md));
	while (len > 0 && b64[len - 1] == '=')
		len--;
	b64[len] = '\0';
	if ((size_t)snprintf(out, cap, "v1_%s", (char *)b64) >= cap)
		return -ENOSPC;
	return 0;
}
