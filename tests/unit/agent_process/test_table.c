/*
 * The process table: lookups by pid and tag, the end of a process once it is
 * reaped with every output closed, retained ends for late Connect, pid reuse,
 * and the children whose exec failed.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "proc_internal.h"
#include "process.h"

static struct proc *add_proc(pid_t pid, const char *tag, enum proc_state state)
{
	struct proc *p = proc_new();

	assert_non_null(p);
	p->pid = pid;
	p->tag = tag ? strdup(tag) : NULL;
	pthread_mutex_lock(&proc_lock);
	proc_insert(p);
	if (state == PROC_LIVE)
		proc_make_live(p); /* no outputs: ends as soon as it is reaped */
	else
		p->state = state;
	proc_unref(p);
	pthread_mutex_unlock(&proc_lock);
	return p;
}

static Process__ProcessSelector by_pid(uint32_t pid)
{
	Process__ProcessSelector s = PROCESS__PROCESS_SELECTOR__INIT;

	s.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_PID;
	s.pid = pid;
	return s;
}

static Process__ProcessSelector by_tag(const char *tag)
{
	Process__ProcessSelector s = PROCESS__PROCESS_SELECTOR__INIT;

	s.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_TAG;
	s.tag = (char *)tag;
	return s;
}

static void lookup_by_pid_and_tag(void **unused)
{
	struct proc *a = add_proc(70001, "web", PROC_LIVE);
	struct proc *b = add_proc(70002, "web", PROC_LIVE);
	struct proc *c = add_proc(70003, NULL, PROC_SPAWNING);
	Process__ProcessSelector s;

	pthread_mutex_lock(&proc_lock);
	s = by_pid(70002);
	assert_ptr_equal(proc_find_live(&s), b);
	s = by_tag("web");
	assert_ptr_equal(proc_find_live(&s), a); /* the first (oldest) with the tag */
	s = by_pid(70003);
	assert_null(proc_find_live(&s));          /* not started yet: invisible */
	s = by_tag("other");
	assert_null(proc_find_live(&s));
	s = (Process__ProcessSelector)PROCESS__PROCESS_SELECTOR__INIT;
	assert_null(proc_find_live(&s));
	assert_null(proc_find_live(NULL));
	c->state = PROC_FAILED;
	pthread_mutex_unlock(&proc_lock);

	assert_int_equal(process_child_exited(70001, 0), 1);
	assert_int_equal(process_child_exited(70002, 0), 1);
	assert_int_equal(process_child_exited(70003, 127 << 8), 1); /* failed: forgotten */
}

static void reaped_process_ends_and_is_retained(void **unused)
{
	struct proc *p = add_proc(70010, "job", PROC_LIVE);
	Process__ProcessSelector s = by_pid(70010);

	assert_int_equal(process_child_exited(70010, SIGKILL), 1);

	pthread_mutex_lock(&proc_lock);
	assert_null(proc_find_live(&s));
	assert_ptr_equal(proc_find_ended(&s), p);
	assert_int_equal(p->state, PROC_ENDED);
	assert_int_equal(p->end.exit_code, -1);
	assert_int_equal(p->end.exited, 0);
	assert_string_equal(p->end.status, "signal: killed");
	assert_true(p->end.has_error);
	s = by_tag("job");
	assert_ptr_equal(proc_find_ended(&s), p);
	pthread_mutex_unlock(&proc_lock);

	/* A second report for the same pid is not ours any more. */
	assert_int_equal(process_child_exited(70010, 0), 0);
	assert_int_equal(process_child_exited(79999, 0), 0);
}

static void clean_exit_has_no_error(void **unused)
{
	struct proc *p = add_proc(70020, NULL, PROC_LIVE);

	assert_int_equal(process_child_exited(70020, 0), 1);
	pthread_mutex_lock(&proc_lock);
	assert_int_equal(p->end.exit_code, 0);
	assert_int_equal(p->end.exited, 1);
	assert_string_equal(p->end.status, "exit status 0");
	assert_false(p->end.has_error);
	pthread_mutex_unlock(&proc_lock);
}

static void open_output_delays_the_end(void **unused)
{
	struct proc *p = proc_new();
	int fds[2];

	assert_int_equal(pipe(fds), 0);
	p->pid = 70030;
	p->out[0].fd = fds[0];
	p->out[0].kind = PROC_OUT_STDOUT;
	pthread_mutex_lock(&proc_lock);
	proc_insert(p);
	proc_make_live(p);
	pthread_mutex_unlock(&proc_lock);

	assert_int_equal(process_child_exited(70030, 1 << 8), 1);
	pthread_mutex_lock(&proc_lock);
	assert_int_equal(p->state, PROC_LIVE); /* a grandchild may still write */
	proc_output_closed(&p->out[0]);
	assert_int_equal(p->state, PROC_ENDED);
	assert_string_equal(p->end.status, "exit status 1");
	proc_unref(p);
	pthread_mutex_unlock(&proc_lock);
	close(fds[1]);
}

static void new_pid_forgets_stale_retained_end(void **unused)
{
	Process__ProcessSelector s = by_pid(70040);
	struct proc *fresh;

	add_proc(70040, NULL, PROC_LIVE);
	assert_int_equal(process_child_exited(70040, 0), 1);
	fresh = add_proc(70040, NULL, PROC_LIVE);

	pthread_mutex_lock(&proc_lock);
	assert_null(proc_find_ended(&s));
	assert_ptr_equal(proc_find_live(&s), fresh);
	pthread_mutex_unlock(&proc_lock);
	assert_int_equal(process_child_exited(70040, 0), 1);
}

static int setup(void **unused)
{
	return process_service_init();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(lookup_by_pid_and_tag),
		cmocka_unit_test(reaped_process_ends_and_is_retained),
		cmocka_unit_test(clean_exit_has_no_error),
		cmocka_unit_test(open_output_delays_the_end),
		cmocka_unit_test(new_pid_forgets_stale_retained_end),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
