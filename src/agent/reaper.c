/*
 * Reaps every child of the agent and tells the process service (reaper.h).
 *
 * SIGCHLD stays blocked in all threads; this thread takes it with
 * sigwaitinfo(). SIGCHLD is not queued (several exits may yield one signal),
 * so each wakeup drains all zombies with waitpid(-1, WNOHANG).
 */
#include "reaper.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "log.h"
#include "process.h"

static pthread_t reaper_thread;
static atomic_bool reaper_running;
static atomic_bool reaper_stopping;
static atomic_ulong reaped_total;

void reaper_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGCHLD);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
}

void reaper_child_reset_signals(void)
{
	sigset_t none;

	sigemptyset(&none);
	signal(SIGPIPE, SIG_DFL);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

unsigned long reaper_reaped_count(void)
{
	return atomic_load(&reaped_total);
}

static void describe_status(int st, char *out, size_t cap)
{
	if (WIFEXITED(st))
		snprintf(out, cap, "exit=%d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(out, cap, "signal=%d", WTERMSIG(st));
	else
		snprintf(out, cap, "status=%#x", (unsigned int)st);
}

static void reap_all(void)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);

		if (pid <= 0) {
			if (pid < 0 && errno == EINTR)
				continue;
			return; /* 0: none left to reap now; ECHILD: no children */
		}
		atomic_fetch_add(&reaped_total, 1);
		if (!process_child_exited(pid, st) && log_enabled("reaper", LOG_DEBUG)) {
			char how[32];
			describe_status(st, how, sizeof(how));
			log_debug("reaper", NULL, "reaped orphan pid=%d %s", (int)pid, how);
		}
	}
}

static void *reaper_main(void *arg)
{
	sigset_t chld;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	/* Children may have exited before this thread started. */
	reap_all();
	while (!atomic_load(&reaper_stopping)) {
		siginfo_t info;

		if (sigwaitinfo(&chld, &info) < 0 && errno != EINTR)
			break;
		reap_all();
	}
	return NULL;
}

int reaper_start(struct herr *err)
{
	int r;

	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
		return herr_sys(err, -errno, "prctl(PR_SET_CHILD_SUBREAPER)");
	atomic_store(&reaper_stopping, false);
	r = pthread_create(&reaper_thread, NULL, reaper_main, NULL);
	if (r != 0)
		return herr_sys(err, -r, "starting the reaper thread");
	atomic_store(&reaper_running, true);
	return 0;
}

void reaper_stop(void)
{
	if (!atomic_load(&reaper_running))
		return;
	atomic_store(&reaper_stopping, true);
	/* Wake the thread: a thread-directed SIGCHLD reaches its sigwaitinfo. */
	pthread_kill(reaper_thread, SIGCHLD);
	pthread_join(reaper_thread, NULL);
	atomic_store(&reaper_running, false);
}
