// SPDX-License-Identifier: Apache-2.0
/*
 * What a client sees from an AMD IOMMU through iommufd, as a transcript to
 * diff between the real kernel and uiommufd: IOMMU_GET_HW_INFO, which
 * IOMMU_HWPT_ALLOC flags the driver takes, the IOVA ranges once attached,
 * IOMMU_VIOMMU_ALLOC by type.
 *
 * The reference transcript (kept in crates/cli/tests/shim.rs) came from
 * Linux 7.3.4 (the oracle kernel: x86_64 defconfig with the AMD IOMMU
 * driver, without CONFIG_AMD_IOMMU_IOMMUFD) under QEMU 7.2 with
 * `-machine q35,kernel-irqchip=split -device amd-iommu,intremap=off
 * -device edu`, the edu function bound to vfio-pci and iommufd's
 * allow_unsafe_interrupts set (no interrupt remapping). QEMU's amd-iommu
 * reports EFR 0x29d3, EFR2 0 and IVinfo VASize 48; the same machine under
 * uiommufd is `--iommu amd:efr=29d3,efr2=0,vasize=48,la57=0,iommufd=0`.
 *
 * Static build for the oracle: gcc -static -O2 -I include ...
 *
 * Usage: amd_oracle_probe [CDEV]   (default /dev/vfio/devices/vfio0)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <linux/vfio.h>

#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
};
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)

struct vfio_device_attach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pt_id;
};
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
#endif

static int result(int rc)
{
	return rc ? errno : 0;
}

int main(int argc, char **argv)
{
	const char *cdev = argc > 1 && argv[1][0] ? argv[1] : "/dev/vfio/devices/vfio0";
	int fd = open("/dev/iommu", O_RDWR);
	int dev = -1;
	struct iommu_hw_info_amd amd = { 0 };
	unsigned int flags[] = { 0, 1, 2, 8, 1 | 2, 1 | 8, 2 | 8 };
	struct iommu_iova_range ranges[8];
	unsigned int i;
	int rc;

	/* In a freshly booted kernel the node appears once vfio-pci binds. */
	for (i = 0; i < 500 && dev < 0; i++) {
		dev = open(cdev, O_RDWR);
		if (dev < 0)
			usleep(10000);
	}
	if (fd < 0 || dev < 0) {
		perror("open");
		return 2;
	}
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = fd };
	rc = result(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	printf("bind: %d, device %u\n", rc, bind.out_devid);
	struct iommu_hw_info hi = {
		.size = sizeof(hi),
		.dev_id = bind.out_devid,
		.data_len = sizeof(amd),
		.data_uptr = (uintptr_t)&amd,
	};
	rc = result(ioctl(fd, IOMMU_GET_HW_INFO, &hi));
	printf("hw_info: %d, type %u, data_len %u, capabilities %#llx, max_pasid_log2 %u\n", rc, hi.out_data_type,
	       hi.data_len, (unsigned long long)hi.out_capabilities, hi.out_max_pasid_log2);
	struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
	rc = result(ioctl(fd, IOMMU_IOAS_ALLOC, &ia));
	printf("ioas: %d, %u\n", rc, ia.out_ioas_id);
	for (i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		struct iommu_hwpt_alloc ha = {
			.size = sizeof(ha),
			.flags = flags[i],
			.dev_id = bind.out_devid,
			.pt_id = ia.out_ioas_id,
		};
		rc = result(ioctl(fd, IOMMU_HWPT_ALLOC, &ha));
		printf("hwpt_alloc flags %#x: %d%s\n", flags[i], rc, rc ? "" : " ok");
	}
	struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = ia.out_ioas_id };
	rc = result(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
	printf("attach to the IOAS: %d\n", rc);
	struct iommu_ioas_iova_ranges rg = {
		.size = sizeof(rg),
		.ioas_id = ia.out_ioas_id,
		.num_iovas = 8,
		.allowed_iovas = (uintptr_t)ranges,
	};
	rc = result(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &rg));
	printf("iova_ranges: %d, %u ranges, alignment %#llx\n", rc, rg.num_iovas,
	       (unsigned long long)rg.out_iova_alignment);
	for (i = 0; !rc && i < rg.num_iovas && i < 8; i++)
		printf("  %#llx..%#llx\n", (unsigned long long)ranges[i].start, (unsigned long long)ranges[i].last);
	unsigned int types[] = { 0, 1, 77 };
	for (i = 0; i < 3; i++) {
		struct iommu_viommu_alloc va = {
			.size = sizeof(va),
			.type = types[i],
			.dev_id = bind.out_devid,
			.hwpt_id = at.pt_id,
		};
		rc = result(ioctl(fd, IOMMU_VIOMMU_ALLOC, &va));
		printf("viommu_alloc type %u on the attached HWPT: %d\n", types[i], rc);
	}
	close(dev);
	close(fd);
	return 0;
}
