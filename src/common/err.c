/* Error reporting helpers: see err.h for the convention. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void format_into(struct herr *err, const char *fmt, va_list ap)
{
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
}

int herr_set(struct herr *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return code;
	err->code = code;
	va_start(ap, fmt);
	format_into(err, fmt, ap);
	va_end(ap);
	return code;
}

int herr_sys(struct herr *err, int code, const char *fmt, ...)
{
	va_list ap;
	size_t len;

	if (!err)
		return code;
	err->code = code;
	va_start(ap, fmt);
	format_into(err, fmt, ap);
	va_end(ap);
	len = strlen(err->msg);
	if (len + 2 < sizeof(err->msg)) {
		memcpy(err->msg + len, ": ", 3);
		len += 2;
		snprintf(err->msg + len, sizeof(err->msg) - len, "%s", strerror(-code));
	}
	return code;
}

int herr_wrap(struct herr *err, const char *fmt, ...)
{
	char joined[2 * HERR_MSG_MAX + 2];
	size_t len;
	va_list ap;

	if (!err)
		return -1;
	va_start(ap, fmt);
	len = (size_t)vsnprintf(joined, HERR_MSG_MAX, fmt, ap);
	va_end(ap);
	if (len >= HERR_MSG_MAX)
		len = HERR_MSG_MAX - 1;
	memcpy(joined + len, ": ", 2);
	memcpy(joined + len + 2, err->msg, HERR_MSG_MAX);
	joined[sizeof(joined) - 1] = '\0';
	memcpy(err->msg, joined, HERR_MSG_MAX - 1);
	err->msg[HERR_MSG_MAX - 1] = '\0';
	return err->code;
}
