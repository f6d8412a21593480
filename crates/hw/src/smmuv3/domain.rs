//! SMMUv3 paging domains: what `arm_smmu_domain_alloc_paging_flags()` and
//! `arm_smmu_domain_finalise()` build, with `io-pgtable-arm`'s table
//! (`ARM_64_LPAE_S1` / `ARM_64_LPAE_S2`) and its map/unmap/dirty rules.
//!
//! Model:
//! - a domain is stage 1 (an ASID, a CD the driver writes for it) or stage
//!   2 (a VMID, an STE); its geometry is fixed at allocation from the
//!   SMMU's [`SmmuInfo`] ([`DomainConfig::for_unit`]): input/output sizes,
//!   levels, page sizes, coherent walks, and the two quirks: HD (stage 1
//!   with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`: writable leaves carry DBM and
//!   the CD enables hardware dirty state) and S2FWB (a nesting parent on
//!   an SMMU with S2FWB: cacheable leaves force write-back, whatever a
//!   guest's stage 1 says);
//! - the table is the 4KB-granule LPAE format of [`lpae`](super::lpae);
//!   [`SmmuDomain::make_cd`] / [`SmmuDomain::make_ste`] give the CD or STE
//!   words the driver would install (`arm_smmu_make_s1_cd()`,
//!   `arm_smmu_make_s2_domain_ste()`), bit for bit;
//! - map and unmap follow `arm_lpae_map_pages()` / `arm_lpae_unmap_pages()`
//!   and the iommu core's loop around them: a call covers at most the rest
//!   of one table, so errors report what earlier tables mapped; an unmap
//!   of part of a block splits it (`arm_lpae_split_blk_unmap()`); an unmap
//!   stops at the first empty entry; a block mapped over a table replaces
//!   the table and everything under it;
//! - dirty tracking (stage 1 + HD): hardware turns a writable-clean leaf
//!   (AP\[2\] = 1, DBM = 1) writable-dirty (AP\[2\] = 0) on the first write;
//!   harvesting reports writable-dirty leaves and makes them clean again
//!   (`arm_lpae_read_and_clear_dirty()`). Leaves start writable-dirty, so
//!   iommufd clears everything when tracking is turned on; turning it on or
//!   off is otherwise a no-op (`arm_smmu_set_dirty_tracking()`).
//!
//! One difference by design: io-pgtable frees a table that a block-sized
//! unmap removes, so unmapping that range again finds an empty entry
//! (and WARNs); the model's engine keeps the emptied table linked, so a
//! second block-sized unmap there counts it. Only a caller unmapping an
//! already unmapped range (a bug the kernel warns about) can tell.
//!
//! Nothing here caches translations: the driver invalidates the TLB (by
//! ASID or VMID range) before an unmap returns. A nesting parent's unmap
//! also drops every stage 1 entry of its VMID (`CMD_TLBI_NH_ALL`, as
//! `arm_smmu_tlb_inv_range_domain()` issues for `nest_parent`), which is
//! what keeps nested domains' combined entries honest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use uiommufd_abi::Errno;

use super::info::{feat, SmmuInfo, SZ_16K, SZ_1G, SZ_2M, SZ_32M, SZ_4K, SZ_512M, SZ_64K};
use super::lpae::{desc, split_child, table_entries, LpaeTable, QUIRK};
use super::regs::oas_encoding;
use super::ste::{cdf, stef};
use super::tlb::Tlb;
use crate::pt::Lookup;
use crate::{Access, Aperture, DirtyOps, Domain, Fault, Prot, Translation};

/// An allocator of ASIDs or VMIDs (`xa_alloc()` / `ida_alloc_range()`:
/// the lowest free ID of `lo..=hi`).
pub struct IdPool {
    lo: u32,
    hi: u32,
    /// What running out returns (`EBUSY` from `xa_alloc()` for ASIDs,
    /// `ENOSPC` from `ida_alloc_range()` for VMIDs).
    exhausted: Errno,
    used: Mutex<Vec<u64>>,
}

impl core::fmt::Debug for IdPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IdPool({}..={}, {} in use)", self.lo, self.hi, self.in_use())
    }
}

impl IdPool {
    pub fn new(lo: u32, hi: u32, exhausted: Errno) -> Arc<Self> {
        let words = (hi as usize >> 6) + 1;
        Arc::new(IdPool { lo, hi, exhausted, used: Mutex::new(vec![0; words]) })
    }

    /// The lowest free ID.
    pub fn alloc(self: &Arc<Self>) -> Result<IdLease, Errno> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        for id in self.lo..=self.hi {
            let (w, b) = ((id >> 6) as usize, id & 63);
            if used[w] & (1 << b) == 0 {
                used[w] |= 1 << b;
                return Ok(IdLease { pool: Arc::clone(self), id });
            }
        }
        Err(self.exhausted)
    }

    pub fn in_use(&self) -> usize {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// An allocated ID, freed when dropped.
pub struct IdLease {
    pool: Arc<IdPool>,
    id: u32,
}

impl IdLease {
    pub fn id(&self) -> u16 {
        self.id as u16
    }
}

impl core::fmt::Debug for IdLease {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IdLease({})", self.id)
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        let mut used = self.pool.used.lock().unwrap_or_else(|e| e.into_inner());
        used[(self.id >> 6) as usize] &= !(1 << (self.id & 63));
    }
}

/// The translation stage of a paging domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    S1,
    S2,
}

/// A paging domain's fixed properties: `io_pgtable_cfg` after
/// `arm_lpae_alloc_pgtable()`, and the driver's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    pub stage: Stage,
    /// Input address bits (`pgtbl_cfg.ias`, after the granule's limit).
    pub ias: u32,
    /// Output address bits (`pgtbl_cfg.oas`).
    pub oas: u32,
    pub pgsize_bitmap: u64,
    /// log2 of the translation granule (12, 14 or 16).
    pub granule_shift: u32,
    /// Levels of the table (as the model stores it).
    pub levels: u32,
    /// io-pgtable's `start_level` (after stage 2 concatenation).
    pub start_level: u32,
    /// log2 of the entries of the top-level table (concatenated pages
    /// included).
    pub pgd_bits: u32,
    /// `pgtbl_cfg.coherent_walk` (`ARM_SMMU_FEAT_COHERENCY`).
    pub coherent_walk: bool,
    /// `IO_PGTABLE_QUIRK_ARM_HD`.
    pub hd: bool,
    /// `IO_PGTABLE_QUIRK_ARM_S2FWB`.
    pub fwb: bool,
    /// `smmu_domain->nest_parent`.
    pub nest_parent: bool,
}

/// TCR/VTCR fields io-pgtable computes (`arm_lpae_s1_cfg.tcr`,
/// `arm_lpae_s2_cfg.vtcr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcrFields {
    pub tsz: u64,
    /// Starting level field (stage 2 only: `~sl & 3`).
    pub sl: u64,
    pub irgn: u64,
    pub orgn: u64,
    pub sh: u64,
    pub tg: u64,
    /// IPS / PS.
    pub ps: u64,
}

impl DomainConfig {
    /// `arm_smmu_domain_finalise()` for `stage` on `info`'s SMMU, with
    /// `arm_lpae_restrict_pgsizes()` and `arm_lpae_alloc_pgtable()`:
    /// - stage 1: input `min(52 with VAX else 48, VA_BITS)`, output the
    ///   SMMU's OAS, HD with `dirty`;
    /// - stage 2: input and output the OAS, S2FWB for a nesting parent on an
    ///   SMMU with S2FWB; `EOPNOTSUPP` with `dirty` (the driver's switch
    ///   never lets it get here);
    /// - the granule as `arm_lpae_restrict_pgsizes()` picks it for the
    ///   host's 4KB pages: 4KB if the SMMU has it (with 2MB and 1GB blocks),
    ///   else the smallest larger one (16KB with 32MB blocks, or 64KB with
    ///   512MB blocks); address sizes capped at 48 bits (io-pgtable allows
    ///   52 with 64KB; not modelled);
    /// - stage 2 concatenates top-level tables where 7.3's
    ///   `arm_lpae_concat_mandatory()` makes it mandatory.
    pub fn for_unit(info: &SmmuInfo, stage: Stage, dirty: bool, nest_parent: bool) -> Result<Self, Errno> {
        let (ias, oas, hd, fwb) = match stage {
            Stage::S1 => {
                let ias = if info.has(feat::VAX) { 52 } else { 48 };
                (ias.min(info.params.va_bits), info.oas, dirty, false)
            }
            Stage::S2 => {
                if dirty {
                    return Err(Errno::EOPNOTSUPP);
                }
                (info.oas, info.oas, false, info.s2fwb() && nest_parent)
            }
        };
        // arm_lpae_restrict_pgsizes() with PAGE_SIZE 4KB.
        let g = if info.pgsize_bitmap & SZ_4K != 0 {
            12
        } else if info.pgsize_bitmap & SZ_16K != 0 {
            14
        } else if info.pgsize_bitmap & SZ_64K != 0 {
            16
        } else {
            return Err(Errno::ENOMEM);
        };
        let sizes = match g {
            12 => SZ_4K | SZ_2M | SZ_1G,
            14 => SZ_16K | SZ_32M,
            _ => SZ_64K | SZ_512M,
        };
        let pgsize_bitmap = info.pgsize_bitmap & sizes;
        let (ias, oas) = (ias.min(48), oas.min(48));
        if ias <= g || oas_encoding(oas).is_none() {
            // io-pgtable refuses the configuration: alloc_io_pgtable_ops()
            // returns NULL.
            return Err(Errno::ENOMEM);
        }
        // arm_lpae_alloc_pgtable().
        let bits_per_level = g - 3;
        let va_bits = ias - g;
        let levels = va_bits.div_ceil(bits_per_level);
        let mut start_level = 4 - levels;
        let mut pgd_bits = va_bits - bits_per_level * (levels - 1);
        // arm_lpae_concat_mandatory().
        let concat = match (g, start_level) {
            (14, 0) => oas == 48 || ias == 48,
            (12, 0) => oas == 40 || oas == 42,
            (14, 1) => oas == 40,
            _ => false,
        };
        if stage == Stage::S2 && concat {
            pgd_bits += bits_per_level;
            start_level += 1;
        }
        // The engine's depth for the granule (enough for 48 bits; 3 levels
        // of 4KB when they suffice).
        let engine_levels = match g {
            12 => levels.max(3),
            14 => 4,
            _ => 3,
        };
        Ok(DomainConfig {
            stage,
            ias,
            oas,
            pgsize_bitmap,
            granule_shift: g,
            levels: engine_levels,
            start_level,
            pgd_bits,
            coherent_walk: info.coherent(),
            hd,
            fwb,
            nest_parent,
        })
    }

    /// The TCR (stage 1) or VTCR (stage 2) fields.
    pub fn tcr(&self) -> TcrFields {
        let (sh, rgn) = if self.coherent_walk { (cdf::SH_IS, cdf::RGN_WBWA) } else { (cdf::SH_OS, cdf::RGN_NC) };
        // SL0: `~start_level & 3`, the 4KB granule's counted from one
        // level further (`sl++`).
        let sl = u64::from(self.start_level) + u64::from(self.granule_shift == 12);
        let sl = if self.stage == Stage::S2 { !sl & 3 } else { 0 };
        let tg = match self.granule_shift {
            12 => cdf::TG0_4K,
            14 => cdf::TG0_16K,
            _ => cdf::TG0_64K,
        };
        TcrFields {
            tsz: 64 - u64::from(self.ias),
            sl,
            irgn: rgn,
            orgn: rgn,
            sh,
            tg,
            ps: u64::from(oas_encoding(self.oas).unwrap_or(5)),
        }
    }

    /// The STE's VTCR field (`STRTAB_STE_2_VTCR`).
    pub fn vtcr(&self) -> u64 {
        let t = self.tcr();
        use super::ste::vtcr as v;
        t.tsz
            | t.sl << v::SL0_SHIFT
            | t.irgn << v::IR0_SHIFT
            | t.orgn << v::OR0_SHIFT
            | t.sh << v::SH0_SHIFT
            | t.tg << v::TG_SHIFT
            | t.ps << v::PS_SHIFT
    }
}

/// A paging domain of an SMMUv3.
pub struct SmmuDomain {
    table: LpaeTable,
    cfg: DomainConfig,
    /// The SMMU instance (`smmu_domain->smmu`).
    unit: usize,
    /// The ASID (stage 1) or VMID (stage 2).
    id: IdLease,
    /// The SMMU's TLB (nesting parents invalidate their VMID there).
    tlb: Arc<Tlb>,
    /// `smmu_domain->enforce_cache_coherency`.
    enforce_cc: AtomicBool,
    last: u64,
}

impl core::fmt::Debug for SmmuDomain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmmuDomain")
            .field("cfg", &self.cfg)
            .field("id", &self.id.id())
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl SmmuDomain {
    /// A domain with `cfg` on SMMU instance `unit`, with its ASID or VMID
    /// and the SMMU's TLB.
    pub fn new(cfg: DomainConfig, unit: usize, id: IdLease, tlb: Arc<Tlb>) -> Result<Self, Errno> {
        let table = LpaeTable::new(cfg.stage == Stage::S2, cfg.granule_shift, cfg.levels)?;
        let last = (1u64 << cfg.ias) - 1;
        Ok(SmmuDomain { table, cfg, unit, id, tlb, enforce_cc: AtomicBool::new(false), last })
    }

    pub fn config(&self) -> &DomainConfig {
        &self.cfg
    }

    pub fn stage(&self) -> Stage {
        self.cfg.stage
    }

    pub fn unit(&self) -> usize {
        self.unit
    }

    /// The ASID of a stage 1 domain.
    pub fn asid(&self) -> Option<u16> {
        (self.cfg.stage == Stage::S1).then(|| self.id.id())
    }

    /// The VMID of a stage 2 domain.
    pub fn vmid(&self) -> Option<u16> {
        (self.cfg.stage == Stage::S2).then(|| self.id.id())
    }

    pub fn table(&self) -> &LpaeTable {
        &self.table
    }

    /// The raw leaf mapping `iova` and its engine level.
    pub fn entry_at(&self, iova: u64) -> Option<(u64, u32)> {
        self.table.walk(iova)
    }

    /// `arm_smmu_enforce_cache_coherency()` as iommufd calls it when it
    /// allocates the domain for a device that can enforce: the answer is
    /// whether every master attached so far is CANWBS (`all_canwbs`),
    /// and from then on the domain refuses masters that are not.
    pub fn set_enforce_cache_coherency(&self, all_canwbs: bool) -> bool {
        self.enforce_cc.store(all_canwbs, Ordering::Release);
        all_canwbs
    }

    /// `arm_smmu_make_s1_cd()`: the CD of a stage 1 domain for a master
    /// (`stall`: the master's stall is enabled).
    pub fn make_cd(&self, stall: bool) -> Option<[u64; 8]> {
        if self.cfg.stage != Stage::S1 {
            return None;
        }
        let t = self.cfg.tcr();
        let mut w0 = t.tsz
            | t.tg << cdf::TG0_SHIFT
            | t.irgn << cdf::IRGN0_SHIFT
            | t.orgn << cdf::ORGN0_SHIFT
            | t.sh << cdf::SH0_SHIFT
            | cdf::EPD1
            | cdf::V
            | t.ps << cdf::IPS_SHIFT
            | cdf::AA64
            | cdf::R
            | cdf::A
            | cdf::ASET
            | u64::from(self.id.id()) << cdf::ASID_SHIFT;
        if stall {
            w0 |= cdf::S;
        }
        if self.cfg.hd {
            w0 |= cdf::HA | cdf::HD;
        }
        Some([w0, self.table.root_pa() & cdf::TTB, 0, super::lpae::mair::VALUE, 0, 0, 0, 0])
    }

    /// `arm_smmu_make_s2_domain_ste()`: the STE of a stage 2 domain for a
    /// master of `info`'s SMMU (`ats`: ATS enabled; `stall`: the master's
    /// stall is enabled).
    pub fn make_ste(&self, info: &SmmuInfo, ats: bool, stall: bool) -> Option<[u64; 8]> {
        if self.cfg.stage != Stage::S2 {
            return None;
        }
        let mut ste = [0u64; 8];
        ste[0] = stef::V | stef::CFG_S2_TRANS << stef::CFG_SHIFT;
        if ats {
            ste[1] |= stef::EATS_TRANS << stef::EATS_SHIFT;
        }
        if self.cfg.fwb {
            ste[1] |= stef::S2FWB;
        }
        if info.has(feat::ATTR_TYPES_OVR) {
            ste[1] |= stef::SHCFG_INCOMING << stef::SHCFG_SHIFT;
        }
        ste[2] = u64::from(self.id.id())
            | self.cfg.vtcr() << stef::VTCR_SHIFT
            | stef::S2AA64
            | stef::S2PTW
            | if stall { stef::S2S } else { 0 }
            | stef::S2R;
        ste[3] = self.table.root_pa() & stef::S2TTB;
        Some(ste)
    }

    /// Stage 2 translation of `ipa` for a nested walk: the translation and
    /// the log2 size of the leaf that maps it.
    pub fn translate_leaf(&self, ipa: u64, access: Access) -> Result<(Translation, u32), Fault> {
        if ipa > self.last {
            return Err(Fault::OutOfRange);
        }
        let (entry, level) = match self.table.lookup(ipa) {
            Lookup::Leaf { entry, level } => (entry, level),
            Lookup::OutOfRange => return Err(Fault::OutOfRange),
            Lookup::Hole { .. } => return Err(Fault::NotPresent),
        };
        let prot = self.table.leaf_prot(entry);
        let needed = match access {
            Access::Read => Prot::READ,
            Access::Write => Prot::WRITE,
        };
        if !prot.contains(needed) {
            return Err(Fault::Permission);
        }
        let shift = self.shift(level);
        let offset = ipa & ((1u64 << shift) - 1);
        let paddr = (entry & desc::ADDR & !((1u64 << shift) - 1)) + offset;
        Ok((Translation { paddr, len: (1u64 << shift) - offset, prot }, shift))
    }

    /// The level a page size maps at (`EINVAL` for sizes not in the
    /// domain's bitmap: `arm_lpae_map_pages()` WARNs).
    fn level_for(&self, pgsize: u64) -> Option<u32> {
        if pgsize.count_ones() != 1 || pgsize & self.cfg.pgsize_bitmap == 0 {
            return None;
        }
        Some((pgsize.trailing_zeros() - self.cfg.granule_shift) / (self.cfg.granule_shift - 3))
    }

    /// log2 of the bytes an entry of `level` spans.
    #[inline]
    fn shift(&self, level: u32) -> u32 {
        super::lpae::level_shift(self.cfg.granule_shift, level)
    }

    /// Bytes an entry of `level` spans.
    #[inline]
    fn size(&self, level: u32) -> u64 {
        1u64 << self.shift(level)
    }

    /// Index of `iova` in a table of `level`.
    #[inline]
    fn index(&self, iova: u64, level: u32) -> u64 {
        (iova >> self.shift(level)) & (table_entries(self.cfg.granule_shift) - 1)
    }

    /// Pages of `level` from `iova` to the end of the table holding it.
    fn to_table_end(&self, iova: u64, level: u32) -> u64 {
        table_entries(self.cfg.granule_shift) - self.index(iova, level)
    }

    /// The nesting-parent flush after a change of the parent's mappings.
    fn flush_nested(&self) {
        if self.cfg.nest_parent {
            self.tlb.invalidate_vmid(self.id.id());
        }
    }

    /// One table's worth of a map (`__arm_lpae_map()` at the leaf level):
    /// `count` leaves of `level` from `iova`.
    fn map_chunk(&self, iova: u64, paddr: u64, level: u32, count: u64, prot: Prot) -> Result<(), Errno> {
        let size = self.size(level);
        if level > 0 {
            // arm_lpae_init_pte(): a leaf already there (at this level or
            // above) is EEXIST before anything is written; a table is
            // unmapped, with everything under it, to make room.
            for n in 0..count {
                let cur = iova + n * size;
                match self.table.lookup(cur) {
                    Lookup::Leaf { level: l, .. } if l >= level => return Err(Errno::EEXIST),
                    Lookup::Leaf { .. } => {
                        self.table.unmap(cur, size, 1);
                    }
                    Lookup::Hole { level: l } if l < level => {
                        self.table.unmap(cur, size, 1);
                    }
                    _ => {}
                }
            }
        }
        match self.table.map(iova, paddr, size, count, prot) {
            Ok(()) => Ok(()),
            Err((e, done)) => {
                // The driver checks the whole run before writing any of it.
                if done != 0 {
                    self.table.unmap(iova, size, done / size);
                }
                Err(e)
            }
        }
    }
}

impl Drop for SmmuDomain {
    /// A freed nesting parent's VMID may be reused: nothing tagged with it
    /// may survive.
    fn drop(&mut self) {
        self.flush_nested();
    }
}

impl Domain for SmmuDomain {
    fn leaves(&self, iova: u64, len: u64, f: &mut dyn FnMut(crate::Leaf)) -> bool {
        self.table.leaves(iova, len, f);
        true
    }

    fn dirty_ops(&self) -> Option<&dyn DirtyOps> {
        self.cfg.hd.then_some(self as &dyn DirtyOps)
    }

    fn enforce_cache_coherency(&self) -> bool {
        self.enforce_cc.load(Ordering::Acquire)
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.cfg.pgsize_bitmap
    }

    /// `geometry.aperture_end = (1 << pgtbl_cfg.ias) - 1`.
    fn aperture(&self) -> Aperture {
        Aperture { start: 0, last: self.last }
    }

    /// `arm_lpae_map_pages()` under the iommu core's loop:
    /// - `EINVAL`: a page size not in the domain's bitmap, or addresses not
    ///   aligned to it (the core's check);
    /// - then per table: `ERANGE` for an IOVA beyond the input size or a
    ///   physical address beyond the output size, `EINVAL` for neither read
    ///   nor write, `EEXIST` for a leaf in the way (nothing of that table's
    ///   run is written), `ENOMEM` for a table that cannot be allocated.
    ///
    /// The error carries the bytes mapped by earlier tables.
    fn map_pages(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)> {
        let level = self.level_for(pgsize).ok_or((Errno::EINVAL, 0))?;
        if (iova | paddr) & (pgsize - 1) != 0 {
            return Err((Errno::EINVAL, 0));
        }
        // The table's quirk, as io-pgtable's configuration applies it.
        let quirk = match self.cfg.stage {
            Stage::S1 => self.cfg.hd,
            Stage::S2 => self.cfg.fwb,
        };
        let prot = if quirk { prot | QUIRK } else { Prot(prot.0 & !QUIRK.0) };
        let mut done = 0u64;
        while done < pgcount {
            let (cur, pcur) = (iova.wrapping_add(done * pgsize), paddr.wrapping_add(done * pgsize));
            if cur >> self.cfg.ias != 0 || pcur >> self.cfg.oas != 0 || cur < iova || pcur < paddr {
                return Err((Errno::ERANGE, done * pgsize));
            }
            if !prot.contains(Prot::READ) && !prot.contains(Prot::WRITE) {
                return Err((Errno::EINVAL, done * pgsize));
            }
            let n = self.to_table_end(cur, level).min(pgcount - done);
            self.map_chunk(cur, pcur, level, n, prot).map_err(|e| (e, done * pgsize))?;
            done += n;
        }
        Ok(())
    }

    /// `arm_lpae_unmap_pages()` under the iommu core's loop: nothing for a
    /// page size not in the bitmap, a zero count or an IOVA beyond the
    /// input size; otherwise leaves (and tables, whole) are removed from
    /// `iova` on, a block larger than `pgsize` is split first, and the
    /// unmap stops at the first empty entry (the driver WARNs), returning
    /// the bytes unmapped before it.
    fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
        let Some(target) = self.level_for(pgsize) else { return 0 };
        if pgcount == 0 || iova & (pgsize - 1) != 0 {
            return 0;
        }
        let mut done = 0u64;
        'outer: while done < pgcount {
            let cur = iova.wrapping_add(done * pgsize);
            if cur >> self.cfg.ias != 0 || cur < iova {
                break;
            }
            let run = self.to_table_end(cur, target).min(pgcount - done);
            match self.table.lookup(cur) {
                Lookup::OutOfRange => break,
                Lookup::Hole { level } if level >= target => break,
                Lookup::Leaf { level, .. } if level > target => {
                    // Split one level down; at the target level, leave the
                    // run's slots empty.
                    let child = level - 1;
                    let first = self.index(cur, child) as usize;
                    let entries = table_entries(self.cfg.granule_shift);
                    let n = if child == target { (entries - first as u64).min(pgcount - done) as usize } else { 0 };
                    let split = self.table.split_leaf(cur, level, |i, old| {
                        if i >= first && i < first + n {
                            0
                        } else {
                            split_child(self.cfg.granule_shift, old, child, i)
                        }
                    });
                    match split {
                        Ok(true) => done += n as u64,
                        _ => break,
                    }
                }
                _ if target == 0 => {
                    let k = self.table.clear_leaf_run(cur, 0, run);
                    done += k;
                    if k < run {
                        break;
                    }
                }
                _ => {
                    for j in 0..run {
                        let slot = cur + j * pgsize;
                        match self.table.lookup(slot) {
                            Lookup::Hole { level } if level >= target => break 'outer,
                            Lookup::OutOfRange => break 'outer,
                            _ => {
                                self.table.unmap(slot, pgsize, 1);
                                done += 1;
                            }
                        }
                    }
                }
            }
        }
        if done != 0 {
            self.flush_nested();
        }
        done * pgsize
    }

    /// `arm_lpae_iova_to_phys()`: the leaf's address, whatever its
    /// permissions.
    fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        if iova > self.last {
            return None;
        }
        let (entry, level) = self.table.walk(iova)?;
        let size = self.size(level);
        Some((entry & desc::ADDR & !(size - 1)) | (iova & (size - 1)))
    }

    /// A DMA access (unprivileged, data): stage 1 needs AP\[1\] (EL0 access)
    /// and, for a write, AP\[2\] clear or DBM set (a write to a
    /// writable-clean leaf makes it dirty: AP\[2\] cleared atomically);
    /// stage 2 needs S2AP. The stage 2 nesting walk's `translate_leaf`
    /// reads the same grants.
    #[inline]
    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        if iova > self.last {
            return Err(Fault::OutOfRange);
        }
        // The leaf's grant is already EL0's (`LpaeFormat::leaf_prot`); only
        // a write into a dirty-tracking stage 1 may have to update the leaf.
        if !self.cfg.hd || access == Access::Read {
            return self.table.translate(iova, access);
        }
        self.translate_write_hd(iova, access)
    }
}

impl SmmuDomain {
    /// A write into a dirty-tracking stage 1, out of line: a writable-clean
    /// leaf becomes dirty (AP\[2\] cleared).
    #[inline(never)]
    fn translate_write_hd(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        let (t, entry) = self.table.translate_entry(iova, access)?;
        if entry & (desc::AP_RDONLY | desc::DBM) == desc::AP_RDONLY | desc::DBM {
            self.table.clear_leaf_bits(iova, desc::AP_RDONLY);
        }
        Ok(t)
    }
}

impl DirtyOps for SmmuDomain {
    /// `arm_smmu_set_dirty_tracking()`: always on for a domain with dirty
    /// ops ("the dirty bitmap is cleared prior to set_dirty_tracking()").
    fn set_dirty_tracking(&self, _enable: bool) -> Result<(), Errno> {
        if !self.cfg.hd {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// `arm_lpae_read_and_clear_dirty()`: `EINVAL` for an empty range, one
    /// beyond the input size, a stage 2 table, or an empty entry on the
    /// way (`WARN_ON(!iopte_table())`); otherwise from `iova`, leaf by
    /// leaf, each writable-dirty leaf is reported as `(position, leaf
    /// size)` and made writable-clean unless `no_clear`.
    fn read_and_clear_dirty(
        &self,
        iova: u64,
        length: u64,
        no_clear: bool,
        mut record: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<(), Errno> {
        if length == 0 || self.cfg.stage != Stage::S1 {
            return Err(Errno::EINVAL);
        }
        let end = iova.checked_add(length).ok_or(Errno::EINVAL)?;
        if (end - 1) > self.last {
            return Err(Errno::EINVAL);
        }
        let mut cur = iova;
        while cur < end {
            let (entry, level) = match self.table.lookup(cur) {
                Lookup::Leaf { entry, level } => (entry, level),
                _ => return Err(Errno::EINVAL),
            };
            let mut dirty = entry & (desc::AP_RDONLY | desc::DBM) == desc::DBM;
            if dirty && !no_clear {
                dirty = self
                    .table
                    .set_leaf_bits(cur, desc::AP_RDONLY)
                    .is_some_and(|(old, _)| old & (desc::AP_RDONLY | desc::DBM) == desc::DBM);
            }
            let size = self.size(level);
            if dirty {
                if let Some(r) = record.as_mut() {
                    r(cur, size);
                }
            }
            match cur.checked_add(size) {
                Some(next) => cur = next,
                None => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::info::DriverParams;
    use crate::smmuv3::regs::{SmmuRegs, TTF_AARCH32_64};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const K4: u64 = SZ_4K;
    const M2: u64 = SZ_2M;
    const G1: u64 = SZ_1G;
    const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);
    const RWC: Prot = Prot(Prot::READ.0 | Prot::WRITE.0 | Prot::CACHE.0);

    fn info() -> SmmuInfo {
        SmmuInfo::from_regs(SmmuRegs::default()).unwrap()
    }

    fn domain(stage: Stage, dirty: bool, nest_parent: bool) -> SmmuDomain {
        let cfg = DomainConfig::for_unit(&info(), stage, dirty, nest_parent).unwrap();
        let pool = IdPool::new(1, 255, Errno::ENOSPC);
        SmmuDomain::new(cfg, 0, pool.alloc().unwrap(), Arc::new(Tlb::new())).unwrap()
    }

    #[test]
    fn id_pools() {
        let p = IdPool::new(1, 3, Errno::EBUSY);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        let c = p.alloc().unwrap();
        assert_eq!((a.id(), b.id(), c.id()), (1, 2, 3));
        assert_eq!(p.alloc().err(), Some(Errno::EBUSY));
        drop(b);
        assert_eq!(p.alloc().unwrap().id(), 2);
        assert_eq!(p.in_use(), 2);
        assert_eq!(format!("{a:?}"), "IdLease(1)");
    }

    #[test]
    fn configurations() {
        let i = info();
        let s1 = DomainConfig::for_unit(&i, Stage::S1, false, false).unwrap();
        assert_eq!((s1.ias, s1.oas, s1.levels, s1.start_level, s1.pgd_bits), (48, 48, 4, 0, 9));
        assert_eq!(s1.pgsize_bitmap, K4 | M2 | G1);
        assert!(s1.coherent_walk && !s1.hd && !s1.fwb);
        assert!(DomainConfig::for_unit(&i, Stage::S1, true, false).unwrap().hd);
        let s2 = DomainConfig::for_unit(&i, Stage::S2, false, true).unwrap();
        assert!(s2.fwb && s2.nest_parent);
        assert!(!DomainConfig::for_unit(&i, Stage::S2, false, false).unwrap().fwb);
        assert_eq!(DomainConfig::for_unit(&i, Stage::S2, true, false), Err(Errno::EOPNOTSUPP));
        // A 39-bit kernel: 3-level stage 1.
        let p = DriverParams { va_bits: 39, ..Default::default() };
        let i39 = SmmuInfo::new(SmmuRegs::default(), p).unwrap();
        let c = DomainConfig::for_unit(&i39, Stage::S1, false, false).unwrap();
        assert_eq!((c.ias, c.levels, c.start_level), (39, 3, 1));
        // A 40-bit OAS: stage 2 input 40 bits, 4 levels of index, but two
        // concatenated level 1 tables.
        let r = SmmuRegs::builder().table_formats(TTF_AARCH32_64).oas_bits(40).build();
        let c = DomainConfig::for_unit(&SmmuInfo::from_regs(r).unwrap(), Stage::S2, false, false).unwrap();
        assert_eq!((c.ias, c.oas, c.levels, c.start_level, c.pgd_bits), (40, 40, 4, 1, 10));
        assert_eq!(c.tcr().sl, 1);
        // A 36-bit OAS: a 3-level stage 2 of 36 bits; stage 1 keeps 48
        // bits in, 36 out.
        let i36 = SmmuInfo::from_regs(SmmuRegs::builder().oas_bits(36).build()).unwrap();
        let c = DomainConfig::for_unit(&i36, Stage::S2, false, false).unwrap();
        assert_eq!((c.ias, c.oas, c.levels, c.start_level, c.pgd_bits), (36, 36, 3, 1, 6));
        let c = DomainConfig::for_unit(&i36, Stage::S1, false, false).unwrap();
        assert_eq!((c.ias, c.oas), (48, 36));
        // 64KB-only SMMU: the 64KB granule, 64KB pages and 512MB blocks, 3
        // levels (6 + 13 + 13 bits over 16) from level 1; TG0 0b01.
        let r = SmmuRegs::builder().granules(false, false, true).build();
        let c = DomainConfig::for_unit(&SmmuInfo::from_regs(r).unwrap(), Stage::S1, false, false).unwrap();
        assert_eq!((c.granule_shift, c.levels, c.start_level, c.pgd_bits), (16, 3, 1, 6));
        assert_eq!((c.pgsize_bitmap, c.tcr().tg), (SZ_64K | SZ_512M, cdf::TG0_64K));
        let c = DomainConfig::for_unit(&SmmuInfo::from_regs(r).unwrap(), Stage::S2, false, false).unwrap();
        // VTCR SL0 for a 64KB start at level 1: ~1 & 3 = 2.
        assert_eq!((c.start_level, c.tcr().sl), (1, 2));
        // 16KB-only: 16KB pages, 32MB blocks; a 48-bit stage 2 starts at
        // level 0 with a 1-bit table, which 7.3 must concatenate: two level
        // 1 tables (pgd 12 bits), SL0 ~1 & 3 = 2, TG 0b10.
        let r = SmmuRegs::builder().granules(false, true, false).build();
        let i16 = SmmuInfo::from_regs(r).unwrap();
        let c = DomainConfig::for_unit(&i16, Stage::S2, false, false).unwrap();
        assert_eq!((c.granule_shift, c.levels, c.start_level, c.pgd_bits), (14, 4, 1, 12));
        assert_eq!((c.pgsize_bitmap, c.tcr().sl, c.tcr().tg), (SZ_16K | SZ_32M, 2, cdf::TG0_16K));
        // ... while a stage 1 keeps its level 0 (no concatenation at stage 1).
        let c = DomainConfig::for_unit(&i16, Stage::S1, false, false).unwrap();
        assert_eq!((c.start_level, c.pgd_bits), (0, 1));
        // 4KB and 64KB: the host's 4KB is picked.
        assert_eq!(DomainConfig::for_unit(&i, Stage::S1, false, false).unwrap().granule_shift, 12);
        // Non-coherent walks: outer shareable, non-cacheable.
        let r = SmmuRegs::builder().coherent(false).build();
        let c = DomainConfig::for_unit(&SmmuInfo::from_regs(r).unwrap(), Stage::S1, false, false).unwrap();
        assert_eq!((c.tcr().sh, c.tcr().irgn, c.tcr().orgn), (2, 0, 0));
    }

    /// `arm_smmu_make_s1_cd()` by hand: T0SZ 16, TG0 4KB, IRGN0/ORGN0 WBWA
    /// (0x100 | 0x400), SH0 IS (0x3000), EPD1 (bit 30), V (bit 31), IPS
    /// 48-bit (5 << 32), AA64 (41), R (45), A (46), ASET (47), ASID 1 <<
    /// 48; HA|HD with dirty tracking; TTB0 the root; MAIR 0xf404ff44.
    #[test]
    fn cd_words_by_hand() {
        let d = domain(Stage::S1, false, false);
        let cd = d.make_cd(false).unwrap();
        assert_eq!(cd[0], 0x0001_e205_c000_3510);
        assert_eq!(cd[1], d.table().root_pa());
        assert_eq!(cd[3], 0xf404_ff44);
        assert_eq!(d.asid(), Some(1));
        assert_eq!(d.vmid(), None);
        let d = domain(Stage::S1, true, false);
        assert_eq!(d.make_cd(true).unwrap()[0], 0x0001_e205_c000_3510 | 1 << 42 | 1 << 43 | 1 << 44);
        assert!(d.make_ste(&info(), false, false).is_none());
    }

    /// `arm_smmu_make_s2_domain_ste()` by hand: word 0 V | Config 0b110;
    /// word 1 S2FWB (25) for the FWB parent, SHCFG incoming (1 << 44),
    /// EATS with ATS; word 2 VMID 1 | VTCR << 32 | S2AA64 | S2PTW | S2R,
    /// VTCR = T0SZ 16 | SL0 2 << 6 | IR0 1 << 8 | OR0 1 << 10 | SH0 3 << 12
    /// | TG 0 | PS 5 << 16 = 0x53590; word 3 the root.
    #[test]
    fn ste_words_by_hand() {
        let d = domain(Stage::S2, false, true);
        assert_eq!(d.config().vtcr(), 0x5_3590);
        let ste = d.make_ste(&info(), true, false).unwrap();
        assert_eq!(ste[0], 0xd);
        assert_eq!(ste[1], 1 << 25 | 1 << 44 | 1 << 28);
        assert_eq!(ste[2], 1 | 0x5_3590 << 32 | 1 << 51 | 1 << 54 | 1 << 58);
        assert_eq!(ste[2], 0x044d_3590_0000_0001);
        assert_eq!(ste[3], d.table().root_pa());
        assert_eq!(d.vmid(), Some(1));
        assert!(d.make_cd(false).is_none());
        let plain = domain(Stage::S2, false, false);
        assert_eq!(plain.make_ste(&info(), false, true).unwrap()[1], 1 << 44);
        assert_ne!(plain.make_ste(&info(), false, true).unwrap()[2] & stef::S2S, 0);
    }

    #[test]
    fn leaves_written_by_the_domain() {
        let d = domain(Stage::S2, false, true);
        d.map_pages(M2, 0x1_0000_0000, M2, 1, RWC).unwrap();
        // FWB parent: MemAttr 0b0110.
        assert_eq!(d.entry_at(M2).unwrap(), (0x1_0000_0000 | 0x1 | 0x18 | 0xc0 | 0x300 | 0x400, 1));
        let t = d.translate(M2 + 0x123, Access::Write).unwrap();
        assert_eq!(t, Translation { paddr: 0x1_0000_0123, len: M2 - 0x123, prot: RWC });
        let d = domain(Stage::S1, false, false);
        d.map_pages(0, 0x5000, K4, 1, Prot::READ | Prot::CACHE).unwrap();
        assert_eq!(d.entry_at(0).unwrap().0, 0x5000 | 0x3 | 0x4 | 0x40 | 0x80 | 0x300 | 0x400 | 0x800);
        assert_eq!(d.translate(0, Access::Write), Err(Fault::Permission));
        assert_eq!(d.translate(0, Access::Read).unwrap().prot, Prot::READ | Prot::CACHE);
        // A privileged mapping: EL0 (DMA without PASID) cannot use it.
        d.map_pages(K4, 0x6000, K4, 1, RW | Prot::PRIV).unwrap();
        assert_eq!(d.translate(K4, Access::Read), Err(Fault::Permission));
        assert_eq!(d.iova_to_phys(K4 + 8), Some(0x6008));
    }

    #[test]
    fn map_errors_follow_io_pgtable() {
        let d = domain(Stage::S2, false, false);
        assert_eq!(d.aperture(), Aperture { start: 0, last: (1 << 48) - 1 });
        assert_eq!(d.map_pages(0, 0, 8192, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(0, 0, 1 << 39, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(K4, 0, M2, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(0, 0, K4, 1, Prot::CACHE), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(1 << 48, 0, K4, 1, RW), Err((Errno::ERANGE, 0)));
        assert_eq!(d.map_pages(0, 1 << 48, K4, 1, RW), Err((Errno::ERANGE, 0)));
        // Crossing the top of the input range: the last table maps, the
        // next call fails.
        assert_eq!(d.map_pages((1 << 48) - 2 * K4, 0, K4, 4, RW), Err((Errno::ERANGE, 2 * K4)));
        assert!(d.translate((1 << 48) - K4, Access::Read).is_ok());
        assert_eq!(d.map_pages(0, 0, K4, 0, RW), Ok(()));
        // A leaf in the way: nothing of that table is written, earlier
        // tables stay mapped (the core unmaps them).
        d.map_pages(M2 + 4 * K4, 0, K4, 1, RW).unwrap();
        assert_eq!(d.map_pages(M2 - 2 * K4, 0, K4, 8, RW), Err((Errno::EEXIST, 2 * K4)));
        assert!(d.translate(M2 - K4, Access::Read).is_ok());
        assert!(d.translate(M2, Access::Read).is_err());
        assert!(d.translate(M2 + 3 * K4, Access::Read).is_err());
        // A block over a bigger block, a page under a block.
        d.map_pages(G1, 0, G1, 1, RW).unwrap();
        assert_eq!(d.map_pages(G1 + M2, 0, M2, 1, RW), Err((Errno::EEXIST, 0)));
        assert_eq!(d.map_pages(G1 + K4, 0, K4, 1, RW), Err((Errno::EEXIST, 0)));
        // A block over a table replaces it, mappings under it included.
        d.map_pages(4 * M2, 0x8000, K4, 3, RW).unwrap();
        d.map_pages(4 * M2, 0x4000_0000, M2, 1, RW).unwrap();
        assert_eq!(d.entry_at(4 * M2 + K4).unwrap().1, 1);
        assert_eq!(d.translate(4 * M2 + K4, Access::Read).unwrap().paddr, 0x4000_1000);
    }

    #[test]
    fn unmap_splits_blocks_and_stops_at_holes() {
        let d = domain(Stage::S1, false, false);
        d.map_pages(G1, 0x8000_0000, G1, 1, RW).unwrap();
        // 4KB out of the middle of a 1GB block: split 1GB -> 2MB -> 4KB.
        assert_eq!(d.unmap_pages(G1 + M2 + 5 * K4, K4, 2), 2 * K4);
        assert_eq!(d.translate(G1 + M2 + 5 * K4, Access::Read), Err(Fault::NotPresent));
        assert_eq!(d.translate(G1 + M2 + 7 * K4, Access::Read).unwrap().paddr, 0x8000_0000 + M2 + 7 * K4);
        assert_eq!(d.entry_at(G1 + M2 + 7 * K4).unwrap().1, 0);
        assert_eq!(d.entry_at(G1 + 3 * M2).unwrap().1, 1);
        assert_eq!(d.translate(G1 + G1 - 1, Access::Read).unwrap().paddr, 0x8000_0000 + G1 - 1);
        // The split leaves keep the block's attributes.
        let (e, _) = d.entry_at(G1 + M2).unwrap();
        assert_eq!(e & !desc::ADDR, d.table().prot_to_pte(RW) | 0x3);
        // A 2MB unmap of a 2MB leaf from the split.
        assert_eq!(d.unmap_pages(G1 + 2 * M2, M2, 1), M2);
        // An unmap stops at the hole it meets.
        assert_eq!(d.unmap_pages(G1 + M2, K4, 8), 5 * K4);
        assert_eq!(d.unmap_pages(G1 + M2, K4, 1), 0);
        assert_eq!(d.unmap_pages(0, K4, 1), 0);
        assert_eq!(d.unmap_pages(0, 8192, 1), 0);
        assert_eq!(d.unmap_pages(1 << 48, K4, 1), 0);
        // A 2MB unmap over a table of pages removes the table's pages.
        d.map_pages(0, 0x1000, K4, 3, RW).unwrap();
        assert_eq!(d.unmap_pages(0, M2, 1), M2);
        assert!(d.translate(0, Access::Read).is_err());
        // ... and over a table emptied by earlier unmaps too (it is still
        // an entry); then a hole at the 2MB level stops it.
        assert_eq!(d.unmap_pages(0, M2, 2), M2);
    }

    #[test]
    fn nest_parent_unmap_flushes_its_vmid() {
        let d = domain(Stage::S2, false, true);
        let vmid = d.vmid().unwrap();
        d.map_pages(0, 0, K4, 4, RW).unwrap();
        let tlb = Arc::clone(&d.tlb);
        assert!(tlb.insert(tlb.generation(), vmid, 3, false, 0x7000, 12, 1));
        assert!(tlb.insert(tlb.generation(), vmid + 1, 3, false, 0x7000, 12, 1));
        assert_eq!(d.unmap_pages(0, K4, 1), K4);
        assert!(tlb.lookup(vmid, 3, 0x7000).is_none());
        assert!(tlb.lookup(vmid + 1, 3, 0x7000).is_some());
        // Nothing unmapped: no flush.
        assert!(tlb.insert(tlb.generation(), vmid, 3, false, 0x7000, 12, 1));
        assert_eq!(d.unmap_pages(M2, K4, 1), 0);
        assert!(tlb.lookup(vmid, 3, 0x7000).is_some());
        drop(d);
        assert!(tlb.lookup(vmid, 3, 0x7000).is_none());
    }

    #[test]
    fn dirty_tracking_with_dbm() {
        let d = domain(Stage::S1, true, false);
        let ops = d.dirty_ops().unwrap();
        assert_eq!(ops.set_dirty_tracking(true), Ok(()));
        d.map_pages(0, 0x10_0000, K4, 4, RW).unwrap();
        d.map_pages(M2, 4 * M2, M2, 1, RW).unwrap();
        d.map_pages(2 * M2, 0x1000, K4, 1, Prot::READ).unwrap();
        // Harvests cover mapped ranges only (iommufd walks its areas).
        let harvest = |no_clear: bool| {
            let mut seen = Vec::new();
            ops.read_and_clear_dirty(0, 4 * K4, no_clear, Some(&mut |i, s| seen.push((i, s)))).unwrap();
            ops.read_and_clear_dirty(M2, M2, no_clear, Some(&mut |i, s| seen.push((i, s)))).unwrap();
            seen
        };
        // Fresh writable leaves are writable-dirty.
        assert_eq!(harvest(true), vec![(0, K4), (K4, K4), (2 * K4, K4), (3 * K4, K4), (M2, M2)]);
        assert_eq!(harvest(false).len(), 5);
        assert!(harvest(false).is_empty());
        // Clean leaves are writable-clean: AP[2] and DBM.
        let (e, _) = d.entry_at(K4).unwrap();
        assert_eq!(e & (desc::AP_RDONLY | desc::DBM), desc::AP_RDONLY | desc::DBM);
        // Writes dirty them, reads do not.
        d.translate(K4 + 8, Access::Write).unwrap();
        d.translate(2 * K4, Access::Read).unwrap();
        d.translate(M2 + 0x5000, Access::Write).unwrap();
        assert_eq!(harvest(false), vec![(K4, K4), (M2, M2)]);
        // Read-only leaves are never dirty; a range over a hole is EINVAL.
        let mut n = 0;
        assert_eq!(ops.read_and_clear_dirty(2 * M2, K4, false, Some(&mut |_, _| n += 1)), Ok(()));
        assert_eq!(n, 0);
        assert_eq!(ops.read_and_clear_dirty(0, 3 * M2, false, None), Err(Errno::EINVAL));
        assert_eq!(ops.read_and_clear_dirty(0, 0, false, None), Err(Errno::EINVAL));
        assert_eq!(ops.read_and_clear_dirty((1 << 48) - K4, 2 * K4, false, None), Err(Errno::EINVAL));
        // Without HD: no dirty ops, no DBM.
        let plain = domain(Stage::S1, false, false);
        assert!(plain.dirty_ops().is_none());
        assert_eq!(DirtyOps::set_dirty_tracking(&plain, true), Err(Errno::EINVAL));
        let s2 = domain(Stage::S2, false, false);
        assert_eq!(DirtyOps::read_and_clear_dirty(&s2, 0, K4, false, None), Err(Errno::EINVAL));
    }

    #[test]
    fn translate_leaf_for_nesting() {
        let d = domain(Stage::S2, false, true);
        d.map_pages(0, 0x1_0000_0000, M2, 2, RWC).unwrap();
        d.map_pages(4 * M2, 0x2_0000_0000, K4, 1, Prot::READ | Prot::CACHE).unwrap();
        let (t, shift) = d.translate_leaf(M2 + 0x10, Access::Read).unwrap();
        assert_eq!((t.paddr, shift), (0x1_0020_0010, 21));
        assert_eq!(d.translate_leaf(4 * M2, Access::Write), Err(Fault::Permission));
        assert_eq!(d.translate_leaf(4 * M2, Access::Read).unwrap().1, 12);
        assert_eq!(d.translate_leaf(8 * M2, Access::Read), Err(Fault::NotPresent));
        assert_eq!(d.translate_leaf(1 << 48, Access::Read), Err(Fault::OutOfRange));
        assert!(d.set_enforce_cache_coherency(true));
        assert!(d.enforce_cache_coherency());
    }

    // ---- property test against a reference model, for every granule ----

    /// Operations in units of the granule: `big` picks the first block size
    /// (2MB, 32MB, 512MB) over the page; slots fall in a window of four
    /// blocks so operations collide.
    #[derive(Clone, Debug)]
    enum Op {
        Map { slot: u64, pslot: u64, big: bool, count: u64, write: bool },
        Unmap { slot: u64, big: bool, count: u64 },
        Translate { at: u64, write: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        let big = prop_oneof![4 => Just(false), 1 => Just(true)];
        prop_oneof![
            (big.clone(), any::<u64>(), 0u64..512, 1u64..24, any::<bool>())
                .prop_map(|(big, slot, pslot, count, write)| Op::Map { slot, pslot, big, count, write }),
            (big, any::<u64>(), 1u64..40).prop_map(|(big, slot, count)| Op::Unmap { slot, big, count }),
            (any::<u64>(), any::<bool>()).prop_map(|(at, write)| Op::Translate { at, write }),
        ]
    }

    /// The reference: pages, IOVA page -> (paddr page, writable); and what
    /// each block slot holds: a block (`true`) or a table (`false`,
    /// possibly empty: the model keeps tables an unmap emptied).
    struct Model {
        page: u64,
        block: u64,
        entries: u64,
        pages: BTreeMap<u64, (u64, bool)>,
        blocks: BTreeMap<u64, bool>,
    }

    impl Model {
        fn new(g: u32) -> Self {
            let entries = 1u64 << (g - 3);
            Model { page: 1 << g, block: (1 << g) * entries, entries, pages: BTreeMap::new(), blocks: BTreeMap::new() }
        }
        fn block_of(&self, i: u64) -> u64 {
            i & !(self.block - 1)
        }
        fn to_table_end(&self, cur: u64) -> u64 {
            self.entries - ((cur / self.page) & (self.entries - 1))
        }
        fn map(&mut self, iova: u64, paddr: u64, size: u64, count: u64, w: bool) -> Result<(), (Errno, u64)> {
            let mut done = 0;
            while done < count {
                let cur = iova + done * size;
                // A call covers the rest of one table (the window is inside
                // one table of blocks).
                let run = if size == self.page { self.to_table_end(cur).min(count - done) } else { count - done };
                // Leaf check over the run first; a block wipes the table
                // it replaces as the check goes.
                for n in 0..run {
                    let c = cur + n * size;
                    let b = self.block_of(c);
                    if self.blocks.get(&b) == Some(&true) {
                        return Err((Errno::EEXIST, done * size));
                    }
                    if size == self.page && self.pages.contains_key(&c) {
                        return Err((Errno::EEXIST, done * size));
                    }
                    if size == self.block {
                        let block = self.block;
                        self.pages.retain(|&k, _| k & !(block - 1) != c);
                    }
                }
                for n in 0..run {
                    let c = cur + n * size;
                    let p = paddr + (done + n) * size;
                    if size == self.block {
                        self.blocks.insert(c, true);
                        for q in 0..self.entries {
                            self.pages.insert(c + q * self.page, (p + q * self.page, w));
                        }
                    } else {
                        let b = self.block_of(c);
                        self.blocks.entry(b).or_insert(false);
                        self.pages.insert(c, (p, w));
                    }
                }
                done += run;
            }
            Ok(())
        }
        fn unmap(&mut self, iova: u64, size: u64, count: u64) -> u64 {
            let mut done = 0;
            while done < count {
                let cur = iova + done * size;
                let b = self.block_of(cur);
                match self.blocks.get(&b).copied() {
                    None => break,
                    Some(true) if size == self.page => {
                        // Split, then clear the run to the table's end.
                        self.blocks.insert(b, false);
                        let run = self.to_table_end(cur).min(count - done);
                        for n in 0..run {
                            self.pages.remove(&(cur + n * self.page));
                        }
                        done += run;
                    }
                    Some(block) if size == self.block => {
                        let bs = self.block;
                        self.pages.retain(|&k, _| k & !(bs - 1) != b);
                        if block {
                            self.blocks.remove(&b);
                        }
                        done += 1;
                    }
                    Some(_) => {
                        if self.pages.remove(&cur).is_none() {
                            break;
                        }
                        done += 1;
                    }
                }
            }
            done * size
        }
    }

    /// A domain of `stage` with a `2^g` granule (an SMMU with that one).
    fn domain_with_granule(stage: Stage, g: u32) -> SmmuDomain {
        let r = SmmuRegs::builder().granules(g == 12, g == 14, g == 16).build();
        let cfg = DomainConfig::for_unit(&SmmuInfo::from_regs(r).unwrap(), stage, false, false).unwrap();
        assert_eq!(cfg.granule_shift, g);
        let pool = IdPool::new(1, 255, Errno::ENOSPC);
        SmmuDomain::new(cfg, 0, pool.alloc().unwrap(), Arc::new(Tlb::new())).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn domain_matches_reference(
            ops in proptest::collection::vec(op(), 1..50),
            s2 in any::<bool>(),
            g in prop_oneof![Just(12u32), Just(14u32), Just(16u32)],
        ) {
            let d = domain_with_granule(if s2 { Stage::S2 } else { Stage::S1 }, g);
            let mut m = Model::new(g);
            let window = 4 * m.block;
            for op in &ops {
                match *op {
                    Op::Map { slot, pslot, big, count, write } => {
                        let size = if big { m.block } else { m.page };
                        let count = if big { count % 2 + 1 } else { count };
                        let (iova, paddr) = ((slot % (window / size)) * size, (pslot + 1) * size);
                        let prot = if write { RWC } else { Prot::READ | Prot::CACHE };
                        let got = d.map_pages(iova, paddr, size, count, prot);
                        let want = m.map(iova, paddr, size, count, write);
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                    Op::Unmap { slot, big, count } => {
                        let size = if big { m.block } else { m.page };
                        let count = if big { count % 2 + 1 } else { count };
                        let iova = (slot % (window / size)) * size;
                        let got = d.unmap_pages(iova, size, count);
                        let want = m.unmap(iova, size, count);
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                    Op::Translate { at, write } => {
                        let iova = at % window;
                        let access = if write { Access::Write } else { Access::Read };
                        let got = d.translate(iova, access).map(|t| t.paddr);
                        let want = match m.pages.get(&(iova & !(m.page - 1))) {
                            None => Err(Fault::NotPresent),
                            Some(&(_, false)) if write => Err(Fault::Permission),
                            Some(&(p, _)) => Ok(p + (iova & (m.page - 1))),
                        };
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                }
            }
            // Every leaf is the io-pgtable encoding of its page.
            let mut n = 0u64;
            d.table().for_each_leaf(0, 2 * window, |i, level, e| {
                let size = m.page << ((g - 3) * level);
                for q in 0..size / m.page {
                    let (p, w) = m.pages[&(i + q * m.page)];
                    let prot = if w { RWC } else { Prot::READ | Prot::CACHE };
                    let ty = if level == 0 { 0b11 } else { 0b01 };
                    if q == 0 {
                        assert_eq!(e, d.table().prot_to_pte(prot) | ty | p, "leaf at {i:#x}");
                    }
                    n += 1;
                }
            });
            prop_assert_eq!(n, m.pages.len() as u64);
        }
    }

    /// Warm walk and 256 x 4KB map/unmap costs. Run with
    /// `cargo test -p uiommufd-hw --release -- --ignored --nocapture timing`.
    #[test]
    #[ignore]
    fn timing_smmu_domain() {
        for stage in [Stage::S1, Stage::S2] {
            let d = domain(stage, false, false);
            const N: u64 = 10_000_000;
            d.map_pages(0, 1 << 32, K4, 1024, RWC).unwrap();
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
                d.map_pages(iova, 1 << 32, K4, 256, RWC).unwrap();
                let t1 = std::time::Instant::now();
                assert_eq!(d.unmap_pages(iova, K4, 256), 256 * K4);
                let t2 = std::time::Instant::now();
                map_ns += (t1 - t0).as_nanos();
                unmap_ns += (t2 - t1).as_nanos();
            }
            println!(
                "smmuv3 {stage:?} (4-level): warm walk {walk:.2} ns; map 256x4K {:.0} ns; unmap 256x4K {:.0} ns",
                map_ns as f64 / M as f64,
                unmap_ns as f64 / M as f64
            );
        }
    }
}
