/*
 * Template GC with real folders and a real store: templates imported from
 * images made by mkimage.py, a stray layer with a cache entry and an
 * image layer map naming it, the base rootfs symlink, a deleted template
 * whose sandbox is still running (its layers stay until the sandbox
 * ends), a layer shared with a live template (it stays), the store held by
 * a build (nothing removed), and uploads by age and pending builds.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "layer.h"
#include "store.h"
#include "template.h"
#include "tmpl.h"

struct fx {
	char dir[64], data[128], tpl[128];
	struct store *st;
	int64_t team;       /* a team of the store */
	struct tmpl_mgr *m;
	json_t *a, *b;      /* import replies: template A, template B */
};

static void put_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void import(struct fx *f, const char *name, const char *variant, json_t **reply)
{
	char img[256], cmd[1024];
	struct herr err = { 0 };

	snprintf(img, sizeof(img), "%s/img-%s", f->dir, name);
	snprintf(cmd, sizeof(cmd), "python3 %s docker %s %s", MKIMAGE, img, variant);
	assert_int_equal(system(cmd), 0);
	if (tmpl_import(f->m, f->team, name, img, reply, &err) < 0)
		fail_msg("import %s: %s", name, err.msg);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct tmpl_config cfg = { .max_builds = 1, .tool = true, .max_upload_bytes = 1 << 20,
				   .upload_max_age_s = 3600 };
	struct herr err = { 0 };
	char p[256];

	snprintf(f->dir, sizeof(f->dir), "/tmp/hutch-tgc-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->data, sizeof(f->data), "%s/data", f->dir);
	snprintf(f->tpl, sizeof(f->tpl), "%s/templates", f->dir);
	assert_int_equal(mkdir(f->data, 0700), 0);
	assert_int_equal(mkdir(f->tpl, 0755), 0);
	snprintf(p, sizeof(p), "%s/hutch.db", f->dir);
	assert_int_equal(store_open(p, "node-gc", &f->st, &err), 0);
	assert_int_equal(store_team_ensure(f->st, "gc-team", &f->team, &err), 0);
	cfg.data_dir = f->data;
	cfg.template_dir = f->tpl;
	cfg.store = f->st;
	assert_int_equal(tmpl_open(&cfg, &f->m, &err), 0);
	import(f, "tpl-a", "", &f->a);
	import(f, "tpl-b", "fresh", &f->b);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[128];

	tmpl_close(f->m);
	store_close(f->st);
	json_decref(f->a);
	json_decref(f->b);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static const char *layer_of(json_t *reply, size_t i)
{
	return json_string_value(json_array_get(json_object_get(reply, "layers"), i));
}

static bool exists(struct fx *f, const char *sub)
{
	char p[512];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", f->data, sub);
	return lstat(p, &st) == 0;
}

static bool layer_exists(struct fx *f, const char *hash)
{
	char sub[128];

	snprintf(sub, sizeof(sub), "layers/%s", hash);
	return exists(f, sub);
}

static void gc(struct fx *f, struct tmpl_gc_stats *st)
{
	struct herr err = { 0 };

	if (tmpl_gc(f->m, st, &err) < 0)
		fail_msg("gc: %s", err.msg);
}

static void add_sandbox(struct fx *f, const char *id, const char *template_id)
{
	struct store_sandbox s = { 0 };
	struct herr err = { 0 };

	snprintf(s.id, sizeof(s.id), "%s", id);
	s.team_id = f->team;
	s.template_id = (char *)template_id;
	s.created_at = s.started_at = 1000;
	s.end_at = 1000 + 15000;
	s.timeout_s = 15;
	s.metadata = "{}";
	s.envd_version = "0.6.13";
	s.cpu_count = 2;
	assert_int_equal(store_sandbox_insert(f->st, &s, &err), 0);
}

/* Nothing referenced goes; strays, their records and the symlink do or stay. */
static void test_strays(void **state)
{
	struct fx *f = *state;
	const char *stray = "1111111111111111111111111111111111111111111111111111111111111111";
	const char *ext = "2222222222222222222222222222222222222222222222222222222222222222";
	struct tmpl_gc_stats st;
	char p[512];

	snprintf(p, sizeof(p), "%s/layers/%s", f->data, stray);
	assert_int_equal(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/layers/%s/file", f->data, stray);
	put_file(p, "x");
	snprintf(p, sizeof(p), "%s/tmpl/cache/somekey", f->data);
	put_file(p, stray);
	snprintf(p, sizeof(p), "%s/tmpl/images/layers/%s", f->data, ext);
	put_file(p, stray);
	snprintf(p, sizeof(p), "%s/layers/%s", f->data, ext);
	assert_int_equal(symlink(f->tpl, p), 0);

	gc(f, &st);
	assert_int_equal(st.layers_removed, 1);
	assert_int_equal(st.records_removed, 2);
	assert_false(st.deferred);
	assert_false(layer_exists(f, stray));
	assert_true(layer_exists(f, ext));
	assert_false(exists(f, "tmpl/cache/somekey"));
	for (size_t i = 0; i < 2; i++) {
		assert_true(layer_exists(f, layer_of(f->a, i)));
		assert_true(layer_exists(f, layer_of(f->b, i)));
	}
	/* A second run finds nothing more. */
	gc(f, &st);
	assert_int_equal(st.layers_removed, 0);
}

/* A deleted template keeps its layers while a sandbox names it. */
static void test_deleted_template_with_sandbox(void **state)
{
	struct fx *f = *state;
	struct tmpl_gc_stats st;
	struct herr err = { 0 };
	char tid_tag[64], sub[128];
	const char *tid = json_string_value(json_object_get(f->b, "templateID"));
	const char *bid = json_string_value(json_object_get(f->b, "buildID"));

	assert_string_equal(layer_of(f->a, 0), layer_of(f->b, 0)); /* shared */
	assert_string_not_equal(layer_of(f->a, 1), layer_of(f->b, 1));
	snprintf(tid_tag, sizeof(tid_tag), "%s:v1", tid);
	add_sandbox(f, "isbxgc000000000000001", tid_tag);
	assert_int_equal(tmpl_delete(f->m, f->team, "tpl-b", &err), 0);

	gc(f, &st);
	assert_int_equal(st.layers_removed, 0);
	assert_true(layer_exists(f, layer_of(f->b, 1)));

	assert_int_equal(store_sandbox_end(f->st, "isbxgc000000000000001", "killed", 2000,
					   &err), 1);
	gc(f, &st);
	assert_int_equal(st.layers_removed, 1);
	assert_false(layer_exists(f, layer_of(f->b, 1)));
	assert_true(layer_exists(f, layer_of(f->a, 0)));
	assert_true(layer_exists(f, layer_of(f->a, 1)));
	snprintf(sub, sizeof(sub), "tmpl/builds/%s.json", bid);
	assert_false(exists(f, sub));
	/* Template A still resolves and its sandboxes would start. */
	struct lc_template t;
	assert_int_equal(tmpl_resolve(f->m, f->team, "tpl-a", &t, &err), 0);
	tpl_clear(&t);
}

/* While a build or import holds the store, no layer is removed. */
static void test_held_store(void **state)
{
	struct fx *f = *state;
	struct tmpl_gc_stats st;
	struct herr err = { 0 };
	int hold;

	assert_int_equal(tmpl_delete(f->m, f->team, "tpl-b", &err), 0);
	hold = layer_store_hold(f->data, &err);
	assert_true(hold >= 0);
	gc(f, &st);
	assert_true(st.deferred);
	assert_int_equal(st.layers_removed, 0);
	assert_true(layer_exists(f, layer_of(f->b, 1)));
	close(hold);
	gc(f, &st);
	assert_false(st.deferred);
	assert_int_equal(st.layers_removed, 1);
}

static void old_upload(struct fx *f, int64_t team, const char *name, time_t age)
{
	char p[512];
	struct timespec ts[2];

	snprintf(p, sizeof(p), "%s/tmpl/files/%lld", f->data, (long long)team);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/tmpl/files/%lld/%s", f->data, (long long)team, name);
	put_file(p, "archive");
	clock_gettime(CLOCK_REALTIME, &ts[0]);
	ts[0].tv_sec -= age;
	ts[1] = ts[0];
	assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
}

/* Old uploads go, unless their team has a build waiting for them. */
static void test_uploads(void **state)
{
	struct fx *f = *state;
	struct tmpl_gc_stats st;
	struct herr err = { 0 };
	json_t *body = json_pack("{s:s}", "name", "pending"), *reply = NULL;
	char sub[128];

	old_upload(f, f->team, "old", 7200);
	old_upload(f, f->team, "new", 10);
	old_upload(f, 9, "old9", 7200);
	assert_int_equal(tmpl_request(f->m, 9, body, &reply, &err), 0);
	gc(f, &st);
	assert_int_equal(st.uploads_removed, 1);
	snprintf(sub, sizeof(sub), "tmpl/files/%lld/old", (long long)f->team);
	assert_false(exists(f, sub));
	snprintf(sub, sizeof(sub), "tmpl/files/%lld/new", (long long)f->team);
	assert_true(exists(f, sub));
	assert_true(exists(f, "tmpl/files/9/old9"));
	json_decref(body);
	json_decref(reply);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_strays, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deleted_template_with_sandbox, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_held_store, setup, teardown),
		cmocka_unit_test_setup_teardown(test_uploads, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
