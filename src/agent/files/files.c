/* Placeholder until /files lands: answers 501. */
#include "http.h"

enum MHD_Result files_handler(struct MHD_Connection *c, const char *method,
			      const char *upload_data, size_t *upload_data_size, void **state)
{
	return http_send_error(c, 501, "/files is not implemented yet");
}

void files_done(void *state)
{
}
