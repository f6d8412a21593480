//! The Linux release whose iommufd uiommufd emulates, and every way the
//! releases we emulate differ, in one table a reader can review.
//!
//! uiommufd answers as mainline Linux 7.3 does unless told otherwise
//! (`uiommufd run --kernel 6.12`, `UIOMMUFD_KERNEL=6.12`): a VMM developer
//! wants to test against the kernel their users run, and suites written for
//! one release rely on its answers. Each context ([`crate::Iommufd`]) holds
//! the release it was opened under; code that depends on the release reads
//! a named field of [`KernelRelease`] here, never a version number, so this
//! file is the complete list of differences. Every field says what the
//! kernel source does and where (paths relative to `drivers/iommu/iommufd/`
//! unless stated).
//!
//! What is not listed behaves the same in both releases: 6.12's iommufd is
//! a subset of 7.3's apart from the fields below.

use std::sync::OnceLock;

use uiommufd_abi as abi;
use uiommufd_abi::test_cmd as t;
use uiommufd_abi::Errno;
use uiommufd_hw::mock::{MockPageTable, MockProfile};

/// One release's iommufd.
#[derive(Debug, PartialEq, Eq)]
pub struct KernelRelease {
    /// `"7.3"`, as `--kernel` takes it.
    pub name: &'static str,
    /// The highest `IOMMUFD_CMD_*` of `iommufd_ioctl_ops[]` (main.c); the
    /// table is dense up to it, every later number is `ENOTTY`. 6.12 ends at
    /// `IOMMU_FAULT_QUEUE_ALLOC`: no MAP_FILE, vIOMMU, vDEVICE,
    /// CHANGE_PROCESS, vEVENTQ, HW queue or NOIOMMU_GET_PA.
    pub last_command: u32,
    /// The highest `IOMMU_TEST_OP_*` `iommufd_test()` (selftest.c) knows;
    /// later ops are `EOPNOTSUPP`.
    pub last_test_op: u32,
    /// `MOCK_FLAGS_DEVICE_*` that `iommufd_test_mock_domain()` accepts;
    /// any other bit is `EINVAL`. 6.12 has `HUGE_IOVA`; 7.3 dropped it (its
    /// mock page table takes `MOCK_IOMMUPT_HUGE` at HWPT allocation instead)
    /// and added `PASID`.
    pub mock_device_flags: u32,
    /// The selftest mock driver (selftest.c) and what differs in it.
    pub mock: MockProfile,
    /// `IOMMU_HWPT_ALLOC_*` flags `iommufd_hwpt_paging_alloc()` accepts
    /// (hw_pagetable.c); others are `EOPNOTSUPP`. 6.12 takes a fault queue
    /// only on nested HWPTs; 7.3 adds `FAULT_ID_VALID` and `PASID` here.
    pub hwpt_paging_flags: u32,
    /// The flags `iommufd_hwpt_nested_alloc()` accepts (others are
    /// `EOPNOTSUPP`): 7.3 adds `PASID`.
    pub hwpt_nested_flags: u32,
    /// `IOMMU_HW_INFO_FLAG_*` `iommufd_get_hw_info()` (device.c) accepts;
    /// others are `EOPNOTSUPP`. 6.12 has none (`flags` must be 0).
    pub hw_info_flags: u32,
    /// `IOMMU_GET_HW_INFO` reports `IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED` for
    /// a device whose IOMMU driver does not report
    /// `IOMMU_CAP_PCI_ATS_SUPPORTED` for it (7.3's `iommufd_get_hw_info()`,
    /// device.c; the mock never does). 6.12 has no such bit.
    pub hw_info_ats_not_supported: bool,
    /// `IOMMU_HWPT_INVALIDATE` of an object that is neither a nested HWPT
    /// nor a vIOMMU: 6.12 looks the ID up as a nested HWPT (`ENOENT`); 7.3
    /// looks up any object and refuses the type (`EINVAL`).
    pub invalidate_other_object: Errno,
    /// `IOMMU_TEST_OP_MD_CHECK_MAP` (`iommufd_test_md_check_pa`): 6.12
    /// checks alignment to `MOCK_IO_PAGE_SIZE` before it looks the HWPT up
    /// (a bad ID with a misaligned range is `EINVAL`); 7.3 looks the HWPT up
    /// first (`ENOENT`) and aligns to the domain's smallest page size. Both
    /// answer `EINVAL` for an IOVA the domain does not map.
    pub md_check_map_lookup_first: bool,
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP` once its arguments are checked: 6.12
    /// answers the walk's error (`EINVAL` at a hole in the areas, the
    /// domain's error with tracking off); 7.3 answers 0 whatever happened,
    /// because `iommu_read_and_clear_dirty()` (io_pagetable.c) drops the
    /// result of `iova_bitmap_for_each()`. In both, bits harvested before a
    /// failure stay written, and a bitmap page that cannot be pinned loses
    /// its bits silently (oracle).
    pub dirty_bitmap_reports_errors: bool,
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` / `DETACH` flags
    /// (drivers/vfio/device_cdev.c): 7.3 takes `VFIO_DEVICE_ATTACH_PASID` /
    /// `VFIO_DEVICE_DETACH_PASID`; 6.12 requires 0 (`EINVAL`).
    pub vfio_pasid_flags: bool,
    /// `VFIO_DEVICE_BIND_IOMMUFD` flags (device_cdev.c): 7.3 takes
    /// `VFIO_DEVICE_BIND_FLAG_TOKEN`; 6.12 requires 0 (`EINVAL`).
    pub vfio_bind_flags: u32,
}

/// Linux 7.3 (mainline), the default.
pub static LINUX_7_3: KernelRelease = KernelRelease {
    name: "7.3",
    last_command: abi::IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA,
    last_test_op: t::IOMMU_TEST_OP_DMABUF_REVOKE,
    mock_device_flags: t::MOCK_FLAGS_DEVICE_NO_DIRTY | t::MOCK_FLAGS_DEVICE_PASID,
    mock: MockProfile::MAINLINE,
    hwpt_paging_flags: abi::IOMMU_HWPT_ALLOC_NEST_PARENT
        | abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING
        | abi::IOMMU_HWPT_FAULT_ID_VALID
        | abi::IOMMU_HWPT_ALLOC_PASID,
    hwpt_nested_flags: abi::IOMMU_HWPT_FAULT_ID_VALID | abi::IOMMU_HWPT_ALLOC_PASID,
    hw_info_flags: abi::IOMMU_HW_INFO_FLAG_INPUT_TYPE,
    hw_info_ats_not_supported: true,
    invalidate_other_object: Errno::EINVAL,
    md_check_map_lookup_first: true,
    dirty_bitmap_reports_errors: false,
    vfio_pasid_flags: true,
    vfio_bind_flags: uiommufd_abi::vfio::VFIO_DEVICE_BIND_FLAG_TOKEN,
};

/// Linux 6.12 (the LTS; Debian 12's backports and Debian 13).
pub static LINUX_6_12: KernelRelease = KernelRelease {
    name: "6.12",
    last_command: abi::IOMMUFD_CMD_FAULT_QUEUE_ALLOC,
    last_test_op: t::IOMMU_TEST_OP_TRIGGER_IOPF,
    mock_device_flags: t::MOCK_FLAGS_DEVICE_NO_DIRTY | t::MOCK_FLAGS_DEVICE_HUGE_IOVA,
    mock: MockProfile { hwpt_selftest_size: 4, page_table: MockPageTable::Xarray },
    hwpt_paging_flags: abi::IOMMU_HWPT_ALLOC_NEST_PARENT | abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    hwpt_nested_flags: abi::IOMMU_HWPT_FAULT_ID_VALID,
    hw_info_flags: 0,
    hw_info_ats_not_supported: false,
    invalidate_other_object: Errno::ENOENT,
    md_check_map_lookup_first: false,
    dirty_bitmap_reports_errors: true,
    vfio_pasid_flags: false,
    vfio_bind_flags: 0,
};

/// Every release we emulate, newest first.
pub static RELEASES: [&KernelRelease; 2] = [&LINUX_7_3, &LINUX_6_12];

/// The environment variable naming the release (`uiommufd run --kernel`
/// sets it).
pub const ENV: &str = "UIOMMUFD_KERNEL";

impl KernelRelease {
    /// The release called `name` (`"6.12"`, `"7.3"`).
    pub fn by_name(name: &str) -> Option<&'static KernelRelease> {
        RELEASES.iter().copied().find(|r| r.name == name)
    }

    /// The release `UIOMMUFD_KERNEL` names (unset or empty: the default),
    /// or an error message naming the choices.
    pub fn from_env() -> Result<&'static KernelRelease, String> {
        match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => Self::by_name(&v).ok_or_else(|| {
                let names: Vec<&str> = RELEASES.iter().map(|r| r.name).collect();
                format!("{ENV}={v}: not a release we emulate (one of {})", names.join(", "))
            }),
            _ => Ok(&LINUX_7_3),
        }
    }

    /// The release new contexts of this process get: `UIOMMUFD_KERNEL`, read
    /// once (`uiommufd run` has validated it; a bad value falls back to the
    /// default).
    pub fn process_default() -> &'static KernelRelease {
        static DEFAULT: OnceLock<&'static KernelRelease> = OnceLock::new();
        DEFAULT.get_or_init(|| Self::from_env().unwrap_or(&LINUX_7_3))
    }

    /// Whether `iommufd_ioctl_ops[]` has command number `nr`.
    pub fn has_command(&self, nr: u32) -> bool {
        (abi::IOMMUFD_CMD_BASE..=self.last_command).contains(&nr)
    }

    /// Whether `iommufd_test()` knows selftest op `op`.
    pub fn has_test_op(&self, op: u32) -> bool {
        (1..=self.last_test_op).contains(&op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_found_by_name() {
        assert_eq!(KernelRelease::by_name("7.3"), Some(&LINUX_7_3));
        assert_eq!(KernelRelease::by_name("6.12"), Some(&LINUX_6_12));
        assert_eq!(KernelRelease::by_name("6.1"), None);
    }

    #[test]
    fn command_ranges() {
        // 6.12's table ends at FAULT_QUEUE_ALLOC (0x8e); 7.3's at
        // NOIOMMU_GET_PA (0x95).
        assert!(LINUX_6_12.has_command(0x8e) && !LINUX_6_12.has_command(0x8f));
        assert!(LINUX_7_3.has_command(0x95) && !LINUX_7_3.has_command(0x96));
        assert!(!LINUX_7_3.has_command(0x7f));
        assert!(LINUX_6_12.has_test_op(t::IOMMU_TEST_OP_TRIGGER_IOPF));
        assert!(!LINUX_6_12.has_test_op(t::IOMMU_TEST_OP_DEV_CHECK_CACHE));
        assert!(!LINUX_7_3.has_test_op(0));
    }
}
