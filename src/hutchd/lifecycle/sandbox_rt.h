/*
 * The lifecycle's view of the runtime: start a sandbox from a store row and
 * its template (runtime create, wait for the agent, POST /init), destroy,
 * liveness, listing, dialing, network policy and usage. rt_glue.c implements
 * it over rt.h when the runtime is built; rt_none.c reports that there is
 * none.
 */
#ifndef HUTCH_LC_SANDBOX_RT_H
#define HUTCH_LC_SANDBOX_RT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "lifecycle.h"
#include "template.h"

struct lc_rt;

int lcrt_open(const struct lc_config *cfg, struct lc_rt **out, struct herr *err);
void lcrt_close(struct lc_rt *rt);
/* The runtime itself, for template builds (NULL without one). */
struct rt *lcrt_runtime(struct lc_rt *rt);
int lcrt_start(struct lc_rt *rt, const struct store_sandbox *sb,
	       const struct lc_template *tpl, struct herr *err);
/* Warm pool: a sandbox started up to a listening agent, without /init... */
int lcrt_prestart(struct lc_rt *rt, const char *id, const struct lc_template *tpl,
		  const struct lc_resources *res, struct herr *err);
/* ...and made ready for a create's row: its egress policy, then /init. */
int lcrt_finish_warm(struct lc_rt *rt, const struct store_sandbox *sb,
		     const struct lc_template *tpl, struct herr *err);
int lcrt_destroy(struct lc_rt *rt, const char *id, struct herr *err);
/* 1 running, 0 not, negative on error. */
int lcrt_alive(struct lc_rt *rt, const char *id);
/* Calls fn with the id of every sandbox the runtime knows; stops on non-zero. */
int lcrt_each(struct lc_rt *rt, int (*fn)(void *arg, const char *id), void *arg);
int lcrt_dial(struct lc_rt *rt, const char *id, uint16_t port, struct herr *err);
int lcrt_set_network(struct lc_rt *rt, const char *id, json_t *network,
		     struct herr *err);

/* ---- pause and resume (see docs/snapshot.md, "Lifecycle") ---- */
struct rt_ckpt_stats;
enum lcrt_paused {
	LCRT_PAUSED_NONE,    /* nothing to resume from */
	LCRT_PAUSED_DISK,    /* the disk alone: resume starts the sandbox again */
	LCRT_PAUSED_MEMORY,  /* CRIU images: resume restores the processes */
};
/* keep_memory: CRIU checkpoint; else stop and keep only the disk. On
 * failure the sandbox keeps running. */
int lcrt_pause(struct lc_rt *rt, const char *id, bool keep_memory,
	       struct rt_ckpt_stats *stats, struct herr *err);
enum lcrt_paused lcrt_paused_kind(struct lc_rt *rt, const char *id);
/* 1 when the runtime knows id (running or stopped), 0 when not. */
int lcrt_known(struct lc_rt *rt, const char *id);
/* Removes memory images, whole or partial, keeping the disk. */
void lcrt_drop_images(struct lc_rt *rt, const char *id);
/* Lets go of a stopped sandbox's runtime objects, keeping its disk. */
int lcrt_release_keep_disk(struct lc_rt *rt, const char *id, struct herr *err);
/* Brings a paused sandbox back with the row's id, tokens and network; its
 * processes too when it was paused with them and keep_memory is true. */
int lcrt_resume(struct lc_rt *rt, const struct store_sandbox *sb,
		const struct lc_template *tpl, bool keep_memory, struct herr *err);
/*
 * A fork with memory: a new sandbox (the row's id, tokens, limits and
 * network) whose disk is already in place, running the processes of a
 * snapshot's images. Its agent, the source's, is given the fork's token,
 * env and init secret through /init, which it takes only with the source's.
 */
struct lcrt_fork_from {
	const char *images;        /* the snapshot's memory images */
	const char *source_id;     /* the sandbox they were taken from */
	const char *source_token;  /* its agent's access token then; "" when none */
};
int lcrt_fork(struct lc_rt *rt, const struct store_sandbox *sb,
	      const struct lc_template *tpl, const struct lcrt_fork_from *from,
	      struct herr *err);
/* Copies a sandbox's memory images (it is paused) into dir, made here;
 * durable when this returns. */
int lcrt_copy_images(struct lc_rt *rt, const char *id, const char *dir, int64_t *bytes,
		     struct herr *err);
/* Recovery: ends a sandbox's processes keeping everything else (rt_stop),
 * or thaws processes a CRIU run left frozen. */
void lcrt_stop(struct lc_rt *rt, const char *id);
void lcrt_thaw(struct lc_rt *rt, const char *id);
/* Deletes a paused sandbox: images, disk and any runtime objects. */
int lcrt_remove_paused(struct lc_rt *rt, const char *id, struct herr *err);

int lcrt_stats(struct lc_rt *rt, const char *id, struct lc_stats *out, struct herr *err);

/*
 * Called (from a runtime thread) when a sandbox's agent ends without being
 * asked to: reason is the end reason for its row ("oom: ...", "exited:
 * ...", see rt_glue.c). Ends asked for (stop, destroy, pause) are not
 * reported; whoever asked records those. fn must not block for long.
 */
typedef void (*lcrt_exit_fn)(void *arg, const char *id, const char *reason);
void lcrt_on_exit(struct lc_rt *rt, lcrt_exit_fn fn, void *arg);
/* 1 and the reason when the runtime knows id as ended, 0 when not. */
int lcrt_exit_reason(struct lc_rt *rt, const char *id, char *out, size_t len);

#endif
