/*
 * Image references as `hutchd templates pull` and fromImage take them:
 * Docker Hub short names, registries with ports, tags, digests, and the
 * malformed ones refused with a message naming the bad part. Pulls
 * themselves run against a real registry in tests/e2e/templates-import.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pull.h"

#define HEX64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void expect(const char *in, const char *canonical)
{
	struct pull_ref r;
	struct herr err = { 0 };
	char text[800];

	if (pull_parse_ref(in, &r, &err) < 0)
		fail_msg("%s: %s", in, err.msg);
	pull_ref_text(&r, text, sizeof(text));
	assert_string_equal(text, canonical);
}

static void refuse(const char *in, const char *part)
{
	struct pull_ref r;
	struct herr err = { 0 };

	assert_int_equal(pull_parse_ref(in, &r, &err), -EINVAL);
	if (!strstr(err.msg, part))
		fail_msg("%s: '%s' lacks '%s'", in, err.msg, part);
}

static void test_references(void **state)
{
	(void)state;
	expect("busybox", "registry-1.docker.io/library/busybox:latest");
	expect("busybox:1.36", "registry-1.docker.io/library/busybox:1.36");
	expect("org/app", "registry-1.docker.io/org/app:latest");
	expect("ghcr.io/org/app:v1.2", "ghcr.io/org/app:v1.2");
	expect("127.0.0.1:5000/a/b/c:x", "127.0.0.1:5000/a/b/c:x");
	expect("localhost/app", "localhost/app:latest");
	expect("quay.io/a/b@sha256:" HEX64, "quay.io/a/b@sha256:" HEX64);
}

static void test_bad_references(void **state)
{
	(void)state;
	refuse("", "empty");
	refuse("busybox@sha256:abc", "digest");
	refuse("busybox@md5:0123", "digest");
	refuse("busybox:", "bad tag");
	refuse("busybox:v1!", "bad tag");
	refuse("Upper/Case", "bad repository name");
	refuse("host.io/../etc", "bad repository name");
	refuse("host.io//x", "bad repository name");
	refuse("host.io/x/", "bad repository name");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_references),
		cmocka_unit_test(test_bad_references),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
