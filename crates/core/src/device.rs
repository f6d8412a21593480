//! Bound devices and their attachments (`device.c`).
//!
//! Binding a device to an iommufd creates a *device object* (`idev`); the
//! binder (a VFIO cdev, or the selftest's mock device) holds a dependency
//! edge on it until it unbinds, so `IOMMU_DESTROY` of a bound device is
//! `EBUSY`. A bound device has at most one HWPT per PASID; PASID 0
//! (`IOMMU_NO_PASID`) is the requester ID itself. Attaching to an IOAS picks
//! or creates an *auto domain*; attaching to a HWPT uses it as is.
//! Attachment reserves the device's reserved regions in the HWPT's IOAS.
//!
//! PASID rules (mainline's `iommufd_hwpt_pasid_compat`): a PASID may only
//! use a HWPT allocated with `IOMMU_HWPT_ALLOC_PASID`, and while any PASID
//! is attached the requester ID may only use such HWPTs too.
//!
//! Each device forms its own group (the kernel's `iommufd_group` with one
//! member), which is what the mock driver and every emulated device here
//! produce.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_hw::device::{Cap, IommuDevice, PagingRequest, ResvKind};
use uiommufd_memory::dma_fence::Published;

use crate::error::{einval, ErrnoExt, Result};
use crate::fault::PageRequest;
use crate::hwpt::{HwptDep, HwptNested, HwptPaging, PagingFlags};
use crate::io_pagetable::{new_token, Owner};
use crate::ioas::Ioas;
use crate::object::{Borrowed, Dep, ObjHeader, Object, ObjectId, ObjectKind, ObjectType};
use crate::{Errno, Iommufd};

/// The requester ID's own "PASID".
pub const NO_PASID: u32 = 0;

/// `struct iommufd_device`.
pub struct Device {
    hdr: ObjHeader,
    dev: Arc<dyn IommuDevice>,
    /// Owner identity of the reserved ranges this device puts in an IOAS,
    /// and of its fault groups.
    token: u64,
    enforce_cache_coherency: bool,
    /// The group lock: attachments by PASID.
    attach: Mutex<BTreeMap<u32, HwptDep>>,
    ctx: Weak<Iommufd>,
    /// `idev->vdev` and `idev->destroying` (see [`crate::viommu`]).
    vdev: Mutex<crate::viommu::VdevLink>,
    /// The requester ID's domain as DMA sees it, republished on every
    /// change of the RID's attachment (see [`crate::dma`]).
    dma_rid: Arc<Published<Arc<dyn uiommufd_hw::Domain>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("id", &self.id()).field("dev", &self.dev.name()).finish()
    }
}

/// Whether a HWPT may be used with PASIDs.
fn pasid_compat(h: &HwptDep) -> bool {
    match h {
        HwptDep::Paging(p) => p.pasid_compat(),
        HwptDep::Nested(n) => n.pasid_compat(),
    }
}

impl Device {
    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn dev(&self) -> &Arc<dyn IommuDevice> {
        &self.dev
    }

    pub fn enforce_cache_coherency(&self) -> bool {
        self.enforce_cache_coherency
    }

    /// The RID domain cell DMA ports read.
    pub(crate) fn dma_rid(&self) -> &Arc<Published<Arc<dyn uiommufd_hw::Domain>>> {
        &self.dma_rid
    }

    /// Republish the RID's domain after `map` changed at `pasid`.
    fn publish_rid(&self, map: &BTreeMap<u32, HwptDep>, pasid: u32) {
        if pasid == NO_PASID {
            self.dma_rid.replace(map.get(&NO_PASID).map(|h| Arc::clone(h.domain())));
            // Translations ports cached through the old domain are gone:
            // ports' fast paths check the generation alone (the domain key
            // only sorts fills; see `crate::atc::Atc::current`).
            uiommufd_memory::atc::invalidate();
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, HwptDep>> {
        self.attach.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device's link to its vDEVICE (taken before a vIOMMU's locks).
    pub fn vdev_link(&self) -> MutexGuard<'_, crate::viommu::VdevLink> {
        self.vdev.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ID of the HWPT attached at `pasid`.
    pub fn attached(&self, pasid: u32) -> Option<ObjectId> {
        self.lock().get(&pasid).map(|h| h.id())
    }

    /// Every attachment: `(pasid, hwpt_id)`, the requester ID's
    /// ([`NO_PASID`]) first (for tools: `uiommufd inspect`).
    pub fn attachments(&self) -> Vec<(u32, ObjectId)> {
        self.lock().iter().map(|(p, h)| (*p, h.id())).collect()
    }

    /// The domain DMA at `pasid` goes through (`NO_PASID`: the requester
    /// ID), if anything is attached there.
    pub fn dma_domain(&self, pasid: u32) -> Option<Arc<dyn uiommufd_hw::Domain>> {
        self.lock().get(&pasid).map(|h| Arc::clone(h.domain()))
    }

    /// Whether this device's DMA is enforced coherent: its IOMMU can force
    /// snooping, so No Snoop requests cannot bypass the CPU caches and a
    /// guest's `wbinvd` can be a no-op. This is what the kernel's
    /// `vfio_file_enforced_coherent()` answers KVM for a device cdev (the
    /// IOMMU capability); HWPTs allocated for such a device enforce
    /// coherency from before their first map. See [`Device::dma_coherent_now`]
    /// for the attachment's actual mode.
    pub fn enforced_coherent(&self) -> bool {
        self.enforce_cache_coherency
    }

    /// Whether DMA at `pasid` is coherent right now whatever the device's
    /// No Snoop setting: attached to a domain that forces snooping. (A
    /// device that can enforce may still share a non-enforcing HWPT made
    /// for another device, which the kernel allows.) `None` if nothing is
    /// attached there.
    pub fn dma_coherent_now(&self, pasid: u32) -> Option<bool> {
        self.dma_domain(pasid).map(|d| d.enforce_cache_coherency())
    }

    /// The paging HWPT behind the requester ID's attachment.
    pub fn attached_paging(&self) -> Option<Arc<HwptPaging>> {
        self.lock().get(&NO_PASID).map(|h| Arc::clone(h.paging()))
    }

    fn reserve_regions(&self, ioas: &Ioas) -> Result<()> {
        if uiommufd_memory::failpoint::should_fail() {
            return Err(einval("injected failure: reserved regions"));
        }
        let ranges: Vec<(u64, u64)> = self
            .dev
            .reserved_regions()
            .into_iter()
            .filter(|r| r.kind != ResvKind::DirectRelaxable && r.length != 0)
            .map(|r| (r.start, r.start.saturating_add(r.length - 1)))
            .collect();
        if ranges.is_empty() {
            return Ok(());
        }
        ioas.iopt().reserve_all(&ranges, Owner::Device(self.token))
    }

    fn check_pasid(&self, map: &BTreeMap<u32, HwptDep>, pasid: u32, h: &HwptDep) -> Result<()> {
        if pasid == NO_PASID {
            if !pasid_compat(h) && map.keys().any(|&p| p != NO_PASID) {
                return Err(einval("PASIDs are attached: the RID needs a PASID-capable HWPT"));
            }
        } else {
            if !pasid_compat(h) {
                return Err(einval("HWPT was not allocated for PASID use"));
            }
            if map.get(&NO_PASID).is_some_and(|rid| !pasid_compat(rid)) {
                return Err(einval("the RID's HWPT is not PASID capable"));
            }
        }
        Ok(())
    }

    /// Attach (`replace == false`) or replace the attachment at `pasid` with
    /// `h`. Returns the edge that was replaced, for the caller to put.
    fn install(
        &self,
        map: &mut BTreeMap<u32, HwptDep>,
        pasid: u32,
        h: HwptDep,
        replace: bool,
    ) -> Result<Option<HwptDep>> {
        match (map.get(&pasid), replace) {
            // A PASID is attached once; changing it is a replace.
            (Some(_), false) if pasid != NO_PASID => return Err(crate::error::ebusy("the PASID is already attached")),
            (Some(cur), false) if !cur.same(&h) => return Err(einval("already attached elsewhere")),
            (None, true) => return Err(einval("not attached")),
            (Some(cur), true) if cur.same(&h) => return Ok(None),
            _ => {}
        }
        self.check_pasid(map, pasid, &h)?;
        let new_ioas = Arc::clone(h.paging().ioas());
        let same_ioas = map.get(&pasid).is_some_and(|cur| Arc::ptr_eq(cur.paging().ioas(), &new_ioas));
        if !same_ioas {
            self.reserve_regions(&new_ioas)?;
        }
        let checked = if pasid == NO_PASID {
            self.dev.check_attach(h.domain().as_ref())
        } else {
            self.dev.check_attach_pasid(pasid, h.domain().as_ref())
        };
        if let Err(e) = checked {
            if !same_ioas && !map.values().any(|o| Arc::ptr_eq(o.paging().ioas(), &new_ioas)) {
                new_ioas.iopt().remove_reserved(Owner::Device(self.token));
            }
            return Err(crate::Error::new(e, "the IOMMU driver refused the domain"));
        }
        let old = map.insert(pasid, h);
        self.publish_rid(map, pasid);
        if let Some(o) = &old {
            if let Some(f) = o.fault() {
                f.auto_respond((self.token, pasid));
            }
            let ioas = Arc::clone(o.paging().ioas());
            if !map.values().any(|x| Arc::ptr_eq(x.paging().ioas(), &ioas)) {
                ioas.iopt().remove_reserved(Owner::Device(self.token));
            }
        }
        Ok(old)
    }

    /// Attach (`replace == false`) or replace the attachment at `pasid` with
    /// `pt_id`: an IOAS (auto domain), a paging or a nested HWPT. Returns
    /// the HWPT ID.
    pub fn change_pt(&self, ctx: &Iommufd, pasid: u32, pt_id: ObjectId, replace: bool) -> Result<ObjectId> {
        if pasid != NO_PASID && (self.dev.max_pasid_log2() == 0 || (pasid as u64) >> self.dev.max_pasid_log2() != 0) {
            return Err(einval("the device does not support this PASID"));
        }
        let old = match ctx.objects().kind_of(pt_id) {
            None => return Err(crate::error::enoent("no object with this ID")),
            Some(ObjectKind::HwptPaging) => {
                let hwpt = ctx.get::<HwptPaging>(pt_id)?;
                let mut map = self.lock();
                self.install(&mut map, pasid, HwptDep::Paging(Dep::new(&hwpt)), replace)?
            }
            Some(ObjectKind::HwptNested) => {
                let hwpt = ctx.get::<HwptNested>(pt_id)?;
                let mut map = self.lock();
                self.install(&mut map, pasid, HwptDep::Nested(Dep::new(&hwpt)), replace)?
            }
            Some(ObjectKind::Ioas) => {
                let ioas = ctx.get::<Ioas>(pt_id)?;
                let (id, old) = self.auto_get_domain(ctx, &ioas, pasid, replace)?;
                drop(ioas);
                put_hwpt(ctx, old);
                return Ok(id);
            }
            Some(_) => return Err(einval("not an IOAS or HWPT")),
        };
        put_hwpt(ctx, old);
        Ok(pt_id)
    }

    /// `iommufd_device_auto_get_domain`.
    fn auto_get_domain(
        &self,
        ctx: &Iommufd,
        ioas: &Borrowed<Ioas>,
        pasid: u32,
        replace: bool,
    ) -> Result<(ObjectId, Option<HwptDep>)> {
        // Declared before the list guard so they drop after it: dropping the
        // last reference of a HWPT destroyed meanwhile runs its teardown,
        // which takes this very lock.
        let mut candidates: Vec<Arc<HwptPaging>> = Vec::new();
        let mut list = ioas.hwpts();
        candidates.extend(list.iter().filter_map(|w| w.upgrade()));
        for h in candidates.iter().filter(|h| h.is_auto()) {
            let Ok(hwpt) = ctx.get::<HwptPaging>(h.id()) else { continue };
            if !Arc::ptr_eq(hwpt.arc(), h) {
                // Destroyed meanwhile, and its ID already reused.
                continue;
            }
            let mut map = self.lock();
            match self.install(&mut map, pasid, HwptDep::Paging(Dep::new(&hwpt)), replace) {
                Ok(old) => return Ok((hwpt.id(), old)),
                Err(e) if e.errno == Errno::EINVAL => continue,
                Err(e) => return Err(e),
            }
        }
        // Nothing fits: a new auto domain, attached first ("immediate
        // attach"), then filled, then published.
        let pending = ctx.objects().reserve()?;
        // Like the kernel, an automatic domain is never PASID capable, so a
        // PASID cannot be attached to an IOAS.
        let req = PagingRequest::default();
        let domain = self.dev.alloc_paging(&req).ctx("allocating a paging domain")?;
        let flags = PagingFlags { enforce_cache_coherency: self.enforce_cache_coherency, ..Default::default() };
        let hwpt = Arc::new(HwptPaging::new(pending.id(), ioas, domain, flags));
        hwpt.set_auto();
        let borrowed = Borrowed::detached(&hwpt);
        let mut map = self.lock();
        let old = self.install(&mut map, pasid, HwptDep::Paging(Dep::new(&borrowed)), replace)?;
        if let Err(e) = hwpt.add_to_iopt() {
            // Undo the attachment.
            let ours = map.remove(&pasid);
            if let Some(o) = old {
                map.insert(pasid, o);
            }
            self.publish_rid(&map, pasid);
            let reserved_elsewhere = map.values().any(|x| Arc::ptr_eq(x.paging().ioas(), ioas.arc()));
            if !reserved_elsewhere {
                ioas.iopt().remove_reserved(Owner::Device(self.token));
            }
            drop(map);
            drop(ours);
            return Err(e);
        }
        list.push(Arc::downgrade(&hwpt));
        drop(list);
        drop(map);
        drop(borrowed);
        let id = pending.id();
        pending.publish(hwpt);
        Ok((id, old))
    }

    /// `iommufd_device_detach` (for `pasid`): no-op if not attached.
    pub fn detach(&self, ctx: &Iommufd, pasid: u32) {
        let old = {
            let mut map = self.lock();
            let old = map.remove(&pasid);
            if old.is_some() {
                self.publish_rid(&map, pasid);
                self.dev.detached(pasid);
            }
            if let Some(o) = &old {
                if let Some(f) = o.fault() {
                    f.auto_respond((self.token, pasid));
                }
                let ioas = Arc::clone(o.paging().ioas());
                if !map.values().any(|x| Arc::ptr_eq(x.paging().ioas(), &ioas)) {
                    ioas.iopt().remove_reserved(Owner::Device(self.token));
                }
            }
            old
        };
        put_hwpt(ctx, old);
    }

    /// Detach every PASID and the requester ID.
    pub fn detach_all(&self, ctx: &Iommufd) {
        let pasids: Vec<u32> = self.lock().keys().copied().collect();
        // PASIDs first, then the RID, as a driver tears down.
        for p in pasids.iter().rev() {
            self.detach(ctx, *p);
        }
    }

    /// `iommu_report_device_fault`: a page request from this device goes to
    /// the fault queue of the HWPT attached at its PASID. A PASID without an
    /// attachment of its own reaches the RID's nested HWPT when the IOMMU
    /// keeps the PASID table in user space (`user_pasid_table`). Returns
    /// whether a queue took it.
    pub fn report_fault(&self, req: PageRequest, user_pasid_table: bool) -> bool {
        let pasid_valid = req.flags & uiommufd_abi::IOMMU_PGFAULT_FLAGS_PASID_VALID != 0;
        let key = if pasid_valid { req.pasid } else { NO_PASID };
        let map = self.lock();
        let (handle_pasid, h) = match map.get(&key) {
            Some(h) => (key, h),
            None if pasid_valid && user_pasid_table => match map.get(&NO_PASID) {
                Some(h @ HwptDep::Nested(_)) => (NO_PASID, h),
                _ => return false,
            },
            None => return false,
        };
        let Some(f) = h.fault() else { return false };
        f.report(self.id(), (self.token, handle_pasid), vec![req]);
        true
    }
}

/// `iommufd_hw_pagetable_put`: drop an attachment edge; an auto domain that
/// lost its last user is destroyed.
///
/// Like the kernel's `iommufd_object_put_and_try_destroy`, it destroys that
/// very object, not whatever holds its ID by then: another detach may have
/// destroyed it meanwhile and the ID gone to a new object. (The `Weak`
/// keeps the allocation, so the address cannot be reused for another.)
pub(crate) fn put_hwpt(ctx: &Iommufd, dep: Option<HwptDep>) {
    let Some(dep) = dep else { return };
    let auto = dep.is_auto();
    let id = dep.id();
    let me = Arc::downgrade(dep.paging());
    drop(dep);
    if auto {
        let _ = ctx
            .objects()
            .destroy_if(id, |o| matches!(o, Object::HwptPaging(h) if std::ptr::eq(Arc::as_ptr(h), me.as_ptr())));
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Unbinding detaches first; a device destroyed while attached (its
        // context closing) still releases what it holds.
        let map = std::mem::take(&mut *self.lock());
        self.dma_rid.replace(None);
        // As in `publish_rid`: ports' fast paths take the generation for
        // the domain (`crate::atc::Atc::current`). At a context's close the
        // IOAS's unmaps bump it as well, but only after the device is gone.
        uiommufd_memory::atc::invalidate();
        let ctx = self.ctx.upgrade();
        for (pasid, h) in map {
            if let Some(f) = h.fault() {
                f.auto_respond((self.token, pasid));
            }
            h.paging().ioas().iopt().remove_reserved(Owner::Device(self.token));
            if let Some(ctx) = &ctx {
                put_hwpt(ctx, Some(h));
            }
        }
    }
}

/// `iommufd_device_bind`: create the device object. The returned `Dep` is
/// the binder's edge; dropping it and destroying the object unbinds.
pub fn bind(ctx: &Arc<Iommufd>, dev: Arc<dyn IommuDevice>) -> Result<(ObjectId, Dep<Device>)> {
    if !dev.capable(Cap::CacheCoherency) {
        return Err(einval("the device's IOMMU cannot do cache-coherent DMA"));
    }
    let pending = ctx.objects().reserve()?;
    let idev = Arc::new(Device {
        hdr: ObjHeader::new(pending.id()),
        enforce_cache_coherency: dev.capable(Cap::EnforceCacheCoherency),
        dev,
        token: new_token(),
        attach: Mutex::new(BTreeMap::new()),
        vdev: Mutex::default(),
        dma_rid: Arc::new(Published::new(None)),
        ctx: Arc::downgrade(ctx),
    });
    let edge = Dep::new(&Borrowed::detached(&idev));
    let id = pending.id();
    pending.publish(idev);
    Ok((id, edge))
}

impl ObjectType for Device {
    const KIND: ObjectKind = ObjectKind::Device;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Device(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Device(o) => Some(o),
            _ => None,
        }
    }
}
