/*
 * The proxy's server core: libmicrohttpd with a thread per client
 * connection, per-request routing (route.c), the proxy's own error replies
 * (protocol.md §6.5), metrics, and the hand-off to upstream.c (plain HTTP)
 * or websocket.c (Upgrade).
 */
#include "proxy_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "cleanup.h"
#include "conn_guard.h"
#include "log.h"

static const double latency_bounds[PROXY_LATENCY_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5,
};

int64_t proxy_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void metrics_record(struct proxy_metrics *m, unsigned status, int64_t usec)
{
	if (status < 600)
		__atomic_add_fetch(&m->by_status[status], 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&m->latency_count, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&m->latency_sum_us, (uint64_t)(usec < 0 ? 0 : usec),
			   __ATOMIC_RELAXED);
	for (int i = 0; i < PROXY_LATENCY_BUCKETS; i++)
		if ((double)usec / 1e6 <= latency_bounds[i])
			__atomic_add_fetch(&m->latency_le[i], 1, __ATOMIC_RELAXED);
}

static uint64_t load(const uint64_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

int proxy_metrics_render(struct proxy *p, struct hbuf *out)
{
	struct proxy_metrics *m = &p->metrics;
	int rc = hbuf_append_str(out, "# HELP hutch_proxy_requests_total Proxied requests, "
				 "by the status the client got.\n"
				 "# TYPE hutch_proxy_requests_total counter\n");

	for (unsigned s = 100; rc == 0 && s < 600; s++)
		if (load(&m->by_status[s]))
			rc = hbuf_printf(out, "hutch_proxy_requests_total{status=\"%u\"} %"
					 PRIu64 "\n", s, load(&m->by_status[s]));
	if (rc == 0)
		rc = hbuf_append_str(out, "# HELP hutch_proxy_response_head_seconds Time from "
				     "a request's head to its response head.\n"
				     "# TYPE hutch_proxy_response_head_seconds histogram\n");
	for (int i = 0; rc == 0 && i < PROXY_LATENCY_BUCKETS; i++)
		rc = hbuf_printf(out, "hutch_proxy_response_head_seconds_bucket{le=\"%g\"} %"
				 PRIu64 "\n", latency_bounds[i], load(&m->latency_le[i]));
	if (rc == 0)
		rc = hbuf_printf(out, "hutch_proxy_response_head_seconds_bucket{le=\"+Inf\"} %"
				 PRIu64 "\nhutch_proxy_response_head_seconds_sum %.6f\n"
				 "hutch_proxy_response_head_seconds_count %" PRIu64 "\n"
				 "# TYPE hutch_proxy_websockets_total counter\n"
				 "hutch_proxy_websockets_total %" PRIu64 "\n"
				 "# TYPE hutch_proxy_websockets_open gauge\n"
				 "hutch_proxy_websockets_open %" PRIu64 "\n",
				 load(&m->latency_count), (double)load(&m->latency_sum_us) / 1e6,
				 load(&m->latency_count), load(&m->websockets),
				 load(&m->active_relays));
	if (rc == 0)
		rc = conn_guard_metrics_render(p->guard, "proxy", out);
	return rc;
}

/* ---- replies the proxy makes itself ---- */

/*
 * A person who opens a sandbox URL in a browser gets a page, scripts and
 * SDKs get JSON: a navigation is what browsers mark with Sec-Fetch-Mode
 * "navigate", or (older browsers) an Accept that asks for HTML and not
 * JSON. fetch() and XMLHttpRequest send another mode, so code always
 * gets JSON.
 */
static bool wants_html(struct preq *q)
{
	const char *mode = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
						       "Sec-Fetch-Mode");
	const char *accept = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
							 "Accept");

	if (mode)
		return strcmp(mode, "navigate") == 0;
	return accept && strstr(accept, "text/html") && !strstr(accept, "json");
}

/* Text from the request (the path) is escaped: the page cannot carry markup
 * or script that a client put in its URL. */
static int html_escaped(struct hbuf *out, const char *s)
{
	int rc = 0;

	for (; rc == 0 && *s; s++) {
		switch (*s) {
		case '<': rc = hbuf_append_str(out, "&lt;"); break;
		case '>': rc = hbuf_append_str(out, "&gt;"); break;
		case '&': rc = hbuf_append_str(out, "&amp;"); break;
		case '"': rc = hbuf_append_str(out, "&quot;"); break;
		case '\'': rc = hbuf_append_str(out, "&#39;"); break;
		default: rc = hbuf_append(out, s, 1);
		}
	}
	return rc;
}

static char *html_page(unsigned status, json_t *body)
{
	const char *msg = json_string_value(json_object_get(body, "message"));
	const char *id = json_string_value(json_object_get(body, "sandboxId"));
	struct hbuf out;
	int rc;

	hbuf_init(&out, 16 * 1024);
	rc = hbuf_printf(&out, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
			 "<title>%u</title></head>\n<body><h1>%u</h1>\n<p>", status, status);
	if (rc == 0)
		rc = html_escaped(&out, msg ? msg : "");
	if (rc == 0 && id)
		rc = hbuf_append_str(&out, "</p>\n<p>Sandbox: ");
	if (rc == 0 && id)
		rc = html_escaped(&out, id);
	if (rc == 0)
		rc = hbuf_append_str(&out, "</p>\n</body></html>\n");
	if (rc < 0) {
		hbuf_free(&out);
		return NULL;
	}
	return hbuf_steal(&out, NULL);
}

static enum MHD_Result queue_json(struct preq *q, unsigned status, json_t *body)
{
	bool html = body && wants_html(q);
	_cleanup_free_ char *text = !body ? NULL : html ? html_page(status, body) :
		json_dumps(body, JSON_COMPACT);
	struct MHD_Response *resp;
	enum MHD_Result ret;

	json_decref(body);
	if (!text)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", html ? "text/html; charset=utf-8" :
				"application/json; charset=utf-8");
	ret = MHD_queue_response(q->conn, status, resp);
	MHD_destroy_response(resp);
	q->head_us = proxy_mono_us();
	q->status = status;
	q->replied = true;
	return ret;
}

enum MHD_Result reply_error(struct preq *q, unsigned status, const char *message,
			    const char *extra_key, long extra_value)
{
	json_t *j = json_pack("{s:s,s:i}", "message", message, "code", (int)status);

	if (j && *q->r.id)
		json_object_set_new(j, "sandboxId", json_string(q->r.id));
	if (j && extra_key)
		json_object_set_new(j, extra_key, json_integer(extra_value));
	return queue_json(q, status, j);
}

static enum MHD_Result reply_reserved(struct preq *q)
{
	json_t *j = json_pack("{s:s,s:s,s:i}", "message",
			      "This endpoint is reserved for the control plane and cannot "
			      "be reached through the sandbox proxy", "path", q->path,
			      "code", 404);

	return queue_json(q, 404, j);
}

/* ---- routing ---- */

struct sig_search {
	const struct signed_query *sq;
	struct proxy_sandbox *found;
};

static int try_signature(void *arg, const struct proxy_sandbox *s)
{
	struct sig_search *ss = arg;

	if (!route_signature_matches(ss->sq, s->access_token))
		return 0;
	*ss->found = *s;
	return 1;
}

/*
 * A pre-signed /files URL names no sandbox: the signature is SHA-256 over
 * the path, operation, user and the sandbox's secret access token, so the
 * sandbox is the one whose token reproduces it. Cost: one SHA-256 per
 * running secure sandbox on this node (about a microsecond each; a store
 * scan of running rows). Safe: without a sandbox's token no one can make a
 * signature that matches it, each comparison is constant-time, and a match
 * only routes the request to that sandbox's agent, which checks the
 * signature and its expiry again.
 */
static int route_by_signature(struct preq *q, bool *found, struct herr *err)
{
	bool has_sig, b;
	_cleanup_free_ char *sig = route_query_get(q->query, "signature", &has_sig);
	_cleanup_free_ char *path = route_query_get(q->query, "path", &b);
	_cleanup_free_ char *user = route_query_get(q->query, "username", &b);
	_cleanup_free_ char *exp = route_query_get(q->query, "signature_expiration", &b);
	struct signed_query sq = {
		.path = path ? path : "", .username = user ? user : "", .signature = sig,
		.expiration = exp, .write = strcmp(q->method, "POST") == 0,
	};
	struct sig_search ss = { .sq = &sq, .found = &q->sb };
	int rc;

	*found = false;
	if (!sig)
		return 0;
	rc = q->p->be.each_secure(q->p->be.ctx, try_signature, &ss, err);
	if (rc < 0)
		return rc;
	if (rc > 0) {
		*found = true;
		snprintf(q->r.id, sizeof(q->r.id), "%s", q->sb.id);
		q->r.port = PROXY_AGENT_PORT;
	}
	return 0;
}

static const char *header(struct preq *q, const char *name)
{
	return MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND, name);
}

static enum MHD_Result route_unnamed(struct preq *q, bool *routed)
{
	struct herr err = { 0 };
	bool found = false;

	*routed = false;
	if (strcmp(q->path, "/files") == 0 && route_by_signature(q, &found, &err) < 0) {
		log_error("proxy", NULL, "signature lookup: %s", err.msg);
		return reply_error(q, 503, "could not look up sandboxes", NULL, 0);
	}
	if (found) {
		*routed = true;
		return MHD_YES;
	}
	if (strcmp(q->path, "/files") == 0 && strstr(q->query, "signature="))
		return reply_error(q, 401, "invalid signature", NULL, 0);
	return reply_error(q, 400, "the request names no sandbox: send Host "
			   "<port>-<sandboxID>.<domain>, or the E2b-Sandbox-Id and "
			   "E2b-Sandbox-Port headers", NULL, 0);
}

static enum MHD_Result check_traffic_token(struct preq *q, bool *ok)
{
	const char *tok = header(q, "e2b-traffic-access-token");

	*ok = true;
	if (q->r.port == PROXY_AGENT_PORT || !*q->sb.traffic_token)
		return MHD_YES;
	*ok = false;
	if (!tok)
		return reply_error(q, 403, "Sandbox is secured with traffic access token. "
				   "Token header 'e2b-traffic-access-token' is missing", NULL, 0);
	if (!route_secret_equal(tok, q->sb.traffic_token))
		return reply_error(q, 403, "Sandbox is secured with traffic access token. "
				   "Provided token in header 'e2b-traffic-access-token' is "
				   "invalid", NULL, 0);
	*ok = true;
	return MHD_YES;
}

static bool has_body(struct preq *q)
{
	const char *cl = header(q, "Content-Length");
	const char *te = header(q, "Transfer-Encoding");

	q->content_length = -1;
	if (cl) {
		char *end;
		long long n = strtoll(cl, &end, 10);

		q->content_length = (*end || n < 0) ? -1 : n;
	}
	return te || (cl && q->content_length != 0);
}

struct framing {
	int n_cl, n_te;
	const char *cl;
	bool cl_differ;
};

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind,
				     const char *key, const char *value)
{
	struct framing *f = cls;

	(void)kind;
	if (strcasecmp(key, "Content-Length") == 0) {
		if (f->cl && strcmp(f->cl, value ? value : "") != 0)
			f->cl_differ = true;
		f->cl = value ? value : "";
		f->n_cl++;
	} else if (strcasecmp(key, "Transfer-Encoding") == 0) {
		f->n_te++;
	}
	return MHD_YES;
}

/*
 * How the body ends must be read the same way here and by the sandbox's
 * server, or a second request could hide inside the first one's body
 * (request smuggling). Anything a server might read two ways is refused:
 * Content-Length with Transfer-Encoding, differing Content-Lengths, several
 * Transfer-Encodings, or one that is not exactly "chunked".
 */
static const char *framing_problem(struct preq *q)
{
	struct framing f = { 0 };
	const char *te = header(q, "Transfer-Encoding");

	MHD_get_connection_values(q->conn, MHD_HEADER_KIND, count_framing, &f);
	if (f.n_cl && f.n_te)
		return "Content-Length and Transfer-Encoding together";
	if (f.cl_differ)
		return "differing Content-Length headers";
	if (f.n_te > 1 || (te && strcasecmp(te, "chunked") != 0))
		return "Transfer-Encoding other than a single 'chunked'";
	return NULL;
}

/* The first call of a request: its head is complete. */
static enum MHD_Result begin(struct preq *q, struct pconn *pc)
{
	struct herr err = { 0 };
	enum MHD_Result ret;
	bool go;
	int rc;

	const char *bad_framing = framing_problem(q);

	if (bad_framing)
		return reply_error(q, 400, bad_framing, NULL, 0);
	route_parse(header(q, "Host"), header(q, "E2b-Sandbox-Id"),
		    header(q, "E2b-Sandbox-Port"), &q->r);
	if (q->r.kind == ROUTE_ERROR)
		return reply_error(q, 400, q->r.message, NULL, 0);
	if (q->r.kind == ROUTE_NONE) {
		ret = route_unnamed(q, &go);
		if (!go)
			return ret;
	}
	if (q->r.port == PROXY_AGENT_PORT && route_is_internal(q->path))
		return reply_reserved(q);
	if (!*q->sb.id) {
		rc = q->p->be.lookup(q->p->be.ctx, q->r.id, &q->sb, &err);
		if (rc < 0) {
			log_error("proxy", q->r.id, "lookup: %s", err.msg);
			return reply_error(q, 503, "could not look up the sandbox", NULL, 0);
		}
		if (rc == 0)
			return reply_error(q, 502, "The sandbox was not found", NULL, 0);
	}
	ret = check_traffic_token(q, &go);
	if (!go)
		return ret;
	q->upgrade = header(q, "Upgrade") != NULL;
	if (q->upgrade)
		return MHD_YES;
	q->has_body = has_body(q);
	if (upstream_start(q, pc, &err) < 0) {
		log_error("proxy", q->r.id, "forwarding: %s", err.msg);
		return reply_error(q, err.code == -EINVAL ? 400 : 503, err.msg, NULL, 0);
	}
	return MHD_YES;
}

static enum MHD_Result upstream_failed(struct preq *q)
{
	if (q->aborted)
		return MHD_NO;
	if (q->dial_rc == -ENOENT)
		return reply_error(q, 502, "The sandbox was not found", NULL, 0);
	if (q->dial_rc == 0)
		return reply_error(q, 502, "The sandbox gave no valid answer on this port",
				   "port", q->r.port);
	if (q->dial_rc == -ECONNREFUSED)
		return reply_error(q, 502, "The sandbox is running but port is not open",
				   "port", q->r.port);
	log_warn("proxy", q->r.id, "port %u: %s", q->r.port, q->dial_msg);
	return reply_error(q, 502, "The sandbox could not be reached on this port",
			   "port", q->r.port);
}

static enum MHD_Result reply_upstream(struct preq *q)
{
	const char *connection = NULL;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	upstream_finish_body(q);
	if (!q->head_ready)
		return upstream_failed(q);
	for (size_t i = 0; i < q->n_resp_hdrs; i++)
		if (strcasecmp(q->resp_hdrs[i].name, "Connection") == 0)
			connection = q->resp_hdrs[i].value;
	resp = MHD_create_response_from_callback(q->resp_len >= 0 ?
						 (uint64_t)q->resp_len : MHD_SIZE_UNKNOWN,
						 64 * 1024, upstream_read, q, NULL);
	if (!resp)
		return MHD_NO;
	for (size_t i = 0; i < q->n_resp_hdrs; i++)
		if (!header_is_hop_by_hop(q->resp_hdrs[i].name, connection))
			MHD_add_response_header(resp, q->resp_hdrs[i].name,
						q->resp_hdrs[i].value);
	ret = MHD_queue_response(q->conn, (unsigned)q->code, resp);
	MHD_destroy_response(resp);
	q->head_us = proxy_mono_us();
	q->status = (unsigned)q->code;
	q->replied = true;
	return ret;
}

static enum MHD_Result on_call(struct proxy *p, struct preq *q, struct pconn *pc,
			       const char *upload_data, size_t *upload_size)
{
	if (!q->routed) {
		const union MHD_ConnectionInfo *ci =
			MHD_get_connection_info(q->conn, MHD_CONNECTION_INFO_CONNECTION_FD);

		/* The head is complete: from here the request may take as long
		 * as it needs (a stream), the head deadline no longer applies. */
		conn_guard_head_done(p->guard, q->conn);
		q->routed = true;
		q->client_fd = ci ? ci->connect_fd : -1;
		return begin(q, pc);
	}
	if (*upload_size) {
		if (q->worker_started)
			upstream_push(q, upload_data, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	if (q->replied)
		return MHD_YES;
	if (q->upgrade)
		return ws_forward(q);
	return reply_upstream(q);
}

/* ---- request contexts ---- */

static struct preq *preq_new(struct proxy *p, const char *uri)
{
	struct preq *q = calloc(1, sizeof(*q));
	char *mark;

	if (!q)
		return NULL;
	q->magic = PROXY_REQ_MAGIC;
	q->p = p;
	q->start_us = proxy_mono_us();
	q->client_fd = -1;
	q->uri = strdup(uri && *uri ? uri : "/");
	q->path = q->uri ? strndup(q->uri, strcspn(q->uri, "?")) : NULL;
	if (!q->uri || !q->path) {
		free(q->uri);
		free(q->path);
		free(q);
		return NULL;
	}
	mark = strchr(q->uri, '?');
	q->query = mark ? mark + 1 : "";
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	return q;
}

static void preq_free(struct preq *q)
{
	upstream_end(q);
	pthread_mutex_destroy(&q->mu);
	pthread_cond_destroy(&q->cv);
	free(q->uri);
	free(q->path);
	free(q);
}

static void finish(struct preq *q)
{
	metrics_record(&q->p->metrics, q->status, q->head_us ? q->head_us - q->start_us :
		       proxy_mono_us() - q->start_us);
	log_debug("proxy", *q->r.id ? q->r.id : NULL, "%s %s port=%u -> %u", q->method,
		  q->path, q->r.port, q->status);
	preq_free(q);
}

/* ---- libmicrohttpd callbacks (proxy port) ---- */

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	return preq_new(cls, uri);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_size, void **req_cls)
{
	struct proxy *p = cls;
	struct preq *q = *req_cls;
	const union MHD_ConnectionInfo *ci;

	if (!q)
		return MHD_NO;
	if (!q->routed) {
		q->conn = conn;
		snprintf(q->method, sizeof(q->method), "%s", method);
	}
	ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return on_call(p, q, ci ? ci->socket_context : NULL, upload_data, upload_size);
}

/* conn is NULL when another server (the API port) ends the request: that
 * server's own guard then tracks the connection. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct proxy *p = cls;
	struct preq *q = *req_cls;

	/* Kept alive, the connection owes the next request's head again. */
	if (conn && !(q && q->upgrade))
		conn_guard_request_done(p->guard, conn);
	if (q)
		finish(q);
	*req_cls = NULL;
}

bool proxy_request_upgraded(void *req_cls)
{
	struct preq *q = req_cls;

	return q && q->upgrade;
}

void *proxy_conn_new(struct proxy *p)
{
	struct pconn *pc = calloc(1, sizeof(*pc));

	if (pc) {
		pc->fd = -1;
		pc->p = p;
	}
	return pc;
}

void proxy_conn_free(void *conn_ctx)
{
	pconn_free(conn_ctx);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	struct proxy *p = cls;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		*socket_context = proxy_conn_new(p);
		conn_guard_opened(p->guard, conn);
	} else {
		conn_guard_closed(p->guard, conn);
		pconn_free(*socket_context);
		*socket_context = NULL;
	}
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	log_debug("proxy", NULL, "microhttpd: %s", msg);
}

/* ---- hand-off from another server (the API port) ---- */

bool proxy_wants(const char *host)
{
	struct route r;

	if (!host)
		return false;
	route_parse(host, NULL, NULL, &r);
	return r.kind == ROUTE_HOST || r.kind == ROUTE_ERROR;
}

int proxy_access(struct proxy *p, struct MHD_Connection *conn, const char *uri,
		 const char *method, const char *upload_data, size_t *upload_size,
		 void **req_cls)
{
	const union MHD_ConnectionInfo *ci;
	struct preq *q = *req_cls;

	if (!q) {
		q = preq_new(p, uri);
		if (!q)
			return MHD_NO;
		q->conn = conn;
		snprintf(q->method, sizeof(q->method), "%s", method);
		*req_cls = q;
	}
	ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return on_call(p, q, ci ? ci->socket_context : NULL, upload_data, upload_size);
}

void proxy_completed(struct proxy *p, void **req_cls)
{
	on_completed(p, NULL, req_cls, MHD_REQUEST_TERMINATED_COMPLETED_OK);
}

/* ---- start and stop ---- */

void proxy_close_sandbox(struct proxy *p, const char *id)
{
	if (!p)
		return;
	log_debug("proxy", id, "closing proxied connections");
	registry_shutdown(&p->reg, id);
}

static int bind_addr(const struct proxy_config *cfg, struct sockaddr_in *sa,
		     struct herr *err)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)cfg->port);
	if (inet_pton(AF_INET, cfg->listen, &sa->sin_addr) != 1)
		return herr_set(err, -EINVAL, "proxy listen address '%s' is not IPv4",
				cfg->listen);
	if (cfg->port > 65535)
		return herr_set(err, -EINVAL, "proxy-port: %u is not a port", cfg->port);
	return 0;
}

int proxy_start(const struct proxy_config *cfg, const struct proxy_backend *be,
		struct proxy **out, struct herr *err)
{
	const union MHD_DaemonInfo *info;
	struct sockaddr_in sa;
	struct proxy *p;
	unsigned limit = cfg->max_connections ? cfg->max_connections : 1000u;
	int rc = bind_addr(cfg, &sa, err);

	if (rc < 0)
		return rc;
	p = calloc(1, sizeof(*p));
	if (!p)
		return herr_set(err, -ENOMEM, "proxy: out of memory");
	p->cfg = *cfg;
	p->be = *be;
	registry_init(&p->reg);
	workers_init(&p->workers);
	pthread_mutex_init(&p->relay_mu, NULL);
	pthread_cond_init(&p->relay_cv, NULL);
	/* A quarter of the limit may owe a request: the rest stays for
	 * connections doing work, whatever idle clients do. */
	rc = conn_guard_new("proxy", cfg->head_timeout_s ? cfg->head_timeout_s : 20u,
			    limit / 4 ? limit / 4 : 1, &p->guard, err);
	if (rc < 0) {
		proxy_stop(p);
		return rc;
	}
	/* Date is the sandbox's to send (or not); MHD would add a second one.
	 * poll() rather than select(): descriptors past FD_SETSIZE (1024)
	 * are served too, and the proxy holds two per proxied request. */
	p->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION |
				     MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
				     MHD_ALLOW_UPGRADE | MHD_USE_SUPPRESS_DATE_NO_CLOCK |
				     MHD_USE_POLL,
				     0, NULL, NULL, on_request, p,
				     MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, p,
				     MHD_OPTION_URI_LOG_CALLBACK, on_uri, p,
				     MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
				     MHD_OPTION_NOTIFY_COMPLETED, on_completed, p,
				     MHD_OPTION_NOTIFY_CONNECTION, on_connection, p,
				     MHD_OPTION_CONNECTION_LIMIT, limit,
				     MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_per_ip,
				     MHD_OPTION_CONNECTION_TIMEOUT,
				     cfg->idle_timeout_s ? cfg->idle_timeout_s : 300u,
				     MHD_OPTION_END);
	if (!p->daemon) {
		proxy_stop(p);
		return herr_set(err, -EADDRINUSE, "proxy: cannot listen on %s:%u (in use, "
				"or not an address of this host)", cfg->listen, cfg->port);
	}
	info = MHD_get_daemon_info(p->daemon, MHD_DAEMON_INFO_BIND_PORT);
	p->port = info ? info->port : cfg->port;
	*out = p;
	return 0;
}

unsigned proxy_port(struct proxy *p)
{
	return p->port;
}

void proxy_stop(struct proxy *p)
{
	if (!p)
		return;
	/* Ends transfers and relays first so no connection thread stays blocked. */
	registry_shutdown(&p->reg, NULL);
	if (p->daemon)
		MHD_stop_daemon(p->daemon);
	pthread_mutex_lock(&p->relay_mu);
	while (p->relays > 0) {
		pthread_mutex_unlock(&p->relay_mu);
		registry_shutdown(&p->reg, NULL);
		pthread_mutex_lock(&p->relay_mu);
		if (p->relays > 0) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&p->relay_cv, &p->relay_mu, &ts);
		}
	}
	pthread_mutex_unlock(&p->relay_mu);
	workers_stop(&p->workers);
	conn_guard_free(p->guard);
	registry_free(&p->reg);
	pthread_mutex_destroy(&p->relay_mu);
	pthread_cond_destroy(&p->relay_cv);
	free(p);
}
