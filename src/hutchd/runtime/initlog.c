/*
 * The sandbox init's stdout/stderr. The init writes into a pipe, never into a
 * host file: whatever runs in the sandbox (root included) only ever holds the
 * pipe, so it cannot grow, seek in or truncate anything on the host disk. The
 * keeper drains the pipe into <data_dir>/sandboxes/<id>/init.log and keeps
 * that file at most `cap` bytes: when a write would pass the cap, the older
 * half of the file is dropped (the newest output is what explains a crash).
 * A failed write to the log drops output rather than stall the sandbox.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rt_internal.h"

void rt_initlog_init(struct rt_initlog *l, int fd, off_t cap)
{
	struct stat st;
	int flags = fcntl(fd, F_GETFL);

	/* Positioned writes need a descriptor without O_APPEND (on Linux
	 * pwrite on an O_APPEND descriptor appends); only the keeper writes. */
	if (flags >= 0)
		fcntl(fd, F_SETFL, flags & ~O_APPEND);
	l->fd = fd;
	l->cap = cap < 2 ? 2 : cap;
	l->size = fstat(fd, &st) == 0 ? st.st_size : 0;
}

static int write_at(int fd, const char *buf, size_t n, off_t off)
{
	while (n > 0) {
		ssize_t w = pwrite(fd, buf, n, off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		buf += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

/* Moves the newest `keep` bytes to the start of the file and cuts it there. */
static int keep_tail(struct rt_initlog *l, off_t keep)
{
	char chunk[65536];
	off_t src = l->size - keep, done = 0;

	while (done < keep) {
		size_t want = (size_t)(keep - done < (off_t)sizeof(chunk) ?
				       keep - done : (off_t)sizeof(chunk));
		ssize_t r = pread(l->fd, chunk, want, src + done);

		if (r < 0 && errno == EINTR)
			continue;
		/* src > done always: the copy never overwrites bytes it has
		 * still to read. */
		if (r <= 0 || write_at(l->fd, chunk, (size_t)r, done) < 0)
			break;
		done += r;
	}
	if (ftruncate(l->fd, done) < 0)
		return -1;
	l->size = done;
	return 0;
}

void rt_initlog_write(struct rt_initlog *l, const char *buf, size_t n)
{
	off_t half = l->cap / 2;

	if (n >= (size_t)half) {
		/* This write alone is more than half: only its end is kept. */
		buf += n - (size_t)half;
		n = (size_t)half;
		if (ftruncate(l->fd, 0) == 0)
			l->size = 0;
	} else if (l->size + (off_t)n > l->cap) {
		keep_tail(l, half - (off_t)n);
	}
	if (l->size + (off_t)n > l->cap)
		return; /* the log could not be cut: drop rather than grow */
	if (write_at(l->fd, buf, n, l->size) == 0)
		l->size += (off_t)n;
	else
		(void)ftruncate(l->fd, l->size); /* no half-written tail */
}

int rt_initlog_drain(struct rt_initlog *l, int pipe_fd)
{
	char buf[65536];
	ssize_t r;

	do
		r = read(pipe_fd, buf, sizeof(buf));
	while (r < 0 && errno == EINTR);
	if (r > 0)
		rt_initlog_write(l, buf, (size_t)r);
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return -EAGAIN;
	return r > 0;
}
