/*
 * The agent's /files endpoint: GET downloads a file, POST uploads one or
 * more (protocol.md 5.2). This file checks who is asking (access token or
 * pre-signed URL, then the user) and hands the request to download.c or
 * upload.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "files_req.h"
#include "http.h"
#include "log.h"
#include "state.h"

static const char *query(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

unsigned files_errno_status(int err)
{
	switch (err) {
	case ENOENT:
	case ENOTDIR:
		return 404;
	case EACCES:
	case EPERM:
		return 403;
	case ENOSPC:
	case EDQUOT:
		return 507;
	case ELOOP:
	case ENAMETOOLONG:
	case EISDIR:
		return 400;
	default:
		return 500;
	}
}

static unsigned check_access(struct MHD_Connection *c, const char *operation,
			     struct files_msg *msg)
{
	char token[STATE_TOKEN_MAX];
	struct files_auth a = {
		.header = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Access-Token"),
		.signature = query(c, "signature"),
		.expiration = query(c, "signature_expiration"),
		.path = query(c, "path"),
		.username = query(c, "username"),
		.operation = operation,
		.now = time(NULL),
	};
	unsigned status;

	if (!state_access_token(token, sizeof(token)))
		return 0;
	a.token = token;
	status = files_check_auth(&a, msg);
	explicit_bzero(token, sizeof(token));
	return status;
}

static unsigned load_user(struct MHD_Connection *c, struct files_request *req,
			  struct files_msg *msg)
{
	const char *username = query(c, "username");
	char fallback[USERS_NAME_MAX];
	struct herr err = { 0 };

	if (!username) {
		state_default_user(fallback, sizeof(fallback));
		username = fallback;
	}
	if (users_lookup(username, &req->user, &err) < 0) {
		files_msg_set(msg, "error looking up user '%.64s': %s", username, err.msg);
		return 401;
	}
	state_default_workdir(req->workdir, sizeof(req->workdir));
	req->query_path = query(c, "path");
	return 0;
}

static enum MHD_Result begin(struct MHD_Connection *c, const char *method,
			     struct files_request *req)
{
	int is_get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
	int is_post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
	struct files_msg msg = { { 0 } };
	unsigned status;

	if (!is_get && !is_post) {
		req->responded = 1;
		return http_send_error(c, 405, "method %.16s is not allowed on /files, "
				       "use GET or POST", method);
	}
	status = check_access(c, is_get ? "read" : "write", &msg);
	if (status == 0)
		status = load_user(c, req, &msg);
	if (status != 0) {
		log_info("files", NULL, "%s /files refused: status=%u %s", method, status,
			 msg.text);
		req->responded = 1;
		return http_send_error(c, status, "%s", msg.text);
	}
	if (is_get) {
		req->responded = 1;
		return files_download(c, req);
	}
	return files_upload_begin(c, req);
}

enum MHD_Result files_handler(struct MHD_Connection *c, const char *method,
			      const char *upload_data, size_t *upload_data_size, void **state)
{
	struct files_request *req = *state;

	if (!req) {
		req = calloc(1, sizeof(*req));
		if (!req)
			return MHD_NO;
		*state = req;
		return begin(c, method, req);
	}
	if (*upload_data_size > 0) {
		if (!req->responded && req->up)
			files_upload_feed(req, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (req->responded || !req->up)
		return MHD_YES;
	req->responded = 1;
	return files_upload_finish(c, req);
}

void files_done(void *state)
{
	struct files_request *req = state;

	if (!req)
		return;
	files_upload_free(req->up);
	free(req);
}
