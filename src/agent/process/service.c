/*
 * The process.Process service (envd-compatible): Start and Connect streams,
 * List, SendInput, SendSignal, CloseStdin and Update. Semantics follow
 * protocol.md section 4.8; the process table and the output fan-out live in
 * table.c and stream.c, fork/exec in spawn.c.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "paths.h"
#include "proc_internal.h"
#include "process.h"
#include "spawn.h"
#include "state.h"

/* A SendInput whose process reads nothing for this long fails. */
#define STDIN_STALL_MS (30 * 1000)

/* ---- lookups ---- */

static int check_selector(const Process__ProcessSelector *sel, struct rpc_status *st)
{
	if (!sel || sel->selector_case == PROCESS__PROCESS_SELECTOR__SELECTOR__NOT_SET)
		return rpc_fail(st, RPC_INVALID_ARGUMENT,
				"process: a selector (pid or tag) is required");
	return 0;
}

static int not_found(const Process__ProcessSelector *sel, struct rpc_status *st)
{
	if (sel->selector_case == PROCESS__PROCESS_SELECTOR__SELECTOR_TAG)
		return rpc_fail(st, RPC_NOT_FOUND, "process with tag '%s' not found",
				sel->tag ? sel->tag : "");
	return rpc_fail(st, RPC_NOT_FOUND, "process with pid %u not found", sel->pid);
}

/* A live process by selector, referenced; release with put_proc. */
static struct proc *get_proc(const Process__ProcessSelector *sel, struct rpc_status *st)
{
	struct proc *p;

	if (check_selector(sel, st) < 0)
		return NULL;
	pthread_mutex_lock(&proc_lock);
	p = proc_find_live(sel);
	if (p)
		proc_ref(p);
	pthread_mutex_unlock(&proc_lock);
	if (!p)
		not_found(sel, st);
	return p;
}

static void put_proc(struct proc *p)
{
	pthread_mutex_lock(&proc_lock);
	proc_unref(p);
	pthread_mutex_unlock(&proc_lock);
}

/* ---- Start ---- */

/* Resolves the working directory by the path rules and checks it exists. */
static int resolve_cwd(struct rpc_ctx *ctx, const Process__ProcessConfig *cfg, char *out,
		       size_t cap, struct rpc_status *st)
{
	const char *want = cfg->_cwd_case == PROCESS__PROCESS_CONFIG___CWD_CWD && cfg->cwd
				   ? cfg->cwd : "";
	char workdir[PATH_MAX];
	struct herr err = { 0 };
	struct stat sb;

	state_default_workdir(workdir, sizeof(workdir));
	if (paths_resolve(&ctx->user, want, workdir, out, cap, &err) < 0)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err.msg);
	if (stat(out, &sb) < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return rpc_fail(st, RPC_INVALID_ARGUMENT, "cwd '%s' does not exist", out);
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "cwd '%s': %s", out, strerror(errno));
	}
	if (!S_ISDIR(sb.st_mode))
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "cwd '%s' is not a directory", out);
	return 0;
}

static int build_env(struct rpc_ctx *ctx, const Process__ProcessConfig *cfg, char ***env,
		     struct rpc_status *st)
{
	size_t n = cfg->n_envs;
	const char **keys = rpc_alloc(ctx, (n + 1) * sizeof(char *));
	const char **vals = rpc_alloc(ctx, (n + 1) * sizeof(char *));
	struct herr err = { 0 };
	char **base = state_env_copy();
	int r;

	for (size_t i = 0; i < n; i++) {
		keys[i] = cfg->envs[i]->key;
		vals[i] = cfg->envs[i]->value;
	}
	r = spawn_env_build(&ctx->user, base, keys, vals, n, env, &err);
	state_env_free(base);
	if (r < 0)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err.msg);
	return 0;
}

static char *dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

/* Copies the requested configuration (for List) and tag into the process. */
static int copy_config(struct proc *p, const Process__StartRequest *r)
{
	const Process__ProcessConfig *cfg = r->process;

	p->cmd = dup_or_empty(cfg->cmd);
	p->args = calloc(cfg->n_args + 1, sizeof(char *));
	p->env_keys = calloc(cfg->n_envs + 1, sizeof(char *));
	p->env_vals = calloc(cfg->n_envs + 1, sizeof(char *));
	if (!p->cmd || !p->args || !p->env_keys || !p->env_vals)
		return -ENOMEM;
	for (; p->nargs < cfg->n_args; p->nargs++) {
		p->args[p->nargs] = dup_or_empty(cfg->args[p->nargs]);
		if (!p->args[p->nargs])
			return -ENOMEM;
	}
	for (; p->nenvs < cfg->n_envs; p->nenvs++) {
		p->env_keys[p->nenvs] = dup_or_empty(cfg->envs[p->nenvs]->key);
		p->env_vals[p->nenvs] = dup_or_empty(cfg->envs[p->nenvs]->value);
		if (!p->env_keys[p->nenvs] || !p->env_vals[p->nenvs])
			return -ENOMEM;
	}
	if (cfg->_cwd_case == PROCESS__PROCESS_CONFIG___CWD_CWD &&
	    !(p->cwd = dup_or_empty(cfg->cwd)))
		return -ENOMEM;
	if (r->_tag_case == PROCESS__START_REQUEST___TAG_TAG && !(p->tag = dup_or_empty(r->tag)))
		return -ENOMEM;
	return 0;
}

static int pty_size(const Process__PTY *pty, unsigned short *cols, unsigned short *rows,
		    struct rpc_status *st)
{
	*cols = 80;
	*rows = 24;
	if (!pty || !pty->size)
		return 0;
	if (pty->size->cols > USHRT_MAX || pty->size->rows > USHRT_MAX)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "pty.size %ux%u is too large",
				pty->size->cols, pty->size->rows);
	if (pty->size->cols)
		*cols = (unsigned short)pty->size->cols;
	if (pty->size->rows)
		*rows = (unsigned short)pty->size->rows;
	return 0;
}

/* What Start prepares before forking; all of it lives in the call's arena. */
struct start_plan {
	struct spawn_spec spec;
	char cwd[PATH_MAX];
	char path[PATH_MAX];
	char **env;
};

static int plan_start(struct rpc_ctx *ctx, const Process__StartRequest *r,
		      struct start_plan *plan, struct rpc_status *st)
{
	const Process__ProcessConfig *cfg = r->process;
	struct spawn_spec *spec = &plan->spec;
	struct herr err = { 0 };
	char **argv;

	if (!cfg)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "process is required");
	if (!cfg->cmd || !*cfg->cmd)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "process.cmd is empty");
	if (r->pty && pty_size(r->pty, &spec->cols, &spec->rows, st) < 0)
		return -1;
	if (resolve_cwd(ctx, cfg, plan->cwd, sizeof(plan->cwd), st) < 0)
		return -1;
	if (build_env(ctx, cfg, &plan->env, st) < 0)
		return -1;
	if (spawn_find_executable(cfg->cmd, spawn_env_get(plan->env, "PATH"), plan->path,
				  sizeof(plan->path), &err) < 0)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err.msg);

	argv = rpc_alloc(ctx, (cfg->n_args + 2) * sizeof(char *));
	argv[0] = cfg->cmd;
	for (size_t i = 0; i < cfg->n_args; i++)
		argv[i + 1] = cfg->args[i] ? cfg->args[i] : "";
	argv[cfg->n_args + 1] = NULL;

	spec->path = plan->path;
	spec->argv = argv;
	spec->envp = plan->env;
	spec->cwd = plan->cwd;
	spec->user = &ctx->user;
	/* Not root (tests, development): the agent cannot switch and must not try. */
	spec->switch_user = geteuid() == 0;
	spec->pty = r->pty != NULL;
	spec->stdin_mode = r->_stdin_case == PROCESS__START_REQUEST___STDIN_STDIN && !r->stdin
				   ? SPAWN_STDIN_NULL : SPAWN_STDIN_PIPE;
	return 0;
}

/*
 * Forks with proc_lock held and records the pid before unlocking, so that
 * the reaper, which reports through process_child_exited under the same
 * lock, always finds the process, however fast it exits.
 */
static int fork_into_table(struct proc *p, const struct spawn_spec *spec,
			   struct spawn_child *child, struct herr *err)
{
	int r;

	pthread_mutex_lock(&proc_lock);
	r = spawn_start(spec, child, err);
	if (r == 0) {
		p->pid = child->pid;
		p->state = PROC_SPAWNING;
		proc_insert(p);
	}
	pthread_mutex_unlock(&proc_lock);
	return r;
}

static void adopt_fds(struct proc *p, struct spawn_child *child)
{
	p->pty = child->err_fd < 0;
	p->in_fd = steal_fd(&child->in_fd);
	p->out[0].fd = steal_fd(&child->out_fd);
	p->out[0].kind = p->pty ? PROC_OUT_PTY : PROC_OUT_STDOUT;
	p->out[1].fd = steal_fd(&child->err_fd);
	p->out[1].kind = PROC_OUT_STDERR;
}

static int start_fn(struct rpc_ctx *ctx, const ProtobufCMessage *req, struct rpc_stream *s,
		    struct rpc_status *st)
{
	const Process__StartRequest *r = (const Process__StartRequest *)req;
	struct start_plan *plan = rpc_alloc(ctx, sizeof(*plan));
	struct spawn_child child = {
		.pid = -1, .in_fd = -1, .out_fd = -1, .err_fd = -1, .status_fd = -1,
	};
	struct herr err = { 0 };
	struct proc_sub *sub;
	struct proc *p;
	int rc;

	memset(plan, 0, sizeof(*plan));
	if (plan_start(ctx, r, plan, st) < 0) {
		spawn_env_free(plan->env);
		return -1;
	}

	p = proc_new();
	if (!p || copy_config(p, r) < 0) {
		spawn_env_free(plan->env);
		if (p)
			put_proc(p);
		return rpc_fail(st, RPC_INTERNAL, "out of memory starting '%s'", r->process->cmd);
	}

	rc = fork_into_table(p, &plan->spec, &child, &err);
	if (rc == 0)
		rc = spawn_finish(&child, &plan->spec, &err);
	spawn_env_free(plan->env);

	pthread_mutex_lock(&proc_lock);
	if (rc < 0) {
		/* Failed before exec: the child still has to be reaped, then forgotten. */
		p->state = PROC_FAILED;
		if (p->reaped || child.pid < 0)
			proc_remove(p);
		proc_unref(p);
		pthread_mutex_unlock(&proc_lock);
		spawn_child_close(&child);
		log_info("process", NULL, "start of %s failed: %s", plan->path, err.msg);
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "%s", err.msg);
	}

	adopt_fds(p, &child);
	p->deadline_ms = ctx->deadline_ms;
	sub = proc_sub_new(p, s, 0, 1);
	if (sub)
		proc_sub_attach(sub);
	proc_make_live(p);
	proc_unref(p);
	pthread_mutex_unlock(&proc_lock);

	log_info("process", NULL, "started pid=%d cmd=%s user=%s pty=%d", (int)child.pid,
		 plan->path, ctx->user.name, plan->spec.pty);
	if (!sub)
		return rpc_fail(st, RPC_INTERNAL, "out of memory attaching to pid %d",
				(int)child.pid);
	return proc_sub_run(sub, st);
}

/* ---- Connect ---- */

static int connect_fn(struct rpc_ctx *ctx, const ProtobufCMessage *req, struct rpc_stream *s,
		      struct rpc_status *st)
{
	const Process__ConnectRequest *r = (const Process__ConnectRequest *)req;
	struct proc_sub *sub = NULL;
	struct proc *p;

	if (check_selector(r->process, st) < 0)
		return -1;

	pthread_mutex_lock(&proc_lock);
	p = proc_find_live(r->process);
	if (!p)
		p = proc_find_ended(r->process);
	if (p)
		sub = proc_sub_new(p, s, 1, 0);
	if (sub && p->state == PROC_ENDED)
		proc_sub_push(sub, PROC_ITEM_END, NULL); /* late: start + end, then done */
	else if (sub)
		proc_sub_attach(sub);
	pthread_mutex_unlock(&proc_lock);

	if (!p)
		return not_found(r->process, st);
	if (!sub)
		return rpc_fail(st, RPC_INTERNAL, "out of memory attaching to pid %d",
				(int)p->pid);
	return proc_sub_run(sub, st);
}

/* ---- List ---- */

static Process__ProcessInfo *list_entry(struct rpc_ctx *ctx, const struct proc *p)
{
	Process__ProcessInfo *info = rpc_alloc(ctx, sizeof(*info));
	Process__ProcessConfig *cfg = rpc_alloc(ctx, sizeof(*cfg));

	process__process_info__init(info);
	process__process_config__init(cfg);
	info->pid = (uint32_t)p->pid;
	info->config = cfg;
	if (p->tag) {
		info->_tag_case = PROCESS__PROCESS_INFO___TAG_TAG;
		info->tag = rpc_strdup(ctx, p->tag);
	}
	cfg->cmd = rpc_strdup(ctx, p->cmd);
	cfg->n_args = p->nargs;
	cfg->args = rpc_alloc(ctx, (p->nargs + 1) * sizeof(char *));
	for (size_t i = 0; i < p->nargs; i++)
		cfg->args[i] = rpc_strdup(ctx, p->args[i]);
	cfg->n_envs = p->nenvs;
	cfg->envs = rpc_alloc(ctx, (p->nenvs + 1) * sizeof(*cfg->envs));
	for (size_t i = 0; i < p->nenvs; i++) {
		Process__ProcessConfig__EnvsEntry *e = rpc_alloc(ctx, sizeof(*e));

		process__process_config__envs_entry__init(e);
		e->key = rpc_strdup(ctx, p->env_keys[i]);
		e->value = rpc_strdup(ctx, p->env_vals[i]);
		cfg->envs[i] = e;
	}
	if (p->cwd) {
		cfg->_cwd_case = PROCESS__PROCESS_CONFIG___CWD_CWD;
		cfg->cwd = rpc_strdup(ctx, p->cwd);
	}
	return info;
}

static int list_fn(struct rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp,
		   struct rpc_status *st)
{
	Process__ListResponse *out = (Process__ListResponse *)resp;
	size_t n = 0, i = 0;

	pthread_mutex_lock(&proc_lock);
	for (struct proc *p = proc_first(); p; p = p->next)
		n += p->state == PROC_LIVE;
	out->processes = rpc_alloc(ctx, (n + 1) * sizeof(*out->processes));
	for (struct proc *p = proc_first(); p && i < n; p = p->next) {
		if (p->state == PROC_LIVE)
			out->processes[i++] = list_entry(ctx, p);
	}
	out->n_processes = i;
	pthread_mutex_unlock(&proc_lock);
	return 0;
}

/* ---- SendInput ---- */

/*
 * Writes everything, waiting while the pipe or terminal is full. A process
 * that reads nothing for STDIN_STALL_MS fails the call rather than holding
 * an RPC thread forever; *written says how much got through before that, so
 * the error can tell the client what a retry must leave out.
 */
static int write_all(int fd, const uint8_t *d, size_t n, size_t *written)
{
	int64_t last = rpc_now_ms();

	*written = 0;
	while (n > 0) {
		ssize_t w = write(fd, d, n);

		if (w > 0) {
			d += w;
			n -= (size_t)w;
			*written += (size_t)w;
			last = rpc_now_ms();
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN)
			return -errno;
		if (rpc_now_ms() - last > STDIN_STALL_MS)
			return -ETIMEDOUT;
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };

		poll(&pfd, 1, 1000);
	}
	return 0;
}

static int send_input_fn(struct rpc_ctx *ctx, const ProtobufCMessage *req,
			 ProtobufCMessage *resp, struct rpc_status *st)
{
	const Process__SendInputRequest *r = (const Process__SendInputRequest *)req;
	const Process__ProcessInput *in = r->input;
	struct proc *p = get_proc(r->process, st);
	const ProtobufCBinaryData *data;
	int want_pty, rc = 0;
	size_t written = 0;

	if (!p)
		return -1;
	if (!in || in->input_case == PROCESS__PROCESS_INPUT__INPUT__NOT_SET) {
		put_proc(p);
		return rpc_fail(st, RPC_UNIMPLEMENTED, "input: neither stdin nor pty is set");
	}
	want_pty = in->input_case == PROCESS__PROCESS_INPUT__INPUT_PTY;
	data = want_pty ? &in->pty : &in->stdin;

	pthread_mutex_lock(&p->in_lock);
	if (want_pty != p->pty || p->in_fd < 0)
		rc = -EBADF;
	else
		rc = write_all(p->in_fd, data->data, data->len, &written);
	pthread_mutex_unlock(&p->in_lock);

	if (rc == -EBADF)
		rpc_fail(st, RPC_INTERNAL, "stdin not enabled or closed");
	else if (rc == -ETIMEDOUT && written == 0)
		rpc_fail(st, RPC_UNAVAILABLE, "pid %d read no input for %d s; nothing was "
			 "written, the input may be sent again", (int)p->pid,
			 STDIN_STALL_MS / 1000);
	else if (rc == -ETIMEDOUT)
		rpc_fail(st, RPC_ABORTED, "pid %d stopped reading its input for %d s; wrote "
			 "%zu of %zu bytes, resend only the remaining %zu", (int)p->pid,
			 STDIN_STALL_MS / 1000, written, data->len, data->len - written);
	else if (rc < 0)
		rpc_fail(st, RPC_INTERNAL, "writing input of pid %d: %s (wrote %zu of %zu "
			 "bytes)", (int)p->pid, strerror(-rc), written, data->len);
	put_proc(p);
	return rc < 0 ? -1 : 0;
}

/* ---- SendSignal ---- */

static int send_signal_fn(struct rpc_ctx *ctx, const ProtobufCMessage *req,
			  ProtobufCMessage *resp, struct rpc_status *st)
{
	const Process__SendSignalRequest *r = (const Process__SendSignalRequest *)req;
	struct proc *p;
	int sig;

	if (r->signal == PROCESS__SIGNAL__SIGNAL_SIGKILL)
		sig = SIGKILL;
	else if (r->signal == PROCESS__SIGNAL__SIGNAL_SIGTERM)
		sig = SIGTERM;
	else
		return rpc_fail(st, RPC_UNIMPLEMENTED,
				"signal %d is not supported (SIGKILL and SIGTERM are)",
				(int)r->signal);

	if (check_selector(r->process, st) < 0)
		return -1;
	pthread_mutex_lock(&proc_lock);
	p = proc_find_live(r->process);
	if (p)
		proc_kill_group(p, sig);
	pthread_mutex_unlock(&proc_lock);
	if (!p)
		return not_found(r->process, st);
	return 0;
}

/* ---- CloseStdin ---- */

static int close_stdin_fn(struct rpc_ctx *ctx, const ProtobufCMessage *req,
			  ProtobufCMessage *resp, struct rpc_status *st)
{
	const Process__CloseStdinRequest *r = (const Process__CloseStdinRequest *)req;
	struct proc *p = get_proc(r->process, st);

	if (!p)
		return -1;
	if (p->pty) {
		put_proc(p);
		return rpc_fail(st, RPC_UNKNOWN,
				"cannot close the stdin of a PTY process; send Ctrl+D (0x04) instead");
	}
	/* Closing our write end is what gives the process EOF; doing it twice is fine. */
	pthread_mutex_lock(&p->in_lock);
	if (p->in_fd >= 0) {
		close(p->in_fd);
		p->in_fd = -1;
	}
	pthread_mutex_unlock(&p->in_lock);
	put_proc(p);
	return 0;
}

/* ---- Update ---- */

static int resize_pty(struct proc *p, const Process__UpdateRequest *r, struct rpc_status *st)
{
	struct winsize ws = { 0 };
	int rc = 0;

	if (!p->pty)
		return rpc_fail(st, RPC_INTERNAL, "process with pid %d is not a PTY",
				(int)p->pid);
	if (!r->pty || !r->pty->size)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "pty.size is required");
	if (r->pty->size->cols > USHRT_MAX || r->pty->size->rows > USHRT_MAX)
		return rpc_fail(st, RPC_INVALID_ARGUMENT, "pty.size %ux%u is too large",
				r->pty->size->cols, r->pty->size->rows);
	ws.ws_col = (unsigned short)r->pty->size->cols;
	ws.ws_row = (unsigned short)r->pty->size->rows;

	/* The kernel signals SIGWINCH to the terminal's foreground group itself. */
	pthread_mutex_lock(&p->in_lock);
	if (p->in_fd < 0)
		rc = -EBADF;
	else if (ioctl(p->in_fd, TIOCSWINSZ, &ws) < 0)
		rc = -errno;
	pthread_mutex_unlock(&p->in_lock);
	if (rc < 0)
		return rpc_fail(st, RPC_INTERNAL, "resizing the terminal of pid %d: %s",
				(int)p->pid, strerror(-rc));
	return 0;
}

static int update_fn(struct rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage *resp,
		     struct rpc_status *st)
{
	const Process__UpdateRequest *r = (const Process__UpdateRequest *)req;
	struct proc *p = get_proc(r->process, st);
	int rc;

	if (!p)
		return -1;
	rc = resize_pty(p, r, st);
	put_proc(p);
	return rc;
}

/* ---- StreamInput ---- */

static int stream_input_fn(struct rpc_ctx *ctx, const ProtobufCMessage *req,
			   struct rpc_stream *s, struct rpc_status *st)
{
	return rpc_fail(st, RPC_UNIMPLEMENTED,
			"StreamInput is not supported by this agent; use SendInput");
}

/* ---- the method table ---- */

static Process__ProcessEvent__KeepAlive keepalive = PROCESS__PROCESS_EVENT__KEEP_ALIVE__INIT;
static Process__ProcessEvent keepalive_event = {
	.base = PROTOBUF_C_MESSAGE_INIT(&process__process_event__descriptor),
	.event_case = PROCESS__PROCESS_EVENT__EVENT_KEEPALIVE,
	.keepalive = &keepalive,
};
static Process__StartResponse start_keepalive = {
	.base = PROTOBUF_C_MESSAGE_INIT(&process__start_response__descriptor),
	.event = &keepalive_event,
};
static Process__ConnectResponse connect_keepalive = {
	.base = PROTOBUF_C_MESSAGE_INIT(&process__connect_response__descriptor),
	.event = &keepalive_event,
};

#define UNARY(name, in, out, fn) \
	{ "/process.Process/" name, &in##__descriptor, &out##__descriptor, fn, NULL, NULL }

const struct rpc_method process_methods[] = {
	{ "/process.Process/Start", &process__start_request__descriptor,
	  &process__start_response__descriptor, NULL, start_fn, &start_keepalive.base },
	{ "/process.Process/Connect", &process__connect_request__descriptor,
	  &process__connect_response__descriptor, NULL, connect_fn, &connect_keepalive.base },
	UNARY("List", process__list_request, process__list_response, list_fn),
	UNARY("SendInput", process__send_input_request, process__send_input_response,
	      send_input_fn),
	UNARY("SendSignal", process__send_signal_request, process__send_signal_response,
	      send_signal_fn),
	UNARY("CloseStdin", process__close_stdin_request, process__close_stdin_response,
	      close_stdin_fn),
	UNARY("Update", process__update_request, process__update_response, update_fn),
	{ "/process.Process/StreamInput", &process__stream_input_request__descriptor,
	  &process__stream_input_response__descriptor, NULL, stream_input_fn, NULL },
	{ 0 },
};

int process_service_init(void)
{
	struct sigaction old;

	/*
	 * Writing to the stdin of a process that has exited raises SIGPIPE;
	 * the agent must get EPIPE instead of dying. Children get default
	 * dispositions back in spawn.c.
	 */
	if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
		signal(SIGPIPE, SIG_IGN);
	return proc_output_start();
}
