//! The AMD IOMMU part of `uiommufd info` (and of the demo): EFR/EFR2 as a
//! person reads them, what Linux 7.3's AMD driver makes of them, and AMD's
//! coherency answer.

use uiommufd_hw::amd::info::{PgtableMode, SZ_512G};
use uiommufd_hw::amd::AmdIommu;

use crate::info::sizes;

/// A v1 page-size bitmap in words: the full set is "every power of two".
fn v1_sizes(bitmap: u64) -> String {
    if bitmap == 0 {
        return "none".into();
    }
    let top = 63 - bitmap.leading_zeros();
    let full = ((2u64 << top.min(62)) - 1) & !0xfff & !SZ_512G;
    if top > 39 && bitmap == full {
        format!("every power of two from 4K to 2^{top} but 512G")
    } else {
        sizes(bitmap)
    }
}

/// The IOMMU, decoded.
pub fn describe(unit: &AmdIommu) -> Vec<String> {
    let i = unit.info();
    let mut out = vec!["IOMMU: AMD-Vi (AMD I/O Virtualization Technology)".to_string()];
    out.extend(i.describe());
    if !i.hatdis {
        out.push(format!(
            "v1 (host) domain: 3 levels growing to {} as IOVAs need, IOVA 0..={:#x}, pages: {}",
            i.regs.efr.hats() + 4,
            i.v1_aperture_last(),
            v1_sizes(i.v1_pgsize_bitmap())
        ));
    }
    if i.v2_pgtbl_supported() {
        out.push(format!(
            "v2 (x86-64) domain: {} levels, {} address bits, pages 4K 2M 1G{}",
            i.gpt_level,
            i.v2_vasz(),
            if i.pgtable == PgtableMode::V2 {
                " (the default: amd_iommu=pgtbl_v2)"
            } else {
                " (IOMMU_HWPT_ALLOC_PASID)"
            }
        ));
    }
    out.push(format!(
        "coherency: IOMMU_CAP_CACHE_COHERENCY yes, IOMMU_CAP_ENFORCE_CACHE_COHERENCY yes (always): every v1 PTE \
         has FC (Force Coherent, bit 60), so No Snoop DMA is snooped{}",
        if i.v2_pgtbl_supported() {
            "; v2 tables have no FC bit, yet the driver answers enforce_cache_coherency true for them too"
        } else {
            ""
        }
    ));
    out.push(format!(
        "vIOMMU: {}",
        if !i.params.iommufd {
            "none (no CONFIG_AMD_IOMMU_IOMMUFD)".to_string()
        } else if i.params.nested_alloc {
            "any type but 0 (7.3 has no AMD type); nested domains from guest DTEs (IOMMU_HWPT_DATA_AMD_GUEST) \
             as the follow-up series wires them; no invalidation ioctl, no vEVENTQ type"
                .to_string()
        } else {
            "any type but 0 (7.3 has no AMD type); nested IOMMU_HWPT_ALLOC on it is EOPNOTSUPP in 7.3 \
             (amd_viommu_ops has no alloc_domain_nested; `nested=1` wires it); no invalidation ioctl, no vEVENTQ type"
                .to_string()
        }
    ));
    let hw = i.hw_info();
    out.push(if i.params.iommufd {
        format!(
            "IOMMU_GET_HW_INFO: type AMD (4), efr {:#x}, efr2 {:#x}; out_capabilities {}",
            hw.efr,
            hw.efr2,
            if i.hd_support() { "DIRTY_TRACKING" } else { "none" }
        )
    } else {
        "IOMMU_GET_HW_INFO: type NONE, no data (no hw_info without CONFIG_AMD_IOMMU_IOMMUFD)".to_string()
    });
    let resv: Vec<String> = i
        .reserved_regions()
        .iter()
        .map(|r| format!("{:#x}..={:#x} ({:?})", r.start, r.start + r.length - 1, r.kind))
        .collect();
    out.push(format!("reserved: {}", resv.join(", ")));
    out
}

/// AMD's coherency outcome for one device.
pub fn device_coherency() -> Vec<String> {
    vec![
        "coherency: enforced coherent: the AMD driver always answers IOMMU_CAP_ENFORCE_CACHE_COHERENCY, and \
         every v1 PTE carries FC, so the device's No Snoop writes are snooped"
            .to_string(),
        "  a guest's wbinvd: can be a no-op (KVM sees an enforced-coherent VFIO device); except through a v2 \
         domain (HWPT_ALLOC_PASID, amd_iommu=pgtbl_v2), which has no FC bit although the driver says it enforces"
            .to_string(),
    ]
}
