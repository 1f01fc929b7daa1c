/*
 * Resource usage for GET /metrics (metrics.h).
 *
 * Inside a sandbox /sys/fs/cgroup is the sandbox's own cgroup (cgroup
 * namespace), whose counters are what the sandbox really uses; /proc/stat and
 * /proc/meminfo describe the whole host there. So the cgroup is preferred and
 * /proc is the fallback, which is also what runs when the agent is on a host.
 */
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include <limits.h>

#include "cleanup.h"

/* A CPU measurement: busy time and the time it is measured against. */
struct cpu_sample {
	double busy;  /* CPU-seconds spent working */
	double total; /* CPU-seconds available */
	int valid;
};

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static char cgroup_dir[PATH_MAX] = "/sys/fs/cgroup";
static char proc_dir[PATH_MAX] = "/proc";
static char disk_path[PATH_MAX] = "/";
static struct cpu_sample last_cpu;

void metrics_set_sources(const char *cg, const char *proc, const char *disk)
{
	pthread_mutex_lock(&metrics_lock);
	snprintf(cgroup_dir, sizeof(cgroup_dir), "%s", cg);
	snprintf(proc_dir, sizeof(proc_dir), "%s", proc);
	snprintf(disk_path, sizeof(disk_path), "%s", disk);
	last_cpu.valid = 0;
	pthread_mutex_unlock(&metrics_lock);
}

/* Reads a small text file whole; -errno when it cannot be read. */
static int read_text(const char *dir, const char *name, char *buf, size_t cap)
{
	char path[PATH_MAX + 32];
	_cleanup_close_ int fd = -1;
	size_t len = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (len + 1 < cap) {
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	return 0;
}

/* The number after "key " (cpu.stat, memory.stat) or "key:" (meminfo). */
static int find_u64(const char *text, const char *key, uint64_t *out)
{
	size_t klen = strlen(key);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p) {
		if (strncmp(p, key, klen) != 0 || (p[klen] != ' ' && p[klen] != ':'))
			continue;
		char *end;
		errno = 0;
		unsigned long long v = strtoull(p + klen + 1, &end, 10);
		if (errno || end == p + klen + 1)
			return -EINVAL;
		*out = v;
		return 0;
	}
	return -ENOENT;
}

static double monotonic_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (int)n : 1;
}

/* CPUs the sandbox may use: its cpu.max quota rounded up, at most online. */
static int cpu_count(const char *cg)
{
	char buf[128];
	unsigned long long quota, period;
	int online = online_cpus();

	if (read_text(cg, "cpu.max", buf, sizeof(buf)) < 0 ||
	    sscanf(buf, "%llu %llu", &quota, &period) != 2 || period == 0)
		return online;
	int n = (int)((quota + period - 1) / period);
	return n < 1 ? 1 : (n > online ? online : n);
}

static struct cpu_sample sample_cgroup_cpu(const char *cg, int ncpu)
{
	struct cpu_sample s = { 0 };
	char buf[4096];
	uint64_t usage_usec;

	if (read_text(cg, "cpu.stat", buf, sizeof(buf)) < 0 ||
	    find_u64(buf, "usage_usec", &usage_usec) < 0)
		return s;
	s.busy = (double)usage_usec / 1e6;
	s.total = monotonic_seconds() * ncpu;
	s.valid = 1;
	return s;
}

/* First line of /proc/stat: "cpu user nice system idle iowait irq ...". */
static struct cpu_sample sample_proc_cpu(const char *proc)
{
	struct cpu_sample s = { 0 };
	char buf[1024];
	unsigned long long v[8] = { 0 };

	if (read_text(proc, "stat", buf, sizeof(buf)) < 0)
		return s;
	int n = sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
		       &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
	if (n < 4)
		return s;
	double total = 0, tick = (double)sysconf(_SC_CLK_TCK);
	for (int i = 0; i < n; i++)
		total += (double)v[i];
	if (tick <= 0)
		tick = 100;
	/* in seconds, like the cgroup sample; idle and iowait are not busy */
	s.total = total / tick;
	s.busy = (total - (double)v[3] - (double)v[4]) / tick;
	s.valid = 1;
	return s;
}

static struct cpu_sample sample_cpu(const char *cg, const char *proc, int ncpu)
{
	struct cpu_sample s = sample_cgroup_cpu(cg, ncpu);

	return s.valid ? s : sample_proc_cpu(proc);
}

/*
 * Usage since the previous call; when there is none (or it is too recent to
 * mean anything), measures over a short interval instead.
 */
static double cpu_percent(const char *cg, const char *proc, int ncpu)
{
	struct cpu_sample now = sample_cpu(cg, proc, ncpu);
	struct cpu_sample prev = last_cpu;

	if (!now.valid)
		return 0;
	if (!prev.valid || now.total - prev.total < 0.05 * ncpu) {
		prev = now;
		usleep(100 * 1000);
		now = sample_cpu(cg, proc, ncpu);
	}
	last_cpu = now;
	double dt = now.total - prev.total, db = now.busy - prev.busy;
	if (dt <= 0 || db < 0)
		return 0;
	double pct = db / dt * 100.0;
	return pct > 100.0 ? 100.0 : pct;
}

static int memory_from_cgroup(const char *cg, uint64_t host_total, struct agent_metrics *m)
{
	char buf[8192];
	uint64_t current, file = 0, inactive_file = 0;
	char *end;

	if (read_text(cg, "memory.current", buf, sizeof(buf)) < 0)
		return -ENOENT;
	current = strtoull(buf, &end, 10);
	if (end == buf)
		return -EINVAL;
	m->mem_total = host_total;
	if (read_text(cg, "memory.max", buf, sizeof(buf)) == 0 && strncmp(buf, "max", 3) != 0) {
		uint64_t limit = strtoull(buf, &end, 10);
		if (end != buf && limit > 0 && limit < host_total)
			m->mem_total = limit;
	}
	if (read_text(cg, "memory.stat", buf, sizeof(buf)) == 0) {
		find_u64(buf, "file", &file);
		find_u64(buf, "inactive_file", &inactive_file);
	}
	/* Like the kernel's own working-set estimate: reclaimable cache is not "used". */
	m->mem_used = current > inactive_file ? current - inactive_file : current;
	m->mem_cache = file;
	return 0;
}

static int collect_memory(const char *cg, const char *proc, struct agent_metrics *m,
			  struct herr *err)
{
	char buf[8192];
	uint64_t total, avail, cached = 0, buffers = 0;

	if (read_text(proc, "meminfo", buf, sizeof(buf)) < 0 ||
	    find_u64(buf, "MemTotal", &total) < 0 || find_u64(buf, "MemAvailable", &avail) < 0)
		return herr_set(err, -EIO, "reading %s/meminfo: no MemTotal/MemAvailable", proc);
	/* meminfo counts KiB */
	total *= 1024;
	avail *= 1024;
	if (memory_from_cgroup(cg, total, m) == 0)
		return 0;
	find_u64(buf, "Cached", &cached);
	find_u64(buf, "Buffers", &buffers);
	m->mem_total = total;
	m->mem_used = total > avail ? total - avail : 0;
	m->mem_cache = (cached + buffers) * 1024;
	return 0;
}

static int collect_disk(const char *path, struct agent_metrics *m, struct herr *err)
{
	struct statvfs v;

	if (statvfs(path, &v) < 0)
		return herr_sys(err, -errno, "statvfs '%s'", path);
	m->disk_total = (uint64_t)v.f_blocks * v.f_frsize;
	m->disk_used = (uint64_t)(v.f_blocks - v.f_bfree) * v.f_frsize;
	return 0;
}

int metrics_collect(struct agent_metrics *m, struct herr *err)
{
	int r;

	memset(m, 0, sizeof(*m));
	m->ts = (int64_t)time(NULL);
	/* One collector at a time: the CPU delta is against the previous call. */
	pthread_mutex_lock(&metrics_lock);
	m->cpu_count = cpu_count(cgroup_dir);
	m->cpu_used_pct = cpu_percent(cgroup_dir, proc_dir, m->cpu_count);
	r = collect_memory(cgroup_dir, proc_dir, m, err);
	if (r == 0)
		r = collect_disk(disk_path, m, err);
	pthread_mutex_unlock(&metrics_lock);
	return r;
}

char *metrics_to_json(const struct agent_metrics *m)
{
	json_t *o = json_pack("{s:I,s:i,s:f,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
			      "ts", (json_int_t)m->ts,
			      "cpu_count", m->cpu_count,
			      "cpu_used_pct", m->cpu_used_pct,
			      "mem_total", (json_int_t)m->mem_total,
			      "mem_used", (json_int_t)m->mem_used,
			      "mem_cache", (json_int_t)m->mem_cache,
			      "mem_total_mib", (json_int_t)(m->mem_total >> 20),
			      "mem_used_mib", (json_int_t)(m->mem_used >> 20),
			      "disk_used", (json_int_t)m->disk_used,
			      "disk_total", (json_int_t)m->disk_total);
	char *s;

	if (!o)
		return NULL;
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}
