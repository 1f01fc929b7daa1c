/*
 * The control plane's durable state: teams, API keys, sandboxes and their
 * events, behind one interface so that another database (PostgreSQL, for
 * several nodes) can replace SQLite later without touching the callers.
 *
 * Every write is committed and on disk (fdatasync, shared by concurrent
 * writers) before the function returns, so a caller may acknowledge it to a
 * client. Rows carry the node that owns them. Functions are safe to call
 * from any thread.
 *
 * Times are milliseconds since the Unix epoch (int64).
 */
#ifndef HUTCH_STORE_H
#define HUTCH_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

struct store;

/* Opens (creating if needed) the database at path and migrates its schema. */
int store_open(const char *path, const char *node_id, struct store **out,
	       struct herr *err);
void store_close(struct store *st);

/* The schema version the database is at after store_open. */
int store_schema_version(struct store *st);

/* ---- teams and API keys ---- */

/* Finds the team by name, creating it if absent. */
int store_team_ensure(struct store *st, const char *name, int64_t *team_id,
		      struct herr *err);

/* SHA-256 of a key, as 64 lowercase hex characters plus NUL. */
#define STORE_KEY_HASH_HEX 65

struct store_key {
	int64_t id;
	int64_t team_id;
	char team[128];
	char hint[32];      /* "e2b_1234…abcd": enough to recognise, not to use */
	int64_t created_at;
	int64_t revoked_at; /* 0 while valid */
	int64_t last_used_at;
};

int store_key_add(struct store *st, int64_t team_id, const char *hash_hex,
		  const char *hint, int64_t *key_id, struct herr *err);

/*
 * Looks up a valid (not revoked) key by its hash. The row is found by a
 * prefix of the hash and the full hash is then compared in constant time.
 * Returns 1 and fills out when found, 0 when not.
 */
int store_key_lookup(struct store *st, const char *hash_hex, struct store_key *out,
		     struct herr *err);

/* Counts the keys that are not revoked. */
int store_key_count_valid(struct store *st, int64_t *count, struct herr *err);

typedef int (*store_key_cb)(const struct store_key *key, void *ctx);
int store_key_list(struct store *st, store_key_cb cb, void *ctx, struct herr *err);

/* Revokes key id; -ENOENT when no such valid key. */
int store_key_revoke(struct store *st, int64_t key_id, struct herr *err);

/* ---- sandboxes ---- */

/*
 * Sandbox states. A row is inserted as CREATING with intent "create" before the
 * runtime is asked for anything; an operation in flight on a live sandbox
 * records its intent ("kill", "pause", "pause-fs" for a memory-less pause,
 * "resume") first, so that a restart finds half-done work and finishes or
 * rolls it back.
 */
#define SBX_CREATING "creating"
#define SBX_RUNNING "running"
#define SBX_PAUSED "paused"
#define SBX_ENDED "ended"

#define SBX_ID_LEN 21 /* "i" + 20 of [a-z0-9] */

struct store_sandbox {
	char id[SBX_ID_LEN + 1];
	int64_t team_id;
	char *template_id;
	char state[16];
	char intent[16];       /* "" when nothing is in flight */
	int64_t created_at;
	int64_t started_at;    /* start of the current run */
	int64_t end_at;        /* deadline */
	int64_t timeout_s;     /* timeout asked at create */
	char *metadata;        /* JSON object of strings, never NULL */
	char *env;             /* JSON object of strings, never NULL */
	char *network;         /* JSON object, never NULL */
	char *lifecycle;       /* JSON object {onTimeout, autoResume} */
	char *access_token;    /* hex, "" when not secure */
	int64_t cpu_count;
	int64_t memory_mb;
	int64_t disk_mb;
	char *envd_version;
	char *end_reason;      /* "" while not ended */
	int64_t ended_at;
	char *node;
};

void store_sandbox_clear(struct store_sandbox *s);
static inline void cleanup_sandboxp(struct store_sandbox *s)
{
	store_sandbox_clear(s);
}
#define _cleanup_sandbox_ __attribute__((cleanup(cleanup_sandboxp)))

/* Inserts a new row (state CREATING, intent "create"); -EEXIST on an id clash. */
int store_sandbox_insert(struct store *st, const struct store_sandbox *s,
			 struct herr *err);
/* The same, refused with -EDQUOT (nothing written) when the team already has
 * max_active active sandboxes (see store_sandbox_count_active); 0 = no cap. */
int store_sandbox_insert_capped(struct store *st, const struct store_sandbox *s,
				int64_t max_active, struct herr *err);

/* Reads one sandbox; team_id < 0 means any team. Returns 1 found, 0 not. */
int store_sandbox_get(struct store *st, const char *id, int64_t team_id,
		      struct store_sandbox *out, struct herr *err);

/* CREATING -> RUNNING with the run's start and deadline; clears the intent. */
int store_sandbox_set_running(struct store *st, const char *id, int64_t started_at,
			      int64_t end_at, struct herr *err);

/* Records an operation in flight ("" clears it). */
int store_sandbox_set_intent(struct store *st, const char *id, const char *intent,
			     struct herr *err);

/*
 * Moves the deadline of a RUNNING sandbox. With only_extend, the deadline is
 * moved only when end_at is later. Returns 1 when a running row was found.
 */
int store_sandbox_set_end_at(struct store *st, const char *id, int64_t end_at,
			     bool only_extend, struct herr *err);

/* RUNNING -> PAUSED, clearing the intent; end_at becomes the pause time
 * (what the API reports as endAt of a paused sandbox, and no deadline runs
 * while paused). A resume goes back with store_sandbox_set_running.
 * Returns 1 when a running row was changed. */
int store_sandbox_set_paused(struct store *st, const char *id, int64_t paused_at,
			     struct herr *err);

int store_sandbox_set_network(struct store *st, const char *id, const char *network,
			      struct herr *err);

/* Marks the sandbox ENDED with a reason; returns 1 if it was not ended yet. */
int store_sandbox_end(struct store *st, const char *id, const char *reason,
		      int64_t ended_at, struct herr *err);

/* Counts a team's sandboxes that hold resources (creating, running, paused). */
int store_sandbox_count_active(struct store *st, int64_t team_id, int64_t *count,
			       struct herr *err);

/* Counts sandboxes by state on this node, for metrics. */
struct store_state_counts {
	int64_t creating, running, paused, ended;
};
int store_sandbox_count_states(struct store *st, struct store_state_counts *c,
			       struct herr *err);

typedef int (*store_sandbox_cb)(const struct store_sandbox *s, void *ctx);

/* This node's rows in the given state (NULL: all not ended). */
int store_sandbox_each(struct store *st, const char *state, store_sandbox_cb cb,
		       void *ctx, struct herr *err);

/* Ids of running sandboxes whose deadline is at or before now (up to cap). */
int store_sandbox_expired(struct store *st, int64_t now, char (*ids)[SBX_ID_LEN + 1],
			  int cap, int *n, struct herr *err);

/* Deletes ended rows (and their events) that ended before the given time. */
int store_sandbox_purge_ended(struct store *st, int64_t before, int64_t *deleted,
			      struct herr *err);

#define STORE_META_FILTER_MAX 32

struct store_list_query {
	int64_t team_id;
	bool want_running, want_paused, want_ended;
	const char *meta_keys[STORE_META_FILTER_MAX];
	const char *meta_values[STORE_META_FILTER_MAX];
	int n_meta;
	int64_t started_after;   /* inclusive; 0 = no bound */
	const char *template_id; /* NULL = any */
	bool ascending;
	int limit;               /* rows wanted on this page */
	/* cursor: the last row of the previous page, when has_cursor */
	bool has_cursor;
	int64_t cursor_started_at;
	char cursor_id[SBX_ID_LEN + 1];
};

/*
 * Lists one page. Calls cb for up to q->limit rows; *more is set when at
 * least one further row exists after them.
 */
int store_sandbox_list(struct store *st, const struct store_list_query *q,
		       store_sandbox_cb cb, void *ctx, bool *more, struct herr *err);

/* ---- snapshots (docs/api.md, "Snapshots and fork") ---- */

struct store_snapshot {
	char id[SBX_ID_LEN + 1];
	int64_t team_id;
	char sandbox_id[SBX_ID_LEN + 1];
	char *template_id;
	char *name;            /* "" when none was given */
	int64_t created_at;
	int64_t size_bytes;    /* bytes the snapshot's files take on disk */
	char *config;          /* JSON object: what a fork takes of the source */
	char *node;
};

void store_snapshot_clear(struct store_snapshot *s);
static inline void cleanup_snapshotp(struct store_snapshot *s)
{
	store_snapshot_clear(s);
}
#define _cleanup_snapshot_ __attribute__((cleanup(cleanup_snapshotp)))

/* -EEXIST on an id clash. */
int store_snapshot_insert(struct store *st, const struct store_snapshot *s,
			  struct herr *err);
/* team_id < 0 means any team. Returns 1 found, 0 not. */
int store_snapshot_get(struct store *st, const char *id, int64_t team_id,
		       struct store_snapshot *out, struct herr *err);
typedef int (*store_snapshot_cb)(const struct store_snapshot *s, void *ctx);
/* A team's snapshots, oldest first; sandbox_id NULL = of every sandbox. cb
 * runs under the store's lock: it must not call the store. */
int store_snapshot_list(struct store *st, int64_t team_id, const char *sandbox_id,
			store_snapshot_cb cb, void *ctx, struct herr *err);
/* Returns 1 when a row of that team was deleted, 0 when there was none. */
int store_snapshot_delete(struct store *st, const char *id, int64_t team_id,
			  struct herr *err);

/* ---- events ---- */

/* Appends an event about a sandbox (kind: "created", "killed", ...). */
int store_event_add(struct store *st, const char *sandbox_id, const char *kind,
		    const char *detail, struct herr *err);

typedef int (*store_event_cb)(int64_t at, const char *kind, const char *detail,
			      void *ctx);
int store_event_list(struct store *st, const char *sandbox_id, int64_t since,
		     int limit, store_event_cb cb, void *ctx, struct herr *err);

int64_t store_now_ms(void);

#endif
