/*
 * Rewrites of CRIU image entries for a fork (criu_images.c).
 */
#ifndef HUTCH_CRIU_IMAGES_H
#define HUTCH_CRIU_IMAGES_H

#include <stdint.h>

#include "err.h"

/* In the image folder dir: the user namespace's id maps moved to the range
 * starting at new_base (refused unless they are the one extent a sandbox
 * has), and the UTS namespace named from_host renamed to_host. */
int rt_images_rekey(const char *dir, uint32_t new_base, const char *from_host,
		    const char *to_host, struct herr *err);

/* In files.img of dir: sockets bound to from (IPv4, network byte order;
 * also IPv6 ones bound to ::ffff:from) bound to to instead; *moved says
 * how many. */
int rt_images_rebind(const char *dir, uint32_t from, uint32_t to, int *moved,
		     struct herr *err);

#endif
