//! Hold the iommufd structs and constants to `iommufd-bindings` (bindgen
//! output of Linux v7.1's `include/uapi/linux/iommufd.h`), and the request
//! numbers to known-good values.

use core::mem::{align_of, offset_of, size_of};
use iommufd_bindings as b;
use uiommufd_abi::iommufd::*;
use uiommufd_abi::{test_cmd, vfio};

/// Offset of a bindings field: the field is named like ours unless an
/// `= other` rename is given.
macro_rules! their_offset {
    ($t:ty, $f:ident) => {
        offset_of!($t, $f)
    };
    ($t:ty, $f:ident, $g:ident) => {
        offset_of!($t, $g)
    };
}

/// `Ours = c_name { field, field = bindings_field, ... }`: size, alignment and
/// every offset must match. The struct literal makes the compiler check that
/// the list names every field of ours.
macro_rules! same_layout {
    ($($ours:ident = $theirs:ident { $($f:ident $(= $g:ident)?),* $(,)? })*) => {{
        let mut n = 0;
        $(
            let _complete = $ours { $($f: Default::default()),* };
            let name = stringify!($theirs);
            assert_eq!(size_of::<$ours>(), size_of::<b::$theirs>(), "sizeof {name}");
            assert_eq!(align_of::<$ours>(), align_of::<b::$theirs>(), "alignof {name}");
            $(assert_eq!(
                offset_of!($ours, $f),
                their_offset!(b::$theirs, $f $(, $g)?),
                "offsetof {name}.{}", stringify!($f)
            );)*
            n += 1;
        )*
        n
    }};
}

#[test]
fn structs_match_bindings() {
    let n = same_layout! {
        IommuDestroy = iommu_destroy { size, id }
        IommuIoasAlloc = iommu_ioas_alloc { size, flags, out_ioas_id }
        IommuIovaRange = iommu_iova_range { start, last }
        IommuIoasIovaRanges = iommu_ioas_iova_ranges {
            size, ioas_id, num_iovas, __reserved, allowed_iovas, out_iova_alignment
        }
        IommuIoasAllowIovas = iommu_ioas_allow_iovas {
            size, ioas_id, num_iovas, __reserved, allowed_iovas
        }
        IommuIoasMap = iommu_ioas_map { size, flags, ioas_id, __reserved, user_va, length, iova }
        IommuIoasMapFile = iommu_ioas_map_file { size, flags, ioas_id, fd, start, length, iova }
        IommuIoasCopy = iommu_ioas_copy {
            size, flags, dst_ioas_id, src_ioas_id, length, dst_iova, src_iova
        }
        IommuIoasUnmap = iommu_ioas_unmap { size, ioas_id, iova, length }
        IommuOption = iommu_option { size, option_id, op, __reserved, object_id, val64 }
        IommuVfioIoas = iommu_vfio_ioas { size, ioas_id, op, __reserved }
        IommuHwptVtdS1 = iommu_hwpt_vtd_s1 { flags, pgtbl_addr, addr_width, __reserved }
        IommuHwptArmSmmuv3 = iommu_hwpt_arm_smmuv3 { ste }
        IommuHwptAmdGuest = iommu_hwpt_amd_guest { dte }
        IommuHwptAlloc = iommu_hwpt_alloc {
            size, flags, dev_id, pt_id, out_hwpt_id, __reserved, data_type, data_len,
            data_uptr, fault_id, __reserved2
        }
        IommuHwInfoVtd = iommu_hw_info_vtd { flags, __reserved, cap_reg, ecap_reg }
        IommuHwInfoArmSmmuv3 = iommu_hw_info_arm_smmuv3 { flags, __reserved, idr, iidr, aidr }
        IommuHwInfoTegra241Cmdqv = iommu_hw_info_tegra241_cmdqv {
            flags, version, log2vcmdqs, log2vsids, __reserved
        }
        IommuHwInfoAmd = iommu_hw_info_amd { efr, efr2 }
        IommuHwInfo = iommu_hw_info {
            size, flags, dev_id, data_len, data_uptr, out_data_type = __bindgen_anon_1,
            out_max_pasid_log2, __reserved, out_capabilities
        }
        IommuHwptSetDirtyTracking = iommu_hwpt_set_dirty_tracking {
            size, flags, hwpt_id, __reserved
        }
        IommuHwptGetDirtyBitmap = iommu_hwpt_get_dirty_bitmap {
            size, hwpt_id, flags, __reserved, iova, length, page_size, data
        }
        IommuHwptVtdS1Invalidate = iommu_hwpt_vtd_s1_invalidate { addr, npages, flags, __reserved }
        IommuViommuArmSmmuv3Invalidate = iommu_viommu_arm_smmuv3_invalidate { cmd }
        IommuHwptInvalidate = iommu_hwpt_invalidate {
            size, hwpt_id, data_uptr, data_type, entry_len, entry_num, __reserved
        }
        IommuHwptPgfault = iommu_hwpt_pgfault {
            flags, dev_id, pasid, grpid, perm, __reserved, addr, length, cookie
        }
        IommuHwptPageResponse = iommu_hwpt_page_response { cookie, code }
        IommuFaultAlloc = iommu_fault_alloc { size, flags, out_fault_id, out_fault_fd }
        IommuViommuTegra241Cmdqv = iommu_viommu_tegra241_cmdqv {
            out_vintf_mmap_offset, out_vintf_mmap_length
        }
        IommuViommuAlloc = iommu_viommu_alloc {
            size, flags, type_, dev_id, hwpt_id, out_viommu_id, data_len, __reserved, data_uptr
        }
        IommuVdeviceAlloc = iommu_vdevice_alloc { size, viommu_id, dev_id, out_vdevice_id, virt_id }
        IommuIoasChangeProcess = iommu_ioas_change_process { size, __reserved }
        IommufdVeventHeader = iommufd_vevent_header { flags, sequence }
        IommuVeventArmSmmuv3 = iommu_vevent_arm_smmuv3 { evt }
        IommuVeventTegra241Cmdqv = iommu_vevent_tegra241_cmdqv { lvcmdq_err_map }
        IommuVeventqAlloc = iommu_veventq_alloc {
            size, flags, viommu_id, type_, veventq_depth, out_veventq_id, out_veventq_fd,
            __reserved
        }
        IommuHwQueueAlloc = iommu_hw_queue_alloc {
            size, flags, viommu_id, type_, index, out_hw_queue_id, nesting_parent_iova, length
        }
    };
    // Every struct of the v7.1 header.
    assert_eq!(n, 37);
}

/// `OURS = bindings_name, ...`: equal values.
macro_rules! same_consts {
    ($($ours:ident = $theirs:ident),* $(,)?) => {{
        $(assert_eq!($ours as u64, b::$theirs as u64, stringify!($ours));)*
        [$(stringify!($ours)),*].len()
    }};
}

#[test]
fn constants_match_bindings() {
    let n = same_consts! {
        IOMMUFD_TYPE = IOMMUFD_TYPE,
        IOMMUFD_CMD_BASE = IOMMUFD_CMD_BASE,
        IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_DESTROY,
        IOMMUFD_CMD_IOAS_ALLOC = IOMMUFD_CMD_IOAS_ALLOC,
        IOMMUFD_CMD_IOAS_ALLOW_IOVAS = IOMMUFD_CMD_IOAS_ALLOW_IOVAS,
        IOMMUFD_CMD_IOAS_COPY = IOMMUFD_CMD_IOAS_COPY,
        IOMMUFD_CMD_IOAS_IOVA_RANGES = IOMMUFD_CMD_IOAS_IOVA_RANGES,
        IOMMUFD_CMD_IOAS_MAP = IOMMUFD_CMD_IOAS_MAP,
        IOMMUFD_CMD_IOAS_UNMAP = IOMMUFD_CMD_IOAS_UNMAP,
        IOMMUFD_CMD_OPTION = IOMMUFD_CMD_OPTION,
        IOMMUFD_CMD_VFIO_IOAS = IOMMUFD_CMD_VFIO_IOAS,
        IOMMUFD_CMD_HWPT_ALLOC = IOMMUFD_CMD_HWPT_ALLOC,
        IOMMUFD_CMD_GET_HW_INFO = IOMMUFD_CMD_GET_HW_INFO,
        IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING,
        IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP,
        IOMMUFD_CMD_HWPT_INVALIDATE = IOMMUFD_CMD_HWPT_INVALIDATE,
        IOMMUFD_CMD_FAULT_QUEUE_ALLOC = IOMMUFD_CMD_FAULT_QUEUE_ALLOC,
        IOMMUFD_CMD_IOAS_MAP_FILE = IOMMUFD_CMD_IOAS_MAP_FILE,
        IOMMUFD_CMD_VIOMMU_ALLOC = IOMMUFD_CMD_VIOMMU_ALLOC,
        IOMMUFD_CMD_VDEVICE_ALLOC = IOMMUFD_CMD_VDEVICE_ALLOC,
        IOMMUFD_CMD_IOAS_CHANGE_PROCESS = IOMMUFD_CMD_IOAS_CHANGE_PROCESS,
        IOMMUFD_CMD_VEVENTQ_ALLOC = IOMMUFD_CMD_VEVENTQ_ALLOC,
        IOMMUFD_CMD_HW_QUEUE_ALLOC = IOMMUFD_CMD_HW_QUEUE_ALLOC,
        IOMMU_IOAS_MAP_FIXED_IOVA = iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
        IOMMU_IOAS_MAP_WRITEABLE = iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
        IOMMU_IOAS_MAP_READABLE = iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE,
        IOMMU_OPTION_RLIMIT_MODE = iommufd_option_IOMMU_OPTION_RLIMIT_MODE,
        IOMMU_OPTION_HUGE_PAGES = iommufd_option_IOMMU_OPTION_HUGE_PAGES,
        IOMMU_OPTION_OP_SET = iommufd_option_ops_IOMMU_OPTION_OP_SET,
        IOMMU_OPTION_OP_GET = iommufd_option_ops_IOMMU_OPTION_OP_GET,
        IOMMU_VFIO_IOAS_GET = iommufd_vfio_ioas_op_IOMMU_VFIO_IOAS_GET,
        IOMMU_VFIO_IOAS_SET = iommufd_vfio_ioas_op_IOMMU_VFIO_IOAS_SET,
        IOMMU_VFIO_IOAS_CLEAR = iommufd_vfio_ioas_op_IOMMU_VFIO_IOAS_CLEAR,
        IOMMU_HWPT_ALLOC_NEST_PARENT = iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT,
        IOMMU_HWPT_ALLOC_DIRTY_TRACKING = iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
        IOMMU_HWPT_FAULT_ID_VALID = iommufd_hwpt_alloc_flags_IOMMU_HWPT_FAULT_ID_VALID,
        IOMMU_HWPT_ALLOC_PASID = iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_PASID,
        IOMMU_VTD_S1_SRE = iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_SRE,
        IOMMU_VTD_S1_EAFE = iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_EAFE,
        IOMMU_VTD_S1_WPE = iommu_hwpt_vtd_s1_flags_IOMMU_VTD_S1_WPE,
        IOMMU_HWPT_DATA_NONE = iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE,
        IOMMU_HWPT_DATA_VTD_S1 = iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1,
        IOMMU_HWPT_DATA_ARM_SMMUV3 = iommu_hwpt_data_type_IOMMU_HWPT_DATA_ARM_SMMUV3,
        IOMMU_HWPT_DATA_AMD_GUEST = iommu_hwpt_data_type_IOMMU_HWPT_DATA_AMD_GUEST,
        IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 =
            iommu_hw_info_vtd_flags_IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
        IOMMU_HW_INFO_TYPE_NONE = iommu_hw_info_type_IOMMU_HW_INFO_TYPE_NONE,
        IOMMU_HW_INFO_TYPE_DEFAULT = iommu_hw_info_type_IOMMU_HW_INFO_TYPE_DEFAULT,
        IOMMU_HW_INFO_TYPE_INTEL_VTD = iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD,
        IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
        IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = iommu_hw_info_type_IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV,
        IOMMU_HW_INFO_TYPE_AMD = iommu_hw_info_type_IOMMU_HW_INFO_TYPE_AMD,
        IOMMU_HW_CAP_DIRTY_TRACKING = iommufd_hw_capabilities_IOMMU_HW_CAP_DIRTY_TRACKING,
        IOMMU_HW_CAP_PCI_PASID_EXEC = iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_PASID_EXEC,
        IOMMU_HW_CAP_PCI_PASID_PRIV = iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_PASID_PRIV,
        IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED =
            iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED,
        IOMMU_HW_INFO_FLAG_INPUT_TYPE = iommufd_hw_info_flags_IOMMU_HW_INFO_FLAG_INPUT_TYPE,
        IOMMU_HWPT_DIRTY_TRACKING_ENABLE =
            iommufd_hwpt_set_dirty_tracking_flags_IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
        IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR =
            iommufd_hwpt_get_dirty_bitmap_flags_IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
        IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 =
            iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
        IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 =
            iommu_hwpt_invalidate_data_type_IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
        IOMMU_VTD_INV_FLAGS_LEAF = iommu_hwpt_vtd_s1_invalidate_flags_IOMMU_VTD_INV_FLAGS_LEAF,
        IOMMU_PGFAULT_FLAGS_PASID_VALID = iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_PASID_VALID,
        IOMMU_PGFAULT_FLAGS_LAST_PAGE = iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_LAST_PAGE,
        IOMMU_PGFAULT_PERM_READ = iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_READ,
        IOMMU_PGFAULT_PERM_WRITE = iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_WRITE,
        IOMMU_PGFAULT_PERM_EXEC = iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_EXEC,
        IOMMU_PGFAULT_PERM_PRIV = iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_PRIV,
        IOMMUFD_PAGE_RESP_SUCCESS = iommufd_page_response_code_IOMMUFD_PAGE_RESP_SUCCESS,
        IOMMUFD_PAGE_RESP_INVALID = iommufd_page_response_code_IOMMUFD_PAGE_RESP_INVALID,
        IOMMU_VIOMMU_TYPE_DEFAULT = iommu_viommu_type_IOMMU_VIOMMU_TYPE_DEFAULT,
        IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = iommu_viommu_type_IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
        IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = iommu_viommu_type_IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
        IOMMU_VEVENTQ_FLAG_LOST_EVENTS = iommu_veventq_flag_IOMMU_VEVENTQ_FLAG_LOST_EVENTS,
        IOMMU_VEVENTQ_TYPE_DEFAULT = iommu_veventq_type_IOMMU_VEVENTQ_TYPE_DEFAULT,
        IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
        IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = iommu_veventq_type_IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV,
        IOMMU_HW_QUEUE_TYPE_DEFAULT = iommu_hw_queue_type_IOMMU_HW_QUEUE_TYPE_DEFAULT,
        IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV = iommu_hw_queue_type_IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV,
    };
    // Type byte, IOMMUFD_CMD_BASE + 21 commands, and the 55 enumerators of the
    // v7.1 header.
    assert_eq!(n, 78);
}

#[test]
fn iommufd_request_numbers() {
    let golden = [
        (IOMMU_DESTROY, 0x3b80),
        (IOMMU_IOAS_ALLOC, 0x3b81),
        (IOMMU_IOAS_ALLOW_IOVAS, 0x3b82),
        (IOMMU_IOAS_COPY, 0x3b83),
        (IOMMU_IOAS_IOVA_RANGES, 0x3b84),
        (IOMMU_IOAS_MAP, 0x3b85),
        (IOMMU_IOAS_UNMAP, 0x3b86),
        (IOMMU_OPTION, 0x3b87),
        (IOMMU_VFIO_IOAS, 0x3b88),
        (IOMMU_HWPT_ALLOC, 0x3b89),
        (IOMMU_GET_HW_INFO, 0x3b8a),
        (IOMMU_HWPT_SET_DIRTY_TRACKING, 0x3b8b),
        (IOMMU_HWPT_GET_DIRTY_BITMAP, 0x3b8c),
        (IOMMU_HWPT_INVALIDATE, 0x3b8d),
        (IOMMU_FAULT_QUEUE_ALLOC, 0x3b8e),
        (IOMMU_IOAS_MAP_FILE, 0x3b8f),
        (IOMMU_VIOMMU_ALLOC, 0x3b90),
        (IOMMU_VDEVICE_ALLOC, 0x3b91),
        (IOMMU_IOAS_CHANGE_PROCESS, 0x3b92),
        (IOMMU_VEVENTQ_ALLOC, 0x3b93),
        (IOMMU_HW_QUEUE_ALLOC, 0x3b94),
        (test_cmd::IOMMU_TEST_CMD, 0x3ba0),
    ];
    for (i, (req, want)) in golden.iter().enumerate() {
        assert_eq!(*req, *want, "request #{i}");
    }
    // The 21 commands are consecutive from the base, in enum order.
    for (i, (req, _)) in golden[..21].iter().enumerate() {
        assert_eq!(*req, 0x3b00 | (b::IOMMUFD_CMD_BASE + i as u32));
    }
}

#[test]
fn vfio_request_numbers() {
    use vfio::*;
    let golden = [
        (VFIO_GET_API_VERSION, 0x3b64),
        (VFIO_CHECK_EXTENSION, 0x3b65),
        (VFIO_SET_IOMMU, 0x3b66),
        (VFIO_DEVICE_GET_INFO, 0x3b6b),
        (VFIO_DEVICE_GET_REGION_INFO, 0x3b6c),
        (VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d),
        (VFIO_DEVICE_SET_IRQS, 0x3b6e),
        (VFIO_DEVICE_RESET, 0x3b6f),
        (VFIO_IOMMU_GET_INFO, 0x3b70),
        (VFIO_IOMMU_MAP_DMA, 0x3b71),
        (VFIO_IOMMU_UNMAP_DMA, 0x3b72),
        (VFIO_IOMMU_ENABLE, 0x3b73),
        (VFIO_IOMMU_DISABLE, 0x3b74),
        (VFIO_IOMMU_DIRTY_PAGES, 0x3b75),
        (VFIO_DEVICE_BIND_IOMMUFD, 0x3b76),
        (VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77),
        (VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78),
    ];
    for (req, want) in golden {
        assert_eq!(req, want, "{req:#x}");
    }
}
