/*
 * rt-test suites in rt_test_facts.c: isolation facts seen from inside a
 * sandbox, the CPU limit, and how an init's end is reported.
 */
#ifndef HUTCH_RT_TEST_FACTS_H
#define HUTCH_RT_TEST_FACTS_H

void suite_facts(void);
void suite_cpu(void);
void suite_reasons(void);

#endif
