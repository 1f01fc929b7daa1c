/*
 * Structured logging: one line per event, key=value pairs.
 *
 *   ts=2026-12-03T16:20:18.123Z level=info sub=api sandbox=iabc msg="created"
 *
 * Each line names its subsystem; verbosity is set per subsystem at run time
 * with a spec such as "info,proxy=debug,runtime=warn" (the first bare level is
 * the default). Lines go to stderr, or to a file descriptor chosen at start.
 *
 * msg is always quoted. The sandbox field and log_kv()'s extra fields are
 * written bare when they are plain words and quoted otherwise; quoted text
 * escapes '"', '\\', newlines and control bytes, so that whatever a peer
 * managed to put into a value, an event stays one parseable line. A line
 * longer than LOG_LINE_MAX is cut inside its quotes, never across them.
 */
#ifndef HUTCH_LOG_H
#define HUTCH_LOG_H

#include <stddef.h>

#include "err.h"

#define LOG_LINE_MAX 2048

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/*
 * Names the subsystems a program logs under (a NULL-terminated array that
 * must stay valid). From then on log_configure refuses a spec naming any
 * other: a mistyped name would otherwise change nothing, silently.
 */
void log_set_subsystems(const char *const *names);

/* Writes the help of a spec setting: its form, the levels and the known
 * subsystems, for --help. */
void log_spec_help(char *out, size_t cap);

/*
 * Applies a verbosity spec. A bad one returns -EINVAL (-E2BIG: too many
 * subsystems), keeps the old setting and says why in err (which may be
 * NULL), listing the known subsystems when it names another.
 */
int log_configure(const char *spec, struct herr *err);

/* Sends log lines to fd (stderr by default). */
void log_set_fd(int fd);

/* True when a line of this level for this subsystem would be written. */
int log_enabled(const char *sub, enum log_level level);

/* Writes one line. sandbox may be NULL. The message is formatted with printf
 * rules and quoted. */
void log_line(enum log_level level, const char *sub, const char *sandbox,
	      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/*
 * Writes one line whose msg (taken as is, not a format) is followed by extra
 * fields: key and value strings in pairs, ended by a NULL key.
 *
 *   log_kv(LOG_INFO, "template", NULL, "pulled", "image", ref, "digest", d, NULL);
 *
 * Keys should be lower-case words (any other byte is written as '_'); a NULL
 * value is written as "".
 */
void log_kv(enum log_level level, const char *sub, const char *sandbox, const char *msg,
	    ...) __attribute__((sentinel));

#define log_error(sub, sbx, ...) log_line(LOG_ERROR, sub, sbx, __VA_ARGS__)
#define log_warn(sub, sbx, ...) log_line(LOG_WARN, sub, sbx, __VA_ARGS__)
#define log_info(sub, sbx, ...) log_line(LOG_INFO, sub, sbx, __VA_ARGS__)
#define log_debug(sub, sbx, ...)                                       \
	do {                                                           \
		if (log_enabled(sub, LOG_DEBUG))                       \
			log_line(LOG_DEBUG, sub, sbx, __VA_ARGS__);    \
	} while (0)

/* Parses "error", "warn", "info" or "debug"; returns -1 when unknown. */
int log_level_parse(const char *name);

#endif
