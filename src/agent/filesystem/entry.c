/*
 * EntryInfo as envd reports it: lstat of the entry, symlink rules (type and
 * mode of the target, resolved absolute target), Go-style permission string,
 * owner and group names, nanosecond mtime and user.e2b.* metadata. Also the
 * small helpers the rest of the service builds on (message memory, paths).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "cleanup.h"
#include "fs_internal.h"
#include "users.h"

struct fs_mem_block {
	struct fs_mem_block *next;
	max_align_t data[];
};

void *fs_mem_alloc(struct fs_mem *m, size_t n)
{
	struct fs_mem_block *b;

	if (m->ctx) {
		void *p = rpc_alloc(m->ctx, n);
		memset(p, 0, n);
		return p;
	}
	b = calloc(1, sizeof(*b) + n);
	if (!b)
		abort();
	b->next = m->blocks;
	m->blocks = b;
	return b->data;
}

char *fs_mem_strdup(struct fs_mem *m, const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = fs_mem_alloc(m, n);

	memcpy(p, s, n);
	return p;
}

void fs_mem_release(struct fs_mem *m)
{
	while (m->blocks) {
		struct fs_mem_block *next = m->blocks->next;
		free(m->blocks);
		m->blocks = next;
	}
}

static void fs_path_reserve(struct fs_path *p, size_t need)
{
	size_t cap = p->cap ? p->cap : 256;

	if (need <= p->cap)
		return;
	while (cap < need)
		cap *= 2;
	p->buf = realloc(p->buf, cap);
	if (!p->buf)
		abort();
	p->cap = cap;
}

int fs_path_set(struct fs_path *p, const char *s)
{
	size_t n = strlen(s);

	fs_path_reserve(p, n + 1);
	memcpy(p->buf, s, n + 1);
	p->len = n;
	return 0;
}

size_t fs_path_push(struct fs_path *p, const char *name)
{
	size_t old = p->len;
	size_t n = strlen(name);
	bool slash = p->len == 0 || p->buf[p->len - 1] != '/';

	fs_path_reserve(p, p->len + n + 2);
	if (slash)
		p->buf[p->len++] = '/';
	memcpy(p->buf + p->len, name, n + 1);
	p->len += n;
	return old;
}

void fs_path_pop(struct fs_path *p, size_t old_len)
{
	p->len = old_len;
	p->buf[old_len] = '\0';
}

void fs_path_free(struct fs_path *p)
{
	free(p->buf);
	p->buf = NULL;
	p->len = p->cap = 0;
}

/*
 * Go's FileMode keeps the type and special bits as letters before the
 * nine permission characters, in the fixed order "dalTLDpSugct?"; a plain
 * file has none and gets a single '-'. Of those, Linux stat can produce
 * d (dir), L (symlink), D (device), p (fifo), S (socket), u (setuid),
 * g (setgid), c (char device, with D) and t (sticky).
 */
void fs_perm_string(mode_t mode, char *out)
{
	static const char rwx[] = "rwxrwxrwx";
	size_t w = 0;

	if (S_ISDIR(mode))
		out[w++] = 'd';
	if (S_ISLNK(mode))
		out[w++] = 'L';
	if (S_ISBLK(mode) || S_ISCHR(mode))
		out[w++] = 'D';
	if (S_ISFIFO(mode))
		out[w++] = 'p';
	if (S_ISSOCK(mode))
		out[w++] = 'S';
	if (mode & S_ISUID)
		out[w++] = 'u';
	if (mode & S_ISGID)
		out[w++] = 'g';
	if (S_ISCHR(mode))
		out[w++] = 'c';
	if (mode & S_ISVTX)
		out[w++] = 't';
	if (w == 0)
		out[w++] = '-';
	for (int i = 0; i < 9; i++)
		out[w++] = (mode & (1u << (8 - i))) ? rwx[i] : '-';
	out[w] = '\0';
}

static Filesystem__FileType file_type_of(mode_t mode)
{
	if (S_ISREG(mode))
		return FILESYSTEM__FILE_TYPE__FILE_TYPE_FILE;
	if (S_ISDIR(mode))
		return FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY;
	return FILESYSTEM__FILE_TYPE__FILE_TYPE_UNSPECIFIED;
}

/*
 * Metadata values are shown as JSON strings; only printable ASCII (the rule
 * /files applies when writing them) is passed on, so a foreign binary xattr
 * can never produce invalid UTF-8 in a response.
 */
static bool printable_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

#define XATTR_PREFIX "user.e2b."

/* Reads the list of xattr names into a malloc'd buffer; NULL when none. */
static char *xattr_names(const char *path, ssize_t *len)
{
	for (int tries = 0; tries < 4; tries++) {
		ssize_t n = llistxattr(path, NULL, 0);
		char *buf;

		if (n <= 0)
			return NULL;
		buf = malloc(n);
		if (!buf)
			return NULL;
		*len = llistxattr(path, buf, n);
		if (*len >= 0)
			return buf;
		free(buf);
		if (errno != ERANGE)
			return NULL;
	}
	return NULL;
}

static char *xattr_value(const char *path, const char *name, ssize_t *len)
{
	for (int tries = 0; tries < 4; tries++) {
		ssize_t n = lgetxattr(path, name, NULL, 0);
		char *buf;

		if (n < 0)
			return NULL;
		buf = malloc(n + 1);
		if (!buf)
			return NULL;
		*len = lgetxattr(path, name, buf, n);
		if (*len >= 0) {
			buf[*len] = '\0';
			return buf;
		}
		free(buf);
		if (errno != ERANGE)
			return NULL;
	}
	return NULL;
}

/*
 * Metadata is best effort like upstream: a filesystem without xattrs or an
 * entry that vanished simply has none.
 */
static void read_metadata(struct fs_mem *m, const char *path, Filesystem__EntryInfo *out)
{
	ssize_t len = 0;
	_cleanup_free_ char *names = xattr_names(path, &len);
	size_t count = 0, cap = 0;
	const size_t plen = strlen(XATTR_PREFIX);

	if (!names)
		return;
	for (ssize_t off = 0; off < len; off += strlen(names + off) + 1)
		if (strncmp(names + off, XATTR_PREFIX, plen) == 0 && names[off + plen])
			cap++;
	if (cap == 0)
		return;
	out->metadata = fs_mem_alloc(m, cap * sizeof(*out->metadata));
	for (ssize_t off = 0; off < len && count < cap; off += strlen(names + off) + 1) {
		const char *name = names + off;
		ssize_t vlen = 0;
		_cleanup_free_ char *value = NULL;
		Filesystem__EntryInfo__MetadataEntry *e;

		if (strncmp(name, XATTR_PREFIX, plen) != 0 || !name[plen])
			continue;
		if (!printable_ascii(name + plen, strlen(name + plen)))
			continue;
		value = xattr_value(path, name, &vlen);
		if (!value || !printable_ascii(value, vlen))
			continue;
		e = fs_mem_alloc(m, sizeof(*e));
		filesystem__entry_info__metadata_entry__init(e);
		e->key = fs_mem_strdup(m, name + plen);
		e->value = fs_mem_strdup(m, value);
		out->metadata[count++] = e;
	}
	out->n_metadata = count;
}

static const char *base_name(const char *path)
{
	const char *end = path + strlen(path);
	const char *p;

	while (end > path + 1 && end[-1] == '/')
		end--;
	if (end == path + 1 && path[0] == '/')
		return "/";
	for (p = end; p > path && p[-1] != '/'; p--)
		;
	return p;
}

/* Name of the entry: the last component of shown, without trailing slashes. */
static char *entry_name(struct fs_mem *m, const char *shown)
{
	const char *b = base_name(shown);
	size_t n = strcspn(b, "/");
	char *out;

	if (strcmp(b, "/") == 0)
		return fs_mem_strdup(m, "/");
	out = fs_mem_alloc(m, n + 1);
	memcpy(out, b, n);
	return out;
}

/*
 * A symlink is described by what it points at: realpath() resolves the
 * whole chain to an absolute path. When that fails (broken link, loop) the
 * target is the link itself and the type stays UNSPECIFIED, which the SDK
 * drops from listings, as upstream does.
 */
static void fill_symlink(struct fs_mem *m, const char *shown, const char *real,
			 Filesystem__EntryInfo *out)
{
	_cleanup_free_ char *target = realpath(real, NULL);
	struct stat st;

	out->_symlink_target_case = FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET_SYMLINK_TARGET;
	if (!target || stat(target, &st) < 0) {
		out->symlink_target = fs_mem_strdup(m, target ? target : shown);
		out->type = FILESYSTEM__FILE_TYPE__FILE_TYPE_UNSPECIFIED;
		out->mode = 0;
		return;
	}
	out->symlink_target = fs_mem_strdup(m, target);
	out->type = file_type_of(st.st_mode);
	out->mode = st.st_mode & 0777;
}

int fs_entry_at(struct fs_mem *m, int dirfd, const char *name, const char *shown,
		const char *real, Filesystem__EntryInfo *out, struct herr *err)
{
	struct stat st;
	char perm[FS_PERM_STR_MAX];
	Google__Protobuf__Timestamp *ts;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return herr_sys(err, -errno, "stat '%s'", shown);

	filesystem__entry_info__init(out);
	out->name = entry_name(m, shown);
	out->path = fs_mem_strdup(m, shown);
	out->size = st.st_size;
	if (S_ISLNK(st.st_mode)) {
		fill_symlink(m, shown, real, out);
	} else {
		out->type = file_type_of(st.st_mode);
		out->mode = st.st_mode & 0777;
	}
	fs_perm_string(st.st_mode, perm);
	out->permissions = fs_mem_strdup(m, perm);

	if (!m->have_uid || m->uid != st.st_uid) {
		users_uid_name(st.st_uid, m->uid_name, sizeof(m->uid_name));
		m->uid = st.st_uid;
		m->have_uid = true;
	}
	if (!m->have_gid || m->gid != st.st_gid) {
		users_gid_name(st.st_gid, m->gid_name, sizeof(m->gid_name));
		m->gid = st.st_gid;
		m->have_gid = true;
	}
	out->owner = fs_mem_strdup(m, m->uid_name);
	out->group = fs_mem_strdup(m, m->gid_name);

	ts = fs_mem_alloc(m, sizeof(*ts));
	google__protobuf__timestamp__init(ts);
	ts->seconds = st.st_mtim.tv_sec;
	ts->nanos = (int32_t)st.st_mtim.tv_nsec;
	out->modified_time = ts;

	read_metadata(m, real, out);
	return 0;
}

int filesystem_entry_info(struct rpc_ctx *ctx, const char *path, Filesystem__EntryInfo *out,
			  struct herr *err)
{
	struct fs_mem m = { .ctx = ctx };

	return fs_entry_at(&m, AT_FDCWD, path, path, path, out, err);
}

/* statfs magics of network and FUSE filesystems (linux/magic.h and cifs). */
bool fs_is_network_fs(long f_type)
{
	switch ((unsigned long)f_type & 0xffffffffUL) {
	case 0x6969:     /* NFS */
	case 0xFF534D42: /* CIFS */
	case 0x517B:     /* SMB */
	case 0xFE534D42: /* SMB2 */
	case 0x65735546: /* FUSE */
		return true;
	default:
		return false;
	}
}
