/* Structured, per-subsystem logging: see log.h. */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_SUBSYSTEMS_MAX 16
#define LOG_SUB_NAME_MAX 24
/* Bytes kept at the end of every line for a closing quote and the newline. */
#define LINE_TAIL 2

struct sub_level {
	char name[LOG_SUB_NAME_MAX];
	enum log_level level;
};

struct log_state {
	enum log_level default_level;
	struct sub_level subs[LOG_SUBSYSTEMS_MAX];
	int nsubs;
	int fd;
	const char *const *known; /* NULL: any subsystem name is taken */
};

static struct log_state state = { .default_level = LOG_INFO, .fd = 2 };
static pthread_rwlock_t state_lock = PTHREAD_RWLOCK_INITIALIZER;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int log_level_parse(const char *name)
{
	for (int i = 0; i <= LOG_DEBUG; i++)
		if (strcmp(name, level_names[i]) == 0)
			return i;
	return -1;
}

void log_set_subsystems(const char *const *names)
{
	pthread_rwlock_wrlock(&state_lock);
	state.known = names;
	pthread_rwlock_unlock(&state_lock);
}

static void join_names(const char *const *names, char *out, size_t cap)
{
	size_t len = 0;

	if (cap == 0)
		return;
	out[0] = '\0';
	for (size_t i = 0; names && names[i] && len < cap; i++) {
		int n = snprintf(out + len, cap - len, "%s%s", i ? ", " : "", names[i]);

		len += n > 0 ? (size_t)n : 0;
	}
}

void log_spec_help(char *out, size_t cap)
{
	char names[512], example[LOG_SUB_NAME_MAX] = "api";

	pthread_rwlock_rdlock(&state_lock);
	join_names(state.known, names, sizeof(names));
	if (state.known && state.known[0])
		snprintf(example, sizeof(example), "%s", state.known[state.known[1] ? 1 : 0]);
	pthread_rwlock_unlock(&state_lock);
	snprintf(out, cap, "log levels: LEVEL[,SUBSYSTEM=LEVEL...], e.g. 'info,%s=debug'; "
		 "levels error, warn, info, debug; subsystems %s", example,
		 *names ? names : "(any name)");
}

static bool is_known(const char *const *known, const char *name)
{
	if (!known)
		return true;
	for (size_t i = 0; known[i]; i++)
		if (strcmp(known[i], name) == 0)
			return true;
	return false;
}

static int bad_subsystem(const char *const *known, const char *name, struct herr *err)
{
	char list[512];

	join_names(known, list, sizeof(list));
	return herr_set(err, -EINVAL, "log spec: unknown subsystem '%.*s' (known: %s)",
			LOG_SUB_NAME_MAX, name, list);
}

/* Parses one "sub=level" or "level" item of a spec into next. */
static int apply_item(struct log_state *next, char *item, struct herr *err)
{
	char *eq = strchr(item, '=');
	int level;

	if (!eq) {
		level = log_level_parse(item);
		if (level < 0)
			return herr_set(err, -EINVAL, "log spec: '%.32s' is not a level "
					"(error, warn, info, debug)", item);
		next->default_level = level;
		return 0;
	}
	*eq = '\0';
	level = log_level_parse(eq + 1);
	if (level < 0)
		return herr_set(err, -EINVAL, "log spec: '%.32s' for %.32s is not a level "
				"(error, warn, info, debug)", eq + 1, item);
	if (eq == item)
		return herr_set(err, -EINVAL, "log spec: '=%.32s' names no subsystem", eq + 1);
	if (strlen(item) >= LOG_SUB_NAME_MAX || !is_known(next->known, item))
		return bad_subsystem(next->known, item, err);
	if (next->nsubs == LOG_SUBSYSTEMS_MAX)
		return herr_set(err, -E2BIG, "log spec: more than %d subsystems",
				LOG_SUBSYSTEMS_MAX);
	snprintf(next->subs[next->nsubs].name, LOG_SUB_NAME_MAX, "%s", item);
	next->subs[next->nsubs].level = level;
	next->nsubs++;
	return 0;
}

int log_configure(const char *spec, struct herr *err)
{
	struct log_state next = { .default_level = LOG_INFO };
	char buf[512];
	char *save = NULL;

	if (!spec || strlen(spec) >= sizeof(buf))
		return herr_set(err, -EINVAL, "log spec: missing or longer than %zu bytes",
				sizeof(buf) - 1);
	snprintf(buf, sizeof(buf), "%s", spec);
	pthread_rwlock_rdlock(&state_lock);
	next.known = state.known;
	pthread_rwlock_unlock(&state_lock);
	for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		int rc = apply_item(&next, item, err);
		if (rc < 0)
			return rc;
	}
	pthread_rwlock_wrlock(&state_lock);
	next.fd = state.fd;
	state = next;
	pthread_rwlock_unlock(&state_lock);
	return 0;
}

void log_set_fd(int fd)
{
	pthread_rwlock_wrlock(&state_lock);
	state.fd = fd;
	pthread_rwlock_unlock(&state_lock);
}

int log_enabled(const char *sub, enum log_level level)
{
	enum log_level limit;

	pthread_rwlock_rdlock(&state_lock);
	limit = state.default_level;
	for (int i = 0; i < state.nsubs; i++)
		if (sub && strcmp(state.subs[i].name, sub) == 0)
			limit = state.subs[i].level;
	pthread_rwlock_unlock(&state_lock);
	return level <= limit;
}

/* ---- building a line ---- */

/* A line under construction; len never passes LOG_LINE_MAX - LINE_TAIL but
 * for the closing quote of a value and the final newline. */
struct line {
	char buf[LOG_LINE_MAX];
	size_t len;
};

static bool put(struct line *l, const char *s, size_t n)
{
	if (l->len + n > LOG_LINE_MAX - LINE_TAIL)
		return false;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
	return true;
}

static bool put_str(struct line *l, const char *s)
{
	return put(l, s, strlen(s));
}

/* The escaped form of c, at most 4 bytes. */
static size_t escape_byte(unsigned char c, char out[5])
{
	if (c == '"' || c == '\\') {
		out[0] = '\\';
		out[1] = (char)c;
		return 2;
	}
	if (c == '\n') {
		memcpy(out, "\\n", 2);
		return 2;
	}
	if (c < 0x20 || c == 0x7f)
		return (size_t)snprintf(out, 5, "\\x%02x", c);
	out[0] = (char)c;
	return 1;
}

/* A double-quoted value; cut short (still closed) when the line is full. */
static void put_quoted(struct line *l, const char *s)
{
	char esc[5];

	if (!put(l, "\"", 1))
		return;
	for (; *s; s++)
		if (!put(l, esc, escape_byte((unsigned char)*s, esc)))
			break;
	/* LINE_TAIL keeps room for this quote. */
	l->buf[l->len++] = '"';
}

/* Plain words are written bare; anything that could be read as another
 * field, or break the line, is quoted. */
static bool needs_quotes(const char *s)
{
	if (!*s)
		return true;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
			return true;
	}
	return false;
}

/* A bare value that does not fit whole is written quoted, and cut. */
static void put_value(struct line *l, const char *s)
{
	if (needs_quotes(s) || !put_str(l, s))
		put_quoted(l, s);
}

/* " key=": a key is ours, not a peer's, but a stray byte must not split the
 * line or the field either. */
static bool put_key(struct line *l, const char *key)
{
	char clean[64];
	size_t n = 0;

	for (; key[n] && n < sizeof(clean) - 1; n++) {
		char c = key[n];
		bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			    (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';

		clean[n] = word ? c : '_';
	}
	if (n == 0)
		clean[n++] = '_';
	clean[n] = '\0';
	/* Room for " key=" and at least a value's opening quote, or no field:
	 * a line never ends in a key without its value. */
	if (l->len + n + 3 > LOG_LINE_MAX - LINE_TAIL)
		return false;
	return put(l, " ", 1) && put_str(l, clean) && put(l, "=", 1);
}

static void put_head(struct line *l, enum log_level level, const char *sub,
		     const char *sandbox)
{
	struct timespec ts;
	struct tm tm;
	char stamp[64];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "ts=%Y-%m-%dT%H:%M:%S", &tm);
	put_str(l, stamp);
	snprintf(stamp, sizeof(stamp), ".%03ldZ level=%s", ts.tv_nsec / 1000000,
		 level_names[level]);
	put_str(l, stamp);
	if (put_key(l, "sub"))
		put_value(l, sub ? sub : "main");
	if (sandbox && *sandbox && put_key(l, "sandbox"))
		put_value(l, sandbox);
}

static void write_line(struct line *l)
{
	int fd;

	l->buf[l->len++] = '\n';
	pthread_rwlock_rdlock(&state_lock);
	fd = state.fd;
	pthread_rwlock_unlock(&state_lock);
	/* One write per line keeps lines from different threads whole. */
	if (write(fd, l->buf, l->len) < 0)
		return;
}

void log_line(enum log_level level, const char *sub, const char *sandbox, const char *fmt, ...)
{
	struct line l = { .len = 0 };
	char msg[LOG_LINE_MAX / 2];
	va_list ap;

	if (!log_enabled(sub, level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	put_head(&l, level, sub, sandbox);
	if (put_key(&l, "msg"))
		put_quoted(&l, msg);
	write_line(&l);
}

void log_kv(enum log_level level, const char *sub, const char *sandbox, const char *msg, ...)
{
	struct line l = { .len = 0 };
	const char *key;
	va_list ap;

	if (!log_enabled(sub, level))
		return;
	put_head(&l, level, sub, sandbox);
	if (put_key(&l, "msg"))
		put_quoted(&l, msg ? msg : "");
	va_start(ap, msg);
	while ((key = va_arg(ap, const char *))) {
		const char *value = va_arg(ap, const char *);

		if (put_key(&l, key))
			put_value(&l, value ? value : "");
	}
	va_end(ap);
	write_line(&l);
}
