/*
 * Error reporting convention.
 *
 * A function that can fail returns 0 (or a non-negative value) on success and
 * a negative errno-style code on failure, and fills the caller's struct herr
 * with a message that names what failed (the path, field or syscall) so that
 * it can be logged or handed to a client as is. The message is bounded and
 * lives in the caller's storage: reporting an error never allocates.
 */
#ifndef HUTCH_ERR_H
#define HUTCH_ERR_H

#include <stddef.h>

#define HERR_MSG_MAX 512

struct herr {
	int code;               /* negative errno-style value, 0 when unset */
	char msg[HERR_MSG_MAX]; /* human-readable, names the failing item */
};

/* Records code and message in err (when not NULL) and returns code. */
int herr_set(struct herr *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Like herr_set, with ": <strerror(-code)>" appended to the message. */
int herr_sys(struct herr *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefixes an existing message with more context ("loading config: ..."). */
int herr_wrap(struct herr *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static inline void herr_clear(struct herr *err)
{
	if (err) {
		err->code = 0;
		err->msg[0] = '\0';
	}
}

#endif
