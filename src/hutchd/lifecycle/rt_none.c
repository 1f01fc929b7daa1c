/* Built when the runtime is not: every sandbox operation says so. */
#include "sandbox_rt.h"

#include <errno.h>

int lcrt_open(const struct lc_config *cfg, struct lc_rt **out, struct herr *err)
{
	*out = NULL;
	return herr_set(err, -ENOSYS, "this hutchd was built without the sandbox runtime");
}

void lcrt_close(struct lc_rt *rt)
{
}

struct rt *lcrt_runtime(struct lc_rt *rt)
{
	return NULL;
}

int lcrt_start(struct lc_rt *rt, const struct store_sandbox *sb,
	       const struct lc_template *tpl, struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

int lcrt_prestart(struct lc_rt *rt, const char *id, const struct lc_template *tpl,
		  const struct lc_resources *res, struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

int lcrt_finish_warm(struct lc_rt *rt, const struct store_sandbox *sb,
		     const struct lc_template *tpl, struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

int lcrt_destroy(struct lc_rt *rt, const char *id, struct herr *err)
{
	return herr_set(err, -ENOENT, "no sandbox runtime on this node");
}

int lcrt_each(struct lc_rt *rt, int (*fn)(void *arg, const char *id), void *arg)
{
	return 0;
}

int lcrt_dial(struct lc_rt *rt, const char *id, uint16_t port, struct herr *err)
{
	return herr_set(err, -ENOENT, "no sandbox runtime on this node");
}

int lcrt_alive(struct lc_rt *rt, const char *id)
{
	return 0;
}

int lcrt_set_network(struct lc_rt *rt, const char *id, json_t *network,
		     struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

int lcrt_stats(struct lc_rt *rt, const char *id, struct lc_stats *out, struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

int lcrt_pause(struct lc_rt *rt, const char *id, bool keep_memory,
	       struct rt_ckpt_stats *stats, struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

enum lcrt_paused lcrt_paused_kind(struct lc_rt *rt, const char *id)
{
	return LCRT_PAUSED_NONE;
}

int lcrt_known(struct lc_rt *rt, const char *id)
{
	return 0;
}

void lcrt_drop_images(struct lc_rt *rt, const char *id)
{
}

int lcrt_release_keep_disk(struct lc_rt *rt, const char *id, struct herr *err)
{
	return 0;
}

int lcrt_resume(struct lc_rt *rt, const struct store_sandbox *sb,
		const struct lc_template *tpl, bool keep_memory, struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

int lcrt_fork(struct lc_rt *rt, const struct store_sandbox *sb,
	      const struct lc_template *tpl, const struct lcrt_fork_from *from,
	      struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

int lcrt_copy_images(struct lc_rt *rt, const char *id, const char *dir, int64_t *bytes,
		     struct herr *err)
{
	return herr_set(err, -ENOSYS, "no sandbox runtime on this node");
}

int lcrt_remove_paused(struct lc_rt *rt, const char *id, struct herr *err)
{
	return herr_set(err, -ENOENT, "no sandbox runtime on this node");
}

void lcrt_stop(struct lc_rt *rt, const char *id)
{
}

void lcrt_thaw(struct lc_rt *rt, const char *id)
{
}

void lcrt_on_exit(struct lc_rt *rt, lcrt_exit_fn fn, void *arg)
{
}

int lcrt_exit_reason(struct lc_rt *rt, const char *id, char *out, size_t len)
{
	return 0;
}
