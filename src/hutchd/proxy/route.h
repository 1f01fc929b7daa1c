/*
 * Request routing of the sandbox proxy (protocol.md §6), as pure functions
 * over strings so they can be tested alone: which sandbox and port a request
 * names (Host first, then the E2b-Sandbox-* headers), which agent routes are
 * reserved for the control plane, and pre-signed /files URL signatures.
 */
#ifndef HUTCH_PROXY_ROUTE_H
#define HUTCH_PROXY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROXY_AGENT_PORT 49983
#define PROXY_ID_MAX 63

enum route_kind {
	ROUTE_NONE,      /* the request names no sandbox */
	ROUTE_HOST,      /* Host: <port>-<id>.<anything> */
	ROUTE_HEADERS,   /* E2b-Sandbox-Id + E2b-Sandbox-Port */
	ROUTE_ERROR,     /* names one, badly: answer 400 with message */
};

struct route {
	enum route_kind kind;
	char id[PROXY_ID_MAX + 1];
	uint16_t port;
	const char *message; /* for ROUTE_ERROR: a static text for the client */
};

/*
 * Decides the target from the Host header and the two routing headers (any
 * may be NULL). A Host whose left-most label starts with digits and a dash
 * is a sandbox host and wins; otherwise the headers are consulted, and if
 * either is present both must be.
 */
void route_parse(const char *host, const char *hdr_id, const char *hdr_port,
		 struct route *out);

/* True for the agent's control-plane paths (/init, /freeze, ...) and below. */
bool route_is_internal(const char *path);

/* Signature inputs taken from a /files query (values already decoded). */
struct signed_query {
	const char *path;        /* "" when absent */
	const char *username;    /* "" when absent */
	const char *signature;   /* NULL when absent */
	const char *expiration;  /* NULL when absent */
	bool write;              /* POST (write) or GET (read) */
};

#define ROUTE_SIG_MAX 64 /* "v1_" + 43 base64 characters, and room */

/* "v1_" + base64 std without padding of sha256(path:op:user:token[:exp]). */
int route_signature(const struct signed_query *q, const char *token,
		    char out[ROUTE_SIG_MAX]);

/* Recomputes the signature with token and compares it in constant time. */
bool route_signature_matches(const struct signed_query *q, const char *token);

/* Compares two NUL-terminated secrets without leaking where they differ. */
bool route_secret_equal(const char *a, const char *b);

/*
 * Decodes a query component the way the agent (Go's url.QueryUnescape) does:
 * '+' is a space, %XX a byte. Returns a malloc'd string, NULL when it is
 * malformed or memory runs out.
 */
char *route_query_unescape(const char *s, size_t len);

/*
 * Finds the first `name=value` in a raw query string (without '?') and
 * returns the decoded value (malloc'd), or NULL when absent or malformed.
 * *found tells absent from malformed.
 */
char *route_query_get(const char *query, const char *name, bool *found);

#endif
