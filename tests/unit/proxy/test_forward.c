/*
 * The proxy end to end on loopback: a real libmicrohttpd server plays the
 * service inside a sandbox, libcurl plays the client, and a small backend
 * maps sandbox ids to that server (in hutchd the dial goes through the
 * runtime into the sandbox's network namespace instead).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <microhttpd.h>

#include "buf.h"
#include "proxy.h"

static struct MHD_Daemon *service;
static unsigned service_port;
static struct proxy *px;
static char base[64];
static volatile int stream_stop;

/* ---- the service "inside" the sandbox ---- */

struct svc_req {
	size_t body;
};

static ssize_t slow_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
	/* "one" at once, then "two" after 400 ms, then (for /forever) nothing
	 * more until stopped. */
	const char *path = cls;

	if (pos == 0) {
		memcpy(buf, "one\n", 4);
		return 4;
	}
	if (strcmp(path, "/forever") == 0) {
		for (int i = 0; i < 200 && !stream_stop; i++)
			usleep(50000);
		return MHD_CONTENT_READER_END_OF_STREAM;
	}
	if (pos == 4) {
		usleep(400000);
		memcpy(buf, "two\n", 4);
		return 4;
	}
	return MHD_CONTENT_READER_END_OF_STREAM;
}

static enum MHD_Result svc(void *cls, struct MHD_Connection *c, const char *url,
			   const char *method, const char *version, const char *data,
			   size_t *size, void **ctx)
{
	struct svc_req *r = *ctx;
	struct MHD_Response *resp;
	char text[2048];
	enum MHD_Result ret;
	const char *hop, *host, *custom;

	if (!r) {
		*ctx = calloc(1, sizeof(*r));
		return MHD_YES;
	}
	if (*size) {
		r->body += *size;
		*size = 0;
		return MHD_YES;
	}
	if (strcmp(url, "/stream") == 0 || strcmp(url, "/forever") == 0) {
		resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, slow_stream,
							 (void *)(strcmp(url, "/stream") == 0 ?
								  "/stream" : "/forever"), NULL);
		MHD_add_response_header(resp, "Content-Type", "application/connect+json");
		ret = MHD_queue_response(c, 200, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	hop = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Hop");
	host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
	custom = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Custom");
	snprintf(text, sizeof(text), "%s %s q=%s host=%s custom=%s hop=%s body=%zu", method,
		 url, MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "a") ?: "-",
		 host ?: "-", custom ?: "-", hop ?: "-", r->body);
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_COPY);
	MHD_add_response_header(resp, "X-Service", "yes");
	ret = MHD_queue_response(c, 201, resp);
	MHD_destroy_response(resp);
	return ret;
}

static void svc_done(void *cls, struct MHD_Connection *c, void **ctx,
		     enum MHD_RequestTerminationCode toe)
{
	free(*ctx);
	*ctx = NULL;
}

/* ---- the backend ---- */

static const struct proxy_sandbox sandboxes[] = {
	{ .id = "iopen" },
	{ .id = "isecure", .access_token = "0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0" },
	{ .id = "iprivate", .access_token = "tok2", .traffic_token = "traffic2" },
};
#define N_SANDBOXES (sizeof(sandboxes) / sizeof(sandboxes[0]))

static int be_lookup(void *ctx, const char *id, struct proxy_sandbox *out,
		     struct herr *err)
{
	for (size_t i = 0; i < N_SANDBOXES; i++)
		if (strcmp(sandboxes[i].id, id) == 0) {
			*out = sandboxes[i];
			return 1;
		}
	return 0;
}

static int be_each(void *ctx, proxy_sandbox_fn fn, void *arg, struct herr *err)
{
	for (size_t i = 0; i < N_SANDBOXES; i++) {
		int rc = *sandboxes[i].access_token ? fn(arg, &sandboxes[i]) : 0;

		if (rc)
			return rc;
	}
	return 0;
}

/* Ports 49983 and 8080 of every sandbox are the service; others are closed. */
static int be_dial(void *ctx, const char *id, uint16_t port, struct herr *err)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd;

	if (port != 49983 && port != 8080)
		return herr_set(err, -ECONNREFUSED, "port %u: connection refused", port);
	sa.sin_port = htons((uint16_t)service_port);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (fd >= 0)
			close(fd);
		return herr_sys(err, -errno, "connect");
	}
	return fd;
}

/* ---- the client ---- */

struct answer {
	long status;
	struct hbuf body;
	struct hbuf headers;
	double first_byte_ms;
	struct timespec start;
	CURLcode rc;
};

static double since_ms(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static size_t on_data(char *p, size_t s, size_t n, void *arg)
{
	struct answer *a = arg;

	if (a->body.len == 0)
		a->first_byte_ms = since_ms(&a->start);
	hbuf_append(&a->body, p, s * n);
	if (strstr(a->body.data, "one\n") && getenv("PROXY_TEST_CLOSE"))
		proxy_close_sandbox(px, getenv("PROXY_TEST_CLOSE"));
	return s * n;
}

static size_t on_head(char *p, size_t s, size_t n, void *arg)
{
	hbuf_append(&((struct answer *)arg)->headers, p, s * n);
	return s * n;
}

struct upload {
	size_t left;
};

static size_t on_read(char *p, size_t s, size_t n, void *arg)
{
	struct upload *u = arg;
	size_t k = s * n < u->left ? s * n : u->left;

	memset(p, 'x', k);
	u->left -= k;
	return k;
}

static void request(const char *method, const char *path, const char *const *headers,
		    size_t upload, struct answer *a)
{
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	struct upload u = { upload };
	char url[512];

	memset(a, 0, sizeof(*a));
	hbuf_init(&a->body, 16 << 20);
	hbuf_init(&a->headers, 1 << 20);
	snprintf(url, sizeof(url), "%s%s", base, path);
	for (; headers && *headers; headers++)
		h = curl_slist_append(h, *headers);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_head);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, a);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
	if (upload) {
		curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(c, CURLOPT_READDATA, &u);
	}
	clock_gettime(CLOCK_MONOTONIC, &a->start);
	a->rc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a->status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	if (!a->body.data)
		hbuf_append(&a->body, "", 0);
	if (!a->headers.data)
		hbuf_append(&a->headers, "", 0);
}

static void answer_free(struct answer *a)
{
	hbuf_free(&a->body);
	hbuf_free(&a->headers);
}

static int setup(void **state)
{
	const union MHD_DaemonInfo *info;
	struct proxy_backend be = { .lookup = be_lookup, .each_secure = be_each,
				    .dial = be_dial };
	struct proxy_config cfg = { .listen = "127.0.0.1", .port = 0 };
	struct herr err;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	service = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION |
				   MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, svc, NULL,
				   MHD_OPTION_NOTIFY_COMPLETED, svc_done, NULL, MHD_OPTION_END);
	assert_non_null(service);
	info = MHD_get_daemon_info(service, MHD_DAEMON_INFO_BIND_PORT);
	service_port = info->port;
	assert_int_equal(proxy_start(&cfg, &be, &px, &err), 0);
	snprintf(base, sizeof(base), "http://127.0.0.1:%u", proxy_port(px));
	return 0;
}

static int teardown(void **state)
{
	stream_stop = 1;
	proxy_stop(px);
	MHD_stop_daemon(service);
	curl_global_cleanup();
	return 0;
}

static const char *const open_hdrs[] = { "E2b-Sandbox-Id: iopen", "E2b-Sandbox-Port: 49983",
					 NULL };

static void test_header_routing_forwards(void **state)
{
	const char *const h[] = { "E2b-Sandbox-Id: iopen", "E2b-Sandbox-Port: 49983",
				  "X-Custom: kept", "Connection: X-Hop", "X-Hop: dropped",
				  NULL };
	struct answer a;

	request("GET", "/some/path?a=b%20c", h, 0, &a);
	assert_int_equal(a.rc, CURLE_OK);
	assert_int_equal(a.status, 201);
	assert_non_null(strstr(a.body.data, "GET /some/path q=b c host=127.0.0.1:"));
	assert_non_null(strstr(a.body.data, "custom=kept hop=-"));
	assert_non_null(strstr(a.headers.data, "X-Service: yes"));
	answer_free(&a);
}

static void test_host_routing_keeps_host(void **state)
{
	const char *const h[] = { "Host: 49983-iopen.sbx.test", NULL };
	struct answer a;

	request("DELETE", "/x", h, 0, &a);
	assert_int_equal(a.status, 201);
	assert_non_null(strstr(a.body.data, "DELETE /x q=- host=49983-iopen.sbx.test"));
	answer_free(&a);
}

static void test_large_chunked_upload(void **state)
{
	const char *const h[] = { "E2b-Sandbox-Id: iopen", "E2b-Sandbox-Port: 49983",
				  "Transfer-Encoding: chunked", NULL };
	struct answer a;

	request("POST", "/upload", h, 5 << 20, &a);
	assert_int_equal(a.status, 201);
	assert_non_null(strstr(a.body.data, "POST /upload"));
	assert_non_null(strstr(a.body.data, "body=5242880"));
	answer_free(&a);
}

static void test_errors(void **state)
{
	const char *const unknown[] = { "E2b-Sandbox-Id: inope", "E2b-Sandbox-Port: 49983",
					NULL };
	const char *const closed[] = { "E2b-Sandbox-Id: iopen", "E2b-Sandbox-Port: 5000",
				       NULL };
	const char *const half[] = { "E2b-Sandbox-Id: iopen", NULL };
	const char *const badhost[] = { "Host: 99999-iopen.x", NULL };
	struct answer a;

	request("GET", "/health", unknown, 0, &a);
	assert_int_equal(a.status, 502);
	assert_string_equal(a.body.data, "{\"message\":\"The sandbox was not found\","
			    "\"code\":502,\"sandboxId\":\"inope\"}");
	answer_free(&a);
	request("GET", "/", closed, 0, &a);
	assert_int_equal(a.status, 502);
	assert_non_null(strstr(a.body.data, "port is not open"));
	assert_non_null(strstr(a.body.data, "\"port\":5000"));
	answer_free(&a);
	request("GET", "/", half, 0, &a);
	assert_int_equal(a.status, 400);
	assert_non_null(strstr(a.body.data, "missing header"));
	answer_free(&a);
	request("GET", "/", badhost, 0, &a);
	assert_int_equal(a.status, 400);
	assert_non_null(strstr(a.body.data, "Invalid sandbox port"));
	answer_free(&a);
	request("GET", "/health", NULL, 0, &a);
	assert_int_equal(a.status, 400);
	answer_free(&a);
	request("POST", "/init", open_hdrs, 0, &a);
	assert_int_equal(a.status, 404);
	assert_non_null(strstr(a.body.data, "\"path\":\"/init\""));
	answer_free(&a);
}

static void test_signature_routing(void **state)
{
	struct answer a;

	/* No sandbox header: the signature made with isecure's token finds it. */
	request("GET", "/files?path=hello.txt&username=user&signature="
		"v1_gUtH%2Fs9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E", NULL, 0, &a);
	assert_int_equal(a.status, 201);
	assert_non_null(strstr(a.body.data, "GET /files"));
	answer_free(&a);
	request("GET", "/files?path=hello.txt&username=user&signature=v1_forged", NULL, 0,
		&a);
	assert_int_equal(a.status, 401);
	assert_non_null(strstr(a.body.data, "invalid signature"));
	answer_free(&a);
	/* Signed for reading, not for writing. */
	request("POST", "/files?path=hello.txt&username=user&signature="
		"v1_gUtH%2Fs9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E", NULL, 0, &a);
	assert_int_equal(a.status, 401);
	answer_free(&a);
}

static void test_traffic_token(void **state)
{
	const char *const none[] = { "Host: 8080-iprivate.d", NULL };
	const char *const bad[] = { "Host: 8080-iprivate.d", "e2b-traffic-access-token: no",
				    NULL };
	const char *const good[] = { "Host: 8080-iprivate.d",
				     "e2b-traffic-access-token: traffic2", NULL };
	const char *const agent[] = { "Host: 49983-iprivate.d", NULL };
	struct answer a;

	request("GET", "/", none, 0, &a);
	assert_int_equal(a.status, 403);
	assert_non_null(strstr(a.body.data, "is missing"));
	answer_free(&a);
	request("GET", "/", bad, 0, &a);
	assert_int_equal(a.status, 403);
	assert_non_null(strstr(a.body.data, "is invalid"));
	answer_free(&a);
	request("GET", "/", good, 0, &a);
	assert_int_equal(a.status, 201);
	answer_free(&a);
	request("GET", "/", agent, 0, &a);
	assert_int_equal(a.status, 201);
	answer_free(&a);
}

static void test_stream_not_buffered(void **state)
{
	struct answer a;

	request("POST", "/stream", open_hdrs, 0, &a);
	assert_int_equal(a.status, 200);
	assert_string_equal(a.body.data, "one\ntwo\n");
	/* The first envelope arrived before the second was even written (the
	 * server waits 400 ms between them); relative, so load cannot break it. */
	assert_true(since_ms(&a.start) - a.first_byte_ms >= 300);
	answer_free(&a);
}

static void test_close_sandbox_ends_streams(void **state)
{
	struct answer a;

	setenv("PROXY_TEST_CLOSE", "iopen", 1);
	request("POST", "/forever", open_hdrs, 0, &a);
	unsetenv("PROXY_TEST_CLOSE");
	assert_int_not_equal(a.rc, CURLE_OK);
	assert_string_equal(a.body.data, "one\n");
	assert_true(since_ms(&a.start) < 5000);
	answer_free(&a);
}

static void test_metrics(void **state)
{
	struct hbuf out;

	hbuf_init(&out, 1 << 20);
	assert_int_equal(proxy_metrics_render(px, &out), 0);
	assert_non_null(strstr(out.data, "hutch_proxy_requests_total{status=\"502\"}"));
	assert_non_null(strstr(out.data, "hutch_proxy_response_head_seconds_count"));
	hbuf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_routing_forwards),
		cmocka_unit_test(test_host_routing_keeps_host),
		cmocka_unit_test(test_large_chunked_upload),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_signature_routing),
		cmocka_unit_test(test_traffic_token),
		cmocka_unit_test(test_stream_not_buffered),
		cmocka_unit_test(test_close_sandbox_ends_streams),
		cmocka_unit_test(test_metrics),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
