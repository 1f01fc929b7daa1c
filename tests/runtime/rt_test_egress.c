/*
 * Egress checks of rt-test beyond the basic ones in rt-test.c: private and
 * link-local ranges, allowOut winning over denyOut (protocol.md 7.6), and
 * the cap on a sandbox's concurrent outbound connections.
 *
 * Peers live in the "internet" namespace tests/runtime/run builds:
 * RT_INET_A and RT_INET_B (public test addresses, one per /25),
 * RT_LINKLOCAL, and RT_PRIVATE_PEERS, one address in each of 10/8,
 * 172.16/12, 192.168/16 and 100.64/10, routed to that namespace by /32
 * routes of the runner's (which sets the variable only when they are in
 * place, so nothing of this leaves the machine). The echo listener answers
 * on RT_INET_PORT on all of them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rt_test.h"

/* A reject must come back at once; a timeout would mean a silent drop. */
#define FAST_MS 1000
/* The cap the cap checks run under: small enough to fill quickly. */
#define SMALL_CAP 8

struct range {
	const char *cidr;
	const char *name;
	const char *peer; /* an address of the range that answers, or NULL */
};

/* Written here, not taken from the runtime, so that a range dropped from
 * the runtime's list shows up as a failure. 127/8 is each sandbox's own
 * loopback, covered by the escape suite. */
static struct range ranges[] = {
	{ "10.0.0.0/8", "10", NULL },
	{ "172.16.0.0/12", "172_16", NULL },
	{ "192.168.0.0/16", "192_168", NULL },
	{ "100.64.0.0/10", "cgnat", NULL },
	{ "169.254.0.0/16", "link_local", NULL },
};
#define N_RANGES (sizeof(ranges) / sizeof(ranges[0]))

static const char *inet_a, *inet_b;
static int port;
static char peers[512];

static struct rt_cidr cidr_of(const char *text)
{
	struct rt_cidr c = { 0, 32 };
	struct herr err;

	if (rt_cidr_parse(text, &c, &err) < 0)
		check(false, "egress/cidr", "%s: %s", text, err.msg);
	return c;
}

static bool in_cidr(const char *ip, const struct rt_cidr *c)
{
	struct in_addr a;
	uint32_t mask = c->prefix ? ~0u << (32 - c->prefix) : 0;

	return inet_pton(AF_INET, ip, &a) == 1 && (ntohl(a.s_addr) & mask) == (c->addr & mask);
}

/* Files every peer under its range; false (reported) when a range has none
 * or an address fits none. */
static bool find_peers(void)
{
	const char *ll = getenv("RT_LINKLOCAL"), *list = getenv("RT_PRIVATE_PEERS");
	char *save = NULL;
	bool ok = true;

	snprintf(peers, sizeof(peers), "%s %s", list ? list : "", ll ? ll : "");
	for (char *ip = strtok_r(peers, " ", &save); ip; ip = strtok_r(NULL, " ", &save)) {
		bool filed = false;
		for (size_t i = 0; i < N_RANGES && !filed; i++) {
			struct rt_cidr c = cidr_of(ranges[i].cidr);
			if (in_cidr(ip, &c)) {
				ranges[i].peer = ip;
				filed = true;
			}
		}
		if (!filed) {
			check(false, "egress/private_setup", "peer %s is in none of the ranges", ip);
			ok = false;
		}
	}
	for (size_t i = 0; i < N_RANGES; i++) {
		if (!ranges[i].peer) {
			check(false, "egress/private_setup", "no peer in %s (RT_PRIVATE_PEERS, "
			      "RT_LINKLOCAL from tests/runtime/run)", ranges[i].cidr);
			ok = false;
		}
	}
	return ok;
}

static bool env_ok(void)
{
	inet_a = getenv("RT_INET_A");
	inet_b = getenv("RT_INET_B");
	port = getenv("RT_INET_PORT") ? atoi(getenv("RT_INET_PORT")) : 0;
	return inet_a && inet_b && port > 0;
}

/* Refused fast from the sandbox, while the host's own connect to the same
 * address (the control) shows something listens there. */
static void refused_at(const char *id, const char *name, const char *ip, int at_port)
{
	char res[128];
	long ms;
	bool ok = probe_connect(id, ip, at_port, res, sizeof(res), &ms);
	bool there = host_connect(ip, at_port);

	check(!ok && ms >= 0 && ms < FAST_MS && there, name,
	      "(%s:%d from the sandbox: %s after %ld ms; from the host: %s)", ip, at_port, res,
	      ms, there ? "reachable" : "NOT reachable");
}

/* A peer on the echo port: reachable from the sandbox (want), or refused. */
static void expect(const char *id, const char *name, const char *ip, bool want)
{
	char res[128];
	long ms;

	if (!want) {
		refused_at(id, name, ip, port);
		return;
	}
	bool ok = probe_connect(id, ip, port, res, sizeof(res), &ms);
	check(ok, name, "(%s:%d from the sandbox: %s in %ld ms)", ip, port, res, ms);
}

static void set_policy(const char *id, bool internet, const struct rt_cidr *allow,
		       size_t n_allow, const struct rt_cidr *deny, size_t n_deny)
{
	struct rt_net_policy pol = { .allow_internet = internet, .allow_out = allow,
				     .n_allow_out = n_allow, .deny_out = deny,
				     .n_deny_out = n_deny };
	struct herr err;

	if (rt_set_net_policy(rt, id, &pol, &err) < 0)
		check(false, "egress/set_policy", "%s: %s", id, err.msg);
}

/* Each range refused by default, reachable once in allowOut (the others
 * then still refused). */
static void ranges_default_and_allowed(const char *id)
{
	char name[96];

	expect(id, "egress/private_control_public_reachable", inet_a, true);
	for (size_t i = 0; i < N_RANGES; i++) {
		snprintf(name, sizeof(name), "egress/private_denied_%s", ranges[i].name);
		expect(id, name, ranges[i].peer, false);
	}
	for (size_t i = 0; i < N_RANGES; i++) {
		struct rt_cidr allow = cidr_of(ranges[i].cidr);
		const struct range *other = &ranges[(i + 1) % N_RANGES];

		set_policy(id, true, &allow, 1, NULL, 0);
		snprintf(name, sizeof(name), "egress/private_allowed_%s", ranges[i].name);
		expect(id, name, ranges[i].peer, true);
		snprintf(name, sizeof(name), "egress/private_allowed_%s_%s_still_denied",
			 ranges[i].name, other->name);
		expect(id, name, other->peer, false);
	}
}

/* allowOut beats denyOut whatever their overlap, as the API stores them:
 * allow_internet_access=false becomes denyOut ["0.0.0.0/0"]. */
static void allow_beats_deny(const char *id)
{
	char cidr_a[64], cidr_p[64];

	snprintf(cidr_a, sizeof(cidr_a), "%s/32", inet_a);
	snprintf(cidr_p, sizeof(cidr_p), "%s/32", ranges[2].peer);
	struct rt_cidr allow[] = { cidr_of(cidr_a), cidr_of(cidr_p) };
	struct rt_cidr all = cidr_of("0.0.0.0/0");

	for (int internet = 1; internet >= 0; internet--) {
		const char *tag = internet ? "" : "_internet_off";
		char name[96];

		set_policy(id, internet, allow, 2, &all, 1);
		snprintf(name, sizeof(name), "egress/allow_beats_deny_all%s", tag);
		expect(id, name, inet_a, true);
		snprintf(name, sizeof(name), "egress/allow_beats_deny_all_private%s", tag);
		expect(id, name, ranges[2].peer, true);
		snprintf(name, sizeof(name), "egress/deny_all_others_denied%s", tag);
		expect(id, name, inet_b, false);
		snprintf(name, sizeof(name), "egress/deny_all_private_others_denied%s", tag);
		expect(id, name, ranges[0].peer, false);
	}
	/* A narrower deny inside a wider allow loses too (order of precedence,
	 * not specificity). */
	struct rt_cidr wide = cidr_of("198.51.100.0/24"), narrow = cidr_of(cidr_a);
	set_policy(id, true, &wide, 1, &narrow, 1);
	expect(id, "egress/allow_beats_narrower_deny", inet_a, true);
	set_policy(id, true, NULL, 0, &narrow, 1);
	expect(id, "egress/narrower_deny_alone_denies", inet_a, false);
}

/* A listener of the host's on every address, on a port of the kernel's
 * choosing; -1 (reported) on failure. */
static int listen_on_host(int *listen_port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		check(false, "egress/allow_all_setup", "host listener: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*listen_port = ntohs(sa.sin_port);
	return fd;
}

/* allowOut 0.0.0.0/0 opens every range, yet never the host or another
 * sandbox: those rules come before any sandbox's own. */
static void allow_all_keeps_isolation(const char *id)
{
	struct rt_cidr all = cidr_of("0.0.0.0/0");
	struct rt_info info;
	struct herr err;
	const char *host_ip = getenv("RT_INET_HOST");
	int lport, lfd;

	if (make_sandbox("egr-other", (struct rt_limits){ 0 }, NULL, NULL) < 0)
		return;
	set_policy(id, true, &all, 1, NULL, 0);
	expect(id, "egress/allow_all_opens_private", ranges[0].peer, true);
	if (rt_query(rt, "egr-other", &info, &err) == 0)
		refused_at(id, "egress/allow_all_not_other_sandbox", info.ip, PROBE_PORT);
	else
		check(false, "egress/allow_all_not_other_sandbox", "rt_query: %s", err.msg);
	lfd = host_ip ? listen_on_host(&lport) : -1;
	if (lfd >= 0) {
		refused_at(id, "egress/allow_all_not_host", host_ip, lport);
		close(lfd);
	}
	destroy("egr-other");
}

void suite_egress_ranges(void)
{
	if (!env_ok()) {
		check(false, "egress/private_setup", "RT_INET_* not set by the runner");
		return;
	}
	if (!find_peers())
		return;
	if (make_sandbox("egr-priv", (struct rt_limits){ 0 }, NULL, NULL) < 0)
		return;
	ranges_default_and_allowed("egr-priv");
	allow_beats_deny("egr-priv");
	allow_all_keeps_isolation("egr-priv");
	destroy("egr-priv");
}

/* ---------- the connection cap ---------- */

/* "<result> <ms> <held>" from the probe's open and shut commands. */
static bool held_cmd(const char *id, const char *line, long *ms, int *held, char *res,
		     size_t len)
{
	char out[256], what[64] = "?";

	*ms = -1;
	*held = -1;
	if (probe_cmd(id, line, out, sizeof(out), 4000) < 0) {
		snprintf(res, len, "no answer (%.40s)", out);
		return false;
	}
	sscanf(out, "%63s %ld %d", what, ms, held);
	snprintf(res, len, "%s", what);
	return strcmp(what, "ok") == 0;
}

/* Opens n connections to ip; returns how many worked, the slowest in *max_ms. */
static int open_n(const char *id, const char *ip, int n, long *max_ms, char *why, size_t len)
{
	char line[128], res[64];
	int done = 0, held;
	long ms;

	snprintf(line, sizeof(line), "open %s %d 1500", ip, port);
	*max_ms = 0;
	why[0] = '\0';
	for (int i = 0; i < n; i++) {
		if (held_cmd(id, line, &ms, &held, res, sizeof(res)))
			done++;
		else if (!why[0])
			snprintf(why, len, "; #%d: %s after %ld ms", i + 1, res, ms);
		*max_ms = ms > *max_ms ? ms : *max_ms;
	}
	return done;
}

static int echo_working(const char *id, int *held)
{
	char out[128];
	int working = -1;

	*held = -1;
	if (probe_cmd(id, "echo", out, sizeof(out), 8000) == 0)
		sscanf(out, "echo %d %d", &working, held);
	return working;
}

static void close_all(const char *id)
{
	char out[64];

	probe_cmd(id, "closeall", out, sizeof(out), 2000);
}

/* Replaces the runtime by one started with conf; false (reported) when it
 * cannot start. Sandboxes of the old one must be gone. */
static bool restart_with(struct rt_config *conf, const char *why)
{
	struct herr err;

	rt_shutdown(rt);
	rt = NULL;
	if (rt_init(conf, &rt, &err) < 0) {
		check(false, "egress/cap_restart", "rt_init (%s): %s", why, err.msg);
		rt = NULL;
		return false;
	}
	return true;
}

/* Positive control: past SMALL_CAP, under the test runtime's own (larger)
 * cap, every connection works; the refusals below are the cap's doing. */
static void cap_control(void)
{
	char why[128];
	long max_ms;

	if (make_sandbox("egr-capctl", (struct rt_limits){ 0 }, NULL, NULL) < 0)
		return;
	int n = SMALL_CAP + 2;
	int done = open_n("egr-capctl", inet_a, n, &max_ms, why, sizeof(why));
	check(cfg.egress_conn_max > (unsigned)n && done == n, "egress/cap_control_under_large_cap",
	      "(%d of %d connections open at once under a cap of %u; slowest %ld ms%s)", done,
	      n, cfg.egress_conn_max, max_ms, why);
	close_all("egr-capctl");
	destroy("egr-capctl");
}

/* After one held connection ends: the next open works within a second. */
static void cap_slot_freed(const char *id, char *line)
{
	char res[64];
	long ms, shut_ms;
	int held, retries = 0;
	bool shut = held_cmd(id, "shut", &shut_ms, &held, res, sizeof(res));
	bool ok = held_cmd(id, line, &ms, &held, res, sizeof(res));

	/* The kernel drops closed flows from the count lazily (on the next new
	 * connection, at most once a jiffy): allow a few retries, and say so. */
	for (; !ok && retries < 20; retries++) {
		usleep(50 * 1000);
		ok = held_cmd(id, line, &ms, &held, res, sizeof(res));
	}
	check(shut && ok && held == SMALL_CAP, "egress/cap_slot_freed_by_close",
	      "(one connection closed in %ld ms; a new one then: %s in %ld ms after %d "
	      "retries of 50 ms, %d open)", shut_ms, res, ms, retries, held);
	ok = held_cmd(id, line, &ms, &held, res, sizeof(res));
	check(!ok && ms >= 0 && ms < FAST_MS && held == SMALL_CAP,
	      "egress/cap_enforced_again_when_full", "(the next one: %s after %ld ms, %d open)",
	      res, ms, held);
}

static void cap_checks(const char *id)
{
	char line[128], res[64], why[128];
	long ms, max_ms;
	int held;

	int done = open_n(id, inet_a, SMALL_CAP, &max_ms, why, sizeof(why));
	check(done == SMALL_CAP, "egress/cap_below_all_succeed",
	      "(%d of %d connections under a cap of %d; slowest %ld ms%s)", done, SMALL_CAP,
	      SMALL_CAP, max_ms, why);
	/* Past the cap, to either peer address: refused at once (a reset). */
	const char *ips[] = { inet_a, inet_b };
	for (int i = 0; i < 2; i++) {
		char name[64];
		snprintf(line, sizeof(line), "open %s %d 1500", ips[i], port);
		bool ok = held_cmd(id, line, &ms, &held, res, sizeof(res));
		snprintf(name, sizeof(name), "egress/cap_exceeded_refused_fast_%c", 'a' + i);
		check(!ok && ms >= 0 && ms < FAST_MS && held == SMALL_CAP, name,
		      "(connection %d to %s: %s after %ld ms)", SMALL_CAP + 1, ips[i], res, ms);
	}
	int working = echo_working(id, &held);
	check(working == SMALL_CAP && held == SMALL_CAP, "egress/cap_open_ones_still_work",
	      "(%d of %d held connections echo after the refusals)", working, held);
	snprintf(line, sizeof(line), "open %s %d 1500", inet_a, port);
	cap_slot_freed(id, line);
}

void suite_egress_cap(void)
{
	static struct rt_config small;

	if (!env_ok()) {
		check(false, "egress/cap_setup", "RT_INET_* not set by the runner");
		return;
	}
	cap_control();
	small = cfg;
	small.egress_conn_max = SMALL_CAP;
	if (!restart_with(&small, "a cap of 8"))
		goto restore;
	if (make_sandbox("egr-cap", (struct rt_limits){ 0 }, NULL, NULL) == 0) {
		cap_checks("egr-cap");
		close_all("egr-cap");
	}
	destroy("egr-cap");
restore:
	/* The suites after this one run under the test configuration again. */
	if (rt) {
		restart_with(&cfg, "the test configuration");
	} else {
		struct herr err;
		if (rt_init(&cfg, &rt, &err) < 0) {
			check(false, "egress/cap_restart", "rt_init (the test configuration): %s",
			      err.msg);
			rt = NULL;
		}
	}
}
