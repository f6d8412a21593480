/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tiny assertion helpers shared by the C programs of crates/cli/tests/shim.rs.
 *
 * Every CHECK_* macro counts one check; the first failing one prints
 * "FAIL file:line: ..." with the return value and errno name on stderr and
 * exits with status 1. A program that reaches its end prints
 * "PASS <n> checks" on stdout (see pass()). The Rust side asserts on both.
 */
#ifndef SHIM_TEST_CHECK_H
#define SHIM_TEST_CHECK_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int check_count;

/* Symbolic name of an errno value, as the tests print and compare them. */
static inline const char *errno_name(int e)
{
	switch (e) {
	case 0: return "0";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EIO: return "EIO";
	case ENXIO: return "ENXIO";
	case E2BIG: return "E2BIG";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENODEV: return "ENODEV";
	case ENOTDIR: return "ENOTDIR";
	case EISDIR: return "EISDIR";
	case EINVAL: return "EINVAL";
	case EMFILE: return "EMFILE";
	case ENOTTY: return "ENOTTY";
	case ESPIPE: return "ESPIPE";
	case ENOSYS: return "ENOSYS";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	default: return "E?";
	}
}

static inline void check_fail(const char *file, int line, const char *what, long rc, int err)
{
	fprintf(stderr, "FAIL %s:%d: %s: rc=%ld errno=%s (%d)\n", file, line, what, rc, errno_name(err), err);
	fflush(stdout);
	_exit(1);
}

#define CHECK_COUNT() __atomic_fetch_add(&check_count, 1, __ATOMIC_RELAXED)

/* expr must succeed (return >= 0); evaluates to its value. */
#define CHECK_OK(expr)                                                          \
	({                                                                      \
		errno = 0;                                                      \
		long check_rc_ = (long)(expr);                                  \
		int check_err_ = errno;                                         \
		CHECK_COUNT();                                                  \
		if (check_rc_ < 0)                                              \
			check_fail(__FILE__, __LINE__, #expr " should succeed", \
				   check_rc_, check_err_);                      \
		check_rc_;                                                      \
	})

/* expr must fail with -1 and errno == e. */
#define CHECK_ERR(expr, e)                                                      \
	do {                                                                    \
		errno = 0;                                                      \
		long check_rc_ = (long)(expr);                                  \
		int check_err_ = errno;                                         \
		CHECK_COUNT();                                                  \
		if (check_rc_ != -1 || check_err_ != (e))                       \
			check_fail(__FILE__, __LINE__,                          \
				   #expr " should fail with " #e, check_rc_,    \
				   check_err_);                                 \
	} while (0)

/* a == b, compared as long. */
#define CHECK_EQ(a, b)                                                          \
	do {                                                                    \
		long check_a_ = (long)(a), check_b_ = (long)(b);                \
		CHECK_COUNT();                                                  \
		if (check_a_ != check_b_) {                                     \
			fprintf(stderr, "FAIL %s:%d: %s == %s: %ld != %ld\n",   \
				__FILE__, __LINE__, #a, #b, check_a_, check_b_); \
			_exit(1);                                               \
		}                                                               \
	} while (0)

#define CHECK_TRUE(cond) CHECK_EQ(!!(cond), 1)

static inline int pass(void)
{
	printf("PASS %d checks\n", __atomic_load_n(&check_count, __ATOMIC_RELAXED));
	return fflush(stdout) == 0 ? 0 : 1;
}

#endif
