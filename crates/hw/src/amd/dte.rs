//! The Device Table Entry (spec 48882, "Device Table Entry
//! Format"): the 256-bit entry the IOMMU reads for a requester ID, the
//! fields Linux 7.3 programs (`set_dte_v1()`, `set_dte_gcr3_table()`,
//! `set_dte_nested()`), and the checks it makes of a guest's DTE
//! (`validate_gdte_nested()`, `nested.c`).
//!
//! Fields used (bit numbers within the 256-bit entry, as
//! `amd_iommu_types.h` names them in the 64-bit words `data[0..4]`):
//!
//! | bits | field | `data[i]` mask |
//! | --- | --- | --- |
//! | 0 | V, valid | `DTE_FLAG_V` |
//! | 1 | TV, translation information valid | `DTE_FLAG_TV` |
//! | 8:7 | HAD, host access/dirty update (11b: A and D) | `DTE_FLAG_HAD` |
//! | 11:9 | Mode: host table levels (0: no host translation) | `DTE_MODE_MASK` |
//! | 51:12 | Host Page Table Root Pointer | `DTE_HOST_TRP` |
//! | 52 | PPR | `DTE_FLAG_PPR` |
//! | 54 | GIoV: requests without PASID use the guest table of PASID 0 | `DTE_FLAG_GIOV` |
//! | 55 | GV: guest translation valid | `DTE_FLAG_GV` |
//! | 57:56 | GLX: GCR3 table levels minus one | `DTE_GLX` |
//! | 60:58 | GCR3 Table Root Pointer \[14:12\] | `DTE_GCR3_14_12` |
//! | 61, 62 | IR, IW | `DTE_FLAG_IR`, `DTE_FLAG_IW` |
//! | 79:64 | DomainID | `data[1]` 15:0 |
//! | 95:80 | GCR3 Table Root Pointer \[30:15\] | `data[1]` 31:16 |
//! | 96 | I: IOTLB (ATS) enable | `data[1]` 32 |
//! | 127:107 | GCR3 Table Root Pointer \[51:31\] | `data[1]` 63:43 |
//! | 183:182 | GPT level: guest table levels (0: 4, 1: 5) | `data[2]` 55:54 |

use uiommufd_abi::{Errno, IommuHwptAmdGuest};

/// `data[0]` bits.
pub const V: u64 = 1 << 0;
pub const TV: u64 = 1 << 1;
pub const HAD: u64 = 3 << 7;
pub const MODE_SHIFT: u32 = 9;
pub const MODE: u64 = 7 << MODE_SHIFT;
/// `DTE_HOST_TRP`: bits 51:12.
pub const HOST_TRP: u64 = 0x000f_ffff_ffff_f000;
pub const PPR: u64 = 1 << 52;
pub const GIOV: u64 = 1 << 54;
pub const GV: u64 = 1 << 55;
pub const GLX_SHIFT: u32 = 56;
pub const GLX: u64 = 3 << GLX_SHIFT;
pub const GCR3_14_12_SHIFT: u32 = 58;
pub const GCR3_14_12: u64 = 7 << GCR3_14_12_SHIFT;
pub const IR: u64 = 1 << 61;
pub const IW: u64 = 1 << 62;
/// `data[1]` bits.
pub const DOMID: u64 = 0xffff;
pub const GCR3_30_15_SHIFT: u32 = 16;
pub const GCR3_30_15: u64 = 0xffff << GCR3_30_15_SHIFT;
pub const IOTLB: u64 = 1 << 32;
pub const GCR3_51_31_SHIFT: u32 = 43;
pub const GCR3_51_31: u64 = 0x1f_ffff << GCR3_51_31_SHIFT;
/// `data[2]` bits: `DTE_GPT_LEVEL_MASK`.
pub const GPT_LEVEL_SHIFT: u32 = 54;
pub const GPT_LEVEL: u64 = 3 << GPT_LEVEL_SHIFT;

/// `GUEST_PGTABLE_4_LEVEL` / `GUEST_PGTABLE_5_LEVEL`.
pub const GUEST_PGTABLE_4_LEVEL: u64 = 0;
pub const GUEST_PGTABLE_5_LEVEL: u64 = 1;

/// A 256-bit device table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dte(pub [u64; 4]);

impl Dte {
    /// `amd_iommu_make_clear_dte()` (no IVRS flags): V only, which with
    /// TV=0 is the blocked domain's entry.
    pub const fn clear() -> Dte {
        Dte([V, 0, 0, 0])
    }

    /// `amd_iommu_set_dte_v1()` on a cleared entry: a v1 table of `mode`
    /// levels at `root`, domain `domid`, HAD when dirty tracking is on.
    pub const fn v1(domid: u16, root: u64, mode: u32, dirty_tracking: bool) -> Dte {
        let mut d0 = V | TV | (((mode & 7) as u64) << MODE_SHIFT) | (root & HOST_TRP) | IR | IW;
        if dirty_tracking {
            d0 |= HAD;
        }
        Dte([d0, domid as u64, 0, 0])
    }

    /// `set_dte_gcr3_table()` on a cleared entry: the GCR3 table at `gcr3`
    /// with `glx`, GIoV for a v2 paging domain at PASID 0, guest tables of
    /// `gpt_level` levels, domain `domid`.
    pub const fn gcr3(domid: u16, gcr3: u64, glx: u32, giov: bool, gpt_level: u32) -> Dte {
        let mut d0 = V | TV | GV | (((glx & 3) as u64) << GLX_SHIFT) | IR | IW;
        if giov {
            d0 |= GIOV;
        }
        d0 |= ((gcr3 >> 12) & 7) << GCR3_14_12_SHIFT;
        let d1 = domid as u64
            | (((gcr3 >> 15) & 0xffff) << GCR3_30_15_SHIFT)
            | (((gcr3 >> 31) & 0x1f_ffff) << GCR3_51_31_SHIFT);
        let gpt = if gpt_level == 5 { GUEST_PGTABLE_5_LEVEL } else { GUEST_PGTABLE_4_LEVEL };
        Dte([d0, d1, gpt << GPT_LEVEL_SHIFT, 0])
    }

    /// `set_dte_nested()`: the host's v1 entry (with the nested domain's
    /// host domain ID) plus GV and the guest's PPR, GLX, GIoV, GCR3 root
    /// pointer and guest paging mode, taken from its DTE.
    pub const fn nested(v1: Dte, guest: &[u64; 4]) -> Dte {
        let mut d = v1.0;
        d[0] |= GV;
        d[0] |= guest[0] & PPR;
        d[0] |= guest[0] & (GLX | GIOV);
        d[0] |= guest[0] & GCR3_14_12;
        d[1] |= guest[1] & (GCR3_30_15 | GCR3_51_31);
        d[2] |= guest[2] & GPT_LEVEL;
        Dte(d)
    }

    pub const fn valid(&self) -> bool {
        self.0[0] & V != 0
    }
    pub const fn tv(&self) -> bool {
        self.0[0] & TV != 0
    }
    pub const fn mode(&self) -> u32 {
        ((self.0[0] & MODE) >> MODE_SHIFT) as u32
    }
    pub const fn host_root(&self) -> u64 {
        self.0[0] & HOST_TRP
    }
    pub const fn had(&self) -> u64 {
        (self.0[0] & HAD) >> 7
    }
    pub const fn gv(&self) -> bool {
        self.0[0] & GV != 0
    }
    pub const fn giov(&self) -> bool {
        self.0[0] & GIOV != 0
    }
    pub const fn glx(&self) -> u32 {
        ((self.0[0] & GLX) >> GLX_SHIFT) as u32
    }
    pub const fn domid(&self) -> u16 {
        (self.0[1] & DOMID) as u16
    }
    /// The GCR3 Table Root Pointer, reassembled from its three pieces.
    pub const fn gcr3_root(&self) -> u64 {
        gcr3_root(&self.0)
    }
    /// Guest table levels: 4 or 5.
    pub const fn gpt_levels(&self) -> u32 {
        if (self.0[2] & GPT_LEVEL) >> GPT_LEVEL_SHIFT == GUEST_PGTABLE_5_LEVEL {
            5
        } else {
            4
        }
    }

    /// One line per programmed field.
    pub fn describe(&self) -> Vec<String> {
        let d = &self.0;
        let mut out = vec![format!("DTE {:016x} {:016x} {:016x} {:016x}", d[3], d[2], d[1], d[0])];
        out.push(format!(
            "V={} TV={} IR={} IW={} DomainID={:#x} Mode={} HAD={:#b} HostTRP={:#x}",
            self.valid() as u8,
            self.tv() as u8,
            (d[0] & IR != 0) as u8,
            (d[0] & IW != 0) as u8,
            self.domid(),
            self.mode(),
            self.had(),
            self.host_root()
        ));
        if self.gv() {
            out.push(format!(
                "GV=1 GIoV={} GLX={} GCR3TRP={:#x} GPT levels {} PPR={}",
                self.giov() as u8,
                self.glx(),
                self.gcr3_root(),
                self.gpt_levels(),
                (d[0] & PPR != 0) as u8
            ));
        }
        out
    }
}

/// The GCR3 Table Root Pointer of a (guest) DTE.
pub const fn gcr3_root(d: &[u64; 4]) -> u64 {
    (((d[0] & GCR3_14_12) >> GCR3_14_12_SHIFT) << 12)
        | (((d[1] & GCR3_30_15) >> GCR3_30_15_SHIFT) << 15)
        | (((d[1] & GCR3_51_31) >> GCR3_51_31_SHIFT) << 31)
}

/// `validate_gdte_nested()`: what the driver accepts as a guest DTE for a
/// nested domain, with its errnos, in its order:
/// - Mode and the host table root pointer must be 0 (`EINVAL`): the host
///   table is the nest parent's;
/// - with V and GV set, the GCR3 table root pointer must not be 0
///   (`EINVAL`);
/// - the guest paging mode must be 4 or 5 levels (0 or 1, `EINVAL`);
/// - GLX 3 is reserved (`EINVAL`);
/// - 5-level guest tables need a host with them (`amd_iommu_gpt_level`,
///   `EOPNOTSUPP`).
pub fn validate_guest(gdte: &IommuHwptAmdGuest, host_gpt_level: u32) -> Result<(), Errno> {
    let d = &gdte.dte;
    if d[0] & MODE != 0 || d[0] & HOST_TRP != 0 {
        return Err(Errno::EINVAL);
    }
    if d[0] & V != 0 && d[0] & GV != 0 && gcr3_root(d) == 0 {
        return Err(Errno::EINVAL);
    }
    let gpt = (d[2] & GPT_LEVEL) >> GPT_LEVEL_SHIFT;
    if gpt != GUEST_PGTABLE_4_LEVEL && gpt != GUEST_PGTABLE_5_LEVEL {
        return Err(Errno::EINVAL);
    }
    if (d[0] & GLX) >> GLX_SHIFT == 3 {
        return Err(Errno::EINVAL);
    }
    if gpt == GUEST_PGTABLE_5_LEVEL && host_gpt_level < 5 {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(())
}

/// The guest domain ID of a guest DTE (`FIELD_GET(DTE_DOMID_MASK, dte[1])`).
pub const fn guest_domid(gdte: &IommuHwptAmdGuest) -> u16 {
    (gdte.dte[1] & DOMID) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(d: [u64; 4]) -> IommuHwptAmdGuest {
        IommuHwptAmdGuest { dte: d }
    }

    #[test]
    fn v1_entry_by_hand() {
        // Domain 5, 3-level table at 0x4000_3000, no dirty tracking:
        // V | TV | Mode 3 (bits 11:9 = 0x600) | root | IR | IW.
        assert_eq!(Dte::v1(5, 0x4000_3000, 3, false).0, [0x6000_0000_4000_3603, 5, 0, 0]);
        // With HAD (bits 8:7).
        assert_eq!(Dte::v1(5, 0x4000_3000, 6, true).0[0], 0x6000_0000_4000_3d83);
        assert_eq!(Dte::clear().0, [1, 0, 0, 0]);
    }

    #[test]
    fn gcr3_entry_by_hand() {
        // GCR3 table at 0x1_2345_6000: [14:12] = 6 -> bits 60:58,
        // [30:15] = 0x2468 -> data[1] 31:16, [51:31] = 2 -> data[1] 63:43.
        let d = Dte::gcr3(0x21, 0x1_2345_6000, 1, true, 5);
        assert_eq!(d.0[0], V | TV | GV | GIOV | (1 << 56) | (6 << 58) | IR | IW);
        assert_eq!(d.0[1], 0x21 | (0x468a << 16) | (2 << 43));
        assert_eq!(d.0[2], 1 << 54);
        assert_eq!(d.gcr3_root(), 0x1_2345_6000);
        assert_eq!((d.glx(), d.gpt_levels(), d.domid()), (1, 5, 0x21));
    }

    #[test]
    fn nested_entry_takes_the_guest_fields_only() {
        let host = Dte::v1(9, 0x4000_5000, 4, false);
        // Everything set in the guest DTE: only PPR, GIoV, GLX, the GCR3
        // root pointer and the guest paging mode come through, plus GV.
        let all = [!(MODE | HOST_TRP), u64::MAX, u64::MAX, u64::MAX];
        let n = Dte::nested(host, &all);
        assert_eq!(n.0[0], host.0[0] | GV | PPR | GIOV | GLX | GCR3_14_12);
        assert_eq!(n.0[1], 9 | GCR3_30_15 | GCR3_51_31);
        assert_eq!(n.0[2], GPT_LEVEL);
        assert_eq!(n.0[3], 0);
        assert_eq!((n.mode(), n.host_root(), n.domid()), (4, 0x4000_5000, 9));
    }

    #[test]
    fn guest_dte_rules_in_the_drivers_order() {
        let ok = [V | GV | (2 << 58), 0x7, 0, 0];
        assert_eq!(validate_guest(&g(ok), 4), Ok(()));
        assert_eq!(guest_domid(&g(ok)), 7);
        // Mode or a host root pointer: EINVAL.
        assert_eq!(validate_guest(&g([ok[0] | 4 << 9, 7, 0, 0]), 5), Err(Errno::EINVAL));
        assert_eq!(validate_guest(&g([ok[0] | 0x1000, 7, 0, 0]), 5), Err(Errno::EINVAL));
        // V and GV without a GCR3 root pointer: EINVAL; without V it is fine.
        assert_eq!(validate_guest(&g([V | GV, 7, 0, 0]), 5), Err(Errno::EINVAL));
        assert_eq!(validate_guest(&g([GV, 7, 0, 0]), 5), Ok(()));
        assert_eq!(validate_guest(&g([V | GV, 1 << 16, 0, 0]), 5), Ok(()));
        assert_eq!(validate_guest(&g([V | GV, 1 << 43, 0, 0]), 5), Ok(()));
        // Guest paging mode 2 or 3: EINVAL, before the GLX check.
        assert_eq!(validate_guest(&g([ok[0] | GLX, 7, 2 << 54, 0]), 5), Err(Errno::EINVAL));
        // GLX 3: EINVAL.
        assert_eq!(validate_guest(&g([ok[0] | GLX, 7, 0, 0]), 5), Err(Errno::EINVAL));
        // 5-level guest tables on a 4-level host: EOPNOTSUPP; on 5: fine.
        assert_eq!(validate_guest(&g([ok[0], 7, 1 << 54, 0]), 4), Err(Errno::EOPNOTSUPP));
        assert_eq!(validate_guest(&g([ok[0], 7, 1 << 54, 0]), 5), Ok(()));
        // Bits the driver never looks at are accepted.
        assert_eq!(validate_guest(&g([ok[0] | IR | IW | TV, 7 | IOTLB, 0xff, u64::MAX]), 5), Ok(()));
    }
}
