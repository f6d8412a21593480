/* SPDX-License-Identifier: Apache-2.0 */
/*
 * vfio_group [BDF]: the classic VFIO type1 user, as
 * Documentation/driver-api/vfio.rst ("VFIO Usage Example") writes it,
 * against the first emulated device (a DMA engine, default 0000:00:04.0).
 *
 * The IOMMU group comes from readlink of /sys/bus/pci/devices/BDF/
 * iommu_group (its basename, as QEMU's vfio_get_group_id and DPDK's
 * rte_vfio_get_group_num parse it); then /dev/vfio/vfio: API version,
 * the TYPE1v2 extension; /dev/vfio/$GROUP: a character device, viable;
 * SET_CONTAINER, SET_IOMMU(TYPE1v2), GET_INFO, MAP_DMA of our buffer,
 * GET_DEVICE_FD (close-on-exec); GET_INFO and REGION_INFO of the device,
 * BAR0 mapped, the engine copies inside the mapped buffer and we check
 * the copy in our own memory. Along the way the kernel's errnos (with
 * iommufd as the container, the kernel's CONFIG_IOMMUFD_VFIO_CONTAINER):
 * SET_IOMMU before any group, a second open of the group, SET_CONTAINER
 * twice or with a bad descriptor, GET_DEVICE_FD with a wrong name, the
 * cdev-only device ioctls on a group's device, the device's cdev while
 * the group is open, and UNSET_CONTAINER without a container.
 *
 * Only kernel uAPI headers (<linux/vfio.h>); the engine's registers are
 * in docs/devices/dma-engine.md.
 */
#define _GNU_SOURCE
#include "check.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <linux/vfio.h>

#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
};
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 20)
#endif

/* The DMA engine (docs/devices/dma-engine.md). */
#define UDMA_ID 0x000
#define UDMA_CTRL 0x010
#define UDMA_STATUS 0x018
#define UDMA_RING_BASE 0x020
#define UDMA_RING_SIZE 0x028
#define UDMA_HEAD 0x030
#define UDMA_TAIL 0x038
#define UDMA_ID_VALUE 0x414d4455u
#define UDMA_CTRL_ENABLE (1u << 0)
#define UDMA_CTRL_RESET (1u << 1)
#define UDMA_STATUS_ENABLED (1u << 0)
#define UDMA_OP_COPY 1
#define UDMA_ST_SUCCESS 0x01

struct udma_desc {
	uint8_t opcode;
	uint8_t flags;
	uint16_t reserved0;
	uint32_t pasid;
	uint64_t src;
	uint64_t dst;
	uint64_t len;
	uint64_t pattern;
	uint64_t reserved1;
	uint64_t result;
	uint32_t status;
	uint32_t reserved2;
};
_Static_assert(sizeof(struct udma_desc) == 64, "descriptor layout");

/*
 * The documentation maps at IOVA 0; the mock IOMMU's aperture starts at
 * 16 MiB, an IOVA the VT-d models accept as well.
 */
#define DMA_IOVA (16ull << 20)
#define DMA_SIZE (1024 * 1024)
#define COPY_LEN (64 * 1024)

static uint32_t rd32(volatile uint8_t *bar, uint32_t off)
{
	return *(volatile uint32_t *)(bar + off);
}

static void wr32(volatile uint8_t *bar, uint32_t off, uint32_t v)
{
	__atomic_thread_fence(__ATOMIC_RELEASE);
	*(volatile uint32_t *)(bar + off) = v;
}

static void wr64(volatile uint8_t *bar, uint32_t off, uint64_t v)
{
	__atomic_thread_fence(__ATOMIC_RELEASE);
	*(volatile uint64_t *)(bar + off) = v;
}

/* Poll a BAR register until (value & mask) == want, for up to 10 s. */
static int wait_reg(volatile uint8_t *bar, uint32_t off, uint32_t mask, uint32_t want)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while ((rd32(bar, off) & mask) != want) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec > 10)
			return -1;
		sched_yield();
	}
	return 0;
}

static int get_device_fd(int group, const char *name)
{
	return ioctl(group, VFIO_GROUP_GET_DEVICE_FD, name);
}

int main(int argc, char **argv)
{
	const char *bdf = argc > 1 ? argv[1] : "0000:00:04.0";
	char path[512], link[512], cdev_path[64];
	struct vfio_group_status group_status = { .argsz = sizeof(group_status) };
	struct vfio_iommu_type1_info *iommu_info;
	struct vfio_iommu_type1_dma_map dma_map = { .argsz = sizeof(dma_map) };
	struct vfio_iommu_type1_dma_unmap dma_unmap = { .argsz = sizeof(dma_unmap) };
	struct vfio_device_info device_info = { .argsz = sizeof(device_info) };
	struct vfio_region_info region = { .argsz = sizeof(region) };
	struct stat st;
	int container, group, device, groupid, bad, cdev;
	ssize_t n;

	/* The device's IOMMU group: the basename of its iommu_group link. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	n = CHECK_OK(readlink(path, link, sizeof(link) - 1));
	link[n] = 0;
	const char *base = strrchr(link, '/');
	CHECK_TRUE(base != NULL);
	CHECK_EQ(sscanf(base + 1, "%d", &groupid), 1);
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%d/devices/%s", groupid, bdf);
	CHECK_OK(access(path, F_OK));

	/* Create a new container. */
	container = (int)CHECK_OK(open("/dev/vfio/vfio", O_RDWR));
	CHECK_EQ(ioctl(container, VFIO_GET_API_VERSION), VFIO_API_VERSION);
	CHECK_EQ(ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 1);
	CHECK_EQ(ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU), 1);
	/* iommufd's container: no group yet, no compat IOAS. */
	CHECK_ERR(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), ENODEV);

	/* Open the group: a character device, opened once at a time. */
	snprintf(path, sizeof(path), "/dev/vfio/%d", groupid);
	CHECK_OK(stat(path, &st));
	CHECK_TRUE(S_ISCHR(st.st_mode));
	CHECK_EQ(minor(st.st_rdev), groupid);
	group = (int)CHECK_OK(open(path, O_RDWR));
	CHECK_OK(fstat(group, &st));
	CHECK_TRUE(S_ISCHR(st.st_mode));
	CHECK_EQ(minor(st.st_rdev), groupid);
	CHECK_ERR(open(path, O_RDWR), EBUSY);
	snprintf(path, sizeof(path), "/dev/vfio/%d", groupid + 1000);
	CHECK_ERR(open(path, O_RDWR), ENOENT);

	/* Test the group is viable and available. */
	CHECK_OK(ioctl(group, VFIO_GROUP_GET_STATUS, &group_status));
	CHECK_TRUE(group_status.flags & VFIO_GROUP_FLAGS_VIABLE);
	CHECK_TRUE(!(group_status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET));
	group_status.argsz = 4;
	CHECK_ERR(ioctl(group, VFIO_GROUP_GET_STATUS, &group_status), EINVAL);
	CHECK_ERR(ioctl(group, VFIO_GROUP_UNSET_CONTAINER), EINVAL);
	CHECK_ERR(get_device_fd(group, bdf), EINVAL);

	/* Add the group to the container. */
	bad = 4000;
	CHECK_ERR(ioctl(group, VFIO_GROUP_SET_CONTAINER, &bad), EBADF);
	bad = open("/dev/null", O_RDWR);
	CHECK_ERR(ioctl(group, VFIO_GROUP_SET_CONTAINER, &bad), EBADFD);
	CHECK_ERR(ioctl(group, VFIO_GROUP_SET_CONTAINER, NULL), EFAULT);
	CHECK_OK(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container));
	CHECK_ERR(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container), EINVAL);
	group_status.argsz = sizeof(group_status);
	CHECK_OK(ioctl(group, VFIO_GROUP_GET_STATUS, &group_status));
	CHECK_EQ(group_status.flags, VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET);

	/* Enable the IOMMU model we want. */
	CHECK_OK(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU));

	/* Get additional IOMMU info: its size first, then with the caps. */
	iommu_info = calloc(1, sizeof(*iommu_info));
	iommu_info->argsz = sizeof(*iommu_info);
	CHECK_OK(ioctl(container, VFIO_IOMMU_GET_INFO, iommu_info));
	CHECK_TRUE(iommu_info->flags & VFIO_IOMMU_INFO_PGSIZES);
	CHECK_TRUE(iommu_info->iova_pgsizes & 4096);
	CHECK_TRUE(iommu_info->argsz > sizeof(*iommu_info));
	__u32 argsz = iommu_info->argsz;
	iommu_info = realloc(iommu_info, argsz);
	memset(iommu_info, 0, argsz);
	iommu_info->argsz = argsz;
	CHECK_OK(ioctl(container, VFIO_IOMMU_GET_INFO, iommu_info));
	CHECK_EQ(iommu_info->cap_offset, sizeof(*iommu_info));

	/* Allocate some space and set up a DMA mapping. */
	uint8_t *mem = mmap(NULL, DMA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(mem != MAP_FAILED);
	dma_map.vaddr = (uintptr_t)mem;
	dma_map.size = DMA_SIZE;
	dma_map.iova = DMA_IOVA;
	dma_map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
	CHECK_OK(ioctl(container, VFIO_IOMMU_MAP_DMA, &dma_map));

	/* Get a file descriptor for the device. */
	CHECK_ERR(get_device_fd(group, "0000:ff:1f.7"), ENODEV);
	CHECK_ERR(ioctl(group, VFIO_GROUP_GET_DEVICE_FD, NULL), EFAULT);
	snprintf(path, sizeof(path), "%s vf_token=bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3", bdf);
	CHECK_ERR(get_device_fd(group, path), EINVAL);
	device = (int)CHECK_OK(get_device_fd(group, bdf));
	CHECK_EQ(fcntl(device, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);

	/* The cdev path is closed to this device while the group is open. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	DIR *dir = opendir(path);
	CHECK_TRUE(dir != NULL);
	cdev_path[0] = 0;
	for (struct dirent *de; (de = readdir(dir));)
		if (!strncmp(de->d_name, "vfio", 4))
			snprintf(cdev_path, sizeof(cdev_path), "/dev/vfio/devices/%.40s", de->d_name);
	CHECK_OK(closedir(dir));
	CHECK_TRUE(cdev_path[0] != 0);
	cdev = (int)CHECK_OK(open(cdev_path, O_RDWR));
	struct vfio_device_bind_iommufd bind = { .argsz = 16, .iommufd = container };
	CHECK_ERR(ioctl(cdev, VFIO_DEVICE_BIND_IOMMUFD, &bind), EBUSY);
	CHECK_OK(close(cdev));

	/* The cdev-only requests on a group's device descriptor. */
	CHECK_ERR(ioctl(device, VFIO_DEVICE_BIND_IOMMUFD, &bind), EINVAL);
	__u32 attach[3] = { 12, 0, 1 };
	CHECK_ERR(ioctl(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach), ENOTTY);
	__u32 detach[2] = { 8, 0 };
	CHECK_ERR(ioctl(device, VFIO_DEVICE_DETACH_IOMMUFD_PT, detach), ENOTTY);

	/* Test and setup the device. */
	CHECK_OK(ioctl(device, VFIO_DEVICE_GET_INFO, &device_info));
	CHECK_TRUE(device_info.flags & VFIO_DEVICE_FLAGS_PCI);
	CHECK_EQ(device_info.num_regions, VFIO_PCI_NUM_REGIONS);
	CHECK_EQ(device_info.num_irqs, VFIO_PCI_NUM_IRQS);
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	CHECK_OK(ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &cfg));
	region.index = VFIO_PCI_BAR0_REGION_INDEX;
	CHECK_OK(ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &region));
	CHECK_TRUE(region.flags & VFIO_REGION_INFO_FLAG_MMAP);
	CHECK_TRUE(region.size >= 4096);

	/* Memory Space and Bus Master on; BAR0 mapped. */
	__u16 cmd = 0;
	CHECK_EQ(pread(device, &cmd, 2, cfg.offset + 4), 2);
	cmd |= 0x6;
	CHECK_EQ(pwrite(device, &cmd, 2, cfg.offset + 4), 2);
	volatile uint8_t *bar = mmap(NULL, region.size, PROT_READ | PROT_WRITE, MAP_SHARED, device, region.offset);
	CHECK_TRUE(bar != MAP_FAILED);
	CHECK_EQ(rd32(bar, UDMA_ID), UDMA_ID_VALUE);

	/* The ring at the start of the mapping, source and destination after. */
	struct udma_desc *ring = (struct udma_desc *)mem;
	uint8_t *src = mem + 4096, *dst = src + COPY_LEN;
	for (int i = 0; i < COPY_LEN; i++)
		src[i] = (uint8_t)(i * 37 + 11);
	ring[0] = (struct udma_desc){
		.opcode = UDMA_OP_COPY,
		.src = DMA_IOVA + 4096,
		.dst = DMA_IOVA + 4096 + COPY_LEN,
		.len = COPY_LEN,
	};
	wr64(bar, UDMA_RING_BASE, DMA_IOVA);
	wr32(bar, UDMA_RING_SIZE, 16);
	wr32(bar, UDMA_CTRL, UDMA_CTRL_ENABLE);
	CHECK_OK(wait_reg(bar, UDMA_STATUS, UDMA_STATUS_ENABLED, UDMA_STATUS_ENABLED));
	wr32(bar, UDMA_TAIL, 1);
	CHECK_OK(wait_reg(bar, UDMA_HEAD, ~0u, 1));
	CHECK_EQ(__atomic_load_n(&ring[0].status, __ATOMIC_ACQUIRE), UDMA_ST_SUCCESS);
	CHECK_EQ(memcmp(src, dst, COPY_LEN), 0);

	/* Tidy up: ring reset, unmap, close (the device unbinds). */
	wr32(bar, UDMA_CTRL, UDMA_CTRL_RESET);
	CHECK_OK(wait_reg(bar, UDMA_CTRL, UDMA_CTRL_RESET, 0));
	CHECK_OK(munmap((void *)bar, region.size));
	CHECK_OK(close(device));
	dma_unmap.iova = DMA_IOVA;
	dma_unmap.size = DMA_SIZE;
	CHECK_OK(ioctl(container, VFIO_IOMMU_UNMAP_DMA, &dma_unmap));
	CHECK_EQ(dma_unmap.size, DMA_SIZE);
	CHECK_OK(ioctl(group, VFIO_GROUP_UNSET_CONTAINER));
	CHECK_ERR(ioctl(group, VFIO_GROUP_UNSET_CONTAINER), EINVAL);
	CHECK_OK(close(group));

	/* The group is free again, and with it the device's cdev. */
	cdev = (int)CHECK_OK(open(cdev_path, O_RDWR));
	CHECK_OK(ioctl(cdev, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	snprintf(path, sizeof(path), "/dev/vfio/%d", groupid);
	CHECK_ERR(open(path, O_RDWR), EBUSY);
	CHECK_OK(close(cdev));
	group = (int)CHECK_OK(open(path, O_RDWR));
	CHECK_OK(close(group));

	CHECK_OK(close(container));
	CHECK_OK(close(bad));
	free(iommu_info);
	CHECK_OK(munmap(mem, DMA_SIZE));
	return pass();
}
