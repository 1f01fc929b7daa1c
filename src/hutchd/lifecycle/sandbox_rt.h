/*
 * The lifecycle's view of the runtime: start a sandbox from a store row and
 * its template (runtime create, wait for the agent, POST /init), destroy,
 * liveness, listing, dialing, network policy and usage. rt_glue.c implements
 * it over rt.h when the runtime is built; rt_none.c reports that there is
 * none.
 */
#ifndef HUTCH_LC_SANDBOX_RT_H
#define HUTCH_LC_SANDBOX_RT_H

#include <stdint.h>

#include <jansson.h>

#include "lifecycle.h"
#include "template.h"

struct lc_rt;

int lcrt_open(const struct lc_config *cfg, struct lc_rt **out, struct herr *err);
void lcrt_close(struct lc_rt *rt);
/* The runtime itself, for template builds (NULL without one). */
struct rt *lcrt_runtime(struct lc_rt *rt);
int lcrt_start(struct lc_rt *rt, const struct store_sandbox *sb,
	       const struct lc_template *tpl, struct herr *err);
/* Warm pool: a sandbox started up to a listening agent, without /init... */
int lcrt_prestart(struct lc_rt *rt, const char *id, const struct lc_template *tpl,
		  const struct lc_resources *res, struct herr *err);
/* ...and made ready for a create's row: its egress policy, then /init. */
int lcrt_finish_warm(struct lc_rt *rt, const struct store_sandbox *sb,
		     const struct lc_template *tpl, struct herr *err);
int lcrt_destroy(struct lc_rt *rt, const char *id, struct herr *err);
/* 1 running, 0 not, negative on error. */
int lcrt_alive(struct lc_rt *rt, const char *id);
/* Calls fn with the id of every sandbox the runtime knows; stops on non-zero. */
int lcrt_each(struct lc_rt *rt, int (*fn)(void *arg, const char *id), void *arg);
int lcrt_dial(struct lc_rt *rt, const char *id, uint16_t port, struct herr *err);
int lcrt_set_network(struct lc_rt *rt, const char *id, json_t *network,
		     struct herr *err);
int lcrt_stats(struct lc_rt *rt, const char *id, struct lc_stats *out, struct herr *err);

#endif
