//! `uiommufd demo`: the main iommufd path, step by step, through the same
//! ioctl handlers the preload shim uses (real structs at real addresses).

use std::process::ExitCode;

use uiommufd_abi as abi;
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
}

pub fn demo() -> Result<ExitCode, String> {
    println!("uiommufd demo: the iommufd main path, served in-process by the engine");
    println!();
    let d = Demo { file: File::open(Node::Iommu), fds: LocalFds::default() };
    println!("open(\"/dev/iommu\")                      -> an iommufd context (selftest mock IOMMU)");

    let mut alloc = abi::IommuIoasAlloc { size: size_of::<abi::IommuIoasAlloc>() as u32, ..Default::default() };
    d.ioctl("IOMMU_IOAS_ALLOC", abi::IOMMU_IOAS_ALLOC, &mut alloc)?;
    let ioas = alloc.out_ioas_id;
    println!("IOMMU_IOAS_ALLOC                         -> IOAS id {ioas}");

    let mut opt = abi::IommuOption {
        size: size_of::<abi::IommuOption>() as u32,
        option_id: abi::IOMMU_OPTION_HUGE_PAGES,
        op: abi::IOMMU_OPTION_OP_GET,
        object_id: ioas,
        ..Default::default()
    };
    d.ioctl("IOMMU_OPTION", abi::IOMMU_OPTION, &mut opt)?;
    println!("IOMMU_OPTION get HUGE_PAGES on IOAS {ioas}   -> {} (large IOMMU pages allowed)", opt.val64);

    opt.option_id = abi::IOMMU_OPTION_RLIMIT_MODE;
    opt.object_id = 0;
    d.ioctl("IOMMU_OPTION", abi::IOMMU_OPTION, &mut opt)?;
    let mode = if opt.val64 == 0 { "per user" } else { "per process" };
    println!("IOMMU_OPTION get RLIMIT_MODE              -> {} (pinned pages charged {mode})", opt.val64);

    let mut destroy = abi::IommuDestroy { size: size_of::<abi::IommuDestroy>() as u32, id: ioas };
    d.ioctl("IOMMU_DESTROY", abi::IOMMU_DESTROY, &mut destroy)?;
    println!("IOMMU_DESTROY IOAS {ioas}                     -> ok");

    match d.file.ioctl(&d.fds, abi::IOMMU_DESTROY as u64, destroy.as_mut_bytes().as_mut_ptr() as u64) {
        Err(e) => println!(
            "IOMMU_DESTROY IOAS {ioas} again               -> {:?}, as the kernel answers ({})",
            e.errno, e.context
        ),
        Ok(_) => return Err("destroying a destroyed IOAS succeeded".into()),
    }
    println!();
    println!("Next: run an unmodified program against uiommufd with");
    println!("  uiommufd run -- ./your-iommufd-program");
    Ok(ExitCode::SUCCESS)
}
