/* Routing of the sandbox proxy: Host and header parsing, reserved agent
 * paths, query decoding and pre-signed URL signatures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "route.h"

static void test_host_routing(void **state)
{
	struct route r;

	route_parse("49983-iabc123.example.com", NULL, NULL, &r);
	assert_int_equal(r.kind, ROUTE_HOST);
	assert_string_equal(r.id, "iabc123");
	assert_int_equal(r.port, 49983);

	/* The host wins over headers, and a port suffix is fine. */
	route_parse("3000-isbx.localhost:3001", "other", "49983", &r);
	assert_int_equal(r.kind, ROUTE_HOST);
	assert_string_equal(r.id, "isbx");
	assert_int_equal(r.port, 3000);
}

static void test_host_errors(void **state)
{
	struct route r;

	route_parse("3000-isbx", NULL, NULL, &r);
	assert_int_equal(r.kind, ROUTE_ERROR);
	assert_string_equal(r.message, "Invalid host");
	route_parse("70000-isbx.d", NULL, NULL, &r);
	assert_string_equal(r.message, "Invalid sandbox port");
	route_parse("0-isbx.d", NULL, NULL, &r);
	assert_string_equal(r.message, "Invalid sandbox port");
	route_parse("3000-ISBX.d", NULL, NULL, &r);
	assert_string_equal(r.message, "Invalid sandbox ID");
	route_parse("3000-.d", NULL, NULL, &r);
	assert_string_equal(r.message, "Invalid sandbox ID");
	route_parse("3000-a-b.d", NULL, NULL, &r);
	assert_string_equal(r.message, "Invalid sandbox ID");
}

static void test_plain_hosts_fall_through(void **state)
{
	struct route r;

	route_parse("127.0.0.1:3001", NULL, NULL, &r);
	assert_int_equal(r.kind, ROUTE_NONE);
	route_parse("my-proxy.example.com", NULL, NULL, &r);
	assert_int_equal(r.kind, ROUTE_NONE);
	route_parse("localhost", "debug_sandbox_id", "49983", &r);
	assert_int_equal(r.kind, ROUTE_HEADERS);
	assert_string_equal(r.id, "debug_sandbox_id");
	assert_int_equal(r.port, 49983);
}

static void test_header_errors(void **state)
{
	struct route r;

	route_parse("localhost", "isbx", NULL, &r);
	assert_int_equal(r.kind, ROUTE_ERROR);
	assert_non_null(strstr(r.message, "missing header"));
	route_parse(NULL, NULL, "49983", &r);
	assert_int_equal(r.kind, ROUTE_ERROR);
	route_parse(NULL, "isbx", "port", &r);
	assert_string_equal(r.message, "Invalid sandbox port");
	route_parse(NULL, "../etc", "80", &r);
	assert_string_equal(r.message, "Invalid sandbox ID");
	route_parse(NULL, "", "80", &r);
	assert_string_equal(r.message, "Invalid sandbox ID");
}

static void test_internal_paths(void **state)
{
	assert_true(route_is_internal("/init"));
	assert_true(route_is_internal("/freeze"));
	assert_true(route_is_internal("/upgrade/x"));
	assert_true(route_is_internal("/fsthaw"));
	assert_false(route_is_internal("/initial"));
	assert_false(route_is_internal("/files"));
	assert_false(route_is_internal("/health"));
	/* encodings and spellings the agent would read as a reserved route */
	assert_true(route_is_internal("/%69nit"));
	assert_true(route_is_internal("/ini%74"));
	assert_true(route_is_internal("/%2569nit"));
	assert_true(route_is_internal("//init"));
	assert_true(route_is_internal("/./init"));
	assert_true(route_is_internal("/x/../init"));
	assert_true(route_is_internal("/../init?x=1"));
	assert_true(route_is_internal("/INIT"));
	assert_true(route_is_internal("/%2finit"));
	assert_true(route_is_internal("/init%00"));
	assert_true(route_is_internal("/%66reeze/"));
	assert_false(route_is_internal("/files?path=/init"));
	assert_false(route_is_internal("/x/init"));
	assert_false(route_is_internal("/init/../files"));
	assert_false(route_is_internal("/%69nitial"));
}

static void test_signature_vector(void **state)
{
	/* The SDK's own test vector (protocol.md §5.4). */
	struct signed_query q = { .path = "hello.txt", .username = "user" };
	char sig[ROUTE_SIG_MAX];

	assert_int_equal(route_signature(&q, "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0", sig), 0);
	assert_string_equal(sig, "v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E");
	q.signature = sig;
	assert_true(route_signature_matches(&q, "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0"));
	assert_false(route_signature_matches(&q, "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e1"));
	assert_false(route_signature_matches(&q, ""));
	q.write = true; /* the operation is part of what is signed */
	assert_false(route_signature_matches(&q, "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0"));
}

static void test_signature_expiration(void **state)
{
	struct signed_query q = { .path = "a", .username = "", .expiration = "100" };
	char a[ROUTE_SIG_MAX], b[ROUTE_SIG_MAX];

	route_signature(&q, "tok", a);
	q.expiration = "101";
	route_signature(&q, "tok", b);
	assert_string_not_equal(a, b);
	q.signature = b;
	assert_true(route_signature_matches(&q, "tok"));
}

static void test_query(void **state)
{
	bool found;
	char *v = route_query_get("path=a%2Fb+c&signature=v1_x%2By", "path", &found);

	assert_true(found);
	assert_string_equal(v, "a/b c");
	free(v);
	v = route_query_get("path=a&signature=v1_x%2By", "signature", &found);
	assert_string_equal(v, "v1_x+y");
	free(v);
	v = route_query_get("pathx=1", "path", &found);
	assert_null(v);
	assert_false(found);
	v = route_query_get("path=%zz", "path", &found);
	assert_null(v);
	assert_true(found);
	v = route_query_get("path=%4", "path", &found);
	assert_null(v);
	v = route_query_get("flag&path", "path", &found);
	assert_string_equal(v, "");
	free(v);
}

static void test_secret_equal(void **state)
{
	assert_true(route_secret_equal("abc", "abc"));
	assert_false(route_secret_equal("abc", "abd"));
	assert_false(route_secret_equal("abc", "abcd"));
	assert_false(route_secret_equal("", "a"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_host_routing),
		cmocka_unit_test(test_host_errors),
		cmocka_unit_test(test_plain_hosts_fall_through),
		cmocka_unit_test(test_header_errors),
		cmocka_unit_test(test_internal_paths),
		cmocka_unit_test(test_signature_vector),
		cmocka_unit_test(test_signature_expiration),
		cmocka_unit_test(test_query),
		cmocka_unit_test(test_secret_equal),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
