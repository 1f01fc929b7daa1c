/* The agent's run-time settings and their locking (state.c). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "state.h"

static void defaults(void **unused)
{
	char buf[64];

	state_default_user(buf, sizeof(buf));
	assert_string_equal(buf, "user");
	state_default_workdir(buf, sizeof(buf));
	assert_string_equal(buf, "");
	assert_int_equal(state_access_token(buf, sizeof(buf)), 0);
	assert_string_equal(buf, "");
	char **env = state_env_copy();
	assert_non_null(env);
	assert_null(env[0]);
	state_env_free(env);
}

static void setters_and_clearing(void **unused)
{
	char buf[64];

	state_set_access_token("tok");
	assert_int_equal(state_access_token(buf, sizeof(buf)), 1);
	assert_string_equal(buf, "tok");
	state_set_access_token("");
	assert_int_equal(state_access_token(buf, sizeof(buf)), 0);

	state_set_default_user("root");
	state_default_user(buf, sizeof(buf));
	assert_string_equal(buf, "root");
	state_set_default_user(NULL);
	state_default_user(buf, sizeof(buf));
	assert_string_equal(buf, "user");

	state_set_default_workdir("/srv");
	state_default_workdir(buf, sizeof(buf));
	assert_string_equal(buf, "/srv");
	/* copies are truncated to the caller's buffer, always terminated */
	state_default_workdir(buf, 3);
	assert_string_equal(buf, "/s");
	state_set_default_workdir(NULL);
}

static void env_replaced_whole(void **unused)
{
	const char *k1[] = { "A", "B" }, *v1[] = { "1", "two words" };
	const char *k2[] = { "C" }, *v2[] = { "" };
	struct herr err = { 0 };
	char **env;

	assert_int_equal(state_set_env(k1, v1, 2, &err), 0);
	env = state_env_copy();
	assert_string_equal(env[0], "A=1");
	assert_string_equal(env[1], "B=two words");
	assert_null(env[2]);
	state_env_free(env);

	assert_int_equal(state_set_env(k2, v2, 1, &err), 0);
	env = state_env_copy();
	assert_string_equal(env[0], "C=");
	assert_null(env[1]);
	state_env_free(env);
}

static void bad_env_name_keeps_old_set(void **unused)
{
	const char *good[] = { "KEEP" }, *gv[] = { "1" };
	const char *bad[] = { "OK", "BAD=NAME" }, *bv[] = { "1", "2" };
	const char *empty[] = { "" };
	struct herr err = { 0 };
	char **env;

	assert_int_equal(state_set_env(good, gv, 1, &err), 0);
	assert_int_equal(state_set_env(bad, bv, 2, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "BAD=NAME"));
	assert_int_equal(state_set_env(empty, gv, 1, &err), -EINVAL);
	env = state_env_copy();
	assert_string_equal(env[0], "KEEP=1");
	assert_null(env[1]);
	state_env_free(env);
}

/* Readers racing a writer only ever see one of the values written whole. */
static void *writer(void *arg)
{
	for (int i = 0; i < 20000; i++)
		state_set_default_workdir(i % 2 ? "/aaaaaaaaaaaaaaaa" : "/b");
	return NULL;
}

static void concurrent_readers_see_whole_values(void **unused)
{
	pthread_t t;
	char buf[64];

	assert_int_equal(pthread_create(&t, NULL, writer, NULL), 0);
	for (int i = 0; i < 20000; i++) {
		state_default_workdir(buf, sizeof(buf));
		if (buf[0] && strcmp(buf, "/aaaaaaaaaaaaaaaa") != 0 && strcmp(buf, "/b") != 0)
			fail_msg("torn read: '%s'", buf);
	}
	pthread_join(t, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(defaults),
		cmocka_unit_test(setters_and_clearing),
		cmocka_unit_test(env_replaced_whole),
		cmocka_unit_test(bad_env_name_keeps_old_set),
		cmocka_unit_test(concurrent_readers_see_whole_values),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
