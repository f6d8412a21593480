/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Pinned pages outlive the program's mapping of them, as with the kernel:
 * after munmap, mmap(MAP_FIXED) over them, MADV_DONTNEED or mremap of a buffer mapped into an IOAS with
 * an IOMMU domain attached, the device (here: the selftest's access, which
 * reads through the pinned frames on its slow path) still sees the old
 * pages and their contents, and the program sees what the kernel would show
 * it. Also: the program's own SIGSEGV handler keeps working while the
 * engine's guarded copies turn bad pointers into EFAULT.
 */
#include "iommufd_util.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <uiommufd/iommufd_test.h>

static int fd;
static __u32 ioas_id, hwpt_id;
static int access_fd;
static long ps;

#define IOVA MOCK_APERTURE_START

static void *new_buffer(int flags, char fill)
{
	char *p = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);

	CHECK_TRUE(p != MAP_FAILED);
	for (int i = 0; i < 4; i++)
		memset(p + i * ps, fill + i, ps);
	return p;
}

static int map_fixed(void *buf, __u64 len, __u64 iova)
{
	struct iommu_ioas_map cmd = {
		.size = sizeof(cmd),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas_id,
		.user_va = (uintptr_t)buf,
		.length = len,
		.iova = iova,
	};

	return ioctl(fd, IOMMU_IOAS_MAP, &cmd);
}

static int unmap(__u64 iova, __u64 len)
{
	struct iommu_ioas_unmap cmd = { .size = sizeof(cmd), .ioas_id = ioas_id, .iova = iova, .length = len };

	return ioctl(fd, IOMMU_IOAS_UNMAP, &cmd);
}

/* Device-side copy through the access: slow path = through pinned frames. */
static int device_rw(__u64 iova, void *buf, __u64 len, int write, int slow)
{
	struct iommu_test_cmd cmd = {
		.size = sizeof(cmd),
		.op = IOMMU_TEST_OP_ACCESS_RW,
		.id = access_fd,
		.access_rw = { .iova = iova, .length = len, .uptr = (uintptr_t)buf,
			       .flags = (write ? MOCK_ACCESS_RW_WRITE : 0) | (slow ? MOCK_ACCESS_RW_SLOW_PATH : 0) },
	};

	return ioctl(fd, IOMMU_TEST_CMD, &cmd);
}

static int check_refs(void *p, __u64 len, __u32 refs)
{
	struct iommu_test_cmd cmd = {
		.size = sizeof(cmd),
		.op = IOMMU_TEST_OP_MD_CHECK_REFS,
		.check_refs = { .length = len, .uptr = (uintptr_t)p, .refs = refs },
	};

	return ioctl(fd, IOMMU_TEST_CMD, &cmd);
}

static int check_map(__u64 iova, __u64 len, void *p)
{
	struct iommu_test_cmd cmd = {
		.size = sizeof(cmd),
		.op = IOMMU_TEST_OP_MD_CHECK_MAP,
		.id = hwpt_id,
		.check_map = { .iova = iova, .length = len, .uptr = (uintptr_t)p },
	};

	return ioctl(fd, IOMMU_TEST_CMD, &cmd);
}

/* The device still reads page i of the old buffer as fill + i. */
static void expect_device_sees(char fill)
{
	char *tmp = malloc(4 * ps);

	CHECK_OK(device_rw(IOVA, tmp, 4 * ps, 0, 1));
	for (int i = 0; i < 4; i++) {
		CHECK_EQ(tmp[i * ps], fill + i);
		CHECK_EQ(tmp[i * ps + ps - 1], fill + i);
	}
	free(tmp);
}

static void test_munmap(void)
{
	char *buf = new_buffer(MAP_PRIVATE, 'a');
	char x = 'Z';

	CHECK_OK(map_fixed(buf, 4 * ps, IOVA));
	CHECK_OK(check_refs(buf, 4 * ps, 1));
	CHECK_OK(munmap(buf, 4 * ps));
	expect_device_sees('a');
	/* The fast path reads the user mapping, which is gone. */
	CHECK_ERR(device_rw(IOVA, &x, 1, 0, 0), EFAULT);
	/* The slow path's one-page access pins that page afresh from the
	 * program's mapping (the kernel's iopt_pages_rw_page): gone. */
	CHECK_ERR(device_rw(IOVA + ps, &x, 1, 1, 1), EFAULT);
	/* Across two pages it goes through the pinned pages, which the
	 * device can still write. */
	char two[2] = { 'Z', 'Y' };
	CHECK_OK(device_rw(IOVA + 2 * ps - 1, two, 2, 1, 1));
	two[0] = two[1] = 0;
	CHECK_OK(device_rw(IOVA + 2 * ps - 1, two, 2, 0, 1));
	CHECK_EQ(two[0], 'Z');
	CHECK_EQ(two[1], 'Y');
	/* New memory at the same address is not the pinned page. */
	char *again = mmap(buf, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	CHECK_TRUE(again == buf);
	CHECK_EQ(again[ps], 0);
	CHECK_OK(check_refs(again, 4 * ps, 0));
	CHECK_EQ(unmap(IOVA, 4 * ps), 0);
	CHECK_OK(munmap(again, 4 * ps));
}

/* mmap(MAP_FIXED) over a pinned buffer unmaps it implicitly: the device
 * keeps the pinned pages, the program gets new memory. */
static void test_mmap_fixed_over(void)
{
	char *buf = new_buffer(MAP_PRIVATE, 'm');

	CHECK_OK(map_fixed(buf, 4 * ps, IOVA));
	CHECK_OK(check_refs(buf, 4 * ps, 1));
	char *over = mmap(buf, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	CHECK_TRUE(over == buf);
	CHECK_EQ(over[ps], 0);
	CHECK_OK(check_refs(over, 4 * ps, 0));
	expect_device_sees('m');
	/* What the program writes now is not what the device reads through
	 * the pinned pages... */
	over[0] = 'P';
	expect_device_sees('m');
	/* ...but the slow path's one-page access pins the page mapped there
	 * now, as the kernel's does. */
	char x = 0;
	CHECK_OK(device_rw(IOVA, &x, 1, 0, 1));
	CHECK_EQ(x, 'P');
	CHECK_EQ(unmap(IOVA, 4 * ps), 0);
	CHECK_OK(munmap(over, 4 * ps));
}

static void test_dontneed_private(void)
{
	char *buf = new_buffer(MAP_PRIVATE, 'k');

	CHECK_OK(map_fixed(buf, 4 * ps, IOVA));
	CHECK_OK(madvise(buf, 4 * ps, MADV_DONTNEED));
	/* The program gets fresh zero pages, the device keeps the old ones. */
	CHECK_EQ(buf[0], 0);
	CHECK_EQ(buf[3 * ps], 0);
	expect_device_sees('k');
	CHECK_OK(check_refs(buf, 4 * ps, 0));
	CHECK_OK(unmap(IOVA, 4 * ps));
	CHECK_OK(munmap(buf, 4 * ps));
}

static void test_dontneed_shared(void)
{
	char *buf = new_buffer(MAP_SHARED, 'p');

	CHECK_OK(map_fixed(buf, 4 * ps, IOVA));
	CHECK_OK(madvise(buf, 4 * ps, MADV_DONTNEED));
	/* Shared memory keeps its contents in both views. */
	CHECK_EQ(buf[ps], 'q');
	expect_device_sees('p');
	CHECK_OK(check_refs(buf, 4 * ps, 1));
	/* Writes of either side are seen by the other. */
	buf[2 * ps] = '!';
	char x = 0;
	CHECK_OK(device_rw(IOVA + 2 * ps, &x, 1, 0, 1));
	CHECK_EQ(x, '!');
	CHECK_OK(unmap(IOVA, 4 * ps));
	CHECK_OK(munmap(buf, 4 * ps));
}

static void test_mremap(void)
{
	char *buf = new_buffer(MAP_PRIVATE, 'A');
	char *dst = mmap(NULL, 4 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	CHECK_TRUE(dst != MAP_FAILED);
	CHECK_OK(map_fixed(buf, 4 * ps, IOVA));
	char *moved = mremap(buf, 4 * ps, 4 * ps, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK_TRUE(moved == dst);
	/* The pages moved with the mapping: the domain still maps them. */
	CHECK_OK(check_map(IOVA, 4 * ps, moved));
	CHECK_OK(check_refs(moved, 4 * ps, 1));
	/* Through the pinned pages (two pages: the one-page slow path would
	 * pin afresh at the old address, now unmapped: EFAULT). */
	char x[2] = { '#', '%' };
	CHECK_OK(device_rw(IOVA + 3 * ps - 1, x, 2, 1, 1));
	CHECK_EQ(moved[3 * ps - 1], '#');
	CHECK_EQ(moved[3 * ps], '%');
	CHECK_ERR(device_rw(IOVA + 3 * ps + 5, x, 1, 1, 1), EFAULT);
	/* Back to the fill, which expect_device_sees checks there. */
	x[0] = 'A' + 2;
	x[1] = 'A' + 3;
	CHECK_OK(device_rw(IOVA + 3 * ps - 1, x, 2, 1, 1));
	/* Shrinking cuts pinned pages off the mapping: they live on. */
	char *shrunk = mremap(moved, 4 * ps, 2 * ps, 0);
	CHECK_TRUE(shrunk == moved);
	expect_device_sees('A');
	CHECK_OK(unmap(IOVA, 4 * ps));
	CHECK_OK(munmap(shrunk, 2 * ps));
}

static sigjmp_buf jump;
static volatile sig_atomic_t handled;

static void on_segv(int sig)
{
	handled = sig;
	siglongjmp(jump, 1);
}

static void test_program_sigsegv_handler(void)
{
	struct sigaction sa = { .sa_handler = on_segv };
	struct sigaction old;

	sigemptyset(&sa.sa_mask);
	CHECK_OK(sigaction(SIGSEGV, &sa, &old));
	/* The engine's own faults stay the engine's: EFAULT, no signal. */
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, (void *)8), EFAULT);
	CHECK_EQ(handled, 0);
	/* The program's faults reach the program's handler. */
	if (sigsetjmp(jump, 1) == 0) {
		volatile char *bad = (volatile char *)16;
		(void)*bad;
		CHECK_TRUE(0);
	}
	CHECK_EQ(handled, SIGSEGV);
	/* And the program sees its own handler as installed. */
	struct sigaction now;
	CHECK_OK(sigaction(SIGSEGV, NULL, &now));
	CHECK_TRUE(now.sa_handler == on_segv);
	CHECK_OK(sigaction(SIGSEGV, &old, NULL));
}

int main(void)
{
	ps = sysconf(_SC_PAGESIZE);
	fd = CHECK_OK(open("/dev/iommu", O_RDWR));
	CHECK_OK(ioas_alloc(fd, &ioas_id));

	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas_id };
	CHECK_OK(ioctl(fd, IOMMU_TEST_CMD, &md));
	hwpt_id = md.mock_domain.out_hwpt_id;
	struct iommu_test_cmd ca = { .size = sizeof(ca), .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas_id };
	CHECK_OK(ioctl(fd, IOMMU_TEST_CMD, &ca));
	access_fd = ca.create_access.out_access_fd;

	test_munmap();
	test_mmap_fixed_over();
	test_dontneed_private();
	test_dontneed_shared();
	test_mremap();
	test_program_sigsegv_handler();

	CHECK_OK(close(access_fd));
	CHECK_OK(close(fd));
	return pass();
}
