/*
 * Snapshots and filesystem forks of sandboxes: see snapshot.h and docs/api.md
 * ("Snapshots and fork").
 *
 * Consistency: a disk image is only copied while nothing has it mounted. A
 * running sandbox is first paused with its memory (CRIU), which ends its
 * processes and with them its mount namespace; the loop device of its disk
 * detaches itself on last close, and the copy starts only once no loop
 * device is backed by the image any more. Copying a mounted ext4 image
 * could catch half-written metadata.
 *
 * Ordering and crashes: the snapshot's files are written to
 * <id>.tmp and renamed once durable, and the row is inserted last, so a row
 * always has its files. During the pause the source's row carries the same
 * intents a pause and a resume do ("pause", then "resume"), so a crash
 * in between is settled by the pause recovery (lc_recover_pause): the
 * source is then left paused with its memory, and resumable.
 */
#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cleanup.h"
#include "ids.h"
#include "lc_internal.h"
#include "log.h"
#include "rt_checkpoint.h"
#include "sandbox_rt.h"

#define DETACH_WAIT_MS 5000 /* how long a just-ended sandbox's disk may stay attached */
#define SNAP_IMAGES "checkpoint"  /* the source's memory images, when it had them */
#define SNAP_TOKEN "agent-token"  /* the access token its agent held then */
#define SNAP_TOKEN_MAX 128
#define COPY_CHUNK (64u << 20)

/* ---- paths ---- */

static void snapshot_dir(struct lifecycle *lc, const char *sid, const char *suffix,
			 char out[PATH_MAX])
{
	snprintf(out, PATH_MAX, "%s/snapshots/%s%s", lc->cfg.data_dir, sid, suffix);
}

static void sandbox_disk(struct lifecycle *lc, const char *id, char out[PATH_MAX])
{
	snprintf(out, PATH_MAX, "%s/sandboxes/%s/disk.img", lc->cfg.data_dir, id);
}

static int mkdir_one(const char *path, struct herr *err)
{
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "mkdir %s", path);
	return 0;
}

static int fsync_path(const char *path, struct herr *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fsync(fd) < 0)
		return herr_sys(err, -errno, "fsync %s", path);
	return 0;
}

static void unlink_logged(int dirfd, const char *dir, const char *name, int flags)
{
	if (unlinkat(dirfd, name, flags) < 0 && errno != ENOENT)
		log_warn("lifecycle", NULL, "removing %s/%s: %s", dir, name, strerror(errno));
}

/* The memory images: files only (CRIU's are flat), never through a link. */
static void remove_images(int top, const char *dir)
{
	int fd = openat(top, SNAP_IMAGES, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	_cleanup_closedir_ DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;

	if (fd < 0 && errno != ENOENT) {
		/* Not a folder of ours (a link, a file): the name goes, not
		 * what it leads to. */
		unlink_logged(top, dir, SNAP_IMAGES, 0);
		return;
	}
	if (fd >= 0 && !d)
		close(fd);
	while (d && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			unlink_logged(dirfd(d), dir, e->d_name, 0);
	unlink_logged(top, dir, SNAP_IMAGES, AT_REMOVEDIR);
}

/* Removes a snapshot folder: only the files we put there, then the folder. */
static void remove_snapshot_dir(const char *dir)
{
	_cleanup_close_ int top = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (top >= 0) {
		unlink_logged(top, dir, "disk.img", 0);
		unlink_logged(top, dir, SNAP_TOKEN, 0);
		remove_images(top, dir);
	}
	if (rmdir(dir) < 0 && errno != ENOENT)
		log_warn("lifecycle", NULL, "removing %s: %s", dir, strerror(errno));
}

/* ---- copying a disk image ---- */

/* True when some loop device is backed by the file (dev, ino). */
static bool loop_backed(dev_t dev, ino_t ino)
{
	_cleanup_closedir_ DIR *d = opendir("/sys/block");
	struct dirent *e;

	while (d && (e = readdir(d))) {
		char path[300], backing[PATH_MAX];
		struct stat st;
		FILE *f;

		if (strncmp(e->d_name, "loop", 4) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/block/%s/loop/backing_file", e->d_name);
		f = fopen(path, "re");
		if (!f)
			continue; /* not attached */
		backing[0] = '\0';
		if (!fgets(backing, sizeof(backing), f))
			backing[0] = '\0';
		fclose(f);
		backing[strcspn(backing, "\n")] = '\0';
		/* Compared by inode: the name may carry " (deleted)" or differ by
		 * symlinks in data_dir. */
		if (stat(backing, &st) == 0 && st.st_dev == dev && st.st_ino == ino)
			return true;
	}
	return false;
}

/*
 * Waits until no loop device holds the image: the mount namespace of ended
 * processes is torn down asynchronously, and its ext4 is flushed and
 * unmounted only then.
 */
static int wait_detached(const char *image, int fd, struct herr *err)
{
	struct stat st;
	struct timespec pause = { 0, 20 * 1000 * 1000 };

	if (fstat(fd, &st) < 0)
		return herr_sys(err, -errno, "stat %s", image);
	for (int waited = 0; waited < DETACH_WAIT_MS; waited += 20) {
		if (!loop_backed(st.st_dev, st.st_ino))
			return 0;
		nanosleep(&pause, NULL);
	}
	return herr_set(err, -EBUSY, "disk %s is still attached to a loop device "
			"(mounted) %d ms after its processes ended", image, DETACH_WAIT_MS);
}

/* The data extents of src, copied in the kernel; holes stay holes. */
static int copy_extents(int in, int out, off_t size, const char *src, struct herr *err)
{
	off_t data = 0, hole;

	while (data < size) {
		data = lseek(in, data, SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			break; /* only a hole left */
		if (data < 0)
			return herr_sys(err, -errno, "SEEK_DATA in %s", src);
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			return herr_sys(err, -errno, "SEEK_HOLE in %s", src);
		while (data < hole) {
			off_t a = data, b = data;
			size_t want = (size_t)(hole - data) < COPY_CHUNK ?
				(size_t)(hole - data) : COPY_CHUNK;
			ssize_t n = copy_file_range(in, &a, out, &b, want, 0);

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				return herr_sys(err, -errno, "copy_file_range from %s", src);
			if (n == 0)
				return herr_set(err, -EIO, "%s shrank while being copied", src);
			data += n;
		}
	}
	return 0;
}

/*
 * Copies the image src to the new file dst (which must not exist): a
 * reflink where the filesystem shares blocks (btrfs, XFS), else the data
 * extents. dst is durable when this returns; *bytes is what it takes on disk.
 */
static int copy_image(const char *src, const char *dst, int64_t *bytes,
		      struct herr *err)
{
	_cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	_cleanup_close_ int out = -1;
	struct stat st;
	int rc;

	if (in < 0)
		return herr_sys(err, -errno, "open %s", src);
	if (fstat(in, &st) < 0)
		return herr_sys(err, -errno, "stat %s", src);
	if (!S_ISREG(st.st_mode))
		return herr_set(err, -EINVAL, "%s is not a regular file", src);
	rc = wait_detached(src, in, err);
	if (rc < 0)
		return rc;
	/* O_EXCL: never write through a file or link someone put there. */
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (out < 0)
		return herr_sys(err, -errno, "create %s", dst);
	if (ioctl(out, FICLONE, in) < 0) {
		if (ftruncate(out, st.st_size) < 0)
			rc = herr_sys(err, -errno, "truncate %s", dst);
		else
			rc = copy_extents(in, out, st.st_size, src, err);
	}
	if (rc == 0 && fsync(out) < 0)
		rc = herr_sys(err, -errno, "fsync %s", dst);
	if (rc == 0 && fstat(out, &st) < 0)
		rc = herr_sys(err, -errno, "stat %s", dst);
	if (rc < 0) {
		unlink(dst);
		return rc;
	}
	*bytes = (int64_t)st.st_blocks * 512;
	return 0;
}

/* ---- the snapshot's folder and row ---- */

static char *config_of(const struct store_sandbox *sb)
{
	json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:b,s:I}",
			      "metadata", sb->metadata, "env", sb->env,
			      "network", sb->network, "lifecycle", sb->lifecycle,
			      "cpuCount", (json_int_t)sb->cpu_count,
			      "memoryMB", (json_int_t)sb->memory_mb,
			      "diskMB", (json_int_t)sb->disk_mb,
			      "secure", *sb->access_token != '\0',
			      "timeout", (json_int_t)sb->timeout_s);
	char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;

	json_decref(j);
	return text;
}

/*
 * The source's memory images (it is paused with them), and the access token
 * its agent holds in that memory: a fork's first /init must show it. The
 * token is in the images anyway; the file is 0600 in a 0700 folder.
 */
static int write_memory(struct lifecycle *lc, const struct store_sandbox *sb,
			const char *tmp, int64_t *bytes, struct herr *err)
{
	char dir[PATH_MAX + 16], path[PATH_MAX + 16];
	int64_t n = 0;
	int rc;

	snprintf(dir, sizeof(dir), "%s/%s", tmp, SNAP_IMAGES);
	snprintf(path, sizeof(path), "%s/%s", tmp, SNAP_TOKEN);
	rc = lcrt_copy_images(lc->rt, sb->id, dir, &n, err);
	if (rc < 0)
		return herr_wrap(err, "copying the memory images of %s", sb->id);
	*bytes += n;
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC |
				      O_NOFOLLOW, 0600);
	size_t len = strlen(sb->access_token);
	if (fd < 0 || write(fd, sb->access_token, len) != (ssize_t)len || fsync(fd) < 0)
		return herr_sys(err, -errno, "writing %s", path);
	return 0;
}

/* Copies the source's disk (and memory) into <sid>.tmp, then renames it to <sid>. */
static int write_files(struct lifecycle *lc, const struct store_sandbox *sb,
		       const char *sid, int64_t *bytes, struct herr *err)
{
	const char *id = sb->id;
	char top[PATH_MAX], tmp[PATH_MAX], final[PATH_MAX], src[PATH_MAX];
	char img[PATH_MAX + 16];
	int rc;

	snprintf(top, sizeof(top), "%s/snapshots", lc->cfg.data_dir);
	snapshot_dir(lc, sid, ".tmp", tmp);
	snapshot_dir(lc, sid, "", final);
	sandbox_disk(lc, id, src);
	snprintf(img, sizeof(img), "%s/disk.img", tmp);
	rc = mkdir_one(top, err);
	if (rc == 0 && mkdir(tmp, 0700) < 0)
		rc = herr_sys(err, -errno, "mkdir %s", tmp);
	if (rc < 0)
		return rc;
	rc = copy_image(src, img, bytes, err);
	if (rc == 0 && lcrt_paused_kind(lc->rt, id) == LCRT_PAUSED_MEMORY)
		rc = write_memory(lc, sb, tmp, bytes, err);
	if (rc == 0)
		rc = fsync_path(tmp, err);
	if (rc == 0 && rename(tmp, final) < 0)
		rc = herr_sys(err, -errno, "rename %s to %s", tmp, final);
	if (rc == 0)
		rc = fsync_path(top, err);
	if (rc < 0)
		remove_snapshot_dir(tmp); /* a renamed one is the caller's to remove */
	return rc;
}

static int record(struct lifecycle *lc, const struct store_sandbox *sb, const char *sid,
		  const char *name, int64_t bytes, struct store_snapshot *out,
		  struct herr *err)
{
	struct store_snapshot s = {
		.team_id = sb->team_id, .created_at = store_now_ms(), .size_bytes = bytes,
	};
	int rc;

	snprintf(s.id, sizeof(s.id), "%s", sid);
	snprintf(s.sandbox_id, sizeof(s.sandbox_id), "%s", sb->id);
	s.template_id = strdup(sb->template_id);
	s.name = strdup(name ? name : "");
	s.config = config_of(sb);
	s.node = strdup("");
	if (!s.template_id || !s.name || !s.config || !s.node) {
		store_snapshot_clear(&s);
		return herr_set(err, -ENOMEM, "out of memory");
	}
	rc = store_snapshot_insert(lc->store, &s, err);
	if (rc < 0) {
		store_snapshot_clear(&s);
		return rc;
	}
	*out = s;
	return 0;
}

/* A new id: the shape of a sandbox id, with 's' first to tell them apart. */
static int new_snapshot_id(char sid[SBX_ID_LEN + 1], struct herr *err)
{
	int rc = sandbox_id_generate(sid, err);

	if (rc == 0)
		sid[0] = 's';
	return rc;
}

/* ---- taking a snapshot ---- */

static void clear_intent(struct lifecycle *lc, const char *id)
{
	struct herr err;

	if (store_sandbox_set_intent(lc->store, id, "", &err) < 0)
		log_error("lifecycle", id, "clearing the snapshot's intent: %s", err.msg);
}

/* A pause with memory, recorded as a pause is (see pause.c). */
static int stop_source(struct lifecycle *lc, const struct store_sandbox *sb,
		       struct herr *err)
{
	struct rt_ckpt_stats stats = { 0 };
	int rc = store_sandbox_set_intent(lc->store, sb->id, "pause", err);

	if (rc < 0)
		return rc;
	/* As for a pause: no proxied connection may talk to processes being
	 * written out. */
	lc_call_end_hook(lc, sb->id);
	rc = lcrt_pause(lc->rt, sb->id, true, &stats, err);
	if (rc < 0) {
		clear_intent(lc, sb->id);
		return herr_wrap(err, "checkpoint of the sandbox for its snapshot failed "
				 "(it keeps running)");
	}
	rc = store_sandbox_set_paused(lc->store, sb->id, store_now_ms(), err);
	if (rc <= 0)
		return rc < 0 ? rc : herr_set(err, -EIO, "sandbox %s left the running state "
					      "during its snapshot", sb->id);
	log_debug("lifecycle", sb->id, "paused for a snapshot in %llu ms",
		  (unsigned long long)stats.total_ms);
	return 0;
}

/* Brings the source back with its deadline as it was before the snapshot. */
static int restart_source(struct lifecycle *lc, const struct store_sandbox *sb,
			  struct herr *err)
{
	struct lc_template tpl = { 0 };
	/* set_intent answers the rows it changed: only an error counts here. */
	int rc = store_sandbox_set_intent(lc->store, sb->id, "resume", err);

	if (rc >= 0)
		rc = lc_template_get_team(lc, sb->team_id, sb->template_id, &tpl, err);
	if (rc == 0)
		rc = lcrt_resume(lc->rt, sb, &tpl, true, err);
	tpl_clear(&tpl);
	if (rc < 0) {
		clear_intent(lc, sb->id);
		lc_event(lc, sb->id, "resume failed", err->msg);
		return rc;
	}
	rc = store_sandbox_set_running(lc->store, sb->id, sb->started_at, sb->end_at, err);
	return rc < 0 ? rc : 0;
}

static int take_locked(struct lifecycle *lc, const struct store_sandbox *sb,
		       const char *name, struct store_snapshot *out, struct herr *err)
{
	bool running = strcmp(sb->state, SBX_RUNNING) == 0;
	char sid[SBX_ID_LEN + 1];
	int64_t bytes = 0;
	int rc, back = 0;
	struct herr back_err;

	if (*sb->intent)
		return herr_set(err, -EBUSY, "sandbox '%s' has a %s under way", sb->id,
				sb->intent);
	rc = new_snapshot_id(sid, err);
	if (rc == 0 && running)
		rc = stop_source(lc, sb, err);
	if (rc < 0)
		return rc;
	rc = write_files(lc, sb, sid, &bytes, err);
	if (rc == 0)
		rc = record(lc, sb, sid, name, bytes, out, err);
	if (rc < 0) {
		char dir[PATH_MAX];

		snapshot_dir(lc, sid, "", dir);
		remove_snapshot_dir(dir);
	}
	/* The source goes back to running whether or not the copy worked. */
	if (running)
		back = restart_source(lc, sb, &back_err);
	if (rc < 0)
		return rc;
	lc_event(lc, sb->id, "snapshot", sid);
	log_info("lifecycle", sb->id, "snapshot %s taken (%lld bytes)", sid,
		 (long long)bytes);
	if (back < 0)
		return herr_set(err, -ECANCELED, "snapshot %s was taken, but resuming the "
				"sandbox after it failed (it stays paused): %s", sid,
				back_err.msg);
	return 0;
}

int lc_snapshot_take(struct lifecycle *lc, int64_t team, const char *id,
		     const char *name, struct store_snapshot *out, struct herr *err)
{
	_cleanup_sandbox_ struct store_sandbox sb = { 0 };
	int rc;

	if (!lc->rt)
		return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
	if (!lc_busy_take(lc, id, true))
		return herr_set(err, -ENOMEM, "out of memory");
	/* Read under the operation lock: a pause or kill that ran before us
	 * has changed the row. */
	rc = store_sandbox_get(lc->store, id, team, &sb, err);
	if (rc == 0 || (rc > 0 && strcmp(sb.state, SBX_RUNNING) != 0 &&
			strcmp(sb.state, SBX_PAUSED) != 0))
		rc = herr_set(err, -ENOENT, "sandbox %s is not live", id);
	if (rc > 0)
		rc = take_locked(lc, &sb, name, out, err);
	lc_busy_give(lc, id);
	return rc;
}

int lc_snapshot_delete(struct lifecycle *lc, int64_t team, const char *snapshot_id,
		       struct herr *err)
{
	char dir[PATH_MAX];
	int rc = store_snapshot_delete(lc->store, snapshot_id, team, err);

	/* The row goes first: a crash after it leaves an unreferenced folder,
	 * never a row without files. */
	if (rc <= 0)
		return rc;
	snapshot_dir(lc, snapshot_id, "", dir);
	remove_snapshot_dir(dir);
	log_info("lifecycle", NULL, "snapshot %s deleted", snapshot_id);
	return 1;
}

/* Snapshot ids are what new_snapshot_id makes ('s' and 20 of [a-z0-9]);
 * anything else in the folder is not ours to remove. */
static bool snapshot_name(const char *name, bool *tmp)
{
	size_t len = strlen(name);

	*tmp = len > 4 && strcmp(name + len - 4, ".tmp") == 0;
	if (*tmp)
		len -= 4;
	if (len != SBX_ID_LEN || name[0] != 's')
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9')))
			return false;
	return true;
}

/* A folder of its own: never a link, whose disk.img would be another's. */
static bool plain_dir(int top, const char *name)
{
	struct stat st;

	return fstatat(top, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

void lc_snapshot_collect(struct lifecycle *lc)
{
	char top[PATH_MAX], dir[PATH_MAX];
	_cleanup_closedir_ DIR *d = NULL;
	struct dirent *e;

	snapshot_dir(lc, "", "", top);
	d = opendir(top);
	while (d && (e = readdir(d))) {
		_cleanup_snapshot_ struct store_snapshot row = { 0 };
		struct herr err;
		bool tmp;

		if (!snapshot_name(e->d_name, &tmp) || !plain_dir(dirfd(d), e->d_name))
			continue;
		/* A store error keeps the folder: only a known absence removes. */
		if (!tmp && store_snapshot_get(lc->store, e->d_name, -1, &row, &err) != 0)
			continue;
		snapshot_dir(lc, e->d_name, "", dir);
		remove_snapshot_dir(dir);
		log_info("lifecycle", NULL, "removed %s: %s", dir,
			 tmp ? "an unfinished snapshot" : "no snapshot row refers to it");
	}
}

/* ---- fork ---- */

static int place_disk(struct lifecycle *lc, const struct store_snapshot *snap,
		      const char *id, struct herr *err)
{
	char src[PATH_MAX + 16], dir[PATH_MAX], top[PATH_MAX], dst[PATH_MAX];
	int64_t bytes;
	int rc;

	snapshot_dir(lc, snap->id, "", dir);
	snprintf(src, sizeof(src), "%s/disk.img", dir);
	snprintf(top, sizeof(top), "%s/sandboxes", lc->cfg.data_dir);
	snprintf(dir, sizeof(dir), "%s/sandboxes/%s", lc->cfg.data_dir, id);
	sandbox_disk(lc, id, dst);
	rc = mkdir_one(top, err);
	if (rc == 0)
		rc = mkdir_one(dir, err);
	if (rc == 0)
		rc = copy_image(src, dst, &bytes, err);
	if (rc == -ENOENT)
		herr_wrap(err, "snapshot %s has no disk (deleted meanwhile?)", snap->id);
	return rc;
}

/* The token file of a snapshot with memory: hex, as sandboxes' tokens are. */
static int read_token(const char *dir, char out[SNAP_TOKEN_MAX + 2], struct herr *err)
{
	char path[PATH_MAX + 16];

	snprintf(path, sizeof(path), "%s/%s", dir, SNAP_TOKEN);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	ssize_t n = fd >= 0 ? read(fd, out, SNAP_TOKEN_MAX + 1) : -1;

	if (n < 0)
		return herr_sys(err, -errno, "reading %s", path);
	out[n] = '\0';
	if (n > SNAP_TOKEN_MAX || strspn(out, "0123456789abcdef") != (size_t)n)
		return herr_set(err, -EINVAL, "%s: not an access token", path);
	return 0;
}

/*
 * With memory images the fork runs the source's processes as they were at
 * the snapshot (lcrt_fork). Without (the source was paused without memory
 * when it was taken) the runtime starts the sandbox afresh on the disk,
 * agent and start command included, as for a resume after a memory-less
 * pause; the event and the log say so.
 */
static int start_on_disk(struct lifecycle *lc, const struct store_snapshot *snap,
			 struct store_sandbox *sb, const struct lc_template *tpl,
			 struct herr *err)
{
	char dir[PATH_MAX], images[PATH_MAX + 16], token[SNAP_TOKEN_MAX + 2];
	struct lcrt_fork_from from = { .images = images, .source_id = snap->sandbox_id,
				       .source_token = token };
	struct stat st;
	int rc;

	snapshot_dir(lc, snap->id, "", dir);
	snprintf(images, sizeof(images), "%s/%s", dir, SNAP_IMAGES);
	if (lstat(images, &st) < 0 || !S_ISDIR(st.st_mode)) {
		log_warn("lifecycle", sb->id, "snapshot %s has no memory images (its source "
			 "was paused without memory): the fork starts afresh on its disk",
			 snap->id);
		lc_event(lc, sb->id, "fork without memory", snap->id);
		return lcrt_resume(lc->rt, sb, tpl, true, err);
	}
	rc = read_token(dir, token, err);
	return rc < 0 ? rc : lcrt_fork(lc->rt, sb, tpl, &from, err);
}

static int start_fork(struct lifecycle *lc, const struct store_snapshot *snap,
		      struct store_sandbox *sb, struct herr *err)
{
	struct lc_template tpl = { 0 };
	int64_t started;
	int rc = place_disk(lc, snap, sb->id, err);

	if (rc == 0)
		rc = lc_template_get_team(lc, sb->team_id, sb->template_id, &tpl, err);
	if (rc == -ENOENT)
		rc = herr_set(err, -EIO, "template '%s' of the snapshot is gone",
			      sb->template_id);
	if (rc == 0)
		rc = start_on_disk(lc, snap, sb, &tpl, err);
	tpl_clear(&tpl);
	if (rc < 0)
		return rc;
	started = store_now_ms();
	rc = store_sandbox_set_running(lc->store, sb->id, started,
				       started + sb->timeout_s * 1000, err);
	if (rc < 0)
		return rc;
	sb->started_at = started;
	sb->end_at = started + sb->timeout_s * 1000;
	snprintf(sb->state, sizeof(sb->state), "%s", SBX_RUNNING);
	return 0;
}

int lc_fork_from(struct lifecycle *lc, const struct store_snapshot *snap,
		 struct store_sandbox *sb, int64_t max_active, struct herr *err)
{
	char reason[HERR_MSG_MAX + 32];
	int rc;

	if (!lc->rt)
		return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
	rc = lc_create_begin_capped(lc, sb, max_active, err);
	if (rc < 0)
		return rc;
	rc = start_fork(lc, snap, sb, err);
	if (rc == 0) {
		lc_event(lc, sb->id, "running", snap->id);
		log_info("lifecycle", sb->id, "forked from snapshot %s of %s", snap->id,
			 snap->sandbox_id);
		return 0;
	}
	/* Nothing of a failed fork stays: its runtime objects and its disk. */
	lcrt_destroy(lc->rt, sb->id, NULL);
	lcrt_remove_paused(lc->rt, sb->id, NULL);
	snprintf(reason, sizeof(reason), "fork failed: %s", err->msg);
	lc_end_row(lc, sb->id, reason);
	return rc;
}
