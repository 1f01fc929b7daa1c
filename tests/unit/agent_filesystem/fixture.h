/*
 * Temporary directory fixtures for the filesystem service tests: a fresh
 * folder per test, removed afterwards with the system's rm (not the code
 * under test), and small helpers to make files, folders and links in it.
 */
#ifndef HUTCH_TEST_FS_FIXTURE_H
#define HUTCH_TEST_FS_FIXTURE_H

#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fixture {
	char dir[PATH_MAX];
};

static inline const char *fx_path(struct fixture *fx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Formats a path under the fixture; a ring of buffers so a few can coexist. */
static inline const char *fx_path(struct fixture *fx, const char *fmt, ...)
{
	static char ring[8][PATH_MAX];
	static int next;
	char *out = ring[next++ % 8];
	char rel[PATH_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rel, sizeof(rel), fmt, ap);
	va_end(ap);
	snprintf(out, PATH_MAX, "%.2000s/%.2000s", fx->dir, rel);
	return out;
}

static inline void fx_write(const char *path, const char *data, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data))
		abort();
	fchmod(fd, mode);
	close(fd);
}

static inline int fx_setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	snprintf(fx->dir, sizeof(fx->dir), "%s/hutch-fs-test-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(fx->dir))
		abort();
	*state = fx;
	return 0;
}

static inline int fx_teardown(void **state)
{
	struct fixture *fx = *state;
	char cmd[PATH_MAX + 32];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
	if (system(cmd) != 0)
		return -1;
	free(fx);
	return 0;
}

#endif
