/*
 * GET /files: sends one file to the client.
 *
 * A regular file on a disk-backed file system goes out with its size from
 * fstat() as Content-Length, read by offset in large blocks. Everything else
 * is streamed chunked, read to EOF in blocks and never held whole in memory:
 * files whose size stat() cannot be trusted (procfs and sysfs report 0 or
 * 4096, FUSE may make sizes up), empty-looking files, and gzip answers.
 * Not sendfile(2): see dl_sized_read() for why.
 *
 * gzip is used only when the client refuses identity, unless the operator
 * turned negotiation on (files_set_download_gzip). Range and conditional
 * requests are not supported: the whole file is sent with 200, which HTTP
 * allows.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <zlib.h>

#include "cleanup.h"
#include "files_req.h"
#include "http.h"
#include "log.h"
#include "paths.h"

#define BLOCK_SIZE (64 * 1024)
/* One pread and one send of a file with a known size. */
#define SIZED_BLOCK (512 * 1024)
/* files_guess_type() looks at no more than this many leading bytes. */
#define SNIFF_SIZE 512

/*
 * Written once at start-up, before the HTTP server's threads exist, and
 * only read afterwards.
 */
static enum files_gzip_mode gzip_mode = FILES_GZIP_FALLBACK;

int files_set_download_gzip(const char *mode, struct herr *err)
{
	if (!mode || strcmp(mode, "fallback") == 0)
		gzip_mode = FILES_GZIP_FALLBACK;
	else if (strcmp(mode, "negotiate") == 0)
		gzip_mode = FILES_GZIP_NEGOTIATE;
	else
		return herr_set(err, -EINVAL, "download-gzip: '%s' is not one of "
				"fallback, negotiate", mode);
	return 0;
}

/* Owned by the MHD response; freed by its free callback. */
struct dl_stream {
	int fd;
	int gzip;
	int eof;
	int z_done;
	z_stream z;
	unsigned char *head; /* bytes read before answering (type sniffing) */
	size_t head_len, head_off;
	unsigned char *in;   /* gzip input block */
	char path[PATH_MAX]; /* for log lines */
};

static void dl_free(void *cls)
{
	struct dl_stream *s = cls;

	if (s->fd >= 0)
		close(s->fd);
	if (s->gzip)
		deflateEnd(&s->z);
	free(s->head);
	free(s->in);
	free(s);
}

static ssize_t read_some(int fd, void *buf, size_t max)
{
	ssize_t n;

	do
		n = read(fd, buf, max);
	while (n < 0 && errno == EINTR);
	return n;
}

/* Next plain bytes: the pre-read head first, then the file. */
static ssize_t dl_next(struct dl_stream *s, char *buf, size_t max)
{
	if (s->head_off < s->head_len) {
		size_t n = s->head_len - s->head_off;
		if (n > max)
			n = max;
		memcpy(buf, s->head + s->head_off, n);
		s->head_off += n;
		return (ssize_t)n;
	}
	return read_some(s->fd, buf, max);
}

static ssize_t dl_identity(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct dl_stream *s = cls;
	ssize_t n = dl_next(s, buf, max);

	if (n == 0)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (n < 0) {
		log_warn("files", NULL, "reading '%s' for download: %s", s->path,
			 strerror(errno));
		return MHD_CONTENT_READER_END_WITH_ERROR;
	}
	return n;
}

/*
 * Fills buf with compressed bytes. Deflate may swallow input without output
 * for a while, so input is fed until some output appears or the stream ends;
 * returning 0 would make libmicrohttpd poll us again for nothing.
 */
static ssize_t dl_gzip(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct dl_stream *s = cls;

	if (s->z_done)
		return MHD_CONTENT_READER_END_OF_STREAM;
	s->z.next_out = (unsigned char *)buf;
	s->z.avail_out = (uInt)max;
	while (s->z.avail_out == max) {
		if (s->z.avail_in == 0 && !s->eof) {
			ssize_t n = dl_next(s, (char *)s->in, BLOCK_SIZE);
			if (n < 0) {
				log_warn("files", NULL, "reading '%s' for download: %s", s->path,
					 strerror(errno));
				return MHD_CONTENT_READER_END_WITH_ERROR;
			}
			s->eof = n == 0;
			s->z.next_in = s->in;
			s->z.avail_in = (uInt)n;
		}
		int r = deflate(&s->z, s->eof ? Z_FINISH : Z_NO_FLUSH);
		if (r == Z_STREAM_END) {
			s->z_done = 1;
			break;
		}
		if (r != Z_OK && r != Z_BUF_ERROR)
			return MHD_CONTENT_READER_END_WITH_ERROR;
	}
	if (s->z.avail_out == max)
		return MHD_CONTENT_READER_END_OF_STREAM;
	return (ssize_t)(max - s->z.avail_out);
}

enum files_coding files_download_coding(const char *accept, enum files_gzip_mode mode)
{
	enum files_coding c = files_pick_coding(accept);

	/*
	 * files_pick_coding() honours the client's preference. In fallback
	 * mode identity wins whenever it is acceptable at all: a client that
	 * merely names gzip (Node's fetch always does) gets the bytes as they
	 * are, and gzip is kept for the clients that refuse identity.
	 */
	if (mode == FILES_GZIP_FALLBACK && c == FILES_CODING_GZIP && files_identity_ok(accept))
		return FILES_CODING_IDENTITY;
	return c;
}

/*
 * gzip costs far more CPU than it saves on data that does not compress (on
 * a small sandbox deflate runs at a few tens of MB/s, below loopback speed).
 * When the client also accepts identity, the first block decides: if level
 * 1 saves less than a tenth of it, the file goes out uncompressed.
 */
static int worth_compressing(const unsigned char *head, size_t n)
{
	uLongf out_len = compressBound((uLong)n);
	_cleanup_free_ unsigned char *out = malloc(out_len);

	if (n < 4096 || !out)
		return 1; /* too little to judge: honour the client's wish */
	if (compress2(out, &out_len, head, (uLong)n, 1) != Z_OK)
		return 1;
	return out_len < n - n / 10;
}

/*
 * Opens the file with the user's credentials (creds.c explains why): the
 * user can download exactly what they could read themselves. O_NONBLOCK
 * keeps a FIFO from blocking the open; non-regular files are refused below.
 */
static int open_as_user(const struct files_request *req, const char *abs, int *fd,
			struct herr *err)
{
	struct files_creds saved;
	int r = files_creds_enter(&req->user, &saved, err);

	if (r < 0)
		return r;
	*fd = open(abs, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	r = *fd < 0 ? -errno : 0;
	files_creds_leave(&saved);
	return r;
}

static enum MHD_Result refuse_open(struct MHD_Connection *c, const char *abs, int r,
				   const struct files_request *req)
{
	if (r == -ENOENT || r == -ENOTDIR)
		return http_send_error(c, 404, "path '%s' does not exist", abs);
	if (r == -EACCES || r == -EPERM)
		return http_send_error(c, 403, "permission denied: user '%s' cannot read '%s'",
				       req->user.name, abs);
	return http_send_error(c, files_errno_status(-r), "error opening file '%s': %s", abs,
			       strerror(-r));
}

static int add_headers(struct MHD_Response *resp, const char *abs, const struct stat *st,
		       const char *type, int gzip)
{
	const char *slash = strrchr(abs, '/');
	char disposition[PATH_MAX * 3 + 64];
	char date[64];
	int ok = 1;

	files_http_date(st->st_mtime, date, sizeof(date));
	ok &= MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type) == MHD_YES;
	ok &= MHD_add_response_header(resp, MHD_HTTP_HEADER_LAST_MODIFIED, date) == MHD_YES;
	ok &= MHD_add_response_header(resp, MHD_HTTP_HEADER_VARY, "Accept-Encoding") == MHD_YES;
	if (files_disposition(slash ? slash + 1 : abs, disposition, sizeof(disposition)) == 0)
		ok &= MHD_add_response_header(resp, "Content-Disposition", disposition) ==
		      MHD_YES;
	if (gzip)
		ok &= MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip") ==
		      MHD_YES;
	return ok ? 0 : -ENOMEM;
}

static enum MHD_Result send_stream(struct MHD_Connection *c, struct dl_stream *s,
				   const char *abs, const struct stat *st, const char *type)
{
	int gzip = s->gzip;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (gzip && deflateInit2(&s->z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
		s->gzip = 0;
		dl_free(s);
		return http_send_error(c, 500, "cannot start gzip compression");
	}
	if (!gzip && s->head_len == 0) {
		/* Empty: an explicit Content-Length 0 is what the SDK looks for. */
		dl_free(s);
		resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	} else {
		resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, BLOCK_SIZE,
			gzip ? dl_gzip : dl_identity, s, dl_free);
		if (!resp)
			dl_free(s);
	}
	if (!resp || add_headers(resp, abs, st, type, gzip) < 0) {
		if (resp)
			MHD_destroy_response(resp);
		return http_send_error(c, 500, "cannot build the response for '%s'", abs);
	}
	http_add_common_headers(resp);
	ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/*
 * Whether fstat()'s size can be sent as Content-Length. Only a regular,
 * non-empty file qualifies, and only on a file system that stores what it
 * reports: the pseudo file systems below make
 * their contents up on read and report 0 or a page as the size, and FUSE
 * servers may do the same (lxcfs does for /proc files). Those keep the
 * streaming path, which reads to EOF whatever stat() said.
 */
static int size_is_trustworthy(int fd, const struct stat *st)
{
	struct statfs fs;

	if (!S_ISREG(st->st_mode) || st->st_size <= 0)
		return 0;
	if (fstatfs(fd, &fs) < 0)
		return 0;
	switch ((unsigned long)fs.f_type) {
	case PROC_SUPER_MAGIC:
	case SYSFS_MAGIC:
	case DEBUGFS_MAGIC:
	case TRACEFS_MAGIC:
	case SECURITYFS_MAGIC:
	case SELINUX_MAGIC:
	case SMACK_MAGIC:
	case CGROUP_SUPER_MAGIC:
	case CGROUP2_SUPER_MAGIC:
	case PSTOREFS_MAGIC:
	case EFIVARFS_MAGIC:
	case BPF_FS_MAGIC:
	case BINFMTFS_MAGIC:
	case RDTGROUP_SUPER_MAGIC:
	case FUSE_SUPER_MAGIC:
	case 0x62656570: /* configfs */
		return 0;
	default:
		return 1;
	}
}

/* A file whose size is known: read by offset, so nothing needs rewinding. */
struct dl_sized {
	int fd;
	uint64_t size;
	char path[PATH_MAX]; /* for log lines */
};

static void dl_sized_free(void *cls)
{
	struct dl_sized *f = cls;

	close(f->fd);
	free(f);
}

/*
 * A file that shrank while being sent ends with an error: libmicrohttpd then
 * closes the connection, and the client, holding a Content-Length, sees a
 * short body rather than a complete-looking file. (libmicrohttpd's own fd
 * responses do not do this: on 0.9.75, sendfile() returning 0 past the new
 * end makes the connection thread retry forever at full CPU.)
 */
static ssize_t dl_sized_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct dl_sized *f = cls;
	ssize_t n;

	if (max > f->size - pos)
		max = (size_t)(f->size - pos);
	do
		n = pread(f->fd, buf, max, (off_t)pos);
	while (n < 0 && errno == EINTR);
	if (n > 0)
		return n;
	if (n == 0)
		log_warn("files", NULL, "'%s' shrank during its download: %llu of %llu bytes "
			 "sent", f->path, (unsigned long long)pos, (unsigned long long)f->size);
	else
		log_warn("files", NULL, "reading '%s' for download: %s", f->path, strerror(errno));
	return MHD_CONTENT_READER_END_WITH_ERROR;
}

/*
 * A file with a size to trust goes out with Content-Length, read by
 * offset in large blocks (one pread and one send per SIZED_BLOCK). The size
 * is the one at open time: bytes appended later are not sent.
 */
static enum MHD_Result send_sized(struct MHD_Connection *c, int *fd, const char *abs,
				  const struct stat *st)
{
	unsigned char head[SNIFF_SIZE];
	struct MHD_Response *resp;
	struct dl_sized *f;
	enum MHD_Result ret;
	ssize_t n;

	do
		n = pread(*fd, head, sizeof(head), 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return http_send_error(c, 500, "reading '%s': %s", abs, strerror(errno));
	f = calloc(1, sizeof(*f));
	if (!f)
		return http_send_error(c, 500, "out of memory");
	f->size = (uint64_t)st->st_size;
	snprintf(f->path, sizeof(f->path), "%s", abs);
	resp = MHD_create_response_from_callback(f->size, SIZED_BLOCK, dl_sized_read, f,
						 dl_sized_free);
	if (!resp) {
		free(f);
		return http_send_error(c, 500, "cannot build the response for '%s'", abs);
	}
	f->fd = steal_fd(fd); /* the response owns it now */
	if (add_headers(resp, abs, st, files_guess_type(abs, head, (size_t)n), 0) < 0) {
		MHD_destroy_response(resp);
		return http_send_error(c, 500, "cannot build the response for '%s'", abs);
	}
	http_add_common_headers(resp);
	ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

enum MHD_Result files_download(struct MHD_Connection *c, struct files_request *req)
{
	const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
							 MHD_HTTP_HEADER_ACCEPT_ENCODING);
	char abs[PATH_MAX];
	struct herr err = { 0 };
	_cleanup_close_ int fd = -1;
	struct stat st;
	enum files_coding coding;
	struct dl_stream *s;
	ssize_t n;
	int r;

	if (paths_resolve(&req->user, req->query_path ? req->query_path : "", req->workdir,
			  abs, sizeof(abs), &err) < 0)
		return http_send_error(c, 400, "error resolving path: %s", err.msg);

	r = open_as_user(req, abs, &fd, &err);
	if (r < 0 && err.code)
		return http_send_error(c, 500, "%s", err.msg);
	if (r < 0)
		return refuse_open(c, abs, r, req);
	if (fstat(fd, &st) < 0)
		return http_send_error(c, 500, "fstat '%s': %s", abs, strerror(errno));
	if (S_ISDIR(st.st_mode))
		return http_send_error(c, 400, "path '%s' is a directory", abs);
	if (!S_ISREG(st.st_mode))
		return http_send_error(c, 400, "path '%s' is not a regular file", abs);

	coding = files_download_coding(accept, gzip_mode);
	if (coding == FILES_CODING_NONE)
		return http_send_error(c, 406, "no acceptable encoding found, supported: [gzip]");
	if (coding == FILES_CODING_IDENTITY && size_is_trustworthy(fd, &st))
		return send_sized(c, &fd, abs, &st);

	s = calloc(1, sizeof(*s));
	if (!s || !(s->head = malloc(BLOCK_SIZE))) {
		free(s);
		return http_send_error(c, 500, "out of memory");
	}
	s->fd = -1;
	snprintf(s->path, sizeof(s->path), "%s", abs);
	n = read_some(fd, s->head, BLOCK_SIZE);
	if (n < 0) {
		r = -errno;
		dl_free(s);
		return http_send_error(c, 500, "reading '%s': %s", abs, strerror(-r));
	}
	s->head_len = (size_t)n;
	s->eof = 0;
	/*
	 * An empty file goes out as Content-Length 0, and incompressible data
	 * as it is, whenever identity is allowed.
	 */
	s->gzip = coding == FILES_CODING_GZIP &&
		  !(files_identity_ok(accept) && (n == 0 || !worth_compressing(s->head, (size_t)n)));
	if (s->gzip && !(s->in = malloc(BLOCK_SIZE))) {
		dl_free(s);
		return http_send_error(c, 500, "out of memory");
	}
	s->fd = steal_fd(&fd);
	return send_stream(c, s, abs, &st, files_guess_type(abs, s->head, s->head_len));
}
