/*
 * GET /v2/sandboxes (paged, filtered by state, metadata, start time and
 * template, ordered by start time) and GET /sandboxes (v1: running only,
 * metadata filter, no paging). protocol.md §2.3.3.
 */
#include "api_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "log.h"
#include "request.h"

#define LIST_MAX 100

struct list_args {
	struct store_list_query q;
	char *keys[STORE_META_FILTER_MAX];
	char *values[STORE_META_FILTER_MAX];
	bool bad_state;
	char bad[64];
};

static void add_state(struct list_args *la, const char *v, size_t n)
{
	if (n == 7 && strncmp(v, "running", 7) == 0)
		la->q.want_running = true;
	else if (n == 6 && strncmp(v, "paused", 6) == 0)
		la->q.want_paused = true;
	else if (n == 5 && strncmp(v, "ended", 5) == 0)
		la->q.want_ended = true;
	else if (!la->bad_state) {
		la->bad_state = true;
		snprintf(la->bad, sizeof(la->bad), "%.*s", (int)(n > 40 ? 40 : n), v);
	}
}

/* `state` comes comma-joined from the SDKs; repeated parameters are accepted too. */
static enum MHD_Result collect_state(void *cls, enum MHD_ValueKind kind, const char *key,
				     const char *value)
{
	struct list_args *la = cls;

	if (strcmp(key, "state") != 0 || !value)
		return MHD_YES;
	for (const char *p = value;;) {
		const char *comma = strchr(p, ',');
		size_t n = comma ? (size_t)(comma - p) : strlen(p);

		add_state(la, p, n);
		if (!comma)
			break;
		p = comma + 1;
	}
	return MHD_YES;
}

static bool parse_limit(struct api_req *r, struct list_args *la)
{
	const char *s = api_query(r, "limit");
	char *end;
	long v;

	la->q.limit = LIST_MAX;
	if (!s)
		return true;
	v = strtol(s, &end, 10);
	if (*s == '\0' || *end || v < 1 || v > LIST_MAX) {
		api_error(r, 400, "'limit' must be an integer from 1 to %d", LIST_MAX);
		return false;
	}
	la->q.limit = (int)v;
	return true;
}

static bool parse_order_cursor(struct api_req *r, struct list_args *la)
{
	const char *order = api_query(r, "order"), *token = api_query(r, "nextToken");
	struct herr err;

	if (order && strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0) {
		api_error(r, 400, "'order' must be 'asc' or 'desc'");
		return false;
	}
	la->q.ascending = order && strcmp(order, "asc") == 0;
	if (!token || !*token)
		return true;
	if (page_token_decode(token, la->q.ascending, &la->q.cursor_started_at,
			      la->q.cursor_id, sizeof(la->q.cursor_id), &err) < 0) {
		api_error(r, 400, "%s", err.msg);
		return false;
	}
	la->q.has_cursor = true;
	return true;
}

static bool parse_filters(struct api_req *r, struct list_args *la)
{
	const char *meta = api_query(r, "metadata"), *after = api_query(r, "startedAfter");
	const char *tpl = api_query(r, "template");
	struct herr err;

	if (meta && meta_filter_parse(meta, la->keys, la->values, STORE_META_FILTER_MAX,
				      &la->q.n_meta, &err) < 0) {
		api_error(r, 400, "%s", err.msg);
		return false;
	}
	for (int i = 0; i < la->q.n_meta; i++) {
		la->q.meta_keys[i] = la->keys[i];
		la->q.meta_values[i] = la->values[i];
	}
	if (after && time_parse(after, &la->q.started_after, &err) < 0) {
		api_error(r, 400, "'startedAfter': %s", err.msg);
		return false;
	}
	if (tpl && strchr(tpl, ':')) {
		api_error(r, 400, "'template' must not carry a tag: sandboxes are not "
			  "tag-scoped");
		return false;
	}
	la->q.template_id = tpl && *tpl ? tpl : NULL;
	return true;
}

static int append_row(const struct store_sandbox *sb, void *ctx)
{
	json_t *arr = ctx;
	char started[32], end[32];
	json_t *meta = json_loads(sb->metadata, 0, NULL);

	time_format(sb->started_at, started);
	time_format(strcmp(sb->state, SBX_ENDED) == 0 ? sb->ended_at : sb->end_at, end);
	json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:o}",
			      "templateID", sb->template_id, "sandboxID", sb->id,
			      "clientID", "6532622b", "startedAt", started, "endAt", end,
			      "cpuCount", (json_int_t)sb->cpu_count,
			      "memoryMB", (json_int_t)sb->memory_mb,
			      "diskSizeMB", (json_int_t)sb->disk_mb, "state", sb->state,
			      "envdVersion", sb->envd_version,
			      "metadata", meta ? meta : json_object());

	if (j && strcmp(sb->state, SBX_ENDED) == 0) {
		time_format(sb->ended_at, end);
		json_object_set_new(j, "endedAt", json_string(end));
		json_object_set_new(j, "endReason", json_string(sb->end_reason));
	}
	return j ? json_array_append_new(arr, j) : -1;
}

static void last_row(json_t *arr, int64_t *started, char *id)
{
	json_t *last = json_array_get(arr, json_array_size(arr) - 1);
	struct herr err;

	if (!last)
		return;
	snprintf(id, SBX_ID_LEN + 1, "%s",
		 json_string_value(json_object_get(last, "sandboxID")));
	time_parse(json_string_value(json_object_get(last, "startedAt")), started, &err);
}

static void run_v2(struct api_req *r, struct list_args *la)
{
	json_t *arr = json_array();
	struct herr err;
	bool more = false;

	if (store_sandbox_list(r->api->store, &la->q, append_row, arr, &more, &err) < 0) {
		json_decref(arr);
		log_error("api", NULL, "%s", err.msg);
		api_error(r, 500, "listing sandboxes failed: %s", err.msg);
		return;
	}
	if (more) {
		char id[SBX_ID_LEN + 1] = "", token[256];
		int64_t started = 0;

		last_row(arr, &started, id);
		if (page_token_encode(started, id, la->q.ascending, token, sizeof(token)) == 0)
			api_header(r, "X-Next-Token", "%s", token);
	}
	api_json(r, 200, arr);
}

/* v1 has no paging: gather every page. */
static void run_v1(struct api_req *r, struct list_args *la)
{
	json_t *arr = json_array();
	struct herr err;
	bool more = true;

	la->q.want_running = true;
	la->q.want_paused = la->q.want_ended = false;
	while (more) {
		if (store_sandbox_list(r->api->store, &la->q, append_row, arr, &more,
				       &err) < 0) {
			json_decref(arr);
			api_error(r, 500, "listing sandboxes failed: %s", err.msg);
			return;
		}
		last_row(arr, &la->q.cursor_started_at, la->q.cursor_id);
		la->q.has_cursor = json_array_size(arr) > 0;
	}
	api_json(r, 200, arr);
}

void sbx_list(struct api_req *r, bool v2)
{
	struct list_args la = { .q = { .team_id = r->team_id } };

	MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, collect_state, &la);
	if (la.bad_state)
		api_error(r, 400, "'state': unknown state '%s' (running, paused, ended)",
			  la.bad);
	else if (!la.q.want_running && !la.q.want_paused && !la.q.want_ended)
		la.q.want_running = la.q.want_paused = true;
	if (r->status == 0 && parse_limit(r, &la) && parse_order_cursor(r, &la) &&
	    parse_filters(r, &la)) {
		if (v2)
			run_v2(r, &la);
		else
			run_v1(r, &la);
	}
	meta_filter_free(la.keys, la.values, la.q.n_meta);
}
