/*
 * The content-addressed layer store (see layer.h). Walks use dir fds and
 * *at() calls with AT_SYMLINK_NOFOLLOW / O_NOFOLLOW: a layer is built from
 * what a sandbox wrote, so its symlinks may point anywhere on the host and
 * must never be followed by hutchd.
 */
#include "layer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cleanup.h"

#define WALK_DEPTH_MAX 256

static void hex(const unsigned char *d, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static int open_lock(const char *data_dir, struct herr *err)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/layers/.lock", data_dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	return fd < 0 ? herr_sys(err, -errno, "opening %s", path) : fd;
}

int layer_store_hold(const char *data_dir, struct herr *err)
{
	int fd = open_lock(data_dir, err);

	if (fd >= 0 && flock(fd, LOCK_SH) < 0) {
		close(fd);
		return herr_sys(err, -errno, "locking %s/layers", data_dir);
	}
	return fd;
}

int layer_store_lock_all(const char *data_dir, struct herr *err)
{
	int fd = open_lock(data_dir, err);

	if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		close(fd);
		return e == EWOULDBLOCK ? herr_set(err, -EBUSY, "a build or import is writing "
						   "layers") : herr_sys(err, -e, "locking layers");
	}
	return fd;
}

int layer_store_init(const char *data_dir, struct herr *err)
{
	char path[4096];
	_cleanup_close_ int fd = -1;
	DIR *d;
	struct dirent *e;

	snprintf(path, sizeof(path), "%s/layers", data_dir);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "creating %s", path);
	fd = open(path, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return herr_sys(err, -errno, "opening %s", path);
	/* Layers hold setuid files owned by host ids: no host user may enter. */
	if (fchmod(fd, 0700) < 0)
		return herr_sys(err, -errno, "chmod %s", path);
	/* Leftovers of a dead process only: a live build or import holds the
	 * store lock shared, and its temporary folder must stay. */
	_cleanup_close_ int lock = layer_store_lock_all(data_dir, NULL);
	if (lock < 0)
		return 0;
	d = fdopendir(dup(fd));
	if (!d)
		return herr_sys(err, -errno, "listing %s", path);
	while ((e = readdir(d)))
		if (strncmp(e->d_name, ".tmp-", 5) == 0)
			layer_remove_tree(fd, e->d_name, NULL);
	closedir(d);
	return 0;
}

int layer_tmp_create(const char *data_dir, char *path, size_t cap, struct herr *err)
{
	unsigned char rnd[8];
	char h[17];

	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		return herr_sys(err, -errno, "getrandom");
	hex(rnd, sizeof(rnd), h);
	snprintf(path, cap, "%s/layers/.tmp-%s", data_dir, h);
	if (mkdir(path, 0755) < 0)
		return herr_sys(err, -errno, "creating %s", path);
	return 0;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Appends a copy of name to the array v of *cnt names; false when out of memory
 * (v is then unchanged). */
static bool add_name(char ***v, size_t *cnt, size_t *cap, const char *name)
{
	if (*cnt == *cap) {
		size_t grown = *cap ? *cap * 2 : 16;
		char **nv = realloc(*v, grown * sizeof(**v));

		if (!nv)
			return false;
		*v = nv;
		*cap = grown;
	}
	(*v)[*cnt] = strdup(name);
	if (!(*v)[*cnt])
		return false;
	(*cnt)++;
	return true;
}

/* Sorted names of a folder (without . and ..); caller frees each and the array. */
static int list_sorted(int dir_fd, char ***names, size_t *n, struct herr *err)
{
	int fd = dup(dir_fd);
	_cleanup_closedir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;
	char **v = NULL;
	size_t cnt = 0, cap = 0;

	if (!d) {
		int saved = errno;

		if (fd >= 0)
			close(fd);
		return herr_sys(err, -saved, "listing a layer folder");
	}
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (!add_name(&v, &cnt, &cap, e->d_name)) {
			free_names(v, cnt);
			return herr_set(err, -ENOMEM, "out of memory");
		}
	}
	if (cnt)
		qsort(v, cnt, sizeof(*v), cmp_names);
	*names = v;
	*n = cnt;
	return 0;
}

static int hash_file(EVP_MD_CTX *md, int dir_fd, const char *name, struct herr *err)
{
	_cleanup_close_ int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	char buf[65536];
	ssize_t n;

	if (fd < 0)
		return herr_sys(err, -errno, "reading layer file %s", name);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		EVP_DigestUpdate(md, buf, (size_t)n);
	return n < 0 ? herr_sys(err, -errno, "reading layer file %s", name) : 0;
}

/* Overlay's own marks (userxattr mounts): part of what a layer means. */
static void hash_overlay_xattr(EVP_MD_CTX *md, int dir_fd, const char *name)
{
	char path[64 + 256], val[256];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dir_fd, name);
	n = lgetxattr(path, "user.overlay.opaque", val, sizeof(val));
	if (n > 0) {
		EVP_DigestUpdate(md, "opaque=", 7);
		EVP_DigestUpdate(md, val, (size_t)n);
	}
}

static int hash_dir(EVP_MD_CTX *md, int dir_fd, int depth, struct herr *err)
{
	char **names = NULL;
	size_t n = 0;
	int rc;

	if (depth > WALK_DEPTH_MAX)
		return herr_set(err, -ELOOP, "layer folders nest deeper than %d", WALK_DEPTH_MAX);
	rc = list_sorted(dir_fd, &names, &n, err);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		struct stat st;
		char meta[256];

		if (fstatat(dir_fd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
			rc = herr_sys(err, -errno, "stat layer entry %s", names[i]);
			break;
		}
		EVP_DigestUpdate(md, names[i], strlen(names[i]) + 1);
		snprintf(meta, sizeof(meta), "%o %u %u %lld %u:%u|", st.st_mode, st.st_uid,
			 st.st_gid, S_ISREG(st.st_mode) ? (long long)st.st_size : 0LL,
			 major(st.st_rdev), minor(st.st_rdev));
		EVP_DigestUpdate(md, meta, strlen(meta));
		hash_overlay_xattr(md, dir_fd, names[i]);
		if (S_ISREG(st.st_mode)) {
			rc = hash_file(md, dir_fd, names[i], err);
		} else if (S_ISLNK(st.st_mode)) {
			char target[4096];
			ssize_t l = readlinkat(dir_fd, names[i], target, sizeof(target));
			if (l < 0)
				rc = herr_sys(err, -errno, "readlink %s", names[i]);
			else
				EVP_DigestUpdate(md, target, (size_t)l);
		} else if (S_ISDIR(st.st_mode)) {
			_cleanup_close_ int sub = openat(dir_fd, names[i], O_RDONLY | O_DIRECTORY |
							 O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				rc = herr_sys(err, -errno, "opening layer folder %s", names[i]);
			else
				rc = hash_dir(md, sub, depth + 1, err);
			EVP_DigestUpdate(md, "/end", 4);
		}
	}
	free_names(names, n);
	return rc;
}

int layer_tree_hash(int dir_fd, char out[LAYER_HASH_HEX], struct herr *err)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char d[32];
	unsigned len = 0;
	int rc;

	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return herr_set(err, -ENOMEM, "sha256 unavailable");
	}
	EVP_DigestUpdate(md, "hutch-layer-v1", 14);
	rc = hash_dir(md, dir_fd, 0, err);
	EVP_DigestFinal_ex(md, d, &len);
	EVP_MD_CTX_free(md);
	if (rc == 0)
		hex(d, 32, out);
	return rc;
}

bool layer_tree_empty(int dir_fd)
{
	char **names = NULL;
	size_t n = 0;

	if (list_sorted(dir_fd, &names, &n, NULL) < 0)
		return false;
	free_names(names, n);
	return n == 0;
}

int layer_remove_tree(int parent_fd, const char *name, struct herr *err)
{
	struct stat st;
	char **names = NULL;
	size_t n = 0;
	int rc = 0;

	if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : herr_sys(err, -errno, "stat %s", name);
	if (S_ISDIR(st.st_mode)) {
		_cleanup_close_ int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY |
						O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return herr_sys(err, -errno, "opening %s", name);
		rc = list_sorted(fd, &names, &n, err);
		for (size_t i = 0; rc == 0 && i < n; i++)
			rc = layer_remove_tree(fd, names[i], err);
		free_names(names, n);
		if (rc < 0)
			return rc;
		if (unlinkat(parent_fd, name, AT_REMOVEDIR) < 0)
			return herr_sys(err, -errno, "removing folder %s", name);
		return 0;
	}
	if (unlinkat(parent_fd, name, 0) < 0)
		return herr_sys(err, -errno, "removing %s", name);
	return 0;
}

static int remove_path(const char *path, struct herr *err)
{
	char copy[4096];
	char *slash;
	_cleanup_close_ int fd = -1;

	snprintf(copy, sizeof(copy), "%s", path);
	slash = strrchr(copy, '/');
	if (!slash)
		return herr_set(err, -EINVAL, "not an absolute path: %s", path);
	*slash = '\0';
	fd = open(copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return herr_sys(err, -errno, "opening %s", copy);
	return layer_remove_tree(fd, slash + 1, err);
}

int layer_commit(const char *data_dir, const char *tmp_path, char hash[LAYER_HASH_HEX],
		 struct herr *err)
{
	_cleanup_close_ int fd = open(tmp_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	char final[4096];
	int rc;

	if (fd < 0)
		return herr_sys(err, -errno, "opening %s", tmp_path);
	rc = layer_tree_hash(fd, hash, err);
	if (rc < 0)
		return rc;
	/* The bytes must be on disk before the name says the layer is whole. */
	if (syncfs(fd) < 0)
		return herr_sys(err, -errno, "syncing %s", tmp_path);
	snprintf(final, sizeof(final), "%s/layers/%s", data_dir, hash);
	if (rename(tmp_path, final) == 0)
		return 0;
	if (errno != EEXIST && errno != ENOTEMPTY)
		return herr_sys(err, -errno, "renaming %s to %s", tmp_path, final);
	return remove_path(tmp_path, err); /* the same content is stored already */
}

int layer_path(const char *data_dir, const char *hash, char *out, size_t cap,
	       struct herr *err)
{
	struct stat st;

	snprintf(out, cap, "%s/layers/%s", data_dir, hash);
	if (stat(out, &st) < 0 || !S_ISDIR(st.st_mode))
		return herr_set(err, -ENOENT, "layer %s is missing from %s/layers", hash,
				data_dir);
	return 0;
}

int layer_register_external(const char *data_dir, const char *dir, const char *marker,
			    char hash[LAYER_HASH_HEX], struct herr *err)
{
	char real[4096], id[4096 + 128], link[4096], cur[4096];
	unsigned char d[32];
	unsigned len = 0;
	struct stat st, ms;
	ssize_t n;

	if (!realpath(dir, real) || stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
		return herr_sys(err, -errno, "layer folder %s", dir);
	if (stat(marker, &ms) < 0)
		return herr_sys(err, -errno, "layer marker %s", marker);
	snprintf(id, sizeof(id), "hutch-external-layer-v1\n%s\n%llu\n%lld.%09ld", real,
		 (unsigned long long)st.st_ino, (long long)ms.st_ctim.tv_sec,
		 ms.st_ctim.tv_nsec);
	EVP_Digest(id, strlen(id), d, &len, EVP_sha256(), NULL);
	hex(d, 32, hash);
	snprintf(link, sizeof(link), "%s/layers/%s", data_dir, hash);
	n = readlink(link, cur, sizeof(cur) - 1);
	if (n >= 0) {
		cur[n] = '\0';
		if (strcmp(cur, real) == 0)
			return 0;
		unlink(link);
	}
	if (symlink(real, link) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "linking %s to %s", link, real);
	return 0;
}
