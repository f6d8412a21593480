//! Draining in-flight DMA before frames are released.
//!
//! A device request translates an address, then copies. If the program
//! unmaps the range between the two, the domain no longer maps it but the
//! request still holds the physical address it translated; releasing the
//! frame then would let the copy reach a frame that is gone, or one reused
//! for other memory. Hardware has the same window, closed by the IOTLB
//! invalidation the kernel waits for before it unpins: the invalidation
//! completes only after requests that used the old translation have. This
//! module is that wait: every request runs inside a read-side section
//! ([`enter`]); releasing frames first calls [`synchronize`], which returns
//! once every section that began before it has ended (a grace period, as in
//! RCU). Sections are short (one request's copies) and never block on the
//! releaser: no lock a releaser may hold while it waits is taken inside a
//! section.
//!
//! [`Published`] uses the same grace periods for what every request looks
//! up (a device's domain): readers borrow it for their section without a
//! lock or a reference count; a replaced value is dropped after a grace
//! period.
//!
//! Each thread that enters a section owns a slot (taken on its first
//! section, given back when the thread exits). Entering stores the current
//! grace-period count into the slot; leaving stores 0 with release ordering
//! (a plain store). Entering has two forms, chosen per thread (see *Light
//! sections* below). *Fenced*: a swap, one locked instruction on a cache
//! line no other thread writes, which is also the full barrier that orders
//! the slot before the section's loads. *Light*: a plain store, then a load
//! of the epoch word. What follows is the fenced form's argument. A grace
//! period first reads the other threads' slots:
//! when none is inside a section it is over (no shared cache line
//! written: the common case, a DMA thread idle between requests, costs a
//! few loads per unpin). Otherwise it increments the count and waits for
//! each slot holding an older, non-zero count. Either a reader's swap
//! precedes the grace period's loads in the single order of sequentially
//! consistent operations, and the scan sees the slot and waits, or it
//! follows them, and the reader's loads see the unpublished translation
//! and the bumped cache generation (the caller unpublishes with a
//! sequentially consistent read-modify-write: see [`synchronize`]).
//! Readers that entered after the increment are not waited for, grace
//! periods need no lock between them, and they cost no system call.
//!
//! A thread that issues several requests in a row (a DMA engine's
//! descriptor fetch, data and completion record) may keep one section
//! across them with a [`Hold`]: the slot keeps its count between the
//! requests, so only the first one enters. Grace
//! periods that begin meanwhile wait for the hold as for a section; the
//! holder ends it early ([`quiesce`]) before anything that may wait for a
//! lock a grace period's caller holds (reporting a fault).
//!
//! A request that only looks up and copies (a device port's
//! translation-cache path) takes a [`Leaf`]: the same entry into the slot
//! and plain store at its end, without counting itself among the thread's
//! sections (nothing can nest in it), or nothing at all inside a hold.
//!
//! # Light sections
//!
//! On Intel hosts the swap waits for the previous request's copy to drain
//! from the store buffer: 6 to 10 ns on a 4 KiB copy of some 20 (measured
//! on a Xeon with a C loop; about 1 ns on AMD Zen 3). So a thread that
//! enters many sections promotes itself to light ones, and grace periods
//! pay for them with `membarrier(2)`, once per light run:
//!
//! - An epoch word, on the grace-period counter's cache line. A light
//!   thread enters with a plain store of the count into its slot, a
//!   compiler fence, and a load of the epoch: if that is still the epoch
//!   the thread promoted itself at, the section is open; else the thread
//!   is demoted and enters fenced (the swap), from this section on.
//! - A fenced thread counts its entries; after `PROMOTE` (1024) of them it
//!   promotes itself: it swaps the epoch into its slot's `light` word, runs
//!   a full fence and reads the epoch again. Unchanged, the thread is light
//!   from its next section on; else it stays fenced.
//! - A grace period, after its caller's unpublish, reads `done` (the
//!   highest epoch a bump to which was followed by a completed
//!   `membarrier`), then the other slots' `light`. If one is at least
//!   `done`, it bumps the epoch, calls
//!   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, raises `done` to the
//!   bumped epoch, and scans the slots as above. Else it scans with no
//!   system call.
//!
//! Why a grace period G still waits for every light section that could
//! miss its caller's unpublish, for a thread R promoted at epoch e (all
//! orders below are the single order of sequentially consistent
//! operations):
//!
//! 1. G reads R's `light` before R's promotion swap: G's unpublish precedes
//!    R's fence after that swap, so every later load of R sees it.
//! 2. G reads e (or a later promotion's epoch) and it is at least `done`: G
//!    calls `membarrier`, which returns once every other thread has run a
//!    full barrier at some point of its instruction stream during the call.
//!    If R's point lies after a section's plain store, G's scan sees the
//!    store and waits for the section: its count is older than G's bump of
//!    the counter, or was read (with acquire ordering) from that bump or a
//!    later one, and then the section's loads see the unpublish. If the
//!    point lies before the store, the section's loads see the unpublish.
//! 3. G reads a `light` below `done`: another grace period G' bumped the
//!    epoch past e after R's promotion read it again, and G''s
//!    `membarrier` returned before G read `done`. R's entries whose epoch
//!    load follows R's barrier point in G''s call see the bump and enter
//!    fenced; the others' plain stores precede that point, so G's scan sees
//!    them. (A grace period that reads `done` before G' raised it is in
//!    case 2: it calls `membarrier` itself.)
//!
//! Cost: a light entry is three loads and a store, no locked instruction.
//! A grace period that finds a light thread pays a `membarrier` and demotes
//! it, so the next ones pay none until the thread has entered `PROMOTE`
//! fenced sections again: at most one system call per `PROMOTE` requests of
//! each DMA thread. The call is cheap while the other threads sleep, but an
//! IPI to each CPU running one: 10 to 25 µs in the 2-vCPU CI virtual
//! machine (a grace period that finds the DMA thread light costs some 23 µs
//! there, against 0.25 µs fenced), as much as 3000 light 4 KiB requests
//! save. So a thread demoted after a light run shorter than `LIGHT_RUN`
//! (1 ms: unmaps come often) waits twice as many fenced sections before
//! its next promotion, up to `PROMOTE_MAX` (some 40 ms of 4 KiB requests):
//! with unmaps every 100 µs the DMA thread soon stays fenced and unmaps pay
//! a `membarrier` about once per 40 ms. Where `membarrier` is not
//! registered (the fork gate's registration is reused: seccomp filters, old
//! kernels, old valgrind), threads stay fenced.
//!
//! History: a read side without locked instructions at all (plain stores,
//! every grace period through `membarrier(2)`) was tried and reverted:
//! every unpin in a process with a DMA worker thread then paid a system
//! call (microseconds per unmap). The always-fenced read side that followed
//! cost one locked instruction per request: negligible on the AMD Zen 3
//! host it was tuned on, a third of a 4 KiB copy's time on Intel. The
//! adaptive scheme keeps both common cases free: no system call per unmap,
//! no locked instruction per request. Sections were two locked
//! read-modify-writes on striped shared counters before these designs.
//!
//! `fork`: the child has one thread, but its copy of the slots still shows
//! the parent's other threads, possibly inside sections that will never end
//! there. A `pthread_atfork` child handler frees every slot but the forking
//! thread's (and their light marks: no other thread can be light). Under the shim no section is open at a fork anyway: DMA
//! engines run their rings inside the fork gate, which the fork drains.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// One thread's slot: 0 outside sections, else the grace-period count read
/// when its outermost section began, on its own cache line.
#[repr(align(64))]
struct Slot {
    count: AtomicU64,
    /// What the thread rarely writes, on the next line: a grace period
    /// reads `light` without taking the line `count` is on from its thread.
    rare: Rare,
}

#[repr(align(64))]
struct Rare {
    owned: AtomicBool,
    /// The epoch its thread last promoted itself at (0: never, since the
    /// slot was taken): while it is not below [`Words::done`] the thread
    /// may be entering light, and a grace period needs `membarrier`.
    light: AtomicU64,
}

/// Slots come in chunks that are never freed (a thread's slot is reused by
/// later threads), so a slot reference is `'static`.
const CHUNK: usize = 16;

struct Chunk {
    slots: [Slot; CHUNK],
    /// How many of `slots` (from the first) were ever taken: slots are
    /// taken lowest first, so the rest never held a section.
    used: AtomicUsize,
    next: OnceLock<&'static Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk {
            slots: [const {
                Slot {
                    count: AtomicU64::new(0),
                    rare: Rare { owned: AtomicBool::new(false), light: AtomicU64::new(0) },
                }
            }; CHUNK],
            used: AtomicUsize::new(0),
            next: OnceLock::new(),
        }
    }

    fn all() -> impl Iterator<Item = &'static Slot> {
        std::iter::successors(Some(&FIRST), |c| c.next.get().copied())
            .flat_map(|c| c.slots[..c.used.load(Ordering::SeqCst)].iter())
    }
}

static FIRST: Chunk = Chunk::new();
/// Slots owned by threads now.
static OWNED: AtomicUsize = AtomicUsize::new(0);
/// What every section reads, on its own cache line: only grace periods
/// write it (those that find a section open, or a light reader).
#[repr(align(64))]
struct Words {
    /// The grace-period counter (never 0, which marks a slot outside
    /// sections).
    count: AtomicU64,
    /// The light epoch: a thread enters light only while it reads the
    /// epoch it promoted itself at. Bumped by every grace period that may
    /// find a light reader, before its `membarrier`.
    epoch: AtomicU64,
    /// The highest epoch a bump to which was followed by a completed
    /// `membarrier`: a thread that promoted itself at an earlier epoch
    /// enters light no more, and its light sections are visible to scans.
    done: AtomicU64,
}
static WORDS: Words = Words { count: AtomicU64::new(1), epoch: AtomicU64::new(1), done: AtomicU64::new(1) };

/// Fenced entries before a thread promotes itself to light ones (at first,
/// and again after a light run that paid for its `membarrier`). A
/// `membarrier` costs the grace period that demotes the thread some
/// microseconds; a light entry saves the reader some nanoseconds.
const PROMOTE: u32 = if cfg!(test) { 8 } else { 1024 };
/// The most fenced entries between promotions: a thread demoted after a
/// light run shorter than [`LIGHT_RUN`] (unmaps are frequent) doubles its
/// wait, up to this.
const PROMOTE_MAX: u32 = 1 << 20;
/// A light run this long of a busy DMA thread saved it some 40 times the
/// `membarrier` that ends it (a light entry saves some 7 ns of a 30 ns
/// request; the call costs up to 25 µs where the thread is running). Ten
/// seconds under test: a test's light run is short however slowly it runs.
const LIGHT_RUN: std::time::Duration = std::time::Duration::from_micros(if cfg!(test) { 10_000_000 } else { 1000 });
/// Never promote (no `membarrier` in this process).
const NEVER: u32 = u32::MAX;

/// Fenced sections before a promotion, and whether short light runs back
/// off: [`PROMOTE`] and yes, or `UIOMMUFD_FENCE_PROMOTE=N` (for stress
/// tests of the other crates: promote after N, never back off, so DMA
/// threads race unmaps in light sections all along).
fn tuning() -> (u32, bool) {
    static TUNING: OnceLock<(u32, bool)> = OnceLock::new();
    *TUNING.get_or_init(|| match std::env::var("UIOMMUFD_FENCE_PROMOTE").ok().and_then(|v| v.parse::<u32>().ok()) {
        Some(n) => (n.clamp(1, PROMOTE_MAX), false),
        None => (PROMOTE, true),
    })
}
/// Registers the fork handler, once.
static ATFORK: Once = Once::new();

thread_local! {
    /// This thread's slot, its open sections and holds.
    static LOCAL: Local = const {
        Local {
            slot: Cell::new(None),
            pins: Cell::new(0),
            holds: Cell::new(0),
            live: Cell::new(false),
            light: Cell::new(0),
            run: Cell::new(PROMOTE),
            since: Cell::new(None),
            wait: Cell::new(PROMOTE),
            spare: AtomicU64::new(0),
        }
    };
    /// Gives the slot back when the thread exits.
    static EXIT: Exit = const { Exit(Cell::new(None)) };
}

struct Local {
    slot: Cell<Option<&'static Slot>>,
    /// Open sections and holds together (sections nest, holds too).
    pins: Cell<u32>,
    /// Open holds.
    holds: Cell<u32>,
    /// The slot holds a count: a section is open, or a hold kept the last
    /// one's.
    live: Cell<bool>,
    /// The epoch this thread enters light at (a plain store), 0 if it
    /// enters fenced (a locked swap).
    light: Cell<u64>,
    /// Fenced entries left before it promotes itself.
    run: Cell<u32>,
    /// When it last promoted itself.
    since: Cell<Option<std::time::Instant>>,
    /// Fenced entries between a demotion and the next promotion.
    wait: Cell<u32>,
    /// What a [`Leaf`] that opened nothing clears when it ends (so every
    /// leaf's end is one store, with no branch).
    spare: AtomicU64,
}

impl Local {
    /// Store the current count into the slot (taking one first if need
    /// be): the section's beginning.
    #[inline(always)]
    fn open(&self) {
        let slot = match self.slot.get() {
            Some(s) => s,
            None => register(self),
        };
        self.open_slot(slot);
        self.live.set(true);
    }

    /// Store the current count into this thread's `slot`: a plain store
    /// while the thread is light and its epoch current, else the locked
    /// swap (module doc).
    #[inline(always)]
    fn open_slot(&self, slot: &'static Slot) {
        let light = self.light.get();
        if light != 0 {
            // Acquire: a count bumped by a grace period that did not wait
            // for this section comes with what its caller unpublished.
            slot.count.store(WORDS.count.load(Ordering::Acquire), Ordering::Relaxed);
            // The store stays before the epoch's load (and the section's)
            // in the instruction stream; `membarrier` does the rest.
            compiler_fence(Ordering::SeqCst);
            if WORDS.epoch.load(Ordering::Relaxed) == light {
                return;
            }
            self.demote();
        }
        // The swap is a full barrier: the slot is visible to a grace
        // period's scan before any load of the section, or the section
        // sees what the grace period's releaser did before it.
        slot.count.swap(WORDS.count.load(Ordering::SeqCst), Ordering::SeqCst);
        let run = self.run.get();
        if run > 1 {
            self.run.set(run - 1);
        } else {
            self.promote(slot);
        }
    }

    /// A grace period bumped the epoch: enter fenced again, for longer if
    /// the light run was short.
    #[cold]
    #[inline(never)]
    fn demote(&self) {
        self.light.set(0);
        let short = self.since.get().is_none_or(|t| t.elapsed() < LIGHT_RUN);
        let (promote, back_off) = tuning();
        let wait = if short && back_off { (self.wait.get().saturating_mul(2)).min(PROMOTE_MAX) } else { promote };
        self.wait.set(wait);
        self.run.set(wait);
    }

    /// Enough fenced entries: enter light from now on, if this process
    /// has `membarrier` and no grace period bumps the epoch meanwhile.
    /// Inside the section the fenced entry just opened.
    #[cold]
    #[inline(never)]
    fn promote(&self, slot: &'static Slot) {
        match light_allowed() {
            Some(true) => {}
            // Another thread is deciding whether `membarrier` works.
            None => {
                self.run.set(self.wait.get());
                return;
            }
            Some(false) => {
                self.run.set(NEVER);
                return;
            }
        }
        let epoch = WORDS.epoch.load(Ordering::SeqCst);
        // The slot says so before the epoch is read again (module doc).
        slot.rare.light.swap(epoch, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if WORDS.epoch.load(Ordering::SeqCst) == epoch {
            self.light.set(epoch);
            self.since.set(Some(std::time::Instant::now()));
        } else {
            self.run.set(self.wait.get());
        }
    }

    /// Clear the slot (a plain store): no section of this thread is open
    /// for grace periods any more.
    #[inline(always)]
    fn close(&self) {
        if let Some(slot) = self.slot.get() {
            slot.count.store(0, Ordering::Release);
        }
        self.live.set(false);
    }
}

struct Exit(Cell<Option<&'static Slot>>);

impl Drop for Exit {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            let _ = LOCAL.try_with(|l| {
                l.slot.set(None);
                l.live.set(false);
                l.light.set(0);
            });
            // The thread is gone: no section of it remains.
            slot.count.store(0, Ordering::Release);
            slot.rare.light.store(0, Ordering::Release);
            slot.rare.owned.store(false, Ordering::Release);
            OWNED.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn register_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: registers a plain extern "C" handler that touches only
        // atomics and this thread's locals (async-signal-safe).
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
    });
}

/// Take a slot for this thread (its first section).
#[cold]
fn register(local: &Local) -> &'static Slot {
    register_atfork();
    let mut chunk = &FIRST;
    let slot = 'found: loop {
        for (i, s) in chunk.slots.iter().enumerate() {
            if !s.rare.owned.load(Ordering::Relaxed)
                && s.rare.owned.compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed).is_ok()
            {
                // Before the slot's first use (as the count below).
                chunk.used.fetch_max(i + 1, Ordering::SeqCst);
                break 'found s;
            }
        }
        chunk = chunk.next.get_or_init(|| Box::leak(Box::new(Chunk::new())));
    };
    // Counted before the slot's first use: a grace period that sees the
    // count without this thread began before its first section.
    OWNED.fetch_add(1, Ordering::SeqCst);
    local.slot.set(Some(slot));
    // A new slot begins fenced.
    local.light.set(0);
    local.wait.set(tuning().0);
    local.run.set(local.wait.get());
    // A thread whose locals are already being destroyed keeps the slot.
    let _ = EXIT.try_with(|e| e.0.set(Some(slot)));
    slot
}

/// A read-side section: DMA between a translation and its copies. Sections
/// nest; they belong to the thread that entered them.
#[must_use]
pub struct Section {
    /// The thread's [`LOCAL`] (which makes the section `!Send`).
    local: *const Local,
}

/// Begin a read-side section: a store into this thread's slot (a locked
/// swap, or a plain store once the thread is light: module doc); nothing
/// when it nests in another or when a [`Hold`] kept this thread's last one
/// open.
#[inline(always)]
pub fn enter() -> Section {
    let local = LOCAL.with(|l| {
        if !l.live.get() {
            l.open();
        }
        l.pins.set(l.pins.get() + 1);
        l as *const Local
    });
    Section { local }
}

impl Drop for Section {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `local` is this thread's `LOCAL` (a section is `!Send`),
        // which has no destructor: its storage lives as long as the thread,
        // longer than anything on the thread's stack or in its other
        // thread locals.
        let l = unsafe { &*self.local };
        let pins = l.pins.get() - 1;
        l.pins.set(pins);
        if pins == 0 {
            l.close();
        }
    }
}

/// A section for one request that does nothing but look up and copy (the
/// translation-cache path of a device port): no other section and no
/// hold begins or ends inside it, and it touches only this thread's slot,
/// without counting itself in the thread's open sections. Inside a hold
/// or another section it costs nothing; otherwise it is [`enter`]'s store
/// into the slot, and a plain store when it ends.
#[must_use]
pub struct Leaf {
    /// The count of the slot this leaf opened, which it clears when it
    /// ends; the thread's `spare` word when the slot was already open (a
    /// hold or a section of its own closes it) or is left open for a
    /// hold.
    end: *const AtomicU64,
    /// Belongs to the thread that entered it.
    _thread: std::marker::PhantomData<*const ()>,
}

/// Begin a [`Leaf`] section; `None` before this thread's first section
/// (which takes its slot: [`enter`] does that, out of the leaf's way).
#[inline(always)]
pub fn enter_leaf() -> Option<Leaf> {
    let end = LOCAL.with(|l| {
        if l.live.get() {
            return Some(&raw const l.spare);
        }
        let slot = l.slot.get()?;
        // As in `Local::open`.
        l.open_slot(slot);
        Some(l.leaf_end(slot))
    })?;
    Some(Leaf { end, _thread: std::marker::PhantomData })
}

impl Local {
    /// What a leaf that just opened `slot` clears when it ends.
    #[inline(always)]
    fn leaf_end(&self, slot: &'static Slot) -> *const AtomicU64 {
        if self.pins.get() != 0 {
            // Under a hold with no section open: the section stays open for
            // the hold's next request, as `enter` leaves it.
            self.live.set(true);
            return &raw const self.spare;
        }
        // `live` stays false: nothing inside a leaf asks, and its end is
        // this slot's store alone.
        &raw const slot.count
    }
}

/// [`enter_leaf`] only where it takes no call: inside a hold or another
/// section (nothing to do), or on a light thread's plain store; `None`
/// otherwise (a fenced thread, one without a slot yet, or a grace period
/// bumped the epoch), and the caller takes its general path, whose
/// [`enter`] swaps, promotes and demotes. For a hot path that keeps its
/// values in registers across its one call (a device port's guarded copy).
#[inline(always)]
pub fn enter_light() -> Option<Leaf> {
    let end = LOCAL.with(|l| {
        if l.live.get() {
            return Some(&raw const l.spare);
        }
        let light = l.light.get();
        let slot = l.slot.get()?;
        if light == 0 {
            return None;
        }
        // As in `Local::open_slot`'s light entry.
        slot.count.store(WORDS.count.load(Ordering::Acquire), Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        if WORDS.epoch.load(Ordering::Relaxed) != light {
            // Not entered after all (nothing was read inside): the
            // general path's `enter` demotes the thread.
            slot.count.store(0, Ordering::Release);
            return None;
        }
        Some(l.leaf_end(slot))
    })?;
    Some(Leaf { end, _thread: std::marker::PhantomData })
}

impl Drop for Leaf {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `end` is this thread's slot count (slots live as long as
        // the process) or its `spare` word (a leaf never leaves the thread,
        // which outlives it).
        let end = unsafe { &*self.end };
        // Nothing inside closed an opened slot (a section begun and ended
        // inside would have).
        debug_assert!(
            LOCAL.with(|l| std::ptr::eq(end, &l.spare)) || end.load(Ordering::Relaxed) != 0,
            "a section ended inside a dma_fence::Leaf"
        );
        end.store(0, Ordering::Release);
    }
}

/// A section of either kind, as what is read inside one asks for it.
pub trait Inside: inside::Sealed {}
impl Inside for Section {}
impl Inside for Leaf {}
mod inside {
    pub trait Sealed {}
    impl Sealed for super::Section {}
    impl Sealed for super::Leaf {}
}

/// Requests of this thread in a row, kept in one section: while a hold
/// lives, the end of the thread's outermost section leaves its slot as it
/// is, so the next section begins without a locked instruction (a DMA
/// engine's descriptor fetch, copy and completion record pay one between
/// them). Grace periods that begin meanwhile wait for the hold, as for a
/// section. So a holder, between its sections, must not wait for anything
/// a thread in a grace period may hold (a lock) without [`quiesce`] first,
/// and must keep the hold short (one descriptor). Holds nest; they belong
/// to the thread that took them.
#[must_use]
pub struct Hold {
    /// The thread's [`LOCAL`], as in [`Section`].
    local: *const Local,
}

/// Take a [`Hold`] (no section is entered until the first request).
#[inline]
pub fn hold() -> Hold {
    let local = LOCAL.with(|l| {
        l.pins.set(l.pins.get() + 1);
        l.holds.set(l.holds.get() + 1);
        l as *const Local
    });
    Hold { local }
}

impl Drop for Hold {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: as in `Section::drop`.
        let l = unsafe { &*self.local };
        l.holds.set(l.holds.get() - 1);
        let pins = l.pins.get() - 1;
        l.pins.set(pins);
        if pins == 0 && l.live.get() {
            l.close();
        }
    }
}

/// End the section a [`Hold`] keeps open between this thread's sections,
/// before a wait that a grace period could be waiting behind (a lock its
/// caller holds): the next section begins afresh. Nothing to do outside a
/// hold. Must not be called inside a section.
pub fn quiesce() {
    let _ = LOCAL.try_with(|l| {
        debug_assert_eq!(l.pins.get(), l.holds.get(), "dma_fence::quiesce inside a section");
        if l.live.get() && l.pins.get() == l.holds.get() {
            l.close();
        }
    });
}

/// Wait until every read-side section that began before this call has
/// ended. Must not be called inside a section.
///
/// What the caller unpublished must be ordered before this call by a
/// sequentially consistent read-modify-write (every caller bumps the
/// translation-cache generation or swaps a [`Published`] pointer first):
/// then a section that begins after the check of the owned slots below,
/// whose registration is such an operation too, sees it.
///
/// Inlined as far as the load of the owned slots' count: in a process
/// where no thread ever entered a section (no device DMA) it is zero, and
/// every unpin of the map path asks.
#[inline]
pub fn synchronize() {
    let owned = OWNED.load(Ordering::SeqCst);
    if owned != 0 {
        synchronize_owned(owned);
    }
}

/// [`synchronize`] once `owned` threads were seen to have a slot.
#[inline(never)]
fn synchronize_owned(owned: usize) {
    let mine = LOCAL.try_with(|l| {
        debug_assert_eq!(l.pins.get(), l.holds.get(), "dma_fence::synchronize inside a section");
        l.slot.get()
    });
    let mine = mine.ok().flatten();
    // No other thread has a slot (none at all was `synchronize`'s own
    // test): no section but ours can be open, and a thread taking its
    // first slot after the load sees what we did (no shared cache line is
    // written here, so unmaps in a process without DMA threads do not
    // contend).
    if owned == 1 && mine.is_some() {
        return;
    }
    // No other thread inside a section now: a section that begins after
    // these loads begins with a swap that follows them in the single order
    // of sequentially consistent operations, so it sees what the caller
    // unpublished. The common case when a DMA thread is idle, and it
    // writes no shared cache line (unmaps on several threads do not
    // contend here).
    let other = |slot: &Slot| !mine.is_some_and(|m| std::ptr::eq(m, slot));
    // A thread that may enter light: demote it and make its slot visible
    // (module doc), then look again. Once per light run of a thread; none
    // where no thread is light. Each slot's mark is read before its count.
    let done = WORDS.done.load(Ordering::SeqCst);
    let (mut light, mut open) = (false, false);
    let mut chunk = Some(&FIRST);
    'scan: while let Some(c) = chunk {
        for slot in &c.slots[..c.used.load(Ordering::SeqCst)] {
            if other(slot) {
                if slot.rare.light.load(Ordering::SeqCst) >= done {
                    light = true;
                    break 'scan;
                }
                open |= slot.count.load(Ordering::SeqCst) != 0;
            }
        }
        chunk = c.next.get().copied();
    }
    if light {
        light_barrier();
        open = Chunk::all().any(|slot| other(slot) && slot.count.load(Ordering::SeqCst) != 0);
    }
    if !open {
        return;
    }
    // Sections that read this count or a later one began after us (a
    // thread that re-enters is not waited for).
    let now = WORDS.count.fetch_add(1, Ordering::SeqCst) + 1;
    let mut spins = 0u32;
    for slot in Chunk::all().filter(|s| other(s)) {
        loop {
            let c = slot.count.load(Ordering::Acquire);
            if c == 0 || c >= now {
                break;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Bump the epoch (light readers enter fenced from their next section on),
/// then `membarrier`: every other thread's light slot store is visible, or
/// its next loads see what the caller unpublished and the bumped epoch.
#[cold]
#[inline(never)]
fn light_barrier() {
    let epoch = WORDS.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    if crate::forkgate::expedited_barrier() {
        WORDS.done.fetch_max(epoch, Ordering::SeqCst);
    } else {
        // Cannot happen: a thread promotes itself only where the
        // registration succeeded, and a forked child's other slots are
        // freed. Promote no thread any more.
        LIGHT_OFF.store(true, Ordering::SeqCst);
        crate::sys::write_stderr(b"uiommufd: dma_fence: membarrier failed; DMA may reach a frame being released\n");
    }
}

/// Set if `membarrier` failed once a thread was light.
static LIGHT_OFF: AtomicBool = AtomicBool::new(false);

/// Whether a thread may promote itself (`membarrier` registered); `None`
/// while that is being decided.
fn light_allowed() -> Option<bool> {
    if LIGHT_OFF.load(Ordering::SeqCst) {
        return Some(false);
    }
    crate::forkgate::expedited_membarrier()
}

/// In a forked child: the other threads are gone, and with them their
/// sections and slots.
extern "C" fn after_fork_child() {
    let mine = LOCAL.try_with(|l| l.slot.get()).ok().flatten();
    for slot in Chunk::all() {
        if mine.is_some_and(|m| std::ptr::eq(m, slot)) {
            continue;
        }
        slot.count.store(0, Ordering::Relaxed);
        slot.rare.light.store(0, Ordering::Relaxed);
        if slot.rare.owned.swap(false, Ordering::Relaxed) {
            OWNED.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A value DMA reads inside sections without locks or reference counts
/// (what a device's requests look up on every transaction: the domain it is
/// attached to). Writers swap in a new value; the old one is dropped only
/// after a grace period, so a reader's reference stays valid for its
/// section.
///
/// Writers must not be inside a section (a replace waits for sections).
pub struct Published<T: Send + Sync> {
    ptr: std::sync::atomic::AtomicPtr<T>,
}

impl<T: Send + Sync> Published<T> {
    pub fn new(value: Option<T>) -> Self {
        Published { ptr: std::sync::atomic::AtomicPtr::new(Self::boxed(value)) }
    }

    fn boxed(value: Option<T>) -> *mut T {
        value.map_or(std::ptr::null_mut(), |v| Box::into_raw(Box::new(v)))
    }

    /// The current value, valid for the section.
    pub fn read<'s>(&'s self, _section: &'s impl Inside) -> Option<&'s T> {
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: `p` is null or a live box published with Release; a
        // replaced box is freed only after `synchronize`, which waits for
        // this section (which began before the replacement could retire it).
        unsafe { p.as_ref() }
    }

    /// Publish `value`; the old one is dropped once no section can see it.
    pub fn replace(&self, value: Option<T>) {
        let old = self.ptr.swap(Self::boxed(value), Ordering::AcqRel);
        if !old.is_null() {
            synchronize();
            // SAFETY: `old` came from Box::into_raw and was unpublished
            // above; after the grace period no reader holds it.
            drop(unsafe { Box::from_raw(old) });
        }
    }
}

impl<T: Send + Sync> Drop for Published<T> {
    fn drop(&mut self) {
        let p = *self.ptr.get_mut();
        if !p.is_null() {
            // Readers borrow `self`, so none exist now.
            // SAFETY: our own box, unpublished by `&mut self`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// The tests that count slots, watch grace periods or fork run one at
    /// a time, and not beside the crate's other tests that release frames
    /// (each release is a grace period).
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    /// A thread holding a section until told to leave it.
    struct Holder {
        release: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    fn hold_section() -> Holder {
        let inside = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inside, release) = (Arc::clone(&inside), Arc::clone(&release));
            std::thread::spawn(move || {
                let s = enter();
                inside.store(true, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                drop(s);
            })
        };
        wait_for("the section", || inside.load(Ordering::SeqCst));
        Holder { release, thread: Some(thread) }
    }

    impl Holder {
        fn leave(mut self) {
            self.release.store(true, Ordering::SeqCst);
            self.thread.take().unwrap().join().unwrap();
        }
    }

    impl Drop for Holder {
        /// A failing test still ends the section (else every later grace
        /// period of the test binary would wait for it).
        fn drop(&mut self) {
            self.release.store(true, Ordering::SeqCst);
        }
    }

    /// `synchronize` on another thread; the flag is set when it returns.
    fn synchronize_in_background() -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                synchronize();
                done.store(true, Ordering::SeqCst);
            })
        };
        (done, t)
    }

    #[test]
    fn synchronize_waits_for_sections_that_began_before_it_only() {
        let _s = serial();
        let before = hold_section();
        let count = WORDS.count.load(Ordering::SeqCst);
        let (done, waiter) = synchronize_in_background();
        // The grace period has begun; a section entered now is not waited for.
        wait_for("the grace period to begin", || WORDS.count.load(Ordering::SeqCst) > count);
        let after = hold_section();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!done.load(Ordering::SeqCst), "returned while a section that began before it was open");
        before.leave();
        wait_for("the grace period to end while a later section is open", || done.load(Ordering::SeqCst));
        waiter.join().unwrap();
        after.leave();
        // With nothing in flight it returns at once.
        synchronize();
    }

    /// A hold keeps the thread's section open between its requests (grace
    /// periods wait for it) until it ends or is quiesced; sections under
    /// it enter without taking the slot again.
    #[test]
    fn a_hold_spans_its_sections_until_it_ends_or_quiesces() {
        let _s = serial();
        for end_by_quiesce in [false, true] {
            let (tx, rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                let hold = hold();
                drop(enter());
                let count = LOCAL.with(|l| l.slot.get().unwrap().count.load(Ordering::SeqCst));
                drop(enter());
                let again = LOCAL.with(|l| l.slot.get().unwrap().count.load(Ordering::SeqCst));
                tx.send((count, again)).unwrap();
                go_rx.recv().unwrap();
                if end_by_quiesce {
                    quiesce();
                    assert_eq!(LOCAL.with(|l| l.slot.get().unwrap().count.load(Ordering::SeqCst)), 0);
                    go_rx.recv().unwrap();
                }
                drop(hold);
                assert_eq!(LOCAL.with(|l| l.slot.get().unwrap().count.load(Ordering::SeqCst)), 0);
            });
            let (count, again) = rx.recv().unwrap();
            assert_ne!(count, 0, "the hold's section is not open after its first request");
            assert_eq!(count, again, "a section under the hold entered afresh");
            let (done, waiter) = synchronize_in_background();
            std::thread::sleep(Duration::from_millis(20));
            assert!(!done.load(Ordering::SeqCst), "a grace period ended while a hold kept a section open");
            go_tx.send(()).unwrap();
            waiter.join().unwrap();
            assert!(done.load(Ordering::SeqCst));
            if end_by_quiesce {
                go_tx.send(()).unwrap();
            }
            t.join().unwrap();
        }
    }

    /// A leaf is a section for grace periods; it needs the thread's slot
    /// taken first, and under a hold it leaves the section open for the
    /// hold's next request.
    #[test]
    fn a_leaf_is_waited_for_and_keeps_a_holds_section_open() {
        let _s = serial();
        let count = || LOCAL.with(|l| l.slot.get().map_or(0, |s| s.count.load(Ordering::SeqCst)));
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            assert!(enter_leaf().is_none(), "a leaf before the thread's slot was taken");
            drop(enter());
            let leaf = enter_leaf().expect("the slot is taken");
            tx.send(count()).unwrap();
            go_rx.recv().unwrap();
            drop(leaf);
            assert_eq!(count(), 0, "a leaf left its section open");
            let hold = hold();
            drop(enter_leaf().unwrap());
            let kept = count();
            drop(enter_leaf().unwrap());
            let again = count();
            drop(hold);
            tx.send(kept).unwrap();
            tx.send(again).unwrap();
            tx.send(count()).unwrap();
        });
        assert_ne!(rx.recv().unwrap(), 0, "the leaf's section is not open");
        let (done, waiter) = synchronize_in_background();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!done.load(Ordering::SeqCst), "a grace period ended while a leaf was open");
        go_tx.send(()).unwrap();
        waiter.join().unwrap();
        let (kept, again, after) = (rx.recv().unwrap(), rx.recv().unwrap(), rx.recv().unwrap());
        assert_ne!(kept, 0, "under a hold, a leaf closed the section");
        assert_eq!(kept, again, "under a hold, the next leaf entered afresh");
        assert_eq!(after, 0, "the hold's end left the section open");
        t.join().unwrap();
    }

    #[test]
    fn nested_sections_end_with_the_outermost() {
        let _s = serial();
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let outer = enter();
            drop(enter());
            tx.send(()).unwrap();
            go_rx.recv().unwrap();
            drop(outer);
        });
        rx.recv().unwrap();
        let (done, waiter) = synchronize_in_background();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!done.load(Ordering::SeqCst), "the inner section's end ended the outer one");
        go_tx.send(()).unwrap();
        waiter.join().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_thread_that_exits_gives_its_slot_back() {
        let _s = serial();
        let slot = std::thread::spawn(|| {
            drop(enter());
            LOCAL.with(|l| l.slot.get().map(|s| s as *const Slot as usize)).unwrap()
        })
        .join()
        .unwrap();
        let slot = Chunk::all().find(|s| *s as *const Slot as usize == slot).unwrap();
        assert!(!slot.rare.owned.load(Ordering::SeqCst), "the exited thread still owns its slot");
        assert_eq!(slot.count.load(Ordering::SeqCst), 0);
        // And a new thread reuses slots rather than adding chunks.
        let chunks = || std::iter::successors(Some(&FIRST), |c| c.next.get().copied()).count();
        let before = chunks();
        for _ in 0..(3 * CHUNK) {
            std::thread::spawn(|| drop(enter())).join().unwrap();
        }
        assert_eq!(chunks(), before);
    }

    /// Values published to many reading threads are freed only after every
    /// reader that could see them has left its section.
    #[test]
    fn many_threads_never_see_a_freed_value() {
        let _s = serial();
        const IDS: usize = 256;
        static FREED: [AtomicBool; IDS] = [const { AtomicBool::new(false) }; IDS];
        struct Canary(usize);
        impl Drop for Canary {
            fn drop(&mut self) {
                FREED[self.0].store(true, Ordering::SeqCst);
            }
        }
        let published = Arc::new(Published::new(Some(Canary(0))));
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU32::new(0));
        // Reads in light sections (readers promote themselves after a few
        // sections, and each replace demotes them).
        let light_reads = Arc::new(AtomicU32::new(0));
        let readers: Vec<_> = (0..6)
            .map(|_| {
                let (published, stop, reads, light_reads) =
                    (Arc::clone(&published), Arc::clone(&stop), Arc::clone(&reads), Arc::clone(&light_reads));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let s = enter();
                        if is_light() {
                            light_reads.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(c) = published.read(&s) {
                            let id = c.0;
                            for _ in 0..50 {
                                assert!(!FREED[id].load(Ordering::SeqCst), "value {id} freed inside a section");
                                std::hint::spin_loop();
                            }
                        }
                        drop(s);
                        reads.fetch_add(1, Ordering::Relaxed);
                        // Let the replacing thread run on this small machine.
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        // Replace only while readers are reading (on a loaded machine the
        // loop could otherwise end before any reader ran).
        wait_for("the readers", || reads.load(Ordering::Relaxed) >= 6 * (PROMOTE + 2));
        for id in 1..IDS {
            published.replace(Some(Canary(id)));
            assert!(FREED[id - 1].load(Ordering::SeqCst), "a replaced value was not freed");
        }
        stop.store(true, Ordering::SeqCst);
        for r in readers {
            r.join().unwrap();
        }
        if membarrier() {
            assert_ne!(light_reads.load(Ordering::SeqCst), 0, "no reader ever read in a light section");
        }
    }

    /// This thread enters its sections light (a plain store).
    fn is_light() -> bool {
        LOCAL.with(|l| l.light.get() != 0)
    }

    /// Whether this process may have light readers (else the light tests
    /// have nothing to test: the fenced test covers that process).
    fn membarrier() -> bool {
        let ok = crate::forkgate::expedited_membarrier() == Some(true);
        if !ok {
            eprintln!("no membarrier here: light sections not tested");
        }
        ok
    }

    /// Whether promotions follow [`PROMOTE`] and back off (not
    /// `UIOMMUFD_FENCE_PROMOTE`, which the tests that count sections
    /// between them leave to the others).
    fn default_tuning() -> bool {
        let ok = tuning() == (PROMOTE, true);
        if !ok {
            eprintln!("UIOMMUFD_FENCE_PROMOTE is set: promotions not counted");
        }
        ok
    }

    /// A thread that promotes itself to light sections, then holds one
    /// until told; it reports whether it was light, and after the section
    /// whether its next one was.
    fn light_holder() -> (std::sync::mpsc::Receiver<bool>, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            for _ in 0..=PROMOTE {
                drop(enter());
            }
            let light = is_light();
            let s = enter();
            // The plain store is the section, for grace periods.
            let count = LOCAL.with(|l| l.slot.get().unwrap().count.load(Ordering::Relaxed));
            tx.send(light && count != 0).unwrap();
            go_rx.recv().unwrap();
            drop(s);
            drop(enter());
            tx.send(is_light()).unwrap();
            go_rx.recv().unwrap();
        });
        (rx, go_tx, t)
    }

    /// A grace period waits for a light section (its `membarrier` makes the
    /// plain store visible) and demotes the light reader: its next section
    /// is fenced, and the next grace period needs no `membarrier` (the
    /// epoch stays).
    #[test]
    fn a_light_section_is_waited_for_and_the_grace_period_demotes_it() {
        let _s = serial();
        if !membarrier() || !default_tuning() {
            return;
        }
        let (rx, go, t) = light_holder();
        assert!(rx.recv().unwrap(), "the thread did not promote itself to light sections");
        let epoch = WORDS.epoch.load(Ordering::SeqCst);
        let (done, waiter) = synchronize_in_background();
        wait_for("the epoch's bump", || WORDS.epoch.load(Ordering::SeqCst) > epoch);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!done.load(Ordering::SeqCst), "a grace period ended while a light section was open");
        go.send(()).unwrap();
        waiter.join().unwrap();
        assert!(!rx.recv().unwrap(), "the grace period left the reader light");
        assert!(WORDS.done.load(Ordering::SeqCst) > epoch);
        let epoch = WORDS.epoch.load(Ordering::SeqCst);
        synchronize();
        assert_eq!(WORDS.epoch.load(Ordering::SeqCst), epoch, "a grace period with no light reader bumped the epoch");
        go.send(()).unwrap();
        t.join().unwrap();
    }

    /// A thread that promotes itself just as a grace period bumps the
    /// epoch stays fenced; its next promotion waits longer after a short
    /// light run.
    #[test]
    fn promotion_backs_off_after_a_short_light_run() {
        let _s = serial();
        if !membarrier() || !default_tuning() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            for _ in 0..=PROMOTE {
                drop(enter());
            }
            tx.send(is_light()).unwrap();
            go_rx.recv().unwrap();
            // Demoted after a light run of none: twice the wait.
            // Sections until the thread is light again (the first finds
            // the bumped epoch and enters fenced, the last promotes).
            let mut fenced = 0;
            loop {
                drop(enter());
                fenced += 1;
                if is_light() {
                    break;
                }
                assert!(fenced <= 4 * PROMOTE, "never promoted again");
            }
            tx.send(fenced == 2 * PROMOTE).unwrap();
        });
        assert!(rx.recv().unwrap(), "the thread did not promote itself");
        synchronize();
        go_tx.send(()).unwrap();
        assert!(rx.recv().unwrap(), "a short light run did not double the wait before the next promotion");
        t.join().unwrap();
    }

    /// Without `membarrier` (forced in a child process) every section is
    /// fenced and grace periods never bump the epoch.
    #[test]
    fn fenced_without_membarrier_in_a_child_process() {
        crate::forkgate::run_fenced_child("dma_fence::tests::fenced_without_membarrier_inner");
    }

    #[test]
    #[ignore = "run by fenced_without_membarrier_in_a_child_process"]
    fn fenced_without_membarrier_inner() {
        if std::env::var_os("UIOMMUFD_TEST_FORKGATE_FENCED").is_none() {
            return;
        }
        let _s = serial();
        assert_eq!(crate::forkgate::expedited_membarrier(), Some(false));
        let (rx, go, t) = light_holder();
        assert!(!rx.recv().unwrap(), "a thread entered light without membarrier");
        let epoch = WORDS.epoch.load(Ordering::SeqCst);
        let (done, waiter) = synchronize_in_background();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!done.load(Ordering::SeqCst), "a grace period ended while a fenced section was open");
        go.send(()).unwrap();
        waiter.join().unwrap();
        assert!(!rx.recv().unwrap());
        assert_eq!(WORDS.epoch.load(Ordering::SeqCst), epoch, "the epoch moved without light readers");
        go.send(()).unwrap();
        t.join().unwrap();
    }

    /// A forked child has none of the parent's other threads: a section one
    /// of them held at the fork does not hold up the child's grace periods.
    #[test]
    fn a_forked_child_can_synchronize() {
        let _s = serial();
        // This thread has a slot, as the child's only thread will.
        drop(enter());
        let held = hold_section();
        // SAFETY: the child only runs the fence's atomics and system calls
        // (no allocation, no lock another thread may hold) and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            synchronize();
            drop(enter());
            synchronize();
            // SAFETY: leaving the child without running the parent's
            // destructors.
            unsafe { libc::_exit(0) };
        }
        let start = Instant::now();
        let status = loop {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break Some(status);
            }
            if start.elapsed() > Duration::from_secs(10) {
                // SAFETY: our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        held.leave();
        let status = status.expect("the child's grace period waited for a thread it does not have");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    }
}
