//! The one dispatch table: `{ number, struct size, minimum size, handler }`
//! per command, indexed by `_IOC_NR(cmd) - IOMMUFD_CMD_BASE`
//! (the kernel's `iommufd_ioctl_ops[]`).
//!
//! `min_size` is the offset just past the command's last mandatory field, so
//! a user built against an older header (shorter struct) still works.

use core::mem::{offset_of, size_of};

use uiommufd_abi as abi;
use uiommufd_abi::test_cmd::IommuTestCmd;
use uiommufd_core::Result;

use crate::handlers as h;
use crate::selftest;
use crate::ucmd::Ucmd;

/// One command of the table.
pub struct Op {
    /// The full ioctl request number; anything else with the same `nr` is
    /// `ENOTTY`.
    pub ioctl: u32,
    /// The C macro name, for traces and errors.
    pub name: &'static str,
    /// `sizeof` the struct this version knows.
    pub size: usize,
    /// `offsetofend` of the last mandatory field.
    pub min_size: usize,
    pub execute: fn(&mut Ucmd) -> Result<i32>,
}

/// `size_of` a field, named through a non-capturing accessor.
const fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! op {
    ($ioctl:ident, $ty:ty, $last:ident, $exec:expr) => {
        Some(Op {
            ioctl: abi::$ioctl,
            name: stringify!($ioctl),
            size: size_of::<$ty>(),
            min_size: offset_of!($ty, $last) + field_size(|c: &$ty| &c.$last),
            execute: $exec,
        })
    };
}

/// Table length: up to and including `IOMMU_TEST_CMD` (nr 0xa0).
pub const NUM_OPS: usize = 0xa0 - abi::IOMMUFD_CMD_BASE as usize + 1;

const fn slot(ioctl: u32) -> usize {
    (abi::ioctl::ioc_nr(ioctl) - abi::IOMMUFD_CMD_BASE) as usize
}

/// Every command of the Linux v7.3 uAPI, plus the selftest's (a context
/// emulating an older release refuses the commands it lacks, see
/// `uiommufd_core::release`).
pub static OPS: [Option<Op>; NUM_OPS] = {
    let mut t: [Option<Op>; NUM_OPS] = [const { None }; NUM_OPS];
    t[slot(abi::IOMMU_DESTROY)] = op!(IOMMU_DESTROY, abi::IommuDestroy, id, h::destroy);
    t[slot(abi::IOMMU_IOAS_ALLOC)] = op!(IOMMU_IOAS_ALLOC, abi::IommuIoasAlloc, out_ioas_id, h::ioas_alloc);
    t[slot(abi::IOMMU_IOAS_ALLOW_IOVAS)] =
        op!(IOMMU_IOAS_ALLOW_IOVAS, abi::IommuIoasAllowIovas, allowed_iovas, h::ioas_allow_iovas);
    t[slot(abi::IOMMU_IOAS_COPY)] = op!(IOMMU_IOAS_COPY, abi::IommuIoasCopy, src_iova, h::ioas_copy);
    t[slot(abi::IOMMU_IOAS_IOVA_RANGES)] =
        op!(IOMMU_IOAS_IOVA_RANGES, abi::IommuIoasIovaRanges, out_iova_alignment, h::ioas_iova_ranges);
    t[slot(abi::IOMMU_IOAS_MAP)] = op!(IOMMU_IOAS_MAP, abi::IommuIoasMap, iova, h::ioas_map);
    t[slot(abi::IOMMU_IOAS_UNMAP)] = op!(IOMMU_IOAS_UNMAP, abi::IommuIoasUnmap, length, h::ioas_unmap);
    t[slot(abi::IOMMU_OPTION)] = op!(IOMMU_OPTION, abi::IommuOption, val64, h::option);
    t[slot(abi::IOMMU_VFIO_IOAS)] = op!(IOMMU_VFIO_IOAS, abi::IommuVfioIoas, __reserved, h::vfio_ioas);
    t[slot(abi::IOMMU_HWPT_ALLOC)] = op!(IOMMU_HWPT_ALLOC, abi::IommuHwptAlloc, __reserved, h::hwpt_alloc);
    t[slot(abi::IOMMU_GET_HW_INFO)] = op!(IOMMU_GET_HW_INFO, abi::IommuHwInfo, __reserved, h::get_hw_info);
    t[slot(abi::IOMMU_HWPT_SET_DIRTY_TRACKING)] =
        op!(IOMMU_HWPT_SET_DIRTY_TRACKING, abi::IommuHwptSetDirtyTracking, __reserved, h::hwpt_set_dirty_tracking);
    t[slot(abi::IOMMU_HWPT_GET_DIRTY_BITMAP)] =
        op!(IOMMU_HWPT_GET_DIRTY_BITMAP, abi::IommuHwptGetDirtyBitmap, data, h::hwpt_get_dirty_bitmap);
    t[slot(abi::IOMMU_HWPT_INVALIDATE)] =
        op!(IOMMU_HWPT_INVALIDATE, abi::IommuHwptInvalidate, __reserved, h::hwpt_invalidate);
    t[slot(abi::IOMMU_FAULT_QUEUE_ALLOC)] =
        op!(IOMMU_FAULT_QUEUE_ALLOC, abi::IommuFaultAlloc, out_fault_fd, h::fault_alloc);
    t[slot(abi::IOMMU_IOAS_MAP_FILE)] =
        op!(IOMMU_IOAS_MAP_FILE, abi::IommuIoasMapFile, iova, crate::map_file::ioas_map_file);
    t[slot(abi::IOMMU_VIOMMU_ALLOC)] =
        op!(IOMMU_VIOMMU_ALLOC, abi::IommuViommuAlloc, out_viommu_id, crate::viommu::viommu_alloc);
    t[slot(abi::IOMMU_VDEVICE_ALLOC)] =
        op!(IOMMU_VDEVICE_ALLOC, abi::IommuVdeviceAlloc, virt_id, crate::viommu::vdevice_alloc);
    t[slot(abi::IOMMU_IOAS_CHANGE_PROCESS)] =
        op!(IOMMU_IOAS_CHANGE_PROCESS, abi::IommuIoasChangeProcess, __reserved, crate::map_file::ioas_change_process);
    t[slot(abi::IOMMU_VEVENTQ_ALLOC)] =
        op!(IOMMU_VEVENTQ_ALLOC, abi::IommuVeventqAlloc, out_veventq_fd, crate::viommu::veventq_alloc);
    t[slot(abi::IOMMU_HW_QUEUE_ALLOC)] =
        op!(IOMMU_HW_QUEUE_ALLOC, abi::IommuHwQueueAlloc, length, crate::viommu::hw_queue_alloc);
    t[slot(abi::IOMMU_IOAS_NOIOMMU_GET_PA)] =
        op!(IOMMU_IOAS_NOIOMMU_GET_PA, abi::IommuIoasNoiommuGetPa, out_phys, h::ioas_noiommu_get_pa);
    t[slot(abi::test_cmd::IOMMU_TEST_CMD)] = {
        use abi::test_cmd::IOMMU_TEST_CMD;
        let _ = IOMMU_TEST_CMD;
        Some(Op {
            ioctl: abi::test_cmd::IOMMU_TEST_CMD,
            name: "IOMMU_TEST_CMD",
            size: size_of::<IommuTestCmd>(),
            min_size: offset_of!(IommuTestCmd, last) + field_size(|c: &IommuTestCmd| &c.last),
            execute: selftest::execute,
        })
    };
    t
};

/// The C name of iommufd request `cmd`, if it is one of ours.
pub fn op_name(cmd: u32) -> Option<&'static str> {
    let i = abi::ioctl::ioc_nr(cmd).checked_sub(abi::IOMMUFD_CMD_BASE)? as usize;
    match OPS.get(i)? {
        Some(op) if op.ioctl == cmd => Some(op.name),
        _ => None,
    }
}
