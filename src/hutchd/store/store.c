/*
 * SQLite implementation of store.h.
 *
 * One connection, serialised by a mutex: SQLite allows one writer at a time
 * anyway, and the daemon's writes are small. WAL mode lets readers of other
 * processes (hutchd keys ...) run beside the daemon.
 *
 * Durability by group commit: SQLite runs with synchronous=NORMAL, so a
 * COMMIT only write()s its frames to the WAL, and every writing function
 * then waits, after it has let go of the store mutex, until an fdatasync of
 * the WAL that began after its COMMIT has returned. Concurrent writers share
 * one fdatasync instead of queueing one each behind the mutex (an fdatasync
 * costs 3-12 ms on this kind of disk, a commit's write() microseconds). No
 * function returns before its change is on disk, so a caller may still
 * acknowledge it at once: the guarantee synchronous=FULL gave, at a lower
 * cost. What NORMAL itself skips is only the sync at each commit; the WAL is
 * still synced before a checkpoint and the database after it.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cleanup.h"
#include "log.h"
#include "migrations.h"

struct store {
	sqlite3 *db;
	pthread_mutex_t lock;
	char node[128];
	int version;
	sqlite3_stmt *get_stmt;	/* store_sandbox_get's, compiled once */

	/* Group commit (see the top of the file). */
	char wal_path[4096 + 8];
	int wal_fd;			/* read-only, only for fdatasync */
	_Atomic uint64_t written;	/* write sections finished, under lock */
	pthread_mutex_t sync_lock;
	pthread_cond_t synced_cond;
	uint64_t synced;		/* every section <= this is on disk */
	bool syncing;			/* a thread is in fdatasync */
};

/* Scope guard for the store mutex, for functions that only read. One that
 * writes takes WRITE_LOCKED instead: under synchronous=NORMAL a write made
 * under LOCKED would return before it is on disk. */
static void unlock_store(struct store **stp)
{
	if (*stp)
		pthread_mutex_unlock(&(*stp)->lock);
}
#define LOCKED(st)                                                              \
	struct store *_locked_ __attribute__((cleanup(unlock_store))) = (st);  \
	pthread_mutex_lock(&_locked_->lock)

static void wait_durable(struct store *st, uint64_t section);

/*
 * Scope guard of a function that writes: numbers its section while it still
 * holds the mutex (so every COMMIT of that section has been written to the
 * WAL), lets go of the mutex, then waits for that number to be synced.
 * A section that ends up writing nothing costs at most a shared fdatasync.
 */
static void unlock_store_durable(struct store **stp)
{
	struct store *st = *stp;
	uint64_t section;

	if (!st)
		return;
	section = atomic_fetch_add(&st->written, 1) + 1;
	pthread_mutex_unlock(&st->lock);
	wait_durable(st, section);
}
#define WRITE_LOCKED(st)                                                        \
	struct store *_wlocked_ __attribute__((cleanup(unlock_store_durable))) =  \
		(st);                                                           \
	pthread_mutex_lock(&_wlocked_->lock)

static void finalize_stmt(sqlite3_stmt **s)
{
	sqlite3_finalize(*s);
}
#define _cleanup_stmt_ __attribute__((cleanup(finalize_stmt)))

int64_t store_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int db_err(struct store *st, struct herr *err, const char *what)
{
	int rc = sqlite3_extended_errcode(st->db);
	int code = -EIO;

	if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED)
		code = -EBUSY;
	else if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
		code = -EEXIST;
	else if ((rc & 0xff) == SQLITE_FULL)
		code = -ENOSPC;
	return herr_set(err, code, "store: %s: %s", what, sqlite3_errmsg(st->db));
}

static int prepare(struct store *st, const char *sql, sqlite3_stmt **out,
		   struct herr *err)
{
	if (sqlite3_prepare_v2(st->db, sql, -1, out, NULL) != SQLITE_OK)
		return db_err(st, err, "preparing statement");
	return 0;
}

static int exec_sql(struct store *st, const char *sql, struct herr *err)
{
	char *msg = NULL;

	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		herr_set(err, -EIO, "store: %s", msg ? msg : sqlite3_errmsg(st->db));
		sqlite3_free(msg);
		return err ? err->code : -EIO;
	}
	return 0;
}

/* Runs a statement that returns no rows; returns the number of changed rows. */
static int step_done(struct store *st, sqlite3_stmt *s, const char *what,
		     struct herr *err)
{
	if (sqlite3_step(s) != SQLITE_DONE)
		return db_err(st, err, what);
	return sqlite3_changes(st->db);
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
	sqlite3_bind_text(s, i, v ? v : "", -1, SQLITE_TRANSIENT);
}

/* ---- group commit ---- */

/*
 * Opens our own descriptor on the WAL. fdatasync flushes the file's dirty
 * pages whichever descriptor wrote them, so this one covers SQLite's writes
 * without touching SQLite's own file objects from another thread.
 */
static int open_wal(struct store *st, struct herr *err)
{
	int fd = open(st->wal_path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return herr_sys(err, -errno, "store: opening %s", st->wal_path);
	if (st->wal_fd >= 0)
		close(st->wal_fd);
	st->wal_fd = fd;
	return 0;
}

/*
 * Syncs the WAL. SQLite unlinks the WAL only when its last connection
 * closes (ours stays open) or the journal mode changes (we never do), but if
 * it ever happened the descriptor would point at a dead file: a link count
 * of zero sends us to the new one, opened before the sync so that it covers
 * everything written to it.
 */
static int sync_wal(struct store *st, struct herr *err)
{
	struct stat sb;

	if (fstat(st->wal_fd, &sb) < 0)
		return herr_sys(err, -errno, "store: fstat %s", st->wal_path);
	if (sb.st_nlink == 0 && open_wal(st, err) < 0)
		return err->code;
	if (fdatasync(st->wal_fd) < 0)
		return herr_sys(err, -errno, "store: fdatasync %s", st->wal_path);
	return 0;
}

/*
 * Returns once every write section up to `section` is on disk. The first
 * waiter with no sync under way runs one for every section finished so far;
 * the others wait for it and go again if it started before their section.
 *
 * A failed fdatasync is fatal, as in PostgreSQL: after one, Linux may have
 * dropped the dirty pages and marked them clean, so a retry can succeed
 * without the data ever reaching the disk. Acknowledging would then lie;
 * ending the daemon lets a restart recover from what is really stored.
 */
static void wait_durable(struct store *st, uint64_t section)
{
	struct herr err;

	pthread_mutex_lock(&st->sync_lock);
	while (st->synced < section) {
		if (st->syncing) {
			pthread_cond_wait(&st->synced_cond, &st->sync_lock);
			continue;
		}
		st->syncing = true;
		uint64_t upto = atomic_load(&st->written);
		pthread_mutex_unlock(&st->sync_lock);
		if (sync_wal(st, &err) < 0) {
			log_error("store", NULL, "%s: stopping, a commit may not be "
				  "durable", err.msg);
			abort();
		}
		pthread_mutex_lock(&st->sync_lock);
		st->syncing = false;
		if (upto > st->synced)
			st->synced = upto;
		pthread_cond_broadcast(&st->synced_cond);
	}
	pthread_mutex_unlock(&st->sync_lock);
}

/*
 * Switches to synchronous=NORMAL once the schema is migrated (migrations
 * commit with FULL) and fsyncs the database's folder once, so that the WAL's
 * own directory entry is durable: FULL did that when it created the file.
 */
static int start_group_commit(struct store *st, const char *db_path,
			      struct herr *err)
{
	char dir[4096];
	const char *slash = strrchr(db_path, '/');
	int rc = exec_sql(st, "PRAGMA synchronous=NORMAL", err);

	if (rc < 0)
		return rc;
	snprintf(st->wal_path, sizeof(st->wal_path), "%s-wal", db_path);
	rc = open_wal(st, err);
	if (rc < 0)
		return rc;
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - db_path) + (slash == db_path),
			 db_path);
	_cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0)
		return herr_sys(err, -errno, "store: syncing folder %s", dir);
	return fdatasync(st->wal_fd) < 0 ?
		herr_sys(err, -errno, "store: fdatasync %s", st->wal_path) : 0;
}

/* ---- opening and migrations ---- */

static int read_version(struct store *st, int *version, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc = exec_sql(st, "CREATE TABLE IF NOT EXISTS schema_version ("
			      " version INTEGER NOT NULL)", err);

	if (rc < 0)
		return rc;
	rc = prepare(st, "SELECT max(version) FROM schema_version", &s, err);
	if (rc < 0)
		return rc;
	if (sqlite3_step(s) != SQLITE_ROW)
		return db_err(st, err, "reading schema version");
	*version = sqlite3_column_int(s, 0);
	return 0;
}

/* Each migration runs in its own transaction with its version bump. */
static int apply_migration(struct store *st, int version, const char *sql,
			   struct herr *err)
{
	char bump[96];
	int rc = exec_sql(st, "BEGIN IMMEDIATE", err);

	if (rc < 0)
		return rc;
	snprintf(bump, sizeof(bump),
		 "DELETE FROM schema_version; INSERT INTO schema_version VALUES (%d)",
		 version);
	rc = exec_sql(st, sql, err);
	if (rc == 0)
		rc = exec_sql(st, bump, err);
	if (rc == 0)
		rc = exec_sql(st, "COMMIT", err);
	if (rc < 0) {
		exec_sql(st, "ROLLBACK", NULL);
		return herr_wrap(err, "migrating schema to version %d", version);
	}
	return 0;
}

static int migrate(struct store *st, struct herr *err)
{
	int version = 0, rc = read_version(st, &version, err);

	if (rc < 0)
		return rc;
	if (version > store_migration_count)
		return herr_set(err, -EPROTO,
				"store: database schema version %d is newer than this "
				"hutchd knows (%d)", version, store_migration_count);
	for (int v = version + 1; v <= store_migration_count; v++) {
		rc = apply_migration(st, v, store_migrations[v - 1], err);
		if (rc < 0)
			return rc;
	}
	st->version = store_migration_count;
	return 0;
}

static int configure_db(struct store *st, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	const unsigned char *mode;
	int rc;

	sqlite3_busy_timeout(st->db, 5000);
	rc = prepare(st, "PRAGMA journal_mode=WAL", &s, err);
	if (rc < 0)
		return rc;
	if (sqlite3_step(s) != SQLITE_ROW)
		return db_err(st, err, "enabling WAL");
	mode = sqlite3_column_text(s, 0);
	if (!mode || strcmp((const char *)mode, "wal") != 0)
		return herr_set(err, -EIO, "store: database refused WAL mode (got %s)",
				mode ? (const char *)mode : "nothing");
	return exec_sql(st, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON", err);
}

int store_open(const char *path, const char *node_id, struct store **out,
	       struct herr *err)
{
	struct store *st = calloc(1, sizeof(*st));
	int rc;

	if (!st)
		return herr_set(err, -ENOMEM, "store: out of memory");
	pthread_mutex_init(&st->lock, NULL);
	pthread_mutex_init(&st->sync_lock, NULL);
	pthread_cond_init(&st->synced_cond, NULL);
	st->wal_fd = -1;
	snprintf(st->node, sizeof(st->node), "%s", node_id);
	if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			    SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		rc = herr_set(err, -EIO, "store: opening %s: %s", path,
			      st->db ? sqlite3_errmsg(st->db) : "out of memory");
		store_close(st);
		return rc;
	}
	rc = configure_db(st, err);
	if (rc == 0)
		rc = migrate(st, err);
	if (rc == 0)
		rc = start_group_commit(st, path, err);
	if (rc < 0) {
		herr_wrap(err, "database %s", path);
		store_close(st);
		return rc;
	}
	*out = st;
	return 0;
}

void store_close(struct store *st)
{
	if (!st)
		return;
	sqlite3_finalize(st->get_stmt);
	sqlite3_close(st->db);
	if (st->wal_fd >= 0)
		close(st->wal_fd);
	pthread_cond_destroy(&st->synced_cond);
	pthread_mutex_destroy(&st->sync_lock);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

int store_schema_version(struct store *st)
{
	return st->version;
}

/* ---- teams and keys ---- */

int store_team_ensure(struct store *st, const char *name, int64_t *team_id,
		      struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *ins = NULL;
	_cleanup_stmt_ sqlite3_stmt *sel = NULL;
	int rc;
	WRITE_LOCKED(st);

	rc = prepare(st, "INSERT OR IGNORE INTO teams (name, created_at, node)"
			 " VALUES (?, ?, ?)", &ins, err);
	if (rc < 0)
		return rc;
	bind_text(ins, 1, name);
	sqlite3_bind_int64(ins, 2, store_now_ms());
	bind_text(ins, 3, st->node);
	rc = step_done(st, ins, "creating team", err);
	if (rc < 0)
		return rc;
	rc = prepare(st, "SELECT id FROM teams WHERE name = ?", &sel, err);
	if (rc < 0)
		return rc;
	bind_text(sel, 1, name);
	if (sqlite3_step(sel) != SQLITE_ROW)
		return db_err(st, err, "reading team");
	*team_id = sqlite3_column_int64(sel, 0);
	return 0;
}

/* Rows are found by this many leading hex digits of the hash. */
#define KEY_LOOKUP_HEX 16

int store_key_add(struct store *st, int64_t team_id, const char *hash_hex,
		  const char *hint, int64_t *key_id, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	WRITE_LOCKED(st);

	if (strlen(hash_hex) != STORE_KEY_HASH_HEX - 1)
		return herr_set(err, -EINVAL, "store: key hash must be %d hex digits",
				STORE_KEY_HASH_HEX - 1);
	rc = prepare(st, "INSERT INTO api_keys (team_id, lookup, hash, hint, created_at,"
			 " node) VALUES (?, substr(?, 1, 16), ?, ?, ?, ?)", &s, err);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(s, 1, team_id);
	bind_text(s, 2, hash_hex);
	bind_text(s, 3, hash_hex);
	bind_text(s, 4, hint);
	sqlite3_bind_int64(s, 5, store_now_ms());
	bind_text(s, 6, st->node);
	rc = step_done(st, s, "adding key", err);
	if (rc < 0)
		return rc;
	if (key_id)
		*key_id = sqlite3_last_insert_rowid(st->db);
	return 0;
}

static void copy_col(char *dst, size_t cap, sqlite3_stmt *s, int col)
{
	const unsigned char *v = sqlite3_column_text(s, col);

	snprintf(dst, cap, "%s", v ? (const char *)v : "");
}

#define KEY_COLS "k.id, k.team_id, t.name, k.hint, k.created_at, k.revoked_at, " \
		 "k.last_used_at"

static void read_key(sqlite3_stmt *s, struct store_key *k)
{
	k->id = sqlite3_column_int64(s, 0);
	k->team_id = sqlite3_column_int64(s, 1);
	copy_col(k->team, sizeof(k->team), s, 2);
	copy_col(k->hint, sizeof(k->hint), s, 3);
	k->created_at = sqlite3_column_int64(s, 4);
	k->revoked_at = sqlite3_column_int64(s, 5);
	k->last_used_at = sqlite3_column_int64(s, 6);
}

int store_key_lookup(struct store *st, const char *hash_hex, struct store_key *out,
		     struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	char lookup[KEY_LOOKUP_HEX + 1];
	int rc, found = 0;
	LOCKED(st);

	if (strlen(hash_hex) != STORE_KEY_HASH_HEX - 1)
		return 0;
	memcpy(lookup, hash_hex, KEY_LOOKUP_HEX);
	lookup[KEY_LOOKUP_HEX] = '\0';
	rc = prepare(st, "SELECT " KEY_COLS ", k.hash FROM api_keys k"
			 " JOIN teams t ON t.id = k.team_id"
			 " WHERE k.lookup = ? AND k.revoked_at = 0", &s, err);
	if (rc < 0)
		return rc;
	bind_text(s, 1, lookup);
	/*
	 * The prefix only narrows the search; the decision is the full hash,
	 * compared in constant time so response timing says nothing about how
	 * close a guess came.
	 */
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const void *h = sqlite3_column_text(s, 7);

		if (h && sqlite3_column_bytes(s, 7) == STORE_KEY_HASH_HEX - 1 &&
		    CRYPTO_memcmp(h, hash_hex, STORE_KEY_HASH_HEX - 1) == 0) {
			read_key(s, out);
			found = 1;
		}
	}
	if (rc != SQLITE_DONE)
		return db_err(st, err, "looking up key");
	return found;
}

int store_key_count_valid(struct store *st, int64_t *count, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	LOCKED(st);

	rc = prepare(st, "SELECT count(*) FROM api_keys WHERE revoked_at = 0", &s, err);
	if (rc < 0)
		return rc;
	if (sqlite3_step(s) != SQLITE_ROW)
		return db_err(st, err, "counting keys");
	*count = sqlite3_column_int64(s, 0);
	return 0;
}

int store_key_list(struct store *st, store_key_cb cb, void *ctx, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	LOCKED(st);

	rc = prepare(st, "SELECT " KEY_COLS " FROM api_keys k"
			 " JOIN teams t ON t.id = k.team_id ORDER BY k.id", &s, err);
	if (rc < 0)
		return rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct store_key k;

		read_key(s, &k);
		if (cb(&k, ctx) != 0)
			return 0;
	}
	if (rc != SQLITE_DONE)
		return db_err(st, err, "listing keys");
	return 0;
}

int store_key_revoke(struct store *st, int64_t key_id, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	WRITE_LOCKED(st);

	rc = prepare(st, "UPDATE api_keys SET revoked_at = ? WHERE id = ?"
			 " AND revoked_at = 0", &s, err);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(s, 1, store_now_ms());
	sqlite3_bind_int64(s, 2, key_id);
	rc = step_done(st, s, "revoking key", err);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return herr_set(err, -ENOENT, "no valid API key with id %lld",
				(long long)key_id);
	return 0;
}

/* ---- sandboxes ---- */

void store_sandbox_clear(struct store_sandbox *s)
{
	free(s->template_id);
	free(s->metadata);
	free(s->env);
	free(s->network);
	free(s->lifecycle);
	free(s->access_token);
	free(s->envd_version);
	free(s->end_reason);
	free(s->node);
	memset(s, 0, sizeof(*s));
}

#define SBX_COLS "id, team_id, template_id, state, intent, created_at, started_at," \
		 " end_at, timeout_s, metadata, env, network, lifecycle, access_token," \
		 " cpu_count, memory_mb, disk_mb, envd_version, end_reason, ended_at, node"

static char *col_dup(sqlite3_stmt *s, int col)
{
	const unsigned char *v = sqlite3_column_text(s, col);

	return strdup(v ? (const char *)v : "");
}

static int read_sandbox(sqlite3_stmt *s, struct store_sandbox *o)
{
	memset(o, 0, sizeof(*o));
	copy_col(o->id, sizeof(o->id), s, 0);
	o->team_id = sqlite3_column_int64(s, 1);
	o->template_id = col_dup(s, 2);
	copy_col(o->state, sizeof(o->state), s, 3);
	copy_col(o->intent, sizeof(o->intent), s, 4);
	o->created_at = sqlite3_column_int64(s, 5);
	o->started_at = sqlite3_column_int64(s, 6);
	o->end_at = sqlite3_column_int64(s, 7);
	o->timeout_s = sqlite3_column_int64(s, 8);
	o->metadata = col_dup(s, 9);
	o->env = col_dup(s, 10);
	o->network = col_dup(s, 11);
	o->lifecycle = col_dup(s, 12);
	o->access_token = col_dup(s, 13);
	o->cpu_count = sqlite3_column_int64(s, 14);
	o->memory_mb = sqlite3_column_int64(s, 15);
	o->disk_mb = sqlite3_column_int64(s, 16);
	o->envd_version = col_dup(s, 17);
	o->end_reason = col_dup(s, 18);
	o->ended_at = sqlite3_column_int64(s, 19);
	o->node = col_dup(s, 20);
	if (!o->template_id || !o->metadata || !o->env || !o->network || !o->lifecycle ||
	    !o->access_token || !o->envd_version || !o->end_reason || !o->node) {
		store_sandbox_clear(o);
		return -ENOMEM;
	}
	return 0;
}

static const char *or_default(const char *v, const char *def)
{
	return v && *v ? v : def;
}

static int count_query(struct store *st, const char *sql, int64_t arg, int64_t *out,
		       struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc = prepare(st, sql, &s, err);

	if (rc < 0)
		return rc;
	sqlite3_bind_int64(s, 1, arg);
	if (sqlite3_step(s) != SQLITE_ROW)
		return db_err(st, err, "counting");
	*out = sqlite3_column_int64(s, 0);
	return 0;
}

static int count_active_unlocked(struct store *st, int64_t team_id, int64_t *count,
				 struct herr *err)
{
	return count_query(st, "SELECT count(*) FROM sandboxes WHERE team_id = ?"
			       " AND state <> 'ended'", team_id, count, err);
}

static int insert_unlocked(struct store *st, const struct store_sandbox *x,
			   struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;

	rc = prepare(st, "INSERT INTO sandboxes (" SBX_COLS ") VALUES (?, ?, ?, ?, ?,"
			 " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0, ?)", &s, err);
	if (rc < 0)
		return rc;
	bind_text(s, 1, x->id);
	sqlite3_bind_int64(s, 2, x->team_id);
	bind_text(s, 3, x->template_id);
	bind_text(s, 4, SBX_CREATING);
	bind_text(s, 5, "create");
	sqlite3_bind_int64(s, 6, x->created_at);
	sqlite3_bind_int64(s, 7, x->started_at);
	sqlite3_bind_int64(s, 8, x->end_at);
	sqlite3_bind_int64(s, 9, x->timeout_s);
	bind_text(s, 10, or_default(x->metadata, "{}"));
	bind_text(s, 11, or_default(x->env, "{}"));
	bind_text(s, 12, or_default(x->network, "{}"));
	bind_text(s, 13, or_default(x->lifecycle, "{}"));
	bind_text(s, 14, x->access_token);
	sqlite3_bind_int64(s, 15, x->cpu_count);
	sqlite3_bind_int64(s, 16, x->memory_mb);
	sqlite3_bind_int64(s, 17, x->disk_mb);
	bind_text(s, 18, x->envd_version);
	bind_text(s, 19, st->node);
	rc = step_done(st, s, "inserting sandbox", err);
	return rc < 0 ? rc : 0;
}

int store_sandbox_insert(struct store *st, const struct store_sandbox *x,
			 struct herr *err)
{
	WRITE_LOCKED(st);
	return insert_unlocked(st, x, err);
}

/*
 * The count and the insert happen under the store's mutex, which every
 * write takes: no other insert can slip in between, so the cap holds
 * without a lock of the caller's around the commit (whose flush concurrent
 * creates then share).
 */
int store_sandbox_insert_capped(struct store *st, const struct store_sandbox *x,
				int64_t max_active, struct herr *err)
{
	int64_t active = 0;
	int rc;
	WRITE_LOCKED(st);

	if (max_active > 0) {
		rc = count_active_unlocked(st, x->team_id, &active, err);
		if (rc < 0)
			return rc;
		if (active >= max_active)
			return herr_set(err, -EDQUOT, "team %lld has %lld active sandboxes,"
					" the most its plan allows",
					(long long)x->team_id, (long long)active);
	}
	return insert_unlocked(st, x, err);
}

/* Leaves a kept statement ready for its next use, unbound. */
static void reset_stmt(sqlite3_stmt **s)
{
	if (*s) {
		sqlite3_reset(*s);
		sqlite3_clear_bindings(*s);
	}
}

/*
 * Every proxied request and most API calls look a sandbox up: the statement
 * is compiled once and kept (compiling it was about 43 of the call's 50 us
 * here); the store's mutex makes its one user at a time.
 */
int store_sandbox_get(struct store *st, const char *id, int64_t team_id,
		      struct store_sandbox *out, struct herr *err)
{
	int rc;
	/* Declared after the lock so that its reset runs before the unlock:
	 * the next user may step it the moment the mutex is free. */
	LOCKED(st);
	__attribute__((cleanup(reset_stmt))) sqlite3_stmt *s = NULL;

	if (!st->get_stmt &&
	    sqlite3_prepare_v3(st->db, "SELECT " SBX_COLS " FROM sandboxes WHERE id = ?"
			       " AND (? < 0 OR team_id = ?)", -1, SQLITE_PREPARE_PERSISTENT,
			       &st->get_stmt, NULL) != SQLITE_OK)
		return db_err(st, err, "preparing statement");
	s = st->get_stmt;
	bind_text(s, 1, id);
	sqlite3_bind_int64(s, 2, team_id);
	sqlite3_bind_int64(s, 3, team_id);
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return 0;
	if (rc != SQLITE_ROW)
		return db_err(st, err, "reading sandbox");
	if (read_sandbox(s, out) < 0)
		return herr_set(err, -ENOMEM, "store: out of memory reading sandbox %s", id);
	return 1;
}

/* Runs an UPDATE bound as (text a, int64 b, int64 c, text id). */
static int update_row(struct store *st, const char *sql, const char *what,
		      const char *a, int64_t b, int64_t c, const char *id,
		      struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc = prepare(st, sql, &s, err);

	if (rc < 0)
		return rc;
	bind_text(s, 1, a);
	sqlite3_bind_int64(s, 2, b);
	sqlite3_bind_int64(s, 3, c);
	bind_text(s, 4, id);
	return step_done(st, s, what, err);
}

int store_sandbox_set_running(struct store *st, const char *id, int64_t started_at,
			      int64_t end_at, struct herr *err)
{
	WRITE_LOCKED(st);
	return update_row(st, "UPDATE sandboxes SET state = ?1, intent = '',"
			      " started_at = ?2, end_at = ?3 WHERE id = ?4"
			      " AND state <> 'ended'",
			  "marking sandbox running", SBX_RUNNING, started_at, end_at, id,
			  err);
}

int store_sandbox_set_intent(struct store *st, const char *id, const char *intent,
			     struct herr *err)
{
	WRITE_LOCKED(st);
	return update_row(st, "UPDATE sandboxes SET intent = ?1 WHERE id = ?4"
			      " AND ?2 = ?3", "recording intent", intent, 0, 0, id, err);
}

int store_sandbox_set_end_at(struct store *st, const char *id, int64_t end_at,
			     bool only_extend, struct herr *err)
{
	WRITE_LOCKED(st);
	return update_row(st, "UPDATE sandboxes SET end_at = CASE WHEN ?3 <> 0"
			      " THEN max(end_at, ?2) ELSE ?2 END"
			      " WHERE id = ?4 AND state = ?1",
			  "moving deadline", SBX_RUNNING, end_at, only_extend ? 1 : 0, id,
			  err);
}

int store_sandbox_set_paused(struct store *st, const char *id, int64_t paused_at,
			     struct herr *err)
{
	WRITE_LOCKED(st);
	return update_row(st, "UPDATE sandboxes SET state = ?1, intent = '', end_at = ?2"
			      " WHERE id = ?4 AND state = 'running' AND ?3 = 0",
			  "marking sandbox paused", SBX_PAUSED, paused_at, 0, id, err);
}

int store_sandbox_set_network(struct store *st, const char *id, const char *network,
			      struct herr *err)
{
	WRITE_LOCKED(st);
	return update_row(st, "UPDATE sandboxes SET network = ?1 WHERE id = ?4"
			      " AND ?2 = ?3", "updating network", network, 0, 0, id, err);
}

int store_sandbox_end(struct store *st, const char *id, const char *reason,
		      int64_t ended_at, struct herr *err)
{
	WRITE_LOCKED(st);
	return update_row(st, "UPDATE sandboxes SET state = 'ended', intent = '',"
			      " end_reason = ?1, ended_at = ?2 WHERE id = ?4"
			      " AND state <> 'ended' AND ?3 = 0",
			  "ending sandbox", reason, ended_at, 0, id, err);
}

int store_sandbox_count_active(struct store *st, int64_t team_id, int64_t *count,
			       struct herr *err)
{
	LOCKED(st);
	return count_active_unlocked(st, team_id, count, err);
}

int store_sandbox_count_states(struct store *st, struct store_state_counts *c,
			       struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	LOCKED(st);

	memset(c, 0, sizeof(*c));
	rc = prepare(st, "SELECT state, count(*) FROM sandboxes WHERE node = ?"
			 " GROUP BY state", &s, err);
	if (rc < 0)
		return rc;
	bind_text(s, 1, st->node);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *state = (const char *)sqlite3_column_text(s, 0);
		int64_t n = sqlite3_column_int64(s, 1);

		if (!state)
			continue;
		if (strcmp(state, SBX_CREATING) == 0)
			c->creating = n;
		else if (strcmp(state, SBX_RUNNING) == 0)
			c->running = n;
		else if (strcmp(state, SBX_PAUSED) == 0)
			c->paused = n;
		else if (strcmp(state, SBX_ENDED) == 0)
			c->ended = n;
	}
	if (rc != SQLITE_DONE)
		return db_err(st, err, "counting states");
	return 0;
}

/*
 * Reads all matching rows first and calls back after, unlocked, so that a
 * callback may use the store (recovery does).
 */
int store_sandbox_each(struct store *st, const char *state, store_sandbox_cb cb,
		       void *ctx, struct herr *err)
{
	struct store_sandbox *rows = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;

	pthread_mutex_lock(&st->lock);
	{
		_cleanup_stmt_ sqlite3_stmt *s = NULL;

		rc = prepare(st, "SELECT " SBX_COLS " FROM sandboxes WHERE node = ?1"
				 " AND (?2 = '' AND state <> 'ended' OR state = ?2)"
				 " ORDER BY created_at", &s, err);
		if (rc == 0) {
			bind_text(s, 1, st->node);
			bind_text(s, 2, state ? state : "");
		}
		while (rc == 0 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
			rc = 0;
			if (n == cap) {
				size_t ncap = cap ? cap * 2 : 16;
				void *p = realloc(rows, ncap * sizeof(*rows));

				if (!p) {
					rc = herr_set(err, -ENOMEM, "store: out of memory");
					break;
				}
				rows = p;
				cap = ncap;
			}
			if (read_sandbox(s, &rows[n]) < 0) {
				rc = herr_set(err, -ENOMEM, "store: out of memory");
				break;
			}
			n++;
		}
		if (rc == SQLITE_DONE)
			rc = 0;
		else if (rc > 0)
			rc = db_err(st, err, "listing sandboxes");
	}
	pthread_mutex_unlock(&st->lock);
	for (size_t i = 0; i < n; i++) {
		if (rc == 0 && cb(&rows[i], ctx) != 0)
			rc = 1;
		store_sandbox_clear(&rows[i]);
	}
	free(rows);
	return rc < 0 ? rc : 0;
}

int store_sandbox_expired(struct store *st, int64_t now, char (*ids)[SBX_ID_LEN + 1],
			  int cap, int *n, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	LOCKED(st);

	*n = 0;
	rc = prepare(st, "SELECT id FROM sandboxes WHERE state = 'running'"
			 " AND intent = '' AND end_at <= ? AND node = ?"
			 " ORDER BY end_at LIMIT ?", &s, err);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(s, 1, now);
	bind_text(s, 2, st->node);
	sqlite3_bind_int(s, 3, cap);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW)
		copy_col(ids[(*n)++], SBX_ID_LEN + 1, s, 0);
	if (rc != SQLITE_DONE)
		return db_err(st, err, "finding expired sandboxes");
	return 0;
}

int store_sandbox_purge_ended(struct store *st, int64_t before, int64_t *deleted,
			      struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *ev = NULL;
	_cleanup_stmt_ sqlite3_stmt *sb = NULL;
	int rc;
	WRITE_LOCKED(st);

	rc = exec_sql(st, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	rc = prepare(st, "DELETE FROM events WHERE sandbox_id IN (SELECT id FROM"
			 " sandboxes WHERE state = 'ended' AND ended_at < ?1"
			 " AND node = ?2)", &ev, err);
	if (rc == 0) {
		sqlite3_bind_int64(ev, 1, before);
		bind_text(ev, 2, st->node);
		rc = step_done(st, ev, "purging events", err);
	}
	if (rc >= 0)
		rc = prepare(st, "DELETE FROM sandboxes WHERE state = 'ended'"
				 " AND ended_at < ?1 AND node = ?2", &sb, err);
	if (rc >= 0) {
		sqlite3_bind_int64(sb, 1, before);
		bind_text(sb, 2, st->node);
		rc = step_done(st, sb, "purging sandboxes", err);
	}
	if (rc < 0) {
		exec_sql(st, "ROLLBACK", NULL);
		return rc;
	}
	if (deleted)
		*deleted = rc;
	return exec_sql(st, "COMMIT", err);
}

/*
 * Builds the list query. Metadata pairs become EXISTS over json_each, which
 * compares decoded keys and values exactly, with no JSON-path quoting of
 * user-chosen keys.
 */
static int build_list_sql(const struct store_list_query *q, char *sql, size_t cap)
{
	size_t len;

	len = (size_t)snprintf(sql, cap,
			       "SELECT " SBX_COLS " FROM sandboxes s WHERE team_id = ?"
			       " AND state IN (?, ?, ?) AND started_at >= ?"
			       " AND (? IS NULL OR template_id = ?)");
	for (int i = 0; i < q->n_meta && len < cap; i++)
		len += (size_t)snprintf(sql + len, cap - len,
					" AND EXISTS (SELECT 1 FROM json_each(s.metadata) m"
					" WHERE m.key = ? AND m.type = 'text'"
					" AND m.value = ?)");
	if (q->has_cursor && len < cap)
		len += (size_t)snprintf(sql + len, cap - len, q->ascending ?
			" AND (started_at > ? OR (started_at = ? AND id < ?))" :
			" AND (started_at < ? OR (started_at = ? AND id > ?))");
	if (len < cap)
		len += (size_t)snprintf(sql + len, cap - len, q->ascending ?
			" ORDER BY started_at ASC, id DESC LIMIT ?" :
			" ORDER BY started_at DESC, id ASC LIMIT ?");
	return len < cap ? 0 : -E2BIG;
}

static void bind_list(sqlite3_stmt *s, const struct store_list_query *q)
{
	int i = 1;

	sqlite3_bind_int64(s, i++, q->team_id);
	bind_text(s, i++, q->want_running ? SBX_RUNNING : "-");
	bind_text(s, i++, q->want_paused ? SBX_PAUSED : "-");
	bind_text(s, i++, q->want_ended ? SBX_ENDED : "-");
	sqlite3_bind_int64(s, i++, q->started_after);
	if (q->template_id) {
		bind_text(s, i++, q->template_id);
		bind_text(s, i++, q->template_id);
	} else {
		sqlite3_bind_null(s, i++);
		sqlite3_bind_null(s, i++);
	}
	for (int m = 0; m < q->n_meta; m++) {
		bind_text(s, i++, q->meta_keys[m]);
		bind_text(s, i++, q->meta_values[m]);
	}
	if (q->has_cursor) {
		sqlite3_bind_int64(s, i++, q->cursor_started_at);
		sqlite3_bind_int64(s, i++, q->cursor_started_at);
		bind_text(s, i++, q->cursor_id);
	}
	sqlite3_bind_int(s, i, q->limit + 1);
}

int store_sandbox_list(struct store *st, const struct store_list_query *q,
		       store_sandbox_cb cb, void *ctx, bool *more, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	char sql[4096];
	int rc, seen = 0;
	LOCKED(st);

	*more = false;
	if (q->n_meta < 0 || q->n_meta > STORE_META_FILTER_MAX || q->limit < 1)
		return herr_set(err, -EINVAL, "store: bad list query");
	if (build_list_sql(q, sql, sizeof(sql)) < 0)
		return herr_set(err, -E2BIG, "store: list query too long");
	rc = prepare(st, sql, &s, err);
	if (rc < 0)
		return rc;
	bind_list(s, q);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		_cleanup_sandbox_ struct store_sandbox row = { 0 };

		if (seen == q->limit) {
			*more = true;
			break;
		}
		if (read_sandbox(s, &row) < 0)
			return herr_set(err, -ENOMEM, "store: out of memory");
		seen++;
		if (cb(&row, ctx) != 0)
			return 0;
	}
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return db_err(st, err, "listing sandboxes");
	return 0;
}

/* ---- events ---- */

int store_event_add(struct store *st, const char *sandbox_id, const char *kind,
		    const char *detail, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	WRITE_LOCKED(st);

	rc = prepare(st, "INSERT INTO events (sandbox_id, at, kind, detail, node)"
			 " VALUES (?, ?, ?, ?, ?)", &s, err);
	if (rc < 0)
		return rc;
	bind_text(s, 1, sandbox_id);
	sqlite3_bind_int64(s, 2, store_now_ms());
	bind_text(s, 3, kind);
	bind_text(s, 4, detail);
	bind_text(s, 5, st->node);
	rc = step_done(st, s, "adding event", err);
	return rc < 0 ? rc : 0;
}

int store_event_list(struct store *st, const char *sandbox_id, int64_t since,
		     int limit, store_event_cb cb, void *ctx, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	LOCKED(st);

	rc = prepare(st, "SELECT at, kind, detail FROM events WHERE sandbox_id = ?"
			 " AND at >= ? ORDER BY at, id LIMIT ?", &s, err);
	if (rc < 0)
		return rc;
	bind_text(s, 1, sandbox_id);
	sqlite3_bind_int64(s, 2, since);
	sqlite3_bind_int(s, 3, limit);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (cb(sqlite3_column_int64(s, 0), (const char *)sqlite3_column_text(s, 1),
		       (const char *)sqlite3_column_text(s, 2), ctx) != 0)
			return 0;
	}
	if (rc != SQLITE_DONE)
		return db_err(st, err, "listing events");
	return 0;
}

/* ---- snapshots ---- */

void store_snapshot_clear(struct store_snapshot *s)
{
	free(s->template_id);
	free(s->name);
	free(s->config);
	free(s->node);
	memset(s, 0, sizeof(*s));
}

#define SNAP_COLS "id, team_id, sandbox_id, template_id, name, created_at, size_bytes," \
		  " config, node"

static int read_snapshot(sqlite3_stmt *s, struct store_snapshot *o)
{
	memset(o, 0, sizeof(*o));
	copy_col(o->id, sizeof(o->id), s, 0);
	o->team_id = sqlite3_column_int64(s, 1);
	copy_col(o->sandbox_id, sizeof(o->sandbox_id), s, 2);
	o->template_id = col_dup(s, 3);
	o->name = col_dup(s, 4);
	o->created_at = sqlite3_column_int64(s, 5);
	o->size_bytes = sqlite3_column_int64(s, 6);
	o->config = col_dup(s, 7);
	o->node = col_dup(s, 8);
	if (!o->template_id || !o->name || !o->config || !o->node) {
		store_snapshot_clear(o);
		return -ENOMEM;
	}
	return 0;
}

int store_snapshot_insert(struct store *st, const struct store_snapshot *x,
			  struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	WRITE_LOCKED(st);

	rc = prepare(st, "INSERT INTO snapshots (" SNAP_COLS ") VALUES (?, ?, ?, ?, ?,"
			 " ?, ?, ?, ?)", &s, err);
	if (rc < 0)
		return rc;
	bind_text(s, 1, x->id);
	sqlite3_bind_int64(s, 2, x->team_id);
	bind_text(s, 3, x->sandbox_id);
	bind_text(s, 4, x->template_id);
	bind_text(s, 5, x->name);
	sqlite3_bind_int64(s, 6, x->created_at);
	sqlite3_bind_int64(s, 7, x->size_bytes);
	bind_text(s, 8, or_default(x->config, "{}"));
	bind_text(s, 9, st->node);
	rc = step_done(st, s, "inserting snapshot", err);
	return rc < 0 ? rc : 0;
}

int store_snapshot_get(struct store *st, const char *id, int64_t team_id,
		       struct store_snapshot *out, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	LOCKED(st);

	rc = prepare(st, "SELECT " SNAP_COLS " FROM snapshots WHERE id = ?"
			 " AND (? < 0 OR team_id = ?)", &s, err);
	if (rc < 0)
		return rc;
	bind_text(s, 1, id);
	sqlite3_bind_int64(s, 2, team_id);
	sqlite3_bind_int64(s, 3, team_id);
	rc = sqlite3_step(s);
	if (rc == SQLITE_DONE)
		return 0;
	if (rc != SQLITE_ROW)
		return db_err(st, err, "reading snapshot");
	if (read_snapshot(s, out) < 0)
		return herr_set(err, -ENOMEM, "out of memory");
	return 1;
}

int store_snapshot_list(struct store *st, int64_t team_id, const char *sandbox_id,
			store_snapshot_cb cb, void *ctx, struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	struct store_snapshot snap;
	int rc;
	LOCKED(st);

	rc = prepare(st, "SELECT " SNAP_COLS " FROM snapshots WHERE team_id = ?"
			 " AND (? = '' OR sandbox_id = ?) ORDER BY created_at, id", &s, err);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(s, 1, team_id);
	bind_text(s, 2, sandbox_id);
	bind_text(s, 3, sandbox_id);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (read_snapshot(s, &snap) < 0)
			return herr_set(err, -ENOMEM, "out of memory");
		rc = cb(&snap, ctx);
		store_snapshot_clear(&snap);
		if (rc != 0)
			return 0;
	}
	if (rc != SQLITE_DONE)
		return db_err(st, err, "listing snapshots");
	return 0;
}

int store_snapshot_delete(struct store *st, const char *id, int64_t team_id,
			  struct herr *err)
{
	_cleanup_stmt_ sqlite3_stmt *s = NULL;
	int rc;
	WRITE_LOCKED(st);

	rc = prepare(st, "DELETE FROM snapshots WHERE id = ? AND team_id = ?", &s, err);
	if (rc < 0)
		return rc;
	bind_text(s, 1, id);
	sqlite3_bind_int64(s, 2, team_id);
	rc = step_done(st, s, "deleting snapshot", err);
	return rc < 0 ? rc : rc > 0;
}
