//! Driver regions user space maps through the iommufd file
//! (`struct iommufd_mmap` in `ictx->mt_mmap`, `iommufd_fops_mmap`).
//!
//! A vIOMMU driver may expose memory (the mock's loopback page, a
//! Tegra241 VINTF page) to user space: it registers the region with
//! [`MmapSpace::alloc`] and reports the offset; `mmap(2)` of the iommufd at
//! exactly that offset and length maps it. Each context has its own space:
//! offsets are the lowest free page-aligned range above the first page
//! (the kernel skips it so that 0 is never a valid offset).
//!
//! The memory is a memfd the driver hands over; the region holds it while
//! its owner lives. A mapped region keeps its owner from being destroyed
//! (`EBUSY`, as the kernel's vma holds `owner->users`): the engine cannot
//! see `munmap`, so it asks the program's map whether the memfd is still
//! mapped ([`MmapSpace::mapped_by`]). A driver that keeps the memory mapped
//! itself (registers it serves, such as a Tegra241 VINTF page) names that
//! view, which is not the program's.

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_abi::Errno;

use crate::viommu::Viommu;

/// One registered region.
struct Region {
    length: u64,
    /// The memory; `None` for a region a driver reserved without any
    /// (its registers are not memory here): `mmap` is `ENODEV`.
    fd: Option<Arc<OwnedFd>>,
    /// The driver's own mapping of the memory, if it has one.
    driver_view: Option<Range<u64>>,
    owner: Weak<Viommu>,
}

impl Region {
    /// Whether the program maps this region's memory: a mapping of its
    /// memfd in `maps` other than the driver's own.
    fn mapped_in(&self, maps: &[uiommufd_memory::vma::Vma]) -> bool {
        let Some((dev, ino)) = self.fd.as_ref().and_then(|fd| dev_ino(fd.as_raw_fd())) else { return false };
        maps.iter().any(|v| {
            v.dev == dev
                && v.inode == ino
                && !self.driver_view.as_ref().is_some_and(|d| d.start <= v.start && v.end <= d.end)
        })
    }
}

/// A context's mmap offset space.
#[derive(Default)]
pub struct MmapSpace {
    regions: Mutex<BTreeMap<u64, Region>>,
}

impl std::fmt::Debug for MmapSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapSpace").field("regions", &self.lock().len()).finish()
    }
}

/// What `mmap(2)` of the iommufd maps: the region's memfd, from offset 0.
pub struct MmapTarget {
    pub fd: Arc<OwnedFd>,
    pub owner: Arc<Viommu>,
}

impl MmapSpace {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Region>> {
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `_iommufd_alloc_mmap`: register `length` bytes (a non-zero multiple
    /// of the page size, `EINVAL` otherwise) of `fd` for `owner`; returns
    /// the offset to pass to `mmap`.
    pub fn alloc(
        &self,
        length: u64,
        fd: Option<OwnedFd>,
        driver_view: Option<Range<u64>>,
        owner: Weak<Viommu>,
    ) -> Result<u64, Errno> {
        let ps = crate::pages::page_size();
        if length == 0 || !length.is_multiple_of(ps) {
            return Err(Errno::EINVAL);
        }
        let mut regions = self.lock();
        // Regions of destroyed owners are gone.
        regions.retain(|_, r| r.owner.strong_count() != 0);
        let mut start = ps;
        for (&off, r) in regions.iter() {
            if off.checked_sub(start).is_some_and(|gap| gap >= length) {
                break;
            }
            start = start.max(off + r.length);
        }
        start.checked_add(length).ok_or(Errno::ENOSPC)?;
        regions.insert(start, Region { length, fd: fd.map(Arc::new), driver_view, owner });
        Ok(start)
    }

    /// `_iommufd_destroy_mmap`: forget the region at `offset`.
    pub fn destroy(&self, offset: u64) {
        self.lock().remove(&offset);
    }

    /// Forget every region of `owner`, which is being destroyed: each
    /// driver destroys its regions in its vIOMMU's destroy (the mock's
    /// `mock_viommu_destroy`, Tegra241's VINTF teardown), so the memory
    /// and its descriptor go with the vIOMMU, not at some later `alloc`.
    pub fn release_owner(&self, owner: *const Viommu) {
        self.lock().retain(|_, r| !std::ptr::eq(r.owner.as_ptr(), owner));
    }

    /// How many regions are registered (live owners or not).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no region is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The region `mmap(2)` at `offset` for `length` bytes reaches: it must
    /// be exactly a registered region of a live owner (`ENXIO` otherwise)
    /// with memory behind it (`ENODEV` otherwise).
    pub fn lookup(&self, offset: u64, length: u64) -> Result<MmapTarget, Errno> {
        let regions = self.lock();
        let (&start, r) = regions.range(..=offset).next_back().ok_or(Errno::ENXIO)?;
        if offset >= start + r.length {
            return Err(Errno::ENXIO);
        }
        if offset != start || length != r.length || r.owner.strong_count() == 0 {
            return Err(Errno::ENXIO);
        }
        let fd = r.fd.as_ref().ok_or(Errno::ENODEV)?;
        // Upgraded last and moved out: a vIOMMU whose last reference this
        // were must not be dropped under the lock its drop takes.
        let owner = r.owner.upgrade().ok_or(Errno::ENXIO)?;
        Ok(MmapTarget { fd: Arc::clone(fd), owner })
    }

    /// Whether a region of `owner` is still mapped in this process.
    pub fn mapped_by(&self, owner: &Viommu) -> bool {
        self.mapped_where(|_, r| std::ptr::eq(r.owner.as_ptr(), owner))
    }

    /// Whether the program maps the region at `offset` now.
    pub fn in_use(&self, offset: u64) -> bool {
        self.mapped_where(|&start, _| start == offset)
    }

    fn mapped_where(&self, mut which: impl FnMut(&u64, &Region) -> bool) -> bool {
        let regions = self.lock();
        let mut chosen = regions.iter().filter(|(o, r)| r.fd.is_some() && which(o, r)).peekable();
        if chosen.peek().is_none() {
            return false;
        }
        let Ok(maps) = uiommufd_memory::vma::current() else { return false };
        chosen.any(|(_, r)| r.mapped_in(&maps))
    }
}

/// The device (`major << 32 | minor`, as the map prints it) and inode of
/// descriptor `fd`.
fn dev_ino(fd: i32) -> Option<(u64, u64)> {
    let st = uiommufd_memory::sys::fstat(fd)?;
    Some(((u64::from(libc::major(st.st_dev)) << 32) | u64::from(libc::minor(st.st_dev)), st.st_ino))
}
