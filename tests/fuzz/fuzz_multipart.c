/*
 * libFuzzer target for the /files upload path: each input becomes the body of
 * a POST /files sent over loopback to the real agent HTTP server running in
 * this process, so libmicrohttpd's parser, the post processor, the inflater
 * and the file writer all see it. The first byte picks the framing:
 *   bit 0: multipart/form-data (boundary "fuzzb") or application/octet-stream
 *   bit 1: Content-Encoding: gzip
 *   bit 2: send an X-Metadata-Fuzz header made from the first body bytes
 *   bit 3: quote the boundary parameter (boundary="fuzzb"), as RFC 2046 allows
 * The "path" query is always set, so every write lands on one file in a
 * private temporary home and filenames from the input are never used as
 * paths. Fails when the agent answers anything but 200 or a 4xx/507, or
 * answers with no status line at all.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "state.h"
#include "users.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int port;
static struct agent_server *server; /* lives as long as the process */

static char dir[] = "/tmp/hutch-fuzz-files-XXXXXX";

static void remove_dir(void)
{
	static const char *const names[] = { "passwd", "group", "fuzz-target" };
	char path[256];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static void setup_once(void)
{
	struct agent_server_opts opts = { .listen_addr = "127.0.0.1" };
	struct herr err = { 0 };
	char path[256];
	FILE *f;

	if (!mkdtemp(dir))
		abort();
	atexit(remove_dir);
	snprintf(path, sizeof(path), "%s/passwd", dir);
	f = fopen(path, "w");
	if (!f)
		abort();
	fprintf(f, "root:x:0:0:root:%s:/bin/sh\n", dir);
	fclose(f);
	snprintf(path, sizeof(path), "%s/group", dir);
	f = fopen(path, "w");
	if (!f)
		abort();
	fprintf(f, "root:x:0:\n");
	fclose(f);
	log_configure("error", NULL);
	users_set_etc_dir(dir);
	state_set_default_user("root");

	for (port = 20000 + getpid() % 20000; port < 65000; port++) {
		opts.port = port;
		if (agent_server_start(&opts, &server, &err) == 0)
			return;
	}
	abort();
}

static int connect_agent(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		abort();
	return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return; /* the agent may answer early and close: fine */
		p = (const char *)p + w;
		n -= (size_t)w;
	}
}

static void check_status(int fd)
{
	char buf[4096];
	size_t len = 0;
	ssize_t n;
	unsigned status;

	while (len < sizeof(buf) - 1 && (n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0)) > 0)
		len += (size_t)n;
	buf[len] = '\0';
	if (sscanf(buf, "HTTP/1.1 %u", &status) != 1) {
		fprintf(stderr, "no status line in answer: %.200s\n", buf);
		abort();
	}
	if (status != 200 && (status < 400 || status >= 500) && status != 507) {
		fprintf(stderr, "unexpected answer: %.400s\n", buf);
		abort();
	}
}

static const char *content_type(unsigned flags)
{
	if (!(flags & 1))
		return "application/octet-stream";
	return flags & 8 ? "multipart/form-data; boundary=\"fuzzb\""
			 : "multipart/form-data; boundary=fuzzb";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	char head[1024], meta[128] = "";
	unsigned flags;
	int fd, n;

	if (!ready) {
		setup_once();
		ready = 1;
	}
	if (size < 1)
		return 0;
	flags = data[0];
	data++;
	size--;

	if (flags & 4) {
		size_t m = size < 40 ? size : 40;
		int k = snprintf(meta, sizeof(meta), "X-Metadata-Fuzz: ");
		for (size_t i = 0; i < m; i++)
			meta[k++] = data[i] == '\r' || data[i] == '\n' || data[i] == 0 ? '_' :
				    (char)data[i];
		meta[k++] = '\r';
		meta[k++] = '\n';
		meta[k] = '\0';
	}
	n = snprintf(head, sizeof(head),
		     "POST /files?path=fuzz-target HTTP/1.1\r\nHost: fuzz\r\n"
		     "Content-Type: %s\r\n%s%sContent-Length: %zu\r\nConnection: close\r\n\r\n",
		     content_type(flags),
		     flags & 2 ? "Content-Encoding: gzip\r\n" : "", meta, size);

	fd = connect_agent();
	send_all(fd, head, (size_t)n);
	send_all(fd, data, size);
	shutdown(fd, SHUT_WR);
	check_status(fd);
	close(fd);
	return 0;
}
