//! Accesses: emulated devices reaching IOAS memory by CPU (`device.c`,
//! `iommufd_access_*`).
//!
//! An access is attached to one IOAS. It can copy to and from IOVA
//! ([`Access::rw`]) or pin IOVA ranges to get at their frames
//! ([`Access::pin`]). Pins must be given back before an unmap of their range
//! completes: the IOAS calls the access's driver through [`UnmapNotify`],
//! and the unmap retries until the pins are gone.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::error::{einval, enoent, eoverflow, Result};
use crate::io_pagetable::{new_token, AccessPin, UnmapNotify};
use crate::ioas::Ioas;
use crate::object::{Borrowed, Dep, ObjHeader, Object, ObjectId, ObjectKind, ObjectType};
use crate::pages::page_size;

/// `struct iommufd_access`.
pub struct Access {
    hdr: ObjHeader,
    token: u64,
    iova_alignment: u64,
    /// The driver's unmap callback.
    driver: Weak<dyn UnmapNotify>,
    /// `ioas_lock`: the attached IOAS.
    ioas: Mutex<Option<Dep<Ioas>>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("id", &self.id()).finish()
    }
}

/// Pins held by an access over one IOVA range.
#[derive(Debug)]
pub struct PinnedRange {
    pub iova: u64,
    pub length: u64,
    pins: Vec<AccessPin>,
    ioas: Arc<Ioas>,
}

impl PinnedRange {
    /// The frames, as `(pfn, npages)` in IOVA order.
    pub fn pfns(&self) -> Vec<(u64, u64)> {
        self.pins.iter().flat_map(|p| p.runs.iter().map(|r| (r.pfn, r.npages))).collect()
    }
}

impl Access {
    /// `iommufd_access_create`: `needs_pin_pages` accesses require
    /// page-aligned IOVA in their IOAS.
    pub fn new(id: ObjectId, needs_pin_pages: bool, driver: Weak<dyn UnmapNotify>) -> Self {
        Access {
            hdr: ObjHeader::new(id),
            token: new_token(),
            iova_alignment: if needs_pin_pages { page_size() } else { 1 },
            driver,
            ioas: Mutex::new(None),
        }
    }

    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn needs_pin_pages(&self) -> bool {
        self.iova_alignment != 1
    }

    fn lock(&self) -> MutexGuard<'_, Option<Dep<Ioas>>> {
        self.ioas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The attached IOAS.
    pub fn ioas(&self) -> Option<Arc<Ioas>> {
        self.lock().as_ref().map(|d| Arc::clone(d.arc()))
    }

    /// `iommufd_access_change_ioas`: attach to `new` (or detach with
    /// `None`). The old IOAS's pins are returned through the driver first.
    pub fn change_ioas(&self, new: Option<&Borrowed<Ioas>>) -> Result<()> {
        let mut slot = self.lock();
        if let (Some(cur), Some(n)) = (slot.as_ref(), new) {
            if Arc::ptr_eq(cur.arc(), n.arc()) {
                return Ok(());
            }
        }
        if let Some(n) = new {
            n.iopt().add_access(self.token, self.iova_alignment, self.driver.clone())?;
        }
        let old = match new {
            Some(n) => slot.replace(Dep::new(n)),
            None => slot.take(),
        };
        drop(slot);
        if let Some(old) = old {
            if let Some(d) = self.driver.upgrade() {
                d.unmap(0, u64::MAX);
            }
            old.iopt().remove_access(self.token);
        }
        Ok(())
    }

    /// `iommufd_access_replace`: `ENOENT` when not attached.
    pub fn replace(&self, new: &Borrowed<Ioas>) -> Result<()> {
        if self.lock().is_none() {
            return Err(enoent("access is not attached"));
        }
        self.change_ioas(Some(new))
    }

    /// `iommufd_access_pin_pages`.
    pub fn pin(&self, iova: u64, length: u64, write: bool) -> Result<PinnedRange> {
        self.pin_inner(iova, length, write, false)
    }

    /// Pin and lock the areas: an unmap of the range fails with `EBUSY`
    /// while the pin is held (for memory hardware reads on its own, such as
    /// a HW queue).
    pub fn pin_locked(&self, iova: u64, length: u64, write: bool) -> Result<PinnedRange> {
        self.pin_inner(iova, length, write, true)
    }

    fn pin_inner(&self, iova: u64, length: u64, write: bool, lock: bool) -> Result<PinnedRange> {
        if !self.needs_pin_pages() {
            return Err(einval("access was not created for pinning"));
        }
        if length == 0 {
            return Err(einval("length is zero"));
        }
        iova.checked_add(length - 1).ok_or(eoverflow("IOVA range wraps"))?;
        let ioas = self.ioas().ok_or(enoent("access is not attached"))?;
        let pins = ioas.iopt().access_pin_locked(iova, length, write, lock)?;
        Ok(PinnedRange { iova, length, pins, ioas })
    }

    /// `iommufd_access_unpin_pages`.
    pub fn unpin(&self, range: PinnedRange) {
        range.ioas.iopt().access_unpin(&range.pins);
    }

    /// `iommufd_access_rw`.
    pub fn rw(&self, iova: u64, data: &mut [u8], write: bool, slow: bool) -> Result<()> {
        if data.is_empty() {
            return Err(einval("length is zero"));
        }
        iova.checked_add(data.len() as u64 - 1).ok_or(eoverflow("IOVA range wraps"))?;
        let ioas = self.ioas().ok_or(enoent("access is not attached"))?;
        ioas.iopt().access_rw(iova, data, write, slow)
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        let _ = self.change_ioas(None);
    }
}

impl ObjectType for Access {
    const KIND: ObjectKind = ObjectKind::Access;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Access(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Access(o) => Some(o),
            _ => None,
        }
    }
}
