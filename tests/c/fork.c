/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fork under the shim.
 *
 * The child drives an inherited served descriptor, and, as in the kernel,
 * parent and child share one file: what the child does through it is done
 * to the parent's context (the shim forwards the child's calls to the
 * parent's engine, see crates/preload/src/fork_server.rs). A descriptor
 * the child opens itself is a context of its own. tests/c/fork_shared.c
 * checks the memory side (the child's pages in the parent's IOAS).
 *
 * The second part forks FORKS times while BUSY_THREADS other threads keep
 * issuing ioctls on the same context: each child must find the shim and
 * the engine usable, i.e. no lock (of the descriptor table, of the
 * context's object table) inherited in the state "held by a thread that
 * does not exist in it", and its forwarded calls must be served while the
 * parent's threads keep working. A child that hangs is killed by alarm()
 * and fails the check on its exit status. Without the shim's fork gate
 * (fdtable::EngineGuard) this part failed in 10 runs out of 10.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

static void check_child_exited_0(pid_t pid)
{
	int status = 0;

	CHECK_EQ(waitpid(pid, &status, 0), pid);
	if (WIFSIGNALED(status))
		fprintf(stderr, "child %d killed by signal %d\n", pid, WTERMSIG(status));
	CHECK_TRUE(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
}

static void child_shares_the_context(void)
{
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));

	CHECK_ALLOC(fd, 1);
	fflush(stdout);
	pid_t pid = (pid_t)CHECK_OK(fork());
	if (pid == 0) {
		alarm(5);
		CHECK_OK(ioas_lookup(fd, 1));
		CHECK_ALLOC(fd, 2);
		CHECK_OK(obj_destroy(fd, 1));
		CHECK_ERR(obj_destroy(fd, 1), ENOENT);
		int d = (int)CHECK_OK(dup(fd));
		CHECK_OK(ioas_lookup(d, 2));
		CHECK_OK(close(fd));
		CHECK_ERR(ioas_lookup(fd, 1), EBADF);
		/* A fresh open in the child is a fresh context of its own. */
		int n = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
		CHECK_ALLOC(n, 1);
		CHECK_ERR(ioas_lookup(n, 2), ENOENT);
		CHECK_OK(close(n));
		/* The shared one still answers through the duplicate. */
		CHECK_ERR(ioas_lookup(d, 1), ENOENT);
		CHECK_OK(close(d));
		_exit(0);
	}
	check_child_exited_0(pid);
	/* The child destroyed IOAS 1 and allocated 2 in the shared context. */
	CHECK_ERR(ioas_lookup(fd, 1), ENOENT);
	CHECK_OK(ioas_lookup(fd, 2));
	/* IDs are the lowest free ones, as the kernel's xarray gives them. */
	CHECK_ALLOC(fd, 1);
	CHECK_OK(obj_destroy(fd, 1));
	CHECK_OK(obj_destroy(fd, 2));
	CHECK_OK(close(fd));
}

static int busy_fd;
static int stop_busy;

static void *busy(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stop_busy, __ATOMIC_ACQUIRE)) {
		__u32 id = 0;

		CHECK_OK(ioas_alloc(busy_fd, &id));
		CHECK_TRUE(id >= 2);
		CHECK_OK(obj_destroy(busy_fd, id));
		int d = (int)CHECK_OK(dup(busy_fd));
		CHECK_OK(close(d));
	}
	return NULL;
}

#define FORKS 1000
#define BUSY_THREADS 2

static void fork_while_other_threads_work(void)
{
	pthread_t t[BUSY_THREADS];

	busy_fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	CHECK_ALLOC(busy_fd, 1);
	for (int i = 0; i < BUSY_THREADS; i++)
		CHECK_EQ(pthread_create(&t[i], NULL, busy, NULL), 0);
	for (int i = 0; i < FORKS; i++) {
		fflush(stdout);
		pid_t pid = (pid_t)CHECK_OK(fork());
		if (pid == 0) {
			/* A hang here is a lock inherited in the held state. */
			alarm(5);
			CHECK_OK(ioas_lookup(busy_fd, 1));
			__u32 id = 0;
			CHECK_OK(ioas_alloc(busy_fd, &id));
			CHECK_OK(obj_destroy(busy_fd, id));
			int d = (int)CHECK_OK(dup(busy_fd));
			CHECK_OK(close(d));
			CHECK_OK(close(busy_fd));
			_exit(0);
		}
		check_child_exited_0(pid);
	}
	__atomic_store_n(&stop_busy, 1, __ATOMIC_RELEASE);
	for (int i = 0; i < BUSY_THREADS; i++)
		CHECK_EQ(pthread_join(t[i], NULL), 0);
	CHECK_OK(ioas_lookup(busy_fd, 1));
	CHECK_OK(close(busy_fd));
}

int main(void)
{
	child_shares_the_context();
	fork_while_other_threads_work();
	return pass();
}
