/* Shared between the proxy's server core, upstream transfers and relays. */
#ifndef HUTCH_PROXY_INTERNAL_H
#define HUTCH_PROXY_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <microhttpd.h>

#include "proxy.h"

#define PROXY_LATENCY_BUCKETS 12
#define PROXY_REQ_MAGIC 0x70727871u /* tells our request contexts apart */

struct proxy_metrics {
	uint64_t by_status[600];
	uint64_t latency_count, latency_sum_us;
	uint64_t latency_le[PROXY_LATENCY_BUCKETS];
	uint64_t websockets, active_relays;
};

/* Every upstream socket (and relayed client socket), by sandbox, so a kill
 * or pause can shut them down. */
struct fd_entry {
	int fd;
	char id[PROXY_ID_MAX + 1];
};

struct fd_registry {
	pthread_mutex_t mu;
	struct fd_entry *v;
	size_t n, cap;
};

/* Threads that run upstream exchanges (workers.c). */
struct worker_pool {
	pthread_mutex_t mu;
	pthread_cond_t work_cv;   /* idle threads wait here */
	pthread_cond_t done_cv;   /* exchange owners and workers_stop wait here */
	struct preq *head, *tail; /* requests no thread has taken yet */
	unsigned queued, idle, threads;
	bool stopping;
};

struct proxy {
	struct proxy_config cfg;
	char *listen;
	struct proxy_backend be;
	struct MHD_Daemon *daemon;
	unsigned port;
	struct fd_registry reg;
	struct proxy_metrics metrics;
	pthread_mutex_t relay_mu;
	pthread_cond_t relay_cv;
	unsigned relays; /* WebSocket relay threads alive */
	struct conn_guard *guard;
	struct worker_pool workers;
};

/* A bounded byte ring between the client side and the upstream side. */
struct ring {
	char *buf;
	size_t cap, head, len;
};

struct hdr {
	char *name, *value;
};

/* Per client connection (proxy port only): the upstream handle, whose
 * connection cache gives upstream keep-alive. */
struct pconn {
	int fd;             /* idle upstream connection, -1 when none */
	char id[PROXY_ID_MAX + 1];
	uint16_t port;
	struct proxy *p;
};

/* One proxied request. */
struct preq {
	uint32_t magic;
	struct proxy *p;
	struct MHD_Connection *conn;
	char *uri;          /* raw path and query as the client sent them */
	const char *query;  /* into uri, after '?', or "" */
	char *path;         /* path only */
	char method[16];
	int64_t start_us, head_us;
	struct route r;
	struct proxy_sandbox sb;
	unsigned status;    /* what the client got, for metrics and the log */
	bool routed, replied, upgrade, has_body;
	int64_t content_length; /* of the request; -1 unknown */

	/* upstream exchange, run by a pool thread */
	struct pconn *pc;
	bool worker_started;
	struct preq *next_job; /* in the pool's queue */
	bool released;         /* the pool thread is done with this request */
	struct hbuf head;   /* the request head as it goes upstream */
	int up_fd;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct ring req, resp;
	bool req_eof, head_ready, done, aborted;
	bool failed;        /* the exchange broke after the head */
	int dial_rc;
	char dial_msg[HERR_MSG_MAX];
	long code;
	bool keep_alive;
	struct hdr *resp_hdrs;
	size_t n_resp_hdrs;
	int64_t resp_len;   /* upstream Content-Length, -1 unknown */
	int client_fd;
};

/* registry.c */
void registry_init(struct fd_registry *r);
void registry_free(struct fd_registry *r);
int registry_add(struct fd_registry *r, const char *id, int fd);
void registry_remove(struct fd_registry *r, int fd);
void registry_shutdown(struct fd_registry *r, const char *id);

/* ring.c */
int ring_init(struct ring *r, size_t cap);
void ring_free(struct ring *r);
size_t ring_put(struct ring *r, const char *p, size_t n);
size_t ring_get(struct ring *r, char *p, size_t n);

/* upstream.c: the sandbox side of a plain HTTP request */
int upstream_start(struct preq *q, struct pconn *pc, struct herr *err);
void upstream_push(struct preq *q, const char *data, size_t n);
/* Ends the request body and waits for the response head or a failure. */
void upstream_finish_body(struct preq *q);
ssize_t upstream_read(void *cls, uint64_t pos, char *buf, size_t max);
void upstream_end(struct preq *q);
void pconn_free(struct pconn *pc);
bool header_is_hop_by_hop(const char *name, const char *connection);
/* Request headers the proxy never forwards (hutchd's own, to agents). */
bool header_is_control_plane(const char *name);

/* Runs one exchange start to end (a pool thread). */
void upstream_exchange(struct preq *q);

/* workers.c */
void workers_init(struct worker_pool *w);
/* Hands q to an idle thread or a new one; negative errno if none can run. */
int workers_run(struct worker_pool *w, struct preq *q);
/* Returns once the thread that ran q no longer touches it. */
void workers_wait(struct worker_pool *w, struct preq *q);
void workers_stop(struct worker_pool *w);

/* websocket.c: Upgrade requests */
enum MHD_Result ws_forward(struct preq *q);

/* proxy.c */
enum MHD_Result reply_error(struct preq *q, unsigned status, const char *message,
			    const char *extra_key, long extra_value);
int64_t proxy_mono_us(void);

#endif
