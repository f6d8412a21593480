//! The emulated machine: which IOMMU model, and which devices sit behind it.
//!
//! A [`Platform`] is built from two short specifications, the same ones
//! `uiommufd run --iommu ... --device ...` passes to the shim through
//! `UIOMMUFD_IOMMU` and `UIOMMUFD_DEVICES`:
//!
//! - IOMMU: `mock` (the kernel selftest's mock IOMMU: cache-coherent DMA,
//!   no snoop control) or `vtd[:key=value,...]` (an Intel VT-d unit; keys:
//!   `cap=HEX,ecap=HEX` as the kernel prints them at boot, `sc=0|1` snoop
//!   control, `nesting=0|1`, `ssads=0|1` dirty tracking, `sm=0|1` the
//!   driver's scalable mode, `pasid=BITS`) or `smmuv3[:key=value,...]` (an
//!   Arm SMMUv3; keys in `uiommufd_hw::smmuv3::spec`: raw `idr0..5=HEX`,
//!   `coherent`, `fwb`, `httu`, `canwbs`, `oas`, granules, ...; masters
//!   get their requester ID as StreamID) or `amd[:key=value,...]` (an AMD
//!   IOMMU; keys in `uiommufd_hw::amd::spec`: raw `efr=HEX,efr2=HEX` as
//!   Linux prints them at boot, EFR/EFR2 fields, `la57`, `vasize`,
//!   `pgtable`, `nested`, ...; devices get their requester ID as
//!   DeviceID).
//! - Devices: `;`-separated, each `KIND[:key=value,...]`; kinds:
//!   `dma-engine` (keys: `pasid=BITS` (0 for no PASID capability),
//!   `priv=0|1`, `bdf=DDDD:BB:DD.F`).
//!
//! Device `i` is `/dev/vfio/devices/vfio<i>`, in IOMMU group `i`, at BDF
//! `0000:00:<4+i>.0` unless given. Each gets the IOMMU driver's view of it
//! (an [`IommuDevice`]) from the chosen model.

use std::sync::{Arc, OnceLock};

use uiommufd_abi::test_cmd::MOCK_FLAGS_DEVICE_PASID;
use uiommufd_hw::amd::{AmdDevice, AmdIommu, AmdSpec};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::mock::MockDevice;
use uiommufd_hw::smmuv3::{SmmuDevice, SmmuIommu, SmmuSpec};
use uiommufd_hw::vtd::device::{VtdDevice, VtdIommu};
use uiommufd_hw::vtd::info::DriverParams;
use uiommufd_hw::vtd::regs::{VtdRegs, VtdRegsBuilder};

use crate::dma_engine::{DmaEngine, DmaEngineOptions};
use crate::pci::PciDevice;

/// Major number of the emulated `vfio-dev` character devices (the kernel
/// allocates one dynamically; this is a value from its dynamic range).
pub const VFIO_DEV_MAJOR: u32 = 511;
/// Major number of the emulated VFIO group nodes `/dev/vfio/<group>` (the
/// kernel's `vfio` chrdev region is dynamic too; this is the next value
/// down in the same range). The minor is the group number.
pub const VFIO_GROUP_MAJOR: u32 = 510;
/// Major and minor of the emulated `/dev/iommu` (a misc device, major 10).
pub const IOMMU_DEV: (u32, u32) = (10, 122);
/// Major and minor of the emulated `/dev/vfio/vfio` (misc, `VFIO_MINOR`).
pub const VFIO_CONTAINER_DEV: (u32, u32) = (10, 196);

/// The IOMMU model of the platform.
pub enum IommuModel {
    Mock,
    Vtd(Arc<VtdIommu>),
    /// An SMMU and the platform facts its masters inherit (CANWBS, ATS).
    Smmuv3(Arc<SmmuIommu>, SmmuSpec),
    /// An AMD IOMMU.
    Amd(Arc<AmdIommu>),
}

impl IommuModel {
    pub fn name(&self) -> &'static str {
        match self {
            IommuModel::Mock => "mock",
            IommuModel::Vtd(_) => "vtd",
            IommuModel::Smmuv3(..) => "smmuv3",
            IommuModel::Amd(_) => "amd",
        }
    }
}

/// How a model reads a 64-bit word of emulated physical memory (guest
/// tables and structures of nested translation): the frame table.
fn phys_word(hpa: u64) -> Result<u64, uiommufd_abi::Errno> {
    let mut b = [0u8; 8];
    uiommufd_memory::frames::read_phys(hpa, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// The PCI requester ID of `bdf` (`DDDD:BB:DD.F`), which the SMMU sees
/// as the StreamID (an IORT identity mapping) and the AMD IOMMU as the
/// DeviceID.
fn requester_id(bdf: &str) -> u32 {
    let field = |r: core::ops::Range<usize>| u32::from_str_radix(&bdf[r], 16).unwrap_or(0);
    field(5..7) << 8 | field(8..10) << 3 | field(11..12)
}

/// One emulated device.
pub struct PlatformDevice {
    /// `N` of `/dev/vfio/devices/vfioN` (also its minor number).
    pub index: u32,
    pub bdf: String,
    pub group: u32,
    pub kind: String,
    pub pci: Arc<dyn PciDevice>,
    /// The device as its IOMMU driver sees it.
    pub iommu: Arc<dyn IommuDevice>,
}

impl PlatformDevice {
    /// `(major, minor)` of its character device.
    pub fn devnum(&self) -> (u32, u32) {
        (VFIO_DEV_MAJOR, self.index)
    }
}

/// The emulated machine.
pub struct Platform {
    pub iommu: IommuModel,
    pub devices: Vec<PlatformDevice>,
}

fn parse_kv(s: &str) -> Result<Vec<(&str, &str)>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').ok_or_else(|| format!("`{p}` is not key=value")))
        .collect()
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "0" | "off" | "no" => Ok(false),
        "1" | "on" | "yes" => Ok(true),
        _ => Err(format!("{k}={v}: expected 0 or 1")),
    }
}

fn parse_hex(k: &str, v: &str) -> Result<u64, String> {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).map_err(|_| format!("{k}={v}: expected a hex number"))
}

/// The IOMMU model a specification names.
pub fn parse_iommu(spec: &str) -> Result<IommuModel, String> {
    let (kind, opts) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "" | "mock" => {
            if !opts.is_empty() {
                return Err("the mock IOMMU takes no options".into());
            }
            Ok(IommuModel::Mock)
        }
        "vtd" => {
            let kv = parse_kv(opts)?;
            let mut regs = VtdRegs::default();
            let (mut cap, mut ecap) = (None, None);
            for &(k, v) in &kv {
                match k {
                    "cap" => cap = Some(parse_hex(k, v)?),
                    "ecap" => ecap = Some(parse_hex(k, v)?),
                    _ => {}
                }
            }
            match (cap, ecap) {
                (Some(c), Some(e)) => {
                    regs = VtdRegs::parse_boot_line(&format!("cap {c:x} ecap {e:x}"))
                        .map_err(|_| "cap/ecap do not describe a usable VT-d unit".to_string())?
                }
                (None, None) => {}
                _ => return Err("give both cap= and ecap=".into()),
            }
            let mut b = VtdRegsBuilder::from(regs);
            let mut params = DriverParams::default();
            for &(k, v) in &kv {
                b = match k {
                    "cap" | "ecap" => b,
                    "sc" => b.snoop_control(parse_bool(k, v)?),
                    "nesting" => b.nesting(parse_bool(k, v)?),
                    "ssads" => b.ssads(parse_bool(k, v)?),
                    "pasid" => b.pasid_bits(v.parse().map_err(|_| format!("{k}={v}: expected a number"))?),
                    "sm" => {
                        params.scalable_mode = parse_bool(k, v)?;
                        b
                    }
                    _ => return Err(format!("unknown VT-d option `{k}`")),
                };
            }
            let iommu = VtdIommu::with_params(b.build(), params)
                .map_err(|e| format!("the Intel driver would not use this unit ({e})"))?;
            // First-stage tables of nested domains live in guest memory:
            // the unit reads them from the emulated physical frames.
            iommu.set_phys_reader(Arc::new(phys_word));
            Ok(IommuModel::Vtd(iommu))
        }
        "smmuv3" => {
            let spec = SmmuSpec::parse(opts)?;
            let unit = spec.build()?;
            // Guest CD tables and stage 1 tables, read through stage 2.
            unit.set_phys_reader(Arc::new(phys_word));
            Ok(IommuModel::Smmuv3(unit, spec))
        }
        "amd" => {
            let unit = AmdSpec::parse(opts)?.build()?;
            // GCR3 tables and guest tables of nested domains, read through
            // the nest parent.
            unit.set_phys_reader(Arc::new(phys_word));
            Ok(IommuModel::Amd(unit))
        }
        _ => Err(format!("unknown IOMMU model `{kind}` (known: mock, vtd, smmuv3, amd)")),
    }
}

impl Platform {
    /// Build the machine `iommu` and `devices` describe.
    pub fn new(iommu: &str, devices: &str) -> Result<Platform, String> {
        let model = parse_iommu(iommu)?;
        let mut out = Vec::new();
        for (i, spec) in devices.split(';').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
            let index = i as u32;
            let (kind, opts) = spec.split_once(':').unwrap_or((spec, ""));
            let mut bdf = format!("0000:00:{:02x}.0", 4 + i);
            let (pci, pasid_bits): (Arc<dyn PciDevice>, u32) = match kind {
                "dma-engine" => {
                    let mut o = DmaEngineOptions::default();
                    for (k, v) in parse_kv(opts)? {
                        match k {
                            "pasid" => {
                                let w: u8 = v.parse().map_err(|_| format!("{k}={v}: expected a number"))?;
                                if w > 20 {
                                    return Err(format!("{k}={v}: PCIe PASIDs have at most 20 bits"));
                                }
                                o.pasid_width = (w != 0).then_some(w);
                            }
                            "priv" => o.privileged_mode = parse_bool(k, v)?,
                            "bdf" => bdf = v.to_string(),
                            _ => return Err(format!("unknown dma-engine option `{k}`")),
                        }
                    }
                    let name = format!("dma-engine{index}");
                    let dev = DmaEngine::with_options(&name, o).map_err(|e| format!("{name}: {e}"))?;
                    (Arc::new(dev), o.pasid_width.unwrap_or(0) as u32)
                }
                _ => return Err(format!("unknown device kind `{kind}` (known: dma-engine)")),
            };
            if !valid_bdf(&bdf) {
                return Err(format!("bdf={bdf}: expected DDDD:BB:DD.F"));
            }
            let iommu: Arc<dyn IommuDevice> = match &model {
                IommuModel::Mock => {
                    let flags = if pasid_bits != 0 { MOCK_FLAGS_DEVICE_PASID } else { 0 };
                    Arc::new(MockDevice::new(flags).map_err(|e| format!("mock device: {e}"))?)
                }
                IommuModel::Vtd(unit) => {
                    let mut d = VtdDevice::new(unit, bdf.clone());
                    if pasid_bits != 0 {
                        d = d.with_pasid(pasid_bits, false, true);
                    }
                    Arc::new(d)
                }
                IommuModel::Smmuv3(unit, spec) => {
                    let sid = requester_id(&bdf);
                    let d = SmmuDevice::new(unit, bdf.clone(), sid)
                        .map_err(|e| format!("{bdf}: StreamID {sid:#x} does not fit the SMMU ({e})"))?;
                    // The DMA engine has no ATS capability.
                    Arc::new(d.with_pasid(pasid_bits).with_canwbs(spec.canwbs).with_ats(false, spec.rc_ats))
                }
                IommuModel::Amd(unit) => {
                    let devid = requester_id(&bdf) as u16;
                    if out.iter().any(|d: &PlatformDevice| AmdDevice::of(&d.iommu).is_some_and(|a| a.devid() == devid))
                    {
                        return Err(format!("{bdf}: another device has DeviceID {devid:#06x}"));
                    }
                    Arc::new(AmdDevice::new(unit, bdf.clone(), devid).with_pasid(pasid_bits))
                }
            };
            out.push(PlatformDevice { index, bdf, group: index, kind: kind.to_string(), pci, iommu });
        }
        if out.iter().enumerate().any(|(i, d)| out[..i].iter().any(|e| e.bdf == d.bdf)) {
            return Err("two devices at the same BDF".into());
        }
        Ok(Platform { iommu: model, devices: out })
    }

    /// The process's platform, from `UIOMMUFD_IOMMU` and `UIOMMUFD_DEVICES`
    /// (built on first use).
    pub fn global() -> Result<&'static Platform, &'static str> {
        static P: OnceLock<Result<Platform, String>> = OnceLock::new();
        P.get_or_init(|| {
            let iommu = std::env::var("UIOMMUFD_IOMMU").unwrap_or_default();
            let devices = std::env::var("UIOMMUFD_DEVICES").unwrap_or_default();
            Platform::new(&iommu, &devices)
        })
        .as_ref()
        .map_err(|e| e.as_str())
    }

    /// Device `/dev/vfio/devices/vfio<index>`.
    pub fn device(&self, index: u32) -> Option<&PlatformDevice> {
        self.devices.get(index as usize)
    }

    /// The device at `bdf`.
    pub fn by_bdf(&self, bdf: &str) -> Option<&PlatformDevice> {
        self.devices.iter().find(|d| d.bdf == bdf)
    }
}

fn valid_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && [0..4, 5..7, 8..10].iter().all(|r| b[r.clone()].iter().all(u8::is_ascii_hexdigit))
        && (b'0'..=b'7').contains(&b[11])
}

#[cfg(test)]
mod tests {
    use super::*;
    use uiommufd_abi::test_cmd::MOCK_PASID_WIDTH;
    use uiommufd_hw::device::Cap;

    #[test]
    fn specs_build_the_machine() {
        let p = Platform::new("mock", "dma-engine; dma-engine:pasid=0,bdf=0000:01:00.0").unwrap();
        assert_eq!(p.devices.len(), 2);
        assert_eq!((p.devices[0].bdf.as_str(), p.devices[0].index), ("0000:00:04.0", 0));
        assert_eq!(p.devices[1].bdf, "0000:01:00.0");
        assert_eq!(p.devices[0].iommu.max_pasid_log2(), MOCK_PASID_WIDTH);
        assert_eq!(p.devices[1].iommu.max_pasid_log2(), 0);
        assert!(!p.devices[0].iommu.capable(Cap::EnforceCacheCoherency));
        assert_eq!(p.devices[1].devnum(), (VFIO_DEV_MAJOR, 1));
        assert!(p.by_bdf("0000:01:00.0").is_some());
    }

    #[test]
    fn vtd_snoop_control_decides_enforcement() {
        let p = Platform::new("vtd", "dma-engine").unwrap();
        assert_eq!(p.iommu.name(), "vtd");
        assert!(p.devices[0].iommu.capable(Cap::EnforceCacheCoherency));
        let p = Platform::new("vtd:sc=0", "dma-engine").unwrap();
        assert!(!p.devices[0].iommu.capable(Cap::EnforceCacheCoherency));
        // The client unit from a boot log: no snoop control.
        let p = Platform::new("vtd:cap=d2008c22260286,ecap=f42", "dma-engine:pasid=0").unwrap();
        assert!(!p.devices[0].iommu.capable(Cap::EnforceCacheCoherency));
    }

    #[test]
    fn smmuv3_coherency_follows_cohacc_and_canwbs() {
        let p = Platform::new("smmuv3", "dma-engine; dma-engine:bdf=0000:01:02.3").unwrap();
        assert_eq!(p.iommu.name(), "smmuv3");
        let d = &p.devices[0].iommu;
        assert!(d.capable(Cap::CacheCoherency));
        assert!(!d.capable(Cap::EnforceCacheCoherency));
        assert_eq!(d.max_pasid_log2(), 20);
        let sids: Vec<u32> =
            p.devices.iter().map(|d| uiommufd_hw::smmuv3::SmmuDevice::of(&d.iommu).unwrap().sid()).collect();
        assert_eq!(sids, vec![0x20, 0x113]);
        let p = Platform::new("smmuv3:canwbs=1", "dma-engine:pasid=0").unwrap();
        assert!(p.devices[0].iommu.capable(Cap::EnforceCacheCoherency));
        assert_eq!(p.devices[0].iommu.max_pasid_log2(), 0);
        // COHACC clear: iommufd will refuse to bind.
        let p = Platform::new("smmuv3:coherent=0", "dma-engine").unwrap();
        assert!(!p.devices[0].iommu.capable(Cap::CacheCoherency));
    }

    #[test]
    fn amd_always_enforces_and_follows_efr() {
        let p = Platform::new("amd", "dma-engine; dma-engine:pasid=0,bdf=0000:01:02.3").unwrap();
        assert_eq!(p.iommu.name(), "amd");
        let d = &p.devices[0].iommu;
        assert!(d.capable(Cap::CacheCoherency) && d.capable(Cap::EnforceCacheCoherency));
        assert!(d.capable(Cap::DirtyTracking));
        // A 20-bit PASID device behind a 16-bit IOMMU.
        assert_eq!(d.max_pasid_log2(), 15);
        let ids: Vec<u16> = p.devices.iter().map(|d| AmdDevice::of(&d.iommu).unwrap().devid()).collect();
        assert_eq!(ids, vec![0x20, 0x113]);
        // Raw values from a boot line, HDSup cleared on top.
        let p = Platform::new("amd:efr=25bf732fa2295afe,efr2=1d,hd=0", "dma-engine").unwrap();
        assert!(!p.devices[0].iommu.capable(Cap::DirtyTracking));
        assert!(p.devices[0].iommu.capable(Cap::EnforceCacheCoherency));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (iommu, devs, want) in [
            ("intel", "", "unknown IOMMU model"),
            ("amd:bogus=1", "", "unknown AMD IOMMU option"),
            ("amd:hats=3,gt=0", "", "would not use"),
            ("vtd:sc=2", "", "expected 0 or 1"),
            ("vtd:cap=1", "", "both cap= and ecap="),
            ("vtd:bogus=1", "", "unknown VT-d option"),
            ("smmuv3:bogus=1", "", "unknown SMMUv3 option"),
            ("smmuv3:s1=0,s2=0", "", "would not use this SMMU"),
            ("smmuv3:sid=4", "dma-engine", "does not fit the SMMU"),
            ("mock", "nic", "unknown device kind"),
            ("mock", "dma-engine:pasid=21", "at most 20 bits"),
            ("mock", "dma-engine:bdf=00:04.0", "expected DDDD:BB:DD.F"),
            ("mock", "dma-engine;dma-engine:bdf=0000:00:04.0", "same BDF"),
        ] {
            let e = Platform::new(iommu, devs).err().unwrap_or_default();
            assert!(e.contains(want), "{iommu} / {devs}: {e}");
        }
    }
}
