//! The AMD IOMMU host (v1) page table, spec 48882 §2.2.3 "I/O Page Tables
//! for Host Translations", as Linux 7.3 writes it (generic_pt's amdv1
//! format, `drivers/iommu/generic_pt/fmt/amdv1.h`).
//!
//! Entry layout (spec Figure "I/O Page Translation Entry (PTE)" and "I/O
//! Page Directory Entry (PDE)"):
//!
//! | bits | field |
//! | --- | --- |
//! | 0 | PR, present |
//! | 5 | A, accessed (set by hardware when DTE.HAD allows) |
//! | 6 | D, dirty (PTE; set by hardware on writes when DTE.HAD is 11b) |
//! | 11:9 | NextLevel: in a PDE the level of the table it points to (1..6); in a PTE 0, or 7 for a page-size-encoded PTE |
//! | 51:12 | address: of the next table, or of the page |
//! | 59 | U (not used by Linux) |
//! | 60 | FC, force coherent: the access is snooped whatever the request's No Snoop |
//! | 61, 62 | IR, IW: read and write permission |
//!
//! Levels are numbered as generic_pt does: level 0 holds 4 KiB pages (the
//! spec's level 1), level `n` entries span 2^(12+9n) bytes, and the top,
//! level 5 (the spec's 6), indexes bits 63:57 and never holds a page
//! (spec Table "Page Table Level Parameters"). Levels 0..=4 may hold pages:
//! - of their natural size, NextLevel 0 (4 KiB, 2 MiB, 1 GiB, 512 GiB,
//!   256 TiB);
//! - of any larger power of two up to 2^8 entries (and below 2^52), as
//!   NextLevel 7 with the size in the low address bits (spec Table
//!   "Example Page Size Encodings": a 2^n-byte page has address bits
//!   n-2..12 set and bit n-1 clear), the same entry repeated in each of
//!   the 2^c slots the page covers (`amdv1pt_install_leaf_entry`).
//!
//! 512 GiB pages are never used ("not supported due to a hardware bug",
//! `AMD_IOMMU_PGSIZES`). PDEs always carry IR and IW
//! (`amdv1pt_install_table`: permissions come from the PTE; the spec ANDs
//! them down the walk). Every PTE carries FC: Linux allocates v1 domains
//! with `PT_FEAT_AMDV1_FORCE_COHERENCE`.

use crate::pt::Format;
use crate::Prot;

/// v1 entry bits.
pub mod pte {
    pub const PR: u64 = 1 << 0;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    pub const NEXT_LEVEL_SHIFT: u32 = 9;
    pub const NEXT_LEVEL: u64 = 7 << NEXT_LEVEL_SHIFT;
    /// NextLevel 7: a page whose size is encoded in the address.
    pub const NL_SIZE: u64 = 7;
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
    pub const U: u64 = 1 << 59;
    pub const FC: u64 = 1 << 60;
    pub const IR: u64 = 1 << 61;
    pub const IW: u64 = 1 << 62;
}

/// The v1 format: six levels, leaves at levels 0..=4, contiguous leaves
/// of up to 2^8 entries.
pub struct V1Format;

const fn level_shift(level: u32) -> u32 {
    12 + 9 * level
}

const fn next_level(entry: u64) -> u64 {
    (entry & pte::NEXT_LEVEL) >> pte::NEXT_LEVEL_SHIFT
}

impl V1Format {
    /// The permission and coherency bits of a PTE for `prot`
    /// (`amdv1pt_iommu_set_prot`): FC when the domain forces coherency
    /// (`Prot::CACHE` here), IR, IW.
    pub const fn prot_bits(prot: Prot) -> u64 {
        let mut e = 0;
        if prot.contains(Prot::CACHE) {
            e |= pte::FC;
        }
        if prot.contains(Prot::READ) {
            e |= pte::IR;
        }
        if prot.contains(Prot::WRITE) {
            e |= pte::IW;
        }
        e
    }

    /// The size-encoded address field of a page of 2^`oasz_lg2` bytes at
    /// `paddr`: address bits `oasz_lg2 - 2 ..= 12` set (none for 8 KiB).
    pub const fn size_encoded(paddr: u64, oasz_lg2: u32) -> u64 {
        let ones = if oasz_lg2 > 13 { ((1u64 << (oasz_lg2 - 13)) - 1) << 12 } else { 0 };
        (paddr & pte::ADDR) | ones
    }

    /// The page size (log2) a NextLevel-7 entry at `level` encodes: the
    /// first clear address bit from the level's item size, plus one
    /// (`amdv1pt_entry_num_contig_lg2`).
    pub const fn encoded_size_lg2(entry: u64, level: u32) -> u32 {
        let isz = level_shift(level);
        let code = entry >> (isz - 1);
        isz + code.trailing_ones()
    }

    /// The Mode (levels) a DTE needs for a table whose top is `top_level`.
    pub const fn mode(top_level: u32) -> u32 {
        top_level + 1
    }

    /// The smallest top level whose table covers `last_iova`, at least the
    /// starting level 2 Linux gives every v1 domain (`cfg.starting_level`).
    pub const fn top_level_for(last_iova: u64) -> u32 {
        let bits = 64 - last_iova.leading_zeros();
        let mut top = 2;
        while top < 5 && level_shift(top + 1) < bits {
            top += 1;
        }
        top
    }
}

impl Format for V1Format {
    const LEVELS: u32 = 6;
    const LEAF_SHIFT: u32 = 12;
    /// Levels 0..=4 ("the top most level cannot have translation entries").
    const LEAF_LEVELS: u32 = 0b1_1111;
    const DIRTY: u64 = pte::D;
    const ACCESSED: u64 = pte::A;
    /// `GENMASK(min(51, isz + 8), isz)`: up to 2^8 entries per page.
    const MAX_CONTIG_LG2: u32 = 8;

    #[inline]
    fn make_leaf(paddr: u64, prot: Prot, _level: u32) -> u64 {
        pte::PR | (paddr & pte::ADDR) | Self::prot_bits(prot)
    }

    #[inline]
    fn make_leaf_contig(paddr: u64, prot: Prot, level: u32, contig_lg2: u32) -> u64 {
        let oasz = level_shift(level) + contig_lg2;
        pte::PR | (pte::NL_SIZE << pte::NEXT_LEVEL_SHIFT) | Self::size_encoded(paddr, oasz) | Self::prot_bits(prot)
    }

    #[inline]
    fn leaf_contig_lg2(entry: u64, level: u32) -> u32 {
        if next_level(entry) != pte::NL_SIZE {
            return 0;
        }
        // A malformed code (more ones than a node holds) is read as the
        // largest span, so a walk never leaves the node.
        (Self::encoded_size_lg2(entry, level) - level_shift(level)).min(Self::MAX_CONTIG_LG2)
    }

    /// Used only for tests: the engine writes tables with their level.
    fn make_table(table_pa: u64) -> u64 {
        Self::make_table_at(table_pa, 1)
    }

    /// PR, NextLevel = the level of the table below in the spec's
    /// numbering (this entry's level in generic_pt's), IR, IW.
    #[inline]
    fn make_table_at(table_pa: u64, level: u32) -> u64 {
        pte::PR | ((level as u64) << pte::NEXT_LEVEL_SHIFT) | (table_pa & pte::ADDR) | pte::IR | pte::IW
    }

    #[inline]
    fn is_present(entry: u64) -> bool {
        entry & pte::PR != 0
    }

    /// NextLevel 0 or 7 (`amdv1pt_load_entry_raw`).
    #[inline]
    fn is_leaf(entry: u64, _level: u32) -> bool {
        let nl = next_level(entry);
        nl == 0 || nl == pte::NL_SIZE
    }

    #[inline]
    fn leaf_paddr(entry: u64, level: u32) -> u64 {
        let shift = level_shift(level) + Self::leaf_contig_lg2(entry, level);
        entry & pte::ADDR & !((1u64 << shift) - 1)
    }

    #[inline]
    fn leaf_prot(entry: u64) -> Prot {
        let mut p = Prot::default();
        if entry & pte::IR != 0 {
            p = p | Prot::READ;
        }
        if entry & pte::IW != 0 {
            p = p | Prot::WRITE;
        }
        if entry & pte::FC != 0 {
            p = p | Prot::CACHE;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use uiommufd_abi::Errno;

    use super::*;
    use crate::pt::reference::RefMap;
    use crate::pt::PageTable;
    use crate::{Access, Fault};

    type Pt = PageTable<V1Format>;
    const K4: u64 = 1 << 12;
    const M2: u64 = 1 << 21;
    const G1: u64 = 1 << 30;
    const RWC: Prot = Prot(Prot::READ.0 | Prot::WRITE.0 | Prot::CACHE.0);

    #[test]
    fn entries_by_hand() {
        // A 4 KiB PTE at 0x1234_5000, read/write, force coherent:
        // PR (bit 0) | address | FC (60) | IR (61) | IW (62).
        assert_eq!(V1Format::make_leaf(0x1234_5000, RWC, 0), 0x7000_0000_1234_5001);
        // Read-only, no FC.
        assert_eq!(V1Format::make_leaf(0x1234_5000, Prot::READ, 0), 0x2000_0000_1234_5001);
        // A 2 MiB PTE at level 1 is the same (NextLevel 0).
        assert_eq!(V1Format::make_leaf(0x4020_0000, RWC, 1), 0x7000_0000_4020_0001);
        // A PDE at level 3 pointing at a level-2 table at 0x4000_3000:
        // PR | NextLevel 3 (bits 11:9 = 011b) | address | IR | IW.
        assert_eq!(V1Format::make_table_at(0x4000_3000, 3), 0x6000_0000_4000_3601);
        // Page-size encodings (spec Table "Example Page Size Encodings"):
        // NextLevel 7 (0xe00), address bits n-2..12 set.
        // 8 KiB at 0x10_2000: no ones.
        assert_eq!(V1Format::make_leaf_contig(0x10_2000, RWC, 0, 1), 0x7000_0000_0010_2e01);
        // 16 KiB at 0x10_4000: bit 12.
        assert_eq!(V1Format::make_leaf_contig(0x10_4000, RWC, 0, 2), 0x7000_0000_0010_5e01);
        // 64 KiB at 0x11_0000: bits 14:12.
        assert_eq!(V1Format::make_leaf_contig(0x11_0000, Prot::READ, 0, 4), 0x2000_0000_0011_7e01);
        // 1 MiB (256 entries at level 0): bits 18:12.
        assert_eq!(V1Format::make_leaf_contig(0x100_0000, RWC, 0, 8), 0x7000_0000_0107_fe01);
        // 4 MiB at level 1: bits 20:12.
        assert_eq!(V1Format::make_leaf_contig(0x40_0000, RWC, 1, 1), 0x7000_0000_005f_fe01);
        // 1 TiB at level 3: bits 38:12.
        assert_eq!(V1Format::make_leaf_contig(1 << 40, RWC, 3, 1), 0x7000_017f_ffff_fe01);
        // Decoding: sizes and addresses come back.
        for (e, level, lg2, pa) in [
            (0x7000_0000_0010_2e01u64, 0, 13, 0x10_2000u64),
            (0x7000_0000_0010_5e01, 0, 14, 0x10_4000),
            (0x2000_0000_0011_7e01, 0, 16, 0x11_0000),
            (0x7000_0000_005f_fe01, 1, 22, 0x40_0000),
            (0x7000_017f_ffff_fe01, 3, 40, 1 << 40),
        ] {
            assert_eq!(V1Format::encoded_size_lg2(e, level), lg2, "{e:#x}");
            assert_eq!(V1Format::leaf_paddr(e, level), pa, "{e:#x}");
            assert_eq!(V1Format::leaf_contig_lg2(e, level), lg2 - (12 + 9 * level));
        }
        assert!(V1Format::is_leaf(0x7000_0000_0010_2e01, 0));
        assert!(!V1Format::is_leaf(0x6000_0000_4000_3601, 3));
        assert_eq!(V1Format::leaf_prot(0x7000_0000_1234_5001), RWC);
    }

    #[test]
    fn geometry() {
        // Every power of two from 4 KiB to 2^51 (levels 0..=4 with up to 256
        // entries, and 2^56 at level 4 but nothing above 2^63 here).
        let bitmap = Pt::pgsize_bitmap();
        for lg2 in 12..=56 {
            assert_ne!(bitmap & (1 << lg2), 0, "2^{lg2}");
        }
        assert_eq!(Pt::max_iova(), u64::MAX);
        assert_eq!(Pt::leaf_for_pgsize(1 << 16), Some((0, 4)));
        assert_eq!(Pt::leaf_for_pgsize(1 << 21), Some((1, 0)));
        assert_eq!(Pt::leaf_for_pgsize(1 << 29), Some((1, 8)));
        assert_eq!(Pt::leaf_for_pgsize(1 << 57), None);
        assert_eq!(V1Format::top_level_for(0), 2);
        assert_eq!(V1Format::top_level_for((1 << 39) - 1), 2);
        assert_eq!(V1Format::top_level_for(1 << 39), 3);
        assert_eq!(V1Format::top_level_for((1 << 57) - 1), 4);
        assert_eq!(V1Format::top_level_for(u64::MAX), 5);
    }

    #[test]
    fn contiguous_pages_are_replicated_entries() {
        let pt = Pt::new().unwrap();
        // 64 KiB at 0x11_0000 -> 0x50_0000: 16 identical level-0 entries.
        pt.map(0x11_0000, 0x50_0000, 1 << 16, 1, RWC).unwrap();
        let want = V1Format::make_leaf_contig(0x50_0000, RWC, 0, 4);
        for i in 0..16 {
            assert_eq!(pt.walk(0x11_0000 + i * K4), Some((want, 0)));
        }
        assert_eq!(pt.walk(0x10_f000), None);
        assert_eq!(pt.walk(0x12_0000), None);
        let t = pt.translate(0x11_5678, Access::Write).unwrap();
        assert_eq!((t.paddr, t.len), (0x50_5678, 0x1_0000 - 0x5678));
        // Reported once, whole.
        let mut leaves = Vec::new();
        pt.for_each_leaf(0x11_8000, 1, |i, l, e| leaves.push((i, l, e)));
        assert_eq!(leaves, vec![(0x11_0000, 0, want)]);
        // Unmapping part of it does nothing; all of it clears all 16.
        assert_eq!(pt.unmap(0x11_4000, K4, 4), 0);
        assert_eq!(pt.unmap(0x10_0000, K4, 0x20), 0x2_0000);
        assert_eq!(pt.walk(0x11_0000), None);
        assert_eq!(pt.unmap(0x11_0000, 1 << 16, 1), 0x1_0000);
        assert!(pt.is_empty());
        // A write marks only the entry it used; the harvest reports the
        // whole page and clears every replica.
        pt.map(0x11_0000, 0x50_0000, 1 << 16, 1, RWC).unwrap();
        pt.translate_and_mark(0x11_3000, Access::Write).unwrap();
        assert_eq!(pt.walk(0x11_3000).unwrap().0 & (pte::A | pte::D), pte::A | pte::D);
        assert_eq!(pt.walk(0x11_4000).unwrap().0 & pte::D, 0);
        let mut seen = Vec::new();
        pt.read_and_clear_dirty(0x11_f000, K4, false, |i, s, d| seen.push((i, s, d)));
        assert_eq!(seen, vec![(0x11_0000, 0x1_0000, true)]);
        seen.clear();
        pt.read_and_clear_dirty(0, 1 << 30, true, |i, s, d| seen.push((i, s, d)));
        assert_eq!(seen, vec![(0x11_0000, 0x1_0000, true)]);
        assert_eq!(pt.walk(0x11_3000).unwrap().0 & pte::D, 0);
        // A contiguous page over an entry in use: EEXIST, nothing left.
        pt.map(0x21_3000, 0x9000, K4, 1, RWC).unwrap();
        assert_eq!(pt.map(0x21_0000, 0x60_0000, 1 << 14, 2, RWC), Err((Errno::EEXIST, 0)));
        assert_eq!(pt.walk(0x21_0000), None);
        assert_eq!(pt.walk(0x21_2000), None);
        // 4 MiB at level 1.
        pt.map(0x80_0000, 0x40_0000, 1 << 22, 1, RWC).unwrap();
        assert_eq!(pt.walk(0xa0_0000).unwrap().1, 1);
        assert_eq!(pt.translate(0xbf_ffff, Access::Read).unwrap().paddr, 0x7f_ffff);
    }

    #[test]
    fn tables_record_their_level_and_the_top_grows_under_entry_0() {
        let pt = Pt::new().unwrap();
        pt.map(0, 0x9000, K4, 1, RWC).unwrap();
        // The 3-level table a new domain uses starts at the level-2 node on
        // IOVA 0's path; its entry 0 points at a level-1 table.
        let root3 = pt.node_pa(0, 2).unwrap();
        let root4 = pt.node_pa(0, 3).unwrap();
        assert_ne!(root3, root4);
        assert_ne!(root4, pt.root_pa());
        assert_eq!(pt.node_pa(0, 5).unwrap(), pt.root_pa());
        assert_eq!(pt.node_pa(0, 6), Err(Errno::EINVAL));
        // Mapping above 2^39 links the level-2 node under the 4-level root.
        pt.map(1 << 39, 0xa000, K4, 1, RWC).unwrap();
        assert_eq!(pt.translate(1 << 39, Access::Read).unwrap().paddr, 0xa000);
        assert_eq!(pt.translate(0, Access::Read).unwrap().paddr, 0x9000);
        assert_eq!(pt.translate(1 << 63, Access::Read), Err(Fault::NotPresent));
    }

    // ---- property test against a reference map ----

    #[derive(Clone, Debug)]
    enum Op {
        Map { iova: u64, paddr: u64, lg2: u32, count: u64, write: bool },
        Unmap { iova: u64, lg2: u32, count: u64 },
    }

    /// Page sizes 4 KiB to 4 MiB (natural and contiguous at levels 0 and
    /// 1), in a 16 MiB window so that operations collide.
    fn op() -> impl Strategy<Value = Op> {
        let lg2 = prop_oneof![4 => Just(12u32), 2 => 13u32..=20, 1 => Just(21u32), 1 => Just(22u32)];
        prop_oneof![
            (lg2.clone(), 0u64..4096, 1u64..256, 1u64..12, any::<bool>()).prop_map(
                |(lg2, slot, pslot, count, write)| {
                    let size = 1u64 << lg2;
                    let slots = (16 << 20) / size;
                    let slot = slot % slots;
                    let count = count.min(slots - slot);
                    Op::Map { iova: slot * size, paddr: pslot * size, lg2, count, write }
                }
            ),
            (lg2, 0u64..4096, 1u64..64).prop_map(|(lg2, slot, count)| {
                let slots = (16 << 20) / (1u64 << lg2);
                let slot = slot % slots;
                Op::Unmap { iova: slot << lg2, lg2, count: count.min(slots - slot) }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn matches_reference_map(ops in proptest::collection::vec(op(), 1..50)) {
            let pt = Pt::new().unwrap();
            let mut model = RefMap::new(8 << 20);
            let mut touched = std::collections::BTreeSet::new();
            for op in &ops {
                match *op {
                    Op::Map { iova, paddr, lg2, count, write } => {
                        let size = 1u64 << lg2;
                        let prot = if write { RWC } else { Prot::READ | Prot::CACHE };
                        let got = pt.map(iova, paddr, size, count, prot);
                        let want = model.map(iova, paddr, size, count, prot);
                        prop_assert_eq!(got, want, "{:?}", op);
                        for p in 0..(size * count / K4).min(2048) {
                            touched.insert(iova + p * K4);
                        }
                    }
                    Op::Unmap { iova, lg2, count } => {
                        let size = 1u64 << lg2;
                        let got = pt.unmap(iova, size, count);
                        let want = model.unmap(iova, size, count);
                        prop_assert_eq!(got, want, "{:?}", op);
                        for p in 0..(size * count / K4).min(2048) {
                            touched.insert(iova + p * K4);
                        }
                    }
                }
            }
            for &page in &touched {
                for iova in [page, page + 0xabc] {
                    let got = pt.translate(iova, Access::Read).ok().map(|t| (t.paddr, t.len, t.prot));
                    prop_assert_eq!(got, model.translate(iova), "iova {:#x}", iova);
                    // Every entry a page occupies is its encoding, bit for bit.
                    if let (Some((e, level)), Some((_, size, pa, prot))) = (pt.walk(iova), model.leaf(iova)) {
                        let c = size.trailing_zeros() - (12 + 9 * level);
                        let want = if c == 0 {
                            V1Format::make_leaf(pa, prot, level)
                        } else {
                            V1Format::make_leaf_contig(pa, prot, level, c)
                        };
                        prop_assert_eq!(e, want, "entry at {:#x}", iova);
                    }
                }
            }
            // The leaves the table reports are the model's.
            let mut leaves = Vec::new();
            pt.for_each_leaf(0, 16 << 20, |i, level, e| {
                leaves.push((i, 1u64 << (12 + 9 * level + V1Format::leaf_contig_lg2(e, level))))
            });
            prop_assert_eq!(leaves, model.leaves());
            prop_assert_eq!(pt.unmap(0, M2, 8), 16 << 20);
            prop_assert!(pt.is_empty());
            let _ = G1;
        }
    }
}
