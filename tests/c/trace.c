/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A known sequence of calls for `uiommufd run --trace`: six ioctls on a
 * served descriptor (three succeed, three fail with ENOENT, ENOTTY and
 * EFAULT) and two on a pipe, which are not served and must not be traced.
 * Prints "fd N" (the served descriptor) first so the test can match the
 * trace lines exactly.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>

int main(void)
{
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	int p[2], n = -1;

	printf("fd %d\n", fd);
	fflush(stdout);
	CHECK_ALLOC(fd, 1);
	CHECK_ALLOC(fd, 2);
	CHECK_OK(obj_destroy(fd, 1));
	CHECK_ERR(obj_destroy(fd, 1), ENOENT);
	CHECK_ERR(ioctl(fd, _IO(IOMMUFD_TYPE, 0x7f), NULL), ENOTTY);
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, NULL), EFAULT);

	CHECK_OK(pipe(p));
	CHECK_OK(ioctl(p[0], FIONREAD, &n));
	CHECK_ERR(ioas_lookup(p[0], 1), ENOTTY);
	CHECK_OK(close(p[0]));
	CHECK_OK(close(p[1]));
	CHECK_OK(close(fd));
	return pass();
}
