//! The hot table: released in-place runs kept for a re-pin, each with a
//! pin state that a re-pin and its unpin change without the registry's
//! lock.
//!
//! A VMM maps and unmaps the same small buffer over and over (a guest's
//! DMA API under a strict vIOMMU): each map pins the same pages, each
//! unmap releases them. The registry keeps a run whose last pin went in
//! a slot of this table instead of releasing it (*cached*: indexed, with
//! its PFNs, but no frame for anyone), and the next pin of exactly its
//! pages takes it back with one compare-and-swap on the slot's word
//! (*pinned*), the unpin of exactly that pin gives it back with another:
//! no lock, no index lookup, the same frames. The kernel counts a pin
//! with one atomic increment in `struct page`; this is the same cost.
//!
//! Slots. The table is direct-mapped by the run's first virtual page
//! (a multiplicative hash, so buffers with the same alignment spread), so
//! both the pinner (which knows the address) and the unpinner (which
//! knows the address and the PFN it was given) find the one slot to look
//! at. A slot's *word* is `version << 2 | state`, the state being
//! [`EMPTY`] (no run), [`CACHED`] (the run has no pins) or [`PINNED`]
//! (the run has exactly one pin, taken through this table or by the
//! registry for it). Every change of the word adds a version, so a
//! compare-and-swap against a word read earlier fails if anything at all
//! happened in between (no ABA: versions do not wrap in practice, 2^62
//! changes).
//!
//! Who changes what:
//! - lock-free, anyone: `CACHED -> PINNED` ([`Table::pin`]) and
//!   `PINNED -> CACHED` ([`Table::pinned`], then [`Table::unpin_seen`]
//!   once the unpinner's grace period is over), each one compare-and-swap
//!   that checks the run's address, length (and for the unpin its first
//!   PFN) read from the slot under the word's version;
//! - under the registry's write lock only: `EMPTY -> CACHED` with new
//!   run fields ([`Table::put`]), and `CACHED or PINNED -> EMPTY`
//!   ([`Table::take`], [`Table::take_if`]), after which the run is an
//!   ordinary one again (its pin count in the registry: 0 or 1).
//!
//! The run's fields (address, PFN, length) are written only while the
//! slot is `EMPTY`, before the release store that publishes `CACHED`; a
//! lock-free reader loads the word with acquire, then the fields, then
//! compare-and-swaps against the word it loaded: if the fields it read
//! belong to a later run, the slot left that word first and the swap
//! fails.
//!
//! Readers of pin state (the registry's counts, `pfn_at`, device copies,
//! translation-cache fills) take the registry's read lock as before and
//! read a hot run's state from its word: each sees the run pinned or not
//! at one instant, as it would see a pin that raced its read lock.
//! Device copies remember the word with the run they cache per thread,
//! so a run released to the table since is never reached through such a
//! cache (see `host_run` in the registry).

use std::sync::atomic::{AtomicU64, Ordering};

/// log2 of the number of slots.
const LOG_SLOTS: u32 = 6;
/// Slots in the table: at most this many released runs are kept.
pub(super) const SLOTS: usize = 1 << LOG_SLOTS;

/// No run in the slot.
pub(super) const EMPTY: u64 = 0;
/// The slot's run has no pins: a released run kept for a re-pin.
pub(super) const CACHED: u64 = 1;
/// The slot's run is pinned once.
pub(super) const PINNED: u64 = 2;
const STATE: u64 = 3;

/// The word after `w` with state `state`: a new version.
#[inline(always)]
fn next(w: u64, state: u64) -> u64 {
    (w & !STATE).wrapping_add(STATE + 1) | state
}

/// One slot: its word and the fields of its run (meaningful while the
/// word is not [`EMPTY`]).
#[repr(align(32))]
pub(super) struct Slot {
    word: AtomicU64,
    va: AtomicU64,
    pfn: AtomicU64,
    npages: AtomicU64,
}

impl Slot {
    const fn new() -> Slot {
        Slot { word: AtomicU64::new(EMPTY), va: AtomicU64::new(0), pfn: AtomicU64::new(0), npages: AtomicU64::new(0) }
    }

    /// The word now (for a reader that compares it later: a device copy's
    /// per-thread cache).
    #[inline(always)]
    pub(super) fn word(&self) -> u64 {
        self.word.load(Ordering::Acquire)
    }
}

/// The state bits of a word.
#[inline(always)]
pub(super) fn state(word: u64) -> u64 {
    word & STATE
}

/// What the first half of a lock-free change read.
struct Seen {
    i: usize,
    word: u64,
    pfn: u64,
}

/// A pin the table held, as [`Table::pinned`] saw it.
pub(super) struct Pinned(Seen);

pub(super) struct Table {
    slots: [Slot; SLOTS],
}

impl Table {
    pub(super) const fn new() -> Table {
        Table { slots: [const { Slot::new() }; SLOTS] }
    }

    /// The slot a run starting at virtual address `va` uses.
    #[inline(always)]
    pub(super) fn index(va: u64) -> usize {
        ((va >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - LOG_SLOTS)) as usize
    }

    #[inline(always)]
    pub(super) fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    /// Lock-free: pin the cached run that is exactly `npages` pages from
    /// `va`, if the table holds one; its first PFN.
    #[inline(always)]
    pub(super) fn pin(&self, va: u64, npages: u64) -> Option<u64> {
        let seen = self.find(va, npages, CACHED)?;
        self.swap(&seen, PINNED).then_some(seen.pfn)
    }

    /// Lock-free: unpin the run of `npages` pages from `va` at `pfn` if
    /// the table holds it pinned; whether it did (else the registry has
    /// the pin). (The tests' one step; `frames::unpin_user` waits between
    /// [`pinned`](Self::pinned) and [`unpin_seen`](Self::unpin_seen).)
    #[cfg(test)]
    pub(super) fn unpin(&self, va: u64, pfn: u64, npages: u64) -> bool {
        match self.find(va, npages, PINNED) {
            Some(seen) => seen.pfn == pfn && self.swap(&seen, CACHED),
            None => false,
        }
    }

    /// The table's pin of the run of `npages` pages from `va` at `pfn`,
    /// if it holds that run pinned now, without changing anything: for an
    /// unpin that must wait between seeing the pin and giving it back
    /// ([`Self::unpin_seen`]).
    #[inline(always)]
    pub(super) fn pinned(&self, va: u64, pfn: u64, npages: u64) -> Option<Pinned> {
        self.find(va, npages, PINNED).filter(|seen| seen.pfn == pfn).map(Pinned)
    }

    /// Lock-free: give back the pin [`pinned`](Self::pinned) saw, if the
    /// slot did not change since; whether it did (else the registry took
    /// the run out of the table, and has the pin now).
    #[inline(always)]
    pub(super) fn unpin_seen(&self, pinned: &Pinned) -> bool {
        self.swap(&pinned.0, CACHED)
    }

    /// The first half of a lock-free change: the slot of the run of
    /// `npages` pages at `va` if it holds that run in state `want`, as
    /// read under one version of its word.
    #[inline(always)]
    fn find(&self, va: u64, npages: u64, want: u64) -> Option<Seen> {
        let i = Self::index(va);
        let s = &self.slots[i];
        let word = s.word.load(Ordering::Acquire);
        if state(word) != want || s.va.load(Ordering::Relaxed) != va || s.npages.load(Ordering::Relaxed) != npages {
            return None;
        }
        Some(Seen { i, word, pfn: s.pfn.load(Ordering::Relaxed) })
    }

    /// The second half: move the slot to `state` if its word is still the
    /// one `seen` read (else something happened since: nothing changes).
    #[inline(always)]
    fn swap(&self, seen: &Seen, state: u64) -> bool {
        let s = &self.slots[seen.i];
        s.word.compare_exchange(seen.word, next(seen.word, state), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// The run slot `i` holds is an ordinary run again (registry write
    /// lock held): its state then ([`CACHED`] or [`PINNED`], [`EMPTY`] if
    /// it held none) and its first PFN.
    pub(super) fn take(&self, i: usize) -> (u64, u64) {
        let s = &self.slots[i];
        let mut w = s.word.load(Ordering::Acquire);
        loop {
            if state(w) == EMPTY {
                return (EMPTY, 0);
            }
            match s.word.compare_exchange_weak(w, next(w, EMPTY), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (state(w), s.pfn.load(Ordering::Relaxed)),
                Err(now) => w = now,
            }
        }
    }

    /// [`take`](Self::take) if the slot's run is in state `want` now;
    /// whether it was.
    pub(super) fn take_if(&self, i: usize, want: u64) -> bool {
        let s = &self.slots[i];
        let mut w = s.word.load(Ordering::Acquire);
        while state(w) == want {
            match s.word.compare_exchange_weak(w, next(w, EMPTY), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
        false
    }

    /// The first PFN of slot `i`'s run (registry lock held, slot in use).
    pub(super) fn pfn(&self, i: usize) -> u64 {
        self.slots[i].pfn.load(Ordering::Relaxed)
    }

    /// Give the empty slot `i` a cached run (registry write lock held).
    pub(super) fn put(&self, i: usize, va: u64, pfn: u64, npages: u64) {
        let s = &self.slots[i];
        let w = s.word.load(Ordering::Relaxed);
        debug_assert_eq!(state(w), EMPTY, "only the registry fills a slot, after emptying it");
        s.va.store(va, Ordering::Relaxed);
        s.pfn.store(pfn, Ordering::Relaxed);
        s.npages.store(npages, Ordering::Relaxed);
        s.word.store(next(w, CACHED), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VA: u64 = 0x7f00_0000_0000;

    /// A lock-free change whose slot changed between its read and its
    /// swap does nothing, even when the slot holds the same run in the
    /// same state again (a version apart), or another run at a PFN the
    /// first one no longer has.
    #[test]
    fn a_change_after_the_slot_changed_fails() {
        let t = Table::new();
        let i = Table::index(VA);
        t.put(i, VA, 100, 1);
        // Taken out and put back meanwhile: the same fields and state.
        let seen = t.find(VA, 1, CACHED).unwrap();
        assert_eq!(t.take(i), (CACHED, 100));
        t.put(i, VA, 100, 1);
        assert!(!t.swap(&seen, PINNED), "a stale version must not pin");
        // Pinned and unpinned by others meanwhile.
        let seen = t.find(VA, 1, CACHED).unwrap();
        assert_eq!(t.pin(VA, 1), Some(100));
        assert!(t.unpin(VA, 100, 1));
        assert!(!t.swap(&seen, PINNED));
        // Another run in the slot: its PFN, not the one read before.
        let seen = t.find(VA, 1, CACHED).unwrap();
        assert_eq!(t.take(i), (CACHED, 100));
        t.put(i, VA, 200, 1);
        assert!(!t.swap(&seen, PINNED));
        assert_eq!(t.pin(VA, 1), Some(200));
        // An unpin that read the pinned run before the registry took it.
        let seen = t.find(VA, 1, PINNED).unwrap();
        assert!(t.take_if(i, PINNED));
        assert!(!t.swap(&seen, CACHED), "the registry has the pin now");
        assert!(!t.unpin(VA, 200, 1));
    }

    /// Only an exact match is pinned or unpinned; the registry's take of a
    /// state that is not there changes nothing.
    #[test]
    fn only_the_exact_run_and_state() {
        let t = Table::new();
        let i = Table::index(VA);
        assert_eq!(t.pin(VA, 1), None);
        t.put(i, VA, 100, 2);
        assert_eq!(t.pin(VA, 1), None, "another length");
        assert_eq!(t.pin(VA + 4096, 2), None, "another address");
        assert!(!t.unpin(VA, 100, 2), "not pinned");
        assert!(!t.take_if(i, PINNED));
        assert_eq!(t.pin(VA, 2), Some(100));
        assert_eq!(t.pin(VA, 2), None, "pinned once at most");
        assert!(!t.unpin(VA, 101, 2), "another PFN");
        assert!(!t.take_if(i, CACHED));
        assert!(t.unpin(VA, 100, 2));
        assert!(t.take_if(i, CACHED));
        assert_eq!(t.take(i), (EMPTY, 0));
        assert_eq!(t.pin(VA, 2), None);
    }
}
