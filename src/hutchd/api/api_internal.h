/* Shared between the API's server core (http.c) and its handlers. */
#ifndef HUTCH_API_INTERNAL_H
#define HUTCH_API_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>

#include "api.h"
#include "metrics.h"
#include "ratelimit.h"

struct api {
	struct api_config cfg;
	char *listen, *domain, *envd_version; /* owned copies */
	struct store *store;
	struct lifecycle *lc;
	unsigned char secret[SERVER_SECRET_LEN];
	struct MHD_Daemon *daemon;
	struct rl_table *limits;
	struct api_metrics metrics;
	unsigned port;
	struct conn_guard *guard;
};

#define API_MAX_HEADERS 8

struct api_req {
	struct api *api;
	struct MHD_Connection *conn;
	const char *method;
	const char *body;
	size_t body_len;
	int64_t team_id;
	/* the reply */
	unsigned status;
	json_t *json;
	char *text;
	const char *content_type;
	struct {
		char name[32];
		char value[512];
	} headers[API_MAX_HEADERS];
	int n_headers;
};

/* Sets a {code, message} JSON error reply. */
void api_error(struct api_req *r, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Sets a JSON reply, taking the reference. */
void api_json(struct api_req *r, unsigned status, json_t *body);
void api_header(struct api_req *r, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
const char *api_query(struct api_req *r, const char *name);

/* Parses the request body as a JSON object; replies 400 and returns NULL if not. */
json_t *api_body_object(struct api_req *r, bool empty_ok);

/* Refuses with 429 and the RateLimit headers when the team's bucket is empty. */
bool api_rate_check(struct api_req *r, enum rl_kind kind);

/* Handlers (sandboxes.c). id is a path segment, already validated. */
void sbx_create(struct api_req *r);
void sbx_list(struct api_req *r, bool v2);
void sbx_get(struct api_req *r, const char *id);
void sbx_kill(struct api_req *r, const char *id);
void sbx_timeout(struct api_req *r, const char *id);
void sbx_refresh(struct api_req *r, const char *id);
void sbx_connect(struct api_req *r, const char *id);
void sbx_pause(struct api_req *r, const char *id);
void sbx_resume(struct api_req *r, const char *id);
void sbx_network(struct api_req *r, const char *id);
void sbx_metrics(struct api_req *r, const char *id);
void sbx_logs(struct api_req *r, const char *id, bool v2);

/* Snapshots and fork (snapshots.c). */
void snap_create(struct api_req *r, const char *id);
void snap_list(struct api_req *r);
void snap_get(struct api_req *r, const char *snapshot_id);
void snap_delete(struct api_req *r, const char *snapshot_id);
void snap_fork(struct api_req *r, const char *snapshot_id);
void sbx_fork(struct api_req *r, const char *id);
/* The team's snapshot a create's templateID names: by id, else the newest
 * of that name. 1 found (out filled), 0 none, <0 store error. */
int snap_resolve(struct api *a, int64_t team, const char *ref, struct store_snapshot *out,
		 struct herr *err);
/* The snapshot source's CPU, memory and disk size (its disk image has that
 * size) into a new sandbox's row. */
void snap_resources(const struct store_snapshot *snap, struct store_sandbox *sb);

#endif
