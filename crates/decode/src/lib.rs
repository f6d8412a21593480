//! strace-style decoding of the calls `uiommufd trace` shows: every iommufd
//! command of Linux 7.3's uAPI, the selftest's `IOMMU_TEST_CMD` and its
//! ops, the VFIO container, group, device and migration requests, and the
//! file operations uiommufd serves (the read/write family with the records
//! of fault and event queues, mmap of device regions, open, close, dup,
//! lseek).
//!
//! This crate is pure: it turns bytes into text. The bytes of the traced
//! program come through [`Mem`] (the shim's reads user memory with the
//! guarded copy, so a bad pointer prints as an address and never faults),
//! the text goes to any `fmt::Write` (the shim's is a fixed buffer on the
//! stack: nothing here allocates). A line looks like strace's:
//!
//! ```text
//! ioctl(3</dev/iommu>, IOMMU_IOAS_MAP, {size=40, flags=WRITEABLE|READABLE, ioas_id=2, user_va=0x7f3a12000000, length=0x10000, iova=0} => {iova=0x1000000}) = 0
//! ioctl(3</dev/iommu>, IOMMU_DESTROY, {size=8, id=9}) = -1 ENOENT (No such file or directory) [no object with this ID]
//! ```
//!
//! [`Ioctl`] decodes in two steps (the argument before the call, what the
//! kernel wrote after it); [`io`] the other calls; [`config`] the options
//! of `uiommufd trace` (`-e trace=`, `-t`, `-T`, `-f`, `-s`,
//! `--no-addresses`) as the shim receives them.

pub mod config;
pub mod io;
pub mod ioctl;
mod iommufd;
pub mod out;
mod payload;
mod selftest;
mod vfio;

pub use config::{Config, Filter};
pub use ioctl::{ioctl_class, ioctl_name, Ioctl};
pub use out::{Mem, NoMem, Options, Out};

use uiommufd_abi::Errno;

/// What kind of served file a descriptor refers to: it decides what the
/// numbers of its ioctls mean (VFIO reuses them per file type) and what
/// its reads and writes carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `/dev/iommu`.
    Iommufd,
    /// `/dev/vfio/vfio`: an iommufd that also answers the type1 container
    /// requests.
    VfioContainer,
    /// A VFIO device (cdev or from a group).
    VfioDevice,
    /// `/dev/vfio/<G>`.
    VfioGroup,
    /// A VFIO device's migration data file.
    VfioMigration,
    /// The selftest's access file.
    TestAccess,
    /// A fault queue: reads `iommu_hwpt_pgfault` records, takes
    /// `iommu_hwpt_page_response` writes.
    FaultQueue,
    /// A vEVENTQ of the given `IOMMU_VEVENTQ_TYPE_*`: reads a header and
    /// the type's record per event.
    Veventq(u32),
    /// A thread's `fail-nth`.
    FailNth,
    /// A dma-buf (from `VFIO_DEVICE_FEATURE_DMA_BUF` or the selftest).
    DmaBuf,
}

/// The classes `-e trace=` selects calls by.
pub mod class {
    use crate::FileKind;

    /// Every `IOMMU_*` command (and the files iommufd makes).
    pub const IOMMUFD: u32 = 1 << 0;
    /// `IOMMU_IOAS_*`, `IOMMU_VFIO_IOAS`.
    pub const IOAS: u32 = 1 << 1;
    /// `IOMMU_HWPT_*`.
    pub const HWPT: u32 = 1 << 2;
    /// vIOMMUs, vDEVICEs, vEVENTQs (and their reads), HW queues.
    pub const VIOMMU: u32 = 1 << 3;
    /// Fault queues (allocation, reads, responses).
    pub const FAULT: u32 = 1 << 4;
    /// `IOMMU_TEST_CMD` and the selftest's files.
    pub const TEST: u32 = 1 << 5;
    /// Device-level commands: `IOMMU_GET_HW_INFO`, and VFIO devices.
    pub const DEVICE: u32 = 1 << 6;
    /// Every VFIO request, and I/O on VFIO files.
    pub const VFIO: u32 = 1 << 7;
    /// The type1 container requests.
    pub const VFIO_CONTAINER: u32 = 1 << 8;
    /// Group requests.
    pub const VFIO_GROUP: u32 = 1 << 9;
    /// Device requests, region reads and writes, region mmap.
    pub const VFIO_DEVICE: u32 = 1 << 10;
    /// Migration features and data.
    pub const MIGRATION: u32 = 1 << 11;
    /// The read/write family.
    pub const IO: u32 = 1 << 12;
    /// `mmap`.
    pub const MMAP: u32 = 1 << 13;
    /// Descriptors: open, close, dup, lseek.
    pub const DESC: u32 = 1 << 14;
    pub const ALL: u32 = (1 << 15) - 1;

    /// The class names `-e trace=` takes (a leading `%` is allowed).
    pub const NAMES: &[(&str, u32)] = &[
        ("all", ALL),
        ("iommufd", IOMMUFD),
        ("ioas", IOAS),
        ("hwpt", HWPT),
        ("viommu", VIOMMU),
        ("fault", FAULT),
        ("test", TEST),
        ("device", DEVICE),
        ("vfio", VFIO),
        ("vfio-container", VFIO_CONTAINER),
        ("vfio-group", VFIO_GROUP),
        ("vfio-device", VFIO_DEVICE),
        ("migration", MIGRATION),
        ("io", IO),
        ("mmap", MMAP),
        ("desc", DESC),
    ];

    /// The classes of a call on a file of `kind` that are not its own
    /// (I/O, mmap, descriptors).
    pub const fn of_kind(kind: FileKind) -> u32 {
        match kind {
            FileKind::Iommufd => IOMMUFD,
            FileKind::VfioContainer => IOMMUFD | VFIO | VFIO_CONTAINER,
            FileKind::VfioDevice => VFIO | VFIO_DEVICE | DEVICE,
            FileKind::VfioGroup => VFIO | VFIO_GROUP,
            FileKind::VfioMigration => VFIO | MIGRATION,
            FileKind::TestAccess | FileKind::FailNth => TEST,
            FileKind::FaultQueue => IOMMUFD | FAULT,
            FileKind::Veventq(_) => IOMMUFD | VIOMMU,
            FileKind::DmaBuf => 0,
        }
    }
}

/// A descriptor as strace's `-y` shows it: `3</dev/iommu>` (the calls
/// take any `Display` for the descriptor, so that a caller can print its
/// label without building a string).
pub struct Fd<'a>(pub i32, pub &'a str);

impl core::fmt::Display for Fd<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.1.is_empty() {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}<{}>", self.0, self.1)
        }
    }
}

/// The result: ` = 5`, or ` = -1 ENOENT (No such file or directory)
/// [the engine's reason]`.
pub fn ret(o: &mut Out<'_>, res: Result<i64, (Errno, &str)>) {
    match res {
        Ok(v) => o.fmt(format_args!(" = {v}")),
        Err((e, why)) => {
            match e.name() {
                Some(n) => o.fmt(format_args!(" = -1 {n} ({})", e.description())),
                None => o.fmt(format_args!(" = -1 {}", e.0)),
            }
            if !why.is_empty() {
                o.fmt(format_args!(" [{why}]"));
            }
        }
    }
}

/// [`ret`] for a pointer result (mmap).
pub fn ret_ptr(o: &mut Out<'_>, res: Result<u64, (Errno, &str)>) {
    match res {
        Ok(p) => {
            o.s(" = ");
            o.ptr(p);
        }
        Err(e) => ret(o, Err(e)),
    }
}

#[cfg(test)]
mod tests;
