//! `uiommufd demo` walks the main path and succeeds on a fresh machine.

use std::process::Command;

#[test]
fn demo_walks_the_main_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd")).arg("demo").output().expect("run uiommufd demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "IOMMU_IOAS_ALLOC",
        "IOMMU_IOAS_MAP 32 KiB of user memory",
        "every IOVA maps the page behind our buffer",
        "every page pinned exactly once",
        "32768 bytes unmapped",
        "EBUSY",
        "both landed in this program's memory",
        "write fault at IOVA",
        "a guest's wbinvd can be a no-op",
        "a guest's wbinvd must be executed",
        // ARM's outcome beside Intel's.
        "AttrIndx 1 (Normal write-back), SH inner shareable",
        "the guest needs cache maintenance",
        "coherent whatever No Snoop says (CANWBS",
        "EINVAL: no IOMMU_CAP_CACHE_COHERENCY",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}
