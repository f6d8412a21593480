//! A device's translation cache: what recent requests of one port
//! translated to, down to the host address of the frame, so that a
//! request that hits does no page walk, no IOTLB lookup and no frame
//! registry lookup (modelled on a PCIe Address Translation Cache, which
//! the IOMMU keeps coherent by invalidation).
//!
//! An entry says: in domain `dom`, `[iova, iova + len)` translates for
//! the accesses in `perm` to host memory `[host, host + len)`. It was
//! filled from the model's own translations (each for the access it
//! grants, so a write translation has already set a dirty bit where the
//! domain tracks them) and the frame registry, inside one request's
//! DMA-fence section, and it carries the generation
//! (`uiommufd_memory::atc`) read at the start of that request: any unmap,
//! dirty harvest, attachment change or frame relocation since makes it
//! stale. Only paging domains are cached. A nested domain's stage 1
//! belongs to the guest, which may change it without telling the host;
//! the models keep such stale entries exactly as their IOTLBs would (and
//! drop them on the guest's invalidation or on eviction), so requests
//! through a nested domain always ask the model.
//!
//! Concurrency: entries are seqlocks of atomics. A port normally serves one
//! requester at a time (the DMA engine's ring lock), but nothing breaks if
//! several threads share one: a reader that sees an entry change under it
//! ignores the entry, and writers claim an entry with a compare-and-swap.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Entries per device (a DMA engine's working set is its ring, a source
/// and a destination; a few more for a second buffer pair).
const ENTRIES: usize = 8;

/// The access bits of an entry.
pub(crate) const READ: u64 = 1;
pub(crate) const WRITE: u64 = 2;

#[repr(align(64))]
#[derive(Default)]
struct Entry {
    /// Odd while a writer changes the entry.
    seq: AtomicU64,
    gen: AtomicU64,
    dom: AtomicUsize,
    iova: AtomicU64,
    len: AtomicU64,
    host: AtomicU64,
    perm: AtomicU64,
    /// Hit since the replacement hand last passed (CLOCK): a hint outside
    /// the seqlock.
    used: AtomicBool,
}

/// One entry's contents, as read under its seqlock.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Value {
    gen: u64,
    dom: usize,
    iova: u64,
    len: u64,
    host: u64,
    perm: u64,
}

impl Entry {
    fn read(&self) -> Option<Value> {
        let s = self.seq.load(Ordering::Acquire);
        if s & 1 != 0 {
            return None;
        }
        let v = Value {
            gen: self.gen.load(Ordering::Relaxed),
            dom: self.dom.load(Ordering::Relaxed),
            iova: self.iova.load(Ordering::Relaxed),
            len: self.len.load(Ordering::Relaxed),
            host: self.host.load(Ordering::Relaxed),
            perm: self.perm.load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == s).then_some(v)
    }

    /// Replace the contents unless another writer holds the entry.
    fn write(&self, v: Value) {
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 != 0 || self.seq.compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return;
        }
        fence(Ordering::Release);
        self.gen.store(v.gen, Ordering::Relaxed);
        self.dom.store(v.dom, Ordering::Relaxed);
        self.iova.store(v.iova, Ordering::Relaxed);
        self.len.store(v.len, Ordering::Relaxed);
        self.host.store(v.host, Ordering::Relaxed);
        self.perm.store(v.perm, Ordering::Relaxed);
        self.seq.store(s + 2, Ordering::Release);
    }
}

/// A hit: the host address of the IOVA looked up, the bytes the entry
/// holds from there, and the accesses it grants.
#[derive(Clone, Copy)]
pub(crate) struct Found {
    pub(crate) host: u64,
    pub(crate) avail: u64,
    pub(crate) perm: u64,
}

/// The cache of one port (see the module documentation).
#[derive(Default)]
pub(crate) struct Atc {
    entries: [Entry; ENTRIES],
    /// Next entry to replace (round robin).
    victim: AtomicUsize,
    /// The entry a scan last found for an address of each 4 KiB page
    /// hashed here: requests that take turns (a DMA engine's descriptor
    /// fetch, its copy's source and destination, its completion record)
    /// each find theirs at once instead of sending each other scanning.
    hint: [AtomicU8; HINTS],
}

/// Hint slots (see `Atc::hint`).
const HINTS: usize = 16;

/// The hint slot of `iova`'s 4 KiB page (a multiplicative hash, so pages
/// a power-of-two stride apart spread).
#[inline(always)]
fn hint_slot(iova: u64) -> usize {
    ((iova >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % HINTS
}

impl Atc {
    /// Host address of `iova` and the bytes cached from there, if a valid
    /// entry of domain `dom` in generation `gen` grants `perm`.
    #[inline(always)]
    pub(crate) fn lookup(&self, dom: usize, gen: u64, iova: u64, perm: u64) -> Option<(u64, u64)> {
        self.find(dom, gen, iova, perm).map(|f| (f.host, f.avail))
    }

    /// [`Self::lookup`], with the accesses the entry grants.
    #[inline(always)]
    pub(crate) fn find(&self, dom: usize, gen: u64, iova: u64, perm: u64) -> Option<Found> {
        // The entry a previous request to this page found first.
        let hint = &self.hint[hint_slot(iova)];
        let h = hint.load(Ordering::Relaxed) as usize % ENTRIES;
        if let Some(hit) = Self::hit(&self.entries[h], dom, gen, iova, perm) {
            return Some(hit);
        }
        self.scan(hint, dom, gen, iova, perm)
    }

    /// [`Self::find`] past its hint: every entry, remembering the hit.
    #[inline(never)]
    fn scan(&self, hint: &AtomicU8, dom: usize, gen: u64, iova: u64, perm: u64) -> Option<Found> {
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(hit) = Self::hit(e, dom, gen, iova, perm) {
                hint.store(i as u8, Ordering::Relaxed);
                return Some(hit);
            }
        }
        None
    }

    /// What `e` holds for `iova`, read once under the entry's seqlock (the
    /// range test first: most entries a scan passes do not cover the
    /// address).
    #[inline(always)]
    fn hit(e: &Entry, dom: usize, gen: u64, iova: u64, perm: u64) -> Option<Found> {
        let s = e.seq.load(Ordering::Acquire);
        let off = iova.wrapping_sub(e.iova.load(Ordering::Relaxed));
        let len = e.len.load(Ordering::Relaxed);
        let granted = e.perm.load(Ordering::Relaxed);
        if off >= len
            || e.gen.load(Ordering::Relaxed) != gen
            || e.dom.load(Ordering::Relaxed) != dom
            || granted & perm != perm
        {
            return None;
        }
        let host = e.host.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if s & 1 != 0 || e.seq.load(Ordering::Relaxed) != s {
            return None;
        }
        if !e.used.load(Ordering::Relaxed) {
            e.used.store(true, Ordering::Relaxed);
        }
        Some(Found { host: host + off, avail: len - off, perm: granted })
    }

    /// Remember that `[iova, iova + len)` of `dom` reaches host memory
    /// `[host, host + len)` for `perm`, as translated in generation `gen`.
    /// An entry for the same translation gains `perm`; otherwise the next
    /// victim (or a stale entry) is replaced.
    pub(crate) fn fill(&self, dom: usize, gen: u64, iova: u64, len: u64, host: u64, perm: u64) {
        if len == 0 {
            return;
        }
        let mut victim = None;
        for e in &self.entries {
            let Some(v) = e.read() else { continue };
            if v.gen == gen && v.dom == dom && v.iova == iova && v.len == len && v.host == host {
                if v.perm & perm != perm {
                    e.write(Value { perm: v.perm | perm, ..v });
                }
                return;
            }
            if v.gen != gen && victim.is_none() {
                victim = Some(e);
            }
        }
        let e = victim.unwrap_or_else(|| {
            // CLOCK: the first entry not hit since the hand last passed.
            let mut i = self.victim.load(Ordering::Relaxed);
            for _ in 0..ENTRIES {
                if !self.entries[i % ENTRIES].used.swap(false, Ordering::Relaxed) {
                    break;
                }
                i += 1;
            }
            self.victim.store((i + 1) % ENTRIES, Ordering::Relaxed);
            &self.entries[i % ENTRIES]
        });
        e.used.store(false, Ordering::Relaxed);
        e.write(Value { gen, dom, iova, len, host, perm });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_its_domain_generation_range_and_access() {
        let atc = Atc::default();
        assert_eq!(atc.lookup(1, 0, 0, READ), None, "empty entries cover nothing");
        atc.fill(1, 5, 0x10000, 0x2000, 0x7000_0000, READ);
        assert_eq!(atc.lookup(1, 5, 0x10800, READ), Some((0x7000_0800, 0x1800)));
        assert_eq!(atc.lookup(1, 5, 0x12000, READ), None, "past the end");
        assert_eq!(atc.lookup(1, 5, 0xffff, READ), None, "before the start");
        assert_eq!(atc.lookup(1, 5, 0x10800, WRITE), None, "not granted for writes");
        assert_eq!(atc.lookup(2, 5, 0x10800, READ), None, "another domain");
        assert_eq!(atc.lookup(1, 6, 0x10800, READ), None, "another generation");
        atc.fill(1, 5, 0x10000, 0x2000, 0x7000_0000, WRITE);
        assert_eq!(atc.lookup(1, 5, 0x10000, READ | WRITE), Some((0x7000_0000, 0x2000)), "gained write");
    }

    #[test]
    fn entries_in_use_survive_a_stream_of_new_ones() {
        let atc = Atc::default();
        atc.fill(1, 1, 0, 4096, 1 << 30, READ);
        for i in 1..100u64 {
            assert!(atc.lookup(1, 1, 0, READ).is_some(), "the hot entry was evicted after {i} fills");
            atc.fill(1, 1, i << 20, 4096, 2 << 30, READ);
        }
    }

    #[test]
    fn replaces_stale_entries_first_then_unused_ones() {
        let atc = Atc::default();
        for i in 0..ENTRIES as u64 {
            atc.fill(1, 1, i << 20, 4096, i << 30, READ);
        }
        // One more in a new generation takes a stale slot; in the same
        // generation, the oldest.
        atc.fill(1, 2, 99 << 20, 4096, 1 << 40, READ);
        assert!(atc.lookup(1, 2, 99 << 20, READ).is_some());
        for i in 0..ENTRIES as u64 {
            atc.fill(1, 2, (100 + i) << 20, 4096, 1 << 40, READ);
        }
        let live = (0..ENTRIES as u64).filter(|i| atc.lookup(1, 2, (100 + i) << 20, READ).is_some()).count();
        // The one hit (99) stays; one of the new ones never hit went.
        assert_eq!(live, ENTRIES - 1, "the newest fills are kept");
        assert!(atc.lookup(1, 2, 99 << 20, READ).is_some(), "the entry in use went");
    }
}
