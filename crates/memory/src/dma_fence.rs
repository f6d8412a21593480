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
//! block on the releaser: no lock a releaser may hold while it waits is
//! taken inside a section.
//!
//! [`Published`] uses the same grace periods for what every request looks
//! up (a device's domain): readers borrow it for their section without a
//! lock or a reference count; a replaced value is dropped after a grace
//! period.

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
