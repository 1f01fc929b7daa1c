/*
 * Suites of rt-test kept apart from rt-test.c:
 *
 *   facts    what a sandbox's init sees of itself, asserted from inside
 *            (rt-probe "facts") against the host's view: its host uid and
 *            id range, capabilities, no_new_privs, seccomp, /dev, devpts,
 *            /dev/shm, /etc files, namespaces (ipc among them, with System
 *            V shared memory as the proof), and its open descriptors. Each
 *            is read the same way on the host (the probe run there) to
 *            show the reading can tell the difference.
 *   cpu      cpuCount becomes the CFS quota, and a 1-CPU sandbox running
 *            two busy threads gets about one CPU (from the cgroup's own
 *            usage), next to an unlimited one that gets more.
 *   reasons  how an init's end is reported (rt_info.reason and the exit
 *            callback hutchd uses): a limit that made it give up, its own
 *            crash, a plain exit, a SIGKILL from the host.
 */
#include "rt_test_facts.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rt_test.h"
#include "rt_test_env.h"

/* docs/runtime.md, "Capabilities": Docker's 14, as a mask. */
#define DOCUMENTED_CAPS 0xa80425fbull

/* ---------- reading answers ---------- */

/* The rest of the first line that starts with "key ", or NULL. */
static const char *fact(const char *text, const char *key, char *out, size_t len)
{
	size_t kl = strlen(key);

	for (const char *p = text; p && *p;) {
		size_t n = strcspn(p, "\n");
		if (n > kl && strncmp(p, key, kl) == 0 && p[kl] == ' ') {
			snprintf(out, len, "%.*s", (int)(n - kl - 1), p + kl + 1);
			return out;
		}
		p += n + (p[n] == '\n');
	}
	return NULL;
}

static unsigned long long fact_hex(const char *text, const char *key)
{
	char v[64];

	return fact(text, key, v, sizeof(v)) ? strtoull(v, NULL, 16) : ~0ull;
}

/* Calls fn for every line starting with prefix (the prefix cut off). */
static void each_line(const char *text, const char *prefix,
		      void (*fn)(void *arg, const char *rest), void *arg)
{
	size_t pl = strlen(prefix);
	char line[512];

	for (const char *p = text; p && *p;) {
		size_t n = strcspn(p, "\n");
		if (n > pl && n < sizeof(line) && strncmp(p, prefix, pl) == 0) {
			snprintf(line, sizeof(line), "%.*s", (int)(n - pl), p + pl);
			fn(arg, line);
		}
		p += n + (p[n] == '\n');
	}
}

/* The probe as the host sees things: its copy in the agent folder, run as
 * we are; extra_fd, when not -1, is left open across the exec (the control
 * of the descriptor check). The answer is malloc'd; NULL on failure. */
static char *host_facts(int extra_fd)
{
	const char *tmp = getenv("RT_TMP");
	char probe[600];
	size_t cap = 1 << 20, got = 0;
	char *out = malloc(cap);
	int p[2];

	snprintf(probe, sizeof(probe), "%s/agent/rt-probe", tmp ? tmp : ".");
	if (!out || pipe2(p, O_CLOEXEC) < 0) {
		free(out);
		return NULL;
	}
	pid_t pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		if (extra_fd >= 0)
			fcntl(extra_fd, F_SETFD, 0);
		execl(probe, probe, "facts", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	for (ssize_t n; got + 1 < cap && (n = read(p[0], out + got, cap - 1 - got)) > 0;)
		got += (size_t)n;
	out[got] = '\0';
	close(p[0]);
	int st = 0;
	waitpid(pid, &st, 0);
	if (pid < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		free(out);
		return NULL;
	}
	return out;
}

/* ---------- facts ---------- */

static void facts_ids(const char *id, const char *a, const char *b, const char *host)
{
	unsigned long in = 1, out = 0, count = 0, in_b = 1, out_b = 0, count_b = 0;
	char v[128] = "", vb[128] = "", gid[128] = "", hv[128] = "";
	struct rt_info info = { 0 };
	struct herr err;

	fact(a, "uid_map", v, sizeof(v));
	fact(a, "gid_map", gid, sizeof(gid));
	fact(b, "uid_map", vb, sizeof(vb));
	fact(host, "uid_map", hv, sizeof(hv));
	bool ok = sscanf(v, "%lu %lu %lu", &in, &out, &count) == 3 &&
		  sscanf(vb, "%lu %lu %lu", &in_b, &out_b, &count_b) == 3;
	bool own_range = ok && in == 0 && count == 65536 && out >= cfg.uid_base &&
			 (out - cfg.uid_base) % 65536 == 0 && strcmp(v, gid) == 0;
	bool apart = ok && in_b == 0 && count_b == 65536 &&
		     (out_b >= out + count || out >= out_b + count_b);
	check(own_range && apart && strcmp(hv, "0 0 4294967295") == 0, "facts/id_ranges",
	      "(uid_map inside: '%s', gid_map '%s'; the other sandbox's: '%s'; host "
	      "control: '%s')", v, gid, vb, hv);

	/* The host's view of the init: it runs as the first id of that range. */
	unsigned uids[4] = { 0 }, gids[4] = { 0 };
	char path[64], line[256];
	FILE *f = NULL;
	if (rt_query(rt, id, &info, &err) == 0) {
		snprintf(path, sizeof(path), "/proc/%d/status", info.pid);
		f = fopen(path, "re");
	}
	while (f && fgets(line, sizeof(line), f)) {
		sscanf(line, "Uid: %u %u %u %u", &uids[0], &uids[1], &uids[2], &uids[3]);
		sscanf(line, "Gid: %u %u %u %u", &gids[0], &gids[1], &gids[2], &gids[3]);
	}
	if (f)
		fclose(f);
	bool all = ok && uids[0] != 0;
	for (int i = 0; i < 4; i++)
		all = all && uids[i] == out && gids[i] == out;
	check(all, "facts/init_host_uid",
	      "(init pid %d on the host: uid %u/%u/%u/%u gid %u; its range starts at %lu)",
	      info.pid, uids[0], uids[1], uids[2], uids[3], gids[0], ok ? out : 0);
}

static uint64_t docker_caps(void)
{
	static const int caps[] = { CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID,
				    CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP,
				    CAP_NET_BIND_SERVICE, CAP_NET_RAW, CAP_SYS_CHROOT,
				    CAP_MKNOD, CAP_AUDIT_WRITE, CAP_SETFCAP };
	uint64_t m = 0;

	for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++)
		m |= 1ull << caps[i];
	return m;
}

static void facts_privileges(const char *a, const char *host)
{
	unsigned long long eff = fact_hex(a, "CapEff"), prm = fact_hex(a, "CapPrm");
	unsigned long long bnd = fact_hex(a, "CapBnd"), inh = fact_hex(a, "CapInh");
	unsigned long long amb = fact_hex(a, "CapAmb"), host_eff = fact_hex(host, "CapEff");
	char nnp[16] = "?", sec[16] = "?", host_sec[16] = "?";

	check(DOCUMENTED_CAPS == docker_caps() && eff == DOCUMENTED_CAPS && prm == eff &&
	      bnd == eff && inh == 0 && amb == 0 && host_eff != eff, "facts/capabilities",
	      "(inside: CapEff %llx CapPrm %llx CapBnd %llx CapInh %llx CapAmb %llx; "
	      "documented %llx; host control CapEff %llx)", eff, prm, bnd, inh, amb,
	      DOCUMENTED_CAPS, host_eff);
	/* Documented: no_new_privs stays off so that sudo works inside. */
	fact(a, "NoNewPrivs", nnp, sizeof(nnp));
	check(strcmp(nnp, "0") == 0, "facts/no_new_privs",
	      "(NoNewPrivs %s inside, as docs/runtime.md says: setuid tools must work)", nnp);
	fact(a, "Seccomp", sec, sizeof(sec));
	fact(host, "Seccomp", host_sec, sizeof(host_sec));
	check(strcmp(sec, "2") == 0 && strcmp(host_sec, "0") == 0, "facts/seccomp",
	      "(Seccomp %s inside, filter mode; host control %s)", sec, host_sec);
}

struct dev_seen {
	char list[2048];
	size_t off;
	int n, unexpected, blk;
};

static void note_dev(void *arg, const char *rest)
{
	static const char *const expected[] = {
		"null chr 1:3", "zero chr 1:5", "full chr 1:7", "random chr 1:8",
		"urandom chr 1:9", "tty chr 5:0", "pts dir", "shm dir",
		"ptmx lnk pts/ptmx", "fd lnk /proc/self/fd", "stdin lnk /proc/self/fd/0",
		"stdout lnk /proc/self/fd/1", "stderr lnk /proc/self/fd/2",
	};
	struct dev_seen *d = arg;
	bool known = false;

	for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++)
		known |= strcmp(rest, expected[i]) == 0;
	d->n++;
	d->blk += strstr(rest, " blk ") != NULL;
	if (!known) {
		d->unexpected++;
		if (d->off + 80 < sizeof(d->list))
			d->off += (size_t)snprintf(d->list + d->off, sizeof(d->list) - d->off,
						   " [%s]", rest);
	}
}

static void facts_dev(const char *a, const char *b, const char *host)
{
	struct dev_seen in = { 0 }, out = { 0 };
	char pa[64] = "", pb[64] = "", ph[64] = "", ptn[32] = "", ptn_b[32] = "";

	each_line(a, "dev ", note_dev, &in);
	each_line(host, "dev ", note_dev, &out);
	check(in.n == 13 && in.unexpected == 0 && out.unexpected > 0, "facts/dev_list",
	      "(/dev inside: %d entries, %d not in the documented list%s; host control: "
	      "%d entries, %d of them not in it, %d block devices)", in.n, in.unexpected,
	      in.list, out.n, out.unexpected, out.blk);

	/* A devpts of its own: another superblock than the host's and the
	 * neighbour's, and numbering of its own from 0. */
	fact(a, "pts", pa, sizeof(pa));
	fact(b, "pts", pb, sizeof(pb));
	fact(host, "pts", ph, sizeof(ph));
	fact(a, "ptmx_index", ptn, sizeof(ptn));
	fact(b, "ptmx_index", ptn_b, sizeof(ptn_b));
	char want[32];
	snprintf(want, sizeof(want), "type=%x ", DEVPTS_SUPER_MAGIC);
	check(strncmp(pa, want, strlen(want)) == 0 && strncmp(ph, want, strlen(want)) == 0 &&
	      strcmp(pa, ph) && strcmp(pa, pb) && strcmp(pb, ph) && strcmp(ptn, "0") == 0 &&
	      strcmp(ptn_b, "0") == 0, "facts/devpts_private",
	      "(/dev/pts inside: %s, the other sandbox: %s, host: %s; first pty through "
	      "/dev/ptmx: %s here, %s there)", pa, pb, ph, ptn, ptn_b);

	char sa[64] = "", sb[64] = "", sh[64] = "", wa[32] = "";
	fact(a, "shm", sa, sizeof(sa));
	fact(b, "shm", sb, sizeof(sb));
	fact(host, "shm", sh, sizeof(sh));
	fact(a, "shm_write", wa, sizeof(wa));
	snprintf(want, sizeof(want), "type=%x ", TMPFS_MAGIC);
	check(strcmp(wa, "ok") == 0 && strncmp(sa, want, strlen(want)) == 0 && *sh &&
	      strcmp(sa, sh) && strcmp(sa, sb), "facts/dev_shm",
	      "(write and read back in /dev/shm: %s; inside %s, the other sandbox %s, "
	      "host %s)", wa, sa, sb, sh);
}

static void facts_etc(const char *id, const char *a, const char *b_id, const char *b,
		      const char *host)
{
	char resolv[256] = "", hosts[512] = "", name[128] = "", etc_name[128] = "";
	char want_resolv[256], want_hosts[512], want_name[128], hosts_b[512] = "";
	char host_resolv[1024] = "";

	fact(a, "resolv.conf", resolv, sizeof(resolv));
	fact(a, "hosts", hosts, sizeof(hosts));
	fact(a, "hostname", name, sizeof(name));
	fact(a, "etc_hostname", etc_name, sizeof(etc_name));
	fact(b, "hosts", hosts_b, sizeof(hosts_b));
	fact(host, "resolv.conf", host_resolv, sizeof(host_resolv));
	/* The test root file system has an empty /etc: these are the runtime's. */
	snprintf(want_resolv, sizeof(want_resolv), "nameserver %s\\n", cfg.nameservers);
	snprintf(want_hosts, sizeof(want_hosts), "127.0.0.1\\tlocalhost\\n::1\\tlocalhost "
		 "ip6-localhost ip6-loopback\\n127.0.1.1\\t%s\\n", id);
	snprintf(want_name, sizeof(want_name), "%s\\n", id);
	check(strcmp(resolv, want_resolv) == 0 && strcmp(resolv, host_resolv) != 0,
	      "facts/resolv_conf", "(inside: '%s'; the configured nameserver %s; host "
	      "control: '%.60s')", resolv, cfg.nameservers, host_resolv);
	check(strcmp(hosts, want_hosts) == 0 && strcmp(name, id) == 0 &&
	      strcmp(etc_name, want_name) == 0 && strstr(hosts_b, b_id) &&
	      !strstr(hosts_b, id), "facts/hosts_and_hostname",
	      "(inside: /etc/hosts '%s', hostname %s, /etc/hostname '%s'; the other "
	      "sandbox's /etc/hosts names %s)", hosts, name, etc_name, b_id);
}

static void facts_namespaces(const char *a, const char *b, const char *host)
{
	static const char *const kinds[] = { "ipc", "uts", "pid", "mnt", "net", "cgroup",
					     "user" };
	char detail[1024];
	size_t off = 0;
	bool ok = true;

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		char key[32], va[32] = "", vb[32] = "", vh[32] = "", path[64];
		struct stat st;

		snprintf(key, sizeof(key), "ns %s", kinds[i]);
		fact(a, key, va, sizeof(va));
		fact(b, key, vb, sizeof(vb));
		fact(host, key, vh, sizeof(vh));
		/* Control: the host probe read what we (host namespaces) read. */
		snprintf(path, sizeof(path), "/proc/self/ns/%s", kinds[i]);
		bool same_host = stat(path, &st) == 0 && strtoull(vh, NULL, 10) == st.st_ino;
		ok = ok && *va && *vb && same_host && strcmp(va, vh) && strcmp(va, vb) &&
		     strcmp(vb, vh);
		off += (size_t)snprintf(detail + off, sizeof(detail) - off, "%s%s %s/%s/%s",
					i ? ", " : "", kinds[i], va, vb, vh);
	}
	check(ok, "facts/namespaces", "(inode inside/other sandbox/host: %s)", detail);
}

/* System V IPC: the host holds a segment under key; the sandbox neither
 * sees it nor is kept from taking the key itself. */
static void facts_sysv(const char *a, key_t key, int host_seg)
{
	char v[64] = "";
	bool host_sees = host_seg >= 0 && shmget(key, 0, 0) == host_seg;

	fact(a, "sysv", v, sizeof(v));
	check(strcmp(v, "other=ENOENT own=ok") == 0 && host_sees, "facts/ipc_sysv_shm",
	      "(key %#x held by the host: sandbox %s; host control: the host %s it, "
	      "before and after)", (unsigned)key, v, host_sees ? "finds" : "does NOT find");
}

struct fd_seen {
	char list[1024];
	size_t off;
	int n, foreign;
	bool planted_found; /* the control's leaked file was flagged */
};

/* Allowed in the init: /dev/null (0), the log pipe (1, 2), sockets. */
static void note_fd(void *arg, const char *rest)
{
	struct fd_seen *f = arg;
	int fd;
	char kind[32] = "";

	sscanf(rest, "%d %31s", &fd, kind);
	f->n++;
	bool fine = strcmp(kind, "fifo") == 0 || strcmp(kind, "sock") == 0 ||
		    (strcmp(kind, "chr") == 0 && strstr(rest, " chr 1:3 "));
	if (!fine)
		f->foreign++;
	f->planted_found |= !fine && strstr(rest, "/fd-control") != NULL;
	if (f->off + 80 < sizeof(f->list))
		f->off += (size_t)snprintf(f->list + f->off, sizeof(f->list) - f->off, "%s[%s]",
					   fine ? " " : " FOREIGN", rest);
}

static void facts_fds(const char *a)
{
	struct fd_seen in = { 0 }, ctl = { 0 };
	char path[600];
	const char *tmp = getenv("RT_TMP");

	each_line(a, "fd ", note_fd, &in);
	/* Control: the probe on the host, given a host file it should not have. */
	snprintf(path, sizeof(path), "%s/fd-control", tmp ? tmp : "/tmp");
	int extra = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	char *host = extra >= 0 ? host_facts(extra) : NULL;
	if (host)
		each_line(host, "fd ", note_fd, &ctl);
	if (extra >= 0)
		close(extra);
	unlink(path);
	check(in.n >= 3 && in.foreign == 0 && ctl.planted_found, "facts/init_fds",
	      "(the init's descriptors:%s; host control with a leaked file:%s)", in.list,
	      ctl.list);
	free(host);
}

void suite_facts(void)
{
	struct rt_limits lim = { .memory_mb = 128, .pids = 64 };
	key_t key = (key_t)(0x48750000 | (getpid() & 0xffff));
	char *a = malloc(65536), *b = malloc(65536), *host = host_facts(-1);
	char line[64];

	if (!a || !b || !host) {
		check(false, "facts/setup", "%s", host ? "out of memory" :
		      "the probe's host run failed");
		goto out;
	}
	if (make_sandbox("fact-a", lim, NULL, NULL) < 0 ||
	    make_sandbox("fact-b", lim, NULL, NULL) < 0)
		goto out;
	int seg = shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600);
	snprintf(line, sizeof(line), "facts %#x", (unsigned)key);
	int ra = probe_cmd("fact-a", line, a, 65536, 5000);
	int rb = probe_cmd("fact-b", "facts", b, 65536, 5000);
	if (ra < 0 || rb < 0) {
		check(false, "facts/run", "probe gave no answer: %.200s / %.200s", a, b);
	} else {
		facts_ids("fact-a", a, b, host);
		facts_privileges(a, host);
		facts_dev(a, b, host);
		facts_etc("fact-a", a, "fact-b", b, host);
		facts_namespaces(a, b, host);
		facts_sysv(a, key, seg);
		facts_fds(a);
	}
	if (seg >= 0)
		shmctl(seg, IPC_RMID, NULL);
out:
	destroy("fact-a");
	destroy("fact-b");
	free(a);
	free(b);
	free(host);
}

/* ---------- cpu ---------- */

static bool unified_host(void)
{
	struct statfs st;

	return statfs("/sys/fs/cgroup", &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC;
}

/* The CFS quota as the host's cgroup files say: "quota/period" in µs,
 * "max/period" when unlimited. */
static void cpu_quota(const char *id, char *out, size_t len)
{
	char path[512], a[64] = "?", b[64] = "?";
	FILE *f;

	if (unified_host()) {
		snprintf(path, sizeof(path), "/sys/fs/cgroup/%s/%s/cpu.max", RT_TEST_CGROUP, id);
		f = fopen(path, "re");
		if (f && fscanf(f, "%63s %63s", a, b) != 2)
			snprintf(a, sizeof(a), "?");
	} else {
		snprintf(path, sizeof(path), "/sys/fs/cgroup/cpu/%s/%s/cpu.cfs_quota_us",
			 RT_TEST_CGROUP, id);
		f = fopen(path, "re");
		if (f && fscanf(f, "%63s", a) != 1)
			snprintf(a, sizeof(a), "?");
		if (f)
			fclose(f);
		snprintf(path, sizeof(path), "/sys/fs/cgroup/cpu/%s/%s/cpu.cfs_period_us",
			 RT_TEST_CGROUP, id);
		f = fopen(path, "re");
		if (f && fscanf(f, "%63s", b) != 1)
			snprintf(b, sizeof(b), "?");
	}
	if (f)
		fclose(f);
	snprintf(out, len, "%s/%s", strcmp(a, "-1") == 0 ? "max" : a, b);
}

static long mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

/* Periods in which the kernel held the sandbox back for its quota. */
static long long nr_throttled(const char *id)
{
	char path[512], key[64];
	long long v, n = -1;
	FILE *f;

	if (unified_host())
		snprintf(path, sizeof(path), "/sys/fs/cgroup/%s/%s/cpu.stat", RT_TEST_CGROUP, id);
	else
		snprintf(path, sizeof(path), "/sys/fs/cgroup/cpu/%s/%s/cpu.stat", RT_TEST_CGROUP,
			 id);
	f = fopen(path, "re");
	while (f && fscanf(f, "%63s %lld", key, &v) == 2)
		if (strcmp(key, "nr_throttled") == 0)
			n = v;
	if (f)
		fclose(f);
	return n;
}

struct cpu_run {
	double cpus;            /* the cgroup's usage over the wall time */
	long long throttled;    /* periods throttled meanwhile */
	char said[128];         /* the probe's answer */
};

/* Two threads spin for ms in the sandbox; false when something failed. */
static bool spin_run(const char *id, int ms, struct cpu_run *out)
{
	struct rt_info before, after;
	struct herr err;
	char cmd[64];

	snprintf(cmd, sizeof(cmd), "spin 2 %d", ms);
	long long thr0 = nr_throttled(id);
	if (rt_query(rt, id, &before, &err) < 0)
		return false;
	long t0 = mono_us();
	int r = probe_cmd(id, cmd, out->said, sizeof(out->said), ms + 10000);
	long wall = mono_us() - t0;
	out->said[strcspn(out->said, "\n")] = '\0';
	if (r < 0 || rt_query(rt, id, &after, &err) < 0 || wall <= 0)
		return false;
	out->cpus = (double)(after.cpu_usec - before.cpu_usec) / (double)wall;
	out->throttled = nr_throttled(id) - thr0;
	return true;
}

static double load1(void)
{
	double l = -1;
	FILE *f = fopen("/proc/loadavg", "re");

	if (f && fscanf(f, "%lf", &l) != 1)
		l = -1;
	if (f)
		fclose(f);
	return l;
}

void suite_cpu(void)
{
	char q1[64], q2[64], q0[64];
	struct cpu_run one = { 0 }, free_ = { 0 }, again;

	if (make_sandbox("cpu-1", (struct rt_limits){ .cpu_count = 1, .memory_mb = 64 }, NULL,
			 NULL) < 0 ||
	    make_sandbox("cpu-2", (struct rt_limits){ .cpu_count = 2, .memory_mb = 64 }, NULL,
			 NULL) < 0 ||
	    make_sandbox("cpu-free", (struct rt_limits){ .memory_mb = 64 }, NULL, NULL) < 0)
		goto out;
	cpu_quota("cpu-1", q1, sizeof(q1));
	cpu_quota("cpu-2", q2, sizeof(q2));
	cpu_quota("cpu-free", q0, sizeof(q0));
	check(strcmp(q1, "100000/100000") == 0 && strcmp(q2, "200000/100000") == 0 &&
	      strncmp(q0, "max/", 4) == 0, "cpu/quota_from_cpu_count",
	      "(%s quota/period in us: cpuCount 1 %s, 2 %s, none %s)",
	      unified_host() ? "cpu.max" : "cpu.cfs_quota_us/cfs_period_us", q1, q2, q0);

	/* Two busy threads: at most about one CPU (the cgroup's usage, not the
	 * wall time), and the kernel's throttling counter shows that the quota
	 * is what holds it there. Other work on the host can keep the sandbox
	 * below its quota (then nothing is shown): up to four tries. */
	bool over = false;
	for (int i = 0; i < 4 && !over && (i == 0 || one.throttled <= 0); i++) {
		if (i)
			usleep(500 * 1000);
		if (spin_run("cpu-1", 2000, &again)) {
			over |= again.cpus > 1.15;
			one = again;
		}
	}
	check(!over && one.cpus > 0.3 && one.throttled > 0, "cpu/one_cpu_limit",
	      "(cpuCount 1, two spinning threads: %.2f CPUs by the cgroup's usage, "
	      "throttled in %lld periods; probe: %s)", one.cpus, one.throttled, one.said);
	/* Control: the same load unlimited is never throttled and gets more
	 * than a 1-CPU sandbox may (1.15) of this 2-CPU host, when the host
	 * has it to give (unit tests and builds run beside these tests). */
	for (int i = 0; i < 5 && free_.cpus <= 1.2; i++) {
		if (i)
			usleep(1000 * 1000);
		if (spin_run("cpu-free", 2000, &again) && again.cpus > free_.cpus)
			free_ = again;
	}
	check(free_.cpus > 1.2 && free_.throttled == 0, "cpu/unlimited_control",
	      "(no cpuCount, same load: %.2f CPUs at best, throttled in %lld periods; probe: "
	      "%s; load average %.1f)", free_.cpus, free_.throttled, free_.said, load1());
out:
	destroy("cpu-1");
	destroy("cpu-2");
	destroy("cpu-free");
}

/* ---------- exit reasons ---------- */

/* What the exit callback (hutchd's source of end reasons) was told. */
static struct {
	pthread_mutex_t lock;
	char id[16][RT_ID_MAX + 1];
	struct rt_info info[16];
	int n;
} told = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void on_exit_cb(void *arg, const char *id, const struct rt_info *info)
{
	pthread_mutex_lock(&told.lock);
	if (told.n < 16) {
		snprintf(told.id[told.n], sizeof(told.id[0]), "%s", id);
		told.info[told.n++] = *info;
	}
	pthread_mutex_unlock(&told.lock);
}

/* The reason the callback gave for id within 3 s; RT_EXIT_NONE if none. */
static enum rt_exit_reason told_reason(const char *id)
{
	for (int waited = 0; waited < 3000; waited += 20, usleep(20000)) {
		pthread_mutex_lock(&told.lock);
		for (int i = 0; i < told.n; i++)
			if (strcmp(told.id[i], id) == 0) {
				enum rt_exit_reason r = told.info[i].reason;
				pthread_mutex_unlock(&told.lock);
				return r;
			}
		pthread_mutex_unlock(&told.lock);
	}
	return RT_EXIT_NONE;
}

static bool stopped(const char *id, struct rt_info *info)
{
	struct herr err;

	for (int waited = 0; waited < 5000; waited += 20, usleep(20000))
		if (rt_query(rt, id, info, &err) == 0 && info->state == RT_STATE_STOPPED)
			return true;
	return false;
}

#define ANY (-1)

/* One way for an init to end, and what must be reported. */
struct reason_case {
	const char *name;         /* "reasons/<name>"; the sandbox is "why-<name>" */
	unsigned pids;            /* the pids limit */
	const char *before;       /* a probe command first, or NULL */
	const char *end;          /* the command that ends the init; NULL: SIGKILL
				   * from the host */
	enum rt_exit_reason want;
	int status, signal;       /* exit_status, exit_signal wanted, or ANY */
	int refused, oom_kills;   /* 0: none, 1: some, ANY */
	const char *what;
};

static const struct reason_case reason_cases[] = {
	{ "limit", 16, NULL, "forkfail", RT_EXIT_LIMIT, 75, ANY, 1, ANY,
	  "the init forks until the pids limit refuses, then gives up with 75" },
	{ "crash", 32, NULL, "crash", RT_EXIT_SIGNAL, ANY, SIGILL, 0, 0,
	  "the init traps, no limit hit" },
	{ "exit_status", 32, NULL, "exit 3", RT_EXIT_EXITED, 3, ANY, 0, ANY,
	  "the init exits 3" },
	{ "clean_exit_after_limit", 32, "forkbomb 500", "exit 0", RT_EXIT_EXITED, 0, ANY, 1,
	  ANY, "a fork bomb, then the init exits 0" },
	{ "crash_after_child_oom", 32, "membomb", "crash", RT_EXIT_SIGNAL, ANY, SIGILL, ANY,
	  1, "a child OOM-killed, then the init traps" },
	{ "host_sigkill", 32, NULL, NULL, RT_EXIT_SIGNAL, ANY, SIGKILL, ANY, 0,
	  "SIGKILL from the host, no OOM kill" },
};

static bool wanted(long long got, int want)
{
	return want == ANY || (want == 1 ? got > 0 : got == want);
}

static void reason_case_run(const struct reason_case *c)
{
	struct rt_limits lim = { .memory_mb = 64, .pids = c->pids };
	struct rt_info info = { 0 };
	struct herr err;
	char id[64], name[64], out[128] = "";

	snprintf(id, sizeof(id), "why-%s", c->name);
	snprintf(name, sizeof(name), "reasons/%s", c->name);
	if (make_sandbox(id, lim, NULL, NULL) < 0)
		return;
	if (c->before)
		probe_cmd(id, c->before, out, sizeof(out), 30000);
	if (c->end)
		probe_cmd(id, c->end, out, sizeof(out), 5000);
	else if (rt_query(rt, id, &info, &err) == 0 && info.pid > 0)
		kill(info.pid, SIGKILL);
	out[strcspn(out, "\n")] = '\0';
	bool ended = stopped(id, &info);
	enum rt_exit_reason cb = told_reason(id);
	check(ended && info.reason == c->want && cb == c->want &&
	      wanted(info.exit_status, c->status) && wanted(info.exit_signal, c->signal) &&
	      wanted((long long)info.pids_refused, c->refused) &&
	      wanted((long long)info.oom_kills, c->oom_kills), name,
	      "(%s: reason %s, status %d, signal %d, %" PRIu64 " forks refused, %" PRIu64
	      " OOM kills; the exit callback said %s; the init's last answer '%s')", c->what,
	      rt_exit_reason_name(info.reason), info.exit_status, info.exit_signal,
	      info.pids_refused, info.oom_kills, rt_exit_reason_name(cb), out);
	destroy(id);
}

void suite_reasons(void)
{
	rt_set_exit_callback(rt, on_exit_cb, NULL);
	for (size_t i = 0; i < sizeof(reason_cases) / sizeof(reason_cases[0]); i++)
		reason_case_run(&reason_cases[i]);
	rt_set_exit_callback(rt, NULL, NULL);
}
