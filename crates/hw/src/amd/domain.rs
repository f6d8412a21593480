//! The paging domains Linux 7.3's AMD driver allocates for iommufd
//! (`struct protection_domain`): v1 domains on the host table
//! (`amd_iommu_domain_alloc_paging_v1()`) and v2 domains on the x86-64
//! table (`amd_iommu_domain_alloc_paging_v2()`).
//!
//! Model of a v1 domain ([`AmdV1Domain`]):
//! - its protection domain ID (`amd_iommu_pdom_id_alloc()`) tags its IOTLB
//!   entries; its page sizes and aperture come from [`AmdInfo`];
//! - the table starts with 3 levels and grows its top on demand
//!   (`PT_FEAT_DYNAMIC_TOP`, `starting_level = 2`): the DTEs of attached
//!   devices are rewritten with the new root and Mode
//!   (`amd_iommu_change_top()`); the engine keeps the full six-level tree,
//!   whose entry-0 chain is exactly what the grown tables link;
//! - every PTE carries FC (`PT_FEAT_AMDV1_FORCE_COHERENCE`), so the domain
//!   enforces coherency;
//! - unmaps are followed by the flush the driver issues
//!   (`amd_iommu_iotlb_sync()` -> `domain_flush_pages_v1()`): an
//!   `INVALIDATE_IOMMU_PAGES` of the range for the domain ID, and one per
//!   host domain ID of the nested domains of every vIOMMU built on it;
//!   maps are flushed too when the IOMMU caches non-present entries
//!   (`amd_iommu_iotlb_sync_map()`);
//! - dirty tracking (allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` on a
//!   part with HDSup): enabling sets DTE.HAD on attached devices and
//!   flushes the domain (`amd_iommu_set_dirty_tracking()`); while on,
//!   translations set A and, for writes, D in the PTE they use, and a write
//!   hitting an IOTLB entry made before D was set walks again; harvesting
//!   reads D across all entries of a page and is followed by the
//!   `iommu_iotlb_sync()` iommufd issues.
//!
//! A v2 domain ([`AmdV2Domain`]) is the x86-64 table (4 or 5 levels, 4 KiB,
//! 2 MiB and 1 GiB pages), reached through each device's GCR3 table at
//! PASID 0 with GIoV. The format has no force-coherent bit; the driver
//! still answers `enforce_cache_coherency` true ("lie about
//! enforce_cache_coherencey", `amdv2_ops`), and [`Domain::forces_snoop`]
//! tells the truth. Its translations are not cached (hardware may always
//! miss), so nothing about it is ever stale.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_abi::Errno;

use super::cmd;
use super::device::AmdIommu;
use super::dte::Dte;
use super::info::AmdInfo;
use super::v1::V1Format;
use crate::pt::{Lookup, PageTable};
use crate::smmuv3::domain::IdLease;
use crate::x86_64::X86Format;
use crate::{Access, Aperture, DirtyOps, Domain, Fault, Prot, Translation};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// IOTLB data word: the cached page's physical address, and flags.
pub(crate) mod tlbdata {
    pub const R: u64 = 1 << 0;
    pub const W: u64 = 1 << 1;
    /// D was already set in the PTE when the entry was made.
    pub const D: u64 = 1 << 2;
    pub const FC: u64 = 1 << 3;
    pub const ADDR: u64 = !0xfff;
}

/// The IOTLB entry size for a leaf of 2^`leaf_shift` bytes: the largest of
/// 4 KiB, 2 MiB and 1 GiB that fits in it.
pub(crate) const fn tlb_shift(leaf_shift: u32) -> u32 {
    if leaf_shift >= 30 {
        30
    } else if leaf_shift >= 21 {
        21
    } else {
        12
    }
}

/// `amd_iommu_iotlb_sync_map()`: on an IOMMU that caches non-present
/// entries, flush what a map of `total` bytes at `iova` (ending in `r`)
/// wrote.
fn sync_map(unit: &AmdIommu, iova: u64, total: u64, r: &Result<(), (Errno, u64)>, flush: impl FnOnce(u64, u64)) {
    if !unit.info().params.np_cache {
        return;
    }
    let done = match r {
        Ok(()) => total,
        Err((_, d)) => *d,
    };
    if done != 0 {
        flush(iova, iova + done - 1);
    }
}

/// A vIOMMU's guest-to-host domain ID map (`aviommu->gdomid_array`): one
/// host domain ID per guest domain ID, held while nested domains use it.
#[derive(Default)]
pub struct GdomMap {
    map: Mutex<BTreeMap<u16, (IdLease, u32)>>,
}

impl GdomMap {
    /// `gdom_info_load_or_alloc_locked()` and the users count: the host
    /// domain ID of `gdom_id`, allocated for its first user.
    pub(crate) fn get(&self, unit: &AmdIommu, gdom_id: u16) -> Result<u16, Errno> {
        let mut map = lock(&self.map);
        if let Some((lease, users)) = map.get_mut(&gdom_id) {
            *users += 1;
            return Ok(lease.id());
        }
        // "hdom_id <= 0": ENOSPC.
        let lease = unit.domids().alloc().map_err(|_| Errno::ENOSPC)?;
        let hdom = lease.id();
        map.insert(gdom_id, (lease, 1));
        Ok(hdom)
    }

    /// `nested_domain_free()`: the last user frees the host domain ID.
    pub(crate) fn put(&self, gdom_id: u16) {
        let mut map = lock(&self.map);
        if let Some((_, users)) = map.get_mut(&gdom_id) {
            *users -= 1;
            if *users == 0 {
                map.remove(&gdom_id);
            }
        }
    }

    /// `(guest, host)` domain ID pairs in use.
    pub fn pairs(&self) -> Vec<(u16, u16)> {
        lock(&self.map).iter().map(|(&g, (l, _))| (g, l.id())).collect()
    }
}

/// A v1 (host table) protection domain.
pub struct AmdV1Domain {
    unit: Arc<AmdIommu>,
    id: IdLease,
    table: PageTable<V1Format>,
    /// Current top level (2..=5): Mode is this plus one.
    top: AtomicU32,
    pgsize_bitmap: u64,
    aperture_last: u64,
    /// Allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` (`dirty_ops`).
    dirty_ops: bool,
    /// `pdom->dirty_tracking`.
    dirty: AtomicBool,
    nest_parent: bool,
    /// Devices whose DTE points at this table (`pdom->dev_list`, and the
    /// nested domains' devices), by DeviceID.
    devices: Mutex<BTreeSet<u16>>,
    /// `pdom->viommu_list`.
    viommus: Mutex<Vec<Weak<GdomMap>>>,
}

impl core::fmt::Debug for AmdV1Domain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AmdV1Domain")
            .field("id", &self.id.id())
            .field("mode", &self.mode())
            .field("nest_parent", &self.nest_parent)
            .finish_non_exhaustive()
    }
}

impl AmdV1Domain {
    /// `amd_iommu_domain_alloc_paging_v1()`: `EOPNOTSUPP` without host
    /// translation, `ENOMEM` when no domain ID is left.
    pub fn new(unit: &Arc<AmdIommu>, dirty_tracking: bool, nest_parent: bool) -> Result<Self, Errno> {
        let info = unit.info();
        if info.hatdis {
            return Err(Errno::EOPNOTSUPP);
        }
        let id = unit.domids().alloc().map_err(|_| Errno::ENOMEM)?;
        let table = PageTable::new()?;
        // The starting 3-level table exists from the start (its root is
        // what a DTE points at before anything is mapped).
        table.node_pa(0, 2)?;
        Ok(AmdV1Domain {
            unit: Arc::clone(unit),
            id,
            table,
            top: AtomicU32::new(2),
            pgsize_bitmap: info.v1_pgsize_bitmap(),
            aperture_last: info.v1_aperture_last(),
            dirty_ops: dirty_tracking,
            dirty: AtomicBool::new(false),
            nest_parent,
            devices: Mutex::new(BTreeSet::new()),
            viommus: Mutex::new(Vec::new()),
        })
    }

    /// The protection domain ID.
    pub fn id(&self) -> u16 {
        self.id.id()
    }

    pub fn unit(&self) -> &Arc<AmdIommu> {
        &self.unit
    }

    pub fn table(&self) -> &PageTable<V1Format> {
        &self.table
    }

    pub fn is_nest_parent(&self) -> bool {
        self.nest_parent
    }

    /// DTE Mode: the levels of the table in use.
    pub fn mode(&self) -> u32 {
        V1Format::mode(self.top.load(Ordering::Acquire))
    }

    /// The physical address of the table the DTE points at.
    pub fn root(&self) -> u64 {
        self.table.node_pa(0, self.top.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Whether dirty tracking is on (`pdom->dirty_tracking`).
    pub fn dirty_tracking(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// The DTE `set_dte_v1()` programs for this domain, tagged `domid`
    /// (the domain's own ID, or a nested domain's host domain ID).
    pub fn dte(&self, domid: u16) -> Dte {
        Dte::v1(domid, self.root(), self.mode(), self.dirty_tracking())
    }

    pub(crate) fn attach_device(&self, devid: u16) {
        lock(&self.devices).insert(devid);
    }

    pub(crate) fn detach_device(&self, devid: u16) {
        lock(&self.devices).remove(&devid);
    }

    pub(crate) fn add_viommu(&self, map: &Arc<GdomMap>) {
        let mut v = lock(&self.viommus);
        v.retain(|w| w.strong_count() != 0);
        v.push(Arc::downgrade(map));
    }

    /// The host domain IDs of the nested domains built on this domain.
    pub fn hdom_ids(&self) -> Vec<u16> {
        if !self.nest_parent {
            return Vec::new();
        }
        lock(&self.viommus).iter().filter_map(Weak::upgrade).flat_map(|m| m.pairs()).map(|(_, h)| h).collect()
    }

    /// `amd_iommu_domain_flush_pages()` for `start..=last` and the
    /// completion wait after it: the domain's ID, then every host domain ID
    /// of its vIOMMUs (`iommu_flush_pages_v1_hdom_ids()`), GN=0.
    pub fn flush_pages(&self, start: u64, last: u64, flags: u64) {
        let inv = cmd::inv_iommu_pages(start, last, self.id(), 0, flags);
        let hdoms = self.hdom_ids();
        if hdoms.is_empty() {
            self.unit.issue(&[inv, self.unit.completion_wait_cmd()]);
            return;
        }
        let mut cmds = vec![inv];
        for h in hdoms {
            cmds.push(cmd::inv_iommu_pages(start, last, h, 0, flags));
        }
        cmds.push(self.unit.completion_wait_cmd());
        self.unit.issue(&cmds);
    }

    /// `amd_iommu_domain_flush_all()`.
    pub fn flush_all(&self) {
        self.flush_pages(0, u64::MAX, cmd::PAGES_PDE);
    }

    /// Grow the top until it covers `last` (`increase_top` in generic_pt)
    /// and tell the attached devices (`amd_iommu_change_top()`).
    fn grow_top(&self, last: u64) -> Result<(), Errno> {
        let want = V1Format::top_level_for(last);
        let cur = self.top.load(Ordering::Acquire);
        if want <= cur {
            return Ok(());
        }
        let _serial = lock(&self.devices);
        let cur = self.top.load(Ordering::Acquire);
        if want <= cur {
            return Ok(());
        }
        self.table.node_pa(0, want)?;
        self.top.store(want, Ordering::Release);
        let devices: Vec<u16> = _serial.iter().copied().collect();
        drop(_serial);
        for devid in devices {
            self.unit.update_dte_mode(devid, self.root(), self.mode());
        }
        Ok(())
    }

    /// Whether unmapping `iova..=last` frees a table (generic_pt frees a
    /// table whose whole span is unmapped; the flush then has PDE set).
    fn frees_a_table(&self, iova: u64, last: u64) -> bool {
        let mut checks = 0;
        for level in 1..=self.top.load(Ordering::Acquire) {
            let size = 1u64 << (12 + 9 * level);
            let mut block = (iova + size - 1) & !(size - 1);
            while block != 0 && block.checked_add(size - 1).is_some_and(|e| e <= last) {
                match self.table.lookup(block) {
                    Lookup::Leaf { level: l, .. } | Lookup::Hole { level: l } if l < level => return true,
                    _ => {}
                }
                checks += 1;
                if checks > 512 {
                    return true;
                }
                block += size;
            }
        }
        false
    }

    /// Translate `gpa` through the host table for a nested walk (no
    /// IOTLB: the model caches only the combined translation), setting A
    /// and D as HAD allows.
    pub(crate) fn translate_gpa(&self, gpa: u64, access: Access) -> Result<Translation, Fault> {
        if gpa > self.aperture_last {
            return Err(Fault::OutOfRange);
        }
        if self.dirty_tracking() {
            self.table.translate_and_mark(gpa, access)
        } else {
            self.table.translate(gpa, access)
        }
    }
}

impl Domain for AmdV1Domain {
    fn dirty_ops(&self) -> Option<&dyn DirtyOps> {
        self.dirty_ops.then_some(self as &dyn DirtyOps)
    }

    /// `amd_iommu_enforce_cache_coherency()`: "IOMMU_PTE_FC is always set".
    fn enforce_cache_coherency(&self) -> bool {
        true
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    fn aperture(&self) -> Aperture {
        Aperture { start: 0, last: self.aperture_last }
    }

    fn map_pages(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)> {
        if pgsize & self.pgsize_bitmap == 0 || !pgsize.is_power_of_two() {
            return Err((Errno::EINVAL, 0));
        }
        let total = pgsize.checked_mul(pgcount).ok_or((Errno::ERANGE, 0))?;
        if total == 0 {
            return Ok(());
        }
        let last = iova.checked_add(total - 1).filter(|&l| l <= self.aperture_last).ok_or((Errno::ERANGE, 0))?;
        self.grow_top(last).map_err(|e| (e, 0))?;
        // FC on every PTE (`PT_FEAT_AMDV1_FORCE_COHERENCE`).
        let r = self.table.map(iova, paddr, pgsize, pgcount, prot | Prot::CACHE);
        sync_map(&self.unit, iova, total, &r, |s, l| self.flush_pages(s, l, cmd::PAGES_PDE));
        r
    }

    fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
        let Some(total) = pgsize.checked_mul(pgcount).filter(|&t| t != 0) else { return 0 };
        let Some(last) = iova.checked_add(total - 1) else { return 0 };
        let pde = self.frees_a_table(iova, last);
        let n = self.table.unmap(iova, pgsize, pgcount);
        if n != 0 {
            self.flush_pages(iova, iova + n - 1, if pde { cmd::PAGES_PDE } else { 0 });
        }
        n
    }

    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        if iova > self.aperture_last {
            return Err(Fault::OutOfRange);
        }
        let tlb = self.unit.host_tlb();
        let id = self.id();
        let dirty = self.dirty_tracking();
        if let Some(hit) = tlb.lookup(id, 0, iova) {
            let d = hit.data;
            let write = access == Access::Write;
            // A write through an entry made before D was set walks again
            // to set it (while dirty tracking is on).
            if !(write && dirty && d & tlbdata::D == 0) {
                let mut prot = Prot::default();
                if d & tlbdata::R != 0 {
                    prot = prot | Prot::READ;
                }
                if d & tlbdata::W != 0 {
                    prot = prot | Prot::WRITE;
                }
                if d & tlbdata::FC != 0 {
                    prot = prot | Prot::CACHE;
                }
                let need = if write { Prot::WRITE } else { Prot::READ };
                if !prot.contains(need) {
                    return Err(Fault::Permission);
                }
                let off = iova & ((1u64 << hit.page_shift) - 1);
                return Ok(Translation { paddr: (d & tlbdata::ADDR) + off, len: (1u64 << hit.page_shift) - off, prot });
            }
        }
        let gen = tlb.generation();
        let t =
            if dirty { self.table.translate_and_mark(iova, access)? } else { self.table.translate(iova, access)? };
        // Cache no more than the leaf (gone meanwhile: do not cache).
        let Some((entry, level)) = self.table.walk(iova) else { return Ok(t) };
        let shift = tlb_shift(12 + 9 * level + <V1Format as crate::pt::Format>::leaf_contig_lg2(entry, level));
        let off = iova & ((1u64 << shift) - 1);
        let mut data = (t.paddr - off) & tlbdata::ADDR;
        if t.prot.contains(Prot::READ) {
            data |= tlbdata::R;
        }
        if t.prot.contains(Prot::WRITE) {
            data |= tlbdata::W;
        }
        if t.prot.contains(Prot::CACHE) {
            data |= tlbdata::FC;
        }
        if dirty && access == Access::Write {
            data |= tlbdata::D;
        }
        tlb.insert(gen, id, 0, iova, shift, data);
        Ok(t)
    }
}

impl DirtyOps for AmdV1Domain {
    /// `amd_iommu_set_dirty_tracking()`.
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno> {
        let devices: Vec<u16> = {
            let devs = lock(&self.devices);
            if self.dirty.load(Ordering::Acquire) == enable {
                return Ok(());
            }
            self.dirty.store(enable, Ordering::Release);
            devs.iter().copied().collect()
        };
        for &devid in &devices {
            self.unit.update_dte_had(devid, enable);
        }
        // "Flush IOTLB to mark IOPTE dirty on the next translation(s)".
        if !devices.is_empty() {
            self.flush_all();
        }
        Ok(())
    }

    /// generic_pt's `read_and_clear_dirty` (a page is dirty when any of
    /// its entries is), then the `iommu_iotlb_sync()` iommufd issues for
    /// the gathered range (everything when nothing was gathered, as
    /// `build_inv_address()` makes of an empty gather).
    fn read_and_clear_dirty(
        &self,
        iova: u64,
        length: u64,
        no_clear: bool,
        mut record: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<(), Errno> {
        let (mut start, mut last) = (u64::MAX, 0u64);
        self.table.read_and_clear_dirty(iova, length, !no_clear, |leaf, size, dirty| {
            if dirty {
                if let Some(r) = record.as_deref_mut() {
                    r(leaf, size);
                }
                start = start.min(leaf);
                last = last.max(leaf + (size - 1));
            }
        });
        self.flush_pages(start, last, 0);
        Ok(())
    }
}

/// The table of a v2 domain: 4 or 5 levels.
enum V2Table {
    L4(PageTable<X86Format<4>>),
    L5(PageTable<X86Format<5>>),
}

macro_rules! on_v2 {
    ($t:expr, |$pt:ident| $e:expr) => {
        match $t {
            V2Table::L4($pt) => $e,
            V2Table::L5($pt) => $e,
        }
    };
}

/// A v2 (x86-64 table) protection domain.
pub struct AmdV2Domain {
    unit: Arc<AmdIommu>,
    id: IdLease,
    table: V2Table,
    levels: u32,
    vasz: u32,
    /// Attached devices and the per-device domain ID of their GCR3 table
    /// (`gcr3_info->domid`).
    devices: Mutex<BTreeMap<u16, u16>>,
}

impl core::fmt::Debug for AmdV2Domain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AmdV2Domain").field("id", &self.id.id()).field("levels", &self.levels).finish_non_exhaustive()
    }
}

impl AmdV2Domain {
    /// `amd_iommu_domain_alloc_paging_v2()`: `EOPNOTSUPP` without v2
    /// tables, `ENOMEM` when no domain ID is left; 5 levels (56 address
    /// bits) when the guest table level is 5, else 4 (47).
    pub fn new(unit: &Arc<AmdIommu>) -> Result<Self, Errno> {
        let info: &AmdInfo = unit.info();
        if !info.v2_pgtbl_supported() {
            return Err(Errno::EOPNOTSUPP);
        }
        let id = unit.domids().alloc().map_err(|_| Errno::ENOMEM)?;
        let (table, levels) =
            if info.gpt_level == 5 { (V2Table::L5(PageTable::new()?), 5) } else { (V2Table::L4(PageTable::new()?), 4) };
        Ok(AmdV2Domain {
            unit: Arc::clone(unit),
            id,
            table,
            levels,
            vasz: info.v2_vasz(),
            devices: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn id(&self) -> u16 {
        self.id.id()
    }

    pub fn unit(&self) -> &Arc<AmdIommu> {
        &self.unit
    }

    /// 4 or 5.
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// GCR3\[0\]'s table root.
    pub fn root(&self) -> u64 {
        on_v2!(&self.table, |pt| pt.root_pa())
    }

    pub(crate) fn attach_device(&self, devid: u16, domid: u16) {
        lock(&self.devices).insert(devid, domid);
    }

    pub(crate) fn detach_device(&self, devid: u16) {
        lock(&self.devices).remove(&devid);
    }

    /// `domain_flush_pages_v2()` and the completion wait: one GN=1
    /// invalidation of PASID 0 per attached device's domain ID.
    pub fn flush_pages(&self, start: u64, last: u64, flags: u64) {
        let mut cmds: Vec<cmd::Command> = lock(&self.devices)
            .values()
            .map(|&domid| cmd::inv_iommu_pages(start, last, domid, 0, flags | cmd::PAGES_GN))
            .collect();
        cmds.push(self.unit.completion_wait_cmd());
        self.unit.issue(&cmds);
    }

    pub fn flush_all(&self) {
        self.flush_pages(0, u64::MAX, cmd::PAGES_PDE);
    }
}

impl Domain for AmdV2Domain {
    /// What the driver answers (see the module notes): true.
    fn enforce_cache_coherency(&self) -> bool {
        true
    }

    /// The v2 format has no FC bit: No Snoop requests are not snooped.
    fn forces_snoop(&self) -> bool {
        false
    }

    fn pgsize_bitmap(&self) -> u64 {
        super::info::AMD_IOMMU_PGSIZES_V2
    }

    fn aperture(&self) -> Aperture {
        Aperture { start: 0, last: (1u64 << self.vasz) - 1 }
    }

    fn map_pages(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)> {
        let total = pgsize.checked_mul(pgcount).ok_or((Errno::ERANGE, 0))?;
        let fits = match iova.checked_add(total.saturating_sub(1)) {
            Some(last) => last >> self.vasz == 0,
            None => false,
        };
        if total != 0 && !fits {
            return Err((Errno::ERANGE, 0));
        }
        let r = on_v2!(&self.table, |pt| pt.map(iova, paddr, pgsize, pgcount, prot));
        sync_map(&self.unit, iova, total, &r, |s, l| self.flush_pages(s, l, cmd::PAGES_PDE));
        r
    }

    fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
        let n = on_v2!(&self.table, |pt| pt.unmap(iova, pgsize, pgcount));
        if n != 0 {
            self.flush_pages(iova, iova + n - 1, 0);
        }
        n
    }

    /// The walk a request without PASID makes through GCR3\[0\] with GIoV:
    /// no sign extension, addresses below 2^vasz.
    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        if iova >> self.vasz != 0 {
            return Err(Fault::OutOfRange);
        }
        on_v2!(&self.table, |pt| pt.translate(iova, access))
    }
}
