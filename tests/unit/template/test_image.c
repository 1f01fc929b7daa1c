/*
 * Image import against real images made by tests/template-fixtures/
 * mkimage.py (docker save tarball, OCI layout folder, OCI tarball, gzip
 * layers): the stored layers (owners, whiteouts, opaque folders, hard and
 * absolute symbolic links, devices left out), the template config taken
 * from the image config, layers shared between formats, resolution through
 * the registry; and hostile images (bad digests, "..", a symlink then a
 * file through it, a hard link out of the layer, a truncated layer, missing
 * and symlinked blobs), each refused with a message naming the file or
 * field, leaving no layer, no temporary folder and nothing outside.
 */
#include <dirent.h>
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
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "image.h"
#include "layer.h"
#include "template.h"
#include "tmpl.h"

struct fx {
	char dir[64], data[128], outside[128], tpl[128];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char p[256];

	snprintf(f->dir, sizeof(f->dir), "/tmp/hutch-timg-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->data, sizeof(f->data), "%s/data", f->dir);
	snprintf(f->outside, sizeof(f->outside), "%s/outside", f->dir);
	snprintf(f->tpl, sizeof(f->tpl), "%s/templates", f->dir);
	assert_int_equal(mkdir(f->data, 0700), 0);
	assert_int_equal(mkdir(f->outside, 0755), 0);
	assert_int_equal(mkdir(f->tpl, 0755), 0);
	snprintf(p, sizeof(p), "%s/tmpl", f->data);
	assert_int_equal(mkdir(p, 0700), 0);
	assert_int_equal(layer_store_init(f->data, NULL), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

/* Runs mkimage.py FORMAT DIR/NAME [VARIANT]; out gets the image path. */
static void make_image(struct fx *f, const char *format, const char *name,
		       const char *variant, char *out, size_t cap)
{
	char cmd[1024];

	snprintf(out, cap, "%s/%s", f->dir, name);
	snprintf(cmd, sizeof(cmd), "OUTSIDE=%s python3 %s %s %s %s", f->outside, MKIMAGE,
		 format, out, variant ? variant : "");
	assert_int_equal(system(cmd), 0);
}

/* Entries of a folder other than "." and ".." (and layers/.lock). */
static int count_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    strcmp(e->d_name, ".lock"))
			n++;
	closedir(d);
	return n;
}

static void layer_file(struct fx *f, json_t *res, size_t i, const char *rel, char *out,
		       size_t cap)
{
	const char *hash = json_string_value(json_array_get(json_object_get(res, "layers"), i));

	assert_non_null(hash);
	snprintf(out, cap, "%s/layers/%s/%s", f->data, hash, rel);
}

static void check_busybox_image(struct fx *f, json_t *res)
{
	char p[512], q[512], val[8];
	struct stat st, st2;

	assert_int_equal(json_array_size(json_object_get(res, "layers")), 2);
	assert_string_equal(json_string_value(json_object_get(res, "user")), "user");
	assert_string_equal(json_string_value(json_object_get(res, "workdir")), "/home/user");
	assert_string_equal(json_string_value(json_object_get(json_object_get(res, "env"),
								"HELLO")), "world");
	assert_string_equal(json_string_value(json_object_get(res, "startCmd")),
			    "'/bin/sh' '-c' 'echo started > /tmp/started'");
	/* Layer one: owners kept, hard link shared, absolute symlink as text. */
	layer_file(f, res, 0, "home/user/owned", p, sizeof(p));
	assert_int_equal(lstat(p, &st), 0);
	assert_int_equal(st.st_uid, 1000);
	layer_file(f, res, 0, "bin/bb-hard", p, sizeof(p));
	layer_file(f, res, 0, "bin/busybox", q, sizeof(q));
	assert_int_equal(lstat(p, &st), 0);
	assert_int_equal(lstat(q, &st2), 0);
	assert_int_equal(st.st_ino, st2.st_ino);
	layer_file(f, res, 0, "usr/bin/env", p, sizeof(p));
	assert_int_equal(readlink(p, q, sizeof(q)), strlen("/bin/busybox"));
	layer_file(f, res, 0, "dev/null", p, sizeof(p));
	assert_int_equal(lstat(p, &st), -1); /* devices are skipped */
	layer_file(f, res, 0, "tmp", p, sizeof(p));
	assert_int_equal(lstat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 01777);
	/* Layer two: a whiteout and an opaque folder, as overlay reads them. */
	layer_file(f, res, 1, "etc/remove-me", p, sizeof(p));
	assert_int_equal(lstat(p, &st), 0);
	assert_true(S_ISCHR(st.st_mode));
	assert_int_equal(st.st_rdev, makedev(0, 0));
	layer_file(f, res, 1, "opt/old", p, sizeof(p));
	assert_int_equal(lgetxattr(p, "user.overlay.opaque", val, sizeof(val)), 1);
	assert_int_equal(val[0], 'y');
	layer_file(f, res, 1, "opt/old/.wh..wh..opq", p, sizeof(p));
	assert_int_equal(lstat(p, &st), -1);
}

static void import_ok(void **state, const char *format)
{
	struct fx *f = *state;
	char img[256];
	json_t *res = NULL;
	struct herr err = { 0 };

	make_image(f, format, "img", NULL, img, sizeof(img));
	assert_int_equal(img_import_path(f->data, img, 1ULL << 30, &res, &err), 0);
	check_busybox_image(f, res);
	json_decref(res);
}

static void test_docker_archive(void **state)
{
	import_ok(state, "docker");
}

static void test_oci_folder(void **state)
{
	import_ok(state, "oci");
}

static void test_oci_tarball_gzip_layers(void **state)
{
	import_ok(state, "oci-tar");
	struct fx *f = *state;
	char img[256], p[256];
	json_t *res = NULL;
	struct herr err = { 0 };

	/* gzip blobs of the same diff ids: the stored layers are reused. */
	make_image(f, "oci-gz", "img-gz", NULL, img, sizeof(img));
	assert_int_equal(img_import_path(f->data, img, 1ULL << 30, &res, &err), 0);
	snprintf(p, sizeof(p), "%s/layers", f->data);
	assert_int_equal(count_entries(p), 2);
	snprintf(p, sizeof(p), "%s/tmpl", f->data);
	assert_int_equal(count_entries(p), 1); /* images/ only: no staging left */
	json_decref(res);
}

struct bad_case {
	const char *format, *variant, *message;
};

static void check_refused(struct fx *f, const struct bad_case *c)
{
	char img[256], p[512];
	json_t *res = NULL;
	struct herr err = { 0 };

	make_image(f, c->format, "bad", c->variant, img, sizeof(img));
	assert_true(img_import_path(f->data, img, 1ULL << 30, &res, &err) < 0);
	assert_null(res);
	if (!strstr(err.msg, c->message))
		fail_msg("%s/%s: '%s' lacks '%s'", c->format, c->variant, err.msg, c->message);
	snprintf(p, sizeof(p), "%s/layers", f->data);
	assert_int_equal(count_entries(p), 0);
	snprintf(p, sizeof(p), "%s/tmpl", f->data);
	assert_int_equal(count_entries(p), 1);
	assert_int_equal(count_entries(f->outside), 0);
	snprintf(p, sizeof(p), "rm -rf %s", img);
	assert_int_equal(system(p), 0);
}

static void test_hostile_images(void **state)
{
	static const struct bad_case cases[] = {
		{ "docker", "bad-digest", "does not match rootfs.diff_ids" },
		{ "oci", "bad-digest", "layers[1] 'blobs/sha256/" },
		{ "oci-tar", "bad-diff-id", "does not match rootfs.diff_ids" },
		{ "docker", "dotdot", "'..' is not allowed" },
		{ "oci", "symlink-escape", "archive entry 'evil/planted'" },
		{ "oci-tar", "hardlink-outside", "hard link 'etc/shadow-link'" },
		{ "docker", "truncated", "Truncated tar archive" },
		{ "docker", "missing-blob", "'nowhere/layer.tar'" },
		{ "oci", "missing-blob", "(missing, or reached through a symlink)" },
		{ "oci", "blob-symlink", "Too many levels of symbolic links" },
		{ "oci-tar", "blob-symlink", "Too many levels of symbolic links" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_refused(*state, &cases[i]);
}

static void test_size_cap(void **state)
{
	struct fx *f = *state;
	char img[256];
	json_t *res = NULL;
	struct herr err = { 0 };

	make_image(f, "oci", "img", NULL, img, sizeof(img));
	assert_true(img_import_path(f->data, img, 64 * 1024, &res, &err) < 0);
	assert_non_null(strstr(err.msg, "bytes"));
	assert_null(res);
}

/* Through the registry: a template of the team, resolvable by name:tag. */
static void test_import_registers_template(void **state)
{
	struct fx *f = *state;
	struct tmpl_config cfg = { .data_dir = f->data, .template_dir = f->tpl,
				   .max_builds = 1, .tool = true };
	struct tmpl_mgr *m = NULL;
	struct lc_template t;
	struct herr err = { 0 };
	json_t *reply = NULL;
	char img[256];

	make_image(f, "docker", "img", NULL, img, sizeof(img));
	assert_int_equal(tmpl_open(&cfg, &m, &err), 0);
	assert_int_equal(tmpl_import(m, 7, "busy:v2", img, &reply, &err), 0);
	assert_string_equal(json_string_value(json_array_get(json_object_get(reply, "tags"),
							     0)), "v2");
	json_decref(reply);
	assert_int_equal(tmpl_resolve(m, 7, "busy:v2", &t, &err), 0);
	assert_int_equal(t.n_layers, 2);
	assert_string_equal(t.user, "user");
	assert_non_null(t.start_cmd);
	tpl_clear(&t);
	/* Private to its team; the default tag was not assigned. */
	assert_int_equal(tmpl_resolve(m, 8, "busy:v2", &t, &err), -ENOENT);
	assert_int_equal(tmpl_resolve(m, 7, "busy", &t, &err), -ENOENT);
	/* The reserved name is refused. */
	assert_true(tmpl_import(m, 7, "base", img, &reply, &err) < 0);
	tmpl_close(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_docker_archive, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oci_folder, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oci_tarball_gzip_layers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_images, setup, teardown),
		cmocka_unit_test_setup_teardown(test_size_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_import_registers_template, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
