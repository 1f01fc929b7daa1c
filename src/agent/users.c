/*
 * Users and groups from the sandbox's own passwd and group files (users.h).
 *
 * No NSS: the agent runs in root filesystems with any libc, or none, so it
 * reads the files itself. Both files are writable by root inside the sandbox,
 * which runs untrusted code, so every line is treated as hostile: a line that
 * is too long, has the wrong number of fields, or a bad number is skipped, and
 * nothing in it can make the agent fail or allocate without bound.
 */
#include "users.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"

/* Longest line considered; longer ones (and what follows on them) are skipped. */
#define USERS_LINE_MAX 65536

static pthread_mutex_t etc_lock = PTHREAD_MUTEX_INITIALIZER;
static char etc_dir[PATH_MAX] = "/etc";

void users_set_etc_dir(const char *dir)
{
	pthread_mutex_lock(&etc_lock);
	snprintf(etc_dir, sizeof(etc_dir), "%s", dir && *dir ? dir : "/etc");
	pthread_mutex_unlock(&etc_lock);
}

void users_set_root(const char *root)
{
	char dir[PATH_MAX];
	const char *sep = root && root[0] && root[strlen(root) - 1] == '/' ? "" : "/";

	snprintf(dir, sizeof(dir), "%s%setc", root && *root ? root : "", sep);
	users_set_etc_dir(dir);
}

static FILE *open_etc_file(const char *name)
{
	char path[PATH_MAX + 16];

	pthread_mutex_lock(&etc_lock);
	snprintf(path, sizeof(path), "%s/%s", etc_dir, name);
	pthread_mutex_unlock(&etc_lock);
	return fopen(path, "re");
}

/*
 * Splits line in place at ':' into exactly n fields; returns 0, or -1 when
 * the count differs (a malformed line).
 */
static int split_fields(char *line, char **fields, int n)
{
	int i = 0;

	fields[i++] = line;
	for (char *p = line; *p; p++) {
		if (*p != ':')
			continue;
		if (i == n)
			return -1;
		*p = '\0';
		fields[i++] = p + 1;
	}
	return i == n ? 0 : -1;
}

/* Decimal id, no sign, no junk, below the reserved (uid_t)-1. */
static int parse_id(const char *s, unsigned int *out)
{
	char *end;
	unsigned long v;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v >= 0xffffffffUL)
		return -1;
	*out = (unsigned int)v;
	return 0;
}

/*
 * Reads the next usable line into *line (getline buffer), without its
 * newline. Returns 1 for a line, 0 at end of file.
 */
static int next_line(FILE *f, char **line, size_t *cap)
{
	ssize_t len;

	while ((len = getline(line, cap, f)) >= 0) {
		if (len > 0 && (*line)[len - 1] == '\n')
			(*line)[--len] = '\0';
		if (len == 0 || len > USERS_LINE_MAX || (*line)[0] == '#')
			continue;
		if (strlen(*line) != (size_t)len)
			continue; /* embedded NUL */
		return 1;
	}
	return 0;
}

struct passwd_entry {
	const char *name;
	unsigned int uid, gid;
	const char *home, *shell;
};

static int parse_passwd_line(char *line, struct passwd_entry *e)
{
	char *f[7];

	if (split_fields(line, f, 7) < 0 || !f[0][0])
		return -1;
	if (parse_id(f[2], &e->uid) < 0 || parse_id(f[3], &e->gid) < 0)
		return -1;
	e->name = f[0];
	e->home = f[5];
	e->shell = f[6];
	if (strlen(e->name) >= USERS_NAME_MAX || strlen(e->home) >= PATH_MAX ||
	    strlen(e->shell) >= PATH_MAX)
		return -1;
	return 0;
}

static int has_gid(const struct agent_user *u, gid_t gid)
{
	for (int i = 0; i < u->ngroups; i++)
		if (u->groups[i] == gid)
			return 1;
	return 0;
}

static void add_gid(struct agent_user *u, gid_t gid)
{
	if (u->ngroups < USERS_GROUPS_MAX && !has_gid(u, gid))
		u->groups[u->ngroups++] = gid;
}

static int member_of(char *members, const char *name)
{
	char *save = NULL;

	for (char *m = strtok_r(members, ",", &save); m; m = strtok_r(NULL, ",", &save))
		if (strcmp(m, name) == 0)
			return 1;
	return 0;
}

/*
 * The primary group first, then every group whose member list names the user
 * (what initgroups would set). A missing group file leaves the primary only.
 */
static void load_groups(struct agent_user *u)
{
	_cleanup_fclose_ FILE *f = open_etc_file("group");
	_cleanup_free_ char *line = NULL;
	size_t cap = 0;

	u->ngroups = 0;
	add_gid(u, u->gid);
	if (!f)
		return;
	while (next_line(f, &line, &cap)) {
		char *fld[4];
		unsigned int gid;

		if (split_fields(line, fld, 4) < 0 || parse_id(fld[2], &gid) < 0)
			continue;
		if (member_of(fld[3], u->name))
			add_gid(u, gid);
	}
}

/*
 * Calls match(entry, arg) on each valid passwd line until it returns 1,
 * filling out from that entry. Returns 0 when found, 1 when not, or a
 * negative errno when the file cannot be opened.
 */
static int find_passwd(int (*match)(const struct passwd_entry *, const void *),
		       const void *arg, struct agent_user *out)
{
	_cleanup_fclose_ FILE *f = open_etc_file("passwd");
	_cleanup_free_ char *line = NULL;
	size_t cap = 0;

	if (!f)
		return -errno;
	while (next_line(f, &line, &cap)) {
		struct passwd_entry e;

		if (parse_passwd_line(line, &e) < 0 || !match(&e, arg))
			continue;
		memset(out, 0, sizeof(*out));
		snprintf(out->name, sizeof(out->name), "%s", e.name);
		out->uid = e.uid;
		out->gid = e.gid;
		snprintf(out->home, sizeof(out->home), "%s", e.home);
		snprintf(out->shell, sizeof(out->shell), "%s", e.shell);
		return 0;
	}
	return 1;
}

static int match_name(const struct passwd_entry *e, const void *arg)
{
	return strcmp(e->name, arg) == 0;
}

static int match_uid(const struct passwd_entry *e, const void *arg)
{
	return e->uid == *(const uid_t *)arg;
}

int users_lookup(const char *name, struct agent_user *out, struct herr *err)
{
	int r;

	if (!name || !*name || strlen(name) >= USERS_NAME_MAX)
		return herr_set(err, -ENOENT, "invalid username: '%.*s'", USERS_NAME_MAX,
				name ? name : "");
	r = find_passwd(match_name, name, out);
	if (r == 1)
		return herr_set(err, -ENOENT, "invalid username: '%s'", name);
	if (r < 0) {
		char etc[PATH_MAX];

		pthread_mutex_lock(&etc_lock);
		snprintf(etc, sizeof(etc), "%s", etc_dir);
		pthread_mutex_unlock(&etc_lock);
		herr_sys(err, r, "invalid username: '%s': reading %s/passwd", name, etc);
		if (err)
			err->code = -ENOENT; /* to callers, the user does not exist */
		return -ENOENT;
	}
	load_groups(out);
	return 0;
}

void users_uid_name(uid_t uid, char *out, size_t cap)
{
	struct agent_user u;

	if (find_passwd(match_uid, &uid, &u) == 0)
		snprintf(out, cap, "%s", u.name);
	else
		snprintf(out, cap, "%u", (unsigned int)uid);
}

void users_gid_name(gid_t gid, char *out, size_t cap)
{
	_cleanup_fclose_ FILE *f = open_etc_file("group");
	_cleanup_free_ char *line = NULL;
	size_t len = 0;

	while (f && next_line(f, &line, &len)) {
		char *fld[4];
		unsigned int g;

		if (split_fields(line, fld, 4) < 0 || parse_id(fld[2], &g) < 0 || !fld[0][0])
			continue;
		if (g == gid) {
			snprintf(out, cap, "%s", fld[0]);
			return;
		}
	}
	snprintf(out, cap, "%u", (unsigned int)gid);
}
