/*
 * The sandbox seccomp filter and capability set, modelled on Docker's default
 * profile: everything is allowed except calls that reach kernel state shared
 * with the host (keys, BPF, perf, modules, kexec, clocks, swap, accounting),
 * calls that rebuild the mount table or enter other namespaces, and creating
 * a new user namespace (which would hand the sandbox a full capability set
 * over new namespaces and widen the kernel's attack surface).
 *
 * The filter is compiled once by libseccomp for x86_64, i386 and x32 and kept
 * as raw BPF; each sandbox's child only loads it.
 */
#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cleanup.h"
#include "rt_internal.h"

/* Calls refused with EPERM whatever their arguments. */
static const char *const denied_calls[] = {
	"add_key", "keyctl", "request_key",
	"bpf", "perf_event_open", "userfaultfd", "lookup_dcookie",
	"kexec_load", "kexec_file_load", "reboot",
	"init_module", "finit_module", "delete_module", "create_module",
	"query_module", "get_kernel_syms",
	"open_by_handle_at", "name_to_handle_at",
	"mount", "umount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig",
	"fspick", "open_tree", "move_mount", "mount_setattr",
	"setns", "swapon", "swapoff",
	/* Reaching into another process's memory or descriptors: Docker
	 * gates these behind CAP_SYS_PTRACE, which a sandbox never has. */
	"ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
	"pidfd_getfd", "process_madvise",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"clock_settime", "clock_adjtime", "settimeofday", "adjtimex", "stime",
	"quotactl", "quotactl_fd", "syslog", "acct", "iopl", "ioperm",
	"fanotify_init", "nfsservctl", "vm86", "vm86old", "uselib", "ustat",
	"sysfs", "_sysctl",
	"pciconfig_read", "pciconfig_write", "pciconfig_iobase",
	"move_pages", "mbind", "set_mempolicy", "get_mempolicy",
	"migrate_pages", "set_mempolicy_home_node",
	"vhangup", "bdflush",
};

uint64_t rt_caps_keep(void)
{
	/* Docker's default set; everything else, CAP_SYS_ADMIN above all, goes. */
	static const int keep[] = {
		CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL,
		CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_NET_BIND_SERVICE,
		CAP_NET_RAW, CAP_SYS_CHROOT, CAP_MKNOD, CAP_AUDIT_WRITE,
		CAP_SETFCAP,
	};
	uint64_t mask = 0;

	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
		mask |= 1ull << keep[i];
	return mask;
}

static int add_rules(scmp_filter_ctx ctx, struct herr *err)
{
	int r;

	for (size_t i = 0; i < sizeof(denied_calls) / sizeof(denied_calls[0]); i++) {
		int nr = seccomp_syscall_resolve_name(denied_calls[i]);

		if (nr == __NR_SCMP_ERROR)
			continue; /* not a call on these architectures */
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
		if (r < 0 && r != -EDOM && r != -EEXIST)
			return herr_sys(err, r, "seccomp rule for %s", denied_calls[i]);
	}

	/* No new user namespace, by either path that takes flags in a register. */
	r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(unshare), 1,
			     SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER));
	if (r < 0)
		return herr_sys(err, r, "seccomp rule for unshare");
	r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
			     SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER));
	if (r < 0)
		return herr_sys(err, r, "seccomp rule for clone");

	/*
	 * clone3 passes its flags in memory, which seccomp cannot read. ENOSYS
	 * makes glibc fall back to clone, whose flags the rule above checks.
	 */
	r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	if (r < 0)
		return herr_sys(err, r, "seccomp rule for clone3");
	return 0;
}

static int export_bpf(scmp_filter_ctx ctx, struct sock_fprog *out, struct herr *err)
{
	_cleanup_close_ int fd = memfd_create("hutch-seccomp", MFD_CLOEXEC);
	int r;

	if (fd < 0)
		return herr_sys(err, -errno, "memfd_create for seccomp export");
	r = seccomp_export_bpf(ctx, fd);
	if (r < 0)
		return herr_sys(err, r, "seccomp_export_bpf");

	off_t len = lseek(fd, 0, SEEK_END);
	if (len <= 0 || len % sizeof(struct sock_filter) != 0)
		return herr_set(err, -EIO, "seccomp export: bad length %lld", (long long)len);

	struct sock_filter *prog = malloc(len);
	if (!prog)
		return herr_set(err, -ENOMEM, "seccomp export: out of memory");
	if (pread(fd, prog, len, 0) != len) {
		free(prog);
		return herr_sys(err, -EIO, "seccomp export: read back");
	}
	out->filter = prog;
	out->len = len / sizeof(struct sock_filter);
	return 0;
}

int rt_seccomp_compile(struct sock_fprog *out, struct herr *err)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
	int r;

	if (!ctx)
		return herr_set(err, -ENOMEM, "seccomp_init failed");

	/* Without these, a 32-bit entry point would bypass the native rules. */
	r = seccomp_arch_add(ctx, SCMP_ARCH_X86);
	if (r == 0 || r == -EEXIST)
		r = seccomp_arch_add(ctx, SCMP_ARCH_X32);
	if (r < 0 && r != -EEXIST) {
		seccomp_release(ctx);
		return herr_sys(err, r, "seccomp_arch_add");
	}

	r = add_rules(ctx, err);
	if (r == 0)
		r = export_bpf(ctx, out, err);
	seccomp_release(ctx);
	return r;
}
