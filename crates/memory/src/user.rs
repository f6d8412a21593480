//! Copies to and from user memory that report faults as `EFAULT`.
//!
//! The fast path is a guarded copy ([`crate::guard`]): plain instructions
//! whose faults are recovered, like the kernel's `copy_from_user`. Where
//! that is unavailable, `process_vm_readv(2)` on our own pid does the copy in
//! the kernel, which also reports a bad address as `EFAULT`. This is the one
//! place that hands raw user addresses to either; callers only ever see byte
//! slices they own.
//!
//! Whose memory. A user address names memory of the *current process* of
//! the calling thread: this process, unless [`with_process`] says another
//! one (the shim's fork server runs a forked child's request with the
//! child as the current process, as the kernel runs a syscall in the
//! caller's `mm`). Copies and probes then go through
//! `process_vm_readv`/`process_vm_writev` on that pid, and any failure
//! (an unmapped address, the process gone, ptrace rules refusing access)
//! is `EFAULT`, which is what the caller of the kernel's syscall would see
//! for memory that cannot be reached. The `*_own` functions always use this
//! process's address space: the engine's own host addresses (frames, file
//! mappings) go through them.

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
use std::sync::OnceLock;

use uiommufd_abi::Errno;

/// The system page size (what `sysconf(_SC_PAGESIZE)` returns).
///
/// On x86-64 Linux a constant: the architecture has 4 KiB base pages
/// only (`PAGE_SHIFT` 12, `arch/x86/include/asm/page_types.h`), so every
/// page computation of the engine folds instead of reading a lazily set
/// value (the small map path asked it about ten times).
#[inline]
pub fn page_size() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        4096
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        page_size_of_system()
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn page_size_of_system() -> usize {
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

/// Another process whose memory user addresses may name (see
/// [`with_process`]): its pid and its start time, which tells it from a
/// later process that reused the pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Process {
    pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks from boot to its start.
    start: u64,
}

impl Process {
    /// The live process `pid` (`ESRCH` if there is none, or only a zombie).
    pub fn of(pid: u32) -> Result<Process, Errno> {
        let (start, zombie) = stat_of(pid).ok_or(Errno::ESRCH)?;
        if zombie {
            return Err(Errno::ESRCH);
        }
        Ok(Process { pid, start })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process still runs: not exited (a zombie has no memory
    /// any more), and its pid not taken by another process since.
    pub fn alive(&self) -> bool {
        stat_of(self.pid).is_some_and(|(start, zombie)| start == self.start && !zombie)
    }
}

/// `(start time, zombie)` from `/proc/PID/stat`.
pub(crate) fn stat_of(pid: u32) -> Option<(u64, bool)> {
    let text = crate::procfs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses,
    // the last ')' ends it. State is field 3, the start time field 22.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

fn own_pid() -> u32 {
    std::process::id()
}

thread_local! {
    /// The process user addresses name on this thread (`None`: this one).
    static CURRENT: std::cell::Cell<Option<Process>> = const { std::cell::Cell::new(None) };
}

/// The process whose memory user addresses name on this thread: `None`
/// for this process.
#[inline]
pub fn current_process() -> Option<Process> {
    CURRENT.with(|c| c.get())
}

/// Run `f` with user addresses naming memory of `process` (`None`, or this
/// process's own pid: this process). The previous setting comes back after
/// `f`, also when it unwinds.
pub fn with_process<R>(process: Option<Process>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Process>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let process = process.filter(|p| p.pid != own_pid());
    let _restore = Restore(CURRENT.with(|c| c.replace(process)));
    f()
}

#[inline]
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
    match current_process() {
        None => copy_from_own(dst, addr),
        Some(p) => remote_read(p.pid, dst, addr),
    }
}

/// Copy `src` to user address `addr`.
///
/// Fails with `EFAULT` if any byte of the destination is not writable; a
/// prefix may then have been written, as with the kernel's `copy_to_user`.
pub fn copy_to_user(addr: u64, src: &[u8]) -> Result<(), Errno> {
    match current_process() {
        None => copy_to_own(addr, src),
        Some(p) => remote_write(p.pid, addr, src),
    }
}

/// Copy `len` bytes from user address `src` to user address `dst` (the
/// ranges must not overlap). `EFAULT` if either end faults; a prefix may
/// then have been written.
pub fn copy_user_to_user(dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    if current_process().is_none() {
        return copy_own_to_own(dst, src, len);
    }
    check_range(src, len)?;
    check_range(dst, len)?;
    bounce(dst, src, len)
}

/// [`copy_from_user`] in this process's own address space, whatever the
/// thread's current process.
#[inline(always)]
pub fn copy_from_own(dst: &mut [u8], addr: u64) -> Result<(), Errno> {
    if check_range(addr, dst.len()).is_ok() {
        if let Some(ok) = crate::guard::try_copy_user(dst.as_mut_ptr() as u64, addr, dst.len()) {
            return if ok { Ok(()) } else { Err(Errno::EFAULT) };
        }
    }
    copy_from_own_slow(dst, addr)
}

/// [`copy_from_own`] without the guarded copy, or for a bad range.
#[cold]
fn copy_from_own_slow(dst: &mut [u8], addr: u64) -> Result<(), Errno> {
    if dst.is_empty() {
        return Ok(());
    }
    check_range(addr, dst.len())?;
    let local = libc::iovec { iov_base: dst.as_mut_ptr().cast(), iov_len: dst.len() };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: dst.len() };
    // SAFETY: `local` describes `dst`, a live exclusive buffer of exactly
    // `iov_len` bytes; `remote` is only read by the kernel, which checks it.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    finish(n, dst.len())
}

/// [`copy_to_user`] in this process's own address space.
#[inline(always)]
pub fn copy_to_own(addr: u64, src: &[u8]) -> Result<(), Errno> {
    if check_range(addr, src.len()).is_ok() {
        if let Some(ok) = crate::guard::try_copy_user(addr, src.as_ptr() as u64, src.len()) {
            return if ok { Ok(()) } else { Err(Errno::EFAULT) };
        }
    }
    copy_to_own_slow(addr, src)
}

/// [`copy_to_own`] without the guarded copy, or for a bad range.
#[cold]
fn copy_to_own_slow(addr: u64, src: &[u8]) -> Result<(), Errno> {
    if src.is_empty() {
        return Ok(());
    }
    check_range(addr, src.len())?;
    let local = libc::iovec { iov_base: src.as_ptr() as *mut libc::c_void, iov_len: src.len() };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: src.len() };
    // SAFETY: `local` describes `src`, which the kernel only reads; `remote`
    // is written by the kernel after it validates the address range.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    finish(n, src.len())
}

/// [`copy_user_to_user`] in this process's own address space.
#[inline(always)]
pub fn copy_own_to_own(dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    if check_range(src, len).is_ok() && check_range(dst, len).is_ok() {
        if let Some(ok) = crate::guard::try_copy_user(dst, src, len) {
            return if ok { Ok(()) } else { Err(Errno::EFAULT) };
        }
    }
    copy_own_to_own_slow(dst, src, len)
}

/// [`copy_own_to_own`] for ranges known to lie in this process's address
/// space without wrapping (the host ranges of pinned frames a device
/// translation cache holds, or a buffer of ours): the guarded copy
/// without the range checks. False if either end faulted.
#[inline(always)]
pub fn copy_own_known(dst: u64, src: u64, len: usize) -> bool {
    match crate::guard::try_copy_user(dst, src, len) {
        Some(ok) => ok,
        None => copy_own_to_own_slow(dst, src, len).is_ok(),
    }
}

/// [`copy_own_to_own`] without the guarded copy, or for a bad range.
#[cold]
fn copy_own_to_own_slow(dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    check_range(src, len)?;
    check_range(dst, len)?;
    with_process(None, || bounce(dst, src, len))
}

/// Copy through a buffer of ours with the context-aware copies.
fn bounce(dst: u64, src: u64, len: usize) -> Result<(), Errno> {
    let mut buf = [0u8; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        copy_from_user(&mut buf[..n], src + done as u64)?;
        copy_to_user(dst + done as u64, &buf[..n])?;
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

/// Read another process's memory: `EFAULT` for anything but the whole
/// range (a hole, the process gone, ptrace rules saying no).
fn remote_read(pid: u32, dst: &mut [u8], addr: u64) -> Result<(), Errno> {
    if dst.is_empty() {
        return Ok(());
    }
    check_range(addr, dst.len())?;
    let local = libc::iovec { iov_base: dst.as_mut_ptr().cast(), iov_len: dst.len() };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: dst.len() };
    // SAFETY: `local` describes `dst`, a live exclusive buffer of exactly
    // `iov_len` bytes; the remote range is checked by the kernel.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 || n as usize != dst.len() {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

/// Write another process's memory, `EFAULT` as [`remote_read`]; a prefix
/// may have been written.
fn remote_write(pid: u32, addr: u64, src: &[u8]) -> Result<(), Errno> {
    if src.is_empty() {
        return Ok(());
    }
    check_range(addr, src.len())?;
    let local = libc::iovec { iov_base: src.as_ptr() as *mut libc::c_void, iov_len: src.len() };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: src.len() };
    // SAFETY: `local` describes `src`, which the kernel only reads; the
    // remote range is checked (and its protections honoured) by the kernel.
    let n = unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 || n as usize != src.len() {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

/// Check that the page holding `addr` is mapped and readable, as
/// `get_user_pages` would require. Faults the page in if needed.
pub fn probe_user_page(addr: u64) -> Result<(), Errno> {
    match current_process() {
        None => probe_own_page(addr),
        Some(p) => remote_read(p.pid, &mut [0u8; 1], addr),
    }
}

/// Check that the page holding `addr` can be written, as a `FOLL_WRITE`
/// pin requires; breaks copy-on-write sharing like the kernel does.
/// Without guarded access this can only check readability (callers then
/// rely on the memory map for permissions). In another process the check
/// reads its memory map (a write probe there could race with its threads).
pub fn probe_user_page_write(addr: u64) -> Result<(), Errno> {
    match current_process() {
        None => probe_own_page_write(addr),
        Some(p) => {
            remote_read(p.pid, &mut [0u8; 1], addr)?;
            let maps = crate::vma::of_process(p.pid)?;
            crate::vma::check(&maps, addr, addr + 1, true).map(|_| ())
        }
    }
}

/// [`probe_user_page`] in this process's own address space.
pub fn probe_own_page(addr: u64) -> Result<(), Errno> {
    if crate::guard::available() {
        return if crate::guard::probe_read(addr) { Ok(()) } else { Err(Errno::EFAULT) };
    }
    let mut b = [0u8; 1];
    copy_from_own(&mut b, addr)
}

/// [`probe_user_page_write`] in this process's own address space.
pub fn probe_own_page_write(addr: u64) -> Result<(), Errno> {
    if crate::guard::available() {
        return if crate::guard::probe_write(addr) { Ok(()) } else { Err(Errno::EFAULT) };
    }
    probe_own_page(addr)
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

    /// A forked child that only waits to be killed: it holds a copy of our
    /// private memory and the same pages of our shared mappings.
    struct Child(libc::pid_t);

    impl Child {
        fn fork() -> Child {
            // SAFETY: the child of a possibly multi-threaded test process
            // calls nothing but pause(), which is async-signal-safe, until
            // it is killed.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork");
            if pid == 0 {
                loop {
                    // SAFETY: as above.
                    unsafe { libc::pause() };
                }
            }
            Child(pid)
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }

    fn map(len: usize, flags: i32) -> u64 {
        // SAFETY: a fresh anonymous mapping owned by the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as u64
    }

    #[test]
    fn another_process_memory_through_with_process() {
        let _g = crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let ps = page_size();
        // A page, then an inaccessible one.
        let addr = map(2 * ps, libc::MAP_PRIVATE);
        // SAFETY: the second page of our mapping.
        assert_eq!(unsafe { libc::mprotect((addr + ps as u64) as *mut libc::c_void, ps, libc::PROT_NONE) }, 0);
        copy_to_user(addr, &[7u8; 16]).unwrap();
        let child = Child::fork();
        let p = Process::of(child.0 as u32).unwrap();
        assert!(p.alive());
        assert_eq!(p.pid(), child.0 as u32);
        with_process(Some(p), || {
            assert_eq!(current_process(), Some(p));
            let mut b = [0u8; 4];
            copy_from_user(&mut b, addr).unwrap();
            assert_eq!(b, [7; 4]);
            copy_to_user(addr, b"abcd").unwrap();
            copy_from_user(&mut b, addr).unwrap();
            assert_eq!(&b, b"abcd");
            copy_user_to_user(addr + 8, addr, 4).unwrap();
            copy_from_user(&mut b, addr + 8).unwrap();
            assert_eq!(&b, b"abcd");
            probe_user_page(addr).unwrap();
            probe_user_page_write(addr).unwrap();
            assert_eq!(probe_user_page(0), Err(Errno::EFAULT));
            assert_eq!(copy_to_user(8, &b), Err(Errno::EFAULT));
            assert_eq!(copy_from_user(&mut b, addr + ps as u64 - 2), Err(Errno::EFAULT), "past the mapping");
            // Our own memory is still ours to reach.
            let mut o = [0u8; 4];
            copy_from_own(&mut o, addr).unwrap();
            assert_eq!(o, [7; 4]);
            // Nested: this process again, then back.
            with_process(None, || assert_eq!(current_process(), None));
            assert_eq!(current_process(), Some(p));
        });
        assert_eq!(current_process(), None);
        let mut mine = [0u8; 16];
        copy_from_user(&mut mine, addr).unwrap();
        assert_eq!(mine, [7; 16], "the child's copy was written, not ours");
        drop(child);
        assert!(!p.alive());
        assert_eq!(Process::of(p.pid()), Err(Errno::ESRCH));
        with_process(Some(p), || assert_eq!(copy_from_user(&mut mine, addr), Err(Errno::EFAULT)));
        // SAFETY: our mapping.
        unsafe { libc::munmap(addr as *mut libc::c_void, 2 * ps) };
    }

    #[test]
    fn pinning_another_process_memory_needs_the_same_shared_pages() {
        let _g = crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let ps = page_size();
        let shared = map(2 * ps, libc::MAP_SHARED);
        let private = map(2 * ps, libc::MAP_PRIVATE);
        copy_to_user(shared, b"shared").unwrap();
        copy_to_user(private, b"private").unwrap();
        let child = Child::fork();
        let p = Process::of(child.0 as u32).unwrap();
        with_process(Some(p), || {
            let runs = crate::frames::pin_user(shared, 2, true).unwrap();
            // Our own pages, pinned in place.
            assert_eq!(crate::frames::pin_count(shared), 1);
            assert_eq!(crate::frames::pin_count(shared + ps as u64), 1);
            // What the child writes there, a device sees in the frame.
            copy_to_user(shared + 1, b"H").unwrap();
            let mut b = [0u8; 6];
            crate::frames::read_phys(runs[0].pfn << crate::frames::page_shift(), &mut b).unwrap();
            assert_eq!(&b, b"sHared");
            for r in &runs {
                crate::frames::unpin(r.pfn, r.npages);
            }
            assert_eq!(crate::frames::pin_user(private, 1, false), Err(Errno::EFAULT), "private memory");
            assert_eq!(crate::frames::pin_user(shared, 3, false), Err(Errno::EFAULT), "past the mapping");
        });
        assert_eq!(crate::frames::pin_count(shared), 0);
        drop(child);
        with_process(Some(p), || {
            assert_eq!(crate::frames::pin_user(shared, 1, false), Err(Errno::EFAULT), "the process is gone");
        });
        // SAFETY: our mappings.
        unsafe {
            libc::munmap(shared as *mut libc::c_void, 2 * ps);
            libc::munmap(private as *mut libc::c_void, 2 * ps);
        }
    }
}
