/*
 * Internal interfaces of the filesystem service, shared by its files and its
 * unit tests: memory for messages built outside an RPC call, growable paths,
 * entry info, directory walking, safe recursive removal and the inotify
 * watcher engine.
 */
#ifndef HUTCH_AGENT_FS_INTERNAL_H
#define HUTCH_AGENT_FS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "err.h"
#include "filesystem.h"
#include "users.h"

/*
 * Where message memory comes from: the call's arena when ctx is set, else
 * malloc'd blocks that fs_mem_release frees together (the watcher thread
 * builds events outside any call).
 */
struct fs_mem_block;
struct fs_mem {
	struct rpc_ctx *ctx;
	struct fs_mem_block *blocks;
	/* Owner names of the last entry, so a listing reads passwd once per owner. */
	bool have_uid, have_gid;
	uid_t uid;
	gid_t gid;
	char uid_name[80];
	char gid_name[80];
};

void *fs_mem_alloc(struct fs_mem *m, size_t n); /* zeroed; aborts on OOM */
char *fs_mem_strdup(struct fs_mem *m, const char *s);
void fs_mem_release(struct fs_mem *m);

/* A heap path that grows as a walk descends; push/pop keep it NUL-ended. */
struct fs_path {
	char *buf;
	size_t len;
	size_t cap;
};

int fs_path_set(struct fs_path *p, const char *s);
/* Appends "/name" (no slash after a trailing one); returns the old length. */
size_t fs_path_push(struct fs_path *p, const char *name);
void fs_path_pop(struct fs_path *p, size_t old_len);
void fs_path_free(struct fs_path *p);

/* Go's FileMode.String() of a stat mode, e.g. "drwxr-xr-x"; out >= 24 bytes. */
#define FS_PERM_STR_MAX 24
void fs_perm_string(mode_t mode, char *out);

/*
 * EntryInfo of name relative to dirfd (not following a final symlink).
 * shown is the path reported to the client; real is a path naming the same
 * entry from which a symlink target and xattrs are read. -ENOENT when the
 * entry does not exist; err names the path.
 */
int fs_entry_at(struct fs_mem *m, int dirfd, const char *name, const char *shown,
		const char *real, Filesystem__EntryInfo *out, struct herr *err);

/*
 * Appends to *entries (grown with fs_mem) every entry below the directory
 * real (already symlink-resolved), up to depth levels, depth-first in byte
 * order of names, reporting paths under shown. Symlinked subdirectories are
 * listed, not entered; entries that vanish during the walk are skipped.
 */
#define FS_LIST_MAX_ENTRIES 100000
int fs_list_dir(struct fs_mem *m, const char *shown, const char *real, unsigned depth,
		Filesystem__EntryInfo ***entries, size_t *n, struct herr *err);

/*
 * rm -rf of path without following any symlink inside it (a symlink is
 * removed, never its target). 0 when path does not exist.
 */
int fs_remove_all(const char *path, struct herr *err);

/* Filesystem magic numbers refused for watching unless allowed. */
bool fs_is_network_fs(long f_type);

/*
 * Watchers: one thread reads every watcher's inotify descriptor through
 * epoll. Each watcher keeps its own bounded queue of packed FilesystemEvent
 * messages; a watcher whose queue overflows (or whose kernel queue
 * overflows) fails with an error and stops collecting.
 */
#define FS_WATCH_QUEUE_MAX_EVENTS 10000
#define FS_WATCH_QUEUE_MAX_BYTES (16u << 20)
#define FS_WATCH_ID_LEN 21 /* "w" + 20 of [a-z0-9] */

struct fs_watcher;

struct fs_watch_opts {
	const char *path; /* absolute, an existing directory */
	bool recursive;
	bool include_entry;
	/*
	 * Whose file-system credentials the engine takes while it handles this
	 * watcher's events (new subdirectories, entry info); NULL: the agent's.
	 */
	const struct agent_user *user;
};

/* An event as the queue hands it out: a packed Filesystem__FilesystemEvent. */
struct fs_event_blob {
	struct fs_event_blob *next;
	size_t len;
	unsigned char data[];
};

/*
 * Starts the engine thread (idempotent). Call it with the agent's own
 * credentials; fs_watcher_create starts it too when nobody did.
 */
int fs_watch_engine_start(struct herr *err);

/* Starts watching; *out holds one reference for the caller. */
int fs_watcher_create(const struct fs_watch_opts *opts, struct fs_watcher **out,
		      struct herr *err);

/* Stops watching (idempotent): no more events are queued, waiters wake. */
void fs_watcher_stop(struct fs_watcher *w);

void fs_watcher_ref(struct fs_watcher *w);
void fs_watcher_unref(struct fs_watcher *w);

/* The watcher's id, "w" + 20 [a-z0-9]. */
const char *fs_watcher_id(const struct fs_watcher *w);

/*
 * Takes every queued event (a list to free with fs_event_blobs_free).
 * Returns 0, or -EIO with err set once the watcher has failed.
 * With a timeout_ms > 0 it waits that long for an event to arrive; a
 * stopped watcher returns at once.
 */
int fs_watcher_take(struct fs_watcher *w, int timeout_ms, struct fs_event_blob **events,
		    struct herr *err);
bool fs_watcher_stopped(struct fs_watcher *w);
/* True once events were lost: the next take after the queue drains fails. */
bool fs_watcher_failed(struct fs_watcher *w);
void fs_event_blobs_free(struct fs_event_blob *list);

/* Registry of polling watchers by id (CreateWatcher/GetWatcherEvents). */
int fs_registry_add(struct fs_watcher *w, struct herr *err);
struct fs_watcher *fs_registry_get(const char *id);  /* referenced, or NULL */
struct fs_watcher *fs_registry_take(const char *id); /* removed, or NULL */
#define FS_REGISTRY_MAX 256

#endif
