//! Fault injection: the kernel's `fail-nth`, per thread.
//!
//! Writing N to `/proc/self/task/TID/fail-nth` makes the N-th fault
//! injection point that thread passes fail; every point passed counts the
//! value down, and it reads back as 0 once the failure has fired. The
//! engine calls [`should_fail`] at each fallible step (allocation, pinning,
//! page-table allocation, mapping): while no thread of the process has
//! ever armed injection that costs one load of a global flag (the map path
//! passes several points a call), after that one thread-local read.
//!
//! The preload shim serves the `fail-nth` file on top of [`set_nth`] and
//! [`nth`]; Rust users can call them directly.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static NTH: Cell<u32> = const { Cell::new(0) };
}

/// Set for good once any thread arms itself: until then every thread's
/// countdown is 0 and the points need not read it. A thread that arms
/// itself sees its own store; other threads' countdowns stay 0 whatever
/// they read here.
static EVER_ARMED: AtomicBool = AtomicBool::new(false);

/// Arm the calling thread: its `n`-th injection point from now fails
/// (0 disarms).
pub fn set_nth(n: u32) {
    if n != 0 {
        EVER_ARMED.store(true, Ordering::Relaxed);
    }
    NTH.with(|c| c.set(n));
}

/// The calling thread's countdown (0: disarmed or already fired).
#[inline]
pub fn nth() -> u32 {
    if !EVER_ARMED.load(Ordering::Relaxed) {
        return 0;
    }
    nth_armed()
}

/// [`nth`] once some thread armed injection: out of line, so the callers'
/// usual way does not compute the thread-local's address.
#[cold]
#[inline(never)]
fn nth_armed() -> u32 {
    NTH.with(|c| c.get())
}

/// An injection point: true if this step must fail now.
#[inline]
pub fn should_fail() -> bool {
    if !EVER_ARMED.load(Ordering::Relaxed) {
        return false;
    }
    should_fail_armed()
}

/// [`should_fail`] once some thread armed injection (out of line, as
/// [`nth_armed`]).
#[cold]
#[inline(never)]
fn should_fail_armed() -> bool {
    NTH.with(|c| {
        let n = c.get();
        if n == 0 {
            return false;
        }
        c.set(n - 1);
        n == 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_point_fails_once() {
        assert!(!should_fail());
        set_nth(3);
        assert_eq!((should_fail(), should_fail(), should_fail(), should_fail()), (false, false, true, false));
        assert_eq!(nth(), 0);
        // Per thread.
        set_nth(1);
        std::thread::spawn(|| assert!(!should_fail())).join().unwrap();
        assert!(should_fail());
    }
}
