/*
 * Subscribers: the streams attached to a process's output.
 *
 * Every subscriber has its own bounded queue and its own sender thread, which
 * is the only one to call rpc_stream_send for it (that call blocks while the
 * client is behind). The output thread therefore never waits for a client:
 * it only queues. When one subscriber's queue passes PROC_QUEUE_HIGH, the
 * output of that process stops being read until every queue is back under
 * PROC_QUEUE_LOW: the process feels backpressure through its pipe, nothing is
 * lost, memory stays bounded, and other processes are not affected. A
 * subscriber that stays over the mark without sending anything for
 * PROC_STALL_MS is ended (table.c), so one stuck client cannot hold a
 * process, or the other clients of that process, forever.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "proc_internal.h"

void proc_chunk_unref(struct proc_chunk *c)
{
	if (c && --c->refs == 0)
		free(c);
}

static void item_free(struct proc_item *it)
{
	if (it->chunk)
		proc_chunk_unref(it->chunk);
	free(it);
}

static void sub_unref(struct proc_sub *sub)
{
	if (--sub->refs > 0)
		return;
	while (sub->head) {
		struct proc_item *it = sub->head;

		sub->head = it->next;
		item_free(it);
	}
	proc_unref(sub->proc);
	pthread_cond_destroy(&sub->cond);
	/* The stream reference is dropped by whoever freed us, outside the lock. */
	free(sub);
}

static void sub_detach(struct proc_sub *sub)
{
	struct proc *p = sub->proc;

	if (!sub->attached)
		return;
	for (struct proc_sub **pp = &p->subs; *pp; pp = &(*pp)->next) {
		if (*pp == sub) {
			*pp = sub->next;
			break;
		}
	}
	sub->attached = 0;
	sub->next = NULL;
	sub->queued = 0;
	proc_maybe_resume(p);
}

/*
 * Queues an item. Allocation failure of a data item drops that chunk for
 * this subscriber only; start and end items are allocated with the
 * subscriber or retried by the caller, so they are never silently lost.
 */
void proc_sub_push(struct proc_sub *sub, enum proc_item_type type, struct proc_chunk *chunk)
{
	struct proc_item *it = calloc(1, sizeof(*it));

	if (!it) {
		log_error("process", NULL, "out of memory queueing output of pid=%d",
			  (int)sub->proc->pid);
		return;
	}
	it->type = type;
	if (chunk) {
		chunk->refs++;
		it->chunk = chunk;
		sub->queued += chunk->len;
	}
	if (sub->tail)
		sub->tail->next = it;
	else
		sub->head = it;
	sub->tail = it;
	pthread_cond_signal(&sub->cond);
}

struct proc_sub *proc_sub_new(struct proc *p, struct rpc_stream *s, int connect,
			      int starter)
{
	struct proc_sub *sub = calloc(1, sizeof(*sub));

	if (!sub)
		return NULL;
	sub->refs = 2;
	sub->proc = p;
	proc_ref(p);
	sub->stream = s;
	rpc_stream_ref(s);
	sub->connect = connect;
	sub->starter = starter;
	sub->last_progress_ms = rpc_now_ms();
	pthread_cond_init(&sub->cond, NULL);
	proc_sub_push(sub, PROC_ITEM_START, NULL);
	return sub;
}

void proc_sub_attach(struct proc_sub *sub)
{
	struct proc *p = sub->proc;

	sub->next = p->subs;
	p->subs = sub;
	sub->attached = 1;
}

void proc_fanout(struct proc *p, struct proc_chunk *c)
{
	for (struct proc_sub *s = p->subs; s; s = s->next) {
		if (s->closed)
			continue;
		proc_sub_push(s, PROC_ITEM_DATA, c);
		if (s->queued > PROC_QUEUE_HIGH)
			proc_pause(p);
	}
}

/* The process has ended: every attached subscriber gets the end event last. */
void proc_finish_subs(struct proc *p)
{
	for (struct proc_sub *s = p->subs; s; s = s->next)
		proc_sub_push(s, PROC_ITEM_END, NULL);
}

/* ---- sending ---- */

struct send_args {
	enum proc_item_type type;
	pid_t pid;
	struct proc_chunk *chunk;
	struct proc_end end;
};

static int send_event(struct proc_sub *sub, const struct send_args *a)
{
	Process__ProcessEvent ev = PROCESS__PROCESS_EVENT__INIT;
	Process__ProcessEvent__StartEvent start = PROCESS__PROCESS_EVENT__START_EVENT__INIT;
	Process__ProcessEvent__DataEvent data = PROCESS__PROCESS_EVENT__DATA_EVENT__INIT;
	Process__ProcessEvent__EndEvent end = PROCESS__PROCESS_EVENT__END_EVENT__INIT;
	ProtobufCBinaryData bytes;

	switch (a->type) {
	case PROC_ITEM_START:
		start.pid = (uint32_t)a->pid;
		ev.event_case = PROCESS__PROCESS_EVENT__EVENT_START;
		ev.start = &start;
		break;
	case PROC_ITEM_DATA:
		bytes.len = a->chunk->len;
		bytes.data = a->chunk->data;
		if (a->chunk->kind == PROC_OUT_STDOUT) {
			data.output_case = PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_STDOUT;
			data.stdout = bytes;
		} else if (a->chunk->kind == PROC_OUT_STDERR) {
			data.output_case = PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_STDERR;
			data.stderr = bytes;
		} else {
			data.output_case = PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_PTY;
			data.pty = bytes;
		}
		ev.event_case = PROCESS__PROCESS_EVENT__EVENT_DATA;
		ev.data = &data;
		break;
	case PROC_ITEM_END:
		end.exit_code = a->end.exit_code;
		end.exited = a->end.exited;
		end.status = (char *)a->end.status;
		if (a->end.has_error) {
			end._error_case = PROCESS__PROCESS_EVENT__END_EVENT___ERROR_ERROR;
			end.error = (char *)a->end.status;
		}
		ev.event_case = PROCESS__PROCESS_EVENT__EVENT_END;
		ev.end = &end;
		break;
	}

	if (sub->connect) {
		Process__ConnectResponse r = PROCESS__CONNECT_RESPONSE__INIT;

		r.event = &ev;
		return rpc_stream_send(sub->stream, &r.base);
	}
	Process__StartResponse r = PROCESS__START_RESPONSE__INIT;

	r.event = &ev;
	return rpc_stream_send(sub->stream, &r.base);
}

/* Takes the next item off the queue; NULL when the stream is closed. */
static struct proc_item *next_item(struct proc_sub *sub, struct send_args *a)
{
	struct proc_item *it;

	while (!sub->head && !sub->closed)
		pthread_cond_wait(&sub->cond, &proc_lock);
	if (sub->closed)
		return NULL;

	it = sub->head;
	sub->head = it->next;
	if (!sub->head)
		sub->tail = NULL;
	a->type = it->type;
	a->pid = sub->proc->pid;
	a->chunk = it->chunk;
	a->end = sub->proc->end;
	if (it->chunk) {
		sub->queued = sub->queued >= it->chunk->len ? sub->queued - it->chunk->len : 0;
	}
	return it;
}

static void *sender_main(void *arg)
{
	struct proc_sub *sub = arg;
	struct rpc_stream *stream = sub->stream;
	struct proc_item *it;
	struct send_args a;
	int done = 0, rc = 0;

	pthread_mutex_lock(&proc_lock);
	while (!done && (it = next_item(sub, &a))) {
		pthread_mutex_unlock(&proc_lock);
		rc = send_event(sub, &a);
		if (rc == 0 && a.type == PROC_ITEM_END)
			rpc_stream_end(stream, NULL);
		pthread_mutex_lock(&proc_lock);

		item_free(it);
		sub->last_progress_ms = rpc_now_ms();
		if (sub->attached)
			proc_maybe_resume(sub->proc);
		done = rc < 0 || a.type == PROC_ITEM_END;
	}
	sub_detach(sub);
	int last = sub->refs == 1;

	sub_unref(sub);
	pthread_mutex_unlock(&proc_lock);
	if (last)
		rpc_stream_unref(stream);
	return NULL;
}

static void on_close(void *arg, enum rpc_close_reason reason)
{
	struct proc_sub *sub = arg;
	struct rpc_stream *stream = sub->stream;
	int last;

	pthread_mutex_lock(&proc_lock);
	sub->closed = 1;
	/*
	 * Connect-Timeout-Ms on Start bounds the process's life: when the rpc
	 * layer ends the Start stream at that deadline, the process goes too.
	 * The output thread's own timer covers the case where this stream had
	 * already gone (a background command whose client disconnected).
	 */
	if (reason == RPC_CLOSE_DEADLINE && sub->starter && sub->proc->state == PROC_LIVE)
		proc_kill_group(sub->proc, SIGKILL);
	sub_detach(sub);
	pthread_cond_signal(&sub->cond);
	last = sub->refs == 1;
	sub_unref(sub);
	pthread_mutex_unlock(&proc_lock);
	if (last)
		rpc_stream_unref(stream);
}

/*
 * Hooks the subscriber to its stream and starts its sender. On failure the
 * subscriber is released and the caller fails the call (the layer then ends
 * the stream, which releases the close callback's reference).
 */
int proc_sub_run(struct proc_sub *sub, struct rpc_status *st)
{
	pthread_attr_t attr;
	pthread_t t;
	int r;

	rpc_stream_on_close(sub->stream, on_close, sub);

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	r = pthread_create(&t, &attr, sender_main, sub);
	pthread_attr_destroy(&attr);
	if (r == 0)
		return 0;

	struct rpc_stream *stream = sub->stream;
	int last;

	pthread_mutex_lock(&proc_lock);
	sub_detach(sub);
	last = sub->refs == 1;
	sub_unref(sub);
	pthread_mutex_unlock(&proc_lock);
	if (last)
		rpc_stream_unref(stream);
	return rpc_fail(st, RPC_INTERNAL, "starting a stream sender: %s", strerror(r));
}

/* ---- ending streams outside the lock ---- */

void proc_endlist_add(struct proc_endlist *l, struct rpc_stream *s)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 8;
		struct rpc_stream **v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return; /* retried on the next timer round */
		l->v = v;
		l->cap = cap;
	}
	rpc_stream_ref(s);
	l->v[l->n++] = s;
}

void proc_endlist_run(struct proc_endlist *l)
{
	for (size_t i = 0; i < l->n; i++) {
		rpc_stream_end(l->v[i], &l->st);
		rpc_stream_unref(l->v[i]);
	}
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}
