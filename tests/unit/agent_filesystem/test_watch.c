/*
 * The inotify watcher engine on real directories: one event per operation in
 * envd's order, names relative to the watched directory, recursion into new
 * directories, includeEntry, queue overflow, stop, ids and the registry.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fixture.h"
#include "fs_internal.h"

#define CREATE FILESYSTEM__EVENT_TYPE__EVENT_TYPE_CREATE
#define WRITE FILESYSTEM__EVENT_TYPE__EVENT_TYPE_WRITE
#define REMOVE FILESYSTEM__EVENT_TYPE__EVENT_TYPE_REMOVE
#define RENAME FILESYSTEM__EVENT_TYPE__EVENT_TYPE_RENAME
#define CHMOD FILESYSTEM__EVENT_TYPE__EVENT_TYPE_CHMOD

struct got {
	Filesystem__FilesystemEvent *ev[256];
	size_t n;
};

static void got_free(struct got *g)
{
	for (size_t i = 0; i < g->n; i++)
		protobuf_c_message_free_unpacked(&g->ev[i]->base, NULL);
	g->n = 0;
}

/* Collects events until none arrived for quiet_ms. */
static void collect(struct fs_watcher *w, struct got *g, int quiet_ms)
{
	for (;;) {
		struct fs_event_blob *list = NULL;
		struct herr err;

		assert_int_equal(fs_watcher_take(w, quiet_ms, &list, &err), 0);
		if (!list)
			return;
		for (struct fs_event_blob *b = list; b; b = b->next) {
			assert_true(g->n < 256);
			g->ev[g->n++] = (void *)protobuf_c_message_unpack(
				&filesystem__filesystem_event__descriptor, NULL, b->len, b->data);
		}
		fs_event_blobs_free(list);
	}
}

static void expect(struct got *g, size_t i, const char *name, Filesystem__EventType type)
{
	if (i >= g->n)
		fail_msg("event %zu (%s) missing: only %zu events", i, name, g->n);
	assert_string_equal(g->ev[i]->name, name);
	assert_int_equal(g->ev[i]->type, type);
}

static struct fs_watcher *watch(const char *path, bool recursive, bool include_entry)
{
	struct fs_watch_opts o = { .path = path, .recursive = recursive,
				   .include_entry = include_entry };
	struct fs_watcher *w = NULL;
	struct herr err;

	if (fs_watcher_create(&o, &w, &err) < 0)
		fail_msg("%s", err.msg);
	return w;
}

static void unwatch(struct fs_watcher *w)
{
	fs_watcher_stop(w);
	fs_watcher_unref(w);
}

static void test_order_of_operations(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *w = watch(fx->dir, false, false);
	struct got g = { 0 };

	fx_write(fx_path(fx, "a.txt"), "hello", 0600); /* create, write, chmod */
	assert_int_equal(rename(fx_path(fx, "a.txt"), fx_path(fx, "b.txt")), 0);
	assert_int_equal(unlink(fx_path(fx, "b.txt")), 0);
	collect(w, &g, 300);
	expect(&g, 0, "a.txt", CREATE);
	expect(&g, 1, "a.txt", WRITE);
	expect(&g, 2, "a.txt", CHMOD);
	expect(&g, 3, "a.txt", RENAME);
	expect(&g, 4, "b.txt", CREATE);
	expect(&g, 5, "b.txt", REMOVE);
	assert_int_equal(g.n, 6);
	assert_null(g.ev[0]->entry);
	got_free(&g);
	unwatch(w);
}

static void test_not_recursive(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *w;
	struct got g = { 0 };

	mkdir(fx_path(fx, "old"), 0755);
	w = watch(fx->dir, false, false);
	mkdir(fx_path(fx, "sub"), 0755);
	fx_write(fx_path(fx, "sub/inner"), "x", 0644);
	fx_write(fx_path(fx, "old/inner"), "x", 0644);
	collect(w, &g, 300);
	expect(&g, 0, "sub", CREATE);
	assert_int_equal(g.n, 1);
	got_free(&g);
	unwatch(w);
}

static bool has(struct got *g, const char *name, Filesystem__EventType type)
{
	for (size_t i = 0; i < g->n; i++)
		if (strcmp(g->ev[i]->name, name) == 0 && g->ev[i]->type == type)
			return true;
	return false;
}

static void test_recursive(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *w;
	struct got g = { 0 };

	mkdir(fx_path(fx, "existing"), 0755);
	w = watch(fx->dir, true, false);
	fx_write(fx_path(fx, "existing/e.txt"), "e", 0644);
	/* A burst: later levels appear before the engine can watch their parent. */
	mkdir(fx_path(fx, "a"), 0755);
	mkdir(fx_path(fx, "a/b"), 0755);
	mkdir(fx_path(fx, "a/b/c"), 0755);
	collect(w, &g, 300);
	assert_true(has(&g, "existing/e.txt", CREATE));
	assert_true(has(&g, "existing/e.txt", WRITE));
	assert_true(has(&g, "a", CREATE));
	assert_true(has(&g, "a/b", CREATE));
	assert_true(has(&g, "a/b/c", CREATE));
	got_free(&g);

	/* The new deepest directory is watched too. */
	fx_write(fx_path(fx, "a/b/c/deep.txt"), "d", 0644);
	assert_int_equal(unlink(fx_path(fx, "a/b/c/deep.txt")), 0);
	assert_int_equal(rmdir(fx_path(fx, "a/b/c")), 0);
	collect(w, &g, 300);
	expect(&g, 0, "a/b/c/deep.txt", CREATE);
	expect(&g, 1, "a/b/c/deep.txt", WRITE);
	expect(&g, 2, "a/b/c/deep.txt", CHMOD);
	expect(&g, 3, "a/b/c/deep.txt", REMOVE);
	expect(&g, 4, "a/b/c", REMOVE); /* once, from the parent's watch */
	assert_int_equal(g.n, 5);
	got_free(&g);
	unwatch(w);
}

static void test_moved_directories(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *w;
	struct got g = { 0 };

	mkdir(fx_path(fx, "w"), 0755);
	mkdir(fx_path(fx, "w/sub"), 0755);
	mkdir(fx_path(fx, "elsewhere"), 0755);
	mkdir(fx_path(fx, "elsewhere/in"), 0755);
	w = watch(fx_path(fx, "w"), true, false);

	/* Moved out: no longer under the watched directory, no more events. */
	assert_int_equal(rename(fx_path(fx, "w/sub"), fx_path(fx, "out")), 0);
	collect(w, &g, 200);
	fx_write(fx_path(fx, "out/x"), "x", 0644);
	/* Moved in: watched from now on, under its new name. */
	assert_int_equal(rename(fx_path(fx, "elsewhere/in"), fx_path(fx, "w/moved")), 0);
	collect(w, &g, 200);
	fx_write(fx_path(fx, "w/moved/y"), "y", 0644);
	collect(w, &g, 300);
	expect(&g, 0, "sub", RENAME);
	expect(&g, 1, "moved", CREATE);
	expect(&g, 2, "moved/y", CREATE);
	assert_false(has(&g, "sub/x", CREATE));
	assert_false(has(&g, "out/x", CREATE));
	got_free(&g);
	unwatch(w);
}

static void test_include_entry(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *w = watch(fx->dir, false, true);
	struct got g = { 0 };

	fx_write(fx_path(fx, "f"), "abc", 0644);
	assert_int_equal(unlink(fx_path(fx, "f")), 0);
	collect(w, &g, 300);
	assert_true(g.n >= 2);
	expect(&g, 0, "f", CREATE);
	/* The file may already be gone when the engine looks: then no entry. */
	if (g.ev[0]->entry) {
		assert_string_equal(g.ev[0]->entry->path, fx_path(fx, "f"));
		assert_string_equal(g.ev[0]->entry->name, "f");
	}
	expect(&g, g.n - 1, "f", REMOVE);
	assert_null(g.ev[g.n - 1]->entry);
	got_free(&g);

	fx_write(fx_path(fx, "kept"), "abc", 0644);
	collect(w, &g, 300);
	expect(&g, 0, "kept", CREATE);
	assert_non_null(g.ev[0]->entry);
	assert_int_equal(g.ev[0]->entry->type, FILESYSTEM__FILE_TYPE__FILE_TYPE_FILE);
	got_free(&g);
	unwatch(w);
}

static void test_root_removed(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *w;
	struct got g = { 0 };

	mkdir(fx_path(fx, "gone"), 0755);
	w = watch(fx_path(fx, "gone"), true, false);
	assert_int_equal(rmdir(fx_path(fx, "gone")), 0);
	collect(w, &g, 300);
	expect(&g, 0, ".", REMOVE);
	assert_int_equal(g.n, 1);
	got_free(&g);
	unwatch(w);
}

/*
 * A client that never reads: collection stops at the queue's bound and the
 * loss is reported. On a loaded machine the kernel's own inotify queue may
 * overflow before ours fills; that is the same failure, reported the same way.
 */
static void test_queue_overflow(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *w = watch(fx->dir, false, false);
	struct herr err = { 0 };
	size_t n = 0;
	char name[64];
	int rc;

	for (int i = 0; i < FS_WATCH_QUEUE_MAX_EVENTS / 3 + 100; i++) {
		snprintf(name, sizeof(name), "f%05d", i);
		fx_write(fx_path(fx, "%s", name), "x", 0644); /* three events each */
	}
	/* Nobody reads until the watcher thread has given up (ASan is slow). */
	for (int i = 0; i < 300 && !fs_watcher_failed(w); i++)
		usleep(100 * 1000);
	assert_true(fs_watcher_failed(w));
	for (;;) {
		struct fs_event_blob *list = NULL;

		rc = fs_watcher_take(w, 5000, &list, &err);
		if (rc < 0 || !list)
			break;
		for (struct fs_event_blob *b = list; b; b = b->next)
			n++;
		fs_event_blobs_free(list);
	}
	assert_int_equal(rc, -EIO);
	assert_non_null(strstr(err.msg, "events were lost"));
	assert_non_null(strstr(err.msg, fx->dir));
	assert_true(n <= FS_WATCH_QUEUE_MAX_EVENTS);
	if (strstr(err.msg, "waiting to be read"))
		assert_int_equal(n, FS_WATCH_QUEUE_MAX_EVENTS);
	unwatch(w);
}

static void test_stop_and_ids(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *a = watch(fx->dir, false, false);
	struct fs_watcher *b = watch(fx->dir, false, false);
	struct fs_event_blob *list = NULL;
	struct herr err;
	const char *id = fs_watcher_id(a);

	assert_int_equal(strlen(id), FS_WATCH_ID_LEN);
	assert_int_equal(id[0], 'w');
	assert_int_equal(strspn(id + 1, "abcdefghijklmnopqrstuvwxyz0123456789"),
			 FS_WATCH_ID_LEN - 1);
	assert_string_not_equal(id, fs_watcher_id(b));

	fs_watcher_stop(a);
	assert_true(fs_watcher_stopped(a));
	fx_write(fx_path(fx, "after-stop"), "x", 0644);
	/* A stopped watcher returns at once (no 5 s wait) and has nothing. */
	assert_int_equal(fs_watcher_take(a, 5000, &list, &err), 0);
	assert_null(list);
	fs_watcher_stop(a); /* idempotent */
	fs_watcher_unref(a);

	assert_int_equal(fs_watcher_take(b, 1000, &list, &err), 0);
	assert_non_null(list);
	fs_event_blobs_free(list);
	unwatch(b);
}

static void test_registry(void **state)
{
	struct fixture *fx = *state;
	struct fs_watcher *w = watch(fx->dir, false, false);
	struct fs_watcher *got;
	struct herr err;
	char id[FS_WATCH_ID_LEN + 1];

	strcpy(id, fs_watcher_id(w));
	assert_int_equal(fs_registry_add(w, &err), 0);
	fs_watcher_unref(w); /* the registry keeps it alive */
	got = fs_registry_get(id);
	assert_ptr_equal(got, w);
	fs_watcher_unref(got);
	assert_null(fs_registry_get("wnosuchwatcher000000"));
	got = fs_registry_take(id);
	assert_ptr_equal(got, w);
	assert_null(fs_registry_get(id));
	unwatch(got);
}

static void test_missing_directory(void **state)
{
	struct fixture *fx = *state;
	struct fs_watch_opts o = { .path = fx_path(fx, "missing") };
	struct fs_watcher *w = NULL;
	struct herr err;

	assert_true(fs_watcher_create(&o, &w, &err) < 0);
	assert_null(w);
	assert_non_null(strstr(err.msg, "missing"));
}

struct churn {
	struct fixture *fx;
	volatile int stop;
};

static void *churn_files(void *arg)
{
	struct churn *c = arg;

	for (int i = 0; !c->stop; i++) {
		char p[PATH_MAX];
		int fd;

		/* Not fx_path: its ring of buffers is not for two threads. */
		snprintf(p, sizeof(p), "%.4000s/churn/f%d", c->fx->dir, i % 50);
		fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd >= 0) {
			(void)!write(fd, "x", 1);
			close(fd);
		}
		if (i % 7 == 0)
			unlink(p);
	}
	return NULL;
}

/*
 * Watchers come and go while events pour in: under the sanitizers this
 * catches a watcher freed while the engine still reads it.
 */
static void test_create_stop_under_load(void **state)
{
	struct fixture *fx = *state;
	struct churn c = { .fx = fx };
	char dir[PATH_MAX];
	pthread_t t;

	snprintf(dir, sizeof(dir), "%s", fx_path(fx, "churn"));
	mkdir(dir, 0755);
	assert_int_equal(pthread_create(&t, NULL, churn_files, &c), 0);
	for (int i = 0; i < 200; i++) {
		struct fs_watcher *w = watch(dir, i % 2, i % 3 == 0);
		struct fs_event_blob *list = NULL;
		struct herr err;

		if (i % 4 == 0) {
			fs_watcher_take(w, 2, &list, &err);
			fs_event_blobs_free(list);
		}
		unwatch(w);
	}
	c.stop = 1;
	pthread_join(t, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_order_of_operations, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_not_recursive, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_recursive, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_moved_directories, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_include_entry, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_root_removed, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_queue_overflow, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_stop_and_ids, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_registry, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_missing_directory, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_create_stop_under_load, fx_setup,
						fx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
