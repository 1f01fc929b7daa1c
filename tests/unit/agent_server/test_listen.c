/*
 * The agent's listening socket (http.c), on 127.0.0.1 only. It must be the
 * port's only listener (no SO_REUSEPORT: a process of the agent's user
 * could otherwise share it and take its connections), and it must bind
 * again while connections it served wait in TIME_WAIT (SO_REUSEADDR, which
 * its accepted sockets inherit): a resume's CRIU binds it in the paused
 * netns where they are.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "http.h"

/* A port the kernel just gave out; free again once the socket closes. */
static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

static struct agent_server *start_on(int port)
{
	struct agent_server_opts o = { .listen_addr = "127.0.0.1", .port = port };
	struct agent_server *s = NULL;
	struct herr err = { 0 };

	if (agent_server_start(&o, &s, &err) < 0)
		fail_msg("agent_server_start on port %d: %s", port, err.msg);
	return s;
}

/* 0 when a socket with the given options binds and listens on the port. */
static int listen_errno(int port, int reuseport)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1, r, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	r = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 1) == 0 ? 0 : errno;
	close(fd);
	return r;
}

/* One HTTP/1.0 request: the agent answers and closes first, so its side of
 * the connection is the one left in TIME_WAIT. */
static void one_request(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	static const char req[] = "GET /health HTTP/1.0\r\n\r\n";
	char buf[1024];
	size_t got = 0;
	ssize_t n;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(write(fd, req, sizeof(req) - 1), (ssize_t)(sizeof(req) - 1));
	while ((n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
		got += (size_t)n;
	buf[got] = '\0';
	assert_non_null(strstr(buf, " 204 "));
	close(fd);
}

static void no_second_listener(void **unused)
{
	int port = free_port();
	struct agent_server *s = start_on(port);

	assert_int_equal(listen_errno(port, 1), EADDRINUSE);
	assert_int_equal(listen_errno(port, 0), EADDRINUSE);
	agent_server_stop(s);
	assert_int_equal(listen_errno(port, 1), 0); /* control: the port is free */
}

static void binds_again_over_time_wait(void **unused)
{
	int port = free_port();
	struct agent_server *s = start_on(port);

	one_request(port);
	agent_server_stop(s);
	s = start_on(port);
	agent_server_stop(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(no_second_listener),
		cmocka_unit_test(binds_again_over_time_wait),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
