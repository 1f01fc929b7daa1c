/*
 * The lifecycle's runtime operations over rt.h: a store row becomes an
 * rt_spec (template layer, agent, limits, egress policy); once the runtime
 * has started the sandbox, the agent is configured with POST /init over the
 * sandbox's own loopback (rt_dial), and only an answer from it makes the
 * sandbox ready.
 */
#include "sandbox_rt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cleanup.h"
#include "log.h"
#include "rt.h"

#define AGENT_PORT 49983
#define MAX_CIDRS 256

struct lc_rt {
	struct rt *rt;
	struct lc_config cfg;
};

int lcrt_open(const struct lc_config *cfg, struct lc_rt **out, struct herr *err)
{
	struct rt_config rc = {
		.data_dir = cfg->data_dir, .run_dir = cfg->run_dir, .cgroup_name = "hutch",
		.net_cidr = cfg->net_cidr, .pool_size = cfg->pool_size,
		.max_sandboxes = cfg->max_sandboxes, .uid_base = 0x10000000u,
		.egress_conn_max = 1024,
	};
	struct lc_rt *l = calloc(1, sizeof(*l));
	int r;

	if (!l)
		return herr_set(err, -ENOMEM, "lifecycle: out of memory");
	r = rt_init(&rc, &l->rt, err);
	if (r < 0) {
		free(l);
		return r;
	}
	l->cfg = *cfg;
	*out = l;
	return 0;
}

void lcrt_close(struct lc_rt *l)
{
	if (!l)
		return;
	rt_shutdown(l->rt);
	free(l);
}

static int cidrs_from_json(json_t *list, struct rt_cidr *out, size_t *n,
			   struct herr *err)
{
	size_t i;
	json_t *v;

	*n = 0;
	json_array_foreach(list, i, v) {
		if (*n == MAX_CIDRS)
			return herr_set(err, -E2BIG, "network: more than %d entries", MAX_CIDRS);
		if (rt_cidr_parse(json_string_value(v), &out[(*n)++], err) < 0)
			return err->code;
	}
	return 0;
}

/* The stored network object as a runtime policy (cidr arrays in the caller's storage). */
static int policy_from_json(json_t *net, struct rt_net_policy *pol,
			    struct rt_cidr *allow, struct rt_cidr *deny, struct herr *err)
{
	int rc;

	memset(pol, 0, sizeof(*pol));
	pol->allow_internet = !json_is_false(json_object_get(net, "allowInternetAccess"));
	rc = cidrs_from_json(json_object_get(net, "allowOut"), allow, &pol->n_allow_out, err);
	if (rc == 0)
		rc = cidrs_from_json(json_object_get(net, "denyOut"), deny, &pol->n_deny_out,
				     err);
	pol->allow_out = allow;
	pol->deny_out = deny;
	return rc;
}

static curl_socket_t give_socket(void *arg, curlsocktype purpose,
				 struct curl_sockaddr *addr)
{
	int *fd = arg;

	return steal_fd(fd);
}

static int already_connected(void *arg, curl_socket_t fd, curlsocktype purpose)
{
	return CURL_SOCKOPT_ALREADY_CONNECTED;
}

static int init_body(const struct store_sandbox *sb, char **out, struct herr *err)
{
	json_t *env = json_loads(sb->env, 0, NULL);
	json_t *body = json_pack("{s:s,s:o,s:s,s:s}", "accessToken", sb->access_token,
				 "envVars", env ? env : json_object(), "defaultUser", "user",
				 "defaultWorkdir", "/home/user");

	*out = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	return *out ? 0 : herr_set(err, -ENOMEM, "out of memory");
}

/* POST /init to the agent through a socket inside the sandbox's netns. */
static int agent_init(struct lc_rt *l, const struct store_sandbox *sb, struct herr *err)
{
	_cleanup_free_ char *body = NULL;
	_cleanup_close_ int fd = -1;
	struct curl_slist *hdr = NULL;
	long status = 0;
	CURLcode cc;
	CURL *c;
	int rc = init_body(sb, &body, err);

	if (rc < 0)
		return rc;
	fd = rt_dial(l->rt, sb->id, AGENT_PORT, err);
	if (fd < 0)
		return herr_wrap(err, "reaching the agent");
	c = curl_easy_init();
	if (!c)
		return herr_set(err, -ENOMEM, "curl_easy_init failed");
	hdr = curl_slist_append(hdr, "Content-Type: application/json");
	curl_easy_setopt(c, CURLOPT_URL, "http://127.0.0.1:49983/init");
	curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, give_socket);
	curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &fd);
	curl_easy_setopt(c, CURLOPT_SOCKOPTFUNCTION, already_connected);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)l->cfg.agent_ready_ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(c);
	curl_slist_free_all(hdr);
	if (cc != CURLE_OK)
		return herr_set(err, -EIO, "agent /init: %s", curl_easy_strerror(cc));
	if (status < 200 || status > 299)
		return herr_set(err, -EIO, "agent /init answered HTTP %ld", status);
	return 0;
}

static int template_layer(struct lc_rt *l, const char *tpl, char *out, size_t cap,
			  struct herr *err)
{
	struct stat st;

	/* template_ref_valid() already refused '/', '..' tricks beyond one level. */
	if (strstr(tpl, "..") || snprintf(out, cap, "%s/%s/rootfs", l->cfg.template_dir,
					  tpl) >= (int)cap)
		return herr_set(err, -EINVAL, "Invalid template reference: '%s'", tpl);
	if (stat(out, &st) < 0 || !S_ISDIR(st.st_mode))
		return herr_set(err, -ENOENT, "template '%s' not found", tpl);
	return 0;
}

int lcrt_start(struct lc_rt *l, const struct store_sandbox *sb, struct herr *err)
{
	static const char *const argv[] = { RT_AGENT_MOUNT "/hutch-agent",
		"--listen=127.0.0.1", "--port=49983", NULL };
	static const char *const env[] = {
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL };
	char layer[4096];
	const char *layers[1] = { layer };
	json_t *net = json_loads(sb->network, 0, NULL);
	struct rt_spec spec = {
		.id = sb->id, .layers = layers, .n_layers = 1, .agent_dir = l->cfg.agent_dir,
		.argv = argv, .env = env,
		.limits = { .cpu_count = (unsigned)sb->cpu_count,
			    .memory_mb = (uint64_t)sb->memory_mb, .pids = 4096,
			    .disk_mb = (uint64_t)sb->disk_mb },
	};
	int rc = template_layer(l, sb->template_id, layer, sizeof(layer), err);

	if (rc == 0) {
		struct rt_cidr a[MAX_CIDRS], d[MAX_CIDRS];

		rc = policy_from_json(net, &spec.net, a, d, err);
		if (rc == 0)
			rc = rt_create(l->rt, &spec, err);
	}
	json_decref(net);
	if (rc == 0)
		rc = rt_wait_port(l->rt, sb->id, AGENT_PORT, l->cfg.agent_ready_ms, err);
	if (rc == 0)
		rc = agent_init(l, sb, err);
	return rc;
}

int lcrt_destroy(struct lc_rt *l, const char *id, struct herr *err)
{
	return rt_destroy(l->rt, id, err);
}

int lcrt_alive(struct lc_rt *l, const char *id)
{
	struct rt_info info;
	struct herr err;
	int rc = rt_query(l->rt, id, &info, &err);

	if (rc < 0)
		return rc == -ENOENT ? 0 : rc;
	return info.state == RT_STATE_RUNNING || info.state == RT_STATE_STARTING;
}

int lcrt_set_network(struct lc_rt *l, const char *id, json_t *network,
		     struct herr *err)
{
	struct rt_cidr a[MAX_CIDRS], d[MAX_CIDRS];
	struct rt_net_policy pol;
	int rc = policy_from_json(network, &pol, a, d, err);

	return rc < 0 ? rc : rt_set_net_policy(l->rt, id, &pol, err);
}

int lcrt_stats(struct lc_rt *l, const char *id, struct lc_stats *out, struct herr *err)
{
	struct rt_info info;
	int rc = rt_query(l->rt, id, &info, err);

	if (rc < 0)
		return rc;
	out->cpu_usec = info.cpu_usec;
	out->memory_bytes = info.memory_bytes;
	out->disk_bytes = info.disk_bytes;
	return 0;
}
