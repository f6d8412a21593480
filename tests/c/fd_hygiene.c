/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What real programs do with descriptors, under the shim as on the kernel
 * (every check here passes on Linux 7.3.4, the oracle):
 *
 * 1. numbers: a sequence of opens, IOMMU_FAULT_QUEUE_ALLOC and
 *    IOMMU_VEVENTQ_ALLOC, dups and closes gets the lowest free numbers, one
 *    per call (a queue costs exactly its one descriptor), whatever the shim
 *    keeps for itself;
 * 2. closefrom, close_range and a /proc/self/fd walk closing every
 *    descriptor from 3 up, with the shim holding descriptors of its own
 *    (a queue's eventfd, a fork server's pipe and sockets): the next open
 *    is 3, and /dev/iommu, its queues and forked children keep working;
 * 3. dup2 over a served descriptor: it becomes what it was dup'ed from
 *    (/dev/null: ENOTTY; another iommufd: that context);
 * 4. many threads opening, using and closing /dev/iommu at once: no
 *    descriptor leaks;
 * 5. vfork: a child that dup2s and closes an inherited served descriptor
 *    changes only its own descriptors;
 * 6. signals arriving during served calls, with and without SA_RESTART:
 *    no served call fails with EINTR (none does on the kernel: they do not
 *    sleep interruptibly), results stay right.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <uiommufd/iommufd_test.h>

static __u32 idev_of(int fd, __u32 ioas, __u32 *stdev)
{
	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(ioctl(fd, IOMMU_TEST_CMD, &md));
	if (stdev)
		*stdev = md.mock_domain.out_stdev_id;
	return md.mock_domain.out_idev_id;
}

static int fault_queue(int fd)
{
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	CHECK_OK(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
	return (int)fa.out_fault_fd;
}

static int veventq(int fd, __u32 ioas)
{
	__u32 idev = idev_of(fd, ioas, NULL);
	struct iommu_hwpt_alloc h = { .size = sizeof(h), .flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
				      .dev_id = idev, .pt_id = ioas };
	CHECK_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &h));
	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST,
					 .dev_id = idev, .hwpt_id = h.out_hwpt_id };
	CHECK_OK(ioctl(fd, IOMMU_VIOMMU_ALLOC, &va));
	struct iommu_veventq_alloc qa = { .size = sizeof(qa), .viommu_id = va.out_viommu_id,
					  .type = IOMMU_VEVENTQ_TYPE_SELFTEST, .veventq_depth = 4 };
	CHECK_OK(ioctl(fd, IOMMU_VEVENTQ_ALLOC, &qa));
	return (int)qa.out_veventq_fd;
}

/* The lowest free descriptor now (opened and closed). */
static int lowest_free(void)
{
	int n = (int)CHECK_OK(open("/dev/null", O_RDONLY));
	CHECK_OK(close(n));
	return n;
}

static void numbers(void)
{
	int base = lowest_free();
	int a = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	CHECK_EQ(a, base);
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(a, &ioas));
	int q = fault_queue(a);
	CHECK_EQ(q, base + 1);
	int n = (int)CHECK_OK(open("/dev/null", O_RDONLY));
	CHECK_EQ(n, base + 2);
	int v = veventq(a, ioas);
	CHECK_EQ(v, base + 3);
	int d = (int)CHECK_OK(dup(a));
	CHECK_EQ(d, base + 4);
	int q2 = fault_queue(a);
	CHECK_EQ(q2, base + 5);
	CHECK_OK(close(q));
	CHECK_OK(close(n));
	/* The freed numbers come back lowest first. */
	CHECK_EQ(fault_queue(a), base + 1);
	CHECK_EQ(open("/dev/iommu", O_RDWR), base + 2);
	CHECK_EQ(lowest_free(), base + 6);
	for (int fd = base; fd < base + 6; fd++)
		CHECK_OK(close(fd));
	CHECK_EQ(lowest_free(), base);
}

static void check_child_exited_0(pid_t pid)
{
	int status = 0;

	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* /dev/iommu, a queue and a forked child using an inherited descriptor
 * all work (the shim's own descriptors survived). */
static void still_works(int expect_first)
{
	int a = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	CHECK_EQ(a, expect_first);
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(a, &ioas));
	int q = fault_queue(a);
	CHECK_EQ(q, a + 1);
	fflush(stdout);
	pid_t pid = (pid_t)CHECK_OK(fork());
	if (pid == 0) {
		alarm(10);
		__u32 id = 0;
		CHECK_OK(ioas_lookup(a, ioas));
		CHECK_OK(ioas_alloc(a, &id));
		_exit((int)id);
	}
	/* The child's IOAS is in the shared context. */
	int status = 0;
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK_TRUE(WIFEXITED(status) && WEXITSTATUS(status) > (int)ioas);
	CHECK_OK(ioas_lookup(a, (__u32)WEXITSTATUS(status)));
	CHECK_OK(close(q));
	CHECK_OK(close(a));
}

/* Everything the program has from 3 up, plus what the shim keeps. */
static void setup_busy(void)
{
	int a = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(a, &ioas));
	fault_queue(a);
	fflush(stdout);
	pid_t pid = (pid_t)CHECK_OK(fork());
	if (pid == 0) {
		CHECK_OK(ioas_lookup(a, ioas));
		_exit(0);
	}
	check_child_exited_0(pid);
}

static void closing_everything(void)
{
	setup_busy();
	closefrom(3);
	still_works(3);

	/* (A raw syscall(SYS_close_range) would reach the shim's own
	 * descriptors: see docs/CONFORMANCE.md.) */
	setup_busy();
	CHECK_OK(close_range(3, ~0u, 0));
	still_works(3);

	/* A /proc/self/fd walk, as daemons do before exec. */
	setup_busy();
	DIR *dir = opendir("/proc/self/fd");
	CHECK_TRUE(dir != NULL);
	int skip = dirfd(dir);
	int fds[1024], n = 0;
	struct dirent *e;
	while ((e = readdir(dir)) && n < 1024) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] != '.' && fd >= 3 && fd != skip)
			fds[n++] = fd;
	}
	for (int i = 0; i < n; i++)
		close(fds[i]);
	closedir(dir);
	still_works(3);
}

static void dup2_over_served(void)
{
	int a = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(a, &ioas));
	int n = (int)CHECK_OK(open("/dev/null", O_RDWR));
	CHECK_EQ(dup2(n, a), a);
	CHECK_ERR(ioas_alloc(a, &ioas), ENOTTY);
	int b = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ib = 0;
	CHECK_OK(ioas_alloc(b, &ib));
	CHECK_OK(ioas_alloc(b, &ib));
	CHECK_EQ(dup3(b, a, O_CLOEXEC), a);
	CHECK_EQ(fcntl(a, F_GETFD), FD_CLOEXEC);
	CHECK_OK(close(b));
	/* a is b's context now. */
	CHECK_OK(ioas_lookup(a, 2));
	CHECK_EQ(dup2(a, a), a);
	CHECK_OK(ioas_lookup(a, 1));
	CHECK_OK(close(a));
	CHECK_OK(close(n));
}

static int count_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	int n = 0;
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

static void *open_close(void *arg)
{
	(void)arg;
	for (int i = 0; i < 200; i++) {
		int a = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
		__u32 ioas = 0;
		CHECK_OK(ioas_alloc(a, &ioas));
		CHECK_EQ(ioas, 1);
		if (i % 10 == 0)
			CHECK_OK(close(fault_queue(a)));
		int d = (int)CHECK_OK(dup(a));
		CHECK_OK(close(a));
		CHECK_OK(ioas_lookup(d, 1));
		CHECK_OK(close(d));
	}
	return NULL;
}

static void many_threads(void)
{
	int before = count_fds();
	pthread_t t[8];
	for (int i = 0; i < 8; i++)
		CHECK_EQ(pthread_create(&t[i], NULL, open_close, NULL), 0);
	for (int i = 0; i < 8; i++)
		CHECK_EQ(pthread_join(t[i], NULL), 0);
	CHECK_EQ(count_fds(), before);
	CHECK_EQ(lowest_free(), 3);
}

static void vfork_child(void)
{
	int a = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(a, &ioas));
	pid_t pid = vfork();
	if (pid == 0) {
		dup2(a, 100);
		close(a);
		_exit(0);
	}
	CHECK_TRUE(pid > 0);
	check_child_exited_0(pid);
	CHECK_OK(ioas_lookup(a, ioas));
	CHECK_ERR(fcntl(100, F_GETFD), EBADF);
	CHECK_OK(close(a));
}

static volatile sig_atomic_t ticks;

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
	/* Interposed calls from the handler, on the program's own files. */
	int d = dup(0);
	if (d >= 0)
		close(d);
}

static void signals(int restart)
{
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = restart ? SA_RESTART : 0 };
	CHECK_OK(sigaction(SIGALRM, &sa, NULL));
	int a = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(a, &ioas));
	idev_of(a, ioas, NULL);
	int q = fault_queue(a);
	long ps = sysconf(_SC_PAGESIZE);
	char *buf = mmap(NULL, 16 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(buf != MAP_FAILED);
	struct itimerval it = { { 0, 50 }, { 0, 50 } };
	CHECK_OK(setitimer(ITIMER_REAL, &it, NULL));
	for (int i = 0; i < 1500; i++) {
		struct iommu_ioas_map map = { .size = sizeof(map),
					      .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
					      .ioas_id = ioas, .user_va = (uintptr_t)buf, .length = 16 * ps };
		CHECK_OK(ioctl(a, IOMMU_IOAS_MAP, &map));
		struct iommu_ioas_unmap un = { .size = sizeof(un), .ioas_id = ioas, .iova = map.iova,
					       .length = 16 * ps };
		CHECK_OK(ioctl(a, IOMMU_IOAS_UNMAP, &un));
		CHECK_EQ(un.length, 16 * ps);
		struct iommu_hwpt_pgfault f;
		CHECK_EQ(read(q, &f, sizeof(f)), 0);
	}
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	CHECK_OK(setitimer(ITIMER_REAL, &off, NULL));
	CHECK_TRUE(ticks > 0);
	CHECK_OK(close(q));
	CHECK_OK(close(a));
	munmap(buf, 16 * ps);
}

int main(void)
{
	numbers();
	closing_everything();
	dup2_over_served();
	many_threads();
	vfork_child();
	signals(1);
	signals(0);
	return pass();
}
