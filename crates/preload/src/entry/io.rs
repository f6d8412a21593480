//! ioctl and the read/write family on served descriptors.

use std::sync::Arc;

use libc::{c_int, c_long, c_ulong, c_void};
use uiommufd_abi::Errno;
use uiommufd_decode::io::Buf;
use uiommufd_dispatch::File;

use super::{fail, guard, guard_io, ShimFds};
use crate::fdtable::Entry;
use crate::fork_server::Remote;
use crate::real::{self, set_errno};
use crate::{fdtable, trace};

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
    guard(|| match fdtable::use_entry(fd) {
        Some(fdtable::Use::Borrowed(b)) => local_ioctl(fd, b.file(), request, arg),
        Some(fdtable::Use::Owned(Entry::Local(file))) => local_ioctl(fd, &file, request, arg),
        Some(fdtable::Use::Owned(Entry::Remote(remote))) => remote_ioctl(fd, &remote, request, arg as u64),
        Some(fdtable::Use::Closing) => fail(libc::EBADF),
        // Closed under our feet by another thread: behave as the kernel
        // would for whatever the number now is.
        // SAFETY: forwarded per ioctl(2).
        None => unsafe { real::ioctl(fd, request, arg) },
    })
}

/// `ioctl` on a file of this process's engine.
#[inline(always)]
fn local_ioctl(fd: c_int, file: &Arc<File>, request: c_ulong, arg: *mut c_void) -> c_int {
    let res = trace::ioctl(fd, file, request, arg as u64, || file.ioctl(&ShimFds, request, arg as u64));
    match res {
        Ok(v) => {
            crate::handoff::after_local_call(file);
            v
        }
        Err(e) => fail(e.errno.0),
    }
}

/// `ioctl` on a descriptor inherited from the parent: the parent's engine
/// runs it (see [`crate::fork_server`]).
fn remote_ioctl(fd: c_int, remote: &Arc<Remote>, request: c_ulong, arg: u64) -> c_int {
    let res = trace::remote_ioctl(fd, remote, request, arg, || remote.ioctl(fd, request, arg));
    match res {
        Ok(v) => {
            crate::handoff::after_remote_call(remote);
            v
        }
        Err(e) => fail(e.0),
    }
}

// The read/write family. The kernel's VFS checks a call before the file's
// read or write method sees it (fs/read_write.c: ksys_pread64, vfs_read,
// vfs_readv, rw_verify_area; lib/iov_iter.c: import_iovec); our files all
// have plain read/write methods, so the vector calls run them once per
// segment (do_loop_readv_writev).

/// Which way a call moves bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

/// Where a call reads or writes: at the file position (read, readv,
/// preadv2 at -1) or at an offset (the p* calls).
#[derive(Clone, Copy)]
enum Pos {
    Current,
    At(i64),
}

impl Pos {
    /// The position of the byte `done` bytes into the call; `None` for the
    /// file position.
    fn after(self, done: usize) -> Option<i64> {
        match self {
            Pos::Current => None,
            // Cannot wrap: the call's end was checked (rw_verify_area).
            Pos::At(p) => Some(p.saturating_add(done as i64)),
        }
    }
}

/// `UIO_MAXIOV`: the most segments a vector call takes.
const UIO_MAXIOV: usize = 1024;

/// `RWF_HIPRI`, the only flag a file without `read_iter` accepts.
const RWF_HIPRI: c_int = 0x1;

/// `MAX_RW_COUNT`: the most one call moves (`INT_MAX & PAGE_MASK`).
fn max_rw_count() -> usize {
    (i32::MAX as usize) & !(uiommufd_memory::page_size() - 1)
}

/// The highest user address any kernel we run on accepts (`access_ok`):
/// x86-64 with five-level paging, AArch64 with 52-bit addresses. A range
/// past this or wrapping is `EFAULT` before anything moves; one below it
/// that is not mapped faults when its segment is copied (on a smaller
/// address space the kernel would refuse it up front).
const USER_ADDR_LIMIT: u64 = 1 << 56;

fn access_ok(addr: u64, len: usize) -> bool {
    addr.checked_add(len as u64).is_some_and(|end| end <= USER_ADDR_LIMIT)
}

fn err(errno: c_int, context: &'static str) -> uiommufd_core::Error {
    uiommufd_core::Error::new(Errno(errno), context)
}

/// One read or write of `count` bytes at `buf` on the served `entry`, by
/// its read or write method.
fn entry_io(
    fd: c_int,
    entry: &Entry,
    dir: Dir,
    buf: u64,
    count: usize,
    pos: Option<i64>,
) -> Result<usize, uiommufd_core::Error> {
    match (entry, dir) {
        (Entry::Local(f), Dir::Read) => f.read(buf, count, pos),
        (Entry::Local(f), Dir::Write) => f.write(buf, count, pos),
        (Entry::Remote(r), Dir::Read) => r.read(fd, buf, count, pos).map_err(remote_err),
        (Entry::Remote(r), Dir::Write) => r.write(fd, buf, count, pos).map_err(remote_err),
    }
}

fn remote_err(e: Errno) -> uiommufd_core::Error {
    uiommufd_core::Error::new(e, "in the parent's engine")
}

/// The VFS's checks on the file before it reads its arguments, in the
/// kernel's order: a negative offset (`EINVAL`), a file that has no
/// positioned I/O (`ESPIPE`), a descriptor not open for this direction
/// (`EBADF`), a file without the method (`EINVAL`).
fn file_checks(fd: c_int, entry: &Entry, dir: Dir, pos: Pos) -> Result<(), uiommufd_core::Error> {
    if let Pos::At(p) = pos {
        if p < 0 {
            return Err(err(libc::EINVAL, "negative offset"));
        }
    }
    let file = match entry {
        Entry::Local(f) => Some(f),
        Entry::Remote(r) => r.local(),
    };
    // A descriptor inherited without a local copy: the parent's engine
    // decides.
    let Some(file) = file else { return Ok(()) };
    let caps = file.io_caps();
    if matches!(pos, Pos::At(_)) && !caps.positioned {
        return Err(err(libc::ESPIPE, "the file has no positioned I/O"));
    }
    // SAFETY: F_GETFL reads the descriptor's status flags.
    let fl = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    let acc = fl & libc::O_ACCMODE;
    let (wrong_mode, can) = match dir {
        Dir::Read => (acc == libc::O_WRONLY, caps.read),
        Dir::Write => (acc == libc::O_RDONLY, caps.write),
    };
    if fl >= 0 && wrong_mode {
        return Err(err(libc::EBADF, "the descriptor is not open for this"));
    }
    if !can {
        return Err(err(libc::EINVAL, "the file has no method for this"));
    }
    Ok(())
}

/// `rw_verify_area`: a positioned call must not run past the largest
/// offset.
fn verify_area(pos: Pos, count: usize) -> Result<(), uiommufd_core::Error> {
    match pos {
        Pos::At(p) if p.checked_add(count as i64).is_none() => Err(err(libc::EINVAL, "offset + count overflows")),
        _ => Ok(()),
    }
}

/// read/write/pread/pwrite on the served `entry` (vfs_read/vfs_write).
fn single_io(
    fd: c_int,
    entry: &Entry,
    dir: Dir,
    buf: u64,
    count: usize,
    pos: Pos,
) -> Result<usize, uiommufd_core::Error> {
    file_checks(fd, entry, dir, pos)?;
    if !access_ok(buf, count) {
        return Err(err(libc::EFAULT, "the buffer is outside user space"));
    }
    verify_area(pos, count)?;
    entry_io(fd, entry, dir, buf, count.min(max_rw_count()), pos.after(0))
}

/// The user's iovec array, checked as `import_iovec` does: at most
/// `UIO_MAXIOV` segments (`EINVAL`), readable (`EFAULT`), no length
/// negative as a `ssize_t` (`EINVAL`), each segment inside user space
/// (`EFAULT`); lengths past `MAX_RW_COUNT` in total are shortened.
fn import_iovec(iov: u64, iovcnt: c_int) -> Result<Vec<(u64, usize)>, uiommufd_core::Error> {
    // The system call takes an unsigned long: a negative count is huge.
    let n = iovcnt as c_long as c_ulong as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    if n > UIO_MAXIOV {
        return Err(err(libc::EINVAL, "more than UIO_MAXIOV segments"));
    }
    const SEG: usize = std::mem::size_of::<libc::iovec>();
    if !access_ok(iov, n * SEG) {
        return Err(err(libc::EFAULT, "the iovec array is outside user space"));
    }
    let mut segs = Vec::with_capacity(n);
    for i in 0..n {
        let mut raw = [0u8; SEG];
        uiommufd_memory::copy_from_user(&mut raw, iov + (i * SEG) as u64)
            .map_err(|e| uiommufd_core::Error::new(e, "reading the iovec array"))?;
        let base = u64::from_ne_bytes(raw[..8].try_into().unwrap());
        let len = u64::from_ne_bytes(raw[8..].try_into().unwrap());
        if len as i64 >= 0 {
            segs.push((base, len as usize));
        } else {
            return Err(err(libc::EINVAL, "a segment length is negative as ssize_t"));
        }
    }
    let max = max_rw_count();
    let mut total = 0usize;
    for (base, len) in &mut segs {
        if !access_ok(*base, *len) {
            return Err(err(libc::EFAULT, "a segment is outside user space"));
        }
        *len = (*len).min(max - total);
        total += *len;
    }
    Ok(segs)
}

/// readv/writev/preadv/pwritev (and the v2 forms) on the served `entry`
/// (vfs_readv/vfs_writev, do_loop_readv_writev): the segments in order
/// until one is short or fails; an error after some bytes moved is the
/// count so far.
fn vector_io(
    fd: c_int,
    entry: &Entry,
    dir: Dir,
    iov: u64,
    iovcnt: c_int,
    pos: Pos,
    flags: c_int,
) -> Result<usize, uiommufd_core::Error> {
    file_checks(fd, entry, dir, pos)?;
    let segs = import_iovec(iov, iovcnt)?;
    let total: usize = segs.iter().map(|s| s.1).sum();
    if total == 0 {
        return Ok(0);
    }
    verify_area(pos, total)?;
    if flags & !RWF_HIPRI != 0 {
        return Err(err(libc::EOPNOTSUPP, "RWF_* flags on a file without read_iter/write_iter"));
    }
    let mut done = 0usize;
    for (i, &(base, len)) in segs.iter().enumerate() {
        // The kernel's iterator starts at the first segment even when it
        // is empty, and skips empty segments after that.
        if len == 0 && i > 0 {
            continue;
        }
        match entry_io(fd, entry, dir, base, len, pos.after(done)) {
            Ok(n) => {
                done += n;
                if n != len {
                    break;
                }
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
        if done == total {
            break;
        }
    }
    Ok(done)
}

fn io_result(res: Result<usize, uiommufd_core::Error>) -> isize {
    match res {
        Ok(n) => n as isize,
        Err(e) => {
            set_errno(e.errno.0);
            -1
        }
    }
}

/// Run `call` on `fd`'s entry if `fd` is served; `None` if it is not (the
/// caller forwards the call to libc). `args` are for the trace.
fn served(
    fd: c_int,
    what: &str,
    args: trace::RwArgs,
    call: impl FnOnce(&Entry) -> Result<usize, uiommufd_core::Error>,
) -> Option<isize> {
    if !fdtable::is_ours(fd) {
        return None;
    }
    let entry = fdtable::get_entry(fd)?;
    Some(guard_io(|| io_result(trace::rw(fd, &entry, what, args, || call(&entry)))))
}

fn served_single(fd: c_int, what: &str, dir: Dir, buf: *const c_void, count: usize, pos: Pos) -> Option<isize> {
    let at = match pos {
        Pos::Current => None,
        Pos::At(p) => Some(p),
    };
    let args = trace::RwArgs { buf: Buf::Single(buf as u64), count: count as u64, pos: at, flags: None };
    served(fd, what, args, |e| single_io(fd, e, dir, buf as u64, count, pos))
}

fn served_vector(
    fd: c_int,
    what: &str,
    dir: Dir,
    iov: *const libc::iovec,
    iovcnt: c_int,
    pos: Pos,
    flags: c_int,
) -> Option<isize> {
    let v2 = what.ends_with('2');
    let at = match pos {
        Pos::Current => v2.then_some(-1),
        Pos::At(p) => Some(p),
    };
    let args =
        trace::RwArgs { buf: Buf::Vector { iov: iov as u64, iovcnt }, count: 0, pos: at, flags: v2.then_some(flags) };
    served(fd, what, args, |e| vector_io(fd, e, dir, iov as u64, iovcnt, pos, flags))
}

/// The position preadv2/pwritev2 take: -1 is the file position.
fn pos_v2(off: i64) -> Pos {
    if off == -1 {
        Pos::Current
    } else {
        Pos::At(off)
    }
}

/// # Safety
/// C `read(2)`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize {
    served_single(fd, "read", Dir::Read, buf, count, Pos::Current)
        // SAFETY: forwarded per read(2).
        .unwrap_or_else(|| unsafe { real::read(fd, buf, count) })
}

/// # Safety
/// C `write(2)`.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: usize) -> isize {
    served_single(fd, "write", Dir::Write, buf, count, Pos::Current)
        // SAFETY: forwarded per write(2).
        .unwrap_or_else(|| unsafe { real::write(fd, buf, count) })
}

/// # Safety
/// C `pread(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, count: usize, off: libc::off_t) -> isize {
    served_single(fd, "pread", Dir::Read, buf, count, Pos::At(off))
        // SAFETY: forwarded per pread(2).
        .unwrap_or_else(|| unsafe { real::pread(fd, buf, count, off) })
}

/// # Safety
/// C `pread64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, count: usize, off: libc::off64_t) -> isize {
    served_single(fd, "pread", Dir::Read, buf, count, Pos::At(off))
        // SAFETY: forwarded per pread(2).
        .unwrap_or_else(|| unsafe { real::pread64(fd, buf, count, off) })
}

/// # Safety
/// C `pwrite(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, count: usize, off: libc::off_t) -> isize {
    served_single(fd, "pwrite", Dir::Write, buf, count, Pos::At(off))
        // SAFETY: forwarded per pwrite(2).
        .unwrap_or_else(|| unsafe { real::pwrite(fd, buf, count, off) })
}

/// # Safety
/// C `pwrite64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, count: usize, off: libc::off64_t) -> isize {
    served_single(fd, "pwrite", Dir::Write, buf, count, Pos::At(off))
        // SAFETY: forwarded per pwrite(2).
        .unwrap_or_else(|| unsafe { real::pwrite64(fd, buf, count, off) })
}

// glibc's fortified forms (_FORTIFY_SOURCE): they check the buffer's known
// size, then make the call. A request larger than the buffer goes to
// glibc's own, which stops the program (`__chk_fail`) before reading.

/// # Safety
/// glibc's fortified `__read_chk`.
#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, count: usize, buflen: usize) -> isize {
    if count <= buflen {
        if let Some(r) = served_single(fd, "read", Dir::Read, buf, count, Pos::Current) {
            return r;
        }
    }
    // SAFETY: forwarded per read(2).
    unsafe { real::read_chk(fd, buf, count, buflen) }
}

/// # Safety
/// glibc's fortified `__pread_chk`.
#[no_mangle]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    off: libc::off_t,
    buflen: usize,
) -> isize {
    if count <= buflen {
        if let Some(r) = served_single(fd, "pread", Dir::Read, buf, count, Pos::At(off)) {
            return r;
        }
    }
    // SAFETY: forwarded per pread(2).
    unsafe { real::pread_chk(fd, buf, count, off, buflen) }
}

/// # Safety
/// glibc's fortified `__pread64_chk`.
#[no_mangle]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    off: libc::off64_t,
    buflen: usize,
) -> isize {
    if count <= buflen {
        if let Some(r) = served_single(fd, "pread", Dir::Read, buf, count, Pos::At(off)) {
            return r;
        }
    }
    // SAFETY: forwarded per pread(2).
    unsafe { real::pread64_chk(fd, buf, count, off, buflen) }
}

// poll on served descriptors goes to the kernel (a served file's backing
// descriptor has its readiness); these are here only so that `uiommufd
// trace` shows the calls that wait on served descriptors.

/// # Safety
/// C `poll(2)`.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    // SAFETY: forwarded per poll(2).
    trace::poll("poll", fds, nfds, &timeout, || unsafe { real::poll(fds, nfds, timeout) })
}

/// # Safety
/// glibc's fortified `__poll_chk`.
#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: c_int,
    fdslen: usize,
) -> c_int {
    // SAFETY: forwarded per poll(2).
    trace::poll("poll", fds, nfds, &timeout, || unsafe { real::poll_chk(fds, nfds, timeout, fdslen) })
}

/// # Safety
/// C `ppoll(2)`.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    ts: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: forwarded per ppoll(2).
    trace::poll("ppoll", fds, nfds, &trace::Timespec(ts), || unsafe { real::ppoll(fds, nfds, ts, sigmask) })
}

/// # Safety
/// glibc's fortified `__ppoll_chk`.
#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    ts: *const libc::timespec,
    sigmask: *const libc::sigset_t,
    fdslen: usize,
) -> c_int {
    // SAFETY: forwarded per ppoll(2).
    trace::poll("ppoll", fds, nfds, &trace::Timespec(ts), || unsafe { real::ppoll_chk(fds, nfds, ts, sigmask, fdslen) })
}

// The vector calls.

/// # Safety
/// C `readv(2)`.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> isize {
    served_vector(fd, "readv", Dir::Read, iov, iovcnt, Pos::Current, 0)
        // SAFETY: forwarded per readv(2).
        .unwrap_or_else(|| unsafe { real::readv(fd, iov, iovcnt) })
}

/// # Safety
/// C `writev(2)`.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> isize {
    served_vector(fd, "writev", Dir::Write, iov, iovcnt, Pos::Current, 0)
        // SAFETY: forwarded per writev(2).
        .unwrap_or_else(|| unsafe { real::writev(fd, iov, iovcnt) })
}

/// # Safety
/// C `preadv(2)`.
#[no_mangle]
pub unsafe extern "C" fn preadv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off_t) -> isize {
    served_vector(fd, "preadv", Dir::Read, iov, iovcnt, Pos::At(off), 0)
        // SAFETY: forwarded per preadv(2).
        .unwrap_or_else(|| unsafe { real::preadv(fd, iov, iovcnt, off) })
}

/// # Safety
/// C `preadv64(2)`.
#[no_mangle]
pub unsafe extern "C" fn preadv64(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off64_t) -> isize {
    served_vector(fd, "preadv", Dir::Read, iov, iovcnt, Pos::At(off), 0)
        // SAFETY: forwarded per preadv(2).
        .unwrap_or_else(|| unsafe { real::preadv64(fd, iov, iovcnt, off) })
}

/// # Safety
/// C `pwritev(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwritev(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off_t) -> isize {
    served_vector(fd, "pwritev", Dir::Write, iov, iovcnt, Pos::At(off), 0)
        // SAFETY: forwarded per pwritev(2).
        .unwrap_or_else(|| unsafe { real::pwritev(fd, iov, iovcnt, off) })
}

/// # Safety
/// C `pwritev64(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwritev64(fd: c_int, iov: *const libc::iovec, iovcnt: c_int, off: libc::off64_t) -> isize {
    served_vector(fd, "pwritev", Dir::Write, iov, iovcnt, Pos::At(off), 0)
        // SAFETY: forwarded per pwritev(2).
        .unwrap_or_else(|| unsafe { real::pwritev64(fd, iov, iovcnt, off) })
}

/// # Safety
/// C `preadv2(2)`.
#[no_mangle]
pub unsafe extern "C" fn preadv2(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: libc::off_t,
    flags: c_int,
) -> isize {
    served_vector(fd, "preadv2", Dir::Read, iov, iovcnt, pos_v2(off), flags)
        // SAFETY: forwarded per preadv2(2).
        .unwrap_or_else(|| unsafe { real::preadv2(fd, iov, iovcnt, off, flags) })
}

/// # Safety
/// C `preadv64v2` (glibc's name for the 64-bit-offset `preadv2`).
#[no_mangle]
pub unsafe extern "C" fn preadv64v2(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: libc::off64_t,
    flags: c_int,
) -> isize {
    served_vector(fd, "preadv2", Dir::Read, iov, iovcnt, pos_v2(off), flags)
        // SAFETY: forwarded per preadv2(2).
        .unwrap_or_else(|| unsafe { real::preadv64v2(fd, iov, iovcnt, off, flags) })
}

/// # Safety
/// C `pwritev2(2)`.
#[no_mangle]
pub unsafe extern "C" fn pwritev2(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: libc::off_t,
    flags: c_int,
) -> isize {
    served_vector(fd, "pwritev2", Dir::Write, iov, iovcnt, pos_v2(off), flags)
        // SAFETY: forwarded per pwritev2(2).
        .unwrap_or_else(|| unsafe { real::pwritev2(fd, iov, iovcnt, off, flags) })
}

/// # Safety
/// C `pwritev64v2` (glibc's name for the 64-bit-offset `pwritev2`).
#[no_mangle]
pub unsafe extern "C" fn pwritev64v2(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    off: libc::off64_t,
    flags: c_int,
) -> isize {
    served_vector(fd, "pwritev2", Dir::Write, iov, iovcnt, pos_v2(off), flags)
        // SAFETY: forwarded per pwritev2(2).
        .unwrap_or_else(|| unsafe { real::pwritev64v2(fd, iov, iovcnt, off, flags) })
}

/// `lseek` on a served descriptor (ksys_lseek): a `whence` past
/// `SEEK_MAX` is `EINVAL`; otherwise `ESPIPE`, as none of the files we
/// serve has an llseek method (the character devices lose `FMODE_LSEEK`
/// at open, the anonymous files never get it). `None` if `fd` is not
/// ours.
fn served_lseek(fd: c_int, off: i64, whence: c_int) -> Option<i64> {
    if !fdtable::is_ours(fd) {
        return None;
    }
    /// `SEEK_MAX` (`SEEK_HOLE`).
    const SEEK_MAX: u32 = 4;
    let errno = if whence as u32 > SEEK_MAX { libc::EINVAL } else { libc::ESPIPE };
    trace::lseek(fd, off, whence, errno);
    set_errno(errno);
    Some(-1)
}

/// # Safety
/// C `lseek(2)`.
#[no_mangle]
pub unsafe extern "C" fn lseek(fd: c_int, off: libc::off_t, whence: c_int) -> libc::off_t {
    // SAFETY: forwarded per lseek(2).
    served_lseek(fd, off, whence).unwrap_or_else(|| unsafe { real::lseek(fd, off, whence) })
}

/// # Safety
/// C `lseek64(2)`.
#[no_mangle]
pub unsafe extern "C" fn lseek64(fd: c_int, off: libc::off64_t, whence: c_int) -> libc::off64_t {
    // SAFETY: forwarded per lseek(2).
    served_lseek(fd, off, whence).unwrap_or_else(|| unsafe { real::lseek64(fd, off, whence) })
}
