/*
 * The Connect protocol over libmicrohttpd (see rpc.h): routing of method
 * paths, request bodies, codecs, the user and deadline of a call, unary
 * answers and server streams.
 *
 * The server runs one thread per connection, so a unary handler simply runs
 * in the connection's thread, and a stream's response is a content-reader
 * callback that blocks (in poll) until a producer queues an envelope, the
 * deadline or a keepalive is due, or the client hangs up.
 *
 * Stream locking. Everything mutable in struct rpc_stream is guarded by
 * s->lock, except what only the connection thread touches (sock_fd). The
 * lock is never held while calling out (on_close callbacks, encoders, MHD)
 * nor while sleeping in poll, so producers and the reader cannot deadlock on
 * it. Producers wait on s->drained while too much is queued; the reader
 * wakes them whenever it takes bytes and whenever the stream closes. The
 * reader is woken through an eventfd that producers write after queueing;
 * since the reader checks the queue under the lock before it polls, and the
 * eventfd keeps its count, no wake-up is lost.
 *
 * Lifetime. A stream is reference counted: one reference for the request
 * (dropped in rpc_done), one for the MHD response (dropped by its free
 * callback), and one per producer that called rpc_stream_ref. Whichever
 * drops the last frees it, so MHD may finish with the response while a
 * producer thread still sends (and gets -EPIPE).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <time.h>

#include "arena.h"
#include "buf.h"
#include "cleanup.h"
#include "http.h"
#include "log.h"
#include "pbjson.h"
#include "rpc.h"
#include "state.h"
#include "users.h"

#define RPC_ARENA_CAP (256u << 20)
#define RPC_KEEPALIVE_DEFAULT_S 90
#define RPC_KEEPALIVE_MAX_S (24 * 3600)
#define RPC_STREAM_BLOCK (64 * 1024)
/* How much of an oversized body we read (and drop) to answer it cleanly. */
#define RPC_DISCARD_MAX (4 * (size_t)RPC_BODY_MAX)

/* ---- codes and small helpers ------------------------------------------- */

static const struct {
	const char *name;
	int http;
} codes[] = {
	[RPC_OK] = { "ok", 200 },
	[RPC_CANCELED] = { "canceled", 499 },
	[RPC_UNKNOWN] = { "unknown", 500 },
	[RPC_INVALID_ARGUMENT] = { "invalid_argument", 400 },
	[RPC_DEADLINE_EXCEEDED] = { "deadline_exceeded", 504 },
	[RPC_NOT_FOUND] = { "not_found", 404 },
	[RPC_ALREADY_EXISTS] = { "already_exists", 409 },
	[RPC_PERMISSION_DENIED] = { "permission_denied", 403 },
	[RPC_RESOURCE_EXHAUSTED] = { "resource_exhausted", 429 },
	[RPC_FAILED_PRECONDITION] = { "failed_precondition", 400 },
	[RPC_ABORTED] = { "aborted", 409 },
	[RPC_OUT_OF_RANGE] = { "out_of_range", 400 },
	[RPC_UNIMPLEMENTED] = { "unimplemented", 501 },
	[RPC_INTERNAL] = { "internal", 500 },
	[RPC_UNAVAILABLE] = { "unavailable", 503 },
	[RPC_DATA_LOSS] = { "data_loss", 500 },
	[RPC_UNAUTHENTICATED] = { "unauthenticated", 401 },
};

const char *rpc_code_name(enum rpc_code code)
{
	if ((unsigned)code >= sizeof(codes) / sizeof(codes[0]))
		return "unknown";
	return codes[code].name;
}

int rpc_code_http_status(enum rpc_code code)
{
	if ((unsigned)code >= sizeof(codes) / sizeof(codes[0]))
		return 500;
	return codes[code].http;
}

int rpc_fail(struct rpc_status *st, enum rpc_code code, const char *fmt, ...)
{
	va_list ap;

	st->code = code;
	va_start(ap, fmt);
	vsnprintf(st->message, sizeof(st->message), fmt, ap);
	va_end(ap);
	return -1;
}

int64_t rpc_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- call arenas ------------------------------------------------------- */

/* The arena behind rpc_ctx: locked, because a stream's producers share it. */
struct rpc_arena {
	pthread_mutex_t lock;
	struct arena *a;
};

static struct rpc_arena *rpc_arena_new(size_t cap)
{
	struct rpc_arena *ra = calloc(1, sizeof(*ra));

	if (!ra)
		return NULL;
	ra->a = arena_new(cap);
	if (!ra->a) {
		free(ra);
		return NULL;
	}
	pthread_mutex_init(&ra->lock, NULL);
	return ra;
}

static void rpc_arena_free(struct rpc_arena *ra)
{
	if (!ra)
		return;
	arena_free(ra->a);
	pthread_mutex_destroy(&ra->lock);
	free(ra);
}

void *rpc_alloc(struct rpc_ctx *ctx, size_t n)
{
	void *p;

	pthread_mutex_lock(&ctx->arena->lock);
	p = arena_zalloc(ctx->arena->a, n);
	pthread_mutex_unlock(&ctx->arena->lock);
	if (!p) {
		log_error("rpc", NULL, "call memory exhausted allocating %zu bytes (cap %zu)", n,
			  arena_cap(ctx->arena->a));
		abort();
	}
	return p;
}

char *rpc_strdup(struct rpc_ctx *ctx, const char *s)
{
	size_t n = strlen(s);
	char *p = rpc_alloc(ctx, n + 1);

	memcpy(p, s, n + 1);
	return p;
}

/* ---- codecs ------------------------------------------------------------ */

enum rpc_codec { CODEC_JSON, CODEC_PROTO };

static int encode_message(enum rpc_codec codec, const ProtobufCMessage *m, char **out,
			  size_t *len, struct herr *err)
{
	if (codec == CODEC_PROTO)
		return pbbin_encode(m, out, len, err);
	return pbjson_encode(m, out, len, err);
}

static int decode_message(enum rpc_codec codec, const ProtobufCMessageDescriptor *desc,
			  const void *data, size_t len, struct arena *a, ProtobufCMessage **out,
			  struct herr *err)
{
	if (codec == CODEC_PROTO)
		return pbbin_decode(desc, data, len, a, out, err);
	return pbjson_decode(desc, data, len, a, out, err);
}

/* ---- routing ----------------------------------------------------------- */

static int is_name_char(char c)
{
	return isalnum((unsigned char)c) || c == '_';
}

int rpc_is_rpc_path(const char *url)
{
	const char *p = url;
	int dot = 0;

	if (*p++ != '/' || !is_name_char(*p))
		return 0;
	for (; *p && *p != '/'; p++) {
		if (*p == '.')
			dot = 1;
		else if (!is_name_char(*p))
			return 0;
	}
	if (!dot || *p++ != '/' || !*p)
		return 0;
	for (; *p; p++)
		if (!is_name_char(*p))
			return 0;
	return 1;
}

#define RPC_EXTRA_TABLES 4
static const struct rpc_method *extra_tables[RPC_EXTRA_TABLES];

void rpc_register_methods(const struct rpc_method *table)
{
	for (size_t i = 0; i < RPC_EXTRA_TABLES; i++) {
		if (!extra_tables[i]) {
			extra_tables[i] = table;
			return;
		}
	}
	log_error("rpc", NULL, "too many method tables registered");
}

static const struct rpc_method *find_method(const char *url)
{
	const struct rpc_method *tables[2 + RPC_EXTRA_TABLES] = { process_methods,
								  filesystem_methods };

	memcpy(tables + 2, extra_tables, sizeof(extra_tables));

	for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]) && tables[t]; t++)
		for (const struct rpc_method *m = tables[t]; m->path; m++)
			if (strcmp(m->path, url) == 0 && (m->unary || m->stream))
				return m;
	return NULL;
}

/* "application/json; charset=utf-8" -> does the media type equal want? */
static int media_type_is(const char *header, const char *want)
{
	size_t n = strlen(want);

	if (!header)
		return 0;
	while (*header == ' ' || *header == '\t')
		header++;
	if (strncasecmp(header, want, n) != 0)
		return 0;
	header += n;
	while (*header == ' ' || *header == '\t')
		header++;
	return *header == '\0' || *header == ';';
}

/* ---- streams ----------------------------------------------------------- */

struct chunk {
	struct chunk *next;
	size_t len;
	size_t off; /* bytes already handed to MHD */
	char data[];
};

struct rpc_stream {
	pthread_mutex_t lock;
	pthread_cond_t drained;
	int refs;
	struct chunk *head, *tail;
	size_t queued;
	int ended;  /* the end envelope is queued: nothing may follow it */
	int closed; /* ended, timed out or client gone: sends fail */
	enum rpc_close_reason reason;
	int on_close_done;
	void (*on_close)(void *arg, enum rpc_close_reason why);
	void *on_close_arg;
	int64_t last_send_ms;
	struct rpc_stream *next_open; /* in streams_open, under streams_lock */

	/* Set at creation, then read-only. */
	int wake_fd;
	int sock_fd;           /* only used by the connection thread */
	pthread_t conn_thread; /* sends from it must not block: it is the reader */
	enum rpc_codec codec;
	const struct rpc_method *method;
	struct rpc_ctx ctx;
};

/*
 * Every stream's queue counts against one budget, so many clients that stop
 * reading cannot make the agent hold RPC_STREAM_QUEUE_MAX bytes each. A
 * producer whose stream already has bytes queued waits while the budget is
 * spent, exactly as it waits for its own full queue: its own reader wakes it.
 * A stream with nothing queued may always add one message, so a stream whose
 * client keeps reading is never starved by the stalled ones.
 */
static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t streams_gone = PTHREAD_COND_INITIALIZER;
static size_t streams_queued;      /* bytes queued over all streams */
static struct rpc_stream *streams_open; /* streams whose response MHD still holds */
static unsigned int streams_responses;

static void budget_add(size_t n)
{
	pthread_mutex_lock(&streams_lock);
	streams_queued += n;
	pthread_mutex_unlock(&streams_lock);
}

static void budget_sub(size_t n)
{
	pthread_mutex_lock(&streams_lock);
	streams_queued -= n < streams_queued ? n : streams_queued;
	pthread_mutex_unlock(&streams_lock);
}

static int budget_spent(void)
{
	int spent;

	pthread_mutex_lock(&streams_lock);
	spent = streams_queued >= RPC_STREAMS_QUEUED_MAX;
	pthread_mutex_unlock(&streams_lock);
	return spent;
}

static void stream_free(struct rpc_stream *s)
{
	while (s->head) {
		struct chunk *c = s->head;

		s->head = c->next;
		free(c);
	}
	budget_sub(s->queued);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	rpc_arena_free(s->ctx.arena);
	pthread_cond_destroy(&s->drained);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

void rpc_stream_ref(struct rpc_stream *s)
{
	pthread_mutex_lock(&s->lock);
	s->refs++;
	pthread_mutex_unlock(&s->lock);
}

void rpc_stream_unref(struct rpc_stream *s)
{
	int last;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	last = --s->refs == 0;
	pthread_mutex_unlock(&s->lock);
	if (last)
		stream_free(s);
}

static void stream_wake(struct rpc_stream *s)
{
	uint64_t one = 1;

	/* Cannot block (the counter would need 2^64 - 1 writes) nor fail usefully. */
	if (write(s->wake_fd, &one, sizeof(one)) < 0)
		log_debug("rpc", NULL, "stream wake-up write failed: %s", strerror(errno));
}

/* Builds an envelope; NULL on OOM. */
static struct chunk *envelope_new(unsigned flags, const char *msg, size_t len)
{
	struct chunk *c;

	if (len > UINT32_MAX || len > SIZE_MAX - sizeof(*c) - PBJSON_ENVELOPE_HEADER)
		return NULL;
	c = malloc(sizeof(*c) + PBJSON_ENVELOPE_HEADER + len);
	if (!c)
		return NULL;
	c->next = NULL;
	c->off = 0;
	c->len = PBJSON_ENVELOPE_HEADER + len;
	pbjson_envelope_header((unsigned char *)c->data, flags, (uint32_t)len);
	memcpy(c->data + PBJSON_ENVELOPE_HEADER, msg, len);
	return c;
}

/* Appends c to the queue; the caller holds the lock. */
static void queue_locked(struct rpc_stream *s, struct chunk *c)
{
	if (s->tail)
		s->tail->next = c;
	else
		s->head = c;
	s->tail = c;
	s->queued += c->len;
	budget_add(c->len);
}

static struct chunk *end_envelope(const struct rpc_status *st)
{
	size_t len = 0;
	_cleanup_free_ char *json = NULL;

	if (st && st->code != RPC_OK)
		json = pbjson_connect_error(rpc_code_name(st->code), st->message, 1, &len);
	else
		json = pbjson_connect_error(NULL, NULL, 1, &len);
	if (!json)
		return NULL;
	return envelope_new(PBJSON_ENVELOPE_END_STREAM, json, len);
}

/* Runs the close callback once, outside the lock. */
static void stream_notify_close(struct rpc_stream *s)
{
	void (*fn)(void *, enum rpc_close_reason) = NULL;
	void *arg = NULL;
	enum rpc_close_reason why;

	pthread_mutex_lock(&s->lock);
	if (s->closed && s->on_close && !s->on_close_done) {
		s->on_close_done = 1;
		fn = s->on_close;
		arg = s->on_close_arg;
	}
	why = s->reason;
	pthread_mutex_unlock(&s->lock);
	if (fn)
		fn(arg, why);
}

/*
 * Closes the stream for why. With an end status (ENDED, DEADLINE) the end
 * envelope is queued so the client learns how it ended; for a client that is
 * gone the queue is dropped. Returns 0 if this call closed it.
 */
static int stream_close(struct rpc_stream *s, enum rpc_close_reason why,
			const struct rpc_status *st)
{
	struct chunk *end = NULL;

	if (why != RPC_CLOSE_CLIENT)
		end = end_envelope(st);

	pthread_mutex_lock(&s->lock);
	if (s->closed) {
		pthread_mutex_unlock(&s->lock);
		free(end);
		return -1;
	}
	s->closed = 1;
	s->reason = why;
	if (why == RPC_CLOSE_CLIENT) {
		while (s->head) {
			struct chunk *c = s->head;

			s->head = c->next;
			free(c);
		}
		s->tail = NULL;
		budget_sub(s->queued);
		s->queued = 0;
	} else if (end) {
		queue_locked(s, end);
		s->ended = 1;
	}
	/* Without an end envelope (OOM) the reader fails the response instead. */
	pthread_cond_broadcast(&s->drained);
	pthread_mutex_unlock(&s->lock);

	stream_wake(s);
	stream_notify_close(s);
	return 0;
}

void rpc_stream_end(struct rpc_stream *s, const struct rpc_status *st)
{
	stream_close(s, RPC_CLOSE_ENDED, st);
}

int rpc_stream_closed(struct rpc_stream *s)
{
	int closed;

	pthread_mutex_lock(&s->lock);
	closed = s->closed;
	pthread_mutex_unlock(&s->lock);
	return closed;
}

void rpc_stream_on_close(struct rpc_stream *s, void (*fn)(void *arg, enum rpc_close_reason),
			 void *arg)
{
	pthread_mutex_lock(&s->lock);
	s->on_close = fn;
	s->on_close_arg = arg;
	pthread_mutex_unlock(&s->lock);
	/* Already closed (a quick producer, a deadline of 0): tell it now. */
	stream_notify_close(s);
}

static void deadline_status(struct rpc_status *st)
{
	rpc_fail(st, RPC_DEADLINE_EXCEEDED, "the operation timed out");
}

/*
 * Waits for queue space. Sends from the connection thread never wait: that
 * thread is the one that drains the queue (it runs the stream function before
 * MHD starts reading), so waiting there could never end.
 */
static int wait_for_room(struct rpc_stream *s)
{
	int on_conn_thread = pthread_equal(pthread_self(), s->conn_thread);

	while (!s->closed && !on_conn_thread &&
	       (s->queued >= RPC_STREAM_QUEUE_MAX || (s->queued > 0 && budget_spent()))) {
		int64_t deadline = s->ctx.deadline_ms;

		if (!deadline) {
			pthread_cond_wait(&s->drained, &s->lock);
			continue;
		}
		/*
		 * A client that stops reading also stops the reader, which would
		 * otherwise be the one to notice the deadline: notice it here.
		 */
		if (rpc_now_ms() >= deadline)
			return -ETIMEDOUT;
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		int64_t wait = deadline - rpc_now_ms();

		if (wait > 1000)
			wait = 1000;
		ts.tv_sec += wait / 1000;
		ts.tv_nsec += (wait % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&s->drained, &s->lock, &ts);
	}
	return s->closed ? -EPIPE : 0;
}

static int stream_send_data(struct rpc_stream *s, const ProtobufCMessage *msg, int may_block)
{
	struct herr err = { 0 };
	_cleanup_free_ char *payload = NULL;
	struct chunk *c;
	size_t len;
	int rc;

	if (rpc_stream_closed(s))
		return -EPIPE;
	if (encode_message(s->codec, msg, &payload, &len, &err) < 0) {
		log_warn("rpc", NULL, "encoding a %s message failed: %s", msg->descriptor->name,
			 err.msg);
		return err.code;
	}
	c = envelope_new(0, payload, len);
	if (!c)
		return -ENOMEM;

	pthread_mutex_lock(&s->lock);
	rc = may_block ? wait_for_room(s) : (s->closed ? -EPIPE : 0);
	if (rc == 0) {
		queue_locked(s, c);
		s->last_send_ms = rpc_now_ms();
	}
	pthread_mutex_unlock(&s->lock);

	if (rc == -ETIMEDOUT) {
		struct rpc_status st;

		free(c);
		deadline_status(&st);
		stream_close(s, RPC_CLOSE_DEADLINE, &st);
		return -EPIPE;
	}
	if (rc < 0) {
		free(c);
		return rc;
	}
	stream_wake(s);
	return 0;
}

int rpc_stream_send(struct rpc_stream *s, const ProtobufCMessage *msg)
{
	return stream_send_data(s, msg, 1);
}

/* Copies queued bytes into buf; the caller holds the lock. */
static size_t take_locked(struct rpc_stream *s, char *buf, size_t max)
{
	size_t n = 0;

	while (s->head && n < max) {
		struct chunk *c = s->head;
		size_t k = c->len - c->off;

		if (k > max - n)
			k = max - n;
		memcpy(buf + n, c->data + c->off, k);
		c->off += k;
		n += k;
		if (c->off == c->len) {
			s->head = c->next;
			if (!s->head)
				s->tail = NULL;
			free(c);
		}
	}
	s->queued -= n;
	budget_sub(n);
	return n;
}

/* Milliseconds until the deadline or the next keepalive, whichever is first. */
static int next_timeout_locked(const struct rpc_stream *s, int64_t now)
{
	int64_t due = s->last_send_ms + s->ctx.keepalive_ms;

	if (s->ctx.deadline_ms && s->ctx.deadline_ms < due)
		due = s->ctx.deadline_ms;
	if (due <= now)
		return 0;
	return due - now > 60000 ? 60000 : (int)(due - now);
}

/* Handles an idle wake-up: deadline or keepalive. */
static void stream_on_timer(struct rpc_stream *s)
{
	int64_t now = rpc_now_ms();
	int keepalive_due;

	if (s->ctx.deadline_ms && now >= s->ctx.deadline_ms) {
		struct rpc_status st;

		deadline_status(&st);
		stream_close(s, RPC_CLOSE_DEADLINE, &st);
		return;
	}
	pthread_mutex_lock(&s->lock);
	keepalive_due = now >= s->last_send_ms + s->ctx.keepalive_ms;
	if (keepalive_due)
		s->last_send_ms = now; /* also when there is no keepalive message */
	pthread_mutex_unlock(&s->lock);
	if (keepalive_due && s->method->keepalive)
		stream_send_data(s, s->method->keepalive, 0);
}

/*
 * Waits for the next event. The socket is polled for hang-up only (POLLRDHUP,
 * not POLLIN), so a client pipelining its next request is not mistaken for
 * one that left; Go's envd treats EOF from the client as cancellation too.
 */
static int stream_wait(struct rpc_stream *s, int timeout_ms)
{
	struct pollfd fds[2] = {
		{ .fd = s->wake_fd, .events = POLLIN },
		{ .fd = s->sock_fd, .events = POLLRDHUP },
	};
	uint64_t count;
	int n = poll(fds, s->sock_fd >= 0 ? 2 : 1, timeout_ms);

	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	if (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
		return -EPIPE;
	if (fds[0].revents & POLLIN) {
		if (read(s->wake_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
			return -errno;
	}
	return 0;
}

/* MHD's content reader for a stream response: blocks until there is news. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct rpc_stream *s = cls;

	(void)pos;
	for (;;) {
		int64_t now = rpc_now_ms();
		int timeout;
		size_t n;

		pthread_mutex_lock(&s->lock);
		n = take_locked(s, buf, max);
		if (n > 0)
			pthread_cond_broadcast(&s->drained);
		if (n == 0 && s->closed) {
			int ended = s->ended;

			pthread_mutex_unlock(&s->lock);
			return ended ? MHD_CONTENT_READER_END_OF_STREAM
				     : MHD_CONTENT_READER_END_WITH_ERROR;
		}
		timeout = next_timeout_locked(s, now);
		pthread_mutex_unlock(&s->lock);
		if (n > 0)
			return (ssize_t)n;

		if (timeout == 0) {
			stream_on_timer(s);
			continue;
		}
		if (stream_wait(s, timeout) < 0) {
			stream_close(s, RPC_CLOSE_CLIENT, NULL);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
	}
}

static void stream_response_free(void *cls)
{
	struct rpc_stream *s = cls;

	pthread_mutex_lock(&streams_lock);
	for (struct rpc_stream **p = &streams_open; *p; p = &(*p)->next_open) {
		if (*p == s) {
			*p = s->next_open;
			break;
		}
	}
	streams_responses--;
	pthread_cond_broadcast(&streams_gone);
	pthread_mutex_unlock(&streams_lock);
	rpc_stream_unref(s);
}

static void stream_register(struct rpc_stream *s)
{
	pthread_mutex_lock(&streams_lock);
	s->next_open = streams_open;
	streams_open = s;
	streams_responses++;
	pthread_mutex_unlock(&streams_lock);
}

/* Takes a referenced snapshot of the open streams. */
static struct rpc_stream **streams_snapshot(size_t *n)
{
	struct rpc_stream **v;
	size_t i = 0;

	pthread_mutex_lock(&streams_lock);
	v = calloc(streams_responses + 1, sizeof(*v));
	for (struct rpc_stream *s = streams_open; v && s; s = s->next_open) {
		rpc_stream_ref(s);
		v[i++] = s;
	}
	pthread_mutex_unlock(&streams_lock);
	*n = i;
	return v;
}

void rpc_streams_shutdown(const struct rpc_status *st, int wait_ms)
{
	struct timespec until;
	size_t n;
	struct rpc_stream **v = streams_snapshot(&n);

	for (size_t i = 0; i < n; i++) {
		rpc_stream_end(v[i], st);
		rpc_stream_unref(v[i]);
	}
	free(v);

	/* Give the clients that still read a moment to receive their end. */
	clock_gettime(CLOCK_REALTIME, &until); /* streams_gone's clock */
	until.tv_sec += wait_ms / 1000;
	until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&streams_lock);
	while (streams_responses > 0 &&
	       pthread_cond_timedwait(&streams_gone, &streams_lock, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&streams_lock);
}

/* ---- calls ------------------------------------------------------------- */

struct rpc_call {
	const struct rpc_method *method;
	enum rpc_codec codec;
	int responded;        /* a response is queued; ignore the rest */
	int too_large;        /* the body passed RPC_BODY_MAX; being discarded */
	size_t discarded;
	struct hbuf body;
	struct rpc_arena *arena; /* unary calls */
	struct rpc_stream *stream;
};

static enum MHD_Result queue_buffer(struct MHD_Connection *c, unsigned status,
				    const char *content_type, char *data, size_t len)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(data);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "POST");
	http_add_common_headers(r); /* CORS, so browser SDKs can read the answer */
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* A unary error, or anything answered before we know the call's protocol. */
static enum MHD_Result send_error(struct rpc_call *call, struct MHD_Connection *c,
				  unsigned status, const struct rpc_status *st)
{
	size_t len;
	char *json = pbjson_connect_error(rpc_code_name(st->code), st->message, 0, &len);

	call->responded = 1;
	log_debug("rpc", NULL, "call=%s code=%s msg=\"%s\"",
		  call->method ? call->method->path : "?", rpc_code_name(st->code), st->message);
	if (!json)
		return MHD_NO;
	return queue_buffer(c, status ? status : (unsigned)rpc_code_http_status(st->code),
			    "application/json", json, len);
}

/* A stream that fails before it starts: HTTP 200 with only the end envelope. */
static enum MHD_Result send_stream_error(struct rpc_call *call, struct MHD_Connection *c,
					 const struct rpc_status *st)
{
	struct chunk *end = end_envelope(st);
	char *data;

	call->responded = 1;
	log_debug("rpc", NULL, "call=%s code=%s msg=\"%s\"", call->method->path,
		  rpc_code_name(st->code), st->message);
	if (!end)
		return MHD_NO;
	/* The chunk header sits before the bytes: move them to a plain buffer. */
	data = malloc(end->len);
	if (data)
		memcpy(data, end->data, end->len);
	size_t len = end->len;

	free(end);
	if (!data)
		return MHD_NO;
	return queue_buffer(c, MHD_HTTP_OK,
			    call->codec == CODEC_PROTO ? "application/connect+proto"
						       : "application/connect+json",
			    data, len);
}

static enum MHD_Result fail_call(struct rpc_call *call, struct MHD_Connection *c,
				 const struct rpc_status *st)
{
	if (call->method && call->method->stream)
		return send_stream_error(call, c, st);
	return send_error(call, c, 0, st);
}

/* Checks the request line and headers; fills st and returns -1 to refuse. */
static int check_request(struct rpc_call *call, struct MHD_Connection *c, const char *url,
			 const char *method, unsigned *status, struct rpc_status *st)
{
	const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
	int stream;

	*status = 0;
	call->method = find_method(url);
	if (!call->method) {
		*status = MHD_HTTP_NOT_FOUND;
		return rpc_fail(st, RPC_UNIMPLEMENTED, "%s is not implemented", url);
	}
	stream = call->method->stream != NULL;
	if (strcmp(method, "POST") != 0) {
		*status = MHD_HTTP_METHOD_NOT_ALLOWED;
		return rpc_fail(st, RPC_UNIMPLEMENTED, "%s: method %s not allowed, use POST",
				url, method);
	}
	if (media_type_is(ctype, stream ? "application/connect+json" : "application/json")) {
		call->codec = CODEC_JSON;
	} else if (media_type_is(ctype, stream ? "application/connect+proto"
					       : "application/proto")) {
		call->codec = CODEC_PROTO;
	} else {
		*status = MHD_HTTP_UNSUPPORTED_MEDIA_TYPE;
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "unsupported content type '%s' for %s "
				"(%s call: use %s)", ctype ? ctype : "", url,
				stream ? "server-streaming" : "unary",
				stream ? "application/connect+json or application/connect+proto"
				       : "application/json or application/proto");
	}
	return 0;
}

/* Compression of the body, which we do not offer: say so instead of misreading it. */
static int check_encoding(struct MHD_Connection *c, int stream, struct rpc_status *st)
{
	const char *enc = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						      stream ? "Connect-Content-Encoding"
							     : "Content-Encoding");

	if (enc && strcasecmp(enc, "identity") != 0)
		return rpc_fail(st, RPC_UNIMPLEMENTED, "unsupported compression '%s'", enc);
	return 0;
}

/* "Basic base64(name:)" -> name. Other schemes are not ours and are ignored. */
static int basic_auth_user(const char *header, char *name, size_t cap, int *present,
			   struct rpc_status *st)
{
	unsigned char decoded[3 * 64 + 3];
	const char *b64;
	const char *colon;
	long n;

	*present = 0;
	if (!header || strncasecmp(header, "Basic ", 6) != 0)
		return 0;
	*present = 1;
	b64 = header + 6;
	while (*b64 == ' ')
		b64++;
	if (strlen(b64) > 4 * 64)
		return rpc_fail(st, RPC_UNAUTHENTICATED, "invalid Authorization header: too long");
	n = pbjson_b64_decode(b64, strlen(b64), decoded);
	if (n < 0)
		return rpc_fail(st, RPC_UNAUTHENTICATED,
				"invalid Authorization header: bad base64");
	decoded[n] = '\0';
	colon = memchr(decoded, ':', (size_t)n);
	if (!colon || memchr(decoded, '\0', (size_t)n))
		return rpc_fail(st, RPC_UNAUTHENTICATED,
				"invalid Authorization header: expected 'user:password'");
	if ((size_t)(colon - (char *)decoded) >= cap)
		return rpc_fail(st, RPC_UNAUTHENTICATED, "invalid username: too long");
	memcpy(name, decoded, (size_t)(colon - (char *)decoded));
	name[colon - (char *)decoded] = '\0';
	return 0;
}

static int resolve_user(struct MHD_Connection *c, struct agent_user *user,
			struct rpc_status *st)
{
	const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
	char name[USERS_NAME_MAX];
	struct herr err = { 0 };
	int present;
	int rc;

	if (basic_auth_user(auth, name, sizeof(name), &present, st) < 0)
		return -1;
	if (!present)
		state_default_user(name, sizeof(name));
	rc = users_lookup(name, user, &err);
	if (rc == -ENOENT && present)
		return rpc_fail(st, RPC_UNAUTHENTICATED, "invalid username: '%s'", name);
	if (rc < 0)
		return rpc_fail(st, RPC_INTERNAL, "default user: %s", err.msg);
	return 0;
}

/* Connect-Timeout-Ms: at most 10 digits, per the Connect protocol. */
static int parse_timeout(struct MHD_Connection *c, int64_t *deadline_ms, struct rpc_status *st)
{
	const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Connect-Timeout-Ms");
	int64_t ms = 0;
	size_t n;

	*deadline_ms = 0;
	if (!v)
		return 0;
	n = strlen(v);
	if (n == 0 || n > 10 || strspn(v, "0123456789") != n)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "invalid Connect-Timeout-Ms '%.32s'", v);
	for (size_t i = 0; i < n; i++)
		ms = ms * 10 + (v[i] - '0');
	*deadline_ms = rpc_now_ms() + ms;
	return 0;
}

/* Keepalive-Ping-Interval in seconds; envd's 90 when absent or unusable. */
static int parse_keepalive(struct MHD_Connection *c)
{
	const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						    "Keepalive-Ping-Interval");
	char *end;
	long s;

	if (!v)
		return RPC_KEEPALIVE_DEFAULT_S * 1000;
	errno = 0;
	s = strtol(v, &end, 10);
	if (errno || end == v || *end || s <= 0 || s > RPC_KEEPALIVE_MAX_S)
		return RPC_KEEPALIVE_DEFAULT_S * 1000;
	return (int)s * 1000;
}

static int fill_ctx(struct MHD_Connection *c, struct rpc_ctx *ctx, struct rpc_status *st)
{
	if (resolve_user(c, &ctx->user, st) < 0 || parse_timeout(c, &ctx->deadline_ms, st) < 0)
		return -1;
	ctx->keepalive_ms = parse_keepalive(c);
	return 0;
}

/* Decodes the body into a request message in ctx's arena. */
static int decode_request(struct rpc_call *call, struct rpc_ctx *ctx, ProtobufCMessage **req,
			  struct rpc_status *st)
{
	const void *msg = call->body.data;
	size_t len = call->body.len;
	struct herr err = { 0 };
	struct arena *a = ctx->arena->a;
	int rc;

	if (call->method->stream &&
	    pbjson_envelope_parse(call->body.data, call->body.len, &msg, &len, &err) < 0)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err.msg);

	/* Decoding may cost a few times the body, no more; handlers get the rest. */
	arena_set_cap(a, 8 * len + (1u << 20));
	/* An empty JSON body is the empty message, as an empty binary one is. */
	if (len == 0 && call->codec == CODEC_JSON)
		msg = "{}", len = 2;
	rc = decode_message(call->codec, call->method->input, msg, len, a, req, &err);
	arena_set_cap(a, RPC_ARENA_CAP);
	if (rc == -E2BIG)
		return rpc_fail(st, RPC_RESOURCE_EXHAUSTED, "%s", err.msg);
	if (rc < 0)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err.msg);
	return 0;
}

static enum MHD_Result run_unary(struct rpc_call *call, struct MHD_Connection *c)
{
	const struct rpc_method *m = call->method;
	struct rpc_ctx ctx = { 0 };
	struct rpc_status st = { RPC_OK, "" };
	struct herr err = { 0 };
	ProtobufCMessage *req = NULL, *resp;
	char *out;
	size_t len;

	call->arena = rpc_arena_new(RPC_ARENA_CAP);
	if (!call->arena)
		return MHD_NO;
	ctx.arena = call->arena;
	if (fill_ctx(c, &ctx, &st) < 0 || decode_request(call, &ctx, &req, &st) < 0)
		return send_error(call, c, 0, &st);
	if (ctx.deadline_ms && rpc_now_ms() >= ctx.deadline_ms) {
		deadline_status(&st);
		return send_error(call, c, 0, &st);
	}

	resp = rpc_alloc(&ctx, m->output->sizeof_message);
	m->output->message_init(resp);
	if (m->unary(&ctx, req, resp, &st) != 0) {
		if (st.code == RPC_OK)
			rpc_fail(&st, RPC_INTERNAL, "%s failed", m->path);
		return send_error(call, c, 0, &st);
	}
	if (encode_message(call->codec, resp, &out, &len, &err) < 0) {
		rpc_fail(&st, RPC_INTERNAL, "encoding the response: %s", err.msg);
		return send_error(call, c, 0, &st);
	}
	call->responded = 1;
	log_debug("rpc", NULL, "call=%s code=ok bytes=%zu", m->path, len);
	return queue_buffer(c, MHD_HTTP_OK,
			    call->codec == CODEC_PROTO ? "application/proto" : "application/json",
			    out, len);
}

static struct rpc_stream *stream_new(struct rpc_call *call, struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *info;
	struct rpc_stream *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->ctx.arena = rpc_arena_new(RPC_ARENA_CAP);
	if (s->wake_fd < 0 || !s->ctx.arena) {
		if (s->wake_fd >= 0)
			close(s->wake_fd);
		rpc_arena_free(s->ctx.arena);
		free(s);
		return NULL;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->drained, &ca);
	pthread_condattr_destroy(&ca);
	s->refs = 1; /* the call's */
	s->codec = call->codec;
	s->method = call->method;
	s->conn_thread = pthread_self();
	info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	s->sock_fd = info ? info->connect_fd : -1;
	s->last_send_ms = rpc_now_ms();
	s->ctx.keepalive_ms = RPC_KEEPALIVE_DEFAULT_S * 1000;
	return s;
}

static enum MHD_Result queue_stream_response(struct rpc_stream *s, struct MHD_Connection *c)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, RPC_STREAM_BLOCK, stream_read,
					      s, stream_response_free);
	if (!r)
		return MHD_NO;
	rpc_stream_ref(s); /* the response's, dropped by stream_response_free */
	stream_register(s);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				s->codec == CODEC_PROTO ? "application/connect+proto"
							: "application/connect+json");
	http_add_common_headers(r);
	ret = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result run_stream(struct rpc_call *call, struct MHD_Connection *c)
{
	struct rpc_status st = { RPC_OK, "" };
	ProtobufCMessage *req = NULL;
	struct rpc_stream *s;
	enum MHD_Result ret;

	s = stream_new(call, c);
	if (!s)
		return MHD_NO;
	call->stream = s;
	call->responded = 1;
	ret = queue_stream_response(s, c);
	if (ret != MHD_YES)
		return ret;

	/* Errors from here on are in-band: the client reads them from the end envelope. */
	if (fill_ctx(c, &s->ctx, &st) < 0 || decode_request(call, &s->ctx, &req, &st) < 0) {
		log_debug("rpc", NULL, "call=%s code=%s msg=\"%s\"", call->method->path,
			  rpc_code_name(st.code), st.message);
		rpc_stream_end(s, &st);
		return MHD_YES;
	}
	if (call->method->stream(&s->ctx, req, s, &st) != 0) {
		if (st.code == RPC_OK)
			rpc_fail(&st, RPC_INTERNAL, "%s failed", call->method->path);
		log_debug("rpc", NULL, "call=%s code=%s msg=\"%s\"", call->method->path,
			  rpc_code_name(st.code), st.message);
		rpc_stream_end(s, &st);
	}
	return MHD_YES;
}

static enum MHD_Result start_call(struct MHD_Connection *c, const char *url, const char *method,
				  void **state)
{
	struct rpc_call *call = calloc(1, sizeof(*call));
	struct rpc_status st = { RPC_OK, "" };
	const char *clen;
	unsigned status;

	if (!call)
		return MHD_NO;
	hbuf_init(&call->body, RPC_BODY_MAX);
	*state = call;

	if (check_request(call, c, url, method, &status, &st) < 0)
		return send_error(call, c, status, &st);
	if (check_encoding(c, call->method->stream != NULL, &st) < 0)
		return fail_call(call, c, &st);
	/* Refuse a declared oversized body before reading any of it. */
	clen = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (clen && strtoull(clen, NULL, 10) > RPC_BODY_MAX) {
		rpc_fail(&st, RPC_RESOURCE_EXHAUSTED, "request body of %s bytes is over the "
			 "limit of %u", clen, RPC_BODY_MAX);
		return fail_call(call, c, &st);
	}
	return MHD_YES;
}

/* Takes a piece of the body; past the limit, drops it and remembers. */
static enum MHD_Result take_body(struct rpc_call *call, const char *data, size_t *size)
{
	size_t n = *size;

	*size = 0;
	if (call->too_large) {
		call->discarded += n;
		/* Reading without end only to refuse it is a cost we will not pay. */
		return call->discarded > RPC_DISCARD_MAX ? MHD_NO : MHD_YES;
	}
	if (hbuf_append(&call->body, data, n) < 0) {
		call->too_large = 1;
		call->discarded = call->body.len + n;
		hbuf_free(&call->body);
	}
	return MHD_YES;
}

enum MHD_Result rpc_handler(struct MHD_Connection *c, const char *url, const char *method,
			    const char *upload_data, size_t *upload_data_size, void **state)
{
	struct rpc_call *call = *state;
	struct rpc_status st;

	if (!call)
		return start_call(c, url, method, state);
	if (call->responded) {
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (*upload_data_size > 0)
		return take_body(call, upload_data, upload_data_size);

	if (call->too_large) {
		rpc_fail(&st, RPC_RESOURCE_EXHAUSTED, "request body over the limit of %u bytes",
			 RPC_BODY_MAX);
		return fail_call(call, c, &st);
	}
	return call->method->stream ? run_stream(call, c) : run_unary(call, c);
}

void rpc_done(void *state)
{
	struct rpc_call *call = state;

	if (!call)
		return;
	if (call->stream) {
		/* A no-op when the stream ended; otherwise the client left early. */
		stream_close(call->stream, RPC_CLOSE_CLIENT, NULL);
		rpc_stream_unref(call->stream);
	}
	rpc_arena_free(call->arena);
	hbuf_free(&call->body);
	free(call);
}
