//! The VT-d capability registers: CAP_REG and ECAP_REG.
//!
//! Model: both registers are plain 64-bit values wrapped in [`Cap`] and
//! [`Ecap`]; every field is a `const fn` getter plus a `with_*` setter that
//! masks the value to the field's width, so decoding and encoding are exact
//! inverses and a register round-trips bit for bit (reserved bits included:
//! a setter only touches its own field). Field positions follow the spec's
//! register descriptions (Intel VT-d Architecture Specification rev 4.x/5.0,
//! 11.4.2 "Capability Register" and 11.4.3 "Extended Capability Register")
//! and the driver's decoding macros (`drivers/iommu/intel/iommu.h`,
//! `cap_*()` / `ecap_*()`); where the spec renamed a field the spec's name is
//! used and the driver's name is given next to it.
//!
//! [`VtdRegs`] bundles both with the version register; it is built from a
//! realistic default ([`VtdRegs::default`]), from a [`VtdRegsBuilder`], from
//! raw values ([`VtdRegs::from_raw`]) or from the line the kernel prints at
//! boot ([`VtdRegs::parse_boot_line`]), and [`VtdRegs::decode`] renders the
//! fields as human-readable lines.

use uiommufd_abi::Errno;

pub use crate::regfield::Field;
use crate::regfield::{self, register};

register! {
    /// CAP_REG (spec 11.4.2, register offset 0x8).
    Cap: u64, "CAP_REG" {
        /// Encoded number of domain IDs: `2^(4 + 2 * ND)` (driver `cap_ndoms`).
        nd / with_nd = "ND" [0; 3] "number of domain IDs, 2^(4+2*ND)";
        afl / with_afl = "AFL" [3; 1] "advanced fault logging";
        rwbf / with_rwbf = "RWBF" [4; 1] "write-buffer flushing required";
        plmr / with_plmr = "PLMR" [5; 1] "protected low-memory region";
        phmr / with_phmr = "PHMR" [6; 1] "protected high-memory region";
        /// Caching mode: not-present and erroneous entries may be cached,
        /// so software invalidates after every change (a virtual IOMMU).
        cm / with_cm = "CM" [7; 1] "caching mode";
        /// Bit n: an (n+2)-level, `30 + 9n`-bit second-stage table is
        /// supported (bit 1: 39-bit, bit 2: 48-bit, bit 3: 57-bit).
        sagaw / with_sagaw = "SAGAW" [8; 5] "supported adjusted guest address widths";
        /// Maximum guest address width minus one (driver `cap_mgaw` adds 1).
        mgaw / with_mgaw = "MGAW" [16; 6] "maximum guest address width - 1";
        zlr / with_zlr = "ZLR" [22; 1] "zero-length read";
        /// Deprecated in the spec; the driver still decodes it (`cap_isoch`).
        isoch / with_isoch = "ISOCH" [23; 1] "isochrony (deprecated)";
        /// Offset of the first fault-recording register, in 16-byte units.
        fro / with_fro = "FRO" [24; 10] "fault-recording register offset / 16";
        /// Bit 0: 2 MiB, bit 1: 1 GiB second-stage leaves (driver
        /// `cap_super_page_val`).
        sllps / with_sllps = "SLLPS" [34; 4] "second-stage large page support";
        psi / with_psi = "PSI" [39; 1] "page-selective invalidation";
        /// Number of fault-recording registers minus one.
        nfr / with_nfr = "NFR" [40; 8] "number of fault-recording registers - 1";
        /// Largest address mask of a page-selective invalidation.
        mamv / with_mamv = "MAMV" [48; 6] "maximum address mask value";
        dwd / with_dwd = "DWD" [54; 1] "write draining";
        drd / with_drd = "DRD" [55; 1] "read draining";
        /// Driver `cap_fl1gp_support`.
        fs1gp / with_fs1gp = "FS1GP" [56; 1] "first-stage 1 GiB pages";
        pi / with_pi = "PI" [59; 1] "posted interrupts";
        /// Driver `cap_fl5lp_support`.
        fs5lp / with_fs5lp = "FS5LP" [60; 1] "first-stage 5-level paging";
        ecmds / with_ecmds = "ECMDS" [61; 1] "enhanced command support";
        esirtps / with_esirtps = "ESIRTPS" [62; 1] "enhanced set interrupt-remap-table pointer";
        esrtps / with_esrtps = "ESRTPS" [63; 1] "enhanced set root-table pointer";
    }
}

register! {
    /// ECAP_REG (spec 11.4.3, register offset 0x10).
    Ecap: u64, "ECAP_REG" {
        /// Legacy-mode page-walk coherency (driver `ecap_coherent`).
        c / with_c = "C" [0; 1] "page-walk coherency";
        qi / with_qi = "QI" [1; 1] "queued invalidation";
        /// Device-TLB (ATS) support (driver `ecap_dev_iotlb_support`).
        dt / with_dt = "DT" [2; 1] "device-TLB";
        ir / with_ir = "IR" [3; 1] "interrupt remapping";
        eim / with_eim = "EIM" [4; 1] "extended interrupt mode (x2APIC)";
        pt / with_pt = "PT" [6; 1] "pass-through";
        /// Snoop control: the SNP bit of second-stage leaves is honoured.
        sc / with_sc = "SC" [7; 1] "snoop control";
        /// Offset of the IOTLB registers, in 16-byte units.
        iro / with_iro = "IRO" [8; 10] "IOTLB register offset / 16";
        mhmv / with_mhmv = "MHMV" [20; 4] "maximum handle mask value";
        mts / with_mts = "MTS" [25; 1] "memory type support";
        nest / with_nest = "NEST" [26; 1] "nested translation";
        /// Deprecated; the driver still decodes it (`ecap_dis`).
        dis / with_dis = "DIS" [27; 1] "deferred invalidate (deprecated)";
        /// Deprecated legacy PASID bit (driver `ecap_broken_pasid`).
        legacy_pasid / with_legacy_pasid = "LPASID" [28; 1] "legacy PASID (deprecated)";
        prs / with_prs = "PRS" [29; 1] "page requests";
        ers / with_ers = "ERS" [30; 1] "execute requests";
        srs / with_srs = "SRS" [31; 1] "supervisor requests";
        nwfs / with_nwfs = "NWFS" [33; 1] "no-write flag";
        eafs / with_eafs = "EAFS" [34; 1] "extended accessed flag";
        /// PASID width minus one (driver: `max_pasids = 2 << PSS`).
        pss / with_pss = "PSS" [35; 5] "PASID size supported - 1";
        pasid / with_pasid = "PASID" [40; 1] "process address space IDs";
        dit / with_dit = "DIT" [41; 1] "device-TLB invalidation throttle";
        pds / with_pds = "PDS" [42; 1] "page-request drain";
        smts / with_smts = "SMTS" [43; 1] "scalable-mode translation";
        vcs / with_vcs = "VCS" [44; 1] "virtual command";
        /// Second-stage accessed/dirty (driver `ecap_slads`).
        ssads / with_ssads = "SSADS" [45; 1] "second-stage accessed/dirty";
        /// Second-stage translation in scalable mode (driver `ecap_slts`).
        ssts / with_ssts = "SSTS" [46; 1] "second-stage translation";
        /// First-stage translation (driver `ecap_flts`).
        fsts / with_fsts = "FSTS" [47; 1] "first-stage translation";
        /// Scalable-mode page-walk coherency (driver `ecap_smpwc`).
        smpwc / with_smpwc = "SMPWC" [48; 1] "scalable-mode page-walk coherency";
        rps / with_rps = "RPS" [49; 1] "RID-PASID";
        pms / with_pms = "PMS" [51; 1] "performance monitoring";
    }
}

impl Cap {
    /// Number of domain IDs (driver `cap_ndoms`).
    pub const fn ndoms(self) -> u64 {
        1u64 << (4 + 2 * (self.nd() & 0x7))
    }

    /// Maximum guest address width in bits (driver `cap_mgaw`).
    pub const fn mgaw_bits(self) -> u32 {
        self.mgaw() as u32 + 1
    }

    /// Number of fault-recording registers (driver `cap_num_fault_regs`).
    pub const fn num_fault_regs(self) -> u64 {
        self.nfr() + 1
    }

    /// Byte offset of the fault-recording registers (`cap_fault_reg_offset`).
    pub const fn fault_reg_offset(self) -> u64 {
        self.fro() * 16
    }
}

impl Ecap {
    /// Byte offset of the IOTLB registers (driver `ecap_iotlb_offset`).
    pub const fn iotlb_offset(self) -> u64 {
        self.iro() * 16
    }

    /// PASID width in bits (`PSS + 1`).
    pub const fn pasid_bits(self) -> u32 {
        self.pss() as u32 + 1
    }
}

/// Width in bits of a second-stage table with SAGAW bit `n` (spec 11.4.2:
/// bit 1 = 39-bit/3-level, bit 2 = 48-bit/4-level, bit 3 = 57-bit/5-level;
/// bits 0 and 4 are reserved in current revisions).
pub const fn sagaw_bit_width(n: u32) -> u32 {
    30 + 9 * n
}

/// The capability registers of one VT-d unit (plus VER_REG, 11.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VtdRegs {
    pub cap: Cap,
    pub ecap: Ecap,
    /// VER_REG major and minor.
    pub ver: (u8, u8),
}

impl VtdRegs {
    /// Registers from raw values, e.g. the ones the kernel prints at boot
    /// (`dmar0: ... ver 4:0 cap d2008c40660462 ecap f050da`). The version
    /// defaults to 1:0 (what the kernel prints for most units); set `ver`
    /// if it matters.
    pub const fn from_raw(cap: u64, ecap: u64) -> Self {
        VtdRegs { cap: Cap(cap), ecap: Ecap(ecap), ver: (1, 0) }
    }

    /// Parse the kernel's boot line (`alloc_iommu()` in `dmar.c`: `"%s:
    /// reg_base_addr %llx ver %d:%d cap %llx ecap %llx"`), or any text
    /// with `cap <hex>` and `ecap <hex>` words; `ver <maj>:<min>` is
    /// optional. `EINVAL` when either register is missing or not hex.
    pub fn parse_boot_line(line: &str) -> Result<Self, Errno> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1]);
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| Errno::EINVAL);
        let cap = hex(after("cap").ok_or(Errno::EINVAL)?)?;
        let ecap = hex(after("ecap").ok_or(Errno::EINVAL)?)?;
        let mut regs = VtdRegs::from_raw(cap, ecap);
        if let Some(v) = after("ver") {
            let (maj, min) = v.split_once(':').ok_or(Errno::EINVAL)?;
            regs.ver = (maj.parse().map_err(|_| Errno::EINVAL)?, min.parse().map_err(|_| Errno::EINVAL)?);
        }
        Ok(regs)
    }

    /// A builder starting from [`VtdRegs::default`].
    pub fn builder() -> VtdRegsBuilder {
        VtdRegsBuilder { regs: VtdRegs::default() }
    }

    /// The kernel's boot line for these registers.
    pub fn boot_line(&self, name: &str, reg_base: u64) -> String {
        format!(
            "{name}: reg_base_addr {reg_base:x} ver {}:{} cap {:x} ecap {:x}",
            self.ver.0, self.ver.1, self.cap.0, self.ecap.0
        )
    }

    /// Human-readable lines: one per field, `NAME [bits] = value  meaning`,
    /// CAP_REG first. Reserved bits that are set are listed at the end of
    /// each register.
    pub fn decode(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.push(format!("VER_REG  {}.{}", self.ver.0, self.ver.1));
        regfield::decode(&mut out, Cap::NAME, self.cap.0, 64, Cap::FIELDS, |f, v| cap_note(self.cap, f, v));
        regfield::decode(&mut out, Ecap::NAME, self.ecap.0, 64, Ecap::FIELDS, |f, v| ecap_note(self.ecap, f, v));
        out
    }
}

fn cap_note(cap: Cap, f: &Field, v: u64) -> Option<String> {
    match f.name {
        "ND" => Some(format!("{} domain IDs", cap.ndoms())),
        "SAGAW" => {
            let widths: Vec<String> = (0..5u32)
                .filter(|n| v & (1 << n) != 0)
                .map(|n| format!("{}-bit/{}-level", sagaw_bit_width(n), n + 2))
                .collect();
            Some(if widths.is_empty() { "none".into() } else { widths.join(", ") })
        }
        "MGAW" => Some(format!("{}-bit", cap.mgaw_bits())),
        "FRO" => Some(format!("offset {:#x}", cap.fault_reg_offset())),
        "NFR" => Some(format!("{} registers", cap.num_fault_regs())),
        "SLLPS" => {
            let mut sizes = vec!["4K"];
            if v & 1 != 0 {
                sizes.push("2M");
            }
            if v & 2 != 0 {
                sizes.push("1G");
            }
            if v & 4 != 0 {
                sizes.push("512G");
            }
            if v & 8 != 0 {
                sizes.push("1T");
            }
            Some(sizes.join("+"))
        }
        "MAMV" => Some(format!("up to {} pages per PSI", 1u64 << v.min(63))),
        _ => None,
    }
}

fn ecap_note(ecap: Ecap, f: &Field, _v: u64) -> Option<String> {
    match f.name {
        "IRO" => Some(format!("offset {:#x}", ecap.iotlb_offset())),
        "PSS" => Some(format!("{}-bit PASIDs", ecap.pasid_bits())),
        _ => None,
    }
}

impl Default for VtdRegs {
    /// A current server-class unit (modelled on what Sapphire Rapids-era
    /// parts report; not a copy of any one part): scalable mode with first-
    /// and second-stage translation, nesting, second-stage A/D, 20-bit
    /// PASIDs, 4- and 5-level tables, 2 MiB + 1 GiB leaves in both stages,
    /// snoop control, pass-through, coherent page walks, queued
    /// invalidation, interrupt remapping, ATS and page requests.
    fn default() -> Self {
        let cap = Cap(0)
            .with_nd(6)
            .with_plmr(1)
            .with_phmr(1)
            .with_sagaw(0b01100)
            .with_mgaw(57 - 1)
            .with_zlr(1)
            .with_fro(0x40)
            .with_sllps(0b0011)
            .with_psi(1)
            .with_nfr(7)
            .with_mamv(18)
            .with_dwd(1)
            .with_drd(1)
            .with_fs1gp(1)
            .with_pi(1)
            .with_fs5lp(1)
            .with_esirtps(1)
            .with_esrtps(1);
        let ecap = Ecap(0)
            .with_c(1)
            .with_qi(1)
            .with_dt(1)
            .with_ir(1)
            .with_eim(1)
            .with_pt(1)
            .with_sc(1)
            .with_iro(0x50)
            .with_mhmv(0xf)
            .with_mts(1)
            .with_nest(1)
            .with_prs(1)
            .with_srs(1)
            .with_eafs(1)
            .with_pss(19)
            .with_pasid(1)
            .with_dit(1)
            .with_pds(1)
            .with_smts(1)
            .with_ssads(1)
            .with_ssts(1)
            .with_fsts(1)
            .with_smpwc(1)
            .with_rps(1)
            .with_pms(1);
        VtdRegs { cap, ecap, ver: (6, 0) }
    }
}

/// Configures the fields a model user typically varies; everything else
/// keeps the [`VtdRegs::default`] value (or the value of the registers the
/// builder started from, see [`VtdRegsBuilder::from`]).
#[derive(Clone, Copy, Debug)]
pub struct VtdRegsBuilder {
    regs: VtdRegs,
}

impl VtdRegsBuilder {
    /// Start from arbitrary registers.
    pub fn from(regs: VtdRegs) -> Self {
        VtdRegsBuilder { regs }
    }

    /// Second-stage table depths (3, 4 and/or 5 levels: SAGAW bits 1..3)
    /// and the maximum guest address width in bits (MGAW + 1). Depths
    /// outside 3..=5 are ignored.
    pub fn address_widths(mut self, levels: &[u32], mgaw_bits: u32) -> Self {
        let sagaw = levels.iter().filter(|l| (3..=5).contains(*l)).fold(0u64, |acc, l| acc | 1 << (l - 2));
        self.regs.cap = self.regs.cap.with_sagaw(sagaw).with_mgaw(u64::from(mgaw_bits.clamp(1, 64) - 1));
        self
    }

    /// Second-stage leaf sizes besides 4 KiB (SLLPS bits 0 and 1).
    pub fn second_stage_large_pages(mut self, two_mib: bool, one_gib: bool) -> Self {
        self.regs.cap = self.regs.cap.with_sllps(u64::from(two_mib) | u64::from(one_gib) << 1);
        self
    }

    /// First-stage 1 GiB leaves and 5-level paging (FS1GP, FS5LP).
    pub fn first_stage(mut self, one_gib: bool, five_level: bool) -> Self {
        self.regs.cap = self.regs.cap.with_fs1gp(u64::from(one_gib)).with_fs5lp(u64::from(five_level));
        self
    }

    /// Snoop control (ECAP.SC).
    pub fn snoop_control(mut self, on: bool) -> Self {
        self.regs.ecap = self.regs.ecap.with_sc(u64::from(on));
        self
    }

    /// Pass-through (ECAP.PT).
    pub fn pass_through(mut self, on: bool) -> Self {
        self.regs.ecap = self.regs.ecap.with_pt(u64::from(on));
        self
    }

    /// Nested translation (ECAP.NEST).
    pub fn nesting(mut self, on: bool) -> Self {
        self.regs.ecap = self.regs.ecap.with_nest(u64::from(on));
        self
    }

    /// PASID support with `bits`-bit PASIDs (1..=20); 0 turns PASID off.
    pub fn pasid_bits(mut self, bits: u32) -> Self {
        self.regs.ecap = if bits == 0 {
            self.regs.ecap.with_pasid(0).with_pss(0)
        } else {
            self.regs.ecap.with_pasid(1).with_pss(u64::from(bits.clamp(1, 32) - 1))
        };
        self
    }

    /// Second-stage accessed/dirty support (ECAP.SSADS), what dirty
    /// tracking needs.
    pub fn ssads(mut self, on: bool) -> Self {
        self.regs.ecap = self.regs.ecap.with_ssads(u64::from(on));
        self
    }

    /// Scalable-mode translation (ECAP.SMTS) with first-stage (FSTS) and
    /// second-stage (SSTS) support.
    pub fn scalable_mode(mut self, on: bool, first_stage: bool, second_stage: bool) -> Self {
        self.regs.ecap = self
            .regs
            .ecap
            .with_smts(u64::from(on))
            .with_fsts(u64::from(first_stage))
            .with_ssts(u64::from(second_stage));
        self
    }

    /// Page-walk coherency in legacy (ECAP.C) and scalable (ECAP.SMPWC) mode.
    pub fn coherent(mut self, on: bool) -> Self {
        self.regs.ecap = self.regs.ecap.with_c(u64::from(on)).with_smpwc(u64::from(on));
        self
    }

    /// Caching mode (CAP.CM), as virtual IOMMUs report.
    pub fn caching_mode(mut self, on: bool) -> Self {
        self.regs.cap = self.regs.cap.with_cm(u64::from(on));
        self
    }

    /// Supervisor requests and extended accessed flag (ECAP.SRS, ECAP.EAFS).
    pub fn first_stage_flags(mut self, srs: bool, eafs: bool) -> Self {
        self.regs.ecap = self.regs.ecap.with_srs(u64::from(srs)).with_eafs(u64::from(eafs));
        self
    }

    /// Number of domain IDs as the ND encoding (0..=6: 16 .. 65536).
    pub fn domain_ids(mut self, nd: u64) -> Self {
        self.regs.cap = self.regs.cap.with_nd(nd);
        self
    }

    /// Arbitrary raw edits of either register.
    pub fn raw(mut self, f: impl FnOnce(Cap, Ecap) -> (Cap, Ecap)) -> Self {
        let (cap, ecap) = f(self.regs.cap, self.regs.ecap);
        self.regs.cap = cap;
        self.regs.ecap = ecap;
        self
    }

    pub fn build(self) -> VtdRegs {
        self.regs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client part's integrated-graphics unit as the kernel printed it.
    const BOOT_CLIENT: &str = "DMAR: dmar0: reg_base_addr fed90000 ver 4:0 cap d2008c40660462 ecap f050da";
    /// A QEMU `intel-iommu` with caching mode (cap/ecap only).
    const BOOT_QEMU: &str = "DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap d2008c22260286 ecap f42";

    #[test]
    fn fields_tile_without_overlap() {
        for fields in [Cap::FIELDS, Ecap::FIELDS] {
            let mut seen = 0u64;
            for f in fields {
                let m = f.set(0, u64::MAX);
                assert_eq!(seen & m, 0, "{} overlaps", f.name);
                assert_eq!(m.count_ones(), f.width, "{}", f.name);
                seen |= m;
            }
        }
    }

    #[test]
    fn setters_round_trip_every_field() {
        for raw in [0u64, u64::MAX, 0x00d2_008c_4066_0462, 0x5a5a_a5a5_0f0f_f0f0] {
            for f in Cap::FIELDS.iter().chain(Ecap::FIELDS) {
                let v = f.get(raw);
                assert_eq!(f.set(raw, v), raw, "{}", f.name);
                let flipped = f.set(raw, !v);
                assert_eq!(f.get(flipped), !v & f.set(0, u64::MAX) >> f.lo);
                // Nothing outside the field changed.
                assert_eq!(flipped & !f.set(0, u64::MAX), raw & !f.set(0, u64::MAX));
            }
        }
        // Typed setters hit the same bits as the table.
        assert_eq!(Cap(0).with_sllps(0b11).0, 0b11 << 34);
        assert_eq!(Cap(0).with_mgaw(56).0, 56 << 16);
        assert_eq!(Ecap(0).with_pss(19).0, 19 << 35);
        assert_eq!(Ecap(0).with_ssads(1).0, 1 << 45);
        assert_eq!(Ecap(0).with_sc(7).0, 1 << 7, "masked to one bit");
    }

    /// cap d2008c40660462 ecap f050da, decoded by hand from the bit
    /// positions of 11.4.2/11.4.3:
    /// cap bytes (MSB..LSB) 00 d2 00 8c 40 66 04 62.
    #[test]
    fn decode_client_boot_values() {
        let r = VtdRegs::parse_boot_line(BOOT_CLIENT).unwrap();
        assert_eq!(r.ver, (4, 0));
        let (c, e) = (r.cap, r.ecap);
        assert_eq!(c.0, 0x00d2_008c_4066_0462);
        // 0x62 = 0110_0010: ND=010, PLMR, PHMR; CM=0.
        assert_eq!((c.nd(), c.ndoms()), (2, 256));
        assert_eq!((c.afl(), c.rwbf(), c.plmr(), c.phmr(), c.cm()), (0, 0, 1, 1, 0));
        // 0x04 in bits 15:8: SAGAW=00100, 48-bit 4-level only.
        assert_eq!(c.sagaw(), 0b00100);
        // 0x66 in bits 23:16: MGAW=100110=38 (39-bit), ZLR=1.
        assert_eq!((c.mgaw(), c.mgaw_bits(), c.zlr()), (38, 39, 1));
        // 0x40 in 31:24 and 00 in 33:32: FRO=0x40 (offset 0x400).
        assert_eq!((c.fro(), c.fault_reg_offset()), (0x40, 0x400));
        // 0x8c in 39:32: SLLPS=0011 (2M, 1G), PSI=1.
        assert_eq!((c.sllps(), c.psi()), (0b0011, 1));
        assert_eq!((c.nfr(), c.num_fault_regs()), (0, 1));
        // 0xd2 in 55:48: MAMV=010010=18, DWD, DRD.
        assert_eq!((c.mamv(), c.dwd(), c.drd()), (18, 1, 1));
        assert_eq!((c.fs1gp(), c.pi(), c.fs5lp()), (0, 0, 0));
        // ecap 0xda = 1101_1010: QI, IR, EIM, PT, SC; no C, no DT.
        assert_eq!((e.c(), e.qi(), e.dt(), e.ir(), e.eim(), e.pt(), e.sc()), (0, 1, 0, 1, 1, 1, 1));
        // 0x50 in 15:8, 0 in 17:16: IRO=0x50 (offset 0x500); MHMV=0xf.
        assert_eq!((e.iro(), e.iotlb_offset(), e.mhmv()), (0x50, 0x500, 0xf));
        assert_eq!((e.smts(), e.pasid(), e.nest(), e.ssads()), (0, 0, 0, 0));
    }

    /// cap d2008c22260286 ecap f42 (QEMU's layout: FRO 0x220, IRO 0xf0).
    #[test]
    fn decode_qemu_boot_values() {
        let r = VtdRegs::parse_boot_line(BOOT_QEMU).unwrap();
        let (c, e) = (r.cap, r.ecap);
        // 0x86 = 1000_0110: ND=110 (65536 domains), CM=1.
        assert_eq!((c.nd(), c.ndoms(), c.cm()), (6, 65536, 1));
        assert_eq!((c.plmr(), c.phmr(), c.rwbf()), (0, 0, 0));
        // 0x02 in 15:8: SAGAW=00010, 39-bit 3-level only.
        assert_eq!(c.sagaw(), 0b00010);
        // 0x26 in 23:16: MGAW=38 (39-bit), ZLR=0.
        assert_eq!((c.mgaw_bits(), c.zlr()), (39, 0));
        // 0x22 in 31:24: FRO=0x22, registers at 0x220.
        assert_eq!(c.fault_reg_offset(), 0x220);
        assert_eq!((c.sllps(), c.psi(), c.mamv(), c.num_fault_regs()), (0b11, 1, 18, 1));
        // ecap 0xf42: QI, PT, IRO=0xf (IOTLB registers at 0xf0); no SC.
        assert_eq!((e.qi(), e.pt(), e.sc(), e.ir(), e.c()), (1, 1, 0, 0, 0));
        assert_eq!(e.iotlb_offset(), 0xf0);
    }

    #[test]
    fn parse_errors_and_round_trip() {
        assert_eq!(VtdRegs::parse_boot_line("cap 12"), Err(Errno::EINVAL));
        assert_eq!(VtdRegs::parse_boot_line("cap zz ecap 1"), Err(Errno::EINVAL));
        assert_eq!(VtdRegs::parse_boot_line("ver x cap 1 ecap 1"), Err(Errno::EINVAL));
        let r = VtdRegs::parse_boot_line("cap 0x10 ecap 0x20").unwrap();
        assert_eq!(r, VtdRegs::from_raw(0x10, 0x20));
        let d = VtdRegs::default();
        assert_eq!(VtdRegs::parse_boot_line(&d.boot_line("dmar3", 0xfed91000)).unwrap(), d);
    }

    #[test]
    fn default_and_builder() {
        let d = VtdRegs::default();
        assert_eq!(d.cap.sagaw(), 0b01100);
        assert_eq!(d.cap.mgaw_bits(), 57);
        assert_eq!(d.ecap.pasid_bits(), 20);
        assert_eq!((d.ecap.smts(), d.ecap.nest(), d.ecap.ssads(), d.ecap.sc()), (1, 1, 1, 1));
        // Every bit the default sets is a known field.
        let known_cap = Cap::FIELDS.iter().fold(0, |a, f| a | f.set(0, u64::MAX));
        let known_ecap = Ecap::FIELDS.iter().fold(0, |a, f| a | f.set(0, u64::MAX));
        assert_eq!(d.cap.0 & !known_cap, 0);
        assert_eq!(d.ecap.0 & !known_ecap, 0);

        let b = VtdRegs::builder()
            .address_widths(&[4], 48)
            .second_stage_large_pages(true, false)
            .snoop_control(false)
            .pass_through(false)
            .nesting(false)
            .pasid_bits(0)
            .ssads(false)
            .build();
        assert_eq!(b.cap.sagaw(), 0b00100);
        assert_eq!(b.cap.mgaw(), 47);
        assert_eq!(b.cap.sllps(), 0b01);
        assert_eq!((b.ecap.sc(), b.ecap.pt(), b.ecap.nest(), b.ecap.pasid(), b.ecap.ssads()), (0, 0, 0, 0, 0));
        // Untouched fields keep the default.
        assert_eq!(b.cap.nd(), d.cap.nd());
        assert_eq!(VtdRegsBuilder::from(b).pasid_bits(8).build().ecap.pss(), 7);
    }

    #[test]
    fn decoder_lines() {
        let r = VtdRegs::parse_boot_line(BOOT_CLIENT).unwrap();
        let lines = r.decode();
        assert_eq!(lines[0], "VER_REG  4.0");
        assert!(lines.iter().any(|l| l.starts_with("CAP_REG 0x00d2008c40660462")));
        let find = |name: &str| lines.iter().find(|l| l.trim_start().starts_with(name)).cloned().unwrap();
        assert!(find("SAGAW").contains("48-bit/4-level"), "{}", find("SAGAW"));
        assert!(find("MGAW").contains("39-bit"));
        assert!(find("SLLPS").contains("4K+2M+1G"));
        assert!(find("ND ").contains("256 domain IDs"));
        assert!(find("IRO").contains("offset 0x500"));
        assert!(!lines.iter().any(|l| l.contains("reserved bits set")));
        let odd = VtdRegs::from_raw(1 << 38, 1 << 5).decode();
        assert_eq!(odd.iter().filter(|l| l.contains("reserved bits set")).count(), 2);
    }
}
