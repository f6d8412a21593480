//! The AMD vIOMMU (Linux 7.3 `drivers/iommu/amd/iommufd.c`): a nest
//! parent and the guest-to-host domain ID map of its nested domains.
//!
//! `amd_iommufd_viommu_init()` records the parent and links the vIOMMU on
//! its `viommu_list` (so that the parent's flushes reach every host domain
//! ID); `amd_viommu_ops` has only `destroy`. In particular it has no
//! `alloc_domain_nested`: Linux 7.3 builds `amd_iommu_alloc_domain_nested()`
//! but does not wire it, so nested `IOMMU_HWPT_ALLOC` on an AMD vIOMMU is
//! `EOPNOTSUPP` (iommufd's `iommufd_viommu_alloc_hwpt_nested()`), and there
//! is no `cache_invalidate` (`IOMMU_HWPT_INVALIDATE` on it is
//! `EOPNOTSUPP`) nor vEVENTQ type. With [`DriverParams::nested_alloc`]
//! the model wires it, as the follow-up series does.
//!
//! [`DriverParams::nested_alloc`]: super::info::DriverParams::nested_alloc

use std::sync::{Arc, Weak};

use uiommufd_abi::{Errno, IommuHwptAmdGuest, IOMMU_HWPT_DATA_AMD_GUEST};

use super::device::AmdIommu;
use super::domain::{AmdV1Domain, GdomMap};
use super::nested::AmdNested;
use crate::device::{ViommuCore, ViommuDriver};
use crate::{Domain, UserData};

/// `offsetofend(struct iommu_hwpt_amd_guest, dte)`: the whole struct.
pub const AMD_GUEST_MIN_LEN: usize = 32;

/// The driver half of an AMD vIOMMU (`struct amd_iommu_viommu`).
pub struct AmdViommu {
    unit: Arc<AmdIommu>,
    parent: Arc<AmdV1Domain>,
    gdoms: Arc<GdomMap>,
    core: Weak<dyn ViommuCore>,
}

impl core::fmt::Debug for AmdViommu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AmdViommu").field("parent", &self.parent.id()).field("gdoms", &self.gdoms.pairs()).finish()
    }
}

impl AmdViommu {
    /// `amd_iommufd_viommu_init()`: `parent` must be a v1 domain of this
    /// IOMMU (`EINVAL`).
    pub fn init(
        unit: &Arc<AmdIommu>,
        parent: &Arc<dyn Domain>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<Arc<Self>, Errno> {
        let id = parent.as_any().downcast_ref::<AmdV1Domain>().ok_or(Errno::EINVAL)?.id();
        let parent = unit.v1_domain(id).filter(|p| p.unit().id() == unit.id()).ok_or(Errno::EINVAL)?;
        let gdoms = Arc::new(GdomMap::default());
        parent.add_viommu(&gdoms);
        Ok(Arc::new(AmdViommu { unit: Arc::clone(unit), parent, gdoms, core }))
    }

    pub fn parent(&self) -> &Arc<AmdV1Domain> {
        &self.parent
    }

    pub fn unit(&self) -> &Arc<AmdIommu> {
        &self.unit
    }

    pub fn core(&self) -> Option<Arc<dyn ViommuCore>> {
        self.core.upgrade()
    }

    /// `(guest, host)` domain IDs of its nested domains.
    pub fn domain_ids(&self) -> Vec<(u16, u16)> {
        self.gdoms.pairs()
    }

    /// `amd_iommu_alloc_domain_nested()`: `EOPNOTSUPP` for another data
    /// type, `EINVAL` for a short struct (the copy), then the guest DTE's
    /// checks and the host domain ID. What the 7.3 vIOMMU would do if the
    /// op were wired.
    pub fn alloc_nested(&self, data: &mut UserData<'_>) -> Result<Arc<AmdNested>, Errno> {
        if data.data_type != IOMMU_HWPT_DATA_AMD_GUEST {
            return Err(Errno::EOPNOTSUPP);
        }
        let gdte: IommuHwptAmdGuest = data.read(IOMMU_HWPT_DATA_AMD_GUEST, AMD_GUEST_MIN_LEN)?;
        Ok(Arc::new(AmdNested::new(&self.unit, &self.parent, &self.gdoms, gdte)?))
    }
}

impl ViommuDriver for AmdViommu {
    /// Not in Linux 7.3's `amd_viommu_ops` (`EOPNOTSUPP`), unless the
    /// model wires it ([`DriverParams::nested_alloc`](super::info::DriverParams::nested_alloc)).
    fn alloc_domain_nested(&self, _flags: u32, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>, Errno> {
        if !self.unit.info().params.nested_alloc {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(self.alloc_nested(data)?)
    }
}
