// SPDX-License-Identifier: Apache-2.0
/*
 * A differential checker for /dev/iommu: runs a seeded random sequence of
 * iommufd ioctls (the core commands and the selftest mock's) and prints a
 * transcript: every call with its arguments, its result or errno and what
 * it wrote back. Run it inside the real kernel (the oracle; a
 * CONFIG_IOMMUFD_TEST kernel, as root) and under `uiommufd run`, and diff
 * the transcripts: any difference is a place where uiommufd does not
 * answer as the kernel does.
 *
 *   iommufd_diff SEED [STEPS]            one sequence
 *   iommufd_diff FIRST-LAST [STEPS]      one per seed, one after the other
 *
 * Everything the program prints is deterministic for a seed: buffers live at
 * fixed addresses, descriptors above 2 are closed first, and only values the
 * kernel defines are printed (IDs, IOVAs, lengths, errnos, bitmaps,
 * checksums of data read through an access, descriptor numbers).
 *
 * Static build (the oracle has no libc): gcc -static -O2 -I include ...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <uiommufd/iommufd_test.h>

#define PAGE 4096UL
#define NBUF 4
#define BUF_PAGES 64
#define BUF_BASE 0x200000000000UL
#define BUF_STRIDE 0x10000000UL

static uint64_t rng;
static int fd = -1;
static int step;

static uint64_t rnd(void)
{
	/* xorshift64* */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1DULL;
}

static uint64_t below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static int chance(int percent)
{
	return (int)below(100) < percent;
}

/* What the sequence made, so later calls can name it (or miss it). */
static uint32_t max_id;
static uint32_t ioas[16], nioas;
static uint32_t hwpts[16], nhwpt;
static struct {
	uint32_t stdev, hwpt, idev;
} mocks[8];
static int nmock;
static int access_fds[8], naccess;
static uint32_t access_items[16], nitems;
static uint64_t iovas[32];
static int niova;
static void *bufs[NBUF];
static int memfd = -1;

static void seen_id(uint32_t id)
{
	if (id > max_id)
		max_id = id;
}

static void note_iova(uint64_t iova)
{
	iovas[niova++ % 32] = iova;
}

/* One transcript line: "STEP OP args -> result". */
static void out(const char *fmt, ...)
{
	va_list ap;

	printf("%d ", step);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static const char *res(int rc)
{
	static char s[32];

	if (rc < 0)
		snprintf(s, sizeof(s), "err %s", strerrorname_np(errno) ?: "?");
	else
		snprintf(s, sizeof(s), "ok %d", rc);
	return s;
}

static uint32_t any_id(void)
{
	switch (below(6)) {
	case 0:
		return below(max_id + 3);
	case 1:
		return nioas ? ioas[below(nioas)] : 0;
	case 2:
		return nhwpt ? hwpts[below(nhwpt)] : 1;
	case 3:
		return nmock ? mocks[below(nmock)].idev : 2;
	case 4:
		return nmock ? mocks[below(nmock)].stdev : 3;
	default:
		return nioas ? ioas[nioas - 1] : 1;
	}
}

static uint32_t an_ioas(void)
{
	if (!nioas || chance(8))
		return any_id();
	return ioas[below(nioas)];
}

static uint32_t a_hwpt(void)
{
	if (chance(15) || (!nhwpt && !nmock))
		return any_id();
	if (nmock && (chance(50) || !nhwpt))
		return mocks[below(nmock)].hwpt;
	return hwpts[below(nhwpt)];
}

static uint32_t a_dev(void)
{
	if (!nmock || chance(10))
		return any_id();
	return mocks[below(nmock)].idev;
}

static uint64_t an_iova(void)
{
	switch (below(8)) {
	case 0:
		return below(1UL << 32) & ~(PAGE - 1);
	case 1:
		return MOCK_APERTURE_START + below(64) * PAGE;
	case 2:
		return niova ? iovas[below(niova < 32 ? niova : 32)] + below(3) * PAGE : 0;
	case 3:
		return niova ? iovas[below(niova < 32 ? niova : 32)] + below(2 * PAGE) : 0;
	case 4:
		return (uint64_t)MOCK_APERTURE_LAST + 1 - below(4) * PAGE;
	case 5:
		return below(2) ? UINT64_MAX - below(PAGE) : 0;
	default:
		return niova ? iovas[below(niova < 32 ? niova : 32)] : MOCK_APERTURE_START;
	}
}

static uint64_t a_length(void)
{
	switch (below(8)) {
	case 0:
		return 0;
	case 1:
		return PAGE;
	case 2:
		return (1 + below(8)) * PAGE;
	case 3:
		return (1 + below(BUF_PAGES)) * PAGE;
	case 4:
		return below(3 * PAGE);
	case 5:
		return chance(50) ? UINT64_MAX : (1UL << 40);
	case 6:
		return MOCK_PAGE_SIZE * (1 + below(4));
	default:
		return 2 * PAGE;
	}
}

/* A user address inside (or just past) one of the buffers. */
static uint64_t a_uptr(int *bi)
{
	int b = below(NBUF);
	uint64_t off;

	*bi = b;
	switch (below(5)) {
	case 0:
		off = below(BUF_PAGES) * PAGE + below(2) * MOCK_PAGE_SIZE;
		break;
	case 1:
		off = below(3 * PAGE);
		break;
	default:
		off = below(BUF_PAGES / 2) * PAGE;
	}
	return (uint64_t)bufs[b] + off;
}

static uint32_t map_flags(void)
{
	uint32_t f = 0;

	if (chance(85))
		f |= IOMMU_IOAS_MAP_READABLE;
	if (chance(75))
		f |= IOMMU_IOAS_MAP_WRITEABLE;
	if (chance(50))
		f |= IOMMU_IOAS_MAP_FIXED_IOVA;
	if (chance(3))
		f |= 1 << (3 + below(4));
	return f;
}

static void op_ioas_alloc(void)
{
	struct iommu_ioas_alloc c = { .size = sizeof(c), .flags = chance(5) };
	int rc = ioctl(fd, IOMMU_IOAS_ALLOC, &c);

	out("IOAS_ALLOC flags=%u -> %s id=%u", c.flags, res(rc), rc ? 0 : c.out_ioas_id);
	if (!rc && nioas < 16) {
		ioas[nioas++] = c.out_ioas_id;
		seen_id(c.out_ioas_id);
	}
}

static void op_destroy(void)
{
	struct iommu_destroy c = { .size = sizeof(c), .id = any_id() };
	int rc = ioctl(fd, IOMMU_DESTROY, &c);

	out("DESTROY id=%u -> %s", c.id, res(rc));
}

static void op_map(void)
{
	int bi;
	struct iommu_ioas_map c = {
		.size = sizeof(c),
		.flags = map_flags(),
		.ioas_id = an_ioas(),
		.user_va = a_uptr(&bi),
		.length = a_length(),
		.iova = an_iova(),
	};
	uint64_t off = c.user_va - (uint64_t)bufs[bi];
	int rc = ioctl(fd, IOMMU_IOAS_MAP, &c);

	out("IOAS_MAP ioas=%u flags=%#x buf=%d+%#" PRIx64 " len=%#" PRIx64 " -> %s iova=%#" PRIx64,
	    c.ioas_id, c.flags, bi, off, c.length, res(rc), c.iova);
	if (!rc)
		note_iova(c.iova);
}

static void op_map_file(void)
{
	struct iommu_ioas_map_file c = {
		.size = sizeof(c),
		.flags = map_flags(),
		.ioas_id = an_ioas(),
		/* Another file: the iommufd (stdio differs between runs). */
		.fd = chance(90) ? memfd : fd,
		.start = chance(70) ? below(BUF_PAGES / 2) * PAGE : below(3 * PAGE),
		.length = a_length(),
		.iova = an_iova(),
	};
	int rc = ioctl(fd, IOMMU_IOAS_MAP_FILE, &c);

	out("IOAS_MAP_FILE ioas=%u flags=%#x fd=%s start=%#" PRIx64 " len=%#" PRIx64 " -> %s iova=%#" PRIx64,
	    c.ioas_id, c.flags, c.fd == memfd ? "memfd" : "iommufd", c.start, c.length, res(rc), c.iova);
	if (!rc)
		note_iova(c.iova);
}

static void op_unmap(void)
{
	struct iommu_ioas_unmap c = { .size = sizeof(c), .ioas_id = an_ioas() };
	int rc;

	if (chance(10)) {
		c.iova = 0;
		c.length = UINT64_MAX;
	} else {
		c.iova = an_iova();
		c.length = a_length();
	}
	out("IOAS_UNMAP ioas=%u iova=%#" PRIx64 " len=%#" PRIx64 " ...", c.ioas_id, c.iova, c.length);
	rc = ioctl(fd, IOMMU_IOAS_UNMAP, &c);
	out("  -> %s unmapped=%#" PRIx64, res(rc), c.length);
}

static void op_copy(void)
{
	struct iommu_ioas_copy c = {
		.size = sizeof(c),
		.flags = map_flags(),
		.dst_ioas_id = an_ioas(),
		.src_ioas_id = an_ioas(),
		.length = a_length(),
		.dst_iova = an_iova(),
		.src_iova = an_iova(),
	};
	int rc = ioctl(fd, IOMMU_IOAS_COPY, &c);

	out("IOAS_COPY dst=%u src=%u flags=%#x len=%#" PRIx64 " src_iova=%#" PRIx64 " -> %s dst_iova=%#" PRIx64,
	    c.dst_ioas_id, c.src_ioas_id, c.flags, c.length, c.src_iova, res(rc), c.dst_iova);
	if (!rc)
		note_iova(c.dst_iova);
}

static void op_iova_ranges(void)
{
	struct iommu_iova_range r[4];
	struct iommu_ioas_iova_ranges c = {
		.size = sizeof(c),
		.ioas_id = an_ioas(),
		.num_iovas = below(5),
		.allowed_iovas = (uintptr_t)r,
	};
	int rc, i;

	memset(r, 0, sizeof(r));
	rc = ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &c);
	out("IOAS_IOVA_RANGES ioas=%u -> %s num=%u align=%#" PRIx64, c.ioas_id, res(rc), c.num_iovas,
	    (uint64_t)c.out_iova_alignment);
	for (i = 0; !rc && i < (int)c.num_iovas && i < 4; i++)
		out("  [%#" PRIx64 ", %#" PRIx64 "]", (uint64_t)r[i].start, (uint64_t)r[i].last);
}

static void op_allow_iovas(void)
{
	struct iommu_iova_range r[2];
	struct iommu_ioas_allow_iovas c = {
		.size = sizeof(c),
		.ioas_id = an_ioas(),
		.num_iovas = below(3),
		.allowed_iovas = (uintptr_t)r,
	};
	int rc;

	r[0].start = chance(50) ? 0 : MOCK_APERTURE_START;
	r[0].last = chance(70) ? UINT64_MAX : r[0].start + below(1UL << 30);
	r[1].start = an_iova();
	r[1].last = r[1].start + below(1UL << 24);
	rc = ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &c);
	out("IOAS_ALLOW_IOVAS ioas=%u num=%u [%#" PRIx64 ",%#" PRIx64 "] [%#" PRIx64 ",%#" PRIx64 "] -> %s",
	    c.ioas_id, c.num_iovas, (uint64_t)r[0].start, (uint64_t)r[0].last, (uint64_t)r[1].start,
	    (uint64_t)r[1].last, res(rc));
}

static void op_option(void)
{
	struct iommu_option c = {
		.size = sizeof(c),
		.option_id = chance(50) ? IOMMU_OPTION_RLIMIT_MODE : (chance(90) ? IOMMU_OPTION_HUGE_PAGES : 7),
		.op = chance(50) ? IOMMU_OPTION_OP_SET : (chance(95) ? IOMMU_OPTION_OP_GET : 5),
		.val64 = below(3),
	};
	int rc;

	c.object_id = c.option_id == IOMMU_OPTION_HUGE_PAGES || chance(10) ? an_ioas() : 0;
	rc = ioctl(fd, IOMMU_OPTION, &c);
	out("OPTION id=%u op=%u obj=%u -> %s val=%" PRIu64, c.option_id, c.op, c.object_id, res(rc),
	    (uint64_t)c.val64);
}

static int test_cmd(struct iommu_test_cmd *c)
{
	c->size = sizeof(*c);
	return ioctl(fd, IOMMU_TEST_CMD, c);
}

static void op_mock_domain(void)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, .id = chance(70) ? an_ioas() : a_hwpt() };
	int rc;

	if (chance(70))
		c.mock_domain_flags.dev_flags = 0;
	else
		c.mock_domain_flags.dev_flags = 1 << below(3);
	if (chance(10))
		c.op = IOMMU_TEST_OP_MOCK_DOMAIN;
	rc = test_cmd(&c);
	out("MOCK_DOMAIN pt=%u flags=%#x -> %s stdev=%u hwpt=%u idev=%u", c.id, c.mock_domain_flags.dev_flags,
	    res(rc), rc ? 0 : c.mock_domain.out_stdev_id, rc ? 0 : c.mock_domain.out_hwpt_id,
	    rc ? 0 : c.mock_domain.out_idev_id);
	if (!rc && nmock < 8) {
		mocks[nmock].stdev = c.mock_domain.out_stdev_id;
		mocks[nmock].hwpt = c.mock_domain.out_hwpt_id;
		mocks[nmock].idev = c.mock_domain.out_idev_id;
		seen_id(c.mock_domain.out_stdev_id);
		seen_id(c.mock_domain.out_hwpt_id);
		seen_id(c.mock_domain.out_idev_id);
		nmock++;
	}
}

static void op_replace(void)
{
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
		.id = nmock && chance(90) ? mocks[below(nmock)].stdev : any_id(),
		.mock_domain_replace.pt_id = chance(50) ? an_ioas() : a_hwpt(),
	};
	uint32_t pt = c.mock_domain_replace.pt_id;
	int rc = test_cmd(&c);

	out("MOCK_DOMAIN_REPLACE stdev=%u pt=%u -> %s hwpt=%u", c.id, pt, res(rc),
	    rc ? 0 : c.mock_domain_replace.pt_id);
}

static void op_hwpt_alloc(void)
{
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	struct iommu_hwpt_alloc c = {
		.size = sizeof(c),
		.dev_id = a_dev(),
		.pt_id = chance(60) ? an_ioas() : a_hwpt(),
	};
	int rc;

	if (chance(30))
		c.flags |= IOMMU_HWPT_ALLOC_NEST_PARENT;
	if (chance(30))
		c.flags |= IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
	if (chance(5))
		c.flags |= 1 << below(6);
	if (chance(30)) {
		c.data_type = IOMMU_HWPT_DATA_SELFTEST;
		c.data_len = chance(80) ? 4 : sizeof(data);
		c.data_uptr = (uintptr_t)&data;
	}
	rc = ioctl(fd, IOMMU_HWPT_ALLOC, &c);
	out("HWPT_ALLOC dev=%u pt=%u flags=%#x data=%u/%u -> %s id=%u", c.dev_id, c.pt_id, c.flags, c.data_type,
	    c.data_len, res(rc), rc ? 0 : c.out_hwpt_id);
	if (!rc && nhwpt < 16) {
		hwpts[nhwpt++] = c.out_hwpt_id;
		seen_id(c.out_hwpt_id);
	}
}

static void op_invalidate(void)
{
	struct iommu_hwpt_invalidate_selftest inv = { .flags = IOMMU_TEST_INVALIDATE_FLAG_ALL };
	struct iommu_hwpt_invalidate c = {
		.size = sizeof(c),
		.hwpt_id = a_hwpt(),
		.data_uptr = (uintptr_t)&inv,
		.data_type = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
		.entry_len = sizeof(inv),
		.entry_num = below(2),
	};
	int rc = ioctl(fd, IOMMU_HWPT_INVALIDATE, &c);

	out("HWPT_INVALIDATE id=%u -> %s num=%u", c.hwpt_id, res(rc), c.entry_num);
}

static void op_get_hw_info(void)
{
	struct iommu_test_hw_info info;
	struct iommu_hw_info c = {
		.size = sizeof(c),
		.dev_id = a_dev(),
		.data_len = chance(80) ? sizeof(info) : below(16),
		.data_uptr = (uintptr_t)&info,
	};
	int rc;

	memset(&info, 0xa5, sizeof(info));
	rc = ioctl(fd, IOMMU_GET_HW_INFO, &c);
	out("GET_HW_INFO dev=%u -> %s type=%#x len=%u caps=%#" PRIx64 " pasid=%u reg=%#x", c.dev_id, res(rc),
	    c.out_data_type, c.data_len, (uint64_t)c.out_capabilities, c.out_max_pasid_log2,
	    rc ? 0 : info.test_reg);
}

static void op_dirty_tracking(void)
{
	struct iommu_hwpt_set_dirty_tracking c = {
		.size = sizeof(c),
		.flags = chance(70) ? IOMMU_HWPT_DIRTY_TRACKING_ENABLE : 0,
		.hwpt_id = a_hwpt(),
	};
	int rc = ioctl(fd, IOMMU_HWPT_SET_DIRTY_TRACKING, &c);

	out("SET_DIRTY_TRACKING id=%u flags=%u -> %s", c.hwpt_id, c.flags, res(rc));
}

static void op_dirty_bitmap(void)
{
	uint64_t bitmap[8];
	struct iommu_hwpt_get_dirty_bitmap c = {
		.size = sizeof(c),
		.hwpt_id = a_hwpt(),
		.flags = chance(20) ? IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR : 0,
		.iova = an_iova(),
		.length = chance(70) ? (1 + below(16)) * PAGE : a_length(),
		.page_size = chance(80) ? PAGE : MOCK_PAGE_SIZE,
		.data = (uintptr_t)bitmap,
	};
	int rc;

	if (c.length / c.page_size > 8 * 64)
		c.length = 8 * 64 * c.page_size;
	memset(bitmap, 0, sizeof(bitmap));
	rc = ioctl(fd, IOMMU_HWPT_GET_DIRTY_BITMAP, &c);
	out("GET_DIRTY_BITMAP id=%u iova=%#" PRIx64 " len=%#" PRIx64 " ps=%#" PRIx64 " flags=%u -> %s bits=%#" PRIx64
	    ",%#" PRIx64,
	    c.hwpt_id, (uint64_t)c.iova, (uint64_t)c.length, (uint64_t)c.page_size, c.flags, res(rc), bitmap[0],
	    bitmap[1]);
}

static void op_test_dirty(void)
{
	uint64_t bitmap[2] = { rnd(), rnd() };
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_DIRTY,
		.id = a_hwpt(),
		.dirty = {
			.iova = an_iova(),
			.length = (1 + below(32)) * MOCK_PAGE_SIZE,
			.page_size = MOCK_PAGE_SIZE,
			.uptr = (uintptr_t)bitmap,
		},
	};
	uint64_t iova = c.dirty.iova;
	int rc = test_cmd(&c);

	out("TEST_DIRTY id=%u iova=%#" PRIx64 " len=%#" PRIx64 " -> %s nr=%" PRIu64, c.id, iova,
	    (uint64_t)c.dirty.length, res(rc), rc ? 0 : (uint64_t)c.dirty.out_nr_dirty);
}

static void op_check_map(void)
{
	int bi;
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_MD_CHECK_MAP,
		.id = a_hwpt(),
		.check_map = { .iova = an_iova(), .length = chance(70) ? PAGE * (1 + below(4)) : a_length() },
	};
	int rc;

	c.check_map.uptr = a_uptr(&bi);
	rc = test_cmd(&c);
	out("MD_CHECK_MAP id=%u iova=%#" PRIx64 " len=%#" PRIx64 " buf=%d+%#" PRIx64 " -> %s", c.id,
	    (uint64_t)c.check_map.iova, (uint64_t)c.check_map.length, bi,
	    (uint64_t)c.check_map.uptr - (uint64_t)bufs[bi], res(rc));
}

static void op_check_refs(void)
{
	int bi;
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_MD_CHECK_REFS,
		.check_refs = { .length = PAGE * (1 + below(4)), .refs = below(4) },
	};
	int rc;

	c.check_refs.uptr = a_uptr(&bi);
	rc = test_cmd(&c);
	out("MD_CHECK_REFS buf=%d+%#" PRIx64 " len=%#" PRIx64 " refs=%u -> %s", bi,
	    (uint64_t)c.check_refs.uptr - (uint64_t)bufs[bi], (uint64_t)c.check_refs.length, c.check_refs.refs,
	    res(rc));
}

static void op_create_access(void)
{
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_CREATE_ACCESS,
		.id = an_ioas(),
		.create_access.flags = chance(70) ? MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES : 0,
	};
	int rc = test_cmd(&c);

	out("CREATE_ACCESS ioas=%u flags=%u -> %s fd=%d", c.id, c.create_access.flags, res(rc),
	    rc ? -1 : (int)c.create_access.out_access_fd);
	if (!rc && naccess < 8)
		access_fds[naccess++] = c.create_access.out_access_fd;
}

static int an_access(void)
{
	if (!naccess || chance(5))
		return below(8);
	return access_fds[below(naccess)];
}

static void op_access_pages(void)
{
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_ACCESS_PAGES,
		.id = an_access(),
		.access_pages = {
			.flags = chance(60) ? MOCK_FLAGS_ACCESS_WRITE : 0,
			.iova = an_iova(),
			.length = chance(70) ? PAGE * (1 + below(4)) : a_length(),
		},
	};
	int rc = test_cmd(&c);

	out("ACCESS_PAGES fd=%u iova=%#" PRIx64 " len=%#" PRIx64 " flags=%u -> %s item=%u", c.id,
	    (uint64_t)c.access_pages.iova, (uint64_t)c.access_pages.length, c.access_pages.flags, res(rc),
	    rc ? 0 : c.access_pages.out_access_pages_id);
	if (!rc && nitems < 16)
		access_items[nitems++] = c.access_pages.out_access_pages_id;
}

static void op_destroy_access_pages(void)
{
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_DESTROY_ACCESS_PAGES,
		.id = an_access(),
		.destroy_access_pages.access_pages_id = nitems && chance(80) ? access_items[below(nitems)] : below(4),
	};
	int rc = test_cmd(&c);

	out("DESTROY_ACCESS_PAGES fd=%u item=%u -> %s", c.id, c.destroy_access_pages.access_pages_id, res(rc));
}

static uint32_t checksum(const unsigned char *p, size_t n)
{
	uint32_t h = 2166136261u;

	while (n--)
		h = (h ^ *p++) * 16777619u;
	return h;
}

static void op_access_rw(void)
{
	static unsigned char data[4 * 4096];
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_ACCESS_RW,
		.id = an_access(),
		.access_rw = {
			.iova = an_iova(),
			.length = 1 + below(sizeof(data) - 1),
			.uptr = (uintptr_t)data,
			.flags = (chance(50) ? MOCK_ACCESS_RW_WRITE : 0) | (chance(30) ? MOCK_ACCESS_RW_SLOW_PATH : 0),
		},
	};
	size_t i;
	int rc;

	for (i = 0; i < sizeof(data); i++)
		data[i] = c.access_rw.flags & MOCK_ACCESS_RW_WRITE ? (unsigned char)rnd() : 0;
	rc = test_cmd(&c);
	out("ACCESS_RW fd=%u iova=%#" PRIx64 " len=%#" PRIx64 " flags=%u -> %s sum=%#x", c.id,
	    (uint64_t)c.access_rw.iova, (uint64_t)c.access_rw.length, c.access_rw.flags, res(rc),
	    checksum(data, c.access_rw.length));
}

static void op_close_access(void)
{
	int i, rc;

	if (!naccess)
		return;
	i = below(naccess);
	rc = close(access_fds[i]);
	out("CLOSE access fd=%d -> %s", access_fds[i], res(rc));
	access_fds[i] = access_fds[--naccess];
}

static void op_fault_alloc(void)
{
	struct iommu_fault_alloc c = { .size = sizeof(c), .flags = chance(5) };
	int rc = ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &c);

	out("FAULT_QUEUE_ALLOC -> %s id=%u fd=%d", res(rc), rc ? 0 : c.out_fault_id, rc ? -1 : (int)c.out_fault_fd);
	if (!rc) {
		seen_id(c.out_fault_id);
		if (chance(50))
			close(c.out_fault_fd);
	}
}

static void op_vfio_ioas(void)
{
	struct iommu_vfio_ioas c = { .size = sizeof(c), .op = below(4), .ioas_id = an_ioas() };
	int rc = ioctl(fd, IOMMU_VFIO_IOAS, &c);

	out("VFIO_IOAS op=%u -> %s id=%u", c.op, res(rc), c.ioas_id);
}

static void op_set_limit(void)
{
	/* Only valid values: a tiny limit changes batch sizes, not results. */
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, .memory_limit.limit = 1 + below(64) };
	int rc = test_cmd(&c);

	out("SET_TEMP_MEMORY_LIMIT %u -> %s", c.memory_limit.limit, res(rc));
	c.memory_limit.limit = 65536;
	test_cmd(&c);
}

static void op_new_fd(void)
{
	/* Descriptor numbers must be the kernel's: open something plain. */
	int n = open("/dev/null", O_RDONLY);

	out("OPEN /dev/null -> fd=%d", n);
	close(n);
}

static void op_add_reserved(void)
{
	struct iommu_test_cmd c = {
		.op = IOMMU_TEST_OP_ADD_RESERVED,
		.id = an_ioas(),
		.add_reserved = { .start = an_iova(), .length = a_length() },
	};
	int rc = test_cmd(&c);

	out("ADD_RESERVED ioas=%u start=%#" PRIx64 " len=%#" PRIx64 " -> %s", c.id, (uint64_t)c.add_reserved.start,
	    (uint64_t)c.add_reserved.length, res(rc));
}

struct op {
	void (*fn)(void);
	int weight;
};

static const struct op ops[] = {
	{ op_ioas_alloc, 6 },	   { op_destroy, 4 },	    { op_map, 14 },		{ op_map_file, 4 },
	{ op_unmap, 8 },	   { op_copy, 5 },	    { op_iova_ranges, 3 },	{ op_allow_iovas, 2 },
	{ op_option, 4 },	   { op_mock_domain, 6 },  { op_replace, 2 },		{ op_hwpt_alloc, 5 },
	{ op_invalidate, 2 },	   { op_get_hw_info, 2 },  { op_dirty_tracking, 3 }, { op_dirty_bitmap, 4 },
	{ op_test_dirty, 3 },	   { op_check_map, 6 },	    { op_check_refs, 5 },	{ op_create_access, 4 },
	{ op_access_pages, 5 },   { op_destroy_access_pages, 3 }, { op_access_rw, 6 }, { op_close_access, 1 },
	{ op_fault_alloc, 2 },	   { op_vfio_ioas, 2 },	    { op_set_limit, 1 },	{ op_new_fd, 1 },
	{ op_add_reserved, 2 },
};

static void setup_buffers(void)
{
	int i;

	for (i = 0; i < NBUF; i++) {
		/* Two shared, two private; none of them THP (refcounts). */
		int flags = (i < 2 ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
		void *p = mmap((void *)(BUF_BASE + i * BUF_STRIDE), BUF_PAGES * PAGE, PROT_READ | PROT_WRITE, flags,
			       -1, 0);

		if (p == MAP_FAILED) {
			perror("mmap");
			exit(2);
		}
		madvise(p, BUF_PAGES * PAGE, MADV_NOHUGEPAGE);
		memset(p, 0x11 * (i + 1), BUF_PAGES * PAGE);
		bufs[i] = p;
	}
	memfd = memfd_create("iommufd_diff", 0);
	if (memfd < 0 || ftruncate(memfd, BUF_PAGES * PAGE)) {
		perror("memfd");
		exit(2);
	}
}

static void teardown(void)
{
	int i;

	for (i = 0; i < NBUF; i++)
		munmap(bufs[i], BUF_PAGES * PAGE);
	close(memfd);
	for (i = 3; i < 1024; i++)
		close(i);
}

static void run(uint64_t seed, int steps)
{
	int total = 0, i;

	for (i = 0; i < (int)(sizeof(ops) / sizeof(ops[0])); i++)
		total += ops[i].weight;
	rng = seed * 0x9E3779B97F4A7C15ULL + 1;
	max_id = nioas = nhwpt = nmock = naccess = nitems = niova = 0;
	for (i = 3; i < 1024; i++)
		close(i);
	setup_buffers();
	fd = open("/dev/iommu", O_RDWR);
	printf("=== seed %" PRIu64 " (/dev/iommu fd %d)\n", seed, fd);
	if (fd < 0)
		exit(2);
	for (step = 0; step < steps; step++) {
		int pick = below(total);

		for (i = 0; pick >= ops[i].weight; i++)
			pick -= ops[i].weight;
		ops[i].fn();
	}
	fflush(stdout);
	teardown();
}

int main(int argc, char **argv)
{
	uint64_t first, last;
	int steps = argc > 2 ? atoi(argv[2]) : 200;
	char *dash;

	if (argc < 2) {
		fprintf(stderr, "usage: %s SEED|FIRST-LAST [STEPS]\n", argv[0]);
		return 2;
	}
	first = strtoull(argv[1], &dash, 0);
	last = *dash == '-' ? strtoull(dash + 1, NULL, 0) : first;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (; first <= last; first++)
		run(first, steps);
	return 0;
}
