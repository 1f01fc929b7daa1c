/*
 * Image references as `hutchd templates pull` and fromImage take them:
 * Docker Hub short names, registries with ports, tags, digests, and the
 * malformed ones refused with a message naming the bad part; and pulls
 * from a hostile registry on loopback (tests/template-fixtures/
 * hostile_registry.py): a token realm or a redirect sending us over plain
 * http to another host, a redirect to file:, a redirect loop, a 401 loop
 * and an endless body are each refused, with no request reaching the
 * other host. Ordinary pulls run against a real registry in
 * tests/e2e/templates-import.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "pull.h"

#define HEX64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void expect(const char *in, const char *canonical)
{
	struct pull_ref r;
	struct herr err = { 0 };
	char text[800];

	if (pull_parse_ref(in, &r, &err) < 0)
		fail_msg("%s: %s", in, err.msg);
	pull_ref_text(&r, text, sizeof(text));
	assert_string_equal(text, canonical);
}

static void refuse(const char *in, const char *part)
{
	struct pull_ref r;
	struct herr err = { 0 };

	assert_int_equal(pull_parse_ref(in, &r, &err), -EINVAL);
	if (!strstr(err.msg, part))
		fail_msg("%s: '%s' lacks '%s'", in, err.msg, part);
}

static void test_references(void **state)
{
	(void)state;
	expect("busybox", "registry-1.docker.io/library/busybox:latest");
	expect("busybox:1.36", "registry-1.docker.io/library/busybox:1.36");
	expect("org/app", "registry-1.docker.io/org/app:latest");
	expect("ghcr.io/org/app:v1.2", "ghcr.io/org/app:v1.2");
	expect("127.0.0.1:5000/a/b/c:x", "127.0.0.1:5000/a/b/c:x");
	expect("localhost/app", "localhost/app:latest");
	expect("quay.io/a/b@sha256:" HEX64, "quay.io/a/b@sha256:" HEX64);
}

static void test_bad_references(void **state)
{
	(void)state;
	refuse("", "empty");
	refuse("busybox@sha256:abc", "digest");
	refuse("busybox@md5:0123", "digest");
	refuse("busybox:", "bad tag");
	refuse("busybox:v1!", "bad tag");
	refuse("Upper/Case", "bad repository name");
	refuse("host.io/../etc", "bad repository name");
	refuse("host.io//x", "bad repository name");
	refuse("host.io/x/", "bad repository name");
}

struct hostile {
	pid_t pid;
	int port, other_port;
	char data[64];
};

/* Starts hostile_registry.py MODE (beside MKIMAGE) and a data dir. */
static void hostile_start(struct hostile *h, const char *mode)
{
	char script[512], line[128], tmpl[128];
	int fds[2];
	FILE *out;

	snprintf(script, sizeof(script), "%s", MKIMAGE);
	snprintf(strrchr(script, '/') + 1, 64, "hostile_registry.py");
	assert_int_equal(pipe(fds), 0);
	h->pid = fork();
	assert_true(h->pid >= 0);
	if (h->pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		execlp("python3", "python3", script, mode, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	out = fdopen(fds[0], "r");
	assert_non_null(fgets(line, sizeof(line), out));
	fclose(out);
	assert_int_equal(sscanf(line, "PORT %d %d", &h->port, &h->other_port), 2);
	snprintf(h->data, sizeof(h->data), "/tmp/hutch-tpull-XXXXXX");
	assert_non_null(mkdtemp(h->data));
	snprintf(tmpl, sizeof(tmpl), "%s/tmpl", h->data);
	assert_int_equal(mkdir(tmpl, 0700), 0);
}

static size_t keep(char *data, size_t size, size_t n, void *arg)
{
	char *buf = arg;
	size_t have = strlen(buf), len = size * n;

	if (have + len < 256) {
		memcpy(buf + have, data, len);
		buf[have + len] = '\0';
	}
	return len;
}

/* A counter of the fixture's /hits answer: "hits" or "tokens". */
static int hostile_count(struct hostile *h, const char *what)
{
	char url[64], body[256] = "", key[32];
	CURL *c = curl_easy_init();
	const char *at;

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hits", h->port);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
	assert_int_equal(curl_easy_perform(c), CURLE_OK);
	curl_easy_cleanup(c);
	snprintf(key, sizeof(key), "\"%s\": ", what);
	at = strstr(body, key);
	assert_non_null(at);
	return atoi(at + strlen(key));
}

static void hostile_stop(struct hostile *h)
{
	char cmd[128];

	kill(h->pid, SIGTERM);
	waitpid(h->pid, NULL, 0);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", h->data);
	assert_int_equal(system(cmd), 0);
}

/* Pulls from a fixture in MODE; the error must hold want. */
static void pull_refused(const char *mode, const char *want)
{
	struct hostile h;
	struct pull_opts o = { .max_bytes = 64 << 20, .timeout_s = 20 };
	struct herr err = { 0 };
	json_t *out = NULL;
	char ref[128];
	int rc, hits, tokens;

	hostile_start(&h, mode);
	o.data_dir = h.data;
	snprintf(ref, sizeof(ref), "127.0.0.1:%d/app:latest", h.port);
	rc = pull_image(&o, ref, &out, &err);
	hits = hostile_count(&h, "hits");
	tokens = hostile_count(&h, "tokens");
	/* Stopped before any check, so a failing one leaves no server. */
	hostile_stop(&h);
	if (rc >= 0 || !strstr(err.msg, want))
		fail_msg("%s: rc %d, '%s' lacks '%s'", mode, rc, err.msg, want);
	assert_null(out);
	/* Nothing went to the host that may not be reached over http. */
	assert_int_equal(hits, 0);
	if (!strcmp(mode, "auth-loop"))
		assert_int_equal(tokens, 1);
}

static void test_realm_over_http_elsewhere(void **state)
{
	(void)state;
	pull_refused("realm-http", "is not https");
}

static void test_redirects(void **state)
{
	(void)state;
	pull_refused("redirect-http", "refused: only https");
	pull_refused("redirect-file", "refused: only https");
	pull_refused("redirect-loop", "more than 5 redirects");
}

static void test_auth_loop_and_endless_body(void **state)
{
	(void)state;
	pull_refused("auth-loop", "answered 401");
	pull_refused("endless", "more than 4194304 bytes");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_references),
		cmocka_unit_test(test_bad_references),
		cmocka_unit_test(test_realm_over_http_elsewhere),
		cmocka_unit_test(test_redirects),
		cmocka_unit_test(test_auth_loop_and_endless_body),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
