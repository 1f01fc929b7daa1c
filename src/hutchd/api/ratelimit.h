/*
 * Per-team rate limits: token buckets, one for sandbox creates and one for all
 * requests. A bucket holds up to `burst` tokens and refills at `rate` per
 * second; a request takes one token or is refused with the time to wait.
 */
#ifndef HUTCH_RATELIMIT_H
#define HUTCH_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

struct rl_bucket {
	double tokens;
	int64_t last_ms;
	bool primed;
};

struct rl_verdict {
	bool allowed;
	int64_t limit;          /* burst size, for RateLimit-Limit */
	int64_t remaining;      /* whole tokens left, for RateLimit-Remaining */
	int64_t reset_s;        /* seconds until the bucket is full again */
	int64_t retry_after_s;  /* when refused: seconds until one token (>= 1) */
};

/* Takes one token at time now_ms. rate <= 0 means no limit. */
struct rl_verdict rl_take(struct rl_bucket *b, double rate, int64_t burst,
			  int64_t now_ms);

enum rl_kind { RL_REQUEST, RL_CREATE, RL_KINDS };

struct rl_table;

struct rl_table *rl_table_new(void);
void rl_table_free(struct rl_table *t);

/* rl_take on the team's bucket of that kind, under the table's lock. */
struct rl_verdict rl_table_take(struct rl_table *t, int64_t team_id, enum rl_kind kind,
				double rate, int64_t burst, int64_t now_ms);

#endif
