/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IOMMU_GET_HW_INFO with a data_len far larger than the driver's data
 * (up to 4 GiB - 1) clears the user's tail in place, as the kernel's
 * clear_user does: never a buffer of that size in the engine. With the
 * address space limited to well under 4 GiB the call still answers: 0
 * for a buffer that is all writable, EFAULT at the first page that is
 * not, with the bytes before it cleared. Passes on Linux 7.3.4.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <uiommufd/iommufd_test.h>

int main(void)
{
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(fd, &ioas));
	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(ioctl(fd, IOMMU_TEST_CMD, &md));
	__u32 idev = md.mock_domain.out_idev_id;

	long ps = sysconf(_SC_PAGESIZE);
	unsigned char *buf = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(buf != MAP_FAILED);
	CHECK_OK(mprotect(buf + 3 * ps, ps, PROT_NONE));
	memset(buf, 0xaa, 3 * ps);

	/* At most 1 GiB more address space than now: a 4 GiB buffer cannot
	 * be allocated by whoever serves the call. */
	struct rlimit as = { 0, 0 };
	CHECK_OK(getrlimit(RLIMIT_AS, &as));
	FILE *st = fopen("/proc/self/statm", "r");
	unsigned long pages = 0;
	CHECK_TRUE(st && fscanf(st, "%lu", &pages) == 1);
	fclose(st);
	struct rlimit lim = { pages * ps + (1ul << 30), as.rlim_max };
	CHECK_OK(setrlimit(RLIMIT_AS, &lim));

	struct iommu_hw_info info = {
		.size = sizeof(info), .dev_id = idev, .data_len = 0xffffffffu,
		.data_uptr = (uintptr_t)buf,
	};
	CHECK_ERR(ioctl(fd, IOMMU_GET_HW_INFO, &info), EFAULT);
	/* The data, then zeros up to the unwritable page. */
	struct iommu_test_hw_info *d = (void *)buf;
	CHECK_EQ(d->test_reg, IOMMU_HW_INFO_SELFTEST_REGVAL);
	for (long i = sizeof(*d); i < 3 * ps; i++)
		if (buf[i] != 0)
			CHECK_EQ(i, -1);

	/* All of it writable: 0, the tail cleared, the true length back. */
	memset(buf, 0xaa, 3 * ps);
	info = (struct iommu_hw_info){ .size = sizeof(info), .dev_id = idev, .data_len = 3 * ps,
				       .data_uptr = (uintptr_t)buf };
	CHECK_OK(ioctl(fd, IOMMU_GET_HW_INFO, &info));
	CHECK_EQ(info.data_len, sizeof(*d));
	for (long i = sizeof(*d); i < 3 * ps; i++)
		if (buf[i] != 0)
			CHECK_EQ(i, -1);
	CHECK_OK(setrlimit(RLIMIT_AS, &as));
	CHECK_OK(close(fd));
	return pass();
}
