/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The fork protocol covers every lock of the shim, not only the engine's:
 *
 * 1. The frame registry, taken by the munmap/madvise hooks of threads
 *    that are not in an engine call: with pages pinned (a mock domain on
 *    the IOAS), one thread keeps advising MADV_DONTNEED (the hook reads
 *    /proc/self/maps under the registry's write lock) while the main
 *    thread forks; each child then unmaps memory (its hook takes the same
 *    lock). A child that inherited the lock held hangs (alarm kills it).
 *
 * 3. The shim's prepare and child handlers allocate nothing (a fork from
 *    a signal handler that interrupted malloc must not deadlock): this
 *    program interposes malloc and counts the calls between its own
 *    prepare handler (which runs before the shim's) and its child handler
 *    (which runs after the shim's); in the child the count must be 0, with
 *    served descriptors of its own and inherited ones (a grandchild).
 *    Only the forking thread's calls count: the shim's other threads (its
 *    fork server, its /proc reader) may allocate meanwhile, as any
 *    program's threads may, and the child has none of them.
 *
 * 2. A stopped child never blocks its parent's fork: a child keeps
 *    allocating fault queues through its inherited iommufd (the parent's
 *    fork server runs the call and asks the child to install the
 *    descriptor), the parent stops it at random moments (SIGSTOP), often
 *    while the server waits for its answer, and forks meanwhile. A fork
 *    that waited for the stopped child would hang (alarm kills the
 *    parent).
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <uiommufd/iommufd_test.h>

static void check_child_exited_0(pid_t pid)
{
	int status = 0;

	CHECK_EQ(waitpid(pid, &status, 0), pid);
	if (WIFSIGNALED(status))
		fprintf(stderr, "child %d killed by signal %d\n", pid, WTERMSIG(status));
	CHECK_TRUE(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
}

static int stop_advising;
static char *advised;
static long ps;

static void *advise(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stop_advising, __ATOMIC_ACQUIRE))
		CHECK_OK(madvise(advised, 4 * ps, MADV_DONTNEED));
	return NULL;
}

/* 3: malloc counted in the fork window, on the forking thread. */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
static __thread int counting;
static __thread int allocs;

static void count(void)
{
	if (counting)
		allocs++;
}

void *malloc(size_t n)
{
	count();
	return __libc_malloc(n);
}

void free(void *p)
{
	count();
	__libc_free(p);
}

void *calloc(size_t a, size_t b)
{
	count();
	return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
	count();
	return __libc_realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
	count();
	void *p = __libc_memalign(align, n);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
	count();
	return __libc_memalign(align, n);
}

void *memalign(size_t align, size_t n)
{
	count();
	return __libc_memalign(align, n);
}

static void start_counting(void)
{
	allocs = 0;
	counting = 1;
}

static int child_allocs = -1;

static void stop_counting_child(void)
{
	counting = 0;
	child_allocs = allocs;
}

static void stop_counting_parent(void)
{
	counting = 0;
}

static void no_allocation_at_fork(void)
{
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(fd, &ioas));
	int d = (int)CHECK_OK(dup(fd));
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	CHECK_OK(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
	/* Registered now: after the shim's, so ours run first at prepare and
	 * last in the parent and the child. */
	CHECK_EQ(pthread_atfork(start_counting, stop_counting_parent, stop_counting_child), 0);
	for (int round = 0; round < 3; round++) {
		fflush(stdout);
		pid_t pid = (pid_t)CHECK_OK(fork());
		if (pid == 0) {
			alarm(10);
			CHECK_EQ(child_allocs, 0);
			/* The inherited descriptors work (made remote lazily). */
			CHECK_OK(ioas_lookup(d, ioas));
			/* A grandchild, whose descriptors are remote already. */
			pid_t g = (pid_t)CHECK_OK(fork());
			if (g == 0) {
				CHECK_EQ(child_allocs, 0);
				CHECK_OK(ioas_lookup(fd, ioas));
				_exit(0);
			}
			check_child_exited_0(g);
			_exit(0);
		}
		check_child_exited_0(pid);
	}
	CHECK_OK(close((int)fa.out_fault_fd));
	CHECK_OK(close(d));
	CHECK_OK(close(fd));
}

#define FORKS 300

static void registry_lock(void)
{
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(fd, &ioas));
	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(ioctl(fd, IOMMU_TEST_CMD, &md));
	/* Pinned pages: the hooks take the registry from now on. */
	char *buf = mmap(NULL, 16 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(buf != MAP_FAILED);
	memset(buf, 1, 16 * ps);
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas, .user_va = (uintptr_t)buf, .length = 16 * ps,
	};
	CHECK_OK(ioctl(fd, IOMMU_IOAS_MAP, &map));
	advised = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(advised != MAP_FAILED);

	pthread_t t;
	CHECK_EQ(pthread_create(&t, NULL, advise, NULL), 0);
	for (int i = 0; i < FORKS; i++) {
		char *spare = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK_TRUE(spare != MAP_FAILED);
		fflush(stdout);
		pid_t pid = (pid_t)CHECK_OK(fork());
		if (pid == 0) {
			/* A hang here is the registry inherited held (the alarm
			 * is generous: a machine under heavy load is not a hang). */
			alarm(30);
			CHECK_OK(munmap(spare, ps));
			CHECK_OK(madvise(advised, ps, MADV_DONTNEED));
			_exit(0);
		}
		CHECK_OK(munmap(spare, ps));
		check_child_exited_0(pid);
	}
	__atomic_store_n(&stop_advising, 1, __ATOMIC_RELEASE);
	CHECK_EQ(pthread_join(t, NULL), 0);
	CHECK_OK(close(fd));
}

#define STOPS 150

static void stopped_child(void)
{
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	fflush(stdout);
	pid_t busy = (pid_t)CHECK_OK(fork());
	if (busy == 0) {
		/* Each allocation makes the parent's server ask us to install
		 * the queue's descriptor. */
		for (;;) {
			struct iommu_fault_alloc fa = { .size = sizeof(fa) };
			if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa))
				_exit(3);
			close((int)fa.out_fault_fd);
			struct iommu_destroy d = { .size = sizeof(d), .id = fa.out_fault_id };
			ioctl(fd, IOMMU_DESTROY, &d);
		}
	}
	/* A fork that waits for the stopped child hangs: SIGALRM ends us
	 * (150 rounds take about a second on an idle machine). */
	alarm(120);
	for (int i = 0; i < STOPS; i++) {
		usleep((unsigned)(rand() % 500));
		CHECK_OK(kill(busy, SIGSTOP));
		int st = 0;
		CHECK_EQ(waitpid(busy, &st, WUNTRACED), busy);
		CHECK_TRUE(WIFSTOPPED(st));
		fflush(stdout);
		pid_t pid = (pid_t)CHECK_OK(fork());
		if (pid == 0)
			_exit(0);
		check_child_exited_0(pid);
		CHECK_OK(kill(busy, SIGCONT));
	}
	alarm(0);
	CHECK_OK(kill(busy, SIGKILL));
	int st = 0;
	CHECK_EQ(waitpid(busy, &st, 0), busy);
	CHECK_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	CHECK_OK(close(fd));
}

int main(void)
{
	ps = sysconf(_SC_PAGESIZE);
	registry_lock();
	stopped_child();
	no_allocation_at_fork();
	return pass();
}
