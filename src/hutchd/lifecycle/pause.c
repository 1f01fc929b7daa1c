/*
 * Pause and resume of sandboxes: see lifecycle.h and docs/snapshot.md
 * ("Lifecycle").
 *
 * Ordering, as for create and kill: the store learns of a pause or resume
 * (intent "pause", "pause-fs" or "resume") before the runtime does it, and
 * of the outcome after. The intent alone takes the sandbox out of the
 * proxy's routing (backend.c routes only rows with no intent), so no new
 * connection reaches processes about to be dumped; open ones are closed
 * through the end hook. A crash in between leaves an intent that
 * lc_recover_pause settles from what the runtime holds: complete images or
 * a kept disk mean paused, live processes mean running, neither means the
 * sandbox is lost and its row ends with the reason.
 *
 * One operation per sandbox at a time: pause, resume and kill take the
 * sandbox's operation lock, so two resumes never both run a restore; the
 * second waits and then finds the sandbox running.
 */
#include "lc_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "log.h"
#include "rt_checkpoint.h"
#include "sandbox_rt.h"

#define INTENT_PAUSE "pause"        /* with memory (CRIU images) */
#define INTENT_PAUSE_FS "pause-fs"  /* the disk only */
#define INTENT_RESUME "resume"

/* ---- the per-sandbox operation lock ---- */

static ssize_t busy_find(struct lifecycle *lc, const char *id)
{
	for (size_t i = 0; i < lc->n_busy; i++)
		if (strcmp(lc->busy[i], id) == 0)
			return (ssize_t)i;
	return -1;
}

static bool busy_add(struct lifecycle *lc, const char *id)
{
	if (lc->n_busy == lc->cap_busy) {
		size_t cap = lc->cap_busy ? lc->cap_busy * 2 : 16;
		void *p = realloc(lc->busy, cap * sizeof(*lc->busy));

		if (!p)
			return false;
		lc->busy = p;
		lc->cap_busy = cap;
	}
	snprintf(lc->busy[lc->n_busy++], SBX_ID_LEN + 1, "%s", id);
	return true;
}

bool lc_busy_take(struct lifecycle *lc, const char *id, bool wait)
{
	bool taken = false;

	pthread_mutex_lock(&lc->lock);
	while (busy_find(lc, id) >= 0 && wait)
		pthread_cond_wait(&lc->busy_done, &lc->lock);
	if (busy_find(lc, id) < 0)
		taken = busy_add(lc, id);
	pthread_mutex_unlock(&lc->lock);
	return taken;
}

void lc_busy_give(struct lifecycle *lc, const char *id)
{
	ssize_t i;

	pthread_mutex_lock(&lc->lock);
	i = busy_find(lc, id);
	if (i >= 0)
		memmove(lc->busy[i], lc->busy[i + 1],
			(lc->n_busy - (size_t)i - 1) * sizeof(*lc->busy));
	if (i >= 0)
		lc->n_busy--;
	pthread_cond_broadcast(&lc->busy_done);
	pthread_mutex_unlock(&lc->lock);
}

/* ---- pause ---- */

static bool row_live(const struct store_sandbox *sb)
{
	return strcmp(sb->state, SBX_RUNNING) == 0 || strcmp(sb->state, SBX_PAUSED) == 0;
}

static int load_row(struct lifecycle *lc, const char *id, struct store_sandbox *sb,
		    struct herr *err)
{
	int rc = store_sandbox_get(lc->store, id, -1, sb, err);

	if (rc < 0)
		return rc;
	if (rc == 0 || !row_live(sb))
		return herr_set(err, -ENOENT, "sandbox %s is not live", id);
	return 0;
}

static int set_intent(struct lifecycle *lc, const char *id, const char *intent,
		      struct herr *err)
{
	int rc = store_sandbox_set_intent(lc->store, id, intent, err);

	return rc < 0 ? rc : 0;
}

/* Gives the sandbox back to the proxy after a pause that did not happen. */
static void pause_failed(struct lifecycle *lc, const char *id, const struct herr *why)
{
	struct herr err;

	if (set_intent(lc, id, "", &err) < 0)
		log_error("lifecycle", id, "clearing the pause intent: %s", err.msg);
	log_warn("lifecycle", id, "pause failed, the sandbox keeps running: %s", why->msg);
	lc_event(lc, id, "pause failed", why->msg);
}

static int pause_locked(struct lifecycle *lc, const char *id, bool keep_memory,
			struct herr *err)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct rt_ckpt_stats stats = { 0 };
	int rc = load_row(lc, id, &sb, err);

	if (rc < 0)
		return rc;
	if (strcmp(sb.state, SBX_PAUSED) == 0)
		return herr_set(err, -EALREADY, "sandbox '%s' is already paused", id);
	if (*sb.intent)
		return herr_set(err, -EBUSY, "sandbox '%s' has a %s under way", id, sb.intent);
	rc = set_intent(lc, id, keep_memory ? INTENT_PAUSE : INTENT_PAUSE_FS, err);
	if (rc < 0)
		return rc;
	/* Routing stopped with the intent; now the open connections go, so
	 * that nothing talks to processes while they are written out. */
	lc_call_end_hook(lc, id);
	rc = lcrt_pause(lc->rt, id, keep_memory, &stats, err);
	if (rc < 0) {
		herr_wrap(err, keep_memory ? "checkpoint of the sandbox's memory failed" :
			  "stopping the sandbox for a disk-only pause failed");
		pause_failed(lc, id, err);
		return rc;
	}
	rc = store_sandbox_set_paused(lc->store, id, store_now_ms(), err);
	if (rc <= 0)
		return rc < 0 ? rc : herr_set(err, -EIO, "sandbox %s: its row left the "
					      "running state during the pause", id);
	lc_event(lc, id, "paused", keep_memory ? "memory and disk" : "disk only");
	if (keep_memory)
		log_info("lifecycle", id, "paused with memory in %llu ms (criu %llu ms, "
			 "images %llu bytes)", (unsigned long long)stats.total_ms,
			 (unsigned long long)stats.criu_ms,
			 (unsigned long long)stats.image_bytes);
	else
		log_info("lifecycle", id, "paused (disk only)");
	return 0;
}

int lc_pause(struct lifecycle *lc, const char *id, bool keep_memory, struct herr *err)
{
	int rc;

	if (!lc->rt)
		return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
	if (!lc_busy_take(lc, id, true))
		return herr_set(err, -ENOMEM, "out of memory");
	rc = pause_locked(lc, id, keep_memory, err);
	lc_busy_give(lc, id);
	return rc;
}

/* ---- resume ---- */

static void resume_failed(struct lifecycle *lc, const char *id, const struct herr *why)
{
	struct herr err;

	if (set_intent(lc, id, "", &err) < 0)
		log_error("lifecycle", id, "clearing the resume intent: %s", err.msg);
	log_warn("lifecycle", id, "resume failed, the sandbox stays paused: %s", why->msg);
	lc_event(lc, id, "resume failed", why->msg);
}

static int resume_runtime(struct lifecycle *lc, const struct store_sandbox *sb,
			  bool keep_memory, struct herr *err)
{
	struct lc_template tpl = { 0 };
	int rc = lc_template_get_team(lc, sb->team_id, sb->template_id, &tpl, err);

	/* A template removed since the create cannot be "not found" to the
	 * caller: it is the sandbox that asked, and it still exists. */
	if (rc == -ENOENT)
		rc = herr_set(err, -EIO, "template '%s' of the sandbox is gone",
			      sb->template_id);
	if (rc == 0)
		rc = lcrt_resume(lc->rt, sb, &tpl, keep_memory, err);
	tpl_clear(&tpl);
	return rc;
}

static int resume_locked(struct lifecycle *lc, const char *id, int64_t timeout_s,
			 bool keep_memory, struct herr *err)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	int64_t started;
	int rc = load_row(lc, id, &sb, err);

	if (rc < 0)
		return rc;
	if (*sb.intent)
		return herr_set(err, -EBUSY, "sandbox '%s' has a %s under way", id, sb.intent);
	if (strcmp(sb.state, SBX_RUNNING) == 0)
		return 0;
	rc = set_intent(lc, id, INTENT_RESUME, err);
	if (rc == 0)
		rc = resume_runtime(lc, &sb, keep_memory, err);
	if (rc < 0) {
		herr_wrap(err, "resuming sandbox %s", id);
		resume_failed(lc, id, err);
		return rc;
	}
	/* A new run: its deadline counts from now, paused time never counts. */
	started = store_now_ms();
	rc = store_sandbox_set_running(lc->store, id, started, started + timeout_s * 1000,
				       err);
	if (rc < 0)
		return rc;
	lc_event(lc, id, "resumed", "");
	log_info("lifecycle", id, "resumed");
	return 1;
}

int lc_resume(struct lifecycle *lc, const char *id, int64_t timeout_s, bool keep_memory,
	      struct herr *err)
{
	int rc;

	if (!lc->rt)
		return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
	if (!lc_busy_take(lc, id, true))
		return herr_set(err, -ENOMEM, "out of memory");
	rc = resume_locked(lc, id, timeout_s, keep_memory, err);
	lc_busy_give(lc, id);
	return rc;
}

/* ---- auto-pause at the deadline ---- */

struct auto_pause {
	bool pause, keep_memory;
};

static struct auto_pause auto_pause_of(const struct store_sandbox *sb)
{
	json_t *life = json_loads(sb->lifecycle ? sb->lifecycle : "{}", 0, NULL);
	struct auto_pause ap = {
		.pause = json_is_string(json_object_get(life, "onTimeout")) &&
			 strcmp(json_string_value(json_object_get(life, "onTimeout")),
				"pause") == 0,
		.keep_memory = !json_is_false(json_object_get(life, "autoPauseMemory")),
	};

	json_decref(life);
	return ap;
}

/*
 * A sandbox whose memory cannot be checkpointed still keeps its files: the
 * reaper falls back to a disk-only pause, and kills only when that fails
 * too (it could otherwise run past its deadline for ever).
 */
static void auto_pause_locked(struct lifecycle *lc, const char *id, bool keep_memory)
{
	struct herr err;
	char reason[HERR_MSG_MAX + 64];

	if (pause_locked(lc, id, keep_memory, &err) == 0 || err.code == -EALREADY)
		return;
	if (keep_memory && pause_locked(lc, id, false, &err) == 0) {
		log_warn("lifecycle", id, "auto-pause kept the disk only: the memory "
			 "checkpoint failed");
		return;
	}
	snprintf(reason, sizeof(reason), "timeout (auto-pause failed: %s)", err.msg);
	if (lc_kill_locked(lc, id, reason, &err) < 0)
		log_error("lifecycle", id, "killing after a failed auto-pause: %s", err.msg);
}

bool lc_auto_pause(struct lifecycle *lc, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct auto_pause ap;
	struct herr err;

	if (!lc->rt || store_sandbox_get(lc->store, id, -1, &sb, &err) <= 0)
		return false;
	ap = auto_pause_of(&sb);
	if (!ap.pause)
		return false;
	/* The reaper does not wait: an operation under way decides, and the
	 * next pass sees the outcome. */
	if (!lc_busy_take(lc, id, false))
		return true;
	auto_pause_locked(lc, id, ap.keep_memory);
	lc_busy_give(lc, id);
	return true;
}

/* ---- recovery ---- */

static void settle_runtime(struct lifecycle *lc, const char *id)
{
	struct herr err;
	int rc = rt_checkpoint_settle(lcrt_runtime(lc->rt), id, &err);

	if (rc < 0 && rc != -ENOENT)
		log_error("lifecycle", id, "settling an interrupted pause or resume: %s",
			  err.msg);
}

static void settle_to(struct lifecycle *lc, const struct store_sandbox *sb,
		      const char *state, const char *why)
{
	struct herr err;
	int64_t now = store_now_ms();
	int rc;

	if (strcmp(state, SBX_PAUSED) == 0 && strcmp(sb->state, SBX_RUNNING) == 0)
		rc = store_sandbox_set_paused(lc->store, sb->id, now, &err);
	else if (strcmp(state, SBX_RUNNING) == 0 && strcmp(sb->state, SBX_PAUSED) == 0)
		rc = store_sandbox_set_running(lc->store, sb->id, now,
					       now + sb->timeout_s * 1000, &err);
	else
		rc = set_intent(lc, sb->id, "", &err);
	if (rc < 0) {
		log_error("lifecycle", sb->id, "settling to %s: %s", state, err.msg);
		return;
	}
	log_info("lifecycle", sb->id, "%s: %s", why, state);
	lc_event(lc, sb->id, why, state);
}

static void lose(struct lifecycle *lc, const struct store_sandbox *sb, const char *why)
{
	lcrt_destroy(lc->rt, sb->id, NULL);
	lcrt_remove_paused(lc->rt, sb->id, NULL);
	lc_end_row(lc, sb->id, why);
	log_warn("lifecycle", sb->id, "ended: %s", why);
}

static void settle_pause(struct lifecycle *lc, const struct store_sandbox *sb)
{
	bool memory = strcmp(sb->intent, INTENT_PAUSE) == 0;
	enum lcrt_paused kind = lcrt_paused_kind(lc->rt, sb->id);
	bool alive = lcrt_alive(lc->rt, sb->id) > 0;

	if (memory && kind == LCRT_PAUSED_MEMORY) {
		/* Images are complete: the dump finished. Tasks CRIU left
		 * stopped are ended (rt_stop keeps the images and netns). */
		if (alive)
			lcrt_stop(lc->rt, sb->id);
		settle_to(lc, sb, SBX_PAUSED, "pause finished after a restart");
	} else if (alive) {
		/* The pause did not get to end the processes: roll back. CRIU
		 * may have left them frozen. */
		lcrt_thaw(lc->rt, sb->id);
		settle_to(lc, sb, SBX_RUNNING, "pause rolled back after a restart");
	} else if (kind == LCRT_PAUSED_DISK) {
		/* No processes, no complete images, the disk intact: a
		 * memory-less pause finished, or the processes of a memory
		 * pause ended before it could (the host rebooted mid-dump).
		 * The disk is what the user asked to keep: paused without
		 * memory, and a half-written dump goes. */
		if (memory)
			lcrt_drop_images(lc->rt, sb->id);
		if (lcrt_known(lc->rt, sb->id) > 0)
			lcrt_release_keep_disk(lc->rt, sb->id, NULL);
		settle_to(lc, sb, SBX_PAUSED, memory ? "pause cut short by a restart, the "
			  "disk kept (its memory is lost)" : "pause finished after a restart");
	} else {
		lose(lc, sb, "error: the sandbox's processes ended during a pause "
		     "interrupted by a hutchd restart");
	}
}

static void settle_resume(struct lifecycle *lc, const struct store_sandbox *sb)
{
	enum lcrt_paused kind;

	if (lcrt_alive(lc->rt, sb->id) > 0) {
		settle_to(lc, sb, SBX_RUNNING, "resume finished after a restart");
		return;
	}
	kind = lcrt_paused_kind(lc->rt, sb->id);
	/* A cold resume that had started the sandbox again: back to the disk. */
	if (kind == LCRT_PAUSED_DISK && lcrt_known(lc->rt, sb->id) > 0)
		lcrt_release_keep_disk(lc->rt, sb->id, NULL);
	if (kind != LCRT_PAUSED_NONE)
		settle_to(lc, sb, SBX_PAUSED, "resume rolled back after a restart");
	else
		lose(lc, sb, "error: neither images nor disk left after a resume "
		     "interrupted by a hutchd restart");
}

bool lc_recover_pause(struct lifecycle *lc, const struct store_sandbox *sb)
{
	bool pausing = strcmp(sb->state, SBX_RUNNING) == 0 &&
		(strcmp(sb->intent, INTENT_PAUSE) == 0 ||
		 strcmp(sb->intent, INTENT_PAUSE_FS) == 0);
	bool resuming = strcmp(sb->state, SBX_PAUSED) == 0 &&
		strcmp(sb->intent, INTENT_RESUME) == 0;
	bool paused = strcmp(sb->state, SBX_PAUSED) == 0 && !*sb->intent;

	if (!pausing && !resuming && !paused)
		return false;
	if (!lc->rt)
		return true; /* nothing to check against: rows stay as they are */
	/*
	 * The CRIU dump or restore keeper of the hutchd that died goes on
	 * without it. Settling first waits for it to end and turns what it
	 * left into one of two states the checks below can read: images final
	 * and no tasks (paused), or tasks running with no partial images
	 * (running). Judging before that thawed tasks CRIU still held (they
	 * stayed stopped) and read a finished restore as a disk-only pause.
	 */
	if (pausing || resuming)
		settle_runtime(lc, sb->id);
	if (pausing)
		settle_pause(lc, sb);
	else if (resuming)
		settle_resume(lc, sb);
	else if (lcrt_paused_kind(lc->rt, sb->id) == LCRT_PAUSED_NONE)
		lose(lc, sb, "error: a paused sandbox's images and disk are gone");
	else
		log_info("lifecycle", sb->id, "still paused");
	return true;
}
