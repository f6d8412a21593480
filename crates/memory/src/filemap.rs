//! Engine mappings of files: the pages behind `IOMMU_IOAS_MAP_FILE`.
//!
//! Model. The kernel pins a file's pages straight out of its page cache
//! (`memfd_pin_folios`), which only shmem (tmpfs, memfd) and hugetlbfs files
//! offer. A page cache can only be reached here through a mapping, so a
//! [`FileMapping`] maps the requested range of the file `MAP_SHARED` into
//! engine memory when the IOAS mapping is created, and [`FileMapping::pin`]
//! faults pages of it in and registers them as frames
//! ([`frames::pin_mapped`]). Those pages are the file's own: what a device
//! writes lands in the file and shows through every other mapping of it, as
//! with pinned folios.
//!
//! The engine mapping stands for the kernel's file reference (`get_file`):
//! the program may close its descriptor right after the ioctl. A writable
//! engine mapping is also a writable mapping of the file, so `F_SEAL_WRITE`
//! fails with `EBUSY` while it exists, which is what the kernel's
//! `mapping_map_writable` on writable file pages ensures.
//!
//! The mapping's address is congruent to the file offset modulo the huge
//! page size (2 MiB, or the hugetlbfs page size), so frames of a huge folio
//! get huge-aligned PFNs and IOMMUs may map them with large pages.
//!
//! Invariants:
//! - the mapping is only read and written through registered frames, whose
//!   copies are fault-safe: a page the program truncated away costs
//!   `EFAULT`, never `SIGBUS`;
//! - every frame of a mapping is forgotten before the mapping goes (drop).
//!
//! Divergences, all because the file is only reachable through `mmap`:
//! - a descriptor opened write-only cannot be mapped (`EACCES`); the kernel
//!   pins from it;
//! - a memfd sealed `F_SEAL_FUTURE_WRITE` refuses a writable mapping
//!   (`EPERM`); the kernel's pin ignores that seal;
//! - a page truncated away while pinned: the kernel's devices keep the old
//!   folio; here their accesses fail with `EFAULT` (and reach the new page
//!   if the file grows back);
//! - any pin the file cannot back (past its end, or no free huge page) is
//!   `EINVAL`, the kernel's answer past the end; it says `ENOMEM` for a
//!   hugetlbfs shortage;
//! - a range larger than the address space fails with `ENOMEM` when the
//!   IOAS mapping is created, even with no domain to pin for.

use uiommufd_abi::Errno;

use crate::frames::{self, PinnedRun};
use crate::sys::mm;
use crate::user;

/// `statfs` magic of tmpfs/shmem.
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// `statfs` magic of hugetlbfs.
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
/// `statfs` magic of dma-buf files.
const DMA_BUF_MAGIC: u64 = 0x444d_4142;
/// Alignment kept between mapping addresses and file offsets (a PMD).
const HUGE_ALIGN: u64 = 2 << 20;

fn page() -> u64 {
    crate::page_size() as u64
}

fn last_errno() -> Errno {
    Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL))
}

/// What a descriptor's file is, as far as pinning its pages goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular shmem file (memfd, tmpfs): pinnable.
    Shmem,
    /// A regular hugetlbfs file (`MFD_HUGETLB` memfd): pinnable in units of
    /// `page_size` bytes.
    Hugetlb { page_size: u64 },
    /// A dma-buf of `size` bytes.
    DmaBuf { size: u64 },
    /// Anything else: the kernel accepts the mapping and fails every pin.
    Other,
}

/// What `IOMMU_IOAS_MAP_FILE` needs to know about a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub kind: FileKind,
    /// Opened for writing (the kernel's `FMODE_WRITE`).
    pub writable: bool,
    /// Sealed with `F_SEAL_WRITE`: no writable mapping may be added.
    pub write_sealed: bool,
}

/// `fcntl(2)` without the preload shim's wrapper.
fn fcntl(fd: i32, cmd: i32) -> Result<i32, Errno> {
    // SAFETY: F_GETFL and F_GET_SEALS take no argument and only read the
    // descriptor table; the kernel validates `fd`.
    let rc = unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, 0) };
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(rc as i32)
    }
}

/// Look at descriptor `fd` of this process: `EBADF` if it is not open or
/// is an `O_PATH` descriptor (which the kernel's `fget` does not return).
pub fn inspect(fd: i32) -> Result<FileInfo, Errno> {
    let fl = fcntl(fd, libc::F_GETFL)?;
    if fl & libc::O_PATH != 0 {
        return Err(Errno::EBADF);
    }
    let acc = fl & libc::O_ACCMODE;
    let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes one `struct stat` into `st`, which is ours.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(last_errno());
    }
    // SAFETY: fstat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    let mut sfs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes one `struct statfs` into `sfs`, which is ours.
    if unsafe { libc::fstatfs(fd, sfs.as_mut_ptr()) } != 0 {
        return Err(last_errno());
    }
    // SAFETY: fstatfs succeeded, so it filled `sfs`.
    let sfs = unsafe { sfs.assume_init() };
    let magic = (sfs.f_type as u64) & 0xffff_ffff;
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    let kind = if magic == DMA_BUF_MAGIC {
        FileKind::DmaBuf { size: st.st_size as u64 }
    } else if regular && magic == TMPFS_MAGIC {
        FileKind::Shmem
    } else if regular && magic == HUGETLBFS_MAGIC && (sfs.f_bsize as u64).is_power_of_two() {
        FileKind::Hugetlb { page_size: (sfs.f_bsize as u64).max(page()) }
    } else {
        FileKind::Other
    };
    let write_sealed = match kind {
        FileKind::Shmem | FileKind::Hugetlb { .. } => {
            fcntl(fd, libc::F_GET_SEALS).is_ok_and(|s| s & libc::F_SEAL_WRITE != 0)
        }
        _ => false,
    };
    Ok(FileInfo { kind, writable, write_sealed })
}

/// `munmap(2)` without the preload shim's wrapper (whose hooks would look
/// for the program's pinned pages in engine memory).
///
/// # Safety
/// The caller owns `[addr, addr + len)`.
unsafe fn munmap(addr: u64, len: u64) {
    // SAFETY: as above; a failure leaves the range mapped, which only wastes
    // address space.
    let _ = unsafe { libc::syscall(libc::SYS_munmap, addr, len) };
}

/// `madvise(MADV_POPULATE_READ)` without the preload shim's wrapper.
fn populate(addr: u64, len: u64) -> Result<(), Errno> {
    loop {
        // SAFETY: populating only faults pages of our own mapping in; it
        // changes no contents and no mapping.
        let rc = unsafe { libc::syscall(libc::SYS_madvise, addr, len, libc::MADV_POPULATE_READ) };
        if rc == 0 {
            return Ok(());
        }
        match last_errno() {
            Errno::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// A range of a file mapped into engine memory, whose pages can be pinned
/// as frames.
#[derive(Debug)]
pub struct FileMapping {
    /// The whole mapping (whole huge pages on hugetlbfs).
    base: u64,
    len: u64,
    /// Address of the range's first page.
    first: u64,
    npages: u64,
}

impl FileMapping {
    /// Map `npages` pages of the file behind `fd` from page-aligned byte
    /// `offset` (`kind` as [`inspect`] found it: shmem or hugetlbfs),
    /// writable when `write`. Nothing is faulted in yet.
    pub fn new(fd: i32, offset: u64, npages: u64, write: bool, kind: FileKind) -> Result<FileMapping, Errno> {
        let ps = page();
        let granule = match kind {
            FileKind::Shmem => ps,
            FileKind::Hugetlb { page_size } => page_size,
            _ => return Err(Errno::EINVAL),
        };
        if !offset.is_multiple_of(ps) || npages == 0 {
            return Err(Errno::EINVAL);
        }
        let end = npages.checked_mul(ps).and_then(|l| offset.checked_add(l)).ok_or(Errno::ENOMEM)?;
        let map_off = offset & !(granule - 1);
        let map_end = end.checked_add(granule - 1).ok_or(Errno::ENOMEM)? & !(granule - 1);
        let len = map_end - map_off;
        if map_off > i64::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        let align = granule.max(HUGE_ALIGN);
        let reserve_len = len.checked_add(align).ok_or(Errno::ENOMEM)?;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh reservation at an address the kernel picks.
        let reserve = unsafe { mm::mmap(0, reserve_len, libc::PROT_NONE, flags, -1, 0)? };
        let base = reserve + (map_off.wrapping_sub(reserve) & (align - 1));
        let prot = libc::PROT_READ | if write { libc::PROT_WRITE } else { 0 };
        let flags = libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE;
        // SAFETY: `[base, base + len)` lies inside the reservation we own.
        if let Err(e) = unsafe { mm::mmap(base, len, prot, flags, fd, map_off) } {
            // SAFETY: the whole reservation is still ours.
            unsafe { munmap(reserve, reserve_len) };
            return Err(e);
        }
        // SAFETY: the reservation's head and tail around the file mapping
        // are ours and unused.
        unsafe {
            if base > reserve {
                munmap(reserve, base - reserve);
            }
            if reserve + reserve_len > base + len {
                munmap(base + len, reserve + reserve_len - (base + len));
            }
        }
        if let Some(id) = crate::sys::fstat(fd).map(|st| file_id(&st)) {
            aliases().push(Alias { id, offset: map_off, len, base });
        }
        Ok(FileMapping { base, len, first: base + (offset - map_off), npages })
    }

    /// Number of pages of the range.
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// Pin `npages` pages from page `index` of the range: fault them in
    /// (allocating shmem pages, as `memfd_pin_folios` does) and register
    /// them as one run of new frames. `EINVAL` if the file cannot back them
    /// (past its end); nothing is pinned then.
    pub fn pin(&self, index: u64, npages: u64) -> Result<PinnedRun, Errno> {
        if npages == 0 || index.checked_add(npages).is_none_or(|e| e > self.npages) {
            return Err(Errno::EINVAL);
        }
        let ps = page();
        let host = self.first + index * ps;
        let len = npages * ps;
        match populate(host, len) {
            Ok(()) => {}
            Err(Errno::ENOMEM) => return Err(Errno::ENOMEM),
            // Kernels before 5.14 lack MADV_POPULATE_READ: touch each page.
            Err(Errno::EINVAL) => {
                for i in 0..npages {
                    user::probe_user_page(host + i * ps).map_err(|_| Errno::EINVAL)?;
                }
            }
            // A page that would raise SIGBUS: beyond the end of the file.
            Err(_) => return Err(Errno::EINVAL),
        }
        frames::pin_mapped(host, npages)
    }
}

impl Drop for FileMapping {
    fn drop(&mut self) {
        aliases().retain(|a| a.base != self.base);
        frames::forget_mapped(self.base, self.len);
        // SAFETY: the mapping is ours, and no frame refers to it any more.
        unsafe { munmap(self.base, self.len) };
    }
}

/// A file's identity as `/proc/self/maps` prints it: device
/// (`major << 32 | minor`) and inode.
fn file_id(st: &libc::stat) -> (u64, u64) {
    ((u64::from(libc::major(st.st_dev)) << 32) | u64::from(libc::minor(st.st_dev)), st.st_ino)
}

/// Where an engine mapping of a file lies: file bytes `[offset, offset +
/// len)` at `base`.
struct Alias {
    id: (u64, u64),
    offset: u64,
    len: u64,
    base: u64,
}

fn aliases() -> std::sync::MutexGuard<'static, Vec<Alias>> {
    static ALIASES: std::sync::Mutex<Vec<Alias>> = std::sync::Mutex::new(Vec::new());
    ALIASES.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engine's own mapping of the file page the program reaches at `va`
/// through a shared mapping of a file the engine maps for
/// `IOMMU_IOAS_MAP_FILE`: `(engine address of va, end)`, valid for the
/// addresses below `end` (exclusive) from `va` on. The page is one physical
/// page whichever mapping reaches it, as `get_user_pages` of the program's
/// address finds the very folio the kernel pinned from the page cache.
/// `None` when `va` is not such a page.
pub fn alias(va: u64) -> Option<(u64, u64)> {
    if aliases().is_empty() {
        return None;
    }
    let maps = crate::vma::current().ok()?;
    let vma = maps.iter().find(|v| v.start <= va && va < v.end && v.shared && v.inode != 0)?;
    let file_off = vma.offset.checked_add(va - vma.start)?;
    let list = aliases();
    let a =
        list.iter().find(|a| a.id == (vma.dev, vma.inode) && a.offset <= file_off && file_off - a.offset < a.len)?;
    let at = a.base + (file_off - a.offset);
    // Up to the end of whichever of the two mappings ends first.
    let end = va + (a.base + a.len - at).min(vma.end - va);
    Some((at, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn memfd(pages: u64) -> i32 {
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"filemap-test".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: sizing our own memfd.
        assert_eq!(unsafe { libc::ftruncate(fd, (pages * page()) as i64) }, 0);
        fd
    }

    #[test]
    fn inspect_tells_files_apart() {
        let _g = serial();
        let fd = memfd(1);
        let info = inspect(fd).unwrap();
        assert_eq!(info, FileInfo { kind: FileKind::Shmem, writable: true, write_sealed: false });
        // SAFETY: sealing our own memfd against writes.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) }, 0);
        assert!(inspect(fd).unwrap().write_sealed);
        // SAFETY: closing our memfd.
        unsafe { libc::close(fd) };
        assert_eq!(inspect(fd), Err(Errno::EBADF));
        let mut p = [0i32; 2];
        // SAFETY: pipe writes two descriptors into `p`.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        assert_eq!(inspect(p[0]).unwrap().kind, FileKind::Other);
        assert!(!inspect(p[0]).unwrap().writable);
        // SAFETY: closing our pipe.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }

    #[test]
    fn pinned_file_pages_are_shared_with_the_file() {
        let _g = serial();
        let ps = page();
        let fd = memfd(4);
        let m = FileMapping::new(fd, ps, 2, true, FileKind::Shmem).unwrap();
        // SAFETY: closing our descriptor: the mapping keeps the file.
        unsafe { libc::close(fd) };
        let r = m.pin(1, 1).unwrap();
        assert_eq!(r.npages, 1);
        frames::write_phys(r.pfn * ps + 5, b"xyz").unwrap();
        let mut back = [0u8; 3];
        frames::read_phys(r.pfn * ps + 5, &mut back).unwrap();
        assert_eq!(&back, b"xyz");
        assert_eq!(m.pin(1, 2), Err(Errno::EINVAL), "beyond the range");
        frames::unpin(r.pfn, 1);
        drop(m);
        assert_eq!(frames::read_phys(r.pfn * ps, &mut back), Err(Errno::EFAULT));
    }

    #[test]
    fn pins_past_the_end_of_the_file_fail() {
        let _g = serial();
        let fd = memfd(1);
        let m = FileMapping::new(fd, 0, 3, false, FileKind::Shmem).unwrap();
        assert_eq!(m.pin(0, 2), Err(Errno::EINVAL));
        let r = m.pin(0, 1).unwrap();
        // SAFETY: growing our own memfd.
        assert_eq!(unsafe { libc::ftruncate(fd, (3 * page()) as i64) }, 0);
        let r2 = m.pin(1, 2).unwrap();
        frames::unpin(r.pfn, 1);
        // Dropping the mapping forgets frames still pinned.
        drop(m);
        let mut b = [0u8];
        assert_eq!(frames::read_phys(r2.pfn * page(), &mut b), Err(Errno::EFAULT));
        // SAFETY: closing our memfd.
        unsafe { libc::close(fd) };
    }
}
