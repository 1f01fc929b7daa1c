/*
 * libFuzzer target: the binary decoder (protobuf-c with the arena allocator
 * and our UTF-8 check) over several message types, then JSON encoding of the
 * result, which must always succeed for a valid message.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "arena.h"
#include "filesystem/filesystem.pb-c.h"
#include "pbjson.h"
#include "process/process.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const types[] = {
	&process__start_request__descriptor,
	&process__start_response__descriptor,
	&process__list_response__descriptor,
	&process__send_input_request__descriptor,
	&process__connect_request__descriptor,
	&filesystem__entry_info__descriptor,
	&filesystem__list_dir_response__descriptor,
	&filesystem__watch_dir_response__descriptor,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const ProtobufCMessageDescriptor *d;
	struct herr err = { 0 };
	struct arena *a;
	ProtobufCMessage *m;
	char *out = NULL;
	size_t len;

	if (size < 1)
		return 0;
	d = types[data[0] % (sizeof(types) / sizeof(types[0]))];
	a = arena_new(4 << 20);
	if (pbbin_decode(d, data + 1, size - 1, a, &m, &err) == 0) {
		/* Timestamps out of JSON's range are the one allowed refusal. */
		if (pbjson_encode(m, &out, &len, &err) != 0 && err.code != -EINVAL)
			__builtin_trap();
		free(out);
		out = NULL;
		if (pbbin_encode(m, &out, &len, &err) != 0)
			__builtin_trap();
		free(out);
	}
	arena_free(a);
	return 0;
}
