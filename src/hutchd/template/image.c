/*
 * Image import (see image.h): finds the manifest and config of a
 * docker-archive or OCI layout, checks every digest, and turns each layer
 * into a stored layer.
 *
 * Why reading the image is safe: the image folder is either a folder the
 * operator named or a private staging folder that extract.c filled from
 * the tarball (names cleaned, no "..", no devices). Every file in it is
 * opened with tx_open_beneath(), so a symlink planted in the image (say
 * blobs/sha256/<x> -> /etc/shadow) fails with ELOOP instead of being read,
 * and paths from manifests are cleaned by tx_clean_path() first. Documents
 * are capped at IMG_JSON_MAX and blobs checked against their digest before
 * their content is trusted; layer streams are capped by max_bytes.
 */
#include "image.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>

#include "buf.h"
#include "cleanup.h"
#include "extract.h"
#include "layer.h"
#include "log.h"

#define MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define IMG_ENTRIES_MAX 500000
#define START_CMD_MAX (64 * 1024)

struct img_ctx {
	const char *data_dir;
	int root;             /* the image folder */
	const char *what;     /* names the image in messages */
	uint64_t max_bytes, used;
	json_t *refs;         /* names the image carries (RepoTags, ref.name) */
	json_t *layers;       /* stored layer hashes, lowest first */
	/* The non-empty layers so far, lowest first: stored ones (hash set)
	 * or ones extracted into a temporary folder (tmp set) that become
	 * stored only once the whole image checked out (publish_layers). */
	struct img_slot {
		int fd;
		char hash[LAYER_HASH_HEX];
		char tmp[4096];
		char diff_hex[65];
	} slots[IMG_MAX_LAYERS];
	size_t n_fds;
};

struct img_layer {
	char path[TX_PATH_MAX];  /* inside the image folder */
	const char *blob_hex;    /* digest of the blob file, NULL: none given */
	int64_t blob_size;       /* -1: not given */
};

static void to_hex(const unsigned char *d, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static bool is_hex64(const char *s)
{
	size_t i;

	for (i = 0; i < 64; i++)
		if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
			return false;
	return s[64] == '\0';
}

const char *img_digest_hex(const char *digest)
{
	if (!digest || strncmp(digest, "sha256:", 7) != 0 || !is_hex64(digest + 7))
		return NULL;
	return digest + 7;
}

int img_sha256_fd(int fd, uint64_t max, char hex[65], uint64_t *size, struct herr *err)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char d[32], buf[65536];
	unsigned len = 0;
	uint64_t total = 0;
	ssize_t n;

	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return herr_set(err, -ENOMEM, "sha256 unavailable");
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		total += (uint64_t)n;
		if (total > max) {
			EVP_MD_CTX_free(md);
			return herr_set(err, -EFBIG, "more than %llu bytes",
					(unsigned long long)max);
		}
		EVP_DigestUpdate(md, buf, (size_t)n);
	}
	EVP_DigestFinal_ex(md, d, &len);
	EVP_MD_CTX_free(md);
	if (n < 0)
		return herr_sys(err, -errno, "reading");
	to_hex(d, 32, hex);
	if (size)
		*size = total;
	return 0;
}

/* Opens a regular file of the image; path comes from the image: cleaned. */
static int open_member(struct img_ctx *c, const char *path, struct herr *err)
{
	char clean[TX_PATH_MAX];
	struct stat st;
	int fd, rc = tx_clean_path(path, clean, sizeof(clean), err);

	if (rc < 0)
		return herr_wrap(err, "%s", c->what);
	fd = tx_open_beneath(c->root, clean, O_RDONLY | O_NOFOLLOW);
	if (fd < 0)
		return herr_sys(err, -errno, "%s: '%.200s' (missing, or reached through a "
				"symlink)", c->what, path);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return herr_set(err, -EINVAL, "%s: '%.200s' is not a regular file", c->what,
				path);
	}
	return fd;
}

/*
 * Reads a JSON document of the image; with want_hex, its sha256 must match
 * (and its size want_size unless negative) before it is parsed.
 */
static int read_doc(struct img_ctx *c, const char *path, const char *want_hex,
		    int64_t want_size, json_t **out, struct herr *err)
{
	_cleanup_close_ int fd = open_member(c, path, err);
	_cleanup_free_ char *text = NULL;
	unsigned char d[32];
	char hex[65];
	unsigned len = 0;
	struct stat st;
	json_error_t je;
	size_t got = 0;

	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0 || st.st_size > (off_t)IMG_JSON_MAX)
		return herr_set(err, -EFBIG, "%s: '%.200s' is larger than %u bytes", c->what,
				path, IMG_JSON_MAX);
	text = malloc((size_t)st.st_size + 1);
	if (!text)
		return herr_set(err, -ENOMEM, "out of memory");
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, text + got, (size_t)st.st_size - got);
		if (n <= 0)
			return herr_sys(err, n < 0 ? -errno : -EIO, "%s: reading '%.200s'",
					c->what, path);
		got += (size_t)n;
	}
	if (want_size >= 0 && (int64_t)got != want_size)
		return herr_set(err, -EINVAL, "%s: '%.200s' has %zu bytes, its descriptor "
				"says %lld", c->what, path, got, (long long)want_size);
	if (want_hex) {
		EVP_Digest(text, got, d, &len, EVP_sha256(), NULL);
		to_hex(d, 32, hex);
		if (strcmp(hex, want_hex) != 0)
			return herr_set(err, -EBADMSG, "%s: '%.200s' does not match its digest "
					"sha256:%s (it hashes to sha256:%s)", c->what, path,
					want_hex, hex);
	}
	*out = json_loadb(text, got, JSON_REJECT_DUPLICATES, &je);
	if (!*out)
		return herr_set(err, -EINVAL, "%s: '%.200s': line %d: %s", c->what, path,
				je.line, je.text);
	return 0;
}

/* A descriptor's blob path and digest; the field names it in errors. */
static int desc_blob(struct img_ctx *c, json_t *desc, const char *field, char *path,
		     size_t cap, const char **hex, int64_t *size, struct herr *err)
{
	const char *digest = json_string_value(json_object_get(desc, "digest"));
	json_t *sz = json_object_get(desc, "size");

	*hex = img_digest_hex(digest);
	if (!*hex)
		return herr_set(err, -EINVAL, "%s: %s.digest '%.100s' is not sha256:<64 "
				"lowercase hex> (only sha256 is accepted)", c->what, field,
				digest ? digest : "(missing)");
	*size = json_is_integer(sz) ? json_integer_value(sz) : -1;
	if (*size < -1 || (sz && !json_is_integer(sz)))
		return herr_set(err, -EINVAL, "%s: %s.size is not a size", c->what, field);
	snprintf(path, cap, "blobs/sha256/%s", *hex);
	return 0;
}

static int read_desc_doc(struct img_ctx *c, json_t *desc, const char *field, json_t **out,
			 struct herr *err)
{
	char path[TX_PATH_MAX];
	const char *hex;
	int64_t size;
	int rc = desc_blob(c, desc, field, path, sizeof(path), &hex, &size, err);

	return rc < 0 ? rc : read_doc(c, path, hex, size, out, err);
}

static void add_ref(struct img_ctx *c, const char *ref)
{
	json_t *v;
	size_t i;

	if (!ref || !*ref || strlen(ref) > 512)
		return;
	json_array_foreach(c->refs, i, v)
		if (strcmp(json_string_value(v), ref) == 0)
			return;
	json_array_append_new(c->refs, json_string(ref));
}

static bool is_index(json_t *desc)
{
	const char *mt = json_string_value(json_object_get(desc, "mediaType"));

	return mt && (!strcmp(mt, MT_OCI_INDEX) || !strcmp(mt, MT_DOCKER_LIST));
}

/* 2: linux/amd64, 1: no platform given, 0: another platform. */
static int platform_rank(json_t *desc)
{
	json_t *p = json_object_get(desc, "platform");
	const char *os = json_string_value(json_object_get(p, "os"));
	const char *arch = json_string_value(json_object_get(p, "architecture"));

	if (!p)
		return 1;
	return os && arch && !strcmp(os, "linux") && !strcmp(arch, "amd64") ? 2 : 0;
}

/* The descriptor of an index that this node runs (linux/amd64). */
static json_t *pick_descriptor(json_t *index)
{
	json_t *list = json_object_get(index, "manifests"), *d, *best = NULL;
	int best_rank = 0;
	size_t i;

	json_array_foreach(list, i, d) {
		int r = platform_rank(d);
		/* Attestation manifests carry platform unknown/unknown: rank 0. */
		if (r > best_rank) {
			best = d;
			best_rank = r;
		}
	}
	return best;
}

/* Follows index -> (index ->) manifest; *manifest receives it. */
static int oci_manifest(struct img_ctx *c, json_t *index, int depth, json_t **manifest,
			struct herr *err)
{
	json_t *desc, *doc = NULL;
	int rc;

	if (!json_is_array(json_object_get(index, "manifests")))
		return herr_set(err, -EINVAL, "%s: index has no 'manifests' array", c->what);
	desc = pick_descriptor(index);
	if (!desc)
		return herr_set(err, -ENOENT, "%s: the index has no manifest for linux/amd64",
				c->what);
	add_ref(c, json_string_value(json_object_get(json_object_get(desc, "annotations"),
						      "org.opencontainers.image.ref.name")));
	add_ref(c, json_string_value(json_object_get(json_object_get(desc, "annotations"),
						      "io.containerd.image.name")));
	rc = read_desc_doc(c, desc, "manifests[]", &doc, err);
	if (rc < 0)
		return rc;
	if (is_index(desc) || json_is_array(json_object_get(doc, "manifests"))) {
		if (depth >= 2) {
			json_decref(doc);
			return herr_set(err, -ELOOP, "%s: indexes nest too deep", c->what);
		}
		rc = oci_manifest(c, doc, depth + 1, manifest, err);
		json_decref(doc);
		return rc;
	}
	*manifest = doc;
	return 0;
}

static bool layer_type_ok(const char *mt)
{
	static const char *const ok[] = {
		"application/vnd.oci.image.layer.v1.tar",
		"application/vnd.oci.image.layer.v1.tar+gzip",
		"application/vnd.oci.image.layer.v1.tar+zstd",
		"application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.diff.tar",
	};

	if (!mt)
		return true;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (strcmp(mt, ok[i]) == 0)
			return true;
	return false;
}

/* An OCI layout: config and layer descriptors of the chosen manifest. */
static int oci_image(struct img_ctx *c, json_t **config, char cfg_hex[65],
		     struct img_layer **layers, size_t *n, struct herr *err)
{
	_cleanup_(json_decrefp) json_t *index = NULL, *manifest = NULL;
	json_t *descs, *d;
	size_t i;
	int rc = read_doc(c, "index.json", NULL, -1, &index, err);

	if (rc == 0)
		rc = oci_manifest(c, index, 0, &manifest, err);
	if (rc == 0)
		rc = read_desc_doc(c, json_object_get(manifest, "config"), "config", config,
				   err);
	if (rc < 0)
		return rc;
	snprintf(cfg_hex, 65, "%s", img_digest_hex(json_string_value(json_object_get(
		json_object_get(manifest, "config"), "digest"))));
	descs = json_object_get(manifest, "layers");
	if (!json_is_array(descs))
		return herr_set(err, -EINVAL, "%s: manifest has no 'layers' array", c->what);
	*n = json_array_size(descs);
	*layers = calloc(*n + 1, sizeof(**layers));
	if (!*layers)
		return herr_set(err, -ENOMEM, "out of memory");
	json_array_foreach(descs, i, d) {
		const char *mt = json_string_value(json_object_get(d, "mediaType"));
		char field[32];
		const char *hex;

		snprintf(field, sizeof(field), "layers[%zu]", i);
		if (!layer_type_ok(mt))
			return herr_set(err, -ENOTSUP, "%s: %s has media type '%.100s', which "
					"is not a tar layer this node can read", c->what, field,
					mt);
		rc = desc_blob(c, d, field, (*layers)[i].path, sizeof((*layers)[i].path), &hex,
			       &(*layers)[i].blob_size, err);
		if (rc < 0)
			return rc;
		/* hex points into manifest, freed on return: keep a copy. */
		(*layers)[i].blob_hex = strdup(hex);
		if (!(*layers)[i].blob_hex)
			return herr_set(err, -ENOMEM, "out of memory");
	}
	return 0;
}

/* The 64 hex characters of a docker-archive config name ("<hex>.json"). */
static bool name_hex(const char *path, char hex[65])
{
	const char *base = strrchr(path, '/');

	base = base ? base + 1 : path;
	if (strlen(base) < 64)
		return false;
	memcpy(hex, base, 64);
	hex[64] = '\0';
	return is_hex64(hex) && (!base[64] || strcmp(base + 64, ".json") == 0);
}

/* A docker-archive: manifest.json names the config and the layer tars. */
static int docker_image(struct img_ctx *c, json_t **config, char cfg_hex[65],
			struct img_layer **layers, size_t *n, struct herr *err)
{
	_cleanup_(json_decrefp) json_t *manifest = NULL;
	json_t *entry, *paths, *v;
	const char *cfg;
	char hex[65];
	size_t i;
	int rc = read_doc(c, "manifest.json", NULL, -1, &manifest, err);

	if (rc < 0)
		return rc;
	entry = json_array_get(manifest, 0);
	cfg = json_string_value(json_object_get(entry, "Config"));
	paths = json_object_get(entry, "Layers");
	if (!json_is_array(manifest) || !cfg || !json_is_array(paths))
		return herr_set(err, -EINVAL, "%s: manifest.json must be an array of "
				"{Config, Layers}", c->what);
	if (json_array_size(manifest) > 1)
		log_warn("template", NULL, "%s holds %zu images; importing the first", c->what,
			 json_array_size(manifest));
	json_array_foreach(json_object_get(entry, "RepoTags"), i, v)
		add_ref(c, json_string_value(v));
	/* The config's name is its digest (the image id): check it. */
	if (!name_hex(cfg, hex))
		return herr_set(err, -EINVAL, "%s: manifest.json Config '%.200s' is not named "
				"by its sha256", c->what, cfg);
	rc = read_doc(c, cfg, hex, -1, config, err);
	if (rc < 0)
		return rc;
	snprintf(cfg_hex, 65, "%s", hex);
	*n = json_array_size(paths);
	*layers = calloc(*n + 1, sizeof(**layers));
	if (!*layers)
		return herr_set(err, -ENOMEM, "out of memory");
	json_array_foreach(paths, i, v) {
		if (!json_is_string(v))
			return herr_set(err, -EINVAL, "%s: manifest.json Layers[%zu] is not a "
					"path", c->what, i);
		snprintf((*layers)[i].path, sizeof((*layers)[i].path), "%s",
			 json_string_value(v));
		(*layers)[i].blob_size = -1;
	}
	return 0;
}

/* Hashes the one stream of the opened archive a into md, counting its
 * bytes against the image's limit. */
static int hash_stream(struct img_ctx *c, struct archive *a, EVP_MD_CTX *md,
		       struct herr *err)
{
	struct archive_entry *e;
	unsigned char buf[65536];
	la_ssize_t n;

	if (archive_read_next_header(a, &e) != ARCHIVE_OK)
		return herr_set(err, -EINVAL, "%s", archive_error_string(a));
	while ((n = archive_read_data(a, buf, sizeof(buf))) > 0) {
		c->used += (uint64_t)n;
		if (c->used > c->max_bytes)
			return herr_set(err, -EFBIG, "the image holds more than %llu bytes "
					"uncompressed", (unsigned long long)c->max_bytes);
		EVP_DigestUpdate(md, buf, (size_t)n);
	}
	if (n < 0)
		return herr_set(err, -EINVAL, "%s", archive_error_string(a));
	return 0;
}

/* sha256 of a layer's uncompressed stream (gzip, zstd or plain tar). */
static int diff_hash(struct img_ctx *c, int fd, char hex[65], struct herr *err)
{
	struct archive *a = archive_read_new();
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char d[32];
	unsigned len = 0;
	int rc;

	if (!a || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		rc = herr_set(err, -ENOMEM, "out of memory");
	} else {
		archive_read_support_filter_gzip(a);
		archive_read_support_filter_zstd(a);
		archive_read_support_format_raw(a);
		rc = archive_read_open_fd(a, fd, 65536) == ARCHIVE_OK ?
			hash_stream(c, a, md, err) :
			herr_set(err, -EINVAL, "%s", archive_error_string(a));
	}
	if (rc == 0) {
		EVP_DigestFinal_ex(md, d, &len);
		to_hex(d, 32, hex);
	}
	EVP_MD_CTX_free(md);
	archive_read_free(a);
	return rc;
}

/* Checks the blob digest (when the manifest gave one) and the diff id. */
static int verify_layer(struct img_ctx *c, int fd, const struct img_layer *l,
			const char *diff_hex, const char *field, struct herr *err)
{
	char hex[65];
	uint64_t size = 0;
	int rc;

	if (l->blob_hex) {
		rc = img_sha256_fd(fd, c->max_bytes, hex, &size, err);
		if (rc < 0)
			return herr_wrap(err, "%s: %s '%.200s'", c->what, field, l->path);
		if (strcmp(hex, l->blob_hex) != 0)
			return herr_set(err, -EBADMSG, "%s: %s '%.200s' does not match its digest "
					"sha256:%s (it hashes to sha256:%s)", c->what, field,
					l->path, l->blob_hex, hex);
		if (l->blob_size >= 0 && (uint64_t)l->blob_size != size)
			return herr_set(err, -EBADMSG, "%s: %s '%.200s' has %llu bytes, its "
					"descriptor says %lld", c->what, field, l->path,
					(unsigned long long)size, (long long)l->blob_size);
		if (lseek(fd, 0, SEEK_SET) < 0)
			return herr_sys(err, -errno, "%s: rewinding %s", c->what, l->path);
	}
	rc = diff_hash(c, fd, hex, err);
	if (rc < 0)
		return herr_wrap(err, "%s: %s '%.200s'", c->what, field, l->path);
	if (strcmp(hex, diff_hex) != 0)
		return herr_set(err, -EBADMSG, "%s: %s '%.200s' does not match "
				"rootfs.diff_ids (sha256:%s expected, sha256:%s found)", c->what,
				field, l->path, diff_hex, hex);
	return lseek(fd, 0, SEEK_SET) < 0 ? herr_sys(err, -errno, "rewinding") : 0;
}

static void map_path(struct img_ctx *c, const char *diff_hex, char *out, size_t cap)
{
	snprintf(out, cap, "%s/tmpl/images/layers/%s", c->data_dir, diff_hex);
}

/* The stored layer a diff id became before, if it is still there. */
static bool known_layer(struct img_ctx *c, const char *diff_hex, char hash[LAYER_HASH_HEX])
{
	char path[4096], text[LAYER_HASH_HEX + 8], lp[4096];
	_cleanup_close_ int fd = -1;
	ssize_t n;

	map_path(c, diff_hex, path, sizeof(path));
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || (n = read(fd, text, sizeof(text) - 1)) < 0)
		return false;
	text[n] = '\0';
	text[strcspn(text, "\n")] = '\0';
	if (strcmp(text, "empty") == 0) {
		hash[0] = '\0';
		return true;
	}
	if (!is_hex64(text) || layer_path(c->data_dir, text, lp, sizeof(lp), NULL) < 0)
		return false;
	memcpy(hash, text, LAYER_HASH_HEX);
	return true;
}

bool img_layer_known(const char *data_dir, const char *diff_hex)
{
	struct img_ctx c = { .data_dir = data_dir };
	char hash[LAYER_HASH_HEX];

	return is_hex64(diff_hex) && known_layer(&c, diff_hex, hash);
}

static void remember_layer(struct img_ctx *c, const char *diff_hex, const char *hash)
{
	char path[4096], tmp[4200];
	_cleanup_close_ int fd = -1;
	const char *v = hash[0] ? hash : "empty";

	map_path(c, diff_hex, path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || write(fd, v, strlen(v)) != (ssize_t)strlen(v) || rename(tmp, path) < 0)
		log_warn("template", NULL, "image layer map %s not written", path);
}

/*
 * Extracts one verified layer into a temporary folder of the store (tmp
 * receives it; "" when the layer holds nothing and was dropped).
 */
static int extract_layer(struct img_ctx *c, int fd, const char *what, char tmp[4096],
			 struct herr *err)
{
	int lower[IMG_MAX_LAYERS];
	struct tx_opts o = {
		.src = "", .dest = "/", .uid = -1, .gid = -1, .mode = -1,
		.max_file_bytes = c->max_bytes, .max_total_bytes = c->max_bytes,
		.max_entries = IMG_ENTRIES_MAX, .image_layer = true, .what = what,
		.lower_fds = lower, .n_lower = c->n_fds,
	};
	_cleanup_close_ int dir = -1;
	int rc;

	for (size_t i = 0; i < c->n_fds; i++)
		lower[i] = c->slots[c->n_fds - 1 - i].fd;
	rc = layer_tmp_create(c->data_dir, tmp, 4096, err);
	if (rc < 0)
		return rc;
	dir = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	rc = dir < 0 ? herr_sys(err, -errno, "opening %s", tmp) : tx_extract(fd, dir, &o, err);
	if (rc < 0 || layer_tree_empty(dir)) {
		layer_remove_tree(AT_FDCWD, tmp, NULL);
		tmp[0] = '\0';
		return rc < 0 ? herr_wrap(err, "%s", what) : 0;
	}
	return 0;
}

/* Adds a layer: stored (hash) or just extracted (tmp); "" for empty. */
static int stack_layer(struct img_ctx *c, const char *hash, const char *tmp,
		       const char *diff_hex, struct herr *err)
{
	struct img_slot *sl = &c->slots[c->n_fds];
	char path[4096];
	int rc = 0;

	if (!hash[0] && !tmp[0])
		return 0;
	if (c->n_fds >= IMG_MAX_LAYERS) {
		if (tmp[0])
			layer_remove_tree(AT_FDCWD, tmp, NULL);
		return herr_set(err, -E2BIG, "%s: more than %d non-empty layers", c->what,
				IMG_MAX_LAYERS);
	}
	memset(sl, 0, sizeof(*sl));
	snprintf(sl->hash, sizeof(sl->hash), "%s", hash);
	snprintf(sl->tmp, sizeof(sl->tmp), "%s", tmp);
	snprintf(sl->diff_hex, sizeof(sl->diff_hex), "%s", diff_hex);
	if (hash[0])
		rc = layer_path(c->data_dir, hash, path, sizeof(path), err);
	else
		snprintf(path, sizeof(path), "%s", tmp);
	if (rc == 0 && (sl->fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
		rc = herr_sys(err, -errno, "opening %s", path);
	if (rc < 0) {
		if (tmp[0])
			layer_remove_tree(AT_FDCWD, tmp, NULL);
		return rc;
	}
	c->n_fds++;
	return 0;
}

/*
 * Publishes the extracted layers under their content hash and lists the
 * image's layers. A layer equal to one below it is stacked once (overlay
 * refuses the same folder twice in one mount).
 */
static int publish_layers(struct img_ctx *c, struct herr *err)
{
	for (size_t i = 0; i < c->n_fds; i++) {
		struct img_slot *sl = &c->slots[i];
		json_t *v;
		size_t j;
		bool dup = false;

		if (sl->tmp[0]) {
			int rc = layer_commit(c->data_dir, sl->tmp, sl->hash, err);
			if (rc < 0)
				return herr_wrap(err, "%s: storing layer %zu", c->what, i);
			sl->tmp[0] = '\0';
			remember_layer(c, sl->diff_hex, sl->hash);
		}
		json_array_foreach(c->layers, j, v)
			dup |= strcmp(json_string_value(v), sl->hash) == 0;
		if (!dup)
			json_array_append_new(c->layers, json_string(sl->hash));
	}
	return 0;
}

static int import_layer(struct img_ctx *c, const struct img_layer *l, size_t i,
			json_t *diff_id, struct herr *err)
{
	char field[32], what[160], hash[LAYER_HASH_HEX], tmp[4096];
	const char *diff_hex = img_digest_hex(json_string_value(diff_id));
	_cleanup_close_ int fd = -1;
	int rc;

	snprintf(field, sizeof(field), "layers[%zu]", i);
	if (!diff_hex)
		return herr_set(err, -EINVAL, "%s: config rootfs.diff_ids[%zu] is not "
				"sha256:<64 lowercase hex>", c->what, i);
	if (known_layer(c, diff_hex, hash))
		return stack_layer(c, hash, "", diff_hex, err);
	fd = open_member(c, l->path, err);
	if (fd < 0)
		return fd;
	rc = verify_layer(c, fd, l, diff_hex, field, err);
	if (rc < 0)
		return rc;
	snprintf(what, sizeof(what), "%s: %s (sha256:%.12s)", c->what, field, diff_hex);
	rc = extract_layer(c, fd, what, tmp, err);
	if (rc < 0)
		return rc;
	return stack_layer(c, "", tmp, diff_hex, err);
}

/* The image user as a name: numeric ids are looked up in /etc/passwd. */
static int user_name(struct img_ctx *c, const char *spec, char *out, size_t cap,
		     struct herr *err)
{
	char uid[64];
	size_t n = strcspn(spec, ":");

	if (n == 0) {
		snprintf(out, cap, "root");
		return 0;
	}
	if (n >= sizeof(uid))
		return herr_set(err, -EINVAL, "%s: config User is too long", c->what);
	memcpy(uid, spec, n);
	uid[n] = '\0';
	if (strspn(uid, "0123456789") != n) {
		snprintf(out, cap, "%s", uid);
		return 0;
	}
	if (strcmp(uid, "0") == 0) {
		snprintf(out, cap, "root");
		return 0;
	}
	for (size_t i = c->n_fds; i-- > 0;) {
		_cleanup_close_ int fd = tx_open_beneath(c->slots[i].fd, "etc/passwd",
							 O_RDONLY);
		_cleanup_fclose_ FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
		char line[1024];

		if (!f)
			continue;
		fd = -1; /* owned by f */
		while (fgets(line, sizeof(line), f)) {
			char *name = strtok(line, ":"), *pw = strtok(NULL, ":");
			char *id = strtok(NULL, ":");

			if (name && pw && id && strcmp(id, uid) == 0) {
				snprintf(out, cap, "%s", name);
				return 0;
			}
		}
		break; /* the topmost passwd hides lower ones */
	}
	return herr_set(err, -EINVAL, "%s: config User '%.64s' has no entry in the image's "
			"/etc/passwd", c->what, spec);
}

static int sh_quote(struct hbuf *out, const char *s)
{
	int rc = hbuf_append_str(out, out->len ? " '" : "'");

	for (; rc == 0 && *s; s++)
		rc = *s == '\'' ? hbuf_append_str(out, "'\\''") : hbuf_append(out, s, 1);
	return rc == 0 ? hbuf_append_str(out, "'") : rc;
}

/* Entrypoint then Cmd, quoted for /bin/sh; NULL when the image has none. */
static int start_command(json_t *cfg, char **out, struct herr *err)
{
	_cleanup_hbuf_ struct hbuf b;
	const char *fields[] = { "Entrypoint", "Cmd" };
	json_t *v;
	size_t i;

	hbuf_init(&b, START_CMD_MAX);
	*out = NULL;
	for (size_t f = 0; f < 2; f++)
		json_array_foreach(json_object_get(cfg, fields[f]), i, v) {
			if (!json_is_string(v))
				return herr_set(err, -EINVAL, "config %s[%zu] is not a string",
						fields[f], i);
			if (sh_quote(&b, json_string_value(v)) < 0)
				return herr_set(err, -E2BIG, "config Entrypoint and Cmd are "
						"longer than %d bytes", START_CMD_MAX);
		}
	if (b.len && hbuf_append(&b, "", 1) == 0)
		*out = hbuf_steal(&b, NULL);
	return 0;
}

static json_t *env_object(struct img_ctx *c, json_t *list, struct herr *err)
{
	json_t *env = json_object(), *v;
	size_t i;

	json_array_foreach(list, i, v) {
		const char *s = json_string_value(v), *eq = s ? strchr(s, '=') : NULL;
		char key[256];

		if (!eq || eq == s || (size_t)(eq - s) >= sizeof(key)) {
			json_decref(env);
			herr_set(err, -EINVAL, "%s: config Env[%zu] is not NAME=value", c->what,
				 i);
			return NULL;
		}
		memcpy(key, s, (size_t)(eq - s));
		key[eq - s] = '\0';
		json_object_set_new(env, key, json_string(eq + 1));
	}
	return env;
}

/* The template config from the image config (its "config" object). */
static int result_of(struct img_ctx *c, json_t *image_cfg, const char *cfg_hex,
		     json_t **out, struct herr *err)
{
	json_t *cc = json_object_get(image_cfg, "config");
	const char *user = json_string_value(json_object_get(cc, "User"));
	const char *wd = json_string_value(json_object_get(cc, "WorkingDir"));
	_cleanup_free_ char *start = NULL;
	char name[64], digest[72];
	json_t *env;
	int rc = user_name(c, user ? user : "", name, sizeof(name), err);

	if (rc == 0)
		rc = start_command(cc, &start, err);
	if (rc < 0)
		return rc;
	env = env_object(c, json_object_get(cc, "Env"), err);
	if (!env)
		return -EINVAL;
	snprintf(digest, sizeof(digest), "sha256:%s", cfg_hex);
	*out = json_pack("{s:O,s:s,s:s,s:o,s:{s:s,s:O}}", "layers", c->layers, "user", name,
			 "workdir", wd && *wd ? wd : "/", "env", env, "image", "config",
			 digest, "refs", c->refs);
	if (*out && start)
		json_object_set_new(*out, "startCmd", json_string(start));
	return *out ? 0 : herr_set(err, -ENOMEM, "out of memory");
}

static int import_from(struct img_ctx *c, json_t **out, struct herr *err)
{
	_cleanup_(json_decrefp) json_t *cfg = NULL;
	struct img_layer *layers = NULL;
	_cleanup_close_ int probe = tx_open_beneath(c->root, "index.json", O_PATH);
	json_t *diff_ids;
	char cfg_hex[65];
	size_t n = 0;
	int rc;

	rc = probe >= 0 ? oci_image(c, &cfg, cfg_hex, &layers, &n, err) :
		docker_image(c, &cfg, cfg_hex, &layers, &n, err);
	diff_ids = json_object_get(json_object_get(cfg, "rootfs"), "diff_ids");
	if (rc == 0 && (!json_is_array(diff_ids) || json_array_size(diff_ids) != n))
		rc = herr_set(err, -EINVAL, "%s: config rootfs.diff_ids lists %zu layers, the "
			      "manifest %zu", c->what, json_array_size(diff_ids), n);
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = import_layer(c, &layers[i], i, json_array_get(diff_ids, i), err);
	if (rc == 0 && c->n_fds == 0)
		rc = herr_set(err, -EINVAL, "%s: the image has no files", c->what);
	/* Every check is done before the first layer gets its name. */
	if (rc == 0)
		rc = publish_layers(c, err);
	if (rc == 0)
		rc = result_of(c, cfg, cfg_hex, out, err);
	for (size_t i = 0; layers && i < n; i++)
		free((char *)layers[i].blob_hex);
	free(layers);
	return rc;
}

int img_import_dir(const char *data_dir, int dir_fd, const char *what, uint64_t max_bytes,
		   json_t **out, struct herr *err)
{
	char path[4096];
	struct img_ctx c = { .data_dir = data_dir, .root = dir_fd, .what = what,
			     .max_bytes = max_bytes, .refs = json_array(),
			     .layers = json_array() };
	int rc;

	snprintf(path, sizeof(path), "%s/tmpl/images", data_dir);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "creating %s", path);
	snprintf(path, sizeof(path), "%s/tmpl/images/layers", data_dir);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "creating %s", path);
	rc = c.refs && c.layers ? import_from(&c, out, err) :
		herr_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < c.n_fds; i++) {
		close(c.slots[i].fd);
		if (c.slots[i].tmp[0])
			layer_remove_tree(AT_FDCWD, c.slots[i].tmp, NULL);
	}
	json_decref(c.refs);
	json_decref(c.layers);
	return rc;
}

/*
 * A tarball is unpacked into a private staging folder under tmpl/ first
 * (with extract.c's COPY rules: names cleaned, no devices, capped), then
 * read like a folder; the staging folder is removed whatever happens.
 */
static int import_tarball(const char *data_dir, const char *path, uint64_t max_bytes,
			  json_t **out, struct herr *err)
{
	char stage[4096];
	struct tx_opts o = { .src = "", .dest = "/", .uid = -1, .gid = -1, .mode = -1,
			     .max_file_bytes = max_bytes, .max_total_bytes = max_bytes,
			     .max_entries = IMG_ENTRIES_MAX };
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_close_ int dir = -1;
	int rc;

	if (fd < 0)
		return herr_sys(err, -errno, "image %s", path);
	snprintf(stage, sizeof(stage), "%s/tmpl/.import-XXXXXX", data_dir);
	if (!mkdtemp(stage))
		return herr_sys(err, -errno, "creating a staging folder in %s/tmpl", data_dir);
	dir = open(stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	rc = dir < 0 ? herr_sys(err, -errno, "opening %s", stage) : tx_extract(fd, dir, &o, err);
	if (rc < 0)
		herr_wrap(err, "image %s", path);
	else
		rc = img_import_dir(data_dir, dir, path, max_bytes, out, err);
	layer_remove_tree(AT_FDCWD, stage, NULL);
	return rc;
}

int img_import_path(const char *data_dir, const char *path, uint64_t max_bytes,
		    json_t **out, struct herr *err)
{
	struct stat st;
	_cleanup_close_ int dir = -1;

	if (stat(path, &st) < 0)
		return herr_sys(err, -errno, "image %s", path);
	if (!S_ISDIR(st.st_mode))
		return import_tarball(data_dir, path, max_bytes, out, err);
	dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0)
		return herr_sys(err, -errno, "image %s", path);
	return img_import_dir(data_dir, dir, path, max_bytes, out, err);
}
