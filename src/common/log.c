/* Structured, per-subsystem logging: see log.h. */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_SUBSYSTEMS_MAX 16
#define LOG_SUB_NAME_MAX 24
#define LOG_LINE_MAX 2048

struct sub_level {
	char name[LOG_SUB_NAME_MAX];
	enum log_level level;
};

struct log_state {
	enum log_level default_level;
	struct sub_level subs[LOG_SUBSYSTEMS_MAX];
	int nsubs;
	int fd;
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

/* Parses one "sub=level" or "level" item of a spec into next. */
static int apply_item(struct log_state *next, char *item)
{
	char *eq = strchr(item, '=');
	int level;

	if (!eq) {
		level = log_level_parse(item);
		if (level < 0)
			return -EINVAL;
		next->default_level = level;
		return 0;
	}
	*eq = '\0';
	level = log_level_parse(eq + 1);
	if (level < 0 || eq == item || strlen(item) >= LOG_SUB_NAME_MAX)
		return -EINVAL;
	if (next->nsubs == LOG_SUBSYSTEMS_MAX)
		return -E2BIG;
	snprintf(next->subs[next->nsubs].name, LOG_SUB_NAME_MAX, "%s", item);
	next->subs[next->nsubs].level = level;
	next->nsubs++;
	return 0;
}

int log_configure(const char *spec)
{
	struct log_state next = { .default_level = LOG_INFO };
	char buf[512];
	char *save = NULL;

	if (!spec || strlen(spec) >= sizeof(buf))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%s", spec);
	for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		int rc = apply_item(&next, item);
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

/* Appends s to out as a double-quoted value, escaping quotes, backslashes and controls. */
static size_t append_quoted(char *out, size_t pos, size_t cap, const char *s)
{
	if (pos < cap)
		out[pos++] = '"';
	for (; *s && pos + 4 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[pos++] = '\\';
			out[pos++] = c;
		} else if (c == '\n') {
			out[pos++] = '\\';
			out[pos++] = 'n';
		} else if (c < 0x20 || c == 0x7f) {
			pos += snprintf(out + pos, cap - pos, "\\x%02x", c);
		} else {
			out[pos++] = c;
		}
	}
	if (pos < cap)
		out[pos++] = '"';
	return pos;
}

static size_t format_time(char *out, size_t cap)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	return strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm) +
	       snprintf(out + 19, cap - 19, ".%03ldZ", ts.tv_nsec / 1000000);
}

void log_line(enum log_level level, const char *sub, const char *sandbox, const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	char msg[LOG_LINE_MAX / 2];
	char stamp[40];
	size_t pos;
	va_list ap;
	int fd;

	if (!log_enabled(sub, level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	format_time(stamp, sizeof(stamp));
	pos = snprintf(line, sizeof(line), "ts=%s level=%s sub=%s", stamp, level_names[level],
		       sub ? sub : "main");
	if (sandbox && *sandbox)
		pos += snprintf(line + pos, sizeof(line) - pos, " sandbox=%s", sandbox);
	pos += snprintf(line + pos, sizeof(line) - pos, " msg=");
	pos = append_quoted(line, pos, sizeof(line) - 1, msg);
	line[pos++] = '\n';
	pthread_rwlock_rdlock(&state_lock);
	fd = state.fd;
	pthread_rwlock_unlock(&state_lock);
	/* One write per line keeps lines from different threads whole. */
	if (write(fd, line, pos) < 0)
		return;
}
