/*
 * The proxy's view of hutchd: sandboxes come from the store (only rows in
 * state "running" with no kill or pause in flight, of any team: the proxy
 * has no API key, the agent's own access token protects it), tokens are
 * the stored access token and the traffic token derived from the node's
 * secret, and sockets come from the lifecycle (rt_dial inside the
 * sandbox's network namespace). A paused sandbox whose create asked for
 * autoResume is resumed by the lookup of a request for it, then routed.
 * Concurrent lookups of one sandbox share that resume: they wait for it and
 * take its outcome (see resume_shared), including lookups that arrive while
 * its row already says "resume".
 */
#include "proxy.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ids.h"
#include "lifecycle.h"
#include "store.h"

/* One resume for traffic under way, shared by the lookups that wait on it. */
struct resume_flight {
	struct resume_flight *next;
	char id[SBX_ID_LEN + 1];
	bool done;
	int rc;
	struct herr err;
	unsigned users;		/* the runner and its waiters; the last frees it */
};

struct hutchd_backend {
	struct store *st;
	struct lifecycle *lc;
	unsigned char secret[SERVER_SECRET_LEN];
	pthread_mutex_t flights_lock;
	pthread_cond_t flight_done;
	struct resume_flight *flights;	/* under flights_lock */
};

static bool public_traffic(const char *network)
{
	json_t *net = json_loads(network ? network : "{}", 0, NULL);
	json_t *v = json_object_get(net, "allowPublicTraffic");
	bool open = !v || !json_is_false(v);

	json_decref(net);
	return open;
}

static bool reachable(const struct store_sandbox *sb)
{
	return strcmp(sb->state, SBX_RUNNING) == 0 && sb->intent[0] == '\0';
}

static bool auto_resumes(const struct store_sandbox *sb)
{
	json_t *life, *v;
	bool on;

	/* A resume already under way ("resume" intent) is waited for, not
	 * answered 502: the lookups that come during a restore are the ones
	 * a storm of requests is made of. */
	if (strcmp(sb->state, SBX_PAUSED) != 0 ||
	    (sb->intent[0] != '\0' && strcmp(sb->intent, "resume") != 0))
		return false;
	life = json_loads(sb->lifecycle ? sb->lifecycle : "{}", 0, NULL);
	v = json_object_get(life, "autoResume");
	on = json_is_true(v);
	json_decref(life);
	return on;
}

static struct resume_flight *flight_find(struct hutchd_backend *b, const char *id)
{
	for (struct resume_flight *f = b->flights; f; f = f->next)
		if (strcmp(f->id, id) == 0)
			return f;
	return NULL;
}

static void flight_unlink(struct hutchd_backend *b, struct resume_flight *f)
{
	for (struct resume_flight **p = &b->flights; *p; p = &(*p)->next)
		if (*p == f) {
			*p = f->next;
			return;
		}
}

/* Drops one user of f (flights_lock held); the last one frees it. */
static void flight_put(struct resume_flight *f)
{
	if (--f->users == 0)
		free(f);
}

/*
 * Resumes the sandbox once for every lookup that asks while a resume for
 * traffic is under way: the first runs lc_resume, the others wait and take
 * its outcome. lc_resume alone would serialise them on the sandbox's
 * operation lock and then have each run its own restore when the first
 * failed: a storm of N requests at a sandbox whose restore fails would
 * cost N CRIU runs in a row (seconds each), every one holding a proxy
 * thread. A lookup that comes after the outcome starts a new resume, so a
 * failure is retried by later traffic, not for ever by one storm.
 */
static int resume_shared(struct hutchd_backend *b, const char *id, int64_t timeout_s,
			 struct herr *err)
{
	struct resume_flight *f;
	int rc;

	pthread_mutex_lock(&b->flights_lock);
	f = flight_find(b, id);
	if (f) {
		f->users++;
		while (!f->done)
			pthread_cond_wait(&b->flight_done, &b->flights_lock);
		rc = f->rc;
		if (rc < 0 && err)
			*err = f->err;
		flight_put(f);
		pthread_mutex_unlock(&b->flights_lock);
		return rc;
	}
	f = calloc(1, sizeof(*f));
	if (!f) {
		pthread_mutex_unlock(&b->flights_lock);
		return herr_set(err, -ENOMEM, "proxy: out of memory resuming %s", id);
	}
	snprintf(f->id, sizeof(f->id), "%s", id);
	f->users = 1;
	f->next = b->flights;
	b->flights = f;
	pthread_mutex_unlock(&b->flights_lock);

	herr_clear(&f->err);
	rc = lc_resume(b->lc, id, timeout_s, true, &f->err);

	pthread_mutex_lock(&b->flights_lock);
	f->rc = rc;
	f->done = true;
	flight_unlink(b, f);
	pthread_cond_broadcast(&b->flight_done);
	if (rc < 0 && err)
		*err = f->err;
	flight_put(f);
	pthread_mutex_unlock(&b->flights_lock);
	return rc;
}

/* Resumes for a request, with the timeout the sandbox was created with. */
static int resume_for_traffic(struct hutchd_backend *b, struct store_sandbox *sb,
			      struct herr *err)
{
	char id[SBX_ID_LEN + 1];
	int rc;

	if (!b->lc)
		return 0;
	rc = resume_shared(b, sb->id, sb->timeout_s, err);
	if (rc < 0)
		return rc == -ENOENT ? 0 : rc;
	snprintf(id, sizeof(id), "%s", sb->id);
	store_sandbox_clear(sb);
	memset(sb, 0, sizeof(*sb));
	return store_sandbox_get(b->st, id, -1, sb, err);
}

static void fill(struct hutchd_backend *b, const struct store_sandbox *sb,
		 struct proxy_sandbox *out)
{
	memset(out, 0, sizeof(*out));
	snprintf(out->id, sizeof(out->id), "%s", sb->id);
	snprintf(out->access_token, sizeof(out->access_token), "%s",
		 sb->access_token ? sb->access_token : "");
	if (!public_traffic(sb->network)) {
		char tok[TOKEN_HEX];

		token_derive(b->secret, "sandbox-traffic-", sb->id, tok);
		snprintf(out->traffic_token, sizeof(out->traffic_token), "%s", tok);
	}
}

static int lookup(void *ctx, const char *id, struct proxy_sandbox *out,
		  struct herr *err)
{
	struct hutchd_backend *b = ctx;
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	int rc;

	if (strlen(id) > SBX_ID_LEN)
		return 0;
	rc = store_sandbox_get(b->st, id, -1, &sb, err);
	if (rc > 0 && auto_resumes(&sb))
		rc = resume_for_traffic(b, &sb, err);
	if (rc <= 0)
		return rc;
	if (!reachable(&sb))
		return 0;
	fill(b, &sb, out);
	return 1;
}

struct each_ctx {
	struct hutchd_backend *b;
	proxy_sandbox_fn fn;
	void *arg;
	int stopped_with; /* what fn returned to stop the walk */
};

static int each_row(const struct store_sandbox *sb, void *arg)
{
	struct each_ctx *c = arg;
	struct proxy_sandbox s;

	if (!reachable(sb) || !sb->access_token || !*sb->access_token)
		return 0;
	fill(c->b, sb, &s);
	c->stopped_with = c->fn(c->arg, &s);
	return c->stopped_with;
}

static int each_secure(void *ctx, proxy_sandbox_fn fn, void *arg, struct herr *err)
{
	struct each_ctx c = { .b = ctx, .fn = fn, .arg = arg };
	int rc = store_sandbox_each(c.b->st, SBX_RUNNING, each_row, &c, err);

	/* The store tells only that the walk stopped early, not the value
	 * that stopped it, which is ours to return. */
	return rc < 0 ? rc : c.stopped_with;
}

static int dial(void *ctx, const char *id, uint16_t port, struct herr *err)
{
	struct hutchd_backend *b = ctx;

	if (!b->lc)
		return herr_set(err, -ENOENT, "no sandbox runtime on this node");
	return lc_dial(b->lc, id, port, err);
}

int proxy_backend_hutchd(struct store *st, struct lifecycle *lc,
			 const unsigned char *secret, struct proxy_backend *be,
			 struct herr *err)
{
	struct hutchd_backend *b = calloc(1, sizeof(*b));

	if (!b)
		return herr_set(err, -ENOMEM, "proxy: out of memory");
	b->st = st;
	b->lc = lc;
	pthread_mutex_init(&b->flights_lock, NULL);
	pthread_cond_init(&b->flight_done, NULL);
	memcpy(b->secret, secret, SERVER_SECRET_LEN);
	*be = (struct proxy_backend){ .ctx = b, .lookup = lookup,
				      .each_secure = each_secure, .dial = dial };
	return 0;
}

void proxy_backend_hutchd_free(struct proxy_backend *be)
{
	if (be && be->ctx) {
		struct hutchd_backend *b = be->ctx;

		/* Lookups have ended by now: no flight is left to wait on. */
		pthread_cond_destroy(&b->flight_done);
		pthread_mutex_destroy(&b->flights_lock);
		/* The secret must not linger in freed memory. */
		explicit_bzero(be->ctx, sizeof(struct hutchd_backend));
		free(be->ctx);
		be->ctx = NULL;
	}
}
