/*
 * Snapshots of sandboxes and forks from them (docs/api.md, "Snapshots and
 * fork"). A snapshot is a copy of a sandbox's disk (its writable layer) under
 * <data_dir>/snapshots/<snapshot id>/disk.img plus a store row; a fork is a
 * new sandbox started from the template's layers on its own copy of that
 * disk. The processes of the source are not carried over (filesystem-only
 * fork): the fork's agent and template start command start afresh.
 */
#ifndef HUTCH_LC_SNAPSHOT_H
#define HUTCH_LC_SNAPSHOT_H

#include <stdint.h>

#include "err.h"
#include "lifecycle.h"
#include "store.h"

/*
 * Takes a snapshot of sandbox id (of team): a running sandbox is paused with
 * its memory (so that its disk is unmounted and consistent), its disk copied
 * and the sandbox resumed with its deadline unchanged; a paused one has its
 * disk copied as it is. Fills out with the new row. -ENOENT: not live;
 * -EBUSY: another operation on it is under way; -ENOSYS: no runtime.
 * -ECANCELED: the snapshot was recorded (out is filled) but the sandbox
 * could not be resumed after it and stays paused (the message says why).
 */
int lc_snapshot_take(struct lifecycle *lc, int64_t team, const char *id,
		     const char *name, struct store_snapshot *out, struct herr *err);

/* Deletes a team's snapshot: row, then files. 1 deleted, 0 no such. */
int lc_snapshot_delete(struct lifecycle *lc, int64_t team, const char *snapshot_id,
		       struct herr *err);

/*
 * Starts sb (a row the caller filled from snap's config: new id and tokens,
 * as for a create) on a copy of snap's disk. The row is committed first in
 * state "creating" (as lc_create_begin_capped does: -EDQUOT, nothing made,
 * when the team has max_active active sandboxes; 0 = no cap); on failure
 * it ends with the reason and nothing of the fork stays behind. sb's times
 * are updated.
 */
int lc_fork_from(struct lifecycle *lc, const struct store_snapshot *snap,
		 struct store_sandbox *sb, int64_t max_active, struct herr *err);

/*
 * At start, before any request: removes what a crash left in
 * <data_dir>/snapshots: <id>.tmp folders of unfinished snapshots, and
 * folders whose row is gone (a crash between a delete's row and its files)
 * or was never written (a crash between the rename and the insert).
 */
void lc_snapshot_collect(struct lifecycle *lc);

#endif
