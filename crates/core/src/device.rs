//! Bound devices and their attachment (`device.c`).
//!
//! Binding a device to an iommufd creates a *device object* (`idev`); the
//! binder (a VFIO cdev, or the selftest's mock device) holds a dependency
//! edge on it until it unbinds, so `IOMMU_DESTROY` of a bound device is
//! `EBUSY`. A bound device is attached to at most one HWPT at a time
//! (per PASID, later): attaching to an IOAS picks or creates an *auto
//! domain*; attaching to a HWPT uses it as is. Attachment reserves the
//! device's reserved regions in the HWPT's IOAS.
//!
//! Each device forms its own group (the kernel's `iommufd_group` with one
//! member), which is what the mock driver and every emulated device here
//! produce.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_hw::device::{Cap, IommuDevice, PagingRequest, ResvKind};

use crate::error::{einval, ErrnoExt, Result};
use crate::hwpt::{HwptPaging, PagingFlags};
use crate::io_pagetable::{new_token, Owner};
use crate::ioas::Ioas;
use crate::object::{Borrowed, Dep, ObjHeader, Object, ObjectId, ObjectKind, ObjectType};
use crate::{Errno, Iommufd};

/// `struct iommufd_device`.
pub struct Device {
    hdr: ObjHeader,
    dev: Arc<dyn IommuDevice>,
    /// Owner identity of the reserved ranges this device puts in an IOAS.
    token: u64,
    enforce_cache_coherency: bool,
    /// The group lock and the current attachment.
    attach: Mutex<Option<Attachment>>,
    ctx: Weak<Iommufd>,
}

struct Attachment {
    hwpt: Dep<HwptPaging>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("id", &self.id()).field("dev", &self.dev.name()).finish()
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

    fn lock(&self) -> MutexGuard<'_, Option<Attachment>> {
        self.attach.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The HWPT the device is attached to.
    pub fn attached_hwpt(&self) -> Option<Arc<HwptPaging>> {
        self.lock().as_ref().map(|a| Arc::clone(a.hwpt.arc()))
    }

    fn reserve_regions(&self, ioas: &Ioas) -> Result<()> {
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

    fn unreserve_regions(&self, ioas: &Ioas) {
        ioas.iopt().remove_reserved(Owner::Device(self.token));
    }

    /// `iommufd_hw_pagetable_attach` for an unattached device.
    fn do_attach(&self, slot: &mut Option<Attachment>, hwpt: &Borrowed<HwptPaging>) -> Result<()> {
        if let Some(cur) = slot.as_ref() {
            if !Arc::ptr_eq(cur.hwpt.arc(), hwpt.arc()) {
                return Err(einval("device is already attached elsewhere"));
            }
        }
        self.reserve_regions(hwpt.ioas())?;
        if let Err(e) = self.dev.check_attach(hwpt.domain().as_ref()) {
            self.unreserve_regions(hwpt.ioas());
            return Err(crate::Error::new(e, "the IOMMU driver refused the domain"));
        }
        *slot = Some(Attachment { hwpt: Dep::new(hwpt) });
        Ok(())
    }

    /// `iommufd_device_do_replace`: swap the attachment, keeping the old
    /// one if anything fails. Returns the old HWPT for the caller to put.
    fn do_replace(&self, slot: &mut Option<Attachment>, hwpt: &Borrowed<HwptPaging>) -> Result<Option<Dep<HwptPaging>>> {
        let Some(cur) = slot.as_ref() else { return Err(einval("device is not attached")) };
        if Arc::ptr_eq(cur.hwpt.arc(), hwpt.arc()) {
            return Ok(None);
        }
        let same_ioas = Arc::ptr_eq(cur.hwpt.ioas(), hwpt.ioas());
        if !same_ioas {
            self.reserve_regions(hwpt.ioas())?;
        }
        if let Err(e) = self.dev.check_attach(hwpt.domain().as_ref()) {
            if !same_ioas {
                self.unreserve_regions(hwpt.ioas());
            }
            return Err(crate::Error::new(e, "the IOMMU driver refused the domain"));
        }
        let old = slot.replace(Attachment { hwpt: Dep::new(hwpt) }).expect("attached");
        if !same_ioas {
            self.unreserve_regions(old.hwpt.ioas());
        }
        Ok(Some(old.hwpt))
    }

    /// Attach (`replace == false`) or replace the attachment with `pt_id`,
    /// an IOAS (auto domain) or a paging HWPT. Returns the HWPT ID.
    pub fn change_pt(&self, ctx: &Iommufd, pt_id: ObjectId, replace: bool) -> Result<ObjectId> {
        let old = match ctx.objects().kind_of(pt_id) {
            None => return Err(crate::error::enoent("no object with this ID")),
            Some(ObjectKind::HwptPaging) => {
                let hwpt = ctx.get::<HwptPaging>(pt_id)?;
                let mut slot = self.lock();
                if replace {
                    self.do_replace(&mut slot, &hwpt)?
                } else {
                    self.do_attach(&mut slot, &hwpt)?;
                    None
                }
            }
            Some(ObjectKind::Ioas) => {
                let ioas = ctx.get::<Ioas>(pt_id)?;
                let (id, old) = self.auto_get_domain(ctx, &ioas, replace)?;
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
    fn auto_get_domain(&self, ctx: &Iommufd, ioas: &Borrowed<Ioas>, replace: bool) -> Result<(ObjectId, Option<Dep<HwptPaging>>)> {
        let mut list = ioas.hwpts();
        let candidates: Vec<Arc<HwptPaging>> = list.iter().filter_map(|w| w.upgrade()).filter(|h| h.is_auto()).collect();
        for h in candidates {
            let Ok(hwpt) = ctx.get::<HwptPaging>(h.id()) else { continue };
            let mut slot = self.lock();
            let r = if replace { self.do_replace(&mut slot, &hwpt) } else { self.do_attach(&mut slot, &hwpt).map(|()| None) };
            match r {
                Ok(old) => return Ok((hwpt.id(), old)),
                Err(e) if e.errno == Errno::EINVAL => continue,
                Err(e) => return Err(e),
            }
        }
        // Nothing fits: a new auto domain, attached before it is published.
        let pending = ctx.objects().reserve()?;
        let req = PagingRequest::default();
        let domain = self.dev.alloc_paging(&req).ctx("allocating a paging domain")?;
        let flags = PagingFlags { enforce_cache_coherency: self.enforce_cache_coherency, ..Default::default() };
        let hwpt = Arc::new(HwptPaging::new(pending.id(), ioas, domain, flags));
        hwpt.set_auto();
        // The kernel attaches first ("immediate attach"), then fills.
        let mut slot = self.lock();
        let borrowed = crate::object::Borrowed::detached(&hwpt);
        let old = if replace { self.do_replace(&mut slot, &borrowed)? } else { self.do_attach(&mut slot, &borrowed).map(|()| None)? };
        if let Err(e) = hwpt.add_to_iopt() {
            // Undo the attachment.
            match old {
                Some(o) => {
                    let _ = slot.replace(Attachment { hwpt: o });
                    self.unreserve_regions(ioas);
                }
                None => {
                    *slot = None;
                    self.unreserve_regions(ioas);
                }
            }
            return Err(e);
        }
        list.push(Arc::downgrade(&hwpt));
        drop(list);
        drop(slot);
        drop(borrowed);
        let id = pending.id();
        pending.publish(hwpt);
        Ok((id, old))
    }

    /// `iommufd_device_detach`.
    pub fn detach(&self, ctx: &Iommufd) {
        let old = self.lock().take();
        if let Some(a) = old {
            self.unreserve_regions(a.hwpt.ioas());
            put_hwpt(ctx, Some(a.hwpt));
        }
    }
}

/// `iommufd_hw_pagetable_put`: drop an attachment edge; an auto domain that
/// lost its last user is destroyed.
fn put_hwpt(ctx: &Iommufd, dep: Option<Dep<HwptPaging>>) {
    let Some(dep) = dep else { return };
    let hwpt = Arc::clone(dep.arc());
    drop(dep);
    if hwpt.is_auto() {
        let id = hwpt.id();
        drop(hwpt);
        let _ = ctx.objects().destroy_if(id, |o| matches!(o, Object::HwptPaging(_)));
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Unbinding detaches first; a device destroyed while attached (only
        // when its context is closing) still releases its reserved ranges.
        if let Some(a) = self.lock().take() {
            self.unreserve_regions(a.hwpt.ioas());
            if let Some(ctx) = self.ctx.upgrade() {
                put_hwpt(&ctx, Some(a.hwpt));
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
        attach: Mutex::new(None),
        ctx: Arc::downgrade(ctx),
    });
    let edge = Dep::new(&crate::object::Borrowed::detached(&idev));
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
