/*
 * Unit tests of files_creds_enter/leave (src/agent/files/creds.c) against
 * the real kernel: while switched, the calling thread, and only it, opens
 * files with the user's uid, gid and groups. Needs root; skipped otherwise.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files.h"

static char dir[64];
static char secret[128];   /* root:root 0600 */
static char group_file[128]; /* root:4242 0060 */

static int setup(void **state)
{
	int fd;

	if (geteuid() != 0)
		return 0;
	snprintf(dir, sizeof(dir), "/tmp/hutch-files-creds-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	chmod(dir, 0755);
	snprintf(secret, sizeof(secret), "%s/secret", dir);
	snprintf(group_file, sizeof(group_file), "%s/group", dir);
	fd = open(secret, O_CREAT | O_WRONLY, 0600);
	if (fd < 0)
		return -1;
	close(fd);
	fd = open(group_file, O_CREAT | O_WRONLY, 0060);
	if (fd < 0 || fchown(fd, 0, 4242) < 0)
		return -1;
	close(fd);
	return 0;
}

static int teardown(void **state)
{
	char path[160];

	if (geteuid() != 0)
		return 0;
	unlink(secret);
	unlink(group_file);
	snprintf(path, sizeof(path), "%s/created", dir);
	unlink(path);
	rmdir(dir);
	return 0;
}

static struct agent_user nobody(void)
{
	struct agent_user u = { .uid = 65534, .gid = 65534 };

	snprintf(u.name, sizeof(u.name), "nobody");
	return u;
}

static int can_open(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC);

	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

/*
 * A thread inherits the credentials of the thread creating it, so the other
 * thread is started before the switch and told when to try.
 */
static pthread_barrier_t barrier;

static void *open_secret_thread(void *arg)
{
	pthread_barrier_wait(&barrier); /* the main thread has switched */
	*(int *)arg = can_open(secret, O_RDONLY);
	pthread_barrier_wait(&barrier);
	return NULL;
}

static void test_switch_and_back(void **state)
{
	struct agent_user u = nobody();
	struct files_creds saved;
	struct herr err = { 0 };
	gid_t before[64], after[64];
	int nbefore, nafter;

	if (geteuid() != 0)
		skip();
	nbefore = getgroups(64, before);
	assert_true(can_open(secret, O_RDONLY));

	assert_int_equal(files_creds_enter(&u, &saved, &err), 0);
	assert_false(can_open(secret, O_RDONLY));
	assert_int_equal(errno, EACCES);
	files_creds_leave(&saved);

	assert_true(can_open(secret, O_RDONLY));
	nafter = getgroups(64, after);
	assert_int_equal(nafter, nbefore);
	assert_memory_equal(after, before, (size_t)nafter * sizeof(gid_t));
}

static void test_other_threads_keep_root(void **state)
{
	struct agent_user u = nobody();
	struct files_creds saved;
	struct herr err = { 0 };
	pthread_t t;
	int other = -1;

	if (geteuid() != 0)
		skip();
	pthread_barrier_init(&barrier, NULL, 2);
	assert_int_equal(pthread_create(&t, NULL, open_secret_thread, &other), 0);
	assert_int_equal(files_creds_enter(&u, &saved, &err), 0);
	pthread_barrier_wait(&barrier);
	pthread_barrier_wait(&barrier); /* the other thread has tried */
	assert_false(can_open(secret, O_RDONLY));
	files_creds_leave(&saved);
	pthread_join(t, NULL);
	pthread_barrier_destroy(&barrier);
	assert_int_equal(other, 1);
}

static void test_supplementary_groups(void **state)
{
	struct agent_user u = nobody();
	struct files_creds saved;
	struct herr err = { 0 };

	if (geteuid() != 0)
		skip();
	assert_int_equal(files_creds_enter(&u, &saved, &err), 0);
	assert_false(can_open(group_file, O_RDONLY));
	files_creds_leave(&saved);

	u.groups[0] = 4242;
	u.ngroups = 1;
	assert_int_equal(files_creds_enter(&u, &saved, &err), 0);
	assert_true(can_open(group_file, O_RDONLY));
	files_creds_leave(&saved);
}

static void test_created_files_belong_to_user(void **state)
{
	struct agent_user u = nobody();
	struct files_creds saved;
	struct herr err = { 0 };
	char path[160];
	struct stat st;
	int fd;

	if (geteuid() != 0)
		skip();
	snprintf(path, sizeof(path), "%s/created", dir);
	/* The user cannot create in a root 0755 folder... */
	assert_int_equal(files_creds_enter(&u, &saved, &err), 0);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	files_creds_leave(&saved);
	assert_int_equal(fd, -1);

	/* ...but can in one open to all, and the file is theirs. */
	chmod(dir, 0777);
	assert_int_equal(files_creds_enter(&u, &saved, &err), 0);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	files_creds_leave(&saved);
	chmod(dir, 0755);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	close(fd);
	assert_int_equal(st.st_uid, 65534);
	assert_int_equal(st.st_gid, 65534);
}

static void test_root_user_is_not_switched(void **state)
{
	struct agent_user u = { .uid = 0, .gid = 0 };
	struct files_creds saved;
	struct herr err = { 0 };

	if (geteuid() != 0)
		skip();
	assert_int_equal(files_creds_enter(&u, &saved, &err), 0);
	assert_int_equal(saved.switched, 0);
	assert_true(can_open(secret, O_RDONLY));
	files_creds_leave(&saved);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_switch_and_back),
		cmocka_unit_test(test_other_threads_keep_root),
		cmocka_unit_test(test_supplementary_groups),
		cmocka_unit_test(test_created_files_belong_to_user),
		cmocka_unit_test(test_root_user_is_not_switched),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
