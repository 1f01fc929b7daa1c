/*
 * Fork and exec of user processes, their environment and exit texts.
 *
 * The child runs between fork() and execve() in a copy of a multi-threaded
 * agent, so it calls only async-signal-safe functions and never allocates:
 * everything it needs is prepared by the parent. A failure before exec is
 * written as {step, errno} into a close-on-exec pipe; the parent reads EOF
 * when exec succeeds, so it can tell the client exactly what went wrong
 * instead of seeing a silent exit 127.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "cleanup.h"
#include "spawn.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

enum child_step {
	STEP_SIGNALS = 1,
	STEP_SETSID,
	STEP_TTY,
	STEP_FDS,
	STEP_SETGROUPS,
	STEP_SETGID,
	STEP_SETUID,
	STEP_CHDIR,
	STEP_EXEC,
};

struct child_report {
	int step;
	int error;
};

/* The fds the child puts on 0, 1 and 2, and the status pipe it reports on. */
struct child_fds {
	int in, out, err;
	int tty;     /* PTY slave, or -1 */
	int status;
};

static void child_fail(int status_fd, int step)
{
	struct child_report r = { step, errno };
	ssize_t n;

	do {
		n = write(status_fd, &r, sizeof(r));
	} while (n < 0 && errno == EINTR);
	_exit(127);
}

/*
 * The agent may ignore or block signals (SIGPIPE, SIGCHLD for its reaper);
 * ignored dispositions and the mask survive exec, so a user process would
 * silently inherit them. Reset both to what a fresh login would have.
 */
static int child_reset_signals(void)
{
	struct sigaction sa;
	sigset_t none;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		/* glibc's reserved real-time signals refuse; that is harmless. */
		sigaction(sig, &sa, NULL);
	}
	sigemptyset(&none);
	return sigprocmask(SIG_SETMASK, &none, NULL);
}

/*
 * Moves the three standard fds into place. Each source is first copied above
 * 2 so that a source which happens to be 0, 1 or 2 (an agent started with
 * closed std fds) is not overwritten by an earlier dup2.
 */
static int child_setup_fds(const struct child_fds *f)
{
	int src[3] = { f->in, f->out, f->err };
	int high[3];

	for (int i = 0; i < 3; i++) {
		high[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 3);
		if (high[i] < 0)
			return -1;
	}
	for (int i = 0; i < 3; i++) {
		if (dup2(high[i], i) < 0)
			return -1;
	}
	return 0;
}

/*
 * No agent fd may survive into user code (sockets of other clients, other
 * processes' pipes, the state of the agent). Marking everything above 2
 * close-on-exec lets the status pipe work until the exec itself; the slow
 * path covers kernels without close_range.
 */
static int child_close_other_fds(int status_fd)
{
	if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
		return 0;

	long max = sysconf(_SC_OPEN_MAX);

	if (max < 0 || max > 1 << 20)
		max = 1 << 20;
	for (int fd = 3; fd < max; fd++) {
		if (fd != status_fd)
			close(fd);
	}
	return 0;
}

/*
 * Credentials are dropped in the order that cannot leave privilege behind:
 * supplementary groups and gid while still root, uid last. Any failure stops
 * the child instead of running user code with the agent's identity.
 */
static void child_switch_user(const struct spawn_spec *spec, int status_fd)
{
	const struct agent_user *u = spec->user;

	if (setgroups((size_t)u->ngroups, u->groups) < 0)
		child_fail(status_fd, STEP_SETGROUPS);
	if (setgid(u->gid) < 0)
		child_fail(status_fd, STEP_SETGID);
	if (setuid(u->uid) < 0)
		child_fail(status_fd, STEP_SETUID);
}

/*
 * The agent is shielded from the OOM killer; its children inherit that
 * unless told otherwise, and a runaway user process must be the one to go.
 */
static void child_oom_score(void)
{
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);

	if (fd >= 0) {
		ssize_t n = write(fd, "100", 3);

		(void)n;
		close(fd);
	}
}

static __attribute__((noreturn)) void
child_main(const struct spawn_spec *spec, const struct child_fds *f)
{
	if (child_reset_signals() < 0)
		child_fail(f->status, STEP_SIGNALS);

	/* Own session and process group: signals to the group reach only it. */
	if (setsid() < 0)
		child_fail(f->status, STEP_SETSID);
	if (f->tty >= 0 && ioctl(f->tty, TIOCSCTTY, 0) < 0)
		child_fail(f->status, STEP_TTY);

	if (child_setup_fds(f) < 0)
		child_fail(f->status, STEP_FDS);
	child_close_other_fds(f->status);
	child_oom_score();

	if (spec->switch_user)
		child_switch_user(spec, f->status);
	if (chdir(spec->cwd) < 0)
		child_fail(f->status, STEP_CHDIR);

	execve(spec->path, spec->argv, spec->envp);
	child_fail(f->status, STEP_EXEC);
	_exit(127);
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* The parent's and the child's ends of the fds for one spawn. */
struct spawn_fds {
	int in[2], out[2], err[2];
	int master, slave;
	int status[2];
};

static struct spawn_fds spawn_fds_none(void)
{
	return (struct spawn_fds){
		.in = { -1, -1 }, .out = { -1, -1 }, .err = { -1, -1 },
		.master = -1, .slave = -1, .status = { -1, -1 },
	};
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void spawn_fds_close(struct spawn_fds *s)
{
	close_fd(&s->in[0]);
	close_fd(&s->in[1]);
	close_fd(&s->out[0]);
	close_fd(&s->out[1]);
	close_fd(&s->err[0]);
	close_fd(&s->err[1]);
	close_fd(&s->master);
	close_fd(&s->slave);
	close_fd(&s->status[0]);
	close_fd(&s->status[1]);
}

/*
 * A PTY whose both ends are close-on-exec from birth, so a concurrent fork
 * elsewhere in the agent cannot inherit them. TIOCGPTPEER opens the slave
 * through the master, without a path lookup in /dev/pts that could race.
 */
static int open_pty(struct spawn_fds *s, unsigned short cols, unsigned short rows,
		    struct herr *err)
{
	struct winsize ws = { .ws_row = rows, .ws_col = cols };
	int unlock = 0;

	s->master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (s->master < 0)
		return herr_sys(err, -errno, "opening a pseudo-terminal");
	if (ioctl(s->master, TIOCSPTLCK, &unlock) < 0)
		return herr_sys(err, -errno, "unlocking the pseudo-terminal");
	s->slave = ioctl(s->master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (s->slave < 0)
		return herr_sys(err, -errno, "opening the pseudo-terminal's peer");
	if (ioctl(s->master, TIOCSWINSZ, &ws) < 0)
		return herr_sys(err, -errno, "setting the terminal size %ux%u", cols, rows);
	if (set_nonblock(s->master) < 0)
		return herr_sys(err, -errno, "making the pseudo-terminal non-blocking");
	s->in[1] = fcntl(s->master, F_DUPFD_CLOEXEC, 3);
	if (s->in[1] < 0)
		return herr_sys(err, -errno, "duplicating the pseudo-terminal");
	return 0;
}

static int open_pipes(struct spawn_fds *s, enum spawn_stdin mode, struct herr *err)
{
	if (mode == SPAWN_STDIN_PIPE) {
		if (pipe2(s->in, O_CLOEXEC) < 0)
			return herr_sys(err, -errno, "creating the stdin pipe");
		if (set_nonblock(s->in[1]) < 0)
			return herr_sys(err, -errno, "making stdin non-blocking");
	} else {
		s->in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (s->in[0] < 0)
			return herr_sys(err, -errno, "opening /dev/null");
	}
	if (pipe2(s->out, O_CLOEXEC) < 0 || pipe2(s->err, O_CLOEXEC) < 0)
		return herr_sys(err, -errno, "creating the output pipes");
	if (set_nonblock(s->out[0]) < 0 || set_nonblock(s->err[0]) < 0)
		return herr_sys(err, -errno, "making the output pipes non-blocking");
	return 0;
}

int spawn_start(const struct spawn_spec *spec, struct spawn_child *child, struct herr *err)
{
	/* What the child is given or the parent keeps is stolen below; the
	 * rest, and everything on a failure, is closed on return. */
	_cleanup_(spawn_fds_close) struct spawn_fds s = spawn_fds_none();
	struct child_fds cf;
	int r;

	r = spec->pty ? open_pty(&s, spec->cols, spec->rows, err)
		      : open_pipes(&s, spec->stdin_mode, err);
	if (r < 0)
		return r;
	if (pipe2(s.status, O_CLOEXEC) < 0)
		return herr_sys(err, -errno, "creating the exec status pipe");

	if (spec->pty)
		cf = (struct child_fds){ s.slave, s.slave, s.slave, s.slave, s.status[1] };
	else
		cf = (struct child_fds){ s.in[0], s.out[1], s.err[1], -1, s.status[1] };

	child->pid = fork();
	if (child->pid < 0)
		return herr_sys(err, -errno, "fork");
	if (child->pid == 0)
		child_main(spec, &cf);

	child->in_fd = steal_fd(&s.in[1]);
	child->out_fd = spec->pty ? steal_fd(&s.master) : steal_fd(&s.out[0]);
	child->err_fd = steal_fd(&s.err[0]);
	child->status_fd = steal_fd(&s.status[0]);
	return 0;
}

static const char *step_text(int step)
{
	switch (step) {
	case STEP_SIGNALS: return "resetting signals";
	case STEP_SETSID: return "setsid";
	case STEP_TTY: return "setting the controlling terminal";
	case STEP_FDS: return "setting up stdin/stdout/stderr";
	case STEP_SETGROUPS: return "setgroups";
	case STEP_SETGID: return "setgid";
	case STEP_SETUID: return "setuid";
	default: return "starting the process";
	}
}

int spawn_finish(struct spawn_child *child, const struct spawn_spec *spec,
		 struct herr *err)
{
	struct child_report r;
	ssize_t n;

	do {
		n = read(child->status_fd, &r, sizeof(r));
	} while (n < 0 && errno == EINTR);
	close_fd(&child->status_fd);

	if (n == 0)
		return 0;
	if (n != (ssize_t)sizeof(r))
		return herr_set(err, -EIO, "reading the exec status of pid %d failed",
				(int)child->pid);
	if (r.error <= 0)
		r.error = EIO;
	if (r.step == STEP_CHDIR)
		return herr_set(err, -r.error, "chdir '%s': %s", spec->cwd, strerror(r.error));
	if (r.step == STEP_EXEC)
		return herr_set(err, -r.error, "fork/exec %s: %s", spec->path,
				strerror(r.error));
	return herr_set(err, -r.error, "%s: %s", step_text(r.step), strerror(r.error));
}

void spawn_child_close(struct spawn_child *child)
{
	close_fd(&child->in_fd);
	close_fd(&child->out_fd);
	close_fd(&child->err_fd);
	close_fd(&child->status_fd);
}

/* ---- environment ---- */

struct env_list {
	char **v;
	size_t n;
};

static size_t env_name_len(const char *entry)
{
	const char *eq = strchr(entry, '=');

	return eq ? (size_t)(eq - entry) : strlen(entry);
}

/* Adds or replaces name=value; keeps the position of an earlier entry. */
static int env_put(struct env_list *l, const char *name, size_t nlen, const char *value,
		   struct herr *err)
{
	char *entry;

	if (asprintf(&entry, "%.*s=%s", (int)nlen, name, value) < 0)
		return herr_set(err, -ENOMEM, "out of memory building the environment");

	for (size_t i = 0; i < l->n; i++) {
		if (env_name_len(l->v[i]) == nlen && !strncmp(l->v[i], name, nlen)) {
			free(l->v[i]);
			l->v[i] = entry;
			return 0;
		}
	}
	if (l->n >= SPAWN_ENV_MAX) {
		free(entry);
		return herr_set(err, -E2BIG, "more than %d environment variables",
				SPAWN_ENV_MAX);
	}
	l->v[l->n++] = entry;
	l->v[l->n] = NULL;
	return 0;
}

static int env_check_name(const char *name, struct herr *err)
{
	if (!name || !*name)
		return herr_set(err, -EINVAL, "envs: an environment variable name is empty");
	if (strchr(name, '='))
		return herr_set(err, -EINVAL, "envs: variable name '%s' contains '='", name);
	return 0;
}

void spawn_env_free(char **env)
{
	if (!env)
		return;
	for (char **p = env; *p; p++)
		free(*p);
	free(env);
}

int spawn_env_build(const struct agent_user *user, char *const *base,
		    const char *const *keys, const char *const *values, size_t n,
		    char ***out, struct herr *err)
{
	struct env_list l = { calloc(SPAWN_ENV_MAX + 1, sizeof(char *)), 0 };
	const char *path = getenv("PATH");
	int r = 0;

	if (!l.v)
		return herr_set(err, -ENOMEM, "out of memory building the environment");
	if (!path || !*path)
		path = SPAWN_DEFAULT_PATH;

	r = env_put(&l, "PATH", 4, path, err);
	if (!r)
		r = env_put(&l, "HOME", 4, user->home, err);
	if (!r)
		r = env_put(&l, "USER", 4, user->name, err);
	if (!r)
		r = env_put(&l, "LOGNAME", 7, user->name, err);

	for (char *const *p = base; !r && p && *p; p++) {
		size_t nlen = env_name_len(*p);

		if (nlen == 0 || !(*p)[nlen])
			continue; /* not KEY=VALUE: the sandbox state is ours, skip it */
		r = env_put(&l, *p, nlen, *p + nlen + 1, err);
	}
	for (size_t i = 0; !r && i < n; i++) {
		r = env_check_name(keys[i], err);
		if (!r)
			r = env_put(&l, keys[i], strlen(keys[i]), values[i] ? values[i] : "",
				    err);
	}

	if (r < 0) {
		spawn_env_free(l.v);
		return r;
	}
	*out = l.v;
	return 0;
}

const char *spawn_env_get(char *const *env, const char *name)
{
	size_t nlen = strlen(name);

	for (char *const *p = env; p && *p; p++) {
		if (env_name_len(*p) == nlen && !strncmp(*p, name, nlen))
			return *p + nlen + 1;
	}
	return NULL;
}

/* ---- executable lookup ---- */

static int is_executable_file(const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	return (st.st_mode & 0111) != 0;
}

int spawn_find_executable(const char *cmd, const char *path_var, char *out, size_t cap,
			  struct herr *err)
{
	if (!cmd || !*cmd)
		return herr_set(err, -EINVAL, "process.cmd is empty");
	if (strchr(cmd, '/')) {
		if ((size_t)snprintf(out, cap, "%s", cmd) >= cap)
			return herr_set(err, -ENAMETOOLONG, "process.cmd '%.64s...' is too long",
					cmd);
		return 0;
	}

	for (const char *dir = path_var ? path_var : ""; ; ) {
		const char *end = strchrnul(dir, ':');
		int dlen = (int)(end - dir);
		int w;

		/* An empty PATH element means the current directory, as in execvp. */
		if (dlen == 0)
			w = snprintf(out, cap, "./%s", cmd);
		else
			w = snprintf(out, cap, "%.*s/%s", dlen, dir, cmd);
		if (w > 0 && (size_t)w < cap && is_executable_file(out))
			return 0;
		if (!*end)
			break;
		dir = end + 1;
	}
	out[0] = '\0';
	return herr_set(err, -ENOENT, "exec: \"%s\": executable file not found in $PATH", cmd);
}

/* ---- exit texts ---- */

/* Go's names of Linux signals, which is what users of envd see. */
static const char *const signal_names[] = {
	[SIGHUP] = "hangup",
	[SIGINT] = "interrupt",
	[SIGQUIT] = "quit",
	[SIGILL] = "illegal instruction",
	[SIGTRAP] = "trace/breakpoint trap",
	[SIGABRT] = "aborted",
	[SIGBUS] = "bus error",
	[SIGFPE] = "floating point exception",
	[SIGKILL] = "killed",
	[SIGUSR1] = "user defined signal 1",
	[SIGSEGV] = "segmentation fault",
	[SIGUSR2] = "user defined signal 2",
	[SIGPIPE] = "broken pipe",
	[SIGALRM] = "alarm clock",
	[SIGTERM] = "terminated",
	[SIGSTKFLT] = "stack fault",
	[SIGCHLD] = "child exited",
	[SIGCONT] = "continued",
	[SIGSTOP] = "stopped (signal)",
	[SIGTSTP] = "stopped",
	[SIGTTIN] = "stopped (tty input)",
	[SIGTTOU] = "stopped (tty output)",
	[SIGURG] = "urgent I/O condition",
	[SIGXCPU] = "CPU time limit exceeded",
	[SIGXFSZ] = "file size limit exceeded",
	[SIGVTALRM] = "virtual timer expired",
	[SIGPROF] = "profiling timer expired",
	[SIGWINCH] = "window changed",
	[SIGIO] = "I/O possible",
	[SIGPWR] = "power failure",
	[SIGSYS] = "bad system call",
};

void spawn_status_text(int wait_status, char *out, size_t cap)
{
	if (WIFEXITED(wait_status)) {
		snprintf(out, cap, "exit status %d", WEXITSTATUS(wait_status));
		return;
	}
	if (WIFSIGNALED(wait_status)) {
		int sig = WTERMSIG(wait_status);
		const char *core = WCOREDUMP(wait_status) ? " (core dumped)" : "";
		size_t nnames = sizeof(signal_names) / sizeof(signal_names[0]);

		if (sig > 0 && (size_t)sig < nnames && signal_names[sig])
			snprintf(out, cap, "signal: %s%s", signal_names[sig], core);
		else
			snprintf(out, cap, "signal: signal %d%s", sig, core);
		return;
	}
	snprintf(out, cap, "unknown status %#x", (unsigned)wait_status);
}

int spawn_exit_code(int wait_status)
{
	return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
}
