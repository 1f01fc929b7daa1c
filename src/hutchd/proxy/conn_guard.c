/*
 * The connection guard (see conn_guard.h): a table of tracked connections
 * indexed by socket descriptor, a list of those owing a request in the order
 * they started to owe it, and a thread that shuts down the ones past their
 * deadline.
 *
 * Why shutting a descriptor down is safe: libmicrohttpd reports a
 * connection closed (conn_guard_closed, which removes it under g->mu)
 * before it closes the socket, and the guard only ever shuts down sockets
 * still in the table, under the same lock. So it can never reach a
 * descriptor number that was closed and reused for another connection.
 * shutdown() rather than close(): the connection's own thread sees end of
 * stream and ends the connection the usual way, freeing what it holds.
 */
#include "conn_guard.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"

/* How often the deadline is checked; a connection may outlive it by this. */
#define TICK_MS 250

struct slot {
	struct slot *prev, *next;   /* the waiting list, while waiting */
	struct MHD_Connection *conn;
	int fd;
	bool waiting;
	int64_t since_ms;           /* when it started to owe a request */
};

struct conn_guard {
	char name[16];
	int64_t head_timeout_ms;
	unsigned waiting_max;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stopping;
	pthread_t thread;
	struct slot **by_fd;        /* by_fd[fd]: the tracked connection on fd */
	size_t n_by_fd;
	struct slot *head, *tail;   /* oldest first */
	unsigned waiting;
	uint64_t head_timeouts, evicted;
};

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void unlink_locked(struct conn_guard *g, struct slot *s)
{
	if (!s->waiting)
		return;
	if (s->prev)
		s->prev->next = s->next;
	else
		g->head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	else
		g->tail = s->prev;
	s->prev = s->next = NULL;
	s->waiting = false;
	g->waiting--;
}

static void append_locked(struct conn_guard *g, struct slot *s)
{
	if (s->waiting)
		return;
	s->prev = g->tail;
	s->next = NULL;
	if (g->tail)
		g->tail->next = s;
	else
		g->head = s;
	g->tail = s;
	s->waiting = true;
	s->since_ms = mono_ms();
	g->waiting++;
}

/* Only a socket still in the table (see the top of the file). */
static void shut_locked(struct conn_guard *g, struct slot *s)
{
	unlink_locked(g, s);
	shutdown(s->fd, SHUT_RDWR);
}

static int conn_fd(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);

	return info ? info->connect_fd : -1;
}

/* The slot of c, or NULL when c is not tracked (out of memory at start). */
static struct slot *find_locked(struct conn_guard *g, struct MHD_Connection *c)
{
	int fd = conn_fd(c);
	struct slot *s;

	if (fd < 0 || (size_t)fd >= g->n_by_fd)
		return NULL;
	s = g->by_fd[fd];
	return s && s->conn == c ? s : NULL;
}

static int grow_locked(struct conn_guard *g, int fd)
{
	size_t n = g->n_by_fd ? g->n_by_fd : 256;
	struct slot **t;

	while (n <= (size_t)fd)
		n *= 2;
	if (n == g->n_by_fd)
		return 0;
	t = realloc(g->by_fd, n * sizeof(*t));
	if (!t)
		return -ENOMEM;
	memset(t + g->n_by_fd, 0, (n - g->n_by_fd) * sizeof(*t));
	g->by_fd = t;
	g->n_by_fd = n;
	return 0;
}

static void note_shut(struct conn_guard *g, uint64_t n, const char *why)
{
	/* First and then every thousandth: an attack must not flood the log. */
	if (n == 1 || n % 1000 == 0)
		log_warn(g->name, NULL, "shut down a connection that %s (total=%" PRIu64
			 ", waiting=%u)", why, n, g->waiting);
}

void conn_guard_opened(struct conn_guard *g, struct MHD_Connection *c)
{
	int fd = conn_fd(c);
	struct slot *s;

	if (!g || fd < 0)
		return;
	s = calloc(1, sizeof(*s));
	if (!s)
		return; /* untracked: still served, under the server's idle timeout */
	s->conn = c;
	s->fd = fd;
	pthread_mutex_lock(&g->mu);
	if (grow_locked(g, fd) < 0) {
		pthread_mutex_unlock(&g->mu);
		free(s);
		return;
	}
	/* A leftover on this number (never expected) is forgotten, not shut:
	 * its descriptor is this new connection's now. */
	if (g->by_fd[fd]) {
		unlink_locked(g, g->by_fd[fd]);
		free(g->by_fd[fd]);
	}
	while (g->waiting >= g->waiting_max && g->head) {
		shut_locked(g, g->head);
		note_shut(g, ++g->evicted, "waited longest while too many owed a request");
	}
	g->by_fd[fd] = s;
	append_locked(g, s);
	pthread_mutex_unlock(&g->mu);
}

void conn_guard_closed(struct conn_guard *g, struct MHD_Connection *c)
{
	struct slot *s;

	if (!g)
		return;
	pthread_mutex_lock(&g->mu);
	s = find_locked(g, c);
	if (s) {
		unlink_locked(g, s);
		g->by_fd[s->fd] = NULL;
		free(s);
	}
	pthread_mutex_unlock(&g->mu);
}

void conn_guard_head_done(struct conn_guard *g, struct MHD_Connection *c)
{
	struct slot *s;

	if (!g)
		return;
	pthread_mutex_lock(&g->mu);
	s = find_locked(g, c);
	if (s)
		unlink_locked(g, s);
	pthread_mutex_unlock(&g->mu);
}

void conn_guard_request_done(struct conn_guard *g, struct MHD_Connection *c)
{
	struct slot *s;

	if (!g || !c)
		return;
	pthread_mutex_lock(&g->mu);
	s = find_locked(g, c);
	if (s)
		append_locked(g, s);
	pthread_mutex_unlock(&g->mu);
}

static void expire_locked(struct conn_guard *g)
{
	int64_t now = mono_ms();

	/* Oldest first: the first one still in time ends the scan. */
	while (g->head && now - g->head->since_ms >= g->head_timeout_ms) {
		shut_locked(g, g->head);
		note_shut(g, ++g->head_timeouts, "sent no complete request head in time");
	}
}

static void *watch_main(void *arg)
{
	struct conn_guard *g = arg;

	pthread_mutex_lock(&g->mu);
	while (!g->stopping) {
		struct timespec ts;

		expire_locked(g);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += TICK_MS * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&g->cv, &g->mu, &ts);
	}
	pthread_mutex_unlock(&g->mu);
	return NULL;
}

int conn_guard_new(const char *name, unsigned head_timeout_s, unsigned waiting_max,
		   struct conn_guard **out, struct herr *err)
{
	struct conn_guard *g;
	pthread_condattr_t ca;
	int rc;

	if (head_timeout_s == 0 || waiting_max == 0)
		return herr_set(err, -EINVAL, "%s: head timeout and waiting connections "
				"must be above 0", name);
	g = calloc(1, sizeof(*g));
	if (!g)
		return herr_set(err, -ENOMEM, "%s: out of memory", name);
	snprintf(g->name, sizeof(g->name), "%s", name);
	g->head_timeout_ms = (int64_t)head_timeout_s * 1000;
	g->waiting_max = waiting_max;
	pthread_mutex_init(&g->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g->cv, &ca);
	pthread_condattr_destroy(&ca);
	rc = pthread_create(&g->thread, NULL, watch_main, g);
	if (rc != 0) {
		pthread_cond_destroy(&g->cv);
		pthread_mutex_destroy(&g->mu);
		free(g);
		return herr_set(err, -rc, "%s: starting the connection guard: %s", name,
				strerror(rc));
	}
	*out = g;
	return 0;
}

void conn_guard_free(struct conn_guard *g)
{
	if (!g)
		return;
	pthread_mutex_lock(&g->mu);
	g->stopping = true;
	pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
	pthread_join(g->thread, NULL);
	for (size_t i = 0; i < g->n_by_fd; i++)
		free(g->by_fd[i]);
	free(g->by_fd);
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mu);
	free(g);
}

void conn_guard_stats(struct conn_guard *g, struct conn_guard_stats *out)
{
	pthread_mutex_lock(&g->mu);
	*out = (struct conn_guard_stats){ .head_timeouts = g->head_timeouts,
		.evicted = g->evicted, .waiting = g->waiting };
	pthread_mutex_unlock(&g->mu);
}

int conn_guard_metrics_render(struct conn_guard *g, const char *prefix, struct hbuf *out)
{
	struct conn_guard_stats st;

	if (!g)
		return 0;
	conn_guard_stats(g, &st);
	return hbuf_printf(out,
		"# HELP hutch_%s_connections_waiting Connections owing a request head.\n"
		"# TYPE hutch_%s_connections_waiting gauge\n"
		"hutch_%s_connections_waiting %u\n"
		"# HELP hutch_%s_connections_shut_total Connections shut down before "
		"sending a request head, by reason.\n"
		"# TYPE hutch_%s_connections_shut_total counter\n"
		"hutch_%s_connections_shut_total{reason=\"head_timeout\"} %" PRIu64 "\n"
		"hutch_%s_connections_shut_total{reason=\"evicted\"} %" PRIu64 "\n",
		prefix, prefix, prefix, st.waiting, prefix, prefix, prefix,
		st.head_timeouts, prefix, st.evicted);
}
