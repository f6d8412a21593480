/* SPDX-License-Identifier: Apache-2.0 */
/*
 * RLIMIT_MEMLOCK as a charged map sees it: a process without CAP_IPC_LOCK
 * that changes its limit with setrlimit or prlimit has the next map
 * checked against the new limit (ENOMEM past it), as the kernel reads the
 * limit at every charge. The engine caches the limit; the shim's
 * setrlimit/prlimit hooks must drop that cache. Passes on the 7.3 oracle.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <uiommufd/iommufd_test.h>

/* glibc's wrapper (the shim hooks it; a raw system call it could not). */
extern int capset(cap_user_header_t hdr, const cap_user_data_t data);

static long ps;

static void drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	CHECK_OK(syscall(SYS_capget, &h, d));
	d[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
	CHECK_OK(capset(&h, d));
}

static void memlock_pages(int use_prlimit, long pages)
{
	struct rlimit rl;

	CHECK_OK(getrlimit(RLIMIT_MEMLOCK, &rl));
	rl.rlim_cur = pages * ps;
	if (use_prlimit)
		CHECK_OK(prlimit(0, RLIMIT_MEMLOCK, &rl, NULL));
	else
		CHECK_OK(setrlimit(RLIMIT_MEMLOCK, &rl));
}

int main(void)
{
	ps = sysconf(_SC_PAGESIZE);
	char *buf = mmap(NULL, 8 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(buf != MAP_FAILED);
	memset(buf, 1, 8 * ps);

	drop_ipc_lock();
	int fd = CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas;
	CHECK_OK(ioas_alloc(fd, &ioas));
	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(ioctl(fd, IOMMU_TEST_CMD, &md));
	const __u64 iova = MOCK_APERTURE_START;

	/* A generous limit: maps are charged and succeed. */
	memlock_pages(0, 64);
	for (int i = 0; i < 3; i++) {
		CHECK_OK(ioas_map_fixed(fd, ioas, buf, 4 * ps, iova));
		CHECK_OK(ioas_unmap(fd, ioas, iova, 4 * ps));
	}
	/* Lowered with setrlimit: the very next map is refused. */
	memlock_pages(0, 0);
	CHECK_ERR(ioas_map_fixed(fd, ioas, buf, ps, iova), ENOMEM);
	/* Raised with prlimit: 2 pages fit, 4 do not. */
	memlock_pages(1, 2);
	CHECK_ERR(ioas_map_fixed(fd, ioas, buf, 4 * ps, iova), ENOMEM);
	CHECK_OK(ioas_map_fixed(fd, ioas, buf, 2 * ps, iova));
	/* The 2 pinned pages count: one more is past the limit. */
	CHECK_ERR(ioas_map_fixed(fd, ioas, buf + 2 * ps, ps, iova + 2 * ps), ENOMEM);
	CHECK_OK(ioas_unmap(fd, ioas, iova, 2 * ps));
	/* Raised again with setrlimit: room for all 8. */
	memlock_pages(0, 8);
	CHECK_OK(ioas_map_fixed(fd, ioas, buf, 8 * ps, iova));
	CHECK_OK(ioas_unmap(fd, ioas, iova, 8 * ps));

	CHECK_OK(close(fd));
	return pass();
}
