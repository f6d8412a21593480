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

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Threads inside the gate (low bits), and `CLOSED` while a fork is being
/// prepared.
static COUNT: AtomicU32 = AtomicU32::new(0);
const CLOSED: u32 = 1 << 31;

/// How long [`close`] waits for threads inside the gate.
pub const LIMIT: Duration = Duration::from_secs(10);

thread_local! {
    /// Gates this thread holds (they nest).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Whether this thread's outermost entry is counted in `COUNT`.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    /// This thread closed the gate (it is forking).
    static CLOSER: Cell<bool> = const { Cell::new(false) };
}

fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn acquire() {
    let mut spins = 0;
    loop {
        let v = COUNT.load(Ordering::Relaxed);
        if v & CLOSED == 0 && COUNT.compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return;
        }
        backoff(&mut spins);
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
    if DEPTH.with(Cell::get) == 0 && !CLOSER.with(Cell::get) {
        let mut v = COUNT.load(Ordering::Relaxed);
        loop {
            if v & CLOSED != 0 {
                return None;
            }
            match COUNT.compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        COUNTED.with(|c| c.set(true));
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    Some(Gate(()))
}

/// Enter the gate (waiting while a fork is being prepared).
pub fn enter() -> Gate {
    let depth = DEPTH.with(|d| d.replace(d.get() + 1));
    if depth == 0 && !CLOSER.with(Cell::get) {
        acquire();
        COUNTED.with(|c| c.set(true));
    }
    Gate(())
}

impl Drop for Gate {
    fn drop(&mut self) {
        if DEPTH.with(|d| d.replace(d.get() - 1)) == 1 && COUNTED.with(|c| c.replace(false)) {
            COUNT.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Out of the gate until dropped (then back in, at the same depth).
#[must_use]
pub struct Parked {
    depth: u32,
    counted: bool,
}

/// Leave the gate for a wait on another process. The caller must hold no
/// lock a forked child could need while parked.
pub fn park() -> Parked {
    let depth = DEPTH.with(|d| d.replace(0));
    let counted = COUNTED.with(|c| c.replace(false));
    if counted {
        COUNT.fetch_sub(1, Ordering::Release);
    }
    Parked { depth, counted }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if self.counted {
            acquire();
            COUNTED.with(|c| c.set(true));
        }
        DEPTH.with(|d| d.set(self.depth));
    }
}

thread_local! {
    /// This thread's [`close`] took the gate (another fork may hold it).
    static TOOK: Cell<bool> = const { Cell::new(false) };
}

/// Close the gate and wait, at most [`LIMIT`], until no other thread is
/// inside. For the prepare handler; pair with [`open_parent`] and
/// [`open_child`].
pub fn close() {
    let start = Instant::now();
    let mut spins = 0;
    loop {
        let v = COUNT.load(Ordering::Relaxed);
        if v & CLOSED == 0 && COUNT.compare_exchange_weak(v, v | CLOSED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            break;
        }
        if start.elapsed() > LIMIT {
            crate::sys::write_stderr(b"uiommufd: fork: another fork did not finish; going ahead\n");
            return;
        }
        backoff(&mut spins);
    }
    TOOK.with(|t| t.set(true));
    CLOSER.with(|c| c.set(true));
    let own = u32::from(COUNTED.with(Cell::get));
    while COUNT.load(Ordering::Acquire) != CLOSED | own {
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
    CLOSER.with(|c| c.set(false));
    if TOOK.with(|t| t.replace(false)) {
        COUNT.fetch_and(!CLOSED, Ordering::Release);
    }
}

/// After `fork`, in the child: the only thread is this one.
pub fn open_child() {
    crate::procfs::after_fork_child();
    crate::vmstat::after_fork_child();
    CLOSER.with(|c| c.set(false));
    TOOK.with(|t| t.set(false));
    COUNT.store(u32::from(COUNTED.with(Cell::get)), Ordering::Release);
}

/// Whether this thread is running our own code: inside the gate, or the
/// thread that closed it (the fork handlers). A descriptor of ours closed
/// from here is ours to close (see `sys::internal`).
pub fn in_shim() -> bool {
    DEPTH.with(Cell::get) > 0 || CLOSER.with(Cell::get)
}

/// Threads inside the gate now (for tests).
pub fn inside() -> u32 {
    COUNT.load(Ordering::Acquire) & !CLOSED
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serialises the tests that close the gate (it is process-wide).
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn close_waits_for_threads_inside_and_park_lets_it_through() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
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
        loop {
            if inside() == 0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5));
            std::thread::yield_now();
        }
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
        let start = Instant::now();
        while inside() != 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "a thread stayed inside the gate");
            std::thread::yield_now();
        }
    }
}
