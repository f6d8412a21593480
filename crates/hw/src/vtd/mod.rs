//! Intel VT-d: a software model of the remapping hardware and of what the
//! Linux intel-iommu driver does with it.
//!
//! - [`regs`]: CAP_REG / ECAP_REG, typed both ways, a realistic default, a
//!   builder, and decoding of the values the kernel prints at boot;
//! - [`info`]: what the driver derives from them (address widths, page
//!   sizes, coherency, PASIDs, `iommu_hw_info_vtd`, reserved regions);
//! - [`sl`]: second-stage paging and the second-stage paging domain;
//! - [`fl`]: first-stage (IA-32e) paging, walked in guest memory;
//! - [`iotlb`]: the IOTLB and paging-structure cache, and domain IDs;
//! - [`nested`]: a nested domain (guest first stage over a parent);
//! - [`device`]: a unit ([`VtdIommu`]) and a device behind it
//!   ([`VtdDevice`], an [`IommuDevice`](crate::device::IommuDevice)).
//!
//! Sources: the VT-d Architecture Specification (rev 4.x/5.0; sections are
//! cited where each format or rule is implemented) and Linux's
//! `drivers/iommu/intel/` (6.12, plus the later second-stage allocation and
//! compatibility split), cited by function.

pub mod device;
pub mod fl;
pub mod info;
pub mod iotlb;
pub mod nested;
pub mod regs;
pub mod sl;

pub use device::{VtdDevice, VtdIommu};
pub use info::{DriverParams, VtdInfo};
pub use iotlb::Iotlb;
pub use nested::VtdNested;
pub use regs::{Cap, Ecap, VtdRegs, VtdRegsBuilder};
pub use sl::VtdSlDomain;
