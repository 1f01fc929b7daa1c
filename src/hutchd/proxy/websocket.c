/*
 * Upgrade requests (WebSocket and any other protocol switch), passed
 * through as bytes.
 *
 * The request head is written to a socket dialed into the sandbox; the
 * answer's head is read with a hard size limit and parsed by http-parser
 * (libcurl has no way to hand over a connection after a 101 for a protocol
 * it does not speak, and libmicrohttpd is a server only). A 101 is relayed
 * to the client through libmicrohttpd's upgrade support, and from then on a
 * relay thread copies bytes both ways with blocking writes, so a peer that
 * does not read stops the other from sending (backpressure) rather than
 * filling memory. Any other answer is returned as a normal response.
 */
#include "proxy_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <http_parser.h>

#include "cleanup.h"
#include "log.h"

#define HEAD_MAX (16 * 1024)
#define BODY_MAX (1024 * 1024)
#define HANDSHAKE_TIMEOUT_S 30

struct relay {
	struct proxy *p;
	char id[PROXY_ID_MAX + 1];
	int up, client;
	struct MHD_UpgradeResponseHandle *urh;
	char *up_extra;        /* sandbox bytes read past the 101 head */
	size_t up_extra_len;
};

/* ---- the sandbox's answer ---- */

struct answer {
	struct hdr hdrs[64];
	size_t n;
	bool in_value, complete, headers_done;
	struct hbuf field, value, body;
};

static int flush_header(struct answer *a)
{
	if (!a->field.len)
		return 0;
	if (a->n == sizeof(a->hdrs) / sizeof(a->hdrs[0]))
		return -1;
	a->hdrs[a->n].name = hbuf_steal(&a->field, NULL);
	a->hdrs[a->n].value = a->value.len ? hbuf_steal(&a->value, NULL) : strdup("");
	a->n++;
	return 0;
}

static int on_field(http_parser *hp, const char *at, size_t n)
{
	struct answer *a = hp->data;

	if (a->in_value && flush_header(a) < 0)
		return -1;
	a->in_value = false;
	return hbuf_append(&a->field, at, n) < 0 ? -1 : 0;
}

static int on_value(http_parser *hp, const char *at, size_t n)
{
	struct answer *a = hp->data;

	a->in_value = true;
	return hbuf_append(&a->value, at, n) < 0 ? -1 : 0;
}

static int on_headers_complete(http_parser *hp)
{
	struct answer *a = hp->data;

	a->headers_done = true;
	return flush_header(a) < 0 ? -1 : 0;
}

static int on_body(http_parser *hp, const char *at, size_t n)
{
	struct answer *a = hp->data;

	return hbuf_append(&a->body, at, n) < 0 ? -1 : 0;
}

static int on_complete(http_parser *hp)
{
	((struct answer *)hp->data)->complete = true;
	return 0;
}

static void answer_free(struct answer *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->hdrs[i].name);
		free(a->hdrs[i].value);
	}
	hbuf_free(&a->field);
	hbuf_free(&a->value);
	hbuf_free(&a->body);
}

/* ---- sending the request head ---- */

static int write_all(int fd, const char *p, size_t n)
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

static enum MHD_Result add_line(void *cls, enum MHD_ValueKind kind, const char *name,
				const char *value)
{
	if (!header_is_control_plane(name))
		hbuf_printf(cls, "%s: %s\r\n", name, value ? value : "");
	return MHD_YES;
}

static int send_head(struct preq *q, int fd)
{
	_cleanup_hbuf_ struct hbuf h;

	hbuf_init(&h, 64 * 1024);
	if (hbuf_printf(&h, "%s %s HTTP/1.1\r\n", q->method, q->uri) < 0)
		return -1;
	MHD_get_connection_values(q->conn, MHD_HEADER_KIND, add_line, &h);
	if (hbuf_append_str(&h, "\r\n") < 0)
		return -1;
	return write_all(fd, h.data, h.len);
}

/* Reads until the head is parsed (and, for a non-101, the body). Bytes past
 * a 101 head are left in *extra. */
static int read_answer(int fd, http_parser *hp, struct answer *a, char **extra,
		       size_t *extra_len)
{
	http_parser_settings s = {
		.on_header_field = on_field, .on_header_value = on_value,
		.on_headers_complete = on_headers_complete, .on_body = on_body,
		.on_message_complete = on_complete,
	};
	char buf[8192];
	size_t seen = 0;

	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		size_t used;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		used = http_parser_execute(hp, &s, buf, (size_t)n);
		if (hp->upgrade && a->headers_done) {
			*extra_len = (size_t)n - used;
			*extra = *extra_len ? malloc(*extra_len) : NULL;
			if (*extra_len && !*extra)
				return -1;
			if (*extra_len)
				memcpy(*extra, buf + used, *extra_len);
			return 0;
		}
		if (HTTP_PARSER_ERRNO(hp) != HPE_OK || used != (size_t)n)
			return -1;
		if (a->complete || n == 0)
			return a->headers_done ? 0 : -1;
		seen += (size_t)n;
		if (!a->headers_done && seen > HEAD_MAX)
			return -1;
	}
}

/* ---- the relay ---- */

static void relay_count(struct proxy *p, int delta)
{
	pthread_mutex_lock(&p->relay_mu);
	p->relays = (unsigned)((int)p->relays + delta);
	__atomic_store_n(&p->metrics.active_relays, p->relays, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&p->relay_cv);
	pthread_mutex_unlock(&p->relay_mu);
}

static void set_blocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl >= 0)
		fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

/* Copies what one side has to the other; false at its end or on error. */
static bool pump(int from, int to)
{
	char buf[64 * 1024];
	ssize_t n = recv(from, buf, sizeof(buf), 0);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return true;
	if (n <= 0) {
		shutdown(to, SHUT_WR);
		return false;
	}
	return write_all(to, buf, (size_t)n) == 0;
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	struct pollfd pfd[2] = { { .fd = r->client, .events = POLLIN },
				 { .fd = r->up, .events = POLLIN } };
	bool open[2] = { true, true };

	if (r->up_extra_len && write_all(r->client, r->up_extra, r->up_extra_len) < 0)
		open[0] = open[1] = false;
	while (open[0] || open[1]) {
		pfd[0].fd = open[0] ? r->client : -1;
		pfd[1].fd = open[1] ? r->up : -1;
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
		if (pfd[0].revents && !pump(r->client, r->up))
			open[0] = false;
		if (pfd[1].revents && !pump(r->up, r->client))
			open[1] = false;
		/* An error (not an orderly end) on either side ends both. */
		if ((pfd[0].revents | pfd[1].revents) & (POLLERR | POLLNVAL))
			break;
	}
	registry_remove(&r->p->reg, r->up);
	registry_remove(&r->p->reg, r->client);
	close(r->up);
	MHD_upgrade_action(r->urh, MHD_UPGRADE_ACTION_CLOSE);
	log_debug("proxy", r->id, "websocket relay ended");
	relay_count(r->p, -1);
	free(r->up_extra);
	free(r);
	return NULL;
}

static void on_upgraded(void *cls, struct MHD_Connection *conn, void *req_cls,
			const char *extra_in, size_t extra_in_size, MHD_socket sock,
			struct MHD_UpgradeResponseHandle *urh)
{
	struct relay *r = cls;
	pthread_t t;

	r->client = sock;
	r->urh = urh;
	set_blocking(sock);
	set_blocking(r->up);
	if ((extra_in_size && write_all(r->up, extra_in, extra_in_size) < 0) ||
	    registry_add(&r->p->reg, r->id, sock) < 0 ||
	    pthread_create(&t, NULL, relay_main, r) != 0) {
		registry_remove(&r->p->reg, sock);
		registry_remove(&r->p->reg, r->up);
		close(r->up);
		MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
		relay_count(r->p, -1);
		free(r->up_extra);
		free(r);
		return;
	}
	pthread_detach(t);
}

/* ---- the request ---- */

static enum MHD_Result reply_answer(struct preq *q, struct answer *a, int code)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		a->body.len, a->body.data ? a->body.data : (char *)"",
		MHD_RESPMEM_MUST_COPY);
	const char *connection = NULL;
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	for (size_t i = 0; i < a->n; i++)
		if (strcasecmp(a->hdrs[i].name, "Connection") == 0)
			connection = a->hdrs[i].value;
	for (size_t i = 0; i < a->n; i++)
		if (!header_is_hop_by_hop(a->hdrs[i].name, connection) &&
		    strcasecmp(a->hdrs[i].name, "Content-Length") != 0)
			MHD_add_response_header(resp, a->hdrs[i].name, a->hdrs[i].value);
	ret = MHD_queue_response(q->conn, (unsigned)code, resp);
	MHD_destroy_response(resp);
	q->status = (unsigned)code;
	q->head_us = proxy_mono_us();
	q->replied = true;
	return ret;
}

static enum MHD_Result reply_switch(struct preq *q, struct answer *a, int fd,
				    char *extra, size_t extra_len)
{
	struct relay *r = calloc(1, sizeof(*r));
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!r)
		return MHD_NO;
	*r = (struct relay){ .p = q->p, .up = fd, .client = -1, .up_extra = extra,
			     .up_extra_len = extra_len };
	snprintf(r->id, sizeof(r->id), "%s", q->r.id);
	resp = MHD_create_response_for_upgrade(on_upgraded, r);
	if (!resp) {
		free(r);
		return MHD_NO;
	}
	/* MHD writes Connection: Upgrade itself; the rest is the sandbox's. */
	for (size_t i = 0; i < a->n; i++)
		if (strcasecmp(a->hdrs[i].name, "Connection") != 0)
			MHD_add_response_header(resp, a->hdrs[i].name, a->hdrs[i].value);
	relay_count(q->p, +1);
	ret = MHD_queue_response(q->conn, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
	MHD_destroy_response(resp);
	if (ret != MHD_YES) {
		relay_count(q->p, -1);
		free(r);
		return ret;
	}
	__atomic_add_fetch(&q->p->metrics.websockets, 1, __ATOMIC_RELAXED);
	q->status = 101;
	q->head_us = proxy_mono_us();
	q->replied = true;
	return ret;
}

static int dial_checked(struct preq *q, enum MHD_Result *ret)
{
	struct herr err = { 0 };
	struct timeval tv = { .tv_sec = HANDSHAKE_TIMEOUT_S };
	int fd = q->p->be.dial(q->p->be.ctx, q->r.id, q->r.port, &err);

	if (fd < 0) {
		q->dial_rc = fd;
		snprintf(q->dial_msg, sizeof(q->dial_msg), "%s", err.msg);
		*ret = q->dial_rc == -ENOENT ?
			reply_error(q, 502, "The sandbox was not found", NULL, 0) :
			reply_error(q, 502, "The sandbox is running but port is not open",
				    "port", q->r.port);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (registry_add(&q->p->reg, q->r.id, fd) < 0) {
		close(fd);
		*ret = reply_error(q, 503, "out of memory", NULL, 0);
		return -1;
	}
	return fd;
}

enum MHD_Result ws_forward(struct preq *q)
{
	struct timeval none = { 0 };
	struct answer a = { 0 };
	enum MHD_Result ret = MHD_NO;
	http_parser hp;
	char *extra = NULL;
	size_t extra_len = 0;
	int fd = dial_checked(q, &ret);

	if (fd < 0)
		return ret;
	hbuf_init(&a.field, 8192);
	hbuf_init(&a.value, 8192);
	hbuf_init(&a.body, BODY_MAX);
	http_parser_init(&hp, HTTP_RESPONSE);
	hp.data = &a;
	if (send_head(q, fd) < 0 || read_answer(fd, &hp, &a, &extra, &extra_len) < 0) {
		ret = reply_error(q, 502, "The sandbox gave no valid answer to the upgrade "
				  "request", "port", q->r.port);
	} else if (hp.status_code == 101 && hp.upgrade) {
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof(none));
		ret = reply_switch(q, &a, fd, extra, extra_len);
		if (q->replied) {
			answer_free(&a);
			return ret;
		}
		free(extra);
	} else {
		ret = reply_answer(q, &a, hp.status_code);
		free(extra);
	}
	registry_remove(&q->p->reg, fd);
	close(fd);
	answer_free(&a);
	return ret;
}
