/*
 * Templates as hutchd finds them on disk: <template_dir>/<name>/ holding
 * rootfs/ (the read-only lowest layer of every sandbox made from it),
 * template.json (default user, workdir, env and resources) and an empty
 * `complete` file written last by the builder, so a half-built template is
 * never used.
 */
#ifndef HUTCH_LC_TEMPLATE_H
#define HUTCH_LC_TEMPLATE_H

#include <stdint.h>

#include <jansson.h>

#include "err.h"

#define TPL_NAME_MAX 64
#define TPL_USER_MAX 32
#define TPL_PATH_MAX 1024
#define TPL_JSON_MAX (64 * 1024)

struct lc_template {
	char name[TPL_NAME_MAX + 1];
	char rootfs[4096];            /* host path of the layer */
	char user[TPL_USER_MAX + 1];  /* default user inside the sandbox */
	char workdir[TPL_PATH_MAX];   /* default workdir inside the sandbox */
	json_t *env;                  /* object of strings, owned */
	int64_t cpu_count, memory_mb, disk_mb; /* 0 = node default */
	/* Templates built through the API (src/hutchd/template): their layer
	 * folders, lowest first, replace rootfs when n_layers > 0; start_cmd
	 * and ready_cmd (NULL = none) run once the agent is up. Owned, freed
	 * by tpl_clear. */
	char **layers;
	size_t n_layers;
	char *start_cmd, *ready_cmd;
};

/*
 * Resolves a template reference from a create request ("base",
 * "base:default", any case) to the folder under template_dir and loads it.
 * -ENOENT when there is no complete template of that name; -EINVAL when
 * template.json is unusable (the message names the field).
 */
int tpl_load(const char *template_dir, const char *ref, struct lc_template *out,
	     struct herr *err);

/* Parses template.json text (exposed for tests); fills user..disk_mb. */
int tpl_parse(const char *text, size_t len, struct lc_template *out, struct herr *err);

void tpl_clear(struct lc_template *t);

#endif
