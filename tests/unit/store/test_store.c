/* The SQLite store on a real database file in a temporary directory. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ids.h"
#include "store.h"

struct fx {
	char dir[64];
	char path[128];
	struct store *st;
	int64_t team;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct herr err;

	snprintf(f->dir, sizeof(f->dir), "/tmp/hutch-store-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/db", f->dir);
	assert_int_equal(store_open(f->path, "node-a", &f->st, &err), 0);
	assert_int_equal(store_team_ensure(f->st, "t1", &f->team, &err), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char p[160];

	store_close(f->st);
	for (const char *sfx = ""; ; sfx = sfx[0] ? NULL : "-wal") {
		if (!sfx)
			break;
		snprintf(p, sizeof(p), "%s%s", f->path, sfx);
		unlink(p);
	}
	snprintf(p, sizeof(p), "%s-shm", f->path);
	unlink(p);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void add_sandbox(struct fx *f, const char *id, int64_t started, const char *meta)
{
	struct store_sandbox s = { 0 };
	struct herr err;

	snprintf(s.id, sizeof(s.id), "%s", id);
	s.team_id = f->team;
	s.template_id = "base";
	s.created_at = s.started_at = started;
	s.end_at = started + 15000;
	s.timeout_s = 15;
	s.metadata = (char *)meta;
	s.envd_version = "0.6.13";
	s.cpu_count = 2;
	assert_int_equal(store_sandbox_insert(f->st, &s, &err), 0);
	assert_int_equal(store_sandbox_set_running(f->st, id, started, started + 15000,
						   &err), 1);
}

static void test_reopen_keeps_schema(void **state)
{
	struct fx *f = *state;
	struct store *again;
	struct herr err;

	assert_int_equal(store_schema_version(f->st), 2);
	assert_int_equal(store_open(f->path, "node-a", &again, &err), 0);
	assert_int_equal(store_schema_version(again), 2);
	store_close(again);
}

static void test_keys_hash_lookup_revoke(void **state)
{
	struct fx *f = *state;
	char key[APIKEY_LEN + 1], other[APIKEY_LEN + 1], hash[APIKEY_HASH_HEX];
	struct store_key k;
	struct herr err;
	int64_t id, n;

	assert_int_equal(apikey_generate(key, &err), 0);
	assert_int_equal(apikey_generate(other, &err), 0);
	assert_string_not_equal(key, other);
	apikey_hash(key, hash);
	assert_int_equal(store_key_add(f->st, f->team, hash, "hint", &id, &err), 0);
	assert_int_equal(store_key_lookup(f->st, hash, &k, &err), 1);
	assert_int_equal(k.team_id, f->team);
	assert_string_equal(k.team, "t1");
	apikey_hash(other, hash);
	assert_int_equal(store_key_lookup(f->st, hash, &k, &err), 0);
	assert_int_equal(store_key_count_valid(f->st, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(store_key_revoke(f->st, id, &err), 0);
	apikey_hash(key, hash);
	assert_int_equal(store_key_lookup(f->st, hash, &k, &err), 0);
	assert_int_equal(store_key_revoke(f->st, id, &err), -ENOENT);
}

static void test_insert_is_creating_with_intent(void **state)
{
	struct fx *f = *state;
	struct store_sandbox s = { 0 }, got = { 0 };
	struct herr err;

	snprintf(s.id, sizeof(s.id), "iaaaa");
	s.team_id = f->team;
	s.template_id = "base";
	s.envd_version = "0.6.13";
	assert_int_equal(store_sandbox_insert(f->st, &s, &err), 0);
	assert_int_equal(store_sandbox_insert(f->st, &s, &err), -EEXIST);
	assert_int_equal(store_sandbox_get(f->st, "iaaaa", f->team, &got, &err), 1);
	assert_string_equal(got.state, SBX_CREATING);
	assert_string_equal(got.intent, "create");
	assert_string_equal(got.metadata, "{}");
	assert_string_equal(got.node, "node-a");
	store_sandbox_clear(&got);
	/* another team does not see it */
	assert_int_equal(store_sandbox_get(f->st, "iaaaa", f->team + 1, &got, &err), 0);
}

/* Many creates racing for the last places: the cap is never exceeded. */
struct capped_arg {
	struct store *st;
	int64_t team;
	int index;
	int rc;
};

static void *insert_capped(void *p)
{
	struct capped_arg *a = p;
	struct store_sandbox s = { 0 };
	struct herr err;

	snprintf(s.id, sizeof(s.id), "icap%02d", a->index);
	s.team_id = a->team;
	s.template_id = "base";
	s.envd_version = "0.6.13";
	a->rc = store_sandbox_insert_capped(a->st, &s, 5, &err);
	if (a->rc == -EDQUOT && !strstr(err.msg, "5 active sandboxes"))
		a->rc = -EPROTO; /* the message must name the count */
	return NULL;
}

static void test_insert_capped_holds_under_races(void **state)
{
	struct fx *f = *state;
	struct capped_arg a[16];
	pthread_t t[16];
	int ok = 0, refused = 0;
	int64_t n;
	struct herr err;

	add_sandbox(f, "iexisting", 1000, NULL); /* one place already taken */
	for (int i = 0; i < 16; i++) {
		a[i] = (struct capped_arg){ .st = f->st, .team = f->team, .index = i };
		assert_int_equal(pthread_create(&t[i], NULL, insert_capped, &a[i]), 0);
	}
	for (int i = 0; i < 16; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		if (a[i].rc == 0)
			ok++;
		else if (a[i].rc == -EDQUOT)
			refused++;
	}
	assert_int_equal(ok, 4);
	assert_int_equal(refused, 12);
	assert_int_equal(store_sandbox_count_active(f->st, f->team, &n, &err), 0);
	assert_int_equal(n, 5);
	/* 0 means no cap */
	struct store_sandbox s = { .team_id = f->team, .template_id = "base",
				   .envd_version = "0.6.13" };
	snprintf(s.id, sizeof(s.id), "inocap");
	if (store_sandbox_insert_capped(f->st, &s, 0, &err) != 0)
		fail_msg("%s", err.msg);
}

static void test_end_keeps_reason_once(void **state)
{
	struct fx *f = *state;
	struct store_sandbox got = { 0 };
	struct herr err;
	int64_t n;

	add_sandbox(f, "ib", 1000, NULL);
	assert_int_equal(store_sandbox_count_active(f->st, f->team, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(store_sandbox_end(f->st, "ib", "timeout", 5000, &err), 1);
	assert_int_equal(store_sandbox_end(f->st, "ib", "killed", 6000, &err), 0);
	assert_int_equal(store_sandbox_get(f->st, "ib", -1, &got, &err), 1);
	assert_string_equal(got.state, SBX_ENDED);
	assert_string_equal(got.end_reason, "timeout");
	assert_int_equal(got.ended_at, 5000);
	store_sandbox_clear(&got);
	assert_int_equal(store_sandbox_count_active(f->st, f->team, &n, &err), 0);
	assert_int_equal(n, 0);
	assert_int_equal(store_sandbox_purge_ended(f->st, 5001, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(store_sandbox_get(f->st, "ib", -1, &got, &err), 0);
}

static void test_deadlines(void **state)
{
	struct fx *f = *state;
	char ids[8][SBX_ID_LEN + 1];
	struct herr err;
	int n;

	add_sandbox(f, "ic", 0, NULL);   /* ends at 15000 */
	add_sandbox(f, "id", 10000, NULL); /* ends at 25000 */
	assert_int_equal(store_sandbox_expired(f->st, 20000, ids, 8, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ids[0], "ic");
	/* only_extend never shortens */
	assert_int_equal(store_sandbox_set_end_at(f->st, "id", 12000, true, &err), 1);
	assert_int_equal(store_sandbox_expired(f->st, 20000, ids, 8, &n, &err), 0);
	assert_int_equal(n, 1);
	/* a plain set does */
	assert_int_equal(store_sandbox_set_end_at(f->st, "id", 12000, false, &err), 1);
	assert_int_equal(store_sandbox_expired(f->st, 20000, ids, 8, &n, &err), 0);
	assert_int_equal(n, 2);
	/* a sandbox with an operation in flight is left to that operation */
	assert_int_equal(store_sandbox_set_intent(f->st, "ic", "kill", &err), 1);
	assert_int_equal(store_sandbox_expired(f->st, 20000, ids, 8, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ids[0], "id");
}

struct collect {
	char ids[16][SBX_ID_LEN + 1];
	int n;
};

static int collect_cb(const struct store_sandbox *s, void *ctx)
{
	struct collect *c = ctx;

	snprintf(c->ids[c->n++], SBX_ID_LEN + 1, "%s", s->id);
	return 0;
}

static void test_list_pages_and_filters(void **state)
{
	struct fx *f = *state;
	struct store_list_query q = { .team_id = f->team, .want_running = true,
				      .limit = 2 };
	struct collect c = { 0 };
	struct herr err;
	bool more;

	add_sandbox(f, "i1", 100, "{\"user\":\"a b\"}");
	add_sandbox(f, "i2", 200, "{\"user\":\"x\"}");
	add_sandbox(f, "i3", 300, "{\"user\":\"a b\",\"k\":\"v\"}");
	add_sandbox(f, "i4", 300, NULL);
	/* newest first, ties by id ascending */
	assert_int_equal(store_sandbox_list(f->st, &q, collect_cb, &c, &more, &err), 0);
	assert_int_equal(c.n, 2);
	assert_true(more);
	assert_string_equal(c.ids[0], "i3");
	assert_string_equal(c.ids[1], "i4");
	q.has_cursor = true;
	q.cursor_started_at = 300;
	snprintf(q.cursor_id, sizeof(q.cursor_id), "i4");
	assert_int_equal(store_sandbox_list(f->st, &q, collect_cb, &c, &more, &err), 0);
	assert_int_equal(c.n, 4);
	assert_false(more);
	assert_string_equal(c.ids[2], "i2");
	assert_string_equal(c.ids[3], "i1");
	/* metadata AND filter */
	memset(&c, 0, sizeof(c));
	q = (struct store_list_query){ .team_id = f->team, .want_running = true,
				       .limit = 10, .n_meta = 1 };
	q.meta_keys[0] = "user";
	q.meta_values[0] = "a b";
	assert_int_equal(store_sandbox_list(f->st, &q, collect_cb, &c, &more, &err), 0);
	assert_int_equal(c.n, 2);
	q.n_meta = 2;
	q.meta_keys[1] = "k";
	q.meta_values[1] = "v";
	memset(&c, 0, sizeof(c));
	assert_int_equal(store_sandbox_list(f->st, &q, collect_cb, &c, &more, &err), 0);
	assert_int_equal(c.n, 1);
	assert_string_equal(c.ids[0], "i3");
	/* ascending order and startedAfter */
	memset(&c, 0, sizeof(c));
	q = (struct store_list_query){ .team_id = f->team, .want_running = true,
				       .limit = 10, .ascending = true,
				       .started_after = 200 };
	assert_int_equal(store_sandbox_list(f->st, &q, collect_cb, &c, &more, &err), 0);
	assert_int_equal(c.n, 3);
	assert_string_equal(c.ids[0], "i2");
	assert_string_equal(c.ids[1], "i4");
	assert_string_equal(c.ids[2], "i3");
}

/*
 * Group commit: writers on several threads share fdatasyncs. Every write
 * that returned must be committed (seen by another connection, as another
 * process would see it), and no writer may be left waiting for a sync.
 */
#define WRITERS 8
#define EVENTS_EACH 40

struct writer {
	struct store *st;
	int failures;
};

static void *write_events(void *arg)
{
	struct writer *w = arg;
	struct herr err;

	for (int i = 0; i < EVENTS_EACH; i++)
		if (store_event_add(w->st, "sbxgroupcommit0000001", "tick", "", &err) < 0)
			w->failures++;
	return NULL;
}

static int count_event(int64_t at, const char *kind, const char *detail, void *ctx)
{
	(void)at;
	(void)detail;
	if (strcmp(kind, "tick") == 0)
		(*(int *)ctx)++;
	return 0;
}

static void test_concurrent_writes_all_commit(void **state)
{
	struct fx *f = *state;
	struct writer w[WRITERS];
	pthread_t t[WRITERS];
	struct store *other = NULL;
	struct herr err;
	int seen = 0;

	add_sandbox(f, "sbxgroupcommit0000001", 1000, "{}");
	for (int i = 0; i < WRITERS; i++) {
		w[i] = (struct writer){ .st = f->st };
		assert_int_equal(pthread_create(&t[i], NULL, write_events, &w[i]), 0);
	}
	for (int i = 0; i < WRITERS; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(w[i].failures, 0);
	}
	assert_int_equal(store_open(f->path, "node-a", &other, &err), 0);
	assert_int_equal(store_event_list(other, "sbxgroupcommit0000001", 0, 10000,
					  count_event, &seen, &err), 0);
	store_close(other);
	assert_int_equal(seen, WRITERS * EVENTS_EACH);
}

/* The kept lookup statement is shared: readers on several threads must each
 * get their own sandbox, whole, every time. */
struct reader {
	struct store *st;
	const char *id;
	int wrong;
};

static void *read_sandboxes(void *arg)
{
	struct reader *r = arg;
	struct herr err;

	for (int i = 0; i < 400; i++) {
		struct store_sandbox sb = { 0 };

		if (store_sandbox_get(r->st, r->id, -1, &sb, &err) != 1 ||
		    strcmp(sb.id, r->id) != 0 || strcmp(sb.state, SBX_RUNNING) != 0 ||
		    !sb.template_id || strcmp(sb.template_id, "base") != 0)
			r->wrong++;
		store_sandbox_clear(&sb);
	}
	return NULL;
}

static void test_concurrent_lookups(void **state)
{
	static const char *const ids[] = { "sbxlookup00000000001", "sbxlookup00000000002" };
	struct fx *f = *state;
	struct reader r[WRITERS];
	pthread_t t[WRITERS];

	add_sandbox(f, ids[0], 1000, "{}");
	add_sandbox(f, ids[1], 2000, "{}");
	for (int i = 0; i < WRITERS; i++) {
		r[i] = (struct reader){ .st = f->st, .id = ids[i % 2] };
		assert_int_equal(pthread_create(&t[i], NULL, read_sandboxes, &r[i]), 0);
	}
	for (int i = 0; i < WRITERS; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(r[i].wrong, 0);
	}
}

/* Snapshot rows: insert, get by team, list (filtered, in order), delete. */
static void add_snapshot(struct fx *f, const char *id, const char *sbx, int64_t at)
{
	struct store_snapshot s = { .team_id = f->team, .created_at = at,
				    .size_bytes = 4096 };
	struct herr err;

	snprintf(s.id, sizeof(s.id), "%s", id);
	snprintf(s.sandbox_id, sizeof(s.sandbox_id), "%s", sbx);
	s.template_id = "base";
	s.name = "n";
	s.config = "{\"env\":\"{}\"}";
	assert_int_equal(store_snapshot_insert(f->st, &s, &err), 0);
}

static int collect_snapshot(const struct store_snapshot *s, void *ctx)
{
	char *out = ctx;

	strcat(out, s->id);
	strcat(out, " ");
	return 0;
}

static void test_snapshots(void **state)
{
	struct fx *f = *state;
	struct store_snapshot got = { 0 };
	struct store_snapshot dup = { .team_id = f->team };
	int64_t other;
	char seen[256] = "";
	struct herr err;

	add_snapshot(f, "sb", "i1", 2000);
	add_snapshot(f, "sa", "i2", 1000);
	add_snapshot(f, "sc", "i1", 3000);
	snprintf(dup.id, sizeof(dup.id), "sa");
	assert_int_equal(store_snapshot_insert(f->st, &dup, &err), -EEXIST);

	assert_int_equal(store_snapshot_get(f->st, "sb", f->team, &got, &err), 1);
	assert_string_equal(got.sandbox_id, "i1");
	assert_string_equal(got.template_id, "base");
	assert_string_equal(got.name, "n");
	assert_string_equal(got.config, "{\"env\":\"{}\"}");
	assert_int_equal(got.size_bytes, 4096);
	assert_int_equal(got.created_at, 2000);
	assert_string_equal(got.node, "node-a");
	store_snapshot_clear(&got);

	/* Another team sees nothing and deletes nothing. */
	assert_int_equal(store_team_ensure(f->st, "t2", &other, &err), 0);
	assert_int_equal(store_snapshot_get(f->st, "sb", other, &got, &err), 0);
	assert_int_equal(store_snapshot_delete(f->st, "sb", other, &err), 0);
	assert_int_equal(store_snapshot_list(f->st, other, NULL, collect_snapshot, seen,
					     &err), 0);
	assert_string_equal(seen, "");

	assert_int_equal(store_snapshot_list(f->st, f->team, NULL, collect_snapshot, seen,
					     &err), 0);
	assert_string_equal(seen, "sa sb sc ");
	seen[0] = '\0';
	assert_int_equal(store_snapshot_list(f->st, f->team, "i1", collect_snapshot, seen,
					     &err), 0);
	assert_string_equal(seen, "sb sc ");

	assert_int_equal(store_snapshot_delete(f->st, "sb", f->team, &err), 1);
	assert_int_equal(store_snapshot_delete(f->st, "sb", f->team, &err), 0);
	assert_int_equal(store_snapshot_get(f->st, "sb", -1, &got, &err), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_reopen_keeps_schema, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keys_hash_lookup_revoke, setup, teardown),
		cmocka_unit_test_setup_teardown(test_insert_is_creating_with_intent, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_end_keeps_reason_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_insert_capped_holds_under_races, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_deadlines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_pages_and_filters, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_writes_all_commit, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_lookups, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshots, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
