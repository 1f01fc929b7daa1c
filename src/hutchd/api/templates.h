/*
 * The template endpoints of the REST API (protocol.md §2.2 #14-22, §2.4)
 * over the registry and builder in src/hutchd/template, and the upload of
 * COPY archives: a pre-signed URL (HMAC of team, files hash and expiry with
 * the server secret) that needs no API key, streamed to disk as it comes.
 */
#ifndef HUTCH_API_TEMPLATES_H
#define HUTCH_API_TEMPLATES_H

#include <stdbool.h>

#include "api_internal.h"

/* Routes /templates..., /v2/templates/..., /v3/templates; false if not ours. */
bool tpl_api_route(struct api_req *r, char **seg, int n);

/* True for the PUT of a signed upload URL (checked before authentication). */
bool tpl_api_is_upload(const char *method, const char *url);

/*
 * The MHD access handler for an upload: *state holds the open file across
 * calls. Answers 403 for a bad or expired signature, 413 past the limit.
 */
enum MHD_Result tpl_api_upload(struct api *a, struct MHD_Connection *conn,
			       const char *url, const char *data, size_t *size,
			       void **state);

/* Called when the request ends for any reason: removes a partial upload. */
void tpl_api_upload_end(void **state);

#endif
