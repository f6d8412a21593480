//! Stream table entries and context descriptors (IHI 0070 §5.2 "Stream
//! Table Entry", §5.4 "Context Descriptor", §5.3 "Level 1 Context
//! Descriptor"), with the rules that make one ILLEGAL, and the driver's
//! handling of a guest's STE (`arm_smmu_validate_vste()`,
//! `arm_smmu_make_nested_domain_ste()`).
//!
//! Model: STEs and CDs are arrays of little-endian 64-bit words as in
//! memory; field masks follow the driver's `STRTAB_STE_*` / `CTXDESC_CD_*`
//! names. Decoding checks what hardware checks before using a structure
//! and reports the configuration error it would record:
//! - an STE: reserved Config values, S1Fmt / S1CDMax beyond what
//!   `IDR0.CD2L` / `IDR1.SSIDSIZE` allow, a reserved S1DSS -> `C_BAD_STE`;
//! - a CD: not valid, AArch32 tables, big-endian walks, a reserved or
//!   unsupported granule, a TxSZ out of range, a TTB beyond the effective
//!   output size, HA/HD beyond `IDR0.HTTU`, `A` = 0 with
//!   `IDR0.TERM_MODEL` = 1, `S` = 1 without stall support -> `C_BAD_CD`.

use uiommufd_abi::Errno;

use super::info::{feat, SmmuInfo};
use super::regs::{oas_bits, STALL_MODEL_TERMINATE};

/// Mask of bits `hi..=lo`.
pub const fn genmask(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// STE fields (§5.2; the driver's `STRTAB_STE_*`).
pub mod stef {
    use super::genmask;
    // Word 0.
    pub const V: u64 = 1 << 0;
    pub const CFG_SHIFT: u32 = 1;
    pub const CFG: u64 = 0b111 << 1;
    pub const CFG_ABORT: u64 = 0b000;
    pub const CFG_BYPASS: u64 = 0b100;
    pub const CFG_S1_TRANS: u64 = 0b101;
    pub const CFG_S2_TRANS: u64 = 0b110;
    pub const CFG_NESTED: u64 = 0b111;
    pub const S1FMT_SHIFT: u32 = 4;
    pub const S1FMT: u64 = 0b11 << 4;
    pub const S1FMT_LINEAR: u64 = 0;
    pub const S1FMT_4K_L2: u64 = 1;
    pub const S1FMT_64K_L2: u64 = 2;
    pub const S1CTXPTR: u64 = genmask(51, 6);
    pub const S1CDMAX_SHIFT: u32 = 59;
    pub const S1CDMAX: u64 = genmask(63, 59);
    // Word 1.
    pub const S1DSS: u64 = 0b11;
    pub const S1DSS_TERMINATE: u64 = 0;
    pub const S1DSS_BYPASS: u64 = 1;
    pub const S1DSS_SSID0: u64 = 2;
    pub const S1CIR: u64 = 0b11 << 2;
    pub const S1COR: u64 = 0b11 << 4;
    pub const S1CSH: u64 = 0b11 << 6;
    pub const S1C_CACHE_WBRA: u64 = 1;
    pub const MEV: u64 = 1 << 19;
    pub const S2FWB: u64 = 1 << 25;
    pub const S1STALLD: u64 = 1 << 27;
    pub const EATS_SHIFT: u32 = 28;
    pub const EATS: u64 = 0b11 << 28;
    pub const EATS_ABT: u64 = 0;
    pub const EATS_TRANS: u64 = 1;
    pub const STRW_SHIFT: u32 = 30;
    pub const STRW: u64 = 0b11 << 30;
    pub const STRW_NSEL1: u64 = 0;
    pub const STRW_EL2: u64 = 2;
    pub const SHCFG_SHIFT: u32 = 44;
    pub const SHCFG: u64 = 0b11 << 44;
    pub const SHCFG_INCOMING: u64 = 1;
    // Word 2.
    pub const S2VMID: u64 = 0xffff;
    pub const VTCR_SHIFT: u32 = 32;
    pub const VTCR: u64 = genmask(50, 32);
    pub const S2AA64: u64 = 1 << 51;
    pub const S2ENDI: u64 = 1 << 52;
    pub const S2PTW: u64 = 1 << 54;
    pub const S2S: u64 = 1 << 57;
    pub const S2R: u64 = 1 << 58;
    // Word 3.
    pub const S2TTB: u64 = genmask(51, 4);

    /// `STRTAB_STE_0_NESTING_ALLOWED`: the word 0 fields a guest controls.
    pub const NESTING_ALLOWED_0: u64 = V | CFG | S1FMT | S1CTXPTR | S1CDMAX;
    /// `STRTAB_STE_1_NESTING_ALLOWED`.
    pub const NESTING_ALLOWED_1: u64 = S1DSS | S1CIR | S1COR | S1CSH | S1STALLD | EATS;
}

/// VTCR fields within STE word 2's VTCR (§5.2 STE.S2*).
pub mod vtcr {
    pub const T0SZ: u64 = 0x3f;
    pub const SL0_SHIFT: u32 = 6;
    pub const IR0_SHIFT: u32 = 8;
    pub const OR0_SHIFT: u32 = 10;
    pub const SH0_SHIFT: u32 = 12;
    pub const TG_SHIFT: u32 = 14;
    pub const PS_SHIFT: u32 = 16;
}

/// CD fields (§5.4; the driver's `CTXDESC_CD_*`).
pub mod cdf {
    use super::genmask;
    // Word 0.
    pub const T0SZ: u64 = 0x3f;
    pub const TG0_SHIFT: u32 = 6;
    pub const IRGN0_SHIFT: u32 = 8;
    pub const ORGN0_SHIFT: u32 = 10;
    pub const SH0_SHIFT: u32 = 12;
    pub const EPD0: u64 = 1 << 14;
    pub const ENDI: u64 = 1 << 15;
    pub const T1SZ_SHIFT: u32 = 16;
    pub const TG1_SHIFT: u32 = 22;
    pub const EPD1: u64 = 1 << 30;
    pub const V: u64 = 1 << 31;
    pub const IPS_SHIFT: u32 = 32;
    pub const TBI0: u64 = 1 << 38;
    pub const TBI1: u64 = 1 << 39;
    pub const AA64: u64 = 1 << 41;
    pub const HD: u64 = 1 << 42;
    pub const HA: u64 = 1 << 43;
    pub const S: u64 = 1 << 44;
    pub const R: u64 = 1 << 45;
    pub const A: u64 = 1 << 46;
    pub const ASET: u64 = 1 << 47;
    pub const ASID_SHIFT: u32 = 48;
    // Words 1 and 2.
    pub const TTB: u64 = genmask(51, 4);
    /// TCR TG0 encodings.
    pub const TG0_4K: u64 = 0b00;
    pub const TG0_64K: u64 = 0b01;
    pub const TG0_16K: u64 = 0b10;
    /// TCR TG1 encodings (they differ from TG0's).
    pub const TG1_16K: u64 = 0b01;
    pub const TG1_4K: u64 = 0b10;
    pub const TG1_64K: u64 = 0b11;
    /// TCR IRGN/ORGN: write-back read/write-allocate; SH inner shareable.
    pub const RGN_NC: u64 = 0;
    pub const RGN_WBWA: u64 = 1;
    pub const SH_OS: u64 = 2;
    pub const SH_IS: u64 = 3;
    /// L1 CD descriptor (§5.3): valid and the L2 table address.
    pub const L1_V: u64 = 1 << 0;
    pub const L1_L2PTR: u64 = genmask(51, 12);
}

/// `arm_smmu_validate_vste()` then what `arm_vsmmu_alloc_domain_nested()`
/// stores: a guest STE with V clear becomes all zeros (an abort STE when
/// installed); otherwise every bit outside `NESTING_ALLOWED` is `EIO`, so
/// is a Config other than abort, bypass and stage 1 translate, and an EATS
/// other than abort or full ATS. EATS is cleared from what is stored (the
/// driver sets it from the ATS state); the second value is whether ATS is
/// enabled (full ATS on a stage 1 STE).
pub fn validate_vste(ste: [u64; 2]) -> Result<([u64; 2], bool), Errno> {
    if ste[0] & stef::V == 0 {
        return Ok(([0, 0], false));
    }
    if ste[0] & !stef::NESTING_ALLOWED_0 != 0 || ste[1] & !stef::NESTING_ALLOWED_1 != 0 {
        return Err(Errno::EIO);
    }
    let cfg = (ste[0] & stef::CFG) >> stef::CFG_SHIFT;
    if cfg != stef::CFG_ABORT && cfg != stef::CFG_BYPASS && cfg != stef::CFG_S1_TRANS {
        return Err(Errno::EIO);
    }
    let eats = (ste[1] & stef::EATS) >> stef::EATS_SHIFT;
    if eats != stef::EATS_ABT && eats != stef::EATS_TRANS {
        return Err(Errno::EIO);
    }
    let enable_ats = cfg == stef::CFG_S1_TRANS && eats == stef::EATS_TRANS;
    Ok(([ste[0], ste[1] & !stef::EATS], enable_ats))
}

/// `arm_smmu_make_abort_ste()`.
pub const fn abort_ste() -> [u64; 8] {
    [stef::V | stef::CFG_ABORT << stef::CFG_SHIFT, 0, 0, 0, 0, 0, 0, 0]
}

/// `arm_smmu_make_nested_domain_ste()`: the physical STE for a stored
/// guest STE `vste` over the stage 2 STE `s2` of the parent: abort for a
/// non-valid or aborting guest STE, the stage 2 STE for bypass, and for
/// stage 1 the stage 2 STE with Config nested, the guest's word 0 fields,
/// its word 1 fields OR-ed in and MEV set.
pub fn nested_ste(vste: [u64; 2], s2: [u64; 8]) -> [u64; 8] {
    let cfg = if vste[0] & stef::V == 0 { stef::CFG_ABORT } else { (vste[0] & stef::CFG) >> stef::CFG_SHIFT };
    match cfg {
        stef::CFG_S1_TRANS => {
            let mut t = s2;
            t[0] = stef::V | stef::CFG_NESTED << stef::CFG_SHIFT | (vste[0] & !stef::CFG);
            t[1] |= vste[1] | stef::MEV;
            t
        }
        stef::CFG_BYPASS => s2,
        _ => abort_ste(),
    }
}

/// How a stream translates, as decoded from its STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteConfig {
    /// Config abort: transactions terminate without an event.
    Abort,
    /// Stage 1 bypassed, stage 2 translates (Config 0b110, or bypass).
    S2Only,
    /// Stage 1 from the CD table, then stage 2.
    Nested(CdTable),
    /// The STE is ILLEGAL: `C_BAD_STE` for every transaction.
    Illegal,
}

/// The stage 1 fields of an STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdTable {
    /// S1ContextPtr: the CD table (an IPA when stage 2 is enabled).
    pub ptr: u64,
    /// S1Fmt: 0 linear, 1 2-level with 4KB leaf tables, 2 2-level with
    /// 64KB leaf tables.
    pub fmt: u64,
    /// S1CDMax: log2 of the number of CDs (0: substreams disabled).
    pub cdmax: u32,
    /// S1DSS.
    pub dss: u64,
}

impl CdTable {
    /// log2 of the CDs in a leaf table of a 2-level table (6 for 4KB
    /// leaves, 10 for 64KB); 0 for a linear table.
    pub const fn split(&self) -> u32 {
        match self.fmt {
            stef::S1FMT_4K_L2 => 6,
            stef::S1FMT_64K_L2 => 10,
            _ => 0,
        }
    }
}

/// Decode a physical STE's translation config (§5.2), with the checks
/// that make it ILLEGAL. Only the stage 1 part is decoded: the stage 2
/// part is the driver's own and always valid.
pub fn decode_ste(ste: &[u64; 8], info: &SmmuInfo) -> SteConfig {
    let w0 = ste[0];
    if w0 & stef::V == 0 {
        return SteConfig::Illegal;
    }
    match (w0 & stef::CFG) >> stef::CFG_SHIFT {
        stef::CFG_ABORT => SteConfig::Abort,
        stef::CFG_BYPASS | stef::CFG_S2_TRANS => SteConfig::S2Only,
        stef::CFG_NESTED | stef::CFG_S1_TRANS => {
            let t = CdTable {
                ptr: w0 & stef::S1CTXPTR,
                fmt: (w0 & stef::S1FMT) >> stef::S1FMT_SHIFT,
                cdmax: ((w0 & stef::S1CDMAX) >> stef::S1CDMAX_SHIFT) as u32,
                dss: ste[1] & stef::S1DSS,
            };
            let bad_fmt = t.fmt == 0b11 || (t.fmt != stef::S1FMT_LINEAR && !info.has(feat::TWO_LVL_CDTAB));
            let bad_cdmax = t.cdmax > info.ssid_bits;
            let bad_dss = t.cdmax != 0 && t.dss == 0b11;
            if bad_fmt || bad_cdmax || bad_dss {
                SteConfig::Illegal
            } else {
                SteConfig::Nested(t)
            }
        }
        // 0b001..0b011 are reserved.
        _ => SteConfig::Illegal,
    }
}

/// One translation table of a CD (TTB0 or TTB1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtConfig {
    /// Table base (an IPA when nested), aligned to the table's size.
    pub ttb: u64,
    /// TxSZ: the table translates 64 - TxSZ bits.
    pub tsz: u32,
    /// log2 of the granule: 12, 14 or 16.
    pub granule_shift: u32,
    /// Hierarchical attribute disable (HAD0/HAD1): table attributes are
    /// ignored.
    pub had: bool,
}

impl TtConfig {
    /// Input address bits.
    pub const fn ia_bits(&self) -> u32 {
        64 - self.tsz
    }
}

/// A decoded, valid CD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdConfig {
    /// TTB0 and TTB1 (`None`: walks disabled by EPDx, which is a
    /// translation fault).
    pub tt: [Option<TtConfig>; 2],
    /// Effective stage 1 output size: min(IPS, OAS), at most 48 with 4KB
    /// and 16KB granules.
    pub oas: u32,
    pub asid: u16,
    pub tbi: [bool; 2],
    /// Hardware access flag / dirty state updates enabled.
    pub ha: bool,
    pub hd: bool,
    /// Record translation-related faults.
    pub record: bool,
    /// Abort (rather than RAZ/WI) on faults.
    pub abort: bool,
    /// Stall on faults.
    pub stall: bool,
    pub mair: u64,
}

/// Decode the first four words of a CD (§5.4), checking what makes it
/// ILLEGAL; `None` is `C_BAD_CD`.
pub fn decode_cd(w: [u64; 4], info: &SmmuInfo) -> Option<CdConfig> {
    let w0 = w[0];
    if w0 & cdf::V == 0 || w0 & cdf::AA64 == 0 || w0 & cdf::ENDI != 0 {
        return None;
    }
    let httu = info.regs.idr0.httu();
    let ha = w0 & cdf::HA != 0;
    let hd = w0 & cdf::HD != 0;
    if (ha && httu == 0) || (hd && httu < 2) {
        return None;
    }
    if w0 & cdf::A == 0 && info.regs.idr0.term_model() != 0 {
        return None;
    }
    if w0 & cdf::S != 0 && info.regs.idr0.stall_model() == STALL_MODEL_TERMINATE {
        return None;
    }
    let ips = oas_bits(((w0 >> cdf::IPS_SHIFT) & 0b111) as u32).unwrap_or(52);
    let mut oas = ips.min(info.oas);
    let idr5 = info.regs.idr5;
    let max_tsz = if info.regs.idr3.stt() != 0 { 48 } else { 39 };
    let mut tt = [None, None];
    for (i, slot) in tt.iter_mut().enumerate() {
        let epd = if i == 0 { w0 & cdf::EPD0 != 0 } else { w0 & cdf::EPD1 != 0 };
        if epd {
            continue;
        }
        let (tsz, tg) = if i == 0 {
            ((w0 & cdf::T0SZ) as u32, (w0 >> cdf::TG0_SHIFT) & 0b11)
        } else {
            (((w0 >> cdf::T1SZ_SHIFT) & 0x3f) as u32, (w0 >> cdf::TG1_SHIFT) & 0b11)
        };
        let granule_shift = match (i, tg) {
            (0, cdf::TG0_4K) | (1, cdf::TG1_4K) if idr5.gran4k() != 0 => 12,
            (0, cdf::TG0_16K) | (1, cdf::TG1_16K) if idr5.gran16k() != 0 => 14,
            (0, cdf::TG0_64K) | (1, cdf::TG1_64K) if idr5.gran64k() != 0 => 16,
            _ => return None,
        };
        let min_tsz = if granule_shift == 16 && info.has(feat::VAX) { 12 } else { 16 };
        if tsz < min_tsz || tsz > max_tsz {
            return None;
        }
        if granule_shift != 16 {
            oas = oas.min(48);
        }
        let ttb = w[1 + i] & cdf::TTB;
        if oas < 64 && ttb >> oas != 0 {
            return None;
        }
        let had = w[1 + i] & (1 << 1) != 0 && info.regs.idr3.had() != 0;
        *slot = Some(TtConfig { ttb, tsz, granule_shift, had });
    }
    let asid = (w0 >> cdf::ASID_SHIFT) as u16;
    let asid = if info.asid_bits == 8 { asid & 0xff } else { asid };
    Some(CdConfig {
        tt,
        oas,
        asid,
        tbi: [w0 & cdf::TBI0 != 0, w0 & cdf::TBI1 != 0],
        ha,
        hd,
        record: w0 & cdf::R != 0,
        abort: w0 & cdf::A != 0,
        stall: w0 & cdf::S != 0,
        mair: w[3],
    })
}

/// Which translation table of `cd` translates `va`, as Arm ARM D8.1.4
/// selects: bit 55 (with TBI) or all of bits 63:IA equal; `None` is a
/// translation fault (an address neither range covers, or a disabled
/// table).
pub fn select_tt(cd: &CdConfig, va: u64) -> Option<&TtConfig> {
    let upper = va >> 55 & 1 != 0;
    let i = usize::from(upper);
    let tt = cd.tt[i].as_ref()?;
    let top = if cd.tbi[i] { 55 } else { 63 };
    let ia = tt.ia_bits();
    // Bits top..ia must all equal bit 55 (upper) or be 0 (lower).
    let bits = (va >> ia) & ((1u64 << (top + 1 - ia)) - 1);
    let want = if upper { (1u64 << (top + 1 - ia)) - 1 } else { 0 };
    (bits == want).then_some(tt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::regs::SmmuRegs;

    fn info() -> SmmuInfo {
        SmmuInfo::from_regs(SmmuRegs::default()).unwrap()
    }

    use crate::smmuv3::guest::cd_word0 as guest_cd_word0;

    #[test]
    fn vste_validation() {
        let s1 = stef::V | stef::CFG_S1_TRANS << 1 | 0x1234_5000 | 3 << 59;
        // Non-valid: zeroed, accepted.
        assert_eq!(validate_vste([s1 & !stef::V, 0xffff]), Ok(([0, 0], false)));
        // Full ATS on a stage 1 STE: enabled, EATS stored cleared.
        let w1 = stef::S1DSS_SSID0 | stef::EATS_TRANS << 28 | stef::S1STALLD;
        assert_eq!(validate_vste([s1, w1]), Ok(([s1, stef::S1DSS_SSID0 | stef::S1STALLD], true)));
        // ATS on bypass is accepted but not enabled.
        let byp = stef::V | stef::CFG_BYPASS << 1;
        assert_eq!(validate_vste([byp, stef::EATS_TRANS << 28]), Ok(([byp, 0], false)));
        // Bits outside the allowed set: S1CTXPTR bit 52, word 1 MEV.
        assert_eq!(validate_vste([s1 | 1 << 52, 0]), Err(Errno::EIO));
        assert_eq!(validate_vste([s1, stef::MEV]), Err(Errno::EIO));
        // Config stage 2 or nested, reserved Config values.
        for cfg in [1u64, 2, 3, 6, 7] {
            assert_eq!(validate_vste([stef::V | cfg << 1, 0]), Err(Errno::EIO), "cfg {cfg}");
        }
        // EATS S1CHK and reserved.
        assert_eq!(validate_vste([s1, 2 << 28]), Err(Errno::EIO));
        assert_eq!(validate_vste([s1, 3 << 28]), Err(Errno::EIO));
        assert_eq!(stef::NESTING_ALLOWED_0, 0xf80f_ffff_ffff_ffff);
        assert_eq!(stef::NESTING_ALLOWED_1, 0x3800_00ff);
    }

    #[test]
    fn nested_ste_merge() {
        let s2 = [
            stef::V | stef::CFG_S2_TRANS << 1,
            stef::SHCFG_INCOMING << 44 | stef::S2FWB,
            0x55,
            0x4000_0000,
            0,
            0,
            0,
            0,
        ];
        let v = [stef::V | stef::CFG_S1_TRANS << 1 | 0x8000_0040 | 1 << 4 | 4 << 59, stef::S1DSS_BYPASS];
        let p = nested_ste(v, s2);
        assert_eq!(p[0], stef::V | 0b1110 | 0x8000_0040 | 1 << 4 | 4 << 59);
        assert_eq!(p[1], s2[1] | stef::S1DSS_BYPASS | stef::MEV);
        assert_eq!(&p[2..4], &s2[2..4]);
        assert_eq!(nested_ste([stef::V | stef::CFG_BYPASS << 1, 0], s2), s2);
        assert_eq!(nested_ste([0, 0], s2), abort_ste());
        assert_eq!(nested_ste([stef::V, 0], s2), abort_ste());
        assert_eq!(abort_ste()[0], 1);
    }

    #[test]
    fn ste_decoding() {
        let i = info();
        let ste = |w0: u64, w1: u64| [w0, w1, 0, 0, 0, 0, 0, 0];
        let nested = stef::V | stef::CFG_NESTED << 1 | 0x10_0000;
        assert_eq!(
            decode_ste(&ste(nested | 2 << 4 | 20 << 59, 2), &i),
            SteConfig::Nested(CdTable { ptr: 0x10_0000, fmt: 2, cdmax: 20, dss: 2 })
        );
        assert_eq!(decode_ste(&ste(nested | 21 << 59, 0), &i), SteConfig::Illegal);
        assert_eq!(decode_ste(&ste(nested | 3 << 4, 0), &i), SteConfig::Illegal);
        assert_eq!(decode_ste(&ste(nested | 1 << 59, 3), &i), SteConfig::Illegal);
        // S1DSS is ignored without substreams.
        assert!(matches!(decode_ste(&ste(nested, 3), &i), SteConfig::Nested(_)));
        let linear_only = SmmuInfo::from_regs(SmmuRegs::builder().two_level(true, false).build()).unwrap();
        assert_eq!(decode_ste(&ste(nested | 1 << 4, 0), &linear_only), SteConfig::Illegal);
        assert_eq!(decode_ste(&abort_ste(), &i), SteConfig::Abort);
        assert_eq!(decode_ste(&ste(stef::V | stef::CFG_S2_TRANS << 1, 0), &i), SteConfig::S2Only);
        assert_eq!(decode_ste(&ste(stef::V | 2 << 1, 0), &i), SteConfig::Illegal);
        assert_eq!(decode_ste(&ste(0, 0), &i), SteConfig::Illegal);
        assert_eq!(CdTable { ptr: 0, fmt: 1, cdmax: 8, dss: 0 }.split(), 6);
    }

    #[test]
    fn cd_decoding() {
        let i = info();
        let w0 = guest_cd_word0(0x42);
        let cd = decode_cd([w0, 0x8000_1000, 0, 0xf404_ff44], &i).unwrap();
        assert_eq!(cd.asid, 0x42);
        assert_eq!(cd.oas, 48);
        assert_eq!(cd.tt[0], Some(TtConfig { ttb: 0x8000_1000, tsz: 16, granule_shift: 12, had: false }));
        assert_eq!(cd.tt[1], None);
        assert!(cd.record && cd.abort && !cd.ha && !cd.hd && !cd.stall);
        assert_eq!(cd.mair, 0xf404_ff44);
        let bad = |w0: u64, ttb0: u64| decode_cd([w0, ttb0, 0, 0], &i);
        assert!(bad(w0 & !cdf::V, 0).is_none());
        assert!(bad(w0 & !cdf::AA64, 0).is_none());
        assert!(bad(w0 | cdf::ENDI, 0).is_none());
        // T0SZ out of range (no STT): 15 and 40.
        assert!(bad(w0 & !0x3f | 15, 0).is_none());
        assert!(bad(w0 & !0x3f | 40, 0).is_none());
        assert!(bad(w0 & !0x3f | 39, 0).is_some());
        // TG0 16KB is not supported by the default SMMU; 64KB is.
        assert!(bad(w0 | cdf::TG0_16K << 6, 0).is_none());
        assert_eq!(bad(w0 | cdf::TG0_64K << 6, 0).unwrap().tt[0].unwrap().granule_shift, 16);
        assert!(bad(w0 | 0b11 << 6, 0).is_none());
        // TTB0 beyond a 40-bit IPS.
        let ips40 = w0 & !(7 << 32) | 2 << 32;
        assert!(bad(ips40, 1 << 40).is_none());
        assert_eq!(bad(ips40, (1 << 40) - 0x1000).unwrap().oas, 40);
        // A must be 1 with TERM_MODEL 1; S needs stall support.
        assert!(bad(w0 & !cdf::A, 0).is_none());
        assert!(bad(w0 | cdf::S, 0).is_none());
        // HA/HD within HTTU: fine here, not without HTTU.
        assert!(bad(w0 | cdf::HA | cdf::HD, 0).is_some());
        let nohttu = SmmuInfo::from_regs(SmmuRegs::builder().httu(false, false).build()).unwrap();
        assert!(decode_cd([w0 | cdf::HA, 0, 0, 0], &nohttu).is_none());
        let ha_only = SmmuInfo::from_regs(SmmuRegs::builder().httu(true, false).build()).unwrap();
        assert!(decode_cd([w0 | cdf::HA, 0, 0, 0], &ha_only).is_some());
        assert!(decode_cd([w0 | cdf::HD, 0, 0, 0], &ha_only).is_none());
        // TTB1 enabled: T1SZ 16, TG1 4KB (encoding 0b10).
        let both = w0 & !cdf::EPD1 | 16 << 16 | cdf::TG1_4K << 22;
        let cd = decode_cd([both, 0x1000, 0x2000, 0], &i).unwrap();
        assert_eq!(cd.tt[1].unwrap().ttb, 0x2000);
        // TG1 0b00 is reserved.
        assert!(decode_cd([w0 & !cdf::EPD1 | 16 << 16, 0x1000, 0x2000, 0], &i).is_none());
        // 8-bit ASIDs.
        let a8 = SmmuInfo::from_regs(SmmuRegs::builder().id_widths(false, true).build()).unwrap();
        assert_eq!(decode_cd([guest_cd_word0(0x1234), 0, 0, 0], &a8).unwrap().asid, 0x34);
    }

    #[test]
    fn table_selection() {
        let i = info();
        let w0 = guest_cd_word0(1) & !cdf::EPD1 | 25 << 16 | cdf::TG1_4K << 22;
        let cd = decode_cd([w0, 0x1000, 0x2000, 0], &i).unwrap();
        assert_eq!(select_tt(&cd, 0x0000_ffff_ffff_f000).unwrap().ttb, 0x1000);
        assert!(select_tt(&cd, 0x0001_0000_0000_0000).is_none());
        // TTB1 covers the top 2^39 bytes.
        assert_eq!(select_tt(&cd, 0xffff_ff80_0000_0000).unwrap().ttb, 0x2000);
        assert!(select_tt(&cd, 0xffff_ff7f_ffff_ffff).is_none());
        // Top-byte ignore.
        assert!(select_tt(&cd, 0x5a00_0000_0000_1000).is_none());
        let tbi = decode_cd([w0 | cdf::TBI0, 0x1000, 0x2000, 0], &i).unwrap();
        assert_eq!(select_tt(&tbi, 0x5a00_0000_0000_1000).unwrap().ttb, 0x1000);
        // EPD1: the upper range faults.
        let epd = decode_cd([guest_cd_word0(1), 0x1000, 0, 0], &i).unwrap();
        assert!(select_tt(&epd, 0xffff_ffff_ffff_f000).is_none());
        assert_eq!(genmask(51, 6), 0x000f_ffff_ffff_ffc0);
        assert_eq!(genmask(63, 59), 0xf800_0000_0000_0000);
    }
}
