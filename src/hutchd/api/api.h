/*
 * The E2B-compatible REST API (protocol.md §2): libmicrohttpd, a thread per
 * connection, JSON with jansson, X-API-Key authentication, per-team plans
 * (rate limits, concurrency, maximum timeout) and Prometheus /metrics.
 */
#ifndef HUTCH_API_H
#define HUTCH_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "ids.h"
#include "lifecycle.h"
#include "store.h"

/* Limits applied to every team (one plan for the whole node for now). */
struct api_plan {
	double create_rate;       /* creates per second; <= 0 no limit */
	int64_t create_burst;
	double request_rate;      /* requests per second; <= 0 no limit */
	int64_t request_burst;
	int64_t max_concurrent;   /* sandboxes alive at once; <= 0 no limit */
	int64_t max_timeout_s;    /* longest timeout, from the start of a run */
};

struct proxy;

struct api_config {
	const char *listen;       /* IPv4 address to bind */
	unsigned port;            /* 0 picks a free port (see api_port) */
	const char *domain;       /* returned as the sandbox domain; "" = none */
	const char *envd_version; /* reported for every sandbox */
	int64_t default_timeout_s;
	bool secure_default;      /* when a create body does not say */
	int64_t cpu_count, memory_mb, disk_mb;
	size_t max_body;
	unsigned max_connections;
	unsigned max_per_ip;      /* connections from one address; 0: no limit */
	/* Seconds a connection owing a request has to send its whole head
	 * (conn_guard.h); 0: 20. */
	unsigned head_timeout_s;
	struct api_plan plan;
	/* Requests whose Host names a sandbox ("<port>-<id>.<domain>") go to
	 * this proxy; NULL answers them as API requests. */
	struct proxy *proxy;
};

struct api;

int api_start(const struct api_config *cfg, struct store *st, struct lifecycle *lc,
	      const unsigned char secret[SERVER_SECRET_LEN], struct api **out,
	      struct herr *err);
unsigned api_port(struct api *a);
void api_stop(struct api *a);

#endif
