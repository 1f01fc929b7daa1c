/*
 * Sandbox lifecycle: see lifecycle.h.
 *
 * Ordering rule: the store learns of an operation before the runtime does it
 * (a "creating" row, a "kill" intent), and learns of its outcome after. A
 * crash between the two leaves a row that recovery at the next start can
 * finish (kill) or roll back (create), because the runtime's operations are
 * idempotent by id.
 */
#include "lc_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ids.h"
#include "log.h"
#include "rt_checkpoint.h"
#include "sandbox_rt.h"
#include "snapshot.h"
#include "tmpl.h"
#include "warm.h"

#define REAP_BATCH 64
#define PURGE_EVERY_MS 60000

void lc_set_end_hook(struct lifecycle *lc, lc_end_fn fn, void *arg)
{
	pthread_rwlock_wrlock(&lc->hook_lock);
	lc->end_hook = fn;
	lc->end_arg = arg;
	pthread_rwlock_unlock(&lc->hook_lock);
}

void lc_call_end_hook(struct lifecycle *lc, const char *id)
{
	pthread_rwlock_rdlock(&lc->hook_lock);
	if (lc->end_hook)
		lc->end_hook(lc->end_arg, id);
	pthread_rwlock_unlock(&lc->hook_lock);
}

void lc_event(struct lifecycle *lc, const char *id, const char *kind,
	      const char *detail)
{
	struct herr err;

	if (store_event_add(lc->store, id, kind, detail, &err) < 0)
		log_warn("lifecycle", id, "recording event %s: %s", kind, err.msg);
}

void lc_end_row(struct lifecycle *lc, const char *id, const char *reason)
{
	struct herr err;

	if (store_sandbox_end(lc->store, id, reason, store_now_ms(), &err) < 0)
		log_error("lifecycle", id, "recording end (%s): %s", reason, err.msg);
	else
		lc_event(lc, id, "ended", reason);
	lc_call_end_hook(lc, id);
}

bool lc_can_create(struct lifecycle *lc)
{
	return lc->rt != NULL;
}

int lc_create_begin_capped(struct lifecycle *lc, const struct store_sandbox *sb,
			   int64_t max_active, struct herr *err)
{
	int rc = store_sandbox_insert_capped(lc->store, sb, max_active, err);

	if (rc == 0)
		lc_event(lc, sb->id, "creating", sb->template_id);
	return rc;
}

int lc_create_begin(struct lifecycle *lc, const struct store_sandbox *sb,
		    struct herr *err)
{
	return lc_create_begin_capped(lc, sb, 0, err);
}

/* The team's templates built through the API first, then folder templates. */
int lc_template_get_team(struct lifecycle *lc, int64_t team, const char *ref,
			 struct lc_template *out, struct herr *err)
{
	int rc = lc->templates && team >= 0 ?
		tmpl_resolve(lc->templates, team, ref, out, err) : -ENOENT;

	if (rc != -ENOENT)
		return rc;
	return tpl_load(lc->cfg.template_dir, ref, out, err);
}

int lc_template_get(struct lifecycle *lc, const char *ref, struct lc_template *out,
		    struct herr *err)
{
	return lc_template_get_team(lc, -1, ref, out, err);
}

struct tmpl_mgr *lc_templates(struct lifecycle *lc)
{
	return lc->templates;
}

void lc_resources_for(struct lifecycle *lc, const struct lc_template *tpl,
		      struct lc_resources *out)
{
	out->cpu_count = tpl->cpu_count ? tpl->cpu_count : lc->cfg.defaults.cpu_count;
	out->memory_mb = tpl->memory_mb ? tpl->memory_mb : lc->cfg.defaults.memory_mb;
	out->disk_mb = tpl->disk_mb ? tpl->disk_mb : lc->cfg.defaults.disk_mb;
}

int lc_new_id(struct lifecycle *lc, const char *tpl_name, char id[SBX_ID_LEN + 1],
	      struct herr *err)
{
	if (warm_claim(lc->warm, tpl_name, id))
		return 0;
	return sandbox_id_generate(id, err);
}

/*
 * A pooled sandbox was started with the template's resources as they were
 * then; if the row asks for others (the template changed since), or its
 * agent ended while it waited in the pool (the exit monitor reports it, but
 * a pooled sandbox has no row to end), it is replaced by a cold start under
 * the same id.
 */
static int start_sandbox(struct lifecycle *lc, struct store_sandbox *sb,
			 const struct lc_template *tpl, struct herr *err)
{
	struct lc_resources res;

	if (!warm_take(lc->warm, sb->id))
		return lcrt_start(lc->rt, sb, tpl, err);
	lc_resources_for(lc, tpl, &res);
	if (res.cpu_count == sb->cpu_count && res.memory_mb == sb->memory_mb &&
	    res.disk_mb == sb->disk_mb && lcrt_alive(lc->rt, sb->id) > 0)
		return lcrt_finish_warm(lc->rt, sb, tpl, err);
	lcrt_destroy(lc->rt, sb->id, NULL);
	return lcrt_start(lc->rt, sb, tpl, err);
}

int lc_create_finish(struct lifecycle *lc, struct store_sandbox *sb, struct herr *err)
{
	struct lc_template tpl = { 0 };
	int64_t started, end;
	char reason[HERR_MSG_MAX + 32];
	int rc;

	if (!lc->rt)
		rc = herr_set(err, -ENOSYS, "no sandbox runtime on this node");
	else
		rc = lc_template_get_team(lc, sb->team_id, sb->template_id, &tpl, err);
	if (rc == 0)
		rc = start_sandbox(lc, sb, &tpl, err);
	tpl_clear(&tpl);
	if (rc == 0) {
		/* The deadline counts from when the sandbox is ready. */
		started = store_now_ms();
		end = started + sb->timeout_s * 1000;
		rc = store_sandbox_set_running(lc->store, sb->id, started, end, err);
		if (rc >= 0) {
			sb->started_at = started;
			sb->end_at = end;
			snprintf(sb->state, sizeof(sb->state), "%s", SBX_RUNNING);
			lc_event(lc, sb->id, "running", "");
			return 0;
		}
	}
	/* Roll back: nothing of a failed create may stay behind. */
	if (lc->rt)
		lcrt_destroy(lc->rt, sb->id, NULL);
	snprintf(reason, sizeof(reason), "create failed: %s", err->msg);
	lc_end_row(lc, sb->id, reason);
	return rc;
}

/* A paused sandbox's images and kept disk go with it. */
static int destroy_runtime(struct lifecycle *lc, const char *id, struct herr *err)
{
	enum lcrt_paused kind = lcrt_paused_kind(lc->rt, id);

	if (kind != LCRT_PAUSED_NONE && lcrt_alive(lc->rt, id) <= 0)
		return lcrt_remove_paused(lc->rt, id, err);
	/* A sandbox paused before keeps checkpoint.lock (and a failed dump's
	 * log) beside its disk; they go first, or the runtime could not remove
	 * the sandbox's folder. Kill holds the operation lock: no pause runs. */
	rt_checkpoint_remove(lcrt_runtime(lc->rt), id, NULL);
	return lcrt_destroy(lc->rt, id, err);
}

int lc_kill_locked(struct lifecycle *lc, const char *id, const char *reason,
		   struct herr *err)
{
	int rc = store_sandbox_set_intent(lc->store, id, "kill", err);

	if (rc <= 0)
		return rc;
	if (lc->rt) {
		rc = destroy_runtime(lc, id, err);
		if (rc < 0 && rc != -ENOENT) {
			/* The intent stays: the reaper or the next start retries. */
			log_error("lifecycle", id, "destroying: %s", err->msg);
			return rc;
		}
	}
	rc = store_sandbox_end(lc->store, id, reason, store_now_ms(), err);
	if (rc < 0)
		return rc;
	if (rc > 0) {
		lc_event(lc, id, "ended", reason);
		log_info("lifecycle", id, "ended: %s", reason);
	}
	lc_call_end_hook(lc, id);
	return rc > 0 ? 1 : 0;
}

int lc_kill(struct lifecycle *lc, const char *id, const char *reason, struct herr *err)
{
	int rc;

	if (!lc_busy_take(lc, id, true))
		return herr_set(err, -ENOMEM, "out of memory");
	rc = lc_kill_locked(lc, id, reason, err);
	lc_busy_give(lc, id);
	return rc;
}

int lc_dial(struct lifecycle *lc, const char *id, uint16_t port, struct herr *err)
{
	if (!lc->rt)
		return herr_set(err, -ENOENT, "no sandbox runtime on this node");
	return lcrt_dial(lc->rt, id, port, err);
}

int lc_apply_network(struct lifecycle *lc, const char *id, json_t *network,
		     struct herr *err)
{
	if (!lc->rt)
		return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
	return lcrt_set_network(lc->rt, id, network, err);
}

int lc_stats(struct lifecycle *lc, const char *id, struct lc_stats *out,
	     struct herr *err)
{
	if (!lc->rt)
		return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
	return lcrt_stats(lc->rt, id, out, err);
}

/* ---- sandboxes whose agent ended on its own ---- */

/* Appends to the noted ends; false when out of memory. Under lc->lock. */
static bool note_end_locked(struct lifecycle *lc, const struct lc_exit *e)
{
	if (lc->n_exits == lc->cap_exits) {
		size_t cap = lc->cap_exits ? lc->cap_exits * 2 : 8;
		struct lc_exit *more = realloc(lc->exits, cap * sizeof(*more));

		if (!more)
			return false;
		lc->exits = more;
		lc->cap_exits = cap;
	}
	lc->exits[lc->n_exits++] = *e;
	return true;
}

/* The runtime's exit monitor: noted here, settled by the reaper, which may
 * take the operation lock and call back into the runtime. */
static void agent_ended(void *arg, const char *id, const char *reason)
{
	struct lifecycle *lc = arg;
	struct lc_exit e;
	bool noted;

	/* Longer ids are the runtime's own (template builds): no rows. */
	if (strlen(id) > SBX_ID_LEN)
		return;
	snprintf(e.id, sizeof(e.id), "%s", id);
	snprintf(e.reason, sizeof(e.reason), "%s", reason);
	pthread_mutex_lock(&lc->lock);
	noted = note_end_locked(lc, &e);
	pthread_cond_signal(&lc->wake);
	pthread_mutex_unlock(&lc->lock);
	if (!noted)
		log_error("lifecycle", id, "out of memory noting its end (%s); its timeout "
			  "will end its row", reason);
}

/*
 * Ends the row of a sandbox whose agent ended, with the runtime's reason,
 * and frees what the runtime still holds for it. False when it has to wait:
 * a create, pause, resume or kill of it is under way and decides first.
 */
static bool settle_agent_end(struct lifecycle *lc, const struct lc_exit *e)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct herr err;
	bool done = true;

	if (!lc_busy_take(lc, e->id, false))
		return false;
	int rc = store_sandbox_get(lc->store, e->id, -1, &sb, &err);
	if (rc < 0)
		log_error("lifecycle", e->id, "reading its row after its end: %s", err.msg);
	else if (rc > 0 && strcmp(sb.state, SBX_CREATING) == 0)
		done = false; /* the create sees the end itself, or makes it running */
	/* Only a running row whose sandbox really is gone: a warm or resumed
	 * sandbox of that id may be alive again, a paused or ended row has
	 * its reason already. */
	else if (rc > 0 && strcmp(sb.state, SBX_RUNNING) == 0 && !*sb.intent &&
		 lcrt_alive(lc->rt, e->id) == 0 &&
		 lc_kill_locked(lc, e->id, e->reason, &err) < 0)
		log_error("lifecycle", e->id, "ending its row (%s): %s", e->reason, err.msg);
	lc_busy_give(lc, e->id);
	return done;
}

static void settle_agent_ends(struct lifecycle *lc)
{
	struct lc_exit *list;
	size_t n;

	pthread_mutex_lock(&lc->lock);
	list = lc->exits;
	n = lc->n_exits;
	lc->exits = NULL;
	lc->n_exits = lc->cap_exits = 0;
	pthread_mutex_unlock(&lc->lock);
	for (size_t i = 0; i < n; i++) {
		if (settle_agent_end(lc, &list[i]))
			continue;
		/* Looked at again on the next round of the reaper. */
		pthread_mutex_lock(&lc->lock);
		bool noted = note_end_locked(lc, &list[i]);
		pthread_mutex_unlock(&lc->lock);
		if (!noted)
			log_error("lifecycle", list[i].id, "out of memory keeping its end (%s)",
				  list[i].reason);
	}
	free(list);
}

/* ---- reaper ---- */

static void purge_old(struct lifecycle *lc, int64_t now)
{
	int64_t deleted = 0;
	struct herr err;

	if (now - lc->last_purge < PURGE_EVERY_MS)
		return;
	lc->last_purge = now;
	if (store_sandbox_purge_ended(lc->store, now - lc->cfg.end_retention_ms, &deleted,
				      &err) < 0)
		log_warn("lifecycle", NULL, "purging ended sandboxes: %s", err.msg);
	else if (deleted)
		log_debug("lifecycle", NULL, "purged %lld ended sandboxes",
			  (long long)deleted);
}

int lc_reap_once(struct lifecycle *lc, int64_t now)
{
	char ids[REAP_BATCH][SBX_ID_LEN + 1];
	struct herr err;
	int n = 0, kills = 0;

	if (lc->rt)
		settle_agent_ends(lc);
	if (store_sandbox_expired(lc->store, now, ids, REAP_BATCH, &n, &err) < 0) {
		log_error("lifecycle", NULL, "finding expired sandboxes: %s", err.msg);
		return 0;
	}
	for (int i = 0; i < n; i++) {
		if (lc_auto_pause(lc, ids[i]))
			continue;
		/* Not waiting: a pause or resume under way decides instead. */
		if (!lc_busy_take(lc, ids[i], false))
			continue;
		if (lc_kill_locked(lc, ids[i], "timeout", &err) > 0)
			kills++;
		lc_busy_give(lc, ids[i]);
	}
	purge_old(lc, now);
	return kills;
}

static void *reaper_main(void *arg)
{
	struct lifecycle *lc = arg;
	struct timespec ts;

	pthread_mutex_lock(&lc->lock);
	while (!lc->stopping) {
		pthread_mutex_unlock(&lc->lock);
		lc_reap_once(lc, store_now_ms());
		pthread_mutex_lock(&lc->lock);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += (long)(lc->cfg.reaper_interval_ms % 1000) * 1000000;
		ts.tv_sec += lc->cfg.reaper_interval_ms / 1000 + ts.tv_nsec / 1000000000;
		ts.tv_nsec %= 1000000000;
		if (!lc->stopping)
			pthread_cond_timedwait(&lc->wake, &lc->lock, &ts);
	}
	pthread_mutex_unlock(&lc->lock);
	return NULL;
}

/* ---- recovery ---- */

static int recover_one(const struct store_sandbox *sb, void *arg)
{
	struct lifecycle *lc = arg;
	struct herr err;
	char why[512];

	if (lc_recover_pause(lc, sb))
		return 0;
	if (strcmp(sb->state, SBX_CREATING) == 0) {
		/* A create a crash interrupted: roll it back. A fork's restore
		 * (its keeper outlives hutchd) is waited for first; then its
		 * images and disk go with the rest, also when the runtime never
		 * made the sandbox (its disk was placed already). */
		if (lc->rt) {
			if (rt_checkpoint_settle(lcrt_runtime(lc->rt), sb->id, &err) < 0 &&
			    err.code != -ENOENT)
				log_warn("lifecycle", sb->id, "settling a fork's restore: %s",
					 err.msg);
			lcrt_remove_paused(lc->rt, sb->id, NULL);
		}
		lc_end_row(lc, sb->id, "create interrupted by a hutchd restart");
		log_info("lifecycle", sb->id, "rolled back an interrupted create");
	} else if (strcmp(sb->intent, "kill") == 0) {
		if (lc_kill(lc, sb->id, "killed", &err) < 0)
			log_error("lifecycle", sb->id, "finishing kill: %s", err.msg);
	} else if (strcmp(sb->state, SBX_RUNNING) == 0) {
		if (lc->rt && lcrt_alive(lc->rt, sb->id) > 0) {
			log_info("lifecycle", sb->id, "re-adopted");
			lc_event(lc, sb->id, "re-adopted", "");
		} else if (lc->rt && lcrt_exit_reason(lc->rt, sb->id, why, sizeof(why))) {
			/* It ended while hutchd was away: the runtime knows how. */
			if (lc_kill(lc, sb->id, why, &err) < 0)
				log_error("lifecycle", sb->id, "ending: %s", err.msg);
		} else {
			lc_end_row(lc, sb->id, lc->rt ? "lost: not running after hutchd restart" :
				"lost: no sandbox runtime on this node");
		}
	}
	return 0;
}

/*
 * A sandbox the runtime re-adopted but the store has no live row for: its
 * create was never acknowledged (the row was rolled back or purged), so no
 * client knows it. Leaving it would leak a running sandbox nobody can kill.
 */
static int remove_orphan(void *arg, const char *id)
{
	struct lifecycle *lc = arg;
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct herr err;
	int rc = store_sandbox_get(lc->store, id, -1, &sb, &err);

	if (rc < 0) {
		log_error("lifecycle", id, "checking for orphan: %s", err.msg);
		return 0;
	}
	if (rc > 0 && strcmp(sb.state, SBX_ENDED) != 0)
		return 0;
	if (lcrt_destroy(lc->rt, id, &err) < 0 && err.code != -ENOENT)
		log_error("lifecycle", id, "removing orphan sandbox: %s", err.msg);
	else
		log_info("lifecycle", id, "removed a sandbox the store does not know as live");
	return 0;
}

static int start_templates(struct lifecycle *lc, struct herr *err)
{
	struct tmpl_config tc = {
		.data_dir = lc->cfg.data_dir, .template_dir = lc->cfg.template_dir,
		.agent_dir = lc->cfg.agent_dir, .rt = lc->rt ? lcrt_runtime(lc->rt) : NULL,
		.max_upload_bytes = 4ULL << 30, .max_copy_bytes = 8ULL << 30,
		.step_timeout_s = 1800, .ready_timeout_s = 60, .max_builds = 2,
		.store = lc->store, /* template GC keeps what live sandboxes use */
		.insecure_registries = lc->cfg.insecure_registries,
		.upload_max_age_s = lc->cfg.template_upload_max_age_s,
	};

	return tmpl_open(&tc, &lc->templates, err);
}

/*
 * --no-runtime is for a control plane without sandboxes. On a store that
 * holds live ones it would lose them: recovery ends the rows of sandboxes
 * that run on, and a kill or a deadline would end them in the store only.
 */
static int refuse_live_without_runtime(struct store *st, struct herr *err)
{
	struct store_state_counts c = { 0 };
	int rc = store_sandbox_count_states(st, &c, err);

	if (rc < 0)
		return rc;
	if (c.creating + c.running + c.paused == 0)
		return 0;
	return herr_set(err, -EBUSY, "--no-runtime: the store holds %lld running, %lld paused "
			"and %lld starting sandbox(es), which only a hutchd with its runtime "
			"can keep; start without --no-runtime", (long long)c.running,
			(long long)c.paused, (long long)c.creating);
}

int lc_start(struct store *st, const struct lc_config *cfg, struct lifecycle **out,
	     struct herr *err)
{
	struct lifecycle *lc;
	int rc = 0;

	if (cfg->no_runtime && (rc = refuse_live_without_runtime(st, err)) < 0)
		return rc;
	lc = calloc(1, sizeof(*lc));
	if (!lc)
		return herr_set(err, -ENOMEM, "lifecycle: out of memory");
	lc->store = st;
	lc->cfg = *cfg;
	pthread_mutex_init(&lc->lock, NULL);
	pthread_cond_init(&lc->wake, NULL);
	pthread_rwlock_init(&lc->hook_lock, NULL);
	pthread_cond_init(&lc->busy_done, NULL);
	/*
	 * Without its runtime hutchd cannot tell a running sandbox from a lost
	 * one: recovery would end every live row while the sandboxes run on,
	 * out of reach of kill and timeout. So a runtime that does not start
	 * stops the start; only --no-runtime asks for the API alone.
	 */
	if (!cfg->no_runtime) {
		rc = lcrt_open(cfg, &lc->rt, err);
		if (rc < 0) {
			lc_stop(lc); /* lc->rt is still NULL */
			return herr_wrap(err, "sandbox runtime (--no-runtime serves the API "
					 "without sandboxes)");
		}
		lcrt_on_exit(lc->rt, agent_ended, lc);
	}
	store_sandbox_each(st, NULL, recover_one, lc, err);
	lc_snapshot_collect(lc);
	if (lc->rt)
		lcrt_each(lc->rt, remove_orphan, lc);
	/* After the orphan sweep, which also ends builds a restart cut short. */
	if (start_templates(lc, err) < 0)
		log_error("lifecycle", NULL, "template builds disabled: %s", err->msg);
	/* Only now: pooled sandboxes have no rows and would look like orphans. */
	if (warm_start(lc->rt, &lc->cfg, &lc->warm, err) < 0)
		log_error("lifecycle", NULL, "warm pool disabled: %s", err->msg);
	rc = pthread_create(&lc->reaper, NULL, reaper_main, lc);
	if (rc != 0) {
		lc_stop(lc);
		return herr_set(err, -rc, "lifecycle: starting the reaper thread failed");
	}
	lc->reaper_started = true;
	*out = lc;
	return 0;
}

void lc_stop(struct lifecycle *lc)
{
	if (!lc)
		return;
	pthread_mutex_lock(&lc->lock);
	lc->stopping = true;
	pthread_cond_signal(&lc->wake);
	pthread_mutex_unlock(&lc->lock);
	if (lc->reaper_started)
		pthread_join(lc->reaper, NULL);
	warm_stop(lc->warm);
	tmpl_close(lc->templates);
	if (lc->rt)
		lcrt_close(lc->rt);
	pthread_cond_destroy(&lc->wake);
	pthread_cond_destroy(&lc->busy_done);
	free(lc->busy);
	free(lc->exits);
	pthread_rwlock_destroy(&lc->hook_lock);
	pthread_mutex_destroy(&lc->lock);
	free(lc);
}
