//! Frames: the emulated physical memory behind every IOMMU mapping.
//!
//! Model. A *frame* is one host page a device may reach, named by an
//! emulated page frame number (PFN). Page tables store physical addresses
//! `pfn << PAGE_SHIFT | offset` exactly as hardware would; only this module
//! knows where a frame lives in the host address space.
//!
//! Pinning a range of the program's memory (the kernel's `pin_user_pages`)
//! turns each page into a frame *in place*: the frame's host address is the
//! program's own virtual address, so a device and the program share the
//! page with no copy. As in the kernel:
//! - a page has one frame however many times it is pinned; each pin bumps
//!   the page's pin count ([`pin_count`] is what `IOMMU_TEST_OP_MD_CHECK_REFS`
//!   reads) and the frame is released when the count returns to zero;
//! - a pinned page outlives the program's mapping of it. The preload shim
//!   calls [`before_munmap`], [`before_madvise_dontneed`] and
//!   [`around_mremap`] before the program changes its mappings; pinned pages
//!   in the affected range are then *relocated*: moved with `mremap` (the
//!   same physical pages, shared mappings stay shared) into an arena the
//!   engine owns, and their frames follow them. The program sees the range
//!   gone (or fresh zero pages after `MADV_DONTNEED`); devices keep the old
//!   pages and their contents.
//!
//! Runs. Frames are kept in *runs*: a range of pages, contiguous in the host
//! address space and in PFN space, with a pin count per page (every page of
//! a run has a count of at least one). PFNs of a new run are congruent to
//! its virtual page numbers modulo the run's size (up to 1 GiB), so memory
//! that is huge-page aligned in the program is huge-page aligned physically
//! and IOMMUs can map it with large pages, as real hardware would see it.
//!
//! Mapped frames. A file's pages (`IOMMU_IOAS_MAP_FILE`, the kernel's
//! `memfd_pin_folios`) have no address in the program; the engine maps the
//! file itself ([`crate::filemap`]) and registers pages of that mapping with
//! [`pin_mapped`]. Such a run's host address is the engine's shared mapping,
//! so device writes land in the file and every other mapping of it sees
//! them. The mapping belongs to its owner, not to this registry: releasing
//! the last pin frees nothing here, and the owner calls [`forget_mapped`]
//! before it unmaps.
//!
//! Access. Devices reach frames through [`read_phys`] / [`write_phys`]. In
//! place and mapped frames are copied with the fault-safe user copies, so a
//! program that pulled a page away behind our back (glibc's internal
//! `munmap`, which no preload can see, or a file truncated under a mapping)
//! costs an `EFAULT`, never a crash. Relocated frames are engine memory and
//! are copied directly, under the registry's read lock, which relocation and
//! release take for writing.
//!
//! Locking: one `RwLock` over the registry. It is a leaf: nothing is called
//! under it that could re-enter the engine. Every path that takes it runs
//! inside the fork gate ([`crate::forkgate`]: engine calls, the DMA
//! engines' rings, the munmap/madvise/mremap hooks here), so a forked
//! child never inherits it held.
//!
//! Lookup cache. Device copies still run under the read lock (that is what
//! keeps relocation and release from changing a frame under a copy), but
//! each thread remembers the last run it copied through, with the value of
//! a generation counter that every change to an existing run (release,
//! split, relocation, move: all go through `Registry::remove`, under the
//! write lock) bumps. A hit costs a compare instead of two tree searches; a
//! stale entry is never used, as the generation cannot move while the read
//! lock is held.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use uiommufd_abi::Errno;

use crate::sys::mm;
use crate::{user, vma};

/// First PFN handed out (4 GiB of emulated physical space below it are left
/// unused, as real machines keep low memory for other things).
const FIRST_PFN: u64 = 0x10_0000;
/// End of the emulated physical address space frames live in: 39 bits
/// (512 GiB), the narrowest host address width among the modelled IOMMUs
/// (a VT-d client unit's MGAW), so every frame address fits every model's
/// page-table entries. Page-table pages live below [`FIRST_PFN`] (the
/// `uiommufd-hw` window at 1-4 GiB).
pub const PHYS_ADDR_LIMIT: u64 = 1 << 39;
/// Largest PFN alignment we try to preserve (1 GiB of 4 KiB pages).
const MAX_CONGRUENCE_SHIFT: u32 = 18;
/// Address-space reserved for relocated frames.
const ARENA_SIZE: u64 = 1 << 40;

pub fn page_shift() -> u32 {
    crate::page_size().trailing_zeros()
}

fn page() -> u64 {
    crate::page_size() as u64
}

/// One contiguous stretch of pinned frames, as [`pin_user`] returns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedRun {
    /// Virtual address of the first page: in the program for [`pin_user`],
    /// in the engine's mapping for [`pin_mapped`].
    pub va: u64,
    /// PFN of the first page; the others follow consecutively.
    pub pfn: u64,
    pub npages: u64,
}

#[derive(Debug)]
struct Run {
    pfn: u64,
    /// Host address of the run's first page.
    host: u64,
    /// True while `host` is the program's own mapping of the pages.
    in_place: bool,
    /// True when `host` is an engine mapping owned by someone else (a
    /// file's pages, see [`pin_mapped`]).
    mapped: bool,
    pins: Vec<u32>,
}

impl Run {
    fn npages(&self) -> u64 {
        self.pins.len() as u64
    }
    fn host_end(&self) -> u64 {
        self.host + self.npages() * page()
    }
}

struct Registry {
    /// Every run, keyed by first PFN.
    by_pfn: BTreeMap<u64, Run>,
    /// In-place runs, keyed by virtual address -> first PFN.
    by_va: BTreeMap<u64, u64>,
    next_pfn: u64,
    arena: Arena,
}

/// Pages pinned in place; lets the shim's hooks return at once in programs
/// that pin nothing.
static IN_PLACE_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Bumped, under the write lock, whenever an existing run changes (see
/// [`Registry::remove`]); new runs leave it alone, as they change no
/// earlier lookup's answer.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The host side of one run, as device copies need it.
#[derive(Clone, Copy)]
struct HostRun {
    pfn: u64,
    npages: u64,
    host: u64,
    /// In place or mapped: reached through the fault-safe copies.
    guarded: bool,
}

thread_local! {
    /// The run this thread's last device copy used, with the generation it
    /// was looked up in (`u64::MAX`: none).
    static LAST_RUN: std::cell::Cell<(u64, HostRun)> = const {
        std::cell::Cell::new((u64::MAX, HostRun { pfn: 0, npages: 0, host: 0, guarded: true }))
    };
}

/// The run holding `pfn`, for a copy made under the registry's read lock
/// `reg`: from this thread's cache when no run changed since it was
/// filled (the generation only moves under the write lock, so it is
/// stable while `reg` is held), else from the tree.
#[inline]
fn host_run(reg: &Registry, pfn: u64) -> Option<HostRun> {
    let gen = GENERATION.load(Ordering::Relaxed);
    let (cached_gen, run) = LAST_RUN.with(|c| c.get());
    if cached_gen == gen && pfn.wrapping_sub(run.pfn) < run.npages {
        return Some(run);
    }
    let (&start, r) = reg.by_pfn.range(..=pfn).next_back()?;
    if pfn >= start + r.npages() {
        return None;
    }
    let run = HostRun { pfn: start, npages: r.npages(), host: r.host, guarded: r.in_place || r.mapped };
    LAST_RUN.with(|c| c.set((gen, run)));
    Some(run)
}

fn registry() -> &'static RwLock<Registry> {
    static R: OnceLock<RwLock<Registry>> = OnceLock::new();
    R.get_or_init(|| {
        RwLock::new(Registry {
            by_pfn: BTreeMap::new(),
            by_va: BTreeMap::new(),
            next_pfn: FIRST_PFN,
            arena: Arena::default(),
        })
    })
}

fn read() -> RwLockReadGuard<'static, Registry> {
    registry().read().unwrap_or_else(|p| p.into_inner())
}

fn write() -> RwLockWriteGuard<'static, Registry> {
    registry().write().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// The in-place run holding virtual address `va`, as its first PFN.
    fn in_place_at(&self, va: u64) -> Option<u64> {
        let (_, &pfn) = self.by_va.range(..=va).next_back()?;
        let run = &self.by_pfn[&pfn];
        (va < run.host_end()).then_some(pfn)
    }

    /// The run holding `pfn`, as its first PFN.
    fn run_of_pfn(&self, pfn: u64) -> Option<u64> {
        let (&start, run) = self.by_pfn.range(..=pfn).next_back()?;
        (pfn < start + run.npages()).then_some(start)
    }

    /// PFNs for a new run of `npages` pinned at `va`: congruent to `va`'s
    /// page number modulo the run's size (capped at 1 GiB). Bump allocation
    /// while the space lasts, then first fit over the gaps released runs
    /// left, so a program that pins and unpins forever never runs out.
    fn alloc_pfns(&mut self, va: u64, npages: u64) -> Result<u64, Errno> {
        let limit = PHYS_ADDR_LIMIT >> page_shift();
        let vpn = va >> page_shift();
        let shift = (63 - npages.leading_zeros()).min(MAX_CONGRUENCE_SHIFT);
        let align = 1u64 << shift;
        let want = vpn & (align - 1);
        // The first PFN at or above `from` with the wanted residue.
        let fit = |from: u64| -> Option<u64> {
            let base = (from & !(align - 1)) | want;
            if base < from {
                base.checked_add(align)
            } else {
                Some(base)
            }
        };
        if let Some(base) = fit(self.next_pfn) {
            if base.checked_add(npages).is_some_and(|end| end <= limit) {
                self.next_pfn = base + npages;
                return Ok(base);
            }
        }
        let mut from = FIRST_PFN;
        for (&start, run) in &self.by_pfn {
            if let Some(base) = fit(from) {
                if base + npages <= start {
                    return Ok(base);
                }
            }
            from = from.max(start + run.npages());
        }
        match fit(from) {
            Some(base) if base + npages <= limit => Ok(base),
            _ => Err(Errno::ENOMEM),
        }
    }

    fn insert(&mut self, run: Run) {
        if run.in_place {
            IN_PLACE_PAGES.fetch_add(run.pins.len(), Ordering::Relaxed);
            self.by_va.insert(run.host, run.pfn);
        }
        self.by_pfn.insert(run.pfn, run);
    }

    fn remove(&mut self, pfn: u64) -> Run {
        // Every change to an existing run (release, split, relocation,
        // rename) goes through here: cached lookups are stale from now on.
        GENERATION.fetch_add(1, Ordering::Relaxed);
        let run = self.by_pfn.remove(&pfn).expect("run indexed by its first PFN");
        if run.in_place {
            IN_PLACE_PAGES.fetch_sub(run.pins.len(), Ordering::Relaxed);
            self.by_va.remove(&run.host);
        }
        run
    }

    /// Split the run starting at `pfn` so that a run starts at `at`
    /// (`pfn < at < pfn + npages`).
    fn split(&mut self, pfn: u64, at: u64) {
        let mut left = self.remove(pfn);
        let k = (at - pfn) as usize;
        let right = Run {
            pfn: at,
            host: left.host + (k as u64) * page(),
            in_place: left.in_place,
            mapped: left.mapped,
            pins: left.pins.split_off(k),
        };
        self.insert(left);
        self.insert(right);
    }

    /// Ensure a run boundary at `pfn` if `pfn` falls inside a run.
    fn cut_at(&mut self, pfn: u64) {
        if let Some(start) = self.run_of_pfn(pfn) {
            if start != pfn {
                self.split(start, pfn);
            }
        }
    }

    /// Drop pages whose pin count reached zero from the run at `pfn`,
    /// releasing relocated memory they occupied.
    fn prune(&mut self, pfn: u64) {
        let pins = &self.by_pfn[&pfn].pins;
        if pins.iter().all(|&c| c == 0) {
            // The whole run goes (the usual unmap).
            let run = self.remove(pfn);
            if !run.in_place && !run.mapped {
                self.arena.release(run.host, run.npages() * page());
            }
            return;
        }
        if !pins.contains(&0) {
            return;
        }
        let run = self.remove(pfn);
        let mut i = 0usize;
        while i < run.pins.len() {
            let j =
                i + run.pins[i..].iter().position(|&c| (c == 0) != (run.pins[i] == 0)).unwrap_or(run.pins.len() - i);
            let host = run.host + i as u64 * page();
            let len = (j - i) as u64 * page();
            if run.pins[i] == 0 {
                if !run.in_place && !run.mapped {
                    self.arena.release(host, len);
                }
            } else {
                self.insert(Run {
                    pfn: run.pfn + i as u64,
                    host,
                    in_place: run.in_place,
                    mapped: run.mapped,
                    pins: run.pins[i..j].to_vec(),
                });
            }
            i = j;
        }
    }
}

/// Pin `npages` pages of the program's memory starting at page-aligned
/// `va`, for writing when `write`. Returns the frames in address order.
///
/// Fails with `EFAULT`, pinning nothing, unless the whole range is mapped
/// readable (and writable when `write`).
///
/// The memory is the thread's current process's ([`user::with_process`]).
/// Another process's pages can be pinned here only where its mapping is
/// the same shared object as ours at the same address (a `MAP_SHARED`
/// mapping inherited through `fork`, say): they are then our own pages,
/// pinned in place at our address. Private memory of another process, or
/// a process that is gone, is `EFAULT`: an engine inside this process
/// cannot reach it for a device.
pub fn pin_user(va: u64, npages: u64, write: bool) -> Result<Vec<PinnedRun>, Errno> {
    if crate::failpoint::should_fail() {
        return Err(Errno::EFAULT);
    }
    let ps = page();
    if !va.is_multiple_of(ps) {
        return Err(Errno::EINVAL);
    }
    let len = npages.checked_mul(ps).ok_or(Errno::EFAULT)?;
    let end = va.checked_add(len).ok_or(Errno::EFAULT)?;
    if npages == 0 {
        return Ok(Vec::new());
    }
    check_user_range(va, npages, write)?;
    let mut reg = self::write();
    let mut out: Vec<PinnedRun> = Vec::new();
    let mut cur = va;
    while cur < end {
        if let Some(pfn) = reg.in_place_at(cur) {
            let run = reg.by_pfn.get_mut(&pfn).expect("indexed run");
            let first = ((cur - run.host) / ps) as usize;
            let n = ((end.min(run.host_end()) - cur) / ps) as usize;
            for c in &mut run.pins[first..first + n] {
                *c += 1;
            }
            push(&mut out, PinnedRun { va: cur, pfn: run.pfn + first as u64, npages: n as u64 });
            cur += n as u64 * ps;
        } else {
            let gap_end = reg.by_va.range(cur..).next().map_or(end, |(&v, _)| v.min(end));
            let n = (gap_end - cur) / ps;
            let pfn = match reg.alloc_pfns(cur, n) {
                Ok(p) => p,
                Err(e) => {
                    drop(reg);
                    for r in &out {
                        unpin(r.pfn, r.npages);
                    }
                    return Err(e);
                }
            };
            reg.insert(Run { pfn, host: cur, in_place: true, mapped: false, pins: vec![1; n as usize] });
            push(&mut out, PinnedRun { va: cur, pfn, npages: n });
            cur = gap_end;
        }
    }
    Ok(out)
}

/// Up to this many pages (16 MiB) are checked by touching each: a few ns a
/// page once present, and it faults missing pages in as `pin_user_pages`
/// does. Larger ranges are checked against the memory map instead, whose
/// cost (tens of microseconds) does not grow with the size.
const PROBE_PAGES: u64 = 4096;

/// `EFAULT` unless every page of the range is mapped readable (and
/// writable when `write`), in the current process, and when that is
/// another one, unless it is alive and the range is the same shared
/// memory as ours (see [`pin_user`]).
fn check_user_range(va: u64, npages: u64, write: bool) -> Result<(), Errno> {
    let end = va + npages * page();
    let probe = npages <= PROBE_PAGES && crate::guard::available();
    if let Some(p) = user::current_process() {
        if !p.alive() {
            return Err(Errno::EFAULT);
        }
        vma::check_same_shared(&vma::of_process(p.pid())?, &vma::current()?, va, end, write)?;
        if !probe {
            return Ok(());
        }
        // Then fault our own pages in, as a local pin does (they are
        // shared: a write probe unshares nothing).
    } else if !probe {
        return vma::check(&vma::current()?, va, end, write).map(|_| ());
    }
    for i in 0..npages {
        let page = va + i * page();
        if write {
            user::probe_own_page_write(page)?;
        } else {
            user::probe_own_page(page)?;
        }
    }
    Ok(())
}

/// Append, merging with the previous run when frames continue it.
fn push(out: &mut Vec<PinnedRun>, r: PinnedRun) {
    if let Some(last) = out.last_mut() {
        if last.pfn + last.npages == r.pfn && last.va + last.npages * page() == r.va {
            last.npages += r.npages;
            return;
        }
    }
    out.push(r);
}

/// Drop one pin from each of `npages` frames starting at `pfn`. Frames whose
/// last pin goes are released. Unknown frames are ignored (a bug upstream
/// must not become a crash here).
pub fn unpin(pfn: u64, npages: u64) {
    if npages == 0 {
        return;
    }
    // A device request that translated to these frames before their
    // mapping went away may still be copying: let it finish before a frame
    // can be released (and its PFN reused).
    crate::dma_fence::synchronize();
    let mut reg = write();
    let end = pfn + npages;
    let mut cur = pfn;
    while cur < end {
        let Some(start) = reg.run_of_pfn(cur) else {
            // Skip to the next run.
            match reg.by_pfn.range(cur..).next() {
                Some((&s, _)) if s < end => {
                    cur = s;
                    continue;
                }
                _ => break,
            }
        };
        let run = reg.by_pfn.get_mut(&start).expect("run");
        let first = (cur - start) as usize;
        let n = (end.min(start + run.npages()) - cur) as usize;
        let mut released = false;
        for c in &mut run.pins[first..first + n] {
            *c = c.saturating_sub(1);
            released |= *c == 0;
        }
        cur += n as u64;
        // Pruning only re-indexes pages of this run, all before `cur`.
        if released {
            reg.prune(start);
        }
    }
}

/// Register `npages` pages of an engine mapping, from page-aligned `host`,
/// as new frames pinned once each (a [`crate::filemap`] pinning a file's
/// pages). The caller owns the mapping, keeps it mapped while any of these
/// frames is pinned, registers each of its pages at most once at a time,
/// and calls [`forget_mapped`] before unmapping it.
pub fn pin_mapped(host: u64, npages: u64) -> Result<PinnedRun, Errno> {
    if !host.is_multiple_of(page()) || npages == 0 {
        return Err(Errno::EINVAL);
    }
    npages.checked_mul(page()).and_then(|len| host.checked_add(len)).ok_or(Errno::EINVAL)?;
    let mut reg = write();
    let pfn = reg.alloc_pfns(host, npages)?;
    reg.insert(Run { pfn, host, in_place: false, mapped: true, pins: vec![1; npages as usize] });
    Ok(PinnedRun { va: host, pfn, npages })
}

/// The engine mapping `[host, host + len)` is going away: drop every mapped
/// frame inside it, pinned or not, so no device access can reach it again.
pub fn forget_mapped(host: u64, len: u64) {
    // As in `unpin`: in-flight requests finish before the owner unmaps.
    crate::dma_fence::synchronize();
    let end = host.saturating_add(len);
    let mut reg = write();
    let gone: Vec<u64> =
        reg.by_pfn.iter().filter(|(_, r)| r.mapped && r.host >= host && r.host < end).map(|(&p, _)| p).collect();
    for pfn in gone {
        reg.remove(pfn);
    }
}

/// How many times the page at virtual address `va` is pinned (0 if it is
/// not a frame in place).
pub fn pin_count(va: u64) -> u32 {
    let va = va & !(page() - 1);
    let reg = read();
    reg.in_place_at(va).map_or(0, |pfn| {
        let run = &reg.by_pfn[&pfn];
        run.pins[((va - run.host) / page()) as usize]
    })
}

/// The PFN of the pinned page at virtual address `va`, if it is one.
pub fn pfn_at(va: u64) -> Option<u64> {
    let va = va & !(page() - 1);
    let reg = read();
    let pfn = reg.in_place_at(va)?;
    let run = &reg.by_pfn[&pfn];
    Some(run.pfn + (va - run.host) / page())
}

/// The PFN of the frame at engine address `host` of an engine mapping
/// ([`pin_mapped`]: a file page behind `IOMMU_IOAS_MAP_FILE`), if it is one.
/// A scan of the runs: for checks, not hot paths.
pub fn mapped_pfn_at(host: u64) -> Option<u64> {
    let host = host & !(page() - 1);
    let reg = read();
    reg.by_pfn
        .values()
        .find(|r| r.mapped && r.host <= host && host < r.host_end())
        .map(|r| r.pfn + (host - r.host) / page())
}

/// How many times the frame at engine address `host` of an engine mapping
/// is pinned (0 if it is not a frame). A scan, like [`mapped_pfn_at`].
pub fn mapped_pin_count(host: u64) -> u32 {
    let host = host & !(page() - 1);
    let reg = read();
    reg.by_pfn
        .values()
        .find(|r| r.mapped && r.host <= host && host < r.host_end())
        .map_or(0, |r| r.pins[((host - r.host) / page()) as usize])
}

/// Number of frames currently pinned (all runs, all pages).
pub fn pinned_pages() -> u64 {
    read().by_pfn.values().map(|r| r.npages()).sum()
}

/// Sum of pin counts over all frames (what a leak check compares to zero).
pub fn total_pins() -> u64 {
    read().by_pfn.values().flat_map(|r| r.pins.iter()).map(|&c| c as u64).sum()
}

/// Copy from emulated physical memory at `paddr` into `buf`.
pub fn read_phys(paddr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    phys_io(paddr, buf.len(), |host, guarded, off, n| {
        let dst = &mut buf[off..off + n];
        if guarded {
            user::copy_from_own(dst, host)
        } else {
            // SAFETY: `host` lies in arena memory owned by a live relocated
            // run; the registry read lock held by phys_io keeps it mapped
            // and nothing else holds a Rust reference into it.
            unsafe { std::ptr::copy_nonoverlapping(host as *const u8, dst.as_mut_ptr(), n) };
            Ok(())
        }
    })
}

/// Copy `data` into emulated physical memory at `paddr`.
pub fn write_phys(paddr: u64, data: &[u8]) -> Result<(), Errno> {
    phys_io(paddr, data.len(), |host, guarded, off, n| {
        let src = &data[off..off + n];
        if guarded {
            user::copy_to_own(host, src)
        } else {
            // SAFETY: as in read_phys: arena memory of a live run, kept
            // mapped by the read lock.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), host as *mut u8, n) };
            Ok(())
        }
    })
}

/// Copy `len` bytes of emulated physical memory from `src` to `dst`
/// without a bounce buffer (what a DMA engine's copy does). The ranges must
/// not overlap. `EFAULT` if either end is not backed by a frame.
pub fn copy_phys(dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    let shift = page_shift();
    let reg = read();
    let host_of = |pa: u64| -> Result<(u64, u64), Errno> {
        let run = host_run(&reg, pa >> shift).ok_or(Errno::EFAULT)?;
        let off = pa - (run.pfn << shift);
        Ok((run.host + off, (run.npages << shift) - off))
    };
    let mut done = 0usize;
    while done < len {
        let (d, davail) = host_of(dst.checked_add(done as u64).ok_or(Errno::EFAULT)?)?;
        let (s, savail) = host_of(src.checked_add(done as u64).ok_or(Errno::EFAULT)?)?;
        let n = ((len - done) as u64).min(davail).min(savail) as usize;
        // Every kind of frame goes through the fault-safe copy: arena
        // frames never fault, and the copy costs the same.
        user::copy_own_to_own(d, s, n)?;
        done += n;
    }
    Ok(())
}

/// The program's own page that holds physical address `paddr`, when its
/// frame is pinned in place (`None` for relocated or file frames, which the
/// program cannot reach at that address).
pub fn program_page(paddr: u64) -> Option<u64> {
    let shift = page_shift();
    let reg = read();
    let start = reg.run_of_pfn(paddr >> shift)?;
    let run = &reg.by_pfn[&start];
    run.in_place.then(|| run.host + (((paddr >> shift) - start) << shift))
}

fn phys_io(
    paddr: u64,
    len: usize,
    mut f: impl FnMut(u64, bool, usize, usize) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let shift = page_shift();
    let reg = read();
    let mut done = 0usize;
    while done < len {
        let pa = paddr.checked_add(done as u64).ok_or(Errno::EFAULT)?;
        let run = host_run(&reg, pa >> shift).ok_or(Errno::EFAULT)?;
        let off_in_run = pa - (run.pfn << shift);
        let avail = (run.npages << shift) - off_in_run;
        let n = (len - done).min(avail as usize);
        // Only relocated frames are known to stay mapped; the others go
        // through the fault-safe copies.
        f(run.host + off_in_run, run.guarded, done, n)?;
        done += n;
    }
    Ok(())
}

/// Address space the engine owns for relocated frames: reserved once as
/// `PROT_NONE`, handed out by a bump pointer; released blocks go back to
/// `PROT_NONE` placeholders (the address space itself is not reused).
#[derive(Default)]
struct Arena {
    base: u64,
    next: u64,
}

impl Arena {
    fn reserve(&mut self) -> Result<(), Errno> {
        if self.base != 0 {
            return Ok(());
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh reservation at a kernel-chosen address.
        let base = unsafe { mm::mmap(0, ARENA_SIZE, libc::PROT_NONE, flags, -1, 0)? };
        self.base = base;
        self.next = base;
        Ok(())
    }

    /// A block of `len` bytes whose address is congruent to `like` modulo
    /// `align` (so huge pages keep their alignment).
    fn alloc(&mut self, len: u64, like: u64, align: u64) -> Result<u64, Errno> {
        self.reserve()?;
        let mut addr = (self.next & !(align - 1)) | (like & (align - 1));
        if addr < self.next {
            addr += align;
        }
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        if end > self.base + ARENA_SIZE {
            return Err(Errno::ENOMEM);
        }
        self.next = end;
        Ok(addr)
    }

    fn release(&mut self, addr: u64, len: u64) {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
        // SAFETY: `[addr, addr + len)` is arena memory of frames whose last
        // pin just went; replacing it with a placeholder frees the pages.
        let _ = unsafe { mm::mmap(addr, len, libc::PROT_NONE, flags, -1, 0) };
    }
}

/// Move every pinned page of `[va, va + len)` out of the program's way.
/// Returns the relocated ranges as `(old_va, new_host, len)`.
fn relocate(reg: &mut Registry, va: u64, len: u64) -> Result<Vec<(u64, u64, u64)>, Errno> {
    let end = va.saturating_add(len);
    let mut moved = Vec::new();
    // Collect affected in-place runs first: the loop below re-indexes them.
    let mut pieces = Vec::new();
    let first = reg.by_va.range(..=va).next_back().map_or(va, |(&v, _)| v);
    for (&v, &pfn) in reg.by_va.range(first..end) {
        let run = &reg.by_pfn[&pfn];
        let s = v.max(va);
        let e = run.host_end().min(end);
        if s < e {
            pieces.push((pfn, s, e));
        }
    }
    if pieces.is_empty() {
        return Ok(moved);
    }
    let maps = vma::current().unwrap_or_default();
    for (pfn, s, e) in pieces {
        // Isolate the affected part of the run.
        let run_host = reg.by_pfn[&pfn].host;
        let p_first = pfn + (s - run_host) / page();
        let p_end = pfn + (e - run_host) / page();
        reg.cut_at(p_first);
        reg.cut_at(p_end);
        let align = if maps.iter().any(|m| m.start <= s && s < m.end && m.hugetlb) { 1 << 30 } else { 1 << 21 };
        let dst = reg.arena.alloc(e - s, s, align)?;
        // SAFETY: `[s, e)` holds pinned pages of the program that it is
        // about to unmap; `dst` is an arena block we own. mremap moves the
        // pages (and their contents) without copying.
        unsafe { mm::mremap_fixed(s, e - s, e - s, dst)? };
        // Devices may write what they could write before; the program may
        // have left the pages read-only or inaccessible.
        // SAFETY: `dst` is ours now.
        if unsafe { mm::mprotect(dst, e - s, libc::PROT_READ | libc::PROT_WRITE) }.is_err() {
            // SAFETY: as above.
            let _ = unsafe { mm::mprotect(dst, e - s, libc::PROT_READ) };
        }
        let mut run = reg.remove(p_first);
        run.host = dst;
        run.in_place = false;
        reg.insert(run);
        moved.push((s, dst, e - s));
    }
    Ok(moved)
}

fn fast_path_clear() -> bool {
    IN_PLACE_PAGES.load(Ordering::Relaxed) == 0
}

/// The program is about to `munmap(va, len)`: keep pinned pages alive.
pub fn before_munmap(va: u64, len: u64) {
    // munmap's own checks first (unaligned, empty or wrapping: EINVAL): a
    // call that will fail must not move anything.
    if fast_path_clear() || !valid_range(va, len) {
        return;
    }
    let _gate = crate::forkgate::enter();
    let mut reg = write();
    let _ = relocate(&mut reg, va, len);
}

/// The program is about to `madvise(va, len, MADV_DONTNEED)` (or another
/// advice that discards contents). Private pinned pages keep their contents
/// for devices while the program gets fresh zero pages, as with the kernel's
/// pins; shared mappings keep their pages in both views and need nothing.
pub fn before_madvise_dontneed(va: u64, len: u64) {
    if fast_path_clear() || !valid_range(va, len) {
        return;
    }
    let _gate = crate::forkgate::enter();
    let mut reg = write();
    let Ok(maps) = vma::current() else { return };
    let end = va.saturating_add(len);
    let private: Vec<vma::Vma> = maps.into_iter().filter(|m| !m.shared && m.start < end && va < m.end).collect();
    for m in private {
        let s = m.start.max(va);
        let e = m.end.min(end);
        let Ok(moved) = relocate(&mut reg, s, e - s) else { continue };
        for (old, _, n) in moved {
            let prot = (if m.read { libc::PROT_READ } else { 0 }) | (if m.write { libc::PROT_WRITE } else { 0 });
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
            // SAFETY: `[old, old + n)` was the program's own private mapping
            // whose pages we just moved away; refilling it with zero pages is
            // what MADV_DONTNEED gives the program.
            let _ = unsafe { mm::mmap(old, n, prot, flags, -1, 0) };
        }
    }
}

/// The range checks munmap and madvise make before anything else: a
/// page-aligned start, and a length that page-aligns to a range that does
/// not wrap (an empty one, which madvise accepts, touches nothing).
fn valid_range(va: u64, len: u64) -> bool {
    let ps = page();
    let aligned = len.wrapping_add(ps - 1) & !(ps - 1);
    va.is_multiple_of(ps) && len != 0 && aligned != 0 && va.checked_add(aligned).is_some()
}

/// Wrap the program's `mremap(old, old_len, new_len, ...)`, performed by
/// `real` (which returns the new address or an error). Pinned pages beyond
/// `new_len` are relocated first (they are about to be unmapped); pinned
/// pages that move with the mapping keep their frames at the new address.
pub fn around_mremap(
    old: u64,
    old_len: u64,
    new_len: u64,
    real: impl FnOnce() -> Result<u64, Errno>,
) -> Result<u64, Errno> {
    if fast_path_clear() {
        return real();
    }
    let _gate = crate::forkgate::enter();
    let mut reg = write();
    let ps = page();
    // PAGE_ALIGN as the kernel computes it: a length within a page of the
    // top wraps to 0 (which mremap then refuses, or for old_len takes as
    // "duplicate").
    let old_len = old_len.wrapping_add(ps - 1) & !(ps - 1);
    let new_len = new_len.wrapping_add(ps - 1) & !(ps - 1);
    // A range past the top of the address space is no mapping: mremap
    // refuses it, and nothing of ours can be in it.
    let (Some(_), Some(_)) = (old.checked_add(old_len), old.checked_add(new_len)) else {
        drop(reg);
        return real();
    };
    let mut tail = Vec::new();
    if new_len < old_len {
        tail = relocate(&mut reg, old + new_len, old_len - new_len).unwrap_or_default();
    }
    let res = real();
    match res {
        Ok(new) if new != old => {
            let keep = old_len.min(new_len);
            let firsts: Vec<(u64, u64)> = reg.by_va.range(old..old + keep).map(|(&v, &p)| (v, p)).collect();
            for (v, pfn) in firsts {
                let mut run = reg.remove(pfn);
                run.host = v - old + new;
                reg.insert(run);
            }
        }
        Ok(_) => {}
        Err(_) => {
            // Put the tail back where the program still expects it.
            for (orig, host, n) in tail {
                // SAFETY: moving our arena block back into the hole it came
                // from, which the failed mremap left untouched.
                if unsafe { mm::mremap_fixed(host, n, n, orig) }.is_ok() {
                    let pfns: Vec<u64> = reg
                        .by_pfn
                        .iter()
                        .filter(|(_, r)| !r.in_place && !r.mapped && r.host >= host && r.host < host + n)
                        .map(|(&p, _)| p)
                        .collect();
                    for pfn in pfns {
                        let mut run = reg.remove(pfn);
                        run.host = run.host - host + orig;
                        run.in_place = true;
                        reg.insert(run);
                    }
                }
            }
        }
    }
    res
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tests share the process-wide registry: serialize them.
    pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    struct Map(u64, u64);

    impl Map {
        fn new(pages: u64, flags: i32) -> Map {
            let len = pages * page();
            // SAFETY: a fresh anonymous mapping.
            let p = unsafe { mm::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, flags | libc::MAP_ANONYMOUS, -1, 0) }
                .unwrap();
            Map(p, len)
        }
        fn set(&self, off: u64, b: u8) {
            user::copy_to_user(self.0 + off, &[b]).unwrap();
        }
        fn get(&self, off: u64) -> Result<u8, Errno> {
            let mut b = [0u8];
            user::copy_from_user(&mut b, self.0 + off).map(|_| b[0])
        }
    }

    fn phys(run: &PinnedRun, page_idx: u64) -> u64 {
        (run.pfn + page_idx) << page_shift()
    }

    #[test]
    fn pin_twice_same_frame_and_counts() {
        let _g = SERIAL.lock().unwrap();
        let m = Map::new(4, libc::MAP_PRIVATE);
        let a = pin_user(m.0, 4, true).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(pin_count(m.0), 1);
        let b = pin_user(m.0 + page(), 2, false).unwrap();
        assert_eq!(b, vec![PinnedRun { va: m.0 + page(), pfn: a[0].pfn + 1, npages: 2 }]);
        assert_eq!(pin_count(m.0 + page()), 2);
        assert_eq!(pfn_at(m.0 + 2 * page() + 7), Some(a[0].pfn + 2));
        unpin(b[0].pfn, 2);
        assert_eq!(pin_count(m.0 + page()), 1);
        unpin(a[0].pfn, 4);
        assert_eq!(pin_count(m.0), 0);
        assert_eq!(pfn_at(m.0), None);
    }

    #[test]
    fn efault_pins_nothing() {
        let _g = SERIAL.lock().unwrap();
        let m = Map::new(4, libc::MAP_PRIVATE);
        // SAFETY: unmapping the second half of our own mapping.
        unsafe { libc::munmap((m.0 + 2 * page()) as *mut _, (2 * page()) as usize) };
        let before = total_pins();
        assert_eq!(pin_user(m.0, 4, false), Err(Errno::EFAULT));
        assert_eq!(total_pins(), before);
        // A read-only mapping cannot be pinned for writing.
        // SAFETY: changing protection of our own mapping.
        unsafe { libc::mprotect(m.0 as *mut _, page() as usize, libc::PROT_READ) };
        assert_eq!(pin_user(m.0, 1, true), Err(Errno::EFAULT));
        let r = pin_user(m.0, 1, false).unwrap();
        unpin(r[0].pfn, 1);
    }

    #[test]
    fn device_io_reaches_program_memory() {
        let _g = SERIAL.lock().unwrap();
        let m = Map::new(2, libc::MAP_PRIVATE);
        let r = pin_user(m.0, 2, true).unwrap();
        write_phys(phys(&r[0], 0) + page() - 2, b"abcd").unwrap();
        assert_eq!(m.get(page() - 2).unwrap(), b'a');
        assert_eq!(m.get(page() + 1).unwrap(), b'd');
        m.set(5, 0x5a);
        let mut b = [0u8; 1];
        read_phys(phys(&r[0], 0) + 5, &mut b).unwrap();
        assert_eq!(b[0], 0x5a);
        // Beyond the run: not a frame.
        assert_eq!(read_phys(phys(&r[0], 2), &mut b), Err(Errno::EFAULT));
        unpin(r[0].pfn, 2);
        assert_eq!(read_phys(phys(&r[0], 0), &mut b), Err(Errno::EFAULT));
    }

    #[test]
    fn pinned_pages_survive_munmap() {
        let _g = SERIAL.lock().unwrap();
        let m = Map::new(3, libc::MAP_PRIVATE);
        m.set(page() + 3, 42);
        let r = pin_user(m.0 + page(), 1, true).unwrap();
        before_munmap(m.0, m.1);
        // SAFETY: unmapping our own mapping (after the hook, as the shim does).
        assert_eq!(unsafe { libc::munmap(m.0 as *mut _, m.1 as usize) }, 0);
        assert_eq!(m.get(page() + 3), Err(Errno::EFAULT), "program no longer sees it");
        let mut b = [0u8; 1];
        read_phys(phys(&r[0], 0) + 3, &mut b).unwrap();
        assert_eq!(b[0], 42, "device still sees the old contents");
        write_phys(phys(&r[0], 0), &[7]).unwrap();
        // New memory at the same address is not the pinned frame.
        // SAFETY: mapping fresh memory where ours was.
        let again = unsafe {
            mm::mmap(
                m.0,
                m.1,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        }
        .unwrap();
        assert_eq!(again, m.0);
        assert_eq!(m.get(page()).unwrap(), 0);
        assert_eq!(pin_count(m.0 + page()), 0);
        unpin(r[0].pfn, 1);
        assert_eq!(read_phys(phys(&r[0], 0), &mut b), Err(Errno::EFAULT));
    }

    /// Lengths the program controls, past the top of the address space:
    /// the hooks neither overflow (a panic under overflow checks) nor move
    /// pinned pages for a call the kernel refuses (EINVAL).
    #[test]
    fn hooks_take_any_length() {
        let _g = SERIAL.lock().unwrap();
        let m = Map::new(2, libc::MAP_PRIVATE);
        m.set(3, 9);
        let r = pin_user(m.0, 1, true).unwrap();
        for len in [u64::MAX, u64::MAX - page() + 2, u64::MAX - m.0 + 1] {
            before_munmap(m.0, len);
            before_madvise_dontneed(m.0, len);
            let res = around_mremap(m.0, len, page(), || Err(Errno::EINVAL));
            assert_eq!(res, Err(Errno::EINVAL));
            let res = around_mremap(m.0, page(), len, || Err(Errno::EINVAL));
            assert_eq!(res, Err(Errno::EINVAL));
            assert_eq!(m.get(3), Ok(9), "the program still has its page");
            assert_eq!(pin_count(m.0), 1, "and it is still the pinned one");
        }
        // Unaligned: munmap refuses it too.
        before_munmap(m.0 + 1, page());
        assert_eq!(pin_count(m.0), 1);
        unpin(r[0].pfn, 1);
    }

    #[test]
    fn shared_pages_stay_shared_after_munmap() {
        let _g = SERIAL.lock().unwrap();
        // Two views of one shared object: pin through the first, unmap it,
        // and the device's writes still show through the second.
        let fd = {
            // SAFETY: memfd_create with a NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"frames-test".as_ptr(), 0) };
            assert!(fd >= 0);
            // SAFETY: sizing our own memfd.
            assert_eq!(unsafe { libc::ftruncate(fd, page() as i64) }, 0);
            fd
        };
        let map = |flags| {
            // SAFETY: mapping our memfd.
            unsafe { mm::mmap(0, page(), libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | flags, fd, 0) }.unwrap()
        };
        let a = map(0);
        let b = map(0);
        let r = pin_user(a, 1, true).unwrap();
        before_munmap(a, page());
        // SAFETY: unmapping our own view.
        unsafe { libc::munmap(a as *mut _, page() as usize) };
        write_phys(phys(&r[0], 0), b"z").unwrap();
        let mut got = [0u8];
        user::copy_from_user(&mut got, b).unwrap();
        assert_eq!(&got, b"z");
        unpin(r[0].pfn, 1);
        // SAFETY: closing our memfd and unmapping the second view.
        unsafe {
            libc::munmap(b as *mut _, page() as usize);
            libc::close(fd);
        }
    }

    #[test]
    fn dontneed_gives_program_zeroes_and_device_the_old_page() {
        let _g = SERIAL.lock().unwrap();
        let m = Map::new(1, libc::MAP_PRIVATE);
        m.set(0, 9);
        let r = pin_user(m.0, 1, true).unwrap();
        before_madvise_dontneed(m.0, m.1);
        // SAFETY: advising our own mapping.
        unsafe { libc::madvise(m.0 as *mut _, m.1 as usize, libc::MADV_DONTNEED) };
        assert_eq!(m.get(0).unwrap(), 0);
        let mut b = [0u8];
        read_phys(phys(&r[0], 0), &mut b).unwrap();
        assert_eq!(b[0], 9);
        unpin(r[0].pfn, 1);
    }

    #[test]
    fn mremap_move_takes_frames_along() {
        let _g = SERIAL.lock().unwrap();
        let m = Map::new(2, libc::MAP_PRIVATE);
        let r = pin_user(m.0, 2, true).unwrap();
        let new = around_mremap(m.0, m.1, page(), || {
            // SAFETY: shrinking and moving our own mapping.
            let p = unsafe { libc::mremap(m.0 as *mut _, m.1 as usize, page() as usize, libc::MREMAP_MAYMOVE) };
            if p == libc::MAP_FAILED {
                Err(Errno::ENOMEM)
            } else {
                Ok(p as u64)
            }
        })
        .unwrap();
        // First page is at `new` (moved or not), still the same frame.
        assert_eq!(pfn_at(new), Some(r[0].pfn));
        write_phys(phys(&r[0], 0), &[3]).unwrap();
        let mut b = [0u8];
        user::copy_from_user(&mut b, new).unwrap();
        assert_eq!(b[0], 3);
        // The cut-off second page is relocated but alive.
        write_phys(phys(&r[0], 1), &[4]).unwrap();
        unpin(r[0].pfn, 2);
    }

    #[test]
    fn released_pfn_space_is_reused_when_the_bump_runs_out() {
        // A private registry whose bump pointer is at the very end.
        let run = |pfn, n: u64| Run { pfn, host: 0, in_place: false, mapped: true, pins: vec![1; n as usize] };
        let limit = PHYS_ADDR_LIMIT >> page_shift();
        let mut r =
            Registry { by_pfn: BTreeMap::new(), by_va: BTreeMap::new(), next_pfn: limit - 2, arena: Arena::default() };
        r.insert(run(FIRST_PFN, 3));
        r.insert(run(FIRST_PFN + 8, 8));
        // One page: the bump still has room.
        assert_eq!(r.alloc_pfns(0x5000, 1), Ok(limit - 2));
        // Four pages congruent to VPN 4 mod 4: the gap at FIRST_PFN+4..+8.
        assert_eq!(r.alloc_pfns(0x4000, 4), Ok(FIRST_PFN + 4));
        // Two pages with residue 1 mod 2 (alloc_pfns does not insert, so
        // the gap still starts at FIRST_PFN+3).
        assert_eq!(r.alloc_pfns(0x3000, 2), Ok(FIRST_PFN + 3));
        // Too big for any gap and for the bump: ENOMEM.
        assert_eq!(r.alloc_pfns(0, limit), Err(Errno::ENOMEM));
    }

    #[test]
    fn huge_runs_are_physically_aligned_like_virtually() {
        let _g = SERIAL.lock().unwrap();
        let pages = 1024;
        let m = Map::new(pages, libc::MAP_PRIVATE);
        let r = pin_user(m.0, pages, false).unwrap();
        let mask = (1u64 << 10) - 1;
        assert_eq!(r[0].pfn & mask, (m.0 >> page_shift()) & mask);
        unpin(r[0].pfn, pages);
    }
}
