//! A device's translation cache: what recent requests of one port
//! translated to, down to the host address of the frame, so that a
//! request that hits does no page walk, no IOTLB lookup and no frame
//! registry lookup (modelled on a PCIe Address Translation Cache, which
//! the IOMMU keeps coherent by invalidation).
//!
//! An entry says: `[start, end)` translates to host memory `[start +
//! delta, end + delta)`, for reads up to `end_r` and for writes up to
//! `end_w` (each `end` or 0, so one compare tests the range and the
//! access). It was filled from the model's own translations (each for the
//! access it grants, so a write translation has already set a dirty bit
//! where the domain tracks them) and the frame registry, inside one
//! request's DMA-fence section. All entries belong to one domain (the
//! port's requester-ID domain, keyed by its published cell's address, see
//! `crate::dma`) and one generation (`uiommufd_memory::atc`), kept once
//! for the whole cache: a request's general path compares both once, its
//! fast path the generation alone (every change of the port's domain bumps
//! it: [`Atc::current`]), and any unmap, dirty harvest, attachment change
//! or frame relocation since the fill makes every entry stale together. A
//! fill in a newer generation or for another domain starts the cache
//! afresh; one from a request that began before the current generation
//! is dropped (what it translated may be gone).
//! Only paging domains are cached. A nested domain's stage 1 belongs to
//! the guest, which may change it without telling the host; the models
//! keep such stale entries exactly as their IOTLBs would (and drop them on
//! the guest's invalidation or on eviction), so requests through a nested
//! domain always ask the model.
//!
//! Concurrency: the cache is one sequence lock over atomics. A port
//! normally serves one requester at a time (the DMA engine's ring lock),
//! but nothing breaks if several threads share one: a reader ([`View`])
//! checks the sequence before its lookups and again before it uses what
//! they found, and ignores the cache if a fill changed it meanwhile;
//! fills claim the whole cache with a compare-and-swap and give up if
//! another fill holds it (it is only a cache).

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Entries per device (a DMA engine's working set is its ring, a source
/// and a destination; a few more for a second buffer pair). A power of
/// two (hints are masked to it).
const ENTRIES: usize = 8;
const _: () = assert!(ENTRIES.is_power_of_two() && ENTRIES <= 32);

/// The access bits of a fill.
pub(crate) const READ: u64 = 1;
pub(crate) const WRITE: u64 = 2;

/// An empty entry's start: no request range lies at or above it with a
/// non-zero end at or below 0.
const EMPTY: u64 = u64::MAX;

#[repr(align(32))]
struct Entry {
    start: AtomicU64,
    /// The end of the range when it may be read, else 0.
    end_r: AtomicU64,
    /// The end of the range when it may be written, else 0.
    end_w: AtomicU64,
    /// Host address minus IOVA (wrapping).
    delta: AtomicU64,
}

impl Entry {
    const fn new() -> Entry {
        Entry {
            start: AtomicU64::new(EMPTY),
            end_r: AtomicU64::new(0),
            end_w: AtomicU64::new(0),
            delta: AtomicU64::new(0),
        }
    }

    fn end(&self, write: bool) -> &AtomicU64 {
        if write {
            &self.end_w
        } else {
            &self.end_r
        }
    }

    /// Under the writer's claim: the entry's range, if it holds one.
    fn span(&self) -> Option<(u64, u64)> {
        let start = self.start.load(Ordering::Relaxed);
        let end = self.end_r.load(Ordering::Relaxed).max(self.end_w.load(Ordering::Relaxed));
        (start != EMPTY).then_some((start, end))
    }

    /// Under the writer's claim.
    fn clear(&self) {
        self.start.store(EMPTY, Ordering::Relaxed);
        self.end_r.store(0, Ordering::Relaxed);
        self.end_w.store(0, Ordering::Relaxed);
    }
}

/// What every request reads first, on one cache line.
#[repr(align(64))]
struct Head {
    /// Odd while a fill changes the cache.
    seq: AtomicU64,
    /// The generation every entry was filled in (`u64::MAX` while the
    /// cache is off: no request ever reads that one).
    gen: AtomicU64,
    /// The domain every entry belongs to (0: none yet).
    dom: AtomicUsize,
    /// The entry a lookup last found for an address of each 4 KiB page
    /// hashed here: requests that take turns (a DMA engine's descriptor
    /// fetch, its copy's source and destination, its completion record)
    /// each find theirs at once instead of sending each other scanning.
    /// Also what fills spare: an entry a hint names is in use.
    hint: [AtomicU8; HINTS],
    /// Where the next fill looks for an entry to replace (round robin
    /// among those no hint names).
    hand: AtomicU8,
    /// The cache is in use (see [`Atc::set_enabled`]); read by fills only.
    on: AtomicBool,
}

/// The cache of one port (see the module documentation).
pub(crate) struct Atc {
    head: Head,
    entries: [Entry; ENTRIES],
}

impl Default for Atc {
    fn default() -> Atc {
        Atc {
            head: Head {
                seq: AtomicU64::new(0),
                gen: AtomicU64::new(0),
                dom: AtomicUsize::new(0),
                hint: [const { AtomicU8::new(0) }; HINTS],
                hand: AtomicU8::new(0),
                on: AtomicBool::new(true),
            },
            entries: [const { Entry::new() }; ENTRIES],
        }
    }
}

/// Hint slots (see `Head::hint`).
const HINTS: usize = 16;

/// The hint slot of `iova`'s 4 KiB page (a multiplicative hash, so pages
/// a power-of-two stride apart spread).
#[inline(always)]
fn hint_slot(iova: u64) -> usize {
    ((iova >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize
}

/// One request's look at the cache: taken after the request's section
/// began and it read the generation and its domain; lookups, then
/// [`View::confirm`] before anything they returned is used.
pub(crate) struct View<'a> {
    atc: &'a Atc,
    seq: u64,
}

impl View<'_> {
    /// The host address of `[iova, iova + len)` when one entry holds all
    /// of it for reads (`write` false) or writes.
    #[inline(always)]
    pub(crate) fn host(&self, iova: u64, len: u64, write: bool) -> Option<u64> {
        let end = iova.checked_add(len)?;
        // The entry the hint of the page names, then every entry.
        let e = &self.atc.entries
            [usize::from(self.atc.head.hint[hint_slot(iova)].load(Ordering::Relaxed) & (ENTRIES as u8 - 1))];
        if iova >= e.start.load(Ordering::Relaxed) && end <= e.end(write).load(Ordering::Relaxed) {
            return Some(iova.wrapping_add(e.delta.load(Ordering::Relaxed)));
        }
        self.atc.scan(iova, end, write).map(|(host, _)| host)
    }

    /// Whether what the lookups returned is what the cache held (no fill
    /// changed it since the view was taken).
    #[inline(always)]
    #[must_use]
    pub(crate) fn confirm(&self) -> bool {
        // Orders the lookups' loads before the check (a seqlock's read
        // side: the fill's stores come after its claim, which the check
        // would then see).
        fence(Ordering::Acquire);
        self.atc.head.seq.load(Ordering::Relaxed) == self.seq
    }
}

impl Atc {
    /// A view for a request of domain `dom` in generation `gen` (read in
    /// the request's section), if the cache holds entries of both and no
    /// fill is changing it.
    #[inline(always)]
    pub(crate) fn view(&self, dom: usize, gen: u64) -> Option<View<'_>> {
        let seq = self.head.seq.load(Ordering::Acquire);
        if seq & 1 != 0 || self.head.gen.load(Ordering::Relaxed) != gen || self.head.dom.load(Ordering::Relaxed) != dom
        {
            return None;
        }
        Some(View { atc: self, seq })
    }

    /// A view for a request in generation `gen` (read in the request's
    /// section) whatever domain the entries were filled through, if the
    /// cache holds entries of `gen` and no fill is changing it: the fast
    /// path's, which does not read the port's domain. The generation
    /// stands for it: the device bumps it after every change of its
    /// requester-ID domain (attach, replace, detach, and its end), so
    /// entries of `gen` were filled through the domain published when the
    /// request's section began, or through the one it replaced while the
    /// change was still running (as a request in flight during the change
    /// would use on hardware; the change waits for it before it returns).
    #[inline(always)]
    pub(crate) fn current(&self, gen: u64) -> Option<View<'_>> {
        let seq = self.head.seq.load(Ordering::Acquire);
        if seq & 1 != 0 || self.head.gen.load(Ordering::Relaxed) != gen {
            return None;
        }
        Some(View { atc: self, seq })
    }

    /// Host address of `iova` and the bytes the entry holding it has from
    /// there for the access, if the cache holds entries of `dom` in `gen`
    /// (a request's general path, piece by piece).
    pub(crate) fn lookup(&self, dom: usize, gen: u64, iova: u64, write: bool) -> Option<(u64, u64)> {
        let v = self.view(dom, gen)?;
        let (host, end) = self.scan(iova, iova.checked_add(1)?, write)?;
        v.confirm().then_some((host, end - iova))
    }

    /// Whether the cache is on (see [`Self::set_enabled`]).
    pub(crate) fn enabled(&self) -> bool {
        self.head.on.load(Ordering::Relaxed)
    }

    /// Host address and entry end of the entry holding `[iova, end)` for
    /// the access, every entry tried; the hint of `iova`'s page then names
    /// it.
    #[inline(never)]
    fn scan(&self, iova: u64, end: u64, write: bool) -> Option<(u64, u64)> {
        for (i, e) in self.entries.iter().enumerate() {
            let e_end = e.end(write).load(Ordering::Relaxed);
            if iova >= e.start.load(Ordering::Relaxed) && end <= e_end {
                let hint = &self.head.hint[hint_slot(iova)];
                if hint.load(Ordering::Relaxed) != i as u8 {
                    hint.store(i as u8, Ordering::Relaxed);
                }
                return Some((iova.wrapping_add(e.delta.load(Ordering::Relaxed)), e_end));
            }
        }
        None
    }

    /// Claim the cache for a change; `None` if another fill holds it.
    fn claim(&self) -> Option<Claim<'_>> {
        let s = self.head.seq.load(Ordering::Relaxed);
        if s & 1 != 0 || self.head.seq.compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return None;
        }
        // The seqlock's write side: the claim is visible before any of the
        // changes below (a reader that sees a change sees the odd count at
        // its confirm).
        fence(Ordering::Release);
        Some(Claim { atc: self, seq: s + 2 })
    }

    /// Remember that `[iova, iova + len)` of `dom` reaches host memory
    /// `[host, host + len)` for `perm`, as translated in generation `gen`.
    /// An entry for the same translation gains `perm`; otherwise an empty
    /// entry or one no hint names is replaced.
    pub(crate) fn fill(&self, dom: usize, gen: u64, iova: u64, len: u64, host: u64, perm: u64) {
        let Some(end) = iova.checked_add(len) else { return };
        if len == 0 || dom == 0 {
            return;
        }
        let Some(_claim) = self.claim() else { return };
        if !self.head.on.load(Ordering::Relaxed) {
            return;
        }
        let (cur_gen, cur_dom) = (self.head.gen.load(Ordering::Relaxed), self.head.dom.load(Ordering::Relaxed));
        if gen < cur_gen {
            // Filled from a request that began before the last change:
            // what it translated may be gone.
            return;
        }
        if gen != cur_gen || dom != cur_dom {
            for e in &self.entries {
                e.clear();
            }
            self.head.gen.store(gen, Ordering::Relaxed);
            self.head.dom.store(dom, Ordering::Relaxed);
        }
        let delta = host.wrapping_sub(iova);
        // Each access `perm` grants reaches exactly to `iova` in the entry:
        // the entry and the fill are one host-contiguous range for it.
        let continues = |e: &Entry| {
            (perm & READ == 0 || e.end_r.load(Ordering::Relaxed) == iova)
                && (perm & WRITE == 0 || e.end_w.load(Ordering::Relaxed) == iova)
        };
        let mut victim = None;
        for e in &self.entries {
            match e.span() {
                Some((s, e_end)) if s == iova && e_end == end && e.delta.load(Ordering::Relaxed) == delta => {
                    // The same translation gains an access.
                    if perm & READ != 0 {
                        e.end_r.store(end, Ordering::Relaxed);
                    }
                    if perm & WRITE != 0 {
                        e.end_w.store(end, Ordering::Relaxed);
                    }
                    return;
                }
                Some((s, _)) if s < iova && e.delta.load(Ordering::Relaxed) == delta && continues(e) => {
                    // The fill continues the entry (a request served its
                    // start from the entry and translated the rest, as
                    // with 4 KiB leaves, where an entry holds what one
                    // request translated): one entry for both, so the next
                    // such request is served whole.
                    if perm & READ != 0 {
                        e.end_r.store(end, Ordering::Relaxed);
                    }
                    if perm & WRITE != 0 {
                        e.end_w.store(end, Ordering::Relaxed);
                    }
                    return;
                }
                None if victim.is_none() => victim = Some(e),
                _ => {}
            }
        }
        let e = victim.unwrap_or_else(|| {
            // In use: the entries a hint names.
            let named =
                self.head.hint.iter().fold(0u32, |m, h| m | 1 << (h.load(Ordering::Relaxed) as usize % ENTRIES));
            let hand = self.head.hand.load(Ordering::Relaxed) as usize;
            let i =
                (0..ENTRIES).map(|k| (hand + k) % ENTRIES).find(|&i| named & (1 << i) == 0).unwrap_or(hand % ENTRIES);
            self.head.hand.store(((i + 1) % ENTRIES) as u8, Ordering::Relaxed);
            &self.entries[i]
        });
        e.start.store(iova, Ordering::Relaxed);
        e.delta.store(delta, Ordering::Relaxed);
        e.end_r.store(if perm & READ != 0 { end } else { 0 }, Ordering::Relaxed);
        e.end_w.store(if perm & WRITE != 0 { end } else { 0 }, Ordering::Relaxed);
    }

    /// Turn the cache on (the default) or off. Off, it holds nothing and
    /// fills do nothing; on again, it fills afresh.
    pub(crate) fn set_enabled(&self, on: bool) {
        let claim = loop {
            if let Some(c) = self.claim() {
                break c;
            }
            std::hint::spin_loop();
        };
        self.head.on.store(on, Ordering::Relaxed);
        for e in &self.entries {
            e.clear();
        }
        // No request reads generation u64::MAX; 0 lets any fill start.
        self.head.gen.store(if on { 0 } else { u64::MAX }, Ordering::Relaxed);
        self.head.dom.store(0, Ordering::Relaxed);
        drop(claim);
    }
}

/// A fill's hold of the whole cache (see [`Atc::claim`]); released on drop.
struct Claim<'a> {
    atc: &'a Atc,
    seq: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.atc.head.seq.store(self.seq, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(atc: &Atc, dom: usize, gen: u64, iova: u64, len: u64, write: bool) -> Option<u64> {
        let v = atc.view(dom, gen)?;
        let h = v.host(iova, len, write)?;
        v.confirm().then_some(h)
    }

    /// A fill that continues an entry host-contiguously for the same
    /// accesses extends it (a request then is served whole); one that
    /// does not (another host address, or an access the entry does not
    /// reach the fill with) takes an entry of its own.
    #[test]
    fn a_continuing_fill_extends_its_entry() {
        let atc = Atc::default();
        atc.fill(1, 5, 0x10000, 0x1000, 0x7000_0000, READ);
        atc.fill(1, 5, 0x11000, 0xf000, 0x7000_1000, READ);
        assert_eq!(lookup(&atc, 1, 5, 0x10000, 0x10000, false), Some(0x7000_0000), "one entry for both");
        assert_eq!(lookup(&atc, 1, 5, 0x10000, 0x1000, true), None, "no write gained");
        // Not host-contiguous: two entries.
        atc.fill(1, 5, 0x40000, 0x1000, 0x8000_0000, READ);
        atc.fill(1, 5, 0x41000, 0x1000, 0x9000_0000, READ);
        assert_eq!(lookup(&atc, 1, 5, 0x40000, 0x2000, false), None);
        assert_eq!(lookup(&atc, 1, 5, 0x41000, 0x1000, false), Some(0x9000_0000));
        // Write granted only to the first page: a write fill after it
        // continues it, a read fill does not (read never reached it).
        atc.fill(1, 5, 0x60000, 0x1000, 0xa000_0000, WRITE);
        atc.fill(1, 5, 0x61000, 0x1000, 0xa000_1000, READ);
        assert_eq!(lookup(&atc, 1, 5, 0x60000, 0x1000, false), None, "read not granted on the first page");
        assert_eq!(lookup(&atc, 1, 5, 0x61000, 0x1000, false), Some(0xa000_1000));
        atc.fill(1, 5, 0x61000, 0x1000, 0xa000_1000, WRITE);
        assert_eq!(lookup(&atc, 1, 5, 0x60000, 0x2000, true), Some(0xa000_0000), "write continued");
    }

    #[test]
    fn hits_only_its_domain_generation_range_and_access() {
        let atc = Atc::default();
        assert_eq!(lookup(&atc, 1, 0, 0, 1, false), None, "empty entries cover nothing");
        assert_eq!(lookup(&atc, 1, 0, u64::MAX - 1, 1, false), None, "empty entries cover nothing");
        atc.fill(1, 5, 0x10000, 0x2000, 0x7000_0000, READ);
        assert_eq!(lookup(&atc, 1, 5, 0x10800, 0x1800, false), Some(0x7000_0800));
        assert_eq!(lookup(&atc, 1, 5, 0x10800, 0x1801, false), None, "past the end");
        assert_eq!(lookup(&atc, 1, 5, 0x12000, 1, false), None, "past the end");
        assert_eq!(lookup(&atc, 1, 5, 0xffff, 1, false), None, "before the start");
        assert_eq!(lookup(&atc, 1, 5, 0x10800, 1, true), None, "not granted for writes");
        assert_eq!(lookup(&atc, 2, 5, 0x10800, 1, false), None, "another domain");
        assert_eq!(lookup(&atc, 1, 6, 0x10800, 1, false), None, "another generation");
        assert_eq!(lookup(&atc, 1, 5, 0x10800, u64::MAX, false), None, "a range that wraps");
        assert_eq!(atc.lookup(1, 5, 0x10800, false), Some((0x7000_0800, 0x1800)));
        assert_eq!(atc.lookup(1, 5, 0x10800, true), None);
        atc.fill(1, 5, 0x10000, 0x2000, 0x7000_0000, WRITE);
        assert_eq!(lookup(&atc, 1, 5, 0x10000, 0x2000, true), Some(0x7000_0000), "gained write");
        assert_eq!(lookup(&atc, 1, 5, 0x10000, 0x2000, false), Some(0x7000_0000), "kept read");
    }

    #[test]
    fn a_newer_generation_or_domain_starts_afresh_and_an_older_fill_is_dropped() {
        let atc = Atc::default();
        atc.fill(1, 5, 0, 4096, 1 << 30, READ);
        atc.fill(1, 4, 1 << 20, 4096, 2 << 30, READ);
        assert_eq!(lookup(&atc, 1, 4, 1 << 20, 1, false), None, "a fill of an older generation was kept");
        assert!(lookup(&atc, 1, 5, 0, 1, false).is_some(), "an older fill dropped the newer entries");
        atc.fill(1, 6, 1 << 20, 4096, 2 << 30, READ);
        assert!(lookup(&atc, 1, 6, 1 << 20, 1, false).is_some());
        assert_eq!(lookup(&atc, 1, 6, 0, 1, false), None, "an entry of the old generation survived");
        atc.fill(2, 6, 3 << 20, 4096, 3 << 30, READ);
        assert_eq!(lookup(&atc, 2, 6, 1 << 20, 1, false), None, "an entry of the old domain survived");
        assert!(lookup(&atc, 2, 6, 3 << 20, 1, false).is_some());
    }

    #[test]
    fn a_view_taken_before_a_fill_is_not_confirmed() {
        let atc = Atc::default();
        atc.fill(1, 1, 0, 4096, 1 << 30, READ);
        let v = atc.view(1, 1).unwrap();
        assert!(v.host(0, 4096, false).is_some());
        atc.fill(1, 1, 1 << 20, 4096, 2 << 30, READ);
        assert!(!v.confirm(), "a view survived a change of the cache");
        let _claim = atc.claim().unwrap();
        assert!(atc.view(1, 1).is_none(), "a view while a fill holds the cache");
    }

    #[test]
    fn off_holds_nothing_and_on_again_fills_afresh() {
        let atc = Atc::default();
        atc.fill(1, 1, 0, 4096, 1 << 30, READ);
        atc.set_enabled(false);
        assert_eq!(lookup(&atc, 1, 1, 0, 1, false), None);
        atc.fill(1, 1, 0, 4096, 1 << 30, READ);
        assert_eq!(lookup(&atc, 1, 1, 0, 1, false), None, "filled while off");
        atc.set_enabled(true);
        atc.fill(1, 1, 0, 4096, 1 << 30, READ);
        assert!(lookup(&atc, 1, 1, 0, 1, false).is_some());
    }

    #[test]
    fn entries_in_use_survive_a_stream_of_new_ones() {
        let atc = Atc::default();
        atc.fill(1, 1, 0, 4096, 1 << 30, READ);
        for i in 1..100u64 {
            assert!(lookup(&atc, 1, 1, 0, 4096, false).is_some(), "the hot entry was evicted after {i} fills");
            atc.fill(1, 1, i << 20, 4096, 2 << 30, READ);
        }
    }

    #[test]
    fn fills_take_empty_entries_first_then_unnamed_ones() {
        let atc = Atc::default();
        for i in 0..ENTRIES as u64 {
            atc.fill(1, 1, i << 20, 4096, i << 30, READ);
        }
        for i in 0..ENTRIES as u64 {
            assert!(lookup(&atc, 1, 1, i << 20, 1, false).is_some(), "entry {i} went while others were empty");
        }
        // The last looked up is named by a hint; the next fill replaces
        // another.
        let last = (ENTRIES as u64 - 1) << 20;
        atc.fill(1, 1, 99 << 20, 4096, 1 << 40, READ);
        assert!(lookup(&atc, 1, 1, 99 << 20, 1, false).is_some());
        assert!(lookup(&atc, 1, 1, last, 1, false).is_some(), "the entry in use went");
        let live = (0..ENTRIES as u64).filter(|i| lookup(&atc, 1, 1, i << 20, 1, false).is_some()).count();
        assert_eq!(live, ENTRIES - 1);
    }
}
