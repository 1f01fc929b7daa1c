/* Placeholder until the filesystem service lands: every method is unimplemented. */
#include "filesystem.h"

const struct rpc_method filesystem_methods[] = { { 0 } };

int filesystem_service_init(void)
{
	return 0;
}
