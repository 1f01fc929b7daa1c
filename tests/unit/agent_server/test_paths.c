/* envd's path rules, lexical cleaning and mkdir -p (paths.c). */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fixture.h"
#include "paths.h"

static struct agent_user user = { .name = "user", .uid = 1000, .gid = 1000,
				  .home = "/home/user" };

static void check_clean(const char *in, const char *want)
{
	char buf[256];

	snprintf(buf, sizeof(buf), "%s", in);
	paths_clean(buf);
	if (strcmp(buf, want) != 0)
		fail_msg("clean(\"%s\") = \"%s\", want \"%s\"", in, buf, want);
}

/* The cases Go's path.Clean documents, which envd relies on. */
static void clean_folds_lexically(void **unused)
{
	check_clean("/", "/");
	check_clean("//", "/");
	check_clean("/a/b/c", "/a/b/c");
	check_clean("/a//b///c/", "/a/b/c");
	check_clean("/a/./b/.", "/a/b");
	check_clean("/a/b/../c", "/a/c");
	check_clean("/a/b/../../..", "/");
	check_clean("/..", "/");
	check_clean("/../../x", "/x");
	check_clean("/a/../../b/./c/..", "/b");
	check_clean("/.hidden/..x/x..", "/.hidden/..x/x..");
	check_clean("/...", "/...");
	check_clean("", ".");
	check_clean(".", ".");
	check_clean("a/b/..", "a");
	check_clean("a/../..", "..");
	check_clean("../a/..", "..");
	check_clean("../../a", "../../a");
	check_clean("./a/./", "a");
}

static void check_resolve(const char *path, const char *workdir, const char *want)
{
	char out[PATH_MAX];
	struct herr err = { 0 };

	assert_int_equal(paths_resolve(&user, path, workdir, out, sizeof(out), &err), 0);
	if (strcmp(out, want) != 0)
		fail_msg("resolve(\"%s\", \"%s\") = \"%s\", want \"%s\"", path,
			 workdir ? workdir : "(null)", out, want);
}

static void resolve_rules(void **unused)
{
	/* empty: workdir when set, else home */
	check_resolve("", NULL, "/home/user");
	check_resolve("", "", "/home/user");
	check_resolve("", "/srv/app/", "/srv/app");
	check_resolve(NULL, "/srv/app", "/srv/app");
	/* tilde */
	check_resolve("~", "/srv", "/home/user");
	check_resolve("~/", NULL, "/home/user");
	check_resolve("~/a/../b", NULL, "/home/user/b");
	/* absolute stays absolute, only cleaned */
	check_resolve("/etc//passwd", "/srv", "/etc/passwd");
	check_resolve("/../..", NULL, "/");
	/* relative joins the home, not the workdir */
	check_resolve("file.txt", "/srv", "/home/user/file.txt");
	check_resolve("./a/b/", NULL, "/home/user/a/b");
	check_resolve("../../../../etc", NULL, "/etc");
	check_resolve("..", NULL, "/home");
}

static void other_users_home_refused(void **unused)
{
	char out[PATH_MAX];
	struct herr err = { 0 };

	assert_int_equal(paths_resolve(&user, "~root/x", NULL, out, sizeof(out), &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "~root/x"));
	assert_int_equal(paths_resolve(&user, "~other", NULL, out, sizeof(out), &err), -EINVAL);
	/* "~" inside a path is just a name */
	check_resolve("a/~b", NULL, "/home/user/a/~b");
	check_resolve("/~x", NULL, "/~x");
}

static void long_paths(void **unused)
{
	char *longp = malloc(PATH_MAX + 10);
	char out[PATH_MAX], small[16];
	struct herr err = { 0 };

	assert_non_null(longp);
	longp[0] = '/';
	memset(longp + 1, 'a', PATH_MAX + 8);
	longp[PATH_MAX + 9] = '\0';
	assert_int_equal(paths_resolve(&user, longp, NULL, out, sizeof(out), &err),
			 -ENAMETOOLONG);
	assert_non_null(strstr(err.msg, "too long"));
	/* does not fit the caller's buffer */
	assert_int_equal(paths_resolve(&user, "file.txt", NULL, small, sizeof(small), &err),
			 -ENAMETOOLONG);
	/* fits exactly: "/home/user/x" is 12 bytes + NUL */
	char fit[13];
	assert_int_equal(paths_resolve(&user, "x", NULL, fit, sizeof(fit), &err), 0);
	assert_string_equal(fit, "/home/user/x");
	free(longp);
}

static void mkdir_all_creates_and_owns(void **unused)
{
	char *dir = fixture_dir();
	char path[PATH_MAX];
	struct herr err = { 0 };
	struct stat st;
	uid_t uid = geteuid() == 0 ? 4321 : geteuid();
	gid_t gid = getegid() == 0 ? 4322 : getegid();

	snprintf(path, sizeof(path), "%s/a/b//c/", dir);
	assert_int_equal(paths_mkdir_all(path, uid, gid, &err), 0);
	snprintf(path, sizeof(path), "%s/a/b/c", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_uid, uid);
	assert_int_equal(st.st_gid, gid);
	/* idempotent; existing folders keep their owner */
	assert_int_equal(paths_mkdir_all(path, 0, 0, &err), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_uid, uid);
	/* the folder we started in was not chowned */
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(st.st_uid, geteuid());
	fixture_remove(dir);
}

static void mkdir_all_names_file_component(void **unused)
{
	char *dir = fixture_dir();
	char path[PATH_MAX];
	struct herr err = { 0 };

	fixture_write(dir, "file", "x");
	snprintf(path, sizeof(path), "%s/file/sub/deeper", dir);
	assert_int_equal(paths_mkdir_all(path, geteuid(), getegid(), &err), -ENOTDIR);
	assert_non_null(strstr(err.msg, "/file"));
	assert_null(strstr(err.msg, "sub"));
	fixture_remove(dir);
}

/* Existing symlinked folders are followed, as mkdir -p does. */
static void mkdir_all_follows_existing_symlink(void **unused)
{
	char *dir = fixture_dir();
	char target[PATH_MAX], link[PATH_MAX], path[PATH_MAX];
	struct herr err = { 0 };
	struct stat st;

	snprintf(target, sizeof(target), "%s/real", dir);
	snprintf(link, sizeof(link), "%s/link", dir);
	assert_int_equal(mkdir(target, 0755), 0);
	assert_int_equal(symlink(target, link), 0);
	snprintf(path, sizeof(path), "%s/link/new", dir);
	assert_int_equal(paths_mkdir_all(path, geteuid(), getegid(), &err), 0);
	snprintf(path, sizeof(path), "%s/real/new", dir);
	assert_int_equal(stat(path, &st), 0);
	fixture_remove(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(clean_folds_lexically),
		cmocka_unit_test(resolve_rules),
		cmocka_unit_test(other_users_home_refused),
		cmocka_unit_test(long_paths),
		cmocka_unit_test(mkdir_all_creates_and_owns),
		cmocka_unit_test(mkdir_all_names_file_component),
		cmocka_unit_test(mkdir_all_follows_existing_symlink),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
