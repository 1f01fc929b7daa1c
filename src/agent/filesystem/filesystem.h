/* The filesystem.Filesystem service: stat, list, make, move, remove, watch. */
#ifndef HUTCH_AGENT_FILESYSTEM_H
#define HUTCH_AGENT_FILESYSTEM_H

#include <stddef.h>
#include <protobuf-c/protobuf-c.h>

#include "err.h"
#include "filesystem/filesystem.pb-c.h"
#include "rpc.h"

int filesystem_service_init(void);

/*
 * Fills an EntryInfo for path (lstat; symlink rules of envd), allocating from
 * the call's arena. Shared with /files, which returns entries after uploads.
 * Returns 0, -ENOENT or another negative errno with err set.
 */
int filesystem_entry_info(struct rpc_ctx *ctx, const char *path, Filesystem__EntryInfo *out,
			  struct herr *err);

#endif
