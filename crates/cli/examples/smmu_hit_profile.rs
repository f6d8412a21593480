//! Loops of the `bench_smmu` rows' translations for instruction profiles:
//! the SMMUv3 nested TLB hit and stage 1 warm walk beside VT-d's nested
//! IOTLB hit and second-stage walk (docs/BENCHMARKS.md, "Arm SMMUv3
//! model, beside VT-d in the same run"):
//!
//! ```sh
//! cargo build --release -p uiommufd --example smmu_hit_profile
//! valgrind --tool=callgrind --toggle-collect='*smmu_hit_profile::run_loop*' \
//!     target/release/examples/smmu_hit_profile smmu_hit 2000
//! ```
//!
//! Modes: `smmu_hit`, `vtd_hit`, `smmu_walk`, `vtd_walk`; per translation =
//! (count at N=2000 - count at N=1000) / 1000.
use std::hint::black_box;

use uiommufd_hw::device::{IommuDevice, PagingRequest};
use uiommufd_hw::smmuv3::{SmmuDevice, SmmuIommu, SmmuRegs};
use uiommufd_hw::{Access, Domain, Prot};

// The bench's own set-ups (the example uses some of them).
#[allow(dead_code)]
#[path = "../src/bench_guest.rs"]
mod bench_guest;
use bench_guest::{smmu_nested, vtd_domain, vtd_nested, HOST, IOVA, K4, TARGET_GPA};

/// `n` translations of `addr(i)` for i = 1, 2, ... (as the bench's
/// rows make them), timed when `n` is large.
#[inline(never)]
fn run_loop(d: &dyn Domain, n: u64, addr: impl Fn(u64) -> u64) {
    let t0 = std::time::Instant::now();
    let d = black_box(d);
    for i in 1..n + 1 {
        black_box(d.translate(black_box(addr(i)), Access::Read).ok());
    }
    if n > 100_000 {
        eprintln!("{:.2} ns", t0.elapsed().as_nanos() as f64 / n as f64);
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    match mode.as_str() {
        "smmu_hit" | "vtd_hit" => {
            let (d, _k) = if mode == "smmu_hit" { smmu_nested() } else { vtd_nested() };
            let t = d.translate(IOVA, Access::Read).expect("maps");
            assert_eq!(t.paddr, HOST + TARGET_GPA);
            run_loop(&*d, n, |i| IOVA + ((i * 8) & 0xff8));
        }
        "smmu_walk" => {
            let unit = SmmuIommu::new(SmmuRegs::default()).expect("SMMU");
            let master = SmmuDevice::new(&unit, "0000:00:04.0", 0x20).expect("master");
            let s1 = master.alloc_paging(&PagingRequest::default()).expect("s1");
            s1.map_pages(0, HOST, K4, 1024, Prot::READ | Prot::WRITE | Prot::CACHE).expect("map");
            run_loop(&*s1, n, |i| (i & 1023) << 12);
        }
        "vtd_walk" => {
            let d = vtd_domain();
            d.map_pages(0, HOST, K4, 1024, Prot::READ | Prot::WRITE | Prot::CACHE).expect("map");
            run_loop(&d, n, |i| (i & 1023) << 12);
        }
        _ => panic!("mode"),
    }
}
