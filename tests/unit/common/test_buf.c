/* Bounded buffers: growth, the hard maximum, consume and steal. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "buf.h"

static void append_within_limit_keeps_bytes_and_nul(void **unused)
{
	_cleanup_hbuf_ struct hbuf b;

	hbuf_init(&b, 16);
	assert_int_equal(hbuf_append(&b, "hello", 5), 0);
	assert_int_equal(hbuf_append_str(&b, " world"), 0);
	assert_int_equal(b.len, 11);
	assert_string_equal(b.data, "hello world");
}

static void append_past_limit_fails_and_keeps_contents(void **unused)
{
	_cleanup_hbuf_ struct hbuf b;

	hbuf_init(&b, 8);
	assert_int_equal(hbuf_append(&b, "12345678", 8), 0);
	assert_int_equal(hbuf_append(&b, "9", 1), -E2BIG);
	assert_int_equal(b.len, 8);
	assert_string_equal(b.data, "12345678");
	assert_true(b.cap <= 9);
}

static void huge_length_does_not_overflow(void **unused)
{
	_cleanup_hbuf_ struct hbuf b;

	hbuf_init(&b, 1024);
	assert_int_equal(hbuf_append(&b, "ab", 2), 0);
	assert_int_equal(hbuf_append(&b, "x", SIZE_MAX - 1), -E2BIG);
	assert_int_equal(b.len, 2);
}

static void printf_respects_limit(void **unused)
{
	_cleanup_hbuf_ struct hbuf b;

	hbuf_init(&b, 10);
	assert_int_equal(hbuf_printf(&b, "%d-%s", 42, "abc"), 0);
	assert_string_equal(b.data, "42-abc");
	assert_int_equal(hbuf_printf(&b, "%s", "too long"), -E2BIG);
	assert_string_equal(b.data, "42-abc");
}

static void consume_and_steal(void **unused)
{
	struct hbuf b;
	size_t len;
	char *p;

	hbuf_init(&b, 64);
	assert_int_equal(hbuf_append_str(&b, "abcdef"), 0);
	hbuf_consume(&b, 2);
	assert_string_equal(b.data, "cdef");
	hbuf_consume(&b, 100);
	assert_int_equal(b.len, 0);
	assert_int_equal(hbuf_append_str(&b, "xyz"), 0);
	p = hbuf_steal(&b, &len);
	assert_int_equal(len, 3);
	assert_string_equal(p, "xyz");
	assert_null(b.data);
	free(p);
	hbuf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(append_within_limit_keeps_bytes_and_nul),
		cmocka_unit_test(append_past_limit_fails_and_keeps_contents),
		cmocka_unit_test(huge_length_does_not_overflow),
		cmocka_unit_test(printf_respects_limit),
		cmocka_unit_test(consume_and_steal),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
