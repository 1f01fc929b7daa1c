/*
 * The agent's HTTP server (libmicrohttpd, one thread per connection) and the
 * helpers its non-RPC handlers share.
 */
#ifndef HUTCH_AGENT_HTTP_H
#define HUTCH_AGENT_HTTP_H

#include <microhttpd.h>
#include <stddef.h>

#include "err.h"

/*
 * A handler with libmicrohttpd's access-handler contract: called first with
 * *state == NULL, then once per chunk of request body, then with
 * *upload_data_size == 0 when the body is complete. It owns *state, and
 * done_fn(state) is called when the request ends however it ends.
 */
typedef enum MHD_Result (*http_handler_fn)(struct MHD_Connection *c, const char *method,
					   const char *upload_data, size_t *upload_data_size,
					   void **state);
typedef void (*http_done_fn)(void *state);

/* /files (GET download, POST upload): implemented in files/. */
enum MHD_Result files_handler(struct MHD_Connection *c, const char *method,
			      const char *upload_data, size_t *upload_data_size, void **state);
void files_done(void *state);
/*
 * Sets when downloads are gzip-compressed: "fallback" (only for clients that
 * refuse identity; the default) or "negotiate" (whenever the client prefers
 * gzip). Call before agent_server_start. -EINVAL names a bad value.
 */
int files_set_download_gzip(const char *mode, struct herr *err);

/* Queues {"code":status,"message":...} with Content-Type application/json. */
enum MHD_Result http_send_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Queues a JSON body (copied) with the given status. */
enum MHD_Result http_send_json(struct MHD_Connection *c, unsigned status, const char *json,
			       size_t len);

struct agent_server;

/*
 * Adds the headers every agent response carries (CORS: any origin, and the
 * exposed headers browsers may read). Handlers that build their own
 * responses (RPC, /files) call it before queueing them.
 */
void http_add_common_headers(struct MHD_Response *r);

struct agent_server_opts {
	const char *listen_addr; /* numeric IPv4/IPv6, "0.0.0.0" by default */
	int port;                /* 49983 by default */
	int max_connections;     /* 0: the default (512) */
	/* When set, POST /init must carry it in INIT_SECRET_HEADER (hutchd
	 * derives one per sandbox); NULL or "": not required. */
	const char *init_secret;
};

#define INIT_SECRET_HEADER "X-Hutch-Init-Secret"
#define INIT_SECRET_MAX 128

int agent_server_start(const struct agent_server_opts *opts, struct agent_server **out,
		       struct herr *err);
/*
 * Stops accepting connections; the open ones keep being served (so streams
 * can still deliver the end of their processes) until agent_server_stop.
 */
void agent_server_quiesce(struct agent_server *s);
void agent_server_stop(struct agent_server *s);

#endif
