/*
 * Template references as clients write them (protocol.md §2.1): a template
 * id, an alias name, or namespace/name, each optionally ":tag". Names are
 * trimmed and lower-cased; name and namespace use [a-z0-9-_], tags
 * [a-z0-9-_.]; the tag "default" means no tag; a tag may not look like a
 * UUID (those are build ids). Pure functions, unit-tested.
 */
#ifndef HUTCH_TPL_REF_H
#define HUTCH_TPL_REF_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

#define TREF_NAME_MAX 64
#define TREF_TAG_MAX 64
#define TREF_ID_LEN 20

struct tref {
	char ns[TREF_NAME_MAX + 1];   /* "" when none */
	char name[TREF_NAME_MAX + 1];
	char tag[TREF_TAG_MAX + 1];   /* "" means the default tag */
};

/* Parses a reference; -EINVAL with a message naming the bad part. */
int tref_parse(const char *text, struct tref *out, struct herr *err);

/* Checks one tag (after lower-casing); "default" is accepted. */
int tref_tag_valid(const char *tag, struct herr *err);

/* True for 20 characters of [a-z0-9] (the shape of a template id). */
bool tref_is_id(const char *s);

/* True for the canonical 8-4-4-4-12 hex form. */
bool tref_is_uuid(const char *s);

/* True for 64 lowercase hex characters (a files hash). */
bool tref_is_sha256(const char *s);

#endif
