/*
 * EntryInfo of real files, directories, symlinks and broken links, Go-style
 * permission strings, owner names and user.e2b.* metadata.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/xattr.h>
#include <cmocka.h>

#include "fixture.h"
#include "fs_internal.h"
#include "users.h"

static void perm(mode_t mode, const char *want)
{
	char got[FS_PERM_STR_MAX];

	fs_perm_string(mode, got);
	assert_string_equal(got, want);
}

static void test_perm_strings(void **state)
{
	(void)state;
	perm(S_IFREG | 0644, "-rw-r--r--");
	perm(S_IFREG | 0000, "----------");
	perm(S_IFDIR | 0755, "drwxr-xr-x");
	perm(S_IFLNK | 0777, "Lrwxrwxrwx");
	perm(S_IFDIR | S_ISVTX | 0777, "dtrwxrwxrwx");
	perm(S_IFREG | S_ISUID | 0755, "urwxr-xr-x");
	perm(S_IFDIR | S_ISGID | 02775 , "dgrwxrwxr-x");
	perm(S_IFREG | S_ISUID | S_ISGID | 0755, "ugrwxr-xr-x");
	perm(S_IFCHR | 0666, "Dcrw-rw-rw-");
	perm(S_IFBLK | 0660, "Drw-rw----");
	perm(S_IFIFO | 0644, "prw-r--r--");
	perm(S_IFSOCK | 0755, "Srwxr-xr-x");
	perm(S_IFREG | 0421, "-r---w---x");
}

static Filesystem__EntryInfo entry_of(struct fs_mem *m, const char *path, int want)
{
	Filesystem__EntryInfo e;
	struct herr err = { 0 };
	int r = fs_entry_at(m, AT_FDCWD, path, path, path, &e, &err);

	assert_int_equal(r, want);
	if (r < 0)
		assert_non_null(strstr(err.msg, path));
	return e;
}

static void test_regular_file(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	const char *p = fx_path(fx, "a.txt");
	struct timespec times[2] = { { 0, UTIME_OMIT }, { 1700000000, 123456789 } };
	Filesystem__EntryInfo e;

	fx_write(p, "hello", 0640);
	assert_int_equal(utimensat(AT_FDCWD, p, times, 0), 0);
	e = entry_of(&m, p, 0);
	assert_string_equal(e.name, "a.txt");
	assert_string_equal(e.path, p);
	assert_int_equal(e.type, FILESYSTEM__FILE_TYPE__FILE_TYPE_FILE);
	assert_int_equal(e.size, 5);
	assert_int_equal(e.mode, 0640);
	assert_string_equal(e.permissions, "-rw-r-----");
	assert_int_equal(e._symlink_target_case, FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET__NOT_SET);
	assert_non_null(e.modified_time);
	assert_int_equal(e.modified_time->seconds, 1700000000);
	assert_int_equal(e.modified_time->nanos, 123456789);
	assert_int_equal(e.n_metadata, 0);
	fs_mem_release(&m);
}

static void test_directory_and_owner(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	const char *p = fx_path(fx, "d");
	Filesystem__EntryInfo e;

	assert_int_equal(mkdir(p, 0750), 0);
	assert_int_equal(chmod(p, 0750), 0);
	assert_int_equal(chown(p, 4242, 4343), 0);
	e = entry_of(&m, p, 0);
	assert_int_equal(e.type, FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY);
	assert_int_equal(e.mode, 0750);
	assert_string_equal(e.permissions, "drwxr-x---");
	assert_string_equal(e.owner, "alice"); /* from the fixture's etc/passwd */
	assert_string_equal(e.group, "4343");  /* no such group: the number */
	fs_mem_release(&m);
}

static void test_symlink_to_dir(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	const char *dir = fx_path(fx, "target");
	const char *link = fx_path(fx, "link");
	char real[PATH_MAX];
	struct stat lst;
	Filesystem__EntryInfo e;

	assert_int_equal(mkdir(dir, 0700), 0);
	assert_int_equal(chmod(dir, 0700), 0);
	assert_int_equal(symlink("target", link), 0);
	assert_non_null(realpath(dir, real));
	assert_int_equal(lstat(link, &lst), 0);

	e = entry_of(&m, link, 0);
	assert_string_equal(e.name, "link");
	assert_int_equal(e.type, FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY);
	assert_int_equal(e.mode, 0700);                  /* of the target */
	assert_string_equal(e.permissions, "Lrwxrwxrwx"); /* of the link */
	assert_int_equal(e.size, lst.st_size);            /* of the link */
	assert_int_equal(e._symlink_target_case,
			 FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET_SYMLINK_TARGET);
	assert_string_equal(e.symlink_target, real);
	fs_mem_release(&m);
}

static void test_symlink_chain_to_file(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	char real[PATH_MAX];
	Filesystem__EntryInfo e;

	fx_write(fx_path(fx, "f"), "x", 0604);
	assert_int_equal(symlink(fx_path(fx, "f"), fx_path(fx, "l1")), 0);
	assert_int_equal(symlink("l1", fx_path(fx, "l2")), 0);
	assert_non_null(realpath(fx_path(fx, "f"), real));
	e = entry_of(&m, fx_path(fx, "l2"), 0);
	assert_int_equal(e.type, FILESYSTEM__FILE_TYPE__FILE_TYPE_FILE);
	assert_int_equal(e.mode, 0604);
	assert_string_equal(e.symlink_target, real);
	fs_mem_release(&m);
}

static void test_broken_symlink(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	const char *link = fx_path(fx, "broken");
	Filesystem__EntryInfo e;

	assert_int_equal(symlink("does-not-exist", link), 0);
	e = entry_of(&m, link, 0);
	assert_int_equal(e.type, FILESYSTEM__FILE_TYPE__FILE_TYPE_UNSPECIFIED);
	assert_int_equal(e.mode, 0);
	assert_string_equal(e.permissions, "Lrwxrwxrwx");
	assert_int_equal(e._symlink_target_case,
			 FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET_SYMLINK_TARGET);
	assert_string_equal(e.symlink_target, link); /* unresolvable: the link itself */
	fs_mem_release(&m);
}

static void test_symlink_loop(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	Filesystem__EntryInfo e;

	assert_int_equal(symlink("loop2", fx_path(fx, "loop1")), 0);
	assert_int_equal(symlink("loop1", fx_path(fx, "loop2")), 0);
	e = entry_of(&m, fx_path(fx, "loop1"), 0);
	assert_int_equal(e.type, FILESYSTEM__FILE_TYPE__FILE_TYPE_UNSPECIFIED);
	fs_mem_release(&m);
}

static void test_missing_and_other_types(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	Filesystem__EntryInfo e;

	entry_of(&m, fx_path(fx, "nope"), -ENOENT);
	assert_int_equal(mkfifo(fx_path(fx, "fifo"), 0644), 0);
	e = entry_of(&m, fx_path(fx, "fifo"), 0);
	assert_int_equal(e.type, FILESYSTEM__FILE_TYPE__FILE_TYPE_UNSPECIFIED);
	assert_string_equal(e.permissions, "prw-r--r--");
	e = entry_of(&m, "/", 0);
	assert_string_equal(e.name, "/");
	assert_string_equal(e.path, "/");
	fs_mem_release(&m);
}

static void test_metadata(void **state)
{
	struct fixture *fx = *state;
	struct fs_mem m = { 0 };
	const char *p = fx_path(fx, "meta.txt");
	Filesystem__EntryInfo e;
	int seen = 0;

	fx_write(p, "", 0644);
	if (setxattr(p, "user.e2b.owner", "team-a", 6, 0) < 0) {
		fs_mem_release(&m);
		skip(); /* the test directory's filesystem has no user xattrs */
	}
	assert_int_equal(setxattr(p, "user.e2b.empty", "", 0, 0), 0);
	assert_int_equal(setxattr(p, "user.other", "ignored", 7, 0), 0);
	assert_int_equal(setxattr(p, "user.e2b.bin", "a\nb", 3, 0), 0);
	e = entry_of(&m, p, 0);
	assert_int_equal(e.n_metadata, 2);
	for (size_t i = 0; i < e.n_metadata; i++) {
		if (strcmp(e.metadata[i]->key, "owner") == 0) {
			assert_string_equal(e.metadata[i]->value, "team-a");
			seen |= 1;
		} else if (strcmp(e.metadata[i]->key, "empty") == 0) {
			assert_string_equal(e.metadata[i]->value, "");
			seen |= 2;
		}
	}
	assert_int_equal(seen, 3);
	fs_mem_release(&m);
}

static void test_network_magic(void **state)
{
	(void)state;
	assert_true(fs_is_network_fs(0x6969));
	assert_true(fs_is_network_fs(0x65735546));
	assert_true(fs_is_network_fs((long)(int)0xFF534D42)); /* sign-extended f_type */
	assert_true(fs_is_network_fs(0xFE534D42));
	assert_false(fs_is_network_fs(0xEF53)); /* ext4 */
	assert_false(fs_is_network_fs(0x01021994)); /* tmpfs */
}

static int group_setup(void **state)
{
	static char root[] = "/tmp/hutch-fs-users-XXXXXX";
	char path[PATH_MAX];
	FILE *f;

	(void)state;
	if (!mkdtemp(root))
		return -1;
	snprintf(path, sizeof(path), "%s/etc", root);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/etc/passwd", root);
	f = fopen(path, "w");
	fputs("root:x:0:0:root:/root:/bin/sh\nalice:x:4242:4242::/home/alice:/bin/sh\n", f);
	fclose(f);
	snprintf(path, sizeof(path), "%s/etc/group", root);
	f = fopen(path, "w");
	fputs("root:x:0:\nalice:x:4242:\n", f);
	fclose(f);
	users_set_root(root);
	*state = root;
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[PATH_MAX];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", (char *)*state);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_perm_strings),
		cmocka_unit_test_setup_teardown(test_regular_file, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_directory_and_owner, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_symlink_to_dir, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_symlink_chain_to_file, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_broken_symlink, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_symlink_loop, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_missing_and_other_types, fx_setup,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_metadata, fx_setup, fx_teardown),
		cmocka_unit_test(test_network_magic),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
