/*
 * Path resolution shared by every RPC and /files, following envd's rules:
 * empty -> the default workdir if set, else the user's home; "~" and "~/x" ->
 * home-relative ("~other" is refused); absolute -> as is; other relative
 * paths -> joined to the user's home. The result is lexically cleaned
 * ("." and ".." folded, repeated slashes removed).
 */
#ifndef HUTCH_AGENT_PATHS_H
#define HUTCH_AGENT_PATHS_H

#include <stddef.h>

#include "err.h"
#include "users.h"

/* Returns 0, or -EINVAL / -ENAMETOOLONG with a message naming the path. */
int paths_resolve(const struct agent_user *user, const char *path, const char *workdir,
		  char *out, size_t cap, struct herr *err);

/* Lexical clean of an absolute path, in place. */
void paths_clean(char *path);

/*
 * mkdir -p of every missing directory up to and including dir, mode 0755,
 * each new one chowned to uid:gid. -ENOTDIR names a component that is a file.
 */
int paths_mkdir_all(const char *dir, uid_t uid, gid_t gid, struct herr *err);

#endif
