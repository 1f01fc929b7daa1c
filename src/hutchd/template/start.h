/*
 * Running a built template's start command and waiting for its ready
 * command in a freshly created sandbox (see start.c).
 */
#ifndef HUTCH_TPL_START_H
#define HUTCH_TPL_START_H

#include "buf.h"
#include "err.h"

struct rt;

/* How long a create waits for the ready command. */
#define TMPL_READY_CREATE_S 50

/*
 * Starts start (may be NULL) detached and waits up to timeout_s for ready
 * (may be NULL) to succeed, through the sandbox's agent. -ETIMEDOUT with a
 * clear message when the ready command never succeeds.
 */
int tmpl_start_in_sandbox(struct rt *rt, const char *id, const char *token,
			  const char *start, const char *ready, const char *workdir,
			  unsigned timeout_s, struct herr *err);

/* The shell text used for it (exposed for tests). */
int tmpl_start_script(const char *start, const char *ready, unsigned timeout_s,
		      struct hbuf *out);

#endif
