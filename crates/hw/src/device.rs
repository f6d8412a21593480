//! What the engine needs to know about a device behind an IOMMU: the
//! kernel's `struct device` as seen through `iommu_ops` (capabilities,
//! reserved regions, domain allocation, attach compatibility).

use std::sync::Arc;

use uiommufd_abi::Errno;

use crate::{Domain, UserData};

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

/// A device as its IOMMU driver presents it. (`any_domain()` from the
/// supertrait gives the concrete model for driver-specific hooks.)
pub trait IommuDevice: crate::AnyDomain + Send + Sync {
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

    /// Allocate a nested domain on `parent` from driver-specific `data`
    /// (`domain_alloc_nested`). `flags` are the HWPT flags other than
    /// `FAULT_ID_VALID`.
    fn alloc_nested(
        &self,
        parent: &Arc<dyn Domain>,
        flags: u32,
        data: &mut UserData<'_>,
    ) -> Result<Arc<dyn Domain>, Errno> {
        let _ = (parent, flags, data);
        Err(Errno::EOPNOTSUPP)
    }

    /// The driver's `hw_info`: for the requested type (`in_type`, 0 for the
    /// default) the reported type and its data. A driver without hardware
    /// information reports type 0 (`IOMMU_HW_INFO_TYPE_NONE`) and no data.
    fn hw_info(&self, in_type: u32) -> Result<(u32, Vec<u8>), Errno> {
        let _ = in_type;
        Ok((0, Vec::new()))
    }

    /// Whether `domain` came from this device's IOMMU driver (the kernel's
    /// `domain->owner == ops` check for nesting parents).
    fn owns_domain(&self, domain: &dyn Domain) -> bool;
}
