//! A reader/writer lock of one 32-bit word, for the IOAS's locks (the
//! kernel's `domains_rwsem` and `iova_rwsem`).
//!
//! Why not `std::sync::RwLock`: a small map or unmap takes the `iova` lock
//! once for writing and does all its work under it, so the lock is most of
//! what such a call shares with other threads. `std`'s write lock costs
//! two locked instructions (a compare-and-swap to take it, a
//! read-modify-write to give it back, needed there to see sleeping
//! waiters) and poison checks on both sides. Here taking it is one
//! compare-and-swap and giving it back is one plain store, unless a waiter
//! sleeps.
//!
//! The word: `WRITER` while a writer holds it, the number of readers in
//! units of `READER`, and `PARKED` while a waiter may sleep on it in
//! the kernel (`futex`). Waiters spin with growing pauses for about as long
//! as a few small maps take (as [`crate::lockwait`] does for the
//! standard locks), then set `PARKED` and sleep until a release wakes
//! them. Readers change the word only while no writer holds it (a
//! compare-and-swap), so while one does, the only change anyone else makes
//! is setting `PARKED`.
//!
//! The writer's release reads the word and, when it is exactly `WRITER`
//! (nobody sleeps), stores 0. A waiter can set `PARKED` between that
//! read and that store; the store then clears it and wakes nobody. The
//! waiter does not sleep on a stale value (the kernel compares the word
//! with what the waiter saw before it sleeps, and 0 differs), except when
//! the store becomes visible only after that comparison: the writer was
//! preempted between its two instructions, or the store waited in its
//! store buffer for longer than the waiter's system call took. So that a
//! wake-up lost that way costs time and never a hang, every sleep is
//! bounded (`SLEEP`) and the waiter then looks again.
//!
//! Poisoning: none. The engine ignored it on every lock (the data stay
//! consistent at every point that can unwind); a panicking holder's guard
//! releases the lock as it unwinds.

use std::cell::UnsafeCell;
use std::hint::spin_loop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

/// A writer holds the lock.
const WRITER: u32 = 1;
/// A waiter may be asleep in the kernel: the next release wakes every one.
const PARKED: u32 = 2;
/// One reader.
const READER: u32 = 4;

/// Spinning tries before sleeping; with the pauses between them (up to 16
/// `spin_loop`s) about 10 µs, a few dozen small maps.
const TRIES: u32 = 32;

/// The longest a waiter sleeps before it looks at the word again (see the
/// module documentation: what a lost wake-up can cost).
const SLEEP: libc::timespec = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };

/// A reader/writer lock of one word (see the module documentation).
pub struct RwLock<T> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to several threads at once (readers: `T`
// must be `Sync`) and `&mut T` to one thread at a time, possibly another
// than the one that made it (`T` must be `Send`).
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send> Send for RwLock<T> {}

fn pause(try_no: u32) {
    for _ in 0..(1u32 << try_no.min(4)) {
        spin_loop();
    }
}

/// Sleep while the word is `seen` (at most [`SLEEP`]).
fn futex_wait(word: &AtomicU32, seen: u32) {
    // SAFETY: FUTEX_WAIT reads the aligned u32 at the address, which lives
    // as long as `word` is borrowed; the timeout is a valid timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            &SLEEP as *const libc::timespec,
        );
    }
}

/// Wake every thread asleep on the word.
fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX);
    }
}

impl<T> RwLock<T> {
    pub const fn new(value: T) -> Self {
        RwLock { state: AtomicU32::new(0), data: UnsafeCell::new(value) }
    }

    /// The lock for writing: one compare-and-swap when it is free.
    #[inline]
    pub fn write(&self) -> WriteGuard<'_, T> {
        if self.state.compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.write_contended();
        }
        WriteGuard { lock: self }
    }

    /// The lock for writing if nobody holds it now.
    pub fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        let s = self.state.load(Ordering::Relaxed);
        (s & !PARKED == 0 && self.state.compare_exchange(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed).is_ok())
            // Not `then_some`: a guard made and dropped would release the
            // lock someone else holds.
            .then(|| WriteGuard { lock: self })
    }

    #[cold]
    #[inline(never)]
    fn write_contended(&self) {
        let mut tries = 0;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & !PARKED == 0 {
                // Free (maybe with sleepers: they stay marked, so that this
                // writer's release wakes them).
                if self.state.compare_exchange_weak(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return;
                }
                continue;
            }
            if tries < TRIES {
                pause(tries);
                tries += 1;
                continue;
            }
            self.park(s);
        }
    }

    /// Sleep until the holder's release (or [`SLEEP`]); `s`: the word as
    /// last seen, held.
    fn park(&self, s: u32) {
        if s & PARKED == 0 && self.state.compare_exchange(s, s | PARKED, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        futex_wait(&self.state, s | PARKED);
    }

    /// The lock for reading: one compare-and-swap when no writer holds it.
    #[inline]
    pub fn read(&self) -> ReadGuard<'_, T> {
        let s = self.state.load(Ordering::Relaxed);
        if s & WRITER != 0
            || s >= u32::MAX - READER
            || self.state.compare_exchange_weak(s, s + READER, Ordering::Acquire, Ordering::Relaxed).is_err()
        {
            self.read_contended();
        }
        ReadGuard { lock: self }
    }

    #[cold]
    #[inline(never)]
    fn read_contended(&self) {
        let mut tries = 0;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & WRITER == 0 {
                assert!(s < u32::MAX - READER, "too many readers");
                if self.state.compare_exchange_weak(s, s + READER, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return;
                }
                continue;
            }
            if tries < TRIES {
                pause(tries);
                tries += 1;
                continue;
            }
            self.park(s);
        }
    }

    /// The writer's release: a plain store unless someone sleeps.
    #[inline]
    fn write_unlock(&self) {
        if self.state.load(Ordering::Relaxed) == WRITER {
            self.state.store(0, Ordering::Release);
        } else {
            self.write_unlock_wake();
        }
    }

    #[cold]
    #[inline(never)]
    fn write_unlock_wake(&self) {
        if self.state.swap(0, Ordering::Release) & PARKED != 0 {
            futex_wake_all(&self.state);
        }
    }

    #[inline]
    fn read_unlock(&self) {
        let before = self.state.fetch_sub(READER, Ordering::Release);
        // The last reader, with sleepers (writers: readers never wait for
        // readers): wake them.
        if before == READER | PARKED
            && self.state.compare_exchange(PARKED, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            futex_wake_all(&self.state);
        }
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> Self {
        RwLock::new(T::default())
    }
}

/// Held for writing.
pub struct WriteGuard<'a, T> {
    lock: &'a RwLock<T>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock for writing: no other reference
        // to the data exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and the guard is borrowed mutably.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.write_unlock();
    }
}

/// Held for reading.
pub struct ReadGuard<'a, T> {
    lock: &'a RwLock<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock for reading: only shared
        // references to the data exist.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.read_unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Writers lose no update and readers see whole values, with enough
    /// threads on two cores that some sleep.
    #[test]
    fn excludes_and_wakes() {
        let l = Arc::new(RwLock::new((0u64, 0u64)));
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let mut g = l.write();
                        g.0 += 1;
                        if i % 512 == 0 && t == 0 {
                            // A long hold: the others give up spinning.
                            std::thread::sleep(std::time::Duration::from_micros(50));
                        }
                        g.1 += 1;
                        drop(g);
                        let r = l.read();
                        assert_eq!(r.0, r.1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*l.read(), (120_000, 120_000));
        assert_eq!(l.state.load(Ordering::Relaxed) & !PARKED, 0);
    }

    #[test]
    fn try_write_fails_while_held() {
        let l = RwLock::new(1);
        let r = l.read();
        assert!(l.try_write().is_none());
        drop(r);
        let w = l.try_write().expect("free");
        assert!(l.try_write().is_none());
        drop(w);
        assert!(l.try_write().is_some());
    }

    /// A writer waiting on readers (spinning, then asleep) gets the lock
    /// once the last one goes.
    #[test]
    fn writer_waits_for_readers() {
        let l = Arc::new(RwLock::new(0u32));
        let r1 = l.read();
        let r2 = l.read();
        let l2 = Arc::clone(&l);
        let w = std::thread::spawn(move || {
            *l2.write() += 1;
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(*r1, 0);
        drop(r1);
        drop(r2);
        w.join().unwrap();
        assert_eq!(*l.read(), 1);
    }
}
