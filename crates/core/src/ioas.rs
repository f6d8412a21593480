//! IO address spaces (`ioas.c`).
//!
//! An IOAS is a user-managed IOVA → user memory map that HWPTs and accesses
//! mirror. This file holds the object and its per-IOAS options; the
//! io_pagetable (areas, reserved and allowed ranges) lives with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::object::{ObjHeader, Object, ObjectId, ObjectKind, ObjectType};

/// `struct iommufd_ioas`.
#[derive(Debug)]
pub struct Ioas {
    hdr: ObjHeader,
    /// `IOMMU_OPTION_HUGE_PAGES == 0`: map everything at PAGE_SIZE.
    disable_large_pages: AtomicBool,
}

impl Ioas {
    pub fn new(id: ObjectId) -> Self {
        Ioas { hdr: ObjHeader::new(id), disable_large_pages: AtomicBool::new(false) }
    }

    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    /// Whether contiguous pages may be combined into large IOMMU pages.
    pub fn huge_pages(&self) -> bool {
        !self.disable_large_pages.load(Ordering::Acquire)
    }

    /// `IOMMU_OPTION_HUGE_PAGES` set. Disabling is refused (`EINVAL`) once
    /// domains already hold mappings; with no io_pagetable contents yet, it
    /// always succeeds.
    pub fn set_huge_pages(&self, enable: bool) -> crate::Result<()> {
        self.disable_large_pages.store(!enable, Ordering::Release);
        Ok(())
    }
}

impl ObjectType for Ioas {
    const KIND: ObjectKind = ObjectKind::Ioas;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Ioas(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Ioas(o) => Some(o),
        }
    }
}
