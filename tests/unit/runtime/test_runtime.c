/*
 * Unit tests of the runtime parts that run without root: CIDR and id
 * parsing, names, the capability mask, the seccomp filter (loaded in a
 * child, which then tries the calls it must refuse), the state files used
 * for re-adoption, and rt_init's refusal of bad configuration.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <linux/sched.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "rt_internal.h"

static void test_cidr_parse(void **state)
{
	struct rt_cidr c;
	struct herr err;

	(void)state;
	assert_int_equal(rt_cidr_parse("10.0.0.0/8", &c, &err), 0);
	assert_int_equal(c.addr, 0x0A000000);
	assert_int_equal(c.prefix, 8);
	assert_int_equal(rt_cidr_parse("192.0.2.7", &c, &err), 0);
	assert_int_equal(c.prefix, 32);
	assert_int_equal(rt_cidr_parse("0.0.0.0/0", &c, &err), 0);
	assert_int_equal(c.prefix, 0);

	static const char *const bad[] = {
		"", "/8", "10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/",
		"10.0.0.0/8x", "abc", "10.0.0/8", "1.2.3.4.5", "10.0.0.0/ 8",
		"999.0.0.0/8", "10.0.0.0/8/8",
		"1111111111111111111111111111111111111111111111111111111111111/8",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		herr_clear(&err);
		assert_int_equal(rt_cidr_parse(bad[i], &c, &err), -EINVAL);
		assert_true(strstr(err.msg, "CIDR") || strstr(err.msg, "prefix") ||
			    strstr(err.msg, "host bits"));
	}
}

static void test_id_valid(void **state)
{
	char long_id[RT_ID_MAX + 2];

	(void)state;
	assert_true(rt_id_valid("a"));
	assert_true(rt_id_valid("sbx-01_AZ"));
	memset(long_id, 'a', sizeof(long_id));
	long_id[RT_ID_MAX] = '\0';
	assert_true(rt_id_valid(long_id));
	long_id[RT_ID_MAX] = 'a';
	long_id[RT_ID_MAX + 1] = '\0';
	assert_false(rt_id_valid(long_id));
	assert_false(rt_id_valid(""));
	assert_false(rt_id_valid(NULL));
	assert_false(rt_id_valid(".."));
	assert_false(rt_id_valid("a/b"));
	assert_false(rt_id_valid("a b"));
	assert_false(rt_id_valid("a\nb"));
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(rt_exit_reason_name(RT_EXIT_OOM), "oom");
	assert_string_equal(rt_exit_reason_name(RT_EXIT_LIMIT), "limit");
	assert_string_equal(rt_exit_reason_name(RT_EXIT_SIGNAL), "signal");
	assert_string_equal(rt_exit_reason_name((enum rt_exit_reason)99), "unknown");
	assert_string_equal(rt_state_name(RT_STATE_FROZEN), "frozen");
	assert_string_equal(rt_state_name((enum rt_state)-1), "unknown");
}

static void test_caps_mask(void **state)
{
	(void)state;
	/* Docker's default set, the mask the isolation notes measured inside */
	assert_int_equal(rt_caps_keep(), 0xa80425fbull);
}

/* In a child: load the filter, then report what the refused calls did. */
static int child_after_filter(const struct sock_fprog *prog, int which)
{
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    syscall(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, 0, prog) < 0)
		return 100;
	long r;
	switch (which) {
	case 0:
		r = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
		break;
	case 1:
		r = unshare(CLONE_NEWUSER);
		break;
	case 2: {
		struct clone_args a = { .flags = CLONE_NEWUSER, .exit_signal = SIGCHLD };
		r = syscall(SYS_clone3, &a, sizeof(a));
		if (r == 0)
			_exit(0);
		break;
	}
	case 3:
		r = syscall(SYS_bpf, 0, NULL, 0);
		break;
	default:
		r = getpid() > 0 ? 0 : -1; /* an allowed call keeps working */
		return r == 0 ? 0 : 101;
	}
	return r < 0 ? errno : 0;
}

static int filtered_errno(const struct sock_fprog *prog, int which)
{
	pid_t p = fork();
	int st;

	if (p == 0)
		_exit(child_after_filter(prog, which));
	assert_int_equal(waitpid(p, &st, 0), p);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static void test_seccomp_filter(void **state)
{
	struct sock_fprog prog = { 0 };
	struct herr err;

	(void)state;
	assert_int_equal(rt_seccomp_compile(&prog, &err), 0);
	assert_non_null(prog.filter);
	assert_true(prog.len > 20);
	assert_int_equal(filtered_errno(&prog, 0), EPERM);
	assert_int_equal(filtered_errno(&prog, 1), EPERM);
	assert_int_equal(filtered_errno(&prog, 2), ENOSYS);
	assert_int_equal(filtered_errno(&prog, 3), EPERM);
	assert_int_equal(filtered_errno(&prog, 4), 0);
	free(prog.filter);
}

static void test_state_roundtrip(void **state)
{
	char dir[] = "/tmp/hutch-rtunit.XXXXXX", path[128];
	struct rt rt = { .max_sandboxes = 8 };
	struct rt_sandbox s = { .slot = 3, .uid_base = 0x10030000, .keeper_pid = 42,
				.init_pid = 43, .init_start = 123456789ull, .oom_base = 7,
				.pids_base = 11 };
	struct rt_sandbox back = { 0 };
	struct herr err;
	int wst = -1;

	(void)state;
	assert_non_null(mkdtemp(dir));
	rt.run_dir = dir;
	snprintf(s.id, sizeof(s.id), "box-1");
	s.net.slot = 5;
	s.net.host_ip = 0x0AD50015;
	s.net.sbx_ip = 0x0AD50016;
	snprintf(s.net.host_if, sizeof(s.net.host_if), "hsb5g2");
	snprintf(path, sizeof(path), "%s/box-1", dir);
	assert_int_equal(mkdir(path, 0700), 0);

	assert_int_equal(rt_state_write(&rt, &s, &err), 0);
	assert_int_equal(rt_state_read(&rt, "box-1", &back, &err), 0);
	assert_string_equal(back.id, "box-1");
	assert_int_equal(back.slot, 3);
	assert_int_equal(back.uid_base, 0x10030000);
	assert_int_equal(back.net.slot, 5);
	assert_int_equal(back.net.host_ip, 0x0AD50015);
	assert_string_equal(back.net.host_if, "hsb5g2");
	assert_int_equal(back.init_pid, 43);
	assert_int_equal(back.init_start, 123456789ull);
	assert_int_equal(back.oom_base, 7);
	assert_int_equal(back.pids_base, 11);
	assert_int_equal(rt_state_exit_read(&rt, "box-1", &wst), -ENOENT);

	/* a slot beyond the runtime's table is refused, not indexed; the caller
	 * learns which slots a larger max-sandboxes would have to hold */
	s.slot = 9;
	assert_int_equal(rt_state_write(&rt, &s, &err), 0);
	assert_int_equal(rt_state_read(&rt, "box-1", &back, &err), -ERANGE);
	assert_non_null(strstr(err.msg, "slot"));
	assert_int_equal(back.slot, 9);

	/* a slot no setting could hold (here -1) is a damaged file */
	snprintf(path, sizeof(path), "%s/box-1/state", dir);
	assert_int_equal(rt_write_file(path, "slot=-1\nnet_slot=1\n", &err), 0);
	assert_int_equal(rt_state_read(&rt, "box-1", &back, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "damaged"));
	/* uid_base 0: rt_init takes max-sandboxes up to 65535, so slot 65534 is
	 * the last one a larger setting could hold */
	assert_int_equal(rt_write_file(path, "slot=65535\nnet_slot=1\n", &err), 0);
	assert_int_equal(rt_state_read(&rt, "box-1", &back, &err), -EINVAL);
	assert_int_equal(rt_write_file(path, "slot=65534\nnet_slot=1\n", &err), 0);
	assert_int_equal(rt_state_read(&rt, "box-1", &back, &err), -ERANGE);

	snprintf(path, sizeof(path), "%s/box-1/exit", dir);
	assert_int_equal(rt_write_file(path, "9\n", &err), 0);
	assert_int_equal(rt_state_exit_read(&rt, "box-1", &wst), 0);
	assert_true(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);

	assert_int_equal(rt_state_remove(&rt, "box-1"), 0);
	assert_int_equal(rmdir(dir), 0); /* nothing was left in it */
}

static void test_starttime_and_mkdir(void **state)
{
	char dir[] = "/tmp/hutch-rtunit.XXXXXX", path[160];
	struct herr err;

	(void)state;
	assert_true(rt_proc_starttime(getpid()) > 0);
	assert_int_equal(rt_proc_starttime(-1), 0);
	/* a name with ") (" must not shift the fields */
	pid_t c = fork();
	if (c == 0) {
		prctl(PR_SET_NAME, "a) b (c", 0, 0, 0);
		pause();
		_exit(0);
	}
	usleep(20000);
	unsigned long long st = rt_proc_starttime(c);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	assert_true(st >= rt_proc_starttime(getpid()));

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/a/b/c", dir);
	assert_int_equal(rt_mkdir_p(path, 0700, &err), 0);
	assert_int_equal(rt_mkdir_p(path, 0700, &err), 0); /* exists: fine */
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "rm -r %s", dir);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(rt_mkdir_p("", 0700, &err), -EINVAL);
}

static int init_with(struct rt_config *cfg, char *msg, size_t len)
{
	struct rt *rt = NULL;
	struct herr err;
	int r = rt_init(cfg, &rt, &err);

	snprintf(msg, len, "%s", err.msg);
	assert_null(rt);
	return r;
}

/* Checked before anything on the host is touched, so no root needed. */
static void test_init_rejects_config(void **state)
{
	struct rt_config cfg = { .data_dir = "/nonexistent/hutch-data",
				 .run_dir = "/nonexistent/hutch-run", .cgroup_name = "Bad/Name" };
	char msg[HERR_MSG_MAX];

	(void)state;
	assert_int_equal(init_with(&cfg, msg, sizeof(msg)), -EINVAL);
	assert_non_null(strstr(msg, "cgroup_name"));
	cfg.cgroup_name = "hutch";
	cfg.veth_prefix = "toolong";
	assert_int_equal(init_with(&cfg, msg, sizeof(msg)), -EINVAL);
	assert_non_null(strstr(msg, "veth_prefix"));
	cfg.veth_prefix = "hs1";
	assert_int_equal(init_with(&cfg, msg, sizeof(msg)), -EINVAL);
	cfg.veth_prefix = NULL;
	cfg.net_cidr = "10.1.0.0/24";
	assert_int_equal(init_with(&cfg, msg, sizeof(msg)), -EINVAL);
	assert_non_null(strstr(msg, "net_cidr"));
	cfg.net_cidr = "10.1.0.1/16";
	assert_int_equal(init_with(&cfg, msg, sizeof(msg)), -EINVAL);
	cfg.net_cidr = NULL;
	cfg.uid_base = 0xF0000000u;
	cfg.max_sandboxes = 4096;
	assert_int_equal(init_with(&cfg, msg, sizeof(msg)), -EINVAL);
	assert_non_null(strstr(msg, "uid_base"));
}

/* A flood through the init's pipe never grows init.log past the cap, and
 * what is kept is the newest output, in order. */
static void test_initlog_cap(void **state)
{
	char path[] = "/tmp/hutch-initlog-XXXXXX", line[32], last[32] = "";
	struct rt_initlog l;
	struct stat st;
	int fd = mkstemp(path);
	int pipefd[2];
	FILE *f;

	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(fcntl(fd, F_SETFL, O_APPEND), 0);
	rt_initlog_init(&l, fd, 4096);
	for (int i = 0; i < 5000; i++) {
		int n = snprintf(line, sizeof(line), "line %06d\n", i);

		rt_initlog_write(&l, line, (size_t)n);
		assert_true(fstat(fd, &st) == 0 && st.st_size <= 4096);
	}
	assert_int_equal(l.size, st.st_size);
	assert_true(st.st_size >= 2048);
	/* the file ends with the last line written, lines in order */
	f = fdopen(dup(fd), "r");
	assert_non_null(f);
	rewind(f);
	fgets(line, sizeof(line), f); /* the first may be cut */
	for (int prev = -1, cur; fgets(line, sizeof(line), f); prev = cur) {
		assert_int_equal(sscanf(line, "line %d", &cur), 1);
		assert_true(prev < 0 || cur == prev + 1);
		snprintf(last, sizeof(last), "%s", line);
	}
	fclose(f);
	assert_string_equal(last, "line 004999\n");
	/* one write larger than the cap keeps only its end */
	char big[10000];
	memset(big, 'a', sizeof(big));
	big[sizeof(big) - 1] = 'z';
	rt_initlog_write(&l, big, sizeof(big));
	assert_true(fstat(fd, &st) == 0 && st.st_size <= 4096);
	assert_int_equal(pread(fd, line, 1, st.st_size - 1), 1);
	assert_int_equal(line[0], 'z');
	/* drain: data, then -EAGAIN on an empty non-blocking pipe, 0 at EOF */
	assert_int_equal(pipe2(pipefd, O_NONBLOCK), 0);
	assert_int_equal(write(pipefd[1], "hello\n", 6), 6);
	assert_int_equal(rt_initlog_drain(&l, pipefd[0]), 1);
	assert_int_equal(rt_initlog_drain(&l, pipefd[0]), -EAGAIN);
	close(pipefd[1]);
	assert_int_equal(rt_initlog_drain(&l, pipefd[0]), 0);
	close(pipefd[0]);
	assert_int_equal(pread(fd, line, 6, l.size - 6), 6);
	assert_memory_equal(line, "hello\n", 6);
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cidr_parse),
		cmocka_unit_test(test_initlog_cap),
		cmocka_unit_test(test_id_valid),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_caps_mask),
		cmocka_unit_test(test_seccomp_filter),
		cmocka_unit_test(test_state_roundtrip),
		cmocka_unit_test(test_starttime_and_mkdir),
		cmocka_unit_test(test_init_rejects_config),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
