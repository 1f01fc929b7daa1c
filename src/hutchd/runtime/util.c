/*
 * Small helpers of the runtime: whole-file writes and reads, ids, the
 * per-sandbox state files used to re-adopt sandboxes after a hutchd restart.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "rt_internal.h"

int rt_write_file(const char *path, const char *data, struct herr *err)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
				      O_NOFOLLOW, 0600);
	size_t len = strlen(data);

	if (fd < 0)
		return herr_sys(err, -errno, "open %s", path);
	if (write(fd, data, len) != (ssize_t)len)
		return herr_sys(err, errno ? -errno : -EIO, "write %s", path);
	return 0;
}

int rt_read_u64(const char *path, uint64_t *out)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	char buf[64];
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -EIO;
	buf[n] = '\0';
	*out = strtoull(buf, NULL, 10);
	return 0;
}

int rt_mkdir_p(const char *path, mode_t mode, struct herr *err)
{
	char buf[4096];
	size_t len = strlen(path);

	if (len == 0 || len >= sizeof(buf))
		return herr_set(err, -EINVAL, "bad directory path '%s'", path);
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return herr_sys(err, -errno, "mkdir %s", buf);
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "mkdir %s", buf);
	return 0;
}

unsigned long long rt_proc_starttime(pid_t pid)
{
	char path[64], buf[1024];
	_cleanup_close_ int fd = -1;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* comm may contain spaces and parentheses: fields resume after the last ')' */
	char *p = strrchr(buf, ')');
	if (!p)
		return 0;
	/* field 22 is starttime; after ')' comes field 3 */
	for (int field = 2; field < 22 && p; field++)
		p = strchr(p + 1, ' ');
	return p ? strtoull(p + 1, NULL, 10) : 0;
}

bool rt_id_valid(const char *id)
{
	size_t len = id ? strlen(id) : 0;

	if (len == 0 || len > RT_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
	}
	return true;
}

int rt_state_write(struct rt *rt, const struct rt_sandbox *s, struct herr *err)
{
	char path[4096], tmp[4200], text[1024];

	snprintf(path, sizeof(path), "%s/%s/state", rt->run_dir, s->id);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	snprintf(text, sizeof(text),
		 "slot=%u\nuid_base=%u\nnet_slot=%u\nhost_if=%s\nhost_ip=%u\nsbx_ip=%u\n"
		 "keeper_pid=%d\ninit_pid=%d\ninit_start=%llu\noom_base=%" PRIu64 "\n"
		 "pids_base=%" PRIu64 "\n",
		 s->slot, s->uid_base, s->net.slot, s->net.host_if, s->net.host_ip,
		 s->net.sbx_ip, s->keeper_pid, s->init_pid, s->init_start, s->oom_base,
		 s->pids_base);
	int r = rt_write_file(tmp, text, err);
	if (r < 0)
		return r;
	if (rename(tmp, path) < 0)
		return herr_sys(err, -errno, "rename %s", tmp);
	return 0;
}

/*
 * Slots index the runtime's tables, so one is taken only below max-sandboxes.
 * A slot no setting could hold (past the host id space above uid_base) is a
 * damaged file: -EINVAL. One that a larger max-sandboxes would hold is
 * -ERANGE, and s->slot and s->net.slot say which setting that is.
 */
static int check_slots(struct rt *rt, const char *path, unsigned long long slot,
		       unsigned long long net_slot, struct rt_sandbox *s, struct herr *err)
{
	/* the largest max-sandboxes rt_init accepts for this uid_base */
	unsigned long long possible = (UINT32_MAX - 1ull - rt->uid_base) / RT_IDS_PER_SANDBOX;

	if (slot >= possible || net_slot >= possible)
		return herr_set(err, -EINVAL, "%s: damaged: slot %llu or network slot %llu "
				"beyond any max-sandboxes (%llu)", path, slot, net_slot,
				possible);
	s->slot = (unsigned)slot;
	s->net.slot = (unsigned)net_slot;
	if (slot >= rt->max_sandboxes || net_slot >= rt->max_sandboxes)
		return herr_set(err, -ERANGE, "%s: slot out of range (slot %llu, network slot "
				"%llu, max-sandboxes %u)", path, slot, net_slot,
				rt->max_sandboxes);
	return 0;
}

int rt_state_read(struct rt *rt, const char *id, struct rt_sandbox *s, struct herr *err)
{
	char path[4096], line[256];
	unsigned long long slot = 0, net_slot = 0;

	snprintf(path, sizeof(path), "%s/%s/state", rt->run_dir, id);
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	if (!f)
		return herr_sys(err, -errno, "open %s", path);
	snprintf(s->id, sizeof(s->id), "%s", id);
	while (fgets(line, sizeof(line), f)) {
		char *eq = strchr(line, '=');
		if (!eq)
			continue;
		*eq++ = '\0';
		eq[strcspn(eq, "\n")] = '\0';
		unsigned long long v = strtoull(eq, NULL, 10);
		if (strcmp(line, "slot") == 0)
			slot = v;
		else if (strcmp(line, "uid_base") == 0)
			s->uid_base = (uint32_t)v;
		else if (strcmp(line, "net_slot") == 0)
			net_slot = v;
		else if (strcmp(line, "host_if") == 0)
			snprintf(s->net.host_if, sizeof(s->net.host_if), "%s", eq);
		else if (strcmp(line, "host_ip") == 0)
			s->net.host_ip = (uint32_t)v;
		else if (strcmp(line, "sbx_ip") == 0)
			s->net.sbx_ip = (uint32_t)v;
		else if (strcmp(line, "keeper_pid") == 0)
			s->keeper_pid = (pid_t)v;
		else if (strcmp(line, "init_pid") == 0)
			s->init_pid = (pid_t)v;
		else if (strcmp(line, "init_start") == 0)
			s->init_start = v;
		else if (strcmp(line, "oom_base") == 0)
			s->oom_base = v;
		else if (strcmp(line, "pids_base") == 0)
			s->pids_base = v;
	}
	return check_slots(rt, path, slot, net_slot, s, err);
}

int rt_state_exit_read(struct rt *rt, const char *id, int *wstatus)
{
	char path[4096], buf[32];

	snprintf(path, sizeof(path), "%s/%s/exit", rt->run_dir, id);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return -EIO;
	buf[n] = '\0';
	*wstatus = atoi(buf);
	return 0;
}

int rt_state_remove(struct rt *rt, const char *id)
{
	static const char *const files[] = { "state", "state.tmp", "exit", "exit.tmp",
					     RT_NEW_DISK };
	char path[4096];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s/%s", rt->run_dir, id, files[i]);
		unlink(path);
	}
	snprintf(path, sizeof(path), "%s/%s", rt->run_dir, id);
	if (rmdir(path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

void rt_mark(struct rt_marks *m, enum rt_mark which)
{
	struct timespec ts;

	if (!m || (unsigned)which >= RT_M_COUNT)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	m->ns[which] = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const char *rt_mark_name(enum rt_mark which)
{
	static const char *const names[RT_M_COUNT] = {
		"start", "dirs", "disk", "cgroup", "net", "nft", "state", "mount",
		"k_start", "k_clone", "k_maps", "k_attach", "k_mounts", "c_start",
		"c_recv", "c_rooted", "c_overlay", "c_special", "c_etc", "c_pivot",
		"c_privs", "c_exec", "k_execd", "report", "done",
	};
	return (unsigned)which < RT_M_COUNT ? names[which] : "unknown";
}

/* The mark a step is timed from: the init starts right after clone3 (while
 * the keeper goes on), and receives its mounts once the keeper sent them. */
enum rt_mark rt_mark_from(enum rt_mark which)
{
	switch (which) {
	case RT_M_C_START:
		return RT_M_K_CLONE;
	case RT_M_K_MAPS:
		return RT_M_K_CLONE;
	case RT_M_C_RECV:
		return RT_M_K_MOUNTS;
	default:
		return which > 0 ? which - 1 : RT_M_START;
	}
}
