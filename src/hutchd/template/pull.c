/*
 * Registry pulls (see pull.h). The registry is not trusted: every document
 * and blob is read into a size-capped sink, blobs are hashed as they arrive
 * and compared with the digest that names them, and the staging folder is
 * private (tmpl/.pull-*) and removed whatever happens. Blob names come
 * from digests checked to be 64 hex characters, so a registry cannot
 * choose a path. image.c then reads the folder like any OCI layout and
 * checks the digests once more, so nothing here is trusted by the store.
 */
#include "pull.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "buf.h"
#include "cleanup.h"
#include "image.h"
#include "layer.h"
#include "log.h"

#define DOCKER_HUB "registry-1.docker.io"
#define TOKEN_MAX 16384
#define ACCEPT_MANIFEST "Accept: application/vnd.oci.image.index.v1+json, " \
	"application/vnd.oci.image.manifest.v1+json, " \
	"application/vnd.docker.distribution.manifest.list.v2+json, " \
	"application/vnd.docker.distribution.manifest.v2+json"

/* ---- references ---- */

static bool looks_like_host(const char *s, size_t n)
{
	return memchr(s, '.', n) || memchr(s, ':', n) || (n == 9 && !memcmp(s, "localhost", 9));
}

static bool repo_valid(const char *s)
{
	if (!*s || *s == '/' || s[strlen(s) - 1] == '/' || strstr(s, "//") || strstr(s, ".."))
		return false;
	for (; *s; s++)
		if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) &&
		    !strchr("._-/", *s))
			return false;
	return true;
}

int pull_parse_ref(const char *text, struct pull_ref *out, struct herr *err)
{
	char buf[600], *at, *rest, *colon, *slash;

	memset(out, 0, sizeof(*out));
	if (strlen(text) >= sizeof(buf) || !*text)
		return herr_set(err, -EINVAL, "image reference '%.100s' is empty or too long",
				text);
	snprintf(buf, sizeof(buf), "%s", text);
	at = strchr(buf, '@');
	if (at) {
		*at = '\0';
		if (!img_digest_hex(at + 1))
			return herr_set(err, -EINVAL, "image reference '%.200s': the digest must "
					"be sha256:<64 lowercase hex>", text);
		snprintf(out->digest, sizeof(out->digest), "%s", at + 1);
	}
	slash = strchr(buf, '/');
	rest = buf;
	if (slash && looks_like_host(buf, (size_t)(slash - buf))) {
		*slash = '\0';
		if (strlen(buf) >= sizeof(out->host))
			return herr_set(err, -EINVAL, "image reference '%.200s': registry host "
					"too long", text);
		snprintf(out->host, sizeof(out->host), "%.255s", buf);
		rest = slash + 1;
	} else {
		snprintf(out->host, sizeof(out->host), "%s", DOCKER_HUB);
	}
	colon = strrchr(rest, ':');
	if (colon) {
		*colon = '\0';
		if (!colon[1] || strlen(colon + 1) >= sizeof(out->tag) ||
		    strspn(colon + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			   "0123456789_.-") != strlen(colon + 1))
			return herr_set(err, -EINVAL, "image reference '%.200s': bad tag", text);
		snprintf(out->tag, sizeof(out->tag), "%s", colon + 1);
	} else if (!out->digest[0]) {
		snprintf(out->tag, sizeof(out->tag), "latest");
	}
	if (!strcmp(out->host, DOCKER_HUB) && !strchr(rest, '/'))
		snprintf(out->repo, sizeof(out->repo), "library/%.240s", rest);
	else
		snprintf(out->repo, sizeof(out->repo), "%.255s", rest);
	if (!repo_valid(out->repo))
		return herr_set(err, -EINVAL, "image reference '%.200s': bad repository name "
				"'%.200s'", text, out->repo);
	return 0;
}

void pull_ref_text(const struct pull_ref *r, char *out, size_t cap)
{
	if (r->digest[0])
		snprintf(out, cap, "%s/%s@%s", r->host, r->repo, r->digest);
	else
		snprintf(out, cap, "%s/%s:%s", r->host, r->repo, r->tag);
}

/* ---- transport ---- */

struct puller {
	const struct pull_opts *o;
	struct pull_ref ref;
	char token[TOKEN_MAX];
	uint64_t used;           /* bytes received so far */
};

/* Loopback or listed by the operator: plain http is allowed. */
static bool host_insecure(const struct pull_opts *o, const char *host)
{
	char bare[256];
	const char *p = o->insecure ? o->insecure : "";
	size_t n = strlen(host);

	snprintf(bare, sizeof(bare), "%s", host);
	if (bare[0] == '[') {
		char *end = strchr(bare, ']');
		if (end)
			end[1] = '\0';
	} else {
		bare[strcspn(bare, ":")] = '\0';
	}
	if (!strcmp(bare, "127.0.0.1") || !strcmp(bare, "localhost") || !strcmp(bare, "[::1]"))
		return true;
	while (*p) {
		size_t len = strcspn(p, ",");
		if ((len == n && !strncmp(p, host, n)) ||
		    (len == strlen(bare) && !strncmp(p, bare, len)))
			return true;
		p += len + (p[len] == ',');
	}
	return false;
}

/*
 * Whether url may be fetched: https anywhere, plain http only towards a
 * host that host_insecure() allows. Judged on the URL's own host (and
 * port), so a loopback registry cannot send us over http to another host
 * through a redirect or a token realm. *same_host tells whether the URL
 * is on the registry itself, the only host that gets the token.
 */
static bool url_allowed(const struct pull_opts *o, const char *registry, const char *url,
			bool *same_host)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL, hp[300];
	bool ok = false;

	if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
		if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK)
			snprintf(hp, sizeof(hp), "%s:%s", host, port);
		else
			snprintf(hp, sizeof(hp), "%s", host);
		ok = !strcmp(scheme, "https") ||
		     (!strcmp(scheme, "http") && host_insecure(o, hp));
		if (same_host)
			*same_host = !strcmp(hp, registry);
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return ok;
}

struct sink {
	struct hbuf *buf;     /* a document, or */
	int fd;               /* a blob file */
	EVP_MD_CTX *md;       /* hashes what arrives (blobs) */
	uint64_t got, max;
	struct puller *p;
	bool over;
};

struct answer {
	char www_auth[2048];
	char ctype[256];
	char digest[96];
};

static size_t on_data(char *data, size_t size, size_t n, void *arg)
{
	struct sink *s = arg;
	size_t len = size * n;

	s->got += len;
	s->p->used += len;
	if (s->got > s->max || s->p->used > s->p->o->max_bytes) {
		s->over = true;
		return 0;
	}
	if (s->md)
		EVP_DigestUpdate(s->md, data, len);
	if (s->buf)
		return hbuf_append(s->buf, data, len) == 0 ? len : 0;
	return write(s->fd, data, len) == (ssize_t)len ? len : 0;
}

static void header_value(const char *line, size_t len, const char *name, char *out,
			 size_t cap)
{
	size_t nl = strlen(name);

	if (len <= nl + 1 || strncasecmp(line, name, nl) || line[nl] != ':')
		return;
	line += nl + 1;
	len -= nl + 1;
	while (len && (*line == ' ' || *line == '\t')) {
		line++;
		len--;
	}
	while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		len--;
	snprintf(out, cap, "%.*s", (int)len, line);
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
	struct answer *a = arg;
	size_t len = size * n;

	/* A redirect's headers come first: keep the last answer's values. */
	if (len > 5 && !strncmp(line, "HTTP/", 5))
		memset(a, 0, sizeof(*a));
	header_value(line, len, "WWW-Authenticate", a->www_auth, sizeof(a->www_auth));
	header_value(line, len, "Content-Type", a->ctype, sizeof(a->ctype));
	header_value(line, len, "Docker-Content-Digest", a->digest, sizeof(a->digest));
	return len;
}

static void sink_reset(struct sink *s)
{
	s->p->used -= s->got;
	s->got = 0;
	s->over = false;
	if (s->buf)
		hbuf_reset(s->buf);
	if (s->fd >= 0 && (ftruncate(s->fd, 0) < 0 || lseek(s->fd, 0, SEEK_SET) < 0))
		s->fd = -1;
	if (s->md)
		EVP_DigestInit_ex(s->md, EVP_sha256(), NULL);
}

/* One transfer to url, no redirect followed; *location gets a 3xx's target. */
static int http_once(struct puller *p, const char *url, const char *accept, bool auth,
		     struct sink *s, struct answer *a, long *status, char **location,
		     struct herr *err)
{
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	char bearer[TOKEN_MAX + 32];
	const char *loc = NULL;
	CURLcode cc;

	if (!c)
		return herr_set(err, -ENOMEM, "out of memory");
	memset(a, 0, sizeof(*a));
	*location = NULL;
	if (accept)
		h = curl_slist_append(h, accept);
	if (auth && p->token[0]) {
		snprintf(bearer, sizeof(bearer), "Authorization: Bearer %s", p->token);
		h = curl_slist_append(h, bearer);
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	/* url_allowed() judged the scheme; this only keeps curl to the two. */
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "hutchd");
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, p->o->timeout_s > 0 ? p->o->timeout_s : 600L);
	/* A registry that trickles bytes gives up a request after 30 s below
	 * 1 KiB/s instead of holding it for the whole timeout. */
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 30L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, a);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	if (cc == CURLE_OK && *status >= 300 && *status < 400 &&
	    curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &loc) == CURLE_OK && loc)
		*location = strdup(loc);
	curl_easy_cleanup(c);
	curl_slist_free_all(h);
	if (s->over)
		return herr_set(err, -EFBIG, "%s: more than %llu bytes", url,
				(unsigned long long)(s->got > s->max ? s->max : p->o->max_bytes));
	if (cc != CURLE_OK)
		return herr_set(err, -EIO, "%s: %s", url, curl_easy_strerror(cc));
	return 0;
}

/*
 * GET url, following at most 5 redirects by hand: each hop is checked by
 * url_allowed() (plain http only towards loopback or insecure-registries
 * hosts, never file:, gopher: or another scheme), and the token goes only
 * to hops on the registry's own host, never to blob storage elsewhere.
 */
static int http_get(struct puller *p, const char *url, const char *accept, bool auth,
		    struct sink *s, struct answer *a, long *status, struct herr *err)
{
	_cleanup_free_ char *cur = strdup(url);
	int rc = cur ? 0 : herr_set(err, -ENOMEM, "out of memory");

	for (int hop = 0; rc == 0; hop++) {
		char *next = NULL;
		bool same = false;

		if (!url_allowed(p->o, p->ref.host, cur, &same))
			return herr_set(err, -EACCES, "%.300s: refused: only https, or http to "
					"loopback and insecure-registries hosts", cur);
		rc = http_once(p, cur, accept, auth && same, s, a, status, &next, err);
		if (rc < 0 || !next)
			return rc;
		if (hop >= 5) {
			free(next);
			return herr_set(err, -ELOOP, "%s: more than 5 redirects", url);
		}
		sink_reset(s);
		free(cur);
		cur = next;
	}
	return rc;
}

/* One parameter of a Bearer challenge: name="value". */
static void challenge_param(const char *hdr, const char *name, char *out, size_t cap)
{
	const char *p = hdr;
	size_t nl = strlen(name);

	out[0] = '\0';
	while ((p = strstr(p, name))) {
		bool start = p == hdr || p[-1] == ' ' || p[-1] == ',';
		if (start && p[nl] == '=' && p[nl + 1] == '"') {
			const char *v = p + nl + 2, *end = strchr(v, '"');
			if (end && (size_t)(end - v) < cap) {
				memcpy(out, v, (size_t)(end - v));
				out[end - v] = '\0';
			}
			return;
		}
		p += nl;
	}
}

/* The anonymous token flow: GET realm?service=&scope=, keep the token. */
static int fetch_token(struct puller *p, const char *challenge, struct herr *err)
{
	char realm[1024], service[256], scope[512], url[2400];
	_cleanup_hbuf_ struct hbuf body;
	struct sink s = { .buf = &body, .fd = -1, .max = 1 << 20, .p = p };
	struct answer a;
	long status = 0;
	CURLU *u = curl_url();
	char *host = NULL;
	json_t *j, *tok;
	int rc;

	hbuf_init(&body, 1 << 20);
	if (strncasecmp(challenge, "Bearer ", 7) != 0) {
		curl_url_cleanup(u);
		return herr_set(err, -EACCES, "registry %s asks for '%.60s' authentication; only "
				"anonymous bearer tokens are supported", p->ref.host, challenge);
	}
	challenge_param(challenge, "realm", realm, sizeof(realm));
	challenge_param(challenge, "service", service, sizeof(service));
	challenge_param(challenge, "scope", scope, sizeof(scope));
	if (!scope[0])
		snprintf(scope, sizeof(scope), "repository:%s:pull", p->ref.repo);
	/* The realm may be another host: it gets https unless that host (not
	 * the registry) may use http. */
	if (!u || curl_url_set(u, CURLUPART_URL, realm, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		curl_url_cleanup(u);
		return herr_set(err, -EINVAL, "registry %s: bad token realm '%.200s'",
				p->ref.host, realm);
	}
	curl_url_cleanup(u);
	curl_free(host);
	if (!url_allowed(p->o, p->ref.host, realm, NULL))
		return herr_set(err, -EACCES, "registry %s: token realm '%.200s' is not https",
				p->ref.host, realm);
	{
		char *es = curl_easy_escape(NULL, service, 0);
		char *ec = curl_easy_escape(NULL, scope, 0);

		snprintf(url, sizeof(url), "%s%sservice=%s&scope=%s", realm,
			 strchr(realm, '?') ? "&" : "?", es ? es : "", ec ? ec : "");
		curl_free(es);
		curl_free(ec);
	}
	rc = http_get(p, url, NULL, false, &s, &a, &status, err);
	if (rc < 0)
		return rc;
	if (status != 200)
		return herr_set(err, -EACCES, "registry %s: token request answered %ld",
				p->ref.host, status);
	j = json_loadb(body.data, body.len, 0, NULL);
	tok = json_object_get(j, "token");
	if (!json_is_string(tok))
		tok = json_object_get(j, "access_token");
	if (!json_is_string(tok) || json_string_length(tok) >= TOKEN_MAX ||
	    strpbrk(json_string_value(tok), "\r\n")) {
		json_decref(j);
		return herr_set(err, -EACCES, "registry %s: the token answer has no usable "
				"token", p->ref.host);
	}
	snprintf(p->token, sizeof(p->token), "%s", json_string_value(tok));
	json_decref(j);
	return 0;
}

/* GET /v2/<repo>/<what>; a 401 gets a token and one more try. */
static int registry_get(struct puller *p, const char *what, const char *accept,
			struct sink *s, struct answer *a, struct herr *err)
{
	char url[1024];
	long status = 0;
	int rc;

	snprintf(url, sizeof(url), "%s://%s/v2/%s/%s",
		 host_insecure(p->o, p->ref.host) ? "http" : "https", p->ref.host, p->ref.repo,
		 what);
	rc = http_get(p, url, accept, true, s, a, &status, err);
	if (rc == 0 && status == 401 && !p->token[0] && a->www_auth[0]) {
		char challenge[sizeof(a->www_auth)];

		snprintf(challenge, sizeof(challenge), "%s", a->www_auth);
		rc = fetch_token(p, challenge, err);
		sink_reset(s);
		if (rc == 0)
			rc = http_get(p, url, accept, true, s, a, &status, err);
	}
	if (rc == 0 && status != 200)
		rc = herr_set(err, status == 404 ? -ENOENT : -EIO, "%s: the registry answered "
			      "%ld", url, status);
	return rc;
}

/* ---- the image ---- */

static void digest_hex(EVP_MD_CTX *md, char hex[65])
{
	unsigned char d[32];
	unsigned len = 0;

	EVP_DigestFinal_ex(md, d, &len);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* Writes a verified document as blobs/sha256/<hex> of the staging folder. */
static int put_blob_file(int stage, const char *hex, const void *data, size_t len,
			 struct herr *err)
{
	char path[128];
	_cleanup_close_ int fd = -1;

	snprintf(path, sizeof(path), "blobs/sha256/%s", hex);
	fd = openat(stage, path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, data, len) != (ssize_t)len)
		return herr_sys(err, -errno, "writing %s", path);
	return 0;
}

/* A manifest or index by tag or digest; its digest is checked when known. */
static int get_manifest(struct puller *p, const char *ref, struct hbuf *body, char hex[65],
			struct herr *err)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	struct sink s = { .buf = body, .fd = -1, .md = md, .max = IMG_JSON_MAX, .p = p };
	struct answer a;
	char what[160];
	const char *want = img_digest_hex(ref);
	int rc;

	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return herr_set(err, -ENOMEM, "out of memory");
	}
	hbuf_reset(body);
	snprintf(what, sizeof(what), "manifests/%s", ref);
	rc = registry_get(p, what, ACCEPT_MANIFEST, &s, &a, err);
	if (rc == 0) {
		digest_hex(md, hex);
		if (!want)
			want = img_digest_hex(a.digest);
		if (want && strcmp(want, hex) != 0)
			rc = herr_set(err, -EBADMSG, "manifest %s of %s does not match its digest "
				      "sha256:%s (it hashes to sha256:%s)", ref, p->ref.repo,
				      want, hex);
	}
	EVP_MD_CTX_free(md);
	return rc;
}

/* Downloads a blob into the staging folder, checking size and digest. */
static int get_blob(struct puller *p, int stage, json_t *desc, const char *field,
		    struct herr *err)
{
	const char *hex = img_digest_hex(json_string_value(json_object_get(desc, "digest")));
	json_t *size = json_object_get(desc, "size");
	char path[128], what[128], got[65];
	EVP_MD_CTX *md = NULL;
	struct answer a;
	struct sink s = { .fd = -1, .p = p };
	int rc;

	if (!hex || !json_is_integer(size) || json_integer_value(size) < 0)
		return herr_set(err, -EINVAL, "manifest %s: digest must be sha256:<64 hex> "
				"and size a number", field);
	snprintf(path, sizeof(path), "blobs/sha256/%s", hex);
	s.fd = openat(stage, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (s.fd < 0)
		return errno == EEXIST ? 0 : herr_sys(err, -errno, "creating %s", path);
	s.max = (uint64_t)json_integer_value(size);
	md = EVP_MD_CTX_new();
	s.md = md;
	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		rc = herr_set(err, -ENOMEM, "out of memory");
	else {
		snprintf(what, sizeof(what), "blobs/sha256:%s", hex);
		rc = registry_get(p, what, NULL, &s, &a, err);
	}
	if (rc == 0) {
		digest_hex(md, got);
		if (strcmp(got, hex) != 0 || s.got != s.max)
			rc = herr_set(err, -EBADMSG, "%s blob sha256:%s: %llu bytes hashing to "
				      "sha256:%s", field, hex, (unsigned long long)s.got, got);
	}
	EVP_MD_CTX_free(md);
	if (s.fd >= 0)
		close(s.fd);
	if (rc < 0)
		herr_wrap(err, "%s", field);
	return rc;
}

static bool platform_amd64(json_t *d)
{
	json_t *pf = json_object_get(d, "platform");

	return !strcmp(json_string_value(json_object_get(pf, "os")) ?: "", "linux") &&
	       !strcmp(json_string_value(json_object_get(pf, "architecture")) ?: "", "amd64");
}

/* Manifest (index narrowed to linux/amd64) written as the layout's entry. */
static int stage_manifest(struct puller *p, int stage, json_t **manifest, struct herr *err)
{
	_cleanup_hbuf_ struct hbuf body;
	const char *ref = p->ref.digest[0] ? p->ref.digest : p->ref.tag;
	char hex[65], digest[80];
	json_t *m = NULL, *d, *index;
	size_t i;
	int rc;

	hbuf_init(&body, IMG_JSON_MAX);
	rc = get_manifest(p, ref, &body, hex, err);
	for (int depth = 0; rc == 0 && depth < 3; depth++) {
		json_t *chosen = NULL;

		json_decref(m);
		m = json_loadb(body.data, body.len, JSON_REJECT_DUPLICATES, NULL);
		if (!json_is_object(m))
			rc = herr_set(err, -EINVAL, "manifest %s is not a JSON object", ref);
		else if (json_integer_value(json_object_get(m, "schemaVersion")) != 2)
			rc = herr_set(err, -ENOTSUP, "manifest %s: only schema version 2 "
				      "(OCI, docker v2) is supported", ref);
		if (rc < 0 || !json_is_array(json_object_get(m, "manifests")))
			break;
		json_array_foreach(json_object_get(m, "manifests"), i, d)
			if (!chosen && platform_amd64(d))
				chosen = d;
		if (!chosen) {
			rc = herr_set(err, -ENOENT, "%s has no linux/amd64 image", ref);
			break;
		}
		snprintf(digest, sizeof(digest), "%s",
			 json_string_value(json_object_get(chosen, "digest")) ?: "");
		if (!img_digest_hex(digest)) {
			rc = herr_set(err, -EINVAL, "index %s: bad manifest digest", ref);
			break;
		}
		rc = get_manifest(p, digest, &body, hex, err);
	}
	if (rc == 0 && json_is_array(json_object_get(m, "manifests")))
		rc = herr_set(err, -ELOOP, "%s: indexes nest too deep", ref);
	if (rc == 0)
		rc = put_blob_file(stage, hex, body.data, body.len, err);
	if (rc == 0) {
		snprintf(digest, sizeof(digest), "sha256:%s", hex);
		const char *mt = json_string_value(json_object_get(m, "mediaType"));

		index = json_pack("{s:i,s:[{s:s,s:s,s:I}]}", "schemaVersion", 2, "manifests",
				  "mediaType",
				  mt ? mt : "application/vnd.oci.image.manifest.v1+json",
				  "digest", digest, "size", (json_int_t)body.len);
		if (!index)
			rc = herr_set(err, -ENOMEM, "out of memory");
		if (rc == 0) {
			char *text = json_dumps(index, JSON_COMPACT);
			_cleanup_close_ int fd = openat(stage, "index.json", O_WRONLY | O_CREAT |
							O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
			if (!text || fd < 0 || write(fd, text, strlen(text)) < 0)
				rc = herr_sys(err, -EIO, "writing index.json");
			free(text);
		}
		json_decref(index);
	}
	if (rc < 0) {
		json_decref(m);
		return rc;
	}
	*manifest = m;
	return 0;
}

static int stage_image(struct puller *p, int stage, struct herr *err)
{
	json_t *manifest = NULL, *config = NULL, *diff_ids, *d;
	_cleanup_close_ int cfd = -1;
	char path[128];
	size_t i;
	int rc = stage_manifest(p, stage, &manifest, err);

	if (rc == 0)
		rc = get_blob(p, stage, json_object_get(manifest, "config"), "config", err);
	if (rc == 0) {
		const char *hex = img_digest_hex(json_string_value(json_object_get(
			json_object_get(manifest, "config"), "digest")));
		snprintf(path, sizeof(path), "blobs/sha256/%s", hex);
		cfd = openat(stage, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		config = cfd >= 0 ? json_loadfd(cfd, JSON_REJECT_DUPLICATES, NULL) : NULL;
		if (!config)
			rc = herr_set(err, -EINVAL, "the image config is not JSON");
	}
	diff_ids = json_object_get(json_object_get(config, "rootfs"), "diff_ids");
	/* Refused before any layer is fetched: the import would refuse it
	 * anyway, after the download. */
	if (rc == 0 && json_array_size(json_object_get(manifest, "layers")) > IMG_MAX_LAYERS)
		rc = herr_set(err, -E2BIG,
			      "the manifest lists %zu layers; at most %d are supported",
			      json_array_size(json_object_get(manifest, "layers")), IMG_MAX_LAYERS);
	json_array_foreach(json_object_get(manifest, "layers"), i, d) {
		const char *diff = img_digest_hex(json_string_value(json_array_get(diff_ids, i)));
		char field[32];

		if (rc < 0)
			break;
		/* Stored already: image.c reuses it without reading the blob. */
		if (diff && img_layer_known(p->o->data_dir, diff))
			continue;
		snprintf(field, sizeof(field), "layers[%zu]", i);
		rc = get_blob(p, stage, d, field, err);
	}
	json_decref(config);
	json_decref(manifest);
	return rc;
}

int pull_image(const struct pull_opts *o, const char *ref, json_t **out,
	       struct herr *err)
{
	struct puller *p = calloc(1, sizeof(*p));
	char stage[4096], text[800];
	_cleanup_close_ int dir = -1;
	int rc;

	if (!p)
		return herr_set(err, -ENOMEM, "out of memory");
	p->o = o;
	rc = pull_parse_ref(ref, &p->ref, err);
	if (rc < 0) {
		free(p);
		return rc;
	}
	pull_ref_text(&p->ref, text, sizeof(text));
	snprintf(stage, sizeof(stage), "%s/tmpl/.pull-XXXXXX", o->data_dir);
	if (!mkdtemp(stage)) {
		free(p);
		return herr_sys(err, -errno, "creating a staging folder in %s/tmpl", o->data_dir);
	}
	dir = open(stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0 || mkdirat(dir, "blobs", 0700) < 0 ||
	    mkdirat(dir, "blobs/sha256", 0700) < 0)
		rc = herr_sys(err, -errno, "preparing %s", stage);
	if (rc == 0)
		rc = stage_image(p, dir, err);
	if (rc == 0)
		rc = img_import_dir(o->data_dir, dir, text, o->max_bytes, out, err);
	if (rc == 0)
		json_array_append_new(json_object_get(json_object_get(*out, "image"), "refs"),
				      json_string(text));
	else
		herr_wrap(err, "pulling %s", text);
	layer_remove_tree(AT_FDCWD, stage, NULL);
	log_info("template", NULL, "pull %s: %s (%llu bytes received)", text,
		 rc == 0 ? "done" : "failed", (unsigned long long)p->used);
	free(p);
	return rc;
}
