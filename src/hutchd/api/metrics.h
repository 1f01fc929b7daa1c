/*
 * Prometheus metrics of the API: requests by status, a latency histogram,
 * rate-limit refusals, server errors, sandbox creates by outcome with a
 * histogram of successful create times, and sandboxes by state (read from
 * the store when scraped). Counters are atomic so handlers never take a
 * lock for them.
 */
#ifndef HUTCH_API_METRICS_H
#define HUTCH_API_METRICS_H

#include <stdint.h>

#include "buf.h"
#include "store.h"

#define METRICS_LATENCY_BUCKETS 12
#define METRICS_CREATE_BUCKETS 12

struct histogram {
	uint64_t count, sum_us;
	uint64_t le[METRICS_CREATE_BUCKETS];
};

struct api_metrics {
	uint64_t by_status[600];
	uint64_t latency_count;
	uint64_t latency_sum_us;
	uint64_t latency_le[METRICS_LATENCY_BUCKETS];
	uint64_t rate_limited;
	uint64_t server_errors;   /* answers >= 500 */
	uint64_t creates_ok, creates_refused, creates_failed;
	struct histogram create;  /* successful creates */
};

void metrics_record(struct api_metrics *m, unsigned status, int64_t usec);
void metrics_rate_limited(struct api_metrics *m);
/* A create that passed the rate limit ended with status after usec. */
void metrics_create(struct api_metrics *m, unsigned status, int64_t usec);
int64_t metrics_now_us(void);
/* Appends the text exposition format to out. */
int metrics_render(struct api_metrics *m, struct store *st, struct hbuf *out);

#endif
