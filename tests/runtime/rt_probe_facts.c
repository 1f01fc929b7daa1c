/*
 * The probe's fact-finding and load commands (see rt_probe_facts.h). They
 * only read and report; what the facts should be is for rt-test to judge,
 * so the same command run on the host is the comparison.
 */
#include "rt_probe_facts.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *err_name(int e)
{
	const char *n = strerrorname_np(e);

	return n ? n : "E?";
}

/* Newlines and tabs as \n and \t, so a file's text fits on one line. */
static void put_escaped(int fd, const char *key, const char *text, size_t len)
{
	dprintf(fd, "%s ", key);
	for (size_t i = 0; i < len; i++) {
		if (text[i] == '\n')
			dprintf(fd, "\\n");
		else if (text[i] == '\t')
			dprintf(fd, "\\t");
		else
			dprintf(fd, "%c", text[i]);
	}
	dprintf(fd, "\n");
}

static void put_file(int fd, const char *key, const char *path)
{
	char buf[2048];
	int f = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = f < 0 ? -1 : read(f, buf, sizeof(buf));

	if (n < 0)
		dprintf(fd, "%s !%s\n", key, err_name(errno));
	else
		put_escaped(fd, key, buf, (size_t)n);
	if (f >= 0)
		close(f);
}

/* The first line of an id map, spaces squeezed: "0 805306368 65536". */
static void put_id_map(int fd, const char *key, const char *path)
{
	FILE *f = fopen(path, "re");
	unsigned long a, b, c;

	if (f && fscanf(f, "%lu %lu %lu", &a, &b, &c) == 3)
		dprintf(fd, "%s %lu %lu %lu\n", key, a, b, c);
	else
		dprintf(fd, "%s !unreadable\n", key);
	if (f)
		fclose(f);
}

static void put_status(int fd)
{
	static const char *const keys[] = { "CapInh", "CapPrm", "CapEff", "CapBnd",
					     "CapAmb", "NoNewPrivs", "Seccomp" };
	FILE *f = fopen("/proc/self/status", "re");
	char line[256], val[128];

	while (f && fgets(line, sizeof(line), f))
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			size_t kl = strlen(keys[i]);
			if (strncmp(line, keys[i], kl) == 0 && line[kl] == ':' &&
			    sscanf(line + kl + 1, "%127s", val) == 1)
				dprintf(fd, "%s %s\n", keys[i], val);
		}
	if (f)
		fclose(f);
}

static void put_namespaces(int fd)
{
	static const char *const kinds[] = { "ipc", "uts", "pid", "mnt", "net", "cgroup",
					     "user" };
	char path[64];
	struct stat st;

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		snprintf(path, sizeof(path), "/proc/self/ns/%s", kinds[i]);
		if (stat(path, &st) == 0)
			dprintf(fd, "ns %s %llu\n", kinds[i], (unsigned long long)st.st_ino);
		else
			dprintf(fd, "ns %s !%s\n", kinds[i], err_name(errno));
	}
}

/* "chr 1:3", "fifo", "sock", "dir", "reg", "lnk", or "other", by fstat/lstat. */
static void kind_of(const struct stat *st, char *out, size_t len)
{
	if (S_ISCHR(st->st_mode))
		snprintf(out, len, "chr %u:%u", major(st->st_rdev), minor(st->st_rdev));
	else if (S_ISBLK(st->st_mode))
		snprintf(out, len, "blk %u:%u", major(st->st_rdev), minor(st->st_rdev));
	else
		snprintf(out, len, "%s", S_ISFIFO(st->st_mode) ? "fifo" :
			 S_ISSOCK(st->st_mode) ? "sock" : S_ISDIR(st->st_mode) ? "dir" :
			 S_ISREG(st->st_mode) ? "reg" : S_ISLNK(st->st_mode) ? "lnk" : "other");
}

/* Every entry of /dev: "dev <name> <kind>" (symlinks with their target). */
static void put_dev(int fd)
{
	DIR *d = opendir("/dev");
	struct dirent *e;

	while (d && (e = readdir(d))) {
		char path[300], kind[32], target[256];
		struct stat st;
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/dev/%s", e->d_name);
		if (lstat(path, &st) < 0)
			continue;
		kind_of(&st, kind, sizeof(kind));
		n = S_ISLNK(st.st_mode) ? readlink(path, target, sizeof(target) - 1) : -1;
		target[n > 0 ? n : 0] = '\0';
		dprintf(fd, "dev %s %s%s%s\n", e->d_name, kind, n > 0 ? " " : "", target);
	}
	if (d)
		closedir(d);
}

/* The file system behind a path: its type and device, for host comparison. */
static void put_fs(int fd, const char *key, const char *path)
{
	struct statfs sf;
	struct stat st;

	if (statfs(path, &sf) < 0 || stat(path, &st) < 0) {
		dprintf(fd, "%s !%s\n", key, err_name(errno));
		return;
	}
	dprintf(fd, "%s type=%lx dev=%u:%u\n", key, (unsigned long)sf.f_type,
		major(st.st_dev), minor(st.st_dev));
}

/* The number the pty instance gives the next terminal opened through ptmx. */
static void put_ptmx(int fd)
{
	int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	unsigned n = 0;

	if (m < 0 || ioctl(m, TIOCGPTN, &n) < 0)
		dprintf(fd, "ptmx_index !%s\n", err_name(errno));
	else
		dprintf(fd, "ptmx_index %u\n", n);
	if (m >= 0)
		close(m);
}

static void put_shm_write(int fd)
{
	const char *path = "/dev/shm/rt-probe-shm";
	char back[8] = "";
	int f = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int r = f < 0 ? -errno : 0;

	if (r == 0 && pwrite(f, "shared", 6, 0) != 6)
		r = -errno;
	if (r == 0 && (pread(f, back, 6, 0) != 6 || memcmp(back, "shared", 6) != 0))
		r = -EIO;
	if (f >= 0)
		close(f);
	unlink(path);
	dprintf(fd, "shm_write %s\n", r == 0 ? "ok" : err_name(-r));
}

/* Every open descriptor: "fd <n> <kind> <link>"; the listing's own is left out. */
static void put_fds(int fd)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;

	while (d && (e = readdir(d))) {
		char path[300], kind[32], target[256];
		struct stat st;
		int n = atoi(e->d_name);

		if (e->d_name[0] == '.' || n == dirfd(d))
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t len = readlink(path, target, sizeof(target) - 1);
		target[len > 0 ? len : 0] = '\0';
		if (fstat(n, &st) < 0)
			snprintf(kind, sizeof(kind), "!%s", err_name(errno));
		else
			kind_of(&st, kind, sizeof(kind));
		dprintf(fd, "fd %d %s %s\n", n, kind, target);
	}
	if (d)
		closedir(d);
}

/*
 * System V shared memory under a key the host has taken: whether it can be
 * seen here, and whether the key can be taken anew here (it could not if
 * this were the host's IPC namespace). The new segment is removed again.
 */
static void put_sysv(int fd, key_t key)
{
	int other = shmget(key, 0, 0);
	int other_err = errno;
	int own = shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0600);
	int own_err = errno;

	if (own >= 0)
		shmctl(own, IPC_RMID, NULL);
	dprintf(fd, "sysv other=%s own=%s\n", other >= 0 ? "ok" : err_name(other_err),
		own >= 0 ? "ok" : err_name(own_err));
}

void probe_facts(int fd, const char *args)
{
	struct utsname u;
	long key = 0;

	put_id_map(fd, "uid_map", "/proc/self/uid_map");
	put_id_map(fd, "gid_map", "/proc/self/gid_map");
	put_status(fd);
	put_namespaces(fd);
	if (uname(&u) == 0)
		dprintf(fd, "hostname %s\n", u.nodename);
	put_dev(fd);
	put_fs(fd, "pts", "/dev/pts");
	put_ptmx(fd);
	put_fs(fd, "shm", "/dev/shm");
	put_shm_write(fd);
	put_file(fd, "resolv.conf", "/etc/resolv.conf");
	put_file(fd, "hosts", "/etc/hosts");
	put_file(fd, "etc_hostname", "/etc/hostname");
	put_fds(fd);
	if (args && sscanf(args, "%li", &key) == 1 && key)
		put_sysv(fd, (key_t)key);
}

/* ---------- load ---------- */

struct spin_arg {
	long until_ms;
};

static long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *spin_main(void *p)
{
	const struct spin_arg *a = p;
	volatile unsigned long x = 0;

	while (mono_ms() < a->until_ms)
		for (int i = 0; i < 100000; i++)
			x++;
	return NULL;
}

void probe_spin(int fd, int threads, int ms)
{
	pthread_t t[16];
	struct spin_arg a = { mono_ms() + ms };
	struct timespec c0, c1;
	int n = 0;

	if (threads < 1 || threads > 16 || ms < 1 || ms > 60000) {
		dprintf(fd, "spin: 1-16 threads, 1-60000 ms\n");
		return;
	}
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	while (n < threads && pthread_create(&t[n], NULL, spin_main, &a) == 0)
		n++;
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	dprintf(fd, "spun threads=%d cpu_ms=%ld\n", n,
		(c1.tv_sec - c0.tv_sec) * 1000 + (c1.tv_nsec - c0.tv_nsec) / 1000000);
}

int probe_forkfail(int fd)
{
	int n = 0;

	for (;;) {
		pid_t p = fork();
		if (p == 0) {
			pause();
			_exit(0);
		}
		if (p < 0) {
			int e = errno;
			dprintf(fd, "forked %d then %s\n", n, err_name(e));
			/* Children stay: the pid namespace ends them with us. */
			return e == EAGAIN ? 75 : 0;
		}
		if (++n == 10000) {
			dprintf(fd, "forked %d, no limit met\n", n);
			kill(0, SIGKILL); /* we are the init: this spares us */
			while (waitpid(-1, NULL, 0) > 0)
				;
			return 0;
		}
	}
}
