//! The cache-coherency contract, case by case, as mainline settled it:
//!
//! - bind refuses a device whose IOMMU cannot do cache-coherent DMA;
//! - a paging HWPT made for a device whose IOMMU can force snooping
//!   enforces coherency from before its first map; one made for a device
//!   that cannot does not, and an enforcing HWPT refuses devices that cannot
//!   enforce (the driver's attach check), so the automatic domain choice
//!   gives such a device a HWPT of its own;
//! - VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) on the compat IOAS is true only
//!   while every HWPT of it enforces;
//! - per device, the VMM's question "can a guest's wbinvd be a no-op" is
//!   answered by `Device::enforced_coherent` (the kernel's
//!   `vfio_file_enforced_coherent`);
//! - what the DMA engine's writes do: with No Snoop enabled in its Device
//!   Control register, into a non-enforcing domain they are non-coherent.
//!
//! Platforms: a VT-d unit with snoop control (ECAP.SC), one without (the
//! integrated-graphics IOMMU of the original discussion), and the selftest
//! mock (coherent DMA, no snoop control).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use uiommufd_abi::Errno;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::hwpt::HwptPaging;
use uiommufd_core::Iommufd;
use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
use uiommufd_devices::platform::{parse_iommu, IommuModel};
use uiommufd_devices::testing::{set_command_bits, set_no_snoop};
use uiommufd_devices::{DmaEngine, DmaEngineOptions, PciDevice};
use uiommufd_hw::device::{Cap, IommuDevice, PagingRequest};
use uiommufd_hw::mock::MockDevice;
use uiommufd_hw::vtd::device::VtdDevice;
use uiommufd_hw::Domain;

const PS: u64 = 4096;

fn vtd_device(opts: &str, bdf: &str) -> Arc<dyn IommuDevice> {
    let IommuModel::Vtd(unit) = parse_iommu(opts).unwrap() else { unreachable!() };
    Arc::new(VtdDevice::new(&unit, bdf))
}

/// An IOMMU whose DMA is not cache coherent (as an SMMUv3 without
/// ARM_SMMU_FEAT_COHERENCY reports).
struct NonCoherent(MockDevice);

impl IommuDevice for NonCoherent {
    fn name(&self) -> String {
        "noncoherent".into()
    }
    fn capable(&self, cap: Cap) -> bool {
        cap != Cap::CacheCoherency && self.0.capable(cap)
    }
    fn alloc_paging(&self, req: &PagingRequest) -> Result<Arc<dyn Domain>, Errno> {
        self.0.alloc_paging(req)
    }
    fn check_attach(&self, domain: &dyn Domain) -> Result<(), Errno> {
        self.0.check_attach(domain)
    }
    fn owns_domain(&self, domain: &dyn Domain) -> bool {
        self.0.owns_domain(domain)
    }
}

#[test]
fn bind_refuses_a_device_without_coherent_dma() {
    let ctx = Iommufd::new();
    let dev: Arc<dyn IommuDevice> = Arc::new(NonCoherent(MockDevice::new(0).unwrap()));
    assert_eq!(device::bind(&ctx, dev).err().unwrap().errno, Errno::EINVAL);
    assert!(ctx.objects().is_empty(), "a refused bind leaves nothing behind");
}

/// Bind `iommu_dev`, attach it to `ioas` (automatic domain) and report the
/// HWPT's enforcement, the device's answer and the HWPT ID.
fn attach(ctx: &Arc<Iommufd>, ioas: u32, iommu_dev: Arc<dyn IommuDevice>) -> (Arc<device::Device>, bool, u32) {
    let (_, edge) = device::bind(ctx, iommu_dev).unwrap();
    let dev = Arc::clone(edge.arc());
    std::mem::forget(edge); // the binder's edge lives as long as the test
    let hwpt_id = dev.change_pt(ctx, NO_PASID, ioas, false).unwrap();
    let enforcing = ctx.get::<HwptPaging>(hwpt_id).unwrap().enforce_cache_coherency();
    (dev, enforcing, hwpt_id)
}

#[test]
fn hwpt_enforcement_follows_the_iommu_and_refuses_incapable_devices() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    // Snoop control: the HWPT enforces, the device is enforced-coherent.
    let (sc_dev, enforcing, sc_hwpt) = attach(&ctx, ioas, vtd_device("vtd:sc=1", "0000:00:04.0"));
    assert!(enforcing && sc_dev.enforced_coherent());
    assert_eq!(sc_dev.dma_coherent_now(NO_PASID), Some(true));
    // No snoop control (the integrated-graphics case): the driver refuses
    // the enforcing HWPT, so the device gets its own, non-enforcing one.
    let (gfx, enforcing, gfx_hwpt) = attach(&ctx, ioas, vtd_device("vtd:sc=0", "0000:00:02.0"));
    assert!(!enforcing && !gfx.enforced_coherent());
    assert_ne!(gfx_hwpt, sc_hwpt, "an enforcing HWPT must not take a device that cannot enforce");
    assert_eq!(gfx.dma_coherent_now(NO_PASID), Some(false));
    // The selftest mock: coherent DMA, but no snoop control.
    let (mock, enforcing, _) = attach(&ctx, ioas, Arc::new(MockDevice::new(0).unwrap()));
    assert!(!enforcing && !mock.enforced_coherent());
}

#[test]
fn vfio_dma_cc_iommu_is_true_only_while_every_hwpt_enforces() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.vfio_ioas_set(ioas).unwrap();
    let cc = || ctx.vfio_check_extension(uiommufd_abi::vfio::VFIO_DMA_CC_IOMMU as u64).unwrap();
    let _sc = attach(&ctx, ioas, vtd_device("vtd:sc=1", "0000:00:04.0"));
    assert_eq!(cc(), 1);
    let (gfx, _, _) = attach(&ctx, ioas, vtd_device("vtd:sc=0", "0000:00:02.0"));
    assert_eq!(cc(), 0, "a non-enforcing HWPT on the IOAS");
    gfx.detach(&ctx, NO_PASID);
    assert_eq!(cc(), 1, "its automatic HWPT went with it");
}

/// Run one FILL of a page at `iova` on `engine`, whose ring is at
/// `buf[ring_off..]`, and return its completion status.
fn fill(engine: &DmaEngine, buf: &mut [u8], ring_off: usize, iova: u64, slot: u32) -> u32 {
    let d = Descriptor::fill(iova, PS, 0x0101_0101_0101_0101 * (slot as u64 + 1));
    buf[ring_off + slot as usize * 64..][..64].copy_from_slice(&d.to_bytes());
    engine.write_reg32(regs::REG_TAIL, slot + 1).unwrap();
    engine.run_until_idle();
    let mut b = [0u8; 64];
    b.copy_from_slice(&buf[ring_off + slot as usize * 64..][..64]);
    Descriptor::from_bytes(&b).status
}

#[test]
fn no_snoop_writes_are_noncoherent_only_into_non_enforcing_domains() {
    for (iommu, no_snoop, expect_noncoherent) in [
        ("vtd:sc=1", true, false),
        ("vtd:sc=1", false, false),
        ("vtd:sc=0", true, true),
        ("vtd:sc=0", false, false),
        ("mock", true, true),
        ("mock", false, false),
    ] {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        let mut mem = vec![0u8; 4 * PS as usize];
        let off = (mem.as_ptr() as u64).next_multiple_of(PS) as usize - mem.as_ptr() as usize;
        let host = mem.as_ptr() as u64 + off as u64;
        let iova = 1 << 24; // inside every model's aperture
        ctx.ioas_map(ioas, 1 | 2 | 4, host, 2 * PS, iova).unwrap();
        let idev: Arc<dyn IommuDevice> =
            if iommu == "mock" { Arc::new(MockDevice::new(0).unwrap()) } else { vtd_device(iommu, "0000:00:04.0") };
        let (dev, _, _) = attach(&ctx, ioas, idev);
        let port = DevicePort::new(&dev);
        let engine = DmaEngine::with_options("dma", DmaEngineOptions { worker: false, ..Default::default() }).unwrap();
        engine.set_dma_port(Arc::clone(&port) as _);
        set_command_bits(&engine, 0x4, true);
        set_no_snoop(&engine, no_snoop);
        engine.write_reg64(regs::REG_RING_BASE, iova).unwrap();
        engine.write_reg32(regs::REG_RING_SIZE, 4).unwrap();
        engine.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
        let st = fill(&engine, &mut mem[off..], 0, iova + PS, 0);
        assert_eq!(st, status::SUCCESS, "{iommu}");
        assert!(mem[off + PS as usize..off + 2 * PS as usize].iter().all(|&b| b == 1), "{iommu}: the fill landed");
        let nc = port.stats().noncoherent_bytes.load(Ordering::Relaxed);
        // The fill's page, plus the ring write-back (also a write).
        assert_eq!(nc > 0, expect_noncoherent, "{iommu} no_snoop={no_snoop}: {nc} non-coherent bytes");
        if expect_noncoherent {
            assert!(nc >= PS, "{iommu}: the whole fill was non-coherent");
        }
        drop(engine);
        ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    }
}
