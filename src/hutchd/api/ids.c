/* API keys, sandbox ids, the server secret and derived tokens: see ids.h. */
#include "ids.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "cleanup.h"

static void to_hex(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

int apikey_generate(char out[APIKEY_LEN + 1], struct herr *err)
{
	unsigned char raw[20];

	if (RAND_bytes(raw, sizeof(raw)) != 1)
		return herr_set(err, -EIO, "generating API key: RAND_bytes failed");
	memcpy(out, "e2b_", 4);
	to_hex(raw, sizeof(raw), out + 4);
	return 0;
}

void apikey_hash(const char *key, char out[APIKEY_HASH_HEX])
{
	unsigned char md[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *)key, strlen(key), md);
	to_hex(md, sizeof(md), out);
}

void apikey_hint(const char *key, char out[APIKEY_HINT_MAX])
{
	size_t n = strlen(key);

	if (n < 16)
		snprintf(out, APIKEY_HINT_MAX, "(short key)");
	else
		snprintf(out, APIKEY_HINT_MAX, "%.8s...%s", key, key + n - 4);
}

int sandbox_id_generate(char out[22], struct herr *err)
{
	static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	int i = 0;

	out[i++] = 'i';
	while (i < 21) {
		unsigned char b[32];

		if (RAND_bytes(b, sizeof(b)) != 1)
			return herr_set(err, -EIO, "generating sandbox id: RAND_bytes failed");
		/* 252 = 7 * 36: rejecting larger bytes keeps every letter equally likely. */
		for (size_t j = 0; j < sizeof(b) && i < 21; j++)
			if (b[j] < 252)
				out[i++] = alphabet[b[j] % 36];
	}
	out[21] = '\0';
	return 0;
}

int sandbox_id_valid(const char *id)
{
	size_t n = 0;

	for (; id[n]; n++)
		if (!((id[n] >= 'a' && id[n] <= 'z') || (id[n] >= '0' && id[n] <= '9')))
			return 0;
	return n > 0 && n <= 64;
}

static int read_secret(int fd, const char *path, unsigned char *out, struct herr *err)
{
	ssize_t n = read(fd, out, SERVER_SECRET_LEN);
	char extra;

	if (n < 0)
		return herr_sys(err, -errno, "reading server secret %s", path);
	if (n != SERVER_SECRET_LEN || read(fd, &extra, 1) != 0)
		return herr_set(err, -EINVAL, "server secret %s: expected exactly %d bytes",
				path, SERVER_SECRET_LEN);
	return 0;
}

static int create_secret(const char *path, unsigned char *out, struct herr *err)
{
	char tmp[4096];
	_cleanup_close_ int fd = -1;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return herr_set(err, -ENAMETOOLONG, "server secret path too long: %s", path);
	if (RAND_bytes(out, SERVER_SECRET_LEN) != 1)
		return herr_set(err, -EIO, "generating server secret: RAND_bytes failed");
	unlink(tmp);
	/* O_EXCL with 0600: nobody else can open the file between create and fill. */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return herr_sys(err, -errno, "creating %s", tmp);
	if (write(fd, out, SERVER_SECRET_LEN) != SERVER_SECRET_LEN || fsync(fd) < 0) {
		int e = -errno;
		unlink(tmp);
		return herr_sys(err, e ? e : -EIO, "writing %s", tmp);
	}
	if (rename(tmp, path) < 0) {
		int e = -errno;
		unlink(tmp);
		return herr_sys(err, e, "renaming %s to %s", tmp, path);
	}
	return 0;
}

int server_secret_load(const char *path, unsigned char out[SERVER_SECRET_LEN],
		       struct herr *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;

	if (fd < 0 && errno == ENOENT)
		return create_secret(path, out, err);
	if (fd < 0)
		return herr_sys(err, -errno, "opening server secret %s", path);
	if (fstat(fd, &st) < 0)
		return herr_sys(err, -errno, "stat %s", path);
	/* A secret others can read is no secret: refuse rather than use it. */
	if (st.st_mode & 077)
		return herr_set(err, -EPERM, "server secret %s is readable by others "
				"(mode %03o); chmod 600 it", path, st.st_mode & 0777);
	return read_secret(fd, path, out, err);
}

void token_derive(const unsigned char secret[SERVER_SECRET_LEN], const char *prefix,
		  const char *id, char out[TOKEN_HEX])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	char msg[256];

	snprintf(msg, sizeof(msg), "%s%s", prefix, id);
	HMAC(EVP_sha256(), secret, SERVER_SECRET_LEN, (const unsigned char *)msg,
	     strlen(msg), md, &len);
	to_hex(md, len, out);
}
