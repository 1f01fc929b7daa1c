/*
 * The warm pool: sandboxes of one template started ahead of demand, up to a
 * listening agent that has not been configured yet. A create takes one (its
 * id becomes the new sandbox's id) and only applies its own settings, which
 * takes milliseconds instead of a whole start. Internal to the lifecycle.
 */
#ifndef HUTCH_LC_WARM_H
#define HUTCH_LC_WARM_H

#include <stdbool.h>

#include "lifecycle.h"

struct lc_rt;
struct warm;

/* Starts the filler thread (nothing when cfg->warm_pool is 0: *out NULL). */
int warm_start(struct lc_rt *rt, const struct lc_config *cfg, struct warm **out,
	       struct herr *err);
/* Stops filling and destroys every pooled sandbox no create has taken. */
void warm_stop(struct warm *w);
/* Moves a ready sandbox of template tpl_name to "claimed"; false if none. */
bool warm_claim(struct warm *w, const char *tpl_name, char id[SBX_ID_LEN + 1]);
/* Removes a claimed id from the pool; true if it was one (it is now the
 * caller's to finish or destroy). */
bool warm_take(struct warm *w, const char *id);

#endif
