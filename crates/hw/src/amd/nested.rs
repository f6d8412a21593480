//! Nested domains: a guest DTE over a v1 nest parent (Linux 7.3
//! `drivers/iommu/amd/nested.c`), and the two-level translation the IOMMU
//! performs for a device attached to one (spec 48882 §2.2.6 "Guest
//! Translation", with GCR3TRPMode: the GCR3 table root pointer is a guest
//! physical address, "Device Table Entry Format").
//!
//! Model: [`AmdNested`] holds the guest's DTE as the driver validated it
//! ([`validate_guest`](super::dte::validate_guest)), the host domain ID
//! its guest domain ID maps to on the vIOMMU (`gdom_info->hdom_id`) and
//! the parent. The DTE a device gets is [`Dte::nested`]. A request:
//! - without PASID: with GIoV, the guest table of PASID 0; without, the
//!   host table alone (the guest's "physical" address is the IOVA);
//! - with PASID `p` (16 bits in Linux, `PASID_MASK`): the GCR3 table at the
//!   guest's root pointer, `GLX + 1` levels of 512 eight-byte entries
//!   indexed by 9 bits of `p` each (`__get_gcr3_pte()`), bit 0 valid,
//!   51:12 the next table or the guest CR3;
//! - then the x86-64 walk of the guest table (4 or 5 levels, the DTE's
//!   guest paging mode; sign extension only with a PASID), every table
//!   read at a guest physical address translated through the parent, and
//!   the output translated through the parent too; permissions are those
//!   of both tables.
//!
//! The combined translation is cached in the IOTLB's guest half, tagged
//! with the host domain ID and PASID (0 without one), for the smaller of
//! the two leaves; it is served, stale, until an `INVALIDATE_IOMMU_PAGES`
//! covers it. In 7.3 the guest cannot issue one (no `cache_invalidate` on
//! the AMD vIOMMU): the flushes that reach it are the ones the driver
//! sends for the parent (every host domain ID of the vIOMMU with GN=0, on
//! each unmap) and those a VMM sends through [`AmdIommu::issue`] on the
//! guest's behalf.
//!
//! Faults become `IO_PAGE_FAULT` events: GN with the PASID for the guest
//! table's faults (not present, permission, reserved bits), GN clear with
//! the host domain ID and the guest physical address for the parent's.
//!
//! Not modelled: guest A/D updates (the guest tables are read-only to the
//! model), guest page-walk caches, `GCR3TRPMode` off (Linux requires it).

use std::sync::Arc;

use uiommufd_abi::{Errno, IommuHwptAmdGuest};

use super::device::AmdIommu;
use super::domain::{tlb_shift, tlbdata, AmdV1Domain, GdomMap};
use super::dte::{self, Dte};
use super::event::IoPageFault;
use crate::x86_64::{self as x86, FsConfig, FsFault, FsRequest};
use crate::{Access, Aperture, Domain, Fault, Prot, Translation};

/// GCR3 table entry: valid.
pub const GCR3_VALID: u64 = 1 << 0;
/// GCR3 table entry: address bits 51:12.
pub const GCR3_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Why a nested translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedFault {
    /// In the GCR3 table (invalid entry, or a PASID beyond it).
    Gcr3 { pasid: u32 },
    /// In the guest (v2) table.
    Guest { pasid: u32, fault: FsFault },
    /// In the parent, for the guest physical address `gpa`.
    Host { gpa: u64, fault: Fault },
}

impl NestedFault {
    /// The engine's view.
    pub fn to_fault(self) -> Fault {
        match self {
            NestedFault::Gcr3 { .. } => Fault::NotPresent,
            NestedFault::Guest { fault: FsFault::Access, .. } => Fault::Permission,
            NestedFault::Guest { fault: FsFault::NonCanonical, .. } => Fault::OutOfRange,
            NestedFault::Guest { fault: FsFault::TableRead { .. }, .. } => Fault::NotPresent,
            NestedFault::Guest { .. } => Fault::NotPresent,
            NestedFault::Host { fault, .. } => fault,
        }
    }
}

/// A nested domain.
pub struct AmdNested {
    unit: Arc<AmdIommu>,
    parent: Arc<AmdV1Domain>,
    gdoms: Arc<GdomMap>,
    gdte: IommuHwptAmdGuest,
    gdom_id: u16,
    hdom_id: u16,
}

impl core::fmt::Debug for AmdNested {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AmdNested")
            .field("gdom_id", &self.gdom_id)
            .field("hdom_id", &self.hdom_id)
            .field("gdte", &self.gdte.dte)
            .finish_non_exhaustive()
    }
}

impl AmdNested {
    /// `amd_iommu_alloc_domain_nested()` after the copy: validate the guest
    /// DTE, then take the host domain ID of its guest domain ID on the
    /// vIOMMU (`ENOSPC` when none is left).
    pub(crate) fn new(
        unit: &Arc<AmdIommu>,
        parent: &Arc<AmdV1Domain>,
        gdoms: &Arc<GdomMap>,
        gdte: IommuHwptAmdGuest,
    ) -> Result<Self, Errno> {
        dte::validate_guest(&gdte, unit.info().gpt_level)?;
        let gdom_id = dte::guest_domid(&gdte);
        let hdom_id = gdoms.get(unit, gdom_id)?;
        Ok(AmdNested {
            unit: Arc::clone(unit),
            parent: Arc::clone(parent),
            gdoms: Arc::clone(gdoms),
            gdte,
            gdom_id,
            hdom_id,
        })
    }

    pub fn unit(&self) -> &Arc<AmdIommu> {
        &self.unit
    }

    pub fn parent(&self) -> &Arc<AmdV1Domain> {
        &self.parent
    }

    /// The guest's DTE as given.
    pub fn guest_dte(&self) -> &[u64; 4] {
        &self.gdte.dte
    }

    pub fn gdom_id(&self) -> u16 {
        self.gdom_id
    }

    pub fn hdom_id(&self) -> u16 {
        self.hdom_id
    }

    /// The DTE `set_dte_nested()` programs.
    pub fn dte(&self) -> Dte {
        Dte::nested(self.parent.dte(self.hdom_id), &self.gdte.dte)
    }

    fn guest_levels(&self) -> u32 {
        if (self.gdte.dte[2] & dte::GPT_LEVEL) >> dte::GPT_LEVEL_SHIFT == dte::GUEST_PGTABLE_5_LEVEL {
            5
        } else {
            4
        }
    }

    /// Read the guest physical 64-bit word at `gpa` (through the parent).
    fn read_gpa(&self, gpa: u64) -> Result<u64, NestedFault> {
        let t = self.parent.translate_gpa(gpa, Access::Read).map_err(|fault| NestedFault::Host { gpa, fault })?;
        self.unit.read_phys(t.paddr).map_err(|_| NestedFault::Host { gpa, fault: Fault::NotPresent })
    }

    /// The guest CR3 (table root, a GPA) of `pasid`: the GCR3 table walk.
    fn gcr3(&self, pasid: u32) -> Result<u64, NestedFault> {
        let glx = ((self.gdte.dte[0] & dte::GLX) >> dte::GLX_SHIFT) as u32;
        if u64::from(pasid) >> (9 * (glx + 1)) != 0 {
            return Err(NestedFault::Gcr3 { pasid });
        }
        let mut table = dte::gcr3_root(&self.gdte.dte);
        let mut level = glx;
        loop {
            let idx = (u64::from(pasid) >> (9 * level)) & 0x1ff;
            let e = self.read_gpa(table + idx * 8)?;
            if e & GCR3_VALID == 0 {
                return Err(NestedFault::Gcr3 { pasid });
            }
            if level == 0 {
                return Ok(e & GCR3_ADDR);
            }
            table = e & GCR3_ADDR;
            level -= 1;
        }
    }

    /// An IOTLB entry's answer to a request, or `None` to walk (an access
    /// the entry does not allow, or a write through an entry made before
    /// the parent's D was set while dirty tracking is on). The hot path.
    #[inline(always)]
    fn serve(&self, data: u64, shift: u32, iova: u64, write: bool) -> Option<Translation> {
        if write && (data & tlbdata::W == 0 || (data & tlbdata::D == 0 && self.parent.dirty_tracking())) {
            return None;
        }
        let mut p = Prot::READ.0;
        if data & tlbdata::W != 0 {
            p |= Prot::WRITE.0;
        }
        if data & tlbdata::FC != 0 {
            p |= Prot::CACHE.0;
        }
        let off = iova & ((1u64 << shift) - 1);
        Some(Translation { paddr: (data & tlbdata::ADDR) + off, len: (1u64 << shift) - off, prot: Prot(p) })
    }

    /// Translate one request: `pasid` when it carries one, `privileged`
    /// for a supervisor request (with PASID).
    #[inline]
    pub fn translate_req(
        &self,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
        privileged: bool,
    ) -> Result<Translation, NestedFault> {
        let giov = self.gdte.dte[0] & dte::GIOV != 0;
        if pasid.is_none() && !giov {
            // No guest translation for requests without PASID.
            return self.parent.translate_gpa(iova, access).map_err(|fault| NestedFault::Host { gpa: iova, fault });
        }
        let tag = pasid.unwrap_or(0);
        let write = access == Access::Write;
        let tlb = self.unit.guest_tlb();
        if let Some(hit) = tlb.lookup(self.hdom_id, tag, iova) {
            if let Some(t) = self.serve(hit.data, hit.page_shift, iova, write) {
                return Ok(t);
            }
        }
        self.walk(tag, pasid.is_some(), iova, access, privileged)
    }

    /// The miss path: GCR3 table, guest table, parent; then the fill.
    fn walk(
        &self,
        tag: u32,
        with_pasid: bool,
        iova: u64,
        access: Access,
        privileged: bool,
    ) -> Result<Translation, NestedFault> {
        let write = access == Access::Write;
        let tlb = self.unit.guest_tlb();
        let dirty = self.parent.dirty_tracking();
        let gen = tlb.generation();
        let root = self.gcr3(tag)?;
        let cfg = FsConfig {
            levels: self.guest_levels(),
            fs1gp: true,
            sre: true,
            wpe: true,
            eafe: false,
            addr_bits: 52,
            sign_extend: with_pasid,
        };
        let req = FsRequest { write, supervisor: privileged && with_pasid };
        let mut host_fault = None;
        let walk = x86::walk(&cfg, root, iova, req, |gpa| {
            self.read_gpa(gpa).map_err(|f| {
                host_fault = Some(f);
                Errno::EFAULT
            })
        });
        let w = match walk {
            Ok(w) => w,
            Err(FsFault::TableRead { .. }) if host_fault.is_some() => {
                return Err(host_fault.unwrap_or(NestedFault::Gcr3 { pasid: tag }))
            }
            Err(fault) => return Err(NestedFault::Guest { pasid: tag, fault }),
        };
        let h = self.parent.translate_gpa(w.gpa, access).map_err(|fault| NestedFault::Host { gpa: w.gpa, fault })?;
        // An entry no larger than either leaf maps linearly.
        let shift = tlb_shift(w.page_shift.min(self.host_leaf_shift(w.gpa).unwrap_or(12)));
        let writable = w.perms.writable && h.prot.contains(Prot::WRITE);
        let off = iova & ((1u64 << shift) - 1);
        let mut data = (h.paddr - off) & tlbdata::ADDR | tlbdata::R;
        if writable {
            data |= tlbdata::W;
        }
        if h.prot.contains(Prot::CACHE) {
            data |= tlbdata::FC;
        }
        if dirty && write {
            data |= tlbdata::D;
        }
        tlb.insert(gen, self.hdom_id, tag, iova, shift, data);
        let mut prot = Prot::READ;
        if writable {
            prot = prot | Prot::WRITE;
        }
        if h.prot.contains(Prot::CACHE) {
            prot = prot | Prot::CACHE;
        }
        let in_page = (1u64 << w.page_shift) - (iova & ((1u64 << w.page_shift) - 1));
        Ok(Translation { paddr: h.paddr, len: in_page.min(h.len), prot })
    }

    /// log2 of the parent's leaf that maps `gpa`.
    fn host_leaf_shift(&self, gpa: u64) -> Option<u32> {
        let (entry, level) = self.parent.table().walk(gpa)?;
        Some(12 + 9 * level + <super::v1::V1Format as crate::pt::Format>::leaf_contig_lg2(entry, level))
    }

    /// The event the IOMMU logs for a request that failed here (`None`
    /// when it translates after all).
    pub fn fault_of(&self, pasid: Option<u32>, iova: u64, write: bool, privileged: bool) -> Option<IoPageFault> {
        let access = if write { Access::Write } else { Access::Read };
        let f = self.translate_req(pasid, iova, access, privileged).err()?;
        let base = IoPageFault {
            addr: iova,
            guest: true,
            pasid: pasid.unwrap_or(0),
            domid: self.hdom_id,
            present: false,
            write,
            reserved: false,
            user: !(privileged && pasid.is_some()),
        };
        Some(match f {
            NestedFault::Gcr3 { .. } => base,
            NestedFault::Guest { fault, .. } => IoPageFault {
                present: matches!(fault, FsFault::Access),
                reserved: matches!(fault, FsFault::Reserved { .. }),
                ..base
            },
            NestedFault::Host { gpa, fault } => IoPageFault {
                addr: gpa,
                guest: false,
                pasid: 0,
                present: fault == Fault::Permission,
                user: false,
                ..base
            },
        })
    }
}

impl Drop for AmdNested {
    /// `nested_domain_free()`.
    fn drop(&mut self) {
        self.gdoms.put(self.gdom_id);
    }
}

impl Domain for AmdNested {
    fn is_nested(&self) -> bool {
        true
    }

    /// The parent's: its PTEs carry FC.
    fn enforce_cache_coherency(&self) -> bool {
        true
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.parent.pgsize_bitmap()
    }

    fn aperture(&self) -> Aperture {
        Aperture { start: 0, last: u64::MAX }
    }

    fn map_pages(&self, _iova: u64, _paddr: u64, _pgsize: u64, _pgcount: u64, _prot: Prot) -> Result<(), (Errno, u64)> {
        Err((Errno::EOPNOTSUPP, 0))
    }

    fn unmap_pages(&self, _iova: u64, _pgsize: u64, _pgcount: u64) -> u64 {
        0
    }

    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        self.translate_req(None, iova, access, false).map_err(NestedFault::to_fault)
    }

    fn translate_pasid(&self, pasid: u32, iova: u64, access: Access) -> Result<Translation, Fault> {
        self.translate_req(Some(pasid), iova, access, false).map_err(NestedFault::to_fault)
    }
}
