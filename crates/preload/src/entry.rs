//! The interposed libc entry points.
//!
//! Each function first asks whether the call concerns something we serve;
//! if not, it forwards the call unchanged to the next definition. The
//! variadic C prototypes (`open`, `fcntl`, `ioctl`) are declared with their
//! optional argument spelled out: on the Linux x86-64 and AArch64 calling
//! conventions a variadic argument travels exactly where a fixed one would,
//! and we forward it as received.
//!
//! Groups:
//! - descriptors: the open family, close, close_range, closefrom, dup
//!   family, fcntl, ioctl, read/write/pread/pwrite, mmap;
//! - memory: munmap, mremap, madvise (pinned pages), sigaction/signal;
//! - paths: the stat family (a served node or descriptor is a character
//!   device with the emulated numbers), readlink, realpath, access,
//!   opendir, scandir, fopen (the emulated sysfs and debugfs entries are
//!   redirected to the directories `uiommufd run` prepares).

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void, mode_t};
use uiommufd_abi::Errno;
use uiommufd_devices::platform::{IOMMU_DEV, VFIO_CONTAINER_DEV, VFIO_DEV_MAJOR, VFIO_GROUP_MAJOR};
use uiommufd_dispatch::{FdHost, File, Node};

use crate::fdtable::Entry;
use crate::fork_server::Remote;
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

/// Whether `UIOMMUFD_IOMMU` names an IOMMU model we have (unset or empty:
/// the mock); the reason if not.
fn model_ok() -> Result<(), &'static str> {
    static MODEL: OnceLock<Result<(), String>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let m = std::env::var("UIOMMUFD_IOMMU").unwrap_or_default();
            uiommufd_devices::platform::parse_iommu(&m).map(|_| ())
        })
        .as_ref()
        .map(|_| ())
        .map_err(String::as_str)
}

/// The iommufd files opened as `/dev/vfio/vfio` (the others are
/// `/dev/iommu`): what their `fstat` reports. Short-lived lock, taken only
/// inside engine calls.
static OPENED_AS_CONTAINER: Mutex<Vec<Weak<File>>> = Mutex::new(Vec::new());

fn remember_container(file: &Arc<File>) {
    let mut v = OPENED_AS_CONTAINER.lock().unwrap_or_else(|p| p.into_inner());
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(file));
}

/// `(major, minor)` of the character device a served file is an open of.
/// A device descriptor from a group is none (the kernel's is an anonymous
/// inode): its `fstat` is the backing descriptor's.
fn file_devnum(file: &Arc<File>) -> Option<(u32, u32)> {
    match &**file {
        File::VfioDevice(f) if f.from_group() => None,
        File::VfioDevice(f) => f.device().map(|d| (VFIO_DEV_MAJOR, d.index())),
        File::VfioGroup(f) => f.group().map(|g| (VFIO_GROUP_MAJOR, g.number())),
        File::Iommufd(_) => {
            let v = OPENED_AS_CONTAINER.lock().unwrap_or_else(|p| p.into_inner());
            let container = v.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(file)));
            Some(if container { VFIO_CONTAINER_DEV } else { IOMMU_DEV })
        }
        _ => None,
    }
}

/// The file behind `fd` for `mmap` and `fstat`: ours, or for a descriptor
/// inherited from the parent's engine our inert copy of it as of the fork
/// (a device's BAR memory is the parent's; its numbers are the same).
fn file_or_inherited_copy(fd: c_int) -> Option<Arc<File>> {
    match fdtable::get_entry(fd)? {
        Entry::Local(file) => Some(file),
        Entry::Remote(r) => r.local().cloned(),
    }
}

/// `(major, minor)` of the served node `path` names, if any.
fn node_devnum(path: &CStr, base: Base) -> Option<(u32, u32)> {
    let node = path::node_for(path, base)?;
    if model_ok().is_err() {
        return None;
    }
    match node {
        Node::Iommu => Some(IOMMU_DEV),
        Node::VfioContainer => Some(VFIO_CONTAINER_DEV),
        Node::VfioDevice(i) => Some((VFIO_DEV_MAJOR, i)),
        Node::VfioGroup(g) => Some((VFIO_GROUP_MAJOR, g)),
        Node::FailNth(_) => None,
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

    fn dup_fd(&self, fd: i32) -> Result<std::os::fd::OwnedFd, Errno> {
        // SAFETY: F_DUPFD_CLOEXEC through libc's fcntl creates a descriptor
        // and touches no memory.
        uiommufd_dispatch::vfio_device::dup_with(fd, |fd, cmd, arg| unsafe { real::fcntl(fd, cmd, arg as c_long) })
    }

    fn fd_is_open(&self, fd: i32) -> bool {
        // SAFETY: F_GETFD reads the descriptor's flags.
        fd >= 0 && unsafe { real::fcntl(fd, libc::F_GETFD, 0) } >= 0
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
    if !matches!(node, Node::FailNth(_)) {
        if let Err(why) = model_ok() {
            if trace::enabled() {
                trace::line(format_args!("open({node:?}): UIOMMUFD_IOMMU names no known model ({why})"));
            }
            return fail(libc::ENODEV);
        }
    }
    let file = match File::try_open(node) {
        Ok(f) => Arc::new(f),
        Err(e) => return fail(e.0),
    };
    if node == Node::VfioContainer {
        remember_container(&file);
    }
    match install_backed(file, flags) {
        Ok(fd) => {
            if trace::enabled() {
                trace::line(format_args!("open({node:?}) = {fd}"));
            }
            fd
        }
        Err(e) => fail(e),
    }
}

/// Shared body of the open family: a served node opens here, an emulated
/// sysfs path opens its stand-in, anything else is `forward(path)`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string, as open(2) requires.
unsafe fn open_common(
    base: Base,
    path: *const c_char,
    flags: c_int,
    forward: impl FnOnce(*const c_char) -> c_int,
) -> c_int {
    if path.is_null() {
        return forward(path);
    }
    // SAFETY: the caller passes a C string per open(2).
    let cpath = unsafe { CStr::from_ptr(path) };
    let served = shielded(None, || path::node_for(cpath, base).map(Ok).or_else(|| redirect(cpath).map(Err)));
    match served {
        None => forward(path),
        Some(Ok(node)) => guard(|| open_served(node, flags)),
        Some(Err(stand_in)) => forward(stand_in.as_ptr()),
    }
}

/// Run `f`, turning a panic into `fallback` (checks that run before a call
/// is forwarded must not unwind into C either).
fn shielded<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The stand-in of an emulated sysfs path (absolute paths only).
fn redirect(path: &CStr) -> Option<CString> {
    path::sysfs_redirect(path)
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

/// # Safety
/// C `open(2)`.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: forwarded per open(2).
    unsafe { open_common(Base::Cwd, path, flags, |p| real::open(p, flags, mode)) }
}

/// # Safety
/// C `open64(2)`.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: forwarded per open(2).
    unsafe { open_common(Base::Cwd, path, flags, |p| real::open64(p, flags, mode)) }
}

/// # Safety
/// C `openat(2)`.
#[no_mangle]
pub unsafe extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: forwarded per openat(2).
    unsafe { open_common(base_of(dirfd), path, flags, |p| real::openat(dirfd, p, flags, mode)) }
}

/// # Safety
/// C `openat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: forwarded per openat(2).
    unsafe { open_common(base_of(dirfd), path, flags, |p| real::openat64(dirfd, p, flags, mode)) }
}

/// # Safety
/// glibc's fortified `__open_2`.
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: forwarded per open(2).
    unsafe { open_common(Base::Cwd, path, flags, |p| real::open_2(p, flags)) }
}

/// # Safety
/// glibc's fortified `__open64_2`.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: forwarded per open(2).
    unsafe { open_common(Base::Cwd, path, flags, |p| real::open64_2(p, flags)) }
}

/// # Safety
/// glibc's fortified `__openat_2`.
#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: forwarded per openat(2).
    unsafe { open_common(base_of(dirfd), path, flags, |p| real::openat_2(dirfd, p, flags)) }
}

/// # Safety
/// glibc's fortified `__openat64_2`.
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: forwarded per openat(2).
    unsafe { open_common(base_of(dirfd), path, flags, |p| real::openat64_2(dirfd, p, flags)) }
}

/// # Safety
/// C `close(2)`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if !fdtable::is_ours(fd) {
        // SAFETY: forwarded per close(2).
        return unsafe { real::close(fd) };
    }
    let mut entry = None;
    let rc = guard(|| {
        // Forget the number before the kernel can hand it out again.
        entry = fdtable::remove(fd);
        // SAFETY: closing the backing descriptor of a file we served.
        let rc = unsafe { real::close(fd) };
        let errno = real::errno();
        if trace::enabled() {
            trace::line(format_args!("close({fd}) = {rc}"));
        }
        set_errno(errno);
        rc
    });
    // The engine's teardown for the last descriptor runs here.
    release(entry);
    rc
}

/// Drop what closed (or overwritten) descriptors referred to: the engine's
/// teardown of a file whose last reference goes. A file something else
/// still holds may be held by a forked child's session: the fork server
/// first handles what the children did already (exited, closed their
/// descriptors), so that, as with the kernel's files, a close that comes
/// after those is the last one. Keeps errno.
fn release(entries: impl IntoIterator<Item = Entry>) {
    let entries: Vec<Entry> = entries.into_iter().collect();
    if entries.is_empty() {
        return;
    }
    let errno = real::errno();
    if entries.iter().any(|e| matches!(e, Entry::Local(f) if Arc::strong_count(f) > 1)) {
        crate::fork_server::settle();
    }
    guard(|| {
        drop(entries);
        0
    });
    set_errno(errno);
}

/// After a successful duplication onto `newfd`, make `newfd` refer to what
/// `oldfd` refers to in our table (or to nothing of ours). What `newfd`
/// referred to before goes to `stale`, for [`release`].
fn after_dup(oldfd: c_int, newfd: c_int, stale: &mut Option<Entry>) -> c_int {
    if newfd < 0 {
        return newfd;
    }
    let errno = real::errno();
    *stale = fdtable::remove(newfd);
    if let Some(entry) = fdtable::get_entry(oldfd) {
        if fdtable::install_entry(newfd, entry).is_err() {
            // SAFETY: closing the duplicate we cannot track.
            unsafe { real::close(newfd) };
            return fail(libc::EMFILE);
        }
        if trace::enabled() {
            trace::line(format_args!("dup({oldfd}) = {newfd}"));
        }
    }
    set_errno(errno);
    newfd
}

/// [`after_dup`] as an engine call, then the release of what `newfd`
/// referred to before.
fn dup_done(oldfd: c_int, newfd: c_int) -> c_int {
    let mut stale = None;
    let rc = guard(|| after_dup(oldfd, newfd, &mut stale));
    release(stale);
    rc
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
    dup_done(fd, r)
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
    dup_done(old, r)
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
    dup_done(old, r)
}

fn fcntl_common(fd: c_int, cmd: c_int, arg: c_long, forward: impl FnOnce() -> c_int) -> c_int {
    let r = forward();
    if (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) && fdtable::is_ours(fd) {
        let _ = arg;
        return dup_done(fd, r);
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
            let mut gone = Vec::new();
            guard(|| {
                gone.extend(ours.into_iter().filter_map(fdtable::remove));
                0
            });
            release(gone);
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
            let mut gone = Vec::new();
            guard(|| {
                gone.extend(ours.into_iter().filter_map(fdtable::remove));
                0
            });
            release(gone);
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
        let file = match fdtable::get_entry(fd) {
            Some(Entry::Local(file)) => file,
            Some(Entry::Remote(remote)) => return remote_ioctl(fd, &remote, request, arg as u64),
            // Closed under our feet by another thread: behave as the kernel
            // would for whatever the number now is.
            // SAFETY: forwarded per ioctl(2).
            None => return unsafe { real::ioctl(fd, request, arg) },
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

/// `ioctl` on a descriptor inherited from the parent: the parent's engine
/// runs it (see [`crate::fork_server`]).
fn remote_ioctl(fd: c_int, remote: &Remote, request: c_ulong, arg: u64) -> c_int {
    let res = remote.ioctl(fd, request, arg);
    if trace::enabled() {
        let cmd = request as u32;
        let name = remote.local().and_then(|f| f.ioctl_name(cmd));
        let name = name.map(std::borrow::Cow::Borrowed).unwrap_or_else(|| format!("{cmd:#x}").into());
        match res {
            Ok(v) => trace::line(format_args!("ioctl({fd} {} (parent's), {name}) = {v}", remote.describe())),
            Err(e) => trace::line(format_args!("ioctl({fd} {} (parent's), {name}) = -1 {e:?}", remote.describe())),
        }
    }
    match res {
        Ok(v) => v,
        Err(e) => fail(e.0),
    }
}

fn trace_ioctl(fd: c_int, file: &File, request: c_ulong, res: &Result<i32, uiommufd_core::Error>) {
    let cmd = request as u32;
    let name = file.ioctl_name(cmd);
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

/// A read or write on `fd` if it is ours: `local` runs it on a file of our
/// engine, `remote` forwards it to the parent's; `None` if `fd` is not
/// ours (the caller forwards the call to libc).
fn served_io(
    fd: c_int,
    what: &str,
    local: impl FnOnce(&File) -> Result<usize, uiommufd_core::Error>,
    remote: impl FnOnce(&Remote) -> Result<usize, Errno>,
) -> Option<isize> {
    if !fdtable::is_ours(fd) {
        return None;
    }
    Some(match fdtable::get_entry(fd)? {
        Entry::Local(file) => guard_io(|| io_result(fd, what, local(&file))),
        Entry::Remote(r) => guard_io(|| {
            io_result(fd, what, remote(&r).map_err(|e| uiommufd_core::Error::new(e, "in the parent's engine")))
        }),
    })
}

/// # Safety
/// C `read(2)`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize {
    served_io(fd, "read", |f| f.read(buf as u64, count, None), |r| r.read(fd, buf as u64, count, None))
        // SAFETY: forwarded per read(2).
        .unwrap_or_else(|| unsafe { real::read(fd, buf, count) })
}

/// # Safety
/// C `write(2)`.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: usize) -> isize {
    served_io(fd, "write", |f| f.write(buf as u64, count, None), |r| r.write(fd, buf as u64, count, None))
        // SAFETY: forwarded per write(2).
        .unwrap_or_else(|| unsafe { real::write(fd, buf, count) })
}

/// # Safety
/// C `pread(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, count: usize, off: libc::off_t) -> isize {
    served_io(fd, "pread", |f| f.read(buf as u64, count, Some(off)), |r| r.read(fd, buf as u64, count, Some(off)))
        // SAFETY: forwarded per pread(2).
        .unwrap_or_else(|| unsafe { real::pread(fd, buf, count, off) })
}

/// # Safety
/// C `pread64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, count: usize, off: libc::off64_t) -> isize {
    served_io(fd, "pread", |f| f.read(buf as u64, count, Some(off)), |r| r.read(fd, buf as u64, count, Some(off)))
        // SAFETY: forwarded per pread(2).
        .unwrap_or_else(|| unsafe { real::pread64(fd, buf, count, off) })
}

/// # Safety
/// C `pwrite(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, count: usize, off: libc::off_t) -> isize {
    served_io(fd, "pwrite", |f| f.write(buf as u64, count, Some(off)), |r| r.write(fd, buf as u64, count, Some(off)))
        // SAFETY: forwarded per pwrite(2).
        .unwrap_or_else(|| unsafe { real::pwrite(fd, buf, count, off) })
}

/// # Safety
/// C `pwrite64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, count: usize, off: libc::off64_t) -> isize {
    served_io(fd, "pwrite", |f| f.write(buf as u64, count, Some(off)), |r| r.write(fd, buf as u64, count, Some(off)))
        // SAFETY: forwarded per pwrite(2).
        .unwrap_or_else(|| unsafe { real::pwrite64(fd, buf, count, off) })
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

/// `mmap` of a served VFIO device: the region's memory, mapped from the
/// device's memfd (see `VfioDeviceFile::mmap`). Other served files keep
/// their backing descriptor's answer.
fn mmap_served(fd: c_int, addr: *mut c_void, len: usize, prot: c_int, flags: c_int, off: i64) -> Option<*mut c_void> {
    let file = file_or_inherited_copy(fd)?;
    if !matches!(&*file, File::VfioDevice(_)) {
        return None;
    }
    let _engine = fdtable::EngineGuard::enter();
    let res = mmap_file_checks(fd, len, prot, flags, off)
        .map_err(|e| uiommufd_core::Error::new(Errno(e), "mmap(2) checks"))
        .and_then(|()| file.mmap(addr as u64, len as u64, prot, flags, off as u64));
    if trace::enabled() {
        match &res {
            Ok(p) => trace::line(format_args!("mmap({fd} vfio-device, {len:#x} at offset {off:#x}) = {p:#x}")),
            Err(e) => trace::line(format_args!("mmap({fd} vfio-device) = -1 {:?} ({})", e.errno, e.context)),
        }
    }
    Some(match res {
        Ok(p) => p as *mut c_void,
        Err(e) => {
            set_errno(e.errno.0);
            libc::MAP_FAILED
        }
    })
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

/// # Safety
/// C `fopen(3)`: an emulated sysfs file opens its stand-in (glibc's fopen
/// does not go through the interposable `open`).
#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: forwarded per fopen(3); a served node is not served through
    // stdio, so it gets what fopen gives it.
    unsafe { path_call(path, Base::Cwd, || real::fopen(path, mode), |p| real::fopen(p, mode)) }
}

/// # Safety
/// C `fopen64(3)`.
#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
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

// Capability changes: the engine caches the effective set (every map asks
// for CAP_IPC_LOCK, as the kernel's `capable()` does); these calls may
// change it, so the cache is dropped after each.

/// # Safety
/// C `capset(2)`.
#[no_mangle]
pub unsafe extern "C" fn capset(hdr: *mut c_void, data: *const c_void) -> c_int {
    // SAFETY: forwarded per capset(2).
    let rc = unsafe { real::capset(hdr, data) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

/// # Safety
/// C `setuid(2)`.
#[no_mangle]
pub unsafe extern "C" fn setuid(uid: libc::uid_t) -> c_int {
    // SAFETY: forwarded per setuid(2).
    let rc = unsafe { real::setuid(uid) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

/// # Safety
/// C `seteuid(2)`.
#[no_mangle]
pub unsafe extern "C" fn seteuid(uid: libc::uid_t) -> c_int {
    // SAFETY: forwarded per seteuid(2).
    let rc = unsafe { real::seteuid(uid) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

/// # Safety
/// C `setreuid(2)`.
#[no_mangle]
pub unsafe extern "C" fn setreuid(ruid: libc::uid_t, euid: libc::uid_t) -> c_int {
    // SAFETY: forwarded per setreuid(2).
    let rc = unsafe { real::setreuid(ruid, euid) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

/// # Safety
/// C `setresuid(2)`.
#[no_mangle]
pub unsafe extern "C" fn setresuid(ruid: libc::uid_t, euid: libc::uid_t, suid: libc::uid_t) -> c_int {
    // SAFETY: forwarded per setresuid(2).
    let rc = unsafe { real::setresuid(ruid, euid, suid) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}
