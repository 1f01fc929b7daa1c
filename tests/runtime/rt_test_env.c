/*
 * Shared by rt-test and the runtime benchmark: the test runtime's
 * configuration and the host picture used by the leak checks.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rt_test_env.h"

static int copy_file(const char *from, const char *to, mode_t mode)
{
	char buf[65536];
	int in = open(from, O_RDONLY | O_CLOEXEC);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	ssize_t n;
	int r = 0;

	if (in < 0 || out < 0)
		r = -errno;
	while (r == 0 && (n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n)
			r = -EIO;
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	if (r < 0)
		fprintf(stderr, "copying %s to %s: %s\n", from, to, strerror(-r));
	return r;
}

int rt_test_tree(const char *tmp, const char *probe)
{
	static const char *const sub[] = { "bin", "tmp", "etc", "proc", "dev", "sys" };
	char path[4096];

	snprintf(path, sizeof(path), "%s/rootfs", tmp);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/agent", tmp);
	mkdir(path, 0755);
	for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
		snprintf(path, sizeof(path), "%s/rootfs/%s", tmp, sub[i]);
		mkdir(path, 0755);
	}
	/* a sticky, world-writable /tmp as every distribution has */
	snprintf(path, sizeof(path), "%s/rootfs/tmp", tmp);
	if (chmod(path, 01777) < 0)
		return -errno;
	snprintf(path, sizeof(path), "%s/rootfs/bin/busybox", tmp);
	if (copy_file("/bin/busybox", path, 0755) < 0)
		return -1;
	snprintf(path, sizeof(path), "%s/agent/rt-probe", tmp);
	return copy_file(probe, path, 0755);
}

void rt_test_config(struct rt_config *cfg, const char *data_dir, const char *run_dir)
{
	const char *pool = getenv("RT_POOL"), *max = getenv("RT_MAX");

	memset(cfg, 0, sizeof(*cfg));
	cfg->data_dir = data_dir;
	cfg->run_dir = run_dir;
	cfg->cgroup_name = RT_TEST_CGROUP;
	cfg->veth_prefix = RT_TEST_PREFIX;
	cfg->net_cidr = "10.231.0.0/16";
	cfg->pool_size = pool ? (unsigned)atoi(pool) : 4;
	cfg->max_sandboxes = max ? (unsigned)atoi(max) : 64;
	cfg->uid_base = 0x30000000u; /* away from hutchd's default ranges */
	cfg->egress_conn_max = 64;
	cfg->nameservers = "198.51.100.53";
}

/* The picture, as shell: every line is "<kind> <what>", followed by "(xN)"
 * when it occurs N > 1 times (a rule or mount left twice is a leak too).
 * Counts are used where names legitimately change (pool veths get a new
 * generation number). The whole nft table is listed, rules, maps and set
 * elements, with packet counters cut out. Only what belongs to this test
 * runtime is listed (other engineers' sandboxes come and go on the same
 * host): namespaces are counted through our own descriptors (the runtime
 * holds every netns it made by fd) and through the processes of our id
 * ranges; mounts and loop devices through our paths. */
static const char snapshot_script[] =
	"set -u\n"
	"lo=$((0x30000000)); hi=$((0x30000000 + 65536 * 1100))\n"
	"for s in /proc/[0-9]*/status; do\n"
	"  awk -v lo=$lo -v hi=$hi -v me=$RTS_PID '"
	"/^PPid:/ {pp=$2} /^Uid:/ {u=$2} /^Name:/ {n=$2} "
	"END {if ((u >= lo && u < hi) || pp == me) print \"process \" n}' $s 2>/dev/null\n"
	"done\n"
	"echo \"fds $(ls /proc/$RTS_PID/fd | wc -l)\"\n"
	"ls -l /proc/$RTS_PID/fd 2>/dev/null | grep -c 'net:\\[' | sed 's/^/netns-fds /'\n"
	"sed 's/^[0-9]* [0-9]* [0-9:]* //' /proc/self/mountinfo | grep -F \"$RTS_TMP\" | "
	"sed 's/^/mount /'\n"
	"find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -path \"*/$RTS_CG/*\" -type d "
	"2>/dev/null | sed 's/^/cgroup /'\n"
	"ls /sys/class/net | grep -c \"^$RTS_PREFIX\" | sed 's/^/veths /'\n"
	"nft list table inet $RTS_CG 2>/dev/null | "
	"sed -e 's/^[[:space:]]*//' -e 's/counter packets [0-9]* bytes [0-9]*//' | "
	"grep -v '^$' | sed 's/^/nft /'\n"
	"cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -F \"$RTS_TMP\" | "
	"sed 's/^/loop /'\n"
	"find \"$RTS_TMP/data\" \"$RTS_TMP/run\" 2>/dev/null | sed 's/^/file /'\n";

int rt_snapshot(const char *tmp_dir, char *out, size_t len)
{
	char pid[32], cmd[sizeof(snapshot_script) + 160];
	size_t got = 0;

	snprintf(pid, sizeof(pid), "%d", getpid());
	setenv("RTS_PID", pid, 1);
	setenv("RTS_TMP", tmp_dir, 1);
	setenv("RTS_CG", RT_TEST_CGROUP, 1);
	setenv("RTS_PREFIX", RT_TEST_PREFIX, 1);
	snprintf(cmd, sizeof(cmd), "(%s) | awk '{ n[$0]++ } END { for (l in n) "
		 "print (n[l] > 1 ? l \" (x\" n[l] \")\" : l) }' | sort", snapshot_script);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -1;
	size_t n;
	while (got + 1 < len && (n = fread(out + got, 1, len - 1 - got, p)) > 0)
		got += n;
	out[got] = '\0';
	/* A picture cut short would hide whatever sorts after the cut. */
	bool truncated = got + 1 == len && fgetc(p) != EOF;
	if (pclose(p) != 0 || truncated) {
		if (truncated)
			fprintf(stderr, "host picture larger than its %zu-byte buffer\n", len);
		return -1;
	}
	return 0;
}

static bool has_line(const char *text, const char *line, size_t n)
{
	for (const char *p = text; *p;) {
		size_t m = strcspn(p, "\n");
		if (m == n && strncmp(p, line, n) == 0)
			return true;
		p += m + (p[m] == '\n');
	}
	return false;
}

static size_t diff_one(const char *a, const char *b, char sign, char *out, size_t len,
		       size_t off)
{
	for (const char *p = a; *p && off + 1 < len;) {
		size_t m = strcspn(p, "\n");
		if (!has_line(b, p, m))
			off += (size_t)snprintf(out + off, len - off, "  %c %.*s\n", sign,
						(int)m, p);
		p += m + (p[m] == '\n');
	}
	return off < len ? off : len - 1;
}

void rt_snapshot_diff(const char *a, const char *b, char *out, size_t len)
{
	out[0] = '\0';
	size_t off = diff_one(a, b, '-', out, len, 0);
	diff_one(b, a, '+', out, len, off);
}
