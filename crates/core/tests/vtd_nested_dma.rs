//! Nested translation end to end on the VT-d model: a guest's first-stage
//! table, in guest memory mapped through the parent (second-stage) HWPT,
//! translates the DMA engine's requests; a guest PTE change is invisible
//! until the guest's invalidation reaches the IOTLB through
//! IOMMU_HWPT_INVALIDATE, as on hardware.

mod common;

use common::{GuestRam, PS};

use std::sync::Arc;

use uiommufd_abi as abi;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::hwpt::{self, HwptAllocArgs};
use uiommufd_core::{Iommufd, ObjectId};
use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
use uiommufd_devices::platform::{parse_iommu, IommuModel};
use uiommufd_devices::testing::set_command_bits;
use uiommufd_devices::{DmaEngine, DmaEngineOptions, PciDevice};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::vtd::device::VtdDevice;
use uiommufd_hw::vtd::fl::fspte;
use uiommufd_hw::{UserData, UserDataArray};
use zerocopy::IntoBytes;

/// Guest physical address of guest RAM (an IOVA of the parent HWPT).
const GPA_BASE: u64 = 0x1000_0000;
const GUEST_PAGES: u64 = 16;
/// Guest IOVAs the first-stage table maps.
const RING: u64 = 0x4000_0000;
const SRC: u64 = RING + PS;
const DST: u64 = RING + 2 * PS;

fn gpa(page: u64) -> u64 {
    GPA_BASE + page * PS
}

/// Guest page-table pages and data pages.
const PML4: u64 = 0;
const PDPT: u64 = 1;
const PD: u64 = 2;
const PT: u64 = 3;
const RING_PAGE: u64 = 8;
const SRC_PAGE: u64 = 9;
const DST_A: u64 = 10;
const DST_B: u64 = 11;

const TABLE: u64 = fspte::P | fspte::RW | fspte::US;

/// The guest maps `iova` to guest page `page` (4 KiB leaf, VT-d spec 9.7).
fn guest_map(g: &mut GuestRam, iova: u64, page: u64) {
    let pte = (iova >> 12) & 0x1ff;
    g.set_u64(gpa(PT) + pte * 8, gpa(page) | TABLE);
}

fn run(engine: &DmaEngine, g: &mut GuestRam, slot: u32, d: Descriptor) -> Descriptor {
    g.run(engine, RING_PAGE, slot, d)
}

#[test]
fn guest_first_stage_through_the_dma_engine_with_a_stale_iotlb() {
    let IommuModel::Vtd(unit) = parse_iommu("vtd").unwrap() else { unreachable!() };
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let mut g = GuestRam::new(GPA_BASE, GUEST_PAGES);
    ctx.ioas_map(ioas, 1 | 2 | 4, g.host(), GUEST_PAGES * PS, GPA_BASE).unwrap();

    let vdev: Arc<dyn IommuDevice> = Arc::new(VtdDevice::new(&unit, "0000:00:04.0"));
    let (dev_id, edge) = device::bind(&ctx, vdev).unwrap();
    let dev = Arc::clone(edge.arc());

    // The parent: a NEST_PARENT paging HWPT (second stage, GPA -> HPA).
    let alloc = |pt_id: ObjectId, flags: u32, data_type: u32, bytes: &[u8]| {
        let mut holder = None;
        let mut reader = |out: &mut [u8]| {
            let n = out.len().min(bytes.len());
            out[..n].copy_from_slice(&bytes[..n]);
            Ok(())
        };
        let data = UserData { data_type, len: bytes.len() as u32, reader: &mut reader };
        let p = hwpt::hwpt_alloc(&ctx, &mut holder, HwptAllocArgs { flags, dev_id, pt_id, fault_id: 0, data })?;
        let id = p.id();
        p.publish();
        Ok::<ObjectId, uiommufd_core::Error>(id)
    };
    let parent = alloc(ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, 0, &[]).unwrap();

    // The guest's first-stage table: 4 levels, one PT for the 2 MiB at RING.
    g.set_u64(gpa(PML4) + ((RING >> 39) & 0x1ff) * 8, gpa(PDPT) | TABLE);
    g.set_u64(gpa(PDPT) + ((RING >> 30) & 0x1ff) * 8, gpa(PD) | TABLE);
    g.set_u64(gpa(PD) + ((RING >> 21) & 0x1ff) * 8, gpa(PT) | TABLE);
    guest_map(&mut g, RING, RING_PAGE);
    guest_map(&mut g, SRC, SRC_PAGE);
    guest_map(&mut g, DST, DST_A);

    let s1 = abi::IommuHwptVtdS1 { flags: 0, pgtbl_addr: gpa(PML4), addr_width: 48, __reserved: 0 };
    let nested = alloc(parent, 0, abi::IOMMU_HWPT_DATA_VTD_S1, s1.as_bytes()).unwrap();
    dev.change_pt(&ctx, NO_PASID, nested, false).unwrap();

    let engine = DmaEngine::with_options("dma0", DmaEngineOptions { worker: false, ..Default::default() }).unwrap();
    engine.set_dma_port(DevicePort::new(&dev));
    set_command_bits(&engine, 0x4, true); // Bus Master Enable
    engine.write_reg64(regs::REG_RING_BASE, RING).unwrap();
    engine.write_reg32(regs::REG_RING_SIZE, 8).unwrap();
    engine.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();

    // A copy through the guest's translation lands in guest page DST_A.
    g.page(SRC_PAGE)[..256].copy_from_slice(&[0xa5; 256]);
    let done = run(&engine, &mut g, 0, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_A)[..256], &[0xa5; 256]);

    // The guest points DST at another page but does not invalidate: the
    // IOTLB still holds the old translation, so the device writes the old
    // page (correct hardware behaviour, and the guest's bug).
    guest_map(&mut g, DST, DST_B);
    g.page(SRC_PAGE)[..256].copy_from_slice(&[0x3c; 256]);
    let done = run(&engine, &mut g, 1, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_A)[..256], &[0x3c; 256], "stale translation used until invalidation");
    assert!(g.page(DST_B).iter().all(|&b| b == 0));

    // The guest's invalidation of that page, as IOMMU_HWPT_INVALIDATE.
    let inv = abi::IommuHwptVtdS1Invalidate { addr: DST, npages: 1, flags: 0, __reserved: 0 };
    let inv_bytes = inv.as_bytes().to_vec();
    let mut reader = |_i: u32, out: &mut [u8]| {
        out.copy_from_slice(&inv_bytes[..out.len()]);
        Ok(())
    };
    let mut array = UserDataArray {
        data_type: abi::IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
        entry_len: 24,
        entry_num: 1,
        reader: &mut reader,
    };
    hwpt::invalidate(&ctx, nested, &mut array).unwrap();
    assert_eq!(array.entry_num, 1);

    g.page(SRC_PAGE)[..256].copy_from_slice(&[0x77; 256]);
    let done = run(&engine, &mut g, 2, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_B)[..256], &[0x77; 256], "the new translation after invalidation");
    assert_eq!(&g.page(DST_A)[..256], &[0x3c; 256]);

    // The guest unmaps DST and invalidates: the device's write faults.
    g.set_u64(gpa(PT) + ((DST >> 12) & 0x1ff) * 8, 0);
    let mut array = UserDataArray {
        data_type: abi::IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
        entry_len: 24,
        entry_num: 1,
        reader: &mut reader,
    };
    hwpt::invalidate(&ctx, nested, &mut array).unwrap();
    let done = run(&engine, &mut g, 3, Descriptor::copy(DST, SRC, 16));
    assert_eq!((done.status, done.result), (status::WRITE_FAULT, DST));
    dev.detach(&ctx, NO_PASID);
    drop(edge);
}
