//! The AMD IOMMU Extended Feature Register (EFR, MMIO offset 0030h) and
//! Extended Feature 2 Register (EFR2, MMIO offset 01A0h), AMD I/O
//! Virtualization Technology (IOMMU) Specification 48882, "MMIO
//! Offset 0030h IOMMU Extended Feature Register" and "MMIO Offset 01A0h
//! IOMMU Extended Feature 2 Register".
//!
//! Model: each register is a plain 64-bit value wrapped in a type with a
//! `const fn` getter and a `with_*` setter per field; a setter masks the
//! value to the field's width and touches nothing else, so a register
//! round-trips bit for bit (bits this model does not name included).
//! Field names are the specification's; the Linux driver's names
//! (`drivers/iommu/amd/amd_iommu_types.h`, `FEATURE_*`) are given where
//! they differ. These are the two values `IOMMU_GET_HW_INFO` returns
//! (`struct iommu_hw_info_amd`) and Linux prints at boot:
//! `AMD-Vi: Extended features (0x25bf732fa2295afe, 0x1d): PPR X2APIC NX GT [5] IA GA PC GA_vAPIC`.
//!
//! [`AmdRegs`] bundles them. It comes from a realistic default
//! ([`AmdRegs::default`]: a Zen 4 EPYC), from raw values, from that boot
//! line ([`AmdRegs::parse_boot_line`]) or from `efr=HEX efr2=HEX` text;
//! [`AmdRegs::decode`] renders every field.

use core::fmt;

use uiommufd_abi::Errno;

pub use crate::regfield::Field;
use crate::regfield::{self, register};

register! {
    /// The Extended Feature Register (spec: "MMIO Offset 0030h IOMMU
    /// Extended Feature Register").
    Efr: u64, "EFR" @ 0x30 {
        pref_sup / with_pref_sup = "PreFSup" [0; 1] "PREFETCH_IOMMU_PAGES command";
        /// Linux `FEATURE_PPR`.
        ppr_sup / with_ppr_sup = "PPRSup" [1; 1] "peripheral page requests";
        /// Linux `FEATURE_X2APIC`.
        xt_sup / with_xt_sup = "XTSup" [2; 1] "x2APIC interrupt remapping";
        nx_sup / with_nx_sup = "NXSup" [3; 1] "no-execute and privilege level protection";
        /// Linux `FEATURE_GT`: v2 (guest) page tables, GCR3 tables, PASIDs.
        gt_sup / with_gt_sup = "GTSup" [4; 1] "guest translation";
        /// Reserved in spec 3.05; Linux prints it as `[5]`.
        bit5 / with_bit5 = "[5]" [5; 1] "(Linux prints [5])";
        /// Linux `FEATURE_IA`.
        ia_sup / with_ia_sup = "IASup" [6; 1] "INVALIDATE_IOMMU_ALL command";
        ga_sup / with_ga_sup = "GASup" [7; 1] "guest virtual APIC";
        he_sup / with_he_sup = "HESup" [8; 1] "hardware error registers";
        pc_sup / with_pc_sup = "PCSup" [9; 1] "performance counters";
        /// Linux `FEATURE_HATS`: 0 four levels, 1 five, 2 six, 3 reserved.
        hats / with_hats = "HATS" [10; 2] "host (v1) page table levels";
        /// Linux `FEATURE_GATS`: 0 four levels, 1 five, 2 and 3 reserved.
        gats / with_gats = "GATS" [12; 2] "guest (v2) page table levels";
        /// Linux `FEATURE_GLX`: 0 one-level, 1 two-level GCR3 tables.
        glx_sup / with_glx_sup = "GLXSup" [14; 2] "GCR3 table levels";
        smif_sup / with_smif_sup = "SmiFSup" [16; 2] "SMI filter registers";
        smif_rc / with_smif_rc = "SmiFRC" [18; 3] "SMI filter register count";
        /// Bit 21 is Linux's `FEATURE_GAM_VAPIC` (printed `GA_vAPIC`).
        gam_sup / with_gam_sup = "GAMSup" [21; 3] "guest virtual APIC modes";
        dual_ppr_log_sup / with_dual_ppr_log_sup = "DualPprLogSup" [24; 2] "dual PPR logs";
        dual_event_log_sup / with_dual_event_log_sup = "DualEventLogSup" [28; 2] "dual event logs";
        /// Linux `FEATURE_PASMAX`: 2^(PASmax+1) PASIDs.
        pas_max / with_pas_max = "PASmax" [32; 5] "largest PASID";
        us_sup / with_us_sup = "USSup" [37; 1] "user/supervisor page protection";
        dev_tbl_seg_sup / with_dev_tbl_seg_sup = "DevTblSegSup" [38; 2] "segmented device table";
        ppr_ovrflw_early_sup / with_ppr_ovrflw_early_sup = "PprOvrflwEarlySup" [40; 1] "PPR log overflow early warning";
        ppr_auto_rsp_sup / with_ppr_auto_rsp_sup = "PprAutoRspSup" [41; 1] "PPR automatic response";
        marc_sup / with_marc_sup = "MarcSup" [42; 2] "memory access routing and control";
        blk_stop_mrk_sup / with_blk_stop_mrk_sup = "BlkStopMrkSup" [44; 1] "block StopMark messages";
        perf_opt_sup / with_perf_opt_sup = "PerfOptSup" [45; 1] "performance optimization";
        msi_cap_mmio_sup / with_msi_cap_mmio_sup = "MsiCapMmioSup" [46; 1] "MSI capability in MMIO";
        /// Linux `FEATURE_GIOSUP`: requests without PASID may use a v2
        /// table (DTE.GIoV).
        gio_sup / with_gio_sup = "GIoSup" [48; 1] "guest I/O protection";
        /// Linux `FEATURE_HASUP`.
        ha_sup / with_ha_sup = "HASup" [49; 1] "host access (A) bit updates";
        /// Linux `FEATURE_EPHSUP`.
        eph_sup / with_eph_sup = "EPHSup" [50; 1] "enhanced PPR handling";
        attr_fw_sup / with_attr_fw_sup = "AttrFWSup" [51; 1] "attribute forwarding";
        /// Linux `FEATURE_HDSUP`: dirty tracking in v1 tables.
        hd_sup / with_hd_sup = "HDSup" [52; 1] "host dirty (D) bit updates";
        inv_iotlb_type_sup / with_inv_iotlb_type_sup = "InvIotlbTypeSup" [54; 1] "INVALIDATE_IOTLB_PAGES type";
        ga_update_dis_sup / with_ga_update_dis_sup = "GAUpdateDisSup" [61; 1] "disable guest A/D updates";
        force_phy_dest_sup / with_force_phy_dest_sup = "ForcePhyDestSup" [62; 1] "force physical destination mode";
        /// Linux `FEATURE_SNP`.
        snp_sup / with_snp_sup = "SNPSup" [63; 1] "SEV-SNP";
    }
}

register! {
    /// The Extended Feature 2 Register (spec: "MMIO Offset 01A0h IOMMU
    /// Extended Feature 2 Register"). Only the
    /// fields the Linux driver reads are named.
    Efr2: u64, "EFR2" @ 0x1a0 {
        /// Linux `FEATURE_SEVSNPIO_SUP`, printed `SEV-TIO`.
        sev_snp_io_sup / with_sev_snp_io_sup = "SEVSNPIOSup" [1; 1] "SEV-TIO";
        /// Linux `FEATURE_GCR3TRPMODE`: the DTE's GCR3 root pointer holds a
        /// guest physical address (translated through the host table).
        gcr3_trp_mode_sup / with_gcr3_trp_mode_sup = "GCR3TRPModeSup" [3; 1] "GCR3 table root as GPA";
        /// Linux `FEATURE_SNPAVICSUP`.
        snp_avic_sup / with_snp_avic_sup = "SNPAVICSup" [5; 3] "SNP virtual APIC modes";
        /// Linux `FEATURE_NUM_INT_REMAP_SUP`: 1 for 2048 IRTEs per table.
        num_int_remap_sup / with_num_int_remap_sup = "NumIntRemapSup" [8; 2] "interrupt remapping table size";
        /// Linux `FEATURE_HT_RANGE_IGNORE`: the HyperTransport range
        /// FD_0000_0000h..FF_FFFF_FFFFh is usable for DMA.
        ht_range_ignore / with_ht_range_ignore = "HTRangeIgnore" [11; 1] "HT range not reserved";
        /// Linux `FEATURE_SNP_PAGE_MODE0_SUP`.
        snp_page_mode0_sup / with_snp_page_mode0_sup = "SNPPageMode0Sup" [13; 1] "DTE Mode 0 under SNP";
    }
}

/// EFR and EFR2 of one IOMMU (Linux's global `amd_iommu_efr` and
/// `amd_iommu_efr2`: the values common to every IOMMU of the system).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AmdRegs {
    pub efr: Efr,
    pub efr2: Efr2,
}

/// EFR of the default part: a Zen 4 EPYC (four IOMMUs per socket), as
/// Linux prints it at boot: `AMD-Vi: Extended features
/// (0x25bf732fa2295afe, 0x1d): PPR X2APIC NX GT [5] IA GA PC GA_vAPIC`.
/// HATS 2 (six host levels), GATS 1 (five guest levels), GLXSup 1,
/// PASmax 15, GIoSup, HASup, EPHSup, HDSup; no SNP.
pub const ZEN4_EPYC_EFR: u64 = 0x25bf_732f_a229_5afe;
/// EFR2 of the default part: GCR3TRPModeSup among its bits.
pub const ZEN4_EPYC_EFR2: u64 = 0x1d;

impl Default for AmdRegs {
    /// The Zen 4 EPYC of [`ZEN4_EPYC_EFR`].
    fn default() -> Self {
        AmdRegs::from_raw(ZEN4_EPYC_EFR, ZEN4_EPYC_EFR2)
    }
}

/// The names Linux prints for EFR bits 0..9 (`print_iommu_info()`).
const BOOT_FEATURES: [&str; 10] = ["PreF", "PPR", "X2APIC", "NX", "GT", "[5]", "IA", "GA", "HE", "PC"];

fn parse_hex64(s: &str) -> Result<u64, Errno> {
    let t = s.trim().trim_end_matches([',', ')', ':', '(']);
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    if t.is_empty() {
        return Err(Errno::EINVAL);
    }
    u64::from_str_radix(t, 16).map_err(|_| Errno::EINVAL)
}

impl AmdRegs {
    pub const fn from_raw(efr: u64, efr2: u64) -> Self {
        AmdRegs { efr: Efr(efr), efr2: Efr2(efr2) }
    }

    /// The registers from Linux's boot line: `Extended features (0xEFR,
    /// 0xEFR2): ...` (Linux 6.7 on; the `AMD-Vi: ` prefix and what follows
    /// the colon are optional), the older `Extended features (0xEFR):` with
    /// EFR2 0, or `Using global IVHD EFR:0x..., EFR2:0x...`. `EINVAL` when
    /// no value is found.
    pub fn parse_boot_line(line: &str) -> Result<Self, Errno> {
        if let Some(pos) = line.find("EFR:") {
            let rest = &line[pos + 4..];
            let efr = parse_hex64(rest.split([',', ' ']).next().unwrap_or(""))?;
            let efr2 = match rest.find("EFR2:") {
                Some(p) => parse_hex64(rest[p + 5..].split([',', ' ']).next().unwrap_or(""))?,
                None => 0,
            };
            return Ok(Self::from_raw(efr, efr2));
        }
        let pos = line.find("features (").ok_or(Errno::EINVAL)?;
        let inner = &line[pos + "features (".len()..];
        let inner = &inner[..inner.find(')').ok_or(Errno::EINVAL)?];
        let mut parts = inner.split(',');
        let efr = parse_hex64(parts.next().unwrap_or(""))?;
        let efr2 = match parts.next() {
            Some(p) => parse_hex64(p)?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(Errno::EINVAL);
        }
        Ok(Self::from_raw(efr, efr2))
    }

    /// Parse `efr=HEX efr2=HEX` words (separated by white space or commas;
    /// `efr2` optional, 0 when absent), or a boot line.
    pub fn parse(text: &str) -> Result<Self, Errno> {
        if text.contains("features (") || text.contains("EFR:") {
            return Self::parse_boot_line(text);
        }
        let (mut efr, mut efr2) = (None, 0);
        for word in text.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()) {
            let (name, value) = word.split_once(['=', ':']).ok_or(Errno::EINVAL)?;
            match name.trim().to_ascii_lowercase().as_str() {
                "efr" => efr = Some(parse_hex64(value)?),
                "efr2" => efr2 = parse_hex64(value)?,
                _ => return Err(Errno::EINVAL),
            }
        }
        Ok(Self::from_raw(efr.ok_or(Errno::EINVAL)?, efr2))
    }

    /// `print_iommu_info()`: the line Linux prints for these registers.
    pub fn boot_line(&self) -> String {
        let mut s = format!("AMD-Vi: Extended features ({:#x}, {:#x}):", self.efr.0, self.efr2.0);
        for (i, name) in BOOT_FEATURES.iter().enumerate() {
            if self.efr.0 & (1 << i) != 0 {
                s.push(' ');
                s.push_str(name);
            }
        }
        if self.efr.0 & (1 << 21) != 0 {
            s.push_str(" GA_vAPIC");
        }
        if self.efr.snp_sup() != 0 {
            s.push_str(" SNP");
        }
        if self.efr2.sev_snp_io_sup() != 0 {
            s.push_str(" SEV-TIO");
        }
        s
    }

    /// Human-readable lines: one per field, `NAME [bits] = value  meaning`;
    /// bits set outside the named fields are listed after each register.
    pub fn decode(&self) -> Vec<String> {
        let mut out = Vec::new();
        regfield::decode(
            &mut out,
            &format!("{} (MMIO {:04x}h)", Efr::NAME, Efr::OFFSET),
            self.efr.0,
            64,
            Efr::FIELDS,
            efr_note,
        );
        regfield::decode(
            &mut out,
            &format!("{} (MMIO {:04x}h)", Efr2::NAME, Efr2::OFFSET),
            self.efr2.0,
            64,
            Efr2::FIELDS,
            efr2_note,
        );
        out
    }
}

fn efr_note(f: &Field, v: u64) -> Option<String> {
    match f.name {
        "HATS" => Some(match v {
            0..=2 => format!("{} levels", v + 4),
            _ => "reserved: Linux disables host translation".into(),
        }),
        "GATS" => Some(match v {
            0 | 1 => format!("{} levels", v + 4),
            _ => "reserved".into(),
        }),
        "GLXSup" => Some(format!("{}-level GCR3 tables", v + 1)),
        "PASmax" => Some(format!("{} PASID bits", v + 1)),
        "GAMSup" if v & 1 != 0 => Some("GA_vAPIC".into()),
        _ => None,
    }
}

fn efr2_note(f: &Field, v: u64) -> Option<String> {
    match f.name {
        "NumIntRemapSup" if v == 1 => Some("2048 IRTEs".into()),
        _ => None,
    }
}

impl fmt::Display for AmdRegs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "efr={:#x} efr2={:#x}", self.efr.0, self.efr2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_part_decodes_as_linux_prints_it() {
        let r = AmdRegs::default();
        assert_eq!(
            r.boot_line(),
            "AMD-Vi: Extended features (0x25bf732fa2295afe, 0x1d): PPR X2APIC NX GT [5] IA GA PC GA_vAPIC"
        );
        // Hand-decoded from 0x25bf732fa2295afe.
        let e = r.efr;
        assert_eq!((e.ppr_sup(), e.gt_sup(), e.ia_sup(), e.pc_sup(), e.he_sup(), e.pref_sup()), (1, 1, 1, 1, 0, 0));
        assert_eq!((e.hats(), e.gats(), e.glx_sup()), (2, 1, 1));
        assert_eq!((e.smif_sup(), e.smif_rc(), e.gam_sup()), (1, 2, 1));
        assert_eq!((e.dual_ppr_log_sup(), e.dual_event_log_sup()), (2, 2));
        assert_eq!((e.pas_max(), e.us_sup(), e.dev_tbl_seg_sup()), (15, 1, 0));
        assert_eq!((e.gio_sup(), e.ha_sup(), e.eph_sup(), e.attr_fw_sup(), e.hd_sup()), (1, 1, 1, 1, 1));
        assert_eq!((e.inv_iotlb_type_sup(), e.ga_update_dis_sup(), e.snp_sup()), (0, 1, 0));
        assert_eq!(r.efr2.gcr3_trp_mode_sup(), 1);
        assert_eq!(r.efr2.ht_range_ignore(), 0);
    }

    #[test]
    fn fields_round_trip() {
        let e = Efr(0).with_hats(2).with_pas_max(0x3f).with_hd_sup(1);
        assert_eq!(e.0, (2 << 10) | (0x1f << 32) | (1 << 52));
        assert_eq!(e.with_hats(0).0, (0x1f << 32) | (1 << 52));
        let all = u64::MAX;
        for f in Efr::FIELDS {
            assert_eq!(f.get(all), f.mask());
        }
    }

    #[test]
    fn boot_lines_parse() {
        let want = AmdRegs::from_raw(0x25bf732fa2295afe, 0x1d);
        for line in [
            "[    0.9] AMD-Vi: Extended features (0x25bf732fa2295afe, 0x1d): PPR X2APIC NX GT [5] IA GA PC GA_vAPIC",
            "AMD-Vi: Using global IVHD EFR:0x25bf732fa2295afe, EFR2:0x1d",
            "Extended features (0x25bf732fa2295afe, 0x1d)",
            "efr=25bf732fa2295afe,efr2=0x1d",
        ] {
            assert_eq!(AmdRegs::parse(line), Ok(want), "{line}");
        }
        // Kernels before 6.7 print one value.
        let old = AmdRegs::parse("pci 0000:00:00.2: AMD-Vi: Extended features (0xf77ef22294ada):").unwrap();
        assert_eq!(old, AmdRegs::from_raw(0xf77ef22294ada, 0));
        assert_eq!(AmdRegs::parse("efr2=1"), Err(Errno::EINVAL));
        assert_eq!(AmdRegs::parse("features (0xzz)"), Err(Errno::EINVAL));
        assert_eq!(AmdRegs::parse("bogus=1"), Err(Errno::EINVAL));
    }

    #[test]
    fn decode_names_every_set_bit() {
        let lines = AmdRegs::default().decode();
        assert!(lines.iter().any(|l| l.contains("HATS") && l.contains("6 levels")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("PASmax") && l.contains("16 PASID bits")));
        // EFR bits 31, 53, 55, 56, 58 are set but unnamed; EFR2 bits 0, 2, 4.
        assert!(lines.iter().any(|l| l.contains("bits 31, 53, 55, 56, 58")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("bits 0, 2, 4")), "{lines:#?}");
        // QEMU's amd-iommu (7.2): PreF PPR GT IA GA HE, as the oracle kernel prints it.
        let q = AmdRegs::from_raw(0x29d3, 0);
        assert_eq!(q.boot_line(), "AMD-Vi: Extended features (0x29d3, 0x0): PreF PPR GT IA GA HE");
    }
}
