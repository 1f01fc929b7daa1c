/*
 * Sandbox networks: a pool of prepared network namespaces.
 *
 * Each entry is a fresh netns holding "eth0" (one end of a veth pair) with the
 * sandbox address of a /30, loopback up, a default route to the host end, and
 * ip_unprivileged_port_start=0. The host end is named hsb<slot>g<generation>
 * so that a name is never reused while the kernel is still tearing down an
 * old namespace (that takes ~10 ms and runs asynchronously). Everything is
 * done through rtnetlink with libmnl: no `ip` processes.
 *
 * The namespaces belong to the host user namespace, so root inside a sandbox
 * has no CAP_NET_ADMIN over its own interfaces, addresses or routes.
 * Releasing a namespace is just closing its last reference; the kernel then
 * deletes the veth pair (an explicit delete would wait for RCU, ~20 ms).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "rt_internal.h"

struct nl {
	struct mnl_socket *sock;
	unsigned seq;
	unsigned portid;
};

static int nl_open(struct nl *nl)
{
	nl->sock = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	if (!nl->sock)
		return -errno;
	if (mnl_socket_bind(nl->sock, 0, MNL_SOCKET_AUTOPID) < 0) {
		int r = -errno;
		mnl_socket_close(nl->sock);
		nl->sock = NULL;
		return r;
	}
	nl->portid = mnl_socket_get_portid(nl->sock);
	nl->seq = (unsigned)time(NULL);
	return 0;
}

static void nl_close(struct nl *nl)
{
	if (nl->sock)
		mnl_socket_close(nl->sock);
	nl->sock = NULL;
}

/* Sends one request and waits for its acknowledgement. */
static int nl_talk(struct nl *nl, struct nlmsghdr *nlh)
{
	char buf[8192];
	ssize_t n;

	nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = ++nl->seq;
	if (mnl_socket_sendto(nl->sock, nlh, nlh->nlmsg_len) < 0)
		return -errno;
	n = mnl_socket_recvfrom(nl->sock, buf, sizeof(buf));
	if (n < 0)
		return -errno;
	if (mnl_cb_run(buf, (size_t)n, nlh->nlmsg_seq, nl->portid, NULL, NULL) < 0)
		return -errno;
	return 0;
}

static struct nlmsghdr *link_msg(char *buf, int type, unsigned flags, int ifindex)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifinfomsg *ifi;

	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = flags;
	ifi = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = ifindex;
	return nlh;
}

static int veth_create(struct nl *nl, const char *host_if, int netns_fd)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0);
	struct nlattr *info, *data, *peer;
	struct ifinfomsg *pifi;

	mnl_attr_put_strz(nlh, IFLA_IFNAME, host_if);
	info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
	data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
	peer = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
	/* the peer is an ifinfomsg followed by its attributes */
	pifi = (struct ifinfomsg *)((char *)nlh + nlh->nlmsg_len);
	memset(pifi, 0, sizeof(*pifi));
	nlh->nlmsg_len += MNL_ALIGN(sizeof(*pifi));
	mnl_attr_put_strz(nlh, IFLA_IFNAME, "eth0");
	mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, (uint32_t)netns_fd);
	mnl_attr_nest_end(nlh, peer);
	mnl_attr_nest_end(nlh, data);
	mnl_attr_nest_end(nlh, info);
	return nl_talk(nl, nlh);
}

static int link_up(struct nl *nl, int ifindex)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = link_msg(buf, RTM_NEWLINK, 0, ifindex);
	struct ifinfomsg *ifi = mnl_nlmsg_get_payload(nlh);

	ifi->ifi_flags = IFF_UP;
	ifi->ifi_change = IFF_UP;
	return nl_talk(nl, nlh);
}

static int addr_add(struct nl *nl, int ifindex, uint32_t ip, int prefix)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifaddrmsg *ifa;
	uint32_t be = htonl(ip);

	nlh->nlmsg_type = RTM_NEWADDR;
	nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
	ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
	ifa->ifa_family = AF_INET;
	ifa->ifa_prefixlen = (unsigned char)prefix;
	ifa->ifa_index = (unsigned)ifindex;
	mnl_attr_put_u32(nlh, IFA_LOCAL, be);
	mnl_attr_put_u32(nlh, IFA_ADDRESS, be);
	return nl_talk(nl, nlh);
}

static int route_default(struct nl *nl, uint32_t gw, int ifindex)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct rtmsg *rtm;

	nlh->nlmsg_type = RTM_NEWROUTE;
	nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
	rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = AF_INET;
	rtm->rtm_table = RT_TABLE_MAIN;
	rtm->rtm_protocol = RTPROT_BOOT;
	rtm->rtm_scope = RT_SCOPE_UNIVERSE;
	rtm->rtm_type = RTN_UNICAST;
	mnl_attr_put_u32(nlh, RTA_GATEWAY, htonl(gw));
	mnl_attr_put_u32(nlh, RTA_OIF, (uint32_t)ifindex);
	return nl_talk(nl, nlh);
}

static int write_sysctl(const char *path, const char *val)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	return write(fd, val, strlen(val)) < 0 ? -errno : 0;
}

/* Address slot 'slot' owns net_base + 4*slot .. +3: host .1, sandbox .2. */
static void slot_addrs(const struct rt *rt, unsigned slot, uint32_t *host, uint32_t *sbx)
{
	*host = rt->net_base + slot * 4 + 1;
	*sbx = rt->net_base + slot * 4 + 2;
}

/* The inside of the namespace: lo, eth0, route, sysctls. Runs with the
 * calling thread inside the namespace. */
static int setup_inside(uint32_t host_ip, uint32_t sbx_ip, struct herr *err)
{
	struct nl nl = { 0 };
	int r = nl_open(&nl);

	if (r < 0)
		return herr_sys(err, r, "netlink socket in sandbox netns");
	int eth0 = (int)if_nametoindex("eth0");
	if (eth0 == 0)
		r = herr_sys(err, -errno, "eth0 missing in sandbox netns");
	else if ((r = link_up(&nl, 1)) < 0)
		herr_sys(err, r, "bringing lo up");
	else if ((r = addr_add(&nl, eth0, sbx_ip, RT_NET_PREFIX)) < 0)
		herr_sys(err, r, "address on eth0");
	else if ((r = link_up(&nl, eth0)) < 0)
		herr_sys(err, r, "bringing eth0 up");
	else if ((r = route_default(&nl, host_ip, eth0)) < 0)
		herr_sys(err, r, "default route");
	nl_close(&nl);
	if (r < 0)
		return r;

	/* Services inside may bind low ports without CAP_NET_BIND_SERVICE;
	 * IPv6 stays off: the sandbox has no IPv6 route out, and no link-local
	 * chatter with the host. */
	r = write_sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
	if (r == 0)
		r = write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
	if (r == 0)
		r = write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
	if (r < 0)
		return herr_sys(err, r, "sysctls in sandbox netns");
	return 0;
}

static int host_ns_fd = -1;

static unsigned pick_slot(struct rt *rt)
{
	static unsigned next;

	/* Round robin, so a slot freed a moment ago (whose old veth the kernel
	 * may still be removing) is reused as late as possible. */
	for (unsigned i = 0; i < rt->max_sandboxes; i++) {
		unsigned s = (next + i) % rt->max_sandboxes;
		if (!rt->net_slot_used[s]) {
			rt->net_slot_used[s] = true;
			next = s + 1;
			return s;
		}
	}
	return ~0u;
}

void rt_net_slot_mark(struct rt *rt, unsigned slot, bool used)
{
	pthread_mutex_lock(&rt->lock);
	if (slot < rt->max_sandboxes)
		rt->net_slot_used[slot] = used;
	pthread_mutex_unlock(&rt->lock);
}

static void veth_name(const struct rt *rt, unsigned slot, unsigned gen, char out[16])
{
	char name[32];

	/* At most 4 + 5 + 1 + 5 characters: always fits IFNAMSIZ. */
	snprintf(name, sizeof(name), "%.4s%ug%u", rt->veth_prefix, slot % 100000,
		 gen % 100000);
	memcpy(out, name, 15);
	out[15] = '\0';
}

/* Makes one prepared namespace; called from any thread, with no lock held. */
static int net_prepare(struct rt *rt, struct rt_netns *out, struct herr *err)
{
	struct nl nl = { 0 };
	unsigned slot, gen;
	int r = 0;

	pthread_mutex_lock(&rt->lock);
	slot = pick_slot(rt);
	gen = slot == ~0u ? 0 : ++rt->net_gen[slot] % 100000;
	pthread_mutex_unlock(&rt->lock);
	if (slot == ~0u)
		return herr_set(err, -ENOSPC, "no free network slot (max %u sandboxes)",
				rt->max_sandboxes);

	out->slot = slot;
	slot_addrs(rt, slot, &out->host_ip, &out->sbx_ip);
	veth_name(rt, slot, gen, out->host_if);

	/* The new namespace is this thread's until we switch back. */
	if (unshare(CLONE_NEWNET) < 0) {
		r = herr_sys(err, -errno, "unshare(CLONE_NEWNET)");
		goto fail_slot;
	}
	out->fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (out->fd < 0)
		r = herr_sys(err, -errno, "open new netns");
	if (setns(host_ns_fd, CLONE_NEWNET) < 0) {
		/* A thread stranded in a sandbox namespace would do all later
		 * host networking in the wrong place: never carry on. */
		log_error("runtime", NULL, "cannot return to host netns: %s", strerror(errno));
		abort();
	}
	if (out->fd < 0)
		goto fail_slot;

	r = nl_open(&nl);
	if (r < 0) {
		herr_sys(err, r, "netlink socket");
		goto fail_ns;
	}
	r = veth_create(&nl, out->host_if, out->fd);
	/* A previous process of ours numbered its generations from 1 too, and
	 * the kernel may still be removing its veths (seconds under load):
	 * move on to the next generation rather than fail the create. */
	for (int tries = 0; r == -EEXIST && tries < 16; tries++) {
		pthread_mutex_lock(&rt->lock);
		gen = ++rt->net_gen[slot] % 100000;
		pthread_mutex_unlock(&rt->lock);
		veth_name(rt, slot, gen, out->host_if);
		r = veth_create(&nl, out->host_if, out->fd);
	}
	if (r < 0) {
		herr_sys(err, r, "creating veth %s", out->host_if);
		goto fail_nl;
	}
	int hidx = (int)if_nametoindex(out->host_if);
	if (hidx == 0 || (r = addr_add(&nl, hidx, out->host_ip, RT_NET_PREFIX)) < 0 ||
	    (r = link_up(&nl, hidx)) < 0) {
		r = herr_sys(err, r ? r : -ENODEV, "configuring %s", out->host_if);
		goto fail_nl;
	}
	nl_close(&nl);

	if (setns(out->fd, CLONE_NEWNET) < 0) {
		r = herr_sys(err, -errno, "setns into new netns");
		goto fail_ns;
	}
	r = setup_inside(out->host_ip, out->sbx_ip, err);
	if (setns(host_ns_fd, CLONE_NEWNET) < 0) {
		log_error("runtime", NULL, "cannot return to host netns: %s", strerror(errno));
		abort();
	}
	if (r < 0)
		goto fail_ns;
	return 0;

fail_nl:
	nl_close(&nl);
fail_ns:
	close(out->fd); /* the kernel removes the veth with the namespace */
	out->fd = -1;
fail_slot:
	rt_net_slot_mark(rt, slot, false);
	return r;
}

static void *pool_main(void *arg)
{
	struct rt *rt = arg;

	pthread_mutex_lock(&rt->lock);
	while (rt->pool_running) {
		if (rt->pool_len >= rt->pool_size) {
			pthread_cond_wait(&rt->pool_cond, &rt->lock);
			continue;
		}
		pthread_mutex_unlock(&rt->lock);

		struct rt_netns ns;
		struct herr err;
		int r = net_prepare(rt, &ns, &err);

		pthread_mutex_lock(&rt->lock);
		if (r < 0) {
			log_warn("runtime", NULL, "network pool: %s", err.msg);
			pthread_mutex_unlock(&rt->lock);
			sleep(1);
			pthread_mutex_lock(&rt->lock);
			continue;
		}
		if (!rt->pool_running || rt->pool_len >= rt->pool_size) {
			rt->net_slot_used[ns.slot] = false;
			close(ns.fd);
			continue;
		}
		rt->pool[rt->pool_len++] = ns;
	}
	pthread_mutex_unlock(&rt->lock);
	return NULL;
}

int rt_net_init(struct rt *rt, struct herr *err)
{
	host_ns_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (host_ns_fd < 0)
		return herr_sys(err, -errno, "open host netns");

	/*
	 * Egress needs routing between veths and the uplink. It is switched on
	 * here and deliberately never back off: sandboxes outlive hutchd (and
	 * other runtimes on the host may share the knob), so no exit of ours is
	 * a safe moment. Whoever uninstalls Hutch restores it; the previous
	 * value is logged so that they know what it was.
	 */
	char was = '?';
	_cleanup_close_ int fwd = open("/proc/sys/net/ipv4/ip_forward", O_RDONLY | O_CLOEXEC);
	if (fwd >= 0 && read(fwd, &was, 1) != 1)
		was = '?';
	if (was != '1') {
		int r = write_sysctl("/proc/sys/net/ipv4/ip_forward", "1");
		if (r < 0)
			return herr_sys(err, r, "enabling net.ipv4.ip_forward");
		log_info("runtime", NULL, "net.ipv4.ip_forward switched on (was %c); "
			 "it stays on after exit", was);
	}

	rt->pool = calloc(rt->pool_size ? rt->pool_size : 1, sizeof(*rt->pool));
	if (!rt->pool)
		return herr_set(err, -ENOMEM, "network pool: out of memory");
	rt->pool_running = true;
	if (rt->pool_size &&
	    pthread_create(&rt->pool_thread, NULL, pool_main, rt) != 0) {
		rt->pool_running = false;
		return herr_set(err, -EAGAIN, "starting the network pool thread");
	}
	return 0;
}

void rt_net_shutdown(struct rt *rt)
{
	pthread_mutex_lock(&rt->lock);
	bool was = rt->pool_running;
	rt->pool_running = false;
	pthread_cond_broadcast(&rt->pool_cond);
	pthread_mutex_unlock(&rt->lock);
	if (was && rt->pool_size)
		pthread_join(rt->pool_thread, NULL);
	for (unsigned i = 0; i < rt->pool_len; i++)
		close(rt->pool[i].fd);
	rt->pool_len = 0;
	free(rt->pool);
	rt->pool = NULL;
	if (host_ns_fd >= 0)
		close(host_ns_fd);
	host_ns_fd = -1;
}

int rt_net_take(struct rt *rt, struct rt_netns *out, struct herr *err)
{
	pthread_mutex_lock(&rt->lock);
	if (rt->pool_len > 0) {
		*out = rt->pool[--rt->pool_len];
		pthread_cond_signal(&rt->pool_cond);
		pthread_mutex_unlock(&rt->lock);
		return 0;
	}
	pthread_cond_signal(&rt->pool_cond);
	pthread_mutex_unlock(&rt->lock);
	return net_prepare(rt, out, err);
}

void rt_net_release(struct rt *rt, struct rt_netns *ns)
{
	if (ns->fd >= 0)
		close(ns->fd);
	ns->fd = -1;
	rt_net_slot_mark(rt, ns->slot, false);
}

int rt_net_sysfs_fd(int netns_fd, struct herr *err)
{
	/* The caller is already inside netns_fd: sysfs shows the net devices of
	 * the namespace that mounts it. Read-only, no suid/dev/exec. */
	(void)netns_fd;
	_cleanup_close_ int fs = fsopen("sysfs", FSOPEN_CLOEXEC);
	if (fs < 0)
		return herr_sys(err, -errno, "fsopen sysfs");
	if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		return herr_sys(err, -errno, "creating sysfs instance");
	int m = fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID |
			MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
	if (m < 0)
		return herr_sys(err, -errno, "fsmount sysfs");
	return m;
}
