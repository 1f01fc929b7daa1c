/*
 * Template loading: references from clients reduced to folder names,
 * template.json checked field by field, half-built templates refused, on
 * real folders in a temporary directory.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "template.h"

struct fx {
	char dir[64];
};

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* A template folder: rootfs/, template.json (when json), complete (when done). */
static void make_template(struct fx *f, const char *name, const char *json, int done)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", f->dir, name);
	assert_int_equal(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/%s/rootfs", f->dir, name);
	assert_int_equal(mkdir(path, 0755), 0);
	if (json) {
		snprintf(path, sizeof(path), "%s/%s/template.json", f->dir, name);
		write_file(path, json);
	}
	if (done) {
		snprintf(path, sizeof(path), "%s/%s/complete", f->dir, name);
		write_file(path, "");
	}
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	snprintf(f->dir, sizeof(f->dir), "/tmp/hutch-tpl-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	make_template(f, "base", "{\"user\":\"user\",\"workdir\":\"/home/user\","
		      "\"env\":{\"LANG\":\"C.UTF-8\"},\"cpuCount\":2,\"memoryMB\":512,"
		      "\"diskMB\":2048}", 1);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static void loads_base(void **state)
{
	struct fx *f = *state;
	struct lc_template t;
	struct herr err;
	char want[128];

	assert_int_equal(tpl_load(f->dir, "base", &t, &err), 0);
	assert_string_equal(t.name, "base");
	assert_string_equal(t.user, "user");
	assert_string_equal(t.workdir, "/home/user");
	assert_int_equal(t.cpu_count, 2);
	assert_int_equal(t.memory_mb, 512);
	assert_int_equal(t.disk_mb, 2048);
	assert_string_equal(json_string_value(json_object_get(t.env, "LANG")), "C.UTF-8");
	snprintf(want, sizeof(want), "%s/base/rootfs", f->dir);
	assert_string_equal(t.rootfs, want);
	tpl_clear(&t);
}

static void reference_forms(void **state)
{
	struct fx *f = *state;
	struct lc_template t;
	struct herr err;

	assert_int_equal(tpl_load(f->dir, "BASE", &t, &err), 0);
	assert_string_equal(t.name, "base");
	tpl_clear(&t);
	assert_int_equal(tpl_load(f->dir, "base:default", &t, &err), 0);
	tpl_clear(&t);
	assert_int_equal(tpl_load(f->dir, "base:v2", &t, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "tag"));
	assert_int_equal(tpl_load(f->dir, "other", &t, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "'other' not found"));
}

/* Whatever a client sends, only a direct child folder is ever looked at. */
static void hostile_references(void **state)
{
	static const char *const refs[] = { "..", "../base", "base/..", "ns/base", ".base",
		"-base", "ba se", "base\n", "", "a:b:c", "%2e%2e", "base/", NULL };
	struct fx *f = *state;
	struct lc_template t;
	struct herr err;

	for (int i = 0; refs[i]; i++)
		assert_int_equal(tpl_load(f->dir, refs[i], &t, &err), -ENOENT);
}

static void incomplete_is_not_found(void **state)
{
	struct fx *f = *state;
	struct lc_template t;
	struct herr err;

	make_template(f, "half", "{}", 0);
	assert_int_equal(tpl_load(f->dir, "half", &t, &err), -ENOENT);
	assert_string_equal(err.msg, "template 'half' not found");
}

static void defaults_when_fields_absent(void **state)
{
	struct fx *f = *state;
	struct lc_template t;
	struct herr err;

	make_template(f, "bare", "{}", 1);
	assert_int_equal(tpl_load(f->dir, "bare", &t, &err), 0);
	assert_string_equal(t.user, "user");
	assert_string_equal(t.workdir, "/home/user");
	assert_int_equal(t.cpu_count, 0);
	assert_int_equal(t.memory_mb, 0);
	assert_int_equal(json_object_size(t.env), 0);
	tpl_clear(&t);
}

static void missing_json_is_not_found(void **state)
{
	struct fx *f = *state;
	struct lc_template t;
	struct herr err;

	make_template(f, "nojson", NULL, 1);
	assert_int_equal(tpl_load(f->dir, "nojson", &t, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "template.json"));
}

struct bad_case {
	const char *json;
	const char *field; /* the error must name it */
};

static void bad_json_names_field(void **state)
{
	static const struct bad_case cases[] = {
		{ "{\"user\":\"root --access-token=x\"}", "user" },
		{ "{\"user\":\"\"}", "user" },
		{ "{\"user\":5}", "user" },
		{ "{\"workdir\":\"relative\"}", "workdir" },
		{ "{\"workdir\":\"/a/../etc\"}", "workdir" },
		{ "{\"workdir\":\"/a\\nb\"}", "workdir" },
		{ "{\"cpuCount\":0}", "cpuCount" },
		{ "{\"cpuCount\":\"2\"}", "cpuCount" },
		{ "{\"memoryMB\":1}", "memoryMB" },
		{ "{\"diskMB\":-5}", "diskMB" },
		{ "{\"env\":[]}", "env" },
		{ "{\"env\":{\"A=B\":\"x\"}}", "A=B" },
		{ "{\"env\":{\"A\":1}}", "'A'" },
		{ "{\"env\":{\"A\":\"x\\u0000y\"}}", "\\u0000" },
		{ "[]", "not a JSON object" },
		{ "{\"user\":\"a\",\"user\":\"b\"}", "duplicate" },
		{ "{", "line" },
	};
	struct lc_template t;
	struct herr err;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(&t, 0, sizeof(t));
		assert_int_equal(tpl_parse(cases[i].json, strlen(cases[i].json), &t, &err),
				 -EINVAL);
		if (!strstr(err.msg, cases[i].field))
			fail_msg("case %zu (%s): '%s' lacks '%s'", i, cases[i].json, err.msg,
				 cases[i].field);
		tpl_clear(&t);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(loads_base, setup, teardown),
		cmocka_unit_test_setup_teardown(reference_forms, setup, teardown),
		cmocka_unit_test_setup_teardown(hostile_references, setup, teardown),
		cmocka_unit_test_setup_teardown(incomplete_is_not_found, setup, teardown),
		cmocka_unit_test_setup_teardown(defaults_when_fields_absent, setup, teardown),
		cmocka_unit_test_setup_teardown(missing_json_is_not_found, setup, teardown),
		cmocka_unit_test_setup_teardown(bad_json_names_field, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
