/*
 * runtime-create: what a sandbox costs, measured through the runtime API.
 *
 *   runtime-create PROBE [CREATES [IDLE]]      (root; RT_TMP names a scratch dir)
 *
 * 1. create-to-ready latency on the pooled path: rt_create until the probe
 *    inside accepts on 127.0.0.1:7000 (rt_wait_port), CREATES times, with a
 *    pause between creates so the network pool is refilled (the pooled path is
 *    what production sees below its create rate); destroy time alongside;
 * 2. the same number of `bwrap --unshare-all` runs of `true`, for scale;
 * 3. IDLE sandboxes kept running at once: MemAvailable per sandbox, then the
 *    time to destroy them all.
 * With RT_AGENT_BUNDLE (a folder made by scripts/agent-bundle) and
 * RT_AGENT_ROOTFS (a template root such as a base image's rootfs), the init
 * is the real agent and "ready" means it accepts on 127.0.0.1:49983.
 * Figures are printed side by side; nothing here is a pass/fail test.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "rt.h"
#include "rt_internal.h"
#include "rt_test_env.h"

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double pct(double *v, int n, double p)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	int i = (int)(p * (n - 1) + 0.5);
	return n ? v[i] : 0;
}

/* A /proc/meminfo field in KiB, -1 when absent. */
static long meminfo_kb(const char *field)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	size_t len = strlen(field);
	long kb = -1;

	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, field, len) == 0 && line[len] == ':') {
			kb = strtol(line + len + 1, NULL, 10);
			break;
		}
	if (f)
		fclose(f);
	return kb;
}

static long mem_available_kb(void)
{
	return meminfo_kb("MemAvailable");
}

/* Kernel memory the host spends outside any cgroup's user pages: network
 * namespaces and veths, mounts, loop devices and their journals, task
 * structures and stacks of keepers and inits, page tables. */
static const char *const kernel_fields[] = {
	"Slab", "KernelStack", "PageTables", "Percpu", "VmallocUsed",
};
#define N_KERNEL_FIELDS (sizeof(kernel_fields) / sizeof(kernel_fields[0]))

static void kernel_mem(long out[N_KERNEL_FIELDS])
{
	for (size_t i = 0; i < N_KERNEL_FIELDS; i++)
		out[i] = meminfo_kb(kernel_fields[i]);
}

static void print_kernel_growth(const long before[N_KERNEL_FIELDS],
				const long after[N_KERNEL_FIELDS], int made)
{
	printf("kernel memory per sandbox ");
	for (size_t i = 0; i < N_KERNEL_FIELDS && made; i++)
		printf(" %s %.0f", kernel_fields[i], (double)(after[i] - before[i]) / made);
	printf(" KiB\n");
}

struct bench {
	struct rt *rt;
	char rootfs[4200], agent[4200];
	const char *agent_rootfs; /* the real agent's template root, or NULL */
	const char *bundle;
};

static int create_one(struct bench *b, const char *id, struct herr *err)
{
	static const char *const probe_argv[] = { RT_AGENT_MOUNT "/rt-probe", "serve", "7000",
						  NULL };
	/* As hutchd starts the bundled agent (src/hutchd/lifecycle/rt_glue.c). */
	static const char *const agent_argv[] = {
		RT_AGENT_MOUNT "/ld.so", "--library-path", RT_AGENT_MOUNT "/lib",
		RT_AGENT_MOUNT "/hutch-agent", "--listen=127.0.0.1", "--port=49983",
		"--default-user=root", "--default-workdir=/", NULL };
	static const char *const agent_env[] = {
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL };
	bool real = b->bundle != NULL;
	const char *layers[] = { real ? b->agent_rootfs : b->rootfs };
	struct rt_spec spec = {
		.id = id, .layers = layers, .n_layers = 1,
		.agent_dir = real ? b->bundle : b->agent,
		.argv = real ? agent_argv : probe_argv, .env = real ? agent_env : NULL,
		.limits = { .memory_mb = real ? 512 : 64, .pids = real ? 4096 : 64,
			    .disk_mb = 16 },
		.net = { .allow_internet = true },
	};
	int r = rt_create(b->rt, &spec, err);

	return r < 0 ? r : rt_wait_port(b->rt, id, real ? 49983 : 7000, 10000, err);
}

/* Per create: ms spent in each step (the time from the previous mark present
 * to this one); the last column is from rt_create's return to readiness. */
#define N_STEPS (RT_M_COUNT + 1)
static double (*steps)[N_STEPS];

static void record_steps(struct bench *b, int i, double ready_ms)
{
	struct rt_marks m;

	rt_last_marks(b->rt, &m);
	for (int k = 1; k < RT_M_COUNT; k++) {
		uint64_t from = m.ns[rt_mark_from((enum rt_mark)k)];
		steps[i][k] = m.ns[k] && from && m.ns[k] >= from ?
			(double)(m.ns[k] - from) / 1e6 : -1;
	}
	steps[i][RT_M_COUNT] = ready_ms - (double)(m.ns[RT_M_DONE] - m.ns[RT_M_START]) / 1e6;
}

static void print_steps(int n)
{
	double *col = calloc((size_t)n, sizeof(double));

	printf("step medians (ms, from the step before; c_start from k_clone,\n"
	       "c_recv from k_mounts)\n");
	for (int k = 1; col && k < N_STEPS; k++) {
		int got = 0;
		for (int i = 0; i < n; i++)
			if (steps[i][k] >= 0)
				col[got++] = steps[i][k];
		if (!got)
			continue;
		printf("  %-12s %8.3f  p90 %8.3f  p99 %8.3f\n",
		       k < RT_M_COUNT ? rt_mark_name((enum rt_mark)k) : "agent_ready",
		       pct(col, got, .5), pct(col, got, .9), pct(col, got, .99));
	}
	free(col);
}

static void latency(struct bench *b, int n, double *ready, double *created, double *gone)
{
	struct herr err;

	for (int i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof(id), "lat-%d", i);
		usleep(40 * 1000); /* lets the pool thread put a namespace back */
		double t0 = now_ms();
		if (create_one(b, id, &err) < 0) {
			fprintf(stderr, "create %s: %s\n", id, err.msg);
			exit(1);
		}
		ready[i] = now_ms() - t0;
		created[i] = ready[i];
		record_steps(b, i, ready[i]);
		double t1 = now_ms();
		if (rt_destroy(b->rt, id, &err) < 0)
			fprintf(stderr, "destroy %s: %s\n", id, err.msg);
		gone[i] = now_ms() - t1;
	}
}

static void bwrap_runs(const char *rootfs, int n, double *ms)
{
	for (int i = 0; i < n; i++) {
		double t0 = now_ms();
		pid_t p = fork();
		if (p == 0) {
			execlp("bwrap", "bwrap", "--unshare-all", "--ro-bind", rootfs, "/",
			       "/bin/busybox", "true", (char *)NULL);
			_exit(127);
		}
		int st;
		waitpid(p, &st, 0);
		ms[i] = now_ms() - t0;
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			fprintf(stderr, "bwrap failed (status %d)\n", st);
			ms[i] = -1;
		}
	}
}

/* What the sandboxes' own cgroups are charged (memory.current, or v1's
 * usage_in_bytes): pages their processes touched, page cache of their disks
 * and kernel memory such as their sockets. MemAvailable above also sees what
 * the host spends on them outside those cgroups (namespaces, veths, mounts),
 * but moves with everything else the machine does; this one does not. */
static void print_cgroup_charge(struct bench *b, int made)
{
	uint64_t sum = 0, max = 0;
	int counted = 0;
	struct herr err;

	for (int i = 0; i < made; i++) {
		struct rt_info info;
		char id[32];

		snprintf(id, sizeof(id), "idle-%d", i);
		if (rt_query(b->rt, id, &info, &err) < 0)
			continue;
		sum += info.memory_bytes;
		if (info.memory_bytes > max)
			max = info.memory_bytes;
		counted++;
	}
	if (counted)
		printf("cgroup charge per sandbox  %.0f KiB mean, %.0f KiB max (%d sandboxes)\n",
		       (double)sum / counted / 1024, (double)max / 1024, counted);
}

static void idle(struct bench *b, int n)
{
	struct herr err;
	long before = mem_available_kb();
	long kernel_before[N_KERNEL_FIELDS], kernel_after[N_KERNEL_FIELDS];
	kernel_mem(kernel_before);
	double t0 = now_ms();
	int made = 0;

	for (; made < n; made++) {
		char id[32];
		snprintf(id, sizeof(id), "idle-%d", made);
		if (create_one(b, id, &err) < 0) {
			fprintf(stderr, "idle %s: %s\n", id, err.msg);
			break;
		}
	}
	double spent = now_ms() - t0;
	sleep(2);
	long after = mem_available_kb();
	kernel_mem(kernel_after);
	printf("idle sandboxes             %d created in %.1f s (%.0f/s)\n", made, spent / 1e3,
	       made / (spent / 1e3));
	printf("memory per idle sandbox    %.0f KiB (MemAvailable %ld -> %ld kB; budget 2048)\n",
	       made ? (double)(before - after) / made : 0, before, after);
	print_cgroup_charge(b, made);
	print_kernel_growth(kernel_before, kernel_after, made);
	t0 = now_ms();
	for (int i = 0; i < made; i++) {
		char id[32];
		snprintf(id, sizeof(id), "idle-%d", i);
		rt_destroy(b->rt, id, &err);
	}
	spent = now_ms() - t0;
	printf("destroy all idle           %.2f s (%.2f ms each)\n", spent / 1e3,
	       made ? spent / made : 0);
}

int main(int argc, char **argv)
{
	const char *tmp = getenv("RT_TMP");
	int n = argc > 2 ? atoi(argv[2]) : 200, n_idle = argc > 3 ? atoi(argv[3]) : 1000;
	struct bench b = { 0 };
	struct rt_config cfg;
	struct herr err;
	char data[4200], run[4200];

	if (argc < 2 || !tmp || n < 1) {
		fprintf(stderr, "usage: RT_TMP=dir runtime-create PROBE [CREATES [IDLE]]\n");
		return 2;
	}
	log_configure(getenv("HUTCH_LOG_LEVEL") ? getenv("HUTCH_LOG_LEVEL") : "warn", NULL);
	if (rt_test_tree(tmp, argv[1]) < 0)
		return 1;
	snprintf(b.rootfs, sizeof(b.rootfs), "%s/rootfs", tmp);
	b.bundle = getenv("RT_AGENT_BUNDLE");
	b.agent_rootfs = getenv("RT_AGENT_ROOTFS");
	if (b.bundle && !b.agent_rootfs) {
		fprintf(stderr, "RT_AGENT_BUNDLE needs RT_AGENT_ROOTFS (a template root)\n");
		return 2;
	}
	printf("init: %s\n", b.bundle ? "the real agent (bundle), ready = port 49983" :
	       "rt-probe, ready = port 7000");
	snprintf(b.agent, sizeof(b.agent), "%s/agent", tmp);
	snprintf(data, sizeof(data), "%s/data", tmp);
	snprintf(run, sizeof(run), "%s/run", tmp);
	rt_test_config(&cfg, data, run);
	cfg.max_sandboxes = (unsigned)n_idle + 16;
	if (!getenv("RT_POOL"))
		cfg.pool_size = 8;
	if (rt_init(&cfg, &b.rt, &err) < 0) {
		fprintf(stderr, "rt_init: %s\n", err.msg);
		return 1;
	}
	sleep(1); /* the pool fills */

	double *ready = calloc((size_t)n, sizeof(double));
	double *created = calloc((size_t)n, sizeof(double));
	double *gone = calloc((size_t)n, sizeof(double));
	double *bw = calloc((size_t)n, sizeof(double));
	steps = calloc((size_t)n, sizeof(*steps));
	if (!ready || !created || !gone || !bw || !steps)
		return 1;
	latency(&b, n, ready, created, gone);
	bwrap_runs(b.rootfs, n, bw);

	char head[32];
	snprintf(head, sizeof(head), "(ms, n=%d)", n);
	printf("%-26s %10s %10s\n", head, "p50", "p99");
	printf("%-26s %10.2f %10.2f\n", "hutch create-to-ready", pct(ready, n, .5),
	       pct(ready, n, .99));
	printf("%-26s %10.2f %10.2f\n", "bwrap --unshare-all true", pct(bw, n, .5),
	       pct(bw, n, .99));
	printf("%-26s %10.2f %10.2f\n", "hutch destroy", pct(gone, n, .5), pct(gone, n, .99));
	print_steps(n);
	fflush(stdout);
	if (n_idle > 0)
		idle(&b, n_idle);
	rt_shutdown(b.rt);
	free(ready);
	free(created);
	free(gone);
	free(bw);
	return 0;
}
