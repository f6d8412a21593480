//! An SMMUv3 nested domain: a guest's STE (`IOMMU_HWPT_DATA_ARM_SMMUV3`)
//! over a stage 2 nesting parent, allocated through a vSMMU
//! (`arm_vsmmu_alloc_domain_nested()`), and the translation hardware does
//! for a stream whose STE is the one the driver builds from it
//! (`arm_smmu_make_nested_domain_ste()`: Config nested, the guest's
//! S1ContextPtr/S1Fmt/S1CDMax/S1DSS, the host's stage 2).
//!
//! Translation of one transaction (IHI 0070 §3.2 "Translation process", §5
//! data structures, §3.9 SubstreamID, §3.21 stage 2 of stage 1 fetches):
//! 1. the STE: abort (a non-valid or aborting guest STE: terminated, no
//!    event), stage 1 bypass (stage 2 only), nested, or ILLEGAL
//!    (`C_BAD_STE`);
//! 2. the CD: by SubstreamID (with S1CDMax and S1DSS deciding what a
//!    transaction with or without one gets: CD 0, stage 1 bypass,
//!    `F_STREAM_DISABLED` or `C_BAD_SUBSTREAMID`), from the configuration
//!    cache or fetched from the guest's CD table (linear, or 2-level with
//!    4KB or 64KB leaf tables) through stage 2; ILLEGAL CDs are
//!    `C_BAD_CD`;
//! 3. the TLB, tagged by the parent's VMID and the CD's ASID: a hit is
//!    served whatever the guest's tables say now;
//! 4. on a miss, the guest's stage 1 tables are walked, each descriptor's
//!    IPA translated through stage 2 (a stage 2 fault there has class
//!    `TTD`), then the output IPA through stage 2 (class `IN`); the
//!    combined translation is cached at the smaller of the two leaves.
//!
//! The memory type of a combined translation is cacheable when stage 2
//! makes it so: with S2FWB (forced write-back) whatever stage 1 says,
//! without it only if stage 1 is write-back too.
//!
//! Guest memory is read through the SMMU's physical-memory reader
//! ([`SmmuIommu::set_phys_reader`](super::device::SmmuIommu::set_phys_reader));
//! a read that fails is an external abort on the fetch (`F_CD_FETCH`,
//! `F_WALK_EABT`). Hardware access flag and dirty state updates are not
//! written back (see [`walk`](super::walk)).

use std::sync::{Arc, Weak};

use uiommufd_abi::Errno;

use super::device::SmmuIommu;
use super::domain::SmmuDomain;
use super::event::{id, FaultClass, SmmuFault};
use super::lpae::mair;
use super::ste::{self, cdf, stef, CdConfig, CdTable, SteConfig};
use super::tlb::{CdCache, Tlb, TlbHit};
use super::viommu::SmmuViommu;
use super::walk::{walk_s1, S1Request};
use crate::{Access, Aperture, Domain, Fault, Prot, Translation};

/// One transaction as the SMMU sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmmuRequest {
    /// The SubstreamID (PASID), if the transaction has one.
    pub ssid: Option<u32>,
    pub addr: u64,
    pub write: bool,
    /// Privileged (PCIe PMR): EL1 rather than EL0 permissions.
    pub privileged: bool,
}

/// TLB data-word bits of a combined entry (the page address is in bits
/// 51:12).
mod tlbd {
    /// Reads allowed to unprivileged / privileged requests.
    pub const R_EL0: u64 = 1 << 0;
    pub const R_EL1: u64 = 1 << 1;
    /// Writes allowed to unprivileged / privileged requests.
    pub const W_EL0: u64 = 1 << 2;
    pub const W_EL1: u64 = 1 << 3;
    /// Writes may hit: the stage 1 leaf was writable-dirty when filled, or
    /// the fill was a write (which made it dirty).
    pub const DIRTY: u64 = 1 << 4;
    /// Cacheable memory type.
    pub const CACHE: u64 = 1 << 5;
    pub const XN: u64 = 1 << 6;
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

/// A nested domain of an SMMUv3 vIOMMU.
pub struct SmmuNested {
    unit: Arc<SmmuIommu>,
    viommu: Weak<SmmuViommu>,
    parent: Arc<dyn Domain>,
    vmid: u16,
    /// The guest STE words as stored (EATS cleared).
    vste: [u64; 2],
    enable_ats: bool,
    cfg: SteConfig,
    cds: Arc<CdCache>,
    /// The unit's TLB (one pointer less on a hit).
    tlb: Arc<Tlb>,
}

impl core::fmt::Debug for SmmuNested {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmmuNested")
            .field("vste", &format_args!("[{:#x}, {:#x}]", self.vste[0], self.vste[1]))
            .field("cfg", &self.cfg)
            .field("vmid", &self.vmid)
            .finish_non_exhaustive()
    }
}

/// The stage 2 fault of a failed stage 2 translation.
fn s2_fault(f: Fault, class: FaultClass, ipa: u64) -> SmmuFault {
    let eid = if f == Fault::Permission { id::F_PERMISSION } else { id::F_TRANSLATION };
    SmmuFault::stage2(eid, class, ipa)
}

impl SmmuNested {
    /// A nested domain of `viommu` on `unit` over the nesting parent
    /// `parent` (an [`SmmuDomain`] at stage 2, `EINVAL` otherwise) from the
    /// guest STE words `vste` as `arm_smmu_validate_vste()` left them.
    pub fn new(
        unit: &Arc<SmmuIommu>,
        viommu: Weak<SmmuViommu>,
        parent: &Arc<dyn Domain>,
        vste: [u64; 2],
        enable_ats: bool,
    ) -> Result<Self, Errno> {
        let s2 = parent.as_any().downcast_ref::<SmmuDomain>().ok_or(Errno::EINVAL)?;
        let vmid = s2.vmid().ok_or(Errno::EINVAL)?;
        let phys = Self::build_ste(unit, s2, vste, false);
        let cfg = ste::decode_ste(&phys, unit.info());
        let split = match cfg {
            SteConfig::Nested(t) => t.split(),
            _ => 0,
        };
        Ok(SmmuNested {
            unit: Arc::clone(unit),
            viommu,
            parent: Arc::clone(parent),
            vmid,
            vste,
            enable_ats,
            cfg,
            cds: Arc::new(CdCache::new(split)),
            tlb: Arc::clone(unit.tlb()),
        })
    }

    fn build_ste(unit: &SmmuIommu, s2: &SmmuDomain, vste: [u64; 2], ats: bool) -> [u64; 8] {
        let s2ste = s2.make_ste(unit.info(), ats, false).unwrap_or_else(ste::abort_ste);
        ste::nested_ste(vste, s2ste)
    }

    /// The guest STE words as stored.
    pub fn vste(&self) -> [u64; 2] {
        self.vste
    }

    /// Whether the guest asked for full ATS (EATS = 0b01 on a stage 1 STE).
    pub fn enable_ats(&self) -> bool {
        self.enable_ats
    }

    /// The physical STE the driver installs for a master (`ats`: ATS is
    /// enabled for it).
    pub fn physical_ste(&self, ats: bool) -> [u64; 8] {
        Self::build_ste(&self.unit, self.s2(), self.vste, ats)
    }

    /// How streams attached to this domain translate.
    pub fn ste_config(&self) -> SteConfig {
        self.cfg
    }

    /// The configuration cache (CDs fetched from the guest).
    pub fn cd_cache(&self) -> &Arc<CdCache> {
        &self.cds
    }

    pub fn vmid(&self) -> u16 {
        self.vmid
    }

    pub fn unit(&self) -> &Arc<SmmuIommu> {
        &self.unit
    }

    pub fn viommu(&self) -> Option<Arc<SmmuViommu>> {
        self.viommu.upgrade()
    }

    pub fn parent(&self) -> &Arc<dyn Domain> {
        &self.parent
    }

    fn s2(&self) -> &SmmuDomain {
        // Checked in `new`.
        self.parent.as_any().downcast_ref::<SmmuDomain>().expect("a stage 2 SmmuDomain")
    }

    /// The physical address of a stage 1 structure at `ipa`.
    fn s2_pa(&self, ipa: u64, class: FaultClass) -> Result<u64, SmmuFault> {
        self.s2().translate_leaf(ipa, Access::Read).map(|(t, _)| t.paddr).map_err(|f| s2_fault(f, class, ipa))
    }

    /// Read the word at guest `ipa` (a CD, L1CD or table descriptor).
    fn fetch(&self, ipa: u64, class: FaultClass) -> Result<u64, SmmuFault> {
        let pa = self.s2_pa(ipa, class)?;
        self.unit.read_phys(pa).map_err(|_| {
            let eid = if class == FaultClass::Cd { id::F_CD_FETCH } else { id::F_WALK_EABT };
            SmmuFault::fetch(eid, class, pa)
        })
    }

    /// The CD of `ssid`: cached, or fetched and decoded (§5.3, §5.4).
    pub fn cd(&self, t: &CdTable, ssid: u32) -> Result<CdConfig, SmmuFault> {
        if let Some(cd) = self.cds.lookup(ssid) {
            return Ok(cd);
        }
        let gen = self.cds.generation();
        let cd_ipa = if t.fmt == stef::S1FMT_LINEAR {
            t.ptr + 64 * u64::from(ssid)
        } else {
            let split = t.split();
            let l1 = ssid >> split;
            let desc = match self.cds.lookup_l1(l1) {
                Some(d) => d,
                None => {
                    let d = self.fetch(t.ptr + 8 * u64::from(l1), FaultClass::Cd)?;
                    if d & cdf::L1_V != 0 {
                        self.cds.insert_l1(gen, l1, d);
                    }
                    d
                }
            };
            if desc & cdf::L1_V == 0 {
                return Err(SmmuFault::config(id::C_BAD_SUBSTREAMID));
            }
            (desc & cdf::L1_L2PTR) + 64 * u64::from(ssid & ((1 << split) - 1))
        };
        // A CD is 64 bytes, naturally aligned: one stage 2 page.
        let pa = self.s2_pa(cd_ipa, FaultClass::Cd)?;
        let mut words = [0u64; 4];
        for (i, w) in words.iter_mut().enumerate() {
            let a = pa + 8 * i as u64;
            *w = self.unit.read_phys(a).map_err(|_| SmmuFault::fetch(id::F_CD_FETCH, FaultClass::Cd, a))?;
        }
        let cd = ste::decode_cd(words, self.unit.info()).ok_or(SmmuFault::config(id::C_BAD_CD))?;
        self.cds.insert(gen, ssid, cd);
        Ok(cd)
    }

    /// Translate one transaction: the STE and SubstreamID checks and a
    /// TLB hit through the hot CD inline, the rest (the CD, a walk) out of
    /// line.
    #[inline(always)]
    pub fn translate_req(&self, req: SmmuRequest) -> Result<Translation, SmmuFault> {
        let table = match &self.cfg {
            SteConfig::Nested(t) => t,
            _ => return self.translate_cold(req),
        };
        let ssid = match req.ssid {
            None if table.cdmax == 0 => 0,
            _ => return self.translate_cold(req),
        };
        self.translate_ssid(req, table, ssid)
    }

    /// The rest of a translation once the STE gave a CD table and the
    /// request a SubstreamID: the fast path (the hot CD's ASID and address
    /// check, then the TLB) inline, the CD and a walk out of line.
    #[inline(always)]
    fn translate_ssid(&self, req: SmmuRequest, table: &CdTable, ssid: u32) -> Result<Translation, SmmuFault> {
        if let Some(t) = self.hot_hit(ssid, req) {
            return Ok(t);
        }
        self.translate_slow(req, table, ssid)
    }

    /// A TLB hit through the hot CD that serves `req`, if there is one.
    #[inline(always)]
    fn hot_hit(&self, ssid: u32, req: SmmuRequest) -> Option<Translation> {
        let asid = self.cds.hot_asid(ssid, req.addr)?;
        let hit = self.tlb.lookup(self.vmid, asid, req.addr)?;
        Self::serve(hit, req)
    }

    /// [`Domain::translate`] past its inline hit (the same steps as
    /// [`Self::translate_req`]): `table` given, the rest of a request
    /// without SubstreamID (CD 0).
    #[inline(never)]
    fn translate_dma_slow(&self, table: &CdTable, iova: u64, write: bool) -> Result<Translation, Fault> {
        let req = SmmuRequest { ssid: None, addr: iova, write, privileged: false };
        self.translate_slow(req, table, 0).map_err(|f| f.to_fault())
    }

    /// [`Domain::translate`] for a stream whose STE is not nested or whose
    /// CD table has SubstreamIDs.
    #[inline(never)]
    fn translate_dma_cold(&self, iova: u64, write: bool) -> Result<Translation, Fault> {
        let req = SmmuRequest { ssid: None, addr: iova, write, privileged: false };
        self.translate_cold(req).map_err(|f| f.to_fault())
    }

    /// [`Self::translate_req`] for what its inline part does not decide:
    /// a SubstreamID, a stream that is not nested.
    #[inline(never)]
    fn translate_cold(&self, req: SmmuRequest) -> Result<Translation, SmmuFault> {
        let table = match self.cfg {
            SteConfig::Abort => return Err(SmmuFault::ABORT),
            SteConfig::Illegal => return Err(SmmuFault::config(id::C_BAD_STE)),
            SteConfig::S2Only => return self.stage2_only(req),
            SteConfig::Nested(t) => t,
        };
        let ssid = match req.ssid {
            Some(s) => {
                let bad = table.cdmax == 0 || s >> table.cdmax != 0 || (s == 0 && table.dss == stef::S1DSS_SSID0);
                if bad {
                    return Err(SmmuFault::config(id::C_BAD_SUBSTREAMID));
                }
                s
            }
            None if table.cdmax == 0 => 0,
            None => match table.dss {
                stef::S1DSS_TERMINATE => return Err(SmmuFault::config(id::F_STREAM_DISABLED)),
                stef::S1DSS_BYPASS => return self.stage2_only(req),
                _ => 0,
            },
        };
        self.translate_ssid(req, &table, ssid)
    }

    /// The CD (cached or fetched), a TLB lookup with its ASID, and on a
    /// miss the walk and the fill.
    #[inline(never)]
    fn translate_slow(&self, req: SmmuRequest, table: &CdTable, ssid: u32) -> Result<Translation, SmmuFault> {
        let cd = self.cd(table, ssid)?;
        let Some(tt) = ste::select_tt(&cd, req.addr) else {
            let mut f = SmmuFault::stage1(id::F_TRANSLATION, cd.record);
            f.out_of_range = true;
            return Err(f);
        };
        if let Some(hit) = self.tlb.lookup(self.vmid, cd.asid, req.addr) {
            if let Some(t) = Self::serve(hit, req) {
                return Ok(t);
            }
            // The entry exists but the access needs a walk (a permission
            // the entry lacks, or the dirty-state update of a write).
            self.unit.tlb().note_miss();
        }
        let gen = self.unit.tlb().generation();
        let s1req = S1Request { write: req.write, privileged: req.privileged };
        let w = walk_s1(tt, &cd, req.addr, s1req, |ipa| self.fetch(ipa, FaultClass::Ttd))?;
        let access = if req.write { Access::Write } else { Access::Read };
        let (t2, s2_shift) = self.s2().translate_leaf(w.out, access).map_err(|f| s2_fault(f, FaultClass::In, w.out))?;
        let shift = w.shift.min(s2_shift);
        let offset = req.addr & ((1u64 << shift) - 1);
        let mut data = (t2.paddr - offset) & tlbd::ADDR;
        let (s2r, s2w) = (t2.prot.contains(Prot::READ), t2.prot.contains(Prot::WRITE));
        if s2r {
            data |= tlbd::R_EL1;
            if w.el0 {
                data |= tlbd::R_EL0;
            }
        }
        if s2w && w.writable {
            data |= tlbd::W_EL1;
            if w.el0 {
                data |= tlbd::W_EL0;
            }
        }
        if w.dirty {
            data |= tlbd::DIRTY;
        }
        if t2.prot.contains(Prot::CACHE) && (self.s2().config().fwb || mair::attr_is_wb_cacheable(w.attr)) {
            data |= tlbd::CACHE;
        }
        if w.xn {
            data |= tlbd::XN;
        }
        self.unit.tlb().insert(gen, self.vmid, cd.asid, w.global, req.addr, shift, data);
        Ok(Translation { paddr: t2.paddr, len: (1u64 << shift) - offset, prot: Self::prot(data, req.privileged) })
    }

    /// A hit that satisfies `req`, or `None` to walk (a permission the
    /// entry lacks, or a write through an entry whose stage 1 leaf was
    /// clean, which needs the dirty-state update).
    #[inline(always)]
    fn serve(hit: TlbHit, req: SmmuRequest) -> Option<Translation> {
        let d = hit.data;
        let ok = match (req.write, req.privileged) {
            (false, false) => d & tlbd::R_EL0 != 0,
            (false, true) => d & tlbd::R_EL1 != 0,
            (true, false) => d & tlbd::W_EL0 != 0 && d & tlbd::DIRTY != 0,
            (true, true) => d & tlbd::W_EL1 != 0 && d & tlbd::DIRTY != 0,
        };
        if !ok {
            return None;
        }
        let size = 1u64 << hit.page_shift;
        let offset = req.addr & (size - 1);
        Some(Translation { paddr: (d & tlbd::ADDR) + offset, len: size - offset, prot: Self::prot(d, req.privileged) })
    }

    fn prot(d: u64, privileged: bool) -> Prot {
        let (r, w) = if privileged { (tlbd::R_EL1, tlbd::W_EL1) } else { (tlbd::R_EL0, tlbd::W_EL0) };
        let mut p = 0;
        if d & r != 0 {
            p |= Prot::READ.0;
        }
        if d & w != 0 {
            p |= Prot::WRITE.0;
        }
        if d & tlbd::CACHE != 0 {
            p |= Prot::CACHE.0;
        }
        if d & tlbd::XN != 0 {
            p |= Prot::NOEXEC.0;
        }
        Prot(p)
    }

    /// Stage 1 bypassed: the input address is the IPA.
    fn stage2_only(&self, req: SmmuRequest) -> Result<Translation, SmmuFault> {
        let access = if req.write { Access::Write } else { Access::Read };
        self.s2().translate_leaf(req.addr, access).map(|(t, _)| t).map_err(|f| s2_fault(f, FaultClass::In, req.addr))
    }
}

impl Domain for SmmuNested {
    fn is_nested(&self) -> bool {
        true
    }

    /// The parent's: CANWBS masters only, if it enforces.
    fn enforce_cache_coherency(&self) -> bool {
        self.parent.enforce_cache_coherency()
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.parent.pgsize_bitmap()
    }

    /// The stage 1 input range (48 bits, 52 with VAX).
    fn aperture(&self) -> Aperture {
        let bits = if self.unit.info().has(super::info::feat::VAX) { 52 } else { 48 };
        Aperture { start: 0, last: (1u64 << bits) - 1 }
    }

    /// The guest owns stage 1: nothing maps through here.
    fn map_pages(&self, _iova: u64, _paddr: u64, _pgsize: u64, _pgcount: u64, _prot: Prot) -> Result<(), (Errno, u64)> {
        Err((Errno::EOPNOTSUPP, 0))
    }

    fn unmap_pages(&self, _iova: u64, _pgsize: u64, _pgcount: u64) -> u64 {
        0
    }

    /// A transaction without SubstreamID, unprivileged:
    /// [`SmmuNested::translate_req`], with everything past a TLB hit
    /// through the hot CD out of line.
    #[inline]
    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        let write = access == Access::Write;
        if let SteConfig::Nested(table) = &self.cfg {
            if table.cdmax == 0 {
                let req = SmmuRequest { ssid: None, addr: iova, write, privileged: false };
                if let Some(t) = self.hot_hit(0, req) {
                    return Ok(t);
                }
                return self.translate_dma_slow(table, iova, write);
            }
        }
        self.translate_dma_cold(iova, write)
    }

    /// A transaction with SubstreamID `pasid`: the CD table is the
    /// guest's.
    fn translate_pasid(&self, pasid: u32, iova: u64, access: Access) -> Result<Translation, Fault> {
        let req = SmmuRequest { ssid: Some(pasid), addr: iova, write: access == Access::Write, privileged: false };
        self.translate_req(req).map_err(|f| f.to_fault())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::IommuDevice;
    use crate::smmuv3::cmd;
    use crate::smmuv3::lpae::desc;
    use crate::smmuv3::regs::SmmuRegs;
    use crate::smmuv3::ste::stef;
    use crate::smmuv3::testutil::*;

    const K4: u64 = 1 << 12;
    const M2: u64 = 1 << 21;

    fn req(ssid: Option<u32>, addr: u64, write: bool) -> SmmuRequest {
        SmmuRequest { ssid, addr, write, privileged: false }
    }

    fn nested_of(d: &Arc<dyn Domain>) -> &SmmuNested {
        d.as_any().downcast_ref::<SmmuNested>().unwrap()
    }

    /// A guest with CD 0 (ASID 5) of a linear table and a page at IOVA
    /// 0x1234_5000 -> GPA 0x30_0000.
    fn simple() -> (Guest, Arc<dyn Domain>) {
        let g = Guest::new();
        g.write_cd(CD_TABLE, guest_cd_word0(5), S1_ROOT);
        g.map_s1(S1_ROOT, 0x1234_5000, 0x30_0000, PAGE);
        let d = g.attached(vste_linear(0, 0));
        (g, d)
    }

    #[test]
    fn end_to_end_through_guest_memory() {
        let (g, d) = simple();
        let t = d.translate(0x1234_5678, Access::Write).unwrap();
        assert_eq!(t, Translation { paddr: HOST_BASE + 0x30_0678, len: K4 - 0x678, prot: RWC });
        let n = nested_of(&d);
        assert_eq!(n.cd_cache().len(), (1, 0));
        assert_eq!(g.unit.tlb().stats().entries, 1);
        assert!(d.is_nested());
        assert_eq!(d.pgsize_bitmap(), g.parent.pgsize_bitmap());
        assert_eq!(d.aperture(), Aperture { start: 0, last: (1 << 48) - 1 });
        assert_eq!(d.map_pages(0, 0, K4, 1, RW), Err((Errno::EOPNOTSUPP, 0)));
        assert_eq!(d.unmap_pages(0, K4, 1), 0);
        // The physical STE: Config nested, the guest's S1 fields, MEV, the
        // parent's stage 2 with S2FWB.
        let ste = n.physical_ste(false);
        assert_eq!(ste[0], stef::V | stef::CFG_NESTED << 1 | CD_TABLE);
        assert_eq!(ste[1] & (stef::MEV | stef::S2FWB), stef::MEV | stef::S2FWB);
        assert_eq!(ste[2] & 0xffff, u64::from(n.vmid()));
        // A 2MB guest block over the parent's 2MB blocks: a 2MB entry.
        g.map_s1_at(S1_ROOT, 0x4000_0000, 0x40_0000, PAGE, 2);
        let t = d.translate(0x4000_0000 + 0x1_2345, Access::Read).unwrap();
        assert_eq!((t.paddr, t.len), (HOST_BASE + 0x41_2345, M2 - 0x1_2345));
    }

    #[test]
    fn stale_translation_until_tlbi() {
        let (g, d) = simple();
        let iova = 0x1234_5000;
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, HOST_BASE + 0x30_0000);
        // The guest repoints its PTE; the SMMU keeps the cached entry.
        let pte = g.pte_addr(S1_ROOT, iova);
        g.write(pte, 0x50_0000 | PAGE);
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, HOST_BASE + 0x30_0000);
        // A TLBI for another ASID, or another address, changes nothing.
        assert_eq!(g.invalidate(&[cmd::tlbi_nh_va(0, 6, iova, true)]), (Ok(()), 1));
        assert_eq!(g.invalidate(&[cmd::tlbi_nh_va(0, 5, iova + K4, true)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, HOST_BASE + 0x30_0000);
        // The right one (the guest's VMID field is replaced by the vSMMU's).
        assert_eq!(g.invalidate(&[cmd::tlbi_nh_va(0x77, 5, iova, true)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, HOST_BASE + 0x50_0000);
        // Unmapped in the guest: still cached, then gone after NH_ASID.
        g.write(pte, 0);
        assert!(d.translate(iova, Access::Read).is_ok());
        assert_eq!(g.invalidate(&[cmd::tlbi_nh_asid(0, 5)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read), Err(Fault::NotPresent));
        // NSNH_ALL (made NH_ALL of the VMID) and a range NH_VAA do it too.
        g.write(pte, 0x60_0000 | PAGE);
        d.translate(iova, Access::Read).unwrap();
        g.write(pte, 0x70_0000 | PAGE);
        assert_eq!(g.invalidate(&[cmd::tlbi_nsnh_all()]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, HOST_BASE + 0x70_0000);
        g.write(pte, 0x80_0000 | PAGE);
        let r = cmd::with_range(
            cmd::tlbi_nh_vaa(0, iova - 3 * K4, true),
            cmd::RangeFields { tg: 1, scale: 1, num: 1, ttl: 3 },
        );
        assert_eq!(g.invalidate(&[r]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, HOST_BASE + 0x80_0000);
    }

    #[test]
    fn cfgi_cd_refreshes_the_configuration_cache() {
        let (g, d) = simple();
        let iova = 0x1234_5000;
        d.translate(iova, Access::Read).unwrap();
        // The guest points CD 0 at a new table mapping the page elsewhere,
        // with a new ASID.
        let root2 = 0x28_0000;
        g.map_s1(root2, iova, 0x90_0000, PAGE);
        g.write_cd(CD_TABLE, guest_cd_word0(9), root2);
        // A TLBI alone: the cached CD still leads to the old table.
        assert_eq!(g.invalidate(&[cmd::tlbi_nh_all(0)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, HOST_BASE + 0x30_0000);
        // CFGI_CD with the virtual StreamID: the new CD is fetched.
        assert_eq!(g.invalidate(&[cmd::cfgi_cd(VSID as u32, 0, true)]), (Ok(()), 1));
        assert_eq!(d.translate(iova, Access::Read).unwrap().paddr, HOST_BASE + 0x90_0000);
        assert_eq!(nested_of(&d).cd_cache().lookup(0).unwrap().asid, 9);
        // CFGI_CD_ALL and a bad CD: C_BAD_CD.
        g.write(CD_TABLE, 0);
        assert_eq!(g.invalidate(&[cmd::cfgi_cd_all(VSID as u32), cmd::tlbi_nh_all(0)]), (Ok(()), 2));
        let n = nested_of(&d);
        assert_eq!(n.translate_req(req(None, iova, false)).unwrap_err().id, crate::smmuv3::event::id::C_BAD_CD);
        assert_eq!(g.unit.cmd_stats().cfgi, 2);
    }

    #[test]
    fn substreams_and_two_level_cd_tables() {
        use crate::smmuv3::event::id;
        let g = Guest::new();
        // 2-level, 4KB leaf tables (64 CDs each), 8 SubstreamID bits:
        // L1 at CD_TABLE, entry 1 -> L2 at 0x12_0000.
        g.write(CD_TABLE + 8, 0x12_0000 | 1);
        g.write_cd(0x12_0000 + 64, guest_cd_word0(65), S1_ROOT);
        g.map_s1(S1_ROOT, 0x5000, 0x31_0000, PAGE);
        let vste = [stef::V | stef::CFG_S1_TRANS << 1 | CD_TABLE | 1 << 4 | 8 << 59, stef::S1DSS_SSID0];
        let d = g.attached(vste);
        let n = nested_of(&d);
        let t = d.translate_pasid(65, 0x5008, Access::Read).unwrap();
        assert_eq!(t.paddr, HOST_BASE + 0x31_0008);
        assert_eq!(n.cd_cache().len(), (1, 1));
        // L1 entry 0 is invalid: SSID 1 and the default substream (SSID0).
        assert_eq!(n.translate_req(req(Some(1), 0x5000, false)).unwrap_err().id, id::C_BAD_SUBSTREAMID);
        assert_eq!(n.translate_req(req(None, 0x5000, false)).unwrap_err().id, id::C_BAD_SUBSTREAMID);
        // With S1DSS SSID0, SubstreamID 0 itself is rejected; beyond
        // S1CDMax too.
        assert_eq!(n.translate_req(req(Some(0), 0x5000, false)).unwrap_err().id, id::C_BAD_SUBSTREAMID);
        assert_eq!(n.translate_req(req(Some(256), 0x5000, false)).unwrap_err().id, id::C_BAD_SUBSTREAMID);
        // CFGI_CD without Leaf drops the L1 descriptor too.
        assert_eq!(g.invalidate(&[cmd::cfgi_cd(VSID as u32, 65, false)]), (Ok(()), 1));
        assert_eq!(n.cd_cache().len(), (0, 0));
        // S1DSS terminate / bypass for transactions without SubstreamID.
        g.dev.detached(0);
        let term = g.attached([vste[0], stef::S1DSS_TERMINATE]);
        let e = nested_of(&term).translate_req(req(None, 0x5000, false)).unwrap_err();
        assert_eq!(e.id, id::F_STREAM_DISABLED);
        let byp = g.attached([vste[0], stef::S1DSS_BYPASS]);
        assert_eq!(byp.translate(0x5000, Access::Read).unwrap().paddr, HOST_BASE + 0x5000);
        assert_eq!(byp.translate_pasid(65, 0x5000, Access::Read).unwrap().paddr, HOST_BASE + 0x31_0000);
        // Substreams disabled (S1CDMax 0): any SubstreamID is bad.
        let (g, d) = simple();
        let _ = g;
        assert_eq!(nested_of(&d).translate_req(req(Some(1), 0, false)).unwrap_err().id, id::C_BAD_SUBSTREAMID);
        // 64KB leaf tables (1024 CDs each).
        let g = Guest::new();
        g.write(CD_TABLE + 8, 0x12_0000 | 1);
        g.write_cd(0x12_0000 + 64 * 3, guest_cd_word0(1), S1_ROOT);
        g.map_s1(S1_ROOT, 0x5000, 0x32_0000, PAGE);
        let d = g.attached([stef::V | stef::CFG_S1_TRANS << 1 | CD_TABLE | 2 << 4 | 12 << 59, 0]);
        assert_eq!(d.translate_pasid(1027, 0x5000, Access::Read).unwrap().paddr, HOST_BASE + 0x32_0000);
    }

    #[test]
    fn faults_as_the_spec_records_them() {
        use crate::smmuv3::event::{id, FaultClass};
        let (g, d) = simple();
        let n = nested_of(&d);
        // No leaf: F_TRANSLATION of the input, recorded (CD.R).
        let e = n.translate_req(req(None, 0x9000, false)).unwrap_err();
        assert_eq!((e.id, e.class, e.s2, e.record), (id::F_TRANSLATION, FaultClass::In, false, true));
        // Beyond TTB0's range: out of range.
        assert_eq!(d.translate(1 << 50, Access::Read), Err(Fault::OutOfRange));
        // A read-only leaf: F_PERMISSION on write.
        g.map_s1(S1_ROOT, 0xa000, 0x30_1000, PAGE | desc::AP_RDONLY);
        assert_eq!(n.translate_req(req(None, 0xa000, true)).unwrap_err().id, id::F_PERMISSION);
        assert_eq!(d.translate(0xa000, Access::Write), Err(Fault::Permission));
        assert_eq!(d.translate(0xa000, Access::Read).unwrap().prot, Prot::READ | Prot::CACHE);
        // A table outside guest RAM: stage 2 translation fault on the
        // walk (class TTD, the descriptor's IPA).
        let idx0 = (0x80_0000_0000u64 >> 39) & 511;
        g.write(S1_ROOT + idx0 * 8, 0x1_0000_0000 | desc::TYPE_TABLE);
        let e = n.translate_req(req(None, 0x80_0000_0000, false)).unwrap_err();
        assert_eq!((e.id, e.class, e.s2, e.ipa), (id::F_TRANSLATION, FaultClass::Ttd, true, 0x1_0000_0000));
        // An output IPA outside guest RAM: stage 2, class IN.
        g.map_s1(S1_ROOT, 0xb000, 0x1_0000_0000, PAGE);
        let e = n.translate_req(req(None, 0xb000, false)).unwrap_err();
        assert_eq!((e.id, e.class, e.s2, e.ipa), (id::F_TRANSLATION, FaultClass::In, true, 0x1_0000_0000));
        // Read-only at stage 2: stage 2 permission fault on a write.
        g.parent.unmap_pages(0x60_0000, M2, 1);
        crate::map(&*g.parent, 0x60_0000, HOST_BASE + 0x60_0000, M2, Prot::READ | Prot::CACHE, 0).unwrap();
        g.map_s1(S1_ROOT, 0xc000, 0x60_0000, PAGE);
        let e = n.translate_req(req(None, 0xc000, true)).unwrap_err();
        assert_eq!((e.id, e.class, e.s2), (id::F_PERMISSION, FaultClass::In, true));
        assert!(n.translate_req(req(None, 0xc000, false)).is_ok());
        // Guest RAM the SMMU cannot read (the reader fails): F_WALK_EABT.
        let top = RAM - M2;
        assert_eq!(g.parent.unmap_pages(top, M2, 1), M2);
        crate::map(&*g.parent, top, HOST_BASE + RAM, M2, RWC, 0).unwrap();
        let idx0 = (0x100_0000_0000u64 >> 39) & 511;
        g.write(S1_ROOT + idx0 * 8, top | desc::TYPE_TABLE);
        let e = n.translate_req(req(None, 0x100_0000_0000, false)).unwrap_err();
        assert_eq!((e.id, e.class, e.fetch_pa), (id::F_WALK_EABT, FaultClass::Ttd, HOST_BASE + RAM));
        // R = 0: translation faults are not recorded (once CFGI_CD made
        // the SMMU fetch the changed CD; `n` is still the stream's STE).
        g.write(CD_TABLE, guest_cd_word0(5) & !crate::smmuv3::ste::cdf::R);
        assert!(n.translate_req(req(None, 0x9000, false)).unwrap_err().record);
        assert_eq!(g.invalidate(&[cmd::cfgi_cd(VSID as u32, 0, true)]), (Ok(()), 1));
        assert!(!n.translate_req(req(None, 0x9000, false)).unwrap_err().record);
        g.write(CD_TABLE, guest_cd_word0(5));
        assert_eq!(g.invalidate(&[cmd::cfgi_cd(VSID as u32, 0, true)]), (Ok(()), 1));
        // A CD table whose CD cannot be fetched: F_CD_FETCH; outside
        // guest RAM: stage 2 fault with class CD.
        let cdf = g.attached([stef::V | stef::CFG_S1_TRANS << 1 | top, 0]);
        let e = nested_of(&cdf).translate_req(req(None, 0, false)).unwrap_err();
        assert_eq!((e.id, e.fetch_pa), (id::F_CD_FETCH, HOST_BASE + RAM));
        let cds2 = g.attached([stef::V | stef::CFG_S1_TRANS << 1 | 0x1_0000_0000, 0]);
        let e = nested_of(&cds2).translate_req(req(None, 0, false)).unwrap_err();
        assert_eq!((e.id, e.class, e.s2), (id::F_TRANSLATION, FaultClass::Cd, true));
        // C_BAD_STE: S1CDMax beyond the SMMU's 20 SubstreamID bits.
        let bad = g.attached([stef::V | stef::CFG_S1_TRANS << 1 | CD_TABLE | 21 << 59, 0]);
        assert_eq!(nested_of(&bad).translate_req(req(None, 0, false)).unwrap_err().id, id::C_BAD_STE);
        // Abort and bypass guest STEs.
        let abort = g.attached([0, 0]);
        assert_eq!(nested_of(&abort).translate_req(req(None, 0, false)), Err(SmmuFault::ABORT));
        let byp = g.attached([stef::V | stef::CFG_BYPASS << 1, 0]);
        assert_eq!(byp.translate(0x1234, Access::Write).unwrap().paddr, HOST_BASE + 0x1234);
        assert_eq!(
            nested_of(&byp).translate_req(req(None, RAM, false)).unwrap_err(),
            SmmuFault::stage2(id::F_TRANSLATION, FaultClass::In, RAM)
        );
    }

    #[test]
    fn attaching_drops_the_configuration_cache() {
        let (g, d) = simple();
        d.translate(0x1234_5000, Access::Read).unwrap();
        assert_eq!(nested_of(&d).cd_cache().len(), (1, 0));
        // Another STE for the stream; the guest changes CD 0 meanwhile and
        // its CFGI_CD reaches the STE installed then, not this domain.
        let other = g.attached([stef::V | stef::CFG_BYPASS << 1, 0]);
        g.write(CD_TABLE, guest_cd_word0(5) & !crate::smmuv3::ste::cdf::R);
        assert_eq!(g.invalidate(&[cmd::cfgi_cd(VSID as u32, 0, true)]), (Ok(()), 1));
        assert_eq!(nested_of(&d).cd_cache().len(), (1, 0));
        drop(other);
        // Installing this domain's STE again (CFGI_STE) drops the old CD.
        g.dev.check_attach(&*d).unwrap();
        assert!(nested_of(&d).cd_cache().is_empty());
        let n = nested_of(&d);
        assert!(!n.translate_req(req(None, 0x9000, false)).unwrap_err().record);
    }

    /// `arm_smmu_handle_event()` for a nested master: a recorded stage 1
    /// fault goes to the vIOMMU's ARM_SMMUV3 queue with the virtual
    /// StreamID; stage 2 faults, unrecorded ones and aborts do not.
    #[test]
    fn stage1_faults_reach_the_vsmmu_with_the_virtual_sid() {
        use crate::smmuv3::event::{id, FaultClass};
        use uiommufd_abi::IOMMU_VEVENTQ_TYPE_ARM_SMMUV3;
        let (g, d) = simple();
        let n = nested_of(&d);
        let f = n.translate_req(req(None, 0x9000, true)).unwrap_err();
        assert_eq!(g.dev.report_fault(&f, None, 0x9000, true, false), Ok(()));
        let events = g.core.events.lock().unwrap().clone();
        assert_eq!(events.len(), 1);
        let (ty, bytes) = &events[0];
        assert_eq!(*ty, IOMMU_VEVENTQ_TYPE_ARM_SMMUV3);
        let w: Vec<u64> = bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        // F_TRANSLATION, vSID 7 (not SID 0x10); a write of class IN.
        assert_eq!(w, vec![0x10 | VSID << 32, 2 << 40, 0x9000, 0]);
        // A stage 2 fault is the host's, not the guest's.
        g.map_s1(S1_ROOT, 0xb000, 0x1_0000_0000, PAGE);
        let f = n.translate_req(req(None, 0xb000, false)).unwrap_err();
        assert_eq!((f.s2, f.class), (true, FaultClass::In));
        assert_eq!(g.dev.report_fault(&f, None, 0xb000, false, false), Err(Errno::EOPNOTSUPP));
        // Unrecorded faults and aborts write nothing.
        assert_eq!(g.dev.report_fault(&SmmuFault::ABORT, None, 0, false, false), Ok(()));
        assert_eq!(g.core.events.lock().unwrap().len(), 1);
        assert_eq!(id::name(f.id), "F_TRANSLATION");
    }

    #[test]
    fn parent_unmap_drops_combined_entries() {
        let (g, d) = simple();
        let iova = 0x1234_5000;
        d.translate(iova, Access::Read).unwrap();
        assert_eq!(g.unit.tlb().stats().entries, 1);
        // The host unmaps the guest page's 2MB: the driver's TLBI_NH_ALL
        // of the VMID drops the entry without any guest invalidation.
        assert_eq!(g.parent.unmap_pages(0x20_0000, M2, 1), M2);
        assert_eq!(g.unit.tlb().stats().entries, 0);
        assert!(d.translate(iova, Access::Read).is_err());
    }

    #[test]
    fn writes_and_dirty_state() {
        let (g, d) = simple();
        let n = nested_of(&d);
        // A writable-clean guest page with HD: the read fill does not
        // allow writes to hit; a write walks again and then hits.
        g.write(CD_TABLE, guest_cd_word0(5) | crate::smmuv3::ste::cdf::HA | crate::smmuv3::ste::cdf::HD);
        assert_eq!(g.invalidate(&[cmd::cfgi_cd(VSID as u32, 0, true), cmd::tlbi_nh_all(0)]), (Ok(()), 2));
        g.map_s1(S1_ROOT, 0xd000, 0x33_0000, PAGE | desc::AP_RDONLY | desc::DBM);
        d.translate(0xd000, Access::Read).unwrap();
        let misses = g.unit.tlb().stats().misses;
        d.translate(0xd000, Access::Write).unwrap();
        assert_eq!(g.unit.tlb().stats().misses, misses + 1);
        d.translate(0xd000, Access::Write).unwrap();
        assert_eq!(g.unit.tlb().stats().misses, misses + 1);
        // EL1-only page: privileged requests only.
        g.map_s1(S1_ROOT, 0xe000, 0x33_1000, PAGE & !desc::AP_UNPRIV);
        assert_eq!(d.translate(0xe000, Access::Read), Err(Fault::Permission));
        let p = SmmuRequest { ssid: None, addr: 0xe000, write: true, privileged: true };
        assert_eq!(n.translate_req(p).unwrap().paddr, HOST_BASE + 0x33_1000);
        // Cached for EL1 only.
        assert!(n.translate_req(p).is_ok());
        assert_eq!(d.translate(0xe000, Access::Read), Err(Fault::Permission));
    }

    #[test]
    fn memory_type_follows_s2fwb() {
        // With S2FWB the combined type is write-back even for a guest
        // non-cacheable mapping (AttrIndx 0: MAIR 0x44).
        let (g, d) = simple();
        g.map_s1(S1_ROOT, 0xf000, 0x34_0000, PAGE & !(7 << 2));
        assert!(d.translate(0xf000, Access::Read).unwrap().prot.contains(Prot::CACHE));
        // Without S2FWB the guest's non-cacheable wins.
        let g = Guest::with_regs(SmmuRegs::builder().fwb(false).build());
        g.write_cd(CD_TABLE, guest_cd_word0(5), S1_ROOT);
        g.map_s1(S1_ROOT, 0xf000, 0x34_0000, PAGE & !(7 << 2));
        g.map_s1(S1_ROOT, 0x1_0000, 0x34_1000, PAGE);
        let d = g.attached(vste_linear(0, 0));
        assert!(!d.translate(0xf000, Access::Read).unwrap().prot.contains(Prot::CACHE));
        assert!(d.translate(0x1_0000, Access::Read).unwrap().prot.contains(Prot::CACHE));
        assert!(!g.parent.as_any().downcast_ref::<SmmuDomain>().unwrap().config().fwb);
    }

    /// TLB hit, CD-cached miss and raw costs. Run with
    /// `cargo test -p uiommufd-hw --release -- --ignored --nocapture timing`.
    #[test]
    #[ignore]
    fn timing_nested() {
        let (g, d) = simple();
        let iova = 0x1234_5000;
        const N: u64 = 5_000_000;
        d.translate(iova, Access::Read).unwrap();
        let start = std::time::Instant::now();
        for i in 0..N {
            if let Ok(t) = d.translate(std::hint::black_box(iova + (i & 0xff8)), Access::Read) {
                std::hint::black_box(t.paddr);
            }
        }
        let hit = start.elapsed().as_nanos() as f64 / N as f64;
        const M: u64 = 200_000;
        let tlb = Arc::clone(g.unit.tlb());
        let vmid = nested_of(&d).vmid();
        let start = std::time::Instant::now();
        for _ in 0..M {
            tlb.invalidate_va(vmid, Some(5), iova, iova);
            if let Ok(t) = d.translate(iova, Access::Read) {
                std::hint::black_box(t.paddr);
            }
        }
        let miss = start.elapsed().as_nanos() as f64 / M as f64;
        println!("smmuv3 nested: TLB hit {hit:.1} ns; TLBI + 4-level walk through stage 2 {miss:.0} ns");
    }
}
