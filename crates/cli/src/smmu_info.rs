//! The Arm SMMUv3 part of `uiommufd info` (and of the demo): the
//! registers as a person reads them, what the Linux driver makes of them,
//! and ARM's coherency outcome.

use uiommufd_abi::{IOMMU_VIOMMU_TYPE_ARM_SMMUV3, IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV};
use uiommufd_hw::smmuv3::domain::{DomainConfig, Stage};
use uiommufd_hw::smmuv3::info::{feat, opt};
use uiommufd_hw::smmuv3::regs::{
    IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_600, IIDR_PRODUCTID_ARM_MMU_700, IIDR_PRODUCTID_ARM_MMU_L1,
    IIDR_PRODUCTID_ARM_MMU_S3,
};
use uiommufd_hw::smmuv3::{SmmuIommu, SmmuSpec};

use crate::info::{sizes, yes};

/// The implementer and product an IIDR names, as far as the driver knows
/// them.
fn implementation(iidr: u32) -> String {
    let r = uiommufd_hw::smmuv3::regs::Iidr(iidr);
    if iidr == 0 {
        return "IIDR 0 (no implementation named)".to_string();
    }
    let product = match (r.implementer(), r.product_id()) {
        (IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_600) => "Arm MMU-600".to_string(),
        (IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_700) => "Arm MMU-700".to_string(),
        (IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_L1) => "Arm MMU-L1".to_string(),
        (IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_S3) => "Arm MMU-S3".to_string(),
        (imp, prod) => format!("implementer {imp:#x}, product {prod:#x}"),
    };
    format!("{product} r{}p{} (IIDR {iidr:#010x})", r.variant(), r.revision())
}

fn domain_line(unit: &SmmuIommu, stage: Stage, nest_parent: bool) -> String {
    let name = match (stage, nest_parent) {
        (Stage::S1, _) => "stage 1 domain",
        (Stage::S2, false) => "stage 2 domain",
        (Stage::S2, true) => "nesting parent (stage 2)",
    };
    match DomainConfig::for_unit(unit.info(), stage, false, nest_parent) {
        Ok(c) => format!(
            "{name}: {}-bit input, {}-bit output, {} levels from level {}, pages {}{}",
            c.ias,
            c.oas,
            4 - c.start_level,
            c.start_level,
            sizes(c.pgsize_bitmap),
            if c.fwb { ", S2FWB" } else { "" }
        ),
        Err(e) => format!("{name}: not available ({e})"),
    }
}

/// The SMMU, decoded.
pub fn describe(unit: &SmmuIommu, spec: &SmmuSpec) -> Vec<String> {
    let i = unit.info();
    let r = unit.regs();
    let (maj, min) = r.version();
    let mut out = vec![
        format!("IOMMU: Arm SMMUv{maj}.{min}, {}", implementation(r.iidr.0)),
        format!("arm-smmu-v3: {}", i.boot_line()),
        format!("features: {}", i.feature_names().join(" ")),
    ];
    out.push(format!(
        "stage 1: {}; stage 2: {}; nesting: {}; AArch64 tables, {} walks",
        yes(i.has(feat::TRANS_S1)),
        yes(i.has(feat::TRANS_S2)),
        yes(i.nesting()),
        if i.has(feat::TT_BE) { "mixed-endian" } else { "little-endian" }
    ));
    out.push(format!(
        "StreamID {} bits ({}), SubstreamID {} bits, ASID {} bits, VMID {} bits",
        i.sid_bits,
        if i.has(feat::TWO_LVL_STRTAB) { "2-level stream table" } else { "linear stream table" },
        i.ssid_bits,
        i.asid_bits,
        i.vmid_bits
    ));
    let idr5 = r.idr5;
    let grans: Vec<&str> = [(idr5.gran4k(), "4K"), (idr5.gran16k(), "16K"), (idr5.gran64k(), "64K")]
        .iter()
        .filter(|(on, _)| *on != 0)
        .map(|&(_, n)| n)
        .collect();
    out.push(format!("granules: {}; page sizes {}; output {} bits", grans.join(" "), sizes(i.pgsize_bitmap), i.oas));
    out.push(domain_line(unit, Stage::S1, false));
    out.push(domain_line(unit, Stage::S2, true));
    out.push(format!(
        "dirty tracking (HTTU dirty state and coherency, DBM on stage 1): {}; range invalidation: {}; BBML2: {}",
        yes(i.dbm_capable()),
        yes(i.range_inv()),
        yes(i.has(feat::BBML2))
    ));
    out.push(format!(
        "coherency: IDR0.COHACC {} -> IOMMU_CAP_CACHE_COHERENCY {} ({}); S2FWB: {}; CANWBS root complex: {}",
        r.idr0.cohacc(),
        yes(i.coherent()),
        if i.coherent() { "devices can be bound" } else { "iommufd refuses to bind its devices" },
        yes(i.s2fwb()),
        yes(spec.canwbs)
    ));
    let mut viommu = Vec::new();
    if i.viommu_supported(spec.canwbs) {
        viommu.push(IOMMU_VIOMMU_TYPE_ARM_SMMUV3);
        if i.options & opt::TEGRA241_CMDQV != 0 {
            viommu.push(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV);
        }
    }
    out.push(format!(
        "vIOMMU: {} (needs nesting, no CMDQ_FORCE_SYNC erratum, and CANWBS or S2FWB)",
        if viommu.is_empty() {
            "none".to_string()
        } else {
            viommu
                .iter()
                .map(|&t| if t == IOMMU_VIOMMU_TYPE_ARM_SMMUV3 { "ARM_SMMUV3" } else { "TEGRA241_CMDQV" })
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    if let Some(c) = unit.cmdqv() {
        let p = c.params();
        out.push(format!(
            "Tegra241 CMDQV: PARAM {:#06x} (version {}, {} VINTFs, {} VCMDQs per VINTF, {} StreamID mappings per VINTF)",
            p.param(),
            p.version,
            p.num_vintfs(),
            p.lvcmdqs_per_vintf(),
            p.sids_per_vintf()
        ));
    }
    let hw = i.hw_info();
    out.push(format!(
        "IOMMU_GET_HW_INFO: type ARM_SMMUV3, flags {:#x}{}",
        hw.flags,
        if hw.flags != 0 { " (ERRATA_REPEAT_TLBI_CFGI: issue TLBI/CFGI + CMD_SYNC twice)" } else { "" }
    ));
    let msi = i.msi_region();
    out.push(format!("reserved: software MSI window {:#x}..={:#x}", msi.start, msi.start + msi.length - 1));
    out
}

/// ARM's coherency outcome for one master.
pub fn device_coherency(unit: &SmmuIommu, enforced: bool) -> Vec<String> {
    let i = unit.info();
    let mut out = vec![format!(
        "coherency: DMA {} (COHACC); IOMMU_CACHE mappings are Normal write-back, inner shareable",
        if i.coherent() { "snoops the CPU caches" } else { "does NOT snoop the CPU caches" }
    )];
    if enforced {
        out.push(
            "  enforced coherent: the root complex is CANWBS (always write-back, PCIe No Snoop ignored): \
             no cache maintenance is ever needed"
                .to_string(),
        );
    } else {
        out.push(
            "  NOT enforced coherent: No Snoop DMA bypasses the caches, so the guest must do cache \
             maintenance for it (or clear Enable No Snoop)"
                .to_string(),
        );
    }
    if i.nesting() {
        out.push(format!(
            "  nested guests: {}",
            if i.s2fwb() {
                "S2FWB forces stage 2 write-back: a guest's stage 1 cannot make memory non-cacheable"
            } else if enforced {
                "no S2FWB, but CANWBS keeps the guest's non-cacheable stage 1 coherent"
            } else {
                "no S2FWB and no CANWBS: the driver refuses a vIOMMU"
            }
        ));
    }
    out
}
