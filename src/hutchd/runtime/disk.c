/*
 * Sandbox disks: the writable layer lives on its own ext4 image under
 * <data_dir>/sandboxes/<id>/disk.img, attached through a loop device. A full
 * disk inside a sandbox is ENOSPC inside that sandbox and nothing more: the
 * image is sparse but can never grow past its size, so the host disk cannot
 * be filled by one sandbox. The image survives reboots (pause/resume needs
 * that), unlike a tmpfs upper, and unlike a tmpfs it is not charged to the
 * sandbox's memory limit. Project quotas would be cheaper but need a
 * filesystem mounted with prjquota, which we must not impose on the host.
 *
 * Files are stored with in-sandbox ids (0..65535): the mount is idmapped to
 * the sandbox's range when it is handed to the sandbox.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cleanup.h"
#include "rt_internal.h"

extern char **environ;

static void disk_path(struct rt *rt, const char *id, char *buf, size_t len)
{
	snprintf(buf, len, "%s/sandboxes/%s/disk.img", rt->data_dir, id);
}

/*
 * Only what a sandbox writes should cost host disk. The image is sparse and
 * the inode tables and journal are left for lazy initialisation; on top of
 * that, no blocks are reserved for online resizing (a sandbox disk never
 * grows while mounted: about 1 MiB saved per sandbox) and the journal is at
 * most 16 MiB (mke2fs would pick 32-128 MiB for disks of 1 GiB and more),
 * which bounds what a metadata-heavy sandbox leaves allocated in it.
 */
static int run_mkfs(const char *image, uint64_t mb, struct herr *err)
{
	bool big = mb >= 1024;
	char *const argv[] = {
		"mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^resize_inode",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0",
		(char *)image, big ? "-J" : NULL, "size=16", NULL,
	};
	pid_t pid;
	int status, r;

	r = posix_spawnp(&pid, "mkfs.ext4", NULL, NULL, argv, environ);
	if (r != 0)
		return herr_sys(err, -r, "running mkfs.ext4");
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return herr_sys(err, -errno, "waiting for mkfs.ext4");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return herr_set(err, -EIO, "mkfs.ext4 %s failed (status %d)", image, status);
	return 0;
}

int rt_disk_format(const char *path, uint64_t mb, struct herr *err)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return herr_sys(err, -errno, "creating %s", path);
	if (ftruncate(fd, (off_t)((mb ? mb : RT_DEFAULT_DISK_MB) << 20)) < 0) {
		int r = herr_sys(err, -errno, "sizing %s", path);
		unlink(path);
		return r;
	}
	int r = run_mkfs(path, mb ? mb : RT_DEFAULT_DISK_MB, err);
	if (r < 0)
		unlink(path);
	return r;
}

int rt_disk_create(struct rt *rt, const char *id, uint64_t mb, bool reuse, int *mount_fd,
		   struct herr *err)
{
	char path[4096];
	struct stat st;

	*mount_fd = -1;
	disk_path(rt, id, path, sizeof(path));
	if (stat(path, &st) == 0) {
		if (reuse)
			return 0;
		return herr_set(err, -EEXIST, "disk %s already exists", path);
	}
	/* A formatted and mounted disk from the pool, if one of this size is
	 * ready: mkfs and the mount are then off the request path. */
	int fd = rt_prep_take_disk(rt, path, mb ? mb : RT_DEFAULT_DISK_MB, err);
	if (fd >= 0) {
		*mount_fd = fd;
		return 0;
	}
	if (fd != -ENOENT)
		return fd;
	return rt_disk_format(path, mb, err);
}

/* Attaches the image to a free loop device that frees itself on last close. */
static int loop_attach(const char *image, char *dev, size_t len, struct herr *err)
{
	_cleanup_close_ int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	_cleanup_close_ int img = open(image, O_RDWR | O_CLOEXEC);

	if (ctl < 0)
		return herr_sys(err, -errno, "open /dev/loop-control");
	if (img < 0)
		return herr_sys(err, -errno, "open %s", image);

	/* Another thread or process may grab the same free device: retry. */
	for (int attempt = 0; attempt < 64; attempt++) {
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (n < 0)
			return herr_sys(err, -errno, "LOOP_CTL_GET_FREE");
		snprintf(dev, len, "/dev/loop%d", n);
		_cleanup_close_ int lfd = open(dev, O_RDWR | O_CLOEXEC);
		if (lfd < 0)
			return herr_sys(err, -errno, "open %s", dev);
		struct loop_config cfg = { .fd = (uint32_t)img };
		cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
		if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0)
			return steal_fd(&lfd);
		if (errno != EBUSY)
			return herr_sys(err, -errno, "LOOP_CONFIGURE %s", dev);
	}
	return herr_set(err, -EBUSY, "no loop device could be claimed");
}

int rt_disk_mount_path(const char *path, struct herr *err)
{
	char dev[64];

	_cleanup_close_ int lfd = loop_attach(path, dev, sizeof(dev), err);
	if (lfd < 0)
		return lfd;

	_cleanup_close_ int fs = fsopen("ext4", FSOPEN_CLOEXEC);
	if (fs < 0)
		return herr_sys(err, -errno, "fsopen ext4");
	if (fsconfig(fs, FSCONFIG_SET_STRING, "source", dev, 0) < 0 ||
	    fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		return herr_sys(err, -errno, "mounting %s (%s)", path, dev);
	int m = fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NODEV);
	if (m < 0)
		return herr_sys(err, -errno, "fsmount %s", path);
	/* The superblock now holds the loop device; closing lfd arms autoclear. */
	return m;
}

int rt_disk_mount_fd(struct rt *rt, const char *id, struct herr *err)
{
	char path[4096];

	disk_path(rt, id, path, sizeof(path));
	return rt_disk_mount_path(path, err);
}

int rt_disk_remove(struct rt *rt, const char *id, struct herr *err)
{
	char path[4096];

	disk_path(rt, id, path, sizeof(path));
	if (unlink(path) < 0 && errno != ENOENT)
		return herr_sys(err, -errno, "removing %s", path);
	return 0;
}

uint64_t rt_disk_used(struct rt *rt, const char *id, pid_t init_pid)
{
	char path[64];
	struct statfs st;

	(void)rt;
	(void)id;
	/* The init's root is the overlay, whose statfs reports the upper disk. */
	snprintf(path, sizeof(path), "/proc/%d/root/", init_pid);
	if (init_pid <= 0 || statfs(path, &st) < 0)
		return 0;
	return (uint64_t)(st.f_blocks - st.f_bfree) * (uint64_t)st.f_bsize;
}
