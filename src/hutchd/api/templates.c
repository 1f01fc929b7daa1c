/*
 * Template endpoints and archive uploads (see templates.h). Handlers only
 * translate HTTP to the registry's calls and its errors to the exact
 * statuses the SDKs expect; all checks of content live in the registry.
 */
#include "templates.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cleanup.h"
#include "ids.h"
#include "lifecycle.h"
#include "log.h"
#include "snapshot.h"
#include "tmpl.h"

#define UPLOAD_PREFIX "/template-files/"
#define UPLOAD_TTL_S 3600

static bool is(const char *a, const char *b)
{
	return strcmp(a, b) == 0;
}

static void reply_err(struct api_req *r, int rc, const struct herr *err)
{
	unsigned status;

	switch (rc) {
	case -ENOENT: status = 404; break;
	case -EPERM: status = 403; break;
	case -EEXIST: case -EBUSY: status = 409; break;
	case -EAGAIN: status = 429; break;
	case -ENOMEM: case -EIO: status = 500; break;
	default: status = 400; break;
	}
	api_error(r, status, "%s", err->msg);
}

static struct tmpl_mgr *mgr(struct api_req *r)
{
	struct tmpl_mgr *m = lc_templates(r->api->lc);

	if (!m)
		api_error(r, 503, "template builds are not available on this node");
	return m;
}

/* ---- signed upload URLs ---- */

static void upload_sig(struct api *a, int64_t team, const char *hash, int64_t expires,
		       char sig[TOKEN_HEX])
{
	char msg[128];

	snprintf(msg, sizeof(msg), "%" PRId64 ":%s:%" PRId64, team, hash, expires);
	token_derive(a->secret, "template-upload:", msg, sig);
}

/* Only host names and ports: the Host header is echoed into a URL. */
static bool host_ok(const char *h)
{
	return h && *h && strlen(h) < 256 &&
	       strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")
	       == strlen(h);
}

static void files_hash(struct api_req *r, const char *tid, const char *hash)
{
	struct tmpl_mgr *m = mgr(r);
	struct herr err = { 0 };
	const char *host = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Host");
	char sig[TOKEN_HEX], url[1024];
	int64_t expires = (int64_t)time(NULL) + UPLOAD_TTL_S;
	int rc;

	if (!m)
		return;
	rc = tmpl_file_present(m, r->team_id, tid, hash, &err);
	if (rc < 0)
		return reply_err(r, rc, &err);
	if (rc == 1)
		return api_json(r, 201, json_pack("{s:b}", "present", 1));
	if (!host_ok(host))
		return api_error(r, 400, "a Host header is needed to make the upload URL");
	upload_sig(r->api, r->team_id, hash, expires, sig);
	snprintf(url, sizeof(url), "http://%s" UPLOAD_PREFIX "%" PRId64 "/%s?expires=%" PRId64
		 "&signature=%s", host, r->team_id, hash, expires, sig);
	api_json(r, 201, json_pack("{s:b,s:s}", "present", 0, "url", url));
}

bool tpl_api_is_upload(const char *method, const char *url)
{
	return is(method, "PUT") && strncmp(url, UPLOAD_PREFIX, strlen(UPLOAD_PREFIX)) == 0;
}

struct upload {
	int fd;
	char tmp[4096];
	char hash[65];
	int64_t team;
	uint64_t got;
	int failed;         /* HTTP status to answer, 0 = fine so far */
	char why[HERR_MSG_MAX];
};

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status,
			      const char *msg)
{
	json_t *j = json_pack("{s:i,s:s}", "code", (int)status, "message", msg);
	_cleanup_free_ char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	json_decref(j);
	resp = MHD_create_response_from_buffer(text ? strlen(text) : 0, text ? text : "",
					       MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", "application/json");
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* Checks "/template-files/<team>/<hash>" and its signature; fills team/hash. */
static int upload_check(struct api *a, struct MHD_Connection *conn, const char *url,
			struct upload *u)
{
	const char *exp = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "expires");
	const char *sig = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND,
						      "signature");
	const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						     "Content-Length");
	char want[TOKEN_HEX], *end;
	long long team, expires;
	struct tmpl_mgr *m = lc_templates(a->lc);

	team = strtoll(url + strlen(UPLOAD_PREFIX), &end, 10);
	if (*end != '/' || strlen(end + 1) != 64 || !exp || !sig || !m)
		return 404;
	snprintf(u->hash, sizeof(u->hash), "%s", end + 1);
	expires = strtoll(exp, &end, 10);
	if (*end || expires < (long long)time(NULL))
		return 403;
	u->team = team;
	upload_sig(a, u->team, u->hash, expires, want);
	/* Constant time: the signature is the only thing guarding this URL. */
	if (strlen(sig) != strlen(want) || CRYPTO_memcmp(sig, want, strlen(want)) != 0)
		return 403;
	if (!cl || strtoull(cl, &end, 10) > tmpl_max_upload(m) || *end)
		return cl ? 413 : 411;
	return 0;
}

static int upload_start(struct api *a, struct MHD_Connection *conn, const char *url,
			struct upload *u)
{
	struct herr err = { 0 };
	int status = upload_check(a, conn, url, u);

	if (status)
		return status;
	u->fd = tmpl_upload_begin(lc_templates(a->lc), u->team, u->hash, u->tmp,
				  sizeof(u->tmp), &err);
	if (u->fd < 0) {
		snprintf(u->why, sizeof(u->why), "%s", err.msg);
		return 500;
	}
	return 0;
}

static const char *status_text(int status)
{
	switch (status) {
	case 403: return "the upload URL is not valid or has expired";
	case 404: return "no such upload";
	case 411: return "the upload needs a Content-Length";
	case 413: return "the archive is larger than this node accepts";
	default: return "the upload could not be stored";
	}
}

enum MHD_Result tpl_api_upload(struct api *a, struct MHD_Connection *conn,
			       const char *url, const char *data, size_t *size,
			       void **state)
{
	struct upload *u = *state;
	struct herr err = { 0 };

	if (!u) {
		u = calloc(1, sizeof(*u));
		if (!u)
			return MHD_NO;
		u->fd = -1;
		*state = u;
		/* Refusals wait for the end of the body, then answer (keep-alive). */
		u->failed = upload_start(a, conn, url, u);
		return MHD_YES;
	}
	if (*size) {
		u->got += *size;
		if (!u->failed && u->got > tmpl_max_upload(lc_templates(a->lc)))
			u->failed = 413;
		if (!u->failed && write(u->fd, data, *size) != (ssize_t)*size) {
			snprintf(u->why, sizeof(u->why), "writing the upload: %s",
				 strerror(errno));
			u->failed = 500;
		}
		*size = 0;
		return MHD_YES;
	}
	if (u->failed)
		return answer(conn, (unsigned)u->failed, u->why[0] ? u->why :
			      status_text(u->failed));
	if (fsync(u->fd) < 0 || close(u->fd) < 0) {
		u->fd = -1;
		return answer(conn, 500, "the upload could not be stored");
	}
	u->fd = -1;
	if (tmpl_upload_commit(lc_templates(a->lc), u->team, u->hash, u->tmp, &err) < 0)
		return answer(conn, 500, err.msg);
	u->tmp[0] = '\0';
	log_info("api", NULL, "template files %s uploaded for team %lld (%llu bytes)",
		 u->hash, (long long)u->team, (unsigned long long)u->got);
	return answer(conn, 200, "stored");
}

void tpl_api_upload_end(void **state)
{
	struct upload *u = *state;

	if (!u)
		return;
	if (u->fd >= 0)
		close(u->fd);
	if (u->tmp[0])
		unlink(u->tmp); /* an upload cut short is never kept */
	free(u);
	*state = NULL;
}

/* ---- endpoints ---- */

static void request_build(struct api_req *r)
{
	struct tmpl_mgr *m = mgr(r);
	json_t *body, *reply = NULL;
	struct herr err = { 0 };
	int rc;

	if (!m || !(body = api_body_object(r, false)))
		return;
	rc = tmpl_request(m, r->team_id, body, &reply, &err);
	json_decref(body);
	if (rc < 0)
		return reply_err(r, rc, &err);
	api_json(r, 202, reply);
}

static void start_build(struct api_req *r, const char *tid, const char *bid)
{
	struct tmpl_mgr *m = mgr(r);
	struct herr err = { 0 };
	json_t *body;
	int rc;

	if (!m || !(body = api_body_object(r, false)))
		return;
	rc = tmpl_build_start(m, r->team_id, tid, bid, body, &err);
	json_decref(body);
	if (rc < 0)
		return reply_err(r, rc, &err);
	r->status = 202;
}

static int64_t query_int(struct api_req *r, const char *name, int64_t def, int64_t lo,
			 int64_t hi, bool *bad)
{
	const char *v = api_query(r, name);
	char *end;
	long long n;

	if (!v)
		return def;
	n = strtoll(v, &end, 10);
	if (*end || end == v || n < lo || n > hi) {
		*bad = true;
		api_error(r, 400, "'%s' must be an integer from %lld to %lld", name,
			  (long long)lo, (long long)hi);
	}
	return n;
}

static void build_status(struct api_req *r, const char *tid, const char *bid)
{
	struct tmpl_mgr *m = mgr(r);
	struct herr err = { 0 };
	json_t *reply = NULL;
	bool bad = false;
	int64_t offset = query_int(r, "logsOffset", 0, 0, INT32_MAX, &bad);
	int64_t limit = bad ? 0 : query_int(r, "limit", 100, 0, 100, &bad);
	int rc;

	if (!m || bad)
		return;
	rc = tmpl_build_status(m, r->team_id, tid, bid, offset, limit, &reply, &err);
	if (rc < 0)
		return reply_err(r, rc, &err);
	api_json(r, 200, reply);
}

static void alias(struct api_req *r, const char *name)
{
	struct tmpl_mgr *m = mgr(r);
	struct herr err = { 0 };
	json_t *reply = NULL;
	int rc;

	if (!m)
		return;
	rc = tmpl_alias(m, r->team_id, name, &reply, &err);
	if (rc < 0)
		return reply_err(r, rc, &err);
	api_json(r, 200, reply);
}

static void tags(struct api_req *r)
{
	struct tmpl_mgr *m = mgr(r);
	struct herr err = { 0 };
	json_t *body, *reply = NULL;
	bool post = is(r->method, "POST");
	int rc;

	if (!m)
		return;
	if (!post && !is(r->method, "DELETE"))
		return api_error(r, 405, "method %s is not allowed on this path", r->method);
	if (!(body = api_body_object(r, false)))
		return;
	rc = post ? tmpl_tags_assign(m, r->team_id, body, &reply, &err) :
		tmpl_tags_remove(m, r->team_id, body, &err);
	json_decref(body);
	if (rc < 0)
		return reply_err(r, rc, &err);
	if (post)
		api_json(r, 201, reply);
	else
		r->status = 204;
}

static void tags_list(struct api_req *r, const char *tid)
{
	struct tmpl_mgr *m = mgr(r);
	struct herr err = { 0 };
	json_t *reply = NULL;
	int rc;

	if (!m)
		return;
	rc = tmpl_tags_list(m, r->team_id, tid, &reply, &err);
	if (rc < 0)
		return reply_err(r, rc, &err);
	api_json(r, 200, reply);
}

/* The SDK deletes snapshots here (Sandbox.deleteSnapshot): E2B keeps them
 * as templates. 1 when ref was the id of one of the team's snapshots. */
static int delete_snapshot(struct api_req *r, const char *ref, struct herr *err)
{
	_cleanup_snapshot_ struct store_snapshot snap = { 0 };
	int rc = store_snapshot_get(r->api->store, ref, r->team_id, &snap, err);

	return rc <= 0 ? rc : lc_snapshot_delete(r->api->lc, r->team_id, ref, err);
}

static void delete_template(struct api_req *r, const char *ref)
{
	struct tmpl_mgr *m;
	struct herr err = { 0 };
	int rc = delete_snapshot(r, ref, &err);

	if (rc > 0) {
		r->status = 204;
		return;
	}
	if (rc < 0) {
		log_error("api", NULL, "deleting snapshot %s: %s", ref, err.msg);
		api_error(r, 500, "deleting the snapshot failed: %s", err.msg);
		return;
	}
	m = mgr(r);
	if (!m)
		return;
	rc = tmpl_delete(m, r->team_id, ref, &err);
	if (rc < 0)
		return reply_err(r, rc, &err);
	r->status = 204;
}

/* GET /templates and /v2/templates: the team's templates. */
static void list_templates(struct api_req *r)
{
	struct tmpl_mgr *m = mgr(r);
	struct lc_template none = { 0 };
	struct lc_resources res;
	struct herr err = { 0 };
	json_t *reply = NULL, *t;
	size_t i;
	int rc;

	if (!m)
		return;
	rc = tmpl_list(m, r->team_id, &reply, &err);
	if (rc < 0)
		return reply_err(r, rc, &err);
	/* A template's disk is the node's default unless a create asks. */
	lc_resources_for(r->api->lc, &none, &res);
	json_array_foreach(reply, i, t) {
		json_object_set_new(t, "diskSizeMB", json_integer((json_int_t)res.disk_mb));
		json_object_set_new(t, "envdVersion", json_string(r->api->cfg.envd_version));
	}
	api_json(r, 200, reply);
}

/* /templates/... below the first segment. */
static bool route_v1(struct api_req *r, char **seg, int n)
{
	bool get = is(r->method, "GET");

	if (n == 0 && get)
		list_templates(r);
	else if (n == 1 && is(seg[0], "tags"))
		tags(r);
	else if (n == 2 && is(seg[0], "aliases") && get)
		alias(r, seg[1]);
	else if (n == 3 && is(seg[0], "aliases") && get)
		api_error(r, 404, "template namespaces are not supported on this node");
	else if (n == 1 && is(r->method, "DELETE"))
		delete_template(r, seg[0]);
	else if (n == 3 && is(seg[1], "files") && get)
		files_hash(r, seg[0], seg[2]);
	else if (n == 4 && is(seg[1], "builds") && is(seg[3], "status") && get)
		build_status(r, seg[0], seg[2]);
	else if (n == 2 && is(seg[1], "tags") && get)
		tags_list(r, seg[0]);
	else
		return false;
	return true;
}

bool tpl_api_route(struct api_req *r, char **seg, int n)
{
	bool post = is(r->method, "POST");

	if (n >= 1 && is(seg[0], "templates"))
		return route_v1(r, seg + 1, n - 1);
	if (n == 2 && is(seg[0], "v2") && is(seg[1], "templates") && is(r->method, "GET")) {
		list_templates(r);
		return true;
	}
	if (n == 2 && is(seg[0], "v3") && is(seg[1], "templates") && post) {
		request_build(r);
		return true;
	}
	if (n == 5 && is(seg[0], "v2") && is(seg[1], "templates") && is(seg[3], "builds") &&
	    post) {
		start_build(r, seg[2], seg[4]);
		return true;
	}
	return false;
}
