//! An AMD IOMMU and the devices behind it, as Linux 7.3's AMD driver
//! presents them to the iommu core (`amd_iommu_ops`).
//!
//! Model: [`AmdIommu`] is one IOMMU: its registers and what the driver
//! derived from them ([`AmdInfo`]), its device table (the DTEs the driver
//! programs, by DeviceID), its IOTLB, the protection domain IDs, the
//! commands it consumed ([`AmdIommu::issue`]) and its event log.
//! [`AmdDevice`] is a PCI function behind it (DeviceID = requester ID),
//! with the driver's rules:
//! - `capable`: `amd_iommu_capable()`: cache coherency and its enforcement
//!   always (every v1 PTE has FC), dirty tracking with HDSup;
//! - `alloc_paging`: `amd_iommu_domain_alloc_paging_flags()`;
//! - `check_attach`: `amd_iommu_attach_device()` (`EINVAL` for a dirty
//!   tracking domain without HDSup; attaching the current domain again does
//!   nothing) and `nested_attach_device()`; the DTE is written and flushed
//!   as `amd_iommu_update_dte()` does (`INVALIDATE_DEVTAB_ENTRY`,
//!   `COMPLETION_WAIT`), the old domain flushed on detach;
//! - `check_attach_pasid`: `EOPNOTSUPP`: in 7.3 only SVA domains have
//!   `set_dev_pasid`;
//! - `hw_info`: `amd_iommufd_hw_info()`; `viommu_supported` /
//!   `viommu_init`: `amd_iommufd_get_viommu_size()` (any type) /
//!   `amd_iommufd_viommu_init()`, with `CONFIG_AMD_IOMMU_IOMMUFD`.
//!
//! The IOTLB is two caches with the IOTLB's tags: host translations
//! (GN=0: DomainID and address) and guest ones (GN=1: DomainID, PASID and
//! address; a nested domain's combined translations). `INVALIDATE_IOMMU_PAGES`
//! with GN=1 drops the guest entries of its DomainID, PASID and range; with
//! GN=0 the host entries of its range and, as the driver relies on for a
//! nest parent's changes (its only flush of them), every guest entry of the
//! DomainID, whatever its address: the model's safe reading of which
//! combined translations a GPA invalidation reaches.
//!
//! Not modelled: interrupt remapping, ATS and device IOTLBs, PPR and SVA,
//! the DTE cache (the driver flushes every DTE it writes), SNP, multiple
//! IOMMUs and IVRS alias tables.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use uiommufd_abi::{Errno, IOMMU_HW_INFO_TYPE_AMD, IOMMU_HW_INFO_TYPE_DEFAULT};
use zerocopy::IntoBytes;

use super::cmd::{self, op, Command, InvPages};
use super::domain::{AmdV1Domain, AmdV2Domain};
use super::dte::Dte;
use super::event::{self, IoPageFault};
use super::info::{AmdInfo, DriverParams, PgtableMode};
use super::nested::AmdNested;
use super::regs::AmdRegs;
use super::viommu::AmdViommu;
use crate::device::{Cap, IommuDevice, PagingRequest, ResvRegion, ViommuCore, ViommuInit};
use crate::smmuv3::domain::IdPool;
use crate::vtd::iotlb::Iotlb;
use crate::{Domain, UserData};

/// Reads the 64-bit word at a host physical address.
pub type PhysReader = Arc<dyn Fn(u64) -> Result<u64, Errno> + Send + Sync>;

/// Entries of the event log (`EVTLOG_SIZE_DEF`: 8 KiB of 16-byte entries).
pub const EVENT_LOG_ENTRIES: usize = 512;
/// Commands kept for inspection.
const COMMAND_HISTORY: usize = 256;
/// `MAX_DOMAIN_ID - 1`: protection domain IDs are 1..=65534.
const MAX_DOMID: u32 = 65534;
/// Where the driver's completion-wait semaphore lives (`cmd_sem_paddr`):
/// a page in the page-table window, never DMA memory.
const CMD_SEM_PADDR: u64 = crate::pt::PT_WINDOW_START - 0x1000;

static NEXT_UNIT: AtomicUsize = AtomicUsize::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters of the commands an IOMMU consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdStats {
    pub commands: u64,
    pub inv_pages: u64,
    pub inv_dte: u64,
    pub completion_wait: u64,
    pub inv_all: u64,
    /// Commands the IOMMU does not accept (`ILLEGAL_COMMAND_ERROR`).
    pub illegal: u64,
}

/// The event log: the newest entries, and whether some were lost.
#[derive(Default)]
struct EventLog {
    entries: VecDeque<[u64; 2]>,
    overflow: bool,
}

/// One AMD IOMMU.
pub struct AmdIommu {
    id: usize,
    info: AmdInfo,
    host_tlb: Iotlb,
    guest_tlb: Iotlb,
    domids: Arc<IdPool>,
    dev_table: Mutex<BTreeMap<u16, Dte>>,
    phys: RwLock<Option<PhysReader>>,
    events: Mutex<EventLog>,
    history: Mutex<VecDeque<Command>>,
    /// The domains of this IOMMU by protection domain ID, and nested
    /// domains by serial number (for detaching by identity).
    v1_domains: Mutex<BTreeMap<u16, Weak<AmdV1Domain>>>,
    v2_domains: Mutex<BTreeMap<u16, Weak<AmdV2Domain>>>,
    commands: AtomicU64,
    inv_pages: AtomicU64,
    inv_dte: AtomicU64,
    completion_wait: AtomicU64,
    inv_all: AtomicU64,
    illegal: AtomicU64,
    sem_data: AtomicU64,
}

impl core::fmt::Debug for AmdIommu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AmdIommu").field("name", &self.name()).field("regs", &self.info.regs).finish_non_exhaustive()
    }
}

impl AmdIommu {
    /// An IOMMU with `regs` and the default platform; `ENODEV` where the
    /// driver would register no IOMMU for DMA translation.
    pub fn new(regs: AmdRegs) -> Result<Arc<Self>, Errno> {
        Self::with_params(regs, DriverParams::default())
    }

    pub fn with_params(regs: AmdRegs, params: DriverParams) -> Result<Arc<Self>, Errno> {
        let info = AmdInfo::new(regs, params)?;
        Ok(Arc::new(AmdIommu {
            id: NEXT_UNIT.fetch_add(1, Ordering::Relaxed),
            info,
            host_tlb: Iotlb::new(),
            guest_tlb: Iotlb::new(),
            domids: IdPool::new(1, MAX_DOMID, Errno::ENOSPC),
            dev_table: Mutex::new(BTreeMap::new()),
            phys: RwLock::new(None),
            events: Mutex::new(EventLog::default()),
            history: Mutex::new(VecDeque::new()),
            v1_domains: Mutex::new(BTreeMap::new()),
            v2_domains: Mutex::new(BTreeMap::new()),
            commands: AtomicU64::new(0),
            inv_pages: AtomicU64::new(0),
            inv_dte: AtomicU64::new(0),
            completion_wait: AtomicU64::new(0),
            inv_all: AtomicU64::new(0),
            illegal: AtomicU64::new(0),
            sem_data: AtomicU64::new(0),
        }))
    }

    /// A process-unique instance number.
    pub fn id(&self) -> usize {
        self.id
    }

    /// `ivhd<n>`, the driver's sysfs name.
    pub fn name(&self) -> String {
        format!("ivhd{}", self.id)
    }

    pub fn info(&self) -> &AmdInfo {
        &self.info
    }

    pub fn regs(&self) -> &AmdRegs {
        &self.info.regs
    }

    /// The protection domain IDs (`pdom_ids`).
    pub fn domids(&self) -> &Arc<IdPool> {
        &self.domids
    }

    /// The IOTLB's host (GN=0) translations.
    pub fn host_tlb(&self) -> &Iotlb {
        &self.host_tlb
    }

    /// The IOTLB's guest (GN=1) translations.
    pub fn guest_tlb(&self) -> &Iotlb {
        &self.guest_tlb
    }

    /// Install how the IOMMU reads host physical memory (the frame table).
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

    /// The DTE of `devid` (a cleared one, V only, if never written).
    pub fn dte(&self, devid: u16) -> Dte {
        lock(&self.dev_table).get(&devid).copied().unwrap_or_default()
    }

    /// `amd_iommu_update_dte()`: write `dte` for `devid`, then
    /// `INVALIDATE_DEVTAB_ENTRY` and `COMPLETION_WAIT`.
    pub fn set_dte(&self, devid: u16, dte: Dte) {
        lock(&self.dev_table).insert(devid, dte);
        self.issue(&[cmd::inv_dte(devid), self.completion_wait_cmd()]);
    }

    /// A v1 table's new root and Mode in `devid`'s DTE
    /// (`amd_iommu_change_top()`).
    pub(crate) fn update_dte_mode(&self, devid: u16, root: u64, mode: u32) {
        {
            let mut t = lock(&self.dev_table);
            let Some(d) = t.get_mut(&devid) else { return };
            d.0[0] = (d.0[0] & !(super::dte::MODE | super::dte::HOST_TRP))
                | ((mode as u64 & 7) << super::dte::MODE_SHIFT)
                | (root & super::dte::HOST_TRP);
        }
        self.issue(&[cmd::inv_dte(devid), self.completion_wait_cmd()]);
    }

    /// DTE.HAD of `devid` (`amd_iommu_set_dirty_tracking()`).
    pub(crate) fn update_dte_had(&self, devid: u16, on: bool) {
        {
            let mut t = lock(&self.dev_table);
            let Some(d) = t.get_mut(&devid) else { return };
            if on {
                d.0[0] |= super::dte::HAD;
            } else {
                d.0[0] &= !super::dte::HAD;
            }
        }
        self.issue(&[cmd::inv_dte(devid)]);
    }

    /// `build_completion_wait()` on the driver's semaphore, with the next
    /// sequence number.
    pub fn completion_wait_cmd(&self) -> Command {
        cmd::completion_wait(CMD_SEM_PADDR, self.sem_data.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Consume commands as the command buffer does (spec "Commands"): page
    /// invalidations on the IOTLB, `INVALIDATE_IOMMU_ALL` when EFR.IASup
    /// allows it, device table and interrupt table invalidations, IOTLB
    /// (ATS) invalidations and completion waits accepted. Anything else is
    /// illegal (`ILLEGAL_COMMAND_ERROR` logged). Returns the number of
    /// illegal commands.
    pub fn issue(&self, cmds: &[Command]) -> usize {
        let mut illegal = 0;
        {
            let mut h = lock(&self.history);
            for c in cmds {
                if h.len() == COMMAND_HISTORY {
                    h.pop_front();
                }
                h.push_back(*c);
            }
        }
        for c in cmds {
            self.commands.fetch_add(1, Ordering::Relaxed);
            match cmd::opcode(c) {
                op::INVALIDATE_IOMMU_PAGES => {
                    self.inv_pages.fetch_add(1, Ordering::Relaxed);
                    self.invalidate_pages(&InvPages::decode(c));
                }
                op::INVALIDATE_IOMMU_ALL if self.info.regs.efr.ia_sup() != 0 => {
                    self.inv_all.fetch_add(1, Ordering::Relaxed);
                    self.host_tlb.invalidate_all();
                    self.guest_tlb.invalidate_all();
                }
                op::INVALIDATE_DEVTAB_ENTRY => {
                    self.inv_dte.fetch_add(1, Ordering::Relaxed);
                }
                op::COMPLETION_WAIT => {
                    self.completion_wait.fetch_add(1, Ordering::Relaxed);
                }
                op::INVALIDATE_IOTLB_PAGES | op::INVALIDATE_INTERRUPT_TABLE | op::COMPLETE_PPR_REQUEST => {}
                op::PREFETCH_IOMMU_PAGES if self.info.regs.efr.pref_sup() != 0 => {}
                _ => {
                    self.illegal.fetch_add(1, Ordering::Relaxed);
                    illegal += 1;
                    self.log_event([(u64::from(event::code::ILLEGAL_COMMAND_ERROR)) << 60, 0]);
                }
            }
        }
        illegal
    }

    fn invalidate_pages(&self, p: &InvPages) {
        // The IOTLB's range: 2^am 4 KiB pages at the aligned start. An
        // empty cache has nothing to drop and a scan of it costs: a
        // one-page invalidation still moves its generation, so that no
        // walk that started before lands its fill after this.
        let am = p.size_lg2.saturating_sub(12);
        let am_if = |t: &Iotlb| if t.stats().tlb_entries == 0 { 0 } else { am };
        if p.gn {
            self.guest_tlb.invalidate_range(p.domid, p.pasid, p.start, am_if(&self.guest_tlb), !p.pde);
        } else {
            self.host_tlb.invalidate_range(p.domid, 0, p.start, am_if(&self.host_tlb), !p.pde);
            if self.guest_tlb.stats().tlb_entries == 0 {
                self.guest_tlb.invalidate_range(p.domid, 0, p.start, 0, true);
            } else {
                self.guest_tlb.invalidate_domain(p.domid);
            }
        }
    }

    pub fn cmd_stats(&self) -> CmdStats {
        CmdStats {
            commands: self.commands.load(Ordering::Relaxed),
            inv_pages: self.inv_pages.load(Ordering::Relaxed),
            inv_dte: self.inv_dte.load(Ordering::Relaxed),
            completion_wait: self.completion_wait.load(Ordering::Relaxed),
            inv_all: self.inv_all.load(Ordering::Relaxed),
            illegal: self.illegal.load(Ordering::Relaxed),
        }
    }

    /// The last commands consumed, oldest first.
    pub fn recent_commands(&self) -> Vec<Command> {
        lock(&self.history).iter().copied().collect()
    }

    /// Append an entry to the event log (its oldest entry is lost when it
    /// is full, and the overflow flag set).
    pub fn log_event(&self, e: [u64; 2]) {
        let mut log = lock(&self.events);
        if log.entries.len() == EVENT_LOG_ENTRIES {
            log.entries.pop_front();
            log.overflow = true;
        }
        log.entries.push_back(e);
    }

    /// Take the event log's entries (what the driver's event interrupt
    /// does), and whether entries were lost since the last time.
    pub fn take_events(&self) -> (Vec<[u64; 2]>, bool) {
        let mut log = lock(&self.events);
        let overflow = core::mem::take(&mut log.overflow);
        (log.entries.drain(..).collect(), overflow)
    }

    /// A new v1 domain, registered.
    pub fn alloc_v1(self: &Arc<Self>, dirty_tracking: bool, nest_parent: bool) -> Result<Arc<AmdV1Domain>, Errno> {
        let d = Arc::new(AmdV1Domain::new(self, dirty_tracking, nest_parent)?);
        let mut m = lock(&self.v1_domains);
        m.retain(|_, w| w.strong_count() != 0);
        m.insert(d.id(), Arc::downgrade(&d));
        Ok(d)
    }

    /// A new v2 domain, registered.
    pub fn alloc_v2(self: &Arc<Self>) -> Result<Arc<AmdV2Domain>, Errno> {
        let d = Arc::new(AmdV2Domain::new(self)?);
        let mut m = lock(&self.v2_domains);
        m.retain(|_, w| w.strong_count() != 0);
        m.insert(d.id(), Arc::downgrade(&d));
        Ok(d)
    }

    /// The live v1 domain with protection domain ID `id`.
    pub fn v1_domain(&self, id: u16) -> Option<Arc<AmdV1Domain>> {
        lock(&self.v1_domains).get(&id).and_then(Weak::upgrade)
    }

    fn v2_domain(&self, id: u16) -> Option<Arc<AmdV2Domain>> {
        lock(&self.v2_domains).get(&id).and_then(Weak::upgrade)
    }
}

/// What a device's requester ID is attached to (`dev_data->domain`, and
/// the nested domain `nested_attach_device()` installs).
#[derive(Default)]
enum Attached {
    /// The blocked domain: the cleared DTE.
    #[default]
    Blocked,
    /// A v1 domain, by protection domain ID.
    V1(u16),
    /// A v2 domain, and the per-device domain ID of its GCR3 table
    /// (`setup_gcr3_table()`), with the table's address.
    V2 { id: u16, _domid: crate::smmuv3::domain::IdLease, gcr3: u64 },
    /// A nested domain on a v1 parent.
    Nested { parent: u16 },
}

/// A PCI function behind an [`AmdIommu`].
pub struct AmdDevice {
    name: String,
    unit: Arc<AmdIommu>,
    devid: u16,
    /// The function's PASID capability width (0: none).
    pasid_bits: u32,
    attached: Mutex<Attached>,
}

impl core::fmt::Debug for AmdDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AmdDevice").field("name", &self.name).field("devid", &self.devid).finish_non_exhaustive()
    }
}

impl AmdDevice {
    /// A function named `name` (a BDF) with DeviceID `devid` (its
    /// requester ID), without PASID capability, its DTE cleared (blocked).
    pub fn new(unit: &Arc<AmdIommu>, name: impl Into<String>, devid: u16) -> Self {
        lock(&unit.dev_table).insert(devid, Dte::clear());
        AmdDevice {
            name: name.into(),
            unit: Arc::clone(unit),
            devid,
            pasid_bits: 0,
            attached: Mutex::new(Attached::Blocked),
        }
    }

    /// A PCI PASID capability of `bits`.
    pub fn with_pasid(mut self, bits: u32) -> Self {
        self.pasid_bits = bits;
        self
    }

    pub fn unit(&self) -> &Arc<AmdIommu> {
        &self.unit
    }

    /// The DeviceID (requester ID).
    pub fn devid(&self) -> u16 {
        self.devid
    }

    /// The device's DTE.
    pub fn dte(&self) -> Dte {
        self.unit.dte(self.devid)
    }

    /// The AMD device behind a device handle, if it is one.
    pub fn of(dev: &Arc<dyn IommuDevice>) -> Option<&AmdDevice> {
        let dev: &dyn IommuDevice = dev.as_ref();
        dev.any_domain().downcast_ref::<AmdDevice>()
    }

    /// `dev_data->max_pasids` as the iommu core keeps it
    /// (`dev_iommu_get_max_pasids()`): the PCI capability's `1 << width`,
    /// capped by the IOMMU's `(1 << (PASmax + 1)) - 1`.
    pub fn max_pasids(&self) -> u32 {
        if self.pasid_bits == 0 {
            return 0;
        }
        (1u32 << self.pasid_bits.min(20)).min(self.unit.info.max_pasids)
    }

    /// `detach_device()`: the old domain forgets the device and is flushed
    /// (`amd_iommu_domain_flush_all()`), its GCR3 table freed.
    fn detach_locked(&self, att: &mut Attached) {
        match core::mem::take(att) {
            Attached::Blocked => {}
            Attached::V1(id) => {
                if let Some(d) = self.unit.v1_domain(id) {
                    d.detach_device(self.devid);
                    d.flush_all();
                }
            }
            Attached::V2 { id, gcr3, .. } => {
                if let Some(d) = self.unit.v2_domain(id) {
                    d.flush_all();
                    d.detach_device(self.devid);
                }
                crate::pt::PtMemory::free(gcr3);
            }
            Attached::Nested { parent, .. } => {
                if let Some(p) = self.unit.v1_domain(parent) {
                    p.detach_device(self.devid);
                }
            }
        }
    }

    /// Log an `IO_PAGE_FAULT` for this device.
    pub fn log_fault(&self, f: &IoPageFault) {
        self.unit.log_event(f.record(self.devid));
    }
}

impl Drop for AmdDevice {
    fn drop(&mut self) {
        let mut att = lock(&self.attached);
        self.detach_locked(&mut att);
        lock(&self.unit.dev_table).remove(&self.devid);
    }
}

impl IommuDevice for AmdDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// `amd_iommu_capable()`.
    fn capable(&self, cap: Cap) -> bool {
        match cap {
            Cap::CacheCoherency => true,
            Cap::EnforceCacheCoherency => true,
            Cap::DirtyTracking => self.unit.info.hd_support(),
        }
    }

    /// `amd_iommu_get_resv_regions()`.
    fn reserved_regions(&self) -> Vec<ResvRegion> {
        self.unit.info.reserved_regions()
    }

    /// The guest owns the PASID (GCR3) table of a nested domain: PASID
    /// requests reach the requester ID's nested domain.
    fn user_pasid_table(&self) -> bool {
        true
    }

    /// `amd_iommu_domain_alloc_paging_flags()`: DIRTY_TRACKING and/or
    /// NEST_PARENT: a v1 domain, `EOPNOTSUPP` without HDSup or without
    /// GT, GIoSup and GCR3TRPMode; PASID alone: a v2 domain, `EOPNOTSUPP`
    /// without PASID support; nothing: the default table
    /// (`amd_iommu_pgtable`), falling back to the other one; any other
    /// combination `EOPNOTSUPP`.
    fn alloc_paging(&self, req: &PagingRequest) -> Result<Arc<dyn Domain>, Errno> {
        let info = &self.unit.info;
        match (req.dirty_tracking, req.nest_parent, req.pasid) {
            (d, n, false) if d || n => {
                if d && !info.hd_support() {
                    return Err(Errno::EOPNOTSUPP);
                }
                if n && !info.nest_parent_supported() {
                    return Err(Errno::EOPNOTSUPP);
                }
                Ok(self.unit.alloc_v1(d, n)?)
            }
            (false, false, true) => {
                if !info.pasid_supported() {
                    return Err(Errno::EOPNOTSUPP);
                }
                Ok(self.unit.alloc_v2()?)
            }
            (false, false, false) => {
                let v1 = || self.unit.alloc_v1(false, false).map(|d| d as Arc<dyn Domain>);
                let v2 = || self.unit.alloc_v2().map(|d| d as Arc<dyn Domain>);
                // "If nothing specific is required use the kernel
                // commandline default", then the other table.
                let v2_first = info.pgtable == PgtableMode::V2;
                match if v2_first { v2() } else { v1() } {
                    Err(Errno::EOPNOTSUPP) if v2_first => v1(),
                    Err(Errno::EOPNOTSUPP) => v2(),
                    r => r,
                }
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// `amd_iommu_attach_device()` for paging domains: `EINVAL` for
    /// another IOMMU's domain, or a dirty-tracking domain without HDSup;
    /// nothing to do for the current domain; a v2 domain needs a GCR3
    /// table of at most GLXSup + 1 levels (`EINVAL`). `nested_attach_device()`
    /// for nested ones. The DTE is then written and flushed.
    fn check_attach(&self, domain: &dyn Domain) -> Result<(), Errno> {
        let any = domain.as_any();
        let info = &self.unit.info;
        let mut att = lock(&self.attached);
        if let Some(d) = any.downcast_ref::<AmdV1Domain>() {
            if d.unit().id() != self.unit.id {
                return Err(Errno::EINVAL);
            }
            if matches!(*att, Attached::V1(id) if id == d.id()) {
                return Ok(());
            }
            if d.dirty_ops().is_some() && !info.hd_support() {
                return Err(Errno::EINVAL);
            }
            self.detach_locked(&mut att);
            d.attach_device(self.devid);
            *att = Attached::V1(d.id());
            self.unit.set_dte(self.devid, d.dte(d.id()));
            return Ok(());
        }
        if let Some(d) = any.downcast_ref::<AmdV2Domain>() {
            if d.unit().id() != self.unit.id {
                return Err(Errno::EINVAL);
            }
            if matches!(*att, Attached::V2 { id, .. } if id == d.id()) {
                return Ok(());
            }
            // init_gcr3_table() -> setup_gcr3_table().
            let pasids = self.max_pasids().max(1);
            let glx = AmdInfo::gcr3_levels(pasids);
            if glx > info.max_glx {
                return Err(Errno::EINVAL);
            }
            let domid = self.unit.domids.alloc()?;
            let gcr3 = crate::pt::PtMemory::alloc()?;
            self.detach_locked(&mut att);
            d.attach_device(self.devid, domid.id());
            let dte = Dte::gcr3(domid.id(), gcr3, glx, true, info.gpt_level);
            *att = Attached::V2 { id: d.id(), _domid: domid, gcr3 };
            self.unit.set_dte(self.devid, dte);
            // update_gcr3(): GCR3[0] and dev_flush_pasid_all().
            d.flush_pages(0, u64::MAX, cmd::PAGES_PDE);
            return Ok(());
        }
        if let Some(n) = any.downcast_ref::<AmdNested>() {
            if n.unit().id() != self.unit.id {
                return Err(Errno::EINVAL);
            }
            let parent = n.parent();
            // set_dte_nested(): the parent's v1 entry with the host domain
            // ID, GV and the guest's fields.
            self.detach_locked(&mut att);
            parent.attach_device(self.devid);
            *att = Attached::Nested { parent: parent.id() };
            self.unit.set_dte(self.devid, n.dte());
            return Ok(());
        }
        Err(Errno::EINVAL)
    }

    /// Linux 7.3's paging domains have no `set_dev_pasid` (only SVA
    /// domains do): `iommu_attach_device_pasid()` says `EOPNOTSUPP`.
    fn check_attach_pasid(&self, _pasid: u32, _domain: &dyn Domain) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }

    /// The translation failed: the IOMMU logged an `IO_PAGE_FAULT` (worked
    /// out again from the walk) that the driver prints; nothing reaches
    /// user space (7.3 has no AMD vEVENTQ, and the DMA engine does no PRI).
    fn dma_fault(
        &self,
        domain: &dyn Domain,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
        privileged: bool,
    ) -> Option<bool> {
        let any = domain.as_any();
        let fault = if let Some(n) = any.downcast_ref::<AmdNested>() {
            n.fault_of(pasid, iova, write, privileged)
        } else {
            let access = if write { crate::Access::Write } else { crate::Access::Read };
            // A v1 domain faults in the host table (GN clear, the domain
            // ID); a v2 domain in the guest table of PASID 0 that GIoV
            // selects (GN set, PASID 0).
            let (domid, guest, present) = if let Some(d) = any.downcast_ref::<AmdV1Domain>() {
                (d.id(), false, matches!(d.table().translate(iova, access), Err(crate::Fault::Permission)))
            } else if let Some(d) = any.downcast_ref::<AmdV2Domain>() {
                (self.dte().domid(), true, matches!(d.translate(iova, access), Err(crate::Fault::Permission)))
            } else {
                return Some(false);
            };
            Some(IoPageFault { addr: iova, guest, pasid: 0, domid, present, write, reserved: false, user: guest })
        };
        if let Some(f) = fault {
            self.log_fault(&f);
        }
        Some(false)
    }

    /// The requester ID went to the blocked domain
    /// (`blocked_domain_attach_device()`): the old domain is detached and
    /// flushed, the DTE cleared.
    fn detached(&self, pasid: u32) {
        if pasid != 0 {
            return;
        }
        let mut att = lock(&self.attached);
        self.detach_locked(&mut att);
        self.unit.set_dte(self.devid, Dte::clear());
    }

    /// `ilog2(dev->iommu->max_pasids)`: 15 for a 20-bit device on a
    /// 16-bit IOMMU (`(1 << 16) - 1` PASIDs).
    fn max_pasid_log2(&self) -> u32 {
        let n = self.max_pasids();
        if n == 0 {
            0
        } else {
            31 - n.leading_zeros()
        }
    }

    /// `amd_iommufd_hw_info()`: `EOPNOTSUPP` for a requested type other
    /// than the default or AMD; without `CONFIG_AMD_IOMMU_IOMMUFD` there is
    /// no `hw_info` and iommufd reports no type.
    fn hw_info(&self, in_type: u32) -> Result<(u32, Vec<u8>), Errno> {
        if !self.unit.info.params.iommufd {
            return Ok((0, Vec::new()));
        }
        if in_type != IOMMU_HW_INFO_TYPE_DEFAULT && in_type != IOMMU_HW_INFO_TYPE_AMD {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok((IOMMU_HW_INFO_TYPE_AMD, self.unit.info.hw_info().as_bytes().to_vec()))
    }

    fn owns_domain(&self, domain: &dyn Domain) -> bool {
        let any = domain.as_any();
        any.is::<AmdV1Domain>() || any.is::<AmdV2Domain>() || any.is::<AmdNested>()
    }

    fn iommu_instance(&self) -> usize {
        self.unit.id
    }

    /// `amd_iommufd_get_viommu_size()`: any type (iommufd itself refuses
    /// the default type 0 first), with `CONFIG_AMD_IOMMU_IOMMUFD`.
    fn viommu_supported(&self, _viommu_type: u32) -> bool {
        self.unit.info.params.iommufd
    }

    /// `amd_iommufd_viommu_init()`: the parent's protection domain
    /// (a nest parent, so a v1 domain; `EINVAL` otherwise); driver data is
    /// not used.
    fn viommu_init(
        &self,
        viommu_type: u32,
        parent: &Arc<dyn Domain>,
        data: Option<&mut UserData<'_>>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<ViommuInit, Errno> {
        let _ = data;
        if !self.viommu_supported(viommu_type) {
            return Err(Errno::EOPNOTSUPP);
        }
        let driver = AmdViommu::init(&self.unit, parent, core)?;
        Ok(ViommuInit { driver, user_out: None })
    }
}
