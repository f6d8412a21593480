//! The AMD IOMMU model through the engine, the way a VMM drives it.
//!
//! Linux 7.3 first: `IOMMU_GET_HW_INFO` gives EFR/EFR2, a vIOMMU sits on a
//! NEST_PARENT HWPT (any type but 0: 7.3 has no AMD vIOMMU type and the
//! driver ignores it), and nested `IOMMU_HWPT_ALLOC` on it is `EOPNOTSUPP`
//! (`amd_viommu_ops` has no `alloc_domain_nested`), as are
//! `IOMMU_HWPT_INVALIDATE` on it and PASID attaches of paging HWPTs.
//!
//! Then with the follow-up's wiring (`amd:nested=1`): the guest DTE is
//! checked with the driver's errnos, and the DMA engine's requests walk the
//! guest's GCR3 table and x86-64 table in guest memory through the nest
//! parent; a guest PTE change is invisible until an `INVALIDATE_IOMMU_PAGES`
//! reaches the host domain ID (the one the kernel sends on any change of
//! the parent, here an `IOMMU_IOAS_UNMAP`); faults are `IO_PAGE_FAULT`s in
//! the IOMMU's event log; dirty tracking on the parent sees the guest's
//! writes.

mod common;

use common::{GuestRam, PS};

use std::sync::Arc;

use uiommufd_abi as abi;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::hwpt::{self, HwptAllocArgs};
use uiommufd_core::io_pagetable::DirtyBitmap;
use uiommufd_core::viommu::viommu_alloc;
use uiommufd_core::{Iommufd, ObjectId};
use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
use uiommufd_devices::platform::{parse_iommu, IommuModel};
use uiommufd_devices::testing::set_command_bits;
use uiommufd_devices::{DmaEngine, DmaEngineOptions, PciDevice};
use uiommufd_hw::amd::{dte, event, AmdDevice, AmdIommu};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::x86_64::fspte;
use uiommufd_hw::{UserData, UserDataArray};
use zerocopy::{FromBytes, IntoBytes};

/// Guest physical address of guest RAM (an IOVA of the parent HWPT).
const GPA_BASE: u64 = 0x4000_0000;
const GUEST_PAGES: u64 = 16;
/// Guest IOVAs its table maps (requests without PASID, through GIoV).
const RING: u64 = 0x12_3400_0000;
const SRC: u64 = RING + PS;
const DST: u64 = RING + 2 * PS;
/// The device's requester ID 00:04.0 is its DeviceID.
const DEVID: u16 = 0x20;
const GDOM_ID: u64 = 7;

/// Guest pages: the GCR3 table, the four levels of its table, data.
const GCR3: u64 = 0;
const L4: u64 = 1;
const L3: u64 = 2;
const L2: u64 = 3;
const L1: u64 = 4;
const RING_PAGE: u64 = 8;
const SRC_PAGE: u64 = 9;
const DST_A: u64 = 10;
const DST_B: u64 = 11;
/// P | R/W | U/S | A, as a guest Linux writes (generic_pt x86_64).
const GPTE: u64 = fspte::P | fspte::RW | fspte::US | fspte::A;

fn gpa(page: u64) -> u64 {
    GPA_BASE + page * PS
}

/// Index of `iova` at x86-64 level `level` (0: PT .. 3: PML4).
fn idx(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * level)) & 0x1ff
}

fn guest_map(g: &mut GuestRam, iova: u64, page_gpa: u64) {
    g.set_u64(gpa(L1) + idx(iova, 0) * 8, page_gpa | GPTE);
}

/// The guest's DTE for its device: V, GV, GIoV, a one-level GCR3 table at
/// `gcr3`, guest domain 7, 4-level guest paging (spec 48882 §2.2.2.1).
fn guest_dte(gcr3: u64) -> [u64; 4] {
    [
        dte::V | dte::GV | dte::GIOV | ((gcr3 >> 12) & 7) << dte::GCR3_14_12_SHIFT,
        GDOM_ID
            | ((gcr3 >> 15) & 0xffff) << dte::GCR3_30_15_SHIFT
            | ((gcr3 >> 31) & 0x1f_ffff) << dte::GCR3_51_31_SHIFT,
        0,
        0,
    ]
}

fn run(engine: &DmaEngine, g: &mut GuestRam, slot: u32, d: Descriptor) -> Descriptor {
    g.run(engine, RING_PAGE, slot, d)
}

struct Vmm {
    ctx: Arc<Iommufd>,
    unit: Arc<AmdIommu>,
    ioas: ObjectId,
    dev_id: ObjectId,
    dev: Arc<uiommufd_core::device::Device>,
    parent: ObjectId,
    viommu: ObjectId,
    _edge: Box<dyn std::any::Any>,
}

impl Vmm {
    fn new(iommu: &str, g: &GuestRam, dirty: bool) -> Vmm {
        let IommuModel::Amd(unit) = parse_iommu(iommu).unwrap() else { unreachable!() };
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        ctx.ioas_map(ioas, 1 | 2 | 4, g.host(), GUEST_PAGES * PS, GPA_BASE).unwrap();
        let amd: Arc<dyn IommuDevice> = Arc::new(AmdDevice::new(&unit, "0000:00:04.0", DEVID));
        let (dev_id, edge) = device::bind(&ctx, amd).unwrap();
        let dev = Arc::clone(edge.arc());
        let mut flags = abi::IOMMU_HWPT_ALLOC_NEST_PARENT;
        if dirty {
            flags |= abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
        }
        let mut vmm = Vmm { ctx, unit, ioas, dev_id, dev, parent: 0, viommu: 0, _edge: Box::new(edge) };
        vmm.parent = vmm.alloc(ioas, flags, 0, &[]).unwrap();
        // Any type but the default: 7.3 has no AMD type, and
        // amd_iommufd_get_viommu_size() does not look at it.
        let mut no_data = |_: &[u8]| Ok(());
        let (p, v) = viommu_alloc(&vmm.ctx, 0, 77, dev_id, vmm.parent, None, &mut no_data).unwrap();
        vmm.viommu = p.id();
        p.publish(v);
        vmm
    }

    fn alloc(
        &self,
        pt_id: ObjectId,
        flags: u32,
        data_type: u32,
        bytes: &[u8],
    ) -> Result<ObjectId, uiommufd_core::Error> {
        let mut holder = None;
        let mut reader = |out: &mut [u8]| {
            let n = out.len().min(bytes.len());
            out[..n].copy_from_slice(&bytes[..n]);
            Ok(())
        };
        let data = UserData { data_type, len: bytes.len() as u32, reader: &mut reader };
        let p = hwpt::hwpt_alloc(
            &self.ctx,
            &mut holder,
            HwptAllocArgs { flags, dev_id: self.dev_id, pt_id, fault_id: 0, data },
        )?;
        let id = p.id();
        p.publish();
        Ok(id)
    }

    fn nested(&self, gdte: [u64; 4]) -> Result<ObjectId, uiommufd_core::Error> {
        let data = abi::IommuHwptAmdGuest { dte: gdte };
        self.alloc(self.viommu, 0, abi::IOMMU_HWPT_DATA_AMD_GUEST, data.as_bytes())
    }
}

#[test]
fn linux_73_answers() {
    let g = GuestRam::new(GPA_BASE, GUEST_PAGES);
    let vmm = Vmm::new("amd", &g, false);
    // IOMMU_GET_HW_INFO: type AMD, EFR/EFR2 of the default part.
    let info = hwpt::get_hw_info(&vmm.ctx, vmm.dev_id, 0).unwrap();
    assert_eq!(info.data_type, abi::IOMMU_HW_INFO_TYPE_AMD);
    let hw = abi::IommuHwInfoAmd::read_from_bytes(&info.data).unwrap();
    assert_eq!((hw.efr, hw.efr2), (0x25bf732fa2295afe, 0x1d));
    // A vIOMMU of the default type: EOPNOTSUPP (iommufd); on a paging HWPT
    // that is not a nest parent: EINVAL.
    let mut no_data = |_: &[u8]| Ok(());
    let e = viommu_alloc(&vmm.ctx, 0, 0, vmm.dev_id, vmm.parent, None, &mut no_data).err().unwrap();
    assert_eq!(e.errno, abi::Errno::EOPNOTSUPP);
    let plain = vmm.alloc(vmm.ioas, 0, 0, &[]).unwrap();
    let e = viommu_alloc(&vmm.ctx, 0, 1, vmm.dev_id, plain, None, &mut no_data).err().unwrap();
    assert_eq!(e.errno, abi::Errno::EINVAL);
    // Nested allocation on the vIOMMU: EOPNOTSUPP in 7.3, whatever the DTE.
    let e = vmm.nested(guest_dte(gpa(GCR3))).err().unwrap();
    assert_eq!(e.errno, abi::Errno::EOPNOTSUPP);
    // Nor through the parent HWPT (no domain_alloc_nested).
    let data = abi::IommuHwptAmdGuest { dte: guest_dte(gpa(GCR3)) };
    let e = vmm.alloc(vmm.parent, 0, abi::IOMMU_HWPT_DATA_AMD_GUEST, data.as_bytes()).err().unwrap();
    assert_eq!(e.errno, abi::Errno::EOPNOTSUPP);
    // IOMMU_HWPT_INVALIDATE on the vIOMMU: no cache_invalidate.
    let mut reader = |_: u32, _: &mut [u8]| Ok(());
    let mut array = UserDataArray { data_type: 0, entry_len: 16, entry_num: 1, reader: &mut reader };
    let e = hwpt::invalidate(&vmm.ctx, vmm.viommu, &mut array).err().unwrap();
    assert_eq!((e.errno, array.entry_num), (abi::Errno::EOPNOTSUPP, 0));
    // Dirty tracking: the part has HDSup.
    assert!(vmm.alloc(vmm.ioas, abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING, 0, &[]).is_ok());
    // Attach the parent and look at the DTE the driver wrote.
    vmm.dev.change_pt(&vmm.ctx, NO_PASID, vmm.parent, false).unwrap();
    let amd = vmm.dev.dev();
    let d = AmdDevice::of(amd).unwrap().dte();
    assert!(d.valid() && d.tv() && !d.gv());
    assert_eq!(d.mode(), 3);
    vmm.dev.detach(&vmm.ctx, NO_PASID);
    assert_eq!(AmdDevice::of(amd).unwrap().dte().0, [1, 0, 0, 0]);
}

#[test]
fn guest_translation_through_the_dma_engine() {
    let mut g = GuestRam::new(GPA_BASE, GUEST_PAGES);
    let vmm = Vmm::new("amd:nested=1", &g, true);

    // The guest's DTE checks, with the driver's errnos.
    let mut bad = guest_dte(gpa(GCR3));
    bad[0] |= 4 << dte::MODE_SHIFT;
    assert_eq!(vmm.nested(bad).err().unwrap().errno, abi::Errno::EINVAL);
    let mut bad = guest_dte(gpa(GCR3));
    bad[0] |= dte::GLX;
    assert_eq!(vmm.nested(bad).err().unwrap().errno, abi::Errno::EINVAL);
    let mut five = guest_dte(gpa(GCR3));
    five[2] |= dte::GUEST_PGTABLE_5_LEVEL << dte::GPT_LEVEL_SHIFT;
    assert!(vmm.nested(five).is_ok(), "the default host runs 5-level guest tables");
    let no_la57 = Vmm::new("amd:nested=1,la57=0", &g, false);
    assert_eq!(no_la57.nested(five).err().unwrap().errno, abi::Errno::EOPNOTSUPP);

    // The guest's GCR3 table (PASID 0) and its four-level table.
    g.set_u64(gpa(GCR3), gpa(L4) | 1);
    g.set_u64(gpa(L4) + idx(RING, 3) * 8, gpa(L3) | GPTE);
    g.set_u64(gpa(L3) + idx(RING, 2) * 8, gpa(L2) | GPTE);
    g.set_u64(gpa(L2) + idx(RING, 1) * 8, gpa(L1) | GPTE);
    guest_map(&mut g, RING, gpa(RING_PAGE));
    guest_map(&mut g, SRC, gpa(SRC_PAGE));
    guest_map(&mut g, DST, gpa(DST_A));
    let nested = vmm.nested(guest_dte(gpa(GCR3))).unwrap();
    vmm.dev.change_pt(&vmm.ctx, NO_PASID, nested, false).unwrap();
    let d = AmdDevice::of(vmm.dev.dev()).unwrap().dte();
    assert!(d.gv() && d.giov());
    assert_eq!(d.gcr3_root(), gpa(GCR3));

    let engine = DmaEngine::with_options("dma0", DmaEngineOptions { worker: false, ..Default::default() }).unwrap();
    engine.set_dma_port(DevicePort::new(&vmm.dev));
    set_command_bits(&engine, 0x4, true); // Bus Master Enable
    engine.write_reg64(regs::REG_RING_BASE, RING).unwrap();
    engine.write_reg32(regs::REG_RING_SIZE, 16).unwrap();
    engine.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();

    // A copy through the guest's translation lands in guest page DST_A.
    g.page(SRC_PAGE)[..256].copy_from_slice(&[0xa5; 256]);
    let done = run(&engine, &mut g, 0, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_A)[..256], &[0xa5; 256]);

    // The guest points DST elsewhere: the IOTLB still translates to the old
    // page (in 7.3 the guest has no invalidation of its own to send).
    guest_map(&mut g, DST, gpa(DST_B));
    g.page(SRC_PAGE)[..256].copy_from_slice(&[0x3c; 256]);
    let done = run(&engine, &mut g, 1, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_A)[..256], &[0x3c; 256], "stale until an invalidation reaches the host domain ID");
    assert!(g.page(DST_B).iter().all(|&b| b == 0));

    // Any change of the parent makes the driver flush every host domain ID
    // of the vIOMMU (iommu_flush_pages_v1_hdom_ids()): unmapping a scratch
    // page the VMM had mapped does, and the next copy sees the guest's new
    // PTE.
    let scratch = GuestRam::new(GPA_BASE, GUEST_PAGES);
    let scratch_gpa = GPA_BASE + (1 << 30);
    vmm.ctx.ioas_map(vmm.ioas, 1 | 2 | 4, scratch.host(), PS, scratch_gpa).unwrap();
    let hdom = AmdDevice::of(vmm.dev.dev()).unwrap().dte().domid();
    let before = vmm.unit.recent_commands().len();
    vmm.ctx.ioas_unmap(vmm.ioas, scratch_gpa, PS).unwrap();
    let cmds = &vmm.unit.recent_commands()[before..];
    let for_hdom = uiommufd_hw::amd::cmd::inv_iommu_pages(scratch_gpa, scratch_gpa + PS - 1, hdom, 0, 0);
    assert!(cmds.contains(&for_hdom), "{cmds:x?}");
    g.page(SRC_PAGE)[..256].copy_from_slice(&[0x77; 256]);
    let done = run(&engine, &mut g, 2, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_B)[..256], &[0x77; 256], "the new translation after the flush");

    // The guest's write went through the parent with dirty tracking on:
    // the bitmap has DST_B's guest physical page.
    hwpt::set_dirty_tracking(&vmm.ctx, vmm.parent, true).unwrap();
    g.page(SRC_PAGE)[..16].copy_from_slice(&[0x55; 16]);
    assert_eq!(run(&engine, &mut g, 3, Descriptor::copy(DST, SRC, 16)).status, status::SUCCESS);
    let mut bitmap = [0u64; 1];
    let b = DirtyBitmap {
        iova: GPA_BASE,
        length: GUEST_PAGES * PS,
        page_size: PS,
        data: bitmap.as_mut_ptr() as u64,
        no_clear: false,
    };
    hwpt::get_dirty_bitmap(&vmm.ctx, vmm.parent, &b).unwrap();
    // The written page (and, were it part of a larger page of the parent,
    // every page of that one).
    assert_ne!(bitmap[0] & (1 << DST_B), 0, "{:#x}", bitmap[0]);

    // The guest unmaps DST: the write faults and the IOMMU logs an
    // IO_PAGE_FAULT with GN (a guest fault), PASID 0, RW, for the IOVA.
    g.set_u64(gpa(L1) + idx(DST, 0) * 8, 0);
    vmm.ctx.ioas_map(vmm.ioas, 1 | 2 | 4, scratch.host(), PS, scratch_gpa).unwrap();
    vmm.ctx.ioas_unmap(vmm.ioas, scratch_gpa, PS).unwrap();
    let _ = vmm.unit.take_events();
    let done = run(&engine, &mut g, 4, Descriptor::copy(DST, SRC, 16));
    assert_eq!((done.status, done.result), (status::WRITE_FAULT, DST));
    let (events, lost) = vmm.unit.take_events();
    assert!(!lost);
    let flags = u64::from(event::flag::GN | event::flag::RW | event::flag::US);
    assert_eq!(events, vec![[0x2000_0000_0000_0000 | flags << 48 | u64::from(DEVID), DST]]);
    assert_eq!(
        event::describe(&events[0]),
        format!("Event logged [IO_PAGE_FAULT device=0000:00:04.0 domain=0x0000 address={DST:#x} flags=0x0025]")
    );

    // A guest page outside guest RAM: the parent's fault (GN clear, the
    // host domain ID, the guest physical address).
    guest_map(&mut g, DST, gpa(GUEST_PAGES + 4));
    let done = run(&engine, &mut g, 5, Descriptor::copy(DST, SRC, 16));
    assert_eq!(done.status, status::WRITE_FAULT);
    let (events, _) = vmm.unit.take_events();
    assert_eq!(events, vec![[0x2020_0000_0000_0000 | u64::from(hdom) << 32 | u64::from(DEVID), gpa(GUEST_PAGES + 4)]]);
    vmm.dev.detach(&vmm.ctx, NO_PASID);
}

/// The oracle kernel (Linux 7.3.4, x86_64 defconfig with the AMD IOMMU
/// driver but without `CONFIG_AMD_IOMMU_IOMMUFD`) under QEMU 7.2 with
/// `-device amd-iommu` (EFR 0x29d3, EFR2 0, IVinfo VASize 48, no LA57) and
/// an `edu` device bound to vfio-pci answered (probe in the session notes):
///   hw_info 0, type 0, len 0, out_capabilities 0x8 (PCI_ATS_NOT_SUPPORTED)
///   HWPT_ALLOC flags 0: ok; NEST_PARENT, DIRTY_TRACKING, PASID and their
///   combinations: EOPNOTSUPP
///   IOVA ranges after attaching: 0..0xfedfffff, 0xfef00000..0xfcffffffff,
///   0x10000000000..0xffffffffffff
///   VIOMMU_ALLOC type 1 or 77: EOPNOTSUPP (no get_viommu_size), type 0:
///   EOPNOTSUPP
#[test]
fn qemu_amd_iommu_as_the_oracle_kernel_answers() {
    let g = GuestRam::new(GPA_BASE, GUEST_PAGES);
    let IommuModel::Amd(unit) = parse_iommu("amd:efr=29d3,efr2=0,vasize=48,la57=0,iommufd=0").unwrap() else {
        unreachable!()
    };
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let amd: Arc<dyn IommuDevice> = Arc::new(AmdDevice::new(&unit, "0000:00:03.0", 0x18));
    let (dev_id, edge) = device::bind(&ctx, amd).unwrap();
    let dev = Arc::clone(edge.arc());
    let info = hwpt::get_hw_info(&ctx, dev_id, 0).unwrap();
    assert_eq!((info.data_type, info.data.len(), info.capabilities), (0, 0, 0x8));
    let alloc = |flags: u32| {
        let mut holder = None;
        let mut none = |_: &mut [u8]| Ok(());
        let data = UserData { data_type: 0, len: 0, reader: &mut none };
        hwpt::hwpt_alloc(&ctx, &mut holder, HwptAllocArgs { flags, dev_id, pt_id: ioas, fault_id: 0, data })
            .map(|p| p.publish())
            .map_err(|e| e.errno)
    };
    assert_eq!(alloc(0), Ok(()));
    let (np, dt, pasid) =
        (abi::IOMMU_HWPT_ALLOC_NEST_PARENT, abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING, abi::IOMMU_HWPT_ALLOC_PASID);
    for flags in [np, dt, pasid, np | dt, np | pasid, dt | pasid] {
        assert_eq!(alloc(flags), Err(abi::Errno::EOPNOTSUPP), "flags {flags:#x}");
    }
    dev.change_pt(&ctx, NO_PASID, ioas, false).unwrap();
    let (ranges, _) = ctx.ioas_iova_ranges(ioas).unwrap();
    assert_eq!(ranges, vec![(0, 0xfedf_ffff), (0xfef0_0000, 0xfc_ffff_ffff), (0x100_0000_0000, 0xffff_ffff_ffff)]);
    let mut no_data = |_: &[u8]| Ok(());
    for ty in [0, 1, 77] {
        let e = viommu_alloc(&ctx, 0, ty, dev_id, ioas, None, &mut no_data).err().unwrap();
        assert_eq!(e.errno, abi::Errno::EOPNOTSUPP, "type {ty}");
    }
    dev.detach(&ctx, NO_PASID);
    drop(g);
}
