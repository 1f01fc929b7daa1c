/*
 * Path resolution with envd's rules, lexical cleaning and mkdir -p (paths.h).
 */
#include "paths.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"

/*
 * Folds "." and "..", drops repeated and trailing slashes, in place (the
 * result is never longer than the input). ".." at the root stays at the root;
 * a relative path keeps the leading ".." it cannot fold, and an empty result
 * becomes ".". Same results as Go's path.Clean, which envd uses.
 */
void paths_clean(char *path)
{
	int rooted = path[0] == '/';
	size_t r = 0, w = 0, dotdot;

	if (rooted) {
		w = 1;
		r = 1;
	}
	dotdot = w; /* output before this index cannot be folded by ".." */
	while (path[r]) {
		size_t end = r;

		while (path[end] && path[end] != '/')
			end++;
		size_t len = end - r;

		if (len == 0 || (len == 1 && path[r] == '.')) {
			/* empty or "." component: nothing to write */
		} else if (len == 2 && path[r] == '.' && path[r + 1] == '.') {
			if (w > dotdot) {
				/* drop the last component written */
				while (w > dotdot && path[w - 1] != '/')
					w--;
				if (w > dotdot)
					w--;
				if (w == 0 && rooted)
					w = 1;
			} else if (!rooted) {
				if (w > 0)
					path[w++] = '/';
				path[w++] = '.';
				path[w++] = '.';
				dotdot = w;
			}
		} else {
			if ((rooted && w != 1) || (!rooted && w != 0))
				path[w++] = '/';
			memmove(path + w, path + r, len);
			w += len;
		}
		r = path[end] ? end + 1 : end;
	}
	if (w == 0)
		path[w++] = '.';
	path[w] = '\0';
}

/* Writes a "/" b, cleaned, into out; -ENAMETOOLONG names the path. */
static int join_clean(const char *a, const char *b, char *out, size_t cap,
		      const char *orig, struct herr *err)
{
	int n = snprintf(out, cap, "%s%s%s", a, *a && *b ? "/" : "", b);

	if (n < 0 || (size_t)n >= cap || n >= PATH_MAX)
		return herr_set(err, -ENAMETOOLONG, "path '%.200s' is too long", orig);
	paths_clean(out);
	return 0;
}

static int resolve_tilde(const struct agent_user *user, const char *path, char *out,
			 size_t cap, struct herr *err)
{
	if (path[1] != '\0' && path[1] != '/')
		return herr_set(err, -EINVAL,
				"path '%.200s' is invalid: only '~' and '~/...' are supported, "
				"not another user's home", path);
	return join_clean(user->home, path + 1, out, cap, path, err);
}

int paths_resolve(const struct agent_user *user, const char *path, const char *workdir,
		  char *out, size_t cap, struct herr *err)
{
	if (!path || !*path) {
		if (workdir && *workdir)
			return join_clean(workdir[0] == '/' ? "" : user->home,
					  workdir, out, cap, workdir, err);
		return join_clean(user->home, "", out, cap, user->home, err);
	}
	if (path[0] == '~')
		return resolve_tilde(user, path, out, cap, err);
	if (path[0] == '/')
		return join_clean("", path, out, cap, path, err);
	return join_clean(user->home, path, out, cap, path, err);
}

/*
 * Creates name inside parent and gives it to uid:gid. The new directory is
 * opened with O_NOFOLLOW before the chown, and chowned through that fd, so if
 * sandbox code swaps it for a symlink in between, the chown can never land on
 * the symlink's target (which could be any file the agent, as root, reaches).
 * Returns an O_PATH fd of the directory (new or existing, following symlinks
 * for existing ones as mkdir -p does).
 */
static int step_into(int parent, const char *name, uid_t uid, gid_t gid)
{
	int fd;

	if (mkdirat(parent, name, 0755) == 0) {
		fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if ((uid != geteuid() || gid != getegid()) && fchown(fd, uid, gid) < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		return fd;
	}
	if (errno != EEXIST)
		return -errno;
	fd = openat(parent, name, O_PATH | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int paths_mkdir_all(const char *dir, uid_t uid, gid_t gid, struct herr *err)
{
	char path[PATH_MAX];
	_cleanup_close_ int cur = -1;
	size_t n = strlen(dir);

	if (n >= sizeof(path))
		return herr_set(err, -ENAMETOOLONG, "path '%.200s' is too long", dir);
	memcpy(path, dir, n + 1);
	cur = open(path[0] == '/' ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (cur < 0)
		return herr_sys(err, -errno, "open '/'");

	for (char *p = path; *p;) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		char *end = strchr(p, '/');
		char saved = end ? *end : '\0';
		int fd;

		if (end)
			*end = '\0';
		fd = step_into(cur, p, uid, gid);
		if (fd < 0) {
			int e = fd;
			if (e == -ENOTDIR)
				return herr_set(err, e, "path '%s' is not a directory", path);
			return herr_sys(err, e, "mkdir '%s'", path);
		}
		close(cur);
		cur = fd;
		if (end)
			*end = saved;
		p = end ? end : p + strlen(p);
	}
	return 0;
}
