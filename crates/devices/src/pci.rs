//! The emulated PCI function as a VFIO layer serves it.
//!
//! [`PciDevice`] is shaped after what `vfio-pci` offers user space for one
//! function, so that `/dev/vfio/devices/vfioN` is a thin layer over it:
//!
//! | VFIO | here |
//! | --- | --- |
//! | `VFIO_DEVICE_GET_INFO` | [`PciDevice::num_regions`], [`PciDevice::num_irqs`]; reset is always supported |
//! | `VFIO_DEVICE_GET_REGION_INFO` | [`PciDevice::region_info`] (index 7 is config space) |
//! | `pread`/`pwrite` at a region offset | [`PciDevice::region_read`] / [`PciDevice::region_write`] |
//! | `mmap` of a region | [`PciDevice::region_mmap_fd`]: map that memfd `MAP_SHARED` |
//! | `VFIO_DEVICE_GET_IRQ_INFO` | [`PciDevice::irq_count`] |
//! | `VFIO_DEVICE_SET_IRQS` (eventfds) | [`PciDevice::set_irq_triggers`] / [`PciDevice::clear_irq_triggers`] / [`PciDevice::trigger_irq`] |
//! | `VFIO_DEVICE_RESET` | [`reset_function`] (save config, [`PciDevice::reset`], restore) |
//! | `VFIO_DEVICE_FEATURE_MIG_*` (live migration) | [`PciDevice::migration`]: [`DeviceMigration`] |
//!
//! The engine binds the device to an IOMMU and hands it a [`DmaPort`] with
//! [`PciDevice::set_dma_port`]; until then the device's DMA is blocked.
//!
//! Errors are [`Errno`]s, the ones the VFIO layer returns: `EINVAL` for an
//! unknown region or IRQ index, an access outside a region, or a BAR access
//! that is not 1, 2, 4 or 8 bytes naturally aligned (see [`split_access`]
//! for cutting a larger `pread` the way `vfio_pci_core_do_io_rw` does).
//!
//! The bus/device/function number is the platform's, not the device's: a
//! device has a [`PciDevice::name`] and an identity ([`PciId`]), nothing
//! more.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use uiommufd_abi::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use uiommufd_abi::Errno;
use uiommufd_hw::dma::DmaPort;

use crate::config::{PciId, CONFIG_SPACE_SIZE};
use crate::irq::IrqTrigger;

/// Region flags, with `VFIO_REGION_INFO_FLAG_*` values so the VFIO layer
/// can pass them through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionFlags(pub u32);

impl RegionFlags {
    pub const NONE: RegionFlags = RegionFlags(0);
    pub const READ: RegionFlags = RegionFlags(VFIO_REGION_INFO_FLAG_READ);
    pub const WRITE: RegionFlags = RegionFlags(VFIO_REGION_INFO_FLAG_WRITE);
    pub const MMAP: RegionFlags = RegionFlags(VFIO_REGION_INFO_FLAG_MMAP);

    pub const fn contains(self, other: RegionFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for RegionFlags {
    type Output = RegionFlags;
    fn bitor(self, rhs: RegionFlags) -> RegionFlags {
        RegionFlags(self.0 | rhs.0)
    }
}

/// One VFIO region of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// VFIO region index (`VFIO_PCI_BAR0_REGION_INDEX` ..
    /// `VFIO_PCI_VGA_REGION_INDEX`).
    pub index: u32,
    /// Size in bytes; 0 for a region the function does not implement (an
    /// absent BAR, the upper half of a 64-bit BAR, no ROM, no VGA).
    pub size: u64,
    pub flags: RegionFlags,
}

impl RegionInfo {
    /// An unimplemented region: size 0, no flags (what `vfio-pci` reports).
    pub const fn absent(index: u32) -> Self {
        RegionInfo { index, size: 0, flags: RegionFlags::NONE }
    }

    /// The config-space region (index 7): 4 KiB, read/write.
    pub const fn config() -> Self {
        RegionInfo {
            index: VFIO_PCI_CONFIG_REGION_INDEX,
            size: CONFIG_SPACE_SIZE as u64,
            flags: RegionFlags(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE),
        }
    }
}

/// An emulated PCI Express function.
///
/// All methods take `&self`: a device is shared (`Arc<dyn PciDevice>`)
/// between the VFIO layer, the engine that binds it, and its own worker,
/// and serializes internally. None of them blocks on DMA except `reset`,
/// which waits for the descriptor in flight.
pub trait PciDevice: Send + Sync {
    /// A human-readable name (`dma-engine0`), unique per platform.
    fn name(&self) -> &str;

    /// The identity registers (vendor, device, subsystem, revision, class).
    fn id(&self) -> PciId;

    /// Read `buf.len()` bytes of configuration space at `offset` (any size
    /// and alignment inside the 4 KiB; `EINVAL` past it).
    fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;

    /// Write configuration space: each byte through its write mask, RO bits
    /// stay. Side effects (Bus Master, No Snoop, PASID Control, MSI-X
    /// Control, Initiate FLR) take effect before this returns.
    fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), Errno>;

    /// Number of VFIO regions (`VFIO_PCI_NUM_REGIONS` for a PCI function).
    fn num_regions(&self) -> u32 {
        VFIO_PCI_NUM_REGIONS
    }

    /// Region `index`: `EINVAL` for `index >= num_regions()`, an absent
    /// region (size 0) for unimplemented ones.
    fn region_info(&self, index: u32) -> Result<RegionInfo, Errno>;

    /// Read region `index` at `offset`. BARs take 1, 2, 4 or 8-byte
    /// naturally aligned accesses; the config region (index 7) any access
    /// inside it. `EINVAL` otherwise.
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;

    /// Write region `index` at `offset`; the same rules as `region_read`. A
    /// write to a BAR register that has an effect (a doorbell) wakes the
    /// device before this returns.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;

    /// The memfd behind an mmap-able region, and its length: the shim maps
    /// it `MAP_SHARED` into the program at the region's mmap offset. Asking
    /// is the device's cue that stores may now reach its registers without
    /// `region_write`, so it starts watching them. `None` for regions that
    /// cannot be mapped.
    fn region_mmap_fd(&self, index: u32) -> Option<(BorrowedFd<'_>, u64)>;

    /// Number of VFIO IRQ indexes (`VFIO_PCI_NUM_IRQS`).
    fn num_irqs(&self) -> u32 {
        VFIO_PCI_NUM_IRQS
    }

    /// Vectors of IRQ `index` (INTx=0, MSI=1, MSI-X=2, ERR=3, REQ=4); 0 for
    /// an index the function does not have.
    fn irq_count(&self, index: u32) -> u32;

    /// Attach triggers to vectors `start..start + triggers.len()` of
    /// `index`; `None` detaches one. `EINVAL` if the range does not fit.
    fn set_irq_triggers(&self, index: u32, start: u32, triggers: Vec<Option<Arc<dyn IrqTrigger>>>)
        -> Result<(), Errno>;

    /// Detach every trigger of `index` (disabling that interrupt type).
    fn clear_irq_triggers(&self, index: u32) -> Result<(), Errno>;

    /// Fire vectors `start..start + count` of `index` as if the function
    /// had raised them (VFIO's `DATA_NONE`/`DATA_BOOL` trigger, for
    /// loopback tests). `EINVAL` if the range does not fit.
    fn trigger_irq(&self, index: u32, start: u32, count: u32) -> Result<(), Errno>;

    /// Function Level Reset: every register, queue and config-space field
    /// back to its power-on value; DMA in flight finishes or is abandoned
    /// first. Triggers and the DMA port (platform state) are kept. Must
    /// not be called from an [`IrqTrigger`] or a [`DmaPort`] of this
    /// device.
    fn reset(&self);

    /// Route the function's DMA through `port` (`BlockedPort` to detach).
    /// Requests already issued finish on the old port.
    fn set_dma_port(&self, port: Arc<dyn DmaPort>);

    /// Max PASID Width of the function's PASID capability, if it has one
    /// (what the engine's `max_pasid_log2` reports for a bound device).
    fn pasid_width(&self) -> Option<u8> {
        None
    }

    /// The function's live-migration interface, if it can be migrated
    /// (what a vfio-pci variant driver's `mig_ops` are).
    fn migration(&self) -> Option<&dyn DeviceMigration> {
        None
    }
}

/// What VFIO's migration state machine needs from a device
/// (`VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`): stop and restart it, and read
/// out or replace its internal state while it is stopped.
///
/// Stopped means what the uAPI's STOP says: no DMA, no interrupts, no
/// change of internal state, while config space and register reads and
/// writes are still accepted. Work in flight pauses at a request boundary
/// and its progress is part of the saved state, so the device that loads
/// it goes on where this one stopped.
pub trait DeviceMigration: Send + Sync {
    /// Stop the device (idempotent); returns once nothing runs any more.
    fn stop(&self);

    /// Run again after [`DeviceMigration::stop`] or a load.
    fn run(&self);

    /// The stopped device's internal state: registers, queue positions,
    /// work in flight, pending interrupts, config space.
    fn save(&self) -> Vec<u8>;

    /// How many bytes [`DeviceMigration::save`] gives.
    fn saved_size(&self) -> usize;

    /// Replace the stopped device's state with one `save` gave on a
    /// compatible device (same options). `EINVAL` for data that is not
    /// such a state; the device is then unchanged.
    fn load(&self, state: &[u8]) -> Result<(), Errno>;
}

/// `pci_reset_function()`: what `VFIO_DEVICE_RESET` does. Save the whole
/// config space, reset the function, then write the saved image back
/// through the write masks (so BARs, Command, Device Control, MSI-X and
/// PASID Control come back; RO bits are unaffected, W1C status bits are
/// cleared, and Initiate FLR, which reads 0, is not re-triggered).
pub fn reset_function(dev: &dyn PciDevice) -> Result<(), Errno> {
    let mut saved = vec![0u8; CONFIG_SPACE_SIZE];
    dev.config_read(0, &mut saved)?;
    dev.reset();
    // Dword by dword, as the kernel's pci_restore_state does.
    for (i, dw) in saved.chunks_exact(4).enumerate() {
        dev.config_write(i as u64 * 4, dw)?;
    }
    Ok(())
}

/// Cut an access of `len` bytes at `offset` into the naturally aligned 8,
/// 4, 2 and 1-byte pieces `vfio_pci_core_do_io_rw` would issue, in order.
/// Yields `(offset, size)`.
pub fn split_access(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize)> {
    let mut off = offset;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let size = [8usize, 4, 2, 1].into_iter().find(|&s| left >= s && off.is_multiple_of(s as u64)).unwrap_or(1);
        let piece = (off, size);
        off = off.wrapping_add(size as u64);
        left -= size;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_access_pieces() {
        let v: Vec<_> = split_access(0x3, 14).collect();
        assert_eq!(v, vec![(3, 1), (4, 4), (8, 8), (16, 1)]);
        let v: Vec<_> = split_access(0x10, 8).collect();
        assert_eq!(v, vec![(0x10, 8)]);
        let v: Vec<_> = split_access(0x12, 6).collect();
        assert_eq!(v, vec![(0x12, 2), (0x14, 4)]);
        assert_eq!(split_access(0, 0).count(), 0);
    }
}
