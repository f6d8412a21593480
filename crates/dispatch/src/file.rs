//! The files uiommufd serves, as a preload shim or an in-process host sees
//! them: what a device node opens to, and what each file does with ioctl.
//!
//! A [`File`] is shared by every descriptor that refers to it (dup, dup2,
//! fcntl(F_DUPFD)); it is released, and its context torn down, when the last
//! descriptor closes, exactly as the kernel's `struct file` is.
//!
//! Some commands create files (the selftest's access, fault queues): they
//! ask the [`FdHost`] — the shim's descriptor table, or [`LocalFds`] for
//! in-process use — to give the new file a descriptor number.

use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use uiommufd_abi::Errno;
use uiommufd_core::ctx::OpenedAs;
use uiommufd_core::fault::Fault;
use uiommufd_core::object::{Borrowed, Dep};
use uiommufd_core::selftest::SelftestAccess;
use uiommufd_core::veventq::Veventq;
use uiommufd_core::{Error, Iommufd};

use crate::vfio_device::{VfioDevice, VfioDeviceFile};
use crate::vfio_group::{VfioGroup, VfioGroupFile};

/// A device node (or control file) uiommufd emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// `/dev/iommu`.
    Iommu,
    /// `/dev/vfio/vfio`, the type1 container node iommufd can stand in for.
    VfioContainer,
    /// `/dev/vfio/devices/vfioN`: the VFIO device cdev of emulated device
    /// `N` (see [`VfioDevice::global`]).
    VfioDevice(u32),
    /// `/dev/vfio/<G>`: the VFIO group node of IOMMU group `G` (see
    /// [`VfioGroup::global`]).
    VfioGroup(u32),
    /// `/proc/self/task/TID/fail-nth` (and its other spellings): the
    /// kernel's per-task fault injection countdown, driving the engine's
    /// injection points. Served only when fault injection is enabled.
    FailNth(i32),
}

impl Node {
    /// The node an absolute, normalized path names, if we serve it.
    pub fn from_path(path: &[u8]) -> Option<Node> {
        match path {
            b"/dev/iommu" => Some(Node::Iommu),
            b"/dev/vfio/vfio" => Some(Node::VfioContainer),
            _ => {
                if let Some(n) = path.strip_prefix(b"/dev/vfio/devices/vfio") {
                    return decimal(n).map(Node::VfioDevice);
                }
                decimal(path.strip_prefix(b"/dev/vfio/")?).map(Node::VfioGroup)
            }
        }
    }

    /// The fail-nth file `path` names, for this process (`pid`) and the
    /// calling thread (`tid`): `/proc/self/task/T/fail-nth`,
    /// `/proc/PID/task/T/fail-nth` or `/proc/thread-self/fail-nth`.
    pub fn fail_nth_from_path(path: &[u8], pid: i32, tid: i32) -> Option<Node> {
        let s = std::str::from_utf8(path).ok()?;
        if s == "/proc/thread-self/fail-nth" {
            return Some(Node::FailNth(tid));
        }
        let rest = s.strip_prefix("/proc/")?.strip_suffix("/fail-nth")?;
        let (who, task) = rest.split_once("/task/")?;
        if who != "self" && who.parse::<i32>().ok()? != pid {
            return None;
        }
        Some(Node::FailNth(task.parse().ok()?))
    }
}

/// A number in decimal as the kernel names its nodes (`vfio%d`, `%d`): no
/// sign, no leading zeros, fits a `u32`.
fn decimal(n: &[u8]) -> Option<u32> {
    if n.is_empty() || (n[0] == b'0' && n.len() > 1) || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// Where served files get their descriptor numbers.
pub trait FdHost: Sync {
    /// Give `file` a new descriptor (close-on-exec when `cloexec`).
    fn install(&self, file: Arc<File>, cloexec: bool) -> Result<i32, Errno>;
    /// Withdraw a descriptor this host just installed (a reply failed).
    fn uninstall(&self, fd: i32);
    /// The served file behind `fd`, if any.
    fn get(&self, fd: i32) -> Option<Arc<File>>;

    /// Duplicate the program's own (not served) descriptor `fd`,
    /// close-on-exec, for a file to keep (an eventfd an interrupt signals):
    /// `EBADF` if it is not open.
    fn dup_fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no
        // memory.
        crate::vfio_device::dup_with(fd, |fd, cmd, arg| unsafe { libc::fcntl(fd, cmd, arg) })
    }

    /// Whether the program's descriptor `fd` is open (to tell `EBADF` from
    /// "not the right kind of file").
    fn fd_is_open(&self, fd: i32) -> bool {
        // SAFETY: F_GETFD reads the descriptor's flags and touches no memory.
        fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
    }
}

/// See [`File::io_caps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoCaps {
    /// The file has a read method.
    pub read: bool,
    /// The file has a write method.
    pub write: bool,
    /// `pread`/`pwrite` and their vector forms are allowed.
    pub positioned: bool,
}

/// An open file served by uiommufd.
pub enum File {
    /// `/dev/iommu` or `/dev/vfio/vfio`: an iommufd context.
    Iommufd(Arc<Iommufd>),
    /// `[iommufd_test_staccess]`: a selftest access.
    SelftestAccess(Arc<SelftestAccess>),
    /// `[iommufd-pgfault]`: a fault queue.
    Fault(FaultFile),
    /// A task's `fail-nth` file.
    FailNth(FailNthFile),
    /// `[iommufd-viommu-event]`: a vIOMMU event queue.
    Veventq(VeventqFile),
    /// `/dev/vfio/devices/vfioN`, or a device descriptor from a group: a
    /// VFIO device.
    VfioDevice(VfioDeviceFile),
    /// `/dev/vfio/<G>`: a VFIO group.
    VfioGroup(VfioGroupFile),
    /// `[vfio-migration]`: a VFIO device's migration data (`data_fd`).
    VfioMigration(crate::vfio_migration::MigrationFile),
    /// `dmabuf:`: a dma-buf exported by the selftest or by vfio-pci.
    DmaBuf(Arc<uiommufd_core::dmabuf::DmaBuf>),
}

/// The file of a fault object: keeps the context alive and holds an edge on
/// the object, so `IOMMU_DESTROY` of the fault is `EBUSY` while it is open.
pub struct FaultFile {
    fault: Dep<Fault>,
    _ctx: Arc<Iommufd>,
}

impl FaultFile {
    pub fn new(ctx: &Arc<Iommufd>, fault: &Arc<Fault>) -> FaultFile {
        FaultFile { fault: Dep::new(&Borrowed::detached(fault)), _ctx: Arc::clone(ctx) }
    }
}

/// The file of a vEVENTQ, like [`FaultFile`]: `IOMMU_DESTROY` of the queue
/// is `EBUSY` while it is open.
pub struct VeventqFile {
    veventq: Dep<Veventq>,
    _ctx: Arc<Iommufd>,
}

impl VeventqFile {
    pub fn new(ctx: &Arc<Iommufd>, veventq: &Arc<Veventq>) -> VeventqFile {
        VeventqFile { veventq: Dep::new(&Borrowed::detached(veventq)), _ctx: Arc::clone(ctx) }
    }

    /// The queue's `IOMMU_VEVENTQ_TYPE_*` (what its records are, for traces).
    pub fn veventq_type(&self) -> u32 {
        self.veventq.veventq_type()
    }
}

/// `/proc/PID/task/TID/fail-nth`: the thread's countdown as text, with a
/// file position for plain `read(2)`.
pub struct FailNthFile {
    tid: i32,
    pos: std::sync::atomic::AtomicI64,
}

impl File {
    /// `open(2)` of `node`. A [`Node::VfioDevice`] that names no device of
    /// the platform opens as a file on which every call fails with `ENODEV`;
    /// a [`Node::VfioGroup`] whose open fails (no such group: `ENODEV`;
    /// open already, or a device of it bound through its cdev: `EBUSY`)
    /// as a file on which every call fails with that errno (use
    /// [`File::try_open`] to be told at open, as the kernel does).
    pub fn open(node: Node) -> File {
        let how = match node {
            Node::Iommu => OpenedAs::Iommu,
            Node::VfioContainer => OpenedAs::VfioContainer,
            Node::FailNth(tid) => return File::FailNth(FailNthFile { tid, pos: Default::default() }),
            Node::VfioDevice(index) => {
                return File::VfioDevice(match VfioDevice::global(index) {
                    Some(dev) => VfioDeviceFile::new(dev),
                    None => VfioDeviceFile::orphan(),
                })
            }
            Node::VfioGroup(number) => {
                let opened = VfioGroup::global(number).ok_or(Errno::ENODEV).and_then(|g| g.open());
                return File::VfioGroup(opened.unwrap_or_else(VfioGroupFile::failed));
            }
        };
        let ctx = Arc::new(Iommufd::open(how));
        crate::status::register(&ctx);
        File::Iommufd(ctx)
    }

    /// [`File::open`] as the kernel's `open` of the node: creating a context
    /// is a fault injection point (`ENOMEM`); a VFIO device that does not
    /// exist is `ENODEV` (`vfio_device_fops_cdev_open`), and so is a group
    /// (`vfio_group_fops_open`, which is `EBUSY` for a group open already or
    /// with a device bound through its cdev).
    pub fn try_open(node: Node) -> Result<File, Errno> {
        if matches!(node, Node::Iommu | Node::VfioContainer) && uiommufd_memory::failpoint::should_fail() {
            return Err(Errno::ENOMEM);
        }
        match node {
            Node::VfioDevice(index) => {
                VfioDevice::global(index).map(|d| File::VfioDevice(VfioDeviceFile::new(d))).ok_or(Errno::ENODEV)
            }
            Node::VfioGroup(number) => File::open_vfio_group(&VfioGroup::global(number).ok_or(Errno::ENODEV)?),
            _ => Ok(File::open(node)),
        }
    }

    /// An open of VFIO device `dev` (for in-process users: install it in a
    /// [`LocalFds`] to get a descriptor number).
    pub fn open_vfio_device(dev: &Arc<VfioDevice>) -> File {
        File::VfioDevice(VfioDeviceFile::new(Arc::clone(dev)))
    }

    /// An open of VFIO group `group` (`EBUSY` if it is open already or a
    /// device of it is bound through its cdev; `ENODEV` without devices).
    pub fn open_vfio_group(group: &Arc<VfioGroup>) -> Result<File, Errno> {
        group.open().map(File::VfioGroup)
    }

    /// `ioctl(2)` with request `request` and argument `arg` (a user address
    /// or a plain integer, depending on the request).
    pub fn ioctl(&self, host: &dyn FdHost, request: u64, arg: u64) -> Result<i32, Error> {
        let r = self.ioctl_inner(host, request, arg);
        crate::status::publish();
        r
    }

    fn ioctl_inner(&self, host: &dyn FdHost, request: u64, arg: u64) -> Result<i32, Error> {
        match self {
            File::Iommufd(ctx) => crate::iommufd_ioctl(ctx, host, request, arg),
            File::VfioDevice(f) => f.ioctl(host, request, arg),
            File::VfioGroup(f) => f.ioctl(host, request, arg),
            File::VfioMigration(f) => f.ioctl(request, arg),
            File::SelftestAccess(_) | File::Fault(_) | File::Veventq(_) | File::FailNth(_) | File::DmaBuf(_) => {
                Err(Error::new(Errno::ENOTTY, "this file has no ioctls"))
            }
        }
    }

    /// The C name of ioctl request `cmd` on this file, for traces.
    pub fn ioctl_name(&self, cmd: u32) -> Option<&'static str> {
        match self {
            File::Iommufd(_) => crate::op_name(cmd).or_else(|| crate::vfio_compat::ioctl_name(cmd)),
            File::VfioDevice(_) => crate::vfio_device::ioctl_name(cmd),
            File::VfioGroup(_) => crate::vfio_group::ioctl_name(cmd),
            File::VfioMigration(_) => crate::vfio_migration::ioctl_name(cmd),
            _ => None,
        }
    }

    /// `mmap(2)` of `length` bytes of this file at `offset` (`addr`, `prot`
    /// and `flags` as mmap takes them): VFIO device files (their regions)
    /// and iommufd files (driver regions) can be mapped (`ENODEV` otherwise,
    /// as for a file without an mmap method).
    pub fn mmap(&self, addr: u64, length: u64, prot: i32, flags: i32, offset: u64) -> Result<u64, Error> {
        match self {
            File::VfioDevice(f) => f.mmap(addr, length, prot, flags, offset),
            File::Iommufd(ctx) => iommufd_mmap(ctx, addr, length, prot, flags, offset),
            // dma_buf_mmap_internal: the exporters here have no mmap op.
            File::DmaBuf(_) => Err(Error::new(Errno::EINVAL, "this dma-buf cannot be mapped")),
            _ => Err(Error::new(Errno::ENODEV, "this file cannot be mapped")),
        }
    }

    /// A name for traces.
    pub fn describe(&self) -> &'static str {
        match self {
            File::Iommufd(_) => "iommufd",
            File::VfioDevice(_) => "vfio-device",
            File::VfioGroup(_) => "vfio-group",
            File::VfioMigration(_) => "vfio-migration",
            File::SelftestAccess(_) => "test-access",
            File::Fault(_) => "fault-queue",
            File::Veventq(_) => "viommu-event-queue",
            File::FailNth(_) => "fail-nth",
            File::DmaBuf(_) => "dmabuf",
        }
    }

    /// A descriptor whose readiness the served one must mirror (the backing
    /// descriptor is made a duplicate of it), if the file has one.
    pub fn readiness_fd(&self) -> Option<RawFd> {
        match self {
            File::Fault(f) => Some(f.fault.readiness_fd()),
            File::Veventq(f) => Some(f.veventq.readiness_fd()),
            _ => None,
        }
    }

    /// What the VFS lets reach this file's read and write methods:
    /// `FMODE_CAN_READ`/`FMODE_CAN_WRITE` (the file has the method; `EINVAL`
    /// without) and `FMODE_PREAD`/`FMODE_PWRITE` (positioned calls are
    /// allowed; `ESPIPE` without). The queues are anonymous-inode files
    /// made without `FMODE_PREAD` (eventq.c), migration data files are
    /// `stream_open`ed; a device descriptor from a
    /// group gets `FMODE_PREAD | FMODE_PWRITE` explicitly (group.c); the
    /// character devices get them at open.
    pub fn io_caps(&self) -> IoCaps {
        let (read, write) = match self {
            File::Fault(_) | File::VfioDevice(_) | File::FailNth(_) => (true, true),
            File::Veventq(_) => (true, false),
            File::Iommufd(_) | File::SelftestAccess(_) | File::VfioGroup(_) | File::DmaBuf(_) => (false, false),
            // A saving session's file reads, a loading one's writes.
            File::VfioMigration(f) => (f.saving(), !f.saving()),
        };
        let positioned =
            !matches!(self, File::Fault(_) | File::Veventq(_) | File::SelftestAccess(_) | File::VfioMigration(_));
        IoCaps { read, write, positioned }
    }

    /// `read(2)` of `count` bytes into user memory at `buf`, at file
    /// position `pos` (`None` for plain `read`).
    pub fn read(&self, buf: u64, count: usize, pos: Option<i64>) -> Result<usize, Error> {
        match self {
            File::Fault(f) => {
                if pos.is_some() {
                    return Err(Error::new(Errno::ESPIPE, "fault queues have no file position"));
                }
                // Each record goes straight to user memory; a group that
                // cannot be written goes back to the queue.
                f.fault.read(count, |at, rec| uiommufd_memory::copy_to_user(buf.wrapping_add(at as u64), rec))
            }
            File::Veventq(f) => {
                if pos.is_some() {
                    return Err(Error::new(Errno::ESPIPE, "event queues have no file position"));
                }
                // Each record goes straight to user memory; one that cannot
                // be written stays queued.
                f.veventq.read(count, |at, bytes| uiommufd_memory::copy_to_user(buf.wrapping_add(at as u64), bytes))
            }
            File::VfioDevice(f) => f.read(buf, count, pos),
            File::VfioMigration(f) => f.read(buf, count, pos),
            File::FailNth(f) => {
                // proc_fail_nth_read: the countdown as "%u\n", read from the
                // file position. Only the calling thread's countdown is
                // visible (it is thread-local): another task's is EPERM.
                if f.tid != uiommufd_memory::sys::gettid() {
                    return Err(Error::new(Errno::EPERM, "fail-nth of another task"));
                }
                let text = format!("{}\n", uiommufd_memory::failpoint::nth());
                let at = pos.unwrap_or_else(|| f.pos.load(std::sync::atomic::Ordering::Relaxed));
                if at < 0 {
                    return Err(Error::new(Errno::EINVAL, "negative file position"));
                }
                let from = (at as usize).min(text.len());
                let n = (text.len() - from).min(count);
                uiommufd_memory::copy_to_user(buf, &text.as_bytes()[from..from + n])
                    .map_err(|e| Error::new(e, "writing the value"))?;
                if pos.is_none() {
                    f.pos.fetch_add(n as i64, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(n)
            }
            // /dev/iommu and the others have no read method.
            _ => Err(Error::new(Errno::EINVAL, "this file cannot be read")),
        }
    }

    /// `write(2)` of `count` bytes from user memory at `buf`.
    pub fn write(&self, buf: u64, count: usize, pos: Option<i64>) -> Result<usize, Error> {
        match self {
            File::Fault(f) => {
                if pos.is_some() {
                    return Err(Error::new(Errno::ESPIPE, "fault queues have no file position"));
                }
                f.fault.write(count, |at, rec| uiommufd_memory::copy_from_user(rec, buf.wrapping_add(at as u64)))
            }
            File::VfioDevice(f) => f.write(buf, count, pos),
            File::VfioMigration(f) => f.write(buf, count, pos),
            File::FailNth(f) => {
                // proc_fail_nth_write: an unsigned number, for the calling
                // task only.
                let mut tmp = vec![0u8; count.min(64)];
                uiommufd_memory::copy_from_user(&mut tmp, buf).map_err(|e| Error::new(e, "reading the value"))?;
                let n: u32 = std::str::from_utf8(&tmp)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or(Error::new(Errno::EINVAL, "not an unsigned number"))?;
                if f.tid != uiommufd_memory::sys::gettid() {
                    return Err(Error::new(Errno::EPERM, "fail-nth of another task"));
                }
                uiommufd_memory::failpoint::set_nth(n);
                Ok(count)
            }
            _ => Err(Error::new(Errno::EINVAL, "this file cannot be written")),
        }
    }
}

/// An in-process [`FdHost`]: descriptor numbers that exist only in this
/// table (for the library, the demo and tests).
pub struct LocalFds {
    next: Mutex<(i32, HashMap<i32, Arc<File>>)>,
}

impl Default for LocalFds {
    fn default() -> Self {
        LocalFds { next: Mutex::new((1000, HashMap::new())) }
    }
}

impl LocalFds {
    /// Drop descriptor `fd` (`close`); `EBADF` if unknown.
    pub fn close(&self, fd: i32) -> Result<(), Errno> {
        let f = self.next.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&fd);
        f.map(drop).ok_or(Errno::EBADF)
    }
}

impl FdHost for LocalFds {
    fn install(&self, file: Arc<File>, _cloexec: bool) -> Result<i32, Errno> {
        let mut g = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let fd = g.0;
        g.0 += 1;
        g.1.insert(fd, file);
        Ok(fd)
    }

    fn uninstall(&self, fd: i32) {
        let f = self.next.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&fd);
        drop(f);
    }

    fn get(&self, fd: i32) -> Option<Arc<File>> {
        self.next.lock().unwrap_or_else(|p| p.into_inner()).1.get(&fd).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_nth_paths() {
        let p = |s: &str| Node::fail_nth_from_path(s.as_bytes(), 100, 101);
        assert_eq!(p("/proc/self/task/7/fail-nth"), Some(Node::FailNth(7)));
        assert_eq!(p("/proc/100/task/101/fail-nth"), Some(Node::FailNth(101)));
        assert_eq!(p("/proc/thread-self/fail-nth"), Some(Node::FailNth(101)));
        assert_eq!(p("/proc/99/task/101/fail-nth"), None, "another process");
        assert_eq!(p("/proc/self/task/x/fail-nth"), None);
        assert_eq!(p("/proc/self/fail-nth"), None);
    }

    #[test]
    fn vfio_device_paths() {
        let n = |s: &str| Node::from_path(s.as_bytes());
        assert_eq!(n("/dev/vfio/devices/vfio0"), Some(Node::VfioDevice(0)));
        assert_eq!(n("/dev/vfio/devices/vfio12"), Some(Node::VfioDevice(12)));
        assert_eq!(n("/dev/vfio/devices/vfio"), None);
        assert_eq!(n("/dev/vfio/devices/vfio01"), None);
        assert_eq!(n("/dev/vfio/devices/vfio1x"), None);
        assert_eq!(n("/dev/vfio/devices/vfio99999999999"), None);
        assert_eq!(n("/dev/vfio/vfio0"), None);
    }

    #[test]
    fn vfio_group_paths() {
        let n = |s: &str| Node::from_path(s.as_bytes());
        assert_eq!(n("/dev/vfio/0"), Some(Node::VfioGroup(0)));
        assert_eq!(n("/dev/vfio/26"), Some(Node::VfioGroup(26)));
        assert_eq!(n("/dev/vfio/vfio"), Some(Node::VfioContainer));
        assert_eq!(n("/dev/vfio/"), None);
        assert_eq!(n("/dev/vfio/01"), None);
        assert_eq!(n("/dev/vfio/-1"), None);
        assert_eq!(n("/dev/vfio/1/"), None);
        assert_eq!(n("/dev/vfio/noiommu-0"), None);
        assert_eq!(n("/dev/vfio/devices"), None);
        assert_eq!(n("/dev/vfio/4294967296"), None);
    }

    #[test]
    fn fail_nth_file_reads_and_arms_the_calling_thread() {
        let tid = uiommufd_memory::sys::gettid();
        let f = File::open(Node::FailNth(tid));
        let arm = b"3\n";
        assert_eq!(f.write(arm.as_ptr() as u64, arm.len(), Some(0)).unwrap(), 2);
        let mut buf = [0u8; 8];
        assert_eq!(f.read(buf.as_mut_ptr() as u64, buf.len(), Some(0)).unwrap(), 2);
        assert_eq!(&buf[..2], b"3\n");
        // Plain read() advances a file position and then reaches the end.
        assert_eq!(f.read(buf.as_mut_ptr() as u64, 1, None).unwrap(), 1);
        assert_eq!(f.read(buf.as_mut_ptr() as u64, 8, None).unwrap(), 1);
        assert_eq!(f.read(buf.as_mut_ptr() as u64, 8, None).unwrap(), 0);
        // The third injection point fires.
        let fired: Vec<bool> = (0..4).map(|_| uiommufd_memory::failpoint::should_fail()).collect();
        assert_eq!(fired, [false, false, true, false]);
        assert_eq!(f.read(buf.as_mut_ptr() as u64, 8, Some(0)).unwrap(), 2);
        assert_eq!(&buf[..2], b"0\n");
        let bad = b"x";
        assert_eq!(f.write(bad.as_ptr() as u64, 1, Some(0)).unwrap_err().errno, Errno::EINVAL);
        // Another task's file: EPERM.
        let other = File::open(Node::FailNth(tid + 1));
        assert_eq!(other.write(arm.as_ptr() as u64, 2, Some(0)).unwrap_err().errno, Errno::EPERM);
    }
}

/// `iommufd_fops_mmap`: a driver region of the context, mapped whole. The
/// mapping must be shared (`EINVAL`) and not executable (`EPERM`); the
/// offset and length must be exactly a region's (`ENXIO`).
fn iommufd_mmap(ctx: &Iommufd, addr: u64, length: u64, prot: i32, flags: i32, offset: u64) -> Result<u64, Error> {
    use std::os::fd::AsRawFd;
    let page = uiommufd_memory::page_size() as u64;
    // The VFS rounds the length up to whole pages before the driver sees it.
    let length = length.checked_next_multiple_of(page).ok_or(Error::new(Errno::ENOMEM, "length"))?;
    let ty = flags & 0x0f;
    if ty != libc::MAP_SHARED && ty != libc::MAP_SHARED_VALIDATE {
        return Err(Error::new(Errno::EINVAL, "iommufd regions are mapped MAP_SHARED only"));
    }
    if prot & libc::PROT_EXEC != 0 {
        return Err(Error::new(Errno::EPERM, "iommufd regions are not executable"));
    }
    let target = ctx.mmap_space().lookup(offset, length).map_err(|e| Error::new(e, "no driver region there"))?;
    // SAFETY: mapping a memfd the region owns, with the caller's address
    // hint and flags (a MAP_FIXED over the caller's own mapping is what the
    // caller asked for, as with mmap(2) itself).
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, length as usize, prot, flags, target.fd.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOMEM);
        return Err(Error::new(Errno(e), "mapping the region"));
    }
    // The driver learns that the program's stores may now reach it.
    if let Some(driver) = target.owner.driver() {
        driver.mmap_notify(offset);
    }
    Ok(p as u64)
}
