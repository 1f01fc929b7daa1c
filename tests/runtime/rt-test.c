/*
 * rt-test: the root-only runtime suites, driven through the public API in
 * rt.h against real namespaces, cgroups, loop disks and nftables.
 *
 *   rt-test PROBE SUITE...     suites: escape limits egress readopt leak
 *                              (escape runs facts too, limits cpu and reasons:
 *                              rt_test_facts.c; each may be named alone)
 *
 * PROBE is the static rt-probe binary; it becomes the init of every sandbox
 * ("serve" mode, a command server on port 7000 reached with rt_dial) and is
 * also run on the host as the positive control of the escape checks.
 * Environment: RT_TMP (a scratch folder the caller removes), RT_INET_A,
 * RT_INET_B, RT_INET_HOST, RT_INET_PORT, RT_INET_LOG, RT_LINKLOCAL (the
 * "internet" namespace the runner built), HUTCH_TEST_QUICK, RT_LEAK_CYCLES.
 *
 * Prints "ok <name> ..." or "FAIL <name>: why" per check; exit 0 when all
 * passed. Every sandbox it made is destroyed before it returns.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rt.h"
#include "rt_test.h"
#include "rt_test_env.h"
#include "rt_test_facts.h"

static int n_pass, n_fail;
struct rt *rt;
struct rt_config cfg;
static char tmp_dir[512], rootfs[600], agent_dir[600], data_dir[600], run_dir[600];
static const char *probe_path;
static const char *probe_argv[] = { RT_AGENT_MOUNT "/rt-probe", "serve", "7000", NULL };
static const char *bomb_argv[] = { RT_AGENT_MOUNT "/rt-probe", "membomb", NULL };

void check(bool ok, const char *name, const char *fmt, ...)
{
	char detail[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	printf("%s %s%s%s\n", ok ? "ok" : "FAIL", name, ok ? " " : ": ", detail);
	fflush(stdout);
	if (ok)
		n_pass++;
	else
		n_fail++;
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool quick(void)
{
	const char *q = getenv("HUTCH_TEST_QUICK");
	return q && *q && strcmp(q, "0");
}

/* ---------- sandboxes ---------- */

int make_sandbox(const char *id, struct rt_limits lim, const struct rt_net_policy *pol,
		 const char *const *argv)
{
	const char *layers[] = { rootfs };
	struct rt_spec spec = {
		.id = id, .layers = layers, .n_layers = 1, .agent_dir = agent_dir,
		.argv = argv ? argv : probe_argv, .limits = lim,
	};
	struct herr err;

	if (pol)
		spec.net = *pol;
	else
		spec.net.allow_internet = true;
	if (!spec.limits.disk_mb)
		spec.limits.disk_mb = 64;
	int r = rt_create(rt, &spec, &err);
	if (r < 0) {
		check(false, id, "rt_create: %s", err.msg);
		return r;
	}
	if (argv)
		return 0;
	r = rt_wait_port(rt, id, PROBE_PORT, 5000, &err);
	if (r < 0)
		check(false, id, "rt_wait_port: %s", err.msg);
	return r;
}

void destroy(const char *id)
{
	struct herr err;
	int r = rt_destroy(rt, id, &err);

	if (r < 0 && r != -ENOENT)
		check(false, "destroy", "%s: %s", id, err.msg);
}

/* Sends one command to the probe in a sandbox; returns its answer (without
 * the closing "." line) or an error text. */
int probe_cmd(const char *id, const char *line, char *out, size_t len, int wait_ms)
{
	struct herr err;
	int fd = rt_dial(rt, id, PROBE_PORT, &err);
	size_t got = 0;

	out[0] = '\0';
	if (fd < 0) {
		snprintf(out, len, "dial: %s", err.msg);
		return fd;
	}
	struct timeval tv = { wait_ms / 1000, (wait_ms % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (write(fd, line, strlen(line)) < 0 || write(fd, "\n", 1) < 0) {
		close(fd);
		return -EIO;
	}
	for (;;) {
		ssize_t n = read(fd, out + got, len - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		out[got] = '\0';
		if (got >= 2 && strcmp(out + got - 2, ".\n") == 0) {
			out[got - 2] = '\0';
			close(fd);
			return 0;
		}
		if (got + 1 >= len)
			break;
	}
	close(fd);
	return -ETIMEDOUT;
}

/* Asks the probe to connect somewhere; true when it connected. */
bool probe_connect(const char *id, const char *ip, int port, char *res, size_t len,
		   long *ms)
{
	char line[128], out[256], what[64] = "?";

	snprintf(line, sizeof(line), "connect %s %d 1500", ip, port);
	*ms = -1;
	if (probe_cmd(id, line, out, sizeof(out), 4000) < 0) {
		snprintf(res, len, "no answer (%.100s)", out);
		return false;
	}
	sscanf(out, "%63s %ld", what, ms);
	snprintf(res, len, "%s", what);
	return strcmp(what, "ok") == 0;
}

bool host_connect(const char *ip, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = { 2, 0 };

	if (fd < 0 || inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
		return false;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

static int query(const char *id, struct rt_info *info)
{
	struct herr err;
	return rt_query(rt, id, info, &err);
}

static bool wait_stopped(const char *id, struct rt_info *info, int ms)
{
	for (long t0 = now_ms(); now_ms() - t0 < ms; usleep(20000))
		if (query(id, info) == 0 && info->state == RT_STATE_STOPPED)
			return true;
	return false;
}

static const char *ip_of(const char *id, char *buf)
{
	struct rt_info info;

	buf[0] = '\0';
	if (query(id, &info) == 0)
		snprintf(buf, 16, "%s", info.ip);
	return buf;
}

/* ---------- escape ---------- */

struct expect {
	const char *name;
	bool inside_ok;          /* the attempt must work inside (a positive control) */
	const char *inside_err;  /* when blocked, this exact result; NULL = any */
	bool control_optional;   /* the host kernel may lack the feature */
};

static const struct expect escape_table[] = {
	{ "write_tmp", true, NULL, false },
	{ "write_core_pattern", false, NULL, false },
	{ "write_proc_sys_net", false, NULL, false },
	{ "write_sysrq", false, NULL, true },
	{ "write_sys", false, NULL, false },
	{ "mknod_fifo", true, NULL, false },
	{ "mknod_blk", false, NULL, false },
	{ "mknod_mem", false, NULL, false },
	{ "mount", false, "EPERM", false },
	{ "unshare_user", false, "EPERM", false },
	{ "clone_user", false, "EPERM", false },
	{ "unshare_net", false, "EPERM", false },
	{ "setns", false, "EPERM", false },
	{ "bpf", false, "EPERM", false },
	{ "keyctl", false, "EPERM", false },
	{ "perf_event_open", false, "EPERM", false },
	{ "kexec", false, "EPERM", true },
	{ "module", false, "EPERM", false },
	{ "io_uring", false, "EPERM", false },
	{ "ptrace_child", false, "EPERM", false },
};

static const char *find_result(const char *text, const char *name, char *buf, size_t len)
{
	size_t nl = strlen(name);

	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, name, nl) == 0 && p[nl] == ' ') {
			size_t n = strcspn(p + nl + 1, "\n");
			snprintf(buf, len, "%.*s", (int)n, p + nl + 1);
			return buf;
		}
	}
	return NULL;
}

static int run_capture(const char *const *argv, char *out, size_t len)
{
	int p[2];
	size_t got = 0;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	for (ssize_t n; got + 1 < len && (n = read(p[0], out + got, len - 1 - got)) > 0;)
		got += (size_t)n;
	out[got] = '\0';
	close(p[0]);
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

static int seen(const char *text, const char *name)
{
	char buf[64];
	int n = -1;

	if (find_result(text, name, buf, sizeof(buf)))
		sscanf(buf, "seen=%d", &n);
	return n;
}

static void escape_local(const char *id)
{
	static char inside[8192], host[8192];
	const char *argv[] = { probe_path, "escape", NULL };
	char name[96], a[64], c[64];

	if (probe_cmd(id, "escape", inside, sizeof(inside), 10000) < 0) {
		check(false, "escape/run", "probe gave no answer: %s", inside);
		return;
	}
	if (run_capture(argv, host, sizeof(host)) < 0) {
		check(false, "escape/control", "host control run failed: %s", host);
		return;
	}
	for (size_t i = 0; i < sizeof(escape_table) / sizeof(escape_table[0]); i++) {
		const struct expect *e = &escape_table[i];
		const char *in = find_result(inside, e->name, a, sizeof(a));
		const char *ctl = find_result(host, e->name, c, sizeof(c));
		bool ctl_ok = ctl && strcmp(ctl, "ok") == 0;
		bool in_ok = in && strcmp(in, "ok") == 0;
		bool pass;

		snprintf(name, sizeof(name), "escape/%s", e->name);
		if (e->inside_ok)
			pass = in_ok && ctl_ok;
		else
			pass = in && !in_ok && (!e->inside_err || strcmp(in, e->inside_err) == 0) &&
			       (ctl_ok || e->control_optional);
		check(pass, name, "(sandbox: %s; host control: %s%s)", in ? in : "missing",
		      ctl ? ctl : "missing",
		      !ctl_ok && e->control_optional ? ", feature absent on this host" : "");
	}
	const char *ptr = find_result(inside, "ptrace_init", a, sizeof(a));
	check(ptr && strcmp(ptr, "EPERM") == 0, "escape/ptrace_init",
	      "(sandbox: %s; control: ptrace_child on the host)", ptr ? ptr : "missing");

	int pi = seen(inside, "procs"), ph = seen(host, "procs");
	check(pi >= 1 && pi <= 3 && ph > 10, "escape/host_processes",
	      "(sandbox sees %d processes, the host %d)", pi, ph);
	int mi = seen(inside, "mounts"), mh = seen(host, "mounts");
	check(mi == 0 && mh > 0, "escape/host_mounts",
	      "(foreign mounts: sandbox %d, host %d)", mi, mh);
	int ii = seen(inside, "ifaces"), ih = seen(host, "ifaces");
	check(ii == 0 && ih > 0, "escape/host_interfaces",
	      "(interfaces besides lo/eth0: sandbox %d, host %d)", ii, ih);
}

static int host_listener(int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		return -1;
	*port = ntohs(sa.sin_port);
	return fd;
}

/* Blocked, and quickly: a reject, not a timeout. */
static void expect_blocked(const char *id, const char *name, const char *ip, int port,
			   const char *control_what, bool control)
{
	char res[128];
	long ms;
	bool ok = probe_connect(id, ip, port, res, sizeof(res), &ms);

	check(!ok && ms >= 0 && ms < 1000 && control, name,
	      "(%s:%d from the sandbox: %s after %ld ms; %s: %s)", ip, port, res, ms,
	      control_what, control ? "reachable" : "NOT reachable");
}

static void escape_network(const char *a, const char *b)
{
	char ipa[16], ipb[16], res[128], name[96];
	int port, lfd = host_listener(&port);
	long ms;
	struct ifaddrs *ifs, *i;

	if (lfd < 0 || getifaddrs(&ifs) < 0) {
		check(false, "escape/net-setup", "host listener: %s", strerror(errno));
		return;
	}
	ip_of(a, ipa);
	ip_of(b, ipb);
	/* Positive controls: the sandbox reaches its own listener both ways. */
	bool ok = probe_connect(a, "127.0.0.1", PROBE_PORT, res, sizeof(res), &ms);
	check(ok, "escape/own_loopback_control", "(127.0.0.1:%d: %s)", PROBE_PORT, res);
	ok = probe_connect(a, ipa, PROBE_PORT, res, sizeof(res), &ms);
	check(ok, "escape/own_eth0_control", "(%s:%d: %s)", ipa, PROBE_PORT, res);

	for (i = ifs; i; i = i->ifa_next) {
		char ip[INET_ADDRSTRLEN];
		if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
			continue;
		inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, ip, sizeof(ip));
		snprintf(name, sizeof(name), "escape/host_listener_%s_%s", i->ifa_name, ip);
		expect_blocked(a, name, ip, port, "from the host", host_connect(ip, port));
	}
	freeifaddrs(ifs);
	close(lfd);

	expect_blocked(a, "escape/other_sandbox", ipb, PROBE_PORT, "from the host",
		       host_connect(ipb, PROBE_PORT));
	const char *ll = getenv("RT_LINKLOCAL");
	if (ll) {
		int llport = atoi(getenv("RT_INET_PORT") ? getenv("RT_INET_PORT") : "9000");
		expect_blocked(a, "escape/link_local", ll, llport, "from the host",
			       host_connect(ll, llport));
	} else {
		check(false, "escape/link_local", "RT_LINKLOCAL not set by the runner");
	}
}

static uint64_t host_used_bytes(const char *path)
{
	struct statvfs st;

	if (statvfs(path, &st) < 0)
		return 0;
	return (uint64_t)(st.f_blocks - st.f_bfree) * st.f_frsize;
}

static void escape_disk(const char *a)
{
	char out[256], what[64] = "?";
	long mb = -1;
	uint64_t before = host_used_bytes(data_dir);

	if (probe_cmd(a, "fill /tmp/fill", out, sizeof(out), 60000) < 0) {
		check(false, "escape/disk_fill", "no answer: %s", out);
		return;
	}
	sscanf(out, "%63s %ld", what, &mb);
	uint64_t after = host_used_bytes(data_dir);
	int64_t grew = (int64_t)(after - before) >> 20;
	/* the limit is 64 MB; ext4 metadata takes a few of them */
	check(strcmp(what, "ENOSPC") == 0 && mb >= 32 && mb <= 64 && grew <= 64,
	      "escape/disk_fill", "(wrote %ld MB then %s; host data dir grew %lld MB)", mb,
	      what, (long long)grew);
	bool alive = probe_connect(a, "127.0.0.1", PROBE_PORT, out, sizeof(out), &mb);
	check(alive, "escape/disk_fill_survives", "(sandbox answers after the fill: %s)", out);
}

static void suite_escape(void)
{
	struct rt_limits lim = { .memory_mb = 256, .pids = 128, .disk_mb = 64 };

	if (make_sandbox("esc-a", lim, NULL, NULL) < 0 || make_sandbox("esc-b", lim, NULL, NULL) < 0)
		goto out;
	escape_local("esc-a");
	escape_network("esc-a", "esc-b");
	escape_disk("esc-a");

	struct herr err;
	int fd = rt_dial(rt, "esc-a", PROBE_PORT, &err);
	check(fd >= 0, "dial/listener", "(rt_dial to 127.0.0.1:%d inside: %s)", PROBE_PORT,
	      fd >= 0 ? "connected" : err.msg);
	if (fd >= 0)
		close(fd);
	fd = rt_dial(rt, "esc-a", PROBE_PORT + 1, &err);
	check(fd == -ECONNREFUSED, "dial/refused", "(nothing on %d: %s)", PROBE_PORT + 1,
	      fd < 0 ? err.msg : "connected?");
	if (fd >= 0)
		close(fd);
	fd = rt_dial(rt, "no-such", PROBE_PORT, &err);
	check(fd == -ENOENT, "dial/unknown", "(%d)", fd);
out:
	destroy("esc-a");
	destroy("esc-b");
}

/* ---------- limits ---------- */

struct bomb_ctx {
	const char *id;
	const char *cmd;
	char out[256];
	int r;
};

static void *bomb_thread(void *arg)
{
	struct bomb_ctx *b = arg;

	b->r = probe_cmd(b->id, b->cmd, b->out, sizeof(b->out), 30000);
	return NULL;
}

/* The host and a neighbour must work while a sandbox misbehaves. */
static void neighbours_fine(const char *name, const char *other)
{
	char res[128];
	long ms;
	int forked = 0;

	for (int i = 0; i < 20; i++) {
		pid_t p = fork();
		if (p == 0)
			_exit(0);
		if (p > 0 && waitpid(p, NULL, 0) == p)
			forked++;
	}
	size_t big = 128u << 20;
	char *mem = malloc(big);
	if (mem)
		memset(mem, 1, big);
	free(mem);
	bool ok = probe_connect(other, "127.0.0.1", PROBE_PORT, res, sizeof(res), &ms);
	check(forked == 20 && mem && ok, name,
	      "(host forked %d/20, allocated 128 MB: %s; neighbour answered: %s in %ld ms)",
	      forked, mem ? "yes" : "no", res, ms);
}

static void limits_forkbomb(void)
{
	struct rt_limits lim = { .memory_mb = 256, .pids = 64 };
	struct bomb_ctx b = { .id = "lim-fork", .cmd = "forkbomb 3000" };
	struct rt_info info;
	pthread_t t;
	int procs = -1;
	long refused = -1;

	if (make_sandbox("lim-fork", lim, NULL, NULL) < 0)
		return;
	pthread_create(&t, NULL, bomb_thread, &b);
	usleep(1500 * 1000);
	neighbours_fine("limits/forkbomb_neighbours", "lim-nb");
	query("lim-fork", &info);
	unsigned pids_during = info.pids;
	pthread_join(t, NULL);
	sscanf(b.out, "procs=%d refused=%ld", &procs, &refused);
	check(b.r == 0 && procs > 10 && procs <= 64 && refused > 0 && pids_during <= 64,
	      "limits/forkbomb_contained",
	      "(pids.max 64: %d processes seen inside, %ld forks refused, cgroup pids %u)",
	      procs, refused, pids_during);

	/* The limit refused forks, but the init's crash is its own: a crash
	 * is "signal", never "limit" (rt_test_facts.c: reasons/limit has an
	 * init the limit did end). */
	char out[64];
	probe_cmd("lim-fork", "crash", out, sizeof(out), 1000);
	bool stopped = wait_stopped("lim-fork", &info, 5000);
	check(stopped && info.pids_refused > 0 && info.reason == RT_EXIT_SIGNAL &&
	      info.exit_signal == SIGILL, "limits/forkbomb_reason",
	      "(%llu forks refused, then the init trapped (signal %d): reason %s)",
	      (unsigned long long)info.pids_refused, info.exit_signal,
	      rt_exit_reason_name(info.reason));
	destroy("lim-fork");
}

static void limits_membomb(void)
{
	struct rt_limits lim = { .memory_mb = 64, .pids = 64 };
	struct bomb_ctx b = { .id = "lim-mem", .cmd = "membomb" };
	struct rt_info info;
	pthread_t t;
	int sig = -1;

	if (make_sandbox("lim-mem", lim, NULL, NULL) == 0) {
		pthread_create(&t, NULL, bomb_thread, &b);
		neighbours_fine("limits/membomb_neighbours", "lim-nb");
		pthread_join(t, NULL);
		sscanf(b.out, "signal=%d", &sig);
		query("lim-mem", &info);
		check(b.r == 0 && sig == SIGKILL && info.oom_kills >= 1 &&
		      info.state == RT_STATE_RUNNING, "limits/membomb_child",
		      "(64 MB: the child died by signal %d, oom_kills %llu, init %s, peak %llu MB)",
		      sig, (unsigned long long)info.oom_kills, rt_state_name(info.state),
		      (unsigned long long)(info.memory_peak >> 20));
		destroy("lim-mem");
	}
	if (make_sandbox("lim-oom", lim, NULL, bomb_argv) == 0) {
		bool stopped = wait_stopped("lim-oom", &info, 10000);
		check(stopped && info.reason == RT_EXIT_OOM && info.exit_signal == SIGKILL,
		      "limits/membomb_init_reason", "(init is the bomb: reason %s, signal %d)",
		      rt_exit_reason_name(info.reason), info.exit_signal);
		destroy("lim-oom");
	}
}

static void limits_freeze(void)
{
	char out[128];
	struct rt_info info;
	struct herr err;
	int r = rt_freeze(rt, "lim-nb", true, &err);

	query("lim-nb", &info);
	bool frozen_state = r == 0 && info.state == RT_STATE_FROZEN;
	int silent = probe_cmd("lim-nb", "connect 127.0.0.1 7000 500", out, sizeof(out), 700);
	r = rt_freeze(rt, "lim-nb", false, &err);
	int answered = probe_cmd("lim-nb", "connect 127.0.0.1 7000 500", out, sizeof(out), 3000);
	check(frozen_state && silent == -ETIMEDOUT && r == 0 && answered == 0, "limits/freeze",
	      "(frozen: state %s, no answer %s; thawed: answer %s)",
	      rt_state_name(info.state), silent == -ETIMEDOUT ? "yes" : "NO",
	      answered == 0 ? "yes" : "NO");
}

static void suite_limits(void)
{
	struct rt_limits lim = { .memory_mb = 128, .pids = 64 };

	if (make_sandbox("lim-nb", lim, NULL, NULL) < 0)
		return;
	limits_forkbomb();
	limits_membomb();
	limits_freeze();

	struct rt_info info;
	struct herr err;
	rt_stop(rt, "lim-nb", 500, &err);
	query("lim-nb", &info);
	check(info.state == RT_STATE_STOPPED && info.reason == RT_EXIT_KILLED, "limits/stop_reason",
	      "(rt_stop: state %s, reason %s)", rt_state_name(info.state),
	      rt_exit_reason_name(info.reason));
	destroy("lim-nb");
}

/* ---------- egress ---------- */

static const char *inet_a, *inet_b, *inet_host;
static int inet_port;

static bool egress_env(void)
{
	inet_a = getenv("RT_INET_A");
	inet_b = getenv("RT_INET_B");
	inet_host = getenv("RT_INET_HOST");
	inet_port = getenv("RT_INET_PORT") ? atoi(getenv("RT_INET_PORT")) : 0;
	return inet_a && inet_b && inet_host && inet_port > 0;
}

static void expect_reach(const char *id, const char *name, const char *ip, bool want)
{
	char res[128];
	long ms;
	bool ok = probe_connect(id, ip, inet_port, res, sizeof(res), &ms);

	if (want)
		check(ok, name, "(%s:%d reachable: %s in %ld ms)", ip, inet_port, res, ms);
	else
		check(!ok && ms >= 0 && ms < 1000, name, "(%s:%d refused fast: %s after %ld ms)", ip,
		      inet_port, res, ms);
}

/* True when every connection the outside saw came from peer (and one did). */
static bool log_has_peer(const char *peer, char *seen, size_t len)
{
	const char *path = getenv("RT_INET_LOG");
	char line[128], want[64];
	bool found = false, other = false;
	FILE *f = path ? fopen(path, "re") : NULL;
	size_t off = 0;

	seen[0] = '\0';
	snprintf(want, sizeof(want), "peer %s\n", peer);
	while (f && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "peer ", 5))
			continue;
		found |= strcmp(line, want) == 0;
		other |= strcmp(line, want) != 0;
		if (off + 40 < len)
			off += (size_t)snprintf(seen + off, len - off, "%s", line + 5);
	}
	found &= !other;
	if (f)
		fclose(f);
	return found;
}

static void egress_cut(const char *id)
{
	struct rt_net_policy on = { .allow_internet = true }, off = { .allow_internet = false };
	struct herr err;
	char line[128], out[256];

	rt_set_net_policy(rt, id, &on, &err);
	int fd = rt_dial(rt, id, PROBE_PORT, &err);
	if (fd < 0) {
		check(false, "egress/established_cut", "dial: %s", err.msg);
		return;
	}
	snprintf(line, sizeof(line), "hold %s %d 5000\n", inet_a, inet_port);
	struct timeval tv = { 8, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	ssize_t n = write(fd, line, strlen(line)) < 0 ? -1 : read(fd, out, sizeof(out) - 1);
	out[n > 0 ? n : 0] = '\0';
	bool held = strncmp(out, "held", 4) == 0;
	usleep(300 * 1000);
	long t0 = now_ms();
	int r = rt_set_net_policy(rt, id, &off, &err);
	size_t got = 0;
	while (got < sizeof(out) - 1 && (n = read(fd, out + got, sizeof(out) - 1 - got)) > 0) {
		got += (size_t)n;
		out[got] = '\0';
		if (strstr(out, ".\n"))
			break;
	}
	long waited = now_ms() - t0;
	close(fd);
	out[strcspn(out, "\n")] = '\0';
	check(held && r == 0 && strncmp(out, "cut", 3) == 0 && waited < 2000,
	      "egress/established_cut", "(flow held: %s; after the policy change: '%s' in %ld ms)",
	      held ? "yes" : "no", out, waited);
}

static void suite_egress(void)
{
	if (!egress_env()) {
		check(false, "egress/setup", "RT_INET_* not set by the runner");
		return;
	}
	struct rt_cidr lower, upper;
	struct herr err;
	char cidr[64];
	snprintf(cidr, sizeof(cidr), "%s/25", "198.51.100.0");
	rt_cidr_parse(cidr, &lower, &err);
	rt_cidr_parse("198.51.100.128/25", &upper, &err);
	struct rt_net_policy open = { .allow_internet = true };
	struct rt_net_policy allow_lower = { .allow_internet = false, .allow_out = &lower,
					     .n_allow_out = 1 };
	struct rt_net_policy deny_upper = { .allow_internet = true, .deny_out = &upper,
					    .n_deny_out = 1 };
	struct rt_net_policy closed = { .allow_internet = false };

	if (make_sandbox("egr-1", (struct rt_limits){ 0 }, &open, NULL) < 0)
		return;
	expect_reach("egr-1", "egress/internet_on", inet_a, true);
	char seen[256];
	/* the listener logs after accept(), which may lag the connect */
	bool masq = false;
	for (int i = 0; i < 50 && !masq; i++, usleep(20000))
		masq = log_has_peer(inet_host, seen, sizeof(seen));
	for (char *c = seen; *c; c++)
		*c = *c == '\n' ? ' ' : *c;
	check(masq, "egress/masquerade", "(the outside saw %s; want only the host's %s)", seen,
	      inet_host);

	rt_set_net_policy(rt, "egr-1", &allow_lower, &err);
	expect_reach("egr-1", "egress/allow_cidr_reachable", inet_a, true);
	expect_reach("egr-1", "egress/allow_cidr_others_denied", inet_b, false);

	rt_set_net_policy(rt, "egr-1", &deny_upper, &err);
	expect_reach("egr-1", "egress/deny_cidr_blocked", inet_b, false);
	expect_reach("egr-1", "egress/deny_cidr_others_reachable", inet_a, true);

	rt_set_net_policy(rt, "egr-1", &closed, &err);
	expect_reach("egr-1", "egress/internet_off_a", inet_a, false);
	expect_reach("egr-1", "egress/internet_off_b", inet_b, false);

	int r = rt_set_net_policy(rt, "egr-1", &open, &err);
	check(r == 0, "egress/policy_change", "(rt_set_net_policy: %s)", r ? err.msg : "ok");
	expect_reach("egr-1", "egress/policy_change_next_connection", inet_a, true);
	egress_cut("egr-1");
	destroy("egr-1");

	/* Created with internet off: the policy applies from the first packet. */
	if (make_sandbox("egr-2", (struct rt_limits){ 0 }, &closed, NULL) == 0)
		expect_reach("egr-2", "egress/created_closed", inet_a, false);
	destroy("egr-2");
}

/* ---------- re-adoption ---------- */

static int start_runtime(void)
{
	struct herr err;
	int r = rt_init(&cfg, &rt, &err);

	if (r < 0)
		check(false, "rt_init", "%s", err.msg);
	return r;
}

static void suite_readopt(void)
{
	struct rt_info info;
	struct herr err;

	if (make_sandbox("adopt-1", (struct rt_limits){ .memory_mb = 64 }, NULL, NULL) < 0)
		return;
	query("adopt-1", &info);
	pid_t pid = info.pid;
	/* hutchd "dies": the handle goes, the sandbox must not. */
	rt_shutdown(rt);
	rt = NULL;
	check(kill(pid, 0) == 0, "readopt/survives_shutdown", "(init pid %d alive)", pid);
	if (start_runtime() < 0)
		return;
	int r = query("adopt-1", &info);
	check(r == 0 && info.state == RT_STATE_RUNNING && info.pid == pid, "readopt/found",
	      "(state %s, pid %d)", r == 0 ? rt_state_name(info.state) : "unknown", info.pid);
	char res[128];
	long ms;
	check(probe_connect("adopt-1", "127.0.0.1", PROBE_PORT, res, sizeof(res), &ms),
	      "readopt/dial", "(probe answers through rt_dial: %s)", res);
	r = rt_destroy(rt, "adopt-1", &err);
	check(r == 0 && kill(pid, 0) < 0, "readopt/destroy", "(rt_destroy: %s; init %s)",
	      r ? err.msg : "ok", kill(pid, 0) < 0 ? "gone" : "STILL RUNNING");
	char path[1024];
	snprintf(path, sizeof(path), "%s/adopt-1", run_dir);
	struct stat st;
	bool run_gone = stat(path, &st) < 0;
	snprintf(path, sizeof(path), "/sys/fs/cgroup/unified/%s/adopt-1", cfg.cgroup_name);
	bool cg_gone = stat(path, &st) < 0;
	check(run_gone && cg_gone, "readopt/clean", "(run dir entry %s, cgroup %s)",
	      run_gone ? "gone" : "LEFT", cg_gone ? "gone" : "LEFT");
}

/* ---------- leaks ---------- */

/* Lines of a host picture that belong to the prepared pools: pooled cgroups,
 * pooled disk files and their loop devices, pooled keepers (our children). */
static int pool_lines(const char *pic, char *show, size_t len)
{
	int n = 0;
	size_t off = 0;

	for (const char *p = pic; *p;) {
		size_t m = strcspn(p, "\n");
		char line[512];
		snprintf(line, sizeof(line), "%.*s", (int)(m < 511 ? m : 511), p);
		/* "process sh" is the picture's own shell (popen), always there */
		if (strstr(line, "/.pool-") || strstr(line, "/data/pool/") ||
		    strncmp(line, "loop ", 5) == 0 ||
		    (strncmp(line, "process ", 8) == 0 && strcmp(line, "process sh") != 0)) {
			n++;
			if (show && off < len)
				off += (size_t)snprintf(show + off, len - off, "\n  %s", line);
		}
		p += m + (p[m] == '\n');
	}
	return n;
}

/* A pool is not a leak, but rt_shutdown must take all of it away. */
static void leak_pools_gone(void)
{
	static char with[65536], without[65536];

	if (rt_snapshot(tmp_dir, with, sizeof(with)) < 0)
		return;
	rt_shutdown(rt);
	rt = NULL;
	usleep(200 * 1000);
	if (rt_snapshot(tmp_dir, without, sizeof(without)) < 0)
		return;
	char show[1024] = "";
	int live = pool_lines(with, NULL, 0);
	int left = pool_lines(without, show, sizeof(show));
	check(live > 0 && left == 0, "leak/pools_gone_after_shutdown",
	      "(%d pool lines while running, %d after rt_shutdown)%s", live, left, show);
	start_runtime();
}

static void suite_leak(void)
{
	int cycles = getenv("RT_LEAK_CYCLES") ? atoi(getenv("RT_LEAK_CYCLES")) :
		     quick() ? 50 : 500;
	static char before[65536], after[65536];
	char diff[4096];
	struct herr err;

	/* the pool must be full before the picture is taken */
	usleep(500 * 1000);
	if (rt_snapshot(tmp_dir, before, sizeof(before)) < 0) {
		check(false, "leak/snapshot", "cannot run the snapshot command");
		return;
	}
	/* Positive control: one sandbox left running must show in the picture. */
	if (make_sandbox("leak-control", (struct rt_limits){ .memory_mb = 64 }, NULL, NULL) == 0) {
		rt_snapshot(tmp_dir, after, sizeof(after));
		rt_snapshot_diff(before, after, diff, sizeof(diff));
		int lines = 0;
		for (const char *c = diff; *c; c++)
			lines += *c == '\n';
		check(strstr(diff, "cgroup ") && strstr(diff, "process ") && strstr(diff, "file "),
		      "leak/detector_control", "(a live sandbox shows as %d differing lines)",
		      lines);
		destroy("leak-control");
	}
	long t0 = now_ms();
	int failed = 0;
	for (int i = 0; i < cycles && failed < 3; i++) {
		char id[32];
		snprintf(id, sizeof(id), "leak-%d", i);
		if (make_sandbox(id, (struct rt_limits){ .memory_mb = 64, .pids = 32 }, NULL,
				 NULL) < 0)
			failed++;
		if (rt_destroy(rt, id, &err) < 0)
			failed++;
	}
	long spent = now_ms() - t0;
	bool same = false;
	for (int attempt = 0; attempt < 20 && !same; attempt++) {
		usleep(500 * 1000);
		if (rt_snapshot(tmp_dir, after, sizeof(after)) < 0)
			break;
		same = strcmp(before, after) == 0;
	}
	rt_snapshot_diff(before, after, diff, sizeof(diff));
	check(!failed && same, "leak/cycles",
	      "(%d create/destroy cycles in %ld ms; host picture %s%s)", cycles, spent,
	      same ? "identical" : "DIFFERS:\n", same ? "" : diff);
	leak_pools_gone();
}

/* ---------- main ---------- */

static int make_dirs(void)
{
	const char *t = getenv("RT_TMP");

	if (!t) {
		fprintf(stderr, "rt-test: RT_TMP must name a scratch folder\n");
		return -1;
	}
	snprintf(tmp_dir, sizeof(tmp_dir), "%s", t);
	snprintf(rootfs, sizeof(rootfs), "%s/rootfs", tmp_dir);
	snprintf(agent_dir, sizeof(agent_dir), "%s/agent", tmp_dir);
	snprintf(data_dir, sizeof(data_dir), "%s/data", tmp_dir);
	snprintf(run_dir, sizeof(run_dir), "%s/run", tmp_dir);
	return rt_test_tree(tmp_dir, probe_path);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: rt-test PROBE SUITE...\n");
		return 2;
	}
	probe_path = argv[1];
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	if (make_dirs() < 0) {
		fprintf(stderr, "rt-test: preparing %s: %s\n", tmp_dir, strerror(errno));
		return 1;
	}
	rt_test_config(&cfg, data_dir, run_dir);
	if (start_runtime() < 0)
		return 1;

	for (int i = 2; i < argc && rt; i++) {
		if (strcmp(argv[i], "escape") == 0) {
			suite_escape();
			suite_facts();
		} else if (strcmp(argv[i], "limits") == 0) {
			suite_cpu(); /* first: before the bombs warm the host */
			suite_limits();
			suite_reasons();
		} else if (strcmp(argv[i], "facts") == 0)
			suite_facts();
		else if (strcmp(argv[i], "cpu") == 0)
			suite_cpu();
		else if (strcmp(argv[i], "reasons") == 0)
			suite_reasons();
		else if (strcmp(argv[i], "egress") == 0) {
			suite_egress();
			suite_egress_ranges();
			suite_egress_cap();
		}
		else if (strcmp(argv[i], "readopt") == 0)
			suite_readopt();
		else if (strcmp(argv[i], "leak") == 0)
			suite_leak();
		else
			check(false, argv[i], "unknown suite");
	}
	if (rt)
		rt_shutdown(rt);
	printf("rt-test: %d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}
