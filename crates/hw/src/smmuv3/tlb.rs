//! The SMMU's TLB and configuration cache, with hardware's contract
//! (IHI 0070 §16.2 "TLB tagging, VMIDs, ASIDs and participation in
//! broadcast TLB maintenance", §4.4 "TLB invalidation", §4.3 "Configuration
//! structure invalidation").
//!
//! Model:
//! - [`Tlb`]: one per SMMU. Entries are combined stage 1 + stage 2
//!   translations of nested streams, tagged by VMID and ASID; an entry from
//!   a global stage 1 leaf (nG = 0) matches every ASID of its VMID. An entry
//!   covers the smaller of the two stages' leaves (4KB .. 1GB, any of the
//!   three granules). Once filled it is served until an invalidation
//!   covering it (or replacement) removes it: table changes alone are never
//!   seen. Invalidation follows the commands: everything (`TLBI_NSNH_ALL`),
//!   by VMID (`TLBI_NH_ALL`, `TLBI_S12_VMALL`), by ASID within a VMID
//!   (`TLBI_NH_ASID`: non-global entries only), by address within a VMID
//!   for one ASID plus global entries (`TLBI_NH_VA`) or for all ASIDs
//!   (`TLBI_NH_VAA`). Stage-2-only and stage-1-only translations of the
//!   driver's own domains are not cached: the driver invalidates them
//!   before every unmap returns, so a cache there would never be seen
//!   stale. Walk caches (intermediate descriptors) are not modelled, which
//!   the architecture allows: leaf-only invalidation then removes as much
//!   as a full one.
//! - [`CdCache`]: one per nested domain (one guest STE): the CDs and level
//!   1 CD descriptors fetched from guest memory, by SubstreamID, served
//!   until `CFGI_CD` (one SubstreamID; with Leaf = 0 also its level 1
//!   descriptor), `CFGI_CD_ALL`, `CFGI_STE` or `CFGI_ALL` for a stream
//!   attached to the domain removes them. The CD used last is also kept
//!   packed in a seqlock of atomics, so the translation of a TLB hit reads
//!   its CD without a lock or a hash.
//!
//! Structure: the TLB is a `crate::tlbcache::SetCache` (4-way set
//! associative, clock replacement, seqlocked sets read without a lock),
//! indexed by VMID and page (not ASID, so that an address invalidation for
//! all ASIDs probes one set per page size).
//!
//! Invariant (no stale fill): a walk reads the cache's generation before
//! reading any table and passes it to the fill; every invalidation bumps
//! the generation before touching a set, and a fill is dropped under the
//! set lock if the generation moved.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::RwLock;

use super::ste::CdConfig;
use crate::tlbcache::{SetCache, VALID};

/// log2 of the entry sizes the TLB holds (4KB, 16KB, 64KB, 2MB, 32MB,
/// 512MB, 1GB).
pub const CLASS_SHIFTS: [u32; 7] = [12, 14, 16, 21, 25, 29, 30];
const NCLASS: usize = CLASS_SHIFTS.len();
const GLOBAL: u64 = 1 << 55;

const fn class_of(shift: u32) -> Option<usize> {
    let mut i = 0;
    while i < NCLASS {
        if CLASS_SHIFTS[i] == shift {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// `tag`: valid (63), class (58:56), global (55), VMID (47:32), ASID
/// (31:16; 0 for global entries).
const fn make_tag(vmid: u16, asid: u16, global: bool, class: usize) -> u64 {
    let asid = if global { 0 } else { asid as u64 };
    VALID | ((class as u64) << 56) | if global { GLOBAL } else { 0 } | ((vmid as u64) << 32) | (asid << 16)
}

const fn tag_class(tag: u64) -> usize {
    ((tag >> 56) & 7) as usize
}

const fn tag_vmid(tag: u64) -> u16 {
    (tag >> 32) as u16
}

const fn tag_asid(tag: u64) -> u16 {
    (tag >> 16) as u16
}

const fn tag_global(tag: u64) -> bool {
    tag & GLOBAL != 0
}

/// A TLB hit: the cached data word and the entry's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbHit {
    pub data: u64,
    pub page_shift: u32,
}

/// Counters of the slow paths and the current occupancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbStats {
    pub misses: u64,
    pub fills: u64,
    pub evictions: u64,
    pub invalidations: u64,
    pub entries: usize,
}

/// The TLB of one SMMU.
pub struct Tlb {
    /// Entries classed by size, global ones counted apart.
    c: SetCache,
    gen: AtomicU64,
    misses: AtomicU64,
    fills: AtomicU64,
    invalidations: AtomicU64,
}

impl Default for Tlb {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Tlb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tlb").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Tlb {
    /// 2048 entries (512 sets of 4 ways).
    pub fn new() -> Self {
        Self::with_sets(512)
    }

    /// `sets` sets of 4 ways (rounded up to a power of two).
    pub fn with_sets(sets: usize) -> Self {
        Tlb {
            c: SetCache::new(sets, tag_class, GLOBAL),
            gen: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.c.capacity()
    }

    pub fn stats(&self) -> TlbStats {
        TlbStats {
            misses: self.misses.load(Ordering::Relaxed),
            fills: self.fills.load(Ordering::Relaxed),
            evictions: self.c.evictions(),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            entries: self.c.len(),
        }
    }

    /// The generation a walk must read before it starts.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    #[inline]
    fn index(&self, vmid: u16, class: usize, vpn: u64) -> usize {
        let h = vpn ^ ((u64::from(vmid) << 8 | class as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40);
        (h as usize) & self.c.mask()
    }

    /// The cached translation of `va` for `(vmid, asid)`: an entry of that
    /// ASID or a global one, smallest page size first. A 4KB entry of the
    /// ASID is probed inline (the hot case); the rest out of line.
    #[inline(always)]
    pub fn lookup(&self, vmid: u16, asid: u16, va: u64) -> Option<TlbHit> {
        let vpn = va >> CLASS_SHIFTS[0];
        if let Some(data) = self.c.lookup(self.index(vmid, 0, vpn), make_tag(vmid, asid, false, 0), vpn) {
            return Some(TlbHit { data, page_shift: CLASS_SHIFTS[0] });
        }
        self.lookup_rest(vmid, asid, va)
    }

    /// [`Self::lookup`] after its first probe: the global 4KB entries,
    /// then the larger sizes.
    #[inline(never)]
    fn lookup_rest(&self, vmid: u16, asid: u16, va: u64) -> Option<TlbHit> {
        let globals = self.c.live_flagged() != 0;
        for (c, &shift) in CLASS_SHIFTS.iter().enumerate() {
            if self.c.live(c) == 0 {
                continue;
            }
            let vpn = va >> shift;
            let idx = self.index(vmid, c, vpn);
            if c != 0 {
                if let Some(data) = self.c.lookup(idx, make_tag(vmid, asid, false, c), vpn) {
                    return Some(TlbHit { data, page_shift: shift });
                }
            }
            if globals {
                if let Some(data) = self.c.lookup(idx, make_tag(vmid, 0, true, c), vpn) {
                    return Some(TlbHit { data, page_shift: shift });
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Count a hit that could not serve the access (a write through an
    /// entry filled from a writable-clean leaf, which needs the dirty-state
    /// update of a walk) as the miss it is.
    pub fn note_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Cache `data` for the `1 << page_shift` page holding `va` unless an
    /// invalidation happened since `gen` was read (or the size is not one
    /// of [`CLASS_SHIFTS`]).
    #[allow(clippy::too_many_arguments)]
    pub fn insert(&self, gen: u64, vmid: u16, asid: u16, global: bool, va: u64, page_shift: u32, data: u64) -> bool {
        let Some(c) = class_of(page_shift) else { return false };
        let tag = make_tag(vmid, asid, global, c);
        let vpn = va >> page_shift;
        let filled =
            self.c.insert(self.index(vmid, c, vpn), tag, vpn, data, || self.gen.load(Ordering::Acquire) == gen);
        if !filled {
            return false;
        }
        self.fills.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn begin_invalidation(&self) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything (`CMD_TLBI_NSNH_ALL`).
    pub fn invalidate_all(&self) -> usize {
        self.begin_invalidation();
        self.c.remove_all(|_, _| true)
    }

    /// Every entry of `vmid` (`CMD_TLBI_NH_ALL`, `CMD_TLBI_S12_VMALL`).
    pub fn invalidate_vmid(&self, vmid: u16) -> usize {
        self.begin_invalidation();
        self.c.remove_all(|t, _| tag_vmid(t) == vmid)
    }

    /// The non-global entries of `asid` in `vmid` (`CMD_TLBI_NH_ASID`).
    pub fn invalidate_asid(&self, vmid: u16, asid: u16) -> usize {
        self.begin_invalidation();
        self.c.remove_all(|t, _| tag_vmid(t) == vmid && !tag_global(t) && tag_asid(t) == asid)
    }

    /// Entries of `vmid` that translate any address in `start..=last`:
    /// of `asid` and global ones (`CMD_TLBI_NH_VA`), or of every ASID
    /// (`asid` `None`: `CMD_TLBI_NH_VAA`).
    pub fn invalidate_va(&self, vmid: u16, asid: Option<u16>, start: u64, last: u64) -> usize {
        self.begin_invalidation();
        let last = last.max(start);
        let mut doomed = move |t: u64, vpn: u64| {
            if tag_vmid(t) != vmid {
                return false;
            }
            if let Some(a) = asid {
                if !tag_global(t) && tag_asid(t) != a {
                    return false;
                }
            }
            let shift = CLASS_SHIFTS[tag_class(t)];
            let first = vpn << shift;
            let end_incl = first | ((1u64 << shift) - 1);
            first <= last && end_incl >= start
        };
        // Few pages in every live size: probe their sets; else scan.
        const PROBE_MAX: u64 = 16;
        let small = CLASS_SHIFTS
            .iter()
            .enumerate()
            .all(|(c, &s)| self.c.live(c) == 0 || (last >> s) - (start >> s) < PROBE_MAX);
        if !small {
            return self.c.remove_all(doomed);
        }
        let mut n = 0;
        for (c, &s) in CLASS_SHIFTS.iter().enumerate() {
            if self.c.live(c) == 0 {
                continue;
            }
            for vpn in (start >> s)..=(last >> s) {
                n += self.c.remove_in(self.index(vmid, c, vpn), &mut doomed);
            }
        }
        n
    }
}

#[derive(Default)]
struct CdCacheInner {
    cds: HashMap<u32, CdConfig>,
    /// Level 1 CD descriptors by level 1 index.
    l1: HashMap<u32, u64>,
}

/// One CD packed into words (see [`HotCd::pack`]).
type PackedCd = [u64; 8];

/// The CD used last, readable without a lock: a seqlock (odd while the
/// writer, who holds the cache's write lock, changes it) over the packed
/// CD and its SubstreamID.
#[derive(Default)]
struct HotCd {
    seq: AtomicU32,
    words: [AtomicU64; 8],
}

impl HotCd {
    /// Word 3 bit 31: the slot holds a CD.
    const VALID: u64 = 1 << 31;
    /// Word 3's VALID and SubstreamID bits (one compare finds the slot
    /// `ssid`'s).
    const KEY: u64 = 0xffff_ffff_0000_0000 | Self::VALID;

    /// Words 0 and 1: TTB0/TTB1 (bits 51:4) with bit 0 set when the table
    /// is walked, bit 1 HADx, T0SZ/T1SZ in bits 57:52 and the granule's
    /// log2 minus 12 in bits 61:58; word 2 the MAIR; word 3 the ASID
    /// (15:0), the output size (22:16), the flags TBI0, TBI1, HA, HD, R, A,
    /// S (bits 30:24), VALID (31) and the SubstreamID (63:32); words 4..7
    /// what `select_tt()` checks of TTB0's and TTB1's range, precomputed
    /// as a mask and the value an address in range has under it: the
    /// address bits from the top (55 with TBIx, else 63) down to the
    /// table's input size, all 0 (TTB0) or all 1 (TTB1); mask 0 and value
    /// 1 (no address) when the table is not walked.
    fn pack(ssid: u32, cd: &CdConfig) -> PackedCd {
        let tt = |t: &Option<super::ste::TtConfig>| {
            t.map_or(0, |t| {
                1 | u64::from(t.had) << 1
                    | (t.ttb & super::ste::cdf::TTB)
                    | u64::from(t.tsz) << 52
                    | u64::from(t.granule_shift - 12) << 58
            })
        };
        let flags = [cd.tbi[0], cd.tbi[1], cd.ha, cd.hd, cd.record, cd.abort, cd.stall]
            .iter()
            .enumerate()
            .fold(0u64, |acc, (i, &b)| acc | u64::from(b) << (24 + i));
        let w3 = u64::from(cd.asid) | u64::from(cd.oas) << 16 | flags | u64::from(ssid) << 32 | Self::VALID;
        let range = |i: usize| {
            cd.tt[i].map_or((0, 1), |t| {
                let top = if cd.tbi[i] { 55 } else { 63 };
                let ia = t.ia_bits();
                let mask = ((1u64 << (top + 1 - ia)) - 1) << ia;
                (mask, if i == 1 { mask } else { 0 })
            })
        };
        let ((m0, v0), (m1, v1)) = (range(0), range(1));
        [tt(&cd.tt[0]), tt(&cd.tt[1]), cd.mair, w3, m0, v0, m1, v1]
    }

    fn unpack(w: &PackedCd) -> CdConfig {
        let tt = |v: u64| {
            (v & 1 != 0).then(|| super::ste::TtConfig {
                ttb: v & super::ste::cdf::TTB,
                tsz: ((v >> 52) & 0x3f) as u32,
                granule_shift: ((v >> 58) & 0xf) as u32 + 12,
                had: v & 2 != 0,
            })
        };
        let flag = |i: u32| w[3] >> (24 + i) & 1 != 0;
        CdConfig {
            tt: [tt(w[0]), tt(w[1])],
            oas: ((w[3] >> 16) & 0x7f) as u32,
            asid: w[3] as u16,
            tbi: [flag(0), flag(1)],
            ha: flag(2),
            hd: flag(3),
            record: flag(4),
            abort: flag(5),
            stall: flag(6),
            mair: w[2],
        }
    }

    /// Word 3's [`Self::KEY`] bits of a slot holding `ssid`'s CD.
    #[inline(always)]
    const fn key(ssid: u32) -> u64 {
        (ssid as u64) << 32 | Self::VALID
    }

    /// The hot CD if it is `ssid`'s.
    #[inline]
    fn get(&self, ssid: u32) -> Option<CdConfig> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let w: PackedCd = core::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 {
            return None;
        }
        let valid = w[3] & Self::KEY == Self::key(ssid);
        valid.then(|| Self::unpack(&w))
    }

    /// What a TLB lookup needs of the hot CD, if it is `ssid`'s: its ASID,
    /// if `va` is in the range of a walked table (`select_tt()` on the
    /// packed words).
    #[inline(always)]
    fn asid_for(&self, ssid: u32, va: u64) -> Option<u16> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let half = 4 + 2 * (va >> 55 & 1) as usize;
        let mask = self.words[half].load(Ordering::Relaxed);
        let want = self.words[half + 1].load(Ordering::Relaxed);
        let w3 = self.words[3].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 {
            return None;
        }
        (w3 & Self::KEY == Self::key(ssid) && va & mask == want).then_some(w3 as u16)
    }

    /// Replace the slot (caller holds the cache's write lock).
    fn set(&self, w: PackedCd) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (slot, v) in self.words.iter().zip(w) {
            slot.store(v, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

/// The configuration cache of one nested domain (see the module doc).
pub struct CdCache {
    /// log2 of the CDs per level 2 table (0: linear table).
    split: u32,
    gen: AtomicU64,
    inner: RwLock<CdCacheInner>,
    hot: HotCd,
}

impl core::fmt::Debug for CdCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (cds, l1) = self.len();
        f.debug_struct("CdCache").field("cds", &cds).field("l1", &l1).finish()
    }
}

impl CdCache {
    /// An empty cache for a CD table whose leaf tables hold `2^split` CDs.
    pub fn new(split: u32) -> Self {
        CdCache { split, gen: AtomicU64::new(0), inner: RwLock::new(CdCacheInner::default()), hot: HotCd::default() }
    }

    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The cached CD of `ssid`: the hot one without a lock, else from the
    /// table (which then becomes the hot one).
    #[inline]
    pub fn lookup(&self, ssid: u32) -> Option<CdConfig> {
        if let Some(cd) = self.hot.get(ssid) {
            return Some(cd);
        }
        let cd = self.inner.read().unwrap_or_else(|e| e.into_inner()).cds.get(&ssid).copied()?;
        // Promote it, unless an invalidation removed it meanwhile.
        let inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.cds.get(&ssid) == Some(&cd) {
            self.hot.set(HotCd::pack(ssid, &cd));
        }
        Some(cd)
    }

    /// The ASID of `ssid`'s CD if it is the hot one and translates `va`
    /// (the lock-free part of a TLB hit; `None` says nothing either way).
    #[inline(always)]
    pub fn hot_asid(&self, ssid: u32, va: u64) -> Option<u16> {
        self.hot.asid_for(ssid, va)
    }

    pub fn lookup_l1(&self, l1_index: u32) -> Option<u64> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).l1.get(&l1_index).copied()
    }

    /// Cache `cd` for `ssid` unless an invalidation happened since `gen`.
    pub fn insert(&self, gen: u64, ssid: u32, cd: CdConfig) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if self.gen.load(Ordering::Acquire) != gen {
            return false;
        }
        inner.cds.insert(ssid, cd);
        self.hot.set(HotCd::pack(ssid, &cd));
        true
    }

    pub fn insert_l1(&self, gen: u64, l1_index: u32, desc: u64) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if self.gen.load(Ordering::Acquire) != gen {
            return false;
        }
        inner.l1.insert(l1_index, desc);
        true
    }

    /// `CMD_CFGI_CD`: the CD of `ssid`, and with `leaf` false the level 1
    /// descriptor leading to it.
    pub fn invalidate(&self, ssid: u32, leaf: bool) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        self.hot.set([0; 8]);
        inner.cds.remove(&ssid);
        if !leaf && self.split != 0 {
            inner.l1.remove(&(ssid >> self.split));
        }
    }

    /// `CMD_CFGI_CD_ALL` (and STE-level invalidation).
    pub fn invalidate_all(&self) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        self.hot.set([0; 8]);
        inner.cds.clear();
        inner.l1.clear();
    }

    /// `(CDs, level 1 descriptors)` cached.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (inner.cds.len(), inner.l1.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K4: u64 = 1 << 12;
    const M2: u64 = 1 << 21;

    #[test]
    fn tags() {
        let t = make_tag(0x1234, 0xabcd, false, 3);
        assert_eq!((tag_vmid(t), tag_asid(t), tag_class(t), tag_global(t)), (0x1234, 0xabcd, 3, false));
        let g = make_tag(0x1234, 0xabcd, true, 0);
        assert_eq!((tag_asid(g), tag_global(g)), (0, true));
        assert_eq!(class_of(21), Some(3));
        assert_eq!(class_of(13), None);
    }

    #[test]
    fn lookup_and_asid_matching() {
        let tlb = Tlb::new();
        let g = tlb.generation();
        assert!(tlb.insert(g, 1, 7, false, 0x1234_5678, 12, 0xaaaa));
        assert!(tlb.insert(g, 1, 7, false, 0x4000_0000, 21, 0xbbbb));
        assert!(tlb.insert(g, 1, 0, true, 0x8000_0000, 12, 0xcccc));
        assert!(!tlb.insert(g, 1, 7, false, 0, 13, 0));
        assert_eq!(tlb.lookup(1, 7, 0x1234_5fff), Some(TlbHit { data: 0xaaaa, page_shift: 12 }));
        assert_eq!(tlb.lookup(1, 8, 0x1234_5000), None);
        assert_eq!(tlb.lookup(2, 7, 0x1234_5000), None);
        assert_eq!(tlb.lookup(1, 7, 0x401f_ffff), Some(TlbHit { data: 0xbbbb, page_shift: 21 }));
        // The global entry matches every ASID of its VMID.
        assert_eq!(tlb.lookup(1, 99, 0x8000_0123).unwrap().data, 0xcccc);
        assert_eq!(tlb.lookup(2, 99, 0x8000_0123), None);
        assert_eq!(tlb.stats().entries, 3);
        // A fill after an invalidation started is dropped.
        let old = tlb.generation();
        tlb.invalidate_vmid(55);
        assert!(!tlb.insert(old, 1, 7, false, 0, 12, 1));
    }

    #[test]
    fn invalidation_scopes() {
        let fill = |tlb: &Tlb| {
            let g = tlb.generation();
            tlb.insert(g, 1, 7, false, 0x1000, 12, 1);
            tlb.insert(g, 1, 8, false, 0x1000, 12, 2);
            tlb.insert(g, 1, 0, true, 0x2000, 12, 3);
            tlb.insert(g, 2, 7, false, 0x1000, 12, 4);
            tlb.insert(g, 1, 7, false, M2, 21, 5);
        };
        let tlb = Tlb::new();
        fill(&tlb);
        // NH_ASID: non-global entries of ASID 7 in VMID 1.
        assert_eq!(tlb.invalidate_asid(1, 7), 2);
        assert!(tlb.lookup(1, 7, 0x1000).is_none());
        assert!(tlb.lookup(1, 7, 0x2000).is_some());
        assert!(tlb.lookup(2, 7, 0x1000).is_some());
        tlb.invalidate_all();
        fill(&tlb);
        // NH_VA for ASID 8 at 0x1000..=0x2fff: its entry and the global one.
        assert_eq!(tlb.invalidate_va(1, Some(8), 0x1000, 0x2fff), 2);
        assert!(tlb.lookup(1, 7, 0x1000).is_some());
        assert!(tlb.lookup(1, 8, 0x1000).is_none());
        assert!(tlb.lookup(1, 5, 0x2000).is_none());
        tlb.invalidate_all();
        fill(&tlb);
        // NH_VAA at one address inside the 2MB entry.
        assert_eq!(tlb.invalidate_va(1, None, M2 + 5 * K4, M2 + 5 * K4), 1);
        assert!(tlb.lookup(1, 7, M2).is_none());
        assert_eq!(tlb.invalidate_va(1, None, 0, u64::MAX), 3);
        assert!(tlb.lookup(2, 7, 0x1000).is_some());
        assert_eq!(tlb.invalidate_vmid(2), 1);
        assert_eq!(tlb.stats().entries, 0);
        assert_eq!(tlb.stats().invalidations, 7);
    }

    #[test]
    fn replacement_keeps_counts_right() {
        let tlb = Tlb::with_sets(1);
        assert_eq!(tlb.capacity(), 4);
        let g = tlb.generation();
        for i in 0..10u64 {
            assert!(tlb.insert(g, 1, 1, i % 3 == 0, i << 12, 12, i));
        }
        let s = tlb.stats();
        assert_eq!((s.entries, s.evictions, s.fills), (4, 6, 10));
        assert_eq!(tlb.invalidate_all(), 4);
        assert_eq!(tlb.c.live_flagged(), 0);
    }

    #[test]
    fn hot_asid_is_select_tt() {
        use crate::smmuv3::ste::{select_tt, TtConfig};
        let tt = |tsz| Some(TtConfig { ttb: 0x4000, tsz, granule_shift: 12, had: false });
        let hot = HotCd::default();
        for (t0, t1) in [(16, 16), (25, 39), (48, 12), (63, 16)] {
            for (tt0, tt1) in [(tt(t0), tt(t1)), (tt(t0), None), (None, tt(t1)), (None, None)] {
                for tbi in [[false, false], [true, false], [false, true], [true, true]] {
                    let cd = CdConfig {
                        tt: [tt0, tt1],
                        oas: 48,
                        asid: 0x1234,
                        tbi,
                        ha: false,
                        hd: false,
                        record: true,
                        abort: false,
                        stall: false,
                        mair: 0,
                    };
                    hot.set(HotCd::pack(3, &cd));
                    for bit in 0..64 {
                        for va in [1u64 << bit, (1u64 << bit) - 1, !(1u64 << bit), !((1u64 << bit) - 1), 0x5000] {
                            let want = select_tt(&cd, va).map(|_| cd.asid);
                            assert_eq!(hot.asid_for(3, va), want, "{cd:?} va {va:#x}");
                            assert_eq!(hot.asid_for(4, va), None);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn hot_cd_round_trips() {
        use crate::smmuv3::ste::TtConfig;
        let cd = CdConfig {
            tt: [Some(TtConfig { ttb: 0x000f_ffff_ffff_fff0, tsz: 63, granule_shift: 16, had: true }), None],
            oas: 52,
            asid: 0xffff,
            tbi: [true, false],
            ha: false,
            hd: true,
            record: true,
            abort: false,
            stall: true,
            mair: 0x1234_5678_9abc_def0,
        };
        let hot = HotCd::default();
        hot.set(HotCd::pack(0xf_ffff, &cd));
        assert_eq!(hot.get(0xf_ffff), Some(cd));
        // T0SZ 63: a 1-bit range; TBI0 ignores the top byte; no TTB1.
        assert_eq!(hot.asid_for(0xf_ffff, 1), Some(0xffff));
        assert_eq!(hot.asid_for(0xf_ffff, 0xff00_0000_0000_0001), Some(0xffff));
        assert_eq!(hot.asid_for(0xf_ffff, 2), None);
        assert_eq!(hot.asid_for(0xf_ffff, 1 << 55), None);
        assert_eq!(hot.asid_for(0, 1), None);
        assert_eq!(hot.get(0), None);
        let cd2 = CdConfig { tt: [None, Some(TtConfig { ttb: 0x1000, tsz: 16, granule_shift: 14, had: false })], ..cd };
        hot.set(HotCd::pack(0, &cd2));
        assert_eq!(hot.get(0), Some(cd2));
        hot.set([0; 8]);
        assert_eq!(hot.get(0), None);
    }

    #[test]
    fn cd_cache() {
        let c = CdCache::new(6);
        let cd = crate::smmuv3::ste::CdConfig {
            tt: [None, None],
            oas: 48,
            asid: 3,
            tbi: [false, false],
            ha: false,
            hd: false,
            record: true,
            abort: true,
            stall: false,
            mair: 0,
        };
        let g = c.generation();
        assert!(c.insert(g, 65, cd));
        assert!(c.insert_l1(g, 1, 0x5001));
        assert_eq!(c.lookup(65), Some(cd));
        assert_eq!(c.lookup_l1(1), Some(0x5001));
        // Leaf: the CD only.
        c.invalidate(65, true);
        assert_eq!(c.len(), (0, 1));
        assert!(!c.insert(g, 65, cd));
        let g = c.generation();
        c.insert(g, 65, cd);
        // Not leaf: the level 1 descriptor of SSID 65 (index 1) too.
        c.invalidate(65, false);
        assert!(c.is_empty());
        c.insert(c.generation(), 1, cd);
        c.invalidate_all();
        assert!(c.is_empty());
        assert!(format!("{c:?}").contains("cds: 0"));
    }
}
