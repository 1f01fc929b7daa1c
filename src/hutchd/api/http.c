/*
 * The API's server core: libmicrohttpd plumbing (bodies, chunked uploads,
 * replies), CORS, authentication, the per-team request budget, routing, and
 * /health and /metrics. Handlers live in sandboxes.c.
 *
 * A request whose Host names a sandbox ("<port>-<id>.<domain>", so that one
 * wildcard DNS name and one port serve both) is not an API request: it is
 * handed whole to the sandbox proxy, WebSocket upgrades included.
 */
#include "api_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "cleanup.h"
#include "conn_guard.h"
#include "log.h"
#include "proxy.h"
#include "templates.h"

/* Per request, made when its request line is read. */
struct conn_state {
	char *uri;         /* the request target as sent (for the proxy) */
	bool started;      /* the API's first call (head complete) was made */
	void *proxy_req;   /* the proxy's request context when it took over */
	void *upload;      /* a template archive upload (templates.c) */
	struct hbuf body;
	bool too_big;
	bool admitted;     /* key and rate checked when the head came */
	int64_t team_id;
	int64_t start_us;
};

static int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void api_error(struct api_req *r, unsigned status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	api_json(r, status, json_pack("{s:i,s:s}", "code", (int)status, "message", msg));
}

void api_json(struct api_req *r, unsigned status, json_t *body)
{
	json_decref(r->json);
	r->json = body;
	r->status = status;
}

void api_header(struct api_req *r, const char *name, const char *fmt, ...)
{
	va_list ap;

	if (r->n_headers == API_MAX_HEADERS)
		return;
	snprintf(r->headers[r->n_headers].name, sizeof(r->headers[0].name), "%s", name);
	va_start(ap, fmt);
	vsnprintf(r->headers[r->n_headers].value, sizeof(r->headers[0].value), fmt, ap);
	va_end(ap);
	r->n_headers++;
}

const char *api_query(struct api_req *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

json_t *api_body_object(struct api_req *r, bool empty_ok)
{
	json_error_t jerr;
	json_t *j;

	if (r->body_len == 0 && empty_ok)
		return json_object();
	j = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		api_error(r, 400, "request body is not valid JSON: %s (at byte %d)",
			  jerr.text, jerr.position);
		return NULL;
	}
	if (!json_is_object(j)) {
		json_decref(j);
		api_error(r, 400, "request body must be a JSON object");
		return NULL;
	}
	return j;
}

static double plan_rate(const struct api_plan *p, enum rl_kind kind, int64_t *burst)
{
	*burst = kind == RL_CREATE ? p->create_burst : p->request_burst;
	return kind == RL_CREATE ? p->create_rate : p->request_rate;
}

bool api_rate_check(struct api_req *r, enum rl_kind kind)
{
	struct api *a = r->api;
	int64_t burst;
	double rate = plan_rate(&a->cfg.plan, kind, &burst);
	struct rl_verdict v = rl_table_take(a->limits, r->team_id, kind, rate, burst,
					    store_now_ms());

	if (v.allowed)
		return true;
	metrics_rate_limited(&a->metrics);
	api_header(r, "Retry-After", "%lld", (long long)v.retry_after_s);
	api_header(r, "RateLimit-Limit", "%lld", (long long)v.limit);
	api_header(r, "RateLimit-Remaining", "%lld", (long long)v.remaining);
	api_header(r, "RateLimit-Reset", "%lld", (long long)v.reset_s);
	api_error(r, 429, "Rate limit exceeded: at most %g %s per minute (burst %lld) "
		  "for your team; retry in %lld s", rate * 60.0,
		  kind == RL_CREATE ? "sandbox creates" : "requests", (long long)burst,
		  (long long)v.retry_after_s);
	return false;
}

/* ---- CORS (protocol.md §1.3) ---- */

static const char cors_allow_headers[] =
	"Origin, Content-Length, Content-Type, User-Agent, Authorization, X-API-Key, "
	"X-Team-ID, browser, lang, lang_version, machine, os, package_version, "
	"processor, publisher, release, sdk_runtime, system";
static const char cors_expose_headers[] =
	"X-Next-Token, X-Total-Running, RateLimit-Limit, RateLimit-Remaining, "
	"RateLimit-Reset, Retry-After";

static void add_cors(struct MHD_Response *resp, bool preflight)
{
	MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
	MHD_add_response_header(resp, "Access-Control-Expose-Headers", cors_expose_headers);
	if (!preflight)
		return;
	MHD_add_response_header(resp, "Access-Control-Allow-Methods",
				"GET, POST, PUT, PATCH, DELETE, OPTIONS");
	MHD_add_response_header(resp, "Access-Control-Allow-Headers", cors_allow_headers);
	MHD_add_response_header(resp, "Access-Control-Max-Age", "7200");
}

static enum MHD_Result send_reply(struct api_req *r, bool preflight)
{
	_cleanup_free_ char *body = NULL;
	const char *ctype = r->content_type;
	struct MHD_Response *resp;
	enum MHD_Result ret;
	size_t len = 0;

	if (r->json) {
		body = json_dumps(r->json, JSON_COMPACT);
		ctype = "application/json";
	} else if (r->text) {
		body = steal_ptr(&r->text);
	}
	if (body)
		len = strlen(body);
	resp = MHD_create_response_from_buffer(len, body ? body : (char *)"",
					       MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	if (len && ctype)
		MHD_add_response_header(resp, "Content-Type", ctype);
	add_cors(resp, preflight);
	for (int i = 0; i < r->n_headers; i++)
		MHD_add_response_header(resp, r->headers[i].name, r->headers[i].value);
	ret = MHD_queue_response(r->conn, r->status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* ---- authentication ---- */

static bool authenticate(struct api_req *r)
{
	const char *key = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
						      "X-API-Key");
	char hash[APIKEY_HASH_HEX];
	struct store_key k;
	struct herr err;
	int rc;

	if (!key || !*key) {
		api_error(r, 401, "Missing API key: send it in the X-API-Key header");
		return false;
	}
	apikey_hash(key, hash);
	rc = store_key_lookup(r->api->store, hash, &k, &err);
	if (rc < 0) {
		log_error("api", NULL, "authenticating: %s", err.msg);
		api_error(r, 500, "could not check the API key: store unavailable");
		return false;
	}
	if (rc == 0) {
		api_error(r, 401, "Invalid API key");
		return false;
	}
	r->team_id = k.team_id;
	return true;
}

/* ---- routing ---- */

#define MAX_SEGMENTS 6

static int split_path(char *path, char **seg)
{
	int n = 0;

	for (char *tok = strtok(path, "/"); tok; tok = strtok(NULL, "/")) {
		if (n == MAX_SEGMENTS)
			return -1;
		seg[n++] = tok;
	}
	return n;
}

static bool is(const char *a, const char *b)
{
	return strcmp(a, b) == 0;
}

static void method_not_allowed(struct api_req *r)
{
	api_error(r, 405, "method %s is not allowed on this path", r->method);
}

/* /sandboxes/{id}/<action> and /v2/sandboxes/{id}/<action> */
static void route_sandbox_action(struct api_req *r, const char *id, const char *action,
				 bool v2)
{
	bool post = is(r->method, "POST"), get = is(r->method, "GET");

	if (is(action, "connect") && post)
		sbx_connect(r, id);
	else if (is(action, "logs") && get)
		sbx_logs(r, id, v2);
	else if (v2)
		api_error(r, 404, "no such endpoint");
	else if (is(action, "timeout") && post)
		sbx_timeout(r, id);
	else if (is(action, "refreshes") && post)
		sbx_refresh(r, id);
	else if (is(action, "pause") && post)
		sbx_pause(r, id);
	else if (is(action, "resume") && post)
		sbx_resume(r, id);
	else if (is(action, "network") && is(r->method, "PUT"))
		sbx_network(r, id);
	else if (is(action, "metrics") && get)
		sbx_metrics(r, id);
	else if (is(action, "snapshots") && post)
		snap_create(r, id); /* snapshots.c */
	else if (is(action, "fork") && post)
		sbx_fork(r, id);
	else
		api_error(r, 404, "no such endpoint");
}

/* /snapshots, /snapshots/{id} and /snapshots/{id}/fork (snapshots.c) */
static void route_snapshots(struct api_req *r, char **seg, int n)
{
	if (n == 0 && is(r->method, "GET"))
		snap_list(r);
	else if (n == 0)
		method_not_allowed(r);
	else if (!sandbox_id_valid(seg[0]))
		api_error(r, 404, "Snapshot \"%.64s\" doesn't exist or you don't have "
			  "access to it", seg[0]);
	else if (n == 1 && is(r->method, "GET"))
		snap_get(r, seg[0]);
	else if (n == 1 && is(r->method, "DELETE"))
		snap_delete(r, seg[0]);
	else if (n == 1)
		method_not_allowed(r);
	else if (n == 2 && is(seg[1], "fork") && is(r->method, "POST"))
		snap_fork(r, seg[0]);
	else
		api_error(r, 404, "no such endpoint");
}

static void route_sandboxes(struct api_req *r, char **seg, int n, bool v2)
{
	if (n == 0) {
		if (is(r->method, "POST"))
			sbx_create(r);
		else if (is(r->method, "GET"))
			sbx_list(r, v2);
		else
			method_not_allowed(r);
		return;
	}
	if (!sandbox_id_valid(seg[0])) {
		api_error(r, 404, "Sandbox \"%.64s\" doesn't exist or you don't have access "
			  "to it", seg[0]);
		return;
	}
	if (n == 1 && !v2) {
		if (is(r->method, "GET"))
			sbx_get(r, seg[0]);
		else if (is(r->method, "DELETE"))
			sbx_kill(r, seg[0]);
		else
			method_not_allowed(r);
	} else if (n == 2) {
		route_sandbox_action(r, seg[0], seg[1], v2);
	} else {
		api_error(r, 404, "no such endpoint");
	}
}

static void route(struct api_req *r, const char *url)
{
	_cleanup_free_ char *path = strdup(url);
	char *seg[MAX_SEGMENTS];
	int n;

	if (!path) {
		api_error(r, 503, "out of memory");
		return;
	}
	n = split_path(path, seg);
	if (n >= 1 && is(seg[0], "sandboxes"))
		route_sandboxes(r, seg + 1, n - 1, false);
	else if (n >= 2 && is(seg[0], "v2") && is(seg[1], "sandboxes"))
		route_sandboxes(r, seg + 2, n - 2, true);
	else if (n >= 1 && is(seg[0], "snapshots"))
		route_snapshots(r, seg + 1, n - 1);
	else if (n >= 1 && tpl_api_route(r, seg, n)) /* templates.c */
		;
	else
		api_error(r, 404, "no such endpoint: %.128s", url);
}

/* Endpoints that need no key: health, metrics (bind the API to a trusted address). */
static bool route_public(struct api_req *r, const char *url)
{
	if (is(url, "/health") && is(r->method, "GET")) {
		r->status = 200;
		r->text = strdup("Health check successful");
		r->content_type = "text/plain; charset=utf-8";
		return true;
	}
	if (is(url, "/metrics") && is(r->method, "GET")) {
		struct hbuf out;
		int rc;

		hbuf_init(&out, 1 << 20);
		rc = metrics_render(&r->api->metrics, r->api->store, &out);
		if (rc == 0)
			rc = conn_guard_metrics_render(r->api->guard, "api", &out);
		if (rc == 0 && r->api->cfg.proxy)
			rc = proxy_metrics_render(r->api->cfg.proxy, &out);
		if (rc < 0) {
			hbuf_free(&out);
			api_error(r, 503, "metrics unavailable");
			return true;
		}
		r->status = 200;
		r->text = hbuf_steal(&out, NULL);
		r->content_type = "text/plain; version=0.0.4";
		return true;
	}
	return false;
}

static bool is_public(const char *url, const char *method)
{
	return is(method, "GET") && (is(url, "/health") || is(url, "/metrics"));
}

/*
 * Runs when the head is complete, before any byte of the body is read: a
 * request without a valid key, over its rate, or declaring a body over the
 * limit is answered at once, so an unauthenticated client cannot make the
 * API buffer up to max_body per connection.
 */
static bool admit(struct api_req *r, struct conn_state *cs)
{
	const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
						     "Content-Length");

	if (!authenticate(r) || !api_rate_check(r, RL_REQUEST))
		return false;
	if (cl) {
		char *end;
		unsigned long long n;

		errno = 0;
		n = strtoull(cl, &end, 10);
		if (errno || *end || end == cl || n > r->api->cfg.max_body) {
			api_error(r, 413, "request body larger than %zu bytes",
				  r->api->cfg.max_body);
			return false;
		}
	}
	cs->admitted = true;
	cs->team_id = r->team_id;
	return true;
}

static void handle(struct api_req *r, const char *url, struct conn_state *cs)
{
	if (route_public(r, url))
		return;
	if (!cs->admitted) {
		api_error(r, 500, "internal error: request was not admitted");
		return;
	}
	r->team_id = cs->team_id;
	if (cs->too_big) {
		api_error(r, 413, "request body larger than %zu bytes", r->api->cfg.max_body);
		return;
	}
	route(r, url);
	if (r->status == 0)
		api_error(r, 500, "internal error: no reply was made");
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	struct api *a = cls;
	struct conn_state *cs = calloc(1, sizeof(*cs));

	if (!cs)
		return NULL;
	cs->uri = strdup(uri ? uri : "/");
	if (!cs->uri) {
		free(cs);
		return NULL;
	}
	hbuf_init(&cs->body, a->cfg.max_body);
	cs->start_us = mono_us();
	return cs;
}

/* Host is read once the head is complete: a sandbox host is never the API. */
static bool for_proxy(struct api *a, struct conn_state *cs, struct MHD_Connection *conn)
{
	if (cs->proxy_req)
		return true;
	if (cs->started || !a->cfg.proxy)
		return false;
	return proxy_wants(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host"));
}

static enum MHD_Result finish(struct api *a, struct conn_state *cs, struct api_req *r,
			      const char *url, const char *method, bool preflight)
{
	enum MHD_Result ret = send_reply(r, preflight);

	metrics_record(&a->metrics, r->status, mono_us() - cs->start_us);
	log_debug("api", NULL, "%s %s -> %u", method, url, r->status);
	json_decref(r->json);
	free(r->text);
	return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_size, void **con_cls)
{
	struct api *a = cls;
	struct conn_state *cs = *con_cls;
	struct api_req r = { .api = a, .conn = conn, .method = method };
	bool preflight = is(method, "OPTIONS");

	if (!cs)
		return MHD_NO; /* out of memory when the request line came */
	if (!cs->started && !cs->proxy_req)
		conn_guard_head_done(a->guard, conn); /* the first call: head complete */
	if (for_proxy(a, cs, conn))
		return (enum MHD_Result)proxy_access(a->cfg.proxy, conn, cs->uri, method,
						     upload_data, upload_size,
						     &cs->proxy_req);
	/* Template archive uploads: a signed URL, no key, streamed to disk. */
	if (cs->upload || (!cs->started && tpl_api_is_upload(method, url))) {
		cs->started = true;
		return tpl_api_upload(a, conn, url, upload_data, upload_size, &cs->upload);
	}
	if (!cs->started) {
		cs->started = true;
		if (preflight || is_public(url, method) || admit(&r, cs))
			return MHD_YES;
		return finish(a, cs, &r, url, method, false);
	}
	if (*upload_size) {
		/* Past the limit the rest is read and dropped, then refused with 413. */
		if (!cs->too_big && hbuf_append(&cs->body, upload_data, *upload_size) < 0)
			cs->too_big = true;
		*upload_size = 0;
		return MHD_YES;
	}
	r.body = cs->body.data ? cs->body.data : "";
	r.body_len = cs->body.len;
	if (preflight)
		r.status = 204;
	else
		handle(&r, url, cs);
	return finish(a, cs, &r, url, method, preflight);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct api *a = cls;
	struct conn_state *cs = *con_cls;

	if (!cs)
		return;
	/* Kept alive, the connection owes the next request's head again; after
	 * a WebSocket upgrade the socket is the relay's. */
	if (!cs->proxy_req || !proxy_request_upgraded(cs->proxy_req))
		conn_guard_request_done(a->guard, conn);
	if (cs->proxy_req)
		proxy_completed(a->cfg.proxy, &cs->proxy_req);
	tpl_api_upload_end(&cs->upload);
	hbuf_free(&cs->body);
	free(cs->uri);
	free(cs);
	*con_cls = NULL;
}

/* Each connection keeps its upstream connection for proxied requests. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	struct api *a = cls;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		conn_guard_opened(a->guard, conn);
		if (a->cfg.proxy)
			*socket_context = proxy_conn_new(a->cfg.proxy);
	} else {
		conn_guard_closed(a->guard, conn);
		if (a->cfg.proxy)
			proxy_conn_free(*socket_context);
		*socket_context = NULL;
	}
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	log_warn("api", NULL, "microhttpd: %s", msg);
}

static int bind_addr(const struct api_config *cfg, struct sockaddr_in *sa,
		     struct herr *err)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)cfg->port);
	if (inet_pton(AF_INET, cfg->listen, &sa->sin_addr) != 1)
		return herr_set(err, -EINVAL, "api-listen: '%s' is not an IPv4 address",
				cfg->listen);
	if (cfg->port > 65535)
		return herr_set(err, -EINVAL, "api-port: %u is not a port", cfg->port);
	return 0;
}

int api_start(const struct api_config *cfg, struct store *st, struct lifecycle *lc,
	      const unsigned char secret[SERVER_SECRET_LEN], struct api **out,
	      struct herr *err)
{
	struct sockaddr_in sa;
	struct api *a;
	const union MHD_DaemonInfo *info;
	int rc = bind_addr(cfg, &sa, err);

	if (rc < 0)
		return rc;
	a = calloc(1, sizeof(*a));
	if (!a)
		return herr_set(err, -ENOMEM, "api: out of memory");
	a->cfg = *cfg;
	a->listen = strdup(cfg->listen);
	a->domain = strdup(cfg->domain ? cfg->domain : "");
	a->envd_version = strdup(cfg->envd_version);
	a->limits = rl_table_new();
	if (!a->listen || !a->domain || !a->envd_version || !a->limits) {
		api_stop(a);
		return herr_set(err, -ENOMEM, "api: out of memory");
	}
	a->cfg.listen = a->listen;
	a->cfg.domain = a->domain;
	a->cfg.envd_version = a->envd_version;
	a->store = st;
	a->lc = lc;
	memcpy(a->secret, secret, SERVER_SECRET_LEN);
	/* A quarter of the limit may owe a request (see conn_guard.h). */
	rc = conn_guard_new("api", cfg->head_timeout_s ? cfg->head_timeout_s : 20u,
			    cfg->max_connections / 4 ? cfg->max_connections / 4 : 1,
			    &a->guard, err);
	if (rc < 0) {
		api_stop(a);
		return rc;
	}
	/* poll() rather than select(): a connection whose descriptor passes
	 * FD_SETSIZE (1024) is served too, not refused. */
	a->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION |
				     MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
				     MHD_ALLOW_UPGRADE | MHD_USE_POLL,
				     0, NULL, NULL, on_request, a,
				     MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, a,
				     MHD_OPTION_URI_LOG_CALLBACK, on_uri, a,
				     MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
				     MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
				     MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
				     MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections,
				     MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_per_ip,
				     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
				     MHD_OPTION_END);
	if (!a->daemon) {
		api_stop(a);
		return herr_set(err, -EADDRINUSE, "api: cannot listen on %s:%u (in use, or "
				"not an address of this host)", cfg->listen, cfg->port);
	}
	info = MHD_get_daemon_info(a->daemon, MHD_DAEMON_INFO_BIND_PORT);
	a->port = info ? info->port : cfg->port;
	*out = a;
	return 0;
}

unsigned api_port(struct api *a)
{
	return a->port;
}

void api_stop(struct api *a)
{
	if (!a)
		return;
	if (a->daemon)
		MHD_stop_daemon(a->daemon);
	conn_guard_free(a->guard);
	rl_table_free(a->limits);
	free(a->listen);
	free(a->domain);
	free(a->envd_version);
	free(a);
}
