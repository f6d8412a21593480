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

// Selftest op codes (`IommuTestCmd::op`); 0 is not a valid op.
/// `IOMMU_TEST_OP_ADD_RESERVED`: reserve an IOVA range of an IOAS ([`TestAddReserved`]).
pub const IOMMU_TEST_OP_ADD_RESERVED: u32 = 1;
/// `IOMMU_TEST_OP_MOCK_DOMAIN`: create a mock device attached to an IOAS or HWPT ([`TestMockDomain`]).
pub const IOMMU_TEST_OP_MOCK_DOMAIN: u32 = 2;
/// `IOMMU_TEST_OP_MD_CHECK_MAP`: check that a mock domain maps a range to given user memory ([`TestCheckMap`]).
pub const IOMMU_TEST_OP_MD_CHECK_MAP: u32 = 3;
/// `IOMMU_TEST_OP_MD_CHECK_REFS`: check the pin count of user pages ([`TestCheckRefs`]).
pub const IOMMU_TEST_OP_MD_CHECK_REFS: u32 = 4;
/// `IOMMU_TEST_OP_CREATE_ACCESS`: create an in-kernel access object and its fd ([`TestCreateAccess`]).
pub const IOMMU_TEST_OP_CREATE_ACCESS: u32 = 5;
/// `IOMMU_TEST_OP_DESTROY_ACCESS_PAGES`: release pages pinned through an access ([`TestDestroyAccessPages`]).
pub const IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: u32 = 6;
/// `IOMMU_TEST_OP_ACCESS_PAGES`: pin IOVA pages through an access ([`TestAccessPages`]).
pub const IOMMU_TEST_OP_ACCESS_PAGES: u32 = 7;
/// `IOMMU_TEST_OP_ACCESS_RW`: read or write IOVA memory through an access ([`TestAccessRw`]).
pub const IOMMU_TEST_OP_ACCESS_RW: u32 = 8;
/// `IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT`: lower the page-batch memory limit for testing ([`TestMemoryLimit`]).
pub const IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: u32 = 9;
/// `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`: move a mock device to another IOAS or HWPT ([`TestMockDomainReplace`]).
pub const IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: u32 = 10;
/// `IOMMU_TEST_OP_ACCESS_REPLACE_IOAS`: move an access to another IOAS ([`TestAccessReplaceIoas`]).
pub const IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: u32 = 11;
/// `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`: create a mock device with device flags ([`TestMockDomainFlags`]).
pub const IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: u32 = 12;
/// `IOMMU_TEST_OP_DIRTY`: mark IOVA pages dirty in a mock domain ([`TestDirty`]).
pub const IOMMU_TEST_OP_DIRTY: u32 = 13;
/// `IOMMU_TEST_OP_MD_CHECK_IOTLB`: check a mock IOTLB slot of a nested domain ([`TestCheckIotlb`]).
pub const IOMMU_TEST_OP_MD_CHECK_IOTLB: u32 = 14;
/// `IOMMU_TEST_OP_TRIGGER_IOPF`: raise an I/O page fault from a mock device ([`TestTriggerIopf`]).
pub const IOMMU_TEST_OP_TRIGGER_IOPF: u32 = 15;
/// `IOMMU_TEST_OP_DEV_CHECK_CACHE`: check a cache slot of a mock device ([`TestCheckDevCache`]).
pub const IOMMU_TEST_OP_DEV_CHECK_CACHE: u32 = 16;
/// `IOMMU_TEST_OP_TRIGGER_VEVENT`: raise a vIOMMU event for a mock device ([`TestTriggerVevent`]).
pub const IOMMU_TEST_OP_TRIGGER_VEVENT: u32 = 17;
/// `IOMMU_TEST_OP_PASID_ATTACH`: attach a PASID of a mock device ([`TestPasidAttach`]).
pub const IOMMU_TEST_OP_PASID_ATTACH: u32 = 18;
/// `IOMMU_TEST_OP_PASID_REPLACE`: move a PASID of a mock device ([`TestPasidReplace`]).
pub const IOMMU_TEST_OP_PASID_REPLACE: u32 = 19;
/// `IOMMU_TEST_OP_PASID_DETACH`: detach a PASID of a mock device ([`TestPasidDetach`]).
pub const IOMMU_TEST_OP_PASID_DETACH: u32 = 20;
/// `IOMMU_TEST_OP_PASID_CHECK_HWPT`: check which HWPT a PASID of a mock device uses ([`TestPasidCheck`]).
pub const IOMMU_TEST_OP_PASID_CHECK_HWPT: u32 = 21;
/// `IOMMU_TEST_OP_DMABUF_GET`: create a test dma-buf ([`TestDmabufGet`]).
pub const IOMMU_TEST_OP_DMABUF_GET: u32 = 22;
/// `IOMMU_TEST_OP_DMABUF_REVOKE`: revoke or restore a test dma-buf ([`TestDmabufRevoke`]).
pub const IOMMU_TEST_OP_DMABUF_REVOKE: u32 = 23;

// Mock page-table formats ([`IommuHwptSelftest::pagetable_type`]).
/// `MOCK_IOMMUPT_DEFAULT`: the mock page table with its default page sizes.
pub const MOCK_IOMMUPT_DEFAULT: u32 = 0;
/// `MOCK_IOMMUPT_HUGE`: the mock page table with huge pages.
pub const MOCK_IOMMUPT_HUGE: u32 = 1;

// Geometry of the default mock page table: aperture `[START, LAST]` and the
// mock IOMMU page sizes.
/// `MOCK_APERTURE_START`: first IOVA a mock domain can map.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// `MOCK_APERTURE_LAST`: last IOVA a mock domain can map.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
/// `MOCK_PAGE_SIZE`: base page size of the mock IOMMU.
pub const MOCK_PAGE_SIZE: u64 = 2048;
/// `MOCK_HUGE_PAGE_SIZE`: huge page size of the mock IOMMU.
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_PAGE_SIZE;

// Flags of [`TestAccessPages::flags`].
/// `MOCK_FLAGS_ACCESS_WRITE`: pin the pages writable.
pub const MOCK_FLAGS_ACCESS_WRITE: u32 = 1 << 0;
/// `MOCK_FLAGS_ACCESS_SYZ`: syzkaller mode: the IOVA is decoded from the fuzzer's area-relative encoding.
pub const MOCK_FLAGS_ACCESS_SYZ: u32 = 1 << 16;

// Flags of [`TestAccessRw::flags`].
/// `MOCK_ACCESS_RW_WRITE`: write to IOVA memory instead of reading.
pub const MOCK_ACCESS_RW_WRITE: u32 = 1 << 0;
/// `MOCK_ACCESS_RW_SLOW_PATH`: force the page-pinning path instead of the fast one.
pub const MOCK_ACCESS_RW_SLOW_PATH: u32 = 1 << 2;

/// Flags of [`TestCreateAccess::flags`].
pub const MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: u32 = 1 << 0;

// Flags of [`TestMockDomainFlags::dev_flags`].
/// `MOCK_FLAGS_DEVICE_NO_DIRTY`: the mock device cannot track dirty pages.
pub const MOCK_FLAGS_DEVICE_NO_DIRTY: u32 = 1 << 0;
/// Mock device with a huge-page IOVA granule. Mainline dropped this bit in
/// favour of [`MOCK_IOMMUPT_HUGE`]; it stays here because the 6.12 selftests
/// still pass it.
pub const MOCK_FLAGS_DEVICE_HUGE_IOVA: u32 = 1 << 1;
/// `MOCK_FLAGS_DEVICE_PASID`: the mock device supports PASIDs.
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;

// Number of mock IOTLB slots of a nested mock domain, and the largest index.
/// Largest mock IOTLB slot index of a nested mock domain.
pub const MOCK_NESTED_DOMAIN_IOTLB_ID_MAX: u32 = 3;
/// Number of mock IOTLB slots of a nested mock domain.
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: u32 = 4;

// Number of mock cache slots of a mock device, and the largest index.
/// Largest cache slot index of a mock device.
pub const MOCK_DEV_CACHE_ID_MAX: u32 = 3;
/// Number of cache slots of a mock device.
pub const MOCK_DEV_CACHE_NUM: u32 = 4;

/// A PASID the selftests keep aside for their replace test.
pub const IOMMU_TEST_PASID_RESERVED: u32 = 1024;

/// PASID width (bits) of the mock device and mock IOMMU.
pub const MOCK_PASID_WIDTH: u32 = 20;

// `out_data_type` reported by IOMMU_GET_HW_INFO for a mock device, and the
// value it puts in [`IommuTestHwInfo::test_reg`].
/// `IOMMU_HW_INFO_TYPE_SELFTEST`: `out_data_type` of IOMMU_GET_HW_INFO for a mock device ([`IommuTestHwInfo`]).
pub const IOMMU_HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// `IOMMU_HW_INFO_SELFTEST_REGVAL`: the value a mock device reports in [`IommuTestHwInfo::test_reg`].
pub const IOMMU_HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;

/// `data_type` of a mock nested HWPT ([`IommuHwptSelftest`]).
pub const IOMMU_HWPT_DATA_SELFTEST: u32 = 0xdead;
// Initial value of every mock IOTLB slot / mock device cache slot.
/// `IOMMU_TEST_IOTLB_DEFAULT`: initial value of every mock IOTLB slot.
pub const IOMMU_TEST_IOTLB_DEFAULT: u32 = 0xbad_beef;
/// `IOMMU_TEST_DEV_CACHE_DEFAULT`: initial value of every mock device cache slot.
pub const IOMMU_TEST_DEV_CACHE_DEFAULT: u32 = 0xba_ddad;

// `data_type` of mock HWPT invalidations ([`IommuHwptInvalidateSelftest`]),
// and a deliberately unknown one.
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`: `data_type` of mock HWPT invalidations ([`IommuHwptInvalidateSelftest`]).
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID`: a HWPT invalidation data type the mock driver rejects.
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0xdad_beef;
/// Invalidate every slot, ignoring the index field.
pub const IOMMU_TEST_INVALIDATE_FLAG_ALL: u32 = 1 << 0;

/// `type` of a mock vIOMMU ([`IommuViommuSelftest`]).
pub const IOMMU_VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
// `data_type` of mock vIOMMU invalidations
// ([`IommuViommuInvalidateSelftest`]), and a deliberately unknown one.
/// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST`: `data_type` of mock vIOMMU invalidations ([`IommuViommuInvalidateSelftest`]).
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID`: a vIOMMU invalidation data type the mock driver rejects.
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0xdad_beef;

/// `type` of a mock vEVENTQ ([`IommuViommuEventSelftest`]).
pub const IOMMU_VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;

// `type` of a mock HW queue, and how many a mock vIOMMU accepts.
/// `IOMMU_HW_QUEUE_TYPE_SELFTEST`: `type` of a mock HW queue.
pub const IOMMU_HW_QUEUE_TYPE_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_TEST_HW_QUEUE_MAX`: how many HW queues a mock vIOMMU accepts.
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
        /// Size of this struct as the caller knows it, so the ABI can grow.
        @0 size: u32,
        /// Operation (`IOMMU_TEST_OP_*`).
        @4 op: u32,
        /// Object the operation applies to (an IOAS, HWPT, device or access, per op).
        @8 id: u32,
        /// Reserved; must be zero.
        @12 __reserved: u32,
        /// The op-specific union, opaque here; see [`IommuTestCmd::payload_as`].
        @16 payload: [u64; TEST_CMD_PAYLOAD_SIZE / 8],
        /// Marks the end of the union; unused.
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
        /// First IOVA to reserve.
        @0 start: u64,
        /// Bytes to reserve.
        @8 length: u64,
    }

    /// `mock_domain`: create a mock device attached to the IOAS/HWPT `id`.
    TestMockDomain, 12 {
        /// Output: ID of the selftest device object.
        @0 out_stdev_id: u32,
        /// Output: ID of the HWPT the device was attached to.
        @4 out_hwpt_id: u32,
        /// The regular iommufd device object of the mock device.
        @8 out_idev_id: u32,
    }

    /// `mock_domain_flags`: like [`TestMockDomain`] plus `MOCK_FLAGS_DEVICE_*`.
    TestMockDomainFlags, 16 {
        /// Output: ID of the selftest device object.
        @0 out_stdev_id: u32,
        /// Output: ID of the HWPT the device was attached to.
        @4 out_hwpt_id: u32,
        /// Output: the device's iommufd device ID.
        @8 out_idev_id: u32,
        /// `MOCK_FLAGS_DEVICE_*` bits.
        @12 dev_flags: u32,
    }

    /// `mock_domain_replace`: move mock device `id` to another IOAS/HWPT.
    TestMockDomainReplace, 4 {
        /// Input: IOAS or HWPT to move to; output: the HWPT used.
        @0 pt_id: u32,
    }

    /// `check_map`: verify that the mock domain `id` maps `iova` onto the
    /// pages behind `uptr`.
    TestCheckMap, 24 {
        /// First IOVA to check.
        @0 iova: u64,
        /// Bytes to check.
        @8 length: u64,
        /// User address the range should map to.
        @16 uptr: u64,
    }

    /// `check_refs`: verify the page reference counts behind `uptr`.
    TestCheckRefs, 24 {
        /// Bytes of user memory to check.
        @0 length: u64,
        /// Start of the user memory.
        @8 uptr: u64,
        /// Expected pin count of each page.
        @16 refs: u32,
        /// Implicit tail padding in C.
        @20 __pad: u32,
    }

    /// `create_access`: create an in-kernel access object on IOAS `id`.
    TestCreateAccess, 8 {
        /// Output: fd of the new access.
        @0 out_access_fd: u32,
        /// `MOCK_FLAGS_ACCESS_CREATE_*` bits.
        @4 flags: u32,
    }

    /// `destroy_access_pages`: release pages pinned by ACCESS_PAGES.
    TestDestroyAccessPages, 4 {
        /// ID of the pinned-pages record to release.
        @0 access_pages_id: u32,
    }

    /// `access_pages`: pin an IOVA range through access object `id`.
    TestAccessPages, 32 {
        /// `MOCK_FLAGS_ACCESS_*` bits.
        @0 flags: u32,
        /// Output: ID of the pinned-pages record.
        @4 out_access_pages_id: u32,
        /// First IOVA to pin.
        @8 iova: u64,
        /// Bytes to pin.
        @16 length: u64,
        /// User address the pinned pages must match (0 skips the check).
        @24 uptr: u64,
    }

    /// `access_rw`: copy between an IOVA range and `uptr` through access `id`.
    TestAccessRw, 32 {
        /// First IOVA to access.
        @0 iova: u64,
        /// Bytes to copy.
        @8 length: u64,
        /// User buffer to copy to or from.
        @16 uptr: u64,
        /// `MOCK_ACCESS_RW_*` bits.
        @24 flags: u32,
        /// Implicit tail padding in C.
        @28 __pad: u32,
    }

    /// `memory_limit`: temporary cap (in pages) on internal batch buffers.
    TestMemoryLimit, 4 {
        /// New size in bytes of the temporary page-batch memory.
        @0 limit: u32,
    }

    /// `access_replace_ioas`: point access object `id` at another IOAS.
    TestAccessReplaceIoas, 4 {
        /// IOAS the access moves to.
        @0 ioas_id: u32,
    }

    /// `dirty`: mark pages of mock domain `id` dirty as selected by the bitmap
    /// at `uptr`; the largest union member.
    TestDirty, 48 {
        /// Must be zero.
        @0 flags: u32,
        /// Implicit padding in C before the first `__aligned_u64`.
        @4 __pad: u32,
        /// First IOVA of the range.
        @8 iova: u64,
        /// Bytes in the range.
        @16 length: u64,
        /// Bytes covered by one bit of the bitmap.
        @24 page_size: u64,
        /// User pointer to the bitmap of pages to mark.
        @32 uptr: u64,
        /// Output: number of pages marked.
        @40 out_nr_dirty: u64,
    }

    /// `check_iotlb`: verify mock IOTLB slot `id` of nested domain `cmd.id`.
    TestCheckIotlb, 8 {
        /// Mock IOTLB slot index.
        @0 id: u32,
        /// Expected value of the slot.
        @4 iotlb: u32,
    }

    /// `trigger_iopf`: inject an I/O page fault from a mock device.
    TestTriggerIopf, 24 {
        /// Mock device that faults.
        @0 dev_id: u32,
        /// PASID of the faulting access.
        @4 pasid: u32,
        /// Page request group index.
        @8 grpid: u32,
        /// `IOMMU_PGFAULT_PERM_*` bits of the access.
        @12 perm: u32,
        /// Faulting address.
        @16 addr: u64,
    }

    /// `check_dev_cache`: verify mock cache slot `id` of mock device `cmd.id`.
    TestCheckDevCache, 8 {
        /// Mock device cache slot index.
        @0 id: u32,
        /// Expected value of the slot.
        @4 cache: u32,
    }

    /// `trigger_vevent`: make the mock vIOMMU report an event for a device.
    TestTriggerVevent, 4 {
        /// Mock device the event is about.
        @0 dev_id: u32,
    }

    /// `pasid_attach`: attach `pasid` of mock device `cmd.id` to `pt_id`.
    TestPasidAttach, 8 {
        /// PASID of the mock device.
        @0 pasid: u32,
        /// IOAS or HWPT to use.
        @4 pt_id: u32,
    }

    /// `pasid_replace`: move `pasid` of mock device `cmd.id` to `pt_id`.
    TestPasidReplace, 8 {
        /// PASID of the mock device.
        @0 pasid: u32,
        /// IOAS or HWPT to use.
        @4 pt_id: u32,
    }

    /// `pasid_detach`: detach `pasid` of mock device `cmd.id`.
    TestPasidDetach, 4 {
        /// PASID of the mock device.
        @0 pasid: u32,
    }

    /// `pasid_check`: verify that `pasid` of mock device `cmd.id` is attached
    /// to `hwpt_id`.
    TestPasidCheck, 8 {
        /// PASID of the mock device.
        @0 pasid: u32,
        /// HWPT expected.
        @4 hwpt_id: u32,
    }

    /// `dmabuf_get`: create a test dma-buf of `length` bytes; the ioctl
    /// returns its fd.
    TestDmabufGet, 8 {
        /// Size of the dma-buf in bytes.
        @0 length: u32,
        /// Flags of the new dma-buf file.
        @4 open_flags: u32,
    }

    /// `dmabuf_revoke`: revoke (or restore) a test dma-buf.
    TestDmabufRevoke, 8 {
        /// The test dma-buf.
        @0 dmabuf_fd: i32,
        /// Nonzero revokes, zero restores.
        @4 revoked: u32,
    }
}

// Driver-specific data blobs of the mock driver, passed through the regular
// iommufd ioctls' `data_uptr` fields.
abi_struct! {
    /// `struct iommu_test_hw_info`: IOMMU_GET_HW_INFO data of a mock device.
    IommuTestHwInfo, 8 {
        /// Unused; zero.
        @0 flags: u32,
        /// Always [`IOMMU_HW_INFO_SELFTEST_REGVAL`].
        @4 test_reg: u32,
    }

    /// `struct iommu_hwpt_selftest`: HWPT_ALLOC data for
    /// [`IOMMU_HWPT_DATA_SELFTEST`]. Older selftests pass only `iotlb`
    /// (4 bytes); mainline added `pagetable_type`.
    IommuHwptSelftest, 8 {
        /// Initial value of the mock IOTLB slots.
        @0 iotlb: u32,
        /// Mock page-table format (`MOCK_IOMMUPT_*`).
        @4 pagetable_type: u32,
    }

    /// `struct iommu_hwpt_invalidate_selftest`: one mock IOTLB invalidation.
    IommuHwptInvalidateSelftest, 8 {
        /// `IOMMU_TEST_INVALIDATE_FLAG_*` bits.
        @0 flags: u32,
        /// Mock IOTLB slot to reset.
        @4 iotlb_id: u32,
    }

    /// `struct iommu_viommu_selftest`: VIOMMU_ALLOC data of the mock vIOMMU
    /// (`out_data` echoes `in_data`; the mmap pair locates its MMIO page).
    IommuViommuSelftest, 24 {
        /// Input value echoed back.
        @0 in_data: u32,
        /// Output: `in_data` echoed.
        @4 out_data: u32,
        /// Output: mmap offset of the mock MMIO page on the iommufd.
        @8 out_mmap_offset: u64,
        /// Output: mmap length of that page.
        @16 out_mmap_length: u64,
    }

    /// `struct iommu_viommu_invalidate_selftest`: one mock device-cache
    /// invalidation through a vIOMMU.
    IommuViommuInvalidateSelftest, 12 {
        /// `IOMMU_TEST_INVALIDATE_FLAG_*` bits.
        @0 flags: u32,
        /// Virtual device ID whose cache is invalidated.
        @4 vdev_id: u32,
        /// Cache slot to reset.
        @8 cache_id: u32,
    }

    /// `struct iommu_viommu_event_selftest`: record of a mock vEVENTQ.
    IommuViommuEventSelftest, 4 {
        /// Virtual ID of the device the event is about.
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
