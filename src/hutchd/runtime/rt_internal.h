/*
 * Runtime internals shared by the files of src/hutchd/runtime/. Nothing here
 * is used outside the runtime.
 */
#ifndef HUTCH_RT_INTERNAL_H
#define HUTCH_RT_INTERNAL_H

#include <linux/filter.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"
#include "rt.h"

#define RT_IDS_PER_SANDBOX 65536u
#define RT_MAX_LAYERS 32
#define RT_DEFAULT_DISK_MB 2048
#define RT_NET_PREFIX 30        /* each sandbox gets a /30: host .1, sandbox .2 */
#define RT_HOST_VETH_PREFIX "hsb" /* default start of every host-side veth name */
#define RT_MAX_CIDRS 256        /* per allow/deny list */

enum rt_cg_mode { RT_CG_UNIFIED, RT_CG_HYBRID, RT_CG_LEGACY };

/*
 * Timestamps along one create, for measuring where the time goes. hutchd,
 * the keeper and the init (until its execve) write into one shared page, so
 * steps in all three processes land on one clock (CLOCK_MONOTONIC, ns).
 */
enum rt_mark {
	RT_M_START,      /* rt_create entered */
	RT_M_DIRS,       /* run/data folders made */
	RT_M_DISK,       /* disk image ready (pool or mkfs) */
	RT_M_CGROUP,     /* cgroups made, limits written */
	RT_M_NET,        /* netns taken */
	RT_M_NFT,        /* firewall entries added */
	RT_M_STATE,      /* state file written */
	RT_M_MOUNT,      /* disk mounted (loop + ext4), fsmount fd */
	RT_M_K_START,    /* keeper running */
	RT_M_K_CLONE,    /* keeper: clone3 of the init returned */
	RT_M_K_MAPS,     /* keeper: uid/gid maps written */
	RT_M_K_ATTACH,   /* keeper: v1 cgroup attach done */
	RT_M_K_MOUNTS,   /* keeper: idmapped mounts sent */
	RT_M_C_START,    /* init: first instruction after clone3 */
	RT_M_C_RECV,     /* init: mounts received */
	RT_M_C_ROOTED,   /* init: cgroupns, root of its user namespace */
	RT_M_C_OVERLAY,  /* init: overlay root mounted */
	RT_M_C_SPECIAL,  /* init: /proc, /dev, /sys, agent bundle */
	RT_M_C_ETC,      /* init: /etc files, hostname */
	RT_M_C_PIVOT,    /* init: pivot_root and detach */
	RT_M_C_PRIVS,    /* init: seccomp loaded, capabilities dropped */
	RT_M_C_EXEC,     /* init: about to execve */
	RT_M_K_EXECD,    /* keeper: execve seen to succeed */
	RT_M_REPORT,     /* hutchd: keeper report read */
	RT_M_DONE,       /* rt_create returning */
	RT_M_COUNT
};

struct rt_marks {
	uint64_t ns[RT_M_COUNT];
};

void rt_mark(struct rt_marks *m, enum rt_mark which);
const char *rt_mark_name(enum rt_mark which);
/* The mark a step's time is counted from (steps of the init overlap the
 * keeper's). */
enum rt_mark rt_mark_from(enum rt_mark which);
/* The marks of the last successful create (for bench/runtime-create). */
void rt_last_marks(struct rt *rt, struct rt_marks *out);

/* A prepared network namespace: veth pair, addresses and route in place. */
struct rt_netns {
	int fd;                 /* the namespace */
	unsigned slot;          /* address slot */
	uint32_t host_ip;       /* host side of the /30, host order */
	uint32_t sbx_ip;
	char host_if[16];       /* host-side veth name, unique per generation */
};

struct rt_sandbox {
	char id[RT_ID_MAX + 1];
	unsigned slot;          /* id range and cgroup/nft names */
	uint32_t uid_base;      /* first host id of its range */
	struct rt_netns net;
	pid_t keeper_pid;
	int keeper_pidfd;       /* -1 when the keeper is gone */
	pid_t init_pid;
	int init_pidfd;
	unsigned long long init_start; /* /proc/<pid>/stat starttime, guards pid reuse */
	enum rt_state state;
	struct rt_info last;    /* exit details once stopped */
	bool stop_requested;
	bool destroying;
	uint64_t oom_base;      /* oom_kill count at start */
	uint64_t pids_base;     /* pids.events "max" at start */
	uint64_t mem_peak;
	pthread_mutex_t lock;
};

struct rt {
	char *data_dir;
	char *run_dir;
	char *cg_name;
	uint32_t net_base;      /* host order; a /16 */
	unsigned pool_size;
	unsigned max_sandboxes;
	uint32_t uid_base;
	unsigned egress_conn_max;
	char nameservers[256];
	char veth_prefix[8];            /* host-side veth names start with it */

	enum rt_cg_mode cg_mode;
	struct sock_fprog seccomp;      /* compiled once */

	pthread_mutex_t lock;           /* guards the tables below */
	struct rt_sandbox **by_slot;    /* max_sandboxes entries */
	unsigned *net_gen;              /* per address slot, for veth names */

	/* network pool */
	pthread_t pool_thread;
	bool pool_running;
	pthread_cond_t pool_cond;
	struct rt_netns *pool;
	unsigned pool_len;
	bool *net_slot_used;            /* address slots in use (pool or sandbox) */

	/* exit monitor */
	pthread_t mon_thread;
	int mon_epfd;
	int mon_wake[2];
	rt_exit_fn exit_fn;
	void *exit_arg;

	int nft_ok;

	struct rt_marks last_marks;     /* under lock */

	/* prepared disks and keepers (prep.c), under prep_lock */
	pthread_mutex_t prep_lock;
	pthread_cond_t prep_cond;
	pthread_t prep_thread;
	bool prep_inited, prep_running, prep_thread_on, zygotes_on;
	unsigned prep_size, prep_disks;
	struct rt_zygote *zygotes;      /* prep_size entries, pid 0 = empty */
	unsigned *zygote_index;         /* the ".pool-<i>" of each entry */
	bool *index_busy;               /* ".pool-<i>" names in use */
	struct rt_prep_disk *disks;     /* prep_disks entries, mount_fd -1 = empty */
	bool *disk_index_busy;          /* "pool/disk-<i>.img" names in use */
	uint64_t disk_mb_wanted;        /* size of the last disk asked for */
	unsigned creating;              /* creates in flight */
	int *leave_fds;                 /* pooled keepers to let out of the cgroups */
	unsigned n_leave, cap_leave;
	uint64_t leave_due_ms;          /* CLOCK_MONOTONIC ms when they leave */
};

/* seccomp.c */
int rt_seccomp_compile(struct sock_fprog *out, struct herr *err);
/* The capability set kept inside sandboxes (Docker's default), as a bit mask. */
uint64_t rt_caps_keep(void);

/* cgroup.c */
int rt_cg_detect(enum rt_cg_mode *mode, struct herr *err);
int rt_cg_init(struct rt *rt, struct herr *err);
int rt_cg_create(struct rt *rt, const char *id, const struct rt_limits *lim,
		 struct herr *err);
/* Opens the v2 leaf for CLONE_INTO_CGROUP (unified only), else -1. */
int rt_cg_open_leaf(struct rt *rt, const char *id);
int rt_cg_attach(struct rt *rt, const char *id, pid_t pid, struct herr *err);
int rt_cg_kill(struct rt *rt, const char *id, pid_t init_pid);
int rt_cg_freeze(struct rt *rt, const char *id, bool frozen, struct herr *err);
int rt_cg_destroy(struct rt *rt, const char *id, struct herr *err);
void rt_cg_stats(struct rt *rt, const char *id, struct rt_info *info);
/* The sandbox's anonymous and shared memory: what a checkpoint writes. */
uint64_t rt_cg_dumpable_bytes(struct rt *rt, const char *id);
uint64_t rt_cg_oom_kills(struct rt *rt, const char *id);
uint64_t rt_cg_pids_refused(struct rt *rt, const char *id);
bool rt_cg_exists(struct rt *rt, const char *id);

int rt_cg_pool_create(struct rt *rt, const char *name, struct herr *err);
/* Moves the calling process into the v1 directories <name>. */
int rt_cg_attach_self(struct rt *rt, const char *name);
/* Renames pooled v1 directories to the sandbox id, makes the rest, writes
 * the limits. */
int rt_cg_from_pool(struct rt *rt, const char *name, const char *id,
		    const struct rt_limits *lim, struct herr *err);
/* Called by a keeper born in the sandbox's cgroups, once it has reported. */
void rt_cg_keeper_leave(struct rt *rt, const char *id, const struct rt_limits *lim);
void rt_cg_pool_leftovers(struct rt *rt);

/* prep.c: disks and keepers in cgroups prepared ahead */
struct rt_prep_disk;
int rt_prep_init(struct rt *rt, struct herr *err);
void rt_prep_shutdown(struct rt *rt);
/* The pooled disk of mb MiB renamed to target; its mount fd, or -ENOENT. */
int rt_prep_take_disk(struct rt *rt, const char *target, uint64_t mb, struct herr *err);
/* A pooled keeper whose cgroups are now the sandbox's (limits written): 0
 * and *out filled; -ENOENT when the pool is empty; else the error. */
int rt_prep_take_zygote(struct rt *rt, const char *id, const struct rt_limits *lim,
			struct rt_zygote *out, struct herr *err);
/* Queues a started pooled keeper's leave_fd: the pool thread tells it to
 * leave the sandbox's cgroups once no create is running. Takes the fd. */
void rt_prep_keeper_leave(struct rt *rt, int leave_fd);
/* Brackets a create, so that pool work waits for quiet moments. */
void rt_prep_create_begin(struct rt *rt);
void rt_prep_create_end(struct rt *rt);

/* net.c */
int rt_net_init(struct rt *rt, struct herr *err);
void rt_net_shutdown(struct rt *rt);
/* Takes a prepared netns from the pool (or makes one now). */
int rt_net_take(struct rt *rt, struct rt_netns *out, struct herr *err);
/* Releases a namespace: the kernel removes its veth asynchronously. */
void rt_net_release(struct rt *rt, struct rt_netns *ns);
void rt_net_slot_mark(struct rt *rt, unsigned slot, bool used);
int rt_net_sysfs_fd(int netns_fd, struct herr *err);

/* nft.c */
int rt_nft_init(struct rt *rt, struct herr *err);
int rt_nft_sandbox_add(struct rt *rt, const struct rt_netns *ns,
		       const struct rt_net_policy *pol, struct herr *err);
int rt_nft_sandbox_policy(struct rt *rt, const struct rt_netns *ns,
			  const struct rt_net_policy *pol, struct herr *err);
int rt_nft_sandbox_del(struct rt *rt, const struct rt_netns *ns, struct herr *err);

/* disk.c */
/* Makes the sandbox's disk image, from the pool when one of that size is
 * ready (then *mount_fd is its mounted fsmount fd, else -1). */
int rt_disk_create(struct rt *rt, const char *id, uint64_t mb, bool reuse, int *mount_fd,
		   struct herr *err);
/* A new sparse image of mb MiB (0 = default), formatted ext4. */
int rt_disk_format(const char *path, uint64_t mb, struct herr *err);
/* Returns an fsmount fd of the sandbox's disk (attached to a loop device). */
int rt_disk_mount_fd(struct rt *rt, const char *id, struct herr *err);
int rt_disk_mount_path(const char *path, struct herr *err);
int rt_disk_remove(struct rt *rt, const char *id, struct herr *err);
uint64_t rt_disk_used(struct rt *rt, const char *id, pid_t init_pid);

/* state.c: per-sandbox state files for re-adoption */
int rt_state_write(struct rt *rt, const struct rt_sandbox *s, struct herr *err);
int rt_state_read(struct rt *rt, const char *id, struct rt_sandbox *s, struct herr *err);
int rt_state_exit_read(struct rt *rt, const char *id, int *wstatus);
int rt_state_remove(struct rt *rt, const char *id);
/* <run_dir>/<id>/new-disk: the create makes (or made) the sandbox's disk,
 * not reuse_upper; written before the disk, removed with the state files. */
#define RT_NEW_DISK "new-disk"

/* spawn.c */
struct rt_spawn_result {
	pid_t keeper_pid;
	pid_t init_pid;
	struct rt_marks *marks; /* in: a shared page for timestamps, or NULL */
	int disk_fd;            /* in: the mounted disk from the pool, or -1 */
	struct rt_zygote *zygote; /* in: a pooled keeper in the sandbox's cgroups, or NULL */
	int marks_fd;           /* in: memfd behind marks (for a pooled keeper), or -1 */
	int leave_fd;           /* out: for rt_prep_keeper_leave (pooled keeper), or -1 */
	/* rt_spawn always consumes disk_fd and zygote (sets them to -1/NULL). */
};

/* A keeper forked ahead, waiting in pooled v1 cgroups for its sandbox. */
struct rt_zygote {
	pid_t pid;
	int sock;
};
/* Forks a pooled keeper that joins the v1 cgroups <name>; returns once it
 * is there. */
int rt_zygote_start(struct rt *rt, const char *name, struct rt_zygote *z, struct herr *err);
/* Lets an unused pooled keeper go and reaps it. */
void rt_zygote_stop(struct rt_zygote *z);
int rt_spawn(struct rt *rt, struct rt_sandbox *s, const struct rt_spec *spec,
	     struct rt_spawn_result *res, struct herr *err);

/* util */
int rt_write_file(const char *path, const char *data, struct herr *err);

/* initlog.c: the init's stdout/stderr pipe drained into a capped init.log. */
#define RT_INIT_LOG_MAX (1 << 20)
struct rt_initlog {
	int fd;     /* init.log, written only by the keeper */
	off_t size; /* bytes in it */
	off_t cap;  /* never more than this */
};
void rt_initlog_init(struct rt_initlog *l, int fd, off_t cap);
/* Appends, first dropping the older half of the file if the cap needs it. */
void rt_initlog_write(struct rt_initlog *l, const char *buf, size_t n);
/* One read from the pipe into the log: 1 after data, 0 at EOF or error,
 * -EAGAIN when a non-blocking pipe is empty. */
int rt_initlog_drain(struct rt_initlog *l, int pipe_fd);
int rt_read_u64(const char *path, uint64_t *out);
int rt_mkdir_p(const char *path, mode_t mode, struct herr *err);
unsigned long long rt_proc_starttime(pid_t pid);
bool rt_id_valid(const char *id);

#endif
