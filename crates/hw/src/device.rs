//! What the engine needs to know about a device behind an IOMMU: the
//! kernel's `struct device` as seen through `iommu_ops` (capabilities,
//! reserved regions, domain allocation, attach compatibility).

use std::sync::Arc;

use uiommufd_abi::Errno;

use crate::Domain;

/// `enum iommu_cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// DMA is cache coherent with the CPU (`IOMMU_CAP_CACHE_COHERENCY`);
    /// iommufd refuses to bind a device without it.
    CacheCoherency,
    /// The IOMMU can force snooping of DMA the device marks no-snoop
    /// (`IOMMU_CAP_ENFORCE_CACHE_COHERENCY`).
    EnforceCacheCoherency,
    /// The IOMMU can track dirty pages (`IOMMU_CAP_DIRTY_TRACKING`).
    DirtyTracking,
}

/// `enum iommu_resv_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResvKind {
    /// Must be identity mapped and may not be used otherwise.
    Direct,
    /// Identity mapped by the firmware, may be relaxed (ignored by iommufd).
    DirectRelaxable,
    /// May not be used for DMA at all.
    Reserved,
    /// A hardware MSI doorbell window.
    Msi,
    /// A software-managed MSI window.
    SwMsi,
}

/// `struct iommu_resv_region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegion {
    pub start: u64,
    pub length: u64,
    pub kind: ResvKind,
}

/// Flags of a paging domain request (`IOMMU_HWPT_ALLOC_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRequest {
    pub nest_parent: bool,
    pub dirty_tracking: bool,
    pub pasid: bool,
}

/// A device as its IOMMU driver presents it.
pub trait IommuDevice: Send + Sync {
    /// A human-readable name (`mock0`, `0000:00:02.0`).
    fn name(&self) -> String;

    /// `device_iommu_capable`.
    fn capable(&self, cap: Cap) -> bool;

    /// `iommu_get_resv_regions`.
    fn reserved_regions(&self) -> Vec<ResvRegion> {
        Vec::new()
    }

    /// `domain_alloc_paging_flags` / `domain_alloc_user` for a paging domain.
    fn alloc_paging(&self, req: &PagingRequest) -> Result<Arc<dyn Domain>, Errno>;

    /// The driver's attach-time compatibility check (`EINVAL` when the
    /// domain cannot serve this device).
    fn check_attach(&self, domain: &dyn Domain) -> Result<(), Errno>;

    /// log2 of the number of PASIDs the device supports (0: none).
    fn max_pasid_log2(&self) -> u32 {
        0
    }
}
