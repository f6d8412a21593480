/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dma_copy: drive a uiommufd DMA engine through a VFIO device cdev and
 * iommufd, the way a user-space driver drives real hardware.
 *
 * The program uses nothing but the kernel's uAPI (<linux/iommufd.h>,
 * <linux/vfio.h>, <linux/pci_regs.h>) and the device's datasheet
 * (docs/devices/dma-engine.md), so it runs unchanged on a kernel with a
 * real device of this kind bound to vfio-pci. Under uiommufd:
 *
 *   cargo build --release
 *   cc -O2 -Wall -I include -o dma_copy examples/c/dma_copy.c
 *   ./target/release/uiommufd run --device dma-engine -- ./dma_copy
 *
 * (-I include supplies <linux/iommufd.h> where the system headers are
 * older than Linux 6.2.)
 *
 * Steps: find the device's cdev from sysfs as QEMU does (the number in
 * /sys/bus/pci/devices/BDF/vfio-dev/vfioN/dev must match the node's
 * st_rdev), bind it to an iommufd, attach it to a fresh IOAS, map a buffer
 * of our own memory for DMA, map BAR0, route MSI-X vector 0 to an eventfd,
 * run COPY, FILL and COMPARE descriptors, wait for the interrupt, and check
 * the results in our own memory. Exit status 0 when everything matched.
 *
 * Usage: dma_copy [BDF]   (default 0000:00:04.0, uiommufd's first device)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>

#include "udma.h" /* the device's datasheet */

/* ---- Helpers. ---- */

#define RING_ENTRIES 64
#define COPY_LEN (64 * 1024)

static int failures;

#define die(...)                                                               \
	do {                                                                   \
		fprintf(stderr, "dma_copy: " __VA_ARGS__);                     \
		fprintf(stderr, "\n");                                         \
		exit(2);                                                       \
	} while (0)

#define check(cond, ...)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			failures++;                                            \
			fprintf(stderr, "dma_copy: MISMATCH: " __VA_ARGS__);   \
			fprintf(stderr, "\n");                                 \
		}                                                              \
	} while (0)

static inline uint32_t mmio_read32(volatile uint8_t *bar, uint32_t off)
{
	return *(volatile uint32_t *)(bar + off);
}

static inline uint64_t mmio_read64(volatile uint8_t *bar, uint32_t off)
{
	return *(volatile uint64_t *)(bar + off);
}

static inline void mmio_write32(volatile uint8_t *bar, uint32_t off, uint32_t v)
{
	__atomic_thread_fence(__ATOMIC_RELEASE);
	*(volatile uint32_t *)(bar + off) = v;
}

static inline void mmio_write64(volatile uint8_t *bar, uint32_t off, uint64_t v)
{
	__atomic_thread_fence(__ATOMIC_RELEASE);
	*(volatile uint64_t *)(bar + off) = v;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Poll a register until (value & mask) == want, for up to 5 seconds. */
static int wait_reg(volatile uint8_t *bar, uint32_t off, uint32_t mask, uint32_t want)
{
	double deadline = now() + 5;

	while ((mmio_read32(bar, off) & mask) != want) {
		if (now() > deadline)
			return -1;
		sched_yield();
	}
	return 0;
}

/* Read a small sysfs file into buf (NUL-terminated, newline stripped). */
static int read_sysfs(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

/*
 * The device's cdev, found the way QEMU's iommufd backend does: the
 * vfio-dev/vfioN directory under the PCI device names the node, its dev
 * file the device number the node must have.
 */
static int open_device_cdev(const char *bdf, char *name, size_t name_len)
{
	char path[512], contents[64];
	unsigned int major, minor;
	struct dirent *de;
	struct stat st;
	DIR *dir;
	int fd;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	dir = opendir(path);
	if (!dir)
		die("%s: %s (is the device bound to vfio-pci? under uiommufd: run --device)", path, strerror(errno));
	name[0] = 0;
	while ((de = readdir(dir))) {
		if (!strncmp(de->d_name, "vfio", 4)) {
			snprintf(name, name_len, "%s", de->d_name);
			break;
		}
	}
	closedir(dir);
	if (!name[0])
		die("no vfio-dev/vfioN under %s", path);

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev/%s/dev", bdf, name);
	if (read_sysfs(path, contents, sizeof(contents)) || sscanf(contents, "%u:%u", &major, &minor) != 2)
		die("cannot read major:minor from %s", path);

	snprintf(path, sizeof(path), "/dev/vfio/devices/%s", name);
	if (stat(path, &st) || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(major, minor))
		die("%s is not the character device %u:%u", path, major, minor);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) || st.st_rdev != makedev(major, minor))
		die("%s changed under us", path);
	return fd;
}

/* VFIO_DEVICE_GET_REGION_INFO, growing the buffer for the capability chain. */
static struct vfio_region_info *region_info(int dev, unsigned int index)
{
	struct vfio_region_info *info = calloc(1, sizeof(*info));

	info->argsz = sizeof(*info);
	info->index = index;
	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, info))
		die("VFIO_DEVICE_GET_REGION_INFO(%u): %s", index, strerror(errno));
	if (info->argsz > sizeof(*info)) {
		uint32_t argsz = info->argsz;

		info = realloc(info, argsz);
		memset(info, 0, argsz);
		info->argsz = argsz;
		info->index = index;
		if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, info))
			die("VFIO_DEVICE_GET_REGION_INFO(%u): %s", index, strerror(errno));
	}
	return info;
}

/* Whether the region's capability chain has capability `id`. */
static int region_has_cap(struct vfio_region_info *info, uint16_t id)
{
	uint32_t off;

	if (!(info->flags & VFIO_REGION_INFO_FLAG_CAPS))
		return 0;
	for (off = info->cap_offset; off; ) {
		struct vfio_info_cap_header *h = (void *)((char *)info + off);

		if (h->id == id)
			return 1;
		off = h->next;
	}
	return 0;
}

static void config_write16(int dev, uint64_t cfg_offset, uint32_t reg, uint16_t v)
{
	if (pwrite(dev, &v, sizeof(v), cfg_offset + reg) != sizeof(v))
		die("config write at %#x: %s", reg, strerror(errno));
}

static uint16_t config_read16(int dev, uint64_t cfg_offset, uint32_t reg)
{
	uint16_t v;

	if (pread(dev, &v, sizeof(v), cfg_offset + reg) != sizeof(v))
		die("config read at %#x: %s", reg, strerror(errno));
	return v;
}

int main(int argc, char **argv)
{
	const char *bdf = argc > 1 ? argv[1] : "0000:00:04.0";
	char cdev[256], group[256], path[512];
	struct vfio_device_info dinfo = { .argsz = sizeof(dinfo) };
	struct vfio_irq_info irq = { .argsz = sizeof(irq), .index = VFIO_PCI_MSIX_IRQ_INDEX };
	struct vfio_region_info *bar_info, *cfg_info;
	struct udma_desc *ring;
	volatile uint8_t *bar;
	uint8_t *mem, *src, *dst, *fill;
	uint64_t mem_iova, ring_iova, src_iova, dst_iova, fill_iova, events = 0;
	const uint64_t pattern = 0x0123456789abcdefull;
	size_t mem_len;
	unsigned int i, tail = 0;
	ssize_t n;
	int dev, iommufd, efd;
	double t0;

	/* 1. Find and open the device; check it is the device we expect. */
	dev = open_device_cdev(bdf, cdev, sizeof(cdev));
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	n = readlink(path, group, sizeof(group) - 1);
	group[n > 0 ? n : 0] = 0;
	iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0)
		die("open /dev/iommu: %s", strerror(errno));

	/* 2. Bind to the iommufd, attach to a new IOAS. */
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind))
		die("VFIO_DEVICE_BIND_IOMMUFD: %s", strerror(errno));
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc))
		die("IOMMU_IOAS_ALLOC: %s", strerror(errno));
	struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach), .pt_id = alloc.out_ioas_id };
	if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach))
		die("VFIO_DEVICE_ATTACH_IOMMUFD_PT: %s", strerror(errno));

	/* 3. What the device offers. */
	if (ioctl(dev, VFIO_DEVICE_GET_INFO, &dinfo))
		die("VFIO_DEVICE_GET_INFO: %s", strerror(errno));
	if (!(dinfo.flags & VFIO_DEVICE_FLAGS_PCI) || dinfo.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX)
		die("not a PCI device");
	cfg_info = region_info(dev, VFIO_PCI_CONFIG_REGION_INDEX);
	bar_info = region_info(dev, VFIO_PCI_BAR0_REGION_INDEX);
	if (!(bar_info->flags & VFIO_REGION_INFO_FLAG_MMAP) || bar_info->size < 0x1000)
		die("BAR0 cannot be mapped");
	if (config_read16(dev, cfg_info->offset, PCI_VENDOR_ID) != UDMA_VENDOR_ID ||
	    config_read16(dev, cfg_info->offset, PCI_DEVICE_ID) != UDMA_DEVICE_ID)
		die("%s is not a uiommufd DMA engine", bdf);
	if (ioctl(dev, VFIO_DEVICE_GET_IRQ_INFO, &irq) || irq.count < 1 || !(irq.flags & VFIO_IRQ_INFO_EVENTFD))
		die("no MSI-X vector");

	/* 4. Our memory for DMA: ring, source, destination, fill target. */
	mem_len = 4096 + 3 * COPY_LEN;
	mem = mmap(NULL, mem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	ring = (struct udma_desc *)mem;
	src = mem + 4096;
	dst = src + COPY_LEN;
	fill = dst + COPY_LEN;
	for (i = 0; i < COPY_LEN; i++)
		src[i] = (uint8_t)(i * 31 + 7);
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = alloc.out_ioas_id,
		.user_va = (uintptr_t)mem,
		.length = mem_len,
	};
	if (ioctl(iommufd, IOMMU_IOAS_MAP, &map))
		die("IOMMU_IOAS_MAP: %s", strerror(errno));
	mem_iova = map.iova;
	ring_iova = mem_iova;
	src_iova = mem_iova + 4096;
	dst_iova = src_iova + COPY_LEN;
	fill_iova = dst_iova + COPY_LEN;

	/* 5. Memory Space and Bus Master on; BAR0 mapped; MSI-X to an eventfd. */
	config_write16(dev, cfg_info->offset, PCI_COMMAND,
		       config_read16(dev, cfg_info->offset, PCI_COMMAND) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	bar = mmap(NULL, bar_info->size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar_info->offset);
	if (bar == MAP_FAILED)
		die("mmap BAR0: %s", strerror(errno));
	if (mmio_read32(bar, UDMA_ID) != UDMA_ID_VALUE)
		die("BAR0 ID register reads %#x", mmio_read32(bar, UDMA_ID));
	efd = eventfd(0, EFD_CLOEXEC);
	if (efd < 0)
		die("eventfd: %s", strerror(errno));
	char irq_buf[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
	struct vfio_irq_set *set = (void *)irq_buf;
	*set = (struct vfio_irq_set){
		.argsz = sizeof(irq_buf),
		.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
		.index = VFIO_PCI_MSIX_IRQ_INDEX,
		.start = 0,
		.count = 1,
	};
	memcpy(set->data, &efd, sizeof(efd));
	if (ioctl(dev, VFIO_DEVICE_SET_IRQS, set))
		die("VFIO_DEVICE_SET_IRQS: %s", strerror(errno));

	/* 6. The ring. */
	mmio_write64(bar, UDMA_RING_BASE, ring_iova);
	mmio_write32(bar, UDMA_RING_SIZE, RING_ENTRIES);
	mmio_write32(bar, UDMA_CTRL, UDMA_CTRL_ENABLE);
	if (wait_reg(bar, UDMA_STATUS, UDMA_STATUS_ENABLED, UDMA_STATUS_ENABLED))
		die("the ring did not enable (STATUS %#x)", mmio_read32(bar, UDMA_STATUS));

	/* 7. Work: copy, fill, compare equal, compare a spoiled copy. */
	struct udma_desc work[] = {
		{ .opcode = UDMA_OP_COPY, .src = src_iova, .dst = dst_iova, .len = COPY_LEN },
		{ .opcode = UDMA_OP_FILL, .dst = fill_iova, .len = COPY_LEN, .pattern = pattern },
		{ .opcode = UDMA_OP_COMPARE, .src = src_iova, .dst = dst_iova, .len = COPY_LEN },
		/* The fill target against the source: they differ at byte 0. */
		{ .opcode = UDMA_OP_COMPARE, .src = src_iova, .dst = fill_iova, .len = COPY_LEN },
		{ .opcode = UDMA_OP_NOP, .flags = UDMA_DESC_IRQ },
	};
	const unsigned int nwork = sizeof(work) / sizeof(work[0]);
	for (i = 0; i < nwork; i++) {
		ring[tail] = work[i];
		ring[tail].status = UDMA_ST_NONE;
		tail = (tail + 1) % RING_ENTRIES;
	}
	t0 = now();
	mmio_write32(bar, UDMA_TAIL, tail);

	/* 8. Wait for the completion interrupt. */
	struct pollfd pfd = { .fd = efd, .events = POLLIN };
	if (poll(&pfd, 1, 10000) != 1 || read(efd, &events, sizeof(events)) != sizeof(events))
		die("no interrupt within 10 s (HEAD %u, STATUS %#x)", mmio_read32(bar, UDMA_HEAD),
		    mmio_read32(bar, UDMA_STATUS));
	double took = now() - t0;

	/* 9. Check everything in our own memory. */
	static const char *const names[] = { "COPY", "FILL", "COMPARE", "COMPARE (differs)", "NOP" };
	const uint32_t want[] = { UDMA_ST_SUCCESS, UDMA_ST_SUCCESS, UDMA_ST_SUCCESS, UDMA_ST_MISMATCH,
				  UDMA_ST_SUCCESS };
	for (i = 0; i < nwork; i++) {
		uint32_t st = __atomic_load_n(&ring[i].status, __ATOMIC_ACQUIRE);

		check(st == want[i], "descriptor %u (%s): status %#x, expected %#x", i, names[i], st, want[i]);
	}
	check(ring[3].result == 0, "COMPARE (differs): first difference at %" PRIu64 ", expected 0",
	      ring[3].result);
	check(!memcmp(src, dst, COPY_LEN), "the copy differs from its source");
	for (i = 0; i < COPY_LEN; i++) {
		if (fill[i] != (uint8_t)(pattern >> (8 * (i % 8)))) {
			check(0, "fill byte %u is %#x", i, fill[i]);
			break;
		}
	}
	check(mmio_read32(bar, UDMA_HEAD) == tail, "HEAD %u, expected %u", mmio_read32(bar, UDMA_HEAD), tail);
	check(mmio_read64(bar, UDMA_COMPLETED) == nwork, "COMPLETED %" PRIu64, mmio_read64(bar, UDMA_COMPLETED));
	check(mmio_read64(bar, UDMA_ERRORS) == 0, "ERRORS %" PRIu64 " (ERR_CODE %#x)", mmio_read64(bar, UDMA_ERRORS),
	      mmio_read32(bar, UDMA_ERR_CODE));

	printf("device %s (%s, IOMMU group %s), devid %u, IOAS %u attached via HWPT %u\n", bdf, cdev,
	       strrchr(group, '/') ? strrchr(group, '/') + 1 : "?", bind.out_devid, alloc.out_ioas_id, attach.pt_id);
	printf("buffer at %p mapped at IOVA %#" PRIx64 ", BAR0 version %#x%s\n", (void *)mem, mem_iova,
	       mmio_read32(bar, UDMA_VERSION),
	       region_has_cap(bar_info, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) ? ", MSI-X table mappable" : "");
	printf("%u descriptors: copied and filled %u bytes each, compared twice; %" PRIu64
	       " interrupt(s) after %.3f ms\n",
	       nwork, COPY_LEN, events, took * 1e3);

	/* 10. Tidy up: ring reset, interrupts off, unmap, close (unbinds). */
	mmio_write32(bar, UDMA_CTRL, UDMA_CTRL_RESET);
	wait_reg(bar, UDMA_CTRL, UDMA_CTRL_RESET, 0);
	*set = (struct vfio_irq_set){ .argsz = sizeof(*set),
				      .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
				      .index = VFIO_PCI_MSIX_IRQ_INDEX };
	if (ioctl(dev, VFIO_DEVICE_SET_IRQS, set))
		die("disabling MSI-X: %s", strerror(errno));
	munmap((void *)bar, bar_info->size);
	struct iommu_ioas_unmap unmap = { .size = sizeof(unmap), .ioas_id = alloc.out_ioas_id, .iova = mem_iova,
					  .length = mem_len };
	if (ioctl(iommufd, IOMMU_IOAS_UNMAP, &unmap))
		die("IOMMU_IOAS_UNMAP: %s", strerror(errno));
	close(efd);
	close(dev);
	close(iommufd);
	free(bar_info);
	free(cfg_info);

	if (failures) {
		printf("FAILED: %d mismatch(es)\n", failures);
		return 1;
	}
	printf("OK: the device's DMA landed in this program's memory\n");
	return 0;
}
