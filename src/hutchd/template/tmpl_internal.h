/* Shared between the registry (tmpl.c) and the builder (build.c). */
#ifndef HUTCH_TPL_TMPL_INTERNAL_H
#define HUTCH_TPL_TMPL_INTERNAL_H

#include <pthread.h>
#include <sys/types.h>
#include <time.h>

#include "layer.h"
#include "ref.h"
#include "tmpl.h"

#define BUILD_ID_LEN 36

/* A build known since this hutchd started: its log lives in memory. */
struct tbuild {
	struct tbuild *next;
	char id[BUILD_ID_LEN + 1];
	char tid[TREF_ID_LEN + 1];
	int64_t team;
	char status[16];      /* waiting, building, ready, error */
	json_t *entries;      /* BuildLogEntry array */
	json_t *reason;       /* {message, step?} once failed */
	json_t *spec;         /* the start body */
	json_t *tags;         /* tags that name the result */
	int64_t cpu, memory_mb;
};

struct tmpl_mgr {
	struct tmpl_config cfg;
	char *data_dir, *template_dir, *agent_dir;
	pthread_mutex_t lock;   /* registry, builds list, every tbuild field */
	pthread_cond_t idle;
	json_t *reg;            /* registry.json */
	struct tbuild *builds;
	unsigned running;       /* build threads alive */
	bool stopping;
	/* registry.json is shared with `hutchd templates` commands run next to
	 * the daemon: every access holds an flock on tmpl/registry.lock and
	 * reloads the file when another process replaced it (reg_stamp). */
	int reg_lock_fd;
	unsigned gc_running;    /* background GC threads alive */
	bool gc_again;          /* a GC was asked for while one ran */
	struct timespec reg_mtime;
	ino_t reg_ino;
};

/* Takes m->lock and the registry file lock; reloads a changed registry. */
void reg_enter(struct tmpl_mgr *m);
void reg_leave(struct tmpl_mgr *m);

/* Appends a log line (any thread; takes the lock). */
void tb_log(struct tmpl_mgr *m, struct tbuild *b, const char *level, const char *step,
	    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Ends a build: ready (result names its build file) or error with reason. */
void tb_finish(struct tmpl_mgr *m, struct tbuild *b, bool ok, const char *step,
	       const char *message);

/* The build thread's body (build.c). */
void tb_run(struct tmpl_mgr *m, struct tbuild *b);

/* Saves registry.json (registry lock held). */
int tmpl_save_registry(struct tmpl_mgr *m, struct herr *err);

/* Writes JSON to path through a temporary file and rename. */
int tmpl_save_json(const char *path, json_t *j, struct herr *err);

/* Loads tmpl/builds/<id>.json. */
int tmpl_load_build(struct tmpl_mgr *m, const char *build_id, json_t **out,
		    struct herr *err);

/*
 * The layers and config a build starts from: a built template's build
 * file, or `base` from the template dir (its rootfs registered as a layer).
 */
int tmpl_from(struct tmpl_mgr *m, int64_t team, const char *ref, json_t **out,
	      struct herr *err);

#endif
