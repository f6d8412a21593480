//! The interposed libc entry points, one file per call family.
//!
//! Each function first asks whether the call concerns something we serve;
//! if not, it forwards the call unchanged to the next definition. The
//! variadic C prototypes (`open`, `fcntl`, `ioctl`) are declared with their
//! optional argument spelled out: on the Linux x86-64 and AArch64 calling
//! conventions a variadic argument travels exactly where a fixed one would,
//! and we forward it as received.
//!
//! Families:
//! - [`fds`]: descriptor lifecycle: the open family, close, close_range,
//!   closefrom, the dup family, fcntl;
//! - [`io`]: ioctl and the read/write family on served descriptors;
//! - [`memory`]: mmap of served descriptors, and munmap, mremap, madvise
//!   (pinned pages);
//! - [`signals`]: sigaction/signal (the fault handler's chaining);
//! - [`paths`]: the stat family (a served node or descriptor is a character
//!   device with the emulated numbers), readlink, realpath, access,
//!   opendir, scandir, fopen (the emulated sysfs and debugfs entries are
//!   redirected to the directories `uiommufd run` prepares);
//! - [`creds`]: capability and uid changes.

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use libc::c_int;
use uiommufd_devices::platform::{IOMMU_DEV, VFIO_CONTAINER_DEV, VFIO_DEV_MAJOR, VFIO_GROUP_MAJOR};
use uiommufd_dispatch::{File, Node};

use crate::fdtable;
use crate::fdtable::Entry;
use crate::path::{self, Base};
use crate::real::set_errno;

pub mod creds;
pub mod fds;
pub mod io;
pub mod memory;
pub mod paths;
pub mod signals;

pub use fds::ShimFds;

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

fn fail(errno: c_int) -> c_int {
    set_errno(errno);
    -1
}

/// Whether `UIOMMUFD_IOMMU` names an IOMMU model we have (unset or empty:
/// the mock); the reason if not.
pub(crate) fn model_ok() -> Result<(), &'static str> {
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

pub(crate) fn remember_container(file: &Arc<File>) {
    let mut v = OPENED_AS_CONTAINER.lock().unwrap_or_else(|p| p.into_inner());
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(file));
}

/// Whether `file` was opened as `/dev/vfio/vfio`.
pub(crate) fn opened_as_container(file: &Arc<File>) -> bool {
    let v = OPENED_AS_CONTAINER.lock().unwrap_or_else(|p| p.into_inner());
    v.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(file)))
}

/// `(major, minor)` of the character device a served file is an open of.
/// A device descriptor from a group is none (the kernel's is an anonymous
/// inode): its `fstat` is the backing descriptor's.
pub(crate) fn file_devnum(file: &Arc<File>) -> Option<(u32, u32)> {
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
