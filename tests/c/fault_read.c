/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Reading and answering a fault queue at the edges, as Linux 7.3.4 does
 * (iommufd_fault_fops_read/write; every check here passes on the oracle):
 *
 * - a read whose copy-out faults puts the group it took back at the head
 *   of the queue: EFAULT if it was the first, else the bytes before it;
 * - a read larger than 1 MiB is fine (a multiple of the record); one past
 *   MAX_RW_COUNT is cut to it, which is not a multiple: ESPIPE;
 * - each group delivered gets the lowest free cookie from 1;
 * - a write whose copy-in faults stops there: EFAULT if first, else the
 *   responses before it; its count must be a multiple of the response
 *   (ESPIPE), also past 1 MiB.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <uiommufd/iommufd_test.h>

static int fd;
static __u32 idev;

static int test_cmd(struct iommu_test_cmd *cmd)
{
	cmd->size = sizeof(*cmd);
	return ioctl(fd, IOMMU_TEST_CMD, cmd);
}

static __u32 hwpt_alloc(__u32 pt, __u32 flags, __u32 fault, __u32 type, void *data, __u32 len)
{
	struct iommu_hwpt_alloc cmd = {
		.size = sizeof(cmd), .flags = flags, .dev_id = idev, .pt_id = pt,
		.data_type = type, .data_len = len, .data_uptr = (uintptr_t)data, .fault_id = fault,
	};
	CHECK_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &cmd));
	return cmd.out_hwpt_id;
}

static void trigger(__u32 grpid)
{
	struct iommu_test_cmd t = {
		.op = IOMMU_TEST_OP_TRIGGER_IOPF,
		.trigger_iopf = { .dev_id = idev, .pasid = 1, .grpid = grpid,
				  .perm = IOMMU_PGFAULT_PERM_READ, .addr = (__u64)grpid << 12 },
	};
	CHECK_OK(test_cmd(&t));
}

static int respond(int q, __u32 cookie)
{
	struct iommu_hwpt_page_response r = { .cookie = cookie, .code = IOMMUFD_PAGE_RESP_SUCCESS };
	return (int)write(q, &r, sizeof(r));
}

int main(void)
{
	fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(fd, &ioas));
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(test_cmd(&md));
	idev = md.mock_domain.out_idev_id;
	__u32 parent = hwpt_alloc(ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0, IOMMU_HWPT_DATA_NONE, NULL, 0);
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	CHECK_OK(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
	int q = (int)fa.out_fault_fd;
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	__u32 iopf = hwpt_alloc(parent, IOMMU_HWPT_FAULT_ID_VALID, fa.out_fault_id, IOMMU_HWPT_DATA_SELFTEST,
				&data, sizeof(data));
	struct iommu_test_cmd rep = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = md.mock_domain.out_stdev_id,
				      .mock_domain_replace = { .pt_id = iopf } };
	CHECK_OK(test_cmd(&rep));

	const size_t fsz = sizeof(struct iommu_hwpt_pgfault);
	long ps = sysconf(_SC_PAGESIZE);
	char *map = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(map != MAP_FAILED);
	CHECK_OK(mprotect(map + ps, ps, PROT_NONE));
	struct iommu_hwpt_pgfault f[2];

	/* Empty: 0. Pending but a zero count: EINVAL. */
	CHECK_EQ(read(q, f, fsz), 0);
	trigger(1);
	CHECK_ERR(read(q, f, 0), EINVAL);

	/* The whole buffer unwritable: EFAULT, and the group stays. */
	CHECK_ERR(read(q, map + ps, fsz), EFAULT);
	memset(f, 0, sizeof(f));
	CHECK_EQ(read(q, f, fsz), fsz);
	CHECK_EQ(f[0].grpid, 1);
	CHECK_EQ(f[0].cookie, 1);
	__u32 c1 = f[0].cookie;

	/* Two groups, the second's record would land on the unmapped page:
	 * the first is delivered, the second goes back. */
	trigger(2);
	trigger(3);
	struct iommu_hwpt_pgfault *edge = (void *)(map + ps - fsz);
	CHECK_EQ(read(q, edge, 2 * fsz), fsz);
	CHECK_EQ(edge->grpid, 2);
	CHECK_EQ(edge->cookie, 2);
	__u32 c2 = edge->cookie;
	memset(f, 0, sizeof(f));
	CHECK_EQ(read(q, f, 2 * fsz), fsz);
	CHECK_EQ(f[0].grpid, 3);
	/* Cookie 3: the failed delivery's cookie was freed and taken again. */
	CHECK_EQ(f[0].cookie, 3);
	__u32 c3 = f[0].cookie;

	/* Lowest free cookie: answer 1, the next group gets 1 again. */
	CHECK_EQ(respond(q, c1), 8);
	trigger(4);
	memset(f, 0, sizeof(f));
	CHECK_EQ(read(q, f, fsz), fsz);
	CHECK_EQ(f[0].cookie, 1);
	c1 = f[0].cookie;

	/* Writes: the first response unreadable is EFAULT; a batch whose
	 * second response is unreadable answers the first. */
	CHECK_ERR(write(q, map + ps, 8), EFAULT);
	struct iommu_hwpt_page_response *wedge = (void *)(map + ps - 8);
	*wedge = (struct iommu_hwpt_page_response){ .cookie = c2, .code = IOMMUFD_PAGE_RESP_SUCCESS };
	CHECK_EQ(write(q, wedge, 16), 8);
	CHECK_ERR(respond(q, c2), EINVAL); /* answered already */

	/* Big counts: more than 1 MiB is a normal read or write. */
	size_t big = fsz * 30000;
	char *b = malloc(big);
	CHECK_TRUE(b != NULL);
	trigger(5);
	CHECK_EQ(read(q, b, big), fsz);
	CHECK_EQ(((struct iommu_hwpt_pgfault *)b)->grpid, 5);
	__u32 c5 = ((struct iommu_hwpt_pgfault *)b)->cookie;
	volatile size_t bodd = big + 1;
	CHECK_ERR(read(q, b, bodd), ESPIPE);
	/* Past MAX_RW_COUNT the count is cut to 0x7ffff000: not a multiple. */
	volatile size_t huge = 0x80000000ul; /* volatile: the compiler would warn */
	CHECK_ERR(read(q, b, huge), ESPIPE);
	size_t wbig = 8 * 200000;
	struct iommu_hwpt_page_response *rs = calloc(wbig / 8, 8);
	CHECK_TRUE(rs != NULL);
	volatile size_t wodd = wbig + 4;
	CHECK_ERR(write(q, rs, wodd), ESPIPE);
	rs[0] = (struct iommu_hwpt_page_response){ .cookie = c3, .code = IOMMUFD_PAGE_RESP_SUCCESS };
	rs[1] = (struct iommu_hwpt_page_response){ .cookie = c5, .code = IOMMUFD_PAGE_RESP_INVALID };
	rs[2] = (struct iommu_hwpt_page_response){ .cookie = c1, .code = IOMMUFD_PAGE_RESP_SUCCESS };
	/* Three answered, then cookie 0 (unknown) stops the batch. */
	CHECK_EQ(write(q, rs, wbig), 24);

	/* Everything answered: the next group gets cookie 1. */
	trigger(6);
	CHECK_EQ(read(q, f, fsz), fsz);
	CHECK_EQ(f[0].cookie, 1);
	CHECK_EQ(respond(q, f[0].cookie), 8);
	free(b);
	free(rs);
	CHECK_OK(close(q));
	CHECK_OK(close(fd));
	return pass();
}
