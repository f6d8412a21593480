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
//! sleepable RCU). Sections are short (one request's copies) and never
//! block on the releaser.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Counters are striped to keep concurrent devices off one cache line.
const STRIPES: usize = 16;

#[repr(align(64))]
struct Stripe([AtomicU64; 2]);

#[allow(clippy::declare_interior_mutable_const)]
const STRIPE_INIT: Stripe = Stripe([AtomicU64::new(0), AtomicU64::new(0)]);
static READERS: [Stripe; STRIPES] = [STRIPE_INIT; STRIPES];
/// The current phase (its low bit picks the counter new readers use).
static EPOCH: AtomicUsize = AtomicUsize::new(0);
/// Serialises grace periods.
static SYNC: Mutex<()> = Mutex::new(());
/// Set by the first section: until a device has issued DMA there is nothing
/// to wait for, and releasing frames costs nothing extra.
static USED: AtomicBool = AtomicBool::new(false);

fn stripe() -> usize {
    thread_local! {
        static STRIPE: usize = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
        };
    }
    STRIPE.with(|s| *s)
}

/// A read-side section: DMA between a translation and its copies.
#[must_use]
pub struct Section {
    stripe: usize,
    phase: usize,
}

/// Begin a read-side section.
pub fn enter() -> Section {
    if !USED.load(Ordering::Relaxed) {
        USED.store(true, Ordering::SeqCst);
    }
    let stripe = stripe();
    loop {
        let phase = EPOCH.load(Ordering::SeqCst) & 1;
        READERS[stripe].0[phase].fetch_add(1, Ordering::SeqCst);
        // If a grace period flipped the phase meanwhile, it may already
        // have checked our counter: count ourselves in the new phase.
        if EPOCH.load(Ordering::SeqCst) & 1 == phase {
            return Section { stripe, phase };
        }
        READERS[stripe].0[phase].fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        READERS[self.stripe].0[self.phase].fetch_sub(1, Ordering::SeqCst);
    }
}

fn drain(phase: usize) {
    let mut spins = 0u32;
    while READERS.iter().any(|s| s.0[phase].load(Ordering::SeqCst) != 0) {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Wait until every read-side section that began before this call has
/// ended. Must not be called inside a section.
pub fn synchronize() {
    if !USED.load(Ordering::SeqCst) {
        return;
    }
    let _g = SYNC.lock().unwrap_or_else(|p| p.into_inner());
    // Every section that began before the flip counted itself in the old
    // phase: `enter` re-reads the epoch after counting, and all of it is
    // sequentially consistent, so either its count precedes the flip (and
    // the drain sees it) or it saw the flip and moved to the new phase.
    // The previous grace period drained the new phase before returning,
    // and grace periods are serialised.
    let old = EPOCH.fetch_add(1, Ordering::SeqCst) & 1;
    drain(old);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn synchronize_waits_for_sections_that_began_before_it() {
        let inside = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let t = {
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
        while !inside.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let done = Arc::new(AtomicBool::new(false));
        let waiter = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                synchronize();
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!done.load(Ordering::SeqCst), "returned while a section was open");
        release.store(true, Ordering::SeqCst);
        waiter.join().unwrap();
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        // With nothing in flight it returns at once.
        synchronize();
    }
}
