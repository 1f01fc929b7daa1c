/*
 * ListDir's walk (depth, order, symlinked directories, reported paths) and
 * Remove's rm -rf (symlinks pointing outside survive, deep trees, missing
 * paths) on real temporary directories.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <cmocka.h>

#include "fixture.h"
#include "fs_internal.h"

static void list(const char *shown, const char *real, unsigned depth, const char **want,
		 size_t nwant)
{
	struct fs_mem m = { 0 };
	Filesystem__EntryInfo **entries = NULL;
	size_t n = 0;
	struct herr err = { 0 };

	assert_int_equal(fs_list_dir(&m, shown, real, depth, &entries, &n, &err), 0);
	for (size_t i = 0; i < n && i < nwant; i++) {
		char full[PATH_MAX];
		snprintf(full, sizeof(full), "%s/%s", shown, want[i]);
		assert_string_equal(entries[i]->path, full);
	}
	assert_int_equal(n, nwant);
	fs_mem_release(&m);
}

/*
 *   b/            (dir)
 *   b/z.txt
 *   b/c/          (dir)
 *   b/c/deep.txt
 *   a.txt
 *   B.txt         (upper case sorts first, by bytes)
 *   ln -> b       (symlinked dir: listed, not entered)
 */
static void make_tree(struct fixture *fx)
{
	mkdir(fx_path(fx, "root"), 0755);
	mkdir(fx_path(fx, "root/b"), 0755);
	mkdir(fx_path(fx, "root/b/c"), 0755);
	fx_write(fx_path(fx, "root/b/z.txt"), "z", 0644);
	fx_write(fx_path(fx, "root/b/c/deep.txt"), "d", 0644);
	fx_write(fx_path(fx, "root/a.txt"), "a", 0644);
	fx_write(fx_path(fx, "root/B.txt"), "B", 0644);
	assert_int_equal(symlink("b", fx_path(fx, "root/ln")), 0);
}

/* Past FS_LIST_MAX_ENTRIES the error names the listed path, not the entry reached. */
static void test_list_limit_names_requested_path(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	Filesystem__EntryInfo **entries = NULL;
	size_t n = 0;
	struct herr err = { 0 };
	char want[PATH_MAX + 64];

	mkdir(fx_path(fx, "big"), 0755);
	mkdir(fx_path(fx, "big/sub"), 0755);
	for (int i = 0; i <= FS_LIST_MAX_ENTRIES; i++) {
		int fd = open(fx_path(fx, "big/sub/f%06d", i), O_WRONLY | O_CREAT, 0644);

		assert_true(fd >= 0);
		close(fd);
	}
	assert_int_equal(fs_list_dir(&m, "/shown/big", fx_path(fx, "big"), 2, &entries, &n,
				     &err), -E2BIG);
	snprintf(want, sizeof(want), "more than %d entries under '/shown/big';",
		 FS_LIST_MAX_ENTRIES);
	assert_non_null(strstr(err.msg, want));
	assert_null(strstr(err.msg, "/shown/big/sub"));
	fs_mem_release(&m);
}

static void test_list_depth_and_order(void **state)
{
	struct fixture *fx = *state;
	const char *root;
	static const char *depth1[] = { "B.txt", "a.txt", "b", "ln" };
	static const char *depth2[] = { "B.txt", "a.txt", "b", "b/c", "b/z.txt", "ln" };
	static const char *depth3[] = { "B.txt", "a.txt", "b", "b/c", "b/c/deep.txt",
					"b/z.txt", "ln" };

	make_tree(fx);
	root = fx_path(fx, "root");
	list(root, root, 0, depth1, 4); /* 0 means 1 */
	list(root, root, 1, depth1, 4);
	list(root, root, 2, depth2, 6);
	list(root, root, 3, depth3, 7);
	list(root, root, 100, depth3, 7);
}

static void test_list_reports_requested_path(void **state)
{
	struct fixture *fx = *state;
	static const char *want[] = { "c", "z.txt" };
	char real[PATH_MAX];

	make_tree(fx);
	/* Listing through the symlink: paths stay under the path the client used. */
	assert_non_null(realpath(fx_path(fx, "root/ln"), real));
	list(fx_path(fx, "root/ln"), real, 1, want, 2);
}

static void test_list_symlink_entry(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	Filesystem__EntryInfo **entries = NULL;
	size_t n = 0;
	struct herr err;
	const char *root;

	make_tree(fx);
	root = fx_path(fx, "root");
	assert_int_equal(fs_list_dir(&m, root, root, 5, &entries, &n, &err), 0);
	assert_string_equal(entries[n - 1]->name, "ln");
	assert_int_equal(entries[n - 1]->type, FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY);
	assert_int_equal(entries[n - 1]->_symlink_target_case,
			 FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET_SYMLINK_TARGET);
	fs_mem_release(&m);
}

static void test_list_missing(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	Filesystem__EntryInfo **entries = NULL;
	size_t n = 0;
	struct herr err;
	const char *p = fx_path(fx, "missing");

	assert_int_equal(fs_list_dir(&m, p, p, 1, &entries, &n, &err), -ENOENT);
	assert_non_null(strstr(err.msg, p));
	fs_mem_release(&m);
}

static void test_remove_keeps_symlink_targets(void **state)
{
	struct fixture *fx = *state;
	struct herr err = { 0 };
	struct stat st;

	mkdir(fx_path(fx, "outside"), 0755);
	fx_write(fx_path(fx, "outside/precious"), "keep me", 0644);
	mkdir(fx_path(fx, "tree"), 0755);
	mkdir(fx_path(fx, "tree/sub"), 0755);
	fx_write(fx_path(fx, "tree/sub/file"), "x", 0644);
	assert_int_equal(symlink(fx_path(fx, "outside"), fx_path(fx, "tree/sub/to-dir")), 0);
	assert_int_equal(symlink(fx_path(fx, "outside/precious"),
				 fx_path(fx, "tree/to-file")), 0);
	assert_int_equal(mkfifo(fx_path(fx, "tree/fifo"), 0600), 0);
	/* A read-only directory inside is still removable (we are root). */
	mkdir(fx_path(fx, "tree/ro"), 0555);
	fx_write(fx_path(fx, "tree/ro/x"), "x", 0444);

	assert_int_equal(fs_remove_all(fx_path(fx, "tree"), &err), 0);
	assert_int_equal(lstat(fx_path(fx, "tree"), &st), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(stat(fx_path(fx, "outside/precious"), &st), 0);
	assert_int_equal(st.st_size, 7);
}

static void test_remove_symlink_itself(void **state)
{
	struct fixture *fx = *state;
	struct herr err = { 0 };
	struct stat st;

	mkdir(fx_path(fx, "dir"), 0755);
	fx_write(fx_path(fx, "dir/f"), "f", 0644);
	assert_int_equal(symlink("dir", fx_path(fx, "link")), 0);
	assert_int_equal(fs_remove_all(fx_path(fx, "link"), &err), 0);
	assert_int_equal(lstat(fx_path(fx, "link"), &st), -1);
	assert_int_equal(stat(fx_path(fx, "dir/f"), &st), 0);
}

static void test_remove_missing_and_file(void **state)
{
	struct fixture *fx = *state;
	struct herr err = { 0 };
	struct stat st;

	assert_int_equal(fs_remove_all(fx_path(fx, "nope"), &err), 0);
	assert_int_equal(fs_remove_all(fx_path(fx, "nope/deeper"), &err), 0);
	fx_write(fx_path(fx, "f"), "f", 0644);
	assert_int_equal(fs_remove_all(fx_path(fx, "f/under-a-file"), &err), 0);
	assert_int_equal(fs_remove_all(fx_path(fx, "f"), &err), 0);
	assert_int_equal(lstat(fx_path(fx, "f"), &st), -1);
	assert_int_equal(fs_remove_all("/", &err), -EINVAL);
	assert_int_equal(fs_remove_all("relative", &err), -EINVAL);
}

/*
 * 2000 levels, built with mkdirat so no path is ever longer than a name,
 * removed under a 32-descriptor limit: removal depth must not cost one
 * descriptor (or one PATH_MAX buffer) per level.
 */
static void test_remove_deep_tree(void **state)
{
	struct fixture *fx = *state;
	struct herr err = { 0 };
	struct rlimit old, low;
	struct stat st;
	int fd = open(fx->dir, O_RDONLY | O_DIRECTORY);

	assert_true(fd >= 0);
	assert_int_equal(mkdirat(fd, "deep", 0755), 0);
	int cur = openat(fd, "deep", O_RDONLY | O_DIRECTORY);
	for (int i = 0; i < 2000; i++) {
		assert_int_equal(mkdirat(cur, "dd", 0755), 0);
		int next = openat(cur, "dd", O_RDONLY | O_DIRECTORY);
		assert_true(next >= 0);
		if (i % 500 == 0) {
			int f = openat(cur, "file", O_WRONLY | O_CREAT, 0644);
			close(f);
		}
		close(cur);
		cur = next;
	}
	close(cur);
	close(fd);

	getrlimit(RLIMIT_NOFILE, &old);
	low = old;
	low.rlim_cur = 32;
	setrlimit(RLIMIT_NOFILE, &low);
	int r = fs_remove_all(fx_path(fx, "deep"), &err);
	setrlimit(RLIMIT_NOFILE, &old);
	if (r < 0)
		fail_msg("%s", err.msg);
	assert_int_equal(lstat(fx_path(fx, "deep"), &st), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_list_depth_and_order, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_list_reports_requested_path, fx_setup,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_list_symlink_entry, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_list_missing, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_remove_keeps_symlink_targets, fx_setup,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_remove_symlink_itself, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_remove_missing_and_file, fx_setup,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_remove_deep_tree, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_list_limit_names_requested_path, fx_setup,
						fx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
