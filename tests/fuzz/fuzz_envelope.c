/* libFuzzer target: the request envelope parser, then JSON decoding of its message. */
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "pbjson.h"
#include "process/process.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct herr err = { 0 };
	const void *msg;
	size_t len;
	struct arena *a;
	ProtobufCMessage *m;

	if (pbjson_envelope_parse(data, size, &msg, &len, &err) < 0)
		return 0;
	if ((const uint8_t *)msg + len != data + size)
		__builtin_trap(); /* the message must end exactly where the body does */
	a = arena_new(1 << 20);
	pbjson_decode(&process__start_request__descriptor, msg, len, a, &m, &err);
	arena_free(a);
	return 0;
}
