//! [`Arc::get_mut`] without its compare-and-swap, for hot paths that ask
//! whether they hold the only reference on every call (the IOAS's small
//! map and unmap ask it of their `Pages`: a locked instruction each, twice
//! per map and unmap pair, where this costs two plain loads).

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// `&mut` to the value if `arc` is its only reference: no other `Arc` and
/// no `Weak`. `Arc::get_mut` locks the weak count to exclude a `Weak`
/// being upgraded or made meanwhile; neither can happen here once the
/// counts say 1 and 0: both start from an `Arc`, and the only one is
/// `arc`, which the caller holds mutably for as long as the result lives.
#[inline]
pub fn arc_get_mut<T>(arc: &mut Arc<T>) -> Option<&mut T> {
    if Arc::strong_count(arc) != 1 || Arc::weak_count(arc) != 0 {
        return None;
    }
    // Pairs with the release decrement of whoever dropped the last other
    // reference: its use of the value happens before ours.
    fence(Ordering::Acquire);
    // SAFETY: no other `Arc` or `Weak` of the allocation exists and none
    // can be made while `arc` is mutably borrowed (see above), so nothing
    // else reaches the value while the returned borrow lives: the
    // condition under which `Arc::get_mut` hands out the same reference.
    Some(unsafe { &mut *(Arc::as_ptr(arc) as *mut T) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sole_reference_gets_it() {
        let mut a = Arc::new(5u32);
        *arc_get_mut(&mut a).unwrap() += 1;
        assert_eq!(*a, 6);
        let b = Arc::clone(&a);
        assert!(arc_get_mut(&mut a).is_none());
        drop(b);
        let w = Arc::downgrade(&a);
        assert!(arc_get_mut(&mut a).is_none());
        drop(w);
        assert_eq!(arc_get_mut(&mut a).copied(), Some(6));
        // Across threads: the other thread's last use happens before ours.
        let mut c = Arc::new(std::sync::Mutex::new(0u64));
        let d = Arc::clone(&c);
        std::thread::spawn(move || *d.lock().unwrap() = 7).join().unwrap();
        assert_eq!(*arc_get_mut(&mut c).unwrap().get_mut().unwrap(), 7);
    }
}
