/*
 * The sandbox proxy (protocol.md §6): an HTTP/1.1 front on its own port
 * that routes each request (not each connection) to a port inside a
 * sandbox, by Host "<port>-<id>.<domain>", by the E2b-Sandbox-Id and
 * E2b-Sandbox-Port headers, or, for pre-signed /files URLs, by the sandbox
 * whose access token makes the signature valid. Bodies stream both ways
 * with backpressure; WebSocket (any Upgrade) is passed through.
 *
 * The proxy knows sandboxes only through a backend: lookup, enumeration of
 * secure sandboxes, and a dial into the sandbox's own loopback.
 */
#ifndef HUTCH_PROXY_H
#define HUTCH_PROXY_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"
#include "route.h"

#define PROXY_TOKEN_MAX 128

struct proxy_sandbox {
	char id[PROXY_ID_MAX + 1];
	char access_token[PROXY_TOKEN_MAX];  /* "" when the agent is open */
	char traffic_token[PROXY_TOKEN_MAX]; /* "" when public traffic is allowed */
};

typedef int (*proxy_sandbox_fn)(void *arg, const struct proxy_sandbox *s);

struct proxy_backend {
	void *ctx;
	/* 1 (and *out) when the sandbox runs, 0 when unknown, paused or ended. */
	int (*lookup)(void *ctx, const char *id, struct proxy_sandbox *out,
		      struct herr *err);
	/* Calls fn for each running sandbox with an access token until fn
	 * returns non-zero; returns that value. */
	int (*each_secure)(void *ctx, proxy_sandbox_fn fn, void *arg, struct herr *err);
	/* A connected TCP socket to 127.0.0.1:port in the sandbox;
	 * -ECONNREFUSED when nothing listens, -ENOENT when the sandbox is gone. */
	int (*dial)(void *ctx, const char *id, uint16_t port, struct herr *err);
};

struct proxy_config {
	const char *listen;       /* IPv4 address */
	unsigned port;            /* 0 picks a free port (see proxy_port) */
	unsigned max_connections;
	unsigned idle_timeout_s;  /* idle client connections; > 50 for Connect streams */
	/* Seconds a connection owing a request has to send its whole head
	 * (conn_guard.h); 0: 20. */
	unsigned head_timeout_s;
	unsigned max_per_ip;      /* connections from one address; 0: no limit */
};

struct proxy;

int proxy_start(const struct proxy_config *cfg, const struct proxy_backend *be,
		struct proxy **out, struct herr *err);
unsigned proxy_port(struct proxy *p);
/* Closes every connection, waits for relays to end, frees. NULL is fine. */
void proxy_stop(struct proxy *p);

/* Closes every proxied connection into sandbox id (it was killed or paused),
 * or into any sandbox when id is NULL (shutting down). */
void proxy_close_sandbox(struct proxy *p, const char *id);

/* Appends the proxy's Prometheus metrics (text format) to out. */
int proxy_metrics_render(struct proxy *p, struct hbuf *out);

/*
 * For another libmicrohttpd server (the API port): proxy_wants() is true
 * when the request's Host names a sandbox; the server then hands every call
 * of that request to proxy_access(), with the request target exactly as the
 * client sent it (from MHD_OPTION_URI_LOG_CALLBACK: the decoded url would
 * change what reaches the sandbox), and its end to proxy_completed().
 * *req_cls starts NULL and is the proxy's. The server must run with
 * MHD_ALLOW_UPGRADE for WebSocket.
 */
struct MHD_Connection;
bool proxy_wants(const char *host);
/* A client connection's context (its kept upstream connection): the other
 * server makes one per connection it accepts, stores it as that
 * connection's socket context, and frees it when the connection closes. */
void *proxy_conn_new(struct proxy *p);
void proxy_conn_free(void *conn_ctx);
int proxy_access(struct proxy *p, struct MHD_Connection *conn, const char *uri,
		 const char *method, const char *upload_data, size_t *upload_size,
		 void **req_cls);
void proxy_completed(struct proxy *p, void **req_cls);
/* True when the request in req_cls was switched to another protocol: its
 * connection then carries a relay, never another HTTP request. */
bool proxy_request_upgraded(void *req_cls);

/* ---- the backend over hutchd's store and lifecycle (backend.c) ---- */

struct store;
struct lifecycle;

/* Fills be; lc may be NULL (then every dial fails: no runtime). */
int proxy_backend_hutchd(struct store *st, struct lifecycle *lc,
			 const unsigned char *secret, struct proxy_backend *be,
			 struct herr *err);
void proxy_backend_hutchd_free(struct proxy_backend *be);

#endif
