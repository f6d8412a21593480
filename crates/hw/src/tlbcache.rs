//! The set-associative translation cache the IOMMU models build their TLBs
//! from (VT-d's IOTLB and paging-structure cache, the SMMU's TLB).
//!
//! Model: `(tag, vpn) -> data` words in sets of [`WAYS`] ways with clock
//! (not recently used) replacement per set, so a full cache replaces one
//! entry at a time. What a tag means (domain, PASID, ASID, page size) and
//! which set an entry lives in are the owner's: it computes the set index
//! and hands it in. Bit 63 of a tag ([`VALID`]) marks a way in use; the
//! cache counts live entries per class (`class(tag)`, below 8) so that
//! lookups can skip page sizes nothing is cached for, and separately those
//! whose tag has the owner's `flag` bit (the SMMU's global entries).
//!
//! Concurrency: each set is a seqlock over atomics. A lookup is a handful
//! of loads and takes no lock (a set being written reads as a miss); fills
//! and removals lock one set at a time. A fill takes a `gen_ok` check that
//! it runs under the set lock, so an owner that bumps a generation before
//! removing entries never keeps a fill computed from tables read before
//! the removal started.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Ways per set.
pub(crate) const WAYS: usize = 4;
/// The tag bit that marks a way in use.
pub(crate) const VALID: u64 = 1 << 63;

#[derive(Default)]
struct Way {
    tag: AtomicU64,
    vpn: AtomicU64,
    data: AtomicU64,
}

#[repr(align(64))]
#[derive(Default)]
struct Set {
    /// Odd while a writer holds the set.
    seq: AtomicU32,
    /// Bit per way: referenced since the clock hand last passed.
    refs: AtomicU32,
    /// Clock hand (written under the set lock only).
    hand: AtomicU32,
    ways: [Way; WAYS],
}

impl Set {
    fn lock(&self) -> u32 {
        loop {
            let s = self.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && self.seq.compare_exchange_weak(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                // Order the odd sequence before the data stores that follow.
                fence(Ordering::Release);
                return s;
            }
            std::hint::spin_loop();
        }
    }

    fn unlock(&self, s: u32) {
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// The way to fill with a new entry: a free one, else the clock's
    /// victim (referenced ways are skipped and aged).
    fn victim(&self) -> usize {
        if let Some(i) = self.ways.iter().position(|w| w.tag.load(Ordering::Relaxed) & VALID == 0) {
            return i;
        }
        let mut hand = self.hand.load(Ordering::Relaxed) as usize % WAYS;
        loop {
            let bit = 1u32 << hand;
            if self.refs.load(Ordering::Relaxed) & bit == 0 {
                break;
            }
            self.refs.fetch_and(!bit, Ordering::Relaxed);
            hand = (hand + 1) % WAYS;
        }
        self.hand.store(((hand + 1) % WAYS) as u32, Ordering::Relaxed);
        hand
    }
}

/// A set-associative cache of `(tag, vpn) -> data` (see the module).
pub(crate) struct SetCache {
    sets: Box<[Set]>,
    mask: usize,
    class: fn(u64) -> usize,
    flag: u64,
    live: [AtomicU64; 8],
    live_flagged: AtomicU64,
    evictions: AtomicU64,
}

impl SetCache {
    /// `sets` sets (rounded up to a power of two); `class` sorts tags into
    /// at most 8 classes; entries whose tag has `flag` set are also counted
    /// apart (0: none).
    pub(crate) fn new(sets: usize, class: fn(u64) -> usize, flag: u64) -> Self {
        let sets = sets.max(1).next_power_of_two();
        SetCache {
            sets: (0..sets).map(|_| Set::default()).collect(),
            mask: sets - 1,
            class,
            flag,
            live: Default::default(),
            live_flagged: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The mask a set index must be reduced by.
    #[inline]
    pub(crate) fn mask(&self) -> usize {
        self.mask
    }

    pub(crate) fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Valid entries of `class` now.
    #[inline]
    pub(crate) fn live(&self, class: usize) -> u64 {
        self.live[class & 7].load(Ordering::Relaxed)
    }

    /// Valid entries whose tag has the flag bit.
    #[inline]
    pub(crate) fn live_flagged(&self) -> u64 {
        self.live_flagged.load(Ordering::Relaxed)
    }

    pub(crate) fn len(&self) -> usize {
        self.live.iter().map(|l| l.load(Ordering::Relaxed) as usize).sum()
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn count(&self, tag: u64, up: bool) {
        let delta = |c: &AtomicU64| {
            if up {
                c.fetch_add(1, Ordering::Relaxed)
            } else {
                c.fetch_sub(1, Ordering::Relaxed)
            }
        };
        delta(&self.live[(self.class)(tag) & 7]);
        if tag & self.flag != 0 {
            delta(&self.live_flagged);
        }
    }

    /// The data of `(tag, vpn)` in set `idx`, marking the way referenced.
    #[inline(always)]
    pub(crate) fn lookup(&self, idx: usize, tag: u64, vpn: u64) -> Option<u64> {
        let set = &self.sets[idx & self.mask];
        let s1 = set.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let mut hit = None;
        for (i, w) in set.ways.iter().enumerate() {
            if w.tag.load(Ordering::Relaxed) == tag && w.vpn.load(Ordering::Relaxed) == vpn {
                hit = Some((i, w.data.load(Ordering::Relaxed)));
                break;
            }
        }
        fence(Ordering::Acquire);
        if set.seq.load(Ordering::Relaxed) != s1 {
            return None;
        }
        let (i, data) = hit?;
        let bit = 1u32 << i;
        if set.refs.load(Ordering::Relaxed) & bit == 0 {
            set.refs.fetch_or(bit, Ordering::Relaxed);
        }
        Some(data)
    }

    /// Fill `(tag, vpn) -> data` in set `idx` unless `gen_ok()`, asked
    /// under the set lock, says an invalidation intervened. Whether it
    /// was filled.
    pub(crate) fn insert(&self, idx: usize, tag: u64, vpn: u64, data: u64, gen_ok: impl FnOnce() -> bool) -> bool {
        let set = &self.sets[idx & self.mask];
        let s = set.lock();
        if !gen_ok() {
            set.unlock(s);
            return false;
        }
        let ways = &set.ways;
        let existing =
            ways.iter().position(|w| w.tag.load(Ordering::Relaxed) == tag && w.vpn.load(Ordering::Relaxed) == vpn);
        let i = existing.unwrap_or_else(|| {
            let i = set.victim();
            let old = ways[i].tag.load(Ordering::Relaxed);
            if old & VALID != 0 {
                self.count(old, false);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            self.count(tag, true);
            i
        });
        let w = &ways[i];
        w.tag.store(tag, Ordering::Relaxed);
        w.vpn.store(vpn, Ordering::Relaxed);
        w.data.store(data, Ordering::Relaxed);
        // A fill is not a reference: an entry never hit since it was filled
        // is the first to go (scan resistance).
        set.refs.fetch_and(!(1 << i), Ordering::Relaxed);
        set.unlock(s);
        true
    }

    /// Remove the entries of set `idx` for which `doomed(tag, vpn)`; how
    /// many.
    pub(crate) fn remove_in(&self, idx: usize, doomed: &mut impl FnMut(u64, u64) -> bool) -> usize {
        let set = &self.sets[idx & self.mask];
        let s = set.lock();
        let mut n = 0;
        for (i, w) in set.ways.iter().enumerate() {
            let tag = w.tag.load(Ordering::Relaxed);
            if tag & VALID != 0 && doomed(tag, w.vpn.load(Ordering::Relaxed)) {
                w.tag.store(0, Ordering::Relaxed);
                set.refs.fetch_and(!(1 << i), Ordering::Relaxed);
                self.count(tag, false);
                n += 1;
            }
        }
        set.unlock(s);
        n
    }

    /// [`Self::remove_in`] over every set.
    pub(crate) fn remove_all(&self, mut doomed: impl FnMut(u64, u64) -> bool) -> usize {
        (0..self.sets.len()).map(|i| self.remove_in(i, &mut doomed)).sum()
    }
}
