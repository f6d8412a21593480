//! VT-d second-stage paging (spec 9.8, "Second-Stage Paging Entries") and
//! the second-stage paging domain the Linux driver allocates for iommufd.
//!
//! Model: [`SlFormat`] encodes entries bit for bit on the generic
//! [`pt`](crate::pt) engine, with 3, 4 or 5 levels (39/48/57-bit input,
//! `agaw_to_level()`); leaves of 4 KiB, 2 MiB (PS at level 1) and 1 GiB (PS
//! at level 2). [`VtdSlDomain`] is the driver's `dmar_domain` for a
//! second-stage paging domain:
//! - its geometry (address width, AGAW, page sizes, coherency) is fixed at
//!   allocation from the unit's registers ([`SlConfig::for_unit`]);
//! - snoop enforcement is fixed at creation: with it every leaf carries SNP
//!   (the driver's `set_pte_snp`, which it only allows before the first map;
//!   iommufd enforces it at allocation on units with ECAP.SC);
//! - with dirty tracking enabled (SSADE in the PASID entry) translation sets
//!   A in the leaf on every access and D on writes, as hardware does.
//!
//! Invariants:
//! - every leaf has R or W; a nesting parent's leaves all have W
//!   (ERRATA_772415_SPR17);
//! - nested domains built on this one are told (their IOTLB entries for
//!   this parent dropped) whenever a mapping disappears, tracking is
//!   toggled or dirty bits are cleared: the IOTLB flushes the driver and
//!   iommufd issue in those places.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use uiommufd_abi::Errno;

use super::info::{agaw_to_level, agaw_to_width, domain_max_addr, VtdInfo, SZ_1G, SZ_2M, SZ_4K};
use super::iotlb::Iotlb;
use crate::pt::{Format, Lookup, PageTable};
use crate::{Access, Aperture, DirtyOps, Domain, Fault, Prot, Translation};

/// Second-stage entry bits (spec 9.8).
pub mod slpte {
    /// Read (an entry with neither R nor W is not present).
    pub const R: u64 = 1 << 0;
    /// Write.
    pub const W: u64 = 1 << 1;
    /// Page size: the entry at level 1 or 2 is a 2 MiB / 1 GiB leaf.
    pub const PS: u64 = 1 << 7;
    /// Accessed, set by hardware when second-stage A/D is enabled.
    pub const A: u64 = 1 << 8;
    /// Dirty, set by hardware on writes when second-stage A/D is enabled.
    pub const D: u64 = 1 << 9;
    /// Snoop: the access is snooped whatever the request's no-snoop hint.
    pub const SNP: u64 = 1 << 11;
    /// Address bits 51:12 (the model's host addresses stay far below).
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

/// Second-stage paging with `L` levels (3, 4 or 5).
pub struct SlFormat<const L: u32>;

const fn level_shift(level: u32) -> u32 {
    12 + 9 * level
}

const fn level_size(level: u32) -> u64 {
    1u64 << level_shift(level)
}

impl<const L: u32> Format for SlFormat<L> {
    const LEVELS: u32 = L;
    const LEAF_SHIFT: u32 = 12;
    /// 4 KiB, 2 MiB and 1 GiB leaves; a domain offers the subset SLLPS
    /// allows through its page-size bitmap.
    const LEAF_LEVELS: u32 = 0b111;
    const DIRTY: u64 = slpte::D;
    const ACCESSED: u64 = slpte::A;

    /// R/W from the permissions, SNP from `Prot::CACHE` (the domain sets it
    /// when it enforces snooping), PS above level 0.
    #[inline]
    fn make_leaf(paddr: u64, prot: Prot, level: u32) -> u64 {
        let mut e = paddr & slpte::ADDR;
        if prot.contains(Prot::READ) {
            e |= slpte::R;
        }
        if prot.contains(Prot::WRITE) {
            e |= slpte::W;
        }
        if prot.contains(Prot::CACHE) {
            e |= slpte::SNP;
        }
        if level > 0 {
            e |= slpte::PS;
        }
        e
    }

    /// Non-leaf entries grant R and W; the leaf decides (the driver's
    /// `pfn_to_dma_pte()` writes `DMA_PTE_READ | DMA_PTE_WRITE`).
    #[inline]
    fn make_table(table_pa: u64) -> u64 {
        (table_pa & slpte::ADDR) | slpte::R | slpte::W
    }

    #[inline]
    fn is_present(entry: u64) -> bool {
        entry & (slpte::R | slpte::W) != 0
    }

    #[inline]
    fn is_leaf(entry: u64, _level: u32) -> bool {
        entry & slpte::PS != 0
    }

    #[inline]
    fn leaf_paddr(entry: u64, level: u32) -> u64 {
        entry & slpte::ADDR & !(level_size(level) - 1)
    }

    #[inline]
    fn leaf_prot(entry: u64) -> Prot {
        let mut p = Prot::default();
        if entry & slpte::R != 0 {
            p = p | Prot::READ;
        }
        if entry & slpte::W != 0 {
            p = p | Prot::WRITE;
        }
        if entry & slpte::SNP != 0 {
            p = p | Prot::CACHE;
        }
        p
    }
}

pub type SlPt3 = PageTable<SlFormat<3>>;
pub type SlPt4 = PageTable<SlFormat<4>>;
pub type SlPt5 = PageTable<SlFormat<5>>;

/// A second-stage table of one of the three depths.
#[derive(Debug)]
pub enum SlTable {
    L3(SlPt3),
    L4(SlPt4),
    L5(SlPt5),
}

macro_rules! on_table {
    ($t:expr, |$pt:ident| $body:expr) => {
        match $t {
            SlTable::L3($pt) => $body,
            SlTable::L4($pt) => $body,
            SlTable::L5($pt) => $body,
        }
    };
}

impl SlTable {
    /// An empty table of `levels` levels (`EINVAL` outside 3..=5).
    pub fn new(levels: u32) -> Result<Self, Errno> {
        Ok(match levels {
            3 => SlTable::L3(SlPt3::new()?),
            4 => SlTable::L4(SlPt4::new()?),
            5 => SlTable::L5(SlPt5::new()?),
            _ => return Err(Errno::EINVAL),
        })
    }

    pub fn levels(&self) -> u32 {
        match self {
            SlTable::L3(_) => 3,
            SlTable::L4(_) => 4,
            SlTable::L5(_) => 5,
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

    #[inline(always)]
    pub fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        on_table!(self, |pt| pt.translate(iova, access))
    }

    #[inline]
    pub fn translate_and_mark(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        on_table!(self, |pt| pt.translate_and_mark(iova, access))
    }

    pub fn lookup(&self, iova: u64) -> Lookup {
        on_table!(self, |pt| pt.lookup(iova))
    }

    /// The leaf entry mapping `iova` and its level.
    pub fn walk(&self, iova: u64) -> Option<(u64, u32)> {
        on_table!(self, |pt| pt.walk(iova))
    }

    pub fn clear_leaf_bits(&self, iova: u64, bits: u64) -> Option<(u64, u32)> {
        on_table!(self, |pt| pt.clear_leaf_bits(iova, bits))
    }

    pub fn is_empty(&self) -> bool {
        on_table!(self, |pt| pt.is_empty())
    }

    /// See [`PageTable::leaves`](crate::pt::PageTable::leaves).
    pub fn leaves(&self, iova: u64, len: u64, f: &mut dyn FnMut(crate::Leaf)) {
        on_table!(self, |pt| pt.leaves(iova, len, f))
    }

    /// Every leaf overlapping `len` bytes at `iova`: `(iova, level, entry)`.
    pub fn for_each_leaf(&self, iova: u64, len: u64, f: impl FnMut(u64, u32, u64)) {
        on_table!(self, |pt| pt.for_each_leaf(iova, len, f))
    }
}

/// A second-stage domain's fixed properties (the `dmar_domain` fields set
/// at allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlConfig {
    /// `domain->agaw`: the table has `agaw + 2` levels.
    pub agaw: u32,
    /// `domain->gaw`: IOVAs are below `2^gaw`.
    pub gaw: u32,
    /// `domain->domain.pgsize_bitmap`.
    pub pgsize_bitmap: u64,
    /// `force_snooping` / `set_pte_snp`: SNP in every leaf.
    pub force_snooping: bool,
    /// `nested_parent`: allocated with `IOMMU_HWPT_ALLOC_NEST_PARENT`.
    pub nest_parent: bool,
    /// `domain->dirty_ops` set: allocated with
    /// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`.
    pub dirty_ops: bool,
    /// `iommu_coherency`: the unit's page walks snoop CPU caches.
    pub coherent: bool,
    /// `iotlb_sync_map`: the unit needs an IOTLB sync after map (RWBF/CM).
    pub iotlb_sync_map: bool,
}

impl SlConfig {
    /// What `intel_iommu_domain_alloc_second_stage()` / `paging_domain_alloc()`
    /// give a domain on `info`'s unit. Snooping is forced when the unit has
    /// snoop control (iommufd asks for it at allocation on such units).
    pub fn for_unit(info: &VtdInfo, nest_parent: bool, dirty_ops: bool) -> SlConfig {
        SlConfig {
            agaw: info.agaw,
            gaw: info.domain_gaw(),
            pgsize_bitmap: info.ss_pgsize_bitmap(),
            force_snooping: info.snoop_control(),
            nest_parent,
            dirty_ops,
            coherent: info.paging_structure_coherency(),
            iotlb_sync_map: info.ss_iotlb_sync_map(),
        }
    }
}

impl SlConfig {
    /// Whether a domain with this configuration may be attached to a
    /// device of `info`'s unit: `paging_domain_compatible()` with its
    /// second-stage half (`paging_domain_compatible_second_stage()`), each
    /// failure `EINVAL`, in the driver's order:
    /// - dirty ops without `ssads_supported()`;
    /// - a nesting parent without `nested_supported()`;
    /// - scalable mode without ECAP.SSTS;
    /// - 2 MiB / 1 GiB pages the unit's SLLPS lacks;
    /// - a unit needing IOTLB sync on map (RWBF or CM) for a domain that
    ///   does not do it;
    /// - forced snooping without ECAP.SC;
    /// - page-walk coherency different from the unit's;
    /// - an address width or AGAW above the unit's.
    pub fn check_unit(&self, info: &VtdInfo) -> Result<(), Errno> {
        let sllps = info.cap().sllps();
        let bad = (self.dirty_ops && !info.ssads_supported())
            || (self.nest_parent && !info.nested_supported())
            || (info.sm_supported() && info.ecap().ssts() == 0)
            || (sllps & 1 == 0 && self.pgsize_bitmap & SZ_2M != 0)
            || (sllps & 2 == 0 && self.pgsize_bitmap & SZ_1G != 0)
            || (info.ss_iotlb_sync_map() && !self.iotlb_sync_map)
            || (self.force_snooping && !info.snoop_control())
            || self.coherent != info.paging_structure_coherency()
            || self.gaw > info.domain_gaw()
            || self.agaw > info.agaw;
        if bad {
            Err(Errno::EINVAL)
        } else {
            Ok(())
        }
    }
}

struct NestedLink {
    iotlb: Weak<Iotlb>,
    did: u16,
}

/// A VT-d second-stage paging domain.
pub struct VtdSlDomain {
    table: SlTable,
    cfg: SlConfig,
    last: u64,
    /// SSADE: hardware sets A/D bits.
    tracking: AtomicBool,
    /// IOTLBs and domain IDs of nested domains built on this one.
    nested: Mutex<Vec<NestedLink>>,
    has_nested: AtomicBool,
}

impl core::fmt::Debug for VtdSlDomain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VtdSlDomain").field("table", &self.table).field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl VtdSlDomain {
    /// A domain with `cfg`: `EINVAL` for an AGAW other than 1..=3 or an
    /// address width the table cannot hold.
    pub fn new(cfg: SlConfig) -> Result<Self, Errno> {
        if !(1..=3).contains(&cfg.agaw) || cfg.gaw == 0 || cfg.gaw > agaw_to_width(cfg.agaw) {
            return Err(Errno::EINVAL);
        }
        if cfg.pgsize_bitmap & SZ_4K == 0 || cfg.pgsize_bitmap & !(SZ_4K | SZ_2M | SZ_1G) != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(VtdSlDomain {
            table: SlTable::new(agaw_to_level(cfg.agaw))?,
            cfg,
            last: domain_max_addr(cfg.gaw),
            tracking: AtomicBool::new(false),
            nested: Mutex::new(Vec::new()),
            has_nested: AtomicBool::new(false),
        })
    }

    /// A domain as the driver allocates it on `info`'s unit.
    pub fn for_unit(info: &VtdInfo, nest_parent: bool, dirty_ops: bool) -> Result<Self, Errno> {
        Self::new(SlConfig::for_unit(info, nest_parent, dirty_ops))
    }

    pub fn config(&self) -> &SlConfig {
        &self.cfg
    }

    pub fn table(&self) -> &SlTable {
        &self.table
    }

    /// Physical address of the top-level table (the PASID entry's SSPTPTR).
    pub fn root_pa(&self) -> u64 {
        self.table.root_pa()
    }

    pub fn levels(&self) -> u32 {
        self.table.levels()
    }

    /// Whether dirty tracking is on (SSADE).
    pub fn dirty_tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    /// The raw leaf mapping `iova` and its level.
    pub fn entry_at(&self, iova: u64) -> Option<(u64, u32)> {
        self.table.walk(iova)
    }

    /// Translate `gpa` for a nested walk: the translation and the log2
    /// size of the second-stage leaf that maps it.
    pub(crate) fn translate_leaf(&self, gpa: u64, access: Access) -> Result<(Translation, u32), Fault> {
        let t = self.translate(gpa, access)?;
        let shift = match self.table.walk(gpa) {
            Some((e, level)) if SlFormat::<4>::leaf_paddr(e, level) + (gpa & (level_size(level) - 1)) == t.paddr => {
                level_shift(level)
            }
            // Remapped under us: cache no more than one small page.
            _ => 12,
        };
        Ok((t, shift))
    }

    /// Translation while dirty tracking is on, kept out of line so the
    /// common path stays small.
    #[inline(never)]
    fn translate_tracking(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        self.table.translate_and_mark(iova, access)
    }

    /// Record an IOTLB holding entries of a nested domain (`did`) built on
    /// this domain, to be flushed when this domain's mappings change.
    pub(crate) fn register_nested(&self, iotlb: &Arc<Iotlb>, did: u16) {
        let mut links = self.nested.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|l| l.iotlb.strong_count() != 0);
        links.push(NestedLink { iotlb: Arc::downgrade(iotlb), did });
        self.has_nested.store(true, Ordering::Release);
    }

    pub(crate) fn unregister_nested(&self, iotlb: &Arc<Iotlb>, did: u16) {
        let mut links = self.nested.lock().unwrap_or_else(|e| e.into_inner());
        let me = Arc::downgrade(iotlb);
        links.retain(|l| !(l.did == did && l.iotlb.ptr_eq(&me)) && l.iotlb.strong_count() != 0);
        self.has_nested.store(!links.is_empty(), Ordering::Release);
    }

    /// The IOTLB flush the driver issues for a second-stage change of a
    /// nesting parent (`cache_tag_flush_range()` over the parent's
    /// `CACHE_TAG_NESTING_IOTLB` tags): the combined entries of every
    /// nested domain are dropped. The IOTLB does not record which second-
    /// stage pages a combined entry went through, so all of the domain ID's
    /// entries go, which hardware is allowed to do for any invalidation.
    fn flush_nested(&self) {
        if !self.has_nested.load(Ordering::Acquire) {
            return;
        }
        let links = self.nested.lock().unwrap_or_else(|e| e.into_inner());
        for l in links.iter() {
            if let Some(t) = l.iotlb.upgrade() {
                t.invalidate_domain(l.did);
            }
        }
    }

    /// The leaf size `map_pages` uses for a request of `pgsize`: the
    /// largest size of the domain's not above it (the driver's
    /// `hardware_largepage_caps()` falls back to smaller leaves the same way).
    fn leaf_size_for(&self, pgsize: u64) -> u64 {
        let sizes = self.cfg.pgsize_bitmap & (pgsize | (pgsize - 1));
        1u64 << (63 - sizes.leading_zeros())
    }
}

impl Domain for VtdSlDomain {
    fn leaves(&self, iova: u64, len: u64, f: &mut dyn FnMut(crate::Leaf)) -> bool {
        self.table.leaves(iova, len, f);
        true
    }

    fn dirty_ops(&self) -> Option<&dyn DirtyOps> {
        self.cfg.dirty_ops.then_some(self as &dyn DirtyOps)
    }

    fn enforce_cache_coherency(&self) -> bool {
        self.cfg.force_snooping
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.cfg.pgsize_bitmap
    }

    /// `aperture_end = __DOMAIN_MAX_ADDR(gaw)` (`paging_domain_alloc()`).
    fn aperture(&self) -> Aperture {
        Aperture { start: 0, last: self.last }
    }

    /// `intel_iommu_map_pages()` / `intel_iommu_map()` / `__domain_mapping()`:
    /// - `EINVAL`: a page size other than 4K/2M/1G, or addresses not
    ///   aligned to it;
    /// - `EFAULT`: the range ends beyond the domain's address width;
    /// - `EINVAL`: neither read nor write, or read-only in a nesting parent
    ///   (ERRATA_772415_SPR17).
    ///
    /// A size the unit has no leaf for is mapped with the largest smaller
    /// leaf. Mapping over an existing leaf is `EEXIST` (the driver WARNs
    /// and leaves the old entry).
    fn map_pages(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)> {
        if pgsize != SZ_4K && pgsize != SZ_2M && pgsize != SZ_1G {
            return Err((Errno::EINVAL, 0));
        }
        if (iova | paddr) & (pgsize - 1) != 0 {
            return Err((Errno::EINVAL, 0));
        }
        if pgcount == 0 {
            return Ok(());
        }
        let size = pgsize.checked_mul(pgcount).ok_or((Errno::EINVAL, 0))?;
        match iova.checked_add(size - 1) {
            Some(last) if last <= self.last => {}
            _ => return Err((Errno::EFAULT, 0)),
        }
        if !prot.contains(Prot::READ) && !prot.contains(Prot::WRITE) {
            return Err((Errno::EINVAL, 0));
        }
        if self.cfg.nest_parent && !prot.contains(Prot::WRITE) {
            return Err((Errno::EINVAL, 0));
        }
        let mut leaf_prot = Prot(prot.0 & (Prot::READ.0 | Prot::WRITE.0));
        if self.cfg.force_snooping {
            leaf_prot = leaf_prot | Prot::CACHE;
        }
        let leaf = self.leaf_size_for(pgsize);
        self.table.map(iova, paddr, leaf, size / leaf, leaf_prot)
    }

    /// `intel_iommu_unmap()`: a leaf larger than the request that starts at
    /// `iova` is removed whole and its size returned ("unmap more than the
    /// size argument if it happens to be a large-page mapping").
    fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
        let Some(size) = pgsize.checked_mul(pgcount).filter(|&s| s != 0) else { return 0 };
        // The table's unmap stops at a leaf that sticks out of the range;
        // only when that happens at `iova` itself is the leaf looked at (the
        // common case, leaves inside the range, costs no extra walk).
        let mut n = self.table.unmap(iova, pgsize, pgcount);
        if n == 0 {
            if let Some((_, level)) = self.table.walk(iova) {
                if level_size(level) > size && iova & (level_size(level) - 1) == 0 {
                    n = self.table.unmap(iova, level_size(level), 1);
                }
            }
        }
        if n != 0 {
            self.flush_nested();
        }
        n
    }

    /// A DMA access: with tracking on, hardware sets A (and D on writes)
    /// in the leaf.
    #[inline]
    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        if iova > self.last {
            return Err(Fault::OutOfRange);
        }
        if self.tracking.load(Ordering::Relaxed) {
            return self.translate_tracking(iova, access);
        }
        self.table.translate(iova, access)
    }
}

impl DirtyOps for VtdSlDomain {
    /// `intel_iommu_set_dirty_tracking()`: toggles SSADE (the PASID-entry
    /// update flushes the IOTLB). `EINVAL` on a domain without dirty ops.
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno> {
        if !self.cfg.dirty_ops {
            return Err(Errno::EINVAL);
        }
        if self.tracking.swap(enable, Ordering::AcqRel) != enable {
            self.flush_nested();
        }
        Ok(())
    }

    /// `intel_iommu_read_and_clear_dirty()`: `EINVAL` with a bitmap while
    /// tracking is off; then, from `iova`, each present leaf is reported as
    /// `(cur, leaf size)` if its D bit was set (cleared unless `no_clear`)
    /// and the walk advances by the leaf's size, or by the size of the
    /// empty slot it found, while below `iova + length - 1` (a do-while:
    /// at least one step). Clearing D bits is followed by an IOTLB flush
    /// (iommufd syncs the IOTLB after harvesting), so nested translations
    /// set D again on the next write.
    fn read_and_clear_dirty(
        &self,
        iova: u64,
        length: u64,
        no_clear: bool,
        mut record: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<(), Errno> {
        if !self.tracking.load(Ordering::Relaxed) && record.is_some() {
            return Err(Errno::EINVAL);
        }
        let end = iova.wrapping_add(length).wrapping_sub(1);
        let mut cur = iova;
        let mut cleared = false;
        loop {
            let step = match self.table.lookup(cur) {
                Lookup::Leaf { entry, level } => {
                    let mut dirty = entry & slpte::D != 0;
                    if dirty && !no_clear {
                        dirty = self.table.clear_leaf_bits(cur, slpte::D).is_some_and(|(old, _)| old & slpte::D != 0);
                        cleared |= dirty;
                    }
                    if dirty {
                        if let Some(r) = record.as_mut() {
                            r(cur, level_size(level));
                        }
                    }
                    level_size(level)
                }
                Lookup::Hole { level } => level_size(level),
                Lookup::OutOfRange => break,
            };
            match cur.checked_add(step) {
                Some(next) if next < end => cur = next,
                _ => break,
            }
        }
        if cleared {
            self.flush_nested();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::regs::{VtdRegs, VtdRegsBuilder};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const K4: u64 = SZ_4K;
    const M2: u64 = SZ_2M;
    const G1: u64 = SZ_1G;
    const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);

    fn cfg(agaw: u32, gaw: u32) -> SlConfig {
        SlConfig {
            agaw,
            gaw,
            pgsize_bitmap: K4 | M2 | G1,
            force_snooping: false,
            nest_parent: false,
            dirty_ops: false,
            coherent: true,
            iotlb_sync_map: false,
        }
    }

    #[test]
    fn entry_encodings_by_hand() {
        // A 2 MiB leaf at PA 0x1_2340_0000 with R/W/SNP: address bits
        // 51:21, R (bit 0), W (bit 1), PS (bit 7), SNP (bit 11).
        let e = SlFormat::<4>::make_leaf(0x1_2340_0000, RW | Prot::CACHE, 1);
        assert_eq!(e, 0x1_2340_0000 | 0x1 | 0x2 | 0x80 | 0x800);
        assert_eq!(e, 0x0000_0001_2340_0883);
        // A 4 KiB read-only leaf: no PS.
        assert_eq!(SlFormat::<4>::make_leaf(0x5000, Prot::READ, 0), 0x5001);
        // A 1 GiB write-only leaf.
        assert_eq!(SlFormat::<4>::make_leaf(0x8000_0000, Prot::WRITE, 2), 0x8000_0082);
        // Table entries: address | R | W.
        assert_eq!(SlFormat::<4>::make_table(0x4000_3000), 0x4000_3003);
        assert!(!SlFormat::<4>::is_present(slpte::SNP | slpte::PS | 0x1000));
        assert_eq!(SlFormat::<4>::leaf_paddr(e | slpte::A | slpte::D, 1), 0x1_2340_0000);
        assert_eq!(SlFormat::<4>::leaf_prot(e), RW | Prot::CACHE);
    }

    #[test]
    fn domain_writes_spec_entries() {
        let mut c = cfg(2, 48);
        c.force_snooping = true;
        let d = VtdSlDomain::new(c).unwrap();
        assert_eq!(d.levels(), 4);
        // Caller's CACHE/NOEXEC/etc. are ignored; SNP comes from the domain.
        d.map_pages(0x20_0000, 0x1_2340_0000, M2, 1, RW | Prot::NOEXEC).unwrap();
        let (e, level) = d.entry_at(0x20_0000).unwrap();
        assert_eq!((e, level), (0x0000_0001_2340_0883, 1));
        d.map_pages(0x1000, 0x7000, K4, 1, Prot::READ).unwrap();
        assert_eq!(d.entry_at(0x1000).unwrap(), (0x7000 | slpte::R | slpte::SNP, 0));
        // The intermediate entries hold node addresses with R|W.
        if let SlTable::L4(_) = d.table() {
        } else {
            panic!("4-level table expected");
        }
        // Without snooping: no SNP.
        let d = VtdSlDomain::new(cfg(2, 48)).unwrap();
        d.map_pages(G1, 2 * G1, G1, 1, RW).unwrap();
        assert_eq!(d.entry_at(G1 + 5).unwrap(), ((2 * G1) | 0x83, 2));
        assert_eq!(
            d.translate(G1 + 0x1234, Access::Write).unwrap(),
            Translation { paddr: 2 * G1 + 0x1234, len: G1 - 0x1234, prot: RW }
        );
    }

    #[test]
    fn map_errors_follow_the_driver() {
        let mut c = cfg(1, 39);
        c.nest_parent = true;
        let d = VtdSlDomain::new(c).unwrap();
        assert_eq!(d.levels(), 3);
        assert_eq!(d.aperture(), Aperture { start: 0, last: (1 << 39) - 1 });
        assert_eq!(d.map_pages(0, 0, 8192, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(0x1000, 0, M2, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages((1 << 39) - K4, 0, K4, 2, RW), Err((Errno::EFAULT, 0)));
        assert_eq!(d.map_pages(0, 0, K4, 1, Prot::default()), Err((Errno::EINVAL, 0)));
        // ERRATA_772415_SPR17: read-only is refused in a nesting parent.
        assert_eq!(d.map_pages(0, 0, K4, 1, Prot::READ), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(0, 0, K4, 1, Prot::WRITE), Ok(()));
        assert_eq!(d.map_pages(0, 0, K4, 1, RW), Err((Errno::EEXIST, 0)));
        assert_eq!(d.translate(1 << 39, Access::Read), Err(Fault::OutOfRange));
        // Without 1 GiB leaves a 1 GiB request is built from 2 MiB leaves.
        let mut c = cfg(2, 48);
        c.pgsize_bitmap = K4 | M2;
        let d = VtdSlDomain::new(c).unwrap();
        d.map_pages(G1, 0, G1, 1, RW).unwrap();
        assert_eq!(d.entry_at(G1 + M2).unwrap().1, 1);
        assert_eq!(d.unmap_pages(G1, G1, 1), G1);
        assert!(d.table().is_empty());
        // Bad configurations.
        assert_eq!(VtdSlDomain::new(cfg(0, 30)).err(), Some(Errno::EINVAL));
        assert_eq!(VtdSlDomain::new(cfg(1, 48)).err(), Some(Errno::EINVAL));
    }

    #[test]
    fn unmap_removes_a_whole_large_leaf() {
        let d = VtdSlDomain::new(cfg(2, 48)).unwrap();
        d.map_pages(M2, 0, M2, 1, RW).unwrap();
        // The driver widens a 4 KiB unmap at the start of a 2 MiB leaf.
        assert_eq!(d.unmap_pages(M2, K4, 1), M2);
        assert_eq!(d.translate(M2 + K4, Access::Read), Err(Fault::NotPresent));
        // Holes count as unmapped.
        assert_eq!(d.unmap_pages(0, K4, 4), 4 * K4);
    }

    #[test]
    fn dirty_tracking_sets_and_harvests_d_bits() {
        let mut c = cfg(2, 48);
        c.dirty_ops = true;
        let d = VtdSlDomain::new(c).unwrap();
        d.map_pages(0, 0x10_0000, K4, 4, RW).unwrap();
        d.map_pages(M2, 4 * M2, M2, 1, RW).unwrap();
        // Not tracking: no A/D, and a bitmap harvest is refused.
        d.translate(0, Access::Write).unwrap();
        assert_eq!(d.entry_at(0).unwrap().0 & (slpte::A | slpte::D), 0);
        let ops = d.dirty_ops().unwrap();
        let mut seen = Vec::new();
        assert_eq!(ops.read_and_clear_dirty(0, 4 * M2, false, Some(&mut |i, s| seen.push((i, s)))), Err(Errno::EINVAL));
        assert_eq!(ops.read_and_clear_dirty(0, 4 * M2, false, None), Ok(()));
        ops.set_dirty_tracking(true).unwrap();
        d.translate(K4, Access::Read).unwrap();
        d.translate(2 * K4 + 8, Access::Write).unwrap();
        d.translate(M2 + 0x3000, Access::Write).unwrap();
        assert_eq!(d.entry_at(K4).unwrap().0 & (slpte::A | slpte::D), slpte::A);
        assert_eq!(d.entry_at(2 * K4).unwrap().0 & (slpte::A | slpte::D), slpte::A | slpte::D);
        ops.read_and_clear_dirty(0, 4 * M2, true, Some(&mut |i, s| seen.push((i, s)))).unwrap();
        assert_eq!(seen, vec![(2 * K4, K4), (M2, M2)]);
        seen.clear();
        ops.read_and_clear_dirty(0, 4 * M2, false, Some(&mut |i, s| seen.push((i, s)))).unwrap();
        assert_eq!(seen, vec![(2 * K4, K4), (M2, M2)]);
        seen.clear();
        ops.read_and_clear_dirty(0, 4 * M2, false, Some(&mut |i, s| seen.push((i, s)))).unwrap();
        assert!(seen.is_empty());
        // A domain without dirty ops cannot enable tracking.
        let plain = VtdSlDomain::new(cfg(2, 48)).unwrap();
        assert!(plain.dirty_ops().is_none());
        assert_eq!(DirtyOps::set_dirty_tracking(&plain, true), Err(Errno::EINVAL));
    }

    #[test]
    fn config_from_boot_values() {
        let info = VtdInfo::from_regs(VtdRegs::from_raw(0x00d2_008c_4066_0462, 0xf050da)).unwrap();
        let d = VtdSlDomain::for_unit(&info, false, false).unwrap();
        assert_eq!(d.aperture().last, (1 << 39) - 1);
        assert_eq!(d.levels(), 4);
        assert_eq!(d.pgsize_bitmap(), K4 | M2 | G1);
        assert!(d.enforce_cache_coherency());
        let info = VtdInfo::from_regs(VtdRegs::from_raw(0x00d2_008c_2226_0286, 0xf42)).unwrap();
        let d = VtdSlDomain::for_unit(&info, false, false).unwrap();
        assert_eq!(d.levels(), 3);
        assert!(!d.enforce_cache_coherency());
        assert!(d.config().iotlb_sync_map);
        let r = VtdRegsBuilder::from(VtdRegs::default()).second_stage_large_pages(false, false).build();
        let d = VtdSlDomain::for_unit(&VtdInfo::from_regs(r).unwrap(), true, true).unwrap();
        assert_eq!(d.levels(), 5);
        assert_eq!(d.pgsize_bitmap(), K4);
        assert_eq!(d.aperture().last, (1 << 57) - 1);
    }

    /// Warm 4-level walk and 256 x 4 KiB map/unmap costs. Run with
    /// `cargo test -p uiommufd-hw --release -- --ignored --nocapture timing`.
    #[test]
    #[ignore]
    fn timing_second_stage() {
        let d = VtdSlDomain::new(cfg(2, 48)).unwrap();
        const N: u64 = 10_000_000;
        d.map_pages(0, 1 << 32, K4, 1024, RW).unwrap();
        // Through the trait object, as the engine calls it; only the
        // fields are consumed (copying the whole returned Result costs a
        // store-forwarding stall of several ns on its own).
        let dd: &dyn Domain = &d;
        let start = std::time::Instant::now();
        for i in 0..N {
            if let Ok(t) = dd.translate(std::hint::black_box((i & 1023) << 12), Access::Read) {
                std::hint::black_box(t.paddr);
            }
        }
        let walk = start.elapsed().as_nanos() as f64 / N as f64;
        d.unmap_pages(0, K4, 1024);
        const M: u64 = 200_000;
        let (mut map_ns, mut unmap_ns) = (0u128, 0u128);
        for i in 0..M {
            let iova = (i % 4) << 21;
            let t0 = std::time::Instant::now();
            d.map_pages(iova, 1 << 32, K4, 256, RW).unwrap();
            let t1 = std::time::Instant::now();
            assert_eq!(d.unmap_pages(iova, K4, 256), 256 * K4);
            let t2 = std::time::Instant::now();
            map_ns += (t1 - t0).as_nanos();
            unmap_ns += (t2 - t1).as_nanos();
        }
        println!(
            "vtd sl (4-level): warm walk {walk:.2} ns; map 256x4K {:.0} ns; unmap 256x4K {:.0} ns",
            map_ns as f64 / M as f64,
            unmap_ns as f64 / M as f64
        );
    }

    // ---- property test against a reference model ----

    #[derive(Clone, Debug)]
    enum Op {
        Map { iova: u64, paddr: u64, size: u64, count: u64, write: bool },
        Unmap { iova: u64, size: u64, count: u64 },
        Translate { iova: u64, write: bool },
    }

    /// IOVAs in an 8 MiB window (4 large pages) so operations collide.
    fn op() -> impl Strategy<Value = Op> {
        let size = prop_oneof![4 => Just(K4), 1 => Just(M2)];
        prop_oneof![
            (size.clone(), 0u64..2048, 0u64..512, 1u64..24, any::<bool>()).prop_map(
                |(size, slot, pslot, count, write)| {
                    let count = if size == M2 { count % 2 + 1 } else { count };
                    let slot = slot % ((8 << 20) / size);
                    Op::Map { iova: slot * size, paddr: (pslot + 1) * size, size, count, write }
                }
            ),
            (size, 0u64..2048, 1u64..40).prop_map(|(size, slot, count)| {
                let count = if size == M2 { count % 2 + 1 } else { count };
                Op::Unmap { iova: (slot % ((8 << 20) / size)) * size, size, count }
            }),
            (0u64..(8 << 20), any::<bool>()).prop_map(|(iova, write)| Op::Translate { iova, write }),
        ]
    }

    /// Leaves by IOVA: (size, paddr, writable).
    type Model = BTreeMap<u64, (u64, u64, bool)>;

    fn model_covering(m: &Model, iova: u64) -> Option<(u64, (u64, u64, bool))> {
        let (&i, &v) = m.range(..=iova).next_back()?;
        (iova < i + v.0).then_some((i, v))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn walker_matches_reference(ops in proptest::collection::vec(op(), 1..50), snoop in any::<bool>()) {
            let mut c = cfg(2, 48);
            c.force_snooping = snoop;
            let d = VtdSlDomain::new(c).unwrap();
            let mut m = Model::new();
            for op in &ops {
                match *op {
                    Op::Map { iova, paddr, size, count, write } => {
                        let prot = if write { RW } else { Prot::READ };
                        let got = d.map_pages(iova, paddr, size, count, prot);
                        // Reference: leaves in order until one overlaps.
                        let mut want = Ok(());
                        for n in 0..count {
                            let i = iova + n * size;
                            let clash = model_covering(&m, i).is_some()
                                || m.range(i..i + size).next().is_some();
                            if clash {
                                want = Err((Errno::EEXIST, n * size));
                                break;
                            }
                            m.insert(i, (size, paddr + n * size, write));
                        }
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                    Op::Unmap { iova, size, count } => {
                        let got = d.unmap_pages(iova, size, count);
                        // Reference: the driver's whole-large-leaf rule,
                        // then leaves removed until one sticks out.
                        let mut end = iova + size * count;
                        if let Some((i, (s, _, _))) = model_covering(&m, iova) {
                            if i == iova && s > size * count {
                                end = iova + s;
                            }
                        }
                        let mut want = end - iova;
                        let keys: Vec<u64> = m.range(iova.saturating_sub(M2 - 1)..end).map(|(&k, _)| k).collect();
                        for k in keys {
                            let (s, _, _) = m[&k];
                            if k + s <= iova {
                                continue;
                            }
                            if k < iova || k + s > end {
                                want = k.max(iova) - iova;
                                break;
                            }
                            m.remove(&k);
                        }
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                    Op::Translate { iova, write } => {
                        let access = if write { Access::Write } else { Access::Read };
                        let got = d.translate(iova, access);
                        let want = match model_covering(&m, iova) {
                            None => Err(Fault::NotPresent),
                            Some((_, (_, _, false))) if write => Err(Fault::Permission),
                            Some((i, (s, p, w))) => {
                                let mut prot = if w { RW } else { Prot::READ };
                                if snoop {
                                    prot = prot | Prot::CACHE;
                                }
                                Ok(Translation { paddr: p + (iova - i), len: s - (iova - i), prot })
                            }
                        };
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                }
            }
            // Every leaf's raw bits are the spec encoding.
            let mut leaves = Vec::new();
            d.table().for_each_leaf(0, 1 << 30, |i, level, e| leaves.push((i, level, e)));
            prop_assert_eq!(leaves.len(), m.len());
            for (i, level, e) in leaves {
                let (s, p, w) = m[&i];
                prop_assert_eq!(level_size(level), s);
                let mut want = p | slpte::R | if w { slpte::W } else { 0 };
                if s > K4 {
                    want |= slpte::PS;
                }
                if snoop {
                    want |= slpte::SNP;
                }
                prop_assert_eq!(e, want);
            }
        }
    }
}
