//! `uiommufd bench`: the Arm SMMUv3 model's hot paths, each beside the
//! VT-d model's same case in the same run (the targets: no worse
//! than VT-d's). Nested translations go through `&dyn Domain` as the DMA
//! path calls them; guest tables live in a word map standing for physical
//! memory.

use std::hint::black_box;

use uiommufd_hw::device::{IommuDevice, PagingRequest};
use uiommufd_hw::smmuv3::{SmmuDevice, SmmuIommu, SmmuRegs};
use uiommufd_hw::{Access, Domain, Prot};

use crate::bench::{map_unmap_256, measure, Row, Target};
use crate::bench_guest::{smmu_nested, vtd_domain, vtd_nested, HOST, IOVA, K4, TARGET_GPA};

/// Nanoseconds per translation of `iova` (hit after the first).
pub(crate) fn hit(d: &dyn Domain, iters: u64) -> f64 {
    // Both models through a real virtual call, as the DMA path makes it.
    let d = black_box(d);
    let t = d.translate(IOVA, Access::Read).expect("the guest maps the IOVA");
    assert_eq!(t.paddr, HOST + TARGET_GPA);
    let mut i = 0u64;
    measure(iters, || {
        i = i.wrapping_add(8);
        black_box(d.translate(black_box(IOVA + (i & 0xff8)), Access::Read).ok());
    })
}

/// Nanoseconds per translation over 1024 mapped 4 KiB pages (a warm walk
/// of the host's own table; these domains have no TLB of their own).
fn walk(d: &dyn Domain, iters: u64) -> f64 {
    let d = black_box(d);
    d.map_pages(0, HOST, K4, 1024, Prot::READ | Prot::WRITE | Prot::CACHE).expect("map");
    let mut i = 0u64;
    let ns = measure(iters, || {
        i = i.wrapping_add(1);
        black_box(d.translate(black_box((i & 1023) << 12), Access::Read).ok());
    });
    d.unmap_pages(0, K4, 1024);
    ns
}

pub fn bench_smmu(quick: bool) -> Vec<Row> {
    let iters = if quick { 200_000 } else { 2_000_000 };
    let (smmu, _keep_smmu) = smmu_nested();
    let (vtd, _keep_vtd) = vtd_nested();
    let (smmu_hit, vtd_hit) = (hit(&*smmu, iters), hit(&*vtd, iters));

    let unit = SmmuIommu::new(SmmuRegs::default()).expect("SMMU");
    let master = SmmuDevice::new(&unit, "0000:00:04.0", 0x20).expect("master");
    let s1 = master.alloc_paging(&PagingRequest::default()).expect("stage 1 domain");
    let vtd_sl = vtd_domain();
    let (smmu_walk, vtd_walk) = (walk(&*s1, iters), walk(&vtd_sl, iters));
    let (smmu_map, smmu_unmap) = map_unmap_256(&*s1, quick);
    let (vtd_map, vtd_unmap) = map_unmap_256(&vtd_sl, quick);
    vec![
        Row::new("SMMUv3 nested: TLB hit (dyn Domain)", smmu_hit)
            .vs("VT-d nested IOTLB hit", vtd_hit)
            .target(Target::MinRatio(0.9)),
        Row::new("SMMUv3 stage 1: warm 4-level walk", smmu_walk)
            .vs("VT-d second stage", vtd_walk)
            .target(Target::MinRatio(0.9)),
        Row::new("SMMUv3 stage 1: map 256 x 4 KiB (one call)", smmu_map)
            .vs("VT-d second stage", vtd_map)
            .target(Target::MaxNs(120.0)),
        Row::new("SMMUv3 stage 1: unmap 256 x 4 KiB (one call)", smmu_unmap)
            .vs("VT-d second stage", vtd_unmap)
            .target(Target::MaxNs(100.0)),
    ]
}
