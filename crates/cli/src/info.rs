//! `uiommufd info`: what the emulated machine is, in the terms a VMM
//! developer reads: the IOMMU's registers decoded, what the Linux driver
//! derives from them (address widths, page sizes, PASIDs, nesting, dirty
//! tracking), the devices behind it with their cdev numbers, and the
//! coherency outcome per device (whether a guest's `wbinvd` can be a no-op).

use std::process::ExitCode;

use clap::Args;
use uiommufd_devices::platform::{IommuModel, Platform, VFIO_DEV_MAJOR};
use uiommufd_hw::device::Cap;

#[derive(Args)]
pub struct InfoArgs {
    /// IOMMU model: `mock`, `vtd[:cap=HEX,ecap=HEX,sc=0|1,nesting=0|1,ssads=0|1,sm=0|1,pasid=BITS]`
    /// (cap/ecap as the kernel prints them at boot: "dmar0: ... cap d2008c22260286 ecap f42"),
    /// or `smmuv3[:idr0=HEX,idr1=HEX,idr5=HEX,...,coherent=0|1,fwb=0|1,httu=0..3,canwbs=0|1,oas=BITS,...]`
    /// (raw registers as IOMMU_GET_HW_INFO returns them, then fields),
    /// or `amd[:efr=HEX,efr2=HEX,hd=0|1,gt=0|1,hats=0..3,la57=0|1,pgtable=v1|v2,nested=0|1,...]`
    /// (EFR/EFR2 as the kernel prints them at boot: "AMD-Vi: Extended features (0x25bf732fa2295afe, 0x1d)").
    #[arg(long, default_value = "vtd")]
    iommu: String,
    /// A device behind it: `dma-engine[:pasid=BITS,priv=0|1,bdf=DDDD:BB:DD.F]` (repeatable).
    #[arg(long = "device", value_name = "SPEC")]
    devices: Vec<String>,
    /// Print every register field, not only the summary.
    #[arg(long)]
    registers: bool,
}

pub(crate) fn sizes(bitmap: u64) -> String {
    let mut out = Vec::new();
    for bit in 0..64 {
        if bitmap & (1 << bit) != 0 {
            let sz = 1u64 << bit;
            out.push(match sz {
                s if s >= 1 << 30 => format!("{}G", s >> 30),
                s if s >= 1 << 20 => format!("{}M", s >> 20),
                s if s >= 1 << 10 => format!("{}K", s >> 10),
                s => format!("{s}"),
            });
        }
    }
    out.join(" ")
}

pub(crate) fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn info(args: InfoArgs) -> Result<ExitCode, String> {
    let devices = if args.devices.is_empty() { "dma-engine".to_string() } else { args.devices.join(";") };
    let p = Platform::new(&args.iommu, &devices).map_err(|e| format!("{e} (see `uiommufd info --help`)"))?;
    match &p.iommu {
        IommuModel::Mock => {
            println!("IOMMU: the kernel selftest's mock IOMMU");
            println!("  cache-coherent DMA: yes; snoop control: no (IOMMU_CAP_ENFORCE_CACHE_COHERENCY unset)");
            println!(
                "  page size {}; aperture {:#x}..={:#x}",
                sizes(uiommufd_hw::mock::MOCK_IO_PAGE_SIZE),
                uiommufd_abi::test_cmd::MOCK_APERTURE_START,
                uiommufd_abi::test_cmd::MOCK_APERTURE_LAST
            );
        }
        IommuModel::Vtd(unit) => {
            let i = unit.info();
            println!("IOMMU: Intel VT-d");
            println!("  {}", unit.regs().boot_line("dmar0", 0xfed9_0000));
            println!(
                "  scalable mode: {}; PASID: {} ({} PASIDs); nesting: {}",
                yes(i.sm_supported()),
                yes(i.pasid_supported()),
                i.max_pasids(),
                yes(i.nested_supported())
            );
            println!(
                "  dirty tracking (SSADS): {}; snoop control (SC): {}; coherent page walks: {}",
                yes(i.ssads_supported()),
                yes(i.snoop_control()),
                yes(i.paging_structure_coherency())
            );
            let (start, last) = i.domain_aperture();
            println!(
                "  domain: {}-level, {} address bits, IOVA {start:#x}..={last:#x}",
                i.domain_levels(),
                i.domain_gaw()
            );
            println!(
                "  second-stage page sizes: {}; first-stage: {}",
                sizes(i.ss_pgsize_bitmap()),
                sizes(i.fs_pgsize_bitmap())
            );
            let msi = i.msi_region();
            println!("  reserved: MSI window {:#x}..={:#x}", msi.start, msi.start + msi.length - 1);
            println!("  domain IDs: {}", i.ndoms());
            if args.registers {
                println!("  registers:");
                for line in unit.regs().decode() {
                    println!("    {line}");
                }
            }
        }
        IommuModel::Amd(unit) => {
            for (n, line) in crate::amd_info::describe(unit).iter().enumerate() {
                println!("{}{line}", if n == 0 { "" } else { "  " });
            }
            if args.registers {
                println!("  registers:");
                for line in unit.regs().decode() {
                    println!("    {line}");
                }
            }
        }
        IommuModel::Smmuv3(unit, spec) => {
            for (n, line) in crate::smmu_info::describe(unit, spec).iter().enumerate() {
                println!("{}{line}", if n == 0 { "" } else { "  " });
            }
            if args.registers {
                println!("  registers:");
                for line in unit.regs().decode() {
                    println!("    {line}");
                }
            }
        }
    }
    for d in &p.devices {
        let (maj, min) = d.devnum();
        debug_assert_eq!(maj, VFIO_DEV_MAJOR);
        println!();
        println!(
            "device {} ({}) at {}: /dev/vfio/devices/vfio{} (char {maj}:{min}), IOMMU group {}",
            d.index, d.kind, d.bdf, d.index, d.group
        );
        let pasid = d.iommu.max_pasid_log2();
        println!("  PASID: {}", if pasid == 0 { "no".to_string() } else { format!("{pasid} bits") });
        println!("  dirty tracking: {}", yes(d.iommu.capable(Cap::DirtyTracking)));
        match d.iommu.hw_info(0) {
            Ok((ty, data)) => println!("  IOMMU_GET_HW_INFO: type {ty}, {} bytes of data", data.len()),
            Err(e) => println!("  IOMMU_GET_HW_INFO: {e}"),
        }
        let enforced = d.iommu.capable(Cap::EnforceCacheCoherency);
        if let IommuModel::Smmuv3(unit, _) = &p.iommu {
            for line in crate::smmu_info::device_coherency(unit, enforced) {
                println!("  {line}");
            }
            continue;
        }
        if let IommuModel::Amd(_) = &p.iommu {
            if let Some(a) = uiommufd_hw::amd::AmdDevice::of(&d.iommu) {
                println!("  DeviceID {:#06x}; {}", a.devid(), a.dte().describe()[1]);
            }
            for line in crate::amd_info::device_coherency() {
                println!("  {line}");
            }
            continue;
        }
        println!(
            "  coherency: DMA is {}; No Snoop is enabled in the device's Device Control after reset",
            if enforced { "enforced coherent (the IOMMU forces snooping)" } else { "NOT enforced coherent" }
        );
        println!(
            "  a guest's wbinvd: {}",
            if enforced {
                "can be a no-op"
            } else {
                "must be executed (non-snooped DMA can bypass the CPU caches); or clear Enable No Snoop"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
