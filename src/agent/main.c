/*
 * hutch-agent: the in-sandbox agent (E2B envd-compatible).
 *
 * Runs as PID 1 of a sandbox, or as an ordinary process on a host (tests).
 * Either way it reaps every child itself and ends cleanly on SIGTERM/SIGINT,
 * first asking the processes it started to stop, then killing what is left.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "config.h"
#include "filesystem.h"
#include "http.h"
#include "log.h"
#include "process.h"
#include "reaper.h"
#include "state.h"
#include "users.h"
#include "version.h"

/* How long processes get between SIGTERM and SIGKILL when the agent stops. */
#define STOP_GRACE_MS 2000

extern char **environ;

static struct cfg_opt agent_opts[] = {
	{ "listen", CFG_STR, "0.0.0.0", "address to listen on (numeric IPv4 or IPv6)" },
	{ "port", CFG_INT, "49983", "TCP port to listen on" },
	{ "etc-dir", CFG_STR, "/etc", "folder holding the passwd and group files" },
	{ "default-user", CFG_STR, "user",
	  "user for requests that name none (root when this user does not exist)" },
	{ "default-workdir", CFG_STR, NULL, "folder for requests with an empty path" },
	{ "access-token", CFG_STR, NULL,
	  "token every request must carry in X-Access-Token (unset: open)" },
	{ "max-connections", CFG_INT, "512", "simultaneous HTTP connections" },
	{ "init-secret", CFG_STR, NULL,
	  "secret POST /init must carry in X-Hutch-Init-Secret (hutchd sets it "
	  "through HUTCH_INIT_SECRET; unset: not required)" },
	{ "download-gzip", CFG_STR, "fallback",
	  "gzip downloads only for clients that refuse identity (fallback), "
	  "or whenever they prefer it (negotiate)" },
	{ "log", CFG_STR, "info", NULL /* set by describe_log_setting */ },
};
#define N_OPTS ((int)(sizeof(agent_opts) / sizeof(agent_opts[0])))

/* The subsystems the agent logs under: --log names no others. */
static const char *const log_subsystems[] = {
	"agent", "http", "rpc", "process", "reaper", "files", "filesystem", NULL
};

static const char *opt(const char *name)
{
	return cfg_str(agent_opts, N_OPTS, name);
}

/* --help lists the subsystem names from the same table log_configure checks. */
static void describe_log_setting(void)
{
	static char help[640];

	log_set_subsystems(log_subsystems);
	log_spec_help(help, sizeof(help));
	cfg_find(agent_opts, N_OPTS, "log")->help = help;
}

/*
 * Commands the agent starts inherit its environment, so the HUTCH_* settings
 * (one may hold the access token) are removed once read.
 */
static void scrub_environment(void)
{
	for (size_t i = 0; environ && environ[i];) {
		char name[256];
		const char *eq = strchr(environ[i], '=');
		size_t len = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);

		if (strncmp(environ[i], "HUTCH_", 6) != 0 || len >= sizeof(name)) {
			i++;
			continue;
		}
		memcpy(name, environ[i], len);
		name[len] = '\0';
		unsetenv(name); /* shifts the rest down: do not advance */
	}
}

/*
 * envd falls back to root when never told a default user; the configured
 * one ("user", as in E2B templates) is kept when it exists, else root is used
 * so a root filesystem without "user" still works.
 */
static void choose_default_user(void)
{
	struct agent_user u;
	struct herr err = { 0 };
	const char *name = opt("default-user");

	if (name && users_lookup(name, &u, &err) == 0) {
		state_set_default_user(name);
		return;
	}
	log_warn("agent", NULL, "default user '%s' not found in %s/passwd, using root",
		 name ? name : "", opt("etc-dir"));
	state_set_default_user("root");
}

static int apply_config(struct herr *err)
{
	const char *token = opt("access-token");
	const char *workdir = opt("default-workdir");

	if (log_configure(opt("log"), err) < 0)
		return herr_wrap(err, "setting log");
	if (token && strlen(token) >= STATE_TOKEN_MAX)
		return herr_set(err, -EINVAL, "access-token: longer than %d bytes",
				STATE_TOKEN_MAX - 1);
	if (workdir && *workdir && workdir[0] != '/')
		return herr_set(err, -EINVAL, "default-workdir: '%s' is not absolute", workdir);
	if (files_set_download_gzip(opt("download-gzip"), err) < 0)
		return err->code;
	users_set_etc_dir(opt("etc-dir"));
	choose_default_user();
	state_set_default_workdir(workdir);
	state_set_access_token(token);
	return 0;
}

/* Waits for SIGTERM, SIGINT or SIGHUP (blocked in every thread, see reaper.h). */
static int wait_for_stop(void)
{
	sigset_t set;
	siginfo_t info;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	for (;;) {
		int sig = sigwaitinfo(&set, &info);
		if (sig > 0)
			return sig;
		if (errno != EINTR)
			return -errno;
	}
}

/*
 * Signals the agent's own children (on a host, the agent must never signal
 * anything else). Each child's process group gets it too when the child leads
 * one, which covers pipelines a shell started. Returns how many were found.
 */
static int signal_children(int sig)
{
	_cleanup_closedir_ DIR *tasks = opendir("/proc/self/task");
	struct dirent *t;
	int found = 0;

	while (tasks && (t = readdir(tasks))) {
		char path[64], buf[4096];
		_cleanup_fclose_ FILE *f = NULL;

		if (t->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%.20s/children", t->d_name);
		f = fopen(path, "re");
		while (f && fscanf(f, "%4095s", buf) == 1) {
			pid_t pid = (pid_t)atoi(buf);
			if (pid <= 1)
				continue;
			found++;
			if (getpgid(pid) == pid)
				kill(-pid, sig);
			kill(pid, sig);
		}
	}
	return found;
}

/*
 * As PID 1 the whole namespace is ours: kill(-1) reaches every process but
 * the agent. On a host only the agent's children are signalled.
 */
static int signal_all(int sig)
{
	if (getpid() == 1)
		return kill(-1, sig) == 0 ? 1 : 0;
	return signal_children(sig);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* SIGTERM, a grace period while the reaper collects them, then SIGKILL. */
static void stop_processes(void)
{
	if (signal_all(SIGTERM) == 0)
		return;
	for (int waited = 0; waited < STOP_GRACE_MS; waited += 20) {
		sleep_ms(20);
		if (signal_all(0) == 0)
			return;
	}
	log_warn("agent", NULL, "processes still running after %d ms, killing them",
		 STOP_GRACE_MS);
	signal_all(SIGKILL);
	for (int waited = 0; waited < 1000 && signal_all(0) > 0; waited += 20)
		sleep_ms(20);
}

static int start(struct agent_server **server, struct herr *err)
{
	struct agent_server_opts so = {
		.listen_addr = opt("listen"),
		.port = (int)cfg_int(agent_opts, N_OPTS, "port"),
		.max_connections = (int)cfg_int(agent_opts, N_OPTS, "max-connections"),
		.init_secret = opt("init-secret"),
	};
	int r;

	if ((r = reaper_start(err)) < 0)
		return r;
	if ((r = process_service_init()) < 0)
		return herr_sys(err, r, "starting the process service");
	if ((r = filesystem_service_init()) < 0)
		return herr_sys(err, r, "starting the filesystem service");
	return agent_server_start(&so, server, err);
}

int main(int argc, char **argv)
{
	struct herr err = { 0 };
	struct agent_server *server = NULL;
	sigset_t blocked;
	int first_arg, r, sig;

	/*
	 * Before any thread exists: threads inherit this mask, so the signals
	 * are only ever taken synchronously by the reaper and wait_for_stop().
	 * SIGPIPE is ignored: a client hanging up must not end the agent.
	 */
	reaper_signals(&blocked);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	signal(SIGPIPE, SIG_IGN);
	/*
	 * Not dumpable: code in the sandbox, root with sudo included, may
	 * then not read /proc/1/mem or /proc/1/environ, nor take the agent's
	 * descriptors with pidfd_getfd: each needs CAP_SYS_PTRACE, which a
	 * sandbox never has. execve resets the flag, so the processes the
	 * agent starts stay dumpable and debuggable as usual.
	 */
	prctl(PR_SET_DUMPABLE, 0);

	describe_log_setting();
	r = cfg_load(agent_opts, N_OPTS, "hutch-agent",
		     "\nThe in-sandbox agent: speaks E2B's envd protocol "
		     "(HTTP and Connect RPC).", NULL, argc, argv, &first_arg, &err);
	if (r == 1)
		return 0;
	if (r == 0 && first_arg < argc)
		r = herr_set(&err, -EINVAL, "unexpected argument '%s'", argv[first_arg]);
	if (r == 0)
		r = apply_config(&err);
	scrub_environment();
	if (r == 0)
		r = start(&server, &err);
	if (r < 0) {
		log_error("agent", NULL, "%s", err.msg);
		cfg_free(agent_opts, N_OPTS);
		return 1;
	}

	log_info("agent", NULL, "ready listen=%s port=%lld pid=%d envd_version=%s secure=%s",
		 opt("listen"), cfg_int(agent_opts, N_OPTS, "port"), (int)getpid(),
		 AGENT_ENVD_VERSION, opt("access-token") ? "yes" : "no");
	sig = wait_for_stop();
	log_info("agent", NULL, "stopping on signal %d", sig);
	/* Open streams still report their processes' ends, then the server stops. */
	agent_server_quiesce(server);
	stop_processes();
	agent_server_stop(server);
	reaper_stop();
	cfg_free(agent_opts, N_OPTS);
	return 0;
}
