/*
 * Starting user processes for the process service, and the small pure
 * helpers around it: the environment a process gets, the executable it runs,
 * and the Go-style text of how it ended. Nothing here knows about RPC, so it
 * is unit-tested directly.
 */
#ifndef HUTCH_AGENT_PROCESS_SPAWN_H
#define HUTCH_AGENT_PROCESS_SPAWN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"
#include "users.h"

/* PATH given to processes when the agent itself has none. */
#define SPAWN_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Upper bound on the variables of one process environment. */
#define SPAWN_ENV_MAX 4096

enum spawn_stdin {
	SPAWN_STDIN_PIPE,    /* a pipe the agent writes to (SendInput) */
	SPAWN_STDIN_NULL,    /* /dev/null */
};

struct spawn_spec {
	const char *path;          /* executable to execve */
	char *const *argv;         /* NULL-terminated */
	char *const *envp;         /* NULL-terminated "KEY=VALUE" */
	const char *cwd;
	const struct agent_user *user;
	int switch_user;           /* setgroups/setgid/setuid to user (agent is root) */
	int pty;                   /* run on a new pseudo-terminal */
	unsigned short cols, rows; /* its size when pty */
	enum spawn_stdin stdin_mode; /* ignored when pty */
};

/* What the parent keeps of a started child. Every fd is O_CLOEXEC|O_NONBLOCK. */
struct spawn_child {
	pid_t pid;
	int in_fd;    /* stdin pipe write end, or a dup of the PTY master; -1 if none */
	int out_fd;   /* stdout pipe read end, or the PTY master */
	int err_fd;   /* stderr pipe read end; -1 for a PTY */
	int status_fd; /* read end of the exec status pipe, for spawn_finish */
};

/*
 * Forks the child, which sets itself up and execs spec->path. Returns as soon
 * as the child exists so that the caller can record its pid before anything
 * can reap it; spawn_finish then tells whether the exec worked. The child is
 * in a new session (its pid is its process group), has only fds 0-2, default
 * signal dispositions and an empty signal mask.
 */
int spawn_start(const struct spawn_spec *spec, struct spawn_child *child, struct herr *err);

/*
 * Waits until the child has exec'd (returns 0) or failed before exec (returns
 * a negative errno with err naming the step: "chdir '/x': Permission
 * denied"). A failed child exits with 127 and must still be reaped. Closes
 * child->status_fd.
 */
int spawn_finish(struct spawn_child *child, const struct spawn_spec *spec,
		 struct herr *err);

/* Closes the parent's fds of a child (those still open). */
void spawn_child_close(struct spawn_child *child);

/*
 * The environment of a new process: PATH (the agent's own, else the default),
 * HOME, USER and LOGNAME of the user, then base (sandbox-wide "KEY=VALUE"
 * entries), then the request's pairs; a later value of a name replaces an
 * earlier one in place. Names must be non-empty and free of '='. Returns a
 * NULL-terminated array to free with spawn_env_free.
 */
int spawn_env_build(const struct agent_user *user, char *const *base,
		    const char *const *keys, const char *const *values, size_t n,
		    char ***out, struct herr *err);
void spawn_env_free(char **env);

/* Value of name in a "KEY=VALUE" array, or NULL. */
const char *spawn_env_get(char *const *env, const char *name);

/*
 * The file to execve for cmd: cmd itself when it contains a '/', else the
 * first executable regular file named cmd in the directories of path_var.
 */
int spawn_find_executable(const char *cmd, const char *path_var, char *out, size_t cap,
			  struct herr *err);

/*
 * How a wait status reads in Go's os.ProcessState.String(), which the SDKs
 * show to users: "exit status 1", "signal: killed", "signal: aborted (core
 * dumped)".
 */
void spawn_status_text(int wait_status, char *out, size_t cap);

/* The exit code reported to clients: the exit status, or -1 when signalled. */
int spawn_exit_code(int wait_status);

#endif
