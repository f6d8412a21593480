/* SPDX-License-Identifier: Apache-2.0 */
/* iommufd helpers for the shim tests, on top of check.h. */
#ifndef SHIM_TEST_IOMMUFD_UTIL_H
#define SHIM_TEST_IOMMUFD_UTIL_H

#include "check.h"

#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/iommufd.h>

/* IOMMU_IOAS_ALLOC; on success *id is the new IOAS. */
static inline int ioas_alloc(int fd, __u32 *id)
{
	struct iommu_ioas_alloc cmd = { .size = sizeof(cmd) };
	int rc = ioctl(fd, IOMMU_IOAS_ALLOC, &cmd);

	if (rc == 0)
		*id = cmd.out_ioas_id;
	return rc;
}

/* IOMMU_DESTROY. */
static inline int obj_destroy(int fd, __u32 id)
{
	struct iommu_destroy cmd = { .size = sizeof(cmd), .id = id };

	return ioctl(fd, IOMMU_DESTROY, &cmd);
}

/* IOMMU_OPTION get HUGE_PAGES of IOAS id: 0 if the IOAS exists, else -1
 * (ENOENT). Looks an object up without changing anything. */
static inline int ioas_lookup(int fd, __u32 id)
{
	struct iommu_option cmd = {
		.size = sizeof(cmd),
		.option_id = IOMMU_OPTION_HUGE_PAGES,
		.op = IOMMU_OPTION_OP_GET,
		.object_id = id,
	};

	return ioctl(fd, IOMMU_OPTION, &cmd);
}

/* IOMMU_OPTION get RLIMIT_MODE: 0 (per user, /dev/iommu) or 1 (per
 * process, /dev/vfio/vfio); -1 on error. */
static inline long rlimit_mode(int fd)
{
	struct iommu_option cmd = {
		.size = sizeof(cmd),
		.option_id = IOMMU_OPTION_RLIMIT_MODE,
		.op = IOMMU_OPTION_OP_GET,
	};

	if (ioctl(fd, IOMMU_OPTION, &cmd))
		return -1;
	return (long)cmd.val64;
}

/* Allocate an IOAS on fd and check that its ID is `expected`. */
#define CHECK_ALLOC(fd, expected)                         \
	do {                                              \
		__u32 check_id_ = 0;                      \
		CHECK_OK(ioas_alloc((fd), &check_id_));   \
		CHECK_EQ(check_id_, (expected));          \
	} while (0)

#endif
