//! NVIDIA Tegra241 CMDQV ("command queue virtualization"), the SMMUv3
//! extension of Grace-class parts, and what Linux 7.3's
//! `drivers/iommu/arm/arm-smmu-v3/tegra241-cmdqv.c` lets user space do with
//! it: a vIOMMU of type `IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV` owns a virtual
//! interface (VINTF), its VCMDQs are `IOMMU_HW_QUEUE_ALLOC`ed in guest
//! memory, and the guest drives them itself through the VINTF's MMIO page
//! (mmap'ed from the iommufd): commands it writes into a queue are consumed
//! by the SMMU without a trap to the host.
//!
//! Model:
//! - [`Cmdqv`]: the unit's `PARAM` (version, VINTFs, VCMDQs, StreamID
//!   mappings per VINTF) and VINTF allocation (VINTF 0 is the kernel's);
//!   `IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV` reports it
//!   (`tegra241_cmdqv_hw_info()`);
//! - [`Vintf`]: one user VINTF, the vIOMMU's driver half. It is an ARM
//!   vSMMU too (nested domains, `IOMMU_HWPT_INVALIDATE` of the commands a
//!   VCMDQ does not take, events) and adds: vDEVICEs program a pair of
//!   `SID_MATCH`/`SID_REPLACE` registers (`tegra241_vintf_init_vsid()`),
//!   HW queues become logical VCMDQs with the driver's checks
//!   (`tegra241_vintf_alloc_lvcmdq_user()`), and the VINTF page 0 (the
//!   LVCMDQs' `CONS`, `PROD`, `CONFIG`, `STATUS`, `GERROR`, `GERRORN`,
//!   0x80 bytes each) is a memfd registered in the iommufd's mmap space:
//!   the program maps it with `mmap` of the iommufd at the returned offset,
//!   as `iommufd_fops_mmap()` maps the real page, and this process maps it
//!   too. Stores to it do not trap, on hardware or here: from the first
//!   LVCMDQ on, a worker thread watches the page (polling, with a backoff
//!   when idle) and runs the queues; [`Vintf::mmio_read`] /
//!   [`Vintf::mmio_write`] reach the same registers synchronously;
//! - `PROD` moved on an enabled LVCMDQ makes the model consume the
//!   commands between `CONS` and `PROD` from the queue memory (the physical
//!   pages the core pinned), as the hardware does. A guest-owned queue
//!   (`HYP_OWN` clear) takes `CMD_TLBI_NH_ASID`, `CMD_TLBI_NH_VA`,
//!   `CMD_ATC_INV` and `CMD_SYNC` (the set the driver's
//!   `tegra241_guest_vcmdq_supports_cmd()` relies on); the VMID is the
//!   VINTF's and a virtual StreamID is replaced through the SID table. Any
//!   other command, a RES0 bit set or an unmapped virtual StreamID stops
//!   the queue with `CONS.ERR = CERROR_ILL` (queue memory that cannot be
//!   read: `CERROR_ABT`), toggles `GERROR` and reports
//!   the LVCMDQ in an `IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV` event
//!   (`tegra241_vintf_user_handle_error()`); acknowledging through
//!   `GERRORN` resumes it.
//!
//! The `PARAM` defaults (version 1, 4 VINTFs, 16 VCMDQs so 4 per VINTF, 16
//! StreamID mappings) are the model's, configurable; NVIDIA documents the
//! real part's in its TRM only.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use uiommufd_abi::{
    Errno, IommuHwInfoTegra241Cmdqv, IommuVeventTegra241Cmdqv, IommuViommuTegra241Cmdqv,
    IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
};
use zerocopy::IntoBytes;

use super::cmd::{self, op};
use super::device::{SmmuDevice, SmmuIommu};
use super::viommu::SmmuViommu;
use crate::device::{HwQueueInit, IommuDevice, ViommuCore, ViommuDriver};
use crate::{Domain, UserData, UserDataArray};
use uiommufd_memory::shared::SharedMemory;

/// `CMDQV_PARAM` fields (`TEGRA241_CMDQV_PARAM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdqvParams {
    /// `CMDQV_VER` (bits 3:0).
    pub version: u8,
    /// `CMDQV_NUM_VCMDQ_LOG2` (bits 7:4).
    pub log2_vcmdqs: u8,
    /// `CMDQV_NUM_VINTF_LOG2` (bits 11:8).
    pub log2_vintfs: u8,
    /// `CMDQV_NUM_SID_PER_VM_LOG2` (bits 15:12).
    pub log2_sids_per_vintf: u8,
}

impl Default for CmdqvParams {
    fn default() -> Self {
        CmdqvParams { version: 1, log2_vcmdqs: 4, log2_vintfs: 2, log2_sids_per_vintf: 4 }
    }
}

impl CmdqvParams {
    /// The `PARAM` register.
    pub const fn param(&self) -> u32 {
        (self.version as u32 & 0xf)
            | (self.log2_vcmdqs as u32 & 0xf) << 4
            | (self.log2_vintfs as u32 & 0xf) << 8
            | (self.log2_sids_per_vintf as u32 & 0xf) << 12
    }

    pub const fn num_vintfs(&self) -> u32 {
        1 << self.log2_vintfs
    }

    /// `num_lvcmdqs_per_vintf = num_vcmdqs / num_vintfs`.
    pub const fn lvcmdqs_per_vintf(&self) -> u32 {
        (1u32 << self.log2_vcmdqs) / self.num_vintfs()
    }

    pub const fn sids_per_vintf(&self) -> u32 {
        1 << self.log2_sids_per_vintf
    }
}

/// The size of a VINTF's page 0, the mmap'able window.
pub const VINTF_PAGE_SIZE: u64 = 64 << 10;
/// Bytes of one LVCMDQ's registers in page 0.
pub const LVCMDQ_STRIDE: u64 = 0x80;
/// LVCMDQ page 0 register offsets (`TEGRA241_VCMDQ_*`).
pub mod reg {
    pub const CONS: u64 = 0x00;
    pub const PROD: u64 = 0x04;
    pub const CONFIG: u64 = 0x08;
    pub const STATUS: u64 = 0x0c;
    pub const GERROR: u64 = 0x10;
    pub const GERRORN: u64 = 0x14;
    /// `CONFIG.EN` / `STATUS.ENABLED`.
    pub const EN: u32 = 1 << 0;
    /// `CONS.ERR` (bits 30:24): the command error.
    pub const CONS_ERR_SHIFT: u32 = 24;
    pub const CONS_ERR: u32 = 0x7f << 24;
    /// `CMDQ_ERR_CERROR_ILL_IDX`: an illegal command (IHI 0070 §7.1).
    pub const CERROR_ILL: u32 = 1;
    /// `CMDQ_ERR_CERROR_ABT_IDX`: an abort on command fetch (§7.1).
    pub const CERROR_ABT: u32 = 2;
    /// `GERROR.CMDQ_ERR` (bit 0).
    pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
}
/// `VCMDQ_ADDR`: the queue base bits a `BASE` register holds (47:5).
pub const VCMDQ_ADDR: u64 = ((1u64 << 48) - 1) & !0x1f;
/// `CMDQ_ENT_SZ_SHIFT`: commands are 16 bytes.
const CMD_SHIFT: u32 = 4;
/// The largest virtual StreamID a `SID_MATCH` register holds (20 bits).
pub const VSID_MAX: u64 = (1 << 20) - 1;

/// The CMDQV of an SMMU.
pub struct Cmdqv {
    params: CmdqvParams,
    /// VINTFs in use; VINTF 0 is the kernel's own.
    vintfs: Mutex<Vec<bool>>,
}

impl core::fmt::Debug for Cmdqv {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cmdqv").field("params", &self.params).finish_non_exhaustive()
    }
}

impl Cmdqv {
    pub fn new(params: CmdqvParams) -> Self {
        let mut used = vec![false; params.num_vintfs() as usize];
        used[0] = true;
        Cmdqv { params, vintfs: Mutex::new(used) }
    }

    pub fn params(&self) -> &CmdqvParams {
        &self.params
    }

    /// `tegra241_cmdqv_hw_info()`.
    pub fn hw_info(&self) -> IommuHwInfoTegra241Cmdqv {
        IommuHwInfoTegra241Cmdqv {
            flags: 0,
            version: self.params.version,
            log2vcmdqs: self.params.lvcmdqs_per_vintf().trailing_zeros() as u8,
            log2vsids: self.params.log2_sids_per_vintf,
            __reserved: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<bool>> {
        self.vintfs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `ida_alloc_max()` of a VINTF index: the lowest free (`ENOSPC`).
    fn alloc_vintf(&self) -> Result<u32, Errno> {
        let mut used = self.lock();
        let idx = used.iter().position(|u| !u).ok_or(Errno::ENOSPC)?;
        used[idx] = true;
        Ok(idx as u32)
    }

    fn free_vintf(&self, idx: u32) {
        if let Some(u) = self.lock().get_mut(idx as usize) {
            *u = false;
        }
    }

    /// VINTFs in use by user space.
    pub fn user_vintfs(&self) -> usize {
        self.lock().iter().skip(1).filter(|&&u| u).count()
    }
}

/// `offsetofend(struct iommu_viommu_tegra241_cmdqv, out_vintf_mmap_length)`.
pub const VIOMMU_TEGRA241_MIN_LEN: usize = 16;

/// One logical VCMDQ's state. `cons` and `gerror` are the model's (what
/// page 0 shows); `prod`, `config` and `gerrorn` are the program's values
/// as the model last read them from page 0.
#[derive(Clone, Copy, Debug, Default)]
struct Lvcmdq {
    /// `BASE` (page 1): the queue's physical address and log2 entries.
    base_pa: u64,
    log2size: u32,
    cons: u32,
    prod: u32,
    config: u32,
    gerror: u32,
    gerrorn: u32,
}

impl Lvcmdq {
    /// Index mask plus the wrap bit.
    fn wrap_mask(&self) -> u32 {
        (2u32 << self.log2size) - 1
    }

    fn halted(&self) -> bool {
        self.gerror != self.gerrorn
    }
}

/// The byte offset of register `r` of LVCMDQ `lidx` in page 0.
fn reg_at(lidx: usize, r: u64) -> usize {
    (lidx as u64 * LVCMDQ_STRIDE + r) as usize
}

/// Busy rounds of the worker after activity before it starts sleeping.
const SPIN_ROUNDS: u32 = 64;
/// The longest sleep between two looks at page 0 while the program maps it
/// and used a queue in the last [`MAPPED_CHECK_INTERVAL`].
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// The longest sleep once the queues were quiet for longer: the latency of
/// the first command after a pause (the worker then spins again).
const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest sleep while no mapping of page 0 is seen in this process (a
/// forked child may still map the inherited page: it is the same memory).
const UNMAPPED_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often an idle worker asks whether this process maps page 0.
const MAPPED_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The worker's pause while a fork is being prepared.
const FORK_PAUSE: Duration = Duration::from_micros(100);

/// The VINTF as the hardware sees it: page 0 (a memfd the program maps
/// through the iommufd and this process maps too), the LVCMDQs behind it,
/// the SID table. Shared by the driver half ([`Vintf`]) and the worker
/// thread that watches page 0.
///
/// Lock order: `running` (one consumer at a time) → `lvcmdqs`; `sids` is a
/// leaf. Only `running` is held while a command is issued to the SMMU or
/// an event reported. The worker takes every lock inside the fork gate
/// only; its sleep and wake-up (`kick`, park/unpark) take none, so a fork
/// never leaves a lock of the VINTF held in the child.
struct VintfHw {
    vsmmu: Arc<SmmuViommu>,
    page: SharedMemory,
    mmap_offset: u64,
    /// The process that built the VINTF (the one whose worker serves it).
    pid: u32,
    /// `SID_MATCH`/`SID_REPLACE` pairs: `(virtual, physical)`.
    sids: Mutex<Vec<Option<(u32, u32)>>>,
    lvcmdqs: Mutex<Vec<Option<Lvcmdq>>>,
    running: Mutex<()>,
    /// Commands consumed, for tools.
    consumed: AtomicU32,
    /// Set to make the worker look again at once (then unparked).
    kick: AtomicBool,
    /// The worker thread, once it runs.
    thread: OnceLock<Thread>,
    stop: AtomicBool,
}

impl VintfHw {
    fn queues(&self) -> MutexGuard<'_, Vec<Option<Lvcmdq>>> {
        self.lvcmdqs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sid_table(&self) -> MutexGuard<'_, Vec<Option<(u32, u32)>>> {
        self.sids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replace_sid(&self, vsid: u32) -> Option<u32> {
        self.sid_table().iter().flatten().find(|(v, _)| *v == vsid).map(|&(_, p)| p)
    }

    /// Page 0 shows the model's registers: `STATUS` (`ENABLED` follows
    /// `CONFIG.EN`), `GERROR`, and `CONS` while the queue is enabled (the
    /// program's own value otherwise: software resets it before enabling,
    /// as `tegra241_vcmdq_hw_deinit()` does). A program store to them does
    /// not stick (it lasts until the model's next look).
    fn publish(&self, lidx: usize, q: &Lvcmdq) {
        let m = self.page.mapping();
        let enabled = q.config & reg::EN != 0;
        for (r, v, shown) in
            [(reg::CONS, q.cons, enabled), (reg::STATUS, q.config & reg::EN, true), (reg::GERROR, q.gerror, true)]
        {
            if shown && m.load_u32(reg_at(lidx, r)) != v {
                m.store_u32(reg_at(lidx, r), v);
            }
        }
    }

    /// Reset LVCMDQ `lidx`'s registers (`tegra241_vcmdq_hw_deinit()`:
    /// `PROD`, `CONS`, `CONFIG` 0, an error acknowledged).
    fn clear(&self, lidx: usize) {
        let m = self.page.mapping();
        for r in (0..LVCMDQ_STRIDE).step_by(8) {
            m.store_u64(reg_at(lidx, r), 0);
        }
    }

    /// Take in the program's stores to LVCMDQ `lidx`'s `PROD`, `CONFIG`
    /// and `GERRORN`, and to `CONS` while the queue was disabled (its
    /// index and wrap bit: `CONS.ERR` is the model's); whether any changed.
    fn sync(&self, lidx: usize, q: &mut Lvcmdq) -> bool {
        let m = self.page.mapping();
        let before = *q;
        if q.config & reg::EN == 0 {
            let cons = m.load_u32(reg_at(lidx, reg::CONS)) & q.wrap_mask();
            q.cons = q.cons & reg::CONS_ERR | cons;
        }
        q.config = m.load_u32(reg_at(lidx, reg::CONFIG)) & reg::EN;
        q.gerrorn = m.load_u32(reg_at(lidx, reg::GERRORN)) & reg::GERROR_CMDQ_ERR;
        q.prod = m.load_u32(reg_at(lidx, reg::PROD)) & q.wrap_mask();
        self.publish(lidx, q);
        (q.cons, q.config, q.gerrorn, q.prod) != (before.cons, before.config, before.gerrorn, before.prod)
    }

    /// Run LVCMDQ `lidx` as the hardware would by now: registers taken in
    /// and shown, commands from `CONS` to `PROD` consumed. Whether anything
    /// happened.
    fn service(&self, lidx: usize) -> bool {
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let changed = {
            let mut queues = self.queues();
            let Some(Some(q)) = queues.get_mut(lidx) else { return false };
            self.sync(lidx, q)
        };
        self.consume(lidx) || changed
    }

    /// [`VintfHw::service`] of every allocated LVCMDQ.
    fn service_all(&self) -> bool {
        let n = self.queues().len();
        (0..n).fold(false, |active, lidx| self.service(lidx) || active)
    }

    fn any_queue(&self) -> bool {
        self.queues().iter().any(Option::is_some)
    }

    /// The VCMDQ's command processing, caller holding `running`: from
    /// `CONS` to `PROD`, while enabled and not halted by an error. A
    /// command is executed before `CONS` moves past it (a guest that sees
    /// `CONS` pass its `CMD_SYNC` may rely on everything before it). A
    /// command that cannot be fetched stops the queue with `CERROR_ABT`,
    /// one the guest may not issue with `CERROR_ILL` (IHI 0070 §7.1:
    /// `CONS` stays on the failing command, `GERROR.CMDQ_ERR` toggles).
    /// Whether any command was consumed or failed.
    fn consume(&self, lidx: usize) -> bool {
        let unit = Arc::clone(self.vsmmu.unit());
        let mut any = false;
        loop {
            let (c, cons) = {
                let mut queues = self.queues();
                let Some(Some(q)) = queues.get_mut(lidx) else { return any };
                if q.config & reg::EN == 0 || q.halted() || q.cons & q.wrap_mask() == q.prod {
                    return any;
                }
                let slot = u64::from(q.cons & ((1 << q.log2size) - 1));
                let at = q.base_pa + (slot << CMD_SHIFT);
                let fetched = unit.read_phys(at).and_then(|w0| Ok([w0, unit.read_phys(at + 8)?]));
                let step = match fetched {
                    Err(_) => Err(reg::CERROR_ABT),
                    Ok(c) => self.convert(c).map_err(|_| reg::CERROR_ILL),
                };
                any = true;
                match step {
                    Ok(c) => (c, q.cons),
                    Err(code) => {
                        q.cons = q.cons & !reg::CONS_ERR | code << reg::CONS_ERR_SHIFT;
                        q.gerror ^= reg::GERROR_CMDQ_ERR;
                        self.publish(lidx, q);
                        drop(queues);
                        self.report_error(lidx);
                        return any;
                    }
                }
            };
            unit.issue(&[c]);
            self.consumed.fetch_add(1, Ordering::Relaxed);
            let mut queues = self.queues();
            let Some(Some(q)) = queues.get_mut(lidx) else { return any };
            if q.cons == cons {
                q.cons = (q.cons & !reg::CONS_ERR).wrapping_add(1) & q.wrap_mask();
                self.publish(lidx, q);
            }
        }
    }

    /// What a guest-owned VCMDQ executes, and how: the VINTF's VMID in
    /// TLBIs, the replaced StreamID in `ATC_INV` (an unmapped one is an
    /// error); `CMD_SYNC` as it is.
    fn convert(&self, c: [u64; 2]) -> Result<[u64; 2], Errno> {
        match cmd::opcode(&c) {
            op::CMD_SYNC => return Ok(c),
            op::TLBI_NH_ASID | op::TLBI_NH_VA | op::ATC_INV => {}
            _ => return Err(Errno::EIO),
        }
        self.vsmmu.validate_user_cmd(&c)?;
        let mut c = c;
        if cmd::opcode(&c) == op::ATC_INV {
            let sid = self.replace_sid(cmd::sid(&c)).ok_or(Errno::EIO)?;
            c[0] = c[0] & !cmd::f::SID | u64::from(sid) << cmd::f::SID_SHIFT;
        } else {
            c[0] = c[0] & !cmd::f::VMID | u64::from(self.vsmmu.vmid()) << cmd::f::VMID_SHIFT;
        }
        Ok(c)
    }

    /// `tegra241_vintf_user_handle_error()`: the LVCMDQ error map as an
    /// `IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV` event.
    fn report_error(&self, lidx: usize) {
        let mut map = [0u64; 2];
        for (i, q) in self.queues().iter().enumerate() {
            if q.is_some_and(|q| q.halted()) && i < 128 {
                map[i / 64] |= 1 << (i % 64);
            }
        }
        map[lidx / 64] |= 1 << (lidx % 64);
        let evt = IommuVeventTegra241Cmdqv { lvcmdq_err_map: [map[0].to_le(), map[1].to_le()] };
        if let Some(core) = self.vsmmu.core() {
            let _ = core.report_event(IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, evt.as_bytes());
        }
    }

    /// Whether the program still maps page 0.
    fn mapped(&self) -> bool {
        self.vsmmu.core().is_some_and(|core| core.mmap_in_use(self.mmap_offset))
    }

    /// Make the worker look at page 0 again at once.
    fn wake_worker(&self) {
        self.kick.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// The worker sleeps until kicked or stopped, at most `timeout` (`None`:
    /// no limit); whether it was kicked.
    fn sleep(&self, timeout: Option<Duration>) -> bool {
        if !self.kick.swap(false, Ordering::AcqRel) && !self.stop.load(Ordering::Acquire) {
            match timeout {
                Some(t) => std::thread::park_timeout(t),
                None => std::thread::park(),
            }
        }
        self.kick.swap(false, Ordering::AcqRel)
    }
}

/// What one look of the worker found.
enum Look {
    /// A register changed or commands ran: look again at once.
    Busy,
    /// Queues exist, nothing happened.
    Idle,
    /// No LVCMDQ exists: nothing to watch until `IOMMU_HW_QUEUE_ALLOC`.
    Empty,
}

/// The worker: page 0's stores do not trap, so while an LVCMDQ exists the
/// worker looks at every LVCMDQ's registers, at once after activity, then
/// with a sleep doubling from 2 µs to [`MAX_POLL_INTERVAL`], to
/// [`IDLE_POLL_INTERVAL`] after [`MAPPED_CHECK_INTERVAL`] of quiet (to
/// [`UNMAPPED_POLL_INTERVAL`] while this process does not map the page,
/// asked every [`MAPPED_CHECK_INTERVAL`] of quiet). It sleeps without a
/// limit while no LVCMDQ exists, and ends with the VINTF. Each look runs
/// inside the fork gate; while a fork is being prepared the worker waits
/// outside, so a thread inside the gate may always stop and join it.
fn worker_main(hw: &VintfHw) {
    hw.thread.get_or_init(std::thread::current);
    let mut idle: u32 = 0;
    let mut mapped = true;
    let mut checked = Instant::now();
    let mut quiet_since = Instant::now();
    while !hw.stop.load(Ordering::Acquire) {
        let Some(gate) = uiommufd_memory::forkgate::try_enter() else {
            std::thread::sleep(FORK_PAUSE);
            continue;
        };
        let look = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if hw.service_all() {
                return Look::Busy;
            }
            if !hw.any_queue() {
                return Look::Empty;
            }
            if idle > SPIN_ROUNDS && checked.elapsed() >= MAPPED_CHECK_INTERVAL {
                mapped = hw.mapped();
                checked = Instant::now();
            }
            Look::Idle
        }));
        drop(gate);
        let timeout = match look {
            Ok(Look::Busy) => {
                (idle, quiet_since) = (0, Instant::now());
                continue;
            }
            Ok(Look::Empty) => None,
            Ok(Look::Idle) => {
                idle = idle.saturating_add(1);
                if idle <= SPIN_ROUNDS {
                    std::hint::spin_loop();
                    continue;
                }
                let cap = match (mapped, quiet_since.elapsed() < MAPPED_CHECK_INTERVAL) {
                    (false, _) => UNMAPPED_POLL_INTERVAL,
                    (true, true) => MAX_POLL_INTERVAL,
                    (true, false) => IDLE_POLL_INTERVAL,
                };
                let exp = (idle - SPIN_ROUNDS).min(16);
                Some(Duration::from_micros(1 << exp).min(cap))
            }
            Err(_) => {
                eprintln!("uiommufd: Tegra241 VINTF: the VCMDQ model failed (a bug in uiommufd); its queues stop");
                return;
            }
        };
        if hw.sleep(timeout) {
            (idle, mapped, quiet_since) = (0, true, Instant::now());
        }
    }
}

/// A user VINTF: the driver half of an `IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV`.
pub struct Vintf {
    me: Weak<Vintf>,
    hw: Arc<VintfHw>,
    cmdqv: Arc<Cmdqv>,
    idx: u32,
    /// The thread watching page 0 (started by the first LVCMDQ).
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl core::fmt::Debug for Vintf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vintf").field("idx", &self.idx).field("vmid", &self.vmid()).finish_non_exhaustive()
    }
}

impl Vintf {
    /// `tegra241_cmdqv_init_vintf_user()` after `arm_vsmmu_init()`: the
    /// user data is required (`EINVAL`) and read as
    /// `struct iommu_viommu_tegra241_cmdqv`; a free VINTF (`ENOSPC`); its
    /// page 0 (a memfd) becomes a region of the iommufd's mmap space; the
    /// offset and length go back to the user.
    pub fn init(
        unit: &Arc<SmmuIommu>,
        cmdqv: &Arc<Cmdqv>,
        parent: &Arc<dyn Domain>,
        data: Option<&mut UserData<'_>>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<(Arc<Vintf>, Vec<u8>), Errno> {
        let vsmmu = SmmuViommu::init(unit, parent, core.clone())?;
        let data = data.ok_or(Errno::EINVAL)?;
        let mut arg: IommuViommuTegra241Cmdqv = data.read(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, VIOMMU_TEGRA241_MIN_LEN)?;
        let idx = cmdqv.alloc_vintf()?;
        let registered = SharedMemory::new(c"uiommufd-tegra241-vintf", VINTF_PAGE_SIZE as usize).and_then(|page| {
            let core = core.upgrade().ok_or(Errno::ENOENT)?;
            let offset = core.alloc_mmap_backed(VINTF_PAGE_SIZE, page.dup_fd()?, Some(page.view()))?;
            Ok((page, offset))
        });
        let (page, mmap_offset) = match registered {
            Ok(r) => r,
            Err(e) => {
                cmdqv.free_vintf(idx);
                return Err(e);
            }
        };
        arg.out_vintf_mmap_offset = mmap_offset;
        arg.out_vintf_mmap_length = VINTF_PAGE_SIZE;
        let p = cmdqv.params;
        let hw = Arc::new(VintfHw {
            vsmmu,
            page,
            mmap_offset,
            pid: std::process::id(),
            sids: Mutex::new(vec![None; p.sids_per_vintf() as usize]),
            lvcmdqs: Mutex::new(vec![None; p.lvcmdqs_per_vintf() as usize]),
            running: Mutex::new(()),
            consumed: AtomicU32::new(0),
            kick: AtomicBool::new(false),
            thread: OnceLock::new(),
            stop: AtomicBool::new(false),
        });
        let vintf =
            Arc::new_cyclic(|me| Vintf { me: me.clone(), hw, cmdqv: Arc::clone(cmdqv), idx, worker: Mutex::new(None) });
        Ok((vintf, arg.as_bytes().to_vec()))
    }

    pub fn index(&self) -> u32 {
        self.idx
    }

    pub fn vmid(&self) -> u16 {
        self.hw.vsmmu.vmid()
    }

    /// The mmap offset of page 0 (what the user got back).
    pub fn mmap_offset(&self) -> u64 {
        self.hw.mmap_offset
    }

    /// Page 0's memory (what `mmap` of the iommufd at [`Vintf::mmap_offset`]
    /// maps): stores to it are seen by the worker, or at the next
    /// [`Vintf::mmio_read`]/[`Vintf::mmio_write`].
    pub fn page(&self) -> &SharedMemory {
        &self.hw.page
    }

    /// The ARM vSMMU half.
    pub fn vsmmu(&self) -> &Arc<SmmuViommu> {
        &self.hw.vsmmu
    }

    /// Commands the VCMDQs consumed.
    pub fn consumed(&self) -> u32 {
        self.hw.consumed.load(Ordering::Relaxed)
    }

    /// Whether a worker thread watches page 0.
    pub fn watched(&self) -> bool {
        self.worker.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn queues(&self) -> MutexGuard<'_, Vec<Option<Lvcmdq>>> {
        self.hw.queues()
    }

    fn sid_table(&self) -> MutexGuard<'_, Vec<Option<(u32, u32)>>> {
        self.hw.sid_table()
    }

    /// The physical StreamID the SID table maps `vsid` to.
    pub fn replace_sid(&self, vsid: u32) -> Option<u32> {
        self.hw.replace_sid(vsid)
    }

    /// A read of the VINTF's page 0 at `offset` (32-bit registers; 0 for
    /// what is not a register of an allocated LVCMDQ), after the model
    /// caught up with what was written there.
    pub fn mmio_read(&self, offset: u64) -> u32 {
        let (lidx, r) = ((offset / LVCMDQ_STRIDE) as usize, offset % LVCMDQ_STRIDE);
        if !matches!(self.queues().get(lidx), Some(Some(_))) || r > reg::GERRORN || r % 4 != 0 {
            return 0;
        }
        self.hw.service(lidx);
        self.hw.page.mapping().load_u32(reg_at(lidx, r))
    }

    /// A write to the VINTF's page 0: `CONFIG` enables or disables an
    /// LVCMDQ, `PROD` hands it commands, `GERRORN` acknowledges an error
    /// (and resumes the queue), `CONS` sets where a disabled queue starts;
    /// writes elsewhere are ignored. Commands are consumed before this
    /// returns.
    pub fn mmio_write(&self, offset: u64, value: u32) {
        let (lidx, r) = ((offset / LVCMDQ_STRIDE) as usize, offset % LVCMDQ_STRIDE);
        let value = match (self.queues().get(lidx), r) {
            (Some(Some(q)), reg::PROD) => value & q.wrap_mask(),
            (Some(Some(q)), reg::CONS) if q.config & reg::EN == 0 => value & q.wrap_mask(),
            (Some(Some(_)), reg::CONFIG) => value & reg::EN,
            (Some(Some(_)), reg::GERRORN) => value & reg::GERROR_CMDQ_ERR,
            _ => return,
        };
        self.hw.page.mapping().store_u32(reg_at(lidx, r), value);
        self.hw.service(lidx);
    }

    /// Whether this is the process that built the VINTF (not a forked
    /// child holding a copy of it).
    fn at_home(&self) -> bool {
        std::process::id() == self.hw.pid
    }

    /// Start the worker that watches page 0, once, in the process that
    /// built the VINTF (a forked child's mapping of the inherited page is
    /// the same memory, served by its parent's worker).
    fn start_worker(&self) {
        if !self.at_home() {
            return;
        }
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if worker.is_some() {
            return;
        }
        let hw = Arc::clone(&self.hw);
        let run = move || {
            worker_main(&hw);
            // The last reference (the VINTF went while this thread ran)
            // closes the page's descriptors, which the shim lets its own
            // code close only inside the gate (`memory::sys::internal`).
            // Nothing joins this thread then, so it may wait for a fork.
            if Arc::strong_count(&hw) == 1 {
                let _gate = uiommufd_memory::forkgate::enter();
                drop(hw);
            }
        };
        match std::thread::Builder::new().name(format!("uiommufd-vintf{}", self.idx)).spawn(run) {
            Ok(handle) => *worker = Some(handle),
            Err(e) => eprintln!(
                "uiommufd: Tegra241 VINTF{}: cannot start the thread watching its page ({e}); \
                 its VCMDQs run only when driven through the library",
                self.idx
            ),
        }
    }
}

impl Drop for Vintf {
    /// `tegra241_cmdqv_destroy_vintf_user()`: the worker stops (joined,
    /// unless this is the worker itself, which ends after its current
    /// look), the VINTF is free again.
    fn drop(&mut self) {
        self.hw.stop.store(true, Ordering::Release);
        self.hw.wake_worker();
        if let Some(handle) = self.worker.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            if !self.at_home() {
                // A forked child: that thread does not exist here.
                std::mem::forget(handle);
            } else if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        self.cmdqv.free_vintf(self.idx);
    }
}

/// A logical VCMDQ allocated by user space: unmapped when dropped.
struct UserLvcmdq {
    vintf: Arc<Vintf>,
    lidx: usize,
}

impl Drop for UserLvcmdq {
    /// `tegra241_vintf_destroy_lvcmdq_user()`.
    fn drop(&mut self) {
        let mut queues = self.vintf.queues();
        if let Some(slot) = queues.get_mut(self.lidx) {
            *slot = None;
            self.vintf.hw.clear(self.lidx);
        }
    }
}

/// A `SID_MATCH`/`SID_REPLACE` pair a vDEVICE holds: cleared when dropped.
struct VsidSlot {
    vintf: Arc<Vintf>,
    slot: usize,
}

impl Drop for VsidSlot {
    /// `tegra241_vintf_destroy_vsid()`.
    fn drop(&mut self) {
        if let Some(s) = self.vintf.sid_table().get_mut(self.slot) {
            *s = None;
        }
    }
}

impl ViommuDriver for Vintf {
    /// `arm_vsmmu_alloc_domain_nested()`.
    fn alloc_domain_nested(&self, flags: u32, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>, Errno> {
        self.hw.vsmmu.alloc_domain_nested(flags, data)
    }

    fn can_invalidate(&self) -> bool {
        true
    }

    /// `arm_vsmmu_cache_invalidate()`: commands the VCMDQs do not take go
    /// through the kernel's queue as for an ARM_SMMUV3 vIOMMU.
    fn cache_invalidate(&self, array: &mut UserDataArray<'_>) -> Result<(), Errno> {
        self.hw.vsmmu.cache_invalidate(array)
    }

    /// The program mapped page 0: the worker looks at once.
    fn mmap_notify(&self, offset: u64) {
        if offset == self.hw.mmap_offset && self.at_home() {
            self.hw.wake_worker();
        }
    }

    /// `tegra241_vintf_get_vcmdq_size()`.
    fn hw_queue_supported(&self, queue_type: u32) -> bool {
        queue_type == IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV
    }

    /// `tegra241_vintf_alloc_lvcmdq_user()`, in the driver's order: the
    /// type (`EOPNOTSUPP`), the index within the VINTF's LVCMDQs
    /// (`EINVAL`), once (`EEXIST`), in ascending order (`EIO` while the one
    /// below is free); a power-of-two length of 32 bytes up to `2^CMDQS`
    /// commands (`EINVAL`); a base inside `VCMDQ_ADDR` aligned to the
    /// length (`EINVAL`). The queue depends on the one below it.
    fn hw_queue_init(
        &self,
        queue_type: u32,
        index: u32,
        _base_iova: u64,
        base_pa: u64,
        length: u64,
    ) -> Result<HwQueueInit, Errno> {
        if !self.hw_queue_supported(queue_type) {
            return Err(Errno::EOPNOTSUPP);
        }
        let lidx = index as usize;
        let mut queues = self.queues();
        if lidx >= queues.len() {
            return Err(Errno::EINVAL);
        }
        if queues[lidx].is_some() {
            return Err(Errno::EEXIST);
        }
        if lidx > 0 && queues[lidx - 1].is_none() {
            return Err(Errno::EIO);
        }
        let cmdqs = self.hw.vsmmu.unit().regs().idr1.cmdqs();
        if !length.is_power_of_two() || length < 32 || length > 1u64 << (cmdqs + CMD_SHIFT).min(63) {
            return Err(Errno::EINVAL);
        }
        if base_pa & !VCMDQ_ADDR != 0 || base_pa & (length - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let log2size = length.trailing_zeros() - CMD_SHIFT;
        let vintf = self.me.upgrade().ok_or(Errno::ENOENT)?;
        // `tegra241_vcmdq_hw_init_user()`: reset, then `BASE`; the program
        // enables it through `CONFIG`.
        self.hw.clear(lidx);
        queues[lidx] = Some(Lvcmdq { base_pa, log2size, ..Default::default() });
        drop(queues);
        // Nothing runs without the program's stores to page 0, which do not
        // trap: from the first queue on, the worker watches the page.
        self.start_worker();
        self.hw.wake_worker();
        Ok(HwQueueInit { handle: Box::new(UserLvcmdq { vintf, lidx }), depends_on: index.checked_sub(1) })
    }

    /// `tegra241_vintf_init_vsid()`: a virtual StreamID of at most 20 bits
    /// (`EINVAL`), an SMMU master (one stream), a free `SID_MATCH` /
    /// `SID_REPLACE` pair (`ENOSPC`).
    fn vdevice_init(&self, dev: &Arc<dyn IommuDevice>, virt_id: u64) -> Result<Option<Box<dyn Send + Sync>>, Errno> {
        if virt_id > VSID_MAX {
            return Err(Errno::EINVAL);
        }
        let master = SmmuDevice::of(dev).ok_or(Errno::EOPNOTSUPP)?;
        let mut sids = self.sid_table();
        let slot = sids.iter().position(Option::is_none).ok_or(Errno::ENOSPC)?;
        sids[slot] = Some((virt_id as u32, master.sid()));
        drop(sids);
        let vintf = self.me.upgrade().ok_or(Errno::ENOENT)?;
        Ok(Some(Box::new(VsidSlot { vintf, slot })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::info::DriverParams;
    use crate::smmuv3::regs::SmmuRegs;
    use crate::smmuv3::testutil::*;
    use uiommufd_abi::{IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV, IOMMU_VIOMMU_TYPE_ARM_SMMUV3};

    fn guest() -> Guest {
        Guest::with_params(SmmuRegs::default(), DriverParams { tegra241_cmdqv: true, ..Default::default() })
    }

    /// `IOMMU_VIOMMU_ALLOC` of type TEGRA241_CMDQV with `len` bytes of data.
    fn vintf(g: &Guest, len: Option<u32>) -> Result<(Arc<dyn ViommuDriver>, Vec<u8>), Errno> {
        let core: Arc<dyn ViommuCore> = g.core.clone();
        let weak = Arc::downgrade(&core);
        let mut rd = |buf: &mut [u8]| {
            buf.fill(0);
            Ok(())
        };
        let mut data = len.map(|len| UserData { data_type: IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, len, reader: &mut rd });
        let init = g.dev.viommu_init(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, &g.parent, data.as_mut(), weak)?;
        Ok((init.driver, init.user_out.unwrap_or_default()))
    }

    fn of(d: &Arc<dyn ViommuDriver>) -> &Vintf {
        let d: &dyn ViommuDriver = d.as_ref();
        d.any_domain().downcast_ref::<Vintf>().unwrap()
    }

    #[test]
    fn hw_info_and_vintf_allocation() {
        let g = guest();
        let (ty, data) = g.dev.hw_info(IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV).unwrap();
        assert_eq!(ty, IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV);
        // flags 0, version 1, log2 4 LVCMDQs per VINTF, log2 16 SIDs.
        assert_eq!(data, vec![0, 0, 0, 0, 1, 2, 4, 0]);
        assert_eq!(CmdqvParams::default().param(), 0x4241);
        assert!(g.dev.viommu_supported(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV));
        // Without a CMDQV: neither the type nor its hw_info.
        let plain = Guest::new();
        assert!(!plain.dev.viommu_supported(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV));
        assert!(plain.dev.viommu_supported(IOMMU_VIOMMU_TYPE_ARM_SMMUV3));
        assert_eq!(plain.dev.hw_info(IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV).err(), Some(Errno::EOPNOTSUPP));
        // The user data is required and must reach out_vintf_mmap_length.
        assert_eq!(vintf(&g, None).err(), Some(Errno::EINVAL));
        assert_eq!(vintf(&g, Some(8)).err(), Some(Errno::EINVAL));
        let (a, out) = vintf(&g, Some(16)).unwrap();
        let word = |i: usize| u64::from_le_bytes(out[8 * i..8 * i + 8].try_into().unwrap());
        assert_eq!((word(0), word(1)), (of(&a).mmap_offset(), VINTF_PAGE_SIZE));
        assert_eq!(of(&a).index(), 1);
        assert_eq!(of(&a).vmid(), g.viommu.vmid());
        // Three user VINTFs of four (VINTF 0 is the kernel's).
        let b = vintf(&g, Some(16)).unwrap();
        let c = vintf(&g, Some(16)).unwrap();
        assert_eq!(vintf(&g, Some(16)).err(), Some(Errno::ENOSPC));
        assert_eq!(g.unit.cmdqv().unwrap().user_vintfs(), 3);
        drop(b);
        assert_eq!(of(&vintf(&g, Some(16)).unwrap().0).index(), 2);
        drop((a, c));
    }

    #[test]
    fn hw_queues_with_the_drivers_checks() {
        let g = guest();
        let (v, _) = vintf(&g, Some(16)).unwrap();
        let ty = IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV;
        let base = HOST_BASE + 0x40_0000;
        assert_eq!(v.hw_queue_init(0xdead, 0, 0, base, 4096).err(), Some(Errno::EOPNOTSUPP));
        assert_eq!(v.hw_queue_init(ty, 4, 0, base, 4096).err(), Some(Errno::EINVAL));
        assert_eq!(v.hw_queue_init(ty, 1, 0, base, 4096).err(), Some(Errno::EIO));
        // IDR1.CMDQS 19: at most 2^19 commands of 16 bytes.
        for bad_len in [16, 48, 1u64 << 24] {
            assert_eq!(v.hw_queue_init(ty, 0, 0, base, bad_len).err(), Some(Errno::EINVAL), "{bad_len}");
        }
        assert_eq!(v.hw_queue_init(ty, 0, 0, base + 0x800, 4096).err(), Some(Errno::EINVAL));
        assert_eq!(v.hw_queue_init(ty, 0, 0, 1 << 48, 4096).err(), Some(Errno::EINVAL));
        let q0 = v.hw_queue_init(ty, 0, 0, base, 1 << 20).unwrap();
        assert_eq!(q0.depends_on, None);
        assert_eq!(v.hw_queue_init(ty, 0, 0, base, 4096).err(), Some(Errno::EEXIST));
        let q1 = v.hw_queue_init(ty, 1, 0, base + 0x10_0000, 32).unwrap();
        assert_eq!(q1.depends_on, Some(0));
        drop(q1);
        assert!(v.hw_queue_init(ty, 1, 0, base + 0x10_0000, 32).is_ok());
    }

    #[test]
    fn vdevices_program_the_sid_table() {
        let g = guest();
        let (v, _) = vintf(&g, Some(16)).unwrap();
        let dev: Arc<dyn IommuDevice> = g.dev.clone();
        assert_eq!(v.vdevice_init(&dev, 1 << 20).err(), Some(Errno::EINVAL));
        let slot = v.vdevice_init(&dev, VSID).unwrap();
        assert_eq!(of(&v).replace_sid(VSID as u32), Some(SID));
        let more: Vec<_> = (0..15).map(|i| v.vdevice_init(&dev, 100 + i).unwrap()).collect();
        assert_eq!(v.vdevice_init(&dev, 200).err(), Some(Errno::ENOSPC));
        drop(slot);
        assert_eq!(of(&v).replace_sid(VSID as u32), None);
        drop(more);
    }

    /// A guest drives its VCMDQ through page 0: commands are consumed from
    /// the queue memory, with the VINTF's VMID; an illegal one halts the
    /// queue with CERROR_ILL and reports it; GERRORN resumes it.
    #[test]
    fn the_guest_queue_is_consumed() {
        let g = guest();
        let (v, _) = vintf(&g, Some(16)).unwrap();
        let vintf = of(&v);
        let dev: Arc<dyn IommuDevice> = g.dev.clone();
        let _vsid = v.vdevice_init(&dev, VSID).unwrap();
        let q = 0x40_0000u64;
        let _queue = v.hw_queue_init(IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, 0, 0, HOST_BASE + q, 64 * 16).unwrap();
        let put = |slot: u64, c: [u64; 2]| {
            g.write(q + slot * 16, c[0]);
            g.write(q + slot * 16 + 8, c[1]);
        };
        // A TLB entry of the vSMMU's VMID, ASID 5.
        let tlb = g.unit.tlb();
        let vmid = vintf.vmid();
        assert!(tlb.insert(tlb.generation(), vmid, 5, false, 0x7000, 12, 1));
        // Not enabled: PROD alone consumes nothing.
        put(0, cmd::tlbi_nh_va(0x99, 5, 0x7000, true));
        put(1, cmd::cmd_sync());
        vintf.mmio_write(reg::PROD, 2);
        assert_eq!((vintf.mmio_read(reg::CONS), vintf.mmio_read(reg::STATUS)), (0, 0));
        vintf.mmio_write(reg::CONFIG, reg::EN);
        assert_eq!((vintf.mmio_read(reg::CONS), vintf.mmio_read(reg::STATUS)), (2, 1));
        assert!(tlb.lookup(vmid, 5, 0x7000).is_none(), "the guest's TLBI with the VINTF's VMID");
        assert_eq!(vintf.consumed(), 2);
        // ATC_INV of the virtual StreamID reaches the physical one.
        put(2, cmd::atc_inv(VSID as u32, None, 0, 52, false));
        vintf.mmio_write(reg::PROD, 3);
        assert_eq!(vintf.mmio_read(reg::CONS), 3);
        assert_eq!(g.unit.cmd_stats().atc_inv, 1);
        // CFGI_STE is not a guest queue's command: CERROR_ILL, GERROR,
        // an event with LVCMDQ 0's bit.
        put(3, cmd::cfgi_ste(SID, true));
        put(4, cmd::cmd_sync());
        vintf.mmio_write(reg::PROD, 5);
        assert_eq!(vintf.mmio_read(reg::CONS), 3 | reg::CERROR_ILL << 24);
        assert_eq!(vintf.mmio_read(reg::GERROR), 1);
        let events = g.core.events.lock().unwrap().clone();
        assert_eq!(events, vec![(IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, [1u64.to_le_bytes(), [0; 8]].concat())]);
        // The guest replaces it with a CMD_SYNC and acknowledges.
        put(3, cmd::cmd_sync());
        vintf.mmio_write(reg::GERRORN, 1);
        assert_eq!(vintf.mmio_read(reg::CONS), 5);
        // The queue wraps (64 entries: index bits 5:0, wrap bit 6).
        for i in 5..64 {
            put(i, cmd::cmd_sync());
        }
        vintf.mmio_write(reg::PROD, 64);
        assert_eq!(vintf.mmio_read(reg::CONS), 64);
        put(0, cmd::tlbi_nh_asid(0, 5));
        vintf.mmio_write(reg::PROD, 65);
        assert_eq!(vintf.mmio_read(reg::CONS), 65);
        // Registers of an LVCMDQ that is not allocated read 0.
        assert_eq!(vintf.mmio_read(LVCMDQ_STRIDE + reg::STATUS), 0);
    }

    /// Wait (at most 5 s) until `cond` holds.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// A program that maps page 0 drives its VCMDQ with plain stores, no
    /// call into the library: the worker sees `PROD` move and consumes, as
    /// the hardware does without a trap. It starts with the first LVCMDQ
    /// and ends with the VINTF.
    #[test]
    fn the_worker_serves_stores_to_the_mapped_page() {
        use uiommufd_memory::shared::SharedMapping;
        let g = guest();
        let (v, _) = vintf(&g, Some(16)).unwrap();
        let vintf = of(&v);
        assert!(!vintf.watched(), "no thread before a VCMDQ exists");
        // The program's own mapping of the memfd (the shim's mmap).
        let page = SharedMapping::map(vintf.page().fd(), VINTF_PAGE_SIZE as usize).unwrap();
        let q = 0x40_0000u64;
        let queue = v.hw_queue_init(IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, 0, 0, HOST_BASE + q, 64 * 16).unwrap();
        assert!(vintf.watched());
        let tlb = g.unit.tlb();
        let vmid = vintf.vmid();
        assert!(tlb.insert(tlb.generation(), vmid, 5, false, 0x7000, 12, 1));
        for (i, c) in [cmd::tlbi_nh_va(0, 5, 0x7000, true), cmd::cmd_sync()].into_iter().enumerate() {
            g.write(q + i as u64 * 16, c[0]);
            g.write(q + i as u64 * 16 + 8, c[1]);
        }
        // Software resets CONS before enabling (the driver's hw_deinit).
        page.store_u32(reg::CONS as usize, 0);
        page.store_u32(reg::CONFIG as usize, reg::EN);
        eventually("STATUS.ENABLED", || page.load_u32(reg::STATUS as usize) == reg::EN);
        page.store_u32(reg::PROD as usize, 2);
        eventually("CONS to reach PROD", || page.load_u32(reg::CONS as usize) == 2);
        assert!(tlb.lookup(vmid, 5, 0x7000).is_none(), "the TLBI took effect before CONS passed it");
        assert_eq!(vintf.consumed(), 2);
        // An illegal command (TLBI_NSNH_ALL is the hypervisor's): CONS stops on
        // it with CERROR_ILL and GERROR toggles, an event reports it.
        g.write(q + 2 * 16, cmd::tlbi_nsnh_all()[0]);
        g.write(q + 2 * 16 + 8, cmd::tlbi_nsnh_all()[1]);
        page.store_u32(reg::PROD as usize, 3);
        eventually("GERROR", || page.load_u32(reg::GERROR as usize) == reg::GERROR_CMDQ_ERR);
        assert_eq!(page.load_u32(reg::CONS as usize), 2 | reg::CERROR_ILL << reg::CONS_ERR_SHIFT);
        assert_eq!(g.core.events.lock().unwrap().len(), 1);
        // A program store to CONS while the queue runs does not stick.
        page.store_u32(reg::CONS as usize, 0);
        eventually("CONS restored", || page.load_u32(reg::CONS as usize) == 2 | reg::CERROR_ILL << 24);
        // Fixed and acknowledged, the queue resumes.
        let sync = cmd::cmd_sync();
        g.write(q + 2 * 16, sync[0]);
        g.write(q + 2 * 16 + 8, sync[1]);
        page.store_u32(reg::GERRORN as usize, reg::GERROR_CMDQ_ERR);
        eventually("CONS past the fixed command", || page.load_u32(reg::CONS as usize) == 3);
        // Disabled, the queue takes the program's CONS.
        page.store_u32(reg::CONFIG as usize, 0);
        eventually("STATUS cleared", || page.load_u32(reg::STATUS as usize) == 0);
        page.store_u32(reg::CONS as usize, 1);
        assert_eq!(vintf.mmio_read(reg::CONS), 1);
        // The thread ends with the VINTF (its drop joins it).
        let hw = Arc::downgrade(&vintf.hw);
        drop((queue, v));
        assert!(hw.upgrade().is_none(), "the worker still holds the VINTF");
    }
}
