/*
 * Registry pulls (OCI distribution API over HTTPS with libcurl): resolves
 * a reference such as "busybox", "ghcr.io/org/app:1.2" or "host:5000/a/b@
 * sha256:...", fetches its manifest (an index or manifest list is narrowed
 * to linux/amd64), config and layers into a private OCI layout folder, and
 * hands that folder to image.c, which checks every digest again and stores
 * the layers. Anonymous bearer tokens (WWW-Authenticate: Bearer realm=...)
 * are fetched when the registry asks for them.
 *
 * Transport: https only, except for loopback registries (127.0.0.1,
 * localhost, [::1]) and hosts listed as insecure, which use plain http.
 * Redirects (blob storage) follow the same rule. Everything read is capped:
 * manifests and configs at IMG_JSON_MAX, blobs at their descriptor's size
 * and the whole image at max_bytes; each blob's sha256 is checked as it
 * arrives, and a blob whose layer is already stored (same diff id) is not
 * downloaded at all.
 */
#ifndef HUTCH_TPL_PULL_H
#define HUTCH_TPL_PULL_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"

struct pull_ref {
	char host[256];     /* registry host[:port] */
	char repo[256];     /* e.g. library/busybox */
	char tag[128];      /* "" when a digest is given */
	char digest[80];    /* "sha256:<hex>" or "" */
};

/*
 * Parses an image reference; Docker Hub names get "registry-1.docker.io"
 * and "library/". -EINVAL names the bad part.
 */
int pull_parse_ref(const char *text, struct pull_ref *out, struct herr *err);

/* The canonical text: host/repo:tag or host/repo@digest. */
void pull_ref_text(const struct pull_ref *r, char *out, size_t cap);

struct pull_opts {
	const char *data_dir;
	const char *insecure;   /* comma-separated hosts allowed over http */
	uint64_t max_bytes;     /* the whole image, compressed and not */
	long timeout_s;         /* one HTTP transfer; 0 = 600 */
};

/* Pulls ref and imports it: *out as img_import_dir gives it. */
int pull_image(const struct pull_opts *o, const char *ref, json_t **out,
	       struct herr *err);

#endif
