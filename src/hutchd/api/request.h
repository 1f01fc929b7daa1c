/*
 * Parsing and validation of what API clients send: the create body, network
 * settings, list filters (the SDKs' triple-encoded metadata), page tokens and
 * timestamps. Pure functions, so that each rule is unit-tested on its own.
 */
#ifndef HUTCH_API_REQUEST_H
#define HUTCH_API_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"

#define META_MAX_PAIRS 64
#define META_KEY_MAX 256
#define META_VALUE_MAX 2048
#define ENV_MAX_PAIRS 256
#define ENV_VALUE_MAX 32768
#define TEMPLATE_REF_MAX 128

/* Percent-decodes n bytes of in (plus_space: '+' is a space). -EINVAL on a bad escape. */
int url_unescape(const char *in, size_t n, bool plus_space, char **out, struct herr *err);

/*
 * Decodes the `metadata` list filter as both SDKs encode it (protocol.md
 * §2.3.3): raw is the query value after normal query decoding. Fills up to
 * cap pairs (allocated; free with meta_filter_free).
 */
int meta_filter_parse(const char *raw, char **keys, char **values, int cap, int *n,
		      struct herr *err);
void meta_filter_free(char **keys, char **values, int n);

/* Milliseconds <-> RFC 3339 UTC ("2026-01-02T03:04:05.678Z"). */
void time_format(int64_t ms, char out[32]);
/* Accepts "Z" or a "+hh:mm" offset and up to 9 fractional digits. */
int time_parse(const char *s, int64_t *ms, struct herr *err);

/* Opaque page cursor: url-safe base64 of "<started_ms>__<id>__<asc|desc>". */
int page_token_encode(int64_t started_at, const char *id, bool ascending, char *out,
		      size_t cap);
int page_token_decode(const char *token, bool ascending, int64_t *started_at,
		      char *id, size_t id_cap, struct herr *err);

/* A checked string->string JSON object (metadata, envVars). */
int string_map_validate(json_t *obj, const char *field, int max_pairs, size_t key_max,
			size_t value_max, bool env_names, struct herr *err);

/*
 * Validates a network object (create's `network` or PUT /network's body) and
 * builds the stored form {allowOut, denyOut, allowPublicTraffic,
 * maskRequestHost}. allow_internet may be NULL (absent); when false the deny
 * list becomes exactly ["0.0.0.0/0"]. The caller owns *out.
 */
int network_build(json_t *net, json_t *allow_internet, bool secure, json_t **out,
		  struct herr *err);

/* Checks a template reference: name[:tag], namespace/name, or an id. */
int template_ref_valid(const char *ref);

#endif
