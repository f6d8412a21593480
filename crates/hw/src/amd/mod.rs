//! AMD-Vi: a software model of an AMD IOMMU and of what the Linux AMD
//! IOMMU driver (`drivers/iommu/amd/`, Linux 7.3, with
//! `CONFIG_AMD_IOMMU_IOMMUFD`) does with it.
//!
//! - [`regs`]: EFR and EFR2, typed both ways, a realistic default (a Zen 4
//!   EPYC), parsing of the values Linux prints at boot, decoding;
//! - [`info`]: what the driver derives from them and from the platform;
//! - [`v1`]: the host (v1) page table format on the generic engine; the
//!   guest (v2) format is the shared [`crate::x86_64`];
//! - [`dte`]: device table entries, and the checks of a guest's DTE;
//! - [`cmd`]: commands, as the driver builds them and the IOMMU reads them;
//! - [`event`]: event log entries (`IO_PAGE_FAULT`);
//! - [`domain`]: v1 and v2 paging domains;
//! - [`nested`]: nested domains and their two-level translation;
//! - [`viommu`]: the vIOMMU;
//! - [`device`]: an IOMMU ([`AmdIommu`]) and a device behind it
//!   ([`AmdDevice`], an [`IommuDevice`](crate::device::IommuDevice));
//! - [`spec`]: the `amd[:key=value,...]` platform keys.
//!
//! Sources: the AMD I/O Virtualization Technology (IOMMU) Specification,
//! 48882 (sections cited where each structure or rule is implemented), and
//! Linux 7.3 `drivers/iommu/amd/` (`init.c`, `iommu.c`, `iommufd.c`,
//! `nested.c`) with the generic page table formats it uses
//! (`drivers/iommu/generic_pt/fmt/amdv1.h`, `x86_64.h`), cited by
//! function.

pub mod cmd;
pub mod device;
pub mod domain;
pub mod dte;
pub mod event;
pub mod info;
pub mod nested;
pub mod regs;
pub mod spec;
pub mod v1;
pub mod viommu;

#[cfg(test)]
mod tests;

pub use device::{AmdDevice, AmdIommu};
pub use domain::{AmdV1Domain, AmdV2Domain};
pub use info::{AmdInfo, DriverParams};
pub use nested::AmdNested;
pub use regs::AmdRegs;
pub use spec::AmdSpec;
pub use viommu::AmdViommu;
