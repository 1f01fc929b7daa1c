/*
 * The registry and builder without sandboxes: a small folder template
 * `base` in a temporary template dir, builds made of COPY steps (which need
 * no sandbox), the step cache, tags, aliases, team ownership, resolution
 * for sandbox creation, and a RUN step refused clearly on a node without a
 * runtime. Real files, real threads.
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

#include <archive.h>
#include <archive_entry.h>
#include <cmocka.h>
#include <jansson.h>

#include "layer.h"
#include "tmpl.h"

struct fx {
	char dir[64], data[128], tpl[128];
	struct tmpl_mgr *m;
};

static void put_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct tmpl_config cfg = { .max_upload_bytes = 1 << 20, .max_copy_bytes = 1 << 20,
				   .step_timeout_s = 10, .ready_timeout_s = 5,
				   .max_builds = 2 };
	struct herr err = { 0 };
	char p[256];

	snprintf(f->dir, sizeof(f->dir), "/tmp/hutch-treg-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->data, sizeof(f->data), "%s/data", f->dir);
	snprintf(f->tpl, sizeof(f->tpl), "%s/templates", f->dir);
	assert_int_equal(mkdir(f->data, 0700), 0);
	assert_int_equal(mkdir(f->tpl, 0755), 0);
	const char *dirs[] = { "base", "base/rootfs", "base/rootfs/etc", "base/rootfs/home",
			       "base/rootfs/home/user" };
	for (size_t i = 0; i < 5; i++) {
		snprintf(p, sizeof(p), "%s/%s", f->tpl, dirs[i]);
		assert_int_equal(mkdir(p, 0755), 0);
	}
	snprintf(p, sizeof(p), "%s/base/rootfs/home/user", f->tpl);
	assert_int_equal(chown(p, 1000, 1000), 0);
	snprintf(p, sizeof(p), "%s/base/rootfs/etc/passwd", f->tpl);
	put_file(p, "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n");
	snprintf(p, sizeof(p), "%s/base/template.json", f->tpl);
	put_file(p, "{\"user\":\"user\",\"workdir\":\"/home/user\"}");
	snprintf(p, sizeof(p), "%s/base/complete", f->tpl);
	put_file(p, "");
	cfg.data_dir = f->data;
	cfg.template_dir = f->tpl;
	assert_int_equal(tmpl_open(&cfg, &f->m, &err), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	int fd = open("/tmp", O_RDONLY | O_DIRECTORY);

	tmpl_close(f->m);
	assert_int_equal(layer_remove_tree(fd, f->dir + 5, NULL), 0);
	close(fd);
	free(f);
	return 0;
}

static json_t *request(struct fx *f, int64_t team, const char *name, int want)
{
	json_t *body = json_pack("{s:s}", "name", name), *reply = NULL;
	struct herr err = { 0 };

	assert_int_equal(tmpl_request(f->m, team, body, &reply, &err), want);
	json_decref(body);
	return reply;
}

/* Uploads a tar holding hello.txt with text, as the SDK's PUT would. */
static void upload(struct fx *f, int64_t team, const char *hash, const char *text)
{
	char tmp[4096];
	struct herr err = { 0 };
	int fd = tmpl_upload_begin(f->m, team, hash, tmp, sizeof(tmp), &err);
	struct archive *a = archive_write_new();
	struct archive_entry *e = archive_entry_new();

	assert_true(fd >= 0);
	archive_write_set_format_pax_restricted(a);
	archive_write_add_filter_gzip(a);
	assert_int_equal(archive_write_open_fd(a, fd), ARCHIVE_OK);
	archive_entry_set_pathname(e, "hello.txt");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (int64_t)strlen(text));
	assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
	archive_write_data(a, text, strlen(text));
	archive_entry_free(e);
	archive_write_close(a);
	archive_write_free(a);
	close(fd);
	assert_int_equal(tmpl_upload_commit(f->m, team, hash, tmp, &err), 0);
}

/* Starts a build and waits for its end; returns the last status reply. */
static json_t *run_build(struct fx *f, int64_t team, json_t *req, json_t *spec)
{
	const char *tid = json_string_value(json_object_get(req, "templateID"));
	const char *bid = json_string_value(json_object_get(req, "buildID"));
	struct timespec nap = { 0, 20 * 1000 * 1000 };
	struct herr err = { 0 };
	json_t *st = NULL;

	assert_int_equal(tmpl_build_start(f->m, team, tid, bid, spec, &err), 0);
	for (int i = 0; i < 500; i++) {
		json_decref(st);
		assert_int_equal(tmpl_build_status(f->m, team, tid, bid, 0, 100, &st, &err), 0);
		const char *s = json_string_value(json_object_get(st, "status"));
		if (!strcmp(s, "ready") || !strcmp(s, "error"))
			return st;
		nanosleep(&nap, NULL);
	}
	fail_msg("build did not end");
	return NULL;
}

static json_t *copy_spec(const char *hash)
{
	return json_pack("{s:s,s:[{s:s,s:[s,s,s,s],s:s}]}", "fromTemplate", "base", "steps",
			 "type", "COPY", "args", "hello.txt", "/home/user/hello.txt", "",
			 "", "filesHash", hash);
}

static bool log_has(json_t *st, const char *needle)
{
	json_t *e;
	size_t i;

	json_array_foreach(json_object_get(st, "logEntries"), i, e)
		if (strstr(json_string_value(json_object_get(e, "message")), needle))
			return true;
	return false;
}

static void test_copy_build_cache_and_resolve(void **state)
{
	struct fx *f = *state;
	const char *hash = "1111111111111111111111111111111111111111111111111111111111111111";
	json_t *req = request(f, 1, "App:V1", 0), *st, *spec = copy_spec(hash);
	struct lc_template t = { 0 };
	struct herr err = { 0 };
	char path[4096];
	struct stat sb;

	assert_string_equal(json_string_value(json_array_get(json_object_get(req, "tags"), 0)),
			    "v1");
	assert_int_equal(tmpl_file_present(f->m, 1, json_string_value(json_object_get(
		req, "templateID")), hash, &err), 0);
	upload(f, 1, hash, "hello\n");
	assert_int_equal(tmpl_file_present(f->m, 1, "app", hash, &err), 1);
	st = run_build(f, 1, req, spec);
	assert_string_equal(json_string_value(json_object_get(st, "status")), "ready");
	assert_false(log_has(st, "CACHED"));
	json_decref(st);
	json_decref(req);

	/* Resolution: by name and tag, for the owning team only. */
	assert_int_equal(tmpl_resolve(f->m, 1, "app", &t, &err), -ENOENT); /* no default */
	assert_int_equal(tmpl_resolve(f->m, 1, "app:v1", &t, &err), 0);
	assert_int_equal(t.n_layers, 2);
	assert_string_equal(t.user, "user");
	snprintf(path, sizeof(path), "%s/home/user/hello.txt", t.layers[1]);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_uid, 1000);
	assert_non_null(strchr(t.name, ':'));
	tpl_clear(&t);
	assert_int_equal(tmpl_resolve(f->m, 2, "app:v1", &t, &err), -ENOENT);

	/* The same step again is taken from the cache. */
	req = request(f, 1, "app", 0);
	st = run_build(f, 1, req, spec);
	assert_string_equal(json_string_value(json_object_get(st, "status")), "ready");
	assert_true(log_has(st, "CACHED [1/1] COPY"));
	json_decref(st);
	json_decref(req);
	json_decref(spec);
	assert_int_equal(tmpl_resolve(f->m, 1, "app", &t, &err), 0);
	tpl_clear(&t);
}

static void test_names_tags_and_teams(void **state)
{
	struct fx *f = *state;
	json_t *req = request(f, 1, "svc", 0), *reply = NULL, *body;
	struct herr err = { 0 };
	const char *tid = json_string_value(json_object_get(req, "templateID"));

	assert_null(request(f, 2, "svc", -EEXIST));
	assert_null(request(f, 1, "base", -EEXIST));
	assert_null(request(f, 1, "ns/svc", -EINVAL));
	assert_null(request(f, 1, "svc:123e4567-e89b-12d3-a456-426614174000", -EINVAL));
	assert_int_equal(tmpl_alias(f->m, 1, "svc", &reply, &err), 0);
	assert_string_equal(json_string_value(json_object_get(reply, "templateID")), tid);
	json_decref(reply);
	assert_int_equal(tmpl_alias(f->m, 2, "svc", &reply, &err), -EPERM);
	assert_int_equal(tmpl_alias(f->m, 2, "nothing", &reply, &err), -ENOENT);
	assert_int_equal(tmpl_file_present(f->m, 1, tid, "ABC", &err), -EINVAL);
	assert_string_equal(err.msg, "Invalid files hash");
	assert_int_equal(tmpl_file_present(f->m, 2, tid, "1111111111111111111111111111111111"
					   "111111111111111111111111111111", &err), -EPERM);
	/* No build succeeded yet: nothing to tag. */
	body = json_pack("{s:s,s:[s]}", "target", "svc", "tags", "x");
	assert_int_equal(tmpl_tags_assign(f->m, 1, body, &reply, &err), -ENOENT);
	json_decref(body);
	assert_int_equal(tmpl_delete(f->m, 2, tid, &err), -EPERM);
	assert_int_equal(tmpl_delete(f->m, 1, "svc", &err), 0);
	assert_int_equal(tmpl_alias(f->m, 1, "svc", &reply, &err), -ENOENT);
	json_decref(req);
}

static void test_bad_steps_and_no_runtime(void **state)
{
	struct fx *f = *state;
	json_t *req = request(f, 1, "broken", 0), *st, *spec;
	const char *tid = json_string_value(json_object_get(req, "templateID"));
	const char *bid = json_string_value(json_object_get(req, "buildID"));
	struct herr err = { 0 };

	spec = json_pack("{s:[{s:s,s:[]}]}", "steps", "type", "SHELL", "args");
	assert_int_equal(tmpl_build_start(f->m, 1, tid, bid, spec, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "steps[0].type"));
	json_decref(spec);
	spec = json_pack("{s:[{s:s,s:[s,s]}]}", "steps", "type", "COPY", "args", "a", "/a");
	assert_int_equal(tmpl_build_start(f->m, 1, tid, bid, spec, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "filesHash"));
	json_decref(spec);
	assert_int_equal(tmpl_build_start(f->m, 1, tid, "not-a-uuid", spec, &err), -EINVAL);

	spec = json_pack("{s:[{s:s,s:[s]}]}", "steps", "type", "RUN", "args", "true");
	st = run_build(f, 1, req, spec);
	assert_string_equal(json_string_value(json_object_get(st, "status")), "error");
	assert_non_null(strstr(json_string_value(json_object_get(json_object_get(st, "reason"),
								 "message")),
			       "no sandbox runtime"));
	assert_string_equal(json_string_value(json_object_get(json_object_get(st, "reason"),
							      "step")), "1");
	/* A second start of the same build is refused. */
	assert_int_equal(tmpl_build_start(f->m, 1, tid, bid, spec, &err), -EBUSY);
	json_decref(st);
	/* Past the end of the log: an empty page, which ends the SDK's polling. */
	assert_int_equal(tmpl_build_status(f->m, 1, tid, bid, 1000, 100, &st, &err), 0);
	assert_int_equal(json_array_size(json_object_get(st, "logEntries")), 0);
	json_decref(st);
	json_decref(spec);
	json_decref(req);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_copy_build_cache_and_resolve, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_names_tags_and_teams, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_steps_and_no_runtime, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
