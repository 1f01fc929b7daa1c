/*
 * snap-test: pause/resume of real runtime sandboxes, driven through rt.h and
 * rt_checkpoint.h as hutchd would. Run by tests/snapshot/run as root; prints
 * "ok - NAME" or "not ok - NAME: why" per check.
 *
 *   snap-test TMPDIR SNAP_APP [MB]
 *
 * The sandbox root is an empty folder tree; snap-app (static) comes in as
 * the agent bundle and is the init. Its runtime uses its own cgroup name,
 * veth prefix, address range and id range, so it never meets another one.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rt.h"
#include "rt_checkpoint.h"

static int failures;
/* SNT_NOPEER=1: no established TCP connection in the sandbox (the paths
 * without TCP repair mode and network lock). */
static int no_peer;
/* The CRIU under test: $HUTCH_CRIU (scripts/test names the one
 * scripts/setup-criu made), else the runtime's default. */
static struct rt_ckpt_opts ckpt;

static void check(int ok, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void check(int ok, const char *name, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		printf("ok - %s\n", name);
	} else {
		failures++;
		printf("not ok - %s: ", name);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		printf("\n");
	}
	fflush(stdout);
}

struct app_state {
	unsigned long counter, pongs, eth_pongs;
	int peer_port, eth_port;
	char mem[8], peer[8], marker[64], eth[8];
};

/* The data dir of the runtime under test (images live below it). */
static char data_dir[4096];

/* Asks the app for its state through a socket made in the sandbox netns.
 * The connection is closed before any pause (CRIU cannot take a socket
 * whose peer lives outside the sandbox). */
static int app_query(struct rt *rt, const char *id, struct app_state *st, char *raw,
		     size_t rawlen)
{
	struct herr err;
	int fd = rt_dial(rt, id, 7000, &err);
	char buf[512];
	size_t got = 0;

	if (fd < 0)
		return fd;
	if (write(fd, "state\n", 6) != 6) {
		close(fd);
		return -EIO;
	}
	for (;;) {
		ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = '\0';
	snprintf(raw, rawlen, "%s", buf);
	if (sscanf(buf, "counter=%lu mem=%7s peer_port=%d pongs=%lu peer=%7s marker=%63s "
		   "eth_port=%d eth_pongs=%lu eth=%7s",
		   &st->counter, st->mem, &st->peer_port, &st->pongs, st->peer,
		   st->marker, &st->eth_port, &st->eth_pongs, st->eth) != 9)
		return -EPROTO;
	return 0;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Waits until the app answers with a live peer connection. */
static int app_ready(struct rt *rt, const char *id, struct app_state *st)
{
	char raw[512];

	for (int i = 0; i < 100; i++) {
		if (app_query(rt, id, st, raw, sizeof(raw)) == 0 &&
		    (no_peer || (!strcmp(st->peer, "up") && st->pongs > 2 &&
				 !strcmp(st->eth, "up") && st->eth_pongs > 2)))
			return 0;
		sleep_ms(100);
	}
	return -1;
}

static int make_tree(const char *tmp, const char *app)
{
	static const char *const dirs[] = { "rootfs", "rootfs/etc", "rootfs/proc",
		"rootfs/sys", "rootfs/dev", "rootfs/tmp", "rootfs/data", "agent", "data",
		"run" };
	char path[4096], cmd[8400];

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", tmp, dirs[i]);
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			return -1;
	}
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s/agent/snap-app'", app, tmp);
	return system(cmd) == 0 ? 0 : -1;
}

struct resume_arg {
	struct rt *rt;
	const char *id;
	const struct rt_restore_spec *spec;
	int result;
	char msg[HERR_MSG_MAX];
};

static void *resume_thread(void *p)
{
	struct resume_arg *a = p;
	struct herr err;

	herr_clear(&err);
	a->result = rt_restore(a->rt, a->id, a->spec, &ckpt, NULL, &err);
	snprintf(a->msg, sizeof(a->msg), "%s", err.msg);
	return NULL;
}

struct pause_arg {
	struct rt *rt;
	const char *id;
	int result;
	char msg[HERR_MSG_MAX];
};

static void *pause_thread(void *p)
{
	struct pause_arg *a = p;
	struct herr err;

	herr_clear(&err);
	a->result = rt_checkpoint(a->rt, a->id, &ckpt, NULL, &err);
	snprintf(a->msg, sizeof(a->msg), "%s", err.msg);
	return NULL;
}

/* Finds a running `criu <verb>` whose images are under our data dir. */
static pid_t find_criu(const char *verb)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = 0;

	while (d && (e = readdir(d)) && !found) {
		char path[300], buf[4096];
		pid_t pid = (pid_t)atoi(e->d_name);
		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
		FILE *f = fopen(path, "re");
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
		if (f)
			fclose(f);
		buf[n] = '\0';
		if (!n || !strstr(buf, "criu") || strcmp(buf + strlen(buf) + 1, verb))
			continue;
		/* The arguments are NUL-separated: look for our images dir. */
		for (size_t off = 0; off < n; off += strlen(buf + off) + 1)
			if (!strncmp(buf + off, "--images-dir=", 13) &&
			    !strncmp(buf + off + 13, data_dir, strlen(data_dir)))
				found = pid;
	}
	if (d)
		closedir(d);
	return found;
}

static void test_cycles(struct rt *rt, const char *id, const struct rt_restore_spec *spec,
			uint64_t mb, const char *marker)
{
	struct app_state a, b;
	struct rt_info info;
	struct rt_ckpt_stats st;
	struct herr err;
	char raw[512], name[128];

	int cycles = getenv("SNT_CYCLES") ? atoi(getenv("SNT_CYCLES")) : 10;

	for (int cycle = 1; cycle <= cycles; cycle++) {
		herr_clear(&err);
		if (app_ready(rt, id, &a) < 0) {
			check(0, "app ready", "cycle %d: the app does not answer", cycle);
			return;
		}
		snprintf(name, sizeof(name), "cycle %d: pause", cycle);
		int r = rt_checkpoint(rt, id, &ckpt, &st, &err);
		check(r == 0, name, "%s", err.msg);
		if (r < 0)
			return;
		printf("# cycle %d pause criu=%llu ms sync=%llu ms total=%llu ms image=%llu MB\n",
		       cycle, (unsigned long long)st.criu_ms, (unsigned long long)st.sync_ms,
		       (unsigned long long)st.total_ms,
		       (unsigned long long)(st.image_bytes >> 20));

		rt_query(rt, id, &info, &err);
		snprintf(name, sizeof(name), "cycle %d: processes gone, RAM freed", cycle);
		check(info.state == RT_STATE_STOPPED && info.pids == 0 &&
		      info.memory_bytes < (mb << 20) / 4 && rt_checkpoint_exists(rt, id), name,
		      "state=%s pids=%u memory=%llu exists=%d", rt_state_name(info.state),
		      info.pids, (unsigned long long)info.memory_bytes,
		      rt_checkpoint_exists(rt, id));
		snprintf(name, sizeof(name), "cycle %d: no answer while paused", cycle);
		check(app_query(rt, id, &b, raw, sizeof(raw)) < 0, name, "it answered: %s", raw);
		sleep_ms(200);

		snprintf(name, sizeof(name), "cycle %d: resume", cycle);
		r = rt_restore(rt, id, spec, &ckpt, &st, &err);
		check(r == 0, name, "%s", err.msg);
		if (r < 0)
			return;
		printf("# cycle %d resume criu=%llu ms total=%llu ms\n", cycle,
		       (unsigned long long)st.criu_ms, (unsigned long long)st.total_ms);
		r = app_query(rt, id, &b, raw, sizeof(raw));
		snprintf(name, sizeof(name), "cycle %d: memory, file, counter, connection kept",
			 cycle);
		check(r == 0 && !strcmp(b.mem, "OK") && !strcmp(b.marker, marker) &&
		      b.counter >= a.counter && b.peer_port == a.peer_port &&
		      b.eth_port == a.eth_port &&
		      (no_peer || (!strcmp(b.peer, "up") && !strcmp(b.eth, "up"))), name,
		      "before: counter=%lu port=%d eth_port=%d; after (%d): %s",
		      a.counter, a.peer_port, a.eth_port, r, raw);
		sleep_ms(500);
		r = app_query(rt, id, &a, raw, sizeof(raw));
		snprintf(name, sizeof(name), "cycle %d: established connection carries data",
			 cycle);
		check(r == 0 && (no_peer || (a.pongs > b.pongs && a.eth_pongs > b.eth_pongs)) &&
		      a.peer_port == b.peer_port && a.eth_port == b.eth_port, name,
		      "pongs %lu/%lu then %s", b.pongs, b.eth_pongs, raw);
		rt_query(rt, id, &info, &err);
		snprintf(name, sizeof(name), "cycle %d: runtime sees it running", cycle);
		check(info.state == RT_STATE_RUNNING && info.pid > 0, name, "state=%s pid=%d",
		      rt_state_name(info.state), info.pid);
	}
}

/* True when init.log has the text within 2 s: the init's output pipe was
 * handed over to the new keeper on resume. */
static bool init_log_has(const char *id, const char *text)
{
	char path[4200], buf[8192];

	snprintf(path, sizeof(path), "%s/sandboxes/%s/init.log", data_dir, id);
	for (int i = 0; i < 20; i++) {
		FILE *f = fopen(path, "re");
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
		if (f)
			fclose(f);
		buf[n] = '\0';
		if (strstr(buf, text))
			return true;
		sleep_ms(100);
	}
	return false;
}

static void test_init_output(struct rt *rt, const char *id)
{
	struct herr err;
	char line[64], ans[16] = "";

	snprintf(line, sizeof(line), "say after-resume-%ld\n", (long)getpid());
	int fd = rt_dial(rt, id, 7000, &err);
	ssize_t n = -1;
	if (fd >= 0 && write(fd, line, strlen(line)) == (ssize_t)strlen(line))
		n = read(fd, ans, sizeof(ans) - 1);
	if (fd >= 0)
		close(fd);
	ans[n > 0 ? n : 0] = '\0';
	line[strlen(line) - 1] = '\0';
	check(!strncmp(ans, "said", 4) && init_log_has(id, line + 4),
	      "init output reaches init.log after resume", "answer '%s', '%s' not in init.log",
	      ans, line + 4);
}

static void test_double_resume(struct rt *rt, const char *id, const struct rt_restore_spec *spec)
{
	struct app_state a;
	struct herr err;
	pthread_t t1, t2;

	if (app_ready(rt, id, &a) < 0 || rt_checkpoint(rt, id, &ckpt, NULL, &err) < 0) {
		check(0, "double resume", "could not pause: %s", err.msg);
		return;
	}
	struct resume_arg r1 = { rt, id, spec, 0, "" }, r2 = r1;
	pthread_create(&t1, NULL, resume_thread, &r1);
	pthread_create(&t2, NULL, resume_thread, &r2);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	check((r1.result == 0) != (r2.result == 0), "double resume: exactly one succeeds",
	      "%d (%s) and %d (%s)", r1.result, r1.msg, r2.result, r2.msg);
	check(app_ready(rt, id, &a) == 0 && !strcmp(a.mem, "OK"), "double resume: app runs",
	      "no answer");
}

static bool file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/*
 * kill -9 of CRIU once every task is dumped (pstree.img is written after
 * the last one): the sockets are in repair mode and the connections locked,
 * the parasite code is out of the tasks. The runtime must undo both. (A
 * kill while CRIU's code is inside a task can kill that task: see
 * docs/snapshot.md.)
 */
static void test_kill_criu(struct rt *rt, const char *id)
{
	struct app_state a, b;
	char raw[512];
	pthread_t t;
	pid_t criu = 0;

	if (app_ready(rt, id, &a) < 0) {
		check(0, "kill -9 of criu mid-dump", "app not ready");
		return;
	}
	struct pause_arg p = { rt, id, 0, "" };
	pthread_create(&t, NULL, pause_thread, &p);
	char pstree[4200];
	snprintf(pstree, sizeof(pstree), "%s/sandboxes/%s/checkpoint.tmp/pstree.img", data_dir,
		 id);
	for (int i = 0; i < 2000 && !criu; i++) {
		criu = find_criu("dump");
		if (!criu)
			sleep_ms(1);
	}
	for (int i = 0; criu && i < 20000 && !file_exists(pstree); i++)
		usleep(100);
	if (criu)
		kill(criu, SIGKILL);
	pthread_join(t, NULL);
	check(criu && p.result < 0, "kill -9 of criu mid-dump: pause fails",
	      "criu=%d result=%d %s", criu, p.result, p.msg);
	printf("# pause error after kill: %s\n", p.msg);
	sleep_ms(400);
	int r = app_query(rt, id, &b, raw, sizeof(raw));
	check(r == 0 && !strcmp(b.mem, "OK") && b.peer_port == a.peer_port &&
	      (no_peer || !strcmp(b.peer, "up")), "kill -9 of criu mid-dump: sandbox still running",
	      "(%d) %s", r, raw);
	/* CRIU's lock (its nftables table in the sandbox netns) must be gone,
	 * or no packet of the sandbox's connections would pass again. */
	struct rt_info info;
	struct herr err;
	char cmd[256], tables[512] = "";
	rt_query(rt, id, &info, &err);
	snprintf(cmd, sizeof(cmd), "nsenter --net=/proc/%d/ns/net nft list tables 2>&1",
		 info.pid);
	FILE *nft = info.pid > 0 ? popen(cmd, "r") : NULL;
	size_t n = nft ? fread(tables, 1, sizeof(tables) - 1, nft) : 0;
	tables[n] = '\0';
	if (nft)
		pclose(nft);
	check(nft && !strstr(tables, "CRIU"), "kill -9 of criu mid-dump: network lock gone",
	      "pid %d: %s", info.pid, tables);
	/* The connections: a peer blocked in read() when CRIU died had its
	 * call restarted while the socket was still in repair mode and got
	 * EPERM (see docs/snapshot.md); the rest must carry data again. */
	sleep_ms(500);
	r = app_query(rt, id, &a, raw, sizeof(raw));
	printf("# after the killed dump: pongs %lu/%lu then %lu/%lu\n", b.pongs, b.eth_pongs,
	       a.pongs, a.eth_pongs);
	check(!rt_checkpoint_exists(rt, id), "kill -9 of criu mid-dump: no images left",
	      "a checkpoint exists");
}

/* kill -9 of CRIU mid-restore: the resume fails, the sandbox stays paused
 * and a second resume brings it back intact. */
static void test_kill_restore(struct rt *rt, const char *id, const struct rt_restore_spec *spec)
{
	struct app_state a, b;
	struct herr err;
	char raw[512];
	pthread_t t;
	pid_t criu = 0;

	herr_clear(&err);
	if (app_ready(rt, id, &a) < 0 || rt_checkpoint(rt, id, &ckpt, NULL, &err) < 0) {
		check(0, "kill -9 of criu mid-restore", "could not pause: %s", err.msg);
		return;
	}
	struct resume_arg r1 = { rt, id, spec, 0, "" };
	pthread_create(&t, NULL, resume_thread, &r1);
	for (int i = 0; i < 20000 && !criu; i++) {
		criu = find_criu("restore");
		if (!criu)
			usleep(100);
	}
	if (criu) {
		sleep_ms(40); /* inside the restore: tasks being made */
		kill(criu, SIGKILL);
	}
	pthread_join(t, NULL);
	printf("# resume error after kill: %s\n", r1.msg);
	if (r1.result == 0) {
		/* CRIU was done before the kill came: nothing to judge. */
		check(app_ready(rt, id, &b) == 0, "kill -9 of criu mid-restore: came too late, "
		      "sandbox runs", "no answer");
		return;
	}
	check(criu && rt_checkpoint_exists(rt, id) && app_query(rt, id, &b, raw, sizeof(raw)) < 0,
	      "kill -9 of criu mid-restore: still paused", "criu=%d exists=%d", criu,
	      rt_checkpoint_exists(rt, id));
	int r = rt_restore(rt, id, spec, &ckpt, NULL, &err);
	check(r == 0, "kill -9 of criu mid-restore: resumes after", "%s", err.msg);
	r = app_ready(rt, id, &b);
	check(r == 0 && !strcmp(b.mem, "OK") && b.peer_port == a.peer_port &&
	      b.eth_port == a.eth_port, "kill -9 of criu mid-restore: state intact",
	      "(%d) port %d then %d", r, a.peer_port, b.peer_port);
}

/* A paused sandbox outlives its runtime: a new one (a restarted hutchd)
 * re-adopts it and resumes it; the netns was pinned under the run dir. */
static struct rt *test_restart(struct rt *rt, const struct rt_config *cfg, const char *id,
			       const struct rt_restore_spec *spec)
{
	struct app_state a, b;
	struct herr err;

	herr_clear(&err);
	if (app_ready(rt, id, &a) < 0 || rt_checkpoint(rt, id, &ckpt, NULL, &err) < 0) {
		check(0, "resume after a runtime restart", "could not pause: %s", err.msg);
		return rt;
	}
	rt_shutdown(rt);
	rt = NULL;
	if (rt_init(cfg, &rt, &err) < 0) {
		check(0, "resume after a runtime restart", "rt_init: %s", err.msg);
		return NULL;
	}
	check(rt_checkpoint_exists(rt, id), "restart: still paused", "no checkpoint");
	int r = rt_restore(rt, id, spec, &ckpt, NULL, &err);
	check(r == 0, "restart: resume", "%s", err.msg);
	r = app_ready(rt, id, &b);
	check(r == 0 && !strcmp(b.mem, "OK") && b.peer_port == a.peer_port &&
	      b.eth_port == a.eth_port && b.counter >= a.counter,
	      "restart: memory and connections intact", "(%d) port %d then %d", r,
	      a.peer_port, b.peer_port);
	return rt;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: snap-test TMPDIR SNAP_APP [MB]\n");
		return 2;
	}
	const char *tmp = argv[1];
	uint64_t mb = argc > 3 ? strtoull(argv[3], NULL, 10) : 64;
	char data[4096], run[4096], rootfs[4096], agent[4096], mbs[32], marker[64];
	struct rt_config cfg = {
		.data_dir = data, .run_dir = run, .cgroup_name = "hutch-snt",
		.veth_prefix = "hsn", .net_cidr = "10.232.0.0/16", .pool_size = 0,
		.max_sandboxes = 8, .uid_base = 0x38000000u, .egress_conn_max = 64,
		.nameservers = "198.51.100.53",
	};
	struct herr err;
	struct rt *rt;
	char version[32];

	ckpt.criu = getenv("HUTCH_CRIU");
	if (rt_criu_check(ckpt.criu, version, sizeof(version), &err) < 0) {
		check(0, "criu usable", "%s", err.msg);
		return 1;
	}
	check(1, "criu usable", "%s", version);
	printf("# criu %s\n", version);
	snprintf(data, sizeof(data), "%s/data", tmp);
	snprintf(data_dir, sizeof(data_dir), "%s", data);
	snprintf(run, sizeof(run), "%s/run", tmp);
	snprintf(rootfs, sizeof(rootfs), "%s/rootfs", tmp);
	snprintf(agent, sizeof(agent), "%s/agent", tmp);
	if (make_tree(tmp, argv[2]) < 0 || rt_init(&cfg, &rt, &err) < 0) {
		check(0, "runtime up", "%s", err.msg);
		return 1;
	}
	snprintf(mbs, sizeof(mbs), "%llu", (unsigned long long)mb);
	snprintf(marker, sizeof(marker), "m%ld", (long)getpid());
	const char *layers[] = { rootfs };
	no_peer = getenv("SNT_NOPEER") && !strcmp(getenv("SNT_NOPEER"), "1");
	const char *args[] = { RT_AGENT_MOUNT "/snap-app", mbs, marker,
			       no_peer ? "nopeer" : NULL, NULL };
	struct rt_spec spec = {
		.id = "snt1", .layers = layers, .n_layers = 1, .agent_dir = agent,
		.argv = args, .limits = { .memory_mb = mb * 4 + 256, .pids = 64, .disk_mb = 256 },
		.net = { .allow_internet = false },
	};
	struct rt_restore_spec rspec = { .layers = layers, .n_layers = 1, .agent_dir = agent };
	int r = rt_create(rt, &spec, &err);
	check(r == 0, "create sandbox", "%s", err.msg);
	if (r == 0) {
		test_cycles(rt, spec.id, &rspec, mb, marker);
		test_init_output(rt, spec.id);
		test_double_resume(rt, spec.id, &rspec);
		test_kill_restore(rt, spec.id, &rspec);
		rt = test_restart(rt, &cfg, spec.id, &rspec);
		if (!rt)
			return 1;
		/* Last: a peer blocked in read() may not survive it. */
		test_kill_criu(rt, spec.id);
		rt_checkpoint_remove(rt, spec.id, NULL);
		r = rt_destroy(rt, spec.id, &err);
		check(r == 0, "destroy", "%s", err.msg);
	}
	rt_shutdown(rt);
	return failures ? 1 : 0;
}
