/* Error reporting: messages name the failure, stay bounded, and wrap. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "err.h"

static void set_sys_and_wrap(void **unused)
{
	struct herr err;

	assert_int_equal(herr_sys(&err, -ENOENT, "opening %s", "/etc/x"), -ENOENT);
	assert_string_equal(err.msg, "opening /etc/x: No such file or directory");
	assert_int_equal(herr_wrap(&err, "loading config"), -ENOENT);
	assert_string_equal(err.msg, "loading config: opening /etc/x: No such file or directory");
}

static void long_messages_are_truncated_not_overflowed(void **unused)
{
	char big[2000];
	struct herr err;

	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	herr_set(&err, -EINVAL, "%s", big);
	assert_int_equal(strlen(err.msg), HERR_MSG_MAX - 1);
	herr_wrap(&err, "%s", big);
	assert_int_equal(strlen(err.msg), HERR_MSG_MAX - 1);
	herr_sys(&err, -EIO, "%s", big);
	assert_int_equal(strlen(err.msg), HERR_MSG_MAX - 1);
}

static void null_err_is_allowed(void **unused)
{
	assert_int_equal(herr_set(NULL, -EPERM, "x"), -EPERM);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(set_sys_and_wrap),
		cmocka_unit_test(long_messages_are_truncated_not_overflowed),
		cmocka_unit_test(null_err_is_allowed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
