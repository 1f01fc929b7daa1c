/*
 * Loading templates from the template dir (see template.h). The reference
 * comes from a client, so it is reduced to a plain folder name before it
 * touches the filesystem; template.json comes from whoever built the
 * template and is checked field by field, because its user and workdir end
 * up on the agent's command line and its env in every process.
 */
#include "template.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"

#define TPL_ENV_MAX 256
#define TPL_ENV_VALUE_MAX 8192

/*
 * "Base", "base:default" -> "base". Only [a-z0-9_-] survives, so the name can
 * never be "..", contain '/', or start with '.': it always names a direct
 * child of the template dir.
 */
static int ref_to_name(const char *ref, char name[TPL_NAME_MAX + 1], struct herr *err)
{
	const char *colon = strchr(ref, ':');
	size_t n = colon ? (size_t)(colon - ref) : strlen(ref);

	if (colon && strcmp(colon + 1, "default") != 0)
		return herr_set(err, -ENOENT, "template '%.128s' not found: this node keeps "
				"no tagged templates (only ':default')", ref);
	if (n == 0 || n > TPL_NAME_MAX)
		return herr_set(err, -ENOENT, "template '%.128s' not found", ref);
	for (size_t i = 0; i < n; i++) {
		char c = (char)tolower((unsigned char)ref[i]);

		if (!(isdigit((unsigned char)c) || (c >= 'a' && c <= 'z') ||
		      ((c == '-' || c == '_') && i > 0)))
			return herr_set(err, -ENOENT, "template '%.128s' not found", ref);
		name[i] = c;
	}
	name[n] = '\0';
	return 0;
}

static int user_valid(const char *u)
{
	size_t n = strlen(u);

	if (n == 0 || n > TPL_USER_MAX || !(islower((unsigned char)u[0]) || u[0] == '_'))
		return 0;
	for (size_t i = 1; i < n; i++)
		if (!(islower((unsigned char)u[i]) || isdigit((unsigned char)u[i]) ||
		      u[i] == '_' || u[i] == '-'))
			return 0;
	return 1;
}

/* Absolute, no "..", no control characters: it becomes an agent flag. */
static int workdir_valid(const char *p)
{
	size_t n = strlen(p);

	if (n == 0 || n >= TPL_PATH_MAX || p[0] != '/')
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
			return 0;
	return strstr(p, "/../") == NULL && (n < 3 || strcmp(p + n - 3, "/..") != 0);
}

static int env_name_valid(const char *k)
{
	if (!*k || isdigit((unsigned char)*k))
		return 0;
	for (; *k; k++)
		if (!(isalnum((unsigned char)*k) || *k == '_'))
			return 0;
	return 1;
}

static int parse_env(json_t *env, struct lc_template *out, struct herr *err)
{
	const char *k;
	json_t *v;

	if (!env || json_is_null(env)) {
		out->env = json_object();
		return out->env ? 0 : herr_set(err, -ENOMEM, "out of memory");
	}
	if (!json_is_object(env) || json_object_size(env) > TPL_ENV_MAX)
		return herr_set(err, -EINVAL, "template.json: 'env' must be an object of at "
				"most %d strings", TPL_ENV_MAX);
	json_object_foreach(env, k, v) {
		if (!env_name_valid(k) || strlen(k) > 256)
			return herr_set(err, -EINVAL, "template.json: env name '%.64s' is not "
					"a valid variable name", k);
		if (!json_is_string(v) || json_string_length(v) > TPL_ENV_VALUE_MAX ||
		    strlen(json_string_value(v)) != json_string_length(v))
			return herr_set(err, -EINVAL, "template.json: env '%.64s' must be a "
					"string without NUL of at most %d bytes", k,
					TPL_ENV_VALUE_MAX);
	}
	out->env = json_incref(env);
	return 0;
}

/* An optional positive integer in [lo, hi]; absent = 0 (node default). */
static int parse_int(json_t *root, const char *field, int64_t lo, int64_t hi,
		     int64_t *out, struct herr *err)
{
	json_t *v = json_object_get(root, field);

	*out = 0;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return herr_set(err, -EINVAL, "template.json: '%s' must be an integer from "
				"%lld to %lld", field, (long long)lo, (long long)hi);
	*out = json_integer_value(v);
	return 0;
}

static int parse_string(json_t *root, const char *field, const char *def,
			int (*valid)(const char *), char *out, size_t cap,
			struct herr *err)
{
	json_t *v = json_object_get(root, field);
	const char *s = def;

	if (v && !json_is_null(v)) {
		if (!json_is_string(v))
			return herr_set(err, -EINVAL, "template.json: '%s' must be a string",
					field);
		s = json_string_value(v);
	}
	if (!valid(s) || strlen(s) >= cap)
		return herr_set(err, -EINVAL, "template.json: '%s' value '%.64s' is not "
				"acceptable", field, s);
	snprintf(out, cap, "%s", s);
	return 0;
}

int tpl_parse(const char *text, size_t len, struct lc_template *out, struct herr *err)
{
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	int rc;

	if (!root)
		return herr_set(err, -EINVAL, "template.json: line %d: %s", je.line, je.text);
	if (!json_is_object(root)) {
		json_decref(root);
		return herr_set(err, -EINVAL, "template.json: not a JSON object");
	}
	rc = parse_string(root, "user", "user", user_valid, out->user, sizeof(out->user),
			  err);
	if (rc == 0)
		rc = parse_string(root, "workdir", "/home/user", workdir_valid, out->workdir,
				  sizeof(out->workdir), err);
	if (rc == 0)
		rc = parse_int(root, "cpuCount", 1, 64, &out->cpu_count, err);
	if (rc == 0)
		rc = parse_int(root, "memoryMB", 64, 1 << 20, &out->memory_mb, err);
	if (rc == 0)
		rc = parse_int(root, "diskMB", 64, 1 << 22, &out->disk_mb, err);
	if (rc == 0)
		rc = parse_env(json_object_get(root, "env"), out, err);
	json_decref(root);
	return rc;
}

static int read_small_file(const char *path, char **out, size_t *len, struct herr *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	ssize_t n;

	if (fd < 0)
		return herr_sys(err, -errno, "opening %s", path);
	if (fstat(fd, &st) < 0)
		return herr_sys(err, -errno, "stat %s", path);
	if (!S_ISREG(st.st_mode) || st.st_size > TPL_JSON_MAX)
		return herr_set(err, -EINVAL, "%s: not a regular file of at most %d bytes",
				path, TPL_JSON_MAX);
	buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		return herr_set(err, -ENOMEM, "out of memory");
	n = read(fd, buf, (size_t)st.st_size);
	if (n < 0)
		return herr_sys(err, -errno, "reading %s", path);
	buf[n] = '\0';
	*len = (size_t)n;
	*out = steal_ptr(&buf);
	return 0;
}

int tpl_load(const char *template_dir, const char *ref, struct lc_template *out,
	     struct herr *err)
{
	_cleanup_free_ char *text = NULL;
	char path[4096];
	struct stat st;
	size_t len = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = ref_to_name(ref, out->name, err);
	if (rc < 0)
		return rc;
	snprintf(path, sizeof(path), "%s/%s/complete", template_dir, out->name);
	if (stat(path, &st) < 0)
		return herr_set(err, -ENOENT, "template '%s' not found", out->name);
	snprintf(out->rootfs, sizeof(out->rootfs), "%s/%s/rootfs", template_dir, out->name);
	if (stat(out->rootfs, &st) < 0 || !S_ISDIR(st.st_mode))
		return herr_set(err, -ENOENT, "template '%s' is incomplete: it has no "
				"rootfs folder", out->name);
	snprintf(path, sizeof(path), "%s/%s/template.json", template_dir, out->name);
	rc = read_small_file(path, &text, &len, err);
	if (rc == 0)
		rc = tpl_parse(text, len, out, err);
	if (rc < 0) {
		tpl_clear(out);
		return herr_wrap(err, "template '%s'", out->name);
	}
	return 0;
}

void tpl_clear(struct lc_template *t)
{
	json_decref(t->env);
	t->env = NULL;
	for (size_t i = 0; i < t->n_layers; i++)
		free(t->layers[i]);
	free(t->layers);
	t->layers = NULL;
	t->n_layers = 0;
	free(t->start_cmd);
	free(t->ready_cmd);
	t->start_cmd = t->ready_cmd = NULL;
}
