//! Who answers: the running kernel or the engine in this process, and the
//! one descriptor type ([`Handle`]) every object of the API is built on.
//!
//! Every call of the API becomes an ioctl, `read`, `write` or `pread`/
//! `pwrite` on a [`Handle`] with the kernel's own structs
//! (`uiommufd-abi`). A kernel handle is a descriptor of this process; an
//! emulated one is a served file of `uiommufd-dispatch` — the same code the
//! `LD_PRELOAD` shim runs — reached by a direct call, so both take the same
//! bytes and give the same answers. The choice is an enum, not a trait
//! object: one predictable branch per call, no allocation, and the same
//! types for both.

use std::fs::File as OsFile;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
#[cfg(feature = "emulated")]
use std::sync::Arc;

use uiommufd_abi::Errno;
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, Result};

/// Which implementation of `/dev/iommu` and the VFIO device cdevs the API
/// drives. Cheap to clone; objects opened through clones of one backend
/// can be used together (a device bound to an iommufd of the same backend).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Backend {
    /// The running Linux kernel: `/dev/iommu` and
    /// `/dev/vfio/devices/vfioN`, opened and driven with system calls.
    /// Under `uiommufd run` these are the shim's emulated nodes.
    Kernel,
    /// The uiommufd engine in this process, over a software IOMMU model
    /// and emulated devices (see [`Emulated`]).
    #[cfg(feature = "emulated")]
    Emulated(Emulated),
}

impl Backend {
    /// The running kernel ([`Backend::Kernel`]).
    pub fn kernel() -> Backend {
        Backend::Kernel
    }

    /// The engine in-process with no devices: the selftest's mock IOMMU
    /// (`IOMMU_TEST_CMD`) only. See [`Emulated::new`].
    #[cfg(feature = "emulated")]
    pub fn emulated() -> Backend {
        Backend::Emulated(Emulated::new())
    }

    /// Whether this is the running kernel.
    pub fn is_kernel(&self) -> bool {
        matches!(self, Backend::Kernel)
    }
}

/// The uiommufd engine, in-process: an emulated machine (an IOMMU model and
/// the devices behind it, as `uiommufd run --iommu ... --device ...`
/// describes it) whose devices open as `/dev/vfio/devices/vfioN`, and a
/// table of the descriptors the engine hands out (iommufd, fault queues,
/// event queues), numbered apart from the process's own.
///
/// The kernel release it emulates is the process default
/// (`UIOMMUFD_KERNEL`, else Linux 7.3).
#[cfg(feature = "emulated")]
#[derive(Clone)]
pub struct Emulated {
    inner: Arc<EmulatedInner>,
}

#[cfg(feature = "emulated")]
struct EmulatedInner {
    fds: uiommufd_dispatch::LocalFds,
    platform: Option<uiommufd_devices::platform::Platform>,
    devices: Vec<Arc<uiommufd_dispatch::VfioDevice>>,
}

#[cfg(feature = "emulated")]
impl std::fmt::Debug for Emulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulated").field("devices", &self.inner.devices).finish_non_exhaustive()
    }
}

#[cfg(feature = "emulated")]
impl Default for Emulated {
    fn default() -> Self {
        Emulated::new()
    }
}

#[cfg(feature = "emulated")]
impl Emulated {
    /// An engine without devices: iommufd and the selftest's mock IOMMU and
    /// mock devices (`IOMMU_TEST_CMD`), as a kernel built with
    /// `CONFIG_IOMMUFD_TEST` has them.
    pub fn new() -> Emulated {
        Emulated { inner: Arc::new(EmulatedInner { fds: Default::default(), platform: None, devices: Vec::new() }) }
    }

    /// An engine over the machine `iommu` and `devices` describe, in the
    /// syntax of `uiommufd run --iommu` and `--device` (devices separated
    /// by `;`): for example `("vtd", "dma-engine")` or
    /// `("smmuv3:canwbs=1", "dma-engine;dma-engine")`. Device `N` opens as
    /// `/dev/vfio/devices/vfioN` through [`VfioDevice::open`](crate::VfioDevice::open).
    pub fn with_platform(iommu: &str, devices: &str) -> Result<Emulated> {
        let platform = uiommufd_devices::platform::Platform::new(iommu, devices)
            .map_err(|e| Error::new(Errno::EINVAL, "platform", Some(e.into())))?;
        let devices = uiommufd_dispatch::VfioDevice::register_platform(&platform);
        Ok(Emulated { inner: Arc::new(EmulatedInner { fds: Default::default(), platform: Some(platform), devices }) })
    }

    /// The emulated machine, for what the uAPI does not reach (the IOMMU
    /// model's registers, a device's internals).
    pub fn platform(&self) -> Option<&uiommufd_devices::platform::Platform> {
        self.inner.platform.as_ref()
    }

    fn open_file(&self, op: &'static str, file: uiommufd_dispatch::File) -> Result<Handle> {
        let file = Arc::new(file);
        let fd = uiommufd_dispatch::FdHost::install(&self.inner.fds, Arc::clone(&file), true)
            .map_err(|e| Error::new(e, op, None))?;
        Ok(Handle::Emulated(EmulatedFd { host: self.clone(), fd, file }))
    }

    /// The served file behind descriptor `fd` of this engine's table.
    fn adopt(&self, op: &'static str, fd: i32) -> Result<Handle> {
        let file = uiommufd_dispatch::FdHost::get(&self.inner.fds, fd)
            .ok_or_else(|| Error::new(Errno::EBADF, op, Some("no such descriptor".into())))?;
        Ok(Handle::Emulated(EmulatedFd { host: self.clone(), fd, file }))
    }
}

/// A descriptor of either backend: what every object of the API holds.
pub(crate) enum Handle {
    Kernel(OsFile),
    #[cfg(feature = "emulated")]
    Emulated(EmulatedFd),
}

#[cfg(feature = "emulated")]
pub(crate) struct EmulatedFd {
    host: Emulated,
    fd: i32,
    file: Arc<uiommufd_dispatch::File>,
}

#[cfg(feature = "emulated")]
impl Drop for EmulatedFd {
    fn drop(&mut self) {
        // The table's reference; the file is released with the last one.
        let _ = self.host.inner.fds.close(self.fd);
    }
}

/// The node a `/dev` path of the emulated machine names.
#[cfg(feature = "emulated")]
fn emulated_node(path: &Path) -> Option<uiommufd_dispatch::Node> {
    use std::os::unix::ffi::OsStrExt;
    uiommufd_dispatch::Node::from_path(path.as_os_str().as_bytes())
}

impl Handle {
    /// `open(path, O_RDWR | O_CLOEXEC)` on `backend`.
    pub(crate) fn open(backend: &Backend, path: &Path) -> Result<Handle> {
        match backend {
            Backend::Kernel => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map(Handle::Kernel)
                .map_err(|e| Error::new(Errno(e.raw_os_error().unwrap_or(libc::EIO)), "open", None)),
            #[cfg(feature = "emulated")]
            Backend::Emulated(em) => {
                use uiommufd_dispatch::{File, Node};
                let file = match emulated_node(path) {
                    Some(Node::Iommu) => File::try_open(Node::Iommu).map_err(|e| Error::new(e, "open", None))?,
                    Some(Node::VfioDevice(n)) => match em.inner.devices.iter().find(|d| d.index() == n) {
                        Some(d) => File::open_vfio_device(d),
                        None => return Err(Error::new(Errno::ENOENT, "open", Some("no such device".into()))),
                    },
                    _ => {
                        return Err(Error::new(
                            Errno::ENOENT,
                            "open",
                            Some("not a node of the emulated machine".into()),
                        ))
                    }
                };
                em.open_file("open", file)
            }
        }
    }

    /// A descriptor number the running kernel just returned to us in an
    /// ioctl's reply (`out_fault_fd`, `out_veventq_fd`), or the engine's
    /// table holds.
    pub(crate) fn adopt(&self, op: &'static str, fd: i32) -> Result<Handle> {
        match self {
            Handle::Kernel(_) => {
                if fd < 0 {
                    return Err(Error::new(Errno::EBADF, op, None));
                }
                // SAFETY: the kernel installed `fd` for this reply and gave
                // it to us alone; nothing else in the process owns it.
                let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                Ok(Handle::Kernel(OsFile::from(owned)))
            }
            #[cfg(feature = "emulated")]
            Handle::Emulated(e) => e.host.adopt(op, fd),
        }
    }

    /// The descriptor number, in the process (kernel) or in the engine's
    /// table (emulated): what `VFIO_DEVICE_BIND_IOMMUFD` takes.
    pub(crate) fn number(&self) -> i32 {
        match self {
            Handle::Kernel(f) => f.as_raw_fd(),
            #[cfg(feature = "emulated")]
            Handle::Emulated(e) => e.fd,
        }
    }

    /// The backend this descriptor belongs to.
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Handle::Kernel(_) => Backend::Kernel,
            #[cfg(feature = "emulated")]
            Handle::Emulated(e) => Backend::Emulated(e.host.clone()),
        }
    }

    /// A descriptor that polls readable when the file has something to read
    /// (the file itself on the kernel; the engine's readiness eventfd).
    pub(crate) fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Handle::Kernel(f) => Some(f.as_fd()),
            #[cfg(feature = "emulated")]
            Handle::Emulated(e) => {
                let fd: RawFd = e.file.readiness_fd()?;
                // SAFETY: the readiness descriptor belongs to the served
                // file, which `e` keeps alive at least as long as the
                // borrow of `self`.
                Some(unsafe { BorrowedFd::borrow_raw(fd) })
            }
        }
    }

    /// `ioctl(fd, req, arg)` where `arg` is a struct of the uAPI with no
    /// pointers in it, or whose pointers the caller set from live buffers of
    /// the sizes the command reads and writes.
    ///
    /// # Safety
    ///
    /// Every user pointer inside `*arg` (`data_uptr`, `allowed_iovas`...)
    /// must be null or point to memory valid for the reads and writes the
    /// command does there (its lengths come from `*arg` too), for the
    /// duration of the call.
    pub(crate) unsafe fn ioctl<T: IntoBytes + FromBytes + ?Sized>(
        &self,
        op: &'static str,
        req: u32,
        arg: &mut T,
    ) -> Result<i32> {
        let ptr = arg.as_mut_bytes().as_mut_ptr();
        match self {
            Handle::Kernel(f) => {
                // SAFETY: `ptr` is a live, exclusive `T` of the size the
                // request encodes or the struct's `size` says; the pointers
                // inside are the caller's obligation (see above).
                let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, ptr) };
                if r < 0 {
                    Err(Error::last_os_error(op))
                } else {
                    Ok(r)
                }
            }
            #[cfg(feature = "emulated")]
            Handle::Emulated(e) => {
                e.file.ioctl(&e.host.inner.fds, u64::from(req), ptr as u64).map_err(|err| Error::engine(op, err))
            }
        }
    }

    /// `ioctl(fd, req, arg)` with a struct without user pointers.
    pub(crate) fn ioctl_plain<T: IntoBytes + FromBytes + NoPointers>(
        &self,
        op: &'static str,
        req: u32,
        arg: &mut T,
    ) -> Result<i32> {
        // SAFETY: `T` carries no user pointers (`NoPointers`).
        unsafe { self.ioctl(op, req, arg) }
    }

    /// `read(2)` (`pos` `None`) or `pread(2)` into `buf`.
    pub(crate) fn read(&self, buf: &mut [u8], pos: Option<u64>) -> Result<usize> {
        let op = if pos.is_some() { "pread" } else { "read" };
        match self {
            Handle::Kernel(f) => {
                let r = match pos {
                    Some(p) => f.read_at(buf, p),
                    None => (&*f).read(buf),
                };
                r.map_err(|e| Error::new(Errno(e.raw_os_error().unwrap_or(libc::EIO)), op, None))
            }
            #[cfg(feature = "emulated")]
            Handle::Emulated(e) => e
                .file
                .read(buf.as_mut_ptr() as u64, buf.len(), pos.map(|p| p as i64))
                .map_err(|err| Error::engine(op, err)),
        }
    }

    /// `write(2)` (`pos` `None`) or `pwrite(2)` from `buf`.
    pub(crate) fn write(&self, buf: &[u8], pos: Option<u64>) -> Result<usize> {
        let op = if pos.is_some() { "pwrite" } else { "write" };
        match self {
            Handle::Kernel(f) => {
                let r = match pos {
                    Some(p) => f.write_at(buf, p),
                    None => (&*f).write(buf),
                };
                r.map_err(|e| Error::new(Errno(e.raw_os_error().unwrap_or(libc::EIO)), op, None))
            }
            #[cfg(feature = "emulated")]
            Handle::Emulated(e) => e
                .file
                .write(buf.as_ptr() as u64, buf.len(), pos.map(|p| p as i64))
                .map_err(|err| Error::engine(op, err)),
        }
    }
}

/// uAPI structs that hold no user pointer, so an ioctl on them is safe.
pub(crate) trait NoPointers {}

macro_rules! no_pointers {
    ($($t:ty),* $(,)?) => { $(impl NoPointers for $t {})* };
}

no_pointers!(
    uiommufd_abi::IommuDestroy,
    uiommufd_abi::IommuIoasAlloc,
    uiommufd_abi::IommuIoasUnmap,
    uiommufd_abi::IommuIoasCopy,
    uiommufd_abi::IommuIoasMapFile,
    uiommufd_abi::IommuOption,
    uiommufd_abi::IommuVfioIoas,
    uiommufd_abi::IommuHwptSetDirtyTracking,
    uiommufd_abi::IommuFaultAlloc,
    uiommufd_abi::IommuVdeviceAlloc,
    uiommufd_abi::IommuVeventqAlloc,
    uiommufd_abi::IommuHwQueueAlloc,
    uiommufd_abi::IommuIoasChangeProcess,
    uiommufd_abi::vfio::VfioDeviceBindIommufd,
    uiommufd_abi::vfio::VfioDeviceAttachIommufdPt,
    uiommufd_abi::vfio::VfioDeviceDetachIommufdPt,
    uiommufd_abi::vfio::VfioDeviceInfo,
    uiommufd_abi::vfio::VfioRegionInfo,
    uiommufd_abi::vfio::VfioIrqInfo,
);
