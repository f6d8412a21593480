//! dma-bufs iommufd imports with `IOMMU_IOAS_MAP_FILE` (7.3,
//! `iopt_alloc_dmabuf_pages` and `iopt_revoke_notify` in pages.c).
//!
//! Model. A [`DmaBuf`] is one physically contiguous range of memory an
//! exporter hands out as a file: the kernel selftest's buffer
//! (`IOMMU_TEST_OP_DMABUF_GET`) or a slice of a VFIO device's BAR
//! (`VFIO_DEVICE_FEATURE_DMA_BUF`, peer-to-peer DMA). Here the memory is a
//! range of a memfd (the buffer's own, or the BAR's), and an import is a
//! [`Pages`] over that range, so domains map the same frames the exporter
//! uses; dma-buf imports are never charged against `RLIMIT_MEMLOCK`.
//!
//! Revocation: the exporter may take its memory back at any time
//! (`dma_buf_invalidate_mappings`). Every import made before then is
//! revoked for good: its areas stay in their IOAS, but no domain maps them
//! any more (now or later) and `IOMMU_IOAS_NOIOMMU_GET_PA` refuses them
//! (`EINVAL`). While the exporter says revoked, a new import fails with
//! `ENODEV`. Note that every invalidation revokes the existing imports,
//! also one that makes the buffer available again: that is how the kernel's
//! `iopt_revoke_notify` behaves.
//!
//! CPU access through an access object (`IOMMU_TEST_OP_ACCESS_RW`, pins) to
//! a dma-buf area is `EINVAL`, as the kernel's `iopt_pages_rw_access` and
//! `iopt_area_add_access` refuse it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_abi::Errno;

use crate::ioas::Ioas;
use crate::pages::Pages;

/// Who exported a dma-buf: which `*_iommufd_map` hook answers for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exporter {
    /// `IOMMU_TEST_OP_DMABUF_GET`: `iommufd_test_dma_buf_iommufd_map`.
    Selftest,
    /// `VFIO_DEVICE_FEATURE_DMA_BUF`: `vfio_pci_dma_buf_iommufd_map`.
    VfioPci,
}

/// One imported range of a dma-buf: the pages and the IOAS they are mapped
/// in.
struct Import {
    pages: Weak<Pages>,
    ioas: Weak<Ioas>,
}

/// An exported dma-buf.
pub struct DmaBuf {
    exporter: Exporter,
    memory: Arc<OwnedFd>,
    /// Byte offset of the buffer (its first range) in `memory`.
    offset: u64,
    size: u64,
    /// Physical ranges it is made of (iommufd imports one only).
    nr_ranges: u32,
    /// The exporter's state (`priv->revoked` of the selftest's).
    revoked: AtomicBool,
    imports: Mutex<Vec<Import>>,
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf").field("exporter", &self.exporter).field("size", &self.size).finish()
    }
}

impl DmaBuf {
    /// A dma-buf of `size` bytes at byte `offset` of memfd `memory`.
    pub fn new(exporter: Exporter, memory: Arc<OwnedFd>, offset: u64, size: u64) -> Arc<DmaBuf> {
        Self::new_ranges(exporter, memory, offset, size, 1)
    }

    /// A dma-buf of `nr_ranges` physical ranges, `size` bytes in all, the
    /// first at byte `offset` of memfd `memory`.
    pub fn new_ranges(exporter: Exporter, memory: Arc<OwnedFd>, offset: u64, size: u64, nr_ranges: u32) -> Arc<DmaBuf> {
        Arc::new(DmaBuf {
            exporter,
            memory,
            offset,
            size,
            nr_ranges,
            revoked: AtomicBool::new(false),
            imports: Mutex::default(),
        })
    }

    /// `IOMMU_TEST_OP_DMABUF_GET` (`iommufd_test_dmabuf_get`): `length`
    /// rounded up to pages, zeroed; 0 or more than 512 pages is `EINVAL`.
    pub fn selftest(length: u64) -> Result<Arc<DmaBuf>, Errno> {
        let ps = crate::pages::page_size();
        let length = length.checked_next_multiple_of(ps).ok_or(Errno::EINVAL)?;
        if length == 0 || length > 512 * ps {
            return Err(Errno::EINVAL);
        }
        let memory = uiommufd_memory::sys::memfd(c"uiommufd-dmabuf", length)?;
        Ok(DmaBuf::new(Exporter::Selftest, Arc::new(memory), 0, length))
    }

    pub fn exporter(&self) -> Exporter {
        self.exporter
    }

    /// `dmabuf->size`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The exporter has taken the memory back.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    fn imports(&self) -> MutexGuard<'_, Vec<Import>> {
        self.imports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set the exporter's state and invalidate every import
    /// (`dma_buf_invalidate_mappings`, whose importers revoke whatever
    /// they hold; see the module doc).
    pub fn set_revoked(&self, revoked: bool) {
        self.revoked.store(revoked, Ordering::Release);
        let imports: Vec<(Arc<Pages>, Arc<Ioas>)> = {
            let mut list = self.imports();
            list.retain(|i| i.pages.strong_count() != 0);
            list.iter().filter_map(|i| Some((i.pages.upgrade()?, i.ioas.upgrade()?))).collect()
        };
        for (pages, ioas) in imports {
            ioas.iopt().revoke_pages(&pages);
        }
    }

    /// `iopt_alloc_dmabuf_pages`: pages over bytes `[start, start + length)`
    /// of the buffer (the caller has checked `length != 0` and that the
    /// range does not wrap). A range reaching past the buffer is `EINVAL`;
    /// a revoked buffer `ENODEV`; one of several ranges `EOPNOTSUPP`.
    pub fn import(self: &Arc<Self>, start: u64, length: u64, writable: bool) -> crate::Result<Pages> {
        use crate::error::ErrnoExt;
        let ps = crate::pages::page_size();
        if self.size <= start + (length - 1) || length / ps >= u64::from(u32::MAX) {
            return Err(crate::error::einval("the range reaches past the dma-buf"));
        }
        if self.revoked() {
            return Err(crate::error::enodev("the dma-buf is revoked"));
        }
        if self.nr_ranges != 1 {
            return Err(crate::error::eopnotsupp("only single-range dma-bufs can be imported"));
        }
        let fd = self.memory.as_raw_fd();
        let info = uiommufd_memory::filemap::inspect(fd).ctx("looking at the dma-buf's memory")?;
        let pages =
            Pages::new_file(fd, &info, self.offset + start, length, writable, crate::account::AccountMode::None)?;
        Ok(pages.into_dmabuf(Arc::clone(self)))
    }

    /// Remember that `pages` (an import) is mapped in `ioas`, for
    /// revocation.
    pub fn track(&self, pages: &Arc<Pages>, ioas: &Arc<Ioas>) {
        let mut list = self.imports();
        list.retain(|i| i.pages.strong_count() != 0);
        list.push(Import { pages: Arc::downgrade(pages), ioas: Arc::downgrade(ioas) });
    }
}
