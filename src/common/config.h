/*
 * Configuration: one table of settings per program, filled from (lowest to
 * highest precedence) built-in defaults, a config file, command-line flags and
 * HUTCH_* environment variables.
 *
 * A setting named "api-listen" is the file key "api-listen" (or "api_listen"),
 * the flag "--api-listen=V" (or "--api-listen V") and the variable
 * HUTCH_API_LISTEN. The file holds "key = value" lines; '#' starts a comment.
 * Every setting appears in --help with its default and its variable name, and
 * so does the file read when none is named.
 */
#ifndef HUTCH_CONFIG_H
#define HUTCH_CONFIG_H

#include <stdio.h>

#include "err.h"

enum cfg_type { CFG_STR, CFG_INT, CFG_BOOL };

struct cfg_opt {
	const char *name;
	enum cfg_type type;
	const char *def;  /* default, as text; NULL means unset */
	const char *help;
	/* filled by cfg_load */
	char *str;        /* CFG_STR value (owned), NULL when unset */
	long long num;    /* CFG_INT and CFG_BOOL value */
	const char *from; /* "default", "file", "flag" or "env" */
};

/*
 * Loads the table. The file comes from --config=PATH or HUTCH_CONFIG, else
 * default_file when it exists (NULL for none). Flags are read from argv[1]
 * up to the first argument that is not a flag ("--" ends flags too); its index
 * is stored in *first_arg. Returns 1 when --help was given (after printing the
 * help to stdout), 0 on success, negative on a bad value, naming the setting.
 */
int cfg_load(struct cfg_opt *opts, int nopts, const char *prog, const char *summary,
	     const char *default_file, int argc, char **argv, int *first_arg,
	     struct herr *err);

/* default_file: the file cfg_load reads when none is named (NULL: none). */
void cfg_print_help(FILE *out, const struct cfg_opt *opts, int nopts, const char *prog,
		    const char *summary, const char *default_file);

/*
 * Writes the loaded values as config-file lines, "name = value  # from",
 * a setting without a value, or with a line break in it, as a comment
 * (a '#' in a value cuts it when the file is read); with name, only that
 * setting's value (an empty line when unset). -ENOENT names no setting.
 */
int cfg_print_values(FILE *out, const struct cfg_opt *opts, int nopts, const char *name);

struct cfg_opt *cfg_find(struct cfg_opt *opts, int nopts, const char *name);
const char *cfg_str(struct cfg_opt *opts, int nopts, const char *name);
long long cfg_int(struct cfg_opt *opts, int nopts, const char *name);

void cfg_free(struct cfg_opt *opts, int nopts);

#endif
