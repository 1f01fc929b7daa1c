/*
 * Identifiers and secrets of the control plane: API keys (minted, hashed,
 * abbreviated for display), sandbox ids, the node's server secret and the
 * per-sandbox tokens derived from it.
 */
#ifndef HUTCH_IDS_H
#define HUTCH_IDS_H

#include <stddef.h>

#include "err.h"

/* "e2b_" + 40 lowercase hex digits: the shape both SDKs accept. */
#define APIKEY_LEN 44
#define APIKEY_HASH_HEX 65
#define APIKEY_HINT_MAX 32
#define SERVER_SECRET_LEN 32
#define TOKEN_HEX 65

int apikey_generate(char out[APIKEY_LEN + 1], struct herr *err);
/* Hex SHA-256 of the key text; keys are only ever stored as this. */
void apikey_hash(const char *key, char out[APIKEY_HASH_HEX]);
/* A display form that identifies a key without revealing it. */
void apikey_hint(const char *key, char out[APIKEY_HINT_MAX]);

/* "i" + 20 characters of [a-z0-9], uniformly drawn. */
int sandbox_id_generate(char out[22], struct herr *err);
/* True when id has the shape of a sandbox id ([a-z0-9], 1..64). */
int sandbox_id_valid(const char *id);

/*
 * Reads the node's secret from path, or creates it (mode 0600, written to a
 * temporary file and renamed so that a crash never leaves a short secret).
 */
int server_secret_load(const char *path, unsigned char out[SERVER_SECRET_LEN],
		       struct herr *err);

/* hex(HMAC-SHA256(secret, prefix || id)). */
void token_derive(const unsigned char secret[SERVER_SECRET_LEN], const char *prefix,
		  const char *id, char out[TOKEN_HEX]);

#endif
