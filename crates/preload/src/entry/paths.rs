//! Path-taking calls and the stat family: served nodes are character
//! devices, emulated sysfs and debugfs entries their stand-ins.

use std::ffi::{CStr, CString};

use libc::{c_char, c_int, c_uint, c_void};

use super::{base_of, fail, file_devnum, file_or_inherited_copy, node_devnum, redirect, shielded};
use crate::fdtable;
use crate::path::{self, Base};
use crate::real::{self, set_errno};

/// # Safety
/// C `opendir(3)`.
///
/// With fault injection emulated, `/sys/kernel/debug` opens the stand-in
/// directory `uiommufd run` prepared (see [`path::debugfs_dir`]); the
/// emulated devices' sysfs directories open theirs; everything else is
/// libc's.
#[no_mangle]
pub unsafe extern "C" fn opendir(path: *const c_char) -> *mut libc::DIR {
    if !path.is_null() {
        // SAFETY: the caller passes a C string per opendir(3).
        let cpath = unsafe { CStr::from_ptr(path) };
        if let Some(dir) = shielded(None, || path::debugfs_dir(cpath).or_else(|| redirect(cpath))) {
            // SAFETY: `dir` is a NUL-terminated path we own.
            return unsafe { real::opendir(dir.as_ptr()) };
        }
    }
    // SAFETY: forwarded per opendir(3).
    unsafe { real::opendir(path) }
}

// The stat family.

/// A stable inode number for an emulated node.
fn fake_ino((major, minor): (u32, u32)) -> u64 {
    0x7569_0000_0000_0000 | (u64::from(major) << 24) | u64::from(minor)
}

/// Make a stat of `/dev/null` (or of a served descriptor's backing
/// `/dev/null`) describe the emulated character device `dev`: mode
/// `crw-------` owned by the caller, the emulated device number.
macro_rules! patch_stat {
    ($name:ident, $ty:ty) => {
        fn $name(st: &mut $ty, dev: (u32, u32)) {
            st.st_mode = libc::S_IFCHR | 0o600;
            st.st_rdev = libc::makedev(dev.0, dev.1);
            // SAFETY: getuid/getgid cannot fail.
            st.st_uid = unsafe { libc::getuid() };
            // SAFETY: as above.
            st.st_gid = unsafe { libc::getgid() };
            st.st_ino = fake_ino(dev);
            st.st_nlink = 1;
            st.st_size = 0;
        }
    };
}

patch_stat!(patch_stat, libc::stat);
patch_stat!(patch_stat64, libc::stat64);

fn patch_statx(st: &mut libc::statx, dev: (u32, u32)) {
    st.stx_mode = (libc::S_IFCHR | 0o600) as u16;
    st.stx_rdev_major = dev.0;
    st.stx_rdev_minor = dev.1;
    // SAFETY: getuid/getgid cannot fail.
    st.stx_uid = unsafe { libc::getuid() };
    // SAFETY: as above.
    st.stx_gid = unsafe { libc::getgid() };
    st.stx_ino = fake_ino(dev);
    st.stx_nlink = 1;
    st.stx_size = 0;
}

/// What a path-taking call should look at instead of `path`.
enum PathTarget {
    /// Not ours: the path as given.
    Plain,
    /// A served node with this device number (looked up as `/dev/null`).
    Node((u32, u32)),
    /// An emulated sysfs entry: its stand-in.
    Redirect(CString),
}

/// # Safety
/// `path` is NULL or a NUL-terminated string.
unsafe fn target(path: *const c_char, base: Base) -> PathTarget {
    if path.is_null() {
        return PathTarget::Plain;
    }
    // SAFETY: the caller passes a C string.
    let cpath = unsafe { CStr::from_ptr(path) };
    shielded(PathTarget::Plain, || {
        if let Some(dev) = node_devnum(cpath, base) {
            return PathTarget::Node(dev);
        }
        match redirect(cpath) {
            Some(p) => PathTarget::Redirect(p),
            None => PathTarget::Plain,
        }
    })
}

/// A stat-like call on `path` (relative to `base`) filling `buf`:
/// `call(p)` runs the real function on path `p`.
///
/// # Safety
/// `path` is NULL or a C string; `buf` is what the real function takes.
unsafe fn stat_path<S>(
    path: *const c_char,
    base: Base,
    buf: *mut S,
    patch: fn(&mut S, (u32, u32)),
    call: impl FnOnce(*const c_char) -> c_int,
) -> c_int {
    // SAFETY: per the caller.
    match unsafe { target(path, base) } {
        PathTarget::Plain => call(path),
        PathTarget::Redirect(p) => call(p.as_ptr()),
        PathTarget::Node(dev) => {
            let rc = call(c"/dev/null".as_ptr());
            // SAFETY: the real call filled `buf`, a pointer to an S.
            if let (0, Some(st)) = (rc, unsafe { buf.as_mut() }) {
                patch(st, dev);
            }
            rc
        }
    }
}

/// A stat-like call on descriptor `fd`: `call()` runs the real function;
/// a served descriptor's result then describes its emulated device.
///
/// # Safety
/// `buf` is what the real function takes.
unsafe fn stat_fd<S>(fd: c_int, buf: *mut S, patch: fn(&mut S, (u32, u32)), call: impl FnOnce() -> c_int) -> c_int {
    let rc = call();
    if rc != 0 || !fdtable::is_ours(fd) {
        return rc;
    }
    let errno = real::errno();
    let dev = shielded(None, || {
        let _engine = fdtable::EngineGuard::enter();
        file_or_inherited_copy(fd).as_ref().and_then(file_devnum)
    });
    // SAFETY: the real call filled `buf`, a pointer to an S.
    if let (Some(dev), Some(st)) = (dev, unsafe { buf.as_mut() }) {
        patch(st, dev);
    }
    set_errno(errno);
    rc
}

/// Whether a `*at` call with these arguments is about `dirfd` itself.
///
/// # Safety
/// `path` is NULL or a C string.
unsafe fn empty_path(path: *const c_char, flags: c_int) -> bool {
    // SAFETY: a non-null path is a C string, so its first byte is readable.
    flags & libc::AT_EMPTY_PATH != 0 && (path.is_null() || unsafe { *path } == 0)
}

/// # Safety
/// C `stat(2)`.
#[no_mangle]
pub unsafe extern "C" fn stat(path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: forwarded per stat(2).
    unsafe { stat_path(path, Base::Cwd, buf, patch_stat, |p| real::stat(p, buf)) }
}

/// # Safety
/// C `lstat(2)`.
#[no_mangle]
pub unsafe extern "C" fn lstat(path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: forwarded per lstat(2).
    unsafe { stat_path(path, Base::Cwd, buf, patch_stat, |p| real::lstat(p, buf)) }
}

/// # Safety
/// C `fstat(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: forwarded per fstat(2).
    unsafe { stat_fd(fd, buf, patch_stat, || real::fstat(fd, buf)) }
}

/// # Safety
/// C `fstatat(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstatat(dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int {
    // SAFETY: forwarded per fstatat(2).
    unsafe {
        if empty_path(path, flags) {
            return stat_fd(dirfd, buf, patch_stat, || real::fstatat(dirfd, path, buf, flags));
        }
        stat_path(path, base_of(dirfd), buf, patch_stat, |p| real::fstatat(dirfd, p, buf, flags))
    }
}

/// # Safety
/// C `stat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn stat64(path: *const c_char, buf: *mut libc::stat64) -> c_int {
    // SAFETY: forwarded per stat(2).
    unsafe { stat_path(path, Base::Cwd, buf, patch_stat64, |p| real::stat64(p, buf)) }
}

/// # Safety
/// C `lstat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn lstat64(path: *const c_char, buf: *mut libc::stat64) -> c_int {
    // SAFETY: forwarded per lstat(2).
    unsafe { stat_path(path, Base::Cwd, buf, patch_stat64, |p| real::lstat64(p, buf)) }
}

/// # Safety
/// C `fstat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstat64(fd: c_int, buf: *mut libc::stat64) -> c_int {
    // SAFETY: forwarded per fstat(2).
    unsafe { stat_fd(fd, buf, patch_stat64, || real::fstat64(fd, buf)) }
}

/// # Safety
/// C `fstatat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstatat64(dirfd: c_int, path: *const c_char, buf: *mut libc::stat64, flags: c_int) -> c_int {
    // SAFETY: forwarded per fstatat(2).
    unsafe {
        if empty_path(path, flags) {
            return stat_fd(dirfd, buf, patch_stat64, || real::fstatat64(dirfd, path, buf, flags));
        }
        stat_path(path, base_of(dirfd), buf, patch_stat64, |p| real::fstatat64(dirfd, p, buf, flags))
    }
}

/// # Safety
/// C `statx(2)`.
#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    // SAFETY: forwarded per statx(2).
    unsafe {
        if empty_path(path, flags) {
            return stat_fd(dirfd, buf, patch_statx, || real::statx(dirfd, path, flags, mask, buf));
        }
        stat_path(path, base_of(dirfd), buf, patch_statx, |p| real::statx(dirfd, p, flags, mask, buf))
    }
}

/// # Safety
/// glibc's `__xstat` (what `stat` compiled against glibc < 2.33 calls).
#[no_mangle]
pub unsafe extern "C" fn __xstat(ver: c_int, path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: forwarded per stat(2).
    unsafe { stat_path(path, Base::Cwd, buf, patch_stat, |p| real::xstat(ver, p, buf)) }
}

/// # Safety
/// glibc's `__lxstat`.
#[no_mangle]
pub unsafe extern "C" fn __lxstat(ver: c_int, path: *const c_char, buf: *mut libc::stat) -> c_int {
    // SAFETY: forwarded per lstat(2).
    unsafe { stat_path(path, Base::Cwd, buf, patch_stat, |p| real::lxstat(ver, p, buf)) }
}

/// # Safety
/// glibc's `__fxstat`.
#[no_mangle]
pub unsafe extern "C" fn __fxstat(ver: c_int, fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: forwarded per fstat(2).
    unsafe { stat_fd(fd, buf, patch_stat, || real::fxstat(ver, fd, buf)) }
}

/// # Safety
/// glibc's `__fxstatat`.
#[no_mangle]
pub unsafe extern "C" fn __fxstatat(
    ver: c_int,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarded per fstatat(2).
    unsafe {
        if empty_path(path, flags) {
            return stat_fd(dirfd, buf, patch_stat, || real::fxstatat(ver, dirfd, path, buf, flags));
        }
        stat_path(path, base_of(dirfd), buf, patch_stat, |p| real::fxstatat(ver, dirfd, p, buf, flags))
    }
}

/// # Safety
/// glibc's `__xstat64`.
#[no_mangle]
pub unsafe extern "C" fn __xstat64(ver: c_int, path: *const c_char, buf: *mut libc::stat64) -> c_int {
    // SAFETY: forwarded per stat(2).
    unsafe { stat_path(path, Base::Cwd, buf, patch_stat64, |p| real::xstat64(ver, p, buf)) }
}

/// # Safety
/// glibc's `__lxstat64`.
#[no_mangle]
pub unsafe extern "C" fn __lxstat64(ver: c_int, path: *const c_char, buf: *mut libc::stat64) -> c_int {
    // SAFETY: forwarded per lstat(2).
    unsafe { stat_path(path, Base::Cwd, buf, patch_stat64, |p| real::lxstat64(ver, p, buf)) }
}

/// # Safety
/// glibc's `__fxstat64`.
#[no_mangle]
pub unsafe extern "C" fn __fxstat64(ver: c_int, fd: c_int, buf: *mut libc::stat64) -> c_int {
    // SAFETY: forwarded per fstat(2).
    unsafe { stat_fd(fd, buf, patch_stat64, || real::fxstat64(ver, fd, buf)) }
}

/// # Safety
/// glibc's `__fxstatat64`.
#[no_mangle]
pub unsafe extern "C" fn __fxstatat64(
    ver: c_int,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat64,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarded per fstatat(2).
    unsafe {
        if empty_path(path, flags) {
            return stat_fd(dirfd, buf, patch_stat64, || real::fxstatat64(ver, dirfd, path, buf, flags));
        }
        stat_path(path, base_of(dirfd), buf, patch_stat64, |p| real::fxstatat64(ver, dirfd, p, buf, flags))
    }
}

// Other path-taking calls: served nodes are character devices, emulated
// sysfs entries their stand-ins.

/// A call on `path` that only needs redirecting: `call(p)` on the stand-in
/// or the path as given. A served node is `on_node`'s answer.
///
/// # Safety
/// `path` is NULL or a C string.
unsafe fn path_call<R>(
    path: *const c_char,
    base: Base,
    on_node: impl FnOnce() -> R,
    call: impl FnOnce(*const c_char) -> R,
) -> R {
    // SAFETY: per the caller.
    match unsafe { target(path, base) } {
        PathTarget::Plain => call(path),
        PathTarget::Redirect(p) => call(p.as_ptr()),
        PathTarget::Node(_) => on_node(),
    }
}

/// `readlink` of a served node: it is not a symlink.
fn not_a_link() -> isize {
    set_errno(libc::EINVAL);
    -1
}

/// # Safety
/// C `readlink(2)`.
#[no_mangle]
pub unsafe extern "C" fn readlink(path: *const c_char, buf: *mut c_char, len: usize) -> isize {
    // SAFETY: forwarded per readlink(2).
    unsafe { path_call(path, Base::Cwd, not_a_link, |p| real::readlink(p, buf, len)) }
}

/// # Safety
/// C `readlinkat(2)`.
#[no_mangle]
pub unsafe extern "C" fn readlinkat(dirfd: c_int, path: *const c_char, buf: *mut c_char, len: usize) -> isize {
    // SAFETY: forwarded per readlinkat(2).
    unsafe { path_call(path, base_of(dirfd), not_a_link, |p| real::readlinkat(dirfd, p, buf, len)) }
}

/// # Safety
/// glibc's fortified `__readlink_chk`.
#[no_mangle]
pub unsafe extern "C" fn __readlink_chk(path: *const c_char, buf: *mut c_char, len: usize, buflen: usize) -> isize {
    // SAFETY: forwarded per readlink(2).
    unsafe { path_call(path, Base::Cwd, not_a_link, |p| real::readlink_chk(p, buf, len, buflen)) }
}

/// # Safety
/// glibc's fortified `__readlinkat_chk`.
#[no_mangle]
pub unsafe extern "C" fn __readlinkat_chk(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    len: usize,
    buflen: usize,
) -> isize {
    // SAFETY: forwarded per readlinkat(2).
    unsafe { path_call(path, base_of(dirfd), not_a_link, |p| real::readlinkat_chk(dirfd, p, buf, len, buflen)) }
}

/// `access` of a served node: owner read/write (what its stat says).
fn node_access(mode: c_int) -> c_int {
    if mode & libc::X_OK != 0 {
        return fail(libc::EACCES);
    }
    0
}

/// # Safety
/// C `access(2)`.
#[no_mangle]
pub unsafe extern "C" fn access(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: forwarded per access(2).
    unsafe { path_call(path, Base::Cwd, || node_access(mode), |p| real::access(p, mode)) }
}

/// # Safety
/// C `faccessat(2)`.
#[no_mangle]
pub unsafe extern "C" fn faccessat(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded per faccessat(2).
    unsafe { path_call(path, base_of(dirfd), || node_access(mode), |p| real::faccessat(dirfd, p, mode, flags)) }
}

/// # Safety
/// C `euidaccess(3)`.
#[no_mangle]
pub unsafe extern "C" fn euidaccess(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: forwarded per euidaccess(3).
    unsafe { path_call(path, Base::Cwd, || node_access(mode), |p| real::euidaccess(p, mode)) }
}

/// # Safety
/// C `eaccess(3)`.
#[no_mangle]
pub unsafe extern "C" fn eaccess(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: forwarded per eaccess(3).
    unsafe { path_call(path, Base::Cwd, || node_access(mode), |p| real::eaccess(p, mode)) }
}

/// `getxattr` of a served node: it has no extended attributes (what
/// devtmpfs answers, and what `ls -l` expects when it asks for an SELinux
/// label).
fn no_xattr() -> isize {
    set_errno(libc::ENODATA);
    -1
}

/// # Safety
/// C `getxattr(2)`.
#[no_mangle]
pub unsafe extern "C" fn getxattr(path: *const c_char, name: *const c_char, value: *mut c_void, size: usize) -> isize {
    // SAFETY: forwarded per getxattr(2).
    unsafe { path_call(path, Base::Cwd, no_xattr, |p| real::getxattr(p, name, value, size)) }
}

/// # Safety
/// C `lgetxattr(2)`.
#[no_mangle]
pub unsafe extern "C" fn lgetxattr(path: *const c_char, name: *const c_char, value: *mut c_void, size: usize) -> isize {
    // SAFETY: forwarded per lgetxattr(2).
    unsafe { path_call(path, Base::Cwd, no_xattr, |p| real::lgetxattr(p, name, value, size)) }
}

/// # Safety
/// C `listxattr(2)`: a served node lists none.
#[no_mangle]
pub unsafe extern "C" fn listxattr(path: *const c_char, list: *mut c_char, size: usize) -> isize {
    // SAFETY: forwarded per listxattr(2).
    unsafe { path_call(path, Base::Cwd, || 0, |p| real::listxattr(p, list, size)) }
}

/// # Safety
/// C `llistxattr(2)`.
#[no_mangle]
pub unsafe extern "C" fn llistxattr(path: *const c_char, list: *mut c_char, size: usize) -> isize {
    // SAFETY: forwarded per llistxattr(2).
    unsafe { path_call(path, Base::Cwd, || 0, |p| real::llistxattr(p, list, size)) }
}

/// `/proc/PID/status` (or `/proc/self/status`) of a process the engine
/// pins pages for, read-only: the kernel's text with the engine's share of
/// `VmPin` and `VmLck` added (`uiommufd_memory::vmstat`), in a memfd the
/// returned stream owns. `None`: not such a file, or nothing to add.
///
/// # Safety
/// `path` and `mode` are NULL or C strings, as fopen(3) takes them.
unsafe fn proc_status_fopen(path: *const c_char, mode: *const c_char) -> Option<*mut libc::FILE> {
    if path.is_null() || mode.is_null() {
        return None;
    }
    // SAFETY: the caller passes C strings per fopen(3).
    let (cpath, cmode) = unsafe { (CStr::from_ptr(path), CStr::from_ptr(mode)) };
    let pid = cpath.to_str().ok()?.strip_prefix("/proc/")?.strip_suffix("/status")?;
    let pid: u32 = if pid == "self" { std::process::id() } else { pid.parse().ok()? };
    if cmode.to_bytes().iter().any(|&c| c != b'r' && c != b'e') || uiommufd_memory::vmstat::get(pid) == (0, 0) {
        return None;
    }
    let text = uiommufd_memory::procfs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let text = uiommufd_memory::vmstat::adjust_status(pid, &text);
    // SAFETY: memfd_create with a NUL-terminated name; then writing our own
    // buffer to the new descriptor and handing it to a stream.
    unsafe {
        let fd = libc::memfd_create(c"status".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let done = libc::write(fd, text.as_ptr().cast(), text.len());
        if done != text.len() as isize || libc::lseek(fd, 0, libc::SEEK_SET) != 0 {
            libc::close(fd);
            return None;
        }
        let f = libc::fdopen(fd, c"r".as_ptr());
        if f.is_null() {
            libc::close(fd);
            return None;
        }
        Some(f)
    }
}

/// # Safety
/// C `fopen(3)`: an emulated sysfs file opens its stand-in (glibc's fopen
/// does not go through the interposable `open`); a process's `status`
/// shows the engine's pinned and locked pages.
#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: forwarded per fopen(3).
    if let Some(f) = shielded(None, || unsafe { proc_status_fopen(path, mode) }) {
        return f;
    }
    // SAFETY: forwarded per fopen(3); a served node is not served through
    // stdio, so it gets what fopen gives it.
    unsafe { path_call(path, Base::Cwd, || real::fopen(path, mode), |p| real::fopen(p, mode)) }
}

/// # Safety
/// C `fopen64(3)`.
#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: forwarded per fopen(3).
    if let Some(f) = shielded(None, || unsafe { proc_status_fopen(path, mode) }) {
        return f;
    }
    // SAFETY: forwarded per fopen(3).
    unsafe { path_call(path, Base::Cwd, || real::fopen64(path, mode), |p| real::fopen64(p, mode)) }
}

/// # Safety
/// C `scandir(3)` (glibc's opens its directory internally).
#[no_mangle]
pub unsafe extern "C" fn scandir(
    path: *const c_char,
    list: *mut c_void,
    filter: *mut c_void,
    compar: *mut c_void,
) -> c_int {
    // SAFETY: forwarded per scandir(3).
    unsafe {
        path_call(
            path,
            Base::Cwd,
            || real::scandir(path, list, filter, compar),
            |p| real::scandir(p, list, filter, compar),
        )
    }
}

/// # Safety
/// C `scandir64(3)`.
#[no_mangle]
pub unsafe extern "C" fn scandir64(
    path: *const c_char,
    list: *mut c_void,
    filter: *mut c_void,
    compar: *mut c_void,
) -> c_int {
    // SAFETY: forwarded per scandir(3).
    unsafe {
        path_call(
            path,
            Base::Cwd,
            || real::scandir64(path, list, filter, compar),
            |p| real::scandir64(p, list, filter, compar),
        )
    }
}

/// Turn a path resolved inside the emulated sysfs back into its `/sys`
/// name, in place (the result only gets shorter).
///
/// # Safety
/// `resolved` is NULL or a NUL-terminated string we may write.
unsafe fn unredirect(resolved: *mut c_char) -> *mut c_char {
    if resolved.is_null() {
        return resolved;
    }
    let Some(root) = path::sysfs_root() else { return resolved };
    // SAFETY: realpath returned a C string.
    let len = unsafe { CStr::from_ptr(resolved) }.to_bytes().len();
    // SAFETY: the string's `len` bytes are readable.
    let bytes = unsafe { std::slice::from_raw_parts(resolved as *const u8, len) };
    if bytes.starts_with(root) && bytes.get(root.len()) == Some(&b'/') {
        // SAFETY: moving the tail (with its NUL) to the start of the same
        // buffer; `copy` allows the overlap.
        unsafe { std::ptr::copy(resolved.add(root.len()), resolved, len - root.len() + 1) };
    }
    resolved
}

/// `realpath` of a served node: its normalized name (the nodes are not
/// links), in `resolved` or a new `malloc` buffer.
///
/// # Safety
/// `path` is a C string; `resolved` is NULL or has `PATH_MAX` bytes.
unsafe fn node_realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    // SAFETY: per the caller.
    let p = unsafe { CStr::from_ptr(path) };
    let Some(abs) = shielded(None, || path::absolute_name(p)) else {
        set_errno(libc::ENOENT);
        return std::ptr::null_mut();
    };
    if resolved.is_null() {
        // SAFETY: strdup of a C string we own.
        return unsafe { libc::strdup(abs.as_ptr()) };
    }
    let n = abs.as_bytes_with_nul().len().min(libc::PATH_MAX as usize);
    // SAFETY: `resolved` has PATH_MAX bytes; we copy at most that.
    unsafe { std::ptr::copy_nonoverlapping(abs.as_ptr(), resolved, n) };
    resolved
}

/// # Safety
/// C `realpath(3)`.
#[no_mangle]
pub unsafe extern "C" fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    // SAFETY: forwarded per realpath(3).
    unsafe {
        path_call(
            path,
            Base::Cwd,
            || node_realpath(path, resolved),
            |p| {
                let r = real::realpath(p, resolved);
                if p != path {
                    unredirect(r)
                } else {
                    r
                }
            },
        )
    }
}

/// # Safety
/// glibc's fortified `__realpath_chk`.
#[no_mangle]
pub unsafe extern "C" fn __realpath_chk(path: *const c_char, resolved: *mut c_char, len: usize) -> *mut c_char {
    // SAFETY: forwarded per realpath(3).
    unsafe {
        path_call(
            path,
            Base::Cwd,
            || node_realpath(path, resolved),
            |p| {
                let r = real::realpath_chk(p, resolved, len);
                if p != path {
                    unredirect(r)
                } else {
                    r
                }
            },
        )
    }
}

/// # Safety
/// C `canonicalize_file_name(3)`.
#[no_mangle]
pub unsafe extern "C" fn canonicalize_file_name(path: *const c_char) -> *mut c_char {
    // SAFETY: forwarded per canonicalize_file_name(3).
    unsafe {
        path_call(
            path,
            Base::Cwd,
            || node_realpath(path, std::ptr::null_mut()),
            |p| {
                let r = real::canonicalize_file_name(p);
                if p != path {
                    unredirect(r)
                } else {
                    r
                }
            },
        )
    }
}
