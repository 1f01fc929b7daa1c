/*
 * One /files request as its parts (files.c, download.c, upload.c) see it:
 * who asked, for which path, and the upload in progress.
 */
#ifndef HUTCH_AGENT_FILES_REQ_H
#define HUTCH_AGENT_FILES_REQ_H

#include <limits.h>
#include <microhttpd.h>
#include <stdint.h>
#include <zlib.h>

#include "files.h"
#include "users.h"

struct files_upload;

struct files_request {
	int responded; /* a response is queued: ignore anything that follows */
	struct agent_user user;
	const char *query_path; /* owned by the connection, valid for the request */
	char workdir[PATH_MAX];
	struct files_upload *up; /* POST only */
};

/* GET: answers the request at once (file, 4xx or 5xx). */
enum MHD_Result files_download(struct MHD_Connection *c, struct files_request *req);

/*
 * POST: files_upload_begin() checks what can be checked before the body and
 * returns MHD_YES with req->responded set when it already answered.
 * files_upload_feed() takes each body chunk; files_upload_finish() answers.
 */
enum MHD_Result files_upload_begin(struct MHD_Connection *c, struct files_request *req);
void files_upload_feed(struct files_request *req, const char *data, size_t len);
enum MHD_Result files_upload_finish(struct MHD_Connection *c, struct files_request *req);
void files_upload_free(struct files_upload *up);

/* HTTP status for an errno met while opening or creating a path. */
unsigned files_errno_status(int err);

#endif
