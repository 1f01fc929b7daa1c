/*
 * snapshot bench: pause, resume and fork (with memory) times of real runtime
 * sandboxes holding 50 MB and 500 MB, and the RAM that 100 paused sandboxes
 * keep. Run by
 * bench/snapshot as root; prints rows of figures, passes nothing.
 *
 *   snap-bench TMPDIR SNAP_APP [ROUNDS] [N_PAUSED]
 *
 * The reference in each row is CRIU's own run on the same tree in the same
 * call (criu_ms: `criu dump` until it exits, `criu restore` until the tree
 * is detached); total_ms adds what Hutch does around it (locks, external
 * files, fsync of the images, the rebuilt root, the keeper). For RAM the
 * reference is the same sandboxes running, measured just before the pause.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rt.h"
#include "rt_checkpoint.h"

#define MAX_SBX 128

/* The CRIU to measure: $HUTCH_CRIU when set, as for hutchd's --criu. */
static struct rt_ckpt_opts ckpt;

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* The app answers on :7000 once its memory is filled and checksummed. */
static int app_ready(struct rt *rt, const char *id)
{
	struct herr err;
	char buf[512];

	for (int i = 0; i < 600; i++) {
		int fd = rt_dial(rt, id, 7000, &err);
		if (fd >= 0) {
			ssize_t n = write(fd, "state\n", 6) == 6 ?
				    read(fd, buf, sizeof(buf) - 1) : -1;
			close(fd);
			if (n > 0) {
				buf[n] = '\0';
				return strstr(buf, "mem=OK") ? 0 : -EPROTO;
			}
		}
		sleep_ms(100);
	}
	return -ETIMEDOUT;
}

static uint64_t mem_available_kb(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	uint64_t kb = 0;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %lu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

static int create_app(struct rt *rt, const char *id, const char *tmp, unsigned mb)
{
	char rootfs[4200], agent[4200], mbs[16];
	struct herr err;

	snprintf(rootfs, sizeof(rootfs), "%s/rootfs", tmp);
	snprintf(agent, sizeof(agent), "%s/agent", tmp);
	snprintf(mbs, sizeof(mbs), "%u", mb);
	const char *layers[] = { rootfs };
	const char *args[] = { RT_AGENT_MOUNT "/snap-app", mbs, "bench", "nopeer", NULL };
	struct rt_spec spec = {
		.id = id, .layers = layers, .n_layers = 1, .agent_dir = agent, .argv = args,
		.limits = { .memory_mb = mb * 2 + 128, .pids = 32, .disk_mb = 64 },
	};
	if (rt_create(rt, &spec, &err) < 0) {
		fprintf(stderr, "create %s: %s\n", id, err.msg);
		return -1;
	}
	return app_ready(rt, id);
}

static void bench_size(struct rt *rt, const char *tmp, unsigned mb, int rounds,
		       const struct rt_restore_spec *rspec)
{
	struct rt_ckpt_stats st;
	struct herr err;
	char id[32];

	snprintf(id, sizeof(id), "b%u", mb);
	if (create_app(rt, id, tmp, mb) < 0) {
		printf("%u MB: sandbox did not start\n", mb);
		return;
	}
	for (int i = 1; i <= rounds; i++) {
		if (rt_checkpoint(rt, id, &ckpt, &st, &err) < 0) {
			printf("%u MB: pause failed: %s\n", mb, err.msg);
			break;
		}
		printf("%4u MB pause  %d: hutch %5llu ms | criu dump    %5llu ms, fsync %4llu ms,"
		       " image %llu MB\n", mb, i, (unsigned long long)st.total_ms,
		       (unsigned long long)st.criu_ms, (unsigned long long)st.sync_ms,
		       (unsigned long long)(st.image_bytes >> 20));
		/* Cold images, as after a long pause. */
		sync();
		FILE *dc = fopen("/proc/sys/vm/drop_caches", "we");
		if (dc) {
			fputs("1\n", dc);
			fclose(dc);
		}
		if (rt_restore(rt, id, rspec, &ckpt, &st, &err) < 0) {
			printf("%u MB: resume failed: %s\n", mb, err.msg);
			break;
		}
		printf("%4u MB resume %d: hutch %5llu ms | criu restore %5llu ms (cold cache)\n",
		       mb, i, (unsigned long long)st.total_ms, (unsigned long long)st.criu_ms);
		if (app_ready(rt, id) < 0)
			printf("%u MB: app not intact after resume\n", mb);
	}
	rt_destroy(rt, id, NULL);
}

/* Copies the paused source's disk for a fork, as lc_fork_from does, once no
 * loop device holds it (the source's mount namespace goes asynchronously). */
static int copy_disk(const char *tmp, const char *from, const char *to)
{
	char cmd[3 * 4200];

	snprintf(cmd, sizeof(cmd), "for i in $(seq 50); do losetup -j '%s/data/sandboxes/%s/"
		 "disk.img' | grep -q . || break; sleep 0.02; done; mkdir -p '%s/data/sandboxes/"
		 "%s' && cp --sparse=always '%s/data/sandboxes/%s/disk.img' "
		 "'%s/data/sandboxes/%s/disk.img'", tmp, from, tmp, to, tmp, from, tmp, to);
	return system(cmd) == 0 ? 0 : -EIO;
}

/*
 * A fork with memory, as hutchd makes it: its own sandbox created on a copy
 * of the disk (its first process ended at once), then the source's images
 * restored into it with the id map, hostname and cgroups moved. Reference:
 * CRIU's own restore of the same images in the same call.
 */
static void bench_fork(struct rt *rt, const char *tmp, unsigned mb, int rounds,
		       const struct rt_restore_spec *rspec)
{
	char id[32], fork[32], images[4200], rootfs[4200], agent[4200];
	struct rt_ckpt_stats st;
	struct herr err;

	snprintf(id, sizeof(id), "f%u", mb);
	snprintf(images, sizeof(images), "%s/images-%s", tmp, id);
	snprintf(rootfs, sizeof(rootfs), "%s/rootfs", tmp);
	snprintf(agent, sizeof(agent), "%s/agent", tmp);
	if (create_app(rt, id, tmp, mb) < 0 || rt_checkpoint(rt, id, &ckpt, &st, &err) < 0 ||
	    rt_checkpoint_copy(rt, id, images, &st.image_bytes, &err) < 0) {
		printf("%u MB fork: no source images: %s\n", mb, err.msg);
		rt_destroy(rt, id, NULL);
		return;
	}
	struct rt_fork_source src = { .images = images, .hostname = id };
	struct rt_restore_spec fspec = *rspec;
	fspec.fork = &src;
	const char *layers[] = { rootfs };
	const char *args[] = { RT_AGENT_MOUNT "/snap-app", "1", "bench", "nopeer", NULL };
	for (int i = 1; i <= rounds; i++) {
		snprintf(fork, sizeof(fork), "f%uk%d", mb, i);
		struct rt_spec spec = {
			.id = fork, .layers = layers, .n_layers = 1, .agent_dir = agent,
			.argv = args, .reuse_upper = true,
			.limits = { .memory_mb = mb * 2 + 128, .pids = 32, .disk_mb = 64 },
		};
		if (copy_disk(tmp, id, fork) < 0) {
			printf("%u MB fork: disk copy failed\n", mb);
			break;
		}
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		int r = rt_create(rt, &spec, &err);
		if (r == 0)
			r = rt_restore(rt, fork, &fspec, &ckpt, &st, &err);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
		if (r < 0)
			printf("%u MB fork %d failed: %s\n", mb, i, err.msg);
		else
			printf("%4u MB fork   %d: hutch %5ld ms | criu restore %5llu ms "
			       "(create and restore; warm cache)\n", mb, i, ms,
			       (unsigned long long)st.criu_ms);
		if (r == 0 && app_ready(rt, fork) < 0)
			printf("%u MB: app not intact in the fork\n", mb);
		rt_checkpoint_remove(rt, fork, NULL);
		rt_destroy(rt, fork, NULL);
	}
	rt_checkpoint_remove(rt, id, NULL);
	rt_destroy(rt, id, NULL);
	char rm[4300];
	snprintf(rm, sizeof(rm), "rm -rf '%s'", images);
	if (system(rm) != 0)
		printf("removing %s failed\n", images);
}

static void bench_paused_ram(struct rt *rt, const char *tmp, int n)
{
	char ids[MAX_SBX][16];
	struct rt_info info;
	struct herr err;
	int made = 0;
	uint64_t base = mem_available_kb(), cg_running = 0, cg_paused = 0;

	for (; made < n; made++) {
		snprintf(ids[made], sizeof(ids[made]), "p%d", made);
		if (create_app(rt, ids[made], tmp, 8) < 0)
			break;
	}
	uint64_t running = mem_available_kb();
	for (int i = 0; i < made; i++)
		if (rt_query(rt, ids[i], &info, &err) == 0)
			cg_running += info.memory_bytes;
	int paused = 0;
	for (int i = 0; i < made; i++)
		paused += rt_checkpoint(rt, ids[i], &ckpt, NULL, &err) == 0;
	uint64_t after = mem_available_kb();
	for (int i = 0; i < made; i++)
		if (rt_query(rt, ids[i], &info, &err) == 0)
			cg_paused += info.memory_bytes;
	printf("%d sandboxes of 8 MB running: host MemAvailable -%llu MB, their cgroups %llu MB\n",
	       made, (unsigned long long)((base - running) >> 10),
	       (unsigned long long)(cg_running >> 20));
	printf("%d of them paused:            host MemAvailable -%llu MB, their cgroups %llu MB\n",
	       paused, (unsigned long long)(base > after ? (base - after) >> 10 : 0),
	       (unsigned long long)(cg_paused >> 20));
	for (int i = 0; i < made; i++) {
		rt_checkpoint_remove(rt, ids[i], NULL);
		rt_destroy(rt, ids[i], NULL);
	}
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: snap-bench TMPDIR SNAP_APP [ROUNDS] [N_PAUSED]\n");
		return 2;
	}
	const char *tmp = argv[1];
	int rounds = argc > 3 ? atoi(argv[3]) : 3;
	int n_paused = argc > 4 ? atoi(argv[4]) : 100;
	char data[4096], run[4096], rootfs[4096], agent[4096];
	static char cmd[12 * 4200];
	struct rt_config cfg = {
		.data_dir = data, .run_dir = run, .cgroup_name = "hutch-snb",
		.veth_prefix = "hsb", .net_cidr = "10.233.0.0/16", .pool_size = 0,
		.max_sandboxes = MAX_SBX, .uid_base = 0x3A000000u, .egress_conn_max = 64,
		.nameservers = "198.51.100.53",
	};
	struct herr err;
	struct rt *rt;

	ckpt.criu = getenv("HUTCH_CRIU");
	if (n_paused > MAX_SBX - 2)
		n_paused = MAX_SBX - 2;
	snprintf(data, sizeof(data), "%s/data", tmp);
	snprintf(run, sizeof(run), "%s/run", tmp);
	snprintf(rootfs, sizeof(rootfs), "%s/rootfs", tmp);
	snprintf(agent, sizeof(agent), "%s/agent", tmp);
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s'/etc '%s'/proc '%s'/sys '%s'/dev '%s'/tmp "
		 "'%s'/data '%s' '%s' '%s' && cp '%s' '%s/snap-app'", rootfs, rootfs, rootfs,
		 rootfs, rootfs, rootfs, agent, data, run, argv[2], agent);
	if (system(cmd) != 0 || rt_init(&cfg, &rt, &err) < 0) {
		fprintf(stderr, "runtime: %s\n", err.msg);
		return 1;
	}
	const char *layers[] = { rootfs };
	struct rt_restore_spec rspec = { .layers = layers, .n_layers = 1, .agent_dir = agent };
	bench_size(rt, tmp, 50, rounds, &rspec);
	bench_size(rt, tmp, 500, rounds, &rspec);
	bench_fork(rt, tmp, 50, rounds, &rspec);
	bench_fork(rt, tmp, 500, rounds, &rspec);
	if (n_paused > 0)
		bench_paused_ram(rt, tmp, n_paused);
	rt_shutdown(rt);
	return 0;
}
