/*
 * Scope-bound cleanup, the one resource discipline used across Hutch.
 *
 * A local declared with one of the _cleanup_*_ attributes is released when it
 * goes out of scope, on every return path. To hand ownership to a caller or a
 * structure, take the value with steal_ptr()/steal_fd(), which leaves the local
 * empty so that its cleanup does nothing.
 */
#ifndef HUTCH_CLEANUP_H
#define HUTCH_CLEANUP_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <dirent.h>

static inline void cleanup_freep(void *p)
{
	free(*(void **)p);
}

static inline void cleanup_closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}

static inline void cleanup_fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}

static inline void cleanup_closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

#define _cleanup_(fn) __attribute__((cleanup(fn)))
#define _cleanup_free_ _cleanup_(cleanup_freep)
#define _cleanup_close_ _cleanup_(cleanup_closep)
#define _cleanup_fclose_ _cleanup_(cleanup_fclosep)
#define _cleanup_closedir_ _cleanup_(cleanup_closedirp)

static inline void *steal_ptr_impl(void *pp)
{
	void **p = pp;
	void *v = *p;
	*p = NULL;
	return v;
}

static inline int steal_fd(int *fd)
{
	int v = *fd;
	*fd = -1;
	return v;
}

/* Takes the pointer out of a cleanup-owned local, keeping its type. */
#define steal_ptr(pp) ((__typeof__(*(pp)))steal_ptr_impl(pp))

#endif
