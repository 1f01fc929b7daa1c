/* Temporary folders and files for the agent_server unit tests. */
#ifndef HUTCH_TEST_AGENT_SERVER_FIXTURE_H
#define HUTCH_TEST_AGENT_SERVER_FIXTURE_H

/* mkdtemp under TMPDIR (or /tmp); aborts the test on failure. */
char *fixture_dir(void);

/* Writes dir/name (creating dir/name's parent); aborts on failure. */
void fixture_write(const char *dir, const char *name, const char *text);

/* rm -rf dir, then frees it. */
void fixture_remove(char *dir);

#endif
