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
//! The design is userspace RCU's membarrier flavour. Each thread that
//! enters a section owns a slot (taken on its first section, given back
//! when the thread exits). Entering stores the current grace-period
//! counter in the slot (a plain store, then a compiler fence); leaving
//! stores 0 with release ordering: no locked instruction on the read
//! side. A grace period increments the counter, makes every thread of the
//! process execute a full memory barrier (`membarrier(2)`'s
//! `PRIVATE_EXPEDITED`), then waits for each slot that holds a count
//! older than its own. The barrier splits each reader's section entry:
//! either the slot's store is visible to the scan (which then waits), or
//! the reader's loads after it see everything the releaser did before the
//! grace period (the unpublished translation, the bumped cache
//! generation), so it cannot reach what is released. Where `membarrier`
//! is unavailable (an old kernel, a seccomp filter) the read side issues a
//! full fence instead (decided once, before the first section). Readers
//! that entered after the increment are not waited for, and grace periods
//! need no lock between them. A process whose only slot is the caller's
//! own (single-threaded DMA) skips the barrier and the scan.
//!
//! `fork`: the child has one thread, but its copy of the slots still shows
//! the parent's other threads, possibly inside sections that will never end
//! there. A `pthread_atfork` child handler frees every slot but the forking
//! thread's; the child registers for `membarrier` again on its first grace
//! period (registration belongs to the address space, which the child does
//! not share). Under the shim no section is open at a fork anyway: DMA
//! engines run their rings inside the fork gate, which the fork drains.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// `MEMBARRIER_CMD_QUERY`, `_PRIVATE_EXPEDITED` and
/// `_REGISTER_PRIVATE_EXPEDITED` from `<linux/membarrier.h>`, and the
/// `_GLOBAL` command (a system-wide barrier that needs no registration).
const MB_QUERY: i32 = 0;
const MB_GLOBAL: i32 = 1;
const MB_PRIVATE_EXPEDITED: i32 = 1 << 3;
const MB_REGISTER_PRIVATE_EXPEDITED: i32 = 1 << 4;

/// One thread's slot: 0 outside sections, else the grace-period count read
/// when its outermost section began. On its own cache line.
#[repr(align(64))]
struct Slot {
    count: AtomicU64,
    owned: AtomicBool,
}

/// Slots come in chunks that are never freed (a thread's slot is reused by
/// later threads), so a slot reference is `'static`.
const CHUNK: usize = 16;

struct Chunk {
    slots: [Slot; CHUNK],
    next: OnceLock<&'static Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk {
            slots: [const { Slot { count: AtomicU64::new(0), owned: AtomicBool::new(false) } }; CHUNK],
            next: OnceLock::new(),
        }
    }

    fn all() -> impl Iterator<Item = &'static Slot> {
        std::iter::successors(Some(&FIRST), |c| c.next.get().copied()).flat_map(|c| c.slots.iter())
    }
}

static FIRST: Chunk = Chunk::new();
/// Slots owned by threads now.
static OWNED: AtomicUsize = AtomicUsize::new(0);
/// The grace-period counter (never 0, which marks a slot outside sections).
static COUNTER: AtomicU64 = AtomicU64::new(1);
/// `membarrier` is not usable: readers issue a full fence.
static FENCE: AtomicBool = AtomicBool::new(false);
/// Decides between `membarrier` and fences, once.
static MODE: Once = Once::new();

thread_local! {
    /// This thread's slot and section depth (sections nest).
    static LOCAL: Local = const { Local { slot: Cell::new(None), depth: Cell::new(0) } };
    /// Gives the slot back when the thread exits.
    static EXIT: Exit = const { Exit(Cell::new(None)) };
}

struct Local {
    slot: Cell<Option<&'static Slot>>,
    depth: Cell<u32>,
}

struct Exit(Cell<Option<&'static Slot>>);

impl Drop for Exit {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            let _ = LOCAL.try_with(|l| l.slot.set(None));
            // The thread is gone: no section of it remains.
            slot.count.store(0, Ordering::Release);
            slot.owned.store(false, Ordering::Release);
            OWNED.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Decide how grace periods reach readers (before any slot is taken).
fn choose_mode() {
    MODE.call_once(|| {
        let usable = matches!(crate::sys::membarrier(MB_QUERY), Ok(cmds) if cmds & i64::from(MB_PRIVATE_EXPEDITED) != 0)
            && crate::sys::membarrier(MB_REGISTER_PRIVATE_EXPEDITED).is_ok();
        FENCE.store(!usable, Ordering::SeqCst);
        // SAFETY: registers a plain extern "C" handler that touches only
        // atomics and this thread's locals (async-signal-safe).
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
    });
}

/// Take a slot for this thread (its first section).
#[cold]
fn register(local: &Local) -> &'static Slot {
    choose_mode();
    let mut chunk = &FIRST;
    let slot = 'found: loop {
        for s in &chunk.slots {
            if !s.owned.load(Ordering::Relaxed)
                && s.owned.compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed).is_ok()
            {
                break 'found s;
            }
        }
        chunk = chunk.next.get_or_init(|| Box::leak(Box::new(Chunk::new())));
    };
    // Counted before the slot's first use: a grace period that sees the
    // count without this thread began before its first section.
    OWNED.fetch_add(1, Ordering::SeqCst);
    local.slot.set(Some(slot));
    // A thread whose locals are already being destroyed keeps the slot.
    let _ = EXIT.try_with(|e| e.0.set(Some(slot)));
    slot
}

/// A read-side section: DMA between a translation and its copies. Sections
/// nest; they belong to the thread that entered them.
#[must_use]
pub struct Section {
    _thread: PhantomData<*const ()>,
}

/// Begin a read-side section.
#[inline]
pub fn enter() -> Section {
    LOCAL.with(|l| {
        let depth = l.depth.get();
        l.depth.set(depth + 1);
        if depth == 0 {
            let slot = match l.slot.get() {
                Some(s) => s,
                None => register(l),
            };
            // SeqCst (a plain load on x86): a load that sees an increment
            // sees what the grace period's releaser did before it.
            slot.count.store(COUNTER.load(Ordering::SeqCst), Ordering::Relaxed);
            // Keep the section's loads after the store: the grace period's
            // barrier orders them on the CPU.
            if FENCE.load(Ordering::Relaxed) {
                fence(Ordering::SeqCst);
            } else {
                compiler_fence(Ordering::SeqCst);
            }
        }
    });
    Section { _thread: PhantomData }
}

impl Drop for Section {
    #[inline]
    fn drop(&mut self) {
        LOCAL.with(|l| {
            let depth = l.depth.get() - 1;
            l.depth.set(depth);
            if depth == 0 {
                if let Some(slot) = l.slot.get() {
                    slot.count.store(0, Ordering::Release);
                }
            }
        });
    }
}

/// Make every thread of the process execute a full memory barrier.
fn barrier() {
    if FENCE.load(Ordering::Relaxed) {
        fence(Ordering::SeqCst);
        return;
    }
    match crate::sys::membarrier(MB_PRIVATE_EXPEDITED) {
        Ok(_) => return,
        // A forked child: registration belongs to the parent's address space.
        Err(e) if e.0 == libc::EPERM => {
            if crate::sys::membarrier(MB_REGISTER_PRIVATE_EXPEDITED).is_ok()
                && crate::sys::membarrier(MB_PRIVATE_EXPEDITED).is_ok()
            {
                return;
            }
        }
        Err(_) => {}
    }
    // Cannot happen after a successful registration; the slow global
    // barrier is still correct.
    if crate::sys::membarrier(MB_GLOBAL).is_err() {
        crate::sys::write_stderr(b"uiommufd: dma_fence: membarrier failed; DMA may race frame release\n");
    }
}

/// Wait until every read-side section that began before this call has
/// ended. Must not be called inside a section.
pub fn synchronize() {
    // Sections that read this count or a later one began after us.
    let now = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    let mine = LOCAL.try_with(|l| {
        debug_assert_eq!(l.depth.get(), 0, "dma_fence::synchronize inside a section");
        l.slot.get()
    });
    let mine = mine.ok().flatten();
    // A slot taken after this load belongs to a thread whose first section
    // reads the count after the increment above (both sequentially
    // consistent): nothing to wait for.
    let owned = OWNED.load(Ordering::SeqCst);
    if owned == 0 || (owned == 1 && mine.is_some()) {
        return;
    }
    barrier();
    let mut spins = 0u32;
    for slot in Chunk::all() {
        if mine.is_some_and(|m| std::ptr::eq(m, slot)) {
            continue;
        }
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

/// In a forked child: the other threads are gone, and with them their
/// sections and slots.
extern "C" fn after_fork_child() {
    let mine = LOCAL.try_with(|l| l.slot.get()).ok().flatten();
    for slot in Chunk::all() {
        if mine.is_some_and(|m| std::ptr::eq(m, slot)) {
            continue;
        }
        slot.count.store(0, Ordering::Relaxed);
        if slot.owned.swap(false, Ordering::Relaxed) {
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
    pub fn read<'s>(&'s self, _section: &'s Section) -> Option<&'s T> {
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
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// The tests that count slots or fork run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
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
        thread: std::thread::JoinHandle<()>,
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
        Holder { release, thread }
    }

    impl Holder {
        fn leave(self) {
            self.release.store(true, Ordering::SeqCst);
            self.thread.join().unwrap();
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
        let count = COUNTER.load(Ordering::SeqCst);
        let (done, waiter) = synchronize_in_background();
        // The grace period has begun; a section entered now is not waited for.
        wait_for("the grace period to begin", || COUNTER.load(Ordering::SeqCst) > count);
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
        assert!(!slot.owned.load(Ordering::SeqCst), "the exited thread still owns its slot");
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
        let readers: Vec<_> = (0..6)
            .map(|_| {
                let (published, stop, reads) = (Arc::clone(&published), Arc::clone(&stop), Arc::clone(&reads));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let s = enter();
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
        for id in 1..IDS {
            published.replace(Some(Canary(id)));
            assert!(FREED[id - 1].load(Ordering::SeqCst), "a replaced value was not freed");
        }
        stop.store(true, Ordering::SeqCst);
        for r in readers {
            r.join().unwrap();
        }
        assert!(reads.load(Ordering::Relaxed) > 0);
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
