/* Prometheus exposition of the API's counters: see metrics.h. */
#include "metrics.h"

#include <inttypes.h>
#include <time.h>

/* Upper bounds of the latency buckets, in seconds. */
static const double latency_bounds[METRICS_LATENCY_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5,
};

/* Creates take from tens of milliseconds (warm pool) to seconds. */
static const double create_bounds[METRICS_CREATE_BUCKETS] = {
	0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};

int64_t metrics_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void metrics_create(struct api_metrics *m, unsigned status, int64_t usec)
{
	struct histogram *h = &m->create;

	if (status >= 500) {
		__atomic_add_fetch(&m->creates_failed, 1, __ATOMIC_RELAXED);
		return;
	}
	if (status >= 300) {
		__atomic_add_fetch(&m->creates_refused, 1, __ATOMIC_RELAXED);
		return;
	}
	__atomic_add_fetch(&m->creates_ok, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&h->count, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&h->sum_us, (uint64_t)(usec < 0 ? 0 : usec), __ATOMIC_RELAXED);
	for (int i = 0; i < METRICS_CREATE_BUCKETS; i++)
		if ((double)usec / 1e6 <= create_bounds[i])
			__atomic_add_fetch(&h->le[i], 1, __ATOMIC_RELAXED);
}

void metrics_record(struct api_metrics *m, unsigned status, int64_t usec)
{
	if (status >= 500)
		__atomic_add_fetch(&m->server_errors, 1, __ATOMIC_RELAXED);
	if (status < 600)
		__atomic_add_fetch(&m->by_status[status], 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&m->latency_count, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&m->latency_sum_us, (uint64_t)(usec < 0 ? 0 : usec),
			   __ATOMIC_RELAXED);
	for (int i = 0; i < METRICS_LATENCY_BUCKETS; i++)
		if ((double)usec / 1e6 <= latency_bounds[i])
			__atomic_add_fetch(&m->latency_le[i], 1, __ATOMIC_RELAXED);
}

void metrics_rate_limited(struct api_metrics *m)
{
	__atomic_add_fetch(&m->rate_limited, 1, __ATOMIC_RELAXED);
}

static uint64_t load(const uint64_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

static int render_requests(struct api_metrics *m, struct hbuf *out)
{
	int rc = hbuf_append_str(out, "# HELP hutch_api_requests_total API requests "
				 "answered, by HTTP status.\n"
				 "# TYPE hutch_api_requests_total counter\n");

	for (unsigned s = 100; rc == 0 && s < 600; s++)
		if (load(&m->by_status[s]))
			rc = hbuf_printf(out, "hutch_api_requests_total{status=\"%u\"} %"
					 PRIu64 "\n", s, load(&m->by_status[s]));
	if (rc == 0)
		rc = hbuf_printf(out, "# HELP hutch_api_rate_limited_total Requests refused "
				 "with 429.\n# TYPE hutch_api_rate_limited_total counter\n"
				 "hutch_api_rate_limited_total %" PRIu64 "\n",
				 load(&m->rate_limited));
	if (rc == 0)
		rc = hbuf_printf(out, "# HELP hutch_api_errors_total API answers with a "
				 "5xx status.\n# TYPE hutch_api_errors_total counter\n"
				 "hutch_api_errors_total %" PRIu64 "\n",
				 load(&m->server_errors));
	return rc;
}

static int render_creates(struct api_metrics *m, struct hbuf *out)
{
	struct histogram *h = &m->create;
	int rc = hbuf_printf(out, "# HELP hutch_sandbox_creates_total Sandbox creates past "
			     "the rate limit, by outcome (refused: 4xx, failed: 5xx).\n"
			     "# TYPE hutch_sandbox_creates_total counter\n"
			     "hutch_sandbox_creates_total{result=\"ok\"} %" PRIu64 "\n"
			     "hutch_sandbox_creates_total{result=\"refused\"} %" PRIu64 "\n"
			     "hutch_sandbox_creates_total{result=\"failed\"} %" PRIu64 "\n"
			     "# HELP hutch_sandbox_create_seconds Time from a create "
			     "request to its answer, successful creates.\n"
			     "# TYPE hutch_sandbox_create_seconds histogram\n",
			     load(&m->creates_ok), load(&m->creates_refused),
			     load(&m->creates_failed));

	for (int i = 0; rc == 0 && i < METRICS_CREATE_BUCKETS; i++)
		rc = hbuf_printf(out, "hutch_sandbox_create_seconds_bucket{le=\"%g\"} %"
				 PRIu64 "\n", create_bounds[i], load(&h->le[i]));
	if (rc == 0)
		rc = hbuf_printf(out, "hutch_sandbox_create_seconds_bucket{le=\"+Inf\"} %"
				 PRIu64 "\nhutch_sandbox_create_seconds_sum %.6f\n"
				 "hutch_sandbox_create_seconds_count %" PRIu64 "\n",
				 load(&h->count), (double)load(&h->sum_us) / 1e6,
				 load(&h->count));
	return rc;
}

static int render_latency(struct api_metrics *m, struct hbuf *out)
{
	int rc = hbuf_append_str(out, "# HELP hutch_api_request_duration_seconds Time "
				 "to answer an API request.\n"
				 "# TYPE hutch_api_request_duration_seconds histogram\n");

	for (int i = 0; rc == 0 && i < METRICS_LATENCY_BUCKETS; i++)
		rc = hbuf_printf(out, "hutch_api_request_duration_seconds_bucket{le=\"%g\"} %"
				 PRIu64 "\n", latency_bounds[i], load(&m->latency_le[i]));
	if (rc == 0)
		rc = hbuf_printf(out,
				 "hutch_api_request_duration_seconds_bucket{le=\"+Inf\"} %"
				 PRIu64 "\nhutch_api_request_duration_seconds_sum %.6f\n"
				 "hutch_api_request_duration_seconds_count %" PRIu64 "\n",
				 load(&m->latency_count),
				 (double)load(&m->latency_sum_us) / 1e6,
				 load(&m->latency_count));
	return rc;
}

int metrics_render(struct api_metrics *m, struct store *st, struct hbuf *out)
{
	struct store_state_counts c;
	struct herr err;
	int rc = store_sandbox_count_states(st, &c, &err);

	if (rc < 0)
		return rc;
	rc = hbuf_printf(out, "# HELP hutch_sandboxes Sandboxes on this node, by state.\n"
			 "# TYPE hutch_sandboxes gauge\n"
			 "hutch_sandboxes{state=\"creating\"} %" PRId64 "\n"
			 "hutch_sandboxes{state=\"running\"} %" PRId64 "\n"
			 "hutch_sandboxes{state=\"paused\"} %" PRId64 "\n"
			 "hutch_sandboxes{state=\"ended\"} %" PRId64 "\n",
			 c.creating, c.running, c.paused, c.ended);
	if (rc == 0)
		rc = render_requests(m, out);
	if (rc == 0)
		rc = render_latency(m, out);
	if (rc == 0)
		rc = render_creates(m, out);
	return rc;
}
