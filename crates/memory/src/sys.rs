//! Small OS queries the engine needs to decide like the kernel does.

/// `CAP_SYS_RESOURCE` from `<linux/capability.h>`.
const CAP_SYS_RESOURCE: u32 = 24;
/// `CAP_IPC_LOCK`.
const CAP_IPC_LOCK: u32 = 14;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

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
    match std::env::var("UIOMMUFD_CAP_SYS_RESOURCE").as_deref() {
        Ok("0") => return false,
        Ok("1") => return true,
        _ => {}
    }
    // SAFETY: geteuid has no preconditions.
    has_cap_sys_resource() || unsafe { libc::geteuid() } == 0
}

/// Whether `CAP_SYS_RESOURCE` is in this process's effective set.
pub fn has_cap_sys_resource() -> bool {
    has_cap(CAP_SYS_RESOURCE)
}

/// `capable(CAP_IPC_LOCK)`: pinned memory is not charged against
/// `RLIMIT_MEMLOCK`. `UIOMMUFD_CAP_IPC_LOCK=0|1` forces the answer.
pub fn capable_ipc_lock() -> bool {
    match std::env::var("UIOMMUFD_CAP_IPC_LOCK").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => has_cap(CAP_IPC_LOCK),
    }
}

/// Whether capability number `cap` is in this process's effective set.
fn has_cap(cap: u32) -> bool {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData records (version 3) into `data` and
    // may update `hdr`; both are live, correctly sized and exclusively ours.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    let word = (cap / 32) as usize;
    data[word].effective & (1 << (cap % 32)) != 0
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

/// Write `buf` to stderr with one `write(2)` (async-signal-safe; errors
/// ignored).
pub fn write_stderr(buf: &[u8]) {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes.
    let _ = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
}
