/*
 * Shared state of the process service: the table of processes, the clients
 * attached to each one, and the output thread. One mutex (proc_lock) guards
 * the table, every process's fields except its stdin, and every subscriber
 * queue. Nobody calls an rpc_stream_* function while holding it, so a
 * stream's close callback may take it.
 */
#ifndef HUTCH_AGENT_PROCESS_INTERNAL_H
#define HUTCH_AGENT_PROCESS_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "process/process.pb-c.h"
#include "rpc.h"

/* Output is read in chunks of at most these sizes (as envd does). */
#define PROC_PIPE_CHUNK (32 * 1024)
#define PROC_PTY_CHUNK (16 * 1024)

/*
 * Per-subscriber queue bounds. Above the high mark the process's output is
 * no longer read (the kernel pipe fills and the process blocks on write, as
 * if it wrote to a slow terminal); below the low mark reading resumes.
 */
#define PROC_QUEUE_HIGH (128 * 1024)
#define PROC_QUEUE_LOW (32 * 1024)

/* A subscriber over the high mark that sends nothing for this long is dropped. */
#define PROC_STALL_MS (30 * 1000)

/* How long the end of a finished process stays available to Connect. */
#define PROC_RETAIN_MS (30 * 1000)
#define PROC_RETAIN_MAX 1024

enum proc_state {
	PROC_SPAWNING,  /* forked, exec not confirmed yet; invisible */
	PROC_FAILED,    /* exec failed; waits only to be reaped */
	PROC_LIVE,
	PROC_ENDED,     /* end event known; retained for late Connect */
};

enum proc_out_kind { PROC_OUT_STDOUT, PROC_OUT_STDERR, PROC_OUT_PTY };

struct proc;

struct proc_output {
	struct proc *proc;
	int fd;            /* -1 once EOF was read and it is closed */
	enum proc_out_kind kind;
	int registered;    /* in the output thread's epoll set */
};

/* One chunk of output, shared by every subscriber it was queued to. */
struct proc_chunk {
	int refs;
	enum proc_out_kind kind;
	size_t len;
	uint8_t data[];
};

enum proc_item_type { PROC_ITEM_START, PROC_ITEM_DATA, PROC_ITEM_END };

struct proc_item {
	struct proc_item *next;
	enum proc_item_type type;
	struct proc_chunk *chunk; /* PROC_ITEM_DATA */
};

/* A stream attached to a process (Start's own, or a Connect). */
struct proc_sub {
	struct proc_sub *next;      /* in proc->subs */
	int refs;                   /* sender thread + close callback */
	struct proc *proc;          /* referenced */
	struct rpc_stream *stream;  /* referenced */
	int connect;                /* sends ConnectResponse, not StartResponse */
	int starter;                /* the Start call that created the process */
	int attached;               /* in proc->subs, receives output */
	int closed;                 /* the stream's close callback ran */
	struct proc_item *head, *tail;
	size_t queued;              /* bytes of data queued */
	int64_t last_progress_ms;   /* last completed send */
	pthread_cond_t cond;
};

struct proc_end {
	int32_t exit_code;
	int exited;
	char status[96];
	int has_error;
};

struct proc {
	struct proc *next;
	int refs;
	enum proc_state state;
	pid_t pid;

	/* The configuration as requested, echoed by List. */
	char *cmd;
	char **args;
	size_t nargs;
	char **env_keys, **env_vals;
	size_t nenvs;
	char *cwd;              /* NULL when the request had none */
	char *tag;              /* NULL when none */

	int pty;
	struct proc_output out[2];
	int nopen;              /* outputs not yet at EOF */
	int paused;             /* outputs taken out of epoll: a subscriber is full */

	/* Input: its own lock, since a write may wait for the process to read. */
	pthread_mutex_t in_lock;
	int in_fd;

	int reaped;
	int wait_status;
	int64_t deadline_ms;    /* Start's deadline: process lifetime; 0 = none */
	int deadline_hit;
	int64_t expires_ms;     /* when ENDED: forget after this */
	struct proc_end end;

	struct proc_sub *subs;
};

extern pthread_mutex_t proc_lock;

/* table.c (all with proc_lock held unless stated) */
struct proc *proc_new(void);                   /* refs = 1 */
void proc_ref(struct proc *p);
void proc_unref(struct proc *p);               /* frees at 0 */
void proc_insert(struct proc *p);              /* the table takes a reference */
void proc_remove(struct proc *p);              /* drops the table's reference */
struct proc *proc_find_live(const Process__ProcessSelector *sel);
struct proc *proc_find_ended(const Process__ProcessSelector *sel);
struct proc *proc_first(void);
void proc_make_live(struct proc *p);           /* registers outputs, checks end */
void proc_output_closed(struct proc_output *o);
void proc_pause(struct proc *p);
void proc_maybe_resume(struct proc *p);
void proc_kill_group(struct proc *p, int sig);
void proc_wake_output(void);                   /* lock not needed */
int proc_output_start(void);                   /* lock not held */

/* stream.c */
struct proc_sub *proc_sub_new(struct proc *p, struct rpc_stream *s, int connect,
			      int starter);
int proc_sub_run(struct proc_sub *sub, struct rpc_status *st); /* lock not held */
void proc_sub_attach(struct proc_sub *sub);
void proc_sub_push(struct proc_sub *sub, enum proc_item_type type,
		   struct proc_chunk *chunk);
void proc_chunk_unref(struct proc_chunk *c);
void proc_fanout(struct proc *p, struct proc_chunk *c);
void proc_finish_subs(struct proc *p);

/*
 * Ends streams outside proc_lock. Collect with proc_endlist_add (takes a
 * stream reference) under the lock, then call proc_endlist_run without it.
 */
struct proc_endlist {
	struct rpc_stream **v;
	size_t n, cap;
	struct rpc_status st;
};
void proc_endlist_add(struct proc_endlist *l, struct rpc_stream *s);
void proc_endlist_run(struct proc_endlist *l);

#endif
