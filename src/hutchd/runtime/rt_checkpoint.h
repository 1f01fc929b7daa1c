/*
 * Pause and resume of runtime sandboxes with CRIU (checkpoint.c).
 *
 * A pause writes the sandbox's processes to an image directory next to its
 * disk (<data_dir>/sandboxes/<id>/checkpoint) and ends them; the writable
 * layer and the cgroups stay, and so does the network namespace while this
 * runtime holds it. A resume rebuilds the root from the same layers and disk
 * and brings the processes back under a new keeper, with the same pids
 * inside, memory, open files, listeners and established TCP connections.
 * While paused, rt_query reports the sandbox as RT_STATE_STOPPED with reason
 * RT_EXIT_KILLED; rt_checkpoint_exists tells the two apart.
 *
 * Crash safety: images are written to checkpoint.tmp while the processes
 * are held stopped; only after the images are durable is the directory
 * renamed and the processes ended. A crash before the rename leaves the
 * sandbox running (the next call thaws it), after it the sandbox is paused
 * and resumable. A resume renames the images to checkpoint.restoring before
 * CRIU runs, so two resumes can never both succeed; a per-sandbox file lock
 * serialises pause and resume across processes.
 */
#ifndef HUTCH_RT_CHECKPOINT_H
#define HUTCH_RT_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "rt.h"

/* The CRIU binary scripts/setup-criu installs. */
#define RT_CRIU_DEFAULT "/usr/local/lib/hutch/criu"

struct rt_ckpt_opts {
	const char *criu;      /* CRIU binary; NULL or "" = RT_CRIU_DEFAULT */
	uint64_t ghost_limit;  /* bytes of deleted-but-open files kept; 0 = 64 MiB */
	unsigned timeout_ms;   /* limit for one CRIU run; 0 = 120000 */
	bool verbose_log;      /* -v4 in the CRIU logs (slower); default -v2 */
};

/*
 * A fork: the processes of another sandbox's images (a snapshot's), restored
 * as this one. The sandbox must have been made with rt_create (its own slot,
 * id range, netns, cgroups, disk: a copy of the source's); its processes are
 * ended and the images copied in, with the user namespace's id map moved to
 * this sandbox's range and the source's hostname replaced by this id. TCP
 * connections come back closed (their peers are the source's); listeners
 * come back.
 */
struct rt_fork_source {
	const char *images;    /* the snapshot's image folder; read, never changed */
	const char *hostname;  /* the source's hostname (its id), to be replaced */
};

/* What a resume needs that the images do not hold: the same template layers
 * and agent bundle the sandbox was created with (rt_spec's fields). */
struct rt_restore_spec {
	const char *const *layers;
	size_t n_layers;
	const char *agent_dir;
	const struct rt_fork_source *fork; /* NULL: the sandbox's own images */
	/* The sandbox's own images, made in an earlier boot (see
	 * rt_checkpoint_from_other_boot): the sandbox was made again with
	 * rt_create on its kept disk, maybe in another slot. Its processes are
	 * ended and the images rewritten for its id range and address, as a
	 * fork's are (in place, through hard links, swapped in whole); TCP
	 * connections come back closed (their peers and netns died with the
	 * boot). CRIU gives the restored tree a time namespace whose clocks go
	 * on from the values at the dump. */
	bool other_boot;
};

struct rt_ckpt_stats {
	uint64_t criu_ms;      /* CRIU's run: dump, or restore until detached */
	uint64_t sync_ms;      /* making the images durable (pause only) */
	uint64_t total_ms;     /* the whole call */
	uint64_t image_bytes;  /* size of the image directory */
};

/* Pauses a running sandbox. -EBUSY when a pause or resume of it is under
 * way elsewhere; -EINVAL when it is not running. On failure the sandbox is
 * left running (thawed). */
int rt_checkpoint(struct rt *rt, const char *id, const struct rt_ckpt_opts *opts,
		  struct rt_ckpt_stats *stats, struct herr *err);

/* Resumes a paused sandbox. -ENOENT when it has no images, -EBUSY when its
 * processes exist or another pause/resume runs. On failure the images are
 * kept and the call may be repeated. */
int rt_restore(struct rt *rt, const char *id, const struct rt_restore_spec *spec,
	       const struct rt_ckpt_opts *opts, struct rt_ckpt_stats *stats,
	       struct herr *err);

/* Copies a paused sandbox's images (regular files) into dir, which must not
 * exist, and makes them durable; for a snapshot taken while it is paused. */
int rt_checkpoint_copy(struct rt *rt, const char *id, const char *dir, uint64_t *bytes,
		       struct herr *err);

/* Finishes what a pause or resume of a hutchd that died left half done:
 * waits for its CRIU or restore keeper to end, adopts a restored tree, rolls
 * back an unfinished dump (running) or unfinished restore (images back in
 * place: paused), and ends the stale tasks of a dump whose images are
 * final. Then rt_query and rt_checkpoint_exists tell the outcome. */
int rt_checkpoint_settle(struct rt *rt, const char *id, struct herr *err);

/* True when the sandbox has complete images (it is paused). */
bool rt_checkpoint_exists(struct rt *rt, const char *id);

/* True when the run dir holds a state file for the sandbox, whether or not
 * rt_init re-adopted it: a run dir on tmpfs after a host reboot holds none,
 * a sandbox rt_init refused (say, its slot beyond max_sandboxes) still has
 * one, and its network namespace may well be alive. */
bool rt_state_left(struct rt *rt, const char *id);

/* True when the sandbox's images were made in an earlier boot of the host:
 * its processes' network namespace died with that boot, and they cannot come
 * back. False when they were made in this boot, or when it is not known
 * (images of a hutchd that did not record it). */
bool rt_checkpoint_from_other_boot(struct rt *rt, const char *id);

/* Removes the images and leftovers of an interrupted pause or resume. Call
 * before rt_destroy of a paused sandbox. */
int rt_checkpoint_remove(struct rt *rt, const char *id, struct herr *err);

/* Runs `criu check` and the version test; fills version ("4.2.1"). */
int rt_criu_check(const char *criu, char *version, size_t len, struct herr *err);

#endif
