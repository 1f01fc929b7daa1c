/*
 * Bump allocator for call-scoped memory (see arena.h). Blocks are chained and
 * never reused; a request larger than a quarter of the default block size gets
 * a block of its own so the current block's free space is not wasted.
 */
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"

#define ARENA_BLOCK_SIZE (16 * 1024)
#define ARENA_ALIGN alignof(max_align_t)

struct arena_block {
	struct arena_block *next;
	size_t size; /* usable bytes in data */
	size_t used;
	alignas(max_align_t) unsigned char data[];
};

struct arena {
	struct arena_block *head; /* the block being filled */
	size_t used;              /* bytes handed out, counted against cap */
	size_t cap;
};

struct arena *arena_new(size_t cap)
{
	struct arena *a = calloc(1, sizeof(*a));

	if (a)
		a->cap = cap;
	return a;
}

void arena_free(struct arena *a)
{
	if (!a)
		return;
	while (a->head) {
		struct arena_block *b = a->head;

		a->head = b->next;
		free(b);
	}
	free(a);
}

static size_t align_up(size_t n)
{
	return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

/* Links a new block able to hold n bytes behind or in front of the head. */
static struct arena_block *arena_grow(struct arena *a, size_t n)
{
	size_t size = n > ARENA_BLOCK_SIZE / 4 ? n : ARENA_BLOCK_SIZE;
	struct arena_block *b = malloc(sizeof(*b) + size);

	if (!b)
		return NULL;
	b->size = size;
	b->used = 0;
	if (size == n && a->head) {
		/* A dedicated block: keep filling the current one afterwards. */
		b->next = a->head->next;
		a->head->next = b;
	} else {
		b->next = a->head;
		a->head = b;
	}
	return b;
}

void *arena_alloc(struct arena *a, size_t n)
{
	struct arena_block *b;
	void *p;

	if (n == 0)
		n = 1;
	if (n > SIZE_MAX - ARENA_ALIGN)
		return NULL;
	n = align_up(n);
	/* The cap counts what callers get, so it bounds what a peer can cost us. */
	if (n > a->cap || a->used > a->cap - n)
		return NULL;

	b = a->head;
	if (!b || b->size - b->used < n) {
		b = arena_grow(a, n);
		if (!b)
			return NULL;
	}
	p = b->data + b->used;
	b->used += n;
	a->used += n;
	return p;
}

void *arena_zalloc(struct arena *a, size_t n)
{
	void *p = arena_alloc(a, n);

	if (p)
		memset(p, 0, n);
	return p;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
	char *p;

	if (n == SIZE_MAX)
		return NULL;
	p = arena_alloc(a, n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = '\0';
	}
	return p;
}

char *arena_strdup(struct arena *a, const char *s)
{
	return arena_strndup(a, s, strlen(s));
}

size_t arena_used(const struct arena *a)
{
	return a->used;
}

size_t arena_cap(const struct arena *a)
{
	return a->cap;
}

void arena_set_cap(struct arena *a, size_t cap)
{
	a->cap = cap;
}

static void *pb_alloc(void *data, size_t n)
{
	return arena_alloc(data, n);
}

static void pb_free(void *data, void *p)
{
	(void)data;
	(void)p;
}

void arena_protobuf_allocator(struct arena *a, ProtobufCAllocator *out)
{
	out->alloc = pb_alloc;
	out->free = pb_free;
	out->allocator_data = a;
}
