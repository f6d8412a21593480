//! Pinned pages of one user or file mapping (`pages.c`, `struct iopt_pages`).
//!
//! A [`Pages`] is a logical array of `npages` pages from a *source*
//! (`enum iopt_address_type`): the program's memory from the page-aligned
//! user address `uptr` (`IOMMU_IOAS_MAP`), or a file from the page-aligned
//! byte offset `uptr` (`IOMMU_IOAS_MAP_FILE`). Areas of one or more IOASes
//! take slices of it (at sub-page byte granularity); HWPT domains and
//! accesses that use a slice make its pages *users*. A page with at least one user is pinned
//! exactly once (one pin in [`uiommufd_memory::frames`]) whatever the number
//! of users, and is released with its last user. Pages nobody uses are not
//! pinned at all: mapping into an IOAS without domains pins nothing, as in
//! the kernel.
//!
//! Storage: `segs` maps index ranges to pinned frames, split so that each
//! segment has one user count and physically contiguous frames. Indices are
//! page numbers within this `Pages`; `last` is inclusive, `end` exclusive.
//!
//! Sources. User pages are pinned in place ([`frames::pin_user`]). They
//! belong to the process that mapped them (the kernel's `source_mm`): the
//! thread's current process when the `Pages` is made
//! ([`user::current_process`]; another process when the shim's fork server
//! runs a forked child's `IOMMU_IOAS_MAP`). Every pin and every fast-path
//! copy runs in that process's memory, whoever triggers it: pages of a
//! process that has exited fail to pin with `EFAULT` (its pages pinned
//! while it lived stay pinned), and another live process's pages pin only
//! where they are shared with this one at the same address (see
//! `frames::pin_user`). A file's
//! pages are pinned out of an engine mapping of the file
//! ([`uiommufd_memory::filemap`]), made when the `Pages` is; only shmem and
//! hugetlbfs files can be pinned (the kernel's `memfd_pin_folios`), other
//! files are accepted and fail every pin with `EINVAL`. Everything above
//! the pins (domains, accesses, copies) sees frames either way; only the
//! access fast path differs: a file has no user address to copy through,
//! so accesses to file pages always pin for the copy, as the kernel's do.
//!
//! Accounting: pinned pages are charged against `RLIMIT_MEMLOCK` (see
//! [`crate::account`]) when they are pinned and credited when released; a
//! charge that would exceed the limit fails with `ENOMEM` and pins nothing.
//! File pages are charged exactly like user pages. Each `Pages` remembers
//! the process (and user) it is charged to; [`change_process`] moves the
//! charges of file pages to the calling process.
//!
//! Lock: `state` is the kernel's `pages->mutex`, the innermost engine lock
//! (the frame registry lock nests inside it). Only [`change_process`] holds
//! several at once, taken in address order; `owner` is one atomic word.
//! Whoever holds the only reference (`&mut Pages`: a `Pages` being built,
//! or one only its IOAS's area held, changed under that IOAS's lock) uses
//! [`Pages::add_user_exclusive`] / [`Pages::remove_user_exclusive`], which
//! take no lock at all.
//!
//! Storage: the pin records are a [`SmallMap`] of segments: the usual
//! single segment is kept inline in the `Pages` (no node storage at all),
//! more go to an arena map whose nodes a `Pages` that an IOAS recycles
//! ([`Pages::recycle`]) keeps; pinning and releasing the usual single
//! segment allocates nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uiommufd_memory::filemap::{FileInfo, FileKind, FileMapping};
/// The frame table pages are pinned into (for tools and benchmarks).
pub use uiommufd_memory::frames;
use uiommufd_memory::frames::PinnedRuns;
use uiommufd_memory::inline_vec::InlineVec;
use uiommufd_memory::slabmap::SmallMap;
use uiommufd_memory::user;

use crate::account::{Account, AccountMode};
use crate::error::{einval, eoverflow, eperm, ErrnoExt, Result};

/// Host page size and shift (the unit of pinning).
#[inline]
pub fn page_size() -> u64 {
    uiommufd_memory::page_size() as u64
}

#[inline]
pub(crate) fn page_shift() -> u32 {
    frames::page_shift()
}

/// A pinned, physically contiguous segment with a uniform user count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seg {
    /// Exclusive end index.
    end: u64,
    pfn: u64,
    users: u32,
}

/// The pin records: which pages are pinned, to which frames, by how many
/// users. A [`SmallMap`]: the usual `Pages` holds one segment, inline.
#[derive(Debug, Default)]
struct State {
    /// start index -> segment. Disjoint.
    segs: SmallMap<Seg>,
    npinned: u64,
}

/// Physical frames of a slice: `npages` pages from index `index` have
/// consecutive PFNs starting at `pfn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PfnRun {
    pub index: u64,
    pub pfn: u64,
    pub npages: u64,
}

/// The frames of a range of pages: usually one run, kept inline.
pub type PfnRuns = InlineVec<PfnRun, 2>;

/// Where the pages come from (`enum iopt_address_type`).
#[derive(Debug)]
enum Source {
    /// The memory at `Pages::uptr` of a process: this one (`None`) or
    /// another one (the kernel's `source_mm`).
    User(Option<user::Process>),
    /// A file from byte `Pages::uptr`, through the engine's mapping of it
    /// (`None`: a file whose pages cannot be pinned). Boxed: most `Pages`
    /// are user memory, and each mapping has its own.
    File(Option<Box<FileMapping>>),
}

/// Who the pinned pages are charged to (the kernel's `source_mm`,
/// `source_task` and `source_user`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    pid: u32,
    uid: u32,
}

impl Owner {
    /// The thread's current process (see [`user::current_process`]) and
    /// this process's real user, as the kernel takes them at each map
    /// (`current->mm`, `current_user()`). Both are cached, so a map makes
    /// no system call for them: the pid per process (forgotten in a forked
    /// child), the uid until the process changes its user IDs (the shim
    /// sees each `setuid`; see [`uiommufd_memory::sys::getuid`]).
    #[inline]
    fn current() -> Owner {
        let pid = user::current_process().map_or_else(uiommufd_memory::sys::pid, |p| p.pid());
        Owner { pid, uid: uiommufd_memory::sys::getuid() }
    }

    /// Nobody (pages that are not charged).
    const NONE: Owner = Owner { pid: 0, uid: 0 };

    /// The owner of pages in mode `mode`.
    #[inline]
    fn for_mode(mode: AccountMode) -> Owner {
        // Only charged pages look at their owner (`charged_elsewhere`).
        if mode == AccountMode::None {
            Owner::NONE
        } else {
            Owner::current()
        }
    }
}

/// An [`Owner`] in one word, read and replaced whole (no lock: every map
/// and unmap of charged pages reads it).
#[derive(Debug)]
struct OwnerCell(AtomicU64);

impl OwnerCell {
    fn new(o: Owner) -> OwnerCell {
        OwnerCell(AtomicU64::new(Self::pack(o)))
    }

    fn pack(o: Owner) -> u64 {
        (u64::from(o.pid) << 32) | u64::from(o.uid)
    }

    #[inline]
    fn get(&self) -> Owner {
        let v = self.0.load(Ordering::Acquire);
        Owner { pid: (v >> 32) as u32, uid: v as u32 }
    }

    fn set(&self, o: Owner) {
        self.0.store(Self::pack(o), Ordering::Release);
    }

    #[inline]
    fn set_mut(&mut self, o: Owner) {
        *self.0.get_mut() = Self::pack(o);
    }
}

/// `struct iopt_pages`.
#[derive(Debug)]
pub struct Pages {
    /// Page-aligned address of index 0: the user address, or for a file
    /// the byte offset in the file (what IOVA allocation aligns to).
    uptr: u64,
    npages: u64,
    writable: bool,
    mode: AccountMode,
    account: Account,
    source: Source,
    owner: OwnerCell,
    state: Mutex<State>,
    /// An import of this dma-buf ([`crate::dmabuf`]), if it is one.
    dmabuf: Option<Arc<crate::dmabuf::DmaBuf>>,
    /// The dma-buf import was revoked: no domain maps it any more.
    revoked: std::sync::atomic::AtomicBool,
}

impl Pages {
    /// `iopt_alloc_pages`: describe `length` bytes at `uptr`.
    pub fn new(uptr: u64, length: u64, writable: bool, mode: AccountMode) -> Result<Pages> {
        let (base, npages) = Self::user_geometry(uptr, length)?;
        Ok(Pages::with_source(base, npages, writable, mode, Source::User(user::current_process())))
    }

    /// The checks of [`Pages::new`], in its order: the page-aligned start
    /// and the number of pages.
    #[inline]
    fn user_geometry(uptr: u64, length: u64) -> Result<(u64, u64)> {
        if uiommufd_memory::failpoint::should_fail() {
            return Err(crate::error::enomem("injected failure: pages allocation"));
        }
        let ps = page_size();
        if length == 0 || length > u64::MAX - ps {
            return Err(einval("length must be non-zero"));
        }
        uptr.checked_add(length).ok_or(crate::error::eoverflow("user range wraps"))?;
        let base = uptr & !(ps - 1);
        // `div_ceil` by a power of two, without the division.
        let bytes = length + (uptr - base);
        Ok((base, (bytes >> ps.trailing_zeros()) + u64::from(bytes & (ps - 1) != 0)))
    }

    /// Whether these pages, once nobody else holds them, may be reused by
    /// [`Pages::recycle`] (user pages with nothing pinned; their source is
    /// only a process handle).
    #[inline]
    pub fn recyclable(&mut self) -> bool {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        matches!(self.source, Source::User(_)) && self.dmabuf.is_none() && st.npinned == 0 && st.segs.is_empty()
    }

    /// [`Pages::new`] into an unused `Pages` (one [`recyclable`] said yes
    /// to), keeping its pin-record storage: the map path's steady state
    /// allocates nothing. On failure the pages are left recyclable.
    ///
    /// [`recyclable`]: Pages::recyclable
    #[inline]
    pub fn recycle(&mut self, uptr: u64, length: u64, writable: bool, mode: AccountMode) -> Result<()> {
        debug_assert!(self.recyclable());
        let (base, npages) = Self::user_geometry(uptr, length)?;
        self.uptr = base;
        self.npages = npages;
        self.writable = writable;
        self.mode = mode;
        self.account = Account::new(mode);
        // User pages (see `recyclable`): only the process changes.
        if let Source::User(p) = &mut self.source {
            *p = user::current_process();
        }
        self.owner.set_mut(Owner::for_mode(mode));
        Ok(())
    }

    /// `iopt_alloc_file_pages`: describe `length` bytes from byte `start` of
    /// the file behind `fd`, which [`uiommufd_memory::filemap::inspect`]
    /// described as `info`. In the kernel's order: a writable mapping needs
    /// a descriptor open for writing and a file not sealed against writes
    /// (`EPERM`); then the length rules of [`Pages::new`] (`EINVAL`). A
    /// shmem or hugetlbfs file is mapped into the engine here (its errors
    /// are the engine's divergences, see `filemap`).
    pub fn new_file(
        fd: i32,
        info: &FileInfo,
        start: u64,
        length: u64,
        writable: bool,
        mode: AccountMode,
    ) -> Result<Pages> {
        if writable && !info.writable {
            return Err(eperm("the file is not open for writing"));
        }
        if writable && info.write_sealed {
            return Err(eperm("the file is sealed against writes"));
        }
        let ps = page_size();
        if length == 0 || length > u64::MAX - ps {
            return Err(einval("length must be non-zero"));
        }
        start.checked_add(length - 1).ok_or(eoverflow("file range wraps"))?;
        let base = start & !(ps - 1);
        let npages = (length + (start - base)).div_ceil(ps);
        let mapping = match info.kind {
            FileKind::Shmem | FileKind::Hugetlb { .. } => {
                Some(Box::new(FileMapping::new(fd, base, npages, writable, info.kind).ctx("mapping the file")?))
            }
            FileKind::DmaBuf { .. } | FileKind::Other => None,
        };
        Ok(Pages::with_source(base, npages, writable, mode, Source::File(mapping)))
    }

    fn with_source(uptr: u64, npages: u64, writable: bool, mode: AccountMode, source: Source) -> Pages {
        Pages {
            uptr,
            npages,
            writable,
            mode,
            account: Account::new(mode),
            source,
            owner: OwnerCell::new(Owner::for_mode(mode)),
            state: Mutex::default(),
            dmabuf: None,
            revoked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// These pages as an import of dma-buf `buf`.
    pub fn into_dmabuf(mut self, buf: Arc<crate::dmabuf::DmaBuf>) -> Pages {
        self.dmabuf = Some(buf);
        self
    }

    /// The dma-buf these pages import, if they do.
    pub fn dmabuf(&self) -> Option<&Arc<crate::dmabuf::DmaBuf>> {
        self.dmabuf.as_ref()
    }

    /// A dma-buf import whose exporter took the memory back
    /// (`iopt_dmabuf_revoked`).
    pub fn revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Mark a dma-buf import revoked (the caller has unmapped it from every
    /// domain).
    pub(crate) fn set_revoked(&self) {
        self.revoked.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The page-aligned address of index 0: a user address, or a file
    /// offset for file pages.
    pub fn uptr(&self) -> u64 {
        self.uptr
    }

    /// Whether the pages come from a file (`IOPT_ADDRESS_FILE`).
    pub fn is_file(&self) -> bool {
        matches!(self.source, Source::File(_))
    }

    pub fn npages(&self) -> u64 {
        self.npages
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Which counter its pinned pages are charged to (for tools:
    /// `uiommufd inspect`).
    pub fn account_mode(&self) -> AccountMode {
        self.mode
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of pin-record storage beyond the structure itself.
    pub fn pin_record_bytes(&self) -> usize {
        self.lock().segs.capacity_bytes()
    }

    /// Number of pages currently pinned.
    pub fn npinned(&self) -> u64 {
        self.lock().npinned
    }

    /// Add a user to pages `[first, last]`, pinning those that had none.
    /// Returns the frames of the range. On failure nothing changes.
    pub fn add_user(&self, first: u64, last: u64) -> Result<PfnRuns> {
        debug_assert!(first <= last && last < self.npages);
        let mut st = self.lock();
        self.add_user_locked(&mut st, first, last)
    }

    /// [`add_user`](Self::add_user) on pages nobody else can reach (a
    /// `Pages` being built): no lock taken.
    pub fn add_user_exclusive(&mut self, first: u64, last: u64) -> Result<PfnRuns> {
        debug_assert!(first <= last && last < self.npages);
        if self.state.get_mut().unwrap_or_else(|p| p.into_inner()).segs.is_empty() {
            // The usual case (an area filled into its first domain), with
            // the state left in place: pin, then record.
            let runs = self.pin_first(first, last)?;
            Self::record_first(self.state.get_mut().unwrap_or_else(|p| p.into_inner()), &runs);
            return Ok(runs);
        }
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut st = std::mem::take(st);
        let r = self.add_user_locked(&mut st, first, last);
        *self.state.get_mut().unwrap_or_else(|p| p.into_inner()) = st;
        r
    }

    fn add_user_locked(&self, st: &mut State, first: u64, last: u64) -> Result<PfnRuns> {
        if st.segs.is_empty() {
            return self.add_first_user(st, first, last);
        }
        // The next usual case: exactly one segment is the range (an area
        // filled into its second domain).
        if let Some(seg) = st.segs.get_mut(first) {
            if seg.end == last + 1 {
                seg.users += 1;
                let mut out = PfnRuns::new();
                out.push(PfnRun { index: first, pfn: seg.pfn, npages: seg.end - first });
                return Ok(out);
            }
        }
        // Pin the holes first: that is the part that can fail.
        let holes = holes(&st.segs, first, last + 1);
        let mut pinned: Vec<(u64, PinnedRuns)> = Vec::new();
        let total: u64 = holes.iter().map(|(s, e)| e - s).sum();
        if total != 0 {
            self.charge(total)?;
        }
        for &(s, e) in &holes {
            match self.pin_source(s, e - s) {
                Ok(runs) => pinned.push((s, runs)),
                Err(err) => {
                    for (_, runs) in &pinned {
                        for r in runs.iter() {
                            frames::unpin(r.pfn, r.npages);
                        }
                    }
                    if total != 0 {
                        self.uncharge(total);
                    }
                    return Err(err);
                }
            }
        }
        // Nothing can fail from here on.
        split_at(&mut st.segs, first);
        split_at(&mut st.segs, last + 1);
        for k in st.segs.keys_in(first, last) {
            if let Some(seg) = st.segs.get_mut(k) {
                seg.users += 1;
            }
        }
        for (s, runs) in pinned {
            let mut idx = s;
            for r in runs.iter() {
                st.segs.insert(idx, Seg { end: idx + r.npages, pfn: r.pfn, users: 1 });
                idx += r.npages;
            }
        }
        st.npinned += total;
        let out = runs_of(&st.segs, first, last);
        merge_around(&mut st.segs, first, last + 1);
        Ok(out)
    }

    /// [`add_user`](Self::add_user) when nothing is pinned yet (the usual
    /// case: an area filled into its first domain): pin the range, record
    /// it with one user, hand the frames back in the pinning's own vector.
    fn add_first_user(&self, st: &mut State, first: u64, last: u64) -> Result<PfnRuns> {
        let runs = self.pin_first(first, last)?;
        Self::record_first(st, &runs);
        Ok(runs)
    }

    /// The pinning half of [`add_first_user`](Self::add_first_user):
    /// charge and pin `[first, last]`, uncharging again on failure.
    #[inline(always)]
    fn pin_first(&self, first: u64, last: u64) -> Result<PfnRuns> {
        let total = last - first + 1;
        self.charge(total)?;
        // The map path's steady state: our own pages, released last into
        // the frame registry's hot table, taken back without its lock.
        if let Source::User(None) = self.source {
            let va = self.uptr + (first << page_shift());
            if let Some(pfn) = frames::repin_user(va, total, self.writable) {
                return Ok(PfnRuns::one(PfnRun { index: first, pfn, npages: total }));
            }
        }
        let pinned = match self.pin_source(first, total) {
            Ok(runs) => runs,
            Err(err) => {
                self.uncharge(total);
                return Err(err);
            }
        };
        // Runs as pinned are already merged where frames continue.
        if let [r] = &pinned[..] {
            return Ok(PfnRuns::one(PfnRun { index: first, pfn: r.pfn, npages: r.npages }));
        }
        let mut out = PfnRuns::new();
        let mut idx = first;
        for r in pinned.iter() {
            out.push(PfnRun { index: idx, pfn: r.pfn, npages: r.npages });
            idx += r.npages;
        }
        Ok(out)
    }

    /// The recording half: `runs`, just pinned, become segments with one
    /// user each (nothing else is in `segs` to merge with).
    #[inline(always)]
    fn record_first(st: &mut State, runs: &PfnRuns) {
        if let ([r], SmallMap::Empty) = (&runs[..], &st.segs) {
            st.segs = SmallMap::One(r.index, Seg { end: r.index + r.npages, pfn: r.pfn, users: 1 });
            st.npinned += r.npages;
            return;
        }
        for r in runs.iter() {
            st.segs.insert(r.index, Seg { end: r.index + r.npages, pfn: r.pfn, users: 1 });
            st.npinned += r.npages;
        }
    }

    /// Pin `npages` pages from index `first` out of the source.
    #[inline(always)]
    fn pin_source(&self, first: u64, npages: u64) -> Result<PinnedRuns> {
        let pin = || frames::pin_user(self.uptr + (first << page_shift()), npages, self.writable);
        match &self.source {
            // Our own pages asked for by our own thread (the usual case):
            // nothing to switch.
            Source::User(None) if user::current_process().is_none() => pin().ctx("pinning user pages"),
            Source::User(process) => user::with_process(*process, pin).ctx("pinning user pages"),
            // The engine's own mapping of the file, whoever asks.
            Source::File(Some(m)) => user::with_process(None, || m.pin(first, npages))
                .map(|r| std::iter::once(r).collect())
                .ctx("pinning file pages"),
            Source::File(None) => Err(einval("only shmem and hugetlbfs file pages can be pinned")),
        }
    }

    /// Drop a user from pages `[first, last]`; pages left without users are
    /// unpinned and uncharged. Never fails.
    pub fn remove_user(&self, first: u64, last: u64) {
        let base = self.user_base();
        let mut st = self.lock();
        let released = Self::remove_user_locked(&mut st, base, first, last);
        drop(st);
        if released != 0 {
            self.uncharge(released);
        }
    }

    /// [`remove_user`](Self::remove_user) on pages nobody else can reach:
    /// no lock taken.
    pub fn remove_user_exclusive(&mut self, first: u64, last: u64) {
        let base = self.user_base();
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let released = match Self::remove_only_user(st, base, first, last) {
            Some(n) => n,
            None => Self::remove_user_locked(st, base, first, last),
        };
        if released != 0 {
            self.uncharge(released);
        }
    }

    /// [`add_user_exclusive`](Self::add_user_exclusive) `users` times over
    /// (at least once): an area filled into that many domains at once
    /// pins once and counts them all.
    #[inline]
    pub fn add_users_exclusive(&mut self, first: u64, last: u64, users: u32) -> Result<PfnRuns> {
        let runs = self.add_user_exclusive(first, last)?;
        if users > 1 {
            let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
            match &mut st.segs {
                // The usual case: the range is the one segment, just pinned.
                SmallMap::One(k, seg) if *k == first && seg.end == last + 1 => seg.users += users - 1,
                _ => {
                    for added in 1..users {
                        // The range is pinned now: only counts change.
                        if let Err(e) = self.add_user_exclusive(first, last) {
                            self.remove_users_exclusive(first, last, added);
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(runs)
    }

    /// [`remove_user_exclusive`](Self::remove_user_exclusive) `users`
    /// times over.
    #[inline]
    pub fn remove_users_exclusive(&mut self, first: u64, last: u64, users: u32) {
        if users > 1 {
            let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
            match &mut st.segs {
                SmallMap::One(k, seg) if *k == first && seg.end == last + 1 && seg.users >= users => {
                    seg.users -= users - 1;
                }
                _ => {
                    for _ in 1..users {
                        self.remove_user_exclusive(first, last);
                    }
                }
            }
        }
        self.remove_user_exclusive(first, last);
    }

    /// The small map's pin: [`add_users_exclusive`](Self::add_users_exclusive)
    /// on pages nothing is pinned in yet (a `Pages` just made or recycled),
    /// with the frames handed back as one run when they are one (the usual
    /// case) and `None` otherwise ([`pfns`](Self::pfns) has them then).
    ///
    /// The steady state (our own pages, released last into the frame
    /// registry's hot table) re-pins first and charges after, giving the pin
    /// back if the charge fails: the same outcome as charging first (pages
    /// not charged are not pinned, the run is as cached as before), without
    /// a second injection point (the re-pin is not tried while injection is
    /// armed).
    #[inline(always)]
    pub fn pin_fresh_exclusive(&mut self, first: u64, last: u64, users: u32) -> Result<Option<PfnRun>> {
        debug_assert!(users >= 1 && first <= last && last < self.npages);
        let total = last - first + 1;
        let fresh = matches!(self.state.get_mut().unwrap_or_else(|p| p.into_inner()).segs, SmallMap::Empty);
        if let (true, Source::User(None)) = (fresh, &self.source) {
            let va = self.uptr + (first << page_shift());
            if let Some(pfn) = frames::repin_user(va, total, self.writable) {
                if let Err(e) = self.charge(total) {
                    frames::unpin_user(va, pfn, total);
                    return Err(e);
                }
                let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
                // `fresh`: what is replaced is `Empty` (`&mut self` since
                // then), which owns nothing; not dropping it spares the
                // test and call of its drop.
                let old = std::mem::replace(&mut st.segs, SmallMap::One(first, Seg { end: last + 1, pfn, users }));
                debug_assert!(matches!(old, SmallMap::Empty));
                std::mem::forget(old);
                st.npinned += total;
                return Ok(Some(PfnRun { index: first, pfn, npages: total }));
            }
        }
        self.pin_fresh_exclusive_slow(first, last, users)
    }

    #[inline(never)]
    fn pin_fresh_exclusive_slow(&mut self, first: u64, last: u64, users: u32) -> Result<Option<PfnRun>> {
        let runs = self.add_users_exclusive(first, last, users)?;
        Ok(match &runs[..] {
            [r] => Some(*r),
            _ => None,
        })
    }

    /// The small unmap's unpin: [`remove_users_exclusive`](Self::remove_users_exclusive)
    /// of the `users` users of `[first, last]`; then whether the pages are
    /// [`recyclable`](Self::recyclable). The usual case, the range being
    /// the one segment with exactly those users, is one unpin.
    #[inline(always)]
    pub fn unpin_users_exclusive(&mut self, first: u64, last: u64, users: u32) -> bool {
        let base = self.user_base();
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let SmallMap::One(k, seg) = st.segs {
            if k == first && seg.end == last + 1 && seg.users == users {
                let n = seg.end - first;
                st.segs = SmallMap::Empty;
                st.npinned -= n;
                let recyclable = st.npinned == 0 && base.is_some() && self.dmabuf.is_none();
                Self::unpin_seg(base, first, seg.pfn, n);
                self.uncharge(n);
                return recyclable;
            }
        }
        self.unpin_users_exclusive_slow(first, last, users)
    }

    #[inline(never)]
    fn unpin_users_exclusive_slow(&mut self, first: u64, last: u64, users: u32) -> bool {
        self.remove_users_exclusive(first, last, users);
        self.recyclable()
    }

    /// The user address of index 0 for pages pinned in place (what lets
    /// [`frames::unpin_user`] find a run kept hot), `None` for a file's.
    fn user_base(&self) -> Option<u64> {
        matches!(self.source, Source::User(_)).then_some(self.uptr)
    }

    /// Unpin `npages` frames from `pfn` recorded for index `index`.
    #[inline(always)]
    fn unpin_seg(base: Option<u64>, index: u64, pfn: u64, npages: u64) {
        match base {
            Some(b) => frames::unpin_user(b + (index << page_shift()), pfn, npages),
            None => frames::unpin(pfn, npages),
        }
    }

    /// The usual case of [`remove_user_locked`](Self::remove_user_locked):
    /// the range is exactly the one segment, inline, whose only user goes
    /// (an area unfilled from its last domain). `None` if it is not that.
    #[inline(always)]
    fn remove_only_user(st: &mut State, base: Option<u64>, first: u64, last: u64) -> Option<u64> {
        let SmallMap::One(k, seg) = st.segs else { return None };
        if k != first || seg.end != last + 1 || seg.users != 1 {
            return None;
        }
        st.segs = SmallMap::Empty;
        Self::unpin_seg(base, first, seg.pfn, seg.end - first);
        st.npinned -= seg.end - first;
        Some(seg.end - first)
    }

    /// Drop the user; returns the pages released (to credit). `base`: see
    /// [`user_base`](Self::user_base).
    fn remove_user_locked(st: &mut State, base: Option<u64>, first: u64, last: u64) -> u64 {
        if let Some(n) = Self::remove_only_user(st, base, first, last) {
            return n;
        }
        let unpin = |index: u64, pfn: u64, npages: u64| Self::unpin_seg(base, index, pfn, npages);
        // Or exactly one segment of several.
        if let Some(seg) = st.segs.get_mut(first) {
            if seg.end == last + 1 && seg.users == 1 {
                let seg = st.segs.remove(first).expect("found");
                unpin(first, seg.pfn, seg.end - first);
                st.npinned -= seg.end - first;
                return seg.end - first;
            }
            // Or one of several users of exactly that segment.
            if seg.end == last + 1 && seg.users > 1 {
                seg.users -= 1;
                return 0;
            }
        }
        split_at(&mut st.segs, first);
        split_at(&mut st.segs, last + 1);
        let mut released = 0u64;
        for k in st.segs.keys_in(first, last) {
            let Some(seg) = st.segs.get_mut(k) else { continue };
            seg.users = seg.users.saturating_sub(1);
            if seg.users == 0 {
                let seg = st.segs.remove(k).expect("present");
                unpin(k, seg.pfn, seg.end - k);
                released += seg.end - k;
            }
        }
        st.npinned -= released;
        merge_around(&mut st.segs, first, last + 1);
        released
    }

    /// Charge `npages` newly pinned pages: to the mode's counter (`ENOMEM`
    /// past `RLIMIT_MEMLOCK`, nothing changed) and, when charged, to the
    /// owner's `VmPin` (and `VmLck`). Uncharged pages (`CAP_IPC_LOCK`)
    /// only pass the failure point, inlined; charged ones make one call.
    #[inline(always)]
    fn charge(&self, npages: u64) -> Result<()> {
        if self.mode == AccountMode::None {
            return Account::failpoint();
        }
        self.charge_charged(npages)
    }

    #[inline(never)]
    fn charge_charged(&self, npages: u64) -> Result<()> {
        self.account.charge(npages)?;
        self.vm_pages_charged(npages as i64);
        Ok(())
    }

    /// Give back a [`charge`](Self::charge) of `npages`.
    #[inline(always)]
    fn uncharge(&self, npages: u64) {
        if self.mode != AccountMode::None {
            self.uncharge_charged(npages);
        }
    }

    #[inline(never)]
    fn uncharge_charged(&self, npages: u64) {
        self.account.credit(npages);
        self.vm_pages_charged(-(npages as i64));
    }

    /// Mirror a charge (`npages > 0`) or a credit in the owner's `VmPin`
    /// (every charged mode) and `VmLck` (process mode) as `/proc/PID/status`
    /// shows them ([`uiommufd_memory::vmstat`]). Pages that are not charged
    /// (`CAP_IPC_LOCK`) are not shown (the kernel counts them in `VmPin`).
    #[inline(always)]
    fn vm_pages(&self, npages: i64) {
        if self.mode != AccountMode::None {
            self.vm_pages_charged(npages);
        }
    }

    #[inline(always)]
    fn vm_pages_charged(&self, npages: i64) {
        let pid = self.owner.get().pid;
        let locked = if self.mode == AccountMode::Process { npages } else { 0 };
        uiommufd_memory::vmstat::add(pid, npages, locked);
    }

    /// The frames of `[first, last]`, which must all have users.
    pub fn pfns(&self, first: u64, last: u64) -> PfnRuns {
        runs_of(&self.lock().segs, first, last)
    }

    /// Whether every page of `[first, last]` is pinned.
    pub fn is_pinned(&self, first: u64, last: u64) -> bool {
        holes(&self.lock().segs, first, last + 1).is_empty()
    }

    /// The slow path's access to one page of user memory, as the kernel's
    /// (`iopt_pages_rw_page`): the page pinned afresh from the program's
    /// current mapping at its address, not the page the areas pinned, so
    /// after the program unmapped the range it is `EFAULT`, and after it
    /// mapped other memory there it is that memory. The failure point
    /// comes first, with the kernel's `EINVAL`; the pin has none.
    fn rw_user_page(
        &self,
        process: Option<user::Process>,
        index: u64,
        offset: u64,
        data: &mut [u8],
        write: bool,
    ) -> Result<()> {
        if uiommufd_memory::failpoint::should_fail() {
            return Err(einval("injected failure"));
        }
        let va = self.uptr + (index << page_shift());
        let runs =
            user::with_process(process, || frames::pin_user_unfailing(va, 1, write)).ctx("pinning a user page")?;
        let Some(r) = runs.first().copied() else {
            return Err(einval("pinning one page gave none"));
        };
        let pa = (r.pfn << page_shift()) + offset;
        let res = if write { frames::write_phys(pa, data) } else { frames::read_phys(pa, data) };
        frames::unpin_user(va, r.pfn, 1);
        res.ctx("accessing a user page")
    }

    /// `iopt_pages_rw_access`: copy between `data` and the pages' bytes from
    /// `start_byte`. The fast path goes straight to the user's mapping, as
    /// the kernel's `copy_to/from_user` path does (it does not look at pins);
    /// the slow path pins the pages for the copy and goes through frames:
    /// within one page of user memory, the page at its address now
    /// (`rw_user_page`), else the pages as `Pages`
    /// pinned them. File pages have no user mapping and always take the
    /// slow path through what is pinned, and so do pages of a process that
    /// has exited (`mmget_not_zero` failing).
    pub fn rw(&self, start_byte: u64, data: &mut [u8], write: bool, slow: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if write && !self.writable {
            return Err(eperm("pages are not writable"));
        }
        if let (false, Source::User(process)) = (slow, &self.source) {
            if process.is_none_or(|p| p.alive()) {
                let addr = self.uptr + start_byte;
                return user::with_process(*process, || {
                    if write {
                        user::copy_to_user(addr, data).ctx("writing user memory")
                    } else {
                        user::copy_from_user(data, addr).ctx("reading user memory")
                    }
                });
            }
        }
        let ps = page_size();
        let first = start_byte / ps;
        let last = (start_byte + data.len() as u64 - 1) / ps;
        if let (true, Source::User(process)) = (first == last, &self.source) {
            if process.is_none_or(|p| p.alive()) {
                return self.rw_user_page(*process, first, start_byte % ps, data, write);
            }
        }
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

/// `iommufd_ioas_change_process` for the pages of every area: charge their
/// pinned pages to the calling process, all or nothing. The caller has
/// checked that they are all file pages (user pages belong to the address
/// space that mapped them and cannot move).
///
/// As the kernel does: pages charged to another process (or, in user mode,
/// to another user) have their pinned counts added up per accounting mode;
/// the totals are charged to the caller first (`ENOMEM` past the limit,
/// nothing changed), then each old charge is dropped; every `Pages` then
/// belongs to the caller. Every pages lock is held meanwhile (in address
/// order, like the kernel's ordered IOAS locks), so no pin comes or goes.
///
/// Divergence: the engine lives inside one process and its counters are
/// that process's. Pages only belong to another process when the engine
/// was inherited through `fork`; their charges then sit in this copy of the
/// counters, so moving them changes no total here, and no other process
/// sees its charge go away. For pages already charged to the caller (the
/// usual case) nothing moves, as in the kernel.
pub fn change_process(all: &[Arc<Pages>]) -> Result<()> {
    let mut list: Vec<&Pages> = all.iter().map(|p| &**p).collect();
    list.sort_by_key(|p| *p as *const Pages as usize);
    list.dedup_by_key(|p| *p as *const Pages as usize);
    let now = Owner::current();
    let states: Vec<MutexGuard<'_, State>> = list.iter().map(|p| p.lock()).collect();
    let moving: Vec<bool> = list.iter().map(|p| p.charged_elsewhere(now)).collect();
    let modes = [AccountMode::User, AccountMode::Process];
    let mut totals = [0u64; 2];
    for ((p, st), &m) in list.iter().zip(&states).zip(&moving) {
        if let (true, Some(i)) = (m, modes.iter().position(|&x| x == p.mode)) {
            totals[i] += st.npinned;
        }
    }
    for i in 0..modes.len() {
        if totals[i] == 0 {
            continue;
        }
        if let Err(e) = Account::new(modes[i]).charge(totals[i]) {
            for j in 0..i {
                Account::new(modes[j]).credit(totals[j]);
            }
            return Err(e);
        }
    }
    for ((p, st), &m) in list.iter().zip(&states).zip(&moving) {
        if m && st.npinned != 0 {
            p.account.credit(st.npinned);
            // The pinned (and, in process mode, locked) pages leave the old
            // owner's counters for the caller's.
            p.vm_pages(-(st.npinned as i64));
        }
        p.owner.set(now);
        if m && st.npinned != 0 {
            p.vm_pages(st.npinned as i64);
        }
    }
    Ok(())
}

impl Pages {
    /// `need_charge_update`: whether the pinned pages are charged to
    /// someone other than `now`.
    fn charged_elsewhere(&self, now: Owner) -> bool {
        let owner = self.owner.get();
        match self.mode {
            AccountMode::None => false,
            AccountMode::Process => owner.pid != now.pid,
            // The user's counter also moves with the process's pinned_vm.
            AccountMode::User => owner.uid != now.uid || owner.pid != now.pid,
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // Every user releases its pages before the last area goes; anything
        // left is a bug upstream, which must not leak pins.
        let st = std::mem::take(&mut *self.lock());
        for (s, seg) in st.segs.iter() {
            frames::unpin(seg.pfn, seg.end - s);
        }
        if st.npinned != 0 {
            self.uncharge(st.npinned);
        }
    }
}

/// Uncovered `[start, end)` pieces of `[from, to)`.
fn holes(segs: &SmallMap<Seg>, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur = from;
    if to <= from {
        return out;
    }
    let begin = segs.prev(from).map_or(from, |(k, _)| k);
    for (s, seg) in segs.range(begin, to - 1) {
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
fn split_at(segs: &mut SmallMap<Seg>, at: u64) {
    let Some((s, &seg)) = segs.prev_below(at) else { return };
    if seg.end > at {
        segs.insert(s, Seg { end: at, ..seg });
        segs.insert(at, Seg { end: seg.end, pfn: seg.pfn + (at - s), users: seg.users });
    }
}

/// Re-merge neighbours in and around `[from, to)` that continue each other.
fn merge_around(segs: &mut SmallMap<Seg>, from: u64, to: u64) {
    let begin = segs.prev_below(from).map_or(from, |(k, _)| k);
    let keys = segs.keys_in(begin, to);
    let mut prev: Option<u64> = None;
    for k in keys {
        let Some(&cur) = segs.get(k) else { continue };
        if let Some(p) = prev {
            let ps = *segs.get(p).expect("kept");
            if ps.end == k && ps.pfn + (k - p) == cur.pfn && ps.users == cur.users {
                segs.remove(k);
                segs.insert(p, Seg { end: cur.end, ..ps });
                continue;
            }
        }
        prev = Some(k);
    }
}

fn runs_of(segs: &SmallMap<Seg>, first: u64, last: u64) -> PfnRuns {
    let mut out = PfnRuns::new();
    let begin = segs.prev(first).map_or(first, |(k, _)| k);
    for (s, seg) in segs.range(begin, last) {
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
    fn several_users_at_once_count_like_one_at_a_time() {
        let mut b = buf(8);
        let va = aligned(&mut b);
        let mut p = Pages::new(va, 4 * page_size(), true, AccountMode::None).unwrap();
        // The usual case: one segment, three users (three domains).
        let runs = p.add_users_exclusive(0, 3, 3).unwrap();
        assert_eq!((runs.len(), runs[0].npages), (1, 4));
        assert_eq!((p.npinned(), frames::pin_count(va)), (4, 1));
        p.remove_user_exclusive(0, 3);
        p.remove_users_exclusive(0, 3, 1);
        assert_eq!((p.npinned(), frames::pin_count(va)), (4, 1));
        p.remove_user_exclusive(0, 3);
        assert_eq!((p.npinned(), frames::pin_count(va)), (0, 0));
        // Beside other segments: the general path, the same counts.
        p.add_user_exclusive(0, 1).unwrap();
        p.add_users_exclusive(1, 3, 2).unwrap();
        p.remove_users_exclusive(1, 3, 2);
        assert_eq!(
            (p.npinned(), frames::pin_count(va + page_size()), frames::pin_count(va + 2 * page_size())),
            (2, 1, 0)
        );
        p.remove_users_exclusive(0, 1, 1);
        assert_eq!((p.npinned(), frames::pin_count(va)), (0, 0));
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

    /// The map path's steady state: a `Pages` pinned, released and pinned
    /// again gets the same frames back (the frame registry's cache of
    /// released runs), and between the two nothing reads as pinned.
    #[test]
    fn exclusive_repin_keeps_its_frames_and_reads_unpinned_between() {
        let mut b = buf(2);
        let va = aligned(&mut b);
        let mut p = Pages::new(va, page_size(), true, AccountMode::None).unwrap();
        let a = p.add_user_exclusive(0, 0).unwrap();
        assert_eq!(frames::pin_count(va), 1);
        p.remove_user_exclusive(0, 0);
        assert_eq!(frames::pin_count(va), 0);
        assert_eq!(frames::pfn_at(va), None);
        assert_eq!(p.npinned(), 0);
        // A pin elsewhere meanwhile does not take the released frame.
        let other = frames::pin_user(va + page_size(), 1, false).unwrap();
        assert_ne!(other[0].pfn, a[0].pfn);
        assert!(p.recyclable());
        p.recycle(va, page_size(), true, AccountMode::None).unwrap();
        let again = p.add_user_exclusive(0, 0).unwrap();
        assert_eq!(again, a);
        assert_eq!(frames::pfn_at(va), Some(a[0].pfn));
        p.remove_user_exclusive(0, 0);
        frames::unpin(other[0].pfn, 1);
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

    #[test]
    fn pages_of_another_process_pin_while_it_lives() {
        let ps = page_size() as usize;
        // SAFETY: a fresh shared anonymous mapping owned by the test.
        let va = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * ps,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(va, libc::MAP_FAILED);
        let va = va as u64;
        user::copy_to_user(va, b"from the parent").unwrap();
        // SAFETY: the child only calls pause(), async-signal-safe, until
        // it is killed below.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            loop {
                // SAFETY: as above.
                unsafe { libc::pause() };
            }
        }
        let child = user::Process::of(pid as u32).unwrap();
        let p = user::with_process(Some(child), || Pages::new(va, 2 * page_size(), true, AccountMode::None)).unwrap();
        let q = user::with_process(Some(child), || Pages::new(va, page_size(), true, AccountMode::None)).unwrap();
        // Pinned from this thread (current process: us): the child's pages.
        let runs = p.add_user(0, 0).unwrap();
        assert_eq!(frames::pin_count(va), 1);
        let mut got = [0u8; 15];
        p.rw(0, &mut got, false, false).unwrap();
        assert_eq!(&got, b"from the parent");
        // SAFETY: killing and reaping our child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        // What was pinned stays reachable; nothing more can be pinned.
        got = [0; 15];
        p.rw(0, &mut got, false, false).unwrap();
        assert_eq!(&got, b"from the parent");
        assert_eq!(p.add_user(1, 1).unwrap_err().errno, crate::Errno::EFAULT);
        assert_eq!(q.add_user(0, 0).unwrap_err().errno, crate::Errno::EFAULT);
        assert_eq!(q.rw(0, &mut got, false, false).unwrap_err().errno, crate::Errno::EFAULT);
        assert_eq!(p.pfns(0, 0), runs);
        p.remove_user(0, 0);
        assert_eq!(frames::pin_count(va), 0);
        // SAFETY: our mapping.
        unsafe { libc::munmap(va as *mut libc::c_void, 2 * ps) };
    }
}
