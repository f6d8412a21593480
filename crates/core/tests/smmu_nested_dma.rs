//! Nested translation end to end on the Arm SMMUv3 model, the way a VMM
//! drives it: a NEST_PARENT HWPT maps guest RAM (stage 2), a vIOMMU of
//! type ARM_SMMUV3 sits on it, the device gets a vDEVICE with its virtual
//! StreamID, and a nested HWPT carries the guest's STE. The DMA engine's
//! requests then walk the guest's CD table and stage 1 table in guest
//! memory, through stage 2; a guest PTE change is invisible until the
//! guest's TLBI reaches the SMMU through IOMMU_HWPT_INVALIDATE on the
//! vIOMMU, and a fault arrives on the vEVENTQ as an SMMUv3 event record
//! with the virtual StreamID.

mod common;

use common::{GuestRam, PS};

use std::sync::Arc;

use uiommufd_abi as abi;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::hwpt::{self, HwptAllocArgs};
use uiommufd_core::veventq::{veventq_alloc, Veventq};
use uiommufd_core::viommu::{vdevice_alloc, viommu_alloc};
use uiommufd_core::{Iommufd, ObjectId};
use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
use uiommufd_devices::platform::{parse_iommu, IommuModel};
use uiommufd_devices::testing::set_command_bits;
use uiommufd_devices::{DmaEngine, DmaEngineOptions, PciDevice};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::smmuv3::cmd;
use uiommufd_hw::smmuv3::guest::{self, index as idx, PAGE, TABLE};
use uiommufd_hw::smmuv3::ste::stef;
use uiommufd_hw::smmuv3::SmmuDevice;
use uiommufd_hw::{UserData, UserDataArray};
use zerocopy::IntoBytes;

/// Guest physical address of guest RAM (an IOVA of the parent HWPT).
const GPA_BASE: u64 = 0x4000_0000;
const GUEST_PAGES: u64 = 16;
/// Guest IOVAs the guest's stage 1 maps.
const RING: u64 = 0x12_3400_0000;
const SRC: u64 = RING + PS;
const DST: u64 = RING + 2 * PS;
/// The master's StreamID (its requester ID 00:04.0) and virtual StreamID.
const SID: u32 = 0x20;
const VSID: u64 = 0x42;
const ASID: u16 = 3;

/// Guest pages: stage 1 tables, the CD table, data.
const L0: u64 = 0;
const L1: u64 = 1;
const L2: u64 = 2;
const L3: u64 = 3;
const CD_TABLE: u64 = 4;
const RING_PAGE: u64 = 8;
const SRC_PAGE: u64 = 9;
const DST_A: u64 = 10;
const DST_B: u64 = 11;

fn gpa(page: u64) -> u64 {
    GPA_BASE + page * PS
}

fn guest_map(g: &mut GuestRam, iova: u64, page_gpa: u64) {
    g.set_u64(gpa(L3) + idx(iova, 3) * 8, page_gpa | PAGE);
}

fn run(engine: &DmaEngine, g: &mut GuestRam, slot: u32, d: Descriptor) -> Descriptor {
    g.run(engine, RING_PAGE, slot, d)
}

/// `IOMMU_HWPT_INVALIDATE` on the vIOMMU with SMMUv3 commands.
fn invalidate(ctx: &Iommufd, viommu: ObjectId, cmds: &[[u64; 2]]) -> (Result<(), uiommufd_core::Error>, u32) {
    let bytes: Vec<u8> = cmds.iter().flat_map(|c| c.as_bytes().to_vec()).collect();
    let mut reader = |i: u32, out: &mut [u8]| {
        let at = i as usize * 16;
        out.copy_from_slice(&bytes[at..at + out.len()]);
        Ok(())
    };
    let mut array = UserDataArray {
        data_type: abi::IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
        entry_len: 16,
        entry_num: cmds.len() as u32,
        reader: &mut reader,
    };
    let r = hwpt::invalidate(ctx, viommu, &mut array);
    (r, array.entry_num)
}

/// Every record waiting on the vEVENTQ: `(flags, sequence, event words)`.
fn events(q: &Veventq) -> Vec<(u32, u32, Vec<u64>)> {
    let mut buf = vec![0u8; 4096];
    let n = q
        .read(buf.len(), |at, b| {
            buf[at..at + b.len()].copy_from_slice(b);
            Ok(())
        })
        .unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < n {
        let word = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
        let (flags, seq) = (word(at), word(at + 4));
        at += 8;
        let mut evt = Vec::new();
        if flags & abi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS == 0 {
            evt = buf[at..at + 32].chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
            at += 32;
        }
        out.push((flags, seq, evt));
    }
    out
}

#[test]
fn guest_stage1_through_the_dma_engine_with_a_stale_tlb_and_events() {
    let IommuModel::Smmuv3(unit, _) = parse_iommu("smmuv3").unwrap() else { unreachable!() };
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let mut g = GuestRam::new(GPA_BASE, GUEST_PAGES);
    ctx.ioas_map(ioas, 1 | 2 | 4, g.host(), GUEST_PAGES * PS, GPA_BASE).unwrap();

    let master: Arc<dyn IommuDevice> = Arc::new(SmmuDevice::new(&unit, "0000:00:04.0", SID).unwrap().with_pasid(20));
    let (dev_id, edge) = device::bind(&ctx, master).unwrap();
    let dev = Arc::clone(edge.arc());

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
    // Stage 2: guest RAM.
    let parent = alloc(ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, 0, &[]).unwrap();

    // The vSMMU, the vDEVICE (virtual StreamID) and the event queue.
    let mut no_data = |_: &[u8]| Ok(());
    let (p, v) = viommu_alloc(&ctx, 0, abi::IOMMU_VIOMMU_TYPE_ARM_SMMUV3, dev_id, parent, None, &mut no_data).unwrap();
    let viommu = p.id();
    p.publish(v);
    vdevice_alloc(&ctx, viommu, dev_id, VSID).unwrap().publish();
    let (p, q) = veventq_alloc(&ctx, 0, 0, viommu, abi::IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 2).unwrap();
    p.publish(Arc::clone(&q));

    // The guest's CD 0 (IHI 0070 §5.4): T0SZ 16 (48-bit), 4KB granule,
    // write-back inner shareable walks, TTB1 disabled, valid, IPS 48-bit,
    // AArch64, R (record faults), A (abort), ASET, ASID 3; TTB0; MAIR.
    let cd0 = guest::cd_word0(ASID);
    assert_eq!(cd0, 0x0003_e205_c000_3510);
    g.set_u64(gpa(CD_TABLE), cd0);
    g.set_u64(gpa(CD_TABLE) + 8, gpa(L0));
    g.set_u64(gpa(CD_TABLE) + 24, 0xf404_ff44);
    // Its stage 1 table: four levels down to one L3 table.
    g.set_u64(gpa(L0) + idx(RING, 0) * 8, gpa(L1) | TABLE);
    g.set_u64(gpa(L1) + idx(RING, 1) * 8, gpa(L2) | TABLE);
    g.set_u64(gpa(L2) + idx(RING, 2) * 8, gpa(L3) | TABLE);
    guest_map(&mut g, RING, gpa(RING_PAGE));
    guest_map(&mut g, SRC, gpa(SRC_PAGE));
    guest_map(&mut g, DST, gpa(DST_A));

    // The guest STE: valid, stage 1 translate, a linear CD table of one CD.
    let vste = abi::IommuHwptArmSmmuv3 { ste: [stef::V | stef::CFG_S1_TRANS << stef::CFG_SHIFT | gpa(CD_TABLE), 0] };
    let nested = alloc(viommu, 0, abi::IOMMU_HWPT_DATA_ARM_SMMUV3, vste.as_bytes()).unwrap();
    dev.change_pt(&ctx, NO_PASID, nested, false).unwrap();

    let engine = DmaEngine::with_options("dma0", DmaEngineOptions { worker: false, ..Default::default() }).unwrap();
    engine.set_dma_port(DevicePort::new(&dev));
    set_command_bits(&engine, 0x4, true); // Bus Master Enable
    engine.write_reg64(regs::REG_RING_BASE, RING).unwrap();
    engine.write_reg32(regs::REG_RING_SIZE, 16).unwrap();
    engine.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();

    // A copy through the guest's translation lands in guest page DST_A.
    g.page(SRC_PAGE)[..256].copy_from_slice(&[0xa5; 256]);
    let done = run(&engine, &mut g, 0, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_A)[..256], &[0xa5; 256]);

    // The guest points DST at another page without a TLBI: the SMMU's TLB
    // still holds the old translation, and the device writes the old page.
    guest_map(&mut g, DST, gpa(DST_B));
    g.page(SRC_PAGE)[..256].copy_from_slice(&[0x3c; 256]);
    let done = run(&engine, &mut g, 1, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_A)[..256], &[0x3c; 256], "stale translation until the TLBI");
    assert!(g.page(DST_B).iter().all(|&b| b == 0));

    // A TLBI of another ASID changes nothing; the guest's own (with its VMID
    // field, which the vSMMU replaces) does.
    assert_eq!(invalidate(&ctx, viommu, &[cmd::tlbi_nh_va(0, ASID + 1, DST, true)]).1, 1);
    g.page(SRC_PAGE)[..16].copy_from_slice(&[0x11; 16]);
    assert_eq!(run(&engine, &mut g, 2, Descriptor::copy(DST, SRC, 16)).status, status::SUCCESS);
    assert_eq!(&g.page(DST_A)[..16], &[0x11; 16]);
    let (r, n) = invalidate(&ctx, viommu, &[cmd::tlbi_nh_va(0x99, ASID, DST, true)]);
    assert!(r.is_ok() && n == 1);
    g.page(SRC_PAGE)[..256].copy_from_slice(&[0x77; 256]);
    let done = run(&engine, &mut g, 3, Descriptor::copy(DST, SRC, 256));
    assert_eq!(done.status, status::SUCCESS);
    assert_eq!(&g.page(DST_B)[..256], &[0x77; 256], "the new translation after the TLBI");
    assert_eq!(&g.page(DST_A)[..16], &[0x11; 16]);
    assert!(q.pending() == (0, false));

    // The guest unmaps DST and invalidates: the device's write faults, and
    // the guest sees F_TRANSLATION for its virtual StreamID on the vEVENTQ.
    g.set_u64(gpa(L3) + idx(DST, 3) * 8, 0);
    assert_eq!(invalidate(&ctx, viommu, &[cmd::tlbi_nh_asid(0, ASID)]).1, 1);
    let done = run(&engine, &mut g, 4, Descriptor::copy(DST, SRC, 16));
    assert_eq!((done.status, done.result), (status::WRITE_FAULT, DST));
    // Event record (§7.3.13): ID 0x10, SID = the vSID; RnW 0 (a write),
    // CLASS IN (0b10 << 40); the input address.
    assert_eq!(events(&q), vec![(0, 0, vec![0x10 | VSID << 32, 2 << 40, DST, 0])]);

    // A stage 2 fault (the guest maps DST to an IPA outside its RAM) is the
    // host's business: no event.
    guest_map(&mut g, DST, gpa(GUEST_PAGES + 4));
    let done = run(&engine, &mut g, 5, Descriptor::copy(DST, SRC, 16));
    assert_eq!(done.status, status::WRITE_FAULT);
    assert_eq!(q.pending(), (0, false));

    // Faults beyond the queue's depth (2) are lost: the marker follows the
    // events that fit, with the sequence number of the last lost one (3 and
    // 4 were lost; iommufd_viommu_report_event).
    g.set_u64(gpa(L3) + idx(DST, 3) * 8, 0);
    for slot in 6..10 {
        let done = run(&engine, &mut g, slot, Descriptor::copy(DST, SRC, 16));
        assert_eq!(done.status, status::WRITE_FAULT);
    }
    let got = events(&q);
    assert_eq!(
        got.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        vec![(0, 1), (0, 2), (abi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 4)]
    );
    dev.detach(&ctx, NO_PASID);
    drop(edge);
}

/// A Tegra241 CMDQV vIOMMU through the engine: the VINTF's mmap window
/// written back, a vDEVICE programming the StreamID replacement, a VCMDQ
/// in guest memory allocated with IOMMU_HW_QUEUE_ALLOC, commands the guest
/// writes there consumed by the model (the guest's TLBI reaching the TLB
/// with the VINTF's VMID), and a bad command reported on the vEVENTQ of
/// type TEGRA241_CMDQV.
#[test]
fn tegra241_cmdqv_vcmdq_consumes_guest_commands() {
    use uiommufd_core::viommu::{hw_queue_alloc, Viommu};
    use uiommufd_hw::smmuv3::cmdqv::{reg, Vintf};

    let IommuModel::Smmuv3(unit, _) = parse_iommu("smmuv3:cmdqv=1").unwrap() else { unreachable!() };
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let mut g = GuestRam::new(GPA_BASE, GUEST_PAGES);
    ctx.ioas_map(ioas, 1 | 2 | 4, g.host(), GUEST_PAGES * PS, GPA_BASE).unwrap();
    let master: Arc<dyn IommuDevice> = Arc::new(SmmuDevice::new(&unit, "0000:00:04.0", SID).unwrap());
    let (dev_id, edge) = device::bind(&ctx, master).unwrap();
    let mut holder = None;
    let mut none = |_: &mut [u8]| Ok(());
    let data = UserData { data_type: 0, len: 0, reader: &mut none };
    let args = HwptAllocArgs { flags: abi::IOMMU_HWPT_ALLOC_NEST_PARENT, dev_id, pt_id: ioas, fault_id: 0, data };
    let p = hwpt::hwpt_alloc(&ctx, &mut holder, args).unwrap();
    let parent = p.id();
    p.publish();

    // IOMMU_VIOMMU_ALLOC with struct iommu_viommu_tegra241_cmdqv.
    let mut zeros = |buf: &mut [u8]| {
        buf.fill(0);
        Ok(())
    };
    let data = UserData { data_type: abi::IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, len: 16, reader: &mut zeros };
    let mut out = Vec::new();
    let mut write_back = |b: &[u8]| {
        out = b.to_vec();
        Ok(())
    };
    let ty = abi::IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV;
    let (p, v) = viommu_alloc(&ctx, 0, ty, dev_id, parent, Some(data), &mut write_back).unwrap();
    let viommu = p.id();
    p.publish(Arc::clone(&v));
    let length = u64::from_le_bytes(out[8..16].try_into().unwrap());
    assert_eq!(length, 64 << 10, "out_vintf_mmap_length");
    // Without the data the driver refuses (EINVAL).
    let mut none2 = |_: &[u8]| Ok(());
    let e = viommu_alloc(&ctx, 0, ty, dev_id, parent, None, &mut none2).err().unwrap();
    assert_eq!(e.errno, uiommufd_abi::Errno::EINVAL);

    vdevice_alloc(&ctx, viommu, dev_id, VSID).unwrap().publish();
    let (p, q) = veventq_alloc(&ctx, 0, 0, viommu, abi::IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, 4).unwrap();
    p.publish(Arc::clone(&q));

    // A 4 KiB VCMDQ (256 commands) in guest page CD_TABLE + 1.
    let queue_gpa = gpa(CD_TABLE + 1);
    let (p, _hwq) = hw_queue_alloc(&ctx, 0, viommu, abi::IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, 0, queue_gpa, PS).unwrap();
    p.publish(_hwq);
    // Index 2 before 1: EIO, as the driver's ascending order.
    let e = hw_queue_alloc(&ctx, 0, viommu, abi::IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, 2, queue_gpa, PS).err().unwrap();
    assert_eq!(e.errno, uiommufd_abi::Errno::EIO);

    let viommu_obj = ctx.get::<Viommu>(viommu).unwrap();
    let driver = viommu_obj.driver().unwrap();
    let vintf = {
        let d: &dyn uiommufd_hw::device::ViommuDriver = driver.as_ref();
        d.any_domain().downcast_ref::<Vintf>().unwrap()
    };
    assert_eq!(vintf.replace_sid(VSID as u32), Some(SID));

    // The guest's commands: a TLBI of ASID 3 (its VMID field is ignored),
    // then an ATC_INV of its virtual StreamID; then PROD through page 0.
    let tlb = unit.tlb();
    assert!(tlb.insert(tlb.generation(), vintf.vmid(), 3, false, 0x5000, 12, 1));
    let cmds = [cmd::tlbi_nh_va(0x77, 3, 0x5000, true), cmd::atc_inv(VSID as u32, None, 0, 52, false), cmd::cmd_sync()];
    for (i, c) in cmds.iter().enumerate() {
        g.set_u64(queue_gpa + 16 * i as u64, c[0]);
        g.set_u64(queue_gpa + 16 * i as u64 + 8, c[1]);
    }
    vintf.mmio_write(reg::CONFIG, reg::EN);
    vintf.mmio_write(reg::PROD, 3);
    assert_eq!(vintf.mmio_read(reg::CONS), 3);
    assert!(tlb.lookup(vintf.vmid(), 3, 0x5000).is_none());
    assert_eq!(unit.cmd_stats().atc_inv, 1);

    // A command a guest queue does not take: the error map on the vEVENTQ.
    g.set_u64(queue_gpa + 48, cmd::tlbi_nh_all(0)[0]);
    g.set_u64(queue_gpa + 56, 0);
    vintf.mmio_write(reg::PROD, 4);
    assert_eq!(vintf.mmio_read(reg::CONS) >> 24, reg::CERROR_ILL);
    let mut buf = [0u8; 64];
    let n = q
        .read(buf.len(), |at, b| {
            buf[at..at + b.len()].copy_from_slice(b);
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 8 + 16);
    assert_eq!(u64::from_le_bytes(buf[8..16].try_into().unwrap()), 1, "LVCMDQ 0 in error");
    drop(viommu_obj);
    drop(edge);
}
