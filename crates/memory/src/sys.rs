//! Small OS queries the engine needs to decide like the kernel does.

/// `CAP_SYS_RESOURCE` from `<linux/capability.h>`.
const CAP_SYS_RESOURCE: u32 = 24;
/// `CAP_IPC_LOCK`.
const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_RAWIO`.
const CAP_SYS_RAWIO: u32 = 17;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The engine's `capable(CAP_SYS_RESOURCE)`.
///
/// True when the process holds `CAP_SYS_RESOURCE` in its effective set (the
/// kernel's rule) or runs as root. The second half is a deliberate
/// divergence: container runtimes commonly drop `CAP_SYS_RESOURCE` from
/// root, and since uiommufd's memory accounting is emulated, root's wish to
/// change it is honoured. `UIOMMUFD_CAP_SYS_RESOURCE=0|1` forces the answer
/// (for tests of both outcomes).
pub fn capable_sys_resource() -> bool {
    match env_override(0, "UIOMMUFD_CAP_SYS_RESOURCE") {
        Some(v) => v,
        // SAFETY: geteuid has no preconditions.
        None => has_cap_sys_resource() || unsafe { libc::geteuid() } == 0,
    }
}

/// Whether `CAP_SYS_RESOURCE` is in this process's effective set.
pub fn has_cap_sys_resource() -> bool {
    has_cap(CAP_SYS_RESOURCE)
}

/// `capable(CAP_IPC_LOCK)`: pinned memory is not charged against
/// `RLIMIT_MEMLOCK`. `UIOMMUFD_CAP_IPC_LOCK=0|1` forces the answer.
#[inline]
pub fn capable_ipc_lock() -> bool {
    env_override(1, "UIOMMUFD_CAP_IPC_LOCK").unwrap_or_else(|| has_cap(CAP_IPC_LOCK))
}

/// `capable(CAP_SYS_RAWIO)`, which `IOMMU_IOAS_NOIOMMU_GET_PA` requires.
pub fn capable_sys_rawio() -> bool {
    has_cap(CAP_SYS_RAWIO)
}

/// Run `f` with [`capable_ipc_lock`] answering `cap`, as
/// `UIOMMUFD_CAP_IPC_LOCK` would, then give the previous answer back.
/// Process-wide (every thread sees it meanwhile): for the bench's rows of
/// a process with and without the capability.
pub fn with_ipc_lock_forced<R>(cap: bool, f: impl FnOnce() -> R) -> R {
    let _ = capable_ipc_lock(); // the variable read, so the restore keeps it
    let prev = OVERRIDES[1].swap(if cap { 3 } else { 2 }, Ordering::Relaxed);
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDES[1].store(self.0, Ordering::Relaxed);
        }
    }
    let _restore = Restore(prev);
    f()
}

/// [`env_override`]'s answers, by slot.
static OVERRIDES: [AtomicU8; 2] = [AtomicU8::new(0), AtomicU8::new(0)];

/// The `0|1` override in environment variable `name`, read once (slot
/// `slot` caches it: 0 unread, 1 none, 2 false, 3 true). Inlined: every
/// map asks; the first read of the variable is out of line.
#[inline]
fn env_override(slot: usize, name: &str) -> Option<bool> {
    #[cold]
    #[inline(never)]
    fn read(cache: &AtomicU8, name: &str) -> u8 {
        let v = match std::env::var(name).as_deref() {
            Ok("0") => 2,
            Ok("1") => 3,
            _ => 1,
        };
        cache.store(v, Ordering::Relaxed);
        v
    }
    let v = match OVERRIDES[slot].load(Ordering::Relaxed) {
        0 => read(&OVERRIDES[slot], name),
        v => v,
    };
    match v {
        2 => Some(false),
        3 => Some(true),
        _ => None,
    }
}

/// The effective capability set's low word, cached: `(generation << 32) |
/// word`, valid while the generation matches [`CAPS_GENERATION`].
static CAPS_CACHE: AtomicU64 = AtomicU64::new(u64::MAX);
static CAPS_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Forget the cached capabilities and real user ID ([`getuid`]): the
/// process may have changed them (`capset`, the `setuid` family). The shim
/// calls this after each such call; library users who change capabilities
/// or user IDs call it themselves.
pub fn capabilities_changed() {
    CAPS_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Whether capability number `cap` (below 32) is in this process's
/// effective set. The set is read with `capget` once per
/// [`capabilities_changed`], not on every check: the kernel's `capable()`
/// is a memory read, and every map asks.
#[inline]
fn has_cap(cap: u32) -> bool {
    debug_assert!(cap < 32);
    let gen = CAPS_GENERATION.load(Ordering::Acquire) & 0xffff_ffff;
    let cached = CAPS_CACHE.load(Ordering::Acquire);
    let word = if cached >> 32 == gen {
        cached as u32
    } else {
        let w = read_effective_low();
        CAPS_CACHE.store((gen << 32) | w as u64, Ordering::Release);
        w
    };
    word & (1 << cap) != 0
}

/// The low word of the effective capability set, from `capget(2)`.
#[cold]
#[inline(never)]
fn read_effective_low() -> u32 {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData records (version 3) into `data` and
    // may update `hdr`; both are live, correctly sized and exclusively ours.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    data[0].effective
}

/// Raw memory-management system calls.
///
/// The preload shim interposes libc's `mmap`/`munmap`/`mremap`/`madvise`
/// and calls back into this crate from there; going straight to the kernel
/// keeps our own calls out of that loop.
pub mod mm {
    use uiommufd_abi::Errno;

    fn ret(rc: libc::c_long) -> Result<u64, Errno> {
        if rc < 0 && rc > -4096 {
            Err(Errno((-rc) as i32))
        } else if rc == -1 {
            Err(Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL)))
        } else {
            Ok(rc as u64)
        }
    }

    /// `mmap(2)` without libc's wrapper.
    ///
    /// # Safety
    /// With `MAP_FIXED` the caller must own `[addr, addr + len)`: whatever is
    /// mapped there is replaced.
    pub unsafe fn mmap(addr: u64, len: u64, prot: i32, flags: i32, fd: i32, off: u64) -> Result<u64, Errno> {
        // SAFETY: the kernel validates every argument; the caller vouches
        // for the address range it replaces.
        ret(unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) })
    }

    /// `mremap(2)` to a fixed address.
    ///
    /// # Safety
    /// The caller must own both ranges: the source loses its pages and the
    /// destination is replaced.
    pub unsafe fn mremap_fixed(old: u64, old_len: u64, new_len: u64, new_addr: u64) -> Result<u64, Errno> {
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: as above; the kernel validates the ranges.
        ret(unsafe { libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) })
    }

    /// `mremap(2)` of `len` bytes to a fixed address, leaving the source
    /// mapped (`MREMAP_DONTUNMAP`, Linux 5.7; any mapping since 5.13): its
    /// pages go to `new_addr`, the source range stays a mapping of the same
    /// kind, now without them (a private anonymous one reads zeros). No
    /// hole opens at the source, so no other thread's `mmap` can land
    /// there. `Err` where the kernel cannot (then nothing moved).
    ///
    /// # Safety
    /// As [`mremap_fixed`]: the caller must own both ranges.
    pub unsafe fn mremap_fixed_keep(old: u64, len: u64, new_addr: u64) -> Result<u64, Errno> {
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP;
        // SAFETY: as above; the kernel validates the ranges and flags.
        ret(unsafe { libc::syscall(libc::SYS_mremap, old, len, len, flags, new_addr) })
    }

    /// `mprotect(2)`.
    ///
    /// # Safety
    /// Changing protection of memory others rely on can make their accesses
    /// fault; the caller must own the range.
    pub unsafe fn mprotect(addr: u64, len: u64, prot: i32) -> Result<(), Errno> {
        // SAFETY: as above.
        ret(unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot) }).map(|_| ())
    }
}

/// The calling thread's id (`gettid(2)`).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (`<linux/membarrier.h>`, Linux 4.14).
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED: i32 = 1 << 3;
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED` (Linux 4.14).
pub const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: i32 = 1 << 4;

/// `membarrier(cmd, 0, 0)` (`membarrier(2)`); `Err(errno)` on failure
/// (`ENOSYS` where it is missing or filtered, `EPERM` for
/// `PRIVATE_EXPEDITED` before this process registered, `EINVAL` for a
/// command the kernel lacks).
pub fn membarrier(cmd: i32) -> Result<(), i32> {
    // SAFETY: membarrier takes no pointers; the kernel validates `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0u32, 0i32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOSYS))
    } else {
        Ok(())
    }
}

/// Write `buf` to stderr with one `write(2)` (async-signal-safe; errors
/// ignored).
pub fn write_stderr(buf: &[u8]) {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes.
    let _ = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
}

/// A readiness flag a descriptor can be polled on: a non-blocking eventfd
/// whose counter is 0 (not ready) or 1 (ready). Fault and event queues use
/// it so `poll`/`epoll` on their served descriptors work.
#[derive(Debug)]
pub struct ReadyFlag(std::os::fd::OwnedFd);

impl ReadyFlag {
    /// `ENOMEM` when no eventfd can be had (the kernel's `-ENOMEM` for a
    /// queue it cannot allocate).
    pub fn new() -> Result<ReadyFlag, uiommufd_abi::Errno> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(uiommufd_abi::Errno::ENOMEM);
        }
        let fd = out_of_the_way(fd);
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(ReadyFlag(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// The eventfd, readable while the flag is set.
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// Set or clear the flag.
    pub fn set(&self, ready: bool) {
        let mut v = 0u64;
        // Drain, then raise again if needed: the counter stays 0 or 1.
        // SAFETY: reading 8 bytes into a u64 we own from our eventfd.
        unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        if ready {
            let one = 1u64;
            // SAFETY: writing 8 bytes from a u64 to our eventfd.
            unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// Move a descriptor the engine keeps for itself (an eventfd behind a
/// queue's readiness, a device's BAR memfd, a duplicate of a program's
/// eventfd) near the top of the descriptor range, so it does not
/// take a number the program would otherwise get: the kernel's fault and
/// event queues cost the program exactly the one descriptor it is handed,
/// and the numbers it gets afterwards must be the ones it would get on the
/// kernel. The lowest free number in the last 256 below `RLIMIT_NOFILE`'s
/// soft limit (or below 4096) is used (the descriptor stays where it is
/// when the limit is too low for that or nothing is free there).
pub fn out_of_the_way(fd: std::os::fd::RawFd) -> std::os::fd::RawFd {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `rl`.
    let moved = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        fd
    } else {
        // Not past 4096: a high number grows the kernel's descriptor table.
        let top = rl.rlim_cur.min(4096) as i32;
        if top < 512 || fd >= top - 256 {
            fd
        } else {
            // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor (the system
            // call: not a function the shim interposes).
            let moved = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, top - 256) } as i32;
            if moved < 0 {
                fd
            } else {
                // SAFETY: closing the original, which nothing else refers to.
                unsafe { libc::syscall(libc::SYS_close, fd) };
                moved
            }
        }
    };
    internal::mark(moved);
    moved
}

/// `fstat(2)` of descriptor `fd` (`None` if it fails).
pub fn fstat(fd: std::os::fd::RawFd) -> Option<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `stat` into `st`.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

/// A new memfd of `len` bytes, zero-filled, close-on-exec, named `name`
/// (a NUL-terminated C string): memory the engine hands to the program by
/// `mmap`. `ENOMEM` if none can be had.
pub fn memfd(name: &std::ffi::CStr, len: u64) -> Result<std::os::fd::OwnedFd, uiommufd_abi::Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: `name` is a valid C string; memfd_create touches no other memory.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(uiommufd_abi::Errno::ENOMEM);
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(out_of_the_way(fd)) };
    // SAFETY: ftruncate on our own memfd.
    if unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len as libc::off_t) } != 0 {
        return Err(uiommufd_abi::Errno::ENOMEM);
    }
    Ok(fd)
}

/// Write `data` at byte `offset` of descriptor `fd` (`pwrite(2)`, all of it).
pub fn pwrite_all(fd: std::os::fd::RawFd, data: &[u8], offset: u64) -> Result<(), uiommufd_abi::Errno> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writing from a live slice of `data.len() - done` bytes.
        let n = unsafe {
            libc::pwrite(fd, data[done..].as_ptr().cast(), data.len() - done, (offset + done as u64) as libc::off_t)
        };
        if n <= 0 {
            return Err(uiommufd_abi::Errno::EIO);
        }
        done += n as usize;
    }
    Ok(())
}

/// A duplicate of `fd` for the engine to keep, out of the numbers the
/// program's own opens take (see [`ReadyFlag`]). `EMFILE` if none is left.
pub fn private_dup(fd: std::os::fd::RawFd) -> Result<std::os::fd::OwnedFd, uiommufd_abi::Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no memory.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(uiommufd_abi::Errno::EMFILE);
    }
    // SAFETY: `dup` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(out_of_the_way(dup)) })
}

/// The descriptors the engine and the shim keep for themselves (see
/// [`out_of_the_way`]): a program that closes descriptors it did not open
/// (`closefrom`, `close_range`, a walk of `/proc/self/fd`) must not take
/// them from us, nor put its own files on their numbers. The shim asks
/// [`internal::is`] before it lets the program close or overwrite one.
pub mod internal {
    use std::sync::atomic::{AtomicU64, Ordering};

    const WORDS: usize = (1 << 20) / 64;
    static BITS: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];

    fn at(fd: i32) -> Option<(&'static AtomicU64, u64)> {
        let fd = usize::try_from(fd).ok()?;
        Some((BITS.get(fd / 64)?, 1u64 << (fd % 64)))
    }

    /// `fd` is one of ours.
    pub fn mark(fd: i32) {
        if let Some((w, b)) = at(fd) {
            w.fetch_or(b, Ordering::AcqRel);
        }
    }

    /// `fd` is ours no more (we closed it).
    pub fn unmark(fd: i32) {
        if let Some((w, b)) = at(fd) {
            w.fetch_and(!b, Ordering::AcqRel);
        }
    }

    /// Whether `fd` is one of ours. One load.
    pub fn is(fd: i32) -> bool {
        at(fd).is_some_and(|(w, b)| w.load(Ordering::Acquire) & b != 0)
    }

    /// Ours in `[first, last]`, in order.
    pub fn in_range(first: u32, last: u32, mut f: impl FnMut(i32)) {
        let last = (last as usize).min(WORDS * 64 - 1);
        let mut fd = first as usize;
        while fd <= last {
            let w = BITS[fd / 64].load(Ordering::Acquire) >> (fd % 64);
            if w == 0 {
                fd = (fd / 64 + 1) * 64;
                continue;
            }
            let skip = w.trailing_zeros() as usize;
            fd += skip;
            if fd <= last {
                f(fd as i32);
            }
            fd += 1;
        }
    }
}

/// `RLIMIT_MEMLOCK`'s soft limit in bytes (`None`: unlimited), read now
/// (`getrlimit`).
pub fn memlock_limit_fresh() -> Option<u64> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `rl`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(rl.rlim_cur)
}

/// [`memlock_limit`]'s cache in one word, so that a limit and the
/// [`LIMITS_GENERATION`] it was read in are always read and replaced
/// together: the generation's low 16 bits above the limit in 4 KiB units
/// (48 bits: 1 EiB; [`MEMLOCK_UNLIMITED`] for none). Unset at first: a
/// thread's first read is always a fresh one (its recheck count starts
/// due).
static MEMLOCK_CACHE: AtomicU64 = AtomicU64::new(u64::MAX);
static LIMITS_GENERATION: AtomicU64 = AtomicU64::new(0);
const MEMLOCK_UNLIMITED: u64 = (1 << 48) - 1;

/// A thread reads the limit afresh at least every this many charges.
const MEMLOCK_RECHECK: u32 = 256;

/// Forget the cached resource limits ([`memlock_limit`]): the process may
/// have changed them. The shim calls this after each `setrlimit` and
/// `prlimit` of `RLIMIT_MEMLOCK`; library users who change that limit
/// themselves call it.
pub fn limits_changed() {
    LIMITS_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// `RLIMIT_MEMLOCK`'s soft limit in bytes (`None`: unlimited), as a charge
/// sees it, rounded down to 4 KiB (a whole number of pages on every page
/// size). The kernel reads the limit from the task at every charge (a
/// memory read); a `getrlimit` on every map would be most of a charged
/// map's time, so the limit is cached: read again after
/// [`limits_changed`], and by each thread at least every 256 charges,
/// which bounds how long a change made behind the shim's back (a raw
/// `prlimit64` system call, or another process's `prlimit` on this one)
/// goes unseen. A charge that the cached limit would refuse asks
/// [`memlock_limit_fresh`] before refusing, so a raised limit is always
/// seen.
#[inline]
pub fn memlock_limit() -> Option<u64> {
    thread_local! {
        static UNTIL_RECHECK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    #[cold]
    #[inline(never)]
    fn refresh(gen: u64) -> Option<u64> {
        let v = memlock_limit_fresh();
        let units = v.map_or(MEMLOCK_UNLIMITED, |b| (b >> 12).min(MEMLOCK_UNLIMITED));
        MEMLOCK_CACHE.store(gen << 48 | units, Ordering::Release);
        let _ = UNTIL_RECHECK.try_with(|c| c.set(MEMLOCK_RECHECK));
        v.map(|b| b & !0xfff)
    }
    let gen = LIMITS_GENERATION.load(Ordering::Acquire) & 0xffff;
    let due = UNTIL_RECHECK
        .try_with(|c| {
            let n = c.get();
            c.set(n.saturating_sub(1));
            n == 0
        })
        .unwrap_or(true);
    let cached = MEMLOCK_CACHE.load(Ordering::Acquire);
    if due || cached >> 48 != gen {
        return refresh(gen);
    }
    match cached & MEMLOCK_UNLIMITED {
        MEMLOCK_UNLIMITED => None,
        units => Some(units << 12),
    }
}

/// The real user ID (`getuid(2)`), whose user the kernel charges pinned
/// pages to (`current_user()` at each map). Cached like the capabilities:
/// read once per [`capabilities_changed`], which the shim calls after every
/// call of the `setuid` family, so a map after a change of user charges the
/// new one, without a system call on every map. (A fork keeps the user.)
#[inline]
pub fn getuid() -> u32 {
    static UID_CACHE: AtomicU64 = AtomicU64::new(u64::MAX);
    #[cold]
    #[inline(never)]
    fn read(gen: u64) -> u32 {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        UID_CACHE.store((gen << 32) | uid as u64, Ordering::Release);
        uid
    }
    let gen = CAPS_GENERATION.load(Ordering::Acquire) & 0xffff_ffff;
    let cached = UID_CACHE.load(Ordering::Acquire);
    if cached >> 32 == gen {
        cached as u32
    } else {
        read(gen)
    }
}

/// This process's ID (`getpid(2)`), read once per process rather than on
/// every map: a `pthread_atfork` child handler, registered before the first
/// read, forgets it in a forked child (and [`crate::vmstat`]'s caches of
/// this process's slot with it). A `vfork` child, which runs no fork
/// handler, sees its parent's: it must only `exec` or `_exit`.
#[inline]
pub fn pid() -> u32 {
    match PID.load(Ordering::Acquire) {
        0 => read_pid(),
        pid => pid,
    }
}

static PID: AtomicU32 = AtomicU32::new(0);

#[cold]
#[inline(never)]
fn read_pid() -> u32 {
    static ATFORK: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain extern "C" handler that only stores to
    // atomics (async-signal-safe, as a fork child handler must be).
    ATFORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(pid_after_fork_child));
    });
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    PID.store(pid, Ordering::Release);
    pid
}

extern "C" fn pid_after_fork_child() {
    PID.store(0, Ordering::Release);
    crate::vmstat::after_fork_child();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue's eventfd keeps out of the numbers the program's own opens
    /// take (the kernel's fault queue costs one descriptor, the one it
    /// returns): it sits in the last 256 below `RLIMIT_NOFILE`.
    #[test]
    fn ready_flag_keeps_out_of_the_low_descriptors() {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit into `rl`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        let top = rl.rlim_cur.min(4096) as i32;
        let flag = ReadyFlag::new().unwrap();
        if top >= 512 {
            assert!(flag.fd() >= top - 256 && flag.fd() < top, "fd {} with limit {top}", flag.fd());
        }
        flag.set(true);
        flag.set(false);
    }
}
