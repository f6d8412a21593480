//! Arm SMMUv3: a software model of the SMMU and of what the Linux
//! arm-smmu-v3 driver (with its iommufd support) does with it.
//!
//! - [`regs`]: SMMU_IDR0..IDR5, IIDR, AIDR, typed both ways, a realistic
//!   default, a builder, parsing of pasted values and decoding;
//! - [`info`]: what the driver derives from them and from firmware
//!   (features, address sizes, page sizes, ID widths, coherency, the
//!   capabilities it reports, `iommu_hw_info_arm_smmuv3`);
//! - [`lpae`]: the VMSAv8-64 stage 1 and stage 2 descriptor formats as
//!   io-pgtable-arm writes them, on the generic page-table engine;
//! - [`domain`]: stage 1 and stage 2 paging domains (ASIDs, VMIDs, CD and
//!   STE words, map/unmap/dirty rules);
//! - [`ste`]: STE and CD layouts, their validity rules, the guest STE
//!   checks and the nested STE;
//! - [`walk`]: the stage 1 walk of tables in guest memory;
//! - [`event`]: faults and event records;
//! - [`tlb`]: the TLB (VMID/ASID tagged) and the CD configuration cache;
//! - [`cmd`]: commands, range invalidation encoding and decoding;
//! - [`nested`]: nested domains (a guest STE over a stage 2 parent) and
//!   their translation;
//! - [`viommu`]: the vSMMU (nested domain allocation, invalidation
//!   commands, events);
//! - [`device`]: an SMMU ([`SmmuIommu`]) and a master behind it
//!   ([`SmmuDevice`], an [`IommuDevice`](crate::device::IommuDevice));
//! - [`spec`]: the `smmuv3[:key=value,...]` platform keys;
//! - [`cmdqv`]: NVIDIA's Tegra241 CMDQV extension (VINTFs, VCMDQs a guest
//!   drives itself);
//! - [`guest`]: what a Linux guest writes (CDs, stage 1 pages), for tests
//!   and examples that play the guest.
//!
//! Sources: the Arm System Memory Management Unit Architecture
//! Specification, SMMU architecture version 3 (IHI 0070; sections cited
//! where each structure or rule is implemented), the Arm Architecture
//! Reference Manual for A-profile (VMSAv8-64 translation, chapter D8), and
//! Linux mainline `drivers/iommu/arm/arm-smmu-v3/` (`arm-smmu-v3.c`,
//! `arm-smmu-v3-iommufd.c`) and `drivers/iommu/io-pgtable-arm.c`, cited by
//! function.

pub mod cmd;
pub mod cmdqv;
pub mod device;
pub mod domain;
pub mod event;
pub mod guest;
pub mod info;
pub mod lpae;
pub mod nested;
pub mod regs;
pub mod spec;
pub mod ste;
pub mod tlb;
pub mod viommu;
pub mod walk;

#[cfg(test)]
pub(crate) mod testutil;

pub use device::{SmmuDevice, SmmuIommu};
pub use domain::{DomainConfig, SmmuDomain, Stage};
pub use event::SmmuFault;
pub use info::{DeviceProps, DriverParams, SmmuInfo};
pub use nested::{SmmuNested, SmmuRequest};
pub use regs::{SmmuRegs, SmmuRegsBuilder};
pub use spec::SmmuSpec;
pub use tlb::{CdCache, Tlb};
pub use viommu::SmmuViommu;
