//! `uiommufd demo`: the main iommufd path, step by step, through the same
//! ioctl handlers the preload shim uses (real structs at real addresses).

use std::fmt::Display;
use std::process::ExitCode;

use uiommufd_abi as abi;
use uiommufd_abi::test_cmd::{self as t, IommuTestCmd};
use uiommufd_dispatch::{File, LocalFds, Node};
use zerocopy::{FromBytes, IntoBytes};

struct Demo {
    file: File,
    fds: LocalFds,
}

impl Demo {
    fn ioctl<T: IntoBytes + FromBytes + ?Sized>(&self, name: &str, req: u32, arg: &mut T) -> Result<(), String> {
        match self.file.ioctl(&self.fds, req as u64, arg.as_mut_bytes().as_mut_ptr() as u64) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{name} failed: {:?} ({})", e.errno, e.context)),
        }
    }

    fn test_cmd(&self, name: &str, cmd: &mut IommuTestCmd) -> Result<(), String> {
        self.ioctl(name, t::IOMMU_TEST_CMD, cmd)
    }
}

/// One line of the walk-through: what was done, and what came back.
fn step(what: impl Display, outcome: impl Display) {
    println!("{:<40} -> {outcome}", what.to_string());
}

fn struct_size<T>(_: &T) -> u32 {
    size_of::<T>() as u32
}

pub fn demo() -> Result<ExitCode, String> {
    println!("uiommufd demo: the iommufd main path, served in-process by the engine");
    println!();
    let d = Demo { file: File::open(Node::Iommu), fds: LocalFds::default() };
    step("open(\"/dev/iommu\")", "an iommufd context");

    let mut alloc = abi::IommuIoasAlloc::default();
    alloc.size = struct_size(&alloc);
    d.ioctl("IOMMU_IOAS_ALLOC", abi::IOMMU_IOAS_ALLOC, &mut alloc)?;
    let ioas = alloc.out_ioas_id;
    step("IOMMU_IOAS_ALLOC", format!("IOAS {ioas}"));

    // A device behind the kernel selftest's mock IOMMU, attached to the IOAS:
    // the engine picks or creates a HWPT (an IOMMU page table) for it.
    let mut cmd = IommuTestCmd::new(t::IOMMU_TEST_OP_MOCK_DOMAIN);
    cmd.id = ioas;
    d.test_cmd("MOCK_DOMAIN", &mut cmd)?;
    let md: t::TestMockDomain = cmd.payload_as();
    step(
        format!("attach a mock device to IOAS {ioas}"),
        format!("device {}, automatic HWPT {}", md.out_idev_id, md.out_hwpt_id),
    );

    let ranges = [abi::IommuIovaRange::default(); 4];
    let mut rq = abi::IommuIoasIovaRanges {
        ioas_id: ioas,
        num_iovas: ranges.len() as u32,
        allowed_iovas: ranges.as_ptr() as u64,
        ..Default::default()
    };
    rq.size = struct_size(&rq);
    d.ioctl("IOMMU_IOAS_IOVA_RANGES", abi::IOMMU_IOAS_IOVA_RANGES, &mut rq)?;
    for r in &ranges[..rq.num_iovas as usize] {
        step(
            "IOMMU_IOAS_IOVA_RANGES",
            format!("usable IOVA {:#x}..={:#x}, alignment {}", r.start, r.last, rq.out_iova_alignment),
        );
    }

    // Eight pages of our own memory, filled with a pattern.
    let len = 8 * 4096usize;
    let mut buf = vec![0u8; len + 4096];
    let off = buf.as_ptr().align_offset(4096);
    let mem = &mut buf[off..off + len];
    for (i, b) in mem.iter_mut().enumerate() {
        *b = (i / 4096) as u8 + b'A';
    }
    let mut map = abi::IommuIoasMap {
        flags: abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        user_va: mem.as_ptr() as u64,
        length: len as u64,
        ..Default::default()
    };
    map.size = struct_size(&map);
    d.ioctl("IOMMU_IOAS_MAP", abi::IOMMU_IOAS_MAP, &mut map)?;
    step("IOMMU_IOAS_MAP 32 KiB of user memory", format!("IOVA {:#x}, pages pinned", map.iova));

    let mut check = IommuTestCmd::new(t::IOMMU_TEST_OP_MD_CHECK_MAP);
    check.id = md.out_hwpt_id;
    check.set_payload(&t::TestCheckMap { iova: map.iova, length: len as u64, uptr: map.user_va });
    d.test_cmd("MD_CHECK_MAP", &mut check)?;
    step("check the mock IOMMU page table", "every IOVA maps the page behind our buffer");

    let mut refs = IommuTestCmd::new(t::IOMMU_TEST_OP_MD_CHECK_REFS);
    refs.set_payload(&t::TestCheckRefs { length: len as u64, uptr: map.user_va, refs: 1, __pad: 0 });
    d.test_cmd("MD_CHECK_REFS", &mut refs)?;
    step("check the pin counts", "every page pinned exactly once");

    let mut unmap = abi::IommuIoasUnmap { ioas_id: ioas, iova: map.iova, length: len as u64, ..Default::default() };
    unmap.size = struct_size(&unmap);
    d.ioctl("IOMMU_IOAS_UNMAP", abi::IOMMU_IOAS_UNMAP, &mut unmap)?;
    step("IOMMU_IOAS_UNMAP", format!("{} bytes unmapped, pages unpinned", unmap.length));

    let mut destroy = abi::IommuDestroy { size: 8, id: ioas };
    match d.file.ioctl(&d.fds, abi::IOMMU_DESTROY as u64, destroy.as_mut_bytes().as_mut_ptr() as u64) {
        Err(e) => {
            step(format!("IOMMU_DESTROY IOAS {ioas} (still in use)"), format!("{:?}, as the kernel answers", e.errno))
        }
        Ok(_) => return Err("destroying an IOAS in use succeeded".into()),
    }
    let mut destroy_dev = abi::IommuDestroy { size: 8, id: md.out_stdev_id };
    d.ioctl("IOMMU_DESTROY", abi::IOMMU_DESTROY, &mut destroy_dev)?;
    step("IOMMU_DESTROY the mock device", "detached; its automatic HWPT went with it");
    d.ioctl("IOMMU_DESTROY", abi::IOMMU_DESTROY, &mut destroy)?;
    step(format!("IOMMU_DESTROY IOAS {ioas}"), "ok");

    println!();
    println!("A DMA engine behind an Intel VT-d unit, through the library API:");
    device_dma("vtd:sc=1", "a unit with snoop control")?;
    device_dma("vtd:sc=0", "a unit without snoop control (integrated graphics)")?;
    println!();
    println!("The same engine behind an Arm SMMUv3: IOMMU_CACHE is the memory type the page table gives,");
    println!("coherent access is the SMMU's (IDR0.COHACC), and only a CANWBS root complex makes No Snoop coherent:");
    device_dma("smmuv3", "a coherent SMMU (COHACC), root complex not CANWBS")?;
    device_dma("smmuv3:canwbs=1", "a coherent SMMU behind a CANWBS root complex")?;
    device_dma("smmuv3:coherent=0", "an SMMU without coherent access (COHACC 0)")?;
    println!();
    println!("The same engine behind an AMD IOMMU (EFR of a Zen 4 EPYC): v1 PTEs carry FC (Force Coherent),");
    println!("the x86-64 (v2) format has no such bit, and the driver answers enforced coherency for both:");
    device_dma("amd", "a v1 domain: every PTE has FC")?;
    device_dma("amd:pgtable=v2", "a v2 domain (amd_iommu=pgtbl_v2)")?;
    println!();
    println!("Next: run an unmodified program against uiommufd with");
    println!("  uiommufd run -- ./your-iommufd-program");
    println!("  uiommufd run --iommu vtd --device dma-engine -- ./your-vfio-program");
    println!("  uiommufd run --iommu smmuv3 --device dma-engine -- ./your-vmm   (vIOMMU, nesting, vEVENTQ)");
    println!("  uiommufd run --iommu amd --device dma-engine -- ./your-vmm      (AMD-Vi: EFR/EFR2, v1/v2 tables)");
    println!("and see the emulated machine with `uiommufd info`.");
    Ok(ExitCode::SUCCESS)
}

/// Bind a DMA engine behind the IOMMU `iommu` (a VT-d unit, an SMMUv3 or an AMD IOMMU),
/// let it copy through an IOAS, show a fault, and report the coherency
/// outcome of its No Snoop writes (and, on ARM, the leaf's memory type).
fn device_dma(iommu: &str, what: &str) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use uiommufd_core::device::{self, NO_PASID};
    use uiommufd_core::dma::DevicePort;
    use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
    use uiommufd_devices::platform::Platform;
    use uiommufd_devices::{DmaEngine, DmaEngineOptions, PciDevice};

    const PS: u64 = 4096;
    const IOVA: u64 = 1 << 30;
    fn e(m: &'static str) -> impl Fn(uiommufd_core::Error) -> String {
        move |err| format!("{m}: {err}")
    }
    println!("  {what} ({iommu}):");
    let platform = Platform::new(iommu, "dma-engine")?;
    let arm = platform.iommu.name() == "smmuv3";
    let ctx = uiommufd_core::Iommufd::new();
    let ioas = ctx.ioas_alloc().map_err(e("IOAS"))?;
    // Four pages: the ring, a source, a destination, a fill target.
    let mut mem = vec![0u8; 5 * PS as usize];
    let off = (mem.as_ptr() as u64).next_multiple_of(PS) as usize - mem.as_ptr() as usize;
    let host = mem.as_ptr() as u64 + off as u64;
    ctx.ioas_map(ioas, 7, host, 4 * PS, IOVA).map_err(e("map"))?;
    let (dev_id, edge) = match device::bind(&ctx, Arc::clone(&platform.devices[0].iommu)) {
        Ok(b) => b,
        Err(err) => {
            step(
                "    bind (VFIO_DEVICE_BIND_IOMMUFD)",
                format!("{:?}: no IOMMU_CAP_CACHE_COHERENCY, iommufd refuses the device", err.errno),
            );
            return Ok(());
        }
    };
    let dev = Arc::clone(edge.arc());
    let hwpt = dev.change_pt(&ctx, NO_PASID, ioas, false).map_err(e("attach"))?;
    step(format!("    bind and attach to IOAS {ioas}"), format!("device {dev_id}, HWPT {hwpt}"));
    if arm {
        let h = ctx.get::<uiommufd_core::hwpt::HwptPaging>(hwpt).map_err(e("HWPT"))?;
        if let Some(d) = h.domain().as_any().downcast_ref::<uiommufd_hw::smmuv3::SmmuDomain>() {
            let (leaf, _) = d.entry_at(IOVA).ok_or("the mapping is not in the SMMU's table")?;
            let attr_idx = (leaf >> 2) & 7;
            let sh = (leaf >> 8) & 3;
            step(
                "    the stage 1 leaf for IOMMU_CACHE",
                format!(
                    "{leaf:#018x}: AttrIndx {attr_idx} ({}), SH {}",
                    if attr_idx == 1 { "Normal write-back" } else { "not write-back" },
                    if sh == 3 { "inner shareable" } else { "outer shareable" }
                ),
            );
        }
    }

    let engine = DmaEngine::with_options("dma0", DmaEngineOptions { worker: false, ..Default::default() })
        .map_err(|err| format!("DMA engine: {err}"))?;
    let port = DevicePort::new(&dev);
    engine.set_dma_port(Arc::clone(&port) as _);
    let mut cmd = [0u8; 2];
    engine.config_read(4, &mut cmd).map_err(|err| err.to_string())?;
    engine.config_write(4, &(u16::from_le_bytes(cmd) | 4).to_le_bytes()).map_err(|err| err.to_string())?;
    let reg = |o, v| engine.write_reg32(o, v).map_err(|err| err.to_string());
    engine.write_reg64(regs::REG_RING_BASE, IOVA).map_err(|err| err.to_string())?;
    reg(regs::REG_RING_SIZE, 8)?;
    reg(regs::REG_CTRL, regs::CTRL_ENABLE)?;
    let buf = &mut mem[off..off + 4 * PS as usize];
    for (i, b) in buf[PS as usize..2 * PS as usize].iter_mut().enumerate() {
        *b = i as u8;
    }
    let descs = [
        Descriptor::copy(IOVA + 2 * PS, IOVA + PS, PS),
        Descriptor::fill(IOVA + 3 * PS, PS, 0x5a5a_5a5a_5a5a_5a5a),
        Descriptor::copy(IOVA + 64 * PS, IOVA + PS, 64),
    ];
    for (i, d) in descs.iter().enumerate() {
        buf[i * 64..(i + 1) * 64].copy_from_slice(&d.to_bytes());
    }
    reg(regs::REG_TAIL, descs.len() as u32)?;
    engine.run_until_idle();
    let done = |i: usize, buf: &[u8]| {
        let mut b = [0u8; 64];
        b.copy_from_slice(&buf[i * 64..(i + 1) * 64]);
        Descriptor::from_bytes(&b)
    };
    let copied = buf[2 * PS as usize..3 * PS as usize] == buf[PS as usize..2 * PS as usize];
    let filled = buf[3 * PS as usize..4 * PS as usize].iter().all(|&b| b == 0x5a);
    if done(0, buf).status != status::SUCCESS || done(1, buf).status != status::SUCCESS || !copied || !filled {
        return Err("the DMA engine's copy or fill did not land in our memory".into());
    }
    step("    COPY 4 KiB and FILL 4 KiB descriptors", "both landed in this program's memory");
    let fault = done(2, buf);
    if fault.status != status::WRITE_FAULT {
        return Err(format!("DMA outside the mappings completed with status {:#x}", fault.status));
    }
    step("    COPY to an unmapped IOVA", format!("write fault at IOVA {:#x}, nothing written", fault.result));
    if let uiommufd_devices::platform::IommuModel::Amd(unit) = &platform.iommu {
        for e in unit.take_events().0 {
            step("    the IOMMU's event log", uiommufd_hw::amd::event::describe(&e));
        }
    }
    let nc = port.stats().noncoherent_bytes.load(Ordering::Relaxed);
    let outcome = match (arm, dev.enforced_coherent()) {
        (false, true) if nc != 0 => format!(
            "the driver says enforced coherent (KVM makes a guest's wbinvd a no-op), yet {nc} bytes written \
             with No Snoop were not snooped"
        ),
        (false, true) => {
            format!("snooped (the IOMMU forces it; {nc} non-coherent bytes): a guest's wbinvd can be a no-op")
        }
        (false, false) => {
            format!("{nc} bytes written with No Snoop may bypass the CPU caches: a guest's wbinvd must be executed")
        }
        (true, true) => format!("coherent whatever No Snoop says (CANWBS; {nc} non-coherent bytes): no maintenance"),
        (true, false) => {
            format!("{nc} bytes written with No Snoop bypass the caches: the guest needs cache maintenance")
        }
    };
    step("    coherency of its No Snoop writes", outcome);
    drop(engine);
    dev.detach(&ctx, NO_PASID);
    ctx.ioas_unmap(ioas, 0, u64::MAX).map_err(e("unmap"))?;
    Ok(())
}
