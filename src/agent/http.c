/*
 * The agent's HTTP server (http.h): libmicrohttpd with one thread per
 * connection, so a long Connect stream or upload never blocks anyone else.
 *
 * Routing happens on the first call of a request. Requests whose answer is
 * known at once (health, CORS preflight, errors, /envs, /metrics) are
 * answered there; /init collects its JSON body first; /files and the RPC
 * paths are handed to their handlers, which keep their own per-request state
 * in a struct route until libmicrohttpd reports the request complete.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#include "auth.h"
#include "buf.h"
#include "cleanup.h"
#include "log.h"
#include "metrics.h"
#include "rpc.h"
#include "state.h"
#include "users.h"
#include "version.h"

/* Largest POST /init body: a token, a few names and the sandbox's env vars. */
#define INIT_BODY_MAX (1 << 20)
/*
 * libmicrohttpd's per-connection pool: it holds the request line and headers
 * and the read buffer, which starts at half of the pool. The read buffer is
 * what one recv() fills and one upload chunk holds, so its size sets the
 * syscalls per MB of an upload (recv, poll and write each run once per
 * chunk): 32 KiB chunks from a 64 KiB pool cost about 3 syscalls per 32 KiB.
 * The pool is mapped, not touched, so an idle connection costs only the
 * pages its headers use; the price is that headers may fill up to the pool.
 */
#define CONNECTION_MEMORY (512 * 1024)
/*
 * Seconds a connection may stay silent while it owes us a request: before
 * and while its request line and headers arrive, and when idle between
 * keep-alive requests. Routed RPC and /files requests run without it.
 */
#define HTTP_IDLE_TIMEOUT_S 15
/* TCP keepalive on every connection: long streams notice a vanished peer. */
#define TCP_KEEPALIVE_IDLE_S 60
#define TCP_KEEPALIVE_INTERVAL_S 10
#define TCP_KEEPALIVE_COUNT 6

#define UNAUTHORIZED_MESSAGE \
	"unauthorized access, please provide a valid access token or method signing if supported"

struct agent_server {
	struct MHD_Daemon *daemon;
};

/*
 * Connections that owe us a request. Anyone who can reach the port can open
 * connections and send nothing, or drip a header byte just often enough to
 * dodge the idle timeout; with one thread per connection and a connection
 * limit, enough of them would lock every client out. So at most a quarter
 * of the limit may be waiting for a request at once: when a new connection
 * would pass that, the connection that has waited longest is shut down.
 * Real clients send their request right after connecting and leave the
 * waiting list within a round trip; connections doing authorized work
 * (RPC, /files, /init) are never in it, so they keep the rest of the limit.
 *
 * The list holds socket descriptors, which libmicrohttpd closes after it
 * reports the connection closed (notify_connection, which takes the slot
 * out under slots_lock); shutting a socket down under the same lock can
 * therefore never reach a descriptor number that was already reused.
 */
struct conn_slot {
	struct conn_slot *prev, *next;
	int fd;
	int waiting;
};

static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conn_slot *waiting_head, *waiting_tail;
static unsigned int waiting_count;
static unsigned int waiting_max = 128;
static unsigned long long waiting_evicted;

static void slot_unlink_locked(struct conn_slot *slot)
{
	if (!slot->waiting)
		return;
	if (slot->prev)
		slot->prev->next = slot->next;
	else
		waiting_head = slot->next;
	if (slot->next)
		slot->next->prev = slot->prev;
	else
		waiting_tail = slot->prev;
	slot->prev = slot->next = NULL;
	slot->waiting = 0;
	waiting_count--;
}

static void slot_append_locked(struct conn_slot *slot)
{
	if (slot->waiting)
		return;
	slot->prev = waiting_tail;
	slot->next = NULL;
	if (waiting_tail)
		waiting_tail->next = slot;
	else
		waiting_head = slot;
	waiting_tail = slot;
	slot->waiting = 1;
	waiting_count++;
}

static struct conn_slot *slot_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return info ? info->socket_context : NULL;
}

/* waiting: 1 while the connection owes a request, 0 while it does work. */
static void slot_set_waiting(struct MHD_Connection *c, int waiting)
{
	struct conn_slot *slot = slot_of(c);

	if (!slot)
		return;
	pthread_mutex_lock(&slots_lock);
	if (waiting)
		slot_append_locked(slot);
	else
		slot_unlink_locked(slot);
	pthread_mutex_unlock(&slots_lock);
}

static void set_keepalive(int fd)
{
	int on = 1, idle = TCP_KEEPALIVE_IDLE_S, intvl = TCP_KEEPALIVE_INTERVAL_S,
	    cnt = TCP_KEEPALIVE_COUNT;

	/* Best effort: a socket without keepalive still works. */
	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) < 0)
		log_debug("http", NULL, "keepalive on fd %d: %s", fd, strerror(errno));
}

static void connection_started(struct MHD_Connection *c, void **socket_context)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	struct conn_slot *slot = calloc(1, sizeof(*slot));

	*socket_context = slot;
	if (!slot || !info)
		return; /* untracked: still served, and still under the idle timeout */
	slot->fd = info->connect_fd;
	set_keepalive(slot->fd);
	pthread_mutex_lock(&slots_lock);
	while (waiting_count >= waiting_max && waiting_head) {
		struct conn_slot *old = waiting_head;

		/* Its thread sees end of stream and closes it as usual. */
		shutdown(old->fd, SHUT_RDWR);
		slot_unlink_locked(old);
		waiting_evicted++;
		if (waiting_evicted == 1 || waiting_evicted % 1000 == 0)
			log_warn("http", NULL, "connections waiting for a request passed %u; "
				 "shut down the longest-waiting (evicted=%llu)", waiting_max,
				 waiting_evicted);
	}
	slot_append_locked(slot);
	pthread_mutex_unlock(&slots_lock);
}

static void notify_connection(void *cls, struct MHD_Connection *c, void **socket_context,
			      enum MHD_ConnectionNotificationCode code)
{
	struct conn_slot *slot = *socket_context;

	(void)cls;
	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		connection_started(c, socket_context);
		return;
	}
	if (!slot)
		return;
	pthread_mutex_lock(&slots_lock);
	slot_unlink_locked(slot);
	pthread_mutex_unlock(&slots_lock);
	free(slot);
	*socket_context = NULL;
}

enum route_kind { ROUTE_FILES, ROUTE_RPC, ROUTE_INIT };

/* Per-request state of the requests that last past their first call. */
struct route {
	enum route_kind kind;
	void *inner;          /* the handler's own state */
	struct hbuf body;     /* ROUTE_INIT */
	int responded;        /* a response is queued; swallow the rest */
	int too_big;          /* ROUTE_INIT: the body passed INIT_BODY_MAX */
};

/*
 * Requests without per-request state point their state at one of these:
 * simple (answered by answer_simple), unauthorized (401), answered (done;
 * any further call only drains).
 */
static char simple_marker, unauthorized_marker, answered_marker, init_refused_marker;

static const char *const cors_expose =
	"Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Location, Cache-Control, "
	"X-Content-Type-Options";

void http_add_common_headers(struct MHD_Response *r)
{
	MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
	MHD_add_response_header(r, "Access-Control-Expose-Headers", cors_expose);
}

static enum MHD_Result queue(struct MHD_Connection *c, unsigned status, struct MHD_Response *r)
{
	enum MHD_Result ret;

	if (!r)
		return MHD_NO;
	http_add_common_headers(r);
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result queue_json_owned(struct MHD_Connection *c, unsigned status, char *json)
{
	struct MHD_Response *r;

	if (!json)
		return MHD_NO;
	r = MHD_create_response_from_buffer(strlen(json), json, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(json);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				"application/json; charset=utf-8");
	return queue(c, status, r);
}

enum MHD_Result http_send_json(struct MHD_Connection *c, unsigned status, const char *json,
			       size_t len)
{
	struct MHD_Response *r;

	r = MHD_create_response_from_buffer(len, (void *)json, MHD_RESPMEM_MUST_COPY);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				"application/json; charset=utf-8");
	return queue(c, status, r);
}

enum MHD_Result http_send_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	json_t *o;
	char *s;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Messages may quote client input; jansson refuses invalid UTF-8. */
	o = json_pack("{s:i,s:s}", "code", (int)status, "message", msg);
	if (!o)
		o = json_pack("{s:i,s:s}", "code", (int)status,
			      "message", "request failed (message not valid UTF-8)");
	s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	return queue_json_owned(c, status, s);
}

/* A client-supplied string made safe to quote in a message: bounded, printable. */
static void sanitize(const char *in, char *out, size_t cap)
{
	size_t i = 0;

	for (; in && in[i] && i + 1 < cap; i++)
		out[i] = (in[i] >= 0x20 && in[i] < 0x7f) ? in[i] : '?';
	out[i] = '\0';
}

static int token_ok(struct MHD_Connection *c)
{
	return auth_token_ok(MHD_lookup_connection_value(c, MHD_HEADER_KIND,
							 "X-Access-Token"));
}

static enum MHD_Result send_unauthorized(struct MHD_Connection *c)
{
	return http_send_error(c, MHD_HTTP_UNAUTHORIZED, "%s", UNAUTHORIZED_MESSAGE);
}

/*
 * The secret hutchd gave this agent at start (agent_server_opts), "" when
 * none: then /init is guarded by the access token alone, as in envd. With
 * one, only hutchd can configure the sandbox: a client that reaches the
 * port (through some path the proxy failed to close, or from inside the
 * sandbox) cannot take over a sandbox that has no access token yet.
 */
static char init_secret[INIT_SECRET_MAX];
static pthread_mutex_t secret_lock = PTHREAD_MUTEX_INITIALIZER;

static int init_secret_ok(struct MHD_Connection *c)
{
	const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
							INIT_SECRET_HEADER);
	int ok;

	pthread_mutex_lock(&secret_lock);
	ok = !init_secret[0] || (given && auth_equal(given, init_secret));
	pthread_mutex_unlock(&secret_lock);
	return ok;
}

/* Whether the agent was started with a secret (an init may then replace it). */
static int init_secret_set(void)
{
	int set;

	pthread_mutex_lock(&secret_lock);
	set = init_secret[0] != '\0';
	pthread_mutex_unlock(&secret_lock);
	return set;
}

/*
 * A new secret, from an init that carried the current one: a sandbox forked
 * from another's snapshot starts with the source's agent, memory and all,
 * and hutchd hands it the fork's own secret on its first init.
 */
static void init_secret_replace(const char *secret)
{
	pthread_mutex_lock(&secret_lock);
	snprintf(init_secret, sizeof(init_secret), "%s", secret);
	pthread_mutex_unlock(&secret_lock);
}

static enum MHD_Result send_init_refused(struct MHD_Connection *c)
{
	return http_send_error(c, MHD_HTTP_UNAUTHORIZED, "%s",
			       "init refused: missing or wrong " INIT_SECRET_HEADER);
}

static enum MHD_Result send_not_found(struct MHD_Connection *c, const char *method,
				      const char *url)
{
	char safe[256];

	sanitize(url, safe, sizeof(safe));
	return http_send_error(c, MHD_HTTP_NOT_FOUND, "no route for %s %s", method, safe);
}

static enum MHD_Result send_bad_method(struct MHD_Connection *c, const char *method,
				       const char *url, const char *allowed)
{
	char safe[256];
	struct MHD_Response *r;
	json_t *o;
	char *s;

	sanitize(url, safe, sizeof(safe));
	o = json_pack("{s:i,s:s+++}", "code", MHD_HTTP_METHOD_NOT_ALLOWED,
		      "message", "method not allowed on ", safe, "; allowed: ", allowed);
	s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!s)
		return MHD_NO;
	r = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(s);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				"application/json; charset=utf-8");
	MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allowed);
	(void)method;
	return queue(c, MHD_HTTP_METHOD_NOT_ALLOWED, r);
}

/*
 * CORS preflight: envd lets any origin call it with any header (access is
 * controlled by the token, never by the origin), so the requested headers
 * are echoed back. libmicrohttpd has already refused header values with CR
 * or LF, so echoing cannot split the response.
 */
static enum MHD_Result send_preflight(struct MHD_Connection *c)
{
	const char *req_headers = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
			"Access-Control-Request-Headers");
	struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL,
								 MHD_RESPMEM_PERSISTENT);

	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Access-Control-Allow-Methods",
				"HEAD, GET, POST, PUT, PATCH, DELETE");
	MHD_add_response_header(r, "Access-Control-Allow-Headers",
				req_headers && *req_headers ? req_headers : "*");
	MHD_add_response_header(r, "Access-Control-Max-Age", "7200");
	MHD_add_response_header(r, "Vary",
				"Origin, Access-Control-Request-Method, "
				"Access-Control-Request-Headers");
	return queue(c, MHD_HTTP_NO_CONTENT, r);
}

static enum MHD_Result send_health(struct MHD_Connection *c)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL,
								 MHD_RESPMEM_PERSISTENT);

	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	return queue(c, MHD_HTTP_NO_CONTENT, r);
}

static enum MHD_Result send_envs(struct MHD_Connection *c)
{
	char **env = state_env_copy();
	json_t *o = json_object();

	for (char **e = env; o && *e; e++) {
		char *eq = strchr(*e, '=');
		if (!eq)
			continue;
		*eq = '\0';
		/* json_string fails on invalid UTF-8: such a variable is left out. */
		json_object_set_new(o, *e, json_string(eq + 1));
	}
	state_env_free(env);
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	return queue_json_owned(c, MHD_HTTP_OK, s);
}

static enum MHD_Result send_metrics(struct MHD_Connection *c)
{
	struct agent_metrics m;
	struct herr err = { 0 };

	if (metrics_collect(&m, &err) < 0) {
		log_warn("http", NULL, "metrics: %s", err.msg);
		return http_send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", err.msg);
	}
	return queue_json_owned(c, MHD_HTTP_OK, metrics_to_json(&m));
}

/* POST /init ------------------------------------------------------------- */

struct init_request {
	const char *token;        /* NULL clears it */
	json_t *env;              /* NULL keeps the current variables */
	const char *user;         /* NULL or "" keeps the current one */
	const char *workdir;      /* NULL or "" keeps the current one */
	const char *secret;       /* NULL keeps the init secret; else the new one */
	struct timespec ts;
	int has_ts;
};

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static struct timespec last_init_ts;

/* RFC 3339: 2024-05-01T10:20:30[.fraction](Z|+hh:mm|-hh:mm). */
static int parse_rfc3339(const char *s, struct timespec *out)
{
	struct tm tm = { 0 };
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	long nsec = 0, scale = 100000000;
	int sign, oh, om;

	if (!p)
		return -EINVAL;
	if (*p == '.') {
		if (!(p[1] >= '0' && p[1] <= '9'))
			return -EINVAL;
		for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
			nsec += scale * (*p - '0');
	}
	time_t t = timegm(&tm);
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if ((*p == '+' || *p == '-') && sscanf(p + 1, "%2d:%2d", &oh, &om) == 2 &&
		   strlen(p) == 6 && p[3] == ':') {
		sign = *p == '+' ? 1 : -1;
		t -= sign * (oh * 3600 + om * 60);
		p += 6;
	} else {
		return -EINVAL;
	}
	if (*p)
		return -EINVAL;
	out->tv_sec = t;
	out->tv_nsec = nsec;
	return 0;
}

/* Optional string member: NULL when absent or null, -EINVAL for other types. */
static int opt_string(json_t *o, const char *key, const char **out, struct herr *err)
{
	json_t *v = json_object_get(o, key);

	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return herr_set(err, -EINVAL, "%s: must be a string", key);
	*out = json_string_value(v);
	if (strlen(*out) != json_string_length(v))
		return herr_set(err, -EINVAL, "%s: contains a NUL byte", key);
	return 0;
}

static int check_init_env(json_t *env, struct herr *err)
{
	const char *key;
	json_t *v;

	if (!json_is_object(env))
		return herr_set(err, -EINVAL, "envVars: must be an object of strings");
	json_object_foreach(env, key, v) {
		if (!*key || strchr(key, '='))
			return herr_set(err, -EINVAL, "envVars: invalid variable name '%.100s'",
					key);
		if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
			return herr_set(err, -EINVAL, "envVars.%.100s: must be a string", key);
	}
	return 0;
}

/* Validates everything before anything is applied: an init is all or nothing. */
static int parse_init(json_t *root, struct init_request *req, struct herr *err)
{
	const char *ts;
	struct agent_user u;
	int r;

	memset(req, 0, sizeof(*req));
	if (!json_is_object(root))
		return herr_set(err, -EINVAL, "body: must be a JSON object");
	if ((r = opt_string(root, "accessToken", &req->token, err)) < 0 ||
	    (r = opt_string(root, "defaultUser", &req->user, err)) < 0 ||
	    (r = opt_string(root, "defaultWorkdir", &req->workdir, err)) < 0 ||
	    (r = opt_string(root, "timestamp", &ts, err)) < 0 ||
	    (r = opt_string(root, "initSecret", &req->secret, err)) < 0)
		return r;
	if (req->secret && (!*req->secret || strlen(req->secret) >= INIT_SECRET_MAX))
		return herr_set(err, -EINVAL, "initSecret: 1-%d bytes", INIT_SECRET_MAX - 1);
	/* Without a secret /init is open (envd's way): a secret set by whoever
	 * got there first would lock out the one who configures the sandbox. */
	if (req->secret && !init_secret_set())
		return herr_set(err, -EINVAL, "initSecret: this agent was started without "
				"an init secret (HUTCH_INIT_SECRET); /init stays open");
	if (req->token && strlen(req->token) >= STATE_TOKEN_MAX)
		return herr_set(err, -EINVAL, "accessToken: longer than %d bytes",
				STATE_TOKEN_MAX - 1);
	req->env = json_object_get(root, "envVars");
	if (json_is_null(req->env))
		req->env = NULL;
	if (req->env && (r = check_init_env(req->env, err)) < 0)
		return r;
	if (req->user && *req->user && users_lookup(req->user, &u, err) < 0)
		return herr_wrap(err, "defaultUser");
	if (req->workdir && *req->workdir &&
	    (req->workdir[0] != '/' || strlen(req->workdir) >= PATH_MAX))
		return herr_set(err, -EINVAL, "defaultWorkdir: '%.200s' is not an absolute path",
				req->workdir);
	if (ts) {
		if (parse_rfc3339(ts, &req->ts) < 0)
			return herr_set(err, -EINVAL, "timestamp: '%.64s' is not RFC 3339", ts);
		req->has_ts = 1;
	}
	return 0;
}

static int apply_env(json_t *env, struct herr *err)
{
	size_t n = json_object_size(env), i = 0;
	_cleanup_free_ const char **keys = calloc(n + 1, sizeof(*keys));
	_cleanup_free_ const char **values = calloc(n + 1, sizeof(*values));
	const char *key;
	json_t *v;

	if (!keys || !values)
		return herr_set(err, -ENOMEM, "envVars: out of memory");
	json_object_foreach(env, key, v) {
		keys[i] = key;
		values[i++] = json_string_value(v);
	}
	return state_set_env(keys, values, i, err);
}

static int older_than_last(const struct timespec *ts)
{
	return ts->tv_sec < last_init_ts.tv_sec ||
	       (ts->tv_sec == last_init_ts.tv_sec && ts->tv_nsec < last_init_ts.tv_nsec);
}

static int apply_init(const struct init_request *req, struct herr *err)
{
	int r = 0;

	pthread_mutex_lock(&init_lock);
	/* An init that hands over a new secret is hutchd's, sent once to a
	 * fork whose last init was its source's, by the clock of then (since
	 * stepped back, perhaps): it is never a late retry. */
	if (req->has_ts && !req->secret && older_than_last(&req->ts)) {
		/* A delayed retry of an older init must not undo a newer one. */
		pthread_mutex_unlock(&init_lock);
		log_info("http", NULL, "init ignored: its timestamp predates the last init");
		return 0;
	}
	if (req->env)
		r = apply_env(req->env, err);
	if (r == 0) {
		state_set_access_token(req->token);
		if (req->user && *req->user)
			state_set_default_user(req->user);
		if (req->workdir && *req->workdir)
			state_set_default_workdir(req->workdir);
		if (req->secret)
			init_secret_replace(req->secret);
		if (req->has_ts)
			last_init_ts = req->ts;
	}
	pthread_mutex_unlock(&init_lock);
	if (r == 0)
		log_info("http", NULL, "init applied secure=%s env=%zu",
			 req->token && *req->token ? "yes" : "no",
			 req->env ? json_object_size(req->env) : (size_t)0);
	return r;
}

static enum MHD_Result finish_init(struct MHD_Connection *c, struct route *rt)
{
	struct init_request req;
	struct herr err = { 0 };
	json_error_t jerr;
	json_t *root;
	struct MHD_Response *r;

	root = json_loadb(rt->body.data ? rt->body.data : "", rt->body.len,
			  JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return http_send_error(c, MHD_HTTP_BAD_REQUEST, "invalid JSON body: %s",
				       jerr.text);
	if (parse_init(root, &req, &err) < 0 || apply_init(&req, &err) < 0) {
		json_decref(root);
		return http_send_error(c, err.code == -ENOMEM ? 500 : MHD_HTTP_BAD_REQUEST,
				       "%s", err.msg);
	}
	json_decref(root);
	r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "X-Envd-Version", AGENT_ENVD_VERSION);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	return queue(c, MHD_HTTP_NO_CONTENT, r);
}

/*
 * libmicrohttpd accepts no response while a body is still arriving, so an
 * oversized chunked body is drained (never stored) and refused at its end.
 */
static enum MHD_Result continue_init(struct MHD_Connection *c, struct route *rt,
				     const char *data, size_t *size)
{
	if (*size == 0) {
		if (rt->responded)
			return MHD_YES;
		rt->responded = 1;
		if (rt->too_big)
			return http_send_error(c, 413, "init body larger than %d bytes",
					       INIT_BODY_MAX);
		return finish_init(c, rt);
	}
	if (!rt->too_big && hbuf_append(&rt->body, data, *size) < 0) {
		rt->too_big = 1;
		hbuf_free(&rt->body);
	}
	*size = 0;
	return MHD_YES;
}

/* A declared length over the limit is refused before the body is read. */
static int declared_too_big(struct MHD_Connection *c, size_t max)
{
	const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_LENGTH);
	char *end;
	unsigned long long n;

	if (!cl)
		return 0;
	errno = 0;
	n = strtoull(cl, &end, 10);
	return errno == ERANGE || (end != cl && n > max);
}

/* Dispatch ----------------------------------------------------------------- */

static struct route *new_route(enum route_kind kind)
{
	struct route *rt = calloc(1, sizeof(*rt));

	if (!rt)
		return NULL;
	rt->kind = kind;
	hbuf_init(&rt->body, INIT_BODY_MAX);
	return rt;
}

static int is_get(const char *method)
{
	return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

/* Answers every request that needs no per-request state. */
static enum MHD_Result answer_simple(struct MHD_Connection *c, const char *url,
				     const char *method)
{
	if (strcmp(method, "OPTIONS") == 0)
		return send_preflight(c);
	if (strcmp(url, "/health") == 0)
		return is_get(method) ? send_health(c)
				      : send_bad_method(c, method, url, "GET, HEAD");
	if (strcmp(url, "/envs") == 0 || strcmp(url, "/metrics") == 0) {
		if (!is_get(method))
			return send_bad_method(c, method, url, "GET, HEAD");
		if (!token_ok(c))
			return send_unauthorized(c);
		return url[1] == 'e' ? send_envs(c) : send_metrics(c);
	}
	if (strcmp(url, "/init") == 0)
		return send_bad_method(c, method, url, "POST");
	return send_not_found(c, method, url);
}

static enum MHD_Result run_route(struct MHD_Connection *c, struct route *rt, const char *url,
				 const char *method, const char *data, size_t *size)
{
	switch (rt->kind) {
	case ROUTE_FILES:
		return files_handler(c, method, data, size, &rt->inner);
	case ROUTE_RPC:
		return rpc_handler(c, url, method, data, size, &rt->inner);
	case ROUTE_INIT:
		return continue_init(c, rt, data, size);
	}
	return MHD_NO;
}

/* Request checks ----------------------------------------------------------- */

struct header_scan {
	const char *content_length; /* the first one seen */
	int length_conflict;        /* another Content-Length with a different value */
	int chunked;                /* a Transfer-Encoding header */
	char bad[80];               /* name of a header or parameter holding a NUL */
	const char *bad_kind;
};

static enum MHD_Result scan_value(void *cls, enum MHD_ValueKind kind, const char *key,
				  size_t key_size, const char *value, size_t value_size)
{
	struct header_scan *h = cls;

	/*
	 * Our handlers read values as C strings: a NUL inside would silently
	 * cut a path or a token short, so such a request is refused instead.
	 */
	if (strlen(key) != key_size || (value && strlen(value) != value_size)) {
		sanitize(key, h->bad, sizeof(h->bad));
		h->bad_kind = kind == MHD_GET_ARGUMENT_KIND ? "query parameter" : "header";
		return MHD_NO;
	}
	if (kind != MHD_HEADER_KIND)
		return MHD_YES;
	if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
		if (!h->content_length)
			h->content_length = value;
		else if (strcmp(h->content_length, value ? value : "") != 0)
			h->length_conflict = 1;
	} else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
		h->chunked = 1;
	}
	return MHD_YES;
}

/*
 * Framing a proxy in front of us might read differently from libmicrohttpd
 * (conflicting lengths, a length beside chunked coding) is refused, so no
 * request can be smuggled past whatever sits in between. Returns 0 when the
 * request is acceptable, else the 400 it was answered with (1).
 */
static int refuse_bad_request(struct MHD_Connection *c, enum MHD_Result *ret)
{
	struct header_scan h = { 0 };

	MHD_get_connection_values_n(c, MHD_HEADER_KIND, scan_value, &h);
	if (!h.bad_kind)
		MHD_get_connection_values_n(c, MHD_GET_ARGUMENT_KIND, scan_value, &h);
	if (h.bad_kind)
		*ret = http_send_error(c, MHD_HTTP_BAD_REQUEST, "%s '%s' contains a NUL byte",
				       h.bad_kind, h.bad);
	else if (h.length_conflict)
		*ret = http_send_error(c, MHD_HTTP_BAD_REQUEST,
				       "conflicting Content-Length headers");
	else if (h.content_length && h.chunked)
		*ret = http_send_error(c, MHD_HTTP_BAD_REQUEST,
				       "Content-Length together with Transfer-Encoding");
	else
		return 0;
	return 1;
}

/*
 * Work that may rightly stay silent for long (a stream waiting for process
 * output, a slow upload) runs without the idle timeout; the connection gets
 * it back, and rejoins the waiting list, when the request completes.
 */
static void begin_work(struct MHD_Connection *c, enum route_kind kind)
{
	slot_set_waiting(c, 0);
	if (kind != ROUTE_INIT)
		MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned int)0);
}

/*
 * First call of a request: pick its route. Nothing is queued here for our
 * own routes: libmicrohttpd closes the connection after a response queued
 * on the first call (it cannot know the body was read), which would defeat
 * keep-alive. So they answer on the next call, once any body is drained.
 */
static enum MHD_Result start_request(struct MHD_Connection *c, const char *url,
				     const char *method, const char *data, size_t *size,
				     void **con_cls)
{
	enum route_kind kind;
	enum MHD_Result ret;
	struct route *rt;

	if (refuse_bad_request(c, &ret)) {
		*con_cls = &answered_marker;
		return ret;
	}
	if (strcmp(method, "OPTIONS") == 0) {
		*con_cls = &simple_marker;
		return MHD_YES;
	}
	if (strcmp(url, "/files") == 0) {
		kind = ROUTE_FILES; /* checks the token or a signature itself */
	} else if (strcmp(url, "/init") == 0 && strcmp(method, "POST") == 0) {
		kind = ROUTE_INIT;
	} else if (rpc_is_rpc_path(url)) {
		kind = ROUTE_RPC;
	} else {
		*con_cls = &simple_marker;
		return MHD_YES;
	}
	/* Checked first: without the secret, a token says nothing about who
	 * may configure the sandbox. */
	if (kind == ROUTE_INIT && !init_secret_ok(c)) {
		*con_cls = &init_refused_marker;
		return MHD_YES;
	}
	/* RPCs and a re-init must come from whoever holds the current token. */
	if (kind != ROUTE_FILES && !token_ok(c)) {
		*con_cls = &unauthorized_marker;
		return MHD_YES;
	}
	if (kind == ROUTE_INIT && declared_too_big(c, INIT_BODY_MAX)) {
		/* Answering now closes the connection, which is right here. */
		*con_cls = &answered_marker;
		return http_send_error(c, 413, "init body larger than %d bytes", INIT_BODY_MAX);
	}
	rt = new_route(kind);
	if (!rt)
		return MHD_NO;
	*con_cls = rt;
	begin_work(c, kind);
	if (kind == ROUTE_INIT)
		return MHD_YES;
	return run_route(c, rt, url, method, data, size);
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *c, const char *url,
				      const char *method, const char *version,
				      const char *data, size_t *size, void **con_cls)
{
	void *st = *con_cls;

	if (st == NULL)
		return start_request(c, url, method, data, size, con_cls);
	if (st == &simple_marker || st == &unauthorized_marker ||
	    st == &init_refused_marker) {
		if (*size != 0) {
			*size = 0; /* a body nobody reads */
			return MHD_YES;
		}
		*con_cls = &answered_marker;
		if (st == &init_refused_marker)
			return send_init_refused(c);
		return st == &simple_marker ? answer_simple(c, url, method)
					    : send_unauthorized(c);
	}
	if (st == &answered_marker) {
		*size = 0;
		return MHD_YES;
	}
	return run_route(c, st, url, method, data, size);
}

static void request_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			      enum MHD_RequestTerminationCode why)
{
	struct route *rt = *con_cls;

	(void)cls;
	(void)why;
	/* Between keep-alive requests the connection owes us one again. */
	MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
				  (unsigned int)HTTP_IDLE_TIMEOUT_S);
	slot_set_waiting(c, 1);
	*con_cls = NULL;
	if (!rt || (void *)rt == &answered_marker || (void *)rt == &simple_marker ||
	    (void *)rt == &unauthorized_marker || (void *)rt == &init_refused_marker)
		return;
	if (rt->kind == ROUTE_FILES)
		files_done(rt->inner);
	else if (rt->kind == ROUTE_RPC)
		rpc_done(rt->inner);
	hbuf_free(&rt->body);
	free(rt);
}

/* Server ------------------------------------------------------------------- */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	log_warn("http", NULL, "%s", msg);
}

/* Numeric IPv4 or IPv6 address (no name lookups in a sandbox's PID 1). */
static int make_addr(const char *addr, int port, struct sockaddr_storage *ss, int *is_v6,
		     struct herr *err)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (port <= 0 || port > 65535)
		return herr_set(err, -EINVAL, "port: %d is not between 1 and 65535", port);
	if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		*is_v6 = 0;
		return 0;
	}
	if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		*is_v6 = 1;
		return 0;
	}
	return herr_set(err, -EINVAL, "listen: '%s' is not a numeric IPv4 or IPv6 address", addr);
}

int agent_server_start(const struct agent_server_opts *opts, struct agent_server **out,
		       struct herr *err)
{
	struct sockaddr_storage ss;
	/* MHD_USE_ITC lets agent_server_quiesce wake the listening thread. */
	/*
	 * MHD_USE_POLL: poll() rather than select(), so a connection whose fd
	 * number passes FD_SETSIZE (1024; the agent holds pipes of many
	 * processes) still works.
	 */
	unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
			     MHD_USE_ERROR_LOG | MHD_USE_ITC | MHD_USE_POLL;
	unsigned int limit = opts->max_connections > 0 ? (unsigned)opts->max_connections : 512;
	const char *addr = opts->listen_addr ? opts->listen_addr : "0.0.0.0";
	int is_v6 = 0, r;
	_cleanup_free_ struct agent_server *s = calloc(1, sizeof(*s));

	if (!s)
		return herr_set(err, -ENOMEM, "starting the HTTP server: out of memory");
	if (opts->init_secret && strlen(opts->init_secret) >= sizeof(init_secret))
		return herr_set(err, -EINVAL, "init-secret: longer than %zu bytes",
				sizeof(init_secret) - 1);
	snprintf(init_secret, sizeof(init_secret), "%s",
		 opts->init_secret ? opts->init_secret : "");
	r = make_addr(addr, opts->port, &ss, &is_v6, err);
	if (r < 0)
		return r;
	if (is_v6)
		flags |= MHD_USE_IPv6;
	waiting_max = limit / 4 > 0 ? limit / 4 : 1;
	s->daemon = MHD_start_daemon(flags, (uint16_t)opts->port, NULL, NULL,
		access_handler, NULL,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
		/*
		 * No MHD_OPTION_LISTENING_ADDRESS_REUSE: left out, libmicrohttpd
		 * sets SO_REUSEADDR only. 1 would add SO_REUSEPORT, with which
		 * any process of the agent's user (root in the sandbox) could
		 * listen on this port too and take a share of its connections,
		 * hutchd's /init and its secret included; 0 would drop
		 * SO_REUSEADDR as well, and a resume's CRIU could then not bind
		 * the port again while the paused netns holds connections to it
		 * in TIME_WAIT (EADDRINUSE).
		 */
		/* Lifted per request for streams and transfers (begin_work). */
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)HTTP_IDLE_TIMEOUT_S,
		MHD_OPTION_CONNECTION_LIMIT, limit,
		MHD_OPTION_NOTIFY_CONNECTION, notify_connection, NULL,
		/* Bounds the request line and headers a client can make us hold. */
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
		MHD_OPTION_NOTIFY_COMPLETED, request_completed, NULL,
		MHD_OPTION_END);
	if (!s->daemon)
		return herr_set(err, -EADDRNOTAVAIL, "listening on %s port %d failed "
				"(address in use or not available)", addr, opts->port);
	*out = steal_ptr(&s);
	return 0;
}

void agent_server_quiesce(struct agent_server *s)
{
	MHD_socket fd;

	if (!s || !s->daemon)
		return;
	fd = MHD_quiesce_daemon(s->daemon);
	if (fd != MHD_INVALID_SOCKET)
		close(fd);
}

/* How long open streams get to deliver their end before connections close. */
#define STREAM_END_GRACE_MS 2000

void agent_server_stop(struct agent_server *s)
{
	struct rpc_status st;

	if (!s)
		return;
	rpc_fail(&st, RPC_UNAVAILABLE, "agent shutting down");
	rpc_streams_shutdown(&st, STREAM_END_GRACE_MS);
	MHD_stop_daemon(s->daemon);
	free(s);
}
