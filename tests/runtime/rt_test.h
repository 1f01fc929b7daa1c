/*
 * What rt-test.c (the driver and its first suites) shares with the suites
 * kept in files of their own.
 */
#ifndef HUTCH_RT_TEST_H
#define HUTCH_RT_TEST_H

#include <stdbool.h>
#include <stddef.h>

#include "rt.h"

#define PROBE_PORT 7000

/* The runtime under test and the configuration it was started with; a
 * suite may restart it with another configuration, and must leave it
 * running with cfg as it found it. */
extern struct rt *rt;
extern struct rt_config cfg;

/* Prints "ok <name> detail" or "FAIL <name>: detail" and counts it. */
void check(bool ok, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A sandbox running the probe's command server (argv NULL), or argv; NULL
 * pol = internet on. Waits for the probe's port; failures are reported. */
int make_sandbox(const char *id, struct rt_limits lim, const struct rt_net_policy *pol,
		 const char *const *argv);
void destroy(const char *id);

/* One command to the probe in a sandbox; its answer without the final "."
 * line in out. 0, or an error (the text says what). */
int probe_cmd(const char *id, const char *line, char *out, size_t len, int wait_ms);

/* The probe connects to ip:port (1.5 s timeout): true when it did; res gets
 * "ok" or the errno name, ms how long the attempt took. */
bool probe_connect(const char *id, const char *ip, int port, char *res, size_t len,
		   long *ms);

/* A TCP connect from the host itself (the positive controls). */
bool host_connect(const char *ip, int port);

/* rt_test_egress.c: private ranges, allow-over-deny, the connection cap. */
void suite_egress_ranges(void);
void suite_egress_cap(void);

#endif
