/*
 * Rewrites of CRIU image entries for a fork: a snapshot's processes restored
 * as another sandbox (see docs/snapshot.md, "Fork with memory").
 *
 * CRIU writes the id maps of the sandbox's user namespace into the images
 * (userns-<n>.img) and writes them back into the user namespace it makes at
 * restore. Restored unchanged, a fork's processes would run under the
 * source's host ids: two sandboxes sharing one id range could signal,
 * ptrace and read each other's files. So the one map extent our runtime
 * makes ("0 <slot base> 65536") gets the fork's base instead; anything else
 * in the map means images we did not make, and is refused. The UTS
 * namespace's nodename (the sandbox's hostname, its id) becomes the fork's.
 * Inet sockets bound to the source's own address (its eth0), IPv4 or IPv6
 * bound to its mapped form, are bound to the fork's instead: that address
 * does not exist in the fork's netns, and CRIU's bind() would fail the
 * restore (or, for the mapped form, leave a socket no packet reaches).
 *
 * Image layout (CRIU 4.2, criu/image.c and criu/protobuf.c): a u32 common
 * magic, a u32 magic of the image type, then entries, each a u32 length and
 * the protobuf bytes. Both files hold one entry. Everything read here is
 * checked: the images are ours, but a snapshot folder is still input.
 */
#include <dirent.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "criu/criu_ns.pb-c.h"

#include "cleanup.h"
#include "log.h"
#include "criu_images.h"
#include "rt_internal.h"

#define CRIU_COMMON_MAGIC 0x54564319u
#define CRIU_USERNS_MAGIC 0x55474906u
#define CRIU_UTSNS_MAGIC 0x54473203u
#define CRIU_FILES_MAGIC 0x56303138u
#define CRIU_FD_INETSK 4u /* file_entry.type of an inet socket */
#define ENTRY_MAX 4096u /* both entries are a few dozen bytes */
#define FILES_MAX (64u << 20) /* files.img: one entry per open file */

struct one_entry {
	uint8_t buf[ENTRY_MAX];
	uint32_t len;
};

static int read_all(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		got += (size_t)n;
	}
	return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	return 0;
}

/* The single entry of an image file whose type magic is `magic`. */
static int read_entry(const char *path, uint32_t magic, struct one_entry *e,
		      struct herr *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	uint32_t head[3];
	struct stat st;
	int r;

	if (fd < 0 || fstat(fd, &st) < 0)
		return herr_sys(err, -errno, "open %s", path);
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)sizeof(head))
		return herr_set(err, -EINVAL, "%s: not a CRIU image", path);
	if ((r = read_all(fd, head, sizeof(head))) < 0)
		return herr_sys(err, r, "read %s", path);
	if (head[0] != CRIU_COMMON_MAGIC || head[1] != magic)
		return herr_set(err, -EINVAL, "%s: unexpected magic %08x %08x", path,
				head[0], head[1]);
	if (head[2] > ENTRY_MAX || (off_t)sizeof(head) + head[2] != st.st_size)
		return herr_set(err, -EINVAL, "%s: one entry of %u bytes expected, the file "
				"has %lld bytes", path, head[2], (long long)st.st_size);
	e->len = head[2];
	if ((r = read_all(fd, e->buf, e->len)) < 0)
		return herr_sys(err, r, "read %s", path);
	return 0;
}

/* Replaces an image with new bytes (a header, then a body): a new file
 * renamed over it. Not fsynced: the copy is a fork's, removed whole if the
 * fork does not finish. */
static int replace_image(const char *path, const void *head, size_t head_len,
			 const void *body, size_t len, struct herr *err)
{
	char tmp[4200];
	int r;

	snprintf(tmp, sizeof(tmp), "%s.new", path);
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
				      O_NOFOLLOW, 0600);
	if (fd < 0)
		return herr_sys(err, -errno, "create %s", tmp);
	r = write_all(fd, head, head_len);
	if (r == 0)
		r = write_all(fd, body, len);
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return herr_sys(err, r, "writing %s", path);
	}
	return 0;
}

static int write_entry(const char *path, uint32_t magic, const struct one_entry *e,
		       struct herr *err)
{
	uint32_t head[3] = { CRIU_COMMON_MAGIC, magic, e->len };

	return replace_image(path, head, sizeof(head), e->buf, e->len, err);
}

/* Exactly the extent our runtime writes, "0 <base> 65536"; gets new_base. */
static int rebase_map(const char *path, const char *which, CriuNs__IdExtent **map, size_t n,
		      uint32_t new_base, struct herr *err)
{
	if (n != 1 || map[0]->first != 0 || map[0]->count != RT_IDS_PER_SANDBOX)
		return herr_set(err, -EINVAL, "%s: %s is not the one extent of 0..%u a sandbox "
				"has (%zu extents): not a Hutch sandbox's images", path, which,
				RT_IDS_PER_SANDBOX - 1, n);
	map[0]->lower_first = new_base;
	return 0;
}

static int rewrite_userns(const char *path, uint32_t new_base, struct herr *err)
{
	struct one_entry e;
	int r = read_entry(path, CRIU_USERNS_MAGIC, &e, err);

	if (r < 0)
		return r;
	CriuNs__UserNs *ns = criu_ns__user_ns__unpack(NULL, e.len, e.buf);
	if (!ns)
		return herr_set(err, -EINVAL, "%s: not a user namespace entry", path);
	r = rebase_map(path, "uid_map", ns->uid_map, ns->n_uid_map, new_base, err);
	if (r == 0)
		r = rebase_map(path, "gid_map", ns->gid_map, ns->n_gid_map, new_base, err);
	if (r == 0 && criu_ns__user_ns__get_packed_size(ns) > ENTRY_MAX)
		r = herr_set(err, -E2BIG, "%s: entry too large", path);
	if (r == 0) {
		e.len = (uint32_t)criu_ns__user_ns__pack(ns, e.buf);
		r = write_entry(path, CRIU_USERNS_MAGIC, &e, err);
	}
	criu_ns__user_ns__free_unpacked(ns, NULL);
	return r;
}

/* Only the namespace named after the source: one a process made inside the
 * sandbox (unshare -u) keeps the name it was given. */
static int rewrite_utsns(const char *path, const char *from, const char *to,
			 struct herr *err)
{
	struct one_entry e;
	int r = read_entry(path, CRIU_UTSNS_MAGIC, &e, err);

	if (r < 0)
		return r;
	CriuNs__UtsNs *ns = criu_ns__uts_ns__unpack(NULL, e.len, e.buf);
	if (!ns)
		return herr_set(err, -EINVAL, "%s: not a UTS namespace entry", path);
	if (strcmp(ns->nodename, from) == 0) {
		char *was = ns->nodename;
		ns->nodename = (char *)to;
		if (criu_ns__uts_ns__get_packed_size(ns) > ENTRY_MAX)
			r = herr_set(err, -E2BIG, "%s: entry too large", path);
		else
			e.len = (uint32_t)criu_ns__uts_ns__pack(ns, e.buf);
		ns->nodename = was;
		if (r == 0)
			r = write_entry(path, CRIU_UTSNS_MAGIC, &e, err);
	}
	criu_ns__uts_ns__free_unpacked(ns, NULL);
	return r;
}

static bool image_named(const char *name, const char *prefix)
{
	size_t p = strlen(prefix), n = strlen(name);

	return n > p + 4 && strncmp(name, prefix, p) == 0 &&
	       strspn(name + p, "0123456789") == n - p - 4 && strcmp(name + n - 4, ".img") == 0;
}

int rt_images_rekey(const char *dir, uint32_t new_base, const char *from_host,
		    const char *to_host, struct herr *err)
{
	_cleanup_closedir_ DIR *d = opendir(dir);
	struct dirent *e;
	char path[4096];
	int users = 0, r = 0;

	if (!d)
		return herr_sys(err, -errno, "opendir %s", dir);
	while (r == 0 && (e = readdir(d))) {
		snprintf(path, sizeof(path), "%.3800s/%.255s", dir, e->d_name);
		if (image_named(e->d_name, "userns-")) {
			users++;
			r = rewrite_userns(path, new_base, err);
		} else if (image_named(e->d_name, "utsns-")) {
			r = rewrite_utsns(path, from_host, to_host, err);
		}
	}
	if (r == 0 && users != 1)
		r = herr_set(err, -EINVAL, "%s: %d user namespace images, one expected", dir,
			     users);
	return r;
}

/* Reads a whole image into memory (files.img: bounded, but not small). */
static int read_image(const char *path, uint8_t **out, size_t *len, struct herr *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	int r;

	if (fd < 0 || fstat(fd, &st) < 0)
		return herr_sys(err, -errno, "open %s", path);
	if (!S_ISREG(st.st_mode) || st.st_size < 8 || st.st_size > FILES_MAX)
		return herr_set(err, -EINVAL, "%s: not a CRIU image of 8 bytes to %u MiB", path,
				FILES_MAX >> 20);
	*len = (size_t)st.st_size;
	*out = malloc(*len);
	if (!*out)
		return herr_set(err, -ENOMEM, "%s: out of memory", path);
	if ((r = read_all(fd, *out, *len)) < 0) {
		free(*out);
		*out = NULL;
		return herr_sys(err, r, "read %s", path);
	}
	return 0;
}

/* Whether a socket is bound to addr: an IPv4 one, or an IPv6 one bound to
 * its mapped form ::ffff:a.b.c.d (whose bind CRIU also redoes: left alone,
 * the fork would listen on the source's address, which reaches nothing). */
static bool bound_to(const CriuNs__InetSk *isk, uint32_t addr)
{
	const uint32_t *a = isk->src_addr;

	if (isk->family == AF_INET)
		return isk->n_src_addr == 1 && a[0] == addr;
	return isk->family == AF_INET6 && isk->n_src_addr == 4 && a[0] == 0 && a[1] == 0 &&
	       a[2] == htonl(0xffff) && a[3] == addr;
}

/* The entry moved to the fork's address when it is a socket bound to the
 * source's; its new bytes in `e`. 1 when rewritten, 0 when left. */
static int rebind_entry(const uint8_t *data, uint32_t len, uint32_t from, uint32_t to,
			struct one_entry *e)
{
	CriuNs__FileEntry *fe = criu_ns__file_entry__unpack(NULL, len, data);
	int hit = 0;

	if (!fe)
		return -EINVAL;
	if (fe->type == CRIU_FD_INETSK && fe->isk && bound_to(fe->isk, from) &&
	    criu_ns__file_entry__get_packed_size(fe) <= ENTRY_MAX) {
		fe->isk->src_addr[fe->isk->n_src_addr - 1] = to;
		e->len = (uint32_t)criu_ns__file_entry__pack(fe, e->buf);
		hit = 1;
	}
	criu_ns__file_entry__free_unpacked(fe, NULL);
	return hit;
}

/* Walks files.img's entries into out (same layout), rewriting as it goes. */
static int rebind_all(const char *path, const uint8_t *in, size_t len, uint32_t from,
		      uint32_t to, uint8_t *out, size_t cap, size_t *out_len, int *moved,
		      struct herr *err)
{
	struct one_entry e;
	size_t off = 8, o = 8;

	memcpy(out, in, 8);
	while (off < len) {
		uint32_t n;
		if (len - off < 4)
			return herr_set(err, -EINVAL, "%s: cut entry at %zu", path, off);
		memcpy(&n, in + off, 4);
		if (n > len - off - 4)
			return herr_set(err, -EINVAL, "%s: entry of %u bytes at %zu runs past "
					"the end", path, n, off);
		int hit = rebind_entry(in + off + 4, n, from, to, &e);
		if (hit < 0)
			return herr_set(err, -EINVAL, "%s: entry at %zu is not a file entry",
					path, off);
		const uint8_t *src = hit ? e.buf : in + off + 4;
		uint32_t slen = hit ? e.len : n;
		if (cap - o < 4 + (size_t)slen)
			return herr_set(err, -E2BIG, "%s: rewritten entries outgrow the image",
					path);
		memcpy(out + o, &slen, 4);
		memcpy(out + o + 4, src, slen);
		o += 4 + slen;
		off += 4 + n;
		*moved += hit;
	}
	*out_len = o;
	return 0;
}

int rt_images_rebind(const char *dir, uint32_t from, uint32_t to, int *moved,
		     struct herr *err)
{
	char path[4096];
	_cleanup_free_ uint8_t *in = NULL;
	_cleanup_free_ uint8_t *out = NULL;
	size_t len = 0, out_len = 0;
	uint32_t head[2];
	int r;

	*moved = 0;
	snprintf(path, sizeof(path), "%.4000s/files.img", dir);
	if ((r = read_image(path, &in, &len, err)) < 0)
		return r;
	memcpy(head, in, 8);
	if (head[0] != CRIU_COMMON_MAGIC || head[1] != CRIU_FILES_MAGIC)
		return herr_set(err, -EINVAL, "%s: unexpected magic %08x %08x", path, head[0],
				head[1]);
	/* A rewritten entry grows by a few bytes at most (a varint of the
	 * same field); rebind_all checks the room anyway. */
	size_t cap = len + len / 2 + ENTRY_MAX;
	out = malloc(cap);
	if (!out)
		return herr_set(err, -ENOMEM, "%s: out of memory", path);
	r = rebind_all(path, in, len, from, to, out, cap, &out_len, moved, err);
	if (r < 0 || *moved == 0)
		return r;
	return replace_image(path, out, 8, out + 8, out_len - 8, err);
}
