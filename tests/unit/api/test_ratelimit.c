/* Token buckets: burst, refill, refusal with the time to wait. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ratelimit.h"

static void test_burst_then_refuse(void **state)
{
	struct rl_bucket b = { 0 };
	struct rl_verdict v;

	for (int i = 0; i < 3; i++)
		assert_true(rl_take(&b, 1.0, 3, 1000).allowed);
	v = rl_take(&b, 1.0, 3, 1000);
	assert_false(v.allowed);
	assert_int_equal(v.retry_after_s, 1);
	assert_int_equal(v.remaining, 0);
	assert_int_equal(v.limit, 3);
	assert_int_equal(v.reset_s, 3);
}

static void test_refill_is_bounded(void **state)
{
	struct rl_bucket b = { 0 };

	assert_true(rl_take(&b, 0.5, 1, 0).allowed);
	assert_false(rl_take(&b, 0.5, 1, 1000).allowed);
	assert_true(rl_take(&b, 0.5, 1, 2000).allowed);
	/* a long idle time refills only up to the burst */
	assert_true(rl_take(&b, 0.5, 1, 1000000).allowed);
	assert_false(rl_take(&b, 0.5, 1, 1000000).allowed);
}

static void test_slow_rate_retry_after(void **state)
{
	struct rl_bucket b = { 0 };
	struct rl_verdict v;

	assert_true(rl_take(&b, 1.0 / 60.0, 1, 0).allowed);
	v = rl_take(&b, 1.0 / 60.0, 1, 0);
	assert_false(v.allowed);
	assert_int_equal(v.retry_after_s, 60);
}

static void test_no_limit(void **state)
{
	struct rl_bucket b = { 0 };

	for (int i = 0; i < 1000; i++)
		assert_true(rl_take(&b, 0, 0, 0).allowed);
}

static void test_table_separates_teams(void **state)
{
	struct rl_table *t = rl_table_new();

	assert_true(rl_table_take(t, 1, RL_CREATE, 1, 1, 0).allowed);
	assert_false(rl_table_take(t, 1, RL_CREATE, 1, 1, 0).allowed);
	assert_true(rl_table_take(t, 2, RL_CREATE, 1, 1, 0).allowed);
	assert_true(rl_table_take(t, 1, RL_REQUEST, 1, 1, 0).allowed);
	rl_table_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_then_refuse),
		cmocka_unit_test(test_refill_is_bounded),
		cmocka_unit_test(test_slow_rate_retry_after),
		cmocka_unit_test(test_no_limit),
		cmocka_unit_test(test_table_separates_teams),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
