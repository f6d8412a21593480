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
    /// Print the report as one JSON object (the summary and register lines
    /// as strings, each device's facts as fields, its IOMMU_GET_HW_INFO
    /// data in hex).
    #[arg(long)]
    json: bool,
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

/// What `info` found, rendered as text or JSON.
struct Report {
    model: &'static str,
    /// The IOMMU's summary: the first line is its name.
    iommu: Vec<String>,
    /// Every register field (with `--registers`).
    registers: Vec<String>,
    devices: Vec<DeviceReport>,
}

struct DeviceReport {
    index: u32,
    kind: String,
    bdf: String,
    devnum: (u32, u32),
    group: u32,
    pasid_bits: u32,
    dirty_tracking: bool,
    /// `IOMMU_GET_HW_INFO`: the type and the data, or why it fails.
    hw_info: Result<(u32, Vec<u8>), String>,
    enforced_coherent: bool,
    /// What the coherency outcome means, one line each.
    coherency: Vec<String>,
}

fn iommu_lines(p: &Platform, registers: bool) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut regs = Vec::new();
    match &p.iommu {
        IommuModel::Mock => {
            lines.push("IOMMU: the kernel selftest's mock IOMMU".to_string());
            lines.push("cache-coherent DMA: yes; snoop control: no (IOMMU_CAP_ENFORCE_CACHE_COHERENCY unset)".into());
            lines.push(format!(
                "page size {}; aperture {:#x}..={:#x}",
                sizes(uiommufd_hw::mock::MOCK_IO_PAGE_SIZE),
                uiommufd_abi::test_cmd::MOCK_APERTURE_START,
                uiommufd_abi::test_cmd::MOCK_APERTURE_LAST
            ));
        }
        IommuModel::Vtd(unit) => {
            let i = unit.info();
            lines.push("IOMMU: Intel VT-d".into());
            lines.push(unit.regs().boot_line("dmar0", 0xfed9_0000));
            lines.push(format!(
                "scalable mode: {}; PASID: {} ({} PASIDs); nesting: {}",
                yes(i.sm_supported()),
                yes(i.pasid_supported()),
                i.max_pasids(),
                yes(i.nested_supported())
            ));
            lines.push(format!(
                "dirty tracking (SSADS): {}; snoop control (SC): {}; coherent page walks: {}",
                yes(i.ssads_supported()),
                yes(i.snoop_control()),
                yes(i.paging_structure_coherency())
            ));
            let (start, last) = i.domain_aperture();
            lines.push(format!(
                "domain: {}-level, {} address bits, IOVA {start:#x}..={last:#x}",
                i.domain_levels(),
                i.domain_gaw()
            ));
            lines.push(format!(
                "second-stage page sizes: {}; first-stage: {}",
                sizes(i.ss_pgsize_bitmap()),
                sizes(i.fs_pgsize_bitmap())
            ));
            let msi = i.msi_region();
            lines.push(format!("reserved: MSI window {:#x}..={:#x}", msi.start, msi.start + msi.length - 1));
            lines.push(format!("domain IDs: {}", i.ndoms()));
            if registers {
                regs = unit.regs().decode();
            }
        }
        IommuModel::Amd(unit) => {
            lines = crate::amd_info::describe(unit);
            if registers {
                regs = unit.regs().decode();
            }
        }
        IommuModel::Smmuv3(unit, spec) => {
            lines = crate::smmu_info::describe(unit, spec);
            if registers {
                regs = unit.regs().decode();
            }
        }
    }
    (lines, regs)
}

fn device_report(p: &Platform, d: &uiommufd_devices::platform::PlatformDevice) -> DeviceReport {
    let devnum = d.devnum();
    debug_assert_eq!(devnum.0, VFIO_DEV_MAJOR);
    let enforced = d.iommu.capable(Cap::EnforceCacheCoherency);
    let coherency = match &p.iommu {
        IommuModel::Smmuv3(unit, _) => crate::smmu_info::device_coherency(unit, enforced),
        IommuModel::Amd(_) => {
            let mut v = Vec::new();
            if let Some(a) = uiommufd_hw::amd::AmdDevice::of(&d.iommu) {
                v.push(format!("DeviceID {:#06x}; {}", a.devid(), a.dte().describe()[1]));
            }
            v.extend(crate::amd_info::device_coherency());
            v
        }
        _ => vec![
            format!(
                "coherency: DMA is {}; No Snoop is enabled in the device's Device Control after reset",
                if enforced { "enforced coherent (the IOMMU forces snooping)" } else { "NOT enforced coherent" }
            ),
            format!(
                "a guest's wbinvd: {}",
                if enforced {
                    "can be a no-op"
                } else {
                    "must be executed (non-snooped DMA can bypass the CPU caches); or clear Enable No Snoop"
                }
            ),
        ],
    };
    DeviceReport {
        index: d.index,
        kind: d.kind.to_string(),
        bdf: d.bdf.to_string(),
        devnum,
        group: d.group,
        pasid_bits: d.iommu.max_pasid_log2(),
        dirty_tracking: d.iommu.capable(Cap::DirtyTracking),
        hw_info: d.iommu.hw_info(0).map_err(|e| e.to_string()),
        enforced_coherent: enforced,
        coherency,
    }
}

impl Report {
    fn text(&self) -> String {
        let mut out = String::new();
        for (n, line) in self.iommu.iter().enumerate() {
            out += &format!("{}{line}\n", if n == 0 { "" } else { "  " });
        }
        if !self.registers.is_empty() {
            out += "  registers:\n";
            for line in &self.registers {
                out += &format!("    {line}\n");
            }
        }
        for d in &self.devices {
            let (maj, min) = d.devnum;
            out += &format!(
                "\ndevice {} ({}) at {}: /dev/vfio/devices/vfio{} (char {maj}:{min}), IOMMU group {}\n",
                d.index, d.kind, d.bdf, d.index, d.group
            );
            let pasid = if d.pasid_bits == 0 { "no".to_string() } else { format!("{} bits", d.pasid_bits) };
            out += &format!("  PASID: {pasid}\n  dirty tracking: {}\n", yes(d.dirty_tracking));
            match &d.hw_info {
                Ok((ty, data)) => out += &format!("  IOMMU_GET_HW_INFO: type {ty}, {} bytes of data\n", data.len()),
                Err(e) => out += &format!("  IOMMU_GET_HW_INFO: {e}\n"),
            }
            for line in &d.coherency {
                out += &format!("  {line}\n");
            }
        }
        out
    }

    /// The same as one JSON object (`uiommufd info --json`).
    fn json(&self) -> String {
        let strings = |v: &[String]| format!("[{}]", v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(", "));
        let devices: Vec<String> = self
            .devices
            .iter()
            .map(|d| {
                let hw = match &d.hw_info {
                    Ok((ty, data)) => format!(
                        "{{\"type\": {ty}, \"data\": {}}}",
                        json_str(&data.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    ),
                    Err(e) => format!("{{\"error\": {}}}", json_str(e)),
                };
                format!(
                    "{{\"index\": {}, \"kind\": {}, \"bdf\": {}, \"cdev\": {}, \"major\": {}, \"minor\": {}, \
                     \"iommu_group\": {}, \"pasid_bits\": {}, \"dirty_tracking\": {}, \"hw_info\": {hw}, \
                     \"enforced_coherent\": {}, \"coherency\": {}}}",
                    d.index,
                    json_str(&d.kind),
                    json_str(&d.bdf),
                    json_str(&format!("/dev/vfio/devices/vfio{}", d.index)),
                    d.devnum.0,
                    d.devnum.1,
                    d.group,
                    d.pasid_bits,
                    d.dirty_tracking,
                    d.enforced_coherent,
                    strings(&d.coherency)
                )
            })
            .collect();
        format!(
            "{{\"iommu\": {{\"model\": {}, \"summary\": {}, \"registers\": {}}}, \"devices\": [{}]}}\n",
            json_str(self.model),
            strings(&self.iommu),
            strings(&self.registers),
            devices.join(", ")
        )
    }
}

/// A JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            c if (c as u32) < 0x20 => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn info(args: InfoArgs) -> Result<ExitCode, String> {
    let devices = if args.devices.is_empty() { "dma-engine".to_string() } else { args.devices.join(";") };
    let p = Platform::new(&args.iommu, &devices).map_err(|e| format!("{e} (see `uiommufd info --help`)"))?;
    let (iommu, registers) = iommu_lines(&p, args.registers);
    let report = Report {
        model: p.iommu.name(),
        iommu,
        registers,
        devices: p.devices.iter().map(|d| device_report(&p, d)).collect(),
    };
    print!("{}", if args.json { report.json() } else { report.text() });
    Ok(ExitCode::SUCCESS)
}
