/*
 * spawn.c: exit texts, environment assembly, executable lookup, and real
 * processes started through /bin/sh (exit codes, signals, exec and chdir
 * failures, fd hygiene, stdin modes, PTY size, session, credentials). The
 * test itself reaps its children with waitpid, as the agent's reaper would.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "spawn.h"

/* ---- exit texts ---- */

static void status_text_matches_go(void **unused)
{
	char buf[96];

	spawn_status_text(0, buf, sizeof(buf));
	assert_string_equal(buf, "exit status 0");
	spawn_status_text(3 << 8, buf, sizeof(buf));
	assert_string_equal(buf, "exit status 3");
	spawn_status_text(SIGKILL, buf, sizeof(buf));
	assert_string_equal(buf, "signal: killed");
	spawn_status_text(SIGTERM, buf, sizeof(buf));
	assert_string_equal(buf, "signal: terminated");
	spawn_status_text(SIGSEGV | 0x80, buf, sizeof(buf));
	assert_string_equal(buf, "signal: segmentation fault (core dumped)");
	spawn_status_text(40, buf, sizeof(buf));
	assert_string_equal(buf, "signal: signal 40");
}

static void exit_code_is_minus_one_when_signalled(void **unused)
{
	assert_int_equal(spawn_exit_code(0), 0);
	assert_int_equal(spawn_exit_code(42 << 8), 42);
	assert_int_equal(spawn_exit_code(SIGKILL), -1);
}

/* ---- environment ---- */

static struct agent_user test_user(void)
{
	struct agent_user u = { .uid = 1000, .gid = 1000 };

	strcpy(u.name, "user");
	strcpy(u.home, "/home/user");
	strcpy(u.shell, "/bin/sh");
	return u;
}

static void env_order_and_later_wins(void **unused)
{
	struct agent_user u = test_user();
	char *base[] = { "E2B_SANDBOX=true", "HOME=/sandbox-home", "A=base", "junk", NULL };
	const char *keys[] = { "A", "B", "USER" };
	const char *vals[] = { "req", "b", "override" };
	struct herr err = { 0 };
	char **env = NULL;

	setenv("PATH", "/agent/bin:/bin", 1);
	assert_int_equal(spawn_env_build(&u, base, keys, vals, 3, &env, &err), 0);

	/* Overrides keep the first position of a name; new names append. */
	assert_string_equal(env[0], "PATH=/agent/bin:/bin");
	assert_string_equal(env[1], "HOME=/sandbox-home");
	assert_string_equal(env[2], "USER=override");
	assert_string_equal(env[3], "LOGNAME=user");
	assert_string_equal(env[4], "E2B_SANDBOX=true");
	assert_string_equal(env[5], "A=req");
	assert_string_equal(env[6], "B=b");
	assert_null(env[7]);
	assert_string_equal(spawn_env_get(env, "A"), "req");
	assert_null(spawn_env_get(env, "AB"));
	spawn_env_free(env);
}

static void env_default_path_when_agent_has_none(void **unused)
{
	struct agent_user u = test_user();
	struct herr err = { 0 };
	char *saved = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
	char **env = NULL;

	unsetenv("PATH");
	assert_int_equal(spawn_env_build(&u, NULL, NULL, NULL, 0, &env, &err), 0);
	assert_string_equal(spawn_env_get(env, "PATH"), SPAWN_DEFAULT_PATH);
	assert_string_equal(spawn_env_get(env, "HOME"), "/home/user");
	spawn_env_free(env);
	if (saved)
		setenv("PATH", saved, 1);
	free(saved);
}

static void env_rejects_bad_names(void **unused)
{
	struct agent_user u = test_user();
	const char *bad_eq[] = { "A=B" }, *bad_empty[] = { "" }, *vals[] = { "x" };
	struct herr err = { 0 };
	char **env = NULL;

	assert_int_equal(spawn_env_build(&u, NULL, bad_eq, vals, 1, &env, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "'A=B'"));
	assert_null(env);
	assert_int_equal(spawn_env_build(&u, NULL, bad_empty, vals, 1, &env, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "empty"));
}

/* ---- executable lookup ---- */

static void find_executable_in_path(void **unused)
{
	char out[256];
	struct herr err = { 0 };

	assert_int_equal(spawn_find_executable("sh", "/nonexistent:/bin", out, sizeof(out),
					       &err), 0);
	assert_string_equal(out, "/bin/sh");
	assert_int_equal(spawn_find_executable("./x", "/bin", out, sizeof(out), &err), 0);
	assert_string_equal(out, "./x");
	/* A directory or a non-executable file is not a match. */
	assert_int_equal(spawn_find_executable("passwd", "/etc", out, sizeof(out), &err),
			 -ENOENT);
	assert_string_equal(err.msg, "exec: \"passwd\": executable file not found in $PATH");
	assert_int_equal(spawn_find_executable("", "/bin", out, sizeof(out), &err), -EINVAL);
}

/* ---- real processes ---- */

struct run_result {
	char out[65536];
	size_t out_len;
	char err[4096];
	size_t err_len;
	int status;
	int spawn_rc;
	char spawn_msg[HERR_MSG_MAX];
};

static void drain(int *fd, char *buf, size_t cap, size_t *len)
{
	ssize_t n = read(*fd, buf + *len, cap - 1 - *len);

	if (n > 0) {
		*len += (size_t)n;
		buf[*len] = '\0';
	} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
		close(*fd); /* EOF, or EIO from a PTY whose slave is gone */
		*fd = -1;
	}
}

static void collect(struct spawn_child *c, struct run_result *r)
{
	while (c->out_fd >= 0 || c->err_fd >= 0) {
		struct pollfd p[2] = { { c->out_fd, POLLIN, 0 }, { c->err_fd, POLLIN, 0 } };

		assert_true(poll(p, 2, 10000) > 0);
		if (c->out_fd >= 0 && p[0].revents)
			drain(&c->out_fd, r->out, sizeof(r->out), &r->out_len);
		if (c->err_fd >= 0 && p[1].revents)
			drain(&c->err_fd, r->err, sizeof(r->err), &r->err_len);
	}
}

static void run_spec(const struct spawn_spec *spec, const char *input, struct run_result *r)
{
	struct spawn_child c = { .pid = -1, .in_fd = -1, .out_fd = -1, .err_fd = -1,
				 .status_fd = -1 };
	struct herr err = { 0 };

	memset(r, 0, sizeof(*r));
	r->spawn_rc = spawn_start(spec, &c, &err);
	assert_int_equal(r->spawn_rc, 0);
	r->spawn_rc = spawn_finish(&c, spec, &err);
	snprintf(r->spawn_msg, sizeof(r->spawn_msg), "%s", err.msg);
	if (input && c.in_fd >= 0) {
		assert_int_equal(write(c.in_fd, input, strlen(input)), (ssize_t)strlen(input));
		if (!spec->pty) {
			close(c.in_fd);
			c.in_fd = -1;
		}
	}
	if (r->spawn_rc == 0)
		collect(&c, r);
	assert_int_equal(waitpid(c.pid, &r->status, 0), c.pid);
	spawn_child_close(&c);
}

static void run_sh(const char *script, struct run_result *r)
{
	struct agent_user u = test_user();
	char *argv[] = { "/bin/sh", "-c", (char *)script, NULL };
	char *envp[] = { "PATH=/usr/bin:/bin", "LC_ALL=C", NULL };
	struct spawn_spec spec = { .path = "/bin/sh", .argv = argv, .envp = envp, .cwd = "/",
				   .user = &u, .stdin_mode = SPAWN_STDIN_NULL };

	run_spec(&spec, NULL, r);
}

static void sh_exit_code_and_outputs(void **unused)
{
	struct run_result r;

	run_sh("echo out; echo err >&2; exit 3", &r);
	assert_string_equal(r.out, "out\n");
	assert_string_equal(r.err, "err\n");
	assert_true(WIFEXITED(r.status));
	assert_int_equal(WEXITSTATUS(r.status), 3);
}

static void sh_killed_by_signal(void **unused)
{
	struct run_result r;
	char text[96];

	run_sh("kill -TERM $$; sleep 5", &r);
	assert_true(WIFSIGNALED(r.status));
	spawn_status_text(r.status, text, sizeof(text));
	assert_string_equal(text, "signal: terminated");
	assert_int_equal(spawn_exit_code(r.status), -1);
}

/* The agent ignores and blocks signals; its children must not inherit that. */
static void signals_reset_in_child(void **unused)
{
	struct run_result r;
	sigset_t set, old;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, &old);
	signal(SIGQUIT, SIG_IGN);

	run_sh("kill -QUIT $$; sleep 5", &r);

	signal(SIGQUIT, SIG_DFL);
	sigprocmask(SIG_SETMASK, &old, NULL);
	assert_true(WIFSIGNALED(r.status));
	assert_int_equal(WTERMSIG(r.status), SIGQUIT);

	/*
	 * exec, so that what is read is the mask and dispositions the child got:
	 * a shell that forks grep instead blocks signals while it waits, and
	 * whether dash forks depends on how it was started.
	 */
	run_sh("exec grep -E '^Sig(Blk|Ign)' /proc/self/status", &r);
	assert_non_null(strstr(r.out, "SigBlk:\t0000000000000000"));
	assert_non_null(strstr(r.out, "SigIgn:\t0000000000000000"));
}

static void no_agent_fd_leaks_into_child(void **unused)
{
	struct run_result r;
	char script[128];
	int leak = open("/dev/null", O_RDONLY); /* deliberately without O_CLOEXEC */

	assert_true(leak > 2);
	snprintf(script, sizeof(script),
		 "if [ -e /proc/self/fd/%d ]; then echo leaked; else echo clean; fi; "
		 "ls /proc/$$/fd", leak);
	run_sh(script, &r);
	close(leak);
	assert_string_equal(r.out, "clean\n0\n1\n2\n");
}

static void own_session_and_group(void **unused)
{
	struct run_result r;
	int pid, pgrp, sid;

	run_sh("echo $$; cat /proc/$$/stat", &r);
	assert_int_equal(sscanf(r.out, "%d", &pid), 1);
	const char *after = strrchr(r.out, ')');

	assert_non_null(after);
	assert_int_equal(sscanf(after, ") %*c %*d %d %d", &pgrp, &sid), 2);
	assert_int_equal(pgrp, pid);
	assert_int_equal(sid, pid);
}

static void exec_failure_is_reported(void **unused)
{
	struct agent_user u = test_user();
	char *argv[] = { "/nonexistent/prog", NULL };
	char *envp[] = { NULL };
	struct spawn_spec spec = { .path = "/nonexistent/prog", .argv = argv, .envp = envp,
				   .cwd = "/", .user = &u };
	struct run_result r;

	run_spec(&spec, NULL, &r);
	assert_int_equal(r.spawn_rc, -ENOENT);
	assert_string_equal(r.spawn_msg,
			    "fork/exec /nonexistent/prog: No such file or directory");
	assert_int_equal(WEXITSTATUS(r.status), 127);
}

static void chdir_failure_is_reported(void **unused)
{
	struct agent_user u = test_user();
	char *argv[] = { "/bin/true", NULL };
	char *envp[] = { NULL };
	struct spawn_spec spec = { .path = "/bin/true", .argv = argv, .envp = envp,
				   .cwd = "/nonexistent-dir", .user = &u };
	struct run_result r;

	run_spec(&spec, NULL, &r);
	assert_int_equal(r.spawn_rc, -ENOENT);
	assert_string_equal(r.spawn_msg, "chdir '/nonexistent-dir': No such file or directory");
}

static void stdin_pipe_and_null(void **unused)
{
	struct agent_user u = test_user();
	char *argv[] = { "/bin/cat", NULL };
	char *envp[] = { NULL };
	struct spawn_spec spec = { .path = "/bin/cat", .argv = argv, .envp = envp, .cwd = "/",
				   .user = &u, .stdin_mode = SPAWN_STDIN_PIPE };
	struct run_result r;

	run_spec(&spec, "hello stdin", &r);
	assert_string_equal(r.out, "hello stdin");
	assert_int_equal(WEXITSTATUS(r.status), 0);

	spec.stdin_mode = SPAWN_STDIN_NULL;
	run_spec(&spec, NULL, &r);
	assert_int_equal(r.out_len, 0);
	assert_int_equal(WEXITSTATUS(r.status), 0);
}

static void pty_has_size_and_controlling_tty(void **unused)
{
	struct agent_user u = test_user();
	char *argv[] = { "/bin/sh", "-c", "stty size; tty; [ -t 0 ] && echo interactive", NULL };
	char *envp[] = { "PATH=/usr/bin:/bin", NULL };
	struct spawn_spec spec = { .path = "/bin/sh", .argv = argv, .envp = envp, .cwd = "/",
				   .user = &u, .pty = 1, .cols = 123, .rows = 45 };
	struct run_result r;

	run_spec(&spec, NULL, &r);
	assert_int_equal(WEXITSTATUS(r.status), 0);
	assert_non_null(strstr(r.out, "45 123\r\n"));
	assert_non_null(strstr(r.out, "/dev/pts/"));
	assert_non_null(strstr(r.out, "interactive"));
}

static void switches_to_user_when_root(void **unused)
{
	struct agent_user u = test_user();
	char *argv[] = { "/bin/sh", "-c", "id -u; id -g; id -G; pwd", NULL };
	char *envp[] = { "PATH=/usr/bin:/bin", NULL };
	struct spawn_spec spec = { .path = "/bin/sh", .argv = argv, .envp = envp, .cwd = "/tmp",
				   .user = &u, .switch_user = 1 };
	struct run_result r;

	if (geteuid() != 0)
		skip();
	u.uid = 65534;
	u.gid = 65534;
	u.groups[0] = 65534;
	u.groups[1] = 27;
	u.ngroups = 2;
	run_spec(&spec, NULL, &r);
	assert_int_equal(WEXITSTATUS(r.status), 0);
	assert_string_equal(r.out, "65534\n65534\n65534 27\n/tmp\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(status_text_matches_go),
		cmocka_unit_test(exit_code_is_minus_one_when_signalled),
		cmocka_unit_test(env_order_and_later_wins),
		cmocka_unit_test(env_default_path_when_agent_has_none),
		cmocka_unit_test(env_rejects_bad_names),
		cmocka_unit_test(find_executable_in_path),
		cmocka_unit_test(sh_exit_code_and_outputs),
		cmocka_unit_test(sh_killed_by_signal),
		cmocka_unit_test(signals_reset_in_child),
		cmocka_unit_test(no_agent_fd_leaks_into_child),
		cmocka_unit_test(own_session_and_group),
		cmocka_unit_test(exec_failure_is_reported),
		cmocka_unit_test(chdir_failure_is_reported),
		cmocka_unit_test(stdin_pipe_and_null),
		cmocka_unit_test(pty_has_size_and_controlling_tty),
		cmocka_unit_test(switches_to_user_when_root),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
