//! VMSAv8-64 translation table descriptors (Arm ARM D8.3 "Translation
//! table descriptor formats", D8.4 memory attributes, D8.5 access
//! permissions) as Linux's `io-pgtable-arm` writes them for the SMMU's
//! stage 1 (`ARM_64_LPAE_S1`) and stage 2 (`ARM_64_LPAE_S2`) tables, on the
//! generic [`pt`](crate::pt) engine.
//!
//! Model: the 4KB granule only (the host's page size; see below), tables of
//! 512 descriptors, levels numbered both ways:
//! - the engine counts up from the leaves: engine level 0 holds 4KB pages,
//!   1 holds 2MB blocks, 2 holds 1GB blocks, 3 is the top of a 4-level
//!   table;
//! - the architecture and io-pgtable count down from the root: lookup
//!   level 3 is the page level, 2 the 2MB level, 1 the 1GB level, 0 the
//!   top. `arm_level = 3 - engine_level`.
//!
//! Descriptor (D8.3.1): bit 0 valid; bit 1 is the type at levels 0..2
//! (1 table, 0 block) and must be 1 in a page (level 3) descriptor; the
//! output address is bits 47:12 (47:21 for a 2MB block, 47:30 for a 1GB
//! block); lower attributes 11:2, upper attributes 63:50.
//!
//! Attributes written, exactly as `arm_lpae_prot_to_pte()` (mainline):
//! - stage 1: nG always; AP[2] (read-only) for read-only mappings, or DBM
//!   for writable ones when the domain tracks dirty state (HD quirk: the
//!   page starts *writable-dirty*, AP[2]=0 DBM=1); AP[1] (EL0 access)
//!   unless `IOMMU_PRIV`; AttrIndx 2 (Device) for `IOMMU_MMIO`, 1 (Normal
//!   write-back) for `IOMMU_CACHE`, else 0 (Normal non-cacheable), with the
//!   MAIR the driver programs (`0xf404ff44`);
//! - stage 2: S2AP read/write; MemAttr 0b0001 (Device-nGnRE) for MMIO,
//!   0b1111 (Normal write-back, stage 1 may override) for `IOMMU_CACHE`, or
//!   0b0110 (forced write-back) on an S2FWB domain, else 0b0101 (Normal
//!   non-cacheable);
//! - both: SH inner shareable for `IOMMU_CACHE`, else outer shareable; XN
//!   (bits 54:53) for `IOMMU_NOEXEC`; AF always set.
//!
//! Table descriptors carry only the next table's address and type 0b11.

use uiommufd_abi::Errno;

use crate::pt::{Format, Lookup, PageTable};
use crate::{Access, Fault, Prot, Translation};

/// Descriptor bits (Arm ARM D8.3).
pub mod desc {
    /// Valid.
    pub const VALID: u64 = 1 << 0;
    /// Type bit: table (levels 0..2) or page (level 3) when set, block when
    /// clear.
    pub const TYPE: u64 = 1 << 1;
    /// bits 1:0 of a table or page descriptor.
    pub const TYPE_TABLE: u64 = 0b11;
    /// bits 1:0 of a block descriptor.
    pub const TYPE_BLOCK: u64 = 0b01;
    /// Stage 1 AttrIndx[2:0] (bits 4:2): index into MAIR.
    pub const ATTRINDX_SHIFT: u32 = 2;
    pub const ATTRINDX_MASK: u64 = 0b111 << 2;
    /// Stage 1 NS.
    pub const NS: u64 = 1 << 5;
    /// Stage 1 AP[1]: EL0 (unprivileged) access allowed.
    pub const AP_UNPRIV: u64 = 1 << 6;
    /// Stage 1 AP[2]: read-only.
    pub const AP_RDONLY: u64 = 1 << 7;
    /// Stage 2 MemAttr[3:0] (bits 5:2).
    pub const MEMATTR_SHIFT: u32 = 2;
    pub const MEMATTR_MASK: u64 = 0b1111 << 2;
    /// Stage 2 S2AP[0]: read.
    pub const S2AP_R: u64 = 1 << 6;
    /// Stage 2 S2AP[1]: write.
    pub const S2AP_W: u64 = 1 << 7;
    /// Shareability (bits 9:8).
    pub const SH_MASK: u64 = 0b11 << 8;
    pub const SH_NS: u64 = 0 << 8;
    pub const SH_OS: u64 = 2 << 8;
    pub const SH_IS: u64 = 3 << 8;
    /// Access flag.
    pub const AF: u64 = 1 << 10;
    /// Stage 1 not-global: the entry is tagged with the ASID.
    pub const NG: u64 = 1 << 11;
    /// Output address, 4KB granule, 48-bit (bits 47:12).
    pub const ADDR: u64 = 0x0000_ffff_ffff_f000;
    /// Bits 49:48: output address bits 49:48 with 52-bit addresses, RES0
    /// otherwise; the model treats them as address bits (an address size
    /// fault beyond the output size). (Bit 50 is GP, bit 51 DBM in a leaf.)
    pub const ADDR_HI: u64 = 0x0003_0000_0000_0000;
    /// Dirty bit modifier (FEAT_HAFDBS): with HD, a write to a
    /// writable-clean descriptor (AP[2]=1 / S2AP[1]=0, DBM=1) makes it
    /// writable-dirty instead of faulting.
    pub const DBM: u64 = 1 << 51;
    /// Contiguous hint.
    pub const CONT: u64 = 1 << 52;
    /// Stage 1 PXN.
    pub const PXN: u64 = 1 << 53;
    /// Stage 1 UXN / XN; stage 2 XN[1].
    pub const UXN: u64 = 1 << 54;
    /// `ARM_LPAE_PTE_XN`: bits 54:53 (stage 1 PXN|UXN, stage 2 XN[1:0]).
    pub const XN: u64 = 3 << 53;
    /// Table descriptor PXNTable.
    pub const PXN_TABLE: u64 = 1 << 59;
    /// Table descriptor UXNTable / XNTable.
    pub const XN_TABLE: u64 = 1 << 60;
    /// Table descriptor APTable[0]: no EL0 access below.
    pub const AP_TABLE_NO_EL0: u64 = 1 << 61;
    /// Table descriptor APTable[1]: read-only below.
    pub const AP_TABLE_RDONLY: u64 = 1 << 62;
    /// Table descriptor NSTable.
    pub const NS_TABLE: u64 = 1 << 63;
    /// `ARM_LPAE_PTE_ATTR_MASK`: what `iopte_prot()` keeps when a block is
    /// split (lower attributes 11:2, XN and DBM).
    pub const ATTR_MASK: u64 = (0x3ff << 2) | XN | DBM;
}

/// Stage 2 MemAttr encodings the driver writes (`ARM_LPAE_PTE_MEMATTR_*`).
pub mod memattr {
    /// Device-nGnRE (with S2FWB: forced Device-nGnRE).
    pub const DEV: u64 = 0b0001;
    /// Normal non-cacheable (with S2FWB: Normal forced non-cacheable).
    pub const NC: u64 = 0b0101;
    /// S2FWB: forced Normal write-back, whatever stage 1 says.
    pub const FWB_WB: u64 = 0b0110;
    /// Normal outer/inner write-back; stage 1 may override.
    pub const OIWB: u64 = 0b1111;
}

/// The MAIR indices and value `arm_64_lpae_alloc_pgtable_s1()` programs.
pub mod mair {
    pub const IDX_NC: u64 = 0;
    pub const IDX_CACHE: u64 = 1;
    pub const IDX_DEV: u64 = 2;
    pub const IDX_INC_OCACHE: u64 = 3;
    pub const ATTR_NC: u64 = 0x44;
    pub const ATTR_WBRWA: u64 = 0xff;
    pub const ATTR_DEVICE: u64 = 0x04;
    pub const ATTR_INC_OWBRWA: u64 = 0xf4;
    /// `0xf404ff44`.
    pub const VALUE: u64 = ATTR_NC | ATTR_WBRWA << 8 | ATTR_DEVICE << 16 | ATTR_INC_OWBRWA << 24;

    /// Whether a MAIR attribute byte is Normal memory, inner and outer
    /// write-back cacheable (Arm ARM D8.4 MAIR encoding: outer in bits 7:4,
    /// inner in 3:0; 0b0000 outer is Device; a nibble is write-back when it
    /// is 0b11RW, or 0b01RW with RW != 0 (transient)).
    pub const fn attr_is_wb_cacheable(attr: u64) -> bool {
        let outer = (attr >> 4) & 0xf;
        let inner = attr & 0xf;
        outer != 0 && nibble_wb(outer) && nibble_wb(inner)
    }

    const fn nibble_wb(n: u64) -> bool {
        (n >> 2 == 0b11) || (n >> 2 == 0b01 && n & 0b11 != 0)
    }
}

/// Shift of an engine level's leaves (4KB granule).
pub const fn level_shift(engine_level: u32) -> u32 {
    12 + 9 * engine_level
}

/// Bytes an entry at `engine_level` spans.
pub const fn level_size(engine_level: u32) -> u64 {
    1u64 << level_shift(engine_level)
}

/// A stage 1 (`S2 == false`) or stage 2 (`S2 == true`) table of `L`
/// levels; `QUIRK` is the HD quirk at stage 1 (DBM on writable leaves) and
/// the S2FWB quirk at stage 2 (forced write-back MemAttr).
pub struct LpaeFormat<const S2: bool, const L: u32, const QUIRK: bool>;

impl<const S2: bool, const L: u32, const QUIRK: bool> LpaeFormat<S2, L, QUIRK> {
    /// `arm_lpae_prot_to_pte()` for this stage and quirk, without the type
    /// bits and address.
    pub const fn prot_to_pte(prot: Prot) -> u64 {
        let p = prot.0;
        let read = p & Prot::READ.0 != 0;
        let write = p & Prot::WRITE.0 != 0;
        let cache = p & Prot::CACHE.0 != 0;
        let mmio = p & Prot::MMIO.0 != 0;
        let mut pte;
        if !S2 {
            pte = desc::NG;
            if !write && read {
                pte |= desc::AP_RDONLY;
            } else if QUIRK {
                pte |= desc::DBM;
            }
            if p & Prot::PRIV.0 == 0 {
                pte |= desc::AP_UNPRIV;
            }
            if mmio {
                pte |= mair::IDX_DEV << desc::ATTRINDX_SHIFT;
            } else if cache {
                pte |= mair::IDX_CACHE << desc::ATTRINDX_SHIFT;
            }
        } else {
            pte = 0;
            if read {
                pte |= desc::S2AP_R;
            }
            if write {
                pte |= desc::S2AP_W;
            }
            let attr = if mmio {
                memattr::DEV
            } else if cache {
                if QUIRK {
                    memattr::FWB_WB
                } else {
                    memattr::OIWB
                }
            } else {
                memattr::NC
            };
            pte |= attr << desc::MEMATTR_SHIFT;
        }
        pte |= if cache { desc::SH_IS } else { desc::SH_OS };
        if p & Prot::NOEXEC.0 != 0 {
            pte |= desc::XN;
        }
        pte | desc::AF
    }
}

impl<const S2: bool, const L: u32, const QUIRK: bool> Format for LpaeFormat<S2, L, QUIRK> {
    const LEVELS: u32 = L;
    const LEAF_SHIFT: u32 = 12;
    /// Pages and 2MB / 1GB blocks (no level 0 blocks with a 4KB granule
    /// and 48-bit output addresses).
    const LEAF_LEVELS: u32 = 0b111;

    /// `__arm_lpae_init_pte()`: the attributes, the type (page at level 3,
    /// block above) and the address.
    #[inline]
    fn make_leaf(paddr: u64, prot: Prot, level: u32) -> u64 {
        let ty = if level == 0 { desc::TYPE_TABLE } else { desc::TYPE_BLOCK };
        Self::prot_to_pte(prot) | ty | (paddr & desc::ADDR)
    }

    /// `arm_lpae_install_table()`: address and type.
    #[inline]
    fn make_table(table_pa: u64) -> u64 {
        (table_pa & desc::ADDR) | desc::TYPE_TABLE
    }

    #[inline]
    fn is_present(entry: u64) -> bool {
        entry & desc::VALID != 0
    }

    /// A block descriptor (bits 1:0 = 0b01).
    #[inline]
    fn is_leaf(entry: u64, _level: u32) -> bool {
        entry & desc::TYPE == 0
    }

    #[inline]
    fn leaf_paddr(entry: u64, level: u32) -> u64 {
        entry & desc::ADDR & !(level_size(level) - 1)
    }

    /// What the leaf grants a DMA request, which is unprivileged (EL0:
    /// requests without a PASID, or with one and PMR clear): stage 1: read,
    /// and write unless read-only (a writable-clean DBM leaf is writable:
    /// HD is on whenever the driver sets DBM), only when AP[1] gives EL0
    /// access, else nothing but `PRIV` (an EL1-only leaf); `CACHE` for
    /// AttrIndx 1, `MMIO` for AttrIndx 2; stage 2: S2AP, `CACHE` for
    /// write-back MemAttr, `MMIO` for Device.
    #[inline]
    fn leaf_prot(entry: u64) -> Prot {
        let mut p = 0;
        if !S2 {
            if entry & desc::AP_UNPRIV == 0 {
                p |= Prot::PRIV.0;
            } else {
                p |= Prot::READ.0;
                if entry & desc::AP_RDONLY == 0 || entry & desc::DBM != 0 {
                    p |= Prot::WRITE.0;
                }
            }
            match (entry & desc::ATTRINDX_MASK) >> desc::ATTRINDX_SHIFT {
                mair::IDX_CACHE => p |= Prot::CACHE.0,
                mair::IDX_DEV => p |= Prot::MMIO.0,
                _ => {}
            }
        } else {
            if entry & desc::S2AP_R != 0 {
                p |= Prot::READ.0;
            }
            if entry & desc::S2AP_W != 0 {
                p |= Prot::WRITE.0;
            }
            match (entry & desc::MEMATTR_MASK) >> desc::MEMATTR_SHIFT {
                memattr::OIWB | memattr::FWB_WB => p |= Prot::CACHE.0,
                memattr::DEV => p |= Prot::MMIO.0,
                _ => {}
            }
        }
        if entry & desc::XN != 0 {
            p |= Prot::NOEXEC.0;
        }
        Prot(p)
    }
}

/// The child of a block split: `iopte_prot()` of the block, the type of
/// the level below and the child's address (`arm_lpae_split_blk_unmap()`).
pub const fn split_child(block: u64, child_engine_level: u32, index: usize) -> u64 {
    let base = block & desc::ADDR & !(level_size(child_engine_level + 1) - 1);
    let ty = if child_engine_level == 0 { desc::TYPE_TABLE } else { desc::TYPE_BLOCK };
    (block & desc::ATTR_MASK) | ty | (base + (index as u64) * level_size(child_engine_level))
}

type S1L3 = PageTable<LpaeFormat<false, 3, false>>;
type S1L4 = PageTable<LpaeFormat<false, 4, false>>;
type S1L3Hd = PageTable<LpaeFormat<false, 3, true>>;
type S1L4Hd = PageTable<LpaeFormat<false, 4, true>>;
type S2L3 = PageTable<LpaeFormat<true, 3, false>>;
type S2L4 = PageTable<LpaeFormat<true, 4, false>>;
type S2L3Fwb = PageTable<LpaeFormat<true, 3, true>>;
type S2L4Fwb = PageTable<LpaeFormat<true, 4, true>>;

/// A host-owned LPAE table of one of the supported shapes.
pub enum LpaeTable {
    S1L3(S1L3),
    S1L4(S1L4),
    S1L3Hd(S1L3Hd),
    S1L4Hd(S1L4Hd),
    S2L3(S2L3),
    S2L4(S2L4),
    S2L3Fwb(S2L3Fwb),
    S2L4Fwb(S2L4Fwb),
}

impl core::fmt::Debug for LpaeTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "LpaeTable(stage {}, {} levels, root {:#x})", self.stage(), self.levels(), self.root_pa())
    }
}

macro_rules! on_table {
    ($t:expr, |$pt:ident| $body:expr) => {
        match $t {
            LpaeTable::S1L3($pt) => $body,
            LpaeTable::S1L4($pt) => $body,
            LpaeTable::S1L3Hd($pt) => $body,
            LpaeTable::S1L4Hd($pt) => $body,
            LpaeTable::S2L3($pt) => $body,
            LpaeTable::S2L4($pt) => $body,
            LpaeTable::S2L3Fwb($pt) => $body,
            LpaeTable::S2L4Fwb($pt) => $body,
        }
    };
}

impl LpaeTable {
    /// An empty table: stage 1 or 2, 3 or 4 levels, with the stage's quirk
    /// (HD / S2FWB). `EINVAL` for other depths.
    pub fn new(stage2: bool, levels: u32, quirk: bool) -> Result<Self, Errno> {
        Ok(match (stage2, levels, quirk) {
            (false, 3, false) => LpaeTable::S1L3(S1L3::new()?),
            (false, 4, false) => LpaeTable::S1L4(S1L4::new()?),
            (false, 3, true) => LpaeTable::S1L3Hd(S1L3Hd::new()?),
            (false, 4, true) => LpaeTable::S1L4Hd(S1L4Hd::new()?),
            (true, 3, false) => LpaeTable::S2L3(S2L3::new()?),
            (true, 4, false) => LpaeTable::S2L4(S2L4::new()?),
            (true, 3, true) => LpaeTable::S2L3Fwb(S2L3Fwb::new()?),
            (true, 4, true) => LpaeTable::S2L4Fwb(S2L4Fwb::new()?),
            _ => return Err(Errno::EINVAL),
        })
    }

    /// 1 or 2.
    pub fn stage(&self) -> u32 {
        match self {
            LpaeTable::S1L3(_) | LpaeTable::S1L4(_) | LpaeTable::S1L3Hd(_) | LpaeTable::S1L4Hd(_) => 1,
            _ => 2,
        }
    }

    /// Engine levels (3 or 4).
    pub fn levels(&self) -> u32 {
        match self {
            LpaeTable::S1L3(_) | LpaeTable::S1L3Hd(_) | LpaeTable::S2L3(_) | LpaeTable::S2L3Fwb(_) => 3,
            _ => 4,
        }
    }

    /// The leaf `make_leaf` writes for `prot` (attributes only, no type or
    /// address).
    pub fn prot_to_pte(&self, prot: Prot) -> u64 {
        match self {
            LpaeTable::S1L3(_) | LpaeTable::S1L4(_) => LpaeFormat::<false, 3, false>::prot_to_pte(prot),
            LpaeTable::S1L3Hd(_) | LpaeTable::S1L4Hd(_) => LpaeFormat::<false, 3, true>::prot_to_pte(prot),
            LpaeTable::S2L3(_) | LpaeTable::S2L4(_) => LpaeFormat::<true, 3, false>::prot_to_pte(prot),
            LpaeTable::S2L3Fwb(_) | LpaeTable::S2L4Fwb(_) => LpaeFormat::<true, 3, true>::prot_to_pte(prot),
        }
    }

    /// What a leaf of this table grants (`Format::leaf_prot`).
    pub fn leaf_prot(&self, entry: u64) -> Prot {
        if self.stage() == 1 {
            LpaeFormat::<false, 4, false>::leaf_prot(entry)
        } else {
            LpaeFormat::<true, 4, false>::leaf_prot(entry)
        }
    }

    pub fn root_pa(&self) -> u64 {
        on_table!(self, |pt| pt.root_pa())
    }

    pub fn map(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)> {
        on_table!(self, |pt| pt.map(iova, paddr, pgsize, pgcount, prot))
    }

    pub fn unmap(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
        on_table!(self, |pt| pt.unmap(iova, pgsize, pgcount))
    }

    /// Clear consecutive leaves of `level` from `iova` up to the first
    /// hole (`PageTable::clear_leaf_run`).
    pub fn clear_leaf_run(&self, iova: u64, level: u32, count: u64) -> u64 {
        on_table!(self, |pt| pt.clear_leaf_run(iova, level, count))
    }

    #[inline(always)]
    pub fn translate_entry(&self, iova: u64, access: Access) -> Result<(Translation, u64), Fault> {
        on_table!(self, |pt| pt.translate_entry(iova, access))
    }

    #[inline(always)]
    pub fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        on_table!(self, |pt| pt.translate(iova, access))
    }

    pub fn lookup(&self, iova: u64) -> Lookup {
        on_table!(self, |pt| pt.lookup(iova))
    }

    /// The leaf mapping `iova` and its engine level.
    pub fn walk(&self, iova: u64) -> Option<(u64, u32)> {
        on_table!(self, |pt| pt.walk(iova))
    }

    pub fn set_leaf_bits(&self, iova: u64, bits: u64) -> Option<(u64, u32)> {
        on_table!(self, |pt| pt.set_leaf_bits(iova, bits))
    }

    pub fn clear_leaf_bits(&self, iova: u64, bits: u64) -> Option<(u64, u32)> {
        on_table!(self, |pt| pt.clear_leaf_bits(iova, bits))
    }

    pub fn split_leaf(&self, iova: u64, level: u32, leaf: impl FnMut(usize, u64) -> u64) -> Result<bool, Errno> {
        on_table!(self, |pt| pt.split_leaf(iova, level, leaf))
    }

    pub fn for_each_leaf(&self, iova: u64, len: u64, f: impl FnMut(u64, u32, u64)) {
        on_table!(self, |pt| pt.for_each_leaf(iova, len, f))
    }

    pub fn is_empty(&self) -> bool {
        on_table!(self, |pt| pt.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);
    type S1 = LpaeFormat<false, 4, false>;
    type S1Hd = LpaeFormat<false, 4, true>;
    type S2 = LpaeFormat<true, 4, false>;
    type S2Fwb = LpaeFormat<true, 4, true>;

    #[test]
    fn stage1_encodings_by_hand() {
        // A 4KB RW cacheable page at 0x1234_5000: type 0b11, AttrIndx 1
        // (0x4), AP[1] (0x40), SH IS (0x300), AF (0x400), nG (0x800).
        let e = S1::make_leaf(0x1234_5000, RW | Prot::CACHE, 0);
        assert_eq!(e, 0x1234_5000 | 0x3 | 0x4 | 0x40 | 0x300 | 0x400 | 0x800);
        assert_eq!(e, 0x0000_0000_1234_5f47);
        // Read-only, non-cacheable, no-exec 2MB block: type 0b01, AP[2]
        // (0x80), AP[1], SH OS (0x200), AF, nG, XN (bits 54:53).
        let e = S1::make_leaf(0x4020_0000, Prot::READ | Prot::NOEXEC, 1);
        assert_eq!(e, 0x0060_0000_4020_0ec1);
        // Privileged MMIO 1GB block: AttrIndx 2 (0x8), no AP[1].
        let e = S1::make_leaf(0x8000_0000, RW | Prot::MMIO | Prot::PRIV, 2);
        assert_eq!(e, 0x8000_0000 | 0x1 | 0x8 | 0x200 | 0x400 | 0x800);
        // With the HD quirk a writable page gets DBM and starts
        // writable-dirty (AP[2] clear); a read-only one does not.
        let e = S1Hd::make_leaf(0x5000, RW | Prot::CACHE, 0);
        assert_eq!(e, 0x0008_0000_0000_5f47);
        assert_eq!(S1Hd::make_leaf(0x5000, Prot::READ, 0) & desc::DBM, 0);
        assert_eq!(S1::make_table(0x4000_3000), 0x4000_3003);
        assert_eq!(S1::leaf_prot(S1::make_leaf(0, RW | Prot::CACHE, 0)), RW | Prot::CACHE);
        // An EL1-only leaf grants an (EL0) DMA request nothing.
        assert_eq!(S1::leaf_prot(S1::make_leaf(0, Prot::READ | Prot::MMIO | Prot::PRIV, 0)), Prot(0x10 | 0x20));
        // Writable-clean (AP[2] and DBM) still grants write.
        assert!(S1::leaf_prot(e | desc::AP_RDONLY).contains(Prot::WRITE));
        assert_eq!(mair::VALUE, 0xf404_ff44);
    }

    #[test]
    fn stage2_encodings_by_hand() {
        // 4KB RW cacheable: type 0b11, MemAttr 0b1111 (0x3c), S2AP RW
        // (0xc0), SH IS, AF.
        let e = S2::make_leaf(0x1_0000_0000, RW | Prot::CACHE, 0);
        assert_eq!(e, 0x1_0000_0000 | 0x3 | 0x3c | 0xc0 | 0x300 | 0x400);
        assert_eq!(e, 0x0000_0001_0000_07ff);
        // With S2FWB the cacheable MemAttr is 0b0110 (forced write-back).
        let e = S2Fwb::make_leaf(0x1_0000_0000, RW | Prot::CACHE, 0);
        assert_eq!(e, 0x0000_0001_0000_07db);
        // Non-cacheable read-only 2MB block: MemAttr 0b0101, SH OS.
        assert_eq!(S2::make_leaf(0x20_0000, Prot::READ, 1), 0x20_0000 | 0x1 | 0x14 | 0x40 | 0x200 | 0x400);
        // Device (MMIO) write-only.
        assert_eq!(S2::make_leaf(0x3000, Prot::WRITE | Prot::MMIO, 0), 0x3000 | 0x3 | 0x4 | 0x80 | 0x200 | 0x400);
        assert_eq!(S2::leaf_prot(S2Fwb::make_leaf(0, RW | Prot::CACHE, 0)), RW | Prot::CACHE);
        assert_eq!(S2::leaf_prot(S2::make_leaf(0, Prot::READ, 0)), Prot::READ);
        assert!(!S2::is_present(0x2) && S2::is_present(0x1));
        assert!(S2::is_leaf(0x20_0401, 1) && !S2::is_leaf(0x4000_3003, 1));
        assert_eq!(S2::leaf_paddr(0x4020_07fd, 1), 0x4020_0000);
    }

    #[test]
    fn split_children_keep_the_attributes() {
        let block = S1Hd::make_leaf(0x4000_0000, RW | Prot::CACHE, 1) | desc::CONT;
        let child = split_child(block, 0, 5);
        assert_eq!(child & desc::ADDR, 0x4000_5000);
        assert_eq!(child & 0b11, 0b11);
        assert_eq!(child & !desc::ADDR & !0b11, block & desc::ATTR_MASK & !0b11);
        assert_eq!(child & desc::CONT, 0);
        let g = S2::make_leaf(0x8000_0000, RW, 2);
        assert_eq!(split_child(g, 1, 3), (g & !desc::ADDR) | (0x8000_0000 + 3 * (1 << 21)));
    }

    #[test]
    fn mair_attributes() {
        assert!(mair::attr_is_wb_cacheable(0xff));
        assert!(mair::attr_is_wb_cacheable(0xee));
        assert!(!mair::attr_is_wb_cacheable(0x44));
        assert!(!mair::attr_is_wb_cacheable(0x04));
        assert!(!mair::attr_is_wb_cacheable(0x00));
        assert!(!mair::attr_is_wb_cacheable(0xf4));
        assert!(!mair::attr_is_wb_cacheable(0xbb));
    }

    #[test]
    fn tables() {
        let t = LpaeTable::new(true, 4, true).unwrap();
        assert_eq!((t.stage(), t.levels()), (2, 4));
        t.map(0x20_0000, 0x4000_0000, 1 << 21, 1, RW | Prot::CACHE).unwrap();
        let (e, level) = t.walk(0x20_1000).unwrap();
        assert_eq!(level, 1);
        assert_eq!(e, 0x4000_0000 | 0x1 | (memattr::FWB_WB << 2) | 0xc0 | 0x300 | 0x400);
        assert_eq!(t.prot_to_pte(RW), 0xc0 | 0x14 | 0x200 | 0x400);
        assert!(LpaeTable::new(false, 2, false).is_err());
        assert_eq!(LpaeTable::new(false, 3, true).unwrap().stage(), 1);
    }
}
