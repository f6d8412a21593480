/* SPDX-License-Identifier: Apache-2.0 */
/*
 * vfio_negative: the kernel's errnos on a VFIO device cdev (the first
 * emulated device, /dev/vfio/devices/vfio0, a DMA engine).
 *
 * Before VFIO_DEVICE_BIND_IOMMUFD every other call is EINVAL; bind checks
 * its argument, the descriptor (EBADF, EBADFD) and that the device is not
 * bound through another file; ATTACH/DETACH check argsz and flags (and the
 * PASID form's argsz); region offsets outside a region or a BAR, config
 * accesses across its end (EFAULT), BAR accesses with Memory Space off
 * (EIO); mmap beyond the BAR, private, of config space, unaligned, or
 * writable through a read-only open (EACCES); SET_IRQS validation; the
 * device object is busy while bound and gone after close.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
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

/* Mainline's forms, with the PASID (argsz 12 is the older struct). */
struct attach_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pt_id;
	__u32 pasid;
};
struct detach_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pasid;
};
#define ATTACH_PASID (1 << 0)

#define REGION(i) ((off_t)(i) << 40)

static int bind_dev(int dev, int iommufd, __u32 *devid)
{
	struct vfio_device_bind_iommufd b = { .argsz = 16, .iommufd = iommufd };
	int rc = ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b);

	if (!rc && devid)
		*devid = b.out_devid;
	return rc;
}

static int attach(int dev, __u32 argsz, __u32 flags, __u32 pt_id, __u32 pasid, __u32 *out)
{
	struct attach_pt a = { .argsz = argsz, .flags = flags, .pt_id = pt_id, .pasid = pasid };
	int rc = ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a);

	if (!rc && out)
		*out = a.pt_id;
	return rc;
}

static int set_irqs(int dev, __u32 argsz, __u32 flags, __u32 index, __u32 start, __u32 count, int fd)
{
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *s = (void *)buf;

	memset(buf, 0, sizeof(buf));
	s->argsz = argsz;
	s->flags = flags;
	s->index = index;
	s->start = start;
	s->count = count;
	memcpy(s->data, &fd, sizeof(fd));
	return ioctl(dev, VFIO_DEVICE_SET_IRQS, s);
}

static int region_info(int dev, __u32 index, struct vfio_region_info *out)
{
	*out = (struct vfio_region_info){ .argsz = sizeof(*out), .index = index };
	return ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, out);
}

int main(void)
{
	const char *node = "/dev/vfio/devices/vfio0";
	struct vfio_device_info info = { .argsz = sizeof(info) };
	struct vfio_region_info region;
	char buf[16];
	__u32 devid = 0, ioas = 0, hwpt = 0;
	__u64 count;
	void *p;

	int iommufd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	int dev = (int)CHECK_OK(open(node, O_RDWR));
	int null_fd = (int)CHECK_OK(open("/dev/null", O_RDWR));

	/* Not bound yet: everything but bind is EINVAL. */
	CHECK_ERR(ioctl(dev, VFIO_DEVICE_GET_INFO, &info), EINVAL);
	CHECK_OK(ioas_alloc(iommufd, &ioas));
	CHECK_ERR(attach(dev, 12, 0, ioas, 0, NULL), EINVAL);
	CHECK_ERR(ioctl(dev, VFIO_DEVICE_RESET), EINVAL);
	CHECK_ERR(ioctl(dev, _IO(VFIO_TYPE, VFIO_BASE + 60)), EINVAL);
	CHECK_ERR(pread(dev, buf, 4, 0), EINVAL);
	CHECK_ERR(pwrite(dev, buf, 4, 0), EINVAL);
	CHECK_TRUE(mmap(NULL, 4096, PROT_READ, MAP_SHARED, dev, 0) == MAP_FAILED && errno == EINVAL);

	/* Bind: argument, then the descriptor. */
	struct vfio_device_bind_iommufd b = { .argsz = 15, .iommufd = iommufd };
	CHECK_ERR(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b), EINVAL);
	b = (struct vfio_device_bind_iommufd){ .argsz = 16, .flags = 2, .iommufd = iommufd };
	CHECK_ERR(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b), EINVAL);
	CHECK_ERR(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, NULL), EFAULT);
	CHECK_ERR(bind_dev(dev, -1, NULL), EINVAL);
	CHECK_ERR(bind_dev(dev, 4000, NULL), EBADF);
	CHECK_ERR(bind_dev(dev, null_fd, NULL), EBADFD);
	CHECK_ERR(bind_dev(dev, dev, NULL), EBADFD);
	CHECK_OK(bind_dev(dev, iommufd, &devid));
	CHECK_ERR(bind_dev(dev, iommufd, NULL), EINVAL);
	/* Another open of the node cannot bind while this one is bound. */
	int other = (int)CHECK_OK(open(node, O_RDWR));
	CHECK_ERR(bind_dev(other, iommufd, NULL), EINVAL);
	CHECK_OK(close(other));
	/* The device object belongs to the binding. */
	CHECK_ERR(obj_destroy(iommufd, devid), EBUSY);

	/* Attach and detach. */
	CHECK_ERR(attach(dev, 12, 0, 999, 0, NULL), ENOENT);
	CHECK_ERR(attach(dev, 11, 0, ioas, 0, NULL), EINVAL);
	CHECK_ERR(attach(dev, 16, 2, ioas, 0, NULL), EINVAL);
	CHECK_ERR(attach(dev, 12, ATTACH_PASID, ioas, 1, NULL), EINVAL);
	CHECK_OK(attach(dev, 12, 0, ioas, 0, &hwpt));
	CHECK_TRUE(hwpt != ioas);
	struct detach_pt d = { .argsz = 12, .flags = ATTACH_PASID, .pasid = 5 };
	CHECK_OK(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &d));
	d = (struct detach_pt){ .argsz = 8, .flags = ATTACH_PASID, .pasid = 5 };
	CHECK_ERR(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &d), EINVAL);
	d = (struct detach_pt){ .argsz = 7 };
	CHECK_ERR(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &d), EINVAL);

	/* Queries. */
	CHECK_OK(ioctl(dev, VFIO_DEVICE_GET_INFO, &info));
	CHECK_TRUE(info.flags & VFIO_DEVICE_FLAGS_PCI);
	CHECK_TRUE(info.flags & VFIO_DEVICE_FLAGS_RESET);
	CHECK_EQ(info.num_regions, VFIO_PCI_NUM_REGIONS);
	CHECK_ERR(region_info(dev, VFIO_PCI_VGA_REGION_INDEX, &region), EINVAL);
	CHECK_ERR(region_info(dev, VFIO_PCI_NUM_REGIONS, &region), EINVAL);
	region = (struct vfio_region_info){ .argsz = 31 };
	CHECK_ERR(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &region), EINVAL);
	CHECK_OK(region_info(dev, VFIO_PCI_CONFIG_REGION_INDEX, &region));
	CHECK_EQ(region.offset, REGION(VFIO_PCI_CONFIG_REGION_INDEX));
	CHECK_EQ(region.size, 4096);
	CHECK_ERR(ioctl(dev, _IO(VFIO_TYPE, VFIO_BASE + 60)), ENOTTY);
	CHECK_ERR(ioctl(dev, IOMMU_IOAS_ALLOC, &info), ENOTTY);

	/* Region offsets. */
	const off_t cfg = REGION(VFIO_PCI_CONFIG_REGION_INDEX);
	CHECK_ERR(pread(dev, buf, 4, REGION(VFIO_PCI_NUM_REGIONS)), EINVAL);
	CHECK_ERR(pread(dev, buf, 4, REGION(1)), EINVAL);
	CHECK_ERR(pwrite(dev, buf, 4, REGION(VFIO_PCI_ROM_REGION_INDEX)), EINVAL);
	CHECK_ERR(pread(dev, buf, 8, cfg + 4092), EFAULT);
	CHECK_ERR(pread(dev, buf, 1, cfg + 4096), EFAULT);
	CHECK_EQ(pread(dev, buf, 3, cfg + 1), 3);
	/* BAR0 with Memory Space off, then on. */
	CHECK_ERR(pread(dev, buf, 4, 0), EIO);
	__u16 cmd = 0x6;
	CHECK_EQ(pwrite(dev, &cmd, 2, cfg + 4), 2);
	CHECK_EQ(pread(dev, buf, 4, 0), 4);
	CHECK_EQ(memcmp(buf, "UDMA", 4), 0);
	CHECK_EQ(pread(dev, buf, 16, 4096 - 8), 8);
	CHECK_ERR(pread(dev, buf, 4, 4096), EINVAL);

	/* mmap. */
	CHECK_TRUE(mmap(NULL, 8192, PROT_READ, MAP_SHARED, dev, 0) == MAP_FAILED && errno == EINVAL);
	CHECK_TRUE(mmap(NULL, 4096, PROT_READ, MAP_SHARED, dev, 4096) == MAP_FAILED && errno == EINVAL);
	CHECK_TRUE(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, dev, 0) == MAP_FAILED && errno == EINVAL);
	CHECK_TRUE(mmap(NULL, 4096, PROT_READ, MAP_SHARED, dev, cfg) == MAP_FAILED && errno == EINVAL);
	CHECK_TRUE(mmap(NULL, 4096, PROT_READ, MAP_SHARED, dev, REGION(1)) == MAP_FAILED && errno == EINVAL);
	CHECK_TRUE(mmap(NULL, 4096, PROT_READ, MAP_SHARED, dev, 100) == MAP_FAILED && errno == EINVAL);
	CHECK_TRUE(mmap(NULL, 0, PROT_READ, MAP_SHARED, dev, 0) == MAP_FAILED && errno == EINVAL);
	int ro = (int)CHECK_OK(open(node, O_RDONLY));
	CHECK_TRUE(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0) == MAP_FAILED && errno == EACCES);
	CHECK_OK(close(ro));
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, dev, 0);
	CHECK_TRUE(p != MAP_FAILED);
	CHECK_EQ(memcmp(p, "UDMA", 4), 0);
	CHECK_OK(munmap(p, 4096));

	/* SET_IRQS validation. */
	const __u32 efd_trigger = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	const __u32 msix = VFIO_PCI_MSIX_IRQ_INDEX;
	int efd = (int)CHECK_OK(eventfd(0, EFD_NONBLOCK));
	int pipefd[2];
	CHECK_OK(pipe(pipefd));
	CHECK_ERR(set_irqs(dev, 24, efd_trigger, VFIO_PCI_NUM_IRQS, 0, 1, efd), EINVAL);
	CHECK_ERR(set_irqs(dev, 24, efd_trigger | VFIO_IRQ_SET_DATA_BOOL, msix, 0, 1, efd), EINVAL);
	CHECK_ERR(set_irqs(dev, 24, efd_trigger, msix, 1, 1, efd), EINVAL);
	CHECK_ERR(set_irqs(dev, 20, efd_trigger, msix, 0, 1, efd), EINVAL);
	CHECK_ERR(set_irqs(dev, 24, efd_trigger, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, efd), EINVAL);
	CHECK_ERR(set_irqs(dev, 24, efd_trigger, msix, 0, 1, pipefd[0]), EINVAL);
	CHECK_ERR(set_irqs(dev, 24, efd_trigger, msix, 0, 1, 4000), EBADF);
	CHECK_ERR(set_irqs(dev, 20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, msix, 0, 1, 0), ENOTTY);
	CHECK_ERR(set_irqs(dev, 20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, msix, 0, 1, 0), EINVAL);
	/* The eventfd is the device's own once set: closing ours keeps it. */
	int mine = (int)CHECK_OK(dup(efd));
	CHECK_OK(set_irqs(dev, 24, efd_trigger, msix, 0, 1, mine));
	CHECK_OK(close(mine));
	CHECK_OK(set_irqs(dev, 20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, msix, 0, 1, 0));
	CHECK_EQ(read(efd, &count, sizeof(count)), sizeof(count));
	CHECK_EQ(count, 1);
	CHECK_OK(set_irqs(dev, 20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, msix, 0, 0, 0));

	CHECK_OK(ioctl(dev, VFIO_DEVICE_RESET));

	/* Closing unbinds: the device object and the automatic domain go. */
	CHECK_OK(close(dev));
	CHECK_ERR(obj_destroy(iommufd, devid), ENOENT);
	CHECK_ERR(obj_destroy(iommufd, hwpt), ENOENT);
	CHECK_OK(obj_destroy(iommufd, ioas));
	/* And the node binds again. */
	dev = (int)CHECK_OK(open(node, O_RDWR));
	CHECK_OK(bind_dev(dev, iommufd, &devid));
	CHECK_OK(close(dev));
	CHECK_OK(close(iommufd));
	CHECK_OK(close(efd));
	CHECK_OK(close(null_fd));
	return pass();
}
