//! The next definitions of the symbols we interpose, from `dlsym(RTLD_NEXT)`.
//!
//! Each is resolved on first use and cached; resolution failure (no libc
//! below us, which cannot happen in a dynamically linked program) makes the
//! call fail with `ENOSYS` rather than crash.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void, mode_t};

pub struct Sym {
    name: &'static [u8],
    addr: AtomicUsize,
}

impl Sym {
    const fn new(name: &'static [u8]) -> Sym {
        Sym { name, addr: AtomicUsize::new(0) }
    }

    /// The address of the next definition, or 0 if there is none.
    pub fn get(&self) -> usize {
        let a = self.addr.load(Ordering::Acquire);
        if a != 0 {
            return a;
        }
        // SAFETY: `name` is a NUL-terminated static string; RTLD_NEXT asks
        // the dynamic linker for the definition after this library's.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) };
        self.addr.store(p as usize, Ordering::Release);
        p as usize
    }
}

macro_rules! real_fns {
    ($($sym:ident : $name:literal => fn $f:ident($($a:ident : $t:ty),*) -> $r:ty;)*) => {
        $(
            static $sym: Sym = Sym::new(concat!($name, "\0").as_bytes());

            /// Call the next definition of this symbol.
            ///
            /// # Safety
            /// Same contract as the libc function of the same name.
            pub unsafe fn $f($($a: $t),*) -> $r {
                let addr = $sym.get();
                if addr == 0 {
                    set_errno(libc::ENOSYS);
                    return -1 as _;
                }
                // SAFETY: `addr` is the address dlsym returned for this very
                // symbol, whose C prototype is the one spelled here.
                let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { std::mem::transmute(addr) };
                // SAFETY: forwarded under the caller's contract.
                unsafe { f($($a),*) }
            }
        )*
    };
}

real_fns! {
    OPEN: "open" => fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    OPEN64: "open64" => fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    OPENAT: "openat" => fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    OPENAT64: "openat64" => fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    OPEN_2: "__open_2" => fn open_2(path: *const c_char, flags: c_int) -> c_int;
    OPEN64_2: "__open64_2" => fn open64_2(path: *const c_char, flags: c_int) -> c_int;
    OPENAT_2: "__openat_2" => fn openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int;
    OPENAT64_2: "__openat64_2" => fn openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int;
    CLOSE: "close" => fn close(fd: c_int) -> c_int;
    CLOSE_RANGE: "close_range" => fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    DUP: "dup" => fn dup(fd: c_int) -> c_int;
    DUP2: "dup2" => fn dup2(old: c_int, new: c_int) -> c_int;
    DUP3: "dup3" => fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    FCNTL: "fcntl" => fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> c_int;
    FCNTL64: "fcntl64" => fn fcntl64(fd: c_int, cmd: c_int, arg: c_long) -> c_int;
    IOCTL: "ioctl" => fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int;
    READ: "read" => fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize;
    MUNMAP: "munmap" => fn munmap(addr: *mut c_void, len: usize) -> c_int;
    MREMAP: "mremap" => fn mremap(old: *mut c_void, old_len: usize, new_len: usize, flags: c_int, new_addr: *mut c_void) -> *mut c_void;
    MADVISE: "madvise" => fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    SIGACTION: "sigaction" => fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
    SIGNAL: "signal" => fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t;
    SIGSET: "sigset" => fn sigset(sig: c_int, disp: libc::sighandler_t) -> libc::sighandler_t;
    SYSV_SIGNAL: "sysv_signal" => fn sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t;
    CAPSET: "capset" => fn capset(hdr: *mut c_void, data: *const c_void) -> c_int;
    SETUID: "setuid" => fn setuid(uid: libc::uid_t) -> c_int;
    SETEUID: "seteuid" => fn seteuid(uid: libc::uid_t) -> c_int;
    SETREUID: "setreuid" => fn setreuid(ruid: libc::uid_t, euid: libc::uid_t) -> c_int;
    SETRESUID: "setresuid" => fn setresuid(ruid: libc::uid_t, euid: libc::uid_t, suid: libc::uid_t) -> c_int;
    SETRLIMIT: "setrlimit" => fn setrlimit(resource: c_int, rl: *const libc::rlimit) -> c_int;
    SETRLIMIT64: "setrlimit64" => fn setrlimit64(resource: c_int, rl: *const libc::rlimit64) -> c_int;
    PRLIMIT: "prlimit" => fn prlimit(pid: libc::pid_t, resource: c_int, new: *const libc::rlimit, old: *mut libc::rlimit) -> c_int;
    PRLIMIT64: "prlimit64" => fn prlimit64(pid: libc::pid_t, resource: c_int, new: *const libc::rlimit64, old: *mut libc::rlimit64) -> c_int;
    WRITE: "write" => fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
    PREAD: "pread" => fn pread(fd: c_int, buf: *mut c_void, count: usize, off: libc::off_t) -> isize;
    PREAD64: "pread64" => fn pread64(fd: c_int, buf: *mut c_void, count: usize, off: libc::off64_t) -> isize;
    PWRITE: "pwrite" => fn pwrite(fd: c_int, buf: *const c_void, count: usize, off: libc::off_t) -> isize;
    PWRITE64: "pwrite64" => fn pwrite64(fd: c_int, buf: *const c_void, count: usize, off: libc::off64_t) -> isize;
    LSEEK: "lseek" => fn lseek(fd: c_int, off: libc::off_t, whence: c_int) -> libc::off_t;
    LSEEK64: "lseek64" => fn lseek64(fd: c_int, off: libc::off64_t, whence: c_int) -> libc::off64_t;
    SENDMSG: "sendmsg" => fn sendmsg(sock: c_int, msg: *const libc::msghdr, flags: c_int) -> isize;
    RECVMSG: "recvmsg" => fn recvmsg(sock: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize;
    READ_CHK: "__read_chk" => fn read_chk(fd: c_int, buf: *mut c_void, count: usize, buflen: usize) -> isize;
    PREAD_CHK: "__pread_chk" => fn pread_chk(fd: c_int, buf: *mut c_void, count: usize, off: libc::off_t, buflen: usize) -> isize;
    PREAD64_CHK: "__pread64_chk" => fn pread64_chk(fd: c_int, buf: *mut c_void, count: usize, off: libc::off64_t, buflen: usize) -> isize;
    POLL: "poll" => fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int;
    POLL_CHK: "__poll_chk" => fn poll_chk(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int, fdslen: usize) -> c_int;
    PPOLL: "ppoll" => fn ppoll(fds: *mut libc::pollfd, nfds: libc::nfds_t, ts: *const libc::timespec, sigmask: *const libc::sigset_t) -> c_int;
    PPOLL_CHK: "__ppoll_chk" => fn ppoll_chk(fds: *mut libc::pollfd, nfds: libc::nfds_t, ts: *const libc::timespec, sigmask: *const libc::sigset_t, fdslen: usize) -> c_int;
    READV: "readv" => fn readv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> isize;
    WRITEV: "writev" => fn writev(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> isize;
    PREADV: "preadv" => fn preadv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off_t) -> isize;
    PREADV64: "preadv64" => fn preadv64(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off64_t) -> isize;
    PWRITEV: "pwritev" => fn pwritev(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off_t) -> isize;
    PWRITEV64: "pwritev64" => fn pwritev64(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off64_t) -> isize;
    PREADV2: "preadv2" => fn preadv2(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off_t, flags: c_int) -> isize;
    PREADV64V2: "preadv64v2" => fn preadv64v2(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off64_t, flags: c_int) -> isize;
    PWRITEV2: "pwritev2" => fn pwritev2(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off_t, flags: c_int) -> isize;
    PWRITEV64V2: "pwritev64v2" => fn pwritev64v2(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off64_t, flags: c_int) -> isize;
    STAT: "stat" => fn stat(path: *const c_char, buf: *mut libc::stat) -> c_int;
    LSTAT: "lstat" => fn lstat(path: *const c_char, buf: *mut libc::stat) -> c_int;
    FSTAT: "fstat" => fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int;
    FSTATAT: "fstatat" => fn fstatat(dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int;
    STAT64: "stat64" => fn stat64(path: *const c_char, buf: *mut libc::stat64) -> c_int;
    LSTAT64: "lstat64" => fn lstat64(path: *const c_char, buf: *mut libc::stat64) -> c_int;
    FSTAT64: "fstat64" => fn fstat64(fd: c_int, buf: *mut libc::stat64) -> c_int;
    FSTATAT64: "fstatat64" => fn fstatat64(dirfd: c_int, path: *const c_char, buf: *mut libc::stat64, flags: c_int) -> c_int;
    STATX: "statx" => fn statx(dirfd: c_int, path: *const c_char, flags: c_int, mask: c_uint, buf: *mut libc::statx) -> c_int;
    XSTAT: "__xstat" => fn xstat(ver: c_int, path: *const c_char, buf: *mut libc::stat) -> c_int;
    LXSTAT: "__lxstat" => fn lxstat(ver: c_int, path: *const c_char, buf: *mut libc::stat) -> c_int;
    FXSTAT: "__fxstat" => fn fxstat(ver: c_int, fd: c_int, buf: *mut libc::stat) -> c_int;
    FXSTATAT: "__fxstatat" => fn fxstatat(ver: c_int, dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int;
    XSTAT64: "__xstat64" => fn xstat64(ver: c_int, path: *const c_char, buf: *mut libc::stat64) -> c_int;
    LXSTAT64: "__lxstat64" => fn lxstat64(ver: c_int, path: *const c_char, buf: *mut libc::stat64) -> c_int;
    FXSTAT64: "__fxstat64" => fn fxstat64(ver: c_int, fd: c_int, buf: *mut libc::stat64) -> c_int;
    FXSTATAT64: "__fxstatat64" => fn fxstatat64(ver: c_int, dirfd: c_int, path: *const c_char, buf: *mut libc::stat64, flags: c_int) -> c_int;
    READLINK: "readlink" => fn readlink(path: *const c_char, buf: *mut c_char, len: usize) -> isize;
    READLINKAT: "readlinkat" => fn readlinkat(dirfd: c_int, path: *const c_char, buf: *mut c_char, len: usize) -> isize;
    READLINK_CHK: "__readlink_chk" => fn readlink_chk(path: *const c_char, buf: *mut c_char, len: usize, buflen: usize) -> isize;
    READLINKAT_CHK: "__readlinkat_chk" => fn readlinkat_chk(dirfd: c_int, path: *const c_char, buf: *mut c_char, len: usize, buflen: usize) -> isize;
    ACCESS: "access" => fn access(path: *const c_char, mode: c_int) -> c_int;
    FACCESSAT: "faccessat" => fn faccessat(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int;
    EUIDACCESS: "euidaccess" => fn euidaccess(path: *const c_char, mode: c_int) -> c_int;
    EACCESS: "eaccess" => fn eaccess(path: *const c_char, mode: c_int) -> c_int;
    GETXATTR: "getxattr" => fn getxattr(path: *const c_char, name: *const c_char, value: *mut c_void, size: usize) -> isize;
    LGETXATTR: "lgetxattr" => fn lgetxattr(path: *const c_char, name: *const c_char, value: *mut c_void, size: usize) -> isize;
    LISTXATTR: "listxattr" => fn listxattr(path: *const c_char, list: *mut c_char, size: usize) -> isize;
    LLISTXATTR: "llistxattr" => fn llistxattr(path: *const c_char, list: *mut c_char, size: usize) -> isize;
    SCANDIR: "scandir" => fn scandir(path: *const c_char, list: *mut c_void, filter: *mut c_void, compar: *mut c_void) -> c_int;
    SCANDIR64: "scandir64" => fn scandir64(path: *const c_char, list: *mut c_void, filter: *mut c_void, compar: *mut c_void) -> c_int;
}

/// Functions that return a pointer: a missing symbol is a null pointer
/// (or `MAP_FAILED` for mmap) with errno `ENOSYS`.
macro_rules! real_ptr_fns {
    ($($sym:ident : $name:literal => fn $f:ident($($a:ident : $t:ty),*) -> $r:ty = $fail:expr;)*) => {
        $(
            static $sym: Sym = Sym::new(concat!($name, "\0").as_bytes());

            /// Call the next definition of this symbol.
            ///
            /// # Safety
            /// Same contract as the libc function of the same name.
            pub unsafe fn $f($($a: $t),*) -> $r {
                let addr = $sym.get();
                if addr == 0 {
                    set_errno(libc::ENOSYS);
                    return $fail;
                }
                // SAFETY: `addr` is the address dlsym returned for this very
                // symbol, whose C prototype is the one spelled here.
                let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { std::mem::transmute(addr) };
                // SAFETY: forwarded under the caller's contract.
                unsafe { f($($a),*) }
            }
        )*
    };
}

real_ptr_fns! {
    MMAP: "mmap" => fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: libc::off_t) -> *mut c_void = libc::MAP_FAILED;
    MMAP64: "mmap64" => fn mmap64(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: libc::off64_t) -> *mut c_void = libc::MAP_FAILED;
    REALPATH: "realpath" => fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char = std::ptr::null_mut();
    REALPATH_CHK: "__realpath_chk" => fn realpath_chk(path: *const c_char, resolved: *mut c_char, len: usize) -> *mut c_char = std::ptr::null_mut();
    CANONICALIZE: "canonicalize_file_name" => fn canonicalize_file_name(path: *const c_char) -> *mut c_char = std::ptr::null_mut();
    FOPEN: "fopen" => fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE = std::ptr::null_mut();
    FOPEN64: "fopen64" => fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE = std::ptr::null_mut();
}

/// `closefrom(3)` returns nothing, so it cannot use the macro's error path.
static CLOSEFROM: Sym = Sym::new(b"closefrom\0");

/// # Safety
/// Same contract as libc's `closefrom`.
pub unsafe fn closefrom(lowfd: c_int) {
    let addr = CLOSEFROM.get();
    if addr == 0 {
        return;
    }
    // SAFETY: `addr` is libc's `void closefrom(int)`.
    let f: unsafe extern "C" fn(c_int) = unsafe { std::mem::transmute(addr) };
    // SAFETY: forwarded under the caller's contract.
    unsafe { f(lowfd) }
}

/// `opendir(3)` returns a pointer, so it cannot use the macro's error path.
static OPENDIR: Sym = Sym::new(b"opendir\0");

/// # Safety
/// Same contract as libc's `opendir`.
pub unsafe fn opendir(path: *const c_char) -> *mut libc::DIR {
    let addr = OPENDIR.get();
    if addr == 0 {
        set_errno(libc::ENOSYS);
        return std::ptr::null_mut();
    }
    // SAFETY: `addr` is libc's `DIR *opendir(const char *)`.
    let f: unsafe extern "C" fn(*const c_char) -> *mut libc::DIR = unsafe { std::mem::transmute(addr) };
    // SAFETY: forwarded under the caller's contract.
    unsafe { f(path) }
}

pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

pub fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}
