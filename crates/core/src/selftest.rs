//! The kernel selftest's hooks (`selftest.c`): mock devices behind the mock
//! IOMMU, test accesses, and the checks `IOMMU_TEST_CMD` offers.
//!
//! These are the handles the kernel's own tests use to look inside iommufd;
//! they are also handy for our tests and benchmarks, so they live in the
//! engine (the dispatcher only decodes the ioctl).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_abi::test_cmd as t;
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::mock::{MockDomain, MockNested, MOCK_IO_PAGE_SIZE};
use uiommufd_hw::Domain;
use uiommufd_memory::{frames, user};

use crate::access::{Access, PinnedRange};
use crate::device::{self, Device};
use crate::error::{einval, eio, enomem, eopnotsupp, ErrnoExt, Error, Result};
use crate::hwpt::HwptPaging;
use crate::io_pagetable::{Owner, UnmapNotify};
use crate::ioas::Ioas;
use crate::object::{Borrowed, Dep, ObjHeader, Object, ObjectId, ObjectKind, ObjectType, Pending};
use crate::pages::page_size;
use crate::{Errno, Iommufd};

/// `iommufd_test_memory_limit`: bounds the engine's internal batches.
static TEMP_MEMORY_LIMIT: AtomicUsize = AtomicUsize::new(65536);

/// `IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT`.
pub fn set_temp_memory_limit(limit: u32) -> Result<()> {
    // One batch entry is a PFN (u64) and a count (u32).
    if (limit as usize) < 8 + 4 {
        return Err(einval("limit below one batch entry"));
    }
    TEMP_MEMORY_LIMIT.store(limit as usize, Ordering::Relaxed);
    Ok(())
}

/// The current batch memory limit in bytes.
pub fn temp_memory_limit() -> usize {
    TEMP_MEMORY_LIMIT.load(Ordering::Relaxed)
}

/// The mock IOMMU's devices live with the rest of the mock driver.
pub use uiommufd_hw::mock::MockDevice;

/// `IOMMUFD_OBJ_SELFTEST`: a mock device bound to this iommufd.
pub struct SelftestDevice {
    hdr: ObjHeader,
    mock: Arc<MockDevice>,
    idev_id: ObjectId,
    idev: Mutex<Option<Dep<Device>>>,
    ctx: Weak<Iommufd>,
}

impl std::fmt::Debug for SelftestDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelftestDevice").field("id", &self.hdr.id()).field("idev", &self.idev_id).finish()
    }
}

impl SelftestDevice {
    pub fn idev_id(&self) -> ObjectId {
        self.idev_id
    }

    pub fn mock(&self) -> &Arc<MockDevice> {
        &self.mock
    }

    fn idev(&self) -> MutexGuard<'_, Option<Dep<Device>>> {
        self.idev.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bound device object.
    pub fn device(&self) -> Option<Arc<Device>> {
        self.idev().as_ref().map(|d| Arc::clone(d.arc()))
    }

    /// Detach and unbind (what destroying the object does).
    fn unbind(&self) {
        let Some(dep) = self.idev().take() else { return };
        let ctx = self.ctx.upgrade();
        if let Some(ctx) = &ctx {
            dep.detach_all(ctx);
            // Unbinding takes the device's vDEVICE with it.
            crate::viommu::device_pre_destroy(ctx, &dep);
        }
        // That very object: its ID may belong to another by now if the user
        // destroyed it once unbound (the `Weak` keeps its address unique).
        let me = Arc::downgrade(dep.arc());
        drop(dep);
        if let Some(ctx) = ctx {
            let _ = ctx.objects().destroy_wait_if(
                self.idev_id,
                |o| matches!(o, Object::Device(d) if std::ptr::eq(Arc::as_ptr(d), me.as_ptr())),
            );
        }
    }
}

impl Drop for SelftestDevice {
    fn drop(&mut self) {
        self.unbind();
    }
}

impl ObjectType for SelftestDevice {
    const KIND: ObjectKind = ObjectKind::Selftest;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Selftest(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Selftest(o) => Some(o),
            _ => None,
        }
    }
}

/// A mock device created but not yet published (see [`mock_domain`]).
pub struct PendingMockDevice<'a> {
    pending: Option<Pending<'a>>,
    stdev: Arc<SelftestDevice>,
    pub stdev_id: ObjectId,
    pub hwpt_id: ObjectId,
    pub idev_id: ObjectId,
}

impl PendingMockDevice<'_> {
    /// Make the mock device visible; nothing can fail after this.
    pub fn publish(mut self) {
        if let Some(p) = self.pending.take() {
            p.publish(Arc::clone(&self.stdev));
        }
    }
}

impl Drop for PendingMockDevice<'_> {
    fn drop(&mut self) {
        if self.pending.is_some() {
            // Not published: undo the attach and the bind.
            self.stdev.unbind();
        }
    }
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN(_FLAGS)`: create a mock device, bind it and
/// attach it to `pt_id` (an IOAS or a HWPT).
pub fn mock_domain(ctx: &Arc<Iommufd>, pt_id: ObjectId, dev_flags: u32) -> Result<PendingMockDevice<'_>> {
    let pending = ctx.objects().reserve()?;
    if dev_flags & !ctx.release().mock_device_flags != 0 {
        return Err(einval("mock device flags unknown to this release"));
    }
    let mock = Arc::new(MockDevice::with_profile(dev_flags, &ctx.release().mock).ctx("unknown mock device flags")?);
    let (idev_id, dep) = device::bind(ctx, Arc::clone(&mock) as Arc<dyn IommuDevice>)?;
    let stdev = Arc::new(SelftestDevice {
        hdr: ObjHeader::new(pending.id()),
        mock,
        idev_id,
        idev: Mutex::new(Some(dep)),
        ctx: Arc::downgrade(ctx),
    });
    let hwpt_id = {
        let idev = stdev.device().expect("just bound");
        match idev.change_pt(ctx, crate::device::NO_PASID, pt_id, false) {
            Ok(id) => id,
            Err(e) => {
                stdev.unbind();
                return Err(e);
            }
        }
    };
    let stdev_id = pending.id();
    Ok(PendingMockDevice { pending: Some(pending), stdev, stdev_id, hwpt_id, idev_id })
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`: returns the new HWPT ID.
pub fn mock_domain_replace(ctx: &Iommufd, stdev_id: ObjectId, pt_id: ObjectId) -> Result<ObjectId> {
    let stdev = ctx.get::<SelftestDevice>(stdev_id)?;
    let idev = stdev.device().ok_or(einval("mock device is unbound"))?;
    idev.change_pt(ctx, crate::device::NO_PASID, pt_id, true)
}

/// `IOMMU_TEST_OP_ADD_RESERVED`.
pub fn add_reserved(ctx: &Iommufd, ioas_id: ObjectId, start: u64, length: u64) -> Result<()> {
    if length == 0 {
        return Err(einval("length is zero"));
    }
    let last = start.checked_add(length - 1).ok_or(crate::error::eoverflow("range wraps"))?;
    let ioas = ctx.get::<Ioas>(ioas_id)?;
    ioas.iopt().reserve(start, last, Owner::Test)
}

/// The mock domain behind paging HWPT `id` (`get_md_pagetable`).
pub fn mock_domain_of(ctx: &Iommufd, id: ObjectId) -> Result<(Borrowed<HwptPaging>, Arc<dyn Domain>)> {
    let hwpt = ctx.get::<HwptPaging>(id)?;
    if hwpt.domain().as_any().downcast_ref::<MockDomain>().is_none() {
        return Err(einval("not a mock domain"));
    }
    let d = Arc::clone(hwpt.domain());
    Ok((hwpt, d))
}

/// `IOMMU_TEST_OP_MD_CHECK_MAP`: every mock page of `[iova, iova + length)`
/// must map the frame under the user address at the same offset.
pub fn md_check_map(ctx: &Iommufd, hwpt_id: ObjectId, iova: u64, length: u64, uptr: u64) -> Result<()> {
    let aligned = |mps: u64| {
        if !iova.is_multiple_of(mps)
            || !length.is_multiple_of(mps)
            || !uptr.is_multiple_of(mps)
            || uptr.checked_add(length).is_none()
        {
            return Err(einval("range must be aligned to the mock domain's page size"));
        }
        Ok(())
    };
    let lookup_first = ctx.release().md_check_map_lookup_first;
    if !lookup_first {
        aligned(MOCK_IO_PAGE_SIZE)?;
    }
    let (_hwpt, domain) = mock_domain_of(ctx, hwpt_id)?;
    let mps =
        if lookup_first { domain.pgsize_bitmap() & domain.pgsize_bitmap().wrapping_neg() } else { MOCK_IO_PAGE_SIZE };
    if lookup_first {
        aligned(mps)?;
    }
    let mock = domain.as_any().downcast_ref::<MockDomain>().expect("checked");
    let ps = page_size();
    let mut user_frames = UserFrames::default();
    let mut off = 0;
    while off < length {
        let va = uptr + off;
        user::probe_user_page(va & !(ps - 1)).ctx("user page is not mapped")?;
        let pfn = user_frames.pfn(va).ok_or(einval("user page is not pinned"))?;
        let want = pfn * ps + va % ps;
        match mock.entry_at(iova.wrapping_add(off)) {
            Some(e) if e.paddr == want => {}
            _ => return Err(einval("mock domain does not map the user page there")),
        }
        off += mps;
    }
    Ok(())
}

/// The frames behind user addresses as `get_user_pages` finds them: a page
/// pinned in place, or a page of a file the engine maps for
/// `IOMMU_IOAS_MAP_FILE` reached through the program's own shared mapping
/// of that file (one physical page, two addresses). Remembers the last
/// file alias, so walking a range reads the program's map once.
#[derive(Default)]
struct UserFrames {
    /// `(start, end, engine address of start)` of the last alias found.
    alias: Option<(u64, u64, u64)>,
}

impl UserFrames {
    /// The engine address of the file page the program reaches at `va`.
    fn alias(&mut self, va: u64) -> Option<u64> {
        match self.alias {
            Some((start, end, engine)) if (start..end).contains(&va) => Some(engine + (va - start)),
            _ => {
                let (engine, end) = uiommufd_memory::filemap::alias(va)?;
                self.alias = Some((va, end, engine));
                Some(engine)
            }
        }
    }

    fn pfn(&mut self, va: u64) -> Option<u64> {
        if let Some(pfn) = frames::pfn_at(va) {
            return Some(pfn);
        }
        frames::mapped_pfn_at(self.alias(va)?)
    }

    /// How many times the page at `va` is pinned.
    fn pins(&mut self, va: u64) -> u32 {
        if frames::pfn_at(va).is_some() {
            return frames::pin_count(va);
        }
        self.alias(va).map_or(0, frames::mapped_pin_count)
    }
}

/// `IOMMU_TEST_OP_MD_CHECK_REFS`: every page of `[uptr, uptr + length)`
/// must be present and pinned exactly `refs` times.
pub fn md_check_refs(uptr: u64, length: u64, refs: u32) -> Result<()> {
    let ps = page_size();
    if !length.is_multiple_of(ps) || !uptr.is_multiple_of(ps) || uptr.checked_add(length).is_none() {
        return Err(einval("range must be page aligned and must not wrap"));
    }
    let mut user_frames = UserFrames::default();
    let mut va = uptr;
    while va < uptr + length {
        user::probe_user_page(va).ctx("page is not mapped")?;
        if user_frames.pins(va) != refs {
            return Err(eio("pin count differs"));
        }
        va += ps;
    }
    Ok(())
}

/// An access created by `IOMMU_TEST_OP_CREATE_ACCESS` (`struct
/// selftest_access`); user space reaches it through a file descriptor.
pub struct SelftestAccess {
    access: Arc<Access>,
    /// The unmap callback the access reaches through a `Weak`.
    _driver: Arc<dyn UnmapNotify>,
    access_id: ObjectId,
    /// The driver's edge on the access object (dropped on release).
    edge: Mutex<Option<Dep<Access>>>,
    items: Mutex<Items>,
    ctx: Weak<Iommufd>,
    released: AtomicBool,
}

#[derive(Default)]
struct Items {
    next_id: u32,
    list: Vec<Item>,
}

struct Item {
    id: u32,
    iova: u64,
    length: u64,
    range: PinnedRange,
}

impl std::fmt::Debug for SelftestAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelftestAccess").field("access", &self.access_id).finish()
    }
}

/// The driver side of a selftest access: returns pins when asked.
struct Driver(Weak<SelftestAccess>);

impl UnmapNotify for Driver {
    fn unmap(&self, iova: u64, length: u64) {
        if let Some(s) = self.0.upgrade() {
            s.unmap(iova, length);
        }
    }
}

impl SelftestAccess {
    fn items(&self) -> MutexGuard<'_, Items> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `iommufd_test_access_unmap`: drop every item touching the range.
    fn unmap(&self, iova: u64, length: u64) {
        let last = iova.saturating_add(length.saturating_sub(1));
        let mut items = self.items();
        let (gone, keep): (Vec<Item>, Vec<Item>) = std::mem::take(&mut items.list)
            .into_iter()
            .partition(|it| !(iova > it.iova + it.length - 1 || last < it.iova));
        items.list = keep;
        for it in gone {
            self.access.unpin(it.range);
        }
    }

    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    /// `IOMMU_TEST_OP_ACCESS_PAGES`: pin and check against `uptr` (0 skips
    /// the check). Returns the item ID.
    pub fn access_pages(&self, iova: u64, length: u64, uptr: u64, flags: u32) -> Result<u32> {
        Self::check_pages_args(length, flags)?;
        if !self.access.needs_pin_pages() {
            return Err(eopnotsupp("access was not created for pinning"));
        }
        let mut items = self.items();
        let range = self.access.pin(iova, length, flags & t::MOCK_FLAGS_ACCESS_WRITE != 0)?;
        if uptr != 0 {
            let ps = page_size();
            let mut va = uptr - (iova - (iova & !(ps - 1)));
            let mut user_frames = UserFrames::default();
            let check = (|| {
                for (pfn, n) in range.pfns() {
                    for i in 0..n {
                        user::probe_user_page(va).ctx("user page is not mapped")?;
                        if user_frames.pfn(va) != Some(pfn + i) {
                            return Err(Error::new(Errno::EBADE, "pinned page differs from the user page"));
                        }
                        va += ps;
                    }
                }
                Ok(())
            })();
            if let Err(e) = check {
                self.access.unpin(range);
                return Err(e);
            }
        }
        let id = items.next_id;
        items.next_id += 1;
        items.list.push(Item { id, iova, length, range });
        Ok(id)
    }

    /// The checks `IOMMU_TEST_OP_ACCESS_PAGES` makes before it looks the
    /// access up: more than 16 MiB `ENOMEM`, unknown flags `EOPNOTSUPP`.
    pub fn check_pages_args(length: u64, flags: u32) -> Result<()> {
        if length > 16 * 1024 * 1024 {
            return Err(enomem("too large for a test access"));
        }
        if flags & !(t::MOCK_FLAGS_ACCESS_WRITE | t::MOCK_FLAGS_ACCESS_SYZ) != 0 {
            return Err(eopnotsupp("unknown access flags"));
        }
        Ok(())
    }

    /// The checks `IOMMU_TEST_OP_ACCESS_RW` makes before it looks the access
    /// up, as for [`check_pages_args`](Self::check_pages_args).
    pub fn check_rw_args(length: u64, flags: u32) -> Result<()> {
        if length > 16 * 1024 * 1024 {
            return Err(enomem("too large for a test access"));
        }
        if flags & !(t::MOCK_ACCESS_RW_WRITE | t::MOCK_ACCESS_RW_SLOW_PATH | t::MOCK_FLAGS_ACCESS_SYZ) != 0 {
            return Err(eopnotsupp("unknown access flags"));
        }
        Ok(())
    }

    /// Undo [`SelftestAccess::access_pages`] (called on reply failure).
    pub fn forget_pages(&self, id: u32) {
        let _ = self.destroy_access_pages(id);
    }

    /// `IOMMU_TEST_OP_DESTROY_ACCESS_PAGES`.
    pub fn destroy_access_pages(&self, id: u32) -> Result<()> {
        let mut items = self.items();
        let pos =
            items.list.iter().position(|i| i.id == id).ok_or(crate::error::enoent("no such access pages item"))?;
        let it = items.list.remove(pos);
        self.access.unpin(it.range);
        Ok(())
    }

    /// `IOMMU_TEST_OP_ACCESS_RW`: copy between the user buffer at `ubuf`
    /// and IOVA.
    pub fn access_rw(&self, iova: u64, length: u64, ubuf: u64, flags: u32) -> Result<()> {
        Self::check_rw_args(length, flags)?;
        let write = flags & t::MOCK_ACCESS_RW_WRITE != 0;
        let slow = flags & t::MOCK_ACCESS_RW_SLOW_PATH != 0;
        let mut tmp = vec![0u8; length as usize];
        if write {
            user::copy_from_user(&mut tmp, ubuf).ctx("reading the user buffer")?;
        }
        self.access.rw(iova, &mut tmp, write, slow)?;
        if !write {
            user::copy_to_user(ubuf, &tmp).ctx("writing the user buffer")?;
        }
        Ok(())
    }

    /// `IOMMU_TEST_OP_ACCESS_REPLACE_IOAS`.
    pub fn replace_ioas(&self, ctx: &Iommufd, ioas_id: ObjectId) -> Result<()> {
        let ioas = ctx.get::<Ioas>(ioas_id)?;
        self.access.replace(&ioas)
    }

    /// The file was closed: return every pin, detach, destroy the access.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        self.unmap(0, u64::MAX);
        let _ = self.access.change_ioas(None);
        let edge = self.edge.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(edge);
        if let Some(ctx) = self.ctx.upgrade() {
            let me = Arc::as_ptr(&self.access);
            let _ = ctx.objects().destroy_wait_if(
                self.access_id,
                |o| matches!(o, Object::Access(a) if std::ptr::eq(Arc::as_ptr(a), me)),
            );
        }
    }
}

impl Drop for SelftestAccess {
    fn drop(&mut self) {
        self.release();
    }
}

/// `IOMMU_TEST_OP_CREATE_ACCESS` (engine half): create the access object,
/// attach it to `ioas_id`. The caller wraps it in a file descriptor.
pub fn create_access(ctx: &Arc<Iommufd>, ioas_id: ObjectId, flags: u32) -> Result<Arc<SelftestAccess>> {
    if flags & !t::MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0 {
        return Err(eopnotsupp("unknown access flags"));
    }
    let needs_pin = flags & t::MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0;
    let pending = ctx.objects().reserve()?;
    let access_id = pending.id();
    let st = Arc::new_cyclic(|weak: &Weak<SelftestAccess>| {
        // The access reaches its driver through a Weak; the driver reaches us
        // through a Weak: no cycle, and we own both.
        let driver: Arc<dyn UnmapNotify> = Arc::new(Driver(weak.clone()));
        let access = Arc::new(Access::new(access_id, needs_pin, Arc::downgrade(&driver)));
        SelftestAccess {
            _driver: driver,
            edge: Mutex::new(Some(Dep::new(&Borrowed::detached(&access)))),
            access,
            access_id,
            items: Mutex::new(Items::default()),
            ctx: Arc::downgrade(ctx),
            released: AtomicBool::new(false),
        }
    });
    pending.publish(Arc::clone(&st.access));
    let ioas = ctx.get::<Ioas>(ioas_id);
    let attach = ioas.and_then(|ioas| st.access.change_ioas(Some(&ioas)));
    if let Err(e) = attach {
        st.release();
        return Err(e);
    }
    Ok(st)
}

/// `IOMMU_TEST_OP_DIRTY`: mark dirty the mock pages whose bit is set in the
/// user bitmap at `uptr` (one bit per `page_size` from `iova`). Returns how
/// many marked pages were mapped.
pub fn dirty(ctx: &Iommufd, hwpt_id: ObjectId, iova: u64, length: u64, page_size: u64, uptr: u64) -> Result<u64> {
    if page_size == 0
        || length == 0
        || !iova.is_multiple_of(page_size)
        || !length.is_multiple_of(page_size)
        || uptr == 0
    {
        return Err(einval("bad dirty range"));
    }
    let max = length / page_size;
    if max > (16 << 20) * 8 {
        return Err(crate::error::eoverflow("bitmap too large"));
    }
    let (_hwpt, domain) = mock_domain_of(ctx, hwpt_id)?;
    let mock = domain.as_any().downcast_ref::<MockDomain>().expect("checked");
    if !mock.dirty_tracking() {
        return Err(einval("dirty tracking is off"));
    }
    let mut bits = vec![0u8; max.div_ceil(8) as usize];
    user::copy_from_user(&mut bits, uptr).ctx("reading the bitmap")?;
    let mut count = 0;
    for i in 0..max {
        if bits[(i / 8) as usize] & (1 << (i % 8)) != 0 && mock.test_dirty(iova.wrapping_add(i * page_size)) {
            count += 1;
        }
    }
    Ok(count)
}

/// `IOMMU_TEST_OP_MD_CHECK_IOTLB`: mock IOTLB entry `iotlb_id` of nested
/// HWPT `hwpt_id` must hold `iotlb`.
pub fn md_check_iotlb(ctx: &Iommufd, hwpt_id: ObjectId, iotlb_id: u32, iotlb: u32) -> Result<()> {
    let hwpt = ctx.get::<crate::hwpt::HwptNested>(hwpt_id)?;
    let nested = hwpt.domain().as_any().downcast_ref::<MockNested>().ok_or(einval("not a mock nested domain"))?;
    match nested.iotlb(iotlb_id) {
        Some(v) if v == iotlb => Ok(()),
        _ => Err(einval("mock IOTLB entry differs")),
    }
}

/// `IOMMU_TEST_OP_TRIGGER_IOPF`: the mock device `dev_id` raises one page
/// request (a complete group).
pub fn trigger_iopf(ctx: &Iommufd, dev_id: ObjectId, pasid: u32, grpid: u32, perm: u32, addr: u64) -> Result<()> {
    let idev = ctx.get::<Device>(dev_id)?;
    if MockDevice::of(idev.dev()).is_none() {
        return Err(einval("not a mock device"));
    }
    let mut flags = uiommufd_abi::IOMMU_PGFAULT_FLAGS_LAST_PAGE;
    if pasid != crate::device::NO_PASID {
        flags |= uiommufd_abi::IOMMU_PGFAULT_FLAGS_PASID_VALID;
    }
    // The mock IOMMU keeps PASID tables in user space (`user_pasid_table`).
    idev.report_fault(crate::fault::PageRequest { flags, pasid, grpid, perm, addr }, true);
    Ok(())
}

/// `IOMMU_TEST_OP_DEV_CHECK_CACHE`: cache word `cache_id` of the mock
/// device behind device object `idev_id` must hold `cache`.
pub fn dev_check_cache(ctx: &Iommufd, idev_id: ObjectId, cache_id: u32, cache: u32) -> Result<()> {
    let idev = ctx.get::<Device>(idev_id)?;
    let mock = MockDevice::of(idev.dev()).ok_or(einval("not a mock device"))?;
    match mock.cache(cache_id) {
        Some(v) if v == cache => Ok(()),
        _ => Err(einval("mock device cache word differs")),
    }
}

/// `IOMMU_TEST_OP_TRIGGER_VEVENT`: the mock device behind `dev_id` reports
/// one event to the vIOMMU it is attached through.
pub fn trigger_vevent(ctx: &Iommufd, dev_id: ObjectId) -> Result<()> {
    let idev = ctx.get::<Device>(dev_id)?;
    let mock = MockDevice::of(idev.dev()).ok_or(einval("not a mock device"))?;
    mock.trigger_vevent().ctx("the mock device could not report a vIOMMU event")
}

/// `iommufd_test_get_selftest_obj`: the bound device of mock device
/// `stdev_id`.
fn stdev_device(ctx: &Iommufd, stdev_id: ObjectId) -> Result<Arc<Device>> {
    let stdev = ctx.get::<SelftestDevice>(stdev_id)?;
    stdev.device().ok_or(einval("mock device is unbound"))
}

/// `IOMMU_TEST_OP_PASID_ATTACH`: attach `pasid` of mock device `stdev_id`
/// to `pt_id`; returns the HWPT used.
pub fn pasid_attach(ctx: &Iommufd, stdev_id: ObjectId, pasid: u32, pt_id: ObjectId) -> Result<ObjectId> {
    stdev_device(ctx, stdev_id)?.change_pt(ctx, pasid, pt_id, false)
}

/// `IOMMU_TEST_OP_PASID_REPLACE`: move `pasid` of mock device `stdev_id` to
/// `pt_id`; returns the HWPT used.
pub fn pasid_replace(ctx: &Iommufd, stdev_id: ObjectId, pasid: u32, pt_id: ObjectId) -> Result<ObjectId> {
    stdev_device(ctx, stdev_id)?.change_pt(ctx, pasid, pt_id, true)
}

/// `IOMMU_TEST_OP_PASID_DETACH`: detach `pasid` (nothing if not attached).
pub fn pasid_detach(ctx: &Iommufd, stdev_id: ObjectId, pasid: u32) -> Result<()> {
    stdev_device(ctx, stdev_id)?.detach(ctx, pasid);
    Ok(())
}

/// `IOMMU_TEST_OP_PASID_CHECK_HWPT`: `pasid` of mock device `stdev_id` must
/// be attached to HWPT `hwpt_id`, or to nothing when `hwpt_id` is 0.
pub fn pasid_check_hwpt(ctx: &Iommufd, stdev_id: ObjectId, pasid: u32, hwpt_id: ObjectId) -> Result<()> {
    let attached = stdev_device(ctx, stdev_id)?.attached(pasid);
    if hwpt_id == 0 {
        return match attached {
            Some(_) => Err(einval("the PASID is attached")),
            None => Ok(()),
        };
    }
    match ctx.objects().kind_of(hwpt_id) {
        None => return Err(crate::error::enoent("no object with this ID")),
        Some(ObjectKind::HwptPaging | ObjectKind::HwptNested) => {}
        Some(_) => return Err(einval("not a HWPT")),
    }
    if attached != Some(hwpt_id) {
        return Err(einval("the PASID is attached elsewhere"));
    }
    Ok(())
}
