//! The fork gate: no thread holds a lock of ours when the process forks.
//!
//! A forked child has one thread, the one that called `fork`; a lock held
//! by any other thread at that instant stays held in the child for ever.
//! Every piece of code that takes a lock the child may need (an engine
//! call, the frame registry's hooks on munmap/madvise/mremap, a DMA engine
//! running its ring) runs inside the gate ([`enter`]). The shim's
//! `pthread_atfork` prepare handler [`close`]s it: new entries wait, and
//! the handler waits for those inside to leave; the parent and child
//! handlers open it again.
//!
//! The wait is bounded. What runs inside the gate never waits for another
//! process or for a thread that waits for the gate: a thread that must
//! wait for another process in the middle of an engine call (the fork
//! server asking a child about its descriptors) [`park`]s, leaving the
//! gate while it holds no lock, so a stopped child never blocks its
//! parent's fork. If the gate still has not drained after [`LIMIT`] (a
//! bug), the fork goes ahead with a warning on stderr rather than hang.
//!
//! Calls nest (per-thread depth); the thread that closed the gate passes
//! it (the other `pthread_atfork` prepare handlers run on it after ours
//! may call into us). Nothing here allocates.
//!
//! # Entering without a locked instruction
//!
//! Entries are hot (every ioctl, every DMA engine service call) and forks
//! are rare, so the cost sits with the fork: an asymmetric barrier. Each
//! thread owns a slot of [`SLOTS`], each on its own cache line, taken at its
//! first entry and given back when it exits (a `pthread` key's destructor,
//! which needs no allocation, unlike a Rust thread-local's). The slot reads
//! 1 while the thread is inside, 0 while outside. Entering is a plain store
//! of 1, then a load of the closed flag (`CLOSED` in the shared count, a
//! line threads only read); if it is set, the thread stores 0 and waits.
//! Leaving is a release store of 0. [`close`] sets the flag, then calls
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, then waits until every
//! slot but its own reads 0.
//!
//! Why that suffices: the entering thread's store comes before its load in
//! program order (a compiler fence keeps them so; the processor may still
//! let the load pass the store, which is what `membarrier` repairs).
//! `membarrier` returns only after every other thread of the process ran a
//! full memory barrier at some point of its instruction stream during the
//! call (an IPI on the CPUs running one, a context switch for the rest),
//! and the closer's flag was set before the call. If a thread's barrier
//! point lies after its store, the store is visible to the closer's scan,
//! which then waits for it. If it lies before its load, the load is later
//! than the flag and sees it: the thread turns back before its critical
//! section. One of the two holds for every point of the stream. A slot
//! that reads 0 is therefore a thread outside, or one that will turn back,
//! and the scan's acquire loads pair with the release stores of threads
//! leaving, so their critical sections happen before the fork.
//!
//! `membarrier` needs a one-time registration per process
//! (`MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`), made when the process's
//! mode is decided, before any thread enters through a slot. Where it
//! fails (`ENOSYS` in some sandboxes or under seccomp filters, old
//! valgrind) the mode is *fenced*: entering swaps the slot to 1 with a
//! sequentially consistent locked instruction (on the thread's own line,
//! so still uncontended) and the closer, whose flag setting and scan are
//! sequentially consistent too, skips `membarrier`. A thread without a
//! slot (all [`SLOTS`] taken, its key destructor already run as it exits,
//! or no key to be had) enters through the shared count as before: a
//! compare-exchange in and a decrement out. The closer drains both.
//!
//! After a `fork` the child's slots still show the parent's other threads;
//! [`open_child`] frees all but the forking thread's.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicU32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::sys::{membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED};

/// Threads inside the gate through the shared count (low bits), and
/// `CLOSED` while a fork is being prepared. On its own cache line: every
/// entry reads it, only forks and threads without a slot write it.
#[repr(align(64))]
struct Count(AtomicU32);
static COUNT: Count = Count(AtomicU32::new(0));
const CLOSED: u32 = 1 << 31;

/// How long [`close`] waits for threads inside the gate.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Per-thread slots (threads beyond these use the shared count).
pub const SLOTS: usize = 128;

/// A slot no thread owns.
const FREE: u32 = 2;

/// One thread's slot: 1 inside the gate, 0 outside, [`FREE`] unowned. On
/// its own cache line.
#[repr(align(64))]
struct Slot(AtomicU32);

static SLOT: [Slot; SLOTS] = [const { Slot(AtomicU32::new(FREE)) }; SLOTS];

/// How this process's threads enter through their slots, decided once.
static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);
const UNDECIDED: u8 = 0;
/// A thread is deciding (others use the shared count meanwhile).
const DECIDING: u8 = 1;
/// Plain stores; the closer calls `membarrier`.
const MEMBARRIER: u8 = 2;
/// Locked swaps; the closer scans without `membarrier`.
const FENCED: u8 = 3;
/// No slots (no `pthread` key could be had): the shared count only.
const SHARED: u8 = 4;

/// The `pthread` key whose destructor gives a thread's slot back (its
/// value: the slot's index + 1). Set before `MODE` leaves `DECIDING`.
static KEY: AtomicU32 = AtomicU32::new(0);

/// How a thread's outermost entry is held.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    No,
    /// In its slot.
    Slot,
    /// In the shared count.
    Shared,
}

/// This thread's way in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    /// No slot yet (taken at the next outermost entry).
    Unclaimed,
    /// Slot `i`, plain stores.
    Plain(u32),
    /// Slot `i`, locked swaps.
    Fenced(u32),
    /// The shared count (no slot free, or the thread is exiting).
    Shared,
}

struct Local {
    /// Gates this thread holds (they nest).
    depth: Cell<u32>,
    /// How the outermost one is held.
    held: Cell<Held>,
    /// This thread closed the gate (it is forking).
    closer: Cell<bool>,
    /// This thread's [`close`] took the gate (another fork may hold it).
    took: Cell<bool>,
    way: Cell<Way>,
    /// The slot of `way` (`Plain` or `Fenced`).
    slot: Cell<Option<&'static AtomicU32>>,
    /// The slot, if entered with plain stores (the inlined fast path).
    plain: Cell<Option<&'static AtomicU32>>,
}

thread_local! {
    // No destructor: usable until the thread's very end (a thread exiting
    // can still enter, from another library's destructor, through the
    // shared count).
    static LOCAL: Local = const {
        Local {
            depth: Cell::new(0),
            held: Cell::new(Held::No),
            closer: Cell::new(false),
            took: Cell::new(false),
            way: Cell::new(Way::Unclaimed),
            slot: Cell::new(None),
            plain: Cell::new(None),
        }
    };
}

fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn closed() -> bool {
    COUNT.0.load(Ordering::SeqCst) & CLOSED != 0
}

/// One attempt through the shared count: false if the gate is closed.
fn try_shared() -> bool {
    let mut v = COUNT.0.load(Ordering::Relaxed);
    loop {
        if v & CLOSED != 0 {
            return false;
        }
        match COUNT.0.compare_exchange_weak(v, v + 1, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => v = now,
        }
    }
}

/// Decide the process's mode: register for `membarrier` or fall back.
#[cold]
fn decide() -> u8 {
    if MODE.compare_exchange(UNDECIDED, DECIDING, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        return MODE.load(Ordering::SeqCst);
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out pointer; the destructor is a plain
    // extern "C" function that touches only atomics and this thread's
    // locals.
    let mode = if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } != 0 {
        SHARED
    } else {
        KEY.store(key, Ordering::SeqCst);
        if force_fenced() || membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED).is_err() {
            FENCED
        } else {
            MEMBARRIER
        }
    };
    MODE.store(mode, Ordering::SeqCst);
    mode
}

/// Tests run the fenced mode in a child process with this set.
#[cfg(test)]
fn force_fenced() -> bool {
    std::env::var_os("UIOMMUFD_TEST_FORKGATE_FENCED").is_some()
}

/// Run the ignored test `name` of this test binary in a child process
/// whose gate runs fenced (no `membarrier`), and assert that it passed.
#[cfg(test)]
pub(crate) fn run_fenced_child(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--include-ignored", "--nocapture"])
        .env("UIOMMUFD_TEST_FORKGATE_FENCED", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[cfg(not(test))]
fn force_fenced() -> bool {
    false
}

/// Take a slot for this thread (its first outermost entry).
#[cold]
fn claim(l: &Local) -> Way {
    let mode = match MODE.load(Ordering::SeqCst) {
        UNDECIDED => decide(),
        m => m,
    };
    if mode != MEMBARRIER && mode != FENCED {
        // Another thread is deciding (try again next time), or no slots.
        if mode == DECIDING {
            return Way::Unclaimed;
        }
        l.way.set(Way::Shared);
        return Way::Shared;
    }
    let Some(i) = SLOT.iter().position(|s| {
        s.0.load(Ordering::Relaxed) == FREE
            && s.0.compare_exchange(FREE, 0, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }) else {
        l.way.set(Way::Shared);
        return Way::Shared;
    };
    // SAFETY: `KEY` was created before `MODE` was set; the value is an
    // integer, never dereferenced. Below 32 keys glibc does not allocate.
    if unsafe { libc::pthread_setspecific(KEY.load(Ordering::SeqCst), (i + 1) as *const libc::c_void) } != 0 {
        SLOT[i].0.store(FREE, Ordering::Release);
        l.way.set(Way::Shared);
        return Way::Shared;
    }
    let way = if mode == MEMBARRIER { Way::Plain(i as u32) } else { Way::Fenced(i as u32) };
    l.way.set(way);
    l.slot.set(Some(&SLOT[i].0));
    if mode == MEMBARRIER {
        l.plain.set(Some(&SLOT[i].0));
    }
    way
}

/// The thread exits: give its slot back (the key's destructor). Later
/// entries of the thread, from other destructors, use the shared count.
extern "C" fn thread_exit(value: *mut libc::c_void) {
    let i = value as usize - 1;
    let free = LOCAL
        .try_with(|l| {
            // Still inside (a gate kept in a thread-local): the slot stays
            // taken for good, the leave stores 0 as usual.
            let inside = l.held.get() == Held::Slot;
            if !inside {
                l.way.set(Way::Shared);
                l.slot.set(None);
                l.plain.set(None);
            }
            !inside
        })
        .unwrap_or(true);
    if free {
        SLOT[i].0.store(FREE, Ordering::Release);
    }
}

/// One attempt to enter (outermost, not the closer): false if the gate is
/// closed (then nothing is held).
#[inline(always)]
fn try_acquire(l: &Local) -> bool {
    if let Some(slot) = l.plain.get() {
        slot.store(1, Ordering::Relaxed);
        // Keeps the store before the load in the instruction stream (the
        // closer's `membarrier` does the rest: module doc).
        compiler_fence(Ordering::SeqCst);
        if COUNT.0.load(Ordering::Acquire) & CLOSED == 0 {
            l.held.set(Held::Slot);
            return true;
        }
        slot.store(0, Ordering::Release);
        return false;
    }
    try_acquire_other(l)
}

/// [`try_acquire`] for a thread without a plain slot.
#[inline(never)]
fn try_acquire_other(l: &Local) -> bool {
    if l.way.get() == Way::Unclaimed {
        claim(l);
        if l.plain.get().is_some() {
            return try_acquire(l);
        }
    }
    if let Some(slot) = l.slot.get() {
        slot.swap(1, Ordering::SeqCst);
        if closed() {
            slot.store(0, Ordering::Release);
            return false;
        }
        l.held.set(Held::Slot);
    } else {
        if !try_shared() {
            return false;
        }
        l.held.set(Held::Shared);
    }
    true
}

/// Enter (outermost, not the closer), waiting while the gate is closed.
#[inline(always)]
fn acquire(l: &Local) {
    if !try_acquire(l) {
        acquire_slow(l);
    }
}

#[cold]
#[inline(never)]
fn acquire_slow(l: &Local) {
    let mut spins = 0;
    loop {
        while COUNT.0.load(Ordering::Relaxed) & CLOSED != 0 {
            backoff(&mut spins);
        }
        if try_acquire(l) {
            return;
        }
    }
}

/// Leave (outermost).
#[inline(always)]
fn release(l: &Local) {
    match l.held.replace(Held::No) {
        Held::No => {}
        Held::Slot => {
            if let Some(slot) = l.slot.get() {
                slot.store(0, Ordering::Release);
            }
        }
        Held::Shared => {
            COUNT.0.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Inside the gate while it lives.
#[must_use]
pub struct Gate(());

/// Enter the gate unless a fork is being prepared (`None` then, at once).
/// For a background thread that must stay able to stop: a thread waiting
/// in [`enter`] cannot be joined by one inside the gate while a fork
/// waits for that one.
pub fn try_enter() -> Option<Gate> {
    LOCAL.with(|l| {
        if l.depth.get() == 0 && !l.closer.get() && !try_acquire(l) {
            return None;
        }
        l.depth.set(l.depth.get() + 1);
        Some(Gate(()))
    })
}

/// Enter the gate (waiting while a fork is being prepared).
#[inline]
pub fn enter() -> Gate {
    LOCAL.with(|l| {
        let depth = l.depth.replace(l.depth.get() + 1);
        if depth == 0 && !l.closer.get() {
            acquire(l);
        }
    });
    Gate(())
}

impl Drop for Gate {
    #[inline]
    fn drop(&mut self) {
        LOCAL.with(|l| {
            if l.depth.replace(l.depth.get() - 1) == 1 {
                release(l);
            }
        });
    }
}

/// Out of the gate until dropped (then back in, at the same depth).
#[must_use]
pub struct Parked {
    depth: u32,
    held: bool,
}

/// Leave the gate for a wait on another process. The caller must hold no
/// lock a forked child could need while parked.
pub fn park() -> Parked {
    LOCAL.with(|l| {
        let depth = l.depth.replace(0);
        let held = l.held.get() != Held::No;
        release(l);
        Parked { depth, held }
    })
}

impl Drop for Parked {
    fn drop(&mut self) {
        LOCAL.with(|l| {
            if self.held {
                acquire(l);
            }
            l.depth.set(self.depth);
        });
    }
}

/// Make every other thread's earlier slot store visible, or its next load
/// of the flag see it (module doc). `membarrier` also where the mode is
/// not decided yet: a thread deciding now may enter with plain stores.
fn barrier() {
    match MODE.load(Ordering::SeqCst) {
        FENCED | SHARED => return,
        _ => {}
    }
    // Where it is unavailable no thread entered with plain stores (its
    // registration failed too, so the mode is fenced); a failure in the
    // plain mode is worth a word.
    if !expedited_barrier() && MODE.load(Ordering::SeqCst) == MEMBARRIER {
        crate::sys::write_stderr(b"uiommufd: membarrier failed; going ahead\n");
    }
}

/// Whether this process's threads may rely on
/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: the gate's registration
/// succeeded (decided now if no thread entered the gate yet; `None` while
/// another thread decides). The DMA fence's light readers need it.
pub(crate) fn expedited_membarrier() -> Option<bool> {
    let mode = match MODE.load(Ordering::SeqCst) {
        UNDECIDED => decide(),
        m => m,
    };
    match mode {
        DECIDING => None,
        m => Some(m == MEMBARRIER),
    }
}

/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, registering first where
/// this process is not registered (a forked child); false if it failed.
pub(crate) fn expedited_barrier() -> bool {
    match membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) {
        Ok(()) => true,
        Err(libc::EPERM) => {
            membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED).is_ok()
                && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED).is_ok()
        }
        Err(_) => false,
    }
}

/// Close the gate and wait, at most [`LIMIT`], until no other thread is
/// inside. For the prepare handler; pair with [`open_parent`] and
/// [`open_child`].
pub fn close() {
    let start = Instant::now();
    let mut spins = 0;
    loop {
        let v = COUNT.0.load(Ordering::Relaxed);
        if v & CLOSED == 0 && COUNT.0.compare_exchange_weak(v, v | CLOSED, Ordering::SeqCst, Ordering::Relaxed).is_ok()
        {
            break;
        }
        if start.elapsed() > LIMIT {
            crate::sys::write_stderr(b"uiommufd: fork: another fork did not finish; going ahead\n");
            return;
        }
        backoff(&mut spins);
    }
    let (own_count, own_slot) = LOCAL.with(|l| {
        l.took.set(true);
        l.closer.set(true);
        let own_slot = l.slot.get();
        (u32::from(l.held.get() == Held::Shared), own_slot)
    });
    barrier();
    let is_own = |s: &AtomicU32| own_slot.is_some_and(|o| std::ptr::eq(o, s));
    let drained = || {
        COUNT.0.load(Ordering::SeqCst) == CLOSED | own_count
            && SLOT.iter().all(|s| is_own(&s.0) || s.0.load(Ordering::SeqCst) != 1)
    };
    while !drained() {
        if start.elapsed() > LIMIT {
            crate::sys::write_stderr(b"uiommufd: fork: a call into uiommufd did not finish; forking anyway\n");
            return;
        }
        backoff(&mut spins);
    }
}

/// After `fork`, in the parent: open the gate (threads still inside, if
/// `close` gave up waiting, stay counted).
pub fn open_parent() {
    let took = LOCAL.with(|l| {
        l.closer.set(false);
        l.took.replace(false)
    });
    if took {
        COUNT.0.fetch_and(!CLOSED, Ordering::Release);
    }
}

/// After `fork`, in the child: the only thread is this one.
pub fn open_child() {
    crate::procfs::after_fork_child();
    crate::vmstat::after_fork_child();
    let (own_count, own_slot) = LOCAL.with(|l| {
        l.closer.set(false);
        l.took.set(false);
        let own_slot = l.slot.get();
        (u32::from(l.held.get() == Held::Shared), own_slot)
    });
    for s in SLOT.iter() {
        if !own_slot.is_some_and(|o| std::ptr::eq(o, &s.0)) {
            s.0.store(FREE, Ordering::Relaxed);
        }
    }
    // The thread deciding the mode is gone.
    let _ = MODE.compare_exchange(DECIDING, UNDECIDED, Ordering::SeqCst, Ordering::SeqCst);
    COUNT.0.store(own_count, Ordering::Release);
}

/// This thread's slot index while it is inside the gate through its slot
/// with plain stores (`None` otherwise: not inside, another mode, or no
/// slot). Other modules key per-thread words on it that their writers
/// make visible with [`barrier_others`], as the gate's own slots are.
#[inline]
pub fn plain_slot() -> Option<usize> {
    LOCAL.with(|l| if l.held.get() == Held::Slot { l.plain.get().map(slot_index) } else { None })
}

/// This thread's slot index, in any mode (`None`: it has none).
pub fn own_slot() -> Option<usize> {
    LOCAL.with(|l| l.slot.get().map(slot_index))
}

/// The index in [`SLOT`] of one of its slots' words.
#[inline]
fn slot_index(s: &AtomicU32) -> usize {
    (s as *const AtomicU32 as usize - SLOT.as_ptr() as usize) / std::mem::size_of::<Slot>()
}

/// What [`close`] does before its scan, for the per-thread words of
/// [`plain_slot`]: afterwards every other thread's earlier plain store to
/// its word is visible to this thread's loads, or that thread's next loads
/// see this thread's earlier stores (`membarrier` in the plain mode; in
/// the others no thread writes such words).
pub fn barrier_others() {
    barrier();
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Whether this thread is running our own code: inside the gate, or the
/// thread that closed it (the fork handlers). A descriptor of ours closed
/// from here is ours to close (see `sys::internal`).
pub fn in_shim() -> bool {
    LOCAL.with(|l| l.depth.get() > 0 || l.closer.get())
}

/// Threads inside the gate now (for tests).
pub fn inside() -> u32 {
    let slots = SLOT.iter().filter(|s| s.0.load(Ordering::Acquire) == 1).count() as u32;
    (COUNT.0.load(Ordering::Acquire) & !CLOSED) + slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::sync::Arc;

    /// Serialises the tests that close the gate (it is process-wide).
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting until {what}");
            std::thread::yield_now();
        }
    }

    fn way() -> Way {
        LOCAL.with(|l| l.way.get())
    }

    /// A thread that enters the gate (nested), reports how it holds it,
    /// and stays inside until told to go (or, with `stay_outside`, leaves
    /// at once and stays alive, keeping its slot, until told).
    fn holder(stay_outside: bool) -> (Way, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let outer = enter();
            let nested = enter();
            tx.send(way()).unwrap();
            if stay_outside {
                drop((nested, outer));
            }
            go_rx.recv().unwrap();
        });
        (rx.recv().unwrap(), go_tx, t)
    }

    /// A thread that closes the gate and keeps it closed until told.
    fn closer() -> (mpsc::Receiver<()>, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (closed_tx, closed_rx) = mpsc::channel();
        let (open_tx, open_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            close();
            closed_tx.send(()).unwrap();
            open_rx.recv().unwrap();
            open_parent();
        });
        (closed_rx, open_tx, t)
    }

    /// `close` waits for a thread inside; then a new thread is turned away
    /// by `try_enter` and waits in `enter` until the gate opens.
    fn close_waits_and_turns_away(inside_way: Way) {
        let (_, go, t) = holder(false);
        let (closed, open, c) = closer();
        std::thread::sleep(Duration::from_millis(200));
        assert!(closed.try_recv().is_err(), "close returned while a thread ({inside_way:?}) was inside");
        go.send(()).unwrap();
        closed.recv_timeout(Duration::from_secs(5)).expect("close did not return after the thread left");
        t.join().unwrap();
        assert!(std::thread::spawn(|| try_enter().is_none()).join().unwrap());
        let entered = Arc::new(AtomicBool::new(false));
        let e = entered.clone();
        let waiter = std::thread::spawn(move || {
            let _g = enter();
            e.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!entered.load(Ordering::SeqCst), "a thread entered a closed gate");
        open.send(()).unwrap();
        c.join().unwrap();
        waiter.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
    }

    /// Every scenario, in whichever mode this process decided.
    fn scenarios() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let (first, go, t) = holder(false);
        go.send(()).unwrap();
        t.join().unwrap();
        let mode = MODE.load(Ordering::SeqCst);
        match first {
            Way::Plain(_) => assert_eq!(mode, MEMBARRIER),
            Way::Fenced(_) => assert_eq!(mode, FENCED),
            other => panic!("a new thread got no slot: {other:?} (mode {mode})"),
        }
        close_waits_and_turns_away(first);

        // Take every slot (threads alive, outside), until a thread falls
        // back to the shared count.
        let mut holders = Vec::new();
        let shared = loop {
            assert!(holders.len() <= SLOTS + 64, "no thread ever fell back to the shared count");
            let (w, go, t) = holder(true);
            if w == Way::Shared {
                go.send(()).unwrap();
                t.join().unwrap();
                break holder(false);
            }
            holders.push((go, t));
        };
        assert_eq!(shared.0, Way::Shared, "a slot was freed meanwhile");
        wait_until("the shared entry is counted", || COUNT.0.load(Ordering::SeqCst) & !CLOSED >= 1);
        // The closer itself has a slot (taken before the others filled
        // them) or not: either way it waits for the shared entry.
        let (_, go, t) = shared;
        let (closed, open, c) = closer();
        std::thread::sleep(Duration::from_millis(200));
        assert!(closed.try_recv().is_err(), "close returned while a thread was inside through the count");
        go.send(()).unwrap();
        t.join().unwrap();
        closed.recv_timeout(Duration::from_secs(5)).expect("close did not return");
        open.send(()).unwrap();
        c.join().unwrap();

        // Threads that exit give their slots back.
        for (go, t) in holders {
            go.send(()).unwrap();
            t.join().unwrap();
        }
        let start = Instant::now();
        loop {
            let (w, go, t) = holder(true);
            go.send(()).unwrap();
            t.join().unwrap();
            if w != Way::Shared {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "exited threads kept their slots");
        }
    }

    #[test]
    fn close_waits_for_threads_inside_and_park_lets_it_through() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _inside = enter();
            let _nested = enter();
            tx.send(()).unwrap();
            // Parked while it waits for "another process".
            {
                let _p = park();
                go_rx.recv().unwrap();
            }
        });
        rx.recv().unwrap();
        // The thread parks soon; close then drains at once.
        let start = Instant::now();
        wait_until("the thread parks", || inside() == 0);
        close();
        assert!(start.elapsed() < LIMIT);
        // Entering while closed passes for the closer only; another thread
        // trying is turned away.
        drop(enter());
        assert!(std::thread::spawn(|| try_enter().is_none()).join().unwrap());
        open_parent();
        assert!(std::thread::spawn(|| try_enter().is_some()).join().unwrap());
        go_tx.send(()).unwrap();
        t.join().unwrap();
        // The thread left (other tests of this binary enter the gate
        // too, for a moment: the count is global).
        wait_until("the thread left the gate", || inside() == 0);
    }

    #[test]
    fn slots_shared_count_and_thread_exit() {
        scenarios();
    }

    /// The same in a process that cannot use `membarrier` (fenced mode).
    #[test]
    fn fenced_mode_in_a_child_process() {
        run_fenced_child("forkgate::tests::fenced_mode_inner");
    }

    #[test]
    #[ignore = "run by fenced_mode_in_a_child_process"]
    fn fenced_mode_inner() {
        if force_fenced() {
            scenarios();
            assert_eq!(MODE.load(Ordering::SeqCst), FENCED);
        }
    }
}
