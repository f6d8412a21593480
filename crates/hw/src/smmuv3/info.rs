//! What the Linux arm-smmu-v3 driver derives from the ID registers
//! (`arm_smmu_device_hw_probe()`, `arm_smmu_get_httu()`,
//! `arm_smmu_device_iidr_probe()`, Linux 7.3) and from firmware, and the
//! answers it gives the iommu core and iommufd from that
//! (`arm_smmu_capable()`, `arm_smmu_hw_info()`,
//! `arm_smmu_get_viommu_size()`, `arm_smmu_get_resv_regions()`).
//!
//! Model: [`SmmuInfo`] is computed once from [`SmmuRegs`] and
//! [`DriverParams`] and never changes: the driver's `features` and
//! `options` words (same bit values as the driver where it has them),
//! `oas`, the page sizes, the ASID/VMID/SSID/SID widths and the queue
//! sizes. (The driver keeps no input size of its own any more: stage 1
//! domains take theirs from VAX and `VA_BITS`, stage 2 from the OAS.)
//! `ARM_SMMU_FEAT_SVA` is not derived: it depends on the host CPU's
//! features, not the SMMU's. Probing fails with `ENXIO` where the driver's does (no
//! translation stage, no AArch64 tables, unsupported endianness, embedded
//! implementations, a command queue of 64 entries or fewer).
//!
//! Coherency, the ARM way: `IOMMU_CAP_CACHE_COHERENCY` is the SMMU's
//! `ARM_SMMU_FEAT_COHERENCY`, which the driver takes from *firmware* (the
//! DT `dma-coherent` property or the IORT COHACC override), not from
//! `IDR0.COHACC` (a mismatch only warns). Coherent access means the SMMU's
//! table walks and the DMA of its masters snoop the CPU caches; iommufd
//! refuses to bind a device of a non-coherent SMMU.
//! `IOMMU_CAP_ENFORCE_CACHE_COHERENCY` is per device: only a master behind
//! a root complex that firmware marks CANWBS (IORT memory access flags:
//! coherent and always write-back cacheable, ignoring PCIe No Snoop) can
//! enforce (`arm_smmu_master_canwbs()`). S2FWB does not make No Snoop
//! coherent; it only stops a guest's stage 1 from making memory
//! non-cacheable, which is why a vIOMMU needs CANWBS *or* S2FWB.

use uiommufd_abi::{
    Errno, IommuHwInfoArmSmmuv3, IOMMU_HW_CAP_DIRTY_TRACKING, IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED,
    IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI,
};

use super::regs::*;
use crate::device::{ResvKind, ResvRegion};

/// The driver's `ARM_SMMU_FEAT_*` bits (the values of `arm-smmu-v3.h`;
/// `BBML2` and `HAFT` follow the newest ones).
pub mod feat {
    pub const TWO_LVL_STRTAB: u32 = 1 << 0;
    pub const TWO_LVL_CDTAB: u32 = 1 << 1;
    pub const TT_LE: u32 = 1 << 2;
    pub const TT_BE: u32 = 1 << 3;
    pub const PRI: u32 = 1 << 4;
    pub const ATS: u32 = 1 << 5;
    pub const SEV: u32 = 1 << 6;
    pub const MSI: u32 = 1 << 7;
    pub const COHERENCY: u32 = 1 << 8;
    pub const TRANS_S1: u32 = 1 << 9;
    pub const TRANS_S2: u32 = 1 << 10;
    pub const STALLS: u32 = 1 << 11;
    pub const HYP: u32 = 1 << 12;
    pub const STALL_FORCE: u32 = 1 << 13;
    pub const VAX: u32 = 1 << 14;
    pub const RANGE_INV: u32 = 1 << 15;
    /// Never set by mainline (only cleared by the MMU-700 erratum).
    pub const BTM: u32 = 1 << 16;
    pub const SVA: u32 = 1 << 17;
    pub const E2H: u32 = 1 << 18;
    pub const NESTING: u32 = 1 << 19;
    pub const ATTR_TYPES_OVR: u32 = 1 << 20;
    pub const HA: u32 = 1 << 21;
    pub const HD: u32 = 1 << 22;
    pub const S2FWB: u32 = 1 << 23;
    pub const BBML2: u32 = 1 << 24;
    pub const HAFT: u32 = 1 << 25;
    /// `IDR5.DS`: 52-bit addresses with 4KB/16KB granules (range
    /// invalidation checks of guest commands depend on it).
    pub const DS: u32 = 1 << 26;

    /// Names, for decoding.
    pub const NAMES: &[(u32, &str)] = &[
        (TWO_LVL_STRTAB, "2_LVL_STRTAB"),
        (TWO_LVL_CDTAB, "2_LVL_CDTAB"),
        (TT_LE, "TT_LE"),
        (TT_BE, "TT_BE"),
        (PRI, "PRI"),
        (ATS, "ATS"),
        (SEV, "SEV"),
        (MSI, "MSI"),
        (COHERENCY, "COHERENCY"),
        (TRANS_S1, "TRANS_S1"),
        (TRANS_S2, "TRANS_S2"),
        (STALLS, "STALLS"),
        (HYP, "HYP"),
        (STALL_FORCE, "STALL_FORCE"),
        (VAX, "VAX"),
        (RANGE_INV, "RANGE_INV"),
        (BTM, "BTM"),
        (SVA, "SVA"),
        (E2H, "E2H"),
        (NESTING, "NESTING"),
        (ATTR_TYPES_OVR, "ATTR_TYPES_OVR"),
        (HA, "HA"),
        (HD, "HD"),
        (S2FWB, "S2FWB"),
        (BBML2, "BBML2"),
        (HAFT, "HAFT"),
        (DS, "DS"),
    ];
}

/// The driver's `ARM_SMMU_OPT_*` bits that the model derives.
pub mod opt {
    /// CMD_SYNC completion by MSI write-back (coherent SMMUs with MSIs).
    pub const MSIPOLL: u32 = 1 << 2;
    /// Every command batch needs its own CMD_SYNC (MMU-700 erratum); the
    /// driver then refuses vIOMMUs.
    pub const CMDQ_FORCE_SYNC: u32 = 1 << 3;
    /// A Tegra241 CMDQV sits next to the SMMU (DT `nvidia,cmdqv` or an
    /// ACPI `NVDA200C` node).
    pub const TEGRA241_CMDQV: u32 = 1 << 4;
}

pub const SZ_4K: u64 = 1 << 12;
pub const SZ_16K: u64 = 1 << 14;
pub const SZ_64K: u64 = 1 << 16;
pub const SZ_2M: u64 = 1 << 21;
pub const SZ_32M: u64 = 1 << 25;
pub const SZ_512M: u64 = 1 << 29;
pub const SZ_1G: u64 = 1 << 30;
pub const SZ_4T: u64 = 1 << 42;

/// `MSI_IOVA_BASE` / `MSI_IOVA_LENGTH`: the software-managed MSI window
/// every master gets (`arm_smmu_get_resv_regions()`).
pub const MSI_IOVA_BASE: u64 = 0x800_0000;
pub const MSI_IOVA_LENGTH: u64 = 0x10_0000;

/// `Q_MAX_SZ_SHIFT` with arm64's default `CONFIG_CMA_ALIGNMENT` (8):
/// `PAGE_SHIFT + 8`.
pub const Q_MAX_SZ_SHIFT: u32 = 12 + 8;
/// `CMDQ_MAX_SZ_SHIFT` (16-byte commands).
pub const CMDQ_MAX_SZ_SHIFT: u32 = Q_MAX_SZ_SHIFT - 4;
/// `EVTQ_MAX_SZ_SHIFT` (32-byte events).
pub const EVTQ_MAX_SZ_SHIFT: u32 = Q_MAX_SZ_SHIFT - 5;
/// `PRIQ_MAX_SZ_SHIFT` (16-byte page requests).
pub const PRIQ_MAX_SZ_SHIFT: u32 = Q_MAX_SZ_SHIFT - 4;
/// `CMDQ_BATCH_ENTRIES` (`BITS_PER_LONG`).
pub const CMDQ_BATCH_ENTRIES: usize = 64;
/// `STRTAB_SPLIT`.
pub const STRTAB_SPLIT: u32 = 8;
/// `CTXDESC_LINEAR_CDMAX`: `ilog2(64KB / 64-byte CD)`.
pub const CTXDESC_LINEAR_CDMAX: u32 = 10;

/// What firmware and the running kernel tell the driver besides the
/// registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverParams {
    /// Firmware's coherency (DT `dma-coherent`, IORT COHACC override);
    /// `None`: as `IDR0.COHACC` says, which is what correct firmware does.
    pub coherent: Option<bool>,
    /// ACPI IORT HTTU override `(access flag, dirty state)`: with ACPI the
    /// driver takes HTTU from the IORT node, not from `IDR0.HTTU`; `None`
    /// is a device-tree system (`IDR0.HTTU` is used).
    pub acpi_httu: Option<(bool, bool)>,
    /// The host kernel runs at EL2 with VHE (`ARM64_HAS_VIRT_HOST_EXTN`):
    /// with `IDR0.Hyp` the driver uses the EL2 stream world (E2H).
    pub vhe: bool,
    /// `arm-smmu-v3.disable_msipolling`.
    pub disable_msipolling: bool,
    /// The kernel's `VA_BITS` (bounds stage 1 input addresses).
    pub va_bits: u32,
    /// The SMMU is an `nvidia,tegra264-smmu` (DT): the driver enables its
    /// T264-SMMU-3 erratum workaround (TLBI/CFGI batches issued twice) and
    /// reports `IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI`.
    pub tegra264: bool,
    /// Firmware names a companion Tegra241 CMDQV
    /// (`ARM_SMMU_OPT_TEGRA241_CMDQV`).
    pub tegra241_cmdqv: bool,
}

impl Default for DriverParams {
    fn default() -> Self {
        DriverParams {
            coherent: None,
            acpi_httu: None,
            vhe: false,
            disable_msipolling: false,
            va_bits: 48,
            tegra264: false,
            tegra241_cmdqv: false,
        }
    }
}

/// The parts of a master (a PCI function) the driver and core look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceProps {
    /// Max PASID Width of the PCI PASID capability (0: none).
    pub pasid_bits: u32,
    /// The PCI ATS capability.
    pub ats: bool,
    /// The IORT root-complex node allows ATS (`IOMMU_FWSPEC_PCI_RC_ATS`).
    pub rc_ats: bool,
    /// The IORT root-complex node's memory access flags say CANWBS
    /// (`IOMMU_FWSPEC_PCI_RC_CANWBS`).
    pub canwbs: bool,
    /// `dma-can-stall` (platform devices only).
    pub can_stall: bool,
}

/// The driver's view of one SMMU (`struct arm_smmu_device` after probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuInfo {
    pub regs: SmmuRegs,
    pub params: DriverParams,
    /// `smmu->features` (see [`feat`]).
    pub features: u32,
    /// `smmu->options` (see [`opt`]).
    pub options: u32,
    /// Output address bits.
    pub oas: u32,
    /// Page sizes of every granule supported.
    pub pgsize_bitmap: u64,
    pub asid_bits: u32,
    pub vmid_bits: u32,
    pub ssid_bits: u32,
    pub sid_bits: u32,
    /// log2 of the queue sizes the driver allocates.
    pub cmdq_shift: u32,
    pub evtq_shift: u32,
    pub priq_shift: u32,
    /// `evtq.max_stalls`.
    pub max_stalls: u32,
}

impl SmmuInfo {
    /// `arm_smmu_device_hw_probe()` and what it calls. `ENXIO` where the
    /// driver gives up on the SMMU.
    pub fn new(regs: SmmuRegs, params: DriverParams) -> Result<Self, Errno> {
        let idr0 = regs.idr0;
        let mut f = 0u32;
        let mut options = if params.tegra241_cmdqv { opt::TEGRA241_CMDQV } else { 0 };
        let coherent = params.coherent.unwrap_or(idr0.cohacc() != 0);
        if coherent {
            f |= feat::COHERENCY;
        }
        if idr0.st_level() == 1 {
            f |= feat::TWO_LVL_STRTAB;
        }
        if idr0.cd2l() != 0 {
            f |= feat::TWO_LVL_CDTAB;
        }
        // Same endianness as the (little-endian) CPU, or mixed.
        match idr0.ttendian() {
            TTENDIAN_MIXED => f |= feat::TT_LE | feat::TT_BE,
            TTENDIAN_LE => f |= feat::TT_LE,
            _ => return Err(Errno::ENXIO),
        }
        if idr0.pri() != 0 {
            f |= feat::PRI;
        }
        if idr0.ats() != 0 {
            f |= feat::ATS;
        }
        if idr0.sev() != 0 {
            f |= feat::SEV;
        }
        if idr0.msi() != 0 {
            f |= feat::MSI;
            if coherent && !params.disable_msipolling {
                options |= opt::MSIPOLL;
            }
        }
        if idr0.hyp() != 0 {
            f |= feat::HYP;
            if params.vhe {
                f |= feat::E2H;
            }
        }
        // arm_smmu_get_httu(): the register on DT systems, IORT on ACPI.
        match params.acpi_httu {
            None => {
                f |= match idr0.httu() {
                    HTTU_ACCESS_DIRTY_HAFT => feat::HAFT | feat::HD | feat::HA,
                    HTTU_ACCESS_DIRTY => feat::HD | feat::HA,
                    HTTU_ACCESS => feat::HA,
                    _ => 0,
                }
            }
            Some((ha, hd)) => {
                if ha {
                    f |= feat::HA;
                }
                if hd {
                    f |= feat::HD;
                }
            }
        }
        match idr0.stall_model() {
            STALL_MODEL_FORCE => f |= feat::STALL_FORCE | feat::STALLS,
            STALL_MODEL_STALL => f |= feat::STALLS,
            _ => {}
        }
        if idr0.s1p() != 0 {
            f |= feat::TRANS_S1;
        }
        if idr0.s2p() != 0 {
            f |= feat::TRANS_S2;
        }
        if idr0.s1p() == 0 && idr0.s2p() == 0 {
            return Err(Errno::ENXIO);
        }
        // AArch64 tables only (TTF bit 1).
        if idr0.ttf() & TTF_AARCH64 == 0 {
            return Err(Errno::ENXIO);
        }
        let asid_bits = if idr0.asid16() != 0 { 16 } else { 8 };
        let vmid_bits = if idr0.vmid16() != 0 { 16 } else { 8 };

        let idr1 = regs.idr1;
        if idr1.tables_preset() != 0 || idr1.queues_preset() != 0 || idr1.rel() != 0 {
            return Err(Errno::ENXIO);
        }
        if idr1.attr_types_ovr() != 0 {
            f |= feat::ATTR_TYPES_OVR;
        }
        let cmdq_shift = CMDQ_MAX_SZ_SHIFT.min(idr1.cmdqs());
        if cmdq_shift <= CMDQ_BATCH_ENTRIES.trailing_zeros() {
            return Err(Errno::ENXIO);
        }
        let evtq_shift = EVTQ_MAX_SZ_SHIFT.min(idr1.eventqs());
        let priq_shift = PRIQ_MAX_SZ_SHIFT.min(idr1.priqs());
        let ssid_bits = idr1.ssidsize();
        let sid_bits = idr1.sidsize();
        if sid_bits <= STRTAB_SPLIT {
            f &= !feat::TWO_LVL_STRTAB;
        }

        let idr3 = regs.idr3;
        if idr3.ril() != 0 {
            f |= feat::RANGE_INV;
        }
        if idr3.fwb() != 0 {
            f |= feat::S2FWB;
        }
        if idr3.bbml() == 2 {
            f |= feat::BBML2;
        }

        let idr5 = regs.idr5;
        if idr5.ds() != 0 {
            f |= feat::DS;
        }
        let mut pgsize_bitmap = 0u64;
        if idr5.gran64k() != 0 {
            pgsize_bitmap |= SZ_64K | SZ_512M;
        }
        if idr5.gran16k() != 0 {
            pgsize_bitmap |= SZ_16K | SZ_32M;
        }
        if idr5.gran4k() != 0 {
            pgsize_bitmap |= SZ_4K | SZ_2M | SZ_1G;
        }
        if idr5.vax() == 1 {
            f |= feat::VAX;
        }
        // Unknown encodings are truncated to 48 bits.
        let oas = match idr5.oas() {
            6 => {
                pgsize_bitmap |= SZ_4T;
                52
            }
            enc => match oas_bits(enc) {
                Some(b) if b < 48 => b,
                _ => 48,
            },
        };
        if f & feat::TRANS_S1 != 0 && f & feat::TRANS_S2 != 0 {
            f |= feat::NESTING;
        }

        // arm_smmu_device_iidr_probe(): errata of Arm's implementations.
        let iidr = regs.iidr;
        if iidr.implementer() == IIDR_IMPLEMENTER_ARM {
            match iidr.product_id() {
                IIDR_PRODUCTID_ARM_MMU_600 => {
                    // Erratum 1076982.
                    if iidr.variant() == 0 && iidr.revision() <= 2 {
                        f &= !feat::SEV;
                    }
                    // Erratum 1209401.
                    if iidr.variant() < 2 {
                        f &= !feat::NESTING;
                    }
                }
                IIDR_PRODUCTID_ARM_MMU_700 => {
                    f &= !feat::BTM;
                    // Erratum 2812531 (and 2268618 for nesting) up to r0p0
                    // / rXp0 only.
                    if iidr.variant() < 1 || iidr.revision() < 1 {
                        options |= opt::CMDQ_FORCE_SYNC;
                        f &= !feat::NESTING;
                    }
                }
                // Errata 3878312 / 3995052.
                IIDR_PRODUCTID_ARM_MMU_L1 | IIDR_PRODUCTID_ARM_MMU_S3 => f &= !feat::BTM,
                _ => {}
            }
        }

        Ok(SmmuInfo {
            regs,
            params,
            features: f,
            options,
            oas,
            pgsize_bitmap,
            asid_bits,
            vmid_bits,
            ssid_bits,
            sid_bits,
            cmdq_shift,
            evtq_shift,
            priq_shift,
            max_stalls: idr5.stall_max(),
        })
    }

    /// With the default driver parameters (a device-tree system whose
    /// firmware agrees with `IDR0.COHACC`).
    pub fn from_regs(regs: SmmuRegs) -> Result<Self, Errno> {
        Self::new(regs, DriverParams::default())
    }

    /// Whether `smmu->features` has all of `f`.
    pub const fn has(&self, f: u32) -> bool {
        self.features & f == f
    }

    /// `ARM_SMMU_FEAT_COHERENCY`: what `IOMMU_CAP_CACHE_COHERENCY` answers
    /// and whether page-table walks are coherent (`coherent_walk`).
    pub const fn coherent(&self) -> bool {
        self.has(feat::COHERENCY)
    }

    /// `arm_smmu_dbm_capable()`: HD and coherency, what
    /// `IOMMU_CAP_DIRTY_TRACKING` answers.
    pub const fn dbm_capable(&self) -> bool {
        self.has(feat::HD | feat::COHERENCY)
    }

    /// `ARM_SMMU_FEAT_NESTING`: nesting parents and vIOMMUs.
    pub const fn nesting(&self) -> bool {
        self.has(feat::NESTING)
    }

    /// `ARM_SMMU_FEAT_S2FWB`.
    pub const fn s2fwb(&self) -> bool {
        self.has(feat::S2FWB)
    }

    /// `ARM_SMMU_FEAT_RANGE_INV`.
    pub const fn range_inv(&self) -> bool {
        self.has(feat::RANGE_INV)
    }

    /// Names of the features set.
    pub fn feature_names(&self) -> Vec<&'static str> {
        feat::NAMES.iter().filter(|(b, _)| self.features & b != 0).map(|&(_, n)| n).collect()
    }

    /// The driver's boot message (`"oas %lu-bit (features 0x%08x)"`).
    pub fn boot_line(&self) -> String {
        format!("oas {}-bit (features {:#010x})", self.oas, self.features)
    }

    /// `arm_smmu_erratum_repeat_tlbi_cfgi()`: a Tegra264 SMMU.
    pub const fn repeat_tlbi_cfgi(&self) -> bool {
        self.params.tegra264
    }

    /// `smmu->iommu.max_pasids`: `1 << ssid_bits`.
    pub const fn max_pasids(&self) -> u64 {
        1u64 << self.ssid_bits
    }

    /// `arm_smmu_hw_info()`: the raw registers, read back as they are, and
    /// the erratum flag where the driver enables the workaround.
    pub fn hw_info(&self) -> IommuHwInfoArmSmmuv3 {
        let flags = if self.repeat_tlbi_cfgi() { IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI } else { 0 };
        IommuHwInfoArmSmmuv3 {
            flags,
            __reserved: 0,
            idr: self.regs.idr(),
            iidr: self.regs.iidr.0,
            aidr: self.regs.aidr.0,
        }
    }

    /// `arm_smmu_get_resv_regions()`: the software-managed MSI window
    /// (`iommu_dma_get_resv_regions()` adds nothing on a system without
    /// IORT RMRs or hardware MSI doorbells).
    pub fn msi_region(&self) -> ResvRegion {
        ResvRegion { start: MSI_IOVA_BASE, length: MSI_IOVA_LENGTH, kind: ResvKind::SwMsi }
    }

    /// The log2 PASID count iommufd reports for a master with a PASID
    /// capability of `device_pasid_bits`: `dev_iommu_get_max_pasids()`,
    /// `min(pci_max_pasids, smmu->iommu.max_pasids)`, 0 without PASIDs on
    /// either side.
    pub fn device_max_pasid_log2(&self, device_pasid_bits: u32) -> u32 {
        if self.ssid_bits == 0 || device_pasid_bits == 0 {
            return 0;
        }
        device_pasid_bits.min(self.ssid_bits)
    }

    /// The driver's `master->ssid_bits` (`arm_smmu_probe_device()`): the
    /// same minimum, capped at `CTXDESC_LINEAR_CDMAX` (10) without 2-level
    /// CD tables.
    pub fn master_ssid_bits(&self, device_pasid_bits: u32) -> u32 {
        let bits = self.device_max_pasid_log2(device_pasid_bits);
        if self.has(feat::TWO_LVL_CDTAB) {
            bits
        } else {
            bits.min(CTXDESC_LINEAR_CDMAX)
        }
    }

    /// `arm_smmu_ats_supported()`: the SMMU, the root complex and the
    /// function all do ATS.
    pub fn ats_supported(&self, dev: &DeviceProps) -> bool {
        self.has(feat::ATS) && dev.rc_ats && dev.ats
    }

    /// `out_capabilities` of `IOMMU_GET_HW_INFO` for a master:
    /// DIRTY_TRACKING when `arm_smmu_dbm_capable()`; PCI_ATS_NOT_SUPPORTED
    /// unless `arm_smmu_ats_supported()`. (PASID_EXEC/PRIV are never set:
    /// `arm_smmu_enable_pasid()` enables what the function offers, but the
    /// model's functions offer neither.)
    pub fn device_out_capabilities(&self, dev: &DeviceProps) -> u64 {
        let mut caps = 0u64;
        if self.dbm_capable() {
            caps |= u64::from(IOMMU_HW_CAP_DIRTY_TRACKING);
        }
        if !self.ats_supported(dev) {
            caps |= u64::from(IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED);
        }
        caps
    }

    /// `arm_smmu_get_viommu_size()` returning non-zero for an
    /// `IOMMU_VIOMMU_TYPE_ARM_SMMUV3` on a master that is (`canwbs`) or is
    /// not behind a CANWBS root complex: nesting, no `CMDQ_FORCE_SYNC`, and
    /// a way to stop the VM from bypassing the cache (CANWBS or S2FWB).
    pub fn viommu_supported(&self, canwbs: bool) -> bool {
        self.nesting() && self.options & opt::CMDQ_FORCE_SYNC == 0 && (canwbs || self.s2fwb())
    }

    /// Human-readable lines of the derived view.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![self.boot_line()];
        out.push(format!("features: {}", self.feature_names().join(" ")));
        out.push(format!(
            "ASID {} bits, VMID {} bits, StreamID {} bits, SubstreamID {} bits",
            self.asid_bits, self.vmid_bits, self.sid_bits, self.ssid_bits
        ));
        out.push(format!("queues: cmdq 2^{}, evtq 2^{}, priq 2^{}", self.cmdq_shift, self.evtq_shift, self.priq_shift));
        out.push(format!(
            "coherent (IOMMU_CAP_CACHE_COHERENCY): {}; dirty tracking (HTTU HD): {}; nesting: {}; S2FWB: {}",
            yes(self.coherent()),
            yes(self.dbm_capable()),
            yes(self.nesting()),
            yes(self.s2fwb())
        ));
        out
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_info() -> SmmuInfo {
        SmmuInfo::from_regs(SmmuRegs::default()).unwrap()
    }

    #[test]
    fn default_unit() {
        let i = default_info();
        let want = feat::TWO_LVL_STRTAB
            | feat::TWO_LVL_CDTAB
            | feat::TT_LE
            | feat::PRI
            | feat::ATS
            | feat::SEV
            | feat::MSI
            | feat::COHERENCY
            | feat::TRANS_S1
            | feat::TRANS_S2
            | feat::HYP
            | feat::RANGE_INV
            | feat::NESTING
            | feat::ATTR_TYPES_OVR
            | feat::HA
            | feat::HD
            | feat::S2FWB
            | feat::BBML2;
        assert_eq!(i.features, want);
        // BTM is never set by mainline; terminate-only: no STALLS.
        assert!(!i.has(feat::BTM) && !i.has(feat::STALLS));
        assert_eq!(i.options, opt::MSIPOLL);
        assert_eq!(i.oas, 48);
        assert_eq!(i.pgsize_bitmap, SZ_4K | SZ_2M | SZ_1G | SZ_64K | SZ_512M);
        assert_eq!((i.asid_bits, i.vmid_bits, i.sid_bits, i.ssid_bits), (16, 16, 16, 20));
        // CMDQS 19 is capped at 16 (2^20-byte queues), EVTQS at 15.
        assert_eq!((i.cmdq_shift, i.evtq_shift, i.priq_shift), (16, 15, 16));
        assert!(i.coherent() && i.dbm_capable() && i.nesting() && i.s2fwb() && i.range_inv());
        assert_eq!(i.max_pasids(), 1 << 20);
        assert_eq!(i.boot_line(), format!("oas 48-bit (features {:#010x})", want));
        let hw = i.hw_info();
        assert_eq!(hw.idr, SmmuRegs::default().idr());
        assert_eq!((hw.flags, hw.iidr, hw.aidr), (0, 0, 2));
        assert_eq!(i.msi_region(), ResvRegion { start: 0x800_0000, length: 0x10_0000, kind: ResvKind::SwMsi });
        assert!(i.describe().iter().any(|l| l.contains("nesting: yes")));
    }

    #[test]
    fn coherency_is_firmwares() {
        // COHACC clear in the register: not coherent, no DBM, no MSIPOLL.
        let r = SmmuRegs::builder().coherent(false).build();
        let i = SmmuInfo::from_regs(r).unwrap();
        assert!(!i.coherent() && !i.dbm_capable());
        assert_eq!(i.options & opt::MSIPOLL, 0);
        // Firmware says coherent anyway: the driver believes firmware.
        let i = SmmuInfo::new(r, DriverParams { coherent: Some(true), ..Default::default() }).unwrap();
        assert!(i.coherent() && i.dbm_capable());
        // And the other way round.
        let i =
            SmmuInfo::new(SmmuRegs::default(), DriverParams { coherent: Some(false), ..Default::default() }).unwrap();
        assert!(!i.coherent());
        // Coherent but no MSI polling when disabled.
        let i = SmmuInfo::new(SmmuRegs::default(), DriverParams { disable_msipolling: true, ..Default::default() })
            .unwrap();
        assert_eq!(i.options, 0);
    }

    #[test]
    fn httu_dt_and_acpi() {
        let access_only = SmmuRegs::builder().httu(true, false).build();
        let i = SmmuInfo::from_regs(access_only).unwrap();
        assert!(i.has(feat::HA) && !i.has(feat::HD) && !i.dbm_capable());
        let haft = SmmuRegs::builder().raw(|r| r.idr0 = r.idr0.with_httu(HTTU_ACCESS_DIRTY_HAFT)).build();
        assert!(SmmuInfo::from_regs(haft).unwrap().has(feat::HAFT | feat::HD | feat::HA));
        // ACPI: IORT decides, whatever IDR0 says.
        let p = DriverParams { acpi_httu: Some((true, true)), ..Default::default() };
        assert!(SmmuInfo::new(access_only, p).unwrap().dbm_capable());
        let p = DriverParams { acpi_httu: Some((false, false)), ..Default::default() };
        assert!(!SmmuInfo::new(SmmuRegs::default(), p).unwrap().has(feat::HA));
    }

    #[test]
    fn probe_failures() {
        let b = SmmuRegs::builder();
        assert_eq!(SmmuInfo::from_regs(b.stages(false, false).build()), Err(Errno::ENXIO));
        assert_eq!(SmmuInfo::from_regs(b.table_formats(0b01).build()), Err(Errno::ENXIO));
        assert_eq!(SmmuInfo::from_regs(b.endianness(TTENDIAN_BE).build()), Err(Errno::ENXIO));
        assert_eq!(SmmuInfo::from_regs(b.endianness(0b01).build()), Err(Errno::ENXIO));
        assert_eq!(SmmuInfo::from_regs(b.queue_sizes(6, 8, 8).build()), Err(Errno::ENXIO));
        assert!(SmmuInfo::from_regs(b.queue_sizes(7, 8, 8).build()).is_ok());
        let preset = b.raw(|r| r.idr1 = r.idr1.with_tables_preset(1)).build();
        assert_eq!(SmmuInfo::from_regs(preset), Err(Errno::ENXIO));
        let rel = b.raw(|r| r.idr1 = r.idr1.with_rel(1)).build();
        assert_eq!(SmmuInfo::from_regs(rel), Err(Errno::ENXIO));
    }

    #[test]
    fn widths_and_sizes() {
        let b = SmmuRegs::builder();
        // AArch32 + AArch64 tables: fine (the driver uses AArch64 ones).
        let i = SmmuInfo::from_regs(b.table_formats(TTF_AARCH32_64).oas_bits(36).build()).unwrap();
        assert_eq!(i.oas, 36);
        // 52-bit OAS adds the 4TB page; reserved OAS truncates to 48.
        let i = SmmuInfo::from_regs(b.oas_bits(52).build()).unwrap();
        assert_eq!(i.oas, 52);
        assert_ne!(i.pgsize_bitmap & SZ_4T, 0);
        let i = SmmuInfo::from_regs(b.raw(|r| r.idr5 = r.idr5.with_oas(7)).build()).unwrap();
        assert_eq!(i.oas, 48);
        let i = SmmuInfo::from_regs(b.granules(false, true, false).vax52(true).build()).unwrap();
        assert_eq!(i.pgsize_bitmap, SZ_16K | SZ_32M);
        assert!(i.has(feat::VAX));
        // 8-bit IDs, few StreamIDs: linear stream table.
        let i = SmmuInfo::from_regs(b.id_widths(false, false).stream_bits(8, 0).build()).unwrap();
        assert_eq!((i.asid_bits, i.vmid_bits), (8, 8));
        assert!(!i.has(feat::TWO_LVL_STRTAB));
        assert_eq!(i.device_max_pasid_log2(20), 0);
        // Stall models.
        let i = SmmuInfo::from_regs(b.fault_model(STALL_MODEL_FORCE, true).stall_max(16).build()).unwrap();
        assert!(i.has(feat::STALLS | feat::STALL_FORCE));
        assert_eq!(i.max_stalls, 16);
        let i = SmmuInfo::from_regs(b.fault_model(STALL_MODEL_STALL, true).build()).unwrap();
        assert!(i.has(feat::STALLS) && !i.has(feat::STALL_FORCE));
        // Single stage: no nesting.
        assert!(!SmmuInfo::from_regs(b.stages(true, false).build()).unwrap().nesting());
        assert!(!SmmuInfo::from_regs(b.stages(false, true).build()).unwrap().nesting());
        // E2H needs both Hyp and a VHE host.
        let p = DriverParams { vhe: true, ..Default::default() };
        assert!(SmmuInfo::new(SmmuRegs::default(), p).unwrap().has(feat::E2H));
        assert!(!SmmuInfo::new(b.hyp(false).build(), p).unwrap().has(feat::E2H | feat::HYP));
    }

    #[test]
    fn arm_errata_by_iidr() {
        let b = SmmuRegs::builder();
        let mmu700 =
            SmmuInfo::from_regs(b.iidr(IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_700, 0, 0).build()).unwrap();
        assert!(!mmu700.nesting());
        assert_ne!(mmu700.options & opt::CMDQ_FORCE_SYNC, 0);
        assert!(!mmu700.viommu_supported(true));
        let mmu600_r0p2 =
            SmmuInfo::from_regs(b.iidr(IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_600, 0, 2).build()).unwrap();
        assert!(!mmu600_r0p2.has(feat::SEV) && !mmu600_r0p2.nesting());
        let mmu600_r2 =
            SmmuInfo::from_regs(b.iidr(IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_600, 2, 0).build()).unwrap();
        assert!(mmu600_r2.has(feat::SEV) && mmu600_r2.nesting());
        // MMU-700 r1p1 and later: only BTM goes.
        let r1p1 = SmmuInfo::from_regs(b.iidr(IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_700, 1, 1).build()).unwrap();
        assert!(r1p1.nesting() && r1p1.options & opt::CMDQ_FORCE_SYNC == 0);
        let r1p0 = SmmuInfo::from_regs(b.iidr(IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_700, 1, 0).build()).unwrap();
        assert!(!r1p0.nesting());
        for product in [IIDR_PRODUCTID_ARM_MMU_L1, IIDR_PRODUCTID_ARM_MMU_S3] {
            let i = SmmuInfo::from_regs(b.iidr(IIDR_IMPLEMENTER_ARM, product, 0, 0).build()).unwrap();
            assert!(i.nesting() && i.options == opt::MSIPOLL);
        }
        // Someone else's product 0x487 is not an MMU-700.
        let other = SmmuInfo::from_regs(b.iidr(0x36b, IIDR_PRODUCTID_ARM_MMU_700, 0, 0).build()).unwrap();
        assert!(other.nesting());
    }

    #[test]
    fn hw_info_flags_and_ds() {
        // A Tegra264 (DT compatible): the erratum flag, nothing else.
        let p = DriverParams { tegra264: true, ..Default::default() };
        let i = SmmuInfo::new(SmmuRegs::default(), p).unwrap();
        assert_eq!(i.hw_info().flags, IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI);
        assert_eq!(default_info().hw_info().flags, 0);
        // IDR5.DS (bit 7) gives FEAT_DS (bit 26).
        let ds = SmmuInfo::from_regs(SmmuRegs::builder().raw(|r| r.idr5 = r.idr5.with_ds(1)).build()).unwrap();
        assert_eq!(ds.regs.idr5.0, 0xd5);
        assert!(ds.has(feat::DS) && ds.features & (1 << 26) != 0 && !default_info().has(feat::DS));
        let cmdqv = SmmuInfo::new(SmmuRegs::default(), DriverParams { tegra241_cmdqv: true, ..Default::default() });
        assert_eq!(cmdqv.unwrap().options, opt::MSIPOLL | opt::TEGRA241_CMDQV);
    }

    #[test]
    fn pasids_ats_and_viommu() {
        let i = default_info();
        assert_eq!(i.device_max_pasid_log2(16), 16);
        assert_eq!(i.device_max_pasid_log2(20), 20);
        assert_eq!(i.device_max_pasid_log2(0), 0);
        assert_eq!(i.master_ssid_bits(20), 20);
        let linear = SmmuInfo::from_regs(SmmuRegs::builder().two_level(true, false).build()).unwrap();
        assert_eq!(linear.master_ssid_bits(20), 10);
        assert_eq!(linear.device_max_pasid_log2(20), 20);
        let dev = DeviceProps { ats: true, rc_ats: true, ..Default::default() };
        assert_eq!(i.device_out_capabilities(&dev), u64::from(IOMMU_HW_CAP_DIRTY_TRACKING));
        let no_rc = DeviceProps { ats: true, ..Default::default() };
        assert_eq!(
            i.device_out_capabilities(&no_rc),
            u64::from(IOMMU_HW_CAP_DIRTY_TRACKING | IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED)
        );
        // vIOMMU: CANWBS or S2FWB.
        assert!(i.viommu_supported(false) && i.viommu_supported(true));
        let nofwb = SmmuInfo::from_regs(SmmuRegs::builder().fwb(false).build()).unwrap();
        assert!(!nofwb.viommu_supported(false));
        assert!(nofwb.viommu_supported(true));
    }
}
