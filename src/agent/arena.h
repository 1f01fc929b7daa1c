/*
 * Per-call memory arenas: a bump allocator over a list of blocks with a hard
 * cap on the bytes it may take from the system. Everything decoded from a
 * request and built for its response lives in the call's arena and is released
 * at once when the call ends, so handlers never free piecemeal and a hostile
 * body can make us allocate at most the cap.
 */
#ifndef HUTCH_AGENT_ARENA_H
#define HUTCH_AGENT_ARENA_H

#include <stddef.h>
#include <protobuf-c/protobuf-c.h>

struct arena;

/* A new arena that will hand out at most cap bytes in total; NULL on OOM. */
struct arena *arena_new(size_t cap);
void arena_free(struct arena *a);

/*
 * n bytes aligned for any type, or NULL when the cap would be passed or the
 * system is out of memory. arena_alloc(a, 0) returns a valid unique pointer.
 */
void *arena_alloc(struct arena *a, size_t n);
void *arena_zalloc(struct arena *a, size_t n);
char *arena_strdup(struct arena *a, const char *s);
char *arena_strndup(struct arena *a, const char *s, size_t n);

/* Bytes handed out so far (including alignment padding) and the cap. */
size_t arena_used(const struct arena *a);
size_t arena_cap(const struct arena *a);

/* Raises or lowers the cap; lowering below arena_used only stops new allocations. */
void arena_set_cap(struct arena *a, size_t cap);

/* A protobuf-c allocator drawing from a (free is a no-op until arena_free). */
void arena_protobuf_allocator(struct arena *a, ProtobufCAllocator *out);

#endif
