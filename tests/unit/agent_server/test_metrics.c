/* GET /metrics figures from cgroup and /proc fixtures (metrics.c). */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "fixture.h"
#include "metrics.h"

#define MIB (1024ULL * 1024)

struct fx {
	char *root;
	char cg[PATH_MAX], proc[PATH_MAX];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	f->root = fixture_dir();
	snprintf(f->cg, sizeof(f->cg), "%s/cg", f->root);
	snprintf(f->proc, sizeof(f->proc), "%s/proc", f->root);
	mkdir(f->cg, 0755);
	mkdir(f->proc, 0755);
	fixture_write(f->proc, "meminfo",
		      "MemTotal:        4194304 kB\nMemFree:   100 kB\n"
		      "MemAvailable:    1048576 kB\nBuffers:   12288 kB\n"
		      "Cached:          512000 kB\nSwapCached: 0 kB\n");
	fixture_write(f->proc, "stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n");
	metrics_set_sources(f->cg, f->proc, f->root);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	fixture_remove(f->root);
	free(f);
	metrics_set_sources("/sys/fs/cgroup", "/proc", "/");
	return 0;
}

static void memory_from_meminfo_without_cgroup(void **state)
{
	struct agent_metrics m;
	struct herr err = { 0 };

	assert_int_equal(metrics_collect(&m, &err), 0);
	assert_int_equal(m.mem_total, 4096 * MIB);
	assert_int_equal(m.mem_used, 3072 * MIB);
	assert_int_equal(m.mem_cache, (512000ULL + 12288) * 1024);
}

static void memory_from_cgroup_when_present(void **state)
{
	struct fx *f = *state;
	struct agent_metrics m;
	struct herr err = { 0 };

	fixture_write(f->cg, "memory.current", "314572800\n");      /* 300 MiB */
	fixture_write(f->cg, "memory.max", "1073741824\n");         /* 1 GiB */
	fixture_write(f->cg, "memory.stat",
		      "anon 1\nfile 104857600\nfile_mapped 7\ninactive_file 52428800\n");
	assert_int_equal(metrics_collect(&m, &err), 0);
	assert_int_equal(m.mem_total, 1024 * MIB);
	assert_int_equal(m.mem_used, 250 * MIB);
	assert_int_equal(m.mem_cache, 100 * MIB);

	/* no limit: the host's total */
	fixture_write(f->cg, "memory.max", "max\n");
	assert_int_equal(metrics_collect(&m, &err), 0);
	assert_int_equal(m.mem_total, 4096 * MIB);
}

static void cpu_count_from_quota(void **state)
{
	struct fx *f = *state;
	struct agent_metrics m;
	struct herr err = { 0 };
	long online = sysconf(_SC_NPROCESSORS_ONLN);

	assert_int_equal(metrics_collect(&m, &err), 0);
	assert_int_equal(m.cpu_count, online);
	fixture_write(f->cg, "cpu.max", "50000 100000\n");
	assert_int_equal(metrics_collect(&m, &err), 0);
	assert_int_equal(m.cpu_count, 1);
	fixture_write(f->cg, "cpu.max", "max 100000\n");
	assert_int_equal(metrics_collect(&m, &err), 0);
	assert_int_equal(m.cpu_count, online);
}

/* /proc/stat deltas: 10 s more, 2 s of it busy -> 20 %. */
static void cpu_percent_from_proc_stat_delta(void **state)
{
	struct fx *f = *state;
	struct agent_metrics m;
	struct herr err = { 0 };
	long hz = sysconf(_SC_CLK_TCK);
	char line[128];

	assert_int_equal(metrics_collect(&m, &err), 0); /* first sample */
	assert_true(m.cpu_used_pct == 0.0);
	snprintf(line, sizeof(line), "cpu  %ld 0 %ld %ld 0 0 0 0\n", 100 + hz, 100 + hz,
		 800 + 8 * hz);
	fixture_write(f->proc, "stat", line);
	assert_int_equal(metrics_collect(&m, &err), 0);
	assert_float_equal(m.cpu_used_pct, 20.0, 0.001);
}

static void disk_from_statvfs(void **state)
{
	struct fx *f = *state;
	struct agent_metrics m;
	struct herr err = { 0 };
	struct statvfs v;

	assert_int_equal(metrics_collect(&m, &err), 0);
	assert_int_equal(statvfs(f->root, &v), 0);
	assert_int_equal(m.disk_total, (uint64_t)v.f_blocks * v.f_frsize);
	assert_true(m.disk_used <= m.disk_total);
	assert_true(m.disk_used > 0);
}

static void missing_meminfo_is_an_error(void **state)
{
	struct fx *f = *state;
	struct agent_metrics m;
	struct herr err = { 0 };
	char path[PATH_MAX + 16];

	snprintf(path, sizeof(path), "%s/meminfo", f->proc);
	unlink(path);
	assert_int_equal(metrics_collect(&m, &err), -EIO);
	assert_non_null(strstr(err.msg, "meminfo"));
}

static void json_has_every_field(void **unused)
{
	struct agent_metrics m = { .ts = 1700000000, .cpu_count = 2, .cpu_used_pct = 12.5,
				   .mem_total = 2048 * MIB, .mem_used = 512 * MIB,
				   .mem_cache = 7, .disk_total = 100, .disk_used = 40 };
	char *s = metrics_to_json(&m);
	json_t *o = json_loads(s, 0, NULL);

	assert_non_null(o);
	assert_int_equal(json_integer_value(json_object_get(o, "ts")), 1700000000);
	assert_int_equal(json_integer_value(json_object_get(o, "cpu_count")), 2);
	assert_float_equal(json_real_value(json_object_get(o, "cpu_used_pct")), 12.5, 1e-9);
	assert_int_equal(json_integer_value(json_object_get(o, "mem_total")), 2048 * MIB);
	assert_int_equal(json_integer_value(json_object_get(o, "mem_used")), 512 * MIB);
	assert_int_equal(json_integer_value(json_object_get(o, "mem_cache")), 7);
	assert_int_equal(json_integer_value(json_object_get(o, "mem_total_mib")), 2048);
	assert_int_equal(json_integer_value(json_object_get(o, "mem_used_mib")), 512);
	assert_int_equal(json_integer_value(json_object_get(o, "disk_total")), 100);
	assert_int_equal(json_integer_value(json_object_get(o, "disk_used")), 40);
	assert_int_equal(json_object_size(o), 10);
	json_decref(o);
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(memory_from_meminfo_without_cgroup, setup,
						teardown),
		cmocka_unit_test_setup_teardown(memory_from_cgroup_when_present, setup, teardown),
		cmocka_unit_test_setup_teardown(cpu_count_from_quota, setup, teardown),
		cmocka_unit_test_setup_teardown(cpu_percent_from_proc_stat_delta, setup,
						teardown),
		cmocka_unit_test_setup_teardown(disk_from_statvfs, setup, teardown),
		cmocka_unit_test_setup_teardown(missing_meminfo_is_an_error, setup, teardown),
		cmocka_unit_test(json_has_every_field),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
