/* SPDX-License-Identifier: Apache-2.0 */
/*
 * smmu_nested: the iommufd calls a VMM makes to give a guest an Arm SMMUv3
 * with nested translation (QEMU's accelerated SMMUv3 does the same), with
 * a DMA engine behind it whose DMA the guest's own page tables translate.
 *
 * Only the kernel's uAPI is used, so the program runs unchanged on an
 * SMMUv3 machine with such a device bound to vfio-pci. Under uiommufd:
 *
 *   cargo build --release
 *   cc -O2 -Wall -I include -o smmu_nested examples/c/smmu_nested.c
 *   ./target/release/uiommufd run --iommu smmuv3 --device dma-engine -- ./smmu_nested
 *
 * The flow:
 *  1. bind the device; IOMMU_GET_HW_INFO says ARM_SMMUV3 and gives the
 *     registers the VMM copies into its virtual SMMU (IDR0/1/3/5);
 *  2. "guest RAM" (our memory) is mapped into an IOAS at a fixed IPA, and a
 *     NEST_PARENT HWPT made from it (stage 2);
 *  3. IOMMU_VIOMMU_ALLOC (ARM_SMMUV3) on it; IOMMU_VDEVICE_ALLOC gives the
 *     device the StreamID the guest knows it by; IOMMU_VEVENTQ_ALLOC makes
 *     the queue the guest's event queue is fed from;
 *  4. the "guest" writes a CD table and a stage 1 page table into its RAM
 *     and installs an STE; the VMM passes the STE's first two words to
 *     IOMMU_HWPT_ALLOC (IOMMU_HWPT_DATA_ARM_SMMUV3, pt_id = the vIOMMU)
 *     and attaches the device to that nested HWPT;
 *  5. the device copies through the guest's translation; the guest remaps
 *     a page: until its TLBI goes through IOMMU_HWPT_INVALIDATE on the
 *     vIOMMU, the SMMU keeps using the old translation;
 *  6. the guest unmaps the page: the device's write faults, and the
 *     F_TRANSLATION event arrives on the vEVENTQ with the virtual StreamID.
 *
 * On an SMMU with NVIDIA's Tegra241 CMDQV (uiommufd: --iommu smmuv3:cmdqv=1)
 * the VMM does what QEMU does to give the guest a VCMDQ of its own: the
 * vIOMMU is of type TEGRA241_CMDQV, the VMM maps the VINTF page the kernel
 * returns (mmap of the iommufd), and IOMMU_HW_QUEUE_ALLOC makes a VCMDQ of
 * a page of guest RAM. The guest's TLBIs then go into that queue and PROD
 * is moved through the mapped page, with no system call: the SMMU consumes
 * them, CONS follows, and the stale translation is gone. Commands a VCMDQ
 * does not take (CFGI_*) still go through IOMMU_HWPT_INVALIDATE; one put
 * into the VCMDQ anyway stops it with CERROR_ILL, reported in GERROR and
 * on a vEVENTQ of type TEGRA241_CMDQV, until the guest acknowledges it. A
 * forked child shares the VINTF: its commands through the inherited mapping
 * are consumed too.
 *
 * Exit status 0 when everything happened as on hardware.
 *
 * Usage: smmu_nested [CDEV]   (default /dev/vfio/devices/vfio0)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>

#include "udma.h" /* the device's datasheet */

/* ---- SMMUv3 structures the guest writes (IHI 0070). ---- */

/* STE word 0 (§5.2): V, Config = stage 1 translate, S1ContextPtr. */
#define STE0_V (1ull << 0)
#define STE0_CFG_S1_TRANS (5ull << 1)

/* CD word 0 (§5.4). */
#define CD0_T0SZ(n) ((uint64_t)(n))
#define CD0_IRGN0_WBWA (1ull << 8)
#define CD0_ORGN0_WBWA (1ull << 10)
#define CD0_SH0_IS (3ull << 12)
#define CD0_EPD1 (1ull << 30)
#define CD0_V (1ull << 31)
#define CD0_IPS_48 (5ull << 32)
#define CD0_AA64 (1ull << 41)
#define CD0_R (1ull << 45)
#define CD0_A (1ull << 46)
#define CD0_ASET (1ull << 47)
#define CD0_ASID(n) ((uint64_t)(n) << 48)
/* The MAIR Linux programs: 0 Normal NC, 1 Normal WB, 2 Device. */
#define GUEST_MAIR 0xf404ff44ull

/* VMSAv8-64 stage 1 descriptors, 4KB granule (Arm ARM D8.3). */
#define PTE_TABLE 0x3ull
#define PTE_PAGE (0x3ull | (1ull << 2) /* AttrIndx 1 */ | (1ull << 6) /* AP[1]: EL0 */ | \
		  (3ull << 8) /* inner shareable */ | (1ull << 10) /* AF */ | (1ull << 11) /* nG */)

/* Commands (§4): opcodes and fields. */
#define CMD_TLBI_NH_ASID 0x11
#define CMD_TLBI_NH_VA 0x12
#define CMD_CFGI_CD 0x05

#define CMD_CFGI_STE 0x03
#define CMD_SYNC 0x46
#define CMD_SYNC_CS_SEV (2ull << 12)

/* Event records (§7.3). */
#define EVT_ID_F_TRANSLATION 0x10

/* Tegra241 CMDQV: LVCMDQ 0's registers in the VINTF page (32-bit). */
#define VCMDQ_CONS 0x00
#define VCMDQ_PROD 0x04
#define VCMDQ_CONFIG 0x08
#define VCMDQ_STATUS 0x0c
#define VCMDQ_GERROR 0x10
#define VCMDQ_GERRORN 0x14
#define VCMDQ_EN 1u
#define VCMDQ_CONS_ERR(cons) (((cons) >> 24) & 0x7f)
#define CERROR_ILL 1 /* SMMUv3 CMDQ_ERR (§7.1): an illegal command */
#define VCMDQ_ENTRIES 256 /* one 4 KiB page of 16-byte commands */
#define VCMDQ_WRAP (2 * VCMDQ_ENTRIES - 1) /* index bits and the wrap bit */

/* ---- The "guest". ---- */

#define PS 4096ull
#define GPA_BASE 0x40000000ull /* where guest RAM sits in stage 2 */
#define GUEST_PAGES 32
#define GUEST_ASID 3
#define VSID 0x42 /* the StreamID the guest knows the device by */
#define RING_IOVA 0x1234000000ull /* guest IOVAs (stage 1 input) */
#define SRC_IOVA (RING_IOVA + PS)
#define DST_IOVA (RING_IOVA + 2 * PS)

enum { L0, L1, L2, L3, CD_TABLE, RING_PAGE = 8, SRC_PAGE, DST_A, DST_B, VCMDQ_PAGE = 16 };

static uint8_t *guest;

static uint64_t gpa(unsigned int page)
{
	return GPA_BASE + page * PS;
}

static uint64_t *gptr(uint64_t gpa)
{
	return (uint64_t *)(guest + (gpa - GPA_BASE));
}

static unsigned int idx(uint64_t iova, int level)
{
	return (iova >> (12 + 9 * (3 - level))) & 0x1ff;
}

static void guest_map(uint64_t iova, uint64_t page_gpa)
{
	__atomic_store_n(gptr(gpa(L3)) + idx(iova, 3), page_gpa ? page_gpa | PTE_PAGE : 0, __ATOMIC_RELEASE);
}

/* ---- Plumbing. ---- */

static int failures;

#define die(...)                                                               \
	do {                                                                   \
		fprintf(stderr, "smmu_nested: " __VA_ARGS__);                  \
		fprintf(stderr, "\n");                                         \
		exit(2);                                                       \
	} while (0)

#define check(cond, ...)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			failures++;                                            \
			fprintf(stderr, "smmu_nested: MISMATCH: " __VA_ARGS__); \
			fprintf(stderr, "\n");                                 \
		}                                                              \
	} while (0)

static int iommufd, dev;
static uint32_t viommu_id;
static volatile uint8_t *bar;
static struct udma_desc *ring;
static unsigned int tail;

static void ioctl_or_die(int fd, unsigned long req, void *arg, const char *name)
{
	if (ioctl(fd, req, arg))
		die("%s: %s", name, strerror(errno));
}

/* The guest's commands, forwarded as IOMMU_HWPT_INVALIDATE on the vIOMMU. */
static void invalidate(const struct iommu_viommu_arm_smmuv3_invalidate *cmds, uint32_t n)
{
	struct iommu_hwpt_invalidate inv = {
		.size = sizeof(inv),
		.hwpt_id = viommu_id,
		.data_uptr = (uintptr_t)cmds,
		.data_type = IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
		.entry_len = sizeof(*cmds),
		.entry_num = n,
	};
	ioctl_or_die(iommufd, IOMMU_HWPT_INVALIDATE, &inv, "IOMMU_HWPT_INVALIDATE");
	check(inv.entry_num == n, "%u of %u commands handled", inv.entry_num, n);
}

/* ---- The guest's own VCMDQ (Tegra241 CMDQV). ---- */

static int cmdqv;		  /* the SMMU has a CMDQV: the guest uses a VCMDQ */
static volatile uint32_t *vintf;  /* the VINTF page, mapped from the iommufd */
static uint32_t vprod;		  /* the guest's PROD */

static uint32_t vreg(unsigned int off)
{
	return __atomic_load_n(&vintf[off / 4], __ATOMIC_ACQUIRE);
}

static void vreg_set(unsigned int off, uint32_t v)
{
	__atomic_store_n(&vintf[off / 4], v, __ATOMIC_RELEASE);
}

/* Wait until CONS reaches PROD or the queue stops on an error (GERROR's
 * CMDQ_ERR differs from GERRORN's; CONS.ERR says which); CONS. */
static uint32_t vcmdq_wait(void)
{
	struct timespec ts = { 0, 20000 };
	int spins;

	for (spins = 0; spins < 100000; spins++) {
		uint32_t cons = vreg(VCMDQ_CONS);

		if ((cons & VCMDQ_WRAP) == vprod || ((vreg(VCMDQ_GERROR) ^ vreg(VCMDQ_GERRORN)) & 1))
			return cons;
		nanosleep(&ts, NULL);
	}
	die("the SMMU did not consume the VCMDQ (CONS %#x, PROD %#x)", vreg(VCMDQ_CONS), vprod);
}

/* The guest writes n commands and a CMD_SYNC into its VCMDQ (in its RAM)
 * and moves PROD through the VINTF page: no system call. CONS after. */
static uint32_t vcmdq_issue(const uint64_t (*cmds)[2], unsigned int n)
{
	uint64_t *q = gptr(gpa(VCMDQ_PAGE));
	unsigned int i;

	for (i = 0; i <= n; i++) {
		unsigned int slot = (vprod + i) % VCMDQ_ENTRIES;

		q[2 * slot] = i < n ? cmds[i][0] : CMD_SYNC | CMD_SYNC_CS_SEV;
		q[2 * slot + 1] = i < n ? cmds[i][1] : 0;
	}
	vprod = (vprod + n + 1) & VCMDQ_WRAP;
	__atomic_thread_fence(__ATOMIC_RELEASE);
	vreg_set(VCMDQ_PROD, vprod);
	return vcmdq_wait();
}

/* A guest TLBI: into its VCMDQ where it has one, else to the VMM, which
 * passes it on with IOMMU_HWPT_INVALIDATE. */
static void guest_tlbi(uint64_t w0, uint64_t w1)
{
	struct iommu_viommu_arm_smmuv3_invalidate c = { .cmd = { w0, w1 } };

	if (cmdqv) {
		uint64_t cmd[1][2] = { { w0, w1 } };
		uint32_t cons = vcmdq_issue(cmd, 1);

		check((cons & VCMDQ_WRAP) == vprod, "CONS %#x, PROD %#x after a TLBI in the VCMDQ", cons, vprod);
		return;
	}
	invalidate(&c, 1);
}

static void tlbi_va(uint16_t asid, uint64_t va)
{
	/* VMID 0: the kernel (or the VINTF) puts the vIOMMU's own in. Leaf = 1. */
	guest_tlbi(CMD_TLBI_NH_VA | (uint64_t)asid << 48, (va & ~0xfffull) | 1);
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

int main(int argc, char **argv)
{
	const char *cdev = argc > 1 ? argv[1] : "/dev/vfio/devices/vfio0";
	struct iommu_hw_info_arm_smmuv3 smmu = { 0 };
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	struct vfio_region_info bar0 = { .argsz = sizeof(bar0), .index = VFIO_PCI_BAR0_REGION_INDEX };
	uint8_t evbuf[4096];
	uint16_t cmd16;
	ssize_t n;

	dev = open(cdev, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		die("open %s: %s", cdev, strerror(errno));
	iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0)
		die("open /dev/iommu: %s", strerror(errno));

	/* 1. Bind; what the SMMU is. */
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	ioctl_or_die(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind, "VFIO_DEVICE_BIND_IOMMUFD");
	struct iommu_hw_info info = {
		.size = sizeof(info),
		.dev_id = bind.out_devid,
		.data_len = sizeof(smmu),
		.data_uptr = (uintptr_t)&smmu,
	};
	ioctl_or_die(iommufd, IOMMU_GET_HW_INFO, &info, "IOMMU_GET_HW_INFO");
	if (info.out_data_type != IOMMU_HW_INFO_TYPE_ARM_SMMUV3)
		die("the device is not behind an SMMUv3 (hw_info type %u)", info.out_data_type);
	printf("SMMUv3.%u: IDR0 0x%08x IDR1 0x%08x IDR3 0x%08x IDR5 0x%08x IIDR 0x%08x, flags %#x\n",
	       smmu.aidr & 0xf, smmu.idr[0], smmu.idr[1], smmu.idr[3], smmu.idr[5], smmu.iidr, smmu.flags);
	printf("  ST_LEVEL %u, CD2L %u, ASID16 %u, SSIDSIZE %u, RIL %u, GRAN4K %u, GRAN64K %u\n",
	       (smmu.idr[0] >> 27) & 3, (smmu.idr[0] >> 19) & 1, (smmu.idr[0] >> 12) & 1,
	       (smmu.idr[1] >> 6) & 0x1f, (smmu.idr[3] >> 10) & 1, (smmu.idr[5] >> 4) & 1, (smmu.idr[5] >> 6) & 1);

	/* 2. Guest RAM at GPA_BASE; the stage 2 (NEST_PARENT) HWPT. */
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
	struct iommu_hwpt_alloc s2 = {
		.size = sizeof(s2),
		.flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
		.dev_id = bind.out_devid,
		.pt_id = ioas.out_ioas_id,
	};
	ioctl_or_die(iommufd, IOMMU_HWPT_ALLOC, &s2, "IOMMU_HWPT_ALLOC(NEST_PARENT)");

	/* 3. vIOMMU (with a CMDQV: its VINTF page mapped), vDEVICE, vEVENTQ. */
	struct iommu_hw_info_tegra241_cmdqv tegra = { 0 };
	struct iommu_hw_info tinfo = {
		.size = sizeof(tinfo),
		.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE,
		.dev_id = bind.out_devid,
		.data_len = sizeof(tegra),
		.data_uptr = (uintptr_t)&tegra,
		.in_data_type = IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV,
	};
	cmdqv = ioctl(iommufd, IOMMU_GET_HW_INFO, &tinfo) == 0;
	if (cmdqv)
		printf("Tegra241 CMDQV version %u: %u VCMDQs and %u StreamIDs per VINTF\n", tegra.version,
		       1u << tegra.log2vcmdqs, 1u << tegra.log2vsids);
	struct iommu_viommu_tegra241_cmdqv vdata = { 0 };
	struct iommu_viommu_alloc va = {
		.size = sizeof(va),
		.type = cmdqv ? IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV : IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
		.dev_id = bind.out_devid,
		.hwpt_id = s2.out_hwpt_id,
		.data_len = cmdqv ? sizeof(vdata) : 0,
		.data_uptr = cmdqv ? (uintptr_t)&vdata : 0,
	};
	ioctl_or_die(iommufd, IOMMU_VIOMMU_ALLOC, &va, "IOMMU_VIOMMU_ALLOC");
	viommu_id = va.out_viommu_id;
	if (cmdqv) {
		vintf = mmap(NULL, vdata.out_vintf_mmap_length, PROT_READ | PROT_WRITE, MAP_SHARED, iommufd,
			     (off_t)vdata.out_vintf_mmap_offset);
		if (vintf == MAP_FAILED)
			die("mmap of the VINTF page: %s", strerror(errno));
		printf("VINTF page: %#" PRIx64 " bytes at mmap offset %#" PRIx64 " of the iommufd\n",
		       (uint64_t)vdata.out_vintf_mmap_length, (uint64_t)vdata.out_vintf_mmap_offset);
	}
	struct iommu_vdevice_alloc vd = {
		.size = sizeof(vd),
		.viommu_id = viommu_id,
		.dev_id = bind.out_devid,
		.virt_id = VSID,
	};
	ioctl_or_die(iommufd, IOMMU_VDEVICE_ALLOC, &vd, "IOMMU_VDEVICE_ALLOC");
	struct iommu_veventq_alloc vq = {
		.size = sizeof(vq),
		.viommu_id = viommu_id,
		.type = IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
		.veventq_depth = 16,
	};
	ioctl_or_die(iommufd, IOMMU_VEVENTQ_ALLOC, &vq, "IOMMU_VEVENTQ_ALLOC");
	printf("stage 2 HWPT %u, vIOMMU %u, vDEVICE %u (virtual StreamID %#x), vEVENTQ %u (fd %u)\n",
	       s2.out_hwpt_id, viommu_id, vd.out_vdevice_id, VSID, vq.out_veventq_id, vq.out_veventq_fd);
	struct iommu_veventq_alloc tq = {
		.size = sizeof(tq),
		.viommu_id = viommu_id,
		.type = IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV,
		.veventq_depth = 4,
	};
	if (cmdqv) {
		/* The guest's VCMDQ 0: a page of its RAM. It resets CONS and
		 * PROD and enables the queue through the VINTF page. */
		ioctl_or_die(iommufd, IOMMU_VEVENTQ_ALLOC, &tq, "IOMMU_VEVENTQ_ALLOC(TEGRA241_CMDQV)");
		struct iommu_hw_queue_alloc hq = {
			.size = sizeof(hq),
			.viommu_id = viommu_id,
			.type = IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV,
			.index = 0,
			.nesting_parent_iova = gpa(VCMDQ_PAGE),
			.length = VCMDQ_ENTRIES * 16,
		};
		ioctl_or_die(iommufd, IOMMU_HW_QUEUE_ALLOC, &hq, "IOMMU_HW_QUEUE_ALLOC");
		vreg_set(VCMDQ_CONS, 0);
		vreg_set(VCMDQ_PROD, 0);
		vreg_set(VCMDQ_CONFIG, VCMDQ_EN);
		for (int spins = 0; !(vreg(VCMDQ_STATUS) & VCMDQ_EN); spins++) {
			struct timespec ts = { 0, 20000 };

			if (spins == 100000)
				die("the VCMDQ did not become enabled");
			nanosleep(&ts, NULL);
		}
		printf("HW queue %u: VCMDQ 0 of %u commands at IPA %#" PRIx64 ", enabled\n", hq.out_hw_queue_id,
		       VCMDQ_ENTRIES, gpa(VCMDQ_PAGE));
	}

	/* 4. The guest: CD 0 and a 4-level stage 1 in its RAM, then its STE. */
	uint64_t *cd = gptr(gpa(CD_TABLE));
	cd[0] = CD0_T0SZ(16) | CD0_IRGN0_WBWA | CD0_ORGN0_WBWA | CD0_SH0_IS | CD0_EPD1 | CD0_V | CD0_IPS_48 |
		CD0_AA64 | CD0_R | CD0_A | CD0_ASET | CD0_ASID(GUEST_ASID);
	cd[1] = gpa(L0); /* TTB0 */
	cd[3] = GUEST_MAIR;
	gptr(gpa(L0))[idx(RING_IOVA, 0)] = gpa(L1) | PTE_TABLE;
	gptr(gpa(L1))[idx(RING_IOVA, 1)] = gpa(L2) | PTE_TABLE;
	gptr(gpa(L2))[idx(RING_IOVA, 2)] = gpa(L3) | PTE_TABLE;
	guest_map(RING_IOVA, gpa(RING_PAGE));
	guest_map(SRC_IOVA, gpa(SRC_PAGE));
	guest_map(DST_IOVA, gpa(DST_A));
	ring = (struct udma_desc *)gptr(gpa(RING_PAGE));

	struct iommu_hwpt_arm_smmuv3 ste = { .ste = { STE0_V | STE0_CFG_S1_TRANS | gpa(CD_TABLE), 0 } };
	struct iommu_hwpt_alloc nested = {
		.size = sizeof(nested),
		.dev_id = bind.out_devid,
		.pt_id = viommu_id,
		.data_type = IOMMU_HWPT_DATA_ARM_SMMUV3,
		.data_len = sizeof(ste),
		.data_uptr = (uintptr_t)&ste,
	};
	ioctl_or_die(iommufd, IOMMU_HWPT_ALLOC, &nested, "IOMMU_HWPT_ALLOC(ARM_SMMUV3)");
	struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach), .pt_id = nested.out_hwpt_id };
	ioctl_or_die(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
	printf("nested HWPT %u from the guest STE %#" PRIx64 ", device attached\n", nested.out_hwpt_id,
	       (uint64_t)ste.ste[0]);

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

	/* 5. DMA through the guest's translation; a stale TLB entry. */
	memset(gptr(gpa(SRC_PAGE)), 0xa5, 256);
	check(copy(DST_IOVA, SRC_IOVA, 256) == UDMA_ST_SUCCESS, "first copy failed");
	check(((uint8_t *)gptr(gpa(DST_A)))[255] == 0xa5, "the copy did not land in guest page DST_A");

	guest_map(DST_IOVA, gpa(DST_B)); /* no TLBI yet */
	memset(gptr(gpa(SRC_PAGE)), 0x3c, 256);
	check(copy(DST_IOVA, SRC_IOVA, 256) == UDMA_ST_SUCCESS, "second copy failed");
	check(((uint8_t *)gptr(gpa(DST_A)))[0] == 0x3c && ((uint8_t *)gptr(gpa(DST_B)))[0] == 0,
	      "without a TLBI the SMMU must keep the cached translation");
	printf("guest remapped DST without a TLBI: the device still wrote the old page (as hardware does)\n");

	tlbi_va(GUEST_ASID, DST_IOVA);
	memset(gptr(gpa(SRC_PAGE)), 0x77, 256);
	check(copy(DST_IOVA, SRC_IOVA, 256) == UDMA_ST_SUCCESS, "third copy failed");
	check(((uint8_t *)gptr(gpa(DST_B)))[0] == 0x77, "after the TLBI the copy must land in DST_B");
	if (cmdqv)
		printf("after CMD_TLBI_NH_VA in the VCMDQ (PROD moved through the VINTF page, CONS now %#x): the new "
		       "page\n", vreg(VCMDQ_CONS));
	else
		printf("after CMD_TLBI_NH_VA through IOMMU_HWPT_INVALIDATE: the new page\n");

	/* 6. The guest unmaps DST: a fault, reported on the vEVENTQ. */
	guest_map(DST_IOVA, 0);
	guest_tlbi(CMD_TLBI_NH_ASID | (uint64_t)GUEST_ASID << 48, 0);
	/* A CFGI_CD for the vSID: the kernel turns it into the real SID (a
	 * VCMDQ does not take it: the VMM passes it on in either case). */
	struct iommu_viommu_arm_smmuv3_invalidate cfgi = { .cmd = { CMD_CFGI_CD | (uint64_t)VSID << 32, 1 } };
	invalidate(&cfgi, 1);
	check(copy(DST_IOVA, SRC_IOVA, 16) == UDMA_ST_WRITE_FAULT, "a write to an unmapped IOVA must fault");

	struct pollfd pfd = { .fd = (int)vq.out_veventq_fd, .events = POLLIN };
	check(poll(&pfd, 1, 5000) == 1 && (pfd.revents & POLLIN), "the vEVENTQ did not become readable");
	n = read((int)vq.out_veventq_fd, evbuf, sizeof(evbuf));
	check(n == (ssize_t)(sizeof(struct iommufd_vevent_header) + sizeof(struct iommu_vevent_arm_smmuv3)),
	      "read %zd bytes from the vEVENTQ", n);
	if (n >= (ssize_t)(sizeof(struct iommufd_vevent_header) + sizeof(struct iommu_vevent_arm_smmuv3))) {
		struct iommufd_vevent_header *h = (void *)evbuf;
		struct iommu_vevent_arm_smmuv3 *e = (void *)(h + 1);
		uint64_t w0 = e->evt[0], w1 = e->evt[1], w2 = e->evt[2];

		printf("vEVENTQ record %u: event %#x, StreamID %#x, %s, input address %#" PRIx64 "\n", h->sequence,
		       (unsigned int)(w0 & 0xff), (unsigned int)(w0 >> 32), (w1 >> 35) & 1 ? "read" : "write", w2);
		check(h->flags == 0 && h->sequence == 0, "header flags %#x sequence %u", h->flags, h->sequence);
		check((w0 & 0xff) == EVT_ID_F_TRANSLATION, "event ID %#x", (unsigned int)(w0 & 0xff));
		check((w0 >> 32) == VSID, "the record must carry the virtual StreamID, not %#x",
		      (unsigned int)(w0 >> 32));
		check(w2 == DST_IOVA, "input address %#" PRIx64, w2);
	}

	/* 7. A command the guest's VCMDQ does not take stops it. */
	if (cmdqv) {
		uint64_t bad[1][2] = { { CMD_CFGI_STE | (uint64_t)VSID << 32, 1 } };
		uint32_t at = vprod, cons = vcmdq_issue(bad, 1), gerror = vreg(VCMDQ_GERROR);

		printf("CMD_CFGI_STE in the VCMDQ: CONS %#x (ERR %u), GERROR %#x\n", cons, VCMDQ_CONS_ERR(cons),
		       gerror);
		check(VCMDQ_CONS_ERR(cons) == CERROR_ILL && (cons & VCMDQ_WRAP) == at,
		      "CONS must stop on the command with CERROR_ILL, not %#x", cons);
		check((gerror ^ vreg(VCMDQ_GERRORN)) & 1, "GERROR.CMDQ_ERR must toggle");
		struct pollfd tp = { .fd = (int)tq.out_veventq_fd, .events = POLLIN };
		check(poll(&tp, 1, 5000) == 1, "no TEGRA241_CMDQV event");
		n = read((int)tq.out_veventq_fd, evbuf, sizeof(evbuf));
		if (n == (ssize_t)(sizeof(struct iommufd_vevent_header) + sizeof(struct iommu_vevent_tegra241_cmdqv))) {
			struct iommu_vevent_tegra241_cmdqv *e = (void *)(evbuf + sizeof(struct iommufd_vevent_header));

			printf("vEVENTQ (TEGRA241_CMDQV): LVCMDQ error map %#" PRIx64 "\n",
			       (uint64_t)e->lvcmdq_err_map[0]);
			check(e->lvcmdq_err_map[0] == 1 && e->lvcmdq_err_map[1] == 0, "the map must name LVCMDQ 0");
		} else {
			check(0, "read %zd bytes from the TEGRA241_CMDQV vEVENTQ", n);
		}
		/* The guest replaces it with a CMD_SYNC and acknowledges. */
		uint64_t *q = gptr(gpa(VCMDQ_PAGE));

		q[2 * (at % VCMDQ_ENTRIES)] = CMD_SYNC;
		q[2 * (at % VCMDQ_ENTRIES) + 1] = 0;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		vreg_set(VCMDQ_GERRORN, gerror);
		cons = vcmdq_wait();
		check((cons & VCMDQ_WRAP) == vprod, "after GERRORN the queue must run on: CONS %#x, PROD %#x", cons,
		      vprod);
		printf("acknowledged through GERRORN: CONS %#x\n", cons);

		/* A forked child shares the VINTF (the same page, the same
		 * SMMU): its TLBI through the inherited mapping is consumed. */
		pid_t child = fork();
		int status = 0;

		if (child == 0) {
			uint64_t c[1][2] = { { CMD_TLBI_NH_ASID | (uint64_t)GUEST_ASID << 48, 0 } };

			_exit((vcmdq_issue(c, 1) & VCMDQ_WRAP) == vprod ? 0 : 1);
		}
		check(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
			      WEXITSTATUS(status) == 0,
		      "a forked child's VCMDQ commands must be consumed (status %#x)", status);
		vprod = (vprod + 2) & VCMDQ_WRAP;
		check((vreg(VCMDQ_CONS) & VCMDQ_WRAP) == vprod, "CONS %#x after the child's commands",
		      vreg(VCMDQ_CONS));
		printf("a forked child's TLBI through the inherited VINTF page: CONS %#x\n", vreg(VCMDQ_CONS));
		munmap((void *)vintf, vdata.out_vintf_mmap_length);
		close((int)tq.out_veventq_fd);
	}

	/* Tidy up: closing the files destroys everything. */
	munmap((void *)bar, bar0.size);
	close((int)vq.out_veventq_fd);
	close(dev);
	close(iommufd);
	if (failures) {
		printf("FAILED: %d mismatch(es)\n", failures);
		return 1;
	}
	printf("OK: nested translation, invalidation and events as on an SMMUv3%s\n",
	       cmdqv ? " with a Tegra241 CMDQV" : "");
	return 0;
}
