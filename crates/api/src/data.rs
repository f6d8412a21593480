//! Driver-specific data: which uAPI struct goes with which type number.
//!
//! Nested HWPTs, invalidations and `IOMMU_GET_HW_INFO` carry data whose
//! layout depends on the IOMMU driver, tagged by a type number. These traits
//! tie each `uiommufd-abi` struct to its number, so the typed calls
//! ([`HwptAlloc::data`](crate::HwptAlloc::data),
//! [`Iommufd::hwpt_invalidate`](crate::Iommufd::hwpt_invalidate),
//! [`HwInfo::data`](crate::HwInfo::data)) cannot pair a struct with the wrong
//! tag. A type a newer kernel adds can implement them outside this crate.

use uiommufd_abi as abi;
use uiommufd_abi::test_cmd as t;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Data of a user-managed (nested) HWPT: `IOMMU_HWPT_ALLOC`'s `data_type`
/// and `data_uptr`.
pub trait HwptData: IntoBytes + Immutable {
    /// `enum iommu_hwpt_data_type`.
    const DATA_TYPE: u32;
}

/// One entry of an `IOMMU_HWPT_INVALIDATE` array, on a nested HWPT or a
/// vIOMMU.
pub trait InvalidateEntry: IntoBytes + Immutable {
    /// `enum iommu_hwpt_invalidate_data_type`.
    const DATA_TYPE: u32;
}

/// The IOMMU description `IOMMU_GET_HW_INFO` writes for one driver.
pub trait HwInfoData: FromBytes {
    /// `enum iommu_hw_info_type`.
    const INFO_TYPE: u32;
}

macro_rules! tag {
    ($trait:ident, $konst:ident: $($t:ty => $v:expr),* $(,)?) => {
        $(impl $trait for $t { const $konst: u32 = $v; })*
    };
}

tag!(HwptData, DATA_TYPE:
    abi::IommuHwptVtdS1 => abi::IOMMU_HWPT_DATA_VTD_S1,
    abi::IommuHwptArmSmmuv3 => abi::IOMMU_HWPT_DATA_ARM_SMMUV3,
    abi::IommuHwptAmdGuest => abi::IOMMU_HWPT_DATA_AMD_GUEST,
    t::IommuHwptSelftest => t::IOMMU_HWPT_DATA_SELFTEST,
);

tag!(InvalidateEntry, DATA_TYPE:
    abi::IommuHwptVtdS1Invalidate => abi::IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
    abi::IommuViommuArmSmmuv3Invalidate => abi::IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
    t::IommuHwptInvalidateSelftest => t::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
    t::IommuViommuInvalidateSelftest => t::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST,
);

tag!(HwInfoData, INFO_TYPE:
    abi::IommuHwInfoVtd => abi::IOMMU_HW_INFO_TYPE_INTEL_VTD,
    abi::IommuHwInfoArmSmmuv3 => abi::IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
    abi::IommuHwInfoTegra241Cmdqv => abi::IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV,
    abi::IommuHwInfoAmd => abi::IOMMU_HW_INFO_TYPE_AMD,
    t::IommuTestHwInfo => t::IOMMU_HW_INFO_TYPE_SELFTEST,
);
