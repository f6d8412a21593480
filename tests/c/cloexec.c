/* SPDX-License-Identifier: Apache-2.0 */
/*
 * close-on-exec of served descriptors.
 *
 * `cloexec` (no arguments) opens /dev/iommu in every way that sets or
 * clears FD_CLOEXEC, forks, and the child execs this same program as
 * `cloexec check GONE_FDS KEPT_FDS` (comma-separated lists):
 *  - each GONE fd must be closed in the new image: F_GETFD fails EBADF;
 *  - each KEPT fd must still be open (F_GETFD == 0), as the character
 *    device that backs it.
 * The kernel would also keep a kept descriptor working as an iommufd; the
 * shim's context does not survive exec (the new image only sees the
 * backing descriptor). That is not asserted here either way.
 *
 * The parent's descriptors are unaffected by the child's exec.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define MAX_FDS 16

static int parse_fds(const char *s, int *out)
{
	int n = 0;
	char *end;

	while (*s && n < MAX_FDS) {
		out[n++] = (int)strtol(s, &end, 10);
		s = *end == ',' ? end + 1 : end;
	}
	return n;
}

static int check(const char *gone_list, const char *kept_list)
{
	int gone[MAX_FDS], kept[MAX_FDS];
	int ngone = parse_fds(gone_list, gone);
	int nkept = parse_fds(kept_list, kept);
	struct stat st;

	CHECK_TRUE(ngone > 0 && nkept > 0);
	for (int i = 0; i < ngone; i++) {
		CHECK_ERR(fcntl(gone[i], F_GETFD), EBADF);
		CHECK_ERR(close(gone[i]), EBADF);
	}
	for (int i = 0; i < nkept; i++) {
		CHECK_EQ(fcntl(kept[i], F_GETFD), 0);
		CHECK_OK(fstat(kept[i], &st));
		CHECK_TRUE(S_ISCHR(st.st_mode));
	}
	/* The new image has a working shim of its own. */
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR | O_CLOEXEC));
	for (int i = 0; i < nkept; i++)
		CHECK_TRUE(fd != kept[i]);
	CHECK_ALLOC(fd, 1);
	CHECK_OK(close(fd));
	for (int i = 0; i < nkept; i++)
		CHECK_OK(close(kept[i]));
	return pass();
}

static int open_with_ioas(int flags)
{
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR | flags));

	CHECK_ALLOC(fd, 1);
	return fd;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "check"))
		return check(argv[2], argv[3]);
	if (argc != 1) {
		fprintf(stderr, "usage: %s [check GONE KEPT]\n", argv[0]);
		return 2;
	}

	/* Gone after exec. */
	int o_cloexec = open_with_ioas(O_CLOEXEC);
	int plain = open_with_ioas(0);
	int dupfd_cloexec = (int)CHECK_OK(fcntl(plain, F_DUPFD_CLOEXEC, 0));
	int dup3_cloexec = (int)CHECK_OK(dup3(plain, 100, O_CLOEXEC));
	int fioclex = open_with_ioas(0);
	CHECK_OK(ioctl(fioclex, FIOCLEX));
	int setfd = open_with_ioas(0);
	CHECK_OK(fcntl(setfd, F_SETFD, FD_CLOEXEC));
	int range = open_with_ioas(0);
	CHECK_OK(close_range(range, range, CLOSE_RANGE_CLOEXEC));

	/* Kept across exec. */
	int fionclex = open_with_ioas(O_CLOEXEC);
	CHECK_OK(ioctl(fionclex, FIONCLEX));
	int dup_of_cloexec = (int)CHECK_OK(dup(o_cloexec));
	int dup2_of_cloexec = (int)CHECK_OK(dup2(o_cloexec, 101));

	char gone[256], kept[256];
	snprintf(gone, sizeof(gone), "%d,%d,%d,%d,%d,%d", o_cloexec, dupfd_cloexec, dup3_cloexec, fioclex,
		 setfd, range);
	snprintf(kept, sizeof(kept), "%d,%d,%d,%d", plain, fionclex, dup_of_cloexec, dup2_of_cloexec);

	fflush(stdout);
	pid_t pid = (pid_t)CHECK_OK(fork());
	if (pid == 0) {
		execl("/proc/self/exe", argv[0], "check", gone, kept, (char *)NULL);
		fprintf(stderr, "exec: %s\n", strerror(errno));
		_exit(127);
	}
	int status = 0;
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK_TRUE(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);

	/* Nothing changed on this side. */
	int all[] = { o_cloexec, plain, dupfd_cloexec, dup3_cloexec, fioclex, setfd, range,
		      fionclex, dup_of_cloexec, dup2_of_cloexec };
	for (unsigned i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		CHECK_OK(ioas_lookup(all[i], 1));
		CHECK_OK(close(all[i]));
	}
	return pass();
}
