/*
 * Prometheus metrics of the API: requests by status, a latency histogram,
 * rate-limit refusals, and sandboxes by state (read from the store when
 * scraped). Counters are atomic so handlers never take a lock for them.
 */
#ifndef HUTCH_API_METRICS_H
#define HUTCH_API_METRICS_H

#include <stdint.h>

#include "buf.h"
#include "store.h"

#define METRICS_LATENCY_BUCKETS 12

struct api_metrics {
	uint64_t by_status[600];
	uint64_t latency_count;
	uint64_t latency_sum_us;
	uint64_t latency_le[METRICS_LATENCY_BUCKETS];
	uint64_t rate_limited;
};

void metrics_record(struct api_metrics *m, unsigned status, int64_t usec);
void metrics_rate_limited(struct api_metrics *m);
/* Appends the text exposition format to out. */
int metrics_render(struct api_metrics *m, struct store *st, struct hbuf *out);

#endif
