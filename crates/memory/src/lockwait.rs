//! Taking a contended `RwLock` by spinning a while before sleeping.
//!
//! The engine's locks are held for a few hundred nanoseconds (a small map
//! or unmap under an IOAS's `iova` lock, a pin or unpin under the frame
//! registry's). When two threads want one of them back to back, the
//! standard lock's waiter soon sleeps in the kernel and marks itself
//! waiting; every release then costs the holder a wake-up system call and
//! the waiter a trip through the scheduler, several microseconds against
//! the lock's few hundred nanoseconds: two threads mapping in one IOAS ran
//! 3.4 times slower together than one alone. Here a waiter retries with
//! `try_write` / `try_read` (which succeed whenever the lock is free,
//! queued sleepers or not) with a growing pause between tries, for about
//! as long as a few critical sections take, and only then blocks.
//!
//! The frame registry's lock is taken this way; the IOAS's locks are
//! [`crate::rwlock`]'s, which spin the same way before sleeping.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// Tries before blocking; with the pauses between them (up to 16
/// `spin_loop`s, about 25 ns each on the machines measured) about 10 µs.
const TRIES: u32 = 32;

/// [`TRIES`], or 0 with `UIOMMUFD_LOCK_SPIN=0` in the environment (to
/// measure the plain lock beside it in one build).
fn tries() -> u32 {
    static T: AtomicU32 = AtomicU32::new(u32::MAX);
    match T.load(Ordering::Relaxed) {
        u32::MAX => {
            let t = if std::env::var_os("UIOMMUFD_LOCK_SPIN").is_some_and(|v| v == "0") { 0 } else { TRIES };
            T.store(t, Ordering::Relaxed);
            t
        }
        t => t,
    }
}

fn pause(try_no: u32) {
    for _ in 0..(1u32 << try_no.min(4)) {
        spin_loop();
    }
}

/// `l.write()`, spinning first while it is held (poisoning ignored, as
/// everywhere in the engine: the data stay consistent at every unwind
/// point that can poison them). The uncontended case is one inlined
/// `try_write`; the loop is out of line.
#[inline]
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    match l.try_write() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => write_contended(l),
    }
}

#[cold]
#[inline(never)]
fn write_contended<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    for i in 0..tries() {
        pause(i);
        match l.try_write() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// `l.read()`, spinning first while a writer holds it.
#[inline]
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    match l.try_read() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => read_contended(l),
    }
}

#[cold]
#[inline(never)]
fn read_contended<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    for i in 0..tries() {
        pause(i);
        match l.try_read() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    l.read().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Two threads incrementing under `write` lose no update, and readers
    /// see whole values.
    #[test]
    fn excludes_like_the_lock() {
        let l = Arc::new(RwLock::new((0u64, 0u64)));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let mut g = write(&l);
                        g.0 += 1;
                        g.1 += 1;
                        drop(g);
                        let r = read(&l);
                        assert_eq!(r.0, r.1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*read(&l), (40_000, 40_000));
    }
}
