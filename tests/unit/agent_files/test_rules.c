/*
 * Unit tests of the /files rules in src/agent/files/rules.c: access checks
 * with the real auth.c, X-Metadata-* validation, Accept-Encoding and
 * Content-Encoding handling, multipart targets, response headers.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "auth.h"
#include "files.h"

#define TOKEN "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0"
#define NOW ((time_t)1700000000)

static struct files_auth base_auth(void)
{
	struct files_auth a = {
		.token = TOKEN, .path = "hello.txt", .username = "user",
		.operation = "read", .now = NOW,
	};
	return a;
}

static void test_sign_vector(void **state)
{
	char sig[128];

	/* The SDK test-suite's vector: proves auth.c signs what the SDK signs. */
	assert_int_equal(auth_sign_v1("hello.txt", "read", "user", TOKEN, NULL, sig,
				      sizeof(sig)), 0);
	assert_string_equal(sig, "v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E");
}

static void test_auth_open_without_token(void **state)
{
	struct files_auth a = base_auth();
	struct files_msg msg = { { 0 } };

	a.token = NULL;
	a.header = "anything";
	assert_int_equal(files_check_auth(&a, &msg), 0);
	a.token = "";
	assert_int_equal(files_check_auth(&a, &msg), 0);
}

static void test_auth_header(void **state)
{
	struct files_auth a = base_auth();
	struct files_msg msg = { { 0 } };

	a.header = TOKEN;
	a.signature = "v1_garbage"; /* ignored once the header matches */
	assert_int_equal(files_check_auth(&a, &msg), 0);

	a.header = TOKEN "x";
	assert_int_equal(files_check_auth(&a, &msg), 401);
	assert_string_equal(msg.text, "access token present in header but does not match");

	/* An empty header counts as absent: the signature is then required. */
	a.header = "";
	a.signature = NULL;
	assert_int_equal(files_check_auth(&a, &msg), 401);
	assert_string_equal(msg.text, "missing signature query parameter");
}

static void test_auth_signature(void **state)
{
	struct files_auth a = base_auth();
	struct files_msg msg = { { 0 } };
	char sig[128];

	assert_int_equal(auth_sign_v1("hello.txt", "read", "user", TOKEN, NULL, sig,
				      sizeof(sig)), 0);
	a.signature = sig;
	assert_int_equal(files_check_auth(&a, &msg), 0);

	/* The same signature does not allow the other operation... */
	a.operation = "write";
	assert_int_equal(files_check_auth(&a, &msg), 401);
	assert_string_equal(msg.text, "invalid signature");

	/* ...nor another user, nor the default user (""), nor another path. */
	a.operation = "read";
	a.username = "root";
	assert_int_equal(files_check_auth(&a, &msg), 401);
	a.username = NULL;
	assert_int_equal(files_check_auth(&a, &msg), 401);
	a.username = "user";
	a.path = "/home/user/hello.txt";
	assert_int_equal(files_check_auth(&a, &msg), 401);

	/* Signed for the default user: username absent signs as "". */
	assert_int_equal(auth_sign_v1("x", "write", "", TOKEN, NULL, sig, sizeof(sig)), 0);
	a.path = "x";
	a.username = NULL;
	a.operation = "write";
	assert_int_equal(files_check_auth(&a, &msg), 0);
}

static void test_auth_expiration(void **state)
{
	struct files_auth a = base_auth();
	struct files_msg msg = { { 0 } };
	char sig[128];

	assert_int_equal(auth_sign_v1("hello.txt", "read", "user", TOKEN, "1700000060", sig,
				      sizeof(sig)), 0);
	a.signature = sig;
	a.expiration = "1700000060";
	assert_int_equal(files_check_auth(&a, &msg), 0);

	/* Expired: reported only once the signature itself is valid. */
	a.now = NOW + 61;
	assert_int_equal(files_check_auth(&a, &msg), 401);
	assert_string_equal(msg.text, "signature is already expired");

	/* The expiration is part of what is signed. */
	a.now = NOW;
	a.expiration = "1700000999";
	assert_int_equal(files_check_auth(&a, &msg), 401);
	assert_string_equal(msg.text, "invalid signature");

	/* A signature without expiration does not accept one added later. */
	assert_int_equal(auth_sign_v1("hello.txt", "read", "user", TOKEN, NULL, sig,
				      sizeof(sig)), 0);
	a.expiration = "1700000060";
	assert_int_equal(files_check_auth(&a, &msg), 401);

	/* Malformed expirations are a client error, not an auth failure. */
	a.expiration = "soon";
	assert_int_equal(files_check_auth(&a, &msg), 400);
	a.expiration = "+1700000060";
	assert_int_equal(files_check_auth(&a, &msg), 400);
	a.expiration = "99999999999999999999999";
	assert_int_equal(files_check_auth(&a, &msg), 400);
	a.expiration = "";
	assert_int_equal(files_check_auth(&a, &msg), 400);
}

static void test_auth_negative_expiration(void **state)
{
	struct files_auth a = base_auth();
	struct files_msg msg = { { 0 } };
	char sig[128];

	assert_int_equal(auth_sign_v1("hello.txt", "read", "user", TOKEN, "-5", sig,
				      sizeof(sig)), 0);
	a.signature = sig;
	a.expiration = "-5";
	assert_int_equal(files_check_auth(&a, &msg), 401);
	assert_string_equal(msg.text, "signature is already expired");
}

static void test_auth_missing_signature(void **state)
{
	struct files_auth a = base_auth();
	struct files_msg msg = { { 0 } };

	assert_int_equal(files_check_auth(&a, &msg), 401);
	assert_string_equal(msg.text, "missing signature query parameter");
	a.signature = "";
	assert_int_equal(files_check_auth(&a, &msg), 401);
	assert_string_equal(msg.text, "invalid signature");
}

static void test_meta_basic(void **state)
{
	json_t *meta = json_object();
	struct files_msg msg = { { 0 } };
	size_t total = 0;

	assert_int_equal(files_meta_add(meta, &total, "Content-Type", "x", &msg), 0);
	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-Owner", "probe", &msg), 0);
	assert_int_equal(files_meta_add(meta, &total, "x-metadata-tag", "x y", &msg), 0);
	/* Repeated key (any case): the first value wins. */
	assert_int_equal(files_meta_add(meta, &total, "X-METADATA-OWNER", "second", &msg), 0);
	/* "X-Metadata-" alone names no key and is dropped. */
	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-", "v", &msg), 0);
	/* An empty value is a value. */
	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-Empty", "", &msg), 0);

	assert_int_equal(json_object_size(meta), 3);
	assert_string_equal(json_string_value(json_object_get(meta, "owner")), "probe");
	assert_string_equal(json_string_value(json_object_get(meta, "tag")), "x y");
	assert_string_equal(json_string_value(json_object_get(meta, "empty")), "");
	assert_int_equal(total, 3 * strlen(FILES_META_PREFIX) + 5 + 5 + 3 + 3 + 5);
	json_decref(meta);
}

static void test_meta_limits(void **state)
{
	json_t *meta = json_object();
	struct files_msg msg = { { 0 } };
	char header[400], value[5000];
	size_t total = 0;

	/* Key of exactly 246 bytes is fine, 247 is not. */
	memcpy(header, "X-Metadata-", 11);
	memset(header + 11, 'k', FILES_META_KEY_MAX);
	header[11 + FILES_META_KEY_MAX] = '\0';
	assert_int_equal(files_meta_add(meta, &total, header, "v", &msg), 0);
	header[11 + FILES_META_KEY_MAX] = 'k';
	header[12 + FILES_META_KEY_MAX] = '\0';
	assert_int_equal(files_meta_add(meta, &total, header, "v", &msg), -EINVAL);
	assert_non_null(strstr(msg.text, "invalid metadata: "));

	/* Total: prefix + key + value summed over keys, at most 4096. */
	json_object_clear(meta);
	total = 0;
	memset(value, 'v', sizeof(value));
	value[FILES_META_TOTAL_MAX - strlen(FILES_META_PREFIX) - 1] = '\0';
	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-a", value, &msg), 0);
	assert_int_equal(total, FILES_META_TOTAL_MAX);
	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-b", "", &msg), -EINVAL);
	assert_non_null(strstr(msg.text, "invalid metadata: total"));
	json_decref(meta);
}

static void test_meta_charset(void **state)
{
	json_t *meta = json_object();
	struct files_msg msg = { { 0 } };
	size_t total = 0;

	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-k", "caf\xc3\xa9", &msg),
			 -EINVAL);
	assert_non_null(strstr(msg.text, "invalid metadata: "));
	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-k", "a\tb", &msg), -EINVAL);
	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-k\x7f", "v", &msg), -EINVAL);
	assert_int_equal(files_meta_add(meta, &total, "X-Metadata-k", "~ !\"#", &msg), 0);
	json_decref(meta);
}

static void test_pick_coding(void **state)
{
	assert_int_equal(files_pick_coding(NULL), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding(""), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding("gzip, deflate, br"), FILES_CODING_GZIP);
	assert_int_equal(files_pick_coding("GZIP"), FILES_CODING_GZIP);
	assert_int_equal(files_pick_coding("x-gzip"), FILES_CODING_GZIP);
	assert_int_equal(files_pick_coding("br, deflate"), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding("gzip;q=0"), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding("gzip;q=0.000"), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding("gzip;q=0.5, identity"), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding("gzip;q=0.5, identity;q=0.4"), FILES_CODING_GZIP);
	assert_int_equal(files_pick_coding("identity;q=0"), FILES_CODING_NONE);
	assert_int_equal(files_pick_coding("identity;q=0, gzip"), FILES_CODING_GZIP);
	assert_int_equal(files_pick_coding("*"), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding("*;q=0"), FILES_CODING_NONE);
	assert_int_equal(files_pick_coding("*;q=0, identity"), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding("*;q=0, gzip"), FILES_CODING_GZIP);
	assert_int_equal(files_pick_coding("identity;q=0, *"), FILES_CODING_GZIP);
	assert_int_equal(files_pick_coding("identity;q=0, br"), FILES_CODING_NONE);
	/* Whitespace and parameter spelling. */
	assert_int_equal(files_pick_coding("  gzip ; Q=0 "), FILES_CODING_IDENTITY);
	assert_int_equal(files_pick_coding("gzip;level=1;q=0"), FILES_CODING_IDENTITY);
	/* A malformed q counts as 1, as envd reads it. */
	assert_int_equal(files_pick_coding("gzip;q=abc"), FILES_CODING_GZIP);
	assert_int_equal(files_pick_coding(",,,"), FILES_CODING_IDENTITY);

	assert_true(files_identity_ok("gzip"));
	assert_true(files_identity_ok(NULL));
	assert_false(files_identity_ok("identity;q=0, gzip"));
	assert_false(files_identity_ok("*;q=0, gzip"));
}

static void test_body_coding(void **state)
{
	struct files_msg msg = { { 0 } };

	assert_int_equal(files_body_coding(NULL, &msg), 0);
	assert_int_equal(files_body_coding("identity", &msg), 0);
	assert_int_equal(files_body_coding(" gzip ", &msg), 1);
	assert_int_equal(files_body_coding("GZip", &msg), 1);
	assert_int_equal(files_body_coding("br", &msg), -EINVAL);
	assert_string_equal(msg.text, "unsupported Content-Encoding: br, supported: [gzip]");
	assert_int_equal(files_body_coding("gzip, gzip", &msg), -EINVAL);
}

static void test_part_source(void **state)
{
	struct files_msg msg = { { 0 } };

	/* The query path wins over the filename, which is taken verbatim. */
	assert_string_equal(files_part_source("/q", "f", &msg), "/q");
	assert_string_equal(files_part_source(NULL, "dir/../a b.txt", &msg), "dir/../a b.txt");
	assert_string_equal(files_part_source("", NULL, &msg), "");
	assert_null(files_part_source(NULL, NULL, &msg));
	assert_non_null(strstr(msg.text, "no filename"));
	assert_null(files_part_source(NULL, "", &msg));
}

static void test_duplicate(void **state)
{
	json_t *results = json_array();
	struct files_msg msg = { { 0 } };

	assert_int_equal(files_check_duplicate(results, "/a", &msg), 0);
	json_array_append_new(results, files_entry_json("/a", NULL));
	assert_int_equal(files_check_duplicate(results, "/b", &msg), 0);
	assert_int_equal(files_check_duplicate(results, "/a", &msg), -EEXIST);
	assert_string_equal(msg.text, "you cannot upload multiple files to the same path '/a' "
			    "in one upload request, only the first specified file was uploaded");
	json_decref(results);
}

static void test_entry_json(void **state)
{
	json_t *meta = json_object();
	json_t *e = files_entry_json("/home/user/a.txt", meta);
	char *s = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);

	/* No "metadata" key at all when there is none: SDK tests compare objects. */
	assert_string_equal(s, "{\"name\":\"a.txt\",\"path\":\"/home/user/a.txt\","
			    "\"type\":\"file\"}");
	free(s);
	json_decref(e);

	json_object_set_new(meta, "owner", json_string("probe"));
	e = files_entry_json("/x", meta);
	s = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(s, "{\"metadata\":{\"owner\":\"probe\"},\"name\":\"x\","
			    "\"path\":\"/x\",\"type\":\"file\"}");
	free(s);
	json_decref(e);
	json_decref(meta);
}

static void test_guess_type(void **state)
{
	const unsigned char text[] = "hello\nworld\t\xc3\xa9";
	const unsigned char bin[] = { 0x00, 0x01, 0xff };

	assert_string_equal(files_guess_type("/a/b.JSON", NULL, 0), "application/json");
	assert_string_equal(files_guess_type("/a/b.png", text, sizeof(text) - 1), "image/png");
	assert_string_equal(files_guess_type("/a.d/noext", text, sizeof(text) - 1),
			    "text/plain; charset=utf-8");
	assert_string_equal(files_guess_type("/a/x.unknown", bin, sizeof(bin)),
			    "application/octet-stream");
	assert_string_equal(files_guess_type("/a/x", (const unsigned char *)"\xc3\x28", 2),
			    "application/octet-stream");
	assert_string_equal(files_guess_type("/a/.", NULL, 0), "application/octet-stream");
}

static void test_disposition(void **state)
{
	char out[256];

	assert_int_equal(files_disposition("a b.txt", out, sizeof(out)), 0);
	assert_string_equal(out, "inline; filename=\"a b.txt\"");
	/* Quotes, CR/LF and non-ASCII never reach the header raw. */
	assert_int_equal(files_disposition("a\"b\r\n\xc3\xa9", out, sizeof(out)), 0);
	assert_string_equal(out, "inline; filename*=UTF-8''a%22b%0D%0A%C3%A9");
	assert_int_equal(files_disposition("abcdefghijklmnopqrstuvwxyz", out, 20), -ENOSPC);
}

static void test_http_date(void **state)
{
	char out[64];

	files_http_date(784111777, out, sizeof(out));
	assert_string_equal(out, "Sun, 06 Nov 1994 08:49:37 GMT");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sign_vector),
		cmocka_unit_test(test_auth_open_without_token),
		cmocka_unit_test(test_auth_header),
		cmocka_unit_test(test_auth_signature),
		cmocka_unit_test(test_auth_expiration),
		cmocka_unit_test(test_auth_negative_expiration),
		cmocka_unit_test(test_auth_missing_signature),
		cmocka_unit_test(test_meta_basic),
		cmocka_unit_test(test_meta_limits),
		cmocka_unit_test(test_meta_charset),
		cmocka_unit_test(test_pick_coding),
		cmocka_unit_test(test_body_coding),
		cmocka_unit_test(test_part_source),
		cmocka_unit_test(test_duplicate),
		cmocka_unit_test(test_entry_json),
		cmocka_unit_test(test_guess_type),
		cmocka_unit_test(test_disposition),
		cmocka_unit_test(test_http_date),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
