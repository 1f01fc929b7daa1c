/*
 * Safe extraction of COPY archives into a layer (see extract.h).
 *
 * Why this is safe: the layer is a fresh directory only this code writes
 * to, and every parent folder is reached with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV), so a symlink the archive planted
 * earlier can never be walked through (the "symlink, then a file through
 * it" attack fails with ELOOP), and ".." or absolute names are refused
 * before any syscall. The final component is created with O_EXCL |
 * O_NOFOLLOW (after removing a non-folder of the same name), so a planted
 * symlink is replaced, never written through. Hard links name another
 * member of the same archive, resolved the same way, so they cannot point
 * at host files. Symlinks themselves are stored as text and only ever
 * resolved later inside the sandbox's own root.
 *
 * Image layers (o->image_layer) use the same walk: their whiteouts become
 * a character device 0/0 or an opaque mark made through a folder fd
 * reached the same safe way, so an entry such as "a/.wh.b" where "a" is a
 * planted symlink fails instead of marking a host folder.
 */
#include "extract.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "cleanup.h"
#include "log.h"

#define RESOLVE_SAFE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | \
		      RESOLVE_NO_XDEV)

static int open_beneath(int root, const char *path, int flags)
{
	struct open_how how = { .flags = (uint64_t)(flags | O_CLOEXEC),
				.resolve = RESOLVE_SAFE };

	if (!*path)
		path = ".";
	return (int)syscall(SYS_openat2, root, path, &how, sizeof(how));
}

int tx_open_beneath(int root, const char *path, int flags)
{
	return open_beneath(root, path, flags);
}

int tx_clean_path(const char *in, char *out, size_t cap, struct herr *err)
{
	size_t o = 0;
	const char *p = in;

	if (in[0] == '/')
		return herr_set(err, -EINVAL, "archive entry '%.200s': absolute paths are "
				"not allowed", in);
	while (*p) {
		const char *end = strchrnul(p, '/');
		size_t n = (size_t)(end - p);

		if (n == 2 && p[0] == '.' && p[1] == '.')
			return herr_set(err, -EINVAL, "archive entry '%.200s': '..' is not "
					"allowed", in);
		if (n > 0 && !(n == 1 && p[0] == '.')) {
			if (o + n + 2 > cap)
				return herr_set(err, -ENAMETOOLONG, "archive entry '%.200s': "
						"path too long", in);
			if (o)
				out[o++] = '/';
			memcpy(out + o, p, n);
			o += n;
		}
		p = *end ? end + 1 : end;
	}
	out[o] = '\0';
	return 0;
}

static bool has_glob(const char *s)
{
	return strpbrk(s, "*?[{") != NULL;
}

/* The fixed folder part of a glob: "src/x*.py" gives "src", "x*" gives "". */
static void glob_prefix(const char *src, char *out)
{
	const char *g = strpbrk(src, "*?[{");
	const char *slash = g;

	while (slash > src && *slash != '/')
		slash--;
	size_t n = (slash > src) ? (size_t)(slash - src) : 0;
	memcpy(out, src, n);
	out[n] = '\0';
}

int tx_map_path(const char *src, const char *dest, const char *member, int is_dir,
		char *out, size_t cap, struct herr *err)
{
	char prefix[TX_PATH_MAX], d[TX_PATH_MAX], joined[2 * TX_PATH_MAX + 2];
	const char *rel;
	size_t pl;
	bool dest_is_dir = dest[0] && dest[strlen(dest) - 1] == '/';
	int rc;

	if (dest[0] != '/')
		return herr_set(err, -EINVAL, "COPY destination '%.200s' must be absolute",
				dest);
	rc = tx_clean_path(dest + 1, d, sizeof(d), err);
	if (rc < 0)
		return herr_wrap(err, "COPY destination");
	if (has_glob(src)) {
		char tmp[TX_PATH_MAX];

		rc = tx_clean_path(src, tmp, sizeof(tmp), err);
		if (rc < 0)
			return rc;
		glob_prefix(tmp, prefix);
		dest_is_dir = true;
	} else {
		rc = tx_clean_path(src, prefix, sizeof(prefix), err);
		if (rc < 0)
			return herr_wrap(err, "COPY source");
	}
	pl = strlen(prefix);
	if (pl == 0)
		rel = member;
	else if (strcmp(member, prefix) == 0)
		rel = "";
	else if (strncmp(member, prefix, pl) == 0 && member[pl] == '/')
		rel = member + pl + 1;
	else
		return 0;
	if (!*rel && !is_dir && dest_is_dir) {
		const char *base = strrchr(member, '/');
		rel = base ? base + 1 : member;
	}
	if (!*rel)
		snprintf(joined, sizeof(joined), "%s", d);
	else
		snprintf(joined, sizeof(joined), "%s%s%s", d, *d ? "/" : "", rel);
	if (strlen(joined) >= cap)
		return herr_set(err, -ENAMETOOLONG, "archive entry '%.200s': target path too "
				"long", member);
	strcpy(out, joined);
	return 1;
}

/* Owner and mode of the folder at rel in the topmost lower layer having it. */
static bool lower_dir_stat(const struct tx_opts *o, const char *rel, struct stat *st)
{
	for (size_t i = 0; i < o->n_lower; i++) {
		_cleanup_close_ int fd = open_beneath(o->lower_fds[i], rel, O_PATH | O_NOFOLLOW);

		if (fd >= 0 && fstat(fd, st) == 0 && S_ISDIR(st->st_mode))
			return true;
	}
	return false;
}

/* Creates every missing folder of rel (excluded the last component). */
static int make_parents(int layer, const char *rel, const struct tx_opts *o,
			struct herr *err)
{
	char path[TX_PATH_MAX];

	snprintf(path, sizeof(path), "%s", rel);
	for (char *s = strchr(path, '/'); s; s = strchr(s + 1, '/')) {
		struct stat st;
		_cleanup_close_ int fd = -1;

		*s = '\0';
		fd = open_beneath(layer, path, O_PATH | O_NOFOLLOW);
		if (fd < 0) {
			uid_t uid = o->uid >= 0 ? (uid_t)o->uid : 0;
			gid_t gid = o->gid >= 0 ? (gid_t)o->gid : 0;
			mode_t mode = 0755;
			char *name = strrchr(path, '/');
			_cleanup_close_ int parent = -1;

			if (lower_dir_stat(o, path, &st)) {
				uid = st.st_uid;
				gid = st.st_gid;
				mode = st.st_mode & 07777;
			}
			if (name)
				*name = '\0';
			parent = open_beneath(layer, name ? path : "", O_PATH | O_DIRECTORY);
			if (name)
				*name = '/';
			if (parent < 0)
				return herr_sys(err, -errno, "archive entry '%.200s': "
						"folder '%.200s'", rel, path);
			name = name ? name + 1 : path;
			if (mkdirat(parent, name, 0700) < 0 && errno != EEXIST)
				return herr_sys(err, -errno, "creating folder '%.200s'", path);
			if (fchownat(parent, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ||
			    fchmodat(parent, name, mode, 0) < 0)
				return herr_sys(err, -errno, "setting owner of '%.200s'", path);
		} else if (fstat(fd, &st) < 0 || !S_ISDIR(st.st_mode)) {
			return herr_set(err, -ENOTDIR, "archive entry '%.200s': '%.200s' is not a "
					"folder", rel, path);
		}
		*s = '/';
	}
	return 0;
}

/* Opens the parent folder of rel beneath the layer; *name is its last part. */
static int open_parent(int layer, const char *rel, const char **name, struct herr *err)
{
	char parent[TX_PATH_MAX];
	const char *slash = strrchr(rel, '/');
	int fd;

	if (!slash) {
		*name = rel;
		parent[0] = '\0';
	} else {
		memcpy(parent, rel, (size_t)(slash - rel));
		parent[slash - rel] = '\0';
		*name = slash + 1;
	}
	fd = open_beneath(layer, parent, O_PATH | O_DIRECTORY);
	if (fd < 0)
		return herr_sys(err, -errno, "archive entry '%.200s': its folder cannot be "
				"reached without following a link", rel);
	return fd;
}

/* Removes whatever non-folder sits at name, so O_EXCL creation succeeds. */
static int clear_slot(int parent, const char *name, const char *rel, struct herr *err)
{
	struct stat st;

	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : herr_sys(err, -errno, "stat '%.200s'", rel);
	if (S_ISDIR(st.st_mode))
		return herr_set(err, -EISDIR, "archive entry '%.200s' would replace a folder",
				rel);
	if (unlinkat(parent, name, 0) < 0)
		return herr_sys(err, -errno, "replacing '%.200s'", rel);
	return 0;
}

struct tx_ctx {
	struct archive *a;
	int layer;
	const struct tx_opts *o;
	uint64_t total;
};

/* Owner of an entry: the archive's for image layers, else the COPY's. */
static void entry_owner(const struct tx_ctx *c, struct archive_entry *e, uid_t *uid,
			gid_t *gid)
{
	if (c->o->image_layer) {
		*uid = (uid_t)archive_entry_uid(e);
		*gid = (gid_t)archive_entry_gid(e);
		return;
	}
	*uid = c->o->uid >= 0 ? (uid_t)c->o->uid : 0;
	*gid = c->o->gid >= 0 ? (gid_t)c->o->gid : 0;
}

/*
 * Counts size bytes against the archive's total. Every regular file name,
 * hard links included, is read whole when the layer is hashed, so the
 * total bounds that work, not only the bytes written to disk.
 */
static int charge(struct tx_ctx *c, int64_t size, struct herr *err)
{
	if (size < 0)
		size = 0;
	c->total += (uint64_t)size;
	if (c->total > c->o->max_total_bytes)
		return herr_set(err, -EFBIG, "archive holds more than %llu bytes",
				(unsigned long long)c->o->max_total_bytes);
	return 0;
}

static int write_data(struct tx_ctx *c, int fd, int64_t size, const char *rel,
		      struct herr *err)
{
	const void *buf;
	size_t len;
	int64_t off;
	uint64_t file = 0;
	int r;

	while ((r = archive_read_data_block(c->a, &buf, &len, &off)) == ARCHIVE_OK) {
		file += len;
		if (file > c->o->max_file_bytes)
			return herr_set(err, -EFBIG, "archive entry '%.200s' is larger than %llu "
					"bytes", rel, (unsigned long long)c->o->max_file_bytes);
		/* The total was charged with the entry's size (put_file); a block
		 * past that size would write more than was charged. */
		if (off < 0 || (uint64_t)off + len > (uint64_t)size)
			return herr_set(err, -EFBIG, "archive entry '%.200s' has data past its "
					"size", rel);
		if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len)
			return herr_sys(err, -errno, "writing '%.200s'", rel);
	}
	if (r != ARCHIVE_EOF)
		return herr_set(err, -EINVAL, "archive entry '%.200s': %s", rel,
				archive_error_string(c->a));
	return 0;
}

static int put_file(struct tx_ctx *c, struct archive_entry *e, const char *rel,
		    struct herr *err)
{
	const char *name;
	_cleanup_close_ int parent = open_parent(c->layer, rel, &name, err);
	_cleanup_close_ int fd = -1;
	mode_t mode = c->o->mode >= 0 ? (mode_t)c->o->mode :
		(mode_t)(archive_entry_perm(e) & 07777);
	uid_t uid;
	gid_t gid;
	int rc;

	if (parent < 0)
		return parent;
	if (archive_entry_size(e) > (int64_t)c->o->max_file_bytes)
		return herr_set(err, -EFBIG, "archive entry '%.200s' is larger than %llu bytes",
				rel, (unsigned long long)c->o->max_file_bytes);
	/* The size, not the bytes the archive carries: a sparse entry of a few
	 * bytes can claim gigabytes, which the layer hash then reads back. */
	rc = charge(c, archive_entry_size(e), err);
	if (rc < 0)
		return rc;
	rc = clear_slot(parent, name, rel, err);
	if (rc < 0)
		return rc;
	fd = openat(parent, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return herr_sys(err, -errno, "creating '%.200s'", rel);
	rc = write_data(c, fd, archive_entry_size(e), rel, err);
	if (rc < 0)
		return rc;
	/* Sparse tails: the size is the entry's, not the last block's end. */
	entry_owner(c, e, &uid, &gid);
	if (ftruncate(fd, archive_entry_size(e)) < 0 || fchown(fd, uid, gid) < 0 ||
	    fchmod(fd, mode) < 0)
		return herr_sys(err, -errno, "finishing '%.200s'", rel);
	return 0;
}

static int put_dir(struct tx_ctx *c, struct archive_entry *e, const char *rel,
		   struct herr *err)
{
	const char *name;
	_cleanup_close_ int parent = -1;
	struct stat st;
	mode_t mode = (mode_t)(archive_entry_perm(e) & 07777);
	uid_t uid;
	gid_t gid;

	if (!*rel)
		return 0; /* the layer root keeps its own metadata */
	/* A COPY keeps its folders usable by their owner; an image is exact. */
	if (!c->o->image_layer)
		mode |= 0700;
	entry_owner(c, e, &uid, &gid);
	parent = open_parent(c->layer, rel, &name, err);
	if (parent < 0)
		return parent;
	if (mkdirat(parent, name, 0700) < 0) {
		if (errno != EEXIST)
			return herr_sys(err, -errno, "creating folder '%.200s'", rel);
		if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
			return herr_set(err, -EEXIST, "archive entry '%.200s': a non-folder of "
					"that name exists", rel);
	}
	if (fchownat(parent, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ||
	    fchmodat(parent, name, mode, 0) < 0)
		return herr_sys(err, -errno, "setting up folder '%.200s'", rel);
	return 0;
}

static int put_symlink(struct tx_ctx *c, struct archive_entry *e, const char *rel,
		       struct herr *err)
{
	const char *name, *target = archive_entry_symlink(e);
	_cleanup_close_ int parent = open_parent(c->layer, rel, &name, err);
	uid_t uid;
	gid_t gid;
	int rc;

	if (parent < 0)
		return parent;
	entry_owner(c, e, &uid, &gid);
	if (!target || !*target || strlen(target) >= TX_PATH_MAX)
		return herr_set(err, -EINVAL, "archive entry '%.200s': bad symlink target", rel);
	rc = clear_slot(parent, name, rel, err);
	if (rc < 0)
		return rc;
	if (symlinkat(target, parent, name) < 0)
		return herr_sys(err, -errno, "creating symlink '%.200s'", rel);
	if (fchownat(parent, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
		return herr_sys(err, -errno, "owner of symlink '%.200s'", rel);
	return 0;
}

/* A hard link to another member already extracted from this archive. */
static int put_hardlink(struct tx_ctx *c, const char *link, const char *rel,
			struct herr *err)
{
	char clean[TX_PATH_MAX], target[TX_PATH_MAX];
	const char *name, *tname;
	_cleanup_close_ int parent = -1, tparent = -1;
	struct stat st;
	int rc = tx_clean_path(link, clean, sizeof(clean), err);

	if (rc < 0)
		return herr_wrap(err, "hard link '%.200s'", rel);
	rc = tx_map_path(c->o->src, c->o->dest, clean, 0, target, sizeof(target), err);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return herr_set(err, -EINVAL, "hard link '%.200s' points at '%.200s', which "
				"is not part of this copy", rel, link);
	tparent = open_parent(c->layer, target, &tname, err);
	if (tparent < 0)
		return tparent;
	parent = open_parent(c->layer, rel, &name, err);
	if (parent < 0)
		return parent;
	/* A link costs no disk but is hashed like a copy: a big file linked
	 * many times would make the layer hash read it over and over. */
	if (fstatat(tparent, tname, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return herr_sys(err, -errno, "hard link '%.200s' -> '%.200s'", rel, link);
	rc = charge(c, S_ISREG(st.st_mode) ? st.st_size : 0, err);
	if (rc < 0)
		return rc;
	rc = clear_slot(parent, name, rel, err);
	if (rc < 0)
		return rc;
	/* No AT_SYMLINK_FOLLOW: a symlink target is linked as the link itself. */
	if (linkat(tparent, tname, parent, name, 0) < 0)
		return herr_sys(err, -errno, "hard link '%.200s' -> '%.200s'", rel, link);
	return 0;
}

#define WH_PREFIX ".wh."
#define WH_OPAQUE ".wh..wh..opq"

/* ".wh..wh..opq" in a folder: the folder hides every lower entry. */
static int put_opaque(struct tx_ctx *c, const char *dir, struct herr *err)
{
	_cleanup_close_ int fd = open_beneath(c->layer, dir, O_RDONLY | O_DIRECTORY);

	if (fd < 0)
		return herr_sys(err, -errno, "opaque mark in '%.200s': folder cannot be reached "
				"without following a link", *dir ? dir : "/");
	if (fsetxattr(fd, "user.overlay.opaque", "y", 1, 0) < 0)
		return herr_sys(err, -errno, "marking '%.200s' opaque", *dir ? dir : "/");
	return 0;
}

/* ".wh.name": name is deleted by this layer (overlay's 0/0 character device). */
static int put_whiteout(struct tx_ctx *c, const char *rel, struct herr *err)
{
	const char *name;
	_cleanup_close_ int parent = open_parent(c->layer, rel, &name, err);
	int rc;

	if (parent < 0)
		return parent;
	rc = clear_slot(parent, name, rel, err);
	if (rc < 0)
		return rc;
	if (mknodat(parent, name, S_IFCHR | 0600, makedev(0, 0)) < 0)
		return herr_sys(err, -errno, "whiteout '%.200s'", rel);
	return 0;
}

/*
 * Handles an image entry whose last part starts with ".wh.": 1 when it was
 * a whiteout (done), 0 when not one, negative on error. clean is the
 * member's cleaned path, which for image layers is also its layer path.
 */
static int image_whiteout(struct tx_ctx *c, const char *clean, struct herr *err)
{
	char dir[TX_PATH_MAX], target[TX_PATH_MAX];
	const char *slash = strrchr(clean, '/');
	const char *base = slash ? slash + 1 : clean;
	size_t dl = slash ? (size_t)(slash - clean) : 0;
	int rc;

	if (strncmp(base, WH_PREFIX, strlen(WH_PREFIX)) != 0)
		return 0;
	memcpy(dir, clean, dl);
	dir[dl] = '\0';
	if (dl) {
		if ((size_t)snprintf(target, sizeof(target), "%s/x", dir) >= sizeof(target))
			return herr_set(err, -ENAMETOOLONG, "'%s': name too long", clean);
		rc = make_parents(c->layer, target, c->o, err);
		if (rc < 0)
			return rc;
	}
	if (strcmp(base, WH_OPAQUE) == 0) {
		rc = put_opaque(c, dir, err);
		return rc < 0 ? rc : 1;
	}
	base += strlen(WH_PREFIX);
	/* ".wh..wh.*" other than the opaque mark are aufs internals: no meaning. */
	if (strncmp(base, WH_PREFIX, strlen(WH_PREFIX)) == 0) {
		log_info("template", NULL, "%s: aufs entry '%.200s' skipped",
			 c->o->what ? c->o->what : "layer", clean);
		return 1;
	}
	if (!*base || !strcmp(base, ".") || !strcmp(base, ".."))
		return herr_set(err, -EINVAL, "archive entry '%.200s': bad whiteout", clean);
	snprintf(target, sizeof(target), "%s%s%s", dir, dl ? "/" : "", base);
	rc = put_whiteout(c, target, err);
	return rc < 0 ? rc : 1;
}

static int put_entry(struct tx_ctx *c, struct archive_entry *e, struct herr *err)
{
	char clean[TX_PATH_MAX], rel[TX_PATH_MAX];
	const char *raw = archive_entry_pathname(e);
	mode_t type = archive_entry_filetype(e);
	int rc;

	if (!raw)
		return herr_set(err, -EINVAL, "archive entry without a name");
	rc = tx_clean_path(raw, clean, sizeof(clean), err);
	if (rc < 0)
		return rc;
	if (c->o->image_layer) {
		rc = image_whiteout(c, clean, err);
		if (rc != 0)
			return rc < 0 ? rc : 0;
		if (archive_entry_hardlink(e) == NULL && type != AE_IFREG &&
		    type != AE_IFDIR && type != AE_IFLNK) {
			/* The runtime gives every sandbox its own /dev. */
			log_warn("template", NULL, "%s: '%.200s' skipped: devices, fifos and "
				 "sockets are not imported", c->o->what ? c->o->what : "layer",
				 clean);
			return 0;
		}
	}
	if (archive_entry_hardlink(e) == NULL && type != AE_IFREG && type != AE_IFDIR &&
	    type != AE_IFLNK)
		return herr_set(err, -EPERM, "archive entry '%.200s': devices, fifos and "
				"sockets are not allowed", raw);
	rc = tx_map_path(c->o->src, c->o->dest, clean, type == AE_IFDIR, rel, sizeof(rel),
			 err);
	if (rc <= 0)
		return rc;
	if (*rel) {
		rc = make_parents(c->layer, rel, c->o, err);
		if (rc < 0)
			return rc;
	}
	if (archive_entry_hardlink(e))
		return put_hardlink(c, archive_entry_hardlink(e), rel, err);
	if (!*rel && type != AE_IFDIR)
		return herr_set(err, -EINVAL, "archive entry '%.200s' would replace '/'", raw);
	switch (type) {
	case AE_IFDIR:
		return put_dir(c, e, rel, err);
	case AE_IFLNK:
		return put_symlink(c, e, rel, err);
	default:
		return put_file(c, e, rel, err);
	}
}

/* Every entry of the opened archive; their number, or a negative error. */
static int put_entries(struct tx_ctx *c, struct herr *err)
{
	struct archive_entry *e;
	unsigned n = 0;
	int rc, r;

	while ((r = archive_read_next_header(c->a, &e)) == ARCHIVE_OK) {
		if (++n > c->o->max_entries)
			return herr_set(err, -EFBIG, "archive holds more than %u entries",
					c->o->max_entries);
		rc = put_entry(c, e, err);
		if (rc < 0)
			return rc;
	}
	if (r != ARCHIVE_EOF)
		return herr_set(err, -EINVAL, "archive: %s", archive_error_string(c->a));
	return (int)n;
}

int tx_extract(int archive_fd, int layer_fd, const struct tx_opts *o, struct herr *err)
{
	struct tx_ctx c = { .layer = layer_fd, .o = o };
	int rc;

	c.a = archive_read_new();
	if (!c.a)
		return herr_set(err, -ENOMEM, "out of memory");
	/* Only tar, plain or gzip: the SDK sends nothing else. */
	archive_read_support_filter_gzip(c.a);
	/* Image layers may be zstd (OCI tar+zstd); libarchive decodes it in
	 * process, unlike filters that run an outside program. */
	if (o->image_layer)
		archive_read_support_filter_zstd(c.a);
	archive_read_support_format_tar(c.a);
	archive_read_support_format_gnutar(c.a);
	if (archive_read_open_fd(c.a, archive_fd, 64 * 1024) != ARCHIVE_OK)
		rc = herr_set(err, -EINVAL, "archive: %s", archive_error_string(c.a));
	else
		rc = put_entries(&c, err);
	archive_read_free(c.a);
	return rc;
}
