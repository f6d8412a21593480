/* SPDX-License-Identifier: Apache-2.0 */
/*
 * No descriptor of the shim's, not even for an instant, at a number the
 * program could get.
 *
 * A checker thread opens /dev/null over and over, checking that it gets
 * the lowest free number every time, and lists /proc/self/fd, checking
 * that below 768 (the shim keeps its own descriptors at 768 and above)
 * only the program's descriptors are there, while
 * - forked children map, copy and unmap memory they share with the parent
 *   through the iommufd they inherited, with a mock domain attached (the
 *   parent's engine serves their calls, and looks at their /proc/PID/maps
 *   and stat to pin their pages), and exit (their sessions end);
 * - a thread of the parent discards pages with madvise(MADV_DONTNEED)
 *   while pages are pinned (the shim looks at /proc/self/maps for that).
 * With the kernel none of this opens a descriptor in the program's table.
 *
 * The forks themselves happen while the checker waits: the shim's fork
 * handler makes the new session's socket pair at fork time, at the lowest
 * free numbers before it moves them up (a known transient, see
 * docs/TESTING.md). The other known transients (descriptors the shim
 * must create or receive in the shared table: sockets, pipes, eventfds,
 * memfds) can still show during the checks, rarely; they are counted and
 * printed. What fails the test is a /proc file the shim opened in the
 * program's table (its reads of /proc/PID/maps, stat and status go
 * through a thread with a table of its own): that is what this checks.
 *
 *   fd_transient [ROUNDS [CHILDREN [MAPS]]]
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <uiommufd/iommufd_test.h>

#define MAX_CHILDREN 16

static int iommufd;
static __u32 ioas_a, ioas_b;
static long ps;
static char *shared_buf;
static int lowest, baseline;
static volatile int done, checking;
static pthread_mutex_t phase = PTHREAD_MUTEX_INITIALIZER;
static unsigned long checks, misses, known;

/* Descriptors below 768, the directory's own included. */
static int program_fds(int *dir_fd)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	*dir_fd = dirfd(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.' && atoi(e->d_name) < 768;
	closedir(d);
	return n;
}

/* A descriptor at number fd that the program did not open: a /proc file
 * (the shim's own reads, which must never land here) fails the test; any
 * other (a known transient) or one already gone is counted. */
static void classify(const char *what, int fd)
{
	char path[64], target[256] = "";

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	target[n > 0 ? n : 0] = 0;
	int proc = strncmp(target, "/proc/", 6) == 0;
	unsigned long seen = proc ? misses++ : known++;
	if (seen < 10)
		fprintf(stderr, "transient%s: %s: fd %d -> %s\n", proc ? "" : " (known)", what, fd,
			n > 0 ? target : "(gone)");
}

static void miss(const char *what, int got, int want)
{
	(void)got;
	/* What holds the number the program should have got. */
	classify(what, want);
}

/* Every descriptor in [lowest, 768) but the listing's own. */
static void miss_count(int dir_fd)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int found = 0;

	if (!d)
		return;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] != '.' && fd >= lowest && fd < 768 && fd != dirfd(d) && fd != dir_fd) {
			classify("/proc/self/fd count", fd);
			found++;
		}
	}
	closedir(d);
	if (!found && known++ < 10)
		fprintf(stderr, "transient (known): /proc/self/fd count: (gone)\n");
}

static void *checker(void *arg)
{
	(void)arg;
	while (!done) {
		pthread_mutex_lock(&phase);
		if (checking) {
			int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
			if (fd != lowest)
				miss("open", fd, lowest);
			if (fd >= 0)
				close(fd);
			int dirfd = -1, n = program_fds(&dirfd);
			if (dirfd != lowest)
				miss("opendir", dirfd, lowest);
			else if (n != baseline + 1)
				miss_count(-1);
			checks++;
		}
		pthread_mutex_unlock(&phase);
		sched_yield();
	}
	return NULL;
}

/* Discards a private page of its own over and over while pages are
 * pinned. */
static void *discarder(void *arg)
{
	char *page = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	(void)arg;
	if (page == MAP_FAILED)
		return NULL;
	while (!done) {
		page[0] = 1;
		madvise(page, ps, MADV_DONTNEED);
		usleep(200);
	}
	munmap(page, ps);
	return NULL;
}

static void child(int k, int go, int maps)
{
	char b;
	__u64 iova = MOCK_APERTURE_START + (__u64)(k + 1) * 16 * ps;
	char *va = shared_buf + (size_t)k * ps;

	alarm(30);
	if (read(go, &b, 1) != 1)
		_exit(3);
	for (int i = 0; i < maps; i++) {
		va[0] = (char)i;
		if (ioas_map_fixed(iommufd, ioas_a, va, ps, iova) || ioas_copy_fixed(iommufd, ioas_b, ioas_a, iova, ps) ||
		    ioas_unmap(iommufd, ioas_b, iova, ps) || ioas_unmap(iommufd, ioas_a, iova, ps)) {
			fprintf(stderr, "child %d: %s\n", k, strerror(errno));
			_exit(2);
		}
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 12;
	int nchildren = argc > 2 ? atoi(argv[2]) : 4;
	int maps = argc > 3 ? atoi(argv[3]) : 40;
	int go[2];
	pthread_t th[2];

	if (nchildren < 1 || nchildren > MAX_CHILDREN)
		nchildren = 4;
	ps = sysconf(_SC_PAGESIZE);
	iommufd = (int)CHECK_OK(open("/dev/iommu", O_RDWR | O_CLOEXEC));
	CHECK_OK(ioas_alloc(iommufd, &ioas_a));
	CHECK_OK(ioas_alloc(iommufd, &ioas_b));
	/* A domain on each IOAS: every mapping is pinned. */
	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas_a };
	CHECK_OK(ioctl(iommufd, IOMMU_TEST_CMD, &md));
	md.id = ioas_b;
	CHECK_OK(ioctl(iommufd, IOMMU_TEST_CMD, &md));
	shared_buf = mmap(NULL, MAX_CHILDREN * ps, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(shared_buf != MAP_FAILED);
	/* A pinned page of the parent's own, for the discarder's madvise. */
	char *own = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(own != MAP_FAILED);
	own[0] = 1;
	CHECK_OK(ioas_map_fixed(iommufd, ioas_a, own, ps, MOCK_APERTURE_START));
	CHECK_OK(pipe2(go, O_CLOEXEC));

	/* A first child before the baseline: the shim's server and its
	 * sockets exist from here on. */
	pid_t first = (pid_t)CHECK_OK(fork());
	if (first == 0)
		_exit(0);
	CHECK_EQ(waitpid(first, NULL, 0), first);
	int dummy;
	baseline = program_fds(&dummy) - 1;
	{
		int fd = (int)CHECK_OK(open("/dev/null", O_RDONLY | O_CLOEXEC));
		lowest = fd;
		close(fd);
	}

	pthread_mutex_lock(&phase);
	CHECK_OK(-pthread_create(&th[0], NULL, checker, NULL));
	CHECK_OK(-pthread_create(&th[1], NULL, discarder, NULL));
	for (int r = 0; r < rounds; r++) {
		pid_t pids[MAX_CHILDREN];

		/* Forks while the checker waits (see the top). */
		checking = 0;
		for (int k = 0; k < nchildren; k++) {
			fflush(stdout);
			fflush(stderr);
			pids[k] = (pid_t)CHECK_OK(fork());
			if (pids[k] == 0) {
				close(go[1]);
				child(k, go[0], maps);
			}
		}
		checking = 1;
		pthread_mutex_unlock(&phase);
		for (int k = 0; k < nchildren; k++)
			CHECK_EQ(write(go[1], "g", 1), 1);
		for (int k = 0; k < nchildren; k++) {
			int st = -1;
			CHECK_EQ(waitpid(pids[k], &st, 0), pids[k]);
			CHECK_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		}
		/* The children's sessions end in the parent's server now. */
		usleep(20 * 1000);
		pthread_mutex_lock(&phase);
	}
	done = 1;
	pthread_mutex_unlock(&phase);
	pthread_join(th[0], NULL);
	pthread_join(th[1], NULL);
	printf("fd_transient: %lu checks, %lu shim /proc descriptors, %lu known transients\n", checks, misses,
	       known);
	CHECK_TRUE(checks > 0);
	CHECK_EQ(misses, 0);
	CHECK_OK(ioas_unmap(iommufd, ioas_a, MOCK_APERTURE_START, ps));
	pass();
	return 0;
}
