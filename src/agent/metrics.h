/*
 * Resource usage of the sandbox for GET /metrics: CPU from the sandbox's
 * cgroup (cpu.stat) or /proc/stat, memory from its cgroup or /proc/meminfo,
 * disk from statvfs("/").
 */
#ifndef HUTCH_AGENT_METRICS_H
#define HUTCH_AGENT_METRICS_H

#include <stdint.h>

#include "err.h"

struct agent_metrics {
	int64_t ts;            /* unix seconds */
	int cpu_count;
	double cpu_used_pct;   /* 0..100 across all CPUs */
	uint64_t mem_total, mem_used, mem_cache;
	uint64_t disk_total, disk_used;
};

/*
 * Sets the folders read (tests point them at fixtures): the cgroup2 folder
 * of the sandbox (default /sys/fs/cgroup), /proc, and the disk measured.
 */
void metrics_set_sources(const char *cgroup_dir, const char *proc_dir, const char *disk_path);

int metrics_collect(struct agent_metrics *m, struct herr *err);

/* The JSON object of protocol.md 5.3; free() it. NULL when out of memory. */
char *metrics_to_json(const struct agent_metrics *m);

#endif
