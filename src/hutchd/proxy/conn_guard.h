/*
 * Connection guard for hutchd's libmicrohttpd servers (API and proxy ports,
 * one thread per connection): bounds what a client that sends no complete
 * request can hold.
 *
 * A connection "owes a request" from the moment it is accepted, and again
 * after each request completes (keep-alive), until the head of its next
 * request is complete. While it owes one:
 *  - it must deliver the complete head within head_timeout_s of starting to
 *    owe it. Unlike libmicrohttpd's idle timeout, trickling a header line
 *    does not extend this deadline (the slowloris attack);
 *  - at most waiting_max connections may owe a request at once: a new
 *    connection past that shuts down the one that has owed a request
 *    longest. Real clients send their request right after connecting.
 * Once a head is complete the connection is left alone: a proxied stream or
 * a long request is never cut by the guard (the server's own idle timeout
 * still applies).
 */
#ifndef HUTCH_CONN_GUARD_H
#define HUTCH_CONN_GUARD_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

struct conn_guard;

struct conn_guard_stats {
	uint64_t head_timeouts; /* shut down: no complete head in time */
	uint64_t evicted;       /* shut down: too many owing a request */
	unsigned waiting;       /* owing a request now */
};

/* name appears in logs ("api", "proxy"). head_timeout_s and waiting_max
 * must be > 0. Starts the thread that enforces the deadline. */
int conn_guard_new(const char *name, unsigned head_timeout_s, unsigned waiting_max,
		   struct conn_guard **out, struct herr *err);
/* Call after the server is stopped (no more callbacks). NULL is fine. */
void conn_guard_free(struct conn_guard *g);

/* From MHD_OPTION_NOTIFY_CONNECTION: STARTED and CLOSED. */
void conn_guard_opened(struct conn_guard *g, struct MHD_Connection *c);
void conn_guard_closed(struct conn_guard *g, struct MHD_Connection *c);
/* The head of a request is complete (first access-handler call). */
void conn_guard_head_done(struct conn_guard *g, struct MHD_Connection *c);
/* A request completed and the connection may carry another (not after an
 * upgrade: the socket then belongs to the relay, not to HTTP). */
void conn_guard_request_done(struct conn_guard *g, struct MHD_Connection *c);

void conn_guard_stats(struct conn_guard *g, struct conn_guard_stats *out);
/* Prometheus lines hutch_<prefix>_connections_{waiting,shut_total}. */
int conn_guard_metrics_render(struct conn_guard *g, const char *prefix, struct hbuf *out);

#endif
