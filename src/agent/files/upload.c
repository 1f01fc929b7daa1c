/*
 * POST /files: writes the request body to one or more files as it arrives.
 *
 * The body is either the file itself (application/octet-stream, target in
 * the "path" query) or multipart/form-data, parsed incrementally by
 * libmicrohttpd's post processor; either may be gzip-compressed as a whole
 * (Content-Encoding: gzip), inflated here through a fixed-size buffer. Every
 * byte goes straight from the connection to its file, so memory use does not
 * grow with the upload.
 *
 * On an error half-way, the files already written (and the part of the
 * current one received so far) stay on disk, as with envd: the client gets
 * the error and can retry, which truncates and rewrites them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cleanup.h"
#include "files_req.h"
#include "http.h"
#include "log.h"
#include "paths.h"

#define POST_BUFFER_SIZE (64 * 1024) /* also bounds one part-header line */
#define INFLATE_BUFFER_SIZE (64 * 1024)

struct files_upload {
	struct files_request *req;
	int multipart;
	unsigned fail_status; /* first error met; the rest of the body is dropped */
	char fail_msg[HERR_MSG_MAX];
	json_t *meta;    /* validated X-Metadata-* headers */
	json_t *results; /* one entry per file opened */
	uint64_t total;  /* bytes written, for the log */

	int gzip;
	int z_ready;
	int z_member_done;
	z_stream z;
	unsigned char *zout;

	struct MHD_PostProcessor *pp;
	int part_seen;
	int part_is_file;
	uint64_t part_bytes;
	char *part_name, *part_filename, *part_type;

	int fd; /* file being written, -1 between files */
	char target[PATH_MAX];
};

static void up_fail(struct files_upload *up, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void up_fail(struct files_upload *up, unsigned status, const char *fmt, ...)
{
	va_list ap;

	if (up->fail_status)
		return;
	up->fail_status = status;
	va_start(ap, fmt);
	vsnprintf(up->fail_msg, sizeof(up->fail_msg), fmt, ap);
	va_end(ap);
	if (up->fd >= 0) {
		close(up->fd);
		up->fd = -1;
	}
}

static void fail_io(struct files_upload *up, int err, const char *what)
{
	if (err == ENOSPC || err == EDQUOT)
		up_fail(up, 507, "not enough disk space available (%s '%s')", what, up->target);
	else if (err == EFBIG)
		up_fail(up, 507, "file '%s' is too large for its file system", up->target);
	else
		up_fail(up, 500, "error %s file '%s': %s", what, up->target, strerror(err));
}

/*
 * Replaces the file's "user.e2b.*" attributes with meta: the old ones go
 * first, so an upload without X-Metadata-* headers clears them.
 */
static int replace_metadata(int fd, const json_t *meta, struct herr *err)
{
	const size_t plen = strlen(FILES_META_PREFIX);
	_cleanup_free_ char *names = NULL;
	char name[FILES_META_KEY_MAX + 16];
	ssize_t n = flistxattr(fd, NULL, 0);
	const char *key;
	json_t *value;

	if (n < 0 && (errno == ENOTSUP || errno == EOPNOTSUPP) && json_object_size(meta) == 0)
		return 0;
	if (n < 0)
		return herr_sys(err, -errno, "listing extended attributes");
	if (n > 0) {
		names = malloc((size_t)n);
		if (!names)
			return herr_set(err, -ENOMEM, "out of memory");
		n = flistxattr(fd, names, (size_t)n);
		if (n < 0)
			return herr_sys(err, -errno, "listing extended attributes");
		for (ssize_t i = 0; i < n; i += (ssize_t)strlen(names + i) + 1)
			if (strncmp(names + i, FILES_META_PREFIX, plen) == 0 &&
			    fremovexattr(fd, names + i) < 0 && errno != ENODATA)
				return herr_sys(err, -errno, "removing attribute '%s'", names + i);
	}
	json_object_foreach((json_t *)meta, key, value) {
		const char *v = json_string_value(value);
		snprintf(name, sizeof(name), "%s%s", FILES_META_PREFIX, key);
		if (fsetxattr(fd, name, v, strlen(v), 0) < 0)
			return herr_sys(err, -errno, "setting attribute '%s'", name);
	}
	return 0;
}

/*
 * The steps that touch the file system by path, run with the user's
 * credentials (see creds.c): parent directories, the open, ownership and
 * metadata. Symlinks are followed, as envd does; with the user's
 * credentials that reaches only what the user could open themselves.
 * Anything that is not a regular file is refused before it is opened, so a
 * FIFO cannot block us and a device is never opened for writing; O_NONBLOCK
 * and the fstat() after the open cover a swap in between.
 */
static unsigned open_steps(struct files_upload *up, const char *abs, int *fd,
			   struct files_msg *msg)
{
	const struct agent_user *u = &up->req->user;
	_cleanup_close_ int f = -1;
	char dir[PATH_MAX];
	struct herr err = { 0 };
	struct stat st;
	char *slash;
	int r;

	snprintf(dir, sizeof(dir), "%s", abs);
	slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		r = paths_mkdir_all(dir, u->uid, u->gid, &err);
		if (r < 0) {
			files_msg_set(msg, "error ensuring directories: %s", err.msg);
			return r == -ENOTDIR ? 500 : files_errno_status(-r);
		}
	}

	if (stat(abs, &st) == 0 && !S_ISREG(st.st_mode)) {
		if (S_ISDIR(st.st_mode))
			files_msg_set(msg, "path is a directory: %s", abs);
		else
			files_msg_set(msg, "path '%s' is not a regular file", abs);
		return 400;
	}
	f = open(abs, O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0666);
	if (f < 0) {
		r = errno;
		if (r == EISDIR)
			files_msg_set(msg, "path is a directory: %s", abs);
		else if (r == EACCES || r == EPERM)
			files_msg_set(msg, "permission denied: user '%s' cannot write '%s'",
				      u->name, abs);
		else if (r == ENOSPC || r == EDQUOT)
			files_msg_set(msg, "not enough disk space available (creating '%s')", abs);
		else
			files_msg_set(msg, "error opening file '%s': %s", abs, strerror(r));
		return r == ENXIO ? 400 : files_errno_status(r);
	}
	if (fstat(f, &st) < 0 || !S_ISREG(st.st_mode)) {
		files_msg_set(msg, "path '%s' is not a regular file", abs);
		return 400;
	}

	/*
	 * A new file already belongs to the user. An existing one the user may
	 * write but does not own keeps its owner: taking it over is more than
	 * the user could do alone.
	 */
	if (fchown(f, u->uid, u->gid) < 0 && errno != EPERM) {
		files_msg_set(msg, "error changing ownership of '%s': %s", abs,
			      strerror(errno));
		return 500;
	}
	if (replace_metadata(f, up->meta, &err) < 0) {
		files_msg_set(msg, "error writing metadata of '%s': %s", abs, err.msg);
		return 500;
	}
	*fd = steal_fd(&f);
	return 0;
}

/* Resolves src, checks it against the files already written, opens it. */
static int open_target(struct files_upload *up, const char *src)
{
	struct files_request *req = up->req;
	struct files_msg msg = { { 0 } };
	struct files_creds saved;
	struct herr err = { 0 };
	char abs[PATH_MAX];
	unsigned status;
	json_t *entry;

	if (paths_resolve(&req->user, src, req->workdir, abs, sizeof(abs), &err) < 0) {
		up_fail(up, 400, "error resolving path: %s", err.msg);
		return -EINVAL;
	}
	if (files_check_duplicate(up->results, abs, &msg) < 0) {
		up_fail(up, 400, "%s", msg.text);
		return -EEXIST;
	}
	if (json_array_size(up->results) >= FILES_MAX_PER_REQUEST) {
		up_fail(up, 400, "too many files in one upload request (limit %d)",
			FILES_MAX_PER_REQUEST);
		return -E2BIG;
	}

	if (files_creds_enter(&req->user, &saved, &err) < 0) {
		up_fail(up, 500, "%s", err.msg);
		return -EPERM;
	}
	status = open_steps(up, abs, &up->fd, &msg);
	files_creds_leave(&saved);
	if (status) {
		up_fail(up, status, "%s", msg.text);
		return -EIO;
	}

	snprintf(up->target, sizeof(up->target), "%s", abs);
	entry = files_entry_json(abs, up->meta);
	if (!entry || json_array_append_new(up->results, entry) < 0) {
		up_fail(up, 500, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

static int write_file(struct files_upload *up, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(up->fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail_io(up, errno, "writing");
			return -EIO;
		}
		data += n;
		len -= (size_t)n;
		up->total += (uint64_t)n;
	}
	return 0;
}

static void close_file(struct files_upload *up)
{
	if (up->fd < 0)
		return;
	if (close(up->fd) < 0 && errno != EINTR) {
		up->fd = -1;
		fail_io(up, errno, "closing");
		return;
	}
	up->fd = -1;
}

static int same_str(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/*
 * libmicrohttpd reports a part's first call with off == 0, and may make
 * that first call with no data and then call again with off still 0. So
 * off == 0 starts a new part unless the current part has received nothing
 * yet and carries the same headers. The one case this merges wrongly is an
 * empty part followed by a part with identical headers; with a "path" query
 * or repeated filenames that upload would be refused anyway, here the
 * second part's data is written instead.
 */
static int is_new_part(const struct files_upload *up, const char *key, const char *filename,
		       const char *type, uint64_t off)
{
	if (off != 0)
		return 0;
	if (!up->part_seen || up->part_bytes > 0)
		return 1;
	return !same_str(up->part_name, key) || !same_str(up->part_filename, filename) ||
	       !same_str(up->part_type, type);
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static int start_part(struct files_upload *up, const char *key, const char *filename,
		      const char *type)
{
	struct files_msg msg = { { 0 } };
	const char *src;

	close_file(up);
	if (up->fail_status)
		return -EIO;
	free(up->part_name);
	free(up->part_filename);
	free(up->part_type);
	up->part_name = dup_or_null(key);
	up->part_filename = dup_or_null(filename);
	up->part_type = dup_or_null(type);
	up->part_seen = 1;
	up->part_bytes = 0;
	/* Only parts named "file" are files; envd skips the others. */
	up->part_is_file = key && strcmp(key, "file") == 0;
	if (!up->part_is_file)
		return 0;

	src = files_part_source(up->req->query_path, filename, &msg);
	if (!src) {
		up_fail(up, 400, "%s", msg.text);
		return -EINVAL;
	}
	return open_target(up, src);
}

static enum MHD_Result on_part_data(void *cls, enum MHD_ValueKind kind, const char *key,
				    const char *filename, const char *type,
				    const char *transfer_encoding, const char *data,
				    uint64_t off, size_t size)
{
	struct files_upload *up = cls;

	if (up->fail_status)
		return MHD_NO;
	if (is_new_part(up, key, filename, type, off) && start_part(up, key, filename, type) < 0)
		return MHD_NO;
	up->part_bytes += size;
	if (!up->part_is_file || size == 0)
		return MHD_YES;
	return write_file(up, data, size) == 0 ? MHD_YES : MHD_NO;
}

/* Plain body bytes (after any gzip) go to the file or the multipart parser. */
static void consume(struct files_upload *up, const char *data, size_t len)
{
	if (!up->multipart) {
		write_file(up, data, len);
		return;
	}
	if (MHD_post_process(up->pp, data, len) != MHD_YES)
		up_fail(up, 400, "malformed multipart/form-data body");
}

/*
 * Inflates through a fixed buffer. Several gzip members one after the
 * other are one stream (as gzip(1) and Go read them); anything after a
 * member that is not another member is an error.
 */
static void feed_gzip(struct files_upload *up, const char *data, size_t len)
{
	z_stream *z = &up->z;

	z->next_in = (unsigned char *)data;
	z->avail_in = (uInt)len;
	while (!up->fail_status) {
		if (up->z_member_done) {
			if (z->avail_in == 0)
				break;
			inflateReset(z);
			up->z_member_done = 0;
		}
		z->next_out = up->zout;
		z->avail_out = INFLATE_BUFFER_SIZE;
		int r = inflate(z, Z_NO_FLUSH);
		size_t produced = INFLATE_BUFFER_SIZE - z->avail_out;

		if (produced > 0)
			consume(up, (const char *)up->zout, produced);
		if (r == Z_STREAM_END) {
			up->z_member_done = 1;
			continue;
		}
		if (r == Z_BUF_ERROR || (r == Z_OK && z->avail_in == 0 && z->avail_out > 0))
			break; /* needs more input */
		if (r != Z_OK) {
			up_fail(up, 400, "error decompressing request body: %s",
				z->msg ? z->msg : "invalid gzip data");
			break;
		}
	}
}

void files_upload_feed(struct files_request *req, const char *data, size_t len)
{
	struct files_upload *up = req->up;

	if (up->fail_status)
		return; /* drain the rest of the body so the error can be answered */
	/* A body chunk is bounded by libmicrohttpd's connection buffer. */
	if (up->gzip)
		feed_gzip(up, data, len);
	else
		consume(up, data, len);
}

struct meta_ctx {
	struct files_upload *up;
	size_t total;
	int failed;
	struct files_msg msg;
};

static enum MHD_Result meta_header(void *cls, enum MHD_ValueKind kind, const char *key,
				   const char *value)
{
	struct meta_ctx *m = cls;

	if (files_meta_add(m->up->meta, &m->total, key, value, &m->msg) < 0) {
		m->failed = 1;
		return MHD_NO;
	}
	return MHD_YES;
}

static int media_type_is(const char *ct, const char *type)
{
	size_t n = strlen(type);

	while (*ct == ' ' || *ct == '\t')
		ct++;
	if (strncasecmp(ct, type, n) != 0)
		return 0;
	ct += n;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	return *ct == '\0' || *ct == ';';
}

static enum MHD_Result refuse(struct MHD_Connection *c, struct files_request *req,
			      unsigned status, const char *msg)
{
	log_info("files", NULL, "upload refused: user=%s status=%u %s", req->user.name, status,
		 msg);
	req->responded = 1;
	return http_send_error(c, status, "%s", msg);
}

static int start_inflate(struct files_upload *up)
{
	up->zout = malloc(INFLATE_BUFFER_SIZE);
	if (!up->zout || inflateInit2(&up->z, 16 + MAX_WBITS) != Z_OK)
		return -ENOMEM;
	up->z_ready = 1;
	return 0;
}

enum MHD_Result files_upload_begin(struct MHD_Connection *c, struct files_request *req)
{
	const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_TYPE);
	const char *ce = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_ENCODING);
	struct files_msg msg = { { 0 } };
	struct files_upload *up;
	int coding;

	up = calloc(1, sizeof(*up));
	if (!up)
		return MHD_NO;
	up->fd = -1;
	up->req = req;
	req->up = up;
	up->meta = json_object();
	up->results = json_array();
	if (!up->meta || !up->results)
		return refuse(c, req, 500, "out of memory");

	coding = files_body_coding(ce, &msg);
	if (coding < 0) {
		char text[sizeof(msg.text) + 64];
		snprintf(text, sizeof(text), "error decompressing request body: %s", msg.text);
		return refuse(c, req, 400, text);
	}

	struct meta_ctx m = { .up = up };
	MHD_get_connection_values(c, MHD_HEADER_KIND, meta_header, &m);
	if (m.failed)
		return refuse(c, req, 400, m.msg.text);

	if (ct && media_type_is(ct, "application/octet-stream")) {
		if (!req->query_path)
			return refuse(c, req, 400,
				      "path query parameter is required for raw body upload");
		if (open_target(up, req->query_path) < 0)
			return refuse(c, req, up->fail_status, up->fail_msg);
	} else if (ct && strncasecmp(ct, "multipart/", 10) == 0) {
		up->multipart = 1;
		up->pp = MHD_create_post_processor(c, POST_BUFFER_SIZE, on_part_data, up);
		if (!up->pp)
			return refuse(c, req, 400, "unsupported multipart body: expected "
				      "multipart/form-data with a boundary parameter");
	} else {
		char text[HERR_MSG_MAX];
		snprintf(text, sizeof(text), "unsupported content type: %.200s, expected "
			 "multipart/form-data or application/octet-stream", ct ? ct : "");
		return refuse(c, req, 400, text);
	}

	up->gzip = coding == 1;
	if (up->gzip && start_inflate(up) < 0)
		return refuse(c, req, 500, "cannot start gzip decompression");
	return MHD_YES;
}

static void finish_body(struct files_upload *up)
{
	if (up->gzip && !up->fail_status && !up->z_member_done)
		up_fail(up, 400, "error decompressing request body: unexpected end of gzip "
			"stream");
	if (up->multipart) {
		enum MHD_Result r = MHD_destroy_post_processor(up->pp);
		up->pp = NULL;
		if (r != MHD_YES)
			up_fail(up, 400, "malformed multipart/form-data body: it ends before "
				"the closing boundary");
	}
	close_file(up);
	if (!up->fail_status && json_array_size(up->results) == 0)
		up_fail(up, 400, "no file in the upload: the multipart body has no part "
			"named 'file'");
}

enum MHD_Result files_upload_finish(struct MHD_Connection *c, struct files_request *req)
{
	struct files_upload *up = req->up;
	char *json;
	enum MHD_Result ret;

	finish_body(up);
	if (up->fail_status) {
		log_warn("files", NULL, "upload failed: user=%s status=%u %s", req->user.name,
			 up->fail_status, up->fail_msg);
		return http_send_error(c, up->fail_status, "%s", up->fail_msg);
	}
	json = json_dumps(up->results, JSON_COMPACT);
	if (!json)
		return http_send_error(c, 500, "out of memory");
	log_info("files", NULL, "upload done: user=%s files=%zu bytes=%llu", req->user.name,
		 json_array_size(up->results), (unsigned long long)up->total);
	ret = http_send_json(c, 200, json, strlen(json));
	free(json);
	return ret;
}

void files_upload_free(struct files_upload *up)
{
	if (!up)
		return;
	if (up->pp)
		MHD_destroy_post_processor(up->pp);
	if (up->fd >= 0)
		close(up->fd);
	if (up->z_ready)
		inflateEnd(&up->z);
	free(up->zout);
	free(up->part_name);
	free(up->part_filename);
	free(up->part_type);
	json_decref(up->meta);
	json_decref(up->results);
	free(up);
}
