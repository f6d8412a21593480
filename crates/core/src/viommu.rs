//! Virtual IOMMUs (`viommu.c`, `driver.c`): `IOMMUFD_OBJ_VIOMMU`,
//! `IOMMUFD_OBJ_VDEVICE` and `IOMMUFD_OBJ_HW_QUEUE`.
//!
//! A vIOMMU is one driver instance of a guest-visible IOMMU, built on a
//! nesting-parent paging HWPT (the stage 2) for a device of one physical
//! IOMMU. Around it:
//! - nested HWPTs allocated with the vIOMMU as `pt_id` (their stage 1),
//!   which `IOMMU_HWPT_INVALIDATE` can also reach through the vIOMMU's ID;
//! - vDEVICEs: a bound device's virtual ID on that vIOMMU (at most one per
//!   device, one device per virtual ID);
//! - vEVENTQs ([`crate::veventq`]): one per event type;
//! - HW queues: guest queue memory in the nesting parent's IOAS that the
//!   hardware reads by physical address.
//!
//! Dependency edges (`IOMMU_DESTROY` answers `EBUSY` while they exist): the
//! vIOMMU holds its parent HWPT; nested HWPTs, vDEVICEs, vEVENTQs and HW
//! queues hold the vIOMMU; a HW queue may hold another one the driver says
//! it depends on; a HW queue holds the internal access pinning its memory.
//!
//! A vDEVICE does not keep its device from going away: unbinding the device
//! destroys the vDEVICE first and leaves its ID as a tombstone (unusable and
//! not reused until the context closes), as mainline's
//! `iommufd_device_pre_destroy` does.
//!
//! HW queue memory is pinned through an internal access object (it takes an
//! object ID, as in the kernel, and cannot be destroyed by user space) and
//! must be physically contiguous (`EFAULT`). The pin locks its areas, so an
//! unmap of that range fails with `EBUSY` while the queue exists, as the
//! kernel's per-area lock count makes it.
//!
//! Driver mmap regions (`out_mmap_offset`/`out_mmap_length` of the mock
//! vIOMMU) live in the context's [`crate::mmap::MmapSpace`]; `mmap(2)` of
//! the iommufd file maps them, and a mapped region keeps its vIOMMU from
//! being destroyed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockWriteGuard, Weak};

use uiommufd_abi as abi;
use uiommufd_hw::device::{IommuDevice, ViommuCore, ViommuDriver};
use uiommufd_hw::{Domain, UserData, UserDataArray};

use crate::access::{Access, PinnedRange};
use crate::device::Device;
use crate::error::{eexist, einval, enoent, eopnotsupp, eoverflow, ErrnoExt, Error, Result};
use crate::hwpt::HwptPaging;
use crate::io_pagetable::UnmapNotify;
use crate::object::{Borrowed, Dep, ObjHeader, Object, ObjectId, ObjectKind, ObjectType, Pending};
use crate::pages::page_size;
use crate::veventq::Veventq;
use crate::{Errno, Iommufd};

/// `struct iommufd_viommu`.
pub struct Viommu {
    hdr: ObjHeader,
    viommu_type: u32,
    hwpt: Dep<HwptPaging>,
    iommu_instance: usize,
    /// Set once the driver accepted the vIOMMU (before publication).
    driver: OnceLock<Arc<dyn ViommuDriver>>,
    /// `viommu->vdevs`: virtual ID -> vDEVICE.
    vdevs: Mutex<BTreeMap<u64, VdevEntry>>,
    /// `viommu->veventqs` under `veventqs_rwsem`, with each queue's type.
    veventqs: RwLock<Vec<(u32, Weak<Veventq>)>>,
    /// HW queues by index, to resolve the dependencies drivers ask for.
    hw_queues: Mutex<BTreeMap<u32, Weak<HwQueue>>>,
    /// The context's mmap space, where the driver registers its regions.
    mmaps: Arc<crate::mmap::MmapSpace>,
    me: Weak<Viommu>,
}

/// One vDEVICE of a vIOMMU, with its device at hand: lookups never upgrade
/// the vDEVICE under the lock (its teardown takes the same lock).
struct VdevEntry {
    vdev: Weak<Vdevice>,
    dev: Arc<dyn IommuDevice>,
}

impl VdevEntry {
    fn live(&self) -> bool {
        self.vdev.strong_count() != 0
    }
}

impl std::fmt::Debug for Viommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viommu").field("id", &self.id()).field("type", &self.viommu_type).finish()
    }
}

impl Viommu {
    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn viommu_type(&self) -> u32 {
        self.viommu_type
    }

    /// The nesting-parent HWPT.
    pub fn parent(&self) -> &Arc<HwptPaging> {
        self.hwpt.arc()
    }

    /// The driver half (`viommu->ops`).
    pub fn driver(&self) -> Option<&Arc<dyn ViommuDriver>> {
        self.driver.get()
    }

    /// The virtual IDs that have a vDEVICE.
    pub fn virt_ids(&self) -> Vec<u64> {
        self.vdevs_lock().iter().filter(|(_, e)| e.live()).map(|(&id, _)| id).collect()
    }

    fn vdevs_lock(&self) -> MutexGuard<'_, BTreeMap<u64, VdevEntry>> {
        self.vdevs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hw_queues_lock(&self) -> MutexGuard<'_, BTreeMap<u32, Weak<HwQueue>>> {
        self.hw_queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event queue list, for changes (`down_write(&veventqs_rwsem)`).
    pub(crate) fn veventqs_write(&self) -> RwLockWriteGuard<'_, Vec<(u32, Weak<Veventq>)>> {
        self.veventqs.write().unwrap_or_else(|p| p.into_inner())
    }

    /// `iommufd_viommu_alloc_hwpt_nested`, the checks before the object
    /// exists: the device must sit behind this vIOMMU's IOMMU (`EINVAL`),
    /// flags may only be `FAULT_ID_VALID`/`ALLOC_PASID`, driver data is
    /// required, and the driver must build nested domains (`EOPNOTSUPP`).
    pub fn check_nested_alloc(&self, idev: &Device, flags: u32, data_len: u32) -> Result<()> {
        if self.iommu_instance != idev.dev().iommu_instance() {
            return Err(einval("the device is behind another IOMMU than the vIOMMU"));
        }
        if flags & !(abi::IOMMU_HWPT_FAULT_ID_VALID | abi::IOMMU_HWPT_ALLOC_PASID) != 0 {
            return Err(eopnotsupp("nested HWPTs take only FAULT_ID_VALID/PASID"));
        }
        if data_len == 0 {
            return Err(eopnotsupp("a nested HWPT needs driver data"));
        }
        if self.driver().is_none() {
            return Err(eopnotsupp("the vIOMMU has no driver"));
        }
        Ok(())
    }

    /// The driver's nested domain for `flags` (without `FAULT_ID_VALID`).
    pub fn alloc_domain_nested(&self, flags: u32, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>> {
        let driver = self.driver().ok_or(eopnotsupp("the vIOMMU has no driver"))?;
        driver.alloc_domain_nested(flags, data).ctx("the driver refused the nested domain")
    }

    /// The event queue of `veventq_type`, if any. (The strong reference is
    /// taken under the lock but outlives it, so a queue's teardown never
    /// runs while the list is locked.)
    pub fn veventq(&self, veventq_type: u32) -> Option<Arc<Veventq>> {
        let list = self.veventqs.read().unwrap_or_else(|p| p.into_inner());
        list.iter().find(|(ty, w)| *ty == veventq_type && w.strong_count() != 0).and_then(|(_, w)| w.upgrade())
    }
}

impl ViommuCore for Viommu {
    fn report_event(&self, veventq_type: u32, data: &[u8]) -> std::result::Result<(), Errno> {
        if data.is_empty() {
            return Err(Errno::EINVAL);
        }
        let queue = self.veventq(veventq_type).ok_or(Errno::EOPNOTSUPP)?;
        queue.report(data);
        Ok(())
    }

    fn find_dev(&self, virt_id: u64) -> Option<Arc<dyn IommuDevice>> {
        self.vdevs_lock().get(&virt_id).filter(|e| e.live()).map(|e| Arc::clone(&e.dev))
    }

    fn vdev_id(&self, dev: &dyn IommuDevice) -> Option<u64> {
        let vdevs = self.vdevs_lock();
        vdevs.iter().find_map(|(&id, e)| {
            (e.live() && std::ptr::addr_eq(Arc::as_ptr(&e.dev), dev as *const dyn IommuDevice)).then_some(id)
        })
    }

    /// A region without memory behind it (its `mmap` is `ENODEV`).
    fn alloc_mmap(&self, length: u64) -> std::result::Result<u64, Errno> {
        let ps = page_size();
        let length = length.checked_next_multiple_of(ps).ok_or(Errno::EOVERFLOW)?;
        self.mmaps.alloc(length, None, None, self.me.clone())
    }

    fn alloc_mmap_backed(
        &self,
        length: u64,
        backing: std::os::fd::OwnedFd,
        driver_view: Option<std::ops::Range<u64>>,
    ) -> std::result::Result<u64, Errno> {
        self.mmaps.alloc(length, Some(backing), driver_view, self.me.clone())
    }

    fn mmap_in_use(&self, offset: u64) -> bool {
        self.mmaps.in_use(offset)
    }
}

impl Drop for Viommu {
    fn drop(&mut self) {
        self.mmaps.release_owner(self);
    }
}

impl ObjectType for Viommu {
    const KIND: ObjectKind = ObjectKind::Viommu;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Viommu(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Viommu(o) => Some(o),
            _ => None,
        }
    }
}

/// Writes driver data back to the user's buffer (`iommu_copy_struct_to_user`).
pub type WriteBack<'a> = dyn FnMut(&[u8]) -> std::result::Result<(), Errno> + 'a;

/// `IOMMU_VIOMMU_ALLOC` (engine half), checked in the kernel's order: flags
/// or the default type are `EOPNOTSUPP`, an unknown device `ENOENT`, a type
/// the driver lacks `EOPNOTSUPP`, an unknown paging HWPT `ENOENT`, one that
/// is not a nesting parent `EINVAL`; then the driver's own answer. `data`
/// is the driver data when the user gave some; what the driver writes back
/// goes through `write_back` (`EFAULT` fails the allocation). The caller
/// replies and publishes.
pub fn viommu_alloc<'c>(
    ctx: &'c Iommufd,
    flags: u32,
    viommu_type: u32,
    dev_id: ObjectId,
    hwpt_id: ObjectId,
    mut data: Option<UserData<'_>>,
    write_back: &mut WriteBack<'_>,
) -> Result<(Pending<'c>, Arc<Viommu>)> {
    if flags != 0 || viommu_type == abi::IOMMU_VIOMMU_TYPE_DEFAULT {
        return Err(eopnotsupp("VIOMMU_ALLOC takes no flags and a non-default type"));
    }
    let idev = ctx.get::<Device>(dev_id)?;
    if !idev.dev().viommu_supported(viommu_type) {
        return Err(eopnotsupp("the device's IOMMU has no vIOMMU of this type"));
    }
    let hwpt = ctx.get::<HwptPaging>(hwpt_id)?;
    if !hwpt.nest_parent() {
        return Err(einval("the HWPT is not a nesting parent"));
    }
    let pending = ctx.objects().reserve()?;
    let viommu = Arc::new_cyclic(|me| Viommu {
        hdr: ObjHeader::new(pending.id()),
        viommu_type,
        hwpt: Dep::new(&hwpt),
        iommu_instance: idev.dev().iommu_instance(),
        driver: OnceLock::new(),
        vdevs: Mutex::default(),
        veventqs: RwLock::default(),
        hw_queues: Mutex::default(),
        mmaps: Arc::clone(ctx.mmap_space()),
        me: me.clone(),
    });
    let me: Weak<Viommu> = Arc::downgrade(&viommu);
    let init =
        idev.dev().viommu_init(viommu_type, hwpt.domain(), data.as_mut(), me).ctx("the driver refused the vIOMMU")?;
    if let Some(out) = &init.user_out {
        write_back(out).ctx("writing the vIOMMU data back")?;
    }
    // Nobody else has seen the vIOMMU yet: the cell is empty.
    let _ = viommu.driver.set(init.driver);
    Ok((pending, viommu))
}

/// `IOMMU_HWPT_INVALIDATE` with a vIOMMU ID: the driver's
/// `cache_invalidate`. On return `array.entry_num` holds the number of
/// requests handled, also on failure.
pub fn cache_invalidate(ctx: &Iommufd, viommu_id: ObjectId, array: &mut UserDataArray<'_>) -> Result<()> {
    let viommu = match ctx.get::<Viommu>(viommu_id) {
        Ok(v) => v,
        Err(e) => {
            array.entry_num = 0;
            return Err(e);
        }
    };
    match viommu.driver() {
        Some(d) if d.can_invalidate() => {
            d.cache_invalidate(array).map_err(|e| Error::new(e, "the driver refused an invalidation request"))
        }
        _ => {
            array.entry_num = 0;
            Err(eopnotsupp("the vIOMMU cannot invalidate"))
        }
    }
}

/// A device's link to its vDEVICE (`idev->vdev`, `idev->destroying`),
/// kept in the device object under its own lock.
#[derive(Debug, Default)]
pub struct VdevLink {
    /// The device is being unbound: no new vDEVICE.
    destroying: bool,
    vdev: Option<(ObjectId, Weak<Vdevice>)>,
}

impl VdevLink {
    /// The ID of the device's vDEVICE, if it has a live one.
    pub fn vdev_id(&self) -> Option<ObjectId> {
        self.vdev.as_ref().filter(|(_, w)| w.strong_count() != 0).map(|(id, _)| *id)
    }
}

/// `struct iommufd_vdevice`.
pub struct Vdevice {
    hdr: ObjHeader,
    viommu: Dep<Viommu>,
    /// Keeps the device object alive, not busy (the kernel's `wait_cnt`).
    idev: Arc<Device>,
    virt_id: u64,
    /// The driver's part (`vdev->destroy` when dropped).
    driver: Mutex<Option<Box<dyn Send + Sync>>>,
}

impl std::fmt::Debug for Vdevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vdevice").field("id", &self.id()).field("virt_id", &self.virt_id).finish()
    }
}

impl Vdevice {
    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn virt_id(&self) -> u64 {
        self.virt_id
    }

    pub fn viommu(&self) -> &Arc<Viommu> {
        self.viommu.arc()
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.idev
    }
}

impl Drop for Vdevice {
    fn drop(&mut self) {
        // `iommufd_vdevice_abort`: the driver's destroy, then give the
        // virtual ID back and unlink the device, in both cases only if they
        // still point at us.
        drop(self.driver.get_mut().unwrap_or_else(|p| p.into_inner()).take());
        let me = self as *const Vdevice;
        {
            let mut vdevs = self.viommu.vdevs_lock();
            if vdevs.get(&self.virt_id).is_some_and(|e| e.vdev.as_ptr() == me) {
                vdevs.remove(&self.virt_id);
            }
        }
        let mut link = self.idev.vdev_link();
        if link.vdev.as_ref().is_some_and(|(_, w)| w.as_ptr() == me) {
            link.vdev = None;
        }
    }
}

impl ObjectType for Vdevice {
    const KIND: ObjectKind = ObjectKind::Vdevice;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Vdevice(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Vdevice(o) => Some(o),
            _ => None,
        }
    }
}

/// A vDEVICE built by [`vdevice_alloc`], published by
/// [`PendingVdevice::publish`] (dropping it undoes everything).
pub struct PendingVdevice<'c> {
    pending: Pending<'c>,
    vdev: Arc<Vdevice>,
}

impl PendingVdevice<'_> {
    pub fn id(&self) -> ObjectId {
        self.pending.id()
    }

    /// Make the vDEVICE visible, unless its device started unbinding since
    /// (then it is dropped: the device takes its vDEVICE with it anyway).
    pub fn publish(self) {
        let PendingVdevice { pending, vdev } = self;
        let idev = Arc::clone(&vdev.idev);
        let link = idev.vdev_link();
        if link.destroying {
            drop(link);
            drop(pending);
            drop(vdev);
            return;
        }
        pending.publish(vdev);
    }
}

/// `IOMMU_VDEVICE_ALLOC` (engine half), checked in the kernel's order: an
/// unknown vIOMMU or device `ENOENT`, a device behind another IOMMU
/// `EINVAL`, a device being unbound `ENOENT`, a device that already has a
/// vDEVICE or a virtual ID already taken `EEXIST`.
pub fn vdevice_alloc(ctx: &Iommufd, viommu_id: ObjectId, dev_id: ObjectId, virt_id: u64) -> Result<PendingVdevice<'_>> {
    // The kernel indexes an xarray with it.
    if usize::try_from(virt_id).is_err() {
        return Err(einval("virt_id does not fit an index"));
    }
    let viommu = ctx.get::<Viommu>(viommu_id)?;
    let idev = ctx.get::<Device>(dev_id)?;
    if viommu.iommu_instance != idev.dev().iommu_instance() {
        return Err(einval("the device is behind another IOMMU than the vIOMMU"));
    }
    let mut link = idev.vdev_link();
    if link.destroying {
        return Err(enoent("the device is being unbound"));
    }
    if link.vdev_id().is_some() {
        return Err(eexist("the device already has a vDEVICE"));
    }
    let pending = ctx.objects().reserve()?;
    let vdev = Arc::new(Vdevice {
        hdr: ObjHeader::new(pending.id()),
        viommu: Dep::new(&viommu),
        idev: Arc::clone(idev.arc()),
        virt_id,
        driver: Mutex::new(None),
    });
    let inserted = {
        let mut vdevs = viommu.vdevs_lock();
        match vdevs.get(&virt_id) {
            Some(e) if e.live() => false,
            _ => {
                let dev = Arc::clone(idev.dev());
                vdevs.insert(virt_id, VdevEntry { vdev: Arc::downgrade(&vdev), dev });
                true
            }
        }
    };
    if !inserted {
        // Unlock before the vDEVICE's teardown takes the same locks.
        drop(link);
        drop(vdev);
        return Err(eexist("the virtual ID is taken on this vIOMMU"));
    }
    // The driver's `vdevice_init`, once the virtual ID is taken.
    if let Some(driver) = viommu.driver() {
        match driver.vdevice_init(idev.dev(), virt_id) {
            Ok(handle) => *vdev.driver.lock().unwrap_or_else(|p| p.into_inner()) = handle,
            Err(e) => {
                drop(link);
                drop(vdev);
                return Err(Error::new(e, "the driver refused the vDEVICE"));
            }
        }
    }
    link.vdev = Some((pending.id(), Arc::downgrade(&vdev)));
    Ok(PendingVdevice { pending, vdev })
}

/// `iommufd_device_pre_destroy`: the device is about to be unbound. No new
/// vDEVICE may appear, and an existing one is destroyed and its ID left as
/// a tombstone.
pub fn device_pre_destroy(ctx: &Iommufd, idev: &Device) {
    let target = {
        let mut link = idev.vdev_link();
        link.destroying = true;
        link.vdev.clone()
    };
    let Some((id, weak)) = target else { return };
    let is_it = |o: &Object| matches!(o, Object::Vdevice(v) if Arc::as_ptr(v) == weak.as_ptr());
    // A short-term borrow of the vDEVICE (another thread's ioctl) ends soon;
    // the kernel waits for it.
    for _ in 0..1000 {
        match ctx.objects().tombstone_if(id, is_it) {
            Err(e) if e.errno == Errno::EBUSY => std::thread::yield_now(),
            _ => return,
        }
    }
}

/// `struct iommufd_hw_queue`.
pub struct HwQueue {
    hdr: ObjHeader,
    viommu: Dep<Viommu>,
    queue_type: u32,
    index: u32,
    base_addr: u64,
    length: u64,
    /// The driver's queue; dropped first.
    driver: Option<Box<dyn Send + Sync>>,
    /// The queue the driver said this one depends on.
    prev: Option<Dep<HwQueue>>,
    /// The internal access pinning the queue memory.
    access: Option<QueueMemory>,
}

impl std::fmt::Debug for HwQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HwQueue").field("id", &self.id()).field("index", &self.index).finish()
    }
}

impl HwQueue {
    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn queue_type(&self) -> u32 {
        self.queue_type
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The queue's nesting-parent IOVA and length, as user space gave them.
    pub fn range(&self) -> (u64, u64) {
        (self.base_addr, self.length)
    }

    /// The object ID of the internal access pinning the queue memory.
    pub fn access_id(&self) -> Option<ObjectId> {
        self.access.as_ref().map(|a| a.access_id)
    }
}

impl Drop for HwQueue {
    fn drop(&mut self) {
        // `iommufd_hw_queue_destroy`: the driver first, then the pins.
        drop(self.driver.take());
        drop(self.prev.take());
        drop(self.access.take());
        let me = self as *const HwQueue;
        let mut queues = self.viommu.hw_queues_lock();
        if queues.get(&self.index).is_some_and(|w| w.as_ptr() == me) {
            queues.remove(&self.index);
        }
    }
}

impl ObjectType for HwQueue {
    const KIND: ObjectKind = ObjectKind::HwQueue;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::HwQueue(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::HwQueue(o) => Some(o),
            _ => None,
        }
    }
}

/// Internal accesses have no driver to ask for their pins back.
struct NoUnmap;

impl UnmapNotify for NoUnmap {
    fn unmap(&self, _iova: u64, _length: u64) {}
}

/// A HW queue's pinned memory: an internal access object (published, held
/// busy) attached to the nesting parent's IOAS, and its pins.
struct QueueMemory {
    ctx: Weak<Iommufd>,
    access: Arc<Access>,
    access_id: ObjectId,
    edge: Option<Dep<Access>>,
    range: Option<PinnedRange>,
}

impl Drop for QueueMemory {
    fn drop(&mut self) {
        // `iommufd_hw_queue_destroy_access`: unpin, detach, destroy.
        if let Some(range) = self.range.take() {
            self.access.unpin(range);
        }
        let _ = self.access.change_ioas(None);
        drop(self.edge.take());
        if let Some(ctx) = self.ctx.upgrade() {
            let me = Arc::as_ptr(&self.access);
            let _ = ctx.objects().destroy_wait_if(
                self.access_id,
                |o| matches!(o, Object::Access(a) if std::ptr::eq(Arc::as_ptr(a), me)),
            );
        }
    }
}

/// `iommufd_hw_queue_alloc_phys`: pin the pages under `[iova, iova +
/// length)` of the nesting parent's IOAS through a new internal access and
/// check they are physically contiguous. Returns the pins and the physical
/// address of `iova`.
fn pin_queue_memory(ctx: &Arc<Iommufd>, viommu: &Viommu, iova: u64, length: u64) -> Result<(QueueMemory, u64)> {
    let ps = page_size();
    let aligned = iova & !(ps - 1);
    let offset = iova - aligned;
    let erange = Error::new(Errno::ERANGE, "the queue range overflows");
    let span = offset.checked_add(length).and_then(|l| l.checked_add(ps - 1)).ok_or(erange)?;
    let span = span / ps * ps;

    let pending = ctx.objects().reserve()?;
    let access_id = pending.id();
    let no_driver: Weak<dyn UnmapNotify> = Weak::<NoUnmap>::new();
    let access = Arc::new(Access::new(access_id, true, no_driver));
    let edge = Dep::new(&Borrowed::detached(&access));
    pending.publish(Arc::clone(&access));
    let mut mem = QueueMemory { ctx: Arc::downgrade(ctx), access, access_id, edge: Some(edge), range: None };

    mem.access.change_ioas(Some(&Borrowed::detached(viommu.parent().ioas())))?;
    let range = mem.access.pin_locked(aligned, span, false)?;
    let runs = range.pfns();
    mem.range = Some(range);
    let mut next = None;
    for &(pfn, npages) in &runs {
        if next.is_some_and(|n| n != pfn) {
            return Err(crate::error::efault("the queue memory is not physically contiguous"));
        }
        next = Some(pfn + npages);
    }
    let first = runs.first().ok_or(enoent("nothing was pinned"))?.0;
    Ok((mem, first * ps + offset))
}

/// `IOMMU_HW_QUEUE_ALLOC` (engine half), checked in the kernel's order:
/// flags or the default type are `EOPNOTSUPP`, length 0 `EINVAL`, a range
/// wrapping around `EOVERFLOW`, an unknown vIOMMU `ENOENT`, a type its
/// driver lacks `EOPNOTSUPP`; then pinning the memory (`ENOENT` for IOVA
/// not mapped, `EFAULT` for discontiguous memory) and the driver's answer.
/// The caller replies and publishes.
pub fn hw_queue_alloc<'c>(
    ctx: &'c Arc<Iommufd>,
    flags: u32,
    viommu_id: ObjectId,
    queue_type: u32,
    index: u32,
    iova: u64,
    length: u64,
) -> Result<(Pending<'c>, Arc<HwQueue>)> {
    if flags != 0 || queue_type == abi::IOMMU_HW_QUEUE_TYPE_DEFAULT {
        return Err(eopnotsupp("HW_QUEUE_ALLOC takes no flags and a non-default type"));
    }
    if length == 0 {
        return Err(einval("length is zero"));
    }
    iova.checked_add(length - 1).ok_or(eoverflow("the queue range wraps"))?;
    let viommu = ctx.get::<Viommu>(viommu_id)?;
    let driver = match viommu.driver() {
        Some(d) if d.hw_queue_supported(queue_type) => Arc::clone(d),
        _ => return Err(eopnotsupp("the vIOMMU has no HW queue of this type")),
    };
    let pending = ctx.objects().reserve()?;
    let (mem, base_pa) = pin_queue_memory(ctx, &viommu, iova, length)?;
    let mut queues = viommu.hw_queues_lock();
    let init = driver.hw_queue_init(queue_type, index, iova, base_pa, length).ctx("the driver refused the HW queue")?;
    let prev = match init.depends_on {
        None => None,
        Some(i) => match queues.get(&i).and_then(Weak::upgrade) {
            Some(q) => Some(Dep::new(&Borrowed::detached(&q))),
            None => {
                drop(queues);
                drop(init);
                return Err(einval("the queue depends on one that does not exist"));
            }
        },
    };
    let queue = Arc::new(HwQueue {
        hdr: ObjHeader::new(pending.id()),
        viommu: Dep::new(&viommu),
        queue_type,
        index,
        base_addr: iova,
        length,
        driver: Some(init.handle),
        prev,
        access: Some(mem),
    });
    queues.insert(index, Arc::downgrade(&queue));
    Ok((pending, queue))
}

#[cfg(test)]
mod tests;
