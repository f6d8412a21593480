//! IO address spaces (`ioas.c`).
//!
//! An IOAS is the user-managed IOVA → user memory map that HWPTs and
//! accesses mirror. It owns an [`IoPagetable`] and knows the paging HWPTs
//! built on it (for automatic domain reuse on attach).

use std::sync::{Arc, Mutex, Weak};

use uiommufd_hw::Prot;

use crate::account::{Account, AccountMode};
use crate::error::{einval, eoverflow, Result};
use crate::hwpt::HwptPaging;
use crate::io_pagetable::IoPagetable;
use crate::object::{ObjHeader, Object, ObjectId, ObjectKind, ObjectType};

/// `enum iommufd_ioas_map_flags` values, as `IOMMU_IOAS_MAP`/`COPY` take them.
pub mod map_flags {
    pub const FIXED_IOVA: u32 = 1 << 0;
    pub const WRITEABLE: u32 = 1 << 1;
    pub const READABLE: u32 = 1 << 2;
}

/// `struct iommufd_ioas`.
pub struct Ioas {
    hdr: ObjHeader,
    iopt: IoPagetable,
    /// Paging HWPTs on this IOAS, for automatic domain selection. This is
    /// the kernel's `ioas->mutex`, taken before any io_pagetable lock.
    hwpts: Mutex<Vec<Weak<HwptPaging>>>,
}

impl std::fmt::Debug for Ioas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioas").field("id", &self.id()).finish()
    }
}

/// `conv_iommu_prot`: iommufd always maps cache coherent.
pub fn prot_from_flags(flags: u32) -> Prot {
    let mut p = Prot::CACHE;
    if flags & map_flags::WRITEABLE != 0 {
        p = p | Prot::WRITE;
    }
    if flags & map_flags::READABLE != 0 {
        p = p | Prot::READ;
    }
    p
}

/// The checks `IOMMU_IOAS_MAP` and `IOMMU_IOAS_COPY` share, in the kernel's
/// order: unknown flags, then overflow, then no permission at all.
pub fn check_map_flags(flags: u32, values: &[u64]) -> Result<()> {
    let known = map_flags::FIXED_IOVA | map_flags::WRITEABLE | map_flags::READABLE;
    if flags & !known != 0 {
        return Err(crate::error::eopnotsupp("unknown map flags"));
    }
    if values.contains(&u64::MAX) {
        return Err(eoverflow("value too large"));
    }
    if flags & (map_flags::WRITEABLE | map_flags::READABLE) == 0 {
        return Err(einval("mapping must be readable or writeable"));
    }
    Ok(())
}

impl Ioas {
    pub fn new(id: ObjectId) -> Self {
        Ioas { hdr: ObjHeader::new(id), iopt: IoPagetable::new(), hwpts: Mutex::new(Vec::new()) }
    }

    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn iopt(&self) -> &IoPagetable {
        &self.iopt
    }

    /// The HWPT list lock (`ioas->mutex`).
    pub fn hwpts(&self) -> std::sync::MutexGuard<'_, Vec<Weak<HwptPaging>>> {
        self.hwpts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `IOMMU_IOAS_MAP`: map `length` bytes of user memory at `user_va`;
    /// returns the IOVA (chosen unless `FIXED_IOVA`).
    pub fn map(&self, flags: u32, user_va: u64, length: u64, iova: u64, process_accounting: bool) -> Result<u64> {
        check_map_flags(flags, &[iova, length])?;
        let fixed = (flags & map_flags::FIXED_IOVA != 0).then_some(iova);
        let mode: AccountMode = Account::mode_for(process_accounting);
        self.iopt.map_user(user_va, length, fixed, prot_from_flags(flags), mode)
    }

    /// `IOMMU_IOAS_UNMAP`: `iova == 0 && length == u64::MAX` unmaps all.
    /// Returns the bytes unmapped; `ENOENT` if a range unmapped nothing.
    pub fn unmap(&self, iova: u64, length: u64) -> Result<u64> {
        if iova == 0 && length == u64::MAX {
            let (r, n) = self.iopt.unmap_all();
            return r.map(|()| n);
        }
        if iova == u64::MAX || length == u64::MAX {
            return Err(eoverflow("value too large"));
        }
        let (r, n) = self.iopt.unmap(iova, length);
        r?;
        if n == 0 {
            return Err(crate::error::enoent("nothing is mapped in the range"));
        }
        Ok(n)
    }

    /// `IOMMU_OPTION_HUGE_PAGES` get.
    pub fn huge_pages(&self) -> bool {
        self.iopt.large_pages()
    }

    /// `IOMMU_OPTION_HUGE_PAGES` set.
    pub fn set_huge_pages(&self, enable: bool) -> Result<()> {
        self.iopt.set_large_pages(enable)
    }
}

/// `IOMMU_IOAS_COPY` between two IOASes (possibly the same).
pub fn copy(src: &Ioas, dst: &Ioas, flags: u32, length: u64, src_iova: u64, dst_iova: u64) -> Result<u64> {
    check_map_flags(flags, &[length, src_iova, dst_iova])?;
    let list = src.iopt.get_pages(src_iova, length)?;
    let fixed = (flags & map_flags::FIXED_IOVA != 0).then_some(dst_iova);
    dst.iopt.map_pages(list, length, fixed, prot_from_flags(flags))
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
            _ => None,
        }
    }
}
