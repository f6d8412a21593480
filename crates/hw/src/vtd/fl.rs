//! VT-d first-stage paging (spec 9.7, "First-Stage Paging Entries"): the
//! x86-64 (IA-32e) format, 4- or 5-level, shared with AMD's guest tables
//! in [`crate::x86_64`], and the first-stage configuration the Intel driver
//! programs from a user's `struct iommu_hwpt_vtd_s1`.

use uiommufd_abi::{Errno, IommuHwptVtdS1, IOMMU_VTD_S1_EAFE, IOMMU_VTD_S1_SRE, IOMMU_VTD_S1_WPE};

pub use crate::x86_64::*;

impl FsConfig {
    /// The first-stage configuration `intel_pasid_setup_nested()` programs
    /// from a user's `struct iommu_hwpt_vtd_s1`: 4 levels for a 48-bit and
    /// 5 for a 57-bit address width (`EINVAL` for anything else); WPE only
    /// takes effect together with SRE. Whether the unit supports what is
    /// asked is checked at attach (`VtdNested::check_unit`). Input
    /// addresses are canonical.
    pub fn from_s1(s1: &IommuHwptVtdS1, fs1gp: bool, addr_bits: u32) -> Result<Self, Errno> {
        let levels = match s1.addr_width {
            ADDR_WIDTH_4LEVEL => 4,
            ADDR_WIDTH_5LEVEL => 5,
            _ => return Err(Errno::EINVAL),
        };
        let sre = s1.flags & u64::from(IOMMU_VTD_S1_SRE) != 0;
        Ok(FsConfig {
            levels,
            fs1gp,
            sre,
            wpe: sre && s1.flags & u64::from(IOMMU_VTD_S1_WPE) != 0,
            eafe: s1.flags & u64::from(IOMMU_VTD_S1_EAFE) != 0,
            addr_bits: addr_bits.min(52),
            sign_extend: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s1_config_rules() {
        let mut s1 = IommuHwptVtdS1 { flags: 0, pgtbl_addr: 0x1000, addr_width: 48, __reserved: 0 };
        assert_eq!(FsConfig::from_s1(&s1, false, 52).unwrap().levels, 4);
        s1.addr_width = 39;
        assert_eq!(FsConfig::from_s1(&s1, false, 52), Err(Errno::EINVAL));
        s1.addr_width = 57;
        let c5 = FsConfig::from_s1(&s1, true, 52).unwrap();
        assert_eq!((c5.levels, c5.va_bits(), c5.sign_extend), (5, 57, true));
        assert!(c5.canonical(1 << 47));
        s1.addr_width = 48;
        // WPE alone is not programmed (the driver sets it only with SRE).
        s1.flags = u64::from(IOMMU_VTD_S1_WPE);
        assert!(!FsConfig::from_s1(&s1, false, 52).unwrap().wpe);
        s1.flags = u64::from(IOMMU_VTD_S1_WPE | IOMMU_VTD_S1_SRE | IOMMU_VTD_S1_EAFE);
        let c = FsConfig::from_s1(&s1, false, 52).unwrap();
        assert!(c.wpe && c.sre && c.eafe);
    }
}
