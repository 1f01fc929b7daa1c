/*
 * What the runtime test driver and the benchmark share: the runtime
 * configuration they use (its own cgroup name, nft table, veth prefix,
 * address range and id range, so that it never meets a real hutchd's) and
 * a picture of everything a sandbox can leave on the host.
 */
#ifndef HUTCH_RT_TEST_ENV_H
#define HUTCH_RT_TEST_ENV_H

#include <stddef.h>

#include "rt.h"

#define RT_TEST_CGROUP "hutch-rtt"
#define RT_TEST_PREFIX "hrt"

/* Makes <tmp>/rootfs (static busybox and the usual folders) and
 * <tmp>/agent (a copy of the probe, seen as RT_AGENT_MOUNT/rt-probe). */
int rt_test_tree(const char *tmp, const char *probe);

/* Fills cfg for a test runtime under data_dir and run_dir (strings are kept,
 * not copied). RT_POOL and RT_MAX override the pool size and the maximum. */
void rt_test_config(struct rt_config *cfg, const char *data_dir, const char *run_dir);

/*
 * Writes a sorted text picture of the host state a sandbox could leak:
 * processes in the sandbox id ranges and children of this process, our
 * open descriptors (network namespaces among them), mounts of our paths,
 * our cgroups, veths and nft chains and map elements, loop devices backed
 * by files under tmp_dir, and files under tmp_dir/data and tmp_dir/run.
 * Returns 0 or -1.
 */
int rt_snapshot(const char *tmp_dir, char *out, size_t len);

/* Lines of a that b lacks ("-") and lines of b that a lacks ("+"). */
void rt_snapshot_diff(const char *a, const char *b, char *out, size_t len);

#endif
