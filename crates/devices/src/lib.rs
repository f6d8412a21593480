//! Emulated PCI Express devices whose DMA goes through an IOMMU model.
//!
//! A device here is a PCI function as `vfio-pci` shows it to user space
//! ([`pci::PciDevice`]): a 4 KiB configuration space ([`config::ConfigSpace`]
//! holds the registers and their write semantics, so each device only
//! declares its BARs and capabilities), BAR regions read and written at
//! offsets or mapped from a memfd ([`mmio`]), interrupt vectors that fire
//! [`irq::IrqTrigger`]s (eventfds in the VFIO layer), and a Function Level
//! Reset. Every memory request a device issues goes to a
//! [`uiommufd_hw::dma::DmaPort`] with the attributes a PCIe request carries
//! (PASID, No Snoop, privileged), taken from the device's own config space:
//! Bus Master Enable, Device Control's Enable No Snoop, and PASID Control.
//! Until the engine binds the device and hands it a port, DMA goes to a
//! `BlockedPort`.
//!
//! Devices:
//! - [`dma_engine::DmaEngine`]: a descriptor-ring copy/fill/compare engine
//!   (`docs/devices/dma-engine.md`).
//!
//! [`platform::Platform`] is the emulated machine: the IOMMU model and the
//! devices behind it, as `uiommufd run --iommu ... --device ...` describes.
//!
//! [`testing`] has what tests of devices (here and in the engine and VFIO
//! crates) need: an identity-mapped memory port that records every request,
//! a counting trigger, and a small ring driver.
//!
//! The crate has no `unsafe`: the shared memory of [`mmio`] (memfd,
//! `mmap`, atomics) is the memory crate's.

#![deny(unsafe_code)]

pub mod config;
pub mod dma_engine;
pub mod irq;
pub mod mmio;
pub mod pci;
pub mod platform;
pub mod testing;

pub use config::{ConfigSpace, PciId};
pub use dma_engine::{DmaEngine, DmaEngineOptions};
pub use irq::{IrqLines, IrqTrigger};
pub use pci::{reset_function, split_access, DeviceMigration, PciDevice, RegionFlags, RegionInfo};
