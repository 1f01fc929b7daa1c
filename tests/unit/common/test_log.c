/* Logging: line format, quoting, per-subsystem levels. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "log.h"

static char captured[4096];

static void capture(void (*emit)(void))
{
	int fds[2];
	ssize_t n;

	assert_int_equal(pipe(fds), 0);
	log_set_fd(fds[1]);
	emit();
	log_set_fd(2);
	close(fds[1]);
	n = read(fds[0], captured, sizeof(captured) - 1);
	captured[n > 0 ? n : 0] = '\0';
	close(fds[0]);
}

static void emit_info(void)
{
	log_info("api", "iabc123", "created %d sandboxes, \"quoted\"\nnext", 3);
}

static void line_has_fields_and_escapes(void **unused)
{
	assert_int_equal(log_configure("info"), 0);
	capture(emit_info);
	assert_non_null(strstr(captured, "level=info sub=api sandbox=iabc123 msg=\"created 3"));
	assert_non_null(strstr(captured, "\\\"quoted\\\"\\nnext\"\n"));
	assert_int_equal(strncmp(captured, "ts=", 3), 0);
	assert_ptr_equal(strchr(captured, '\n'), captured + strlen(captured) - 1);
}

static void emit_debug_both(void)
{
	log_debug("proxy", NULL, "proxy detail");
	log_debug("api", NULL, "api detail");
}

static void per_subsystem_levels(void **unused)
{
	assert_int_equal(log_configure("warn,proxy=debug"), 0);
	assert_true(log_enabled("proxy", LOG_DEBUG));
	assert_false(log_enabled("api", LOG_INFO));
	assert_true(log_enabled("api", LOG_WARN));
	capture(emit_debug_both);
	assert_non_null(strstr(captured, "proxy detail"));
	assert_null(strstr(captured, "api detail"));
	assert_int_equal(log_configure("info"), 0);
}

static void bad_specs_are_refused_and_keep_old_setting(void **unused)
{
	assert_int_equal(log_configure("debug"), 0);
	assert_int_equal(log_configure("loud"), -EINVAL);
	assert_int_equal(log_configure("api=verbose"), -EINVAL);
	assert_int_equal(log_configure("=debug"), -EINVAL);
	assert_true(log_enabled("anything", LOG_DEBUG));
	assert_int_equal(log_configure("info"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(line_has_fields_and_escapes),
		cmocka_unit_test(per_subsystem_levels),
		cmocka_unit_test(bad_specs_are_refused_and_keep_old_setting),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
