/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Concurrency under the shim: WORKERS threads each open their own
 * /dev/iommu and allocate/destroy ROUNDS IOAS, duplicating and closing
 * descriptors of their context all along, while another thread creates,
 * checks and closes pipes. The kernel hands freed descriptor numbers to
 * whichever thread opens next, so served and plain files keep trading
 * numbers: a pipe must always act as a pipe (FIONREAD works) and a served
 * descriptor as an iommufd (its own IDs, nobody else's).
 *
 * Each context only ever holds what its thread put there, so every ID is
 * known exactly: the first IOAS is always 1, the one allocated through a
 * duplicate 2.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>

#define WORKERS 8
#define ROUNDS 1000

static int workers_done;
static long pipe_rounds;

static void *worker(void *arg)
{
	long me = (long)arg;
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR | (me & 1 ? O_CLOEXEC : 0)));

	for (int i = 0; i < ROUNDS; i++) {
		CHECK_ALLOC(fd, 1);
		int d;
		switch (i % 4) {
		case 0:
			d = (int)CHECK_OK(dup(fd));
			break;
		case 1:
			d = (int)CHECK_OK(fcntl(fd, F_DUPFD_CLOEXEC, 0));
			break;
		case 2:
			d = (int)CHECK_OK(fcntl(fd, F_DUPFD, 3));
			break;
		default:
			/* Move the context to a new number: the old one is
			 * free for anybody afterwards. */
			d = (int)CHECK_OK(dup(fd));
			CHECK_OK(close(fd));
			fd = d;
			d = (int)CHECK_OK(dup(fd));
			break;
		}
		CHECK_OK(ioas_lookup(d, 1));
		CHECK_ALLOC(d, 2);
		CHECK_OK(obj_destroy(fd, 2));
		CHECK_ERR(obj_destroy(d, 2), ENOENT);
		CHECK_OK(close(d));
		CHECK_OK(obj_destroy(fd, 1));
		CHECK_ERR(obj_destroy(fd, 1), ENOENT);
	}
	CHECK_OK(close(fd));
	__atomic_fetch_add(&workers_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void *piper(void *arg)
{
	(void)arg;
	do {
		int p[2], n = -1;

		CHECK_OK(pipe(p));
		CHECK_EQ(write(p[1], "xy", 2), 2);
		CHECK_OK(ioctl(p[0], FIONREAD, &n));
		CHECK_EQ(n, 2);
		int d = (int)CHECK_OK(dup(p[0]));
		n = -1;
		CHECK_OK(ioctl(d, FIONREAD, &n));
		CHECK_EQ(n, 2);
		/* An iommufd request on a pipe is the kernel's ENOTTY. */
		CHECK_ERR(ioas_lookup(d, 1), ENOTTY);
		CHECK_OK(close(d));
		CHECK_OK(close(p[0]));
		CHECK_OK(close(p[1]));
		__atomic_fetch_add(&pipe_rounds, 1, __ATOMIC_RELEASE);
	} while (__atomic_load_n(&workers_done, __ATOMIC_ACQUIRE) < WORKERS);
	return NULL;
}

int main(void)
{
	pthread_t w[WORKERS], p;

	CHECK_EQ(pthread_create(&p, NULL, piper, NULL), 0);
	/* Let the pipes start churning before the workers do. */
	while (__atomic_load_n(&pipe_rounds, __ATOMIC_ACQUIRE) == 0)
		sched_yield();
	for (long i = 0; i < WORKERS; i++)
		CHECK_EQ(pthread_create(&w[i], NULL, worker, (void *)i), 0);
	for (int i = 0; i < WORKERS; i++)
		CHECK_EQ(pthread_join(w[i], NULL), 0);
	CHECK_EQ(pthread_join(p, NULL), 0);
	printf("pipe rounds: %s\n", pipe_rounds > 1 ? "several" : "one");
	return pass();
}
