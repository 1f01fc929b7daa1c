/*
 * The agent's child reaper: the only code in the agent that calls wait*().
 *
 * main() blocks the signals in reaper_signals() before any thread starts, so
 * every thread inherits the mask and only the reaper thread (SIGCHLD) and
 * main (termination signals) ever take them, synchronously.
 */
#ifndef HUTCH_AGENT_REAPER_H
#define HUTCH_AGENT_REAPER_H

#include <signal.h>
#include <sys/types.h>

#include "err.h"

/* The signals the agent handles synchronously (blocked in every thread). */
void reaper_signals(sigset_t *set);

/*
 * For a child between fork and exec (async-signal-safe): unblocks every
 * signal and resets SIGPIPE, which the agent ignores, to its default, so the
 * command starts with a clean signal state. posix_spawn users get the same
 * with POSIX_SPAWN_SETSIGMASK (empty mask) and POSIX_SPAWN_SETSIGDEF
 * (SIGPIPE).
 */
void reaper_child_reset_signals(void);

/*
 * Becomes a child subreaper (so orphaned grandchildren come to us even when
 * the agent is not PID 1) and starts the reaper thread.
 */
int reaper_start(struct herr *err);
void reaper_stop(void);

/* Number of processes reaped so far (for logs and tests). */
unsigned long reaper_reaped_count(void);

#endif
