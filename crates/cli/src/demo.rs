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
    println!("Next: run an unmodified program against uiommufd with");
    println!("  uiommufd run -- ./your-iommufd-program");
    Ok(ExitCode::SUCCESS)
}
