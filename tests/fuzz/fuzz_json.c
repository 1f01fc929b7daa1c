/*
 * libFuzzer target: the proto3 JSON decoder over several message types (the
 * first byte picks one); whatever decodes must encode again, and the encoding
 * must decode to the same JSON.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
	&process__send_signal_request__descriptor,
	&process__update_request__descriptor,
	&filesystem__entry_info__descriptor,
	&filesystem__list_dir_response__descriptor,
	&filesystem__watch_dir_request__descriptor,
	&filesystem__watch_dir_response__descriptor,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const ProtobufCMessageDescriptor *d;
	struct herr err = { 0 };
	struct arena *a;
	ProtobufCMessage *m, *m2;
	char *j1 = NULL, *j2 = NULL;
	size_t l1, l2;

	if (size < 1)
		return 0;
	d = types[data[0] % (sizeof(types) / sizeof(types[0]))];
	a = arena_new(4 << 20);
	if (pbjson_decode(d, (const char *)data + 1, size - 1, a, &m, &err) == 0 &&
	    pbjson_encode(m, &j1, &l1, &err) == 0) {
		if (pbjson_decode(d, j1, l1, a, &m2, &err) != 0 ||
		    pbjson_encode(m2, &j2, &l2, &err) != 0 || l1 != l2 || memcmp(j1, j2, l1))
			__builtin_trap(); /* our own output must read back identically */
	}
	free(j1);
	free(j2);
	arena_free(a);
	return 0;
}
