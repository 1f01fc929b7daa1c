/* Token buckets per team: see ratelimit.h. */
#include "ratelimit.h"

#include <pthread.h>
#include <stdlib.h>

struct rl_entry {
	int64_t team_id;
	struct rl_bucket buckets[RL_KINDS];
};

struct rl_table {
	pthread_mutex_t lock;
	struct rl_entry *entries;
	size_t n, cap;
};

/* Rounds up to whole seconds (no libm needed for this). */
static int64_t ceil_s(double s)
{
	int64_t v = (int64_t)s;

	if ((double)v < s)
		v++;
	return v < 0 ? 0 : v;
}

struct rl_verdict rl_take(struct rl_bucket *b, double rate, int64_t burst,
			  int64_t now_ms)
{
	struct rl_verdict v = { .allowed = true, .limit = burst };

	if (rate <= 0 || burst <= 0) {
		v.limit = 0;
		return v;
	}
	if (!b->primed) {
		b->tokens = (double)burst;
		b->last_ms = now_ms;
		b->primed = true;
	}
	if (now_ms > b->last_ms) {
		b->tokens += (double)(now_ms - b->last_ms) / 1000.0 * rate;
		if (b->tokens > (double)burst)
			b->tokens = (double)burst;
		b->last_ms = now_ms;
	}
	if (b->tokens >= 1.0) {
		b->tokens -= 1.0;
	} else {
		v.allowed = false;
		v.retry_after_s = ceil_s((1.0 - b->tokens) / rate);
		if (v.retry_after_s < 1)
			v.retry_after_s = 1;
	}
	v.remaining = (int64_t)b->tokens; /* tokens >= 0: truncation is floor */
	v.reset_s = ceil_s(((double)burst - b->tokens) / rate);
	return v;
}

struct rl_table *rl_table_new(void)
{
	struct rl_table *t = calloc(1, sizeof(*t));

	if (t)
		pthread_mutex_init(&t->lock, NULL);
	return t;
}

void rl_table_free(struct rl_table *t)
{
	if (!t)
		return;
	pthread_mutex_destroy(&t->lock);
	free(t->entries);
	free(t);
}

/* Teams are few (one per key owner), so a linear scan is the simple choice. */
static struct rl_entry *find_entry(struct rl_table *t, int64_t team_id)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->entries[i].team_id == team_id)
			return &t->entries[i];
	if (t->n == t->cap) {
		size_t ncap = t->cap ? t->cap * 2 : 8;
		struct rl_entry *p = realloc(t->entries, ncap * sizeof(*p));

		if (!p)
			return NULL;
		t->entries = p;
		t->cap = ncap;
	}
	t->entries[t->n] = (struct rl_entry){ .team_id = team_id };
	return &t->entries[t->n++];
}

struct rl_verdict rl_table_take(struct rl_table *t, int64_t team_id, enum rl_kind kind,
				double rate, int64_t burst, int64_t now_ms)
{
	struct rl_verdict v = { .allowed = false, .limit = burst, .retry_after_s = 1 };
	struct rl_entry *e;

	pthread_mutex_lock(&t->lock);
	e = find_entry(t, team_id);
	if (e)
		v = rl_take(&e->buckets[kind], rate, burst, now_ms);
	pthread_mutex_unlock(&t->lock);
	return v;
}
