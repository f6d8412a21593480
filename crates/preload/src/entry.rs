//! The interposed libc entry points.
//!
//! Each function first asks whether the call concerns something we serve;
//! if not, it forwards the call unchanged to the next definition. The
//! variadic C prototypes (`open`, `fcntl`, `ioctl`) are declared with their
//! optional argument spelled out: on the Linux x86-64 and AArch64 calling
//! conventions a variadic argument travels exactly where a fixed one would,
//! and we forward it as received.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void, mode_t};
use uiommufd_abi::Errno;
use uiommufd_dispatch::{FdHost, File, Node};

use crate::path::{self, Base};
use crate::real::{self, set_errno};
use crate::{fdtable, trace};

/// Run `f`, which may call into the engine (see [`fdtable::EngineGuard`]),
/// turning a panic into `EIO` instead of unwinding into C.
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        let _engine = fdtable::EngineGuard::enter();
        f()
    }))
    .unwrap_or_else(|_| {
        set_errno(libc::EIO);
        -1
    })
}

fn fail(errno: c_int) -> c_int {
    set_errno(errno);
    -1
}

/// The IOMMU model chosen through `UIOMMUFD_IOMMU`; `None` if it names a
/// model we do not have.
fn model_ok() -> bool {
    match std::env::var("UIOMMUFD_IOMMU") {
        Err(_) => true,
        Ok(m) => m.is_empty() || m == "mock",
    }
}

/// Back a served file with a fresh real descriptor and publish it.
fn install_backed(file: Arc<File>, flags: c_int) -> Result<c_int, c_int> {
    let fd = match file.readiness_fd() {
        // A file with readiness (a fault queue) is backed by a duplicate of
        // its eventfd, so poll/epoll on the served descriptor see it.
        Some(ready) => {
            let cmd = if flags & libc::O_CLOEXEC != 0 { libc::F_DUPFD_CLOEXEC } else { libc::F_DUPFD };
            // SAFETY: duplicating a descriptor the file owns.
            unsafe { real::fcntl(ready, cmd, 0) }
        }
        None => {
            let backing_flags = (flags & (libc::O_ACCMODE | libc::O_CLOEXEC | libc::O_NONBLOCK)) | libc::O_NOCTTY;
            // SAFETY: a NUL-terminated literal path; the next `open` is libc's.
            unsafe { real::open(c"/dev/null".as_ptr(), backing_flags, 0) }
        }
    };
    if fd < 0 {
        return Err(real::errno());
    }
    match fdtable::install(fd, file) {
        Ok(_) => Ok(fd),
        Err(_file) => {
            // SAFETY: closing the descriptor we just opened.
            unsafe { real::close(fd) };
            Err(libc::EMFILE)
        }
    }
}

/// The shim's descriptor table, as the engine sees it.
pub struct ShimFds;

impl FdHost for ShimFds {
    fn install(&self, file: Arc<File>, cloexec: bool) -> Result<i32, Errno> {
        let flags = libc::O_RDWR | if cloexec { libc::O_CLOEXEC } else { 0 };
        install_backed(file, flags).map_err(Errno)
    }

    fn uninstall(&self, fd: i32) {
        let file = fdtable::remove(fd);
        // SAFETY: closing the backing descriptor of a file we just served.
        unsafe { real::close(fd) };
        drop(file);
    }

    fn get(&self, fd: i32) -> Option<Arc<File>> {
        fdtable::get(fd)
    }
}

/// Open a served node: back it with a real descriptor, then publish it.
fn open_served(node: Node, flags: c_int) -> c_int {
    if flags & libc::O_DIRECTORY != 0 {
        return fail(libc::ENOTDIR);
    }
    if flags & libc::O_PATH != 0 {
        // An O_PATH open never reaches the driver (the kernel drops every
        // flag but O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC) and its
        // descriptor cannot be used for ioctl (EBADF): an O_PATH descriptor
        // of the backing character device, not served, is exactly that.
        // SAFETY: a NUL-terminated literal path; the next `open` is libc's.
        return unsafe { real::open(c"/dev/null".as_ptr(), libc::O_PATH | (flags & libc::O_CLOEXEC), 0) };
    }
    if flags & (libc::O_CREAT | libc::O_EXCL) == (libc::O_CREAT | libc::O_EXCL) {
        return fail(libc::EEXIST);
    }
    if !matches!(node, Node::FailNth(_)) && !model_ok() {
        if trace::enabled() {
            trace::line(format_args!("open({node:?}): UIOMMUFD_IOMMU names no known model"));
        }
        return fail(libc::ENODEV);
    }
    let file = match File::try_open(node) {
        Ok(f) => f,
        Err(e) => return fail(e.0),
    };
    match install_backed(Arc::new(file), flags) {
        Ok(fd) => {
            if trace::enabled() {
                trace::line(format_args!("open({node:?}) = {fd}"));
            }
            fd
        }
        Err(e) => fail(e),
    }
}

/// Shared body of the open family.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string, as open(2) requires.
unsafe fn open_common(base: Base, path: *const c_char, flags: c_int, forward: impl FnOnce() -> c_int) -> c_int {
    if path.is_null() {
        return forward();
    }
    // SAFETY: the caller passes a C string per open(2).
    let cpath = unsafe { CStr::from_ptr(path) };
    match path::node_for(cpath, base) {
        None => forward(),
        Some(node) => guard(|| open_served(node, flags)),
    }
}

fn base_of(dirfd: c_int) -> Base {
    if dirfd == libc::AT_FDCWD {
        Base::Cwd
    } else {
        Base::Dir(dirfd)
    }
}

/// # Safety
/// C `opendir(3)`.
///
/// With fault injection emulated, `/sys/kernel/debug` opens the stand-in
/// directory `uiommufd run` prepared (see [`path::debugfs_dir`]); everything
/// else is libc's.
#[no_mangle]
pub unsafe extern "C" fn opendir(path: *const c_char) -> *mut libc::DIR {
    if !path.is_null() {
        // SAFETY: the caller passes a C string per opendir(3).
        if let Some(dir) = path::debugfs_dir(unsafe { CStr::from_ptr(path) }) {
            // SAFETY: `dir` is a NUL-terminated path we own.
            return unsafe { real::opendir(dir.as_ptr()) };
        }
    }
    // SAFETY: forwarded per opendir(3).
    unsafe { real::opendir(path) }
}

/// # Safety
/// C `open(2)`.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: forwarded per open(2).
    unsafe { open_common(Base::Cwd, path, flags, || real::open(path, flags, mode)) }
}

/// # Safety
/// C `open64(2)`.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: forwarded per open(2).
    unsafe { open_common(Base::Cwd, path, flags, || real::open64(path, flags, mode)) }
}

/// # Safety
/// C `openat(2)`.
#[no_mangle]
pub unsafe extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: forwarded per openat(2).
    unsafe { open_common(base_of(dirfd), path, flags, || real::openat(dirfd, path, flags, mode)) }
}

/// # Safety
/// C `openat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: forwarded per openat(2).
    unsafe { open_common(base_of(dirfd), path, flags, || real::openat64(dirfd, path, flags, mode)) }
}

/// # Safety
/// glibc's fortified `__open_2`.
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: forwarded per open(2).
    unsafe { open_common(Base::Cwd, path, flags, || real::open_2(path, flags)) }
}

/// # Safety
/// glibc's fortified `__open64_2`.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: forwarded per open(2).
    unsafe { open_common(Base::Cwd, path, flags, || real::open64_2(path, flags)) }
}

/// # Safety
/// glibc's fortified `__openat_2`.
#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: forwarded per openat(2).
    unsafe { open_common(base_of(dirfd), path, flags, || real::openat_2(dirfd, path, flags)) }
}

/// # Safety
/// glibc's fortified `__openat64_2`.
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: forwarded per openat(2).
    unsafe { open_common(base_of(dirfd), path, flags, || real::openat64_2(dirfd, path, flags)) }
}

/// # Safety
/// C `close(2)`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if !fdtable::is_ours(fd) {
        // SAFETY: forwarded per close(2).
        return unsafe { real::close(fd) };
    }
    guard(|| {
        // Forget the number before the kernel can hand it out again.
        let file = fdtable::remove(fd);
        // SAFETY: closing the backing descriptor of a file we served.
        let rc = unsafe { real::close(fd) };
        let errno = real::errno();
        if trace::enabled() {
            trace::line(format_args!("close({fd}) = {rc}"));
        }
        // The engine's teardown for the last descriptor runs here.
        drop(file);
        set_errno(errno);
        rc
    })
}

/// After a successful duplication onto `newfd`, make `newfd` refer to what
/// `oldfd` refers to in our table (or to nothing of ours).
fn after_dup(oldfd: c_int, newfd: c_int) -> c_int {
    if newfd < 0 {
        return newfd;
    }
    let errno = real::errno();
    let stale = fdtable::remove(newfd);
    if let Some(file) = fdtable::get(oldfd) {
        if fdtable::install(newfd, file).is_err() {
            // SAFETY: closing the duplicate we cannot track.
            unsafe { real::close(newfd) };
            drop(stale);
            return fail(libc::EMFILE);
        }
        if trace::enabled() {
            trace::line(format_args!("dup({oldfd}) = {newfd}"));
        }
    }
    drop(stale);
    set_errno(errno);
    newfd
}

/// # Safety
/// C `dup(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarded per dup(2).
    let r = unsafe { real::dup(fd) };
    if !fdtable::is_ours(fd) && !fdtable::is_ours(r) {
        return r;
    }
    guard(|| after_dup(fd, r))
}

/// # Safety
/// C `dup2(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: forwarded per dup2(2).
    let r = unsafe { real::dup2(old, new) };
    if old == new || (!fdtable::is_ours(old) && !fdtable::is_ours(new)) {
        return r;
    }
    guard(|| after_dup(old, r))
}

/// # Safety
/// C `dup3(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded per dup3(2).
    let r = unsafe { real::dup3(old, new, flags) };
    if !fdtable::is_ours(old) && !fdtable::is_ours(new) {
        return r;
    }
    guard(|| after_dup(old, r))
}

fn fcntl_common(fd: c_int, cmd: c_int, arg: c_long, forward: impl FnOnce() -> c_int) -> c_int {
    let r = forward();
    if (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) && fdtable::is_ours(fd) {
        let _ = arg;
        return guard(|| after_dup(fd, r));
    }
    r
}

/// # Safety
/// C `fcntl(2)`.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    // SAFETY: forwarded per fcntl(2).
    fcntl_common(fd, cmd, arg, || unsafe { real::fcntl(fd, cmd, arg) })
}

/// # Safety
/// C `fcntl64(2)`.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    // SAFETY: forwarded per fcntl(2).
    fcntl_common(fd, cmd, arg, || unsafe { real::fcntl64(fd, cmd, arg) })
}

/// # Safety
/// C `close_range(2)`.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: forwarded per close_range(2).
    let r = unsafe { real::close_range(first, last, flags) };
    if r == 0 && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        let ours = fdtable::ours_in(first, last);
        if !ours.is_empty() {
            let errno = real::errno();
            guard(|| {
                for fd in ours {
                    drop(fdtable::remove(fd));
                }
                0
            });
            set_errno(errno);
        }
    }
    r
}

/// # Safety
/// C `closefrom(3)`.
#[no_mangle]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    // SAFETY: forwarded per closefrom(3).
    unsafe { real::closefrom(lowfd) };
    if lowfd >= 0 {
        let ours = fdtable::ours_in(lowfd as u32, u32::MAX);
        if !ours.is_empty() {
            guard(|| {
                for fd in ours {
                    drop(fdtable::remove(fd));
                }
                0
            });
        }
    }
}

/// Requests the VFS handles for every file before the driver sees them; on
/// a served descriptor they apply to the backing descriptor.
fn is_generic_file_ioctl(request: c_ulong) -> bool {
    matches!(request, libc::FIOCLEX | libc::FIONCLEX | libc::FIONBIO | libc::FIOASYNC)
}

/// # Safety
/// C `ioctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    if !fdtable::is_ours(fd) || is_generic_file_ioctl(request) {
        // SAFETY: forwarded per ioctl(2).
        return unsafe { real::ioctl(fd, request, arg) };
    }
    guard(|| {
        let Some(file) = fdtable::get(fd) else {
            // Closed under our feet by another thread: behave as the kernel
            // would for whatever the number now is.
            // SAFETY: forwarded per ioctl(2).
            return unsafe { real::ioctl(fd, request, arg) };
        };
        let res = file.ioctl(&ShimFds, request, arg as u64);
        if trace::enabled() {
            trace_ioctl(fd, &file, request, &res);
        }
        match res {
            Ok(v) => v,
            Err(e) => fail(e.errno.0),
        }
    })
}

fn trace_ioctl(fd: c_int, file: &File, request: c_ulong, res: &Result<i32, uiommufd_core::Error>) {
    let cmd = request as u32;
    let name = uiommufd_dispatch::op_name(cmd);
    let name = name.map(std::borrow::Cow::Borrowed).unwrap_or_else(|| format!("{cmd:#x}").into());
    match res {
        Ok(v) => trace::line(format_args!("ioctl({fd} {}, {name}) = {v}", file.describe())),
        Err(e) => {
            trace::line(format_args!("ioctl({fd} {}, {name}) = -1 {:?} ({})", file.describe(), e.errno, e.context))
        }
    }
}

fn io_result(fd: c_int, what: &str, res: Result<usize, uiommufd_core::Error>) -> isize {
    if trace::enabled() {
        match &res {
            Ok(n) => trace::line(format_args!("{what}({fd}) = {n}")),
            Err(e) => trace::line(format_args!("{what}({fd}) = -1 {:?} ({})", e.errno, e.context)),
        }
    }
    match res {
        Ok(n) => n as isize,
        Err(e) => {
            set_errno(e.errno.0);
            -1
        }
    }
}

/// [`guard`] for calls that return a byte count.
fn guard_io(f: impl FnOnce() -> isize) -> isize {
    catch_unwind(AssertUnwindSafe(|| {
        let _engine = fdtable::EngineGuard::enter();
        f()
    }))
    .unwrap_or_else(|_| {
        set_errno(libc::EIO);
        -1
    })
}

/// # Safety
/// C `read(2)`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize {
    match fdtable::is_ours(fd).then(|| fdtable::get(fd)).flatten() {
        // SAFETY: forwarded per read(2).
        None => unsafe { real::read(fd, buf, count) },
        Some(file) => guard_io(|| io_result(fd, "read", file.read(buf as u64, count, None))),
    }
}

/// # Safety
/// C `write(2)`.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: usize) -> isize {
    match fdtable::is_ours(fd).then(|| fdtable::get(fd)).flatten() {
        // SAFETY: forwarded per write(2).
        None => unsafe { real::write(fd, buf, count) },
        Some(file) => guard_io(|| io_result(fd, "write", file.write(buf as u64, count, None))),
    }
}

/// # Safety
/// C `pread(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, count: usize, off: libc::off_t) -> isize {
    match fdtable::is_ours(fd).then(|| fdtable::get(fd)).flatten() {
        // SAFETY: forwarded per pread(2).
        None => unsafe { real::pread(fd, buf, count, off) },
        Some(file) => guard_io(|| io_result(fd, "pread", file.read(buf as u64, count, Some(off)))),
    }
}

/// # Safety
/// C `pread64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, count: usize, off: libc::off64_t) -> isize {
    match fdtable::is_ours(fd).then(|| fdtable::get(fd)).flatten() {
        // SAFETY: forwarded per pread(2).
        None => unsafe { real::pread64(fd, buf, count, off) },
        Some(file) => guard_io(|| io_result(fd, "pread", file.read(buf as u64, count, Some(off)))),
    }
}

/// # Safety
/// C `pwrite(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, count: usize, off: libc::off_t) -> isize {
    match fdtable::is_ours(fd).then(|| fdtable::get(fd)).flatten() {
        // SAFETY: forwarded per pwrite(2).
        None => unsafe { real::pwrite(fd, buf, count, off) },
        Some(file) => guard_io(|| io_result(fd, "pwrite", file.write(buf as u64, count, Some(off)))),
    }
}

/// # Safety
/// C `pwrite64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, count: usize, off: libc::off64_t) -> isize {
    match fdtable::is_ours(fd).then(|| fdtable::get(fd)).flatten() {
        // SAFETY: forwarded per pwrite(2).
        None => unsafe { real::pwrite64(fd, buf, count, off) },
        Some(file) => guard_io(|| io_result(fd, "pwrite", file.write(buf as u64, count, Some(off)))),
    }
}

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

/// # Safety
/// C `sigaction(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    // While our fault handler guards SIGSEGV/SIGBUS, the program's handler
    // for them is recorded as the one ours passes foreign faults to.
    // SAFETY: per sigaction(2), `act` is null or a valid sigaction.
    let new = unsafe { act.as_ref() }.copied();
    if let Some(prev) = uiommufd_memory::guard::chain_sigaction(sig, new) {
        if !old.is_null() {
            // SAFETY: per sigaction(2), `old` is null or writable.
            unsafe { *old = prev };
        }
        return 0;
    }
    // SAFETY: forwarded per sigaction(2).
    unsafe { real::sigaction(sig, act, old) }
}

/// # Safety
/// C `signal(2)` (BSD semantics, as glibc's).
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if !matches!(sig, libc::SIGSEGV | libc::SIGBUS) {
        // SAFETY: forwarded per signal(2).
        return unsafe { real::signal(sig, handler) };
    }
    // SAFETY: all-zero is a valid sigaction (SIG_DFL, no flags).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: all-zero is a valid sigaction.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    if unsafe { sigaction(sig, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}
