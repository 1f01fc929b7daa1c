/*
 * Unit tests of the CRIU image rewrites a fork makes (runtime/criu_images.c):
 * the user namespace's map moved to the fork's range, the UTS name, and
 * sockets bound to the source's address. Images are made here with the same
 * protobuf-c messages, in CRIU's layout (two magics, then u32-sized entries).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "criu/criu_ns.pb-c.h"
#include "criu_images.h"

#define COMMON 0x54564319u
#define USERNS 0x55474906u
#define UTSNS 0x54473203u
#define FILES 0x56303138u
#define BASE_SRC 0x10010000u
#define BASE_FORK 0x10030000u

static char dir[64];

static int setup(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/hutch-criu-img.XXXXXX");
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	return 0;
}

/* Writes an image: the magics, then each entry with its u32 size. */
static void write_image(const char *name, uint32_t magic, const uint8_t *const *entries,
			const uint32_t *lens, int n)
{
	char path[128];
	uint32_t head[2] = { COMMON, magic };

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "we");
	assert_non_null(f);
	assert_int_equal(fwrite(head, sizeof(head), 1, f), 1);
	for (int i = 0; i < n; i++) {
		assert_int_equal(fwrite(&lens[i], 4, 1, f), 1);
		assert_int_equal(fwrite(entries[i], lens[i], 1, f), 1);
	}
	assert_int_equal(fclose(f), 0);
}

/* Reads an image back: its entries' bytes (the caller frees *data). */
static size_t read_image(const char *name, uint8_t **data)
{
	char path[128];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_int_equal(stat(path, &st), 0);
	*data = malloc((size_t)st.st_size);
	FILE *f = fopen(path, "re");
	assert_non_null(f);
	assert_int_equal(fread(*data, (size_t)st.st_size, 1, f), 1);
	fclose(f);
	return (size_t)st.st_size;
}

/* One userns entry; extra bytes (a field CRIU knows and we do not) appended. */
static void write_userns(const char *name, uint32_t base, uint32_t count, int extents,
			 const uint8_t *extra, size_t extra_len)
{
	CriuNs__IdExtent e = CRIU_NS__ID_EXTENT__INIT, e2 = CRIU_NS__ID_EXTENT__INIT;
	CriuNs__IdExtent *map[2] = { &e, &e2 };
	CriuNs__UserNs ns = CRIU_NS__USER_NS__INIT;
	uint8_t buf[256];

	e.first = 0;
	e.lower_first = base;
	e.count = count;
	e2.first = count;
	e2.lower_first = base + count;
	e2.count = 1;
	ns.n_uid_map = ns.n_gid_map = (size_t)extents;
	ns.uid_map = ns.gid_map = map;
	size_t len = criu_ns__user_ns__pack(&ns, buf);
	memcpy(buf + len, extra, extra_len);
	uint32_t l = (uint32_t)(len + extra_len);
	const uint8_t *p = buf;
	write_image(name, USERNS, &p, &l, 1);
}

static void write_utsns(const char *name, const char *node)
{
	CriuNs__UtsNs ns = CRIU_NS__UTS_NS__INIT;
	uint8_t buf[256];

	ns.nodename = (char *)node;
	ns.domainname = "(none)";
	uint32_t l = (uint32_t)criu_ns__uts_ns__pack(&ns, buf);
	const uint8_t *p = buf;
	write_image(name, UTSNS, &p, &l, 1);
}

static CriuNs__UserNs *load_userns(const char *name)
{
	uint8_t *data;
	size_t len = read_image(name, &data);
	uint32_t n;

	assert_true(len >= 12);
	memcpy(&n, data + 8, 4);
	assert_int_equal(n, len - 12);
	CriuNs__UserNs *ns = criu_ns__user_ns__unpack(NULL, n, data + 12);
	free(data);
	assert_non_null(ns);
	return ns;
}

static void test_rekey_moves_map_and_name(void **state)
{
	/* field 9 (varint) = 5: CRIU's own, unknown to our .proto */
	static const uint8_t extra[] = { 0x48, 0x05 };
	struct herr err;

	write_userns("userns-11.img", BASE_SRC, 65536, 1, extra, sizeof(extra));
	write_utsns("utsns-12.img", "isource");
	write_utsns("utsns-13.img", "made-inside");
	assert_int_equal(rt_images_rekey(dir, BASE_FORK, "isource", "ifork", &err), 0);

	CriuNs__UserNs *ns = load_userns("userns-11.img");
	assert_int_equal(ns->n_uid_map, 1);
	assert_int_equal(ns->uid_map[0]->first, 0);
	assert_int_equal(ns->uid_map[0]->lower_first, BASE_FORK);
	assert_int_equal(ns->uid_map[0]->count, 65536);
	assert_int_equal(ns->gid_map[0]->lower_first, BASE_FORK);
	/* the field we do not name survives the rewrite */
	assert_int_equal(ns->base.n_unknown_fields, 1);
	assert_int_equal(ns->base.unknown_fields[0].tag, 9);
	criu_ns__user_ns__free_unpacked(ns, NULL);

	uint8_t *data;
	size_t len = read_image("utsns-12.img", &data);
	CriuNs__UtsNs *u = criu_ns__uts_ns__unpack(NULL, len - 12, data + 12);
	assert_non_null(u);
	assert_string_equal(u->nodename, "ifork");
	assert_string_equal(u->domainname, "(none)");
	criu_ns__uts_ns__free_unpacked(u, NULL);
	free(data);
	len = read_image("utsns-13.img", &data);
	u = criu_ns__uts_ns__unpack(NULL, len - 12, data + 12);
	assert_string_equal(u->nodename, "made-inside");
	criu_ns__uts_ns__free_unpacked(u, NULL);
	free(data);
}

/* A map a Hutch sandbox never has, and a second user namespace: refused,
 * the image left as it was. */
static void test_rekey_refuses_foreign_maps(void **state)
{
	struct herr err;

	write_userns("userns-11.img", BASE_SRC, 65536, 2, NULL, 0);
	assert_int_equal(rt_images_rekey(dir, BASE_FORK, "a", "b", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "not a Hutch sandbox's images"));
	CriuNs__UserNs *ns = load_userns("userns-11.img");
	assert_int_equal(ns->uid_map[0]->lower_first, BASE_SRC);
	criu_ns__user_ns__free_unpacked(ns, NULL);

	write_userns("userns-11.img", BASE_SRC, 1000, 1, NULL, 0);
	assert_int_equal(rt_images_rekey(dir, BASE_FORK, "a", "b", &err), -EINVAL);

	write_userns("userns-11.img", BASE_SRC, 65536, 1, NULL, 0);
	write_userns("userns-14.img", BASE_SRC, 65536, 1, NULL, 0);
	assert_int_equal(rt_images_rekey(dir, BASE_FORK, "a", "b", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "2 user namespace images"));
}

static void test_rekey_refuses_broken_images(void **state)
{
	char path[128];
	struct herr err;
	const uint8_t junk[] = { 1, 2, 3 };
	const uint8_t *p = junk;
	uint32_t l = sizeof(junk);

	assert_int_equal(rt_images_rekey(dir, BASE_FORK, "a", "b", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "0 user namespace images"));

	write_image("userns-11.img", UTSNS, &p, &l, 1); /* another type's magic */
	assert_int_equal(rt_images_rekey(dir, BASE_FORK, "a", "b", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "unexpected magic"));

	write_image("userns-11.img", USERNS, &p, &l, 1); /* not a protobuf entry */
	assert_int_equal(rt_images_rekey(dir, BASE_FORK, "a", "b", &err), -EINVAL);

	write_userns("userns-11.img", BASE_SRC, 65536, 1, NULL, 0);
	snprintf(path, sizeof(path), "%s/userns-11.img", dir);
	assert_int_equal(truncate(path, 14), 0); /* cut inside its entry */
	assert_int_equal(rt_images_rekey(dir, BASE_FORK, "a", "b", &err), -EINVAL);
	assert_non_null(strstr(err.msg, "one entry of"));
}

static uint32_t pack_file_entry(uint32_t type, int family, const uint32_t *addr, size_t n,
				uint8_t *buf)
{
	CriuNs__FileEntry fe = CRIU_NS__FILE_ENTRY__INIT;
	CriuNs__InetSk isk = CRIU_NS__INET_SK__INIT;

	fe.type = type;
	if (family) {
		isk.family = (uint32_t)family;
		isk.n_src_addr = n;
		isk.src_addr = (uint32_t *)addr;
		fe.isk = &isk;
	}
	return (uint32_t)criu_ns__file_entry__pack(&fe, buf);
}

static void test_rebind_moves_only_the_source_address(void **state)
{
	const uint32_t src = 0x0600d60a, fork = 0x0a00d60a, other = 0x0100007f;
	const uint32_t v6[4] = { src, 0, 0, 0 };
	/* ::ffff:10.214.0.6, the source's address in an IPv6 socket's bind */
	const uint32_t mapped[4] = { 0, 0, htonl(0xffff), src };
	const uint32_t mapped_other[4] = { 0, 0, htonl(0xffff), other };
	uint8_t e[6][64];
	uint32_t lens[6] = {
		pack_file_entry(1, 0, NULL, 0, e[0]),      /* a regular file */
		pack_file_entry(4, 2, &src, 1, e[1]),      /* bound to the source's */
		pack_file_entry(4, 2, &other, 1, e[2]),    /* loopback */
		pack_file_entry(4, 10, v6, 4, e[3]),       /* IPv6: not ours */
		pack_file_entry(4, 10, mapped, 4, e[4]),   /* IPv6, the source's mapped */
		pack_file_entry(4, 10, mapped_other, 4, e[5]), /* mapped loopback */
	};
	const uint8_t *p[6] = { e[0], e[1], e[2], e[3], e[4], e[5] };
	struct herr err;
	int moved = -1;

	write_image("files.img", FILES, p, lens, 6);
	assert_int_equal(rt_images_rebind(dir, src, fork, &moved, &err), 0);
	assert_int_equal(moved, 2);

	uint8_t *data;
	size_t len = read_image("files.img", &data), off = 8;
	for (int i = 0; i < 6; i++) {
		uint32_t n;
		memcpy(&n, data + off, 4);
		CriuNs__FileEntry *fe = criu_ns__file_entry__unpack(NULL, n, data + off + 4);
		assert_non_null(fe);
		if (i == 1)
			assert_int_equal(fe->isk->src_addr[0], fork);
		else if (i == 4)
			assert_memory_equal(fe->isk->src_addr,
					    ((uint32_t[4]){ 0, 0, htonl(0xffff), fork }), 16);
		else /* the others byte for byte */
			assert_memory_equal(data + off + 4, e[i], lens[i]);
		criu_ns__file_entry__free_unpacked(fe, NULL);
		off += 4 + n;
	}
	assert_int_equal(off, len);
	free(data);

	/* nothing bound to it: the file is not rewritten */
	assert_int_equal(rt_images_rebind(dir, 0x0700d60a, fork, &moved, &err), 0);
	assert_int_equal(moved, 0);
}

static void test_rebind_refuses_broken_files(void **state)
{
	const uint32_t src = 0x0600d60a;
	uint8_t e[64];
	uint32_t l = pack_file_entry(4, 2, &src, 1, e), too_long = l + 100;
	const uint8_t *p = e;
	struct herr err;
	int moved;

	assert_int_equal(rt_images_rebind(dir, src, 1, &moved, &err), -ENOENT);
	write_image("files.img", FILES, &p, &too_long, 0);
	/* an entry whose size runs past the end of the file */
	char path[128];
	snprintf(path, sizeof(path), "%s/files.img", dir);
	FILE *f = fopen(path, "ae");
	assert_int_equal(fwrite(&too_long, 4, 1, f), 1);
	assert_int_equal(fwrite(e, l, 1, f), 1);
	fclose(f);
	assert_int_equal(rt_images_rebind(dir, src, 1, &moved, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "runs past the end"));

	write_image("files.img", USERNS, &p, &l, 1);
	assert_int_equal(rt_images_rebind(dir, src, 1, &moved, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "unexpected magic"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_rekey_moves_map_and_name, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rekey_refuses_foreign_maps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rekey_refuses_broken_images, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rebind_moves_only_the_source_address, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_rebind_refuses_broken_files, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
