//! Device writes set dirty state while dirty tracking is on, as a live
//! migration relies on: the VT-d model's second stage sets the D bit of each
//! leaf a DMA write goes through (SSADS), and IOMMU_HWPT_GET_DIRTY_BITMAP
//! reports exactly those pages.

use std::sync::Arc;

use uiommufd_abi as abi;
use uiommufd_core::device::{self, Device, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::hwpt::{self, HwptAllocArgs};
use uiommufd_core::io_pagetable::DirtyBitmap;
use uiommufd_core::object::Dep;
use uiommufd_core::{Iommufd, ObjectId};
use uiommufd_devices::platform::{parse_iommu, IommuModel};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::dma::{DmaAttrs, DmaPort};
use uiommufd_hw::vtd::device::VtdDevice;
use uiommufd_hw::UserData;

const PS: u64 = 4096;
const IOVA: u64 = 1 << 30;
const PAGES: u64 = 64;

/// Bind `dev`, allocate a dirty-tracking-capable paging HWPT on `ioas` for
/// it and attach it: (the device, the HWPT, a DMA port of the device).
fn attach_dirty_capable(
    ctx: &Arc<Iommufd>,
    dev: Arc<dyn IommuDevice>,
    ioas: ObjectId,
) -> (Dep<Device>, ObjectId, Arc<DevicePort>) {
    let (dev_id, edge) = device::bind(ctx, dev).unwrap();
    let mut holder = None;
    let mut reader = |_: &mut [u8]| Ok(());
    let args = HwptAllocArgs {
        flags: abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
        dev_id,
        pt_id: ioas,
        fault_id: 0,
        data: UserData { data_type: 0, len: 0, reader: &mut reader },
    };
    let p = hwpt::hwpt_alloc(ctx, &mut holder, args).unwrap();
    let hwpt_id = p.id();
    p.publish();
    drop(holder);
    edge.arc().change_pt(ctx, NO_PASID, hwpt_id, false).unwrap();
    let port = DevicePort::new(edge.arc());
    (edge, hwpt_id, port)
}

#[test]
fn dma_writes_are_reported_dirty_and_reads_are_not() {
    let IommuModel::Vtd(unit) = parse_iommu("vtd:ssads=1").unwrap() else { unreachable!() };
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let mem = vec![0u8; ((PAGES + 1) * PS) as usize];
    let host = (mem.as_ptr() as u64).next_multiple_of(PS);
    ctx.ioas_map(ioas, 1 | 2 | 4, host, PAGES * PS, IOVA).unwrap();
    let vdev: Arc<dyn IommuDevice> = Arc::new(VtdDevice::new(&unit, "0000:00:04.0"));
    let (edge, hwpt_id, port) = attach_dirty_capable(&ctx, vdev, ioas);
    let attrs = DmaAttrs::default();

    // Before tracking starts, writes leave no trace.
    port.dma_write(IOVA + 3 * PS, &[1; 8], attrs).unwrap();
    hwpt::set_dirty_tracking(&ctx, hwpt_id, true).unwrap();
    // Writes to pages 5, 6 (one request across the boundary) and 40; a
    // read of page 20; a copy from page 50 to page 60.
    port.dma_write(IOVA + 6 * PS - 4, &[2; 8], attrs).unwrap();
    port.dma_write(IOVA + 40 * PS + 100, &[3; 1], attrs).unwrap();
    let mut r = [0u8; 64];
    port.dma_read(IOVA + 20 * PS, &mut r, attrs).unwrap();
    port.dma_copy(IOVA + 60 * PS, IOVA + 50 * PS, 64, attrs).unwrap();

    let mut bitmap = [0u64; 1];
    let b = DirtyBitmap {
        iova: IOVA,
        length: PAGES * PS,
        page_size: PS,
        data: bitmap.as_mut_ptr() as u64,
        no_clear: false,
    };
    hwpt::get_dirty_bitmap(&ctx, hwpt_id, &b).unwrap();
    let want = (1u64 << 5) | (1 << 6) | (1 << 40) | (1 << 60);
    assert_eq!(bitmap[0], want, "dirty pages {:#x}, expected {want:#x}", bitmap[0]);
    // Read-and-clear: a second harvest is empty.
    bitmap[0] = 0;
    hwpt::get_dirty_bitmap(&ctx, hwpt_id, &b).unwrap();
    assert_eq!(bitmap[0], 0);
    // Once tracking is off, writes are not recorded.
    hwpt::set_dirty_tracking(&ctx, hwpt_id, false).unwrap();
    port.dma_write(IOVA + 7 * PS, &[4; 8], attrs).unwrap();
    hwpt::set_dirty_tracking(&ctx, hwpt_id, true).unwrap();
    hwpt::get_dirty_bitmap(&ctx, hwpt_id, &b).unwrap();
    assert_eq!(bitmap[0], 0);
    edge.arc().detach(&ctx, NO_PASID);
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    drop(mem);
}

#[test]
fn the_mock_iommu_marks_device_writes_dirty_too() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let iova = uiommufd_abi::test_cmd::MOCK_APERTURE_START;
    let mem = vec![0u8; ((PAGES + 1) * PS) as usize];
    let host = (mem.as_ptr() as u64).next_multiple_of(PS);
    // 7.3's mock maps physically contiguous memory with large pages, each
    // dirty as a whole; page by page, the bitmap shows single pages.
    ctx.option(abi::IOMMU_OPTION_HUGE_PAGES, abi::IOMMU_OPTION_OP_SET, ioas, 0).unwrap();
    ctx.ioas_map(ioas, 1 | 2 | 4, host, PAGES * PS, iova).unwrap();
    let mock: Arc<dyn IommuDevice> = Arc::new(uiommufd_hw::mock::MockDevice::new(0).unwrap());
    let (edge, hwpt_id, port) = attach_dirty_capable(&ctx, mock, ioas);
    hwpt::set_dirty_tracking(&ctx, hwpt_id, true).unwrap();
    // One write spanning pages 2 and 3 (and several 2 KiB mock entries).
    port.dma_write(iova + 3 * PS - 100, &[9; 200], DmaAttrs::default()).unwrap();
    port.dma_copy(iova + 33 * PS, iova, 16, DmaAttrs::default()).unwrap();
    let mut bitmap = [0u64; 1];
    let b = DirtyBitmap { iova, length: PAGES * PS, page_size: PS, data: bitmap.as_mut_ptr() as u64, no_clear: false };
    hwpt::get_dirty_bitmap(&ctx, hwpt_id, &b).unwrap();
    assert_eq!(bitmap[0], (1 << 2) | (1 << 3) | (1 << 33));
    edge.arc().detach(&ctx, NO_PASID);
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    drop(mem);
}

/// A page written again after a harvest is dirty again, though the port
/// cached its translation before the harvest (the harvest makes the
/// port's cache stale, so the write walks and sets the D bit anew), for
/// 4 KiB and 2 MiB leaves.
#[test]
fn a_page_written_after_a_harvest_is_dirty_again() {
    let IommuModel::Vtd(unit) = parse_iommu("vtd:ssads=1").unwrap() else { unreachable!() };
    const MIB2: u64 = 2 << 20;
    for piece in [PS, MIB2] {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        let mem = vec![0u8; (2 * MIB2) as usize];
        let host = (mem.as_ptr() as u64).next_multiple_of(MIB2);
        for off in (0..MIB2).step_by(piece as usize) {
            ctx.ioas_map(ioas, 1 | 2 | 4, host + off, piece, IOVA + off).unwrap();
        }
        let vdev: Arc<dyn IommuDevice> = Arc::new(VtdDevice::new(&unit, "0000:00:04.0"));
        let (edge, hwpt_id, port) = attach_dirty_capable(&ctx, vdev, ioas);
        hwpt::set_dirty_tracking(&ctx, hwpt_id, true).unwrap();
        let mut bitmap = [0u64; 1];
        let b = DirtyBitmap {
            iova: IOVA,
            length: PAGES * PS,
            page_size: PS,
            data: bitmap.as_mut_ptr() as u64,
            no_clear: false,
        };
        // With 2 MiB leaves, the whole leaf is dirty as one.
        let want = if piece == PS { 1u64 << 5 } else { u64::MAX };
        for round in 0..3 {
            for _ in 0..4 {
                port.dma_write(IOVA + 5 * PS, &[round; 8], DmaAttrs::default()).unwrap();
            }
            bitmap[0] = 0;
            hwpt::get_dirty_bitmap(&ctx, hwpt_id, &b).unwrap();
            assert_eq!(bitmap[0], want, "round {round}, {piece:#x} leaves");
        }
        edge.arc().detach(&ctx, NO_PASID);
        ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
        drop(mem);
    }
}
