//! `/dev/vfio/devices/vfioN`: a VFIO device cdev over an emulated PCI
//! function (`drivers/vfio/device_cdev.c`, `vfio_main.c`'s device file and
//! `vfio_pci_core.c`), and the device descriptors a VFIO group hands out
//! (`VFIO_GROUP_GET_DEVICE_FD`, see [`crate::vfio_group`]).
//!
//! What it stores:
//! - [`VfioDevice`]: one emulated function as vfio-pci registers it: the
//!   [`PciDevice`] (config space, BARs, interrupts, reset), the IOMMU
//!   driver's view of it ([`IommuDevice`]), its IOMMU group
//!   ([`VfioGroup`]), what vfio-pci learns at probe (the MSI-X table's
//!   place, whether it is PCI Express), the `dev_set` state (`open_count`,
//!   the device's iommufd binding, the config image saved at open) and
//!   the interrupt state (`igate`: which IRQ index is in use, one eventfd
//!   per vector, the ERR and REQ eventfds);
//! - [`VfioDeviceFile`]: one open of the device (`struct
//!   vfio_device_file`). A cdev may open any number of times, but only one
//!   file can be *bound* (`VFIO_DEVICE_BIND_IOMMUFD`) at a time, and a
//!   file binds once; before that every other call fails `EINVAL`, as
//!   `access_granted` says in the kernel. A file from a group comes
//!   already open (bound to the group's container and attached to its
//!   compat IOAS); the group path may open the same device several times,
//!   all files sharing the one binding.
//!
//! Lifecycle, as vfio-pci drives the function:
//! - first open (cdev bind, or the first `GET_DEVICE_FD`): the device
//!   object is created in the iommufd context (`iommufd_device_bind`),
//!   then the function is opened (`vfio_pci_core_enable`: Bus Master off,
//!   Function Level Reset, config space saved) and its DMA goes through
//!   the bound device's port (blocked until a page table is attached; a
//!   group open attaches the compat IOAS right away);
//! - last close (`vfio_df_close` from the cdev's `vfio_df_unbind_iommufd`
//!   or the group's `vfio_df_group_close`): Bus Master off, interrupts torn
//!   down, the function reset and its saved config restored
//!   (`vfio_pci_core_disable`), DMA blocked again, every attachment
//!   dropped and the device object destroyed (`iommufd_device_unbind`).
//!
//! The two paths exclude each other per group (`vfio_device_block_group`):
//! a cdev cannot bind while the group node is open (`EBUSY`), the group
//! node cannot open while a cdev of the group is bound (`EBUSY`), and a
//! cdev cannot bind a device still open through a group file (`EINVAL`).
//!
//! File layout (vfio-pci's): region `index` lives at file offset
//! `index << 40`; `pread`/`pwrite` reach BARs in naturally aligned 8, 4, 2
//! and 1-byte accesses with the MSI-X table hidden (reads of it return
//! all-ones, writes are dropped), and config space (region 7) in 4, 2 and
//! 1-byte pieces; `mmap` of a BAR maps the function's memfd.
//!
//! Lock order: `VfioGroup::state` (the kernel's `group->group_lock`) →
//! `VfioDevice::set` (`dev_set->lock`) → `VfioDevice::irqs` (`igate`) →
//! the engine's locks and the device's own.
//! Interrupt triggers write an eventfd and take no lock, so the device may
//! fire them with its own locks held.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use uiommufd_abi::vfio::{self as v, VfioInfoCapHeader};
use uiommufd_abi::Errno;
use uiommufd_core::device::{self, Device};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::error::{einval, enodev, ErrnoExt, Error, Result};
use uiommufd_core::object::{Dep, Object, ObjectId};
use uiommufd_core::Iommufd;
use uiommufd_devices::irq::IrqTrigger;
use uiommufd_devices::pci::{split_access, PciDevice, RegionFlags};
use uiommufd_devices::platform::{Platform, PlatformDevice};
use uiommufd_hw::device::IommuDevice;
use uiommufd_memory::user;
use zerocopy::{FromBytes, IntoBytes};

use crate::file::{FdHost, File};
use crate::vfio_group::{GroupBlock, VfioGroup};

/// Size of configuration space (PCI Express: 4 KiB).
const CONFIG_SIZE: u64 = 4096;
/// PCI Command register and its bits.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Capability list pointer, and the IDs vfio-pci looks for.
const PCI_CAPABILITY_LIST: u64 = 0x34;
const PCI_CAP_ID_EXP: u8 = 0x10;
const PCI_CAP_ID_MSIX: u8 = 0x11;

/// The MSI-X table's place, as `vfio_pci_core_enable` records it.
#[derive(Clone, Copy, Debug)]
struct MsixTable {
    bar: u32,
    offset: u64,
    size: u64,
}

/// The `dev_set` state of a device.
#[derive(Default)]
struct SetState {
    /// `open_count`: the files through which the device is open (the one
    /// bound cdev file, or any number of files from its group).
    open_count: u32,
    /// The device's iommufd binding while it is open
    /// (`vdev->iommufd_device`), shared with the files it is open through.
    binding: Option<Arc<Binding>>,
    /// Config space as saved when the device was opened
    /// (`vdev->pci_saved_state`), restored when it is closed.
    saved_config: Option<Vec<u8>>,
}

/// An eventfd an interrupt signals (the kernel's `eventfd_ctx`): a
/// duplicate of the program's descriptor, owned here.
struct Eventfd(OwnedFd);

impl Eventfd {
    fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes we own to a descriptor we own. A full
        // counter (EAGAIN) loses nothing the reader would see.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl IrqTrigger for Eventfd {
    fn fire(&self) {
        self.signal();
    }
}

/// The interrupt state (`vdev->irq_type`, `vdev->ctx`, `err_trigger`,
/// `req_trigger`).
#[derive(Default)]
struct IrqState {
    /// The INTx, MSI or MSI-X index in use; `None` is `VFIO_PCI_NUM_IRQS`.
    irq_type: Option<u32>,
    /// One eventfd per vector of `irq_type`.
    vectors: Vec<Option<Arc<Eventfd>>>,
    err: Option<Arc<Eventfd>>,
    req: Option<Arc<Eventfd>>,
}

/// An emulated PCI function registered with VFIO: what
/// `/dev/vfio/devices/vfioN` opens. Shared by every file of the node.
pub struct VfioDevice {
    index: u32,
    bdf: String,
    /// Its IOMMU group (`vdev->group`).
    group: Arc<VfioGroup>,
    pci: Arc<dyn PciDevice>,
    iommu: Arc<dyn IommuDevice>,
    msix: Option<MsixTable>,
    is_pcie: bool,
    set: Mutex<SetState>,
    irqs: Mutex<IrqState>,
    /// Live migration: the state and data session (`vfio_migration`).
    mig: Mutex<crate::vfio_migration::MigCtl>,
    /// The dma-bufs of its BARs (`vdev->dmabufs`).
    dmabufs: crate::vfio_dmabuf::Exports,
}

impl std::fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioDevice")
            .field("index", &self.index)
            .field("bdf", &self.bdf)
            .field("group", &self.group.number())
            .field("pci", &self.pci.name())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VfioDevice {
    /// Register `pci`, which its IOMMU driver sees as `iommu`, as
    /// `vfio<index>` at `bdf`, alone in IOMMU group `index`.
    pub fn new(index: u32, bdf: &str, pci: Arc<dyn PciDevice>, iommu: Arc<dyn IommuDevice>) -> Arc<VfioDevice> {
        VfioDevice::new_in_group(index, bdf, &VfioGroup::new(index), pci, iommu)
    }

    /// Register `pci` as `vfio<index>` at `bdf` in `group`
    /// (`vfio_device_set_group` + `vfio_device_group_register`).
    pub fn new_in_group(
        index: u32,
        bdf: &str,
        group: &Arc<VfioGroup>,
        pci: Arc<dyn PciDevice>,
        iommu: Arc<dyn IommuDevice>,
    ) -> Arc<VfioDevice> {
        let (msix, is_pcie) = probe(pci.as_ref());
        let dev = Arc::new(VfioDevice {
            index,
            bdf: bdf.to_owned(),
            group: Arc::clone(group),
            pci,
            iommu,
            msix,
            is_pcie,
            set: Mutex::default(),
            irqs: Mutex::default(),
            mig: Mutex::default(),
            dmabufs: Default::default(),
        });
        group.register(&dev);
        dev
    }

    /// Register a device of the emulated platform, alone in its group.
    pub fn from_platform(d: &PlatformDevice) -> Arc<VfioDevice> {
        VfioDevice::new_in_group(d.index, &d.bdf, &VfioGroup::new(d.group), Arc::clone(&d.pci), Arc::clone(&d.iommu))
    }

    /// Register every device of `p`; devices with the same group number
    /// share one [`VfioGroup`] (`vfio_group_find_or_alloc`).
    pub fn register_platform(p: &Platform) -> Vec<Arc<VfioDevice>> {
        let mut groups: Vec<Arc<VfioGroup>> = Vec::new();
        p.devices
            .iter()
            .map(|d| {
                let group = match groups.iter().find(|g| g.number() == d.group) {
                    Some(g) => Arc::clone(g),
                    None => {
                        let g = VfioGroup::new(d.group);
                        groups.push(Arc::clone(&g));
                        g
                    }
                };
                VfioDevice::new_in_group(d.index, &d.bdf, &group, Arc::clone(&d.pci), Arc::clone(&d.iommu))
            })
            .collect()
    }

    /// The devices of the process's platform ([`Platform::global`], from
    /// `UIOMMUFD_IOMMU` and `UIOMMUFD_DEVICES`), registered on first use.
    pub(crate) fn registry() -> &'static [Arc<VfioDevice>] {
        static REGISTRY: OnceLock<Vec<Arc<VfioDevice>>> = OnceLock::new();
        REGISTRY.get_or_init(|| Platform::global().map(VfioDevice::register_platform).unwrap_or_default())
    }

    /// Device `vfio<index>` of the process's platform, registered on first
    /// use.
    pub fn global(index: u32) -> Option<Arc<VfioDevice>> {
        VfioDevice::registry().get(index as usize).cloned()
    }

    /// `N` of `vfioN`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Its IOMMU group.
    pub fn group(&self) -> &Arc<VfioGroup> {
        &self.group
    }

    /// The PCI address (`DDDD:BB:DD.F`).
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The function itself.
    pub fn pci(&self) -> &Arc<dyn PciDevice> {
        &self.pci
    }

    /// Its migration state (see [`crate::vfio_migration`]).
    pub(crate) fn mig(&self) -> &Mutex<crate::vfio_migration::MigCtl> {
        &self.mig
    }

    /// Whether the device is open (bound to an iommufd) through some file.
    pub fn is_bound(&self) -> bool {
        lock(&self.set).open_count != 0
    }

    /// Vectors of IRQ `index` (`vfio_pci_get_irq_count`): the function's
    /// INTx, MSI and MSI-X; one ERR vector on PCI Express; one REQ vector.
    fn irq_count(&self, index: u32) -> u32 {
        match index {
            v::VFIO_PCI_ERR_IRQ_INDEX => self.is_pcie as u32,
            v::VFIO_PCI_REQ_IRQ_INDEX => 1,
            v::VFIO_PCI_INTX_IRQ_INDEX | v::VFIO_PCI_MSI_IRQ_INDEX | v::VFIO_PCI_MSIX_IRQ_INDEX => {
                self.pci.irq_count(index)
            }
            _ => 0,
        }
    }

    fn config_u16(&self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        let _ = self.pci.config_read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    fn clear_bus_master(&self) {
        let cmd = self.config_u16(PCI_COMMAND) & !PCI_COMMAND_MASTER;
        let _ = self.pci.config_write(PCI_COMMAND, &cmd.to_le_bytes());
    }

    /// `vfio_pci_core_enable`: Bus Master off (so it is not in the saved
    /// state), reset the function, save config space.
    fn enable(&self, set: &mut SetState) {
        self.clear_bus_master();
        let _ = uiommufd_devices::reset_function(self.pci.as_ref());
        let mut saved = vec![0u8; CONFIG_SIZE as usize];
        set.saved_config = self.pci.config_read(0, &mut saved).is_ok().then_some(saved);
    }

    /// `vfio_pci_core_disable`: Bus Master off, interrupts torn down, the
    /// function reset and the config space saved at enable put back.
    fn disable(&self, set: &mut SetState) {
        // vfio_pci_dma_buf_cleanup: every export revoked for good.
        self.dmabufs.set_revoked(true);
        self.migration_reset();
        self.clear_bus_master();
        {
            let mut irqs = lock(&self.irqs);
            if let Some(index) = irqs.irq_type.take() {
                let _ = self.pci.clear_irq_triggers(index);
            }
            *irqs = IrqState::default();
        }
        self.pci.reset();
        if let Some(saved) = set.saved_config.take() {
            // Dword by dword, as pci_restore_state writes it back.
            for (i, dw) in saved.chunks_exact(4).enumerate() {
                let _ = self.pci.config_write(i as u64 * 4, dw);
            }
        }
    }

    /// `__vfio_pci_memory_enabled`: BAR accesses need Memory Space Enable.
    pub(crate) fn memory_enabled(&self) -> bool {
        self.config_u16(PCI_COMMAND) & PCI_COMMAND_MEMORY != 0
    }

    /// The dma-bufs exported from its BARs.
    pub(crate) fn dmabufs(&self) -> &crate::vfio_dmabuf::Exports {
        &self.dmabufs
    }
}

/// What vfio-pci learns from config space at probe: the MSI-X table's BAR,
/// offset and size, and whether the function is PCI Express.
fn probe(pci: &dyn PciDevice) -> (Option<MsixTable>, bool) {
    let byte = |off: u64| {
        let mut b = [0u8; 1];
        pci.config_read(off, &mut b).map(|_| b[0]).unwrap_or(0)
    };
    let mut msix = None;
    let mut is_pcie = false;
    let mut pos = byte(PCI_CAPABILITY_LIST) & !3;
    // At most 48 capabilities fit in the 192 bytes after the header.
    for _ in 0..48 {
        if pos < 0x40 {
            break;
        }
        let id = byte(pos as u64);
        if id == PCI_CAP_ID_EXP {
            is_pcie = true;
        }
        if id == PCI_CAP_ID_MSIX {
            let mut b = [0u8; 4];
            let flags = pci.config_read(pos as u64 + 2, &mut b[..2]).map(|_| u16::from_le_bytes([b[0], b[1]]));
            let table = pci.config_read(pos as u64 + 4, &mut b).map(|_| u32::from_le_bytes(b));
            if let (Ok(flags), Ok(table)) = (flags, table) {
                msix = Some(MsixTable {
                    bar: table & 7,
                    offset: u64::from(table & !7),
                    size: (u64::from(flags & 0x7ff) + 1) * 16,
                });
            }
        }
        pos = byte(pos as u64 + 1) & !3;
    }
    (msix, is_pcie)
}

/// Read the first `n` bytes of a `T` from user memory, the rest zero (the
/// kernel's `copy_from_user(&s, arg, minsz)` into an uninitialized struct).
fn read_prefix<T: FromBytes + IntoBytes>(arg: u64, n: usize) -> Result<T> {
    let mut s = T::new_zeroed();
    user::copy_from_user(&mut s.as_mut_bytes()[..n], arg).ctx("reading the argument")?;
    Ok(s)
}

/// Copy `bytes` to user memory at `arg + offset`.
fn write_at(arg: u64, offset: usize, bytes: &[u8]) -> Result<()> {
    user::copy_to_user(arg.wrapping_add(offset as u64), bytes).ctx("writing the reply")
}

/// The binding of an open device (`vdev->iommufd_device` and the
/// `df->iommufd` it was made with): the context it holds a reference on,
/// the device object and the binder's edge on it.
struct Binding {
    ctx: Arc<Iommufd>,
    idev_id: ObjectId,
    idev: Dep<Device>,
}

/// One open of a VFIO device (`struct vfio_device_file`): of its cdev
/// `/dev/vfio/devices/vfioN`, or from its group (`VFIO_GROUP_GET_DEVICE_FD`).
pub struct VfioDeviceFile {
    /// `None`: the node names no device (every call is `ENODEV`).
    dev: Option<Arc<VfioDevice>>,
    /// `df->group`: set for a file from the group node.
    group: Option<Arc<VfioGroup>>,
    /// Set once the device is open through this file (a cdev bind, or
    /// from the start for a group's file): `access_granted`. The binding
    /// is the device's, shared by every file it is open through.
    binding: OnceLock<Arc<Binding>>,
    /// The file position for plain `read`/`write`.
    pos: AtomicI64,
}

impl VfioDeviceFile {
    /// An open of `dev`'s node, not bound yet.
    pub fn new(dev: Arc<VfioDevice>) -> VfioDeviceFile {
        VfioDeviceFile { dev: Some(dev), group: None, binding: OnceLock::new(), pos: AtomicI64::new(0) }
    }

    /// A file for a node whose device is gone.
    pub(crate) fn orphan() -> VfioDeviceFile {
        VfioDeviceFile { dev: None, group: None, binding: OnceLock::new(), pos: AtomicI64::new(0) }
    }

    /// `vfio_df_group_open` for `VFIO_GROUP_GET_DEVICE_FD`: open `dev`
    /// through its group, whose container is the iommufd `ctx` (the caller
    /// holds the group's lock, `group_lock`, and checked the container is
    /// set). The first open binds the device to `ctx` and attaches it to
    /// the context's compat IOAS (`vfio_iommufd_compat_attach_ioas`:
    /// `ENODEV` without one); later opens share that binding, whatever the
    /// group's container is by then, as the kernel's do.
    pub(crate) fn open_in_group(dev: &Arc<VfioDevice>, ctx: &Arc<Iommufd>) -> Result<VfioDeviceFile> {
        let mut set = lock(&dev.set);
        let binding = match (&set.binding, set.open_count) {
            (Some(b), n) if n > 0 => Arc::clone(b),
            _ => {
                let b = first_open(dev, &mut set, ctx)?;
                // The legacy path has no way to return the HWPT chosen.
                let attached = ctx
                    .vfio_ioas()
                    .map(|ioas| ioas.id())
                    .and_then(|ioas_id| b.idev.change_pt(&b.ctx, device::NO_PASID, ioas_id, false));
                if let Err(e) = attached {
                    dev.disable(&mut set);
                    unbind(dev, b);
                    return Err(e);
                }
                let b = Arc::new(b);
                set.binding = Some(Arc::clone(&b));
                b
            }
        };
        set.open_count += 1;
        Ok(VfioDeviceFile {
            dev: Some(Arc::clone(dev)),
            group: Some(Arc::clone(&dev.group)),
            binding: OnceLock::from(binding),
            pos: AtomicI64::new(0),
        })
    }

    /// The device this file opens.
    pub fn device(&self) -> Option<&Arc<VfioDevice>> {
        self.dev.as_ref()
    }

    /// Whether this file came from the group node (`VFIO_GROUP_GET_DEVICE_FD`)
    /// rather than from the device's cdev.
    pub fn from_group(&self) -> bool {
        self.group.is_some()
    }

    fn dev(&self) -> Result<&Arc<VfioDevice>> {
        self.dev.as_ref().ok_or(enodev("the device is not registered"))
    }

    /// The binding, or `EINVAL` before `VFIO_DEVICE_BIND_IOMMUFD` (every
    /// call but bind checks `access_granted` first).
    fn bound(&self) -> Result<(&Arc<VfioDevice>, &Binding)> {
        let dev = self.dev()?;
        let b = self.binding.get().ok_or(einval("the device file is not bound to an iommufd"))?;
        Ok((dev, b))
    }

    /// The ID of the device object in the bound iommufd.
    pub fn devid(&self) -> Option<ObjectId> {
        self.binding.get().map(|b| b.idev_id)
    }

    /// The bound device object.
    pub fn iommufd_device(&self) -> Option<&Arc<Device>> {
        self.binding.get().map(|b| b.idev.arc())
    }

    /// `vfio_device_fops_unl_ioctl`.
    pub fn ioctl(&self, host: &dyn FdHost, request: u64, arg: u64) -> Result<i32> {
        let cmd = request as u32;
        if cmd == v::VFIO_DEVICE_BIND_IOMMUFD {
            return self.bind(host, arg);
        }
        let (dev, b) = self.bound()?;
        let cdev = self.group.is_none();
        match cmd {
            // cdev-only: on a group's file they reach vfio-pci's ioctl,
            // which does not know them.
            v::VFIO_DEVICE_ATTACH_IOMMUFD_PT if cdev => attach_pt(dev, b, arg),
            v::VFIO_DEVICE_DETACH_IOMMUFD_PT if cdev => detach_pt(dev, b, arg),
            v::VFIO_DEVICE_FEATURE => device_feature(dev, host, arg),
            v::VFIO_DEVICE_GET_INFO => get_info(dev, arg),
            v::VFIO_DEVICE_GET_REGION_INFO => get_region_info(dev, arg),
            v::VFIO_DEVICE_GET_IRQ_INFO => get_irq_info(dev, arg),
            v::VFIO_DEVICE_SET_IRQS => set_irqs(dev, host, arg),
            v::VFIO_DEVICE_RESET => {
                uiommufd_devices::reset_function(dev.pci.as_ref()).ctx("resetting the function")?;
                dev.migration_reset();
                Ok(0)
            }
            v::VFIO_DEVICE_GET_PCI_HOT_RESET_INFO => get_pci_hot_reset_info(arg),
            v::VFIO_DEVICE_PCI_HOT_RESET => pci_hot_reset(arg, cdev),
            _ => Err(Error::new(Errno::ENOTTY, "unknown VFIO device command")),
        }
    }

    /// `vfio_df_ioctl_bind_iommufd` (mainline: the optional VF token).
    fn bind(&self, host: &dyn FdHost, arg: u64) -> Result<i32> {
        let dev = self.dev()?;
        let minsz = core::mem::offset_of!(v::VfioDeviceBindIommufd, out_devid) + 4;
        let argsz: u32 = read_prefix::<[u8; 4]>(arg, 4).map(u32::from_ne_bytes)?;
        if (argsz as usize) < minsz {
            return Err(einval("argsz is below the mandatory fields"));
        }
        let mut bind = v::VfioDeviceBindIommufd::default();
        crate::ucmd::struct_reader(arg, u64::from(argsz))(bind.as_mut_bytes())
            .map_err(|e| Error::new(e, "reading the argument"))?;
        let known = uiommufd_core::KernelRelease::process_default().vfio_bind_flags;
        if bind.iommufd < 0 || bind.flags & !known != 0 {
            return Err(einval("bad iommufd or unknown flags"));
        }
        if self.group.is_some() {
            return Err(einval("BIND_IOMMUFD is for device cdevs, not a group's device file"));
        }
        // vfio_device_block_group: EBUSY while the group node is open;
        // released again on every failure below (dropping the guard).
        let block = GroupBlock::new(&dev.group)?;
        let mut set = lock(&dev.set);
        if self.binding.get().is_some() {
            return Err(einval("this file is already bound"));
        }
        if bind.flags & v::VFIO_DEVICE_BIND_FLAG_TOKEN != 0 {
            // vfio_pci_core_match_token_uuid: the token is read, but only
            // SR-IOV PFs and VFs take one.
            let mut uuid = [0u8; 16];
            user::copy_from_user(&mut uuid, bind.token_uuid_ptr).ctx("reading the VF token")?;
            return Err(einval("a VF token was given for a function that is neither a PF nor a VF"));
        }
        let ctx = match host.get(bind.iommufd) {
            Some(f) => match &*f {
                File::Iommufd(ctx) => Arc::clone(ctx),
                _ => return Err(Error::new(Errno::EBADFD, "the descriptor is not an iommufd")),
            },
            None if host.fd_is_open(bind.iommufd) => {
                return Err(Error::new(Errno::EBADFD, "the descriptor is not an iommufd"))
            }
            None => return Err(Error::new(Errno::EBADF, "no such descriptor")),
        };
        // vfio_df_open: the cdev path opens a device once (also when it
        // is open through a file from its group).
        if set.open_count != 0 {
            return Err(einval("the device is open through another file"));
        }
        let binding = first_open(dev, &mut set, &ctx)?;
        let offset = core::mem::offset_of!(v::VfioDeviceBindIommufd, out_devid);
        if let Err(e) = write_at(arg, offset, &binding.idev_id.to_ne_bytes()) {
            dev.disable(&mut set);
            unbind(dev, binding);
            return Err(e);
        }
        let binding = Arc::new(binding);
        set.open_count = 1;
        set.binding = Some(Arc::clone(&binding));
        // Cannot be set already: checked under the set lock above.
        let _ = self.binding.set(binding);
        // The block stays until the file closes (see Drop).
        block.keep();
        Ok(0)
    }

    /// `read(2)` (`pos` `None`, at the file position) or `pread(2)` of
    /// `count` bytes into user memory at `buf`.
    pub fn read(&self, buf: u64, count: usize, pos: Option<i64>) -> Result<usize> {
        self.rw(buf, count, pos, false)
    }

    /// `write(2)` or `pwrite(2)` of `count` bytes from user memory at `buf`.
    pub fn write(&self, buf: u64, count: usize, pos: Option<i64>) -> Result<usize> {
        self.rw(buf, count, pos, true)
    }

    fn rw(&self, buf: u64, count: usize, pos: Option<i64>, write: bool) -> Result<usize> {
        if pos.is_some_and(|p| p < 0) {
            return Err(einval("negative file position"));
        }
        let (dev, _) = self.bound()?;
        if count == 0 {
            return Ok(0);
        }
        let at = pos.unwrap_or_else(|| self.pos.load(Ordering::Relaxed));
        let n = region_rw(dev, at as u64, buf, count, write)?;
        if pos.is_none() {
            self.pos.fetch_add(n as i64, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// Where an `mmap(2)` of `length` bytes at file `offset` goes
    /// (`vfio_pci_core_mmap`): the memfd of the BAR and the offset in it.
    /// Asking starts the device watching the mapping (see
    /// [`PciDevice::region_mmap_fd`]); the returned descriptor belongs to
    /// the device, which lives as long as this file.
    pub fn mmap_target(&self, offset: u64, length: u64, shared: bool) -> Result<(RawFd, u64)> {
        let (dev, _) = self.bound()?;
        let index = v::vfio_pci_offset_to_index(offset);
        if index >= u64::from(dev.pci.num_regions()) {
            return Err(einval("no such region"));
        }
        if !shared {
            return Err(einval("device regions are mapped MAP_SHARED only"));
        }
        let index = index as u32;
        if index >= v::VFIO_PCI_ROM_REGION_INDEX {
            return Err(einval("only BARs can be mapped"));
        }
        let info = dev.pci.region_info(index).ctx("looking up the region")?;
        if info.size == 0 || !info.flags.contains(RegionFlags::MMAP) {
            return Err(einval("the region cannot be mapped"));
        }
        let page = uiommufd_memory::page_size() as u64;
        let phys_len = info.size.checked_next_multiple_of(page).ok_or(einval("region size"))?;
        let start = offset & v::VFIO_PCI_OFFSET_MASK;
        if start.checked_add(length).is_none_or(|end| end > phys_len) {
            return Err(einval("the mapping extends past the region"));
        }
        let (fd, _) = dev.pci.region_mmap_fd(index).ok_or(einval("the region cannot be mapped"))?;
        Ok((fd.as_raw_fd(), start))
    }

    /// `mmap(2)` of this file: map the region's memory into the program
    /// (`addr`, `prot` and `flags` as given; `flags` must include
    /// `MAP_SHARED`). Returns the address.
    pub fn mmap(&self, addr: u64, length: u64, prot: i32, flags: i32, offset: u64) -> Result<u64> {
        // The mapping type: MAP_SHARED, MAP_SHARED_VALIDATE or MAP_PRIVATE.
        let ty = flags & 0x0f;
        let shared = ty == libc::MAP_SHARED || ty == libc::MAP_SHARED_VALIDATE;
        let (fd, start) = self.mmap_target(offset, length, shared)?;
        // SAFETY: mapping a memfd the device owns with the caller's address
        // hint and flags; a MAP_FIXED replacing the caller's own mapping is
        // what the caller asked for, as with mmap(2) itself.
        let p =
            unsafe { libc::mmap(addr as *mut libc::c_void, length as usize, prot, flags, fd, start as libc::off_t) };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOMEM);
            return Err(Error::new(Errno(e), "mapping the region"));
        }
        Ok(p as u64)
    }
}

impl Drop for VfioDeviceFile {
    /// `vfio_device_fops_release` → `vfio_df_unbind_iommufd` (cdev) or
    /// `vfio_df_group_close` (group): `vfio_df_close` under the group
    /// lock for a group's file, then, for a cdev, the group unblocked.
    fn drop(&mut self) {
        let (Some(dev), Some(binding)) = (self.dev.as_ref(), self.binding.take()) else { return };
        let group_lock = self.group.as_ref().map(|g| g.lock_state());
        let mut set = lock(&dev.set);
        drop(binding);
        set.open_count = set.open_count.saturating_sub(1);
        if set.open_count == 0 {
            dev.disable(&mut set);
            if let Some(b) = set.binding.take() {
                last_close(dev, b);
            }
        }
        drop(set);
        drop(group_lock);
        if self.group.is_none() {
            GroupBlock::release(&dev.group);
        }
        crate::status::publish();
    }
}

/// `vfio_df_device_first_open` with an iommufd: the device object is
/// created in `ctx` (`vfio_iommufd_physical_bind`), then the function is
/// opened (`vfio_pci_core_enable`) and its DMA routed through the bound
/// device's port. The caller holds the set lock.
fn first_open(dev: &VfioDevice, set: &mut SetState, ctx: &Arc<Iommufd>) -> Result<Binding> {
    let (idev_id, idev) = device::bind(ctx, Arc::clone(&dev.iommu))?;
    dev.enable(set);
    dev.pci.set_dma_port(DevicePort::new(idev.arc()));
    Ok(Binding { ctx: Arc::clone(ctx), idev_id, idev })
}

/// The unbind of `vfio_df_device_last_close`. Every file's share of the
/// binding is dropped by then (each drops its own under the set lock
/// before counting itself out), so `b` is the last one.
fn last_close(dev: &VfioDevice, b: Arc<Binding>) {
    match Arc::try_unwrap(b) {
        Ok(b) => unbind(dev, b),
        Err(b) => {
            // Not reachable (see above); should a share survive, the
            // device is still cut off and detached, and its object goes
            // with the context.
            dev.pci.set_dma_port(Arc::new(uiommufd_hw::dma::BlockedPort));
            b.idev.detach_all(&b.ctx);
        }
    }
}

/// `vfio_iommufd_physical_unbind`: DMA blocked, every attachment dropped
/// (PASIDs first), the device's vDEVICE and then the device object
/// destroyed; the context reference goes last.
fn unbind(dev: &VfioDevice, b: Binding) {
    dev.pci.set_dma_port(Arc::new(uiommufd_hw::dma::BlockedPort));
    let Binding { ctx, idev_id, idev } = b;
    idev.detach_all(&ctx);
    uiommufd_core::viommu::device_pre_destroy(&ctx, &idev);
    // That very object (its ID may be another's by now, see put_hwpt).
    let me = Arc::downgrade(idev.arc());
    drop(idev);
    let _ = ctx
        .objects()
        .destroy_wait_if(idev_id, |o| matches!(o, Object::Device(d) if std::ptr::eq(Arc::as_ptr(d), me.as_ptr())));
}

/// `vfio_df_ioctl_attach_pt` with mainline's PASID form.
fn attach_pt(dev: &VfioDevice, b: &Binding, arg: u64) -> Result<i32> {
    let minsz = core::mem::offset_of!(v::VfioDeviceAttachIommufdPt, pt_id) + 4;
    let mut a: v::VfioDeviceAttachIommufdPt = read_prefix(arg, minsz)?;
    if (a.argsz as usize) < minsz {
        return Err(einval("argsz is below the mandatory fields"));
    }
    let known = if b.ctx.release().vfio_pasid_flags { v::VFIO_DEVICE_ATTACH_PASID } else { 0 };
    if a.flags & !known != 0 {
        return Err(einval("unknown flags"));
    }
    let pasid = if a.flags & v::VFIO_DEVICE_ATTACH_PASID != 0 {
        if (a.argsz as usize) < core::mem::size_of::<v::VfioDeviceAttachIommufdPt>() {
            return Err(einval("argsz does not cover pasid"));
        }
        let p: [u8; 4] = read_prefix(arg.wrapping_add(minsz as u64), 4)?;
        a.pasid = u32::from_ne_bytes(p);
        a.pasid
    } else {
        device::NO_PASID
    };
    let _set = lock(&dev.set);
    let idev = b.idev.arc();
    // vfio_iommufd_physical_(pasid_)attach_ioas: a second attach replaces.
    let replace = idev.attached(pasid).is_some();
    a.pt_id = idev.change_pt(&b.ctx, pasid, a.pt_id, replace)?;
    let offset = core::mem::offset_of!(v::VfioDeviceAttachIommufdPt, pt_id);
    if let Err(e) = write_at(arg, offset, &a.pt_id.to_ne_bytes()) {
        idev.detach(&b.ctx, pasid);
        return Err(e);
    }
    Ok(0)
}

/// `vfio_df_ioctl_detach_pt` with mainline's PASID form; detaching what is
/// not attached succeeds.
fn detach_pt(dev: &VfioDevice, b: &Binding, arg: u64) -> Result<i32> {
    let minsz = core::mem::offset_of!(v::VfioDeviceDetachIommufdPt, flags) + 4;
    let mut d: v::VfioDeviceDetachIommufdPt = read_prefix(arg, minsz)?;
    if (d.argsz as usize) < minsz {
        return Err(einval("argsz is below the mandatory fields"));
    }
    let known = if b.ctx.release().vfio_pasid_flags { v::VFIO_DEVICE_DETACH_PASID } else { 0 };
    if d.flags & !known != 0 {
        return Err(einval("unknown flags"));
    }
    let pasid = if d.flags & v::VFIO_DEVICE_DETACH_PASID != 0 {
        if (d.argsz as usize) < core::mem::size_of::<v::VfioDeviceDetachIommufdPt>() {
            return Err(einval("argsz does not cover pasid"));
        }
        let p: [u8; 4] = read_prefix(arg.wrapping_add(minsz as u64), 4)?;
        d.pasid = u32::from_ne_bytes(p);
        d.pasid
    } else {
        device::NO_PASID
    };
    let _set = lock(&dev.set);
    b.idev.detach(&b.ctx, pasid);
    Ok(0)
}

/// `vfio_ioctl_device_feature`: the header's checks, then the migration
/// features (`vfio_migration`); no DMA logging, no low-power states, no VF
/// token.
fn device_feature(dev: &Arc<VfioDevice>, host: &dyn FdHost, arg: u64) -> Result<i32> {
    let f: v::VfioDeviceFeature = read_prefix(arg, core::mem::size_of::<v::VfioDeviceFeature>())?;
    if (f.argsz as usize) < core::mem::size_of::<v::VfioDeviceFeature>() {
        return Err(einval("argsz is below the header"));
    }
    let known = v::VFIO_DEVICE_FEATURE_MASK
        | v::VFIO_DEVICE_FEATURE_SET
        | v::VFIO_DEVICE_FEATURE_GET
        | v::VFIO_DEVICE_FEATURE_PROBE;
    if f.flags & !known != 0 {
        return Err(einval("unknown flags"));
    }
    let get_set = v::VFIO_DEVICE_FEATURE_GET | v::VFIO_DEVICE_FEATURE_SET;
    if f.flags & v::VFIO_DEVICE_FEATURE_PROBE == 0 && f.flags & get_set == get_set {
        return Err(einval("GET and SET together without PROBE"));
    }
    let header = core::mem::size_of::<v::VfioDeviceFeature>();
    let (index, data, argsz) =
        (f.flags & v::VFIO_DEVICE_FEATURE_MASK, arg.wrapping_add(header as u64), f.argsz as usize - header);
    if let Some(r) = crate::vfio_dmabuf::feature(dev, host, index, f.flags, data, argsz) {
        return r;
    }
    if let Some(r) = crate::vfio_migration::feature(dev, host, index, f.flags, data, argsz) {
        return r;
    }
    Err(Error::new(Errno::ENOTTY, "the device offers no such feature"))
}

/// `vfio_pci_ioctl_get_info`: a PCI function with reset, 9 regions, 5 IRQ
/// indexes and no capability chain.
fn get_info(dev: &VfioDevice, arg: u64) -> Result<i32> {
    let minsz = core::mem::offset_of!(v::VfioDeviceInfo, num_irqs) + 4;
    let mut info: v::VfioDeviceInfo = read_prefix(arg, minsz)?;
    if (info.argsz as usize) < minsz {
        return Err(einval("argsz is below the mandatory fields"));
    }
    info.flags = v::VFIO_DEVICE_FLAGS_PCI | v::VFIO_DEVICE_FLAGS_RESET;
    info.num_regions = dev.pci.num_regions();
    info.num_irqs = v::VFIO_PCI_NUM_IRQS;
    let n = (info.argsz as usize).min(core::mem::size_of::<v::VfioDeviceInfo>());
    write_at(arg, 0, &info.as_bytes()[..n])?;
    Ok(0)
}

/// `vfio_pci_ioctl_get_region_info`, with the MSI-X mappable capability on
/// the BAR holding the MSI-X table.
fn get_region_info(dev: &VfioDevice, arg: u64) -> Result<i32> {
    let minsz = core::mem::size_of::<v::VfioRegionInfo>();
    let mut info: v::VfioRegionInfo = read_prefix(arg, minsz)?;
    if (info.argsz as usize) < minsz {
        return Err(einval("argsz is below the mandatory fields"));
    }
    if info.index >= dev.pci.num_regions() {
        return Err(einval("no such region"));
    }
    let region = dev.pci.region_info(info.index).ctx("looking up the region")?;
    let mut cap = None;
    info.offset = v::vfio_pci_index_to_offset(info.index);
    info.size = region.size;
    match info.index {
        v::VFIO_PCI_CONFIG_REGION_INDEX => {
            info.flags = v::VFIO_REGION_INFO_FLAG_READ | v::VFIO_REGION_INFO_FLAG_WRITE;
        }
        v::VFIO_PCI_BAR0_REGION_INDEX..=v::VFIO_PCI_BAR5_REGION_INDEX => {
            info.flags = 0;
            if region.size != 0 {
                info.flags = v::VFIO_REGION_INFO_FLAG_READ | v::VFIO_REGION_INFO_FLAG_WRITE;
                if region.flags.contains(RegionFlags::MMAP) {
                    info.flags |= v::VFIO_REGION_INFO_FLAG_MMAP;
                    if dev.msix.is_some_and(|m| m.bar == info.index) {
                        cap =
                            Some(VfioInfoCapHeader { id: v::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, version: 1, next: 0 });
                    }
                }
            }
        }
        v::VFIO_PCI_ROM_REGION_INDEX => {
            info.flags = if region.size != 0 { v::VFIO_REGION_INFO_FLAG_READ } else { 0 };
        }
        v::VFIO_PCI_VGA_REGION_INDEX if region.size == 0 => return Err(einval("the function has no VGA region")),
        _ => info.flags = region.flags.0,
    }
    if let Some(cap) = cap {
        info.flags |= v::VFIO_REGION_INFO_FLAG_CAPS;
        let cap_len = core::mem::size_of::<VfioInfoCapHeader>();
        if (info.argsz as usize) < minsz + cap_len {
            info.argsz = (minsz + cap_len) as u32;
            info.cap_offset = 0;
        } else {
            write_at(arg, minsz, cap.as_bytes())?;
            info.cap_offset = minsz as u32;
        }
    }
    write_at(arg, 0, info.as_bytes())?;
    Ok(0)
}

/// `vfio_pci_ioctl_get_irq_info`.
fn get_irq_info(dev: &VfioDevice, arg: u64) -> Result<i32> {
    let minsz = core::mem::size_of::<v::VfioIrqInfo>();
    let mut info: v::VfioIrqInfo = read_prefix(arg, minsz)?;
    if (info.argsz as usize) < minsz || info.index >= v::VFIO_PCI_NUM_IRQS {
        return Err(einval("argsz or index"));
    }
    if info.index == v::VFIO_PCI_ERR_IRQ_INDEX && !dev.is_pcie {
        return Err(einval("the ERR index needs PCI Express"));
    }
    info.flags = v::VFIO_IRQ_INFO_EVENTFD;
    info.count = dev.irq_count(info.index);
    if info.index == v::VFIO_PCI_INTX_IRQ_INDEX {
        info.flags |= v::VFIO_IRQ_INFO_MASKABLE | v::VFIO_IRQ_INFO_AUTOMASKED;
    } else if info.index != v::VFIO_PCI_MSIX_IRQ_INDEX {
        // MSI-X vectors can be added while enabled (dynamic MSI-X).
        info.flags |= v::VFIO_IRQ_INFO_NORESIZE;
    }
    write_at(arg, 0, info.as_bytes())?;
    Ok(0)
}

/// `vfio_pci_ioctl_get_pci_hot_reset_info`: an integrated endpoint on the
/// root bus has neither a slot nor a bus reset.
fn get_pci_hot_reset_info(arg: u64) -> Result<i32> {
    let minsz = core::mem::size_of::<v::VfioPciHotResetInfo>();
    let hdr: v::VfioPciHotResetInfo = read_prefix(arg, minsz)?;
    if (hdr.argsz as usize) < minsz {
        return Err(einval("argsz is below the mandatory fields"));
    }
    Err(enodev("no slot or bus reset for a function on the root bus"))
}

/// `vfio_pci_ioctl_pci_hot_reset`: a device open through its cdev passes
/// an empty group list, one open through its group a non-empty one; then,
/// as for the info, there is no reset to do.
fn pci_hot_reset(arg: u64, cdev: bool) -> Result<i32> {
    let minsz = core::mem::size_of::<v::VfioPciHotReset>();
    let hdr: v::VfioPciHotReset = read_prefix(arg, minsz)?;
    if (hdr.argsz as usize) < minsz || hdr.flags != 0 {
        return Err(einval("argsz or flags"));
    }
    if (hdr.count != 0) == cdev {
        return Err(einval("group descriptors from a cdev, or none from a group's device"));
    }
    Err(enodev("no slot or bus reset for a function on the root bus"))
}

/// `vfio_set_irqs_validate_and_prepare`: returns the size of the data that
/// follows the header.
fn validate_irq_set(hdr: &v::VfioIrqSet, num_irqs: u32) -> Result<usize> {
    let minsz = core::mem::size_of::<v::VfioIrqSet>() as u32;
    if hdr.argsz < minsz
        || hdr.index >= v::VFIO_PCI_NUM_IRQS
        || hdr.count >= u32::MAX - hdr.start
        || hdr.flags & !(v::VFIO_IRQ_SET_DATA_TYPE_MASK | v::VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0
    {
        return Err(einval("argsz, index, range or flags"));
    }
    if hdr.start >= num_irqs || hdr.start + hdr.count > num_irqs {
        return Err(einval("vectors out of range"));
    }
    let size: u64 = match hdr.flags & v::VFIO_IRQ_SET_DATA_TYPE_MASK {
        v::VFIO_IRQ_SET_DATA_NONE => 0,
        v::VFIO_IRQ_SET_DATA_BOOL => 1,
        v::VFIO_IRQ_SET_DATA_EVENTFD => 4,
        _ => return Err(einval("exactly one data type")),
    };
    let need = u64::from(hdr.count) * size;
    if u64::from(hdr.argsz - minsz) < need {
        return Err(einval("argsz does not cover the data"));
    }
    Ok(need as usize)
}

/// What a SET_IRQS call passes per vector.
enum IrqData {
    None,
    Bool(Vec<u8>),
    Eventfd(Vec<i32>),
}

impl IrqData {
    fn eventfd(&self, i: usize) -> i32 {
        match self {
            IrqData::Eventfd(fds) => fds.get(i).copied().unwrap_or(-1),
            _ => -1,
        }
    }
}

/// `vfio_pci_ioctl_set_irqs` → `vfio_pci_set_irqs_ioctl`.
fn set_irqs(dev: &VfioDevice, host: &dyn FdHost, arg: u64) -> Result<i32> {
    let hdr: v::VfioIrqSet = read_prefix(arg, core::mem::size_of::<v::VfioIrqSet>())?;
    let data_size = validate_irq_set(&hdr, dev.irq_count(hdr.index))?;
    let mut raw = vec![0u8; data_size];
    let data_at = arg.wrapping_add(core::mem::size_of::<v::VfioIrqSet>() as u64);
    user::copy_from_user(&mut raw, data_at).ctx("reading the data")?;
    let data = match hdr.flags & v::VFIO_IRQ_SET_DATA_TYPE_MASK {
        v::VFIO_IRQ_SET_DATA_BOOL => IrqData::Bool(raw),
        v::VFIO_IRQ_SET_DATA_EVENTFD => {
            IrqData::Eventfd(raw.chunks_exact(4).map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        _ => IrqData::None,
    };
    let action = hdr.flags & v::VFIO_IRQ_SET_ACTION_TYPE_MASK;
    let mut irqs = lock(&dev.irqs);
    let (index, start, count) = (hdr.index, hdr.start, hdr.count);
    match (index, action) {
        (v::VFIO_PCI_INTX_IRQ_INDEX, v::VFIO_IRQ_SET_ACTION_MASK | v::VFIO_IRQ_SET_ACTION_UNMASK) => {
            // INTx masking is not modelled: the checks only.
            if irqs.irq_type != Some(index) || start != 0 || count != 1 {
                return Err(einval("INTx is not enabled, or not vector 0"));
            }
            Ok(0)
        }
        (
            v::VFIO_PCI_INTX_IRQ_INDEX | v::VFIO_PCI_MSI_IRQ_INDEX | v::VFIO_PCI_MSIX_IRQ_INDEX,
            v::VFIO_IRQ_SET_ACTION_TRIGGER,
        ) => set_vector_trigger(dev, host, &mut irqs, index, start, count, &data),
        (v::VFIO_PCI_ERR_IRQ_INDEX, v::VFIO_IRQ_SET_ACTION_TRIGGER) if dev.is_pcie => {
            set_single_trigger(host, &mut irqs.err, start, count, &data)
        }
        (v::VFIO_PCI_REQ_IRQ_INDEX, v::VFIO_IRQ_SET_ACTION_TRIGGER) => {
            set_single_trigger(host, &mut irqs.req, start, count, &data)
        }
        _ => Err(Error::new(Errno::ENOTTY, "no such action on this IRQ index")),
    }
}

/// An eventfd of the program's, duplicated (`eventfd_ctx_fdget`): `EBADF`
/// for a descriptor that is not open, `EINVAL` for one that is not an
/// eventfd.
fn eventfd_get(host: &dyn FdHost, fd: i32) -> Result<Arc<Eventfd>> {
    if host.get(fd).is_some() {
        return Err(einval("a uiommufd file is not an eventfd"));
    }
    let dup = host.dup_fd(fd).map_err(|e| Error::new(e, "duplicating the eventfd"))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", dup.as_raw_fd()));
    if !link.is_ok_and(|l| l.as_os_str() == "anon_inode:[eventfd]") {
        return Err(einval("the descriptor is not an eventfd"));
    }
    Ok(Arc::new(Eventfd(dup)))
}

/// `vfio_pci_set_msi_trigger` (and INTx's trigger, which follows the same
/// shape here): enable, set or clear a block of vectors, disable, or
/// signal them for loopback tests.
fn set_vector_trigger(
    dev: &VfioDevice,
    host: &dyn FdHost,
    irqs: &mut IrqState,
    index: u32,
    start: u32,
    count: u32,
    data: &IrqData,
) -> Result<i32> {
    let is_it = irqs.irq_type == Some(index);
    if is_it && count == 0 && matches!(data, IrqData::None) {
        irq_disable(dev, irqs);
        return Ok(0);
    }
    if !(is_it || irqs.irq_type.is_none()) {
        return Err(einval("another interrupt type is enabled"));
    }
    if let IrqData::Eventfd(_) = data {
        if !is_it {
            // vfio_msi_enable: allocating no vector at all is out of range.
            if start + count == 0 {
                return Err(Error::new(Errno::ERANGE, "no vectors to enable"));
            }
            irqs.irq_type = Some(index);
            irqs.vectors = vec![None; dev.irq_count(index) as usize];
        }
        let r = set_block(dev, host, irqs, index, start, count, data);
        if r.is_err() && !is_it {
            irq_disable(dev, irqs);
        }
        return r.map(|_| 0);
    }
    if !is_it {
        return Err(einval("the interrupt type is not enabled"));
    }
    for i in start..start + count {
        let Some(Some(t)) = irqs.vectors.get(i as usize) else { continue };
        let fire = match data {
            IrqData::Bool(b) => b.get((i - start) as usize).is_some_and(|&x| x != 0),
            _ => true,
        };
        if fire {
            t.signal();
        }
    }
    Ok(0)
}

/// `vfio_msi_set_block`: vector by vector; on a failure the vectors set so
/// far by this call are cleared again.
fn set_block(
    dev: &VfioDevice,
    host: &dyn FdHost,
    irqs: &mut IrqState,
    index: u32,
    start: u32,
    count: u32,
    data: &IrqData,
) -> Result<()> {
    let mut res = Ok(());
    let mut done = 0;
    for i in 0..count as usize {
        let fd = data.eventfd(i);
        let slot = start as usize + i;
        done = slot + 1;
        irqs.vectors[slot] = None;
        if fd >= 0 {
            match eventfd_get(host, fd) {
                Ok(t) => irqs.vectors[slot] = Some(t),
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
    }
    if res.is_err() {
        for slot in &mut irqs.vectors[start as usize..done] {
            *slot = None;
        }
    }
    push_triggers(dev, irqs, index);
    res
}

/// Hand the function the current triggers of `index`.
fn push_triggers(dev: &VfioDevice, irqs: &IrqState, index: u32) {
    let triggers: Vec<Option<Arc<dyn IrqTrigger>>> =
        irqs.vectors.iter().map(|t| t.clone().map(|t| t as Arc<dyn IrqTrigger>)).collect();
    if triggers.iter().all(Option::is_none) {
        let _ = dev.pci.clear_irq_triggers(index);
    } else {
        let _ = dev.pci.set_irq_triggers(index, 0, triggers);
    }
}

/// `vfio_msi_disable`: every vector's eventfd released, the type off.
fn irq_disable(dev: &VfioDevice, irqs: &mut IrqState) {
    if let Some(index) = irqs.irq_type.take() {
        let _ = dev.pci.clear_irq_triggers(index);
    }
    irqs.vectors.clear();
}

/// `vfio_pci_set_ctx_trigger_single` (ERR and REQ): one eventfd, or a
/// loopback signal.
fn set_single_trigger(
    host: &dyn FdHost,
    slot: &mut Option<Arc<Eventfd>>,
    start: u32,
    count: u32,
    data: &IrqData,
) -> Result<i32> {
    if start != 0 || count > 1 {
        return Err(einval("a single vector"));
    }
    match data {
        IrqData::None => {
            let t = slot.as_ref().ok_or(einval("no eventfd to signal"))?;
            if count != 0 {
                t.signal();
            } else {
                *slot = None;
            }
            Ok(0)
        }
        IrqData::Bool(b) => {
            if count == 0 {
                return Err(einval("no data"));
            }
            if b.first().is_some_and(|&x| x != 0) {
                if let Some(t) = slot {
                    t.signal();
                }
            }
            Ok(0)
        }
        IrqData::Eventfd(fds) => {
            let fd = *fds.first().ok_or(einval("no data"))?;
            match fd {
                -1 => *slot = None,
                fd if fd >= 0 => *slot = Some(eventfd_get(host, fd)?),
                _ => return Err(einval("negative descriptor")),
            }
            Ok(0)
        }
    }
}

/// `vfio_pci_rw`: a read or write of `count` bytes at file offset `off`.
fn region_rw(dev: &VfioDevice, off: u64, buf: u64, count: usize, write: bool) -> Result<usize> {
    let index = v::vfio_pci_offset_to_index(off);
    if index >= u64::from(dev.pci.num_regions()) {
        return Err(einval("no such region"));
    }
    let index = index as u32;
    let pos = off & v::VFIO_PCI_OFFSET_MASK;
    match index {
        v::VFIO_PCI_CONFIG_REGION_INDEX => config_rw(dev, pos, buf, count, write),
        v::VFIO_PCI_ROM_REGION_INDEX if write => Err(einval("the ROM is read-only")),
        v::VFIO_PCI_ROM_REGION_INDEX | v::VFIO_PCI_BAR0_REGION_INDEX..=v::VFIO_PCI_BAR5_REGION_INDEX => {
            bar_rw(dev, index, pos, buf, count, write)
        }
        _ => Err(einval("the region cannot be read or written")),
    }
}

/// `vfio_pci_config_rw`: the whole access must lie inside config space
/// (`EFAULT` otherwise, as the kernel answers); aligned 4, 2, 1-byte pieces.
fn config_rw(dev: &VfioDevice, pos: u64, buf: u64, count: usize, write: bool) -> Result<usize> {
    let size = dev.pci.region_info(v::VFIO_PCI_CONFIG_REGION_INDEX).map(|r| r.size).unwrap_or(CONFIG_SIZE);
    if pos >= size || pos.checked_add(count as u64).is_none_or(|end| end > size) {
        return Err(Error::new(Errno::EFAULT, "outside config space"));
    }
    let mut done = 0usize;
    while done < count {
        let at = pos + done as u64;
        let left = count - done;
        let n = if left >= 4 && at.is_multiple_of(4) {
            4
        } else if left >= 2 && at.is_multiple_of(2) {
            2
        } else {
            1
        };
        let mut piece = [0u8; 4];
        let ubuf = buf.wrapping_add(done as u64);
        if write {
            user::copy_from_user(&mut piece[..n], ubuf).ctx("reading the data")?;
            let enabled = dev.memory_enabled();
            dev.pci.config_write(at, &piece[..n]).ctx("writing config space")?;
            // vfio_basic_config_write: Memory Space Enable going off
            // revokes the BARs' dma-bufs, coming on makes them available.
            if dev.memory_enabled() != enabled {
                dev.dmabufs.set_revoked(!dev.memory_enabled());
            }
        } else {
            dev.pci.config_read(at, &mut piece[..n]).ctx("reading config space")?;
            user::copy_to_user(ubuf, &piece[..n]).ctx("writing the data")?;
        }
        done += n;
    }
    Ok(count)
}

/// `vfio_pci_bar_rw` → `vfio_pci_core_do_io_rw`: clamp to the BAR, then
/// naturally aligned 8, 4, 2, 1-byte accesses (4 at most for the ROM);
/// the MSI-X table reads as all-ones and drops writes. Each access needs
/// Memory Space Enable (`EIO`).
fn bar_rw(dev: &VfioDevice, index: u32, pos: u64, buf: u64, count: usize, write: bool) -> Result<usize> {
    let size = dev.pci.region_info(index).map(|r| r.size).unwrap_or(0);
    if size == 0 || pos >= size {
        return Err(einval("outside the BAR"));
    }
    let count = count.min((size - pos) as usize);
    let (x_start, x_end) = match dev.msix {
        Some(m) if m.bar == index => (m.offset, m.offset + m.size),
        _ => (0, 0),
    };
    let max_width = if index == v::VFIO_PCI_ROM_REGION_INDEX { 4 } else { 8 };
    let mut done = 0usize;
    while done < count {
        let off = pos + done as u64;
        let left = count - done;
        let fillable = if off < x_start {
            left.min((x_start - off) as usize)
        } else if off >= x_end {
            left
        } else {
            0
        };
        let ubuf = buf.wrapping_add(done as u64);
        if fillable == 0 {
            // Inside the MSI-X table.
            let n = left.min((x_end - off) as usize);
            if !write {
                user::copy_to_user(ubuf, &vec![0xff; n]).ctx("writing the data")?;
            }
            done += n;
            continue;
        }
        let (_, n) = split_access(off, fillable).next().unwrap_or((off, 1));
        let n = n.min(max_width);
        if !dev.memory_enabled() {
            return Err(Error::new(Errno::EIO, "Memory Space is disabled"));
        }
        let mut piece = [0u8; 8];
        if write {
            user::copy_from_user(&mut piece[..n], ubuf).ctx("reading the data")?;
            dev.pci.region_write(index, off, &piece[..n]).ctx("writing the BAR")?;
        } else {
            dev.pci.region_read(index, off, &mut piece[..n]).ctx("reading the BAR")?;
            user::copy_to_user(ubuf, &piece[..n]).ctx("writing the data")?;
        }
        done += n;
    }
    Ok(count)
}

/// The C name of VFIO device request `cmd`, for traces.
pub fn ioctl_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        v::VFIO_DEVICE_GET_INFO => "VFIO_DEVICE_GET_INFO",
        v::VFIO_DEVICE_GET_REGION_INFO => "VFIO_DEVICE_GET_REGION_INFO",
        v::VFIO_DEVICE_GET_IRQ_INFO => "VFIO_DEVICE_GET_IRQ_INFO",
        v::VFIO_DEVICE_SET_IRQS => "VFIO_DEVICE_SET_IRQS",
        v::VFIO_DEVICE_RESET => "VFIO_DEVICE_RESET",
        v::VFIO_DEVICE_GET_PCI_HOT_RESET_INFO => "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
        v::VFIO_DEVICE_PCI_HOT_RESET => "VFIO_DEVICE_PCI_HOT_RESET",
        v::VFIO_DEVICE_IOEVENTFD => "VFIO_DEVICE_IOEVENTFD",
        v::VFIO_DEVICE_FEATURE => "VFIO_DEVICE_FEATURE",
        v::VFIO_DEVICE_BIND_IOMMUFD => "VFIO_DEVICE_BIND_IOMMUFD",
        v::VFIO_DEVICE_ATTACH_IOMMUFD_PT => "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        v::VFIO_DEVICE_DETACH_IOMMUFD_PT => "VFIO_DEVICE_DETACH_IOMMUFD_PT",
        _ => return None,
    })
}

/// A descriptor number of the program's, duplicated close-on-exec with
/// `fcntl` `dup` (for [`FdHost::dup_fd`] implementations).
pub fn dup_with(fd: i32, fcntl: impl FnOnce(i32, i32, i32) -> i32) -> std::result::Result<OwnedFd, Errno> {
    let r = fcntl(fd, libc::F_DUPFD_CLOEXEC, 0);
    if r < 0 {
        return Err(Errno::EBADF);
    }
    // Kept by the engine: out of the program's way.
    let r = uiommufd_memory::sys::out_of_the_way(r);
    // SAFETY: `r` is a descriptor the duplication just created, owned by
    // no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}
