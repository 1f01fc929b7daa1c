/*
 * Objects prepared ahead of creates, so that the request path does not pay
 * for them (the network pool is in net.c):
 *
 *  - disks: sandbox disk images already formatted (mkfs.ext4 is the slowest
 *    step of a create), attached to an autoclear loop device and mounted as a
 *    detached fsmount. A create renames the image into the sandbox's folder
 *    (the loop device follows the inode, not the name) and hands the mount
 *    on, so rt_disk_mount_fd() by id still finds the same file later.
 *  - keepers (v1 and hybrid cgroup hosts): a set of cgroup directories in
 *    every v1 controller, named ".pool-<i>" (ids cannot contain a dot), and a
 *    keeper process forked ahead that moved itself into them. Attaching a
 *    task to a v1 cgroup takes cgroup_threadgroup_rwsem for writing, which
 *    after an idle spell waits for an RCU grace period (7-11 ms on our
 *    hosts); the pooled keeper pays that here, and the fork of hutchd too.
 *    A create renames the directories to the sandbox id and hands the
 *    sandbox to the keeper (spawn.c): the init it clones is born in the
 *    sandbox's cgroups, with no attach on the request path. The keeper
 *    moves out to our parent cgroups later, when this thread tells it to
 *    (see rt_prep_keeper_leave).
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "rt_internal.h"

#define PREP_DISKS_MAX 8

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

/* ---------- pooled keepers ---------- */

/* Makes the directories and a keeper waiting in them. */
static int zygote_make(struct rt *rt, unsigned index, struct rt_zygote *z, struct herr *err)
{
	char name[32];

	pool_name(name, sizeof(name), index);
	int r = rt_cg_pool_create(rt, name, err);
	if (r == 0)
		r = rt_zygote_start(rt, name, z, err);
	if (r < 0)
		rt_cg_destroy(rt, name, NULL);
	return r;
}

int rt_prep_take_zygote(struct rt *rt, const char *id, const struct rt_limits *lim,
			struct rt_zygote *out, struct herr *err)
{
	struct rt_zygote z = { 0 };
	unsigned index = 0;
	char name[32];

	pthread_mutex_lock(&rt->prep_lock);
	for (unsigned i = 0; i < rt->prep_size && !z.pid; i++)
		if (rt->zygotes[i].pid) {
			z = rt->zygotes[i];
			index = rt->zygote_index[i];
			rt->zygotes[i] = (struct rt_zygote){ .sock = -1 };
		}
	pthread_cond_signal(&rt->prep_cond);
	pthread_mutex_unlock(&rt->prep_lock);
	if (!z.pid)
		return -ENOENT;

	pool_name(name, sizeof(name), index);
	int r = rt_cg_from_pool(rt, name, id, lim, err);
	if (r < 0) {
		rt_zygote_stop(&z);
		rt_cg_destroy(rt, name, NULL); /* what was not renamed yet */
	}
	pthread_mutex_lock(&rt->prep_lock);
	rt->index_busy[index] = false;
	pthread_mutex_unlock(&rt->prep_lock);
	if (r == 0)
		*out = z;
	return r;
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
	int index;

	for (unsigned i = 0; i < rt->prep_size && rt->zygotes_on; i++) {
		if (rt->zygotes[i].pid)
			continue;
		index = free_index(rt->index_busy, rt->prep_size);
		if (index < 0)
			break;
		struct rt_zygote z;
		pthread_mutex_unlock(&rt->prep_lock);
		int r = zygote_make(rt, (unsigned)index, &z, &err);
		pthread_mutex_lock(&rt->prep_lock);
		if (r < 0) {
			rt->index_busy[index] = false;
			log_warn("runtime", NULL, "keeper pool: %s", err.msg);
			return false;
		}
		rt->zygotes[i] = z;
		rt->zygote_index[i] = (unsigned)index;
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

/* ---------- keepers leaving the sandbox cgroups ---------- */

/*
 * Keepers leave some time after their create: a sandbox destroyed before
 * then never pays the attach at all (the keeper ends with it), and the
 * leaves of a burst of creates are batched into one grace period.
 */
#define LEAVE_AFTER_MS 200

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void rt_prep_keeper_leave(struct rt *rt, int leave_fd)
{
	pthread_mutex_lock(&rt->prep_lock);
	if (rt->n_leave == 0)
		rt->leave_due_ms = mono_ms() + LEAVE_AFTER_MS;
	if (rt->n_leave == rt->cap_leave) {
		unsigned cap = rt->cap_leave ? rt->cap_leave * 2 : 16;
		int *grown = realloc(rt->leave_fds, cap * sizeof(*grown));
		if (!grown) {
			pthread_mutex_unlock(&rt->prep_lock);
			close(leave_fd); /* EOF: the keeper leaves at once */
			return;
		}
		rt->leave_fds = grown;
		rt->cap_leave = cap;
	}
	rt->leave_fds[rt->n_leave++] = leave_fd;
	pthread_cond_signal(&rt->prep_cond);
	pthread_mutex_unlock(&rt->prep_lock);
}

/* Called with prep_lock held; drops it while writing. */
static void let_keepers_leave(struct rt *rt)
{
	unsigned n = rt->n_leave;
	int *fds = rt->leave_fds;

	rt->leave_fds = NULL;
	rt->n_leave = rt->cap_leave = 0;
	pthread_mutex_unlock(&rt->prep_lock);
	/* All at once: their attach writes then share one grace period. */
	for (unsigned i = 0; i < n; i++) {
		/* MSG_NOSIGNAL: a keeper that already ended must not SIGPIPE us */
		if (send(fds[i], "L", 1, MSG_NOSIGNAL) < 0) {
			/* the keeper is gone; nothing to move */
		}
		close(fds[i]);
	}
	free(fds);
	pthread_mutex_lock(&rt->prep_lock);
}

void rt_prep_create_begin(struct rt *rt)
{
	if (!rt->prep_inited)
		return;
	pthread_mutex_lock(&rt->prep_lock);
	rt->creating++;
	pthread_mutex_unlock(&rt->prep_lock);
}

void rt_prep_create_end(struct rt *rt)
{
	if (!rt->prep_inited)
		return;
	pthread_mutex_lock(&rt->prep_lock);
	rt->creating--;
	pthread_cond_signal(&rt->prep_cond);
	pthread_mutex_unlock(&rt->prep_lock);
}

static void wait_ms(struct rt *rt, long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000000;
	ts.tv_sec += ts.tv_nsec / 1000000000;
	ts.tv_nsec %= 1000000000;
	pthread_cond_timedwait(&rt->prep_cond, &rt->prep_lock, &ts);
}

/* True when the next create finds a keeper and a disk of the wanted size. */
static bool pool_ready(const struct rt *rt)
{
	bool zygote = !rt->zygotes_on, disk = false;

	for (unsigned i = 0; i < rt->prep_size && !zygote; i++)
		zygote = rt->zygotes[i].pid != 0;
	for (unsigned i = 0; i < rt->prep_disks && !disk; i++)
		disk = rt->disks[i].mount_fd >= 0 && rt->disks[i].mb == rt->disk_mb_wanted;
	return zygote && disk;
}

/*
 * Pool work (forks, cgroup mkdir and attach, mkfs, mounts) competes with
 * creates for the CPU and for cgroup_mutex, so while the next create would
 * still find what it needs, it waits while a create is running, for at most
 * ~100 ms at a stretch so a steady stream of creates cannot starve the pools.
 * An empty pool is refilled at once: creates are on the slow path then.
 */
#define QUIET_WAIT_MS 20
#define QUIET_WAITS_MAX 5

static void *prep_main(void *arg)
{
	struct rt *rt = arg;
	int waited = 0;

	pthread_mutex_lock(&rt->prep_lock);
	while (rt->prep_running) {
		if (rt->creating && waited < QUIET_WAITS_MAX && pool_ready(rt)) {
			wait_ms(rt, QUIET_WAIT_MS);
			waited++;
			continue;
		}
		waited = 0;
		uint64_t now = mono_ms();
		if (rt->n_leave && now >= rt->leave_due_ms) {
			let_keepers_leave(rt);
			continue;
		}
		if (refill_one(rt))
			continue;
		/* Nothing to do, or it failed: wait for a take, the next leave,
		 * or a second. */
		long pause = 1000;
		if (rt->n_leave && rt->leave_due_ms - now < (uint64_t)pause)
			pause = (long)(rt->leave_due_ms - now);
		wait_ms(rt, pause);
	}
	if (rt->n_leave)
		let_keepers_leave(rt);
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
	rt->zygotes_on = rt->cg_mode != RT_CG_UNIFIED;

	snprintf(path, sizeof(path), "%s/pool", rt->data_dir);
	int r = rt_mkdir_p(path, 0700, err);
	if (r < 0)
		return r;
	remove_leftovers(rt);
	if (!rt->pool_size)
		return 0;
	rt->zygotes = calloc(rt->prep_size, sizeof(*rt->zygotes));
	rt->zygote_index = calloc(rt->prep_size, sizeof(*rt->zygote_index));
	rt->index_busy = calloc(rt->prep_size, sizeof(*rt->index_busy));
	rt->disks = calloc(rt->prep_disks, sizeof(*rt->disks));
	rt->disk_index_busy = calloc(rt->prep_disks, sizeof(*rt->disk_index_busy));
	if (!rt->zygotes || !rt->zygote_index || !rt->index_busy || !rt->disks ||
	    !rt->disk_index_busy)
		return herr_set(err, -ENOMEM, "prepared pools: out of memory");
	for (unsigned i = 0; i < rt->prep_size; i++)
		rt->zygotes[i].sock = -1;
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

	for (unsigned i = 0; rt->zygotes && i < rt->prep_size; i++) {
		char name[32];
		if (!rt->zygotes[i].pid)
			continue;
		pool_name(name, sizeof(name), rt->zygote_index[i]);
		rt_zygote_stop(&rt->zygotes[i]);
		rt_cg_destroy(rt, name, NULL);
	}
	for (unsigned i = 0; rt->disks && i < rt->prep_disks; i++)
		if (rt->disks[i].mount_fd >= 0)
			disk_drop(rt, &rt->disks[i]);
	snprintf(path, sizeof(path), "%s/pool", rt->data_dir);
	rmdir(path);
	for (unsigned i = 0; i < rt->n_leave; i++)
		close(rt->leave_fds[i]); /* EOF: they leave */
	free(rt->leave_fds);
	rt->leave_fds = NULL;
	rt->n_leave = 0;
	free(rt->zygotes);
	free(rt->zygote_index);
	free(rt->index_busy);
	free(rt->disks);
	free(rt->disk_index_busy);
	rt->zygotes = NULL;
	rt->disks = NULL;
	pthread_cond_destroy(&rt->prep_cond);
	pthread_mutex_destroy(&rt->prep_lock);
	rt->prep_inited = false;
}
