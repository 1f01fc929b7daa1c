/*
 * Template references (protocol.md §2.1) and the layer store's content
 * hash: names trimmed and lower-cased, namespace/name, tags (":default" is
 * no tag, UUID tags refused), ids and files hashes; equal trees hash equal,
 * a changed byte, mode or link target changes the hash.
 */
#include <errno.h>
#include <fcntl.h>
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

#include "layer.h"
#include "ref.h"

static void test_parse_names(void **state)
{
	struct tref r;
	struct herr err = { 0 };

	(void)state;
	assert_int_equal(tref_parse("  My-Template ", &r, &err), 0);
	assert_string_equal(r.name, "my-template");
	assert_string_equal(r.tag, "");
	assert_string_equal(r.ns, "");
	assert_int_equal(tref_parse("team_a/app:v1.2", &r, &err), 0);
	assert_string_equal(r.ns, "team_a");
	assert_string_equal(r.name, "app");
	assert_string_equal(r.tag, "v1.2");
	assert_int_equal(tref_parse("app:default", &r, &err), 0);
	assert_string_equal(r.tag, "");
}

static void test_parse_refusals(void **state)
{
	struct tref r;
	struct herr err = { 0 };

	(void)state;
	assert_int_equal(tref_parse("", &r, &err), -EINVAL);
	assert_int_equal(tref_parse("a b", &r, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "'a b'"));
	assert_int_equal(tref_parse("../etc", &r, &err), -EINVAL);
	assert_int_equal(tref_parse("a/b/c", &r, &err), -EINVAL);
	assert_int_equal(tref_parse("app:", &r, &err), -EINVAL);
	assert_int_equal(tref_parse("app:a/b", &r, &err), -EINVAL);
	assert_int_equal(tref_parse("app:123e4567-e89b-12d3-a456-426614174000", &r, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "UUID"));
	assert_int_equal(tref_parse("/app", &r, &err), -EINVAL);
}

static void test_shapes(void **state)
{
	(void)state;
	assert_true(tref_is_id("abcdefghij0123456789"));
	assert_false(tref_is_id("abcdefghij012345678"));
	assert_false(tref_is_id("ABCDEFGHIJ0123456789"));
	assert_true(tref_is_uuid("123e4567-e89b-12d3-a456-426614174000"));
	assert_false(tref_is_uuid("123e4567e89b-12d3-a456-4266141740000"));
	assert_true(tref_is_sha256("0123456789abcdef0123456789abcdef"
				   "0123456789abcdef0123456789abcdef"));
	assert_false(tref_is_sha256("0123456789ABCDEF0123456789abcdef"
				    "0123456789abcdef0123456789abcdef"));
	assert_false(tref_is_sha256("abc"));
}

static void make_tree(const char *dir, const char *content, mode_t mode,
		      const char *link)
{
	char path[256];
	FILE *f;

	assert_int_equal(mkdir(dir, 0755), 0);
	snprintf(path, sizeof(path), "%s/sub", dir);
	assert_int_equal(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/sub/file", dir);
	f = fopen(path, "w");
	fputs(content, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
	snprintf(path, sizeof(path), "%s/l", dir);
	assert_int_equal(symlink(link, path), 0);
}

static void hash_of(const char *dir, char out[LAYER_HASH_HEX])
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	struct herr err = { 0 };

	assert_true(fd >= 0);
	assert_int_equal(layer_tree_hash(fd, out, &err), 0);
	close(fd);
}

static void test_tree_hash(void **state)
{
	char base[] = "/tmp/hutch-lh-XXXXXX", p[5][128];
	char h[5][LAYER_HASH_HEX];
	int fd;

	(void)state;
	assert_non_null(mkdtemp(base));
	for (int i = 0; i < 5; i++)
		snprintf(p[i], sizeof(p[i]), "%s/t%d", base, i);
	make_tree(p[0], "same", 0644, "/x");
	make_tree(p[1], "same", 0644, "/x");
	make_tree(p[2], "samf", 0644, "/x");
	make_tree(p[3], "same", 0755, "/x");
	make_tree(p[4], "same", 0644, "/y");
	for (int i = 0; i < 5; i++)
		hash_of(p[i], h[i]);
	assert_string_equal(h[0], h[1]);
	for (int i = 2; i < 5; i++)
		assert_string_not_equal(h[0], h[i]);
	fd = open("/tmp", O_RDONLY | O_DIRECTORY);
	assert_int_equal(layer_remove_tree(fd, base + 5, NULL), 0);
	close(fd);
	assert_int_equal(access(base, F_OK), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_names),
		cmocka_unit_test(test_parse_refusals),
		cmocka_unit_test(test_shapes),
		cmocka_unit_test(test_tree_hash),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
