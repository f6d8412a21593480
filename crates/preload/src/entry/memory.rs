//! Memory calls: mmap of served descriptors; munmap, mremap and madvise,
//! which must not take pinned pages from devices.

use std::panic::{catch_unwind, AssertUnwindSafe};

use libc::{c_int, c_void};
use uiommufd_abi::Errno;
use uiommufd_dispatch::File;

use super::file_or_inherited_copy;
use crate::real::{self, set_errno};
use crate::{fdtable, trace};

/// # Safety
/// C `munmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    // Pinned pages in the range keep living for devices (moved out of the
    // program's way first), as pages pinned by the kernel do.
    let _ = catch_unwind(|| uiommufd_memory::frames::before_munmap(addr as u64, len as u64));
    // SAFETY: forwarded per munmap(2).
    unsafe { real::munmap(addr, len) }
}

/// # Safety
/// C `mremap(2)`; `new_addr` is only read with `MREMAP_FIXED`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let forward = || {
        // SAFETY: forwarded per mremap(2).
        let p = unsafe { real::mremap(old, old_len, new_len, flags, new_addr) };
        if p == libc::MAP_FAILED {
            Err(uiommufd_abi::Errno(real::errno()))
        } else {
            Ok(p as u64)
        }
    };
    let res = catch_unwind(AssertUnwindSafe(|| {
        uiommufd_memory::frames::around_mremap(old as u64, old_len as u64, new_len as u64, forward)
    }));
    match res {
        Ok(Ok(p)) => p as *mut c_void,
        Ok(Err(e)) => {
            set_errno(e.0);
            libc::MAP_FAILED
        }
        Err(_) => {
            set_errno(libc::EIO);
            libc::MAP_FAILED
        }
    }
}

/// # Safety
/// C `madvise(2)`.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    // Advice that drops a private page's contents must not take a pinned
    // page from devices: they keep it, the program gets a fresh one.
    if matches!(advice, libc::MADV_DONTNEED | libc::MADV_FREE | MADV_DONTNEED_LOCKED) {
        let _ = catch_unwind(|| uiommufd_memory::frames::before_madvise_dontneed(addr as u64, len as u64));
    }
    // SAFETY: forwarded per madvise(2).
    unsafe { real::madvise(addr, len, advice) }
}

/// `MADV_DONTNEED_LOCKED` (Linux 5.18).
const MADV_DONTNEED_LOCKED: c_int = 24;

// Mapping a served descriptor.

/// The checks `mmap(2)` makes before a driver sees the call: a length, an
/// aligned offset, and a file opened for reading (and for writing, when a
/// shared mapping is writable). `EINVAL`/`EACCES`.
fn mmap_file_checks(fd: c_int, len: usize, prot: c_int, flags: c_int, off: i64) -> Result<(), c_int> {
    let page = uiommufd_memory::page_size() as i64;
    if len == 0 || off & (page - 1) != 0 {
        return Err(libc::EINVAL);
    }
    // SAFETY: F_GETFL reads the descriptor's status flags.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    if fl < 0 {
        return Err(libc::EBADF);
    }
    let acc = fl & libc::O_ACCMODE;
    let shared = matches!(flags & 0x0f, libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE);
    if acc == libc::O_WRONLY || (shared && prot & libc::PROT_WRITE != 0 && acc != libc::O_RDWR) {
        return Err(libc::EACCES);
    }
    Ok(())
}

/// `mmap` of a served VFIO device (the region's memory, mapped from the
/// device's memfd, see `VfioDeviceFile::mmap`) or iommufd (a driver region,
/// see `File::mmap`). Other served files keep their backing descriptor's
/// answer.
fn mmap_served(fd: c_int, addr: *mut c_void, len: usize, prot: c_int, flags: c_int, off: i64) -> Option<*mut c_void> {
    let file = file_or_inherited_copy(fd)?;
    if !matches!(&*file, File::VfioDevice(_) | File::Iommufd(_)) {
        return None;
    }
    let _engine = fdtable::EngineGuard::enter();
    let res = trace::mmap(fd, &file, addr as u64, len as u64, prot, flags, off, || {
        mmap_file_checks(fd, len, prot, flags, off)
            .map_err(|e| uiommufd_core::Error::new(Errno(e), "mmap(2) checks"))
            .and_then(|()| file.mmap(addr as u64, len as u64, prot, flags, off as u64))
    });
    Some(match res {
        Ok(p) => p as *mut c_void,
        Err(e) => {
            set_errno(e.errno.0);
            libc::MAP_FAILED
        }
    })
}

/// `MAP_FIXED` replaces what was mapped in the range (an implicit
/// `munmap`): pinned pages there keep living for devices, as with
/// [`munmap`]. (`MAP_FIXED_NOREPLACE` fails on a mapped range instead.)
fn before_fixed_map(addr: *mut c_void, len: usize, flags: c_int) {
    if flags & libc::MAP_FIXED != 0 {
        let _ = catch_unwind(|| uiommufd_memory::frames::before_munmap(addr as u64, len as u64));
    }
}

/// # Safety
/// C `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    before_fixed_map(addr, len, flags);
    if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 && fdtable::is_ours(fd) {
        let served = catch_unwind(AssertUnwindSafe(|| mmap_served(fd, addr, len, prot, flags, off)));
        match served {
            Ok(Some(p)) => return p,
            Ok(None) => {}
            Err(_) => {
                set_errno(libc::EIO);
                return libc::MAP_FAILED;
            }
        }
    }
    // SAFETY: forwarded per mmap(2).
    unsafe { real::mmap(addr, len, prot, flags, fd, off) }
}

/// # Safety
/// C `mmap64(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off64_t,
) -> *mut c_void {
    before_fixed_map(addr, len, flags);
    if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 && fdtable::is_ours(fd) {
        let served = catch_unwind(AssertUnwindSafe(|| mmap_served(fd, addr, len, prot, flags, off)));
        match served {
            Ok(Some(p)) => return p,
            Ok(None) => {}
            Err(_) => {
                set_errno(libc::EIO);
                return libc::MAP_FAILED;
            }
        }
    }
    // SAFETY: forwarded per mmap(2).
    unsafe { real::mmap64(addr, len, prot, flags, fd, off) }
}
