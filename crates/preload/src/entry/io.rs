//! ioctl and the read/write family on served descriptors.

use libc::{c_int, c_ulong, c_void};
use uiommufd_abi::Errno;
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
