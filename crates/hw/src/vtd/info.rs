//! What the Linux intel-iommu driver derives from a unit's registers.
//!
//! Model: [`VtdInfo`] is computed once from [`VtdRegs`] and the driver's
//! boot parameters ([`DriverParams`]) and is immutable afterwards, as the
//! kernel's `struct intel_iommu` fields are after `alloc_iommu()`. Every
//! derived value names the driver function it follows (Linux 6.12
//! `drivers/iommu/intel/{iommu.c,iommu.h,dmar.c}`, with the later split of
//! `paging_domain_compatible()` into first/second-stage checks, and
//! `drivers/iommu/iommufd/device.c` for what the core adds to
//! `IOMMU_GET_HW_INFO`).
//!
//! Invariant: a `VtdInfo` exists only for a unit the driver would use for
//! DMA remapping (`VtdInfo::new` fails with `ENODEV` where `alloc_iommu()`
//! marks the unit ignored).

use uiommufd_abi::{
    Errno, IommuHwInfoVtd, IOMMU_HW_CAP_DIRTY_TRACKING, IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED,
    IOMMU_HW_CAP_PCI_PASID_EXEC, IOMMU_HW_CAP_PCI_PASID_PRIV, IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
};

use super::regs::{Cap, Ecap, VtdRegs};
use crate::device::{ResvKind, ResvRegion};

/// `IOAPIC_RANGE_START` / `IOAPIC_RANGE_END` (iommu.c): the interrupt
/// address window, reported as an `IOMMU_RESV_MSI` region.
pub const IOAPIC_RANGE_START: u64 = 0xfee0_0000;
pub const IOAPIC_RANGE_END: u64 = 0xfeef_ffff;
/// `DEFAULT_DOMAIN_ADDRESS_WIDTH` (iommu.c).
pub const DEFAULT_DOMAIN_ADDRESS_WIDTH: u32 = 57;
/// `MAX_AGAW_WIDTH` (iommu.h).
pub const MAX_AGAW_WIDTH: u32 = 64;
/// `VTD_PAGE_SHIFT`.
pub const VTD_PAGE_SHIFT: u32 = 12;
pub const SZ_4K: u64 = 1 << 12;
pub const SZ_2M: u64 = 1 << 21;
pub const SZ_1G: u64 = 1 << 30;

/// Driver boot parameters that change what it derives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverParams {
    /// `intel_iommu=sm_on`/`sm_off` (default on:
    /// `CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON=y`, `intel_iommu_sm`).
    pub scalable_mode: bool,
    /// `intel_iommu=sp_off` clears it (`intel_iommu_superpage`).
    pub superpage: bool,
}

impl Default for DriverParams {
    fn default() -> Self {
        DriverParams { scalable_mode: true, superpage: true }
    }
}

/// `agaw_to_width()` (iommu.h): `30 + 9 * agaw`, at most 64.
pub const fn agaw_to_width(agaw: u32) -> u32 {
    let w = 30 + agaw * 9;
    if w > MAX_AGAW_WIDTH {
        MAX_AGAW_WIDTH
    } else {
        w
    }
}

/// `width_to_agaw()` (iommu.h): `DIV_ROUND_UP(width - 30, 9)`.
pub const fn width_to_agaw(width: u32) -> i32 {
    (width as i32 - 30 + 8).div_euclid(9)
}

/// `agaw_to_level()` (iommu.h): levels of a table of that AGAW.
pub const fn agaw_to_level(agaw: u32) -> u32 {
    agaw + 2
}

/// `__DOMAIN_MAX_ADDR(gaw)` (iommu.c).
pub const fn domain_max_addr(gaw: u32) -> u64 {
    if gaw >= 64 {
        u64::MAX
    } else {
        (1u64 << gaw) - 1
    }
}

/// A unit as the driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdInfo {
    pub regs: VtdRegs,
    pub params: DriverParams,
    /// `iommu->agaw` (`iommu_calculate_agaw()`).
    pub agaw: u32,
    /// `iommu->msagaw` (`iommu_calculate_max_sagaw()`).
    pub msagaw: u32,
}

impl VtdInfo {
    /// `alloc_iommu()` (dmar.c): `ENODEV` when the unit would be ignored
    /// for DMA remapping ("No supported address widths", or no AGAW the
    /// driver can use).
    pub fn new(regs: VtdRegs, params: DriverParams) -> Result<Self, Errno> {
        let mut info = VtdInfo { regs, params, agaw: 0, msagaw: 0 };
        // dmar.c: `!cap_sagaw(cap) && (!ecap_smts(ecap) || ecap_slts(ecap))`.
        if regs.cap.sagaw() == 0 && (regs.ecap.smts() == 0 || regs.ecap.ssts() != 0) {
            return Err(Errno::ENODEV);
        }
        info.agaw = info.calculate_agaw(DEFAULT_DOMAIN_ADDRESS_WIDTH).ok_or(Errno::ENODEV)?;
        info.msagaw = info.calculate_agaw(MAX_AGAW_WIDTH).ok_or(Errno::ENODEV)?;
        Ok(info)
    }

    /// With the default driver parameters.
    pub fn from_regs(regs: VtdRegs) -> Result<Self, Errno> {
        Self::new(regs, DriverParams::default())
    }

    pub fn cap(&self) -> Cap {
        self.regs.cap
    }

    pub fn ecap(&self) -> Ecap {
        self.regs.ecap
    }

    /// `sm_supported()` (iommu.h): scalable mode on and ECAP.SMTS.
    pub fn sm_supported(&self) -> bool {
        self.params.scalable_mode && self.regs.ecap.smts() != 0
    }

    /// `pasid_supported()` (iommu.h): scalable mode and ECAP.PASID.
    pub fn pasid_supported(&self) -> bool {
        self.sm_supported() && self.regs.ecap.pasid() != 0
    }

    /// `ssads_supported()` (iommu.h): scalable mode, ECAP.SSADS and
    /// ECAP.SMPWC; what `IOMMU_CAP_DIRTY_TRACKING` reports.
    pub fn ssads_supported(&self) -> bool {
        self.sm_supported() && self.regs.ecap.ssads() != 0 && self.regs.ecap.smpwc() != 0
    }

    /// `nested_supported()` (iommu.h): scalable mode and ECAP.NEST.
    pub fn nested_supported(&self) -> bool {
        self.sm_supported() && self.regs.ecap.nest() != 0
    }

    /// `ecap_sc_support()`: `IOMMU_CAP_ENFORCE_CACHE_COHERENCY`
    /// (`intel_iommu_capable()`), and what a domain needs to force snooping.
    pub fn snoop_control(&self) -> bool {
        self.regs.ecap.sc() != 0
    }

    /// `rwbf_required()`: CAP.RWBF (the chipset quirk is not modelled).
    pub fn rwbf_required(&self) -> bool {
        self.regs.cap.rwbf() != 0
    }

    /// Whether second-stage domains need an IOTLB sync on map
    /// (`intel_iommu_domain_alloc_second_stage()`: RWBF or CAP.CM).
    pub fn ss_iotlb_sync_map(&self) -> bool {
        self.rwbf_required() || self.regs.cap.cm() != 0
    }

    /// `iommu_paging_structure_coherency()` (iommu.c): ECAP.SMPWC in
    /// scalable mode, ECAP.C in legacy mode.
    pub fn paging_structure_coherency(&self) -> bool {
        if self.sm_supported() {
            self.regs.ecap.smpwc() != 0
        } else {
            self.regs.ecap.c() != 0
        }
    }

    /// `__iommu_calculate_sagaw()` (iommu.c): the second-stage SAGAW in
    /// legacy mode or without first-stage support; the first-stage widths
    /// (4-level, plus 5-level with FS5LP) without second-stage support;
    /// else the intersection of both.
    pub fn calculate_sagaw(&self) -> u64 {
        let (cap, ecap) = (self.regs.cap, self.regs.ecap);
        let fl_sagaw = 1 << 2 | if cap.fs5lp() != 0 { 1 << 3 } else { 0 };
        let sl_sagaw = cap.sagaw();
        if !self.sm_supported() || ecap.fsts() == 0 {
            return sl_sagaw;
        }
        if ecap.ssts() == 0 {
            return fl_sagaw;
        }
        fl_sagaw & sl_sagaw
    }

    /// `__iommu_calculate_agaw()` (iommu.c): the largest supported AGAW
    /// not above `width_to_agaw(max_gaw)`.
    pub fn calculate_agaw(&self, max_gaw: u32) -> Option<u32> {
        let sagaw = self.calculate_sagaw();
        let mut agaw = width_to_agaw(max_gaw);
        while agaw >= 0 {
            if agaw < 64 && sagaw & (1u64 << agaw) != 0 {
                return Some(agaw as u32);
            }
            agaw -= 1;
        }
        None
    }

    /// The address width of a new paging domain (`paging_domain_alloc()`):
    /// `agaw_to_width(iommu->agaw)`, capped at `cap_mgaw()`. Also the width
    /// `paging_domain_compatible()` checks a domain against.
    pub fn domain_gaw(&self) -> u32 {
        agaw_to_width(self.agaw).min(self.regs.cap.mgaw_bits())
    }

    /// The IOVA range of a second-stage domain (`paging_domain_alloc()`:
    /// `aperture_end = __DOMAIN_MAX_ADDR(gaw)`), inclusive.
    pub fn domain_aperture(&self) -> (u64, u64) {
        (0, domain_max_addr(self.domain_gaw()))
    }

    /// Levels of a new domain's second-stage table (`agaw_to_level()`).
    pub fn domain_levels(&self) -> u32 {
        agaw_to_level(self.agaw)
    }

    /// `iommu_superpage_capability()` for a second-stage domain:
    /// `fls(cap_super_page_val())` (0 with `sp_off`).
    pub fn ss_superpage(&self) -> u32 {
        if !self.params.superpage {
            return 0;
        }
        let v = self.regs.cap.sllps();
        64 - v.leading_zeros()
    }

    /// The page sizes of a second-stage domain: 4 KiB plus
    /// `domain_super_pgsize_bitmap()`: superpage 1 adds 2 MiB, 2 adds
    /// 2 MiB + 1 GiB, and any other value nothing (so SLLPS bits for 512 GiB
    /// or 1 TiB leaves, which no part sets, would leave 4 KiB only).
    pub fn ss_pgsize_bitmap(&self) -> u64 {
        SZ_4K
            | match self.ss_superpage() {
                1 => SZ_2M,
                2 => SZ_2M | SZ_1G,
                _ => 0,
            }
    }

    /// The page sizes a first-stage table may use (FS1GP adds 1 GiB,
    /// `iommu_superpage_capability(iommu, true)`).
    pub fn fs_pgsize_bitmap(&self) -> u64 {
        if !self.params.superpage {
            return SZ_4K;
        }
        SZ_4K | SZ_2M | if self.regs.cap.fs1gp() != 0 { SZ_1G } else { 0 }
    }

    /// Number of PASIDs of the unit (dmar.c: `max_pasids = 2UL << ecap_pss`
    /// when `pasid_supported()`, else 0).
    pub fn max_pasids(&self) -> u64 {
        if self.pasid_supported() {
            2u64 << self.regs.ecap.pss()
        } else {
            0
        }
    }

    /// Domain IDs the unit has (`cap_ndoms()`); IDs 0 and `FLPT_DEFAULT_DID`
    /// (1) are reserved by `iommu_init_domains()`.
    pub fn ndoms(&self) -> u64 {
        self.regs.cap.ndoms()
    }

    /// `intel_iommu_hw_info()`: the raw registers and, unconditionally, the
    /// ERRATA_772415_SPR17 flag (the driver refuses read-only mappings in
    /// nesting parents instead of detecting affected parts).
    pub fn hw_info(&self) -> IommuHwInfoVtd {
        IommuHwInfoVtd {
            flags: IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
            __reserved: 0,
            cap_reg: self.regs.cap.0,
            ecap_reg: self.regs.ecap.0,
        }
    }

    /// `intel_iommu_get_resv_regions()`: the interrupt window as
    /// `IOMMU_RESV_MSI` (RMRRs and the ISA floppy window are per device).
    pub fn msi_region(&self) -> ResvRegion {
        ResvRegion { start: IOAPIC_RANGE_START, length: IOAPIC_RANGE_END - IOAPIC_RANGE_START + 1, kind: ResvKind::Msi }
    }

    /// The log2 PASID count iommufd reports for a device whose PCI PASID
    /// capability has `device_pasid_bits` (0: none):
    /// `dev_iommu_get_max_pasids()` takes `min(pci_max_pasids, iommu
    /// max_pasids)` and `iommufd_get_hw_info()` reports its `ilog2`.
    pub fn device_max_pasid_log2(&self, device_pasid_bits: u32) -> u32 {
        let unit = self.max_pasids();
        if unit == 0 || device_pasid_bits == 0 {
            return 0;
        }
        let dev = 1u64 << device_pasid_bits.min(32);
        63 - dev.min(unit).leading_zeros()
    }

    /// `out_capabilities` of `IOMMU_GET_HW_INFO` for a device:
    /// - DIRTY_TRACKING when `intel_iommu_capable(DIRTY_TRACKING)`, i.e.
    ///   `ssads_supported()`;
    /// - PCI_ATS_NOT_SUPPORTED unless `IOMMU_CAP_PCI_ATS_SUPPORTED`
    ///   (`info->ats_supported`: ECAP.DT and the device's ATS capability);
    /// - with PASID enabled, PCI_PASID_EXEC / PCI_PASID_PRIV from the
    ///   device's PASID control register, which `intel_iommu_probe_device()`
    ///   enabled with every feature the device's PASID capability offers.
    pub fn device_out_capabilities(&self, dev: &DeviceProps) -> u64 {
        let mut caps = 0u64;
        if self.ssads_supported() {
            caps |= u64::from(IOMMU_HW_CAP_DIRTY_TRACKING);
        }
        if !(self.regs.ecap.dt() != 0 && dev.ats) {
            caps |= u64::from(IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED);
        }
        if self.device_max_pasid_log2(dev.pasid_bits) != 0 {
            if dev.pasid_exec {
                caps |= u64::from(IOMMU_HW_CAP_PCI_PASID_EXEC);
            }
            if dev.pasid_priv {
                caps |= u64::from(IOMMU_HW_CAP_PCI_PASID_PRIV);
            }
        }
        caps
    }
}

/// The parts of a PCI device's capabilities the driver and core look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceProps {
    /// Max PASID Width of the PCI PASID capability (0: no capability).
    pub pasid_bits: u32,
    /// The PASID capability's Execute Permission Supported bit.
    pub pasid_exec: bool,
    /// The PASID capability's Privileged Mode Supported bit.
    pub pasid_priv: bool,
    /// An ATS capability (and the DMAR tables allow ATS for it).
    pub ats: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::regs::VtdRegsBuilder;

    fn client() -> VtdInfo {
        VtdInfo::from_regs(VtdRegs::from_raw(0x00d2_008c_4066_0462, 0xf050da)).unwrap()
    }

    fn qemu() -> VtdInfo {
        VtdInfo::from_regs(VtdRegs::from_raw(0x00d2_008c_2226_0286, 0xf42)).unwrap()
    }

    #[test]
    fn width_helpers() {
        assert_eq!(width_to_agaw(57), 3);
        assert_eq!(width_to_agaw(48), 2);
        assert_eq!(width_to_agaw(39), 1);
        assert_eq!(width_to_agaw(40), 2);
        assert_eq!(width_to_agaw(64), 4);
        assert_eq!(agaw_to_width(1), 39);
        assert_eq!(agaw_to_width(3), 57);
        assert_eq!(agaw_to_width(4), 64);
        assert_eq!(domain_max_addr(39), (1 << 39) - 1);
        assert_eq!(domain_max_addr(64), u64::MAX);
    }

    /// What the driver derives for `cap d2008c40660462 ecap f050da`:
    /// legacy mode (no SMTS), SAGAW 4-level only, so agaw 2 (48-bit), but
    /// MGAW caps domains at 39 bits; SLLPS 0b11 gives 2M + 1G; SC set.
    #[test]
    fn client_unit() {
        let i = client();
        assert!(!i.sm_supported());
        assert_eq!(i.calculate_sagaw(), 0b00100);
        assert_eq!((i.agaw, i.msagaw), (2, 2));
        assert_eq!(i.domain_gaw(), 39);
        assert_eq!(i.domain_aperture(), (0, (1 << 39) - 1));
        assert_eq!(i.domain_levels(), 4);
        assert_eq!(i.ss_pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G);
        assert!(i.snoop_control());
        assert!(!i.ssads_supported() && !i.nested_supported() && !i.pasid_supported());
        // Legacy mode: page-walk coherency is ECAP.C, which is clear.
        assert!(!i.paging_structure_coherency());
        assert!(!i.ss_iotlb_sync_map());
        assert_eq!(i.ndoms(), 256);
        assert_eq!(i.max_pasids(), 0);
        assert_eq!(i.device_max_pasid_log2(20), 0);
        let hw = i.hw_info();
        assert_eq!(hw.flags, IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17);
        assert_eq!((hw.cap_reg, hw.ecap_reg), (0x00d2_008c_4066_0462, 0xf050da));
        // No SSADS, no DT: only "ATS not supported".
        let dev = DeviceProps { pasid_bits: 20, pasid_exec: true, pasid_priv: true, ats: true };
        assert_eq!(i.device_out_capabilities(&dev), u64::from(IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED));
    }

    /// `cap d2008c22260286 ecap f42`: 3-level SAGAW so agaw 1 (39-bit),
    /// caching mode (IOTLB sync on map), no snoop control.
    #[test]
    fn qemu_unit() {
        let i = qemu();
        assert_eq!(i.agaw, 1);
        assert_eq!(i.domain_gaw(), 39);
        assert_eq!(i.domain_levels(), 3);
        assert!(!i.snoop_control());
        assert!(i.ss_iotlb_sync_map());
        assert_eq!(i.ndoms(), 65536);
        assert_eq!(i.msi_region(), ResvRegion { start: 0xfee0_0000, length: 0x10_0000, kind: ResvKind::Msi });
    }

    #[test]
    fn default_unit() {
        let i = VtdInfo::from_regs(VtdRegs::default()).unwrap();
        assert!(i.sm_supported() && i.nested_supported() && i.ssads_supported() && i.pasid_supported());
        // First-stage widths (4|5-level) intersected with SAGAW (4|5-level).
        assert_eq!(i.calculate_sagaw(), 0b01100);
        assert_eq!(i.agaw, 3);
        assert_eq!(i.domain_gaw(), 57);
        assert_eq!(i.domain_levels(), 5);
        assert_eq!(i.max_pasids(), 1 << 20);
        assert_eq!(i.device_max_pasid_log2(20), 20);
        assert_eq!(i.device_max_pasid_log2(16), 16);
        assert_eq!(i.device_max_pasid_log2(0), 0);
        assert!(i.paging_structure_coherency());
        let dev = DeviceProps { pasid_bits: 20, pasid_exec: true, pasid_priv: false, ats: true };
        assert_eq!(
            i.device_out_capabilities(&dev),
            u64::from(IOMMU_HW_CAP_DIRTY_TRACKING | IOMMU_HW_CAP_PCI_PASID_EXEC)
        );
        // sm_off: legacy mode, so no PASID, no nesting, no dirty tracking,
        // and the coherency bit is ECAP.C.
        let legacy = VtdInfo::new(VtdRegs::default(), DriverParams { scalable_mode: false, superpage: true }).unwrap();
        assert!(!legacy.pasid_supported() && !legacy.nested_supported() && !legacy.ssads_supported());
        assert_eq!(legacy.calculate_sagaw(), 0b01100);
        // sp_off: 4 KiB only.
        let nosp = VtdInfo::new(VtdRegs::default(), DriverParams { scalable_mode: true, superpage: false }).unwrap();
        assert_eq!(nosp.ss_pgsize_bitmap(), SZ_4K);
    }

    #[test]
    fn sagaw_rules() {
        // Scalable mode with both stages: 3-level-only SAGAW and no FS5LP
        // leave nothing in common, so the unit is ignored.
        let r = VtdRegsBuilder::from(VtdRegs::default()).address_widths(&[3], 39).first_stage(true, false).build();
        assert_eq!(VtdInfo::from_regs(r), Err(Errno::ENODEV));
        // First stage only (no SSTS): the first-stage widths rule, even
        // with SAGAW 0.
        let r = VtdRegsBuilder::from(VtdRegs::default())
            .address_widths(&[], 48)
            .scalable_mode(true, true, false)
            .first_stage(true, false)
            .build();
        let i = VtdInfo::from_regs(r).unwrap();
        assert_eq!(i.calculate_sagaw(), 0b00100);
        assert_eq!(i.agaw, 2);
        // Legacy unit with SAGAW 0: ignored.
        let r = VtdRegs::from_raw(0, 0);
        assert_eq!(VtdInfo::from_regs(r), Err(Errno::ENODEV));
        // SLLPS bits beyond 1 GiB: fls() is 4, which the driver's bitmap
        // helper does not know, so 4 KiB only.
        let r = VtdRegsBuilder::from(VtdRegs::default()).raw(|c, e| (c.with_sllps(0b1111), e)).build();
        assert_eq!(VtdInfo::from_regs(r).unwrap().ss_pgsize_bitmap(), SZ_4K);
        let r = VtdRegsBuilder::from(VtdRegs::default()).second_stage_large_pages(true, false).build();
        assert_eq!(VtdInfo::from_regs(r).unwrap().ss_pgsize_bitmap(), SZ_4K | SZ_2M);
    }
}
