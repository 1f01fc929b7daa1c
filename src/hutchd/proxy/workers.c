/*
 * The threads that run proxied exchanges with sandboxes: a pool that grows
 * on demand and shrinks when idle, instead of a new thread per request.
 *
 * A thread per request cost about a third of the proxy's CPU time for a small
 * request: clone3, then page faults on a fresh stack (the exchange's 64 KiB
 * buffers live there), and glibc's madvise of that stack when the thread
 * ended. A kept thread has its stack in memory already.
 *
 * The pool never makes a request wait for another: an exchange may last as
 * long as a command runs, so a request that finds no idle thread gets a new
 * one. Idle threads end after WORKER_IDLE_S, so a burst leaves nothing
 * behind for long.
 */
#include "proxy_internal.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#define WORKER_IDLE_S 10

void workers_init(struct worker_pool *w)
{
	pthread_condattr_t ca;

	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->mu, NULL);
	/* Idle timeouts on the monotonic clock: a clock step must not end or
	 * keep every idle thread at once. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->work_cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&w->done_cv, NULL);
}

/* Called with w->mu held; false once the thread has been idle too long. */
static bool wait_for_work(struct worker_pool *w)
{
	struct timespec until;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += WORKER_IDLE_S;
	while (!w->head && !w->stopping) {
		int rc;

		w->idle++;
		rc = pthread_cond_timedwait(&w->work_cv, &w->mu, &until);
		w->idle--;
		if (rc == ETIMEDOUT && !w->head)
			return false;
	}
	return w->head != NULL;
}

static void *worker_loop(void *arg)
{
	struct worker_pool *w = arg;

	pthread_mutex_lock(&w->mu);
	while (wait_for_work(w)) {
		struct preq *q = w->head;

		w->head = q->next_job;
		if (!w->head)
			w->tail = NULL;
		w->queued--;
		pthread_mutex_unlock(&w->mu);

		upstream_exchange(q);

		/* The owner frees q once it sees this, so it is the last
		 * touch; the pool's mutex outlives every request. */
		pthread_mutex_lock(&w->mu);
		q->released = true;
		pthread_cond_broadcast(&w->done_cv);
	}
	w->threads--;
	pthread_cond_broadcast(&w->done_cv);
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static int start_thread(struct worker_pool *w)
{
	pthread_attr_t attr;
	pthread_t t;
	int rc;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&t, &attr, worker_loop, w);
	pthread_attr_destroy(&attr);
	if (rc == 0)
		w->threads++;
	return -rc;
}

int workers_run(struct worker_pool *w, struct preq *q)
{
	int rc = 0;

	pthread_mutex_lock(&w->mu);
	if (w->stopping) {
		pthread_mutex_unlock(&w->mu);
		return -ESHUTDOWN;
	}
	/* Every queued request has an idle thread waking for it, or a new one. */
	if (w->idle <= w->queued)
		rc = start_thread(w);
	if (rc == 0 || w->idle > w->queued) {
		q->next_job = NULL;
		q->released = false;
		if (w->tail)
			w->tail->next_job = q;
		else
			w->head = q;
		w->tail = q;
		w->queued++;
		pthread_cond_signal(&w->work_cv);
		rc = 0;
	}
	pthread_mutex_unlock(&w->mu);
	return rc;
}

void workers_wait(struct worker_pool *w, struct preq *q)
{
	pthread_mutex_lock(&w->mu);
	while (!q->released)
		pthread_cond_wait(&w->done_cv, &w->mu);
	pthread_mutex_unlock(&w->mu);
}

/* Ends the idle threads and waits for the busy ones (their connections are
 * shut down by then). */
void workers_stop(struct worker_pool *w)
{
	pthread_mutex_lock(&w->mu);
	w->stopping = true;
	pthread_cond_broadcast(&w->work_cv);
	while (w->threads > 0)
		pthread_cond_wait(&w->done_cv, &w->mu);
	pthread_mutex_unlock(&w->mu);
	pthread_cond_destroy(&w->work_cv);
	pthread_cond_destroy(&w->done_cv);
	pthread_mutex_destroy(&w->mu);
}
