/* A fixed-size byte ring: the bounded buffer between the two sides of a
 * proxied body, so a fast peer waits for a slow one instead of growing
 * memory. Callers hold the request's lock. */
#include "proxy_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int ring_init(struct ring *r, size_t cap)
{
	r->buf = malloc(cap);
	r->cap = r->buf ? cap : 0;
	r->head = r->len = 0;
	return r->buf ? 0 : -ENOMEM;
}

void ring_free(struct ring *r)
{
	free(r->buf);
	r->buf = NULL;
	r->cap = r->len = r->head = 0;
}

size_t ring_put(struct ring *r, const char *p, size_t n)
{
	size_t done = 0;

	while (done < n && r->len < r->cap) {
		size_t tail = (r->head + r->len) % r->cap;
		size_t room = tail >= r->head ? r->cap - tail : r->head - tail;

		if (room > r->cap - r->len)
			room = r->cap - r->len;
		if (room > n - done)
			room = n - done;
		memcpy(r->buf + tail, p + done, room);
		r->len += room;
		done += room;
	}
	return done;
}

size_t ring_get(struct ring *r, char *p, size_t n)
{
	size_t done = 0;

	while (done < n && r->len > 0) {
		size_t chunk = r->cap - r->head;

		if (chunk > r->len)
			chunk = r->len;
		if (chunk > n - done)
			chunk = n - done;
		memcpy(p + done, r->buf + r->head, chunk);
		r->head = (r->head + chunk) % r->cap;
		r->len -= chunk;
		done += chunk;
	}
	if (r->len == 0)
		r->head = 0;
	return done;
}
