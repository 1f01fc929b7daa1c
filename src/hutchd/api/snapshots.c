/*
 * Snapshot and fork endpoints of the REST API (docs/api.md, "Snapshots and
 * fork"): POST /sandboxes/{id}/snapshots, GET /snapshots, GET and DELETE
 * /snapshots/{id}, POST /sandboxes/{id}/fork and POST /snapshots/{id}/fork.
 * Shapes follow E2B's where it defines them (SnapshotInfo, SandboxForkRequest,
 * a list of SandboxForkResult); the work is done in lifecycle/snapshot.c.
 *
 * A snapshot or sandbox of another team is answered 404, as for sandboxes:
 * a 403 would tell the caller that the id exists.
 */
#include "api_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "ids.h"
#include "lifecycle.h"
#include "log.h"
#include "request.h"
#include "snapshot.h"

#define SNAPSHOT_NAME_MAX 128
#define FORK_COUNT_MAX 10
#define FORK_TIMEOUT_DEFAULT_S 15 /* E2B's default for forks */

static void sandbox_not_found(struct api_req *r, const char *id)
{
	api_error(r, 404, "Sandbox \"%s\" doesn't exist or you don't have access to it",
		  id);
}

static void snapshot_not_found(struct api_req *r, const char *id)
{
	api_error(r, 404, "Snapshot \"%.64s\" doesn't exist or you don't have access to "
		  "it", id);
}

static void internal(struct api_req *r, const char *what, const struct herr *err)
{
	log_error("api", NULL, "%s: %s", what, err->msg);
	api_error(r, 500, "%s: %s", what, err->msg);
}

/* Only the fields listed may appear in body: a typo is an error, not a no-op. */
static bool only_fields(struct api_req *r, json_t *body, const char *const *allowed)
{
	const char *key;
	json_t *v;

	json_object_foreach(body, key, v) {
		size_t i = 0;

		while (allowed[i] && strcmp(allowed[i], key) != 0)
			i++;
		if (!allowed[i]) {
			api_error(r, 400, "unknown field '%.64s' in the request body", key);
			return false;
		}
	}
	return true;
}

static json_t *snapshot_json(const struct store_snapshot *s)
{
	char created[32];
	json_t *names = json_array();

	time_format(s->created_at, created);
	if (*s->name)
		json_array_append_new(names, json_string(s->name));
	return json_pack("{s:s,s:o,s:s,s:s,s:s,s:I}", "snapshotID", s->id, "names", names,
			 "sandboxID", s->sandbox_id, "templateID", s->template_id,
			 "createdAt", created, "sizeBytes", (json_int_t)s->size_bytes);
}

/* The name a snapshot may carry: printable ASCII, at most 128 bytes. */
static bool parse_name(struct api_req *r, json_t *body, const char **name)
{
	json_t *v = json_object_get(body, "name");

	*name = "";
	if (!v || json_is_null(v))
		return true;
	if (!json_is_string(v) || json_string_length(v) > SNAPSHOT_NAME_MAX) {
		api_error(r, 400, "'name' must be a string of at most %d characters",
			  SNAPSHOT_NAME_MAX);
		return false;
	}
	for (const char *c = json_string_value(v); *c; c++) {
		if (*c < 0x20 || *c > 0x7e) {
			api_error(r, 400, "'name' may hold printable ASCII characters only");
			return false;
		}
	}
	*name = json_string_value(v);
	return true;
}

/* The caller's live sandbox (running or paused), else a 404 is set. */
static bool sandbox_is_live(struct api_req *r, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct herr err;
	int rc = store_sandbox_get(r->api->store, id, r->team_id, &sb, &err);

	if (rc < 0) {
		internal(r, "reading the sandbox", &err);
		return false;
	}
	if (rc == 0 || (strcmp(sb.state, SBX_RUNNING) != 0 &&
			strcmp(sb.state, SBX_PAUSED) != 0)) {
		sandbox_not_found(r, id);
		return false;
	}
	return true;
}

static void answer_take_error(struct api_req *r, const char *id, int rc,
			      const struct herr *err)
{
	if (rc == -ENOENT)
		sandbox_not_found(r, id);
	else if (rc == -EBUSY)
		api_error(r, 409, "%s", err->msg);
	else if (rc == -ENOSYS)
		api_error(r, 503, "%s", err->msg);
	else
		internal(r, "taking the snapshot failed", err);
}

/* POST /sandboxes/{id}/snapshots {"name"?: string} */
void snap_create(struct api_req *r, const char *id)
{
	static const char *const allowed[] = { "name", NULL };
	_cleanup_snapshot_ struct store_snapshot snap = { 0 };
	json_t *body = api_body_object(r, true);
	const char *name;
	struct herr err;
	int rc;

	if (!body)
		return;
	if (only_fields(r, body, allowed) && parse_name(r, body, &name) &&
	    sandbox_is_live(r, id)) {
		rc = lc_snapshot_take(r->api->lc, r->team_id, id, name, &snap, &err);
		if (rc == 0 || rc == -ECANCELED)
			log_info("api", id, "snapshot %s for team %lld", snap.id,
				 (long long)r->team_id);
		if (rc == 0)
			api_json(r, 201, snapshot_json(&snap));
		else
			answer_take_error(r, id, rc, &err);
	}
	json_decref(body);
}

static int add_listed(const struct store_snapshot *s, void *arg)
{
	return json_array_append_new(arg, snapshot_json(s)) == 0 ? 0 : -1;
}

/* GET /snapshots[?sandboxID=...] */
void snap_list(struct api_req *r)
{
	const char *of = api_query(r, "sandboxID");
	json_t *list;
	struct herr err;

	if (of && *of && !sandbox_id_valid(of)) {
		api_error(r, 400, "'sandboxID' is not a sandbox id");
		return;
	}
	list = json_array();
	if (!list) {
		api_error(r, 503, "out of memory");
		return;
	}
	if (store_snapshot_list(r->api->store, r->team_id, of ? of : "", add_listed, list,
				&err) < 0) {
		json_decref(list);
		internal(r, "listing snapshots", &err);
		return;
	}
	api_json(r, 200, list);
}

static bool load_snapshot(struct api_req *r, const char *sid, struct store_snapshot *s)
{
	struct herr err;
	int rc = store_snapshot_get(r->api->store, sid, r->team_id, s, &err);

	if (rc < 0)
		internal(r, "reading the snapshot", &err);
	else if (rc == 0)
		snapshot_not_found(r, sid);
	return rc > 0;
}

/* GET /snapshots/{id} */
void snap_get(struct api_req *r, const char *sid)
{
	_cleanup_snapshot_ struct store_snapshot snap = { 0 };

	if (load_snapshot(r, sid, &snap))
		api_json(r, 200, snapshot_json(&snap));
}

/* DELETE /snapshots/{id} */
void snap_delete(struct api_req *r, const char *sid)
{
	struct herr err;
	int rc = lc_snapshot_delete(r->api->lc, r->team_id, sid, &err);

	if (rc < 0)
		internal(r, "deleting the snapshot", &err);
	else if (rc == 0)
		snapshot_not_found(r, sid);
	else
		r->status = 204;
}

/* ---- fork ---- */

struct fork_args {
	int64_t count, timeout_s;
};

static bool int_in(struct api_req *r, json_t *body, const char *name, int64_t def,
		   int64_t lo, int64_t hi, int64_t *out)
{
	json_t *v = json_object_get(body, name);

	*out = def;
	if (!v || json_is_null(v))
		return true;
	if (!json_is_integer(v) || json_integer_value(v) < lo ||
	    json_integer_value(v) > hi) {
		api_error(r, 400, "'%s' must be an integer from %lld to %lld", name,
			  (long long)lo, (long long)hi);
		return false;
	}
	*out = json_integer_value(v);
	return true;
}

/* {"count"?: 1..10, "timeout"?: seconds} */
static bool parse_fork(struct api_req *r, struct fork_args *fa)
{
	static const char *const allowed[] = { "count", "timeout", NULL };
	json_t *body = api_body_object(r, true);
	bool ok;

	if (!body)
		return false;
	ok = only_fields(r, body, allowed) &&
	     int_in(r, body, "count", 1, 1, FORK_COUNT_MAX, &fa->count) &&
	     int_in(r, body, "timeout", FORK_TIMEOUT_DEFAULT_S, 0,
		    r->api->cfg.plan.max_timeout_s, &fa->timeout_s);
	json_decref(body);
	return ok;
}

/* Room for count more sandboxes under the team's concurrency cap, checked
 * up front so that a request that cannot fit makes nothing; each fork's
 * insert checks again, atomically, against creates at the same moment. */
static bool fork_room(struct api_req *r, int64_t count)
{
	int64_t max = r->api->cfg.plan.max_concurrent, active = 0;
	struct herr err;

	if (store_sandbox_count_active(r->api->store, r->team_id, &active, &err) < 0) {
		internal(r, "counting sandboxes", &err);
		return false;
	}
	if (max > 0 && active + count > max) {
		api_error(r, 429, "forking %lld sandboxes would pass the maximum number of "
			  "concurrent sandboxes (%lld, %lld running)", (long long)count,
			  (long long)max, (long long)active);
		return false;
	}
	return true;
}

static char *config_text(json_t *config, const char *key)
{
	json_t *v = json_object_get(config, key);

	return strdup(json_is_string(v) ? json_string_value(v) : "{}");
}

static int64_t config_int(json_t *config, const char *key)
{
	return json_integer_value(json_object_get(config, key));
}

struct name_match {
	const char *name;
	char id[SBX_ID_LEN + 1];
};

/* Runs under the store's lock: only copies. Oldest first, so the newest
 * match is the one left. */
static int match_name(const struct store_snapshot *s, void *arg)
{
	struct name_match *m = arg;

	if (s->name && strcmp(s->name, m->name) == 0)
		snprintf(m->id, sizeof(m->id), "%s", s->id);
	return 0;
}

int snap_resolve(struct api *a, int64_t team, const char *ref, struct store_snapshot *out,
		 struct herr *err)
{
	struct name_match m = { .name = ref };
	int rc = store_snapshot_get(a->store, ref, team, out, err);

	if (rc != 0 || !*ref)
		return rc;
	rc = store_snapshot_list(a->store, team, NULL, match_name, &m, err);
	if (rc < 0 || !*m.id)
		return rc < 0 ? rc : 0;
	return store_snapshot_get(a->store, m.id, team, out, err);
}

void snap_resources(const struct store_snapshot *snap, struct store_sandbox *sb)
{
	json_t *config = json_loads(snap->config ? snap->config : "{}", 0, NULL);

	sb->cpu_count = config_int(config, "cpuCount");
	sb->memory_mb = config_int(config, "memoryMB");
	sb->disk_mb = config_int(config, "diskMB");
	json_decref(config);
}

/* The new sandbox's row: the source's settings, a new id and new tokens. */
static int fork_row(struct api_req *r, const struct store_snapshot *snap,
		    int64_t timeout_s, struct store_sandbox *sb, struct herr *err)
{
	json_t *config = json_loads(snap->config, 0, NULL);
	char tok[TOKEN_HEX];
	int64_t now = store_now_ms();
	int rc = config ? sandbox_id_generate(sb->id, err) :
		herr_set(err, -EIO, "snapshot %s: its stored settings do not parse", snap->id);

	if (rc < 0) {
		json_decref(config);
		return rc;
	}
	token_derive(r->api->secret, "", sb->id, tok);
	sb->team_id = r->team_id;
	sb->template_id = strdup(snap->template_id);
	sb->created_at = sb->started_at = now;
	sb->timeout_s = timeout_s;
	sb->end_at = now + timeout_s * 1000;
	sb->metadata = config_text(config, "metadata");
	sb->env = config_text(config, "env");
	sb->network = config_text(config, "network");
	sb->lifecycle = config_text(config, "lifecycle");
	sb->access_token = strdup(json_is_true(json_object_get(config, "secure")) ? tok : "");
	snap_resources(snap, sb);
	sb->envd_version = strdup(r->api->cfg.envd_version);
	json_decref(config);
	if (!sb->template_id || !sb->metadata || !sb->env || !sb->network ||
	    !sb->lifecycle || !sb->access_token || !sb->envd_version)
		return herr_set(err, -ENOMEM, "out of memory");
	return 0;
}

/* The `Sandbox` object a create answers (see sandboxes.c). */
static json_t *forked_json(struct api *a, const struct store_sandbox *sb)
{
	json_t *j = json_pack("{s:s,s:s,s:s,s:s}", "sandboxID", sb->id, "templateID",
			      sb->template_id, "clientID", "6532622b", "envdVersion",
			      sb->envd_version);
	json_t *net = json_loads(sb->network, 0, NULL);
	json_t *pub = json_object_get(net, "allowPublicTraffic");

	if (*sb->access_token)
		json_object_set_new(j, "envdAccessToken", json_string(sb->access_token));
	if (pub && !json_is_true(pub)) {
		char tok[TOKEN_HEX];

		token_derive(a->secret, "sandbox-traffic-", sb->id, tok);
		json_object_set_new(j, "trafficAccessToken", json_string(tok));
	}
	if (*a->cfg.domain)
		json_object_set_new(j, "domain", json_string(a->cfg.domain));
	json_decref(net);
	return j;
}

/* One fork; its outcome as E2B's SandboxForkResult. */
static json_t *fork_one(struct api_req *r, const struct store_snapshot *snap,
			int64_t timeout_s)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct herr err;
	int rc = fork_row(r, snap, timeout_s, &sb, &err);

	if (rc == 0)
		rc = lc_fork_from(r->api->lc, snap, &sb, r->api->cfg.plan.max_concurrent,
				  &err);
	if (rc == -EDQUOT)
		return json_pack("{s:{s:i,s:s}}", "error", "code", 429, "message",
				 "the maximum number of concurrent sandboxes is reached");
	if (rc < 0) {
		log_error("api", *sb.id ? sb.id : NULL, "fork of %s failed: %s",
			  snap->sandbox_id, err.msg);
		return json_pack("{s:{s:i,s:s}}", "error", "code", 500, "message", err.msg);
	}
	return json_pack("{s:o}", "sandbox", forked_json(r->api, &sb));
}

static void fork_all(struct api_req *r, const struct store_snapshot *snap,
		     const struct fork_args *fa)
{
	json_t *list = json_array();

	for (int64_t i = 0; list && i < fa->count; i++)
		json_array_append_new(list, fork_one(r, snap, fa->timeout_s));
	if (!list)
		api_error(r, 503, "out of memory");
	else
		api_json(r, 201, list);
}

/* POST /sandboxes/{id}/fork: a snapshot of now, forks, the snapshot deleted. */
void sbx_fork(struct api_req *r, const char *id)
{
	_cleanup_snapshot_ struct store_snapshot snap = { 0 };
	struct fork_args fa;
	struct herr err;
	int rc;

	if (!api_rate_check(r, RL_CREATE) || !parse_fork(r, &fa) ||
	    !sandbox_is_live(r, id) || !fork_room(r, fa.count))
		return;
	if (!lc_can_create(r->api->lc)) {
		api_error(r, 503, "this node cannot create sandboxes: the sandbox runtime "
			  "is not available (see the hutchd log)");
		return;
	}
	rc = lc_snapshot_take(r->api->lc, r->team_id, id, "", &snap, &err);
	if (rc < 0 && rc != -ECANCELED) {
		answer_take_error(r, id, rc, &err);
		return;
	}
	fork_all(r, &snap, &fa);
	if (lc_snapshot_delete(r->api->lc, r->team_id, snap.id, &err) < 0)
		log_error("api", id, "removing the fork's snapshot %s: %s", snap.id, err.msg);
}

/* POST /snapshots/{id}/fork: forks from a kept snapshot. */
void snap_fork(struct api_req *r, const char *sid)
{
	_cleanup_snapshot_ struct store_snapshot snap = { 0 };
	struct fork_args fa;

	if (!api_rate_check(r, RL_CREATE) || !parse_fork(r, &fa) ||
	    !load_snapshot(r, sid, &snap) || !fork_room(r, fa.count))
		return;
	if (!lc_can_create(r->api->lc)) {
		api_error(r, 503, "this node cannot create sandboxes: the sandbox runtime "
			  "is not available (see the hutchd log)");
		return;
	}
	fork_all(r, &snap, &fa);
}
