/* SPDX-License-Identifier: Apache-2.0 */
/*
 * amd_nested: the iommufd calls a VMM makes to give a guest an AMD IOMMU
 * with nested translation (a guest DTE over a host v1 table), with a DMA
 * engine behind it whose DMA the guest's own GCR3 and page tables
 * translate.
 *
 * Only the kernel's uAPI is used, so the program runs unchanged on an AMD
 * machine with such a device bound to vfio-pci. Under uiommufd:
 *
 *   cargo build --release
 *   cc -O2 -Wall -I include -o amd_nested examples/c/amd_nested.c
 *   ./target/release/uiommufd run --iommu amd --device dma-engine -- ./amd_nested
 *   ./target/release/uiommufd run --iommu amd:nested=1 --device dma-engine -- ./amd_nested
 *
 * The flow:
 *  1. bind the device; IOMMU_GET_HW_INFO says AMD and gives EFR and EFR2,
 *     from which the VMM decides what its virtual IOMMU offers (GTSup,
 *     GIoSup, GATS, GLXSup, PASmax; EFR2.GCR3TRPModeSup for nesting);
 *  2. "guest RAM" (our memory) is mapped into an IOAS at a fixed GPA, and
 *     a NEST_PARENT HWPT made from it (the host v1 table), with dirty
 *     tracking when EFR.HDSup says the IOMMU can;
 *  3. IOMMU_VIOMMU_ALLOC on it. Linux 7.3 has no AMD vIOMMU type: its
 *     driver takes any type but IOMMU_VIOMMU_TYPE_DEFAULT;
 *  4. the "guest" writes a GCR3 table and a 4-level x86-64 table into its
 *     RAM and a DTE for its device (V, GV, GIoV, the GCR3 table's GPA, its
 *     domain ID); the VMM passes the DTE to IOMMU_HWPT_ALLOC
 *     (IOMMU_HWPT_DATA_AMD_GUEST, pt_id = the vIOMMU). Linux 7.3 builds
 *     the driver's nested allocation but does not wire it into the vIOMMU:
 *     the answer there is EOPNOTSUPP, and the program stops, as a VMM must
 *     on 7.3. Where it is wired (uiommufd's `amd:nested=1`, the follow-up
 *     series), a DTE the driver refuses is EINVAL, and the device is
 *     attached to the nested HWPT;
 *  5. the device copies through the guest's translation; the guest remaps
 *     a page: the IOMMU keeps using its cached translation until an
 *     INVALIDATE_IOMMU_PAGES reaches the host domain ID; the guest has no
 *     way to send one in 7.3, but every change of the parent makes the
 *     kernel flush all host domain IDs of the vIOMMU (an IOMMU_IOAS_UNMAP
 *     of a scratch page here);
 *  6. the guest's writes show in the parent's dirty bitmap;
 *  7. the guest unmaps the page: the device's write faults (the IOMMU logs
 *     an IO_PAGE_FAULT; 7.3 has no AMD vEVENTQ to report it to the VMM).
 *
 * Exit status 0 when everything happened as on hardware.
 *
 * Usage: amd_nested [CDEV]   (default /dev/vfio/devices/vfio0)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>

#include "udma.h" /* the device's datasheet */

/* ---- AMD IOMMU structures (AMD I/O Virtualization Technology, 48882). ---- */

/* EFR fields (MMIO 0030h). */
#define EFR_GT_SUP (1ull << 4)
#define EFR_HATS(efr) (((efr) >> 10) & 3)
#define EFR_GATS(efr) (((efr) >> 12) & 3)
#define EFR_GLX_SUP(efr) (((efr) >> 14) & 3)
#define EFR_PASMAX(efr) (((efr) >> 32) & 0x1f)
#define EFR_GIO_SUP (1ull << 48)
#define EFR_HD_SUP (1ull << 52)
/* EFR2 (MMIO 01A0h). */
#define EFR2_GCR3TRP_MODE_SUP (1ull << 3)

/* Device Table Entry (§2.2.2.1), as 64-bit words. */
#define DTE0_V (1ull << 0)
#define DTE0_MODE(n) ((uint64_t)(n) << 9)
#define DTE0_GIOV (1ull << 54)
#define DTE0_GV (1ull << 55)
#define DTE0_GCR3_14_12(gpa) ((((gpa) >> 12) & 7) << 58)
#define DTE1_DOMID(n) ((uint64_t)(n))
#define DTE1_GCR3_30_15(gpa) ((((gpa) >> 15) & 0xffff) << 16)
#define DTE1_GCR3_51_31(gpa) ((((gpa) >> 31) & 0x1fffff) << 43)

/* GCR3 table entry: valid, the guest CR3 in 51:12. */
#define GCR3_VALID 1ull

/* x86-64 page table entries (§2.2.6): P, R/W, U/S, A. */
#define PTE (0x1ull | 0x2ull | 0x4ull | 0x20ull)

/* Linux 7.3 has no AMD vIOMMU type; the AMD driver takes any but 0. */
#define AMD_VIOMMU_TYPE 1

/* ---- The "guest". ---- */

#define PS 4096ull
#define GPA_BASE 0x40000000ull /* where guest RAM sits in the host table */
#define GUEST_PAGES 32
#define GUEST_DOMID 7
#define RING_IOVA 0x1234000000ull /* guest IOVAs (no PASID: GIoV) */
#define SRC_IOVA (RING_IOVA + PS)
#define DST_IOVA (RING_IOVA + 2 * PS)
#define SCRATCH_GPA (GPA_BASE + 0x40000000ull)

enum { GCR3, PML4, PDPT, PD, PT, RING_PAGE = 8, SRC_PAGE, DST_A, DST_B };

static uint8_t *guest;

static uint64_t gpa(unsigned int page)
{
	return GPA_BASE + page * PS;
}

static uint64_t *gptr(uint64_t gpa)
{
	return (uint64_t *)(guest + (gpa - GPA_BASE));
}

/* Index of `iova` at x86-64 level `level` (3: PML4 .. 0: PT). */
static unsigned int idx(uint64_t iova, int level)
{
	return (iova >> (12 + 9 * level)) & 0x1ff;
}

static void guest_map(uint64_t iova, uint64_t page_gpa)
{
	__atomic_store_n(gptr(gpa(PT)) + idx(iova, 0), page_gpa ? page_gpa | PTE : 0, __ATOMIC_RELEASE);
}

/* ---- Plumbing. ---- */

static int failures;

#define die(...)                                                               \
	do {                                                                   \
		fprintf(stderr, "amd_nested: " __VA_ARGS__);                   \
		fprintf(stderr, "\n");                                         \
		exit(2);                                                       \
	} while (0)

#define check(cond, ...)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			failures++;                                            \
			fprintf(stderr, "amd_nested: MISMATCH: " __VA_ARGS__); \
			fprintf(stderr, "\n");                                 \
		}                                                              \
	} while (0)

static int iommufd, dev;
static volatile uint8_t *bar;
static struct udma_desc *ring;
static unsigned int tail;

static void ioctl_or_die(int fd, unsigned long req, void *arg, const char *name)
{
	if (ioctl(fd, req, arg))
		die("%s: %s", name, strerror(errno));
}

/* Queue one copy and wait for the device to finish it; its status. */
static uint32_t copy(uint64_t dst, uint64_t src, uint64_t len)
{
	struct udma_desc *d = &ring[tail % 64];
	struct timespec ts = { 0, 100000 };
	int spins;

	*d = (struct udma_desc){ .opcode = UDMA_OP_COPY, .src = src, .dst = dst, .len = len };
	tail++;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	*(volatile uint32_t *)(bar + UDMA_TAIL) = tail % 64;
	for (spins = 0; spins < 50000; spins++) {
		uint32_t st = __atomic_load_n(&d->status, __ATOMIC_ACQUIRE);

		if (st != UDMA_ST_NONE)
			return st;
		nanosleep(&ts, NULL);
	}
	die("the copy did not complete");
}

/* A nested HWPT from the guest's DTE; 0 and errno on failure. */
static uint32_t nested_hwpt(uint32_t dev_id, uint32_t viommu_id, const struct iommu_hwpt_amd_guest *gdte)
{
	struct iommu_hwpt_alloc nested = {
		.size = sizeof(nested),
		.dev_id = dev_id,
		.pt_id = viommu_id,
		.data_type = IOMMU_HWPT_DATA_AMD_GUEST,
		.data_len = sizeof(*gdte),
		.data_uptr = (uintptr_t)gdte,
	};

	if (ioctl(iommufd, IOMMU_HWPT_ALLOC, &nested))
		return 0;
	return nested.out_hwpt_id;
}

int main(int argc, char **argv)
{
	const char *cdev = argc > 1 ? argv[1] : "/dev/vfio/devices/vfio0";
	struct iommu_hw_info_amd amd = { 0 };
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	struct vfio_region_info bar0 = { .argsz = sizeof(bar0), .index = VFIO_PCI_BAR0_REGION_INDEX };
	uint16_t cmd16;
	int dirty;

	dev = open(cdev, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		die("open %s: %s", cdev, strerror(errno));
	iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0)
		die("open /dev/iommu: %s", strerror(errno));

	/* 1. Bind; what the IOMMU is. */
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	ioctl_or_die(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind, "VFIO_DEVICE_BIND_IOMMUFD");
	struct iommu_hw_info info = {
		.size = sizeof(info),
		.dev_id = bind.out_devid,
		.data_len = sizeof(amd),
		.data_uptr = (uintptr_t)&amd,
	};
	ioctl_or_die(iommufd, IOMMU_GET_HW_INFO, &info, "IOMMU_GET_HW_INFO");
	if (info.out_data_type != IOMMU_HW_INFO_TYPE_AMD)
		die("the device is not behind an AMD IOMMU (hw_info type %u)", info.out_data_type);
	printf("AMD-Vi: EFR %#" PRIx64 " EFR2 %#" PRIx64 "\n", (uint64_t)amd.efr, (uint64_t)amd.efr2);
	printf("  GTSup %d GIoSup %d HDSup %d HATS %u GATS %u GLXSup %u PASmax %u GCR3TRPModeSup %d\n",
	       !!(amd.efr & EFR_GT_SUP), !!(amd.efr & EFR_GIO_SUP), !!(amd.efr & EFR_HD_SUP),
	       (unsigned int)EFR_HATS(amd.efr), (unsigned int)EFR_GATS(amd.efr), (unsigned int)EFR_GLX_SUP(amd.efr),
	       (unsigned int)EFR_PASMAX(amd.efr), !!(amd.efr2 & EFR2_GCR3TRP_MODE_SUP));
	if (!(amd.efr & EFR_GT_SUP) || !(amd.efr & EFR_GIO_SUP) || !(amd.efr2 & EFR2_GCR3TRP_MODE_SUP))
		die("this IOMMU cannot be a nest parent (GTSup, GIoSup and GCR3TRPModeSup are needed)");
	dirty = !!(amd.efr & EFR_HD_SUP);
	check(!!(info.out_capabilities & IOMMU_HW_CAP_DIRTY_TRACKING) == dirty,
	      "IOMMU_HW_CAP_DIRTY_TRACKING must follow HDSup");

	/* 2. Guest RAM at GPA_BASE; the NEST_PARENT HWPT (host v1 table). */
	guest = mmap(NULL, GUEST_PAGES * PS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (guest == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	struct iommu_ioas_alloc ioas = { .size = sizeof(ioas) };
	ioctl_or_die(iommufd, IOMMU_IOAS_ALLOC, &ioas, "IOMMU_IOAS_ALLOC");
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas.out_ioas_id,
		.user_va = (uintptr_t)guest,
		.length = GUEST_PAGES * PS,
		.iova = GPA_BASE,
	};
	ioctl_or_die(iommufd, IOMMU_IOAS_MAP, &map, "IOMMU_IOAS_MAP");
	struct iommu_hwpt_alloc parent = {
		.size = sizeof(parent),
		.flags = IOMMU_HWPT_ALLOC_NEST_PARENT | (dirty ? IOMMU_HWPT_ALLOC_DIRTY_TRACKING : 0),
		.dev_id = bind.out_devid,
		.pt_id = ioas.out_ioas_id,
	};
	ioctl_or_die(iommufd, IOMMU_HWPT_ALLOC, &parent, "IOMMU_HWPT_ALLOC(NEST_PARENT)");

	/* 3. The vIOMMU. */
	struct iommu_viommu_alloc va = {
		.size = sizeof(va),
		.type = AMD_VIOMMU_TYPE,
		.dev_id = bind.out_devid,
		.hwpt_id = parent.out_hwpt_id,
	};
	ioctl_or_die(iommufd, IOMMU_VIOMMU_ALLOC, &va, "IOMMU_VIOMMU_ALLOC");
	printf("NEST_PARENT HWPT %u%s, vIOMMU %u\n", parent.out_hwpt_id, dirty ? " (dirty tracking)" : "",
	       va.out_viommu_id);

	/* 4. The guest: GCR3 table (PASID 0) and a 4-level table, then its DTE. */
	gptr(gpa(GCR3))[0] = gpa(PML4) | GCR3_VALID;
	gptr(gpa(PML4))[idx(RING_IOVA, 3)] = gpa(PDPT) | PTE;
	gptr(gpa(PDPT))[idx(RING_IOVA, 2)] = gpa(PD) | PTE;
	gptr(gpa(PD))[idx(RING_IOVA, 1)] = gpa(PT) | PTE;
	guest_map(RING_IOVA, gpa(RING_PAGE));
	guest_map(SRC_IOVA, gpa(SRC_PAGE));
	guest_map(DST_IOVA, gpa(DST_A));
	ring = (struct udma_desc *)gptr(gpa(RING_PAGE));

	struct iommu_hwpt_amd_guest gdte = { .dte = {
		DTE0_V | DTE0_GV | DTE0_GIOV | DTE0_GCR3_14_12(gpa(GCR3)),
		DTE1_DOMID(GUEST_DOMID) | DTE1_GCR3_30_15(gpa(GCR3)) | DTE1_GCR3_51_31(gpa(GCR3)),
		0, /* 4-level guest paging */
		0,
	} };
	uint32_t nested = nested_hwpt(bind.out_devid, va.out_viommu_id, &gdte);
	if (!nested && errno == EOPNOTSUPP) {
		printf("IOMMU_HWPT_ALLOC(AMD_GUEST) on the vIOMMU: EOPNOTSUPP: this kernel (Linux 7.3) does not\n"
		       "  wire the AMD driver's nested allocation into its vIOMMU; no nested translation here\n");
		close(dev);
		close(iommufd);
		printf("OK: the AMD IOMMU as Linux 7.3 presents it\n");
		return failures ? 1 : 0;
	}
	if (!nested)
		die("IOMMU_HWPT_ALLOC(AMD_GUEST): %s", strerror(errno));
	/* The driver's checks of a guest DTE: a host Mode is refused. */
	struct iommu_hwpt_amd_guest bad = gdte;
	bad.dte[0] |= DTE0_MODE(4);
	check(nested_hwpt(bind.out_devid, va.out_viommu_id, &bad) == 0 && errno == EINVAL,
	      "a guest DTE with Mode set must be EINVAL");
	struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach), .pt_id = nested };
	ioctl_or_die(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
	printf("nested HWPT %u from the guest DTE %#" PRIx64 " %#" PRIx64 ", device attached\n", nested,
	       (uint64_t)gdte.dte[0], (uint64_t)gdte.dte[1]);

	/* The device: bus master on, BAR0, a ring at a guest IOVA. */
	ioctl_or_die(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg, "VFIO_DEVICE_GET_REGION_INFO(config)");
	ioctl_or_die(dev, VFIO_DEVICE_GET_REGION_INFO, &bar0, "VFIO_DEVICE_GET_REGION_INFO(BAR0)");
	if (pread(dev, &cmd16, 2, cfg.offset + PCI_COMMAND) != 2)
		die("config read: %s", strerror(errno));
	cmd16 |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
	if (pwrite(dev, &cmd16, 2, cfg.offset + PCI_COMMAND) != 2)
		die("config write: %s", strerror(errno));
	bar = mmap(NULL, bar0.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar0.offset);
	if (bar == MAP_FAILED)
		die("mmap BAR0: %s", strerror(errno));
	if (*(volatile uint32_t *)(bar + UDMA_ID) != UDMA_ID_VALUE)
		die("not a uiommufd DMA engine");
	*(volatile uint64_t *)(bar + UDMA_RING_BASE) = RING_IOVA;
	*(volatile uint32_t *)(bar + UDMA_RING_SIZE) = 64;
	*(volatile uint32_t *)(bar + UDMA_CTRL) = UDMA_CTRL_ENABLE;

	/* 5. DMA through the guest's translation; a stale IOTLB entry. */
	memset(gptr(gpa(SRC_PAGE)), 0xa5, 256);
	check(copy(DST_IOVA, SRC_IOVA, 256) == UDMA_ST_SUCCESS, "first copy failed");
	check(((uint8_t *)gptr(gpa(DST_A)))[255] == 0xa5, "the copy did not land in guest page DST_A");

	guest_map(DST_IOVA, gpa(DST_B));
	memset(gptr(gpa(SRC_PAGE)), 0x3c, 256);
	check(copy(DST_IOVA, SRC_IOVA, 256) == UDMA_ST_SUCCESS, "second copy failed");
	check(((uint8_t *)gptr(gpa(DST_A)))[0] == 0x3c && ((uint8_t *)gptr(gpa(DST_B)))[0] == 0,
	      "without an invalidation the IOMMU must keep the cached translation");
	printf("guest remapped DST: the device still wrote the old page (the IOTLB, as hardware does)\n");

	/* A parent change: the kernel flushes every host domain ID. */
	void *scratch = mmap(NULL, PS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct iommu_ioas_map smap = {
		.size = sizeof(smap),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
		.ioas_id = ioas.out_ioas_id,
		.user_va = (uintptr_t)scratch,
		.length = PS,
		.iova = SCRATCH_GPA,
	};
	ioctl_or_die(iommufd, IOMMU_IOAS_MAP, &smap, "IOMMU_IOAS_MAP(scratch)");
	struct iommu_ioas_unmap sunmap = { .size = sizeof(sunmap), .ioas_id = ioas.out_ioas_id, .iova = SCRATCH_GPA, .length = PS };
	ioctl_or_die(iommufd, IOMMU_IOAS_UNMAP, &sunmap, "IOMMU_IOAS_UNMAP(scratch)");
	memset(gptr(gpa(SRC_PAGE)), 0x77, 256);
	check(copy(DST_IOVA, SRC_IOVA, 256) == UDMA_ST_SUCCESS, "third copy failed");
	check(((uint8_t *)gptr(gpa(DST_B)))[0] == 0x77, "after the parent's flush the copy must land in DST_B");
	printf("after IOMMU_IOAS_UNMAP on the parent (INVALIDATE_IOMMU_PAGES of every host domain ID): the new page\n");

	/* 6. Dirty tracking on the parent sees the guest's writes. */
	if (dirty) {
		uint64_t bitmap[1] = { 0 };
		struct iommu_hwpt_set_dirty_tracking sdt = {
			.size = sizeof(sdt),
			.flags = IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
			.hwpt_id = parent.out_hwpt_id,
		};
		ioctl_or_die(iommufd, IOMMU_HWPT_SET_DIRTY_TRACKING, &sdt, "IOMMU_HWPT_SET_DIRTY_TRACKING");
		memset(gptr(gpa(SRC_PAGE)), 0x12, 16);
		check(copy(DST_IOVA, SRC_IOVA, 16) == UDMA_ST_SUCCESS, "fourth copy failed");
		struct iommu_hwpt_get_dirty_bitmap gdb = {
			.size = sizeof(gdb),
			.hwpt_id = parent.out_hwpt_id,
			.iova = GPA_BASE,
			.length = GUEST_PAGES * PS,
			.page_size = PS,
			.data = (uintptr_t)bitmap,
		};
		ioctl_or_die(iommufd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gdb, "IOMMU_HWPT_GET_DIRTY_BITMAP");
		check(bitmap[0] & (1ull << DST_B), "guest page DST_B must be dirty (bitmap %#" PRIx64 ")", bitmap[0]);
		printf("dirty bitmap of the parent: %#" PRIx64 " (guest page %u written by the device)\n", bitmap[0],
		       DST_B);
	}

	/* 7. The guest unmaps DST: the device's write faults. */
	guest_map(DST_IOVA, 0);
	ioctl_or_die(iommufd, IOMMU_IOAS_MAP, &smap, "IOMMU_IOAS_MAP(scratch)");
	ioctl_or_die(iommufd, IOMMU_IOAS_UNMAP, &sunmap, "IOMMU_IOAS_UNMAP(scratch)");
	check(copy(DST_IOVA, SRC_IOVA, 16) == UDMA_ST_WRITE_FAULT, "a write to an unmapped IOVA must fault");
	printf("guest unmapped DST: the write faulted (an IO_PAGE_FAULT in the IOMMU's event log)\n");

	/* Tidy up: closing the files destroys everything. */
	munmap((void *)bar, bar0.size);
	close(dev);
	close(iommufd);
	if (failures) {
		printf("FAILED: %d mismatch(es)\n", failures);
		return 1;
	}
	printf("OK: nested translation through the guest's GCR3 and page tables, as on an AMD IOMMU\n");
	return 0;
}
