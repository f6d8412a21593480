//! The SMMUv3 identification registers: SMMU_IDR0..IDR5, SMMU_IIDR and
//! SMMU_AIDR (Arm SMMUv3 architecture specification, IHI 0070, §6.3.1 to
//! §6.3.8).
//!
//! Model: every register is a plain 32-bit value wrapped in a type with a
//! `const fn` getter and a `with_*` setter per field; a setter masks the
//! value to the field's width and touches nothing else, so a register
//! round-trips bit for bit (reserved and IMPLEMENTATION DEFINED bits
//! included). Field names are the specification's; where the Linux driver
//! (`drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h`, `IDR*_`) names a field
//! differently its name is given next to it.
//!
//! [`SmmuRegs`] bundles the eight registers. It comes from a realistic
//! default ([`SmmuRegs::default`]), from a [`SmmuRegsBuilder`], from raw
//! values ([`SmmuRegs::from_raw`], e.g. the `idr[6]`/`iidr`/`aidr` that
//! `IOMMU_GET_HW_INFO` returns on a real machine) or from text
//! ([`SmmuRegs::parse`]); [`SmmuRegs::decode`] renders the fields as
//! human-readable lines.

use uiommufd_abi::Errno;

use crate::regfield::{self, register, Field};

register! {
    /// SMMU_IDR0 (§6.3.1, offset 0x0).
    Idr0: u32, "SMMU_IDR0" @ 0x0 {
        s2p / with_s2p = "S2P" [0; 1] "stage 2 translation";
        s1p / with_s1p = "S1P" [1; 1] "stage 1 translation";
        /// 0b01 AArch32 (LPAE) only, 0b10 AArch64 only, 0b11 both.
        ttf / with_ttf = "TTF" [2; 2] "translation table formats";
        /// Coherent access to in-memory structures, queues and table walks.
        cohacc / with_cohacc = "COHACC" [4; 1] "coherent access";
        btm / with_btm = "BTM" [5; 1] "broadcast TLB maintenance";
        /// 0b00 none, 0b01 access flag, 0b10 access flag and dirty state,
        /// 0b11 also hardware table access flags (HAFT).
        httu / with_httu = "HTTU" [6; 2] "hardware translation table update";
        dormhint / with_dormhint = "DORMHINT" [8; 1] "dormant hint";
        hyp / with_hyp = "Hyp" [9; 1] "EL2 stream world";
        ats / with_ats = "ATS" [10; 1] "PCIe ATS";
        ns1ats / with_ns1ats = "NS1ATS" [11; 1] "split-stage ATS not supported";
        asid16 / with_asid16 = "ASID16" [12; 1] "16-bit ASIDs";
        msi / with_msi = "MSI" [13; 1] "message-signalled interrupts";
        sev / with_sev = "SEV" [14; 1] "WFE wake-up events";
        atos / with_atos = "ATOS" [15; 1] "address translation operations";
        pri / with_pri = "PRI" [16; 1] "PCIe page request interface";
        vmw / with_vmw = "VMW" [17; 1] "VMID wildcards";
        vmid16 / with_vmid16 = "VMID16" [18; 1] "16-bit VMIDs";
        /// Driver `IDR0_CD2L`.
        cd2l / with_cd2l = "CD2L" [19; 1] "2-level CD tables";
        vatos / with_vatos = "VATOS" [20; 1] "virtual ATOS page";
        /// 0b00 mixed, 0b10 little-endian, 0b11 big-endian, 0b01 reserved.
        ttendian / with_ttendian = "TTENDIAN" [21; 2] "translation table endianness";
        atsrecerr / with_atsrecerr = "ATSRECERR" [23; 1] "ATS recoverable errors";
        /// 0b00 stall and terminate, 0b01 terminate only, 0b10 stall forced.
        stall_model / with_stall_model = "STALL_MODEL" [24; 2] "stalling fault model";
        /// 1: a terminated transaction always aborts (CD.A must be 1).
        term_model / with_term_model = "TERM_MODEL" [26; 1] "termination model";
        /// Driver `IDR0_ST_LVL`: 0b00 linear, 0b01 2-level stream table.
        st_level / with_st_level = "ST_LEVEL" [27; 2] "stream table levels";
        rme_impl / with_rme_impl = "RME_IMPL" [30; 1] "realm management extension";
    }
}

register! {
    /// SMMU_IDR1 (§6.3.2, offset 0x4).
    Idr1: u32, "SMMU_IDR1" @ 0x4 {
        sidsize / with_sidsize = "SIDSIZE" [0; 6] "StreamID bits";
        /// SubstreamID (PASID) bits; 0: no substreams.
        ssidsize / with_ssidsize = "SSIDSIZE" [6; 5] "SubstreamID bits";
        priqs / with_priqs = "PRIQS" [11; 5] "log2 max PRI queue entries";
        /// Driver `IDR1_EVTQS`.
        eventqs / with_eventqs = "EVENTQS" [16; 5] "log2 max event queue entries";
        cmdqs / with_cmdqs = "CMDQS" [21; 5] "log2 max command queue entries";
        attr_perms_ovr / with_attr_perms_ovr = "ATTR_PERMS_OVR" [26; 1] "incoming permission overrides";
        attr_types_ovr / with_attr_types_ovr = "ATTR_TYPES_OVR" [27; 1] "incoming attribute overrides";
        rel / with_rel = "REL" [28; 1] "relative base pointers";
        queues_preset / with_queues_preset = "QUEUES_PRESET" [29; 1] "fixed queue base addresses";
        tables_preset / with_tables_preset = "TABLES_PRESET" [30; 1] "fixed table base addresses";
        ecmdq / with_ecmdq = "ECMDQ" [31; 1] "enhanced command queue interface";
    }
}

register! {
    /// SMMU_IDR2 (§6.3.3, offset 0x8).
    Idr2: u32, "SMMU_IDR2" @ 0x8 {
        ba_vatos / with_ba_vatos = "BA_VATOS" [0; 10] "VATOS page base address / 64KB";
    }
}

register! {
    /// SMMU_IDR3 (§6.3.4, offset 0xc).
    Idr3: u32, "SMMU_IDR3" @ 0xc {
        had / with_had = "HAD" [2; 1] "hierarchical attribute disables";
        pbha / with_pbha = "PBHA" [3; 1] "page-based hardware attributes";
        xnx / with_xnx = "XNX" [4; 1] "EL0/EL1 execute-never at stage 2";
        pps / with_pps = "PPS" [5; 1] "PRI responses use the PASID of the STE";
        mpam / with_mpam = "MPAM" [7; 1] "memory partitioning and monitoring";
        /// Stage 2 controls memory attributes (S2FWB; driver `IDR3_FWB`).
        fwb / with_fwb = "FWB" [8; 1] "stage 2 forced write-back";
        stt / with_stt = "STT" [9; 1] "small translation tables";
        /// Range-based TLB invalidation and level hints.
        ril / with_ril = "RIL" [10; 1] "range invalidation";
        /// Break-before-make levels: 0, 1 or 2 (driver `IDR3_BBML`).
        bbml / with_bbml = "BBML" [11; 2] "break-before-make level";
        e0pd / with_e0pd = "E0PD" [13; 1] "EL0 partition disables";
        ptwnnc / with_ptwnnc = "PTWNNC" [14; 1] "table walks non-cacheable in nested";
        dpt / with_dpt = "DPT" [15; 1] "device permission table";
    }
}

register! {
    /// SMMU_IDR4 (§6.3.5, offset 0x10): IMPLEMENTATION DEFINED.
    Idr4: u32, "SMMU_IDR4" @ 0x10 {
        impdef / with_impdef = "IMPDEF" [0; 32] "IMPLEMENTATION DEFINED";
    }
}

register! {
    /// SMMU_IDR5 (§6.3.6, offset 0x14).
    Idr5: u32, "SMMU_IDR5" @ 0x14 {
        /// 0 32, 1 36, 2 40, 3 42, 4 44, 5 48, 6 52 bits.
        oas / with_oas = "OAS" [0; 3] "output address size";
        gran4k / with_gran4k = "GRAN4K" [4; 1] "4KB translation granule";
        gran16k / with_gran16k = "GRAN16K" [5; 1] "16KB translation granule";
        gran64k / with_gran64k = "GRAN64K" [6; 1] "64KB translation granule";
        /// 52-bit addresses with 4KB and 16KB granules (FEAT_LPA2; driver
        /// `IDR5_DS`).
        ds / with_ds = "DS" [7; 1] "52-bit addresses for 4KB/16KB granules";
        /// 0b00 48-bit, 0b01 52-bit virtual addresses with 64KB granule.
        vax / with_vax = "VAX" [10; 2] "virtual address extend";
        stall_max / with_stall_max = "STALL_MAX" [16; 16] "max outstanding stalled transactions";
    }
}

register! {
    /// SMMU_IIDR (§6.3.7, offset 0x18).
    Iidr: u32, "SMMU_IIDR" @ 0x18 {
        /// JEP106 code of the implementer (0x43b: Arm).
        implementer / with_implementer = "Implementer" [0; 12] "implementer (JEP106)";
        revision / with_revision = "Revision" [12; 4] "minor revision";
        variant / with_variant = "Variant" [16; 4] "major revision";
        product_id / with_product_id = "ProductID" [20; 12] "product";
    }
}

register! {
    /// SMMU_AIDR (§6.3.8, offset 0x1c).
    Aidr: u32, "SMMU_AIDR" @ 0x1c {
        arch_minor_rev / with_arch_minor_rev = "ArchMinorRev" [0; 4] "SMMUv3.<minor>";
        arch_major_rev / with_arch_major_rev = "ArchMajorRev" [4; 4] "SMMUv<3 + major>";
    }
}

/// `IDR0.TTF` value: AArch64 tables only.
pub const TTF_AARCH64: u32 = 0b10;
/// `IDR0.TTF` value: AArch32 (LPAE) and AArch64 tables.
pub const TTF_AARCH32_64: u32 = 0b11;
/// `IDR0.HTTU`: hardware access flag update.
pub const HTTU_ACCESS: u32 = 0b01;
/// `IDR0.HTTU`: access flag and dirty state update.
pub const HTTU_ACCESS_DIRTY: u32 = 0b10;
/// `IDR0.HTTU`: also hardware-managed table access flags.
pub const HTTU_ACCESS_DIRTY_HAFT: u32 = 0b11;
/// `IDR0.TTENDIAN`: mixed-endian walks.
pub const TTENDIAN_MIXED: u32 = 0b00;
/// `IDR0.TTENDIAN`: little-endian walks only.
pub const TTENDIAN_LE: u32 = 0b10;
/// `IDR0.TTENDIAN`: big-endian walks only.
pub const TTENDIAN_BE: u32 = 0b11;
/// `IDR0.STALL_MODEL`: stall and terminate models supported.
pub const STALL_MODEL_STALL: u32 = 0b00;
/// `IDR0.STALL_MODEL`: stall not supported.
pub const STALL_MODEL_TERMINATE: u32 = 0b01;
/// `IDR0.STALL_MODEL`: stall forced (every fault of a stall-capable stream stalls).
pub const STALL_MODEL_FORCE: u32 = 0b10;
/// JEP106 code of Arm in `IIDR.Implementer`.
pub const IIDR_IMPLEMENTER_ARM: u32 = 0x43b;
/// `IIDR.ProductID` of Arm's MMU-600.
pub const IIDR_PRODUCTID_ARM_MMU_600: u32 = 0x483;
/// `IIDR.ProductID` of Arm's MMU-700.
pub const IIDR_PRODUCTID_ARM_MMU_700: u32 = 0x487;
/// `IIDR.ProductID` of Arm's MMU-L1.
pub const IIDR_PRODUCTID_ARM_MMU_L1: u32 = 0x48a;
/// `IIDR.ProductID` of Arm's MMU-S3.
pub const IIDR_PRODUCTID_ARM_MMU_S3: u32 = 0x498;

/// Output address size in bits of an `IDR5.OAS` (or `CD.IPS`, `VTCR.PS`)
/// encoding; `None` for the reserved encoding 7.
pub const fn oas_bits(enc: u32) -> Option<u32> {
    match enc {
        0 => Some(32),
        1 => Some(36),
        2 => Some(40),
        3 => Some(42),
        4 => Some(44),
        5 => Some(48),
        6 => Some(52),
        _ => None,
    }
}

/// The `OAS`/`IPS`/`PS` encoding of an address size in bits.
pub const fn oas_encoding(bits: u32) -> Option<u32> {
    match bits {
        32 => Some(0),
        36 => Some(1),
        40 => Some(2),
        42 => Some(3),
        44 => Some(4),
        48 => Some(5),
        52 => Some(6),
        _ => None,
    }
}

/// The identification registers of one SMMUv3 instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SmmuRegs {
    pub idr0: Idr0,
    pub idr1: Idr1,
    pub idr2: Idr2,
    pub idr3: Idr3,
    pub idr4: Idr4,
    pub idr5: Idr5,
    pub iidr: Iidr,
    pub aidr: Aidr,
}

impl SmmuRegs {
    /// Registers from raw values, in `IOMMU_GET_HW_INFO`'s order
    /// (`struct iommu_hw_info_arm_smmuv3`: `idr[0..6]`, `iidr`, `aidr`).
    pub const fn from_raw(idr: [u32; 6], iidr: u32, aidr: u32) -> Self {
        SmmuRegs {
            idr0: Idr0(idr[0]),
            idr1: Idr1(idr[1]),
            idr2: Idr2(idr[2]),
            idr3: Idr3(idr[3]),
            idr4: Idr4(idr[4]),
            idr5: Idr5(idr[5]),
            iidr: Iidr(iidr),
            aidr: Aidr(aidr),
        }
    }

    /// The raw `idr[6]` array.
    pub const fn idr(&self) -> [u32; 6] {
        [self.idr0.0, self.idr1.0, self.idr2.0, self.idr3.0, self.idr4.0, self.idr5.0]
    }

    /// Parse `name=value` words (separated by white space or commas; names
    /// `idr0`..`idr5`, `iidr`, `aidr`, any case; values in hex, with or
    /// without `0x`). `IDR0`, `IDR1` and `IDR5` are required, the others
    /// default to 0. `EINVAL` for a missing required register, an unknown
    /// name or a value that is not a 32-bit hex number.
    pub fn parse(text: &str) -> Result<Self, Errno> {
        let mut vals: [Option<u32>; 8] = [None; 8];
        const NAMES: [&str; 8] = ["idr0", "idr1", "idr2", "idr3", "idr4", "idr5", "iidr", "aidr"];
        for word in text.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()) {
            let (name, value) = word.split_once(['=', ':']).ok_or(Errno::EINVAL)?;
            let name = name.trim().to_ascii_lowercase();
            let name = name.trim_start_matches("smmu_");
            let idx = NAMES.iter().position(|n| *n == name).ok_or(Errno::EINVAL)?;
            let v = value.trim();
            let v = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
            vals[idx] = Some(u32::from_str_radix(v, 16).map_err(|_| Errno::EINVAL)?);
        }
        let req = |i: usize| vals[i].ok_or(Errno::EINVAL);
        let idr = [req(0)?, req(1)?, vals[2].unwrap_or(0), vals[3].unwrap_or(0), vals[4].unwrap_or(0), req(5)?];
        Ok(SmmuRegs::from_raw(idr, vals[6].unwrap_or(0), vals[7].unwrap_or(0)))
    }

    /// The `name=value` form [`parse`](Self::parse) reads.
    pub fn to_text(&self) -> String {
        let i = self.idr();
        format!(
            "idr0={:#x} idr1={:#x} idr2={:#x} idr3={:#x} idr4={:#x} idr5={:#x} iidr={:#x} aidr={:#x}",
            i[0], i[1], i[2], i[3], i[4], i[5], self.iidr.0, self.aidr.0
        )
    }

    /// A builder starting from [`SmmuRegs::default`].
    pub fn builder() -> SmmuRegsBuilder {
        SmmuRegsBuilder { regs: SmmuRegs::default() }
    }

    /// The architecture version `AIDR` names, as `(3, minor)`.
    pub const fn version(&self) -> (u32, u32) {
        (3 + self.aidr.arch_major_rev(), self.aidr.arch_minor_rev())
    }

    /// Human-readable lines: one per field, `NAME [bits] = value  meaning`,
    /// register by register. Bits set outside the known fields are listed
    /// at the end of each register.
    pub fn decode(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (maj, min) = self.version();
        out.push(format!("SMMUv{maj}.{min}"));
        regfield::decode(&mut out, Idr0::NAME, self.idr0.0.into(), 32, Idr0::FIELDS, |f, v| idr0_note(f, v as u32));
        regfield::decode(&mut out, Idr1::NAME, self.idr1.0.into(), 32, Idr1::FIELDS, |f, v| idr1_note(f, v as u32));
        regfield::decode(&mut out, Idr2::NAME, self.idr2.0.into(), 32, Idr2::FIELDS, |_, _| None);
        regfield::decode(&mut out, Idr3::NAME, self.idr3.0.into(), 32, Idr3::FIELDS, |f, v| idr3_note(f, v as u32));
        regfield::decode(&mut out, Idr4::NAME, self.idr4.0.into(), 32, Idr4::FIELDS, |_, _| None);
        regfield::decode(&mut out, Idr5::NAME, self.idr5.0.into(), 32, Idr5::FIELDS, |f, v| idr5_note(f, v as u32));
        regfield::decode(&mut out, Iidr::NAME, self.iidr.0.into(), 32, Iidr::FIELDS, |f, v| {
            iidr_note(self.iidr, f, v as u32)
        });
        regfield::decode(&mut out, Aidr::NAME, self.aidr.0.into(), 32, Aidr::FIELDS, |_, _| None);
        out
    }
}

fn idr0_note(f: &Field, v: u32) -> Option<String> {
    let s = match (f.name, v) {
        ("TTF", 0b01) => "AArch32 only",
        ("TTF", 0b10) => "AArch64 only",
        ("TTF", 0b11) => "AArch32 and AArch64",
        ("TTF", _) => "reserved",
        ("HTTU", 0) => "none",
        ("HTTU", 1) => "access flag",
        ("HTTU", 2) => "access flag and dirty state",
        ("HTTU", _) => "access flag, dirty state, table access flags",
        ("TTENDIAN", 0) => "mixed",
        ("TTENDIAN", 2) => "little-endian",
        ("TTENDIAN", 3) => "big-endian",
        ("TTENDIAN", _) => "reserved",
        ("STALL_MODEL", 0) => "stall and terminate",
        ("STALL_MODEL", 1) => "terminate only",
        ("STALL_MODEL", 2) => "stall forced",
        ("STALL_MODEL", _) => "reserved",
        ("ST_LEVEL", 0) => "linear",
        ("ST_LEVEL", 1) => "2-level",
        ("ST_LEVEL", _) => "reserved",
        _ => return None,
    };
    Some(s.to_string())
}

fn idr1_note(f: &Field, v: u32) -> Option<String> {
    match f.name {
        "SIDSIZE" => Some(format!("{v}-bit StreamIDs")),
        "SSIDSIZE" if v == 0 => Some("no substreams".to_string()),
        "SSIDSIZE" => Some(format!("{v}-bit SubstreamIDs")),
        "PRIQS" | "EVENTQS" | "CMDQS" => Some(format!("{} entries", 1u64 << v.min(63))),
        _ => None,
    }
}

fn idr3_note(f: &Field, v: u32) -> Option<String> {
    match (f.name, v) {
        ("BBML", 0) => Some("level 0".to_string()),
        ("BBML", 1) => Some("level 1".to_string()),
        ("BBML", 2) => Some("level 2".to_string()),
        ("BBML", _) => Some("reserved".to_string()),
        _ => None,
    }
}

fn idr5_note(f: &Field, v: u32) -> Option<String> {
    match f.name {
        "OAS" => Some(match oas_bits(v) {
            Some(b) => format!("{b}-bit"),
            None => "reserved".to_string(),
        }),
        "VAX" => Some(
            match v {
                0 => "48-bit VA",
                1 => "52-bit VA",
                _ => "reserved",
            }
            .to_string(),
        ),
        _ => None,
    }
}

fn iidr_note(iidr: Iidr, f: &Field, v: u32) -> Option<String> {
    match f.name {
        "Implementer" if v == IIDR_IMPLEMENTER_ARM => Some("Arm".to_string()),
        "ProductID" if iidr.implementer() == IIDR_IMPLEMENTER_ARM => match v {
            IIDR_PRODUCTID_ARM_MMU_600 => Some("MMU-600".to_string()),
            IIDR_PRODUCTID_ARM_MMU_700 => Some("MMU-700".to_string()),
            IIDR_PRODUCTID_ARM_MMU_L1 => Some("MMU-L1".to_string()),
            IIDR_PRODUCTID_ARM_MMU_S3 => Some("MMU-S3".to_string()),
            _ => None,
        },
        _ => None,
    }
}

impl Default for SmmuRegs {
    /// A current Neoverse-class platform SMMU (SMMUv3.2, modelled on what
    /// server parts report; not a copy of any one part): both stages with
    /// AArch64 tables, coherent access, HTTU access flag and dirty state,
    /// BTM, ATS, PRI, MSIs, 16-bit ASIDs and VMIDs, 2-level stream and CD
    /// tables, little-endian walks, terminate-only fault model with abort
    /// termination, 16-bit StreamIDs, 20-bit SubstreamIDs, 2^19-entry
    /// queues, attribute overrides, range invalidation, S2FWB, BBML2,
    /// 48-bit OAS and 4KB + 64KB granules.
    ///
    /// `IIDR` is 0: Arm's MMU-600 (variant < 2) and MMU-700 IIDRs make the
    /// Linux driver turn nesting off for their errata (see
    /// [`SmmuRegsBuilder::iidr`]).
    fn default() -> Self {
        let idr0 = Idr0(0)
            .with_s2p(1)
            .with_s1p(1)
            .with_ttf(TTF_AARCH64)
            .with_cohacc(1)
            .with_btm(1)
            .with_httu(HTTU_ACCESS_DIRTY)
            .with_hyp(1)
            .with_ats(1)
            .with_asid16(1)
            .with_msi(1)
            .with_sev(1)
            .with_pri(1)
            .with_vmw(1)
            .with_vmid16(1)
            .with_cd2l(1)
            .with_ttendian(TTENDIAN_LE)
            .with_stall_model(STALL_MODEL_TERMINATE)
            .with_term_model(1)
            .with_st_level(1);
        let idr1 = Idr1(0)
            .with_sidsize(16)
            .with_ssidsize(20)
            .with_priqs(19)
            .with_eventqs(19)
            .with_cmdqs(19)
            .with_attr_perms_ovr(1)
            .with_attr_types_ovr(1);
        let idr3 = Idr3(0).with_had(1).with_fwb(1).with_ril(1).with_bbml(2);
        let idr5 = Idr5(0).with_oas(5).with_gran4k(1).with_gran64k(1);
        SmmuRegs {
            idr0,
            idr1,
            idr2: Idr2(0),
            idr3,
            idr4: Idr4(0),
            idr5,
            iidr: Iidr(0),
            aidr: Aidr(0).with_arch_minor_rev(2),
        }
    }
}

/// Configures the fields a model user typically varies; everything else
/// keeps the value of the registers the builder started from.
#[derive(Clone, Copy, Debug)]
pub struct SmmuRegsBuilder {
    regs: SmmuRegs,
}

impl SmmuRegsBuilder {
    /// Start from arbitrary registers.
    pub fn from(regs: SmmuRegs) -> Self {
        SmmuRegsBuilder { regs }
    }

    /// Stage 1 and stage 2 translation (S1P, S2P).
    pub fn stages(mut self, s1: bool, s2: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_s1p(s1.into()).with_s2p(s2.into());
        self
    }

    /// Translation table formats (TTF: [`TTF_AARCH64`], [`TTF_AARCH32_64`]).
    pub fn table_formats(mut self, ttf: u32) -> Self {
        self.regs.idr0 = self.regs.idr0.with_ttf(ttf);
        self
    }

    /// Coherent access (COHACC).
    pub fn coherent(mut self, on: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_cohacc(on.into());
        self
    }

    /// Hardware translation table update: access flag, dirty state.
    pub fn httu(mut self, access: bool, dirty: bool) -> Self {
        let v = match (access, dirty) {
            (_, true) => HTTU_ACCESS_DIRTY,
            (true, false) => HTTU_ACCESS,
            (false, false) => 0,
        };
        self.regs.idr0 = self.regs.idr0.with_httu(v);
        self
    }

    /// Broadcast TLB maintenance (BTM).
    pub fn btm(mut self, on: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_btm(on.into());
        self
    }

    /// PCIe ATS and PRI.
    pub fn ats_pri(mut self, ats: bool, pri: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_ats(ats.into()).with_pri(pri.into());
        self
    }

    /// 16-bit ASIDs and VMIDs (else 8-bit).
    pub fn id_widths(mut self, asid16: bool, vmid16: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_asid16(asid16.into()).with_vmid16(vmid16.into());
        self
    }

    /// MSIs and SEV.
    pub fn msi_sev(mut self, msi: bool, sev: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_msi(msi.into()).with_sev(sev.into());
        self
    }

    /// The EL2 stream world (Hyp).
    pub fn hyp(mut self, on: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_hyp(on.into());
        self
    }

    /// 2-level stream table (ST_LEVEL) and 2-level CD tables (CD2L).
    pub fn two_level(mut self, stream_table: bool, cd_table: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_st_level(stream_table.into()).with_cd2l(cd_table.into());
        self
    }

    /// Fault models: STALL_MODEL and TERM_MODEL.
    pub fn fault_model(mut self, stall_model: u32, term_model_abort: bool) -> Self {
        self.regs.idr0 = self.regs.idr0.with_stall_model(stall_model).with_term_model(term_model_abort.into());
        self
    }

    /// Table walk endianness (TTENDIAN).
    pub fn endianness(mut self, ttendian: u32) -> Self {
        self.regs.idr0 = self.regs.idr0.with_ttendian(ttendian);
        self
    }

    /// StreamID and SubstreamID widths in bits.
    pub fn stream_bits(mut self, sid_bits: u32, ssid_bits: u32) -> Self {
        self.regs.idr1 = self.regs.idr1.with_sidsize(sid_bits).with_ssidsize(ssid_bits);
        self
    }

    /// log2 of the command, event and PRI queue sizes.
    pub fn queue_sizes(mut self, cmdqs: u32, eventqs: u32, priqs: u32) -> Self {
        self.regs.idr1 = self.regs.idr1.with_cmdqs(cmdqs).with_eventqs(eventqs).with_priqs(priqs);
        self
    }

    /// Incoming attribute type overrides (ATTR_TYPES_OVR).
    pub fn attr_types_ovr(mut self, on: bool) -> Self {
        self.regs.idr1 = self.regs.idr1.with_attr_types_ovr(on.into());
        self
    }

    /// Range invalidation (RIL).
    pub fn ril(mut self, on: bool) -> Self {
        self.regs.idr3 = self.regs.idr3.with_ril(on.into());
        self
    }

    /// Stage 2 forced write-back (FWB).
    pub fn fwb(mut self, on: bool) -> Self {
        self.regs.idr3 = self.regs.idr3.with_fwb(on.into());
        self
    }

    /// Break-before-make level (BBML, 0..=2).
    pub fn bbml(mut self, level: u32) -> Self {
        self.regs.idr3 = self.regs.idr3.with_bbml(level);
        self
    }

    /// Small translation tables (STT: T0SZ up to 48).
    pub fn stt(mut self, on: bool) -> Self {
        self.regs.idr3 = self.regs.idr3.with_stt(on.into());
        self
    }

    /// Output address size in bits (32, 36, 40, 42, 44, 48 or 52; anything
    /// else is ignored).
    pub fn oas_bits(mut self, bits: u32) -> Self {
        if let Some(enc) = oas_encoding(bits) {
            self.regs.idr5 = self.regs.idr5.with_oas(enc);
        }
        self
    }

    /// Translation granules supported.
    pub fn granules(mut self, g4k: bool, g16k: bool, g64k: bool) -> Self {
        self.regs.idr5 = self.regs.idr5.with_gran4k(g4k.into()).with_gran16k(g16k.into()).with_gran64k(g64k.into());
        self
    }

    /// 52-bit virtual addresses (VAX = 0b01).
    pub fn vax52(mut self, on: bool) -> Self {
        self.regs.idr5 = self.regs.idr5.with_vax(on.into());
        self
    }

    /// Maximum number of outstanding stalls (STALL_MAX).
    pub fn stall_max(mut self, n: u32) -> Self {
        self.regs.idr5 = self.regs.idr5.with_stall_max(n);
        self
    }

    /// Implementation identification (`IIDR`): implementer, product,
    /// variant (major revision), revision (minor).
    pub fn iidr(mut self, implementer: u32, product_id: u32, variant: u32, revision: u32) -> Self {
        self.regs.iidr = Iidr(0)
            .with_implementer(implementer)
            .with_product_id(product_id)
            .with_variant(variant)
            .with_revision(revision);
        self
    }

    /// Architecture revision: SMMUv3.`minor`.
    pub fn arch_minor(mut self, minor: u32) -> Self {
        self.regs.aidr = Aidr(0).with_arch_minor_rev(minor);
        self
    }

    /// Any other change, on the raw registers.
    pub fn raw(mut self, f: impl FnOnce(&mut SmmuRegs)) -> Self {
        f(&mut self.regs);
        self
    }

    pub fn build(self) -> SmmuRegs {
        self.regs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_register_values_by_hand() {
        let r = SmmuRegs::default();
        // IDR0: S2P 0x1 | S1P 0x2 | TTF=2 0x8 | COHACC 0x10 | BTM 0x20 |
        // HTTU=2 0x80 | Hyp 0x200 | ATS 0x400 | ASID16 0x1000 | MSI 0x2000 |
        // SEV 0x4000 | PRI 0x1_0000 | VMW 0x2_0000 | VMID16 0x4_0000 |
        // CD2L 0x8_0000 | TTENDIAN=2 0x40_0000 | STALL_MODEL=1 0x100_0000 |
        // TERM_MODEL 0x400_0000 | ST_LEVEL=1 0x800_0000.
        assert_eq!(r.idr0.0, 0x0d4f_76bb);
        // IDR1: SIDSIZE 16, SSIDSIZE 20 << 6, PRIQS 19 << 11, EVENTQS
        // 19 << 16, CMDQS 19 << 21, ATTR_PERMS_OVR, ATTR_TYPES_OVR.
        assert_eq!(r.idr1.0, 0x10 | 0x500 | 0x9800 | 0x13_0000 | 0x260_0000 | 0x400_0000 | 0x800_0000);
        assert_eq!(r.idr1.0, 0x0e73_9d10);
        // IDR3: HAD 0x4 | FWB 0x100 | RIL 0x400 | BBML=2 0x1000.
        assert_eq!(r.idr3.0, 0x1504);
        // IDR5: OAS=5 (48-bit) | GRAN4K 0x10 | GRAN64K 0x40.
        assert_eq!(r.idr5.0, 0x55);
        assert_eq!((r.iidr.0, r.aidr.0), (0, 2));
        assert_eq!(r.version(), (3, 2));
    }

    #[test]
    fn fields_round_trip() {
        let r = Idr0(0xffff_ffff);
        assert_eq!(r.ttf(), 3);
        assert_eq!(r.httu(), 3);
        assert_eq!(r.with_httu(1).httu(), 1);
        // A setter only touches its field.
        assert_eq!(r.with_httu(0).0, 0xffff_ff3f);
        assert_eq!(Idr0(0).with_st_level(7).0, 0x1800_0000);
        assert_eq!(Idr1(0).with_ssidsize(0xff).0, 0x7c0);
        assert_eq!(Idr5(0).with_stall_max(0x1_2345).0, 0x2345_0000);
        assert_eq!(Field { name: "X", lo: 4, width: 3, desc: "" }.bits(), "[6:4]");
        assert_eq!(Field { name: "X", lo: 4, width: 1, desc: "" }.bits(), "[4]");
        let idr4 = Idr4(0xdead_beef);
        assert_eq!(idr4.impdef(), 0xdead_beef);
    }

    #[test]
    fn parse_pasted_values() {
        // What IOMMU_GET_HW_INFO reports on a (hypothetical) MMU-700 part.
        let r = SmmuRegs::parse("IDR0=0x0d99f7bf, idr1=0x0e739d10 idr3=0x1504 IDR5=0x00000075 iidr=0x4870043b aidr=2")
            .unwrap();
        assert_eq!(r.idr0.0, 0x0d99_f7bf);
        assert_eq!(r.idr0.httu(), HTTU_ACCESS_DIRTY);
        assert_eq!(r.idr0.stall_model(), STALL_MODEL_TERMINATE);
        assert_eq!(r.idr0.ttendian(), TTENDIAN_MIXED);
        assert_eq!(r.idr5.gran16k(), 1);
        assert_eq!(r.iidr.product_id(), IIDR_PRODUCTID_ARM_MMU_700);
        assert_eq!(r.iidr.implementer(), IIDR_IMPLEMENTER_ARM);
        assert_eq!(r.idr2.0, 0);
        assert_eq!(SmmuRegs::parse(&r.to_text()).unwrap(), r);
        // SMMU_-prefixed names and a colon separator.
        assert_eq!(SmmuRegs::parse("SMMU_IDR0:1 SMMU_IDR1:2 SMMU_IDR5:5").unwrap().idr1.0, 2);
        // Missing required registers, unknown names, bad values.
        assert_eq!(SmmuRegs::parse("idr0=1 idr1=2"), Err(Errno::EINVAL));
        assert_eq!(SmmuRegs::parse("idr0=1 idr1=2 idr5=3 idr9=1"), Err(Errno::EINVAL));
        assert_eq!(SmmuRegs::parse("idr0=1 idr1=2 idr5=xyz"), Err(Errno::EINVAL));
        assert_eq!(SmmuRegs::parse("idr0=1 idr1=2 idr5=100000000"), Err(Errno::EINVAL));
        assert_eq!(SmmuRegs::parse("idr0"), Err(Errno::EINVAL));
        let raw = SmmuRegs::from_raw([1, 2, 3, 4, 5, 6], 7, 8);
        assert_eq!(raw.idr(), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn builder_sets_fields() {
        let r = SmmuRegs::builder()
            .stages(true, false)
            .coherent(false)
            .httu(true, false)
            .id_widths(false, false)
            .stream_bits(8, 0)
            .ril(false)
            .fwb(false)
            .oas_bits(44)
            .oas_bits(45)
            .granules(true, true, false)
            .iidr(IIDR_IMPLEMENTER_ARM, IIDR_PRODUCTID_ARM_MMU_600, 1, 2)
            .arch_minor(1)
            .build();
        assert_eq!((r.idr0.s1p(), r.idr0.s2p(), r.idr0.cohacc(), r.idr0.httu()), (1, 0, 0, HTTU_ACCESS));
        assert_eq!((r.idr0.asid16(), r.idr0.vmid16()), (0, 0));
        assert_eq!((r.idr1.sidsize(), r.idr1.ssidsize()), (8, 0));
        assert_eq!((r.idr3.ril(), r.idr3.fwb()), (0, 0));
        assert_eq!(r.idr5.oas(), 4);
        assert_eq!((r.idr5.gran4k(), r.idr5.gran16k(), r.idr5.gran64k()), (1, 1, 0));
        assert_eq!(r.iidr.0, 0x4831_243b);
        assert_eq!(r.version(), (3, 1));
        let r = SmmuRegsBuilder::from(r).raw(|r| r.idr4 = Idr4(9)).build();
        assert_eq!(r.idr4.0, 9);
    }

    #[test]
    fn decoding() {
        let lines = SmmuRegs::default().decode();
        assert_eq!(lines[0], "SMMUv3.2");
        assert!(lines.iter().any(|l| l.starts_with("SMMU_IDR0 0x0d4f76bb")));
        assert!(lines.iter().any(|l| l.contains("HTTU") && l.contains("access flag and dirty state")));
        assert!(lines.iter().any(|l| l.contains("SSIDSIZE") && l.contains("20-bit SubstreamIDs")));
        assert!(lines.iter().any(|l| l.contains("OAS") && l.contains("48-bit")));
        assert!(!lines.iter().any(|l| l.contains("reserved bits set")));
        // Bit 29 of IDR0 and bit 3 of IDR5 are not fields.
        let mut r = SmmuRegs::default();
        r.idr0.0 |= 1 << 29;
        r.idr5.0 |= 1 << 3;
        r.iidr = Iidr(0x4870_043b);
        let lines = r.decode();
        assert!(lines.iter().any(|l| l == "  reserved bits set: 0x20000000 (bit 29)"));
        assert!(lines.iter().any(|l| l == "  reserved bits set: 0x00000008 (bit 3)"));
        assert!(lines.iter().any(|l| l.contains("MMU-700")));
        assert_eq!(oas_bits(7), None);
        assert_eq!(oas_encoding(52), Some(6));
        assert_eq!(oas_bits(oas_encoding(36).unwrap()), Some(36));
    }
}
