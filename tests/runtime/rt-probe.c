/*
 * rt-probe: the program the runtime tests run inside sandboxes (and, for the
 * positive controls, on the host). Statically linked so that it runs in any
 * root filesystem.
 *
 *   rt-probe serve PORT      control server on 0.0.0.0:PORT; one command per
 *                            connection, answered with lines ending in "."
 *   rt-probe listen IP PORT  echo server; prints "peer A.B.C.D" per connection
 *   rt-probe escape          runs the escape checks once and prints them
 *                            (host control run: root, own mount namespace)
 *   rt-probe membomb         allocates until the memory limit kills it
 *   rt-probe facts           what it sees of its namespaces, privileges,
 *                            /dev, /etc and descriptors (rt_probe_facts.c)
 *
 * Commands of "serve": connect IP PORT MS | escape | hold IP PORT MS |
 * forkbomb MS | membomb | fill PATH | crash | exit N | open IP PORT MS |
 * echo | shut | closeall (the last four keep connections open between
 * commands, for the connection cap checks) | facts [SYSV-KEY] |
 * spin THREADS MS | forkfail. "exit N" and a forkfail that met the pids
 * limit (status 75) end the probe, and with it the sandbox.
 *
 * Every escape check prints "<name> <result>": "ok" when the attempt worked,
 * the errno name when it was refused, "seen=N" for visibility counts.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rt_probe_facts.h"

static int out_fd = 1; /* where results go: stdout, or the client socket */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0 && write(out_fd, line, (size_t)n < sizeof(line) ? (size_t)n :
			   sizeof(line) - 1) < 0) {
		/* the client went away; nothing to report to */
	}
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *result(int r)
{
	static char buf[32];

	if (r >= 0)
		return "ok";
	/* strerrorname_np is glibc 2.32+; Debian 12 has 2.36 */
	const char *name = strerrorname_np(-r);
	if (name)
		return name;
	snprintf(buf, sizeof(buf), "E%d", -r);
	return buf;
}

/* ---------- escape checks ---------- */

static int count_dir(const char *path, bool numeric_only)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -errno;
	while ((e = readdir(d)))
		if (!numeric_only || (e->d_name[0] >= '0' && e->d_name[0] <= '9'))
			n++;
	closedir(d);
	return n;
}

/* Mount points that a sandbox is expected to have; anything else is foreign. */
static bool mount_expected(const char *mp)
{
	static const char *const ok[] = { "/", "/proc", "/proc/sys", "/dev", "/sys",
					  "/.hutch", "/dev/pts", "/dev/shm" };

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (strcmp(mp, ok[i]) == 0)
			return true;
	return strncmp(mp, "/dev/", 5) == 0 && !strchr(mp + 5, '/');
}

static int foreign_mounts(void)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096], mp[4096];
	int n = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && !mount_expected(mp))
			n++;
	fclose(f);
	return n;
}

static int foreign_ifaces(void)
{
	FILE *f = fopen("/proc/net/dev", "re");
	char line[512];
	int n = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char name[64];
		if (!strchr(line, ':') || sscanf(line, " %63[^:]:", name) != 1)
			continue;
		if (strcmp(name, "lo") && strcmp(name, "eth0"))
			n++;
	}
	fclose(f);
	return n;
}

/* Opening for writing is the attempt; nothing is ever written. */
static int open_write(const char *path)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

static int write_tmp(void)
{
	int fd = open("/tmp/rt-probe-file", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd < 0)
		return -errno;
	int r = write(fd, "x", 1) == 1 ? 0 : -errno;
	close(fd);
	unlink("/tmp/rt-probe-file");
	return r;
}

static int try_mknod(mode_t type, unsigned maj, unsigned min)
{
	const char *path = "/tmp/rt-probe-node";

	unlink(path);
	if (mknod(path, type | 0600, makedev(maj, min)) < 0)
		return -errno;
	unlink(path);
	return 0;
}

static int try_mount(void)
{
	const char *dir = "/tmp/rt-probe-mnt";

	mkdir(dir, 0700);
	int r = mount("probe", dir, "tmpfs", 0, "size=16k") < 0 ? -errno : 0;
	if (r == 0)
		umount2(dir, MNT_DETACH);
	rmdir(dir);
	return r;
}

/* Runs fn in a child, so that a namespace change never sticks to us. */
static int in_child(int (*fn)(void))
{
	pid_t pid = fork();
	int st;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int r = fn();
		_exit(r < 0 ? -r : 0);
	}
	if (waitpid(pid, &st, 0) < 0)
		return -errno;
	return WIFEXITED(st) ? -WEXITSTATUS(st) : -EINTR;
}

static int do_unshare_user(void)
{
	return unshare(CLONE_NEWUSER) < 0 ? -errno : 0;
}

static int do_unshare_net(void)
{
	return unshare(CLONE_NEWNET) < 0 ? -errno : 0;
}

static int do_clone_user(void)
{
	/* glibc's clone path, the one seccomp can see */
	pid_t p = (pid_t)syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);

	if (p < 0)
		return -errno;
	if (p == 0)
		_exit(0);
	waitpid(p, NULL, 0);
	return 0;
}

static int do_setns(void)
{
	int fd = open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	int r = setns(fd, CLONE_NEWUTS) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int try_bpf(void)
{
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	a.map_type = BPF_MAP_TYPE_ARRAY;
	a.key_size = 4;
	a.value_size = 4;
	a.max_entries = 1;
	int fd = (int)syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof(a));
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

static int try_keyctl(void)
{
	long r = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
	return r < 0 ? -errno : 0;
}

static int try_perf(void)
{
	struct perf_event_attr a;

	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.type = PERF_TYPE_SOFTWARE;
	a.config = PERF_COUNT_SW_CPU_CLOCK;
	a.disabled = 1;
	a.exclude_kernel = 1;
	int fd = (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

/* With bad descriptors the call fails after its permission checks (EBADF),
 * so anything but EPERM means the call reached the kernel's real work. */
static int try_kexec(void)
{
	long r = syscall(SYS_kexec_file_load, -1, -1, 0UL, "", 0UL);
	return r < 0 && errno != EBADF ? -errno : 0;
}

static int try_module(void)
{
	long r = syscall(SYS_finit_module, -1, "", 0);
	return r < 0 && errno != EBADF && errno != ENOSYS ? -errno : 0;
}

static int try_io_uring(void)
{
	struct io_uring_params p;

	memset(&p, 0, sizeof(p));
	int fd = (int)syscall(SYS_io_uring_setup, 4, &p);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

static int ptrace_pid(pid_t target)
{
	if (ptrace(PTRACE_ATTACH, target, 0, 0) < 0)
		return -errno;
	waitpid(target, NULL, __WALL);
	ptrace(PTRACE_DETACH, target, 0, 0);
	return 0;
}

static int try_ptrace_init(void)
{
	return ptrace_pid(1);
}

static int try_ptrace_child(void)
{
	pid_t c = fork();

	if (c < 0)
		return -errno;
	if (c == 0) {
		pause();
		_exit(0);
	}
	int r = ptrace_pid(c);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	return r;
}

static void report(const char *name, int r)
{
	say("%s %s\n", name, result(r));
}

static void report_seen(const char *name, int n)
{
	if (n < 0)
		report(name, n);
	else
		say("%s seen=%d\n", name, n);
}

static void run_escape(bool on_host)
{
	report_seen("procs", count_dir("/proc", true));
	report_seen("mounts", foreign_mounts());
	report_seen("ifaces", foreign_ifaces());
	report("write_tmp", write_tmp());
	report("write_core_pattern", open_write("/proc/sys/kernel/core_pattern"));
	report("write_proc_sys_net", open_write("/proc/sys/net/ipv4/ip_forward"));
	report("write_sysrq", open_write("/proc/sysrq-trigger"));
	report("write_sys", open_write("/sys/class/net/lo/mtu"));
	report("mknod_fifo", try_mknod(S_IFIFO, 0, 0));
	report("mknod_blk", try_mknod(S_IFBLK, 8, 0));
	report("mknod_mem", try_mknod(S_IFCHR, 1, 1));
	report("mount", try_mount());
	report("unshare_user", in_child(do_unshare_user));
	report("clone_user", in_child(do_clone_user));
	report("unshare_net", in_child(do_unshare_net));
	report("setns", in_child(do_setns));
	report("bpf", try_bpf());
	report("keyctl", try_keyctl());
	report("perf_event_open", try_perf());
	report("kexec", try_kexec());
	report("module", try_module());
	report("io_uring", try_io_uring());
	report("ptrace_child", try_ptrace_child());
	/* On the host pid 1 is the machine's init: never touch it there. */
	if (!on_host)
		report("ptrace_init", in_child(try_ptrace_init));
}

/* ---------- network ---------- */

static int tcp_connect(const char *ip, int port, int timeout_ms)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd, r;

	if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
		return -EINVAL;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (r < 0 && errno == EINPROGRESS) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		socklen_t len = sizeof(r);
		if (poll(&p, 1, timeout_ms) <= 0) {
			r = -ETIMEDOUT;
		} else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &r, &len) < 0 || r) {
			r = -(r ? r : errno);
		}
	} else if (r < 0) {
		r = -errno;
	}
	if (r < 0) {
		close(fd);
		return r;
	}
	fcntl(fd, F_SETFL, 0);
	return fd;
}

static void cmd_connect(const char *ip, int port, int timeout_ms)
{
	long t0 = now_ms();
	int fd = tcp_connect(ip, port, timeout_ms);

	say("%s %ld\n", result(fd), now_ms() - t0);
	if (fd >= 0)
		close(fd);
}

/* Keeps an echo flow going and says when (and how) it stops working. */
static void cmd_hold(const char *ip, int port, int limit_ms)
{
	int fd = tcp_connect(ip, port, 2000);

	if (fd < 0) {
		say("%s 0\n", result(fd));
		return;
	}
	struct timeval tv = { 0, 300 * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	say("held\n");
	long t0 = now_ms();
	int r = 0;
	while (now_ms() - t0 < limit_ms) {
		char b = 'x';
		if (send(fd, &b, 1, MSG_NOSIGNAL) != 1) {
			r = -errno;
			break;
		}
		ssize_t n = recv(fd, &b, 1, 0);
		if (n != 1) {
			r = n == 0 ? -ECONNRESET : -errno;
			break;
		}
		usleep(50 * 1000);
	}
	say(r ? "cut %s %ld\n" : "alive %s %ld\n", result(r), now_ms() - t0);
	close(fd);
}

/* Connections kept open across commands (open, echo, shut, closeall). */
#define HELD_MAX 128
static int held[HELD_MAX];
static int n_held;

static void cmd_open(const char *ip, int port, int timeout_ms)
{
	long t0 = now_ms();
	int fd = n_held < HELD_MAX ? tcp_connect(ip, port, timeout_ms) : -EMFILE;

	if (fd >= 0)
		held[n_held++] = fd;
	say("%s %ld %d\n", result(fd), now_ms() - t0, n_held);
}

/* One byte there and back on a held connection, within a second. */
static bool echo_one(int fd)
{
	struct timeval tv = { 1, 0 };
	char b = 'e';

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return send(fd, &b, 1, MSG_NOSIGNAL) == 1 && recv(fd, &b, 1, 0) == 1 && b == 'e';
}

static void cmd_echo(void)
{
	int working = 0;

	for (int i = 0; i < n_held; i++)
		working += echo_one(held[i]);
	say("echo %d %d\n", working, n_held);
}

/* Ends the oldest held connection the orderly way and waits for the peer's
 * FIN, so the flow is over on both sides when this answers. */
static void cmd_shut(void)
{
	long t0 = now_ms();
	int r = -ENOENT;

	if (n_held > 0) {
		struct timeval tv = { 1, 0 };
		char b[64];
		ssize_t n;

		setsockopt(held[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		r = shutdown(held[0], SHUT_WR) < 0 ? -errno : 0;
		while (r == 0 && (n = recv(held[0], b, sizeof(b), 0)) != 0)
			r = n < 0 ? -errno : 0;
		close(held[0]);
		memmove(held, held + 1, (size_t)(--n_held) * sizeof(held[0]));
	}
	say("%s %ld %d\n", result(r), now_ms() - t0, n_held);
}

static void cmd_closeall(void)
{
	int n = n_held;

	while (n_held > 0)
		close(held[--n_held]);
	say("closed %d\n", n);
}

/* ---------- limits ---------- */

static void cmd_forkbomb(int ms)
{
	int pipefd[2];

	if (pipe(pipefd) < 0) {
		say("%s\n", result(-errno));
		return;
	}
	pid_t leader = fork();
	if (leader < 0) {
		say("%s\n", result(-errno));
		return;
	}
	if (leader == 0) {
		/* Every process forks as fast as it can; each fork that fails
		 * (the pids limit) is counted in one byte on the pipe. */
		setpgid(0, 0);
		close(pipefd[0]);
		for (;;) {
			if (fork() < 0 && write(pipefd[1], "e", 1) < 0)
				_exit(1);
		}
	}
	close(pipefd[1]);
	fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
	long t0 = now_ms(), eagain = 0;
	char buf[4096];
	while (now_ms() - t0 < ms) {
		ssize_t n = read(pipefd[0], buf, sizeof(buf));
		if (n > 0)
			eagain += n;
		else
			usleep(10 * 1000);
	}
	int procs = count_dir("/proc", true);
	kill(-leader, SIGKILL);
	kill(leader, SIGKILL);
	while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR)
		;
	close(pipefd[0]);
	say("procs=%d refused=%ld\n", procs, eagain);
}

static void membomb(void)
{
	for (;;) {
		char *p = malloc(8 << 20);
		if (!p)
			continue;
		memset(p, 1, 8 << 20);
	}
}

static void cmd_membomb(void)
{
	pid_t c = fork();
	int st = 0;

	if (c == 0)
		membomb();
	waitpid(c, &st, 0);
	say("signal=%d\n", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void cmd_fill(const char *path)
{
	static char block[1 << 20];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	long long total = 0;
	int r = 0;

	memset(block, 'f', sizeof(block));
	if (fd < 0) {
		say("%s 0\n", result(-errno));
		return;
	}
	for (;;) {
		ssize_t n = write(fd, block, sizeof(block));
		if (n <= 0) {
			r = n < 0 ? -errno : -ENOSPC;
			break;
		}
		total += n;
	}
	if (r == -ENOSPC && fsync(fd) < 0)
		r = -errno;
	close(fd);
	unlink(path);
	say("%s %lld\n", result(r), total >> 20);
}

/* ---------- servers ---------- */

static int listen_on(const char *ip, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0)
		return -1;
	return fd;
}

static int exit_code; /* of serve, once a command ends it */

static void handle(int c, bool *quit)
{
	char line[512], a[256];
	ssize_t n = 0;
	int x, y;

	while (n < (ssize_t)sizeof(line) - 1) {
		ssize_t m = read(c, line + n, 1);
		if (m <= 0 || line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
	out_fd = c;
	if (sscanf(line, "connect %255s %d %d", a, &x, &y) == 3)
		cmd_connect(a, x, y);
	else if (sscanf(line, "hold %255s %d %d", a, &x, &y) == 3)
		cmd_hold(a, x, y);
	else if (sscanf(line, "open %255s %d %d", a, &x, &y) == 3)
		cmd_open(a, x, y);
	else if (strcmp(line, "echo") == 0)
		cmd_echo();
	else if (strcmp(line, "shut") == 0)
		cmd_shut();
	else if (strcmp(line, "closeall") == 0)
		cmd_closeall();
	else if (strcmp(line, "escape") == 0)
		run_escape(false);
	else if (sscanf(line, "forkbomb %d", &x) == 1)
		cmd_forkbomb(x);
	else if (strcmp(line, "membomb") == 0)
		cmd_membomb();
	else if (sscanf(line, "fill %255s", a) == 1)
		cmd_fill(a);
	else if (strcmp(line, "crash") == 0)
		__builtin_trap();
	else if (sscanf(line, "exit %d", &x) == 1)
		*quit = true, exit_code = x;
	else if (strncmp(line, "facts", 5) == 0)
		probe_facts(c, line + 5);
	else if (sscanf(line, "spin %d %d", &x, &y) == 2)
		probe_spin(c, x, y);
	else if (strcmp(line, "forkfail") == 0)
		*quit = (exit_code = probe_forkfail(c)) != 0;
	else
		say("unknown command\n");
	say(".\n");
	out_fd = 1;
}

static int serve(int port)
{
	int fd = listen_on("0.0.0.0", port);
	bool quit = false;

	if (fd < 0) {
		perror("rt-probe: listen");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	while (!quit) {
		int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		handle(c, &quit);
		close(c);
	}
	return exit_code;
}

/* Echo server for the egress tests; one child per connection. */
static int echo_listen(const char *ip, int port)
{
	int fd = listen_on(ip, port);

	if (fd < 0) {
		perror("rt-probe: listen");
		return 1;
	}
	signal(SIGCHLD, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("listening %s %d\n", ip, port);
	for (;;) {
		struct sockaddr_in peer;
		socklen_t len = sizeof(peer);
		int c = accept(fd, (struct sockaddr *)&peer, &len);
		if (c < 0)
			continue;
		char addr[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &peer.sin_addr, addr, sizeof(addr));
		printf("peer %s\n", addr);
		if (fork() == 0) {
			char b[256];
			ssize_t n;
			while ((n = read(c, b, sizeof(b))) > 0)
				if (write(c, b, (size_t)n) != n)
					break;
			_exit(0);
		}
		close(c);
	}
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "serve") == 0)
		return serve(atoi(argv[2]));
	if (argc == 4 && strcmp(argv[1], "listen") == 0)
		return echo_listen(argv[2], atoi(argv[3]));
	if (argc == 2 && strcmp(argv[1], "escape") == 0) {
		/* The host control run: a private mount namespace keeps the
		 * mount attempt away from the host's table. */
		if (unshare(CLONE_NEWNS) < 0 ||
		    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
			perror("rt-probe: private mount namespace");
			return 1;
		}
		run_escape(true);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "membomb") == 0)
		membomb();
	if (argc == 2 && strcmp(argv[1], "facts") == 0) {
		probe_facts(1, NULL);
		return 0;
	}
	fprintf(stderr, "usage: rt-probe serve PORT | listen IP PORT | escape | membomb | "
		"facts\n");
	return 2;
}
