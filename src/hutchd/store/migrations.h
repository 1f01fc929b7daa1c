/* The store's schema, as an ordered list of migrations (see migrations.c). */
#ifndef HUTCH_STORE_MIGRATIONS_H
#define HUTCH_STORE_MIGRATIONS_H

extern const char *const store_migrations[];
extern const int store_migration_count;

#endif
