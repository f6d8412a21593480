//! Pinned pages of one user mapping (`pages.c`, `struct iopt_pages`).
//!
//! A [`Pages`] is a logical array of `npages` pages starting at the
//! page-aligned user address `uptr`. Areas of one or more IOASes take slices
//! of it (at sub-page byte granularity); HWPT domains and accesses that use a
//! slice make its pages *users*. A page with at least one user is pinned
//! exactly once (one pin in [`uiommufd_memory::frames`]) whatever the number
//! of users, and is released with its last user. Pages nobody uses are not
//! pinned at all: mapping into an IOAS without domains pins nothing, as in
//! the kernel.
//!
//! Storage: `segs` maps index ranges to pinned frames, split so that each
//! segment has one user count and physically contiguous frames. Indices are
//! page numbers within this `Pages`; `last` is inclusive, `end` exclusive.
//!
//! Accounting: pinned pages are charged against `RLIMIT_MEMLOCK` (see
//! [`crate::account`]) when they are pinned and credited when released; a
//! charge that would exceed the limit fails with `ENOMEM` and pins nothing.
//!
//! Lock: `state` is the kernel's `pages->mutex`, the innermost engine lock
//! (the frame registry lock nests inside it).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use uiommufd_memory::frames::{self, PinnedRun};
use uiommufd_memory::user;

use crate::account::{Account, AccountMode};
use crate::error::{einval, eperm, ErrnoExt, Result};

/// Host page size and shift (the unit of pinning).
pub fn page_size() -> u64 {
    uiommufd_memory::page_size() as u64
}

fn page_shift() -> u32 {
    frames::page_shift()
}

/// A pinned, physically contiguous segment with a uniform user count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    /// Exclusive end index.
    end: u64,
    pfn: u64,
    users: u32,
}

#[derive(Debug, Default)]
struct State {
    /// start index -> segment. Disjoint.
    segs: BTreeMap<u64, Seg>,
    npinned: u64,
}

/// Physical frames of a slice: `npages` pages from index `index` have
/// consecutive PFNs starting at `pfn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnRun {
    pub index: u64,
    pub pfn: u64,
    pub npages: u64,
}

/// `struct iopt_pages`.
#[derive(Debug)]
pub struct Pages {
    /// Page-aligned user address of index 0.
    uptr: u64,
    npages: u64,
    writable: bool,
    account: Account,
    state: Mutex<State>,
}

impl Pages {
    /// `iopt_alloc_pages`: describe `length` bytes at `uptr`.
    pub fn new(uptr: u64, length: u64, writable: bool, mode: AccountMode) -> Result<Pages> {
        let ps = page_size();
        if length == 0 || length > u64::MAX - ps {
            return Err(einval("length must be non-zero"));
        }
        uptr.checked_add(length).ok_or(crate::error::eoverflow("user range wraps"))?;
        let base = uptr & !(ps - 1);
        let npages = (length + (uptr - base)).div_ceil(ps);
        Ok(Pages { uptr: base, npages, writable, account: Account::new(mode), state: Mutex::default() })
    }

    pub fn uptr(&self) -> u64 {
        self.uptr
    }

    pub fn npages(&self) -> u64 {
        self.npages
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of pages currently pinned.
    pub fn npinned(&self) -> u64 {
        self.lock().npinned
    }

    /// Add a user to pages `[first, last]`, pinning those that had none.
    /// Returns the frames of the range. On failure nothing changes.
    pub fn add_user(&self, first: u64, last: u64) -> Result<Vec<PfnRun>> {
        debug_assert!(first <= last && last < self.npages);
        let mut st = self.lock();
        // Pin the holes first: that is the part that can fail.
        let holes = holes(&st.segs, first, last + 1);
        let mut pinned: Vec<(u64, Vec<PinnedRun>)> = Vec::new();
        let total: u64 = holes.iter().map(|(s, e)| e - s).sum();
        if total != 0 {
            self.account.charge(total)?;
        }
        for &(s, e) in &holes {
            match frames::pin_user(self.uptr + (s << page_shift()), e - s, self.writable) {
                Ok(runs) => pinned.push((s, runs)),
                Err(errno) => {
                    for (_, runs) in &pinned {
                        for r in runs {
                            frames::unpin(r.pfn, r.npages);
                        }
                    }
                    if total != 0 {
                        self.account.credit(total);
                    }
                    return Err(errno).ctx("pinning user pages");
                }
            }
        }
        // Nothing can fail from here on.
        split_at(&mut st.segs, first);
        split_at(&mut st.segs, last + 1);
        let keys: Vec<u64> = st.segs.range(first..=last).map(|(&k, _)| k).collect();
        for k in keys {
            if let Some(seg) = st.segs.get_mut(&k) {
                seg.users += 1;
            }
        }
        for (s, runs) in pinned {
            let mut idx = s;
            for r in runs {
                st.segs.insert(idx, Seg { end: idx + r.npages, pfn: r.pfn, users: 1 });
                idx += r.npages;
            }
        }
        st.npinned += total;
        let out = runs_of(&st.segs, first, last);
        merge_around(&mut st.segs, first, last + 1);
        Ok(out)
    }

    /// Drop a user from pages `[first, last]`; pages left without users are
    /// unpinned and uncharged. Never fails.
    pub fn remove_user(&self, first: u64, last: u64) {
        let mut st = self.lock();
        split_at(&mut st.segs, first);
        split_at(&mut st.segs, last + 1);
        let keys: Vec<u64> = st.segs.range(first..=last).map(|(&k, _)| k).collect();
        let mut released = 0u64;
        for k in keys {
            let Some(seg) = st.segs.get_mut(&k) else { continue };
            seg.users = seg.users.saturating_sub(1);
            if seg.users == 0 {
                let seg = st.segs.remove(&k).expect("present");
                frames::unpin(seg.pfn, seg.end - k);
                released += seg.end - k;
            }
        }
        st.npinned -= released;
        merge_around(&mut st.segs, first, last + 1);
        drop(st);
        if released != 0 {
            self.account.credit(released);
        }
    }

    /// The frames of `[first, last]`, which must all have users.
    pub fn pfns(&self, first: u64, last: u64) -> Vec<PfnRun> {
        runs_of(&self.lock().segs, first, last)
    }

    /// Whether every page of `[first, last]` is pinned.
    pub fn is_pinned(&self, first: u64, last: u64) -> bool {
        holes(&self.lock().segs, first, last + 1).is_empty()
    }

    /// `iopt_pages_rw_access`: copy between `data` and the pages' bytes from
    /// `start_byte`. The fast path goes straight to the user's mapping, as
    /// the kernel's `copy_to/from_user` path does (it does not look at pins);
    /// the slow path pins the pages for the copy and goes through frames.
    pub fn rw(&self, start_byte: u64, data: &mut [u8], write: bool, slow: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if write && !self.writable {
            return Err(eperm("pages are not writable"));
        }
        if !slow {
            let addr = self.uptr + start_byte;
            return if write {
                user::copy_to_user(addr, data).ctx("writing user memory")
            } else {
                user::copy_from_user(data, addr).ctx("reading user memory")
            };
        }
        let ps = page_size();
        let first = start_byte / ps;
        let last = (start_byte + data.len() as u64 - 1) / ps;
        let runs = self.add_user(first, last)?;
        let res = copy_runs(&runs, start_byte, data, write);
        self.remove_user(first, last);
        res
    }
}

/// Copy between `data` and the frames `runs`, starting at byte `start_byte`
/// of the pages (the first run begins at the page holding it).
pub fn copy_runs(runs: &[PfnRun], start_byte: u64, data: &mut [u8], write: bool) -> Result<()> {
    let shift = page_shift();
    let mut done = 0usize;
    for r in runs {
        if done == data.len() {
            break;
        }
        let run_start = r.index << shift;
        let run_end = (r.index + r.npages) << shift;
        let from = (start_byte + done as u64).max(run_start);
        if from >= run_end {
            continue;
        }
        let n = ((run_end - from) as usize).min(data.len() - done);
        let pa = (r.pfn << shift) + (from - run_start);
        let chunk = &mut data[done..done + n];
        if write { frames::write_phys(pa, chunk) } else { frames::read_phys(pa, chunk) }
            .ctx("accessing pinned pages")?;
        done += n;
    }
    Ok(())
}

impl Drop for Pages {
    fn drop(&mut self) {
        // Every user releases its pages before the last area goes; anything
        // left is a bug upstream, which must not leak pins.
        let st = std::mem::take(&mut *self.lock());
        for (s, seg) in st.segs {
            frames::unpin(seg.pfn, seg.end - s);
        }
        if st.npinned != 0 {
            self.account.credit(st.npinned);
        }
    }
}

/// Uncovered `[start, end)` pieces of `[from, to)`.
fn holes(segs: &BTreeMap<u64, Seg>, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur = from;
    let begin = segs.range(..=from).next_back().map_or(from, |(&k, _)| k);
    for (&s, seg) in segs.range(begin..to) {
        if seg.end <= cur {
            continue;
        }
        if s > cur {
            out.push((cur, s));
        }
        cur = cur.max(seg.end);
        if cur >= to {
            break;
        }
    }
    if cur < to {
        out.push((cur, to));
    }
    out
}

/// Make `at` a segment boundary if it falls inside a segment.
fn split_at(segs: &mut BTreeMap<u64, Seg>, at: u64) {
    let Some((&s, &seg)) = segs.range(..at).next_back() else { return };
    if seg.end > at {
        segs.insert(s, Seg { end: at, ..seg });
        segs.insert(at, Seg { end: seg.end, pfn: seg.pfn + (at - s), users: seg.users });
    }
}

/// Re-merge neighbours in and around `[from, to)` that continue each other.
fn merge_around(segs: &mut BTreeMap<u64, Seg>, from: u64, to: u64) {
    let begin = segs.range(..from).next_back().map_or(from, |(&k, _)| k);
    let keys: Vec<u64> = segs.range(begin..=to).map(|(&k, _)| k).collect();
    let mut prev: Option<u64> = None;
    for k in keys {
        let Some(&cur) = segs.get(&k) else { continue };
        if let Some(p) = prev {
            let ps = segs[&p];
            if ps.end == k && ps.pfn + (k - p) == cur.pfn && ps.users == cur.users {
                segs.remove(&k);
                segs.insert(p, Seg { end: cur.end, ..ps });
                continue;
            }
        }
        prev = Some(k);
    }
}

fn runs_of(segs: &BTreeMap<u64, Seg>, first: u64, last: u64) -> Vec<PfnRun> {
    let mut out: Vec<PfnRun> = Vec::new();
    let begin = segs.range(..=first).next_back().map_or(first, |(&k, _)| k);
    for (&s, seg) in segs.range(begin..=last) {
        let a = s.max(first);
        let b = seg.end.min(last + 1);
        if a >= b {
            continue;
        }
        let pfn = seg.pfn + (a - s);
        if let Some(l) = out.last_mut() {
            if l.index + l.npages == a && l.pfn + l.npages == pfn {
                l.npages += b - a;
                continue;
            }
        }
        out.push(PfnRun { index: a, pfn, npages: b - a });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(pages: usize) -> Vec<u8> {
        vec![0u8; (pages + 1) * page_size() as usize]
    }

    fn aligned(v: &mut [u8]) -> u64 {
        let ps = page_size();
        (v.as_mut_ptr() as u64 + ps - 1) & !(ps - 1)
    }

    #[test]
    fn users_pin_once_and_release_with_the_last() {
        let mut b = buf(8);
        let va = aligned(&mut b);
        let p = Pages::new(va + 100, 6 * page_size(), true, AccountMode::None).unwrap();
        assert_eq!(p.npages(), 7);
        let a = p.add_user(0, 3).unwrap();
        assert_eq!(p.npinned(), 4);
        assert_eq!(frames::pin_count(va), 1);
        let b2 = p.add_user(2, 6).unwrap();
        assert_eq!(p.npinned(), 7);
        // Overlap pages share the same frame and are pinned once.
        assert_eq!(frames::pin_count(va + 2 * page_size()), 1);
        assert_eq!(a[0].pfn + 2, b2[0].pfn);
        p.remove_user(0, 3);
        // Pages 0 and 1 lost their only user; 2 and 3 keep one.
        assert_eq!(p.npinned(), 5);
        assert_eq!(frames::pin_count(va), 0);
        assert_eq!(frames::pin_count(va + 2 * page_size()), 1);
        p.remove_user(2, 6);
        assert_eq!(p.npinned(), 0);
        assert!(!p.is_pinned(2, 2));
    }

    #[test]
    fn rw_fast_and_slow_paths() {
        let mut b = buf(3);
        let va = aligned(&mut b);
        let p = Pages::new(va, 3 * page_size(), true, AccountMode::None).unwrap();
        let mut data = *b"hello world";
        let at = page_size() - 4;
        p.rw(at, &mut data, true, true).unwrap();
        let mut back = [0u8; 11];
        p.rw(at, &mut back, false, false).unwrap();
        assert_eq!(&back, b"hello world");
        assert_eq!(p.npinned(), 0, "the slow path pins only for the copy");
        let ro = Pages::new(va, page_size(), false, AccountMode::None).unwrap();
        assert_eq!(ro.rw(0, &mut back, true, false).unwrap_err().errno, crate::Errno::EPERM);
    }

    #[test]
    fn bad_memory_pins_nothing() {
        let p = Pages::new(1 << 31, 4 * page_size(), false, AccountMode::None).unwrap();
        assert_eq!(p.add_user(0, 3).unwrap_err().errno, crate::Errno::EFAULT);
        assert_eq!(p.npinned(), 0);
    }
}
