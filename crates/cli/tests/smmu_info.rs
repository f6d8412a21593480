//! `uiommufd info` for an Arm SMMUv3: registers decoded, the driver's view,
//! and ARM's coherency outcome.

use std::process::Command;

fn info(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd")).arg("info").args(args).output().expect("run uiommufd info");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn has_all(out: &str, needles: &[&str]) {
    for needle in needles {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn the_default_smmu() {
    let (ok, out, err) = info(&["--iommu", "smmuv3", "--registers"]);
    assert!(ok, "{err}");
    has_all(
        &out,
        &[
            "IOMMU: Arm SMMUv3.2",
            "arm-smmu-v3: oas 48-bit (features 0x01f897f7)",
            "nesting: yes",
            "SubstreamID 20 bits",
            "nesting parent (stage 2): 48-bit input, 48-bit output, 4 levels from level 0, pages 4K 2M 1G, S2FWB",
            "IOMMU_CAP_CACHE_COHERENCY yes",
            "vIOMMU: ARM_SMMUV3",
            "SMMU_IDR0 0x0d4f76bb",
            "COHACC",
            "NOT enforced coherent",
            "S2FWB forces stage 2 write-back",
        ],
    );
}

#[test]
fn pasted_registers_of_an_mmu700_r0p0() {
    // Raw IDRs as IOMMU_GET_HW_INFO reports them: MMU-700 r0p0 has the
    // CMDQ_FORCE_SYNC erratum, so the driver gives no nesting.
    let (ok, out, err) =
        info(&["--iommu", "smmuv3:idr0=0x0d4f76bb,idr1=0x0e739d10,idr3=0x1504,idr5=0x55,iidr=0x4870043b"]);
    assert!(ok, "{err}");
    has_all(&out, &["Arm MMU-700 r0p0", "nesting: no", "vIOMMU: none"]);
}

#[test]
fn coherency_outcomes() {
    let (ok, out, _) = info(&["--iommu", "smmuv3:coherent=0"]);
    assert!(ok);
    has_all(&out, &["IDR0.COHACC 0 -> IOMMU_CAP_CACHE_COHERENCY no (iommufd refuses to bind its devices)"]);
    let (ok, out, _) = info(&["--iommu", "smmuv3:canwbs=1,fwb=0"]);
    assert!(ok);
    has_all(&out, &["enforced coherent: the root complex is CANWBS", "no S2FWB, but CANWBS", "vIOMMU: ARM_SMMUV3"]);
    let (ok, out, _) = info(&["--iommu", "smmuv3:fwb=0"]);
    assert!(ok);
    has_all(&out, &["the driver refuses a vIOMMU", "vIOMMU: none"]);
    let (ok, _, err) = info(&["--iommu", "smmuv3:fwb=2"]);
    assert!(!ok && err.contains("fwb=2: expected 0 or 1"), "{err}");
}

#[test]
fn a_tegra241_cmdqv() {
    let (ok, out, err) = info(&["--iommu", "smmuv3:cmdqv=1,tegra264=1"]);
    assert!(ok, "{err}");
    has_all(
        &out,
        &[
            "vIOMMU: ARM_SMMUV3, TEGRA241_CMDQV",
            "Tegra241 CMDQV: PARAM 0x4241 (version 1, 4 VINTFs, 4 VCMDQs per VINTF, 16 StreamID mappings per VINTF)",
            "flags 0x1 (ERRATA_REPEAT_TLBI_CFGI",
        ],
    );
}
