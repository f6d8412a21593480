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

/* IOMMU_IOAS_MAP of [va, va + len) at a fixed IOVA, readable and
 * writable. */
static inline int ioas_map_fixed(int fd, __u32 ioas, void *va, __u64 len, __u64 iova)
{
	struct iommu_ioas_map cmd = {
		.size = sizeof(cmd),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)va,
		.length = len,
		.iova = iova,
	};

	return ioctl(fd, IOMMU_IOAS_MAP, &cmd);
}

/* IOMMU_IOAS_UNMAP of [iova, iova + len). */
static inline int ioas_unmap(int fd, __u32 ioas, __u64 iova, __u64 len)
{
	struct iommu_ioas_unmap cmd = { .size = sizeof(cmd), .ioas_id = ioas, .iova = iova, .length = len };

	return ioctl(fd, IOMMU_IOAS_UNMAP, &cmd);
}

/* IOMMU_IOAS_COPY of [iova, iova + len) from src to the same IOVA in dst. */
static inline int ioas_copy_fixed(int fd, __u32 dst, __u32 src, __u64 iova, __u64 len)
{
	struct iommu_ioas_copy cmd = {
		.size = sizeof(cmd),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.dst_ioas_id = dst,
		.src_ioas_id = src,
		.length = len,
		.dst_iova = iova,
		.src_iova = iova,
	};

	return ioctl(fd, IOMMU_IOAS_COPY, &cmd);
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
