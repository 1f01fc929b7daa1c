/*
 * Sandbox endpoints of the REST API (protocol.md §2.3, sdk-wire.md §3):
 * create, get, list (v1 and v2), kill, timeout, refresh, connect, pause,
 * resume, network, metrics and logs. Status codes and field names are the
 * ones the official SDKs check.
 */
#include "api_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "log.h"
#include "request.h"
#include "snapshot.h"

/* Deprecated upstream but required by the Python SDK. */
#define CLIENT_ID "6532622b"

static void not_found(struct api_req *r, const char *id)
{
	api_error(r, 404, "Sandbox \"%s\" doesn't exist or you don't have access to it",
		  id);
}

static void store_failed(struct api_req *r, const struct herr *err)
{
	log_error("api", NULL, "%s", err->msg);
	api_error(r, 500, "internal error: %s", err->msg);
}

/* Loads the caller's sandbox; replies 404 (with any end reason) when it is not live. */
static bool load_live(struct api_req *r, const char *id, struct store_sandbox *sb)
{
	struct herr err;
	int rc = store_sandbox_get(r->api->store, id, r->team_id, sb, &err);
	char when[32];

	if (rc < 0) {
		store_failed(r, &err);
		return false;
	}
	if (rc == 0 || strcmp(sb->state, SBX_CREATING) == 0) {
		not_found(r, id);
		return false;
	}
	if (strcmp(sb->state, SBX_ENDED) == 0) {
		time_format(sb->ended_at, when);
		api_error(r, 404, "Sandbox \"%s\" doesn't exist or you don't have access to "
			  "it (it ended at %s: %s)", id, when, sb->end_reason);
		return false;
	}
	return true;
}

static json_t *parse_json_column(const char *text)
{
	json_t *j = json_loads(text, 0, NULL);

	return j ? j : json_object();
}

static bool public_traffic(json_t *network)
{
	json_t *p = json_object_get(network, "allowPublicTraffic");

	return !p || json_is_true(p);
}

/* The `Sandbox` object of create and connect. */
static json_t *sandbox_json(struct api *a, const struct store_sandbox *sb)
{
	json_t *j = json_pack("{s:s,s:s,s:s,s:s}", "sandboxID", sb->id, "templateID",
			      sb->template_id, "clientID", CLIENT_ID, "envdVersion",
			      sb->envd_version);
	json_t *net = parse_json_column(sb->network);

	if (*sb->access_token)
		json_object_set_new(j, "envdAccessToken", json_string(sb->access_token));
	if (!public_traffic(net)) {
		char tok[TOKEN_HEX];

		token_derive(a->secret, "sandbox-traffic-", sb->id, tok);
		json_object_set_new(j, "trafficAccessToken", json_string(tok));
	}
	if (*a->cfg.domain)
		json_object_set_new(j, "domain", json_string(a->cfg.domain));
	json_decref(net);
	return j;
}

/* A sandbox being paused is reported paused already (protocol.md 2.3.2). */
static const char *shown_state(const struct store_sandbox *sb)
{
	if (strcmp(sb->state, SBX_RUNNING) == 0 && strncmp(sb->intent, "pause", 5) == 0)
		return SBX_PAUSED;
	return sb->state;
}

/* `ListedSandbox`; with detail, the extra fields of `SandboxDetail`. */
static json_t *listed_json(struct api *a, const struct store_sandbox *sb, bool detail)
{
	char started[32], end[32];
	json_t *j, *net, *life;

	time_format(sb->started_at, started);
	time_format(strcmp(sb->state, SBX_ENDED) == 0 ? sb->ended_at : sb->end_at, end);
	j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:o}",
		      "templateID", sb->template_id, "sandboxID", sb->id,
		      "clientID", CLIENT_ID, "startedAt", started, "endAt", end,
		      "cpuCount", (json_int_t)sb->cpu_count,
		      "memoryMB", (json_int_t)sb->memory_mb,
		      "diskSizeMB", (json_int_t)sb->disk_mb, "state", shown_state(sb),
		      "envdVersion", sb->envd_version,
		      "metadata", parse_json_column(sb->metadata));
	if (strcmp(sb->state, SBX_ENDED) == 0) {
		char ended[32];

		time_format(sb->ended_at, ended);
		json_object_set_new(j, "endedAt", json_string(ended));
		json_object_set_new(j, "endReason", json_string(sb->end_reason));
	}
	if (!detail)
		return j;
	net = parse_json_column(sb->network);
	life = parse_json_column(sb->lifecycle);
	if (*sb->access_token)
		json_object_set_new(j, "envdAccessToken", json_string(sb->access_token));
	if (json_object_get(net, "allowInternetAccess"))
		json_object_set(j, "allowInternetAccess",
				json_object_get(net, "allowInternetAccess"));
	json_object_del(net, "allowInternetAccess");
	if (*a->cfg.domain)
		json_object_set_new(j, "domain", json_string(a->cfg.domain));
	json_object_set_new(j, "network", net);
	/* Only the two keys of SandboxLifecycle; the rest is ours. */
	json_object_del(life, "autoPauseMemory");
	json_object_set_new(j, "lifecycle", life);
	return j;
}

/* ---- create ---- */

struct create_args {
	const char *template_id;
	int64_t timeout_s;
	bool secure;
	bool auto_pause, auto_pause_memory, auto_resume;
	json_t *metadata, *env, *network;
};

static int parse_timeout(struct api *a, json_t *v, int64_t *out, struct herr *err)
{
	json_int_t t;

	if (!v || json_is_null(v)) {
		*out = a->cfg.default_timeout_s;
		return 0;
	}
	if (!json_is_integer(v))
		return herr_set(err, -EINVAL, "'timeout' must be an integer (seconds)");
	t = json_integer_value(v);
	if (t <= 0)
		return herr_set(err, -EINVAL, "Timeout must be greater than 0");
	if (t > a->cfg.plan.max_timeout_s)
		return herr_set(err, -EINVAL, "Timeout cannot be greater than %lld seconds "
				"(this team's maximum sandbox length)",
				(long long)a->cfg.plan.max_timeout_s);
	*out = t;
	return 0;
}

static int parse_bool_field(json_t *body, const char *name, bool def, bool *out,
			    struct herr *err)
{
	json_t *v = json_object_get(body, name);

	if (!v || json_is_null(v)) {
		*out = def;
		return 0;
	}
	if (!json_is_boolean(v))
		return herr_set(err, -EINVAL, "'%s' must be a boolean", name);
	*out = json_is_true(v);
	return 0;
}

/* autoPause, autoPauseMemory and autoResume{enabled} (protocol.md 7.2). */
static int parse_lifecycle(json_t *body, struct create_args *ca, struct herr *err)
{
	json_t *resume = json_object_get(body, "autoResume");
	int rc = parse_bool_field(body, "autoPause", false, &ca->auto_pause, err);

	if (rc == 0)
		rc = parse_bool_field(body, "autoPauseMemory", true, &ca->auto_pause_memory,
				      err);
	if (rc == 0 && resume && !json_is_null(resume)) {
		if (!json_is_object(resume))
			return herr_set(err, -EINVAL, "'autoResume' must be an object "
					"{\"enabled\": bool}");
		rc = parse_bool_field(resume, "enabled", false, &ca->auto_resume, err);
	}
	if (rc < 0)
		return rc;
	if (!ca->auto_pause_memory && !ca->auto_pause)
		return herr_set(err, -EINVAL, "autoPauseMemory=false requires autoPause");
	if (ca->auto_resume && !ca->auto_pause)
		return herr_set(err, -EINVAL, "autoResume requires autoPause");
	/* Traffic resumes expect the processes that served it to be there. */
	if (ca->auto_resume && !ca->auto_pause_memory)
		return herr_set(err, -EINVAL, "autoResume cannot be combined with "
				"autoPauseMemory=false");
	return 0;
}

/* Refuses what this node cannot do rather than silently ignoring it. */
static int check_unsupported(json_t *body, struct herr *err)
{
	json_t *vols = json_object_get(body, "volumeMounts");
	json_t *iam = json_object_get(body, "iam");

	if (vols && !json_is_null(vols) && json_array_size(vols) > 0)
		return herr_set(err, -EINVAL, "volumeMounts are not supported on this node");
	if (iam && !json_is_null(iam) && json_object_size(json_object_get(iam, "tokens")))
		return herr_set(err, -EINVAL, "workload identity (iam) is not supported on "
				"this node");
	return 0;
}

static int parse_maps(json_t *body, struct create_args *ca, struct herr *err)
{
	json_t *m = json_object_get(body, "metadata");
	json_t *e = json_object_get(body, "envVars");
	int rc = 0;

	ca->metadata = m && !json_is_null(m) ? json_incref(m) : json_object();
	ca->env = e && !json_is_null(e) ? json_incref(e) : json_object();
	rc = string_map_validate(ca->metadata, "metadata", META_MAX_PAIRS, META_KEY_MAX,
				 META_VALUE_MAX, false, err);
	if (rc == 0)
		rc = string_map_validate(ca->env, "envVars", ENV_MAX_PAIRS, 256,
					 ENV_VALUE_MAX, true, err);
	return rc;
}

static int parse_create(struct api *a, json_t *body, struct create_args *ca,
			struct herr *err)
{
	json_t *tpl = json_object_get(body, "templateID");
	int rc;

	if (!json_is_string(tpl))
		return herr_set(err, -EINVAL, "'templateID' is required and must be a string");
	ca->template_id = json_string_value(tpl);
	if (!template_ref_valid(ca->template_id))
		return herr_set(err, -EINVAL, "Invalid template reference: '%.128s'",
				ca->template_id);
	rc = parse_timeout(a, json_object_get(body, "timeout"), &ca->timeout_s, err);
	if (rc == 0)
		rc = parse_bool_field(body, "secure", a->cfg.secure_default, &ca->secure, err);
	if (rc == 0)
		rc = parse_lifecycle(body, ca, err);
	if (rc == 0)
		rc = check_unsupported(body, err);
	if (rc == 0)
		rc = parse_maps(body, ca, err);
	if (rc == 0)
		rc = network_build(json_object_get(body, "network"),
				   json_object_get(body, "allow_internet_access"), ca->secure,
				   &ca->network, err);
	return rc;
}

static void free_create_args(struct create_args *ca)
{
	json_decref(ca->metadata);
	json_decref(ca->env);
	json_decref(ca->network);
}

static char *dump(json_t *j)
{
	return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
}

/* The template's resources where it sets them, else the node's defaults. */
static void fill_resources(struct api *a, const struct lc_template *tpl,
			   struct store_sandbox *sb)
{
	struct lc_resources res;

	lc_resources_for(a->lc, tpl, &res);
	sb->cpu_count = res.cpu_count;
	sb->memory_mb = res.memory_mb;
	sb->disk_mb = res.disk_mb;
}

static char *lifecycle_text(const struct create_args *ca)
{
	json_t *j = json_pack("{s:b,s:s}", "autoResume", ca->auto_resume, "onTimeout",
			      ca->auto_pause ? "pause" : "kill");
	char *text;

	if (j && !ca->auto_pause_memory)
		json_object_set_new(j, "autoPauseMemory", json_false());
	text = j ? dump(j) : NULL;
	json_decref(j);
	return text;
}

/* A create's row but for its id and resources: the caller's settings. */
static int fill_row(struct api_req *r, const struct create_args *ca,
		    const char *template_name, struct store_sandbox *sb, struct herr *err)
{
	struct api *a = r->api;
	char tok[TOKEN_HEX];
	int64_t now = store_now_ms();

	token_derive(a->secret, "", sb->id, tok);
	sb->team_id = r->team_id;
	sb->template_id = strdup(template_name);
	sb->created_at = sb->started_at = now;
	sb->timeout_s = ca->timeout_s;
	sb->end_at = now + ca->timeout_s * 1000;
	sb->metadata = dump(ca->metadata);
	sb->env = dump(ca->env);
	sb->network = dump(ca->network);
	sb->lifecycle = lifecycle_text(ca);
	sb->access_token = strdup(ca->secure ? tok : "");
	sb->envd_version = strdup(a->cfg.envd_version);
	if (!sb->template_id || !sb->metadata || !sb->env || !sb->network ||
	    !sb->lifecycle || !sb->access_token || !sb->envd_version)
		return herr_set(err, -ENOMEM, "out of memory");
	return 0;
}

static int fill_sandbox(struct api_req *r, const struct create_args *ca,
			const struct lc_template *tpl, struct store_sandbox *sb,
			struct herr *err)
{
	/* A warm sandbox's id when one is ready: the create then only configures it. */
	int rc = lc_new_id(r->api->lc, tpl->name, sb->id, err);

	/* The resolved name, so that list filters and recovery see "base". */
	if (rc == 0)
		rc = fill_row(r, ca, tpl->name, sb, err);
	if (rc == 0)
		fill_resources(r->api, tpl, sb);
	return rc;
}

/* The 429 of a create past the team's concurrency cap. */
static void cap_reached(struct api_req *r, int64_t max)
{
	api_error(r, 429, "you have reached the maximum number of concurrent sandboxes "
		  "(%lld). Kill a sandbox before creating another", (long long)max);
}

/* Checks the concurrency cap and records the row, as one step of the store. */
static bool begin_create(struct api_req *r, struct store_sandbox *sb)
{
	int64_t max = r->api->cfg.plan.max_concurrent;
	struct herr err;
	int rc = lc_create_begin_capped(r->api->lc, sb, max, &err);

	if (rc == -EDQUOT) {
		cap_reached(r, max);
		return false;
	}
	if (rc < 0)
		store_failed(r, &err);
	return rc == 0;
}

static void finish_create(struct api_req *r, struct store_sandbox *sb)
{
	struct herr err;
	int rc = lc_create_finish(r->api->lc, sb, &err);

	if (rc == 0) {
		log_info("api", sb->id, "created from template %s for team %lld",
			 sb->template_id, (long long)r->team_id);
		api_json(r, 201, sandbox_json(r->api, sb));
	} else if (rc == -ENOENT) {
		api_error(r, 404, "%s", err.msg);
	} else if (rc == -ENOSYS || rc == -EAGAIN || rc == -ENOSPC || rc == -ETIMEDOUT) {
		log_error("api", sb->id, "create failed: %s", err.msg);
		api_error(r, 503, "creating the sandbox failed: %s", err.msg);
	} else {
		log_error("api", sb->id, "create failed: %s", err.msg);
		api_error(r, 500, "creating the sandbox failed: %s", err.msg);
	}
}

/*
 * Sandbox.create(snapshotId): a templateID that names no template but one of
 * the team's snapshots (by id or name) starts a sandbox on a copy of the
 * snapshot's disk, as a fork from it does, with the create's own settings.
 * False when there is no such snapshot (the caller answers 404).
 */
static bool create_from_snapshot(struct api_req *r, const struct create_args *ca)
{
	_cleanup_snapshot_ struct store_snapshot snap = { 0 };
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	int64_t max = r->api->cfg.plan.max_concurrent;
	struct herr err;
	int rc = snap_resolve(r->api, r->team_id, ca->template_id, &snap, &err);

	if (rc <= 0) {
		if (rc < 0)
			store_failed(r, &err);
		return rc < 0;
	}
	rc = sandbox_id_generate(sb.id, &err);
	if (rc == 0)
		rc = fill_row(r, ca, snap.template_id, &sb, &err);
	snap_resources(&snap, &sb);
	if (rc == 0)
		rc = lc_fork_from(r->api->lc, &snap, &sb, max, &err);
	if (rc == -EDQUOT) {
		cap_reached(r, max);
	} else if (rc < 0) {
		log_error("api", *sb.id ? sb.id : NULL, "create from snapshot %s failed: %s",
			  snap.id, err.msg);
		api_error(r, 500, "creating the sandbox from snapshot %s failed: %s", snap.id,
			  err.msg);
	} else {
		log_info("api", sb.id, "created from snapshot %s for team %lld", snap.id,
			 (long long)r->team_id);
		api_json(r, 201, sandbox_json(r->api, &sb));
	}
	return true;
}

static void create_sandbox(struct api_req *r)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct create_args ca = { 0 };
	struct lc_template tpl = { 0 };
	struct herr err;
	json_t *body;
	int rc;

	body = api_body_object(r, false);
	if (!body)
		return;
	if (parse_create(r->api, body, &ca, &err) < 0) {
		api_error(r, 400, "%s", err.msg);
	} else if (!lc_can_create(r->api->lc)) {
		api_error(r, 503, "this node cannot create sandboxes: the sandbox runtime "
			  "is not available (see the hutchd log)");
	} else if ((rc = lc_template_get_team(r->api->lc, r->team_id, ca.template_id, &tpl,
					      &err)) < 0) {
		if (rc != -ENOENT)
			log_error("api", NULL, "%s", err.msg);
		if (rc != -ENOENT || !create_from_snapshot(r, &ca))
			api_error(r, rc == -ENOENT ? 404 : 500, "%s", err.msg);
	} else if (fill_sandbox(r, &ca, &tpl, &sb, &err) < 0) {
		api_error(r, 500, "%s", err.msg);
	} else if (begin_create(r, &sb)) {
		finish_create(r, &sb);
	}
	tpl_clear(&tpl);
	free_create_args(&ca);
	json_decref(body);
}

void sbx_create(struct api_req *r)
{
	int64_t start = metrics_now_us();

	if (!api_rate_check(r, RL_CREATE))
		return;
	create_sandbox(r);
	metrics_create(&r->api->metrics, r->status, metrics_now_us() - start);
}

/* ---- get, kill, timeouts ---- */

void sbx_get(struct api_req *r, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };

	if (load_live(r, id, &sb))
		api_json(r, 200, listed_json(r->api, &sb, true));
}

void sbx_kill(struct api_req *r, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct herr err;
	int rc;

	if (!load_live(r, id, &sb))
		return;
	rc = lc_kill(r->api->lc, id, "killed", &err);
	if (rc < 0) {
		log_error("api", id, "kill failed: %s", err.msg);
		api_error(r, 500, "killing the sandbox failed: %s", err.msg);
	} else if (rc == 0) {
		not_found(r, id);
	} else {
		r->status = 204;
	}
}

/* Moves a running sandbox's deadline to now + t, within the maximum length. */
static void move_deadline(struct api_req *r, const char *id, int64_t t, bool only_extend)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	int64_t now = store_now_ms(), end, max_end;
	struct herr err;
	int rc;

	if (!load_live(r, id, &sb))
		return;
	if (strcmp(sb.state, SBX_RUNNING) != 0) {
		not_found(r, id);
		return;
	}
	max_end = sb.started_at + r->api->cfg.plan.max_timeout_s * 1000;
	if (now >= max_end && !only_extend) {
		api_error(r, 400, "Max instance length exceeded");
		return;
	}
	/* Callers bound t to 0..max_timeout_s first, so this cannot overflow.
	 * Past the run's maximum length the end is capped as upstream does
	 * (protocol.md 2.3.5); a timeout longer than the plan allows at all was
	 * refused with a 400 before this point. */
	end = now + t * 1000;
	if (end > max_end)
		end = max_end;
	rc = store_sandbox_set_end_at(r->api->store, id, end, only_extend, &err);
	if (rc < 0)
		store_failed(r, &err);
	else if (rc == 0)
		not_found(r, id);
	else
		r->status = 204;
}

static bool int_field(struct api_req *r, json_t *body, const char *name, bool required,
		      int64_t def, int64_t *out)
{
	json_t *v = json_object_get(body, name);

	if (!v || json_is_null(v)) {
		if (required)
			api_error(r, 400, "'%s' is required", name);
		*out = def;
		return !required;
	}
	if (!json_is_integer(v)) {
		api_error(r, 400, "'%s' must be an integer", name);
		return false;
	}
	*out = json_integer_value(v);
	return true;
}

/* A timeout longer than the plan's longest run is refused, never cut
 * silently: the caller would otherwise believe the sandbox lives longer. */
static bool timeout_in_plan(struct api_req *r, int64_t t)
{
	if (t > r->api->cfg.plan.max_timeout_s) {
		api_error(r, 400, "Timeout cannot be greater than %lld seconds "
			  "(this team's maximum sandbox length)",
			  (long long)r->api->cfg.plan.max_timeout_s);
		return false;
	}
	return true;
}

void sbx_timeout(struct api_req *r, const char *id)
{
	json_t *body = api_body_object(r, false);
	int64_t t;

	if (!body)
		return;
	if (int_field(r, body, "timeout", true, 0, &t) && timeout_in_plan(r, t)) {
		/* Negative means "expire now", as upstream treats it. */
		move_deadline(r, id, t < 0 ? 0 : t, false);
	}
	json_decref(body);
}

void sbx_refresh(struct api_req *r, const char *id)
{
	json_t *body = api_body_object(r, true);
	int64_t d;

	if (!body)
		return;
	if (int_field(r, body, "duration", false, 15, &d)) {
		if (d < 0 || d > 3600)
			api_error(r, 400, "'duration' must be between 0 and 3600 seconds");
		else
			move_deadline(r, id, d < 15 ? 15 : d, true);
	}
	json_decref(body);
}

/*
 * Resumes a paused sandbox and answers 201 with its `Sandbox` body. When it
 * turns out to be running (a concurrent resume won), connect extends its
 * deadline and answers 200; the old resume endpoint answers 409.
 */
static void resume_and_answer(struct api_req *r, const char *id, int64_t t,
			      bool keep_memory, bool connect)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct herr err;
	int rc = lc_resume(r->api->lc, id, t, keep_memory, &err);

	if (rc == 0 && connect) {
		if (load_live(r, id, &sb)) {
			move_deadline(r, id, t, true);
			if (r->status == 204)
				api_json(r, 200, sandbox_json(r->api, &sb));
		}
	} else if (rc == 0) {
		api_error(r, 409, "Sandbox \"%s\" is already running", id);
	} else if (rc == 1) {
		if (load_live(r, id, &sb))
			api_json(r, 201, sandbox_json(r->api, &sb));
	} else if (rc == -ENOENT) {
		not_found(r, id);
	} else if (rc == -EBUSY) {
		api_error(r, 409, "%s", err.msg);
	} else {
		log_error("api", id, "resume failed: %s", err.msg);
		api_error(r, rc == -ENOSYS ? 503 : 500, "%s (the sandbox stays paused)",
			  err.msg);
	}
}

/* A pause under way is waited for, then resumed (protocol.md 2.3.6). */
static bool needs_resume(const struct store_sandbox *sb)
{
	return strcmp(sb->state, SBX_PAUSED) == 0 || strncmp(sb->intent, "pause", 5) == 0;
}

/* The body of connect and resume: {"timeout": s, "memory": bool}. memory
 * false (the SDK's onResume 'reboot') starts the sandbox afresh on its disk
 * rather than restoring its processes. */
static bool resume_body(struct api_req *r, int64_t *t, bool *keep_memory)
{
	json_t *body = api_body_object(r, true);
	struct herr err;
	bool ok;

	if (!body)
		return false;
	ok = int_field(r, body, "timeout", false, r->api->cfg.default_timeout_s, t);
	if (ok && parse_bool_field(body, "memory", true, keep_memory, &err) < 0) {
		api_error(r, 400, "%s", err.msg);
		ok = false;
	}
	json_decref(body);
	if (!ok || !timeout_in_plan(r, *t))
		return false;
	if (*t < 0) {
		api_error(r, 400, "'timeout' must not be negative");
		return false;
	}
	return true;
}

void sbx_connect(struct api_req *r, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	bool keep_memory = true;
	int64_t t;

	if (!resume_body(r, &t, &keep_memory) || !load_live(r, id, &sb))
		return;
	if (needs_resume(&sb)) {
		resume_and_answer(r, id, t, keep_memory, true);
		return;
	}
	move_deadline(r, id, t, true);
	if (r->status == 204)
		api_json(r, 200, sandbox_json(r->api, &sb));
}

void sbx_resume(struct api_req *r, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	bool keep_memory = true;
	int64_t t;

	if (!resume_body(r, &t, &keep_memory) || !load_live(r, id, &sb))
		return;
	if (!needs_resume(&sb))
		api_error(r, 409, "Sandbox \"%s\" is already running", id);
	else
		resume_and_answer(r, id, t, keep_memory, false);
}

void sbx_pause(struct api_req *r, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	json_t *body = api_body_object(r, true);
	bool memory = true;
	struct herr err;
	int rc;

	if (!body)
		return;
	rc = parse_bool_field(body, "memory", true, &memory, &err);
	json_decref(body);
	if (rc < 0) {
		api_error(r, 400, "%s", err.msg);
		return;
	}
	if (!load_live(r, id, &sb))
		return;
	rc = lc_pause(r->api->lc, id, memory, &err);
	if (rc == 0)
		r->status = 204;
	else if (rc == -EALREADY)
		api_error(r, 409, "Error pausing sandbox - sandbox '%s' is already paused", id);
	else if (rc == -ENOENT)
		not_found(r, id);
	else if (rc == -EBUSY)
		api_error(r, 409, "%s", err.msg);
	else {
		log_error("api", id, "pause failed: %s", err.msg);
		api_error(r, rc == -ENOSYS ? 503 : 500, "pausing the sandbox failed, it "
			  "keeps running: %s", err.msg);
	}
}

void sbx_network(struct api_req *r, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	_cleanup_free_ char *text = NULL;
	json_t *body, *net = NULL;
	struct herr err;
	int rc;

	if (!load_live(r, id, &sb))
		return;
	if (strcmp(sb.state, SBX_RUNNING) != 0) {
		api_error(r, 409, "Sandbox \"%s\" is not running", id);
		return;
	}
	body = api_body_object(r, true);
	if (!body)
		return;
	rc = network_build(body, json_object_get(body, "allow_internet_access"),
			   *sb.access_token != '\0', &net, &err);
	json_decref(body);
	if (rc < 0) {
		api_error(r, 400, "%s", err.msg);
		return;
	}
	rc = lc_apply_network(r->api->lc, id, net, &err);
	text = dump(net);
	if (rc == 0)
		rc = store_sandbox_set_network(r->api->store, id, text, &err);
	json_decref(net);
	if (rc < 0)
		api_error(r, rc == -ENOENT ? 404 : 500, "updating the network failed: %s",
			  err.msg);
	else
		r->status = 204;
}

void sbx_metrics(struct api_req *r, const char *id)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	int64_t now = store_now_ms(), elapsed_us;
	struct lc_stats s;
	struct herr err;
	char ts[32];
	double pct;

	if (!load_live(r, id, &sb))
		return;
	if (strcmp(sb.state, SBX_RUNNING) != 0 || lc_stats(r->api->lc, id, &s, &err) < 0) {
		api_json(r, 200, json_array());
		return;
	}
	/* One sample: CPU use averaged over the run so far. */
	elapsed_us = (now - sb.started_at) * 1000;
	pct = elapsed_us > 0 && sb.cpu_count > 0 ?
		100.0 * (double)s.cpu_usec / (double)elapsed_us / (double)sb.cpu_count : 0;
	time_format(now, ts);
	api_json(r, 200, json_pack("[{s:s,s:I,s:I,s:f,s:I,s:I,s:I,s:I,s:I}]",
				   "timestamp", ts, "timestampUnix", (json_int_t)(now / 1000),
				   "cpuCount", (json_int_t)sb.cpu_count, "cpuUsedPct", pct,
				   "memUsed", (json_int_t)s.memory_bytes,
				   "memTotal", (json_int_t)sb.memory_mb << 20,
				   "memCache", (json_int_t)0,
				   "diskUsed", (json_int_t)s.disk_bytes,
				   "diskTotal", (json_int_t)sb.disk_mb << 20));
}

/* ---- logs: the sandbox's lifecycle events ---- */

struct logs_ctx {
	json_t *logs, *entries;
	bool v2;
};

static int add_log(int64_t at, const char *kind, const char *detail, void *arg)
{
	struct logs_ctx *c = arg;
	char ts[32], line[1024];

	time_format(at, ts);
	snprintf(line, sizeof(line), "%s%s%s", kind, *detail ? ": " : "", detail);
	if (!c->v2)
		json_array_append_new(c->logs, json_pack("{s:s,s:s}", "timestamp", ts,
							 "line", line));
	json_array_append_new(c->v2 ? c->logs : c->entries,
			      json_pack("{s:s,s:s,s:s,s:{s:s}}", "timestamp", ts, "level",
					"info", "message", line, "fields", "event", kind));
	return 0;
}

void sbx_logs(struct api_req *r, const char *id, bool v2)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	struct logs_ctx c = { json_array(), json_array(), v2 };
	const char *limit_s = api_query(r, "limit");
	long limit = limit_s ? strtol(limit_s, NULL, 10) : 1000;
	struct herr err;

	if (load_live(r, id, &sb) &&
	    store_event_list(r->api->store, id, 0, limit > 0 && limit <= 10000 ?
			     (int)limit : 1000, add_log, &c, &err) < 0)
		store_failed(r, &err);
	else if (r->status == 0 && v2)
		api_json(r, 200, json_pack("{s:O}", "logs", c.logs));
	else if (r->status == 0)
		api_json(r, 200, json_pack("{s:O,s:O}", "logs", c.logs, "logEntries",
					   c.entries));
	json_decref(c.logs);
	json_decref(c.entries);
}
