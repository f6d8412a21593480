//! The iommufd commands (`include/uapi/linux/iommufd.h`, Linux 7.3).

use uiommufd_abi::iommufd::*;

use crate::class::{DEVICE, FAULT, HWPT, IOAS, IOMMUFD, VIOMMU};
use crate::fields;
use crate::ioctl::{Arg, Call, Cmd};
use crate::out::{Fmt::*, Names, F};
use crate::payload;

pub(crate) const MAP_FLAGS: Names = &[
    (IOMMU_IOAS_MAP_FIXED_IOVA as u64, "FIXED_IOVA"),
    (IOMMU_IOAS_MAP_WRITEABLE as u64, "WRITEABLE"),
    (IOMMU_IOAS_MAP_READABLE as u64, "READABLE"),
];

const OPTIONS: Names =
    &[(IOMMU_OPTION_RLIMIT_MODE as u64, "RLIMIT_MODE"), (IOMMU_OPTION_HUGE_PAGES as u64, "HUGE_PAGES")];
const OPTION_OPS: Names = &[(IOMMU_OPTION_OP_SET as u64, "SET"), (IOMMU_OPTION_OP_GET as u64, "GET")];

const VFIO_IOAS_OPS: Names = &[
    (IOMMU_VFIO_IOAS_GET as u64, "GET"),
    (IOMMU_VFIO_IOAS_SET as u64, "SET"),
    (IOMMU_VFIO_IOAS_CLEAR as u64, "CLEAR"),
];

const HWPT_ALLOC_FLAGS: Names = &[
    (IOMMU_HWPT_ALLOC_NEST_PARENT as u64, "NEST_PARENT"),
    (IOMMU_HWPT_ALLOC_DIRTY_TRACKING as u64, "DIRTY_TRACKING"),
    (IOMMU_HWPT_FAULT_ID_VALID as u64, "FAULT_ID_VALID"),
    (IOMMU_HWPT_ALLOC_PASID as u64, "PASID"),
];

pub(crate) const HWPT_DATA_TYPES: Names = &[
    (IOMMU_HWPT_DATA_NONE as u64, "NONE"),
    (IOMMU_HWPT_DATA_VTD_S1 as u64, "VTD_S1"),
    (IOMMU_HWPT_DATA_ARM_SMMUV3 as u64, "ARM_SMMUV3"),
    (IOMMU_HWPT_DATA_AMD_GUEST as u64, "AMD_GUEST"),
    (uiommufd_abi::test_cmd::IOMMU_HWPT_DATA_SELFTEST as u64, "SELFTEST"),
];

pub(crate) const HW_INFO_TYPES: Names = &[
    (IOMMU_HW_INFO_TYPE_NONE as u64, "NONE"),
    (IOMMU_HW_INFO_TYPE_INTEL_VTD as u64, "INTEL_VTD"),
    (IOMMU_HW_INFO_TYPE_ARM_SMMUV3 as u64, "ARM_SMMUV3"),
    (IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV as u64, "TEGRA241_CMDQV"),
    (IOMMU_HW_INFO_TYPE_AMD as u64, "AMD"),
    (uiommufd_abi::test_cmd::IOMMU_HW_INFO_TYPE_SELFTEST as u64, "SELFTEST"),
];

const HW_INFO_FLAGS: Names = &[(IOMMU_HW_INFO_FLAG_INPUT_TYPE as u64, "INPUT_TYPE")];

const HW_CAPS: Names = &[
    (IOMMU_HW_CAP_DIRTY_TRACKING as u64, "DIRTY_TRACKING"),
    (IOMMU_HW_CAP_PCI_PASID_EXEC as u64, "PCI_PASID_EXEC"),
    (IOMMU_HW_CAP_PCI_PASID_PRIV as u64, "PCI_PASID_PRIV"),
    (IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED as u64, "PCI_ATS_NOT_SUPPORTED"),
];

const DIRTY_TRACKING_FLAGS: Names = &[(IOMMU_HWPT_DIRTY_TRACKING_ENABLE as u64, "ENABLE")];
const DIRTY_BITMAP_FLAGS: Names = &[(IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR as u64, "NO_CLEAR")];

pub(crate) const INVALIDATE_DATA_TYPES: Names = &[
    (IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 as u64, "VTD_S1"),
    (IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 as u64, "ARM_SMMUV3"),
    (uiommufd_abi::test_cmd::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST as u64, "SELFTEST"),
    (uiommufd_abi::test_cmd::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID as u64, "SELFTEST_INVALID"),
];

pub(crate) const VIOMMU_TYPES: Names = &[
    (IOMMU_VIOMMU_TYPE_DEFAULT as u64, "DEFAULT"),
    (IOMMU_VIOMMU_TYPE_ARM_SMMUV3 as u64, "ARM_SMMUV3"),
    (IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV as u64, "TEGRA241_CMDQV"),
    (uiommufd_abi::test_cmd::IOMMU_VIOMMU_TYPE_SELFTEST as u64, "SELFTEST"),
];

pub(crate) const VEVENTQ_TYPES: Names = &[
    (IOMMU_VEVENTQ_TYPE_DEFAULT as u64, "DEFAULT"),
    (IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 as u64, "ARM_SMMUV3"),
    (IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV as u64, "TEGRA241_CMDQV"),
    (uiommufd_abi::test_cmd::IOMMU_VEVENTQ_TYPE_SELFTEST as u64, "SELFTEST"),
];

const HW_QUEUE_TYPES: Names = &[
    (IOMMU_HW_QUEUE_TYPE_DEFAULT as u64, "DEFAULT"),
    (IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV as u64, "TEGRA241_CMDQV"),
    (uiommufd_abi::test_cmd::IOMMU_HW_QUEUE_TYPE_SELFTEST as u64, "SELFTEST"),
];

/// A struct command of the iommufd table.
const fn cmd(request: u32, name: &'static str, class: u32, len: usize, fields: &'static [F]) -> Cmd {
    Cmd { request, name, class: IOMMUFD | class, arg: Arg::Struct { len, fields, extra: None } }
}

use core::mem::size_of;

pub(crate) const CMDS: &[Cmd] = &[
    cmd(
        IOMMU_DESTROY,
        "IOMMU_DESTROY",
        0,
        size_of::<IommuDestroy>(),
        fields!(IommuDestroy { size: u32 = Dec, id: u32 = Dec }),
    ),
    cmd(
        IOMMU_IOAS_ALLOC,
        "IOMMU_IOAS_ALLOC",
        IOAS,
        size_of::<IommuIoasAlloc>(),
        fields!(IommuIoasAlloc { size: u32 = Dec, flags: u32 = Hex, out_ioas_id: u32 = Out(&Dec) }),
    ),
    cmd(
        IOMMU_IOAS_ALLOW_IOVAS,
        "IOMMU_IOAS_ALLOW_IOVAS",
        IOAS,
        size_of::<IommuIoasAllowIovas>(),
        fields!(IommuIoasAllowIovas {
            size: u32 = Dec,
            ioas_id: u32 = Dec,
            num_iovas: u32 = Dec,
            __reserved: u32 = Rsv,
            allowed_iovas: u64 = Custom(payload::iova_ranges_in),
        }),
    ),
    cmd(
        IOMMU_IOAS_COPY,
        "IOMMU_IOAS_COPY",
        IOAS,
        size_of::<IommuIoasCopy>(),
        fields!(IommuIoasCopy {
            size: u32 = Dec,
            flags: u32 = Flags(MAP_FLAGS),
            dst_ioas_id: u32 = Dec,
            src_ioas_id: u32 = Dec,
            length: u64 = Hex,
            dst_iova: u64 = Hex,
            src_iova: u64 = Hex,
        }),
    ),
    cmd(
        IOMMU_IOAS_IOVA_RANGES,
        "IOMMU_IOAS_IOVA_RANGES",
        IOAS,
        size_of::<IommuIoasIovaRanges>(),
        fields!(IommuIoasIovaRanges {
            size: u32 = Dec,
            ioas_id: u32 = Dec,
            num_iovas: u32 = Dec,
            __reserved: u32 = Rsv,
            allowed_iovas: u64 = Custom(payload::iova_ranges_out),
            out_iova_alignment: u64 = Out(&Hex),
        }),
    ),
    cmd(
        IOMMU_IOAS_MAP,
        "IOMMU_IOAS_MAP",
        IOAS,
        size_of::<IommuIoasMap>(),
        fields!(IommuIoasMap {
            size: u32 = Dec,
            flags: u32 = Flags(MAP_FLAGS),
            ioas_id: u32 = Dec,
            __reserved: u32 = Rsv,
            user_va: u64 = Ptr,
            length: u64 = Hex,
            iova: u64 = Hex,
        }),
    ),
    cmd(
        IOMMU_IOAS_UNMAP,
        "IOMMU_IOAS_UNMAP",
        IOAS,
        size_of::<IommuIoasUnmap>(),
        fields!(IommuIoasUnmap { size: u32 = Dec, ioas_id: u32 = Dec, iova: u64 = Hex, length: u64 = Hex }),
    ),
    cmd(
        IOMMU_OPTION,
        "IOMMU_OPTION",
        0,
        size_of::<IommuOption>(),
        fields!(IommuOption {
            size: u32 = Dec,
            option_id: u32 = Enum(OPTIONS),
            op: u16 = Enum(OPTION_OPS),
            __reserved: u16 = Rsv,
            object_id: u32 = Dec,
            val64: u64 = Dec,
        }),
    ),
    cmd(
        IOMMU_VFIO_IOAS,
        "IOMMU_VFIO_IOAS",
        IOAS,
        size_of::<IommuVfioIoas>(),
        fields!(IommuVfioIoas {
            size: u32 = Dec,
            ioas_id: u32 = Dec,
            op: u16 = Enum(VFIO_IOAS_OPS),
            __reserved: u16 = Rsv,
        }),
    ),
    cmd(
        IOMMU_HWPT_ALLOC,
        "IOMMU_HWPT_ALLOC",
        HWPT,
        size_of::<IommuHwptAlloc>(),
        fields!(IommuHwptAlloc {
            size: u32 = Dec,
            flags: u32 = Flags(HWPT_ALLOC_FLAGS),
            dev_id: u32 = Dec,
            pt_id: u32 = Dec,
            out_hwpt_id: u32 = Out(&Dec),
            __reserved: u32 = Rsv,
            data_type: u32 = Enum(HWPT_DATA_TYPES),
            data_len: u32 = Dec,
            data_uptr: u64 = Custom(payload::hwpt_data),
            fault_id: u32 = Custom(fault_id),
            __reserved2: u32 = Rsv,
        }),
    ),
    cmd(
        IOMMU_GET_HW_INFO,
        "IOMMU_GET_HW_INFO",
        DEVICE,
        size_of::<IommuHwInfo>(),
        fields!(IommuHwInfo {
            size: u32 = Dec,
            flags: u32 = Flags(HW_INFO_FLAGS),
            dev_id: u32 = Dec,
            data_len: u32 = Dec,
            data_uptr: u64 = Custom(payload::hw_info_data),
            out_data_type: u32 = Custom(hw_info_type),
            out_max_pasid_log2: u8 = Out(&Dec),
            __reserved: [u8; 3] = Rsv,
            out_capabilities: u64 = Out(&Flags(HW_CAPS)),
        }),
    ),
    cmd(
        IOMMU_HWPT_SET_DIRTY_TRACKING,
        "IOMMU_HWPT_SET_DIRTY_TRACKING",
        HWPT,
        size_of::<IommuHwptSetDirtyTracking>(),
        fields!(IommuHwptSetDirtyTracking {
            size: u32 = Dec,
            flags: u32 = Flags(DIRTY_TRACKING_FLAGS),
            hwpt_id: u32 = Dec,
            __reserved: u32 = Rsv,
        }),
    ),
    cmd(
        IOMMU_HWPT_GET_DIRTY_BITMAP,
        "IOMMU_HWPT_GET_DIRTY_BITMAP",
        HWPT,
        size_of::<IommuHwptGetDirtyBitmap>(),
        fields!(IommuHwptGetDirtyBitmap {
            size: u32 = Dec,
            hwpt_id: u32 = Dec,
            flags: u32 = Flags(DIRTY_BITMAP_FLAGS),
            __reserved: u32 = Rsv,
            iova: u64 = Hex,
            length: u64 = Hex,
            page_size: u64 = Hex,
            data: u64 = Custom(payload::dirty_bitmap),
        }),
    ),
    cmd(
        IOMMU_HWPT_INVALIDATE,
        "IOMMU_HWPT_INVALIDATE",
        HWPT | VIOMMU,
        size_of::<IommuHwptInvalidate>(),
        fields!(IommuHwptInvalidate {
            size: u32 = Dec,
            hwpt_id: u32 = Dec,
            data_uptr: u64 = Custom(payload::invalidate_entries),
            data_type: u32 = Enum(INVALIDATE_DATA_TYPES),
            entry_len: u32 = Dec,
            entry_num: u32 = Dec,
            __reserved: u32 = Rsv,
        }),
    ),
    cmd(
        IOMMU_FAULT_QUEUE_ALLOC,
        "IOMMU_FAULT_QUEUE_ALLOC",
        FAULT,
        size_of::<IommuFaultAlloc>(),
        fields!(IommuFaultAlloc {
            size: u32 = Dec,
            flags: u32 = Hex,
            out_fault_id: u32 = Out(&Dec),
            out_fault_fd: u32 = Out(&Signed),
        }),
    ),
    cmd(
        IOMMU_IOAS_MAP_FILE,
        "IOMMU_IOAS_MAP_FILE",
        IOAS,
        size_of::<IommuIoasMapFile>(),
        fields!(IommuIoasMapFile {
            size: u32 = Dec,
            flags: u32 = Flags(MAP_FLAGS),
            ioas_id: u32 = Dec,
            fd: i32 = Signed,
            start: u64 = Hex,
            length: u64 = Hex,
            iova: u64 = Hex,
        }),
    ),
    cmd(
        IOMMU_VIOMMU_ALLOC,
        "IOMMU_VIOMMU_ALLOC",
        VIOMMU,
        size_of::<IommuViommuAlloc>(),
        fields!(IommuViommuAlloc {
            size: u32 = Dec,
            flags: u32 = Hex,
            type_: u32 = Enum(VIOMMU_TYPES),
            dev_id: u32 = Dec,
            hwpt_id: u32 = Dec,
            out_viommu_id: u32 = Out(&Dec),
            data_len: u32 = Dec,
            __reserved: u32 = Rsv,
            data_uptr: u64 = Custom(payload::viommu_data),
        }),
    ),
    cmd(
        IOMMU_VDEVICE_ALLOC,
        "IOMMU_VDEVICE_ALLOC",
        VIOMMU,
        size_of::<IommuVdeviceAlloc>(),
        fields!(IommuVdeviceAlloc {
            size: u32 = Dec,
            viommu_id: u32 = Dec,
            dev_id: u32 = Dec,
            out_vdevice_id: u32 = Out(&Dec),
            virt_id: u64 = Hex,
        }),
    ),
    cmd(
        IOMMU_IOAS_CHANGE_PROCESS,
        "IOMMU_IOAS_CHANGE_PROCESS",
        IOAS,
        size_of::<IommuIoasChangeProcess>(),
        fields!(IommuIoasChangeProcess { size: u32 = Dec, __reserved: u32 = Rsv }),
    ),
    cmd(
        IOMMU_VEVENTQ_ALLOC,
        "IOMMU_VEVENTQ_ALLOC",
        VIOMMU,
        size_of::<IommuVeventqAlloc>(),
        fields!(IommuVeventqAlloc {
            size: u32 = Dec,
            flags: u32 = Hex,
            viommu_id: u32 = Dec,
            type_: u32 = Enum(VEVENTQ_TYPES),
            veventq_depth: u32 = Dec,
            out_veventq_id: u32 = Out(&Dec),
            out_veventq_fd: u32 = Out(&Signed),
            __reserved: u32 = Rsv,
        }),
    ),
    cmd(
        IOMMU_HW_QUEUE_ALLOC,
        "IOMMU_HW_QUEUE_ALLOC",
        VIOMMU,
        size_of::<IommuHwQueueAlloc>(),
        fields!(IommuHwQueueAlloc {
            size: u32 = Dec,
            flags: u32 = Hex,
            viommu_id: u32 = Dec,
            type_: u32 = Enum(HW_QUEUE_TYPES),
            index: u32 = Dec,
            out_hw_queue_id: u32 = Out(&Dec),
            nesting_parent_iova: u64 = Hex,
            length: u64 = Hex,
        }),
    ),
    cmd(
        IOMMU_IOAS_NOIOMMU_GET_PA,
        "IOMMU_IOAS_NOIOMMU_GET_PA",
        IOAS,
        size_of::<IommuIoasNoiommuGetPa>(),
        fields!(IommuIoasNoiommuGetPa {
            size: u32 = Dec,
            flags: u32 = Hex,
            ioas_id: u32 = Dec,
            __reserved: u32 = Rsv,
            iova: u64 = Hex,
            length: u64 = Hex,
            out_phys: u64 = Out(&Hex),
        }),
    ),
];

/// `fault_id` means something only with `IOMMU_HWPT_FAULT_ID_VALID`.
fn fault_id(c: &mut Call<'_, '_>, f: &F) {
    if c.phase == crate::ioctl::Phase::Enter && c.e(4, 4) as u32 & IOMMU_HWPT_FAULT_ID_VALID != 0 {
        c.key(f.name);
        c.o.dec(f.get(c.entry));
    }
}

/// The union slot of `iommu_hw_info`: `in_data_type` with
/// `IOMMU_HW_INFO_FLAG_INPUT_TYPE`, `out_data_type` after the call.
fn hw_info_type(c: &mut Call<'_, '_>, f: &F) {
    use crate::ioctl::Phase;
    match c.phase {
        Phase::Enter if c.e(4, 4) as u32 & IOMMU_HW_INFO_FLAG_INPUT_TYPE != 0 => {
            c.key("in_data_type");
            c.o.enm(f.get(c.entry), HW_INFO_TYPES);
        }
        Phase::Exit if c.out_ok() => {
            c.key("out_data_type");
            c.o.enm(f.get(c.exit), HW_INFO_TYPES);
        }
        _ => {}
    }
}
