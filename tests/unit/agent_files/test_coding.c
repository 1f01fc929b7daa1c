/*
 * Unit tests of the download coding choice in src/agent/files/download.c:
 * files_download_coding() under both --download-gzip modes, and the parsing
 * of that setting.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "files.h"
#include "http.h"

static enum files_coding fallback(const char *ae)
{
	return files_download_coding(ae, FILES_GZIP_FALLBACK);
}

static enum files_coding negotiate(const char *ae)
{
	return files_download_coding(ae, FILES_GZIP_NEGOTIATE);
}

static void test_fallback_prefers_identity(void **state)
{
	/* Every client that accepts identity, even implicitly, gets it. */
	assert_int_equal(fallback(NULL), FILES_CODING_IDENTITY);
	assert_int_equal(fallback(""), FILES_CODING_IDENTITY);
	assert_int_equal(fallback("gzip"), FILES_CODING_IDENTITY);
	assert_int_equal(fallback("gzip, deflate, br"), FILES_CODING_IDENTITY);
	assert_int_equal(fallback("gzip;q=1, identity;q=0.001"), FILES_CODING_IDENTITY);
	assert_int_equal(fallback("*"), FILES_CODING_IDENTITY);
	assert_int_equal(fallback("identity;q=0, *"), FILES_CODING_GZIP);
}

static void test_fallback_gzip_when_identity_refused(void **state)
{
	assert_int_equal(fallback("gzip, identity;q=0"), FILES_CODING_GZIP);
	assert_int_equal(fallback("identity;q=0, gzip"), FILES_CODING_GZIP);
	assert_int_equal(fallback("*;q=0, gzip"), FILES_CODING_GZIP);
	assert_int_equal(fallback("br, identity;q=0"), FILES_CODING_NONE);
	assert_int_equal(fallback("*;q=0"), FILES_CODING_NONE);
}

static void test_negotiate_follows_the_client(void **state)
{
	assert_int_equal(negotiate(NULL), FILES_CODING_IDENTITY);
	assert_int_equal(negotiate("gzip"), FILES_CODING_GZIP);
	assert_int_equal(negotiate("gzip, deflate, br"), FILES_CODING_GZIP);
	assert_int_equal(negotiate("gzip;q=0.5, identity"), FILES_CODING_IDENTITY);
	assert_int_equal(negotiate("gzip, identity;q=0"), FILES_CODING_GZIP);
	assert_int_equal(negotiate("br, identity;q=0"), FILES_CODING_NONE);
}

static void test_setting_values(void **state)
{
	struct herr err = { 0 };

	assert_int_equal(files_set_download_gzip("negotiate", &err), 0);
	assert_int_equal(files_set_download_gzip("fallback", &err), 0);
	assert_int_equal(files_set_download_gzip(NULL, &err), 0);
	assert_int_equal(files_set_download_gzip("never", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "download-gzip: 'never'"));
	assert_int_equal(files_set_download_gzip("", &err), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fallback_prefers_identity),
		cmocka_unit_test(test_fallback_gzip_when_identity_refused),
		cmocka_unit_test(test_negotiate_follows_the_client),
		cmocka_unit_test(test_setting_values),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
