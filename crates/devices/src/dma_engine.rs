//! A descriptor-ring DMA engine: COPY, FILL, COMPARE and NOP over IOVA
//! space, our own device (`docs/devices/dma-engine.md` is its datasheet).
//!
//! What it stores:
//! - BAR0 (4 KiB) in a memfd ([`SharedMemory`]) that a program may map:
//!   the registers of [`regs`], and the MSI-X table and PBA;
//! - its config space ([`ConfigSpace`]: type-0 header, 64-bit BAR0, PCI
//!   Express capability with FLR, MSI-X with one vector, PASID), and a
//!   decoded copy of the bits the DMA path reads per request (`ctl`:
//!   Bus Master Enable, Enable No Snoop, PASID and Privileged Mode Enable,
//!   MSI-X Enable and Function Mask), refreshed after every config write;
//! - the ring's consumer state (`ring::Ring`, and the DMA port it last
//!   used: `ring::Consumer`) behind the ring lock, the DMA port, and the
//!   MSI-X triggers.
//!
//! Who runs the ring: one consumer at a time, whoever holds the ring lock.
//! A worker thread is started lazily, on the first `region_write` to BAR0
//! or when the BAR's memfd is handed out for mmap, and runs until the
//! device is reset or dropped (Drop joins it; no thread outlives the
//! device). It wakes at once on a `region_write` (a condvar kick); a
//! doorbell takes the worker slot's lock only when no worker is known to
//! run, and a device built without a worker is not kicked at all. Because
//! program stores through an mmap do not trap, while the BAR is exposed
//! for mmap the worker also polls `CTRL` and `TAIL` in the shared memory:
//! it spins for a few rounds after activity, then sleeps with a doubling
//! interval from 2 µs up to 1 ms, so an mmap'd doorbell is seen within
//! about a millisecond when idle and at once when busy. Without an mmap it
//! sleeps until kicked. [`DmaEngine::run_until_idle`] runs the ring on the
//! caller's thread instead (for Rust users and benchmarks; with
//! `DmaEngineOptions::worker = false` it is the only consumer).
//!
//! Lock order (outermost first): worker slot → ring → config. The port,
//! the IRQ lines and the worker signal are leaves. No lock is held while
//! firing an interrupt trigger except the ring lock (the consumer fires
//! after a completion), so a trigger must not call back into the device.
//!
//! Reset (FLR, `PciDevice::reset` or Device Control's Initiate FLR): stop
//! the worker (the descriptor in flight is abandoned at its next chunk
//! boundary; COPY is one port call and finishes), then return ring,
//! registers and config space to power-on values. Triggers and the DMA
//! port are platform state and stay. If the BAR was exposed for mmap the
//! worker restarts, still polling the program's mapping.

use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use uiommufd_abi::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX};
use uiommufd_abi::Errno;
use uiommufd_hw::dma::{BlockedPort, DmaPort};

use crate::config::{pcie, Bar, BarKind, ConfigSpace, MsixCap, PasidCap, PciId, PcieCap};
use crate::irq::{IrqLines, IrqTrigger};
use crate::mmio::SharedMemory;
use crate::pci::{DeviceMigration, PciDevice, RegionFlags, RegionInfo};

mod migration;
pub mod regs;
mod ring;

pub use regs::Descriptor;

/// Vendor ID 0x1234: not assigned to a real product line, the value QEMU's
/// emulated devices use by convention.
pub const VENDOR_ID: u16 = 0x1234;
/// Device ID: "UD".
pub const DEVICE_ID: u16 = 0x5544;
/// Class 08h/80h/00h: base system peripheral, other (as Intel's I/OAT and
/// DSA engines report).
pub const CLASS_CODE: u32 = 0x08_80_00;
pub const REVISION_ID: u8 = 1;

/// The identity of every DMA engine.
pub const PCI_ID: PciId = PciId {
    vendor_id: VENDOR_ID,
    device_id: DEVICE_ID,
    subsystem_vendor_id: VENDOR_ID,
    subsystem_id: DEVICE_ID,
    revision_id: REVISION_ID,
    class_code: CLASS_CODE,
};

// Decoded config bits (`Inner::ctl`).
pub(crate) const CTL_BUS_MASTER: u32 = 1 << 0;
pub(crate) const CTL_NO_SNOOP: u32 = 1 << 1;
pub(crate) const CTL_PASID: u32 = 1 << 2;
pub(crate) const CTL_PRIV: u32 = 1 << 3;
const CTL_MSIX_ENABLE: u32 = 1 << 4;
const CTL_MSIX_MASK: u32 = 1 << 5;

/// Polling after activity: rounds of `spin_loop` before the first sleep.
const SPIN_ROUNDS: u32 = 64;
/// The longest sleep between two looks at an mmap'd BAR.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// How to build a DMA engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaEngineOptions {
    /// Max PASID Width of the PASID capability; `None`: no PASID
    /// capability (PASID descriptors then fail `BAD_PASID`).
    pub pasid_width: Option<u8>,
    /// Privileged Mode Supported in the PASID capability.
    pub privileged_mode: bool,
    /// Run a worker thread (lazily). Without one the ring only moves in
    /// [`DmaEngine::run_until_idle`], and an mmap'd doorbell is never seen.
    pub worker: bool,
}

impl Default for DmaEngineOptions {
    fn default() -> Self {
        DmaEngineOptions { pasid_width: Some(20), privileged_mode: true, worker: true }
    }
}

/// The ring as the registers show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingState {
    /// `STATUS` as read.
    pub status: u32,
    pub head: u32,
    pub tail: u32,
    pub completed: u64,
    pub errors: u64,
    pub err_code: u32,
    pub err_index: u32,
    pub err_iova: u64,
}

impl RingState {
    pub fn enabled(&self) -> bool {
        self.status & regs::STATUS_ENABLED != 0
    }
    pub fn busy(&self) -> bool {
        self.status & regs::STATUS_BUSY != 0
    }
    pub fn halted(&self) -> bool {
        self.status & regs::STATUS_HALTED != 0
    }
    /// The halt code (meaningful while halted).
    pub fn halt_code(&self) -> u8 {
        (self.status >> regs::STATUS_HALT_CODE_SHIFT) as u8
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The register memory (BAR0, then BAR2's MSI-X structures at
/// [`regs::MSIX_MEM`]) as the 64-bit words every access goes through.
/// Indexed with the `regs` constants, a register costs one load or store:
/// no bounds check or panic path per access, as `SharedMapping`'s
/// accessors take for offsets they cannot know (one per view instead).
pub(crate) type RegFile = [AtomicU64; (regs::MEM_SIZE / 8) as usize];

/// The word holding register `offset` (8-aligned for 64-bit registers;
/// a 32-bit register is one half of its word).
#[inline(always)]
pub(crate) fn reg(r: &RegFile, offset: u64) -> &AtomicU64 {
    &r[(offset / 8) as usize]
}

/// Load the 32-bit register at `offset` (4-aligned).
#[inline(always)]
pub(crate) fn load32(r: &RegFile, offset: u64) -> u32 {
    (reg(r, offset).load(Ordering::Acquire) >> ((offset % 8) * 8)) as u32
}

/// What the worker thread and the device share.
pub(crate) struct Inner {
    name: String,
    regs: SharedMemory,
    config: Mutex<ConfigSpace>,
    /// `CTL_*` bits decoded from config space.
    pub(crate) ctl: AtomicU32,
    pub(crate) pasid_width: Option<u8>,
    port: Mutex<Arc<dyn DmaPort>>,
    /// Bumped (under `port`) by every `set_dma_port`: the ring keeps the
    /// port it used last while this has not moved, so a descriptor costs
    /// no lock and no reference count for it.
    pub(crate) port_gen: AtomicU64,
    irqs: IrqLines,
    /// An MSI-X message was held back by Function Mask (PBA bit 0).
    msix_pending: AtomicBool,
    ring: Mutex<ring::Consumer>,
    /// Resets in progress: consumers stop at the next boundary.
    pub(crate) aborting: AtomicUsize,
    /// A `region_write` happened since the worker last looked.
    kicked: AtomicBool,
    /// A worker thread was started and has not stopped (false at worst
    /// spuriously, which only sends a doorbell to the worker slot's lock).
    worker_up: AtomicBool,
    /// The worker is (about to be) waiting on `wake`.
    sleeping: AtomicBool,
    signal: Mutex<()>,
    wake: Condvar,
    /// The BAR's memfd was handed out: stores may bypass `region_write`.
    mmap_exposed: AtomicBool,
    /// Stopped for live migration (VFIO's STOP): no consumer runs, no
    /// interrupt is sent, until [`DeviceMigration::run`].
    pub(crate) paused: AtomicBool,
}

impl Inner {
    pub(crate) fn port(&self) -> Arc<dyn DmaPort> {
        lock(&self.port).clone()
    }

    fn lock_ring(&self) -> MutexGuard<'_, ring::Consumer> {
        lock(&self.ring)
    }

    /// The registers as words (see [`RegFile`]).
    #[inline]
    pub(crate) fn reg_file(&self) -> &RegFile {
        self.regs.mapping().words().first_chunk().expect("the register memory is MEM_SIZE bytes")
    }

    /// [`Inner::service`], with a panic in the device model (a bug of
    /// ours, in the ring code or the DMA port behind it) caught: the ring
    /// halts with [`regs::halt::INTERNAL`] and the failure is reported on
    /// stderr, so the program sees a halted device rather than one that
    /// silently stopped completing; a ring or device reset recovers.
    fn service_caught(&self, stop: &AtomicBool) {
        // The ring lock, the device's and the frame registry's are taken
        // in here: a fork waits for this batch (see forkgate).
        let _gate = uiommufd_memory::forkgate::enter();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.service(&mut self.lock_ring(), stop)));
        if ran.is_ok() {
            return;
        }
        let halted =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.halt_internal(&mut self.lock_ring())));
        let what =
            if halted.is_ok() { "the ring is halted (code 0x26); reset it to go on" } else { "and could not halt" };
        eprintln!("uiommufd: dma-engine {}: the device model failed (a bug in uiommufd): {what}", self.name);
    }

    /// Power-on register contents.
    fn init_registers(&self) {
        let m = self.regs.mapping();
        m.zero();
        m.store_u64(regs::REG_ID as usize, u64::from(regs::ID_VALUE) | u64::from(regs::VERSION_VALUE) << 32);
        m.store_u64(regs::REG_CAP as usize, regs::CAP_VALUE);
        // MSI-X Vector Control: Mask Bit set at reset (§7.7.2.8).
        let table = regs::MSIX_MEM + regs::MSIX_TABLE;
        m.store_u64((table + 8) as usize, u64::from(crate::config::msix::VECTOR_MASKED) << 32);
    }

    fn refresh_ctl(&self, cfg: &ConfigSpace) {
        let mut ctl = 0;
        if cfg.bus_master() {
            ctl |= CTL_BUS_MASTER;
        }
        if cfg.no_snoop() {
            ctl |= CTL_NO_SNOOP;
        }
        let p = cfg.pasid_control();
        if p.enabled {
            ctl |= CTL_PASID;
        }
        if p.privileged {
            ctl |= CTL_PRIV;
        }
        let mc = cfg.msix_control().unwrap_or(0);
        if mc & crate::config::msix::CONTROL_ENABLE != 0 {
            ctl |= CTL_MSIX_ENABLE;
        }
        if mc & crate::config::msix::CONTROL_FUNCTION_MASK != 0 {
            ctl |= CTL_MSIX_MASK;
        }
        self.ctl.store(ctl, Ordering::Release);
    }

    /// Raise MSI-X vector 0: a memory write, so it needs Bus Master Enable
    /// and MSI-X Enable; held pending (PBA bit 0) under Function Mask.
    /// The per-vector Mask Bit in the table is not honoured (VFIO owns
    /// vector routing; see the datasheet).
    pub(crate) fn raise_msix(&self) {
        let ctl = self.ctl.load(Ordering::Acquire);
        if ctl & CTL_BUS_MASTER == 0 || ctl & CTL_MSIX_ENABLE == 0 {
            return;
        }
        if ctl & CTL_MSIX_MASK != 0 {
            self.msix_pending.store(true, Ordering::Release);
            self.regs.mapping().update_u64((regs::MSIX_MEM + regs::MSIX_PBA) as usize, |w| w | 1);
            // Unmasked meanwhile? Then deliver it now rather than never.
            self.deliver_pending_msix();
            return;
        }
        self.irqs.fire(VFIO_PCI_MSIX_IRQ_INDEX, 0);
    }

    fn deliver_pending_msix(&self) {
        if self.paused.load(Ordering::Acquire) {
            return;
        }
        let ctl = self.ctl.load(Ordering::Acquire);
        let ready = CTL_BUS_MASTER | CTL_MSIX_ENABLE;
        if ctl & ready != ready || ctl & CTL_MSIX_MASK != 0 {
            return;
        }
        if self.msix_pending.swap(false, Ordering::AcqRel) {
            self.regs.mapping().update_u64((regs::MSIX_MEM + regs::MSIX_PBA) as usize, |w| w & !1);
            self.irqs.fire(VFIO_PCI_MSIX_IRQ_INDEX, 0);
        }
    }

    /// Tell the worker to look. The lock and the wake-up (a system call)
    /// only when it sleeps: a doorbell while it runs or spins, or on a
    /// device without a worker, is one store.
    fn kick(&self) {
        // Sequentially consistent with the worker's `sleeping` store and
        // `kicked` load: either it sees the kick before it sleeps, or we
        // see it asleep and wake it (it waits under `signal`, which we
        // take, so the notification cannot fall between its check and its
        // wait).
        self.kicked.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _g = lock(&self.signal);
            self.wake.notify_all();
        }
    }

    /// The registers whose change means work: `CTRL` and `TAIL`.
    fn watch(&self) -> (u64, u64) {
        let r = self.reg_file();
        (reg(r, regs::REG_CTRL).load(Ordering::Acquire), reg(r, regs::REG_TAIL).load(Ordering::Acquire))
    }

    /// Sleep until kicked, stopped, or `timeout` (forever if `None`).
    fn wait_for_kick(&self, stop: &AtomicBool, timeout: Option<Duration>) {
        let g = lock(&self.signal);
        self.sleeping.store(true, Ordering::SeqCst);
        if !self.kicked.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
            match timeout {
                Some(t) => drop(self.wake.wait_timeout(g, t)),
                None => drop(self.wake.wait(g)),
            }
        }
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

/// The worker: service the ring whenever `CTRL` or `TAIL` changed or a
/// `region_write` kicked; otherwise spin, then back off (module comment).
fn worker_main(inner: &Inner, stop: &AtomicBool) {
    let mut last = None;
    let mut idle: u32 = 0;
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let kicked = inner.kicked.swap(false, Ordering::AcqRel);
        let now = inner.watch();
        if kicked || last != Some(now) {
            last = Some(now);
            inner.service_caught(stop);
            idle = 0;
            continue;
        }
        idle = idle.saturating_add(1);
        if idle <= SPIN_ROUNDS {
            std::hint::spin_loop();
            continue;
        }
        let timeout = inner.mmap_exposed.load(Ordering::Acquire).then(|| {
            let exp = (idle - SPIN_ROUNDS).min(10);
            Duration::from_micros(1 << exp).min(MAX_POLL_INTERVAL)
        });
        inner.wait_for_kick(stop, timeout);
    }
}

struct Worker {
    handle: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

/// The DMA engine device. Share it as `Arc<DmaEngine>` (or
/// `Arc<dyn PciDevice>`); dropping the last handle stops and joins its
/// worker.
pub struct DmaEngine {
    inner: Arc<Inner>,
    worker: Mutex<Option<Worker>>,
    options: DmaEngineOptions,
}

impl std::fmt::Debug for DmaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaEngine")
            .field("name", &self.inner.name)
            .field("options", &self.options)
            .field("ring", &self.ring_state())
            .finish_non_exhaustive()
    }
}

impl DmaEngine {
    /// A DMA engine with default options (PASID width 20, privileged mode,
    /// a worker), DMA blocked until [`PciDevice::set_dma_port`].
    pub fn new(name: &str) -> Result<Self, Errno> {
        Self::with_options(name, DmaEngineOptions::default())
    }

    /// A DMA engine as `options` say. `EINVAL` for a PASID width above 20
    /// or a name with a NUL; the memfd's errors otherwise.
    pub fn with_options(name: &str, options: DmaEngineOptions) -> Result<Self, Errno> {
        let config = Self::build_config(&options)?;
        let memfd_name = CString::new(format!("uiommufd:{name}:bar0")).map_err(|_| Errno::EINVAL)?;
        let regs = SharedMemory::new(&memfd_name, regs::MEM_SIZE as usize)?;
        let mut counts = [0; uiommufd_abi::vfio::VFIO_PCI_NUM_IRQS as usize];
        counts[VFIO_PCI_MSIX_IRQ_INDEX as usize] = 1;
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            regs,
            config: Mutex::new(config),
            ctl: AtomicU32::new(0),
            pasid_width: options.pasid_width,
            port: Mutex::new(Arc::new(BlockedPort)),
            port_gen: AtomicU64::new(0),
            irqs: IrqLines::new(counts),
            msix_pending: AtomicBool::new(false),
            ring: Mutex::new(ring::Consumer::default()),
            aborting: AtomicUsize::new(0),
            kicked: AtomicBool::new(false),
            worker_up: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            signal: Mutex::new(()),
            wake: Condvar::new(),
            mmap_exposed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        });
        inner.init_registers();
        inner.refresh_ctl(&lock(&inner.config));
        Ok(DmaEngine { inner, worker: Mutex::new(None), options })
    }

    fn build_config(options: &DmaEngineOptions) -> Result<ConfigSpace, Errno> {
        let mut c = ConfigSpace::new(&PCI_ID);
        c.add_bar(0, Bar { size: regs::BAR0_SIZE, kind: BarKind::Memory64, prefetchable: false })?;
        c.add_bar(
            regs::MSIX_BAR as usize,
            Bar { size: regs::BAR2_SIZE, kind: BarKind::Memory32, prefetchable: false },
        )?;
        c.add_pcie_capability(PcieCap { port_type: pcie::TYPE_RC_INTEGRATED_ENDPOINT, flr: true })?;
        c.add_msix_capability(MsixCap {
            vectors: 1,
            table_bar: regs::MSIX_BAR as u8,
            table_offset: regs::MSIX_TABLE as u32,
            pba_bar: regs::MSIX_BAR as u8,
            pba_offset: regs::MSIX_PBA as u32,
        })?;
        if let Some(width) = options.pasid_width {
            c.add_pasid_capability(PasidCap { width, execute: false, privileged: options.privileged_mode })?;
        }
        Ok(c)
    }

    /// The options it was built with.
    pub fn options(&self) -> DmaEngineOptions {
        self.options
    }

    /// Run the ring on this thread until it is idle (HEAD == TAIL), halted
    /// or disabled, acting on `CTRL` first as the worker would. Waits for
    /// the worker to finish its current batch if it holds the ring; returns
    /// early if a reset intervenes. Returns the registers afterwards.
    pub fn run_until_idle(&self) -> RingState {
        let never = AtomicBool::new(false);
        self.inner.service_caught(&never);
        self.ring_state()
    }

    /// The ring registers as a driver would read them now.
    pub fn ring_state(&self) -> RingState {
        let r = self.inner.reg_file();
        let err = reg(r, regs::REG_ERR_CODE).load(Ordering::Acquire);
        RingState {
            status: load32(r, regs::REG_STATUS),
            head: load32(r, regs::REG_HEAD),
            tail: load32(r, regs::REG_TAIL),
            completed: reg(r, regs::REG_COMPLETED).load(Ordering::Acquire),
            errors: reg(r, regs::REG_ERRORS).load(Ordering::Acquire),
            err_code: err as u32,
            err_index: (err >> 32) as u32,
            err_iova: reg(r, regs::REG_ERR_IOVA).load(Ordering::Acquire),
        }
    }

    /// `region_read` of a 32-bit BAR0 register.
    pub fn read_reg32(&self, offset: u64) -> Result<u32, Errno> {
        let mut b = [0u8; 4];
        self.region_read(VFIO_PCI_BAR0_REGION_INDEX, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// `region_read` of a 64-bit BAR0 register.
    pub fn read_reg64(&self, offset: u64) -> Result<u64, Errno> {
        let mut b = [0u8; 8];
        self.region_read(VFIO_PCI_BAR0_REGION_INDEX, offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// `region_write` of a 32-bit BAR0 register.
    pub fn write_reg32(&self, offset: u64, value: u32) -> Result<(), Errno> {
        self.bar0_store(offset, u64::from(value), 4)
    }

    /// `region_write` of a 64-bit BAR0 register.
    pub fn write_reg64(&self, offset: u64, value: u64) -> Result<(), Errno> {
        self.bar0_store(offset, value, 8)
    }

    /// `region_write` to BAR0 of 1, 2, 4 or 8 bytes (`EINVAL` otherwise).
    fn bar0_write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.bar0_store(offset, crate::mmio::register_value(data)?, data.len())
    }

    /// Store the `size`-byte `value` (1, 2, 4 or 8) at `offset` in BAR0,
    /// naturally aligned (`EINVAL` otherwise): the register's writable bits
    /// change, the rest of its word stays as it is at that moment; and a
    /// doorbell (`CTRL`, `TAIL`) tells the worker.
    #[inline(always)]
    fn bar0_store(&self, offset: u64, value: u64, size: usize) -> Result<(), Errno> {
        check_bar(offset, size, regs::BAR0_SIZE)?;
        if !offset.is_multiple_of(size as u64) {
            return Err(Errno::EINVAL);
        }
        let word = offset & !7;
        let shift = (offset % 8) * 8;
        let width = if size == 8 { u64::MAX } else { ((1u64 << (size * 8)) - 1) << shift };
        let mask = width & regs::writable_mask(word);
        if mask != 0 {
            let value = value << shift;
            let w = reg(self.inner.reg_file(), word);
            if width & regs::register_bits(word) == regs::register_bits(word) {
                // The whole register (a doorbell): its new value does not
                // depend on its old one, so a load and a store serve for
                // an atomic update (no locked instruction): a store to it
                // by the device or the program in between reads as if it
                // came first. Only the word's other bits, which are no
                // register's, could lose a store made in that window.
                w.store((w.load(Ordering::Acquire) & !mask) | (value & mask), Ordering::Release);
            } else {
                // Cannot fail: the closure always returns a value.
                let _ = w.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| Some((old & !mask) | (value & mask)));
            }
        }
        if (word == regs::REG_CTRL || word == regs::REG_TAIL) && self.options.worker {
            self.ensure_worker();
            self.inner.kick();
        }
        Ok(())
    }

    /// Whether a worker thread is running (for tests and diagnostics).
    pub fn worker_running(&self) -> bool {
        lock(&self.worker).as_ref().is_some_and(|w| !w.handle.is_finished())
    }

    /// Start the worker if it is not running (and the options want one).
    /// A failed spawn leaves none; the next register write retries. A
    /// doorbell while the worker runs takes no lock.
    #[inline]
    fn ensure_worker(&self) {
        if !self.options.worker || self.inner.paused.load(Ordering::Acquire) {
            return;
        }
        if self.inner.worker_up.load(Ordering::Acquire) {
            return;
        }
        let mut slot = lock(&self.worker);
        if slot.as_ref().is_some_and(|w| !w.handle.is_finished()) {
            // Running (a stopped worker that could not be joined, its own
            // thread, cleared the flag on its way out).
            self.inner.worker_up.store(true, Ordering::Release);
            return;
        }
        Self::stop_worker(&mut slot, &self.inner);
        self.spawn_worker(&mut slot);
    }

    fn spawn_worker(&self, slot: &mut Option<Worker>) {
        if !self.options.worker || self.inner.paused.load(Ordering::Acquire) {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (inner, s) = (Arc::clone(&self.inner), Arc::clone(&stop));
        let spawned = thread::Builder::new().name(format!("dma-engine:{}", self.inner.name)).spawn(move || {
            /// However the worker ends, doorbells look at the slot again.
            struct Down<'a>(&'a Inner);
            impl Drop for Down<'_> {
                fn drop(&mut self) {
                    self.0.worker_up.store(false, Ordering::Release);
                }
            }
            let _down = Down(&inner);
            worker_main(&inner, &s)
        });
        if let Ok(handle) = spawned {
            *slot = Some(Worker { handle, stop });
            self.inner.worker_up.store(true, Ordering::Release);
        }
    }

    fn stop_worker(slot: &mut Option<Worker>, inner: &Inner) {
        inner.worker_up.store(false, Ordering::Release);
        if let Some(w) = slot.take() {
            w.stop.store(true, Ordering::Release);
            inner.kick();
            // A worker cannot join itself (a trigger or port calling back
            // into the device); it exits on its own at the stop flag.
            if w.handle.thread().id() != thread::current().id() {
                let _ = w.handle.join();
            }
        }
    }
}

impl Drop for DmaEngine {
    fn drop(&mut self) {
        let mut slot = lock(&self.worker);
        Self::stop_worker(&mut slot, &self.inner);
    }
}

impl PciDevice for DmaEngine {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn id(&self) -> PciId {
        PCI_ID
    }

    fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        lock(&self.inner.config).read(offset, buf)
    }

    fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let fx = {
            let mut cfg = lock(&self.inner.config);
            let fx = cfg.write(offset, data)?;
            self.inner.refresh_ctl(&cfg);
            fx
        };
        self.inner.deliver_pending_msix();
        if fx.flr {
            self.reset();
        }
        Ok(())
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, Errno> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => Ok(RegionInfo {
                index,
                size: regs::BAR0_SIZE,
                flags: RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MMAP,
            }),
            // Small and trapped: not mappable.
            regs::MSIX_BAR => {
                Ok(RegionInfo { index, size: regs::BAR2_SIZE, flags: RegionFlags::READ | RegionFlags::WRITE })
            }
            VFIO_PCI_CONFIG_REGION_INDEX => Ok(RegionInfo::config()),
            i if i < self.num_regions() => Ok(RegionInfo::absent(i)),
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => {
                check_bar(offset, buf.len(), regs::BAR0_SIZE)?;
                self.inner.regs.mapping().read(offset, buf)
            }
            regs::MSIX_BAR => {
                check_bar(offset, buf.len(), regs::BAR2_SIZE)?;
                self.inner.regs.mapping().read(regs::MSIX_MEM + offset, buf)
            }
            VFIO_PCI_CONFIG_REGION_INDEX => self.config_read(offset, buf),
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => self.bar0_write(offset, data),
            regs::MSIX_BAR => {
                check_bar(offset, data.len(), regs::BAR2_SIZE)?;
                self.inner.regs.mapping().write(regs::MSIX_MEM + offset, data, regs::msix_writable_mask(offset & !7))
            }
            VFIO_PCI_CONFIG_REGION_INDEX => self.config_write(offset, data),
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_mmap_fd(&self, index: u32) -> Option<(BorrowedFd<'_>, u64)> {
        if index != VFIO_PCI_BAR0_REGION_INDEX {
            return None;
        }
        self.inner.mmap_exposed.store(true, Ordering::Release);
        self.ensure_worker();
        self.inner.kick();
        Some((self.inner.regs.fd(), regs::BAR0_SIZE))
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.inner.irqs.count(index)
    }

    fn set_irq_triggers(
        &self,
        index: u32,
        start: u32,
        triggers: Vec<Option<Arc<dyn IrqTrigger>>>,
    ) -> Result<(), Errno> {
        self.inner.irqs.set(index, start, triggers)?;
        self.sync_msix_enable(index);
        Ok(())
    }

    fn clear_irq_triggers(&self, index: u32) -> Result<(), Errno> {
        self.inner.irqs.clear(index)?;
        self.sync_msix_enable(index);
        Ok(())
    }

    fn trigger_irq(&self, index: u32, start: u32, count: u32) -> Result<(), Errno> {
        let end = u64::from(start) + u64::from(count);
        if self.irq_count(index) == 0 || end > u64::from(self.irq_count(index)) {
            return Err(Errno::EINVAL);
        }
        for v in start..start + count {
            self.inner.irqs.fire(index, v);
        }
        Ok(())
    }

    fn reset(&self) {
        let mut slot = lock(&self.worker);
        self.inner.aborting.fetch_add(1, Ordering::AcqRel);
        Self::stop_worker(&mut slot, &self.inner);
        {
            let mut ring = self.inner.lock_ring();
            ring.reset();
            self.inner.init_registers();
            self.inner.msix_pending.store(false, Ordering::Release);
            let mut cfg = lock(&self.inner.config);
            cfg.reset();
            self.inner.refresh_ctl(&cfg);
        }
        self.inner.kicked.store(false, Ordering::Release);
        self.inner.aborting.fetch_sub(1, Ordering::AcqRel);
        if self.inner.mmap_exposed.load(Ordering::Acquire) {
            self.spawn_worker(&mut slot);
        }
    }

    fn set_dma_port(&self, port: Arc<dyn DmaPort>) {
        let mut slot = lock(&self.inner.port);
        *slot = port;
        self.inner.port_gen.fetch_add(1, Ordering::AcqRel);
    }

    fn pasid_width(&self) -> Option<u8> {
        self.inner.pasid_width
    }

    fn migration(&self) -> Option<&dyn DeviceMigration> {
        Some(self)
    }
}

/// An access of `len` bytes at `offset` must lie inside a BAR of `size`
/// (the memfd behind them is larger).
#[inline]
fn check_bar(offset: u64, len: usize, size: u64) -> Result<(), Errno> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Errno::EINVAL),
    }
}

impl DmaEngine {
    /// `region_read` of a 64-bit word of BAR2 (the MSI-X table and PBA).
    pub fn read_msix64(&self, offset: u64) -> Result<u64, Errno> {
        let mut b = [0u8; 8];
        self.region_read(regs::MSIX_BAR, offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// MSI-X Enable follows whether VFIO attached any MSI-X trigger, as the
    /// kernel enables MSI-X on the function when user space does.
    fn sync_msix_enable(&self, index: u32) {
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return;
        }
        let on = self.inner.irqs.any_set(index);
        {
            let mut cfg = lock(&self.inner.config);
            cfg.set_msix_enable(on);
            self.inner.refresh_ctl(&cfg);
        }
        self.inner.deliver_pending_msix();
    }
}
