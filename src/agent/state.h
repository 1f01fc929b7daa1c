/*
 * The agent's settings that hutchd changes at run time through POST /init:
 * access token, sandbox-wide environment, default user and workdir. Readers
 * take copies under a lock, so an /init never races a request half-way.
 */
#ifndef HUTCH_AGENT_STATE_H
#define HUTCH_AGENT_STATE_H

#include <stddef.h>

#include "err.h"

#define STATE_TOKEN_MAX 256

/* Copies the access token into out; returns 1 when one is set, else 0. */
int state_access_token(char *out, size_t cap);
void state_set_access_token(const char *token); /* NULL or "" clears it */

/*
 * 1 when no token is set or given (may be NULL) equals it, compared in
 * constant time under the lock (the token is never copied out for this).
 */
int state_token_matches(const char *given);

/* Default user name ("user" unless set) and workdir ("" when unset). */
void state_default_user(char *out, size_t cap);
void state_default_workdir(char *out, size_t cap);
void state_set_default_user(const char *name);
void state_set_default_workdir(const char *dir);

/*
 * A NULL-terminated "KEY=VALUE" array of the sandbox-wide variables, to free
 * with state_env_free. state_set_env replaces them all.
 */
char **state_env_copy(void);
void state_env_free(char **env);
int state_set_env(const char *const *keys, const char *const *values, size_t n,
		  struct herr *err);

#endif
