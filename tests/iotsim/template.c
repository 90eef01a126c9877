/* Placeholder until the template engine lands. */
#include <errno.h>
#include "template.h"
int tmpl_validate(json_object *tmpl, char *errbuf, size_t errsize)
{
	return -ENOSYS;
}
int tmpl_evaluate(json_object *tmpl, json_object *params, const char *certificate_id,
		  json_object **ret, char *errbuf, size_t errsize)
{
	return -ENOSYS;
}
