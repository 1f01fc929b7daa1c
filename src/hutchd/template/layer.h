/*
 * The layer store: <data_dir>/layers/<sha256>, read-only folders shared by
 * every sandbox and build that uses them (mounted idmapped and read-only by
 * the runtime, never copied per sandbox). A layer's name is the hash of its
 * content (names, types, modes, owners, sizes, file bytes, link targets,
 * overlay whiteouts and opaque marks), so the same change made twice is
 * stored once. A layer is filled in a private temporary folder and renamed
 * into place only when complete: a name in the store is always whole.
 */
#ifndef HUTCH_TPL_LAYER_H
#define HUTCH_TPL_LAYER_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

#define LAYER_HASH_HEX 65

/* Creates <dir>/layers (and removes leftovers of interrupted work). */
int layer_store_init(const char *data_dir, struct herr *err);

/* A fresh temporary folder under layers/ to fill; path receives it. */
int layer_tmp_create(const char *data_dir, char *path, size_t cap, struct herr *err);

/* Hashes a folder's content (sorted walk, symlinks never followed). */
int layer_tree_hash(int dir_fd, char out[LAYER_HASH_HEX], struct herr *err);

/* True when the tree holds nothing. */
bool layer_tree_empty(int dir_fd);

/*
 * Hashes tmp_path and renames it to layers/<hash> (or drops it when that
 * layer exists already). hash receives the name.
 */
int layer_commit(const char *data_dir, const char *tmp_path, char hash[LAYER_HASH_HEX],
		 struct herr *err);

/* Host path of a stored layer; -ENOENT when missing. */
int layer_path(const char *data_dir, const char *hash, char *out, size_t cap,
	       struct herr *err);

/*
 * Registers an existing folder (the base rootfs) as a layer without copying:
 * layers/<id> becomes a symlink to it. The id is derived from the folder's
 * identity (path, inode, change time of its marker file), not its bytes:
 * hashing 550 MB at every start would cost minutes.
 */
int layer_register_external(const char *data_dir, const char *dir, const char *marker,
			    char hash[LAYER_HASH_HEX], struct herr *err);

/*
 * The store lock (layers/.lock, flock): work that makes layers not yet
 * named by a template (a build, an import, a pull) holds it shared until
 * its result is registered; GC and the start-up removal of leftover
 * temporary folders take it exclusive without waiting, and skip their
 * work when a holder exists. Returns the fd to close when done.
 */
int layer_store_hold(const char *data_dir, struct herr *err);
/* -EBUSY when someone holds the store; else the fd of the exclusive lock. */
int layer_store_lock_all(const char *data_dir, struct herr *err);

/* Removes a tree without following symlinks or leaving the file system. */
int layer_remove_tree(int parent_fd, const char *name, struct herr *err);

#endif
