/*
 * Extraction of a COPY step's uploaded archive (tar, optionally gzip) into a
 * fresh layer directory. The archive comes from an API client and is hostile
 * until proven otherwise: every entry is checked (no absolute paths, no "..",
 * no devices, fifos or sockets, sizes and counts bounded) and every file is
 * created through openat2() beneath the layer without following any symlink,
 * so nothing can be written outside the layer, whatever the archive holds.
 */
#ifndef HUTCH_TPL_EXTRACT_H
#define HUTCH_TPL_EXTRACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define TX_PATH_MAX 4096

struct tx_opts {
	const char *src;   /* the COPY source as the SDK wrote it (may be a glob) */
	const char *dest;  /* absolute path inside the sandbox */
	long uid, gid;     /* owner of everything extracted; -1 keeps root */
	int mode;          /* mode of extracted files; -1 keeps the archive's */
	uint64_t max_file_bytes;
	uint64_t max_total_bytes;
	unsigned max_entries;
	/* Lower layers, topmost first: a parent folder the archive does not
	 * carry is created with the owner and mode it has there, so that the
	 * new layer does not change /home/user into a root-owned folder. */
	const int *lower_fds;
	size_t n_lower;
	/* An image layer (docker save / OCI, with src "" and dest "/"): owners
	 * and folder modes come from the archive, OCI whiteouts (".wh.name",
	 * ".wh..wh..opq") become overlay whiteouts (a 0/0 character device)
	 * and opaque folders (user.overlay.opaque=y), and devices, fifos and
	 * sockets are skipped with a warning instead of failing the layer
	 * (images often carry /dev nodes the runtime provides anyway). */
	bool image_layer;
	const char *what;  /* names the archive in log lines, e.g. a digest */
};

/*
 * Extracts the archive open at archive_fd into the directory layer_fd.
 * Returns the number of entries written, or a negative errno with a message
 * naming the offending entry.
 */
int tx_extract(int archive_fd, int layer_fd, const struct tx_opts *o, struct herr *err);

/*
 * Opens path beneath the folder root with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV): no
 * component may be a symlink or leave root. "" opens root itself.
 * Returns the fd or -1 with errno set.
 */
int tx_open_beneath(int root, const char *path, int flags);

/*
 * Normalises an archive member name: strips "./" and empty components;
 * refuses absolute paths and "..". out receives a relative path ("" for the
 * archive root).
 */
int tx_clean_path(const char *in, char *out, size_t cap, struct herr *err);

/*
 * Where an archive member lands, relative to the layer root (no leading
 * '/'), following the COPY rules: a file named exactly by src goes to dest
 * (or into it when dest ends in '/'); the contents of a folder src go below
 * dest; glob matches keep their path below the glob's fixed prefix.
 * Returns 1 with out set, 0 when the member is not under src.
 */
int tx_map_path(const char *src, const char *dest, const char *member, int is_dir,
		char *out, size_t cap, struct herr *err);

#endif
