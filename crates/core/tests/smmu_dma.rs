//! The Arm SMMUv3 model through the engine: ARM's coherency contract
//! (COHACC for binding, CANWBS for enforcement, IOMMU_CACHE as write-back
//! attributes in the leaves), and dirty tracking with HTTU/DBM reported by
//! IOMMU_HWPT_GET_DIRTY_BITMAP.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use uiommufd_abi::{self as abi, Errno};
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::hwpt::{self, HwptAllocArgs, HwptPaging};
use uiommufd_core::io_pagetable::DirtyBitmap;
use uiommufd_core::{Iommufd, ObjectId};
use uiommufd_devices::platform::Platform;
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::dma::{DmaAttrs, DmaPort};
use uiommufd_hw::smmuv3::lpae::desc;
use uiommufd_hw::smmuv3::SmmuDomain;
use uiommufd_hw::UserData;

const PS: u64 = 4096;
const IOVA: u64 = 1 << 30;
const PAGES: u64 = 64;

/// The first device of `smmuv3[:opts]`.
fn master(spec: &str) -> Arc<dyn IommuDevice> {
    Arc::clone(&Platform::new(spec, "dma-engine").unwrap().devices[0].iommu)
}

fn alloc(ctx: &Iommufd, dev_id: ObjectId, pt_id: ObjectId, flags: u32) -> Result<ObjectId, uiommufd_core::Error> {
    let mut holder = None;
    let mut reader = |_: &mut [u8]| Ok(());
    let data = UserData { data_type: 0, len: 0, reader: &mut reader };
    let p = hwpt::hwpt_alloc(ctx, &mut holder, HwptAllocArgs { flags, dev_id, pt_id, fault_id: 0, data })?;
    let id = p.id();
    p.publish();
    Ok(id)
}

/// The SMMU domain behind a paging HWPT.
fn leaf(ctx: &Iommufd, hwpt: ObjectId, iova: u64) -> u64 {
    let h = ctx.get::<HwptPaging>(hwpt).unwrap();
    let d = h.domain().as_any().downcast_ref::<SmmuDomain>().expect("an SMMUv3 domain");
    d.entry_at(iova).expect("mapped").0
}

#[test]
fn coherency_is_cohacc_for_binding_and_canwbs_for_enforcement() {
    // IDR0.COHACC clear: iommufd refuses the device (arm_smmu_capable()).
    let ctx = Iommufd::new();
    assert_eq!(device::bind(&ctx, master("smmuv3:coherent=0")).err().unwrap().errno, Errno::EINVAL);
    assert!(ctx.objects().is_empty());

    let ioas = ctx.ioas_alloc().unwrap();
    ctx.vfio_ioas_set(ioas).unwrap();
    let cc = || ctx.vfio_check_extension(uiommufd_abi::vfio::VFIO_DMA_CC_IOMMU as u64).unwrap();
    let mem = vec![0u8; (3 * PS) as usize];
    let host = (mem.as_ptr() as u64).next_multiple_of(PS);
    ctx.ioas_map(ioas, 1 | 2 | 4, host, PS, IOVA).unwrap();

    // A CANWBS master: its HWPT enforces (arm_smmu_enforce_cache_coherency
    // with no master attached yet), its No Snoop DMA is coherent.
    let (_, canwbs) = device::bind(&ctx, master("smmuv3:canwbs=1")).unwrap();
    let hwpt = canwbs.arc().change_pt(&ctx, NO_PASID, ioas, false).unwrap();
    assert!(ctx.get::<HwptPaging>(hwpt).unwrap().enforce_cache_coherency());
    assert!(canwbs.arc().enforced_coherent());
    assert_eq!(cc(), 1);
    // IOMMU_CACHE (iommufd always maps with it): stage 1 AttrIndx 1, the
    // driver's Normal write-back MAIR slot, inner shareable.
    let e = leaf(&ctx, hwpt, IOVA);
    assert_eq!((e & desc::ATTRINDX_MASK) >> desc::ATTRINDX_SHIFT, 1);
    assert_eq!(e & desc::SH_MASK, desc::SH_IS);
    let port = DevicePort::new(canwbs.arc());
    let ns = DmaAttrs { no_snoop: true, ..Default::default() };
    port.dma_write(IOVA, &[1; 64], ns).unwrap();
    assert_eq!(port.stats().noncoherent_bytes.load(Ordering::Relaxed), 0);

    // A master of a root complex without CANWBS: the enforcing HWPT refuses
    // it (arm_smmu_attach_prepare), so it gets its own, non-enforcing one;
    // its No Snoop writes are not coherent.
    let (_, plain) = device::bind(&ctx, master("smmuv3")).unwrap();
    let hwpt2 = plain.arc().change_pt(&ctx, NO_PASID, ioas, false).unwrap();
    assert_ne!(hwpt2, hwpt);
    assert!(!ctx.get::<HwptPaging>(hwpt2).unwrap().enforce_cache_coherency());
    assert_eq!(cc(), 0);
    let port = DevicePort::new(plain.arc());
    port.dma_write(IOVA, &[2; 64], ns).unwrap();
    assert_eq!(port.stats().noncoherent_bytes.load(Ordering::Relaxed), 64);
    plain.arc().detach(&ctx, NO_PASID);
    canwbs.arc().detach(&ctx, NO_PASID);
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    drop(mem);
}

#[test]
fn dbm_dirty_tracking_through_get_dirty_bitmap() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let mem = vec![0u8; ((PAGES + 1) * PS) as usize];
    let host = (mem.as_ptr() as u64).next_multiple_of(PS);
    ctx.ioas_map(ioas, 1 | 2 | 4, host, PAGES * PS, IOVA).unwrap();
    let (dev_id, edge) = device::bind(&ctx, master("smmuv3")).unwrap();
    // arm_smmu_domain_alloc_paging_flags(): dirty tracking is stage 1 only;
    // with NEST_PARENT (stage 2) it is EOPNOTSUPP.
    let flags = abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING | abi::IOMMU_HWPT_ALLOC_NEST_PARENT;
    assert_eq!(alloc(&ctx, dev_id, ioas, flags).err().unwrap().errno, Errno::EOPNOTSUPP);
    let hwpt_id = alloc(&ctx, dev_id, ioas, abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
    edge.arc().change_pt(&ctx, NO_PASID, hwpt_id, false).unwrap();
    // Writable leaves carry DBM.
    assert_eq!(leaf(&ctx, hwpt_id, IOVA) & desc::DBM, desc::DBM);
    let port = DevicePort::new(edge.arc());
    let attrs = DmaAttrs::default();

    port.dma_write(IOVA + 3 * PS, &[1; 8], attrs).unwrap();
    hwpt::set_dirty_tracking(&ctx, hwpt_id, true).unwrap();
    // Enabling cleared everything: every leaf is writable-clean now.
    assert_eq!(leaf(&ctx, hwpt_id, IOVA + 3 * PS) & (desc::AP_RDONLY | desc::DBM), desc::AP_RDONLY | desc::DBM);
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
    bitmap[0] = 0;
    hwpt::get_dirty_bitmap(&ctx, hwpt_id, &b).unwrap();
    assert_eq!(bitmap[0], 0, "read and clear");
    // NO_CLEAR leaves the state for the next harvest.
    port.dma_write(IOVA + 9 * PS, &[4; 8], attrs).unwrap();
    let keep = DirtyBitmap { no_clear: true, ..b };
    hwpt::get_dirty_bitmap(&ctx, hwpt_id, &keep).unwrap();
    hwpt::get_dirty_bitmap(&ctx, hwpt_id, &b).unwrap();
    assert_eq!(bitmap[0], 1 << 9);
    edge.arc().detach(&ctx, NO_PASID);
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    drop(mem);

    // Without HTTU dirty state the SMMU has no dirty tracking at all.
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let (dev_id, _edge) = device::bind(&ctx, master("smmuv3:httu=1")).unwrap();
    let e = alloc(&ctx, dev_id, ioas, abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING).err().unwrap();
    assert_eq!(e.errno, Errno::EOPNOTSUPP);
}
