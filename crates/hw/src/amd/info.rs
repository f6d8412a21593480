//! What the Linux AMD IOMMU driver (`drivers/iommu/amd/`, Linux 7.3)
//! derives from EFR/EFR2 and the platform, cited by function.
//!
//! Everything the model does follows from an [`AmdInfo`]: which page
//! tables a domain may use, the host address width and page sizes, PASIDs,
//! nesting, dirty tracking, reserved regions and the hardware information
//! `IOMMU_GET_HW_INFO` returns. Platform facts that are not in EFR/EFR2
//! (the IVRS `IVinfo` address size, the CPU's 5-level paging, the
//! capability header's `NpCache`, kernel options and configuration) are
//! [`DriverParams`].

use uiommufd_abi::{Errno, IommuHwInfoAmd};

use super::regs::AmdRegs;
use crate::device::{ResvKind, ResvRegion};

/// `PAGE_MODE_4_LEVEL` / `PAGE_MODE_5_LEVEL`.
pub const PAGE_MODE_4_LEVEL: u32 = 4;
pub const PAGE_MODE_5_LEVEL: u32 = 5;

pub const SZ_4K: u64 = 1 << 12;
pub const SZ_2M: u64 = 1 << 21;
pub const SZ_1G: u64 = 1 << 30;
pub const SZ_512G: u64 = 1 << 39;

/// `AMD_IOMMU_PGSIZES`: every power of two from 4 KiB to 2^51 but 512 GiB
/// ("512GB Pages are not supported due to a hardware bug").
pub const AMD_IOMMU_PGSIZES: u64 = (((1u64 << 52) - 1) & !(SZ_4K - 1)) ^ SZ_512G;
/// `AMD_IOMMU_PGSIZES_V2`: 4 KiB, 2 MiB, 1 GiB.
pub const AMD_IOMMU_PGSIZES_V2: u64 = SZ_4K | SZ_2M | SZ_1G;

/// `MSI_RANGE_START`..=`MSI_RANGE_END`: the interrupt window
/// (`IOMMU_RESV_MSI` in `amd_iommu_get_resv_regions()`).
pub const MSI_RANGE_START: u64 = 0xfee0_0000;
pub const MSI_RANGE_END: u64 = 0xfeef_ffff;
/// `HT_RANGE_START`..=`HT_RANGE_END`: the HyperTransport reserved range
/// (`IOMMU_RESV_RESERVED` unless EFR2.HTRangeIgnore).
pub const HT_RANGE_START: u64 = 0xfd_0000_0000;
pub const HT_RANGE_END: u64 = 0xff_ffff_ffff;

/// The page table a paging domain uses by default (`amd_iommu_pgtable`,
/// the `amd_iommu=pgtbl_v1|pgtbl_v2` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgtableMode {
    /// `PD_MODE_NONE`: no DMA translation at all.
    None,
    /// `PD_MODE_V1`: the host (v1) table, the default.
    V1,
    /// `PD_MODE_V2`: the guest (v2, x86-64) table.
    V2,
}

/// The v1 page sizes the kernel allows (`amd_iommu_pgsize_bitmap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgsizeLimit {
    /// `AMD_IOMMU_PGSIZES`.
    All,
    /// `amd_iommu=nohugepages`: 4 KiB only.
    FourK,
    /// `amd_iommu=v2_pgsizes_only`: 4 KiB, 2 MiB, 1 GiB.
    V2Sizes,
}

/// Platform facts and kernel choices that are not in EFR/EFR2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverParams {
    /// The IVRS `IVinfo` VASize (`max_vasize`; 0 reads as 64, as in
    /// `amd_iommu_init_pci()`). Real EPYC firmware reports 64.
    pub vasize: u32,
    /// The CPU runs with 5-level paging (`X86_FEATURE_LA57`): guest tables
    /// are 5-level when GATS allows, and PASIDs need them to be.
    pub la57: bool,
    /// Capability header `NpCache`: the IOMMU caches non-present entries
    /// (a virtual IOMMU); the driver then flushes after every map.
    pub np_cache: bool,
    /// `amd_iommu=pgtbl_v1|pgtbl_v2`.
    pub pgtable: PgtableMode,
    /// `amd_iommu=nohugepages|v2_pgsizes_only`.
    pub pgsizes: PgsizeLimit,
    /// `CONFIG_AMD_IOMMU_IOMMUFD` (EXPERIMENTAL in 7.3): `hw_info` and the
    /// vIOMMU. Without it `IOMMU_GET_HW_INFO` reports no type and
    /// `IOMMU_VIOMMU_ALLOC` is `EOPNOTSUPP`.
    pub iommufd: bool,
    /// Give the vIOMMU `alloc_domain_nested` (`amd_iommu_alloc_domain_nested()`
    /// in nested.c), as the follow-up series does. Linux 7.3 builds the
    /// function but leaves it out of `amd_viommu_ops`, so there nested
    /// `IOMMU_HWPT_ALLOC` on an AMD vIOMMU is `EOPNOTSUPP`.
    pub nested_alloc: bool,
}

impl Default for DriverParams {
    fn default() -> Self {
        DriverParams {
            vasize: 64,
            la57: true,
            np_cache: false,
            pgtable: PgtableMode::V1,
            pgsizes: PgsizeLimit::All,
            iommufd: true,
            nested_alloc: false,
        }
    }
}

/// An AMD IOMMU as the Linux driver sees it after `amd_iommu_init_pci()`,
/// `iommu_init_pci()` and `early_amd_iommu_init()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdInfo {
    pub regs: AmdRegs,
    pub params: DriverParams,
    /// `amd_iommu_hpt_vasize`: host (v1) address bits.
    pub hpt_vasize: u32,
    /// `amd_iommu_hatdis`: HATS is 3, the v1 table cannot be used.
    pub hatdis: bool,
    /// `amd_iommu_gpt_level`: 4 or 5.
    pub gpt_level: u32,
    /// `amd_iommu_pgtable` after the fallbacks.
    pub pgtable: PgtableMode,
    /// `iommu->iommu.max_pasids`: `(1 << (PASmax + 1)) - 1` with GT, else 0.
    pub max_pasids: u32,
    /// `amd_iommu_max_glx_val`.
    pub max_glx: u32,
}

impl AmdInfo {
    /// The driver's view of `regs`. `ENODEV` where it would register no
    /// IOMMU for DMA translation (`amd_iommu_pgtable == PD_MODE_NONE`, or
    /// a PASmax the driver `BUG_ON`s).
    pub fn new(regs: AmdRegs, params: DriverParams) -> Result<Self, Errno> {
        let efr = regs.efr;
        // amd_iommu_init_pci(): IVinfo VASize, 0 meaning 64.
        let max_vasize = if params.vasize == 0 { 64 } else { params.vasize.min(64) };
        // "5 level guest page table": LA57 and GATS == GUEST_PGTABLE_5_LEVEL.
        let gpt_level = if params.la57 && efr.gats() == 1 { PAGE_MODE_5_LEVEL } else { PAGE_MODE_4_LEVEL };
        // efr[HATS]: "the maximum host translation level supported, with
        // LEVEL 4 being initial max level"; 3 disables host translation.
        let hats = efr.hats() as u32;
        let (hatdis, hpt_vasize) = if hats != 3 { (false, max_vasize.min((hats + 3) * 9 + 21)) } else { (true, 0) };
        let v2_ok = efr.gio_sup() != 0 && efr.gt_sup() != 0;
        let mut pgtable = params.pgtable;
        if pgtable == PgtableMode::V2 && !v2_ok {
            // "Cannot enable v2 page table for DMA-API. Fallback to v1."
            pgtable = PgtableMode::V1;
        }
        if hatdis {
            pgtable = if v2_ok { PgtableMode::V2 } else { PgtableMode::None };
        }
        if pgtable == PgtableMode::None {
            return Err(Errno::ENODEV);
        }
        let (max_pasids, max_glx) = if efr.gt_sup() != 0 {
            // iommu_init_pci(): BUG_ON(max_pasids & ~PASID_MASK).
            let pasmax = efr.pas_max() as u32;
            if pasmax > 15 {
                return Err(Errno::ENODEV);
            }
            ((1u32 << (pasmax + 1)) - 1, efr.glx_sup() as u32)
        } else {
            (0, 0)
        };
        Ok(AmdInfo { regs, params, hpt_vasize, hatdis, gpt_level, pgtable, max_pasids, max_glx })
    }

    /// `amd_iommu_v2_pgtbl_supported()`: GIoSup and GTSup.
    pub fn v2_pgtbl_supported(&self) -> bool {
        self.regs.efr.gio_sup() != 0 && self.regs.efr.gt_sup() != 0
    }

    /// `amd_iommu_gt_ppr_supported()`: v2 tables, PPRSup and EPHSup.
    pub fn gt_ppr_supported(&self) -> bool {
        self.v2_pgtbl_supported() && self.regs.efr.ppr_sup() != 0 && self.regs.efr.eph_sup() != 0
    }

    /// `amd_iommu_pasid_supported()`: the CPU's table depth must match the
    /// guest table's, and GT with PPR (SNP is not modelled).
    pub fn pasid_supported(&self) -> bool {
        if self.params.la57 && self.gpt_level != PAGE_MODE_5_LEVEL {
            return false;
        }
        self.gt_ppr_supported()
    }

    /// `amd_iommu_hd_support()`: HDSup and host translation.
    pub fn hd_support(&self) -> bool {
        !self.hatdis && self.regs.efr.hd_sup() != 0
    }

    /// `is_nest_parent_supported()`: GT, GIoSup and EFR2.GCR3TRPModeSup.
    pub fn nest_parent_supported(&self) -> bool {
        self.regs.efr.gt_sup() != 0 && self.regs.efr.gio_sup() != 0 && self.regs.efr2.gcr3_trp_mode_sup() != 0
    }

    /// `amd_iommu_ht_range_ignore()`.
    pub fn ht_range_ignore(&self) -> bool {
        self.regs.efr2.ht_range_ignore() != 0
    }

    /// `amd_iommu_pgsize_bitmap`.
    pub fn pgsize_limit(&self) -> u64 {
        match self.params.pgsizes {
            PgsizeLimit::All => AMD_IOMMU_PGSIZES,
            PgsizeLimit::FourK => SZ_4K,
            PgsizeLimit::V2Sizes => AMD_IOMMU_PGSIZES_V2,
        }
    }

    /// The page sizes of a v1 paging domain: generic_pt's `get_info()` for
    /// the amdv1 format with `max_vasz_lg2 = hpt_vasize` (every size below
    /// 2^(vasize-1) and 2^52 a level can hold, 512 GiB never), narrowed to
    /// [`pgsize_limit`](Self::pgsize_limit) by
    /// `amd_iommu_domain_alloc_paging_v1()`.
    pub fn v1_pgsize_bitmap(&self) -> u64 {
        let below = |lg2: u32| if lg2 >= 64 { u64::MAX } else { (1u64 << lg2) - 1 };
        let mut possible = 0u64;
        // Levels 0..=4 may hold leaves (the top, level 5, cannot); each
        // offers its item size up to 2^8 items (`amdv1pt_possible_sizes`).
        for level in 0..5u32 {
            let isz = 12 + 9 * level;
            if isz >= self.hpt_vasize {
                break;
            }
            let top = (isz + 8).min(51);
            possible |= (below(top + 1) & !below(isz)) & !SZ_512G;
        }
        possible & below(self.hpt_vasize.saturating_sub(1)) & below(52) & self.pgsize_limit()
    }

    /// The last IOVA of a v1 domain (`aperture_end`: 2^hpt_vasize - 1).
    pub fn v1_aperture_last(&self) -> u64 {
        if self.hpt_vasize >= 64 {
            u64::MAX
        } else {
            (1u64 << self.hpt_vasize) - 1
        }
    }

    /// The input address bits of a v2 domain: 47 or 56 (the top bit is
    /// left out so that the table works with and without sign extension,
    /// `amd_iommu_domain_alloc_paging_v2()`).
    pub fn v2_vasz(&self) -> u32 {
        if self.gpt_level == PAGE_MODE_5_LEVEL {
            56
        } else {
            47
        }
    }

    /// `get_gcr3_levels(pasids)`: GCR3 table levels minus one.
    pub fn gcr3_levels(pasids: u32) -> u32 {
        let order = if pasids <= 1 { 0 } else { 32 - (pasids - 1).leading_zeros() };
        if order == 0 {
            0
        } else {
            order.div_ceil(9) - 1
        }
    }

    /// `amd_iommu_get_resv_regions()` (no IVMD unity ranges): the MSI
    /// window, and the HyperTransport range unless EFR2 says to ignore it.
    pub fn reserved_regions(&self) -> Vec<ResvRegion> {
        let mut v = vec![ResvRegion {
            start: MSI_RANGE_START,
            length: MSI_RANGE_END - MSI_RANGE_START + 1,
            kind: ResvKind::Msi,
        }];
        if !self.ht_range_ignore() {
            v.push(ResvRegion {
                start: HT_RANGE_START,
                length: HT_RANGE_END - HT_RANGE_START + 1,
                kind: ResvKind::Reserved,
            });
        }
        v
    }

    /// `struct iommu_hw_info_amd` as `amd_iommufd_hw_info()` fills it: the
    /// raw global EFR and EFR2.
    pub fn hw_info(&self) -> IommuHwInfoAmd {
        IommuHwInfoAmd { efr: self.regs.efr.0, efr2: self.regs.efr2.0 }
    }

    /// The driver's decisions in a few lines (for `uiommufd info`).
    pub fn describe(&self) -> Vec<String> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mode = match self.pgtable {
            PgtableMode::V1 => "v1 (host)",
            PgtableMode::V2 => "v2 (x86-64)",
            PgtableMode::None => "none",
        };
        let mut out = vec![self.regs.boot_line()];
        if self.hatdis {
            out.push("host (v1) translation disabled: HATS is reserved".into());
        } else {
            out.push(format!(
                "default page table: {mode}; v1 host table: up to {} levels, {} address bits",
                self.regs.efr.hats() + 4,
                self.hpt_vasize
            ));
        }
        if self.regs.efr.gt_sup() != 0 {
            out.push(format!(
                "v2 (guest) tables: {} ({}-level); PASIDs: {} ({} per device at most; GCR3 tables of up to {} level{})",
                yes(self.v2_pgtbl_supported()),
                self.gpt_level,
                yes(self.pasid_supported()),
                self.max_pasids,
                self.max_glx + 1,
                if self.max_glx == 0 { "" } else { "s" }
            ));
        } else {
            out.push("v2 (guest) tables: no (no GTSup); PASIDs: no".into());
        }
        out.push(format!(
            "dirty tracking (HDSup): {}; nest parents (GT, GIoSup, GCR3TRPMode): {}; vIOMMU: {}{}",
            yes(self.hd_support()),
            yes(self.nest_parent_supported()),
            yes(self.params.iommufd),
            if self.params.iommufd && !self.params.nested_alloc {
                " (nested domains: not allocatable through it in Linux 7.3)"
            } else {
                ""
            }
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(efr: u64, efr2: u64) -> AmdInfo {
        AmdInfo::new(AmdRegs::from_raw(efr, efr2), DriverParams::default()).unwrap()
    }

    #[test]
    fn zen4_epyc() {
        let i = AmdInfo::new(AmdRegs::default(), DriverParams::default()).unwrap();
        // HATS 2: (2 + 4 - 1) * 9 + 21 = 66, capped by IVinfo's 64.
        assert_eq!((i.hpt_vasize, i.hatdis, i.gpt_level), (64, false, 5));
        assert_eq!(i.pgtable, PgtableMode::V1);
        assert_eq!((i.max_pasids, i.max_glx), (0xffff, 1));
        assert!(i.v2_pgtbl_supported() && i.gt_ppr_supported() && i.pasid_supported());
        assert!(i.hd_support() && i.nest_parent_supported() && !i.ht_range_ignore());
        // 4K..2^51 but 512G.
        assert_eq!(i.v1_pgsize_bitmap(), 0x000f_ff7f_ffff_f000);
        assert_eq!(i.v1_aperture_last(), u64::MAX);
        assert_eq!(i.v2_vasz(), 56);
        assert_eq!(i.hw_info(), IommuHwInfoAmd { efr: 0x25bf732fa2295afe, efr2: 0x1d });
        // Without LA57 the guest table is 4-level and PASIDs still work.
        let p = DriverParams { la57: false, ..DriverParams::default() };
        let i = AmdInfo::new(AmdRegs::default(), p).unwrap();
        assert_eq!((i.gpt_level, i.pasid_supported()), (4, true));
    }

    #[test]
    fn qemu_amd_iommu_as_the_oracle_kernel_sees_it() {
        // QEMU 7.2's amd-iommu, EFR 0x29d3 (HATS 2, GATS 2), IVinfo VASize
        // 48: the oracle kernel's IOVA ranges end at 2^48 - 1.
        let p = DriverParams { vasize: 48, la57: false, ..DriverParams::default() };
        let i = AmdInfo::new(AmdRegs::from_raw(0x29d3, 0), p).unwrap();
        assert_eq!(i.v1_aperture_last(), (1 << 48) - 1);
        assert!(!i.v2_pgtbl_supported() && !i.nest_parent_supported() && !i.hd_support());
        assert!(!i.pasid_supported());
        // Sizes below 2^47.
        assert_eq!(i.v1_pgsize_bitmap(), ((1u64 << 47) - 1) & !0xfff & !SZ_512G);
    }

    #[test]
    fn hats_and_fallbacks() {
        // HATS 0: four levels, 48 bits.
        assert_eq!(info(0, 0).hpt_vasize, 48);
        // HATS 1: five levels, 57 bits.
        assert_eq!(info(1 << 10, 0).hpt_vasize, 57);
        // HATS 3 without v2: nothing to translate with.
        let e = AmdInfo::new(AmdRegs::from_raw(3 << 10, 0), DriverParams::default());
        assert_eq!(e, Err(Errno::ENODEV));
        // HATS 3 with GT and GIoSup: v2 only.
        let i = info((3 << 10) | (1 << 4) | (1 << 48), 0);
        assert!(i.hatdis && !i.hd_support());
        assert_eq!(i.pgtable, PgtableMode::V2);
        // pgtbl_v2 without GIoSup falls back to v1.
        let p = DriverParams { pgtable: PgtableMode::V2, ..DriverParams::default() };
        assert_eq!(AmdInfo::new(AmdRegs::from_raw(1 << 4, 0), p).unwrap().pgtable, PgtableMode::V1);
        // PASmax beyond 16 bits: the driver's BUG_ON.
        assert_eq!(
            AmdInfo::new(AmdRegs::from_raw((1 << 4) | (16 << 32), 0), DriverParams::default()),
            Err(Errno::ENODEV)
        );
        // No GT: no PASIDs at all.
        assert_eq!(info(0, 0).max_pasids, 0);
    }

    #[test]
    fn pgsize_limits() {
        let mut p = DriverParams { pgsizes: PgsizeLimit::FourK, ..DriverParams::default() };
        assert_eq!(AmdInfo::new(AmdRegs::default(), p).unwrap().v1_pgsize_bitmap(), SZ_4K);
        p.pgsizes = PgsizeLimit::V2Sizes;
        assert_eq!(AmdInfo::new(AmdRegs::default(), p).unwrap().v1_pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G);
    }

    #[test]
    fn gcr3_levels_like_the_driver() {
        assert_eq!(AmdInfo::gcr3_levels(0), 0);
        assert_eq!(AmdInfo::gcr3_levels(1), 0);
        assert_eq!(AmdInfo::gcr3_levels(512), 0);
        assert_eq!(AmdInfo::gcr3_levels(513), 1);
        assert_eq!(AmdInfo::gcr3_levels(0xffff), 1);
    }

    #[test]
    fn reserved_regions_follow_ht_range_ignore() {
        let r = info(0, 0).reserved_regions();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].start, r[0].length, r[0].kind), (0xfee0_0000, 0x10_0000, ResvKind::Msi));
        assert_eq!((r[1].start, r[1].length, r[1].kind), (0xfd_0000_0000, 0x3_0000_0000, ResvKind::Reserved));
        assert_eq!(info(0, 1 << 11).reserved_regions().len(), 1);
    }
}
