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
    WRITE: "write" => fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
    PREAD: "pread" => fn pread(fd: c_int, buf: *mut c_void, count: usize, off: libc::off_t) -> isize;
    PREAD64: "pread64" => fn pread64(fd: c_int, buf: *mut c_void, count: usize, off: libc::off64_t) -> isize;
    PWRITE: "pwrite" => fn pwrite(fd: c_int, buf: *const c_void, count: usize, off: libc::off_t) -> isize;
    PWRITE64: "pwrite64" => fn pwrite64(fd: c_int, buf: *const c_void, count: usize, off: libc::off64_t) -> isize;
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
