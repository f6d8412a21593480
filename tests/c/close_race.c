/* SPDX-License-Identifier: Apache-2.0 */
/*
 * close(2) racing ioctl(2) on the same iommufd file. The shim's ioctl uses
 * the file by reference (no lock, no reference count) and a close that
 * removes a descriptor of it waits for such calls before it may drop the
 * file (the engine's teardown when the last descriptor goes). Each round:
 * a thread looks up an IOAS through a duplicate as fast as it can while
 * the main thread closes the duplicate (the file lives on in the
 * original), then the same through the original itself, the last
 * descriptor (the file's teardown races the calls). Every call succeeds
 * or fails with EBADF once its number is closed; the original works after
 * the first close; a new context starts afresh after the second.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>

#define ROUNDS 500

struct race {
	int fd;
	long ok;
	int started;
};

static void *caller(void *arg)
{
	struct race *r = arg;

	for (;;) {
		errno = 0;
		int rc = ioas_lookup(r->fd, 1);
		if (rc != 0) {
			/* Only the close can end it. */
			CHECK_EQ(rc, -1);
			CHECK_EQ(errno, EBADF);
			return NULL;
		}
		r->ok++;
		__atomic_store_n(&r->started, 1, __ATOMIC_RELEASE);
	}
}

/* Close r->fd while the caller thread is busy on it. */
static long race_close(struct race *r)
{
	pthread_t t;

	r->ok = 0;
	r->started = 0;
	CHECK_EQ(pthread_create(&t, NULL, caller, r), 0);
	while (!__atomic_load_n(&r->started, __ATOMIC_ACQUIRE))
		sched_yield();
	CHECK_OK(close(r->fd));
	CHECK_EQ(pthread_join(t, NULL), 0);
	return r->ok;
}

int main(void)
{
	long calls = 0;

	for (int i = 0; i < ROUNDS; i++) {
		int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
		CHECK_ALLOC(fd, 1);
		struct race r = { .fd = (int)CHECK_OK(dup(fd)) };
		calls += race_close(&r);
		/* The file lives on in the original. */
		CHECK_OK(ioas_lookup(fd, 1));
		CHECK_ALLOC(fd, 2);
		r.fd = fd;
		calls += race_close(&r);
		/* A new context: its first IOAS is 1 again. */
		fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
		CHECK_ALLOC(fd, 1);
		CHECK_OK(close(fd));
	}
	printf("calls before the closes: %s\n", calls >= 2 * ROUNDS ? "at least one each" : "too few");
	return pass();
}
