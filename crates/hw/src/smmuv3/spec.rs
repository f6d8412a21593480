//! `--iommu smmuv3[:key=value,...]`: the SMMU of an emulated platform,
//! from the keys `uiommufd run`, `info` and `demo` take.
//!
//! Registers start from [`SmmuRegs::default`], or from raw values when
//! `idr0=`, `idr1=` and `idr5=` are given (the `idr[]`, `iidr`, `aidr`
//! that `IOMMU_GET_HW_INFO` returns on a real machine; `idr2`, `idr3`,
//! `idr4`, `iidr`, `aidr` optional), then the named fields are applied on
//! top, in any order:
//!
//! | key | register field or firmware fact |
//! | --- | --- |
//! | `coherent=0\|1` | IDR0.COHACC (and firmware agreeing with it) |
//! | `s1=0\|1`, `s2=0\|1` | IDR0.S1P, IDR0.S2P |
//! | `httu=0..3` | IDR0.HTTU (2: access flag and dirty state) |
//! | `ats=0\|1` | IDR0.ATS and the IORT root complex's ATS attribute |
//! | `pri=0\|1` | IDR0.PRI |
//! | `fwb=0\|1` | IDR3.FWB (S2FWB) |
//! | `ril=0\|1` | IDR3.RIL (range invalidation) |
//! | `ds=0\|1` | IDR5.DS |
//! | `gran4k`, `gran16k`, `gran64k` `=0\|1` | IDR5.GRAN* |
//! | `oas=BITS` | IDR5.OAS (32, 36, 40, 42, 44, 48, 52) |
//! | `sid=BITS`, `ssid=BITS` | IDR1.SIDSIZE, IDR1.SSIDSIZE |
//! | `iidr=HEX`, `aidr=HEX` | SMMU_IIDR, SMMU_AIDR |
//! | `canwbs=0\|1` | the IORT root complex is CANWBS: its masters may enforce cache coherency |
//! | `tegra264=0\|1` | an `nvidia,tegra264-smmu` (the driver's T264-SMMU-3 workaround) |
//! | `cmdqv=0\|1` | a companion Tegra241 CMDQV |
//!
//! Whatever the keys say, the SMMU is then probed as the driver does
//! (`SmmuInfo::new`): a configuration the driver would not use is an
//! error.

use std::sync::Arc;

use super::device::SmmuIommu;
use super::info::DriverParams;
use super::regs::{oas_encoding, SmmuRegs};

/// An SMMU and the platform facts around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuSpec {
    pub regs: SmmuRegs,
    pub params: DriverParams,
    /// The root complex of the PCI masters is CANWBS (IORT).
    pub canwbs: bool,
    /// The root complex allows ATS (IORT).
    pub rc_ats: bool,
}

impl Default for SmmuSpec {
    fn default() -> Self {
        SmmuSpec { regs: SmmuRegs::default(), params: DriverParams::default(), canwbs: false, rc_ats: true }
    }
}

fn flag(k: &str, v: &str) -> Result<u32, String> {
    match v {
        "0" | "off" | "no" => Ok(0),
        "1" | "on" | "yes" => Ok(1),
        _ => Err(format!("{k}={v}: expected 0 or 1")),
    }
}

fn hex(k: &str, v: &str) -> Result<u32, String> {
    let t = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
    u32::from_str_radix(t, 16).map_err(|_| format!("{k}={v}: expected a 32-bit hex number"))
}

fn num(k: &str, v: &str, max: u32) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("{k}={v}: expected a number up to {max}")),
    }
}

impl SmmuSpec {
    /// Parse the options after `smmuv3:` (comma-separated `key=value`).
    pub fn parse(opts: &str) -> Result<SmmuSpec, String> {
        let kv: Vec<(&str, &str)> = opts
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').ok_or_else(|| format!("`{p}` is not key=value")))
            .collect::<Result<_, _>>()?;
        let mut spec = SmmuSpec::default();
        let raw_keys = ["idr0", "idr1", "idr2", "idr3", "idr4", "idr5"];
        if kv.iter().any(|(k, _)| raw_keys.contains(k)) {
            let text: Vec<String> =
                kv.iter().filter(|(k, _)| raw_keys.contains(k)).map(|(k, v)| format!("{k}={v}")).collect();
            spec.regs = SmmuRegs::parse(&text.join(" "))
                .map_err(|_| "raw registers need idr0=, idr1= and idr5= as hex numbers".to_string())?;
        }
        let r = &mut spec.regs;
        for &(k, v) in &kv {
            match k {
                _ if raw_keys.contains(&k) => {}
                "coherent" => r.idr0 = r.idr0.with_cohacc(flag(k, v)?),
                "s1" => r.idr0 = r.idr0.with_s1p(flag(k, v)?),
                "s2" => r.idr0 = r.idr0.with_s2p(flag(k, v)?),
                "httu" => r.idr0 = r.idr0.with_httu(num(k, v, 3)?),
                "ats" => {
                    let on = flag(k, v)?;
                    r.idr0 = r.idr0.with_ats(on);
                    spec.rc_ats = on != 0;
                }
                "pri" => r.idr0 = r.idr0.with_pri(flag(k, v)?),
                "fwb" => r.idr3 = r.idr3.with_fwb(flag(k, v)?),
                "ril" => r.idr3 = r.idr3.with_ril(flag(k, v)?),
                "ds" => r.idr5 = r.idr5.with_ds(flag(k, v)?),
                "gran4k" => r.idr5 = r.idr5.with_gran4k(flag(k, v)?),
                "gran16k" => r.idr5 = r.idr5.with_gran16k(flag(k, v)?),
                "gran64k" => r.idr5 = r.idr5.with_gran64k(flag(k, v)?),
                "oas" => {
                    let bits = num(k, v, 52)?;
                    let enc = oas_encoding(bits).ok_or_else(|| format!("{k}={v}: not an SMMU output size"))?;
                    r.idr5 = r.idr5.with_oas(enc);
                }
                "sid" => r.idr1 = r.idr1.with_sidsize(num(k, v, 32)?),
                "ssid" => r.idr1 = r.idr1.with_ssidsize(num(k, v, 20)?),
                "iidr" => r.iidr.0 = hex(k, v)?,
                "aidr" => r.aidr.0 = hex(k, v)?,
                "canwbs" => spec.canwbs = flag(k, v)? != 0,
                "tegra264" => spec.params.tegra264 = flag(k, v)? != 0,
                "cmdqv" => spec.params.tegra241_cmdqv = flag(k, v)? != 0,
                _ => return Err(format!("unknown SMMUv3 option `{k}`")),
            }
        }
        Ok(spec)
    }

    /// The SMMU, probed as the driver does.
    pub fn build(&self) -> Result<Arc<SmmuIommu>, String> {
        SmmuIommu::with_params(self.regs, self.params)
            .map_err(|e| format!("the Linux driver would not use this SMMU ({e})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_set_fields() {
        let s = SmmuSpec::parse("").unwrap();
        assert_eq!(s, SmmuSpec::default());
        let s = SmmuSpec::parse("coherent=0,fwb=0,httu=1,gran16k=1,oas=44,ssid=8,canwbs=1,ats=0,tegra264=1").unwrap();
        assert_eq!((s.regs.idr0.cohacc(), s.regs.idr0.httu(), s.regs.idr0.ats()), (0, 1, 0));
        assert_eq!((s.regs.idr3.fwb(), s.regs.idr5.gran16k(), s.regs.idr5.oas()), (0, 1, 4));
        assert_eq!(s.regs.idr1.ssidsize(), 8);
        assert!(s.canwbs && !s.rc_ats && s.params.tegra264);
        let unit = s.build().unwrap();
        assert!(!unit.info().coherent());
    }

    #[test]
    fn raw_registers_then_fields() {
        let s = SmmuSpec::parse("idr0=0x0d4f76bb,idr1=0e739d10,idr5=0x75,iidr=4870043b,fwb=1").unwrap();
        assert_eq!((s.regs.idr0.0, s.regs.idr1.0, s.regs.idr5.0), (0x0d4f_76bb, 0x0e73_9d10, 0x75));
        assert_eq!((s.regs.idr3.fwb(), s.regs.iidr.0, s.regs.aidr.0), (1, 0x4870_043b, 0));
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        for (opts, want) in [
            ("bogus=1", "unknown SMMUv3 option"),
            ("fwb=2", "expected 0 or 1"),
            ("oas=45", "not an SMMU output size"),
            ("ssid=21", "up to 20"),
            ("idr0=1", "need idr0="),
            ("iidr=xyz", "hex"),
            ("fwb", "not key=value"),
        ] {
            let e = SmmuSpec::parse(opts).err().unwrap_or_default();
            assert!(e.contains(want), "{opts}: {e}");
        }
        let e = SmmuSpec::parse("s1=0,s2=0").unwrap().build().err().unwrap();
        assert!(e.contains("would not use"), "{e}");
    }
}
