/*
 * The Connect protocol (v1) as the agent serves it: unary and server-streaming
 * calls over HTTP/1.1, JSON and binary protobuf codecs, enveloped frames, the
 * end-of-stream frame, in-band stream errors, Connect-Timeout-Ms deadlines and
 * keepalive messages.
 *
 * Services describe their methods with struct rpc_method tables and never see
 * HTTP. Memory for a call's request and response comes from the call's arena
 * (rpc_alloc and friends) and is released when the call finishes.
 */
#ifndef HUTCH_AGENT_RPC_H
#define HUTCH_AGENT_RPC_H

#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#include "users.h"

enum rpc_code {
	RPC_OK = 0,
	RPC_CANCELED,
	RPC_UNKNOWN,
	RPC_INVALID_ARGUMENT,
	RPC_DEADLINE_EXCEEDED,
	RPC_NOT_FOUND,
	RPC_ALREADY_EXISTS,
	RPC_PERMISSION_DENIED,
	RPC_RESOURCE_EXHAUSTED,
	RPC_FAILED_PRECONDITION,
	RPC_ABORTED,
	RPC_OUT_OF_RANGE,
	RPC_UNIMPLEMENTED,
	RPC_INTERNAL,
	RPC_UNAVAILABLE,
	RPC_DATA_LOSS,
	RPC_UNAUTHENTICATED,
};

#define RPC_MESSAGE_MAX 1024

struct rpc_status {
	enum rpc_code code;
	char message[RPC_MESSAGE_MAX];
};

/* Fills st and returns -1, so handlers can write "return rpc_fail(...)". */
int rpc_fail(struct rpc_status *st, enum rpc_code code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* "not_found" etc., and the HTTP status Connect pairs with each code. */
const char *rpc_code_name(enum rpc_code code);
int rpc_code_http_status(enum rpc_code code);

struct rpc_arena;

/* What a handler knows about the call. */
struct rpc_ctx {
	struct rpc_arena *arena;
	struct agent_user user;   /* from Authorization: Basic, else the default user */
	int64_t deadline_ms;      /* CLOCK_MONOTONIC milliseconds; 0 when there is none */
	int keepalive_ms;         /* idle interval between keepalive messages */
};

/*
 * Call-scoped allocation: never fails for the caller (aborts on OOM or past
 * the call's 256 MiB cap). Thread-safe, so a stream's producer may use it too.
 * Memory lives until the call ends: for a stream, until its last reference
 * is dropped, so ctx and req stay valid for a producer holding a reference.
 */
void *rpc_alloc(struct rpc_ctx *ctx, size_t n);
char *rpc_strdup(struct rpc_ctx *ctx, const char *s);

/* Monotonic clock in milliseconds, the clock of rpc_ctx.deadline_ms. */
int64_t rpc_now_ms(void);

/*
 * A server stream. The stream function (below) gets one; it may keep a
 * reference (rpc_stream_ref) and send from any thread until it ends the stream.
 * All functions are thread-safe.
 */
struct rpc_stream;

enum rpc_close_reason {
	RPC_CLOSE_ENDED,     /* rpc_stream_end was called */
	RPC_CLOSE_CLIENT,    /* the client went away */
	RPC_CLOSE_DEADLINE,  /* Connect-Timeout-Ms passed; ended with deadline_exceeded */
};

/*
 * Serializes msg with the call's codec and queues it. Blocks while more than
 * the stream's buffer limit is queued (backpressure from a slow client).
 * Returns 0, or -EPIPE once the stream has ended or its client is gone.
 */
int rpc_stream_send(struct rpc_stream *s, const ProtobufCMessage *msg);

/* Ends the stream with success (st NULL or RPC_OK) or an error; idempotent. */
void rpc_stream_end(struct rpc_stream *s, const struct rpc_status *st);

/* True once the stream has ended for any reason. */
int rpc_stream_closed(struct rpc_stream *s);

/*
 * Called once, from whichever thread closes the stream, after which sends fail.
 * Set it before the stream function returns.
 */
void rpc_stream_on_close(struct rpc_stream *s, void (*fn)(void *arg, enum rpc_close_reason),
			 void *arg);

void rpc_stream_ref(struct rpc_stream *s);
void rpc_stream_unref(struct rpc_stream *s);

/*
 * Unary: fill *resp (already initialised by the layer for method->output)
 * and return 0, or return rpc_fail(...).
 */
typedef int (*rpc_unary_fn)(struct rpc_ctx *ctx, const ProtobufCMessage *req,
			    ProtobufCMessage *resp, struct rpc_status *st);

/*
 * Server streaming: set the stream up and return 0 (the first message, e.g. a
 * start event, may be sent before returning or later), or return rpc_fail(...)
 * and the layer ends the stream with that error in-band.
 */
typedef int (*rpc_stream_fn)(struct rpc_ctx *ctx, const ProtobufCMessage *req,
			     struct rpc_stream *s, struct rpc_status *st);

struct rpc_method {
	const char *path;  /* "/process.Process/Start" */
	const ProtobufCMessageDescriptor *input;
	const ProtobufCMessageDescriptor *output;
	rpc_unary_fn unary;     /* exactly one of unary and stream is set */
	rpc_stream_fn stream;
	/* streams: the message sent when idle for keepalive_ms */
	const ProtobufCMessage *keepalive;
};

/*
 * The HTTP side, for the agent's server (http.c), which checks the access
 * token first. rpc_is_rpc_path says whether a URL has the shape of a Connect
 * method path ("/pkg.Service/Method"); rpc_handler follows libmicrohttpd's
 * access-handler contract for such a request, *state starting NULL; rpc_done
 * is called once when the request ends, however it ends.
 */
int rpc_is_rpc_path(const char *url);
enum MHD_Result rpc_handler(struct MHD_Connection *c, const char *url, const char *method,
			    const char *upload_data, size_t *upload_data_size, void **state);
void rpc_done(void *state);

/*
 * Adds a method table (ending with a zeroed entry) searched after the
 * services' own; for tests and optional services. Call before serving.
 */
void rpc_register_methods(const struct rpc_method *table);

/*
 * Limits: request body, bytes queued on a stream before senders block, and
 * bytes queued over all streams before a sender whose stream already has
 * some queued blocks too.
 */
#define RPC_BODY_MAX (16u << 20)
#define RPC_STREAM_QUEUE_MAX (4u << 20)
#define RPC_STREAMS_QUEUED_MAX (64u << 20)

/*
 * Ends every open stream with st (for the agent's shutdown: clients learn
 * why their stream ended instead of seeing the connection drop), then waits
 * up to wait_ms for their responses to finish.
 */
void rpc_streams_shutdown(const struct rpc_status *st, int wait_ms);

/* Method tables of the services, each ending with a zeroed entry. */
extern const struct rpc_method process_methods[];
extern const struct rpc_method filesystem_methods[];

#endif
