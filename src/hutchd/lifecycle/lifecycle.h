/*
 * Sandbox lifecycle: create (intent recorded, runtime asked, agent
 * initialised), kill, deadlines enforced by a reaper thread, end reasons
 * kept for a while, and recovery when hutchd starts (re-adopt what still
 * runs, finish or roll back what a crash left half done).
 */
#ifndef HUTCH_LIFECYCLE_H
#define HUTCH_LIFECYCLE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "store.h"
#include "template.h"

/* What a sandbox gets when its template does not say. */
struct lc_resources {
	int64_t cpu_count, memory_mb, disk_mb;
};

struct lc_config {
	const char *data_dir;
	const char *run_dir;
	const char *template_dir;  /* <template_dir>/<name>/{rootfs,template.json} */
	const char *agent_dir;     /* the agent bundle (scripts/agent-bundle) */
	/* Two runtimes on one host need different cgroup_name (also the nft
	 * table), veth_prefix and net_cidr; NULL = the runtime's defaults. */
	const char *cgroup_name;
	const char *veth_prefix;
	const char *net_cidr;
	unsigned max_sandboxes;
	unsigned pool_size;
	unsigned egress_conn_max;  /* open outbound connections per sandbox; 0 = 2500 */
	unsigned agent_ready_ms;   /* how long the agent may take to answer */
	int64_t reaper_interval_ms;
	int64_t end_retention_ms;  /* ended rows (and reasons) kept this long */
	bool no_runtime;           /* run the control plane without sandboxes */
	struct lc_resources defaults;
	/* Sandboxes of warm_template kept started (agent listening, not yet
	 * configured) so that a create only applies its settings: 0 = none. */
	unsigned warm_pool;
	const char *warm_template;
	/* The node's server secret (SERVER_SECRET_LEN bytes): each sandbox's
	 * agent gets a secret derived from it that /init must carry. NULL: the
	 * agents take /init without one. */
	const unsigned char *server_secret;
	/* Templates: registries pulled over http (NULL: loopback only) and
	 * the age at which GC removes uploaded archives (0: 7 days). */
	const char *insecure_registries;
	int64_t template_upload_max_age_s;
	/* The CRIU binary for pauses that keep memory and for their resumes;
	 * NULL = the runtime's default (RT_CRIU_DEFAULT). */
	const char *criu;
};

/* What the runtime reports about a live sandbox, for the metrics endpoint. */
struct lc_stats {
	uint64_t cpu_usec;
	uint64_t memory_bytes;
	uint64_t disk_bytes;
};

struct lifecycle;

/* Opens the runtime (unless no_runtime), recovers, starts the reaper. */
int lc_start(struct store *st, const struct lc_config *cfg, struct lifecycle **out,
	     struct herr *err);
void lc_stop(struct lifecycle *lc);

/* True when sandboxes can be created on this node. */
bool lc_can_create(struct lifecycle *lc);

/*
 * Loads a template by the reference a create names (see tpl_load); the
 * caller clears it with tpl_clear. -ENOENT when there is none.
 */
int lc_template_get(struct lifecycle *lc, const char *ref, struct lc_template *out,
		    struct herr *err);
/* The same for a team: also its templates built through the API. */
int lc_template_get_team(struct lifecycle *lc, int64_t team, const char *ref,
			 struct lc_template *out, struct herr *err);

/* The registry and builder of templates built through the API (or NULL). */
struct tmpl_mgr;
struct tmpl_mgr *lc_templates(struct lifecycle *lc);

/* A template's resources, the node's defaults where it sets none. */
void lc_resources_for(struct lifecycle *lc, const struct lc_template *tpl,
		      struct lc_resources *out);

/*
 * The id for a new sandbox of template tpl_name: one of the warm pool's
 * when it has one ready (the create then skips starting a sandbox), else a
 * fresh one. A pooled id not created within a minute is discarded.
 */
int lc_new_id(struct lifecycle *lc, const char *tpl_name, char id[SBX_ID_LEN + 1],
	      struct herr *err);

/*
 * Creating is two steps so that the API can check a team's concurrency cap
 * and record the new row under one lock: lc_create_begin commits the row in
 * state "creating" (intent "create") before anything else happens;
 * lc_create_finish loads the row's template, asks the runtime, initialises
 * the agent (with the template's user, workdir and env) and marks the row
 * "running" (updating sb->started_at/end_at). On failure the row is ended
 * with the reason and the runtime's leftovers are removed.
 * -ENOENT: unknown template; -ENOSYS: no runtime on this node; -ETIMEDOUT:
 * the agent was not ready in agent_ready_ms.
 */
int lc_create_begin(struct lifecycle *lc, const struct store_sandbox *sb,
		    struct herr *err);
/* lc_create_begin refused with -EDQUOT when the team already has max_active
 * active sandboxes: the check and the insert are one step of the store. */
int lc_create_begin_capped(struct lifecycle *lc, const struct store_sandbox *sb,
			   int64_t max_active, struct herr *err);
int lc_create_finish(struct lifecycle *lc, struct store_sandbox *sb, struct herr *err);

/*
 * Called (from any thread) after a sandbox has ended for any reason (kill,
 * timeout, failed create), once its runtime objects are gone: the proxy
 * uses it to drop connections still open into it. Set before traffic.
 */
typedef void (*lc_end_fn)(void *arg, const char *id);
void lc_set_end_hook(struct lifecycle *lc, lc_end_fn fn, void *arg);

/* Kills a live sandbox (a paused one loses its images and disk) and records
 * reason; 1 killed, 0 nothing live by that id. Waits for a pause or resume
 * of it under way. */
int lc_kill(struct lifecycle *lc, const char *id, const char *reason, struct herr *err);

/*
 * Pauses a running sandbox (docs/snapshot.md, "Lifecycle"): with keep_memory
 * its processes are checkpointed with CRIU, else they are stopped and only
 * its disk is kept. The proxy stops routing to it and its proxied
 * connections are closed first; its deadline stops. -EALREADY: paused
 * already; -ENOENT: not live; -EBUSY: a kill is under way; other errors:
 * the pause failed and the sandbox keeps running (the message says why).
 */
int lc_pause(struct lifecycle *lc, const char *id, bool keep_memory, struct herr *err);

/*
 * Resumes a paused sandbox under the same id, tokens and network rules,
 * with a deadline timeout_s from now. keep_memory false (the SDK's
 * onResume 'reboot') restores no processes: memory images are dropped and
 * the sandbox starts afresh on its disk. 1: resumed; 0: it was running (a
 * concurrent resume won, or it never paused); -ENOENT: not live; other
 * errors: it stays paused and may be resumed again.
 */
int lc_resume(struct lifecycle *lc, const char *id, int64_t timeout_s, bool keep_memory,
	      struct herr *err);

/*
 * A connected TCP socket to 127.0.0.1:port inside a running sandbox (for the
 * proxy); the caller closes it. -ENOENT when it is not running here.
 */
int lc_dial(struct lifecycle *lc, const char *id, uint16_t port, struct herr *err);

/* Applies a stored network object to a running sandbox. */
int lc_apply_network(struct lifecycle *lc, const char *id, json_t *network,
		     struct herr *err);

int lc_stats(struct lifecycle *lc, const char *id, struct lc_stats *out,
	     struct herr *err);

/* One pass of the reaper at time now (exposed for tests): returns kills made. */
int lc_reap_once(struct lifecycle *lc, int64_t now);

#endif
