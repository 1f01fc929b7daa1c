/*
 * Protobuf messages <-> the wire codecs of the Connect protocol, driven by
 * protobuf-c descriptors so any message of our .proto files works unchanged:
 *
 *   - proto3 canonical JSON (jansson), with the rules envd's clients rely on:
 *     lowerCamelCase names out, camelCase or snake_case in; implicit-presence
 *     defaults omitted; a set oneof member (which includes our "optional"
 *     scalars, written as one-member oneofs) always emitted; 64-bit integers as
 *     strings; enums by name; bytes as base64; Timestamp as RFC 3339; maps as
 *     objects; unknown fields ignored;
 *   - protobuf binary (protobuf-c's own packer and unpacker).
 *
 * Decoded messages live in the caller's arena, whose cap bounds what a hostile
 * body can cost; encoders return malloc'd buffers.
 */
#ifndef HUTCH_AGENT_PBJSON_H
#define HUTCH_AGENT_PBJSON_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#include "arena.h"
#include "err.h"

/*
 * Parses a JSON object into a new message of type desc allocated from a.
 * Returns 0, or -EINVAL (bad JSON, wrong type for a field: the message names
 * the field) or -E2BIG (the arena's or the JSON budget's cap was reached).
 */
int pbjson_decode(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
		  struct arena *a, ProtobufCMessage **out, struct herr *err);

/*
 * Writes msg as compact JSON into a malloc'd NUL-terminated string (*len
 * excludes the NUL). Returns 0, -ENOMEM, or -EINVAL for values JSON cannot
 * carry (a Timestamp out of range).
 */
int pbjson_encode(const ProtobufCMessage *msg, char **out, size_t *len, struct herr *err);

/*
 * Binary protobuf. Decoding rejects malformed input and string fields that are
 * not valid UTF-8 (as proto3 requires) with -EINVAL, and -E2BIG at the cap.
 */
int pbbin_decode(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
		 struct arena *a, ProtobufCMessage **out, struct herr *err);
int pbbin_encode(const ProtobufCMessage *msg, char **out, size_t *len, struct herr *err);

/*
 * Connect envelopes: 1 flags byte, a 4-byte big-endian length, the message.
 * A server-streaming request body must be exactly one uncompressed envelope
 * (flags 0); anything else fails with -EINVAL and a message saying why.
 */
#define PBJSON_ENVELOPE_HEADER 5
#define PBJSON_ENVELOPE_END_STREAM 0x02
int pbjson_envelope_parse(const void *body, size_t len, const void **msg, size_t *msg_len,
			  struct herr *err);
void pbjson_envelope_header(unsigned char hdr[PBJSON_ENVELOPE_HEADER], unsigned flags,
			    uint32_t len);

/*
 * The JSON of a Connect error: {"code":..,"message":..}, or wrapped as the
 * end-of-stream message {"error":{...}} when end_stream is set. code NULL
 * with end_stream gives the success end message "{}". malloc'd; NULL on OOM.
 */
char *pbjson_connect_error(const char *code, const char *message, int end_stream,
			   size_t *len);

/*
 * Base64 helpers shared with tests: encoding is standard with padding;
 * decoding accepts standard or URL-safe, padded or not. pbjson_b64_decode
 * writes at most (len / 4 + 1) * 3 bytes to out and returns the count, or
 * -EINVAL on bad input.
 */
char *pbjson_b64_encode(const void *data, size_t len);
long pbjson_b64_decode(const char *in, size_t len, unsigned char *out);

/* RFC 3339 <-> seconds and nanoseconds since the epoch (UTC out, any offset in). */
int pbjson_time_format(int64_t seconds, int32_t nanos, char out[40]);
int pbjson_time_parse(const char *s, int64_t *seconds, int32_t *nanos);

#endif
