/* SPDX-License-Identifier: Apache-2.0 */
/*
 * open_expect PATH WHAT: open PATH read-write and check the outcome.
 *   WHAT = iommufd: the open succeeds and is a fresh iommufd (first IOAS 1);
 *   WHAT = plain:   the open succeeds and is not served (an iommufd request
 *                   is the kernel's ENOTTY);
 *   WHAT = ENODEV or ENOENT: the open fails with that errno.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s PATH iommufd|plain|ENODEV|ENOENT\n", argv[0]);
		return 2;
	}
	const char *path = argv[1], *what = argv[2];

	if (!strcmp(what, "ENODEV")) {
		CHECK_ERR(open(path, O_RDWR), ENODEV);
	} else if (!strcmp(what, "ENOENT")) {
		CHECK_ERR(open(path, O_RDWR), ENOENT);
	} else {
		int fd = (int)CHECK_OK(open(path, O_RDWR));
		__u32 id = 0;

		if (!strcmp(what, "iommufd")) {
			CHECK_ALLOC(fd, 1);
		} else if (!strcmp(what, "plain")) {
			CHECK_ERR(ioas_alloc(fd, &id), ENOTTY);
		} else {
			fprintf(stderr, "unknown expectation %s\n", what);
			return 2;
		}
		CHECK_OK(close(fd));
	}
	return pass();
}
