/*
 * COPY archive extraction against hostile archives: "..", absolute names,
 * a symlink then a file through it, hard links out of the layer, devices,
 * huge files, too many entries; and the ordinary cases (files, folders,
 * links, gzip, owners and modes, destination mapping, parent folders that
 * keep the lower layer's owner). Archives are written with libarchive into
 * real files in a temporary folder; every refusal is also checked to have
 * written nothing outside the layer.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <cmocka.h>

#include "extract.h"
#include "layer.h"

struct fx {
	char dir[64];
	char layer[128], outside[128], tar[128], lower[128];
	int layer_fd;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	snprintf(f->dir, sizeof(f->dir), "/tmp/hutch-tx-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->layer, sizeof(f->layer), "%s/layer", f->dir);
	snprintf(f->outside, sizeof(f->outside), "%s/outside", f->dir);
	snprintf(f->lower, sizeof(f->lower), "%s/lower", f->dir);
	snprintf(f->tar, sizeof(f->tar), "%s/a.tar", f->dir);
	assert_int_equal(mkdir(f->layer, 0755), 0);
	assert_int_equal(mkdir(f->outside, 0755), 0);
	assert_int_equal(mkdir(f->lower, 0755), 0);
	f->layer_fd = open(f->layer, O_RDONLY | O_DIRECTORY);
	assert_true(f->layer_fd >= 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	int fd = open("/tmp", O_RDONLY | O_DIRECTORY);

	close(f->layer_fd);
	assert_int_equal(layer_remove_tree(fd, f->dir + 5, NULL), 0);
	close(fd);
	free(f);
	return 0;
}

struct ent {
	const char *path;
	unsigned type;        /* AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFCHR */
	const char *data;     /* file content, or link target */
	const char *hardlink; /* makes a hard link entry */
	int64_t size;         /* -1: strlen(data) */
};

static void write_tar(const char *path, const struct ent *e, size_t n, int gzip)
{
	struct archive *a = archive_write_new();

	archive_write_set_format_pax_restricted(a);
	if (gzip)
		archive_write_add_filter_gzip(a);
	assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
	for (size_t i = 0; i < n; i++) {
		struct archive_entry *ae = archive_entry_new();
		int64_t size = e[i].size >= 0 ? e[i].size :
			(e[i].data && e[i].type == AE_IFREG ? (int64_t)strlen(e[i].data) : 0);

		archive_entry_set_pathname(ae, e[i].path);
		archive_entry_set_filetype(ae, e[i].type);
		archive_entry_set_perm(ae, e[i].type == AE_IFDIR ? 0755 : 0644);
		if (e[i].type == AE_IFLNK)
			archive_entry_set_symlink(ae, e[i].data);
		if (e[i].type == AE_IFCHR)
			archive_entry_set_rdev(ae, makedev(1, 3));
		if (e[i].hardlink)
			archive_entry_set_hardlink(ae, e[i].hardlink);
		else if (e[i].type == AE_IFREG)
			archive_entry_set_size(ae, size);
		assert_int_equal(archive_write_header(a, ae), ARCHIVE_OK);
		if (e[i].type == AE_IFREG && !e[i].hardlink && e[i].data)
			archive_write_data(a, e[i].data, strlen(e[i].data));
		archive_entry_free(ae);
	}
	archive_write_close(a);
	archive_write_free(a);
}

static struct tx_opts opts(const char *src, const char *dest)
{
	struct tx_opts o = {
		.src = src, .dest = dest, .uid = -1, .gid = -1, .mode = -1,
		.max_file_bytes = 1 << 20, .max_total_bytes = 4 << 20, .max_entries = 100,
	};
	return o;
}

static int run(struct fx *f, const struct ent *e, size_t n, int gzip,
	       const struct tx_opts *o, struct herr *err)
{
	int fd, rc;

	write_tar(f->tar, e, n, gzip);
	fd = open(f->tar, O_RDONLY);
	assert_true(fd >= 0);
	rc = tx_extract(fd, f->layer_fd, o, err);
	close(fd);
	return rc;
}

static char *slurp(const char *path)
{
	static char buf[4096];
	FILE *fp = fopen(path, "r");
	size_t n;

	if (!fp)
		return NULL;
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	buf[n] = '\0';
	fclose(fp);
	return buf;
}

static int count_entries(const char *dir)
{
	char cmd[256];
	int n = -1;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "find '%s' -mindepth 1 | wc -l", dir);
	p = popen(cmd, "r");
	assert_non_null(p);
	assert_int_equal(fscanf(p, "%d", &n), 1);
	pclose(p);
	return n;
}

static void test_folder_copy(void **state)
{
	struct fx *f = *state;
	const struct ent e[] = {
		{ "app/", AE_IFDIR, NULL, NULL, -1 },
		{ "app/main.py", AE_IFREG, "print(1)\n", NULL, -1 },
		{ "app/lib/x.txt", AE_IFREG, "x", NULL, -1 },
		{ "app/link", AE_IFLNK, "/etc/passwd", NULL, -1 },
		{ "app/same", AE_IFREG, NULL, "app/main.py", -1 },
	};
	struct tx_opts o = opts("app", "/home/user/app");
	struct herr err = { 0 };
	char path[256], target[64];
	struct stat st;

	o.uid = 1000;
	o.gid = 1000;
	assert_int_equal(run(f, e, 5, 1, &o, &err), 5);
	snprintf(path, sizeof(path), "%s/home/user/app/main.py", f->layer);
	assert_string_equal(slurp(path), "print(1)\n");
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_uid, 1000);
	assert_int_equal(st.st_nlink, 2);
	snprintf(path, sizeof(path), "%s/home/user/app/lib/x.txt", f->layer);
	assert_string_equal(slurp(path), "x");
	snprintf(path, sizeof(path), "%s/home/user/app/link", f->layer);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	assert_true(n > 0);
	target[n] = '\0';
	assert_string_equal(target, "/etc/passwd");
}

static void test_single_file_and_mode(void **state)
{
	struct fx *f = *state;
	const struct ent e[] = { { "hello.txt", AE_IFREG, "hi", NULL, -1 } };
	struct tx_opts o = opts("hello.txt", "/opt/");
	struct herr err = { 0 };
	char path[256];
	struct stat st;

	o.mode = 0600;
	assert_int_equal(run(f, e, 1, 0, &o, &err), 1);
	snprintf(path, sizeof(path), "%s/opt/hello.txt", f->layer);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_string_equal(slurp(path), "hi");
}

static void test_dotdot_refused(void **state)
{
	struct fx *f = *state;
	const struct ent e[] = { { "../outside/pwned", AE_IFREG, "x", NULL, -1 } };
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };

	assert_int_equal(run(f, e, 1, 0, &o, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "'..'"));
	assert_int_equal(count_entries(f->outside), 0);
	assert_int_equal(count_entries(f->layer), 0);
}

static void test_absolute_refused(void **state)
{
	struct fx *f = *state;
	char abs[256];
	struct ent e[] = { { NULL, AE_IFREG, "x", NULL, -1 } };
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };

	snprintf(abs, sizeof(abs), "%s/pwned", f->outside);
	e[0].path = abs;
	assert_int_equal(run(f, e, 1, 0, &o, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "absolute"));
	assert_int_equal(count_entries(f->outside), 0);
}

static void test_symlink_then_file_through_it(void **state)
{
	struct fx *f = *state;
	struct ent e[] = {
		{ "evil", AE_IFLNK, NULL, NULL, -1 },
		{ "evil/pwned", AE_IFREG, "x", NULL, -1 },
	};
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };

	e[0].data = f->outside;
	assert_true(run(f, e, 2, 0, &o, &err) < 0);
	assert_non_null(strstr(err.msg, "evil"));
	assert_int_equal(count_entries(f->outside), 0);
}

static void test_symlink_replaced_not_followed(void **state)
{
	struct fx *f = *state;
	char victim[256];
	struct ent e[] = {
		{ "a", AE_IFLNK, NULL, NULL, -1 },
		{ "a", AE_IFREG, "new", NULL, -1 },
	};
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };
	char path[256];
	struct stat st;

	snprintf(victim, sizeof(victim), "%s/victim", f->outside);
	e[0].data = victim;
	assert_int_equal(run(f, e, 2, 0, &o, &err), 2);
	assert_int_equal(count_entries(f->outside), 0);
	snprintf(path, sizeof(path), "%s/a", f->layer);
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
}

static void test_hardlink_out_refused(void **state)
{
	struct fx *f = *state;
	const struct ent up[] = { { "x", AE_IFREG, NULL, "../outside/secret", -1 } };
	const struct ent abs[] = { { "y", AE_IFREG, NULL, "/etc/passwd", -1 } };
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };

	assert_int_equal(run(f, up, 1, 0, &o, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "'..'"));
	assert_int_equal(run(f, abs, 1, 0, &o, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "absolute"));
	assert_int_equal(count_entries(f->layer), 0);
}

static void test_device_refused(void **state)
{
	struct fx *f = *state;
	const struct ent e[] = { { "null", AE_IFCHR, NULL, NULL, -1 } };
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };

	assert_int_equal(run(f, e, 1, 0, &o, &err), -EPERM);
	assert_non_null(strstr(err.msg, "devices"));
	assert_int_equal(count_entries(f->layer), 0);
}

/* A ustar header claiming a 512 MiB file, and no data after it. */
static void write_huge_header(const char *path)
{
	unsigned char h[512] = { 0 };
	unsigned sum = 0;
	FILE *fp = fopen(path, "w");

	memcpy(h, "big", 3);
	memcpy(h + 100, "0000644", 7);
	memcpy(h + 108, "0000000", 7);
	memcpy(h + 116, "0000000", 7);
	memcpy(h + 124, "04000000000", 11);
	memcpy(h + 136, "00000000000", 11);
	h[156] = '0';
	memcpy(h + 257, "ustar", 6);
	memcpy(h + 263, "00", 2);
	memset(h + 148, ' ', 8);
	for (int i = 0; i < 512; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum);
	assert_non_null(fp);
	assert_int_equal(fwrite(h, 1, sizeof(h), fp), sizeof(h));
	fclose(fp);
}

static void test_huge_file_refused(void **state)
{
	struct fx *f = *state;
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };
	int fd;

	/* Refused from the header alone, before anything is written. */
	write_huge_header(f->tar);
	fd = open(f->tar, O_RDONLY);
	assert_int_equal(tx_extract(fd, f->layer_fd, &o, &err), -EFBIG);
	close(fd);
	assert_non_null(strstr(err.msg, "big"));
	assert_int_equal(count_entries(f->layer), 0);
}

static void test_total_and_count_limits(void **state)
{
	struct fx *f = *state;
	const struct ent e[] = {
		{ "a", AE_IFREG, "0123456789", NULL, -1 },
		{ "b", AE_IFREG, "0123456789", NULL, -1 },
		{ "c", AE_IFREG, "0123456789", NULL, -1 },
	};
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };

	o.max_total_bytes = 25;
	assert_int_equal(run(f, e, 3, 0, &o, &err), -EFBIG);
	assert_non_null(strstr(err.msg, "more than 25 bytes"));
	o = opts(".", "/");
	o.max_entries = 2;
	assert_int_equal(run(f, e, 3, 0, &o, &err), -EFBIG);
	assert_non_null(strstr(err.msg, "more than 2 entries"));
}

/* A sparse entry: a few bytes of data, size bytes long. */
static void write_sparse_tar(const char *path, int64_t size)
{
	struct archive *a = archive_write_new();
	struct archive_entry *ae = archive_entry_new();

	archive_write_set_format_pax_restricted(a);
	assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
	archive_entry_set_pathname(ae, "holes");
	archive_entry_set_filetype(ae, AE_IFREG);
	archive_entry_set_perm(ae, 0644);
	archive_entry_set_size(ae, size);
	archive_entry_sparse_add_entry(ae, 0, 4);
	assert_int_equal(archive_write_header(a, ae), ARCHIVE_OK);
	assert_int_equal(archive_write_data(a, "data", 4), 4);
	archive_entry_free(ae);
	archive_write_close(a);
	archive_write_free(a);
}

/*
 * The layer hash reads every file name whole, hard links and holes
 * included, so they count against the total: a 400 KB file linked twice,
 * or a sparse entry of 3 MB carrying 4 bytes, is over a 1 MB total.
 */
static void test_links_and_holes_count_in_total(void **state)
{
	struct fx *f = *state;
	static char big[400 * 1024 + 1];
	struct ent e[] = {
		{ "big", AE_IFREG, big, NULL, -1 },
		{ "l1", AE_IFREG, NULL, "big", 0 },
		{ "l2", AE_IFREG, NULL, "big", 0 },
	};
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };
	struct stat st;
	int fd;

	memset(big, 'x', sizeof(big) - 1);
	o.max_total_bytes = 1 << 20;
	assert_int_equal(run(f, e, 3, 0, &o, &err), -EFBIG);
	assert_non_null(strstr(err.msg, "more than 1048576 bytes"));
	/* One link fits: links are allowed, only their cost is counted. */
	assert_int_equal(layer_remove_tree(f->layer_fd, "big", NULL), 0);
	assert_int_equal(layer_remove_tree(f->layer_fd, "l1", NULL), 0);
	assert_int_equal(run(f, e, 2, 0, &o, &err), 2);

	o.max_file_bytes = 8 << 20;
	write_sparse_tar(f->tar, 3 << 20);
	fd = open(f->tar, O_RDONLY);
	assert_int_equal(tx_extract(fd, f->layer_fd, &o, &err), -EFBIG);
	close(fd);
	assert_int_equal(fstatat(f->layer_fd, "holes", &st, 0), -1);
	write_sparse_tar(f->tar, 512 << 10);
	fd = open(f->tar, O_RDONLY);
	assert_int_equal(tx_extract(fd, f->layer_fd, &o, &err), 1);
	close(fd);
	assert_int_equal(fstatat(f->layer_fd, "holes", &st, 0), 0);
	assert_int_equal(st.st_size, 512 << 10);
}

static void test_garbage_refused(void **state)
{
	struct fx *f = *state;
	struct tx_opts o = opts(".", "/");
	struct herr err = { 0 };
	int fd = open(f->tar, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_int_equal(write(fd, "this is no tar archive at all", 29), 29);
	close(fd);
	fd = open(f->tar, O_RDONLY);
	assert_int_equal(tx_extract(fd, f->layer_fd, &o, &err), -EINVAL);
	close(fd);
	assert_non_null(strstr(err.msg, "archive"));
}

static void test_parents_follow_lower(void **state)
{
	struct fx *f = *state;
	const struct ent e[] = { { "f.txt", AE_IFREG, "z", NULL, -1 } };
	struct tx_opts o = opts("f.txt", "/home/user/f.txt");
	struct herr err = { 0 };
	char path[256];
	struct stat st;
	int lower;

	snprintf(path, sizeof(path), "%s/home", f->lower);
	assert_int_equal(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/home/user", f->lower);
	assert_int_equal(mkdir(path, 0750), 0);
	assert_int_equal(chown(path, 1000, 1000), 0);
	lower = open(f->lower, O_RDONLY | O_DIRECTORY);
	o.lower_fds = &lower;
	o.n_lower = 1;
	assert_int_equal(run(f, e, 1, 0, &o, &err), 1);
	close(lower);
	snprintf(path, sizeof(path), "%s/home/user", f->layer);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_uid, 1000);
	assert_int_equal(st.st_mode & 07777, 0750);
}

static void test_map_path(void **state)
{
	char out[TX_PATH_MAX];
	struct herr err = { 0 };

	(void)state;
	assert_int_equal(tx_map_path("a.txt", "/x/b.txt", "a.txt", 0, out, sizeof(out), &err), 1);
	assert_string_equal(out, "x/b.txt");
	assert_int_equal(tx_map_path("a.txt", "/x/", "a.txt", 0, out, sizeof(out), &err), 1);
	assert_string_equal(out, "x/a.txt");
	assert_int_equal(tx_map_path("./d/", "/app", "d/e/f", 0, out, sizeof(out), &err), 1);
	assert_string_equal(out, "app/e/f");
	assert_int_equal(tx_map_path("d", "/app", "d", 1, out, sizeof(out), &err), 1);
	assert_string_equal(out, "app");
	assert_int_equal(tx_map_path("src/*.py", "/app", "src/m.py", 0, out, sizeof(out),
				     &err), 1);
	assert_string_equal(out, "app/m.py");
	assert_int_equal(tx_map_path("d", "/app", "other", 0, out, sizeof(out), &err), 0);
	assert_int_equal(tx_map_path("d", "app", "d", 1, out, sizeof(out), &err), -EINVAL);
	assert_int_equal(tx_map_path("d", "/a/../etc", "d", 1, out, sizeof(out), &err),
			 -EINVAL);
	assert_int_equal(tx_map_path("../d", "/a", "d", 1, out, sizeof(out), &err), -EINVAL);
}

static void test_clean_path(void **state)
{
	char out[64], longer[sizeof(out) + 8];
	struct herr err = { 0 };

	(void)state;
	assert_int_equal(tx_clean_path("./a//b/./c/", out, sizeof(out), &err), 0);
	assert_string_equal(out, "a/b/c");
	assert_int_equal(tx_clean_path("a/../b", out, sizeof(out), &err), -EINVAL);
	assert_int_equal(tx_clean_path("/a", out, sizeof(out), &err), -EINVAL);
	assert_int_equal(tx_clean_path("a/..", out, sizeof(out), &err), -EINVAL);
	assert_int_equal(tx_clean_path("..a/b..", out, sizeof(out), &err), 0);
	memset(longer, 'a', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	assert_int_equal(tx_clean_path(longer, out, sizeof(out), &err), -ENAMETOOLONG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_folder_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_single_file_and_mode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dotdot_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_absolute_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_then_file_through_it, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_symlink_replaced_not_followed, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_hardlink_out_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_device_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_huge_file_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_total_and_count_limits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_links_and_holes_count_in_total, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_garbage_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_parents_follow_lower, setup, teardown),
		cmocka_unit_test(test_map_path),
		cmocka_unit_test(test_clean_path),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
