/*
 * Bounded byte buffers for anything a peer sends us.
 *
 * A struct hbuf grows on demand up to a hard maximum fixed at init; an append
 * that would pass it fails with -E2BIG and leaves the buffer as it was, so a
 * hostile peer can never make us allocate more than the limit. The contents are
 * always followed by a NUL byte (not counted in len) so text can be parsed in
 * place.
 */
#ifndef HUTCH_BUF_H
#define HUTCH_BUF_H

#include <stddef.h>

struct hbuf {
	char *data;
	size_t len;
	size_t cap;
	size_t max;
};

void hbuf_init(struct hbuf *b, size_t max);
void hbuf_free(struct hbuf *b);
void hbuf_reset(struct hbuf *b);

/* Appends n bytes; -E2BIG past the maximum, -ENOMEM when allocation fails. */
int hbuf_append(struct hbuf *b, const void *p, size_t n);
int hbuf_append_str(struct hbuf *b, const char *s);
int hbuf_printf(struct hbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Drops the first n bytes (n is clamped to len). */
void hbuf_consume(struct hbuf *b, size_t n);

/* Hands the contents to the caller (free() them) and empties the buffer. */
char *hbuf_steal(struct hbuf *b, size_t *len);

static inline void cleanup_hbufp(struct hbuf *b)
{
	hbuf_free(b);
}
#define _cleanup_hbuf_ __attribute__((cleanup(cleanup_hbufp)))

#endif
