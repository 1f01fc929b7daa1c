/*
 * The envd version the agent reports (X-Envd-Version on /init, and what
 * hutchd hands the SDKs as envdVersion). The SDKs gate features on it
 * (protocol.md section 3), so it names the envd feature set the agent
 * implements, not the agent's own release.
 */
#ifndef HUTCH_AGENT_VERSION_H
#define HUTCH_AGENT_VERSION_H

#define AGENT_ENVD_VERSION "0.6.13"

#endif
