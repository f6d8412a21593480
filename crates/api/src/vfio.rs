//! VFIO device cdevs (`/dev/vfio/devices/vfioN`), the iommufd way of
//! giving a device to user space: open, bind to an iommufd, attach to an
//! IOAS or HWPT, then use the device's regions and interrupts.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use uiommufd_abi::vfio as v;
use zerocopy::IntoBytes;

use crate::backend::{Backend, Handle};
use crate::error::Result;
use crate::ids::{DeviceId, HwptId, PtId};
use crate::iommufd::{size32, Iommufd};

/// An open VFIO device cdev.
///
/// On the kernel backend, `path` is a real node (the device bound to
/// `vfio-pci`); on the emulated backend, `/dev/vfio/devices/vfioN` is
/// device `N` of the [`Emulated`](crate::Emulated) machine. The calls and
/// their errnos are the same.
pub struct VfioDevice {
    handle: Handle,
}

impl std::fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioDevice").field("fd", &self.handle.number()).finish()
    }
}

impl VfioDevice {
    /// Open the device cdev at `path` on `backend`.
    pub fn open(backend: &Backend, path: impl AsRef<Path>) -> Result<VfioDevice> {
        Ok(VfioDevice { handle: Handle::open(backend, path.as_ref())? })
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD`: bind the device to `iommufd` (of the
    /// same backend); returns its ID there.
    pub fn bind(&self, iommufd: &Iommufd) -> Result<DeviceId> {
        let mut cmd = v::VfioDeviceBindIommufd {
            argsz: size32::<v::VfioDeviceBindIommufd>(),
            iommufd: iommufd.handle.number(),
            ..Default::default()
        };
        self.handle.ioctl_plain("VFIO_DEVICE_BIND_IOMMUFD", v::VFIO_DEVICE_BIND_IOMMUFD, &mut cmd)?;
        Ok(DeviceId(cmd.out_devid))
    }

    fn attach_cmd(&self, flags: u32, pasid: u32, pt: PtId) -> Result<HwptId> {
        let mut cmd =
            v::VfioDeviceAttachIommufdPt { argsz: size32::<v::VfioDeviceAttachIommufdPt>(), flags, pt_id: pt.0, pasid };
        self.handle.ioctl_plain("VFIO_DEVICE_ATTACH_IOMMUFD_PT", v::VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut cmd)?;
        Ok(HwptId(cmd.pt_id))
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attach the bound device to `pt`
    /// (an IOAS: a HWPT is picked or created; or a HWPT), replacing what it
    /// was attached to. Returns the HWPT.
    pub fn attach(&self, pt: impl Into<PtId>) -> Result<HwptId> {
        self.attach_cmd(0, 0, pt.into())
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` of PASID `pasid`
    /// (`VFIO_DEVICE_ATTACH_PASID`).
    pub fn attach_pasid(&self, pasid: u32, pt: impl Into<PtId>) -> Result<HwptId> {
        self.attach_cmd(v::VFIO_DEVICE_ATTACH_PASID, pasid, pt.into())
    }

    fn detach_cmd(&self, flags: u32, pasid: u32) -> Result<()> {
        let mut cmd = v::VfioDeviceDetachIommufdPt { argsz: size32::<v::VfioDeviceDetachIommufdPt>(), flags, pasid };
        self.handle.ioctl_plain("VFIO_DEVICE_DETACH_IOMMUFD_PT", v::VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut cmd).map(drop)
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`: detach the device (its DMA is
    /// blocked until attached again).
    pub fn detach(&self) -> Result<()> {
        self.detach_cmd(0, 0)
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` of PASID `pasid`.
    pub fn detach_pasid(&self, pasid: u32) -> Result<()> {
        self.detach_cmd(v::VFIO_DEVICE_DETACH_PASID, pasid)
    }

    /// `VFIO_DEVICE_GET_INFO`: flags, number of regions and IRQ indexes.
    pub fn info(&self) -> Result<v::VfioDeviceInfo> {
        let mut cmd = v::VfioDeviceInfo { argsz: size32::<v::VfioDeviceInfo>(), ..Default::default() };
        self.handle.ioctl_plain("VFIO_DEVICE_GET_INFO", v::VFIO_DEVICE_GET_INFO, &mut cmd)?;
        Ok(cmd)
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` of region `index`
    /// (`VFIO_PCI_*_REGION_INDEX`): its size, flags and file offset.
    pub fn region_info(&self, index: u32) -> Result<v::VfioRegionInfo> {
        let mut cmd = v::VfioRegionInfo { argsz: size32::<v::VfioRegionInfo>(), index, ..Default::default() };
        self.handle.ioctl_plain("VFIO_DEVICE_GET_REGION_INFO", v::VFIO_DEVICE_GET_REGION_INFO, &mut cmd)?;
        Ok(cmd)
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO` of IRQ index `index`
    /// (`VFIO_PCI_*_IRQ_INDEX`).
    pub fn irq_info(&self, index: u32) -> Result<v::VfioIrqInfo> {
        let mut cmd = v::VfioIrqInfo { argsz: size32::<v::VfioIrqInfo>(), index, ..Default::default() };
        self.handle.ioctl_plain("VFIO_DEVICE_GET_IRQ_INFO", v::VFIO_DEVICE_GET_IRQ_INFO, &mut cmd)?;
        Ok(cmd)
    }

    /// `pread(2)` at file offset `offset` (a region's
    /// [`offset`](v::VfioRegionInfo::offset) plus the offset in it).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.handle.read(buf, Some(offset))
    }

    /// `pwrite(2)` at file offset `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        self.handle.write(buf, Some(offset))
    }

    /// `VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_DATA_EVENTFD |
    /// VFIO_IRQ_SET_ACTION_TRIGGER`: vectors `start..` of IRQ index `index`
    /// signal `eventfds` (`None` leaves a vector without one).
    pub fn set_irq_eventfds(&self, index: u32, start: u32, eventfds: &[Option<BorrowedFd<'_>>]) -> Result<()> {
        let head = v::VfioIrqSet {
            argsz: (size_of::<v::VfioIrqSet>() + 4 * eventfds.len()) as u32,
            flags: v::VFIO_IRQ_SET_DATA_EVENTFD | v::VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            count: eventfds.len() as u32,
        };
        let mut buf = head.as_bytes().to_vec();
        for fd in eventfds {
            buf.extend_from_slice(&fd.map_or(-1, |f| f.as_raw_fd()).to_ne_bytes());
        }
        self.set_irqs(&buf)
    }

    /// `VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_DATA_NONE |
    /// VFIO_IRQ_SET_ACTION_TRIGGER` and no vector: disable IRQ index
    /// `index`.
    pub fn disable_irqs(&self, index: u32) -> Result<()> {
        let head = v::VfioIrqSet {
            argsz: size32::<v::VfioIrqSet>(),
            flags: v::VFIO_IRQ_SET_DATA_NONE | v::VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
        };
        self.set_irqs(head.as_bytes())
    }

    fn set_irqs(&self, buf: &[u8]) -> Result<()> {
        // Keep the header 4-byte aligned as the C struct is.
        let mut words = vec![0u32; buf.len().div_ceil(4)];
        words.as_mut_bytes()[..buf.len()].copy_from_slice(buf);
        // SAFETY: the argument is the header and its `count` descriptors,
        // `argsz` bytes, all in `words`; it holds no pointer.
        unsafe { self.handle.ioctl("VFIO_DEVICE_SET_IRQS", v::VFIO_DEVICE_SET_IRQS, &mut words[..]) }.map(drop)
    }

    /// `VFIO_DEVICE_RESET`: reset the function (FLR).
    pub fn reset(&self) -> Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the byte is unused.
        unsafe { self.handle.ioctl("VFIO_DEVICE_RESET", v::VFIO_DEVICE_RESET, &mut [0u8; 0]) }.map(drop)
    }
}
