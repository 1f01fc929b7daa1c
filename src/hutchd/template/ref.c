/* Template reference parsing (see ref.h). */
#include "ref.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#define REF_TEXT_MAX 256

static bool name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

bool tref_is_uuid(const char *s)
{
	static const int dash[] = { 8, 13, 18, 23 };

	if (strlen(s) != 36)
		return false;
	for (int i = 0; i < 36; i++) {
		bool want_dash = i == dash[0] || i == dash[1] || i == dash[2] || i == dash[3];

		if (want_dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
			return false;
	}
	return true;
}

bool tref_is_id(const char *s)
{
	if (strlen(s) != TREF_ID_LEN)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
			return false;
	return true;
}

bool tref_is_sha256(const char *s)
{
	if (strlen(s) != 64)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'f') || (*s >= '0' && *s <= '9')))
			return false;
	return true;
}

int tref_tag_valid(const char *tag, struct herr *err)
{
	size_t n = strlen(tag);

	if (n == 0 || n > TREF_TAG_MAX)
		return herr_set(err, -EINVAL, "tag '%.80s' must have 1 to %d characters", tag,
				TREF_TAG_MAX);
	for (size_t i = 0; i < n; i++)
		if (!name_char(tag[i]) && tag[i] != '.')
			return herr_set(err, -EINVAL, "tag '%.80s' may only hold a-z, 0-9, "
					"'-', '_' and '.'", tag);
	if (tref_is_uuid(tag))
		return herr_set(err, -EINVAL, "tag '%.80s' must not be a UUID", tag);
	return 0;
}

static int check_name(const char *what, const char *s, struct herr *err)
{
	size_t n = strlen(s);

	if (n == 0 || n > TREF_NAME_MAX)
		return herr_set(err, -EINVAL, "template %s '%.80s' must have 1 to %d "
				"characters", what, s, TREF_NAME_MAX);
	for (size_t i = 0; i < n; i++)
		if (!name_char(s[i]))
			return herr_set(err, -EINVAL, "template %s '%.80s' may only hold a-z, "
					"0-9, '-' and '_'", what, s);
	return 0;
}

/* Copies text trimmed of surrounding white space and lower-cased. */
static int trim_lower(const char *text, char *out, size_t cap, struct herr *err)
{
	size_t b = 0, e = strlen(text);

	while (b < e && isspace((unsigned char)text[b]))
		b++;
	while (e > b && isspace((unsigned char)text[e - 1]))
		e--;
	if (e - b == 0 || e - b >= cap)
		return herr_set(err, -EINVAL, "template reference must have 1 to %zu "
				"characters", cap - 1);
	for (size_t i = b; i < e; i++)
		out[i - b] = (char)tolower((unsigned char)text[i]);
	out[e - b] = '\0';
	return 0;
}

int tref_parse(const char *text, struct tref *out, struct herr *err)
{
	char buf[REF_TEXT_MAX];
	char *colon, *slash, *name = buf;
	int rc = trim_lower(text, buf, sizeof(buf), err);

	memset(out, 0, sizeof(*out));
	if (rc < 0)
		return rc;
	colon = strchr(buf, ':');
	if (colon) {
		*colon = '\0';
		rc = tref_tag_valid(colon + 1, err);
		if (rc < 0)
			return rc;
		if (strcmp(colon + 1, "default") != 0)
			snprintf(out->tag, sizeof(out->tag), "%.*s", TREF_TAG_MAX,
				 colon + 1);
	}
	slash = strchr(buf, '/');
	if (slash) {
		*slash = '\0';
		rc = check_name("namespace", buf, err);
		if (rc < 0)
			return rc;
		snprintf(out->ns, sizeof(out->ns), "%.*s", TREF_NAME_MAX, buf);
		name = slash + 1;
	}
	rc = check_name("name", name, err);
	if (rc < 0)
		return rc;
	snprintf(out->name, sizeof(out->name), "%.*s", TREF_NAME_MAX, name);
	return 0;
}
