/*
 * /files rules that need no connection: the access check (token header or
 * pre-signed URL), X-Metadata-* headers, content codings, the target of a
 * multipart part, and the headers describing a download.
 */
#include "files.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"

void files_msg_set(struct files_msg *msg, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg->text, sizeof(msg->text), fmt, ap);
	va_end(ap);
}

static int is_set(const char *s)
{
	return s && *s;
}

/*
 * Strict decimal int64: the signature covers the number as envd prints it
 * back, so "+5" or "05" must not be read as 5 (they would then fail the
 * signature anyway, but with a misleading message).
 */
static int parse_unix_seconds(const char *s, int64_t *out)
{
	const char *p = s;
	char *end;
	long long v;

	if (*p == '-')
		p++;
	if (!isdigit((unsigned char)*p))
		return -EINVAL;
	for (const char *q = p; *q; q++)
		if (!isdigit((unsigned char)*q))
			return -EINVAL;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

unsigned files_check_auth(const struct files_auth *a, struct files_msg *msg)
{
	char expected[128];
	char exp_text[32];
	int64_t exp = 0;
	int r;

	if (!is_set(a->token))
		return 0;

	/* A token in the header decides alone: no signature is looked at. */
	if (is_set(a->header)) {
		if (auth_equal(a->header, a->token))
			return 0;
		files_msg_set(msg, "access token present in header but does not match");
		return 401;
	}

	if (!a->signature) {
		files_msg_set(msg, "missing signature query parameter");
		return 401;
	}
	if (a->expiration) {
		if (parse_unix_seconds(a->expiration, &exp) < 0) {
			files_msg_set(msg, "invalid signature_expiration '%.64s': expected unix seconds",
				a->expiration);
			return 400;
		}
		snprintf(exp_text, sizeof(exp_text), "%" PRId64, exp);
	}

	r = auth_sign_v1(a->path ? a->path : "", a->operation,
			 a->username ? a->username : "", a->token,
			 a->expiration ? exp_text : NULL, expected, sizeof(expected));
	if (r < 0) {
		files_msg_set(msg, "computing the expected signature failed: %s", strerror(-r));
		return 500;
	}
	if (!auth_equal(expected, a->signature)) {
		files_msg_set(msg, "invalid signature");
		return 401;
	}
	/* Checked after the signature, so an attacker learns nothing from it. */
	if (a->expiration && exp < (int64_t)a->now) {
		files_msg_set(msg, "signature is already expired");
		return 401;
	}
	return 0;
}

static int printable_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return 0;
	return 1;
}

int files_meta_add(json_t *meta, size_t *total, const char *header, const char *value,
		   struct files_msg *msg)
{
	static const char prefix[] = "x-metadata-";
	const size_t plen = sizeof(prefix) - 1;
	char key[FILES_META_KEY_MAX + 1];
	size_t klen, vlen;

	if (!header || strncasecmp(header, prefix, plen) != 0)
		return 0;
	header += plen;
	klen = strlen(header);
	if (klen == 0)
		return 0; /* "X-Metadata-" alone names nothing: ignored, as envd does */
	if (!value)
		value = "";

	if (klen > FILES_META_KEY_MAX) {
		files_msg_set(msg, "invalid metadata: key '%.32s...' is %zu bytes, the limit is %d",
			header, klen, FILES_META_KEY_MAX);
		return -EINVAL;
	}
	for (size_t i = 0; i <= klen; i++)
		key[i] = (char)tolower((unsigned char)header[i]);
	if (json_object_get(meta, key))
		return 0; /* the first value of a repeated header wins */

	if (!printable_ascii(key) || !printable_ascii(value)) {
		files_msg_set(msg, "invalid metadata: key '%.64s' or its value has characters "
			"outside printable ASCII", printable_ascii(key) ? key : "?");
		return -EINVAL;
	}
	vlen = strlen(value);
	*total += strlen(FILES_META_PREFIX) + klen + vlen;
	if (*total > FILES_META_TOTAL_MAX) {
		files_msg_set(msg, "invalid metadata: total size passes %d bytes at key '%.64s'",
			FILES_META_TOTAL_MAX, key);
		return -EINVAL;
	}
	if (json_object_set_new(meta, key, json_string(value)) < 0) {
		files_msg_set(msg, "invalid metadata: cannot store key '%.64s'", key);
		return -EINVAL;
	}
	return 0;
}

/*
 * Quality value in thousandths. A malformed one counts as 1, as envd reads
 * it; values above 1 are clamped.
 */
static int parse_q(const char *s, size_t n)
{
	int v = 0, digits = 0;
	size_t i = 0;

	if (n == 0 || (s[0] != '0' && s[0] != '1'))
		return 1000;
	v = (s[0] - '0') * 1000;
	i = 1;
	if (i < n && s[i] == '.') {
		int scale = 100;
		for (i++; i < n && digits < 3 && isdigit((unsigned char)s[i]); i++, digits++) {
			v += (s[i] - '0') * scale;
			scale /= 10;
		}
	}
	if (i != n)
		return 1000;
	return v > 1000 ? 1000 : v;
}

static size_t trim(const char **s, size_t n)
{
	while (n && isspace((unsigned char)**s)) {
		(*s)++;
		n--;
	}
	while (n && isspace((unsigned char)(*s)[n - 1]))
		n--;
	return n;
}

/* Finds the q parameter among ";"-separated parameters; 1000 when absent. */
static int element_q(const char *params, size_t n)
{
	while (n) {
		const char *semi = memchr(params, ';', n);
		size_t len = semi ? (size_t)(semi - params) : n;
		const char *p = params;
		size_t plen = trim(&p, len);

		if (plen >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
			const char *v = p + 2;
			size_t vlen = trim(&v, plen - 2);
			return parse_q(v, vlen);
		}
		if (!semi)
			break;
		n -= len + 1;
		params = semi + 1;
	}
	return 1000;
}

struct coding_prefs {
	int gzip_q, identity_q; /* thousandths, after applying "*" */
	int gzip_named;
};

static void parse_accept(const char *accept, struct coding_prefs *cp)
{
	int gzip_q = -1, identity_q = -1, star_q = -1;
	const char *p = accept;

	while (*p) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		const char *semi = memchr(p, ';', len);
		const char *name = p;
		size_t nlen = trim(&name, semi ? (size_t)(semi - p) : len);
		int q = semi ? element_q(semi + 1, len - (size_t)(semi - p) - 1) : 1000;

		if ((nlen == 4 && !strncasecmp(name, "gzip", 4)) ||
		    (nlen == 6 && !strncasecmp(name, "x-gzip", 6)))
			gzip_q = gzip_q < 0 ? q : gzip_q;
		else if (nlen == 8 && !strncasecmp(name, "identity", 8))
			identity_q = identity_q < 0 ? q : identity_q;
		else if (nlen == 1 && name[0] == '*')
			star_q = star_q < 0 ? q : star_q;
		p = comma ? comma + 1 : p + len;
	}

	/*
	 * RFC 9110 12.5.3: "*" stands for every coding not listed; identity is
	 * acceptable unless refused by "identity;q=0" or by "*;q=0" without an
	 * identity entry.
	 */
	cp->gzip_named = gzip_q >= 0;
	cp->gzip_q = gzip_q >= 0 ? gzip_q : (star_q > 0 ? star_q : 0);
	cp->identity_q = identity_q >= 0 ? identity_q : (star_q == 0 ? 0 : 1000);
}

enum files_coding files_pick_coding(const char *accept)
{
	struct coding_prefs cp;

	if (!accept || !*accept)
		return FILES_CODING_IDENTITY;
	parse_accept(accept, &cp);

	/*
	 * gzip is chosen when named and at least as preferred as identity
	 * (Node's fetch names it on every request); a bare "*" keeps identity,
	 * as envd does.
	 */
	if (cp.gzip_q > 0 && (cp.identity_q == 0 || cp.gzip_q > cp.identity_q ||
			      (cp.gzip_named && cp.gzip_q >= cp.identity_q)))
		return FILES_CODING_GZIP;
	if (cp.identity_q > 0)
		return FILES_CODING_IDENTITY;
	return FILES_CODING_NONE;
}

int files_identity_ok(const char *accept)
{
	struct coding_prefs cp;

	if (!accept || !*accept)
		return 1;
	parse_accept(accept, &cp);
	return cp.identity_q > 0;
}

int files_body_coding(const char *ce, struct files_msg *msg)
{
	const char *name = ce;
	size_t n;

	if (!ce)
		return 0;
	n = trim(&name, strlen(ce));
	if (n == 0 || (n == 8 && !strncasecmp(name, "identity", 8)))
		return 0;
	if ((n == 4 && !strncasecmp(name, "gzip", 4)) ||
	    (n == 6 && !strncasecmp(name, "x-gzip", 6)))
		return 1;
	files_msg_set(msg, "unsupported Content-Encoding: %.64s, supported: [gzip]", ce);
	return -EINVAL;
}

const char *files_part_source(const char *query_path, const char *filename,
			      struct files_msg *msg)
{
	if (query_path)
		return query_path;
	if (!filename || !*filename) {
		files_msg_set(msg, "a multipart part named 'file' has no filename and no path "
			"query parameter was given");
		return NULL;
	}
	return filename;
}

int files_check_duplicate(const json_t *results, const char *abs, struct files_msg *msg)
{
	size_t i;
	json_t *e;

	json_array_foreach(results, i, e) {
		const char *p = json_string_value(json_object_get(e, "path"));
		if (p && strcmp(p, abs) == 0) {
			files_msg_set(msg, "you cannot upload multiple files to the same path '%.300s' "
				"in one upload request, only the first specified file was "
				"uploaded", abs);
			return -EEXIST;
		}
	}
	return 0;
}

json_t *files_entry_json(const char *abs, const json_t *meta)
{
	const char *slash = strrchr(abs, '/');
	const char *name = slash && slash[1] ? slash + 1 : abs;
	json_t *e = json_pack("{s:s, s:s, s:s}", "path", abs, "name", name, "type", "file");

	if (e && meta && json_object_size(meta) > 0)
		json_object_set_new(e, "metadata", json_deep_copy(meta));
	return e;
}

static const struct {
	const char *ext;
	const char *type;
} mime_table[] = {
	{ "avif", "image/avif" },
	{ "css", "text/css; charset=utf-8" },
	{ "csv", "text/csv; charset=utf-8" },
	{ "gif", "image/gif" },
	{ "gz", "application/gzip" },
	{ "htm", "text/html; charset=utf-8" },
	{ "html", "text/html; charset=utf-8" },
	{ "ico", "image/vnd.microsoft.icon" },
	{ "jpeg", "image/jpeg" },
	{ "jpg", "image/jpeg" },
	{ "js", "text/javascript; charset=utf-8" },
	{ "json", "application/json" },
	{ "md", "text/markdown; charset=utf-8" },
	{ "mjs", "text/javascript; charset=utf-8" },
	{ "mp3", "audio/mpeg" },
	{ "mp4", "video/mp4" },
	{ "pdf", "application/pdf" },
	{ "png", "image/png" },
	{ "svg", "image/svg+xml" },
	{ "tar", "application/x-tar" },
	{ "txt", "text/plain; charset=utf-8" },
	{ "wasm", "application/wasm" },
	{ "webm", "video/webm" },
	{ "webp", "image/webp" },
	{ "xml", "text/xml; charset=utf-8" },
	{ "zip", "application/zip" },
};

/* Length of a valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	size_t len;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4;
	else
		return 0;
	if (len > n)
		return n; /* cut at the end of the sample: give it the benefit */
	for (size_t i = 1; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

static int looks_like_text(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n;) {
		unsigned char c = p[i];
		size_t len;

		if (c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f')
			return 0;
		len = utf8_len(p + i, n - i);
		if (len == 0)
			return 0;
		i += len;
	}
	return 1;
}

const char *files_guess_type(const char *name, const unsigned char *head, size_t n)
{
	const char *slash = strrchr(name, '/');
	const char *dot = strrchr(slash ? slash + 1 : name, '.');

	if (dot && dot[1]) {
		for (size_t i = 0; i < sizeof(mime_table) / sizeof(mime_table[0]); i++)
			if (strcasecmp(dot + 1, mime_table[i].ext) == 0)
				return mime_table[i].type;
	}
	if (head && n > 0 && looks_like_text(head, n < 512 ? n : 512))
		return "text/plain; charset=utf-8";
	return "application/octet-stream";
}

int files_disposition(const char *name, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	int plain = 1;
	size_t o;

	for (const char *p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e || *p == '"' ||
		    *p == '\\' || *p == '%')
			plain = 0;

	if (plain) {
		int n = snprintf(out, cap, "inline; filename=\"%s\"", name);
		return n < 0 || (size_t)n >= cap ? -ENOSPC : 0;
	}

	/*
	 * RFC 6266/8187 form: every byte outside the unreserved set is
	 * percent-encoded, so no quote, CR or LF can reach the header.
	 */
	o = (size_t)snprintf(out, cap, "inline; filename*=UTF-8''");
	for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
		int keep = isalnum(*p) || strchr("!#$&+-.^_`|~", *p);
		if (o + (keep ? 1 : 3) >= cap)
			return -ENOSPC;
		if (keep) {
			out[o++] = (char)*p;
		} else {
			out[o++] = '%';
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		}
	}
	out[o] = '\0';
	return 0;
}

void files_http_date(time_t t, char *out, size_t cap)
{
	static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;

	/* Names spelled out here: strftime's %a/%b would follow the locale. */
	if (!gmtime_r(&t, &tm)) {
		snprintf(out, cap, "Thu, 01 Jan 1970 00:00:00 GMT");
		return;
	}
	snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday],
		 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
		 tm.tm_sec);
}
