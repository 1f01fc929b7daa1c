/*
 * Pause and resume of sandboxes with CRIU: see rt_checkpoint.h for the
 * contract and docs/snapshot.md for the design and measurements.
 *
 * What CRIU is told, and why:
 *  - the tree is the sandbox init; its user, pid, mount, uts, ipc and cgroup
 *    namespaces are saved because they differ from CRIU's own;
 *  - the network namespace is owned by the host user namespace, not the
 *    sandbox's, and CRIU refuses to dump (or restore) a tree whose userns
 *    does not own its netns. So CRIU itself runs inside the sandbox's netns:
 *    the tree's netns is then CRIU's own, its sockets are dumped and
 *    restored in place, and the namespace (veth, address, firewall entries)
 *    simply stays alive while paused, held by the runtime;
 *  - the mounts the runtime makes from host objects (agent bundle, sysfs of
 *    the sandbox netns, the device nodes) are external mounts: on restore we
 *    provide equivalent objects under the same keys;
 *  - descriptors that refer to host files (/dev/null from the keeper) are
 *    external files, reopened by us at restore; the pipe the init writes its
 *    output into has its read end in the keeper, outside the tree: a new
 *    keeper's pipe takes its place at restore (--inherit-fd);
 *  - TCP connections are locked with CRIU's own nftables table inside the
 *    sandbox netns (--network-lock=nftables): one table, named CRIU-*, that
 *    hutchd can find and drop when a CRIU run is killed half-way;
 *  - TCP repair mode needs CAP_NET_ADMIN over the netns, which the restored
 *    tasks (sandbox userns) lack: Hutch's CRIU patches switch it from
 *    CRIU's usernsd and, before the tasks are released, from CRIU's root
 *    task (scripts/criu-patches); the keeper checks that none is left;
 *  - --freeze-cgroup on the sandbox's freezer stops every task atomically,
 *    fork storms included; --leave-stopped keeps them stopped after the dump
 *    so that we end them only once the images are durable.
 * CRIU runs in a private mount namespace: its temporary mounts (cgroup yard,
 * the rebuilt root) never appear on the host, and vanish with it.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h> /* before the linux headers: they defer to it */
#include <netinet/tcp.h>
#include <libmnl/libmnl.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "criu_images.h"
#include "log.h"
#include "rt_checkpoint.h"
#include "rt_internal.h"

#define CKPT_FINAL "checkpoint"
#define CKPT_TMP "checkpoint.tmp"
#define CKPT_RESTORING "checkpoint.restoring"
#define CKPT_REMOVING "checkpoint.removing" /* images on their way out */
#define CKPT_MOVING "checkpoint.moving" /* own images of another boot, being rewritten */
#define CKPT_LOCK "checkpoint.lock"
#define CKPT_BOOT_ID "hutch-boot-id" /* with the images: the boot they were made in */
#define CKPT_ADDRESS "hutch-address" /* with the images: the sandbox's IPv4 address */
#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
#define IMAGE_SPACE_MARGIN (64ull << 20) /* CRIU's own files, and room for the disks */
#define CKPT_EXT_FILES "hutch-ext-files" /* our own list, kept with the images */
#define CKPT_NETNS_PIN "netns" /* <run_dir>/<id>/netns: the netns while paused */
#define CRIU_LOCK_PREFIX "CRIU-" /* CRIU's nftables lock table, see the header */
#define DEFAULT_GHOST_LIMIT (64ull << 20)
#define DEFAULT_TIMEOUT_MS 120000u
#define MAX_ARGS 96
#define MAX_EXT_FILES 8

/* The mounts the runtime makes from host objects (see spawn.c). */
static const struct ext_mount {
	const char *mountpoint; /* inside the sandbox */
	const char *key;
} ext_mounts[] = {
	{ RT_AGENT_MOUNT, "hutch-agent" },
	{ "/sys", "hutch-sys" },
	{ "/dev/null", "dev-null" },
	{ "/dev/zero", "dev-zero" },
	{ "/dev/full", "dev-full" },
	{ "/dev/random", "dev-random" },
	{ "/dev/urandom", "dev-urandom" },
	{ "/dev/tty", "dev-tty" },
};
#define N_EXT_MOUNTS (sizeof(ext_mounts) / sizeof(ext_mounts[0]))

/* A host file held open inside the sandbox, and how to reopen it. */
enum ext_kind { EXT_INIT_LOG, EXT_DEV_NULL, EXT_INIT_PIPE };

static const char *const ext_kind_names[] = {
	[EXT_INIT_LOG] = "init-log", [EXT_DEV_NULL] = "dev-null",
	[EXT_INIT_PIPE] = "init-pipe",
};

struct ext_file {
	char key[64];          /* file[mnt_id:inode] or pipe:[inode], CRIU's spelling */
	enum ext_kind kind;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *criu_path(const struct rt_ckpt_opts *o)
{
	return o && o->criu && *o->criu ? o->criu : RT_CRIU_DEFAULT;
}

static void sbx_path(struct rt *rt, const char *id, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/sandboxes/%s/%s", rt->data_dir, id, name);
}

/* ---------- sandbox table (the same discipline as rt.c) ---------- */

/* Finds and locks a sandbox; NULL (-ENOENT in err) when unknown. */
static struct rt_sandbox *sandbox_lock(struct rt *rt, const char *id, struct herr *err)
{
	struct rt_sandbox *s = NULL;

	if (!id || !rt_id_valid(id)) {
		herr_set(err, -ENOENT, "no sandbox '%.64s'", id ? id : "");
		return NULL;
	}
	pthread_mutex_lock(&rt->lock);
	for (unsigned i = 0; i < rt->max_sandboxes && !s; i++)
		if (rt->by_slot[i] && strcmp(rt->by_slot[i]->id, id) == 0)
			s = rt->by_slot[i];
	if (!s || s->destroying) {
		pthread_mutex_unlock(&rt->lock);
		herr_set(err, -ENOENT, "no sandbox '%.64s'", id);
		return NULL;
	}
	pthread_mutex_unlock(&rt->lock);
	pthread_mutex_lock(&s->lock);
	return s;
}

/* The exit monitor must not see the pause as the sandbox ending. */
static void monitor_unwatch(struct rt *rt, struct rt_sandbox *s)
{
	if (s->keeper_pidfd >= 0)
		epoll_ctl(rt->mon_epfd, EPOLL_CTL_DEL, s->keeper_pidfd, NULL);
	if (s->init_pidfd >= 0)
		epoll_ctl(rt->mon_epfd, EPOLL_CTL_DEL, s->init_pidfd, NULL);
}

static void monitor_watch(struct rt *rt, struct rt_sandbox *s)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = s->slot };

	if (s->keeper_pidfd >= 0)
		epoll_ctl(rt->mon_epfd, EPOLL_CTL_ADD, s->keeper_pidfd, &ev);
}

static int pidfd_of(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void wait_pidfd(int pidfd, int ms)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };

	if (pidfd >= 0)
		poll(&p, 1, ms);
}

/* ---------- cgroups ---------- */

static void freezer_dir(struct rt *rt, const char *id, char *buf, size_t len)
{
	if (rt->cg_mode == RT_CG_UNIFIED)
		snprintf(buf, len, "/sys/fs/cgroup/%s/%s", rt->cg_name, id);
	else if (rt->cg_mode == RT_CG_HYBRID)
		snprintf(buf, len, "/sys/fs/cgroup/unified/%s/%s", rt->cg_name, id);
	else
		snprintf(buf, len, "/sys/fs/cgroup/freezer/%s/%s", rt->cg_name, id);
}

/* Reads the pids of the sandbox cgroup; returns how many (or -errno). */
static int cgroup_pids(struct rt *rt, const char *id, pid_t *pids, int max)
{
	char path[600], dir[512];
	int n = 0;
	long v;

	freezer_dir(rt, id, dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? 0 : -errno;
	while (fscanf(f, "%ld", &v) == 1)
		if (n < max)
			pids[n++] = (pid_t)v;
		else
			n++;
	return n;
}

/*
 * A pidfd for a task listed in the sandbox's cgroup, or -1. Between reading
 * cgroup.procs and pidfd_open the task may exit and its pid go to a process
 * of the host, which would then be signalled or have its sockets changed.
 * The pidfd pins one process: if the pid is still listed after it is
 * opened, and that process is still alive after the listing, the listed pid
 * was the pinned process all along (a pid is not reused while its process
 * lives).
 */
static int sandbox_task_pidfd(struct rt *rt, const char *id, pid_t pid)
{
	pid_t pids[512];
	int fd = pidfd_of(pid), np;
	bool listed = false;

	if (fd < 0)
		return -1;
	np = cgroup_pids(rt, id, pids, 512);
	for (int i = 0; i < np && i < 512 && !listed; i++)
		listed = pids[i] == pid;
	if (!listed || syscall(SYS_pidfd_send_signal, fd, 0, NULL, 0) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static bool cgroup_has_tasks(struct rt *rt, const char *id)
{
	pid_t one;

	return cgroup_pids(rt, id, &one, 1) > 0;
}

/* Waits until the sandbox's cgroup has no task left, at most ms (killed
 * tasks take a moment to exit, longer with sockets to tear down). */
static bool cgroup_wait_empty(struct rt *rt, const char *id, unsigned ms)
{
	for (unsigned waited = 0; cgroup_has_tasks(rt, id); waited += 20) {
		if (waited >= ms)
			return false;
		usleep(20 * 1000);
	}
	return true;
}

/* ---------- files ---------- */

static int remove_tree(const char *path)
{
	_cleanup_closedir_ DIR *d = opendir(path);
	struct dirent *e;
	char sub[4096];

	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
		if (e->d_type == DT_DIR)
			remove_tree(sub);
		else
			unlink(sub);
	}
	return rmdir(path) < 0 ? -errno : 0;
}

static int fsync_path(const char *path, int flags)
{
	_cleanup_close_ int fd = open(path, flags | O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fsync(fd) < 0)
		return -errno;
	return 0;
}

/* fsyncs every file of an image directory, then the directory; sums sizes. */
static int sync_dir(const char *dir, uint64_t *bytes, struct herr *err)
{
	_cleanup_closedir_ DIR *d = opendir(dir);
	struct dirent *e;
	char path[4096];
	struct stat st;

	*bytes = 0;
	if (!d)
		return herr_sys(err, -errno, "opendir %s", dir);
	while ((e = readdir(d))) {
		if (e->d_type != DT_REG)
			continue;
		snprintf(path, sizeof(path), "%.3800s/%.255s", dir, e->d_name);
		int r = fsync_path(path, 0);
		if (r < 0)
			return herr_sys(err, r, "fsync %s", path);
		if (stat(path, &st) == 0)
			*bytes += (uint64_t)st.st_size;
	}
	int r = fsync_path(dir, O_DIRECTORY);
	return r < 0 ? herr_sys(err, r, "fsync %s", dir) : 0;
}

static int chown_tree(const char *dir, uint32_t id, struct herr *err)
{
	_cleanup_closedir_ DIR *d = opendir(dir);
	struct dirent *e;
	char path[4096];

	if (!d)
		return herr_sys(err, -errno, "opendir %s", dir);
	while ((e = readdir(d))) {
		if (e->d_type != DT_REG)
			continue;
		snprintf(path, sizeof(path), "%.3800s/%.255s", dir, e->d_name);
		if (lchown(path, id, id) < 0 || chmod(path, 0644) < 0)
			return herr_sys(err, -errno, "chown %s", path);
	}
	if (chown(dir, id, id) < 0 || chmod(dir, 0755) < 0)
		return herr_sys(err, -errno, "chown %s", dir);
	return 0;
}

static uint64_t dir_bytes(const char *dir)
{
	_cleanup_closedir_ DIR *d = opendir(dir);
	struct dirent *e;
	char path[4096];
	struct stat st;
	uint64_t sum = 0;

	while (d && (e = readdir(d))) {
		snprintf(path, sizeof(path), "%.3800s/%.255s", dir, e->d_name);
		if (e->d_type == DT_REG && stat(path, &st) == 0)
			sum += (uint64_t)st.st_size;
	}
	return sum;
}

static bool dir_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Copies one regular file in the kernel; dst is new (O_EXCL). */
static int copy_file(const char *src, const char *dst, struct herr *err)
{
	_cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	_cleanup_close_ int out = -1;
	struct stat st;
	off_t left;

	if (in < 0 || fstat(in, &st) < 0)
		return herr_sys(err, -errno, "open %s", src);
	if (!S_ISREG(st.st_mode))
		return herr_set(err, -EINVAL, "%s is not a regular file", src);
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (out < 0)
		return herr_sys(err, -errno, "create %s", dst);
	for (left = st.st_size; left > 0;) {
		ssize_t n = copy_file_range(in, NULL, out, NULL, (size_t)left, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return herr_sys(err, -errno, "copying %s to %s", src, dst);
		if (n == 0)
			return herr_set(err, -EIO, "%s shrank while being copied", src);
		left -= n;
	}
	return 0;
}

/* A hard link of one regular file: no page is copied. */
static int link_file(const char *src, const char *dst, struct herr *err)
{
	struct stat st;

	if (lstat(src, &st) < 0 || !S_ISREG(st.st_mode))
		return herr_set(err, -EINVAL, "%s is not a regular file", src);
	if (link(src, dst) < 0)
		return herr_sys(err, -errno, "link %s to %s", src, dst);
	return 0;
}

/*
 * The regular files of an image folder in dst (made here, 0700): copies, or
 * hard links when hard_link is true. Images are flat: CRIU writes no subfolders,
 * and anything that is not a regular file (a link someone put there) is
 * refused rather than followed. Not durable (sync_dir is); on failure dst is
 * gone, unless it could not be made.
 */
static int copy_images(const char *src, const char *dst, bool hard_link, struct herr *err)
{
	_cleanup_closedir_ DIR *d = opendir(src);
	struct dirent *e;
	char from[4096], to[4096];
	int r = 0;

	if (!d)
		return herr_sys(err, -errno, "opendir %s", src);
	if (mkdir(dst, 0700) < 0)
		return herr_sys(err, -errno, "mkdir %s", dst);
	while (r == 0 && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(from, sizeof(from), "%.3800s/%.255s", src, e->d_name);
		snprintf(to, sizeof(to), "%.3800s/%.255s", dst, e->d_name);
		r = hard_link ? link_file(from, to, err) : copy_file(from, to, err);
	}
	if (r < 0)
		remove_tree(dst);
	return r;
}

/* Appends the last lines of a CRIU log to err's message: the cause is there. */
static void append_log_tail(struct herr *err, const char *log)
{
	_cleanup_close_ int fd = open(log, O_RDONLY | O_CLOEXEC);
	char buf[2048];
	size_t have;

	if (!err || fd < 0)
		return;
	off_t end = lseek(fd, 0, SEEK_END);
	off_t from = end > (off_t)sizeof(buf) - 1 ? end - (off_t)sizeof(buf) + 1 : 0;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, from);
	if (n <= 0)
		return;
	buf[n] = '\0';
	/* The first "Error" line names the cause; later ones are fallout.
	 * CRIU's complaint about RLIMIT_NOFILE (no CAP_SYS_RESOURCE) is
	 * harmless noise and skipped. */
	char *cause = strstr(buf, "Error (");
	while (cause && strstr(cause, "rlimit:") &&
	       strstr(cause, "rlimit:") < strchrnul(cause, '\n'))
		cause = strstr(cause + 1, "Error (");
	if (!cause)
		cause = buf;
	char *nl = strchr(cause, '\n');
	if (nl)
		*nl = '\0';
	have = strlen(err->msg);
	snprintf(err->msg + have, sizeof(err->msg) - have, " (%s: %.200s)", log, cause);
}

/* Takes the per-sandbox lock file; -EBUSY when someone else holds it. */
static int lock_sandbox(struct rt *rt, const char *id, struct herr *err)
{
	char path[4096];

	sbx_path(rt, id, CKPT_LOCK, path, sizeof(path));
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return herr_sys(err, -errno, "open %s", path);
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		close(fd);
		if (e == EWOULDBLOCK)
			return herr_set(err, -EBUSY, "sandbox '%s': a pause or resume is under way",
					id);
		return herr_sys(err, -e, "flock %s", path);
	}
	return fd;
}

/* ---------- running CRIU ---------- */

struct argv_buf {
	const char *argv[MAX_ARGS];
	char store[MAX_ARGS][320];
	int n;
};

static void arg_add(struct argv_buf *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void arg_add(struct argv_buf *a, const char *fmt, ...)
{
	va_list ap;

	if (a->n >= MAX_ARGS - 1)
		return;
	va_start(ap, fmt);
	vsnprintf(a->store[a->n], sizeof(a->store[0]), fmt, ap);
	va_end(ap);
	a->argv[a->n] = a->store[a->n];
	a->argv[++a->n] = NULL;
}

/* In a fresh child: a private mount namespace, so nothing CRIU mounts can
 * reach the host, and no host mount event reaches what CRIU builds. */
static int enter_private_mounts(void)
{
	if (unshare(CLONE_NEWNS) < 0)
		return -errno;
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return -errno;
	return 0;
}

/* stdin/stdout/stderr of CRIU: /dev/null (its log is a file in the images). */
static void null_stdio(void)
{
	int fd = open("/dev/null", O_RDWR);

	if (fd < 0)
		return;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

/* Waits for a child up to ms; kills it at the deadline. Returns its status. */
static int wait_child(pid_t pid, unsigned ms, bool *timed_out)
{
	_cleanup_close_ int pfd = pidfd_of(pid);
	struct pollfd p = { .fd = pfd, .events = POLLIN };
	int status = 0;

	*timed_out = false;
	if (pfd >= 0) {
		int r;
		do
			r = poll(&p, 1, (int)ms);
		while (r < 0 && errno == EINTR);
		if (r == 0) {
			*timed_out = true;
			kill(pid, SIGKILL);
		}
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return status;
}

/* ---------- pause ---------- */

/* Collects the inodes of the pipes the keeper holds: the init's output. */
static int keeper_pipes(pid_t keeper, ino_t *out, int max)
{
	char fdir[64], path[128];
	struct dirent *e;
	struct stat st;
	int n = 0;

	snprintf(fdir, sizeof(fdir), "/proc/%d/fd", keeper);
	_cleanup_closedir_ DIR *d = keeper > 0 ? opendir(fdir) : NULL;
	while (d && (e = readdir(d)) && n < max) {
		snprintf(path, sizeof(path), "%s/%.32s", fdir, e->d_name);
		if (e->d_name[0] != '.' && stat(path, &st) == 0 && S_ISFIFO(st.st_mode))
			out[n++] = st.st_ino;
	}
	return n;
}

static unsigned fd_mnt_id(pid_t pid, const char *fd)
{
	char info[96], line[128];
	unsigned mnt_id = 0;

	snprintf(info, sizeof(info), "/proc/%d/fdinfo/%.32s", pid, fd);
	_cleanup_fclose_ FILE *f = fopen(info, "re");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "mnt_id: %u", &mnt_id) == 1)
			break;
	return mnt_id;
}

/* Names one descriptor in CRIU's spelling if it is a host object; 0 if not. */
static int ext_key(pid_t pid, const char *fd, const struct stat *st, const struct stat *logst,
		   const ino_t *kpipes, int n_kpipes, struct ext_file *out)
{
	if (S_ISFIFO(st->st_mode)) {
		for (int i = 0; i < n_kpipes; i++)
			if (kpipes[i] == st->st_ino) {
				snprintf(out->key, sizeof(out->key), "pipe:[%llu]",
					 (unsigned long long)st->st_ino);
				out->kind = EXT_INIT_PIPE;
				return 1;
			}
		return 0;
	}
	if (logst->st_ino && st->st_dev == logst->st_dev && st->st_ino == logst->st_ino)
		out->kind = EXT_INIT_LOG;
	else if (S_ISCHR(st->st_mode) && st->st_rdev == makedev(1, 3))
		out->kind = EXT_DEV_NULL;
	else
		return 0;
	/* The sandbox's own /dev/null is a bind on its own mount; only the
	 * mount id tells the host's apart, and CRIU only looks up keys it
	 * cannot resolve, so extra keys are harmless. */
	unsigned mnt_id = fd_mnt_id(pid, fd);
	if (!mnt_id)
		return 0;
	snprintf(out->key, sizeof(out->key), "file[%x:%llx]", mnt_id,
		 (unsigned long long)st->st_ino);
	return 1;
}

/* Lists the host objects held open by the sandbox's processes (the init's
 * output pipe, the keeper's /dev/null; init.log of sandboxes started before
 * the pipe), in CRIU's key spelling. Any other host file would make the dump
 * fail with CRIU's own message. */
static int find_ext_files(struct rt *rt, struct rt_sandbox *s, struct ext_file *out,
			  int max, struct herr *err)
{
	char path[4096];
	struct stat logst = { 0 }, st;
	pid_t pids[512];
	ino_t kpipes[16];
	int n = 0;

	sbx_path(rt, s->id, "init.log", path, sizeof(path));
	if (stat(path, &logst) < 0)
		logst.st_ino = 0;
	int n_kpipes = keeper_pipes(s->keeper_pid, kpipes, 16);
	int np = cgroup_pids(rt, s->id, pids, 512);
	if (np < 0)
		return herr_sys(err, np, "reading the tasks of sandbox '%s'", s->id);
	for (int i = 0; i < np && i < 512; i++) {
		char fdir[64];
		snprintf(fdir, sizeof(fdir), "/proc/%d/fd", pids[i]);
		_cleanup_closedir_ DIR *d = opendir(fdir);
		struct dirent *e;
		while (d && (e = readdir(d))) {
			struct ext_file f;
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%.32s", fdir, e->d_name);
			if (stat(path, &st) < 0 ||
			    !ext_key(pids[i], e->d_name, &st, &logst, kpipes, n_kpipes, &f))
				continue;
			bool dup = false;
			for (int j = 0; j < n; j++)
				dup = dup || !strcmp(out[j].key, f.key);
			if (dup)
				continue;
			if (n == max)
				return herr_set(err, -E2BIG, "sandbox '%s': more than %d host files open",
						s->id, max);
			out[n++] = f;
		}
	}
	return n;
}

static int write_ext_files(const char *dir, const struct ext_file *f, int n, struct herr *err)
{
	char path[4096], text[MAX_EXT_FILES * 80] = "";
	size_t off = 0;

	for (int i = 0; i < n; i++)
		off += (size_t)snprintf(text + off, sizeof(text) - off, "%s %s\n", f[i].key,
					ext_kind_names[f[i].kind]);
	snprintf(path, sizeof(path), "%.3900s/%s", dir, CKPT_EXT_FILES);
	return rt_write_file(path, text, err);
}

/* "file[hex:hex]" or "pipe:[decimal]", nothing else. */
static bool ext_key_valid(const char *key)
{
	size_t len = strlen(key);

	if (!strncmp(key, "file[", 5))
		return len > 6 && key[len - 1] == ']' &&
		       strspn(key + 5, "0123456789abcdef:") == len - 6;
	if (!strncmp(key, "pipe:[", 6))
		return len > 7 && key[len - 1] == ']' &&
		       strspn(key + 6, "0123456789") == len - 7;
	return false;
}

static int read_ext_files(const char *dir, struct ext_file *f, int max, struct herr *err)
{
	char path[4096], key[64], kind[16];
	int n = 0, pipes = 0;

	snprintf(path, sizeof(path), "%.3900s/%s", dir, CKPT_EXT_FILES);
	_cleanup_fclose_ FILE *fp = fopen(path, "re");
	if (!fp)
		return herr_sys(err, -errno, "open %s", path);
	while (n < max && fscanf(fp, "%63s %15s", key, kind) == 2) {
		/* Our own file, but still checked: it names what we reopen. */
		if (!ext_key_valid(key))
			return herr_set(err, -EINVAL, "%s: bad key '%s'", path, key);
		snprintf(f[n].key, sizeof(f[n].key), "%s", key);
		size_t k = 0;
		while (k < sizeof(ext_kind_names) / sizeof(ext_kind_names[0]) &&
		       strcmp(kind, ext_kind_names[k]))
			k++;
		if (k == sizeof(ext_kind_names) / sizeof(ext_kind_names[0]))
			return herr_set(err, -EINVAL, "%s: unknown kind '%s'", path, kind);
		f[n].kind = (enum ext_kind)k;
		if (f[n].kind == EXT_INIT_PIPE && ++pipes > 1)
			return herr_set(err, -EINVAL, "%s: more than one init pipe", path);
		n++;
	}
	return n;
}

static void dump_args(struct rt *rt, struct rt_sandbox *s, const struct rt_ckpt_opts *o,
		      const char *dir, const struct ext_file *files, int n_files,
		      struct argv_buf *a)
{
	char cg[512];

	freezer_dir(rt, s->id, cg, sizeof(cg));
	arg_add(a, "%s", criu_path(o));
	arg_add(a, "dump");
	arg_add(a, "--tree=%d", s->init_pid);
	arg_add(a, "--images-dir=%s", dir);
	arg_add(a, "--freeze-cgroup=%s", cg);
	arg_add(a, "--tcp-established");
	arg_add(a, "--network-lock=nftables");
	arg_add(a, "--leave-stopped");
	arg_add(a, "--ghost-limit=%llu", (unsigned long long)(o && o->ghost_limit ?
				o->ghost_limit : DEFAULT_GHOST_LIMIT));
	for (size_t i = 0; i < N_EXT_MOUNTS; i++)
		arg_add(a, "--external=mnt[%s]:%s", ext_mounts[i].mountpoint, ext_mounts[i].key);
	/* A pipe is dumped as a pipe; only host files are external. */
	for (int i = 0; i < n_files; i++)
		if (files[i].kind != EXT_INIT_PIPE)
			arg_add(a, "--external=%s", files[i].key);
	arg_add(a, "--log-file=dump.log");
	arg_add(a, "%s", o && o->verbose_log ? "-v4" : "-v2");
}

/*
 * CRIU gets the sandbox's checkpoint.lock as its fd 3 (and nothing else of
 * ours): the lock is then held for as long as CRIU runs, also when hutchd
 * dies under it, so that a restarted hutchd's recovery waits for the dump
 * to end instead of thawing tasks CRIU still holds.
 */
static int run_dump(struct argv_buf *a, int netns, int lock, unsigned timeout_ms,
		    const char *dir, struct herr *err)
{
	char log[4200];
	bool timed_out;

	pid_t pid = fork();
	if (pid < 0)
		return herr_sys(err, -errno, "fork for criu dump");
	if (pid == 0) {
		null_stdio();
		if (enter_private_mounts() < 0 || setns(netns, CLONE_NEWNET) < 0)
			_exit(126);
		if (lock != 3 && dup2(lock, 3) < 0)
			_exit(126);
		fcntl(3, F_SETFD, 0);
		close_range(4, ~0u, 0);
		execv(a->argv[0], (char *const *)a->argv);
		_exit(127);
	}
	int status = wait_child(pid, timeout_ms, &timed_out);
	snprintf(log, sizeof(log), "%s/dump.log", dir);
	if (timed_out) {
		herr_set(err, -ETIMEDOUT, "criu dump ran over %u ms", timeout_ms);
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		return 0;
	} else if (WIFEXITED(status) && WEXITSTATUS(status) >= 126) {
		return herr_set(err, -ENOEXEC, "cannot run %s (exit %d)", a->argv[0],
				WEXITSTATUS(status));
	} else {
		herr_set(err, -EIO, "criu dump failed (%s %d)",
			 WIFEXITED(status) ? "exit" : "signal",
			 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	}
	append_log_tail(err, log);
	return err ? err->code : -EIO;
}

/* ---------- undoing what a CRIU run leaves on the network ---------- */

/*
 * Turns TCP repair mode off on every socket of the sandbox that is in it.
 * Sockets are taken with pidfd_getfd (we are root in the host user
 * namespace, which owns the netns, so setsockopt(TCP_REPAIR) is allowed);
 * only TCP sockets in repair mode answer TCP_REPAIR_WINDOW, so sockets not
 * in repair mode, listeners and other families are left alone. Leaving
 * repair mode resets SO_REUSEADDR, so it is saved and put back. A socket
 * shared by several processes is met again and then skipped. Returns how
 * many sockets were switched.
 */
static int release_tcp_repair(struct rt *rt, const char *id)
{
	pid_t pids[512];
	int np = cgroup_pids(rt, id, pids, 512), released = 0;

	for (int i = 0; i < np && i < 512; i++) {
		char fdir[64], path[128], link[64];
		snprintf(fdir, sizeof(fdir), "/proc/%d/fd", pids[i]);
		_cleanup_close_ int pidfd = sandbox_task_pidfd(rt, id, pids[i]);
		_cleanup_closedir_ DIR *d = pidfd >= 0 ? opendir(fdir) : NULL;
		struct dirent *e;
		while (d && (e = readdir(d))) {
			snprintf(path, sizeof(path), "%s/%.32s", fdir, e->d_name);
			ssize_t n = readlink(path, link, sizeof(link) - 1);
			if (n <= 0)
				continue;
			link[n] = '\0';
			if (strncmp(link, "socket:", 7) != 0)
				continue;
			int target = atoi(e->d_name);
			_cleanup_close_ int sk = (int)syscall(SYS_pidfd_getfd, pidfd, target, 0);
			struct tcp_repair_window w;
			socklen_t wl = sizeof(w);
			int reuse = 0, off = 0;
			socklen_t rl = sizeof(reuse);
			if (sk < 0 || getsockopt(sk, SOL_TCP, TCP_REPAIR_WINDOW, &w, &wl) < 0)
				continue;
			getsockopt(sk, SOL_SOCKET, SO_REUSEADDR, &reuse, &rl);
			if (setsockopt(sk, SOL_TCP, TCP_REPAIR, &off, sizeof(off)) < 0) {
				log_warn("runtime", id, "TCP repair off for pid %d fd %d: %s",
					 pids[i], target, strerror(errno));
				continue;
			}
			setsockopt(sk, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse));
			released++;
		}
	}
	return released;
}

/* Sends SIGCONT to every task of the sandbox (restore left them stopped). */
static void continue_tasks(struct rt *rt, const char *id)
{
	pid_t pids[512];
	int np = cgroup_pids(rt, id, pids, 512);

	for (int i = 0; i < np && i < 512; i++) {
		_cleanup_close_ int pidfd = sandbox_task_pidfd(rt, id, pids[i]);
		if (pidfd >= 0)
			syscall(SYS_pidfd_send_signal, pidfd, SIGCONT, NULL, 0);
	}
}

struct lock_tables {
	char names[8][64];
	int n;
};

static int collect_lock_table(const struct nlmsghdr *nlh, void *data)
{
	struct lock_tables *lt = data;
	struct nftnl_table *t = nftnl_table_alloc();

	if (t && nftnl_table_nlmsg_parse(nlh, t) == 0) {
		const char *name = nftnl_table_get_str(t, NFTNL_TABLE_NAME);
		if (name && !strncmp(name, CRIU_LOCK_PREFIX, strlen(CRIU_LOCK_PREFIX)) &&
		    lt->n < 8)
			snprintf(lt->names[lt->n++], sizeof(lt->names[0]), "%s", name);
	}
	nftnl_table_free(t);
	return MNL_CB_OK;
}

/* One request on a netlink socket, answers through cb (may be NULL). */
static int nl_talk(struct mnl_socket *nl, struct nlmsghdr *nlh, mnl_cb_t cb, void *data)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	uint32_t portid = mnl_socket_get_portid(nl), seq = nlh->nlmsg_seq;

	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		return -errno;
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
		if (n < 0)
			return -errno;
		int r = mnl_cb_run(buf, (size_t)n, seq, portid, cb, data);
		if (r <= MNL_CB_STOP)
			return r < 0 ? -errno : 0;
	}
}

/* A netlink socket made inside the sandbox netns; it keeps acting there. */
static struct mnl_socket *nl_in_netns(int netns)
{
	_cleanup_close_ int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	struct mnl_socket *nl = NULL;

	if (self < 0 || setns(netns, CLONE_NEWNET) < 0)
		return NULL;
	nl = mnl_socket_open(NETLINK_NETFILTER);
	if (setns(self, CLONE_NEWNET) < 0)
		log_error("runtime", NULL, "cannot return to own netns: %s", strerror(errno));
	if (nl && mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		mnl_socket_close(nl);
		nl = NULL;
	}
	return nl;
}

/* Deletes one inet table: nf_tables takes changes only inside a batch. */
static int delete_table(struct mnl_socket *nl, const char *name)
{
	char buf[MNL_SOCKET_BUFFER_SIZE], rbuf[MNL_SOCKET_BUFFER_SIZE];
	uint32_t seq = (uint32_t)time(NULL);
	struct mnl_nlmsg_batch *b = mnl_nlmsg_batch_start(buf, sizeof(buf));
	struct nftnl_table *t = nftnl_table_alloc();
	int r = -ENOMEM;

	if (!b || !t)
		goto out;
	nftnl_table_set_str(t, NFTNL_TABLE_NAME, name);
	nftnl_batch_begin(mnl_nlmsg_batch_current(b), seq++);
	mnl_nlmsg_batch_next(b);
	struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(b),
						     NFT_MSG_DELTABLE, NFPROTO_INET,
						     NLM_F_ACK, seq);
	nftnl_table_nlmsg_build_payload(nlh, t);
	mnl_nlmsg_batch_next(b);
	nftnl_batch_end(mnl_nlmsg_batch_current(b), seq + 1);
	mnl_nlmsg_batch_next(b);
	if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b)) < 0) {
		r = -errno;
		goto out;
	}
	/* The delete is the only message asking for an ack. */
	ssize_t n = mnl_socket_recvfrom(nl, rbuf, sizeof(rbuf));
	if (n < 0)
		r = -errno;
	else
		r = mnl_cb_run(rbuf, (size_t)n, seq, mnl_socket_get_portid(nl), NULL, NULL) < 0 ?
			-errno : 0;
out:
	if (b)
		mnl_nlmsg_batch_stop(b);
	nftnl_table_free(t);
	if (r < 0)
		errno = -r;
	return r;
}

/*
 * Drops CRIU's connection lock (its nftables table CRIU-<run id>) from the
 * sandbox netns. Only after a CRIU run that did not finish: a finished dump
 * leaves the lock on purpose until the restore removes it. Nothing in the
 * sandbox can make a table there (the netns belongs to the host user
 * namespace), so every CRIU-* table is CRIU's. Returns how many went.
 */
static int drop_criu_locks(const char *id, int netns)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct lock_tables lt = { .n = 0 };
	struct mnl_socket *nl = netns >= 0 ? nl_in_netns(netns) : NULL;
	int dropped = 0;

	if (!nl)
		return -EIO;
	struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETTABLE, NFPROTO_INET,
						     NLM_F_DUMP, (uint32_t)time(NULL));
	if (nl_talk(nl, nlh, collect_lock_table, &lt) < 0)
		lt.n = 0;
	for (int i = 0; i < lt.n; i++) {
		if (delete_table(nl, lt.names[i]) == 0)
			dropped++;
		else
			log_warn("runtime", id, "cannot drop nft table %s: %s", lt.names[i],
				 strerror(errno));
	}
	mnl_socket_close(nl);
	return dropped;
}

/* After a CRIU dump that did not finish: the connections work again. */
static void undo_dump_network(struct rt *rt, struct rt_sandbox *s)
{
	int released = release_tcp_repair(rt, s->id);
	int dropped = drop_criu_locks(s->id, s->net.fd);

	if (released || dropped > 0)
		log_info("runtime", s->id, "undid an unfinished dump: %d sockets out of repair, "
			 "%d lock tables dropped", released, dropped);
}

/* ---------- the netns while paused ---------- */

static void netns_pin_path(struct rt *rt, const char *id, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s/%s", rt->run_dir, id, CKPT_NETNS_PIN);
}

/*
 * While paused nothing in the sandbox holds its netns (veth, address,
 * firewall entries, CRIU's lock): only our descriptor does. A bind mount of
 * the nsfs file under the runtime's run dir keeps it alive for a hutchd
 * that restarts and re-adopts the sandbox. Removed on resume and by
 * rt_checkpoint_remove.
 */
static int netns_pin(struct rt *rt, struct rt_sandbox *s, struct herr *err)
{
	char path[4096], src[64];

	netns_pin_path(rt, s->id, path, sizeof(path));
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return herr_sys(err, -errno, "create %s", path);
	close(fd);
	snprintf(src, sizeof(src), "/proc/self/fd/%d", s->net.fd);
	if (mount(src, path, NULL, MS_BIND, NULL) < 0) {
		int e = errno;
		unlink(path);
		return herr_sys(err, -e, "bind mount of the netns onto %s", path);
	}
	return 0;
}

static void netns_unpin(struct rt *rt, const char *id)
{
	char path[4096];

	netns_pin_path(rt, id, path, sizeof(path));
	while (umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW) == 0)
		;
	unlink(path);
}

/* A restarted hutchd has no descriptor of a paused sandbox's netns. */
static int netns_from_pin(struct rt *rt, const char *id)
{
	char path[4096];
	struct statfs sfs;

	netns_pin_path(rt, id, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	/* Only a mounted nsfs file is a netns; a plain file is a leftover. */
	if (fd >= 0 && (fstatfs(fd, &sfs) < 0 || sfs.f_type != NSFS_MAGIC)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* After a failed or interrupted dump the tasks may still be frozen. */
static void resume_running(struct rt *rt, const char *id)
{
	rt_cg_freeze(rt, id, false, NULL);
}

/* The images are durable: the processes may go. */
static void end_paused_processes(struct rt *rt, struct rt_sandbox *s)
{
	pthread_mutex_lock(&rt->lock);
	monitor_unwatch(rt, s);
	s->stop_requested = true;
	pthread_mutex_unlock(&rt->lock);

	rt_cg_kill(rt, s->id, s->init_pid);
	rt_cg_freeze(rt, s->id, false, NULL); /* v1 freezer: SIGKILL needs a thaw */
	wait_pidfd(s->init_pidfd, 5000);
	wait_pidfd(s->keeper_pidfd, 5000);
	if (s->keeper_pid > 0)
		waitpid(s->keeper_pid, NULL, WNOHANG);
	if (s->keeper_pidfd >= 0)
		close(s->keeper_pidfd);
	if (s->init_pidfd >= 0)
		close(s->init_pidfd);
	s->keeper_pidfd = s->init_pidfd = -1;

	memset(&s->last, 0, sizeof(s->last));
	s->last.state = RT_STATE_STOPPED;
	s->last.reason = RT_EXIT_KILLED;
	s->last.exit_signal = SIGKILL;
	snprintf(s->last.message, sizeof(s->last.message), "paused (checkpoint kept)");
	pthread_mutex_lock(&rt->lock);
	s->state = RT_STATE_STOPPED;
	pthread_mutex_unlock(&rt->lock);
}

/* Clears what an interrupted pause left: a partial image dir, frozen tasks,
 * sockets in repair mode and CRIU's network lock. */
static void recover_pause(struct rt *rt, struct rt_sandbox *s)
{
	char tmp[4096], fin[4096];
	const char *id = s->id;

	sbx_path(rt, id, CKPT_TMP, tmp, sizeof(tmp));
	sbx_path(rt, id, CKPT_FINAL, fin, sizeof(fin));
	if (dir_exists(tmp)) {
		remove_tree(tmp);
		undo_dump_network(rt, s);
		resume_running(rt, id);
		/* A CRIU that finished after hutchd died left them stopped. */
		continue_tasks(rt, id);
	}
	/* Complete images and live tasks: the crash came between the rename
	 * and the kill; the images are the truth, the tasks are stale. The
	 * pin may not have been made yet: without it the netns would die
	 * with the tasks and the images could never be restored. */
	if (dir_exists(fin) && cgroup_has_tasks(rt, id)) {
		struct herr pin_err;
		int pinned = netns_from_pin(rt, id);

		if (pinned >= 0)
			close(pinned);
		else if (s->net.fd < 0 || netns_pin(rt, s, &pin_err) < 0)
			log_warn("runtime", id, "paused, but its netns is not pinned");
		end_paused_processes(rt, s);
	}
}

/* The kernel's id of this boot: differs after every reboot. */
static int read_boot_id(char out[64])
{
	_cleanup_fclose_ FILE *f = fopen(BOOT_ID_PATH, "re");

	if (!f || !fgets(out, 64, f))
		return -1;
	out[strcspn(out, "\n")] = '\0';
	return *out ? 0 : -1;
}

/* The sandbox's own address, for a fork to rebind sockets bound to it. The
 * old file is unlinked first: in a folder of hard links (images of an
 * earlier boot being rewritten) writing it in place would change the
 * original too. */
static int write_address(const char *dir, uint32_t ip, struct herr *err)
{
	char text[INET_ADDRSTRLEN], path[4200];
	struct in_addr a = { .s_addr = htonl(ip) };

	inet_ntop(AF_INET, &a, text, sizeof(text));
	snprintf(path, sizeof(path), "%s/%s", dir, CKPT_ADDRESS);
	if (unlink(path) < 0 && errno != ENOENT)
		return herr_sys(err, -errno, "unlink %s", path);
	return rt_write_file(path, text, err);
}

/* The address the images were taken at (network byte order); 0 if unknown. */
static uint32_t read_address(const char *dir)
{
	char path[4200], text[INET_ADDRSTRLEN + 1] = "";
	struct in_addr a;

	snprintf(path, sizeof(path), "%s/%s", dir, CKPT_ADDRESS);
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	if (!f || !fgets(text, sizeof(text), f) || inet_pton(AF_INET, text, &a) != 1)
		return 0;
	return a.s_addr;
}

static int write_boot_id(const char *dir, struct herr *err)
{
	char id[64], path[4200];

	if (read_boot_id(id) < 0)
		return herr_sys(err, -EIO, "reading %s", BOOT_ID_PATH);
	snprintf(path, sizeof(path), "%s/%s", dir, CKPT_BOOT_ID);
	return rt_write_file(path, id, err);
}

/*
 * Refuses a pause whose images would not fit: CRIU would fill the file
 * system the sandbox disks live on (sparse images: a full file system is a
 * full disk for every sandbox, and ext4 may go read-only on the failed
 * writes) before failing. Checked before anything is frozen; the images
 * can still outgrow the estimate, and then the dump fails with ENOSPC.
 */
static int check_image_space(struct rt *rt, const char *id, const char *sdir,
			     struct herr *err)
{
	uint64_t need = rt_cg_dumpable_bytes(rt, id) + IMAGE_SPACE_MARGIN, avail;
	struct statvfs sv;

	if (statvfs(sdir, &sv) < 0)
		return herr_sys(err, -errno, "statvfs of the data folder");
	avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (avail < need)
		return herr_set(err, -ENOSPC, "not enough disk space for the memory images: "
				"about %llu MiB needed, %llu MiB free in the data folder",
				(unsigned long long)(need >> 20),
				(unsigned long long)(avail >> 20));
	return 0;
}

/* The sandbox can be paused: running, its netns held, no images yet, room
 * for them. */
static int checkpoint_check(struct rt *rt, struct rt_sandbox *s, const char *fin,
			    const char *sdir, struct herr *err)
{
	if (s->state != RT_STATE_RUNNING || s->init_pidfd < 0)
		return herr_set(err, -EINVAL, "sandbox '%s' is not running (state %s)", s->id,
				rt_state_name(s->state));
	if (s->net.fd < 0)
		return herr_set(err, -EINVAL, "sandbox '%s': its network namespace is not held",
				s->id);
	if (dir_exists(fin))
		return herr_set(err, -EEXIST, "%s exists: sandbox '%s' was paused already", fin,
				s->id);
	return check_image_space(rt, s->id, sdir, err);
}

/* CRIU's dump into tmp (made here). On failure tmp is gone, CRIU's log is
 * kept beside the sandbox and the sandbox runs on. */
static int dump_into(struct rt *rt, struct rt_sandbox *s, const struct rt_ckpt_opts *opts,
		     const char *tmp, const char *sdir, int lock, struct rt_ckpt_stats *st,
		     struct herr *err)
{
	_cleanup_free_ struct argv_buf *args = calloc(1, sizeof(*args));
	struct ext_file files[MAX_EXT_FILES];
	char kept[4200], log[4200];
	int r, n_files;

	if (!args)
		return herr_set(err, -ENOMEM, "criu arguments");
	if (mkdir(tmp, 0700) < 0)
		return herr_sys(err, -errno, "mkdir %s", tmp);
	n_files = find_ext_files(rt, s, files, MAX_EXT_FILES, err);
	if (n_files < 0 || (r = write_ext_files(tmp, files, n_files, err)) < 0) {
		remove_tree(tmp);
		return n_files < 0 ? n_files : r;
	}
	dump_args(rt, s, opts, tmp, files, n_files, args);

	uint64_t t1 = now_ms();
	r = run_dump(args, s->net.fd, lock,
		     opts && opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS, tmp, err);
	st->criu_ms = now_ms() - t1;
	if (r == 0)
		return 0;
	/* Keep the failed log for diagnosis beside the sandbox. */
	snprintf(log, sizeof(log), "%s/dump.log", tmp);
	snprintf(kept, sizeof(kept), "%s/checkpoint-failed.log", sdir);
	rename(log, kept);
	remove_tree(tmp);
	/* A CRIU that was killed (or timed out) left the connections in repair
	 * mode and locked; one that failed cleanly undid both itself, and then
	 * this finds nothing. */
	undo_dump_network(rt, s);
	resume_running(rt, s->id);
	log_warn("runtime", s->id, "pause failed, sandbox left running: %s",
		 err ? err->msg : "");
	return r;
}

/* The images durable and in place (checkpoint); else gone and the sandbox
 * running again. */
static int make_durable(struct rt *rt, struct rt_sandbox *s, const char *tmp,
			const char *fin, const char *sdir, struct rt_ckpt_stats *st,
			struct herr *err)
{
	uint64_t t1 = now_ms();
	int r = write_boot_id(tmp, err);

	if (r == 0)
		r = write_address(tmp, s->net.sbx_ip, err);
	if (r == 0)
		r = sync_dir(tmp, &st->image_bytes, err);
	if (r == 0 && rename(tmp, fin) < 0)
		r = herr_sys(err, -errno, "rename %s to %s", tmp, fin);
	if (r == 0)
		r = fsync_path(sdir, O_DIRECTORY);
	st->sync_ms = now_ms() - t1;
	if (r == 0)
		return 0;
	/* The images are not durable: the sandbox goes on running. */
	rename(fin, tmp);
	remove_tree(tmp);
	/* CRIU finished: its lock stays for a restore that will not come, so
	 * both are undone here. */
	undo_dump_network(rt, s);
	resume_running(rt, s->id);
	continue_tasks(rt, s->id); /* --leave-stopped stopped them */
	return herr_sys(err, r, "making the images of '%s' durable", s->id);
}

static int checkpoint_locked(struct rt *rt, struct rt_sandbox *s,
			     const struct rt_ckpt_opts *opts, struct rt_ckpt_stats *stats,
			     struct herr *err)
{
	struct rt_ckpt_stats st = { 0 };
	uint64_t t0 = now_ms();
	char tmp[4096], fin[4096], sdir[4096];
	struct herr pin_err;
	int r;

	_cleanup_close_ int lock = lock_sandbox(rt, s->id, err);
	if (lock < 0)
		return lock;
	recover_pause(rt, s);
	sbx_path(rt, s->id, CKPT_TMP, tmp, sizeof(tmp));
	sbx_path(rt, s->id, CKPT_FINAL, fin, sizeof(fin));
	snprintf(sdir, sizeof(sdir), "%s/sandboxes/%s", rt->data_dir, s->id);
	if ((r = checkpoint_check(rt, s, fin, sdir, err)) < 0 ||
	    (r = dump_into(rt, s, opts, tmp, sdir, lock, &st, err)) < 0 ||
	    (r = make_durable(rt, s, tmp, fin, sdir, &st, err)) < 0)
		return r;
	if (netns_pin(rt, s, &pin_err) < 0)
		log_warn("runtime", s->id, "paused, but a hutchd restart will lose it: %s",
			 pin_err.msg);
	end_paused_processes(rt, s);
	st.total_ms = now_ms() - t0;
	log_info("runtime", s->id, "paused criu_ms=%llu sync_ms=%llu total_ms=%llu bytes=%llu",
		 (unsigned long long)st.criu_ms, (unsigned long long)st.sync_ms,
		 (unsigned long long)st.total_ms, (unsigned long long)st.image_bytes);
	if (stats)
		*stats = st;
	return 0;
}

int rt_checkpoint(struct rt *rt, const char *id, const struct rt_ckpt_opts *opts,
		  struct rt_ckpt_stats *stats, struct herr *err)
{
	struct rt_sandbox *s = sandbox_lock(rt, id, err);

	if (!s)
		return -ENOENT;
	int r = checkpoint_locked(rt, s, opts, stats, err);
	pthread_mutex_unlock(&s->lock);
	return r;
}

/* ---------- resume ---------- */

struct restore_report {
	int code;
	pid_t init_pid;
	int repaired;           /* sockets taken out of TCP repair mode */
	char msg[HERR_MSG_MAX];
};

struct restore_ctx {
	struct rt *rt;
	struct rt_sandbox *s;
	const struct rt_restore_spec *spec;
	const struct rt_ckpt_opts *opts;
	const char *dir;        /* the images (checkpoint.restoring) */
	char pidfile[4200];
	int report_fd;
	int lock_fd;            /* checkpoint.lock: the keeper holds it until the
				 * outcome is on disk (state file or leftovers) */
	int out_r;              /* read end of the init's new output pipe, or -1 */
	int log_fd;             /* init.log, written by the keeper, or -1 */
	int file_fds[MAX_EXT_FILES];
	struct ext_file files[MAX_EXT_FILES];
	int n_files;
};

/* A user namespace with the sandbox's id map, only to idmap mounts with:
 * the layers must show the same owners as they did inside the sandbox. */
static int make_userns(uint32_t base, struct herr *err)
{
	int sync[2];
	char path[64], map[64];

	if (pipe2(sync, O_CLOEXEC) < 0)
		return herr_sys(err, -errno, "pipe");
	pid_t pid = fork();
	if (pid < 0) {
		close(sync[0]);
		close(sync[1]);
		return herr_sys(err, -errno, "fork");
	}
	if (pid == 0) {
		char c;
		close(sync[1]);
		if (unshare(CLONE_NEWUSER) < 0)
			_exit(1);
		/* Parked until the parent has taken the namespace. */
		if (read(sync[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(sync[0]);
	int fd = -1, r = 0;
	for (int i = 0; i < 1000 && fd < 0; i++) {
		/* Wait until the child is in its namespace (the link changes). */
		struct stat a, b;
		snprintf(path, sizeof(path), "/proc/%d/ns/user", pid);
		if (stat(path, &a) == 0 && stat("/proc/self/ns/user", &b) == 0 &&
		    a.st_ino != b.st_ino)
			fd = open(path, O_RDONLY | O_CLOEXEC);
		else
			usleep(1000);
	}
	if (fd < 0) {
		r = herr_set(err, -EIO, "child did not enter a user namespace");
	} else {
		snprintf(map, sizeof(map), "0 %u %u\n", base, RT_IDS_PER_SANDBOX);
		snprintf(path, sizeof(path), "/proc/%d/uid_map", pid);
		r = rt_write_file(path, map, err);
		snprintf(path, sizeof(path), "/proc/%d/gid_map", pid);
		if (r == 0)
			r = rt_write_file(path, map, err);
	}
	close(sync[1]);
	waitpid(pid, NULL, 0);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		return r;
	}
	return fd;
}

static int attach_tree(int fd, const char *path, struct herr *err)
{
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "mkdir %s", path);
	if (move_mount(fd, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) < 0)
		return herr_sys(err, -errno, "move_mount onto %s", path);
	return 0;
}

static int attach_idmapped(const char *src, int userns, const char *path, struct herr *err)
{
	_cleanup_close_ int fd = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
	struct mount_attr attr = {
		.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV | MOUNT_ATTR_RDONLY,
		.userns_fd = (uint64_t)userns,
	};

	if (fd < 0)
		return herr_sys(err, -errno, "open_tree %s", src);
	if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
		return herr_sys(err, -errno, "idmapping %s", src);
	return attach_tree(fd, path, err);
}

/* The child of overlay_as_sandbox_root: never returns. */
static __attribute__((noreturn)) void overlay_child(int userns, const char *opts, int sock)
{
	int fs = -1, mnt = -1;
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	char byte = 0;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm;

	/* Root of the sandbox's user namespace, in a mount namespace it owns:
	 * only there may an overlay be made with these credentials. */
	if (setns(userns, CLONE_NEWUSER) < 0 || unshare(CLONE_NEWNS) < 0 ||
	    setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
		_exit(1);
	fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
	if (fs < 0 || syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "source", "overlay", 0) < 0)
		_exit(2);
	/* The options are the same text mount(2) takes; fsconfig wants them
	 * one by one. */
	char *copy = strdup(opts), *save = NULL;
	for (char *kv = copy ? strtok_r(copy, ",", &save) : NULL; kv;
	     kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '=');
		if (eq)
			*eq = '\0';
		if (syscall(SYS_fsconfig, fs, eq ? FSCONFIG_SET_STRING : FSCONFIG_SET_FLAG,
			    kv, eq ? eq + 1 : NULL, 0) < 0)
			_exit(3);
	}
	if (!copy || syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		_exit(4);
	mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, 0);
	if (mnt < 0)
		_exit(5);
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &mnt, sizeof(int));
	_exit(sendmsg(sock, &msg, 0) == 1 ? 0 : 6);
}

/*
 * The overlay root must be made by root of the sandbox's user namespace, as
 * at the start (spawn.c): overlayfs does its own work (workdir, copy-up)
 * with the credentials of whoever mounted it. Host root has no id on the
 * idmapped disk, so every such step fails with EOVERFLOW and overlayfs
 * falls back to read-only: the restored sandbox then cannot write a file.
 * A child made root of the sandbox's namespace creates the overlay and
 * hands back the detached mount; only this (private) mount namespace ever
 * gets it attached.
 */
static int overlay_as_sandbox_root(int userns, const char *opts, struct herr *err)
{
	int sv[2], status = 0, fd = -1;
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };

	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0)
		return herr_sys(err, -errno, "socketpair for the overlay root");
	pid_t pid = fork();
	if (pid < 0) {
		close(sv[0]);
		close(sv[1]);
		return herr_sys(err, -errno, "fork for the overlay root");
	}
	if (pid == 0) {
		close(sv[0]);
		overlay_child(userns, opts, sv[1]);
	}
	close(sv[1]);
	ssize_t got = recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC);
	close(sv[0]);
	struct cmsghdr *cm = got == 1 ? CMSG_FIRSTHDR(&msg) : NULL;
	if (cm && cm->cmsg_type == SCM_RIGHTS && cm->cmsg_len == CMSG_LEN(sizeof(int)))
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (fd < 0)
		return herr_set(err, -EIO, "mount of the overlay root as the sandbox's root "
				"failed (step %d)", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	return fd;
}

/*
 * Rebuilds, in CRIU's private mount namespace, what the sandbox's mounts
 * were made from: the overlay root over the same idmapped layers and disk,
 * the agent bundle and a sysfs of the sandbox's network namespace. The
 * sandbox sees them through its own restored mount namespace; nothing here
 * is visible on the host.
 */
static int build_restore_mounts(struct restore_ctx *c, const char *scratch, struct herr *err)
{
	struct rt *rt = c->rt;
	char path[4096], opts[8192];
	size_t off;
	int r;

	if (mkdir(scratch, 0700) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "mkdir %s", scratch);
	/* 0755: CRIU opens the external mounts below from inside the sandbox's
	 * user namespace. Only CRIU's private mount namespace has this tmpfs. */
	if (mount("hutch-restore", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755") < 0)
		return herr_sys(err, -errno, "mount tmpfs on %s", scratch);
	_cleanup_close_ int userns = make_userns(c->s->uid_base, err);
	if (userns < 0)
		return userns;

	_cleanup_close_ int disk = rt_disk_mount_fd(rt, c->s->id, err);
	if (disk < 0)
		return disk;
	struct mount_attr dattr = { .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV,
				    .userns_fd = (uint64_t)userns };
	if (mount_setattr(disk, "", AT_EMPTY_PATH, &dattr, sizeof(dattr)) < 0)
		return herr_sys(err, -errno, "idmapping the disk of '%s'", c->s->id);
	snprintf(path, sizeof(path), "%.3900s/disk", scratch);
	if ((r = attach_tree(disk, path, err)) < 0)
		return r;

	off = (size_t)snprintf(opts, sizeof(opts), "lowerdir=");
	for (size_t i = c->spec->n_layers; i-- > 0;) {
		snprintf(path, sizeof(path), "%.3900s/l%zu", scratch, i);
		if ((r = attach_idmapped(c->spec->layers[i], userns, path, err)) < 0)
			return r;
		off += (size_t)snprintf(opts + off, sizeof(opts) - off, "%s%s",
					i + 1 == c->spec->n_layers ? "" : ":", path);
		if (off >= sizeof(opts))
			return herr_set(err, -E2BIG, "overlay options");
	}
	off += (size_t)snprintf(opts + off, sizeof(opts) - off,
				",upperdir=%s/disk/upper,workdir=%s/disk/work,userxattr",
				scratch, scratch);
	if (off >= sizeof(opts))
		return herr_set(err, -E2BIG, "overlay options");
	snprintf(path, sizeof(path), "%.3900s/root", scratch);
	if (mkdir(path, 0755) < 0)
		return herr_sys(err, -errno, "mkdir %s", path);
	_cleanup_close_ int root = overlay_as_sandbox_root(userns, opts, err);
	if (root < 0)
		return root;
	if ((r = attach_tree(root, path, err)) < 0)
		return r;

	snprintf(path, sizeof(path), "%.3900s/agent", scratch);
	if ((r = attach_idmapped(c->spec->agent_dir, userns, path, err)) < 0)
		return r;

	/* CRIU runs inside the sandbox's netns, as for the dump (see the
	 * header); sysfs shows the devices of the netns that mounts it. */
	if (setns(c->s->net.fd, CLONE_NEWNET) < 0)
		return herr_sys(err, -errno, "setns into the netns of '%s'", c->s->id);
	_cleanup_close_ int sys = rt_net_sysfs_fd(c->s->net.fd, err);
	if (sys < 0)
		return sys;
	snprintf(path, sizeof(path), "%.3900s/sys", scratch);
	return attach_tree(sys, path, err);
}

/* Images restored into a sandbox made for them: a fork's (the snapshot's),
 * or the sandbox's own from an earlier boot. */
static bool moved(const struct rt_restore_spec *spec)
{
	return spec->fork || spec->other_boot;
}

/*
 * Moved images' processes go into the sandbox's own cgroups. The images
 * name the source's (CRIU records the full host path of each task's cgroup,
 * the cgroup namespace root included), so each hierarchy the runtime makes a
 * sandbox cgroup in is re-rooted at the sandbox's; the others are left as a
 * resume leaves them (the tasks sit where every sandbox's do). Connections
 * are restored closed: their peers belong to the source, or died with the
 * boot, and the netns is another. So there is nothing to lock either.
 */
static void moved_args(struct restore_ctx *c, struct argv_buf *a)
{
	/* CRIU names the cgroup2 hierarchy "" (its empty controller list). */
	static const char *const hybrid[] = { "memory", "pids", "cpu", "cpuacct", "" };
	static const char *const legacy[] = { "memory", "pids", "cpu", "cpuacct", "freezer" };
	const char *const *ctrls = c->rt->cg_mode == RT_CG_LEGACY ? legacy : hybrid;
	size_t n = c->rt->cg_mode == RT_CG_UNIFIED ? 1 : sizeof(hybrid) / sizeof(hybrid[0]);
	const char *cg = c->rt->cg_name, *id = c->s->id;

	arg_add(a, "--tcp-close");
	arg_add(a, "--network-lock=skip");
	if (c->rt->cg_mode == RT_CG_UNIFIED)
		ctrls = hybrid + 4;
	for (size_t i = 0; i < n; i++)
		arg_add(a, "--cgroup-root=%s:/%s/%s", ctrls[i], cg, id);
}

static void restore_args(struct restore_ctx *c, const char *scratch, struct argv_buf *a)
{
	const int first_inherit = 4; /* the netns, then the external files */

	arg_add(a, "%s", criu_path(c->opts));
	arg_add(a, "restore");
	arg_add(a, "--images-dir=%s", c->dir);
	arg_add(a, "--root=%s/root", scratch);
	arg_add(a, "--restore-detached");
	arg_add(a, "--pidfile=%s", c->pidfile);
	if (!moved(c->spec)) {
		arg_add(a, "--tcp-established");
		arg_add(a, "--network-lock=nftables");
	}
	for (size_t i = 0; i < N_EXT_MOUNTS; i++) {
		const char *m = ext_mounts[i].mountpoint;
		if (!strcmp(m, RT_AGENT_MOUNT))
			arg_add(a, "--external=mnt[%s]:%s/agent", ext_mounts[i].key, scratch);
		else if (!strcmp(m, "/sys"))
			arg_add(a, "--external=mnt[%s]:%s/sys", ext_mounts[i].key, scratch);
		else
			arg_add(a, "--external=mnt[%s]:%s", ext_mounts[i].key, m);
	}
	for (int i = 0; i < c->n_files; i++)
		arg_add(a, "--inherit-fd=fd[%d]:%s", first_inherit + 1 + i, c->files[i].key);
	if (moved(c->spec))
		moved_args(c, a);
	arg_add(a, "--log-file=restore.log");
	arg_add(a, "%s", c->opts && c->opts->verbose_log ? "-v4" : "-v2");
}

/* Where CRIU's private mount namespace builds the restored root. */
static void scratch_path(struct rt *rt, const char *id, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s.restore", rt->run_dir, id);
}

/* CRIU's pidfile of a restore; hutchd removes it once CRIU is done (and,
 * after a crash mid-restore, when it settles or removes the images). */
static void pidfile_path(struct rt *rt, const char *id, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s.restored.pid", rt->run_dir, id);
}

/*
 * The scratch folder is made on the host's run dir; its mounts lived only in
 * CRIU's private mount namespace, so on the host it is an empty folder that
 * nothing else removes: one per resume would pile up in the run dir. CRIU's
 * pidfile goes with it (a restore a crash cut short left it).
 */
static void scratch_remove(struct rt *rt, const char *id)
{
	char scratch[4096];

	scratch_path(rt, id, scratch, sizeof(scratch));
	if (rmdir(scratch) < 0 && errno != ENOENT)
		log_warn("runtime", id, "removing %s: %s", scratch, strerror(errno));
	pidfile_path(rt, id, scratch, sizeof(scratch));
	unlink(scratch);
}

/* The CRIU process: private mounts, the rebuilt root, then exec. */
static __attribute__((noreturn)) void restore_criu_child(struct restore_ctx *c, int errfd)
{
	struct restore_report rep = { .code = 0 };
	struct herr err;
	char scratch[4096];
	struct argv_buf *a = calloc(1, sizeof(*a));

	herr_clear(&err);
	scratch_path(c->rt, c->s->id, scratch, sizeof(scratch));
	if (!a) {
		rep.code = herr_set(&err, -ENOMEM, "criu arguments");
	} else if ((rep.code = enter_private_mounts()) < 0) {
		herr_sys(&err, rep.code, "private mount namespace for criu");
	} else {
		rep.code = build_restore_mounts(c, scratch, &err);
	}
	if (rep.code == 0) {
		/* The keeper put the netns on 4 and the files on 5..: CRIU
		 * finds them at fixed numbers (see restore_args). */
		restore_args(c, scratch, a);
		null_stdio();
		close_range(5 + (unsigned)c->n_files, ~0u, 0);
		close_range(3, 3, 0);
		/* errfd is gone now: a failed exec is reported by exit 127. */
		if (chdir(scratch) == 0)
			execv(a->argv[0], (char *const *)a->argv);
		_exit(127);
	}
	snprintf(rep.msg, sizeof(rep.msg), "%s", err.msg);
	if (write(errfd, &rep, sizeof(rep)) < 0) {
		/* the keeper reads the exit status instead */
	}
	_exit(126);
}

static void keeper_send(int fd, struct restore_report *rep)
{
	if (write(fd, rep, sizeof(*rep)) < 0) {
		/* hutchd is gone; the sandbox goes on */
	}
}

static pid_t read_pidfile(const char *path)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	long v = 0;

	if (!f || fscanf(f, "%ld", &v) != 1 || v <= 0)
		return -1;
	return (pid_t)v;
}

/*
 * The restored tree is running: its keeper and init go into the state file
 * before anyone is told, so that a hutchd that died during the restore
 * re-adopts the running sandbox instead of the stale pre-pause pids.
 */
static void keeper_write_state(struct restore_ctx *c, pid_t init)
{
	c->s->keeper_pid = getpid();
	c->s->init_pid = init;
	c->s->init_start = rt_proc_starttime(init);
	rt_state_write(c->rt, c->s, NULL);
}

/* Records how the restored init ended, as the original keeper does. */
static void keeper_record_exit(struct rt *rt, const char *id, int wstatus)
{
	char tmp[4200], path[4096], text[32];

	snprintf(path, sizeof(path), "%s/%s/exit", rt->run_dir, id);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	snprintf(text, sizeof(text), "%d\n", wstatus);
	if (rt_write_file(tmp, text, NULL) == 0)
		rename(tmp, path);
}

/*
 * Keeps only what the keeper needs, at fixed numbers: 3 the report pipe,
 * 4 the netns, 5.. the external files. Everything else hutchd had open (its
 * listeners, the pause lock) must not live on in a long-lived keeper.
 */
static int keeper_own_fds(struct restore_ctx *c)
{
	int src[4 + MAX_EXT_FILES], n = 0;

	src[n++] = c->report_fd;
	src[n++] = c->s->net.fd;
	for (int i = 0; i < c->n_files; i++)
		src[n++] = c->file_fds[i];
	/* Above CRIU's numbers: its child closes them before exec. */
	if (c->out_r >= 0)
		src[n++] = c->out_r;
	if (c->log_fd >= 0)
		src[n++] = c->log_fd;
	src[n++] = c->lock_fd;
	/* Out of the way first, so that no target number clobbers a source. */
	for (int i = 0; i < n; i++) {
		src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 1000);
		if (src[i] < 0)
			return -errno;
	}
	for (int i = 0; i < n; i++)
		if (dup2(src[i], 3 + i) < 0)
			return -errno;
	close_range(3 + (unsigned)n, ~0u, 0);
	fcntl(3, F_SETFD, FD_CLOEXEC); /* the report pipe is not CRIU's */
	c->report_fd = 3;
	c->s->net.fd = 4;
	for (int i = 0; i < c->n_files; i++)
		c->file_fds[i] = 5 + i;
	int next = 5 + c->n_files;
	if (c->out_r >= 0)
		c->out_r = next++;
	if (c->log_fd >= 0)
		c->log_fd = next++;
	c->lock_fd = next++;
	fcntl(c->lock_fd, F_SETFD, FD_CLOEXEC); /* not CRIU's, not the sandbox's */
	null_stdio();
	return 0;
}

/* CRIU failed or was killed: restored tasks it left behind were re-parented
 * to us (a subreaper) and must not live on half-restored. Killing the
 * sandbox's pid-namespace init ends the rest of the namespace. */
static void keeper_kill_children(void)
{
	char path[64];
	long pid;

	snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)getpid());
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	while (f && fscanf(f, "%ld", &pid) == 1)
		if (pid > 0)
			kill((pid_t)pid, SIGKILL);
}

/* Runs CRIU and waits for it; fills rep (code 0 and the init's pid). */
static void keeper_run_criu(struct restore_ctx *c, struct restore_report *rep)
{
	int ep[2];
	bool timed_out = false;

	if (pipe2(ep, O_CLOEXEC) < 0) {
		rep->code = -errno;
		snprintf(rep->msg, sizeof(rep->msg), "pipe: %s", strerror(errno));
		return;
	}
	pid_t criu = fork();
	if (criu == 0) {
		close(ep[0]);
		restore_criu_child(c, ep[1]);
	}
	int fork_errno = errno;
	close(ep[1]);
	unsigned ms = c->opts && c->opts->timeout_ms ? c->opts->timeout_ms : DEFAULT_TIMEOUT_MS;
	int status = criu < 0 ? 0 : wait_child(criu, ms, &timed_out);
	ssize_t got = read(ep[0], rep, sizeof(*rep));
	close(ep[0]);
	if (criu < 0) {
		rep->code = -fork_errno;
		snprintf(rep->msg, sizeof(rep->msg), "fork of criu: %s", strerror(fork_errno));
	} else if (got == (ssize_t)sizeof(*rep) && rep->code < 0) {
		rep->msg[sizeof(rep->msg) - 1] = '\0';
	} else if (timed_out) {
		rep->code = -ETIMEDOUT;
		snprintf(rep->msg, sizeof(rep->msg), "criu restore ran over %u ms", ms);
	} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		rep->code = WIFEXITED(status) && WEXITSTATUS(status) == 127 ? -ENOEXEC : -EIO;
		snprintf(rep->msg, sizeof(rep->msg), "criu restore failed (%s %d)",
			 WIFEXITED(status) ? "exit" : "signal",
			 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	} else {
		rep->code = 0;
		rep->init_pid = read_pidfile(c->pidfile);
		if (rep->init_pid <= 0) {
			rep->code = -EIO;
			snprintf(rep->msg, sizeof(rep->msg), "criu left no pid in %.400s",
				 c->pidfile);
		}
	}
}

/* Until the init ends: its output goes to the capped init.log. */
static void keeper_pump(struct restore_ctx *c, pid_t init)
{
	_cleanup_close_ int pidfd = pidfd_of(init);
	struct rt_initlog log;
	struct pollfd p[2] = {
		{ .fd = pidfd, .events = POLLIN },
		{ .fd = c->out_r, .events = POLLIN },
	};

	if (pidfd < 0 || c->out_r < 0 || c->log_fd < 0)
		return;
	rt_initlog_init(&log, c->log_fd, RT_INIT_LOG_MAX);
	while (!(p[0].revents & POLLIN)) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		if (p[1].revents && rt_initlog_drain(&log, c->out_r) == 0)
			p[1].fd = -1; /* EOF: every writer is gone */
	}
	/* The init has ended: what is still in the pipe, without waiting. */
	int flags = fcntl(c->out_r, F_GETFL);
	if (flags >= 0 && fcntl(c->out_r, F_SETFL, flags | O_NONBLOCK) == 0)
		for (int i = 0; i < 64 && rt_initlog_drain(&log, c->out_r) > 0; i++)
			;
}

/*
 * The new keeper: a child subreaper, so the init CRIU restores detached
 * becomes its child once CRIU exits. It checks that no socket was left in
 * TCP repair mode (the patched CRIU turns it off before the tasks run; an
 * unpatched one would have failed the restore earlier) and turns off any
 * it finds. From then on it does what the original keeper did: drains the
 * init's output into init.log, waits for the init and records how it ended.
 */
static __attribute__((noreturn)) void restore_keeper(struct restore_ctx *c)
{
	struct restore_report rep = { 0 };

	setsid();
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if (keeper_own_fds(c) < 0)
		_exit(1);
	keeper_run_criu(c, &rep);
	/* Only the sandbox may hold the write end of its output pipe now,
	 * so that the read end sees EOF when the sandbox is gone. */
	for (int i = 0; i < c->n_files; i++)
		close(c->file_fds[i]);
	if (rep.code == 0) {
		rep.repaired = release_tcp_repair(c->rt, c->s->id);
		keeper_write_state(c, rep.init_pid);
	} else {
		keeper_kill_children();
	}
	/* Only now may a restarted hutchd look: it finds either the new state
	 * (running) or the images still in checkpoint.restoring (paused). */
	close(c->lock_fd);
	keeper_send(c->report_fd, &rep);
	close(c->report_fd);
	if (rep.code < 0)
		_exit(1);

	keeper_pump(c, rep.init_pid);
	/* Orphans of CRIU's helpers may land here too; only the init counts. */
	for (;;) {
		int ws;
		pid_t p = waitpid(-1, &ws, 0);
		if (p < 0 && errno == EINTR)
			continue;
		if (p < 0 || p == rep.init_pid) {
			keeper_record_exit(c->rt, c->s->id, p < 0 ? (SIGKILL & 0x7f) : ws);
			_exit(0);
		}
	}
}

static int wait_restore_report(int fd, struct restore_report *rep, unsigned ms,
			       struct herr *err)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	size_t got = 0;

	while (got < sizeof(*rep)) {
		int r = poll(&p, 1, (int)ms + 5000);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return herr_set(err, -ETIMEDOUT, "restore keeper did not report");
		ssize_t n = read(fd, (char *)rep + got, sizeof(*rep) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return herr_set(err, -EIO, "restore keeper exited before reporting");
		got += (size_t)n;
	}
	rep->msg[sizeof(rep->msg) - 1] = '\0';
	return rep->code < 0 ? herr_set(err, rep->code, "%s", rep->msg) : 0;
}

static int open_log(struct rt *rt, const char *id)
{
	char log[4096];

	sbx_path(rt, id, "init.log", log, sizeof(log));
	return open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
}

/*
 * Makes what stands in for each host object at restore: /dev/null, init.log
 * (older sandboxes), and for the init's output a new pipe whose write end
 * CRIU puts where the old one was and whose read end the new keeper drains
 * into init.log.
 */
static int open_ext_files(struct rt *rt, struct restore_ctx *c, struct herr *err)
{
	for (int i = 0; i < c->n_files; i++) {
		const char *what = "/dev/null";
		int p[2];

		switch (c->files[i].kind) {
		case EXT_INIT_LOG:
			what = "init.log";
			c->file_fds[i] = open_log(rt, c->s->id);
			break;
		case EXT_DEV_NULL:
			c->file_fds[i] = open("/dev/null", O_RDWR | O_CLOEXEC);
			break;
		case EXT_INIT_PIPE:
			what = "the init's output pipe";
			c->log_fd = open_log(rt, c->s->id);
			if (c->log_fd < 0 || pipe2(p, O_CLOEXEC) < 0) {
				c->file_fds[i] = -1;
				break;
			}
			c->out_r = p[0];
			c->file_fds[i] = p[1];
			break;
		}
		if (c->file_fds[i] < 0)
			return herr_sys(err, -errno, "sandbox '%s': reopening %s", c->s->id, what);
	}
	return 0;
}

/* Starts the keeper and waits until CRIU has the tree running. */
static int spawn_restore(struct rt *rt, struct restore_ctx *c, pid_t *keeper,
			 struct restore_report *rep, struct herr *err)
{
	int rp[2];

	if (pipe2(rp, O_CLOEXEC) < 0)
		return herr_sys(err, -errno, "pipe for the restore keeper");
	c->report_fd = rp[1];
	pid_t pid = fork();
	if (pid < 0) {
		close(rp[0]);
		close(rp[1]);
		return herr_sys(err, -errno, "fork of the restore keeper");
	}
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_IGN);
		close(rp[0]);
		restore_keeper(c);
	}
	close(rp[1]);
	*keeper = pid;
	unsigned ms = c->opts && c->opts->timeout_ms ? c->opts->timeout_ms : DEFAULT_TIMEOUT_MS;
	int r = wait_restore_report(rp[0], rep, ms, err);
	close(rp[0]);
	(void)rt;
	return r;
}

/* Makes the images available again after an interrupted resume, unless the
 * sandbox's processes are back (then the resume did complete). */
static int recover_resume(struct rt *rt, const char *id, struct herr *err)
{
	char restoring[4096], fin[4096];

	sbx_path(rt, id, CKPT_RESTORING, restoring, sizeof(restoring));
	sbx_path(rt, id, CKPT_FINAL, fin, sizeof(fin));
	if (!dir_exists(restoring))
		return 0;
	if (cgroup_has_tasks(rt, id))
		return herr_set(err, -EBUSY, "sandbox '%s' has processes: it was resumed", id);
	if (rename(restoring, fin) < 0)
		return herr_sys(err, -errno, "rename %s to %s", restoring, fin);
	return 0;
}

static void adopt_restored(struct rt *rt, struct rt_sandbox *s, pid_t keeper, pid_t init)
{
	s->keeper_pid = keeper;
	s->init_pid = init;
	s->init_start = rt_proc_starttime(init);
	s->keeper_pidfd = pidfd_of(keeper);
	s->init_pidfd = pidfd_of(init);
	s->stop_requested = false;
	memset(&s->last, 0, sizeof(s->last));
	rt_state_write(rt, s, NULL);
	pthread_mutex_lock(&rt->lock);
	s->state = RT_STATE_RUNNING;
	monitor_watch(rt, s);
	pthread_mutex_unlock(&rt->lock);
}

static void restore_ctx_release(struct restore_ctx *c)
{
	for (int i = 0; i < MAX_EXT_FILES; i++)
		if (c->file_fds[i] >= 0)
			close(c->file_fds[i]);
	if (c->out_r >= 0)
		close(c->out_r);
	if (c->log_fd >= 0)
		close(c->log_fd);
}

/* The sandbox can take its images back: stopped, empty, its netns held. */
static int restore_check(struct rt *rt, struct rt_sandbox *s, const char *fin,
			 struct herr *err)
{
	if (!dir_exists(fin))
		return herr_set(err, -ENOENT, "sandbox '%s' has no checkpoint", s->id);
	if (s->state != RT_STATE_STOPPED || cgroup_has_tasks(rt, s->id))
		return herr_set(err, -EBUSY, "sandbox '%s' is running", s->id);
	if (s->net.fd < 0)
		s->net.fd = netns_from_pin(rt, s->id);
	if (s->net.fd < 0)
		return herr_set(err, -ENOTSUP, "sandbox '%s': the network namespace it was "
				"paused in is gone; its images are kept, and resuming with "
				"memory false (onResume 'reboot') starts it afresh on its disk",
				s->id);
	return 0;
}

/*
 * Images made as another sandbox (a fork's source) or in an earlier boot
 * become this sandbox's: the user namespace's id map moved to its range,
 * the UTS name from_host to its id (see criu_images.c), and sockets bound
 * to the address the images were taken at bound to its address, which is
 * then recorded as theirs: a restore that fails leaves images a second try
 * rewrites again from where they are.
 */
static int retarget_images(const char *dir, struct rt_sandbox *s, const char *from_host,
			   struct herr *err)
{
	uint32_t from = read_address(dir), to = htonl(s->net.sbx_ip);
	int moved = 0;
	int r = rt_images_rekey(dir, s->uid_base, from_host, s->id, err);

	if (r == 0 && from && from != to)
		r = rt_images_rebind(dir, from, to, &moved, err);
	if (moved)
		log_info("runtime", s->id, "%d socket(s) bound to the images' address now "
			 "bound to the sandbox's", moved);
	if (r == 0 && from != to)
		r = write_address(dir, s->net.sbx_ip, err);
	return r;
}

/* The processes of the sandbox's fresh start (made only to hold the
 * images' processes) end; netns, cgroups and disk stay. */
static int end_fresh_start(struct rt *rt, struct rt_sandbox *s, struct herr *err)
{
	if (s->state == RT_STATE_RUNNING || s->state == RT_STATE_STARTING)
		end_paused_processes(rt, s);
	if (!cgroup_wait_empty(rt, s->id, 5000))
		return herr_set(err, -EBUSY, "sandbox '%s': the processes of its start do "
				"not end", s->id);
	return 0;
}

/*
 * A fork's images: the snapshot's copied, then made the fork's. The copy is
 * not made durable: a fork that does not finish is removed whole, images
 * included.
 */
static int fork_take_images(struct rt *rt, struct rt_sandbox *s,
			    const struct rt_fork_source *from, struct herr *err)
{
	char tmp[4096], fin[4096];
	int r;

	sbx_path(rt, s->id, CKPT_TMP, tmp, sizeof(tmp));
	sbx_path(rt, s->id, CKPT_FINAL, fin, sizeof(fin));
	if (dir_exists(fin))
		return herr_set(err, -EEXIST, "%s exists: sandbox '%s' has images", fin, s->id);
	remove_tree(tmp);
	if ((r = copy_images(from->images, tmp, false, err)) < 0)
		return r;
	r = retarget_images(tmp, s, from->hostname, err);
	if (r == 0 && rename(tmp, fin) < 0)
		r = herr_sys(err, -errno, "rename %s to %s", tmp, fin);
	if (r < 0)
		remove_tree(tmp);
	return r;
}

/*
 * The sandbox's own images, made in an earlier boot under the slot (id
 * range, address) it had then, become those of the sandbox just made for
 * them. They are rewritten in a folder of hard links (criu_images.c writes
 * each changed image as a new file: the originals stay as they were), made
 * durable and swapped with the originals in one rename: a crash anywhere
 * leaves either the old set or the new one in place, never a mix.
 */
static int reboot_take_images(struct rt *rt, struct rt_sandbox *s, struct herr *err)
{
	char moving[4096], fin[4096], sdir[4096];
	uint64_t bytes;
	int r;

	sbx_path(rt, s->id, CKPT_MOVING, moving, sizeof(moving));
	sbx_path(rt, s->id, CKPT_FINAL, fin, sizeof(fin));
	snprintf(sdir, sizeof(sdir), "%s/sandboxes/%s", rt->data_dir, s->id);
	remove_tree(moving); /* a crash left it: the originals are whole */
	if (!dir_exists(fin))
		return herr_set(err, -ENOENT, "sandbox '%s' has no checkpoint", s->id);
	r = copy_images(fin, moving, true, err);
	if (r == 0)
		r = retarget_images(moving, s, s->id, err);
	if (r == 0)
		r = sync_dir(moving, &bytes, err);
	if (r == 0 && renameat2(AT_FDCWD, moving, AT_FDCWD, fin, RENAME_EXCHANGE) < 0)
		r = herr_sys(err, -errno, "exchanging %s and %s", moving, fin);
	if (r == 0)
		r = fsync_path(sdir, O_DIRECTORY);
	remove_tree(moving); /* the old set after the exchange, else the new */
	return r;
}

/*
 * Images from elsewhere take the place of the fresh start's processes. A
 * reboot in the middle of a resume left the sandbox's own images in
 * checkpoint.restoring (rt_checkpoint_from_other_boot reads them there):
 * with the fresh start's processes ended they go back to checkpoint first,
 * or the rewrite would find none and the memory be dropped.
 */
static int take_moved_images(struct rt *rt, struct rt_sandbox *s,
			     const struct rt_restore_spec *spec, struct herr *err)
{
	int r = end_fresh_start(rt, s, err);

	if (r == 0 && spec->other_boot)
		r = recover_resume(rt, s->id, err);
	if (r < 0)
		return r;
	return spec->fork ? fork_take_images(rt, s, spec->fork, err) :
			    reboot_take_images(rt, s, err);
}

/* CRIU failed: no half-restored task survives (a resume retried at once
 * would find the sandbox "running"), and the images go back. */
static void restore_undo(struct rt *rt, const char *id, const char *restoring,
			 const char *fin, pid_t keeper, const struct rt_restore_spec *spec,
			 struct herr *err)
{
	char log[4200];

	snprintf(log, sizeof(log), "%s/restore.log", restoring);
	append_log_tail(err, log);
	if (keeper > 0)
		waitpid(keeper, NULL, 0);
	rt_cg_kill(rt, id, 0);
	rt_cg_freeze(rt, id, false, NULL);
	if (!cgroup_wait_empty(rt, id, 5000))
		log_warn("runtime", id, "tasks of the failed restore still exit");
	rename(restoring, fin);
	log_warn("runtime", id, "%s: %s", spec->fork ? "fork from a snapshot failed" :
		 "resume failed, images kept", err ? err->msg : "");
}

/*
 * Parts of CRIU's restore run inside the sandbox's user namespace and open
 * images then: the images become the sandbox root's (host uid uid_base,
 * whose memory it is) and readable, which exposes nothing: <data_dir>/
 * sandboxes is 0700, so no other host user can reach them. From the rename
 * on, a second resume finds no images: it cannot run twice.
 */
static int take_images(struct rt *rt, struct restore_ctx *c, const char *fin,
		       const char *restoring, struct herr *err)
{
	char path[4096];
	int r;

	c->n_files = read_ext_files(fin, c->files, MAX_EXT_FILES, err);
	if (c->n_files < 0)
		return c->n_files;
	if ((r = open_ext_files(rt, c, err)) < 0)
		return r;
	if (rename(fin, restoring) < 0)
		return herr_sys(err, -errno, "rename %s to %s", fin, restoring);
	if ((r = chown_tree(restoring, c->s->uid_base, err)) < 0) {
		rename(restoring, fin);
		return r;
	}
	c->dir = restoring;
	pidfile_path(rt, c->s->id, c->pidfile, sizeof(c->pidfile));
	unlink(c->pidfile); /* CRIU kills the tree if the pidfile exists */
	snprintf(path, sizeof(path), "%s/%s/exit", rt->run_dir, c->s->id);
	unlink(path);
	return 0;
}

static int restore_locked(struct rt *rt, struct rt_sandbox *s,
			  const struct rt_restore_spec *spec, const struct rt_ckpt_opts *opts,
			  struct rt_ckpt_stats *stats, struct herr *err)
{
	_cleanup_(restore_ctx_release) struct restore_ctx c = {
		.rt = rt, .s = s, .spec = spec, .opts = opts,
		.out_r = -1, .log_fd = -1, .lock_fd = -1,
	};
	struct rt_ckpt_stats st = { 0 };
	struct restore_report rep = { 0 };
	uint64_t t0 = now_ms(), t1;
	char fin[4096], restoring[4096];
	pid_t keeper = -1;
	int r;

	for (int i = 0; i < MAX_EXT_FILES; i++)
		c.file_fds[i] = -1;
	_cleanup_close_ int lock = lock_sandbox(rt, s->id, err);
	if (lock < 0)
		return lock;
	c.lock_fd = lock;
	if (moved(spec) && (r = take_moved_images(rt, s, spec, err)) < 0)
		return r;
	if ((r = recover_resume(rt, s->id, err)) < 0)
		return r;
	sbx_path(rt, s->id, CKPT_FINAL, fin, sizeof(fin));
	sbx_path(rt, s->id, CKPT_RESTORING, restoring, sizeof(restoring));
	if ((r = restore_check(rt, s, fin, err)) < 0 ||
	    (r = take_images(rt, &c, fin, restoring, err)) < 0)
		return r;

	t1 = now_ms();
	r = spawn_restore(rt, &c, &keeper, &rep, err);
	st.criu_ms = now_ms() - t1;
	unlink(c.pidfile);
	scratch_remove(rt, s->id);
	if (r < 0) {
		restore_undo(rt, s->id, restoring, fin, keeper, spec, err);
		return r;
	}
	adopt_restored(rt, s, keeper, rep.init_pid);
	netns_unpin(rt, s->id);
	st.image_bytes = dir_bytes(restoring);
	remove_tree(restoring);
	st.total_ms = now_ms() - t0;
	log_info("runtime", s->id, "%s pid=%d criu_ms=%llu total_ms=%llu tcp_repaired=%d",
		 spec->fork ? "forked" : spec->other_boot ? "resumed after a reboot" :
		 "resumed", rep.init_pid,
		 (unsigned long long)st.criu_ms, (unsigned long long)st.total_ms, rep.repaired);
	if (stats)
		*stats = st;
	return 0;
}

int rt_restore(struct rt *rt, const char *id, const struct rt_restore_spec *spec,
	       const struct rt_ckpt_opts *opts, struct rt_ckpt_stats *stats,
	       struct herr *err)
{
	if (!spec || !spec->n_layers || spec->n_layers > RT_MAX_LAYERS || !spec->agent_dir)
		return herr_set(err, -EINVAL, "restore spec: layers (1-%d) and agent_dir needed",
				RT_MAX_LAYERS);
	if (spec->fork && (!spec->fork->images || !spec->fork->hostname))
		return herr_set(err, -EINVAL, "restore spec: a fork needs images and hostname");
	if (spec->fork && spec->other_boot)
		return herr_set(err, -EINVAL, "restore spec: a fork's images are not its own");
	struct rt_sandbox *s = sandbox_lock(rt, id, err);
	if (!s)
		return -ENOENT;
	int r = restore_locked(rt, s, spec, opts, stats, err);
	pthread_mutex_unlock(&s->lock);
	return r;
}

int rt_checkpoint_copy(struct rt *rt, const char *id, const char *dir, uint64_t *bytes,
		       struct herr *err)
{
	char fin[4096];

	if (!rt_id_valid(id))
		return herr_set(err, -EINVAL, "id: must be 1-%d of [A-Za-z0-9_-]", RT_ID_MAX);
	sbx_path(rt, id, CKPT_FINAL, fin, sizeof(fin));
	int r = copy_images(fin, dir, false, err);
	if (r == 0 && (r = sync_dir(dir, bytes, err)) < 0)
		remove_tree(dir);
	return r;
}

/* ---------- after a hutchd crash ---------- */

/* Like lock_sandbox, but waits up to ms for a holder to let go. */
static int lock_sandbox_wait(struct rt *rt, const char *id, unsigned ms, struct herr *err)
{
	for (unsigned waited = 0;; waited += 50) {
		int fd = lock_sandbox(rt, id, err);

		if (fd != -EBUSY || waited >= ms)
			return fd;
		usleep(50 * 1000);
	}
}

/*
 * A restore keeper that outlived its hutchd wrote the restored tree's pids
 * into the state file after rt_init had read the old ones (or the new ones
 * could not be opened then): take them now, if that init is alive.
 */
static void adopt_keeper_restore(struct rt *rt, struct rt_sandbox *s)
{
	struct rt_sandbox *now = calloc(1, sizeof(*now));
	struct herr err;
	char path[64];

	if (!now)
		return;
	if (s->state == RT_STATE_RUNNING || rt_state_read(rt, s->id, now, &err) < 0 ||
	    now->init_pid <= 0 || !now->init_start ||
	    (now->init_pid == s->init_pid && now->init_start == s->init_start) ||
	    rt_proc_starttime(now->init_pid) != now->init_start ||
	    !cgroup_has_tasks(rt, s->id))
		goto out;
	if (s->net.fd < 0) {
		snprintf(path, sizeof(path), "/proc/%d/ns/net", now->init_pid);
		s->net.fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	adopt_restored(rt, s, now->keeper_pid, now->init_pid);
	log_info("runtime", s->id, "adopted the restore of a hutchd that died: pid=%d",
		 now->init_pid);
out:
	free(now);
}

/*
 * Images in checkpoint.restoring: the restore either finished (the keeper
 * recorded a running tree: the images are spent) or did not (whatever it
 * left is killed and the images go back: paused, resumable again).
 */
static void recover_restoring(struct rt *rt, struct rt_sandbox *s)
{
	char restoring[4096];
	struct herr err;

	sbx_path(rt, s->id, CKPT_RESTORING, restoring, sizeof(restoring));
	if (!dir_exists(restoring))
		return;
	if (s->state == RT_STATE_RUNNING && cgroup_has_tasks(rt, s->id)) {
		netns_unpin(rt, s->id);
		remove_tree(restoring);
		scratch_remove(rt, s->id);
		return;
	}
	rt_cg_kill(rt, s->id, 0);
	rt_cg_freeze(rt, s->id, false, NULL);
	if (!cgroup_wait_empty(rt, s->id, 5000))
		log_warn("runtime", s->id, "tasks of an unfinished restore do not end");
	scratch_remove(rt, s->id);
	if (recover_resume(rt, s->id, &err) < 0)
		log_warn("runtime", s->id, "images of an unfinished restore: %s", err.msg);
}

int rt_checkpoint_settle(struct rt *rt, const char *id, struct herr *err)
{
	struct rt_sandbox *s = sandbox_lock(rt, id, err);

	if (!s)
		return -ENOENT;
	/* A CRIU dump (fd 3) or restore keeper of the dead hutchd holds the
	 * lock until its outcome is on disk; nothing is judged before that. */
	_cleanup_close_ int lock = lock_sandbox_wait(rt, id, DEFAULT_TIMEOUT_MS + 5000, err);
	if (lock >= 0) {
		adopt_keeper_restore(rt, s);
		recover_pause(rt, s);
		recover_restoring(rt, s);
	}
	pthread_mutex_unlock(&s->lock);
	return lock < 0 ? lock : 0;
}

/* ---------- housekeeping ---------- */

bool rt_checkpoint_exists(struct rt *rt, const char *id)
{
	char path[4096];

	if (!rt_id_valid(id))
		return false;
	sbx_path(rt, id, CKPT_FINAL, path, sizeof(path));
	if (dir_exists(path))
		return true;
	sbx_path(rt, id, CKPT_RESTORING, path, sizeof(path));
	return dir_exists(path) && !cgroup_has_tasks(rt, id);
}

bool rt_state_left(struct rt *rt, const char *id)
{
	char path[4096];

	if (!rt_id_valid(id))
		return false;
	snprintf(path, sizeof(path), "%s/%s/state", rt->run_dir, id);
	return access(path, F_OK) == 0;
}

bool rt_checkpoint_from_other_boot(struct rt *rt, const char *id)
{
	char path[4096], then[64] = "", now[64];

	if (!rt_id_valid(id))
		return false;
	/* A restore a reboot cut short left them in checkpoint.restoring. */
	sbx_path(rt, id, CKPT_FINAL "/" CKPT_BOOT_ID, path, sizeof(path));
	if (access(path, F_OK) < 0)
		sbx_path(rt, id, CKPT_RESTORING "/" CKPT_BOOT_ID, path, sizeof(path));
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	if (!f || !fgets(then, sizeof(then), f) || read_boot_id(now) < 0)
		return false;
	then[strcspn(then, "\n")] = '\0';
	return strcmp(then, now) != 0;
}

int rt_checkpoint_remove(struct rt *rt, const char *id, struct herr *err)
{
	static const char *const names[] = { CKPT_REMOVING, CKPT_TMP, CKPT_RESTORING,
					     CKPT_MOVING };
	char path[4096], fin[4096];

	if (!rt_id_valid(id))
		return herr_set(err, -EINVAL, "id: must be 1-%d of [A-Za-z0-9_-]", RT_ID_MAX);
	/* Out of the way in one step: a crash half-way through the removal
	 * must not leave a partial "checkpoint" that reads as a pause. */
	sbx_path(rt, id, CKPT_FINAL, fin, sizeof(fin));
	sbx_path(rt, id, CKPT_REMOVING, path, sizeof(path));
	if (dir_exists(fin)) {
		remove_tree(path);
		if (rename(fin, path) < 0)
			return herr_sys(err, -errno, "rename %s to %s", fin, path);
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		sbx_path(rt, id, names[i], path, sizeof(path));
		int r = remove_tree(path);
		if (r < 0 && r != -ENOENT)
			return herr_sys(err, r, "removing %s", path);
	}
	netns_unpin(rt, id);
	scratch_remove(rt, id); /* left by a restore a crash interrupted */
	sbx_path(rt, id, CKPT_LOCK, path, sizeof(path));
	unlink(path);
	sbx_path(rt, id, "checkpoint-failed.log", path, sizeof(path));
	unlink(path);
	return 0;
}

int rt_criu_check(const char *criu, char *version, size_t len, struct herr *err)
{
	char cmd[4200], line[256];
	int major = 0, minor = 0, patch = 0;

	if (!criu)
		criu = criu_path(NULL);
	if (strchr(criu, '\'') || access(criu, X_OK) < 0)
		return herr_sys(err, -errno ? -errno : -EINVAL, "criu binary %s", criu);
	snprintf(cmd, sizeof(cmd), "'%s' --version 2>/dev/null", criu);
	FILE *p = popen(cmd, "re");
	while (p && fgets(line, sizeof(line), p))
		if (sscanf(line, "Version: %d.%d.%d", &major, &minor, &patch) >= 2)
			break;
	if (p)
		pclose(p);
	if (major < 4 || (major == 4 && minor < 2))
		return herr_set(err, -ENOTSUP, "%s is version %d.%d; 4.2 or newer is needed "
				"(scripts/setup-criu)", criu, major, minor);
	if (version)
		snprintf(version, len, "%d.%d.%d", major, minor, patch);
	snprintf(cmd, sizeof(cmd), "'%s' check >/dev/null 2>&1", criu);
	int status = system(cmd);
	if (status != 0)
		return herr_set(err, -ENOTSUP, "`%s check` failed (status %d)", criu, status);
	return 0;
}
