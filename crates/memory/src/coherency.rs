//! The CPU side of the DMA coherency contract, for strict mode.
//!
//! A device write with the No Snoop attribute into a domain that does not
//! force snooping may leave the CPU caches stale: on real hardware the
//! program must perform cache maintenance (a VMM executes `wbinvd` for its
//! guest) before it reads what the device wrote. The emulated memory is
//! always coherent, so such a program works here by luck and fails on the
//! real machine. Strict mode catches it: every program page that received a
//! non-coherent write is *watched* (made inaccessible with `mprotect`) until
//! [`flush_caches`], the cache-maintenance operation. A program access to a
//! watched page before that is a violation: it is recorded (and reported on
//! stderr), the page's protection is restored and the access goes on.
//! The engine's own guarded copies (further device DMA) into a watched page
//! are not violations; they take the page off the watch and the DMA path
//! watches it again after its write.
//!
//! Only pages pinned in place (the program's own pages) are watched;
//! relocated frames are no longer reachable by the program.
//!
//! Everything the fault handler calls here is async-signal-safe: a fixed
//! table of atomics, `mprotect` and `write(2)`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::sys::mm;
use crate::user::page_size;

const SLOTS: usize = 8192;
const EMPTY: u64 = 0;
const TOMBSTONE: u64 = 1;
/// Low bits of a slot: the page's protection to restore, and a presence bit.
const PRESENT: u64 = 1 << 3;
const PROT_MASK: u64 = 0x7;

#[allow(clippy::declare_interior_mutable_const)]
const SLOT_INIT: AtomicU64 = AtomicU64::new(EMPTY);
static WATCH: [AtomicU64; SLOTS] = [SLOT_INIT; SLOTS];
static WATCHED: AtomicUsize = AtomicUsize::new(0);
static STRICT: AtomicBool = AtomicBool::new(false);
static TABLE_FULL_REPORTED: AtomicBool = AtomicBool::new(false);

const MAX_RECORDS: usize = 64;
#[allow(clippy::declare_interior_mutable_const)]
const REC_INIT: AtomicU64 = AtomicU64::new(0);
static RECORDS: [AtomicU64; MAX_RECORDS] = [REC_INIT; MAX_RECORDS];
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

/// A program access to memory a non-coherent DMA write left stale in the
/// CPU caches, before the cache maintenance that would have made it safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The page accessed.
    pub page: u64,
    /// A write (which could also be clobbered by a later write-back), not a
    /// read.
    pub write: bool,
}

/// Turn strict mode on or off. Returns whether it is on: it needs the
/// guarded-access fault handler (x86-64 Linux).
pub fn set_strict(on: bool) -> bool {
    let on = on && crate::guard::available();
    STRICT.store(on, Ordering::Release);
    if !on {
        flush_caches();
    }
    on
}

/// Whether strict mode is on (also set by `UIOMMUFD_STRICT_COHERENCY=1` at
/// first use).
#[inline]
pub fn strict() -> bool {
    static ENV_READ: AtomicBool = AtomicBool::new(false);
    #[cold]
    fn read_env() {
        if !ENV_READ.swap(true, Ordering::AcqRel)
            && std::env::var_os("UIOMMUFD_STRICT_COHERENCY").is_some_and(|v| v == "1")
        {
            set_strict(true);
        }
    }
    if !ENV_READ.load(Ordering::Relaxed) {
        read_env();
    }
    STRICT.load(Ordering::Acquire)
}

fn hash(page: u64) -> usize {
    ((page >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 51) as usize % SLOTS
}

fn find(page: u64) -> Option<(usize, u64)> {
    let mut i = hash(page);
    for _ in 0..SLOTS {
        let v = WATCH[i].load(Ordering::Acquire);
        if v == EMPTY {
            return None;
        }
        if v != TOMBSTONE && v & !(PAGE_LOW_MASK) == page {
            return Some((i, v));
        }
        i = (i + 1) % SLOTS;
    }
    None
}

const PAGE_LOW_MASK: u64 = 0xfff;

/// Watch the program page at `page` (page aligned; `prot` is its current
/// protection, restored when the watch ends): a non-coherent DMA write just
/// landed there. No-op outside strict mode.
pub fn watch(page: u64, prot: i32) {
    if !strict() || page & (page_size() as u64 - 1) != 0 {
        return;
    }
    if find(page).is_none() {
        let entry = page | PRESENT | (prot as u64 & PROT_MASK);
        let mut i = hash(page);
        let mut placed = false;
        for _ in 0..SLOTS {
            let v = WATCH[i].load(Ordering::Acquire);
            if (v == EMPTY || v == TOMBSTONE)
                && WATCH[i].compare_exchange(v, entry, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                placed = true;
                break;
            }
            i = (i + 1) % SLOTS;
        }
        if !placed {
            if !TABLE_FULL_REPORTED.swap(true, Ordering::AcqRel) {
                crate::sys::write_stderr(b"uiommufd: strict coherency: watch table full; further pages unwatched\n");
            }
            return;
        }
        WATCHED.fetch_add(1, Ordering::AcqRel);
    }
    // SAFETY: the page is a program page pinned in place; while it is
    // watched every access faults into our handler, which restores `prot`.
    let _ = unsafe { mm::mprotect(page, page_size() as u64, libc::PROT_NONE) };
}

/// End the watch of slot `i` holding `v`: restore the page's protection.
/// Returns false if someone else ended it first.
fn unwatch_slot(i: usize, v: u64) -> bool {
    if WATCH[i].compare_exchange(v, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return false;
    }
    WATCHED.fetch_sub(1, Ordering::AcqRel);
    let page = v & !PAGE_LOW_MASK;
    // SAFETY: restoring the protection the page had before we watched it.
    let _ = unsafe { mm::mprotect(page, page_size() as u64, (v & PROT_MASK) as i32) };
    true
}

/// The cache maintenance operation (what `wbinvd` is to a guest): after it
/// the program may read everything devices wrote. Ends every watch.
pub fn flush_caches() {
    if WATCHED.load(Ordering::Acquire) == 0 {
        return;
    }
    for (i, slot) in WATCH.iter().enumerate() {
        let v = slot.load(Ordering::Acquire);
        if v != EMPTY && v != TOMBSTONE {
            unwatch_slot(i, v);
        }
    }
}

/// The program is about to unmap, move or discard `[va, va + len)`: the
/// watches there end (the pages leave the program).
pub fn unwatch_range(va: u64, len: u64) {
    if WATCHED.load(Ordering::Acquire) == 0 || len == 0 {
        return;
    }
    let end = va.saturating_add(len);
    for (i, slot) in WATCH.iter().enumerate() {
        let v = slot.load(Ordering::Acquire);
        if v != EMPTY && v != TOMBSTONE {
            let page = v & !PAGE_LOW_MASK;
            if page < end && page.saturating_add(page_size() as u64) > va {
                unwatch_slot(i, v);
            }
        }
    }
}

/// Number of pages being watched.
pub fn watched_pages() -> usize {
    WATCHED.load(Ordering::Acquire)
}

/// Violations since the last call (the first 64 recorded; the count is
/// exact).
pub fn take_violations() -> (u64, Vec<Violation>) {
    let n = VIOLATIONS.swap(0, Ordering::AcqRel);
    let mut out = Vec::new();
    for r in RECORDS.iter().take((n as usize).min(MAX_RECORDS)) {
        let v = r.swap(0, Ordering::AcqRel);
        if v != 0 {
            out.push(Violation { page: v & !PAGE_LOW_MASK, write: v & 1 != 0 });
        }
    }
    (n, out)
}

/// From the fault handler: a fault at `addr`. If the page is watched, end
/// the watch (so the access can be retried) and, unless the access was the
/// engine's own guarded copy (`engine`), record a violation. Returns whether
/// the fault was ours to resolve. Async-signal-safe.
pub(crate) fn on_fault(addr: u64, engine: bool, write: bool) -> bool {
    if WATCHED.load(Ordering::Acquire) == 0 {
        return false;
    }
    let page = addr & !(page_size() as u64 - 1);
    let Some((i, v)) = find(page) else { return false };
    unwatch_slot(i, v);
    if !engine {
        let n = VIOLATIONS.fetch_add(1, Ordering::AcqRel) as usize;
        if n < MAX_RECORDS {
            RECORDS[n].store(page | write as u64 | 2, Ordering::Release);
        }
        report(page, write);
    }
    true
}

/// One line on stderr, formatted without allocating.
fn report(page: u64, write: bool) {
    let mut buf = [0u8; 160];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        let k = s.len().min(buf.len() - n);
        buf[n..n + k].copy_from_slice(&s[..k]);
        n += k;
    };
    put(b"uiommufd: strict coherency: the program ");
    put(if write { b"wrote" } else { b"read" });
    put(b" page 0x");
    let mut hex = [0u8; 16];
    for (k, h) in hex.iter_mut().enumerate() {
        let d = ((page >> ((15 - k) * 4)) & 0xf) as u8;
        *h = if d < 10 { b'0' + d } else { b'a' + d - 10 };
    }
    put(&hex);
    put(b" after a non-snooped DMA write and before cache maintenance\n");
    crate::sys::write_stderr(&buf[..n]);
}
