/* passwd and group parsing without NSS (users.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <stdio.h>
#include <cmocka.h>

#include "fixture.h"
#include "users.h"

static const char passwd[] =
	"# a comment line\n"
	"root:x:0:0:root:/root:/bin/bash\n"
	"\n"
	"broken-no-fields\n"
	"toofew:x:5:5:/home/toofew\n"
	"toomany:x:6:6:g:/h:/bin/sh:extra\n"
	"baduid:x:12ab:100::/home/baduid:/bin/sh\n"
	"neguid:x:-1:100::/home/neguid:/bin/sh\n"
	"hugeuid:x:4294967295:100::/h:/bin/sh\n"
	":x:7:7::/home/noname:/bin/sh\n"
	"user:x:1000:1000:User,,,:/home/user:/bin/bash\n"
	"dup:x:2001:2001::/first:/bin/sh\n"
	"dup:x:2002:2002::/second:/bin/sh\n"
	"nohome:x:3000:3000:::\n"
	"last:x:4000:4000::/home/last:/bin/sh"; /* no final newline */

static const char group[] =
	"root:x:0:\n"
	"user:x:1000:\n"
	"sudo:x:27:user\n"
	"docker:x:999:alice,user,bob\n"
	"almost:x:500:users,use,user2\n"
	"garbage line\n"
	"badgid:x:abc:user\n"
	"wheel:x:10:user\n"
	"wheel-again:x:10:user\n";

static int setup(void **state)
{
	char *dir = fixture_dir();

	fixture_write(dir, "passwd", passwd);
	fixture_write(dir, "group", group);
	users_set_etc_dir(dir);
	*state = dir;
	return 0;
}

static int teardown(void **state)
{
	fixture_remove(*state);
	users_set_etc_dir(NULL);
	return 0;
}

static void finds_user_with_fields(void **unused)
{
	struct agent_user u;
	struct herr err = { 0 };

	assert_int_equal(users_lookup("user", &u, &err), 0);
	assert_string_equal(u.name, "user");
	assert_int_equal(u.uid, 1000);
	assert_int_equal(u.gid, 1000);
	assert_string_equal(u.home, "/home/user");
	assert_string_equal(u.shell, "/bin/bash");
}

/* Primary group first, then member groups; no duplicates; bad lines ignored. */
static void supplementary_groups_from_member_lists(void **unused)
{
	struct agent_user u;
	struct herr err = { 0 };

	assert_int_equal(users_lookup("user", &u, &err), 0);
	assert_int_equal(u.ngroups, 4);
	assert_int_equal(u.groups[0], 1000);
	assert_int_equal(u.groups[1], 27);
	assert_int_equal(u.groups[2], 999);
	assert_int_equal(u.groups[3], 10);
}

static void root_has_only_its_primary_group(void **unused)
{
	struct agent_user u;
	struct herr err = { 0 };

	assert_int_equal(users_lookup("root", &u, &err), 0);
	assert_int_equal(u.uid, 0);
	assert_int_equal(u.ngroups, 1);
	assert_int_equal(u.groups[0], 0);
}

static void malformed_lines_are_skipped(void **unused)
{
	static const char *const bad[] = { "broken-no-fields", "toofew", "toomany", "baduid",
					   "neguid", "hugeuid", "", "# a comment line" };
	struct agent_user u;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct herr err = { 0 };

		assert_int_equal(users_lookup(bad[i], &u, &err), -ENOENT);
		assert_non_null(strstr(err.msg, "invalid username"));
	}
}

static void unknown_user_names_it(void **unused)
{
	struct agent_user u;
	struct herr err = { 0 };

	assert_int_equal(users_lookup("nobody-here", &u, &err), -ENOENT);
	assert_string_equal(err.msg, "invalid username: 'nobody-here'");
}

static void first_duplicate_wins_and_empty_fields_are_kept(void **unused)
{
	struct agent_user u;
	struct herr err = { 0 };

	assert_int_equal(users_lookup("dup", &u, &err), 0);
	assert_string_equal(u.home, "/first");
	assert_int_equal(users_lookup("nohome", &u, &err), 0);
	assert_string_equal(u.home, "");
	assert_int_equal(users_lookup("last", &u, &err), 0);
	assert_string_equal(u.shell, "/bin/sh");
}

static void long_name_refused(void **unused)
{
	char name[USERS_NAME_MAX + 10];
	struct agent_user u;
	struct herr err = { 0 };

	memset(name, 'a', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(users_lookup(name, &u, &err), -ENOENT);
}

static void ids_to_names(void **unused)
{
	char buf[64];

	users_uid_name(1000, buf, sizeof(buf));
	assert_string_equal(buf, "user");
	users_uid_name(4242, buf, sizeof(buf));
	assert_string_equal(buf, "4242");
	users_gid_name(27, buf, sizeof(buf));
	assert_string_equal(buf, "sudo");
	users_gid_name(4242, buf, sizeof(buf));
	assert_string_equal(buf, "4242");
}

static void missing_files(void **state)
{
	char *empty = fixture_dir();
	struct agent_user u;
	struct herr err = { 0 };
	char buf[32];

	users_set_etc_dir(empty);
	assert_int_equal(users_lookup("user", &u, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "passwd"));
	users_uid_name(0, buf, sizeof(buf));
	assert_string_equal(buf, "0");

	/* passwd without group: the primary group only */
	fixture_write(empty, "passwd", "user:x:1000:1000::/home/user:/bin/sh\n");
	assert_int_equal(users_lookup("user", &u, &err), 0);
	assert_int_equal(u.ngroups, 1);
	users_set_etc_dir(*state);
	fixture_remove(empty);
}

/* A line far past the limit is skipped whole; the next line still parses. */
static void huge_line_skipped(void **unused)
{
	char *dir = fixture_dir();
	size_t n = 200000;
	char *text = malloc(n + 128);
	struct agent_user u;
	struct herr err = { 0 };

	assert_non_null(text);
	memcpy(text, "huge:x:1:1::/", 13);
	memset(text + 13, 'h', n);
	strcpy(text + 13 + n, ":/bin/sh\nok:x:2:2::/ok:/bin/sh\n");
	fixture_write(dir, "passwd", text);
	free(text);
	users_set_root(NULL);
	users_set_etc_dir(dir);
	assert_int_equal(users_lookup("huge", &u, &err), -ENOENT);
	assert_int_equal(users_lookup("ok", &u, &err), 0);
	assert_string_equal(u.home, "/ok");
	fixture_remove(dir);
}

/* users_set_root(root) reads root/etc. */
static void root_prefix(void **state)
{
	char *root = fixture_dir();
	char etc[4096];
	struct agent_user u;
	struct herr err = { 0 };

	snprintf(etc, sizeof(etc), "%s/etc", root);
	assert_int_equal(mkdir(etc, 0755), 0);
	fixture_write(etc, "passwd", "inroot:x:7:7::/r:/bin/sh\n");
	users_set_root(root);
	assert_int_equal(users_lookup("inroot", &u, &err), 0);
	users_set_etc_dir(*state);
	fixture_remove(root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(finds_user_with_fields),
		cmocka_unit_test(supplementary_groups_from_member_lists),
		cmocka_unit_test(root_has_only_its_primary_group),
		cmocka_unit_test(malformed_lines_are_skipped),
		cmocka_unit_test(unknown_user_names_it),
		cmocka_unit_test(first_duplicate_wins_and_empty_fields_are_kept),
		cmocka_unit_test(long_name_refused),
		cmocka_unit_test(ids_to_names),
		cmocka_unit_test(missing_files),
		cmocka_unit_test(huge_line_skipped),
		cmocka_unit_test(root_prefix),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
