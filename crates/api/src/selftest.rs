//! The kernel selftest's mock IOMMU and mock devices (`IOMMU_TEST_CMD`).
//!
//! A kernel built with `CONFIG_IOMMUFD_TEST` serves one extra ioctl that
//! creates mock devices behind a mock IOMMU and checks what the IOMMU's page
//! tables hold; the uiommufd engine serves the same. It is how a program
//! written against this API can be run against the real kernel without
//! IOMMU hardware (in a VM with such a kernel), and the same program
//! against the engine.

use uiommufd_abi::test_cmd::{self as t, IommuTestCmd};
use zerocopy::{Immutable, IntoBytes};

use crate::backend::Handle;
use crate::error::Result;
use crate::ids::{DeviceId, HwptId, IoasId, MockDeviceId, ObjectId, PtId};
use crate::iommufd::{check_bitmap, Iommufd};

/// The selftest commands of one [`Iommufd`] ([`Iommufd::selftest`]).
#[derive(Clone, Copy, Debug)]
pub struct Selftest<'a> {
    pub(crate) fd: &'a Iommufd,
}

/// A mock device, bound and attached ([`Selftest::mock_domain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MockDevice {
    /// The selftest's device object (destroying it unbinds the device).
    pub id: MockDeviceId,
    /// The HWPT it was attached to (the one attaching to an IOAS created or
    /// picked, or the one given).
    pub hwpt: HwptId,
    /// The device as iommufd knows it: what `IOMMU_HWPT_ALLOC`,
    /// `IOMMU_GET_HW_INFO` and `IOMMU_VIOMMU_ALLOC` take.
    pub dev: DeviceId,
}

/// An in-kernel access of the selftest (`IOMMU_TEST_OP_CREATE_ACCESS`):
/// what an emulated device such as a vGPU or an s390 adapter uses to reach
/// an IOAS without an IOMMU, by copying ([`Selftest::access_read`],
/// [`Selftest::access_write`]) or pinning ([`Selftest::access_pages`]).
/// It is a file descriptor; dropping it closes it and releases its pins.
pub struct MockAccess {
    pub(crate) handle: Handle,
}

impl std::fmt::Debug for MockAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockAccess").field("fd", &self.handle.number()).finish()
    }
}

impl MockAccess {
    /// The access's descriptor number (of the process for the kernel, of
    /// the engine's table for the emulated backend): the `id` its ops take.
    pub fn raw_fd(&self) -> i32 {
        self.handle.number()
    }

    fn id(&self) -> u32 {
        self.handle.number() as u32
    }
}

impl Selftest<'_> {
    /// `IOMMU_TEST_CMD` with a command built by the caller.
    ///
    /// # Safety
    ///
    /// Every user pointer in the payload (`uptr` of `TestCheckMap`,
    /// `TestAccessRw`...) must be valid for what the op reads or writes
    /// there, for the duration of the call.
    pub unsafe fn raw(&self, cmd: &mut IommuTestCmd) -> Result<i32> {
        // SAFETY: the caller's obligation.
        unsafe { self.fd.handle.ioctl("IOMMU_TEST_CMD", t::IOMMU_TEST_CMD, cmd) }
    }

    /// Run `op` on object `id` with payload `payload` (which holds no user
    /// pointer the op writes through); returns the command as the kernel
    /// left it.
    fn run<P: IntoBytes + Immutable>(&self, op: u32, id: u32, payload: &P) -> Result<IommuTestCmd> {
        let mut cmd = IommuTestCmd::new(op);
        cmd.id = id;
        cmd.set_payload(payload);
        // SAFETY: the ops called through here either carry no pointer or
        // only read through one the caller made from a live slice of the
        // length the payload states (see each caller).
        unsafe { self.raw(&mut cmd)? };
        Ok(cmd)
    }

    /// `IOMMU_TEST_OP_MOCK_DOMAIN`: a new mock device, bound, attached to
    /// `pt` (an IOAS: a HWPT is picked or created for it; or a HWPT).
    pub fn mock_domain(&self, pt: impl Into<PtId>) -> Result<MockDevice> {
        let cmd = self.run(t::IOMMU_TEST_OP_MOCK_DOMAIN, pt.into().0, &t::TestMockDomain::default())?;
        let md: t::TestMockDomain = cmd.payload_as();
        Ok(MockDevice {
            id: MockDeviceId(md.out_stdev_id),
            hwpt: HwptId(md.out_hwpt_id),
            dev: DeviceId(md.out_idev_id),
        })
    }

    /// `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`: [`mock_domain`](Selftest::mock_domain)
    /// with `MOCK_FLAGS_DEVICE_*` (no dirty tracking, PASID capable).
    pub fn mock_domain_flags(&self, pt: impl Into<PtId>, dev_flags: u32) -> Result<MockDevice> {
        let payload = t::TestMockDomainFlags { dev_flags, ..Default::default() };
        let cmd = self.run(t::IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt.into().0, &payload)?;
        let md: t::TestMockDomainFlags = cmd.payload_as();
        Ok(MockDevice {
            id: MockDeviceId(md.out_stdev_id),
            hwpt: HwptId(md.out_hwpt_id),
            dev: DeviceId(md.out_idev_id),
        })
    }

    /// `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`: move mock device `dev` to `pt`;
    /// returns the HWPT it is attached to now.
    pub fn mock_domain_replace(&self, dev: MockDeviceId, pt: impl Into<PtId>) -> Result<HwptId> {
        let cmd =
            self.run(t::IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, dev.0, &t::TestMockDomainReplace { pt_id: pt.into().0 })?;
        Ok(HwptId(cmd.payload_as::<t::TestMockDomainReplace>().pt_id))
    }

    /// `IOMMU_TEST_OP_ADD_RESERVED`: reserve `[start, start + length)` of
    /// `ioas` as a device's reserved region would.
    pub fn add_reserved(&self, ioas: crate::IoasId, start: u64, length: u64) -> Result<()> {
        self.run(t::IOMMU_TEST_OP_ADD_RESERVED, ioas.0, &t::TestAddReserved { start, length }).map(drop)
    }

    /// `IOMMU_TEST_OP_MD_CHECK_MAP`: `EINVAL` unless the mock page table of
    /// `id` (a mock HWPT, or the IOAS's only one) maps
    /// `[iova, iova + length)` onto the pages behind `uptr`.
    pub fn check_map(&self, id: impl Into<ObjectId>, iova: u64, length: u64, uptr: u64) -> Result<()> {
        // The op only compares page frames; a bad `uptr` is EFAULT.
        self.run(t::IOMMU_TEST_OP_MD_CHECK_MAP, id.into().0, &t::TestCheckMap { iova, length, uptr }).map(drop)
    }

    /// `IOMMU_TEST_OP_MD_CHECK_REFS`: `EINVAL` unless every page of
    /// `[uptr, uptr + length)` is pinned `refs` times.
    pub fn check_refs(&self, uptr: u64, length: u64, refs: u32) -> Result<()> {
        let payload = t::TestCheckRefs { length, uptr, refs, __pad: 0 };
        self.run(t::IOMMU_TEST_OP_MD_CHECK_REFS, 0, &payload).map(drop)
    }

    /// `IOMMU_TEST_OP_MD_CHECK_IOTLB`: `EINVAL` unless slot `slot` of the
    /// mock IOTLB of nested HWPT `hwpt` holds `value`.
    pub fn check_iotlb(&self, hwpt: HwptId, slot: u32, value: u32) -> Result<()> {
        self.run(t::IOMMU_TEST_OP_MD_CHECK_IOTLB, hwpt.0, &t::TestCheckIotlb { id: slot, iotlb: value }).map(drop)
    }

    /// `IOMMU_TEST_OP_DEV_CHECK_CACHE`: `EINVAL` unless cache slot `slot` of
    /// mock device `dev` holds `value`.
    pub fn check_dev_cache(&self, dev: DeviceId, slot: u32, value: u32) -> Result<()> {
        self.run(t::IOMMU_TEST_OP_DEV_CHECK_CACHE, dev.0, &t::TestCheckDevCache { id: slot, cache: value }).map(drop)
    }

    /// `IOMMU_TEST_OP_DIRTY`: mark dirty, in mock HWPT `hwpt` (dirty
    /// tracking on), each `page_size` page `n` of `[iova, iova + length)`
    /// whose bit `n` is set in `bitmap`; returns how many were marked.
    pub fn mark_dirty(&self, hwpt: HwptId, iova: u64, length: u64, page_size: u64, bitmap: &[u64]) -> Result<u64> {
        check_bitmap("IOMMU_TEST_CMD", length, page_size, bitmap.len())?;
        let payload = t::TestDirty { iova, length, page_size, uptr: bitmap.as_ptr() as u64, ..Default::default() };
        // `uptr` is `bitmap`, a bit per page (checked above), only read.
        let cmd = self.run(t::IOMMU_TEST_OP_DIRTY, hwpt.0, &payload)?;
        Ok(cmd.payload_as::<t::TestDirty>().out_nr_dirty)
    }

    /// `IOMMU_TEST_OP_TRIGGER_IOPF`: mock device `dev` reports an I/O page
    /// fault at `addr` (PASID `pasid`, group `grpid`, `IOMMU_PGFAULT_PERM_*`
    /// `perm`) to the fault queue of the HWPT it is attached to.
    pub fn trigger_iopf(&self, dev: DeviceId, pasid: u32, grpid: u32, perm: u32, addr: u64) -> Result<()> {
        let payload = t::TestTriggerIopf { dev_id: dev.0, pasid, grpid, perm, addr };
        self.run(t::IOMMU_TEST_OP_TRIGGER_IOPF, 0, &payload).map(drop)
    }

    /// `IOMMU_TEST_OP_TRIGGER_VEVENT`: the mock vIOMMU reports an event for
    /// mock device `dev` on its `IOMMU_VEVENTQ_TYPE_SELFTEST` queue.
    pub fn trigger_vevent(&self, dev: DeviceId) -> Result<()> {
        self.run(t::IOMMU_TEST_OP_TRIGGER_VEVENT, 0, &t::TestTriggerVevent { dev_id: dev.0 }).map(drop)
    }

    /// `IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT`: cap the engine's page batches
    /// at `limit` pages (0: the default) to exercise its slow paths.
    pub fn set_temp_memory_limit(&self, limit: u32) -> Result<()> {
        self.run(t::IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0, &t::TestMemoryLimit { limit }).map(drop)
    }

    /// `IOMMU_TEST_OP_PASID_ATTACH`: attach PASID `pasid` of mock device
    /// `dev` to `pt`.
    pub fn pasid_attach(&self, dev: MockDeviceId, pasid: u32, pt: impl Into<PtId>) -> Result<()> {
        let payload = t::TestPasidAttach { pasid, pt_id: pt.into().0 };
        self.run(t::IOMMU_TEST_OP_PASID_ATTACH, dev.0, &payload).map(drop)
    }

    /// `IOMMU_TEST_OP_PASID_DETACH`: detach PASID `pasid` of mock device
    /// `dev`.
    pub fn pasid_detach(&self, dev: MockDeviceId, pasid: u32) -> Result<()> {
        self.run(t::IOMMU_TEST_OP_PASID_DETACH, dev.0, &t::TestPasidDetach { pasid }).map(drop)
    }

    /// `IOMMU_TEST_OP_PASID_CHECK_HWPT`: `EINVAL` unless PASID `pasid` of
    /// mock device `dev` is attached to `hwpt` (0: to nothing).
    pub fn pasid_check_hwpt(&self, dev: MockDeviceId, pasid: u32, hwpt: u32) -> Result<()> {
        self.run(t::IOMMU_TEST_OP_PASID_CHECK_HWPT, dev.0, &t::TestPasidCheck { pasid, hwpt_id: hwpt }).map(drop)
    }

    /// `IOMMU_TEST_OP_CREATE_ACCESS`: an access to `ioas`
    /// (`MOCK_FLAGS_ACCESS_CREATE_*` `flags`: `NEEDS_PIN_PAGES` makes the
    /// IOAS call it back to unpin before an unmap).
    pub fn create_access(&self, ioas: IoasId, flags: u32) -> Result<MockAccess> {
        const OP: &str = "IOMMU_TEST_CMD";
        let cmd = self.run(t::IOMMU_TEST_OP_CREATE_ACCESS, ioas.0, &t::TestCreateAccess { out_access_fd: 0, flags })?;
        let fd = cmd.payload_as::<t::TestCreateAccess>().out_access_fd as i32;
        Ok(MockAccess { handle: self.fd.handle.adopt(OP, fd)? })
    }

    /// `IOMMU_TEST_OP_ACCESS_REPLACE_IOAS`: point `access` at `ioas`.
    pub fn access_replace_ioas(&self, access: &MockAccess, ioas: IoasId) -> Result<()> {
        let payload = t::TestAccessReplaceIoas { ioas_id: ioas.0 };
        self.run(t::IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, access.id(), &payload).map(drop)
    }

    /// `IOMMU_TEST_OP_ACCESS_RW`: copy `buf.len()` bytes at `iova` of the
    /// access's IOAS into `buf`, as a device reading by DMA would
    /// (`MOCK_ACCESS_RW_SLOW_PATH` in `flags`: page by page).
    pub fn access_read(&self, access: &MockAccess, iova: u64, buf: &mut [u8], flags: u32) -> Result<()> {
        let payload = t::TestAccessRw {
            iova,
            length: buf.len() as u64,
            uptr: buf.as_mut_ptr() as u64,
            flags: flags & !t::MOCK_ACCESS_RW_WRITE,
            __pad: 0,
        };
        let mut cmd = IommuTestCmd::new(t::IOMMU_TEST_OP_ACCESS_RW);
        cmd.id = access.id();
        cmd.set_payload(&payload);
        // SAFETY: `uptr` is `buf`, `length` bytes, exclusively borrowed for
        // the call; the op writes no further.
        unsafe { self.raw(&mut cmd) }.map(drop)
    }

    /// `IOMMU_TEST_OP_ACCESS_RW` with `MOCK_ACCESS_RW_WRITE`: copy `buf` to
    /// `iova` of the access's IOAS, as a device writing by DMA would.
    pub fn access_write(&self, access: &MockAccess, iova: u64, buf: &[u8], flags: u32) -> Result<()> {
        let payload = t::TestAccessRw {
            iova,
            length: buf.len() as u64,
            uptr: buf.as_ptr() as u64,
            flags: flags | t::MOCK_ACCESS_RW_WRITE,
            __pad: 0,
        };
        // `uptr` is `buf`, `length` bytes, only read.
        self.run(t::IOMMU_TEST_OP_ACCESS_RW, access.id(), &payload).map(drop)
    }

    /// `IOMMU_TEST_OP_ACCESS_PAGES`: pin the pages behind
    /// `[iova, iova + length)` of the access's IOAS (writable with
    /// `MOCK_FLAGS_ACCESS_WRITE`) and check they are the pages of this
    /// process at `uptr` (0: no check); returns the pin's ID for
    /// [`destroy_access_pages`](Selftest::destroy_access_pages).
    pub fn access_pages(&self, access: &MockAccess, iova: u64, length: u64, uptr: u64, flags: u32) -> Result<u32> {
        let payload = t::TestAccessPages { flags, out_access_pages_id: 0, iova, length, uptr };
        // The op compares page frames behind `uptr`; a bad one is EFAULT.
        let cmd = self.run(t::IOMMU_TEST_OP_ACCESS_PAGES, access.id(), &payload)?;
        Ok(cmd.payload_as::<t::TestAccessPages>().out_access_pages_id)
    }

    /// `IOMMU_TEST_OP_DESTROY_ACCESS_PAGES`: release pin `pages_id` of
    /// `access`.
    pub fn destroy_access_pages(&self, access: &MockAccess, pages_id: u32) -> Result<()> {
        let payload = t::TestDestroyAccessPages { access_pages_id: pages_id };
        self.run(t::IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, access.id(), &payload).map(drop)
    }
}
