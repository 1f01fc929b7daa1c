/*
 * The sandbox firewall: one nftables table of our own, "inet <cgroup_name>", driven
 * with libnftnl batches (no userspace ruleset cache, so a change costs the
 * same with 10 or 10000 sandboxes). No other table is ever read or changed.
 *
 *   input       packets from any sandbox veth (<prefix>*) to the host: only replies
 *               to connections the host opened pass; the rest is rejected.
 *               This is what keeps sandboxes off host services on every host
 *               address (127.0.0.1 inside a sandbox is its own loopback).
 *   forward     replies towards sandboxes pass, new connections towards them
 *               are rejected; traffic from a veth jumps (via the egress map) to
 *               its sandbox's chain; IPv6 and unknown veths are rejected.
 *   s<slot>     per sandbox, evaluated for every packet it sends out (not only
 *               the first), so a policy change applies to open flows at once:
 *               connection cap, allowOut (accept), denyOut + private ranges
 *               (+ everything when internet is off) (reject), else accept.
 *   postrouting masquerade of the sandbox range, except between our veths.
 * Rejections are TCP resets or ICMP admin-prohibited, so a denied connect
 * fails at once instead of timing out.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_tables.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "rt_internal.h"

#define EGRESS_MAP "egress"
#define REJECT_CHAIN "reject_fast"
#define TYPE_IFNAME 41 /* nft's datatype id for interface names */

/* Private, loopback, link-local and CGNAT ranges: denied unless allowed. */
static const struct rt_cidr private_ranges[] = {
	{ 0x0A000000, 8 }, { 0x64400000, 10 }, { 0x7F000000, 8 }, { 0xA9FE0000, 16 },
	{ 0xAC100000, 12 }, { 0xC0A80000, 16 }, { 0x00000000, 8 }, { 0xE0000000, 4 },
	{ 0xF0000000, 4 },
};

struct batch {
	char *buf;
	struct mnl_nlmsg_batch *b;
	uint32_t seq;
	uint32_t first_seq;
};

static uint32_t seq_counter;
/* Set once by rt_nft_init from the runtime's configuration; one runtime
 * configuration per process. */
static char table_name[64] = "hutch";
static char veth_prefix[8] = RT_HOST_VETH_PREFIX;
#define TABLE table_name

static int batch_open(struct batch *bt)
{
	bt->buf = malloc(MNL_SOCKET_BUFFER_SIZE * 8);
	if (!bt->buf)
		return -ENOMEM;
	bt->b = mnl_nlmsg_batch_start(bt->buf, MNL_SOCKET_BUFFER_SIZE * 8);
	bt->seq = __atomic_add_fetch(&seq_counter, 1000, __ATOMIC_RELAXED) + (uint32_t)time(NULL);
	bt->first_seq = bt->seq;
	nftnl_batch_begin(mnl_nlmsg_batch_current(bt->b), bt->seq++);
	mnl_nlmsg_batch_next(bt->b);
	return 0;
}

static struct nlmsghdr *batch_msg(struct batch *bt, int type, unsigned flags)
{
	struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(bt->b), type,
						     NFPROTO_INET, flags | NLM_F_ACK,
						     bt->seq++);
	return nlh;
}

static void batch_next(struct batch *bt)
{
	mnl_nlmsg_batch_next(bt->b);
}

static void mnl_socket_closep(struct mnl_socket **nl)
{
	if (*nl)
		mnl_socket_close(*nl);
}

/* Reads the answers to a sent batch: one ack per message; an error stops
 * the transaction. */
static int read_acks(struct mnl_socket *nl, struct herr *err, const char *what)
{
	char rbuf[MNL_SOCKET_BUFFER_SIZE];
	unsigned portid = mnl_socket_get_portid(nl);
	int fd = mnl_socket_get_fd(nl);

	for (;;) {
		/* nf_tables handles the batch inside sendmsg, so every answer is
		 * queued by now. poll, not select: hutchd holds thousands of
		 * descriptors and an fd_set stops at 1024. */
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0)
			return 0;
		ssize_t n = mnl_socket_recvfrom(nl, rbuf, sizeof(rbuf));
		if (n <= 0)
			return 0;
		if (mnl_cb_run(rbuf, (size_t)n, 0, portid, NULL, NULL) < 0)
			return herr_sys(err, -errno, "nftables (%s)", what);
	}
}

static int batch_send(struct batch *bt, struct herr *err, const char *what)
{
	_cleanup_(mnl_socket_closep) struct mnl_socket *nl =
		mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);

	if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0)
		return herr_sys(err, -errno, "nftables socket (%s)", what);
	if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(bt->b),
			      mnl_nlmsg_batch_size(bt->b)) < 0)
		return herr_sys(err, -errno, "nftables send (%s)", what);
	return read_acks(nl, err, what);
}

/* Sends the batch as one transaction (all of it applies, or none) and
 * frees it. */
static int batch_commit(struct batch *bt, struct herr *err, const char *what)
{
	int r;

	nftnl_batch_end(mnl_nlmsg_batch_current(bt->b), bt->seq++);
	mnl_nlmsg_batch_next(bt->b);
	r = batch_send(bt, err, what);
	mnl_nlmsg_batch_stop(bt->b);
	free(bt->buf);
	return r;
}

/* ---------- expressions ---------- */

static void ex_meta(struct nftnl_rule *r, uint32_t key)
{
	struct nftnl_expr *e = nftnl_expr_alloc("meta");
	nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
	nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, NFT_REG_1);
	nftnl_rule_add_expr(r, e);
}

static void ex_cmp(struct nftnl_rule *r, uint32_t op, const void *data, uint32_t len)
{
	struct nftnl_expr *e = nftnl_expr_alloc("cmp");
	nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
	nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len);
	nftnl_rule_add_expr(r, e);
}

/* iifname/oifname "hsb*" (a prefix compare, as nft does for wildcards) */
static void ex_ifprefix(struct nftnl_rule *r, uint32_t key, uint32_t op)
{
	ex_meta(r, key);
	ex_cmp(r, op, veth_prefix, (uint32_t)strlen(veth_prefix));
}

static void ex_ct_state(struct nftnl_rule *r, uint32_t states)
{
	struct nftnl_expr *e = nftnl_expr_alloc("ct");
	uint32_t zero = 0;

	nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, NFT_CT_STATE);
	nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, NFT_REG_1);
	nftnl_rule_add_expr(r, e);
	e = nftnl_expr_alloc("bitwise");
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, 4);
	nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, &states, 4);
	nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, &zero, 4);
	nftnl_rule_add_expr(r, e);
	ex_cmp(r, NFT_CMP_NEQ, &zero, 4);
}

static void ex_nfproto(struct nftnl_rule *r, uint8_t proto)
{
	ex_meta(r, NFT_META_NFPROTO);
	ex_cmp(r, NFT_CMP_EQ, &proto, 1);
}

/* ip saddr/daddr within net/prefix */
static void ex_ip_in(struct nftnl_rule *r, uint32_t offset, const struct rt_cidr *c)
{
	struct nftnl_expr *e;
	uint32_t mask = htonl(c->prefix ? ~0u << (32 - c->prefix) : 0);
	uint32_t net = htonl(c->addr), zero = 0;

	ex_nfproto(r, NFPROTO_IPV4);
	e = nftnl_expr_alloc("payload");
	nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
	nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
	nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, 4);
	nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
	nftnl_rule_add_expr(r, e);
	e = nftnl_expr_alloc("bitwise");
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, 4);
	nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, &mask, 4);
	nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, &zero, 4);
	nftnl_rule_add_expr(r, e);
	ex_cmp(r, NFT_CMP_EQ, &net, 4);
}

static void ex_verdict(struct nftnl_rule *r, int verdict, const char *chain)
{
	struct nftnl_expr *e = nftnl_expr_alloc("immediate");
	nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
	nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, (uint32_t)verdict);
	if (chain)
		nftnl_expr_set_str(e, NFTNL_EXPR_IMM_CHAIN, chain);
	nftnl_rule_add_expr(r, e);
}

static void ex_reject(struct nftnl_rule *r, uint32_t type, uint8_t code)
{
	struct nftnl_expr *e = nftnl_expr_alloc("reject");
	nftnl_expr_set_u32(e, NFTNL_EXPR_REJECT_TYPE, type);
	nftnl_expr_set_u8(e, NFTNL_EXPR_REJECT_CODE, code);
	nftnl_rule_add_expr(r, e);
}

/* ---------- objects ---------- */

static struct nftnl_rule *rule_new(const char *chain)
{
	struct nftnl_rule *r = nftnl_rule_alloc();
	nftnl_rule_set_str(r, NFTNL_RULE_TABLE, TABLE);
	nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain);
	nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, NFPROTO_INET);
	return r;
}

static void rule_put(struct batch *bt, struct nftnl_rule *r)
{
	struct nlmsghdr *nlh = batch_msg(bt, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
	nftnl_rule_nlmsg_build_payload(nlh, r);
	nftnl_rule_free(r);
	batch_next(bt);
}

static void chain_put(struct batch *bt, int type, unsigned flags, const char *name,
		      const char *kind, int hook, int prio)
{
	struct nftnl_chain *c = nftnl_chain_alloc();
	nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, TABLE);
	nftnl_chain_set_str(c, NFTNL_CHAIN_NAME, name);
	nftnl_chain_set_u32(c, NFTNL_CHAIN_FAMILY, NFPROTO_INET);
	if (kind) {
		nftnl_chain_set_str(c, NFTNL_CHAIN_TYPE, kind);
		nftnl_chain_set_u32(c, NFTNL_CHAIN_HOOKNUM, (uint32_t)hook);
		nftnl_chain_set_s32(c, NFTNL_CHAIN_PRIO, prio);
		nftnl_chain_set_u32(c, NFTNL_CHAIN_POLICY, NF_ACCEPT);
	}
	struct nlmsghdr *nlh = batch_msg(bt, type, flags);
	nftnl_chain_nlmsg_build_payload(nlh, c);
	nftnl_chain_free(c);
	batch_next(bt);
}

static void flush_chain(struct batch *bt, const char *name)
{
	struct nftnl_rule *r = nftnl_rule_alloc();
	nftnl_rule_set_str(r, NFTNL_RULE_TABLE, TABLE);
	nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, name);
	nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, NFPROTO_INET);
	struct nlmsghdr *nlh = batch_msg(bt, NFT_MSG_DELRULE, 0);
	nftnl_rule_nlmsg_build_payload(nlh, r);
	nftnl_rule_free(r);
	batch_next(bt);
}

/*
 * In chain, traffic whose interface (key: in or out) is a sandbox veth passes
 * only when it belongs to an established flow; anything else is rejected at
 * once (TCP reset or ICMP), so a refused connection fails fast.
 */
static void put_replies_only(struct batch *bt, const char *chain, uint32_t key)
{
	struct nftnl_rule *r = rule_new(chain);

	ex_ifprefix(r, key, NFT_CMP_EQ);
	ex_ct_state(r, NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED));
	ex_verdict(r, NF_ACCEPT, NULL);
	rule_put(bt, r);
	r = rule_new(chain);
	ex_ifprefix(r, key, NFT_CMP_EQ);
	ex_verdict(r, NFT_GOTO, REJECT_CHAIN);
	rule_put(bt, r);
}

static void put_base(struct rt *rt, struct batch *bt)
{
	struct nftnl_table *t = nftnl_table_alloc();
	struct nftnl_rule *r;

	nftnl_table_set_str(t, NFTNL_TABLE_NAME, TABLE);
	nftnl_table_set_u32(t, NFTNL_TABLE_FAMILY, NFPROTO_INET);
	nftnl_table_nlmsg_build_payload(batch_msg(bt, NFT_MSG_NEWTABLE, NLM_F_CREATE), t);
	nftnl_table_free(t);
	batch_next(bt);

	chain_put(bt, NFT_MSG_NEWCHAIN, NLM_F_CREATE, REJECT_CHAIN, NULL, 0, 0);
	chain_put(bt, NFT_MSG_NEWCHAIN, NLM_F_CREATE, "input", "filter", NF_INET_LOCAL_IN, 0);
	chain_put(bt, NFT_MSG_NEWCHAIN, NLM_F_CREATE, "forward", "filter", NF_INET_FORWARD, 0);
	chain_put(bt, NFT_MSG_NEWCHAIN, NLM_F_CREATE, "postrouting", "nat",
		  NF_INET_POST_ROUTING, 100);

	struct nftnl_set *s = nftnl_set_alloc();
	nftnl_set_set_str(s, NFTNL_SET_TABLE, TABLE);
	nftnl_set_set_str(s, NFTNL_SET_NAME, EGRESS_MAP);
	nftnl_set_set_u32(s, NFTNL_SET_FAMILY, NFPROTO_INET);
	nftnl_set_set_u32(s, NFTNL_SET_KEY_LEN, 16);
	nftnl_set_set_u32(s, NFTNL_SET_KEY_TYPE, TYPE_IFNAME);
	nftnl_set_set_u32(s, NFTNL_SET_FLAGS, NFT_SET_MAP);
	nftnl_set_set_u32(s, NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
	nftnl_set_set_u32(s, NFTNL_SET_ID, 1);
	nftnl_set_nlmsg_build_payload(batch_msg(bt, NFT_MSG_NEWSET, NLM_F_CREATE), s);
	nftnl_set_free(s);
	batch_next(bt);

	flush_chain(bt, REJECT_CHAIN);
	flush_chain(bt, "input");
	flush_chain(bt, "forward");
	flush_chain(bt, "postrouting");

	r = rule_new(REJECT_CHAIN);
	ex_meta(r, NFT_META_L4PROTO);
	ex_cmp(r, NFT_CMP_EQ, &(uint8_t){ IPPROTO_TCP }, 1);
	ex_reject(r, NFT_REJECT_TCP_RST, 0);
	rule_put(bt, r);
	r = rule_new(REJECT_CHAIN);
	ex_reject(r, NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_ADMIN_PROHIBITED);
	rule_put(bt, r);

	/* input: sandboxes reach the host only with replies */
	put_replies_only(bt, "input", NFT_META_IIFNAME);
	/* forward, towards sandboxes: replies only. New connections towards a
	 * sandbox (from another sandbox or from outside) are refused at once
	 * rather than left to time out. */
	put_replies_only(bt, "forward", NFT_META_OIFNAME);
	/* forward, from sandboxes: no IPv6, then the sandbox's own chain */
	r = rule_new("forward");
	ex_ifprefix(r, NFT_META_IIFNAME, NFT_CMP_EQ);
	ex_nfproto(r, NFPROTO_IPV6);
	ex_verdict(r, NFT_GOTO, REJECT_CHAIN);
	rule_put(bt, r);
	r = rule_new("forward");
	ex_ifprefix(r, NFT_META_IIFNAME, NFT_CMP_EQ);
	ex_meta(r, NFT_META_IIFNAME);
	struct nftnl_expr *e = nftnl_expr_alloc("lookup");
	nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_DREG, NFT_REG_VERDICT);
	nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, EGRESS_MAP);
	nftnl_rule_add_expr(r, e);
	rule_put(bt, r);
	r = rule_new("forward");
	ex_ifprefix(r, NFT_META_IIFNAME, NFT_CMP_EQ);
	ex_verdict(r, NFT_GOTO, REJECT_CHAIN);
	rule_put(bt, r);

	/* postrouting: sandboxes leave with the host's address */
	struct rt_cidr range = { rt->net_base, 16 };
	r = rule_new("postrouting");
	ex_ip_in(r, 12, &range);
	ex_ifprefix(r, NFT_META_OIFNAME, NFT_CMP_NEQ);
	nftnl_rule_add_expr(r, nftnl_expr_alloc("masq"));
	rule_put(bt, r);
}

int rt_nft_init(struct rt *rt, struct herr *err)
{
	struct batch bt;

	snprintf(table_name, sizeof(table_name), "%s", rt->cg_name);
	snprintf(veth_prefix, sizeof(veth_prefix), "%s", rt->veth_prefix);
	if (batch_open(&bt) < 0)
		return herr_set(err, -ENOMEM, "out of memory");
	put_base(rt, &bt);
	return batch_commit(&bt, err, "base table");
}

static void sbx_chain_name(const struct rt_netns *ns, char *buf, size_t len)
{
	snprintf(buf, len, "s%u", ns->slot);
}

static void put_policy_rules(struct rt *rt, struct batch *bt, const char *chain,
			     const struct rt_net_policy *pol)
{
	struct nftnl_rule *r = rule_new(chain);
	struct nftnl_expr *e;

	/* The cap on concurrent connections counts new ones against the
	 * conntrack entries this sandbox already has. */
	ex_ct_state(r, NF_CT_STATE_BIT(IP_CT_NEW));
	e = nftnl_expr_alloc("connlimit");
	nftnl_expr_set_u32(e, NFTNL_EXPR_CONNLIMIT_COUNT, rt->egress_conn_max);
	nftnl_expr_set_u32(e, NFTNL_EXPR_CONNLIMIT_FLAGS, NFT_CONNLIMIT_F_INV);
	nftnl_rule_add_expr(r, e);
	ex_verdict(r, NFT_GOTO, REJECT_CHAIN);
	rule_put(bt, r);

	for (size_t i = 0; i < pol->n_allow_out; i++) {
		r = rule_new(chain);
		ex_ip_in(r, 16, &pol->allow_out[i]);
		ex_verdict(r, NF_ACCEPT, NULL);
		rule_put(bt, r);
	}
	for (size_t i = 0; i < pol->n_deny_out; i++) {
		r = rule_new(chain);
		ex_ip_in(r, 16, &pol->deny_out[i]);
		ex_verdict(r, NFT_GOTO, REJECT_CHAIN);
		rule_put(bt, r);
	}
	for (size_t i = 0; i < sizeof(private_ranges) / sizeof(private_ranges[0]); i++) {
		r = rule_new(chain);
		ex_ip_in(r, 16, &private_ranges[i]);
		ex_verdict(r, NFT_GOTO, REJECT_CHAIN);
		rule_put(bt, r);
	}
	r = rule_new(chain);
	ex_verdict(r, pol->allow_internet ? NF_ACCEPT : NFT_GOTO,
		   pol->allow_internet ? NULL : REJECT_CHAIN);
	rule_put(bt, r);
}

static void map_elem(struct batch *bt, const struct rt_netns *ns, const char *chain,
		     int type)
{
	struct nftnl_set *s = nftnl_set_alloc();
	struct nftnl_set_elem *el = nftnl_set_elem_alloc();
	char key[16] = { 0 };

	memcpy(key, ns->host_if, strnlen(ns->host_if, sizeof(key) - 1));
	nftnl_set_set_str(s, NFTNL_SET_TABLE, TABLE);
	nftnl_set_set_str(s, NFTNL_SET_NAME, EGRESS_MAP);
	nftnl_set_set_u32(s, NFTNL_SET_FAMILY, NFPROTO_INET);
	nftnl_set_elem_set(el, NFTNL_SET_ELEM_KEY, key, sizeof(key));
	if (type == NFT_MSG_NEWSETELEM) {
		nftnl_set_elem_set_u32(el, NFTNL_SET_ELEM_VERDICT, NFT_JUMP);
		nftnl_set_elem_set_str(el, NFTNL_SET_ELEM_CHAIN, chain);
	}
	nftnl_set_elem_add(s, el);
	nftnl_set_elems_nlmsg_build_payload(batch_msg(bt, type, type == NFT_MSG_NEWSETELEM ?
						      NLM_F_CREATE : 0), s);
	nftnl_set_free(s);
	batch_next(bt);
}

int rt_nft_sandbox_add(struct rt *rt, const struct rt_netns *ns,
		       const struct rt_net_policy *pol, struct herr *err)
{
	char chain[32];
	struct batch bt;

	if (batch_open(&bt) < 0)
		return herr_set(err, -ENOMEM, "out of memory");
	sbx_chain_name(ns, chain, sizeof(chain));
	chain_put(&bt, NFT_MSG_NEWCHAIN, NLM_F_CREATE, chain, NULL, 0, 0);
	flush_chain(&bt, chain);
	put_policy_rules(rt, &bt, chain, pol);
	map_elem(&bt, ns, chain, NFT_MSG_NEWSETELEM);
	return batch_commit(&bt, err, ns->host_if);
}

int rt_nft_sandbox_policy(struct rt *rt, const struct rt_netns *ns,
			  const struct rt_net_policy *pol, struct herr *err)
{
	char chain[32];
	struct batch bt;

	if (batch_open(&bt) < 0)
		return herr_set(err, -ENOMEM, "out of memory");
	sbx_chain_name(ns, chain, sizeof(chain));
	/* flush + refill in one transaction: no packet sees a half policy */
	flush_chain(&bt, chain);
	put_policy_rules(rt, &bt, chain, pol);
	return batch_commit(&bt, err, ns->host_if);
}

int rt_nft_sandbox_del(struct rt *rt, const struct rt_netns *ns, struct herr *err)
{
	char chain[32];
	struct batch bt;

	(void)rt;
	if (batch_open(&bt) < 0)
		return herr_set(err, -ENOMEM, "out of memory");
	sbx_chain_name(ns, chain, sizeof(chain));
	map_elem(&bt, ns, chain, NFT_MSG_DELSETELEM);
	flush_chain(&bt, chain);
	chain_put(&bt, NFT_MSG_DELCHAIN, 0, chain, NULL, 0, 0);
	return batch_commit(&bt, err, ns->host_if);
}
