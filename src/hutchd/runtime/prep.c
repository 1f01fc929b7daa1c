/*
 * Objects prepared ahead of creates, so that the request path does not pay
 * for them (the network pool is in net.c):
 *
 *  - disks: sandbox disk images already formatted (mkfs.ext4 is the slowest
 *    step of a create), attached to an autoclear loop device and mounted as a
 *    detached fsmount. A create renames the image into the sandbox's folder
 *    (the loop device follows the inode, not the name) and hands the mount
 *    on, so rt_disk_mount_fd() by id still finds the same file later.
 *  - runners (v1 and hybrid cgroup hosts): a set of cgroup directories in
 *    every v1 controller, named ".pool-<i>" (ids cannot contain a dot), and a
 *    parked thread of ours already attached to them. Attaching a task to a v1
 *    cgroup takes cgroup_threadgroup_rwsem for writing, which after an idle
 *    spell waits for an RCU grace period (7-11 ms on our hosts); the runner
 *    pays that here. A create renames the directories to the sandbox id and
 *    lets the runner fork the keeper: the keeper, and the init it clones,
 *    are born in the sandbox's cgroups with no attach on the request path.
 *    The keeper moves itself out to our parent cgroup once it has reported.
 *
 * Both pools reuse the lowest free index, so a full pool always has the same
 * names (the leak tests compare pictures of the host). rt_shutdown removes
 * everything here; rt_init removes what a crashed process left.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "rt_internal.h"

#define PREP_DISKS_MAX 8

enum runner_state { RUNNER_ATTACHING, RUNNER_PARKED, RUNNER_JOB, RUNNER_DONE, RUNNER_EXIT };

struct rt_runner {
	struct rt *rt;
	unsigned index;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum runner_state state;
	int attach_err;               /* negative errno of the self-attach */
	pid_t (*job)(void *arg);
	void *job_arg;
	pid_t job_result;
};

struct rt_prep_disk {
	unsigned index;
	uint64_t mb;
	int mount_fd;
};

static void pool_name(char *buf, size_t len, unsigned index)
{
	snprintf(buf, len, ".pool-%u", index);
}

static void disk_pool_path(const struct rt *rt, char *buf, size_t len, unsigned index)
{
	snprintf(buf, len, "%s/pool/disk-%u.img", rt->data_dir, index);
}

/* ---------- runners ---------- */

static void *runner_main(void *arg)
{
	struct rt_runner *run = arg;
	char name[32];

	pool_name(name, sizeof(name), run->index);
	int r = rt_cg_attach_thread(run->rt, name, (pid_t)syscall(SYS_gettid));

	pthread_mutex_lock(&run->lock);
	run->attach_err = r;
	run->state = r < 0 ? RUNNER_EXIT : RUNNER_PARKED;
	pthread_cond_broadcast(&run->cond);
	while (run->state == RUNNER_PARKED)
		pthread_cond_wait(&run->cond, &run->lock);
	if (run->state == RUNNER_JOB) {
		pthread_mutex_unlock(&run->lock);
		pid_t pid = run->job(run->job_arg);
		pthread_mutex_lock(&run->lock);
		run->job_result = pid;
		run->state = RUNNER_DONE;
		pthread_cond_broadcast(&run->cond);
	}
	pthread_mutex_unlock(&run->lock);
	/* Leaving: the thread's exit takes it out of the cgroups. */
	return NULL;
}

static void runner_free(struct rt_runner *run)
{
	pthread_join(run->thread, NULL);
	pthread_cond_destroy(&run->cond);
	pthread_mutex_destroy(&run->lock);
	free(run);
}

/* Makes the directories and a thread attached to them; NULL on failure. */
static struct rt_runner *runner_make(struct rt *rt, unsigned index, struct herr *err)
{
	struct rt_runner *run = calloc(1, sizeof(*run));
	char name[32];
	pthread_attr_t attr;

	if (!run) {
		herr_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	pool_name(name, sizeof(name), index);
	if (rt_cg_pool_create(rt, name, err) < 0) {
		rt_cg_destroy(rt, name, NULL);
		free(run);
		return NULL;
	}
	run->rt = rt;
	run->index = index;
	run->state = RUNNER_ATTACHING;
	pthread_mutex_init(&run->lock, NULL);
	pthread_cond_init(&run->cond, NULL);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 1024 * 1024);
	int pr = pthread_create(&run->thread, &attr, runner_main, run);
	pthread_attr_destroy(&attr);
	if (pr != 0) {
		herr_set(err, -pr, "starting a cgroup runner thread");
		rt_cg_destroy(rt, name, NULL);
		pthread_cond_destroy(&run->cond);
		pthread_mutex_destroy(&run->lock);
		free(run);
		return NULL;
	}
	pthread_mutex_lock(&run->lock);
	while (run->state == RUNNER_ATTACHING)
		pthread_cond_wait(&run->cond, &run->lock);
	int r = run->attach_err;
	pthread_mutex_unlock(&run->lock);
	if (r < 0) {
		herr_sys(err, r, "attaching a runner to cgroup %s", name);
		runner_free(run);
		rt_cg_destroy(rt, name, NULL);
		return NULL;
	}
	return run;
}

/* Ends a runner that will get no job; its directories are the caller's. */
static void runner_end(struct rt_runner *run)
{
	pthread_mutex_lock(&run->lock);
	if (run->state == RUNNER_PARKED)
		run->state = RUNNER_EXIT;
	pthread_cond_broadcast(&run->cond);
	pthread_mutex_unlock(&run->lock);
	runner_free(run);
}

pid_t rt_runner_run(struct rt_runner *run, pid_t (*job)(void *arg), void *arg)
{
	pthread_mutex_lock(&run->lock);
	run->job = job;
	run->job_arg = arg;
	run->state = RUNNER_JOB;
	pthread_cond_broadcast(&run->cond);
	while (run->state != RUNNER_DONE)
		pthread_cond_wait(&run->cond, &run->lock);
	pid_t pid = run->job_result;
	pthread_mutex_unlock(&run->lock);
	runner_free(run);
	return pid;
}

void rt_runner_cancel(struct rt_runner *run)
{
	if (run)
		runner_end(run);
}

/*
 * Gives the sandbox a pooled runner: its directories are renamed to the id
 * and the limits written. Returns NULL when the pool is empty (or off) and
 * the caller makes the cgroups the ordinary way.
 */
struct rt_runner *rt_prep_take_runner(struct rt *rt, const char *id,
				      const struct rt_limits *lim, struct herr *err,
				      int *res)
{
	struct rt_runner *run = NULL;
	char name[32];

	*res = 0;
	pthread_mutex_lock(&rt->prep_lock);
	for (unsigned i = 0; i < rt->prep_size && !run; i++)
		if (rt->runners[i]) {
			run = rt->runners[i];
			rt->runners[i] = NULL;
		}
	pthread_cond_signal(&rt->prep_cond);
	pthread_mutex_unlock(&rt->prep_lock);
	if (!run)
		return NULL;

	pool_name(name, sizeof(name), run->index);
	*res = rt_cg_from_pool(rt, name, id, lim, err);
	if (*res < 0) {
		runner_end(run);
		rt_cg_destroy(rt, name, NULL); /* what was not renamed yet */
	}
	pthread_mutex_lock(&rt->prep_lock);
	rt->index_busy[run->index] = false;
	pthread_mutex_unlock(&rt->prep_lock);
	return *res < 0 ? NULL : run;
}

/* ---------- disks ---------- */

static int disk_make(struct rt *rt, unsigned index, uint64_t mb, struct rt_prep_disk *out,
		     struct herr *err)
{
	char path[4096];

	disk_pool_path(rt, path, sizeof(path), index);
	unlink(path); /* a leftover of ours: pool files are never handed out by name */
	int r = rt_disk_format(path, mb, err);
	if (r < 0)
		return r;
	out->mount_fd = rt_disk_mount_path(path, err);
	if (out->mount_fd < 0) {
		unlink(path);
		return out->mount_fd;
	}
	out->index = index;
	out->mb = mb;
	return 0;
}

static void disk_drop(struct rt *rt, struct rt_prep_disk *d)
{
	char path[4096];

	disk_pool_path(rt, path, sizeof(path), d->index);
	close(d->mount_fd); /* unmounts; the loop device detaches itself */
	unlink(path);
}

int rt_prep_take_disk(struct rt *rt, const char *target, uint64_t mb, struct herr *err)
{
	struct rt_prep_disk d = { .mount_fd = -1 };
	char path[4096];

	pthread_mutex_lock(&rt->prep_lock);
	rt->disk_mb_wanted = mb; /* the pool follows what creates ask for */
	for (unsigned i = 0; i < rt->prep_disks && d.mount_fd < 0; i++)
		if (rt->disks[i].mount_fd >= 0 && rt->disks[i].mb == mb) {
			d = rt->disks[i];
			rt->disks[i].mount_fd = -1;
		}
	pthread_cond_signal(&rt->prep_cond);
	pthread_mutex_unlock(&rt->prep_lock);
	if (d.mount_fd < 0)
		return -ENOENT;

	disk_pool_path(rt, path, sizeof(path), d.index);
	/* Same file system (both under data_dir): an atomic rename. */
	if (rename(path, target) < 0) {
		int r = herr_sys(err, -errno, "rename %s to %s", path, target);
		disk_drop(rt, &d);
		return r;
	}
	pthread_mutex_lock(&rt->prep_lock);
	rt->disk_index_busy[d.index] = false;
	pthread_mutex_unlock(&rt->prep_lock);
	return d.mount_fd;
}

/* ---------- the refill thread ---------- */

static int free_index(bool *busy, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (!busy[i]) {
			busy[i] = true;
			return (int)i;
		}
	return -1;
}

/* One piece of work, chosen under the lock; false when there is none. */
static bool refill_one(struct rt *rt)
{
	struct herr err;
	int slot = -1, index;

	for (unsigned i = 0; i < rt->prep_size && rt->runners_on; i++)
		if (!rt->runners[i] && (index = free_index(rt->index_busy, rt->prep_size)) >= 0) {
			slot = (int)i;
			break;
		}
	if (slot >= 0) {
		pthread_mutex_unlock(&rt->prep_lock);
		struct rt_runner *run = runner_make(rt, (unsigned)index, &err);
		pthread_mutex_lock(&rt->prep_lock);
		if (!run) {
			rt->index_busy[index] = false;
			log_warn("runtime", NULL, "cgroup pool: %s", err.msg);
			return false;
		}
		rt->runners[slot] = run;
		return true;
	}

	/* A disk of a size nobody asks for any more makes room for one that is. */
	for (unsigned i = 0; i < rt->prep_disks; i++) {
		struct rt_prep_disk *d = &rt->disks[i];
		if (d->mount_fd >= 0 && d->mb != rt->disk_mb_wanted) {
			struct rt_prep_disk old = *d;
			d->mount_fd = -1;
			pthread_mutex_unlock(&rt->prep_lock);
			disk_drop(rt, &old);
			pthread_mutex_lock(&rt->prep_lock);
			rt->disk_index_busy[old.index] = false;
			return true;
		}
	}
	for (unsigned i = 0; i < rt->prep_disks; i++) {
		if (rt->disks[i].mount_fd >= 0)
			continue;
		index = free_index(rt->disk_index_busy, rt->prep_disks);
		if (index < 0)
			return false;
		uint64_t mb = rt->disk_mb_wanted;
		struct rt_prep_disk d;
		pthread_mutex_unlock(&rt->prep_lock);
		int r = disk_make(rt, (unsigned)index, mb, &d, &err);
		pthread_mutex_lock(&rt->prep_lock);
		if (r < 0) {
			rt->disk_index_busy[index] = false;
			log_warn("runtime", NULL, "disk pool: %s", err.msg);
			return false;
		}
		if (rt->disks[i].mount_fd >= 0 || !rt->prep_running) {
			pthread_mutex_unlock(&rt->prep_lock);
			disk_drop(rt, &d);
			pthread_mutex_lock(&rt->prep_lock);
			rt->disk_index_busy[index] = false;
			return true;
		}
		rt->disks[i] = d;
		return true;
	}
	return false;
}

static void *prep_main(void *arg)
{
	struct rt *rt = arg;

	pthread_mutex_lock(&rt->prep_lock);
	while (rt->prep_running) {
		if (refill_one(rt))
			continue;
		/* Nothing to do, or it failed: wait for a take, or a second. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&rt->prep_cond, &rt->prep_lock, &ts);
	}
	pthread_mutex_unlock(&rt->prep_lock);
	return NULL;
}

/* Removes pool objects a crashed process of ours left behind. */
static void remove_leftovers(struct rt *rt)
{
	char path[4096];

	rt_cg_pool_leftovers(rt);
	snprintf(path, sizeof(path), "%s/pool", rt->data_dir);
	_cleanup_closedir_ DIR *d = opendir(path);
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (strncmp(e->d_name, "disk-", 5) == 0)
			unlinkat(dirfd(d), e->d_name, 0);
}

int rt_prep_init(struct rt *rt, struct herr *err)
{
	char path[4096];

	pthread_mutex_init(&rt->prep_lock, NULL);
	pthread_cond_init(&rt->prep_cond, NULL);
	rt->prep_inited = true;
	rt->prep_size = rt->pool_size;
	rt->prep_disks = rt->pool_size < PREP_DISKS_MAX ? rt->pool_size : PREP_DISKS_MAX;
	rt->disk_mb_wanted = RT_DEFAULT_DISK_MB;
	/* Only where a v1 attach would otherwise sit on the request path. */
	rt->runners_on = rt->cg_mode != RT_CG_UNIFIED;

	snprintf(path, sizeof(path), "%s/pool", rt->data_dir);
	int r = rt_mkdir_p(path, 0700, err);
	if (r < 0)
		return r;
	remove_leftovers(rt);
	if (!rt->pool_size)
		return 0;
	rt->runners = calloc(rt->prep_size, sizeof(*rt->runners));
	rt->index_busy = calloc(rt->prep_size, sizeof(*rt->index_busy));
	rt->disks = calloc(rt->prep_disks, sizeof(*rt->disks));
	rt->disk_index_busy = calloc(rt->prep_disks, sizeof(*rt->disk_index_busy));
	if (!rt->runners || !rt->index_busy || !rt->disks || !rt->disk_index_busy)
		return herr_set(err, -ENOMEM, "prepared pools: out of memory");
	for (unsigned i = 0; i < rt->prep_disks; i++)
		rt->disks[i].mount_fd = -1;
	rt->prep_running = true;
	if (pthread_create(&rt->prep_thread, NULL, prep_main, rt) != 0) {
		rt->prep_running = false;
		return herr_set(err, -EAGAIN, "starting the prepared-pool thread");
	}
	rt->prep_thread_on = true;
	return 0;
}

void rt_prep_shutdown(struct rt *rt)
{
	char path[4096];

	if (!rt->prep_inited)
		return;
	pthread_mutex_lock(&rt->prep_lock);
	rt->prep_running = false;
	pthread_cond_broadcast(&rt->prep_cond);
	pthread_mutex_unlock(&rt->prep_lock);
	if (rt->prep_thread_on)
		pthread_join(rt->prep_thread, NULL);
	rt->prep_thread_on = false;

	for (unsigned i = 0; rt->runners && i < rt->prep_size; i++) {
		struct rt_runner *run = rt->runners[i];
		char name[32];
		if (!run)
			continue;
		pool_name(name, sizeof(name), run->index);
		runner_end(run);
		rt_cg_destroy(rt, name, NULL);
	}
	for (unsigned i = 0; rt->disks && i < rt->prep_disks; i++)
		if (rt->disks[i].mount_fd >= 0)
			disk_drop(rt, &rt->disks[i]);
	snprintf(path, sizeof(path), "%s/pool", rt->data_dir);
	rmdir(path);
	free(rt->runners);
	free(rt->index_busy);
	free(rt->disks);
	free(rt->disk_index_busy);
	rt->runners = NULL;
	rt->disks = NULL;
	pthread_cond_destroy(&rt->prep_cond);
	pthread_mutex_destroy(&rt->prep_lock);
	rt->prep_inited = false;
}
