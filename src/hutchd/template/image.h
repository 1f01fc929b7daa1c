/*
 * Container images as template sources: a docker-archive (`docker save`:
 * manifest.json, the config JSON, layer tars) or an OCI image layout
 * (oci-layout, index.json, blobs/sha256/...), as a folder or a tarball.
 *
 * Every digest is checked with sha256 before its bytes are used: the
 * manifest, config and layer blobs against their descriptors, and every
 * layer's uncompressed stream against the config's rootfs.diff_ids. Each
 * layer is extracted by extract.c (image rules: owners kept, whiteouts
 * become overlay marks, devices skipped) into a temporary folder of the
 * layer store and published under its content hash; tmpl/images/layers/
 * <diff_id> remembers which stored layer a diff id became, so importing
 * or pulling the same layer again reuses it without reading the blob.
 * Images are hostile input: paths inside them are cleaned and opened
 * beneath the image folder without following symlinks, sizes are capped,
 * and on any error nothing of the image stays but layers already whole.
 */
#ifndef HUTCH_TPL_IMAGE_H
#define HUTCH_TPL_IMAGE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"

#define IMG_JSON_MAX (4u << 20)  /* manifest, index or config document */
#define IMG_MAX_LAYERS 32         /* the runtime stacks at most 32 */

/*
 * Imports the image at path (folder or tar/tar.gz file). On success *out
 * is a build result (the shape of tmpl/builds/<id>.json): "layers" (stored
 * layer hashes, lowest first), "user", "workdir", "env", "startCmd" when
 * the image has an Entrypoint or Cmd, and "image" {config, refs}.
 * max_bytes caps the uncompressed bytes of the whole image.
 */
int img_import_path(const char *data_dir, const char *path, uint64_t max_bytes,
		    json_t **out, struct herr *err);

/* The same for an open folder holding the image (what names it in errors). */
int img_import_dir(const char *data_dir, int dir_fd, const char *what, uint64_t max_bytes,
		   json_t **out, struct herr *err);

/* True when the layer of this diff id (64 hex) is stored already. */
bool img_layer_known(const char *data_dir, const char *diff_hex);

/* "sha256:<64 hex>" -> the hex part; NULL when not of that form. */
const char *img_digest_hex(const char *digest);

/* sha256 of everything readable from fd (at most max bytes; -EFBIG past). */
int img_sha256_fd(int fd, uint64_t max, char hex[65], uint64_t *size, struct herr *err);

#endif
