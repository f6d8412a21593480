//! `uiommufd bench`: the AMD-Vi model's hot paths, each beside the VT-d
//! model's same case in the same run (as the SMMUv3 rows are). Nested
//! translations go through `&dyn Domain` as the DMA path calls them; guest
//! tables live in the same word map standing for physical memory, with the
//! same guest layout as the VT-d and SMMUv3 nested cases (the x86-64 table
//! is VT-d's first-stage format too).

use std::hint::black_box;
use std::sync::{Arc, Weak};

use uiommufd_abi::{self as abi, Errno};
use uiommufd_hw::amd::{cmd, dte, AmdDevice, AmdIommu, AmdRegs, DriverParams};
use uiommufd_hw::device::{IommuDevice, PagingRequest, ViommuCore};
use uiommufd_hw::vtd::fl::fspte;
use uiommufd_hw::{Access, Domain, Prot};
use zerocopy::IntoBytes;

use crate::bench::{map_unmap_256, measure, Row, Target};
use crate::bench_guest::{user_data, vtd_domain, vtd_nested, Mem, HOST, IOVA, RAM};
use crate::bench_smmu::hit;

const K4: u64 = 1 << 12;
/// The guest's GCR3 table (one level) and its table root.
const GCR3: u64 = 0x10_0000;
const CR3: u64 = 0x20_0000;

/// No vIOMMU core: the AMD vIOMMU never calls it.
struct NoCore;

impl ViommuCore for NoCore {
    fn report_event(&self, _: u32, _: &[u8]) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    fn find_dev(&self, _: u64) -> Option<Arc<dyn IommuDevice>> {
        None
    }
    fn vdev_id(&self, _: &dyn IommuDevice) -> Option<u64> {
        None
    }
    fn alloc_mmap(&self, _: u64) -> Result<u64, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}

/// An AMD nested domain (the follow-up's wiring: Linux 7.3 has none),
/// attached: a guest DTE with GIoV over a one-level GCR3 table whose
/// PASID 0 entry points at the guest's 4-level x86-64 table.
fn amd_nested() -> (Arc<dyn Domain>, Arc<AmdIommu>, u16, Box<dyn std::any::Any>) {
    let mem = Mem::default();
    let params = DriverParams { nested_alloc: true, la57: false, ..DriverParams::default() };
    let unit = AmdIommu::with_params(AmdRegs::default(), params).expect("AMD IOMMU");
    unit.set_phys_reader(mem.reader());
    let dev: Arc<dyn IommuDevice> = Arc::new(AmdDevice::new(&unit, "0000:00:04.0", 0x20));
    let parent = dev.alloc_paging(&PagingRequest { nest_parent: true, ..Default::default() }).expect("parent");
    uiommufd_hw::map(&*parent, 0, HOST, RAM, Prot::READ | Prot::WRITE, 1 << 21).expect("host table");
    let core: Arc<dyn ViommuCore> = Arc::new(NoCore);
    let weak: Weak<dyn ViommuCore> = Arc::downgrade(&core);
    let init = dev.viommu_init(1, &parent, None, weak).expect("vIOMMU");
    mem.set(GCR3, CR3 | 1);
    let bits = fspte::P | fspte::RW | fspte::US | fspte::A;
    mem.four_levels(CR3, IOVA, bits, bits);
    let gdte = abi::IommuHwptAmdGuest {
        dte: [
            dte::V | dte::GV | dte::GIOV | (GCR3 >> 12 & 7) << dte::GCR3_14_12_SHIFT,
            3 | (GCR3 >> 15 & 0xffff) << dte::GCR3_30_15_SHIFT,
            0,
            0,
        ],
    };
    let nested = user_data(abi::IOMMU_HWPT_DATA_AMD_GUEST, gdte.as_bytes(), |d| init.driver.alloc_domain_nested(0, d))
        .expect("nested domain");
    dev.check_attach(&*nested).expect("attach");
    let hdom = AmdDevice::of(&dev).map(|d| d.dte().domid()).unwrap_or(0);
    (nested, unit, hdom, Box::new((dev, parent, core, init.driver)))
}

pub fn bench_amd(quick: bool) -> Vec<Row> {
    let iters = if quick { 200_000 } else { 2_000_000 };
    let (amd, unit, hdom, _keep_amd) = amd_nested();
    let (vtd, _keep_vtd) = vtd_nested();
    let (amd_hit, vtd_hit) = (hit(&*amd, iters), hit(&*vtd, iters));
    // A miss: the IOTLB entry dropped by the invalidation a parent change
    // sends, then the whole walk (GCR3 entry, four guest levels, each read
    // and the output through the host table).
    let flush = [cmd::inv_iommu_pages(0, u64::MAX, hdom, 0, 0)];
    let amd_miss = measure(iters / 20, || {
        unit.issue(&flush);
        black_box(amd.translate(black_box(IOVA), Access::Read).ok());
    });

    // v1 paging domain: map/unmap like VT-d's rows (256 pages of 4 KiB in
    // one call: the caller picks the page size), and a warm walk of the
    // table (the IOTLB is the domain's; the walk is measured below it).
    let v1 = AmdIommu::new(AmdRegs::default()).expect("AMD IOMMU").alloc_v1(false, false).expect("v1 domain");
    let vtd_sl = vtd_domain();
    let (amd_map, amd_unmap) = map_unmap_256(&*v1, quick);
    let (vtd_map, vtd_unmap) = map_unmap_256(&vtd_sl, quick);
    v1.map_pages(0, HOST, K4, 1024, Prot::READ | Prot::WRITE).expect("map");
    let mut i = 0u64;
    let amd_walk = measure(iters, || {
        i = i.wrapping_add(1);
        black_box(v1.table().translate(black_box((i & 1023) << 12), Access::Read).ok());
    });
    vtd_sl.map_pages(0, HOST, K4, 1024, Prot::READ | Prot::WRITE).expect("map");
    let vtd_walk = measure(iters, || {
        i = i.wrapping_add(1);
        black_box(vtd_sl.translate(black_box((i & 1023) << 12), Access::Read).ok());
    });
    let v1_hit = measure(iters, || {
        black_box(v1.translate(black_box(0x5008), Access::Read).ok());
    });
    vec![
        Row::new("AMD nested: IOTLB hit (dyn Domain)", amd_hit)
            .vs("VT-d nested IOTLB hit", vtd_hit)
            .target(Target::MinRatio(0.9)),
        Row::new("AMD nested: INVALIDATE_IOMMU_PAGES, then the walk (GCR3 + 4 guest levels via the host)", amd_miss),
        Row::new("AMD v1: IOTLB hit", v1_hit).vs("VT-d nested IOTLB hit", vtd_hit),
        Row::new("AMD v1: warm 4-level walk", amd_walk).vs("VT-d second stage", vtd_walk).target(Target::MinRatio(0.9)),
        Row::new("AMD v1: map 256 x 4 KiB (one call, 6-level tree)", amd_map).vs("VT-d second stage", vtd_map),
        Row::new("AMD v1: unmap 256 x 4 KiB (one call, with its flush)", amd_unmap).vs("VT-d second stage", vtd_unmap),
    ]
}
