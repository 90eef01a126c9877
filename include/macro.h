/* Small helpers shared by every module: cleanup attributes, ownership transfer, attributes. */
#pragma once

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f)     __attribute__((cleanup(f)))
#define _printf_(a, b)   __attribute__((format(printf, a, b)))
#define _noreturn_       __attribute__((noreturn))
#define _unused_         __attribute__((unused))
#define _must_check_     __attribute__((warn_unused_result))
#define _cleanup_free_   _cleanup_(freep)
#define _cleanup_close_  _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Hand ownership of a pointer or fd on: the variable is reset so its cleanup does nothing. */
#define TAKE_PTR(p)                                                                                \
	__extension__({                                                                            \
		__typeof__(p) _p_ = (p);                                                           \
		(p) = NULL;                                                                        \
		_p_;                                                                               \
	})
#define TAKE_FD(fd)                                                                                \
	__extension__({                                                                            \
		int _fd_ = (fd);                                                                   \
		(fd) = -1;                                                                         \
		_fd_;                                                                              \
	})

#define USEC_PER_SEC  UINT64_C(1000000)
#define USEC_PER_MSEC UINT64_C(1000)

static inline void freep(void *p)
{
	free(*(void **)p);
}

static inline void closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}

#include <stdio.h>
static inline void fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}

/* Define a NULL-safe pointer cleanup for a type with a free function. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                                                    \
	static inline void func##p(type *p)                                                        \
	{                                                                                          \
		if (*p)                                                                            \
			func(*p);                                                                  \
	}

/* Return -errno from a libc call that failed with -1. */
#define NEG_ERRNO() (errno > 0 ? -errno : -EIO)

/* Zero and free memory that held a secret (private key PEM, ownership token). */
void erase_and_free(void *p, size_t n);
static inline void erase_and_freep(char **p)
{
	if (*p)
		erase_and_free(*p, __builtin_strlen(*p));
}
#define _cleanup_erase_ _cleanup_(erase_and_freep)
