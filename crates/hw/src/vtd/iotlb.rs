//! The IOTLB and first-stage paging-structure cache of a VT-d unit, and
//! its domain-ID allocator.
//!
//! Model: what hardware caches, with hardware's contract (spec 6.2
//! "Translation Caches", 6.5 "Invalidation of Translation Caches"):
//! - an entry, once filled, is served until an invalidation covering it
//!   (or replacement) removes it; table changes alone are never seen. That
//!   is the behaviour software must cope with, and the reason a nested
//!   domain's user must issue `IOMMU_HWPT_INVALIDATE`;
//! - the IOTLB holds combined (first- then second-stage) translations,
//!   tagged by domain ID, PASID and page; an entry covers 4 KiB, 2 MiB or
//!   1 GiB (the smaller of the two stages' leaves);
//! - the paging-structure cache holds first-stage non-leaf entries (where
//!   a walk of any address below them resumes), tagged the same way and by
//!   level;
//! - invalidation: global, domain-selective, PASID-selective and
//!   page-selective within a PASID with an address mask (2^AM pages at an
//!   address aligned to that size); a page-selective one with the
//!   invalidation hint (IH, the uAPI's LEAF flag) keeps paging-structure
//!   entries, as the spec allows.
//!
//! Structure: both caches are `crate::tlbcache::SetCache`s (4-way set
//! associative, clock replacement, seqlocked sets read without a lock),
//! indexed by a hash of tag and page.
//!
//! Invariant (no stale fill): a walk reads [`Iotlb::generation`] before
//! reading any table and passes it to the fill; every invalidation bumps
//! the generation before touching a set, and a fill is dropped under the
//! set lock if the generation moved. So an invalidation never leaves
//! behind an entry computed from tables read before it started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use uiommufd_abi::Errno;

use crate::tlbcache::{SetCache, VALID};

/// The PASID that tags requests without PASID in scalable mode (RID_PASID,
/// the kernel's `IOMMU_NO_PASID`).
pub const RID_PASID: u32 = 0;

/// `tag` layout: valid (63), level (50:48), domain ID (47:32), PASID (31:0).
const fn make_tag(did: u16, pasid: u32, level: u32) -> u64 {
    VALID | ((level as u64 & 7) << 48) | ((did as u64) << 32) | pasid as u64
}

const fn tag_level(tag: u64) -> u32 {
    ((tag >> 48) & 7) as u32
}

const fn tag_did(tag: u64) -> u16 {
    (tag >> 32) as u16
}

const fn tag_pasid(tag: u64) -> u32 {
    tag as u32
}

/// One of the unit's caches: entries classed by level.
struct Cache {
    c: SetCache,
}

impl Cache {
    fn new(sets: usize) -> Cache {
        Cache { c: SetCache::new(sets, |t| tag_level(t) as usize, 0) }
    }

    #[inline]
    fn index(&self, tag: u64, vpn: u64) -> usize {
        let h = vpn ^ (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40);
        (h as usize) & self.c.mask()
    }

    #[inline(always)]
    fn lookup(&self, tag: u64, vpn: u64) -> Option<u64> {
        self.c.lookup(self.index(tag, vpn), tag, vpn)
    }

    fn insert(&self, tag: u64, vpn: u64, data: u64, gen_ok: impl FnOnce() -> bool) -> bool {
        self.c.insert(self.index(tag, vpn), tag, vpn, data, gen_ok)
    }

    fn remove_in(&self, idx: usize, doomed: &mut impl FnMut(u64, u64) -> bool) -> usize {
        self.c.remove_in(idx, doomed)
    }

    fn remove_all(&self, doomed: impl FnMut(u64, u64) -> bool) -> usize {
        self.c.remove_all(doomed)
    }
}

/// An IOTLB hit: the cached data word and the entry's page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbHit {
    pub data: u64,
    pub page_shift: u32,
}

/// Counters of the slow paths (hits are not counted: the hit path writes
/// nothing shared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IotlbStats {
    pub misses: u64,
    pub fills: u64,
    pub evictions: u64,
    pub invalidations: u64,
    /// Valid IOTLB entries now.
    pub tlb_entries: usize,
    /// Valid paging-structure-cache entries now.
    pub psc_entries: usize,
}

/// A unit's IOTLB and paging-structure cache.
pub struct Iotlb {
    tlb: Cache,
    psc: Cache,
    gen: AtomicU64,
    misses: AtomicU64,
    fills: AtomicU64,
    invalidations: AtomicU64,
}

impl Default for Iotlb {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Iotlb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Iotlb").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// log2 of the bytes an IOTLB entry of `level` covers.
const fn tlb_shift(level: u32) -> u32 {
    12 + 9 * level
}

impl Iotlb {
    /// 1024 IOTLB entries (256 sets) and 256 paging-structure entries.
    pub fn new() -> Self {
        Self::with_geometry(256, 64)
    }

    /// `tlb_sets` and `psc_sets` sets of 4 ways (rounded up to powers of two).
    pub fn with_geometry(tlb_sets: usize, psc_sets: usize) -> Self {
        Iotlb {
            tlb: Cache::new(tlb_sets),
            psc: Cache::new(psc_sets),
            gen: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    /// Total IOTLB entries.
    pub fn capacity(&self) -> usize {
        self.tlb.c.capacity()
    }

    /// The invalidation generation a walk must read before it starts (see
    /// the module invariant).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The cached translation of `iova`, trying 4 KiB entries first and
    /// larger ones only when some are cached.
    #[inline(always)]
    pub fn lookup(&self, did: u16, pasid: u32, iova: u64) -> Option<TlbHit> {
        for level in 0..3 {
            if level > 0 && self.tlb.c.live(level as usize) == 0 {
                continue;
            }
            let shift = tlb_shift(level);
            if let Some(data) = self.tlb.lookup(make_tag(did, pasid, level), iova >> shift) {
                return Some(TlbHit { data, page_shift: shift });
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Cache `data` for the `1 << page_shift` page holding `iova` (12, 21 or
    /// 30), unless an invalidation happened since `gen` was read.
    pub fn insert(&self, gen: u64, did: u16, pasid: u32, iova: u64, page_shift: u32, data: u64) -> bool {
        let level = match page_shift {
            12 => 0,
            21 => 1,
            30 => 2,
            _ => return false,
        };
        let ok = self
            .tlb
            .insert(make_tag(did, pasid, level), iova >> page_shift, data, || self.gen.load(Ordering::Acquire) == gen);
        if ok {
            self.fills.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// The paging-structure-cache entry for the first-stage entry of
    /// `level` (1 = PDE .. 4 = PML5E) that maps `iova`.
    #[inline]
    pub fn psc_lookup(&self, did: u16, pasid: u32, level: u32, iova: u64) -> Option<u64> {
        if self.psc.c.live(level as usize) == 0 {
            return None;
        }
        self.psc.lookup(make_tag(did, pasid, level), iova >> tlb_shift(level))
    }

    pub fn psc_insert(&self, gen: u64, did: u16, pasid: u32, level: u32, iova: u64, data: u64) -> bool {
        if !(1..=4).contains(&level) {
            return false;
        }
        self.psc.insert(make_tag(did, pasid, level), iova >> tlb_shift(level), data, || {
            self.gen.load(Ordering::Acquire) == gen
        })
    }

    fn begin_invalidation(&self) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Global invalidation: everything.
    pub fn invalidate_all(&self) {
        self.begin_invalidation();
        self.tlb.remove_all(|_, _| true);
        self.psc.remove_all(|_, _| true);
    }

    /// Domain-selective invalidation (every PASID of `did`).
    pub fn invalidate_domain(&self, did: u16) {
        self.begin_invalidation();
        self.tlb.remove_all(|t, _| tag_did(t) == did);
        self.psc.remove_all(|t, _| tag_did(t) == did);
    }

    /// PASID-selective invalidation within `did`.
    pub fn invalidate_pasid(&self, did: u16, pasid: u32) {
        self.begin_invalidation();
        self.tlb.remove_all(|t, _| tag_did(t) == did && tag_pasid(t) == pasid);
        self.psc.remove_all(|t, _| tag_did(t) == did && tag_pasid(t) == pasid);
    }

    /// Page-selective-within-PASID invalidation (spec 6.5.2.4): every
    /// IOTLB entry of `(did, pasid)` overlapping the `2^am` pages at `addr`
    /// (aligned down to that size; `am >= 52` covers everything) and,
    /// unless `ih`, the paging-structure entries overlapping it.
    pub fn invalidate_range(&self, did: u16, pasid: u32, addr: u64, am: u32, ih: bool) {
        self.begin_invalidation();
        let range_shift = 12 + am.min(52);
        // Two blocks overlap iff they agree above the larger one's size.
        let overlaps = move |entry_shift: u32, vpn: u64| {
            let s = range_shift.max(entry_shift);
            let entry_base = vpn << entry_shift;
            s >= 64 || (entry_base >> s) == (addr >> s)
        };
        let mine = move |t: u64| tag_did(t) == did && tag_pasid(t) == pasid;
        if am <= 4 {
            // Small range: probe the sets that can hold it.
            let base = addr & !((1u64 << range_shift) - 1);
            let mut doomed = |t: u64, vpn: u64| mine(t) && overlaps(tlb_shift(tag_level(t)), vpn);
            for page in 0..(1u64 << am) {
                let iova = base + (page << 12);
                let tag = make_tag(did, pasid, 0);
                self.tlb.remove_in(self.tlb.index(tag, iova >> 12), &mut doomed);
            }
            for level in 1..3 {
                let tag = make_tag(did, pasid, level);
                self.tlb.remove_in(self.tlb.index(tag, base >> tlb_shift(level)), &mut doomed);
            }
            if !ih {
                for level in 1..=4 {
                    let tag = make_tag(did, pasid, level);
                    self.psc.remove_in(self.psc.index(tag, base >> tlb_shift(level)), &mut doomed);
                }
            }
        } else {
            self.tlb.remove_all(|t, vpn| mine(t) && overlaps(tlb_shift(tag_level(t)), vpn));
            if !ih {
                self.psc.remove_all(|t, vpn| mine(t) && overlaps(tlb_shift(tag_level(t)), vpn));
            }
        }
    }

    pub fn stats(&self) -> IotlbStats {
        IotlbStats {
            misses: self.misses.load(Ordering::Relaxed),
            fills: self.fills.load(Ordering::Relaxed),
            evictions: self.tlb.c.evictions(),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            tlb_entries: self.tlb.c.len(),
            psc_entries: self.psc.c.len(),
        }
    }
}

/// A unit's domain IDs (`iommu->domain_ids`): `cap_ndoms()` of them, IDs 0
/// and 1 (`FLPT_DEFAULT_DID`) reserved as `iommu_init_domains()` does, the
/// lowest free one handed out first (`domain_attach_iommu()`), `ENOSPC`
/// when none is left.
pub struct DomainIds {
    bits: Mutex<Vec<u64>>,
    count: u64,
}

impl DomainIds {
    pub fn new(ndoms: u64) -> Arc<Self> {
        let count = ndoms.clamp(2, 1 << 16);
        let mut bits = vec![0u64; count.div_ceil(64) as usize];
        bits[0] |= 0b11;
        Arc::new(DomainIds { bits: Mutex::new(bits), count })
    }

    pub fn alloc(self: &Arc<Self>) -> Result<DidLease, Errno> {
        let mut bits = self.bits.lock().unwrap_or_else(|e| e.into_inner());
        for (w, word) in bits.iter_mut().enumerate() {
            if *word != u64::MAX {
                let b = word.trailing_ones() as u64;
                let did = w as u64 * 64 + b;
                if did >= self.count {
                    break;
                }
                *word |= 1 << b;
                return Ok(DidLease { ids: Arc::clone(self), did: did as u16 });
            }
        }
        Err(Errno::ENOSPC)
    }

    fn free(&self, did: u16) {
        let mut bits = self.bits.lock().unwrap_or_else(|e| e.into_inner());
        if did >= 2 {
            if let Some(word) = bits.get_mut(usize::from(did) / 64) {
                *word &= !(1u64 << (did % 64));
            }
        }
    }
}

/// A domain ID held until dropped.
pub struct DidLease {
    ids: Arc<DomainIds>,
    did: u16,
}

impl DidLease {
    pub fn did(&self) -> u16 {
        self.did
    }
}

impl Drop for DidLease {
    fn drop(&mut self) {
        self.ids.free(self.did);
    }
}

impl core::fmt::Debug for DidLease {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DidLease({})", self.did)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_hit_and_stale_until_invalidated() {
        let t = Iotlb::new();
        assert_eq!(t.lookup(5, 0, 0x1234), None);
        let g = t.generation();
        assert!(t.insert(g, 5, 0, 0x1234, 12, 0xaaa000));
        assert_eq!(t.lookup(5, 0, 0x1fff), Some(TlbHit { data: 0xaaa000, page_shift: 12 }));
        // Other domain IDs, PASIDs and pages miss.
        assert_eq!(t.lookup(6, 0, 0x1000), None);
        assert_eq!(t.lookup(5, 1, 0x1000), None);
        assert_eq!(t.lookup(5, 0, 0x2000), None);
        // A 2 MiB entry covers its whole page.
        assert!(t.insert(g, 5, 0, 0x40_0000, 21, 0xbb_0000_0000));
        assert_eq!(t.lookup(5, 0, 0x5f_ffff).unwrap().page_shift, 21);
        // Refill of the same page replaces in place.
        assert!(t.insert(g, 5, 0, 0x1000, 12, 0xccc000));
        assert_eq!(t.lookup(5, 0, 0x1000).unwrap().data, 0xccc000);
        assert_eq!(t.stats().tlb_entries, 2);
        t.invalidate_domain(6);
        assert_eq!(t.stats().tlb_entries, 2);
        t.invalidate_domain(5);
        assert_eq!(t.stats().tlb_entries, 0);
        // A fill that read tables before an invalidation is dropped.
        assert!(!t.insert(g, 5, 0, 0x1000, 12, 0xddd000));
        assert_eq!(t.lookup(5, 0, 0x1000), None);
    }

    #[test]
    fn page_selective_invalidation() {
        let t = Iotlb::new();
        let g = t.generation();
        for p in 0..64u64 {
            t.insert(g, 3, 7, p << 12, 12, p << 12);
        }
        t.insert(g, 3, 7, 0x20_0000, 21, 0x4000_0000);
        t.insert(g, 3, 7, 0x4000_0000, 30, 0x8000_0000);
        t.insert(g, 3, 8, 0x1000, 12, 1 << 12);
        // 4 pages at 0x8000: pages 8..12 only.
        t.invalidate_range(3, 7, 0x8000, 2, true);
        for p in 0..64u64 {
            assert_eq!(t.lookup(3, 7, p << 12).is_some(), !(8..12).contains(&p), "page {p}");
        }
        // One page inside the 2 MiB entry removes it; the 1 GiB one stays.
        t.invalidate_range(3, 7, 0x20_5000, 0, false);
        assert_eq!(t.lookup(3, 7, 0x20_0000), None);
        assert!(t.lookup(3, 7, 0x4000_0000).is_some());
        // A large range (full scan path), not aligned: aligned down.
        t.invalidate_range(3, 7, 0x4000_1000, 18, false);
        assert_eq!(t.lookup(3, 7, 0x4123_4000), None);
        assert!(t.lookup(3, 7, 0x3000).is_some());
        // Everything in the PASID; the other PASID stays.
        t.invalidate_range(3, 7, 0, 52, false);
        assert_eq!(t.lookup(3, 7, 0x3000), None);
        assert!(t.lookup(3, 8, 0x1000).is_some());
        t.invalidate_pasid(3, 8);
        assert_eq!(t.stats().tlb_entries, 0);
    }

    #[test]
    fn psc_kept_by_leaf_invalidation() {
        let t = Iotlb::new();
        let g = t.generation();
        assert!(t.psc_insert(g, 1, 0, 1, 0x20_0000, 0x5000));
        assert!(t.psc_insert(g, 1, 0, 3, 0, 0x2000));
        assert_eq!(t.psc_lookup(1, 0, 1, 0x3f_f000), Some(0x5000));
        assert_eq!(t.psc_lookup(1, 0, 1, 0x40_0000), None);
        t.invalidate_range(1, 0, 0x20_0000, 0, true);
        assert_eq!(t.psc_lookup(1, 0, 1, 0x20_0000), Some(0x5000));
        t.invalidate_range(1, 0, 0x20_0000, 0, false);
        assert_eq!(t.psc_lookup(1, 0, 1, 0x20_0000), None);
        // The PML4E-level entry covers 512 GiB, so it overlaps too.
        assert_eq!(t.psc_lookup(1, 0, 3, 0x1234_5000), None);
        assert!(!t.psc_insert(g, 1, 0, 0, 0, 0));
    }

    #[test]
    fn replacement_is_per_entry() {
        // One set of 4 ways: the fifth fill evicts exactly one entry.
        let t = Iotlb::with_geometry(1, 1);
        let g = t.generation();
        for p in 0..4u64 {
            assert!(t.insert(g, 2, 0, p << 12, 12, p));
        }
        assert!(t.insert(g, 2, 0, 4 << 12, 12, 4));
        assert_eq!(t.stats().tlb_entries, 4);
        assert_eq!(t.stats().evictions, 1);
        let present: Vec<u64> = (0..5).filter(|p| t.lookup(2, 0, p << 12).is_some()).collect();
        assert_eq!(present.len(), 4);
        assert!(present.contains(&4));
        // Fill more: one eviction per fill, the cache stays full.
        for p in 5..40u64 {
            t.insert(g, 2, 0, p << 12, 12, p);
            assert_eq!(t.stats().tlb_entries, 4);
        }
        // A big cache: filling past capacity keeps it full.
        let t = Iotlb::new();
        let g = t.generation();
        for p in 0..(2 * t.capacity() as u64) {
            t.insert(g, 2, 0, p << 12, 12, p);
        }
        assert_eq!(t.stats().tlb_entries, t.capacity());
    }

    #[test]
    fn clock_prefers_unreferenced() {
        let t = Iotlb::with_geometry(1, 1);
        let g = t.generation();
        for p in 0..4u64 {
            t.insert(g, 2, 0, p << 12, 12, p);
        }
        // Nothing referenced yet: the hand's way goes.
        t.insert(g, 2, 0, 10 << 12, 12, 10);
        // Looking the survivors up references them...
        let survivors: Vec<u64> = (0..4).filter(|p| t.tlb.lookup(make_tag(2, 0, 0), *p).is_some()).collect();
        assert_eq!(survivors.len(), 3);
        // ...so the next fill evicts entry 10, filled but never used.
        t.insert(g, 2, 0, 11 << 12, 12, 11);
        for p in &survivors {
            assert!(t.lookup(2, 0, p << 12).is_some(), "survivor {p} evicted");
        }
        assert_eq!(t.lookup(2, 0, 10 << 12), None);
    }

    #[test]
    fn concurrent_lookups_see_whole_entries() {
        let t = Arc::new(Iotlb::with_geometry(4, 1));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hits = Arc::new(AtomicU64::new(0));
        let reader = {
            let (t, stop, hits) = (Arc::clone(&t), Arc::clone(&stop), Arc::clone(&hits));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for p in 0..32u64 {
                        if let Some(h) = t.lookup(9, 0, p << 12) {
                            // Data always belongs to the page looked up.
                            assert_eq!(h.data >> 20, p);
                            hits.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut round = 0u64;
        let mut next_flush = 0u64;
        while round < 20_000 || (hits.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline) {
            let p = round % 32;
            let g = t.generation();
            t.insert(g, 9, 0, p << 12, 12, p << 20 | (round & 0xfffff));
            if round == next_flush {
                t.invalidate_domain(9);
                next_flush += 97;
            }
            round += 1;
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert!(hits.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn domain_ids() {
        let ids = DomainIds::new(16);
        let a = ids.alloc().unwrap();
        let b = ids.alloc().unwrap();
        assert_eq!((a.did(), b.did()), (2, 3));
        let rest: Vec<DidLease> = (0..12).map(|_| ids.alloc().unwrap()).collect();
        assert_eq!(rest.last().unwrap().did(), 15);
        assert_eq!(ids.alloc().err(), Some(Errno::ENOSPC));
        drop(a);
        assert_eq!(ids.alloc().unwrap().did(), 2);
        let big = DomainIds::new(65536);
        assert_eq!(big.alloc().unwrap().did(), 2);
    }
}
