/*
 * Directory walks of the filesystem service: the depth-limited listing behind
 * ListDir and the rm -rf behind Remove. Both move through the tree with
 * descriptors (openat with O_NOFOLLOW) rather than re-resolving joined path
 * strings, so a symlink planted or a directory renamed during the walk can
 * never lead them outside the tree they were asked to work on.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "fs_internal.h"

/* Names of a directory, sorted by bytes like Go's WalkDir. */
struct name_list {
	char **names;
	size_t n;
	size_t cap;
};

static void name_list_free(struct name_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->names[i]);
	free(l->names);
	l->names = NULL;
	l->n = l->cap = 0;
}

static void name_list_add(struct name_list *l, const char *name)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 32;
		l->names = realloc(l->names, l->cap * sizeof(*l->names));
		if (!l->names)
			abort();
	}
	l->names[l->n] = strdup(name);
	if (!l->names[l->n])
		abort();
	l->n++;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads all names of the directory open at fd; fd stays open. */
static int read_names(int fd, struct name_list *out)
{
	int dfd = dup(fd);
	DIR *d;
	struct dirent *de;

	if (dfd < 0)
		return -errno;
	d = fdopendir(dfd);
	if (!d) {
		int e = -errno;
		close(dfd);
		return e;
	}
	rewinddir(d);
	for (;;) {
		errno = 0;
		de = readdir(d);
		if (!de)
			break;
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		name_list_add(out, de->d_name);
	}
	if (errno) {
		int e = -errno;
		closedir(d);
		return e;
	}
	closedir(d);
	if (out->n > 1)
		qsort(out->names, out->n, sizeof(*out->names), cmp_names);
	return 0;
}

struct list_walk {
	struct fs_mem *mem;
	const char *root; /* the listed path as the client named it */
	struct fs_path shown;
	struct fs_path real;
	unsigned depth;
	Filesystem__EntryInfo **entries;
	size_t n;
	size_t cap;
	struct herr *err;
};

static Filesystem__EntryInfo *list_next_slot(struct list_walk *w)
{
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 64;
		Filesystem__EntryInfo **grown = fs_mem_alloc(w->mem, cap * sizeof(*grown));

		if (w->n)
			memcpy(grown, w->entries, w->n * sizeof(*grown));
		w->entries = grown;
		w->cap = cap;
	}
	return fs_mem_alloc(w->mem, sizeof(Filesystem__EntryInfo));
}

static int list_level(struct list_walk *w, int fd, unsigned level);

/*
 * Adds the entry the walk's paths end in and, if it is a real directory and
 * depth allows, its children. An entry gone by the time we look is skipped,
 * as is a directory that turned into something else before we could open it.
 */
static int add_entry(struct list_walk *w, int fd, const char *name, unsigned level)
{
	Filesystem__EntryInfo *e;
	int r;

	if (w->n >= FS_LIST_MAX_ENTRIES)
		return herr_set(w->err, -E2BIG, "more than %d entries under '%s'; list with a "
				"smaller depth", FS_LIST_MAX_ENTRIES, w->root);
	e = list_next_slot(w);
	r = fs_entry_at(w->mem, fd, name, w->shown.buf, w->real.buf, e, w->err);
	if (r == -ENOENT || r == -ENOTDIR) {
		herr_clear(w->err);
		return 0;
	}
	if (r < 0)
		return r;
	w->entries[w->n++] = e;

	if (level >= w->depth || e->type != FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY ||
	    e->_symlink_target_case == FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET_SYMLINK_TARGET)
		return 0;
	_cleanup_close_ int child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					   O_CLOEXEC);
	if (child >= 0)
		return list_level(w, child, level + 1);
	if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP)
		return herr_sys(w->err, -errno, "opening directory '%s'", w->shown.buf);
	return 0;
}

/* One entry, with the walk's paths extended by its name meanwhile. */
static int list_entry(struct list_walk *w, int fd, const char *name, unsigned level)
{
	size_t shown_old = fs_path_push(&w->shown, name);
	size_t real_old = fs_path_push(&w->real, name);
	int r = add_entry(w, fd, name, level);

	fs_path_pop(&w->shown, shown_old);
	fs_path_pop(&w->real, real_old);
	return r;
}

static int list_level(struct list_walk *w, int fd, unsigned level)
{
	_cleanup_(name_list_free) struct name_list names = { 0 };
	int r = read_names(fd, &names);

	if (r < 0)
		return herr_sys(w->err, r, "reading directory '%s'", w->shown.buf);
	for (size_t i = 0; i < names.n && r == 0; i++)
		r = list_entry(w, fd, names.names[i], level);
	return r;
}

int fs_list_dir(struct fs_mem *m, const char *shown, const char *real, unsigned depth,
		Filesystem__EntryInfo ***entries, size_t *n, struct herr *err)
{
	struct list_walk w = { .mem = m, .root = shown, .depth = depth ? depth : 1,
			       .err = err };
	_cleanup_close_ int fd = open(real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r;

	if (fd < 0)
		return herr_sys(err, -errno, "opening directory '%s'", shown);
	fs_path_set(&w.shown, shown);
	fs_path_set(&w.real, real);
	r = list_level(&w, fd, 1);
	fs_path_free(&w.shown);
	fs_path_free(&w.real);
	if (r < 0)
		return r;
	*entries = w.entries;
	*n = w.n;
	return 0;
}

/*
 * Removal. The walk holds one descriptor at a time, so tree depth is not
 * bounded by the descriptor limit or the stack: it descends with
 * openat(name, O_NOFOLLOW | O_DIRECTORY), which refuses to pass through a
 * symlink, and climbs back with openat("..") checked against the device and
 * inode recorded on the way down. If a concurrent rename moved a directory
 * we are in, ".." no longer matches and the removal stops with an error
 * instead of deleting in a place nobody asked for.
 */
struct rm_frame {
	dev_t dev;
	ino_t ino;
	char *name; /* of the child we descended into */
};

struct rm_walk {
	struct rm_frame *frames;
	size_t n;
	size_t cap;
	const char *top;
	struct herr *err;
};

static void rm_push(struct rm_walk *w, const struct stat *st, const char *name)
{
	if (w->n == w->cap) {
		w->cap = w->cap ? w->cap * 2 : 16;
		w->frames = realloc(w->frames, w->cap * sizeof(*w->frames));
		if (!w->frames)
			abort();
	}
	w->frames[w->n].dev = st->st_dev;
	w->frames[w->n].ino = st->st_ino;
	w->frames[w->n].name = strdup(name);
	if (!w->frames[w->n].name)
		abort();
	w->n++;
}

static void rm_walk_free(struct rm_walk *w)
{
	for (size_t i = 0; i < w->n; i++)
		free(w->frames[i].name);
	free(w->frames);
}

/*
 * Removes the non-directories of the directory at fd. Returns 1 and sets
 * *child to an opened subdirectory when one is found (to descend into),
 * 0 when only directories already emptied remain, or a negative errno.
 */
static int rm_scan(struct rm_walk *w, int fd, int *child, char **child_name)
{
	_cleanup_(name_list_free) struct name_list names = { 0 };
	int r = read_names(fd, &names);

	if (r < 0)
		return herr_sys(w->err, r, "removing '%s': reading a directory", w->top);
	for (size_t i = 0; i < names.n; i++) {
		const char *name = names.names[i];
		int c;

		if (unlinkat(fd, name, 0) == 0 || errno == ENOENT)
			continue;
		if (errno != EISDIR && errno != EPERM)
			return herr_sys(w->err, -errno, "removing '%s': unlinking '%s'", w->top,
					name);
		int unlink_errno = errno;
		c = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (c < 0) {
			if (errno == ENOENT)
				continue;
			/* Not a directory after all: the unlink error is the real one. */
			int e = (errno == ENOTDIR || errno == ELOOP) ? unlink_errno : errno;
			return herr_sys(w->err, -e, "removing '%s': removing '%s'", w->top, name);
		}
		*child = c;
		*child_name = strdup(name);
		if (!*child_name)
			abort();
		return 1;
	}
	return 0;
}

/* Opens ".." of fd and checks it is the directory we came from. */
static int rm_climb(struct rm_walk *w, int fd)
{
	struct rm_frame *f = &w->frames[w->n - 1];
	struct stat st;
	int parent = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (parent < 0)
		return herr_sys(w->err, -errno, "removing '%s': opening a parent", w->top);
	if (fstat(parent, &st) < 0 || st.st_dev != f->dev || st.st_ino != f->ino) {
		close(parent);
		return herr_set(w->err, -ESTALE, "removing '%s': a directory was moved during "
				"the removal; stopped", w->top);
	}
	return parent;
}

/* Empties the directory open at fd (taken over), then returns. */
static int rm_contents(struct rm_walk *w, int fd)
{
	size_t base = w->n;
	int r = 0;

	for (;;) {
		int child = -1;
		char *child_name = NULL;
		struct stat st;

		r = rm_scan(w, fd, &child, &child_name);
		if (r < 0)
			break;
		if (r == 1) {
			if (fstat(fd, &st) < 0) {
				r = herr_sys(w->err, -errno, "removing '%s': fstat", w->top);
				close(child);
				free(child_name);
				break;
			}
			rm_push(w, &st, child_name);
			free(child_name);
			close(fd);
			fd = child;
			continue;
		}
		if (w->n == base)
			break;

		/* fd is empty: climb to its parent and remove it there. */
		int parent = rm_climb(w, fd);
		if (parent < 0) {
			r = parent;
			break;
		}
		close(fd);
		fd = parent;
		w->n--;
		if (unlinkat(fd, w->frames[w->n].name, AT_REMOVEDIR) < 0 && errno != ENOENT &&
		    errno != ENOTEMPTY) {
			r = herr_sys(w->err, -errno, "removing '%s': removing directory '%s'",
				     w->top, w->frames[w->n].name);
			free(w->frames[w->n].name);
			break;
		}
		/* ENOTEMPTY: something was created meanwhile; the next scan finds it. */
		free(w->frames[w->n].name);
	}
	close(fd);
	return r < 0 ? r : 0;
}

int fs_remove_all(const char *path, struct herr *err)
{
	_cleanup_free_ char *parent_path = strdup(path);
	_cleanup_close_ int parent = -1;
	struct rm_walk w = { .top = path, .err = err };
	char *slash, *name;
	struct stat st;
	int r;

	if (!parent_path)
		abort();
	slash = strrchr(parent_path, '/');
	if (path[0] != '/' || !slash || slash[1] == '\0')
		return herr_set(err, -EINVAL, "refusing to remove '%s'", path);
	name = slash + 1;
	*slash = '\0';
	parent = open(slash == parent_path ? "/" : parent_path,
		      O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (parent < 0)
		return (errno == ENOENT || errno == ENOTDIR) ? 0 :
			herr_sys(err, -errno, "removing '%s': opening its parent", path);

	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return (errno == ENOENT || errno == ENOTDIR) ? 0 :
			herr_sys(err, -errno, "removing '%s': stat", path);
	if (!S_ISDIR(st.st_mode)) {
		if (unlinkat(parent, name, 0) < 0 && errno != ENOENT)
			return herr_sys(err, -errno, "removing '%s'", path);
		return 0;
	}

	for (int attempt = 0; attempt < 8; attempt++) {
		int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

		if (fd < 0) {
			if (errno == ENOENT)
				return 0;
			if (errno == ENOTDIR || errno == ELOOP) /* replaced meanwhile */
				return unlinkat(parent, name, 0) < 0 && errno != ENOENT ?
					herr_sys(err, -errno, "removing '%s'", path) : 0;
			return herr_sys(err, -errno, "removing '%s': opening it", path);
		}
		r = rm_contents(&w, fd);
		rm_walk_free(&w);
		w = (struct rm_walk){ .top = path, .err = err };
		if (r < 0)
			return r;
		if (unlinkat(parent, name, AT_REMOVEDIR) == 0 || errno == ENOENT)
			return 0;
		if (errno != ENOTEMPTY)
			return herr_sys(err, -errno, "removing directory '%s'", path);
	}
	return herr_set(err, -ENOTEMPTY, "removing '%s': entries keep being created in it",
			path);
}
