/* Logging: line format, quoting, extra fields, per-subsystem levels. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "log.h"

static char captured[2 * LOG_LINE_MAX];

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

/* The line holds exactly one newline, at its end. */
static void assert_one_line(void)
{
	assert_ptr_equal(strchr(captured, '\n'), captured + strlen(captured) - 1);
}

static void emit_info(void)
{
	log_info("api", "iabc123", "created %d sandboxes, \"quoted\"\nnext", 3);
}

static void line_has_fields_and_escapes(void **unused)
{
	assert_int_equal(log_configure("info", NULL), 0);
	capture(emit_info);
	assert_non_null(strstr(captured, "level=info sub=api sandbox=iabc123 msg=\"created 3"));
	assert_non_null(strstr(captured, "\\\"quoted\\\"\\nnext\"\n"));
	assert_int_equal(strncmp(captured, "ts=", 3), 0);
	assert_one_line();
}

static void emit_kv(void)
{
	log_kv(LOG_INFO, "template", "iabc123", "pulled", "image", "alpine:3.20",
	       "path", "/a b/\"c\"\\", "empty", "", "none", NULL, "eq", "a=b",
	       "bad key\n", "x", NULL);
}

static void kv_fields_follow_msg_quoted_only_when_needed(void **unused)
{
	assert_int_equal(log_configure("info", NULL), 0);
	capture(emit_kv);
	assert_non_null(strstr(captured, " sub=template sandbox=iabc123 msg=\"pulled\" "
			       "image=alpine:3.20 path=\"/a b/\\\"c\\\"\\\\\" empty=\"\" "
			       "none=\"\" eq=\"a=b\" bad_key_=x\n"));
	assert_one_line();
}

static void emit_kv_control(void)
{
	log_kv(LOG_WARN, "api", NULL, "a\tb", "v", "line1\nline2\x01", NULL);
}

static void kv_values_escape_newlines_and_controls(void **unused)
{
	assert_int_equal(log_configure("info", NULL), 0);
	capture(emit_kv_control);
	assert_non_null(strstr(captured, "msg=\"a\\x09b\" v=\"line1\\nline2\\x01\"\n"));
	assert_null(strstr(captured, "sandbox="));
	assert_one_line();
}

static void emit_kv_debug(void)
{
	log_kv(LOG_DEBUG, "api", NULL, "hidden", "k", "v", NULL);
}

static void kv_obeys_levels(void **unused)
{
	assert_int_equal(log_configure("info", NULL), 0);
	capture(emit_kv_debug);
	assert_string_equal(captured, "");
}

/* A sandbox id comes from a request path at times: it must not split a line
 * or pose as another field. */
static void emit_hostile_sandbox(void)
{
	log_info("api", "x msg=\"forged\"\nts=0", "real");
}

static void sandbox_field_is_quoted_when_not_a_word(void **unused)
{
	assert_int_equal(log_configure("info", NULL), 0);
	capture(emit_hostile_sandbox);
	assert_non_null(strstr(captured, " sandbox=\"x msg=\\\"forged\\\"\\nts=0\" "
			       "msg=\"real\"\n"));
	assert_one_line();
}

static char long_value[3 * LOG_LINE_MAX];

static void emit_long(void)
{
	log_kv(LOG_INFO, "api", NULL, "long", "first", long_value, "second", "2", NULL);
}

static void long_lines_are_cut_inside_quotes(void **unused)
{
	size_t len;

	memset(long_value, '"', sizeof(long_value) - 1);
	assert_int_equal(log_configure("info", NULL), 0);
	capture(emit_long);
	len = strlen(captured);
	assert_true(len <= LOG_LINE_MAX);
	assert_true(len > LOG_LINE_MAX - 8);
	assert_one_line();
	/* The cut falls between escapes, and the value is closed. */
	assert_string_equal(captured + len - 4, "\\\"\"\n");
	assert_null(strstr(captured, "second="));
}

static void emit_debug_both(void)
{
	log_debug("proxy", NULL, "proxy detail");
	log_debug("api", NULL, "api detail");
}

static void per_subsystem_levels(void **unused)
{
	assert_int_equal(log_configure("warn,proxy=debug", NULL), 0);
	assert_true(log_enabled("proxy", LOG_DEBUG));
	assert_false(log_enabled("api", LOG_INFO));
	assert_true(log_enabled("api", LOG_WARN));
	capture(emit_debug_both);
	assert_non_null(strstr(captured, "proxy detail"));
	assert_null(strstr(captured, "api detail"));
	assert_int_equal(log_configure("info", NULL), 0);
}

static void bad_specs_are_refused_and_keep_old_setting(void **unused)
{
	struct herr err;

	assert_int_equal(log_configure("debug", NULL), 0);
	assert_int_equal(log_configure("loud", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "'loud' is not a level"));
	assert_int_equal(log_configure("api=verbose", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "'verbose' for api is not a level"));
	assert_int_equal(log_configure("=debug", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "names no subsystem"));
	assert_true(log_enabled("anything", LOG_DEBUG));
	assert_int_equal(log_configure("info", NULL), 0);
}

static const char *const known[] = { "api", "proxy", "runtime", NULL };

static void unknown_subsystems_are_refused_once_named(void **unused)
{
	struct herr err;
	char text[640];

	log_set_subsystems(known);
	log_spec_help(text, sizeof(text));
	assert_non_null(strstr(text, "e.g. 'info,proxy=debug'"));
	assert_non_null(strstr(text, "levels error, warn, info, debug; subsystems api, proxy, "
			       "runtime"));
	assert_int_equal(log_configure("warn,proxy=debug", &err), 0);
	assert_int_equal(log_configure("info,prxy=debug", &err), -EINVAL);
	assert_string_equal(err.msg, "log spec: unknown subsystem 'prxy' (known: api, "
			    "proxy, runtime)");
	/* The refused spec changed nothing. */
	assert_true(log_enabled("proxy", LOG_DEBUG));
	assert_false(log_enabled("api", LOG_INFO));
	assert_int_equal(log_configure("a-name-far-longer-than-any-subsystem=info", &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "unknown subsystem"));
	log_set_subsystems(NULL);
	log_spec_help(text, sizeof(text));
	assert_non_null(strstr(text, "subsystems (any name)"));
	assert_int_equal(log_configure("info,prxy=debug", &err), 0);
	assert_int_equal(log_configure("info", NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(line_has_fields_and_escapes),
		cmocka_unit_test(kv_fields_follow_msg_quoted_only_when_needed),
		cmocka_unit_test(kv_values_escape_newlines_and_controls),
		cmocka_unit_test(kv_obeys_levels),
		cmocka_unit_test(sandbox_field_is_quoted_when_not_a_word),
		cmocka_unit_test(long_lines_are_cut_inside_quotes),
		cmocka_unit_test(per_subsystem_levels),
		cmocka_unit_test(bad_specs_are_refused_and_keep_old_setting),
		cmocka_unit_test(unknown_subsystems_are_refused_once_named),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
