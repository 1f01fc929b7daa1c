/* Access tokens and v1 pre-signed URL signatures (auth.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "auth.h"
#include "state.h"

#define SDK_TOKEN "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0"
#define EXPECTED_EXPIRING_SIGNATURE "x1gU0mV8Kid6FIK4Jop2wrli3RLOriJgoanr76XYFKM"

/* The vector from the e2b SDK's own signing tests. */
static void signature_matches_sdk_vector(void **unused)
{
	char sig[128];

	assert_int_equal(auth_sign_v1("hello.txt", "read", "user", SDK_TOKEN, NULL, sig,
				      sizeof(sig)), 0);
	assert_string_equal(sig, "v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E");
}

/*
 * With an expiration the hash covers "<...>:<token>:<expiration>":
 * sha256("hello.txt:read:user:" SDK_TOKEN ":1700000000"), computed
 * independently with coreutils (printf ... | sha256sum | xxd -r -p | base64).
 */
static void signature_with_expiration(void **unused)
{
	char with[128], without[128];

	assert_int_equal(auth_sign_v1("hello.txt", "read", "user", SDK_TOKEN, "1700000000",
				      with, sizeof(with)), 0);
	assert_int_equal(auth_sign_v1("hello.txt", "read", "user", SDK_TOKEN, NULL,
				      without, sizeof(without)), 0);
	assert_string_equal(with, "v1_" EXPECTED_EXPIRING_SIGNATURE);
	assert_string_not_equal(with, without);
}

static void signature_has_no_padding_and_depends_on_every_part(void **unused)
{
	char a[128], b[128];

	assert_int_equal(auth_sign_v1("", "write", "", "t", NULL, a, sizeof(a)), 0);
	assert_null(strchr(a, '='));
	assert_int_equal(strlen(a), 3 + 43);
	assert_int_equal(auth_sign_v1("", "read", "", "t", NULL, b, sizeof(b)), 0);
	assert_string_not_equal(a, b);
	assert_int_equal(auth_sign_v1("x", "write", "", "t", NULL, b, sizeof(b)), 0);
	assert_string_not_equal(a, b);
	assert_int_equal(auth_sign_v1("", "write", "root", "t", NULL, b, sizeof(b)), 0);
	assert_string_not_equal(a, b);
}

static void signature_refuses_small_buffer(void **unused)
{
	char sig[46]; /* one byte short of "v1_" + 43 + NUL */

	assert_int_equal(auth_sign_v1("p", "read", "u", "t", NULL, sig, sizeof(sig)), -ENOSPC);
}

static void equal_compares_whole_strings(void **unused)
{
	assert_true(auth_equal("abc", "abc"));
	assert_true(auth_equal("", ""));
	assert_false(auth_equal("abc", "abd"));
	assert_false(auth_equal("abc", "ab"));
	assert_false(auth_equal("ab", "abc"));
	assert_false(auth_equal("", "a"));
}

static void token_check_follows_state(void **unused)
{
	state_set_access_token(NULL);
	assert_true(auth_token_ok(NULL));
	assert_true(auth_token_ok("anything"));

	state_set_access_token("secret");
	assert_false(auth_token_ok(NULL));
	assert_false(auth_token_ok(""));
	assert_false(auth_token_ok("secre"));
	assert_false(auth_token_ok("secret2"));
	assert_true(auth_token_ok("secret"));

	state_set_access_token("");
	assert_true(auth_token_ok(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(signature_matches_sdk_vector),
		cmocka_unit_test(signature_with_expiration),
		cmocka_unit_test(signature_has_no_padding_and_depends_on_every_part),
		cmocka_unit_test(signature_refuses_small_buffer),
		cmocka_unit_test(equal_compares_whole_strings),
		cmocka_unit_test(token_check_follows_state),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
