//! `--iommu amd[:key=value,...]`: the AMD IOMMU of an emulated platform,
//! from the keys `uiommufd run`, `info` and `demo` take.
//!
//! Registers start from [`AmdRegs::default`] (a Zen 4 EPYC), or from raw
//! values with `efr=HEX[,efr2=HEX]` (the two values Linux prints at boot,
//! `AMD-Vi: Extended features (0xEFR, 0xEFR2)`, or that
//! `IOMMU_GET_HW_INFO` returns on a real machine); then the named fields
//! and platform facts are applied on top, in any order:
//!
//! | key | register field or platform fact |
//! | --- | --- |
//! | `gt=0\|1` | EFR.GTSup (v2 tables, PASIDs) |
//! | `giosup=0\|1` | EFR.GIoSup |
//! | `ppr=0\|1`, `eph=0\|1` | EFR.PPRSup, EFR.EPHSup |
//! | `hd=0\|1`, `ha=0\|1` | EFR.HDSup (dirty tracking), EFR.HASup |
//! | `ia=0\|1` | EFR.IASup |
//! | `hats=0..3`, `gats=0..3`, `glx=0..3` | EFR.HATS, EFR.GATS, EFR.GLXSup |
//! | `pasmax=0..31` | EFR.PASmax |
//! | `gcr3trp=0\|1` | EFR2.GCR3TRPModeSup (needed for nest parents) |
//! | `htignore=0\|1` | EFR2.HTRangeIgnore |
//! | `vasize=BITS` | the IVRS IVinfo VASize (64 on EPYC firmware) |
//! | `la57=0\|1` | the CPU runs with 5-level paging |
//! | `npcache=0\|1` | capability header NpCache (an IOMMU that caches non-present entries: a virtual one) |
//! | `pgtable=v1\|v2` | `amd_iommu=pgtbl_v1\|pgtbl_v2` |
//! | `pgsizes=all\|4k\|v2` | `amd_iommu=nohugepages` (4k), `amd_iommu=v2_pgsizes_only` (v2) |
//! | `iommufd=0\|1` | `CONFIG_AMD_IOMMU_IOMMUFD` (hw_info and the vIOMMU; 1) |
//! | `nested=0\|1` | wire `amd_iommu_alloc_domain_nested()` into the vIOMMU as the follow-up series does (0: Linux 7.3, where nested allocation through an AMD vIOMMU is `EOPNOTSUPP`) |
//!
//! Whatever the keys say, the IOMMU is then probed as the driver does
//! ([`AmdInfo::new`](super::info::AmdInfo::new)): a configuration the
//! driver would not use for DMA translation is an error.

use std::sync::Arc;

use super::device::AmdIommu;
use super::info::{DriverParams, PgsizeLimit, PgtableMode};
use super::regs::AmdRegs;

/// An AMD IOMMU and the platform facts around it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmdSpec {
    pub regs: AmdRegs,
    pub params: DriverParams,
}

fn flag(k: &str, v: &str) -> Result<u64, String> {
    match v {
        "0" | "off" | "no" => Ok(0),
        "1" | "on" | "yes" => Ok(1),
        _ => Err(format!("{k}={v}: expected 0 or 1")),
    }
}

fn num(k: &str, v: &str, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("{k}={v}: expected a number up to {max}")),
    }
}

fn hex(k: &str, v: &str) -> Result<u64, String> {
    let t = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
    u64::from_str_radix(t, 16).map_err(|_| format!("{k}={v}: expected a 64-bit hex number"))
}

impl AmdSpec {
    /// Parse the options after `amd:` (comma-separated `key=value`).
    pub fn parse(opts: &str) -> Result<AmdSpec, String> {
        let kv: Vec<(&str, &str)> = opts
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').ok_or_else(|| format!("`{p}` is not key=value")))
            .collect::<Result<_, _>>()?;
        let mut spec = AmdSpec::default();
        let raw = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|&(_, v)| v);
        match (raw("efr"), raw("efr2")) {
            (Some(e), e2) => spec.regs = AmdRegs::from_raw(hex("efr", e)?, e2.map_or(Ok(0), |v| hex("efr2", v))?),
            (None, Some(_)) => return Err("efr2= needs efr=".into()),
            (None, None) => {}
        }
        let (r, p) = (&mut spec.regs, &mut spec.params);
        for &(k, v) in &kv {
            match k {
                "efr" | "efr2" => {}
                "gt" => r.efr = r.efr.with_gt_sup(flag(k, v)?),
                "giosup" => r.efr = r.efr.with_gio_sup(flag(k, v)?),
                "ppr" => r.efr = r.efr.with_ppr_sup(flag(k, v)?),
                "eph" => r.efr = r.efr.with_eph_sup(flag(k, v)?),
                "hd" => r.efr = r.efr.with_hd_sup(flag(k, v)?),
                "ha" => r.efr = r.efr.with_ha_sup(flag(k, v)?),
                "ia" => r.efr = r.efr.with_ia_sup(flag(k, v)?),
                "hats" => r.efr = r.efr.with_hats(num(k, v, 3)?),
                "gats" => r.efr = r.efr.with_gats(num(k, v, 3)?),
                "glx" => r.efr = r.efr.with_glx_sup(num(k, v, 3)?),
                "pasmax" => r.efr = r.efr.with_pas_max(num(k, v, 31)?),
                "gcr3trp" => r.efr2 = r.efr2.with_gcr3_trp_mode_sup(flag(k, v)?),
                "htignore" => r.efr2 = r.efr2.with_ht_range_ignore(flag(k, v)?),
                "vasize" => p.vasize = num(k, v, 64)? as u32,
                "la57" => p.la57 = flag(k, v)? != 0,
                "npcache" => p.np_cache = flag(k, v)? != 0,
                "pgtable" => {
                    p.pgtable = match v {
                        "v1" => PgtableMode::V1,
                        "v2" => PgtableMode::V2,
                        _ => return Err(format!("{k}={v}: expected v1 or v2")),
                    }
                }
                "pgsizes" => {
                    p.pgsizes = match v {
                        "all" => PgsizeLimit::All,
                        "4k" => PgsizeLimit::FourK,
                        "v2" => PgsizeLimit::V2Sizes,
                        _ => return Err(format!("{k}={v}: expected all, 4k or v2")),
                    }
                }
                "iommufd" => p.iommufd = flag(k, v)? != 0,
                "nested" => p.nested_alloc = flag(k, v)? != 0,
                _ => return Err(format!("unknown AMD IOMMU option `{k}`")),
            }
        }
        Ok(spec)
    }

    /// The IOMMU, probed as the driver does.
    pub fn build(&self) -> Result<Arc<AmdIommu>, String> {
        AmdIommu::with_params(self.regs, self.params)
            .map_err(|e| format!("the Linux driver would not use this IOMMU for DMA translation ({e})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_set_fields() {
        assert_eq!(AmdSpec::parse("").unwrap(), AmdSpec::default());
        let s =
            AmdSpec::parse("hd=0,gcr3trp=0,hats=1,pasmax=9,la57=0,npcache=1,pgtable=v2,iommufd=0,nested=1").unwrap();
        assert_eq!((s.regs.efr.hd_sup(), s.regs.efr.hats(), s.regs.efr.pas_max()), (0, 1, 9));
        assert_eq!(s.regs.efr2.gcr3_trp_mode_sup(), 0);
        assert!(!s.params.la57 && s.params.np_cache && !s.params.iommufd && s.params.nested_alloc);
        assert_eq!(s.params.pgtable, PgtableMode::V2);
        let unit = s.build().unwrap();
        assert!(!unit.info().hd_support() && !unit.info().nest_parent_supported());
        assert_eq!(unit.info().hpt_vasize, 57);
        // Raw values first, fields on top.
        let s = AmdSpec::parse("gt=0,efr=0x29d3,efr2=0").unwrap();
        assert_eq!(s.regs, AmdRegs::from_raw(0x29d3 & !(1 << 4), 0));
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        for (opts, want) in [
            ("bogus=1", "unknown AMD IOMMU option"),
            ("hd=2", "expected 0 or 1"),
            ("hats=4", "up to 3"),
            ("efr=xyz", "hex"),
            ("efr2=1", "needs efr="),
            ("pgtable=v3", "v1 or v2"),
            ("hd", "not key=value"),
        ] {
            let e = AmdSpec::parse(opts).err().unwrap_or_default();
            assert!(e.contains(want), "{opts}: {e}");
        }
        // HATS reserved and no v2 tables: no DMA translation at all.
        let e = AmdSpec::parse("hats=3,gt=0").unwrap().build().err().unwrap();
        assert!(e.contains("would not use"), "{e}");
    }
}
