//! The Rust twin of `examples/c/smmu_nested.c`: a Rust VMM's vSMMU on the
//! library. The VMM gives its guest an Arm SMMUv3 with nested translation:
//! guest RAM is the stage 2 (a NEST_PARENT HWPT), a vIOMMU of type
//! ARM_SMMUV3 sits on it, the device gets a vDEVICE with the StreamID the
//! guest knows it by, the guest's STE becomes a nested HWPT, the guest's
//! commands go through the vIOMMU's invalidation, and the guest's event
//! queue is fed from a vEVENTQ.
//!
//! ```sh
//! cargo run --release -p uiommufd --example smmu_nested
//! cargo run --release -p uiommufd --example smmu_nested -- smmuv3:fwb=0,canwbs=1
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uiommufd_abi as abi;
use uiommufd_abi::vfio::VFIO_PCI_BAR0_REGION_INDEX;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::hwpt::{self, HwptAllocArgs};
use uiommufd_core::veventq::{veventq_alloc, Veventq};
use uiommufd_core::viommu::{vdevice_alloc, viommu_alloc};
use uiommufd_core::{Iommufd, ObjectId};
use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
use uiommufd_devices::platform::Platform;
use uiommufd_hw::smmuv3::cmd;
use uiommufd_hw::smmuv3::event::id;
use uiommufd_hw::smmuv3::guest;
use uiommufd_hw::smmuv3::lpae::mair;
use uiommufd_hw::smmuv3::ste::stef;
use uiommufd_hw::{UserData, UserDataArray};
use zerocopy::{FromBytes, IntoBytes};

const PS: u64 = 4096;
const GPA_BASE: u64 = 0x4000_0000;
const GUEST_PAGES: u64 = 32;
const VSID: u64 = 0x42;
const ASID: u16 = 3;
const RING: u64 = 0x12_3400_0000;
const SRC: u64 = RING + PS;
const DST: u64 = RING + 2 * PS;

/// Guest RAM and the structures a Linux guest's SMMUv3 driver writes in it.
struct Guest {
    mem: Vec<u8>,
    off: usize,
}

impl Guest {
    const L0: u64 = 0;
    const L3: u64 = 3;
    const CD_TABLE: u64 = 4;
    const RING_PAGE: u64 = 8;
    const SRC_PAGE: u64 = 9;
    const DST_A: u64 = 10;
    const DST_B: u64 = 11;

    fn new() -> Guest {
        let mem = vec![0u8; ((GUEST_PAGES + 1) * PS) as usize];
        let off = (mem.as_ptr() as u64).next_multiple_of(PS) as usize - mem.as_ptr() as usize;
        Guest { mem, off }
    }
    fn host(&self) -> u64 {
        self.mem.as_ptr() as u64 + self.off as u64
    }
    fn gpa(page: u64) -> u64 {
        GPA_BASE + page * PS
    }
    fn bytes(&mut self, gpa: u64, len: usize) -> &mut [u8] {
        let at = self.off + (gpa - GPA_BASE) as usize;
        &mut self.mem[at..at + len]
    }
    fn set(&mut self, gpa: u64, v: u64) {
        self.bytes(gpa, 8).copy_from_slice(&v.to_le_bytes());
    }
    /// CD 0 (IHI 0070 §5.4) and a 4-level, 4KB-granule stage 1 with one
    /// last-level table (Arm ARM D8.3).
    fn build_tables(&mut self) {
        let cd0 = guest::cd_word0(ASID);
        let cd = Self::gpa(Self::CD_TABLE);
        self.set(cd, cd0);
        self.set(cd + 8, Self::gpa(Self::L0));
        self.set(cd + 24, mair::VALUE);
        for level in 0..3u64 {
            let (table, next) = (Self::gpa(Self::L0 + level), Self::gpa(Self::L0 + level + 1));
            self.set(table + guest::index(RING, level as u32) * 8, next | guest::TABLE);
        }
        self.map(RING, Self::RING_PAGE);
        self.map(SRC, Self::SRC_PAGE);
        self.map(DST, Self::DST_A);
    }
    /// Map `iova` to guest page `page` (`None`: unmap).
    fn map(&mut self, iova: u64, page: impl Into<Option<u64>>) {
        let pte = page.into().map_or(0, |p| Self::gpa(p) | guest::PAGE);
        self.set(Self::gpa(Self::L3) + guest::index(iova, 3) * 8, pte);
    }
    /// The guest's STE: stage 1 translate with a one-CD linear table.
    fn ste() -> abi::IommuHwptArmSmmuv3 {
        abi::IommuHwptArmSmmuv3 {
            ste: [stef::V | stef::CFG_S1_TRANS << stef::CFG_SHIFT | Self::gpa(Self::CD_TABLE), 0],
        }
    }
}

type Res<T> = Result<T, String>;

fn hwpt_alloc(ctx: &Iommufd, dev_id: ObjectId, pt_id: ObjectId, flags: u32, data: Option<&[u8]>) -> Res<ObjectId> {
    let bytes = data.unwrap_or(&[]);
    let mut reader = |out: &mut [u8]| {
        let n = out.len().min(bytes.len());
        out[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    };
    let data_type = if data.is_some() { abi::IOMMU_HWPT_DATA_ARM_SMMUV3 } else { abi::IOMMU_HWPT_DATA_NONE };
    let data = UserData { data_type, len: bytes.len() as u32, reader: &mut reader };
    let mut holder = None;
    let p = hwpt::hwpt_alloc(ctx, &mut holder, HwptAllocArgs { flags, dev_id, pt_id, fault_id: 0, data })
        .map_err(|e| format!("IOMMU_HWPT_ALLOC: {e}"))?;
    let id = p.id();
    p.publish();
    Ok(id)
}

/// The guest's commands, as `IOMMU_HWPT_INVALIDATE` on the vIOMMU.
fn invalidate(ctx: &Iommufd, viommu: ObjectId, cmds: &[[u64; 2]]) -> Res<()> {
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
    hwpt::invalidate(ctx, viommu, &mut array).map_err(|e| format!("invalidation {}: {e}", array.entry_num))
}

/// The next record of the vEVENTQ: `(sequence, event words)`.
fn next_event(q: &Veventq) -> Option<(u32, [u64; 4])> {
    let mut buf = [0u8; 40];
    let n = q.read(buf.len(), |at, b| {
        buf[at..at + b.len()].copy_from_slice(b);
        Ok(())
    });
    if n.ok()? != 40 {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(buf[8 + 8 * i..16 + 8 * i].try_into().unwrap());
    Some((u32::from_le_bytes(buf[4..8].try_into().unwrap()), [word(0), word(1), word(2), word(3)]))
}

fn run(iommu: &str) -> Res<()> {
    let platform = Platform::new(iommu, "dma-engine")?;
    let dev = &platform.devices[0];
    let ctx = Iommufd::new();
    let (dev_id, edge) = device::bind(&ctx, Arc::clone(&dev.iommu)).map_err(|e| format!("bind: {e}"))?;
    let (ty, data) = dev.iommu.hw_info(0).map_err(|e| e.to_string())?;
    let info = abi::IommuHwInfoArmSmmuv3::read_from_bytes(&data).map_err(|_| "no SMMUv3 hw_info".to_string())?;
    println!("{} behind {iommu}: hw_info type {ty}, IDR0 {:#010x}, IDR5 {:#010x}", dev.bdf, info.idr[0], info.idr[5]);

    // Stage 2: guest RAM at GPA_BASE.
    let mut g = Guest::new();
    let ioas = ctx.ioas_alloc().map_err(|e| e.to_string())?;
    ctx.ioas_map(ioas, 1 | 2 | 4, g.host(), GUEST_PAGES * PS, GPA_BASE).map_err(|e| e.to_string())?;
    let s2 = hwpt_alloc(&ctx, dev_id, ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, None)?;

    // The vSMMU, the device's vDEVICE, the guest event queue.
    let mut no_data = |_: &[u8]| Ok(());
    let (p, v) = viommu_alloc(&ctx, 0, abi::IOMMU_VIOMMU_TYPE_ARM_SMMUV3, dev_id, s2, None, &mut no_data)
        .map_err(|e| format!("IOMMU_VIOMMU_ALLOC: {e}"))?;
    let viommu = p.id();
    p.publish(v);
    vdevice_alloc(&ctx, viommu, dev_id, VSID).map_err(|e| format!("IOMMU_VDEVICE_ALLOC: {e}"))?.publish();
    let (p, events) = veventq_alloc(&ctx, 0, 0, viommu, abi::IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 64)
        .map_err(|e| format!("IOMMU_VEVENTQ_ALLOC: {e}"))?;
    p.publish(Arc::clone(&events));

    // The guest installs its STE: the nested HWPT; the device is attached.
    g.build_tables();
    let nested = hwpt_alloc(&ctx, dev_id, viommu, 0, Some(Guest::ste().as_bytes()))?;
    edge.arc().change_pt(&ctx, NO_PASID, nested, false).map_err(|e| format!("attach: {e}"))?;
    println!("stage 2 HWPT {s2}, vIOMMU {viommu}, vDEVICE with vSID {VSID:#x}, nested HWPT {nested}");

    // The device, programmed by the guest at guest IOVAs.
    dev.pci.set_dma_port(DevicePort::new(edge.arc()));
    let mut cmd16 = [0u8; 2];
    dev.pci.config_read(4, &mut cmd16).map_err(|e| e.to_string())?;
    dev.pci.config_write(4, &(u16::from_le_bytes(cmd16) | 0x6).to_le_bytes()).map_err(|e| e.to_string())?;
    let reg = |offset: u64, value: u64| {
        dev.pci.region_write(VFIO_PCI_BAR0_REGION_INDEX, offset, &value.to_le_bytes()).map_err(|e| e.to_string())
    };
    reg(regs::REG_RING_BASE, RING)?;
    reg(regs::REG_RING_SIZE, 16)?;
    reg(regs::REG_CTRL, u64::from(regs::CTRL_ENABLE))?;
    let mut slot = 0u64;
    let mut copy = |g: &mut Guest, byte: u8| -> Res<Descriptor> {
        g.bytes(Guest::gpa(Guest::SRC_PAGE), 256).fill(byte);
        let at = Guest::gpa(Guest::RING_PAGE) + slot * 64;
        g.bytes(at, 64).copy_from_slice(&Descriptor::copy(DST, SRC, 256).to_bytes());
        slot += 1;
        reg(regs::REG_TAIL, slot)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut b = [0u8; 64];
            b.copy_from_slice(g.bytes(at, 64));
            let d = Descriptor::from_bytes(&b);
            if d.status != 0 {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err("the device did not complete the copy".into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    let page = |g: &mut Guest, p: u64| g.bytes(Guest::gpa(p), 1)[0];

    if copy(&mut g, 0xa5)?.status != status::SUCCESS || page(&mut g, Guest::DST_A) != 0xa5 {
        return Err("the copy through the guest's stage 1 failed".into());
    }
    // The guest remaps DST but forgets its TLBI: the SMMU's TLB still
    // translates to the old page.
    g.map(DST, Guest::DST_B);
    copy(&mut g, 0x3c)?;
    if page(&mut g, Guest::DST_A) != 0x3c || page(&mut g, Guest::DST_B) != 0 {
        return Err("a remap without TLBI must not be seen".into());
    }
    println!("remapped without TLBI: the device still writes the old page");
    invalidate(&ctx, viommu, &[cmd::tlbi_nh_va(0, ASID, DST, true)])?;
    copy(&mut g, 0x77)?;
    if page(&mut g, Guest::DST_B) != 0x77 {
        return Err("after the TLBI the new page must be used".into());
    }
    println!("after CMD_TLBI_NH_VA: the new page");

    // The guest unmaps DST: the write faults; its event arrives with the vSID.
    g.map(DST, None);
    invalidate(&ctx, viommu, &[cmd::tlbi_nh_asid(0, ASID), cmd::cfgi_cd(VSID as u32, 0, true)])?;
    let d = copy(&mut g, 0x11)?;
    if d.status != status::WRITE_FAULT {
        return Err(format!("a write to an unmapped IOVA completed with {:#x}", d.status));
    }
    let (seq, evt) = next_event(&events).ok_or("no event on the vEVENTQ")?;
    let (eid, sid) = ((evt[0] & 0xff) as u8, evt[0] >> 32);
    println!("vEVENTQ #{seq}: {} for StreamID {sid:#x} at {:#x}", id::name(eid), evt[2]);
    if eid != id::F_TRANSLATION || sid != VSID || evt[2] != DST {
        return Err("the event must be F_TRANSLATION of the virtual StreamID at DST".into());
    }

    dev.pci.reset();
    dev.pci.set_dma_port(Arc::new(uiommufd_hw::dma::BlockedPort));
    edge.arc().detach(&ctx, NO_PASID);
    println!("OK: nested translation, invalidation and events as on an SMMUv3");
    Ok(())
}

fn main() -> ExitCode {
    let iommu = std::env::args().nth(1).unwrap_or_else(|| "smmuv3".into());
    match run(&iommu) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smmu_nested: {e}");
            ExitCode::FAILURE
        }
    }
}
