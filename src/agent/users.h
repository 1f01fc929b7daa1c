/*
 * Users and groups of the sandbox, read from its own /etc/passwd and
 * /etc/group (no NSS: the agent must work in any root filesystem).
 */
#ifndef HUTCH_AGENT_USERS_H
#define HUTCH_AGENT_USERS_H

#include <limits.h>
#include <sys/types.h>

#include "err.h"

#define USERS_NAME_MAX 64
#define USERS_GROUPS_MAX 64

struct agent_user {
	char name[USERS_NAME_MAX];
	uid_t uid;
	gid_t gid;
	char home[PATH_MAX];
	char shell[PATH_MAX];
	gid_t groups[USERS_GROUPS_MAX]; /* supplementary groups, from /etc/group */
	int ngroups;
};

/*
 * Sets the root under which etc/passwd and etc/group are read ("/" by
 * default; tests point it at a fixture folder).
 */
void users_set_root(const char *root);

/* Sets the folder holding passwd and group directly ("/etc" by default). */
void users_set_etc_dir(const char *dir);

/* Looks a user up by name; -ENOENT with "invalid username: '<name>'" when unknown. */
int users_lookup(const char *name, struct agent_user *out, struct herr *err);

/* Name of a uid or gid, or its number as text when it has no entry. */
void users_uid_name(uid_t uid, char *out, size_t cap);
void users_gid_name(gid_t gid, char *out, size_t cap);

#endif
