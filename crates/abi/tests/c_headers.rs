//! Hold the C headers to the Rust definitions.
//!
//! A generated C program prints `sizeof`, `offsetof` and constant values; it
//! is compiled against
//! 1. our headers in `include/` (every item must exist and match) plus the
//!    system `<linux/vfio.h>` for the VFIO items it has;
//! 2. the uAPI of Linux 6.12 and of Linux 7.3 (`include/uapi/linux/{iommufd,
//!    vfio}.h` and `iommufd_test.h`), for the items each version has; every
//!    name 7.3's iommufd.h and mock ABI declare must be one of our items;
//!
//! and both releases' iommufd selftests are compiled against our headers.
//! The trees come from `UIOMMUFD_KSRC` / `UIOMMUFD_KSRC_7_3`, from what
//! `scripts/conformance.sh` fetched under `build/conformance/`, or from
//! Debian's tarballs in `/usr/src`. Without a C compiler or a tree the
//! affected parts are skipped, unless `UIOMMUFD_REQUIRE_KSRC=1`.

use core::mem::{offset_of, size_of};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use uiommufd_abi::iommufd::*;
use uiommufd_abi::test_cmd::*;
use uiommufd_abi::vfio::*;

/// One value the probe prints: `sizeof(group)`, `offsetof(group, field)` or
/// the constant `group`, with the value Rust has for it.
struct Item {
    group: &'static str,
    field: Option<&'static str>,
    is_const: bool,
    ours: u64,
}

impl Item {
    fn c_expr(&self) -> String {
        match (self.is_const, self.field) {
            (true, _) => self.group.to_string(),
            (false, Some(f)) => format!("offsetof({}, {f})", self.group),
            (false, None) => format!("sizeof({})", self.group),
        }
    }
}

macro_rules! our_offset {
    ($t:ty, $f:ident) => {
        offset_of!($t, $f)
    };
    ($t:ty, $f:ident, $g:ident) => {
        offset_of!($t, $g)
    };
}

/// `"C type" => RustType { c_field, c_field = rust_field, ... }`.
macro_rules! layouts {
    ($v:ident: $($cty:literal => $ours:ty { $($cf:ident $(= $rf:ident)?),* $(,)? })*) => {$(
        $v.push(Item { group: $cty, field: None, is_const: false, ours: size_of::<$ours>() as u64 });
        $($v.push(Item {
            group: $cty,
            field: Some(stringify!($cf)),
            is_const: false,
            ours: our_offset!($ours, $cf $(, $rf)?) as u64,
        });)*
    )*};
}

/// Constants with the same name in C and Rust.
macro_rules! consts {
    ($v:ident: $($name:ident),* $(,)?) => {
        $($v.push(Item { group: stringify!($name), field: None, is_const: true, ours: $name as u64 });)*
    };
}

fn iommufd_items() -> Vec<Item> {
    let mut v = Vec::new();
    layouts! { v:
        "struct iommu_destroy" => IommuDestroy { size, id }
        "struct iommu_ioas_alloc" => IommuIoasAlloc { size, flags, out_ioas_id }
        "struct iommu_iova_range" => IommuIovaRange { start, last }
        "struct iommu_ioas_iova_ranges" => IommuIoasIovaRanges {
            size, ioas_id, num_iovas, __reserved, allowed_iovas, out_iova_alignment
        }
        "struct iommu_ioas_allow_iovas" => IommuIoasAllowIovas {
            size, ioas_id, num_iovas, __reserved, allowed_iovas
        }
        "struct iommu_ioas_map" => IommuIoasMap {
            size, flags, ioas_id, __reserved, user_va, length, iova
        }
        "struct iommu_ioas_noiommu_get_pa" => IommuIoasNoiommuGetPa {
            size, flags, ioas_id, __reserved, iova, length, out_phys
        }
        "struct iommu_ioas_map_file" => IommuIoasMapFile {
            size, flags, ioas_id, fd, start, length, iova
        }
        "struct iommu_ioas_copy" => IommuIoasCopy {
            size, flags, dst_ioas_id, src_ioas_id, length, dst_iova, src_iova
        }
        "struct iommu_ioas_unmap" => IommuIoasUnmap { size, ioas_id, iova, length }
        "struct iommu_option" => IommuOption { size, option_id, op, __reserved, object_id, val64 }
        "struct iommu_vfio_ioas" => IommuVfioIoas { size, ioas_id, op, __reserved }
        "struct iommu_hwpt_vtd_s1" => IommuHwptVtdS1 { flags, pgtbl_addr, addr_width, __reserved }
        "struct iommu_hwpt_arm_smmuv3" => IommuHwptArmSmmuv3 { ste }
        "struct iommu_hwpt_amd_guest" => IommuHwptAmdGuest { dte }
        "struct iommu_hwpt_alloc" => IommuHwptAlloc {
            size, flags, dev_id, pt_id, out_hwpt_id, __reserved, data_type, data_len,
            data_uptr, fault_id, __reserved2
        }
        "struct iommu_hw_info_vtd" => IommuHwInfoVtd { flags, __reserved, cap_reg, ecap_reg }
        "struct iommu_hw_info_arm_smmuv3" => IommuHwInfoArmSmmuv3 {
            flags, __reserved, idr, iidr, aidr
        }
        "struct iommu_hw_info_tegra241_cmdqv" => IommuHwInfoTegra241Cmdqv {
            flags, version, log2vcmdqs, log2vsids, __reserved
        }
        "struct iommu_hw_info_amd" => IommuHwInfoAmd { efr, efr2 }
        "struct iommu_hw_info" => IommuHwInfo {
            size, flags, dev_id, data_len, data_uptr, in_data_type = out_data_type,
            out_data_type, out_max_pasid_log2, __reserved, out_capabilities
        }
        "struct iommu_hwpt_set_dirty_tracking" => IommuHwptSetDirtyTracking {
            size, flags, hwpt_id, __reserved
        }
        "struct iommu_hwpt_get_dirty_bitmap" => IommuHwptGetDirtyBitmap {
            size, hwpt_id, flags, __reserved, iova, length, page_size, data
        }
        "struct iommu_hwpt_vtd_s1_invalidate" => IommuHwptVtdS1Invalidate {
            addr, npages, flags, __reserved
        }
        "struct iommu_viommu_arm_smmuv3_invalidate" => IommuViommuArmSmmuv3Invalidate { cmd }
        "struct iommu_hwpt_invalidate" => IommuHwptInvalidate {
            size, hwpt_id, data_uptr, data_type, entry_len, entry_num, __reserved
        }
        "struct iommu_hwpt_pgfault" => IommuHwptPgfault {
            flags, dev_id, pasid, grpid, perm, __reserved, addr, length, cookie
        }
        "struct iommu_hwpt_page_response" => IommuHwptPageResponse { cookie, code }
        "struct iommu_fault_alloc" => IommuFaultAlloc { size, flags, out_fault_id, out_fault_fd }
        "struct iommu_viommu_tegra241_cmdqv" => IommuViommuTegra241Cmdqv {
            out_vintf_mmap_offset, out_vintf_mmap_length
        }
        "struct iommu_viommu_alloc" => IommuViommuAlloc {
            size, flags, type = type_, dev_id, hwpt_id, out_viommu_id, data_len, __reserved,
            data_uptr
        }
        "struct iommu_vdevice_alloc" => IommuVdeviceAlloc {
            size, viommu_id, dev_id, out_vdevice_id, virt_id
        }
        "struct iommu_ioas_change_process" => IommuIoasChangeProcess { size, __reserved }
        "struct iommufd_vevent_header" => IommufdVeventHeader { flags, sequence }
        "struct iommu_vevent_arm_smmuv3" => IommuVeventArmSmmuv3 { evt }
        "struct iommu_vevent_tegra241_cmdqv" => IommuVeventTegra241Cmdqv { lvcmdq_err_map }
        "struct iommu_veventq_alloc" => IommuVeventqAlloc {
            size, flags, viommu_id, type = type_, veventq_depth, out_veventq_id,
            out_veventq_fd, __reserved
        }
        "struct iommu_hw_queue_alloc" => IommuHwQueueAlloc {
            size, flags, viommu_id, type = type_, index, out_hw_queue_id,
            nesting_parent_iova, length
        }
    }
    consts! { v:
        IOMMUFD_TYPE, IOMMUFD_CMD_BASE, IOMMUFD_CMD_DESTROY, IOMMUFD_CMD_IOAS_ALLOC,
        IOMMUFD_CMD_IOAS_ALLOW_IOVAS, IOMMUFD_CMD_IOAS_COPY, IOMMUFD_CMD_IOAS_IOVA_RANGES,
        IOMMUFD_CMD_IOAS_MAP, IOMMUFD_CMD_IOAS_UNMAP, IOMMUFD_CMD_OPTION, IOMMUFD_CMD_VFIO_IOAS,
        IOMMUFD_CMD_HWPT_ALLOC, IOMMUFD_CMD_GET_HW_INFO, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING,
        IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP, IOMMUFD_CMD_HWPT_INVALIDATE,
        IOMMUFD_CMD_FAULT_QUEUE_ALLOC, IOMMUFD_CMD_IOAS_MAP_FILE, IOMMUFD_CMD_VIOMMU_ALLOC,
        IOMMUFD_CMD_VDEVICE_ALLOC, IOMMUFD_CMD_IOAS_CHANGE_PROCESS, IOMMUFD_CMD_VEVENTQ_ALLOC,
        IOMMUFD_CMD_HW_QUEUE_ALLOC, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA,
        IOMMU_DESTROY, IOMMU_IOAS_ALLOC, IOMMU_IOAS_ALLOW_IOVAS, IOMMU_IOAS_COPY,
        IOMMU_IOAS_IOVA_RANGES, IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP, IOMMU_OPTION, IOMMU_VFIO_IOAS,
        IOMMU_HWPT_ALLOC, IOMMU_GET_HW_INFO, IOMMU_HWPT_SET_DIRTY_TRACKING,
        IOMMU_HWPT_GET_DIRTY_BITMAP, IOMMU_HWPT_INVALIDATE, IOMMU_FAULT_QUEUE_ALLOC,
        IOMMU_IOAS_MAP_FILE, IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC, IOMMU_IOAS_CHANGE_PROCESS,
        IOMMU_VEVENTQ_ALLOC, IOMMU_HW_QUEUE_ALLOC, IOMMU_IOAS_NOIOMMU_GET_PA,
        IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_READABLE,
        IOMMU_OPTION_RLIMIT_MODE, IOMMU_OPTION_HUGE_PAGES, IOMMU_OPTION_OP_SET,
        IOMMU_OPTION_OP_GET, IOMMU_VFIO_IOAS_GET, IOMMU_VFIO_IOAS_SET, IOMMU_VFIO_IOAS_CLEAR,
        IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HWPT_ALLOC_DIRTY_TRACKING, IOMMU_HWPT_FAULT_ID_VALID,
        IOMMU_HWPT_ALLOC_PASID, IOMMU_VTD_S1_SRE, IOMMU_VTD_S1_EAFE, IOMMU_VTD_S1_WPE,
        IOMMU_HWPT_DATA_NONE, IOMMU_HWPT_DATA_VTD_S1, IOMMU_HWPT_DATA_ARM_SMMUV3,
        IOMMU_HWPT_DATA_AMD_GUEST, IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
        IOMMU_HW_INFO_TYPE_NONE, IOMMU_HW_INFO_TYPE_DEFAULT, IOMMU_HW_INFO_TYPE_INTEL_VTD,
        IOMMU_HW_INFO_TYPE_ARM_SMMUV3, IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV, IOMMU_HW_INFO_TYPE_AMD,
        IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI,
        IOMMU_HW_CAP_DIRTY_TRACKING, IOMMU_HW_CAP_PCI_PASID_EXEC, IOMMU_HW_CAP_PCI_PASID_PRIV,
        IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED, IOMMU_HW_INFO_FLAG_INPUT_TYPE,
        IOMMU_HWPT_DIRTY_TRACKING_ENABLE, IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
        IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
        IOMMU_VTD_INV_FLAGS_LEAF, IOMMU_PGFAULT_FLAGS_PASID_VALID, IOMMU_PGFAULT_FLAGS_LAST_PAGE,
        IOMMU_PGFAULT_PERM_READ, IOMMU_PGFAULT_PERM_WRITE, IOMMU_PGFAULT_PERM_EXEC,
        IOMMU_PGFAULT_PERM_PRIV, IOMMUFD_PAGE_RESP_SUCCESS, IOMMUFD_PAGE_RESP_INVALID,
        IOMMU_VIOMMU_TYPE_DEFAULT, IOMMU_VIOMMU_TYPE_ARM_SMMUV3, IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
        IOMMU_VEVENTQ_FLAG_LOST_EVENTS, IOMMU_VEVENTQ_TYPE_DEFAULT, IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
        IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, IOMMU_HW_QUEUE_TYPE_DEFAULT,
        IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV,
    }
    v
}

/// Union members of `struct iommu_test_cmd` are named `TC(member)`; the
/// probe defines `TC` as the type of that member.
fn test_cmd_items() -> Vec<Item> {
    let mut v = Vec::new();
    layouts! { v:
        "struct iommu_test_cmd" => IommuTestCmd {
            size, op, id, __reserved, add_reserved = payload, last
        }
        "TC(add_reserved)" => TestAddReserved { start, length }
        "TC(mock_domain)" => TestMockDomain { out_stdev_id, out_hwpt_id, out_idev_id }
        "TC(mock_domain_flags)" => TestMockDomainFlags {
            out_stdev_id, out_hwpt_id, out_idev_id, dev_flags
        }
        "TC(mock_domain_replace)" => TestMockDomainReplace { pt_id }
        "TC(check_map)" => TestCheckMap { iova, length, uptr }
        "TC(check_refs)" => TestCheckRefs { length, uptr, refs }
        "TC(create_access)" => TestCreateAccess { out_access_fd, flags }
        "TC(destroy_access_pages)" => TestDestroyAccessPages { access_pages_id }
        "TC(access_pages)" => TestAccessPages { flags, out_access_pages_id, iova, length, uptr }
        "TC(access_rw)" => TestAccessRw { iova, length, uptr, flags }
        "TC(memory_limit)" => TestMemoryLimit { limit }
        "TC(access_replace_ioas)" => TestAccessReplaceIoas { ioas_id }
        "TC(dirty)" => TestDirty { flags, iova, length, page_size, uptr, out_nr_dirty }
        "TC(check_iotlb)" => TestCheckIotlb { id, iotlb }
        "TC(trigger_iopf)" => TestTriggerIopf { dev_id, pasid, grpid, perm, addr }
        "TC(check_dev_cache)" => TestCheckDevCache { id, cache }
        "TC(trigger_vevent)" => TestTriggerVevent { dev_id }
        "TC(pasid_attach)" => TestPasidAttach { pasid, pt_id }
        "TC(pasid_replace)" => TestPasidReplace { pasid, pt_id }
        "TC(pasid_detach)" => TestPasidDetach { pasid }
        "TC(pasid_check)" => TestPasidCheck { pasid, hwpt_id }
        "TC(dmabuf_get)" => TestDmabufGet { length, open_flags }
        "TC(dmabuf_revoke)" => TestDmabufRevoke { dmabuf_fd, revoked }
        "struct iommu_test_hw_info" => IommuTestHwInfo { flags, test_reg }
        "struct iommu_hwpt_selftest" => IommuHwptSelftest { iotlb, pagetable_type }
        "struct iommu_hwpt_invalidate_selftest" => IommuHwptInvalidateSelftest { flags, iotlb_id }
        "struct iommu_viommu_selftest" => IommuViommuSelftest {
            in_data, out_data, out_mmap_offset, out_mmap_length
        }
        "struct iommu_viommu_invalidate_selftest" => IommuViommuInvalidateSelftest {
            flags, vdev_id, cache_id
        }
        "struct iommu_viommu_event_selftest" => IommuViommuEventSelftest { virt_id }
    }
    consts! { v:
        IOMMU_TEST_CMD, IOMMU_TEST_OP_ADD_RESERVED, IOMMU_TEST_OP_MOCK_DOMAIN,
        IOMMU_TEST_OP_MD_CHECK_MAP, IOMMU_TEST_OP_MD_CHECK_REFS, IOMMU_TEST_OP_CREATE_ACCESS,
        IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, IOMMU_TEST_OP_ACCESS_PAGES, IOMMU_TEST_OP_ACCESS_RW,
        IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
        IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, IOMMU_TEST_OP_DIRTY,
        IOMMU_TEST_OP_MD_CHECK_IOTLB, IOMMU_TEST_OP_TRIGGER_IOPF, IOMMU_TEST_OP_DEV_CHECK_CACHE,
        IOMMU_TEST_OP_TRIGGER_VEVENT, IOMMU_TEST_OP_PASID_ATTACH, IOMMU_TEST_OP_PASID_REPLACE,
        IOMMU_TEST_OP_PASID_DETACH, IOMMU_TEST_OP_PASID_CHECK_HWPT, IOMMU_TEST_OP_DMABUF_GET,
        IOMMU_TEST_OP_DMABUF_REVOKE, MOCK_IOMMUPT_DEFAULT, MOCK_IOMMUPT_HUGE,
        MOCK_APERTURE_START, MOCK_APERTURE_LAST, MOCK_PAGE_SIZE, MOCK_HUGE_PAGE_SIZE,
        MOCK_FLAGS_ACCESS_WRITE, MOCK_FLAGS_ACCESS_SYZ, MOCK_ACCESS_RW_WRITE,
        MOCK_ACCESS_RW_SLOW_PATH, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES,
        MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_HUGE_IOVA, MOCK_FLAGS_DEVICE_PASID,
        MOCK_NESTED_DOMAIN_IOTLB_ID_MAX, MOCK_NESTED_DOMAIN_IOTLB_NUM, MOCK_DEV_CACHE_ID_MAX,
        MOCK_DEV_CACHE_NUM, IOMMU_TEST_PASID_RESERVED, MOCK_PASID_WIDTH,
        IOMMU_HW_INFO_TYPE_SELFTEST, IOMMU_HW_INFO_SELFTEST_REGVAL, IOMMU_HWPT_DATA_SELFTEST,
        IOMMU_TEST_IOTLB_DEFAULT, IOMMU_TEST_DEV_CACHE_DEFAULT,
        IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID,
        IOMMU_TEST_INVALIDATE_FLAG_ALL, IOMMU_VIOMMU_TYPE_SELFTEST,
        IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID,
        IOMMU_VEVENTQ_TYPE_SELFTEST, IOMMU_HW_QUEUE_TYPE_SELFTEST, IOMMU_TEST_HW_QUEUE_MAX,
    }
    v
}

fn vfio_items() -> Vec<Item> {
    let mut v = Vec::new();
    layouts! { v:
        "struct vfio_info_cap_header" => VfioInfoCapHeader { id, version, next }
        "struct vfio_device_info" => VfioDeviceInfo {
            argsz, flags, num_regions, num_irqs, cap_offset, pad
        }
        "struct vfio_region_info" => VfioRegionInfo {
            argsz, flags, index, cap_offset, size, offset
        }
        "struct vfio_region_sparse_mmap_area" => VfioRegionSparseMmapArea { offset, size }
        "struct vfio_region_info_cap_sparse_mmap" => VfioRegionInfoCapSparseMmap {
            header, nr_areas, reserved
        }
        "struct vfio_region_info_cap_type" => VfioRegionInfoCapType {
            header, type = type_, subtype
        }
        "struct vfio_irq_info" => VfioIrqInfo { argsz, flags, index, count }
        "struct vfio_irq_set" => VfioIrqSet { argsz, flags, index, start, count }
        "struct vfio_iommu_type1_info" => VfioIommuType1Info {
            argsz, flags, iova_pgsizes, cap_offset, pad
        }
        "struct vfio_iova_range" => VfioIovaRange { start, end }
        "struct vfio_iommu_type1_info_cap_iova_range" => VfioIommuType1InfoCapIovaRange {
            header, nr_iovas, reserved
        }
        "struct vfio_iommu_type1_info_cap_migration" => VfioIommuType1InfoCapMigration {
            header, flags, pgsize_bitmap, max_dirty_bitmap_size
        }
        "struct vfio_iommu_type1_info_dma_avail" => VfioIommuType1InfoDmaAvail { header, avail }
        "struct vfio_iommu_type1_dma_map" => VfioIommuType1DmaMap { argsz, flags, vaddr, iova, size }
        "struct vfio_bitmap" => VfioBitmap { pgsize, size, data }
        "struct vfio_iommu_type1_dma_unmap" => VfioIommuType1DmaUnmap { argsz, flags, iova, size }
        "struct vfio_iommu_type1_dirty_bitmap" => VfioIommuType1DirtyBitmap { argsz, flags }
        "struct vfio_iommu_type1_dirty_bitmap_get" => VfioIommuType1DirtyBitmapGet {
            iova, size, bitmap
        }
        "struct vfio_device_bind_iommufd" => VfioDeviceBindIommufd {
            argsz, flags, iommufd, out_devid, token_uuid_ptr
        }
        "struct vfio_device_attach_iommufd_pt" => VfioDeviceAttachIommufdPt {
            argsz, flags, pt_id, pasid
        }
        "struct vfio_device_detach_iommufd_pt" => VfioDeviceDetachIommufdPt { argsz, flags, pasid }
        "struct vfio_device_feature" => VfioDeviceFeature { argsz, flags }
        "struct vfio_region_dma_range" => VfioRegionDmaRange { offset, length }
        "struct vfio_device_feature_dma_buf" => VfioDeviceFeatureDmaBuf {
            region_index, open_flags, flags, nr_ranges
        }
    }
    consts! { v:
        VFIO_TYPE, VFIO_BASE, VFIO_API_VERSION, VFIO_TYPE1_IOMMU, VFIO_SPAPR_TCE_IOMMU,
        VFIO_TYPE1v2_IOMMU, VFIO_DMA_CC_IOMMU, VFIO_EEH, VFIO_TYPE1_NESTING_IOMMU,
        VFIO_SPAPR_TCE_v2_IOMMU, VFIO_NOIOMMU_IOMMU, VFIO_UNMAP_ALL, VFIO_UPDATE_VADDR,
        VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU, VFIO_DEVICE_GET_INFO,
        VFIO_DEVICE_GET_REGION_INFO, VFIO_DEVICE_GET_IRQ_INFO, VFIO_DEVICE_SET_IRQS,
        VFIO_DEVICE_RESET, VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA,
        VFIO_IOMMU_ENABLE, VFIO_IOMMU_DISABLE, VFIO_IOMMU_DIRTY_PAGES, VFIO_DEVICE_BIND_IOMMUFD,
        VFIO_DEVICE_ATTACH_IOMMUFD_PT, VFIO_DEVICE_DETACH_IOMMUFD_PT,
        VFIO_DEVICE_FLAGS_RESET, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_PLATFORM,
        VFIO_DEVICE_FLAGS_AMBA, VFIO_DEVICE_FLAGS_CCW, VFIO_DEVICE_FLAGS_AP,
        VFIO_DEVICE_FLAGS_FSL_MC, VFIO_DEVICE_FLAGS_CAPS, VFIO_DEVICE_FLAGS_CDX,
        VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, VFIO_REGION_INFO_FLAG_MMAP,
        VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE,
        VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
        VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_DATA_NONE,
        VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_ACTION_MASK,
        VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_TYPE_MASK,
        VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR1_REGION_INDEX,
        VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_BAR3_REGION_INDEX, VFIO_PCI_BAR4_REGION_INDEX,
        VFIO_PCI_BAR5_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
        VFIO_PCI_VGA_REGION_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_PCI_INTX_IRQ_INDEX,
        VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_ERR_IRQ_INDEX,
        VFIO_PCI_REQ_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_INFO_CAPS,
        VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
        VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
        VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_DMA_UNMAP_FLAG_ALL,
        VFIO_DMA_UNMAP_FLAG_VADDR, VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
        VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
        VFIO_DEVICE_BIND_FLAG_TOKEN, VFIO_DEVICE_ATTACH_PASID, VFIO_DEVICE_DETACH_PASID,
        VFIO_DEVICE_FEATURE, VFIO_DEVICE_FEATURE_MASK, VFIO_DEVICE_FEATURE_GET,
        VFIO_DEVICE_FEATURE_SET, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_DMA_BUF,
    }
    v
}

// ---------------------------------------------------------------------------
// Which items a reference header has.

/// `text` with C comments blanked out, so names in prose do not count.
fn strip_comments(text: &str) -> String {
    let (mut out, mut rest) = (String::new(), text);
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        out.push(' ');
        rest = rest[i..].find("*/").map_or("", |j| &rest[i + j + 2..]);
    }
    out.push_str(rest);
    out.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn has_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word)
        .any(|(i, _)| !text[..i].ends_with(is_ident) && !text[i + word.len()..].starts_with(is_ident))
}

/// Brace-matched body of `struct name { ... }` in `text`.
fn struct_body<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("struct {name} {{"))?;
    let open = start + text[start..].find('{')?;
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        depth += match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        };
        if depth == 0 {
            return Some(&text[open..open + i]);
        }
    }
    None
}

/// The items `text` (comment-stripped C) defines. A size is kept only if
/// the header has every field we list for that struct.
fn present_in<'a>(items: &'a [Item], text: &str) -> Vec<&'a Item> {
    let field_present = |it: &Item| -> bool {
        if it.is_const {
            return has_word(text, it.group);
        }
        if let Some(member) = it.group.strip_prefix("TC(").and_then(|g| g.strip_suffix(')')) {
            return text.contains(&format!("}} {member};"));
        }
        let name = it.group.trim_start_matches("struct ");
        match (struct_body(text, name), it.field) {
            (Some(body), Some(f)) => has_word(body, f),
            (body, _) => body.is_some(),
        }
    };
    items
        .iter()
        .filter(|it| {
            if it.is_const || it.field.is_some() {
                return field_present(it);
            }
            field_present(it) && items.iter().filter(|o| o.group == it.group && o.field.is_some()).all(field_present)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Compiling and running the probe.

fn have_cc() -> bool {
    let ok = Command::new("cc").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("c_headers: no C compiler (`cc`), skipping");
    }
    ok
}

/// A per-process temporary directory, removed when dropped (also on panic).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("uiommufd-abi-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn repo_include() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

/// Compile `includes` + a printf per item with `-I dirs`, run it, and return
/// the number of items checked; panics listing every mismatch.
fn probe(dir: &Path, includes: &str, inc_dirs: &[&Path], items: &[&Item]) -> usize {
    let mut src = format!(
        "#include <stdio.h>\n#include <stddef.h>\n{includes}\n\
         #define TC(m) __typeof__(((struct iommu_test_cmd *)0)->m)\n\
         int main(void)\n{{\n"
    );
    for it in items {
        src += &format!("\tprintf(\"%llu\\n\", (unsigned long long)({}));\n", it.c_expr());
    }
    src += "\treturn 0;\n}\n";
    let (c, exe) = (dir.join("probe.c"), dir.join("probe"));
    fs::write(&c, &src).unwrap();
    let mut cc = Command::new("cc");
    cc.args(["-std=gnu11", "-Wall", "-Werror", "-o"]).arg(&exe).arg(&c);
    for d in inc_dirs {
        cc.arg("-I").arg(d);
    }
    let out = cc.output().unwrap();
    assert!(out.status.success(), "probe failed to build:\n{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let values: Vec<u64> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), items.len());
    let bad: Vec<String> = items
        .iter()
        .zip(&values)
        .filter(|(it, c)| it.ours != **c)
        .map(|(it, c)| format!("{}: C {c} != Rust {}", it.c_expr(), it.ours))
        .collect();
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
    items.len()
}

#[test]
fn our_headers_match_rust() {
    if !have_cc() {
        return;
    }
    let scratch = Scratch::new("ours");
    let dir = &scratch.0;
    let include = repo_include();
    let ours: Vec<Item> = iommufd_items().into_iter().chain(test_cmd_items()).collect();
    let n = probe(
        dir,
        "#include <linux/iommufd.h>\n#include <uiommufd/iommufd_test.h>",
        &[&include],
        &ours.iter().collect::<Vec<_>>(),
    );
    eprintln!("c_headers: {n} items of include/ match");

    // We ship no vfio.h; hold the Rust VFIO items to the system one.
    let sys = Path::new("/usr/include/linux/vfio.h");
    if let Ok(text) = fs::read_to_string(sys) {
        let vfio = vfio_items();
        let have = present_in(&vfio, &strip_comments(&text));
        let n = probe(dir, "#include <linux/vfio.h>", &[], &have);
        eprintln!("c_headers: {n} of {} VFIO items match {}", vfio.len(), sys.display());
    }
}

/// Files taken from the kernel tree (paths relative to its root).
const KFILES: &[&str] = &[
    "include/uapi/linux/iommufd.h",
    "include/uapi/linux/vfio.h",
    "drivers/iommu/iommufd/iommufd_test.h",
    "tools/testing/selftests/iommu/iommufd.c",
    "tools/testing/selftests/iommu/iommufd_fail_nth.c",
    "tools/testing/selftests/iommu/iommufd_utils.h",
    "tools/testing/selftests/kselftest.h",
    "tools/testing/selftests/kselftest_harness.h",
];

/// A kernel release whose uAPI we check against.
struct Release {
    name: &'static str,
    /// Environment variable naming an unpacked tree of it.
    env: &'static str,
    /// Debian's source tarball of it.
    tarball: &'static str,
    /// The tree `scripts/conformance.sh` unpacks (relative to the repo).
    fetched: &'static str,
    /// Extra compiler arguments its selftests need.
    selftest_flags: &'static [&'static str],
}

const LINUX_6_12: Release = Release {
    name: "6.12",
    env: "UIOMMUFD_KSRC",
    tarball: "/usr/src/linux-source-6.12.tar.xz",
    fetched: "build/conformance/6.12/src",
    selftest_flags: &[],
};

const LINUX_7_3: Release = Release {
    name: "7.3",
    env: "UIOMMUFD_KSRC_7_3",
    tarball: "/usr/src/linux-source-7.3.tar.xz",
    fetched: "build/conformance/7.3/src",
    // Its harness is included as "kselftest_harness.h" and uses
    // <sys/capability.h> and MFD_HUGETLB.
    selftest_flags: &["-I", ".."],
};

/// Whether a missing kernel tree fails the test (scripts/test.sh sets
/// `UIOMMUFD_REQUIRE_KSRC=1` after fetching both) or only skips it.
fn require_ksrc() -> bool {
    std::env::var_os("UIOMMUFD_REQUIRE_KSRC").is_some_and(|v| v == "1")
}

/// Root of a tree of `rel`: its environment variable, the tree the
/// conformance script fetched, or the needed files unpacked from the Debian
/// tarball into `dir`.
fn kernel_tree(rel: &Release, dir: &Path) -> Option<PathBuf> {
    if let Some(root) = std::env::var_os(rel.env) {
        return Some(PathBuf::from(root));
    }
    let fetched = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel.fetched);
    if KFILES.iter().all(|f| fetched.join(f).is_file()) {
        return Some(fetched);
    }
    let tarball = Path::new(rel.tarball);
    if !tarball.exists() {
        let why = format!(
            "Linux {}: no {}, no {} and {} unset (scripts/conformance.sh --fetch-only fetches it)",
            rel.name,
            fetched.display(),
            tarball.display(),
            rel.env
        );
        assert!(!require_ksrc(), "c_headers: {why}");
        eprintln!("c_headers: {why}, skipping");
        return None;
    }
    fs::create_dir_all(dir).unwrap();
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(tarball)
        .arg("-C")
        .arg(dir)
        .arg("--wildcards")
        .args(KFILES.iter().map(|f| format!("*/{f}")))
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    let root = fs::read_dir(dir).unwrap().next().unwrap().unwrap().path();
    Some(root)
}

fn copy(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

/// The names `text` (comment-stripped C) declares: `#define`d macros,
/// enumerators and struct tags.
fn declared_names(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut names = Vec::new();
    let mut in_enum = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#define") {
            names.push(ident(rest.trim_start()));
        } else if line.starts_with("enum") && line.ends_with('{') {
            in_enum = true;
        } else if in_enum && line.starts_with('}') {
            in_enum = false;
        } else if in_enum && line.starts_with(|c: char| c.is_ascii_uppercase()) {
            names.push(ident(line));
        } else if let Some(tag) = line.strip_prefix("struct ").filter(|l| l.ends_with('{')).map(ident) {
            // Anonymous members of unions have no tag.
            if !tag.is_empty() {
                names.push(format!("struct {tag}"));
            }
        }
    }
    names.retain(|n| !n.is_empty() && !n.starts_with('_'));
    names
}

/// Check every item of ours that `rel`'s headers have against them with a
/// compiled probe, that the headers declare nothing we lack (`complete`),
/// and that `rel`'s selftests build against our headers.
fn check_release(rel: &Release, complete: bool) {
    if !have_cc() {
        return;
    }
    let scratch = Scratch::new(&format!("kernel-{}", rel.name));
    let dir = &scratch.0;
    let Some(root) = kernel_tree(rel, &dir.join("src")) else {
        return;
    };
    let read = |rel: &str| strip_comments(&fs::read_to_string(root.join(rel)).unwrap());

    // The kernel's uAPI headers alone under <linux/...>, so the rest of
    // <linux/...> still comes from the system.
    let kinc = dir.join("kinc");
    copy(&root.join(KFILES[0]), &kinc.join("linux/iommufd.h"));
    copy(&root.join(KFILES[1]), &kinc.join("linux/vfio.h"));
    copy(&root.join(KFILES[2]), &kinc.join("ktest/iommufd_test.h"));

    let (iommufd, test, vfio) = (iommufd_items(), test_cmd_items(), vfio_items());
    let mut have = present_in(&iommufd, &read(KFILES[0]));
    have.extend(present_in(&test, &read(KFILES[2])));
    have.extend(present_in(&vfio, &read(KFILES[1])));
    let n = probe(
        dir,
        // Raw (not installed) uAPI headers still carry the kernel's __user
        // and __counted_by annotations.
        "#define __user\n#define __counted_by(n)\n#include <linux/iommufd.h>\n#include <linux/vfio.h>\n\
         #include <ktest/iommufd_test.h>",
        &[&kinc],
        &have,
    );
    let total = iommufd.len() + test.len() + vfio.len();
    eprintln!("c_headers: {n} of {total} items exist in Linux {} and match", rel.name);
    assert!(n > 250, "suspiciously few {} items matched: {n}", rel.name);

    if complete {
        // Every name of its iommufd.h and mock ABI is one of our items.
        let ours: Vec<&str> = iommufd.iter().chain(&test).map(|it| it.group).collect();
        let mut missing = Vec::new();
        for f in [KFILES[0], KFILES[2]] {
            for name in declared_names(&read(f)) {
                let covered = ours.contains(&name.as_str())
                    // Guards, the ioctl type and the struct the TC() items cover.
                    || name.ends_with("_H")
                    || name == "IOMMU_TEST_CMD" && ours.contains(&"IOMMU_TEST_OP_ADD_RESERVED")
                    || name.starts_with("struct iommu_") && ours.iter().any(|o| o.starts_with("TC("));
                if !covered {
                    missing.push(format!("{f}: {name}"));
                }
            }
        }
        assert!(missing.is_empty(), "Linux {} declares what we do not check:\n{}", rel.name, missing.join("\n"));
    }

    // Its selftests must build against our headers; they include the mock
    // ABI by a relative path, where our copy goes.
    let st = dir.join("st");
    for f in &KFILES[3..] {
        copy(&root.join(f), &st.join(f));
    }
    copy(&repo_include().join("uiommufd/iommufd_test.h"), &st.join(KFILES[2]));
    let sdir = st.join("tools/testing/selftests/iommu");
    let needs_libcap = read(KFILES[3]).contains("sys/capability.h");
    if needs_libcap && !Path::new("/usr/include/sys/capability.h").exists() {
        assert!(!require_ksrc(), "c_headers: Linux {}'s selftests need libcap-dev", rel.name);
        eprintln!("c_headers: no <sys/capability.h> (libcap-dev), not building Linux {}'s selftests", rel.name);
        return;
    }
    for f in ["iommufd.c", "iommufd_fail_nth.c"] {
        let out = Command::new("cc")
            .args(["-fsyntax-only", "-std=gnu11", "-D_GNU_SOURCE", "-Wall", "-Wno-unused-function"])
            .arg("-I")
            .arg(repo_include())
            .args(rel.selftest_flags)
            .arg(f)
            .current_dir(&sdir)
            .output()
            .unwrap();
        assert!(out.status.success(), "Linux {} {f}:\n{}", rel.name, String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn kernel_6_12_headers_and_selftests() {
    check_release(&LINUX_6_12, false);
}

#[test]
fn kernel_7_3_headers_and_selftests() {
    check_release(&LINUX_7_3, true);
}
