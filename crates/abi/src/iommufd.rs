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

pub const IOMMUFD_CMD_BASE: u32 = 0x80;
pub const IOMMUFD_CMD_DESTROY: u32 = IOMMUFD_CMD_BASE;
pub const IOMMUFD_CMD_IOAS_ALLOC: u32 = 0x81;
pub const IOMMUFD_CMD_IOAS_ALLOW_IOVAS: u32 = 0x82;
pub const IOMMUFD_CMD_IOAS_COPY: u32 = 0x83;
pub const IOMMUFD_CMD_IOAS_IOVA_RANGES: u32 = 0x84;
pub const IOMMUFD_CMD_IOAS_MAP: u32 = 0x85;
pub const IOMMUFD_CMD_IOAS_UNMAP: u32 = 0x86;
pub const IOMMUFD_CMD_OPTION: u32 = 0x87;
pub const IOMMUFD_CMD_VFIO_IOAS: u32 = 0x88;
pub const IOMMUFD_CMD_HWPT_ALLOC: u32 = 0x89;
pub const IOMMUFD_CMD_GET_HW_INFO: u32 = 0x8a;
pub const IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: u32 = 0x8b;
pub const IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: u32 = 0x8c;
pub const IOMMUFD_CMD_HWPT_INVALIDATE: u32 = 0x8d;
pub const IOMMUFD_CMD_FAULT_QUEUE_ALLOC: u32 = 0x8e;
pub const IOMMUFD_CMD_IOAS_MAP_FILE: u32 = 0x8f;
pub const IOMMUFD_CMD_VIOMMU_ALLOC: u32 = 0x90;
pub const IOMMUFD_CMD_VDEVICE_ALLOC: u32 = 0x91;
pub const IOMMUFD_CMD_IOAS_CHANGE_PROCESS: u32 = 0x92;
pub const IOMMUFD_CMD_VEVENTQ_ALLOC: u32 = 0x93;
pub const IOMMUFD_CMD_HW_QUEUE_ALLOC: u32 = 0x94;
pub const IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA: u32 = 0x95;

pub const IOMMU_DESTROY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);
pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);
pub const IOMMU_OPTION: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION);
pub const IOMMU_IOAS_ALLOW_IOVAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
pub const IOMMU_IOAS_COPY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY);
pub const IOMMU_IOAS_IOVA_RANGES: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES);
pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);
pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);
pub const IOMMU_VFIO_IOAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS);
pub const IOMMU_HWPT_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC);
pub const IOMMU_GET_HW_INFO: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO);
pub const IOMMU_HWPT_SET_DIRTY_TRACKING: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING);
pub const IOMMU_HWPT_GET_DIRTY_BITMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP);
pub const IOMMU_HWPT_INVALIDATE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE);
pub const IOMMU_FAULT_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC);
pub const IOMMU_IOAS_MAP_FILE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE);
pub const IOMMU_VIOMMU_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC);
pub const IOMMU_VDEVICE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC);
pub const IOMMU_IOAS_CHANGE_PROCESS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS);
pub const IOMMU_VEVENTQ_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC);
pub const IOMMU_HW_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC);
pub const IOMMU_IOAS_NOIOMMU_GET_PA: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA);

/// `struct iommu_destroy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IommuDestroy {
    pub size: u32,
    pub id: u32,
}
assert_layout!(IommuDestroy, 8, size @ 0, id @ 4);

/// `struct iommu_ioas_alloc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IommuIoasAlloc {
    pub size: u32,
    pub flags: u32,
    pub out_ioas_id: u32,
}
assert_layout!(IommuIoasAlloc, 12, size @ 0, flags @ 4, out_ioas_id @ 8);

/// `enum iommufd_option`.
pub const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
pub const IOMMU_OPTION_HUGE_PAGES: u32 = 1;

/// `enum iommufd_option_ops`.
pub const IOMMU_OPTION_OP_SET: u16 = 0;
pub const IOMMU_OPTION_OP_GET: u16 = 1;

/// `struct iommu_option`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IommuOption {
    pub size: u32,
    pub option_id: u32,
    pub op: u16,
    pub __reserved: u16,
    pub object_id: u32,
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
        @0 start: u64,
        @8 last: u64,
    }

    /// `struct iommu_ioas_iova_ranges`: read back the usable IOVA ranges of an
    /// IOAS into a user array of [`IommuIovaRange`].
    IommuIoasIovaRanges, 32 {
        @0 size: u32,
        @4 ioas_id: u32,
        @8 num_iovas: u32,
        @12 __reserved: u32,
        @16 allowed_iovas: u64,
        @24 out_iova_alignment: u64,
    }

    /// `struct iommu_ioas_allow_iovas`: pin down IOVA ranges that later device
    /// attachments may not take away.
    IommuIoasAllowIovas, 24 {
        @0 size: u32,
        @4 ioas_id: u32,
        @8 num_iovas: u32,
        @12 __reserved: u32,
        @16 allowed_iovas: u64,
    }
}

/// `enum iommufd_ioas_map_flags`: flags of IOAS_MAP, IOAS_MAP_FILE and IOAS_COPY.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

abi_struct! {
    /// `struct iommu_ioas_map`: map user virtual memory into an IOAS.
    IommuIoasMap, 40 {
        @0 size: u32,
        @4 flags: u32,
        @8 ioas_id: u32,
        @12 __reserved: u32,
        @16 user_va: u64,
        @24 length: u64,
        @32 iova: u64,
    }

    /// `struct iommu_ioas_noiommu_get_pa`: the physical address behind a mapped
    /// IOVA and how many bytes from it are physically contiguous (at most the
    /// input `length`); for devices doing DMA without an IOMMU.
    IommuIoasNoiommuGetPa, 40 {
        @0 size: u32,
        @4 flags: u32,
        @8 ioas_id: u32,
        @12 __reserved: u32,
        @16 iova: u64,
        @24 length: u64,
        @32 out_phys: u64,
    }

    /// `struct iommu_ioas_map_file`: map a range of a file (a memfd, or a
    /// single-range VFIO dma-buf) into an IOAS.
    IommuIoasMapFile, 40 {
        @0 size: u32,
        @4 flags: u32,
        @8 ioas_id: u32,
        @12 fd: i32,
        @16 start: u64,
        @24 length: u64,
        @32 iova: u64,
    }

    /// `struct iommu_ioas_copy`: duplicate an existing mapping of one IOAS into
    /// another without pinning the pages again.
    IommuIoasCopy, 40 {
        @0 size: u32,
        @4 flags: u32,
        @8 dst_ioas_id: u32,
        @12 src_ioas_id: u32,
        @16 length: u64,
        @24 dst_iova: u64,
        @32 src_iova: u64,
    }

    /// `struct iommu_ioas_unmap`: remove whole mappings covered by an IOVA range.
    IommuIoasUnmap, 24 {
        @0 size: u32,
        @4 ioas_id: u32,
        @8 iova: u64,
        @16 length: u64,
    }
}

/// `enum iommufd_vfio_ioas_op` (carried in the `u16` field [`IommuVfioIoas::op`]).
pub const IOMMU_VFIO_IOAS_GET: u16 = 0;
pub const IOMMU_VFIO_IOAS_SET: u16 = 1;
pub const IOMMU_VFIO_IOAS_CLEAR: u16 = 2;

abi_struct! {
    /// `struct iommu_vfio_ioas`: get, set or clear the IOAS used by the VFIO
    /// type1 compatibility layer.
    IommuVfioIoas, 12 {
        @0 size: u32,
        @4 ioas_id: u32,
        @8 op: u16,
        @10 __reserved: u16,
    }
}

/// `enum iommufd_hwpt_alloc_flags`.
pub const IOMMU_HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
pub const IOMMU_HWPT_ALLOC_DIRTY_TRACKING: u32 = 1 << 1;
pub const IOMMU_HWPT_FAULT_ID_VALID: u32 = 1 << 2;
pub const IOMMU_HWPT_ALLOC_PASID: u32 = 1 << 3;

/// `enum iommu_hwpt_vtd_s1_flags` (bits of the `u64` [`IommuHwptVtdS1::flags`]).
pub const IOMMU_VTD_S1_SRE: u32 = 1 << 0;
pub const IOMMU_VTD_S1_EAFE: u32 = 1 << 1;
pub const IOMMU_VTD_S1_WPE: u32 = 1 << 2;

abi_struct! {
    /// `struct iommu_hwpt_vtd_s1`: Intel VT-d stage-1 page table description
    /// (`IOMMU_HWPT_DATA_VTD_S1`).
    IommuHwptVtdS1, 24 {
        @0 flags: u64,
        @8 pgtbl_addr: u64,
        @16 addr_width: u32,
        @20 __reserved: u32,
    }

    /// `struct iommu_hwpt_arm_smmuv3`: the first two little-endian words of a
    /// guest SMMUv3 stream table entry (`IOMMU_HWPT_DATA_ARM_SMMUV3`).
    IommuHwptArmSmmuv3, 16 {
        @0 ste: [u64; 2],
    }

    /// `struct iommu_hwpt_amd_guest`: an AMD guest device table entry
    /// (`IOMMU_HWPT_DATA_AMD_GUEST`).
    IommuHwptAmdGuest, 32 {
        @0 dte: [u64; 4],
    }
}

/// `enum iommu_hwpt_data_type`.
pub const IOMMU_HWPT_DATA_NONE: u32 = 0;
pub const IOMMU_HWPT_DATA_VTD_S1: u32 = 1;
pub const IOMMU_HWPT_DATA_ARM_SMMUV3: u32 = 2;
pub const IOMMU_HWPT_DATA_AMD_GUEST: u32 = 3;

abi_struct! {
    /// `struct iommu_hwpt_alloc`: create a hardware page table (kernel- or
    /// user-managed) for a device.
    IommuHwptAlloc, 48 {
        @0 size: u32,
        @4 flags: u32,
        @8 dev_id: u32,
        @12 pt_id: u32,
        @16 out_hwpt_id: u32,
        @20 __reserved: u32,
        @24 data_type: u32,
        @28 data_len: u32,
        @32 data_uptr: u64,
        @40 fault_id: u32,
        @44 __reserved2: u32,
    }
}

/// `enum iommu_hw_info_vtd_flags`.
pub const IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17: u32 = 1 << 0;

/// `enum iommu_hw_info_arm_smmuv3_flags` (Linux 7.3; not in 6.12): user space must issue
/// TLBI/CFGI + CMD_SYNC twice (erratum T264-SMMU-3).
pub const IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI: u32 = 1 << 0;

abi_struct! {
    /// `struct iommu_hw_info_vtd`: raw Intel VT-d capability registers.
    IommuHwInfoVtd, 24 {
        @0 flags: u32,
        @4 __reserved: u32,
        @8 cap_reg: u64,
        @16 ecap_reg: u64,
    }

    /// `struct iommu_hw_info_arm_smmuv3`: raw ARM SMMUv3 ID registers.
    IommuHwInfoArmSmmuv3, 40 {
        @0 flags: u32,
        @4 __reserved: u32,
        @8 idr: [u32; 6],
        @32 iidr: u32,
        @36 aidr: u32,
    }

    /// `struct iommu_hw_info_tegra241_cmdqv`: NVIDIA Tegra241 CMDQV parameters.
    IommuHwInfoTegra241Cmdqv, 8 {
        @0 flags: u32,
        @4 version: u8,
        @5 log2vcmdqs: u8,
        @6 log2vsids: u8,
        @7 __reserved: u8,
    }

    /// `struct iommu_hw_info_amd`: raw AMD extended feature registers.
    IommuHwInfoAmd, 16 {
        @0 efr: u64,
        @8 efr2: u64,
    }
}

/// `enum iommu_hw_info_type` (`NONE` and `DEFAULT` share the value 0).
pub const IOMMU_HW_INFO_TYPE_NONE: u32 = 0;
pub const IOMMU_HW_INFO_TYPE_DEFAULT: u32 = 0;
pub const IOMMU_HW_INFO_TYPE_INTEL_VTD: u32 = 1;
pub const IOMMU_HW_INFO_TYPE_ARM_SMMUV3: u32 = 2;
pub const IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV: u32 = 3;
pub const IOMMU_HW_INFO_TYPE_AMD: u32 = 4;

/// `enum iommufd_hw_capabilities` (bits of the `u64` [`IommuHwInfo::out_capabilities`]).
pub const IOMMU_HW_CAP_DIRTY_TRACKING: u32 = 1 << 0;
pub const IOMMU_HW_CAP_PCI_PASID_EXEC: u32 = 1 << 1;
pub const IOMMU_HW_CAP_PCI_PASID_PRIV: u32 = 1 << 2;
pub const IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED: u32 = 1 << 3;

/// `enum iommufd_hw_info_flags`.
pub const IOMMU_HW_INFO_FLAG_INPUT_TYPE: u32 = 1 << 0;

abi_struct! {
    /// `struct iommu_hw_info`: query the IOMMU behind a bound device.
    ///
    /// The C struct overlays `in_data_type` and `out_data_type` in an
    /// anonymous union of two `__u32`. Here the slot is the single field
    /// `out_data_type`; [`in_data_type`](Self::in_data_type) and
    /// [`set_in_data_type`](Self::set_in_data_type) give the input view.
    IommuHwInfo, 40 {
        @0 size: u32,
        @4 flags: u32,
        @8 dev_id: u32,
        @12 data_len: u32,
        @16 data_uptr: u64,
        /// Union slot: `in_data_type` on input, `out_data_type` on output.
        @24 out_data_type: u32,
        @28 out_max_pasid_log2: u8,
        @29 __reserved: [u8; 3],
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

/// `enum iommufd_hwpt_set_dirty_tracking_flags`.
pub const IOMMU_HWPT_DIRTY_TRACKING_ENABLE: u32 = 1;

abi_struct! {
    /// `struct iommu_hwpt_set_dirty_tracking`: switch dirty tracking of a HWPT.
    IommuHwptSetDirtyTracking, 16 {
        @0 size: u32,
        @4 flags: u32,
        @8 hwpt_id: u32,
        @12 __reserved: u32,
    }
}

/// `enum iommufd_hwpt_get_dirty_bitmap_flags`.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: u32 = 1;

abi_struct! {
    /// `struct iommu_hwpt_get_dirty_bitmap`: collect dirty bits of an IOVA range
    /// into a user bitmap (one bit per `page_size`).
    IommuHwptGetDirtyBitmap, 48 {
        @0 size: u32,
        @4 hwpt_id: u32,
        @8 flags: u32,
        @12 __reserved: u32,
        @16 iova: u64,
        @24 length: u64,
        @32 page_size: u64,
        @40 data: u64,
    }
}

/// `enum iommu_hwpt_invalidate_data_type`.
pub const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: u32 = 0;
pub const IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: u32 = 1;

/// `enum iommu_hwpt_vtd_s1_invalidate_flags`.
pub const IOMMU_VTD_INV_FLAGS_LEAF: u32 = 1 << 0;

abi_struct! {
    /// `struct iommu_hwpt_vtd_s1_invalidate`: one VT-d stage-1 cache
    /// invalidation request.
    IommuHwptVtdS1Invalidate, 24 {
        @0 addr: u64,
        @8 npages: u64,
        @16 flags: u32,
        @20 __reserved: u32,
    }

    /// `struct iommu_viommu_arm_smmuv3_invalidate`: one little-endian 128-bit
    /// SMMUv3 command-queue invalidation command.
    IommuViommuArmSmmuv3Invalidate, 16 {
        @0 cmd: [u64; 2],
    }

    /// `struct iommu_hwpt_invalidate`: submit an array of driver-specific
    /// invalidation entries to a nested HWPT or a vIOMMU.
    IommuHwptInvalidate, 32 {
        @0 size: u32,
        @4 hwpt_id: u32,
        @8 data_uptr: u64,
        @16 data_type: u32,
        @20 entry_len: u32,
        @24 entry_num: u32,
        @28 __reserved: u32,
    }
}

/// `enum iommu_hwpt_pgfault_flags`.
pub const IOMMU_PGFAULT_FLAGS_PASID_VALID: u32 = 1 << 0;
pub const IOMMU_PGFAULT_FLAGS_LAST_PAGE: u32 = 1 << 1;

/// `enum iommu_hwpt_pgfault_perm`.
pub const IOMMU_PGFAULT_PERM_READ: u32 = 1 << 0;
pub const IOMMU_PGFAULT_PERM_WRITE: u32 = 1 << 1;
pub const IOMMU_PGFAULT_PERM_EXEC: u32 = 1 << 2;
pub const IOMMU_PGFAULT_PERM_PRIV: u32 = 1 << 3;

abi_struct! {
    /// `struct iommu_hwpt_pgfault`: one I/O page fault record read from a
    /// fault queue fd.
    IommuHwptPgfault, 40 {
        @0 flags: u32,
        @4 dev_id: u32,
        @8 pasid: u32,
        @12 grpid: u32,
        @16 perm: u32,
        @20 __reserved: u32,
        @24 addr: u64,
        @32 length: u32,
        @36 cookie: u32,
    }
}

/// `enum iommufd_page_response_code`.
pub const IOMMUFD_PAGE_RESP_SUCCESS: u32 = 0;
pub const IOMMUFD_PAGE_RESP_INVALID: u32 = 1;

abi_struct! {
    /// `struct iommu_hwpt_page_response`: the answer to a fault group, written
    /// to the fault queue fd.
    IommuHwptPageResponse, 8 {
        @0 cookie: u32,
        @4 code: u32,
    }

    /// `struct iommu_fault_alloc`: create a fault queue object and its fd.
    IommuFaultAlloc, 16 {
        @0 size: u32,
        @4 flags: u32,
        @8 out_fault_id: u32,
        @12 out_fault_fd: u32,
    }
}

/// `enum iommu_viommu_type`.
pub const IOMMU_VIOMMU_TYPE_DEFAULT: u32 = 0;
pub const IOMMU_VIOMMU_TYPE_ARM_SMMUV3: u32 = 1;
pub const IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV: u32 = 2;

abi_struct! {
    /// `struct iommu_viommu_tegra241_cmdqv`: mmap window of a Tegra241 CMDQV
    /// virtual interface, returned by VIOMMU_ALLOC.
    IommuViommuTegra241Cmdqv, 16 {
        @0 out_vintf_mmap_offset: u64,
        @8 out_vintf_mmap_length: u64,
    }

    /// `struct iommu_viommu_alloc`: create a virtual IOMMU on top of a nesting
    /// parent HWPT.
    IommuViommuAlloc, 40 {
        @0 size: u32,
        @4 flags: u32,
        @8 type_: u32,
        @12 dev_id: u32,
        @16 hwpt_id: u32,
        @20 out_viommu_id: u32,
        @24 data_len: u32,
        @28 __reserved: u32,
        @32 data_uptr: u64,
    }

    /// `struct iommu_vdevice_alloc`: give a device a guest-visible ID under a
    /// vIOMMU.
    IommuVdeviceAlloc, 24 {
        @0 size: u32,
        @4 viommu_id: u32,
        @8 dev_id: u32,
        @12 out_vdevice_id: u32,
        @16 virt_id: u64,
    }

    /// `struct iommu_ioas_change_process`: move pinned-page accounting of all
    /// file-backed mappings to the calling process.
    IommuIoasChangeProcess, 8 {
        @0 size: u32,
        @4 __reserved: u32,
    }
}

/// `enum iommu_veventq_flag`.
pub const IOMMU_VEVENTQ_FLAG_LOST_EVENTS: u32 = 1 << 0;

abi_struct! {
    /// `struct iommufd_vevent_header`: precedes every record read from a
    /// vEVENTQ fd; `sequence` wraps from `i32::MAX` to 0.
    IommufdVeventHeader, 8 {
        @0 flags: u32,
        @4 sequence: u32,
    }
}

/// `enum iommu_veventq_type`.
pub const IOMMU_VEVENTQ_TYPE_DEFAULT: u32 = 0;
pub const IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: u32 = 1;
pub const IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV: u32 = 2;

abi_struct! {
    /// `struct iommu_vevent_arm_smmuv3`: a little-endian 256-bit SMMUv3 event
    /// record.
    IommuVeventArmSmmuv3, 32 {
        @0 evt: [u64; 4],
    }

    /// `struct iommu_vevent_tegra241_cmdqv`: the little-endian 128-bit logical
    /// VCMDQ error map of a Tegra241 CMDQV interrupt.
    IommuVeventTegra241Cmdqv, 16 {
        @0 lvcmdq_err_map: [u64; 2],
    }

    /// `struct iommu_veventq_alloc`: create a virtual event queue of one type
    /// on a vIOMMU, returning its fd.
    IommuVeventqAlloc, 32 {
        @0 size: u32,
        @4 flags: u32,
        @8 viommu_id: u32,
        @12 type_: u32,
        @16 veventq_depth: u32,
        @20 out_veventq_id: u32,
        @24 out_veventq_fd: u32,
        @28 __reserved: u32,
    }
}

/// `enum iommu_hw_queue_type`.
pub const IOMMU_HW_QUEUE_TYPE_DEFAULT: u32 = 0;
pub const IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV: u32 = 1;

abi_struct! {
    /// `struct iommu_hw_queue_alloc`: hand guest queue memory (a nesting-parent
    /// IOVA range) to a vIOMMU's hardware-accelerated queue.
    IommuHwQueueAlloc, 40 {
        @0 size: u32,
        @4 flags: u32,
        @8 viommu_id: u32,
        @12 type_: u32,
        @16 index: u32,
        @20 out_hw_queue_id: u32,
        @24 nesting_parent_iova: u64,
        @32 length: u64,
    }
}
