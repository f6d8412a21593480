//! `include/uapi/linux/iommufd.h` (Linux v7.3): commands, structs, flags.
//!
//! Every command is `_IO(IOMMUFD_TYPE, IOMMUFD_CMD_*)`; the struct passed
//! starts with `u32 size` and may grow at its end (the dispatcher implements
//! the extensible-struct rules).

use crate::ioctl::io;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Assert a struct's size and each listed field's offset at compile time.
#[macro_export]
macro_rules! assert_layout {
    ($ty:ty, $size:expr $(, $field:ident @ $off:expr)* $(,)?) => {
        const _: () = {
            assert!(::core::mem::size_of::<$ty>() == $size);
            $(assert!(::core::mem::offset_of!($ty, $field) == $off);)*
        };
    };
}

/// `IOMMUFD_TYPE`: the ioctl type byte, `';'`.
pub const IOMMUFD_TYPE: u32 = b';' as u32;

/// `IOMMUFD_CMD_BASE`: the first iommufd command number (`0x80`).
pub const IOMMUFD_CMD_BASE: u32 = 0x80;
/// `IOMMUFD_CMD_DESTROY`: command number of the ioctl to destroy any iommufd object by ID.
pub const IOMMUFD_CMD_DESTROY: u32 = IOMMUFD_CMD_BASE;
/// `IOMMUFD_CMD_IOAS_ALLOC`: command number of the ioctl to create an I/O address space.
pub const IOMMUFD_CMD_IOAS_ALLOC: u32 = 0x81;
/// `IOMMUFD_CMD_IOAS_ALLOW_IOVAS`: command number of the ioctl to restrict the IOVAs an IOAS may use.
pub const IOMMUFD_CMD_IOAS_ALLOW_IOVAS: u32 = 0x82;
/// `IOMMUFD_CMD_IOAS_COPY`: command number of the ioctl to copy mappings from one IOAS to another.
pub const IOMMUFD_CMD_IOAS_COPY: u32 = 0x83;
/// `IOMMUFD_CMD_IOAS_IOVA_RANGES`: command number of the ioctl to query the usable IOVA ranges of an IOAS.
pub const IOMMUFD_CMD_IOAS_IOVA_RANGES: u32 = 0x84;
/// `IOMMUFD_CMD_IOAS_MAP`: command number of the ioctl to map user memory into an IOAS.
pub const IOMMUFD_CMD_IOAS_MAP: u32 = 0x85;
/// `IOMMUFD_CMD_IOAS_UNMAP`: command number of the ioctl to unmap an IOVA range of an IOAS.
pub const IOMMUFD_CMD_IOAS_UNMAP: u32 = 0x86;
/// `IOMMUFD_CMD_OPTION`: command number of the ioctl to get or set an iommufd or object option.
pub const IOMMUFD_CMD_OPTION: u32 = 0x87;
/// `IOMMUFD_CMD_VFIO_IOAS`: command number of the ioctl to manage the IOAS of the VFIO compatibility layer.
pub const IOMMUFD_CMD_VFIO_IOAS: u32 = 0x88;
/// `IOMMUFD_CMD_HWPT_ALLOC`: command number of the ioctl to allocate a hardware page table.
pub const IOMMUFD_CMD_HWPT_ALLOC: u32 = 0x89;
/// `IOMMUFD_CMD_GET_HW_INFO`: command number of the ioctl to report the IOMMU hardware behind a device.
pub const IOMMUFD_CMD_GET_HW_INFO: u32 = 0x8a;
/// `IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING`: command number of the ioctl to enable or disable dirty tracking on a HWPT.
pub const IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: u32 = 0x8b;
/// `IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP`: command number of the ioctl to read (and clear) the dirty bits of an IOVA range.
pub const IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: u32 = 0x8c;
/// `IOMMUFD_CMD_HWPT_INVALIDATE`: command number of the ioctl to flush caches of a nested HWPT or a vIOMMU.
pub const IOMMUFD_CMD_HWPT_INVALIDATE: u32 = 0x8d;
/// `IOMMUFD_CMD_FAULT_QUEUE_ALLOC`: command number of the ioctl to create an I/O page fault queue.
pub const IOMMUFD_CMD_FAULT_QUEUE_ALLOC: u32 = 0x8e;
/// `IOMMUFD_CMD_IOAS_MAP_FILE`: command number of the ioctl to map a range of a file into an IOAS.
pub const IOMMUFD_CMD_IOAS_MAP_FILE: u32 = 0x8f;
/// `IOMMUFD_CMD_VIOMMU_ALLOC`: command number of the ioctl to create a virtual IOMMU.
pub const IOMMUFD_CMD_VIOMMU_ALLOC: u32 = 0x90;
/// `IOMMUFD_CMD_VDEVICE_ALLOC`: command number of the ioctl to create a virtual device under a vIOMMU.
pub const IOMMUFD_CMD_VDEVICE_ALLOC: u32 = 0x91;
/// `IOMMUFD_CMD_IOAS_CHANGE_PROCESS`: command number of the ioctl to move pinned-page accounting to the calling process.
pub const IOMMUFD_CMD_IOAS_CHANGE_PROCESS: u32 = 0x92;
/// `IOMMUFD_CMD_VEVENTQ_ALLOC`: command number of the ioctl to create a virtual event queue.
pub const IOMMUFD_CMD_VEVENTQ_ALLOC: u32 = 0x93;
/// `IOMMUFD_CMD_HW_QUEUE_ALLOC`: command number of the ioctl to create a hardware-accelerated queue of a vIOMMU.
pub const IOMMUFD_CMD_HW_QUEUE_ALLOC: u32 = 0x94;
/// `IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA`: command number of the ioctl to look up the physical address behind an IOVA (no-IOMMU mode).
pub const IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA: u32 = 0x95;

/// `IOMMU_DESTROY`: ioctl request to destroy any iommufd object by ID.
pub const IOMMU_DESTROY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);
/// `IOMMU_IOAS_ALLOC`: ioctl request to create an I/O address space.
pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);
/// `IOMMU_OPTION`: ioctl request to get or set an iommufd or object option.
pub const IOMMU_OPTION: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION);
/// `IOMMU_IOAS_ALLOW_IOVAS`: ioctl request to restrict the IOVAs an IOAS may use.
pub const IOMMU_IOAS_ALLOW_IOVAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
/// `IOMMU_IOAS_COPY`: ioctl request to copy mappings from one IOAS to another.
pub const IOMMU_IOAS_COPY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY);
/// `IOMMU_IOAS_IOVA_RANGES`: ioctl request to query the usable IOVA ranges of an IOAS.
pub const IOMMU_IOAS_IOVA_RANGES: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES);
/// `IOMMU_IOAS_MAP`: ioctl request to map user memory into an IOAS.
pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);
/// `IOMMU_IOAS_UNMAP`: ioctl request to unmap an IOVA range of an IOAS.
pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);
/// `IOMMU_VFIO_IOAS`: ioctl request to manage the IOAS of the VFIO compatibility layer.
pub const IOMMU_VFIO_IOAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS);
/// `IOMMU_HWPT_ALLOC`: ioctl request to allocate a hardware page table.
pub const IOMMU_HWPT_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC);
/// `IOMMU_GET_HW_INFO`: ioctl request to report the IOMMU hardware behind a device.
pub const IOMMU_GET_HW_INFO: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO);
/// `IOMMU_HWPT_SET_DIRTY_TRACKING`: ioctl request to enable or disable dirty tracking on a HWPT.
pub const IOMMU_HWPT_SET_DIRTY_TRACKING: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING);
/// `IOMMU_HWPT_GET_DIRTY_BITMAP`: ioctl request to read (and clear) the dirty bits of an IOVA range.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP);
/// `IOMMU_HWPT_INVALIDATE`: ioctl request to flush caches of a nested HWPT or a vIOMMU.
pub const IOMMU_HWPT_INVALIDATE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE);
/// `IOMMU_FAULT_QUEUE_ALLOC`: ioctl request to create an I/O page fault queue.
pub const IOMMU_FAULT_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC);
/// `IOMMU_IOAS_MAP_FILE`: ioctl request to map a range of a file into an IOAS.
pub const IOMMU_IOAS_MAP_FILE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE);
/// `IOMMU_VIOMMU_ALLOC`: ioctl request to create a virtual IOMMU.
pub const IOMMU_VIOMMU_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC);
/// `IOMMU_VDEVICE_ALLOC`: ioctl request to create a virtual device under a vIOMMU.
pub const IOMMU_VDEVICE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC);
/// `IOMMU_IOAS_CHANGE_PROCESS`: ioctl request to move pinned-page accounting to the calling process.
pub const IOMMU_IOAS_CHANGE_PROCESS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS);
/// `IOMMU_VEVENTQ_ALLOC`: ioctl request to create a virtual event queue.
pub const IOMMU_VEVENTQ_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC);
/// `IOMMU_HW_QUEUE_ALLOC`: ioctl request to create a hardware-accelerated queue of a vIOMMU.
pub const IOMMU_HW_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC);
/// `IOMMU_IOAS_NOIOMMU_GET_PA`: ioctl request to look up the physical address behind an IOVA (no-IOMMU mode).
pub const IOMMU_IOAS_NOIOMMU_GET_PA: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA);

/// `struct iommu_destroy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IommuDestroy {
    /// Size of this struct as the caller knows it, so the ABI can grow.
    pub size: u32,
    /// ID of the object to destroy.
    pub id: u32,
}
assert_layout!(IommuDestroy, 8, size @ 0, id @ 4);

/// `struct iommu_ioas_alloc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IommuIoasAlloc {
    /// Size of this struct as the caller knows it, so the ABI can grow.
    pub size: u32,
    /// Must be zero.
    pub flags: u32,
    /// Output: ID of the new IOAS.
    pub out_ioas_id: u32,
}
assert_layout!(IommuIoasAlloc, 12, size @ 0, flags @ 4, out_ioas_id @ 8);

// `enum iommufd_option`.
/// `IOMMU_OPTION_RLIMIT_MODE`: whether pinned pages are charged to the user (0) or the process (1); global only.
pub const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
/// `IOMMU_OPTION_HUGE_PAGES`: whether an IOAS may use huge pages (1, the default) or only base pages (0).
pub const IOMMU_OPTION_HUGE_PAGES: u32 = 1;

// `enum iommufd_option_ops`.
/// `IOMMU_OPTION_OP_SET`: store `val64` into the option.
pub const IOMMU_OPTION_OP_SET: u16 = 0;
/// `IOMMU_OPTION_OP_GET`: return the option's value in `val64`.
pub const IOMMU_OPTION_OP_GET: u16 = 1;

/// `struct iommu_option`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IommuOption {
    /// Size of this struct as the caller knows it, so the ABI can grow.
    pub size: u32,
    /// Which option (`IOMMU_OPTION_*`).
    pub option_id: u32,
    /// Get or set (`IOMMU_OPTION_OP_*`).
    pub op: u16,
    /// Reserved; must be zero.
    pub __reserved: u16,
    /// Object the option applies to, or 0 for the iommufd itself.
    pub object_id: u32,
    /// Value to set, or the value read back.
    pub val64: u64,
}
assert_layout!(IommuOption, 24, size @ 0, option_id @ 4, op @ 8, __reserved @ 10, object_id @ 12, val64 @ 16);

// ---------------------------------------------------------------------------
// Everything below follows the order of the C header. Struct layouts are
// declared with `abi_struct!`, which emits the same derives and `#[repr(C)]`
// as the structs above plus an `assert_layout!` of the size and every offset.
// Enumerators are plain constants named like the C ones; they are `u32`
// except where the C field that carries them is narrower (`u16` for the
// `op` of `iommu_option` and `iommu_vfio_ioas`).
// None of the iommufd structs has implicit padding: every `__aligned_u64`
// already falls on an 8-byte boundary, so `u64` gives the same layout.
// ---------------------------------------------------------------------------

abi_struct! {
    /// `struct iommu_iova_range`: one inclusive IOVA interval `[start, last]`.
    IommuIovaRange, 16 {
        /// First IOVA of the range.
        @0 start: u64,
        /// Last IOVA of the range (inclusive).
        @8 last: u64,
    }

    /// `struct iommu_ioas_iova_ranges`: read back the usable IOVA ranges of an
    /// IOAS into a user array of [`IommuIovaRange`].
    IommuIoasIovaRanges, 32 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// IOAS to query.
        @4 ioas_id: u32,
        /// Input: entries available at `allowed_iovas`; output: ranges that exist.
        @8 num_iovas: u32,
        /// Reserved; must be zero.
        @12 __reserved: u32,
        /// User pointer to an array of [`IommuIovaRange`].
        @16 allowed_iovas: u64,
        /// Output: minimum alignment of IOVAs mapped into this IOAS.
        @24 out_iova_alignment: u64,
    }

    /// `struct iommu_ioas_allow_iovas`: pin down IOVA ranges that later device
    /// attachments may not take away.
    IommuIoasAllowIovas, 24 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// IOAS to restrict.
        @4 ioas_id: u32,
        /// Number of entries at `allowed_iovas` (0 removes the restriction).
        @8 num_iovas: u32,
        /// Reserved; must be zero.
        @12 __reserved: u32,
        /// User pointer to an array of [`IommuIovaRange`].
        @16 allowed_iovas: u64,
    }
}

// `enum iommufd_ioas_map_flags`: flags of IOAS_MAP, IOAS_MAP_FILE and IOAS_COPY.
/// `IOMMU_IOAS_MAP_FIXED_IOVA`: map at the given IOVA instead of allocating one.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
/// `IOMMU_IOAS_MAP_WRITEABLE`: devices may write through the mapping.
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
/// `IOMMU_IOAS_MAP_READABLE`: devices may read through the mapping.
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

abi_struct! {
    /// `struct iommu_ioas_map`: map user virtual memory into an IOAS.
    IommuIoasMap, 40 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// `IOMMU_IOAS_MAP_*` flags.
        @4 flags: u32,
        /// IOAS to map into.
        @8 ioas_id: u32,
        /// Reserved; must be zero.
        @12 __reserved: u32,
        /// Start of the user memory to map.
        @16 user_va: u64,
        /// Bytes to map.
        @24 length: u64,
        /// IOVA to map at (with FIXED_IOVA), or output: the IOVA chosen.
        @32 iova: u64,
    }

    /// `struct iommu_ioas_noiommu_get_pa`: the physical address behind a mapped
    /// IOVA and how many bytes from it are physically contiguous (at most the
    /// input `length`); for devices doing DMA without an IOMMU.
    IommuIoasNoiommuGetPa, 40 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// Must be zero.
        @4 flags: u32,
        /// IOAS holding the mapping.
        @8 ioas_id: u32,
        /// Reserved; must be zero.
        @12 __reserved: u32,
        /// IOVA to look up.
        @16 iova: u64,
        /// Input: bytes wanted; output: contiguous bytes found.
        @24 length: u64,
        /// Output: physical address behind `iova`.
        @32 out_phys: u64,
    }

    /// `struct iommu_ioas_map_file`: map a range of a file (a memfd, or a
    /// single-range VFIO dma-buf) into an IOAS.
    IommuIoasMapFile, 40 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// `IOMMU_IOAS_MAP_*` flags.
        @4 flags: u32,
        /// IOAS to map into.
        @8 ioas_id: u32,
        /// File descriptor of the file to map.
        @12 fd: i32,
        /// Byte offset in the file of the first byte to map.
        @16 start: u64,
        /// Bytes to map.
        @24 length: u64,
        /// IOVA to map at (with FIXED_IOVA), or output: the IOVA chosen.
        @32 iova: u64,
    }

    /// `struct iommu_ioas_copy`: duplicate an existing mapping of one IOAS into
    /// another without pinning the pages again.
    IommuIoasCopy, 40 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// `IOMMU_IOAS_MAP_*` flags for the new mapping.
        @4 flags: u32,
        /// IOAS receiving the copy.
        @8 dst_ioas_id: u32,
        /// IOAS holding the source mapping.
        @12 src_ioas_id: u32,
        /// Bytes to copy.
        @16 length: u64,
        /// Destination IOVA (with FIXED_IOVA), or output: the IOVA chosen.
        @24 dst_iova: u64,
        /// IOVA of the source range in `src_ioas_id`.
        @32 src_iova: u64,
    }

    /// `struct iommu_ioas_unmap`: remove whole mappings covered by an IOVA range.
    IommuIoasUnmap, 24 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// IOAS to unmap from.
        @4 ioas_id: u32,
        /// First IOVA of the range (0 with length `u64::MAX` unmaps everything).
        @8 iova: u64,
        /// Input: bytes to unmap; output: bytes actually unmapped.
        @16 length: u64,
    }
}

// `enum iommufd_vfio_ioas_op` (carried in the `u16` field [`IommuVfioIoas::op`]).
/// `IOMMU_VFIO_IOAS_GET`: return the compatibility IOAS, creating it if needed.
pub const IOMMU_VFIO_IOAS_GET: u16 = 0;
/// `IOMMU_VFIO_IOAS_SET`: make `ioas_id` the compatibility IOAS.
pub const IOMMU_VFIO_IOAS_SET: u16 = 1;
/// `IOMMU_VFIO_IOAS_CLEAR`: forget the compatibility IOAS.
pub const IOMMU_VFIO_IOAS_CLEAR: u16 = 2;

abi_struct! {
    /// `struct iommu_vfio_ioas`: get, set or clear the IOAS used by the VFIO
    /// type1 compatibility layer.
    IommuVfioIoas, 12 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// IOAS for SET; output of GET.
        @4 ioas_id: u32,
        /// Operation (`IOMMU_VFIO_IOAS_*`).
        @8 op: u16,
        /// Reserved; must be zero.
        @10 __reserved: u16,
    }
}

// `enum iommufd_hwpt_alloc_flags`.
/// `IOMMU_HWPT_ALLOC_NEST_PARENT`: the HWPT may serve as the stage-2 parent of nested HWPTs.
pub const IOMMU_HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
/// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`: the HWPT must support dirty tracking.
pub const IOMMU_HWPT_ALLOC_DIRTY_TRACKING: u32 = 1 << 1;
/// `IOMMU_HWPT_FAULT_ID_VALID`: `fault_id` names a fault queue that receives this HWPT's page faults.
pub const IOMMU_HWPT_FAULT_ID_VALID: u32 = 1 << 2;
/// `IOMMU_HWPT_ALLOC_PASID`: the HWPT may be attached to PASIDs of a device.
pub const IOMMU_HWPT_ALLOC_PASID: u32 = 1 << 3;

// `enum iommu_hwpt_vtd_s1_flags` (bits of the `u64` [`IommuHwptVtdS1::flags`]).
/// `IOMMU_VTD_S1_SRE`: supervisor requests allowed.
pub const IOMMU_VTD_S1_SRE: u32 = 1 << 0;
/// `IOMMU_VTD_S1_EAFE`: extended access flag enabled.
pub const IOMMU_VTD_S1_EAFE: u32 = 1 << 1;
/// `IOMMU_VTD_S1_WPE`: write protect enabled.
pub const IOMMU_VTD_S1_WPE: u32 = 1 << 2;

abi_struct! {
    /// `struct iommu_hwpt_vtd_s1`: Intel VT-d stage-1 page table description
    /// (`IOMMU_HWPT_DATA_VTD_S1`).
    IommuHwptVtdS1, 24 {
        /// `IOMMU_VTD_S1_*` bits.
        @0 flags: u64,
        /// Guest physical address of the stage-1 page table root.
        @8 pgtbl_addr: u64,
        /// Input address width of the stage-1 table, in bits.
        @16 addr_width: u32,
        /// Reserved; must be zero.
        @20 __reserved: u32,
    }

    /// `struct iommu_hwpt_arm_smmuv3`: the first two little-endian words of a
    /// guest SMMUv3 stream table entry (`IOMMU_HWPT_DATA_ARM_SMMUV3`).
    IommuHwptArmSmmuv3, 16 {
        /// Guest STE words 0 and 1, little-endian.
        @0 ste: [u64; 2],
    }

    /// `struct iommu_hwpt_amd_guest`: an AMD guest device table entry
    /// (`IOMMU_HWPT_DATA_AMD_GUEST`).
    IommuHwptAmdGuest, 32 {
        /// Guest DTE, four little-endian 64-bit words.
        @0 dte: [u64; 4],
    }
}

// `enum iommu_hwpt_data_type`.
/// `IOMMU_HWPT_DATA_NONE`: no driver data; a kernel-managed HWPT.
pub const IOMMU_HWPT_DATA_NONE: u32 = 0;
/// `IOMMU_HWPT_DATA_VTD_S1`: data is an [`IommuHwptVtdS1`].
pub const IOMMU_HWPT_DATA_VTD_S1: u32 = 1;
/// `IOMMU_HWPT_DATA_ARM_SMMUV3`: data is an [`IommuHwptArmSmmuv3`].
pub const IOMMU_HWPT_DATA_ARM_SMMUV3: u32 = 2;
/// `IOMMU_HWPT_DATA_AMD_GUEST`: data is an [`IommuHwptAmdGuest`].
pub const IOMMU_HWPT_DATA_AMD_GUEST: u32 = 3;

abi_struct! {
    /// `struct iommu_hwpt_alloc`: create a hardware page table (kernel- or
    /// user-managed) for a device.
    IommuHwptAlloc, 48 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// `IOMMU_HWPT_ALLOC_*` flags.
        @4 flags: u32,
        /// Device the HWPT is created for.
        @8 dev_id: u32,
        /// Parent: an IOAS, a nesting-parent HWPT or a vIOMMU.
        @12 pt_id: u32,
        /// Output: ID of the new HWPT.
        @16 out_hwpt_id: u32,
        /// Reserved; must be zero.
        @20 __reserved: u32,
        /// Type of the driver data (`IOMMU_HWPT_DATA_*`).
        @24 data_type: u32,
        /// Length of the driver data.
        @28 data_len: u32,
        /// User pointer to the driver data.
        @32 data_uptr: u64,
        /// Fault queue ID, read with `IOMMU_HWPT_FAULT_ID_VALID`.
        @40 fault_id: u32,
        /// Reserved; must be zero.
        @44 __reserved2: u32,
    }
}

// `enum iommu_hw_info_vtd_flags`.
/// `IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17`: erratum 772415 (SPR17); a nesting-parent domain must not hold read-only mappings.
pub const IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17: u32 = 1 << 0;

/// `enum iommu_hw_info_arm_smmuv3_flags` (Linux 7.3; not in 6.12): user space must issue
/// TLBI/CFGI + CMD_SYNC twice (erratum T264-SMMU-3).
pub const IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI: u32 = 1 << 0;

abi_struct! {
    /// `struct iommu_hw_info_vtd`: raw Intel VT-d capability registers.
    IommuHwInfoVtd, 24 {
        /// `IOMMU_HW_INFO_VTD_*` bits.
        @0 flags: u32,
        /// Reserved; must be zero.
        @4 __reserved: u32,
        /// Value of the VT-d capability register.
        @8 cap_reg: u64,
        /// Value of the VT-d extended capability register.
        @16 ecap_reg: u64,
    }

    /// `struct iommu_hw_info_arm_smmuv3`: raw ARM SMMUv3 ID registers.
    IommuHwInfoArmSmmuv3, 40 {
        /// `IOMMU_HW_INFO_ARM_SMMUV3_*` bits.
        @0 flags: u32,
        /// Reserved; must be zero.
        @4 __reserved: u32,
        /// SMMU_IDR0 to SMMU_IDR5.
        @8 idr: [u32; 6],
        /// SMMU_IIDR (implementation identification).
        @32 iidr: u32,
        /// SMMU_AIDR (architecture version).
        @36 aidr: u32,
    }

    /// `struct iommu_hw_info_tegra241_cmdqv`: NVIDIA Tegra241 CMDQV parameters.
    IommuHwInfoTegra241Cmdqv, 8 {
        /// Must be zero.
        @0 flags: u32,
        /// CMDQV hardware version.
        @4 version: u8,
        /// Log2 of the number of VCMDQs.
        @5 log2vcmdqs: u8,
        /// Log2 of the number of stream-ID replacement slots.
        @6 log2vsids: u8,
        /// Reserved; must be zero.
        @7 __reserved: u8,
    }

    /// `struct iommu_hw_info_amd`: raw AMD extended feature registers.
    IommuHwInfoAmd, 16 {
        /// Value of the extended feature register.
        @0 efr: u64,
        /// Value of the second extended feature register.
        @8 efr2: u64,
    }
}

// `enum iommu_hw_info_type` (`NONE` and `DEFAULT` share the value 0).
/// `IOMMU_HW_INFO_TYPE_NONE`: the driver reports no hardware data.
pub const IOMMU_HW_INFO_TYPE_NONE: u32 = 0;
/// `IOMMU_HW_INFO_TYPE_DEFAULT`: input value asking for the driver's default type.
pub const IOMMU_HW_INFO_TYPE_DEFAULT: u32 = 0;
/// `IOMMU_HW_INFO_TYPE_INTEL_VTD`: data is an [`IommuHwInfoVtd`].
pub const IOMMU_HW_INFO_TYPE_INTEL_VTD: u32 = 1;
/// `IOMMU_HW_INFO_TYPE_ARM_SMMUV3`: data is an [`IommuHwInfoArmSmmuv3`].
pub const IOMMU_HW_INFO_TYPE_ARM_SMMUV3: u32 = 2;
/// `IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV`: data is an [`IommuHwInfoTegra241Cmdqv`].
pub const IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV: u32 = 3;
/// `IOMMU_HW_INFO_TYPE_AMD`: data is an [`IommuHwInfoAmd`].
pub const IOMMU_HW_INFO_TYPE_AMD: u32 = 4;

// `enum iommufd_hw_capabilities` (bits of the `u64` [`IommuHwInfo::out_capabilities`]).
/// `IOMMU_HW_CAP_DIRTY_TRACKING`: the IOMMU can track dirty pages.
pub const IOMMU_HW_CAP_DIRTY_TRACKING: u32 = 1 << 0;
/// `IOMMU_HW_CAP_PCI_PASID_EXEC`: the device supports the PASID execute permission.
pub const IOMMU_HW_CAP_PCI_PASID_EXEC: u32 = 1 << 1;
/// `IOMMU_HW_CAP_PCI_PASID_PRIV`: the device supports the PASID privileged mode.
pub const IOMMU_HW_CAP_PCI_PASID_PRIV: u32 = 1 << 2;
/// `IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED`: ATS is not supported or cannot be used for the device.
pub const IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED: u32 = 1 << 3;

// `enum iommufd_hw_info_flags`.
/// `IOMMU_HW_INFO_FLAG_INPUT_TYPE`: `in_data_type` selects the type of data wanted.
pub const IOMMU_HW_INFO_FLAG_INPUT_TYPE: u32 = 1 << 0;

abi_struct! {
    /// `struct iommu_hw_info`: query the IOMMU behind a bound device.
    ///
    /// The C struct overlays `in_data_type` and `out_data_type` in an
    /// anonymous union of two `__u32`. Here the slot is the single field
    /// `out_data_type`; [`in_data_type`](Self::in_data_type) and
    /// [`set_in_data_type`](Self::set_in_data_type) give the input view.
    IommuHwInfo, 40 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// `IOMMU_HW_INFO_FLAG_*` flags.
        @4 flags: u32,
        /// Device to query.
        @8 dev_id: u32,
        /// Input: buffer length; output: bytes of data the kernel has.
        @12 data_len: u32,
        /// User pointer to the buffer for the type-specific data.
        @16 data_uptr: u64,
        /// Union slot: `in_data_type` on input, `out_data_type` on output.
        @24 out_data_type: u32,
        /// Output: PASID width in bits (0: no PASID support).
        @28 out_max_pasid_log2: u8,
        /// Reserved; must be zero.
        @29 __reserved: [u8; 3],
        /// Output: `IOMMU_HW_CAP_*` bits.
        @32 out_capabilities: u64,
    }
}

impl IommuHwInfo {
    /// The union slot read as `in_data_type` (meaningful only when
    /// [`IOMMU_HW_INFO_FLAG_INPUT_TYPE`] is set in `flags`).
    pub const fn in_data_type(&self) -> u32 {
        self.out_data_type
    }

    /// Store `in_data_type` (the same bytes as `out_data_type`).
    pub fn set_in_data_type(&mut self, ty: u32) {
        self.out_data_type = ty;
    }
}

// `enum iommufd_hwpt_set_dirty_tracking_flags`.
/// `IOMMU_HWPT_DIRTY_TRACKING_ENABLE`: turn dirty tracking on (off when clear).
pub const IOMMU_HWPT_DIRTY_TRACKING_ENABLE: u32 = 1;

abi_struct! {
    /// `struct iommu_hwpt_set_dirty_tracking`: switch dirty tracking of a HWPT.
    IommuHwptSetDirtyTracking, 16 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// `IOMMU_HWPT_DIRTY_TRACKING_*` flags.
        @4 flags: u32,
        /// HWPT to change.
        @8 hwpt_id: u32,
        /// Reserved; must be zero.
        @12 __reserved: u32,
    }
}

// `enum iommufd_hwpt_get_dirty_bitmap_flags`.
/// `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`: report dirty bits without clearing them.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: u32 = 1;

abi_struct! {
    /// `struct iommu_hwpt_get_dirty_bitmap`: collect dirty bits of an IOVA range
    /// into a user bitmap (one bit per `page_size`).
    IommuHwptGetDirtyBitmap, 48 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// HWPT to read.
        @4 hwpt_id: u32,
        /// `IOMMU_HWPT_GET_DIRTY_BITMAP_*` flags.
        @8 flags: u32,
        /// Reserved; must be zero.
        @12 __reserved: u32,
        /// First IOVA of the range.
        @16 iova: u64,
        /// Bytes in the range.
        @24 length: u64,
        /// Bytes covered by one bit of the bitmap.
        @32 page_size: u64,
        /// User pointer to the bitmap.
        @40 data: u64,
    }
}

// `enum iommu_hwpt_invalidate_data_type`.
/// `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`: entries are [`IommuHwptVtdS1Invalidate`].
pub const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: u32 = 0;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`: entries are [`IommuViommuArmSmmuv3Invalidate`].
pub const IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: u32 = 1;

// `enum iommu_hwpt_vtd_s1_invalidate_flags`.
/// `IOMMU_VTD_INV_FLAGS_LEAF`: only leaf entries changed; upper-level caches may be kept.
pub const IOMMU_VTD_INV_FLAGS_LEAF: u32 = 1 << 0;

abi_struct! {
    /// `struct iommu_hwpt_vtd_s1_invalidate`: one VT-d stage-1 cache
    /// invalidation request.
    IommuHwptVtdS1Invalidate, 24 {
        /// First address to invalidate, page aligned.
        @0 addr: u64,
        /// Number of 4 KiB pages (`u64::MAX` for all).
        @8 npages: u64,
        /// `IOMMU_VTD_INV_FLAGS_*` bits.
        @16 flags: u32,
        /// Reserved; must be zero.
        @20 __reserved: u32,
    }

    /// `struct iommu_viommu_arm_smmuv3_invalidate`: one little-endian 128-bit
    /// SMMUv3 command-queue invalidation command.
    IommuViommuArmSmmuv3Invalidate, 16 {
        /// The command, two little-endian 64-bit words.
        @0 cmd: [u64; 2],
    }

    /// `struct iommu_hwpt_invalidate`: submit an array of driver-specific
    /// invalidation entries to a nested HWPT or a vIOMMU.
    IommuHwptInvalidate, 32 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// Nested HWPT or vIOMMU to invalidate.
        @4 hwpt_id: u32,
        /// User pointer to the array of entries.
        @8 data_uptr: u64,
        /// Type of each entry (`IOMMU_*_INVALIDATE_DATA_*`).
        @16 data_type: u32,
        /// Size of one entry in bytes.
        @20 entry_len: u32,
        /// Input: entries in the array; output: entries handled.
        @24 entry_num: u32,
        /// Reserved; must be zero.
        @28 __reserved: u32,
    }
}

// `enum iommu_hwpt_pgfault_flags`.
/// `IOMMU_PGFAULT_FLAGS_PASID_VALID`: the fault carries a valid `pasid`.
pub const IOMMU_PGFAULT_FLAGS_PASID_VALID: u32 = 1 << 0;
/// `IOMMU_PGFAULT_FLAGS_LAST_PAGE`: the last fault of its group; a response is expected.
pub const IOMMU_PGFAULT_FLAGS_LAST_PAGE: u32 = 1 << 1;

// `enum iommu_hwpt_pgfault_perm`.
/// `IOMMU_PGFAULT_PERM_READ`: the faulting access was a read.
pub const IOMMU_PGFAULT_PERM_READ: u32 = 1 << 0;
/// `IOMMU_PGFAULT_PERM_WRITE`: the faulting access was a write.
pub const IOMMU_PGFAULT_PERM_WRITE: u32 = 1 << 1;
/// `IOMMU_PGFAULT_PERM_EXEC`: the faulting access was an instruction fetch.
pub const IOMMU_PGFAULT_PERM_EXEC: u32 = 1 << 2;
/// `IOMMU_PGFAULT_PERM_PRIV`: the faulting access was privileged.
pub const IOMMU_PGFAULT_PERM_PRIV: u32 = 1 << 3;

abi_struct! {
    /// `struct iommu_hwpt_pgfault`: one I/O page fault record read from a
    /// fault queue fd.
    IommuHwptPgfault, 40 {
        /// `IOMMU_PGFAULT_FLAGS_*` bits.
        @0 flags: u32,
        /// Device that faulted.
        @4 dev_id: u32,
        /// PASID of the access, valid with `PASID_VALID`.
        @8 pasid: u32,
        /// Page request group index.
        @12 grpid: u32,
        /// `IOMMU_PGFAULT_PERM_*` bits of the access.
        @16 perm: u32,
        /// Reserved; must be zero.
        @20 __reserved: u32,
        /// Faulting address.
        @24 addr: u64,
        /// Hint of how many bytes the faulting access wanted.
        @32 length: u32,
        /// Kernel token for the response.
        @36 cookie: u32,
    }
}

// `enum iommufd_page_response_code`.
/// `IOMMUFD_PAGE_RESP_SUCCESS`: the fault was handled; the device may retry.
pub const IOMMUFD_PAGE_RESP_SUCCESS: u32 = 0;
/// `IOMMUFD_PAGE_RESP_INVALID`: the fault could not be handled; the request fails.
pub const IOMMUFD_PAGE_RESP_INVALID: u32 = 1;

abi_struct! {
    /// `struct iommu_hwpt_page_response`: the answer to a fault group, written
    /// to the fault queue fd.
    IommuHwptPageResponse, 8 {
        /// Cookie of the last fault of the group answered.
        @0 cookie: u32,
        /// Result (`IOMMUFD_PAGE_RESP_*`).
        @4 code: u32,
    }

    /// `struct iommu_fault_alloc`: create a fault queue object and its fd.
    IommuFaultAlloc, 16 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// Must be zero.
        @4 flags: u32,
        /// Output: ID of the fault queue.
        @8 out_fault_id: u32,
        /// Output: fd to read faults from and write responses to.
        @12 out_fault_fd: u32,
    }
}

// `enum iommu_viommu_type`.
/// `IOMMU_VIOMMU_TYPE_DEFAULT`: a generic vIOMMU without driver data.
pub const IOMMU_VIOMMU_TYPE_DEFAULT: u32 = 0;
/// `IOMMU_VIOMMU_TYPE_ARM_SMMUV3`: an ARM SMMUv3 vIOMMU.
pub const IOMMU_VIOMMU_TYPE_ARM_SMMUV3: u32 = 1;
/// `IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV`: an NVIDIA Tegra241 CMDQV vIOMMU ([`IommuViommuTegra241Cmdqv`]).
pub const IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV: u32 = 2;

abi_struct! {
    /// `struct iommu_viommu_tegra241_cmdqv`: mmap window of a Tegra241 CMDQV
    /// virtual interface, returned by VIOMMU_ALLOC.
    IommuViommuTegra241Cmdqv, 16 {
        /// Output: mmap offset of the VINTF page0 on the iommufd.
        @0 out_vintf_mmap_offset: u64,
        /// Output: mmap length of that page.
        @8 out_vintf_mmap_length: u64,
    }

    /// `struct iommu_viommu_alloc`: create a virtual IOMMU on top of a nesting
    /// parent HWPT.
    IommuViommuAlloc, 40 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// Must be zero.
        @4 flags: u32,
        /// vIOMMU type (`IOMMU_VIOMMU_TYPE_*`).
        @8 type_: u32,
        /// A device behind the physical IOMMU to virtualise.
        @12 dev_id: u32,
        /// Nesting-parent HWPT providing stage 2.
        @16 hwpt_id: u32,
        /// Output: ID of the new vIOMMU.
        @20 out_viommu_id: u32,
        /// Length of the driver data.
        @24 data_len: u32,
        /// Reserved; must be zero.
        @28 __reserved: u32,
        /// User pointer to the driver data.
        @32 data_uptr: u64,
    }

    /// `struct iommu_vdevice_alloc`: give a device a guest-visible ID under a
    /// vIOMMU.
    IommuVdeviceAlloc, 24 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// vIOMMU the device appears under.
        @4 viommu_id: u32,
        /// Physical device.
        @8 dev_id: u32,
        /// Output: ID of the new vDEVICE.
        @12 out_vdevice_id: u32,
        /// The device's ID as the guest sees it (e.g. a virtual stream ID).
        @16 virt_id: u64,
    }

    /// `struct iommu_ioas_change_process`: move pinned-page accounting of all
    /// file-backed mappings to the calling process.
    IommuIoasChangeProcess, 8 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// Reserved; must be zero.
        @4 __reserved: u32,
    }
}

// `enum iommu_veventq_flag`.
/// `IOMMU_VEVENTQ_FLAG_LOST_EVENTS`: events were dropped before this header because the queue was full.
pub const IOMMU_VEVENTQ_FLAG_LOST_EVENTS: u32 = 1 << 0;

abi_struct! {
    /// `struct iommufd_vevent_header`: precedes every record read from a
    /// vEVENTQ fd; `sequence` wraps from `i32::MAX` to 0.
    IommufdVeventHeader, 8 {
        /// `IOMMU_VEVENTQ_FLAG_*` bits.
        @0 flags: u32,
        /// Sequence number of the event.
        @4 sequence: u32,
    }
}

// `enum iommu_veventq_type`.
/// `IOMMU_VEVENTQ_TYPE_DEFAULT`: reserved, not a valid queue type.
pub const IOMMU_VEVENTQ_TYPE_DEFAULT: u32 = 0;
/// `IOMMU_VEVENTQ_TYPE_ARM_SMMUV3`: records are [`IommuVeventArmSmmuv3`].
pub const IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: u32 = 1;
/// `IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV`: records are [`IommuVeventTegra241Cmdqv`].
pub const IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV: u32 = 2;

abi_struct! {
    /// `struct iommu_vevent_arm_smmuv3`: a little-endian 256-bit SMMUv3 event
    /// record.
    IommuVeventArmSmmuv3, 32 {
        /// The event record, four little-endian 64-bit words.
        @0 evt: [u64; 4],
    }

    /// `struct iommu_vevent_tegra241_cmdqv`: the little-endian 128-bit logical
    /// VCMDQ error map of a Tegra241 CMDQV interrupt.
    IommuVeventTegra241Cmdqv, 16 {
        /// Bitmap of logical VCMDQs in error.
        @0 lvcmdq_err_map: [u64; 2],
    }

    /// `struct iommu_veventq_alloc`: create a virtual event queue of one type
    /// on a vIOMMU, returning its fd.
    IommuVeventqAlloc, 32 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// Must be zero.
        @4 flags: u32,
        /// vIOMMU the queue belongs to.
        @8 viommu_id: u32,
        /// Queue type (`IOMMU_VEVENTQ_TYPE_*`).
        @12 type_: u32,
        /// Maximum number of queued events.
        @16 veventq_depth: u32,
        /// Output: ID of the new queue.
        @20 out_veventq_id: u32,
        /// Output: fd to read events from.
        @24 out_veventq_fd: u32,
        /// Reserved; must be zero.
        @28 __reserved: u32,
    }
}

// `enum iommu_hw_queue_type`.
/// `IOMMU_HW_QUEUE_TYPE_DEFAULT`: reserved, not a valid queue type.
pub const IOMMU_HW_QUEUE_TYPE_DEFAULT: u32 = 0;
/// `IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV`: a Tegra241 CMDQV virtual command queue.
pub const IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV: u32 = 1;

abi_struct! {
    /// `struct iommu_hw_queue_alloc`: hand guest queue memory (a nesting-parent
    /// IOVA range) to a vIOMMU's hardware-accelerated queue.
    IommuHwQueueAlloc, 40 {
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// Must be zero.
        @4 flags: u32,
        /// vIOMMU owning the queue.
        @8 viommu_id: u32,
        /// Queue type (`IOMMU_HW_QUEUE_TYPE_*`).
        @12 type_: u32,
        /// Index of the queue in the vIOMMU.
        @16 index: u32,
        /// Output: ID of the new queue.
        @20 out_hw_queue_id: u32,
        /// Guest physical (stage-2 IOVA) address of the queue memory.
        @24 nesting_parent_iova: u64,
        /// Bytes of queue memory.
        @32 length: u64,
    }
}
