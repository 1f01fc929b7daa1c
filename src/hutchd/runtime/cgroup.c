/*
 * Sandbox cgroups, on cgroup2-only hosts and on hybrid hosts (v1 controllers
 * plus a controller-less cgroup2 at /sys/fs/cgroup/unified).
 *
 * We only ever create, write and remove directories below our own subtree
 * (<mount>/<cg_name>/<id>); nothing else in any hierarchy is touched.
 *
 *   unified: /sys/fs/cgroup/<cg>/<id> carries memory, pids, cpu limits and
 *            freeze/kill; the init is cloned straight into it.
 *   hybrid:  v1 memory, pids, cpu, cpuacct at /sys/fs/cgroup/<ctrl>/<cg>/<id>
 *            for limits and accounting; /sys/fs/cgroup/unified/<cg>/<id> for
 *            CLONE_INTO_CGROUP, cgroup.freeze and cgroup.kill.
 *   legacy:  v1 only; freeze via the v1 freezer, kill via the pid-ns init.
 *
 * The memory OOM killer picks the largest process inside the sandbox, which is
 * a user process rather than the small agent; memory.oom.group stays 0 so an
 * OOM ends the culprit, not the whole sandbox.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "rt_internal.h"

#define CG_ROOT "/sys/fs/cgroup"
#define CG_UNIFIED CG_ROOT "/unified"

/* On hosts that co-mount cpu and cpuacct both names lead to one directory;
 * the second mkdir and attach are then harmless repeats. */
static const char *const v1_ctrls[] = { "memory", "pids", "cpu", "cpuacct" };

int rt_cg_detect(enum rt_cg_mode *mode, struct herr *err)
{
	struct statfs st;

	if (statfs(CG_ROOT, &st) < 0)
		return herr_sys(err, -errno, "statfs %s", CG_ROOT);
	if (st.f_type == CGROUP2_SUPER_MAGIC) {
		*mode = RT_CG_UNIFIED;
		return 0;
	}
	if (statfs(CG_UNIFIED, &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC)
		*mode = RT_CG_HYBRID;
	else
		*mode = RT_CG_LEGACY;
	return 0;
}

static void v1_path(char *buf, size_t len, const char *ctrl, const char *cg,
		    const char *id)
{
	if (id)
		snprintf(buf, len, CG_ROOT "/%s/%s/%s", ctrl, cg, id);
	else
		snprintf(buf, len, CG_ROOT "/%s/%s", ctrl, cg);
}

static void v2_path(const struct rt *rt, char *buf, size_t len, const char *id)
{
	const char *root = rt->cg_mode == RT_CG_UNIFIED ? CG_ROOT : CG_UNIFIED;

	if (id)
		snprintf(buf, len, "%s/%s/%s", root, rt->cg_name, id);
	else
		snprintf(buf, len, "%s/%s", root, rt->cg_name);
}

static int write_in(const char *dir, const char *file, const char *val, struct herr *err)
{
	char path[1024];

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	return rt_write_file(path, val, err);
}

static int make_dir(const char *path, struct herr *err)
{
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "mkdir %s", path);
	return 0;
}

int rt_cg_init(struct rt *rt, struct herr *err)
{
	char path[512];
	int r;

	if (rt->cg_mode != RT_CG_LEGACY) {
		v2_path(rt, path, sizeof(path), NULL);
		r = make_dir(path, err);
		if (r < 0)
			return r;
		if (rt->cg_mode == RT_CG_UNIFIED) {
			r = write_in(path, "cgroup.subtree_control", "+memory +pids +cpu", err);
			if (r < 0)
				return r;
		}
	}
	if (rt->cg_mode == RT_CG_UNIFIED)
		return 0;
	for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++) {
		v1_path(path, sizeof(path), v1_ctrls[i], rt->cg_name, NULL);
		r = make_dir(path, err);
		if (r < 0)
			return r;
	}
	if (rt->cg_mode == RT_CG_LEGACY) {
		v1_path(path, sizeof(path), "freezer", rt->cg_name, NULL);
		return make_dir(path, err);
	}
	return 0;
}

static int limits_v2(const char *dir, const struct rt_limits *lim, struct herr *err)
{
	char val[64];
	int r = 0;

	if (lim->memory_mb) {
		snprintf(val, sizeof(val), "%" PRIu64, lim->memory_mb << 20);
		r = write_in(dir, "memory.max", val, err);
		if (r == 0)
			r = write_in(dir, "memory.swap.max", "0", NULL) < 0 ? 0 : 0;
	}
	if (r == 0 && lim->pids) {
		snprintf(val, sizeof(val), "%u", lim->pids);
		r = write_in(dir, "pids.max", val, err);
	}
	if (r == 0 && lim->cpu_count) {
		snprintf(val, sizeof(val), "%u 100000", lim->cpu_count * 100000);
		r = write_in(dir, "cpu.max", val, err);
	}
	return r;
}

static int limits_v1(const char *ctrl, const char *dir, const struct rt_limits *lim,
		     struct herr *err)
{
	char val[64];

	if (strcmp(ctrl, "memory") == 0 && lim->memory_mb) {
		snprintf(val, sizeof(val), "%" PRIu64, lim->memory_mb << 20);
		return write_in(dir, "memory.limit_in_bytes", val, err);
	}
	if (strcmp(ctrl, "pids") == 0 && lim->pids) {
		snprintf(val, sizeof(val), "%u", lim->pids);
		return write_in(dir, "pids.max", val, err);
	}
	if (strcmp(ctrl, "cpu") == 0 && lim->cpu_count) {
		snprintf(val, sizeof(val), "%u", lim->cpu_count * 100000);
		int r = write_in(dir, "cpu.cfs_period_us", "100000", err);
		return r < 0 ? r : write_in(dir, "cpu.cfs_quota_us", val, err);
	}
	return 0;
}

int rt_cg_create(struct rt *rt, const char *id, const struct rt_limits *lim,
		 struct herr *err)
{
	char path[512];
	int r;

	if (rt->cg_mode != RT_CG_LEGACY) {
		v2_path(rt, path, sizeof(path), id);
		r = make_dir(path, err);
		if (r == 0 && rt->cg_mode == RT_CG_UNIFIED)
			r = limits_v2(path, lim, err);
		if (r < 0)
			return r;
	}
	if (rt->cg_mode == RT_CG_UNIFIED)
		return 0;
	for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++) {
		v1_path(path, sizeof(path), v1_ctrls[i], rt->cg_name, id);
		r = make_dir(path, err);
		if (r == 0)
			r = limits_v1(v1_ctrls[i], path, lim, err);
		if (r < 0)
			return r;
	}
	if (rt->cg_mode == RT_CG_LEGACY) {
		v1_path(path, sizeof(path), "freezer", rt->cg_name, id);
		return make_dir(path, err);
	}
	return 0;
}

int rt_cg_open_leaf(struct rt *rt, const char *id)
{
	char path[512];

	if (rt->cg_mode == RT_CG_LEGACY)
		return -1;
	v2_path(rt, path, sizeof(path), id);
	return open(path, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
}

int rt_cg_attach(struct rt *rt, const char *id, pid_t pid, struct herr *err)
{
	char path[512], val[32];
	int r;

	if (rt->cg_mode == RT_CG_UNIFIED)
		return 0; /* cloned into it */
	snprintf(val, sizeof(val), "%d", pid);
	for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++) {
		v1_path(path, sizeof(path), v1_ctrls[i], rt->cg_name, id);
		r = write_in(path, "cgroup.procs", val, err);
		if (r < 0)
			return r;
	}
	if (rt->cg_mode == RT_CG_LEGACY) {
		v1_path(path, sizeof(path), "freezer", rt->cg_name, id);
		return write_in(path, "cgroup.procs", val, err);
	}
	return 0;
}

int rt_cg_kill(struct rt *rt, const char *id, pid_t init_pid)
{
	char path[512];

	if (rt->cg_mode != RT_CG_LEGACY) {
		v2_path(rt, path, sizeof(path), id);
		if (write_in(path, "cgroup.kill", "1", NULL) == 0)
			return 0;
	}
	/* Killing a pid namespace's init kills every process in it. */
	if (init_pid > 0 && kill(init_pid, SIGKILL) < 0 && errno != ESRCH)
		return -errno;
	return 0;
}

int rt_cg_freeze(struct rt *rt, const char *id, bool frozen, struct herr *err)
{
	char path[512];

	if (rt->cg_mode != RT_CG_LEGACY) {
		v2_path(rt, path, sizeof(path), id);
		return write_in(path, "cgroup.freeze", frozen ? "1" : "0", err);
	}
	v1_path(path, sizeof(path), "freezer", rt->cg_name, id);
	return write_in(path, "freezer.state", frozen ? "FROZEN" : "THAWED", err);
}

static int rmdir_retry(const char *path, struct herr *err)
{
	/* Tasks that were just killed leave the cgroup a moment later. */
	for (int i = 0; i < 200; i++) {
		if (rmdir(path) == 0 || errno == ENOENT)
			return 0;
		if (errno != EBUSY)
			break;
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return herr_sys(err, -errno, "rmdir %s", path);
}

int rt_cg_destroy(struct rt *rt, const char *id, struct herr *err)
{
	char path[512];
	int r = 0, r2;

	if (rt->cg_mode != RT_CG_LEGACY) {
		v2_path(rt, path, sizeof(path), id);
		r = rmdir_retry(path, err);
	}
	if (rt->cg_mode == RT_CG_UNIFIED)
		return r;
	for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++) {
		v1_path(path, sizeof(path), v1_ctrls[i], rt->cg_name, id);
		r2 = rmdir_retry(path, err);
		if (r2 < 0)
			r = r2;
	}
	if (rt->cg_mode == RT_CG_LEGACY) {
		v1_path(path, sizeof(path), "freezer", rt->cg_name, id);
		r2 = rmdir_retry(path, err);
		if (r2 < 0)
			r = r2;
	}
	return r;
}

bool rt_cg_exists(struct rt *rt, const char *id)
{
	char path[512];

	if (rt->cg_mode == RT_CG_LEGACY)
		v1_path(path, sizeof(path), "memory", rt->cg_name, id);
	else
		v2_path(rt, path, sizeof(path), id);
	return access(path, F_OK) == 0;
}

/* Reads "key value" from a flat-keyed cgroup file. */
static uint64_t read_keyed(const char *path, const char *key)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	char line[256];
	size_t klen = strlen(key);

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, klen) == 0 && line[klen] == ' ')
			return strtoull(line + klen + 1, NULL, 10);
	return 0;
}

uint64_t rt_cg_oom_kills(struct rt *rt, const char *id)
{
	char path[512];

	if (rt->cg_mode == RT_CG_UNIFIED) {
		v2_path(rt, path, sizeof(path), id);
		strncat(path, "/memory.events", sizeof(path) - strlen(path) - 1);
		/* A group kill (memory.oom.group, should anyone set it) counts apart. */
		return read_keyed(path, "oom_kill") + read_keyed(path, "oom_group_kill");
	}
	v1_path(path, sizeof(path), "memory", rt->cg_name, id);
	strncat(path, "/memory.oom_control", sizeof(path) - strlen(path) - 1);
	return read_keyed(path, "oom_kill");
}

/* "max" in pids.events: forks refused because this cgroup was at pids.max. */
uint64_t rt_cg_pids_refused(struct rt *rt, const char *id)
{
	char path[512];

	if (rt->cg_mode == RT_CG_UNIFIED)
		v2_path(rt, path, sizeof(path), id);
	else
		v1_path(path, sizeof(path), "pids", rt->cg_name, id);
	strncat(path, "/pids.events", sizeof(path) - strlen(path) - 1);
	return read_keyed(path, "max");
}

static uint64_t read_in(const char *dir, const char *file)
{
	char path[1024];
	uint64_t v = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	rt_read_u64(path, &v);
	return v;
}

void rt_cg_stats(struct rt *rt, const char *id, struct rt_info *info)
{
	char path[512];

	if (rt->cg_mode == RT_CG_UNIFIED) {
		v2_path(rt, path, sizeof(path), id);
		info->memory_bytes = read_in(path, "memory.current");
		info->memory_peak = read_in(path, "memory.peak");
		info->pids = (unsigned)read_in(path, "pids.current");
		strncat(path, "/cpu.stat", sizeof(path) - strlen(path) - 1);
		info->cpu_usec = read_keyed(path, "usage_usec");
	} else {
		v1_path(path, sizeof(path), "memory", rt->cg_name, id);
		info->memory_bytes = read_in(path, "memory.usage_in_bytes");
		info->memory_peak = read_in(path, "memory.max_usage_in_bytes");
		v1_path(path, sizeof(path), "pids", rt->cg_name, id);
		info->pids = (unsigned)read_in(path, "pids.current");
		v1_path(path, sizeof(path), "cpuacct", rt->cg_name, id);
		info->cpu_usec = read_in(path, "cpuacct.usage") / 1000;
	}
	info->oom_kills = rt_cg_oom_kills(rt, id);
}

uint64_t rt_cg_dumpable_bytes(struct rt *rt, const char *id)
{
	char path[512];

	if (rt->cg_mode == RT_CG_UNIFIED) {
		v2_path(rt, path, sizeof(path), id);
		strncat(path, "/memory.stat", sizeof(path) - strlen(path) - 1);
		return read_keyed(path, "anon") + read_keyed(path, "shmem");
	}
	v1_path(path, sizeof(path), "memory", rt->cg_name, id);
	strncat(path, "/memory.stat", sizeof(path) - strlen(path) - 1);
	return read_keyed(path, "total_rss") + read_keyed(path, "total_shmem");
}

/* ---------- pooled cgroups (see prep.c) ---------- */

/* The v1 directories a sandbox has in this mode: the controllers, and the
 * freezer on legacy hosts. Returns how many names were put in out[]. */
static size_t v1_dirs(const struct rt *rt, const char *out[5])
{
	size_t n = 0;

	if (rt->cg_mode == RT_CG_UNIFIED)
		return 0;
	for (size_t i = 0; i < sizeof(v1_ctrls) / sizeof(v1_ctrls[0]); i++)
		out[n++] = v1_ctrls[i];
	if (rt->cg_mode == RT_CG_LEGACY)
		out[n++] = "freezer";
	return n;
}

int rt_cg_pool_create(struct rt *rt, const char *name, struct herr *err)
{
	const char *ctrls[5];
	size_t n = v1_dirs(rt, ctrls);
	char path[512];

	for (size_t i = 0; i < n; i++) {
		v1_path(path, sizeof(path), ctrls[i], rt->cg_name, name);
		int r = make_dir(path, err);
		if (r < 0)
			return r;
	}
	return 0;
}

int rt_cg_attach_self(struct rt *rt, const char *name)
{
	const char *ctrls[5];
	size_t n = v1_dirs(rt, ctrls);
	char path[512];

	for (size_t i = 0; i < n; i++) {
		v1_path(path, sizeof(path), ctrls[i], rt->cg_name, name);
		int r = write_in(path, "cgroup.procs", "0", NULL);
		if (r < 0)
			return r;
	}
	return 0;
}


int rt_cg_from_pool(struct rt *rt, const char *name, const char *id,
		    const struct rt_limits *lim, struct herr *err)
{
	const char *ctrls[5];
	size_t n = v1_dirs(rt, ctrls);
	char from[512], to[512];
	int r;

	for (size_t i = 0; i < n; i++) {
		v1_path(from, sizeof(from), ctrls[i], rt->cg_name, name);
		v1_path(to, sizeof(to), ctrls[i], rt->cg_name, id);
		/* v1 cgroups can be renamed within their parent; the tasks
		 * in them stay. */
		if (rename(from, to) < 0)
			return herr_sys(err, -errno, "rename %s to %s", from, to);
	}
	if (rt->cg_mode == RT_CG_HYBRID) {
		v2_path(rt, to, sizeof(to), id);
		r = make_dir(to, err);
		if (r < 0)
			return r;
	}
	/* The pooled keeper counts as a task until it leaves; it then writes
	 * the exact limit (rt_cg_keeper_leave). */
	struct rt_limits spawn_lim = *lim;
	if (spawn_lim.pids)
		spawn_lim.pids++;
	for (size_t i = 0; i < n; i++) {
		v1_path(to, sizeof(to), ctrls[i], rt->cg_name, id);
		r = limits_v1(ctrls[i], to, &spawn_lim, err);
		if (r < 0)
			return r;
	}
	return 0;
}

void rt_cg_keeper_leave(struct rt *rt, const char *id, const struct rt_limits *lim)
{
	const char *ctrls[5];
	size_t n = v1_dirs(rt, ctrls);
	char path[512];

	/* The exact pids limit first: written after the move, the sandbox
	 * could take the freed place in between and end up one over. */
	if (lim->pids) {
		v1_path(path, sizeof(path), "pids", rt->cg_name, id);
		limits_v1("pids", path, lim, NULL);
	}
	/* Into our own parent directories: the keeper's memory and tasks then
	 * count for the runtime, not for the sandbox. */
	for (size_t i = 0; i < n; i++) {
		v1_path(path, sizeof(path), ctrls[i], rt->cg_name, NULL);
		write_in(path, "cgroup.procs", "0", NULL);
	}
}

void rt_cg_pool_leftovers(struct rt *rt)
{
	const char *ctrls[5];
	size_t n = v1_dirs(rt, ctrls);
	char path[512];

	for (size_t i = 0; i < n; i++) {
		v1_path(path, sizeof(path), ctrls[i], rt->cg_name, NULL);
		_cleanup_closedir_ DIR *d = opendir(path);
		struct dirent *e;
		while (d && (e = readdir(d)))
			if (strncmp(e->d_name, ".pool-", 6) == 0 &&
			    unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) < 0)
				log_warn("runtime", NULL, "cannot remove %s/%s: %s", path,
					 e->d_name, strerror(errno));
	}
}
