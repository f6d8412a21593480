//! The IOVA → user memory map of an IOAS (`io_pagetable.c`).
//!
//! Model. An [`IoPagetable`] holds *areas*: disjoint IOVA ranges, each a
//! byte slice of one [`Pages`]. Every attached domain maps exactly the areas
//! (mirrors them); accesses read the same pages. IOVA not covered by an area
//! is unmapped everywhere. On top of that:
//! - *reserved* ranges (device reserved regions, domain apertures, the
//!   selftest's ADD_RESERVED) may never hold an area;
//! - *allowed* ranges (`IOMMU_IOAS_ALLOW_IOVAS`), when set, bound automatic
//!   IOVA allocation and may never be reserved;
//! - `iova_alignment` is the largest minimum page size of any domain or
//!   access (`PAGE_SIZE` when large pages are disabled); every area's IOVA,
//!   length and page offset are multiples of it.
//!
//! Locking (the kernel's `domains_rwsem -> iova_rwsem -> pages::mutex`):
//! `domains` is held for writing to attach or detach a domain; `iova`
//! protects the areas, the ranges, a copy of the domain list (changed only
//! with both locks held for writing, so either lock keeps it stable) and a
//! pool of unused `Pages`.
//!
//! - *Small* maps and unmaps (one area of at most `SMALL_BYTES`, the
//!   common case: a guest page) take the `iova` lock once, for writing,
//!   and do everything under it: take a `Pages` from the pool (or make
//!   one), check and reserve the IOVA, pin, map into every domain (the
//!   copy of the list), insert the area; or find the area, unmap it from
//!   every domain, unpin, remove it, put the `Pages` back. While the
//!   `Pages` is reachable only from here (no `IOMMU_IOAS_COPY` shared it),
//!   its pin records are changed through `&mut` without its lock. Other
//!   threads never see such an area half built.
//! - *Large* ones hold `domains` for reading from the reservation of the
//!   IOVA to the publication of the areas, and take `iova` only to reserve
//!   (placeholder areas whose `pages` is `None`, which other threads treat
//!   as busy) and to publish: the domains are filled without the `iova`
//!   lock, so concurrent maps of different ranges proceed in parallel.
//!   Unmap likewise tears a large area down outside the `iova` lock.
//!
//! Storage: areas live in a slab indexed by IOVA in an arena map
//! (`areas`), `Pages` are recycled, pin records and frame runs are arena
//! maps too: a map and unmap in the steady state allocate nothing.
//!
//! Ranges: `last` is inclusive. IOVA may go up to `u64::MAX`, so `last + 1`
//! is only computed where it cannot overflow (checked otherwise).

mod areas;
mod dirty;

use areas::Areas;

pub use dirty::DirtyBitmap;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use uiommufd_memory::rwlock::{ReadGuard, RwLock, WriteGuard};

use uiommufd_hw::{self as hw, Domain, Prot};

use crate::error::{ebusy, eexist, einval, enoent, enospc, eopnotsupp, eoverflow, eperm, Error, Result};
use crate::pages::{page_size, Pages, PfnRun};
use crate::Errno;

/// Who put a reserved range in place; removing by owner undoes exactly it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// `IOMMU_TEST_OP_ADD_RESERVED` (kept until the IOAS goes).
    Test,
    /// The aperture of an attached domain.
    Domain(u64),
    /// Reserved regions of a device attached through this IOAS.
    Device(u64),
}

#[derive(Clone, Copy, Debug)]
struct Reserved {
    start: u64,
    last: u64,
    owner: Owner,
}

#[derive(Debug)]
struct Area {
    last: u64,
    /// `None` while the area is being set up or torn down.
    pages: Option<Arc<Pages>>,
    /// Offset of the area's first byte within `pages`.
    start_byte: u64,
    prot: Prot,
    /// Outstanding access pins in this area.
    num_accesses: u32,
    /// Of those, pins that lock the area: an unmap fails with `EBUSY` at
    /// once instead of asking the access to let go (mainline's
    /// `num_locks`, used by HW queues whose hardware reads the memory).
    num_locks: u32,
    /// An unmap is waiting for accesses to let go.
    prevent_access: bool,
}

impl Area {
    /// `length` bytes at `iova` from byte `start_byte` of `pages`.
    #[inline(always)]
    fn new(iova: u64, length: u64, start_byte: u64, prot: Prot, pages: Arc<Pages>) -> Area {
        Area { pages: Some(pages), ..Self::placeholder(iova, length, start_byte, prot) }
    }

    /// [`new`](Self::new) without the pages: an area being set up or torn
    /// down, which others see as busy.
    #[inline(always)]
    fn placeholder(iova: u64, length: u64, start_byte: u64, prot: Prot) -> Area {
        Area {
            last: iova + length - 1,
            pages: None,
            start_byte,
            prot,
            num_accesses: 0,
            num_locks: 0,
            prevent_access: false,
        }
    }

    #[inline(always)]
    fn len(&self, iova: u64) -> u64 {
        self.last - iova + 1
    }
    /// Page index range `[first, last]` of `pages` the area covers.
    #[inline(always)]
    fn index_range(&self, iova: u64) -> (u64, u64) {
        page_indexes(self.start_byte, self.len(iova))
    }
}

/// The first and last page index of `len` bytes from byte `start_byte` of
/// a `Pages`.
#[inline(always)]
fn page_indexes(start_byte: u64, len: u64) -> (u64, u64) {
    let shift = crate::pages::page_shift();
    (start_byte >> shift, (start_byte + len - 1) >> shift)
}

/// An attached domain.
#[derive(Clone)]
pub struct DomainEntry {
    /// Identity of the attachment (also the reserved-range owner).
    pub token: u64,
    pub domain: Arc<dyn Domain>,
}

/// Something that pins pages of this IOAS and must let go before an unmap
/// completes (`iommufd_access_ops::unmap`).
pub trait UnmapNotify: Send + Sync {
    fn unmap(&self, iova: u64, length: u64);
}

struct Iova {
    areas: Areas,
    reserved: Vec<Reserved>,
    allowed: Vec<(u64, u64)>,
    iova_alignment: u64,
    disable_large_pages: bool,
    /// Registered accesses: token -> (their alignment, who to notify).
    accesses: BTreeMap<u64, (u64, Weak<dyn UnmapNotify>)>,
    /// The attached domains, as `IoPagetable::domains` has them: changed
    /// only with both locks held for writing, so holding this lock alone
    /// keeps them stable (the small map and unmap work under this lock
    /// only).
    domains: Vec<DomainEntry>,
    /// Unused user `Pages` kept for the next small map (their pin records
    /// keep their storage): the steady state allocates nothing.
    pages_pool: PagesPool,
}

/// Up to [`PAGES_POOL`] unused `Pages`, a stack in place.
#[derive(Default)]
struct PagesPool {
    slots: [Option<Arc<Pages>>; PAGES_POOL],
    len: usize,
}

impl PagesPool {
    #[inline(always)]
    fn pop(&mut self) -> Option<Arc<Pages>> {
        let i = self.len.checked_sub(1)?;
        self.len = i;
        self.slots[i].take()
    }

    #[inline(always)]
    fn is_full(&self) -> bool {
        self.len == PAGES_POOL
    }

    /// Keep `pages` (dropped when the pool is full).
    #[inline(always)]
    fn push(&mut self, pages: Arc<Pages>) {
        if let Some(slot) = self.slots.get_mut(self.len) {
            *slot = Some(pages);
            self.len += 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

/// One piece of a list of pages to map (`struct iopt_pages_list`).
#[derive(Clone, Debug)]
pub struct PagesSlice {
    pub pages: Arc<Pages>,
    pub start_byte: u64,
    pub length: u64,
}

/// `struct io_pagetable`.
pub struct IoPagetable {
    domains: RwLock<Vec<DomainEntry>>,
    iova: RwLock<Iova>,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Maps and unmaps of at most this many bytes (one area) run entirely
/// under one hold of the `iova` lock; larger ones pin and fill the domains
/// without it, so that other maps of the IOAS proceed meanwhile.
const SMALL_BYTES: u64 = 64 << 12;

/// Recycled `Pages` kept per IOAS.
const PAGES_POOL: usize = 16;

/// [`Arc::get_mut`] without a locked instruction (see
/// [`uiommufd_memory::unique`]): the small map and unmap ask it of their
/// `Pages` on every call.
#[inline]
fn unique_pages(pages: &mut Arc<Pages>) -> Option<&mut Pages> {
    uiommufd_memory::unique::arc_get_mut(pages)
}

/// A fresh identity for domains, devices and accesses.
pub fn new_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

fn overlaps(a_start: u64, a_last: u64, b_start: u64, b_last: u64) -> bool {
    a_start <= b_last && b_start <= a_last
}

impl Iova {
    fn area_overlapping(&self, start: u64, last: u64) -> Option<u64> {
        if let Some((iova, a)) = self.areas.at_or_before(start) {
            if a.last >= start {
                return Some(iova);
            }
        }
        self.areas.first_in(start, last)
    }

    /// Whether an area overlaps `[start, last]`, with one lookup: areas
    /// are disjoint and sorted, so only the last one starting at or before
    /// `last` can (if it ends before `start`, every earlier one does).
    #[inline(always)]
    fn any_area_overlaps(&self, start: u64, last: u64) -> bool {
        self.areas.at_or_before(last).is_some_and(|(_, a)| a.last >= start)
    }

    #[inline(always)]
    fn reserved_overlapping(&self, start: u64, last: u64) -> bool {
        self.reserved.iter().any(|r| overlaps(r.start, r.last, start, last))
    }

    fn allowed_overlapping(&self, start: u64, last: u64) -> bool {
        self.allowed.iter().any(|&(s, l)| overlaps(s, l, start, last))
    }

    /// `iopt_check_iova`.
    #[inline(always)]
    fn check_iova(&self, iova: u64, length: u64) -> Result<()> {
        if iova & (self.iova_alignment - 1) != 0 {
            return Err(einval("IOVA is not aligned to the IOAS alignment"));
        }
        let last = iova.checked_add(length - 1).ok_or(eoverflow("IOVA range wraps"))?;
        if self.reserved_overlapping(iova, last) {
            return Err(einval("IOVA range intersects a reserved range"));
        }
        if self.any_area_overlaps(iova, last) {
            return Err(eexist("IOVA range is already mapped"));
        }
        Ok(())
    }

    /// Spans of `[from, to]` not covered by reserved ranges or areas.
    fn free_spans(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut used: Vec<(u64, u64)> = self.reserved.iter().map(|r| (r.start, r.last)).collect();
        used.extend(self.areas.iter().map(|(s, a)| (s, a.last)));
        holes_of(used, from, to)
    }

    /// `iopt_alloc_iova`: find IOVA for `length` bytes of memory that starts
    /// at user address `uptr` (0 if unknown).
    fn alloc_iova(&self, uptr: u64, length: u64) -> Result<u64> {
        let ps = page_size();
        if length == 0 || length >= u64::MAX / 2 {
            return Err(eoverflow("length too large to place"));
        }
        let page_offset = uptr % ps;
        let pow = length.next_power_of_two();
        let mut align = if uptr == 0 { pow } else { pow.min(1u64 << uptr.trailing_zeros()) };
        // Like the kernel with transparent huge pages: prefer IOVA aligned as
        // the user VA is, up to a PMD.
        let max_align = huge_page_size();
        if align >= max_align {
            align = max_align;
        }
        if align < self.iova_alignment {
            return Err(einval("user address alignment is below the IOAS alignment"));
        }
        let allowed: Vec<(u64, u64)> = if self.allowed.is_empty() {
            vec![(ps, u64::MAX - ps)]
        } else {
            sorted_spans(&self.allowed, ps, u64::MAX - ps)
        };
        for (mut s, l) in allowed {
            if !check_range(&mut s, l, length, align, page_offset) {
                continue;
            }
            for (mut hs, hl) in self.free_spans(s, l) {
                if check_range(&mut hs, hl, length, align, page_offset) {
                    return Ok(hs);
                }
            }
        }
        Err(enospc("no free IOVA range fits"))
    }

    /// The checks `iopt_map_pages` makes before it inserts the areas of
    /// `list` (back to back, `length` bytes in all), in the kernel's order;
    /// returns the IOVA they go to (`iova`, or one allocated).
    #[inline(always)]
    fn check_list<'a>(
        &self,
        list: impl Iterator<Item = (&'a Pages, u64, u64)> + Clone,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64> {
        if length & (self.iova_alignment - 1) != 0 || length == 0 {
            return Err(einval("length is zero or not aligned to the IOAS alignment"));
        }
        if uiommufd_memory::failpoint::should_fail() {
            return Err(crate::error::enomem("injected failure: area allocation"));
        }
        let start = match iova {
            None => {
                let (pages, start_byte, _) = list.clone().next().expect("a list is never empty");
                self.alloc_iova(pages.uptr() + start_byte, length)?
            }
            Some(v) => {
                self.check_iova(v, length)?;
                v
            }
        };
        let mut at = start;
        for (pages, start_byte, len) in list {
            if prot.contains(Prot::WRITE) && !pages.writable() {
                return Err(eperm("pages are not writable"));
            }
            if start_byte & (page_size() - 1) & (self.iova_alignment - 1) != 0 {
                return Err(einval("page offset breaks the IOAS alignment"));
            }
            let last = at.checked_add(len - 1).ok_or(eoverflow("IOVA range wraps"))?;
            start_byte.checked_add(len - 1).ok_or(eoverflow("page range wraps"))?;
            at = last.wrapping_add(1);
        }
        Ok(start)
    }

    /// The alignment all domains and accesses require (`iopt_calculate_iova_alignment`).
    fn required_alignment(&self, domains: &[DomainEntry]) -> u64 {
        let mut a = if self.disable_large_pages { page_size() } else { 1 };
        for d in domains {
            a = a.max(min_pgsize(d.domain.pgsize_bitmap()));
        }
        for (al, _) in self.accesses.values() {
            a = a.max(*al);
        }
        a
    }

    /// `iopt_check_iova_alignment`: every area conforms to `align`.
    fn check_alignment(&self, align: u64) -> Result<()> {
        let mask = align - 1;
        for (iova, a) in self.areas.iter() {
            if iova & mask != 0 || a.len(iova) & mask != 0 || (a.start_byte % page_size()) & mask != 0 {
                return Err(Error::new(Errno::EADDRINUSE, "an existing mapping breaks the new alignment"));
            }
        }
        Ok(())
    }

    fn recalc_alignment(&mut self, domains: &[DomainEntry]) -> Result<()> {
        let new = self.required_alignment(domains);
        if new > self.iova_alignment {
            self.check_alignment(new)?;
        }
        self.iova_alignment = new;
        Ok(())
    }
}

/// `__alloc_iova_check_range`.
fn check_range(start: &mut u64, last: u64, length: u64, align: u64, page_offset: u64) -> bool {
    let Some(up) = start.checked_add(align - 1) else { return false };
    let aligned = (up & !(align - 1)) | page_offset;
    if aligned >= last || last - aligned < length - 1 {
        return false;
    }
    *start = aligned;
    true
}

/// The uncovered parts of `[from, to]` given possibly overlapping `used`.
fn holes_of(mut used: Vec<(u64, u64)>, from: u64, to: u64) -> Vec<(u64, u64)> {
    used.sort_unstable();
    let mut out = Vec::new();
    let mut cur = from;
    let mut done = false;
    for (s, l) in used {
        if l < cur || done {
            continue;
        }
        if s > to {
            break;
        }
        if s > cur {
            out.push((cur, s - 1));
        }
        match l.checked_add(1) {
            Some(n) if l < to => cur = cur.max(n),
            _ => done = true,
        }
    }
    if !done && cur <= to {
        out.push((cur, to));
    }
    out
}

/// Union of `spans`, clipped to `[from, to]`, in order.
fn sorted_spans(spans: &[(u64, u64)], from: u64, to: u64) -> Vec<(u64, u64)> {
    let holes = holes_of(spans.to_vec(), from, to);
    holes_of(holes, from, to)
}

fn min_pgsize(bitmap: u64) -> u64 {
    if bitmap == 0 {
        page_size()
    } else {
        1 << bitmap.trailing_zeros()
    }
}

/// The PMD size the kernel's THP would use (`HPAGE_SIZE`).
fn huge_page_size() -> u64 {
    512 * page_size()
}

/// The IOAS locks are held briefly and wanted back to back by threads
/// mapping into one IOAS: one word each, spinning a while before sleeping
/// ([`uiommufd_memory::rwlock`]).
#[inline(always)]
fn lock_read<T>(l: &RwLock<T>) -> ReadGuard<'_, T> {
    l.read()
}

#[inline(always)]
fn lock_write<T>(l: &RwLock<T>) -> WriteGuard<'_, T> {
    l.write()
}

impl Default for IoPagetable {
    fn default() -> Self {
        IoPagetable {
            domains: RwLock::new(Vec::new()),
            iova: RwLock::new(Iova {
                areas: Areas::default(),
                reserved: Vec::new(),
                allowed: Vec::new(),
                iova_alignment: 1,
                disable_large_pages: false,
                accesses: BTreeMap::new(),
                domains: Vec::new(),
                pages_pool: PagesPool::default(),
            }),
        }
    }
}

/// Map the pinned frames `runs` of an area (IOVA `iova`, pages from byte
/// `start_byte`, `len` bytes) into `domain`.
#[inline(always)]
fn map_runs(
    domain: &dyn Domain,
    iova: u64,
    start_byte: u64,
    len: u64,
    runs: &[PfnRun],
    prot: Prot,
    max_pgsize: u64,
) -> Result<()> {
    let ps = page_size();
    let end_byte = start_byte + len;
    let mut mapped = 0u64;
    for r in runs {
        let b0 = (r.index * ps).max(start_byte);
        let b1 = ((r.index + r.npages) * ps).min(end_byte);
        if b0 >= b1 {
            continue;
        }
        let at = iova + (b0 - start_byte);
        let pa = r.pfn * ps + (b0 - r.index * ps);
        if let Err(e) = hw::map(domain, at, pa, b1 - b0, prot, max_pgsize) {
            if mapped != 0 {
                hw::unmap(domain, iova, mapped, 0);
            }
            return Err(Error::new(e, "mapping into the IOMMU domain"));
        }
        mapped = b1 - start_byte;
    }
    Ok(())
}

impl IoPagetable {
    pub fn new() -> Self {
        Self::default()
    }

    fn max_pgsize(st: &Iova) -> u64 {
        if st.disable_large_pages {
            page_size()
        } else {
            0
        }
    }

    /// Fill one area into one domain: take a user of its pages, map them.
    /// A revoked dma-buf import maps into no domain (`iopt_area_fill_domain`).
    fn fill_area(domain: &dyn Domain, iova: u64, area: &Area, pages: &Pages, max_pgsize: u64) -> Result<()> {
        if pages.revoked() {
            return Ok(());
        }
        let (first, last) = area.index_range(iova);
        let runs = pages.add_user(first, last)?;
        if let Err(e) = map_runs(domain, iova, area.start_byte, area.len(iova), &runs, area.prot, max_pgsize) {
            pages.remove_user(first, last);
            return Err(e);
        }
        Ok(())
    }

    fn unfill_area(domain: &dyn Domain, iova: u64, area: &Area, pages: &Pages) {
        if pages.revoked() {
            return;
        }
        let (first, last) = area.index_range(iova);
        hw::unmap(domain, iova, area.len(iova), 0);
        pages.remove_user(first, last);
    }

    /// `iopt_revoke_notify` for this IOAS: unmap every area of the dma-buf
    /// import `pages` from every domain and mark it revoked (once).
    pub fn revoke_pages(&self, pages: &Arc<Pages>) {
        let domains = lock_read(&self.domains);
        let st = lock_write(&self.iova);
        if pages.revoked() {
            return;
        }
        for (a_iova, a) in st.areas.iter() {
            if a.pages.as_ref().is_some_and(|p| Arc::ptr_eq(p, pages)) {
                for d in domains.iter() {
                    Self::unfill_area(d.domain.as_ref(), a_iova, a, pages);
                }
            }
        }
        pages.set_revoked();
    }

    /// `iopt_map_user_pages`: map `length` bytes of user memory at `uptr`.
    /// With `iova` `None` the IOVA is chosen (and returned).
    pub fn map_user(
        &self,
        uptr: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
        mode: crate::account::AccountMode,
    ) -> Result<u64> {
        if length <= SMALL_BYTES {
            return Self::map_small_locked(&mut lock_write(&self.iova), uptr, length, iova, prot, mode);
        }
        let pages = Arc::new(Pages::new(uptr, length, prot.contains(Prot::WRITE), mode)?);
        let start_byte = uptr - pages.uptr();
        self.map_list(&[PagesSlice { pages, start_byte, length }], length, iova, prot)
    }

    /// [`map_user`](Self::map_user) for a caller without a short-term use
    /// of the IOAS (a typed handle, [`crate::IoasHandle`]): `live` is asked
    /// first, under the `iova` lock that a destroy must find free (see
    /// [`quiesce`](Self::quiesce)), so a small map costs one lock
    /// acquisition and no other shared write. `None`: not a small map, or
    /// `live` said no; nothing was done (the caller takes the usual way).
    #[inline]
    pub(crate) fn map_user_if(
        &self,
        live: impl FnOnce() -> bool,
        uptr: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
        mode: crate::account::AccountMode,
    ) -> Option<Result<u64>> {
        if length > SMALL_BYTES {
            return None;
        }
        let mut guard = lock_write(&self.iova);
        if !live() {
            return None;
        }
        Some(Self::map_small_locked(&mut guard, uptr, length, iova, prot, mode))
    }

    /// Whether no thread holds the `iova` lock, waiting a little for one
    /// that does: what removing the IOAS asks while it decides, so that a
    /// call of [`map_user_if`](Self::map_user_if) or
    /// [`unmap_if`](Self::unmap_if) in progress makes it `EBUSY` (or is
    /// waited for) and every later one finds it gone. Never blocks: the
    /// caller holds the object table's lock.
    pub(crate) fn quiesce(&self) -> bool {
        for _ in 0..256 {
            if self.iova.try_write().is_some() {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// The `iova` lock, held as a small map or unmap holds it (for tests of
    /// what a destroy does meanwhile).
    #[cfg(test)]
    pub(crate) fn hold_for_test(&self) -> impl Drop + '_ {
        lock_write(&self.iova)
    }

    /// [`map_user`](Self::map_user) of a small range under the `iova`
    /// lock: everything (the `Pages`, the IOVA, pinning, every domain, the
    /// area) under one hold of it, with a recycled `Pages` whose pin
    /// records need no lock while nobody else can see them. The same checks
    /// and outcomes as the general path, in its order.
    #[inline(always)]
    fn map_small_locked(
        st: &mut Iova,
        uptr: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
        mode: crate::account::AccountMode,
    ) -> Result<u64> {
        let writable = prot.contains(Prot::WRITE);
        let (mut pages, recycled) = match st.pages_pool.pop() {
            Some(pages) => (pages, true),
            None => (Arc::new(Pages::new(uptr, length, writable, mode)?), false),
        };
        // Pooled pages are unique too (`retire` keeps only those).
        let p = unique_pages(&mut pages).expect("not published yet");
        if recycled {
            if let Err(e) = p.recycle(uptr, length, writable, mode) {
                st.pages_pool.push(pages);
                return Err(e);
            }
        }
        let start_byte = uptr - p.uptr();
        let start = match st.check_list(std::iter::once((&*p, start_byte, length)), length, iova, prot) {
            Ok(start) => start,
            Err(e) => {
                Self::retire(st, pages);
                return Err(e);
            }
        };
        if let Err(e) = Self::fill_small(st, p, start, start_byte, length, prot) {
            Self::retire(st, pages);
            return Err(e);
        }
        st.areas.insert(start, Area::new(start, length, start_byte, prot, pages));
        Ok(start)
    }

    /// The small map's pin and page tables: `length` bytes from byte
    /// `start_byte` of `p` (nothing pinned in it yet) at `start`, into
    /// every domain, one user each, pinned once. On failure nothing is
    /// left pinned or mapped.
    #[inline(always)]
    fn fill_small(st: &Iova, p: &mut Pages, start: u64, start_byte: u64, length: u64, prot: Prot) -> Result<()> {
        if st.domains.is_empty() {
            return Ok(());
        }
        let users = st.domains.len() as u32;
        let shift = crate::pages::page_shift();
        let (first, last) = page_indexes(start_byte, length);
        let max_pgsize = Self::max_pgsize(st);
        let (e, j) = 'failed: {
            match p.pin_fresh_exclusive(first, last, users)? {
                // The usual case: one run of frames for the whole area.
                Some(run) => {
                    let pa = (run.pfn << shift) + (start_byte - (first << shift));
                    for (j, d) in st.domains.iter().enumerate() {
                        if let Err(e) = hw::map(d.domain.as_ref(), start, pa, length, prot, max_pgsize) {
                            break 'failed (Error::new(e, "mapping into the IOMMU domain"), j);
                        }
                    }
                }
                None => {
                    let runs = p.pfns(first, last);
                    for (j, d) in st.domains.iter().enumerate() {
                        if let Err(e) = map_runs(d.domain.as_ref(), start, start_byte, length, &runs, prot, max_pgsize)
                        {
                            break 'failed (e, j);
                        }
                    }
                }
            }
            return Ok(());
        };
        for d in &st.domains[..j] {
            hw::unmap(d.domain.as_ref(), start, length, 0);
        }
        p.remove_users_exclusive(first, last, users);
        Err(e)
    }

    /// A `Pages` nothing uses any more: kept for reuse when it can be.
    fn retire(st: &mut Iova, mut pages: Arc<Pages>) {
        if !st.pages_pool.is_full() {
            if let Some(p) = unique_pages(&mut pages) {
                if p.recyclable() {
                    st.pages_pool.push(pages);
                }
            }
        }
    }

    /// `iopt_map_pages`: map a list of page slices back to back.
    pub fn map_pages(&self, list: Vec<PagesSlice>, length: u64, iova: Option<u64>, prot: Prot) -> Result<u64> {
        self.map_list(&list, length, iova, prot)
    }

    /// The area for `elm` placed at `at`, not yet published.
    fn placeholder(at: u64, elm: &PagesSlice, prot: Prot) -> Area {
        Area::placeholder(at, elm.length, elm.start_byte, prot)
    }

    /// [`map_pages`](Self::map_pages) over a borrowed list (no allocation
    /// of its own: the areas' IOVAs follow from `start` and the lengths).
    fn map_list(&self, list: &[PagesSlice], length: u64, iova: Option<u64>, prot: Prot) -> Result<u64> {
        // Domains stay read-locked from the reservation to the publication
        // (`domains_rwsem` before `iova_rwsem`), so the set filled below is
        // the set attached, and a domain attached later sees the areas
        // filled.
        let domains = lock_read(&self.domains);
        // 1. Reserve the IOVA with placeholder areas.
        let (start, max_pgsize) = {
            let mut st = lock_write(&self.iova);
            let start = st.check_list(list.iter().map(|e| (&*e.pages, e.start_byte, e.length)), length, iova, prot)?;
            let mut at = start;
            for elm in list {
                st.areas.insert(at, Self::placeholder(at, elm, prot));
                at = at.wrapping_add(elm.length);
            }
            (start, Self::max_pgsize(&st))
        };
        // 2. Fill every domain, without the iova lock.
        let mut failure = None;
        let mut at = start;
        'outer: for (i, elm) in list.iter().enumerate() {
            let area = Self::placeholder(at, elm, prot);
            for (j, d) in domains.iter().enumerate() {
                if let Err(e) = Self::fill_area(d.domain.as_ref(), at, &area, &elm.pages, max_pgsize) {
                    failure = Some((e, i, j));
                    break 'outer;
                }
            }
            at = at.wrapping_add(elm.length);
        }
        if let Some((e, fail_i, fail_j)) = failure {
            // Undo, in order, every (area, domain) filled before the failure.
            let mut at = start;
            for (i, elm) in list.iter().enumerate().take(fail_i + 1) {
                let area = Self::placeholder(at, elm, prot);
                let upto = if i == fail_i { fail_j } else { domains.len() };
                for d in &domains[..upto] {
                    Self::unfill_area(d.domain.as_ref(), at, &area, &elm.pages);
                }
                at = at.wrapping_add(elm.length);
            }
            let mut st = lock_write(&self.iova);
            let mut k = start;
            for elm in list {
                st.areas.remove(k);
                k = k.wrapping_add(elm.length);
            }
            return Err(e);
        }
        // 3. Publish: the pages move into the areas while domains are still
        // read-locked, so a domain attached later sees them filled.
        let mut st = lock_write(&self.iova);
        let mut k = start;
        for elm in list {
            if let Some(a) = st.areas.get_mut(k) {
                a.pages = Some(Arc::clone(&elm.pages));
            }
            k = k.wrapping_add(elm.length);
        }
        drop(st);
        drop(domains);
        Ok(start)
    }

    /// `iopt_get_phys` (`IOMMU_IOAS_NOIOMMU_GET_PA`): the physical address
    /// `iova` maps to and how many bytes from it are physically contiguous
    /// (at most `max_length`), read from the area's storage domain, which
    /// must be a no-IOMMU domain (the software page table a device without
    /// an IOMMU gets). `ENOENT` when no area holds `iova`; `EOPNOTSUPP` when
    /// no no-IOMMU device is attached: no device we emulate runs without an
    /// IOMMU, so that is every mapped IOVA here.
    pub fn get_phys(&self, iova: u64, max_length: u64) -> Result<(u64, u64)> {
        if max_length == 0 {
            return Err(einval("length is zero"));
        }
        let st = lock_read(&self.iova);
        match st.areas.at_or_before(iova) {
            Some((_, a)) if a.last >= iova && a.pages.is_some() => {
                if a.pages.as_ref().is_some_and(|p| p.revoked()) {
                    return Err(einval("the area's dma-buf is revoked"));
                }
                Err(eopnotsupp("the area's storage domain is not a no-IOMMU domain"))
            }
            _ => Err(enoent("no area holds the IOVA")),
        }
    }

    /// `iopt_get_pages`: the page slices behind `[iova, iova + length)`,
    /// which must be covered by contiguous areas.
    pub fn get_pages(&self, iova: u64, length: u64) -> Result<Vec<PagesSlice>> {
        if length == 0 {
            return Err(einval("length is zero"));
        }
        let last = iova.checked_add(length - 1).ok_or(eoverflow("IOVA range wraps"))?;
        let st = lock_read(&self.iova);
        let mut out = Vec::new();
        let mut cur = iova;
        loop {
            let Some((a_iova, a)) = st.areas.at_or_before(cur) else {
                return Err(enoent("IOVA range is not fully mapped"));
            };
            let Some(pages) = a.pages.as_ref().filter(|_| a.last >= cur) else {
                return Err(enoent("IOVA range is not fully mapped"));
            };
            let piece_last = a.last.min(last);
            out.push(PagesSlice {
                pages: Arc::clone(pages),
                start_byte: a.start_byte + (cur - a_iova),
                length: piece_last - cur + 1,
            });
            if piece_last == last {
                return Ok(out);
            }
            cur = piece_last + 1;
        }
    }

    /// `iopt_unmap_iova`: remove every area inside `[iova, iova + length)`;
    /// an area only partly inside makes it fail with `ENOENT`. Returns the
    /// bytes unmapped (also on failure, what was unmapped before it).
    pub fn unmap(&self, iova: u64, length: u64) -> (Result<()>, u64) {
        if length == 0 {
            return (Err(einval("length is zero")), 0);
        }
        let Some(last) = iova.checked_add(length - 1) else {
            return (Err(eoverflow("IOVA range wraps")), 0);
        };
        self.unmap_range(iova, last)
    }

    /// `iopt_unmap_all`.
    pub fn unmap_all(&self) -> (Result<()>, u64) {
        self.unmap_range(0, u64::MAX)
    }

    fn unmap_range(&self, mut start: u64, last: u64) -> (Result<()>, u64) {
        if let Some(n) = self.unmap_small(start, last) {
            return (Ok(()), n);
        }
        let mut unmapped = 0u64;
        let mut tries = 0u32;
        loop {
            let domains = lock_read(&self.domains);
            let mut st = lock_write(&self.iova);
            let Some(a_iova) = st.area_overlapping(start, last) else { return (Ok(()), unmapped) };
            let area = st.areas.get_mut(a_iova).expect("found");
            if area.pages.is_none() {
                return (Err(ebusy("the range is being mapped or unmapped concurrently")), unmapped);
            }
            if a_iova < start || area.last > last {
                return (Err(enoent("an area crosses the edge of the range")), unmapped);
            }
            if a_iova != start {
                tries = 0;
            }
            if area.num_locks != 0 {
                return (Err(ebusy("the range is locked by a hardware queue")), unmapped);
            }
            if area.num_accesses != 0 {
                area.prevent_access = true;
                let len = area.len(a_iova);
                start = a_iova;
                let notify: Vec<Arc<dyn UnmapNotify>> = st.accesses.values().filter_map(|(_, w)| w.upgrade()).collect();
                drop(st);
                drop(domains);
                for n in notify {
                    n.unmap(a_iova, len);
                }
                tries += 1;
                if tries > 100 {
                    return (Err(Error::new(Errno::EDEADLK, "an access does not release its pages")), unmapped);
                }
                continue;
            }
            let pages = area.pages.take().expect("checked");
            let area_last = area.last;
            // Tear down outside the iova lock; the placeholder keeps the
            // range busy meanwhile.
            let view = Area {
                last: area.last,
                pages: None,
                start_byte: area.start_byte,
                prot: area.prot,
                num_accesses: 0,
                num_locks: 0,
                prevent_access: false,
            };
            drop(st);
            for d in domains.iter() {
                Self::unfill_area(d.domain.as_ref(), a_iova, &view, &pages);
            }
            let mut st = lock_write(&self.iova);
            st.areas.remove(a_iova);
            drop(st);
            drop(domains);
            drop(pages);
            unmapped += area_last - a_iova + 1;
            if area_last >= last {
                return (Ok(()), unmapped);
            }
            start = area_last + 1;
        }
    }

    /// The common unmap: `[start, last]` is exactly one small area nobody
    /// pins (no access, no lock) and no one is building or tearing down.
    /// Unfilled, removed and its `Pages` recycled under one hold of the
    /// `iova` lock. `None`: not that case, nothing done (the general path
    /// decides).
    fn unmap_small(&self, start: u64, last: u64) -> Option<u64> {
        if last - start >= SMALL_BYTES {
            return None;
        }
        Self::unmap_small_locked(&mut lock_write(&self.iova), start, last)
    }

    /// [`unmap`](Self::unmap) for a caller without a short-term use of the
    /// IOAS, as [`map_user_if`](Self::map_user_if): the small unmap of
    /// exactly one area after `live` said yes under the lock; the bytes
    /// unmapped. `None`: another case, or `live` said no; nothing was done.
    #[inline]
    pub(crate) fn unmap_if(&self, live: impl FnOnce() -> bool, iova: u64, length: u64) -> Option<u64> {
        let last = iova.checked_add(length.checked_sub(1)?)?;
        if last - iova >= SMALL_BYTES {
            return None;
        }
        let mut guard = lock_write(&self.iova);
        if !live() {
            return None;
        }
        Self::unmap_small_locked(&mut guard, iova, last)
    }

    /// The body of [`unmap_small`](Self::unmap_small), under the `iova`
    /// lock.
    #[inline(always)]
    fn unmap_small_locked(st: &mut Iova, start: u64, last: u64) -> Option<u64> {
        // Taken out if it is the common case (one lookup). A revoked
        // dma-buf import is in no domain: the general path knows.
        let (pages, start_byte) = st.areas.remove_if(
            start,
            |a| {
                a.last == last
                    && a.num_accesses == 0
                    && a.num_locks == 0
                    && a.pages.as_ref().is_some_and(|p| !p.revoked())
            },
            |a| (a.pages.take(), a.start_byte),
        )?;
        let len = last - start + 1;
        let mut pages = pages.expect("checked");
        if st.domains.is_empty() {
            Self::retire(st, pages);
            return Some(len);
        }
        // Out of every domain, devices' translation caches invalidated
        // once, then unpinned.
        hw::unmap_each(st.domains.iter().map(|d| d.domain.as_ref()), start, len, 0);
        let (first, last_index) = page_indexes(start_byte, len);
        let users = st.domains.len() as u32;
        match unique_pages(&mut pages) {
            // Only this area held them: no lock needed for the pin records,
            // and they can be reused.
            Some(p) => {
                if p.unpin_users_exclusive(first, last_index, users) {
                    st.pages_pool.push(pages);
                }
            }
            None => {
                for _ in 0..users {
                    pages.remove_user(first, last_index);
                }
            }
        }
        Some(len)
    }

    /// `iopt_table_add_domain`: fill `domain` with every area and start
    /// keeping it in sync. On failure the domain is left untouched.
    pub fn add_domain(&self, token: u64, domain: Arc<dyn Domain>) -> Result<()> {
        let mut domains = lock_write(&self.domains);
        let mut st = lock_write(&self.iova);
        let ps = page_size();
        let new_align = min_pgsize(domain.pgsize_bitmap()).max(st.iova_alignment);
        if new_align > ps {
            return Err(einval("domain cannot map PAGE_SIZE"));
        }
        if new_align != st.iova_alignment {
            st.check_alignment(new_align)?;
        }
        let ap = domain.aperture();
        let owner = Owner::Domain(token);
        let reserve = |st: &mut Iova, s: u64, l: u64| -> Result<()> {
            if st.any_area_overlaps(s, l) || st.allowed_overlapping(s, l) {
                return Err(Error::new(Errno::EADDRINUSE, "domain aperture excludes mapped or allowed IOVA"));
            }
            st.reserved.push(Reserved { start: s, last: l, owner });
            Ok(())
        };
        let r = (|| {
            if ap.start != 0 {
                reserve(&mut st, 0, ap.start - 1)?;
            }
            if ap.last != u64::MAX {
                reserve(&mut st, ap.last + 1, u64::MAX)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            st.reserved.retain(|r| r.owner != owner);
            return Err(e);
        }
        let max_pgsize = Self::max_pgsize(&st);
        let keys: Vec<u64> = st.areas.iter().filter(|(_, a)| a.pages.is_some()).map(|(k, _)| k).collect();
        let mut done = Vec::new();
        for k in keys {
            let a = st.areas.get(k).expect("listed");
            let pages = a.pages.as_ref().expect("filtered");
            if let Err(e) = Self::fill_area(domain.as_ref(), k, a, pages, max_pgsize) {
                for d in done {
                    let a = st.areas.get(d).expect("filled");
                    Self::unfill_area(domain.as_ref(), d, a, a.pages.as_ref().expect("filled"));
                }
                st.reserved.retain(|r| r.owner != owner);
                return Err(e);
            }
            done.push(k);
        }
        st.iova_alignment = new_align;
        st.domains.push(DomainEntry { token, domain: Arc::clone(&domain) });
        domains.push(DomainEntry { token, domain });
        Ok(())
    }

    /// `iopt_table_remove_domain`.
    pub fn remove_domain(&self, token: u64) {
        let mut domains = lock_write(&self.domains);
        let mut st = lock_write(&self.iova);
        let Some(pos) = domains.iter().position(|d| d.token == token) else { return };
        let entry = domains.swap_remove(pos);
        st.domains.swap_remove(pos);
        for (k, a) in st.areas.iter() {
            if let Some(p) = &a.pages {
                Self::unfill_area(entry.domain.as_ref(), k, a, p);
            }
        }
        st.reserved.retain(|r| r.owner != Owner::Domain(token));
        let _ = st.recalc_alignment(&domains);
    }

    /// Attached domains.
    pub fn domains(&self) -> Vec<DomainEntry> {
        lock_read(&self.domains).clone()
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the holes between reserved ranges, and the
    /// alignment.
    pub fn iova_ranges(&self) -> (Vec<(u64, u64)>, u64) {
        let st = lock_read(&self.iova);
        let used: Vec<(u64, u64)> = st.reserved.iter().map(|r| (r.start, r.last)).collect();
        (holes_of(used, 0, u64::MAX), st.iova_alignment)
    }

    pub fn iova_alignment(&self) -> u64 {
        lock_read(&self.iova).iova_alignment
    }

    /// `iopt_set_allow_iova`: replace the allowed list. Ranges must not
    /// intersect reserved ones (`EADDRINUSE`).
    pub fn set_allowed(&self, ranges: Vec<(u64, u64)>) -> Result<()> {
        let mut st = lock_write(&self.iova);
        for &(s, l) in &ranges {
            if st.reserved_overlapping(s, l) {
                return Err(Error::new(Errno::EADDRINUSE, "allowed range intersects a reserved range"));
            }
        }
        st.allowed = ranges;
        Ok(())
    }

    /// `iopt_reserve_iova`.
    pub fn reserve(&self, start: u64, last: u64, owner: Owner) -> Result<()> {
        let mut st = lock_write(&self.iova);
        if st.any_area_overlaps(start, last) || st.allowed_overlapping(start, last) {
            return Err(Error::new(Errno::EADDRINUSE, "range is mapped or allowed"));
        }
        st.reserved.push(Reserved { start, last, owner });
        Ok(())
    }

    /// Reserve several ranges for `owner`, all or none.
    pub fn reserve_all(&self, ranges: &[(u64, u64)], owner: Owner) -> Result<()> {
        let mut st = lock_write(&self.iova);
        for &(s, l) in ranges {
            if st.any_area_overlaps(s, l) || st.allowed_overlapping(s, l) {
                st.reserved.retain(|r| r.owner != owner);
                return Err(Error::new(Errno::EADDRINUSE, "reserved region is mapped or allowed"));
            }
            st.reserved.push(Reserved { start: s, last: l, owner });
        }
        Ok(())
    }

    /// `iopt_remove_reserved_iova`.
    pub fn remove_reserved(&self, owner: Owner) {
        lock_write(&self.iova).reserved.retain(|r| r.owner != owner);
    }

    /// `IOMMU_OPTION_HUGE_PAGES` get.
    pub fn large_pages(&self) -> bool {
        !lock_read(&self.iova).disable_large_pages
    }

    /// `iopt_disable_large_pages` / `iopt_enable_large_pages`.
    pub fn set_large_pages(&self, enable: bool) -> Result<()> {
        let domains = lock_write(&self.domains);
        let mut st = lock_write(&self.iova);
        if enable {
            st.disable_large_pages = false;
            let _ = st.recalc_alignment(&domains);
            return Ok(());
        }
        if st.disable_large_pages {
            return Ok(());
        }
        if !domains.is_empty() && !st.areas.is_empty() {
            return Err(einval("domains already hold mappings"));
        }
        st.disable_large_pages = true;
        if let Err(e) = st.recalc_alignment(&domains) {
            st.disable_large_pages = false;
            return Err(e);
        }
        Ok(())
    }

    /// `iopt_add_access`: register an access needing `align`.
    pub fn add_access(&self, token: u64, align: u64, notify: Weak<dyn UnmapNotify>) -> Result<()> {
        let domains = lock_read(&self.domains);
        let mut st = lock_write(&self.iova);
        st.accesses.insert(token, (align, notify));
        if let Err(e) = st.recalc_alignment(&domains) {
            st.accesses.remove(&token);
            return Err(e);
        }
        Ok(())
    }

    /// `iopt_remove_access`.
    pub fn remove_access(&self, token: u64) {
        let domains = lock_read(&self.domains);
        let mut st = lock_write(&self.iova);
        st.accesses.remove(&token);
        let _ = st.recalc_alignment(&domains);
    }

    /// Pin `[iova, iova + length)` for an access (`iommufd_access_pin_pages`
    /// minus the access bookkeeping): every area in the range gains a user.
    /// Returns one slice per area, with its frames.
    pub fn access_pin(&self, iova: u64, length: u64, write: bool) -> Result<Vec<AccessPin>> {
        self.access_pin_locked(iova, length, write, false)
    }

    /// [`IoPagetable::access_pin`], optionally locking the areas against
    /// unmap (`EBUSY`) for as long as the pins are held.
    pub fn access_pin_locked(&self, iova: u64, length: u64, write: bool, lock: bool) -> Result<Vec<AccessPin>> {
        if length == 0 {
            return Err(einval("length is zero"));
        }
        let last = iova.checked_add(length - 1).ok_or(eoverflow("IOVA range wraps"))?;
        let mut st = lock_write(&self.iova);
        let ps = page_size();
        let mut out: Vec<AccessPin> = Vec::new();
        let mut cur = iova;
        let r = (|| loop {
            // Contiguous areas only: the next one must start where we are.
            let Some((a_iova, a)) = st.areas.at_or_before(cur) else {
                return Err(enoent("IOVA range is not fully mapped"));
            };
            if a.last < cur || a.pages.is_none() {
                return Err(enoent("IOVA range is not fully mapped"));
            }
            let piece_last = a.last.min(last);
            let sb = a.start_byte + (cur - a_iova);
            // `iopt_area_contig_is_aligned`: whole pages at the seams.
            let aligned =
                sb.is_multiple_of(ps) && (piece_last == last || (a.start_byte + (a.last - a_iova)) % ps == ps - 1);
            if a.prevent_access || !aligned {
                return Err(einval("range is being unmapped or not page aligned"));
            }
            if !prot_ok(a.prot, write) {
                return Err(eperm("mapping lacks the access permission"));
            }
            let pages = Arc::clone(a.pages.as_ref().expect("checked"));
            if pages.dmabuf().is_some() {
                return Err(einval("dma-buf memory cannot be reached by an access"));
            }
            let first = sb / ps;
            let lastp = (sb + (piece_last - cur)) / ps;
            let runs = pages.add_user(first, lastp)?;
            let area = st.areas.get_mut(a_iova).expect("area");
            area.num_accesses += 1;
            if lock {
                area.num_locks += 1;
            }
            out.push(AccessPin {
                area_iova: a_iova,
                iova: cur,
                last: piece_last,
                start_byte: sb,
                first,
                last_index: lastp,
                pages,
                runs,
                locked: lock,
            });
            if piece_last == last {
                return Ok(());
            }
            cur = piece_last + 1;
        })();
        if let Err(e) = r {
            drop(st);
            self.access_unpin(&out);
            return Err(e);
        }
        Ok(out)
    }

    /// Undo [`IoPagetable::access_pin`].
    pub fn access_unpin(&self, pins: &[AccessPin]) {
        let mut st = lock_write(&self.iova);
        for p in pins {
            if let Some(a) = st.areas.get_mut(p.area_iova) {
                a.num_accesses = a.num_accesses.saturating_sub(1);
                if p.locked {
                    a.num_locks = a.num_locks.saturating_sub(1);
                }
            }
            p.pages.remove_user(p.first, p.last_index);
        }
    }

    /// `iommufd_access_rw`: copy between `data` and `[iova, iova + len)`,
    /// area by area in IOVA order, through the pages' fast or slow path.
    /// As in the kernel (`iopt_for_each_contig_area`), the areas before a
    /// gap, an area being unmapped (`EINVAL`) or one lacking the permission
    /// (`EPERM`) are copied before the call fails: a failed write has still
    /// written the covered prefix (`ENOENT` for the gap).
    pub fn access_rw(&self, iova: u64, data: &mut [u8], write: bool, slow: bool) -> Result<()> {
        if data.is_empty() {
            return Err(einval("length is zero"));
        }
        let last = iova.checked_add(data.len() as u64 - 1).ok_or(eoverflow("IOVA range wraps"))?;
        // The usual case, one area holding the whole range: no list, and
        // the copy made under the read lock, as the kernel makes it under
        // `iova_rwsem` (no reference taken: with a million areas the
        // `Pages` is a cache miss, and a count would write its line).
        {
            let st = lock_read(&self.iova);
            if let Some((a_iova, a)) = st.areas.at_or_before(iova) {
                if let (true, Some(pages)) = (a.last >= last && !a.prevent_access, a.pages.as_ref()) {
                    if !prot_ok(a.prot, write) {
                        return Err(eperm("mapping lacks the access permission"));
                    }
                    if pages.dmabuf().is_some() {
                        return Err(einval("dma-buf memory cannot be reached by an access"));
                    }
                    return pages.rw(a.start_byte + (iova - a_iova), data, write, slow);
                }
            }
        }
        // The contiguous areas from `iova`, and why the walk stopped short
        // of `last`, if it did.
        let (slices, stop) = {
            let st = lock_read(&self.iova);
            let mut v: Vec<(u64, u64, Arc<Pages>, Prot)> = Vec::new();
            let mut stop = None;
            let mut cur = iova;
            loop {
                let area = st.areas.at_or_before(cur).filter(|(_, a)| a.last >= cur);
                let Some((a_iova, a)) = area else {
                    stop = Some(enoent("IOVA range is not fully mapped"));
                    break;
                };
                let Some(pages) = a.pages.as_ref() else {
                    stop = Some(enoent("IOVA range is not fully mapped"));
                    break;
                };
                if a.prevent_access {
                    stop = Some(einval("range is being unmapped"));
                    break;
                }
                let piece_last = a.last.min(last);
                v.push((cur - iova, a.start_byte + (cur - a_iova), Arc::clone(pages), a.prot));
                if piece_last == last {
                    break;
                }
                cur = piece_last + 1;
            }
            let done = if stop.is_some() { cur - iova } else { data.len() as u64 };
            (v, stop.map(|e| (done, e)))
        };
        let end_of_all = stop.as_ref().map_or(data.len() as u64, |&(done, _)| done);
        for (i, &(off, sb, ref pages, prot)) in slices.iter().enumerate() {
            if !prot_ok(prot, write) {
                return Err(eperm("mapping lacks the access permission"));
            }
            if pages.dmabuf().is_some() {
                return Err(einval("dma-buf memory cannot be reached by an access"));
            }
            let end = slices.get(i + 1).map_or(end_of_all, |n| n.0);
            pages.rw(sb, &mut data[off as usize..end as usize], write, slow)?;
        }
        match stop {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Bytes held for the areas and their index (for memory accounting:
    /// what an area costs beside the kernel's `iopt_area`).
    pub fn area_bytes(&self) -> usize {
        lock_read(&self.iova).areas.capacity_bytes()
    }

    /// What the areas hold in memory, by part (for `uiommufd bench
    /// --scale`: the cost of a mapping beside the kernel's).
    pub fn memory_use(&self) -> MemoryUse {
        let st = lock_read(&self.iova);
        let mut seen = std::collections::HashSet::new();
        let mut m = MemoryUse {
            areas: st.areas.len(),
            slot_bytes: st.areas.slot_bytes(),
            index_bytes: st.areas.index_bytes(),
            ..MemoryUse::default()
        };
        for p in st.areas.iter().filter_map(|(_, a)| a.pages.as_ref()) {
            if seen.insert(Arc::as_ptr(p)) {
                m.pages += 1;
                m.pin_record_bytes += p.pin_record_bytes();
            }
        }
        // The `Arc`'s two counts come with each `Pages`.
        m.pages_bytes = m.pages * (std::mem::size_of::<Pages>() + 16);
        m
    }

    /// Number of areas (for tests and checkers).
    pub fn num_areas(&self) -> usize {
        lock_read(&self.iova).areas.len()
    }

    /// Every area, for checkers.
    pub fn areas(&self) -> Vec<AreaInfo> {
        lock_read(&self.iova)
            .areas
            .iter()
            .map(|(iova, a)| AreaInfo {
                iova,
                last: a.last,
                pages: a.pages.clone(),
                start_byte: a.start_byte,
                prot: a.prot,
            })
            .collect()
    }

    /// `iopt_cut_iova`, for VFIO type1 (v1) compatibility: make each IOVA
    /// of `iovas` the last byte of the area holding it, splitting that area
    /// in two. IOVAs in no area are skipped; the cuts are made in order and
    /// the first refused one stops the walk (earlier cuts stay).
    ///
    /// Both halves keep the same [`Pages`], the right one from a later
    /// `start_byte`; nothing changes in the domains or the pins, which is
    /// only sound because every split leaves whole pages on each side and
    /// no huge IOPTE can straddle the cut. Refusals, in the kernel's order:
    /// - `EBUSY`: the area is being built or torn down;
    /// - `EINVAL`: the cut is not on the IOAS alignment (in IOVA or in the
    ///   pages), an access holds pins in the area, or the area is filled
    ///   into a domain while large pages are enabled.
    pub fn cut_iova(&self, iovas: &[u64]) -> Result<()> {
        // Domains only need to stay put (whether any exists decides whether
        // areas are filled); the area tree is what changes.
        let domains = lock_read(&self.domains);
        let mut st = lock_write(&self.iova);
        let filled = !domains.is_empty();
        for &iova in iovas {
            let Some(a_iova) = st.area_overlapping(iova, iova) else { continue };
            Self::split_area(&mut st, a_iova, iova, filled)?;
        }
        Ok(())
    }

    /// `iopt_area_split`: split the area at `a_iova` so that `iova` ends the
    /// left part. `filled` says whether the areas are mapped into domains.
    fn split_area(st: &mut Iova, a_iova: u64, iova: u64, filled: bool) -> Result<()> {
        let align = st.iova_alignment;
        let large_pages = !st.disable_large_pages;
        let area = st.areas.get(a_iova).expect("found by the caller");
        if iova == a_iova || iova == area.last {
            return Ok(());
        }
        let Some(pages) = area.pages.as_ref().filter(|_| !area.prevent_access) else {
            return Err(ebusy("the area is being mapped or unmapped"));
        };
        // `a_iova < iova < area.last`: neither sum below can overflow.
        let new_start = iova + 1;
        let rhs_start_byte = area.start_byte + (new_start - a_iova);
        if new_start & (align - 1) != 0 || rhs_start_byte & (align - 1) != 0 {
            return Err(einval("the cut is not on the IOAS alignment"));
        }
        if area.num_accesses != 0 {
            return Err(einval("an access holds pages of the area"));
        }
        if filled && large_pages {
            return Err(einval("the area may be mapped with large pages"));
        }
        // Filled areas only get here with large pages disabled, so the IOAS
        // alignment is at least a page: the domain users of the old area's
        // pages split exactly between the halves.
        debug_assert!(!filled || rhs_start_byte & (page_size() - 1) == 0);
        let lhs = Area {
            last: iova,
            pages: Some(Arc::clone(pages)),
            start_byte: area.start_byte,
            prot: area.prot,
            num_accesses: 0,
            num_locks: 0,
            prevent_access: false,
        };
        let rhs = Area {
            last: area.last,
            pages: Some(Arc::clone(pages)),
            start_byte: rhs_start_byte,
            prot: area.prot,
            num_accesses: 0,
            num_locks: 0,
            prevent_access: false,
        };
        // The left half takes the old area's slot (its `Arc<Pages>` is
        // dropped here, not leaked); the right half is a new area.
        *st.areas.get_mut(a_iova).expect("found above") = lhs;
        st.areas.insert(new_start, rhs);
        Ok(())
    }
}

fn prot_ok(prot: Prot, write: bool) -> bool {
    if write {
        prot.contains(Prot::WRITE)
    } else {
        prot.contains(Prot::READ)
    }
}

/// The memory an IOAS's areas hold, by part ([`IoPagetable::memory_use`]).
/// Capacities: what is allocated, used or not.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryUse {
    pub areas: usize,
    /// The area slots.
    pub slot_bytes: usize,
    /// The IOVA index's nodes.
    pub index_bytes: usize,
    /// Distinct `Pages` behind the areas.
    pub pages: usize,
    /// Their structures (with the `Arc`'s counts; not the allocator's
    /// rounding).
    pub pages_bytes: usize,
    /// Their pin records beyond the structure (node storage).
    pub pin_record_bytes: usize,
}

/// A snapshot of one area (for checkers and tools).
#[derive(Clone, Debug)]
pub struct AreaInfo {
    pub iova: u64,
    pub last: u64,
    /// `None` while the area is being built or torn down.
    pub pages: Option<Arc<Pages>>,
    pub start_byte: u64,
    pub prot: Prot,
}

/// One area's share of an access pin.
#[derive(Debug)]
pub struct AccessPin {
    pub area_iova: u64,
    pub iova: u64,
    pub last: u64,
    pub start_byte: u64,
    pub first: u64,
    pub last_index: u64,
    pub pages: Arc<Pages>,
    pub runs: crate::pages::PfnRuns,
    /// The pin locks its area against unmap.
    pub locked: bool,
}

impl Drop for IoPagetable {
    fn drop(&mut self) {
        // Destroy never fails: whatever is still mapped is torn down here.
        let _ = self.unmap_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes() {
        assert_eq!(holes_of(vec![], 0, 10), vec![(0, 10)]);
        assert_eq!(holes_of(vec![(2, 3), (3, 5)], 0, 10), vec![(0, 1), (6, 10)]);
        assert_eq!(holes_of(vec![(0, u64::MAX)], 0, u64::MAX), vec![]);
        assert_eq!(holes_of(vec![(5, u64::MAX)], 0, u64::MAX), vec![(0, 4)]);
        assert_eq!(holes_of(vec![(0, 4)], 0, u64::MAX), vec![(5, u64::MAX)]);
        assert_eq!(sorted_spans(&[(8, 9), (1, 2), (2, 4)], 0, 100), vec![(1, 4), (8, 9)]);
    }

    /// The small path: `Pages` recycled (no more than the pool keeps),
    /// every pin released, the same pages shared by a copy in another IOAS
    /// left alone when the first IOAS unmaps, and failures undone.
    #[test]
    fn small_maps_recycle_pages_and_leave_nothing_behind() {
        use uiommufd_hw::mock::{MockDomain, MOCK_APERTURE_START};
        let ps = page_size();
        let buf = vec![7u8; 8 * ps as usize];
        let va = (buf.as_ptr() as u64).next_multiple_of(ps);
        let a = IoPagetable::new();
        let b = IoPagetable::new();
        let (da, db) = (Arc::new(MockDomain::new(false).unwrap()), Arc::new(MockDomain::new(false).unwrap()));
        a.add_domain(new_token(), da.clone()).unwrap();
        b.add_domain(new_token(), db.clone()).unwrap();
        let iova = MOCK_APERTURE_START;
        let rw = Prot::READ | Prot::WRITE;
        let none = crate::account::AccountMode::None;
        for _ in 0..100 {
            assert_eq!(a.map_user(va, 2 * ps, Some(iova), rw, none).unwrap(), iova);
            assert_eq!(uiommufd_memory::frames::pin_count(va), 1);
            assert_eq!(a.unmap(iova, 2 * ps), (Ok(()), 2 * ps));
        }
        assert_eq!(uiommufd_memory::frames::pin_count(va), 0);
        assert_eq!(lock_read(&a.iova).pages_pool.len(), 1);
        // Shared with `b` by a copy: `a`'s unmap must not recycle them.
        a.map_user(va, 2 * ps, Some(iova), rw, none).unwrap();
        let list = a.get_pages(iova, 2 * ps).unwrap();
        b.map_pages(list, 2 * ps, Some(iova), rw).unwrap();
        assert_eq!(uiommufd_memory::frames::pin_count(va), 1, "one Pages: pinned once");
        assert_eq!(a.unmap(iova, 2 * ps), (Ok(()), 2 * ps));
        assert_eq!(lock_read(&a.iova).pages_pool.len(), 0, "still used by b");
        assert_eq!(db.iova_to_phys(iova + ps), uiommufd_memory::frames::pfn_at(va + ps).map(|p| p * ps));
        assert!(da.is_empty());
        assert_eq!(b.unmap(iova, 2 * ps), (Ok(()), 2 * ps));
        assert_eq!(lock_read(&b.iova).pages_pool.len(), 1);
        assert_eq!(uiommufd_memory::frames::pin_count(va), 0);
        // A failed small map (the range is taken) leaves the pool whole.
        a.map_user(va, ps, Some(iova), rw, none).unwrap();
        assert_eq!(a.map_user(va, ps, Some(iova), rw, none).unwrap_err().errno, Errno::EEXIST);
        assert_eq!(uiommufd_memory::frames::pin_count(va), 1);
        a.unmap_all().0.unwrap();
        assert_eq!(uiommufd_memory::frames::pin_count(va), 0);
        assert!(da.is_empty() && db.is_empty());
    }

    #[test]
    fn check_range_like_the_kernel() {
        let mut s = 0x1001;
        assert!(check_range(&mut s, 0xffff, 0x1000, 0x1000, 0));
        assert_eq!(s, 0x2000);
        let mut s = 0x1000;
        assert!(!check_range(&mut s, 0x1fff, 0x1001, 0x1000, 0));
        let mut s = u64::MAX - 1;
        assert!(!check_range(&mut s, u64::MAX, 1, 0x1000, 0));
    }
}
