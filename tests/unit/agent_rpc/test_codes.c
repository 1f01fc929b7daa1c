/*
 * Unit tests of the Connect error codes: each code's wire name and the HTTP
 * status a unary error carries, checked against the table of protocol.md
 * §4.4 (connect-go's statuses), written out here independently of rpc.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "rpc.h"

static const struct {
	enum rpc_code code;
	const char *name;
	int http;
} spec[] = {
	{ RPC_CANCELED, "canceled", 499 },
	{ RPC_UNKNOWN, "unknown", 500 },
	{ RPC_INVALID_ARGUMENT, "invalid_argument", 400 },
	{ RPC_DEADLINE_EXCEEDED, "deadline_exceeded", 504 },
	{ RPC_NOT_FOUND, "not_found", 404 },
	{ RPC_ALREADY_EXISTS, "already_exists", 409 },
	{ RPC_PERMISSION_DENIED, "permission_denied", 403 },
	{ RPC_RESOURCE_EXHAUSTED, "resource_exhausted", 429 },
	{ RPC_FAILED_PRECONDITION, "failed_precondition", 400 },
	{ RPC_ABORTED, "aborted", 409 },
	{ RPC_OUT_OF_RANGE, "out_of_range", 400 },
	{ RPC_UNIMPLEMENTED, "unimplemented", 501 },
	{ RPC_INTERNAL, "internal", 500 },
	{ RPC_UNAVAILABLE, "unavailable", 503 },
	{ RPC_DATA_LOSS, "data_loss", 500 },
	{ RPC_UNAUTHENTICATED, "unauthenticated", 401 },
};
#define N_SPEC (sizeof(spec) / sizeof(spec[0]))

static void test_every_code_has_its_name_and_status(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_SPEC; i++) {
		assert_string_equal(rpc_code_name(spec[i].code), spec[i].name);
		if (rpc_code_http_status(spec[i].code) != spec[i].http)
			fail_msg("%s: HTTP %d, protocol.md says %d", spec[i].name,
				 rpc_code_http_status(spec[i].code), spec[i].http);
	}
}

/* The spec lists sixteen codes; the enum must not hold one it does not name. */
static void test_spec_covers_the_enum(void **state)
{
	(void)state;
	assert_int_equal(N_SPEC, RPC_UNAUTHENTICATED);
	for (int code = RPC_CANCELED; code <= RPC_UNAUTHENTICATED; code++) {
		int listed = 0;

		for (size_t i = 0; i < N_SPEC; i++)
			listed += spec[i].code == (enum rpc_code)code;
		assert_int_equal(listed, 1);
	}
}

/* A value outside the enum (a bug elsewhere) still gives a valid Connect error. */
static void test_out_of_range_is_unknown_500(void **state)
{
	(void)state;
	assert_string_equal(rpc_code_name((enum rpc_code)(RPC_UNAUTHENTICATED + 1)), "unknown");
	assert_int_equal(rpc_code_http_status((enum rpc_code)(RPC_UNAUTHENTICATED + 1)), 500);
	assert_string_equal(rpc_code_name((enum rpc_code)-1), "unknown");
	assert_int_equal(rpc_code_http_status((enum rpc_code)-1), 500);
}

/* rpc_fail fills the status, truncates long messages and returns -1. */
static void test_rpc_fail(void **state)
{
	struct rpc_status st = { RPC_OK, "" };
	char long_name[2 * RPC_MESSAGE_MAX];

	(void)state;
	assert_int_equal(rpc_fail(&st, RPC_NOT_FOUND, "process with pid %d not found", 42), -1);
	assert_int_equal(st.code, RPC_NOT_FOUND);
	assert_string_equal(st.message, "process with pid 42 not found");

	memset(long_name, 'x', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	rpc_fail(&st, RPC_INVALID_ARGUMENT, "path '%s' is bad", long_name);
	assert_int_equal(strlen(st.message), RPC_MESSAGE_MAX - 1);
	assert_memory_equal(st.message, "path 'xxx", 9);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_code_has_its_name_and_status),
		cmocka_unit_test(test_spec_covers_the_enum),
		cmocka_unit_test(test_out_of_range_is_unknown_500),
		cmocka_unit_test(test_rpc_fail),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
