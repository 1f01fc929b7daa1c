/*
 * Schema migrations, applied in order, each in its own transaction. Never
 * edit a released migration: add a new one at the end. Migration N brings the
 * database to schema version N.
 *
 * Every table names the node that owns the row, so that several hutchd nodes
 * can later share one database.
 */
#include "migrations.h"

const char *const store_migrations[] = {
	/* 1: teams, API keys (hashes only), sandboxes, events */
	"CREATE TABLE teams ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  created_at INTEGER NOT NULL,"
	"  node TEXT NOT NULL);"
	"CREATE TABLE api_keys ("
	"  id INTEGER PRIMARY KEY,"
	"  team_id INTEGER NOT NULL REFERENCES teams(id),"
	"  lookup TEXT NOT NULL,"
	"  hash TEXT NOT NULL,"
	"  hint TEXT NOT NULL,"
	"  created_at INTEGER NOT NULL,"
	"  revoked_at INTEGER NOT NULL DEFAULT 0,"
	"  last_used_at INTEGER NOT NULL DEFAULT 0,"
	"  node TEXT NOT NULL);"
	"CREATE INDEX api_keys_lookup ON api_keys(lookup);"
	"CREATE TABLE sandboxes ("
	"  id TEXT PRIMARY KEY,"
	"  team_id INTEGER NOT NULL REFERENCES teams(id),"
	"  template_id TEXT NOT NULL,"
	"  state TEXT NOT NULL,"
	"  intent TEXT NOT NULL DEFAULT '',"
	"  created_at INTEGER NOT NULL,"
	"  started_at INTEGER NOT NULL,"
	"  end_at INTEGER NOT NULL,"
	"  timeout_s INTEGER NOT NULL,"
	"  metadata TEXT NOT NULL DEFAULT '{}',"
	"  env TEXT NOT NULL DEFAULT '{}',"
	"  network TEXT NOT NULL DEFAULT '{}',"
	"  lifecycle TEXT NOT NULL DEFAULT '{}',"
	"  access_token TEXT NOT NULL DEFAULT '',"
	"  cpu_count INTEGER NOT NULL,"
	"  memory_mb INTEGER NOT NULL,"
	"  disk_mb INTEGER NOT NULL,"
	"  envd_version TEXT NOT NULL,"
	"  end_reason TEXT NOT NULL DEFAULT '',"
	"  ended_at INTEGER NOT NULL DEFAULT 0,"
	"  node TEXT NOT NULL);"
	"CREATE INDEX sandboxes_team_start ON sandboxes(team_id, state, started_at);"
	"CREATE INDEX sandboxes_deadline ON sandboxes(state, end_at);"
	"CREATE TABLE events ("
	"  id INTEGER PRIMARY KEY,"
	"  sandbox_id TEXT NOT NULL,"
	"  at INTEGER NOT NULL,"
	"  kind TEXT NOT NULL,"
	"  detail TEXT NOT NULL DEFAULT '',"
	"  node TEXT NOT NULL);"
	"CREATE INDEX events_sandbox ON events(sandbox_id, at);",
	/* 2: snapshots of sandboxes (docs/api.md, "Snapshots and fork"); config
	 * is what a fork needs of the source's row, as a JSON object. */
	"CREATE TABLE snapshots ("
	"  id TEXT PRIMARY KEY,"
	"  team_id INTEGER NOT NULL REFERENCES teams(id),"
	"  sandbox_id TEXT NOT NULL,"
	"  template_id TEXT NOT NULL,"
	"  name TEXT NOT NULL DEFAULT '',"
	"  created_at INTEGER NOT NULL,"
	"  size_bytes INTEGER NOT NULL,"
	"  config TEXT NOT NULL DEFAULT '{}',"
	"  node TEXT NOT NULL);"
	"CREATE INDEX snapshots_team ON snapshots(team_id, created_at);",
};

const int store_migration_count = sizeof(store_migrations) / sizeof(store_migrations[0]);
