/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A program that never opens /dev/iommu. It drives the calls the shim
 * interposes (open family, close, close_range, closefrom, dup, dup2, dup3,
 * fcntl, ioctl) on regular files, directories, pipes and /dev/null and
 * prints every result and errno. The test runs it with and without the
 * shim and requires byte-identical output and exit status.
 *
 * It also opens real files named "iommu" and "vfio/vfio" (in the scratch
 * directory given as argv[1]) by relative and absolute names: the shim
 * must only serve /dev/iommu and /dev/vfio/vfio themselves.
 *
 * Nothing printed depends on the run (no paths, pids or inode numbers).
 */
#define _GNU_SOURCE
#define _LARGEFILE64_SOURCE
#include "check.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/iommufd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>

/* Print "label: rc" or "label: -1 ERRNO". */
#define SHOW(label, expr)                                                   \
	({                                                                  \
		errno = 0;                                                  \
		long show_rc_ = (long)(expr);                               \
		int show_err_ = errno;                                      \
		if (show_rc_ < 0)                                           \
			printf("%-40s %ld %s\n", label, show_rc_,           \
			       errno_name(show_err_));                      \
		else                                                        \
			printf("%-40s %ld\n", label, show_rc_);             \
		show_rc_;                                                   \
	})

static const char *kind(int fd)
{
	struct stat st;

	if (fstat(fd, &st))
		return errno_name(errno);
	if (S_ISREG(st.st_mode))
		return "regular";
	if (S_ISDIR(st.st_mode))
		return "directory";
	if (S_ISCHR(st.st_mode))
		return "char";
	if (S_ISFIFO(st.st_mode))
		return "fifo";
	return "other";
}

static void show_fd(const char *label, int fd)
{
	int fdflags = fcntl(fd, F_GETFD);
	int flflags = fcntl(fd, F_GETFL);

	if (fdflags < 0) {
		printf("%-40s fd %d: %s\n", label, fd, errno_name(errno));
		return;
	}
	printf("%-40s fd %d: %s cloexec=%d accmode=%d append=%d nonblock=%d\n", label, fd, kind(fd),
	       !!(fdflags & FD_CLOEXEC), flflags & O_ACCMODE, !!(flflags & O_APPEND), !!(flflags & O_NONBLOCK));
}

static void files(const char *scratch)
{
	char path[4096];
	char buf[64];
	int n;

	snprintf(path, sizeof(path), "%s/plain.txt", scratch);
	int f = SHOW("open(plain, CREAT|TRUNC|RDWR)", open(path, O_CREAT | O_TRUNC | O_RDWR, 0644));
	show_fd("plain", f);
	SHOW("write(plain)", write(f, "hello", 5));
	SHOW("ioctl(plain, FIONREAD)", ioctl(f, FIONREAD, &n));
	printf("FIONREAD regular at end: %d\n", n);
	SHOW("lseek(plain, 0)", lseek(f, 0, SEEK_SET));
	SHOW("ioctl(plain, FIONREAD)", ioctl(f, FIONREAD, &n));
	printf("FIONREAD regular at start: %d\n", n);
	struct termios tio;
	SHOW("ioctl(plain, TCGETS)", ioctl(f, TCGETS, &tio));
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	SHOW("ioctl(plain, IOMMU_IOAS_ALLOC)", ioctl(f, IOMMU_IOAS_ALLOC, &a));

	int dir = SHOW("open(scratch, DIRECTORY)", open(scratch, O_RDONLY | O_DIRECTORY));
	show_fd("scratch dir", dir);
	SHOW("openat(dir, missing)", openat(dir, "missing", O_RDONLY));
	SHOW("openat(dir, plain.txt, DIRECTORY)", openat(dir, "plain.txt", O_RDONLY | O_DIRECTORY));
	SHOW("open(scratch, WRONLY)", open(scratch, O_WRONLY));
	SHOW("open(plain, CREAT|EXCL)", open(path, O_CREAT | O_EXCL | O_RDWR, 0644));
	int g = SHOW("openat(dir, plain.txt, RDONLY|CLOEXEC)", openat(dir, "plain.txt", O_RDONLY | O_CLOEXEC));
	show_fd("plain again", g);
	n = (int)SHOW("read(plain again)", read(g, buf, sizeof(buf)));
	printf("read: %.*s\n", n > 0 ? n : 0, buf);
	int g64 = SHOW("open64(plain, APPEND|WRONLY)", open64(path, O_APPEND | O_WRONLY));
	show_fd("plain append", g64);
	SHOW("openat64(dir, plain.txt)", openat64(dir, "plain.txt", O_RDONLY));
	SHOW("close(last)", close(g64 + 1));

	/* Files that are merely named like the served nodes. */
	SHOW("mkdirat(dir, vfio)", mkdirat(dir, "vfio", 0755) == 0 || errno == EEXIST ? 0 : -1);
	int i1 = SHOW("openat(dir, iommu, CREAT)", openat(dir, "iommu", O_CREAT | O_TRUNC | O_RDWR, 0644));
	show_fd("scratch iommu", i1);
	SHOW("write(scratch iommu)", write(i1, "not an iommu", 12));
	SHOW("ioctl(scratch iommu, IOMMU_IOAS_ALLOC)", ioctl(i1, IOMMU_IOAS_ALLOC, &a));
	int v1 = SHOW("openat(dir, vfio/vfio, CREAT)", openat(dir, "vfio/vfio", O_CREAT | O_RDWR, 0644));
	show_fd("scratch vfio", v1);
	char cwd[4096];
	if (!getcwd(cwd, sizeof(cwd)))
		return;
	SHOW("chdir(scratch)", chdir(scratch));
	int i2 = SHOW("open(iommu)", open("iommu", O_RDONLY));
	show_fd("relative iommu", i2);
	n = (int)SHOW("read(relative iommu)", read(i2, buf, sizeof(buf)));
	printf("read: %.*s\n", n > 0 ? n : 0, buf);
	int v2 = SHOW("open(./vfio/../vfio/vfio)", open("./vfio/../vfio/vfio", O_RDONLY));
	show_fd("relative vfio", v2);
	SHOW("open(iommu, DIRECTORY)", open("iommu", O_RDONLY | O_DIRECTORY));
	int vd = SHOW("open(vfio) a directory", open("vfio", O_RDONLY));
	show_fd("relative vfio dir", vd);
	SHOW("close(vd)", close(vd));
	SHOW("chdir(back)", chdir(cwd));
	snprintf(path, sizeof(path), "%s/iommu", scratch);
	int i3 = SHOW("open(abs scratch iommu)", open(path, O_RDONLY));
	show_fd("absolute iommu", i3);

	SHOW("close(i3)", close(i3));
	SHOW("close(v2)", close(v2));
	SHOW("close(i2)", close(i2));
	SHOW("close(v1)", close(v1));
	SHOW("close(i1)", close(i1));
	SHOW("close(g)", close(g));
	SHOW("close(g64)", close(g64));
	SHOW("close(dir)", close(dir));
	SHOW("close(f)", close(f));
	SHOW("close(f) again", close(f));
	SHOW("close(-1)", close(-1));
	SHOW("close(100000)", close(100000));
}

static void pipes_and_dups(void)
{
	int p[2];
	int n = -1;
	struct termios tio;

	SHOW("pipe", pipe(p));
	show_fd("pipe read", p[0]);
	show_fd("pipe write", p[1]);
	SHOW("write(pipe)", write(p[1], "abcde", 5));
	SHOW("ioctl(pipe, FIONREAD)", ioctl(p[0], FIONREAD, &n));
	printf("FIONREAD pipe: %d\n", n);
	SHOW("ioctl(pipe, TCGETS)", ioctl(p[0], TCGETS, &tio));
	SHOW("ioctl(pipe, FIONBIO on)", ioctl(p[0], FIONBIO, &(int){ 1 }));
	show_fd("pipe read nonblocking", p[0]);
	SHOW("ioctl(pipe, FIOCLEX)", ioctl(p[0], FIOCLEX));
	show_fd("pipe read cloexec", p[0]);
	SHOW("ioctl(bad fd, FIONREAD)", ioctl(12345, FIONREAD, &n));
	SHOW("ioctl(-1, TCGETS)", ioctl(-1, TCGETS, &tio));

	int d = SHOW("dup(pipe read)", dup(p[0]));
	show_fd("dup", d);
	n = -1;
	SHOW("ioctl(dup, FIONREAD)", ioctl(d, FIONREAD, &n));
	printf("FIONREAD dup: %d\n", n);
	SHOW("dup(bad)", dup(12345));
	SHOW("dup2(p0, 50)", dup2(p[0], 50));
	show_fd("dup2 target", 50);
	SHOW("dup2(p0, p0)", dup2(p[0], p[0]));
	SHOW("dup2(bad, 51)", dup2(12345, 51));
	show_fd("dup2 failed target", 51);
	SHOW("dup2(p1, 50) over open", dup2(p[1], 50));
	show_fd("dup2 replaced target", 50);
	SHOW("dup3(p0, 52, CLOEXEC)", dup3(p[0], 52, O_CLOEXEC));
	show_fd("dup3 target", 52);
	SHOW("dup3(p0, p0, 0)", dup3(p[0], p[0], 0));
	SHOW("dup3(p0, 53, bad flag)", dup3(p[0], 53, O_APPEND));
	SHOW("dup2(p0, -1)", dup2(p[0], -1));

	SHOW("fcntl(p0, F_DUPFD, 60)", fcntl(p[0], F_DUPFD, 60));
	show_fd("F_DUPFD", 60);
	SHOW("fcntl(p0, F_DUPFD, 60) again", fcntl(p[0], F_DUPFD, 60));
	SHOW("fcntl(p0, F_DUPFD_CLOEXEC, 70)", fcntl(p[0], F_DUPFD_CLOEXEC, 70));
	show_fd("F_DUPFD_CLOEXEC", 70);
	SHOW("fcntl(p0, F_DUPFD, -1)", fcntl(p[0], F_DUPFD, -1));
	SHOW("fcntl(bad, F_DUPFD, 0)", fcntl(12345, F_DUPFD, 0));
	SHOW("fcntl(70, F_SETFD, 0)", fcntl(70, F_SETFD, 0));
	SHOW("fcntl(70, F_GETFD)", fcntl(70, F_GETFD));
	SHOW("fcntl(60, F_SETFD, CLOEXEC)", fcntl(60, F_SETFD, FD_CLOEXEC));
	SHOW("fcntl(60, F_GETFD)", fcntl(60, F_GETFD));
	SHOW("fcntl(p1, F_GETFL) & ACCMODE", fcntl(p[1], F_GETFL) & O_ACCMODE);
	SHOW("fcntl(p1, F_SETFL, NONBLOCK)", fcntl(p[1], F_SETFL, O_NONBLOCK));
	show_fd("pipe write nonblocking", p[1]);
	SHOW("fcntl(bad, F_GETFD)", fcntl(12345, F_GETFD));
	SHOW("fcntl(bad, F_GETFL)", fcntl(12345, F_GETFL));

	/* close_range over a block holding pipe ends and holes. */
	SHOW("close_range(CLOEXEC 50..70)", close_range(50, 70, CLOSE_RANGE_CLOEXEC));
	show_fd("after CLOEXEC range 50", 50);
	show_fd("after CLOEXEC range 60", 60);
	show_fd("after CLOEXEC range 70", 70);
	SHOW("close_range(50, 60)", close_range(50, 60, 0));
	show_fd("after range 50", 50);
	show_fd("after range 52", 52);
	show_fd("after range 60", 60);
	show_fd("after range 70", 70);
	SHOW("close_range(70, 50) reversed", close_range(70, 50, 0));
	SHOW("close_range(bad flags)", close_range(70, 70, 0x40000000));
	SHOW("dup2(p0, 90)", dup2(p[0], 90));
	SHOW("dup2(p0, 91)", dup2(p[0], 91));
	closefrom(80);
	show_fd("after closefrom 70", 70);
	show_fd("after closefrom 90", 90);
	show_fd("after closefrom 91", 91);

	char buf[8];
	n = (int)SHOW("read(dup)", read(d, buf, sizeof(buf)));
	printf("read: %.*s\n", n > 0 ? n : 0, buf);
	SHOW("close(d)", close(d));
	SHOW("close(p0)", close(p[0]));
	SHOW("close(p1)", close(p[1]));
}

static void dev_null(void)
{
	char buf[8];
	struct stat st;
	struct termios tio;
	int n = -1;

	int fd = SHOW("open(/dev/null)", open("/dev/null", O_RDWR));
	show_fd("/dev/null", fd);
	SHOW("fstat(/dev/null)", fstat(fd, &st));
	printf("rdev: %u:%u\n", major(st.st_rdev), minor(st.st_rdev));
	SHOW("write(/dev/null)", write(fd, "x", 1));
	SHOW("read(/dev/null)", read(fd, buf, sizeof(buf)));
	SHOW("ioctl(/dev/null, TCGETS)", ioctl(fd, TCGETS, &tio));
	SHOW("ioctl(/dev/null, FIONREAD)", ioctl(fd, FIONREAD, &n));
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	struct iommu_destroy d = { .size = sizeof(d), .id = 1 };
	SHOW("ioctl(/dev/null, IOMMU_IOAS_ALLOC)", ioctl(fd, IOMMU_IOAS_ALLOC, &a));
	SHOW("ioctl(/dev/null, IOMMU_DESTROY)", ioctl(fd, IOMMU_DESTROY, &d));
	int fd2 = SHOW("openat(AT_FDCWD, /dev/null, CLOEXEC)", openat(AT_FDCWD, "/dev/null", O_WRONLY | O_CLOEXEC));
	show_fd("/dev/null cloexec", fd2);
	SHOW("dup2(/dev/null, 40)", dup2(fd, 40));
	SHOW("dup3(/dev/null, 41, CLOEXEC)", dup3(fd2, 41, O_CLOEXEC));
	show_fd("dup3 of /dev/null", 41);
	SHOW("close_range(fd, 41)", close_range(fd, 41, 0));
	show_fd("closed /dev/null", fd);
	show_fd("closed /dev/null 41", 41);
	int fd3 = SHOW("open(/dev/null) reuses lowest", open("/dev/null", O_RDONLY));
	SHOW("close(fd3)", close(fd3));
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
		return 2;
	}
	files(argv[1]);
	pipes_and_dups();
	dev_null();
	printf("done\n");
	return 7;
}
