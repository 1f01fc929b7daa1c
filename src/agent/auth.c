/*
 * Access-token comparison and envd's v1 pre-signed URL signatures (auth.h).
 */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <nettle/base64.h>
#include <nettle/memops.h>
#include <nettle/sha2.h>

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
	return memeql_sec(a, b, la);
}

int auth_token_ok(const char *given)
{
	return state_token_matches(given);
}

/* SHA-256 over the parts joined by ':', without building the joined string. */
static void digest_parts(const char *const *parts, size_t n,
			 uint8_t md[SHA256_DIGEST_SIZE])
{
	struct sha256_ctx ctx;

	sha256_init(&ctx);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			sha256_update(&ctx, 1, (const uint8_t *)":");
		sha256_update(&ctx, strlen(parts[i]), (const uint8_t *)parts[i]);
	}
	sha256_digest(&ctx, SHA256_DIGEST_SIZE, md);
}

int auth_sign_v1(const char *path, const char *operation, const char *user,
		 const char *token, const char *expiration, char *out, size_t cap)
{
	const char *parts[5] = { path ? path : "", operation ? operation : "",
				 user ? user : "", token ? token : "", expiration };
	uint8_t md[SHA256_DIGEST_SIZE];
	char b64[BASE64_ENCODE_RAW_LENGTH(SHA256_DIGEST_SIZE) + 1];
	size_t len = BASE64_ENCODE_RAW_LENGTH(SHA256_DIGEST_SIZE);

	digest_parts(parts, expiration ? 5 : 4, md);
	base64_encode_raw(b64, sizeof(md), md);
	/* envd's signatures are unpadded base64. */
	while (len > 0 && b64[len - 1] == '=')
		len--;
	b64[len] = '\0';
	if ((size_t)snprintf(out, cap, "v1_%s", b64) >= cap)
		return -ENOSPC;
	return 0;
}
