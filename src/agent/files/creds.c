/*
 * Running a file-system step of /files with the user's credentials.
 *
 * The agent runs as root, and /files acts on behalf of a sandbox user. If it
 * opened paths as root, a user could point a symlink in their own home at
 * /etc/shadow (or any file) and have root read or overwrite it. Instead, the
 * thread doing the opening takes the user's file-system uid and gid and the
 * user's supplementary groups for the duration of the open, mkdir, chown and
 * xattr calls. The kernel then checks every path component, symlink target
 * included, exactly as it would for the user, so following symlinks gives
 * the user nothing they could not do by themselves.
 *
 * Why this is per-thread and therefore safe in a threaded server:
 *  - setfsuid()/setfsgid() change only the calling thread's credentials
 *    (glibc passes them straight to the system call; unlike setuid() it does
 *    not broadcast them to every thread);
 *  - supplementary groups are set with the raw setgroups system call for the
 *    same reason (glibc's setgroups() would change every thread);
 *  - the agent serves each connection on its own thread and the whole window
 *    is synchronous, so no other request ever runs on the switched thread;
 *  - a file-system uid other than 0 clears CAP_DAC_OVERRIDE, CAP_FOWNER,
 *    CAP_CHOWN and the other file capabilities from the thread's effective
 *    set (capabilities(7)), and going back to 0 restores them; CAP_SETUID and
 *    CAP_SETGID stay, which is what lets the thread switch back.
 * Opened descriptors keep the access they were granted, so reading and
 * writing data afterwards needs no switched credentials.
 */
#include "files.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"

static int thread_setgroups(int n, const gid_t *groups)
{
	return (int)syscall(SYS_setgroups, (size_t)n, groups);
}

/* setfsuid reports no errors; reading the value back is how we know. */
static int fsuid_is(uid_t uid)
{
	return (uid_t)setfsuid((uid_t)-1) == uid;
}

static int fsgid_is(gid_t gid)
{
	return (gid_t)setfsgid((gid_t)-1) == gid;
}

int files_creds_enter(const struct agent_user *u, struct files_creds *saved,
		      struct herr *err)
{
	gid_t groups[USERS_GROUPS_MAX + 1];
	int n = 0;

	saved->switched = 0;
	/*
	 * Root needs no switch. Without root we could not switch, and the
	 * kernel already checks the agent's own (unprivileged) credentials.
	 */
	if (u->uid == 0 || geteuid() != 0)
		return 0;

	saved->ngroups = getgroups(USERS_GROUPS_MAX, saved->groups);
	if (saved->ngroups < 0)
		return herr_sys(err, -errno, "getgroups");

	groups[n++] = u->gid;
	for (int i = 0; i < u->ngroups && n < USERS_GROUPS_MAX + 1; i++)
		groups[n++] = u->groups[i];

	/* Groups first: setgroups needs CAP_SETGID, which no step below drops. */
	if (thread_setgroups(n, groups) < 0)
		return herr_sys(err, -errno, "setgroups for user '%s'", u->name);
	saved->switched = 1;
	setfsgid(u->gid);
	setfsuid(u->uid);
	if (!fsgid_is(u->gid) || !fsuid_is(u->uid)) {
		files_creds_leave(saved);
		return herr_set(err, -EPERM, "setfsuid/setfsgid to %u:%u for user '%s' failed",
				(unsigned)u->uid, (unsigned)u->gid, u->name);
	}
	return 0;
}

void files_creds_leave(struct files_creds *saved)
{
	if (!saved->switched)
		return;
	setfsuid(0);
	setfsgid(0);
	/*
	 * A thread left with a user's credentials would quietly serve the next
	 * request with the wrong permissions; that is not a state to carry on
	 * from, so failing to restore them ends the agent.
	 */
	if (thread_setgroups(saved->ngroups, saved->groups) < 0 || !fsuid_is(0) ||
	    !fsgid_is(0)) {
		log_error("files", NULL, "cannot restore root file-system credentials: %s",
			  strerror(errno));
		abort();
	}
	saved->switched = 0;
}
