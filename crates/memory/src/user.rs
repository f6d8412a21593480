//! Copies to and from user memory that report faults as `EFAULT`.
//!
//! The fast path is a guarded copy ([`crate::guard`]): plain instructions
//! whose faults are recovered, like the kernel's `copy_from_user`. Where
//! that is unavailable, `process_vm_readv(2)` on our own pid does the copy in
//! the kernel, which also reports a bad address as `EFAULT`. This is the one
//! place that hands raw user addresses to either; callers only ever see byte
//! slices they own.

use std::sync::OnceLock;

use uiommufd_abi::Errno;

/// The system page size (what `sysconf(_SC_PAGESIZE)` returns).
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if v > 0 {
            v as usize
        } else {
            4096
        }
    })
}

fn check_range(addr: u64, len: usize) -> Result<(), Errno> {
    addr.checked_add(len as u64).ok_or(Errno::EFAULT)?;
    if addr > usize::MAX as u64 {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

/// Copy `dst.len()` bytes from user address `addr` into `dst`.
///
/// Fails with `EFAULT` if any byte of the source is not readable; `dst` may
/// then hold a partial copy, which callers must discard.
pub fn copy_from_user(dst: &mut [u8], addr: u64) -> Result<(), Errno> {
    if dst.is_empty() {
        return Ok(());
    }
    check_range(addr, dst.len())?;
    if crate::guard::available() {
        return if crate::guard::copy_in(dst, addr) { Ok(()) } else { Err(Errno::EFAULT) };
    }
    let local = libc::iovec { iov_base: dst.as_mut_ptr().cast(), iov_len: dst.len() };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: dst.len() };
    // SAFETY: `local` describes `dst`, a live exclusive buffer of exactly
    // `iov_len` bytes; `remote` is only read by the kernel, which checks it.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    finish(n, dst.len())
}

/// Copy `src` to user address `addr`.
///
/// Fails with `EFAULT` if any byte of the destination is not writable; a
/// prefix may then have been written, as with the kernel's `copy_to_user`.
pub fn copy_to_user(addr: u64, src: &[u8]) -> Result<(), Errno> {
    if src.is_empty() {
        return Ok(());
    }
    check_range(addr, src.len())?;
    if crate::guard::available() {
        return if crate::guard::copy_out(addr, src) { Ok(()) } else { Err(Errno::EFAULT) };
    }
    let local = libc::iovec { iov_base: src.as_ptr() as *mut libc::c_void, iov_len: src.len() };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: src.len() };
    // SAFETY: `local` describes `src`, which the kernel only reads; `remote`
    // is written by the kernel after it validates the address range.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    finish(n, src.len())
}

/// Copy `len` bytes from user address `src` to user address `dst` (the
/// ranges must not overlap). `EFAULT` if either end faults; a prefix may
/// then have been written.
pub fn copy_user_to_user(dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    check_range(src, len)?;
    check_range(dst, len)?;
    if crate::guard::available() {
        return if crate::guard::copy_user(dst, src, len) { Ok(()) } else { Err(Errno::EFAULT) };
    }
    let mut bounce = [0u8; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(bounce.len());
        copy_from_user(&mut bounce[..n], src + done as u64)?;
        copy_to_user(dst + done as u64, &bounce[..n])?;
        done += n;
    }
    Ok(())
}

fn finish(n: isize, want: usize) -> Result<(), Errno> {
    if n < 0 {
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EFAULT);
        // ESRCH/EPERM would mean the syscall itself is unavailable; anything
        // other than a clean copy is a bad user address from our caller's view.
        return Err(if e == libc::ENOMEM { Errno::ENOMEM } else { Errno::EFAULT });
    }
    if n as usize != want {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

/// Check that the page holding `addr` is mapped and readable, as
/// `get_user_pages` would require. Faults the page in if needed.
pub fn probe_user_page(addr: u64) -> Result<(), Errno> {
    if crate::guard::available() {
        return if crate::guard::probe_read(addr) { Ok(()) } else { Err(Errno::EFAULT) };
    }
    let mut b = [0u8; 1];
    copy_from_user(&mut b, addr)
}

/// Check that the page holding `addr` can be written, as a `FOLL_WRITE`
/// pin requires; breaks copy-on-write sharing like the kernel does.
/// Without guarded access this can only check readability (callers then
/// rely on the memory map for permissions).
pub fn probe_user_page_write(addr: u64) -> Result<(), Errno> {
    if crate::guard::available() {
        return if crate::guard::probe_write(addr) { Ok(()) } else { Err(Errno::EFAULT) };
    }
    probe_user_page(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_user_memory() {
        let mut target = vec![0u8; 64];
        let addr = target.as_mut_ptr() as u64;
        copy_to_user(addr + 3, b"hello").unwrap();
        let mut back = [0u8; 5];
        copy_from_user(&mut back, addr + 3).unwrap();
        assert_eq!(&back, b"hello");
        assert_eq!(&target[3..8], b"hello");
    }

    #[test]
    fn bad_addresses_are_efault_not_a_crash() {
        let mut b = [0u8; 8];
        assert_eq!(copy_from_user(&mut b, 0), Err(Errno::EFAULT));
        assert_eq!(copy_from_user(&mut b, 8), Err(Errno::EFAULT));
        assert_eq!(copy_to_user(0, &b), Err(Errno::EFAULT));
        assert_eq!(copy_from_user(&mut b, u64::MAX - 3), Err(Errno::EFAULT));
        assert_eq!(probe_user_page(0), Err(Errno::EFAULT));
        // A zero-length copy touches nothing and succeeds even at NULL.
        assert_eq!(copy_from_user(&mut [], 0), Ok(()));
    }

    #[test]
    fn copy_stopping_at_an_unmapped_page_is_efault() {
        // Mappings of other tests must not land where ours was.
        let _g = crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let ps = page_size();
        // SAFETY: anonymous private mapping of two pages, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * ps,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: unmapping the second page of the mapping we own.
        assert_eq!(unsafe { libc::munmap((p as usize + ps) as *mut _, ps) }, 0);
        let mut buf = vec![0u8; 16];
        let straddle = p as u64 + ps as u64 - 8;
        assert_eq!(copy_from_user(&mut buf, straddle), Err(Errno::EFAULT));
        assert_eq!(copy_from_user(&mut buf[..8], straddle), Ok(()));
        // SAFETY: unmapping the first page we still own.
        assert_eq!(unsafe { libc::munmap(p, ps) }, 0);
    }
}
