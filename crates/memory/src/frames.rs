//! Frames: the emulated physical memory behind every IOMMU mapping.
//!
//! Model. A *frame* is one host page a device may reach, named by an
//! emulated page frame number (PFN). Page tables store physical addresses
//! `pfn << PAGE_SHIFT | offset` exactly as hardware would; only this module
//! knows where a frame lives in the host address space.
//!
//! Pinning a range of the program's memory (the kernel's `pin_user_pages`)
//! turns each page into a frame *in place*: the frame's host address is the
//! program's own virtual address, so a device and the program share the
//! page with no copy. As in the kernel:
//! - a page has one frame however many times it is pinned; each pin bumps
//!   the page's pin count ([`pin_count`] is what `IOMMU_TEST_OP_MD_CHECK_REFS`
//!   reads) and the frame is released when the count returns to zero;
//! - a pinned page outlives the program's mapping of it. The preload shim
//!   calls [`before_munmap`], [`before_madvise_dontneed`] and
//!   [`around_mremap`] before the program changes its mappings; pinned pages
//!   in the affected range are then *relocated*: moved with `mremap` (the
//!   same physical pages, shared mappings stay shared) into an arena the
//!   engine owns, and their frames follow them. The program sees the range
//!   gone (or fresh zero pages after `MADV_DONTNEED`); devices keep the old
//!   pages and their contents.
//!
//! Runs. Frames are kept in *runs*: a range of pages, contiguous in the host
//! address space and in PFN space, every page pinned the same number of
//! times (at least once). Pinning or unpinning part of a run splits it where
//! the counts start to differ; neighbours whose counts agree again merge.
//! PFNs of a new run are congruent to
//! its virtual page numbers modulo the run's size (up to 1 GiB), so memory
//! that is huge-page aligned in the program is huge-page aligned physically
//! and IOMMUs can map it with large pages, as real hardware would see it.
//! Runs are indexed by first PFN and (in place) by host address in arena
//! maps ([`SlabMap`]): pinning and releasing allocate nothing once the
//! registry has grown to its working size, and a released run at the top of
//! the PFN space gives its PFNs back to the bump allocator.
//!
//! Released runs. A small in-place run whose last pin goes is not released
//! at once but kept, with no pins, in a slot of a bounded table (the hot
//! table, see the `hot` module): pinning exactly the same pages again,
//! what a VMM does when a guest maps and unmaps one buffer over and over,
//! takes them back with one compare-and-swap on the slot's word, and the
//! unpin of that pin ([`unpin_user`]) gives them back with another, both
//! without the registry's lock. Cached runs are frames for nobody.
//!
//! Mapped frames. A file's pages (`IOMMU_IOAS_MAP_FILE`, the kernel's
//! `memfd_pin_folios`) have no address in the program; the engine maps the
//! file itself ([`crate::filemap`]) and registers pages of that mapping with
//! [`pin_mapped`]. Such a run's host address is the engine's shared mapping,
//! so device writes land in the file and every other mapping of it sees
//! them. The mapping belongs to its owner, not to this registry: releasing
//! the last pin frees nothing here, and the owner calls [`forget_mapped`]
//! before it unmaps.
//!
//! Access. Devices reach frames through [`read_phys`] / [`write_phys`]. In
//! place and mapped frames are copied with the fault-safe user copies, so a
//! program that pulled a page away behind our back (glibc's internal
//! `munmap`, which no preload can see, or a file truncated under a mapping)
//! costs an `EFAULT`, never a crash. Relocated frames are engine memory and
//! are copied directly, under the registry's read lock, which relocation and
//! release take for writing, or (the steady state, see "Lookup cache") by
//! the guarded copy without the lock.
//!
//! Locking: one `RwLock` over the registry. It is a leaf: nothing is called
//! under it that could re-enter the engine. The one change made without it
//! (besides a `Change`'s count, whose work is under it) is a hot run's
//! pin state (cached or pinned once), in its slot's word;
//! whoever holds the write lock takes a hot run out of its slot before
//! doing anything else with it. Every path that takes it runs
//! inside the fork gate ([`crate::forkgate`]: engine calls, the DMA
//! engines' rings, the munmap/madvise/mremap hooks here), so a forked
//! child never inherits it held.
//!
//! Lookup cache. Each thread remembers the last run it copied through on
//! each side (what devices read, what they write: a copy's two ends are
//! often in different runs), with the value of a generation word
//! (`GENERATION`) that every change of a PFN's host memory (release,
//! relocation, move) moves. A request that the cached run holds whole (the
//! steady state of [`read_phys`], [`write_phys`] and [`copy_phys`]) takes
//! no lock at all: inside a DMA-fence leaf section ([`crate::dma_fence`])
//! it checks the generation and the range and makes one guarded copy.
//! Every change that could take a run's memory from under such a copy (an
//! unpin, which may release frames; a relocation or move of pinned pages;
//! an owner dropping mapped frames) is a `Change`: it moves the
//! generation, and counts itself in the same word (no run is cached while
//! one is in progress), *before* its grace period, so a copy that
//! validated earlier is waited for and one that validates later falls
//! back to the read lock. Hot runs are not served without the lock (their
//! lock-free unpin is no `Change`). Splitting and merging runs leave the
//! generation alone: every PFN keeps its host address, which is all a
//! cached run says.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use uiommufd_abi::Errno;

use crate::inline_vec::InlineVec;
use crate::slabmap::SlabMap;
use crate::sys::mm;
use crate::{user, vma};

mod hot;

/// First PFN handed out (4 GiB of emulated physical space below it are left
/// unused, as real machines keep low memory for other things).
const FIRST_PFN: u64 = 0x10_0000;
/// End of the emulated physical address space frames live in: 39 bits
/// (512 GiB), the narrowest host address width among the modelled IOMMUs
/// (a VT-d client unit's MGAW), so every frame address fits every model's
/// page-table entries. Page-table pages live below `FIRST_PFN` (the
/// `uiommufd-hw` window at 1-4 GiB).
pub const PHYS_ADDR_LIMIT: u64 = 1 << 39;
/// Largest PFN alignment we try to preserve (1 GiB of 4 KiB pages).
const MAX_CONGRUENCE_SHIFT: u32 = 18;
/// Address-space reserved for relocated frames.
const ARENA_SIZE: u64 = 1 << 40;

#[inline]
pub fn page_shift() -> u32 {
    crate::page_size().trailing_zeros()
}

#[inline]
fn page() -> u64 {
    crate::page_size() as u64
}

/// One contiguous stretch of pinned frames, as [`pin_user`] returns them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinnedRun {
    /// Virtual address of the first page: in the program for [`pin_user`],
    /// in the engine's mapping for [`pin_mapped`].
    pub va: u64,
    /// PFN of the first page; the others follow consecutively.
    pub pfn: u64,
    pub npages: u64,
}

/// The runs one [`pin_user`] call pinned, in address order: one or two
/// are kept inline (the usual case: no allocation), more on the heap.
pub type PinnedRuns = InlineVec<PinnedRun, 2>;

/// Append to `out`, merging with the previous run when frames continue it.
#[inline(always)]
fn push_run(out: &mut PinnedRuns, r: PinnedRun) {
    if let Some(last) = out.last_mut() {
        if last.pfn + last.npages == r.pfn && last.va + last.npages * page() == r.va {
            last.npages += r.npages;
            return;
        }
    }
    out.push(r);
}

/// A run of frames: consecutive PFNs at consecutive host pages, every page
/// pinned the same number of times. A pin or unpin of part of a run splits
/// it where the counts start to differ (neighbours whose counts become
/// equal again are merged), so a run is one slab entry whatever its size
/// and no per-page counts are ever allocated.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// Host address of the run's first page.
    host: u64,
    npages: u64,
    /// Pins of each page of the run: at least one, unless the run is hot
    /// (then its slot's state says: see [`Registry::pins`]); zero only
    /// for a run released to the hot table, or, under the write lock, one
    /// just taken out of it.
    pins: u32,
    /// True while `host` is the program's own mapping of the pages.
    in_place: bool,
    /// True when `host` is an engine mapping owned by someone else (a
    /// file's pages, see [`pin_mapped`]).
    mapped: bool,
    /// The slot of the hot table ([`hot`]) that holds the run, plus one;
    /// 0 for an ordinary run.
    hot: u16,
}

impl Run {
    fn host_end(&self) -> u64 {
        self.host + self.npages * page()
    }

    /// Whether the run, its last pin gone, may wait in the cache.
    fn cacheable(&self) -> bool {
        self.in_place && !self.mapped && self.npages <= CACHE_RUN_PAGES
    }
}

/// Runs longer than this (2 MiB of 4 KiB pages) are released at once: the
/// hot table is for the small mappings a VMM makes and drops again and
/// again.
const CACHE_RUN_PAGES: u64 = 512;

struct Registry {
    /// Every run, keyed by first PFN.
    by_pfn: SlabMap<Run>,
    /// In-place runs, keyed by virtual address -> first PFN.
    by_va: SlabMap<u64>,
    next_pfn: u64,
    arena: Arena,
    /// Released runs kept for a re-pin, and their one pin: in-place runs
    /// of at most [`CACHE_RUN_PAGES`] pages whose last pin went are kept,
    /// indexed with their PFNs, in a slot of this table (their `hot`),
    /// where a pin of exactly their pages and its unpin find them without
    /// this lock (see [`hot`]). Invariants, outside the write lock: a run
    /// with no pins is hot (cached); a hot run's pin count (0 or 1) is its
    /// slot's state, not `pins`; hot runs are never split, merged, moved
    /// or released: whoever holds the write lock takes a run out of its
    /// slot first (`detach`), after which no other thread can change it.
    ///
    /// A cached run is no frame for anyone: device lookups, [`pfn_at`],
    /// [`pin_count`], [`pinned_pages`] and [`total_pins`] pass over it;
    /// the generation moves when a run enters the table, and a device
    /// copy's per-thread cache of a hot run checks the slot's word, so no
    /// thread's [`LAST_RUNS`] reaches it either. Its PFNs keep their host
    /// address, which is why a re-pin may hand them out again without a
    /// generation bump. The shim's hooks drop cached runs in a range the
    /// program unmaps or remaps (they are never relocated).
    hot: &'static hot::Table,
}

/// Pages pinned in place; lets the shim's hooks return at once in programs
/// that pin nothing. Changed only under the write lock.
static IN_PLACE_PAGES: AtomicUsize = AtomicUsize::new(0);

/// What validates this thread's cached runs ([`LAST_RUNS`]): a generation
/// in the high bits ([`GEN_ONE`] each), and in the low bits ([`CHANGES`])
/// how many [`Change`]s are in progress. The generation moves when a
/// [`Change`] begins, before its grace period (a sequentially consistent
/// read-modify-write: what lets a device copy validate its cached run
/// without the lock), and, under the write lock when no [`Change`] is in
/// progress ([`invalidate`]), whenever a PFN stops meaning the host memory
/// it meant (a run released, relocated or moved) or a run enters the hot
/// table (whose re-pins and unpins do not take the lock, and are seen
/// through the slot's word instead). Splitting or merging runs changes no
/// PFN's host address and leaves it alone.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// [`GENERATION`]'s count of changes in progress.
const CHANGES: u64 = (1 << 16) - 1;
/// One step of [`GENERATION`]'s generation.
const GEN_ONE: u64 = 1 << 16;

/// A change of frames that devices may be copying through without the
/// registry's lock (an unpin that may release frames, a relocation or
/// move of pinned pages, an owner dropping its mapped frames), from
/// before its grace period until it is done: every thread's cached run
/// is stale from its beginning, and none is cached until its end (a run
/// looked up meanwhile may be about to change under the write lock). So
/// a lock-free copy ([`read_phys`], [`write_phys`], [`copy_phys`]) that
/// validated its run against the generation before the change began is
/// waited for by the grace period (it validates inside a
/// [`crate::dma_fence::Leaf`] section, after the section's entry),
/// and one that validates later fails and takes the lock.
///
/// Begun outside the registry's lock and outside any DMA-fence section
/// (it waits for sections).
struct Change(#[allow(dead_code)] Option<crate::atc::Relocation>);

impl Change {
    /// Begin a change; with `relocation`, one that device translation
    /// caches must let go of too ([`crate::atc::Relocation`], whose grace
    /// period is then this change's).
    fn begin(relocation: bool) -> Change {
        // Before the grace period, sequentially consistent: see
        // `dma_fence::synchronize`.
        GENERATION.fetch_add(GEN_ONE + 1, Ordering::SeqCst);
        if relocation {
            return Change(Some(crate::atc::Relocation::begin()));
        }
        crate::dma_fence::synchronize();
        Change(None)
    }
}

impl Drop for Change {
    fn drop(&mut self) {
        GENERATION.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The host side of one run, as device copies need it.
#[derive(Clone, Copy)]
struct HostRun {
    pfn: u64,
    npages: u64,
    host: u64,
    /// In place or mapped: reached through the fault-safe copies.
    guarded: bool,
}

/// A run as this thread's device copies remember it: physical addresses
/// `[start, end)` at host `start + delta`, looked up in generation `gen`
/// (`u64::MAX`: none), and for a hot run its slot and the word it had.
#[derive(Clone, Copy)]
struct Cached {
    gen: u64,
    start: u64,
    end: u64,
    delta: u64,
    guarded: bool,
    hot: Option<(&'static hot::Slot, u64)>,
}

/// Which of a thread's [`LAST_RUNS`] a lookup uses: a copy's source and its
/// destination are often in different runs.
#[derive(Clone, Copy)]
enum Side {
    /// What devices read (`read_phys`, a copy's source).
    Src = 0,
    /// What devices write (`write_phys`, a copy's destination, cache fills).
    Dst = 1,
}

thread_local! {
    /// The runs this thread's last device copies used, one per [`Side`].
    static LAST_RUNS: [std::cell::Cell<Cached>; 2] = const {
        let none = Cached { gen: u64::MAX, start: 0, end: 0, delta: 0, guarded: true, hot: None };
        [std::cell::Cell::new(none), std::cell::Cell::new(none)]
    };
}

/// The host address of physical `[paddr, paddr + len)` and whether it is
/// reached through the fault-safe copies, when this thread's cached run on
/// `side` holds all of it and is still what it says: no PFN changed its
/// host since the run was cached and no [`Change`] is in progress (the
/// whole [`GENERATION`] word is the one it was cached with) and, for a hot
/// run, its slot's word is still the one it was pinned with (its lock-free
/// unpin changes that).
///
/// Two callers. Under the registry's read lock ([`host_run`]): what it
/// finds then stays so while the lock is held (the host memory of a PFN
/// changes only under the write lock, which also moves the generation).
/// Without the lock, with `lock_free` (the steady state of [`read_phys`],
/// [`write_phys`] and [`copy_phys`]), inside a DMA-fence section begun
/// before this call: every change that could take the run's memory away
/// begins with a [`Change`], whose generation bump precedes its grace
/// period, so either this load sees the bump or the grace period waits for
/// the section. A hot run is not served then (its lock-free unpin is no
/// [`Change`]): `None`, and the caller takes the lock.
#[inline(always)]
fn cached_host(side: Side, paddr: u64, len: u64, lock_free: bool) -> Option<(u64, bool)> {
    // Sequentially consistent, after the section's entry: see above.
    let gen = GENERATION.load(Ordering::SeqCst);
    let c = LAST_RUNS.with(|l| l[side as usize].get());
    let end = paddr.checked_add(len)?;
    if c.gen != gen || paddr < c.start || end > c.end {
        return None;
    }
    if let Some((slot, word)) = c.hot {
        if lock_free || slot.word() != word {
            return None;
        }
    }
    Some((paddr.wrapping_add(c.delta), c.guarded))
}

/// The run holding `pfn`, for a copy made under the registry's read lock
/// `_reg`: this thread's cached run on `side` when it holds `pfn` (see
/// [`cached_host`]), else the index's, which then becomes the cached one
/// (unless a [`Change`] is in progress: a run looked up now may be about
/// to change, and a lock-free copy must not find it).
fn host_run(reg: &Registry, side: Side, pfn: u64) -> Option<HostRun> {
    let shift = page_shift();
    if let Some((host, guarded)) = cached_host(side, pfn << shift, 1, false) {
        let c = LAST_RUNS.with(|l| l[side as usize].get());
        let first = c.start >> shift;
        return Some(HostRun {
            pfn: first,
            npages: (c.end - c.start) >> shift,
            host: host - ((pfn - first) << shift),
            guarded,
        });
    }
    let (start, r) = reg.by_pfn.prev(pfn)?;
    if pfn >= start + r.npages {
        return None;
    }
    let hot = match r.hot {
        0 if r.pins == 0 => return None,
        0 => None,
        i => {
            let slot = reg.hot.slot(usize::from(i - 1));
            let word = slot.word();
            if hot::state(word) != hot::PINNED {
                return None;
            }
            Some((slot, word))
        }
    };
    let run = HostRun { pfn: start, npages: r.npages, host: r.host, guarded: r.in_place || r.mapped };
    // Under the read lock: a change either is done with the registry (and
    // its end, which this load then sees, follows that) or is counted here
    // (it began before this load, which sees its count).
    let gen = GENERATION.load(Ordering::SeqCst);
    if gen & CHANGES == 0 {
        let (first, end) = (start << shift, (start + r.npages) << shift);
        let cached = Cached { gen, start: first, end, delta: r.host.wrapping_sub(first), guarded: run.guarded, hot };
        LAST_RUNS.with(|l| l[side as usize].set(cached));
    }
    Some(run)
}

/// The hot table of the process's registry (see [`hot`]).
static HOT: hot::Table = hot::Table::new();

fn registry() -> &'static RwLock<Registry> {
    static R: RwLock<Registry> = RwLock::new(Registry::new(FIRST_PFN, &HOT));
    &R
}

fn read() -> RwLockReadGuard<'static, Registry> {
    crate::lockwait::read(registry())
}

/// Pins and unpins of any IOAS meet here: spin a while before sleeping
/// (see [`crate::lockwait`]).
fn write() -> RwLockWriteGuard<'static, Registry> {
    crate::lockwait::write(registry())
}

/// PFNs stop meaning what they meant (see [`GENERATION`]); write lock held.
/// (A read-modify-write: [`Change`]s bump it without the lock.) Nothing to
/// do while a [`Change`] is in progress (this one's, or another that will
/// end after this lock goes): no run has been cached since it began, and
/// every run cached before is stale already.
fn invalidate() {
    if GENERATION.load(Ordering::SeqCst) & CHANGES == 0 {
        GENERATION.fetch_add(GEN_ONE, Ordering::SeqCst);
    }
}

impl Registry {
    const fn new(next_pfn: u64, hot: &'static hot::Table) -> Registry {
        Registry { by_pfn: SlabMap::new(), by_va: SlabMap::new(), next_pfn, arena: Arena { base: 0, next: 0 }, hot }
    }

    /// The pins of each page of `run`: a hot run's from its slot.
    fn pins(&self, run: &Run) -> u32 {
        match run.hot {
            0 => run.pins,
            i => u32::from(hot::state(self.hot.slot(usize::from(i - 1)).word()) == hot::PINNED),
        }
    }

    /// The in-place run holding virtual address `va` (pinned or cached):
    /// its first PFN and itself.
    fn in_place_at(&self, va: u64) -> Option<(u64, Run)> {
        let (_, &pfn) = self.by_va.prev(va)?;
        let run = self.by_pfn.get(pfn)?;
        (va < run.host_end()).then_some((pfn, *run))
    }

    /// The *pinned* in-place run holding `va`, as [`in_place_at`] (cached
    /// runs are not frames).
    ///
    /// [`in_place_at`]: Self::in_place_at
    fn pinned_at(&self, va: u64) -> Option<(u64, Run)> {
        self.in_place_at(va).filter(|(_, r)| self.pins(r) != 0)
    }

    /// The in-place runs that hold a page of `[va, end)`: their first PFNs.
    fn in_place_in(&self, va: u64, end: u64) -> InlineVec<u64, 4> {
        if end <= va {
            return InlineVec::default();
        }
        let first = self.by_va.prev(va).map_or(va, |(v, _)| v);
        self.by_va
            .range(first, end - 1)
            .filter(|(_, &pfn)| self.by_pfn.get(pfn).is_some_and(|r| r.host_end() > va))
            .map(|(_, &pfn)| pfn)
            .collect()
    }

    /// Take the hot run at `pfn`, if it is one, out of its slot: an
    /// ordinary run again, pinned once or (cached) not at all, which no
    /// other thread can change any more. A cached one must then be pinned
    /// or released before the write lock goes.
    fn detach(&mut self, pfn: u64) -> Option<Run> {
        let run = self.by_pfn.get_mut(pfn)?;
        if run.hot != 0 {
            let (state, _) = self.hot.take(usize::from(run.hot - 1));
            debug_assert_ne!(state, hot::EMPTY, "a hot run's slot is in use");
            run.pins = u32::from(state == hot::PINNED);
            run.hot = 0;
        }
        Some(*run)
    }

    /// [`in_place_at`](Self::in_place_at), the run taken out of the hot
    /// table first if it is in it.
    fn in_place_at_detached(&mut self, va: u64) -> Option<(u64, Run)> {
        let (pfn, run) = self.in_place_at(va)?;
        if run.hot == 0 {
            return Some((pfn, run));
        }
        Some((pfn, self.detach(pfn)?))
    }

    /// Where the next pinned in-place run starting in `[va, end)` starts
    /// (`end` if none does), taking every run it meets out of the hot
    /// table; and whether it met a cached one before it.
    fn next_pinned_detaching(&mut self, va: u64, end: u64) -> (u64, bool) {
        let mut at = va;
        let mut met = false;
        while let Some((v, &pfn)) = self.by_va.next(at) {
            if v >= end {
                break;
            }
            if self.detach(pfn).is_some_and(|r| r.pins != 0) {
                return (v, met);
            }
            met = true;
            at = v + 1;
        }
        (end, met)
    }

    /// [`detach`](Self::detach) every hot run holding a page of
    /// `[va, end)`.
    fn detach_in(&mut self, va: u64, end: u64) {
        for pfn in self.in_place_in(va, end).iter() {
            let _ = self.detach(*pfn);
        }
    }

    /// [`detach`](Self::detach) the run at `pfn` if it is hot and pinned
    /// now; false if it is a cached hot run (and stays one).
    fn detach_if_pinned(&mut self, pfn: u64) -> bool {
        let Some(run) = self.by_pfn.get_mut(pfn) else { return false };
        if run.hot == 0 {
            return true;
        }
        if !self.hot.take_if(usize::from(run.hot - 1), hot::PINNED) {
            return false;
        }
        run.pins = 1;
        run.hot = 0;
        true
    }

    /// The last pin of the run at `pfn` went: keep it in the hot table if
    /// it is a small in-place run, else release it. Either way it stops
    /// being a frame for devices now.
    /// (`run`: a copy of it.)
    fn unpinned(&mut self, pfn: u64, run: Run) {
        if !run.cacheable() {
            self.release(pfn);
            return;
        }
        // The slot's run before: released if cached (the table is
        // direct-mapped: the newest release wins), an ordinary pinned run
        // if pinned.
        let i = hot::Table::index(run.host);
        match self.hot.take(i) {
            (hot::CACHED, old) => {
                self.run_mut(old).hot = 0;
                self.release(old);
            }
            (hot::PINNED, old) => {
                let r = self.run_mut(old);
                r.hot = 0;
                r.pins = 1;
            }
            _ => {}
        }
        let r = self.run_mut(pfn);
        r.pins = 0;
        r.hot = i as u16 + 1;
        self.hot.put(i, run.host, pfn, run.npages);
        // Per-thread lookups of it as an ordinary run go.
        invalidate();
    }

    /// Release every cached run that holds a page of `[va, end)` (hot ones
    /// are taken out of the table first).
    fn drop_cached_in(&mut self, va: u64, end: u64) {
        self.detach_in(va, end);
        self.release_cached_in(va, end);
    }

    /// Release every ordinary cached run (one taken out of the hot table
    /// under this lock) that holds a page of `[va, end)`.
    fn release_cached_in(&mut self, va: u64, end: u64) {
        for pfn in self.in_place_in(va, end).iter() {
            if self.by_pfn.get(*pfn).is_some_and(|r| r.pins == 0 && r.hot == 0) {
                self.release(*pfn);
            }
        }
    }

    /// Release every cached run (when PFN space runs out); whether there
    /// was one. Pinned hot runs stay.
    fn drop_all_cached(&mut self) -> bool {
        let mut any = false;
        for i in 0..hot::SLOTS {
            if self.hot.take_if(i, hot::CACHED) {
                let pfn = self.hot.pfn(i);
                self.run_mut(pfn).hot = 0;
                self.release(pfn);
                any = true;
            }
        }
        any
    }

    /// The run holding `pfn`: its first PFN and itself.
    fn run_of_pfn(&self, pfn: u64) -> Option<(u64, Run)> {
        let (start, &run) = self.by_pfn.prev(pfn)?;
        (pfn < start + run.npages).then_some((start, run))
    }

    fn run_mut(&mut self, pfn: u64) -> &mut Run {
        self.by_pfn.get_mut(pfn).expect("run indexed by its first PFN")
    }

    /// PFNs for a new run of `npages` pinned at `va`: congruent to `va`'s
    /// page number modulo the run's size (capped at 1 GiB). Bump allocation
    /// while the space lasts (a released run at the top gives its PFNs
    /// back, see [`release`](Self::release)), then first fit over the gaps
    /// released runs left, so a program that pins and unpins forever never
    /// runs out.
    fn alloc_pfns(&mut self, va: u64, npages: u64) -> Result<u64, Errno> {
        let limit = PHYS_ADDR_LIMIT >> page_shift();
        let vpn = va >> page_shift();
        let shift = (63 - npages.leading_zeros()).min(MAX_CONGRUENCE_SHIFT);
        let align = 1u64 << shift;
        let want = vpn & (align - 1);
        // The first PFN at or above `from` with the wanted residue.
        let fit = |from: u64| -> Option<u64> {
            let base = (from & !(align - 1)) | want;
            if base < from {
                base.checked_add(align)
            } else {
                Some(base)
            }
        };
        if let Some(base) = fit(self.next_pfn) {
            if base.checked_add(npages).is_some_and(|end| end <= limit) {
                self.next_pfn = base + npages;
                return Ok(base);
            }
        }
        let mut from = FIRST_PFN;
        for (start, run) in self.by_pfn.iter() {
            if let Some(base) = fit(from) {
                if base + npages <= start {
                    return Ok(base);
                }
            }
            from = from.max(start + run.npages);
        }
        match fit(from) {
            Some(base) if base + npages <= limit => Ok(base),
            _ => Err(Errno::ENOMEM),
        }
    }

    /// [`alloc_pfns`](Self::alloc_pfns), dropping the cache and trying
    /// again if PFN space ran out.
    fn alloc_pfns_or_drop_cache(&mut self, va: u64, npages: u64) -> Result<u64, Errno> {
        self.alloc_pfns(va, npages)
            .or_else(|e| if self.drop_all_cached() { self.alloc_pfns(va, npages) } else { Err(e) })
    }

    fn insert(&mut self, pfn: u64, run: Run) {
        if run.in_place {
            let n = IN_PLACE_PAGES.load(Ordering::Relaxed);
            IN_PLACE_PAGES.store(n + run.npages as usize, Ordering::Relaxed);
            self.by_va.insert(run.host, pfn);
        }
        self.by_pfn.insert(pfn, run);
    }

    fn remove(&mut self, pfn: u64) -> Run {
        let run = self.by_pfn.remove(pfn).expect("run indexed by its first PFN");
        if run.in_place {
            let n = IN_PLACE_PAGES.load(Ordering::Relaxed);
            IN_PLACE_PAGES.store(n - run.npages as usize, Ordering::Relaxed);
            self.by_va.remove(run.host);
        }
        run
    }

    /// The run at `pfn` goes: its PFNs are free (the topmost ones go back
    /// to the bump allocator) and relocated memory is released.
    fn release(&mut self, pfn: u64) {
        let run = self.remove(pfn);
        debug_assert_eq!(run.hot, 0, "a hot run is taken out of its slot first");
        invalidate();
        if !run.in_place && !run.mapped {
            self.arena.release(run.host, run.npages * page());
        }
        if pfn + run.npages == self.next_pfn {
            self.next_pfn = pfn;
        }
    }

    /// Split the run starting at `pfn` so that a run starts at `at`
    /// (`pfn < at < pfn + npages`). No PFN changes its host.
    fn split(&mut self, pfn: u64, at: u64) {
        let k = at - pfn;
        let left = self.run_mut(pfn);
        debug_assert!(left.pins != 0 && left.hot == 0, "cached and hot runs are never split");
        let right = Run { host: left.host + k * page(), npages: left.npages - k, ..*left };
        left.npages = k;
        // Same pages in place as before: only the by-VA index changes.
        self.by_pfn.insert(at, right);
        if right.in_place {
            self.by_va.insert(right.host, at);
        }
    }

    /// Ensure a run boundary at `pfn` if `pfn` falls inside a run.
    fn cut_at(&mut self, pfn: u64) {
        if let Some((start, _)) = self.run_of_pfn(pfn) {
            if start != pfn {
                self.split(start, pfn);
            }
        }
    }

    /// Merge the run at `pfn` with its neighbours where they continue it
    /// (PFNs and host pages), are of the same kind and have the same count.
    fn merge_around(&mut self, pfn: u64) {
        let mergeable = |a: &Run, a_pfn: u64, b: &Run, b_pfn: u64| {
            a_pfn + a.npages == b_pfn
                && a.host_end() == b.host
                && a.pins == b.pins
                && a.in_place == b.in_place
                && a.mapped == b.mapped
                && a.hot == 0
                && b.hot == 0
        };
        let mut start = pfn;
        let mut run = *self.by_pfn.get(pfn).expect("run");
        if let Some((p, &prev)) = self.by_pfn.prev_below(pfn) {
            if mergeable(&prev, p, &run, pfn) {
                self.by_pfn.remove(pfn);
                if run.in_place {
                    self.by_va.remove(run.host);
                }
                self.run_mut(p).npages += run.npages;
                start = p;
                run = *self.by_pfn.get(p).expect("run");
            }
        }
        let end = start + run.npages;
        if let Some(&next) = self.by_pfn.get(end) {
            if mergeable(&run, start, &next, end) {
                self.by_pfn.remove(end);
                if next.in_place {
                    self.by_va.remove(next.host);
                }
                self.run_mut(start).npages += next.npages;
            }
        }
    }
}

/// Pin `npages` pages of the program's memory starting at page-aligned
/// `va`, for writing when `write`. Returns the frames in address order.
///
/// Fails with `EFAULT`, pinning nothing, unless the whole range is mapped
/// readable (and writable when `write`).
///
/// The memory is the thread's current process's ([`user::with_process`]).
/// Another process's pages can be pinned here only where its mapping is
/// the same shared object as ours at the same address (a `MAP_SHARED`
/// mapping inherited through `fork`, say): they are then our own pages,
/// pinned in place at our address. Private memory of another process, or
/// a process that is gone, is `EFAULT`: an engine inside this process
/// cannot reach it for a device.
///
/// Inlined into callers for its usual case, a re-pin through the hot
/// table; the rest is out of line.
#[inline]
pub fn pin_user(va: u64, npages: u64, write: bool) -> Result<PinnedRuns, Errno> {
    if crate::failpoint::should_fail() {
        return Err(Errno::EFAULT);
    }
    pin_user_unfailing(va, npages, write)
}

/// [`pin_user`] without its failure injection point: for a caller that
/// models a kernel path whose pin has none (`pin_user_pages_remote` of
/// one page for an access), the caller's own point coming first.
#[inline]
pub fn pin_user_unfailing(va: u64, npages: u64, write: bool) -> Result<PinnedRuns, Errno> {
    let ps = page();
    // (A mask, not `is_multiple_of`: the page size is a power of two, and
    // a division costs more than the rest of a re-pin.)
    if va & (ps - 1) != 0 {
        return Err(Errno::EINVAL);
    }
    let len = npages.checked_mul(ps).ok_or(Errno::EFAULT)?;
    let end = va.checked_add(len).ok_or(Errno::EFAULT)?;
    if npages == 0 {
        return Ok(PinnedRuns::default());
    }
    check_user_range(va, end, write, ps)?;
    // The usual case: the run released last from these very pages, taken
    // back from the hot table without the lock.
    if let Some(pfn) = HOT.pin(va, npages) {
        return Ok(PinnedRuns::one(PinnedRun { va, pfn, npages }));
    }
    pin_user_locked(va, end)
}

/// [`pin_user`] of `[va, end)` (checked) under the registry's lock.
#[inline(never)]
fn pin_user_locked(va: u64, end: u64) -> Result<PinnedRuns, Errno> {
    let ps = page();
    let mut out = PinnedRuns::default();
    let mut guard = self::write();
    let reg = &mut *guard;
    // Runs met are taken out of the hot table first (nothing changes them
    // behind our back then); each cached one met is pinned again or
    // released before the lock goes.
    let mut cur = va;
    while cur < end {
        let here = reg.in_place_at_detached(cur);
        if let Some((pfn, run)) = here {
            // A cached run that is the rest of the range: its frames are
            // as they were.
            if run.pins == 0 && run.host == cur && run.npages * ps == end - cur {
                reg.run_mut(pfn).pins = 1;
                push_run(&mut out, PinnedRun { va: cur, pfn, npages: run.npages });
                break;
            }
            if run.pins != 0 {
                let first = pfn + (cur - run.host) / ps;
                let n = (end.min(run.host_end()) - cur) / ps;
                // The pages pinned again become a run of their own.
                if first != pfn {
                    reg.split(pfn, first);
                }
                if first + n != pfn + run.npages {
                    reg.split(first, first + n);
                }
                reg.run_mut(first).pins += 1;
                reg.merge_around(first);
                push_run(&mut out, PinnedRun { va: cur, pfn: first, npages: n });
                cur += n * ps;
                continue;
            }
        }
        // A gap: pages up to the next pinned run. One cached run that is
        // all of it is pinned again; otherwise cached runs in it go and it
        // gets new frames, as if nothing were cached (contiguous, aligned
        // like the program's pages: a cached page inside a larger range
        // does not split the range's frames).
        let (gap_end, met_cached) = reg.next_pinned_detaching(cur, end);
        let n = (gap_end - cur) / ps;
        if let Some((pfn, run)) = here {
            if run.host == cur && run.npages == n {
                reg.run_mut(pfn).pins = 1;
                push_run(&mut out, PinnedRun { va: cur, pfn, npages: n });
                cur = gap_end;
                continue;
            }
        }
        if here.is_some() || met_cached {
            reg.release_cached_in(cur, gap_end);
        }
        let pfn = match reg.alloc_pfns_or_drop_cache(cur, n) {
            Ok(p) => p,
            Err(e) => {
                drop(guard);
                for r in out.iter() {
                    unpin(r.pfn, r.npages);
                }
                return Err(e);
            }
        };
        reg.insert(pfn, Run { host: cur, npages: n, pins: 1, in_place: true, mapped: false, hot: 0 });
        push_run(&mut out, PinnedRun { va: cur, pfn, npages: n });
        cur = gap_end;
    }
    Ok(out)
}

/// The usual case of [`pin_user`], inlined into its callers: `npages` of
/// our own pages at `va` that went last into the hot table, taken back
/// after the same checks; `None` for anything else (a failure included,
/// and an armed failpoint): then [`pin_user`] does the whole work and
/// reports what failed. The thread's current process must be this one.
#[inline(always)]
pub fn repin_user(va: u64, npages: u64, write: bool) -> Option<u64> {
    if crate::failpoint::nth() != 0 {
        return None;
    }
    let ps = page();
    let end = va.checked_add(npages.checked_mul(ps)?)?;
    if va & (ps - 1) != 0 || npages == 0 || npages > CACHE_RUN_PAGES {
        return None;
    }
    check_user_range(va, end, write, ps).ok()?;
    HOT.pin(va, npages)
}

/// Up to this many pages (16 MiB) are checked by touching each: a few ns a
/// page once present, and it faults missing pages in as `pin_user_pages`
/// does. Larger ranges are checked against the memory map instead, whose
/// cost (tens of microseconds) does not grow with the size.
const PROBE_PAGES: u64 = 4096;

/// `EFAULT` unless every page of `[va, end)` is mapped readable (and
/// writable when `write`), in the current process, and when that is
/// another one, unless it is alive and the range is the same shared
/// memory as ours (see [`pin_user`]).
/// (`ps`: the page size.)
#[inline(always)]
fn check_user_range(va: u64, end: u64, write: bool, ps: u64) -> Result<(), Errno> {
    // The usual case: a few of our own pages, probed one by one.
    if end - va <= PROBE_PAGES * ps && crate::guard::available() && user::current_process().is_none() {
        return probe_range(va, end, write, ps);
    }
    check_user_range_slow(va, end, write)
}

/// Touch each page of `[va, end)`, in our own address space, as
/// [`check_user_range`] does (the guarded probes are available).
#[inline(always)]
fn probe_range(va: u64, end: u64, write: bool, ps: u64) -> Result<(), Errno> {
    let mut page = va;
    while page < end {
        let ok = if write { crate::guard::probe_write(page) } else { crate::guard::probe_read(page) };
        if !ok {
            return Err(Errno::EFAULT);
        }
        page += ps;
    }
    Ok(())
}

#[inline(never)]
fn check_user_range_slow(va: u64, end: u64, write: bool) -> Result<(), Errno> {
    let npages = (end - va) >> page_shift();
    let probe = npages <= PROBE_PAGES && crate::guard::available();
    if let Some(p) = user::current_process() {
        if !p.alive() {
            return Err(Errno::EFAULT);
        }
        vma::check_same_shared(&vma::of_process(p.pid())?, &vma::current()?, va, end, write)?;
        if !probe {
            return Ok(());
        }
        // Then fault our own pages in, as a local pin does (they are
        // shared: a write probe unshares nothing).
    } else if !probe {
        return vma::check(&vma::current()?, va, end, write).map(|_| ());
    }
    probe_range(va, end, write, page())
}

/// Drop one pin from each of `npages` frames starting at `pfn`. Frames whose
/// last pin goes are released (or kept for a re-pin, in the hot table). Unknown
/// frames are ignored (a bug upstream must not become a crash here).
pub fn unpin(pfn: u64, npages: u64) {
    if npages == 0 {
        return;
    }
    // A device request that translated to these frames before their
    // mapping went away may still be copying: let it finish before a frame
    // can be released (and its PFN reused). Lock-free copies through a
    // thread's cached run are waited for or see the change (see `Change`).
    let _change = Change::begin(false);
    unpin_locked(pfn, npages);
}

/// [`unpin`] of frames [`pin_user`] returned for the `npages` pages at
/// `va` (where the caller knows it: it finds a run kept hot without the
/// registry's lock).
#[inline(always)]
pub fn unpin_user(va: u64, pfn: u64, npages: u64) {
    if npages == 0 {
        return;
    }
    // As in `unpin`: the run's PFNs are not reused before it is released,
    // but a request older than this unpin must not outlive a later
    // release that no grace period precedes. (Device copies of a hot run
    // take the registry's lock: the table's unpin needs no `Change`.) A
    // pin the table does not hold now is the registry's (it cannot move
    // into the table while we hold it), and so is one the registry takes
    // from the table meanwhile (the swap fails): `unpin` then, with its
    // own grace period.
    if let Some(pinned) = HOT.pinned(va, pfn, npages) {
        crate::dma_fence::synchronize();
        if HOT.unpin_seen(&pinned) {
            return;
        }
    }
    unpin(pfn, npages);
}

#[inline(never)]
fn unpin_locked(pfn: u64, npages: u64) {
    let mut guard = write();
    let reg = &mut *guard;
    let end = pfn.saturating_add(npages);
    let mut cur = pfn;
    while cur < end {
        let Some((start, mut run)) = reg.run_of_pfn(cur) else {
            // Skip to the next run.
            match reg.by_pfn.next(cur) {
                Some((s, _)) if s < end => {
                    cur = s;
                    continue;
                }
                _ => break,
            }
        };
        let run_end = start + run.npages;
        // A hot run pinned (through the table or not) becomes an ordinary
        // run with its one pin; a cached one, hot or not, is not pinned,
        // as unknown as a released frame.
        if run.hot != 0 {
            if !reg.detach_if_pinned(start) {
                cur = run_end;
                continue;
            }
            (run.hot, run.pins) = (0, 1);
        }
        if run.pins == 0 {
            cur = run_end;
            continue;
        }
        // The usual case: a whole run.
        if cur == start && run_end <= end {
            if run.pins == 1 {
                reg.unpinned(start, run);
            } else {
                reg.run_mut(start).pins -= 1;
                reg.merge_around(start);
            }
            cur = run_end;
            continue;
        }
        let n = end.min(run_end) - cur;
        if cur != start {
            reg.split(start, cur);
        }
        if cur + n != run_end {
            reg.split(cur, cur + n);
        }
        let r = reg.run_mut(cur);
        r.pins -= 1;
        if r.pins == 0 {
            let r = *r;
            reg.unpinned(cur, r);
        } else {
            reg.merge_around(cur);
        }
        cur += n;
    }
}

/// Register `npages` pages of an engine mapping, from page-aligned `host`,
/// as new frames pinned once each (a [`crate::filemap`] pinning a file's
/// pages). The caller owns the mapping, keeps it mapped while any of these
/// frames is pinned, registers each of its pages at most once at a time,
/// and calls [`forget_mapped`] before unmapping it.
pub fn pin_mapped(host: u64, npages: u64) -> Result<PinnedRun, Errno> {
    if !host.is_multiple_of(page()) || npages == 0 {
        return Err(Errno::EINVAL);
    }
    npages.checked_mul(page()).and_then(|len| host.checked_add(len)).ok_or(Errno::EINVAL)?;
    let mut reg = write();
    // As for the program's pages: released runs kept for reuse give way.
    let pfn = reg.alloc_pfns_or_drop_cache(host, npages)?;
    reg.insert(pfn, Run { host, npages, pins: 1, in_place: false, mapped: true, hot: 0 });
    Ok(PinnedRun { va: host, pfn, npages })
}

/// The engine mapping `[host, host + len)` is going away: drop every mapped
/// frame inside it, pinned or not, so no device access can reach it again.
pub fn forget_mapped(host: u64, len: u64) {
    // As in `unpin`: in-flight requests finish before the owner unmaps,
    // and device translation caches let go of the mapping first.
    let _change = Change::begin(true);
    let end = host.saturating_add(len);
    let mut reg = write();
    let gone: Vec<u64> =
        reg.by_pfn.iter().filter(|(_, r)| r.mapped && r.host >= host && r.host < end).map(|(p, _)| p).collect();
    for pfn in gone {
        reg.release(pfn);
    }
}

/// How many times the page at virtual address `va` is pinned (0 if it is
/// not a frame in place).
pub fn pin_count(va: u64) -> u32 {
    let va = va & !(page() - 1);
    let reg = read();
    reg.in_place_at(va).map_or(0, |(_, run)| reg.pins(&run))
}

/// The PFN of the pinned page at virtual address `va`, if it is one.
pub fn pfn_at(va: u64) -> Option<u64> {
    let va = va & !(page() - 1);
    let (pfn, run) = read().pinned_at(va)?;
    Some(pfn + (va - run.host) / page())
}

/// The PFN of the frame at engine address `host` of an engine mapping
/// ([`pin_mapped`]: a file page behind `IOMMU_IOAS_MAP_FILE`), if it is one.
/// A scan of the runs: for checks, not hot paths.
pub fn mapped_pfn_at(host: u64) -> Option<u64> {
    let host = host & !(page() - 1);
    let reg = read();
    reg.by_pfn
        .iter()
        .find(|(_, r)| r.mapped && r.host <= host && host < r.host_end())
        .map(|(pfn, r)| pfn + (host - r.host) / page())
}

/// How many times the frame at engine address `host` of an engine mapping
/// is pinned (0 if it is not a frame). A scan, like [`mapped_pfn_at`].
pub fn mapped_pin_count(host: u64) -> u32 {
    let host = host & !(page() - 1);
    let reg = read();
    reg.by_pfn.iter().find(|(_, r)| r.mapped && r.host <= host && host < r.host_end()).map_or(0, |(_, r)| r.pins)
}

/// Number of frames currently pinned (all runs, all pages).
pub fn pinned_pages() -> u64 {
    let reg = read();
    reg.by_pfn.iter().filter(|(_, r)| reg.pins(r) != 0).map(|(_, r)| r.npages).sum()
}

/// Sum of pin counts over all frames (what a leak check compares to zero).
pub fn total_pins() -> u64 {
    let reg = read();
    reg.by_pfn.iter().map(|(_, r)| r.npages * u64::from(reg.pins(r))).sum()
}

/// Bytes of index storage the registry holds (for memory accounting).
pub fn index_bytes() -> usize {
    let reg = read();
    reg.by_pfn.capacity_bytes() + reg.by_va.capacity_bytes()
}

/// The steady state of a device copy of `len` bytes: both ends' host
/// addresses from `ends` (this thread's cached runs, [`cached_host`] with
/// `lock_free`), copied with the guarded copy, without the registry's lock,
/// inside a DMA-fence leaf section begun before `ends` looks (see
/// [`Change`]). `None` when a cached run does not hold its range or the
/// guarded copy is not in use: the caller then takes the lock.
#[inline(always)]
fn lock_free_copy(len: usize, ends: impl FnOnce() -> Option<(u64, u64)>) -> Option<Result<(), Errno>> {
    let leaf = leaf()?;
    let (dst, src) = ends()?;
    // Not through `guarded_copy`: its mapping costs the hot path four
    // instructions a copy (callgrind).
    let ok = crate::guard::try_copy_user(dst, src, len)?;
    drop(leaf);
    Some(if ok { Ok(()) } else { Err(Errno::EFAULT) })
}

/// A guarded copy between host addresses, when guarded copies are in use
/// (`None`: they are not); a fault is `EFAULT`.
#[inline(always)]
fn guarded_copy(dst: u64, src: u64, len: usize) -> Option<Result<(), Errno>> {
    crate::guard::try_copy_user(dst, src, len).map(|ok| if ok { Ok(()) } else { Err(Errno::EFAULT) })
}

/// A DMA-fence leaf section for a lock-free copy (no locked instruction
/// inside another section or a hold).
#[inline(always)]
fn leaf() -> Option<crate::dma_fence::Leaf> {
    match crate::dma_fence::enter_leaf() {
        Some(leaf) => Some(leaf),
        None => first_leaf(),
    }
}

/// [`leaf`] on a thread that never entered a section: a section takes the
/// thread's slot first.
#[cold]
#[inline(never)]
fn first_leaf() -> Option<crate::dma_fence::Leaf> {
    drop(crate::dma_fence::enter());
    crate::dma_fence::enter_leaf()
}

/// Copy from emulated physical memory at `paddr` into `buf`.
pub fn read_phys(paddr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let (dst, len) = (buf.as_mut_ptr() as u64, buf.len());
    if let Some(res) = lock_free_copy(len, || Some((dst, cached_host(Side::Src, paddr, len as u64, true)?.0))) {
        return res;
    }
    read_phys_locked(paddr, buf)
}

/// [`read_phys`] under the registry's read lock.
#[inline(never)]
fn read_phys_locked(paddr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let reg = read();
    // The whole range in this thread's cached run (a hot one), guarded
    // copies in use.
    if let Some((host, _)) = cached_host(Side::Src, paddr, buf.len() as u64, false) {
        if let Some(res) = guarded_copy(buf.as_mut_ptr() as u64, host, buf.len()) {
            return res;
        }
    }
    phys_io(&reg, Side::Src, paddr, buf.len(), |host, guarded, off, n| {
        let dst = &mut buf[off..off + n];
        // Relocated frames too where the guarded copy is installed: it
        // never faults on them, and unlike glibc's `memcpy` (`rep movsb`)
        // it keeps its speed when the two ends differ modulo 32
        // (docs/BENCHMARKS.md, "Seventh DMA round").
        if guarded || crate::guard::available() {
            user::copy_from_own(dst, host)
        } else {
            // SAFETY: `host` lies in arena memory owned by a live relocated
            // run; the registry read lock held by our caller keeps it
            // mapped and nothing else holds a Rust reference into it.
            unsafe { std::ptr::copy_nonoverlapping(host as *const u8, dst.as_mut_ptr(), n) };
            Ok(())
        }
    })
}

/// Copy `data` into emulated physical memory at `paddr`.
pub fn write_phys(paddr: u64, data: &[u8]) -> Result<(), Errno> {
    let (src, len) = (data.as_ptr() as u64, data.len());
    // As in read_phys.
    if let Some(res) = lock_free_copy(len, || Some((cached_host(Side::Dst, paddr, len as u64, true)?.0, src))) {
        return res;
    }
    write_phys_locked(paddr, data)
}

/// [`write_phys`] under the registry's read lock.
#[inline(never)]
fn write_phys_locked(paddr: u64, data: &[u8]) -> Result<(), Errno> {
    let reg = read();
    // As in read_phys.
    if let Some((host, _)) = cached_host(Side::Dst, paddr, data.len() as u64, false) {
        if let Some(res) = guarded_copy(host, data.as_ptr() as u64, data.len()) {
            return res;
        }
    }
    phys_io(&reg, Side::Dst, paddr, data.len(), |host, guarded, off, n| {
        let src = &data[off..off + n];
        // As in read_phys.
        if guarded || crate::guard::available() {
            user::copy_to_own(host, src)
        } else {
            // SAFETY: as in read_phys: arena memory of a live run, kept
            // mapped by the read lock.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), host as *mut u8, n) };
            Ok(())
        }
    })
}

/// Copy `len` bytes of emulated physical memory from `src` to `dst`
/// without a bounce buffer (what a DMA engine's copy does). The ranges must
/// not overlap. `EFAULT` if either end is not backed by a frame.
pub fn copy_phys(dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    // Each end whole in this thread's cached run of its side.
    let ends = || {
        let d = cached_host(Side::Dst, dst, len as u64, true)?.0;
        Some((d, cached_host(Side::Src, src, len as u64, true)?.0))
    };
    if let Some(res) = lock_free_copy(len, ends) {
        return res;
    }
    copy_phys_locked(dst, src, len)
}

/// [`copy_phys`] under the registry's read lock.
#[inline(never)]
fn copy_phys_locked(dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    let reg = read();
    if let (Some((d, _)), Some((s, _))) =
        (cached_host(Side::Dst, dst, len as u64, false), cached_host(Side::Src, src, len as u64, false))
    {
        if let Some(res) = guarded_copy(d, s, len) {
            return res;
        }
    }
    copy_phys_runs(&reg, dst, src, len)
}

/// [`copy_phys`] run by run.
#[inline(never)]
fn copy_phys_runs(reg: &Registry, dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    let shift = page_shift();
    let host_of = |side: Side, pa: u64| -> Result<(u64, u64), Errno> {
        let run = host_run(reg, side, pa >> shift).ok_or(Errno::EFAULT)?;
        let off = pa - (run.pfn << shift);
        Ok((run.host + off, (run.npages << shift) - off))
    };
    let mut done = 0usize;
    while done < len {
        let (d, davail) = host_of(Side::Dst, dst.checked_add(done as u64).ok_or(Errno::EFAULT)?)?;
        let (s, savail) = host_of(Side::Src, src.checked_add(done as u64).ok_or(Errno::EFAULT)?)?;
        let n = ((len - done) as u64).min(davail).min(savail) as usize;
        // Every kind of frame goes through the fault-safe copy: arena
        // frames never fault, and the copy costs the same.
        user::copy_own_to_own(d, s, n)?;
        done += n;
    }
    Ok(())
}

/// The host address of emulated physical address `paddr` and the bytes
/// from there to the end of its run (host-contiguous), for a device
/// translation cache to keep ([`crate::atc`]); `None` when no frame backs it
/// or a relocation is in progress (then nothing may be cached). Called
/// inside the DMA-fence section of the request that translated `paddr`.
pub fn atc_host(paddr: u64) -> Option<(u64, u64)> {
    let shift = page_shift();
    let reg = read();
    let run = host_run(&reg, Side::Dst, paddr >> shift)?;
    // Under the read lock: a relocation has either finished with the
    // registry or still blocks fills.
    if !crate::atc::fills_allowed() {
        return None;
    }
    let off = paddr - (run.pfn << shift);
    Some((run.host + off, (run.npages << shift) - off))
}

/// The program's own page that holds physical address `paddr`, when its
/// frame is pinned in place (`None` for relocated or file frames, which the
/// program cannot reach at that address).
pub fn program_page(paddr: u64) -> Option<u64> {
    let shift = page_shift();
    let reg = read();
    let (start, run) = reg.run_of_pfn(paddr >> shift)?;
    (run.in_place && reg.pins(&run) != 0).then(|| run.host + (((paddr >> shift) - start) << shift))
}

/// [`read_phys`] or [`write_phys`] run by run, under the read lock `reg`:
/// `f(host, guarded, offset, bytes)` for each piece.
#[inline(never)]
fn phys_io(
    reg: &Registry,
    side: Side,
    paddr: u64,
    len: usize,
    mut f: impl FnMut(u64, bool, usize, usize) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let shift = page_shift();
    let mut done = 0usize;
    while done < len {
        let pa = paddr.checked_add(done as u64).ok_or(Errno::EFAULT)?;
        let run = host_run(reg, side, pa >> shift).ok_or(Errno::EFAULT)?;
        let off_in_run = pa - (run.pfn << shift);
        let avail = (run.npages << shift) - off_in_run;
        let n = (len - done).min(avail as usize);
        // Only relocated frames are known to stay mapped; the others go
        // through the fault-safe copies.
        f(run.host + off_in_run, run.guarded, done, n)?;
        done += n;
    }
    Ok(())
}

/// Address space the engine owns for relocated frames: reserved once as
/// `PROT_NONE`, handed out by a bump pointer; released blocks go back to
/// `PROT_NONE` placeholders (the address space itself is not reused).
#[derive(Default)]
struct Arena {
    base: u64,
    next: u64,
}

impl Arena {
    fn reserve(&mut self) -> Result<(), Errno> {
        if self.base != 0 {
            return Ok(());
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh reservation at a kernel-chosen address.
        let base = unsafe { mm::mmap(0, ARENA_SIZE, libc::PROT_NONE, flags, -1, 0)? };
        self.base = base;
        self.next = base;
        Ok(())
    }

    /// A block of `len` bytes whose address is congruent to `like` modulo
    /// `align` (so huge pages keep their alignment).
    fn alloc(&mut self, len: u64, like: u64, align: u64) -> Result<u64, Errno> {
        self.reserve()?;
        let mut addr = (self.next & !(align - 1)) | (like & (align - 1));
        if addr < self.next {
            addr += align;
        }
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        if end > self.base + ARENA_SIZE {
            return Err(Errno::ENOMEM);
        }
        self.next = end;
        Ok(addr)
    }

    fn release(&mut self, addr: u64, len: u64) {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
        // SAFETY: `[addr, addr + len)` is arena memory of frames whose last
        // pin just went; replacing it with a placeholder frees the pages.
        let _ = unsafe { mm::mmap(addr, len, libc::PROT_NONE, flags, -1, 0) };
    }
}

/// Move every pinned page of `[va, va + len)` out of the program's way.
/// Returns the relocated ranges as `(old_va, new_host, len)`.
fn relocate(reg: &mut Registry, va: u64, len: u64) -> Result<Vec<(u64, u64, u64)>, Errno> {
    let end = va.saturating_add(len);
    let mut moved = Vec::new();
    // Cached runs are nobody's frames: they go rather than move.
    reg.drop_cached_in(va, end);
    // Collect affected in-place runs first: the loop below re-indexes them.
    let mut pieces = Vec::new();
    let first = reg.by_va.prev(va).map_or(va, |(v, _)| v);
    for (v, &pfn) in reg.by_va.range(first, end - 1) {
        let run = reg.by_pfn.get(pfn).expect("indexed run");
        let s = v.max(va);
        let e = run.host_end().min(end);
        if s < e {
            pieces.push((pfn, s, e));
        }
    }
    if pieces.is_empty() {
        return Ok(moved);
    }
    let maps = vma::current().unwrap_or_default();
    for (pfn, s, e) in pieces {
        // Isolate the affected part of the run.
        let run_host = reg.by_pfn.get(pfn).expect("indexed run").host;
        let p_first = pfn + (s - run_host) / page();
        let p_end = pfn + (e - run_host) / page();
        reg.cut_at(p_first);
        reg.cut_at(p_end);
        let align = if maps.iter().any(|m| m.start <= s && s < m.end && m.hugetlb) { 1 << 30 } else { 1 << 21 };
        let dst = reg.arena.alloc(e - s, s, align)?;
        // SAFETY: `[s, e)` holds pinned pages of the program that it is
        // about to unmap or discard; `dst` is an arena block we own. mremap
        // moves the pages (and their contents) without copying; with
        // DONTUNMAP the program's range stays mapped until its own call, so
        // no other thread's mmap can land in a hole there meanwhile (and
        // then lose its mapping to the program's munmap). Kernels that
        // cannot keep this mapping get the plain move.
        unsafe {
            if mm::mremap_fixed_keep(s, e - s, dst).is_err() {
                mm::mremap_fixed(s, e - s, e - s, dst)?;
            }
        }
        // Devices may write what they could write before; the program may
        // have left the pages read-only or inaccessible.
        // SAFETY: `dst` is ours now.
        if unsafe { mm::mprotect(dst, e - s, libc::PROT_READ | libc::PROT_WRITE) }.is_err() {
            // SAFETY: as above.
            let _ = unsafe { mm::mprotect(dst, e - s, libc::PROT_READ) };
        }
        let mut run = reg.remove(p_first);
        invalidate();
        run.host = dst;
        run.in_place = false;
        reg.insert(p_first, run);
        moved.push((s, dst, e - s));
    }
    Ok(moved)
}

fn fast_path_clear() -> bool {
    IN_PLACE_PAGES.load(Ordering::Relaxed) == 0
}

/// The program is about to `munmap(va, len)`: keep pinned pages alive.
pub fn before_munmap(va: u64, len: u64) {
    // munmap's own checks first (unaligned, empty or wrapping: EINVAL): a
    // call that will fail must not move anything.
    if fast_path_clear() || !valid_range(va, len) {
        return;
    }
    let _gate = crate::forkgate::enter();
    let (_change, mut reg) = write_for_hook(va, len);
    let _ = relocate(&mut reg, va, len);
}

/// The registry's write lock for a hook about to move or drop the runs in
/// `[va, va + len)`, with the cached runs there released and the hot ones
/// taken out of the table (so nothing there is pinned or unpinned without
/// the lock any more), and, when pinned runs are there, a [`Change`] with
/// a [`crate::atc::Relocation`] begun first: device translation caches and
/// lock-free device copies must let go of frames before they move. The
/// change waits for DMA in flight, so it is begun outside the lock; finding
/// pinned runs without one (a pin, through the hot table or not, won the
/// race with this hook), the hook lets the lock go, begins it and starts
/// again. (Cached runs, which it drops, are no lock-free copy's: see
/// [`cached_host`].)
fn write_for_hook(va: u64, len: u64) -> (Option<Change>, RwLockWriteGuard<'static, Registry>) {
    let end = va.saturating_add(len);
    let mut change = None;
    loop {
        let mut reg = write();
        reg.drop_cached_in(va, end);
        let pinned = reg.in_place_in(va, end).iter().any(|pfn| reg.by_pfn.get(*pfn).is_some_and(|r| r.pins != 0));
        if change.is_some() || !pinned {
            return (change, reg);
        }
        drop(reg);
        change = Some(Change::begin(true));
    }
}

/// The program is about to `madvise(va, len, MADV_DONTNEED)` (or another
/// advice that discards contents). Private pinned pages keep their contents
/// for devices while the program gets fresh zero pages, as with the kernel's
/// pins; shared mappings keep their pages in both views and need nothing.
pub fn before_madvise_dontneed(va: u64, len: u64) {
    if fast_path_clear() || !valid_range(va, len) {
        return;
    }
    let _gate = crate::forkgate::enter();
    let (_change, mut reg) = write_for_hook(va, len);
    let Ok(maps) = vma::current() else { return };
    let end = va.saturating_add(len);
    let private: Vec<vma::Vma> = maps.into_iter().filter(|m| !m.shared && m.start < end && va < m.end).collect();
    for m in private {
        let s = m.start.max(va);
        let e = m.end.min(end);
        let Ok(moved) = relocate(&mut reg, s, e - s) else { continue };
        for (old, _, n) in moved {
            let prot = (if m.read { libc::PROT_READ } else { 0 }) | (if m.write { libc::PROT_WRITE } else { 0 });
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
            // SAFETY: `[old, old + n)` was the program's own private mapping
            // whose pages we just moved away; refilling it with zero pages is
            // what MADV_DONTNEED gives the program.
            let _ = unsafe { mm::mmap(old, n, prot, flags, -1, 0) };
        }
    }
}

/// The range checks munmap and madvise make before anything else: a
/// page-aligned start, and a length that page-aligns to a range that does
/// not wrap (an empty one, which madvise accepts, touches nothing).
fn valid_range(va: u64, len: u64) -> bool {
    let ps = page();
    let aligned = len.wrapping_add(ps - 1) & !(ps - 1);
    va.is_multiple_of(ps) && len != 0 && aligned != 0 && va.checked_add(aligned).is_some()
}

/// Wrap the program's `mremap(old, old_len, new_len, ...)`, performed by
/// `real` (which returns the new address or an error). Pinned pages beyond
/// `new_len` are relocated first (they are about to be unmapped); pinned
/// pages that move with the mapping keep their frames at the new address.
pub fn around_mremap(
    old: u64,
    old_len: u64,
    new_len: u64,
    real: impl FnOnce() -> Result<u64, Errno>,
) -> Result<u64, Errno> {
    if fast_path_clear() {
        return real();
    }
    let _gate = crate::forkgate::enter();
    let ps = page();
    // PAGE_ALIGN as the kernel computes it: a length within a page of the
    // top wraps to 0 (which mremap then refuses, or for old_len takes as
    // "duplicate").
    let old_len = old_len.wrapping_add(ps - 1) & !(ps - 1);
    let new_len = new_len.wrapping_add(ps - 1) & !(ps - 1);
    // A range past the top of the address space is no mapping: mremap
    // refuses it, and nothing of ours can be in it.
    let (Some(_), Some(_)) = (old.checked_add(old_len), old.checked_add(new_len)) else {
        return real();
    };
    // Pinned pages in the old range may move (the tail relocated, the rest
    // following the mapping); cached runs there are dropped, not moved.
    let (_change, mut reg) = write_for_hook(old, old_len.max(new_len));
    let mut tail = Vec::new();
    if new_len < old_len {
        tail = relocate(&mut reg, old + new_len, old_len - new_len).unwrap_or_default();
    }
    let res = real();
    match res {
        Ok(new) if new != old => {
            let keep = old_len.min(new_len);
            // Runs reaching over either edge are cut there first: only the
            // pages that moved change their host.
            for edge in [old, old + keep] {
                if let Some((pfn, run)) = reg.in_place_at(edge) {
                    reg.cut_at(pfn + (edge - run.host) / ps);
                }
            }
            let firsts: Vec<(u64, u64)> = if keep == 0 {
                Vec::new()
            } else {
                reg.by_va.range(old, old + keep - 1).map(|(v, &p)| (v, p)).collect()
            };
            if !firsts.is_empty() {
                invalidate();
            }
            for (v, pfn) in firsts {
                let mut run = reg.remove(pfn);
                run.host = v - old + new;
                reg.insert(pfn, run);
            }
        }
        Ok(_) => {}
        Err(_) => {
            // Put the tail back where the program still expects it.
            for (orig, host, n) in tail {
                // SAFETY: moving our arena block back into the hole it came
                // from, which the failed mremap left untouched.
                if unsafe { mm::mremap_fixed(host, n, n, orig) }.is_ok() {
                    let pfns: Vec<u64> = reg
                        .by_pfn
                        .iter()
                        .filter(|(_, r)| !r.in_place && !r.mapped && r.host >= host && r.host < host + n)
                        .map(|(p, _)| p)
                        .collect();
                    invalidate();
                    for pfn in pfns {
                        let mut run = reg.remove(pfn);
                        run.host = run.host - host + orig;
                        run.in_place = true;
                        reg.insert(pfn, run);
                    }
                }
            }
        }
    }
    res
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tests share the process-wide registry: serialize them.
    pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    struct Map(u64, u64);

    impl Map {
        fn new(pages: u64, flags: i32) -> Map {
            let len = pages * page();
            // SAFETY: a fresh anonymous mapping.
            let p = unsafe { mm::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, flags | libc::MAP_ANONYMOUS, -1, 0) }
                .unwrap();
            Map(p, len)
        }
        fn set(&self, off: u64, b: u8) {
            user::copy_to_user(self.0 + off, &[b]).unwrap();
        }
        fn get(&self, off: u64) -> Result<u8, Errno> {
            let mut b = [0u8];
            user::copy_from_user(&mut b, self.0 + off).map(|_| b[0])
        }
    }

    fn phys(run: &PinnedRun, page_idx: u64) -> u64 {
        (run.pfn + page_idx) << page_shift()
    }

    #[test]
    fn pin_twice_same_frame_and_counts() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(4, libc::MAP_PRIVATE);
        let a = pin_user(m.0, 4, true).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(pin_count(m.0), 1);
        let b = pin_user(m.0 + page(), 2, false).unwrap();
        assert_eq!(b, vec![PinnedRun { va: m.0 + page(), pfn: a[0].pfn + 1, npages: 2 }]);
        assert_eq!(pin_count(m.0 + page()), 2);
        assert_eq!(pfn_at(m.0 + 2 * page() + 7), Some(a[0].pfn + 2));
        unpin(b[0].pfn, 2);
        assert_eq!(pin_count(m.0 + page()), 1);
        unpin(a[0].pfn, 4);
        assert_eq!(pin_count(m.0), 0);
        assert_eq!(pfn_at(m.0), None);
    }

    /// Runs have one count: pinning part of one splits it, and the pieces
    /// merge again when the counts agree; PFNs never move.
    #[test]
    fn partial_pins_split_and_merge_runs() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(8, libc::MAP_PRIVATE);
        let runs_here = || {
            let reg = read();
            reg.by_pfn.iter().filter(|(_, r)| reg.pins(r) != 0 && r.host >= m.0 && r.host < m.0 + m.1).count()
        };
        let a = pin_user(m.0, 8, true).unwrap();
        assert_eq!(a.len(), 1);
        let b = pin_user(m.0 + 2 * page(), 3, false).unwrap();
        assert_eq!(b, vec![PinnedRun { va: m.0 + 2 * page(), pfn: a[0].pfn + 2, npages: 3 }]);
        assert_eq!(runs_here(), 3);
        let counts: Vec<u32> = (0..8).map(|i| pin_count(m.0 + i * page())).collect();
        assert_eq!(counts, [1, 1, 2, 2, 2, 1, 1, 1]);
        // Pinning the rest too makes every count 2: one run again.
        let c = pin_user(m.0, 2, false).unwrap();
        let d = pin_user(m.0 + 5 * page(), 3, false).unwrap();
        assert_eq!(runs_here(), 1);
        for r in [&b[0], &c[0], &d[0]] {
            unpin(r.pfn, r.npages);
        }
        assert_eq!(runs_here(), 1);
        assert_eq!(pin_count(m.0 + 4 * page()), 1);
        // Releasing part of it keeps the other frames where they were.
        unpin(a[0].pfn, 3);
        assert_eq!(pfn_at(m.0 + 3 * page()), Some(a[0].pfn + 3));
        assert_eq!(pin_count(m.0 + 2 * page()), 0);
        unpin(a[0].pfn + 3, 5);
        assert_eq!(runs_here(), 0);
    }

    #[test]
    fn efault_pins_nothing() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(4, libc::MAP_PRIVATE);
        // SAFETY: unmapping the second half of our own mapping.
        unsafe { libc::munmap((m.0 + 2 * page()) as *mut _, (2 * page()) as usize) };
        let before = total_pins();
        assert_eq!(pin_user(m.0, 4, false), Err(Errno::EFAULT));
        assert_eq!(total_pins(), before);
        // A read-only mapping cannot be pinned for writing.
        // SAFETY: changing protection of our own mapping.
        unsafe { libc::mprotect(m.0 as *mut _, page() as usize, libc::PROT_READ) };
        assert_eq!(pin_user(m.0, 1, true), Err(Errno::EFAULT));
        let r = pin_user(m.0, 1, false).unwrap();
        unpin(r[0].pfn, 1);
    }

    #[test]
    fn device_io_reaches_program_memory() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(2, libc::MAP_PRIVATE);
        let r = pin_user(m.0, 2, true).unwrap();
        write_phys(phys(&r[0], 0) + page() - 2, b"abcd").unwrap();
        assert_eq!(m.get(page() - 2).unwrap(), b'a');
        assert_eq!(m.get(page() + 1).unwrap(), b'd');
        m.set(5, 0x5a);
        let mut b = [0u8; 1];
        read_phys(phys(&r[0], 0) + 5, &mut b).unwrap();
        assert_eq!(b[0], 0x5a);
        // Beyond the run: not a frame.
        assert_eq!(read_phys(phys(&r[0], 2), &mut b), Err(Errno::EFAULT));
        unpin(r[0].pfn, 2);
        assert_eq!(read_phys(phys(&r[0], 0), &mut b), Err(Errno::EFAULT));
    }

    #[test]
    fn pinned_pages_survive_munmap() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(3, libc::MAP_PRIVATE);
        m.set(page() + 3, 42);
        let r = pin_user(m.0 + page(), 1, true).unwrap();
        before_munmap(m.0, m.1);
        // Until the program's own munmap its range stays mapped: no hole
        // another thread's mmap could land in (and then lose to that
        // munmap). A kernel without MREMAP_DONTUNMAP for this mapping
        // leaves one; this machine's has it.
        for at in [m.0, m.0 + page()] {
            // SAFETY: NOREPLACE never replaces a mapping; a success maps
            // one page of our own, unmapped again below.
            let probe = unsafe {
                libc::mmap(
                    at as *mut _,
                    page() as usize,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            assert_eq!(probe, libc::MAP_FAILED, "a hole at {at:#x} before the program's munmap");
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST));
        }
        // SAFETY: unmapping our own mapping (after the hook, as the shim does).
        assert_eq!(unsafe { libc::munmap(m.0 as *mut _, m.1 as usize) }, 0);
        assert_eq!(m.get(page() + 3), Err(Errno::EFAULT), "program no longer sees it");
        let mut b = [0u8; 1];
        read_phys(phys(&r[0], 0) + 3, &mut b).unwrap();
        assert_eq!(b[0], 42, "device still sees the old contents");
        write_phys(phys(&r[0], 0), &[7]).unwrap();
        // New memory at the same address is not the pinned frame.
        // SAFETY: mapping fresh memory where ours was.
        let again = unsafe {
            mm::mmap(
                m.0,
                m.1,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        }
        .unwrap();
        assert_eq!(again, m.0);
        assert_eq!(m.get(page()).unwrap(), 0);
        assert_eq!(pin_count(m.0 + page()), 0);
        unpin(r[0].pfn, 1);
        assert_eq!(read_phys(phys(&r[0], 0), &mut b), Err(Errno::EFAULT));
    }

    /// Lengths the program controls, past the top of the address space:
    /// the hooks neither overflow (a panic under overflow checks) nor move
    /// pinned pages for a call the kernel refuses (EINVAL).
    #[test]
    fn hooks_take_any_length() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(2, libc::MAP_PRIVATE);
        m.set(3, 9);
        let r = pin_user(m.0, 1, true).unwrap();
        for len in [u64::MAX, u64::MAX - page() + 2, u64::MAX - m.0 + 1] {
            before_munmap(m.0, len);
            before_madvise_dontneed(m.0, len);
            let res = around_mremap(m.0, len, page(), || Err(Errno::EINVAL));
            assert_eq!(res, Err(Errno::EINVAL));
            let res = around_mremap(m.0, page(), len, || Err(Errno::EINVAL));
            assert_eq!(res, Err(Errno::EINVAL));
            assert_eq!(m.get(3), Ok(9), "the program still has its page");
            assert_eq!(pin_count(m.0), 1, "and it is still the pinned one");
        }
        // Unaligned: munmap refuses it too.
        before_munmap(m.0 + 1, page());
        assert_eq!(pin_count(m.0), 1);
        unpin(r[0].pfn, 1);
    }

    #[test]
    fn shared_pages_stay_shared_after_munmap() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        // Two views of one shared object: pin through the first, unmap it,
        // and the device's writes still show through the second.
        let fd = {
            // SAFETY: memfd_create with a NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"frames-test".as_ptr(), 0) };
            assert!(fd >= 0);
            // SAFETY: sizing our own memfd.
            assert_eq!(unsafe { libc::ftruncate(fd, page() as i64) }, 0);
            fd
        };
        let map = |flags| {
            // SAFETY: mapping our memfd.
            unsafe { mm::mmap(0, page(), libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | flags, fd, 0) }.unwrap()
        };
        let a = map(0);
        let b = map(0);
        let r = pin_user(a, 1, true).unwrap();
        before_munmap(a, page());
        // SAFETY: unmapping our own view.
        unsafe { libc::munmap(a as *mut _, page() as usize) };
        write_phys(phys(&r[0], 0), b"z").unwrap();
        let mut got = [0u8];
        user::copy_from_user(&mut got, b).unwrap();
        assert_eq!(&got, b"z");
        unpin(r[0].pfn, 1);
        // SAFETY: closing our memfd and unmapping the second view.
        unsafe {
            libc::munmap(b as *mut _, page() as usize);
            libc::close(fd);
        }
    }

    #[test]
    fn dontneed_gives_program_zeroes_and_device_the_old_page() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(1, libc::MAP_PRIVATE);
        m.set(0, 9);
        let r = pin_user(m.0, 1, true).unwrap();
        before_madvise_dontneed(m.0, m.1);
        // SAFETY: advising our own mapping.
        unsafe { libc::madvise(m.0 as *mut _, m.1 as usize, libc::MADV_DONTNEED) };
        assert_eq!(m.get(0).unwrap(), 0);
        let mut b = [0u8];
        read_phys(phys(&r[0], 0), &mut b).unwrap();
        assert_eq!(b[0], 9);
        unpin(r[0].pfn, 1);
    }

    #[test]
    fn mremap_move_takes_frames_along() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(2, libc::MAP_PRIVATE);
        let r = pin_user(m.0, 2, true).unwrap();
        let new = around_mremap(m.0, m.1, page(), || {
            // SAFETY: shrinking and moving our own mapping.
            let p = unsafe { libc::mremap(m.0 as *mut _, m.1 as usize, page() as usize, libc::MREMAP_MAYMOVE) };
            if p == libc::MAP_FAILED {
                Err(Errno::ENOMEM)
            } else {
                Ok(p as u64)
            }
        })
        .unwrap();
        // First page is at `new` (moved or not), still the same frame.
        assert_eq!(pfn_at(new), Some(r[0].pfn));
        write_phys(phys(&r[0], 0), &[3]).unwrap();
        let mut b = [0u8];
        user::copy_from_user(&mut b, new).unwrap();
        assert_eq!(b[0], 3);
        // The cut-off second page is relocated but alive.
        write_phys(phys(&r[0], 1), &[4]).unwrap();
        unpin(r[0].pfn, 2);
    }

    #[test]
    fn released_pfn_space_is_reused_when_the_bump_runs_out() {
        // A private registry whose bump pointer is at the very end.
        let run = |n: u64| Run { host: 0, npages: n, pins: 1, in_place: false, mapped: true, hot: 0 };
        let limit = PHYS_ADDR_LIMIT >> page_shift();
        let mut r = private_registry(limit - 2);
        r.insert(FIRST_PFN, run(3));
        r.insert(FIRST_PFN + 8, run(8));
        // One page: the bump still has room.
        assert_eq!(r.alloc_pfns(0x5000, 1), Ok(limit - 2));
        // Four pages congruent to VPN 4 mod 4: the gap at FIRST_PFN+4..+8.
        assert_eq!(r.alloc_pfns(0x4000, 4), Ok(FIRST_PFN + 4));
        // Two pages with residue 1 mod 2 (alloc_pfns does not insert, so
        // the gap still starts at FIRST_PFN+3).
        assert_eq!(r.alloc_pfns(0x3000, 2), Ok(FIRST_PFN + 3));
        // Too big for any gap and for the bump: ENOMEM.
        assert_eq!(r.alloc_pfns(0, limit), Err(Errno::ENOMEM));
    }

    /// A registry of the tests' own, with a hot table of its own.
    fn private_registry(next_pfn: u64) -> Registry {
        Registry::new(next_pfn, Box::leak(Box::new(hot::Table::new())))
    }

    /// Whether the page at `va` is in a cached (released, zero-pin) run.
    fn cached(va: u64) -> bool {
        let reg = read();
        reg.in_place_at(va).is_some_and(|(_, r)| reg.pins(&r) == 0)
    }

    /// A released run waits in the cache: no frame for anyone (counts,
    /// lookups, device copies, even right after this thread's copy
    /// through it), and pinning the same pages again gives the same PFNs.
    #[test]
    fn released_runs_are_cached_invisibly_and_repinned_with_their_frames() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(2, libc::MAP_PRIVATE);
        let (pages, pins) = (pinned_pages(), total_pins());
        let r = pin_user(m.0, 2, true).unwrap();
        assert_eq!((pinned_pages(), total_pins()), (pages + 2, pins + 2));
        write_phys(phys(&r[0], 0), b"x").unwrap();
        unpin(r[0].pfn, 2);
        assert!(cached(m.0));
        assert_eq!((pinned_pages(), total_pins()), (pages, pins));
        assert_eq!(pin_count(m.0), 0);
        assert_eq!(pfn_at(m.0), None);
        assert_eq!(program_page(phys(&r[0], 0)), None);
        let mut b = [0u8];
        assert_eq!(read_phys(phys(&r[0], 0), &mut b), Err(Errno::EFAULT), "not through this thread's last run");
        assert_eq!(read_phys(phys(&r[0], 1), &mut b), Err(Errno::EFAULT));
        assert_eq!(atc_host(phys(&r[0], 0)), None);
        // An unpin of a cached frame is as ignored as one of an unknown one.
        unpin(r[0].pfn, 2);
        assert!(cached(m.0));
        let again = pin_user(m.0, 2, false).unwrap();
        assert_eq!(again, r, "same frames");
        assert!(!cached(m.0));
        assert_eq!(pin_count(m.0 + page()), 1);
        read_phys(phys(&r[0], 0), &mut b).unwrap();
        assert_eq!(b[0], b'x');
        unpin(r[0].pfn, 2);
    }

    /// A pin of part of a cached run, or of a range it is only part of,
    /// drops it and pins the range as if nothing were cached (one run of
    /// new frames: a cached page does not split a larger range's frames);
    /// a cached run that is all of a gap between pinned runs is pinned
    /// again with its frames.
    #[test]
    fn partial_pins_of_cached_runs() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(6, libc::MAP_PRIVATE);
        let counts = || -> Vec<u32> { (0..6).map(|i| pin_count(m.0 + i * page())).collect() };
        let a = pin_user(m.0 + page(), 4, true).unwrap();
        unpin(a[0].pfn, 4);
        assert!(cached(m.0 + page()));
        let b = pin_user(m.0 + 2 * page(), 2, true).unwrap();
        assert!(!cached(m.0 + page()) && !cached(m.0 + 4 * page()), "the cached run went");
        assert_eq!(counts(), [0, 0, 1, 1, 0, 0]);
        unpin(b[0].pfn, 2);
        assert!(cached(m.0 + 2 * page()));
        let c = pin_user(m.0 + page(), 4, true).unwrap();
        assert_eq!(c.len(), 1, "one run of frames");
        assert_eq!(counts(), [0, 1, 1, 1, 1, 0]);
        unpin(c[0].pfn, 4);
        // [1, 3) cached, [3, 5) pinned: pinning [1, 5) pins [1, 3) again.
        let x = pin_user(m.0 + page(), 2, true).unwrap();
        let y = pin_user(m.0 + 3 * page(), 2, true).unwrap();
        unpin(x[0].pfn, 2);
        let d = pin_user(m.0 + page(), 4, true).unwrap();
        assert_eq!(pfn_at(m.0 + page()), Some(x[0].pfn), "the cached frames are pinned again");
        assert_eq!(counts(), [0, 1, 1, 2, 2, 0]);
        for r in d.iter().chain(y.iter()) {
            unpin(r.pfn, r.npages);
        }
        assert_eq!(total_pins_in(m.0, m.1), 0);
    }

    fn total_pins_in(va: u64, len: u64) -> u64 {
        (0..len / page()).map(|i| u64::from(pin_count(va + i * page()))).sum()
    }

    /// The program unmapping, discarding or moving its memory drops the
    /// cached runs there (never relocated: nothing is pinned).
    #[test]
    fn hooks_drop_cached_runs() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(3, libc::MAP_PRIVATE);
        let cache = |va: u64| {
            let r = pin_user(va, 1, true).unwrap();
            unpin(r[0].pfn, 1);
            assert!(cached(va));
        };
        cache(m.0);
        cache(m.0 + 2 * page());
        before_madvise_dontneed(m.0, page());
        assert!(!cached(m.0));
        assert!(cached(m.0 + 2 * page()), "outside the range");
        cache(m.0);
        let res = around_mremap(m.0, page(), page(), || Ok(m.0));
        assert_eq!(res, Ok(m.0));
        assert!(!cached(m.0));
        let arena = read().arena.next;
        before_munmap(m.0, m.1);
        assert!(!cached(m.0 + 2 * page()));
        assert_eq!(read().arena.next, arena, "nothing relocated");
        // SAFETY: unmapping our own mapping (after the hook, as the shim does).
        unsafe { libc::munmap(m.0 as *mut _, m.1 as usize) };
    }

    /// At most `hot::SLOTS` runs wait, the newest released of those that
    /// share a slot; runs past `CACHE_RUN_PAGES` are not kept at all.
    #[test]
    fn the_cache_is_bounded() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let n = hot::SLOTS as u64 + 8;
        let m = Map::new(n, libc::MAP_PRIVATE);
        let mut pfns = Vec::new();
        for i in 0..n {
            let r = pin_user(m.0 + i * page(), 1, true).unwrap();
            unpin(r[0].pfn, 1);
            pfns.push(r[0].pfn);
        }
        let slot = |i: u64| hot::Table::index(m.0 + i * page());
        for i in 0..n {
            let newest = (i + 1..n).all(|j| slot(j) != slot(i));
            assert_eq!(cached(m.0 + i * page()), newest, "page {i}: kept if no later release shares its slot");
        }
        let reg = read();
        assert!(reg.by_pfn.iter().filter(|(_, r)| reg.pins(r) == 0).count() <= hot::SLOTS);
        drop(reg);
        let last = pin_user(m.0 + (n - 1) * page(), 1, true).unwrap();
        assert_eq!(last[0].pfn, pfns[n as usize - 1]);
        unpin(last[0].pfn, 1);
        let big = Map::new(CACHE_RUN_PAGES + 1, libc::MAP_PRIVATE);
        let r = pin_user(big.0, CACHE_RUN_PAGES + 1, false).unwrap();
        unpin(r[0].pfn, r[0].npages);
        assert!(!cached(big.0));
    }

    #[test]
    fn pfn_space_running_out_drops_the_cache() {
        // The registry's in-place page count is shared with the others.
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let limit = PHYS_ADDR_LIMIT >> page_shift();
        let mut r = private_registry(limit - 2);
        let run = Run { host: 1 << 30, npages: 1, pins: 0, in_place: true, mapped: false, hot: 0 };
        r.insert(FIRST_PFN, run);
        r.unpinned(FIRST_PFN, run);
        assert!(r.run_mut(FIRST_PFN).hot != 0, "kept in the hot table");
        // Everything from FIRST_PFN up, 1 GiB aligned like VPN 0: only
        // there once the cached run is gone.
        let all = limit - FIRST_PFN;
        assert_eq!(r.alloc_pfns(0, all), Err(Errno::ENOMEM));
        assert_eq!(r.alloc_pfns_or_drop_cache(0, all), Ok(FIRST_PFN));
        assert!(r.by_pfn.is_empty());
    }

    /// The steady state of a VMM mapping and unmapping one buffer: the
    /// re-pin and its unpin go through the hot table and take no lock at
    /// all (here they complete while this thread holds the registry's
    /// write lock), with the same frames and exact counts after.
    #[test]
    fn hot_repins_and_unpins_take_no_lock() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(2, libc::MAP_PRIVATE);
        let (pages, pins) = (pinned_pages(), total_pins());
        let r = pin_user(m.0, 2, true).unwrap();
        unpin_user(m.0, r[0].pfn, 2);
        assert!(cached(m.0));
        let held = write();
        let (tx, rx) = std::sync::mpsc::channel();
        let va = m.0;
        let t = std::thread::spawn(move || {
            let again = pin_user(va, 2, true).unwrap();
            tx.send(again[0]).unwrap();
            unpin_user(va, again[0].pfn, 2);
            let again = pin_user(va, 2, false).unwrap();
            tx.send(again[0]).unwrap();
        });
        let first = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("a re-pin waited for the lock");
        let second = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("an unpin waited for the lock");
        drop(held);
        t.join().unwrap();
        assert_eq!((first, second), (r[0], r[0]), "the same frames");
        assert_eq!((pinned_pages(), total_pins()), (pages + 2, pins + 2));
        assert_eq!((pin_count(m.0 + page()), pfn_at(m.0 + page())), (1, Some(r[0].pfn + 1)));
        let mut b = [0u8];
        m.set(page(), 7);
        read_phys(phys(&r[0], 1), &mut b).unwrap();
        assert_eq!(b[0], 7);
        unpin_user(m.0, r[0].pfn, 2);
        assert_eq!((pinned_pages(), total_pins()), (pages, pins));
        assert_eq!(read_phys(phys(&r[0], 1), &mut b), Err(Errno::EFAULT), "not through this thread's last run");
        assert_eq!(atc_host(phys(&r[0], 0)), None);
    }

    /// The inlined re-pin checks what `pin_user` checks: a cached run whose
    /// pages the program made read-only is no writable pin (`pin_user`
    /// then says `EFAULT`), and an armed failpoint is left to `pin_user`.
    #[test]
    fn repin_checks_like_pin_user() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(1, libc::MAP_PRIVATE);
        let r = pin_user(m.0, 1, true).unwrap();
        unpin_user(m.0, r[0].pfn, 1);
        let protect = |prot| {
            // SAFETY: changing the protection of the test's own mapping.
            assert_eq!(unsafe { libc::mprotect(m.0 as *mut _, m.1 as usize, prot) }, 0);
        };
        protect(libc::PROT_READ);
        assert_eq!(repin_user(m.0, 1, true), None);
        assert_eq!(pin_user(m.0, 1, true), Err(Errno::EFAULT));
        assert!(cached(m.0), "a failed pin leaves the run cached");
        assert_eq!(repin_user(m.0, 1, false), Some(r[0].pfn));
        unpin_user(m.0, r[0].pfn, 1);
        protect(libc::PROT_READ | libc::PROT_WRITE);
        crate::failpoint::set_nth(1);
        assert_eq!(repin_user(m.0, 1, true), None);
        assert_eq!(crate::failpoint::nth(), 1, "not consumed");
        assert_eq!(pin_user(m.0, 1, true), Err(Errno::EFAULT));
        assert_eq!(repin_user(m.0, 1, true), Some(r[0].pfn));
        unpin_user(m.0, r[0].pfn, 1);
    }

    /// A second pin of a run the hot table holds pinned takes it out of
    /// the table (an ordinary run pinned twice); unpins of either kind,
    /// given its address or not, count exactly, and the last one puts it
    /// back.
    #[test]
    fn more_pins_of_a_hot_run_make_it_ordinary() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let m = Map::new(1, libc::MAP_PRIVATE);
        let r = pin_user(m.0, 1, true).unwrap();
        unpin(r[0].pfn, 1);
        let a = pin_user(m.0, 1, true).unwrap();
        let b = pin_user(m.0, 1, false).unwrap();
        assert_eq!((a[0], b[0]), (r[0], r[0]));
        assert_eq!(pin_count(m.0), 2);
        // The table no longer has it: this unpin goes to the registry.
        unpin_user(m.0, r[0].pfn, 1);
        assert_eq!(pin_count(m.0), 1);
        unpin(r[0].pfn, 1);
        assert_eq!(pin_count(m.0), 0);
        assert!(cached(m.0));
        // A stray unpin of a cached run changes nothing.
        unpin_user(m.0, r[0].pfn, 1);
        unpin(r[0].pfn, 1);
        assert!(cached(m.0));
        assert_eq!(pin_user(m.0, 1, true).unwrap()[0], r[0]);
        // Part of it, or a wrong PFN, is no hot unpin either.
        unpin_user(m.0, r[0].pfn + 1, 1);
        assert_eq!(pin_count(m.0), 1);
        unpin_user(m.0, r[0].pfn, 1);
        assert_eq!(pin_count(m.0), 0);
    }

    /// The program's `MADV_DONTNEED` (its hook on another thread) racing a
    /// re-pin through the hot table, in either order: the pin returned is
    /// a live frame, the program's page if the hook came first, the old
    /// page relocated with the device's view if the pin did; never a
    /// released frame or one the registry lost; counts exact.
    #[test]
    fn hooks_racing_hot_repins_never_leave_a_stale_frame() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        const ROUNDS: u64 = 300;
        let m = Map::new(1, libc::MAP_PRIVATE);
        let va = m.0;
        let (pages, pins) = (pinned_pages(), total_pins());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let b2 = std::sync::Arc::clone(&barrier);
        let hook = std::thread::spawn(move || {
            for i in 0..ROUNDS {
                b2.wait();
                for _ in 0..(i * 7) % 13 * 40 {
                    std::hint::spin_loop();
                }
                // Every fourth round the hook comes late, so the pin wins
                // some rounds however the two threads' costs compare (on
                // a loaded machine the hook won all 300 otherwise).
                if i % 4 == 3 {
                    std::thread::sleep(std::time::Duration::from_micros(300));
                }
                before_madvise_dontneed(va, page());
                // SAFETY: advising the test's own mapping.
                unsafe { libc::madvise(va as *mut _, page() as usize, libc::MADV_DONTNEED) };
                b2.wait();
            }
        });
        let (mut in_place, mut moved) = (0, 0);
        for i in 0..ROUNDS {
            let r = pin_user(va, 1, true).unwrap();
            unpin_user(va, r[0].pfn, 1);
            barrier.wait();
            for _ in 0..(i * 5) % 11 * 40 {
                std::hint::spin_loop();
            }
            let r = pin_user(va, 1, true).unwrap();
            barrier.wait();
            let tag = (i % 250) as u8 + 1;
            write_phys(phys(&r[0], 0), &[tag]).unwrap();
            let mut b = [0u8];
            read_phys(phys(&r[0], 0), &mut b).unwrap();
            assert_eq!(b[0], tag, "round {i}: a live frame");
            let here = pfn_at(va) == Some(r[0].pfn);
            assert_eq!(pin_count(va), u32::from(here), "round {i}");
            assert_eq!(m.get(0).unwrap(), if here { tag } else { 0 }, "round {i}: the program's view");
            assert_eq!((pinned_pages(), total_pins()), (pages + 1, pins + 1), "round {i}");
            if here {
                in_place += 1;
            } else {
                moved += 1;
            }
            unpin_user(va, r[0].pfn, 1);
            assert_eq!((pinned_pages(), total_pins()), (pages, pins), "round {i}");
        }
        hook.join().unwrap();
        eprintln!("hook first / pin first: {in_place} / {moved}");
        assert!(moved > 0, "the pin never won the race: the test tests nothing");
    }

    /// PFN space running out (every cached run released under the lock)
    /// racing re-pins and unpins through the table on another thread: a
    /// run the other thread holds is never released, one released is never
    /// pinned again.
    #[test]
    fn dropping_the_cache_races_hot_repins() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let table: &'static hot::Table = Box::leak(Box::new(hot::Table::new()));
        let mut r = Registry::new(FIRST_PFN, table);
        let host = 7 << 30;
        let mut pfn = FIRST_PFN;
        let run = Run { host, npages: 1, pins: 0, in_place: true, mapped: false, hot: 0 };
        r.insert(pfn, run);
        r.unpinned(pfn, run);
        let released = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let pinned = Arc::new(AtomicU64::new(0));
        let (rel, st, pins) = (Arc::clone(&released), Arc::clone(&stop), Arc::clone(&pinned));
        let pinner = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Some(p) = table.pin(host, 1) {
                    assert!(p > rel.load(Ordering::SeqCst), "pinned a released run");
                    pins.fetch_add(1, Ordering::Relaxed);
                    assert!(table.unpin(host, p, 1), "a held run was taken from the table");
                }
            }
        });
        // Until both sides did enough (the other thread may start late on
        // a busy machine), within a bound.
        let mut dropped = 0;
        let start = std::time::Instant::now();
        while (dropped < 20_000 || pinned.load(Ordering::Relaxed) < 20_000)
            && start.elapsed() < std::time::Duration::from_secs(20)
        {
            if r.drop_all_cached() {
                dropped += 1;
                released.store(pfn, Ordering::SeqCst);
                pfn += 1;
                let run = Run { host, npages: 1, pins: 0, in_place: true, mapped: false, hot: 0 };
                r.insert(pfn, run);
                r.unpinned(pfn, run);
            }
            std::hint::spin_loop();
        }
        stop.store(true, Ordering::Relaxed);
        pinner.join().unwrap();
        let pinned = pinned.load(Ordering::Relaxed);
        assert!(r.drop_all_cached());
        assert!(r.by_pfn.is_empty());
        assert!(pinned > 0 && dropped > 0, "no race: {pinned} pins, {dropped} drops");
    }

    /// A `read_phys` on another thread racing the unpin of its frames
    /// never reads a released frame: its copy through the thread's cached
    /// run (without the lock) ends before the unpin returns, or the read
    /// fails; after the unpin the program fills its pages with a value no
    /// pinned frame ever holds. The run is too long for the hot table, so
    /// each unpin releases it (the next pin gets new frames, often at the
    /// same PFNs); both kinds of unpin.
    #[test]
    fn read_phys_racing_unpins_never_reads_a_released_frame() {
        device_copies_racing_unpins(false);
    }

    /// As [`read_phys_racing_unpins_never_reads_a_released_frame`], for
    /// `write_phys`: no write lands in the program's pages after the unpin
    /// returned.
    #[test]
    fn write_phys_racing_unpins_never_writes_a_released_frame() {
        device_copies_racing_unpins(true);
    }

    /// A device thread reading (or writing) the last 64 KiB of a pinned
    /// run over and over while this thread pins and unpins it.
    fn device_copies_racing_unpins(write: bool) {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        const ROUNDS: u64 = 300;
        // What the program writes once its pages are no frames, and what
        // the device writes.
        const RELEASED: u8 = 0xee;
        const WRITTEN: u8 = 0xdd;
        // The device's copy: 64 KiB at the end of the run.
        const LEN: u64 = 64 << 10;
        let pages = CACHE_RUN_PAGES + 1;
        let m = Map::new(pages, libc::MAP_PRIVATE);
        let fill = |v: u8| user::copy_to_user(m.0, &vec![v; m.1 as usize]).unwrap();
        // The physical address the device copies at (0: none yet), its
        // successful copies and its failed ones.
        let at = Arc::new(AtomicU64::new(0));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let device = {
            let (at, ok, failed, stop) = (Arc::clone(&at), Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![WRITTEN; LEN as usize];
                while !stop.load(Ordering::Relaxed) {
                    let pa = at.load(Ordering::SeqCst);
                    if pa == 0 {
                        std::hint::spin_loop();
                        continue;
                    }
                    let res = if write { write_phys(pa, &buf) } else { read_phys(pa, &mut buf) };
                    match res {
                        Ok(()) => {
                            let stale = buf.iter().position(|&b| b == RELEASED);
                            assert_eq!(stale, None, "read a released frame");
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            assert_eq!(e, Errno::EFAULT);
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        };
        let (pins, start) = (total_pins(), std::time::Instant::now());
        for i in 0..ROUNDS {
            fill((i % 200) as u8 + 1);
            let r = pin_user(m.0, pages, true).unwrap();
            assert_eq!(r.len(), 1);
            at.store(phys(&r[0], 0) + m.1 - LEN, Ordering::SeqCst);
            // Two copies at least: the second through the device thread's
            // cached run (unless it is starved: then go on).
            let seen = ok.load(Ordering::SeqCst);
            let waiting = || !device.is_finished() && start.elapsed() < std::time::Duration::from_secs(30);
            while ok.load(Ordering::SeqCst) < seen + 2 && waiting() {
                std::thread::yield_now();
            }
            for _ in 0..(i * 7) % 13 * 50 {
                std::hint::spin_loop();
            }
            if i % 2 == 0 {
                unpin(r[0].pfn, pages);
            } else {
                unpin_user(m.0, r[0].pfn, pages);
            }
            let (o, f) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
            // The pages are the program's alone now.
            fill(RELEASED);
            // A few copies at the stale address: all fail (one that ended
            // before the unpin returned may count late).
            while ok.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < o + f + 3 && waiting() {
                std::thread::yield_now();
            }
            let late = ok.load(Ordering::SeqCst) - o;
            assert!(late <= 1, "round {i}: {late} copies succeeded after the unpin returned");
            let landed = (0..LEN).filter(|&off| m.get(m.1 - LEN + off) == Ok(WRITTEN)).count();
            assert_eq!(landed, 0, "round {i}: bytes written after the unpin returned");
        }
        stop.store(true, Ordering::Relaxed);
        device.join().unwrap();
        assert_eq!(total_pins(), pins);
        let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
        eprintln!("copies {ok}, failed {failed}");
        assert!(ok >= ROUNDS && failed >= 3 * ROUNDS, "the device thread was starved: {ok} copies, {failed} failed");
    }

    #[test]
    fn huge_runs_are_physically_aligned_like_virtually() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let pages = 1024;
        let m = Map::new(pages, libc::MAP_PRIVATE);
        let r = pin_user(m.0, pages, false).unwrap();
        let mask = (1u64 << 10) - 1;
        assert_eq!(r[0].pfn & mask, (m.0 >> page_shift()) & mask);
        unpin(r[0].pfn, pages);
    }
}
