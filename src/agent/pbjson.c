/*
 * proto3 JSON and binary codecs over protobuf-c descriptors (see pbjson.h).
 *
 * JSON goes through a jansson tree. While a request is parsed, jansson's
 * allocations are charged to a per-thread budget, so a body made of millions
 * of tiny values cannot make the tree cost more than a few times the body;
 * the message built from the tree then comes from the call's capped arena.
 */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <malloc.h>
#include <math.h>
#include <nettle/base64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbjson.h"

#include "cleanup.h"

#define NAME_MAX_LEN 128
#define PATH_MAX_LEN 256

/* ---- jansson allocation budget ---------------------------------------- */

struct json_budget {
	int active;
	int exhausted;
	size_t used;
	size_t cap;
};

static __thread struct json_budget budget;

/*
 * The functions stay plain malloc/free outside a budgeted parse, and count
 * with malloc_usable_size instead of a size header, so memory jansson hands
 * to other code can still be released with free() as jansson documents.
 */
static void *budget_malloc(size_t n)
{
	void *p;

	if (!budget.active)
		return malloc(n);
	if (n > budget.cap - budget.used) {
		budget.exhausted = 1;
		return NULL;
	}
	p = malloc(n);
	if (p)
		budget.used += malloc_usable_size(p);
	return p;
}

static void budget_free(void *p)
{
	if (p && budget.active) {
		size_t n = malloc_usable_size(p);

		budget.used = budget.used > n ? budget.used - n : 0;
	}
	free(p);
}

__attribute__((constructor)) static void pbjson_install_allocator(void)
{
	json_set_alloc_funcs(budget_malloc, budget_free);
}

/* ---- names ------------------------------------------------------------- */

/* proto field name -> JSON name: "exit_code" -> "exitCode", as protoc does. */
static void json_name(const char *name, char out[NAME_MAX_LEN])
{
	size_t o = 0;
	int upper = 0;

	for (; *name && o < NAME_MAX_LEN - 1; name++) {
		if (*name == '_') {
			upper = 1;
			continue;
		}
		out[o++] = upper ? (char)toupper((unsigned char)*name) : *name;
		upper = 0;
	}
	out[o] = '\0';
}

static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *desc,
						  const char *key)
{
	char jname[NAME_MAX_LEN];

	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];

		if (strcmp(key, f->name) == 0)
			return f;
		json_name(f->name, jname);
		if (strcmp(key, jname) == 0)
			return f;
	}
	return NULL;
}

static int is_timestamp(const ProtobufCMessageDescriptor *desc)
{
	return strcmp(desc->name, "google.protobuf.Timestamp") == 0;
}

/*
 * protobuf-c has no map flag: a map<K,V> field is a repeated message field of
 * the nested "<Field>Entry" type with key = 1 and value = 2, which is exactly
 * what protoc generates and what a user type cannot collide with.
 */
static int is_map_field(const ProtobufCFieldDescriptor *f)
{
	const ProtobufCMessageDescriptor *e = f->descriptor;
	char jname[NAME_MAX_LEN];
	size_t n;

	if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
		return 0;
	if (e->n_fields != 2 || e->fields[0].id != 1 || e->fields[1].id != 2 ||
	    strcmp(e->fields[0].name, "key") != 0 || strcmp(e->fields[1].name, "value") != 0)
		return 0;
	json_name(f->name, jname);
	jname[0] = (char)toupper((unsigned char)jname[0]);
	n = strlen(jname);
	return strncmp(e->short_name, jname, n) == 0 && strcmp(e->short_name + n, "Entry") == 0;
}

static size_t elem_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return 8;
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	default:
		return 4; /* 32-bit integers, enums, float */
	}
}

#define MEMBER(m, off) ((void *)((char *)(m) + (off)))
#define CMEMBER(m, off) ((const void *)((const char *)(m) + (off)))

/* ---- base64 and UTF-8 --------------------------------------------------- */

char *pbjson_b64_encode(const void *data, size_t len)
{
	char *out;

	if (len > (SIZE_MAX / 4) * 3 - 3)
		return NULL;
	out = malloc(BASE64_ENCODE_RAW_LENGTH(len) + 1);
	if (!out)
		return NULL;
	base64_encode_raw(out, len, data);
	out[BASE64_ENCODE_RAW_LENGTH(len)] = '\0';
	return out;
}

static int b64_char(unsigned char c)
{
	if (c == '-')
		return '+';
	if (c == '_')
		return '/';
	if (isalnum(c) || c == '+' || c == '/')
		return c;
	return -1;
}

/*
 * Every character is checked and mapped to the standard alphabet here, and
 * the length too, so nettle only unpacks the bits. No padding is fed to it:
 * nettle checks a short last group's spare bits against its padding only,
 * and envd (Go's non-strict base64) ignores them, so a client's encoder may
 * leave them set ("QR==" is "A"). base64_decode_final is not asked either:
 * all it checks is that no bits are left over, which a short group's spare
 * bits always are; len % 4 != 1 is what makes the input whole.
 */
long pbjson_b64_decode(const char *in, size_t len, unsigned char *out)
{
	struct base64_decode_ctx ctx;
	char group[4096];
	size_t o = 0, g = 0;

	while (len > 0 && in[len - 1] == '=')
		len--;
	if (len % 4 == 1)
		return -EINVAL;

	base64_decode_init(&ctx);
	for (size_t i = 0; i < len; i++) {
		int c = b64_char((unsigned char)in[i]);

		if (c < 0)
			return -EINVAL;
		group[g++] = (char)c;
		if (g == sizeof(group) || i + 1 == len) {
			size_t n;

			if (!base64_decode_update(&ctx, &n, out + o, g, group))
				return -EINVAL;
			o += n;
			g = 0;
		}
	}
	return (long)o;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	uint32_t cp;
	size_t len;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	/* Overlong forms, UTF-16 surrogates and values past U+10FFFF. */
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

static int utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;

	while (n > 0) {
		size_t k = utf8_seq(p, n);

		if (k == 0)
			return 0;
		p += k;
		n -= k;
	}
	return 1;
}

/*
 * A JSON string for text we emit. Our strings are mostly file names, which
 * Linux lets be any bytes: rather than fail a whole listing, invalid UTF-8 is
 * replaced by U+FFFD, which is what clients would show for it anyway.
 */
static json_t *json_text(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	const unsigned char *p = (const unsigned char *)s;
	char *fixed, *o;
	json_t *j;

	if (!s)
		return json_string("");
	if (utf8_valid(s, n))
		return json_stringn_nocheck(s, n);
	if (n > (SIZE_MAX - 1) / 3)
		return NULL;
	fixed = malloc(3 * n + 1);
	if (!fixed)
		return NULL;
	o = fixed;
	while (n > 0) {
		size_t k = utf8_seq(p, n);

		if (k == 0) {
			memcpy(o, "\xef\xbf\xbd", 3);
			o += 3;
			k = 1;
		} else {
			memcpy(o, p, k);
			o += k;
		}
		p += k;
		n -= k;
	}
	j = json_stringn_nocheck(fixed, (size_t)(o - fixed));
	free(fixed);
	return j;
}

/* ---- RFC 3339 ---------------------------------------------------------- */

#define TS_MIN_SECONDS (-62135596800LL) /* 0001-01-01T00:00:00Z */
#define TS_MAX_SECONDS 253402300799LL   /* 9999-12-31T23:59:59Z */

/* Days since 1970-01-01 of a proleptic Gregorian date (eras of 400 years). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

int pbjson_time_format(int64_t seconds, int32_t nanos, char out[40])
{
	int64_t days, rem, y;
	int m, d;
	int n;

	if (seconds < TS_MIN_SECONDS || seconds > TS_MAX_SECONDS || nanos < 0 ||
	    nanos > 999999999)
		return -EINVAL;
	days = seconds >= 0 ? seconds / 86400 : -((-seconds + 86399) / 86400);
	rem = seconds - days * 86400;
	civil_from_days(days, &y, &m, &d);
	n = snprintf(out, 40, "%04" PRId64 "-%02d-%02dT%02d:%02d:%02d", y, m, d,
		     (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60));
	if (nanos == 0)
		snprintf(out + n, 40 - (size_t)n, "Z");
	else if (nanos % 1000000 == 0)
		snprintf(out + n, 40 - (size_t)n, ".%03dZ", nanos / 1000000);
	else if (nanos % 1000 == 0)
		snprintf(out + n, 40 - (size_t)n, ".%06dZ", nanos / 1000);
	else
		snprintf(out + n, 40 - (size_t)n, ".%09dZ", nanos);
	return 0;
}

/* Reads exactly n digits at *s. */
static int digits(const char **s, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)(*s)[i]))
			return -1;
		v = v * 10 + ((*s)[i] - '0');
	}
	*s += n;
	*out = v;
	return 0;
}

static int expect(const char **s, char c)
{
	if (**s != c)
		return -1;
	(*s)++;
	return 0;
}

static int days_in_month(int y, int m)
{
	static const int dim[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : dim[m - 1];
}

static int parse_fraction(const char **s, int32_t *nanos)
{
	int n = 0;
	int32_t v = 0;

	if (**s != '.')
		return 0;
	(*s)++;
	while (isdigit((unsigned char)**s)) {
		if (++n > 9)
			return -1;
		v = v * 10 + (**s - '0');
		(*s)++;
	}
	if (n == 0)
		return -1;
	for (; n < 9; n++)
		v *= 10;
	*nanos = v;
	return 0;
}

static int parse_offset(const char **s, int *offset)
{
	int sign, h, m;

	if (**s == 'Z' || **s == 'z') {
		(*s)++;
		*offset = 0;
		return 0;
	}
	if (**s != '+' && **s != '-')
		return -1;
	sign = **s == '-' ? -1 : 1;
	(*s)++;
	if (digits(s, 2, &h) || expect(s, ':') || digits(s, 2, &m) || h > 23 || m > 59)
		return -1;
	*offset = sign * (h * 3600 + m * 60);
	return 0;
}

int pbjson_time_parse(const char *s, int64_t *seconds, int32_t *nanos)
{
	int y, mo, d, h, mi, se, offset;
	int32_t ns = 0;
	int64_t t;

	if (digits(&s, 4, &y) || expect(&s, '-') || digits(&s, 2, &mo) || expect(&s, '-') ||
	    digits(&s, 2, &d))
		return -EINVAL;
	if (*s != 'T' && *s != 't')
		return -EINVAL;
	s++;
	if (digits(&s, 2, &h) || expect(&s, ':') || digits(&s, 2, &mi) || expect(&s, ':') ||
	    digits(&s, 2, &se))
		return -EINVAL;
	if (parse_fraction(&s, &ns) || parse_offset(&s, &offset) || *s != '\0')
		return -EINVAL;
	if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 ||
	    mi > 59 || se > 59)
		return -EINVAL;
	t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset;
	if (t < TS_MIN_SECONDS || t > TS_MAX_SECONDS)
		return -EINVAL;
	*seconds = t;
	*nanos = ns;
	return 0;
}

/* ---- JSON -> message --------------------------------------------------- */

struct dec {
	struct arena *a;
	struct herr *err;
	char path[PATH_MAX_LEN]; /* the field being decoded, for error messages */
	size_t plen;
};

/* Appends ".name" (or "name" at the top), or "[key]" when key is set. */
static size_t path_push(struct dec *d, const char *name, int key)
{
	size_t old = d->plen;
	size_t room = sizeof(d->path) - old;
	int n;

	if (key)
		n = snprintf(d->path + old, room, "[%s]", name);
	else
		n = snprintf(d->path + old, room, "%s%s", old ? "." : "", name);

	if (n > 0)
		d->plen = old + (size_t)n < sizeof(d->path) ? old + (size_t)n
							     : sizeof(d->path) - 1;
	return old;
}

static void path_pop(struct dec *d, size_t old)
{
	d->plen = old;
	d->path[old] = '\0';
}

static int dec_fail(struct dec *d, const char *what)
{
	return herr_set(d->err, -EINVAL, "invalid value for field '%s': %s",
			d->plen ? d->path : "(message)", what);
}

static void *dec_alloc(struct dec *d, size_t n)
{
	void *p = arena_alloc(d->a, n);

	if (!p)
		herr_set(d->err, -E2BIG, "request too large: decoding '%s' passed the %zu-byte "
			 "memory cap", d->plen ? d->path : "(message)", arena_cap(d->a));
	return p;
}

static ProtobufCMessage *dec_new_message(struct dec *d, const ProtobufCMessageDescriptor *desc)
{
	ProtobufCMessage *m = dec_alloc(d, desc->sizeof_message);

	if (m)
		desc->message_init(m);
	return m;
}

/* Integer text: decimal, or an exponent form whose value is integral ("1e3"). */
static int text_to_double(const char *s, double *out)
{
	char *end;

	if (!*s || isspace((unsigned char)*s))
		return -1;
	errno = 0;
	*out = strtod(s, &end);
	return *end || errno == ERANGE ? -1 : 0;
}

static int text_to_int(const char *s, int64_t *out)
{
	char *end;
	long long v;
	double x;

	if (!*s || isspace((unsigned char)*s) || *s == '+')
		return -1;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (!*end && !errno) {
		*out = v;
		return 0;
	}
	if (errno == ERANGE || text_to_double(s, &x) || x != trunc(x) ||
	    x < -9223372036854775808.0 || x >= 9223372036854775808.0)
		return -1;
	*out = (int64_t)x;
	return 0;
}

static int text_to_uint(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	double x;

	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (!*end && !errno) {
		*out = v;
		return 0;
	}
	if (errno == ERANGE || text_to_double(s, &x) || x != trunc(x) ||
	    x >= 18446744073709551616.0)
		return -1;
	*out = (uint64_t)x;
	return 0;
}

static int json_to_int(struct dec *d, const json_t *v, int64_t min, int64_t max, int64_t *out)
{
	int64_t x;

	if (json_is_integer(v)) {
		x = json_integer_value(v);
	} else if (json_is_real(v)) {
		double r = json_real_value(v);

		if (r != trunc(r) || r < -9223372036854775808.0 || r >= 9223372036854775808.0)
			return dec_fail(d, "not an integer in range");
		x = (int64_t)r;
	} else if (json_is_string(v)) {
		if (text_to_int(json_string_value(v), &x))
			return dec_fail(d, "not an integer");
	} else {
		return dec_fail(d, "expected an integer (number or string)");
	}
	if (x < min || x > max)
		return dec_fail(d, "integer out of range");
	*out = x;
	return 0;
}

static int json_to_uint(struct dec *d, const json_t *v, uint64_t max, uint64_t *out)
{
	uint64_t x;

	if (json_is_integer(v)) {
		if (json_integer_value(v) < 0)
			return dec_fail(d, "integer out of range");
		x = (uint64_t)json_integer_value(v);
	} else if (json_is_real(v)) {
		double r = json_real_value(v);

		if (r != trunc(r) || r < 0 || r >= 18446744073709551616.0)
			return dec_fail(d, "not an integer in range");
		x = (uint64_t)r;
	} else if (json_is_string(v)) {
		if (text_to_uint(json_string_value(v), &x))
			return dec_fail(d, "not an unsigned integer");
	} else {
		return dec_fail(d, "expected an integer (number or string)");
	}
	if (x > max)
		return dec_fail(d, "integer out of range");
	*out = x;
	return 0;
}

static int json_to_double(struct dec *d, const json_t *v, double *out)
{
	const char *s;

	if (json_is_number(v)) {
		*out = json_number_value(v);
		return 0;
	}
	if (!json_is_string(v))
		return dec_fail(d, "expected a number");
	s = json_string_value(v);
	if (strcmp(s, "NaN") == 0)
		*out = NAN;
	else if (strcmp(s, "Infinity") == 0)
		*out = INFINITY;
	else if (strcmp(s, "-Infinity") == 0)
		*out = -INFINITY;
	else if (text_to_double(s, out) || !isfinite(*out))
		return dec_fail(d, "not a number");
	return 0;
}

static int decode_message(struct dec *d, const ProtobufCMessageDescriptor *desc,
			  const json_t *obj, ProtobufCMessage *m);

static int decode_bytes(struct dec *d, const json_t *v, ProtobufCBinaryData *out)
{
	size_t n;
	unsigned char *buf;
	long got;

	if (!json_is_string(v))
		return dec_fail(d, "expected a base64 string");
	n = json_string_length(v);
	buf = dec_alloc(d, (n / 4 + 1) * 3);
	if (!buf)
		return -E2BIG;
	got = pbjson_b64_decode(json_string_value(v), n, buf);
	if (got < 0)
		return dec_fail(d, "not valid base64");
	out->data = buf;
	out->len = (size_t)got;
	return 0;
}

static int decode_submessage(struct dec *d, const ProtobufCMessageDescriptor *desc,
			     const json_t *v, ProtobufCMessage **out)
{
	ProtobufCMessage *m;

	if (is_timestamp(desc) && !json_is_string(v))
		return dec_fail(d, "expected an RFC 3339 timestamp string");
	if (!is_timestamp(desc) && !json_is_object(v))
		return dec_fail(d, "expected an object");
	m = dec_new_message(d, desc);
	if (!m)
		return -E2BIG;
	if (is_timestamp(desc)) {
		int64_t sec;
		int32_t ns;

		/* Timestamp is { int64 seconds = 1; int32 nanos = 2; } */
		if (pbjson_time_parse(json_string_value(v), &sec, &ns))
			return dec_fail(d, "not an RFC 3339 timestamp");
		*(int64_t *)MEMBER(m, desc->fields[0].offset) = sec;
		*(int32_t *)MEMBER(m, desc->fields[1].offset) = ns;
	} else if (decode_message(d, desc, v, m) < 0) {
		return d->err->code;
	}
	*out = m;
	return 0;
}

/* Returns 1 when the value is to be dropped (an enum name we do not know). */
static int decode_enum(struct dec *d, const ProtobufCFieldDescriptor *f, const json_t *v,
		       int32_t *out)
{
	const ProtobufCEnumValue *ev;
	int64_t x;

	if (json_is_string(v)) {
		ev = protobuf_c_enum_descriptor_get_value_by_name(f->descriptor,
								  json_string_value(v));
		if (!ev)
			return 1;
		*out = ev->value;
		return 0;
	}
	if (json_to_int(d, v, INT32_MIN, INT32_MAX, &x))
		return -EINVAL;
	*out = (int32_t)x;
	return 0;
}

static int decode_value(struct dec *d, const ProtobufCFieldDescriptor *f, const json_t *v,
			void *dst)
{
	int64_t i;
	uint64_t u;
	double x;

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		if (json_to_int(d, v, INT32_MIN, INT32_MAX, &i))
			return -EINVAL;
		*(int32_t *)dst = (int32_t)i;
		return 0;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		if (json_to_uint(d, v, UINT32_MAX, &u))
			return -EINVAL;
		*(uint32_t *)dst = (uint32_t)u;
		return 0;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		if (json_to_int(d, v, INT64_MIN, INT64_MAX, &i))
			return -EINVAL;
		*(int64_t *)dst = i;
		return 0;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		if (json_to_uint(d, v, UINT64_MAX, &u))
			return -EINVAL;
		*(uint64_t *)dst = u;
		return 0;
	case PROTOBUF_C_TYPE_FLOAT:
		if (json_to_double(d, v, &x))
			return -EINVAL;
		if (isfinite(x) && fabs(x) > FLT_MAX)
			return dec_fail(d, "float out of range");
		*(float *)dst = (float)x;
		return 0;
	case PROTOBUF_C_TYPE_DOUBLE:
		if (json_to_double(d, v, &x))
			return -EINVAL;
		*(double *)dst = x;
		return 0;
	case PROTOBUF_C_TYPE_BOOL:
		if (!json_is_boolean(v))
			return dec_fail(d, "expected true or false");
		*(protobuf_c_boolean *)dst = json_is_true(v);
		return 0;
	case PROTOBUF_C_TYPE_ENUM:
		return decode_enum(d, f, v, dst);
	case PROTOBUF_C_TYPE_STRING:
		if (!json_is_string(v))
			return dec_fail(d, "expected a string");
		/* jansson has checked UTF-8 and refused NUL characters. */
		*(char **)dst = arena_strndup(d->a, json_string_value(v), json_string_length(v));
		return *(char **)dst ? 0 : (dec_alloc(d, SIZE_MAX), -E2BIG);
	case PROTOBUF_C_TYPE_BYTES:
		return decode_bytes(d, v, dst);
	case PROTOBUF_C_TYPE_MESSAGE:
		return decode_submessage(d, f->descriptor, v, dst);
	}
	return dec_fail(d, "unsupported field type");
}

static int decode_map_key(struct dec *d, const ProtobufCFieldDescriptor *kf, const char *key,
			  void *dst)
{
	int64_t i;
	uint64_t u;

	switch (kf->type) {
	case PROTOBUF_C_TYPE_STRING:
		*(char **)dst = arena_strdup(d->a, key);
		return *(char **)dst ? 0 : (dec_alloc(d, SIZE_MAX), -E2BIG);
	case PROTOBUF_C_TYPE_BOOL:
		if (strcmp(key, "true") && strcmp(key, "false"))
			return dec_fail(d, "map key is not true or false");
		*(protobuf_c_boolean *)dst = strcmp(key, "true") == 0;
		return 0;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		if (text_to_uint(key, &u) || (elem_size(kf->type) == 4 && u > UINT32_MAX))
			return dec_fail(d, "map key is not an unsigned integer in range");
		if (elem_size(kf->type) == 4)
			*(uint32_t *)dst = (uint32_t)u;
		else
			*(uint64_t *)dst = u;
		return 0;
	default:
		if (text_to_int(key, &i) ||
		    (elem_size(kf->type) == 4 && (i < INT32_MIN || i > INT32_MAX)))
			return dec_fail(d, "map key is not an integer in range");
		if (elem_size(kf->type) == 4)
			*(int32_t *)dst = (int32_t)i;
		else
			*(int64_t *)dst = i;
		return 0;
	}
}

static int decode_map(struct dec *d, const ProtobufCFieldDescriptor *f, const json_t *v,
		      ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *ed = f->descriptor;
	const char *key;
	json_t *val;
	ProtobufCMessage **entries;
	size_t n = 0;

	if (!json_is_object(v))
		return dec_fail(d, "expected an object (map)");
	entries = dec_alloc(d, json_object_size(v) * sizeof(*entries) + 1);
	if (!entries)
		return -E2BIG;

	json_object_foreach((json_t *)v, key, val) {
		ProtobufCMessage *e = dec_new_message(d, ed);
		size_t old = path_push(d, key, 1);
		int rc;

		if (!e)
			return -E2BIG;
		rc = decode_map_key(d, &ed->fields[0], key, MEMBER(e, ed->fields[0].offset));
		if (rc == 0 && json_is_null(val))
			rc = dec_fail(d, "map value may not be null");
		if (rc == 0)
			rc = decode_value(d, &ed->fields[1], val, MEMBER(e, ed->fields[1].offset));
		path_pop(d, old);
		if (rc < 0)
			return rc;
		if (rc == 0)
			entries[n++] = e;
	}
	*(size_t *)MEMBER(m, f->quantifier_offset) = n;
	*(ProtobufCMessage ***)MEMBER(m, f->offset) = entries;
	return 0;
}

static int decode_repeated(struct dec *d, const ProtobufCFieldDescriptor *f, const json_t *v,
			   ProtobufCMessage *m)
{
	size_t size = elem_size(f->type), count = json_array_size(v), n = 0;
	char *arr;

	if (!json_is_array(v))
		return dec_fail(d, "expected an array");
	if (count > SIZE_MAX / size - 1)
		return dec_alloc(d, SIZE_MAX), -E2BIG;
	arr = dec_alloc(d, count * size + 1);
	if (!arr)
		return -E2BIG;

	for (size_t i = 0; i < count; i++) {
		const json_t *elem = json_array_get(v, i);
		int rc;

		if (json_is_null(elem))
			return dec_fail(d, "null inside an array");
		rc = decode_value(d, f, elem, arr + n * size);
		if (rc < 0)
			return rc;
		if (rc == 0)
			n++;
	}
	*(size_t *)MEMBER(m, f->quantifier_offset) = n;
	*(void **)MEMBER(m, f->offset) = arr;
	return 0;
}

static int decode_field(struct dec *d, const ProtobufCFieldDescriptor *f, const json_t *v,
			ProtobufCMessage *m)
{
	int rc;

	if (f->label == PROTOBUF_C_LABEL_REPEATED)
		return is_map_field(f) ? decode_map(d, f, v, m) : decode_repeated(d, f, v, m);

	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		uint32_t *which = MEMBER(m, f->quantifier_offset);

		/* The members share storage: a second one must not overwrite the first. */
		if (*which != 0 && *which != f->id)
			return dec_fail(d, "another member of the same oneof is already set");
	}
	rc = decode_value(d, f, v, MEMBER(m, f->offset));
	if (rc != 0)
		return rc < 0 ? rc : 0;

	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
		*(uint32_t *)MEMBER(m, f->quantifier_offset) = f->id;
	else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE &&
		 f->type != PROTOBUF_C_TYPE_STRING)
		*(protobuf_c_boolean *)MEMBER(m, f->quantifier_offset) = 1;
	return 0;
}

static int decode_message(struct dec *d, const ProtobufCMessageDescriptor *desc,
			  const json_t *obj, ProtobufCMessage *m)
{
	const char *key;
	json_t *val;

	json_object_foreach((json_t *)obj, key, val) {
		const ProtobufCFieldDescriptor *f = find_field(desc, key);
		size_t old;
		int rc;

		/* Unknown fields are ignored; null means "the default" in proto3 JSON. */
		if (!f || json_is_null(val))
			continue;
		old = path_push(d, f->name, 0);
		rc = decode_field(d, f, val, m);
		path_pop(d, old);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int pbjson_decode(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
		  struct arena *a, ProtobufCMessage **out, struct herr *err)
{
	struct dec d = { .a = a, .err = err };
	json_error_t jerr;
	json_t *root;
	ProtobufCMessage *m;
	int rc;

	/* A tree costs a few times its text; more than that is an attack. */
	budget = (struct json_budget){ .active = 1, .cap = 4 * len + (1 << 20) };
	root = json_loadb(json, len, 0, &jerr);
	if (!root) {
		int exhausted = budget.exhausted;

		budget = (struct json_budget){ 0 };
		if (exhausted)
			return herr_set(err, -E2BIG, "request JSON too large to parse");
		return herr_set(err, -EINVAL, "invalid JSON at line %d column %d: %s",
				jerr.line, jerr.column, jerr.text);
	}

	rc = 0;
	if (!json_is_object(root)) {
		rc = herr_set(err, -EINVAL, "the message must be a JSON object");
	} else {
		m = dec_new_message(&d, desc);
		if (!m)
			rc = -E2BIG;
		else if (decode_message(&d, desc, root, m) < 0)
			rc = err->code ? err->code : -EINVAL;
		else
			*out = m;
	}
	json_decref(root);
	budget = (struct json_budget){ 0 };
	return rc;
}

/* ---- message -> JSON --------------------------------------------------- */

static json_t *encode_message(const ProtobufCMessage *m, struct herr *err);

static json_t *json_i64_text(int64_t v)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%" PRId64, v);
	return json_string(buf);
}

static json_t *json_u64_text(uint64_t v)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	return json_string(buf);
}

static json_t *json_double(double x)
{
	if (isnan(x))
		return json_string("NaN");
	if (isinf(x))
		return json_string(x > 0 ? "Infinity" : "-Infinity");
	return json_real(x);
}

static json_t *encode_timestamp(const ProtobufCMessage *m, struct herr *err)
{
	const ProtobufCMessageDescriptor *desc = m->descriptor;
	int64_t sec = *(const int64_t *)CMEMBER(m, desc->fields[0].offset);
	int32_t ns = *(const int32_t *)CMEMBER(m, desc->fields[1].offset);
	char buf[40];

	if (pbjson_time_format(sec, ns, buf)) {
		herr_set(err, -EINVAL, "timestamp out of range: %" PRId64 "s %" PRId32 "ns",
			 sec, ns);
		return NULL;
	}
	return json_string(buf);
}

static json_t *encode_value(const ProtobufCFieldDescriptor *f, const void *src,
			    struct herr *err)
{
	const ProtobufCEnumValue *ev;
	const ProtobufCBinaryData *bd;
	const ProtobufCMessage *sub;
	char *b64;
	json_t *j;

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		return json_integer(*(const int32_t *)src);
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return json_integer(*(const uint32_t *)src);
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		return json_i64_text(*(const int64_t *)src);
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return json_u64_text(*(const uint64_t *)src);
	case PROTOBUF_C_TYPE_FLOAT:
		return json_double(*(const float *)src);
	case PROTOBUF_C_TYPE_DOUBLE:
		return json_double(*(const double *)src);
	case PROTOBUF_C_TYPE_BOOL:
		return json_boolean(*(const protobuf_c_boolean *)src);
	case PROTOBUF_C_TYPE_ENUM:
		ev = protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int32_t *)src);
		return ev ? json_string(ev->name) : json_integer(*(const int32_t *)src);
	case PROTOBUF_C_TYPE_STRING:
		return json_text(*(char *const *)src);
	case PROTOBUF_C_TYPE_BYTES:
		bd = src;
		b64 = pbjson_b64_encode(bd->data, bd->len);
		if (!b64)
			return NULL;
		j = json_string_nocheck(b64);
		free(b64);
		return j;
	case PROTOBUF_C_TYPE_MESSAGE:
		sub = *(ProtobufCMessage *const *)src;
		if (!sub)
			return json_object(); /* a set oneof member with no value yet */
		if (is_timestamp(sub->descriptor))
			return encode_timestamp(sub, err);
		return encode_message(sub, err);
	}
	return NULL;
}

static int is_default(const ProtobufCFieldDescriptor *f, const void *src)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return *(const uint64_t *)src == 0;
	case PROTOBUF_C_TYPE_FLOAT:
		return *(const float *)src == 0;
	case PROTOBUF_C_TYPE_DOUBLE:
		return *(const double *)src == 0;
	case PROTOBUF_C_TYPE_BOOL:
		return !*(const protobuf_c_boolean *)src;
	case PROTOBUF_C_TYPE_STRING:
		return !*(char *const *)src || !**(char *const *)src;
	case PROTOBUF_C_TYPE_BYTES:
		return ((const ProtobufCBinaryData *)src)->len == 0;
	case PROTOBUF_C_TYPE_MESSAGE:
		return !*(ProtobufCMessage *const *)src;
	default:
		return *(const uint32_t *)src == 0;
	}
}

static json_t *encode_map_key(const ProtobufCFieldDescriptor *kf, const void *src)
{
	char buf[32];

	switch (kf->type) {
	case PROTOBUF_C_TYPE_STRING:
		return json_text(*(char *const *)src);
	case PROTOBUF_C_TYPE_BOOL:
		return json_string(*(const protobuf_c_boolean *)src ? "true" : "false");
	default: {
		json_t *v = encode_value(kf, src, NULL);

		if (json_is_integer(v)) {
			snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
			json_decref(v);
			return json_string(buf);
		}
		return v; /* 64-bit keys are already text */
	}
	}
}

static json_t *encode_map(const ProtobufCFieldDescriptor *f, const void *arr, size_t n,
			  struct herr *err)
{
	const ProtobufCMessageDescriptor *ed = f->descriptor;
	ProtobufCMessage *const *entries = arr;
	json_t *obj = json_object();

	for (size_t i = 0; obj && i < n; i++) {
		json_t *k = encode_map_key(&ed->fields[0], CMEMBER(entries[i], ed->fields[0].offset));
		json_t *v = encode_value(&ed->fields[1], CMEMBER(entries[i], ed->fields[1].offset),
					 err);

		if (!k || !v || json_object_setn_new(obj, json_string_value(k),
						     json_string_length(k), v)) {
			if (!k)
				json_decref(v);
			json_decref(obj);
			obj = NULL;
		}
		json_decref(k);
	}
	return obj;
}

static json_t *encode_repeated(const ProtobufCFieldDescriptor *f, const void *arr, size_t n,
			       struct herr *err)
{
	size_t size = elem_size(f->type);
	json_t *a = json_array();

	for (size_t i = 0; a && i < n; i++) {
		json_t *v = encode_value(f, (const char *)arr + i * size, err);

		if (!v || json_array_append_new(a, v)) {
			json_decref(a);
			a = NULL;
		}
	}
	return a;
}

/* The JSON value of field f of m, or NULL with *skip set when it is not emitted. */
static json_t *encode_field(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
			    int *skip, struct herr *err)
{
	const void *src = CMEMBER(m, f->offset);

	*skip = 0;
	if (f->label == PROTOBUF_C_LABEL_REPEATED) {
		size_t n = *(const size_t *)CMEMBER(m, f->quantifier_offset);
		const void *arr = *(void *const *)src;

		if (n == 0) {
			*skip = 1;
			return NULL;
		}
		return is_map_field(f) ? encode_map(f, arr, n, err)
				       : encode_repeated(f, arr, n, err);
	}

	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
		/* A set member is emitted even at its default: presence is its value. */
		*skip = *(const uint32_t *)CMEMBER(m, f->quantifier_offset) != f->id;
	else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE &&
		 f->type != PROTOBUF_C_TYPE_STRING)
		*skip = !*(const protobuf_c_boolean *)CMEMBER(m, f->quantifier_offset);
	else
		*skip = is_default(f, src);
	return *skip ? NULL : encode_value(f, src, err);
}

static json_t *encode_message(const ProtobufCMessage *m, struct herr *err)
{
	const ProtobufCMessageDescriptor *desc = m->descriptor;
	json_t *obj = json_object();
	char jname[NAME_MAX_LEN];

	for (unsigned i = 0; obj && i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		int skip;
		json_t *v = encode_field(m, f, &skip, err);

		if (skip)
			continue;
		json_name(f->name, jname);
		if (!v || json_object_set_new_nocheck(obj, jname, v)) {
			json_decref(obj);
			obj = NULL;
		}
	}
	return obj;
}

int pbjson_encode(const ProtobufCMessage *msg, char **out, size_t *len, struct herr *err)
{
	json_t *j;
	char *s;

	herr_clear(err);
	j = is_timestamp(msg->descriptor) ? encode_timestamp(msg, err)
					   : encode_message(msg, err);
	if (!j) {
		if (err && err->code)
			return err->code;
		return herr_set(err, -ENOMEM, "encoding %s as JSON: out of memory",
				msg->descriptor->name);
	}
	s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(j);
	if (!s)
		return herr_set(err, -ENOMEM, "encoding %s as JSON: out of memory",
				msg->descriptor->name);
	*out = s;
	*len = strlen(s);
	return 0;
}

/* ---- binary ------------------------------------------------------------ */

struct pb_alloc_state {
	struct arena *a;
	int failed;
};

static void *pb_arena_alloc(void *data, size_t n)
{
	struct pb_alloc_state *st = data;
	void *p = arena_alloc(st->a, n);

	if (!p)
		st->failed = 1;
	return p;
}

static void pb_arena_free(void *data, void *p)
{
	(void)data;
	(void)p;
}

/* proto3 strings must be UTF-8; protobuf-c does not check, so we do. */
static const char *check_strings(const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *desc = m->descriptor;

	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		const void *src = CMEMBER(m, f->offset);
		size_t n = 1;
		const char *bad;

		if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			n = *(const size_t *)CMEMBER(m, f->quantifier_offset);
			src = *(void *const *)src;
		} else if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
			   *(const uint32_t *)CMEMBER(m, f->quantifier_offset) != f->id) {
			continue;
		}
		for (size_t k = 0; k < n; k++) {
			const void *p = *((void *const *)src + k);

			if (!p)
				continue;
			if (f->type == PROTOBUF_C_TYPE_STRING && !utf8_valid(p, strlen(p)))
				return f->name;
			if (f->type == PROTOBUF_C_TYPE_MESSAGE && (bad = check_strings(p)))
				return bad;
		}
	}
	return NULL;
}

int pbbin_decode(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
		 struct arena *a, ProtobufCMessage **out, struct herr *err)
{
	struct pb_alloc_state st = { .a = a };
	ProtobufCAllocator alloc = { pb_arena_alloc, pb_arena_free, &st };
	ProtobufCMessage *m;
	const char *bad;

	m = protobuf_c_message_unpack(desc, &alloc, len, data);
	if (!m && st.failed)
		return herr_set(err, -E2BIG, "request too large: decoding %s passed the %zu-byte "
				"memory cap", desc->name, arena_cap(a));
	if (!m)
		return herr_set(err, -EINVAL, "invalid binary %s message", desc->name);
	bad = check_strings(m);
	if (bad)
		return herr_set(err, -EINVAL, "invalid value for field '%s': not valid UTF-8", bad);
	*out = m;
	return 0;
}

int pbbin_encode(const ProtobufCMessage *msg, char **out, size_t *len, struct herr *err)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	char *buf = malloc(n ? n : 1);

	if (!buf)
		return herr_set(err, -ENOMEM, "encoding %s: out of memory", msg->descriptor->name);
	*len = protobuf_c_message_pack(msg, (uint8_t *)buf);
	*out = buf;
	return 0;
}

/* ---- Connect framing ---------------------------------------------------- */

int pbjson_envelope_parse(const void *body, size_t len, const void **msg, size_t *msg_len,
			  struct herr *err)
{
	const unsigned char *b = body;
	uint32_t n;

	/*
	 * Connect defines only the compressed and end-stream flag bits. Any
	 * other bit means this is no envelope at all, most often bare JSON
	 * ('{' is 0x7b, which would otherwise read as "compressed").
	 */
	if (len > 0 && (b[0] & ~(0x01 | PBJSON_ENVELOPE_END_STREAM)))
		return herr_set(err, -EINVAL, "the body is not an enveloped Connect message "
				"(first byte 0x%02x): a server-streaming request is one frame of "
				"a flags byte, a 4-byte big-endian length and the message", b[0]);
	if (len < PBJSON_ENVELOPE_HEADER)
		return herr_set(err, -EINVAL, "truncated envelope: %zu of 5 header bytes", len);
	if (b[0] & 0x01)
		return herr_set(err, -EINVAL, "compressed messages are not supported");
	if (b[0] != 0)
		return herr_set(err, -EINVAL, "unexpected envelope flags 0x%02x in a request",
				b[0]);
	n = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
	if (n > len - PBJSON_ENVELOPE_HEADER)
		return herr_set(err, -EINVAL, "truncated envelope: declares %" PRIu32
				" bytes, %zu present", n, len - PBJSON_ENVELOPE_HEADER);
	if (n < len - PBJSON_ENVELOPE_HEADER)
		return herr_set(err, -EINVAL, "a server-streaming request carries exactly one "
				"message; %zu extra bytes follow it",
				len - PBJSON_ENVELOPE_HEADER - n);
	*msg = b + PBJSON_ENVELOPE_HEADER;
	*msg_len = n;
	return 0;
}

void pbjson_envelope_header(unsigned char hdr[PBJSON_ENVELOPE_HEADER], unsigned flags,
			    uint32_t len)
{
	hdr[0] = (unsigned char)flags;
	hdr[1] = (unsigned char)(len >> 24);
	hdr[2] = (unsigned char)(len >> 16);
	hdr[3] = (unsigned char)(len >> 8);
	hdr[4] = (unsigned char)len;
}

char *pbjson_connect_error(const char *code, const char *message, int end_stream,
			   size_t *len)
{
	_cleanup_(json_decrefp) json_t *j = json_object();
	_cleanup_(json_decrefp) json_t *e = NULL;
	char *s;

	if (!j)
		return NULL;
	if (code) {
		e = end_stream ? json_object() : json_incref(j);
		if (!e || json_object_set_new(e, "code", json_string(code)) ||
		    json_object_set_new(e, "message", json_text(message)) ||
		    (end_stream && json_object_set(j, "error", e)))
			return NULL;
	}
	s = json_dumps(j, JSON_COMPACT);
	if (s)
		*len = strlen(s);
	return s;
}
