//! File-backed mappings: `IOMMU_IOAS_MAP_FILE` and
//! `IOMMU_IOAS_CHANGE_PROCESS` (`ioas.c`, `io_pagetable.c`).
//!
//! Model. `IOMMU_IOAS_MAP_FILE` maps a range of a file (a memfd, or any
//! shmem or hugetlbfs file) instead of a range of the program's memory. The
//! file is named by a descriptor of the program; the engine runs inside the
//! program, so it looks at that descriptor directly and keeps an engine
//! mapping of the file, not the descriptor (see
//! [`uiommufd_memory::filemap`]). From there on the mapping is an ordinary
//! area over a file-sourced [`Pages`]: domains, accesses, copies and unmaps
//! treat it like any other.
//!
//! `IOMMU_IOAS_CHANGE_PROCESS` is what a process that inherited the iommufd
//! (a live-updated VMM) calls to take over the locked-memory charges of the
//! pinned pages. Only file mappings can be taken over, so any user-memory
//! mapping in any IOAS of the context makes it fail with `EINVAL`, changing
//! nothing. How little actually moves in a single-process engine is
//! described at [`crate::pages::change_process`].
//!
//! Errnos, in the kernel's order (v7.1): unknown flags `EOPNOTSUPP`; `iova`
//! or `length` of `u64::MAX` `EOVERFLOW`; neither readable nor writeable
//! `EINVAL`; no such IOAS `ENOENT`; zero length `EINVAL`; `start + length`
//! wrapping `EOVERFLOW`; a dma-buf: a range outside it `EINVAL`, otherwise
//! `EOPNOTSUPP` (no exporter our IOMMUs can import); a descriptor that is not
//! open `EBADF`; `WRITEABLE` with a descriptor not open for writing or a file
//! sealed against writes `EPERM`; then the IOVA rules of `IOMMU_IOAS_MAP`
//! and, when domains are attached, pinning: `EINVAL` for pages past the end
//! of the file or a file that is not shmem or hugetlbfs, `ENOMEM` past
//! `RLIMIT_MEMLOCK`. `IOMMU_IOAS_CHANGE_PROCESS`: a non-zero reserved field
//! `EOPNOTSUPP` (checked by the dispatcher), a user mapping `EINVAL`, a
//! charge past the limit `ENOMEM`.

use std::sync::Arc;

use uiommufd_hw::Prot;
use uiommufd_memory::filemap::{self, FileKind};

use crate::account::Account;
use crate::ctx::AccountMode;
use crate::error::{einval, eopnotsupp, eoverflow, ErrnoExt, Result};
use crate::io_pagetable::{IoPagetable, PagesSlice};
use crate::ioas::{check_map_flags, map_flags, prot_from_flags, Ioas};
use crate::object::{Borrowed, ObjectId, ObjectKind};
use crate::pages::{self, page_size, Pages};
use crate::Iommufd;

/// Stop scanning object IDs after this many consecutive free ones past the
/// last live object (IDs are handed out lowest-free first, so live objects
/// sit at the bottom of the ID space).
const ID_SCAN_GAP: u32 = 1 << 16;

impl Iommufd {
    /// `IOMMU_IOAS_MAP_FILE`: map `length` bytes of the file behind this
    /// process's descriptor `fd`, from byte `start`, into IOAS `ioas_id`;
    /// returns the IOVA (chosen unless `FIXED_IOVA`). The descriptor is only
    /// used during the call.
    pub fn ioas_map_file(
        &self,
        ioas_id: ObjectId,
        flags: u32,
        fd: i32,
        start: u64,
        length: u64,
        iova: u64,
    ) -> Result<u64> {
        check_map_flags(flags, &[iova, length])?;
        let ioas = self.ioas(ioas_id)?;
        let fixed = (flags & map_flags::FIXED_IOVA != 0).then_some(iova);
        let mode = Account::mode_for(self.account_mode() == AccountMode::Process);
        map_file_pages(ioas.iopt(), fd, start, length, fixed, prot_from_flags(flags), mode)
    }

    /// `IOMMU_IOAS_MAP_FILE` of a dma-buf: map `length` bytes of `buf` from
    /// byte `start` into IOAS `ioas_id` (see [`crate::dmabuf`]); returns the
    /// IOVA.
    pub fn ioas_map_dmabuf(
        &self,
        ioas_id: ObjectId,
        flags: u32,
        buf: &Arc<crate::dmabuf::DmaBuf>,
        start: u64,
        length: u64,
        iova: u64,
    ) -> Result<u64> {
        check_map_flags(flags, &[iova, length])?;
        let ioas = self.ioas(ioas_id)?;
        if length == 0 {
            return Err(einval("length is zero"));
        }
        start.checked_add(length - 1).ok_or(eoverflow("file range wraps"))?;
        let fixed = (flags & map_flags::FIXED_IOVA != 0).then_some(iova);
        let prot = prot_from_flags(flags);
        let pages = Arc::new(buf.import(start, length, prot.contains(Prot::WRITE))?);
        let start_byte = start % page_size();
        // Tracked before it is mapped: a revocation meanwhile still finds it.
        buf.track(&pages, ioas.arc());
        let slice = PagesSlice { pages, start_byte, length };
        ioas.iopt().map_pages(vec![slice], length, fixed, prot)
    }

    /// `IOMMU_IOAS_CHANGE_PROCESS`: charge the pinned pages of every mapping
    /// of every IOAS to the calling process. `EINVAL`, changing nothing, if
    /// any mapping is not a file mapping; `ENOMEM` if the charges do not fit
    /// the caller's `RLIMIT_MEMLOCK`.
    pub fn ioas_change_process(&self) -> Result<()> {
        // The kernel holds every IOAS's iova lock (and blocks new IOASes)
        // for the whole operation. Here the check reads a snapshot of the
        // areas, and the charges move under the locks of the pages
        // themselves: a mapping made or removed meanwhile is ordered after
        // or before the whole operation, as if it had waited.
        let mut all: Vec<Arc<Pages>> = Vec::new();
        for ioas in self.all_ioas() {
            for area in ioas.iopt().areas() {
                // Areas still being built or torn down are left to the
                // operation doing that.
                let Some(pages) = area.pages else { continue };
                if !pages.is_file() {
                    return Err(einval("only file mappings can change process"));
                }
                all.push(pages);
            }
        }
        pages::change_process(&all)
    }

    /// Every live IOAS of the context, in ID order.
    fn all_ioas(&self) -> Vec<Borrowed<Ioas>> {
        // The object table is looked up by ID; walk the IDs until every
        // live object has been seen (re-reading the count, which shrinks if
        // objects go meanwhile), or past a long run of free IDs (objects
        // created meanwhile below the cursor are missed, which orders them
        // after this call).
        let table = self.objects();
        let mut out = Vec::new();
        let (mut seen, mut last_live, mut id) = (0usize, 0u32, 1u32);
        while seen < table.len() && id - last_live <= ID_SCAN_GAP {
            if let Some(kind) = table.kind_of(id) {
                seen += 1;
                last_live = id;
                if kind == ObjectKind::Ioas {
                    if let Ok(ioas) = self.ioas(id) {
                        out.push(ioas);
                    }
                }
            }
            id = match id.checked_add(1) {
                Some(n) => n,
                None => break,
            };
        }
        out
    }
}

/// `iopt_map_file_pages`: map `length` bytes from byte `start` of the file
/// behind `fd` at `iova` (chosen when `None`).
pub fn map_file_pages(
    iopt: &IoPagetable,
    fd: i32,
    start: u64,
    length: u64,
    iova: Option<u64>,
    prot: Prot,
    mode: crate::account::AccountMode,
) -> Result<u64> {
    if length == 0 {
        return Err(einval("length is zero"));
    }
    start.checked_add(length - 1).ok_or(eoverflow("file range wraps"))?;
    let ps = page_size();
    let start_byte = start % ps;
    let info = filemap::inspect(fd).ctx("looking up the file descriptor")?;
    if let FileKind::DmaBuf { size } = info.kind {
        // `iopt_alloc_dmabuf_pages`: the range must lie inside the buffer;
        // beyond that only vfio-pci's buffers (and the kernel selftest's)
        // can be imported, and none of those exist here.
        if size <= start + (length - 1) || length / ps >= u64::from(u32::MAX) {
            return Err(einval("range is outside the dma-buf"));
        }
        return Err(eopnotsupp("this dma-buf's exporter cannot be mapped"));
    }
    let pages = Pages::new_file(fd, &info, start, length, prot.contains(Prot::WRITE), mode)?;
    iopt.map_pages(vec![PagesSlice { pages: Arc::new(pages), start_byte, length }], length, iova, prot)
}
