/*
 * rt-run: runs one command in a fresh sandbox through the runtime API and
 * reports how it ended; the driver of the root-only runtime tests.
 *
 *   rt-run ROOTFS AGENT_DIR ID [--mem MB] [--pids N] [--disk MB]
 *          [--deny-internet] [--allow CIDR] -- /path/cmd args...
 *
 * Prints "reason=<r> status=<n> signal=<n> oom_kills=<n>" and exits 0 when
 * the sandbox ran; the command's own output goes to our stdout via a file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "rt.h"

int main(int argc, char **argv)
{
	struct rt_config cfg = {
		.data_dir = getenv("RT_DATA") ? getenv("RT_DATA") : "/var/lib/hutch-test",
		.run_dir = getenv("RT_RUN") ? getenv("RT_RUN") : "/run/hutch-test",
		.cgroup_name = "hutch-test", .net_cidr = "10.213.0.0/16",
		.pool_size = 0, .max_sandboxes = 64, .nameservers = "192.0.2.53",
	};
	struct rt_spec spec = { 0 };
	struct rt_cidr allow[8];
	struct herr err;
	struct rt *rt;
	int i = 4;

	if (argc < 6) {
		fprintf(stderr, "usage: rt-run ROOTFS AGENT_DIR ID [opts] -- cmd...\n");
		return 2;
	}
	const char *layers[] = { argv[1] };
	spec.layers = layers;
	spec.n_layers = 1;
	spec.agent_dir = argv[2];
	spec.id = argv[3];
	spec.net.allow_internet = true;
	spec.net.allow_out = allow;
	for (; i < argc && strcmp(argv[i], "--"); i++) {
		if (!strcmp(argv[i], "--mem"))
			spec.limits.memory_mb = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--pids"))
			spec.limits.pids = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--disk"))
			spec.limits.disk_mb = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--cpu"))
			spec.limits.cpu_count = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--deny-internet"))
			spec.net.allow_internet = false;
		else if (!strcmp(argv[i], "--allow") && spec.net.n_allow_out < 8) {
			if (rt_cidr_parse(argv[++i], &allow[spec.net.n_allow_out++], &err) < 0) {
				fprintf(stderr, "%s\n", err.msg);
				return 2;
			}
		}
	}
	if (i >= argc - 1)
		return 2;
	spec.argv = (const char *const *)&argv[i + 1];

	if (rt_init(&cfg, &rt, &err) < 0) {
		fprintf(stderr, "rt_init: %s\n", err.msg);
		return 1;
	}
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (rt_create(rt, &spec, &err) < 0) {
		fprintf(stderr, "rt_create: %s\n", err.msg);
		rt_shutdown(rt);
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	fprintf(stderr, "created in %.2f ms\n",
		(t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);

	struct rt_info info;
	for (int n = 0; n < 6000; n++) {
		if (rt_query(rt, spec.id, &info, &err) < 0)
			break;
		if (info.state == RT_STATE_STOPPED)
			break;
		usleep(10000);
	}
	if (info.state != RT_STATE_STOPPED)
		rt_stop(rt, spec.id, 0, &err), rt_query(rt, spec.id, &info, &err);
	printf("reason=%s status=%d signal=%d oom_kills=%llu\n",
	       rt_exit_reason_name(info.reason), info.exit_status, info.exit_signal,
	       (unsigned long long)info.oom_kills);
	fflush(stdout);
	char log[4096];
	snprintf(log, sizeof(log), "cat %s/sandboxes/%s/init.log", cfg.data_dir, spec.id);
	if (system(log) != 0)
		fprintf(stderr, "no init log\n");
	if (rt_destroy(rt, spec.id, &err) < 0)
		fprintf(stderr, "rt_destroy: %s\n", err.msg);
	rt_shutdown(rt);
	return 0;
}
