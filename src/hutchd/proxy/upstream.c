/*
 * The upstream side of a proxied request: HTTP/1.1 over a socket that the
 * backend dialed inside the sandbox's network namespace. The request head
 * is written from the client's parsed headers; the answer is parsed by
 * http-parser (chunked and length framing, keep-alive rules).
 *
 * libcurl was the first choice, but the Debian 7.88.1 build ignores
 * CURL_SOCKOPT_ALREADY_CONNECTED and calls connect() on the socket it was
 * given (EISCONN), and a socket can only be made inside the sandbox's
 * namespace by the runtime, already connected.
 *
 * A thread of the proxy's pool (workers.c) runs the exchange. The request
 * body flows from the client thread into a bounded ring that the worker drains to the socket; the
 * response body flows from the worker into another bounded ring that
 * libmicrohttpd's content reader drains. Whichever side is ahead waits on
 * the request's condition variable, so memory stays bounded and a slow
 * client slows the sandbox down (and the other way round). The reader hands
 * over whatever is there at once: a Connect stream's envelopes reach the
 * client as the agent writes them.
 *
 * Upstream keep-alive: on the proxy port each client connection keeps its
 * last upstream connection with the sandbox id and port it belongs to, and
 * reuses it only for the same sandbox and port.
 */
#include "proxy_internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>

#include "log.h"

#define RING_SIZE (256 * 1024)
#define HEAD_MAX (64 * 1024)

/* ---- request body: client thread -> ring -> worker ---- */

void upstream_push(struct preq *q, const char *data, size_t n)
{
	pthread_mutex_lock(&q->mu);
	while (n > 0 && !q->done && !q->aborted) {
		size_t put = ring_put(&q->req, data, n);

		data += put;
		n -= put;
		if (put)
			pthread_cond_broadcast(&q->cv);
		else
			pthread_cond_wait(&q->cv, &q->mu);
	}
	pthread_mutex_unlock(&q->mu);
}

/* Takes up to cap bytes of body; 0 at its end, -1 when aborted. */
static ssize_t take_body(struct preq *q, char *buf, size_t cap)
{
	size_t got;

	pthread_mutex_lock(&q->mu);
	while (q->req.len == 0 && !q->req_eof && !q->aborted)
		pthread_cond_wait(&q->cv, &q->mu);
	if (q->aborted) {
		pthread_mutex_unlock(&q->mu);
		return -1;
	}
	got = ring_get(&q->req, buf, cap);
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
	return (ssize_t)got;
}

static int send_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int send_body(struct preq *q, int fd)
{
	bool chunked = q->content_length < 0;
	char buf[64 * 1024], frame[32];
	ssize_t n;

	while ((n = take_body(q, buf, sizeof(buf))) > 0) {
		if (chunked) {
			int len = snprintf(frame, sizeof(frame), "%zx\r\n", (size_t)n);

			if (send_all(fd, frame, (size_t)len) < 0)
				return -1;
		}
		if (send_all(fd, buf, (size_t)n) < 0 || (chunked && send_all(fd, "\r\n", 2) < 0))
			return -1;
	}
	if (n < 0)
		return -1;
	return chunked ? send_all(fd, "0\r\n\r\n", 5) : 0;
}

/* ---- response: socket -> parser -> ring -> client ---- */

struct parse_state {
	struct preq *q;
	struct hbuf field, value;
	bool in_value, complete, has_length;
};

static int flush_header(struct parse_state *ps)
{
	struct preq *q = ps->q;
	struct hdr *v;

	if (!ps->field.len)
		return 0;
	if (strcasecmp(ps->field.data, "Content-Length") == 0)
		ps->has_length = true;
	v = realloc(q->resp_hdrs, (q->n_resp_hdrs + 1) * sizeof(*v));
	if (!v)
		return -1;
	q->resp_hdrs = v;
	v[q->n_resp_hdrs].name = hbuf_steal(&ps->field, NULL);
	v[q->n_resp_hdrs].value = ps->value.len ? hbuf_steal(&ps->value, NULL) : strdup("");
	q->n_resp_hdrs++;
	return 0;
}

static int on_field(http_parser *hp, const char *at, size_t n)
{
	struct parse_state *ps = hp->data;

	if (ps->in_value && flush_header(ps) < 0)
		return -1;
	ps->in_value = false;
	return hbuf_append(&ps->field, at, n) < 0 ? -1 : 0;
}

static int on_value(http_parser *hp, const char *at, size_t n)
{
	struct parse_state *ps = hp->data;

	ps->in_value = true;
	return hbuf_append(&ps->value, at, n) < 0 ? -1 : 0;
}

static int on_head_done(http_parser *hp)
{
	struct parse_state *ps = hp->data;
	struct preq *q = ps->q;

	if (flush_header(ps) < 0)
		return -1;
	/* Informational answers (100 Continue) come before the real one. */
	if (hp->status_code < 200 && hp->status_code != 101) {
		for (size_t i = 0; i < q->n_resp_hdrs; i++) {
			free(q->resp_hdrs[i].name);
			free(q->resp_hdrs[i].value);
		}
		q->n_resp_hdrs = 0;
		return 0;
	}
	pthread_mutex_lock(&q->mu);
	q->code = hp->status_code;
	q->resp_len = ps->has_length ? (int64_t)hp->content_length : -1;
	if (strcmp(q->method, "HEAD") == 0 || q->code == 204 || q->code == 304)
		q->resp_len = 0;
	q->head_ready = true;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
	/* 1 tells the parser that no body follows (HEAD). */
	return strcmp(q->method, "HEAD") == 0 ? 1 : 0;
}

static int on_body(http_parser *hp, const char *at, size_t n)
{
	struct preq *q = ((struct parse_state *)hp->data)->q;
	size_t done = 0;

	pthread_mutex_lock(&q->mu);
	while (done < n && !q->aborted) {
		size_t put = ring_put(&q->resp, at + done, n - done);

		done += put;
		if (put)
			pthread_cond_broadcast(&q->cv);
		else
			pthread_cond_wait(&q->cv, &q->mu);
	}
	pthread_mutex_unlock(&q->mu);
	return done == n ? 0 : -1;
}

static int on_complete(http_parser *hp)
{
	struct parse_state *ps = hp->data;

	if (hp->status_code < 200 && hp->status_code != 101)
		return 0; /* the real answer follows */
	ps->complete = true;
	ps->q->keep_alive = http_should_keep_alive(hp);
	http_parser_pause(hp, 1);
	return 0;
}

static int read_response(struct preq *q, int fd)
{
	http_parser_settings s = {
		.on_header_field = on_field, .on_header_value = on_value,
		.on_headers_complete = on_head_done, .on_body = on_body,
		.on_message_complete = on_complete,
	};
	struct parse_state ps = { .q = q };
	char buf[64 * 1024];
	size_t head_bytes = 0;
	http_parser hp;
	int rc = -1;

	http_parser_init(&hp, HTTP_RESPONSE);
	hp.data = &ps;
	hbuf_init(&ps.field, 8192);
	hbuf_init(&ps.value, HEAD_MAX);
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		size_t used;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		used = http_parser_execute(&hp, &s, buf, (size_t)n);
		if (ps.complete) {
			/* Bytes after the answer: the connection is not reusable. */
			if (used != (size_t)n)
				q->keep_alive = false;
			rc = 0;
			break;
		}
		if (n == 0 || HTTP_PARSER_ERRNO(&hp) != HPE_OK)
			break;
		head_bytes += (size_t)n;
		if (!q->head_ready && head_bytes > HEAD_MAX)
			break;
	}
	hbuf_free(&ps.field);
	hbuf_free(&ps.value);
	return rc;
}

/* ---- the connection ---- */

static void drop_fd(struct proxy *p, int fd)
{
	if (fd < 0)
		return;
	registry_remove(&p->reg, fd);
	close(fd);
}

static int dial(struct preq *q)
{
	struct herr err = { 0 };
	int fd = q->p->be.dial(q->p->be.ctx, q->r.id, q->r.port, &err);
	int one = 1;

	/* The head and the body go out in separate writes: with Nagle on, the
	 * body would wait for the sandbox's delayed ACK of the head (40 ms). */
	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	if (fd >= 0 && registry_add(&q->p->reg, q->r.id, fd) < 0) {
		close(fd);
		fd = herr_set(&err, -ENOMEM, "out of memory");
	}
	if (fd < 0) {
		pthread_mutex_lock(&q->mu);
		q->dial_rc = fd;
		snprintf(q->dial_msg, sizeof(q->dial_msg), "%s", err.msg);
		pthread_mutex_unlock(&q->mu);
	}
	return fd;
}

/* The client connection's idle upstream socket, if it goes where we go. */
static int reuse(struct preq *q)
{
	struct pconn *pc = q->pc;
	int fd;

	if (!pc || pc->fd < 0)
		return -1;
	fd = pc->fd;
	pc->fd = -1;
	if (strcmp(pc->id, q->r.id) != 0 || pc->port != q->r.port) {
		drop_fd(q->p, fd);
		return -1;
	}
	return fd;
}

static void set_up_fd(struct preq *q, int fd)
{
	pthread_mutex_lock(&q->mu);
	q->up_fd = fd;
	pthread_mutex_unlock(&q->mu);
}

static void keep_or_close(struct preq *q, int fd, bool ok)
{
	set_up_fd(q, -1);
	if (ok && q->keep_alive && q->pc && !q->aborted) {
		q->pc->fd = fd;
		snprintf(q->pc->id, sizeof(q->pc->id), "%s", q->r.id);
		q->pc->port = q->r.port;
		return;
	}
	drop_fd(q->p, fd);
}

void upstream_exchange(struct preq *q)
{
	int fd = reuse(q);
	bool reused = fd >= 0, ok = false;

	if (fd < 0)
		fd = dial(q);
	set_up_fd(q, fd);
	/* A kept connection the sandbox closed meanwhile fails on the first
	 * write: then once more on a new one (nothing was sent yet). */
	if (fd >= 0 && send_all(fd, q->head.data, q->head.len) < 0 && reused) {
		drop_fd(q->p, fd);
		fd = dial(q);
		set_up_fd(q, fd);
		if (fd >= 0 && send_all(fd, q->head.data, q->head.len) < 0)
			q->failed = true;
	}
	if (fd >= 0 && !q->failed && (!q->has_body || send_body(q, fd) == 0))
		ok = read_response(q, fd) == 0;
	if (fd >= 0)
		keep_or_close(q, fd, ok);
	pthread_mutex_lock(&q->mu);
	q->failed = !ok;
	q->done = true;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

/* ---- libmicrohttpd's content reader (client thread) ---- */

static bool client_gone(struct preq *q)
{
	struct pollfd pfd = { .fd = q->client_fd, .events = POLLRDHUP };

	return q->client_fd >= 0 && poll(&pfd, 1, 0) == 1 &&
	       (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static void wait_a_second(struct preq *q)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 1;
	pthread_cond_timedwait(&q->cv, &q->mu, &ts);
}

ssize_t upstream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct preq *q = cls;
	ssize_t ret;

	pthread_mutex_lock(&q->mu);
	for (;;) {
		if (q->resp.len > 0) {
			ret = (ssize_t)ring_get(&q->resp, buf, max);
			pthread_cond_broadcast(&q->cv);
			break;
		}
		if (q->done || q->aborted) {
			ret = q->done && !q->failed && !q->aborted ?
				MHD_CONTENT_READER_END_OF_STREAM :
				MHD_CONTENT_READER_END_WITH_ERROR;
			break;
		}
		wait_a_second(q);
		/* An idle upstream would keep us here after the client left. */
		if (q->resp.len == 0 && client_gone(q)) {
			q->aborted = true;
			if (q->up_fd >= 0)
				shutdown(q->up_fd, SHUT_RDWR);
			pthread_cond_broadcast(&q->cv);
		}
	}
	pthread_mutex_unlock(&q->mu);
	return ret;
}

/* ---- the request head ---- */

bool header_is_hop_by_hop(const char *name, const char *connection)
{
	static const char *const hop[] = {
		"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
		"Transfer-Encoding", "Upgrade", "Proxy-Authenticate", "Proxy-Authorization",
	};
	size_t n = strlen(name);

	for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
		if (strcasecmp(name, hop[i]) == 0)
			return true;
	/* Headers named in Connection are for this hop only too. */
	for (const char *c = connection; c && *c;) {
		size_t len;

		c += strspn(c, " \t,");
		len = strcspn(c, " \t,");
		if (len == n && strncasecmp(c, name, n) == 0)
			return true;
		c += len;
	}
	return false;
}

/*
 * Headers only hutchd itself may send to an agent: the init secret goes to
 * /init over the sandbox's loopback, never through here. A client that
 * guessed or stole one gets nothing past the proxy with it.
 */
bool header_is_control_plane(const char *name)
{
	return strcasecmp(name, "X-Hutch-Init-Secret") == 0;
}

struct hdr_ctx {
	struct preq *q;
	const char *connection;
	bool failed;
};

static enum MHD_Result add_req_header(void *cls, enum MHD_ValueKind kind,
				      const char *name, const char *value)
{
	struct hdr_ctx *c = cls;

	/* libmicrohttpd answered any Expect: 100-continue already, and the body
	 * goes upstream without waiting for one. */
	if (header_is_hop_by_hop(name, c->connection) || header_is_control_plane(name) ||
	    strcasecmp(name, "Content-Length") == 0 || strcasecmp(name, "Expect") == 0)
		return MHD_YES;
	if (hbuf_printf(&c->q->head, "%s: %s\r\n", name, value ? value : "") < 0) {
		c->failed = true;
		return MHD_NO;
	}
	return MHD_YES;
}

static int build_head(struct preq *q, struct herr *err)
{
	struct hdr_ctx c = { .q = q };
	int rc;

	c.connection = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND, "Connection");
	hbuf_init(&q->head, HEAD_MAX);
	rc = hbuf_printf(&q->head, "%s %s HTTP/1.1\r\n", q->method, q->uri);
	if (rc == 0)
		MHD_get_connection_values(q->conn, MHD_HEADER_KIND, add_req_header, &c);
	if (rc == 0 && !c.failed) {
		if (q->has_body && q->content_length >= 0)
			rc = hbuf_printf(&q->head, "Content-Length: %lld\r\n\r\n",
					 (long long)q->content_length);
		else if (q->has_body)
			rc = hbuf_append_str(&q->head, "Transfer-Encoding: chunked\r\n\r\n");
		else
			rc = hbuf_append_str(&q->head, "\r\n");
	}
	if (rc < 0 || c.failed)
		return herr_set(err, -E2BIG, "request head larger than %d bytes", HEAD_MAX);
	return 0;
}

int upstream_start(struct preq *q, struct pconn *pc, struct herr *err)
{
	int rc;

	q->up_fd = -1;
	q->pc = pc;
	if (ring_init(&q->req, RING_SIZE) < 0 || ring_init(&q->resp, RING_SIZE) < 0)
		return herr_set(err, -ENOMEM, "out of memory");
	rc = build_head(q, err);
	if (rc < 0)
		return rc;
	rc = workers_run(&q->p->workers, q);
	if (rc < 0)
		return herr_set(err, rc, "starting the upstream thread failed");
	q->worker_started = true;
	return 0;
}

void upstream_finish_body(struct preq *q)
{
	pthread_mutex_lock(&q->mu);
	q->req_eof = true;
	pthread_cond_broadcast(&q->cv);
	while (!q->head_ready && !q->done && !q->aborted)
		pthread_cond_wait(&q->cv, &q->mu);
	pthread_mutex_unlock(&q->mu);
}

/* Stops the exchange if it still runs and releases what it holds. */
void upstream_end(struct preq *q)
{
	if (q->worker_started) {
		pthread_mutex_lock(&q->mu);
		if (!q->done) {
			q->aborted = true;
			if (q->up_fd >= 0)
				shutdown(q->up_fd, SHUT_RDWR);
		}
		pthread_cond_broadcast(&q->cv);
		pthread_mutex_unlock(&q->mu);
		workers_wait(&q->p->workers, q);
		q->worker_started = false;
	}
	for (size_t i = 0; i < q->n_resp_hdrs; i++) {
		free(q->resp_hdrs[i].name);
		free(q->resp_hdrs[i].value);
	}
	free(q->resp_hdrs);
	hbuf_free(&q->head);
	ring_free(&q->req);
	ring_free(&q->resp);
}

void pconn_free(struct pconn *pc)
{
	if (!pc)
		return;
	if (pc->fd >= 0)
		drop_fd(pc->p, pc->fd);
	free(pc);
}
