/* Helpers declared in macro.h that need a body. */
#include <string.h>

#include "macro.h"

void erase_and_free(void *p, size_t n)
{
	if (!p)
		return;
	/* explicit_bzero survives dead-store elimination, unlike memset before free. */
	explicit_bzero(p, n);
	free(p);
}
