//! Hardware page tables (`hw_pagetable.c`).
//!
//! A paging HWPT wraps one IOMMU domain that mirrors an IOAS: it is added to
//! the IOAS's io_pagetable on creation (filled with every area) and removed
//! when the HWPT is destroyed. Devices attach to HWPTs; each attachment is a
//! dependency edge, so a HWPT in use cannot be destroyed (`EBUSY`).
//!
//! *Auto domains* are HWPTs the engine created itself when a device attached
//! to an IOAS; they are shared by compatible devices and destroyed with
//! their last attachment, as in the kernel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use uiommufd_hw::Domain;

use crate::io_pagetable::new_token;
use crate::ioas::Ioas;
use crate::object::{Borrowed, Dep, ObjHeader, Object, ObjectId, ObjectKind, ObjectType};
use crate::Result;

/// `struct iommufd_hwpt_paging`.
pub struct HwptPaging {
    hdr: ObjHeader,
    ioas: Dep<Ioas>,
    domain: Arc<dyn Domain>,
    /// Identity of the domain in the io_pagetable.
    token: u64,
    auto_domain: AtomicBool,
    nest_parent: bool,
    dirty_tracking: bool,
    enforce_cache_coherency: bool,
    /// Added to the io_pagetable (filled and kept in sync).
    in_iopt: AtomicBool,
}

impl std::fmt::Debug for HwptPaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HwptPaging").field("id", &self.id()).field("ioas", &self.ioas.id()).finish()
    }
}

/// How a paging HWPT is being created.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagingFlags {
    pub nest_parent: bool,
    pub dirty_tracking: bool,
    pub enforce_cache_coherency: bool,
}

impl HwptPaging {
    /// Build a paging HWPT over `domain` for `ioas` (not yet in the
    /// io_pagetable: see [`HwptPaging::add_to_ioas`]).
    pub fn new(id: ObjectId, ioas: &Borrowed<Ioas>, domain: Arc<dyn Domain>, flags: PagingFlags) -> Self {
        HwptPaging {
            hdr: ObjHeader::new(id),
            ioas: Dep::new(ioas),
            domain,
            token: new_token(),
            auto_domain: AtomicBool::new(false),
            nest_parent: flags.nest_parent,
            dirty_tracking: flags.dirty_tracking,
            enforce_cache_coherency: flags.enforce_cache_coherency,
            in_iopt: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn ioas(&self) -> &Arc<Ioas> {
        self.ioas.arc()
    }

    pub fn domain(&self) -> &Arc<dyn Domain> {
        &self.domain
    }

    pub fn is_auto(&self) -> bool {
        self.auto_domain.load(Ordering::Acquire)
    }

    pub fn set_auto(&self) {
        self.auto_domain.store(true, Ordering::Release);
    }

    pub fn nest_parent(&self) -> bool {
        self.nest_parent
    }

    pub fn dirty_tracking(&self) -> bool {
        self.dirty_tracking
    }

    pub fn enforce_cache_coherency(&self) -> bool {
        self.enforce_cache_coherency
    }

    /// `iopt_table_add_domain`: fill the domain with the IOAS's mappings
    /// and keep it in sync from now on. The caller, holding the IOAS's HWPT
    /// list lock, adds the HWPT to that list.
    pub fn add_to_iopt(&self) -> Result<()> {
        self.ioas().iopt().add_domain(self.token, Arc::clone(&self.domain))?;
        self.in_iopt.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for HwptPaging {
    fn drop(&mut self) {
        if self.in_iopt.load(Ordering::Acquire) {
            let me = self as *const HwptPaging;
            self.ioas().hwpts().retain(|w| w.as_ptr() != me && w.strong_count() != 0);
            self.ioas().iopt().remove_domain(self.token);
        }
    }
}

impl ObjectType for HwptPaging {
    const KIND: ObjectKind = ObjectKind::HwptPaging;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::HwptPaging(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::HwptPaging(o) => Some(o),
            _ => None,
        }
    }
}
