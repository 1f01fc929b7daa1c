/*
 * Garbage collection of templates (tmpl_gc, see tmpl.h): layers no
 * template needs, the records that pointed at them, and old uploads.
 *
 * What keeps a layer:
 *  - a build result (tmpl/builds/<id>.json) of any build the registry
 *    lists, whatever its tags: a sandbox made from an older build of a
 *    template keeps working after the tag moved on;
 *  - a build result of a deleted template while a sandbox of the store
 *    that is not ended (creating, running or paused) names that template:
 *    tmpl_delete keeps the deleted template's builds under "retired" in
 *    the registry until then (for ever when GC has no store to ask);
 *  - the base rootfs: layers/<id> symlinks are never touched.
 * The step cache and the image records (tmpl/images) are not references:
 * entries naming a removed layer are removed with it.
 *
 * Why it is safe against concurrent work: a build, import or pull holds
 * the layer store lock shared (layer_store_hold) from before it makes its
 * first layer until its result is registered, and GC only removes layers
 * while holding that lock exclusive, taken without waiting: when anyone
 * holds it, layer removal is skipped this time (uploads are still
 * considered). The set of references is computed under the registry lock
 * after the store lock is held, so no result can appear in between. A
 * layer is renamed to layers/.tmp-gc-* before its files are removed, so
 * a crash half way never leaves a partial layer under a valid name (the
 * next start removes .tmp-* leftovers).
 */
#include "tmpl_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "store.h"

#define UPLOAD_MAX_AGE_DEFAULT_S (7 * 24 * 3600)

static void path_of(struct tmpl_mgr *m, char *out, size_t cap, const char *sub)
{
	snprintf(out, cap, "%s/%s", m->data_dir, sub);
}

/* Adds the layers of tmpl/builds/<bid>.json to keep. */
static void keep_build(struct tmpl_mgr *m, const char *bid, json_t *keep)
{
	json_t *res = NULL, *l;
	size_t i;

	if (tmpl_load_build(m, bid, &res, NULL) < 0)
		return;
	json_array_foreach(json_object_get(res, "layers"), i, l)
		if (json_is_string(l))
			json_object_set_new(keep, json_string_value(l), json_true());
	json_decref(res);
}

static int add_live_template(const struct store_sandbox *s, void *ctx)
{
	char tid[TREF_ID_LEN + 1];

	snprintf(tid, sizeof(tid), "%.*s", (int)strcspn(s->template_id, ":"),
		 s->template_id);
	json_object_set_new(ctx, tid, json_true());
	return 0;
}

/* Template ids that sandboxes not ended name (creating, running, paused). */
static int live_templates(struct tmpl_mgr *m, json_t **out, struct herr *err)
{
	*out = json_object();
	if (!*out)
		return herr_set(err, -ENOMEM, "out of memory");
	if (!m->cfg.store)
		return 0;
	return store_sandbox_each(m->cfg.store, NULL, add_live_template, *out, err);
}

static void remove_build_file(struct tmpl_mgr *m, const char *bid)
{
	char path[4096];

	if (!tref_is_uuid(bid))
		return;
	snprintf(path, sizeof(path), "%s/tmpl/builds/%s.json", m->data_dir, bid);
	unlink(path);
}

/*
 * The layers to keep (registry lock held). Retired templates that no
 * sandbox names any more are dropped here, with their build files.
 */
static int collect_keep(struct tmpl_mgr *m, json_t *live, json_t *keep, bool *changed)
{
	json_t *retired = json_object_get(m->reg, "retired"), *t, *b, *v;
	const char *tid, *bid;
	void *tmp;
	size_t i;

	json_object_foreach(json_object_get(m->reg, "templates"), tid, t)
		json_object_foreach(json_object_get(t, "builds"), bid, b)
			keep_build(m, bid, keep);
	json_object_foreach_safe(retired, tmp, tid, t) {
		/* Without a store nobody can tell which sandboxes run: keep. */
		if (!m->cfg.store || json_object_get(live, tid)) {
			json_array_foreach(json_object_get(t, "builds"), i, v)
				keep_build(m, json_string_value(v), keep);
			continue;
		}
		json_array_foreach(json_object_get(t, "builds"), i, v)
			remove_build_file(m, json_string_value(v));
		json_object_del(retired, tid);
		*changed = true;
	}
	return 0;
}

static bool is_layer_name(const char *s)
{
	return strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

/* Renames the layer out of its name, then removes its files. */
static int drop_layer(int layers_fd, const char *name, struct herr *err)
{
	char gone[128];

	snprintf(gone, sizeof(gone), ".tmp-gc-%s", name);
	if (renameat(layers_fd, name, layers_fd, gone) < 0)
		return herr_sys(err, -errno, "moving layer %s aside", name);
	return layer_remove_tree(layers_fd, gone, err);
}

static int sweep_layers(struct tmpl_mgr *m, json_t *keep, json_t *dropped,
			struct tmpl_gc_stats *st, struct herr *err)
{
	char path[4096];
	_cleanup_close_ int fd = -1;
	DIR *d;
	struct dirent *e;
	int rc = 0;

	path_of(m, path, sizeof(path), "layers");
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return herr_sys(err, -errno, "opening %s", path);
	d = fdopendir(dup(fd));
	if (!d)
		return herr_sys(err, -errno, "listing %s", path);
	while ((e = readdir(d))) {
		struct stat sb;

		if (!is_layer_name(e->d_name) || json_object_get(keep, e->d_name))
			continue;
		/* layers/<id> -> the base rootfs: a symlink, never removed. */
		if (fstatat(fd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(sb.st_mode))
			continue;
		rc = drop_layer(fd, e->d_name, err);
		if (rc < 0)
			break;
		json_object_set_new(dropped, e->d_name, json_true());
		st->layers_removed++;
		log_info("template", NULL, "gc: removed layer %s", e->d_name);
	}
	closedir(d);
	return rc;
}

/* Removes files of dir whose content (a layer hash, or JSON naming layers)
 * names a dropped layer: the step cache, image layer maps and refs. */
static void sweep_records(struct tmpl_mgr *m, const char *sub, bool json_doc,
			  json_t *dropped, unsigned *count)
{
	char path[4096];
	_cleanup_close_ int fd = -1;
	DIR *d;
	struct dirent *e;

	path_of(m, path, sizeof(path), sub);
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	d = fd >= 0 ? fdopendir(dup(fd)) : NULL;
	if (!d)
		return;
	while ((e = readdir(d))) {
		char text[LAYER_HASH_HEX + 8];
		bool drop = false;

		if (e->d_name[0] == '.')
			continue;
		if (json_doc) {
			_cleanup_close_ int f = openat(fd, e->d_name, O_RDONLY | O_NOFOLLOW |
						       O_CLOEXEC);
			json_t *doc = f >= 0 ? json_loadfd(f, 0, NULL) : NULL, *l;
			size_t i;

			json_array_foreach(json_object_get(doc, "layers"), i, l)
				drop |= json_is_string(l) &&
					json_object_get(dropped, json_string_value(l));
			json_decref(doc);
		} else {
			_cleanup_close_ int f = openat(fd, e->d_name, O_RDONLY | O_NOFOLLOW |
						       O_CLOEXEC);
			ssize_t n = f >= 0 ? read(f, text, sizeof(text) - 1) : -1;

			text[n > 0 ? n : 0] = '\0';
			drop = json_object_get(dropped, text) != NULL;
		}
		if (drop && unlinkat(fd, e->d_name, 0) == 0)
			(*count)++;
	}
	closedir(d);
}

/* Teams with a build waiting or running: their uploads are in use. */
static json_t *busy_teams(struct tmpl_mgr *m)
{
	json_t *teams = json_object(), *t, *b;
	const char *tid, *bid;

	json_object_foreach(json_object_get(m->reg, "templates"), tid, t)
		json_object_foreach(json_object_get(t, "builds"), bid, b) {
			const char *s = json_string_value(json_object_get(b, "status")) ?: "";
			char team[32];

			if (strcmp(s, "waiting") && strcmp(s, "building"))
				continue;
			snprintf(team, sizeof(team), "%lld", (long long)json_integer_value(
				json_object_get(t, "team")));
			json_object_set_new(teams, team, json_true());
		}
	return teams;
}

static void sweep_team_uploads(int dir, const char *team, time_t cutoff, unsigned *count)
{
	_cleanup_close_ int fd = openat(dir, team, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(dup(fd)) : NULL;
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		struct stat sb;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (fstatat(fd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(sb.st_mode) ||
		    sb.st_mtime > cutoff)
			continue;
		if (unlinkat(fd, e->d_name, 0) == 0)
			(*count)++;
	}
	closedir(d);
}

/* Uploaded archives (and cut-short uploads) older than the age limit. */
static void sweep_uploads(struct tmpl_mgr *m, json_t *busy, struct tmpl_gc_stats *st)
{
	char path[4096];
	_cleanup_close_ int fd = -1;
	int64_t age = m->cfg.upload_max_age_s > 0 ? m->cfg.upload_max_age_s :
		UPLOAD_MAX_AGE_DEFAULT_S;
	time_t cutoff = time(NULL) - (time_t)age;
	DIR *d;
	struct dirent *e;

	path_of(m, path, sizeof(path), "tmpl/files");
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	d = fd >= 0 ? fdopendir(dup(fd)) : NULL;
	if (!d)
		return;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && !json_object_get(busy, e->d_name))
			sweep_team_uploads(fd, e->d_name, cutoff, &st->uploads_removed);
	closedir(d);
}

/* Under the registry lock: the teams whose uploads are in use, and (when
 * the layer store is ours) the layers to keep. */
static json_t *plan_gc(struct tmpl_mgr *m, json_t *live, json_t *keep, bool layers)
{
	json_t *busy;
	bool changed = false;

	reg_enter(m);
	busy = busy_teams(m);
	if (layers) {
		collect_keep(m, live, keep, &changed);
		if (changed)
			tmpl_save_registry(m, NULL);
	}
	reg_leave(m);
	return busy;
}

int tmpl_gc(struct tmpl_mgr *m, struct tmpl_gc_stats *st, struct herr *err)
{
	_cleanup_close_ int lock = layer_store_lock_all(m->data_dir, NULL);
	_cleanup_(json_decrefp) json_t *live = NULL;
	_cleanup_(json_decrefp) json_t *keep = json_object();
	_cleanup_(json_decrefp) json_t *dropped = json_object();
	_cleanup_(json_decrefp) json_t *busy = NULL;
	int rc;

	memset(st, 0, sizeof(*st));
	rc = live_templates(m, &live, err);
	if (rc == 0 && (!keep || !dropped))
		rc = herr_set(err, -ENOMEM, "out of memory");
	if (rc < 0)
		return rc;
	busy = plan_gc(m, live, keep, lock >= 0);
	st->deferred = lock < 0;
	if (lock >= 0)
		rc = sweep_layers(m, keep, dropped, st, err);
	if (json_object_size(dropped)) {
		sweep_records(m, "tmpl/cache", false, dropped, &st->records_removed);
		sweep_records(m, "tmpl/images/layers", false, dropped, &st->records_removed);
		sweep_records(m, "tmpl/images/refs", true, dropped, &st->records_removed);
	}
	sweep_uploads(m, busy, st);
	log_info("template", NULL, "gc: %u layer(s) removed%s, %u record(s), %u upload(s)",
		 st->layers_removed, st->deferred ? " (layers skipped: a build or import "
		 "holds the store)" : "", st->records_removed, st->uploads_removed);
	return rc;
}
