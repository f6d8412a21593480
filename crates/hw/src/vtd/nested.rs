//! A VT-d nested domain: a guest-owned first-stage table over a
//! second-stage nesting parent (`IOMMU_HWPT_DATA_VTD_S1`).
//!
//! Model: the domain holds the user's `struct iommu_hwpt_vtd_s1` (table
//! pointer, width, SRE/EAFE/WPE) as the driver does
//! (`intel_iommu_domain_alloc_nested()`, drivers/iommu/intel/nested.c),
//! checks it against a unit at attach time as `intel_nested_attach_dev()` /
//! `intel_pasid_setup_nested()` (pasid.c) do, and translates a DMA access
//! as hardware does in nested mode (spec 3.8 "Nested Translation"):
//! 1. the IOTLB, tagged with this domain's domain ID and the request's
//!    PASID, is tried first; a hit is served even if the guest's tables
//!    changed since (until an invalidation removes it);
//! 2. on a miss, the first-stage walk starts at the deepest
//!    paging-structure-cache entry that covers the address, reading guest
//!    table entries through the caller's reader (which translates each
//!    table address through the second stage);
//! 3. the first stage's output GPA goes through the parent's second stage;
//! 4. the combined translation is cached at the smaller of the two leaf
//!    sizes, with both stages' permissions.
//!
//! `cache_invalidate_user` is `intel_nested_cache_invalidate_user()` and
//! the flush it leads to (`cache_tag_flush_range()` with the nested
//! domain's PASID-based IOTLB invalidation, cache.c).
//!
//! Invariants: the parent is a [`VtdSlDomain`] allocated as a nesting
//! parent; the domain's IOTLB entries are removed when it is dropped, and
//! whenever the parent's mappings change (see `VtdSlDomain`).

use std::sync::{Arc, Mutex};

use uiommufd_abi::{
    Errno, IommuHwptVtdS1, IommuHwptVtdS1Invalidate, IOMMU_HWPT_DATA_VTD_S1, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
    IOMMU_VTD_INV_FLAGS_LEAF, IOMMU_VTD_S1_EAFE, IOMMU_VTD_S1_SRE,
};

use super::fl::{self, FsConfig, FsFault, FsPerms, FsRequest, Resume, ADDR_WIDTH_4LEVEL, ADDR_WIDTH_5LEVEL};
use super::info::VtdInfo;
use super::iotlb::{DidLease, Iotlb, RID_PASID};
use super::sl::VtdSlDomain;
use crate::{Access, Aperture, Domain, Fault, Prot, Translation, UserData, UserDataArray};

/// Reads the 64-bit word at a guest physical address (of a first-stage
/// table): the caller translates it through the second stage and reads
/// the frame.
pub type GpaReader = Arc<dyn Fn(u64) -> Result<u64, Errno> + Send + Sync>;

/// `offsetofend(struct iommu_hwpt_vtd_s1, __reserved)`: the driver copies
/// the whole struct (`iommu_copy_struct_from_user(..., __reserved)`).
pub const VTD_S1_MIN_LEN: usize = 24;
/// `offsetofend(struct iommu_hwpt_vtd_s1_invalidate, __reserved)`.
pub const VTD_S1_INV_MIN_LEN: usize = 24;

/// What a nested domain needs to know of the unit that allocated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedCaps {
    /// CAP.FS1GP: 1 GiB first-stage leaves.
    pub fs1gp: bool,
    /// First-stage output (GPA) width: the parent's address width.
    pub addr_bits: u32,
}

/// Why a nested translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedFault {
    /// The first stage faulted (including reads of its tables failing).
    FirstStage(FsFault),
    /// The first stage's output GPA has no usable second-stage mapping.
    SecondStage { gpa: u64, fault: Fault },
    /// The stage-1 configuration is unusable (an address width other than
    /// 48 or 57: such a domain can never be attached).
    BadConfig,
}

impl NestedFault {
    /// The coarse [`Fault`] of the `Domain` trait.
    pub fn to_fault(self) -> Fault {
        match self {
            NestedFault::FirstStage(FsFault::NonCanonical) => Fault::OutOfRange,
            NestedFault::FirstStage(FsFault::Access | FsFault::SupervisorDisabled) => Fault::Permission,
            NestedFault::FirstStage(_) | NestedFault::BadConfig => Fault::NotPresent,
            NestedFault::SecondStage { fault, .. } => fault,
        }
    }
}

/// IOTLB data-word bits of a combined entry (the page address is in bits
/// 51:12).
mod tlbd {
    pub const S2_R: u64 = 1 << 0;
    pub const S2_W: u64 = 1 << 1;
    pub const FS_W: u64 = 1 << 2;
    pub const FS_U: u64 = 1 << 3;
    pub const FS_NX: u64 = 1 << 4;
    /// Filled by a write: dirty flags already set, writes may hit.
    pub const WRITTEN: u64 = 1 << 5;
    pub const SNP: u64 = 1 << 6;
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

/// Paging-structure-cache data: next table address and the permissions
/// above it.
mod pscd {
    pub const W: u64 = 1 << 0;
    pub const U: u64 = 1 << 1;
    pub const NX: u64 = 1 << 2;
}

enum Did {
    Leased(DidLease),
    Fixed(u16),
}

impl Did {
    fn get(&self) -> u16 {
        match self {
            Did::Leased(l) => l.did(),
            Did::Fixed(d) => *d,
        }
    }
}

/// A nested (first-stage over second-stage) domain.
pub struct VtdNested {
    parent: Arc<dyn Domain>,
    s1: IommuHwptVtdS1,
    fs: Option<FsConfig>,
    iotlb: Arc<Iotlb>,
    did: Did,
    reader: GpaReader,
    /// PASIDs translations were tagged with (invalidations cover these).
    pasids: Mutex<Vec<u32>>,
}

impl core::fmt::Debug for VtdNested {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VtdNested").field("s1", &self.s1).field("did", &self.did.get()).finish_non_exhaustive()
    }
}

/// The parent as a second-stage domain that may be nested on
/// (`intel_domain_is_ss_paging(s2) && s2->nested_parent`).
fn nest_parent(parent: &Arc<dyn Domain>) -> Option<&VtdSlDomain> {
    parent.as_any().downcast_ref::<VtdSlDomain>().filter(|p| p.config().nest_parent)
}

impl VtdNested {
    /// `intel_iommu_domain_alloc_nested()` after its unit checks: `EINVAL`
    /// unless `parent` is a VT-d second-stage domain allocated as a nesting
    /// parent. `did` tags the domain's entries in `iotlb`.
    pub fn new(
        parent: &Arc<dyn Domain>,
        s1: IommuHwptVtdS1,
        caps: NestedCaps,
        iotlb: Arc<Iotlb>,
        did: DidLease,
        reader: GpaReader,
    ) -> Result<Self, Errno> {
        Self::build(parent, s1, caps, iotlb, Did::Leased(did), reader)
    }

    /// [`new`](Self::new) with a caller-managed domain ID.
    pub fn with_did(
        parent: &Arc<dyn Domain>,
        s1: IommuHwptVtdS1,
        caps: NestedCaps,
        iotlb: Arc<Iotlb>,
        did: u16,
        reader: GpaReader,
    ) -> Result<Self, Errno> {
        Self::build(parent, s1, caps, iotlb, Did::Fixed(did), reader)
    }

    fn build(
        parent: &Arc<dyn Domain>,
        s1: IommuHwptVtdS1,
        caps: NestedCaps,
        iotlb: Arc<Iotlb>,
        did: Did,
        reader: GpaReader,
    ) -> Result<Self, Errno> {
        let sl = nest_parent(parent).ok_or(Errno::EINVAL)?;
        sl.register_nested(&iotlb, did.get());
        Ok(VtdNested {
            parent: Arc::clone(parent),
            s1,
            fs: FsConfig::from_s1(&s1, caps.fs1gp, caps.addr_bits).ok(),
            iotlb,
            did,
            reader,
            pasids: Mutex::new(vec![RID_PASID]),
        })
    }

    /// The data checks of `intel_iommu_domain_alloc_nested()`: the data
    /// must be `IOMMU_HWPT_DATA_VTD_S1` (`EOPNOTSUPP`), the parent a nesting
    /// parent (`EINVAL`), and the whole struct is copied with the
    /// extensible-struct rules (`EINVAL` if shorter than 24 bytes, `E2BIG` /
    /// `EFAULT` from the copy). Like the driver, neither `flags` nor
    /// `__reserved` is checked here: unsupported flags or widths fail at
    /// attach ([`check_unit`](Self::check_unit)).
    pub fn read_user_data(parent: &Arc<dyn Domain>, data: &mut UserData<'_>) -> Result<IommuHwptVtdS1, Errno> {
        if data.data_type != IOMMU_HWPT_DATA_VTD_S1 {
            return Err(Errno::EOPNOTSUPP);
        }
        if nest_parent(parent).is_none() {
            return Err(Errno::EINVAL);
        }
        data.read::<IommuHwptVtdS1>(IOMMU_HWPT_DATA_VTD_S1, VTD_S1_MIN_LEN)
    }

    pub fn s1(&self) -> &IommuHwptVtdS1 {
        &self.s1
    }

    pub fn parent(&self) -> &Arc<dyn Domain> {
        &self.parent
    }

    /// The parent as the second-stage domain it was checked to be.
    pub fn parent_sl(&self) -> Option<&VtdSlDomain> {
        self.parent.as_any().downcast_ref::<VtdSlDomain>()
    }

    pub fn did(&self) -> u16 {
        self.did.get()
    }

    pub fn iotlb(&self) -> &Arc<Iotlb> {
        &self.iotlb
    }

    /// The attach-time checks against the unit of the device (in order):
    /// - `intel_nested_attach_dev()`: `ENODEV` if the unit's AGAW is below
    ///   the parent's;
    /// - the parent must be compatible with the unit
    ///   (`paging_domain_compatible()`, see `SlConfig::check_unit`);
    /// - `intel_pasid_setup_nested()`: `EINVAL` for an address width other
    ///   than 48 or 57, 57 without CAP.FS5LP, SRE without ECAP.SRS, EAFE
    ///   without ECAP.EAFS.
    pub fn check_unit(&self, info: &VtdInfo) -> Result<(), Errno> {
        let sl = self.parent_sl().ok_or(Errno::EINVAL)?;
        if info.agaw < sl.config().agaw {
            return Err(Errno::ENODEV);
        }
        self.check_unit_pasid(info)
    }

    /// The checks of `intel_nested_set_dev_pasid()` after its PASID-support
    /// test: the parent's compatibility and `intel_pasid_setup_nested()`'s
    /// (the AGAW test of [`check_unit`](Self::check_unit) is not made there).
    pub fn check_unit_pasid(&self, info: &VtdInfo) -> Result<(), Errno> {
        let sl = self.parent_sl().ok_or(Errno::EINVAL)?;
        sl.config().check_unit(info)?;
        match self.s1.addr_width {
            ADDR_WIDTH_4LEVEL => {}
            ADDR_WIDTH_5LEVEL if info.cap().fs5lp() != 0 => {}
            _ => return Err(Errno::EINVAL),
        }
        if self.s1.flags & u64::from(IOMMU_VTD_S1_SRE) != 0 && info.ecap().srs() == 0 {
            return Err(Errno::EINVAL);
        }
        if self.s1.flags & u64::from(IOMMU_VTD_S1_EAFE) != 0 && info.ecap().eafs() == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Translate a request of `pasid` (RID_PASID for requests without one).
    #[inline]
    pub fn translate_req(&self, pasid: u32, iova: u64, req: FsRequest) -> Result<Translation, NestedFault> {
        let fs = self.fs.as_ref().ok_or(NestedFault::BadConfig)?;
        if !fs.canonical(iova) {
            return Err(NestedFault::FirstStage(FsFault::NonCanonical));
        }
        if req.supervisor && !fs.sre {
            return Err(NestedFault::FirstStage(FsFault::SupervisorDisabled));
        }
        if let Some(hit) = self.iotlb.lookup(self.did.get(), pasid, iova) {
            if let Some(t) = Self::serve(fs, hit.data, hit.page_shift, iova, req) {
                return Ok(t);
            }
        }
        self.walk(fs, pasid, iova, req)
    }

    /// A hit that satisfies `req`, or `None` to walk (a permission the
    /// entry lacks, or a write through an entry filled by a read, which
    /// must set dirty flags first). Straight-line bit tests: this is the
    /// hot path.
    #[inline(always)]
    fn serve(fs: &FsConfig, data: u64, shift: u32, iova: u64, req: FsRequest) -> Option<Translation> {
        let prot = Self::prot(data, req, fs);
        let ok =
            if req.write { prot.contains(Prot::WRITE) && data & tlbd::WRITTEN != 0 } else { prot.contains(Prot::READ) };
        if !ok {
            return None;
        }
        let offset = iova & ((1u64 << shift) - 1);
        Some(Translation { paddr: (data & tlbd::ADDR) + offset, len: (1u64 << shift) - offset, prot })
    }

    /// What a request of `req`'s privilege may do through an entry with
    /// `data` (first-stage rights as `FsPerms::allows`, and the second
    /// stage's R/W).
    #[inline(always)]
    fn prot(data: u64, req: FsRequest, fs: &FsConfig) -> Prot {
        let fs_w = data & tlbd::FS_W != 0;
        let (readable, writable) = if req.supervisor {
            (data & tlbd::S2_R != 0, data & tlbd::S2_W != 0 && (fs_w || !fs.wpe))
        } else {
            let user = data & tlbd::FS_U != 0;
            (user && data & tlbd::S2_R != 0, user && fs_w && data & tlbd::S2_W != 0)
        };
        let mut p = 0;
        if readable {
            p |= Prot::READ.0;
        }
        if writable {
            p |= Prot::WRITE.0;
        }
        if data & tlbd::FS_NX != 0 {
            p |= Prot::NOEXEC.0;
        }
        if data & tlbd::SNP != 0 {
            p |= Prot::CACHE.0;
        }
        Prot(p)
    }

    /// The miss path: first stage (resuming from the paging-structure
    /// cache), second stage, fill.
    fn walk(&self, fs: &FsConfig, pasid: u32, iova: u64, req: FsRequest) -> Result<Translation, NestedFault> {
        let did = self.did.get();
        let gen = self.iotlb.generation();
        self.note_pasid(pasid);
        let mut start = Resume::root(fs, self.s1.pgtbl_addr);
        for level in 1..fs.levels {
            if let Some(d) = self.iotlb.psc_lookup(did, pasid, level, iova) {
                let perms = FsPerms { writable: d & pscd::W != 0, user: d & pscd::U != 0, nx: d & pscd::NX != 0 };
                start = Resume { level: level - 1, table: d & fl::fspte::ADDR, perms };
                break;
            }
        }
        let reader = &self.reader;
        let iotlb = &self.iotlb;
        let walk = fl::walk_from(
            fs,
            start,
            iova,
            req,
            |gpa| reader(gpa),
            |level, prefix, r| {
                let mut d = r.table;
                if r.perms.writable {
                    d |= pscd::W;
                }
                if r.perms.user {
                    d |= pscd::U;
                }
                if r.perms.nx {
                    d |= pscd::NX;
                }
                iotlb.psc_insert(gen, did, pasid, level, prefix, d);
            },
        )
        .map_err(NestedFault::FirstStage)?;

        let sl = self.parent_sl().ok_or(NestedFault::BadConfig)?;
        let access = if req.write { Access::Write } else { Access::Read };
        let (t2, s2_shift) =
            sl.translate_leaf(walk.gpa, access).map_err(|fault| NestedFault::SecondStage { gpa: walk.gpa, fault })?;
        let shift = walk.page_shift.min(s2_shift);
        let offset = iova & ((1u64 << shift) - 1);
        let mut data = (t2.paddr - offset) & tlbd::ADDR;
        if t2.prot.contains(Prot::READ) {
            data |= tlbd::S2_R;
        }
        if t2.prot.contains(Prot::WRITE) {
            data |= tlbd::S2_W;
        }
        if t2.prot.contains(Prot::CACHE) {
            data |= tlbd::SNP;
        }
        if walk.perms.writable {
            data |= tlbd::FS_W;
        }
        if walk.perms.user {
            data |= tlbd::FS_U;
        }
        if walk.perms.nx {
            data |= tlbd::FS_NX;
        }
        if req.write {
            data |= tlbd::WRITTEN;
        }
        self.iotlb.insert(gen, did, pasid, iova, shift, data);
        Ok(Translation { paddr: t2.paddr, len: (1u64 << shift) - offset, prot: Self::prot(data, req, fs) })
    }

    fn note_pasid(&self, pasid: u32) {
        let mut p = self.pasids.lock().unwrap_or_else(|e| e.into_inner());
        if !p.contains(&pasid) {
            p.push(pasid);
        }
    }

    /// The flush `cache_tag_flush_range(domain, start, end, ih)` issues for
    /// a nested domain: per PASID, a PASID-based IOTLB invalidation of the
    /// range `calculate_psi_aligned_address()` rounds `[start, end]` to.
    pub fn flush_range(&self, start: u64, end: u64, ih: bool) {
        let (addr, am) = psi_aligned_address(start, end);
        let pasids = self.pasids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for pasid in pasids {
            self.iotlb.invalidate_range(self.did.get(), pasid, addr, am, ih);
        }
    }

    /// Drop every cached translation of the domain (`cache_tag_flush_all()`).
    pub fn flush_all(&self) {
        self.iotlb.invalidate_domain(self.did.get());
    }
}

/// `calculate_psi_aligned_address()` (cache.c): the smallest naturally
/// aligned power-of-two block of pages holding `[start, end]`, as
/// `(address, mask)`; mask 52 (`MAX_AGAW_PFN_WIDTH`) means everything. The
/// arithmetic wraps as the C does on 64-bit `unsigned long`, and
/// `__roundup_pow_of_two(0)` gives 1 (the x86 shift by 64 the C performs
/// for zero pages, when `npages` is 0).
pub fn psi_aligned_address(start: u64, end: u64) -> (u64, u32) {
    let size = end.wrapping_sub(start).wrapping_add(1);
    // aligned_nrpages(start, size): PAGE_ALIGN((start & ~PAGE_MASK) + size) >> 12.
    let pages = ((start & 0xfff).wrapping_add(size).wrapping_add(0xfff) & !0xfff) >> 12;
    let fls = 64 - pages.wrapping_sub(1).leading_zeros();
    let aligned = if fls >= 64 { 1 } else { 1u64 << fls };
    let bitmask = aligned - 1;
    let mut mask = aligned.trailing_zeros();
    let pfn = start >> 12;
    if bitmask & pfn != 0 {
        let end_pfn = pfn.wrapping_add(pages).wrapping_sub(1);
        let shared = !(pfn ^ end_pfn) & !bitmask;
        mask = if shared != 0 { shared.trailing_zeros() } else { 52 };
    }
    // ALIGN_DOWN(start, VTD_PAGE_SIZE << mask); the size wraps to 0 at 52.
    let align = if mask >= 52 { 0 } else { 4096u64 << mask };
    (start & !align.wrapping_sub(1), mask)
}

impl Drop for VtdNested {
    fn drop(&mut self) {
        if let Some(sl) = self.parent_sl() {
            sl.unregister_nested(&self.iotlb, self.did.get());
        }
        self.iotlb.invalidate_domain(self.did.get());
    }
}

impl Domain for VtdNested {
    fn is_nested(&self) -> bool {
        true
    }

    /// The parent's snoop mode applies (`pasid_set_pgsnp()` when the
    /// parent forces snooping).
    fn enforce_cache_coherency(&self) -> bool {
        self.parent.enforce_cache_coherency()
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.parent.pgsize_bitmap()
    }

    /// The lower canonical half of the first stage's input space.
    fn aperture(&self) -> Aperture {
        match &self.fs {
            Some(fs) => Aperture { start: 0, last: (1u64 << (fs.va_bits() - 1)) - 1 },
            None => self.parent.aperture(),
        }
    }

    /// The guest owns the first-stage table: nothing maps through here.
    fn map_pages(&self, _iova: u64, _paddr: u64, _pgsize: u64, _pgcount: u64, _prot: Prot) -> Result<(), (Errno, u64)> {
        Err((Errno::EOPNOTSUPP, 0))
    }

    fn unmap_pages(&self, _iova: u64, _pgsize: u64, _pgcount: u64) -> u64 {
        0
    }

    /// A request without PASID: tagged RID_PASID, user privilege.
    #[inline]
    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        let req = FsRequest { write: access == Access::Write, supervisor: false };
        self.translate_req(RID_PASID, iova, req).map_err(NestedFault::to_fault)
    }

    /// `intel_nested_cache_invalidate_user()`:
    /// - `EINVAL` for another data type (nothing handled);
    /// - per entry, in order: the copy (`EINVAL` for an entry shorter than
    ///   24 bytes, `E2BIG`/`EFAULT` from the reader); `EOPNOTSUPP` for
    ///   flags other than LEAF or a non-zero `__reserved`; `EINVAL` for an
    ///   address not 4 KiB aligned or `npages == U64_MAX` with a non-zero
    ///   address; then the range `[addr, addr + npages * 4K - 1]` is
    ///   flushed, LEAF as the invalidation hint (`U64_MAX` pages from 0
    ///   covers everything);
    /// - `entry_num` returns the entries handled before the first error.
    fn cache_invalidate_user(&self, array: &mut UserDataArray<'_>) -> Result<(), Errno> {
        let num = array.entry_num;
        array.entry_num = 0;
        if array.data_type != IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 {
            return Err(Errno::EINVAL);
        }
        for index in 0..num {
            let inv: IommuHwptVtdS1Invalidate =
                array.read(IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, index, VTD_S1_INV_MIN_LEN)?;
            if inv.flags & !IOMMU_VTD_INV_FLAGS_LEAF != 0 || inv.__reserved != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            if inv.addr & 0xfff != 0 || (inv.npages == u64::MAX && inv.addr != 0) {
                return Err(Errno::EINVAL);
            }
            // nrpages_to_size(): npages << VTD_PAGE_SHIFT, wrapping.
            let end = inv.addr.wrapping_add(inv.npages << 12).wrapping_sub(1);
            self.flush_range(inv.addr, end, inv.flags & IOMMU_VTD_INV_FLAGS_LEAF != 0);
            array.entry_num += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::fl::fspte;
    use crate::vtd::info::{SZ_1G, SZ_2M, SZ_4K};
    use crate::vtd::sl::SlConfig;
    use std::collections::HashMap;
    use std::sync::RwLock;
    use zerocopy::IntoBytes;

    const P: u64 = fspte::P;
    const RW: u64 = fspte::RW;
    const US: u64 = fspte::US;
    const PROT_RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);

    /// Host memory: 4 KiB frames by host physical address.
    type HostMem = Arc<RwLock<HashMap<u64, [u64; 512]>>>;

    struct Guest {
        parent: Arc<dyn Domain>,
        mem: HostMem,
    }

    impl Guest {
        /// A nesting parent mapping guest RAM GPA [0, 64 MiB) to host
        /// physical 4 GiB + GPA.
        fn new() -> Guest {
            let cfg = SlConfig {
                agaw: 2,
                gaw: 48,
                pgsize_bitmap: SZ_4K | SZ_2M | SZ_1G,
                force_snooping: true,
                nest_parent: true,
                dirty_ops: true,
                coherent: true,
                iotlb_sync_map: false,
            };
            let parent: Arc<dyn Domain> = Arc::new(VtdSlDomain::new(cfg).unwrap());
            crate::map(&*parent, 0, 1 << 32, 64 << 20, PROT_RW, 0).unwrap();
            Guest { parent, mem: Arc::new(RwLock::new(HashMap::new())) }
        }

        fn hpa(&self, gpa: u64) -> u64 {
            self.parent.translate(gpa, Access::Read).unwrap().paddr
        }

        /// Write a guest page-table entry (in the host frame behind it).
        fn set(&self, table_gpa: u64, idx: u64, v: u64) {
            let hpa = self.hpa(table_gpa);
            self.mem.write().unwrap().entry(hpa & !0xfff).or_insert([0; 512])[idx as usize] = v;
        }

        /// The reader iommufd's engine will supply: S2 then frame.
        fn reader(&self) -> GpaReader {
            let parent = Arc::clone(&self.parent);
            let mem = Arc::clone(&self.mem);
            Arc::new(move |gpa| {
                let hpa = parent.translate(gpa, Access::Read).map_err(|_| Errno::EFAULT)?.paddr;
                let m = mem.read().unwrap_or_else(|e| e.into_inner());
                Ok(m.get(&(hpa & !0xfff)).map_or(0, |f| f[((hpa & 0xfff) / 8) as usize]))
            })
        }

        fn nested(&self, s1: IommuHwptVtdS1) -> VtdNested {
            let caps = NestedCaps { fs1gp: true, addr_bits: 48 };
            VtdNested::with_did(&self.parent, s1, caps, Arc::new(Iotlb::new()), 7, self.reader()).unwrap()
        }

        /// A guest 4-level table at GPA 0x10_0000 mapping IOVA
        /// 0x7f00_0020_0000 (4 KiB) to GPA `target`.
        fn build(&self, target: u64) -> (u64, u64) {
            let iova = 0x7f00_0020_0000u64;
            let idx = |l: u32| (iova >> (12 + 9 * l)) & 0x1ff;
            self.set(0x10_0000, idx(3), 0x10_1000 | P | RW | US);
            self.set(0x10_1000, idx(2), 0x10_2000 | P | RW | US);
            self.set(0x10_2000, idx(1), 0x10_3000 | P | RW | US);
            self.set(0x10_3000, idx(0), target | P | RW | US);
            (0x10_0000, iova)
        }
    }

    fn s1(pgtbl: u64) -> IommuHwptVtdS1 {
        IommuHwptVtdS1 { flags: 0, pgtbl_addr: pgtbl, addr_width: 48, __reserved: 0 }
    }

    /// Submit `num` entries of `len` bytes (read from `entries`; an index
    /// past them reads as a fault) with data type `ty`.
    fn invalidate_raw(
        d: &VtdNested,
        ty: u32,
        entries: &[IommuHwptVtdS1Invalidate],
        len: u32,
        num: u32,
    ) -> (Result<(), Errno>, u32) {
        let entries = entries.to_vec();
        let mut reader = move |i: u32, buf: &mut [u8]| -> Result<(), Errno> {
            let src = entries.get(i as usize).ok_or(Errno::EFAULT)?.as_bytes();
            let n = (len as usize).min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            Ok(())
        };
        let mut array = UserDataArray { data_type: ty, entry_len: len, entry_num: num, reader: &mut reader };
        let r = d.cache_invalidate_user(&mut array);
        (r, array.entry_num)
    }

    fn inv(addr: u64, npages: u64, flags: u32) -> IommuHwptVtdS1Invalidate {
        IommuHwptVtdS1Invalidate { addr, npages, flags, __reserved: 0 }
    }

    fn run(d: &VtdNested, entries: &[IommuHwptVtdS1Invalidate]) -> (Result<(), Errno>, u32) {
        invalidate_raw(d, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, entries, 24, entries.len() as u32)
    }

    #[test]
    fn stale_until_invalidated() {
        let g = Guest::new();
        let (root, iova) = g.build(0x30_0000);
        let d = g.nested(s1(root));
        let t = d.translate(iova + 0x10, Access::Read).unwrap();
        assert_eq!(t.paddr, (1 << 32) + 0x30_0010);
        assert_eq!(t.len, 0x1000 - 0x10);
        assert_eq!(t.prot, PROT_RW | Prot::CACHE);
        // The guest repoints its PTE.
        let idx0 = (iova >> 12) & 0x1ff;
        g.set(0x10_3000, idx0, 0x50_0000 | P | RW | US);
        // Hardware keeps serving the cached translation...
        assert_eq!(d.translate(iova + 0x10, Access::Read).unwrap().paddr, (1 << 32) + 0x30_0010);
        // ...until the guest invalidates the page (leaf-only).
        assert_eq!(run(&d, &[inv(iova, 1, IOMMU_VTD_INV_FLAGS_LEAF)]), (Ok(()), 1));
        assert_eq!(d.translate(iova + 0x10, Access::Read).unwrap().paddr, (1 << 32) + 0x50_0010);
        // Unmapping the page in the guest: still cached, then gone.
        g.set(0x10_3000, idx0, 0);
        assert!(d.translate(iova, Access::Read).is_ok());
        assert_eq!(run(&d, &[inv(0, u64::MAX, 0)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read), Err(Fault::NotPresent));
        assert!(d.is_nested());
    }

    #[test]
    fn paging_structure_cache_survives_leaf_invalidation() {
        let g = Guest::new();
        let (root, iova) = g.build(0x30_0000);
        let d = g.nested(s1(root));
        d.translate(iova, Access::Read).unwrap();
        assert_eq!(d.iotlb().stats().psc_entries, 3);
        // The guest repoints the PDE at a new page table (0x10_4000) that
        // maps the page elsewhere, but invalidates with LEAF only: the
        // cached PDE still leads to the old table.
        let idx1 = (iova >> 21) & 0x1ff;
        g.set(0x10_4000, (iova >> 12) & 0x1ff, 0x70_0000 | P | RW | US);
        g.set(0x10_2000, idx1, 0x10_4000 | P | RW | US);
        assert_eq!(run(&d, &[inv(iova, 1, IOMMU_VTD_INV_FLAGS_LEAF)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, (1 << 32) + 0x30_0000);
        // A non-leaf invalidation drops the PDE too.
        assert_eq!(run(&d, &[inv(iova, 1, 0)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, (1 << 32) + 0x70_0000);
    }

    #[test]
    fn parent_unmap_flushes_combined_entries() {
        let g = Guest::new();
        let (root, iova) = g.build(0x30_0000);
        let d = g.nested(s1(root));
        d.translate(iova, Access::Read).unwrap();
        // The host unmaps the GPA range the guest's leaf points into (the
        // parent maps guest RAM with 2 MiB leaves): the combined entry goes
        // without any guest invalidation.
        assert_eq!(g.parent.unmap_pages(0x20_0000, SZ_2M, 1), SZ_2M);
        assert_eq!(
            d.translate_req(RID_PASID, iova, FsRequest::default()),
            Err(NestedFault::SecondStage { gpa: 0x30_0000, fault: Fault::NotPresent })
        );
        // Tables going away in the parent fault the table read (the
        // paging-structure entries went with the flush: from the root).
        assert_eq!(g.parent.unmap_pages(0, SZ_2M, 1), SZ_2M);
        assert!(matches!(
            d.translate_req(RID_PASID, iova, FsRequest::default()),
            Err(NestedFault::FirstStage(FsFault::TableRead { level: 3, .. }))
        ));
    }

    #[test]
    fn permissions_and_dirty() {
        let g = Guest::new();
        let (root, iova) = g.build(0x30_0000);
        let d = g.nested(s1(root));
        let sl = d.parent_sl().unwrap();
        sl.dirty_ops().unwrap().set_dirty_tracking(true).unwrap();
        // A read fills the IOTLB; a write after it walks again (dirty flags),
        // and sets the parent's D bit.
        d.translate(iova, Access::Read).unwrap();
        assert_eq!(sl.entry_at(0x30_0000).unwrap().0 & crate::vtd::sl::slpte::D, 0);
        d.translate(iova, Access::Write).unwrap();
        assert_ne!(sl.entry_at(0x30_0000).unwrap().0 & crate::vtd::sl::slpte::D, 0);
        // Read-only in the guest's PTE: writes fault once the entry is
        // invalidated.
        g.set(0x10_3000, (iova >> 12) & 0x1ff, 0x30_0000 | P | US);
        assert_eq!(run(&d, &[inv(iova, 1, IOMMU_VTD_INV_FLAGS_LEAF)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Write), Err(Fault::Permission));
        assert_eq!(d.translate(iova, Access::Read).unwrap().prot, Prot::READ | Prot::CACHE);
        // Supervisor requests need SRE.
        let sup = FsRequest { write: false, supervisor: true };
        assert_eq!(d.translate_req(RID_PASID, iova, sup), Err(NestedFault::FirstStage(FsFault::SupervisorDisabled)));
        let mut cfg = s1(root);
        cfg.flags = u64::from(IOMMU_VTD_S1_SRE);
        let ds = g.nested(cfg);
        assert!(ds.translate_req(5, iova, FsRequest { write: true, supervisor: true }).is_ok());
        // Non-canonical IOVAs.
        assert_eq!(d.translate(1 << 47, Access::Read), Err(Fault::OutOfRange));
        assert_eq!(d.aperture(), Aperture { start: 0, last: (1 << 47) - 1 });
    }

    #[test]
    fn large_pages_combine_to_the_smaller() {
        let g = Guest::new();
        // Guest: 2 MiB leaf at IOVA 0x4000_0000 -> GPA 0x20_0000; the parent
        // maps that with 2 MiB leaves (crate::map picked them).
        let iova = 0x4000_0000u64;
        g.set(0x10_0000, 0, 0x10_1000 | P | RW | US);
        g.set(0x10_1000, 1, 0x10_2000 | P | RW | US);
        g.set(0x10_2000, 0, 0x20_0000 | P | RW | US | fspte::PS);
        let d = g.nested(s1(0x10_0000));
        let t = d.translate(iova + 0x1234, Access::Read).unwrap();
        assert_eq!((t.paddr, t.len), ((1 << 32) + 0x20_1234, SZ_2M - 0x1234));
        assert_eq!(d.iotlb().lookup(7, RID_PASID, iova).unwrap().page_shift, 21);
        // Split the parent's 2 MiB into 4 KiB pages: the combined entry is
        // 4 KiB now.
        g.parent.unmap_pages(0x20_0000, SZ_2M, 1);
        crate::map(&*g.parent, 0x20_0000, (1 << 32) + 0x20_0000, SZ_2M, PROT_RW, SZ_4K).unwrap();
        let t = d.translate(iova + 0x1234, Access::Read).unwrap();
        assert_eq!((t.paddr, t.len), ((1 << 32) + 0x20_1234, SZ_4K - 0x234));
        assert_eq!(d.iotlb().lookup(7, RID_PASID, iova + 0x1000).unwrap().page_shift, 12);
    }

    #[test]
    fn invalidation_validation() {
        let g = Guest::new();
        let (root, iova) = g.build(0x30_0000);
        let d = g.nested(s1(root));
        const TY: u32 = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1;
        // Wrong type: EINVAL, nothing handled.
        assert_eq!(invalidate_raw(&d, 1, &[inv(0, 1, 0)], 24, 1), (Err(Errno::EINVAL), 0));
        // Unknown flag / reserved set: EOPNOTSUPP after the good ones.
        assert_eq!(run(&d, &[inv(0, 1, 0), inv(0, 1, 2)]), (Err(Errno::EOPNOTSUPP), 1));
        let mut bad = inv(0, 1, 0);
        bad.__reserved = 1;
        assert_eq!(run(&d, &[bad]), (Err(Errno::EOPNOTSUPP), 0));
        // Misaligned address, U64_MAX pages with an address: EINVAL.
        assert_eq!(run(&d, &[inv(0x1000, 2, 0), inv(0x1800, 1, 0)]), (Err(Errno::EINVAL), 1));
        assert_eq!(run(&d, &[inv(0x1000, u64::MAX, 0)]), (Err(Errno::EINVAL), 0));
        // Short entries: EINVAL (the copy's minimum is all 24 bytes).
        assert_eq!(invalidate_raw(&d, TY, &[inv(0, 1, 0)], 16, 1), (Err(Errno::EINVAL), 0));
        // Read failure on the third entry.
        assert_eq!(invalidate_raw(&d, TY, &[inv(0, 1, 0), inv(0, 1, 0)], 24, 3), (Err(Errno::EFAULT), 2));
        // Zero entries: nothing to do.
        assert_eq!(run(&d, &[]), (Ok(()), 0));
        // npages 0 flushes the page at addr (the driver's arithmetic).
        d.translate(iova, Access::Read).unwrap();
        assert_eq!(run(&d, &[inv(iova, 0, 0)]), (Ok(()), 1));
        assert!(d.iotlb().lookup(7, RID_PASID, iova).is_none());
    }

    #[test]
    fn psi_alignment_like_the_driver() {
        // One page.
        assert_eq!(psi_aligned_address(0x5000, 0x5fff), (0x5000, 0));
        // Three pages at an aligned start: rounded to four.
        assert_eq!(psi_aligned_address(0x4000, 0x6fff), (0x4000, 2));
        // Two pages straddling a 16 KiB boundary: the shared prefix is at
        // bit 3 of the PFN (32 KiB block).
        assert_eq!(psi_aligned_address(0x3000, 0x4fff), (0, 3));
        // Everything: U64_MAX pages from 0.
        assert_eq!(psi_aligned_address(0, (u64::MAX << 12).wrapping_sub(1)), (0, 52));
        // npages 0 at addr: one page.
        assert_eq!(psi_aligned_address(0x9000, 0x8fff), (0x9000, 0));
        // [0, U64_MAX] wraps the size to 0 in the driver's arithmetic: one
        // page (no caller passes it; the uAPI's "all" is U64_MAX pages).
        assert_eq!(psi_aligned_address(0, u64::MAX), (0, 0));
    }

    #[test]
    fn unit_checks() {
        use crate::vtd::regs::{VtdRegs, VtdRegsBuilder};
        let g = Guest::new();
        let d = g.nested(s1(0x10_0000));
        let full = VtdInfo::from_regs(VtdRegs::default()).unwrap();
        assert_eq!(d.check_unit(&full), Ok(()));
        let mut c = s1(0x10_0000);
        c.addr_width = 39;
        assert_eq!(g.nested(c).check_unit(&full), Err(Errno::EINVAL));
        c.addr_width = 57;
        assert_eq!(g.nested(c).check_unit(&full), Ok(()));
        let no5 = VtdInfo::from_regs(
            VtdRegsBuilder::from(VtdRegs::default()).first_stage(true, false).address_widths(&[4], 48).build(),
        )
        .unwrap();
        assert_eq!(g.nested(c).check_unit(&no5), Err(Errno::EINVAL));
        c.addr_width = 48;
        c.flags = u64::from(IOMMU_VTD_S1_SRE);
        let nosrs = VtdInfo::from_regs(VtdRegsBuilder::from(VtdRegs::default()).first_stage_flags(false, true).build())
            .unwrap();
        assert_eq!(g.nested(c).check_unit(&nosrs), Err(Errno::EINVAL));
        c.flags = u64::from(IOMMU_VTD_S1_EAFE);
        let noeafs =
            VtdInfo::from_regs(VtdRegsBuilder::from(VtdRegs::default()).first_stage_flags(true, false).build())
                .unwrap();
        assert_eq!(g.nested(c).check_unit(&noeafs), Err(Errno::EINVAL));
        // Unit AGAW below the parent's: ENODEV (the parent here is 4-level).
        let small = VtdInfo::from_regs(VtdRegs::from_raw(0x00d2_008c_2226_0286, 0xf42)).unwrap();
        assert_eq!(d.check_unit(&small), Err(Errno::ENODEV));
        // A translation with a bad width faults rather than walks.
        c.addr_width = 40;
        assert_eq!(g.nested(c).translate(0, Access::Read), Err(Fault::NotPresent));
    }

    #[test]
    fn parent_must_be_a_nest_parent() {
        let plain: Arc<dyn Domain> = Arc::new(
            VtdSlDomain::new(SlConfig {
                agaw: 2,
                gaw: 48,
                pgsize_bitmap: SZ_4K,
                force_snooping: false,
                nest_parent: false,
                dirty_ops: false,
                coherent: true,
                iotlb_sync_map: false,
            })
            .unwrap(),
        );
        let caps = NestedCaps { fs1gp: true, addr_bits: 48 };
        let reader: GpaReader = Arc::new(|_| Ok(0));
        let r = VtdNested::with_did(&plain, s1(0), caps, Arc::new(Iotlb::new()), 3, reader);
        assert_eq!(r.err(), Some(Errno::EINVAL));
        // User data checks.
        let s = s1(0x1000);
        let bytes = s.as_bytes().to_vec();
        let mut rd = |buf: &mut [u8]| -> Result<(), Errno> {
            buf.copy_from_slice(&bytes[..buf.len()]);
            Ok(())
        };
        let mut ud = UserData { data_type: IOMMU_HWPT_DATA_VTD_S1, len: 24, reader: &mut rd };
        assert_eq!(VtdNested::read_user_data(&plain, &mut ud), Err(Errno::EINVAL));
        let g = Guest::new();
        assert_eq!(VtdNested::read_user_data(&g.parent, &mut ud), Ok(s));
        ud.len = 16;
        assert_eq!(VtdNested::read_user_data(&g.parent, &mut ud), Err(Errno::EINVAL));
        ud.data_type = 2;
        assert_eq!(VtdNested::read_user_data(&g.parent, &mut ud), Err(Errno::EOPNOTSUPP));
    }

    /// IOTLB hit, nested miss and raw second-stage walk costs. Run with
    /// `cargo test -p uiommufd-hw --release -- --ignored --nocapture timing`.
    #[test]
    #[ignore]
    fn timing_nested() {
        let g = Guest::new();
        let (root, iova) = g.build(0x30_0000);
        let d = g.nested(s1(root));
        const N: u64 = 10_000_000;
        d.translate(iova, Access::Read).unwrap();
        let tlb = Arc::clone(d.iotlb());
        let start = std::time::Instant::now();
        for i in 0..N {
            std::hint::black_box(tlb.lookup(7, RID_PASID, std::hint::black_box(iova + (i & 0xff8))));
        }
        let hit = start.elapsed().as_nanos() as f64 / N as f64;
        let dd: &dyn Domain = &d;
        let start = std::time::Instant::now();
        for i in 0..N {
            if let Ok(t) = dd.translate(std::hint::black_box(iova + (i & 0xff8)), Access::Read) {
                std::hint::black_box(t.paddr);
            }
        }
        let dom_hit = start.elapsed().as_nanos() as f64 / N as f64;
        const M: u64 = 200_000;
        // A leaf-only page invalidation, then a miss that resumes at the
        // cached PDE: one first-stage read, the second stage, the fill.
        let start = std::time::Instant::now();
        for _ in 0..M {
            d.flush_range(iova, iova + 0xfff, true);
            if let Ok(t) = dd.translate(iova, Access::Read) {
                std::hint::black_box(t.paddr);
            }
        }
        let psc_miss = start.elapsed().as_nanos() as f64 / M as f64;
        // A domain flush (scans every set), then a full 4-level walk.
        let start = std::time::Instant::now();
        for _ in 0..M {
            d.flush_all();
            if let Ok(t) = dd.translate(iova, Access::Read) {
                std::hint::black_box(t.paddr);
            }
        }
        let miss = start.elapsed().as_nanos() as f64 / M as f64;
        println!(
            "vtd iotlb: lookup hit {hit:.2} ns; nested translate (dyn Domain) hit {dom_hit:.2} ns; \
             PSI + miss resuming at the cached PDE {psc_miss:.0} ns; domain flush + full 4-level nested walk {miss:.0} ns"
        );
    }
}
