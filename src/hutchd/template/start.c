/*
 * A built template's start and ready commands in a new sandbox: once the
 * agent has answered /init, one process.Start call (Connect, JSON codec,
 * over a socket made inside the sandbox's network namespace) runs a small
 * shell that starts the start command detached (setsid: it outlives the
 * shell) and then tries the ready command every 200 ms. The create succeeds
 * only when that shell ends with 0; otherwise the create fails with the
 * reason. The commands run as the template's default user in its workdir,
 * like the SDK's own commands.
 */
#include "start.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "buf.h"
#include "cleanup.h"
#include "rt.h"

#define AGENT_START_URL "http://127.0.0.1:49983/process.Process/Start"
#define ANSWER_MAX (1 << 20)

static int quote(struct hbuf *out, const char *s)
{
	int rc = hbuf_append_str(out, "'");

	for (; rc == 0 && *s; s++)
		rc = *s == '\'' ? hbuf_append_str(out, "'\\''") : hbuf_append(out, s, 1);
	return rc == 0 ? hbuf_append_str(out, "'") : rc;
}

int tmpl_start_script(const char *start, const char *ready, unsigned timeout_s,
		      struct hbuf *out)
{
	int rc = 0;

	if (start) {
		/* "setsid ... &" rather than "setsid -f": busybox's setsid has no
		 * -f, and a background job of a shell without job control is no
		 * group leader, so setsid detaches it in place either way. */
		rc = hbuf_append_str(out, "setsid /bin/bash -l -c ");
		if (rc == 0)
			rc = quote(out, start);
		if (rc == 0)
			rc = hbuf_append_str(out, " </dev/null >/dev/null 2>&1 &\n");
	}
	if (rc == 0 && ready) {
		rc = hbuf_append_str(out, "n=0\nuntil /bin/bash -c ");
		if (rc == 0)
			rc = quote(out, ready);
		if (rc == 0)
			rc = hbuf_printf(out, " >/dev/null 2>&1; do\n  n=$((n+1))\n"
					 "  if [ $n -ge %u ]; then\n    echo \"the ready command "
					 "did not succeed within %u s\" >&2; exit 1\n  fi\n"
					 "  sleep 0.2\ndone\n", timeout_s * 5, timeout_s);
	}
	return rc;
}

static size_t keep(char *p, size_t size, size_t n, void *arg)
{
	return hbuf_append(arg, p, size * n) == 0 ? size * n : 0;
}

static curl_socket_t give_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
	int *fd = arg;
	int s = *fd;

	(void)purpose;
	(void)a;
	*fd = -1; /* curl closes it from now on */
	return s;
}

/* Walks the response envelopes; 0 when the process ended with status 0. */
static int check_answer(const struct hbuf *ans, struct herr *err)
{
	size_t off = 0;
	long long code = -1;

	while (off + 5 <= ans->len) {
		uint32_t len;
		unsigned char flags = (unsigned char)ans->data[off];
		json_t *j, *end;

		memcpy(&len, ans->data + off + 1, 4);
		len = ntohl(len);
		if (len > ans->len - off - 5)
			break;
		j = json_loadb(ans->data + off + 5, len, 0, NULL);
		end = json_object_get(json_object_get(j, "event"), "end");
		if (end)
			code = json_integer_value(json_object_get(end, "exitCode"));
		if ((flags & 2) && json_object_get(j, "error")) {
			int r = herr_set(err, -EIO, "the start command could not be run: %s",
					 json_string_value(json_object_get(json_object_get(
						 j, "error"), "message")));
			json_decref(j);
			return r;
		}
		json_decref(j);
		off += 5 + len;
	}
	if (code == 0)
		return 0;
	return herr_set(err, -ETIMEDOUT, code < 0 ? "the start/ready check did not finish" :
			"the template's ready command did not succeed in time");
}

static int run_start(struct rt *rt, const char *id, const char *token, const char *start,
		     const char *ready, const char *workdir, unsigned timeout_s,
		     struct herr *err)
{
	_cleanup_hbuf_ struct hbuf script;
	_cleanup_hbuf_ struct hbuf ans;
	_cleanup_hbuf_ struct hbuf body;
	_cleanup_free_ char *msg = NULL;
	_cleanup_close_ int fd = -1;
	struct curl_slist *hdr = NULL;
	char frame_head[5], tok[300];
	uint32_t blen;
	json_t *req;
	CURLcode cc;
	long status = 0;
	CURL *c;
	int rc;

	hbuf_init(&script, 1 << 20);
	hbuf_init(&ans, ANSWER_MAX);
	if (tmpl_start_script(start, ready, timeout_s, &script) < 0)
		return herr_set(err, -E2BIG, "start/ready commands too long");
	req = json_pack("{s:{s:s,s:[s,s,s],s:s}}", "process", "cmd", "/bin/bash", "args",
			"-l", "-c", script.data, "cwd", workdir);
	msg = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!msg)
		return herr_set(err, -ENOMEM, "out of memory");
	/* One enveloped message: flags 0, big-endian length, the JSON. */
	hbuf_init(&body, strlen(msg) + 8);
	blen = htonl((uint32_t)strlen(msg));
	frame_head[0] = 0;
	memcpy(frame_head + 1, &blen, 4);
	if (hbuf_append(&body, frame_head, 5) < 0 || hbuf_append_str(&body, msg) < 0)
		return herr_set(err, -ENOMEM, "out of memory");
	fd = rt_socket(rt, id, err);
	if (fd < 0)
		return herr_wrap(err, "reaching the agent for the start command");
	c = curl_easy_init();
	if (!c)
		return herr_set(err, -ENOMEM, "curl_easy_init failed");
	hdr = curl_slist_append(hdr, "Content-Type: application/connect+json");
	hdr = curl_slist_append(hdr, "Connect-Protocol-Version: 1");
	if (token && *token) {
		snprintf(tok, sizeof(tok), "X-Access-Token: %s", token);
		hdr = curl_slist_append(hdr, tok);
	}
	curl_easy_setopt(c, CURLOPT_URL, AGENT_START_URL);
	curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, give_socket);
	curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &fd);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body.len);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &ans);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_s + 10) * 1000L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(c);
	curl_slist_free_all(hdr);
	if (cc != CURLE_OK)
		return herr_set(err, -EIO, "running the start command: %s",
				curl_easy_strerror(cc));
	if (status != 200)
		return herr_set(err, -EIO, "the agent refused the start command (HTTP %ld)",
				status);
	rc = check_answer(&ans, err);
	return rc;
}

int tmpl_start_in_sandbox(struct rt *rt, const char *id, const char *token,
			  const char *start, const char *ready, const char *workdir,
			  unsigned timeout_s, struct herr *err)
{
	if (!start && !ready)
		return 0;
	return run_start(rt, id, token, start, ready, workdir, timeout_s, err);
}
