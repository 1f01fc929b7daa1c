/*
 * rt-probe commands that report what a process sees of its sandbox, and
 * that load it (tests/runtime/rt_test_facts.c judges the answers). Each
 * writes its lines to fd.
 */
#ifndef HUTCH_RT_PROBE_FACTS_H
#define HUTCH_RT_PROBE_FACTS_H

/*
 * "key value" lines: uid_map, gid_map, CapInh..CapAmb, NoNewPrivs, Seccomp,
 * "ns <kind> <inode>", hostname, "dev <name> <kind> [target]", pts and shm
 * ("type=<magic> dev=<maj:min>"), ptmx_index, shm_write, resolv.conf, hosts
 * and etc_hostname (text with \n escaped), "fd <n> <kind> <link>". args may
 * hold a System V key the host holds: then "sysv other=<r> own=<r>".
 */
void probe_facts(int fd, const char *args);

/* threads busy loops for ms; "spun threads=N cpu_ms=M". */
void probe_spin(int fd, int threads, int ms);

/* Forks children that wait, until a fork fails: "forked N then EAGAIN".
 * Returns the status the init should exit with: 75 when the pids limit
 * refused the fork (it gives up because of the limit), else 0. */
int probe_forkfail(int fd);

#endif
