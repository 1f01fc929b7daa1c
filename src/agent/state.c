/*
 * The agent's run-time settings (see state.h). One mutex guards them all;
 * readers get copies, so a concurrent POST /init can never hand a request a
 * half-replaced token or environment.
 */
#include "state.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "cleanup.h"

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static char *access_token;      /* NULL when the sandbox is not secure */
static char *default_user;      /* NULL means "user" */
static char *default_workdir;   /* NULL means unset */
static char **env_vars;         /* NULL-terminated KEY=VALUE, or NULL */

static void copy_out(const char *src, char *out, size_t cap)
{
	if (cap == 0)
		return;
	snprintf(out, cap, "%s", src ? src : "");
}

/* Replaces *slot with a copy of value (NULL or "" clears it). */
static void replace_string(char **slot, const char *value)
{
	char *copy = NULL;

	if (value && *value) {
		copy = strdup(value);
		if (!copy)
			abort(); /* settings must never be half-applied */
	}
	pthread_mutex_lock(&state_lock);
	free(*slot);
	*slot = copy;
	pthread_mutex_unlock(&state_lock);
}

int state_access_token(char *out, size_t cap)
{
	int set;

	pthread_mutex_lock(&state_lock);
	set = access_token != NULL;
	copy_out(access_token, out, cap);
	pthread_mutex_unlock(&state_lock);
	return set;
}

void state_set_access_token(const char *token)
{
	replace_string(&access_token, token);
}

int state_token_matches(const char *given)
{
	int ok;

	pthread_mutex_lock(&state_lock);
	if (!access_token)
		ok = 1;
	else
		ok = given != NULL && auth_equal(given, access_token);
	pthread_mutex_unlock(&state_lock);
	return ok;
}

void state_default_user(char *out, size_t cap)
{
	pthread_mutex_lock(&state_lock);
	copy_out(default_user ? default_user : "user", out, cap);
	pthread_mutex_unlock(&state_lock);
}

void state_default_workdir(char *out, size_t cap)
{
	pthread_mutex_lock(&state_lock);
	copy_out(default_workdir, out, cap);
	pthread_mutex_unlock(&state_lock);
}

void state_set_default_user(const char *name)
{
	replace_string(&default_user, name);
}

void state_set_default_workdir(const char *dir)
{
	replace_string(&default_workdir, dir);
}

void state_env_free(char **env)
{
	if (!env)
		return;
	for (char **e = env; *e; e++)
		free(*e);
	free(env);
}

static char **env_dup(char *const *src)
{
	size_t n = 0;
	char **copy;

	while (src && src[n])
		n++;
	copy = calloc(n + 1, sizeof(*copy));
	if (!copy)
		abort();
	for (size_t i = 0; i < n; i++) {
		copy[i] = strdup(src[i]);
		if (!copy[i])
			abort();
	}
	return copy;
}

char **state_env_copy(void)
{
	char **copy;

	pthread_mutex_lock(&state_lock);
	copy = env_dup(env_vars);
	pthread_mutex_unlock(&state_lock);
	return copy;
}

/* A name a shell could export: non-empty, no '=' (it ends the name). */
static int env_key_ok(const char *key)
{
	return key && *key && !strchr(key, '=');
}

int state_set_env(const char *const *keys, const char *const *values, size_t n,
		  struct herr *err)
{
	char **next = calloc(n + 1, sizeof(*next));

	if (!next)
		return herr_set(err, -ENOMEM, "envVars: out of memory");
	for (size_t i = 0; i < n; i++) {
		if (!env_key_ok(keys[i]) || !values[i]) {
			state_env_free(next);
			return herr_set(err, -EINVAL, "envVars: invalid variable name '%s'",
					keys[i] ? keys[i] : "");
		}
		if (asprintf(&next[i], "%s=%s", keys[i], values[i]) < 0) {
			next[i] = NULL;
			state_env_free(next);
			return herr_set(err, -ENOMEM, "envVars: out of memory");
		}
	}

	pthread_mutex_lock(&state_lock);
	char **old = env_vars;
	env_vars = next;
	pthread_mutex_unlock(&state_lock);
	state_env_free(old);
	return 0;
}
