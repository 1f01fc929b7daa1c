/*
 * Internals of the agent's /files endpoint (upload and download), shared by
 * its source files and its unit tests. The HTTP entry points are declared in
 * http.h; what is here is the rule-keeping that needs no connection:
 * signatures, metadata headers, content codings, target paths, and the
 * switch to the user's file-system credentials.
 */
#ifndef HUTCH_AGENT_FILES_H
#define HUTCH_AGENT_FILES_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "err.h"
#include "users.h"

/* Each metadata header becomes the extended attribute "user.e2b.<key>". */
#define FILES_META_PREFIX "user.e2b."
#define FILES_META_KEY_MAX 246     /* 255 (xattr name limit) - strlen(prefix) */
#define FILES_META_TOTAL_MAX 4096  /* prefix + key + value, summed */

/* One upload request never writes more files than this. */
#define FILES_MAX_PER_REQUEST 4096

/* Where an error message about a request is written. */
struct files_msg {
	char text[HERR_MSG_MAX];
};

/* printf into msg, cut at its size (long paths make long messages). */
void files_msg_set(struct files_msg *msg, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* What a request to /files carries for the access check (all may be NULL). */
struct files_auth {
	const char *token;      /* configured access token; NULL or "" = open */
	const char *header;     /* X-Access-Token; NULL or "" = not sent */
	const char *signature;  /* query "signature" */
	const char *expiration; /* query "signature_expiration", raw text */
	const char *path;       /* query "path", raw (not resolved) */
	const char *username;   /* query "username", raw */
	const char *operation;  /* "read" (GET) or "write" (POST) */
	time_t now;
};

/*
 * envd's rules for /files: a matching X-Access-Token, or a valid and
 * unexpired v1 signature. Returns 0 when allowed, else the HTTP status
 * (400 for a malformed expiration, 401, or 500) with the message in msg.
 */
unsigned files_check_auth(const struct files_auth *a, struct files_msg *msg);

/*
 * Metadata from request headers. files_meta_add() looks at one header and,
 * when it is "X-Metadata-<key>", records lower(key) -> value in meta (an
 * object); the first value of a key wins. *total accumulates the size the
 * attributes will take. Returns 0, or -EINVAL with "invalid metadata: ...".
 */
int files_meta_add(json_t *meta, size_t *total, const char *header, const char *value,
		   struct files_msg *msg);

/* Content codings a download can be sent with. */
enum files_coding {
	FILES_CODING_IDENTITY,
	FILES_CODING_GZIP,
	FILES_CODING_NONE, /* nothing acceptable: 406 */
};

/* Picks the coding for an Accept-Encoding value (NULL = header absent). */
enum files_coding files_pick_coding(const char *accept_encoding);

/* 1 when identity (no coding) is acceptable to the client. */
int files_identity_ok(const char *accept_encoding);

/* When a download may be gzip-compressed (the agent's --download-gzip). */
enum files_gzip_mode {
	FILES_GZIP_FALLBACK,  /* only for clients that refuse identity */
	FILES_GZIP_NEGOTIATE, /* whenever the client prefers it */
};

/* The coding a download is sent with, for an Accept-Encoding and a mode. */
enum files_coding files_download_coding(const char *accept_encoding,
					enum files_gzip_mode mode);

/*
 * Content-Encoding of an upload body: 0 for none/identity, 1 for gzip,
 * -EINVAL for anything else (message in msg).
 */
int files_body_coding(const char *content_encoding, struct files_msg *msg);

/*
 * The path a multipart part named "file" is written to, before resolution:
 * the "path" query when given, else the part's filename taken verbatim.
 * Returns NULL (message in msg) when there is neither.
 */
const char *files_part_source(const char *query_path, const char *filename,
			      struct files_msg *msg);

/*
 * 0 when abs is not yet among the "path"s of the entries in results, else
 * -EEXIST with envd's "you cannot upload multiple files to the same path"
 * message.
 */
int files_check_duplicate(const json_t *results, const char *abs, struct files_msg *msg);

/* The response entry {"path","name","type":"file","metadata"?} of one file. */
json_t *files_entry_json(const char *abs, const json_t *meta);

/* A Content-Type for a download, from the name's extension or the first bytes. */
const char *files_guess_type(const char *name, const unsigned char *head, size_t n);

/* Content-Disposition value naming the file; -ENOSPC when cap is too small. */
int files_disposition(const char *name, char *out, size_t cap);

/* An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") for Last-Modified. */
void files_http_date(time_t t, char *out, size_t cap);

/*
 * File-system credentials of the calling thread. While "entered", opens,
 * mkdirs and xattr changes are checked by the kernel against the user's
 * uid, gid and groups instead of root's.
 */
struct files_creds {
	int switched;
	int ngroups;
	gid_t groups[USERS_GROUPS_MAX];
};

int files_creds_enter(const struct agent_user *u, struct files_creds *saved,
		      struct herr *err);
void files_creds_leave(struct files_creds *saved);

#endif
