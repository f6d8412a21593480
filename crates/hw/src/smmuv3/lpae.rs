//! VMSAv8-64 translation table descriptors (Arm ARM D8.3 "Translation
//! table descriptor formats", D8.4 memory attributes, D8.5 access
//! permissions) as Linux's `io-pgtable-arm` writes them for the SMMU's
//! stage 1 (`ARM_64_LPAE_S1`) and stage 2 (`ARM_64_LPAE_S2`) tables, on the
//! generic [`pt`](crate::pt) engine.
//!
//! Model: the three granules, on the generic engine with nodes of the
//! granule's size (512, 2048 or 8192 descriptors), levels numbered both
//! ways:
//! - the engine counts up from the leaves: engine level 0 holds pages
//!   (4KB, 16KB, 64KB), 1 the first blocks (2MB, 32MB, 512MB), 2 the 1GB
//!   blocks of the 4KB granule, and so on up to the top;
//! - the architecture and io-pgtable count down from the root: lookup
//!   level 3 is the page level. `arm_level = 3 - engine_level`.
//!
//! Descriptor (D8.3.1, D8.3.2): bit 0 valid; bit 1 is the type at levels
//! 0..2 (1 table, 0 block) and must be 1 in a page (level 3) descriptor;
//! the output address is bits 47:G for a `2^G` granule (47:21 for a 2MB
//! block, 47:25 for a 32MB one, 47:29 for a 512MB one); lower attributes
//! 11:2, upper attributes 63:50. 52-bit output addresses (bits 15:12 of a
//! 64KB descriptor, or 9:8 with DS) are not modelled: io-pgtable's output
//! size is capped at 48 bits here.
//!
//! Attributes written, exactly as `arm_lpae_prot_to_pte()` (Linux 7.3),
//! the same for every granule:
//! - stage 1: nG always; AP\[2\] (read-only) for read-only mappings, or DBM
//!   for writable ones when the domain tracks dirty state (HD quirk: the
//!   page starts *writable-dirty*, AP\[2\]=0 DBM=1); AP\[1\] (EL0 access)
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
    /// Stage 1 AttrIndx\[2:0\] (bits 4:2): index into MAIR.
    pub const ATTRINDX_SHIFT: u32 = 2;
    pub const ATTRINDX_MASK: u64 = 0b111 << 2;
    /// Stage 1 NS.
    pub const NS: u64 = 1 << 5;
    /// Stage 1 AP\[1\]: EL0 (unprivileged) access allowed.
    pub const AP_UNPRIV: u64 = 1 << 6;
    /// Stage 1 AP\[2\]: read-only.
    pub const AP_RDONLY: u64 = 1 << 7;
    /// Stage 2 MemAttr\[3:0\] (bits 5:2).
    pub const MEMATTR_SHIFT: u32 = 2;
    pub const MEMATTR_MASK: u64 = 0b1111 << 2;
    /// Stage 2 S2AP\[0\]: read.
    pub const S2AP_R: u64 = 1 << 6;
    /// Stage 2 S2AP\[1\]: write.
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
    /// writable-clean descriptor (AP\[2\]=1 / S2AP\[1\]=0, DBM=1) makes it
    /// writable-dirty instead of faulting.
    pub const DBM: u64 = 1 << 51;
    /// Contiguous hint.
    pub const CONT: u64 = 1 << 52;
    /// Stage 1 PXN.
    pub const PXN: u64 = 1 << 53;
    /// Stage 1 UXN / XN; stage 2 XN\[1\].
    pub const UXN: u64 = 1 << 54;
    /// `ARM_LPAE_PTE_XN`: bits 54:53 (stage 1 PXN|UXN, stage 2 XN\[1:0\]).
    pub const XN: u64 = 3 << 53;
    /// Table descriptor PXNTable.
    pub const PXN_TABLE: u64 = 1 << 59;
    /// Table descriptor UXNTable / XNTable.
    pub const XN_TABLE: u64 = 1 << 60;
    /// Table descriptor APTable\[0\]: no EL0 access below.
    pub const AP_TABLE_NO_EL0: u64 = 1 << 61;
    /// Table descriptor APTable\[1\]: read-only below.
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

/// log2 of the bytes an entry at `engine_level` spans with a `2^g`-byte
/// granule (12, 14 or 16): `g + (g - 3) * level`.
pub const fn level_shift(g: u32, engine_level: u32) -> u32 {
    g + (g - 3) * engine_level
}

/// Bytes an entry at `engine_level` spans with a `2^g` granule.
pub const fn level_size(g: u32, engine_level: u32) -> u64 {
    1u64 << level_shift(g, engine_level)
}

/// Entries of one table with a `2^g` granule.
pub const fn table_entries(g: u32) -> u64 {
    1 << (g - 3)
}

/// A model-private bit of [`Prot`] asking for the table's quirk on a map:
/// HD at stage 1 (DBM on writable leaves, `IO_PGTABLE_QUIRK_ARM_HD`),
/// S2FWB at stage 2 (forced write-back, `IO_PGTABLE_QUIRK_ARM_S2FWB`). The
/// domain sets it on every map of a domain allocated with the quirk, as
/// io-pgtable's configuration would; it never reaches an entry.
pub const QUIRK: Prot = Prot(1 << 31);

/// A stage 1 (`S2 == false`) or stage 2 (`S2 == true`) table of `L` engine
/// levels with a `2^G`-byte granule (12, 14 or 16): nodes of `2^(G-3)`
/// descriptors; pages and blocks as VMSAv8-64 allows them with 48-bit
/// output addresses (D8.3.1: 4KB granule: 4KB pages, 2MB and 1GB blocks;
/// 16KB: 16KB pages and 32MB blocks; 64KB: 64KB pages and 512MB blocks).
pub struct LpaeFormat<const S2: bool, const L: u32, const G: u32>;

impl<const S2: bool, const L: u32, const G: u32> LpaeFormat<S2, L, G> {
    /// `arm_lpae_prot_to_pte()` for this stage (the quirk when `prot` has
    /// [`QUIRK`]), without the type bits and address.
    pub const fn prot_to_pte(prot: Prot) -> u64 {
        let p = prot.0;
        let read = p & Prot::READ.0 != 0;
        let write = p & Prot::WRITE.0 != 0;
        let cache = p & Prot::CACHE.0 != 0;
        let mmio = p & Prot::MMIO.0 != 0;
        let quirk = p & QUIRK.0 != 0;
        let mut pte;
        if !S2 {
            pte = desc::NG;
            if !write && read {
                pte |= desc::AP_RDONLY;
            } else if quirk {
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
                if quirk {
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

    /// The output address bits of a descriptor: 47:G.
    const OA: u64 = desc::ADDR & !((1u64 << G) - 1);
}

impl<const S2: bool, const L: u32, const G: u32> Format for LpaeFormat<S2, L, G> {
    const LEVELS: u32 = L;
    const INDEX_BITS: u32 = G - 3;
    const LEAF_SHIFT: u32 = G;
    /// Pages and the blocks of the granule (no level 0 blocks, and no
    /// 4TB / 64GB blocks that need 52-bit output addresses).
    const LEAF_LEVELS: u32 = if G == 12 { 0b111 } else { 0b11 };

    /// `__arm_lpae_init_pte()`: the attributes, the type (page at level 3,
    /// block above) and the address.
    #[inline]
    fn make_leaf(paddr: u64, prot: Prot, level: u32) -> u64 {
        let ty = if level == 0 { desc::TYPE_TABLE } else { desc::TYPE_BLOCK };
        Self::prot_to_pte(prot) | ty | (paddr & Self::OA)
    }

    /// `arm_lpae_install_table()`: address and type.
    #[inline]
    fn make_table(table_pa: u64) -> u64 {
        (table_pa & Self::OA) | desc::TYPE_TABLE
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
        entry & Self::OA & !(level_size(G, level) - 1)
    }

    /// What the leaf grants a DMA request, which is unprivileged (EL0:
    /// requests without a PASID, or with one and PMR clear): stage 1: read,
    /// and write unless read-only (a writable-clean DBM leaf is writable:
    /// HD is on whenever the driver sets DBM), only when AP\[1\] gives EL0
    /// access, else nothing but `PRIV` (an EL1-only leaf); `CACHE` for
    /// AttrIndx 1, `MMIO` for AttrIndx 2; stage 2: S2AP, `CACHE` for
    /// write-back MemAttr, `MMIO` for Device.
    #[inline]
    fn leaf_prot(entry: u64) -> Prot {
        leaf_prot::<S2>(entry)
    }
}

/// [`Format::leaf_prot`] of the LPAE formats (independent of the granule).
#[inline]
pub fn leaf_prot<const S2: bool>(entry: u64) -> Prot {
    let mut p = 0;
    if !S2 {
        if entry & desc::AP_UNPRIV == 0 {
            p |= Prot::PRIV.0;
        } else {
            p |= Prot::READ.0;
            // AP[2] clear, or DBM set.
            if entry & (desc::AP_RDONLY | desc::DBM) != desc::AP_RDONLY {
                p |= Prot::WRITE.0;
            }
        }
        // AttrIndx -> CACHE / MMIO: a byte per index.
        const ATTR: u64 =
            (Prot::CACHE.0 as u64) << (8 * mair::IDX_CACHE) | (Prot::MMIO.0 as u64) << (8 * mair::IDX_DEV);
        p |= (ATTR >> (8 * ((entry & desc::ATTRINDX_MASK) >> desc::ATTRINDX_SHIFT))) as u32 & 0xff;
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

/// The child of a block split with a `2^g` granule: `iopte_prot()` of the
/// block, the type of the level below and the child's address
/// (`arm_lpae_split_blk_unmap()`).
pub const fn split_child(g: u32, block: u64, child_engine_level: u32, index: usize) -> u64 {
    let oa = desc::ADDR & !((1u64 << g) - 1);
    let base = block & oa & !(level_size(g, child_engine_level + 1) - 1);
    let ty = if child_engine_level == 0 { desc::TYPE_TABLE } else { desc::TYPE_BLOCK };
    (block & desc::ATTR_MASK) | ty | (base + (index as u64) * level_size(g, child_engine_level))
}

type T<const S2: bool, const L: u32, const G: u32, const N: usize> = PageTable<LpaeFormat<S2, L, G>, N>;

/// A host-owned LPAE table of one of the supported shapes: stage, granule
/// and depth (4KB: 3 or 4 levels; 16KB: 4; 64KB: 3, enough for 48-bit
/// inputs; a shallower configuration uses the low entries of the top).
pub enum LpaeTable {
    S1G4L3(T<false, 3, 12, 512>),
    S1G4L4(T<false, 4, 12, 512>),
    S1G16(T<false, 4, 14, 2048>),
    S1G64(T<false, 3, 16, 8192>),
    S2G4L3(T<true, 3, 12, 512>),
    S2G4L4(T<true, 4, 12, 512>),
    S2G16(T<true, 4, 14, 2048>),
    S2G64(T<true, 3, 16, 8192>),
}

impl core::fmt::Debug for LpaeTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "LpaeTable(stage {}, {}KB granule, {} levels, root {:#x})",
            self.stage(),
            1 << (self.granule_shift() - 10),
            self.levels(),
            self.root_pa()
        )
    }
}

macro_rules! on_table {
    ($t:expr, |$pt:ident| $body:expr) => {
        match $t {
            LpaeTable::S1G4L3($pt) => $body,
            LpaeTable::S1G4L4($pt) => $body,
            LpaeTable::S1G16($pt) => $body,
            LpaeTable::S1G64($pt) => $body,
            LpaeTable::S2G4L3($pt) => $body,
            LpaeTable::S2G4L4($pt) => $body,
            LpaeTable::S2G16($pt) => $body,
            LpaeTable::S2G64($pt) => $body,
        }
    };
}

impl LpaeTable {
    /// An empty table: stage 1 or 2, a `2^granule_shift` granule, `levels`
    /// engine levels (4KB: 3 or 4; 16KB: 4; 64KB: 3). `EINVAL` otherwise.
    pub fn new(stage2: bool, granule_shift: u32, levels: u32) -> Result<Self, Errno> {
        Ok(match (stage2, granule_shift, levels) {
            (false, 12, 3) => LpaeTable::S1G4L3(PageTable::new()?),
            (false, 12, 4) => LpaeTable::S1G4L4(PageTable::new()?),
            (false, 14, 4) => LpaeTable::S1G16(PageTable::new()?),
            (false, 16, 3) => LpaeTable::S1G64(PageTable::new()?),
            (true, 12, 3) => LpaeTable::S2G4L3(PageTable::new()?),
            (true, 12, 4) => LpaeTable::S2G4L4(PageTable::new()?),
            (true, 14, 4) => LpaeTable::S2G16(PageTable::new()?),
            (true, 16, 3) => LpaeTable::S2G64(PageTable::new()?),
            _ => return Err(Errno::EINVAL),
        })
    }

    /// 1 or 2.
    pub fn stage(&self) -> u32 {
        match self {
            LpaeTable::S1G4L3(_) | LpaeTable::S1G4L4(_) | LpaeTable::S1G16(_) | LpaeTable::S1G64(_) => 1,
            _ => 2,
        }
    }

    /// log2 of the granule.
    pub fn granule_shift(&self) -> u32 {
        match self {
            LpaeTable::S1G16(_) | LpaeTable::S2G16(_) => 14,
            LpaeTable::S1G64(_) | LpaeTable::S2G64(_) => 16,
            _ => 12,
        }
    }

    /// Engine levels.
    pub fn levels(&self) -> u32 {
        match self {
            LpaeTable::S1G4L4(_) | LpaeTable::S1G16(_) | LpaeTable::S2G4L4(_) | LpaeTable::S2G16(_) => 4,
            _ => 3,
        }
    }

    /// The leaf `make_leaf` writes for `prot` (attributes only, no type or
    /// address).
    pub fn prot_to_pte(&self, prot: Prot) -> u64 {
        if self.stage() == 1 {
            LpaeFormat::<false, 4, 12>::prot_to_pte(prot)
        } else {
            LpaeFormat::<true, 4, 12>::prot_to_pte(prot)
        }
    }

    /// What a leaf of this table grants (`Format::leaf_prot`).
    pub fn leaf_prot(&self, entry: u64) -> Prot {
        if self.stage() == 1 {
            leaf_prot::<false>(entry)
        } else {
            leaf_prot::<true>(entry)
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

    /// See [`PageTable::leaves`](crate::pt::PageTable::leaves).
    pub fn leaves(&self, iova: u64, len: u64, f: &mut dyn FnMut(crate::Leaf)) {
        on_table!(self, |pt| pt.leaves(iova, len, f))
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

    /// [`leaf_prot`]'s stage 1 grants against the rules as written (AP\[1\]
    /// EL0 access, AP\[2\] clear or DBM for writes, AttrIndx 1 cacheable
    /// and 2 Device, either XN bit), over every combination of the bits it
    /// reads.
    #[test]
    fn s1_leaf_prot_every_combination() {
        for bits in 0u64..1 << 8 {
            let flag = |i: u32, d: u64| if bits >> i & 1 != 0 { d } else { 0 };
            let entry = flag(0, desc::AP_UNPRIV)
                | flag(1, desc::AP_RDONLY)
                | flag(2, desc::DBM)
                | ((bits >> 3 & 7) << desc::ATTRINDX_SHIFT)
                | flag(6, desc::PXN)
                | flag(7, desc::UXN)
                | desc::TYPE_TABLE
                | desc::AF;
            let mut want = 0;
            if entry & desc::AP_UNPRIV == 0 {
                want |= Prot::PRIV.0;
            } else {
                want |= Prot::READ.0;
                if entry & desc::AP_RDONLY == 0 || entry & desc::DBM != 0 {
                    want |= Prot::WRITE.0;
                }
            }
            match bits >> 3 & 7 {
                mair::IDX_CACHE => want |= Prot::CACHE.0,
                mair::IDX_DEV => want |= Prot::MMIO.0,
                _ => {}
            }
            if bits >> 6 & 3 != 0 {
                want |= Prot::NOEXEC.0;
            }
            assert_eq!(leaf_prot::<false>(entry), Prot(want), "entry {entry:#x}");
        }
    }

    const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);
    type S1 = LpaeFormat<false, 4, 12>;
    type S2 = LpaeFormat<true, 4, 12>;
    type S1G16 = LpaeFormat<false, 4, 14>;
    type S2G16 = LpaeFormat<true, 4, 14>;
    type S1G64 = LpaeFormat<false, 3, 16>;
    type S2G64 = LpaeFormat<true, 3, 16>;
    /// The HD (stage 1) or S2FWB (stage 2) quirk on a map.
    const Q: Prot = QUIRK;

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
        let e = S1::make_leaf(0x5000, RW | Prot::CACHE | Q, 0);
        assert_eq!(e, 0x0008_0000_0000_5f47);
        assert_eq!(S1::make_leaf(0x5000, Prot::READ | Q, 0) & desc::DBM, 0);
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
        let e = S2::make_leaf(0x1_0000_0000, RW | Prot::CACHE | Q, 0);
        assert_eq!(e, 0x0000_0001_0000_07db);
        // Non-cacheable read-only 2MB block: MemAttr 0b0101, SH OS.
        assert_eq!(S2::make_leaf(0x20_0000, Prot::READ, 1), 0x20_0000 | 0x1 | 0x14 | 0x40 | 0x200 | 0x400);
        // Device (MMIO) write-only.
        assert_eq!(S2::make_leaf(0x3000, Prot::WRITE | Prot::MMIO, 0), 0x3000 | 0x3 | 0x4 | 0x80 | 0x200 | 0x400);
        assert_eq!(S2::leaf_prot(S2::make_leaf(0, RW | Prot::CACHE | Q, 0)), RW | Prot::CACHE);
        assert_eq!(S2::leaf_prot(S2::make_leaf(0, Prot::READ, 0)), Prot::READ);
        assert!(!S2::is_present(0x2) && S2::is_present(0x1));
        assert!(S2::is_leaf(0x20_0401, 1) && !S2::is_leaf(0x4000_3003, 1));
        assert_eq!(S2::leaf_paddr(0x4020_07fd, 1), 0x4020_0000);
    }

    /// The same attributes at 16KB and 64KB: only the type, the address
    /// bits (47:G) and the block sizes change (D8.3.1, D8.3.2).
    #[test]
    fn larger_granule_encodings_by_hand() {
        // A 16KB RW cacheable stage 1 page at 0x1234_4000: 0x1234_4000 |
        // type 0b11 | AttrIndx 1 (0x4) | AP[1] (0x40) | SH IS (0x300) | AF
        // (0x400) | nG (0x800).
        assert_eq!(S1G16::make_leaf(0x1234_4000, RW | Prot::CACHE, 0), 0x0000_0000_1234_4f47);
        // Bits below 14 of a 16KB page's address are not address bits.
        assert_eq!(S1G16::make_leaf(0x1234_5000, RW | Prot::CACHE, 0), 0x0000_0000_1234_4f47);
        // A 32MB stage 1 block: type 0b01, the address in bits 47:25.
        let e = S1G16::make_leaf(0x4200_0000, Prot::READ, 1);
        assert_eq!(e, 0x4200_0000 | 0x1 | 0x40 | 0x80 | 0x200 | 0x400 | 0x800);
        assert_eq!(S1G16::leaf_paddr(e | 0x1ff_c000, 1), 0x4200_0000);
        assert!(S1G16::is_leaf(e, 1));
        // A 16KB stage 2 page, S2FWB: MemAttr 0b0110 (0x18), S2AP RW
        // (0xc0), SH IS, AF: 0x...7db.
        assert_eq!(S2G16::make_leaf(0x8_0000_4000, RW | Prot::CACHE | Q, 0), 0x0000_0008_0000_47db);
        // A 64KB stage 1 page and a 512MB block, privileged read-write MMIO:
        // AttrIndx 2 (0x8), no AP[1], SH OS (0x200).
        assert_eq!(S1G64::make_leaf(0x3_0001_0000, RW | Prot::MMIO | Prot::PRIV, 0), 0x0000_0003_0001_0e0b);
        assert_eq!(S1G64::make_leaf(0x3_2000_0000, RW | Prot::MMIO | Prot::PRIV, 1), 0x0000_0003_2000_0e09);
        assert_eq!(S1G64::leaf_paddr(0x0000_0003_2000_0e09 | 0xf000, 0), 0x3_2000_0000);
        // A 64KB stage 2 page, read-only non-cacheable: MemAttr 0b0101
        // (0x14), S2AP R (0x40), SH OS (0x200), AF.
        assert_eq!(S2G64::make_leaf(0xabc_0000, Prot::READ, 0), 0x0abc_0000 | 0x3 | 0x14 | 0x40 | 0x200 | 0x400);
        // Table descriptors keep the node address (aligned to the granule).
        assert_eq!(S2G64::make_table(0x4001_0000), 0x4001_0003);
        assert_eq!(S1G16::make_table(0x4000_c000), 0x4000_c003);
        // Sizes: pages and first blocks; the 4KB granule also 1GB blocks.
        assert_eq!(PageTable::<S1G16, 2048>::pgsize_bitmap(), (1 << 14) | (1 << 25));
        assert_eq!(PageTable::<S1G64, 8192>::pgsize_bitmap(), (1 << 16) | (1 << 29));
        assert_eq!(PageTable::<S1, 512>::pgsize_bitmap(), (1 << 12) | (1 << 21) | (1 << 30));
        assert_eq!((table_entries(14), level_size(16, 1), level_shift(14, 2)), (2048, 1 << 29, 36));
    }

    #[test]
    fn split_children_keep_the_attributes() {
        let block = S1::make_leaf(0x4000_0000, RW | Prot::CACHE | Q, 1) | desc::CONT;
        let child = split_child(12, block, 0, 5);
        assert_eq!(child & desc::ADDR, 0x4000_5000);
        assert_eq!(child & 0b11, 0b11);
        assert_eq!(child & !desc::ADDR & !0b11, block & desc::ATTR_MASK & !0b11);
        assert_eq!(child & desc::CONT, 0);
        let g = S2::make_leaf(0x8000_0000, RW, 2);
        assert_eq!(split_child(12, g, 1, 3), (g & !desc::ADDR) | (0x8000_0000 + 3 * (1 << 21)));
        // A 512MB block of the 64KB granule into 64KB pages.
        let b = S2G64::make_leaf(0x6000_0000, RW, 1);
        assert_eq!(split_child(16, b, 0, 7), (b & !desc::ADDR) | 0b10 | (0x6000_0000 + 7 * 0x1_0000));
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
        let t = LpaeTable::new(true, 12, 4).unwrap();
        assert_eq!((t.stage(), t.levels(), t.granule_shift()), (2, 4, 12));
        t.map(0x20_0000, 0x4000_0000, 1 << 21, 1, RW | Prot::CACHE | Q).unwrap();
        let (e, level) = t.walk(0x20_1000).unwrap();
        assert_eq!(level, 1);
        assert_eq!(e, 0x4000_0000 | 0x1 | (memattr::FWB_WB << 2) | 0xc0 | 0x300 | 0x400);
        assert_eq!(t.prot_to_pte(RW), 0xc0 | 0x14 | 0x200 | 0x400);
        assert!(LpaeTable::new(false, 12, 2).is_err());
        assert!(LpaeTable::new(false, 13, 4).is_err());
        assert_eq!(LpaeTable::new(false, 12, 3).unwrap().stage(), 1);
        // 16KB and 64KB tables: root nodes of their granule's size.
        let t = LpaeTable::new(false, 14, 4).unwrap();
        assert_eq!((t.granule_shift(), t.root_pa() & 0x3fff), (14, 0));
        let t = LpaeTable::new(true, 16, 3).unwrap();
        assert_eq!((t.granule_shift(), t.root_pa() & 0xffff), (16, 0));
        t.map(0x2000_0000, 0x8000_0000, 1 << 29, 1, RW).unwrap();
        t.map(0x10_0000, 0x7_0000, 1 << 16, 2, RW).unwrap();
        assert_eq!(t.walk(0x2000_1234).unwrap(), (0x8000_0000 | 0x1 | 0x14 | 0xc0 | 0x200 | 0x400, 1));
        assert_eq!(t.translate(0x11_0008, Access::Read).unwrap().paddr, 0x8_0008);
    }
}
