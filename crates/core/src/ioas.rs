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
        self.map_checked(flags, user_va, length, iova, process_accounting)
    }

    /// [`map`](Self::map) once [`check_map_flags`] passed.
    fn map_checked(&self, flags: u32, user_va: u64, length: u64, iova: u64, process_accounting: bool) -> Result<u64> {
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

/// A typed handle on one IOAS of a context, for callers that map and
/// unmap through the Rust API many times: each call takes a short-term use
/// of the IOAS directly (two atomic operations) instead of looking its ID
/// up in the object table (its lock, the use, a reference count); a small
/// map or unmap (one area of at most 64 pages) takes none at all: it
/// checks that the IOAS is still published under the IOAS's own lock,
/// which a destroy must find free.
///
/// It does not keep the IOAS alive as an object: `IOMMU_DESTROY` of the ID
/// works as without it (`EBUSY` while a call through the handle is in
/// progress, as for any ioctl on it, or once it ends if it ends within a
/// few hundred spins; the mappings are torn down at once),
/// and every call after that is `ENOENT`, even once the ID names another
/// object. It keeps its context open (an `Arc` of it).
pub struct IoasHandle {
    ctx: Arc<crate::Iommufd>,
    ioas: Arc<Ioas>,
}

impl IoasHandle {
    pub(crate) fn new(ctx: Arc<crate::Iommufd>, ioas: Arc<Ioas>) -> IoasHandle {
        IoasHandle { ctx, ioas }
    }

    /// The IOAS's object ID.
    pub fn id(&self) -> ObjectId {
        self.ioas.id()
    }

    /// The IOAS, for as long as it is not destroyed (`ENOENT` after).
    fn enter(&self) -> Result<crate::object::ShortTerm<'_>> {
        self.ctx.objects().enter(self.ioas.header()).ok_or(crate::error::enoent("the IOAS was destroyed"))
    }

    /// Whether the IOAS is still published: asked by the small map and
    /// unmap under the IOAS's `iova` lock instead of taking a short-term
    /// use (see [`IoPagetable::quiesce`]); on `false` (destroyed, or a
    /// destroy deciding) they take the usual way through
    /// [`enter`](Self::enter), which tells the two apart.
    fn live(&self) -> bool {
        !self.ioas.header().retired()
    }

    /// `IOMMU_IOAS_MAP`, as [`crate::Iommufd::ioas_map`] (the same checks
    /// and errors in the same order).
    pub fn map(&self, flags: u32, user_va: u64, length: u64, iova: u64) -> Result<u64> {
        check_map_flags(flags, &[iova, length])?;
        let process = self.ctx.account_mode() == crate::ctx::AccountMode::Process;
        let fixed = (flags & map_flags::FIXED_IOVA != 0).then_some(iova);
        let mode = Account::mode_for(process);
        let prot = prot_from_flags(flags);
        if let Some(r) = self.ioas.iopt.map_user_if(|| self.live(), user_va, length, fixed, prot, mode) {
            return r;
        }
        let _use = self.enter()?;
        self.ioas.map_checked(flags, user_va, length, iova, process)
    }

    /// `IOMMU_IOAS_UNMAP`, as [`crate::Iommufd::ioas_unmap`].
    pub fn unmap(&self, iova: u64, length: u64) -> Result<u64> {
        // Unmap-all and the values `EOVERFLOW` refuses go the usual way.
        if iova != u64::MAX && length != u64::MAX {
            if let Some(n) = self.ioas.iopt.unmap_if(|| self.live(), iova, length) {
                return Ok(n);
            }
        }
        let _use = self.enter()?;
        self.ioas.unmap(iova, length)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Dep;
    use crate::{Errno, Iommufd};

    const RW: u32 = map_flags::READABLE | map_flags::WRITEABLE | map_flags::FIXED_IOVA;

    fn page() -> (Vec<u8>, u64) {
        let v = vec![0u8; 3 << 12];
        let va = (v.as_ptr() as u64 + 4095) & !4095;
        (v, va)
    }

    #[test]
    fn handle_maps_like_the_context_and_fails_like_it() {
        let ctx = Iommufd::new();
        let id = ctx.ioas_alloc().unwrap();
        let h = ctx.ioas_handle(id).unwrap();
        assert_eq!(h.id(), id);
        let (_mem, va) = page();
        assert_eq!(h.map(RW, va, 4096, 1 << 20).unwrap(), 1 << 20);
        assert_eq!(ctx.ioas_map(id, RW, va, 4096, 1 << 20).unwrap_err().errno, Errno::EEXIST);
        assert_eq!(h.map(RW | 8, va, 4096, 1 << 21).unwrap_err().errno, Errno::EOPNOTSUPP);
        assert_eq!(h.map(map_flags::FIXED_IOVA, va, 4096, 1 << 21).unwrap_err().errno, Errno::EINVAL);
        assert_eq!(h.unmap(1 << 20, 4096).unwrap(), 4096);
        assert_eq!(h.unmap(1 << 20, 4096).unwrap_err().errno, Errno::ENOENT);
        assert_eq!(ctx.ioas_handle(id + 1).err().unwrap().errno, Errno::ENOENT);
    }

    #[test]
    fn destroy_through_the_id_ends_the_handle_and_its_mappings() {
        let ctx = Iommufd::new();
        let id = ctx.ioas_alloc().unwrap();
        let h = ctx.ioas_handle(id).unwrap();
        let (_mem, va) = page();
        h.map(RW, va, 4096, 1 << 20).unwrap();
        // A call in progress through the handle is a short-term user.
        let in_progress = h.enter().unwrap();
        assert_eq!(ctx.destroy(id).unwrap_err().errno, Errno::EBUSY);
        drop(in_progress);
        // A dependency edge: EBUSY, and the handle keeps working.
        let edge = Dep::new(&ctx.ioas(id).unwrap());
        assert_eq!(ctx.destroy(id).unwrap_err().errno, Errno::EBUSY);
        h.unmap(1 << 20, 4096).unwrap();
        h.map(RW, va, 4096, 1 << 20).unwrap();
        drop(edge);
        // Holding a handle does not keep the object: destroy tears the
        // mappings down at once, as the kernel's does.
        ctx.destroy(id).unwrap();
        assert_eq!(h.ioas.iopt().num_areas(), 0);
        assert_eq!(h.map(RW, va, 4096, 1 << 21).unwrap_err().errno, Errno::ENOENT);
        assert_eq!(h.unmap(1 << 20, 4096).unwrap_err().errno, Errno::ENOENT);
        // The ID names a new IOAS: the handle still names the old one.
        assert_eq!(ctx.ioas_alloc().unwrap(), id);
        assert_eq!(h.map(RW, va, 4096, 1 << 21).unwrap_err().errno, Errno::ENOENT);
        ctx.ioas_map(id, RW, va, 4096, 1 << 21).unwrap();
    }

    #[test]
    fn destroy_is_busy_while_a_small_handle_call_holds_the_ioas() {
        let ctx = Iommufd::new();
        let id = ctx.ioas_alloc().unwrap();
        let h = ctx.ioas_handle(id).unwrap();
        let (_mem, va) = page();
        h.map(RW, va, 4096, 1 << 20).unwrap();
        // What a small map or unmap through the handle holds while it runs:
        // the IOAS's lock, and no short-term use.
        let in_progress = h.ioas.iopt().hold_for_test();
        assert_eq!(ctx.destroy(id).unwrap_err().errno, Errno::EBUSY);
        drop(in_progress);
        // The failed destroy left the IOAS as it was.
        assert_eq!(h.unmap(1 << 20, 4096).unwrap(), 4096);
        h.map(RW, va, 4096, 1 << 20).unwrap();
        ctx.destroy(id).unwrap();
        assert_eq!(h.ioas.iopt().num_areas(), 0);
        // Every later small call sees it gone.
        assert_eq!(h.map(RW, va, 4096, 1 << 21).unwrap_err().errno, Errno::ENOENT);
        assert_eq!(h.unmap(1 << 20, 4096).unwrap_err().errno, Errno::ENOENT);
        assert_eq!(h.unmap(1 << 20, 0).unwrap_err().errno, Errno::ENOENT);
        assert_eq!(h.unmap(u64::MAX, 4096).unwrap_err().errno, Errno::ENOENT);
    }

    #[test]
    fn destroy_racing_handle_calls_is_busy_or_final() {
        let ctx = Iommufd::new();
        let id = ctx.ioas_alloc().unwrap();
        let h = ctx.ioas_handle(id).unwrap();
        let (_mem, va) = page();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut gone = false;
                let mut calls = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || calls < 1000 {
                    calls += 1;
                    match h.map(RW, va, 4096, 1 << 20) {
                        Ok(_) => {
                            assert!(!gone, "a map succeeded after the destroy");
                            // The destroy cannot succeed while the area
                            // exists and this thread still unmaps it...
                            // unless it came first: then ENOENT.
                            match h.unmap(1 << 20, 4096) {
                                Ok(n) => assert_eq!(n, 4096),
                                Err(e) => {
                                    assert_eq!(e.errno, Errno::ENOENT);
                                    gone = true;
                                }
                            }
                        }
                        Err(e) => {
                            assert_eq!(e.errno, Errno::ENOENT);
                            gone = true;
                        }
                    }
                }
                // The destroy is over: whatever came before, the next call
                // sees it.
                assert_eq!(h.map(RW, va, 4096, 1 << 20).unwrap_err().errno, Errno::ENOENT);
                gone
            });
            let mut busy = 0u64;
            loop {
                match ctx.destroy(id) {
                    Ok(()) => break,
                    Err(e) => {
                        assert_eq!(e.errno, Errno::EBUSY);
                        busy += 1;
                        std::thread::yield_now();
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let saw_it_in_the_loop = worker.join().unwrap();
            eprintln!("destroy after {busy} EBUSY; the loop saw it: {saw_it_in_the_loop}");
        });
        assert_eq!(h.ioas.iopt().num_areas(), 0);
        assert!(ctx.objects().is_empty());
    }
}
