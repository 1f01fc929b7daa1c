/* Client input rules: metadata filters, page tokens, times, networks, ids. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ids.h"
#include "request.h"

static void test_meta_filter_sdk_encoding(void **state)
{
	char *k[8], *v[8];
	struct herr err;
	int n;

	/* {probe:'list','we ird':'v&l=ue'} after the HTTP layer's own decoding */
	assert_int_equal(meta_filter_parse("probe=list&we%2520ird=v%2526l%253Due", k, v,
					   8, &n, &err), 0);
	assert_int_equal(n, 2);
	assert_string_equal(k[0], "probe");
	assert_string_equal(v[0], "list");
	assert_string_equal(k[1], "we ird");
	assert_string_equal(v[1], "v&l=ue");
	meta_filter_free(k, v, n);
	assert_int_equal(meta_filter_parse("user=a%2520b", k, v, 8, &n, &err), 0);
	assert_string_equal(v[0], "a b");
	meta_filter_free(k, v, n);
	assert_int_equal(meta_filter_parse("novalue", k, v, 8, &n, &err), -EINVAL);
	assert_int_equal(meta_filter_parse("a=b=c", k, v, 8, &n, &err), -EINVAL);
	assert_int_equal(meta_filter_parse("a=%zz", k, v, 8, &n, &err), -EINVAL);
	assert_int_equal(meta_filter_parse("a=1&b=2&c=3", k, v, 2, &n, &err), -E2BIG);
}

/* More pairs than the caller's arrays hold: the parser frees what it took
 * and reports none, so a caller that always frees (sbx_list does) frees
 * nothing twice. Under ASan a second free of any entry aborts this test. */
static void test_meta_filter_over_cap(void **state)
{
	char *k[32], *v[32];
	char raw[33 * 12];
	struct herr err;
	size_t off = 0;
	int n = -1;

	for (int i = 0; i < 33; i++)
		off += (size_t)snprintf(raw + off, sizeof(raw) - off, "%sk%d=v%d",
					i ? "&" : "", i, i);
	assert_int_equal(meta_filter_parse(raw, k, v, 32, &n, &err), -E2BIG);
	assert_int_equal(n, 0);
	meta_filter_free(k, v, n);
	/* exactly at the cap is fine */
	raw[strlen(raw) - strlen("&k32=v32")] = '\0';
	assert_int_equal(meta_filter_parse(raw, k, v, 32, &n, &err), 0);
	assert_int_equal(n, 32);
	assert_string_equal(k[31], "k31");
	meta_filter_free(k, v, n);
	/* a bad pair after good ones also leaves nothing to free */
	assert_int_equal(meta_filter_parse("a=1&b=2&bad", k, v, 32, &n, &err), -EINVAL);
	assert_int_equal(n, 0);
}

static void test_page_token_round_trip(void **state)
{
	char tok[256], id[32];
	int64_t t;
	struct herr err;

	assert_int_equal(page_token_encode(1234567, "iabc", false, tok, sizeof(tok)), 0);
	assert_null(strchr(tok, '+'));
	assert_null(strchr(tok, '/'));
	assert_int_equal(page_token_decode(tok, false, &t, id, sizeof(id), &err), 0);
	assert_int_equal(t, 1234567);
	assert_string_equal(id, "iabc");
	/* a token of the other order is refused */
	assert_int_equal(page_token_decode(tok, true, &t, id, sizeof(id), &err), -EINVAL);
	assert_int_equal(page_token_decode("garbage", false, &t, id, sizeof(id), &err),
			 -EINVAL);
	assert_int_equal(page_token_decode("", false, &t, id, sizeof(id), &err), -EINVAL);
}

static void test_times(void **state)
{
	char buf[32];
	int64_t ms;
	struct herr err;

	time_format(1767225600123, buf);
	assert_string_equal(buf, "2026-01-01T00:00:00.123Z");
	assert_int_equal(time_parse(buf, &ms, &err), 0);
	assert_int_equal(ms, 1767225600123);
	assert_int_equal(time_parse("2026-01-01T02:00:00.123456789+02:00", &ms, &err), 0);
	assert_int_equal(ms, 1767225600123);
	assert_int_equal(time_parse("2026-01-01T00:00:00Z", &ms, &err), 0);
	assert_int_equal(ms, 1767225600000);
	assert_int_equal(time_parse("yesterday", &ms, &err), -EINVAL);
	assert_int_equal(time_parse("2026-01-01T00:00:00", &ms, &err), -EINVAL);
}

static json_t *J(const char *s)
{
	json_t *j = json_loads(s, 0, NULL);

	assert_non_null(j);
	return j;
}

static void expect_network_error(const char *net, bool secure, const char *needle)
{
	json_t *n = J(net), *out = NULL;
	struct herr err;

	assert_int_equal(network_build(n, NULL, secure, &out, &err), -EINVAL);
	assert_non_null(strstr(err.msg, needle));
	json_decref(n);
}

static void test_network_rules(void **state)
{
	json_t *n = J("{\"allowOut\":[\"1.2.3.4\",\"10.0.0.0/8\"],\"denyOut\":[\"0.0.0.0/0\"]}");
	json_t *off = json_false(), *out = NULL;
	struct herr err;

	assert_int_equal(network_build(n, NULL, false, &out, &err), 0);
	assert_int_equal(json_array_size(json_object_get(out, "allowOut")), 2);
	assert_true(json_is_true(json_object_get(out, "allowPublicTraffic")));
	json_decref(out);
	json_decref(n);
	/* allow_internet_access=false makes the deny list exactly everything */
	assert_int_equal(network_build(NULL, off, false, &out, &err), 0);
	assert_string_equal(json_string_value(json_array_get(json_object_get(out, "denyOut"),
							     0)), "0.0.0.0/0");
	assert_true(json_is_false(json_object_get(out, "allowInternetAccess")));
	json_decref(out);
	json_decref(off);
	expect_network_error("{\"denyOut\":[\"example.com\"]}", false, "invalid denied CIDR");
	expect_network_error("{\"denyOut\":[\"0.0.0.0\"]}", false, "invalid denied CIDR");
	expect_network_error("{\"allowOut\":[\"1.2.3.4/33\"]}", false, "1.2.3.4/33");
	expect_network_error("{\"allowPublicTraffic\":false}", false, "secure");
	expect_network_error("{\"rules\":{\"a.com\":[]}}", false, "not supported");
	expect_network_error("{\"egressProxy\":{\"address\":\"x:1\"}}", false,
			     "not supported");
}

static void test_string_maps(void **state)
{
	json_t *ok = J("{\"A_1\":\"x\"}"), *bad = J("{\"1A\":\"x\"}"), *num = J("{\"a\":1}");
	struct herr err;

	assert_int_equal(string_map_validate(ok, "envVars", 8, 64, 64, true, &err), 0);
	assert_int_equal(string_map_validate(bad, "envVars", 8, 64, 64, true, &err), -EINVAL);
	assert_int_equal(string_map_validate(bad, "metadata", 8, 64, 64, false, &err), 0);
	assert_int_equal(string_map_validate(num, "metadata", 8, 64, 64, false, &err),
			 -EINVAL);
	json_decref(ok);
	json_decref(bad);
	json_decref(num);
}

static void test_ids(void **state)
{
	char id[22], key[APIKEY_LEN + 1];
	struct herr err;

	assert_int_equal(sandbox_id_generate(id, &err), 0);
	assert_int_equal(strlen(id), 21);
	assert_int_equal(id[0], 'i');
	assert_true(sandbox_id_valid(id));
	assert_false(sandbox_id_valid("ab-c"));
	assert_false(sandbox_id_valid(""));
	assert_int_equal(apikey_generate(key, &err), 0);
	assert_int_equal(strncmp(key, "e2b_", 4), 0);
	assert_int_equal(strspn(key + 4, "0123456789abcdef"), 40);
	assert_true(template_ref_valid("base"));
	assert_true(template_ref_valid("team/name:tag"));
	assert_false(template_ref_valid("../etc"));
	assert_false(template_ref_valid("a/b/c"));
	assert_false(template_ref_valid(""));
}

static void test_token_is_hmac(void **state)
{
	unsigned char secret[SERVER_SECRET_LEN] = { 1 };
	char a[TOKEN_HEX], b[TOKEN_HEX], c[TOKEN_HEX];

	token_derive(secret, "", "iabc", a);
	token_derive(secret, "", "iabc", b);
	token_derive(secret, "sandbox-traffic-", "iabc", c);
	assert_string_equal(a, b);
	assert_string_not_equal(a, c);
	assert_int_equal(strlen(a), 64);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_meta_filter_sdk_encoding),
		cmocka_unit_test(test_meta_filter_over_cap),
		cmocka_unit_test(test_page_token_round_trip),
		cmocka_unit_test(test_times),
		cmocka_unit_test(test_network_rules),
		cmocka_unit_test(test_string_maps),
		cmocka_unit_test(test_ids),
		cmocka_unit_test(test_token_is_hmac),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
