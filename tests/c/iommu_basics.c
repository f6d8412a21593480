/* SPDX-License-Identifier: Apache-2.0 */
/*
 * /dev/iommu under the shim: open, fstat, IOAS alloc/destroy, errnos of bad
 * requests and pointers, and how descriptors share or separate contexts
 * (dup, dup2, dup3, F_DUPFD, F_DUPFD_CLOEXEC, close, close_range,
 * closefrom), plus the ways a program can name the node. Every expectation
 * is what the kernel's iommufd answers.
 */
#define _GNU_SOURCE
#define _LARGEFILE64_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>

/* glibc's fortified entry points; declared here so they can be called
 * directly whatever _FORTIFY_SOURCE says. */
extern int __open_2(const char *path, int flags);
extern int __open64_2(const char *path, int flags);
extern int __openat_2(int dirfd, const char *path, int flags);
extern int __openat64_2(int dirfd, const char *path, int flags);

static int open_iommu(void)
{
	return (int)CHECK_OK(open("/dev/iommu", O_RDWR));
}

/* A pipe whose read end holds one byte: FIONREAD on it says 1, which no
 * served descriptor would answer (they say ENOTTY). */
static void check_is_pipe_with_one_byte(int fd)
{
	int n = -1;

	CHECK_OK(ioctl(fd, FIONREAD, &n));
	CHECK_EQ(n, 1);
}

static void basics(void)
{
	int fd = open_iommu();
	struct stat st;

	CHECK_OK(fstat(fd, &st));
	CHECK_TRUE(S_ISCHR(st.st_mode));

	CHECK_ALLOC(fd, 1);
	CHECK_ALLOC(fd, 2);
	CHECK_OK(obj_destroy(fd, 1));
	CHECK_ERR(obj_destroy(fd, 1), ENOENT);
	CHECK_ERR(obj_destroy(fd, 0), ENOENT);
	CHECK_OK(ioas_lookup(fd, 2));
	CHECK_ERR(ioas_lookup(fd, 1), ENOENT);
	/* Lowest free ID first, as xa_alloc does. */
	CHECK_ALLOC(fd, 1);
	CHECK_OK(obj_destroy(fd, 1));

	/* Unknown requests: below the iommufd range (the VFIO compat path),
	 * inside it but unassigned, the right number with another type, and
	 * a terminal request. */
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	struct termios tio;
	CHECK_ERR(ioctl(fd, _IO(IOMMUFD_TYPE, 0x7f), &a), ENOTTY);
	CHECK_ERR(ioctl(fd, _IO(IOMMUFD_TYPE, 0x9f), &a), ENOTTY);
	CHECK_ERR(ioctl(fd, _IO('x', IOMMUFD_CMD_IOAS_ALLOC), &a), ENOTTY);
	CHECK_ERR(ioctl(fd, TCGETS, &tio), ENOTTY);

	/* Bad pointers: EFAULT, never a crash. */
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, NULL), EFAULT);
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, (void *)8), EFAULT);
	CHECK_ERR(ioctl(fd, IOMMU_DESTROY, (void *)-4096L), EFAULT);
	long page = sysconf(_SC_PAGESIZE);
	char *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(p != MAP_FAILED);
	struct iommu_ioas_alloc *ro = (void *)p;
	ro->size = sizeof(*ro);
	CHECK_OK(mprotect(p, page, PROT_READ));
	/* Readable but not writable: the reply cannot be written, so the
	 * command fails and leaves no IOAS behind (ID 1 stays free). */
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, ro), EFAULT);
	CHECK_ERR(ioas_lookup(fd, 1), ENOENT);
	CHECK_OK(munmap(p, page));
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, p), EFAULT);
	CHECK_ALLOC(fd, 1);

	/* Size rules of the common path. */
	a.size = 4;
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, &a), EINVAL);
	a.size = sizeof(a);
	a.flags = 1;
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, &a), EOPNOTSUPP);

	/* The generic file requests apply to the descriptor itself. */
	CHECK_OK(ioctl(fd, FIOCLEX));
	CHECK_EQ(fcntl(fd, F_GETFD), FD_CLOEXEC);
	CHECK_OK(ioctl(fd, FIONCLEX));
	CHECK_EQ(fcntl(fd, F_GETFD), 0);
	CHECK_OK(fcntl(fd, F_SETFD, FD_CLOEXEC));
	CHECK_EQ(fcntl(fd, F_GETFD), FD_CLOEXEC);
	CHECK_EQ(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDWR);

	/* An iommufd has no read or write: EINVAL. */
	char buf[8] = { 0 };
	CHECK_ERR(read(fd, buf, sizeof(buf)), EINVAL);
	CHECK_ERR(write(fd, buf, sizeof(buf)), EINVAL);

	CHECK_OK(close(fd));
	CHECK_ERR(close(fd), EBADF);
	CHECK_ERR(ioas_alloc(fd, &a.out_ioas_id), EBADF);
}

/* Every duplicate refers to the same context; the context lives until its
 * last descriptor closes. */
static void dups_share_the_context(void)
{
	int fd = open_iommu();

	CHECK_ALLOC(fd, 1);
	CHECK_ALLOC(fd, 2);

	int d = (int)CHECK_OK(dup(fd));
	CHECK_TRUE(d != fd);
	CHECK_ALLOC(d, 3);
	CHECK_OK(obj_destroy(fd, 3));
	CHECK_ERR(obj_destroy(d, 3), ENOENT);

	int high = (int)CHECK_OK(fcntl(fd, F_DUPFD, 100));
	CHECK_TRUE(high >= 100);
	CHECK_EQ(fcntl(high, F_GETFD), 0);
	CHECK_ALLOC(high, 3);
	CHECK_OK(obj_destroy(fd, 3));

	int cx = (int)CHECK_OK(fcntl(fd, F_DUPFD_CLOEXEC, 0));
	CHECK_EQ(fcntl(cx, F_GETFD), FD_CLOEXEC);
	CHECK_ALLOC(cx, 3);
	CHECK_OK(obj_destroy(d, 3));

	CHECK_EQ(dup3(fd, 200, O_CLOEXEC), 200);
	CHECK_EQ(fcntl(200, F_GETFD), FD_CLOEXEC);
	CHECK_ALLOC(200, 3);
	CHECK_OK(obj_destroy(high, 3));
	CHECK_ERR(dup3(fd, fd, 0), EINVAL);
	CHECK_EQ(dup2(fd, fd), fd);
	CHECK_OK(ioas_lookup(fd, 1));

	/* Closing the original leaves the duplicates working on the same
	 * objects. */
	CHECK_OK(close(fd));
	CHECK_ERR(ioas_lookup(fd, 1), EBADF);
	CHECK_OK(ioas_lookup(d, 1));
	CHECK_OK(ioas_lookup(200, 2));
	CHECK_ALLOC(d, 3);
	CHECK_OK(obj_destroy(cx, 3));

	CHECK_OK(close(high));
	CHECK_OK(close(cx));
	CHECK_OK(close(200));
	CHECK_OK(ioas_lookup(d, 2));
	CHECK_OK(close(d));
	/* Both (all) closed: the numbers are plain bad descriptors. */
	CHECK_ERR(ioas_lookup(d, 1), EBADF);
	CHECK_ERR(ioas_lookup(fd, 1), EBADF);
	CHECK_ERR(ioas_lookup(200, 1), EBADF);
}

/* Each open is its own context; dup2 onto a served descriptor drops what
 * it referred to and makes it a duplicate of the source. */
static void opens_are_independent_and_dup2_replaces(void)
{
	int a = open_iommu(), b = open_iommu();

	CHECK_ALLOC(a, 1);
	CHECK_ALLOC(b, 1);
	CHECK_ALLOC(a, 2);
	CHECK_ALLOC(b, 2);
	CHECK_ALLOC(b, 3);
	CHECK_ERR(ioas_lookup(a, 3), ENOENT);

	/* A failing dup2 leaves the target alone. */
	CHECK_ERR(dup2(1000, b), EBADF);
	CHECK_OK(ioas_lookup(b, 3));

	CHECK_EQ(dup2(a, b), b);
	CHECK_ERR(ioas_lookup(b, 3), ENOENT);
	CHECK_ALLOC(b, 3);
	CHECK_OK(obj_destroy(a, 3));

	/* A pipe duplicated over a served descriptor makes it a pipe. */
	int p[2];
	CHECK_OK(pipe(p));
	CHECK_EQ(write(p[1], "x", 1), 1);
	CHECK_EQ(dup2(p[0], b), b);
	check_is_pipe_with_one_byte(b);
	CHECK_ERR(ioas_lookup(b, 1), ENOTTY);
	/* And a served descriptor duplicated over a pipe makes it served. */
	CHECK_EQ(dup3(a, p[0], O_CLOEXEC), p[0]);
	CHECK_OK(ioas_lookup(p[0], 2));
	CHECK_OK(close(p[0]));
	CHECK_OK(close(p[1]));
	CHECK_OK(close(b));
	CHECK_OK(ioas_lookup(a, 1));
	CHECK_OK(close(a));
}

/* A number freed by close/close_range/closefrom and reused by the kernel
 * for something else must not still be served. */
static void closed_numbers_are_forgotten(void)
{
	int p[2];
	int fd = open_iommu();

	CHECK_OK(close(fd));
	CHECK_OK(pipe(p));
	CHECK_EQ(p[0], fd);
	CHECK_EQ(write(p[1], "x", 1), 1);
	check_is_pipe_with_one_byte(p[0]);
	CHECK_OK(close(p[1]));

	/* close_range over served and plain descriptors. */
	int lo = (int)CHECK_OK(fcntl(p[0], F_DUPFD, 300));
	int s1 = open_iommu();
	CHECK_EQ(dup2(s1, lo + 1), lo + 1);
	CHECK_EQ(dup2(s1, lo + 2), lo + 2);
	CHECK_OK(close(s1));
	CHECK_ALLOC(lo + 2, 1);
	/* CLOSE_RANGE_CLOEXEC only marks them. */
	CHECK_OK(close_range(lo, lo + 2, CLOSE_RANGE_CLOEXEC));
	CHECK_EQ(fcntl(lo + 1, F_GETFD), FD_CLOEXEC);
	CHECK_OK(ioas_lookup(lo + 1, 1));
	CHECK_OK(close_range(lo, lo + 2, 0));
	CHECK_ERR(ioas_lookup(lo + 1, 1), EBADF);
	CHECK_ERR(fcntl(lo, F_GETFD), EBADF);
	CHECK_EQ(dup2(p[0], lo + 1), lo + 1);
	check_is_pipe_with_one_byte(lo + 1);
	CHECK_OK(close(lo + 1));

	/* closefrom over served descriptors. */
	int s2 = open_iommu();
	CHECK_EQ(dup2(s2, 400), 400);
	CHECK_EQ(dup2(s2, 401), 401);
	CHECK_OK(close(s2));
	closefrom(400);
	CHECK_ERR(ioas_lookup(400, 1), EBADF);
	CHECK_EQ(dup2(p[0], 401), 401);
	check_is_pipe_with_one_byte(401);
	CHECK_OK(close(401));
	CHECK_OK(close(p[0]));
}

/* The flags the kernel checks before the driver's open. */
static void open_flags(void)
{
	CHECK_ERR(open("/dev/iommu", O_RDWR | O_DIRECTORY), ENOTDIR);
	CHECK_ERR(open("/dev/iommu", O_RDWR | O_CREAT | O_EXCL, 0600), EEXIST);
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR | O_CREAT, 0600));
	CHECK_ALLOC(fd, 1);
	CHECK_OK(close(fd));
	/* O_PATH never reaches the driver: the descriptor names the node
	 * (fstat works) but cannot be used (EBADF), and the driver's checks
	 * (O_CREAT|O_EXCL, the IOMMU model) do not apply. */
	fd = (int)CHECK_OK(open("/dev/iommu", O_PATH | O_CLOEXEC | O_CREAT | O_EXCL, 0600));
	struct stat st;
	CHECK_OK(fstat(fd, &st));
	CHECK_TRUE(S_ISCHR(st.st_mode));
	CHECK_EQ(fcntl(fd, F_GETFD), FD_CLOEXEC);
	CHECK_EQ(fcntl(fd, F_GETFL) & O_PATH, O_PATH);
	__u32 id;
	CHECK_ERR(ioas_alloc(fd, &id), EBADF);
	char c;
	CHECK_ERR(read(fd, &c, 1), EBADF);
	CHECK_OK(close(fd));
	CHECK_ERR(open("/dev/iommu", O_PATH | O_DIRECTORY), ENOTDIR);

	fd = (int)CHECK_OK(open("/dev/iommu", O_RDONLY | O_CLOEXEC | O_NONBLOCK));
	CHECK_EQ(fcntl(fd, F_GETFD), FD_CLOEXEC);
	CHECK_EQ(fcntl(fd, F_GETFL) & (O_ACCMODE | O_NONBLOCK), O_RDONLY | O_NONBLOCK);
	CHECK_ALLOC(fd, 1);
	CHECK_OK(close(fd));
}

/* Open through every entry point and spelling; each gives a fresh context
 * (first IOAS is 1) whose RLIMIT_MODE says which node it is. */
static void check_fresh(int fd, long mode)
{
	CHECK_TRUE(fd >= 0);
	CHECK_EQ(rlimit_mode(fd), mode);
	CHECK_ALLOC(fd, 1);
	CHECK_OK(close(fd));
}

static void names_and_entry_points(void)
{
	check_fresh((int)CHECK_OK(open("//dev/./iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(open("/dev/vfio/../iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(open64("/dev/iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(openat(AT_FDCWD, "/dev/iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(openat64(AT_FDCWD, "/dev/iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(__open_2("/dev/iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(__open64_2("/dev/iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(__openat_2(AT_FDCWD, "/dev/iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(__openat64_2(AT_FDCWD, "/dev/iommu", O_RDWR)), 0);

	/* /dev/vfio/vfio is an iommufd too, with process accounting. */
	int v = (int)CHECK_OK(open("/dev/vfio/vfio", O_RDWR));
	struct stat st;
	CHECK_OK(fstat(v, &st));
	CHECK_TRUE(S_ISCHR(st.st_mode));
	check_fresh(v, 1);

	/* Relative names, against the working directory and a directory fd. */
	char cwd[4096];
	CHECK_TRUE(getcwd(cwd, sizeof(cwd)) != NULL);
	CHECK_OK(chdir("/dev"));
	check_fresh((int)CHECK_OK(open("iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(open("./vfio/vfio", O_RDWR)), 1);
	check_fresh((int)CHECK_OK(openat(AT_FDCWD, "iommu", O_RDWR)), 0);
	CHECK_OK(chdir("/"));
	check_fresh((int)CHECK_OK(open("dev/iommu", O_RDWR)), 0);
	CHECK_OK(chdir(cwd));
	int dir = (int)CHECK_OK(open("/dev", O_RDONLY | O_DIRECTORY));
	check_fresh((int)CHECK_OK(openat(dir, "iommu", O_RDWR)), 0);
	check_fresh((int)CHECK_OK(openat(dir, "vfio/vfio", O_RDWR)), 1);
	CHECK_OK(close(dir));

	/* Only those nodes: a name that merely ends like one goes to the
	 * kernel (which has no such file). */
	CHECK_ERR(open("/dev/iommux", O_RDWR), ENOENT);
	CHECK_ERR(open("/dev/uiommufd-test-none/iommu", O_RDWR), ENOENT);
}

int main(void)
{
	basics();
	dups_share_the_context();
	opens_are_independent_and_dup2_replaces();
	closed_numbers_are_forgotten();
	open_flags();
	names_and_entry_points();
	return pass();
}
