/* SPDX-License-Identifier: Apache-2.0 */
/*
 * vtd_iommufd: what an iommufd client sees from a VT-d unit through a VFIO
 * device cdev, as the Linux intel driver would answer on that part.
 *
 *   vtd_iommufd server CAP ECAP   (run with --iommu vtd, a PASID device)
 *   vtd_iommufd client CAP ECAP   (run with the client unit's boot values)
 *
 * IOMMU_GET_HW_INFO returns the unit's CAP/ECAP registers (type
 * INTEL_VTD, the SPR17 erratum flag the driver always sets), the dirty
 * tracking capability only with SSADS, the device's PASID width;
 * NEST_PARENT and DIRTY_TRACKING HWPTs exist only where the registers allow
 * them; a nested HWPT takes IOMMU_HWPT_DATA_VTD_S1; IOMMU_HWPT_INVALIDATE
 * validates VT-d entries with the driver's errnos and entry_num; the IOVA
 * ranges follow the address width and exclude the interrupt window.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <linux/vfio.h>

#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
};
struct vfio_device_attach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pt_id;
};
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
#endif

static int hwpt_alloc(int fd, __u32 flags, __u32 dev, __u32 pt, __u32 type, void *data, __u32 len, __u32 *out)
{
	struct iommu_hwpt_alloc a = {
		.size = sizeof(a), .flags = flags, .dev_id = dev, .pt_id = pt,
		.data_type = type, .data_len = len, .data_uptr = (uintptr_t)data,
	};
	int rc = ioctl(fd, IOMMU_HWPT_ALLOC, &a);

	if (!rc && out)
		*out = a.out_hwpt_id;
	return rc;
}

static int invalidate(int fd, __u32 hwpt, __u32 type, void *entries, __u32 len, __u32 *num)
{
	struct iommu_hwpt_invalidate inv = {
		.size = sizeof(inv), .hwpt_id = hwpt, .data_uptr = (uintptr_t)entries,
		.data_type = type, .entry_len = len, .entry_num = *num,
	};
	int rc = ioctl(fd, IOMMU_HWPT_INVALIDATE, &inv);

	*num = inv.entry_num;
	return rc;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s server|client CAP ECAP\n", argv[0]);
		return 2;
	}
	int server = !strcmp(argv[1], "server");
	unsigned long long cap = strtoull(argv[2], NULL, 16), ecap = strtoull(argv[3], NULL, 16);

	int iommufd = CHECK_OK(open("/dev/iommu", O_RDWR));
	int dev = CHECK_OK(open("/dev/vfio/devices/vfio0", O_RDWR));
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	CHECK_OK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind));
	__u32 devid = bind.out_devid;

	/* GET_HW_INFO: the registers as the unit has them. */
	struct iommu_hw_info_vtd vtd = {};
	struct iommu_hw_info info = {
		.size = sizeof(info), .dev_id = devid, .data_len = sizeof(vtd), .data_uptr = (uintptr_t)&vtd,
	};
	CHECK_OK(ioctl(iommufd, IOMMU_GET_HW_INFO, &info));
	CHECK_EQ(info.out_data_type, IOMMU_HW_INFO_TYPE_INTEL_VTD);
	CHECK_EQ(info.data_len, sizeof(vtd));
	CHECK_EQ(vtd.cap_reg, cap);
	CHECK_EQ(vtd.ecap_reg, ecap);
	CHECK_EQ(vtd.flags, IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17);
	CHECK_EQ(!!(info.out_capabilities & IOMMU_HW_CAP_DIRTY_TRACKING), server);
	CHECK_EQ(info.out_max_pasid_log2, server ? 20 : 0);
	/* Asking for another vendor's data is refused. */
	info.in_data_type = IOMMU_HW_INFO_TYPE_ARM_SMMUV3;
	info.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE;
	CHECK_ERR(ioctl(iommufd, IOMMU_GET_HW_INFO, &info), EOPNOTSUPP);

	__u32 ioas = 0, parent = 0, nested = 0;
	CHECK_OK(ioas_alloc(iommufd, &ioas));
	if (!server) {
		/* No nesting, no SSADS on this unit: the driver refuses both. */
		CHECK_ERR(hwpt_alloc(iommufd, IOMMU_HWPT_ALLOC_NEST_PARENT, devid, ioas, 0, NULL, 0, NULL), EOPNOTSUPP);
		CHECK_ERR(hwpt_alloc(iommufd, IOMMU_HWPT_ALLOC_DIRTY_TRACKING, devid, ioas, 0, NULL, 0, NULL),
			  EOPNOTSUPP);
		/* Attached: a 39-bit domain, the interrupt window reserved. */
		struct vfio_device_attach_iommufd_pt at = { .argsz = 12, .pt_id = ioas };
		CHECK_OK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
		struct iommu_iova_range ranges[4];
		struct iommu_ioas_iova_ranges r = {
			.size = sizeof(r), .ioas_id = ioas, .num_iovas = 4, .allowed_iovas = (uintptr_t)ranges,
		};
		CHECK_OK(ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &r));
		CHECK_EQ(r.num_iovas, 2);
		CHECK_EQ(ranges[0].start, 0);
		CHECK_EQ(ranges[0].last, 0xfedfffffULL);
		CHECK_EQ(ranges[1].start, 0xfef00000ULL);
		CHECK_EQ(ranges[1].last, (1ULL << 39) - 1);
		CHECK_EQ(r.out_iova_alignment, 4096);
		return pass();
	}

	/* A nesting parent with dirty tracking, and a guest stage 1 on it. */
	CHECK_OK(hwpt_alloc(iommufd, IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING, devid, ioas, 0,
			    NULL, 0, &parent));
	struct iommu_hwpt_vtd_s1 s1 = { .pgtbl_addr = 0x100000, .addr_width = 48 };
	/* Shorter than the struct's mandatory part: EINVAL. */
	CHECK_ERR(hwpt_alloc(iommufd, 0, devid, parent, IOMMU_HWPT_DATA_VTD_S1, &s1, 16, NULL), EINVAL);
	/* On a parent that is not a nesting parent: EINVAL. */
	__u32 plain;
	CHECK_OK(hwpt_alloc(iommufd, 0, devid, ioas, 0, NULL, 0, &plain));
	CHECK_ERR(hwpt_alloc(iommufd, 0, devid, plain, IOMMU_HWPT_DATA_VTD_S1, &s1, sizeof(s1), NULL), EINVAL);
	CHECK_OK(hwpt_alloc(iommufd, 0, devid, parent, IOMMU_HWPT_DATA_VTD_S1, &s1, sizeof(s1), &nested));
	struct vfio_device_attach_iommufd_pt at = { .argsz = 12, .pt_id = nested };
	CHECK_OK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at));
	CHECK_EQ(at.pt_id, nested);

	/* Invalidation entries: the driver's checks, in order, and entry_num. */
	struct iommu_hwpt_vtd_s1_invalidate e[3] = {
		{ .addr = 0x200000, .npages = 16, .flags = IOMMU_VTD_INV_FLAGS_LEAF },
		{ .addr = 0x201000, .npages = 1, .flags = 0x80 },
		{ .addr = 0x1001, .npages = 1 },
	};
	__u32 num = 1;
	CHECK_OK(invalidate(iommufd, nested, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, e, sizeof(e[0]), &num));
	CHECK_EQ(num, 1);
	num = 3;
	CHECK_ERR(invalidate(iommufd, nested, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, e, sizeof(e[0]), &num), EOPNOTSUPP);
	CHECK_EQ(num, 1);
	num = 1;
	CHECK_ERR(invalidate(iommufd, nested, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, &e[2], sizeof(e[0]), &num), EINVAL);
	CHECK_EQ(num, 0);
	num = 1;
	CHECK_ERR(invalidate(iommufd, nested, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 + 0xbad, e, sizeof(e[0]), &num), EINVAL);
	CHECK_EQ(num, 0);
	/* Zero entries is a no-op that succeeds. */
	num = 0;
	CHECK_OK(invalidate(iommufd, nested, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, e, sizeof(e[0]), &num));

	/* Dirty tracking on the parent, over a mapped range (a harvest of an
	 * unmapped range is EINVAL, as iommu_read_and_clear_dirty says). */
	static char buf[64 * 4096] __attribute__((aligned(4096)));
	struct iommu_ioas_map map = {
		.size = sizeof(map), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas, .user_va = (uintptr_t)buf, .length = sizeof(buf), .iova = 0x10000000,
	};
	CHECK_OK(ioctl(iommufd, IOMMU_IOAS_MAP, &map));
	struct iommu_hwpt_set_dirty_tracking dt = {
		.size = sizeof(dt), .flags = IOMMU_HWPT_DIRTY_TRACKING_ENABLE, .hwpt_id = parent,
	};
	CHECK_OK(ioctl(iommufd, IOMMU_HWPT_SET_DIRTY_TRACKING, &dt));
	__u64 bitmap = 0;
	struct iommu_hwpt_get_dirty_bitmap gd = {
		.size = sizeof(gd), .hwpt_id = parent, .iova = 0x20000000, .length = 64 * 4096, .page_size = 4096,
		.data = (uintptr_t)&bitmap,
	};
	/* A range the IOAS does not map: the walk fails, and Linux 7.3 drops
	 * its error (0, nothing harvested; 6.12 answers EINVAL). */
	CHECK_OK(ioctl(iommufd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gd));
	CHECK_EQ(bitmap, 0);
	gd.iova = 0x10000000;
	CHECK_OK(ioctl(iommufd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gd));
	CHECK_EQ(bitmap, 0);
	return pass();
}
