/*
 * The runtime's front: the sandbox table, create/stop/destroy/query, the exit
 * monitor thread, rt_dial, and re-adoption of running sandboxes at start.
 *
 * Every sandbox has a slot (0..max_sandboxes-1) that fixes its host id range;
 * the slot is stored in the sandbox's state file so that a restarted hutchd
 * finds the same ranges in use. Network slots are separate (pooled ahead).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "rt_internal.h"

static int pidfd_open_checked(pid_t pid, unsigned long long start)
{
	if (pid <= 0)
		return -1;
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0)
		return -1;
	/* A pid can be reused; the start time tells whether it is still ours. */
	if (start && rt_proc_starttime(pid) != start) {
		close(fd);
		return -1;
	}
	return fd;
}

const char *rt_exit_reason_name(enum rt_exit_reason reason)
{
	static const char *const names[] = { "none", "exited", "killed", "oom", "limit",
					     "error", "signal" };
	return (unsigned)reason < sizeof(names) / sizeof(names[0]) ? names[reason] :
	       "unknown";
}

const char *rt_state_name(enum rt_state state)
{
	static const char *const names[] = { "starting", "running", "frozen", "stopped" };
	return (unsigned)state < 4 ? names[state] : "unknown";
}

int rt_cidr_parse(const char *text, struct rt_cidr *out, struct herr *err)
{
	char buf[32];
	const char *slash = strchr(text, '/');
	size_t alen = slash ? (size_t)(slash - text) : strlen(text);
	struct in_addr a;
	long prefix = 32;

	if (alen == 0 || alen >= sizeof(buf))
		return herr_set(err, -EINVAL, "invalid CIDR '%.40s'", text);
	memcpy(buf, text, alen);
	buf[alen] = '\0';
	if (inet_pton(AF_INET, buf, &a) != 1)
		return herr_set(err, -EINVAL, "invalid CIDR '%.40s'", text);
	if (slash) {
		char *end;
		errno = 0;
		prefix = strtol(slash + 1, &end, 10);
		/* strtol would also take " 8" or "+8": digits only */
		if (slash[1] < '0' || slash[1] > '9' || errno || *end || prefix > 32)
			return herr_set(err, -EINVAL, "invalid prefix in '%.40s'", text);
	}
	uint32_t addr = ntohl(a.s_addr);
	uint32_t mask = prefix ? ~0u << (32 - prefix) : 0;
	if (addr & ~mask)
		return herr_set(err, -EINVAL, "host bits set in '%.40s'", text);
	out->addr = addr;
	out->prefix = (uint8_t)prefix;
	return 0;
}

/* ---------- table ---------- */

static struct rt_sandbox *find_locked(struct rt *rt, const char *id)
{
	for (unsigned i = 0; i < rt->max_sandboxes; i++)
		if (rt->by_slot[i] && strcmp(rt->by_slot[i]->id, id) == 0)
			return rt->by_slot[i];
	return NULL;
}

static void mon_watch(struct rt *rt, struct rt_sandbox *s)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = s->slot };

	if (s->keeper_pidfd >= 0)
		epoll_ctl(rt->mon_epfd, EPOLL_CTL_ADD, s->keeper_pidfd, &ev);
	else if (s->init_pidfd >= 0)
		epoll_ctl(rt->mon_epfd, EPOLL_CTL_ADD, s->init_pidfd, &ev);
}

static void mon_unwatch(struct rt *rt, struct rt_sandbox *s)
{
	if (s->keeper_pidfd >= 0)
		epoll_ctl(rt->mon_epfd, EPOLL_CTL_DEL, s->keeper_pidfd, NULL);
	if (s->init_pidfd >= 0)
		epoll_ctl(rt->mon_epfd, EPOLL_CTL_DEL, s->init_pidfd, NULL);
}

static void close_pidfds(struct rt_sandbox *s)
{
	if (s->keeper_pidfd >= 0)
		close(s->keeper_pidfd);
	if (s->init_pidfd >= 0)
		close(s->init_pidfd);
	s->keeper_pidfd = s->init_pidfd = -1;
}

/* Forks the pids limit refused since the create. */
static uint64_t pids_refused(struct rt *rt, const struct rt_sandbox *s)
{
	uint64_t now = rt_cg_pids_refused(rt, s->id);

	return now > s->pids_base ? now - s->pids_base : 0;
}

/* An init that exited by itself: with a failure after refused forks, the
 * pids limit is named (see RT_EXIT_LIMIT); otherwise just its status. */
static void settle_exited(struct rt_info *in, int status)
{
	in->exit_status = status;
	in->reason = status != 0 && in->pids_refused ? RT_EXIT_LIMIT : RT_EXIT_EXITED;
	if (in->reason == RT_EXIT_LIMIT)
		snprintf(in->message, sizeof(in->message), "exited with status %d after the "
			 "pids limit refused %" PRIu64 " forks", status, in->pids_refused);
}

/*
 * A signal death: ours (a stop), the OOM killer's, or anyone else's. Only
 * SIGKILL can be the OOM killer's, and a pid namespace's init cannot get
 * SIGKILL from inside its namespace, so SIGKILL plus a risen OOM-kill
 * count is the kernel's doing. Any other signal is a crash of the init
 * (or a signal from the host), whatever limits were hit around it.
 */
static void settle_signaled(struct rt *rt, struct rt_sandbox *s, struct rt_info *in,
			    int sig)
{
	in->exit_signal = sig;
	if (s->stop_requested)
		in->reason = RT_EXIT_KILLED;
	else if (sig == SIGKILL && rt_cg_oom_kills(rt, s->id) > s->oom_base)
		in->reason = RT_EXIT_OOM;
	else
		in->reason = RT_EXIT_SIGNAL;
}

/* Works out how the init ended, from the keeper's record and the cgroup. */
static void settle_exit(struct rt *rt, struct rt_sandbox *s)
{
	struct rt_info *in = &s->last;
	int wstatus;

	rt_cg_stats(rt, s->id, in);
	in->pids_refused = pids_refused(rt, s);
	in->state = RT_STATE_STOPPED;
	in->pid = 0;
	if (rt_state_exit_read(rt, s->id, &wstatus) < 0) {
		in->reason = s->stop_requested ? RT_EXIT_KILLED : RT_EXIT_ERROR;
		if (!s->stop_requested)
			snprintf(in->message, sizeof(in->message),
				 "the sandbox keeper ended without recording an exit");
	} else if (s->stop_requested && !WIFSIGNALED(wstatus)) {
		/* An init that exits cleanly on our SIGTERM was still stopped by us. */
		in->reason = RT_EXIT_KILLED;
		in->exit_status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 0;
	} else if (WIFEXITED(wstatus)) {
		settle_exited(in, WEXITSTATUS(wstatus));
	} else {
		settle_signaled(rt, s, in, WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0);
	}
	s->state = RT_STATE_STOPPED;
	/* Our own child keepers are reaped here; adopted ones by their parent. */
	if (s->keeper_pid > 0)
		waitpid(s->keeper_pid, NULL, WNOHANG);
}

static void *mon_main(void *arg)
{
	struct rt *rt = arg;
	struct epoll_event evs[16];

	for (;;) {
		int n = epoll_wait(rt->mon_epfd, evs, 16, -1);
		if (n < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u64 == UINT64_MAX)
				return NULL; /* shutdown */
			unsigned slot = (unsigned)evs[i].data.u64;
			struct rt_info info;
			char id[RT_ID_MAX + 1];
			bool notify = false;

			pthread_mutex_lock(&rt->lock);
			struct rt_sandbox *s = slot < rt->max_sandboxes ? rt->by_slot[slot] : NULL;
			if (s && s->state != RT_STATE_STOPPED) {
				mon_unwatch(rt, s);
				settle_exit(rt, s);
				info = s->last;
				snprintf(id, sizeof(id), "%s", s->id);
				notify = !s->destroying;
			} else if (s) {
				mon_unwatch(rt, s);
			}
			rt_exit_fn fn = rt->exit_fn;
			void *fn_arg = rt->exit_arg;
			pthread_mutex_unlock(&rt->lock);
			if (notify) {
				log_info("runtime", id,
					 "sandbox ended reason=%s status=%d signal=%d",
					 rt_exit_reason_name(info.reason), info.exit_status,
					 info.exit_signal);
				if (fn)
					fn(fn_arg, id, &info);
			}
		}
	}
}

/* ---------- teardown ---------- */

static void wait_gone(int pidfd, unsigned ms)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };

	if (pidfd >= 0)
		poll(&p, 1, (int)ms);
}

/* Kills everything in the sandbox and waits for its keeper to finish. */
static void kill_all(struct rt *rt, struct rt_sandbox *s)
{
	s->stop_requested = true;
	rt_cg_kill(rt, s->id, s->init_pidfd >= 0 ? s->init_pid : 0);
	if (s->init_pidfd >= 0)
		syscall(SYS_pidfd_send_signal, s->init_pidfd, SIGKILL, NULL, 0);
	wait_gone(s->init_pidfd, 5000);
	wait_gone(s->keeper_pidfd, 5000);
}

/* The sandbox's disk, its init log and its data folder; the disk's error. */
static int remove_disk_files(struct rt *rt, const char *id, struct herr *err)
{
	char path[4096];
	int r = rt_disk_remove(rt, id, err);

	snprintf(path, sizeof(path), "%s/sandboxes/%s/init.log", rt->data_dir, id);
	unlink(path);
	snprintf(path, sizeof(path), "%s/sandboxes/%s", rt->data_dir, id);
	rmdir(path);
	return r;
}

/* Removes what the sandbox holds on the host, its state files included; the
 * disk only when asked. */
static int release_all(struct rt *rt, struct rt_sandbox *s, bool remove_disk,
		       struct herr *err)
{
	int r = 0;

	if (rt->nft_ok && s->net.host_if[0])
		r = rt_nft_sandbox_del(rt, &s->net, err);
	rt_net_release(rt, &s->net);
	int r2 = rt_cg_destroy(rt, s->id, err);
	if (r2 < 0)
		r = r2;
	if (remove_disk)
		remove_disk_files(rt, s->id, NULL);
	/* Without its state file a restart no longer knows the sandbox, so a
	 * kept disk is left alone until rt_create reuses it or rt_upper_remove. */
	rt_state_remove(rt, s->id);
	return r;
}

static void free_sandbox(struct rt_sandbox *s)
{
	close_pidfds(s);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* ---------- create ---------- */

static int check_spec(const struct rt_spec *spec, struct herr *err)
{
	if (!rt_id_valid(spec->id))
		return herr_set(err, -EINVAL, "id: must be 1-%d of [A-Za-z0-9_-]", RT_ID_MAX);
	if (spec->n_layers == 0 || spec->n_layers > RT_MAX_LAYERS || !spec->layers)
		return herr_set(err, -EINVAL, "layers: need 1-%d", RT_MAX_LAYERS);
	if (!spec->agent_dir || spec->agent_dir[0] != '/')
		return herr_set(err, -EINVAL, "agent_dir: must be an absolute path");
	if (!spec->argv || !spec->argv[0] || spec->argv[0][0] != '/')
		return herr_set(err, -EINVAL, "argv[0]: must be an absolute path");
	for (size_t i = 0; i < spec->n_layers; i++)
		if (!spec->layers[i] || spec->layers[i][0] != '/')
			return herr_set(err, -EINVAL, "layers[%zu]: must be an absolute path", i);
	if (spec->hostname && (strlen(spec->hostname) == 0 || strlen(spec->hostname) > 63))
		return herr_set(err, -EINVAL, "hostname: 1-63 characters");
	if (spec->net.n_allow_out > RT_MAX_CIDRS || spec->net.n_deny_out > RT_MAX_CIDRS)
		return herr_set(err, -EINVAL, "network: at most %d CIDRs per list", RT_MAX_CIDRS);
	return 0;
}

static int reserve_slot(struct rt *rt, const struct rt_spec *spec, struct rt_sandbox **out,
			struct herr *err)
{
	struct rt_sandbox *s = calloc(1, sizeof(*s));

	if (!s)
		return herr_set(err, -ENOMEM, "out of memory");
	snprintf(s->id, sizeof(s->id), "%s", spec->id);
	s->keeper_pidfd = s->init_pidfd = -1;
	s->net.fd = -1;
	s->state = RT_STATE_STARTING;
	pthread_mutex_init(&s->lock, NULL);

	pthread_mutex_lock(&rt->lock);
	int r = 0;
	if (find_locked(rt, spec->id)) {
		r = herr_set(err, -EEXIST, "sandbox %s already exists", spec->id);
	} else {
		unsigned i;
		for (i = 0; i < rt->max_sandboxes && rt->by_slot[i]; i++)
			;
		if (i == rt->max_sandboxes) {
			r = herr_set(err, -ENOSPC, "all %u sandbox slots in use",
				     rt->max_sandboxes);
		} else {
			s->slot = i;
			s->uid_base = rt->uid_base + i * RT_IDS_PER_SANDBOX;
			rt->by_slot[i] = s;
		}
	}
	pthread_mutex_unlock(&rt->lock);
	if (r < 0) {
		free_sandbox(s);
		return r;
	}
	*out = s;
	return 0;
}

static void drop_slot(struct rt *rt, struct rt_sandbox *s)
{
	pthread_mutex_lock(&rt->lock);
	mon_unwatch(rt, s);
	if (rt->by_slot[s->slot] == s)
		rt->by_slot[s->slot] = NULL;
	pthread_mutex_unlock(&rt->lock);
	free_sandbox(s);
}

/* What prepare_host_side hands to rt_spawn: prepared-pool objects. */
struct host_prep {
	int disk_fd;               /* mounted disk from the pool, or -1 */
	bool has_zygote;
	struct rt_zygote zygote;   /* pooled keeper already in the cgroups */
};

static void host_prep_drop(struct host_prep *hp)
{
	if (hp->has_zygote)
		rt_zygote_stop(&hp->zygote);
	hp->has_zygote = false;
	if (hp->disk_fd >= 0)
		close(hp->disk_fd);
	hp->disk_fd = -1;
}

static void new_disk_path(struct rt *rt, const char *id, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s/%s", rt->run_dir, id, RT_NEW_DISK);
}

/*
 * A create that makes the sandbox's disk marks its run dir first, before
 * the disk exists. The start-up cleanup of a create a crash cut short (no
 * state file yet, or no init) removes a disk only with that mark: without
 * it the disk is one the create did not make (a paused sandbox's it was
 * resuming, a fork's copy), and must stay. A mark that must be present to
 * delete, rather than one that must be present to keep, leaves no moment
 * in which a kept disk is unprotected: not between the run dir's mkdir and
 * the mark, nor when a run dir outlives its state file (a leftover netns
 * pin in a run dir that is not on tmpfs keeps rmdir from removing it).
 */
static int mark_new_disk(struct rt *rt, const char *id, struct herr *err)
{
	char path[4096];

	new_disk_path(rt, id, path, sizeof(path));
	return rt_write_file(path, "", err);
}

static bool disk_was_made(struct rt *rt, const char *id)
{
	char path[4096];

	new_disk_path(rt, id, path, sizeof(path));
	return access(path, F_OK) == 0;
}

static int prepare_host_side(struct rt *rt, struct rt_sandbox *s, const struct rt_spec *spec,
			     struct host_prep *hp, struct rt_marks *marks, struct herr *err)
{
	char path[4096];
	int r;

	snprintf(path, sizeof(path), "%s/%s", rt->run_dir, s->id);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "mkdir %s", path);
	if (!spec->reuse_upper && (r = mark_new_disk(rt, s->id, err)) < 0)
		return r;
	snprintf(path, sizeof(path), "%s/sandboxes/%s", rt->data_dir, s->id);
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "mkdir %s", path);
	rt_mark(marks, RT_M_DIRS);

	r = rt_disk_create(rt, s->id, spec->limits.disk_mb, spec->reuse_upper, &hp->disk_fd,
			   err);
	if (r < 0)
		return r;
	rt_mark(marks, RT_M_DISK);
	r = rt_prep_take_zygote(rt, s->id, &spec->limits, &hp->zygote, err);
	hp->has_zygote = r == 0;
	if (r == -ENOENT)
		r = rt_cg_create(rt, s->id, &spec->limits, err);
	if (r < 0)
		return r;
	s->oom_base = rt_cg_oom_kills(rt, s->id);
	s->pids_base = rt_cg_pids_refused(rt, s->id);
	rt_mark(marks, RT_M_CGROUP);
	r = rt_net_take(rt, &s->net, err);
	if (r < 0)
		return r;
	rt_mark(marks, RT_M_NET);
	if (rt->nft_ok) {
		r = rt_nft_sandbox_add(rt, &s->net, &spec->net, err);
		if (r < 0)
			return r;
	}
	rt_mark(marks, RT_M_NFT);
	/* Intent first: a crash from here on leaves a state file to clean up. */
	r = rt_state_write(rt, s, err);
	rt_mark(marks, RT_M_STATE);
	return r;
}

/* One debug line with the time between consecutive marks, in µs. */
static void log_marks(const char *id, const struct rt_marks *m)
{
	char text[1024];
	size_t off = 0;

	if (!log_enabled("runtime", LOG_DEBUG))
		return;
	for (int i = 1; i < RT_M_COUNT && off < sizeof(text); i++) {
		uint64_t from = m->ns[rt_mark_from((enum rt_mark)i)];
		if (!m->ns[i] || !from || m->ns[i] < from)
			continue;
		off += (size_t)snprintf(text + off, sizeof(text) - off, " %s=%" PRIu64,
					rt_mark_name((enum rt_mark)i),
					(m->ns[i] - from) / 1000);
	}
	log_debug("runtime", id, "create steps (us):%s", text);
}

void rt_last_marks(struct rt *rt, struct rt_marks *out)
{
	pthread_mutex_lock(&rt->lock);
	*out = rt->last_marks;
	pthread_mutex_unlock(&rt->lock);
}

/*
 * The page of create marks shared with the keeper and the init (until its
 * execve): a memfd, so that a keeper forked ahead can map it too. NULL when
 * it cannot be had; the marks only time the steps for the debug log.
 */
static struct rt_marks *marks_map(int fd)
{
	void *m;

	if (fd < 0 || ftruncate(fd, sizeof(struct rt_marks)) < 0)
		return NULL;
	m = mmap(NULL, sizeof(struct rt_marks), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	return m == MAP_FAILED ? NULL : m;
}

static void marks_unmapp(struct rt_marks **m)
{
	if (*m)
		munmap(*m, sizeof(**m));
}

/* Undoes what a failed create made after taking its slot; s is locked and
 * is gone on return. */
static void undo_create(struct rt *rt, struct rt_sandbox *s, const struct rt_spec *spec,
			struct host_prep *hp, struct herr *err)
{
	/* An unused pooled keeper leaves the cgroups before they go. */
	host_prep_drop(hp);
	log_warn("runtime", s->id, "create failed: %s", err ? err->msg : "");
	s->stop_requested = true;
	rt_cg_kill(rt, s->id, 0);
	release_all(rt, s, !spec->reuse_upper, NULL);
	pthread_mutex_unlock(&s->lock);
	drop_slot(rt, s);
}

/* Records a started sandbox and hands it to the exit monitor; unlocks s. */
static void finish_create(struct rt *rt, struct rt_sandbox *s, const struct rt_spec *spec,
			  const struct rt_spawn_result *res, struct rt_marks *marks)
{
	s->keeper_pid = res->keeper_pid;
	s->init_pid = res->init_pid;
	s->init_start = rt_proc_starttime(res->init_pid);
	s->keeper_pidfd = pidfd_open_checked(res->keeper_pid, 0);
	s->init_pidfd = pidfd_open_checked(res->init_pid, 0);
	rt_state_write(rt, s, NULL);
	rt_mark(marks, RT_M_DONE);

	pthread_mutex_lock(&rt->lock);
	s->state = RT_STATE_RUNNING;
	mon_watch(rt, s);
	if (marks)
		rt->last_marks = *marks;
	pthread_mutex_unlock(&rt->lock);
	pthread_mutex_unlock(&s->lock);
	log_info("runtime", s->id, "sandbox started pid=%d slot=%u if=%s", s->init_pid,
		 s->slot, s->net.host_if);
	if (marks)
		log_marks(spec->id, marks);
	if (res->leave_fd >= 0)
		rt_prep_keeper_leave(rt, res->leave_fd);
}

/* Takes a slot, prepares the host side and spawns the keeper and init. */
static int create_in_slot(struct rt *rt, const struct rt_spec *spec, struct rt_marks *marks,
			  int marks_fd, struct herr *err)
{
	struct rt_sandbox *s = NULL;
	struct rt_spawn_result res = { .marks = marks, .marks_fd = marks ? marks_fd : -1,
				       .leave_fd = -1 };
	struct host_prep hp = { .disk_fd = -1 };
	int r = reserve_slot(rt, spec, &s, err);

	if (r < 0)
		return r;
	pthread_mutex_lock(&s->lock);
	r = prepare_host_side(rt, s, spec, &hp, marks, err);
	res.disk_fd = hp.disk_fd;
	res.zygote = hp.has_zygote ? &hp.zygote : NULL;
	if (r == 0) {
		hp.disk_fd = -1;
		r = rt_spawn(rt, s, spec, &res, err);
		/* rt_spawn used the pooled keeper, or let it go on failure */
		hp.has_zygote = false;
	}
	if (r < 0) {
		undo_create(rt, s, spec, &hp, err);
		return r;
	}
	finish_create(rt, s, spec, &res, marks);
	return r;
}

int rt_create(struct rt *rt, const struct rt_spec *spec, struct herr *err)
{
	int r = check_spec(spec, err);

	if (r < 0)
		return r;
	_cleanup_close_ int marks_fd = memfd_create("hutch-marks", MFD_CLOEXEC);
	_cleanup_(marks_unmapp) struct rt_marks *marks = marks_map(marks_fd);

	rt_mark(marks, RT_M_START);
	rt_prep_create_begin(rt);
	r = create_in_slot(rt, spec, marks, marks_fd, err);
	rt_prep_create_end(rt);
	return r;
}

/* ---------- lookups ---------- */

/* Finds a sandbox and locks it; the table lock is not held on return. */
static struct rt_sandbox *get_locked(struct rt *rt, const char *id, struct herr *err)
{
	pthread_mutex_lock(&rt->lock);
	struct rt_sandbox *s = id ? find_locked(rt, id) : NULL;
	if (!s || s->destroying) {
		pthread_mutex_unlock(&rt->lock);
		herr_set(err, -ENOENT, "no sandbox '%.64s'", id ? id : "");
		return NULL;
	}
	pthread_mutex_unlock(&rt->lock);
	pthread_mutex_lock(&s->lock);
	return s;
}

int rt_stop(struct rt *rt, const char *id, unsigned grace_ms, struct herr *err)
{
	struct rt_sandbox *s = get_locked(rt, id, err);

	if (!s)
		return -ENOENT;
	if (s->state != RT_STATE_STOPPED && s->init_pidfd >= 0) {
		s->stop_requested = true;
		if (grace_ms) {
			rt_cg_freeze(rt, s->id, false, NULL);
			syscall(SYS_pidfd_send_signal, s->init_pidfd, SIGTERM, NULL, 0);
			wait_gone(s->init_pidfd, grace_ms);
		}
		kill_all(rt, s);
		pthread_mutex_lock(&rt->lock);
		if (s->state != RT_STATE_STOPPED) {
			mon_unwatch(rt, s);
			settle_exit(rt, s);
		}
		pthread_mutex_unlock(&rt->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static int destroy(struct rt *rt, const char *id, bool keep_upper, struct herr *err)
{
	struct rt_sandbox *s = get_locked(rt, id, err);
	int r;

	if (!s)
		return -ENOENT;
	pthread_mutex_lock(&rt->lock);
	s->destroying = true;
	pthread_mutex_unlock(&rt->lock);

	kill_all(rt, s);
	pthread_mutex_lock(&rt->lock);
	mon_unwatch(rt, s);
	pthread_mutex_unlock(&rt->lock);
	if (s->keeper_pid > 0)
		waitpid(s->keeper_pid, NULL, WNOHANG);
	r = release_all(rt, s, !keep_upper, err);
	log_info("runtime", s->id, keep_upper ? "sandbox released, writable layer kept" :
		 "sandbox destroyed");
	pthread_mutex_unlock(&s->lock);
	drop_slot(rt, s);
	return r;
}

int rt_destroy(struct rt *rt, const char *id, struct herr *err)
{
	return destroy(rt, id, false, err);
}

int rt_destroy_keep_upper(struct rt *rt, const char *id, struct herr *err)
{
	return destroy(rt, id, true, err);
}

int rt_upper_remove(struct rt *rt, const char *id, struct herr *err)
{
	bool known;

	if (!rt_id_valid(id))
		return herr_set(err, -EINVAL, "id: must be 1-%d of [A-Za-z0-9_-]", RT_ID_MAX);
	pthread_mutex_lock(&rt->lock);
	known = find_locked(rt, id) != NULL;
	pthread_mutex_unlock(&rt->lock);
	/* A sandbox the runtime runs has its disk mounted: rt_destroy it. */
	if (known)
		return herr_set(err, -EBUSY, "sandbox %s is known to the runtime", id);
	return remove_disk_files(rt, id, err);
}

bool rt_upper_exists(struct rt *rt, const char *id)
{
	char path[4096];
	struct stat st;

	if (!rt_id_valid(id))
		return false;
	snprintf(path, sizeof(path), "%s/sandboxes/%s/disk.img", rt->data_dir, id);
	return stat(path, &st) == 0;
}

static void fill_info(struct rt *rt, struct rt_sandbox *s, struct rt_info *info)
{
	struct in_addr a = { .s_addr = htonl(s->net.sbx_ip) };

	if (s->state == RT_STATE_STOPPED) {
		*info = s->last;
	} else {
		memset(info, 0, sizeof(*info));
		info->state = s->state;
		info->pid = s->init_pid;
		info->reason = RT_EXIT_NONE;
		rt_cg_stats(rt, s->id, info);
		info->pids_refused = pids_refused(rt, s);
		info->disk_bytes = rt_disk_used(rt, s->id, s->init_pid);
	}
	inet_ntop(AF_INET, &a, info->ip, sizeof(info->ip));
}

int rt_query(struct rt *rt, const char *id, struct rt_info *info, struct herr *err)
{
	struct rt_sandbox *s = get_locked(rt, id, err);

	if (!s)
		return -ENOENT;
	fill_info(rt, s, info);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int rt_freeze(struct rt *rt, const char *id, bool frozen, struct herr *err)
{
	struct rt_sandbox *s = get_locked(rt, id, err);
	int r = 0;

	if (!s)
		return -ENOENT;
	if (s->state == RT_STATE_STOPPED)
		r = herr_set(err, -ESRCH, "sandbox %s is stopped", id);
	else
		r = rt_cg_freeze(rt, s->id, frozen, err);
	if (r == 0)
		s->state = frozen ? RT_STATE_FROZEN : RT_STATE_RUNNING;
	pthread_mutex_unlock(&s->lock);
	return r;
}

int rt_set_net_policy(struct rt *rt, const char *id, const struct rt_net_policy *pol,
		      struct herr *err)
{
	if (pol->n_allow_out > RT_MAX_CIDRS || pol->n_deny_out > RT_MAX_CIDRS)
		return herr_set(err, -EINVAL, "network: at most %d CIDRs per list", RT_MAX_CIDRS);
	struct rt_sandbox *s = get_locked(rt, id, err);
	int r = 0;

	if (!s)
		return -ENOENT;
	if (rt->nft_ok)
		r = rt_nft_sandbox_policy(rt, &s->net, pol, err);
	pthread_mutex_unlock(&s->lock);
	return r;
}

int rt_socket(struct rt *rt, const char *id, struct herr *err)
{
	int netns, sock, self;

	pthread_mutex_lock(&rt->lock);
	struct rt_sandbox *s = find_locked(rt, id);
	netns = s && s->net.fd >= 0 && s->state != RT_STATE_STOPPED ?
		fcntl(s->net.fd, F_DUPFD_CLOEXEC, 3) : -1;
	pthread_mutex_unlock(&rt->lock);
	if (netns < 0)
		return herr_set(err, -ENOENT, "no running sandbox '%.64s'", id);

	/* The socket belongs to the namespace it was created in; we step in
	 * only for socket() and come straight back (per-thread membership). */
	self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (self < 0) {
		close(netns);
		return herr_sys(err, -errno, "open own netns");
	}
	if (setns(netns, CLONE_NEWNET) < 0) {
		int r = herr_sys(err, -errno, "setns into sandbox %s", id);
		close(netns);
		close(self);
		return r;
	}
	sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int saved = errno;
	if (setns(self, CLONE_NEWNET) < 0) {
		log_error("runtime", id, "cannot return to own netns: %s", strerror(errno));
		abort();
	}
	close(netns);
	close(self);
	if (sock < 0)
		return herr_sys(err, -saved, "socket in sandbox %s", id);
	return sock;
}

int rt_dial(struct rt *rt, const char *id, uint16_t port, struct herr *err)
{
	int sock = rt_socket(rt, id, err);

	if (sock < 0)
		return sock;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = herr_sys(err, -errno, "connect to port %u in sandbox %s", port, id);
		close(sock);
		return r;
	}
	return sock;
}

int rt_wait_port(struct rt *rt, const char *id, uint16_t port, unsigned timeout_ms,
		 struct herr *err)
{
	struct timespec start, now;
	long pause_us = 100;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		int fd = rt_dial(rt, id, port, err);
		if (fd >= 0) {
			close(fd);
			return 0;
		}
		if (fd != -ECONNREFUSED)
			return fd;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long el = (now.tv_sec - start.tv_sec) * 1000 +
			  (now.tv_nsec - start.tv_nsec) / 1000000;
		if (el >= (long)timeout_ms)
			return herr_set(err, -ETIMEDOUT, "port %u in sandbox %s not ready in %u ms",
					port, id, timeout_ms);
		/* Short pauses: an agent is usually listening within a few ms of
		 * its exec, and the time between its listen and our next try is
		 * create latency. A refused try costs ~50 us, so 1 ms steps keep
		 * the polling under 5% of a CPU; after 100 ms, 10 ms steps. */
		struct timespec ts = { 0, pause_us * 1000 };
		nanosleep(&ts, NULL);
		long el_ms = (now.tv_sec - start.tv_sec) * 1000 +
			     (now.tv_nsec - start.tv_nsec) / 1000000;
		pause_us = el_ms > 100 ? 10000 : pause_us < 1000 ? pause_us * 2 : 1000;
	}
}

int rt_list(struct rt *rt, int (*fn)(void *arg, const char *id, const struct rt_info *info),
	    void *arg)
{
	for (unsigned i = 0; i < rt->max_sandboxes; i++) {
		char id[RT_ID_MAX + 1];

		pthread_mutex_lock(&rt->lock);
		struct rt_sandbox *s = rt->by_slot[i];
		if (!s || s->destroying) {
			pthread_mutex_unlock(&rt->lock);
			continue;
		}
		snprintf(id, sizeof(id), "%s", s->id);
		pthread_mutex_unlock(&rt->lock);

		struct rt_info info;
		if (rt_query(rt, id, &info, NULL) < 0)
			continue;
		int r = fn(arg, id, &info);
		if (r)
			return r;
	}
	return 0;
}

void rt_set_exit_callback(struct rt *rt, rt_exit_fn fn, void *arg)
{
	pthread_mutex_lock(&rt->lock);
	rt->exit_fn = fn;
	rt->exit_arg = arg;
	pthread_mutex_unlock(&rt->lock);
}

/* ---------- init, re-adoption, shutdown ---------- */

/*
 * A run dir without a state file: the crash came inside prepare_host_side,
 * before the state was written and so before anything was spawned. What it
 * may have made is named by the id alone (cgroups, disk, folders); its netns
 * died with the old process. Without this the leftovers would stay forever.
 */
static void remove_stateless(struct rt *rt, const char *id)
{
	bool kept = !disk_was_made(rt, id);

	log_info("runtime", id, "removing leftovers of a create that never got a state%s",
		 kept ? " (its kept disk stays)" : "");
	rt_cg_kill(rt, id, 0);
	rt_cg_destroy(rt, id, NULL);
	if (!kept)
		remove_disk_files(rt, id, NULL);
	rt_state_remove(rt, id);
}

/* Sandboxes the start cannot hold: the max-sandboxes they need, a few ids. */
struct adopt_misfits {
	unsigned need;
	unsigned count;
	char ids[160];
};

static void note_misfit(struct adopt_misfits *m, const struct rt_sandbox *s)
{
	unsigned need = (s->slot > s->net.slot ? s->slot : s->net.slot) + 1;
	size_t len = strlen(m->ids);

	if (need > m->need)
		m->need = need;
	if (m->count++ < 4)
		snprintf(m->ids + len, sizeof(m->ids) - len, "%s%s", len ? " " : "", s->id);
}

/*
 * A sandbox whose slot lies beyond max-sandboxes (the setting was lowered, or
 * net-cidr narrowed, while it ran or was paused) cannot be held: every table
 * is sized by the limit. Starting anyway would leave a running sandbox with
 * no deadline and no API, or a paused one that cannot be resumed, so it is
 * noted in misfits and the start fails once every state file was read.
 */
static void adopt_one(struct rt *rt, const char *id, struct adopt_misfits *misfits)
{
	struct rt_sandbox *s = calloc(1, sizeof(*s));
	struct herr err = { 0 };

	if (!s) {
		log_error("runtime", id, "cannot re-adopt: out of memory");
		return;
	}
	pthread_mutex_init(&s->lock, NULL);
	s->keeper_pidfd = s->init_pidfd = -1;
	s->net.fd = -1;
	int r = rt_state_read(rt, id, s, &err);
	if (r == 0 && (rt->by_slot[s->slot] || rt->net_slot_used[s->net.slot]))
		r = herr_set(&err, -EEXIST, "its state file names slot %u or network slot %u, "
			     "which sandbox %s holds already", s->slot, s->net.slot,
			     rt->by_slot[s->slot] ? rt->by_slot[s->slot]->id : "another");
	if (r == -ERANGE)
		note_misfit(misfits, s);
	else if (r == -ENOENT)
		remove_stateless(rt, id);
	else if (r < 0)
		log_warn("runtime", id, "cannot re-adopt: %s", err.msg);
	if (r < 0) {
		free_sandbox(s);
		return;
	}
	s->uid_base = rt->uid_base + s->slot * RT_IDS_PER_SANDBOX;
	s->init_pidfd = pidfd_open_checked(s->init_pid, s->init_start);
	s->keeper_pidfd = pidfd_open_checked(s->keeper_pid, 0);
	rt->net_slot_used[s->net.slot] = true;
	rt->by_slot[s->slot] = s;

	char path[64];
	if (s->init_pidfd >= 0 && s->init_start) {
		snprintf(path, sizeof(path), "/proc/%d/ns/net", s->init_pid);
		s->net.fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (s->net.fd >= 0) {
		s->state = RT_STATE_RUNNING;
		mon_watch(rt, s);
		log_info("runtime", id, "re-adopted running sandbox pid=%d", s->init_pid);
		return;
	}
	if (!s->init_start) {
		/* Half-made: the crash came before the init ran. */
		bool kept = !disk_was_made(rt, id);

		log_info("runtime", id, "removing half-made sandbox%s",
			 kept ? " (its kept disk stays)" : "");
		s->destroying = true;
		rt_cg_kill(rt, s->id, 0);
		release_all(rt, s, !kept, NULL);
		rt->by_slot[s->slot] = NULL;
		free_sandbox(s);
		return;
	}
	settle_exit(rt, s);
	log_info("runtime", id, "re-adopted stopped sandbox reason=%s",
		 rt_exit_reason_name(s->last.reason));
}

static int adopt_all(struct rt *rt, struct herr *err)
{
	_cleanup_closedir_ DIR *d = opendir(rt->run_dir);
	struct adopt_misfits misfits = { 0 };
	struct dirent *e;

	if (!d)
		return 0;
	while ((e = readdir(d)))
		if (e->d_type == DT_DIR && rt_id_valid(e->d_name) && strcmp(e->d_name, "mnt"))
			adopt_one(rt, e->d_name, &misfits);
	if (!misfits.count)
		return 0;
	/* The advice first: herr_wrap may cut the end of a long message. */
	return herr_set(err, -ERANGE, "start with max-sandboxes %u or more (and a net-cidr "
			"with 4 addresses per sandbox) to take back %u sandbox(es) an earlier "
			"start left in slots max-sandboxes %u does not hold (%s%s); that start "
			"removes those that no longer run, kill the others, then lower it",
			misfits.need, misfits.count, rt->max_sandboxes, misfits.ids,
			misfits.count > 4 ? " ..." : "");
}

static int init_dirs(struct rt *rt, struct herr *err)
{
	char path[4096];
	int r;

	/* run_dir must be traversable (not listable) so that a sandbox init,
	 * already running as its unprivileged host id, can reach <run_dir>/mnt. */
	r = rt_mkdir_p(rt->run_dir, 0711, err);
	if (r == 0 && chmod(rt->run_dir, 0711) < 0)
		r = herr_sys(err, -errno, "chmod %s", rt->run_dir);
	snprintf(path, sizeof(path), "%s/mnt", rt->run_dir);
	if (r == 0)
		r = rt_mkdir_p(path, 0755, err);
	snprintf(path, sizeof(path), "%s/sandboxes", rt->data_dir);
	if (r == 0)
		r = rt_mkdir_p(path, 0700, err);
	return r;
}

static int parse_net(struct rt *rt, const char *cidr, struct herr *err)
{
	struct rt_cidr c;
	int r = rt_cidr_parse(cidr ? cidr : "10.213.0.0/16", &c, err);

	if (r < 0)
		return herr_wrap(err, "net_cidr");
	if (c.prefix > 16)
		return herr_set(err, -EINVAL, "net_cidr: need a /16 or larger");
	rt->net_base = c.addr;
	/* 64 bits: a /0 would shift a 32-bit 1 by 32 */
	uint64_t room = (1ull << (32 - c.prefix)) / 4 - 1;
	if (rt->max_sandboxes > room)
		rt->max_sandboxes = (unsigned)room;
	return 0;
}

static void pick_nameservers(struct rt *rt, const char *given)
{
	_cleanup_fclose_ FILE *f = NULL;
	char line[256];
	size_t off = 0;

	if (given) {
		snprintf(rt->nameservers, sizeof(rt->nameservers), "%s", given);
		return;
	}
	/* The host's resolvers, unless they live on the host's loopback, which
	 * a sandbox cannot (and must not) reach. */
	f = fopen("/etc/resolv.conf", "re");
	while (f && fgets(line, sizeof(line), f)) {
		char ns[64];
		if (sscanf(line, "nameserver %63s", ns) != 1 || strncmp(ns, "127.", 4) == 0 ||
		    strchr(ns, ':'))
			continue;
		off += (size_t)snprintf(rt->nameservers + off, sizeof(rt->nameservers) - off,
					"%s%s", off ? " " : "", ns);
		if (off >= sizeof(rt->nameservers) - 20)
			break;
	}
	if (off == 0)
		snprintf(rt->nameservers, sizeof(rt->nameservers), "1.1.1.1 8.8.8.8");
}

static bool all_in(const char *s, const char *set, size_t min, size_t max)
{
	size_t len = strlen(s);

	return len >= min && len <= max && strspn(s, set) == len;
}

/* The cgroup name becomes a directory and the nft table name, the prefix a
 * part of interface names and of an nft match: keep both to plain letters. */
static int check_names(struct rt *rt, const struct rt_config *cfg, struct herr *err)
{
	const char *prefix = cfg->veth_prefix ? cfg->veth_prefix : RT_HOST_VETH_PREFIX;

	if (!all_in(rt->cg_name, "abcdefghijklmnopqrstuvwxyz0123456789-_", 1, 32))
		return herr_set(err, -EINVAL, "cgroup_name: 1-32 of [a-z0-9_-]");
	if (!all_in(prefix, "abcdefghijklmnopqrstuvwxyz", 1, 4))
		return herr_set(err, -EINVAL, "veth_prefix: 1-4 of [a-z]");
	snprintf(rt->veth_prefix, sizeof(rt->veth_prefix), "%s", prefix);
	return 0;
}

int rt_init(const struct rt_config *cfg, struct rt **out, struct herr *err)
{
	struct rt *rt = calloc(1, sizeof(*rt));
	int r;

	if (!rt)
		return herr_set(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&rt->lock, NULL);
	pthread_cond_init(&rt->pool_cond, NULL);
	rt->mon_epfd = -1;
	rt->data_dir = strdup(cfg->data_dir ? cfg->data_dir : "/var/lib/hutch");
	rt->run_dir = strdup(cfg->run_dir ? cfg->run_dir : "/run/hutch");
	rt->cg_name = strdup(cfg->cgroup_name ? cfg->cgroup_name : "hutch");
	rt->pool_size = cfg->pool_size;
	rt->max_sandboxes = cfg->max_sandboxes ? cfg->max_sandboxes : 1024;
	rt->uid_base = cfg->uid_base ? cfg->uid_base : 0x10000000u;
	rt->egress_conn_max = cfg->egress_conn_max ? cfg->egress_conn_max :
			      RT_EGRESS_CONN_DEFAULT;
	pick_nameservers(rt, cfg->nameservers);
	if (!rt->data_dir || !rt->run_dir || !rt->cg_name) {
		r = herr_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	r = check_names(rt, cfg, err);
	if (r < 0)
		goto fail;
	r = parse_net(rt, cfg->net_cidr, err);
	if (r < 0)
		goto fail;
	if ((uint64_t)rt->uid_base + (uint64_t)rt->max_sandboxes * RT_IDS_PER_SANDBOX >
	    UINT32_MAX - 1) {
		r = herr_set(err, -EINVAL, "uid_base: ranges for %u sandboxes pass 2^32",
			     rt->max_sandboxes);
		goto fail;
	}
	rt->by_slot = calloc(rt->max_sandboxes, sizeof(*rt->by_slot));
	rt->net_gen = calloc(rt->max_sandboxes, sizeof(*rt->net_gen));
	rt->net_slot_used = calloc(rt->max_sandboxes, sizeof(*rt->net_slot_used));
	if (!rt->by_slot || !rt->net_gen || !rt->net_slot_used) {
		r = herr_set(err, -ENOMEM, "out of memory");
		goto fail;
	}

	r = init_dirs(rt, err);
	if (r == 0)
		r = rt_cg_detect(&rt->cg_mode, err);
	if (r == 0)
		r = rt_cg_init(rt, err);
	if (r == 0)
		r = rt_seccomp_compile(&rt->seccomp, err);
	if (r == 0)
		r = rt_nft_init(rt, err);
	if (r < 0)
		goto fail;
	rt->nft_ok = 1;

	rt->mon_epfd = epoll_create1(EPOLL_CLOEXEC);
	if (rt->mon_epfd < 0 || pipe2(rt->mon_wake, O_CLOEXEC) < 0) {
		r = herr_sys(err, -errno, "epoll/pipe for the exit monitor");
		goto fail;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = UINT64_MAX };
	epoll_ctl(rt->mon_epfd, EPOLL_CTL_ADD, rt->mon_wake[0], &ev);

	r = adopt_all(rt, err);
	if (r < 0)
		goto fail;
	r = rt_net_init(rt, err);
	if (r == 0)
		r = rt_prep_init(rt, err);
	if (r < 0) {
		rt_net_shutdown(rt);
		goto fail;
	}
	if (pthread_create(&rt->mon_thread, NULL, mon_main, rt) != 0) {
		r = herr_set(err, -EAGAIN, "starting the exit monitor thread");
		rt_net_shutdown(rt);
		goto fail;
	}
	log_info("runtime", NULL, "runtime ready cgroups=%s pool=%u max=%u",
		 rt->cg_mode == RT_CG_UNIFIED ? "unified" :
		 rt->cg_mode == RT_CG_HYBRID ? "hybrid" : "legacy",
		 rt->pool_size, rt->max_sandboxes);
	*out = rt;
	return 0;
fail:
	rt->mon_thread = 0;
	rt_shutdown(rt);
	return r;
}

void rt_shutdown(struct rt *rt)
{
	if (!rt)
		return;
	if (rt->mon_thread) {
		if (write(rt->mon_wake[1], "x", 1) == 1)
			pthread_join(rt->mon_thread, NULL);
		rt_net_shutdown(rt);
	}
	rt_prep_shutdown(rt);
	for (unsigned i = 0; rt->by_slot && i < rt->max_sandboxes; i++) {
		struct rt_sandbox *s = rt->by_slot[i];
		if (!s)
			continue;
		/* The sandbox keeps running; we only let go of our handles. */
		if (s->net.fd >= 0)
			close(s->net.fd);
		if (s->keeper_pid > 0)
			waitpid(s->keeper_pid, NULL, WNOHANG);
		free_sandbox(s);
	}
	if (rt->mon_epfd >= 0) {
		close(rt->mon_epfd);
		close(rt->mon_wake[0]);
		close(rt->mon_wake[1]);
	}
	free(rt->seccomp.filter);
	free(rt->by_slot);
	free(rt->net_gen);
	free(rt->net_slot_used);
	free(rt->data_dir);
	free(rt->run_dir);
	free(rt->cg_name);
	pthread_cond_destroy(&rt->pool_cond);
	pthread_mutex_destroy(&rt->lock);
	free(rt);
}
