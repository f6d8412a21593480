//! `uiommufd info` decodes what the platform specification describes.

use std::process::Command;

fn info(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd")).arg("info").args(args).output().expect("run uiommufd info");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_client_unit_from_its_boot_line() {
    // A laptop's integrated-graphics unit: 39-bit, legacy mode, no snoop
    // control.
    let (ok, out, err) = info(&["--iommu", "vtd:cap=d2008c22260286,ecap=f42", "--device", "dma-engine:pasid=0"]);
    assert!(ok, "{err}");
    for needle in [
        "cap d2008c22260286 ecap f42",
        "scalable mode: no",
        "snoop control (SC): no",
        "39 address bits",
        "second-stage page sizes: 4K 2M 1G",
        "/dev/vfio/devices/vfio0 (char 511:0)",
        "NOT enforced coherent",
        "wbinvd: must be executed",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn the_default_unit_enforces_coherency_and_decodes_registers() {
    let (ok, out, err) = info(&["--registers", "--device", "dma-engine", "--device", "dma-engine"]);
    assert!(ok, "{err}");
    for needle in
        ["snoop control (SC): yes", "SAGAW", "wbinvd: can be a no-op", "device 1 (dma-engine) at 0000:00:05.0"]
    {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn a_bad_specification_says_what_is_wrong() {
    let (ok, _, err) = info(&["--iommu", "vtd:sc=maybe"]);
    assert!(!ok);
    assert!(err.contains("sc=maybe: expected 0 or 1"), "{err}");
}
