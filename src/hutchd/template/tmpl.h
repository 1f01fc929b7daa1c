/*
 * Templates built through the E2B API (protocol.md §2.4): the registry of
 * templates (ids, names, tags, builds), the uploaded COPY archives, build
 * logs, and the builder that turns a build request into layers.
 *
 * State under <data_dir>:
 *   layers/<sha256>              content-addressed read-only layers (layer.h)
 *   tmpl/registry.json           templates, names, tags, build states
 *   tmpl/builds/<buildID>.json   a finished build: its layers and config
 *   tmpl/files/<team>/<hash>     uploaded COPY archives, per team
 *   tmpl/cache/<key>             step cache: key -> layer (or "none")
 * Every file is written to a temporary name and renamed, so a crash leaves
 * either the old or the new state, never a half one; a build is visible to
 * sandbox creation only once its builds/<id>.json exists and its tag names
 * it in the registry.
 *
 * Functions return 0 or a negative errno with the message in *err:
 * -ENOENT unknown template/build, -EPERM another team's, -EINVAL bad input,
 * -EEXIST a name another team holds, -EBUSY build already started.
 */
#ifndef HUTCH_TPL_TMPL_H
#define HUTCH_TPL_TMPL_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "template.h"

struct rt;
struct store;

struct tmpl_config {
	const char *data_dir;
	const char *template_dir;  /* where `base` lives (scripts/build-base) */
	const char *agent_dir;     /* bound into build sandboxes like any other */
	struct rt *rt;             /* NULL: builds fail with a clear reason */
	uint64_t max_upload_bytes; /* one COPY archive as uploaded */
	uint64_t max_copy_bytes;   /* bytes one COPY may extract */
	unsigned step_timeout_s;   /* one RUN step */
	unsigned ready_timeout_s;  /* the ready command, at build and at create */
	unsigned max_builds;       /* builds running at once */
	/* A `hutchd templates` command next to a possibly running daemon: it
	 * neither fails the daemon's builds nor removes its temporary files. */
	bool tool;
	uint64_t max_image_bytes;  /* an image, uncompressed; 0 = 16 GiB */
	/* Registries pulled over plain http (comma-separated host[:port]);
	 * loopback ones always may. NULL: none. */
	const char *insecure_registries;
	/* Sandboxes that are not ended keep their template's layers from GC
	 * (NULL: no sandboxes are considered, e.g. in tests). */
	struct store *store;
	int64_t upload_max_age_s;  /* uploaded archives GC keeps; 0 = 7 days */
};

struct tmpl_gc_stats {
	unsigned layers_removed;
	unsigned records_removed;  /* step cache and image records */
	unsigned uploads_removed;
	bool deferred;             /* a build or import held the store */
};

struct tmpl_mgr;

int tmpl_open(const struct tmpl_config *cfg, struct tmpl_mgr **out, struct herr *err);
/* Waits for running builds to notice and stop, then frees. */
void tmpl_close(struct tmpl_mgr *m);

/* POST /v3/templates: fills *reply with TemplateRequestResponseV3. */
int tmpl_request(struct tmpl_mgr *m, int64_t team, json_t *body, json_t **reply,
		 struct herr *err);

/* GET /templates/{id}/files/{hash}: 1 present, 0 wanted. */
int tmpl_file_present(struct tmpl_mgr *m, int64_t team, const char *template_id,
		      const char *hash, struct herr *err);

/*
 * The PUT of an archive: begin opens a private temporary file (fd returned),
 * commit renames it to files/<team>/<hash> once complete, abort removes it.
 */
int tmpl_upload_begin(struct tmpl_mgr *m, int64_t team, const char *hash, char *tmp,
		      size_t cap, struct herr *err);
int tmpl_upload_commit(struct tmpl_mgr *m, int64_t team, const char *hash,
		       const char *tmp, struct herr *err);
uint64_t tmpl_max_upload(struct tmpl_mgr *m);

/* POST /v2/templates/{id}/builds/{buildID}: queues the build. */
int tmpl_build_start(struct tmpl_mgr *m, int64_t team, const char *template_id,
		     const char *build_id, json_t *body, struct herr *err);

/* GET .../builds/{buildID}/status: fills *reply with TemplateBuildInfo. */
int tmpl_build_status(struct tmpl_mgr *m, int64_t team, const char *template_id,
		      const char *build_id, int64_t offset, int64_t limit, json_t **reply,
		      struct herr *err);

/* GET /templates/aliases/{alias}: 0 (reply set), -EPERM, -ENOENT. */
int tmpl_alias(struct tmpl_mgr *m, int64_t team, const char *alias, json_t **reply,
	       struct herr *err);

int tmpl_tags_assign(struct tmpl_mgr *m, int64_t team, json_t *body, json_t **reply,
		     struct herr *err);
int tmpl_tags_remove(struct tmpl_mgr *m, int64_t team, json_t *body, struct herr *err);
int tmpl_tags_list(struct tmpl_mgr *m, int64_t team, const char *template_id,
		   json_t **reply, struct herr *err);

/*
 * DELETE /templates/{id} (id or name). Its builds are kept aside until no
 * sandbox names the template; then a GC (started in the background by a
 * daemon) removes the layers no other template uses.
 */
int tmpl_delete(struct tmpl_mgr *m, int64_t team, const char *ref, struct herr *err);

/*
 * The team's templates as E2B's Template objects (GET /templates), each with
 * its newest build; the caller adds what the registry does not know
 * (envdVersion, diskSizeMB). base, everyone's, is not listed.
 */
int tmpl_list(struct tmpl_mgr *m, int64_t team, json_t **reply, struct herr *err);

/*
 * `hutchd templates import`: imports the image at path (image.h) as the
 * template name[:tag] of team. reply gets {templateID, buildID, names,
 * tags, layers}. The template becomes visible only once whole.
 */
int tmpl_import(struct tmpl_mgr *m, int64_t team, const char *name, const char *path,
		json_t **reply, struct herr *err);

/*
 * `hutchd templates pull`: pulls the image ref from its registry (pull.h)
 * and publishes it as the template name[:tag] (NULL: the repository's last
 * part). reply as for tmpl_import.
 */
int tmpl_pull(struct tmpl_mgr *m, int64_t team, const char *ref, const char *name,
	      json_t **reply, struct herr *err);

/*
 * The build result of an image for fromImage: one imported or pulled
 * before under that reference (its layers still stored), else pulled now.
 * The caller holds the layer store (layer_store_hold).
 */
int tmpl_image_result(struct tmpl_mgr *m, const char *ref, json_t **out,
		      struct herr *err);

/*
 * Garbage collection (gc.c): removes layers no template, build or
 * sandbox needs (skipped, with deferred set, while a build or import is
 * writing layers), the cache and image records that named them, and
 * uploaded archives older than upload_max_age_s of teams with no pending
 * build. A daemon runs it at start and after a template delete.
 */
int tmpl_gc(struct tmpl_mgr *m, struct tmpl_gc_stats *st, struct herr *err);

/*
 * Resolves a reference to a built template of team (templates are private
 * to their team) ready for sandbox creation: out gets the layers (lowest
 * first), user, workdir, env, resources and start/ready commands, and as
 * name the template id, with ":tag" when a tag other than the default was
 * named (so resolving the name again gives the same build). -ENOENT when
 * the team has no built template of that name (the caller then looks for
 * folder templates like `base`).
 */
int tmpl_resolve(struct tmpl_mgr *m, int64_t team, const char *ref,
		 struct lc_template *out, struct herr *err);

#endif
