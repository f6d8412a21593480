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

// Extension IDs for [`VFIO_CHECK_EXTENSION`] / IOMMU types for [`VFIO_SET_IOMMU`].
/// `VFIO_TYPE1_IOMMU`: the original type1 IOMMU backend.
pub const VFIO_TYPE1_IOMMU: u32 = 1;
/// `VFIO_SPAPR_TCE_IOMMU`: the POWER sPAPR TCE backend.
pub const VFIO_SPAPR_TCE_IOMMU: u32 = 2;
#[allow(non_upper_case_globals)]
/// `VFIO_TYPE1v2_IOMMU`: type1 with v2 semantics (no partial unmaps).
pub const VFIO_TYPE1v2_IOMMU: u32 = 3;
/// `VFIO_DMA_CC_IOMMU`: the IOMMU enforces DMA cache coherence.
pub const VFIO_DMA_CC_IOMMU: u32 = 4;
/// `VFIO_EEH`: POWER Enhanced Error Handling is available.
pub const VFIO_EEH: u32 = 5;
/// Former `VFIO_TYPE1_NESTING_IOMMU`; the value is reserved in mainline.
pub const VFIO_TYPE1_NESTING_IOMMU: u32 = 6;
#[allow(non_upper_case_globals)]
/// `VFIO_SPAPR_TCE_v2_IOMMU`: the second sPAPR TCE backend.
pub const VFIO_SPAPR_TCE_v2_IOMMU: u32 = 7;
/// `VFIO_NOIOMMU_IOMMU`: the unsafe no-IOMMU mode.
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;
/// `VFIO_UNMAP_ALL`: UNMAP_DMA accepts `VFIO_DMA_UNMAP_FLAG_ALL`.
pub const VFIO_UNMAP_ALL: u32 = 9;
/// `VFIO_UPDATE_VADDR`: MAP/UNMAP_DMA accept the VADDR flags.
pub const VFIO_UPDATE_VADDR: u32 = 10;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`.
const fn vfio_io(n: u32) -> u32 {
    io(VFIO_TYPE, VFIO_BASE + n)
}

// Container (`/dev/vfio/vfio`) requests.
/// `VFIO_GET_API_VERSION`: return [`VFIO_API_VERSION`].
pub const VFIO_GET_API_VERSION: u32 = vfio_io(0);
/// `VFIO_CHECK_EXTENSION`: ask whether an extension or IOMMU type is supported.
pub const VFIO_CHECK_EXTENSION: u32 = vfio_io(1);
/// `VFIO_SET_IOMMU`: choose the container's IOMMU backend.
pub const VFIO_SET_IOMMU: u32 = vfio_io(2);
// Group (`/dev/vfio/<group>`) requests.
/// `VFIO_GROUP_GET_STATUS`: fill a [`VfioGroupStatus`].
pub const VFIO_GROUP_GET_STATUS: u32 = vfio_io(3);
/// The argument points to the container's descriptor (a C `int`).
pub const VFIO_GROUP_SET_CONTAINER: u32 = vfio_io(4);
/// `VFIO_GROUP_UNSET_CONTAINER`: remove the group from its container.
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = vfio_io(5);
/// The argument points to the device's name, a NUL-terminated string (for
/// PCI the address, optionally followed by ` vf_token=<UUID>`); the result
/// is a new descriptor for the device.
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = vfio_io(6);
// Device fd requests.
/// `VFIO_DEVICE_GET_INFO`: fill a [`VfioDeviceInfo`].
pub const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);
/// `VFIO_DEVICE_GET_REGION_INFO`: fill a [`VfioRegionInfo`].
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`: fill a [`VfioIrqInfo`].
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
/// `VFIO_DEVICE_SET_IRQS`: configure interrupts with a [`VfioIrqSet`].
pub const VFIO_DEVICE_SET_IRQS: u32 = vfio_io(10);
/// `VFIO_DEVICE_RESET`: reset the device.
pub const VFIO_DEVICE_RESET: u32 = vfio_io(11);
// Type1 container requests (valid after [`VFIO_SET_IOMMU`]).
/// `VFIO_IOMMU_GET_INFO`: fill a [`VfioIommuType1Info`].
pub const VFIO_IOMMU_GET_INFO: u32 = vfio_io(12);
/// `VFIO_IOMMU_MAP_DMA`: map user memory with a [`VfioIommuType1DmaMap`].
pub const VFIO_IOMMU_MAP_DMA: u32 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA`: unmap with a [`VfioIommuType1DmaUnmap`].
pub const VFIO_IOMMU_UNMAP_DMA: u32 = vfio_io(14);
/// `VFIO_IOMMU_ENABLE`: enable the container's IOMMU (sPAPR only).
pub const VFIO_IOMMU_ENABLE: u32 = vfio_io(15);
/// `VFIO_IOMMU_DISABLE`: disable the container's IOMMU (sPAPR only).
pub const VFIO_IOMMU_DISABLE: u32 = vfio_io(16);
/// `VFIO_IOMMU_DIRTY_PAGES`: start, stop or read dirty page tracking.
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = vfio_io(17);
// More device fd requests. The VFIO numbers are per file type: these share
// their numbers with the type1 container requests above.
/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: list the devices a hot reset would affect.
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = vfio_io(12);
/// `VFIO_DEVICE_PCI_HOT_RESET`: reset the bus or slot of a PCI device.
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = vfio_io(13);
/// `VFIO_DEVICE_QUERY_GFX_PLANE`: describe a virtual GPU's display plane.
pub const VFIO_DEVICE_QUERY_GFX_PLANE: u32 = vfio_io(14);
/// `VFIO_DEVICE_GET_GFX_DMABUF`: export a display plane as a dma-buf.
pub const VFIO_DEVICE_GET_GFX_DMABUF: u32 = vfio_io(15);
/// `VFIO_DEVICE_IOEVENTFD`: have an eventfd write a value to a device register.
pub const VFIO_DEVICE_IOEVENTFD: u32 = vfio_io(16);
/// `VFIO_DEVICE_FEATURE`: get, set or probe a device feature ([`VfioDeviceFeature`]).
pub const VFIO_DEVICE_FEATURE: u32 = vfio_io(17);
// Device cdev (`/dev/vfio/devices/vfioN`) requests.
/// `VFIO_DEVICE_BIND_IOMMUFD`: bind a device cdev to an iommufd.
pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = vfio_io(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attach the device to an IOAS or HWPT.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = vfio_io(19);
/// `VFIO_DEVICE_DETACH_IOMMUFD_PT`: detach the device from its page table.
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u32 = vfio_io(20);

abi_struct! {
    /// `struct vfio_group_status`: reply of [`VFIO_GROUP_GET_STATUS`].
    VfioGroupStatus, 8 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_GROUP_FLAGS_*` bits.
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
        /// Capability ID.
        @0 id: u16,
        /// Version of the capability's layout.
        @2 version: u16,
        /// Offset of the next capability from the start of the reply, 0 at the end.
        @4 next: u32,
    }

    /// `struct vfio_device_info`: reply of [`VFIO_DEVICE_GET_INFO`].
    VfioDeviceInfo, 24 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_DEVICE_FLAGS_*` bits.
        @4 flags: u32,
        /// Number of regions.
        @8 num_regions: u32,
        /// Number of IRQ indexes.
        @12 num_irqs: u32,
        /// Offset of the first capability, valid with `VFIO_DEVICE_FLAGS_CAPS`.
        @16 cap_offset: u32,
        /// Padding; must be zero.
        @20 pad: u32,
    }
}

// `vfio_device_info.flags`.
/// `VFIO_DEVICE_FLAGS_RESET`: the device supports [`VFIO_DEVICE_RESET`].
pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`: a vfio-pci device.
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// `VFIO_DEVICE_FLAGS_PLATFORM`: a vfio-platform device.
pub const VFIO_DEVICE_FLAGS_PLATFORM: u32 = 1 << 2;
/// `VFIO_DEVICE_FLAGS_AMBA`: a vfio-amba device.
pub const VFIO_DEVICE_FLAGS_AMBA: u32 = 1 << 3;
/// `VFIO_DEVICE_FLAGS_CCW`: a vfio-ccw (s390 channel I/O) device.
pub const VFIO_DEVICE_FLAGS_CCW: u32 = 1 << 4;
/// `VFIO_DEVICE_FLAGS_AP`: a vfio-ap (s390 crypto adapter) device.
pub const VFIO_DEVICE_FLAGS_AP: u32 = 1 << 5;
/// `VFIO_DEVICE_FLAGS_FSL_MC`: a vfio-fsl-mc device.
pub const VFIO_DEVICE_FLAGS_FSL_MC: u32 = 1 << 6;
/// `VFIO_DEVICE_FLAGS_CAPS`: the reply carries a capability chain.
pub const VFIO_DEVICE_FLAGS_CAPS: u32 = 1 << 7;
/// `VFIO_DEVICE_FLAGS_CDX`: a vfio-cdx device.
pub const VFIO_DEVICE_FLAGS_CDX: u32 = 1 << 8;

abi_struct! {
    /// `struct vfio_region_info`: reply of [`VFIO_DEVICE_GET_REGION_INFO`] for
    /// region `index`; `offset` is where the region sits in the device fd.
    VfioRegionInfo, 32 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_REGION_INFO_FLAG_*` bits.
        @4 flags: u32,
        /// Region to describe.
        @8 index: u32,
        /// Offset of the first capability, valid with `VFIO_REGION_INFO_FLAG_CAPS`.
        @12 cap_offset: u32,
        /// Size of the region in bytes.
        @16 size: u64,
        /// Offset of the region in the device fd.
        @24 offset: u64,
    }
}

// `vfio_region_info.flags`.
/// `VFIO_REGION_INFO_FLAG_READ`: the region can be read.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`: the region can be written.
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`: the region can be mmap-ed.
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_REGION_INFO_FLAG_CAPS`: the reply carries a capability chain.
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

// Region info capability IDs.
/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: only some areas are mmap-able ([`VfioRegionInfoCapSparseMmap`]).
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// `VFIO_REGION_INFO_CAP_TYPE`: the region has a type and subtype ([`VfioRegionInfoCapType`]).
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;
/// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: the MSI-X table in this region may be mmap-ed.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;

abi_struct! {
    /// `struct vfio_region_sparse_mmap_area`: one mmap-able window of a region.
    VfioRegionSparseMmapArea, 16 {
        /// Offset of the area within the region.
        @0 offset: u64,
        /// Size of the area.
        @8 size: u64,
    }

    /// `struct vfio_region_info_cap_sparse_mmap` without its trailing
    /// `areas[nr_areas]` array of [`VfioRegionSparseMmapArea`].
    VfioRegionInfoCapSparseMmap, 16 {
        /// Capability chain header.
        @0 header: VfioInfoCapHeader,
        /// Number of areas that follow.
        @8 nr_areas: u32,
        /// Reserved; must be zero.
        @12 reserved: u32,
    }

    /// `struct vfio_region_info_cap_type`: bus-specific type of a region.
    VfioRegionInfoCapType, 16 {
        /// Capability chain header.
        @0 header: VfioInfoCapHeader,
        /// Region type, a bus-specific namespace.
        @8 type_: u32,
        /// Region subtype within `type_`.
        @12 subtype: u32,
    }

    /// `struct vfio_irq_info`: reply of [`VFIO_DEVICE_GET_IRQ_INFO`].
    VfioIrqInfo, 16 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_IRQ_INFO_*` bits.
        @4 flags: u32,
        /// IRQ index to describe.
        @8 index: u32,
        /// Number of IRQs at this index.
        @12 count: u32,
    }
}

// `vfio_irq_info.flags`.
/// `VFIO_IRQ_INFO_EVENTFD`: the IRQ can signal an eventfd.
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `VFIO_IRQ_INFO_MASKABLE`: the IRQ can be masked and unmasked.
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// `VFIO_IRQ_INFO_AUTOMASKED`: the IRQ is masked on delivery (level-triggered).
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// `VFIO_IRQ_INFO_NORESIZE`: the number of enabled vectors cannot change without disabling all.
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

abi_struct! {
    /// `struct vfio_irq_set` without its trailing `data[]` (none, `u8` bools
    /// or `i32` eventfds, one per IRQ, as `flags` says). The C struct is
    /// 20 bytes and 4-byte aligned, so `data` starts at offset 20.
    VfioIrqSet, 20 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// One `VFIO_IRQ_SET_DATA_*` and one `VFIO_IRQ_SET_ACTION_*` bit.
        @4 flags: u32,
        /// IRQ index acted on.
        @8 index: u32,
        /// First IRQ of the range.
        @12 start: u32,
        /// Number of IRQs in the range.
        @16 count: u32,
    }
}

// `vfio_irq_set.flags`: one data type bit and one action bit.
/// `VFIO_IRQ_SET_DATA_NONE`: no data; act on every IRQ in the range.
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`: data is one byte per IRQ, act where nonzero.
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`: data is one eventfd per IRQ (-1 removes it).
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_MASK`: mask the IRQs.
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`: unmask the IRQs.
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`: trigger the IRQs, or set their eventfds.
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// `VFIO_IRQ_SET_DATA_TYPE_MASK`: all data-type bits.
pub const VFIO_IRQ_SET_DATA_TYPE_MASK: u32 =
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
/// `VFIO_IRQ_SET_ACTION_TYPE_MASK`: all action bits.
pub const VFIO_IRQ_SET_ACTION_TYPE_MASK: u32 =
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

// Fixed region indexes of a vfio-pci device.
/// `VFIO_PCI_BAR0_REGION_INDEX`: BAR 0.
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// `VFIO_PCI_BAR1_REGION_INDEX`: BAR 1.
pub const VFIO_PCI_BAR1_REGION_INDEX: u32 = 1;
/// `VFIO_PCI_BAR2_REGION_INDEX`: BAR 2.
pub const VFIO_PCI_BAR2_REGION_INDEX: u32 = 2;
/// `VFIO_PCI_BAR3_REGION_INDEX`: BAR 3.
pub const VFIO_PCI_BAR3_REGION_INDEX: u32 = 3;
/// `VFIO_PCI_BAR4_REGION_INDEX`: BAR 4.
pub const VFIO_PCI_BAR4_REGION_INDEX: u32 = 4;
/// `VFIO_PCI_BAR5_REGION_INDEX`: BAR 5.
pub const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
/// `VFIO_PCI_ROM_REGION_INDEX`: the expansion ROM.
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
/// `VFIO_PCI_CONFIG_REGION_INDEX`: PCI configuration space.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// `VFIO_PCI_VGA_REGION_INDEX`: legacy VGA ranges.
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;
/// `VFIO_PCI_NUM_REGIONS`: number of fixed regions (device-specific ones follow).
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

// Fixed IRQ indexes of a vfio-pci device.
/// `VFIO_PCI_INTX_IRQ_INDEX`: legacy INTx.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
/// `VFIO_PCI_MSI_IRQ_INDEX`: MSI vectors.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// `VFIO_PCI_MSIX_IRQ_INDEX`: MSI-X vectors.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
/// `VFIO_PCI_ERR_IRQ_INDEX`: AER error notification.
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
/// `VFIO_PCI_REQ_IRQ_INDEX`: request to release the device.
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
/// `VFIO_PCI_NUM_IRQS`: number of IRQ indexes.
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

// Device info capability IDs (`vfio_device_info` chain).
/// `VFIO_DEVICE_INFO_CAP_ZPCI_BASE`: s390 zPCI base information.
pub const VFIO_DEVICE_INFO_CAP_ZPCI_BASE: u16 = 1;
/// `VFIO_DEVICE_INFO_CAP_ZPCI_GROUP`: s390 zPCI function group information.
pub const VFIO_DEVICE_INFO_CAP_ZPCI_GROUP: u16 = 2;
/// `VFIO_DEVICE_INFO_CAP_ZPCI_UTIL`: s390 zPCI utility string.
pub const VFIO_DEVICE_INFO_CAP_ZPCI_UTIL: u16 = 3;
/// `VFIO_DEVICE_INFO_CAP_ZPCI_PFIP`: s390 zPCI function path.
pub const VFIO_DEVICE_INFO_CAP_ZPCI_PFIP: u16 = 4;
/// `VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP`: PCIe AtomicOp completer support.
pub const VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP: u16 = 5;

abi_struct! {
    /// `struct vfio_pci_hot_reset_info` without its trailing `devices[]`
    /// (`struct vfio_pci_dependent_device`, 8 bytes each): argument and
    /// reply of [`VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`].
    VfioPciHotResetInfo, 12 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_PCI_HOT_RESET_FLAG_*` bits.
        @4 flags: u32,
        /// Input: room for entries after the header; output: number of affected devices.
        @8 count: u32,
    }

    /// `struct vfio_pci_hot_reset` without its trailing `group_fds[]`:
    /// argument of [`VFIO_DEVICE_PCI_HOT_RESET`] (a cdev passes count 0).
    VfioPciHotReset, 12 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// Must be zero.
        @4 flags: u32,
        /// Number of group fds that follow.
        @8 count: u32,
    }

    /// `struct vfio_device_feature` without its trailing `data[]`:
    /// argument of [`VFIO_DEVICE_FEATURE`].
    VfioDeviceFeature, 8 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// Feature index plus `VFIO_DEVICE_FEATURE_GET`/`SET`/`PROBE`.
        @4 flags: u32,
    }
}

// `vfio_pci_hot_reset_info.flags`.
/// `VFIO_PCI_HOT_RESET_FLAG_DEV_ID`: the reply lists iommufd device IDs, not group IDs.
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID: u32 = 1 << 0;
/// `VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED`: the caller owns every affected device.
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED: u32 = 1 << 1;

// `vfio_device_feature.flags`: the feature index and what to do with it.
/// `VFIO_DEVICE_FEATURE_MASK`: the feature index bits.
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
/// `VFIO_DEVICE_FEATURE_GET`: read the feature into `data`.
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
/// `VFIO_DEVICE_FEATURE_SET`: write the feature from `data`.
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
/// `VFIO_DEVICE_FEATURE_PROBE`: only check that the feature and the other bits are supported.
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
        /// Offset of the slice in the region.
        @0 offset: u64,
        /// Length of the slice.
        @8 length: u64,
    }

    /// `struct vfio_device_feature_dma_buf` without its trailing
    /// `dma_ranges[]`.
    VfioDeviceFeatureDmaBuf, 16 {
        /// Region to export.
        @0 region_index: u32,
        /// Flags of the new dma-buf file (`O_CLOEXEC`, `O_RDWR`...).
        @4 open_flags: u32,
        /// Must be zero.
        @8 flags: u32,
        /// Number of [`VfioRegionDmaRange`] entries that follow.
        @12 nr_ranges: u32,
    }
}

// Migration features (`VFIO_DEVICE_FEATURE_*`) and the data FD's request.
/// `VFIO_DEVICE_FEATURE_MIGRATION`: which migration states exist ([`VfioDeviceFeatureMigration`]).
pub const VFIO_DEVICE_FEATURE_MIGRATION: u32 = 1;
/// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`: get or change the migration state ([`VfioDeviceFeatureMigState`]).
pub const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: u32 = 2;
/// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`: estimate of the stop-copy data ([`VfioDeviceFeatureMigDataSize`]).
pub const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: u32 = 9;
#[allow(non_upper_case_globals)]
/// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2`: opt in to the v2 precopy info (with `VFIO_PRECOPY_INFO_REINIT`).
pub const VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2: u32 = 12;
// `vfio_device_feature_migration.flags`.
/// `VFIO_MIGRATION_STOP_COPY`: the device supports the stop-copy flow.
pub const VFIO_MIGRATION_STOP_COPY: u64 = 1 << 0;
/// `VFIO_MIGRATION_P2P`: the device supports the RUNNING_P2P state.
pub const VFIO_MIGRATION_P2P: u64 = 1 << 1;
/// `VFIO_MIGRATION_PRE_COPY`: the device supports the pre-copy states.
pub const VFIO_MIGRATION_PRE_COPY: u64 = 1 << 2;
// `enum vfio_device_mig_state`.
/// `VFIO_DEVICE_STATE_ERROR`: a failed transition left the device unusable.
pub const VFIO_DEVICE_STATE_ERROR: u32 = 0;
/// `VFIO_DEVICE_STATE_STOP`: the device does no DMA and changes no state.
pub const VFIO_DEVICE_STATE_STOP: u32 = 1;
/// `VFIO_DEVICE_STATE_RUNNING`: normal operation.
pub const VFIO_DEVICE_STATE_RUNNING: u32 = 2;
/// `VFIO_DEVICE_STATE_STOP_COPY`: stopped, its state readable from the data fd.
pub const VFIO_DEVICE_STATE_STOP_COPY: u32 = 3;
/// `VFIO_DEVICE_STATE_RESUMING`: stopped, accepting state written to the data fd.
pub const VFIO_DEVICE_STATE_RESUMING: u32 = 4;
/// `VFIO_DEVICE_STATE_RUNNING_P2P`: running but not initiating peer-to-peer DMA.
pub const VFIO_DEVICE_STATE_RUNNING_P2P: u32 = 5;
/// `VFIO_DEVICE_STATE_PRE_COPY`: running while early state is read from the data fd.
pub const VFIO_DEVICE_STATE_PRE_COPY: u32 = 6;
/// `VFIO_DEVICE_STATE_PRE_COPY_P2P`: pre-copy without initiating peer-to-peer DMA.
pub const VFIO_DEVICE_STATE_PRE_COPY_P2P: u32 = 7;
/// On a migration data FD: `struct vfio_precopy_info`.
pub const VFIO_MIG_GET_PRECOPY_INFO: u32 = vfio_io(21);
// `vfio_precopy_info.flags` (output, after opting in with
// [`VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2`]).
/// `VFIO_PRECOPY_INFO_REINIT`: the device's initial data restarted; `initial_bytes` counts again.
pub const VFIO_PRECOPY_INFO_REINIT: u32 = 1 << 0;

abi_struct! {
    /// `struct vfio_device_feature_migration`: which optional states.
    VfioDeviceFeatureMigration, 8 {
        /// `VFIO_MIGRATION_*` bits.
        @0 flags: u64,
    }

    /// `struct vfio_device_feature_mig_state`.
    VfioDeviceFeatureMigState, 8 {
        /// Target state (SET) or current state (GET), `VFIO_DEVICE_STATE_*`.
        @0 device_state: u32,
        /// Output: the migration data fd, or -1 if the new state has none.
        @4 data_fd: i32,
    }

    /// `struct vfio_device_feature_mig_data_size`.
    VfioDeviceFeatureMigDataSize, 8 {
        /// Estimated bytes of device state still to transfer in stop-copy.
        @0 stop_copy_length: u64,
    }

    /// `struct vfio_precopy_info`: argument of [`VFIO_MIG_GET_PRECOPY_INFO`].
    VfioPrecopyInfo, 24 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_PRECOPY_INFO_*` bits.
        @4 flags: u32,
        /// Bytes of initial data still to read.
        @8 initial_bytes: u64,
        /// Bytes of changed data known so far.
        @16 dirty_bytes: u64,
    }
}

abi_struct! {
    /// `struct vfio_iommu_type1_info`: reply of [`VFIO_IOMMU_GET_INFO`].
    VfioIommuType1Info, 24 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_IOMMU_INFO_*` bits.
        @4 flags: u32,
        /// Bitmap of supported IOMMU page sizes.
        @8 iova_pgsizes: u64,
        /// Offset of the first capability, valid with `VFIO_IOMMU_INFO_CAPS`.
        @16 cap_offset: u32,
        /// Padding; must be zero.
        @20 pad: u32,
    }
}

// `vfio_iommu_type1_info.flags`.
/// `VFIO_IOMMU_INFO_PGSIZES`: `iova_pgsizes` is valid.
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
/// `VFIO_IOMMU_INFO_CAPS`: the reply carries a capability chain.
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;

// Type1 info capability IDs.
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`: usable IOVA ranges ([`VfioIommuType1InfoCapIovaRange`]).
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION`: dirty-tracking limits ([`VfioIommuType1InfoCapMigration`]).
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: u16 = 2;
/// `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`: remaining DMA mappings ([`VfioIommuType1InfoDmaAvail`]).
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

abi_struct! {
    /// `struct vfio_iova_range`: inclusive IOVA range `[start, end]`.
    VfioIovaRange, 16 {
        /// First IOVA.
        @0 start: u64,
        /// Last IOVA (inclusive).
        @8 end: u64,
    }

    /// `struct vfio_iommu_type1_info_cap_iova_range` without its trailing
    /// `iova_ranges[nr_iovas]` array of [`VfioIovaRange`].
    VfioIommuType1InfoCapIovaRange, 16 {
        /// Capability chain header.
        @0 header: VfioInfoCapHeader,
        /// Number of ranges that follow.
        @8 nr_iovas: u32,
        /// Reserved; must be zero.
        @12 reserved: u32,
    }

    /// `struct vfio_iommu_type1_info_cap_migration`: dirty-logging limits.
    VfioIommuType1InfoCapMigration, 32 {
        /// Capability chain header.
        @0 header: VfioInfoCapHeader,
        /// Must be zero.
        @8 flags: u32,
        /// Implicit padding in C before the `__u64`.
        @12 __pad: u32,
        /// Page sizes usable for dirty tracking.
        @16 pgsize_bitmap: u64,
        /// Largest dirty bitmap accepted, in bytes.
        @24 max_dirty_bitmap_size: u64,
    }

    /// `struct vfio_iommu_type1_info_dma_avail`: how many more DMA mappings
    /// the container accepts.
    VfioIommuType1InfoDmaAvail, 12 {
        /// Capability chain header.
        @0 header: VfioInfoCapHeader,
        /// Number of further DMA mappings allowed.
        @8 avail: u32,
    }

    /// `struct vfio_iommu_type1_dma_map`: argument of [`VFIO_IOMMU_MAP_DMA`].
    VfioIommuType1DmaMap, 32 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_DMA_MAP_FLAG_*` bits.
        @4 flags: u32,
        /// User address of the memory to map.
        @8 vaddr: u64,
        /// IOVA to map at.
        @16 iova: u64,
        /// Bytes to map.
        @24 size: u64,
    }
}

// `vfio_iommu_type1_dma_map.flags`.
/// `VFIO_DMA_MAP_FLAG_READ`: the device may read the mapping.
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// `VFIO_DMA_MAP_FLAG_WRITE`: the device may write the mapping.
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_DMA_MAP_FLAG_VADDR`: only give an existing mapping its new user address.
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;

abi_struct! {
    /// `struct vfio_bitmap`: user dirty bitmap (one bit per `pgsize`);
    /// `data` is a user pointer.
    VfioBitmap, 24 {
        /// Bytes covered by one bit.
        @0 pgsize: u64,
        /// Size of the bitmap buffer in bytes.
        @8 size: u64,
        /// User pointer to the bitmap.
        @16 data: u64,
    }

    /// `struct vfio_iommu_type1_dma_unmap`: argument of
    /// [`VFIO_IOMMU_UNMAP_DMA`], without the trailing `data[]` (a
    /// [`VfioBitmap`] when the dirty-bitmap flag is set). `size` returns the
    /// number of bytes unmapped.
    VfioIommuType1DmaUnmap, 24 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_DMA_UNMAP_FLAG_*` bits.
        @4 flags: u32,
        /// First IOVA to unmap.
        @8 iova: u64,
        /// Input: bytes to unmap; output: bytes unmapped.
        @16 size: u64,
    }
}

// `vfio_iommu_type1_dma_unmap.flags`.
/// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`: return the dirty bitmap of the range being unmapped.
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// `VFIO_DMA_UNMAP_FLAG_ALL`: unmap every mapping (`iova` and `size` must be 0).
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// `VFIO_DMA_UNMAP_FLAG_VADDR`: only invalidate the user address, keeping the mapping.
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

abi_struct! {
    /// `struct vfio_iommu_type1_dirty_bitmap` without its trailing `data[]`
    /// (a [`VfioIommuType1DirtyBitmapGet`] for GET_BITMAP).
    VfioIommuType1DirtyBitmap, 8 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// One `VFIO_IOMMU_DIRTY_PAGES_FLAG_*` bit.
        @4 flags: u32,
    }

    /// `struct vfio_iommu_type1_dirty_bitmap_get`.
    VfioIommuType1DirtyBitmapGet, 40 {
        /// First IOVA of the range.
        @0 iova: u64,
        /// Bytes in the range.
        @8 size: u64,
        /// Where to store the bits.
        @16 bitmap: VfioBitmap,
    }
}

// `vfio_iommu_type1_dirty_bitmap.flags`.
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_START`: start dirty tracking.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP`: stop dirty tracking.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP`: read the dirty bitmap of a range.
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

abi_struct! {
    /// `struct vfio_device_bind_iommufd`: bind a device cdev to an iommufd.
    ///
    /// Mainline appended `token_uuid_ptr`; callers built against older
    /// headers pass `argsz` 16 (up to `out_devid`), which stays valid.
    VfioDeviceBindIommufd, 24 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_DEVICE_BIND_*` bits.
        @4 flags: u32,
        /// The iommufd to bind to.
        @8 iommufd: i32,
        /// Output: the device's ID in the iommufd.
        @12 out_devid: u32,
        /// User pointer to the VF token UUID, with `VFIO_DEVICE_BIND_FLAG_TOKEN`.
        @16 token_uuid_ptr: u64,
    }

    /// `struct vfio_device_attach_iommufd_pt`: attach the device (or one of
    /// its PASIDs) to an IOAS/HWPT; `pt_id` returns the HWPT used. `pasid`
    /// is read only with [`VFIO_DEVICE_ATTACH_PASID`] (older callers pass
    /// `argsz` 12).
    VfioDeviceAttachIommufdPt, 16 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_DEVICE_ATTACH_*` bits.
        @4 flags: u32,
        /// Input: IOAS or HWPT ID; output: the HWPT attached.
        @8 pt_id: u32,
        /// PASID to attach, with `VFIO_DEVICE_ATTACH_PASID`.
        @12 pasid: u32,
    }

    /// `struct vfio_device_detach_iommufd_pt`: detach the device (or one of
    /// its PASIDs). `pasid` is read only with [`VFIO_DEVICE_DETACH_PASID`]
    /// (older callers pass `argsz` 8).
    VfioDeviceDetachIommufdPt, 12 {
        /// Size of the argument buffer the caller provides, in bytes.
        @0 argsz: u32,
        /// `VFIO_DEVICE_DETACH_*` bits.
        @4 flags: u32,
        /// PASID to detach, with `VFIO_DEVICE_DETACH_PASID`.
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
