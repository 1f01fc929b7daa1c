/*
 * The table of processes and the output thread.
 *
 * Processes are found by pid or tag. A process stays in the table from fork
 * until its end event is known (reaped, and EOF on every output), and then
 * for PROC_RETAIN_MS more so that a late Connect still learns how it ended.
 *
 * One thread reads the output of every process through epoll and hands each
 * chunk to the process's subscribers (stream.c); it also runs the timers:
 * Start deadlines, subscribers stuck for too long, retained ends to forget.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "proc_internal.h"
#include "process.h"
#include "spawn.h"

pthread_mutex_t proc_lock = PTHREAD_MUTEX_INITIALIZER;

static struct {
	struct proc *head, *tail;
	int epfd;
	int wakefd;
	int started;
	pthread_t thread;
} tbl = { .epfd = -1, .wakefd = -1 };

/* ---- process objects ---- */

struct proc *proc_new(void)
{
	struct proc *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->refs = 1;
	p->in_fd = -1;
	p->out[0].fd = p->out[1].fd = -1;
	p->out[0].proc = p->out[1].proc = p;
	pthread_mutex_init(&p->in_lock, NULL);
	return p;
}

void proc_ref(struct proc *p)
{
	p->refs++;
}

static void free_strv(char **v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

void proc_unref(struct proc *p)
{
	if (!p || --p->refs > 0)
		return;
	for (int i = 0; i < 2; i++) {
		if (p->out[i].fd >= 0)
			close(p->out[i].fd);
	}
	if (p->in_fd >= 0)
		close(p->in_fd);
	pthread_mutex_destroy(&p->in_lock);
	free(p->cmd);
	free_strv(p->args, p->nargs);
	free_strv(p->env_keys, p->nenvs);
	free_strv(p->env_vals, p->nenvs);
	free(p->cwd);
	free(p->tag);
	free(p);
}

/* Retained ends with the pid of a new process are stale now: forget them. */
static void forget_ended_pid(pid_t pid)
{
	struct proc *p = tbl.head, *next;

	for (; p; p = next) {
		next = p->next;
		if (p->state == PROC_ENDED && p->pid == pid)
			proc_remove(p);
	}
}

void proc_insert(struct proc *p)
{
	forget_ended_pid(p->pid);
	proc_ref(p);
	p->next = NULL;
	if (tbl.tail)
		tbl.tail->next = p;
	else
		tbl.head = p;
	tbl.tail = p;
}

void proc_remove(struct proc *p)
{
	struct proc **pp = &tbl.head, *prev = NULL;

	for (; *pp; prev = *pp, pp = &(*pp)->next) {
		if (*pp != p)
			continue;
		*pp = p->next;
		if (tbl.tail == p)
			tbl.tail = prev;
		p->next = NULL;
		proc_unref(p);
		return;
	}
}

struct proc *proc_first(void)
{
	return tbl.head;
}

static int selector_matches(const struct proc *p, const Process__ProcessSelector *sel)
{
	if (sel->selector_case == PROCESS__PROCESS_SELECTOR__SELECTOR_PID)
		return p->pid > 0 && (uint32_t)p->pid == sel->pid;
	if (sel->selector_case == PROCESS__PROCESS_SELECTOR__SELECTOR_TAG)
		return p->tag && sel->tag && !strcmp(p->tag, sel->tag);
	return 0;
}

static struct proc *find_in_state(const Process__ProcessSelector *sel, enum proc_state st)
{
	if (!sel)
		return NULL;
	for (struct proc *p = tbl.head; p; p = p->next) {
		if (p->state == st && selector_matches(p, sel))
			return p;
	}
	return NULL;
}

struct proc *proc_find_live(const Process__ProcessSelector *sel)
{
	return find_in_state(sel, PROC_LIVE);
}

/* The most recent retained end wins when a tag was used more than once. */
struct proc *proc_find_ended(const Process__ProcessSelector *sel)
{
	struct proc *found = NULL;

	if (!sel)
		return NULL;
	for (struct proc *p = tbl.head; p; p = p->next) {
		if (p->state == PROC_ENDED && selector_matches(p, sel))
			found = p;
	}
	return found;
}

/* ---- signals ---- */

/*
 * The process leads its own session, so its pid is also its process group:
 * signalling the group reaches the shell and whatever it started, which is
 * what a user killing a command means. Once the leader is reaped and every
 * output is closed, no member can be left, and the id might belong to an
 * unrelated process later: nothing is sent then.
 */
void proc_kill_group(struct proc *p, int sig)
{
	if (p->pid <= 0 || (p->reaped && p->nopen == 0))
		return;
	if (kill(-p->pid, sig) < 0 && errno == ESRCH && !p->reaped)
		kill(p->pid, sig);
}

/* ---- outputs and the end of a process ---- */

static void output_register(struct proc_output *o)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = o };

	if (o->fd < 0 || o->registered)
		return;
	if (epoll_ctl(tbl.epfd, EPOLL_CTL_ADD, o->fd, &ev) == 0)
		o->registered = 1;
	else
		log_error("process", NULL, "epoll_ctl add pid=%d fd=%d: %s",
			  (int)o->proc->pid, o->fd, strerror(errno));
}

static void output_unregister(struct proc_output *o)
{
	if (o->fd < 0 || !o->registered)
		return;
	epoll_ctl(tbl.epfd, EPOLL_CTL_DEL, o->fd, NULL);
	o->registered = 0;
}

void proc_pause(struct proc *p)
{
	if (p->paused)
		return;
	p->paused = 1;
	for (int i = 0; i < 2; i++)
		output_unregister(&p->out[i]);
}

void proc_maybe_resume(struct proc *p)
{
	if (!p->paused)
		return;
	for (struct proc_sub *s = p->subs; s; s = s->next) {
		if (s->queued > PROC_QUEUE_LOW)
			return;
	}
	p->paused = 0;
	for (int i = 0; i < 2; i++)
		output_register(&p->out[i]);
}

static void compute_end(struct proc *p)
{
	int ws = p->wait_status;

	p->end.exit_code = spawn_exit_code(ws);
	p->end.exited = WIFEXITED(ws);
	spawn_status_text(ws, p->end.status, sizeof(p->end.status));
	p->end.has_error = !(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
}

/* Keeps the retained ends bounded: the oldest go first. */
static void trim_retained(void)
{
	size_t n = 0;

	for (struct proc *p = tbl.head; p; p = p->next)
		n += p->state == PROC_ENDED;
	while (n > PROC_RETAIN_MAX) {
		struct proc *p = tbl.head;

		while (p && p->state != PROC_ENDED)
			p = p->next;
		if (!p)
			return;
		proc_remove(p);
		n--;
	}
}

/* Stdin is useless once the process has ended; a writer may hold it, though. */
static void close_stdin_if_free(struct proc *p)
{
	if (pthread_mutex_trylock(&p->in_lock) != 0)
		return;
	if (p->in_fd >= 0) {
		close(p->in_fd);
		p->in_fd = -1;
	}
	pthread_mutex_unlock(&p->in_lock);
}

static void check_finished(struct proc *p)
{
	if (p->state != PROC_LIVE || !p->reaped || p->nopen > 0)
		return;

	compute_end(p);
	p->state = PROC_ENDED;
	p->expires_ms = rpc_now_ms() + PROC_RETAIN_MS;
	log_info("process", NULL, "pid=%d ended: %s", (int)p->pid, p->end.status);
	proc_finish_subs(p);
	close_stdin_if_free(p);
	trim_retained();
}

void proc_make_live(struct proc *p)
{
	p->state = PROC_LIVE;
	for (int i = 0; i < 2; i++) {
		if (p->out[i].fd >= 0)
			p->nopen++;
	}
	if (!p->paused) {
		for (int i = 0; i < 2; i++)
			output_register(&p->out[i]);
	}
	check_finished(p);
	if (p->deadline_ms)
		proc_wake_output();
}

void proc_output_closed(struct proc_output *o)
{
	if (o->fd < 0)
		return;
	output_unregister(o);
	close(o->fd);
	o->fd = -1;
	o->proc->nopen--;
	check_finished(o->proc);
}

int process_child_exited(pid_t pid, int wait_status)
{
	struct proc *p;
	int found = 0;

	pthread_mutex_lock(&proc_lock);
	for (p = tbl.head; p; p = p->next) {
		if (p->pid == pid && p->state != PROC_ENDED && !p->reaped)
			break;
	}
	if (p) {
		found = 1;
		p->reaped = 1;
		p->wait_status = wait_status;
		if (p->state == PROC_FAILED)
			proc_remove(p);
		else
			check_finished(p);
	}
	pthread_mutex_unlock(&proc_lock);
	return found;
}

/* ---- the output thread ---- */

void proc_wake_output(void)
{
	uint64_t one = 1;
	ssize_t n;

	if (tbl.wakefd >= 0)
		n = write(tbl.wakefd, &one, sizeof(one));
	(void)n;
}

static void read_output(struct proc_output *o)
{
	size_t cap = o->kind == PROC_OUT_PTY ? PROC_PTY_CHUNK : PROC_PIPE_CHUNK;
	struct proc_chunk *c = malloc(sizeof(*c) + cap);
	ssize_t n;

	if (!c)
		return; /* level-triggered: tried again on the next round */
	do {
		n = read(o->fd, c->data, cap);
	} while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
		free(c);
		return;
	}

	pthread_mutex_lock(&proc_lock);
	if (n > 0) {
		c->refs = 1;
		c->kind = o->kind;
		c->len = (size_t)n;
		proc_fanout(o->proc, c);
		proc_chunk_unref(c);
	} else {
		/* EOF, or EIO from a PTY master whose slave side is all closed. */
		if (n < 0 && errno != EIO)
			log_warn("process", NULL, "reading output of pid=%d: %s",
				 (int)o->proc->pid, strerror(errno));
		free(c);
		proc_output_closed(o);
	}
	pthread_mutex_unlock(&proc_lock);
}

static void expire_deadline(struct proc *p, struct proc_endlist *dl)
{
	p->deadline_hit = 1;
	log_info("process", NULL, "pid=%d deadline reached, killing it", (int)p->pid);
	proc_kill_group(p, SIGKILL);
	for (struct proc_sub *s = p->subs; s; s = s->next)
		proc_endlist_add(dl, s->stream);
}

/* Runs the timers; returns the epoll timeout until the next one is due. */
static int run_timers(struct proc_endlist *dl, struct proc_endlist *stuck)
{
	int64_t now = rpc_now_ms();
	int64_t next = now + 1000;
	struct proc *p, *nx;

	for (p = tbl.head; p; p = nx) {
		nx = p->next;
		if (p->state == PROC_ENDED && p->expires_ms <= now) {
			proc_remove(p);
			continue;
		}
		if (p->state != PROC_LIVE)
			continue;
		if (p->deadline_ms && !p->deadline_hit) {
			if (p->deadline_ms <= now)
				expire_deadline(p, dl);
			else if (p->deadline_ms < next)
				next = p->deadline_ms;
		}
		for (struct proc_sub *s = p->subs; s; s = s->next) {
			if (s->queued > PROC_QUEUE_HIGH &&
			    now - s->last_progress_ms > PROC_STALL_MS)
				proc_endlist_add(stuck, s->stream);
		}
	}
	return (int)(next - now);
}

static void *output_main(void *arg)
{
	struct epoll_event evs[64];

	for (;;) {
		struct proc_endlist dl = { .st = { RPC_DEADLINE_EXCEEDED, "" } };
		struct proc_endlist stuck = { .st = { RPC_ABORTED, "" } };
		int timeout, n;

		snprintf(dl.st.message, sizeof(dl.st.message),
			 "process deadline exceeded: the process was killed");
		snprintf(stuck.st.message, sizeof(stuck.st.message),
			 "client did not read output for %d s; detached from the process",
			 PROC_STALL_MS / 1000);

		pthread_mutex_lock(&proc_lock);
		timeout = run_timers(&dl, &stuck);
		pthread_mutex_unlock(&proc_lock);
		proc_endlist_run(&dl);
		proc_endlist_run(&stuck);

		n = epoll_wait(tbl.epfd, evs, 64, timeout < 0 ? 0 : timeout);
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr) {
				read_output(evs[i].data.ptr);
			} else {
				uint64_t v;
				ssize_t r = read(tbl.wakefd, &v, sizeof(v));

				(void)r;
			}
		}
		if (n < 0 && errno != EINTR) {
			log_error("process", NULL, "epoll_wait: %s", strerror(errno));
			sleep(1);
		}
	}
	return NULL;
}

int proc_output_start(void)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int r;

	if (tbl.started)
		return 0;
	tbl.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (tbl.epfd < 0)
		return -errno;
	tbl.wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (tbl.wakefd < 0)
		return -errno;
	if (epoll_ctl(tbl.epfd, EPOLL_CTL_ADD, tbl.wakefd, &ev) < 0)
		return -errno;
	r = pthread_create(&tbl.thread, NULL, output_main, NULL);
	if (r)
		return -r;
	pthread_detach(tbl.thread);
	tbl.started = 1;
	return 0;
}
