/*
 * The watcher engine behind WatchDir and CreateWatcher.
 *
 * Every watcher owns an inotify descriptor (so a kernel queue overflow, and
 * the watch-descriptor numbering, concern that watcher alone). One engine
 * thread waits on all of them with epoll, turns inotify records into
 * FilesystemEvent messages (one per operation, in the order CREATE, RENAME,
 * CHMOD, WRITE, REMOVE, names relative to the watched directory) and queues
 * them, packed, on the watcher. Consumers (a stream's sender thread, or
 * GetWatcherEvents) take them from the queue; the engine never blocks on a
 * client.
 *
 * The queue is bounded (FS_WATCH_QUEUE_MAX_EVENTS / _BYTES). When it is full
 * the watcher fails like a kernel overflow does: it stops collecting, the
 * events already queued are still handed out, and then every take reports
 * that events were lost. Silently dropping some events would leave a client
 * believing it saw everything.
 *
 * Recursive watchers add a watch for every directory below the root,
 * including ones created or moved in later; a directory moved away loses its
 * watches, since its names no longer fall under the root.
 *
 * Credentials. A watcher is created on the caller's thread with the
 * caller's file-system credentials, so the kernel checks the initial
 * watches as it would for that user. The engine thread is shared, so while
 * it handles one watcher's events it takes that watcher's user credentials
 * (files/creds.c, per thread): the watches it adds for new subdirectories
 * and the entry info it reads are checked against the user too, and a
 * root-only directory appearing under a watched one stays unwatched.
 * Reading events from an inotify descriptor needs no permission: they come
 * only from watches the user was allowed to add, which is what the user
 * could have done with inotify directly.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "files.h"
#include "fs_internal.h"
#include "log.h"

#define WATCH_MASK (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_ATTRIB | IN_MODIFY | \
		    IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)

struct wd_entry {
	int wd;
	char *rel; /* "" for the root, else "a/b" */
};

struct fs_watcher {
	struct fs_watcher *next_live; /* engine list, under engine_lock */
	uint64_t serial;
	atomic_int refs;
	int ifd;
	char id[FS_WATCH_ID_LEN + 1];
	char *root;
	bool recursive;
	bool include_entry;
	bool has_user;
	struct agent_user user;

	/* Only the engine (or creation, before registering) touches these. */
	struct wd_entry *dirs;
	size_t ndirs;
	size_t capdirs;

	pthread_mutex_t lock; /* guards everything below */
	pthread_cond_t cond;
	struct fs_event_blob *head;
	struct fs_event_blob *tail;
	size_t count;
	size_t bytes;
	bool stopped;
	bool failed;
	char error[HERR_MSG_MAX];
};

static pthread_mutex_t engine_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fs_watcher *engine_live;
static uint64_t engine_serial;
static int engine_epfd = -1;

/* wd map: sorted by wd; inotify hands out increasing numbers, so adds append. */
static ssize_t wd_find(const struct fs_watcher *w, int wd)
{
	size_t lo = 0, hi = w->ndirs;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (w->dirs[mid].wd == wd)
			return (ssize_t)mid;
		if (w->dirs[mid].wd < wd)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -(ssize_t)lo - 1;
}

static void wd_set(struct fs_watcher *w, int wd, const char *rel)
{
	ssize_t at = wd_find(w, wd);
	char *copy = strdup(rel);

	if (!copy)
		abort();
	if (at >= 0) {
		free(w->dirs[at].rel);
		w->dirs[at].rel = copy;
		return;
	}
	at = -at - 1;
	if (w->ndirs == w->capdirs) {
		w->capdirs = w->capdirs ? w->capdirs * 2 : 16;
		w->dirs = realloc(w->dirs, w->capdirs * sizeof(*w->dirs));
		if (!w->dirs)
			abort();
	}
	memmove(w->dirs + at + 1, w->dirs + at, (w->ndirs - at) * sizeof(*w->dirs));
	w->dirs[at] = (struct wd_entry){ .wd = wd, .rel = copy };
	w->ndirs++;
}

static void wd_remove_at(struct fs_watcher *w, size_t at)
{
	free(w->dirs[at].rel);
	memmove(w->dirs + at, w->dirs + at + 1, (w->ndirs - at - 1) * sizeof(*w->dirs));
	w->ndirs--;
}

/* True when rel is prefix itself or lies below it. */
static bool rel_under(const char *rel, const char *prefix)
{
	size_t n = strlen(prefix);

	return strncmp(rel, prefix, n) == 0 && (rel[n] == '\0' || rel[n] == '/');
}

static void watcher_fail(struct fs_watcher *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void watcher_fail(struct fs_watcher *w, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&w->lock);
	if (!w->failed) {
		w->failed = true;
		va_start(ap, fmt);
		vsnprintf(w->error, sizeof(w->error), fmt, ap);
		va_end(ap);
		log_warn("filesystem", NULL, "watcher %s on '%s' failed: %s", w->id, w->root,
			 w->error);
	}
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void watcher_push(struct fs_watcher *w, struct fs_event_blob *b)
{
	bool full;

	pthread_mutex_lock(&w->lock);
	if (w->stopped || w->failed) {
		pthread_mutex_unlock(&w->lock);
		free(b);
		return;
	}
	full = w->count >= FS_WATCH_QUEUE_MAX_EVENTS ||
	       w->bytes + b->len > FS_WATCH_QUEUE_MAX_BYTES;
	if (!full) {
		b->next = NULL;
		if (w->tail)
			w->tail->next = b;
		else
			w->head = b;
		w->tail = b;
		w->count++;
		w->bytes += b->len;
		pthread_cond_broadcast(&w->cond);
	}
	pthread_mutex_unlock(&w->lock);
	if (full) {
		free(b);
		watcher_fail(w, "more than %d events were waiting to be read; events were lost",
			     FS_WATCH_QUEUE_MAX_EVENTS);
	}
}

/* Builds, packs and queues one event; entry only for CREATE/WRITE/CHMOD. */
static void emit(struct fs_watcher *w, const char *name, Filesystem__EventType type)
{
	Filesystem__FilesystemEvent ev = FILESYSTEM__FILESYSTEM_EVENT__INIT;
	struct fs_mem mem = { 0 };
	struct fs_event_blob *b;
	size_t len;

	ev.name = (char *)name;
	ev.type = type;
	if (w->include_entry && (type == FILESYSTEM__EVENT_TYPE__EVENT_TYPE_CREATE ||
				 type == FILESYSTEM__EVENT_TYPE__EVENT_TYPE_WRITE ||
				 type == FILESYSTEM__EVENT_TYPE__EVENT_TYPE_CHMOD)) {
		struct fs_path abs = { 0 };
		struct herr err;
		Filesystem__EntryInfo *e = fs_mem_alloc(&mem, sizeof(*e));

		fs_path_set(&abs, w->root);
		if (strcmp(name, ".") != 0)
			fs_path_push(&abs, name);
		if (fs_entry_at(&mem, AT_FDCWD, abs.buf, abs.buf, abs.buf, e, &err) == 0)
			ev.entry = e;
		fs_path_free(&abs);
	}
	len = protobuf_c_message_get_packed_size(&ev.base);
	b = malloc(sizeof(*b) + len);
	if (!b)
		abort();
	b->len = protobuf_c_message_pack(&ev.base, b->data);
	fs_mem_release(&mem);
	watcher_push(w, b);
}

static int add_one(struct fs_watcher *w, const char *rel, bool is_root)
{
	struct fs_path abs = { 0 };
	uint32_t mask = WATCH_MASK | IN_ONLYDIR | (is_root ? 0 : IN_DONT_FOLLOW);
	int wd;

	fs_path_set(&abs, w->root);
	if (rel[0])
		fs_path_push(&abs, rel);
	wd = inotify_add_watch(w->ifd, abs.buf, mask);
	fs_path_free(&abs);
	if (wd < 0)
		return -errno;
	wd_set(w, wd, rel);
	return 0;
}

static int add_tree(struct fs_watcher *w, const char *rel, bool synth_creates, int depth);

/*
 * Watches the directory rel and, recursively, those below it. With
 * synth_creates, entries already inside are reported as created: they were
 * made after the watch began, but before we could watch their parent (a
 * quick "mkdir -p a/b/c" is otherwise half missed).
 */
static int add_children(struct fs_watcher *w, const char *rel, bool synth_creates, int depth)
{
	struct fs_path abs = { 0 };
	_cleanup_closedir_ DIR *d = NULL;
	struct dirent *de;
	int r = 0;

	fs_path_set(&abs, w->root);
	if (rel[0])
		fs_path_push(&abs, rel);
	d = opendir(abs.buf);
	fs_path_free(&abs);
	if (!d)
		return 0; /* gone or replaced meanwhile: nothing to watch */
	while (r == 0 && (de = readdir(d))) {
		struct fs_path child = { 0 };
		bool is_dir;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		fs_path_set(&child, rel);
		if (rel[0])
			fs_path_push(&child, de->d_name);
		else
			fs_path_set(&child, de->d_name);
		if (synth_creates)
			emit(w, child.buf, FILESYSTEM__EVENT_TYPE__EVENT_TYPE_CREATE);
		is_dir = de->d_type == DT_DIR;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;
			is_dir = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
				 S_ISDIR(st.st_mode);
		}
		if (is_dir)
			r = add_tree(w, child.buf, synth_creates, depth + 1);
		fs_path_free(&child);
	}
	return r;
}

static int add_tree(struct fs_watcher *w, const char *rel, bool synth_creates, int depth)
{
	int r;

	if (depth > PATH_MAX / 2)
		return 0; /* deeper than any path can name */
	r = add_one(w, rel, rel[0] == '\0');
	if (r == -ENOENT || r == -ENOTDIR || r == -ELOOP)
		return 0;
	if (r < 0)
		return r;
	return add_children(w, rel, synth_creates, depth);
}

static void drop_tree(struct fs_watcher *w, const char *rel)
{
	for (size_t i = w->ndirs; i-- > 0;) {
		if (rel_under(w->dirs[i].rel, rel)) {
			inotify_rm_watch(w->ifd, w->dirs[i].wd);
			wd_remove_at(w, i);
		}
	}
}

static void handle_recursion(struct fs_watcher *w, const struct inotify_event *ev,
			     const char *name)
{
	int r = 0;

	if (!(ev->mask & IN_ISDIR))
		return;
	if (ev->mask & IN_MOVED_FROM)
		drop_tree(w, name);
	if (ev->mask & IN_CREATE)
		r = add_tree(w, name, true, 0);
	else if (ev->mask & IN_MOVED_TO)
		r = add_tree(w, name, false, 0);
	if (r == -ENOSPC)
		watcher_fail(w, "inotify watch limit reached (fs.inotify.max_user_watches) "
			     "under '%s'", w->root);
	else if (r < 0)
		watcher_fail(w, "watching new directory '%s' under '%s': %s", name, w->root,
			     strerror(-r));
}

static void handle_event(struct fs_watcher *w, const struct inotify_event *ev)
{
	static const struct {
		uint32_t mask;
		Filesystem__EventType type;
	} ops[] = {
		{ IN_CREATE | IN_MOVED_TO, FILESYSTEM__EVENT_TYPE__EVENT_TYPE_CREATE },
		{ IN_MOVED_FROM | IN_MOVE_SELF, FILESYSTEM__EVENT_TYPE__EVENT_TYPE_RENAME },
		{ IN_ATTRIB, FILESYSTEM__EVENT_TYPE__EVENT_TYPE_CHMOD },
		{ IN_MODIFY, FILESYSTEM__EVENT_TYPE__EVENT_TYPE_WRITE },
		{ IN_DELETE | IN_DELETE_SELF, FILESYSTEM__EVENT_TYPE__EVENT_TYPE_REMOVE },
	};
	struct fs_path name = { 0 };
	ssize_t at;
	const char *rel;

	if (ev->mask & IN_Q_OVERFLOW) {
		watcher_fail(w, "the kernel's inotify queue overflowed; events were lost");
		return;
	}
	at = wd_find(w, ev->wd);
	if (at < 0)
		return;
	if (ev->mask & IN_IGNORED) {
		wd_remove_at(w, at);
		return;
	}
	rel = w->dirs[at].rel;
	if (ev->len == 0 || ev->name[0] == '\0') {
		/* A watched directory itself: below the root its parent reports it. */
		if (rel[0])
			return;
		fs_path_set(&name, ".");
	} else {
		fs_path_set(&name, rel);
		if (rel[0])
			fs_path_push(&name, ev->name);
		else
			fs_path_set(&name, ev->name);
	}

	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (ev->mask & ops[i].mask)
			emit(w, name.buf, ops[i].type);
	if (w->recursive && ev->len)
		handle_recursion(w, ev, name.buf);
	fs_path_free(&name);
}

static void drain(struct fs_watcher *w)
{
	static char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));

	for (;;) {
		ssize_t n = read(w->ifd, buf, sizeof(buf));
		size_t off = 0;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				watcher_fail(w, "reading inotify events: %s", strerror(errno));
			return;
		}
		while (off + sizeof(struct inotify_event) <= (size_t)n) {
			const struct inotify_event *ev = (const void *)(buf + off);

			handle_event(w, ev);
			off += sizeof(*ev) + ev->len;
		}
		if (n == 0)
			return;
	}
}

/* Handles a watcher's events with its user's file-system credentials. */
static void drain_as_user(struct fs_watcher *w)
{
	struct files_creds saved;
	struct herr err;

	if (w->has_user && files_creds_enter(&w->user, &saved, &err) < 0) {
		/* Not drained as root instead; out of epoll, so no busy loop. */
		epoll_ctl(engine_epfd, EPOLL_CTL_DEL, w->ifd, NULL);
		watcher_fail(w, "%s", err.msg);
		return;
	}
	drain(w);
	if (w->has_user)
		files_creds_leave(&saved);
}

static struct fs_watcher *live_find(uint64_t serial)
{
	for (struct fs_watcher *w = engine_live; w; w = w->next_live)
		if (w->serial == serial)
			return w;
	return NULL;
}

static void *engine_main(void *arg)
{
	struct epoll_event evs[32];

	(void)arg;
	for (;;) {
		int n = epoll_wait(engine_epfd, evs, 32, -1);

		if (n < 0) {
			if (errno != EINTR) {
				log_error("filesystem", NULL, "epoll_wait: %s", strerror(errno));
				sleep(1);
			}
			continue;
		}
		pthread_mutex_lock(&engine_lock);
		for (int i = 0; i < n; i++) {
			struct fs_watcher *w = live_find(evs[i].data.u64);
			if (w)
				drain_as_user(w);
		}
		pthread_mutex_unlock(&engine_lock);
	}
	return NULL;
}

/* Starts the engine thread once; called with engine_lock held. */
static int engine_start(struct herr *err)
{
	pthread_t t;
	sigset_t all, old;
	int r;

	if (engine_epfd >= 0)
		return 0;
	engine_epfd = epoll_create1(EPOLL_CLOEXEC);
	if (engine_epfd < 0)
		return herr_sys(err, -errno, "epoll_create1 for file watchers");
	/* The engine must never take process signals meant for the main loop. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&t, NULL, engine_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r != 0) {
		close(engine_epfd);
		engine_epfd = -1;
		return herr_sys(err, -r, "starting the file watcher thread");
	}
	pthread_detach(t);
	return 0;
}

int fs_watch_engine_start(struct herr *err)
{
	int r;

	pthread_mutex_lock(&engine_lock);
	r = engine_start(err);
	pthread_mutex_unlock(&engine_lock);
	return r;
}

static void random_id(char *out)
{
	static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	unsigned char rnd[64];
	size_t w = 0;

	out[w++] = 'w';
	while (w < FS_WATCH_ID_LEN) {
		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			abort(); /* the kernel's CSPRNG does not fail for 64 bytes */
		/* 252 = 7 * 36: dropping larger bytes keeps every letter equally likely. */
		for (size_t i = 0; i < sizeof(rnd) && w < FS_WATCH_ID_LEN; i++)
			if (rnd[i] < 252)
				out[w++] = alphabet[rnd[i] % 36];
	}
	out[w] = '\0';
}

static void watcher_destroy(struct fs_watcher *w)
{
	fs_event_blobs_free(w->head);
	for (size_t i = 0; i < w->ndirs; i++)
		free(w->dirs[i].rel);
	free(w->dirs);
	free(w->root);
	if (w->ifd >= 0)
		close(w->ifd);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	free(w);
}

static struct fs_watcher *watcher_new(const struct fs_watch_opts *opts)
{
	struct fs_watcher *w = calloc(1, sizeof(*w));
	pthread_condattr_t ca;

	if (!w)
		abort();
	atomic_init(&w->refs, 1);
	w->root = strdup(opts->path);
	if (!w->root)
		abort();
	w->recursive = opts->recursive;
	w->include_entry = opts->include_entry;
	if (opts->user) {
		w->has_user = true;
		w->user = *opts->user;
	}
	random_id(w->id);
	pthread_mutex_init(&w->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cond, &ca);
	pthread_condattr_destroy(&ca);
	return w;
}

static int watcher_add_initial(struct fs_watcher *w, struct herr *err)
{
	int r = w->recursive ? add_tree(w, "", false, 0) : add_one(w, "", true);

	if (r == -ENOSPC)
		return herr_set(err, r, "inotify watch limit reached "
				"(fs.inotify.max_user_watches) watching '%s'", w->root);
	if (r < 0)
		return herr_sys(err, r, "watching '%s'", w->root);
	if (w->ndirs == 0)
		return herr_set(err, -ENOENT, "watching '%s': directory not found", w->root);
	return 0;
}

int fs_watcher_create(const struct fs_watch_opts *opts, struct fs_watcher **out,
		      struct herr *err)
{
	struct fs_watcher *w = watcher_new(opts);
	struct epoll_event ev = { .events = EPOLLIN };
	int r;

	w->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->ifd < 0) {
		r = herr_sys(err, -errno, "inotify_init1 (fs.inotify.max_user_instances?)");
		watcher_destroy(w);
		return r;
	}
	r = watcher_add_initial(w, err);
	if (r < 0) {
		watcher_destroy(w);
		return r;
	}

	pthread_mutex_lock(&engine_lock);
	r = engine_start(err);
	if (r == 0) {
		w->serial = ++engine_serial;
		ev.data.u64 = w->serial;
		if (epoll_ctl(engine_epfd, EPOLL_CTL_ADD, w->ifd, &ev) < 0)
			r = herr_sys(err, -errno, "epoll_ctl for the watcher of '%s'", w->root);
	}
	if (r == 0) {
		/* The engine list holds its own reference until the watcher stops. */
		atomic_fetch_add(&w->refs, 1);
		w->next_live = engine_live;
		engine_live = w;
	}
	pthread_mutex_unlock(&engine_lock);
	if (r < 0) {
		watcher_destroy(w);
		return r;
	}
	*out = w;
	return 0;
}

void fs_watcher_stop(struct fs_watcher *w)
{
	bool was_live = false;

	pthread_mutex_lock(&engine_lock);
	for (struct fs_watcher **p = &engine_live; *p; p = &(*p)->next_live) {
		if (*p == w) {
			*p = w->next_live;
			was_live = true;
			break;
		}
	}
	if (was_live) {
		epoll_ctl(engine_epfd, EPOLL_CTL_DEL, w->ifd, NULL);
		close(w->ifd); /* drops every inotify watch of this watcher */
		w->ifd = -1;
	}
	pthread_mutex_unlock(&engine_lock);

	pthread_mutex_lock(&w->lock);
	w->stopped = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	if (was_live)
		fs_watcher_unref(w);
}

void fs_watcher_ref(struct fs_watcher *w)
{
	atomic_fetch_add(&w->refs, 1);
}

void fs_watcher_unref(struct fs_watcher *w)
{
	if (w && atomic_fetch_sub(&w->refs, 1) == 1)
		watcher_destroy(w);
}

const char *fs_watcher_id(const struct fs_watcher *w)
{
	return w->id;
}

bool fs_watcher_failed(struct fs_watcher *w)
{
	bool failed;

	pthread_mutex_lock(&w->lock);
	failed = w->failed;
	pthread_mutex_unlock(&w->lock);
	return failed;
}

bool fs_watcher_stopped(struct fs_watcher *w)
{
	bool stopped;

	pthread_mutex_lock(&w->lock);
	stopped = w->stopped;
	pthread_mutex_unlock(&w->lock);
	return stopped;
}

static void deadline_after(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int fs_watcher_take(struct fs_watcher *w, int timeout_ms, struct fs_event_blob **events,
		    struct herr *err)
{
	struct timespec until;
	int r = 0;

	*events = NULL;
	if (timeout_ms > 0)
		deadline_after(&until, timeout_ms);
	pthread_mutex_lock(&w->lock);
	while (timeout_ms != 0 && !w->head && !w->failed && !w->stopped) {
		if (timeout_ms < 0)
			pthread_cond_wait(&w->cond, &w->lock);
		else if (pthread_cond_timedwait(&w->cond, &w->lock, &until) == ETIMEDOUT)
			break;
	}
	if (w->head) {
		*events = w->head;
		w->head = w->tail = NULL;
		w->count = 0;
		w->bytes = 0;
	} else if (w->failed) {
		r = herr_set(err, -EIO, "watcher of '%s' failed: %s", w->root, w->error);
	}
	pthread_mutex_unlock(&w->lock);
	return r;
}

void fs_event_blobs_free(struct fs_event_blob *list)
{
	while (list) {
		struct fs_event_blob *next = list->next;
		free(list);
		list = next;
	}
}

/* Polling watchers by id. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fs_watcher *registry[FS_REGISTRY_MAX];

int fs_registry_add(struct fs_watcher *w, struct herr *err)
{
	int r = herr_set(err, -EMFILE, "too many watchers (%d); remove some first",
			 FS_REGISTRY_MAX);

	pthread_mutex_lock(&registry_lock);
	for (size_t i = 0; i < FS_REGISTRY_MAX; i++) {
		if (!registry[i]) {
			fs_watcher_ref(w);
			registry[i] = w;
			herr_clear(err);
			r = 0;
			break;
		}
	}
	pthread_mutex_unlock(&registry_lock);
	return r;
}

static struct fs_watcher *registry_find(const char *id, bool take)
{
	struct fs_watcher *found = NULL;

	pthread_mutex_lock(&registry_lock);
	for (size_t i = 0; i < FS_REGISTRY_MAX; i++) {
		if (registry[i] && strcmp(registry[i]->id, id) == 0) {
			found = registry[i];
			if (take)
				registry[i] = NULL;
			else
				fs_watcher_ref(found);
			break;
		}
	}
	pthread_mutex_unlock(&registry_lock);
	return found;
}

struct fs_watcher *fs_registry_get(const char *id)
{
	return registry_find(id, false);
}

struct fs_watcher *fs_registry_take(const char *id)
{
	return registry_find(id, true);
}
