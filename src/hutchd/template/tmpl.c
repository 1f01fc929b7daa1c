/*
 * The template registry (see tmpl.h): templates with their names, tags and
 * builds in one JSON document saved atomically after every change, build
 * logs in memory, uploaded archives on disk, and resolution of references
 * for sandbox creation. Everything a client sends is checked here before
 * it is stored: names and tags by ref.c's rules, files hashes as 64
 * lowercase hex (they become file names), build ids as UUIDs.
 */
#include "tmpl_internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cleanup.h"
#include "image.h"
#include "pull.h"
#include "log.h"

#define MAX_TAGS 32
#define MAX_STEPS 256
#define MAX_ARG_LEN (64 * 1024)
#define MAX_ARGS 512
#define LOG_ENTRIES_MAX 20000

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void rfc3339(int64_t ms, char out[48])
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;

	gmtime_r(&s, &tm);
	snprintf(out, 48, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (int)(ms % 1000));
}

static void path_in(struct tmpl_mgr *m, char *out, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void path_in(struct tmpl_mgr *m, char *out, size_t cap, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(out, cap, "%s/tmpl/", m->data_dir);

	va_start(ap, fmt);
	vsnprintf(out + n, cap - (size_t)n, fmt, ap);
	va_end(ap);
}

int tmpl_save_json(const char *path, json_t *j, struct herr *err)
{
	char tmp[4096 + 8];
	_cleanup_close_ int fd = -1;
	char *text = json_dumps(j, JSON_INDENT(1) | JSON_SORT_KEYS);
	size_t len;

	if (!text)
		return herr_set(err, -ENOMEM, "out of memory");
	len = strlen(text);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) < 0) {
		int r = herr_sys(err, -errno, "writing %s", tmp);
		free(text);
		unlink(tmp);
		return r;
	}
	free(text);
	if (rename(tmp, path) < 0)
		return herr_sys(err, -errno, "renaming %s", tmp);
	return 0;
}

static void note_stamp(struct tmpl_mgr *m, const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0) {
		m->reg_mtime = st.st_mtim;
		m->reg_ino = st.st_ino;
	}
}

static int save_registry(struct tmpl_mgr *m, struct herr *err)
{
	char path[4096];
	int rc;

	path_in(m, path, sizeof(path), "registry.json");
	rc = tmpl_save_json(path, m->reg, err);
	if (rc == 0)
		note_stamp(m, path);
	return rc;
}

int tmpl_save_registry(struct tmpl_mgr *m, struct herr *err)
{
	return save_registry(m, err);
}

/* Another process saved the registry (a rename: new inode): read it again. */
static void reload_if_changed(struct tmpl_mgr *m)
{
	char path[4096];
	struct stat st;
	json_error_t je;
	json_t *fresh;

	path_in(m, path, sizeof(path), "registry.json");
	if (stat(path, &st) < 0 || (st.st_ino == m->reg_ino &&
				    st.st_mtim.tv_sec == m->reg_mtime.tv_sec &&
				    st.st_mtim.tv_nsec == m->reg_mtime.tv_nsec))
		return;
	fresh = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!fresh || !json_is_object(json_object_get(fresh, "templates"))) {
		log_error("template", NULL, "%s changed but cannot be read (line %d: %s); "
			  "keeping the copy in memory", path, je.line, je.text);
		json_decref(fresh);
		return;
	}
	json_decref(m->reg);
	m->reg = fresh;
	m->reg_mtime = st.st_mtim;
	m->reg_ino = st.st_ino;
}

void reg_enter(struct tmpl_mgr *m)
{
	pthread_mutex_lock(&m->lock);
	/* Blocking is short: holders only read or rewrite one JSON file. */
	if (m->reg_lock_fd >= 0 && flock(m->reg_lock_fd, LOCK_EX) == 0)
		reload_if_changed(m);
}

void reg_leave(struct tmpl_mgr *m)
{
	if (m->reg_lock_fd >= 0)
		flock(m->reg_lock_fd, LOCK_UN);
	pthread_mutex_unlock(&m->lock);
}

static int random_chars(char *out, size_t n, const char *alphabet, struct herr *err)
{
	unsigned char rnd[64];
	size_t k = strlen(alphabet);

	if (n > sizeof(rnd) || getrandom(rnd, n, 0) != (ssize_t)n)
		return herr_sys(err, -EIO, "getrandom");
	for (size_t i = 0; i < n; i++)
		out[i] = alphabet[rnd[i] % k]; /* 252 of 256 unbiased enough for ids */
	out[n] = '\0';
	return 0;
}

static int new_uuid(char out[BUILD_ID_LEN + 1], struct herr *err)
{
	unsigned char b[16];

	if (getrandom(b, sizeof(b), 0) != sizeof(b))
		return herr_sys(err, -EIO, "getrandom");
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, BUILD_ID_LEN + 1,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
		 b[12], b[13], b[14], b[15]);
	return 0;
}

static json_t *templates(struct tmpl_mgr *m)
{
	return json_object_get(m->reg, "templates");
}

/* The registry entry named by id or name (lock held); *id_out its id. */
static json_t *find_template(struct tmpl_mgr *m, const char *ref, const char **id_out)
{
	struct tref r;
	const char *id;
	json_t *t, *name;
	size_t i;

	t = json_object_get(templates(m), ref);
	if (t) {
		*id_out = json_object_iter_key(json_object_iter_at(templates(m), ref));
		return t;
	}
	if (tref_parse(ref, &r, NULL) < 0 || r.ns[0])
		return NULL;
	json_object_foreach(templates(m), id, t)
		json_array_foreach(json_object_get(t, "names"), i, name)
			if (strcmp(json_string_value(name), r.name) == 0) {
				*id_out = id;
				return t;
			}
	return NULL;
}

static int64_t team_of(json_t *t)
{
	return json_integer_value(json_object_get(t, "team"));
}

static struct tbuild *find_build(struct tmpl_mgr *m, const char *id)
{
	for (struct tbuild *b = m->builds; b; b = b->next)
		if (strcmp(b->id, id) == 0)
			return b;
	return NULL;
}

static void tbuild_free(struct tbuild *b)
{
	json_decref(b->entries);
	json_decref(b->reason);
	json_decref(b->spec);
	json_decref(b->tags);
	free(b);
}

static int ensure_dirs(struct tmpl_mgr *m, struct herr *err)
{
	static const char *const sub[] = { "", "builds", "files", "cache", "images",
					   "images/layers" };
	char path[4096];

	for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
		path_in(m, path, sizeof(path), "%s", sub[i]);
		if (mkdir(path, 0700) < 0 && errno != EEXIST)
			return herr_sys(err, -errno, "creating %s", path);
	}
	path_in(m, path, sizeof(path), "registry.lock");
	m->reg_lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (m->reg_lock_fd < 0)
		return herr_sys(err, -errno, "opening %s", path);
	return layer_store_init(m->data_dir, err);
}

/* Builds cut short by a restart can never finish: they are marked failed. */
static void fail_orphan_builds(struct tmpl_mgr *m)
{
	const char *id, *bid;
	json_t *t, *b;

	json_object_foreach(templates(m), id, t)
		json_object_foreach(json_object_get(t, "builds"), bid, b) {
			const char *s = json_string_value(json_object_get(b, "status"));

			if (s && (!strcmp(s, "building") || !strcmp(s, "waiting"))) {
				json_object_set_new(b, "status", json_string("error"));
				json_object_set_new(b, "reason", json_string(
					"hutchd restarted during the build"));
			}
		}
}

static int load_registry(struct tmpl_mgr *m, struct herr *err)
{
	char path[4096];
	json_error_t je;

	path_in(m, path, sizeof(path), "registry.json");
	m->reg = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!m->reg) {
		if (access(path, F_OK) == 0)
			return herr_set(err, -EINVAL, "%s: line %d: %s", path, je.line, je.text);
		m->reg = json_pack("{s:{}}", "templates");
	}
	if (!m->reg || !json_is_object(templates(m)))
		return herr_set(err, -EINVAL, "%s: no 'templates' object", path);
	note_stamp(m, path);
	if (m->cfg.tool)
		return 0;
	fail_orphan_builds(m);
	return save_registry(m, err);
}

static void *gc_thread(void *arg)
{
	struct tmpl_mgr *m = arg;
	struct tmpl_gc_stats st;
	struct herr err = { 0 };
	bool again = true;

	while (again) {
		if (tmpl_gc(m, &st, &err) < 0)
			log_error("template", NULL, "gc: %s", err.msg);
		pthread_mutex_lock(&m->lock);
		again = m->gc_again && !m->stopping;
		m->gc_again = false;
		pthread_mutex_unlock(&m->lock);
	}
	pthread_mutex_lock(&m->lock);
	m->gc_running--;
	pthread_cond_broadcast(&m->idle);
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

/* Starts a GC in the background (one at a time; a request while one runs
 * makes it run once more). Commands (cfg.tool) run theirs explicitly. */
static void gc_soon(struct tmpl_mgr *m)
{
	pthread_t th;
	pthread_attr_t attr;

	if (m->cfg.tool)
		return;
	pthread_mutex_lock(&m->lock);
	if (m->gc_running || m->stopping) {
		m->gc_again = !m->stopping;
		pthread_mutex_unlock(&m->lock);
		return;
	}
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&th, &attr, gc_thread, m) == 0)
		m->gc_running++;
	pthread_attr_destroy(&attr);
	pthread_mutex_unlock(&m->lock);
}

int tmpl_open(const struct tmpl_config *cfg, struct tmpl_mgr **out, struct herr *err)
{
	struct tmpl_mgr *m = calloc(1, sizeof(*m));
	int rc;

	if (!m)
		return herr_set(err, -ENOMEM, "out of memory");
	m->cfg = *cfg;
	m->data_dir = strdup(cfg->data_dir);
	m->template_dir = strdup(cfg->template_dir);
	m->agent_dir = strdup(cfg->agent_dir ? cfg->agent_dir : "");
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->idle, NULL);
	if (!m->data_dir || !m->template_dir || !m->agent_dir) {
		tmpl_close(m);
		return herr_set(err, -ENOMEM, "out of memory");
	}
	m->cfg.data_dir = m->data_dir;
	m->cfg.template_dir = m->template_dir;
	m->cfg.agent_dir = m->agent_dir;
	m->reg_lock_fd = -1;
	rc = ensure_dirs(m, err);
	if (rc == 0) {
		reg_enter(m);
		json_decref(m->reg);
		m->reg = NULL;
		rc = load_registry(m, err);
		reg_leave(m);
	}
	if (rc < 0) {
		tmpl_close(m);
		return herr_wrap(err, "templates");
	}
	*out = m;
	gc_soon(m);
	return 0;
}

void tmpl_close(struct tmpl_mgr *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->stopping = true;
	while (m->running || m->gc_running)
		pthread_cond_wait(&m->idle, &m->lock);
	pthread_mutex_unlock(&m->lock);
	while (m->builds) {
		struct tbuild *b = m->builds;
		m->builds = b->next;
		tbuild_free(b);
	}
	json_decref(m->reg);
	if (m->reg_lock_fd >= 0)
		close(m->reg_lock_fd);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->idle);
	free(m->data_dir);
	free(m->template_dir);
	free(m->agent_dir);
	free(m);
}

/* tags: the request's list plus the name's ":tag", checked and deduplicated. */
static int collect_tags(json_t *given, const char *name_tag, json_t **out, struct herr *err)
{
	json_t *tags = json_array(), *v;
	size_t i;

	if (name_tag[0])
		json_array_append_new(tags, json_string(name_tag));
	if (given && !json_is_null(given) && !json_is_array(given)) {
		json_decref(tags);
		return herr_set(err, -EINVAL, "'tags' must be an array of strings");
	}
	json_array_foreach(given, i, v) {
		char tag[TREF_TAG_MAX + 2];
		bool dup = false;
		json_t *w;
		size_t j;

		if (!json_is_string(v) || json_string_length(v) > TREF_TAG_MAX) {
			json_decref(tags);
			return herr_set(err, -EINVAL, "'tags[%zu]' must be a tag of at most %d "
					"characters", i, TREF_TAG_MAX);
		}
		for (j = 0; j <= json_string_length(v); j++)
			tag[j] = (char)tolower((unsigned char)json_string_value(v)[j]);
		if (tref_tag_valid(tag, err) < 0) {
			json_decref(tags);
			return -EINVAL;
		}
		json_array_foreach(tags, j, w)
			dup |= strcmp(json_string_value(w), tag) == 0;
		if (!dup)
			json_array_append_new(tags, json_string(tag));
	}
	if (json_array_size(tags) > MAX_TAGS) {
		json_decref(tags);
		return herr_set(err, -EINVAL, "at most %d tags", MAX_TAGS);
	}
	if (json_array_size(tags) == 0)
		json_array_append_new(tags, json_string("default"));
	*out = tags;
	return 0;
}

static int int_field(json_t *body, const char *field, int64_t def, int64_t lo, int64_t hi,
		     int64_t *out, struct herr *err)
{
	json_t *v = json_object_get(body, field);

	*out = def;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return herr_set(err, -EINVAL, "'%s' must be an integer from %lld to %lld",
				field, (long long)lo, (long long)hi);
	*out = json_integer_value(v);
	return 0;
}

static struct tbuild *tbuild_new(const char *bid, const char *tid, int64_t team)
{
	struct tbuild *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	snprintf(b->id, sizeof(b->id), "%s", bid);
	snprintf(b->tid, sizeof(b->tid), "%s", tid);
	b->team = team;
	snprintf(b->status, sizeof(b->status), "waiting");
	b->entries = json_array();
	if (!b->entries) {
		free(b);
		return NULL;
	}
	return b;
}

/* Creates the template for name or checks the team owns it (lock held). */
static int claim_template(struct tmpl_mgr *m, int64_t team, const char *name,
			  const char **tid, json_t **t, struct herr *err)
{
	char id[TREF_ID_LEN + 1];

	if (strcmp(name, "base") == 0)
		return herr_set(err, -EEXIST, "the name 'base' is reserved for the node's "
				"base template");
	*t = find_template(m, name, tid);
	if (*t)
		return team_of(*t) == team ? 0 :
			herr_set(err, -EEXIST, "the name '%s' belongs to another team", name);
	do {
		if (random_chars(id, TREF_ID_LEN, "abcdefghijklmnopqrstuvwxyz0123456789",
				 err) < 0)
			return -EIO;
	} while (json_object_get(templates(m), id));
	*t = json_pack("{s:I,s:[s],s:I,s:{},s:{}}", "team", (json_int_t)team, "names", name,
		       "createdAt", (json_int_t)now_ms(), "tags", "builds");
	if (!*t || json_object_set_new(templates(m), id, *t) < 0)
		return herr_set(err, -ENOMEM, "out of memory");
	*tid = json_object_iter_key(json_object_iter_at(templates(m), id));
	return 0;
}

int tmpl_request(struct tmpl_mgr *m, int64_t team, json_t *body, json_t **reply,
		 struct herr *err)
{
	json_t *name = json_object_get(body, "name"), *tags = NULL, *t = NULL, *entry;
	char bid[BUILD_ID_LEN + 1];
	const char *tid;
	struct tref r;
	struct tbuild *b;
	int64_t cpu, mem;
	int rc;

	if (!name || json_is_null(name))
		name = json_object_get(body, "alias");
	if (!json_is_string(name))
		return herr_set(err, -EINVAL, "'name' is required and must be a string");
	rc = tref_parse(json_string_value(name), &r, err);
	if (rc == 0 && r.ns[0])
		rc = herr_set(err, -EINVAL, "template namespaces ('%s/') are not supported on "
			      "this node", r.ns);
	if (rc == 0)
		rc = collect_tags(json_object_get(body, "tags"), r.tag, &tags, err);
	if (rc == 0)
		rc = int_field(body, "cpuCount", 2, 1, 64, &cpu, err);
	if (rc == 0)
		rc = int_field(body, "memoryMB", 1024, 128, 1 << 20, &mem, err);
	if (rc == 0)
		rc = new_uuid(bid, err);
	if (rc < 0) {
		json_decref(tags);
		return rc;
	}
	reg_enter(m);
	rc = claim_template(m, team, r.name, &tid, &t, err);
	b = rc == 0 ? tbuild_new(bid, tid, team) : NULL;
	if (rc == 0 && !b)
		rc = herr_set(err, -ENOMEM, "out of memory");
	if (rc == 0) {
		entry = json_pack("{s:s,s:I,s:O,s:I,s:I}", "status", "waiting", "createdAt",
				  (json_int_t)now_ms(), "tags", tags, "cpuCount", (json_int_t)cpu,
				  "memoryMB", (json_int_t)mem);
		json_object_set_new(json_object_get(t, "builds"), bid, entry);
		rc = save_registry(m, err);
	}
	if (rc == 0) {
		b->tags = json_incref(tags);
		b->cpu = cpu;
		b->memory_mb = mem;
		b->next = m->builds;
		m->builds = b;
		*reply = json_pack("{s:s,s:s,s:b,s:O,s:O,s:O}", "templateID", tid, "buildID",
				   bid, "public", 0, "names", json_object_get(t, "names"),
				   "tags", tags, "aliases", json_object_get(t, "names"));
	} else if (b) {
		tbuild_free(b);
	}
	reg_leave(m);
	json_decref(tags);
	return rc;
}

/* The caller's template by id or name (lock held). */
static int own_template(struct tmpl_mgr *m, int64_t team, const char *ref, const char **tid,
			json_t **t, struct herr *err)
{
	*t = find_template(m, ref, tid);
	if (!*t)
		return herr_set(err, -ENOENT, "template '%.80s' not found", ref);
	if (team_of(*t) != team)
		return herr_set(err, -EPERM, "template '%.80s' belongs to another team", ref);
	return 0;
}

static int check_hash(const char *hash, struct herr *err)
{
	return tref_is_sha256(hash) ? 0 : herr_set(err, -EINVAL, "Invalid files hash");
}

static void files_path(struct tmpl_mgr *m, int64_t team, const char *hash, char *out,
		       size_t cap)
{
	path_in(m, out, cap, "files/%lld/%s", (long long)team, hash);
}

int tmpl_file_present(struct tmpl_mgr *m, int64_t team, const char *template_id,
		      const char *hash, struct herr *err)
{
	const char *tid;
	json_t *t;
	char path[4096];
	int rc = check_hash(hash, err);

	if (rc < 0)
		return rc;
	reg_enter(m);
	rc = own_template(m, team, template_id, &tid, &t, err);
	reg_leave(m);
	if (rc < 0)
		return rc;
	files_path(m, team, hash, path, sizeof(path));
	return access(path, F_OK) == 0 ? 1 : 0;
}

uint64_t tmpl_max_upload(struct tmpl_mgr *m)
{
	return m->cfg.max_upload_bytes;
}

int tmpl_upload_begin(struct tmpl_mgr *m, int64_t team, const char *hash, char *tmp,
		      size_t cap, struct herr *err)
{
	char dir[4096], rnd[17];
	int fd, rc = check_hash(hash, err);

	if (rc < 0)
		return rc;
	path_in(m, dir, sizeof(dir), "files/%lld", (long long)team);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return herr_sys(err, -errno, "creating %s", dir);
	rc = random_chars(rnd, 16, "0123456789abcdef", err);
	if (rc < 0)
		return rc;
	snprintf(tmp, cap, "%s/.up-%s-%s", dir, hash, rnd);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return herr_sys(err, -errno, "creating %s", tmp);
	return fd;
}

int tmpl_upload_commit(struct tmpl_mgr *m, int64_t team, const char *hash,
		       const char *tmp, struct herr *err)
{
	char path[4096];

	files_path(m, team, hash, path, sizeof(path));
	if (rename(tmp, path) < 0) {
		int r = herr_sys(err, -errno, "storing upload as %s", path);
		unlink(tmp);
		return r;
	}
	return 0;
}

/* ---- build start: the body is checked whole before anything runs ---- */

static int check_args(json_t *step, size_t i, const char *type, struct herr *err)
{
	json_t *args = json_object_get(step, "args"), *a;
	size_t j, n = json_array_size(args), need = 0;

	if (!json_is_array(args) || n > MAX_ARGS)
		return herr_set(err, -EINVAL, "'steps[%zu].args' must be an array of at most "
				"%d strings", i, MAX_ARGS);
	json_array_foreach(args, j, a)
		if (!json_is_string(a) || json_string_length(a) > MAX_ARG_LEN ||
		    strlen(json_string_value(a)) != json_string_length(a))
			return herr_set(err, -EINVAL, "'steps[%zu].args[%zu]' must be a string "
					"without NUL of at most %d bytes", i, j, MAX_ARG_LEN);
	if (!strcmp(type, "COPY"))
		need = 2;
	else if (!strcmp(type, "RUN") || !strcmp(type, "WORKDIR") || !strcmp(type, "USER"))
		need = 1;
	else if (!strcmp(type, "ENV"))
		need = n % 2 ? n + 1 : 0; /* pairs */
	if (n < need)
		return herr_set(err, -EINVAL, "'steps[%zu]': %s needs %s", i, type,
				!strcmp(type, "ENV") ? "name/value pairs" : "more arguments");
	if (!strcmp(type, "COPY")) {
		json_t *h = json_object_get(step, "filesHash");

		if (!json_is_string(h) || !tref_is_sha256(json_string_value(h)))
			return herr_set(err, -EINVAL, "'steps[%zu].filesHash' must be 64 "
					"lowercase hex characters", i);
	}
	return 0;
}

static int check_spec(json_t *body, struct herr *err)
{
	static const char *const types[] = { "COPY", "RUN", "ENV", "WORKDIR", "USER" };
	json_t *steps = json_object_get(body, "steps"), *s;
	size_t i;

	if (steps && !json_is_null(steps) &&
	    (!json_is_array(steps) || json_array_size(steps) > MAX_STEPS))
		return herr_set(err, -EINVAL, "'steps' must be an array of at most %d steps",
				MAX_STEPS);
	json_array_foreach(steps, i, s) {
		const char *type = json_string_value(json_object_get(s, "type"));
		bool known = false;

		for (size_t k = 0; type && k < sizeof(types) / sizeof(types[0]); k++)
			known |= strcmp(type, types[k]) == 0;
		if (!json_is_object(s) || !known)
			return herr_set(err, -EINVAL, "'steps[%zu].type' must be one of COPY, "
					"RUN, ENV, WORKDIR, USER", i);
		if (check_args(s, i, type, err) < 0)
			return -EINVAL;
	}
	for (i = 0; i < 4; i++) {
		static const char *const str[] = { "fromTemplate", "fromImage", "startCmd",
						   "readyCmd" };
		json_t *v = json_object_get(body, str[i]);

		if (v && !json_is_null(v) && (!json_is_string(v) ||
					      json_string_length(v) > MAX_ARG_LEN))
			return herr_set(err, -EINVAL, "'%s' must be a string", str[i]);
	}
	return 0;
}

struct build_arg {
	struct tmpl_mgr *m;
	struct tbuild *b;
};

static void *run_build(void *arg)
{
	struct build_arg *a = arg;

	tb_run(a->m, a->b);
	pthread_mutex_lock(&a->m->lock);
	a->m->running--;
	pthread_cond_broadcast(&a->m->idle);
	pthread_mutex_unlock(&a->m->lock);
	free(a);
	return NULL;
}

int tmpl_build_start(struct tmpl_mgr *m, int64_t team, const char *template_id,
		     const char *build_id, json_t *body, struct herr *err)
{
	struct build_arg *a;
	struct tbuild *b;
	pthread_attr_t attr;
	pthread_t th;
	const char *tid;
	json_t *t, *entry;
	int rc = check_spec(body, err);

	if (rc < 0)
		return rc;
	if (!tref_is_uuid(build_id))
		return herr_set(err, -EINVAL, "build id '%.64s' is not a UUID", build_id);
	reg_enter(m);
	rc = own_template(m, team, template_id, &tid, &t, err);
	entry = rc == 0 ? json_object_get(json_object_get(t, "builds"), build_id) : NULL;
	b = find_build(m, build_id);
	if (rc == 0 && (!entry || !b || strcmp(b->tid, tid) != 0))
		rc = herr_set(err, -EINVAL, "Build '%s' not found", build_id);
	if (rc == 0 && strcmp(b->status, "waiting") != 0)
		rc = herr_set(err, -EBUSY, "build '%s' was already started", build_id);
	if (rc == 0 && m->running >= m->cfg.max_builds)
		rc = herr_set(err, -EAGAIN, "%u builds are running already; retry later",
			      m->running);
	a = rc == 0 ? calloc(1, sizeof(*a)) : NULL;
	if (rc == 0 && !a)
		rc = herr_set(err, -ENOMEM, "out of memory");
	if (rc == 0) {
		a->m = m;
		a->b = b;
		b->spec = json_incref(body);
		snprintf(b->status, sizeof(b->status), "building");
		json_object_set_new(entry, "status", json_string("building"));
		save_registry(m, NULL);
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&th, &attr, run_build, a) != 0) {
			snprintf(b->status, sizeof(b->status), "waiting");
			free(a);
			rc = herr_set(err, -EAGAIN, "cannot start a build thread");
		} else {
			m->running++;
		}
		pthread_attr_destroy(&attr);
	}
	reg_leave(m);
	return rc;
}

void tb_log(struct tmpl_mgr *m, struct tbuild *b, const char *level, const char *step,
	    const char *fmt, ...)
{
	char msg[4096], ts[48];
	va_list ap;
	json_t *e;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	rfc3339(now_ms(), ts);
	e = json_pack("{s:s,s:s,s:s}", "timestamp", ts, "message", msg, "level", level);
	if (e && step)
		json_object_set_new(e, "step", json_string(step));
	pthread_mutex_lock(&m->lock);
	if (e && json_array_size(b->entries) < LOG_ENTRIES_MAX)
		json_array_append(b->entries, e);
	pthread_mutex_unlock(&m->lock);
	json_decref(e);
	log_debug("template", NULL, "build %s: %s", b->id, msg);
}

void tb_finish(struct tmpl_mgr *m, struct tbuild *b, bool ok, const char *step,
	       const char *message)
{
	json_t *t, *entry, *tag;
	size_t i;
	char ts[48];

	reg_enter(m);
	t = json_object_get(templates(m), b->tid);
	entry = t ? json_object_get(json_object_get(t, "builds"), b->id) : NULL;
	snprintf(b->status, sizeof(b->status), "%s", ok ? "ready" : "error");
	if (entry)
		json_object_set_new(entry, "status", json_string(b->status));
	if (!ok) {
		b->reason = json_pack("{s:s}", "message", message);
		if (step)
			json_object_set_new(b->reason, "step", json_string(step));
		if (entry)
			json_object_set_new(entry, "reason", json_string(message));
	} else if (t) {
		rfc3339(now_ms(), ts);
		json_array_foreach(b->tags, i, tag)
			json_object_set_new(json_object_get(t, "tags"), json_string_value(tag),
					    json_pack("{s:s,s:s}", "buildID", b->id,
						      "createdAt", ts));
	}
	if (save_registry(m, NULL) < 0)
		log_error("template", NULL, "build %s: the registry could not be saved",
			  b->id);
	reg_leave(m);
	log_info("template", NULL, "build %s of %s: %s%s%s", b->id, b->tid,
		 ok ? "ready" : "error", ok ? "" : ": ", ok ? "" : message);
}

int tmpl_build_status(struct tmpl_mgr *m, int64_t team, const char *template_id,
		      const char *build_id, int64_t offset, int64_t limit, json_t **reply,
		      struct herr *err)
{
	const char *tid;
	json_t *t, *entry, *logs, *slice;
	struct tbuild *b;
	int rc;

	reg_enter(m);
	rc = own_template(m, team, template_id, &tid, &t, err);
	entry = rc == 0 ? json_object_get(json_object_get(t, "builds"), build_id) : NULL;
	if (rc == 0 && !entry)
		rc = herr_set(err, -EINVAL, "Build '%.64s' not found", build_id);
	if (rc < 0) {
		reg_leave(m);
		return rc;
	}
	b = find_build(m, build_id);
	logs = json_array();
	slice = json_array();
	for (int64_t i = offset; b && i < offset + limit &&
	     i < (int64_t)json_array_size(b->entries); i++) {
		json_t *e = json_array_get(b->entries, (size_t)i);
		char line[4200];

		snprintf(line, sizeof(line), "[%s] %s", json_string_value(json_object_get(
			e, "timestamp")), json_string_value(json_object_get(e, "message")));
		json_array_append_new(logs, json_string(line));
		json_array_append(slice, e);
	}
	*reply = json_pack("{s:s,s:s,s:s,s:o,s:o}", "templateID", tid, "buildID", build_id,
			   "status", b ? b->status : json_string_value(json_object_get(
				   entry, "status")), "logs", logs, "logEntries", slice);
	if (b && b->reason)
		json_object_set(*reply, "reason", b->reason);
	else if (!b && json_object_get(entry, "reason"))
		json_object_set_new(*reply, "reason", json_pack("{s:O}", "message",
			json_object_get(entry, "reason")));
	reg_leave(m);
	return *reply ? 0 : herr_set(err, -ENOMEM, "out of memory");
}

/* ---- aliases, tags, delete ---- */

int tmpl_alias(struct tmpl_mgr *m, int64_t team, const char *alias, json_t **reply,
	       struct herr *err)
{
	const char *tid;
	json_t *t;
	struct tref r;
	int rc = tref_parse(alias, &r, err);

	if (rc < 0)
		return rc;
	if (strcmp(r.name, "base") == 0 && !r.ns[0]) {
		*reply = json_pack("{s:s,s:b}", "templateID", "base", "public", 1);
		return 0;
	}
	reg_enter(m);
	t = r.ns[0] ? NULL : find_template(m, r.name, &tid);
	if (!t)
		rc = herr_set(err, -ENOENT, "template alias '%s' not found", r.name);
	else if (team_of(t) != team)
		rc = herr_set(err, -EPERM, "template alias '%s' belongs to another team",
			      r.name);
	else
		*reply = json_pack("{s:s,s:b}", "templateID", tid, "public", 0);
	reg_leave(m);
	return rc;
}

static int tags_list_arg(json_t *body, json_t **tags, struct herr *err)
{
	json_t *given = json_object_get(body, "tags");

	if (!json_is_array(given) || json_array_size(given) == 0)
		return herr_set(err, -EINVAL, "'tags' must be a non-empty array of strings");
	return collect_tags(given, "", tags, err);
}

int tmpl_tags_assign(struct tmpl_mgr *m, int64_t team, json_t *body, json_t **reply,
		     struct herr *err)
{
	json_t *target = json_object_get(body, "target"), *tags = NULL, *t, *src, *tag;
	const char *tid, *bid;
	struct tref r;
	char ts[48];
	size_t i;
	int rc;

	if (!json_is_string(target))
		return herr_set(err, -EINVAL, "'target' is required and must be a string");
	rc = tref_parse(json_string_value(target), &r, err);
	if (rc == 0)
		rc = tags_list_arg(body, &tags, err);
	if (rc < 0)
		return rc;
	reg_enter(m);
	rc = own_template(m, team, r.name, &tid, &t, err);
	src = rc == 0 ? json_object_get(json_object_get(t, "tags"),
					r.tag[0] ? r.tag : "default") : NULL;
	if (rc == 0 && !src)
		rc = herr_set(err, -ENOENT, "template '%s' has no tag '%s'", r.name,
			      r.tag[0] ? r.tag : "default");
	if (rc == 0) {
		bid = json_string_value(json_object_get(src, "buildID"));
		rfc3339(now_ms(), ts);
		*reply = json_pack("{s:O,s:s}", "tags", tags, "buildID", bid);
		json_array_foreach(tags, i, tag)
			json_object_set_new(json_object_get(t, "tags"), json_string_value(tag),
					    json_pack("{s:s,s:s}", "buildID", bid,
						      "createdAt", ts));
		rc = save_registry(m, err);
	}
	reg_leave(m);
	json_decref(tags);
	return rc;
}

int tmpl_tags_remove(struct tmpl_mgr *m, int64_t team, json_t *body, struct herr *err)
{
	json_t *name = json_object_get(body, "name"), *tags = NULL, *t, *tag;
	const char *tid;
	struct tref r;
	size_t i;
	int rc;

	if (!json_is_string(name))
		return herr_set(err, -EINVAL, "'name' is required and must be a string");
	rc = tref_parse(json_string_value(name), &r, err);
	if (rc == 0)
		rc = tags_list_arg(body, &tags, err);
	if (rc < 0)
		return rc;
	reg_enter(m);
	rc = own_template(m, team, r.name, &tid, &t, err);
	json_array_foreach(tags, i, tag)
		if (rc == 0 && json_object_del(json_object_get(t, "tags"),
					       json_string_value(tag)) < 0)
			rc = herr_set(err, -ENOENT, "template '%s' has no tag '%s'", r.name,
				      json_string_value(tag));
	if (rc == 0)
		rc = save_registry(m, err);
	reg_leave(m);
	json_decref(tags);
	return rc;
}

int tmpl_tags_list(struct tmpl_mgr *m, int64_t team, const char *template_id,
		   json_t **reply, struct herr *err)
{
	const char *tid, *tag;
	json_t *t, *v;
	int rc;

	reg_enter(m);
	rc = own_template(m, team, template_id, &tid, &t, err);
	if (rc == 0) {
		*reply = json_array();
		json_object_foreach(json_object_get(t, "tags"), tag, v)
			json_array_append_new(*reply, json_pack("{s:s,s:O,s:O}", "tag", tag,
				"buildID", json_object_get(v, "buildID"),
				"createdAt", json_object_get(v, "createdAt")));
	}
	reg_leave(m);
	return rc;
}

/* The newest build of a registry entry (lock held), or NULL. */
static json_t *newest_build(json_t *t, const char **bid_out)
{
	json_t *b, *best = NULL;
	const char *bid;

	json_object_foreach(json_object_get(t, "builds"), bid, b) {
		json_int_t at = json_integer_value(json_object_get(b, "createdAt"));

		if (!best || at >= json_integer_value(json_object_get(best, "createdAt"))) {
			best = b;
			*bid_out = bid;
		}
	}
	return best;
}

static json_int_t int_or(json_t *obj, const char *key, json_int_t fallback)
{
	json_t *v = json_object_get(obj, key);

	return json_is_integer(v) ? json_integer_value(v) : fallback;
}

/* E2B's Template object for a registry entry (lock held). */
static json_t *template_json(const char *tid, json_t *t)
{
	const char *bid = "";
	json_t *b = newest_build(t, &bid), *status = json_object_get(b, "status");
	json_int_t created = int_or(t, "createdAt", 0);
	char created_at[48], updated_at[48];

	rfc3339(created, created_at);
	rfc3339(b ? int_or(b, "createdAt", created) : created, updated_at);
	return json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:O,s:O,s:b,s:I,s:n,s:n}",
			 "templateID", tid, "buildID", bid, "buildStatus",
			 json_is_string(status) ? json_string_value(status) : "waiting",
			 "buildCount", (json_int_t)json_object_size(json_object_get(t, "builds")),
			 "cpuCount", b ? int_or(b, "cpuCount", 2) : 2,
			 "memoryMB", b ? int_or(b, "memoryMB", 1024) : 1024,
			 "createdAt", created_at, "updatedAt", updated_at,
			 "names", json_object_get(t, "names"), "aliases", json_object_get(t, "names"),
			 "public", 0, "spawnCount", (json_int_t)0, "createdBy", "lastSpawnedAt");
}

int tmpl_list(struct tmpl_mgr *m, int64_t team, json_t **reply, struct herr *err)
{
	const char *tid;
	json_t *t, *one;

	*reply = json_array();
	if (!*reply)
		return herr_set(err, -ENOMEM, "out of memory");
	reg_enter(m);
	json_object_foreach(templates(m), tid, t) {
		if (team_of(t) != team)
			continue;
		one = template_json(tid, t);
		if (!one || json_array_append_new(*reply, one) < 0) {
			reg_leave(m);
			json_decref(*reply);
			*reply = NULL;
			return herr_set(err, -ENOMEM, "out of memory");
		}
	}
	reg_leave(m);
	return 0;
}

/* Keeps a deleted template's builds under "retired" for its sandboxes. */
static void retire(struct tmpl_mgr *m, const char *tid, json_t *t)
{
	json_t *retired = json_object_get(m->reg, "retired"), *bids = json_array(), *b;
	const char *bid;

	if (!json_is_object(retired)) {
		retired = json_object();
		json_object_set_new(m->reg, "retired", retired);
	}
	json_object_foreach(json_object_get(t, "builds"), bid, b)
		json_array_append_new(bids, json_string(bid));
	json_object_set_new(retired, tid, json_pack("{s:o,s:I}", "builds", bids,
						    "deletedAt", (json_int_t)now_ms()));
}

int tmpl_delete(struct tmpl_mgr *m, int64_t team, const char *ref, struct herr *err)
{
	const char *tid, *bid;
	json_t *t, *b;
	int rc;

	reg_enter(m);
	rc = own_template(m, team, ref, &tid, &t, err);
	if (rc == 0)
		json_object_foreach(json_object_get(t, "builds"), bid, b)
			if (!strcmp(json_string_value(json_object_get(b, "status")), "building"))
				rc = herr_set(err, -EBUSY, "template '%s' has a build running",
					      ref);
	if (rc == 0) {
		char id[TREF_ID_LEN + 1];

		snprintf(id, sizeof(id), "%s", tid);
		retire(m, id, t);
		json_object_del(templates(m), id);
		rc = save_registry(m, err);
	}
	reg_leave(m);
	if (rc == 0)
		gc_soon(m);
	return rc;
}

/* ---- image import ---- */

/* Checks that a build result makes a usable template (user, workdir, env). */
static int check_result(json_t *res, struct herr *err)
{
	_cleanup_free_ char *text = json_dumps(res, JSON_COMPACT);
	struct lc_template t = { 0 };
	int rc;

	if (!text)
		return herr_set(err, -ENOMEM, "out of memory");
	rc = tpl_parse(text, strlen(text), &t, err);
	tpl_clear(&t);
	return rc;
}

/*
 * Publishes a finished result as a ready build of the template name (the
 * result file first, then the registry): the same order as a build.
 */
static int publish_result(struct tmpl_mgr *m, int64_t team, const char *name_tag,
			  json_t *res, const char *source, json_t **reply, struct herr *err)
{
	char bid[BUILD_ID_LEN + 1], path[4096], ts[48];
	json_t *tags = NULL, *t, *tag;
	const char *tid;
	struct tref r;
	size_t i;
	int rc = tref_parse(name_tag, &r, err);

	if (rc == 0 && r.ns[0])
		rc = herr_set(err, -EINVAL, "template namespaces ('%s/') are not supported",
			      r.ns);
	if (rc == 0)
		rc = collect_tags(NULL, r.tag, &tags, err);
	if (rc == 0)
		rc = new_uuid(bid, err);
	if (rc == 0) {
		path_in(m, path, sizeof(path), "builds/%s.json", bid);
		rc = tmpl_save_json(path, res, err);
	}
	if (rc < 0) {
		json_decref(tags);
		return rc;
	}
	reg_enter(m);
	rc = claim_template(m, team, r.name, &tid, &t, err);
	if (rc == 0) {
		rfc3339(now_ms(), ts);
		json_object_set_new(json_object_get(t, "builds"), bid, json_pack(
			"{s:s,s:I,s:O,s:s}", "status", "ready", "createdAt", (json_int_t)now_ms(),
			"tags", tags, "source", source));
		json_array_foreach(tags, i, tag)
			json_object_set_new(json_object_get(t, "tags"), json_string_value(tag),
					    json_pack("{s:s,s:s}", "buildID", bid,
						      "createdAt", ts));
		rc = save_registry(m, err);
	}
	if (rc == 0)
		*reply = json_pack("{s:s,s:s,s:O,s:O,s:O}", "templateID", tid, "buildID", bid,
				   "names", json_object_get(t, "names"), "tags", tags,
				   "layers", json_object_get(res, "layers"));
	reg_leave(m);
	if (rc < 0)
		unlink(path);
	json_decref(tags);
	return rc;
}

/* tmpl/images/refs/<sha256 of the canonical reference>.json */
static int image_ref_path(struct tmpl_mgr *m, const char *ref, char *out, size_t cap,
			  struct herr *err)
{
	struct pull_ref r;
	char text[800], hex[LAYER_HASH_HEX];
	unsigned char d[32];
	unsigned len = 0;
	int rc = pull_parse_ref(ref, &r, err);

	if (rc < 0)
		return rc;
	pull_ref_text(&r, text, sizeof(text));
	EVP_Digest(text, strlen(text), d, &len, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
	path_in(m, out, cap, "images/refs/%s.json", hex);
	return 0;
}

/* Remembers the image under every name it carries, for fromImage. */
static void remember_refs(struct tmpl_mgr *m, json_t *res)
{
	json_t *refs = json_object_get(json_object_get(res, "image"), "refs"), *v;
	char path[4096];
	size_t i;

	path_in(m, path, sizeof(path), "images/refs");
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return;
	json_array_foreach(refs, i, v)
		if (image_ref_path(m, json_string_value(v), path, sizeof(path), NULL) == 0)
			tmpl_save_json(path, res, NULL);
}

static bool layers_present(struct tmpl_mgr *m, json_t *res)
{
	char path[4096];
	json_t *v;
	size_t i;

	json_array_foreach(json_object_get(res, "layers"), i, v)
		if (layer_path(m->data_dir, json_string_value(v) ?: "", path, sizeof(path),
			       NULL) < 0)
			return false;
	return json_array_size(json_object_get(res, "layers")) > 0;
}

static int pull_result(struct tmpl_mgr *m, const char *ref, json_t **res,
		       struct herr *err)
{
	struct pull_opts o = {
		.data_dir = m->data_dir, .insecure = m->cfg.insecure_registries,
		.max_bytes = m->cfg.max_image_bytes ? m->cfg.max_image_bytes : 16ULL << 30,
	};
	int rc = pull_image(&o, ref, res, err);

	if (rc == 0)
		rc = check_result(*res, err);
	if (rc == 0)
		remember_refs(m, *res);
	return rc;
}

int tmpl_image_result(struct tmpl_mgr *m, const char *ref, json_t **out,
		      struct herr *err)
{
	char path[4096];
	int rc = image_ref_path(m, ref, path, sizeof(path), err);

	if (rc < 0)
		return rc;
	*out = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
	if (*out && layers_present(m, *out))
		return 0;
	json_decref(*out);
	*out = NULL;
	return pull_result(m, ref, out, err);
}

/* The default template name of an image: its repository's last part. */
static void name_of_ref(const char *ref, char *out, size_t cap)
{
	struct pull_ref r;
	const char *base;

	if (pull_parse_ref(ref, &r, NULL) < 0) {
		snprintf(out, cap, "%s", ref);
		return;
	}
	base = strrchr(r.repo, '/');
	snprintf(out, cap, "%s", base ? base + 1 : r.repo);
}

int tmpl_pull(struct tmpl_mgr *m, int64_t team, const char *ref, const char *name,
	      json_t **reply, struct herr *err)
{
	_cleanup_close_ int hold = layer_store_hold(m->data_dir, err);
	char def[300];
	json_t *res = NULL;
	int rc;

	if (hold < 0)
		return hold;
	if (!name) {
		name_of_ref(ref, def, sizeof(def));
		name = def;
	}
	rc = pull_result(m, ref, &res, err);
	if (rc == 0)
		rc = publish_result(m, team, name, res, ref, reply, err);
	json_decref(res);
	return rc;
}

int tmpl_import(struct tmpl_mgr *m, int64_t team, const char *name, const char *path,
		json_t **reply, struct herr *err)
{
	uint64_t max = m->cfg.max_image_bytes ? m->cfg.max_image_bytes : 16ULL << 30;
	_cleanup_close_ int hold = layer_store_hold(m->data_dir, err);
	json_t *res = NULL;
	int rc;

	if (hold < 0)
		return hold;
	rc = img_import_path(m->data_dir, path, max, &res, err);
	if (rc == 0)
		rc = check_result(res, err);
	if (rc == 0)
		remember_refs(m, res);
	if (rc == 0)
		rc = publish_result(m, team, name, res, path, reply, err);
	json_decref(res);
	return rc;
}

/* ---- resolution ---- */

int tmpl_load_build(struct tmpl_mgr *m, const char *build_id, json_t **out,
		    struct herr *err)
{
	char path[4096];
	json_error_t je;

	if (!tref_is_uuid(build_id))
		return herr_set(err, -EINVAL, "build id '%.64s' is not a UUID", build_id);
	path_in(m, path, sizeof(path), "builds/%s.json", build_id);
	*out = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!*out)
		return herr_set(err, -ENOENT, "build %s has no result (%s)", build_id, je.text);
	return 0;
}

/* The build id a reference names, "" when none (lock held). */
static int ref_build(struct tmpl_mgr *m, const char *ref, char bid[BUILD_ID_LEN + 1],
		     struct herr *err)
{
	struct tref r;
	const char *tid;
	json_t *t, *tag;
	char copy[256], *colon;

	snprintf(copy, sizeof(copy), "%s", ref);
	colon = strchr(copy, ':');
	if (colon)
		*colon = '\0';
	if (tref_parse(ref, &r, err) < 0)
		return -ENOENT;
	t = find_template(m, tref_is_id(copy) ? copy : r.name, &tid);
	if (!t)
		return herr_set(err, -ENOENT, "template '%.80s' not found", ref);
	tag = json_object_get(json_object_get(t, "tags"), r.tag[0] ? r.tag : "default");
	if (!tag)
		return herr_set(err, -ENOENT, "template '%.80s' has no build tagged '%s'", ref,
				r.tag[0] ? r.tag : "default");
	snprintf(bid, BUILD_ID_LEN + 1, "%s", json_string_value(json_object_get(tag,
										"buildID")));
	return 0;
}

static int fill_template(struct tmpl_mgr *m, const char *name, json_t *res,
			 struct lc_template *out, struct herr *err)
{
	json_t *layers = json_object_get(res, "layers"), *l;
	const char *start = json_string_value(json_object_get(res, "startCmd"));
	const char *ready = json_string_value(json_object_get(res, "readyCmd"));
	_cleanup_free_ char *text = json_dumps(res, JSON_COMPACT);
	size_t i;
	int rc;

	if (!text)
		return herr_set(err, -ENOMEM, "out of memory");
	memset(out, 0, sizeof(*out));
	rc = tpl_parse(text, strlen(text), out, err);
	if (rc < 0)
		return rc;
	snprintf(out->name, sizeof(out->name), "%s", name);
	out->layers = calloc(json_array_size(layers) + 1, sizeof(char *));
	if (!out->layers)
		return herr_set(err, -ENOMEM, "out of memory");
	json_array_foreach(layers, i, l) {
		char path[4096], real[4096];

		rc = layer_path(m->data_dir, json_string_value(l) ? json_string_value(l) : "",
				path, sizeof(path), err);
		if (rc < 0)
			return rc;
		/* The base layer is a symlink to its rootfs: hand over the folder. */
		if (!realpath(path, real) || !(out->layers[i] = strdup(real)))
			return herr_sys(err, -errno, "layer %s", path);
		out->n_layers++;
	}
	if (out->n_layers == 0)
		return herr_set(err, -EINVAL, "template '%s' has no layers", name);
	snprintf(out->rootfs, sizeof(out->rootfs), "%s", out->layers[0]);
	if ((start && !(out->start_cmd = strdup(start))) ||
	    (ready && !(out->ready_cmd = strdup(ready))))
		return herr_set(err, -ENOMEM, "out of memory");
	return 0;
}

int tmpl_resolve(struct tmpl_mgr *m, int64_t team, const char *ref,
		 struct lc_template *out, struct herr *err)
{
	char bid[BUILD_ID_LEN + 1], name[TPL_NAME_MAX + 1] = "", copy[256];
	const char *tid = NULL, *tag;
	json_t *res = NULL, *t;
	int rc;

	snprintf(copy, sizeof(copy), "%s", ref);
	copy[strcspn(copy, ":")] = '\0';
	for (char *p = copy; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	tag = strchr(ref, ':');
	reg_enter(m);
	t = find_template(m, copy, &tid);
	/* Another team's template is answered as absent: its name says nothing. */
	if (!t || team_of(t) != team)
		rc = herr_set(err, -ENOENT, "template '%.80s' not found", ref);
	else
		rc = ref_build(m, ref, bid, err);
	if (rc == 0 && tag && strcasecmp(tag + 1, "default") != 0 &&
	    strlen(tid) + strlen(tag) <= TPL_NAME_MAX)
		snprintf(name, sizeof(name), "%.20s%.*s", tid, TPL_NAME_MAX - 20, tag);
	else if (rc == 0)
		snprintf(name, sizeof(name), "%.20s", tid);
	reg_leave(m);
	if (rc == 0)
		rc = tmpl_load_build(m, bid, &res, err);
	if (rc == 0) {
		for (char *p = name; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		rc = fill_template(m, name, res, out, err);
		if (rc < 0)
			tpl_clear(out);
	}
	json_decref(res);
	return rc;
}

static int from_base(struct tmpl_mgr *m, json_t **out, struct herr *err)
{
	struct lc_template base;
	char rootfs[4096], marker[4096], hash[LAYER_HASH_HEX];
	int rc = tpl_load(m->template_dir, "base", &base, err);

	if (rc < 0)
		return rc;
	snprintf(rootfs, sizeof(rootfs), "%s", base.rootfs);
	snprintf(marker, sizeof(marker), "%s/base/complete", m->template_dir);
	rc = layer_register_external(m->data_dir, rootfs, marker, hash, err);
	if (rc == 0) {
		*out = json_pack("{s:[s],s:s,s:s,s:O}", "layers", hash, "user", base.user,
				 "workdir", base.workdir, "env", base.env);
		if (!*out)
			rc = herr_set(err, -ENOMEM, "out of memory");
	}
	/* Absent means the node's default; 0 is not a valid value. */
	if (rc == 0 && base.disk_mb)
		json_object_set_new(*out, "diskMB", json_integer(base.disk_mb));
	tpl_clear(&base);
	return rc;
}

int tmpl_from(struct tmpl_mgr *m, int64_t team, const char *ref, json_t **out,
	      struct herr *err)
{
	char bid[BUILD_ID_LEN + 1], copy[256];
	const char *tid;
	json_t *t;
	int rc;

	snprintf(copy, sizeof(copy), "%s", ref);
	copy[strcspn(copy, ":")] = '\0';
	if (strcasecmp(copy, "base") == 0)
		return from_base(m, out, err);
	reg_enter(m);
	t = find_template(m, copy, &tid);
	if (t && team_of(t) != team)
		rc = herr_set(err, -EPERM, "template '%.80s' belongs to another team", ref);
	else
		rc = ref_build(m, ref, bid, err);
	reg_leave(m);
	if (rc < 0)
		return rc;
	return tmpl_load_build(m, bid, out, err);
}
