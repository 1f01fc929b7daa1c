/*
 * libFuzzer target: the parsers behind GET /v2/sandboxes' query (metadata
 * filter, RFC 3339 times, page tokens). The first byte picks the parser, the
 * rest is the raw value. A failed metadata parse must leave nothing for the
 * caller to free (sbx_list always frees what *n says), and a decoded page token
 * must encode back to a token that decodes to the same cursor.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

#define FUZZ_META_CAP 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_meta(const char *s)
{
	char *keys[FUZZ_META_CAP], *values[FUZZ_META_CAP];
	struct herr err;
	int n = -1;

	if (meta_filter_parse(s, keys, values, FUZZ_META_CAP, &n, &err) < 0 && n != 0)
		abort();
	if (n < 0 || n > FUZZ_META_CAP)
		abort();
	meta_filter_free(keys, values, n);
}

static void fuzz_token(const char *s, bool ascending)
{
	char id[128], again[512], id2[128];
	int64_t started, started2;
	struct herr err;

	if (page_token_decode(s, ascending, &started, id, sizeof(id), &err) < 0)
		return;
	if (page_token_encode(started, id, ascending, again, sizeof(again)) < 0)
		return;
	if (page_token_decode(again, ascending, &started2, id2, sizeof(id2), &err) < 0 ||
	    started2 != started || strcmp(id, id2) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;
	int64_t ms;
	struct herr err;

	if (size < 1)
		return 0;
	s = strndup((const char *)data + 1, size - 1);
	if (!s)
		return 0;
	switch (data[0] % 4) {
	case 0:
		fuzz_meta(s);
		break;
	case 1:
		(void)time_parse(s, &ms, &err);
		break;
	default:
		fuzz_token(s, data[0] % 4 == 2);
		break;
	}
	free(s);
	return 0;
}
