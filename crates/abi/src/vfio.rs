//! The VFIO pieces of `include/uapi/linux/vfio.h` that iommufd serves.
//!
//! Three parts: the type1 container API that iommufd emulates on
//! `/dev/vfio/vfio` (API version, extensions, MAP/UNMAP_DMA, GET_INFO with its
//! capability chain), the group API of `/dev/vfio/<group>` (status, container,
//! device descriptors), and the device API (cdev bind to an iommufd, attach
//! and detach a page table, optionally per PASID) plus the basic device
//! queries a mock or passthrough device answers. Every request is
//! `_IO(';', 100 + n)`.
//!
//! Several structs end in a C flexible array member (`data[]`, `areas[]`,
//! ...); the Rust structs stop before it and the trailing bytes are handled
//! by whoever parses the buffer.

use crate::ioctl::io;

/// `VFIO_TYPE`: the ioctl type byte, `';'` (shared with iommufd).
pub const VFIO_TYPE: u32 = b';' as u32;
/// `VFIO_BASE`: first VFIO ioctl number.
pub const VFIO_BASE: u32 = 100;
/// `VFIO_API_VERSION`: value returned by [`VFIO_GET_API_VERSION`].
pub const VFIO_API_VERSION: u32 = 0;

/// Extension IDs for [`VFIO_CHECK_EXTENSION`] / IOMMU types for [`VFIO_SET_IOMMU`].
pub const VFIO_TYPE1_IOMMU: u32 = 1;
pub const VFIO_SPAPR_TCE_IOMMU: u32 = 2;
#[allow(non_upper_case_globals)]
pub const VFIO_TYPE1v2_IOMMU: u32 = 3;
pub const VFIO_DMA_CC_IOMMU: u32 = 4;
pub const VFIO_EEH: u32 = 5;
/// Former `VFIO_TYPE1_NESTING_IOMMU`; the value is reserved in mainline.
pub const VFIO_TYPE1_NESTING_IOMMU: u32 = 6;
#[allow(non_upper_case_globals)]
pub const VFIO_SPAPR_TCE_v2_IOMMU: u32 = 7;
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;
pub const VFIO_UNMAP_ALL: u32 = 9;
pub const VFIO_UPDATE_VADDR: u32 = 10;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`.
const fn vfio_io(n: u32) -> u32 {
    io(VFIO_TYPE, VFIO_BASE + n)
}

/// Container (`/dev/vfio/vfio`) requests.
pub const VFIO_GET_API_VERSION: u32 = vfio_io(0);
pub const VFIO_CHECK_EXTENSION: u32 = vfio_io(1);
pub const VFIO_SET_IOMMU: u32 = vfio_io(2);
/// Group (`/dev/vfio/<group>`) requests.
pub const VFIO_GROUP_GET_STATUS: u32 = vfio_io(3);
/// The argument points to the container's descriptor (a C `int`).
pub const VFIO_GROUP_SET_CONTAINER: u32 = vfio_io(4);
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = vfio_io(5);
/// The argument points to the device's name, a NUL-terminated string (for
/// PCI the address, optionally followed by ` vf_token=<UUID>`); the result
/// is a new descriptor for the device.
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = vfio_io(6);
/// Device fd requests.
pub const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
pub const VFIO_DEVICE_SET_IRQS: u32 = vfio_io(10);
pub const VFIO_DEVICE_RESET: u32 = vfio_io(11);
/// Type1 container requests (valid after [`VFIO_SET_IOMMU`]).
pub const VFIO_IOMMU_GET_INFO: u32 = vfio_io(12);
pub const VFIO_IOMMU_MAP_DMA: u32 = vfio_io(13);
pub const VFIO_IOMMU_UNMAP_DMA: u32 = vfio_io(14);
pub const VFIO_IOMMU_ENABLE: u32 = vfio_io(15);
pub const VFIO_IOMMU_DISABLE: u32 = vfio_io(16);
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = vfio_io(17);
/// More device fd requests. The VFIO numbers are per file type: these share
/// their numbers with the type1 container requests above.
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = vfio_io(12);
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = vfio_io(13);
pub const VFIO_DEVICE_QUERY_GFX_PLANE: u32 = vfio_io(14);
pub const VFIO_DEVICE_GET_GFX_DMABUF: u32 = vfio_io(15);
pub const VFIO_DEVICE_IOEVENTFD: u32 = vfio_io(16);
pub const VFIO_DEVICE_FEATURE: u32 = vfio_io(17);
/// Device cdev (`/dev/vfio/devices/vfioN`) requests.
pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = vfio_io(18);
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = vfio_io(19);
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u32 = vfio_io(20);

abi_struct! {
    /// `struct vfio_group_status`: reply of [`VFIO_GROUP_GET_STATUS`].
    VfioGroupStatus, 8 {
        @0 argsz: u32,
        @4 flags: u32,
    }
}

/// `vfio_group_status.flags`: every device of the group may be given to
/// user space (no kernel driver owns its DMA).
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// `vfio_group_status.flags`: the group has a container.
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

abi_struct! {
    /// `struct vfio_info_cap_header`: links the capability chain of an INFO
    /// reply; `next` is an offset from the start of the reply buffer (0 ends).
    VfioInfoCapHeader, 8 {
        @0 id: u16,
        @2 version: u16,
        @4 next: u32,
    }

    /// `struct vfio_device_info`: reply of [`VFIO_DEVICE_GET_INFO`].
    VfioDeviceInfo, 24 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 num_regions: u32,
        @12 num_irqs: u32,
        @16 cap_offset: u32,
        @20 pad: u32,
    }
}

/// `vfio_device_info.flags`.
pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
pub const VFIO_DEVICE_FLAGS_PLATFORM: u32 = 1 << 2;
pub const VFIO_DEVICE_FLAGS_AMBA: u32 = 1 << 3;
pub const VFIO_DEVICE_FLAGS_CCW: u32 = 1 << 4;
pub const VFIO_DEVICE_FLAGS_AP: u32 = 1 << 5;
pub const VFIO_DEVICE_FLAGS_FSL_MC: u32 = 1 << 6;
pub const VFIO_DEVICE_FLAGS_CAPS: u32 = 1 << 7;
pub const VFIO_DEVICE_FLAGS_CDX: u32 = 1 << 8;

abi_struct! {
    /// `struct vfio_region_info`: reply of [`VFIO_DEVICE_GET_REGION_INFO`] for
    /// region `index`; `offset` is where the region sits in the device fd.
    VfioRegionInfo, 32 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 index: u32,
        @12 cap_offset: u32,
        @16 size: u64,
        @24 offset: u64,
    }
}

/// `vfio_region_info.flags`.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// Region info capability IDs.
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;

abi_struct! {
    /// `struct vfio_region_sparse_mmap_area`: one mmap-able window of a region.
    VfioRegionSparseMmapArea, 16 {
        @0 offset: u64,
        @8 size: u64,
    }

    /// `struct vfio_region_info_cap_sparse_mmap` without its trailing
    /// `areas[nr_areas]` array of [`VfioRegionSparseMmapArea`].
    VfioRegionInfoCapSparseMmap, 16 {
        @0 header: VfioInfoCapHeader,
        @8 nr_areas: u32,
        @12 reserved: u32,
    }

    /// `struct vfio_region_info_cap_type`: bus-specific type of a region.
    VfioRegionInfoCapType, 16 {
        @0 header: VfioInfoCapHeader,
        @8 type_: u32,
        @12 subtype: u32,
    }

    /// `struct vfio_irq_info`: reply of [`VFIO_DEVICE_GET_IRQ_INFO`].
    VfioIrqInfo, 16 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 index: u32,
        @12 count: u32,
    }
}

/// `vfio_irq_info.flags`.
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

abi_struct! {
    /// `struct vfio_irq_set` without its trailing `data[]` (none, `u8` bools
    /// or `i32` eventfds, one per IRQ, as `flags` says). The C struct is
    /// 20 bytes and 4-byte aligned, so `data` starts at offset 20.
    VfioIrqSet, 20 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 index: u32,
        @12 start: u32,
        @16 count: u32,
    }
}

/// `vfio_irq_set.flags`: one data type bit and one action bit.
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
pub const VFIO_IRQ_SET_DATA_TYPE_MASK: u32 =
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
pub const VFIO_IRQ_SET_ACTION_TYPE_MASK: u32 =
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

/// Fixed region indexes of a vfio-pci device.
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
pub const VFIO_PCI_BAR1_REGION_INDEX: u32 = 1;
pub const VFIO_PCI_BAR2_REGION_INDEX: u32 = 2;
pub const VFIO_PCI_BAR3_REGION_INDEX: u32 = 3;
pub const VFIO_PCI_BAR4_REGION_INDEX: u32 = 4;
pub const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;

/// vfio-pci's file layout: region `index` starts at file offset
/// `index << VFIO_PCI_OFFSET_SHIFT` (`include/linux/vfio_pci_core.h`; not
/// uAPI, but every vfio-pci user relies on what `GET_REGION_INFO` reports,
/// which is this).
pub const VFIO_PCI_OFFSET_SHIFT: u32 = 40;
/// The offset within a region, from a file offset.
pub const VFIO_PCI_OFFSET_MASK: u64 = (1 << VFIO_PCI_OFFSET_SHIFT) - 1;

/// `VFIO_PCI_INDEX_TO_OFFSET`: the file offset where region `index` starts.
pub const fn vfio_pci_index_to_offset(index: u32) -> u64 {
    (index as u64) << VFIO_PCI_OFFSET_SHIFT
}

/// `VFIO_PCI_OFFSET_TO_INDEX`: the region a file offset falls in.
pub const fn vfio_pci_offset_to_index(offset: u64) -> u64 {
    offset >> VFIO_PCI_OFFSET_SHIFT
}

/// Fixed IRQ indexes of a vfio-pci device.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

/// Device info capability IDs (`vfio_device_info` chain).
pub const VFIO_DEVICE_INFO_CAP_ZPCI_BASE: u16 = 1;
pub const VFIO_DEVICE_INFO_CAP_ZPCI_GROUP: u16 = 2;
pub const VFIO_DEVICE_INFO_CAP_ZPCI_UTIL: u16 = 3;
pub const VFIO_DEVICE_INFO_CAP_ZPCI_PFIP: u16 = 4;
pub const VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP: u16 = 5;

abi_struct! {
    /// `struct vfio_pci_hot_reset_info` without its trailing `devices[]`
    /// (`struct vfio_pci_dependent_device`, 8 bytes each): argument and
    /// reply of [`VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`].
    VfioPciHotResetInfo, 12 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 count: u32,
    }

    /// `struct vfio_pci_hot_reset` without its trailing `group_fds[]`:
    /// argument of [`VFIO_DEVICE_PCI_HOT_RESET`] (a cdev passes count 0).
    VfioPciHotReset, 12 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 count: u32,
    }

    /// `struct vfio_device_feature` without its trailing `data[]`:
    /// argument of [`VFIO_DEVICE_FEATURE`].
    VfioDeviceFeature, 8 {
        @0 argsz: u32,
        @4 flags: u32,
    }
}

/// `vfio_pci_hot_reset_info.flags`.
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID: u32 = 1 << 0;
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED: u32 = 1 << 1;

/// `vfio_device_feature.flags`: the feature index and what to do with it.
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;

/// Feature index (`flags & VFIO_DEVICE_FEATURE_MASK`): with
/// [`VFIO_DEVICE_FEATURE_GET`], export ranges of a region (a BAR) as a
/// dma-buf; the ioctl returns the new descriptor. Data:
/// [`VfioDeviceFeatureDmaBuf`] followed by `nr_ranges`
/// [`VfioRegionDmaRange`].
pub const VFIO_DEVICE_FEATURE_DMA_BUF: u32 = 11;

abi_struct! {
    /// `struct vfio_region_dma_range`: one slice of the region.
    VfioRegionDmaRange, 16 {
        @0 offset: u64,
        @8 length: u64,
    }

    /// `struct vfio_device_feature_dma_buf` without its trailing
    /// `dma_ranges[]`.
    VfioDeviceFeatureDmaBuf, 16 {
        @0 region_index: u32,
        @4 open_flags: u32,
        @8 flags: u32,
        @12 nr_ranges: u32,
    }
}

/// Migration features (`VFIO_DEVICE_FEATURE_*`) and the data FD's request.
pub const VFIO_DEVICE_FEATURE_MIGRATION: u32 = 1;
pub const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: u32 = 2;
pub const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: u32 = 9;
#[allow(non_upper_case_globals)]
pub const VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2: u32 = 12;
/// `vfio_device_feature_migration.flags`.
pub const VFIO_MIGRATION_STOP_COPY: u64 = 1 << 0;
pub const VFIO_MIGRATION_P2P: u64 = 1 << 1;
pub const VFIO_MIGRATION_PRE_COPY: u64 = 1 << 2;
/// `enum vfio_device_mig_state`.
pub const VFIO_DEVICE_STATE_ERROR: u32 = 0;
pub const VFIO_DEVICE_STATE_STOP: u32 = 1;
pub const VFIO_DEVICE_STATE_RUNNING: u32 = 2;
pub const VFIO_DEVICE_STATE_STOP_COPY: u32 = 3;
pub const VFIO_DEVICE_STATE_RESUMING: u32 = 4;
pub const VFIO_DEVICE_STATE_RUNNING_P2P: u32 = 5;
pub const VFIO_DEVICE_STATE_PRE_COPY: u32 = 6;
pub const VFIO_DEVICE_STATE_PRE_COPY_P2P: u32 = 7;
/// On a migration data FD: `struct vfio_precopy_info`.
pub const VFIO_MIG_GET_PRECOPY_INFO: u32 = vfio_io(21);
/// `vfio_precopy_info.flags` (output, after opting in with
/// [`VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2`]).
pub const VFIO_PRECOPY_INFO_REINIT: u32 = 1 << 0;

abi_struct! {
    /// `struct vfio_device_feature_migration`: which optional states.
    VfioDeviceFeatureMigration, 8 {
        @0 flags: u64,
    }

    /// `struct vfio_device_feature_mig_state`.
    VfioDeviceFeatureMigState, 8 {
        @0 device_state: u32,
        @4 data_fd: i32,
    }

    /// `struct vfio_device_feature_mig_data_size`.
    VfioDeviceFeatureMigDataSize, 8 {
        @0 stop_copy_length: u64,
    }

    /// `struct vfio_precopy_info`: argument of [`VFIO_MIG_GET_PRECOPY_INFO`].
    VfioPrecopyInfo, 24 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 initial_bytes: u64,
        @16 dirty_bytes: u64,
    }
}

abi_struct! {
    /// `struct vfio_iommu_type1_info`: reply of [`VFIO_IOMMU_GET_INFO`].
    VfioIommuType1Info, 24 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 iova_pgsizes: u64,
        @16 cap_offset: u32,
        @20 pad: u32,
    }
}

/// `vfio_iommu_type1_info.flags`.
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;

/// Type1 info capability IDs.
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: u16 = 2;
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

abi_struct! {
    /// `struct vfio_iova_range`: inclusive IOVA range `[start, end]`.
    VfioIovaRange, 16 {
        @0 start: u64,
        @8 end: u64,
    }

    /// `struct vfio_iommu_type1_info_cap_iova_range` without its trailing
    /// `iova_ranges[nr_iovas]` array of [`VfioIovaRange`].
    VfioIommuType1InfoCapIovaRange, 16 {
        @0 header: VfioInfoCapHeader,
        @8 nr_iovas: u32,
        @12 reserved: u32,
    }

    /// `struct vfio_iommu_type1_info_cap_migration`: dirty-logging limits.
    VfioIommuType1InfoCapMigration, 32 {
        @0 header: VfioInfoCapHeader,
        @8 flags: u32,
        /// Implicit padding in C before the `__u64`.
        @12 __pad: u32,
        @16 pgsize_bitmap: u64,
        @24 max_dirty_bitmap_size: u64,
    }

    /// `struct vfio_iommu_type1_info_dma_avail`: how many more DMA mappings
    /// the container accepts.
    VfioIommuType1InfoDmaAvail, 12 {
        @0 header: VfioInfoCapHeader,
        @8 avail: u32,
    }

    /// `struct vfio_iommu_type1_dma_map`: argument of [`VFIO_IOMMU_MAP_DMA`].
    VfioIommuType1DmaMap, 32 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 vaddr: u64,
        @16 iova: u64,
        @24 size: u64,
    }
}

/// `vfio_iommu_type1_dma_map.flags`.
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;

abi_struct! {
    /// `struct vfio_bitmap`: user dirty bitmap (one bit per `pgsize`);
    /// `data` is a user pointer.
    VfioBitmap, 24 {
        @0 pgsize: u64,
        @8 size: u64,
        @16 data: u64,
    }

    /// `struct vfio_iommu_type1_dma_unmap`: argument of
    /// [`VFIO_IOMMU_UNMAP_DMA`], without the trailing `data[]` (a
    /// [`VfioBitmap`] when the dirty-bitmap flag is set). `size` returns the
    /// number of bytes unmapped.
    VfioIommuType1DmaUnmap, 24 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 iova: u64,
        @16 size: u64,
    }
}

/// `vfio_iommu_type1_dma_unmap.flags`.
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

abi_struct! {
    /// `struct vfio_iommu_type1_dirty_bitmap` without its trailing `data[]`
    /// (a [`VfioIommuType1DirtyBitmapGet`] for GET_BITMAP).
    VfioIommuType1DirtyBitmap, 8 {
        @0 argsz: u32,
        @4 flags: u32,
    }

    /// `struct vfio_iommu_type1_dirty_bitmap_get`.
    VfioIommuType1DirtyBitmapGet, 40 {
        @0 iova: u64,
        @8 size: u64,
        @16 bitmap: VfioBitmap,
    }
}

/// `vfio_iommu_type1_dirty_bitmap.flags`.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

abi_struct! {
    /// `struct vfio_device_bind_iommufd`: bind a device cdev to an iommufd.
    ///
    /// Mainline appended `token_uuid_ptr`; callers built against older
    /// headers pass `argsz` 16 (up to `out_devid`), which stays valid.
    VfioDeviceBindIommufd, 24 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 iommufd: i32,
        @12 out_devid: u32,
        @16 token_uuid_ptr: u64,
    }

    /// `struct vfio_device_attach_iommufd_pt`: attach the device (or one of
    /// its PASIDs) to an IOAS/HWPT; `pt_id` returns the HWPT used. `pasid`
    /// is read only with [`VFIO_DEVICE_ATTACH_PASID`] (older callers pass
    /// `argsz` 12).
    VfioDeviceAttachIommufdPt, 16 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 pt_id: u32,
        @12 pasid: u32,
    }

    /// `struct vfio_device_detach_iommufd_pt`: detach the device (or one of
    /// its PASIDs). `pasid` is read only with [`VFIO_DEVICE_DETACH_PASID`]
    /// (older callers pass `argsz` 8).
    VfioDeviceDetachIommufdPt, 12 {
        @0 argsz: u32,
        @4 flags: u32,
        @8 pasid: u32,
    }
}

/// `vfio_device_bind_iommufd.flags`: `token_uuid_ptr` is valid.
pub const VFIO_DEVICE_BIND_FLAG_TOKEN: u32 = 1 << 0;
/// `vfio_device_attach_iommufd_pt.flags`: `pasid` is valid.
pub const VFIO_DEVICE_ATTACH_PASID: u32 = 1 << 0;
/// `vfio_device_detach_iommufd_pt.flags`: `pasid` is valid.
pub const VFIO_DEVICE_DETACH_PASID: u32 = 1 << 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_IOMMU_GET_INFO);
        assert_eq!(VFIO_DEVICE_FEATURE, 0x3b75);
        assert_eq!(VFIO_MIG_GET_PRECOPY_INFO, 0x3b79);
        // The group requests, as <linux/vfio.h> spells them.
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_UNSET_CONTAINER, 0x3b69);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
    }

    #[test]
    fn group_status_layout() {
        assert_eq!(core::mem::size_of::<VfioGroupStatus>(), 8);
        assert_eq!(core::mem::offset_of!(VfioGroupStatus, flags), 4);
        assert_eq!((VFIO_GROUP_FLAGS_VIABLE, VFIO_GROUP_FLAGS_CONTAINER_SET), (1, 2));
    }

    #[test]
    fn region_offsets() {
        assert_eq!(vfio_pci_index_to_offset(VFIO_PCI_CONFIG_REGION_INDEX), 0x700_0000_0000);
        assert_eq!(vfio_pci_offset_to_index(0x700_0000_0123), 7);
        assert_eq!(0x700_0000_0123 & VFIO_PCI_OFFSET_MASK, 0x123);
    }
}
