/*
 * The lifecycle's runtime operations over rt.h: a store row and its template
 * become an rt_spec (template layer, agent bundle, limits, egress policy);
 * once the runtime has started the sandbox, the agent is configured with
 * POST /init over the sandbox's own loopback (rt_dial), and only its answer
 * makes the sandbox ready.
 *
 * The agent runs from the bundle made by scripts/agent-bundle (its own ELF
 * loader and libraries, bound read-only at RT_AGENT_MOUNT), so it works in
 * any root filesystem whatever its libc. It listens on the sandbox's
 * loopback only: the host reaches it through rt_dial, nothing reaches it
 * from the sandbox network.
 */
#include "sandbox_rt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "buf.h"
#include "cleanup.h"
#include "ids.h"
#include "log.h"
#include "rt.h"
#include "rt_checkpoint.h"
#include "start.h"

#define AGENT_PORT 49983
#define MAX_CIDRS 256

/* Longest agent command line piece we build (flag plus a template path). */
#define FLAG_MAX (TPL_PATH_MAX + 32)

struct lc_rt {
	struct rt *rt;
	struct lc_config cfg;
	bool bundled;   /* agent_dir holds ld.so + lib/ (else a static agent) */
	lcrt_exit_fn on_exit; /* set before the runtime may call it */
	void *exit_arg;
};

/*
 * The agent folder is bound into every sandbox as is, so it is checked once
 * here: a missing agent would otherwise fail every create the same way.
 */
static int check_agent_dir(struct lc_rt *l, struct herr *err)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/hutch-agent", l->cfg.agent_dir);
	if (access(path, X_OK) < 0)
		return herr_sys(err, -errno, "agent bundle: %s (build it with "
				"scripts/agent-bundle or set agent-dir)", path);
	snprintf(path, sizeof(path), "%s/ld.so", l->cfg.agent_dir);
	l->bundled = access(path, X_OK) == 0;
	return 0;
}

int lcrt_open(const struct lc_config *cfg, struct lc_rt **out, struct herr *err)
{
	struct rt_config rc = {
		.data_dir = cfg->data_dir, .run_dir = cfg->run_dir,
		.cgroup_name = cfg->cgroup_name ? cfg->cgroup_name : "hutch",
		.net_cidr = cfg->net_cidr, .pool_size = cfg->pool_size,
		.max_sandboxes = cfg->max_sandboxes, .uid_base = 0x10000000u,
		.egress_conn_max = cfg->egress_conn_max, .veth_prefix = cfg->veth_prefix,
	};
	struct lc_rt *l = calloc(1, sizeof(*l));
	int r;

	if (!l)
		return herr_set(err, -ENOMEM, "lifecycle: out of memory");
	l->cfg = *cfg;
	r = check_agent_dir(l, err);
	if (r == 0)
		r = rt_init(&rc, &l->rt, err);
	if (r < 0) {
		free(l);
		return r;
	}
	*out = l;
	return 0;
}

struct rt *lcrt_runtime(struct lc_rt *l)
{
	return l ? l->rt : NULL;
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

/* True when a stored network object asks for nothing beyond the default. */
static bool policy_is_default(json_t *net)
{
	return !json_is_false(json_object_get(net, "allowInternetAccess")) &&
	       json_array_size(json_object_get(net, "allowOut")) == 0 &&
	       json_array_size(json_object_get(net, "denyOut")) == 0;
}

static curl_socket_t give_socket(void *arg, curlsocktype purpose,
				 struct curl_sockaddr *addr)
{
	int *fd = arg;

	return steal_fd(fd);
}


/* Keeps the start of the agent's answer, for the error message. */
static size_t keep_answer(char *data, size_t size, size_t n, void *arg)
{
	struct hbuf *b = arg;
	size_t len = size * n, room = b->max - b->len;

	hbuf_append(b, data, len < room ? len : room);
	return len;
}

static void rfc3339_now(char out[64])
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec);
}

/*
 * The agent's configuration: the template's env with the create's envVars
 * over it, the template's default user and workdir, and the access token.
 * The token goes here rather than on the command line because argv of the
 * sandbox's init is readable by every process inside it.
 */
static void init_secret_of(struct lc_rt *l, const char *id, char out[TOKEN_HEX]);

static int init_body(struct lc_rt *l, const struct store_sandbox *sb,
		     const struct lc_template *tpl, const struct lcrt_fork_from *from,
		     char **out, struct herr *err)
{
	char secret[TOKEN_HEX];
	json_t *env = json_deep_copy(tpl->env);
	json_t *extra = json_loads(sb->env, 0, NULL);
	json_t *body;
	char now[64];

	if (env && json_is_object(extra))
		json_object_update(env, extra);
	json_decref(extra);
	rfc3339_now(now);
	body = env ? json_pack("{s:o,s:s,s:s,s:s}", "envVars", env, "defaultUser",
			       tpl->user, "defaultWorkdir", tpl->workdir, "timestamp", now)
		   : NULL;
	if (body && *sb->access_token)
		json_object_set_new(body, "accessToken", json_string(sb->access_token));
	/* Only a fork's agent (the source's) is told the secret it is to want
	 * from now on; any other was started with it. */
	if (from)
		init_secret_of(l, sb->id, secret);
	if (body && from && *secret)
		json_object_set_new(body, "initSecret", json_string(secret));
	*out = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	return *out ? 0 : herr_set(err, -ENOMEM, "out of memory");
}

/*
 * The secret this sandbox's agent requires on /init: an HMAC of the node's
 * secret and the sandbox id, so no one without the node's secret can make
 * it, and one sandbox's secret says nothing about another's. Sandbox code
 * cannot read it back: the agent takes it from its environment, removes it
 * there before it starts anything, and is not dumpable (/proc/1/environ).
 * "" when the lifecycle has no server secret (then /init is open as before).
 */
static void init_secret_of(struct lc_rt *l, const char *id, char out[TOKEN_HEX])
{
	out[0] = '\0';
	if (l->cfg.server_secret)
		token_derive(l->cfg.server_secret, "agent-init-", id, out);
}

static long ms_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000;
}

/*
 * POST /init to the agent through a socket made inside the sandbox's netns:
 * curl connects it to 127.0.0.1, which there is the sandbox's loopback. (A
 * socket rt_dial already connected cannot be used: curl 7.88 connects again.)
 */
static int agent_init(struct lc_rt *l, const struct store_sandbox *sb,
		      const struct lc_template *tpl, long budget_ms,
		      const struct lcrt_fork_from *from, struct herr *err)
{
	_cleanup_free_ char *body = NULL;
	_cleanup_close_ int fd = -1;
	struct curl_slist *hdr = NULL;
	char secret[TOKEN_HEX], line[320];
	struct hbuf answer;
	long status = 0;
	CURLcode cc;
	CURL *c;
	int rc = init_body(l, sb, tpl, from, &body, err);

	if (rc < 0)
		return rc;
	fd = rt_socket(l->rt, sb->id, err);
	if (fd < 0)
		return herr_wrap(err, "reaching the agent for /init");
	c = curl_easy_init();
	if (!c)
		return herr_set(err, -ENOMEM, "curl_easy_init failed");
	hdr = curl_slist_append(hdr, "Content-Type: application/json");
	/* A fork's agent is the source's: it still wants the source's secret
	 * and token, and takes the fork's from this body. */
	init_secret_of(l, from ? from->source_id : sb->id, secret);
	if (*secret) {
		snprintf(line, sizeof(line), "X-Hutch-Init-Secret: %s", secret);
		hdr = curl_slist_append(hdr, line);
	}
	if (from && *from->source_token) {
		snprintf(line, sizeof(line), "X-Access-Token: %s", from->source_token);
		hdr = curl_slist_append(hdr, line);
	}
	curl_easy_setopt(c, CURLOPT_URL, "http://127.0.0.1:49983/init");
	curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, give_socket);
	curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &fd);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	hbuf_init(&answer, 512);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep_answer);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, budget_ms > 1 ? budget_ms : 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(c);
	curl_slist_free_all(hdr);
	if (cc == CURLE_OPERATION_TIMEDOUT)
		rc = herr_set(err, -ETIMEDOUT, "agent did not answer /init within the "
			      "%u ms it may take to get ready", l->cfg.agent_ready_ms);
	else if (cc != CURLE_OK)
		rc = herr_set(err, -EIO, "agent /init: %s", curl_easy_strerror(cc));
	else if (status < 200 || status > 299)
		rc = herr_set(err, -EIO, "agent refused /init with HTTP %ld: %.*s "
			      "(template user '%s', workdir '%s')", status,
			      (int)(answer.len < 200 ? answer.len : 200),
			      answer.data ? answer.data : "", tpl->user, tpl->workdir);
	hbuf_free(&answer);
	return rc;
}

/* Why a sandbox that should be starting is not: the runtime's account of it. */
static int explain_not_ready(struct lc_rt *l, const char *id, int rc, struct herr *err)
{
	struct rt_info info;
	struct herr qerr;

	if (rt_query(l->rt, id, &info, &qerr) < 0 || info.state != RT_STATE_STOPPED)
		return rc == -ETIMEDOUT ?
			herr_set(err, -ETIMEDOUT, "agent not listening after %u ms "
				 "(agent-ready-ms)", l->cfg.agent_ready_ms) : rc;
	if (info.reason == RT_EXIT_EXITED)
		return herr_set(err, -EIO, "the agent exited with status %d before it was "
				"ready", info.exit_status);
	return herr_set(err, -EIO, "the agent ended before it was ready (%s%s%s)",
			rt_exit_reason_name(info.reason), *info.message ? ": " : "",
			info.message);
}

/* The init's argv: through the bundle's own loader unless the agent is static. */
static void agent_argv(struct lc_rt *l, const struct lc_template *tpl,
		       char user[FLAG_MAX], char workdir[FLAG_MAX], const char *argv[12])
{
	int n = 0;

	snprintf(user, FLAG_MAX, "--default-user=%s", tpl->user);
	snprintf(workdir, FLAG_MAX, "--default-workdir=%s", tpl->workdir);
	if (l->bundled) {
		argv[n++] = RT_AGENT_MOUNT "/ld.so";
		argv[n++] = "--library-path";
		argv[n++] = RT_AGENT_MOUNT "/lib";
	}
	argv[n++] = RT_AGENT_MOUNT "/hutch-agent";
	argv[n++] = "--listen=127.0.0.1";
	argv[n++] = "--port=49983";
	argv[n++] = user;
	argv[n++] = workdir;
	argv[n] = NULL;
}

/* The runtime create and, when asked, the wait for the agent to listen; no
 * /init yet. */
static int boot(struct lc_rt *l, const char *id, const struct lc_template *tpl,
		const struct rt_limits *limits, const char *network, bool reuse_upper,
		bool wait_agent, long *ms, struct herr *err)
{
	char secret[TOKEN_HEX], secret_var[TOKEN_HEX + 32];
	/* The secret goes in the environment, not argv: argv of the sandbox's
	 * init is readable by every process inside it. */
	const char *env[] = {
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8", secret_var, NULL };
	char user[FLAG_MAX], workdir[FLAG_MAX];
	const char *argv[12];
	const char *layers[1] = { tpl->rootfs };
	json_t *net = json_loads(network, 0, NULL);
	struct rt_cidr a[MAX_CIDRS], d[MAX_CIDRS];
	struct rt_spec spec = {
		/* Built templates have several layers; folder ones their rootfs. */
		.id = id, .agent_dir = l->cfg.agent_dir,
		.layers = tpl->n_layers ? (const char *const *)tpl->layers : layers,
		.n_layers = tpl->n_layers ? tpl->n_layers : 1,
		.argv = argv, .env = env, .limits = *limits, .reuse_upper = reuse_upper,
	};
	struct timespec t0;
	int rc;

	agent_argv(l, tpl, user, workdir, argv);
	init_secret_of(l, id, secret);
	snprintf(secret_var, sizeof(secret_var), "HUTCH_INIT_SECRET=%s", secret);
	if (!*secret)
		env[2] = NULL;
	rc = policy_from_json(net, &spec.net, a, d, err);
	json_decref(net);
	if (rc < 0)
		return rc;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = rt_create(l->rt, &spec, err);
	if (rc < 0)
		return herr_wrap(err, "starting the sandbox");
	ms[0] = ms_since(&t0);
	if (!wait_agent)
		return 0;
	rc = rt_wait_port(l->rt, id, AGENT_PORT, l->cfg.agent_ready_ms, err);
	if (rc < 0)
		return explain_not_ready(l, id, rc, err);
	ms[1] = ms_since(&t0) - ms[0];
	return 0;
}

static void limits_of(const struct store_sandbox *sb, struct rt_limits *out)
{
	*out = (struct rt_limits){ .cpu_count = (unsigned)sb->cpu_count,
		.memory_mb = (uint64_t)sb->memory_mb, .pids = 4096,
		.disk_mb = (uint64_t)sb->disk_mb };
}

static int start(struct lc_rt *l, const struct store_sandbox *sb,
		 const struct lc_template *tpl, bool reuse_upper, struct herr *err)
{
	struct rt_limits limits;
	struct timespec t0;
	long ms[2] = { 0, 0 }, left;
	int rc;

	limits_of(sb, &limits);
	rc = boot(l, sb->id, tpl, &limits, sb->network, reuse_upper, true, ms, err);
	if (rc < 0)
		return rc;
	/* One budget for the agent to listen and answer /init. */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	left = (long)l->cfg.agent_ready_ms - ms[1];
	rc = agent_init(l, sb, tpl, left, NULL, err);
	if (rc < 0 && rc != -ETIMEDOUT)
		return explain_not_ready(l, sb->id, rc, err);
	/* A built template's start command; ready only once its ready command is. */
	if (rc == 0)
		rc = tmpl_start_in_sandbox(l->rt, sb->id, sb->access_token, tpl->start_cmd,
					   tpl->ready_cmd, tpl->workdir, TMPL_READY_CREATE_S,
					   err);
	if (rc == 0)
		log_debug("lifecycle", sb->id, "ready in %ld ms: runtime %ld, agent listening "
			  "%ld, init %ld", ms[0] + ms[1] + ms_since(&t0), ms[0], ms[1],
			  ms_since(&t0));
	return rc;
}

int lcrt_start(struct lc_rt *l, const struct store_sandbox *sb,
	       const struct lc_template *tpl, struct herr *err)
{
	return start(l, sb, tpl, false, err);
}

int lcrt_prestart(struct lc_rt *l, const char *id, const struct lc_template *tpl,
		  const struct lc_resources *res, struct herr *err)
{
	struct rt_limits limits = { .cpu_count = (unsigned)res->cpu_count,
		.memory_mb = (uint64_t)res->memory_mb, .pids = 4096,
		.disk_mb = (uint64_t)res->disk_mb };
	long ms[2];

	/* The default egress policy: the create's own is applied when taken. */
	return boot(l, id, tpl, &limits, "{}", false, true, ms, err);
}

int lcrt_finish_warm(struct lc_rt *l, const struct store_sandbox *sb,
		     const struct lc_template *tpl, struct herr *err)
{
	json_t *net = json_loads(sb->network, 0, NULL);
	struct timespec t0;
	int rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* Replacing the policy costs a firewall batch: only when it differs
	 * from the default one the sandbox was started with. */
	if (!policy_is_default(net))
		rc = lcrt_set_network(l, sb->id, net, err);
	json_decref(net);
	if (rc == 0)
		rc = agent_init(l, sb, tpl, (long)l->cfg.agent_ready_ms, NULL, err);
	if (rc < 0 && rc != -ETIMEDOUT)
		return explain_not_ready(l, sb->id, rc, err);
	if (rc == 0)
		rc = tmpl_start_in_sandbox(l->rt, sb->id, sb->access_token, tpl->start_cmd,
					   tpl->ready_cmd, tpl->workdir, TMPL_READY_CREATE_S,
					   err);
	if (rc == 0)
		log_debug("lifecycle", sb->id, "ready from the warm pool in %ld ms",
			  ms_since(&t0));
	return rc;
}

int lcrt_destroy(struct lc_rt *l, const char *id, struct herr *err)
{
	return rt_destroy(l->rt, id, err);
}

int lcrt_dial(struct lc_rt *l, const char *id, uint16_t port, struct herr *err)
{
	return rt_dial(l->rt, id, port, err);
}

struct each_ctx {
	int (*fn)(void *arg, const char *id);
	void *arg;
};

static int each_one(void *arg, const char *id, const struct rt_info *info)
{
	struct each_ctx *c = arg;

	return c->fn(c->arg, id);
}

int lcrt_each(struct lc_rt *l, int (*fn)(void *arg, const char *id), void *arg)
{
	struct each_ctx c = { fn, arg };

	return rt_list(l->rt, each_one, &c);
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

/*
 * A sandbox row's end reason from the runtime's account of its init (the
 * agent): a word first ("oom", "limit", "exited", "signal", "killed",
 * "error"), then what it means for the user.
 */
static void end_text(const struct rt_info *in, char *out, size_t len)
{
	const char *sig = sigabbrev_np(in->exit_signal);

	switch (in->reason) {
	case RT_EXIT_OOM:
		snprintf(out, len, "oom: the sandbox reached its memory limit and the kernel "
			 "killed its agent");
		break;
	case RT_EXIT_LIMIT:
		snprintf(out, len, "limit: the agent exited with status %d after the sandbox's "
			 "pids limit refused %llu forks", in->exit_status,
			 (unsigned long long)in->pids_refused);
		break;
	case RT_EXIT_EXITED:
		snprintf(out, len, "exited: the agent exited with status %d", in->exit_status);
		break;
	case RT_EXIT_SIGNAL:
		snprintf(out, len, "signal: the agent was killed by signal %d (SIG%s)",
			 in->exit_signal, sig ? sig : "?");
		break;
	case RT_EXIT_KILLED:
		snprintf(out, len, "killed");
		break;
	default:
		snprintf(out, len, "error: %s", *in->message ? in->message :
			 rt_exit_reason_name(in->reason));
	}
}

/* The runtime's exit monitor: ends it was asked for are not passed on. */
static void runtime_exit(void *arg, const char *id, const struct rt_info *info)
{
	struct lc_rt *l = arg;
	char why[512];

	if (info->reason == RT_EXIT_KILLED || !l->on_exit)
		return;
	end_text(info, why, sizeof(why));
	l->on_exit(l->exit_arg, id, why);
}

void lcrt_on_exit(struct lc_rt *l, lcrt_exit_fn fn, void *arg)
{
	l->on_exit = fn;
	l->exit_arg = arg;
	/* Takes the runtime's lock: the monitor sees the fields set above. */
	rt_set_exit_callback(l->rt, fn ? runtime_exit : NULL, l);
}

int lcrt_exit_reason(struct lc_rt *l, const char *id, char *out, size_t len)
{
	struct rt_info info;
	struct herr err;

	if (rt_query(l->rt, id, &info, &err) < 0 || info.state != RT_STATE_STOPPED)
		return 0;
	end_text(&info, out, len);
	return 1;
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

/* ---- pause and resume ---- */

/* Time the sandbox's processes get to end after SIGTERM in a memory-less
 * pause, so that programs can flush what they write before the disk is
 * unmounted; then the whole cgroup is killed. */
#define PAUSE_GRACE_MS 500

int lcrt_pause(struct lc_rt *l, const char *id, bool keep_memory,
	       struct rt_ckpt_stats *stats, struct herr *err)
{
	struct rt_ckpt_opts opts = { .criu = l->cfg.criu };
	int rc;

	if (keep_memory)
		return rt_checkpoint(l->rt, id, &opts, stats, err);
	rc = rt_stop(l->rt, id, PAUSE_GRACE_MS, err);
	/* The slot, network namespace and cgroups go; the disk image stays. */
	if (rc == 0)
		rc = rt_destroy_keep_upper(l->rt, id, err);
	return rc;
}

enum lcrt_paused lcrt_paused_kind(struct lc_rt *l, const char *id)
{
	if (rt_checkpoint_exists(l->rt, id))
		return LCRT_PAUSED_MEMORY;
	if (rt_upper_exists(l->rt, id))
		return LCRT_PAUSED_DISK;
	return LCRT_PAUSED_NONE;
}

int lcrt_known(struct lc_rt *l, const char *id)
{
	struct rt_info info;
	struct herr err;
	int rc = rt_query(l->rt, id, &info, &err);

	return rc == -ENOENT ? 0 : rc < 0 ? rc : 1;
}

void lcrt_drop_images(struct lc_rt *l, const char *id)
{
	struct herr err;

	if (rt_checkpoint_remove(l->rt, id, &err) < 0)
		log_warn("lifecycle", id, "removing its memory images: %s", err.msg);
}

int lcrt_release_keep_disk(struct lc_rt *l, const char *id, struct herr *err)
{
	int rc = rt_destroy_keep_upper(l->rt, id, err);

	return rc == -ENOENT ? 0 : rc;
}

/* The processes from the images, then the agent listening again. */
static int restore(struct lc_rt *l, const struct store_sandbox *sb,
		   const struct lc_template *tpl, struct herr *err)
{
	const char *layers[1] = { tpl->rootfs };
	struct rt_restore_spec spec = {
		.layers = tpl->n_layers ? (const char *const *)tpl->layers : layers,
		.n_layers = tpl->n_layers ? tpl->n_layers : 1,
		.agent_dir = l->cfg.agent_dir,
	};
	struct rt_ckpt_opts opts = { .criu = l->cfg.criu };
	struct rt_ckpt_stats stats = { 0 };
	int rc = rt_restore(l->rt, sb->id, &spec, &opts, &stats, err);

	if (rc < 0)
		return herr_wrap(err, "restoring the sandbox's processes");
	rc = rt_wait_port(l->rt, sb->id, AGENT_PORT, l->cfg.agent_ready_ms, err);
	if (rc < 0)
		return explain_not_ready(l, sb->id, rc, err);
	log_debug("lifecycle", sb->id, "restored in %llu ms (criu %llu ms, %llu bytes)",
		  (unsigned long long)stats.total_ms, (unsigned long long)stats.criu_ms,
		  (unsigned long long)stats.image_bytes);
	return 0;
}

/*
 * A memory-less pause comes back as a new process tree on the kept disk:
 * the agent is configured again with the same token and the template's
 * start command runs again. A failed start gives the disk back to the
 * paused state rather than deleting it.
 */
static int cold_resume(struct lc_rt *l, const struct store_sandbox *sb,
		       const struct lc_template *tpl, struct herr *err)
{
	int rc = lcrt_release_keep_disk(l, sb->id, err);

	if (rc == 0)
		rc = start(l, sb, tpl, true, err);
	if (rc < 0 && lcrt_known(l, sb->id) > 0)
		rt_destroy_keep_upper(l->rt, sb->id, NULL);
	return rc;
}

/*
 * A sandbox paused with its memory, started afresh on its disk instead, as
 * after a memory-less pause: when the caller asks for it (onResume
 * 'reboot'), or when images of an earlier boot could not be restored. The
 * images go first: a disk changed by the fresh start would no longer match
 * them.
 */
static int resume_without_memory(struct lc_rt *l, const struct store_sandbox *sb,
				 const struct lc_template *tpl, const char *why,
				 struct herr *err)
{
	log_warn("lifecycle", sb->id, "not restoring its memory (%s): resuming "
		 "from its disk, the start command runs again", why);
	int rc = rt_checkpoint_remove(l->rt, sb->id, err);

	return rc < 0 ? rc : cold_resume(l, sb, tpl, err);
}

static int restore_into_new(struct lc_rt *l, const struct store_sandbox *sb,
			    const struct lc_template *tpl, const struct rt_fork_source *fork,
			    struct rt_ckpt_stats *stats, long *start_ms, bool *made,
			    struct herr *err);

/*
 * Images of an earlier boot: the processes' network namespace, cgroups and
 * run dir died with it, and their slot may be another sandbox's now. The
 * sandbox is made again on its disk under the same id (whatever record of
 * it the runtime kept goes first) and the images are restored into it as a
 * fork's are (rt_restore with other_boot). Its agent is the one it had,
 * holding the same token and wanting the same init secret (same id):
 * nothing to re-key. The clocks inside go on from the pause (CRIU restores
 * a time namespace with offsets), so a sleep on a deadline does not hang.
 * If the restore fails the sandbox still comes back, afresh on its disk,
 * as it always did after a reboot; the log says why. If the sandbox cannot
 * even be made (all slots in use, say) nothing is wrong with the images and
 * a fresh start would fail the same way: the resume fails and they stay.
 */
static int resume_after_reboot(struct lc_rt *l, const struct store_sandbox *sb,
			       const struct lc_template *tpl, struct herr *err)
{
	struct rt_ckpt_stats stats = { 0 };
	char why[HERR_MSG_MAX + 128];
	struct herr cause;
	struct timespec t0;
	long start_ms = 0;
	bool made = false;
	int rc;

	/* Without time namespaces (a kernel without CONFIG_TIME_NS) CRIU
	 * restores the clocks as the new boot has them, near zero: a process
	 * sleeping to a deadline of the old boot would hang for as long as that
	 * boot had run. A fresh start is better than that. */
	if (access("/proc/self/ns/time", F_OK) < 0)
		return resume_without_memory(l, sb, tpl, "it was paused before the host "
					     "restarted, and this kernel has no time "
					     "namespaces to carry its clocks over", err);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = lcrt_release_keep_disk(l, sb->id, err);
	if (rc < 0)
		return rc;
	rc = restore_into_new(l, sb, tpl, NULL, &stats, &start_ms, &made, &cause);
	if (rc < 0 && !made) {
		*err = cause;
		return rc;
	}
	if (rc == 0) {
		log_info("lifecycle", sb->id, "resumed with its memory after the host "
			 "restarted in %ld ms (start %ld, criu %llu, images %llu bytes)",
			 ms_since(&t0), start_ms, (unsigned long long)stats.criu_ms,
			 (unsigned long long)stats.image_bytes);
		return 0;
	}
	snprintf(why, sizeof(why), "it was paused before the host restarted, and its "
		 "processes could not be restored: %s", cause.msg);
	return resume_without_memory(l, sb, tpl, why, err);
}

/*
 * A sandbox paused with its memory: its processes restored, or started
 * afresh on its disk when the caller asks for that or they cannot come back.
 */
static int resume_memory_pause(struct lc_rt *l, const struct store_sandbox *sb,
			       const struct lc_template *tpl, bool keep_memory,
			       struct herr *err)
{
	int known = lcrt_known(l, sb->id);

	/* A state file the runtime did not re-adopt (a damaged one, say; a slot
	 * beyond max-sandboxes stops the start instead) is no reboot: the
	 * namespace may be pinned still, and a start that reads it restores
	 * it. The images stay; a fresh start would trip over its leftovers. */
	if (known == 0 && rt_state_left(l->rt, sb->id))
		return herr_set(err, -EIO, "hutchd did not re-adopt the paused sandbox "
				"at its start (its log says why); its memory images "
				"are kept");
	if (!keep_memory)
		return resume_without_memory(l, sb, tpl, "the caller asked for "
					     "a fresh start", err);
	/* Only the boot id recorded with the images proves the processes'
	 * network namespace gone for good: then they are restored into a
	 * sandbox made anew. Anything else keeps them. */
	if (rt_checkpoint_from_other_boot(l->rt, sb->id))
		return resume_after_reboot(l, sb, tpl, err);
	if (known == 0)
		return herr_set(err, -EIO, "hutchd has no runtime record of the paused "
				"sandbox (another run dir?); its memory images are kept. "
				"Resuming with memory false (onResume 'reboot') starts it "
				"afresh on its disk");
	return restore(l, sb, tpl, err);
}

int lcrt_resume(struct lc_rt *l, const struct store_sandbox *sb,
		const struct lc_template *tpl, bool keep_memory, struct herr *err)
{
	switch (lcrt_paused_kind(l, sb->id)) {
	case LCRT_PAUSED_MEMORY:
		return resume_memory_pause(l, sb, tpl, keep_memory, err);
	case LCRT_PAUSED_DISK:
		return cold_resume(l, sb, tpl, err);
	default:
		return herr_set(err, -ENOENT, "sandbox %s has neither images nor a disk "
				"to resume from", sb->id);
	}
}

/*
 * A runtime sandbox made for images from elsewhere, as a create on the kept
 * disk makes it (slot and id range, netns and address, cgroups and limits,
 * its /etc/hostname and /etc/hosts); the runtime then ends what that start
 * ran and restores the images' processes in their place (rt_restore with a
 * fork source, or with other_boot for the sandbox's own images of an
 * earlier boot). Until the agent listens again.
 */
static int restore_into_new(struct lc_rt *l, const struct store_sandbox *sb,
			    const struct lc_template *tpl, const struct rt_fork_source *fork,
			    struct rt_ckpt_stats *stats, long *start_ms, bool *made,
			    struct herr *err)
{
	const char *layers[1] = { tpl->rootfs };
	struct rt_restore_spec spec = {
		.layers = tpl->n_layers ? (const char *const *)tpl->layers : layers,
		.n_layers = tpl->n_layers ? tpl->n_layers : 1,
		.agent_dir = l->cfg.agent_dir, .fork = fork, .other_boot = !fork,
	};
	struct rt_ckpt_opts opts = { .criu = l->cfg.criu };
	struct rt_limits limits;
	long ms[2] = { 0, 0 };
	int rc;

	limits_of(sb, &limits);
	rc = boot(l, sb->id, tpl, &limits, sb->network, true, false, ms, err);
	*start_ms = ms[0];
	*made = rc == 0;
	if (rc == 0 && (rc = rt_restore(l->rt, sb->id, &spec, &opts, stats, err)) < 0)
		herr_wrap(err, fork ? "restoring the snapshot's processes" :
			  "restoring the sandbox's processes");
	if (rc == 0 && (rc = rt_wait_port(l->rt, sb->id, AGENT_PORT, l->cfg.agent_ready_ms,
					  err)) < 0)
		rc = explain_not_ready(l, sb->id, rc, err);
	return rc;
}

/* The fork's own sandbox with the snapshot's processes; last the agent, the
 * source's, takes the fork's identity. */
int lcrt_fork(struct lc_rt *l, const struct store_sandbox *sb,
	      const struct lc_template *tpl, const struct lcrt_fork_from *from,
	      struct herr *err)
{
	struct rt_fork_source src = { .images = from->images, .hostname = from->source_id };
	struct rt_ckpt_stats stats = { 0 };
	struct timespec t0;
	long start_ms = 0;
	bool made;
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = restore_into_new(l, sb, tpl, &src, &stats, &start_ms, &made, err);
	if (rc == 0 && (rc = agent_init(l, sb, tpl, (long)l->cfg.agent_ready_ms, from,
					err)) < 0)
		herr_wrap(err, "handing the fork its identity");
	if (rc == 0)
		log_info("lifecycle", sb->id, "forked from %s with memory in %ld ms (start %ld, "
			 "criu %llu, images %llu bytes)", from->source_id, ms_since(&t0),
			 start_ms, (unsigned long long)stats.criu_ms,
			 (unsigned long long)stats.image_bytes);
	return rc;
}

int lcrt_copy_images(struct lc_rt *l, const char *id, const char *dir, int64_t *bytes,
		     struct herr *err)
{
	uint64_t n = 0;
	int rc = rt_checkpoint_copy(l->rt, id, dir, &n, err);

	*bytes = (int64_t)n;
	return rc;
}

int lcrt_remove_paused(struct lc_rt *l, const char *id, struct herr *err)
{
	int rc = rt_checkpoint_remove(l->rt, id, err);

	if (rc < 0)
		return rc;
	rc = rt_destroy(l->rt, id, err);
	if (rc == -ENOENT)
		rc = rt_upper_remove(l->rt, id, err);
	return rc;
}

void lcrt_stop(struct lc_rt *l, const char *id)
{
	rt_stop(l->rt, id, 0, NULL);
}

void lcrt_thaw(struct lc_rt *l, const char *id)
{
	rt_freeze(l->rt, id, false, NULL);
}
