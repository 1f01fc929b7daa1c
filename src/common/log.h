/*
 * Structured logging: one line per event, key=value pairs.
 *
 *   ts=2026-12-03T16:20:18.123Z level=info sub=api sandbox=iabc msg="created"
 *
 * Each line names its subsystem; verbosity is set per subsystem at run time
 * with a spec such as "info,proxy=debug,runtime=warn" (the first bare level is
 * the default). Lines go to stderr, or to a file descriptor chosen at start.
 */
#ifndef HUTCH_LOG_H
#define HUTCH_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Applies a verbosity spec; returns -EINVAL (and keeps the old one) if it is bad. */
int log_configure(const char *spec);

/* Sends log lines to fd (stderr by default). */
void log_set_fd(int fd);

/* True when a line of this level for this subsystem would be written. */
int log_enabled(const char *sub, enum log_level level);

/*
 * Writes one line. sandbox may be NULL. The message is formatted with printf
 * rules and quoted; extra key=value pairs can follow with log_kv().
 */
void log_line(enum log_level level, const char *sub, const char *sandbox,
	      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

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
