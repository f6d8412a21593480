//! An SMMUv3 instance and the masters behind it, as the Linux arm-smmu-v3
//! driver presents them to the iommu core (`arm_smmu_ops`).
//!
//! Model: [`SmmuIommu`] is one SMMU: its registers and what the driver
//! derived from them ([`SmmuInfo`]), its TLB, its ASIDs and VMIDs, its
//! command processing ([`SmmuIommu::issue`]) and the streams registered on
//! it. [`SmmuDevice`] is a master (a PCI function with one StreamID) with
//! the properties firmware and PCI give it (PASID width, ATS, CANWBS); it
//! implements [`IommuDevice`] with the driver's rules:
//! - `capable`: `arm_smmu_capable()` (coherency is the SMMU's,
//!   enforcement the master's CANWBS, dirty tracking HTTU HD + coherency);
//! - `alloc_paging`: `arm_smmu_domain_alloc_paging_flags()`: stage 1 when
//!   the SMMU has it (and for dirty tracking or PASID use), stage 2 for a
//!   nesting parent; the ASID (`EBUSY` when none is left) or VMID
//!   (`ENOSPC`) is allocated with the domain;
//! - `check_attach`: `arm_smmu_attach_dev()` / `arm_smmu_attach_dev_nested()`
//!   with `arm_smmu_attach_prepare()`; `check_attach_pasid`:
//!   `arm_smmu_s1_set_dev_pasid()` / `arm_smmu_set_pasid()`;
//! - `hw_info`: `arm_smmu_hw_info()`; `viommu_supported` / `viommu_init`:
//!   `arm_smmu_get_viommu_size()` / `arm_vsmmu_init()`.
//!
//! Physical memory: nested translation reads the guest's CD tables and
//! stage 1 tables through a reader the engine installs
//! ([`SmmuIommu::set_phys_reader`]); until then those reads fail
//! (`F_CD_FETCH`).
//!
//! Not modelled: identity and blocking domains as objects (a detached
//! master is blocked), SVA, stall-model faults and PRI, the event queue as
//! memory (faults are returned to the caller and can be forwarded to a
//! vEVENTQ with [`SmmuDevice::report_fault`]), ATCs (`CMD_ATC_INV` is
//! accepted and counted), 16KB/64KB-granule domains of the host.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use uiommufd_abi::{
    Errno, IOMMU_HW_INFO_TYPE_ARM_SMMUV3, IOMMU_HW_INFO_TYPE_DEFAULT, IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV,
    IOMMU_VIOMMU_TYPE_ARM_SMMUV3, IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
};
use zerocopy::IntoBytes;

use super::cmd::{self, op};
use super::cmdqv::{Cmdqv, CmdqvParams, Vintf};
use super::domain::{DomainConfig, IdPool, SmmuDomain, Stage};
use super::event::{id, SmmuFault};
use super::info::{feat, opt, DeviceProps, DriverParams, SmmuInfo};
use super::nested::{SmmuNested, SmmuRequest};
use super::regs::SmmuRegs;
use super::ste::SteConfig;
use super::tlb::{CdCache, Tlb};
use super::viommu::SmmuViommu;
use crate::device::{Cap, IommuDevice, PagingRequest, ResvRegion, ViommuCore, ViommuInit};
use crate::{Domain, UserData};

/// Reads the 64-bit word at a host physical address.
pub type PhysReader = Arc<dyn Fn(u64) -> Result<u64, Errno> + Send + Sync>;

static NEXT_UNIT: AtomicUsize = AtomicUsize::new(0);

/// What a stream's requester ID is attached to (`master->cd_table.in_ste`
/// and the driver's vmaster).
#[derive(Clone, Default)]
enum RidState {
    /// Nothing (the blocked domain): an abort STE, or a CD table STE with
    /// S1DSS terminate while PASIDs are attached.
    #[default]
    Blocked,
    /// A paging domain: stage 1 (a CD table STE) or stage 2.
    Paging(Stage),
    /// A nested domain: its configuration cache, and the vSMMU and virtual
    /// StreamID events go to (`master->vmaster`), if the device has a
    /// vDEVICE there.
    Nested { cds: Weak<CdCache>, vmaster: Option<(Weak<SmmuViommu>, u64)> },
}

/// A stream's attachments.
#[derive(Default)]
struct StreamState {
    rid: Mutex<RidState>,
    /// SubstreamIDs with a domain attached (`cd_table.used_ssids`).
    pasids: Mutex<BTreeSet<u32>>,
}

impl StreamState {
    fn rid(&self) -> MutexGuard<'_, RidState> {
        self.rid.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pasids(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.pasids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counters of the commands an SMMU consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdStats {
    pub commands: u64,
    pub tlbi: u64,
    pub cfgi: u64,
    pub atc_inv: u64,
    /// Commands with an opcode the SMMU does not know (the driver would
    /// see `CERROR_ILL` and skip them).
    pub illegal: u64,
}

/// One SMMUv3.
pub struct SmmuIommu {
    id: usize,
    info: SmmuInfo,
    /// The companion Tegra241 CMDQV (`ARM_SMMU_OPT_TEGRA241_CMDQV`).
    cmdqv: Option<Arc<Cmdqv>>,
    tlb: Arc<Tlb>,
    asids: Arc<IdPool>,
    vmids: Arc<IdPool>,
    phys: RwLock<Option<PhysReader>>,
    streams: Mutex<HashMap<u32, Weak<StreamState>>>,
    commands: AtomicU64,
    tlbi: AtomicU64,
    cfgi: AtomicU64,
    atc_inv: AtomicU64,
    illegal: AtomicU64,
}

impl core::fmt::Debug for SmmuIommu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmmuIommu").field("name", &self.name()).field("regs", &self.info.regs).finish_non_exhaustive()
    }
}

impl SmmuIommu {
    /// An SMMU with `regs` and the default driver parameters; `ENXIO` when
    /// the driver's probe would fail.
    pub fn new(regs: SmmuRegs) -> Result<Arc<Self>, Errno> {
        Self::with_params(regs, DriverParams::default())
    }

    pub fn with_params(regs: SmmuRegs, params: DriverParams) -> Result<Arc<Self>, Errno> {
        let info = SmmuInfo::new(regs, params)?;
        let cmdqv = (info.options & opt::TEGRA241_CMDQV != 0).then(|| Arc::new(Cmdqv::new(CmdqvParams::default())));
        Ok(Arc::new(SmmuIommu {
            id: NEXT_UNIT.fetch_add(1, Ordering::Relaxed),
            cmdqv,
            // ASID 0 is reserved (`xa_alloc()` from 1), VMID 0 is kept for
            // stage 2 bypass STEs.
            asids: IdPool::new(1, (1 << info.asid_bits) - 1, Errno::EBUSY),
            vmids: IdPool::new(1, (1 << info.vmid_bits) - 1, Errno::ENOSPC),
            info,
            tlb: Arc::new(Tlb::new()),
            phys: RwLock::new(None),
            streams: Mutex::new(HashMap::new()),
            commands: AtomicU64::new(0),
            tlbi: AtomicU64::new(0),
            cfgi: AtomicU64::new(0),
            atc_inv: AtomicU64::new(0),
            illegal: AtomicU64::new(0),
        }))
    }

    /// A process-unique instance number.
    pub fn id(&self) -> usize {
        self.id
    }

    /// `smmu3.<n>`.
    pub fn name(&self) -> String {
        format!("smmu3.{}", self.id)
    }

    pub fn info(&self) -> &SmmuInfo {
        &self.info
    }

    pub fn regs(&self) -> &SmmuRegs {
        &self.info.regs
    }

    pub fn tlb(&self) -> &Arc<Tlb> {
        &self.tlb
    }

    /// The Tegra241 CMDQV, on an SMMU that has one.
    pub fn cmdqv(&self) -> Option<&Arc<Cmdqv>> {
        self.cmdqv.as_ref()
    }

    /// ASIDs in use by stage 1 domains, VMIDs by stage 2 domains.
    pub fn ids_in_use(&self) -> (usize, usize) {
        (self.asids.in_use(), self.vmids.in_use())
    }

    /// Install how the SMMU reads host physical memory (the frame table).
    pub fn set_phys_reader(&self, reader: PhysReader) {
        *self.phys.write().unwrap_or_else(|e| e.into_inner()) = Some(reader);
    }

    /// Read the 64-bit word at host physical `pa` (`EFAULT` without a
    /// reader).
    pub fn read_phys(&self, pa: u64) -> Result<u64, Errno> {
        let phys = self.phys.read().unwrap_or_else(|e| e.into_inner());
        match phys.as_ref() {
            Some(read) => read(pa),
            None => Err(Errno::EFAULT),
        }
    }

    pub fn cmd_stats(&self) -> CmdStats {
        CmdStats {
            commands: self.commands.load(Ordering::Relaxed),
            tlbi: self.tlbi.load(Ordering::Relaxed),
            cfgi: self.cfgi.load(Ordering::Relaxed),
            atc_inv: self.atc_inv.load(Ordering::Relaxed),
            illegal: self.illegal.load(Ordering::Relaxed),
        }
    }

    fn stream(&self, sid: u32) -> Option<Arc<StreamState>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).get(&sid).and_then(Weak::upgrade)
    }

    fn all_streams(&self) -> Vec<Arc<StreamState>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).values().filter_map(Weak::upgrade).collect()
    }

    /// The configuration cache of the nested domain `sid`'s requester ID
    /// is attached to, if any.
    fn nested_cache(stream: &StreamState) -> Option<Arc<CdCache>> {
        match &*stream.rid() {
            RidState::Nested { cds, .. } => cds.upgrade(),
            _ => None,
        }
    }

    /// Consume commands as the SMMU's command queue does (§4): TLB
    /// invalidations on the TLB, configuration invalidations on the
    /// configuration caches of the streams they name, `CMD_ATC_INV`,
    /// `CMD_SYNC`, prefetches, PRI and stall responses accepted. Commands
    /// with an unknown opcode are illegal and skipped. Returns the number
    /// of illegal commands.
    pub fn issue(&self, cmds: &[[u64; 2]]) -> usize {
        let mut illegal = 0;
        for c in cmds {
            self.commands.fetch_add(1, Ordering::Relaxed);
            match cmd::opcode(c) {
                op::TLBI_NH_ALL | op::TLBI_S12_VMALL => {
                    self.tlbi.fetch_add(1, Ordering::Relaxed);
                    self.tlb.invalidate_vmid(cmd::vmid(c));
                }
                op::TLBI_NH_ASID => {
                    self.tlbi.fetch_add(1, Ordering::Relaxed);
                    self.tlb.invalidate_asid(cmd::vmid(c), cmd::asid(c));
                }
                code @ (op::TLBI_NH_VA | op::TLBI_NH_VAA) => {
                    self.tlbi.fetch_add(1, Ordering::Relaxed);
                    let r = cmd::tlbi_range(c, &self.info);
                    let asid = (code == op::TLBI_NH_VA).then(|| cmd::asid(c));
                    self.tlb.invalidate_va(cmd::vmid(c), asid, r.start, r.last);
                }
                op::TLBI_NSNH_ALL => {
                    self.tlbi.fetch_add(1, Ordering::Relaxed);
                    self.tlb.invalidate_all();
                }
                // Stage-2-only and EL2 entries are never cached.
                op::TLBI_S2_IPA | op::TLBI_EL2_ALL | op::TLBI_EL2_ASID | op::TLBI_EL2_VA => {
                    self.tlbi.fetch_add(1, Ordering::Relaxed);
                }
                op::CFGI_CD => {
                    self.cfgi.fetch_add(1, Ordering::Relaxed);
                    let leaf = c[1] & cmd::f::CFGI_LEAF != 0;
                    if let Some(cache) = self.stream(cmd::sid(c)).and_then(|s| Self::nested_cache(&s)) {
                        cache.invalidate(cmd::ssid(c), leaf);
                    }
                }
                op::CFGI_CD_ALL | op::CFGI_STE => {
                    self.cfgi.fetch_add(1, Ordering::Relaxed);
                    if let Some(cache) = self.stream(cmd::sid(c)).and_then(|s| Self::nested_cache(&s)) {
                        cache.invalidate_all();
                    }
                }
                op::CFGI_ALL => {
                    self.cfgi.fetch_add(1, Ordering::Relaxed);
                    for s in self.all_streams() {
                        if let Some(cache) = Self::nested_cache(&s) {
                            cache.invalidate_all();
                        }
                    }
                }
                op::ATC_INV => {
                    self.atc_inv.fetch_add(1, Ordering::Relaxed);
                }
                op::CMD_SYNC | op::PREFETCH_CFG | op::PREFETCH_ADDR | op::PRI_RESP | op::RESUME => {}
                _ => {
                    self.illegal.fetch_add(1, Ordering::Relaxed);
                    illegal += 1;
                }
            }
        }
        illegal
    }
}

/// A master behind an [`SmmuIommu`].
pub struct SmmuDevice {
    name: String,
    iommu: Arc<SmmuIommu>,
    sid: u32,
    props: DeviceProps,
    stream: Arc<StreamState>,
}

impl core::fmt::Debug for SmmuDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmmuDevice")
            .field("name", &self.name)
            .field("sid", &self.sid)
            .field("props", &self.props)
            .finish_non_exhaustive()
    }
}

impl SmmuDevice {
    /// A master named `name` (a BDF) with StreamID `sid`, without PASID,
    /// ATS or CANWBS. `arm_smmu_probe_device()` / `arm_smmu_insert_master()`:
    /// `ERANGE` for a StreamID beyond `IDR1.SIDSIZE`, `ENODEV` for one
    /// another master already has.
    pub fn new(iommu: &Arc<SmmuIommu>, name: impl Into<String>, sid: u32) -> Result<Self, Errno> {
        if iommu.info.sid_bits < 32 && sid >> iommu.info.sid_bits != 0 {
            return Err(Errno::ERANGE);
        }
        let stream = Arc::new(StreamState::default());
        {
            let mut streams = iommu.streams.lock().unwrap_or_else(|e| e.into_inner());
            streams.retain(|_, w| w.strong_count() != 0);
            if streams.contains_key(&sid) {
                return Err(Errno::ENODEV);
            }
            streams.insert(sid, Arc::downgrade(&stream));
        }
        Ok(SmmuDevice { name: name.into(), iommu: Arc::clone(iommu), sid, props: DeviceProps::default(), stream })
    }

    /// A PCI PASID capability of `bits`.
    pub fn with_pasid(mut self, bits: u32) -> Self {
        self.props.pasid_bits = bits;
        self
    }

    /// The function's ATS capability and whether the root complex allows
    /// ATS (IORT).
    pub fn with_ats(mut self, ats: bool, root_complex: bool) -> Self {
        self.props.ats = ats;
        self.props.rc_ats = root_complex;
        self
    }

    /// The root complex is CANWBS (IORT memory access flags): DMA is
    /// always cached write-back, PCIe No Snoop ignored.
    pub fn with_canwbs(mut self, canwbs: bool) -> Self {
        self.props.canwbs = canwbs;
        self
    }

    /// `dma-can-stall`.
    pub fn with_stall(mut self, stall: bool) -> Self {
        self.props.can_stall = stall;
        self
    }

    pub fn iommu(&self) -> &Arc<SmmuIommu> {
        &self.iommu
    }

    pub fn sid(&self) -> u32 {
        self.sid
    }

    pub fn props(&self) -> &DeviceProps {
        &self.props
    }

    /// The SMMU master behind a device handle, if it is one.
    pub fn of(dev: &Arc<dyn IommuDevice>) -> Option<&SmmuDevice> {
        let dev: &dyn IommuDevice = dev.as_ref();
        dev.any_domain().downcast_ref::<SmmuDevice>()
    }

    /// `out_capabilities` of `IOMMU_GET_HW_INFO` for this master.
    pub fn out_capabilities(&self) -> u64 {
        self.iommu.info.device_out_capabilities(&self.props)
    }

    /// `master->stall_enabled`: `dma-can-stall` on an SMMU with stalls, or
    /// any master when stalls are forced.
    pub fn stall_enabled(&self) -> bool {
        let i = &self.iommu.info;
        (i.has(feat::STALLS) && self.props.can_stall) || i.has(feat::STALL_FORCE)
    }

    /// The SubstreamIDs with a domain attached.
    pub fn attached_pasids(&self) -> Vec<u32> {
        self.stream.pasids().iter().copied().collect()
    }

    /// `arm_smmu_handle_event()` for a fault of this master: a fault that
    /// is not recorded does nothing; a stage 1 fault while the requester
    /// ID is attached through a vSMMU where the master has a vDEVICE goes
    /// to that vIOMMU's event queue with the virtual StreamID
    /// (`arm_vmaster_report_event()`); anything else is `EOPNOTSUPP`
    /// (stall faults and the host's own event handling are not modelled).
    pub fn report_fault(
        &self,
        fault: &SmmuFault,
        ssid: Option<u32>,
        addr: u64,
        write: bool,
        privileged: bool,
    ) -> Result<(), Errno> {
        if !fault.record {
            return Ok(());
        }
        // The events the driver handles at all; the rest it only logs.
        let handled = matches!(
            fault.id,
            id::C_BAD_STE
                | id::F_STREAM_DISABLED
                | id::C_BAD_SUBSTREAMID
                | id::C_BAD_CD
                | id::F_TRANSLATION
                | id::F_ADDR_SIZE
                | id::F_ACCESS
                | id::F_PERMISSION
        );
        if !handled {
            return Err(Errno::EOPNOTSUPP);
        }
        let vmaster = match &*self.stream.rid() {
            RidState::Nested { vmaster: Some((v, vsid)), .. } => v.upgrade().map(|v| (v, *vsid)),
            _ => None,
        };
        match vmaster {
            Some((viommu, vsid)) if !fault.s2 => {
                viommu.report_event(vsid, fault.record(self.sid, ssid, addr, write, privileged))
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    fn info(&self) -> &SmmuInfo {
        &self.iommu.info
    }
}

impl Drop for SmmuDevice {
    fn drop(&mut self) {
        let mut streams = self.iommu.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.get(&self.sid).is_some_and(|w| w.as_ptr() == Arc::as_ptr(&self.stream)) {
            streams.remove(&self.sid);
        }
    }
}

impl IommuDevice for SmmuDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// `arm_smmu_capable()`.
    fn capable(&self, cap: Cap) -> bool {
        match cap {
            Cap::CacheCoherency => self.info().coherent(),
            Cap::EnforceCacheCoherency => self.props.canwbs,
            Cap::DirtyTracking => self.info().dbm_capable(),
        }
    }

    /// `arm_smmu_get_resv_regions()`: the software MSI window.
    fn reserved_regions(&self) -> Vec<ResvRegion> {
        vec![self.info().msi_region()]
    }

    /// The arm-smmu-v3 driver keeps nested PASID tables (CD tables) in the
    /// guest (`user_pasid_table`).
    fn user_pasid_table(&self) -> bool {
        true
    }

    /// `arm_smmu_domain_alloc_paging_flags()`: no flags: stage 1 if the
    /// SMMU has it, else stage 2; NEST_PARENT alone: stage 2, `EOPNOTSUPP`
    /// without `ARM_SMMU_FEAT_NESTING`; DIRTY_TRACKING and/or PASID: stage
    /// 1, `EOPNOTSUPP` without it; any other combination `EOPNOTSUPP`.
    /// (iommufd has already refused DIRTY_TRACKING without
    /// `IOMMU_CAP_DIRTY_TRACKING`.) For a CANWBS master iommufd then makes
    /// the domain enforce coherency, which holds as no master is attached
    /// yet.
    fn alloc_paging(&self, req: &PagingRequest) -> Result<Arc<dyn Domain>, Errno> {
        let info = self.info();
        let s1 = info.has(feat::TRANS_S1);
        let stage = match (req.nest_parent, req.dirty_tracking, req.pasid) {
            (false, false, false) => {
                if s1 {
                    Stage::S1
                } else {
                    Stage::S2
                }
            }
            (true, false, false) => {
                if !info.nesting() {
                    return Err(Errno::EOPNOTSUPP);
                }
                Stage::S2
            }
            (false, _, _) => {
                if !s1 {
                    return Err(Errno::EOPNOTSUPP);
                }
                Stage::S1
            }
            _ => return Err(Errno::EOPNOTSUPP),
        };
        let cfg = DomainConfig::for_unit(info, stage, req.dirty_tracking, req.nest_parent)?;
        let id = match stage {
            Stage::S1 => self.iommu.asids.alloc()?,
            Stage::S2 => self.iommu.vmids.alloc()?,
        };
        let d = SmmuDomain::new(cfg, self.iommu.id, id, Arc::clone(&self.iommu.tlb))?;
        if self.props.canwbs {
            d.set_enforce_cache_coherency(true);
        }
        Ok(Arc::new(d))
    }

    /// `arm_smmu_attach_dev()` for paging domains: `EINVAL` for another
    /// SMMU's domain, `EBUSY` for a stage 2 domain while PASIDs are
    /// attached (the CD table is in use), `EINVAL` for a
    /// coherency-enforcing domain and a master without CANWBS.
    /// `arm_smmu_attach_dev_nested()` for nested ones: `EINVAL` for another
    /// SMMU's, `EBUSY` with PASIDs attached, `ENOENT` for a stage 1
    /// (translating) guest STE without a vDEVICE of this master on the
    /// vSMMU, then the parent's coherency rule. Anything else is `EINVAL`.
    fn check_attach(&self, domain: &dyn Domain) -> Result<(), Errno> {
        let any = domain.as_any();
        if let Some(d) = any.downcast_ref::<SmmuDomain>() {
            if d.unit() != self.iommu.id {
                return Err(Errno::EINVAL);
            }
            if d.stage() == Stage::S2 && !self.stream.pasids().is_empty() {
                return Err(Errno::EBUSY);
            }
            if d.enforce_cache_coherency() && !self.props.canwbs {
                return Err(Errno::EINVAL);
            }
            *self.stream.rid() = RidState::Paging(d.stage());
            return Ok(());
        }
        if let Some(n) = any.downcast_ref::<SmmuNested>() {
            if n.unit().id() != self.iommu.id {
                return Err(Errno::EINVAL);
            }
            if !self.stream.pasids().is_empty() {
                return Err(Errno::EBUSY);
            }
            // arm_smmu_attach_prepare_vmaster().
            let viommu = n.viommu();
            let vsid = viommu.as_ref().and_then(|v| v.core()).and_then(|core| core.vdev_id(self));
            let translating = matches!(n.ste_config(), SteConfig::Nested(_) | SteConfig::Illegal);
            if vsid.is_none() && translating {
                return Err(Errno::ENOENT);
            }
            if n.enforce_cache_coherency() && !self.props.canwbs {
                return Err(Errno::EINVAL);
            }
            let vmaster = viommu.zip(vsid).map(|(v, id)| (Arc::downgrade(&v), id));
            // Installing the STE ends with CMD_CFGI_STE for the StreamID
            // (`arm_smmu_write_ste()`), which drops whatever configuration
            // the SMMU cached through it, CDs included (§4.3.2): nothing
            // fetched while this domain served another stream, or before
            // the guest changed its CD table, survives.
            n.cd_cache().invalidate_all();
            *self.stream.rid() = RidState::Nested { cds: Arc::downgrade(n.cd_cache()), vmaster };
            return Ok(());
        }
        Err(Errno::EINVAL)
    }

    /// `arm_smmu_s1_set_dev_pasid()` / `arm_smmu_set_pasid()`: `EINVAL` for
    /// another SMMU's domain or a stage 2 one, or while the requester ID
    /// is attached to a stage 2 or nested domain (the STE holds no CD
    /// table the driver owns); then the coherency rule. A nested domain
    /// has no `set_dev_pasid` (`EOPNOTSUPP` from the iommu core).
    fn check_attach_pasid(&self, pasid: u32, domain: &dyn Domain) -> Result<(), Errno> {
        let any = domain.as_any();
        if any.is::<SmmuNested>() {
            return Err(Errno::EOPNOTSUPP);
        }
        let d = any.downcast_ref::<SmmuDomain>().ok_or(Errno::EINVAL)?;
        if d.unit() != self.iommu.id || d.stage() != Stage::S1 {
            return Err(Errno::EINVAL);
        }
        if !matches!(*self.stream.rid(), RidState::Blocked | RidState::Paging(Stage::S1)) {
            return Err(Errno::EINVAL);
        }
        if d.enforce_cache_coherency() && !self.props.canwbs {
            return Err(Errno::EINVAL);
        }
        self.stream.pasids().insert(pasid);
        Ok(())
    }

    /// `arm_smmu_handle_event()` for the event the SMMU writes: the fault
    /// of a nested domain is worked out again (the walk that failed,
    /// unprivileged as [`Domain::translate`] is) and reported through
    /// [`report_fault`](SmmuDevice::report_fault). PCI masters do not
    /// stall, so nothing becomes a page request: faults of the host's own
    /// domains are only logged by the driver (`Some(false)`).
    fn dma_fault(
        &self,
        domain: &dyn Domain,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
        _privileged: bool,
    ) -> Option<bool> {
        let Some(n) = domain.as_any().downcast_ref::<SmmuNested>() else { return Some(false) };
        let req = SmmuRequest { ssid: pasid, addr: iova, write, privileged: false };
        let fault = match n.translate_req(req) {
            Err(f) => f,
            Ok(_) => return Some(false),
        };
        Some(fault.record && self.report_fault(&fault, pasid, iova, write, false).is_ok())
    }

    fn detached(&self, pasid: u32) {
        if pasid == 0 {
            *self.stream.rid() = RidState::Blocked;
        } else {
            self.stream.pasids().remove(&pasid);
        }
    }

    /// `ilog2(dev->iommu->max_pasids)`.
    fn max_pasid_log2(&self) -> u32 {
        self.info().device_max_pasid_log2(self.props.pasid_bits)
    }

    /// `arm_smmu_hw_info()`: the registers for the default type or
    /// `IOMMU_HW_INFO_TYPE_ARM_SMMUV3`; another type goes to the
    /// implementation (`tegra241_cmdqv_hw_info()` answers
    /// `IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV`), `EOPNOTSUPP` without one.
    fn hw_info(&self, in_type: u32) -> Result<(u32, Vec<u8>), Errno> {
        if in_type != IOMMU_HW_INFO_TYPE_DEFAULT && in_type != IOMMU_HW_INFO_TYPE_ARM_SMMUV3 {
            return match (&self.iommu.cmdqv, in_type) {
                (Some(c), IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV) => {
                    Ok((IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV, c.hw_info().as_bytes().to_vec()))
                }
                _ => Err(Errno::EOPNOTSUPP),
            };
        }
        Ok((IOMMU_HW_INFO_TYPE_ARM_SMMUV3, self.info().hw_info().as_bytes().to_vec()))
    }

    fn owns_domain(&self, domain: &dyn Domain) -> bool {
        let any = domain.as_any();
        any.is::<SmmuDomain>() || any.is::<SmmuNested>()
    }

    fn iommu_instance(&self) -> usize {
        self.iommu.id
    }

    /// `arm_smmu_get_viommu_size()` non-zero: the common conditions, then
    /// ARM_SMMUV3, or TEGRA241_CMDQV with a CMDQV.
    fn viommu_supported(&self, viommu_type: u32) -> bool {
        self.info().viommu_supported(self.props.canwbs)
            && match viommu_type {
                IOMMU_VIOMMU_TYPE_ARM_SMMUV3 => true,
                IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV => self.iommu.cmdqv.is_some(),
                _ => false,
            }
    }

    /// `arm_vsmmu_init()`: the parent must be a stage 2 domain of this
    /// SMMU (`EINVAL`); an ARM_SMMUV3 vIOMMU takes no driver data, a
    /// TEGRA241_CMDQV one gets a VINTF (`tegra241_cmdqv_init_vintf_user()`).
    fn viommu_init(
        &self,
        viommu_type: u32,
        parent: &Arc<dyn Domain>,
        data: Option<&mut UserData<'_>>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<ViommuInit, Errno> {
        if !self.viommu_supported(viommu_type) {
            return Err(Errno::EOPNOTSUPP);
        }
        if viommu_type == IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV {
            let cmdqv = self.iommu.cmdqv.as_ref().ok_or(Errno::EOPNOTSUPP)?;
            let (driver, out) = Vintf::init(&self.iommu, cmdqv, parent, data, core)?;
            return Ok(ViommuInit { driver, user_out: Some(out) });
        }
        let driver = SmmuViommu::init(&self.iommu, parent, core)?;
        Ok(ViommuInit { driver, user_out: None })
    }
}
