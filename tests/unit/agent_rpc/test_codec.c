/*
 * Unit tests of the Connect codecs: proto3 JSON mapping on the process and
 * filesystem messages, binary round trips, request envelopes from a hostile
 * peer, and the arena cap.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "arena.h"
#include "filesystem/filesystem.pb-c.h"
#include "pbjson.h"
#include "process/process.pb-c.h"

struct fixture {
	struct arena *a;
	struct herr err;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	f->a = arena_new(1 << 20);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	arena_free(f->a);
	free(f);
	return 0;
}

static void *decode_ok(struct fixture *f, const ProtobufCMessageDescriptor *d, const char *json)
{
	ProtobufCMessage *m = NULL;
	int rc = pbjson_decode(d, json, strlen(json), f->a, &m, &f->err);

	if (rc != 0)
		fail_msg("decoding %s: %s", json, f->err.msg);
	return m;
}

static int decode_err(struct fixture *f, const ProtobufCMessageDescriptor *d, const char *json)
{
	ProtobufCMessage *m = NULL;

	herr_clear(&f->err);
	return pbjson_decode(d, json, strlen(json), f->a, &m, &f->err);
}

static void assert_json(const ProtobufCMessage *m, const char *want)
{
	struct herr err = { 0 };
	char *out = NULL;
	size_t len = 0;

	assert_int_equal(pbjson_encode(m, &out, &len, &err), 0);
	assert_string_equal(out, want);
	assert_int_equal(len, strlen(want));
	free(out);
}

/* StartRequest as the JS SDK sends it for commands.run. */
static void test_start_request_names_and_optional(void **state)
{
	struct fixture *f = *state;
	Process__StartRequest *r = decode_ok(f, &process__start_request__descriptor,
		"{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\",\"echo hi\"],"
		"\"envs\":{\"A\":\"1\",\"B\":\"two\"},\"cwd\":\"/tmp\"},\"stdin\":false,"
		"\"unknownField\":{\"x\":[1,2]}}");

	assert_string_equal(r->process->cmd, "/bin/bash");
	assert_int_equal(r->process->n_args, 3);
	assert_string_equal(r->process->args[2], "echo hi");
	assert_int_equal(r->process->n_envs, 2);
	assert_string_equal(r->process->envs[1]->key, "B");
	assert_string_equal(r->process->envs[1]->value, "two");
	assert_int_equal(r->process->_cwd_case, PROCESS__PROCESS_CONFIG___CWD_CWD);
	assert_string_equal(r->process->cwd, "/tmp");
	/* stdin:false is an explicitly set optional: present, and false. */
	assert_int_equal(r->_stdin_case, PROCESS__START_REQUEST___STDIN_STDIN);
	assert_false(r->stdin);
	assert_int_equal(r->_tag_case, PROCESS__START_REQUEST___TAG__NOT_SET);
	assert_null(r->pty);

	/* ... and it comes back out the same way, stdin:false included. */
	assert_json(&r->base, "{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\","
		    "\"echo hi\"],\"envs\":{\"A\":\"1\",\"B\":\"two\"},\"cwd\":\"/tmp\"},"
		    "\"stdin\":false}");
}

static void test_snake_case_accepted(void **state)
{
	struct fixture *f = *state;
	Filesystem__WatchDirRequest *w = decode_ok(f, &filesystem__watch_dir_request__descriptor,
		"{\"path\":\"d\",\"include_entry\":true,\"allowNetworkMounts\":true}");
	Filesystem__EntryInfo *e;

	assert_true(w->include_entry);
	assert_true(w->allow_network_mounts);
	assert_false(w->recursive);
	assert_json(&w->base, "{\"path\":\"d\",\"includeEntry\":true,\"allowNetworkMounts\":true}");

	e = decode_ok(f, &filesystem__entry_info__descriptor,
		      "{\"modified_time\":\"2025-05-01T10:00:00Z\",\"symlink_target\":\"/x\"}");
	assert_non_null(e->modified_time);
	assert_int_equal(e->modified_time->seconds, 1746093600);
	assert_string_equal(e->symlink_target, "/x");
}

static void test_defaults_omitted(void **state)
{
	Process__ProcessEvent__EndEvent end = PROCESS__PROCESS_EVENT__END_EVENT__INIT;
	Filesystem__ListDirRequest ld = FILESYSTEM__LIST_DIR_REQUEST__INIT;

	(void)state;
	assert_json(&end.base, "{}");
	end.status = "exit status 0";
	end.exited = 1;
	assert_json(&end.base, "{\"exited\":true,\"status\":\"exit status 0\"}");
	end.exit_code = -1;
	end.exited = 0;
	end._error_case = PROCESS__PROCESS_EVENT__END_EVENT___ERROR_ERROR;
	end.error = "signal: killed";
	assert_json(&end.base, "{\"exitCode\":-1,\"status\":\"exit status 0\","
		    "\"error\":\"signal: killed\"}");
	ld.path = "";
	assert_json(&ld.base, "{}");
}

/* A set oneof member is emitted even when it is an empty message or zero. */
static void test_oneof_members(void **state)
{
	struct fixture *f = *state;
	Process__StartResponse resp = PROCESS__START_RESPONSE__INIT;
	Process__ProcessEvent ev = PROCESS__PROCESS_EVENT__INIT;
	Process__ProcessEvent__KeepAlive ka = PROCESS__PROCESS_EVENT__KEEP_ALIVE__INIT;
	Process__ProcessEvent__StartEvent st = PROCESS__PROCESS_EVENT__START_EVENT__INIT;
	Process__ProcessSelector *sel;
	Filesystem__WatchDirResponse w = FILESYSTEM__WATCH_DIR_RESPONSE__INIT;
	Filesystem__WatchDirResponse__StartEvent ws = FILESYSTEM__WATCH_DIR_RESPONSE__START_EVENT__INIT;

	resp.event = &ev;
	ev.event_case = PROCESS__PROCESS_EVENT__EVENT_KEEPALIVE;
	ev.keepalive = &ka;
	assert_json(&resp.base, "{\"event\":{\"keepalive\":{}}}");
	ev.event_case = PROCESS__PROCESS_EVENT__EVENT_START;
	ev.start = &st;
	assert_json(&resp.base, "{\"event\":{\"start\":{}}}");
	st.pid = 412;
	assert_json(&resp.base, "{\"event\":{\"start\":{\"pid\":412}}}");
	w.event_case = FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_START;
	w.start = &ws;
	assert_json(&w.base, "{\"start\":{}}");

	sel = decode_ok(f, &process__process_selector__descriptor, "{\"pid\":0}");
	assert_int_equal(sel->selector_case, PROCESS__PROCESS_SELECTOR__SELECTOR_PID);
	assert_json(&sel->base, "{\"pid\":0}");
	assert_int_equal(decode_err(f, &process__process_selector__descriptor,
				    "{\"pid\":1,\"tag\":\"x\"}"), -EINVAL);
	assert_non_null(strstr(f->err.msg, "'tag'"));
	/* null means "not set". */
	sel = decode_ok(f, &process__process_selector__descriptor, "{\"pid\":null,\"tag\":\"t\"}");
	assert_int_equal(sel->selector_case, PROCESS__PROCESS_SELECTOR__SELECTOR_TAG);
}

static void test_int64_and_enums(void **state)
{
	struct fixture *f = *state;
	Filesystem__EntryInfo *e;
	Process__SendSignalRequest *s;

	e = decode_ok(f, &filesystem__entry_info__descriptor,
		      "{\"size\":\"1234\",\"type\":\"FILE_TYPE_FILE\",\"mode\":420}");
	assert_int_equal(e->size, 1234);
	assert_int_equal(e->type, FILESYSTEM__FILE_TYPE__FILE_TYPE_FILE);
	assert_json(&e->base, "{\"type\":\"FILE_TYPE_FILE\",\"size\":\"1234\",\"mode\":420}");
	e = decode_ok(f, &filesystem__entry_info__descriptor,
		      "{\"size\":-9223372036854775808,\"type\":2,\"mode\":\"493\"}");
	assert_true(e->size == INT64_MIN);
	assert_int_equal(e->type, FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY);
	assert_int_equal(e->mode, 493);
	assert_json(&e->base, "{\"type\":\"FILE_TYPE_DIRECTORY\",\"size\":\"-9223372036854775808\","
		    "\"mode\":493}");
	e = decode_ok(f, &filesystem__entry_info__descriptor, "{\"size\":1e3}");
	assert_int_equal(e->size, 1000);

	s = decode_ok(f, &process__send_signal_request__descriptor,
		      "{\"process\":{\"pid\":7},\"signal\":\"SIGNAL_SIGKILL\"}");
	assert_int_equal(s->signal, PROCESS__SIGNAL__SIGNAL_SIGKILL);
	s = decode_ok(f, &process__send_signal_request__descriptor, "{\"signal\":15}");
	assert_int_equal(s->signal, PROCESS__SIGNAL__SIGNAL_SIGTERM);
	/* An unknown name leaves the field unset rather than failing the call. */
	s = decode_ok(f, &process__send_signal_request__descriptor, "{\"signal\":\"SIGNAL_HUP\"}");
	assert_int_equal(s->signal, PROCESS__SIGNAL__SIGNAL_UNSPECIFIED);
	/* An unknown number is kept (open enum) and emitted as a number. */
	s = decode_ok(f, &process__send_signal_request__descriptor, "{\"signal\":3}");
	assert_json(&s->base, "{\"signal\":3}");
}

static void test_wrong_types_name_the_field(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const ProtobufCMessageDescriptor *d;
		const char *json, *field;
	} cases[] = {
		{ &process__start_request__descriptor, "{\"process\":{\"cmd\":5}}", "process.cmd" },
		{ &process__start_request__descriptor, "{\"process\":{\"args\":\"x\"}}",
		  "process.args" },
		{ &process__start_request__descriptor, "{\"process\":{\"args\":[null]}}",
		  "process.args" },
		{ &process__start_request__descriptor, "{\"process\":{\"envs\":{\"A\":1}}}",
		  "process.envs[A]" },
		{ &process__start_request__descriptor, "{\"process\":[]}", "process" },
		{ &process__start_request__descriptor, "{\"stdin\":\"yes\"}", "stdin" },
		{ &filesystem__list_dir_request__descriptor, "{\"depth\":-1}", "depth" },
		{ &filesystem__list_dir_request__descriptor, "{\"depth\":4294967296}", "depth" },
		{ &filesystem__list_dir_request__descriptor, "{\"depth\":1.5}", "depth" },
		{ &filesystem__entry_info__descriptor, "{\"size\":\"12x\"}", "size" },
		{ &filesystem__entry_info__descriptor, "{\"modifiedTime\":\"yesterday\"}",
		  "modified_time" },
		{ &process__send_input_request__descriptor, "{\"input\":{\"stdin\":\"a*b=\"}}",
		  "input.stdin" },
		{ &process__send_signal_request__descriptor, "{\"signal\":true}", "signal" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = decode_err(f, cases[i].d, cases[i].json);

		if (rc != -EINVAL || !strstr(f->err.msg, cases[i].field))
			fail_msg("%s: rc %d, message '%s' should name '%s'", cases[i].json, rc,
				 f->err.msg, cases[i].field);
	}
	assert_int_equal(decode_err(f, &process__list_request__descriptor, "[]"), -EINVAL);
	assert_int_equal(decode_err(f, &process__list_request__descriptor, "{"), -EINVAL);
	assert_non_null(strstr(f->err.msg, "invalid JSON"));
	assert_int_equal(decode_err(f, &process__list_request__descriptor, "{} x"), -EINVAL);
}

static void test_bytes_base64(void **state)
{
	struct fixture *f = *state;
	Process__SendInputRequest *r;
	static const char *forms[] = { "aGk/Pz8+", "aGk_Pz8-", "aGk/Pz8+" };
	unsigned char want[] = { 'h', 'i', '?', '?', '?', '>' };

	for (size_t i = 0; i < 3; i++) {
		char json[128];

		snprintf(json, sizeof(json), "{\"input\":{\"stdin\":\"%s\"}}", forms[i]);
		r = decode_ok(f, &process__send_input_request__descriptor, json);
		assert_int_equal(r->input->stdin.len, sizeof(want));
		assert_memory_equal(r->input->stdin.data, want, sizeof(want));
	}
	/* Unpadded and padded forms of "hi\n" decode alike; output is padded. */
	r = decode_ok(f, &process__send_input_request__descriptor, "{\"input\":{\"pty\":\"aGkKaQ\"}}");
	assert_int_equal(r->input->pty.len, 4);
	assert_memory_equal(r->input->pty.data, "hi\ni", 4);
	assert_json(&r->base, "{\"input\":{\"pty\":\"aGkKaQ==\"}}");
	r = decode_ok(f, &process__send_input_request__descriptor, "{\"input\":{\"stdin\":\"\"}}");
	assert_int_equal(r->input->input_case, PROCESS__PROCESS_INPUT__INPUT_STDIN);
	assert_int_equal(r->input->stdin.len, 0);
	assert_json(&r->base, "{\"input\":{\"stdin\":\"\"}}");
	/* Spare bits of a short last group need not be zero ("QR==" is "A"):
	 * envd (Go's non-strict base64) and the agent's earlier libcrypto
	 * decoder take them, so a client's encoder may leave them set. */
	static const struct { const char *in; const char *want; } spare[] = {
		{ "QR==", "A" }, { "QR", "A" }, { "QUK=", "AB" }, { "QUJ", "AB" },
		{ "QUJD", "ABC" },
	};
	for (size_t i = 0; i < sizeof(spare) / sizeof(spare[0]); i++) {
		char json[128];

		snprintf(json, sizeof(json), "{\"input\":{\"stdin\":\"%s\"}}", spare[i].in);
		r = decode_ok(f, &process__send_input_request__descriptor, json);
		assert_int_equal(r->input->stdin.len, strlen(spare[i].want));
		assert_memory_equal(r->input->stdin.data, spare[i].want, strlen(spare[i].want));
	}
	/* Past the decoder's 4096-character chunks too. */
	static char big[5000 + 64];
	int n = snprintf(big, sizeof(big), "{\"input\":{\"stdin\":\"");
	for (int i = 0; i < 4500; i++)
		big[n++] = "QUJD"[i % 4];
	snprintf(big + n, sizeof(big) - (size_t)n, "QR\"}}");
	r = decode_ok(f, &process__send_input_request__descriptor, big);
	assert_int_equal(r->input->stdin.len, 4500 / 4 * 3 + 1);
	assert_int_equal(r->input->stdin.data[r->input->stdin.len - 1], 'A');
	assert_int_equal(decode_err(f, &process__send_input_request__descriptor,
				    "{\"input\":{\"stdin\":\"aGk=aGk=\"}}"), -EINVAL);
	assert_int_equal(decode_err(f, &process__send_input_request__descriptor,
				    "{\"input\":{\"stdin\":\"aGkKa\"}}"), -EINVAL);
}

static void test_timestamps(void **state)
{
	struct fixture *f = *state;
	Filesystem__EntryInfo e = FILESYSTEM__ENTRY_INFO__INIT;
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	Filesystem__EntryInfo *d;
	int64_t s;
	int32_t ns;

	e.modified_time = &ts;
	ts.seconds = 1746093600;
	assert_json(&e.base, "{\"modifiedTime\":\"2025-05-01T10:00:00Z\"}");
	ts.nanos = 123000000;
	assert_json(&e.base, "{\"modifiedTime\":\"2025-05-01T10:00:00.123Z\"}");
	ts.nanos = 123456000;
	assert_json(&e.base, "{\"modifiedTime\":\"2025-05-01T10:00:00.123456Z\"}");
	ts.nanos = 123456789;
	assert_json(&e.base, "{\"modifiedTime\":\"2025-05-01T10:00:00.123456789Z\"}");
	ts.seconds = -1;
	ts.nanos = 0;
	assert_json(&e.base, "{\"modifiedTime\":\"1969-12-31T23:59:59Z\"}");

	d = decode_ok(f, &filesystem__entry_info__descriptor,
		      "{\"modifiedTime\":\"2025-05-01T12:30:00.5+02:30\"}");
	assert_int_equal(d->modified_time->seconds, 1746093600);
	assert_int_equal(d->modified_time->nanos, 500000000);
	assert_int_equal(pbjson_time_parse("2024-02-29T00:00:00Z", &s, &ns), 0);
	assert_int_equal(pbjson_time_parse("2023-02-29T00:00:00Z", &s, &ns), -EINVAL);
	assert_int_equal(pbjson_time_parse("2023-01-01T00:00:00", &s, &ns), -EINVAL);
	assert_int_equal(pbjson_time_parse("2023-01-01T00:00:00.Z", &s, &ns), -EINVAL);
	assert_int_equal(pbjson_time_parse("2023-01-01T00:00:00.1234567890Z", &s, &ns), -EINVAL);
	assert_int_equal(pbjson_time_parse("0001-01-01T00:00:00Z", &s, &ns), 0);
	assert_true(s == -62135596800LL);
	assert_int_equal(pbjson_time_parse("9999-12-31T23:59:59.999999999Z", &s, &ns), 0);
	assert_int_equal(ns, 999999999);
	ts.seconds = 253402300800LL;
	{
		struct herr err = { 0 };
		char *out = NULL;
		size_t len;

		assert_int_equal(pbjson_encode(&e.base, &out, &len, &err), -EINVAL);
		assert_null(out);
	}
}

static void test_strings_utf8(void **state)
{
	struct fixture *f = *state;
	Filesystem__EntryInfo e = FILESYSTEM__ENTRY_INFO__INIT;
	Filesystem__EntryInfo *d;

	e.name = "caf\xc3\xa9 \xff\xfe.txt";
	assert_json(&e.base, "{\"name\":\"caf\xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd.txt\"}");
	d = decode_ok(f, &filesystem__entry_info__descriptor, "{\"name\":\"\\u00e9\\ud83d\\ude00\"}");
	assert_string_equal(d->name, "\xc3\xa9\xf0\x9f\x98\x80");
	/* NUL inside a string would truncate a path: refused. */
	assert_int_equal(decode_err(f, &filesystem__entry_info__descriptor,
				    "{\"name\":\"a\\u0000b\"}"), -EINVAL);
}

static void test_repeated_and_maps_out(void **state)
{
	struct fixture *f = *state;
	Process__ListResponse *l = decode_ok(f, &process__list_response__descriptor,
		"{\"processes\":[{\"config\":{\"cmd\":\"sh\",\"envs\":{}},\"pid\":3,\"tag\":\"t\"},"
		"{\"pid\":4}]}");

	assert_int_equal(l->n_processes, 2);
	assert_int_equal(l->processes[1]->pid, 4);
	assert_json(&l->base, "{\"processes\":[{\"config\":{\"cmd\":\"sh\"},\"pid\":3,"
		    "\"tag\":\"t\"},{\"pid\":4}]}");
	l = decode_ok(f, &process__list_response__descriptor, "{\"processes\":[]}");
	assert_json(&l->base, "{}");
}

static void test_binary_round_trip(void **state)
{
	struct fixture *f = *state;
	Process__StartRequest *r = decode_ok(f, &process__start_request__descriptor,
		"{\"process\":{\"cmd\":\"/bin/sh\",\"args\":[\"-c\",\"true\"],\"envs\":{\"K\":\"V\"}},"
		"\"stdin\":false,\"tag\":\"x\",\"pty\":{\"size\":{\"cols\":80,\"rows\":24}}}");
	struct herr err = { 0 };
	ProtobufCMessage *back = NULL;
	char *bin = NULL, *j1 = NULL, *j2 = NULL;
	size_t blen, l1, l2;

	assert_int_equal(pbbin_encode(&r->base, &bin, &blen, &err), 0);
	assert_int_equal(pbbin_decode(&process__start_request__descriptor, bin, blen, f->a, &back,
				      &err), 0);
	assert_int_equal(pbjson_encode(&r->base, &j1, &l1, &err), 0);
	assert_int_equal(pbjson_encode(back, &j2, &l2, &err), 0);
	assert_string_equal(j1, j2);
	assert_int_equal(((Process__StartRequest *)back)->_stdin_case,
			 PROCESS__START_REQUEST___STDIN_STDIN);
	free(bin);
	free(j1);
	free(j2);

	/* Garbage and invalid UTF-8 in a string field are refused. */
	assert_int_equal(pbbin_decode(&process__start_request__descriptor, "\x0a\x05\x0a", 3, f->a,
				      &back, &err), -EINVAL);
	assert_int_equal(pbbin_decode(&filesystem__stat_request__descriptor, "\x0a\x02\xc3\x28",
				      4, f->a, &back, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "path"));
	assert_int_equal(pbbin_decode(&filesystem__stat_request__descriptor, "", 0, f->a, &back,
				      &err), 0);
}

static void test_envelopes(void **state)
{
	struct herr err = { 0 };
	const void *msg;
	size_t len;
	unsigned char ok[] = { 0, 0, 0, 0, 2, '{', '}' };
	unsigned char two[] = { 0, 0, 0, 0, 2, '{', '}', 0, 0, 0, 0, 2, '{', '}' };
	unsigned char big[] = { 0, 0xff, 0xff, 0xff, 0xff, '{', '}' };
	unsigned char flags[] = { 2, 0, 0, 0, 2, '{', '}' };
	unsigned char gz[] = { 1, 0, 0, 0, 2, '{', '}' };
	unsigned char high[] = { 0x80, 0, 0, 0, 2, '{', '}' };
	const char *bare = "{\"path\":\"/tmp\"}";
	unsigned char hdr[5];

	(void)state;
	assert_int_equal(pbjson_envelope_parse(ok, sizeof(ok), &msg, &len, &err), 0);
	assert_int_equal(len, 2);
	assert_ptr_equal(msg, ok + 5);
	for (size_t n = 0; n < sizeof(ok); n++)
		assert_int_equal(pbjson_envelope_parse(ok, n, &msg, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "truncated"));
	assert_int_equal(pbjson_envelope_parse(two, sizeof(two), &msg, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "exactly one"));
	assert_int_equal(pbjson_envelope_parse(big, sizeof(big), &msg, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "4294967295"));
	assert_int_equal(pbjson_envelope_parse(flags, sizeof(flags), &msg, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "flags 0x02"));
	assert_int_equal(pbjson_envelope_parse(gz, sizeof(gz), &msg, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "compressed"));
	/* Bare JSON: '{' (0x7b) has the compressed bit set but is no envelope. */
	assert_int_equal(pbjson_envelope_parse(bare, strlen(bare), &msg, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "not an enveloped Connect message (first byte 0x7b)"));
	assert_null(strstr(err.msg, "compressed"));
	assert_int_equal(pbjson_envelope_parse("{}", 2, &msg, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "not an enveloped"));
	assert_int_equal(pbjson_envelope_parse(high, sizeof(high), &msg, &len, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "first byte 0x80"));
	pbjson_envelope_header(hdr, 2, 0x01020304);
	assert_memory_equal(hdr, "\x02\x01\x02\x03\x04", 5);
}

static void test_connect_error_json(void **state)
{
	size_t len;
	char *s;

	(void)state;
	s = pbjson_connect_error("not_found", "no \"x\"", 0, &len);
	assert_string_equal(s, "{\"code\":\"not_found\",\"message\":\"no \\\"x\\\"\"}");
	free(s);
	s = pbjson_connect_error("internal", "bad \xff", 1, &len);
	assert_string_equal(s, "{\"error\":{\"code\":\"internal\",\"message\":\"bad \xef\xbf\xbd\"}}");
	free(s);
	s = pbjson_connect_error(NULL, NULL, 1, &len);
	assert_string_equal(s, "{}");
	assert_int_equal(len, 2);
	free(s);
}

static void test_arena_cap(void **state)
{
	struct arena *a = arena_new(1000);
	char *p;

	(void)state;
	assert_non_null(arena_alloc(a, 500));
	assert_null(arena_alloc(a, 600));
	assert_non_null(p = arena_alloc(a, 400));
	memset(p, 1, 400);
	assert_true(arena_used(a) <= 1000);
	assert_null(arena_alloc(a, 100));
	assert_null(arena_alloc(a, SIZE_MAX));
	arena_set_cap(a, 1 << 20);
	/* Large blocks of their own, and alignment for any type. */
	p = arena_alloc(a, 100000);
	assert_non_null(p);
	memset(p, 2, 100000);
	assert_int_equal((uintptr_t)arena_alloc(a, 3) % _Alignof(max_align_t), 0);
	assert_string_equal(arena_strdup(a, "abc"), "abc");
	arena_free(a);
}

/* A hostile body cannot make the decoder pass the arena's cap. */
static void test_decode_respects_cap(void **state)
{
	struct arena *a = arena_new(64 * 1024);
	struct herr err = { 0 };
	ProtobufCMessage *m;
	size_t n = 200000;
	char *json = malloc(n * 4 + 64), *p = json;
	uint8_t *bin = malloc(n * 2);

	(void)state;
	p += sprintf(p, "{\"process\":{\"args\":[");
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "%s\"\"", i ? "," : "");
	strcpy(p, "]}}");
	assert_int_equal(pbjson_decode(&process__start_request__descriptor, json, strlen(json),
				       a, &m, &err), -E2BIG);
	assert_true(arena_used(a) <= 64 * 1024);

	/* Binary: many empty ProcessInfo messages in a ListResponse. */
	for (size_t i = 0; i < n; i++) {
		bin[2 * i] = 0x0a;
		bin[2 * i + 1] = 0;
	}
	assert_int_equal(pbbin_decode(&process__list_response__descriptor, bin, 2 * n, a, &m,
				      &err), -E2BIG);
	assert_true(arena_used(a) <= 64 * 1024);
	free(json);
	free(bin);
	arena_free(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_start_request_names_and_optional, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_snake_case_accepted, setup, teardown),
		cmocka_unit_test(test_defaults_omitted),
		cmocka_unit_test_setup_teardown(test_oneof_members, setup, teardown),
		cmocka_unit_test_setup_teardown(test_int64_and_enums, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_types_name_the_field, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bytes_base64, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timestamps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_strings_utf8, setup, teardown),
		cmocka_unit_test_setup_teardown(test_repeated_and_maps_out, setup, teardown),
		cmocka_unit_test_setup_teardown(test_binary_round_trip, setup, teardown),
		cmocka_unit_test(test_envelopes),
		cmocka_unit_test(test_connect_error_json),
		cmocka_unit_test(test_arena_cap),
		cmocka_unit_test(test_decode_respects_cap),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
