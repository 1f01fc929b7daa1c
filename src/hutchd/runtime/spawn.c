/*
 * Starting a sandbox: the keeper process and the sandbox init.
 *
 * hutchd forks a keeper for each sandbox, usually ahead of time: a pooled
 * keeper ("zygote", see prep.c) waits in prepared cgroups and receives the
 * sandbox's spec and descriptors over a socket. The keeper leaves hutchd's session,
 * closes every descriptor it does not need (so it never holds hutchd's
 * listening sockets or files), joins the sandbox's pooled network namespace,
 * and clones the init into new user, pid, mount, uts, ipc and cgroup
 * namespaces. It then writes the id maps, builds idmapped mounts of the
 * template layers, the agent bundle and the sandbox disk against the child's
 * user namespace, and hands them over on a socket. The child builds its root
 * and execs the init. Afterwards the keeper only waits: it reaps the init and
 * records its wait status in the run dir, so a sandbox neither depends on
 * hutchd staying alive nor loses how it ended.
 *
 * Why this order is safe:
 *  - the child is in its user namespace before it touches any mount, so every
 *    privilege it uses is over namespaces it owns; the host ids behind its
 *    root are an unprivileged range of 65536 ids used by no one else;
 *  - the host netns is never entered by the child: the keeper joins the pooled
 *    namespace before clone, so the child starts inside it;
 *  - the layers are attached read-only before the child sees them, and the
 *    child never sees a host path it could write to: after pivot_root the old
 *    root is detached;
 *  - the seccomp filter is loaded before capabilities drop, and all
 *    descriptors but the error pipe are closed before execve.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include "cleanup.h"
#include "rt_internal.h"

#define N_FIXED_FDS 3 /* disk, agent bundle, sysfs; layers follow */

/* What the keeper reports to hutchd once the init has exec'd (or failed). */
struct spawn_report {
	int code; /* 0 or negative errno */
	pid_t init_pid;
	char msg[HERR_MSG_MAX];
};

/* ---------- the child: inside the new namespaces ---------- */

/* Sends a failure to the keeper through the exec pipe and exits. */
static __attribute__((noreturn, format(printf, 3, 4)))
void child_fail(int errfd, int code, const char *fmt, ...)
{
	struct spawn_report rep = { .code = code < 0 ? code : -EIO };
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(rep.msg, sizeof(rep.msg), fmt, ap);
	va_end(ap);
	if (code < 0 && n >= 0 && (size_t)n < sizeof(rep.msg))
		snprintf(rep.msg + n, sizeof(rep.msg) - n, ": %s", strerror(-code));
	if (write(errfd, &rep, sizeof(rep)) < 0) {
		/* nothing more to tell anyone */
	}
	_exit(127);
}

static int recv_fds(int sock, int *fds, size_t n)
{
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	char ctl[CMSG_SPACE(sizeof(int) * (N_FIXED_FDS + RT_MAX_LAYERS))];
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl, .msg_controllen = CMSG_SPACE(sizeof(int) * n),
	};

	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
		return -EIO;
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int) * n))
		return -EPROTO;
	memcpy(fds, CMSG_DATA(c), sizeof(int) * n);
	return 0;
}

static int write_small_file(const char *path, const char *text)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
				      O_NOFOLLOW, 0644);
	size_t len = strlen(text);

	if (fd < 0)
		return -errno;
	if (write(fd, text, len) != (ssize_t)len)
		return -EIO;
	return 0;
}

static void ensure_dir(int errfd, const char *path, mode_t mode)
{
	if (mkdir(path, mode) < 0 && errno != EEXIST)
		child_fail(errfd, -errno, "mkdir %s", path);
}

static void child_bind_dev(int errfd, const char *name)
{
	char src[32], dst[32];

	snprintf(src, sizeof(src), "/dev/%s", name);
	snprintf(dst, sizeof(dst), "dev/%s", name);
	if (write_small_file(dst, "") < 0)
		child_fail(errfd, -errno, "creating %s", dst);
	/* A bind of the host node: mknod is not allowed in a user namespace,
	 * and these nodes are harmless (no storage, no host state). */
	if (mount(src, dst, NULL, MS_BIND, NULL) < 0)
		child_fail(errfd, -errno, "bind %s", src);
	if (mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC, NULL) < 0)
		child_fail(errfd, -errno, "remount %s", dst);
}

/* Builds /dev inside the new root (cwd is the new root). */
static void child_build_dev(int errfd)
{
	static const char *const nodes[] = { "null", "zero", "full", "random",
					     "urandom", "tty" };

	if (mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC,
		  "mode=755,size=64k,nr_inodes=64") < 0)
		child_fail(errfd, -errno, "mount tmpfs on /dev");
	for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++)
		child_bind_dev(errfd, nodes[i]);

	ensure_dir(errfd, "dev/pts", 0755);
	/* A private devpts: the sandbox never sees host terminals. */
	if (mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		  "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0)
		child_fail(errfd, -errno, "mount devpts");
	if (symlink("pts/ptmx", "dev/ptmx") < 0)
		child_fail(errfd, -errno, "symlink /dev/ptmx");

	ensure_dir(errfd, "dev/shm", 01777);
	if (mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
		child_fail(errfd, -errno, "mount /dev/shm");
	if (symlink("/proc/self/fd", "dev/fd") < 0 ||
	    symlink("/proc/self/fd/0", "dev/stdin") < 0 ||
	    symlink("/proc/self/fd/1", "dev/stdout") < 0 ||
	    symlink("/proc/self/fd/2", "dev/stderr") < 0)
		child_fail(errfd, -errno, "symlinks in /dev");
}

static void child_attach(int errfd, int fd, const char *path)
{
	if (move_mount(fd, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) < 0)
		child_fail(errfd, -errno, "move_mount onto %s", path);
	close(fd);
}

/* Mounts the overlay root at <scratch>/root from the layers and the disk. */
static void child_build_overlay(int errfd, const char *scratch, const int *fds,
				size_t n_layers)
{
	char path[4096], opts[4096];
	size_t off;

	if (mount("hutch-scratch", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
		  "mode=700,size=64k") < 0)
		child_fail(errfd, -errno, "mount scratch tmpfs on %s", scratch);
	if (chdir(scratch) < 0)
		child_fail(errfd, -errno, "chdir %s", scratch);

	ensure_dir(errfd, "disk", 0700);
	child_attach(errfd, fds[0], "disk");
	ensure_dir(errfd, "disk/upper", 0755);
	ensure_dir(errfd, "disk/work", 0700);

	off = (size_t)snprintf(opts, sizeof(opts), "lowerdir=");
	for (size_t i = n_layers; i-- > 0;) {
		snprintf(path, sizeof(path), "l%zu", i);
		ensure_dir(errfd, path, 0700);
		child_attach(errfd, fds[N_FIXED_FDS + i], path);
		off += (size_t)snprintf(opts + off, sizeof(opts) - off, "%s%s/l%zu",
					i + 1 == n_layers ? "" : ":", scratch, i);
		if (off >= sizeof(opts))
			child_fail(errfd, -E2BIG, "overlay options");
	}
	off += (size_t)snprintf(opts + off, sizeof(opts) - off,
				",upperdir=%s/disk/upper,workdir=%s/disk/work,userxattr",
				scratch, scratch);
	if (off >= sizeof(opts))
		child_fail(errfd, -E2BIG, "overlay options");

	ensure_dir(errfd, "root", 0755);
	if (mount("overlay", "root", "overlay", 0, opts) < 0)
		child_fail(errfd, -errno, "mount overlay root");
	if (chdir("root") < 0)
		child_fail(errfd, -errno, "chdir into new root");
}

static void child_write_etc(int errfd, const struct rt *rt, const struct rt_spec *spec,
			    const char *hostname)
{
	char text[1024];
	size_t off = 0;
	char ns[sizeof(rt->nameservers)];
	char *save = NULL;

	ensure_dir(errfd, "etc", 0755);
	snprintf(ns, sizeof(ns), "%s", rt->nameservers);
	for (char *tok = strtok_r(ns, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
		off += (size_t)snprintf(text + off, sizeof(text) - off, "nameserver %s\n", tok);
	if (write_small_file("etc/resolv.conf", text) < 0)
		child_fail(errfd, -errno, "writing /etc/resolv.conf");

	snprintf(text, sizeof(text),
		 "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
		 "127.0.1.1\t%s\n", hostname);
	if (write_small_file("etc/hosts", text) < 0)
		child_fail(errfd, -errno, "writing /etc/hosts");
	snprintf(text, sizeof(text), "%s\n", hostname);
	if (write_small_file("etc/hostname", text) < 0)
		child_fail(errfd, -errno, "writing /etc/hostname");
	(void)spec;
}

static void child_mount_specials(int errfd, const int *fds)
{
	ensure_dir(errfd, "proc", 0555);
	/* A fresh proc of the sandbox's own pid namespace. */
	if (mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		child_fail(errfd, -errno, "mount /proc");
	/* Sysctls stay read-only even for knobs the namespace would allow. */
	if (mount("proc/sys", "proc/sys", NULL, MS_BIND | MS_REC, NULL) < 0 ||
	    mount(NULL, "proc/sys", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID |
		  MS_NODEV | MS_NOEXEC, NULL) < 0)
		child_fail(errfd, -errno, "read-only /proc/sys");

	ensure_dir(errfd, "dev", 0755);
	child_build_dev(errfd);

	ensure_dir(errfd, "sys", 0555);
	child_attach(errfd, fds[2], "sys");

	ensure_dir(errfd, RT_AGENT_MOUNT + 1, 0755);
	child_attach(errfd, fds[1], RT_AGENT_MOUNT + 1);

	ensure_dir(errfd, "tmp", 01777);
}

static void child_drop_privileges(int errfd, const struct rt *rt)
{
	uint64_t keep = rt_caps_keep();

	/*
	 * The filter goes on first: loading it without no_new_privs needs
	 * CAP_SYS_ADMIN (in our namespace), which is about to go. We do not set
	 * no_new_privs because setuid tools such as sudo must work inside.
	 */
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &rt->seccomp) < 0)
		child_fail(errfd, -errno, "loading seccomp filter");

	for (int cap = 0; cap <= CAP_LAST_CAP; cap++) {
		if (keep & (1ull << cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
			child_fail(errfd, -errno, "dropping capability %d", cap);
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		child_fail(errfd, -errno, "clearing ambient capabilities");

	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2] = {
		{ .effective = (uint32_t)keep, .permitted = (uint32_t)keep },
		{ .effective = (uint32_t)(keep >> 32), .permitted = (uint32_t)(keep >> 32) },
	};
	if (syscall(SYS_capset, &hdr, data) < 0)
		child_fail(errfd, -errno, "capset");
}

static __attribute__((noreturn))
void child_main(const struct rt *rt, const struct rt_spec *spec, int sock, int errfd,
		struct rt_marks *marks)
{
	int fds[N_FIXED_FDS + RT_MAX_LAYERS];
	char scratch[4096];
	const char *hostname = spec->hostname ? spec->hostname : spec->id;
	int r;

	rt_mark(marks, RT_M_C_START);
	r = recv_fds(sock, fds, N_FIXED_FDS + spec->n_layers);
	if (r < 0)
		child_fail(errfd, r, "receiving mounts from keeper");
	close(sock);
	rt_mark(marks, RT_M_C_RECV);
	/* The cgroup namespace is made only now that the keeper has put us in
	 * the sandbox's v1 cgroups too (clone3 places us only in the v2 one):
	 * rooted there, it hides every host cgroup path, and CRIU can
	 * checkpoint the sandbox (it refuses tasks outside their cgroupns root). */
	if (unshare(CLONE_NEWCGROUP) < 0)
		child_fail(errfd, -errno, "unshare of the cgroup namespace");

	if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0 || setgroups(0, NULL) < 0)
		child_fail(errfd, -errno, "becoming root of the user namespace");

	/* Nothing we mount from here on may propagate back to the host. */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		child_fail(errfd, -errno, "making / private");
	rt_mark(marks, RT_M_C_ROOTED);

	snprintf(scratch, sizeof(scratch), "%s/mnt", rt->run_dir);
	child_build_overlay(errfd, scratch, fds, spec->n_layers);
	rt_mark(marks, RT_M_C_OVERLAY);
	child_mount_specials(errfd, fds);
	rt_mark(marks, RT_M_C_SPECIAL);
	child_write_etc(errfd, rt, spec, hostname);

	if (sethostname(hostname, strlen(hostname)) < 0)
		child_fail(errfd, -errno, "sethostname");
	rt_mark(marks, RT_M_C_ETC);

	/* pivot_root(".", ".") stacks the old root on top; detaching it leaves
	 * no path back to any host file. */
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		child_fail(errfd, -errno, "pivot_root");
	if (umount2(".", MNT_DETACH) < 0)
		child_fail(errfd, -errno, "detaching the old root");
	if (chdir("/") < 0)
		child_fail(errfd, -errno, "chdir /");
	rt_mark(marks, RT_M_C_PIVOT);

	if (setsid() < 0)
		child_fail(errfd, -errno, "setsid");
	child_drop_privileges(errfd, rt);
	rt_mark(marks, RT_M_C_PRIVS);

	/* Only the exec-error pipe (close-on-exec) survives past here. */
	if (dup3(errfd, 3, O_CLOEXEC) < 0)
		child_fail(errfd, -errno, "dup of error pipe");
	errfd = 3;
	close_range(4, ~0u, 0);

	static const char *const default_env[] = {
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL };
	rt_mark(marks, RT_M_C_EXEC);
	execve(spec->argv[0], (char *const *)spec->argv,
	       (char *const *)(spec->env ? spec->env : default_env));
	child_fail(errfd, -errno, "execve %s", spec->argv[0]);
}

/* ---------- the keeper: in the host namespaces ---------- */

static int write_id_map(pid_t pid, const char *file, uint32_t base)
{
	char path[64], map[64];

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, file);
	snprintf(map, sizeof(map), "0 %u %u\n", base, RT_IDS_PER_SANDBOX);
	return rt_write_file(path, map, NULL);
}

/* A detached, idmapped, read-only (optionally) clone of a host directory. */
static int idmapped_tree(const char *path, int userns, bool rdonly, struct herr *err)
{
	_cleanup_close_ int fd = open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
	struct mount_attr attr = {
		.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV |
			    (rdonly ? MOUNT_ATTR_RDONLY : 0),
		.userns_fd = userns,
	};

	if (fd < 0)
		return herr_sys(err, -errno, "open_tree %s", path);
	if (mount_setattr(fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
		return herr_sys(err, -errno, "idmapping %s", path);
	return steal_fd(&fd);
}

static int send_fds(int sock, const int *fds, size_t n)
{
	char byte = 'm';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	char ctl[CMSG_SPACE(sizeof(int) * (N_FIXED_FDS + RT_MAX_LAYERS))];
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl, .msg_controllen = CMSG_SPACE(sizeof(int) * n),
	};
	struct cmsghdr *c;

	memset(ctl, 0, sizeof(ctl));
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * n);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
	return sendmsg(sock, &msg, MSG_NOSIGNAL) == 1 ? 0 : -errno;
}

/* The mount descriptors sent to the init in one message; all closed when
 * the batch goes out of scope (the init has its own copies by then). */
struct fd_batch {
	int fds[N_FIXED_FDS + RT_MAX_LAYERS];
	size_t n;
};

static void fd_batch_closep(struct fd_batch *b)
{
	for (size_t i = 0; i < b->n; i++)
		close(b->fds[i]);
}

/* Adds fd, or passes on the negative error the call that made it returned. */
static int fd_batch_add(struct fd_batch *b, int fd)
{
	if (fd < 0)
		return fd;
	b->fds[b->n++] = fd;
	return 0;
}

/* Builds and sends the mounts the child needs, in its user namespace. */
static int keeper_send_mounts(struct rt *rt, struct rt_sandbox *s, const struct rt_spec *spec,
			      pid_t child, int sock, int disk_fd, struct herr *err)
{
	_cleanup_(fd_batch_closep) struct fd_batch batch = { .n = 0 };
	char path[64];
	int r;

	snprintf(path, sizeof(path), "/proc/%d/ns/user", child);
	_cleanup_close_ int userns = open(path, O_RDONLY | O_CLOEXEC);
	if (userns < 0)
		return herr_sys(err, -errno, "open %s", path);

	/* The disk was never attached anywhere, so it can be idmapped as is:
	 * files are stored with ids 0..65535 whatever slot the sandbox gets. */
	struct mount_attr dattr = {
		.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV, .userns_fd = userns,
	};
	if (mount_setattr(disk_fd, "", AT_EMPTY_PATH, &dattr, sizeof(dattr)) < 0)
		return herr_sys(err, -errno, "idmapping the sandbox disk");
	if (fd_batch_add(&batch, fcntl(disk_fd, F_DUPFD_CLOEXEC, 3)) < 0)
		return herr_sys(err, -errno, "dup of disk mount");
	r = fd_batch_add(&batch, idmapped_tree(spec->agent_dir, userns, true, err));
	if (r == 0)
		r = fd_batch_add(&batch, rt_net_sysfs_fd(s->net.fd, err));
	for (size_t i = 0; r == 0 && i < spec->n_layers; i++)
		r = fd_batch_add(&batch, idmapped_tree(spec->layers[i], userns, true, err));
	if (r < 0)
		return r;
	r = send_fds(sock, batch.fds, batch.n);
	return r < 0 ? herr_sys(err, r, "sending mounts to the sandbox init") : 0;
}

struct keeper_ctx {
	struct rt *rt;
	struct rt_sandbox *s;
	const struct rt_spec *spec;
	int report_fd;  /* to hutchd */
	int disk_fd;    /* fsmount of the sandbox disk */
	int cg_fd;      /* cgroup2 leaf for CLONE_INTO_CGROUP, or -1 */
	int log_fd;     /* init's stdout/stderr */
	struct rt_marks *marks; /* shared timestamps page, or NULL */
	/* A pooled keeper (zygote): it is already in the sandbox's v1
	 * cgroups, so the init is born there; the keeper leaves afterwards. */
	bool in_cgroups;
	int leave_fd;   /* pooled keeper: readable when it is time to move out */
};

static pid_t keeper_clone_init(struct keeper_ctx *k, int sock_child, int err_w)
{
	struct clone_args args = {
		.flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS |
			 CLONE_NEWIPC,
		.exit_signal = SIGCHLD,
	};

	if (k->cg_fd >= 0) {
		args.flags |= CLONE_INTO_CGROUP;
		args.cgroup = (uint64_t)k->cg_fd;
	}
	pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* if the keeper dies during setup */
		child_main(k->rt, k->spec, sock_child, err_w, k->marks);
	}
	return pid;
}

static void keeper_report(int fd, const struct spawn_report *rep)
{
	if (write(fd, rep, sizeof(*rep)) < 0) {
		/* hutchd is gone; the sandbox goes on */
	}
}

/* Records how the init ended, atomically, for hutchd now or after a restart. */
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
 * A pooled keeper sits in the sandbox's v1 cgroups; it moves out when hutchd
 * says so (a byte or EOF on leave_fd), or not at all if the init ends first.
 * hutchd picks a moment when no create is running: a v1 attach holds
 * cgroup_mutex through an RCU grace period (~10 ms), and a clone3 with
 * CLONE_INTO_CGROUP or a cgroup mkdir of a create would wait for it.
 */
static void keeper_wait_leave(struct keeper_ctx *k, pid_t child)
{
	_cleanup_close_ int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
	struct pollfd p[2] = {
		{ .fd = pidfd, .events = POLLIN },
		{ .fd = k->leave_fd, .events = POLLIN },
	};

	if (pidfd < 0 || k->leave_fd < 0)
		return;
	while (poll(p, 2, -1) < 0 && errno == EINTR)
		;
	if (p[1].revents && !p[0].revents)
		rt_cg_keeper_leave(k->rt, k->s->id, &k->spec->limits);
	close(k->leave_fd);
	k->leave_fd = -1;
}

/*
 * The init's stdout/stderr become the write end of a pipe (fds 1 and 2 of
 * the keeper, inherited by the clone); the keeper keeps the read end. With no
 * log file the keeper's 1 and 2 are /dev/null already and nothing changes.
 */
static int keeper_out_pipe(struct keeper_ctx *k, int *read_end)
{
	int p[2];

	*read_end = -1;
	if (k->log_fd < 0)
		return 0;
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	/* dup2 clears close-on-exec: the init keeps 1 and 2 across execve. */
	if (dup2(p[1], 1) < 0 || dup2(p[1], 2) < 0) {
		close(p[0]);
		close(p[1]);
		return -1;
	}
	close(p[1]);
	*read_end = p[0];
	return 0;
}

/* After the clone only the sandbox may hold the write end, so that the
 * read end sees EOF once every process in it has gone. */
static void keeper_drop_out(int read_end)
{
	int null;

	if (read_end < 0)
		return;
	null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, 1);
		dup2(null, 2);
		close(null);
	}
}

/*
 * Until the init ends: drains its output into the capped init.log, and (a
 * pooled keeper) moves out of the sandbox's v1 cgroups when hutchd says so,
 * as keeper_wait_leave does.
 */
static void keeper_pump(struct keeper_ctx *k, pid_t child, int out_r)
{
	_cleanup_close_ int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
	int leave = k->in_cgroups ? k->leave_fd : -1;
	struct rt_initlog log;
	struct pollfd p[3] = {
		{ .fd = pidfd, .events = POLLIN },
		{ .fd = out_r, .events = POLLIN },
		{ .fd = leave, .events = POLLIN },
	};

	if (pidfd < 0)
		return; /* waitpid follows; output then waits in the pipe */
	rt_initlog_init(&log, k->log_fd, RT_INIT_LOG_MAX);
	while (!(p[0].revents & POLLIN)) {
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		if (p[1].revents && rt_initlog_drain(&log, out_r) == 0)
			p[1].fd = -1; /* EOF: every writer is gone */
		if (p[2].revents) {
			if (!(p[0].revents & POLLIN))
				rt_cg_keeper_leave(k->rt, k->s->id, &k->spec->limits);
			close(k->leave_fd);
			k->leave_fd = -1;
			p[2].fd = -1;
		}
	}
}

/* The init has ended (and the kernel has killed the rest of its pid
 * namespace): what is still in the pipe goes to the log, without waiting. */
static void keeper_drain_rest(struct keeper_ctx *k, int out_r)
{
	struct rt_initlog log;
	int flags = fcntl(out_r, F_GETFL);

	if (flags < 0 || fcntl(out_r, F_SETFL, flags | O_NONBLOCK) < 0)
		return;
	rt_initlog_init(&log, k->log_fd, RT_INIT_LOG_MAX);
	for (int i = 0; i < 64 && rt_initlog_drain(&log, out_r) > 0; i++)
		;
	close(out_r);
}

static __attribute__((noreturn)) void keeper_main(struct keeper_ctx *k)
{
	struct spawn_report rep = { 0 };
	struct herr err;
	int sv[2], ep[2], out_r = -1;
	pid_t child;

	herr_clear(&err);
	rt_mark(k->marks, RT_M_K_START);
	if (setns(k->s->net.fd, CLONE_NEWNET) < 0) {
		rep.code = herr_sys(&err, -errno, "setns into sandbox netns");
		goto fail;
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0 ||
	    pipe2(ep, O_CLOEXEC) < 0) {
		rep.code = herr_sys(&err, -errno, "socketpair/pipe for init");
		goto fail;
	}
	if (keeper_out_pipe(k, &out_r) < 0) {
		rep.code = herr_sys(&err, -errno, "pipe for the init's output");
		goto fail;
	}

	child = keeper_clone_init(k, sv[1], ep[1]);
	if (child < 0) {
		rep.code = herr_sys(&err, -errno, "clone3 of sandbox init");
		goto fail;
	}
	close(sv[1]);
	close(ep[1]);
	keeper_drop_out(out_r);
	rep.init_pid = child;
	rt_mark(k->marks, RT_M_K_CLONE);

	if (write_id_map(child, "uid_map", k->s->uid_base) < 0 ||
	    write_id_map(child, "gid_map", k->s->uid_base) < 0) {
		rep.code = herr_sys(&err, -errno, "writing id maps of pid %d", child);
		goto kill;
	}
	rt_mark(k->marks, RT_M_K_MAPS);
	/* v1 hierarchies have no CLONE_INTO_CGROUP: attach before the child
	 * runs a single instruction of its own (unless it was born there). */
	if (!k->in_cgroups) {
		rep.code = rt_cg_attach(k->rt, k->s->id, child, &err);
		if (rep.code < 0)
			goto kill;
	}
	rt_mark(k->marks, RT_M_K_ATTACH);
	rep.code = keeper_send_mounts(k->rt, k->s, k->spec, child, sv[0], k->disk_fd, &err);
	if (rep.code < 0)
		goto kill;
	close(sv[0]);
	rt_mark(k->marks, RT_M_K_MOUNTS);

	/* EOF on the pipe means execve succeeded; a report means it failed. */
	struct spawn_report child_rep;
	ssize_t got = read(ep[0], &child_rep, sizeof(child_rep));
	close(ep[0]);
	if (got > 0) {
		child_rep.msg[sizeof(child_rep.msg) - 1] = '\0';
		rep.code = child_rep.code;
		snprintf(err.msg, sizeof(err.msg), "%s", child_rep.msg);
		goto kill;
	}
	rt_mark(k->marks, RT_M_K_EXECD);
	keeper_report(k->report_fd, &rep);
	close(k->report_fd);
	if (k->marks)
		munmap(k->marks, sizeof(*k->marks));
	if (out_r >= 0)
		keeper_pump(k, child, out_r);
	else if (k->in_cgroups)
		keeper_wait_leave(k, child);

	int wstatus;
	while (waitpid(child, &wstatus, 0) < 0 && errno == EINTR)
		;
	if (out_r >= 0)
		keeper_drain_rest(k, out_r);
	keeper_record_exit(k->rt, k->s->id, wstatus);
	_exit(0);

kill:
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
fail:
	snprintf(rep.msg, sizeof(rep.msg), "%s", err.msg);
	keeper_report(k->report_fd, &rep);
	_exit(1);
}

/* Closes every descriptor of the fresh keeper except the ones in keep[]. */
static void close_all_but(const int *keep, size_t n)
{
	unsigned lo = 3;
	int sorted[8];

	memcpy(sorted, keep, n * sizeof(int));
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
			int t = sorted[j];
			sorted[j] = sorted[j - 1];
			sorted[j - 1] = t;
		}
	for (size_t i = 0; i < n; i++) {
		if (sorted[i] < 0 || (unsigned)sorted[i] < lo)
			continue;
		if ((unsigned)sorted[i] > lo)
			close_range(lo, (unsigned)sorted[i] - 1, 0);
		lo = (unsigned)sorted[i] + 1;
	}
	close_range(lo, ~0u, 0);
}

static int open_log(struct rt *rt, const char *id)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/sandboxes/%s/init.log", rt->data_dir, id);
	return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
}

static int wait_report(int fd, struct spawn_report *rep, struct herr *err)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	size_t got = 0;

	while (got < sizeof(*rep)) {
		int r = poll(&p, 1, 20000);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return herr_set(err, -ETIMEDOUT, "sandbox keeper did not report in 20 s");
		ssize_t n = read(fd, (char *)rep + got, sizeof(*rep) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return herr_set(err, -EIO, "sandbox keeper exited before reporting");
		got += (size_t)n;
	}
	rep->msg[sizeof(rep->msg) - 1] = '\0';
	if (rep->code < 0)
		return herr_set(err, rep->code, "%s", rep->msg);
	return 0;
}

/* ---------- keepers forked ahead (zygotes) ---------- */

/*
 * A zygote is a keeper forked before its sandbox is known. It sits in the
 * pooled v1 cgroups <name> (it attached itself, paying the attach there), and
 * waits for one request: the sandbox's spec, flattened, and its descriptors.
 * It then is that sandbox's keeper. The request comes from our own process
 * over a private socketpair, so it is trusted, but it is still parsed with
 * bounds checks: a bug must end in a refused spawn, not a wild pointer.
 */
#define ZY_BLOB_MAX 65536
#define ZY_MAX_ARGS 1024

enum { ZY_FD_REPORT, ZY_FD_DISK, ZY_FD_NETNS, ZY_FD_CG, ZY_FD_LOG, ZY_FD_MARKS, ZY_NFDS };

struct zy_hdr {
	uint32_t uid_base;
	uint32_t n_layers, n_argv, n_env;
	uint32_t has_hostname, has_env;
	struct rt_limits limits;
	uint32_t fd_real;  /* bit ZY_FD_x set: a real descriptor, not a stand-in */
	uint32_t blob_len;
};

static int blob_put(char *blob, size_t *off, const char *str)
{
	size_t len = strlen(str) + 1;

	if (*off + len > ZY_BLOB_MAX - sizeof(struct zy_hdr))
		return -E2BIG;
	memcpy(blob + *off, str, len);
	*off += len;
	return 0;
}

static size_t count_strs(const char *const *v)
{
	size_t n = 0;

	while (v && v[n])
		n++;
	return n;
}

/* Flattens what the keeper needs into msg (header, then NUL-ended strings:
 * id, agent_dir, hostname?, layers, argv, env). */
static int zy_pack(const struct rt_sandbox *s, const struct rt_spec *spec, uint32_t fd_real,
		   char *msg, size_t *len)
{
	struct zy_hdr h = {
		.uid_base = s->uid_base, .n_layers = (uint32_t)spec->n_layers,
		.n_argv = (uint32_t)count_strs(spec->argv),
		.n_env = (uint32_t)count_strs(spec->env),
		.has_hostname = spec->hostname != NULL, .has_env = spec->env != NULL,
		.limits = spec->limits, .fd_real = fd_real,
	};
	char *blob = msg + sizeof(h);
	size_t off = 0;
	int r = 0;

	if (h.n_argv > ZY_MAX_ARGS || h.n_env > ZY_MAX_ARGS)
		return -E2BIG;
	r = blob_put(blob, &off, s->id);
	if (r == 0)
		r = blob_put(blob, &off, spec->agent_dir);
	if (r == 0 && spec->hostname)
		r = blob_put(blob, &off, spec->hostname);
	for (size_t i = 0; r == 0 && i < spec->n_layers; i++)
		r = blob_put(blob, &off, spec->layers[i]);
	for (size_t i = 0; r == 0 && i < h.n_argv; i++)
		r = blob_put(blob, &off, spec->argv[i]);
	for (size_t i = 0; r == 0 && i < h.n_env; i++)
		r = blob_put(blob, &off, spec->env[i]);
	if (r < 0)
		return r;
	h.blob_len = (uint32_t)off;
	memcpy(msg, &h, sizeof(h));
	*len = sizeof(h) + off;
	return 0;
}

/* The next string of the blob, or NULL when it would run past the end. */
static const char *blob_next(const char *blob, size_t len, size_t *off)
{
	const char *str = blob + *off;
	const char *nul = *off < len ? memchr(str, '\0', len - *off) : NULL;

	if (!nul)
		return NULL;
	*off += (size_t)(nul - str) + 1;
	return str;
}

/* Fills arr[0..n) from the blob and NULL-ends it; false when short. */
static bool blob_list(const char *blob, size_t len, size_t *off, const char **arr,
		      uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (!(arr[i] = blob_next(blob, len, off)))
			return false;
	arr[n] = NULL;
	return true;
}

struct zy_req {
	struct rt_sandbox s;
	struct rt_spec spec;
	const char *layers[RT_MAX_LAYERS + 1];
	const char *argv[ZY_MAX_ARGS + 1];
	const char *env[ZY_MAX_ARGS + 1];
	uint32_t fd_real;
};

static int zy_unpack(const char *msg, size_t len, struct zy_req *q)
{
	struct zy_hdr h;
	size_t off = 0;

	if (len < sizeof(h))
		return -EPROTO;
	memcpy(&h, msg, sizeof(h));
	const char *blob = msg + sizeof(h);
	if (h.blob_len != len - sizeof(h) || h.n_layers == 0 || h.n_layers > RT_MAX_LAYERS ||
	    h.n_argv == 0 || h.n_argv > ZY_MAX_ARGS || h.n_env > ZY_MAX_ARGS)
		return -EPROTO;
	const char *id = blob_next(blob, h.blob_len, &off);
	q->spec.agent_dir = blob_next(blob, h.blob_len, &off);
	q->spec.hostname = h.has_hostname ? blob_next(blob, h.blob_len, &off) : NULL;
	if (!id || strlen(id) > RT_ID_MAX || !q->spec.agent_dir ||
	    (h.has_hostname && !q->spec.hostname) ||
	    !blob_list(blob, h.blob_len, &off, q->layers, h.n_layers) ||
	    !blob_list(blob, h.blob_len, &off, q->argv, h.n_argv) ||
	    !blob_list(blob, h.blob_len, &off, q->env, h.n_env))
		return -EPROTO;
	snprintf(q->s.id, sizeof(q->s.id), "%s", id);
	q->s.uid_base = h.uid_base;
	q->spec.id = q->s.id;
	q->spec.layers = q->layers;
	q->spec.n_layers = h.n_layers;
	q->spec.argv = q->argv;
	q->spec.env = h.has_env ? q->env : NULL;
	q->spec.limits = h.limits;
	q->fd_real = h.fd_real;
	return 0;
}

static __attribute__((noreturn))
void zygote_main(struct rt *rt, const char *name, int sock)
{
	static char msg[ZY_BLOB_MAX];
	static struct zy_req q;
	int fds[ZY_NFDS];
	int code;

	code = rt_cg_attach_self(rt, name);
	if (write(sock, &code, sizeof(code)) != sizeof(code) || code < 0)
		_exit(1);

	char ctl[CMSG_SPACE(sizeof(fds))];
	struct iovec iov = { .iov_base = msg, .iov_len = sizeof(msg) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
			     .msg_controllen = sizeof(ctl) };
	ssize_t n;
	while ((n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
		;
	if (n <= 0)
		_exit(0); /* the pool let us go */
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(fds)) ||
	    (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
		_exit(1);
	memcpy(fds, CMSG_DATA(c), sizeof(fds));

	if (zy_unpack(msg, (size_t)n, &q) < 0) {
		struct spawn_report rep = { .code = -EPROTO };
		snprintf(rep.msg, sizeof(rep.msg), "bad request to a pooled keeper");
		keeper_report(fds[ZY_FD_REPORT], &rep);
		_exit(1);
	}
	/* A missing descriptor cannot travel as -1: /dev/null stood in for it. */
	for (int i = 0; i < ZY_NFDS; i++)
		if (!(q.fd_real & (1u << i))) {
			close(fds[i]);
			fds[i] = -1;
		}
	struct rt_marks *marks = NULL;
	if (fds[ZY_FD_MARKS] >= 0) {
		marks = mmap(NULL, sizeof(*marks), PROT_READ | PROT_WRITE, MAP_SHARED,
			     fds[ZY_FD_MARKS], 0);
		close(fds[ZY_FD_MARKS]);
		if (marks == MAP_FAILED)
			marks = NULL;
	}
	struct keeper_ctx k = {
		.rt = rt, .s = &q.s, .spec = &q.spec, .report_fd = fds[ZY_FD_REPORT],
		.disk_fd = fds[ZY_FD_DISK], .cg_fd = fds[ZY_FD_CG], .log_fd = fds[ZY_FD_LOG],
		.marks = marks, .in_cgroups = true, .leave_fd = sock,
	};
	q.s.net.fd = fds[ZY_FD_NETNS];
	keeper_main(&k);
}

/* Detaches the fresh child from everything of hutchd's but keep[]. */
static void keeper_child_setup(const int *keep, size_t n, bool null_out)
{
	sigset_t all;

	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	signal(SIGPIPE, SIG_IGN);
	setsid();
	close_all_but(keep, n);
	int null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, 0);
		if (null_out) {
			dup2(null, 1);
			dup2(null, 2);
		}
		if (null > 2)
			close(null);
	}
}

int rt_zygote_start(struct rt *rt, const char *name, struct rt_zygote *z, struct herr *err)
{
	int sv[2], code = 0;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return herr_sys(err, -errno, "socketpair for a pooled keeper");
	pid_t pid = fork();
	if (pid < 0) {
		int r = herr_sys(err, -errno, "fork of a pooled keeper");
		close(sv[0]);
		close(sv[1]);
		return r;
	}
	if (pid == 0) {
		keeper_child_setup(&sv[1], 1, true);
		zygote_main(rt, name, sv[1]);
	}
	close(sv[1]);
	if (read(sv[0], &code, sizeof(code)) != sizeof(code) || code < 0) {
		int r = herr_sys(err, code < 0 ? code : -EIO,
				 "pooled keeper joining cgroup %s", name);
		close(sv[0]);
		waitpid(pid, NULL, 0);
		return r;
	}
	z->pid = pid;
	z->sock = sv[0];
	return 0;
}

void rt_zygote_stop(struct rt_zygote *z)
{
	if (z->sock >= 0)
		close(z->sock); /* EOF: it exits */
	z->sock = -1;
	if (z->pid > 0)
		waitpid(z->pid, NULL, 0);
	z->pid = 0;
}

/* Hands the sandbox to a pooled keeper; returns its pid. z->sock stays
 * open: it is how the keeper is told to leave the sandbox's cgroups. */
static pid_t zygote_send(struct rt_zygote *z, struct keeper_ctx *k, int marks_fd,
			 struct herr *err)
{
	_cleanup_free_ char *msg = malloc(ZY_BLOB_MAX);
	size_t len;
	int null = -1;

	if (!msg)
		return herr_set(err, -ENOMEM, "out of memory");
	uint32_t fd_real = 1u << ZY_FD_REPORT | 1u << ZY_FD_DISK | 1u << ZY_FD_NETNS |
			   (k->cg_fd >= 0 ? 1u << ZY_FD_CG : 0) |
			   (k->log_fd >= 0 ? 1u << ZY_FD_LOG : 0) |
			   (marks_fd >= 0 ? 1u << ZY_FD_MARKS : 0);
	int r = zy_pack(k->s, k->spec, fd_real, msg, &len);
	if (r < 0)
		return herr_sys(err, r, "spec too large for a pooled keeper");
	if (k->log_fd < 0 || k->cg_fd < 0 || marks_fd < 0) {
		null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (null < 0)
			return herr_sys(err, -errno, "open /dev/null");
	}
	int fds[ZY_NFDS] = {
		[ZY_FD_REPORT] = k->report_fd, [ZY_FD_DISK] = k->disk_fd,
		[ZY_FD_NETNS] = k->s->net.fd, [ZY_FD_CG] = k->cg_fd >= 0 ? k->cg_fd : null,
		[ZY_FD_LOG] = k->log_fd >= 0 ? k->log_fd : null,
		[ZY_FD_MARKS] = marks_fd >= 0 ? marks_fd : null,
	};
	char ctl[CMSG_SPACE(sizeof(fds))];
	struct iovec iov = { .iov_base = msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
			     .msg_controllen = sizeof(ctl) };
	memset(ctl, 0, sizeof(ctl));
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(c), fds, sizeof(fds));
	ssize_t n = sendmsg(z->sock, &mh, MSG_NOSIGNAL);
	r = n == (ssize_t)len ? 0 : herr_sys(err, n < 0 ? -errno : -EIO,
					     "handing the sandbox to a pooled keeper");
	if (null >= 0)
		close(null);
	return r < 0 ? r : z->pid;
}

/* Forks the keeper from the calling thread; its pid or a negative errno. */
static pid_t fork_keeper(struct keeper_ctx *k)
{
	pid_t keeper = fork();

	if (keeper < 0)
		return -errno;
	if (keeper == 0) {
		int keep[] = { k->report_fd, k->disk_fd, k->cg_fd, k->log_fd, k->s->net.fd };

		keeper_child_setup(keep, sizeof(keep) / sizeof(keep[0]), k->log_fd < 0);
		keeper_main(k);
	}
	return keeper;
}

int rt_spawn(struct rt *rt, struct rt_sandbox *s, const struct rt_spec *spec,
	     struct rt_spawn_result *res, struct herr *err)
{
	struct rt_zygote *z = res->zygote;
	_cleanup_close_ int disk_fd = res->disk_fd;
	_cleanup_close_ int cg_fd = -1, log_fd = -1;
	int rp[2];
	pid_t keeper;

	res->zygote = NULL;
	res->disk_fd = -1;
	if (disk_fd < 0)
		disk_fd = rt_disk_mount_fd(rt, s->id, err);
	if (disk_fd < 0) {
		if (z)
			rt_zygote_stop(z);
		return disk_fd;
	}
	rt_mark(res->marks, RT_M_MOUNT);
	cg_fd = rt_cg_open_leaf(rt, s->id);
	log_fd = open_log(rt, s->id);
	if (pipe2(rp, O_CLOEXEC) < 0) {
		int r = herr_sys(err, -errno, "pipe for keeper report");
		if (z)
			rt_zygote_stop(z);
		return r;
	}

	struct keeper_ctx k = {
		.rt = rt, .s = s, .spec = spec, .report_fd = rp[1], .disk_fd = disk_fd,
		.cg_fd = cg_fd, .log_fd = log_fd, .marks = res->marks,
		.in_cgroups = z != NULL,
	};
	k.leave_fd = -1;
	keeper = z ? zygote_send(z, &k, res->marks_fd, err) : fork_keeper(&k);
	close(rp[1]);
	if (keeper < 0) {
		close(rp[0]);
		if (z) {
			rt_zygote_stop(z);
			return keeper;
		}
		return herr_sys(err, keeper, "fork of sandbox keeper");
	}
	if (z) {
		res->leave_fd = z->sock;
		z->sock = -1;
	}

	struct spawn_report rep;
	int r = wait_report(rp[0], &rep, err);
	close(rp[0]);
	rt_mark(res->marks, RT_M_REPORT);
	res->keeper_pid = keeper;
	res->init_pid = rep.init_pid;
	if (r < 0) {
		if (res->leave_fd >= 0)
			close(res->leave_fd);
		res->leave_fd = -1;
		waitpid(keeper, NULL, 0);
		return r;
	}
	return 0;
}
