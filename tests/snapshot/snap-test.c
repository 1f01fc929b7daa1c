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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rt.h"
#include "rt_checkpoint.h"

static int failures;
/* SNT_NOPEER=1: no established TCP connection in the sandbox (see
 * docs/snapshot.md: restoring one needs TCP_REPAIR in the runtime's netns). */
static int no_peer;

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
	unsigned long counter, pongs;
	int peer_port;
	char mem[8], peer[8], marker[64];
};

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
	if (sscanf(buf, "counter=%lu mem=%7s peer_port=%d pongs=%lu peer=%7s marker=%63s",
		   &st->counter, st->mem, &st->peer_port, &st->pongs, st->peer,
		   st->marker) != 6)
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
		    (no_peer || (!strcmp(st->peer, "up") && st->pongs > 2)))
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
	a->result = rt_restore(a->rt, a->id, a->spec, NULL, NULL, &err);
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
	a->result = rt_checkpoint(a->rt, a->id, NULL, NULL, &err);
	snprintf(a->msg, sizeof(a->msg), "%s", err.msg);
	return NULL;
}

/* Finds a running `criu dump` child of ours. */
static pid_t find_criu(void)
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
		if (n && strstr(buf, "criu") && !strcmp(buf + strlen(buf) + 1, "dump")) {
			snprintf(path, sizeof(path), "/proc/%d/stat", pid);
			f = fopen(path, "re");
			int ppid = 0;
			if (f && fscanf(f, "%*d %*s %*c %d", &ppid) == 1 && ppid == getpid())
				found = pid;
			if (f)
				fclose(f);
		}
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

	for (int cycle = 1; cycle <= 5; cycle++) {
		herr_clear(&err);
		if (app_ready(rt, id, &a) < 0) {
			check(0, "app ready", "cycle %d: the app does not answer", cycle);
			return;
		}
		snprintf(name, sizeof(name), "cycle %d: pause", cycle);
		int r = rt_checkpoint(rt, id, NULL, &st, &err);
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
		r = rt_restore(rt, id, spec, NULL, &st, &err);
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
		      (no_peer || !strcmp(b.peer, "up")), name, "before: counter=%lu port=%d; after (%d): %s",
		      a.counter, a.peer_port, r, raw);
		sleep_ms(500);
		r = app_query(rt, id, &a, raw, sizeof(raw));
		snprintf(name, sizeof(name), "cycle %d: established connection carries data",
			 cycle);
		check(r == 0 && (no_peer || a.pongs > b.pongs) && a.peer_port == b.peer_port, name,
		      "pongs %lu then %s", b.pongs, raw);
		rt_query(rt, id, &info, &err);
		snprintf(name, sizeof(name), "cycle %d: runtime sees it running", cycle);
		check(info.state == RT_STATE_RUNNING && info.pid > 0, name, "state=%s pid=%d",
		      rt_state_name(info.state), info.pid);
	}
}

static void test_double_resume(struct rt *rt, const char *id, const struct rt_restore_spec *spec)
{
	struct app_state a;
	struct herr err;
	pthread_t t1, t2;

	if (app_ready(rt, id, &a) < 0 || rt_checkpoint(rt, id, NULL, NULL, &err) < 0) {
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
	for (int i = 0; i < 2000 && !criu; i++) {
		criu = find_criu();
		if (!criu)
			sleep_ms(1);
	}
	if (criu) {
		sleep_ms(60); /* inside the dump: tasks frozen, images being written */
		kill(criu, SIGKILL);
	}
	pthread_join(t, NULL);
	check(criu && p.result < 0, "kill -9 of criu mid-dump: pause fails",
	      "criu=%d result=%d %s", criu, p.result, p.msg);
	printf("# pause error after kill: %s\n", p.msg);
	sleep_ms(400);
	int r = app_query(rt, id, &b, raw, sizeof(raw));
	check(r == 0 && !strcmp(b.mem, "OK") && b.peer_port == a.peer_port &&
	      (no_peer || !strcmp(b.peer, "up")), "kill -9 of criu mid-dump: sandbox still running",
	      "(%d) %s", r, raw);
	sleep_ms(500);
	r = app_query(rt, id, &a, raw, sizeof(raw));
	check(r == 0 && (no_peer || a.pongs > b.pongs), "kill -9 of criu mid-dump: connection still works",
	      "pongs %lu then (%d) %s", b.pongs, r, raw);
	check(!rt_checkpoint_exists(rt, id), "kill -9 of criu mid-dump: no images left",
	      "a checkpoint exists");
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

	if (rt_criu_check(NULL, version, sizeof(version), &err) < 0) {
		check(0, "criu usable", "%s", err.msg);
		return 1;
	}
	check(1, "criu usable", "%s", version);
	printf("# criu %s\n", version);
	snprintf(data, sizeof(data), "%s/data", tmp);
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
		test_kill_criu(rt, spec.id);
		test_double_resume(rt, spec.id, &rspec);
		rt_checkpoint_remove(rt, spec.id, NULL);
		r = rt_destroy(rt, spec.id, &err);
		check(r == 0, "destroy", "%s", err.msg);
	}
	rt_shutdown(rt);
	return failures ? 1 : 0;
}
