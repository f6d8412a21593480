/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A known sequence of calls for `uiommufd trace` (crates/cli/tests/shim.rs
 * checks the decoded lines one by one): ioctls that succeed and fail
 * (ENOENT, ENOTTY, EFAULT, EMSGSIZE), commands with outputs, arrays and
 * driver data (IOVA ranges, the selftest's hw info, a nested HWPT and its
 * invalidation entries), a fault queue answered by write and polled, and ioctls on a
 * pipe, which are not served and must not be traced. Every value the
 * trace shows is fixed here, except user addresses (the test runs it with
 * --no-addresses). Prints "fd N" (the served descriptor) first.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <sys/mman.h>
#include <uiommufd/iommufd_test.h>

static int fd;

static int test_cmd(struct iommu_test_cmd *cmd)
{
	cmd->size = sizeof(*cmd);
	return ioctl(fd, IOMMU_TEST_CMD, cmd);
}

int main(void)
{
	fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	int p[2], n = -1;

	printf("fd %d\n", fd);
	fflush(stdout);
	CHECK_ALLOC(fd, 1);
	CHECK_ALLOC(fd, 2);
	CHECK_OK(obj_destroy(fd, 1));
	CHECK_ERR(obj_destroy(fd, 1), ENOENT);
	CHECK_ERR(ioctl(fd, _IO(IOMMUFD_TYPE, 0x7f), NULL), ENOTTY);
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, NULL), EFAULT);

	/* A mock device (its domain's aperture limits the IOAS). */
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = 2 };
	CHECK_OK(test_cmd(&md));

	/* Map at a fixed IOVA and where the kernel chooses; the ranges. */
	long ps = sysconf(_SC_PAGESIZE);
	char *buf = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(buf != MAP_FAILED);
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
		.ioas_id = 2, .user_va = (uintptr_t)buf, .length = 2 * ps, .iova = 1 << 24,
	};
	CHECK_OK(ioctl(fd, IOMMU_IOAS_MAP, &map));
	map.flags = IOMMU_IOAS_MAP_READABLE;
	map.iova = 0;
	CHECK_OK(ioctl(fd, IOMMU_IOAS_MAP, &map));
	struct iommu_iova_range ranges[2];
	struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = 2, .num_iovas = 0,
					    .allowed_iovas = (uintptr_t)ranges };
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r), EMSGSIZE);
	r.num_iovas = 2;
	CHECK_OK(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r));
	CHECK_EQ(rlimit_mode(fd), 0);

	/* Its hw info, a nesting parent and a nested HWPT. */
	struct iommu_test_hw_info info;
	struct iommu_hw_info hw = { .size = sizeof(hw), .dev_id = md.mock_domain.out_idev_id,
				    .data_len = sizeof(info), .data_uptr = (uintptr_t)&info };
	CHECK_OK(ioctl(fd, IOMMU_GET_HW_INFO, &hw));
	struct iommu_hwpt_alloc parent = { .size = sizeof(parent), .flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
					   .dev_id = md.mock_domain.out_idev_id, .pt_id = 2 };
	CHECK_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &parent));
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	CHECK_OK(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	struct iommu_hwpt_alloc nested = {
		.size = sizeof(nested), .flags = IOMMU_HWPT_FAULT_ID_VALID, .dev_id = md.mock_domain.out_idev_id,
		.pt_id = parent.out_hwpt_id, .data_type = IOMMU_HWPT_DATA_SELFTEST, .data_len = sizeof(data),
		.data_uptr = (uintptr_t)&data, .fault_id = fa.out_fault_id,
	};
	CHECK_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &nested));
	struct iommu_hwpt_invalidate_selftest inv[2] = {
		{ .iotlb_id = 1 }, { .flags = IOMMU_TEST_INVALIDATE_FLAG_ALL },
	};
	struct iommu_hwpt_invalidate ic = {
		.size = sizeof(ic), .hwpt_id = nested.out_hwpt_id, .data_uptr = (uintptr_t)inv,
		.data_type = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, .entry_len = sizeof(inv[0]), .entry_num = 2,
	};
	CHECK_OK(ioctl(fd, IOMMU_HWPT_INVALIDATE, &ic));
	/* A page response nobody asked for: the kernel takes it (nothing
	 * pending matches the cookie). */
	struct iommu_hwpt_page_response resp = { .cookie = 7, .code = IOMMUFD_PAGE_RESP_SUCCESS };
	CHECK_EQ(write((int)fa.out_fault_fd, &resp, sizeof(resp)), -1);
	/* Nothing to read: poll says so at once. */
	struct pollfd pfd = { .fd = (int)fa.out_fault_fd, .events = POLLIN };
	CHECK_EQ(poll(&pfd, 1, 0), 0);

	CHECK_OK(pipe(p));
	CHECK_OK(ioctl(p[0], FIONREAD, &n));
	CHECK_ERR(ioas_lookup(p[0], 1), ENOTTY);
	CHECK_OK(close(p[0]));
	CHECK_OK(close(p[1]));
	CHECK_OK(close((int)fa.out_fault_fd));
	CHECK_OK(close(fd));
	return pass();
}
