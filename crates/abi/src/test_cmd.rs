//! The iommufd selftest ("mock") ABI of `drivers/iommu/iommufd/iommufd_test.h`.
//!
//! The kernel's selftests drive a mock IOMMU and mock devices through one
//! extra ioctl, [`IOMMU_TEST_CMD`], whose argument [`IommuTestCmd`] carries an
//! op code and an op-specific payload. The values follow current mainline;
//! see the notes on [`MOCK_FLAGS_DEVICE_HUGE_IOVA`] and
//! [`IommuHwptSelftest`] for the two places where older selftests differ.

use crate::ioctl::io;
use crate::iommufd::{IOMMUFD_CMD_BASE, IOMMUFD_TYPE};
use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `IOMMU_TEST_CMD`: `_IO(';', 0xa0)`.
pub const IOMMU_TEST_CMD: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32);

/// Selftest op codes (`IommuTestCmd::op`); 0 is not a valid op.
pub const IOMMU_TEST_OP_ADD_RESERVED: u32 = 1;
pub const IOMMU_TEST_OP_MOCK_DOMAIN: u32 = 2;
pub const IOMMU_TEST_OP_MD_CHECK_MAP: u32 = 3;
pub const IOMMU_TEST_OP_MD_CHECK_REFS: u32 = 4;
pub const IOMMU_TEST_OP_CREATE_ACCESS: u32 = 5;
pub const IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: u32 = 6;
pub const IOMMU_TEST_OP_ACCESS_PAGES: u32 = 7;
pub const IOMMU_TEST_OP_ACCESS_RW: u32 = 8;
pub const IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: u32 = 9;
pub const IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: u32 = 10;
pub const IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: u32 = 11;
pub const IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: u32 = 12;
pub const IOMMU_TEST_OP_DIRTY: u32 = 13;
pub const IOMMU_TEST_OP_MD_CHECK_IOTLB: u32 = 14;
pub const IOMMU_TEST_OP_TRIGGER_IOPF: u32 = 15;
pub const IOMMU_TEST_OP_DEV_CHECK_CACHE: u32 = 16;
pub const IOMMU_TEST_OP_TRIGGER_VEVENT: u32 = 17;
pub const IOMMU_TEST_OP_PASID_ATTACH: u32 = 18;
pub const IOMMU_TEST_OP_PASID_REPLACE: u32 = 19;
pub const IOMMU_TEST_OP_PASID_DETACH: u32 = 20;
pub const IOMMU_TEST_OP_PASID_CHECK_HWPT: u32 = 21;
pub const IOMMU_TEST_OP_DMABUF_GET: u32 = 22;
pub const IOMMU_TEST_OP_DMABUF_REVOKE: u32 = 23;

/// Mock page-table formats ([`IommuHwptSelftest::pagetable_type`]).
pub const MOCK_IOMMUPT_DEFAULT: u32 = 0;
pub const MOCK_IOMMUPT_HUGE: u32 = 1;

/// Geometry of the default mock page table: aperture `[START, LAST]` and the
/// mock IOMMU page sizes.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
pub const MOCK_PAGE_SIZE: u64 = 2048;
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_PAGE_SIZE;

/// Flags of [`TestAccessPages::flags`].
pub const MOCK_FLAGS_ACCESS_WRITE: u32 = 1 << 0;
pub const MOCK_FLAGS_ACCESS_SYZ: u32 = 1 << 16;

/// Flags of [`TestAccessRw::flags`].
pub const MOCK_ACCESS_RW_WRITE: u32 = 1 << 0;
pub const MOCK_ACCESS_RW_SLOW_PATH: u32 = 1 << 2;

/// Flags of [`TestCreateAccess::flags`].
pub const MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: u32 = 1 << 0;

/// Flags of [`TestMockDomainFlags::dev_flags`].
pub const MOCK_FLAGS_DEVICE_NO_DIRTY: u32 = 1 << 0;
/// Mock device with a huge-page IOVA granule. Mainline dropped this bit in
/// favour of [`MOCK_IOMMUPT_HUGE`]; it stays here because the 6.12 selftests
/// still pass it.
pub const MOCK_FLAGS_DEVICE_HUGE_IOVA: u32 = 1 << 1;
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;

/// Number of mock IOTLB slots of a nested mock domain, and the largest index.
pub const MOCK_NESTED_DOMAIN_IOTLB_ID_MAX: u32 = 3;
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: u32 = 4;

/// Number of mock cache slots of a mock device, and the largest index.
pub const MOCK_DEV_CACHE_ID_MAX: u32 = 3;
pub const MOCK_DEV_CACHE_NUM: u32 = 4;

/// A PASID the selftests keep aside for their replace test.
pub const IOMMU_TEST_PASID_RESERVED: u32 = 1024;

/// PASID width (bits) of the mock device and mock IOMMU.
pub const MOCK_PASID_WIDTH: u32 = 20;

/// `out_data_type` reported by IOMMU_GET_HW_INFO for a mock device, and the
/// value it puts in [`IommuTestHwInfo::test_reg`].
pub const IOMMU_HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
pub const IOMMU_HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;

/// `data_type` of a mock nested HWPT ([`IommuHwptSelftest`]).
pub const IOMMU_HWPT_DATA_SELFTEST: u32 = 0xdead;
/// Initial value of every mock IOTLB slot / mock device cache slot.
pub const IOMMU_TEST_IOTLB_DEFAULT: u32 = 0xbad_beef;
pub const IOMMU_TEST_DEV_CACHE_DEFAULT: u32 = 0xba_ddad;

/// `data_type` of mock HWPT invalidations ([`IommuHwptInvalidateSelftest`]),
/// and a deliberately unknown one.
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0xdad_beef;
/// Invalidate every slot, ignoring the index field.
pub const IOMMU_TEST_INVALIDATE_FLAG_ALL: u32 = 1 << 0;

/// `type` of a mock vIOMMU ([`IommuViommuSelftest`]).
pub const IOMMU_VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
/// `data_type` of mock vIOMMU invalidations
/// ([`IommuViommuInvalidateSelftest`]), and a deliberately unknown one.
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0xdad_beef;

/// `type` of a mock vEVENTQ ([`IommuViommuEventSelftest`]).
pub const IOMMU_VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;

/// `type` of a mock HW queue, and how many a mock vIOMMU accepts.
pub const IOMMU_HW_QUEUE_TYPE_SELFTEST: u32 = 0xdead_beef;
pub const IOMMU_TEST_HW_QUEUE_MAX: u32 = 2;

/// Size of the op-specific union in `struct iommu_test_cmd`: its largest
/// member is `dirty` ([`TestDirty`], 48 bytes).
pub const TEST_CMD_PAYLOAD_SIZE: usize = 48;

abi_struct! {
    /// `struct iommu_test_cmd`: argument of [`IOMMU_TEST_CMD`].
    ///
    /// The C struct holds an anonymous union of per-op structs between
    /// `__reserved` and `last`. Here that union is the opaque, 8-byte aligned
    /// `payload`; read or write it as one of the `Test*` structs with
    /// [`payload_as`](Self::payload_as) / [`set_payload`](Self::set_payload).
    /// The union is 8-byte aligned, so C pads the struct after `last`; that
    /// tail is the explicit `__pad`.
    IommuTestCmd, 72 {
        @0 size: u32,
        @4 op: u32,
        @8 id: u32,
        @12 __reserved: u32,
        @16 payload: [u64; TEST_CMD_PAYLOAD_SIZE / 8],
        @64 last: u32,
        /// Implicit tail padding of the C struct.
        @68 __pad: u32,
    }
}

impl IommuTestCmd {
    /// A zeroed command for `op` with `size` set to the full struct size.
    pub fn new(op: u32) -> Self {
        Self { size: size_of::<Self>() as u32, op, ..Self::default() }
    }

    /// Read the payload as the union member `T` (a copy of its first
    /// `size_of::<T>()` bytes). `T` larger than the union fails to compile.
    pub fn payload_as<T: FromBytes>(&self) -> T {
        const { assert!(size_of::<T>() <= TEST_CMD_PAYLOAD_SIZE) };
        match T::read_from_prefix(self.payload.as_bytes()) {
            Ok((v, _)) => v,
            Err(_) => unreachable!("payload is larger than T"),
        }
    }

    /// Write `v` over the first `size_of::<T>()` payload bytes, like storing
    /// to a C union member; the bytes after it are left as they were.
    pub fn set_payload<T: IntoBytes + Immutable>(&mut self, v: &T) {
        const { assert!(size_of::<T>() <= TEST_CMD_PAYLOAD_SIZE) };
        self.payload.as_mut_bytes()[..size_of::<T>()].copy_from_slice(v.as_bytes());
    }
}

// The union members of `struct iommu_test_cmd`, one struct each, named after
// the member (`add_reserved` -> `TestAddReserved`). Where C leaves a hole
// before an `__aligned_u64` or at the end, the struct has an explicit `__pad`.
abi_struct! {
    /// `add_reserved`: reserve an IOVA range in the IOAS `id`.
    TestAddReserved, 16 {
        @0 start: u64,
        @8 length: u64,
    }

    /// `mock_domain`: create a mock device attached to the IOAS/HWPT `id`.
    TestMockDomain, 12 {
        @0 out_stdev_id: u32,
        @4 out_hwpt_id: u32,
        /// The regular iommufd device object of the mock device.
        @8 out_idev_id: u32,
    }

    /// `mock_domain_flags`: like [`TestMockDomain`] plus `MOCK_FLAGS_DEVICE_*`.
    TestMockDomainFlags, 16 {
        @0 out_stdev_id: u32,
        @4 out_hwpt_id: u32,
        @8 out_idev_id: u32,
        @12 dev_flags: u32,
    }

    /// `mock_domain_replace`: move mock device `id` to another IOAS/HWPT.
    TestMockDomainReplace, 4 {
        @0 pt_id: u32,
    }

    /// `check_map`: verify that the mock domain `id` maps `iova` onto the
    /// pages behind `uptr`.
    TestCheckMap, 24 {
        @0 iova: u64,
        @8 length: u64,
        @16 uptr: u64,
    }

    /// `check_refs`: verify the page reference counts behind `uptr`.
    TestCheckRefs, 24 {
        @0 length: u64,
        @8 uptr: u64,
        @16 refs: u32,
        /// Implicit tail padding in C.
        @20 __pad: u32,
    }

    /// `create_access`: create an in-kernel access object on IOAS `id`.
    TestCreateAccess, 8 {
        @0 out_access_fd: u32,
        @4 flags: u32,
    }

    /// `destroy_access_pages`: release pages pinned by ACCESS_PAGES.
    TestDestroyAccessPages, 4 {
        @0 access_pages_id: u32,
    }

    /// `access_pages`: pin an IOVA range through access object `id`.
    TestAccessPages, 32 {
        @0 flags: u32,
        @4 out_access_pages_id: u32,
        @8 iova: u64,
        @16 length: u64,
        @24 uptr: u64,
    }

    /// `access_rw`: copy between an IOVA range and `uptr` through access `id`.
    TestAccessRw, 32 {
        @0 iova: u64,
        @8 length: u64,
        @16 uptr: u64,
        @24 flags: u32,
        /// Implicit tail padding in C.
        @28 __pad: u32,
    }

    /// `memory_limit`: temporary cap (in pages) on internal batch buffers.
    TestMemoryLimit, 4 {
        @0 limit: u32,
    }

    /// `access_replace_ioas`: point access object `id` at another IOAS.
    TestAccessReplaceIoas, 4 {
        @0 ioas_id: u32,
    }

    /// `dirty`: mark pages of mock domain `id` dirty as selected by the bitmap
    /// at `uptr`; the largest union member.
    TestDirty, 48 {
        @0 flags: u32,
        /// Implicit padding in C before the first `__aligned_u64`.
        @4 __pad: u32,
        @8 iova: u64,
        @16 length: u64,
        @24 page_size: u64,
        @32 uptr: u64,
        @40 out_nr_dirty: u64,
    }

    /// `check_iotlb`: verify mock IOTLB slot `id` of nested domain `cmd.id`.
    TestCheckIotlb, 8 {
        @0 id: u32,
        @4 iotlb: u32,
    }

    /// `trigger_iopf`: inject an I/O page fault from a mock device.
    TestTriggerIopf, 24 {
        @0 dev_id: u32,
        @4 pasid: u32,
        @8 grpid: u32,
        @12 perm: u32,
        @16 addr: u64,
    }

    /// `check_dev_cache`: verify mock cache slot `id` of mock device `cmd.id`.
    TestCheckDevCache, 8 {
        @0 id: u32,
        @4 cache: u32,
    }

    /// `trigger_vevent`: make the mock vIOMMU report an event for a device.
    TestTriggerVevent, 4 {
        @0 dev_id: u32,
    }

    /// `pasid_attach`: attach `pasid` of mock device `cmd.id` to `pt_id`.
    TestPasidAttach, 8 {
        @0 pasid: u32,
        @4 pt_id: u32,
    }

    /// `pasid_replace`: move `pasid` of mock device `cmd.id` to `pt_id`.
    TestPasidReplace, 8 {
        @0 pasid: u32,
        @4 pt_id: u32,
    }

    /// `pasid_detach`: detach `pasid` of mock device `cmd.id`.
    TestPasidDetach, 4 {
        @0 pasid: u32,
    }

    /// `pasid_check`: verify that `pasid` of mock device `cmd.id` is attached
    /// to `hwpt_id`.
    TestPasidCheck, 8 {
        @0 pasid: u32,
        @4 hwpt_id: u32,
    }

    /// `dmabuf_get`: create a test dma-buf of `length` bytes; the ioctl
    /// returns its fd.
    TestDmabufGet, 8 {
        @0 length: u32,
        @4 open_flags: u32,
    }

    /// `dmabuf_revoke`: revoke (or restore) a test dma-buf.
    TestDmabufRevoke, 8 {
        @0 dmabuf_fd: i32,
        @4 revoked: u32,
    }
}

// Driver-specific data blobs of the mock driver, passed through the regular
// iommufd ioctls' `data_uptr` fields.
abi_struct! {
    /// `struct iommu_test_hw_info`: IOMMU_GET_HW_INFO data of a mock device.
    IommuTestHwInfo, 8 {
        @0 flags: u32,
        @4 test_reg: u32,
    }

    /// `struct iommu_hwpt_selftest`: HWPT_ALLOC data for
    /// [`IOMMU_HWPT_DATA_SELFTEST`]. Older selftests pass only `iotlb`
    /// (4 bytes); mainline added `pagetable_type`.
    IommuHwptSelftest, 8 {
        @0 iotlb: u32,
        @4 pagetable_type: u32,
    }

    /// `struct iommu_hwpt_invalidate_selftest`: one mock IOTLB invalidation.
    IommuHwptInvalidateSelftest, 8 {
        @0 flags: u32,
        @4 iotlb_id: u32,
    }

    /// `struct iommu_viommu_selftest`: VIOMMU_ALLOC data of the mock vIOMMU
    /// (`out_data` echoes `in_data`; the mmap pair locates its MMIO page).
    IommuViommuSelftest, 24 {
        @0 in_data: u32,
        @4 out_data: u32,
        @8 out_mmap_offset: u64,
        @16 out_mmap_length: u64,
    }

    /// `struct iommu_viommu_invalidate_selftest`: one mock device-cache
    /// invalidation through a vIOMMU.
    IommuViommuInvalidateSelftest, 12 {
        @0 flags: u32,
        @4 vdev_id: u32,
        @8 cache_id: u32,
    }

    /// `struct iommu_viommu_event_selftest`: record of a mock vEVENTQ.
    IommuViommuEventSelftest, 4 {
        @0 virt_id: u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let mut cmd = IommuTestCmd::new(IOMMU_TEST_OP_DIRTY);
        assert_eq!(cmd.size, 72);
        let d =
            TestDirty { flags: 1, iova: 2, length: 3, page_size: 4, uptr: 5, out_nr_dirty: 6, ..Default::default() };
        cmd.set_payload(&d);
        assert_eq!(cmd.payload_as::<TestDirty>(), d);
        // A smaller member overlays the start of the union only.
        cmd.set_payload(&TestPasidDetach { pasid: 9 });
        assert_eq!(cmd.payload_as::<TestPasidDetach>().pasid, 9);
        assert_eq!(cmd.payload_as::<TestDirty>().iova, 2);
        assert_eq!(IOMMU_TEST_CMD, 0x3ba0);
    }
}
