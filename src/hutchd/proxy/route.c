/*
 * Routing decisions of the sandbox proxy: see route.h. Nothing here touches
 * the network or the store; every input is treated as hostile text.
 */
#include "route.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

static bool all_digits(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)s[i]))
			return false;
	return true;
}

/* 1..65535 from exactly n decimal digits; 0 when not a port. */
static uint16_t parse_port(const char *s, size_t n)
{
	unsigned long v = 0;

	if (!all_digits(s, n) || n > 5)
		return 0;
	for (size_t i = 0; i < n; i++)
		v = v * 10 + (unsigned long)(s[i] - '0');
	return v >= 1 && v <= 65535 ? (uint16_t)v : 0;
}

static void route_error(struct route *out, const char *message)
{
	out->kind = ROUTE_ERROR;
	out->message = message;
}

/* Sandbox ids in hostnames are DNS-safe lowercase: [a-z0-9]+. */
static bool host_id_valid(const char *s, size_t n)
{
	if (n == 0 || n > PROXY_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]))
			return false;
	return true;
}

/* Header ids may come from older or debug clients: [A-Za-z0-9_-]+. */
static bool header_id_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > PROXY_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
			return false;
	return true;
}

/* Returns true when host is a sandbox host (then out is filled). */
static bool parse_host(const char *host, struct route *out)
{
	size_t label = strcspn(host, ".:");
	const char *dash = memchr(host, '-', label);
	size_t id_len;

	/* Only "<digits>-..." is a sandbox host; other names fall through to
	 * header routing, so any hostname can serve E2B_SANDBOX_URL. */
	if (!dash || !all_digits(host, (size_t)(dash - host)))
		return false;
	out->port = parse_port(host, (size_t)(dash - host));
	id_len = label - (size_t)(dash + 1 - host);
	if (host[label] != '.')
		route_error(out, "Invalid host");
	else if (!out->port)
		route_error(out, "Invalid sandbox port");
	else if (!host_id_valid(dash + 1, id_len) || memchr(dash + 1, '-', id_len))
		route_error(out, "Invalid sandbox ID");
	else {
		memcpy(out->id, dash + 1, id_len);
		out->id[id_len] = '\0';
		out->kind = ROUTE_HOST;
	}
	return true;
}

void route_parse(const char *host, const char *hdr_id, const char *hdr_port,
		 struct route *out)
{
	memset(out, 0, sizeof(*out));
	if (host && parse_host(host, out))
		return;
	if (!hdr_id && !hdr_port) {
		out->kind = ROUTE_NONE;
		return;
	}
	if (!hdr_id || !hdr_port)
		return route_error(out, "missing header: E2b-Sandbox-Id and "
				   "E2b-Sandbox-Port are both required");
	out->port = parse_port(hdr_port, strlen(hdr_port));
	if (!out->port)
		return route_error(out, "Invalid sandbox port");
	if (!header_id_valid(hdr_id))
		return route_error(out, "Invalid sandbox ID");
	snprintf(out->id, sizeof(out->id), "%s", hdr_id);
	out->kind = ROUTE_HEADERS;
}

/* Percent-decodes in place; false if the result holds a control byte. */
static bool decode_once(char *s)
{
	char *w = s;

	for (const char *r = s; *r; r++) {
		if (r[0] == '%' && isxdigit((unsigned char)r[1]) &&
		    isxdigit((unsigned char)r[2])) {
			char hex[3] = { r[1], r[2], 0 };

			*w++ = (char)strtol(hex, NULL, 16);
			r += 2;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
	for (const char *r = s; r < w; r++)
		if ((unsigned char)*r < 0x20 || *r == 0x7f)
			return false;
	return strlen(s) == (size_t)(w - s); /* a decoded NUL cuts the path */
}

/*
 * The first segment the agent would route on: the path is decoded as often
 * as it still changes (the agent decodes once; more is only safer), then
 * empty and "." segments are skipped and ".." goes back one, as a server
 * normalising the path would. "/%69nit", "//init", "/./init" and
 * "/x/../init" all give "init". Writes "" when nothing is left.
 */
static bool first_segment(const char *path, char *out, size_t cap)
{
	char buf[2048], *segs[64], *save = NULL;
	size_t len = strcspn(path, "?#");
	int n = 0;

	if (len >= sizeof(buf))
		return false;
	memcpy(buf, path, len);
	buf[len] = '\0';
	for (int i = 0; i < 4 && strchr(buf, '%'); i++)
		if (!decode_once(buf))
			return false;
	for (char *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
		if (strcmp(t, ".") == 0)
			continue;
		if (strcmp(t, "..") == 0) {
			n -= n > 0;
			continue;
		}
		if (n == (int)(sizeof(segs) / sizeof(segs[0])))
			break; /* deeper than this cannot change the first segment */
		segs[n++] = t;
	}
	snprintf(out, cap, "%s", n ? segs[0] : "");
	return true;
}

bool route_is_internal(const char *path)
{
	static const char *const reserved[] = {
		"init", "freeze", "unfreeze", "collapse", "fsfreeze", "fsthaw", "upgrade",
	};
	char seg[2048];

	/* A path that cannot be decoded cleanly is treated as reserved: it is
	 * refused rather than forwarded to an agent that might read it
	 * differently. */
	if (!first_segment(path, seg, sizeof(seg)))
		return true;
	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
		if (strcasecmp(seg, reserved[i]) == 0)
			return true;
	return false;
}

int route_signature(const struct signed_query *q, const char *token,
		    char out[ROUTE_SIG_MAX])
{
	unsigned char digest[SHA256_DIGEST_LENGTH];
	unsigned char b64[4 * ((SHA256_DIGEST_LENGTH + 2) / 3) + 1];
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	const char *op = q->write ? "write" : "read";
	int n, ok;

	if (!md)
		return -1;
	ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
	     EVP_DigestUpdate(md, q->path, strlen(q->path)) &&
	     EVP_DigestUpdate(md, ":", 1) && EVP_DigestUpdate(md, op, strlen(op)) &&
	     EVP_DigestUpdate(md, ":", 1) &&
	     EVP_DigestUpdate(md, q->username, strlen(q->username)) &&
	     EVP_DigestUpdate(md, ":", 1) && EVP_DigestUpdate(md, token, strlen(token));
	if (ok && q->expiration)
		ok = EVP_DigestUpdate(md, ":", 1) &&
		     EVP_DigestUpdate(md, q->expiration, strlen(q->expiration));
	ok = ok && EVP_DigestFinal_ex(md, digest, NULL);
	EVP_MD_CTX_free(md);
	if (!ok)
		return -1;
	n = EVP_EncodeBlock(b64, digest, sizeof(digest));
	while (n > 0 && b64[n - 1] == '=')
		n--;
	b64[n] = '\0';
	snprintf(out, ROUTE_SIG_MAX, "v1_%s", (const char *)b64);
	return 0;
}

bool route_secret_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	/* Lengths are not secret (tokens and signatures have fixed shapes);
	 * the bytes are compared without an early exit. */
	return la == lb && CRYPTO_memcmp(a, b, la) == 0;
}

bool route_signature_matches(const struct signed_query *q, const char *token)
{
	char want[ROUTE_SIG_MAX];

	if (!q->signature || !*token || route_signature(q, token, want) < 0)
		return false;
	return route_secret_equal(want, q->signature);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

char *route_query_unescape(const char *s, size_t len)
{
	char *out = malloc(len + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '+') {
			*o++ = ' ';
		} else if (s[i] != '%') {
			*o++ = s[i];
		} else if (i + 2 < len && hexval(s[i + 1]) >= 0 &&
			   hexval(s[i + 2]) >= 0) {
			*o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		} else {
			free(out);
			return NULL;
		}
	}
	*o = '\0';
	return out;
}

char *route_query_get(const char *query, const char *name, bool *found)
{
	size_t nlen = strlen(name);

	*found = false;
	while (query && *query) {
		size_t plen = strcspn(query, "&");
		const char *eq = memchr(query, '=', plen);
		size_t klen = eq ? (size_t)(eq - query) : plen;

		if (klen == nlen && memcmp(query, name, nlen) == 0) {
			*found = true;
			if (!eq)
				return strdup("");
			return route_query_unescape(eq + 1, plen - klen - 1);
		}
		query += plen;
		if (*query == '&')
			query++;
	}
	return NULL;
}
