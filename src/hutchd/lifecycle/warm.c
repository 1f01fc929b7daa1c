/*
 * The warm pool (see warm.h). One filler thread keeps `warm_pool` sandboxes
 * ready; a claimed one that no create takes within CLAIM_TTL_MS (the create
 * failed before reaching the lifecycle) is destroyed by the same thread.
 *
 * Pooled sandboxes have no store row. That is what makes crashes safe: at
 * the next start they are runtime objects without a live row, which the
 * lifecycle destroys like any orphan. A clean stop destroys them here.
 */
#include "warm.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ids.h"
#include "log.h"
#include "sandbox_rt.h"

#define CLAIM_TTL_MS 60000
#define RETRY_MS 1000
/* A refill starts this long after a claim, not at once: starting a sandbox
 * takes a core for tens of ms, which the claimed sandbox's first commands
 * would otherwise compete with. */
#define REFILL_DELAY_MS 50

struct warm_entry {
	char id[SBX_ID_LEN + 1];
	int64_t claimed_at; /* 0 while ready */
};

struct warm {
	struct lc_rt *rt;
	const struct lc_config *cfg;
	char tpl[TPL_NAME_MAX + 1];
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool stopping;
	int64_t last_claim;
	struct warm_entry *e;
	size_t n, cap;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t ready_count(struct warm *w)
{
	size_t n = 0;

	for (size_t i = 0; i < w->n; i++)
		n += w->e[i].claimed_at == 0;
	return n;
}

static void remove_at(struct warm *w, size_t i)
{
	w->e[i] = w->e[--w->n];
}

/* Starts one sandbox of the pool's template; its id in id. */
static int make_one(struct warm *w, char id[SBX_ID_LEN + 1], struct herr *err)
{
	struct lc_template tpl;
	struct lc_resources res;
	int rc = sandbox_id_generate(id, err);

	if (rc == 0)
		rc = tpl_load(w->cfg->template_dir, w->tpl, &tpl, err);
	if (rc < 0)
		return rc;
	res.cpu_count = tpl.cpu_count ? tpl.cpu_count : w->cfg->defaults.cpu_count;
	res.memory_mb = tpl.memory_mb ? tpl.memory_mb : w->cfg->defaults.memory_mb;
	res.disk_mb = tpl.disk_mb ? tpl.disk_mb : w->cfg->defaults.disk_mb;
	rc = lcrt_prestart(w->rt, id, &tpl, &res, err);
	tpl_clear(&tpl);
	if (rc < 0)
		lcrt_destroy(w->rt, id, NULL);
	return rc;
}

/* Drops claims nobody finished; called with the lock held, releases it. */
static void expire_claims(struct warm *w)
{
	char ids[16][SBX_ID_LEN + 1];
	int64_t limit = now_ms() - CLAIM_TTL_MS;
	int n = 0;

	for (size_t i = 0; i < w->n && n < 16;) {
		if (w->e[i].claimed_at && w->e[i].claimed_at < limit) {
			memcpy(ids[n++], w->e[i].id, sizeof(ids[0]));
			remove_at(w, i);
		} else {
			i++;
		}
	}
	pthread_mutex_unlock(&w->lock);
	for (int i = 0; i < n; i++) {
		log_info("lifecycle", ids[i], "warm sandbox claimed but never created: "
			 "destroying it");
		lcrt_destroy(w->rt, ids[i], NULL);
	}
}

static void wait_ms(struct warm *w, long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	if (!w->stopping)
		pthread_cond_timedwait(&w->wake, &w->lock, &ts);
}

/* Called with the lock held; returns with it held. */
static void fill_one(struct warm *w)
{
	char id[SBX_ID_LEN + 1];
	struct herr err;
	int rc;

	pthread_mutex_unlock(&w->lock);
	rc = make_one(w, id, &err);
	pthread_mutex_lock(&w->lock);
	if (rc < 0) {
		log_warn("lifecycle", NULL, "warm pool: starting a '%s' sandbox: %s", w->tpl,
			 err.msg);
		wait_ms(w, RETRY_MS);
		return;
	}
	if (w->stopping || w->n == w->cap) {
		pthread_mutex_unlock(&w->lock);
		lcrt_destroy(w->rt, id, NULL);
		pthread_mutex_lock(&w->lock);
		return;
	}
	memcpy(w->e[w->n].id, id, sizeof(id));
	w->e[w->n++].claimed_at = 0;
}

static void *fill_main(void *arg)
{
	struct warm *w = arg;

	pthread_mutex_lock(&w->lock);
	while (!w->stopping) {
		expire_claims(w);
		pthread_mutex_lock(&w->lock);
		int64_t since_claim = now_ms() - w->last_claim;

		if (w->stopping)
			break;
		if (ready_count(w) >= w->cfg->warm_pool || w->n == w->cap)
			wait_ms(w, RETRY_MS);
		else if (since_claim < REFILL_DELAY_MS)
			wait_ms(w, (long)(REFILL_DELAY_MS - since_claim));
		else
			fill_one(w);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

int warm_start(struct lc_rt *rt, const struct lc_config *cfg, struct warm **out,
	       struct herr *err)
{
	struct warm *w;
	int rc;

	*out = NULL;
	if (!rt || cfg->warm_pool == 0)
		return 0;
	w = calloc(1, sizeof(*w));
	if (!w)
		return herr_set(err, -ENOMEM, "warm pool: out of memory");
	w->rt = rt;
	w->cfg = cfg;
	snprintf(w->tpl, sizeof(w->tpl), "%s", cfg->warm_template ? cfg->warm_template :
		 "base");
	/* Room for the ready ones and as many claims in flight again. */
	w->cap = (size_t)cfg->warm_pool * 2 + 16;
	w->e = calloc(w->cap, sizeof(*w->e));
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, NULL);
	rc = w->e ? pthread_create(&w->thread, NULL, fill_main, w) : ENOMEM;
	if (rc != 0) {
		free(w->e);
		free(w);
		return herr_set(err, -rc, "warm pool: starting its thread failed");
	}
	*out = w;
	return 0;
}

void warm_stop(struct warm *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	/* They have no rows: left running they would be orphans. */
	for (size_t i = 0; i < w->n; i++)
		lcrt_destroy(w->rt, w->e[i].id, NULL);
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w->e);
	free(w);
}

bool warm_claim(struct warm *w, const char *tpl_name, char id[SBX_ID_LEN + 1])
{
	bool found = false;

	if (!w || strcmp(tpl_name, w->tpl) != 0)
		return false;
	pthread_mutex_lock(&w->lock);
	for (size_t i = 0; i < w->n && !found; i++) {
		if (w->e[i].claimed_at == 0) {
			w->e[i].claimed_at = now_ms();
			memcpy(id, w->e[i].id, SBX_ID_LEN + 1);
			found = true;
		}
	}
	if (found) {
		w->last_claim = now_ms();
		pthread_cond_signal(&w->wake); /* refill, after REFILL_DELAY_MS */
	}
	pthread_mutex_unlock(&w->lock);
	return found;
}

bool warm_take(struct warm *w, const char *id)
{
	bool found = false;

	if (!w)
		return false;
	pthread_mutex_lock(&w->lock);
	for (size_t i = 0; i < w->n && !found; i++) {
		if (w->e[i].claimed_at && strcmp(w->e[i].id, id) == 0) {
			remove_at(w, i);
			found = true;
		}
	}
	pthread_mutex_unlock(&w->lock);
	return found;
}
