/*
 * What the lifecycle's files share: the lifecycle object, the helpers that
 * record events and ends, and the per-sandbox operation lock that keeps a
 * pause, a resume and a kill of one sandbox from running at the same time.
 */
#ifndef HUTCH_LC_INTERNAL_H
#define HUTCH_LC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lifecycle.h"

struct lifecycle {
	struct store *store;
	struct lc_config cfg;
	struct lc_rt *rt;          /* NULL: no runtime on this node */
	struct warm *warm;         /* NULL: no warm pool */
	struct tmpl_mgr *templates; /* built templates (src/hutchd/template) */
	pthread_t reaper;
	bool reaper_started;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool stopping;
	int64_t last_purge;
	/* Calls hold it for reading, so unsetting the hook waits for them. */
	pthread_rwlock_t hook_lock;
	lc_end_fn end_hook;
	void *end_arg;
	/* Ids with a pause, resume or kill under way (under lock); busy_done
	 * is signalled whenever one finishes. */
	char (*busy)[SBX_ID_LEN + 1];
	size_t n_busy, cap_busy;
	pthread_cond_t busy_done;
	/* Sandboxes whose agent ended on its own, with the runtime's reason:
	 * the runtime reports them, the reaper ends their rows (under lock). */
	struct lc_exit *exits;
	size_t n_exits, cap_exits;
};

struct lc_exit {
	char id[SBX_ID_LEN + 1];
	char reason[512];
};

void lc_call_end_hook(struct lifecycle *lc, const char *id);
void lc_event(struct lifecycle *lc, const char *id, const char *kind,
	      const char *detail);
void lc_end_row(struct lifecycle *lc, const char *id, const char *reason);

/* Takes the operation lock of id, waiting for the one under way (wait) or
 * returning false at once when there is one (!wait). */
bool lc_busy_take(struct lifecycle *lc, const char *id, bool wait);
void lc_busy_give(struct lifecycle *lc, const char *id);

/* The kill, with the operation lock held. */
int lc_kill_locked(struct lifecycle *lc, const char *id, const char *reason,
		   struct herr *err);

/* pause.c: what the reaper does with an expired sandbox whose lifecycle
 * says onTimeout "pause" (true when it took care of it). */
bool lc_auto_pause(struct lifecycle *lc, const char *id);
/* pause.c: settles a row a crash left mid-pause or mid-resume, or a paused
 * row whose images and disk are gone. True when the row was one of those. */
bool lc_recover_pause(struct lifecycle *lc, const struct store_sandbox *sb);

#endif
