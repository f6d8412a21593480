//! AMD-Vi: a software model of an AMD IOMMU and of what the Linux AMD
//! IOMMU driver (`drivers/iommu/amd/`, Linux 7.3, with
//! `CONFIG_AMD_IOMMU_IOMMUFD`) does with it.
//!
//! - [`regs`]: EFR and EFR2, typed both ways, a realistic default (a Zen 4
//!   EPYC), parsing of the values Linux prints at boot, decoding;
//! - [`info`]: what the driver derives from them and from the platform.
//!
//! Sources: the AMD I/O Virtualization Technology (IOMMU) Specification,
//! 48882 (sections cited where each structure or rule is implemented), and
//! Linux 7.3 `drivers/iommu/amd/` (`init.c`, `iommu.c`, `iommufd.c`,
//! `nested.c`) with the generic page table formats it uses
//! (`drivers/iommu/generic_pt/fmt/amdv1.h`, `x86_64.h`), cited by
//! function.

pub mod info;
pub mod regs;
pub mod v1;

pub use info::{AmdInfo, DriverParams};
pub use regs::AmdRegs;
