/*
 * The runtime: isolated sandboxes built from Linux namespaces, cgroups,
 * an overlay root, seccomp and nftables. This is the whole interface hutchd
 * uses; everything behind it lives in src/hutchd/runtime/.
 *
 * A sandbox is: a user namespace mapping root to a private range of 65536
 * unprivileged host ids, new pid/mount/uts/ipc/cgroup namespaces, a pooled
 * network namespace with its own veth and address, an overlay root whose
 * upper layer lives under the data dir on a size-limited filesystem, and our
 * own cgroups with memory/pids/cpu limits. Its init (the agent) is not a
 * child whose life depends on hutchd: a small per-sandbox keeper process,
 * detached from hutchd, is its parent, reaps it and records how it ended.
 * After a hutchd restart rt_init() finds the running sandboxes again from
 * their state files under the run dir.
 *
 * Threads: every function may be called from any thread; calls about one
 * sandbox are serialised inside the runtime. rt_dial() never blocks on other
 * sandboxes' work.
 *
 * Errors follow src/common/err.h: 0 (or a non-negative value) on success, a
 * negative errno and a message in *err naming the failing path/field/syscall.
 * -ENOENT means "no such sandbox", -EEXIST "id already in use", -EINVAL a bad
 * argument (the message names the field).
 */
#ifndef HUTCH_RT_H
#define HUTCH_RT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

/* A sandbox id: [A-Za-z0-9_-], 1..RT_ID_MAX characters. */
#define RT_ID_MAX 63
/* Where the agent bundle appears inside every sandbox (read-only bind). */
#define RT_AGENT_MOUNT "/.hutch"
/* Concurrent egress connections per sandbox when the config gives none:
 * what E2B allows. */
#define RT_EGRESS_CONN_DEFAULT 2500

struct rt;

struct rt_config {
	const char *data_dir;    /* upper dirs and disk images; e.g. /var/lib/hutch */
	const char *run_dir;     /* per-sandbox state for re-adoption; e.g. /run/hutch */
	const char *cgroup_name; /* our subtree name in every hierarchy; "hutch" */
	/* Sandbox addresses: an IPv4 /16, e.g. "10.213.0.0/16"; each sandbox a /30. */
	const char *net_cidr;
	unsigned pool_size;      /* prepared network namespaces kept ready; 0 = none */
	unsigned max_sandboxes;  /* bounds id ranges and address slots; <= 16383 */
	/* First host uid/gid of the sandbox id ranges; slot i gets
	 * [uid_base + i*65536, uid_base + (i+1)*65536). Must not overlap real users. */
	uint32_t uid_base;
	/* Connections a sandbox may have open to the outside at once (conntrack
	 * entries of its own); a new one past it is refused with a TCP reset or
	 * ICMP. Applies to sandboxes created or given a policy afterwards.
	 * 0 = RT_EGRESS_CONN_DEFAULT. */
	unsigned egress_conn_max;
	/* Nameservers written to each sandbox's /etc/resolv.conf, space separated;
	 * NULL = the host's, unless those are loopback addresses. */
	const char *nameservers;
	/* Host-side veth names start with this: 1-4 of [a-z]; NULL = "hsb".
	 * The nftables table is named after cgroup_name. Two runtimes on one
	 * host need different cgroup_name, veth_prefix and net_cidr, or their
	 * firewall rules would apply to each other's sandboxes. */
	const char *veth_prefix;
};

struct rt_limits {
	unsigned cpu_count;  /* CPUs worth of time (CFS quota); 0 = unlimited */
	uint64_t memory_mb;  /* 0 = unlimited */
	unsigned pids;       /* max tasks; 0 = unlimited */
	uint64_t disk_mb;    /* size of the writable layer; 0 = runtime default */
};

/* An IPv4 network, host byte order; prefix 0..32. */
struct rt_cidr {
	uint32_t addr;
	uint8_t prefix;
};

/*
 * Egress policy, evaluated per new connection leaving the sandbox:
 *   1. destination in allow_out      -> allowed
 *   2. destination in deny_out       -> refused (TCP reset / ICMP prohibited)
 *   3. destination private/link-local/loopback/CGNAT -> refused
 *   4. otherwise allowed, unless allow_internet is false (then refused).
 * Traffic into the host itself and to other sandboxes is always refused.
 */
struct rt_net_policy {
	bool allow_internet;
	const struct rt_cidr *allow_out;
	size_t n_allow_out;
	const struct rt_cidr *deny_out;
	size_t n_deny_out;
};

struct rt_spec {
	const char *id;
	/* Template layers, read-only host directories; layers[0] is the base
	 * (lowest), layers[n_layers-1] the top. At least one. */
	const char *const *layers;
	size_t n_layers;
	const char *agent_dir;    /* host dir bound read-only at RT_AGENT_MOUNT */
	/* The init: argv[0] is a path inside the sandbox (usually under
	 * RT_AGENT_MOUNT); NULL-terminated. */
	const char *const *argv;
	const char *const *env;   /* "K=V", NULL-terminated; may be NULL */
	const char *hostname;     /* NULL = the id */
	struct rt_limits limits;
	struct rt_net_policy net;
	/* Keep the writable layer from an earlier sandbox with this id (resume
	 * after a stop); otherwise an existing one is an error (-EEXIST). */
	bool reuse_upper;
};

enum rt_state {
	RT_STATE_STARTING,
	RT_STATE_RUNNING,
	RT_STATE_FROZEN,
	RT_STATE_STOPPED, /* init gone; writable layer kept until rt_destroy */
};

/*
 * How the init ended. Only what the kernel's records show is claimed:
 * the wait status the keeper saw, whether we asked for the end, and the
 * sandbox cgroup's event counters since the create.
 */
enum rt_exit_reason {
	RT_EXIT_NONE,   /* still running */
	RT_EXIT_EXITED, /* init exited by itself; exit_status holds the code */
	RT_EXIT_KILLED, /* rt_stop/rt_destroy (we asked); exit_signal holds the signal */
	/* Killed by SIGKILL, which only the kernel or the host can send to a
	 * pid namespace's init, and the cgroup's OOM-kill count rose: the
	 * memory limit was hit and the OOM killer chose the init. */
	RT_EXIT_OOM,
	/* The init exited with a non-zero status after the pids limit had
	 * refused forks in the sandbox (pids_refused > 0). That limit never
	 * kills anything: a failed fork is all a process sees of it, and
	 * giving up with an error is how an init dies of it. A crash (a
	 * signal) is RT_EXIT_SIGNAL whatever the counters say. */
	RT_EXIT_LIMIT,
	RT_EXIT_ERROR,  /* setup failed, or the keeper died: see the message */
	/* A signal we did not send ended the init (a crash: SIGSEGV, SIGABRT,
	 * SIGILL...; or SIGKILL from the host with no OOM kill seen). */
	RT_EXIT_SIGNAL,
};

struct rt_info {
	enum rt_state state;
	pid_t pid;              /* host pid of the init; 0 when stopped */
	enum rt_exit_reason reason;
	int exit_status;        /* for RT_EXIT_EXITED and RT_EXIT_LIMIT */
	int exit_signal;        /* for RT_EXIT_KILLED, OOM and SIGNAL */
	uint64_t memory_bytes;  /* current cgroup memory use */
	uint64_t memory_peak;   /* highest seen */
	uint64_t cpu_usec;      /* total CPU time used */
	unsigned pids;          /* tasks now */
	uint64_t disk_bytes;    /* writable layer in use */
	uint64_t oom_kills;     /* OOM kills inside the sandbox (any process) */
	uint64_t pids_refused;  /* forks the pids limit refused since the create */
	char ip[16];            /* the sandbox's address, dotted quad */
	char message[256];      /* for RT_EXIT_ERROR */
};

/* Called from a runtime thread when a sandbox's init ends (any reason).
 * Must not call back into the runtime for the same sandbox synchronously
 * with a blocking wait; rt_query/rt_destroy are fine. */
typedef void (*rt_exit_fn)(void *arg, const char *id, const struct rt_info *info);

/*
 * Checks the host (cgroup mode, kernel features), creates our cgroup subtree,
 * the nft table and the network pool, compiles the seccomp filter, and
 * re-adopts every sandbox found under run_dir (half-made ones are removed).
 */
int rt_init(const struct rt_config *cfg, struct rt **out, struct herr *err);

/* Stops the pool and frees the handle. Running sandboxes keep running. */
void rt_shutdown(struct rt *rt);

void rt_set_exit_callback(struct rt *rt, rt_exit_fn fn, void *arg);

/* Creates and starts a sandbox; returns once its init has been exec'd. */
int rt_create(struct rt *rt, const struct rt_spec *spec, struct herr *err);

/* Waits until something accepts on 127.0.0.1:port inside the sandbox. */
int rt_wait_port(struct rt *rt, const char *id, uint16_t port, unsigned timeout_ms,
		 struct herr *err);

/* Ends the sandbox's processes (SIGTERM to the init, SIGKILL of the whole
 * cgroup after grace_ms); keeps the writable layer. Idempotent. */
int rt_stop(struct rt *rt, const char *id, unsigned grace_ms, struct herr *err);

/* Stops if needed and removes everything: mounts, cgroups, netns, veth,
 * firewall entries, writable layer, state files. Idempotent: an unknown id
 * is -ENOENT. */
int rt_destroy(struct rt *rt, const char *id, struct herr *err);

/* rt_destroy, except that the writable layer (disk image) stays for a later
 * rt_create with reuse_upper: a memory-less pause. The runtime then no longer
 * knows the id, also after a restart. */
int rt_destroy_keep_upper(struct rt *rt, const char *id, struct herr *err);

/* Removes a writable layer kept by rt_destroy_keep_upper; -EBUSY when the
 * runtime runs a sandbox by that id. Idempotent. */
int rt_upper_remove(struct rt *rt, const char *id, struct herr *err);

/* True when a writable layer exists for id (running or kept). */
bool rt_upper_exists(struct rt *rt, const char *id);

int rt_query(struct rt *rt, const char *id, struct rt_info *info, struct herr *err);

/* Freezes or thaws every process of the sandbox (cgroup freezer). */
int rt_freeze(struct rt *rt, const char *id, bool frozen, struct herr *err);

/* Replaces the egress policy atomically; takes effect for the next packet. */
int rt_set_net_policy(struct rt *rt, const char *id, const struct rt_net_policy *pol,
		      struct herr *err);

/*
 * Returns a connected TCP socket (blocking, close-on-exec) to 127.0.0.1:port
 * on the sandbox's own loopback, created inside its network namespace. Works
 * whatever the egress policy. -ECONNREFUSED when nothing listens.
 */
int rt_dial(struct rt *rt, const char *id, uint16_t port, struct herr *err);

/*
 * An unconnected TCP socket (blocking, close-on-exec) created inside the
 * sandbox's network namespace: connecting it to 127.0.0.1 reaches the
 * sandbox's loopback. For clients that insist on connecting themselves
 * (libcurl 7.88 ignores CURL_SOCKOPT_ALREADY_CONNECTED).
 */
int rt_socket(struct rt *rt, const char *id, struct herr *err);

/* Calls fn for every known sandbox (running or stopped); stops when fn
 * returns non-zero and returns that value. */
int rt_list(struct rt *rt, int (*fn)(void *arg, const char *id, const struct rt_info *info),
	    void *arg);

/* Parses "a.b.c.d" or "a.b.c.d/n" (host bits must be zero). */
int rt_cidr_parse(const char *text, struct rt_cidr *out, struct herr *err);

const char *rt_exit_reason_name(enum rt_exit_reason reason);
const char *rt_state_name(enum rt_state state);

#endif
