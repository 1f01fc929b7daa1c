/* Layered configuration (defaults, file, flags, environment): see config.h. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"

#define CFG_LINE_MAX 4096

struct cfg_opt *cfg_find(struct cfg_opt *opts, int nopts, const char *name)
{
	for (int i = 0; i < nopts; i++)
		if (strcmp(opts[i].name, name) == 0)
			return &opts[i];
	return NULL;
}

/* Matches a file key or flag name, where '_' and '-' are the same. */
static struct cfg_opt *find_loose(struct cfg_opt *opts, int nopts, const char *name,
				  size_t len)
{
	for (int i = 0; i < nopts; i++) {
		const char *n = opts[i].name;
		size_t j = 0;

		for (; j < len && n[j]; j++) {
			char a = name[j] == '_' ? '-' : name[j];
			if (a != n[j])
				break;
		}
		if (j == len && n[j] == '\0')
			return &opts[i];
	}
	return NULL;
}

static int parse_bool(const char *v, long long *out)
{
	static const char *const yes[] = { "1", "true", "yes", "on" };
	static const char *const no[] = { "0", "false", "no", "off" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return -EINVAL;
}

static int set_value(struct cfg_opt *o, const char *v, const char *from, struct herr *err)
{
	char *end = NULL;
	long long n;

	switch (o->type) {
	case CFG_STR: {
		char *copy = strdup(v);
		if (!copy)
			return herr_set(err, -ENOMEM, "setting %s: out of memory", o->name);
		free(o->str);
		o->str = copy;
		break;
	}
	case CFG_INT:
		errno = 0;
		n = strtoll(v, &end, 10);
		if (errno || end == v || *end != '\0')
			return herr_set(err, -EINVAL, "setting %s (from %s): '%s' is not an integer",
					o->name, from, v);
		o->num = n;
		break;
	case CFG_BOOL:
		if (parse_bool(v, &o->num) < 0)
			return herr_set(err, -EINVAL, "setting %s (from %s): '%s' is not a boolean",
					o->name, from, v);
		break;
	}
	o->from = from;
	return 0;
}

static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static int load_file(struct cfg_opt *opts, int nopts, const char *path, int must_exist,
		     struct herr *err)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	char line[CFG_LINE_MAX];
	int lineno = 0;

	if (!f) {
		if (errno == ENOENT && !must_exist)
			return 0;
		return herr_sys(err, -errno, "config file %s", path);
	}
	while (fgets(line, sizeof(line), f)) {
		char *hash = strchr(line, '#'), *eq, *key;
		struct cfg_opt *o;

		lineno++;
		if (hash)
			*hash = '\0';
		key = trim(line);
		if (*key == '\0')
			continue;
		eq = strchr(key, '=');
		if (!eq)
			return herr_set(err, -EINVAL, "config file %s:%d: expected key = value",
					path, lineno);
		*eq = '\0';
		key = trim(key);
		o = find_loose(opts, nopts, key, strlen(key));
		if (!o)
			return herr_set(err, -EINVAL, "config file %s:%d: unknown setting '%s'",
					path, lineno, key);
		if (set_value(o, trim(eq + 1), "file", err) < 0)
			return herr_wrap(err, "config file %s:%d", path, lineno);
	}
	return 0;
}

static void env_name(const char *name, char *out, size_t cap)
{
	size_t j = snprintf(out, cap, "HUTCH_");

	for (; *name && j + 1 < cap; name++)
		out[j++] = *name == '-' ? '_' : (char)toupper((unsigned char)*name);
	out[j] = '\0';
}

static int load_env(struct cfg_opt *opts, int nopts, struct herr *err)
{
	char var[128];

	for (int i = 0; i < nopts; i++) {
		const char *v;

		env_name(opts[i].name, var, sizeof(var));
		v = getenv(var);
		if (v && set_value(&opts[i], v, "env", err) < 0)
			return herr_wrap(err, "environment variable %s", var);
	}
	return 0;
}

/* Finds --config in the flags without applying anything else yet. */
static const char *find_config_flag(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0 || strncmp(argv[i], "--", 2) != 0)
			break;
		if (strncmp(argv[i], "--config=", 9) == 0)
			return argv[i] + 9;
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			return argv[i + 1];
	}
	return NULL;
}

static int load_flags(struct cfg_opt *opts, int nopts, int argc, char **argv, int *first_arg,
		      int *want_help, struct herr *err)
{
	int i = 1;

	for (; i < argc; i++) {
		const char *arg = argv[i], *eq, *val;
		struct cfg_opt *o;
		size_t len;

		if (strcmp(arg, "--") == 0) {
			i++;
			break;
		}
		if (strncmp(arg, "--", 2) != 0)
			break;
		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			*want_help = 1;
			continue;
		}
		arg += 2;
		eq = strchr(arg, '=');
		len = eq ? (size_t)(eq - arg) : strlen(arg);
		if (len == 6 && strncmp(arg, "config", 6) == 0) {
			i += eq ? 0 : 1;
			continue;
		}
		o = find_loose(opts, nopts, arg, len);
		if (!o)
			return herr_set(err, -EINVAL, "unknown flag --%.*s (see --help)", (int)len, arg);
		if (eq)
			val = eq + 1;
		else if (o->type == CFG_BOOL)
			val = "true";
		else if (i + 1 < argc)
			val = argv[++i];
		else
			return herr_set(err, -EINVAL, "flag --%s needs a value", o->name);
		if (set_value(o, val, "flag", err) < 0)
			return err->code;
	}
	*first_arg = i;
	return 0;
}

int cfg_load(struct cfg_opt *opts, int nopts, const char *prog, const char *summary,
	     const char *default_file, int argc, char **argv, int *first_arg, struct herr *err)
{
	const char *file = find_config_flag(argc, argv);
	int want_help = 0, rc;

	if (!file)
		file = getenv("HUTCH_CONFIG");
	for (int i = 0; i < nopts; i++) {
		opts[i].str = NULL;
		opts[i].num = 0;
		opts[i].from = "default";
		if (opts[i].def && set_value(&opts[i], opts[i].def, "default", err) < 0)
			return err->code;
	}
	if (file)
		rc = load_file(opts, nopts, file, 1, err);
	else if (default_file)
		rc = load_file(opts, nopts, default_file, 0, err);
	else
		rc = 0;
	if (rc < 0)
		return rc;
	rc = load_flags(opts, nopts, argc, argv, first_arg, &want_help, err);
	if (rc < 0)
		return rc;
	if (want_help) {
		cfg_print_help(stdout, opts, nopts, prog, summary, default_file);
		return 1;
	}
	return load_env(opts, nopts, err);
}

void cfg_print_help(FILE *out, const struct cfg_opt *opts, int nopts, const char *prog,
		    const char *summary, const char *default_file)
{
	static const char *const type_names[] = { "TEXT", "N", "BOOL" };
	char var[128];

	fprintf(out, "Usage: %s [--config=FILE] [--SETTING=VALUE ...]\n", prog);
	if (summary && *summary)
		fprintf(out, "%s\n", summary);
	fprintf(out, "\n");
	fprintf(out, "Settings come from defaults, then the config file (key = value lines),\n"
		     "then flags, then HUTCH_* environment variables (highest).\n\n");
	for (int i = 0; i < nopts; i++) {
		env_name(opts[i].name, var, sizeof(var));
		fprintf(out, "  --%s=%s\n      %s\n      env %s, default %s\n", opts[i].name,
			type_names[opts[i].type], opts[i].help ? opts[i].help : "", var,
			opts[i].def ? opts[i].def : "(unset)");
	}
	fprintf(out, "  --config=FILE\n      read settings from FILE (env HUTCH_CONFIG)");
	if (default_file)
		fprintf(out, "; without one, %s is read when it exists", default_file);
	fprintf(out, "\n");
}

static void print_value(FILE *out, const struct cfg_opt *o)
{
	if (o->type == CFG_STR)
		fprintf(out, "%s", o->str ? o->str : "");
	else if (o->type == CFG_BOOL)
		fprintf(out, "%s", o->num ? "true" : "false");
	else
		fprintf(out, "%lld", o->num);
}

int cfg_print_values(FILE *out, const struct cfg_opt *opts, int nopts, const char *name)
{
	for (int i = 0; i < nopts; i++) {
		const struct cfg_opt *o = &opts[i];

		if (name) {
			if (strcmp(o->name, name) != 0)
				continue;
			print_value(out, o);
			fprintf(out, "\n");
			return 0;
		}
		if (o->type == CFG_STR && !o->str) {
			fprintf(out, "# %s is unset (%s)\n", o->name, o->from);
			continue;
		}
		/* Its rest would be a line of its own: another setting. */
		if (o->type == CFG_STR && strpbrk(o->str, "\r\n")) {
			fprintf(out, "# %s: a value with a line break (%s) cannot be written "
				"here\n", o->name, o->from);
			continue;
		}
		fprintf(out, "%s = ", o->name);
		print_value(out, o);
		fprintf(out, "  # %s\n", o->from);
	}
	return name ? -ENOENT : 0;
}

const char *cfg_str(struct cfg_opt *opts, int nopts, const char *name)
{
	struct cfg_opt *o = cfg_find(opts, nopts, name);

	return o ? o->str : NULL;
}

long long cfg_int(struct cfg_opt *opts, int nopts, const char *name)
{
	struct cfg_opt *o = cfg_find(opts, nopts, name);

	return o ? o->num : 0;
}

void cfg_free(struct cfg_opt *opts, int nopts)
{
	for (int i = 0; i < nopts; i++) {
		free(opts[i].str);
		opts[i].str = NULL;
	}
}
