/* Configuration layering: defaults < file < flags < HUTCH_* environment. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"

static struct cfg_opt *new_table(void)
{
	static const struct cfg_opt proto[] = {
		{ "api-port", CFG_INT, "3000", "API port" },
		{ "data-dir", CFG_STR, "/var/lib/hutch", "data folder" },
		{ "verbose", CFG_BOOL, "false", "more logs" },
		{ "domain", CFG_STR, NULL, "sandbox domain" },
	};
	struct cfg_opt *t = malloc(sizeof(proto));

	memcpy(t, proto, sizeof(proto));
	return t;
}

#define NOPTS 4

static char *write_file(const char *text)
{
	char *path = strdup("/tmp/hutch-cfg-XXXXXX");
	int fd = mkstemp(path);
	FILE *f = fdopen(fd, "w");

	fputs(text, f);
	fclose(f);
	return path;
}

static void clear_env(void)
{
	unsetenv("HUTCH_API_PORT");
	unsetenv("HUTCH_DATA_DIR");
	unsetenv("HUTCH_VERBOSE");
	unsetenv("HUTCH_CONFIG");
}

static void defaults_apply(void **unused)
{
	struct cfg_opt *t = new_table();
	char *argv[] = { "prog", NULL };
	struct herr err;
	int first;

	clear_env();
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 1, argv, &first, &err), 0);
	assert_int_equal(cfg_int(t, NOPTS, "api-port"), 3000);
	assert_string_equal(cfg_str(t, NOPTS, "data-dir"), "/var/lib/hutch");
	assert_null(cfg_str(t, NOPTS, "domain"));
	assert_int_equal(first, 1);
	cfg_free(t, NOPTS);
	free(t);
}

static void file_then_flags_then_env(void **unused)
{
	char *path = write_file("# comment\napi_port = 4000\ndata-dir=/srv/h # trailing\n");
	struct cfg_opt *t = new_table();
	char flag[256];
	char *argv[] = { "prog", flag, "--api-port", "5000", "keys", "create", NULL };
	struct herr err;
	int first;

	clear_env();
	snprintf(flag, sizeof(flag), "--config=%s", path);
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 6, argv, &first, &err), 0);
	assert_int_equal(cfg_int(t, NOPTS, "api-port"), 5000);
	assert_string_equal(cfg_str(t, NOPTS, "data-dir"), "/srv/h");
	assert_string_equal(cfg_find(t, NOPTS, "data-dir")->from, "file");
	assert_int_equal(first, 4);
	assert_string_equal(argv[first], "keys");
	cfg_free(t, NOPTS);

	setenv("HUTCH_API_PORT", "6000", 1);
	setenv("HUTCH_VERBOSE", "yes", 1);
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 6, argv, &first, &err), 0);
	assert_int_equal(cfg_int(t, NOPTS, "api-port"), 6000);
	assert_int_equal(cfg_int(t, NOPTS, "verbose"), 1);
	assert_string_equal(cfg_find(t, NOPTS, "api-port")->from, "env");
	cfg_free(t, NOPTS);
	free(t);
	clear_env();
	unlink(path);
	free(path);
}

static void bad_values_name_the_setting(void **unused)
{
	struct cfg_opt *t = new_table();
	char *argv[] = { "prog", "--api-port=12x", NULL };
	char *argv2[] = { "prog", "--no-such-thing=1", NULL };
	struct herr err;
	int first;

	clear_env();
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 2, argv, &first, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "api-port"));
	assert_non_null(strstr(err.msg, "12x"));
	cfg_free(t, NOPTS);
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 2, argv2, &first, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "no-such-thing"));
	cfg_free(t, NOPTS);
	setenv("HUTCH_VERBOSE", "maybe", 1);
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 1, argv, &first, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "HUTCH_VERBOSE"));
	cfg_free(t, NOPTS);
	free(t);
	clear_env();
}

static void bad_file_line_is_reported_with_its_number(void **unused)
{
	char *path = write_file("api-port = 1\nnonsense\n");
	struct cfg_opt *t = new_table();
	char flag[256];
	char *argv[] = { "prog", flag, NULL };
	struct herr err;
	int first;

	clear_env();
	snprintf(flag, sizeof(flag), "--config=%s", path);
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 2, argv, &first, &err), -EINVAL);
	assert_non_null(strstr(err.msg, ":2:"));
	cfg_free(t, NOPTS);
	free(t);
	unlink(path);
	free(path);
}

static void help_lists_every_setting(void **unused)
{
	struct cfg_opt *t = new_table();
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	cfg_print_help(out, t, NOPTS, "prog", "", "/etc/prog.conf");
	fclose(out);
	assert_non_null(strstr(text, "--api-port"));
	assert_non_null(strstr(text, "HUTCH_DATA_DIR"));
	assert_non_null(strstr(text, "--verbose"));
	assert_non_null(strstr(text, "--domain"));
	assert_non_null(strstr(text, "HUTCH_CONFIG"));
	assert_non_null(strstr(text, "/etc/prog.conf is read when it exists"));
	free(text);
	free(t);
}

/* The file read when none is named is said in --help only when there is one. */
static void help_names_no_default_file_without_one(void **unused)
{
	struct cfg_opt *t = new_table();
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	cfg_print_help(out, t, NOPTS, "prog", "", NULL);
	fclose(out);
	assert_non_null(strstr(text, "--config=FILE"));
	assert_null(strstr(text, "when it exists"));
	free(text);
	free(t);
}

/* The default file is read when present, and --config replaces it. */
static void default_file_is_read_unless_config_names_another(void **unused)
{
	struct cfg_opt *t = new_table();
	char *deflt = write_file("api-port = 4100\n");
	char *named = write_file("api-port = 4200\n");
	char flag[128];
	char *argv[] = { "prog", NULL, NULL };
	struct herr err;
	int first;

	clear_env();
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", deflt, 1, argv, &first, &err), 0);
	assert_int_equal(cfg_int(t, NOPTS, "api-port"), 4100);
	assert_string_equal(cfg_find(t, NOPTS, "api-port")->from, "file");
	cfg_free(t, NOPTS);
	snprintf(flag, sizeof(flag), "--config=%s", named);
	argv[1] = flag;
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", deflt, 2, argv, &first, &err), 0);
	assert_int_equal(cfg_int(t, NOPTS, "api-port"), 4200);
	cfg_free(t, NOPTS);
	unlink(deflt);
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", deflt, 1, argv, &first, &err), 0);
	assert_int_equal(cfg_int(t, NOPTS, "api-port"), 3000);
	cfg_free(t, NOPTS);
	unlink(named);
	free(deflt);
	free(named);
	free(t);
}

static char *print_values(struct cfg_opt *t, const char *name, int *rc)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	*rc = cfg_print_values(out, t, NOPTS, name);
	fclose(out);
	return text;
}

/* The printed values are a config file that loads back to the same values. */
static void printed_values_load_back(void **unused)
{
	struct cfg_opt *t = new_table();
	char *argv[] = { "prog", "--data-dir=/srv/h # x", "--verbose", NULL };
	struct herr err;
	char *text, *path;
	int first, rc;

	clear_env();
	setenv("HUTCH_API_PORT", "4300", 1);
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 3, argv, &first, &err), 0);
	text = print_values(t, NULL, &rc);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(text, "api-port = 4300  # env\n"));
	assert_non_null(strstr(text, "verbose = true  # flag\n"));
	assert_non_null(strstr(text, "# domain is unset (default)\n"));
	path = write_file(text);
	free(text);
	cfg_free(t, NOPTS);
	clear_env();
	argv[1] = NULL;
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", path, 1, argv, &first, &err), 0);
	assert_int_equal(cfg_int(t, NOPTS, "api-port"), 4300);
	assert_int_equal(cfg_int(t, NOPTS, "verbose"), 1);
	assert_null(cfg_str(t, NOPTS, "domain"));
	/* '#' starts a comment in the file: a value holding one cannot go there
	 * whole, which is why the check above stops at "/srv/h". */
	assert_string_equal(cfg_str(t, NOPTS, "data-dir"), "/srv/h");
	text = print_values(t, "data-dir", &rc);
	assert_int_equal(rc, 0);
	assert_string_equal(text, "/srv/h\n");
	free(text);
	/* A line break would make the rest of a value a line of its own, which
	 * the file reads as another setting: such a value is a comment. */
	cfg_free(t, NOPTS);
	clear_env();
	setenv("HUTCH_DOMAIN", "x.test\napi-port = 1", 1);
	assert_int_equal(cfg_load(t, NOPTS, "prog", "", NULL, 1, argv, &first, &err), 0);
	text = print_values(t, NULL, &rc);
	assert_int_equal(rc, 0);
	assert_null(strstr(text, "\napi-port = 1"));
	assert_non_null(strstr(text, "# domain: a value with a line break (env) cannot be "
			       "written here\n"));
	free(text);
	clear_env();
	text = print_values(t, "no-such-setting", &rc);
	assert_int_equal(rc, -ENOENT);
	assert_string_equal(text, "");
	free(text);
	cfg_free(t, NOPTS);
	unlink(path);
	free(path);
	free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(defaults_apply),
		cmocka_unit_test(file_then_flags_then_env),
		cmocka_unit_test(bad_values_name_the_setting),
		cmocka_unit_test(bad_file_line_is_reported_with_its_number),
		cmocka_unit_test(help_lists_every_setting),
		cmocka_unit_test(help_names_no_default_file_without_one),
		cmocka_unit_test(default_file_is_read_unless_config_names_another),
		cmocka_unit_test(printed_values_load_back),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
