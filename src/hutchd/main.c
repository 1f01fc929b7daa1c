/*
 * hutchd: the Hutch host daemon. Runs the control plane (store, REST API,
 * lifecycle) and manages API keys:
 *
 *   hutchd [settings]                      run the daemon
 *   hutchd [settings] keys create [--team NAME]   print a new key on stdout
 *   hutchd [settings] keys list
 *   hutchd [settings] keys revoke ID
 *   hutchd [settings] templates import NAME[:TAG] FILE-OR-DIR [--team NAME]
 *   hutchd [settings] templates pull IMAGE [NAME[:TAG]] [--team NAME]
 *   hutchd [settings] templates gc
 *   hutchd [settings] settings [NAME]      the values in effect, or one
 *
 * When the API listens, stdout gets exactly the lines a shell needs to point
 * the E2B SDKs here; everything else goes to stderr.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "api.h"
#include "cleanup.h"
#include "config.h"
#include "ids.h"
#include "lifecycle.h"
#include "log.h"
#include "proxy.h"
#include "rt_checkpoint.h"
#include "store.h"
#include "tmpl.h"

static struct cfg_opt opts[] = {
	{ "data-dir", CFG_STR, "/var/lib/hutch", "state: database, secret, sandboxes" },
	{ "insecure-registries", CFG_STR, "",
	  "image registries pulled over plain http (host[:port],...); loopback always" },
	{ "template-upload-max-age", CFG_INT, "604800",
	  "seconds template GC keeps uploaded COPY archives" },
	{ "run-dir", CFG_STR, "/run/hutch", "runtime state, re-read after a restart" },
	{ "api-listen", CFG_STR, "127.0.0.1",
	  "IPv4 address the REST API and the sandbox proxy listen on" },
	{ "api-port", CFG_INT, "3000", "port of the REST API (E2B_API_URL)" },
	{ "proxy-port", CFG_INT, "3001", "port of the sandbox proxy (E2B_SANDBOX_URL)" },
	{ "domain", CFG_STR, "", "sandbox domain returned to clients ('' = none)" },
	{ "node-id", CFG_STR, NULL, "this node's name in the store (default: hostname)" },
	{ "log", CFG_STR, "info", NULL /* set by describe_log_setting */ },
	{ "envd-version", CFG_STR, "0.6.13", "agent protocol version told to the SDKs" },
	{ "default-timeout", CFG_INT, "300",
	  "sandbox timeout (s) when a create gives none (current SDKs send none)" },
	{ "secure-default", CFG_BOOL, "true",
	  "sandboxes get an agent access token unless the create says secure=false" },
	{ "max-timeout", CFG_INT, "3600", "plan: longest sandbox run (s); more is a 400" },
	{ "max-concurrent", CFG_INT, "0",
	  "plan: sandboxes alive per team (0 = only the node's max-sandboxes)" },
	{ "create-rate", CFG_INT, "12000", "plan: creates per minute per team (0 = no limit)" },
	{ "create-burst", CFG_INT, "200", "plan: creates allowed at once" },
	{ "request-rate", CFG_INT, "120000",
	  "plan: API requests per minute per team (0 = no limit)" },
	{ "request-burst", CFG_INT, "2000", "plan: API requests allowed at once" },
	{ "cpu-count", CFG_INT, "2", "CPUs of a sandbox" },
	{ "memory-mb", CFG_INT, "512", "memory of a sandbox (MiB)" },
	{ "disk-mb", CFG_INT, "2048", "writable disk of a sandbox (MiB)" },
	{ "max-sandboxes", CFG_INT, "1000", "sandboxes on this node at most" },
	{ "end-retention", CFG_INT, "3600", "seconds an ended sandbox's reason is kept" },
	{ "reaper-interval-ms", CFG_INT, "50", "how often deadlines are checked" },
	{ "agent-ready-ms", CFG_INT, "5000", "how long a new sandbox's agent may take" },
	{ "warm-pool", CFG_INT, "2",
	  "sandboxes of warm-template kept started ahead of creates (0 = none)" },
	{ "warm-template", CFG_STR, "base", "the template the warm pool holds" },
	{ "template-dir", CFG_STR, NULL, "templates (default: <data-dir>/templates)" },
	{ "agent-dir", CFG_STR, NULL,
	  "agent bundle made by scripts/agent-bundle (default: the build's)" },
	{ "cgroup-name", CFG_STR, "hutch",
	  "name of our cgroup subtree and nftables table" },
	{ "veth-prefix", CFG_STR, "hsb", "host-side veth names start with this (1-4 a-z)" },
	{ "net-cidr", CFG_STR, "10.213.0.0/16", "sandbox addresses" },
	{ "pool-size", CFG_INT, "4", "network namespaces prepared ahead" },
	{ "egress-conn-max", CFG_INT, "2500",
	  "outbound connections one sandbox may have open at once; the next one is "
	  "refused with a TCP reset (E2B allows 2500)" },
	{ "no-runtime", CFG_BOOL, "false",
	  "run the control plane without sandboxes (refused if the store holds live ones)" },
	{ "criu", CFG_STR, RT_CRIU_DEFAULT,
	  "CRIU binary for pauses that keep memory and their resumes "
	  "(scripts/setup-criu installs it)" },
	{ "max-connections", CFG_INT, "1000", "API connections at once" },
	{ "max-connections-per-ip", CFG_INT, "500",
	  "API connections from one client address (0 = no limit; behind a "
	  "front proxy all clients share its address)" },
	{ "proxy-max-connections", CFG_INT, "4096", "sandbox proxy connections at once" },
	{ "proxy-max-connections-per-ip", CFG_INT, "2048",
	  "sandbox proxy connections from one client address (0 = no limit)" },
	{ "head-timeout", CFG_INT, "20",
	  "seconds a connection has to send a whole request head, on the API and "
	  "proxy ports; sending it slowly does not extend this" },
	{ "proxy-idle-timeout", CFG_INT, "120",
	  "seconds an idle proxy client connection is kept (> 50 for streams)" },
};
#define NOPTS ((int)(sizeof(opts) / sizeof(opts[0])))

#define MAX_TIMEOUT_LIMIT_S (10 * 365 * 24 * 3600)

/* Far above any per-sandbox need; the host's conntrack table is the real
 * bound, and a value past it would only read as "no cap". */
#define EGRESS_CONN_LIMIT 1000000

/* The subsystems hutchd logs under: --log names no others. */
static const char *const log_subsystems[] = {
	"hutchd", "api", "proxy", "lifecycle", "runtime", "store", "template", NULL
};

/* Read when it exists and no --config or HUTCH_CONFIG names another. */
#define DEFAULT_CONFIG_FILE "/etc/hutch/hutchd.conf"

static const char summary[] =
	"The Hutch host daemon: E2B-compatible REST API, store and sandbox lifecycle.\n"
	"Commands: (none) run the daemon; keys create [--team NAME]; keys list;\n"
	"keys revoke ID; templates import NAME[:TAG] FILE-OR-DIR [--team NAME]\n"
	"(a docker save tarball or an OCI layout, folder or tarball); templates pull\n"
	"IMAGE [NAME[:TAG]] [--team NAME] (from its registry); templates gc (unused\n"
	"layers and old uploads); settings [NAME] (the values in effect, as config\n"
	"lines, or one value alone).";

static const char *S(const char *name)
{
	return cfg_str(opts, NOPTS, name);
}

static long long I(const char *name)
{
	return cfg_int(opts, NOPTS, name);
}

/* --help lists the subsystem names from the same table log_configure checks. */
static void describe_log_setting(void)
{
	static char help[640];

	log_set_subsystems(log_subsystems);
	log_spec_help(help, sizeof(help));
	cfg_find(opts, NOPTS, "log")->help = help;
}

static int make_dir(const char *path, mode_t mode)
{
	if (mkdir(path, mode) < 0 && errno != EEXIST) {
		fprintf(stderr, "hutchd: creating %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static int open_store(struct store **st)
{
	char path[4096], node[256] = "";
	const char *node_id = S("node-id");
	struct herr err;

	if (make_dir(S("data-dir"), 0700) < 0)
		return -1;
	if (!node_id || !*node_id) {
		gethostname(node, sizeof(node) - 1);
		node_id = node;
	}
	snprintf(path, sizeof(path), "%s/hutch.db", S("data-dir"));
	if (store_open(path, node_id, st, &err) < 0) {
		fprintf(stderr, "hutchd: %s\n", err.msg);
		return -1;
	}
	return 0;
}

/* ---- keys ---- */

static int create_key(struct store *st, const char *team, char key[APIKEY_LEN + 1],
		      struct herr *err)
{
	char hash[APIKEY_HASH_HEX], hint[APIKEY_HINT_MAX];
	int64_t team_id;
	int rc = store_team_ensure(st, team, &team_id, err);

	if (rc == 0)
		rc = apikey_generate(key, err);
	if (rc < 0)
		return rc;
	apikey_hash(key, hash);
	apikey_hint(key, hint);
	return store_key_add(st, team_id, hash, hint, NULL, err);
}

static int print_key(const struct store_key *k, void *ctx)
{
	printf("%lld\t%s\t%s\t%s\n", (long long)k->id, k->team, k->hint,
	       k->revoked_at ? "revoked" : "valid");
	return 0;
}

static const char *team_option(int argc, char **argv, int i)
{
	for (; i < argc; i++) {
		if (strncmp(argv[i], "--team=", 7) == 0)
			return argv[i] + 7;
		if (strcmp(argv[i], "--team") == 0 && i + 1 < argc)
			return argv[i + 1];
	}
	return "default";
}

/* The first word after "keys CMD" that CMD does not take, or NULL. */
static const char *stray_argument(int argc, char **argv, int i)
{
	int words = strcmp(argv[i], "revoke") == 0 ? 1 : 0;

	for (int j = i + 1; j < argc; j++) {
		bool create = strcmp(argv[i], "create") == 0;

		if (create && strncmp(argv[j], "--team=", 7) == 0)
			continue;
		if (create && strcmp(argv[j], "--team") == 0 && j + 1 < argc) {
			j++;
			continue;
		}
		if (words-- > 0)
			continue;
		return argv[j];
	}
	return NULL;
}

static int cmd_keys(int argc, char **argv, int i)
{
	struct store *st = NULL;
	char key[APIKEY_LEN + 1];
	struct herr err;
	int rc = -1;

	if (i >= argc) {
		fprintf(stderr, "hutchd keys: expected create, list or revoke\n");
		return 2;
	}
	if (stray_argument(argc, argv, i)) {
		fprintf(stderr, "hutchd keys %s: unexpected argument '%s'\n", argv[i],
			stray_argument(argc, argv, i));
		return 2;
	}
	if (open_store(&st) < 0)
		return 1;
	if (strcmp(argv[i], "create") == 0) {
		rc = create_key(st, team_option(argc, argv, i + 1), key, &err);
		if (rc == 0)
			printf("%s\n", key);
	} else if (strcmp(argv[i], "list") == 0) {
		printf("ID\tTEAM\tKEY\tSTATE\n");
		rc = store_key_list(st, print_key, NULL, &err);
	} else if (strcmp(argv[i], "revoke") == 0 && i + 1 < argc) {
		char *end;
		long long id = strtoll(argv[i + 1], &end, 10);

		rc = *end || end == argv[i + 1] ?
			herr_set(&err, -EINVAL, "key id '%s' is not a number", argv[i + 1]) :
			store_key_revoke(st, id, &err);
	} else {
		rc = herr_set(&err, -EINVAL, "unknown keys command '%s' (create, list, "
			      "revoke ID)", argv[i]);
	}
	if (rc < 0)
		fprintf(stderr, "hutchd keys: %s\n", err.msg);
	store_close(st);
	return rc < 0 ? 1 : 0;
}

/* ---- daemon ---- */

static void default_dirs(char *tpl, char *agent, size_t cap, const char *argv0)
{
	char self[2048];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	snprintf(tpl, cap, "%s/templates", S("data-dir"));
	self[n > 0 ? n : 0] = '\0';
	slash = strrchr(self, '/');
	if (slash)
		*slash = '\0';
	/* The build makes the bundle beside hutchd (src/hutchd/lifecycle); an
	 * install puts it in <prefix>/libexec/hutch. */
	snprintf(agent, cap, "%s/lifecycle/agent-bundle", *self ? self : ".");
	if (access(agent, F_OK) < 0)
		snprintf(agent, cap, "%s/../libexec/hutch/agent-bundle", *self ? self : ".");
}

/* A templates manager for a command run beside a possibly running daemon. */
static int open_templates(struct store *st, struct tmpl_mgr **m, struct herr *err)
{
	char tpl[4096], agent[4096];
	struct tmpl_config tc = { .data_dir = S("data-dir"), .tool = true,
				  .insecure_registries = S("insecure-registries"),
				  .upload_max_age_s = I("template-upload-max-age"),
				  .max_upload_bytes = 4ULL << 30, .max_copy_bytes = 8ULL << 30,
				  .max_builds = 2 };

	default_dirs(tpl, agent, sizeof(tpl), NULL);
	tc.store = st;
	tc.template_dir = S("template-dir") ? S("template-dir") : tpl;
	tc.agent_dir = S("agent-dir") ? S("agent-dir") : agent;
	return tmpl_open(&tc, m, err);
}

/* The words after "templates CMD" that are not --team and its value. */
static int plain_args(int argc, char **argv, int i, const char **out, int cap)
{
	int n = 0;

	for (; i < argc; i++) {
		if (strcmp(argv[i], "--team") == 0) {
			i++;
			continue;
		}
		if (strncmp(argv[i], "--team=", 7) == 0)
			continue;
		if (n == cap)
			return -1;
		out[n++] = argv[i];
	}
	return n;
}

static int templates_import(struct store *st, struct tmpl_mgr *m, int argc, char **argv,
			    int i, struct herr *err)
{
	const char *words[2];
	json_t *reply = NULL;
	int64_t team_id;
	char *text;
	int rc;

	if (plain_args(argc, argv, i, words, 2) != 2)
		return herr_set(err, -EINVAL, "usage: templates import NAME[:TAG] FILE-OR-DIR "
				"[--team NAME]");
	rc = store_team_ensure(st, team_option(argc, argv, i), &team_id, err);
	if (rc == 0)
		rc = tmpl_import(m, team_id, words[0], words[1], &reply, err);
	if (rc < 0)
		return rc;
	text = json_dumps(reply, JSON_COMPACT);
	printf("%s\n", text ? text : "{}");
	free(text);
	json_decref(reply);
	return 0;
}

static int templates_pull(struct store *st, struct tmpl_mgr *m, int argc, char **argv,
			  int i, struct herr *err)
{
	const char *words[2];
	int n = plain_args(argc, argv, i, words, 2);
	json_t *reply = NULL;
	int64_t team_id;
	char *text;
	int rc;

	if (n < 1 || n > 2)
		return herr_set(err, -EINVAL, "usage: templates pull IMAGE [NAME[:TAG]] "
				"[--team NAME]");
	rc = store_team_ensure(st, team_option(argc, argv, i), &team_id, err);
	if (rc == 0)
		rc = tmpl_pull(m, team_id, words[0], n > 1 ? words[1] : NULL, &reply, err);
	if (rc < 0)
		return rc;
	text = json_dumps(reply, JSON_COMPACT);
	printf("%s\n", text ? text : "{}");
	free(text);
	json_decref(reply);
	return 0;
}

static int templates_gc(struct tmpl_mgr *m, int argc, char **argv, int i,
			struct herr *err)
{
	struct tmpl_gc_stats st;
	int rc;

	if (i < argc)
		return herr_set(err, -EINVAL, "unexpected argument '%s'", argv[i]);
	rc = tmpl_gc(m, &st, err);
	if (rc < 0)
		return rc;
	printf("{\"layersRemoved\":%u,\"recordsRemoved\":%u,\"uploadsRemoved\":%u,"
	       "\"layersDeferred\":%s}\n", st.layers_removed, st.records_removed,
	       st.uploads_removed, st.deferred ? "true" : "false");
	return 0;
}

static int cmd_templates(int argc, char **argv, int i)
{
	struct store *st = NULL;
	struct tmpl_mgr *m = NULL;
	struct herr err = { 0 };
	int rc;

	if (i >= argc) {
		fprintf(stderr, "hutchd templates: import NAME FILE-OR-DIR | pull IMAGE [NAME] "
			"(--team NAME) | gc\n");
		return 2;
	}
	if (open_store(&st) < 0)
		return 1;
	rc = open_templates(st, &m, &err);
	if (rc == 0 && strcmp(argv[i], "import") == 0)
		rc = templates_import(st, m, argc, argv, i + 1, &err);
	else if (rc == 0 && strcmp(argv[i], "pull") == 0)
		rc = templates_pull(st, m, argc, argv, i + 1, &err);
	else if (rc == 0 && strcmp(argv[i], "gc") == 0)
		rc = templates_gc(m, argc, argv, i + 1, &err);
	else if (rc == 0)
		rc = herr_set(&err, -EINVAL, "unknown templates command '%s'", argv[i]);
	if (rc < 0)
		fprintf(stderr, "hutchd templates %s: %s\n", argv[i], err.msg);
	tmpl_close(m);
	store_close(st);
	return rc < 0 ? 1 : 0;
}

/*
 * "settings [NAME]": what defaults, the config file, flags and HUTCH_*
 * variables make of each setting, so that a script (scripts/start) need not
 * redo that layering to find, say, the template folder.
 */
static int cmd_settings(int argc, char **argv, int i)
{
	if (i + 1 < argc) {
		fprintf(stderr, "hutchd settings: unexpected argument '%s'\n", argv[i + 1]);
		return 2;
	}
	if (cfg_print_values(stdout, opts, NOPTS, i < argc ? argv[i] : NULL) < 0) {
		fprintf(stderr, "hutchd settings: no setting '%s' (see --help)\n", argv[i]);
		return 2;
	}
	return 0;
}

static int first_key_line(struct store *st, char *line, size_t cap)
{
	char key[APIKEY_LEN + 1];
	char self[1024];
	int64_t count = 0;
	struct herr err;
	ssize_t n;

	if (store_key_count_valid(st, &count, &err) < 0 ||
	    (count == 0 && create_key(st, "default", key, &err) < 0)) {
		fprintf(stderr, "hutchd: %s\n", err.msg);
		return -1;
	}
	if (count == 0) {
		snprintf(line, cap, "export E2B_API_KEY=%s", key);
		return 0;
	}
	/* Keys are stored hashed: name the exact command, since hutchd is
	 * usually run from the build folder, not from the PATH. */
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	self[n > 0 ? n : 0] = '\0';
	snprintf(line, cap, "# E2B_API_KEY is stored hashed and was shown once, when it was "
		 "made; make another with: %s keys create", n > 0 ? self : "hutchd");
	return 0;
}

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
	stop_signal = sig;
}

static void fill_api_config(struct api_config *c)
{
	*c = (struct api_config){
		.listen = S("api-listen"), .port = (unsigned)I("api-port"),
		.domain = S("domain"), .envd_version = S("envd-version"),
		.default_timeout_s = I("default-timeout"),
		.secure_default = I("secure-default") != 0,
		.cpu_count = I("cpu-count"), .memory_mb = I("memory-mb"),
		.disk_mb = I("disk-mb"), .max_body = 1 << 20,
		.max_connections = (unsigned)I("max-connections"),
		.max_per_ip = (unsigned)I("max-connections-per-ip"),
		.head_timeout_s = (unsigned)I("head-timeout"),
		.plan = {
			.create_rate = (double)I("create-rate") / 60.0,
			.create_burst = I("create-burst"),
			.request_rate = (double)I("request-rate") / 60.0,
			.request_burst = I("request-burst"),
			.max_concurrent = I("max-concurrent"),
			.max_timeout_s = I("max-timeout"),
		},
	};
}

static void fill_lc_config(struct lc_config *c, const char *tpl, const char *agent)
{
	*c = (struct lc_config){
		.data_dir = S("data-dir"), .run_dir = S("run-dir"), .template_dir = tpl,
		.agent_dir = agent, .net_cidr = S("net-cidr"), .cgroup_name = S("cgroup-name"),
		.veth_prefix = S("veth-prefix"),
		.max_sandboxes = (unsigned)I("max-sandboxes"),
		.pool_size = (unsigned)I("pool-size"),
		.egress_conn_max = (unsigned)I("egress-conn-max"),
		.agent_ready_ms = (unsigned)I("agent-ready-ms"),
		.reaper_interval_ms = I("reaper-interval-ms") > 0 ?
			I("reaper-interval-ms") : 50,
		.end_retention_ms = I("end-retention") * 1000,
		.no_runtime = I("no-runtime") != 0,
		.defaults = { .cpu_count = I("cpu-count"), .memory_mb = I("memory-mb"),
			      .disk_mb = I("disk-mb") },
		.warm_pool = I("warm-pool") > 0 ? (unsigned)I("warm-pool") : 0,
		.warm_template = S("warm-template"),
		.insecure_registries = S("insecure-registries"),
		.template_upload_max_age_s = I("template-upload-max-age"),
		.criu = S("criu"),
	};
}

static int check_settings(void)
{
	if (I("default-timeout") <= 0 || I("max-timeout") <= 0 ||
	    I("default-timeout") > I("max-timeout")) {
		fprintf(stderr, "hutchd: default-timeout must be from 1 to max-timeout\n");
		return -1;
	}
	/* Deadlines are milliseconds in an int64: ten years keeps every
	 * now + timeout * 1000 far from overflow. */
	if (I("max-timeout") > MAX_TIMEOUT_LIMIT_S) {
		fprintf(stderr, "hutchd: max-timeout must be at most %d seconds\n",
			MAX_TIMEOUT_LIMIT_S);
		return -1;
	}
	if (I("api-port") < 0 || I("api-port") > 65535 || I("proxy-port") < 0 ||
	    I("proxy-port") > 65535) {
		fprintf(stderr, "hutchd: api-port and proxy-port must be 0..65535\n");
		return -1;
	}
	if (I("egress-conn-max") < 1 || I("egress-conn-max") > EGRESS_CONN_LIMIT) {
		fprintf(stderr, "hutchd: egress-conn-max must be 1..%d\n", EGRESS_CONN_LIMIT);
		return -1;
	}
	if (I("head-timeout") < 1 || I("head-timeout") > 3600 ||
	    I("max-connections") < 1 || I("proxy-max-connections") < 1 ||
	    I("max-connections-per-ip") < 0 || I("proxy-max-connections-per-ip") < 0) {
		fprintf(stderr, "hutchd: head-timeout must be 1..3600 s, max-connections "
			"and proxy-max-connections above 0, the per-ip limits 0 or more\n");
		return -1;
	}
	return 0;
}

static void close_proxied(void *arg, const char *id)
{
	proxy_close_sandbox(arg, id);
}

static int start_proxy(struct store *st, struct lifecycle *lc,
		       const unsigned char *secret, struct proxy_backend *be,
		       struct proxy **out, struct herr *err)
{
	struct proxy_config pc = {
		.listen = S("api-listen"), .port = (unsigned)I("proxy-port"),
		.max_connections = (unsigned)I("proxy-max-connections"),
		.idle_timeout_s = (unsigned)I("proxy-idle-timeout"),
		.head_timeout_s = (unsigned)I("head-timeout"),
		.max_per_ip = (unsigned)I("proxy-max-connections-per-ip"),
	};
	int rc = proxy_backend_hutchd(st, lc, secret, be, err);

	if (rc == 0)
		rc = proxy_start(&pc, be, out, err);
	if (rc == 0)
		lc_set_end_hook(lc, close_proxied, *out);
	return rc;
}

/* Sandbox hosts are served on the API port too: one wildcard name and one
 * port can front both. */
static int start_api(struct api_config *ac, struct proxy *proxy, struct store *st,
		     struct lifecycle *lc, const unsigned char *secret, struct api **out,
		     struct herr *err)
{
	ac->proxy = proxy;
	return api_start(ac, st, lc, secret, out, err);
}

static void print_exports(unsigned api_port, unsigned proxy_port, const char *key_line)
{
	const char *host = strcmp(S("api-listen"), "0.0.0.0") == 0 ?
		"127.0.0.1" : S("api-listen");

	printf("export E2B_API_URL=http://%s:%u\n", host, api_port);
	printf("export E2B_SANDBOX_URL=http://%s:%u\n", host, proxy_port);
	printf("%s\n", key_line);
	fflush(stdout);
}

/* The addresses as fields of their own, for whoever reads the log. */
static void log_listening(struct api *api, struct proxy *proxy, struct store *st)
{
	char api_addr[128], proxy_addr[128], schema[16];

	snprintf(api_addr, sizeof(api_addr), "%s:%u", S("api-listen"), api_port(api));
	snprintf(proxy_addr, sizeof(proxy_addr), "%s:%u", S("api-listen"),
		 proxy_port(proxy));
	snprintf(schema, sizeof(schema), "%d", store_schema_version(st));
	log_kv(LOG_INFO, "hutchd", NULL, "listening", "api", api_addr, "proxy", proxy_addr,
	       "store_schema", schema, NULL);
}

/* The running daemon: what stop_daemon takes down, and what the parts'
 * configurations point to while they run. */
struct daemon {
	struct store *st;
	struct lifecycle *lc;
	struct api *api;
	struct proxy *proxy;
	struct proxy_backend be;
	unsigned char secret[SERVER_SECRET_LEN];
	char tpl[4096], agent[4096];
};

static void stop_daemon(struct daemon *d)
{
	/* Proxied streams through the API port end first, or its connection
	 * threads would hold api_stop() until their sandboxes spoke. */
	proxy_close_sandbox(d->proxy, NULL);
	api_stop(d->api);
	if (d->lc)
		lc_set_end_hook(d->lc, NULL, NULL);
	proxy_stop(d->proxy);
	proxy_backend_hutchd_free(&d->be);
	lc_stop(d->lc);
	store_close(d->st);
}

/* Starts the parts on the open store; what started is d's to stop. */
static int start_daemon(struct daemon *d, struct herr *err)
{
	char secret_path[4096];
	struct api_config ac;
	struct lc_config lcc;

	snprintf(secret_path, sizeof(secret_path), "%s/server-secret", S("data-dir"));
	default_dirs(d->tpl, d->agent, sizeof(d->tpl), NULL);
	fill_lc_config(&lcc, S("template-dir") ? S("template-dir") : d->tpl,
		       S("agent-dir") ? S("agent-dir") : d->agent);
	fill_api_config(&ac);
	lcc.server_secret = d->secret; /* read before lc_start uses it */
	if (server_secret_load(secret_path, d->secret, err) < 0 ||
	    lc_start(d->st, &lcc, &d->lc, err) < 0 ||
	    start_proxy(d->st, d->lc, d->secret, &d->be, &d->proxy, err) < 0 ||
	    start_api(&ac, d->proxy, d->st, d->lc, d->secret, &d->api, err) < 0)
		return err->code < 0 ? err->code : -EIO;
	return 0;
}

static int serve(void)
{
	_cleanup_(stop_daemon) struct daemon d = { 0 };
	char key_line[1400];
	struct herr err;

	if (check_settings() < 0 || open_store(&d.st) < 0)
		return 1;
	if (start_daemon(&d, &err) < 0) {
		log_error("hutchd", NULL, "%s", err.msg);
		return 1;
	}
	if (first_key_line(d.st, key_line, sizeof(key_line)) < 0)
		return 1;
	log_listening(d.api, d.proxy, d.st);
	print_exports(api_port(d.api), proxy_port(d.proxy), key_line);
	while (!stop_signal)
		pause();
	log_info("hutchd", NULL, "stopping on signal %d; sandboxes keep running",
		 (int)stop_signal);
	return 0;
}

/*
 * "hutchd keys create --team X --data-dir=D" must act on D, not on the
 * default data directory: settings given after the command are moved in
 * front of it (where cfg_load reads them); --team stays with the command.
 * A flag's separate value moves with it. Unknown flags move too, so
 * cfg_load names them; stray words are refused by cmd_keys.
 */
static bool flag_takes_value(const char *arg)
{
	char name[64];
	size_t len = strlen(arg + 2);
	struct cfg_opt *o;

	if (strchr(arg, '=') || len >= sizeof(name))
		return false;
	memcpy(name, arg + 2, len + 1);
	if (strcmp(name, "config") == 0)
		return true;
	o = cfg_find(opts, NOPTS, name);
	return o && o->type != CFG_BOOL;
}

static void hoist_settings(int argc, char **argv, char **out)
{
	int cmd = 1, n = 1, i;

	out[0] = argv[0];
	while (cmd < argc && strncmp(argv[cmd], "--", 2) == 0 && strcmp(argv[cmd], "--"))
		cmd += flag_takes_value(argv[cmd]) && cmd + 1 < argc ? 2 : 1;
	for (i = 1; i < cmd; i++)
		out[n++] = argv[i];
	for (i = cmd; i < argc; i++) {
		bool team = strcmp(argv[i], "--team") == 0 ||
			    strncmp(argv[i], "--team=", 7) == 0;

		if (strncmp(argv[i], "--", 2) != 0 || team || strcmp(argv[i], "--") == 0) {
			if (strcmp(argv[i], "--team") == 0 && i + 1 < argc)
				i++;
			continue;
		}
		out[n++] = argv[i];
		if (flag_takes_value(argv[i]) && i + 1 < argc)
			out[n++] = argv[++i];
	}
	for (i = cmd; i < argc; i++) {
		if (strncmp(argv[i], "--", 2) == 0 && strcmp(argv[i], "--team") &&
		    strncmp(argv[i], "--team=", 7) && strcmp(argv[i], "--")) {
			i += flag_takes_value(argv[i]) && i + 1 < argc;
			continue;
		}
		out[n++] = argv[i];
		if (strcmp(argv[i], "--team") == 0 && i + 1 < argc)
			out[n++] = argv[++i];
	}
	out[n] = NULL;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct herr err;
	int first = 1, rc;
	_cleanup_free_ char **args = calloc((size_t)argc + 1, sizeof(*args));

	if (!args)
		return 1;
	hoist_settings(argc, argv, args);
	argv = args;
	describe_log_setting();
	rc = cfg_load(opts, NOPTS, "hutchd", summary, DEFAULT_CONFIG_FILE, argc, argv,
		      &first, &err);
	if (rc == 1)
		return 0;
	if (rc < 0) {
		fprintf(stderr, "hutchd: %s\n", err.msg);
		return 2;
	}
	if (log_configure(S("log"), &err) < 0) {
		fprintf(stderr, "hutchd: setting log (from %s): %s\n",
			cfg_find(opts, NOPTS, "log")->from, err.msg);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (first < argc && strcmp(argv[first], "keys") == 0)
		rc = cmd_keys(argc, argv, first + 1);
	else if (first < argc && strcmp(argv[first], "templates") == 0)
		rc = cmd_templates(argc, argv, first + 1);
	else if (first < argc && strcmp(argv[first], "settings") == 0)
		rc = cmd_settings(argc, argv, first + 1);
	else if (first < argc)
		rc = (fprintf(stderr, "hutchd: unknown command '%s' (see --help)\n",
			      argv[first]), 2);
	else
		rc = serve();
	cfg_free(opts, NOPTS);
	return rc;
}
