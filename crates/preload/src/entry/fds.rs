//! Descriptor lifecycle: the open family, close, close_range, closefrom,
//! the dup family and fcntl.

use std::ffi::CStr;
use std::sync::Arc;

use libc::{c_char, c_int, c_long, c_uint, mode_t};
use uiommufd_abi::Errno;
use uiommufd_dispatch::{FdHost, File, Node};

use uiommufd_memory::sys::internal;

use super::{base_of, fail, guard, model_ok, redirect, remember_container, shielded};
use crate::fdtable::Entry;
use crate::path::{self, Base};
use crate::real::{self, set_errno};
use crate::{fdtable, trace};

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
        let file = fdtable::take(fd);
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
            trace::open_fails_because(why);
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
            crate::inspect::start_once();
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
        Some(Ok(node)) => guard(|| trace::open(node, flags, || open_served(node, flags))),
        Some(Err(stand_in)) => forward(stand_in.as_ptr()),
    }
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
    if internal::is(fd) {
        return close_internal(fd);
    }
    if !fdtable::is_ours(fd) || fdtable::in_vfork_child() {
        // A vfork child's close is of its own descriptor: our table is its
        // parent's.
        // SAFETY: forwarded per close(2).
        return unsafe { real::close(fd) };
    }
    let mut entry = None;
    let rc = guard(|| {
        // Forget the number before the kernel can hand it out again.
        // Other threads' calls on the number wait for the close from here
        // on (then `EBADF`, or the file an open put there since).
        let taken = fdtable::take(fd);
        // SAFETY: closing the backing descriptor of a file we served.
        let rc = unsafe { real::close(fd) };
        let errno = real::errno();
        // The number is free (an open may reuse it now).
        if let Some(t) = &taken {
            t.reopen();
        }
        trace::close(fd, taken.as_ref().map(fdtable::Taken::entry), rc, errno);
        // Calls still using the file by reference end before it is ours
        // to drop.
        entry = taken.and_then(fdtable::Taken::finish);
        set_errno(errno);
        rc
    });
    // The engine's teardown for the last descriptor runs here.
    release(entry);
    rc
}

/// `close` of one of our own descriptors (an engine eventfd, a device's
/// BAR memfd, a fork-server socket, the exec handoff): ours to close from
/// our own code; from the program's (a `/proc/self/fd` walk closing what
/// it did not open) it succeeds without closing anything, so the engine
/// never loses it nor writes to a number the program reuses. The program
/// sees what it would see on the kernel, which has no such descriptor.
fn close_internal(fd: c_int) -> c_int {
    if uiommufd_memory::forkgate::in_shim() {
        internal::unmark(fd);
        // SAFETY: closing a descriptor of ours, from our own code.
        return unsafe { real::close(fd) };
    }
    0
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
        if fdtable::install_entry(newfd, entry.clone()).is_err() {
            // SAFETY: closing the duplicate we cannot track.
            unsafe { real::close(newfd) };
            return fail(libc::EMFILE);
        }
        trace::dup(oldfd, &entry, newfd);
    }
    set_errno(errno);
    newfd
}

/// [`after_dup`] as an engine call, then the release of what `newfd`
/// referred to before.
fn dup_done(oldfd: c_int, newfd: c_int) -> c_int {
    if fdtable::in_vfork_child() {
        return newfd;
    }
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
    if internal::is(new) && !uiommufd_memory::forkgate::in_shim() {
        return fail(libc::EBUSY);
    }
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
    if internal::is(new) && !uiommufd_memory::forkgate::in_shim() {
        return fail(libc::EBUSY);
    }
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
    let r = close_range_around_ours(first, last, flags);
    if r == 0 && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 && !fdtable::in_vfork_child() {
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

/// `close_range(first, last, flags)` on the program's descriptors only:
/// the range is cut around ours (see [`close_internal`]). 0 or -1 with
/// errno, as close_range(2) (its argument checks first).
fn close_range_around_ours(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if first > last {
        // SAFETY: forwarded per close_range(2) (it refuses this).
        return unsafe { real::close_range(first, last, flags) };
    }
    let mut from = first;
    let mut rc = 0;
    let mut ours = Vec::new();
    internal::in_range(first, last, |fd| ours.push(fd as c_uint));
    for fd in ours {
        if fd > from {
            // SAFETY: forwarded per close_range(2), a sub-range.
            rc |= unsafe { real::close_range(from, fd - 1, flags) };
        }
        from = fd + 1;
    }
    if from <= last && from >= first {
        // SAFETY: forwarded per close_range(2), the rest of the range.
        rc |= unsafe { real::close_range(from, last, flags) };
    }
    rc
}

/// # Safety
/// C `closefrom(3)`.
#[no_mangle]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    if lowfd >= 0 && close_range_around_ours(lowfd as c_uint, c_uint::MAX, 0) != 0 {
        // No close_range (an old kernel): libc's walk, which comes back
        // through our `close` for each descriptor.
        // SAFETY: forwarded per closefrom(3).
        unsafe { real::closefrom(lowfd) };
    }
    if lowfd >= 0 && !fdtable::in_vfork_child() {
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

// Passing descriptors (SCM_RIGHTS): see `crate::handoff`.

/// Each `SCM_RIGHTS` descriptor slot of a message's control data.
///
/// # Safety
/// `msg` is a valid msghdr whose control data the kernel or the caller
/// laid out.
unsafe fn rights_slots(msg: &libc::msghdr, mut f: impl FnMut(*mut c_int)) {
    // SAFETY: walking control messages within `msg_controllen`, per the
    // caller's contract; CMSG_* are the libc macros for this layout.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                let n = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..n {
                    f(data.add(i));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

/// # Safety
/// C `sendmsg(2)`. A served descriptor among `SCM_RIGHTS` travels as a
/// memfd that names what it is, for a receiver under the shim.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(sock: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
    // SAFETY: per sendmsg(2), `msg` is null or a valid msghdr.
    let Some(m) = (unsafe { msg.as_ref() }) else {
        // SAFETY: forwarded per sendmsg(2).
        return unsafe { real::sendmsg(sock, msg, flags) };
    };
    if fdtable::occupied() == 0 || m.msg_control.is_null() || m.msg_controllen == 0 {
        // SAFETY: forwarded per sendmsg(2).
        return unsafe { real::sendmsg(sock, msg, flags) };
    }
    let mut served = false;
    // SAFETY: the caller's control data, read only.
    unsafe { rights_slots(m, |p| served |= fdtable::is_ours(p.read_unaligned())) };
    if !served {
        // SAFETY: forwarded per sendmsg(2).
        return unsafe { real::sendmsg(sock, msg, flags) };
    }
    // A copy of the control data with stand-ins for the served ones.
    #[allow(clippy::unnecessary_cast)] // u32 on other C libraries
    let len = m.msg_controllen as usize;
    let mut ctl = vec![0u64; len.div_ceil(8)];
    // SAFETY: copying the caller's `len` control bytes into our buffer.
    unsafe { std::ptr::copy_nonoverlapping(m.msg_control.cast::<u8>(), ctl.as_mut_ptr().cast::<u8>(), len) };
    let mut copy = *m;
    copy.msg_control = ctl.as_mut_ptr().cast();
    let mut stand_ins = Vec::new();
    // SAFETY: our copy of the control data, laid out as the caller's.
    unsafe {
        rights_slots(&copy, |p| {
            let fd = p.read_unaligned();
            let stand_in = fdtable::get_entry(fd).and_then(|e| crate::handoff::passed_stand_in(&e));
            if let Some(s) = stand_in {
                p.write_unaligned(s);
                stand_ins.push(s);
            }
        })
    };
    // SAFETY: forwarded per sendmsg(2), with our control data.
    let r = unsafe { real::sendmsg(sock, &copy, flags) };
    let errno = real::errno();
    for s in stand_ins {
        // SAFETY: closing the memfds we made.
        unsafe { real::close(s) };
    }
    set_errno(errno);
    r
}

/// # Safety
/// C `recvmsg(2)`. A stand-in for a served descriptor among the received
/// `SCM_RIGHTS` becomes the served descriptor, on the same number.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(sock: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    // SAFETY: forwarded per recvmsg(2).
    let r = unsafe { real::recvmsg(sock, msg, flags) };
    // SAFETY: per recvmsg(2), `msg` is valid when the call succeeded.
    let Some(m) = (unsafe { msg.as_ref() }) else { return r };
    if r < 0 || m.msg_control.is_null() || m.msg_controllen == 0 {
        return r;
    }
    let errno = real::errno();
    let cloexec = flags & libc::MSG_CMSG_CLOEXEC != 0;
    let mut got = Vec::new();
    // SAFETY: the control data the kernel just filled in.
    unsafe { rights_slots(m, |p| got.push(p.read_unaligned())) };
    for fd in got {
        shielded((), || crate::handoff::received(fd, cloexec));
    }
    set_errno(errno);
    r
}
