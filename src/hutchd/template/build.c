/*
 * The builder: runs a build's steps on top of the layers it starts from.
 *
 * RUN (and the user/folder creation behind USER and WORKDIR) runs in a
 * build sandbox made by the runtime from the layers so far, with the same
 * isolation as a user's sandbox: its init is /bin/sh with the command, its
 * output (the init's log) goes to the build log, and once it has exited
 * with 0 its writable layer (the upper folder on the sandbox disk) becomes
 * a new content-addressed layer. COPY extracts the uploaded archive into a
 * new layer with extract.c's checks, no sandbox needed. ENV changes only
 * the config.
 *
 * Each step has a cache key: sha256 of the previous key and the step (type,
 * args, files hash), starting from the key of the base layers. A key seen
 * before names its layer in tmpl/cache/<key>, and the step is reused and
 * logged "CACHED" unless the build or the step asks for force. Nothing is
 * visible before the end: the result file and the tags are written only
 * after the last step and the start/ready check succeeded.
 */
#include "tmpl_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "buf.h"
#include "cleanup.h"
#include "extract.h"
#include "log.h"
#include "rt.h"
#include "rt_internal.h"

#define OUTPUT_MAX (1 << 20)
#define BUILD_DISK_MB 8192
#define BUILD_PIDS 4096

extern char **environ;

/* What the build has made so far. */
struct bstate {
	struct tmpl_mgr *m;
	struct tbuild *b;
	json_t *cfg;        /* layers, user, workdir, env, resources */
	char key[LAYER_HASH_HEX];
	bool force;
	unsigned seq;       /* build sandboxes made, for their ids */
};

static void sha256_hex(const char *a, const char *b, char out[LAYER_HASH_HEX])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char d[32];
	unsigned len = 0;

	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	EVP_DigestUpdate(md, a, strlen(a));
	EVP_DigestUpdate(md, "\n", 1);
	EVP_DigestUpdate(md, b, strlen(b));
	EVP_DigestFinal_ex(md, d, &len);
	EVP_MD_CTX_free(md);
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Single-quoted for /bin/sh: every ' becomes '\''. */
static int sh_quote(struct hbuf *out, const char *s)
{
	int rc = hbuf_append_str(out, "'");

	for (; rc == 0 && *s; s++)
		rc = *s == '\'' ? hbuf_append_str(out, "'\\''") : hbuf_append(out, s, 1);
	return rc == 0 ? hbuf_append_str(out, "'") : rc;
}

static const char *cfg_str(struct bstate *s, const char *field)
{
	return json_string_value(json_object_get(s->cfg, field));
}

/* ---- the step cache ---- */

static void cache_path(struct bstate *s, const char *key, char *out, size_t cap)
{
	snprintf(out, cap, "%s/tmpl/cache/%s", s->m->data_dir, key);
}

/* 1 hit (layer set, "" for a step that changed nothing), 0 miss. */
static int cache_get(struct bstate *s, const char *key, char layer[LAYER_HASH_HEX])
{
	char path[4096], text[LAYER_HASH_HEX + 8], lp[4096];
	_cleanup_close_ int fd = -1;
	ssize_t n;

	cache_path(s, key, path, sizeof(path));
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || (n = read(fd, text, sizeof(text) - 1)) < 0)
		return 0;
	text[n] = '\0';
	text[strcspn(text, "\n")] = '\0';
	if (strcmp(text, "none") == 0) {
		layer[0] = '\0';
		return 1;
	}
	/* A cache entry whose layer is gone is a miss, not an error. */
	if (!tref_is_sha256(text) || layer_path(s->m->data_dir, text, lp, sizeof(lp),
						NULL) < 0)
		return 0;
	snprintf(layer, LAYER_HASH_HEX, "%.64s", text);
	return 1;
}

static void cache_put(struct bstate *s, const char *key, const char *layer)
{
	char path[4096], tmp[4200];
	_cleanup_close_ int fd = -1;
	const char *v = layer[0] ? layer : "none";

	cache_path(s, key, path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || write(fd, v, strlen(v)) != (ssize_t)strlen(v) || rename(tmp, path) < 0)
		log_warn("template", NULL, "step cache %s not written", path);
}

/*
 * Stacks a layer. Overlay refuses the same folder twice in one mount, so a
 * step whose changes are byte for byte those of an earlier layer is not
 * stacked again (see docs/templates.md for the rare case this changes).
 */
static void add_layer(struct bstate *s, const char *layer)
{
	json_t *layers = json_object_get(s->cfg, "layers"), *l;
	size_t i;

	if (!layer[0])
		return;
	json_array_foreach(layers, i, l)
		if (strcmp(json_string_value(l), layer) == 0) {
			tb_log(s->m, s->b, "warn", NULL, "the step's changes equal layer %zu; "
			       "it is not stacked again", i + 1);
			return;
		}
	json_array_append_new(layers, json_string(layer));
}

/* Host folders of the layers so far, lowest first (resolved symlinks). */
static int layer_dirs(struct bstate *s, char ***out, size_t *n, struct herr *err)
{
	json_t *layers = json_object_get(s->cfg, "layers"), *l;
	char **v = calloc(json_array_size(layers) + 1, sizeof(char *));
	size_t i;

	if (!v)
		return herr_set(err, -ENOMEM, "out of memory");
	json_array_foreach(layers, i, l) {
		char path[4096], real[4096];
		int rc = layer_path(s->m->data_dir, json_string_value(l), path, sizeof(path),
				    err);

		if (rc < 0 || !realpath(path, real) || !(v[i] = strdup(real))) {
			for (size_t j = 0; j < i; j++)
				free(v[j]);
			free(v);
			return rc < 0 ? rc : herr_sys(err, -errno, "layer %s", path);
		}
	}
	*out = v;
	*n = json_array_size(layers);
	return 0;
}

static void free_dirs(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* ---- build sandboxes ---- */

/* "K=V" strings: a base PATH and LANG, then the template's env. */
static char **make_env(struct bstate *s)
{
	json_t *env = json_object_get(s->cfg, "env"), *v;
	char **e = calloc(json_object_size(env) + 4, sizeof(char *));
	const char *k;
	size_t n = 0;

	if (!e)
		return NULL;
	e[n++] = strdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
	e[n++] = strdup("LANG=C.UTF-8");
	json_object_foreach(env, k, v) {
		size_t len = strlen(k) + json_string_length(v) + 2;

		if ((e[n] = malloc(len)))
			snprintf(e[n++], len, "%s=%s", k, json_string_value(v));
	}
	return e;
}

static void free_env(char **e)
{
	for (size_t i = 0; e && e[i]; i++)
		free(e[i]);
	free(e);
}

/*
 * Copies the init's log into the build log, one entry a line (bounded);
 * tail receives the last lines, for the reason of a failed step.
 */
static void log_output(struct bstate *s, const char *id, const char *step, bool err_level,
		       char *tail, size_t tail_cap)
{
	char path[4096], *line, *save = NULL;
	_cleanup_free_ char *buf = malloc(OUTPUT_MAX + 1);
	_cleanup_close_ int fd = -1;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/sandboxes/%s/init.log", s->m->data_dir, id);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || !buf)
		return;
	n = read(fd, buf, OUTPUT_MAX);
	if (n <= 0)
		return;
	buf[n] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		size_t have = strlen(tail);

		tb_log(s->m, s->b, err_level ? "error" : "info", step, "%s", line);
		if (have + strlen(line) + 4 >= tail_cap) {
			/* keep the end: drop the oldest line(s) */
			char *cut = strstr(tail, " | ");
			while (cut && strlen(cut + 3) + strlen(line) + 4 >= tail_cap)
				cut = strstr(cut + 3, " | ");
			if (cut)
				memmove(tail, cut + 3, strlen(cut + 3) + 1);
			else
				tail[0] = '\0';
			have = strlen(tail);
		}
		snprintf(tail + have, tail_cap - have, "%s%.*s", have ? " | " : "",
			 (int)(tail_cap - have - 4), line);
	}
}

static void drop_if_empty(int dir_fd, const char *name)
{
	_cleanup_close_ int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					O_CLOEXEC);
	char path[64], val[8];

	if (fd < 0 || !layer_tree_empty(fd))
		return;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (getxattr(path, "user.overlay.opaque", val, sizeof(val)) > 0)
		return;
	unlinkat(dir_fd, name, AT_REMOVEDIR);
}

/*
 * Copies the sandbox's upper folder into a new layer. The disk is mounted
 * detached (no path on the host a sandbox could race with) and read by
 * `cp -a` through /proc/self/fd: it keeps owners (in-sandbox ids, as every
 * layer stores them), modes, symlinks, and overlay's whiteouts and opaque
 * marks (user.overlay.* xattrs), which make deletions visible above lower
 * layers.
 */
static int capture_upper(struct bstate *s, const char *id, char layer[LAYER_HASH_HEX],
			 struct herr *err)
{
	static const char *const runtime_files[] = { "etc/resolv.conf", "etc/hosts",
						     "etc/hostname", ".hutch" };
	char disk[4096], tmp[4096], src[64];
	_cleanup_close_ int mfd = -1, tfd = -1;
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int status, rc;

	layer[0] = '\0';
	snprintf(disk, sizeof(disk), "%s/sandboxes/%s/disk.img", s->m->data_dir, id);
	mfd = rt_disk_mount_path(disk, err);
	if (mfd < 0)
		return mfd;
	rc = layer_tmp_create(s->m->data_dir, tmp, sizeof(tmp), err);
	if (rc < 0)
		return rc;
	snprintf(src, sizeof(src), "/proc/self/fd/3/upper/.");
	char *const argv[] = { "cp", "-a", "--no-target-directory", src, tmp, NULL };
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, mfd, 3);
	rc = posix_spawnp(&pid, "cp", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc != 0)
		rc = herr_sys(err, -rc, "running cp");
	else
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	if (rc == 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
		rc = herr_set(err, -EIO, "copying the step's changes into %s failed", tmp);
	tfd = rc == 0 ? open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (rc == 0 && tfd < 0)
		rc = herr_sys(err, -errno, "opening %s", tmp);
	/* Files the runtime writes at every start are not the step's work. */
	for (size_t i = 0; rc == 0 && i < sizeof(runtime_files) / sizeof(*runtime_files); i++)
		layer_remove_tree(tfd, runtime_files[i], NULL);
	/* Writing those copied /etc up; left empty (and not opaque) it says nothing. */
	if (rc == 0)
		drop_if_empty(tfd, "etc");
	if (rc == 0 && layer_tree_empty(tfd)) {
		char *slash = strrchr(tmp, '/');
		_cleanup_close_ int parent = -1;

		*slash = '\0';
		parent = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		*slash = '/';
		return parent >= 0 ? layer_remove_tree(parent, slash + 1, err) : 0;
	}
	if (rc == 0)
		return layer_commit(s->m->data_dir, tmp, layer, err);
	return rc;
}

/* Waits for the init to end; stops it after timeout_s. */
static int wait_exit(struct bstate *s, const char *id, unsigned timeout_s,
		     struct rt_info *info, struct herr *err)
{
	struct timespec t0, now, nap = { 0, 100 * 1000 * 1000 };
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		rc = rt_query(s->m->cfg.rt, id, info, err);
		if (rc < 0)
			return rc;
		if (info->state == RT_STATE_STOPPED)
			return 0;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - t0.tv_sec >= (time_t)timeout_s || s->m->stopping) {
			rt_stop(s->m->cfg.rt, id, 1000, NULL);
			return herr_set(err, -ETIMEDOUT, s->m->stopping ?
					"hutchd is stopping" : "the step ran longer than %u s",
					timeout_s);
		}
		nanosleep(&nap, NULL);
	}
}

/*
 * Runs script as the sandbox's init on the layers so far. On success and
 * when capture is set, layer receives the new layer ("" when nothing
 * changed).
 */
static int sandbox_run(struct bstate *s, const char *step, const char *script,
		       unsigned timeout_s, bool capture, char layer[LAYER_HASH_HEX],
		       struct herr *err)
{
	char id[RT_ID_MAX + 1], **dirs = NULL, **env = NULL, tail[256] = "";
	const char *argv[] = { "/bin/sh", "-c", script, NULL };
	struct rt_info info;
	size_t n = 0;
	int rc;

	if (!s->m->cfg.rt)
		return herr_set(err, -ENOSYS, "no sandbox runtime on this node: RUN steps "
				"cannot be built");
	snprintf(id, sizeof(id), "bld-%.8s-%u", s->b->id, ++s->seq);
	rc = layer_dirs(s, &dirs, &n, err);
	env = rc == 0 ? make_env(s) : NULL;
	if (rc == 0 && !env)
		rc = herr_set(err, -ENOMEM, "out of memory");
	if (rc == 0) {
		struct rt_spec spec = {
			.id = id, .layers = (const char *const *)dirs, .n_layers = n,
			.agent_dir = s->m->agent_dir, .argv = argv,
			.env = (const char *const *)env, .hostname = "build",
			.limits = {
				.cpu_count = (unsigned)s->b->cpu,
				.memory_mb = (uint64_t)s->b->memory_mb,
				.pids = BUILD_PIDS, .disk_mb = BUILD_DISK_MB,
			},
			.net = { .allow_internet = true },
		};
		rc = rt_create(s->m->cfg.rt, &spec, err);
	}
	free_dirs(dirs, n);
	free_env(env);
	if (rc < 0)
		return herr_wrap(err, "starting the build sandbox");
	rc = wait_exit(s, id, timeout_s, &info, err);
	if (rc == 0 && !(info.reason == RT_EXIT_EXITED && info.exit_status == 0)) {
		if (info.reason == RT_EXIT_EXITED)
			rc = herr_set(err, -EIO, "the command exited with status %d",
				      info.exit_status);
		else if (info.reason == RT_EXIT_OOM)
			rc = herr_set(err, -ENOMEM, "the command ran out of memory (%lld MB)",
				      (long long)s->b->memory_mb);
		else
			rc = herr_set(err, -EIO, "the command ended: %s %s",
				      rt_exit_reason_name(info.reason), info.message);
	}
	log_output(s, id, step, rc < 0, tail, sizeof(tail));
	if (rc < 0 && tail[0]) {
		char why[HERR_MSG_MAX];

		snprintf(why, sizeof(why), "%s", err->msg);
		herr_set(err, rc, "%.200s; output: %s", why, tail);
	}
	if (rc == 0 && capture)
		rc = capture_upper(s, id, layer, err);
	rt_destroy(s->m->cfg.rt, id, NULL);
	return rc;
}

/* The shell text that runs cmd as user in the current workdir. */
static int run_script(struct bstate *s, const char *cmd, const char *user,
		      struct hbuf *out)
{
	const char *wd = cfg_str(s, "workdir");
	int rc = hbuf_append_str(out, "cd ");

	if (rc == 0)
		rc = sh_quote(out, wd ? wd : "/");
	if (rc == 0)
		rc = hbuf_append_str(out, " 2>/dev/null || cd /\nexec 2>&1\n");
	if (rc == 0 && strcmp(user, "root") != 0) {
		rc = hbuf_append_str(out, "exec runuser -u ");
		if (rc == 0)
			rc = sh_quote(out, user);
		if (rc == 0)
			rc = hbuf_append_str(out, " -- /bin/sh -c ");
	} else if (rc == 0) {
		rc = hbuf_append_str(out, "exec /bin/sh -c ");
	}
	if (rc == 0)
		rc = sh_quote(out, cmd);
	return rc;
}

/* ---- steps ---- */

static const char *arg(json_t *step, size_t i)
{
	const char *v = json_string_value(json_array_get(json_object_get(step, "args"), i));
	return v ? v : "";
}

static int step_run_like(struct bstate *s, const char *step, const char *script,
			 struct herr *err)
{
	char layer[LAYER_HASH_HEX];
	int rc = sandbox_run(s, step, script, s->m->cfg.step_timeout_s, true, layer, err);

	if (rc < 0)
		return rc;
	cache_put(s, s->key, layer);
	add_layer(s, layer);
	return 0;
}

static int step_run(struct bstate *s, const char *step, json_t *st, struct herr *err)
{
	_cleanup_hbuf_ struct hbuf script;
	const char *user = arg(st, 1)[0] ? arg(st, 1) : cfg_str(s, "user");

	hbuf_init(&script, 1 << 20);
	if (run_script(s, arg(st, 0), user ? user : "root", &script) < 0)
		return herr_set(err, -E2BIG, "the RUN command is too long");
	return step_run_like(s, step, script.data, err);
}

/* USER: creates the user when missing, then makes it the default. */
static int step_user(struct bstate *s, const char *step, json_t *st, struct herr *err)
{
	_cleanup_hbuf_ struct hbuf script;
	const char *user = arg(st, 0);
	int rc;

	hbuf_init(&script, 4096);
	if (!user[0] || strlen(user) > TPL_USER_MAX || strspn(user,
	    "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(user))
		return herr_set(err, -EINVAL, "USER '%.64s' is not a valid user name", user);
	hbuf_printf(&script, "exec 2>&1\nid -u '%s' >/dev/null 2>&1 || "
		    "useradd -m -s /bin/bash '%s'", user, user);
	rc = step_run_like(s, step, script.data, err);
	if (rc == 0)
		json_object_set_new(s->cfg, "user", json_string(user));
	return rc;
}

/* WORKDIR's folder: absolute, or relative to the current workdir. */
static int workdir_full(struct bstate *s, const char *dir, char full[TPL_PATH_MAX],
			struct herr *err)
{
	const char *cur = cfg_str(s, "workdir");

	if (dir[0] == '/')
		snprintf(full, TPL_PATH_MAX, "%.*s", TPL_PATH_MAX - 1, dir);
	else
		snprintf(full, TPL_PATH_MAX, "%.*s/%.*s", 512, cur ? cur : "", 500, dir);
	if (!dir[0] || strstr(full, "/../") || strpbrk(full, "\n\r\t") ||
	    strlen(dir) >= TPL_PATH_MAX - 1)
		return herr_set(err, -EINVAL, "WORKDIR '%.200s' is not acceptable", dir);
	return 0;
}

/* WORKDIR: creates the folder (owned by the current user) when missing. */
static int step_workdir(struct bstate *s, const char *step, json_t *st, struct herr *err)
{
	_cleanup_hbuf_ struct hbuf script;
	const char *user = cfg_str(s, "user");
	char full[TPL_PATH_MAX];
	int rc;

	hbuf_init(&script, 16384);
	rc = workdir_full(s, arg(st, 0), full, err);
	if (rc < 0)
		return rc;
	rc = hbuf_append_str(&script, "exec 2>&1\nd=");
	if (rc == 0)
		rc = sh_quote(&script, full);
	if (rc == 0)
		rc = hbuf_append_str(&script, "\n[ -d \"$d\" ] || { mkdir -p \"$d\" && chown ");
	if (rc == 0)
		rc = sh_quote(&script, user ? user : "root");
	if (rc == 0)
		rc = hbuf_append_str(&script, ": \"$d\"; }");
	if (rc < 0)
		return herr_set(err, -E2BIG, "WORKDIR too long");
	rc = step_run_like(s, step, script.data, err);
	if (rc == 0)
		json_object_set_new(s->cfg, "workdir", json_string(full));
	return rc;
}

static int step_env(struct bstate *s, const char *step, json_t *st, struct herr *err)
{
	json_t *args = json_object_get(st, "args"), *env = json_object_get(s->cfg, "env");
	json_t *copy = json_deep_copy(env ? env : json_object());
	_cleanup_free_ char *text = NULL;
	struct lc_template probe = { 0 };
	int rc;

	for (size_t i = 0; i + 1 < json_array_size(args); i += 2)
		json_object_set_new(copy, arg(st, i), json_string(arg(st, i + 1)));
	/* The same checks a template's env gets when a sandbox is made from it. */
	json_t *wrap = json_pack("{s:o}", "env", copy);
	text = json_dumps(wrap, JSON_COMPACT);
	rc = text ? tpl_parse(text, strlen(text), &probe, err) : -ENOMEM;
	tpl_clear(&probe);
	if (rc == 0) {
		json_object_set(s->cfg, "env", json_object_get(wrap, "env"));
		tb_log(s->m, s->b, "info", step, "environment: %zu variable(s) set",
		       json_array_size(args) / 2);
	}
	json_decref(wrap);
	return rc < 0 ? herr_wrap(err, "ENV") : 0;
}

/* uid/gid of user from the topmost layer's /etc/passwd (never following links). */
static int lookup_user(struct bstate *s, const char *user, long *uid, long *gid,
		       struct herr *err)
{
	char **dirs = NULL;
	size_t n = 0;
	int rc = layer_dirs(s, &dirs, &n, err);

	if (rc < 0)
		return rc;
	rc = herr_set(err, -ENOENT, "user '%.64s' does not exist in the template", user);
	for (size_t i = n; i-- > 0 && rc == -ENOENT;) {
		struct open_how how = { .flags = O_RDONLY | O_CLOEXEC,
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS };
		_cleanup_close_ int root = open(dirs[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
		int fd = root < 0 ? -1 : (int)syscall(SYS_openat2, root, "etc/passwd", &how,
						       sizeof(how));
		FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
		char line[1024];

		if (!f) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		while (fgets(line, sizeof(line), f)) {
			char *save = NULL, *name = strtok_r(line, ":", &save);
			char *pw = strtok_r(NULL, ":", &save);
			char *u = strtok_r(NULL, ":", &save), *g = strtok_r(NULL, ":", &save);

			if (name && pw && u && g && strcmp(name, user) == 0) {
				*uid = strtol(u, NULL, 10);
				*gid = strtol(g, NULL, 10);
				rc = 0;
				break;
			}
		}
		fclose(f);
		if (rc == -ENOENT)
			break; /* the topmost passwd is the one that counts */
	}
	free_dirs(dirs, n);
	return rc;
}

static int copy_owner(struct bstate *s, const char *owner, long *uid, long *gid,
		      struct herr *err)
{
	char user[TPL_USER_MAX + 1], group[TPL_USER_MAX + 1];
	const char *colon = strchr(owner, ':');
	long dummy;
	int rc;

	if (!owner[0])
		owner = cfg_str(s, "user") ? cfg_str(s, "user") : "root";
	colon = strchr(owner, ':');
	snprintf(user, sizeof(user), "%.*s", colon ? (int)(colon - owner) : (int)strlen(owner),
		 owner);
	snprintf(group, sizeof(group), "%s", colon ? colon + 1 : user);
	rc = lookup_user(s, user, uid, gid, err);
	if (rc == 0 && colon && strcmp(group, user) != 0)
		rc = lookup_user(s, group, &dummy, gid, err); /* a user's primary group */
	return rc;
}

static int step_copy(struct bstate *s, const char *step, json_t *st, struct herr *err)
{
	const char *hash = json_string_value(json_object_get(st, "filesHash"));
	const char *mode_text = arg(st, 3);
	char path[4096], tmp[4096], layer[LAYER_HASH_HEX], **dirs = NULL;
	_cleanup_close_ int afd = -1, tfd = -1;
	int lower[64];
	size_t n = 0, nl = 0;
	struct tx_opts o = {
		.src = arg(st, 0), .dest = arg(st, 1), .mode = -1,
		.max_file_bytes = s->m->cfg.max_copy_bytes,
		.max_total_bytes = s->m->cfg.max_copy_bytes, .max_entries = 200000,
	};
	int rc;

	if (mode_text[0]) {
		char *end;
		long mode = strtol(mode_text, &end, 8);

		if (*end || mode < 0 || mode > 07777)
			return herr_set(err, -EINVAL, "COPY mode '%.16s' is not octal", mode_text);
		o.mode = (int)mode;
	}
	rc = copy_owner(s, arg(st, 2), &o.uid, &o.gid, err);
	if (rc < 0)
		return herr_wrap(err, "COPY owner");
	snprintf(path, sizeof(path), "%s/tmpl/files/%lld/%s", s->m->data_dir,
		 (long long)s->b->team, hash);
	afd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (afd < 0)
		return herr_set(err, -ENOENT, "the files of this COPY (%s) were not uploaded",
				hash);
	rc = layer_dirs(s, &dirs, &n, err);
	for (size_t i = n; rc == 0 && i-- > 0 && nl < 64;) {
		lower[nl] = open(dirs[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (lower[nl] >= 0)
			nl++;
	}
	free_dirs(dirs, n);
	o.lower_fds = lower;
	o.n_lower = nl;
	if (rc == 0)
		rc = layer_tmp_create(s->m->data_dir, tmp, sizeof(tmp), err);
	tfd = rc == 0 ? open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (rc == 0 && tfd < 0)
		rc = herr_sys(err, -errno, "opening %s", tmp);
	if (rc == 0)
		rc = tx_extract(afd, tfd, &o, err);
	for (size_t i = 0; i < nl; i++)
		close(lower[i]);
	if (rc >= 0) {
		tb_log(s->m, s->b, "info", step, "copied %d entries to %s", rc, o.dest);
		rc = layer_commit(s->m->data_dir, tmp, layer, err);
	} else if (tfd >= 0) {
		char *slash = strrchr(tmp, '/');
		_cleanup_close_ int parent = -1;

		*slash = '\0';
		parent = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (parent >= 0)
			layer_remove_tree(parent, slash + 1, NULL);
	}
	if (rc < 0)
		return rc;
	cache_put(s, s->key, layer);
	add_layer(s, layer);
	return 0;
}

/* The step as the cache sees it: type, args and files hash, nothing else. */
static char *step_identity(json_t *st)
{
	json_t *id = json_pack("{s:O,s:O}", "type", json_object_get(st, "type"), "args",
			       json_object_get(st, "args"));
	json_t *h = json_object_get(st, "filesHash");
	char *text;

	if (!id)
		return NULL;
	if (h)
		json_object_set(id, "filesHash", h);
	text = json_dumps(id, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(id);
	return text;
}

static int run_step(struct bstate *s, size_t i, size_t total, json_t *st, struct herr *err)
{
	const char *type = json_string_value(json_object_get(st, "type"));
	_cleanup_free_ char *ident = step_identity(st);
	char step[32], prev[LAYER_HASH_HEX], layer[LAYER_HASH_HEX];
	bool cacheable = strcmp(type, "ENV") != 0;

	if (!ident)
		return herr_set(err, -ENOMEM, "out of memory");
	snprintf(step, sizeof(step), "%zu", i + 1);
	snprintf(prev, sizeof(prev), "%s", s->key);
	sha256_hex(prev, ident, s->key);
	tb_log(s->m, s->b, "info", step, "[%zu/%zu] %s %.400s", i + 1, total, type,
	       arg(st, 0));
	if (cacheable && !s->force && !json_is_true(json_object_get(st, "force")) &&
	    cache_get(s, s->key, layer) == 1) {
		tb_log(s->m, s->b, "info", step, "CACHED [%zu/%zu] %s %.400s", i + 1, total,
		       type, arg(st, 0));
		add_layer(s, layer);
		if (!strcmp(type, "USER"))
			json_object_set_new(s->cfg, "user", json_string(arg(st, 0)));
		if (!strcmp(type, "WORKDIR")) {
			char full[TPL_PATH_MAX];

			if (workdir_full(s, arg(st, 0), full, err) < 0)
				return -EINVAL;
			json_object_set_new(s->cfg, "workdir", json_string(full));
		}
		return 0;
	}
	if (!strcmp(type, "RUN"))
		return step_run(s, step, st, err);
	if (!strcmp(type, "COPY"))
		return step_copy(s, step, st, err);
	if (!strcmp(type, "ENV"))
		return step_env(s, step, st, err);
	if (!strcmp(type, "USER"))
		return step_user(s, step, st, err);
	return step_workdir(s, step, st, err);
}

/*
 * The start and ready commands, tried once in a build sandbox from the
 * finished layers: the start command in the background, then the ready
 * command every 200 ms until it succeeds or ready_timeout_s passes. A
 * template whose ready command never succeeds is not published.
 */
static int check_start_ready(struct bstate *s, const char *start, const char *ready,
			     struct herr *err)
{
	const char *user = cfg_str(s, "user") ? cfg_str(s, "user") : "root";
	_cleanup_hbuf_ struct hbuf sc;
	_cleanup_hbuf_ struct hbuf rd;
	_cleanup_hbuf_ struct hbuf all;
	char layer[LAYER_HASH_HEX];
	int rc = 0;

	hbuf_init(&sc, 1 << 20);
	hbuf_init(&rd, 1 << 20);
	hbuf_init(&all, 3 << 20);
	if (start)
		rc = run_script(s, start, user, &sc);
	if (rc == 0 && ready)
		rc = run_script(s, ready, user, &rd);
	if (rc == 0)
		rc = hbuf_printf(&all, "exec 2>&1\n");
	if (rc == 0 && start) {
		rc = hbuf_append_str(&all, "( ");
		if (rc == 0)
			rc = hbuf_append(&all, sc.data, sc.len);
		if (rc == 0)
			rc = hbuf_append_str(&all, " ) &\nstart_pid=$!\n");
	}
	if (rc == 0 && ready) {
		rc = hbuf_printf(&all, "n=0\nuntil ( ");
		if (rc == 0)
			rc = hbuf_append(&all, rd.data, rd.len);
		if (rc == 0)
			rc = hbuf_printf(&all, " ) >/dev/null 2>&1; do\n  n=$((n+1))\n"
					 "  if [ $n -ge %u ]; then echo 'the ready command "
					 "did not succeed within %u s'; exit 1; fi\n"
					 /* A start command that ended cannot become ready. */
					 "  if [ -n \"$start_pid\" ] && ! kill -0 $start_pid "
					 "2>/dev/null; then wait $start_pid; echo \"the start "
					 "command ended (status $?) before the ready command "
					 "succeeded\"; exit 1; fi\n  sleep 0.2\ndone\n"
					 "echo 'the ready command succeeded'\n",
					 s->m->cfg.ready_timeout_s * 5, s->m->cfg.ready_timeout_s);
	}
	if (rc < 0)
		return herr_set(err, -E2BIG, "start/ready commands too long");
	tb_log(s->m, s->b, "info", "finalize", "checking the start and ready commands");
	return sandbox_run(s, "finalize", all.data, s->m->cfg.ready_timeout_s + 30, false,
			   layer, err);
}

static int save_result(struct bstate *s, struct herr *err)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/tmpl/builds/%s.json", s->m->data_dir, s->b->id);
	json_object_set_new(s->cfg, "cpuCount", json_integer(s->b->cpu));
	json_object_set_new(s->cfg, "memoryMB", json_integer(s->b->memory_mb));
	return tmpl_save_json(path, s->cfg, err);
}

/* The layers and config the build starts from, and the first cache key. */
static int start_from(struct bstate *s, json_t *spec, struct herr *err)
{
	const char *tpl = json_string_value(json_object_get(spec, "fromTemplate"));
	const char *img = json_string_value(json_object_get(spec, "fromImage"));
	_cleanup_free_ char *layers = NULL;
	int rc;

	/* The SDK's default image is the E2B base: ours is `base`. */
	if (!tpl && (!img || strncmp(img, "e2bdev/base", 11) == 0 || strcmp(img, "base") == 0))
		tpl = "base";
	if (tpl) {
		rc = tmpl_from(s->m, s->b->team, tpl, &s->cfg, err);
		if (rc < 0)
			return herr_wrap(err, "base template '%.80s'", tpl);
	} else {
		tb_log(s->m, s->b, "info", "base", "image %.200s: looking for it, pulling it "
		       "when it is not stored", img);
		rc = tmpl_image_result(s->m, img, &s->cfg, err);
		if (rc < 0)
			return herr_wrap(err, "image '%.200s'", img);
		/* Where the layers came from is the image's record, not the build's. */
		json_object_del(s->cfg, "image");
	}
	json_object_del(s->cfg, "startCmd");
	json_object_del(s->cfg, "readyCmd");
	layers = json_dumps(json_object_get(s->cfg, "layers"), JSON_COMPACT);
	if (!layers)
		return herr_set(err, -ENOMEM, "out of memory");
	sha256_hex("hutch-build-v1", layers, s->key);
	tb_log(s->m, s->b, "info", "base", "FROM %s (%zu layer(s))", tpl ? tpl : img,
	       json_array_size(json_object_get(s->cfg, "layers")));
	return 0;
}

void tb_run(struct tmpl_mgr *m, struct tbuild *b)
{
	struct bstate s = { .m = m, .b = b };
	/* Layers this build makes are named by no template until tb_finish:
	 * the shared store lock keeps GC away until then. */
	_cleanup_close_ int hold = layer_store_hold(m->data_dir, NULL);
	json_t *spec = b->spec, *steps = json_object_get(spec, "steps"), *st;
	struct herr err = { 0 };
	struct timespec t0, t1;
	char where[32] = "base";
	size_t i;
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	s.force = json_is_true(json_object_get(spec, "force"));
	rc = start_from(&s, spec, &err);
	json_array_foreach(steps, i, st) {
		if (rc < 0)
			break;
		snprintf(where, sizeof(where), "%zu", i + 1);
		rc = run_step(&s, i, json_array_size(steps), st, &err);
	}
	if (rc == 0) {
		snprintf(where, sizeof(where), "finalize");
		if (json_is_string(json_object_get(spec, "startCmd")))
			json_object_set(s.cfg, "startCmd", json_object_get(spec, "startCmd"));
		if (json_is_string(json_object_get(spec, "readyCmd")))
			json_object_set(s.cfg, "readyCmd", json_object_get(spec, "readyCmd"));
		const char *start = cfg_str(&s, "startCmd"), *ready = cfg_str(&s, "readyCmd");

		if (start || ready)
			rc = check_start_ready(&s, start, ready, &err);
	}
	if (rc == 0)
		rc = save_result(&s, &err);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (rc == 0) {
		tb_log(m, b, "info", "finalize", "build finished in %.1f s: %zu layer(s)",
		       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
		       json_array_size(json_object_get(s.cfg, "layers")));
		tb_finish(m, b, true, NULL, NULL);
	} else {
		tb_log(m, b, "error", where, "%s", err.msg);
		tb_finish(m, b, false, where, err.msg);
	}
	json_decref(s.cfg);
}
