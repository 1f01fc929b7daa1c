/*
 * The filesystem.Filesystem Connect service: request validation, path
 * resolution for the caller, envd's error codes and messages, and the glue
 * between RPC calls and the walk and watcher code.
 *
 * The agent runs as root; requests name paths on behalf of ctx->user. Paths
 * are resolved with paths_resolve (home-relative, cleaned) and directories we
 * create (MakeDir, Move's missing parents) are given to that user, as envd
 * does, so the user can use what they asked for.
 *
 * Every method touches the file system with the user's file-system uid, gid
 * and groups (the switch /files uses, files/creds.c explains why it is safe
 * in a threaded server). Upstream envd runs these as root; here a user can
 * only stat, list, move, remove or watch what the kernel lets that user
 * reach, and a symlink the user swaps in mid-call cannot lead root's
 * privileges elsewhere, because there are none to lead. Root stays root.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "cleanup.h"
#include "files.h"
#include "fs_internal.h"
#include "log.h"
#include "paths.h"
#include "state.h"

static int resolve(struct rpc_ctx *ctx, const char *in, char *out, struct rpc_status *st)
{
	char workdir[PATH_MAX];
	struct herr err;

	state_default_workdir(workdir, sizeof(workdir));
	if (paths_resolve(&ctx->user, in ? in : "", workdir, out, PATH_MAX, &err) < 0)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err.msg);
	return 0;
}

/* The kernel refused the caller (methods run with the caller's credentials). */
static bool denied(int negative_errno)
{
	return negative_errno == -EACCES || negative_errno == -EPERM;
}

static Filesystem__EntryInfo *new_entry(struct rpc_ctx *ctx)
{
	Filesystem__EntryInfo *e = rpc_alloc(ctx, sizeof(*e));

	filesystem__entry_info__init(e);
	return e;
}

/* Entry of a path the caller asked about: missing -> not_found. */
static int entry_or_fail(struct rpc_ctx *ctx, const char *path, Filesystem__EntryInfo **out,
			 struct rpc_status *st)
{
	struct herr err;
	Filesystem__EntryInfo *e = new_entry(ctx);
	int r = filesystem_entry_info(ctx, path, e, &err);

	if (r == -ENOENT || r == -ENOTDIR)
		return rpc_fail(st, RPC_NOT_FOUND, "file not found: %s", path);
	if (r < 0)
		return rpc_fail(st, RPC_INTERNAL, "error getting file info: %s", err.msg);
	*out = e;
	return 0;
}

static int fs_stat(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
		   ProtobufCMessage *resp_msg, struct rpc_status *st)
{
	const Filesystem__StatRequest *req = (const void *)req_msg;
	Filesystem__StatResponse *resp = (void *)resp_msg;
	char path[PATH_MAX];

	if (resolve(ctx, req->path, path, st) < 0)
		return -1;
	return entry_or_fail(ctx, path, &resp->entry, st);
}

static int mkdir_fail(struct rpc_status *st, const char *what, const char *path,
		      const struct herr *err)
{
	if (err->code == -ENOTDIR || err->code == -EEXIST)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s '%s': %s", what, path, err->msg);
	if (err->code == -ENAMETOOLONG || err->code == -EINVAL)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err->msg);
	return rpc_fail(st, RPC_INTERNAL, "%s '%s': %s", what, path, err->msg);
}

static int fs_make_dir(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
		       ProtobufCMessage *resp_msg, struct rpc_status *st)
{
	const Filesystem__MakeDirRequest *req = (const void *)req_msg;
	Filesystem__MakeDirResponse *resp = (void *)resp_msg;
	char path[PATH_MAX];
	struct stat sb;
	struct herr err;

	if (resolve(ctx, req->path, path, st) < 0)
		return -1;
	if (stat(path, &sb) == 0) {
		if (S_ISDIR(sb.st_mode))
			return rpc_fail(st, RPC_ALREADY_EXISTS, "directory already exists: %s",
					path);
		return rpc_fail(st, RPC_INVALID_ARGUMENT,
				"path already exists but it is not a directory: %s", path);
	}
	if (errno != ENOENT && errno != ENOTDIR)
		return rpc_fail(st, RPC_INTERNAL, "error getting file info of '%s': %s", path,
				strerror(errno));
	if (paths_mkdir_all(path, ctx->user.uid, ctx->user.gid, &err) < 0)
		return mkdir_fail(st, "error creating directory", path, &err);
	return entry_or_fail(ctx, path, &resp->entry, st);
}

static void parent_of(const char *path, char *out)
{
	char *slash;

	strcpy(out, path);
	slash = strrchr(out, '/');
	if (slash == out)
		out[1] = '\0';
	else if (slash)
		*slash = '\0';
}

static int fs_move(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
		   ProtobufCMessage *resp_msg, struct rpc_status *st)
{
	const Filesystem__MoveRequest *req = (const void *)req_msg;
	Filesystem__MoveResponse *resp = (void *)resp_msg;
	char src[PATH_MAX], dst[PATH_MAX], parent[PATH_MAX];
	struct stat sb;
	struct herr err;

	if (resolve(ctx, req->source, src, st) < 0 || resolve(ctx, req->destination, dst, st) < 0)
		return -1;
	if (lstat(src, &sb) < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return rpc_fail(st, RPC_NOT_FOUND, "source file not found: %s", src);
		return rpc_fail(st, RPC_INTERNAL, "error getting file info of '%s': %s", src,
				strerror(errno));
	}
	parent_of(dst, parent);
	if (paths_mkdir_all(parent, ctx->user.uid, ctx->user.gid, &err) < 0)
		return mkdir_fail(st, "error creating parent directory", parent, &err);
	if (rename(src, dst) < 0) {
		int e = errno;
		if (e == ENOENT)
			return rpc_fail(st, RPC_NOT_FOUND, "source file not found: %s", src);
		return rpc_fail(st, denied(-e) ? RPC_PERMISSION_DENIED : RPC_INTERNAL,
				"error renaming '%s' to '%s': %s", src, dst, strerror(e));
	}
	return entry_or_fail(ctx, dst, &resp->entry, st);
}

/* ListDir follows symlinks for the root (filepath.EvalSymlinks upstream). */
static int list_root(const char *path, char *real, struct rpc_status *st)
{
	struct stat sb;

	if (!realpath(path, real)) {
		int e = errno;
		if (e == ENOENT || e == ENOTDIR)
			return rpc_fail(st, RPC_NOT_FOUND, "path not found: %s", path);
		if (e == ELOOP)
			return rpc_fail(st, RPC_FAILED_PRECONDITION,
					"cyclic symlink or chain of too many links at '%s'", path);
		return rpc_fail(st, denied(-e) ? RPC_PERMISSION_DENIED : RPC_INTERNAL,
				"error resolving symlink '%s': %s", path, strerror(e));
	}
	if (stat(real, &sb) < 0)
		return rpc_fail(st, errno == ENOENT ? RPC_NOT_FOUND : RPC_INTERNAL,
				"directory not found: %s: %s", path, strerror(errno));
	if (!S_ISDIR(sb.st_mode))
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "path is not a directory: %s", path);
	return 0;
}

static int fs_list_dir_rpc(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
			   ProtobufCMessage *resp_msg, struct rpc_status *st)
{
	const Filesystem__ListDirRequest *req = (const void *)req_msg;
	Filesystem__ListDirResponse *resp = (void *)resp_msg;
	char path[PATH_MAX], real[PATH_MAX];
	struct fs_mem mem = { .ctx = ctx };
	struct herr err;
	int r;

	if (resolve(ctx, req->path, path, st) < 0 || list_root(path, real, st) < 0)
		return -1;
	r = fs_list_dir(&mem, path, real, req->depth, &resp->entries, &resp->n_entries, &err);
	if (r == -E2BIG)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err.msg);
	if (r < 0)
		return rpc_fail(st, denied(r) ? RPC_PERMISSION_DENIED : RPC_INTERNAL,
				"error reading directory %s: %s", path, err.msg);
	return 0;
}

static int fs_remove(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
		     ProtobufCMessage *resp_msg, struct rpc_status *st)
{
	const Filesystem__RemoveRequest *req = (const void *)req_msg;
	char path[PATH_MAX];
	struct herr err;

	(void)resp_msg;
	if (resolve(ctx, req->path, path, st) < 0)
		return -1;
	if (strcmp(path, "/") == 0)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "refusing to remove '/'");
	if (fs_remove_all(path, &err) < 0)
		return rpc_fail(st, denied(err.code) ? RPC_PERMISSION_DENIED : RPC_INTERNAL,
				"error removing file or directory: %s", err.msg);
	return 0;
}

/* Checks shared by WatchDir and CreateWatcher. */
static int watch_check(const char *path, bool allow_network, struct rpc_status *st)
{
	struct stat sb;
	struct statfs sfs;

	if (stat(path, &sb) < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return rpc_fail(st, RPC_NOT_FOUND, "path %s not found", path);
		return rpc_fail(st, RPC_INTERNAL, "error statting path %s: %s", path,
				strerror(errno));
	}
	if (!S_ISDIR(sb.st_mode))
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "path %s not a directory", path);
	if (statfs(path, &sfs) < 0)
		return rpc_fail(st, RPC_INTERNAL, "error checking mount status of %s: %s", path,
				strerror(errno));
	if (!allow_network && fs_is_network_fs(sfs.f_type))
		return rpc_fail(st, RPC_INVALID_ARGUMENT,
				"cannot watch path on network filesystem: %s", path);
	return 0;
}

static int watch_start(struct rpc_ctx *ctx, const char *req_path, bool recursive,
		       bool include_entry, bool allow_network, struct fs_watcher **out,
		       struct rpc_status *st)
{
	char path[PATH_MAX];
	struct fs_watch_opts opts = { .path = path, .recursive = recursive,
				      .include_entry = include_entry, .user = &ctx->user };
	struct herr err;

	if (resolve(ctx, req_path, path, st) < 0 || watch_check(path, allow_network, st) < 0)
		return -1;
	if (fs_watcher_create(&opts, out, &err) < 0) {
		if (err.code == -ENOENT || err.code == -ENOTDIR)
			return rpc_fail(st, RPC_NOT_FOUND, "path %s not found", path);
		if (err.code == -EACCES || err.code == -EPERM)
			return rpc_fail(st, RPC_PERMISSION_DENIED, "error creating watcher: %s",
					err.msg);
		return rpc_fail(st, RPC_INTERNAL, "error creating watcher: %s", err.msg);
	}
	return 0;
}

/*
 * watch_start with the caller's credentials. Only the checks and the
 * initial watches run switched: threads created while switched would
 * inherit the user's credentials, so the WatchDir sender starts after.
 */
static int watch_start_as_caller(struct rpc_ctx *ctx, const char *req_path, bool recursive,
				 bool include_entry, bool allow_network,
				 struct fs_watcher **out, struct rpc_status *st)
{
	struct files_creds saved;
	struct herr err;
	int r;

	if (files_creds_enter(&ctx->user, &saved, &err) < 0)
		return rpc_fail(st, RPC_INTERNAL, "%s", err.msg);
	r = watch_start(ctx, req_path, recursive, include_entry, allow_network, out, st);
	files_creds_leave(&saved);
	return r;
}

/*
 * A WatchDir stream: a sender thread per stream moves events from the
 * watcher's queue to the client, so a slow client only ever blocks its own
 * thread, never the engine or other watchers.
 */
struct watch_stream {
	struct fs_watcher *w;
	struct rpc_stream *s;
};

static int send_blobs(struct rpc_stream *s, struct fs_event_blob *list)
{
	for (; list; list = list->next) {
		Filesystem__FilesystemEvent *ev = (void *)protobuf_c_message_unpack(
			&filesystem__filesystem_event__descriptor, NULL, list->len, list->data);
		Filesystem__WatchDirResponse msg = FILESYSTEM__WATCH_DIR_RESPONSE__INIT;
		int r;

		if (!ev)
			return -ENOMEM;
		msg.event_case = FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_FILESYSTEM;
		msg.filesystem = ev;
		r = rpc_stream_send(s, &msg.base);
		protobuf_c_message_free_unpacked(&ev->base, NULL);
		if (r < 0)
			return r;
	}
	return 0;
}

static void *watch_sender(void *arg)
{
	struct watch_stream *ws = arg;

	for (;;) {
		struct fs_event_blob *events = NULL;
		struct herr err;
		int r = fs_watcher_take(ws->w, -1, &events, &err);

		if (r < 0) {
			struct rpc_status st;
			rpc_fail(&st, RPC_INTERNAL, "%s", err.msg);
			rpc_stream_end(ws->s, &st);
			break;
		}
		if (!events) {
			if (fs_watcher_stopped(ws->w))
				break;
			continue;
		}
		r = send_blobs(ws->s, events);
		fs_event_blobs_free(events);
		if (r < 0)
			break;
	}
	fs_watcher_stop(ws->w);
	fs_watcher_unref(ws->w);
	rpc_stream_unref(ws->s);
	free(ws);
	return NULL;
}

/* Deadline, client gone or end: the inotify watches go with the watcher. */
static void watch_on_close(void *arg, enum rpc_close_reason reason)
{
	struct fs_watcher *w = arg;

	(void)reason;
	fs_watcher_stop(w);
	fs_watcher_unref(w);
}

static int spawn_sender(struct fs_watcher *w, struct rpc_stream *s, struct rpc_status *st)
{
	struct watch_stream *ws = malloc(sizeof(*ws));
	pthread_attr_t attr;
	pthread_t t;
	sigset_t all, old;
	int r;

	if (!ws)
		abort();
	fs_watcher_ref(w);
	rpc_stream_ref(s);
	*ws = (struct watch_stream){ .w = w, .s = s };
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&t, &attr, watch_sender, ws);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (r != 0) {
		fs_watcher_unref(w);
		rpc_stream_unref(s);
		free(ws);
		return rpc_fail(st, RPC_INTERNAL, "starting the watch stream: %s", strerror(r));
	}
	return 0;
}

static int fs_watch_dir(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
			struct rpc_stream *s, struct rpc_status *st)
{
	const Filesystem__WatchDirRequest *req = (const void *)req_msg;
	Filesystem__WatchDirResponse start = FILESYSTEM__WATCH_DIR_RESPONSE__INIT;
	Filesystem__WatchDirResponse__StartEvent start_ev =
		FILESYSTEM__WATCH_DIR_RESPONSE__START_EVENT__INIT;
	struct fs_watcher *w;

	if (watch_start_as_caller(ctx, req->path, req->recursive, req->include_entry,
				  req->allow_network_mounts, &w, st) < 0)
		return -1;
	/* From here the stream owns our reference; on_close drops it. */
	rpc_stream_on_close(s, watch_on_close, w);

	start.event_case = FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_START;
	start.start = &start_ev;
	if (rpc_stream_send(s, &start.base) < 0)
		return rpc_fail(st, RPC_UNKNOWN, "error sending start event");
	return spawn_sender(w, s, st);
}

static int fs_create_watcher(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
			     ProtobufCMessage *resp_msg, struct rpc_status *st)
{
	const Filesystem__CreateWatcherRequest *req = (const void *)req_msg;
	Filesystem__CreateWatcherResponse *resp = (void *)resp_msg;
	struct fs_watcher *w;
	struct herr err;

	if (watch_start(ctx, req->path, req->recursive, req->include_entry,
			req->allow_network_mounts, &w, st) < 0)
		return -1;
	if (fs_registry_add(w, &err) < 0) {
		fs_watcher_stop(w);
		fs_watcher_unref(w);
		return rpc_fail(st, RPC_RESOURCE_EXHAUSTED, "%s", err.msg);
	}
	resp->watcher_id = rpc_strdup(ctx, fs_watcher_id(w));
	fs_watcher_unref(w);
	return 0;
}

/* Unpacks queued events into the call's arena. */
static void *arena_pb_alloc(void *data, size_t size)
{
	return rpc_alloc(data, size);
}

static void arena_pb_free(void *data, void *ptr)
{
	(void)data;
	(void)ptr;
}

static int fs_get_watcher_events(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
				 ProtobufCMessage *resp_msg, struct rpc_status *st)
{
	const Filesystem__GetWatcherEventsRequest *req = (const void *)req_msg;
	Filesystem__GetWatcherEventsResponse *resp = (void *)resp_msg;
	ProtobufCAllocator alloc = { arena_pb_alloc, arena_pb_free, ctx };
	struct fs_watcher *w = fs_registry_get(req->watcher_id);
	struct fs_event_blob *events = NULL;
	struct herr err;
	size_t n = 0;
	int r;

	if (!w)
		return rpc_fail(st, RPC_NOT_FOUND, "watcher with id %s not found",
				req->watcher_id);
	r = fs_watcher_take(w, 0, &events, &err);
	fs_watcher_unref(w);
	if (r < 0)
		return rpc_fail(st, RPC_INTERNAL, "%s", err.msg);

	for (struct fs_event_blob *b = events; b; b = b->next)
		n++;
	resp->events = n ? rpc_alloc(ctx, n * sizeof(*resp->events)) : NULL;
	for (struct fs_event_blob *b = events; b; b = b->next) {
		ProtobufCMessage *m = protobuf_c_message_unpack(
			&filesystem__filesystem_event__descriptor, &alloc, b->len, b->data);
		if (m)
			resp->events[resp->n_events++] = (Filesystem__FilesystemEvent *)m;
	}
	fs_event_blobs_free(events);
	return 0;
}

static int fs_remove_watcher(struct rpc_ctx *ctx, const ProtobufCMessage *req_msg,
			     ProtobufCMessage *resp_msg, struct rpc_status *st)
{
	const Filesystem__RemoveWatcherRequest *req = (const void *)req_msg;
	struct fs_watcher *w = fs_registry_take(req->watcher_id);

	(void)ctx;
	(void)resp_msg;
	if (!w)
		return rpc_fail(st, RPC_NOT_FOUND, "watcher with id %s not found",
				req->watcher_id);
	fs_watcher_stop(w);
	fs_watcher_unref(w);
	return 0;
}

static const Filesystem__WatchDirResponse__KeepAlive keepalive_ev =
	FILESYSTEM__WATCH_DIR_RESPONSE__KEEP_ALIVE__INIT;
static const Filesystem__WatchDirResponse keepalive_msg = {
	PROTOBUF_C_MESSAGE_INIT(&filesystem__watch_dir_response__descriptor),
	FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_KEEPALIVE,
	{ .keepalive = (Filesystem__WatchDirResponse__KeepAlive *)&keepalive_ev },
};

/* Runs a method with the caller's file-system credentials. */
static int as_caller(rpc_unary_fn fn, struct rpc_ctx *ctx, const ProtobufCMessage *req,
		     ProtobufCMessage *resp, struct rpc_status *st)
{
	struct files_creds saved;
	struct herr err;
	int r;

	if (files_creds_enter(&ctx->user, &saved, &err) < 0)
		return rpc_fail(st, RPC_INTERNAL, "%s", err.msg);
	r = fn(ctx, req, resp, st);
	files_creds_leave(&saved);
	return r;
}

#define AS_CALLER(fn) \
	static int fn##_as_caller(struct rpc_ctx *ctx, const ProtobufCMessage *req, \
				  ProtobufCMessage *resp, struct rpc_status *st) \
	{ \
		return as_caller(fn, ctx, req, resp, st); \
	}

AS_CALLER(fs_stat)
AS_CALLER(fs_make_dir)
AS_CALLER(fs_move)
AS_CALLER(fs_list_dir_rpc)
AS_CALLER(fs_remove)
AS_CALLER(fs_create_watcher)

#define UNARY(name, fn, in, out) \
	{ "/filesystem.Filesystem/" name, &in##__descriptor, &out##__descriptor, fn, NULL, NULL }

const struct rpc_method filesystem_methods[] = {
	UNARY("Stat", fs_stat_as_caller, filesystem__stat_request, filesystem__stat_response),
	UNARY("MakeDir", fs_make_dir_as_caller, filesystem__make_dir_request,
	      filesystem__make_dir_response),
	UNARY("Move", fs_move_as_caller, filesystem__move_request, filesystem__move_response),
	UNARY("ListDir", fs_list_dir_rpc_as_caller, filesystem__list_dir_request,
	      filesystem__list_dir_response),
	UNARY("Remove", fs_remove_as_caller, filesystem__remove_request,
	      filesystem__remove_response),
	{ "/filesystem.Filesystem/WatchDir", &filesystem__watch_dir_request__descriptor,
	  &filesystem__watch_dir_response__descriptor, NULL, fs_watch_dir,
	  &keepalive_msg.base },
	UNARY("CreateWatcher", fs_create_watcher_as_caller, filesystem__create_watcher_request,
	      filesystem__create_watcher_response),
	UNARY("GetWatcherEvents", fs_get_watcher_events,
	      filesystem__get_watcher_events_request, filesystem__get_watcher_events_response),
	UNARY("RemoveWatcher", fs_remove_watcher, filesystem__remove_watcher_request,
	      filesystem__remove_watcher_response),
	{ 0 },
};

int filesystem_service_init(void)
{
	struct herr err;

	/*
	 * Started now, with the agent's own credentials: a thread inherits its
	 * creator's, and the first watcher is created with a user's.
	 */
	if (fs_watch_engine_start(&err) < 0) {
		log_error("filesystem", NULL, "%s", err.msg);
		return err.code;
	}
	return 0;
}
