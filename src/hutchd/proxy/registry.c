/*
 * Sockets into sandboxes, by sandbox id, so that a kill or pause can end
 * every proxied connection at once.
 *
 * Why shutdown() and not close(): the socket stays owned by whoever opened
 * it (libcurl, a relay thread), which notices the shutdown, stops, and
 * closes it after removing it here. A descriptor is removed from the
 * registry before it is closed, under the same lock that the shutdown walk
 * holds, so the walk never touches a number that was closed and reused by
 * another sandbox's socket.
 */
#include "proxy_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

void registry_init(struct fd_registry *r)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->mu, NULL);
}

void registry_free(struct fd_registry *r)
{
	free(r->v);
	pthread_mutex_destroy(&r->mu);
}

int registry_add(struct fd_registry *r, const char *id, int fd)
{
	int rc = 0;

	pthread_mutex_lock(&r->mu);
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 64;
		struct fd_entry *v = realloc(r->v, cap * sizeof(*v));

		if (v) {
			r->v = v;
			r->cap = cap;
		} else {
			rc = -ENOMEM;
		}
	}
	if (rc == 0) {
		r->v[r->n].fd = fd;
		snprintf(r->v[r->n].id, sizeof(r->v[0].id), "%s", id);
		r->n++;
	}
	pthread_mutex_unlock(&r->mu);
	return rc;
}

void registry_remove(struct fd_registry *r, int fd)
{
	pthread_mutex_lock(&r->mu);
	for (size_t i = 0; i < r->n; i++) {
		if (r->v[i].fd == fd) {
			r->v[i] = r->v[--r->n];
			break;
		}
	}
	pthread_mutex_unlock(&r->mu);
}

void registry_shutdown(struct fd_registry *r, const char *id)
{
	pthread_mutex_lock(&r->mu);
	for (size_t i = 0; i < r->n; i++)
		if (!id || strcmp(r->v[i].id, id) == 0)
			shutdown(r->v[i].fd, SHUT_RDWR);
	pthread_mutex_unlock(&r->mu);
}
