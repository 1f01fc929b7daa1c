/* The process.Process service: processes by pid and tag, PTYs, stdin, signals. */
#ifndef HUTCH_AGENT_PROCESS_H
#define HUTCH_AGENT_PROCESS_H

#include <sys/types.h>

/* Starts the service's threads; call once before serving. */
int process_service_init(void);

/*
 * The agent's reaper calls this for every child it reaps (it is the only
 * caller of wait*()). Returns 1 when pid was a process of the service.
 */
int process_child_exited(pid_t pid, int wait_status);

#endif
