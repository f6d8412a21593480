//! The ring: register side effects and descriptor execution.
//!
//! Everything here runs with the ring lock held ([`Ring`] is the state
//! behind it), by whichever consumer holds it: the worker thread or a
//! caller of `DmaEngine::run_until_idle`. One consumer at a time is the
//! whole concurrency story of the ring; registers are atomics in shared
//! memory that the driver may change at any moment, so each is read once
//! per decision.
//!
//! Order of one descriptor (the protocol `docs/devices/dma-engine.md`
//! promises):
//! 1. Bus Master Enable clear → halt `BUS_MASTER`, no request issued.
//! 2. Fetch the 64 bytes at `RING_BASE + HEAD * 64` (no PASID); a fault
//!    halts `DESC_FETCH_FAULT` with HEAD on this descriptor.
//! 3. Validate (opcode, reserved flags, PASID rules, length) then run the
//!    data requests; errors become the completion status.
//! 4. Write `result`, then `status` (no PASID); a fault halts
//!    `COMPLETION_FAULT` with HEAD on this descriptor.
//! 5. Advance HEAD, count, publish registers, raise the interrupt if asked,
//!    halt if it failed under `HALT_ON_ERROR`.
//!
//! Steps 2 to 4 run under one DMA-fence hold (`dma_fence::hold`): the
//! requests of a descriptor share one section.
//!
//! Arithmetic: `RING_BASE + (RING_SIZE - 1) * 64` is checked when the ring
//! is enabled; a descriptor's ranges are checked as `addr + (len - 1)`
//! with `checked_add` before any request, so no request wraps.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use uiommufd_hw::dma::{DmaAttrs, DmaError, DmaPort};

use super::regs::{self, flags, halt, opcode, status, Descriptor};
use super::{load32, reg, Inner, CTL_BUS_MASTER, CTL_NO_SNOOP, CTL_PASID, CTL_PRIV};

/// Bytes per FILL write request.
const FILL_CHUNK: usize = 64 * 1024;
/// Bytes per COMPARE read request (two buffers).
const COMPARE_CHUNK: usize = 16 * 1024;

/// The consumer side of the ring: what the device knows that the registers
/// only mirror.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// The device has seen `CTRL.ENABLE` (and latched base and size).
    pub(super) enabled: bool,
    pub(super) halted: bool,
    pub(super) halt_code: u8,
    /// `STATUS.ERROR`: a descriptor failed since the ring reset.
    pub(super) error_seen: bool,
    pub(super) base: u64,
    pub(super) size: u32,
    pub(super) head: u32,
    pub(super) completed: u64,
    pub(super) errors: u64,
    /// A descriptor abandoned part way (the device was stopped for
    /// migration, or a reset began): its index and the bytes it had done.
    /// Running that descriptor again starts there.
    pub(super) resume: Option<(u32, u64)>,
    /// Reused data buffer for FILL and COMPARE.
    pub(super) scratch: Vec<u8>,
    /// `TAIL` as read by the publish that ended the last descriptor, taken
    /// by the next look at the registers: when `TAIL` is still the same
    /// there, the registers already say all there is (no second publish
    /// per descriptor).
    pub(super) fresh: Option<u32>,
}

/// What the ring lock guards: the ring, and the DMA port the last
/// descriptor used (beside the ring, so that a descriptor borrows both at
/// once without moving the port out and back).
#[derive(Debug, Default)]
pub(crate) struct Consumer {
    ring: Ring,
    /// With `Inner::port_gen` when it was taken.
    port: Option<CachedPort>,
}

impl Deref for Consumer {
    type Target = Ring;
    fn deref(&self) -> &Ring {
        &self.ring
    }
}

impl DerefMut for Consumer {
    fn deref_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }
}

/// A DMA port held by the ring between descriptors.
struct CachedPort {
    gen: u64,
    port: Arc<dyn DmaPort>,
}

impl std::fmt::Debug for CachedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedPort").field("gen", &self.gen).finish_non_exhaustive()
    }
}

/// Why a request was not issued or did not complete.
enum Fault {
    /// Bus Master Enable is clear: nothing was sent to the port.
    BusMaster,
    Dma(DmaError),
}

/// Why a descriptor did not reach a completion status.
enum Interrupted {
    BusMaster,
    /// A reset, a migration stop or the worker's stop: abandon it after
    /// `done` bytes, HEAD stays.
    Aborted {
        done: u64,
    },
}

/// Why a descriptor ended before its completion record was written.
enum Stopped {
    /// Halt with this fault and code.
    Halt(Fault, u8),
    /// Abandoned (see [`Interrupted::Aborted`]): HEAD stays.
    Aborted,
}

/// What the consumer loop does next.
enum Step {
    Next,
    Stop,
}

/// The function's requester: every request goes through here so that Bus
/// Master Enable and Enable No Snoop are read at the moment of the request.
struct Bus<'a> {
    port: &'a dyn DmaPort,
    inner: &'a Inner,
}

impl Bus<'_> {
    fn attrs(&self, pasid: Option<u32>, privileged: bool) -> Result<DmaAttrs, Fault> {
        let ctl = self.inner.ctl.load(Ordering::Acquire);
        if ctl & CTL_BUS_MASTER == 0 {
            return Err(Fault::BusMaster);
        }
        Ok(DmaAttrs { pasid, no_snoop: ctl & CTL_NO_SNOOP != 0, privileged })
    }

    fn read(&self, iova: u64, buf: &mut [u8], pasid: Option<u32>, privileged: bool) -> Result<(), Fault> {
        let attrs = self.attrs(pasid, privileged)?;
        self.port.dma_read(iova, buf, attrs).map_err(Fault::Dma)
    }

    fn write(&self, iova: u64, data: &[u8], pasid: Option<u32>, privileged: bool) -> Result<(), Fault> {
        let attrs = self.attrs(pasid, privileged)?;
        self.port.dma_write(iova, data, attrs).map_err(Fault::Dma)
    }

    /// The completion record: `result`, then `status` (no PASID), two
    /// writes in that order issued together (Bus Master Enable read once
    /// for both).
    fn complete(&self, addr: u64, result: u64, code: u32) -> Result<(), Fault> {
        let attrs = self.attrs(None, false)?;
        let (result, code) = (result.to_le_bytes(), code.to_le_bytes());
        self.port
            .dma_write_then((addr + regs::DESC_RESULT, &result), (addr + regs::DESC_STATUS, &code), attrs)
            .map_err(Fault::Dma)
    }

    fn copy(&self, dst: u64, src: u64, len: u64, pasid: Option<u32>, privileged: bool) -> Result<(), Fault> {
        let attrs = self.attrs(pasid, privileged)?;
        self.port.dma_copy(dst, src, len, attrs).map_err(Fault::Dma)
    }
}

/// A data-phase fault as a completion: `(status, result)`.
fn data_fault(f: Fault) -> Result<(u32, u64), Interrupted> {
    match f {
        Fault::BusMaster => Err(Interrupted::BusMaster),
        Fault::Dma(e) => Ok((if e.write { status::WRITE_FAULT } else { status::READ_FAULT }, e.iova)),
    }
}

/// `addr + len - 1` fits in 64 bits (`len` > 0).
fn range_ok(addr: u64, len: u64) -> bool {
    addr.checked_add(len - 1).is_some()
}

impl Ring {
    /// Power-on state (keeping the scratch allocation).
    pub(crate) fn reset(&mut self) {
        let scratch = std::mem::take(&mut self.scratch);
        *self = Ring { scratch, ..Ring::default() };
    }
}

impl Inner {
    /// Mirror the ring state into STATUS, HEAD and the counters; returns
    /// the `TAIL` it computed `BUSY` from.
    pub(super) fn publish(&self, ring: &Ring) -> u32 {
        let r = self.reg_file();
        let tail = load32(r, regs::REG_TAIL);
        let mut st = 0;
        if ring.enabled {
            st |= regs::STATUS_ENABLED;
            if !ring.halted && tail != ring.head {
                st |= regs::STATUS_BUSY;
            }
        }
        if ring.halted {
            st |= regs::STATUS_HALTED | u32::from(ring.halt_code) << regs::STATUS_HALT_CODE_SHIFT;
        }
        if ring.error_seen {
            st |= regs::STATUS_ERROR;
        }
        reg(r, regs::REG_COMPLETED).store(ring.completed, Ordering::Release);
        reg(r, regs::REG_ERRORS).store(ring.errors, Ordering::Release);
        reg(r, regs::REG_STATUS).store(u64::from(st), Ordering::Release);
        reg(r, regs::REG_HEAD).store(u64::from(ring.head), Ordering::Release);
        tail
    }

    fn record_error(&self, code: u32, iova: u64, index: u32) {
        let r = self.reg_file();
        reg(r, regs::REG_ERR_IOVA).store(iova, Ordering::Release);
        reg(r, regs::REG_ERR_CODE).store(u64::from(code) | u64::from(index) << 32, Ordering::Release);
    }

    /// Stop the ring with `code`; `ERR_*` record it (a `DESC_ERROR` halt
    /// keeps the descriptor's own error there).
    #[cold]
    fn halt(&self, ring: &mut Ring, code: u8, iova: u64) {
        ring.halted = true;
        ring.halt_code = code;
        if code != halt::DESC_ERROR {
            self.record_error(u32::from(code), iova, ring.head);
        }
        self.publish(ring);
        if load32(self.reg_file(), regs::REG_CTRL) & regs::CTRL_HALT_IRQ != 0 {
            self.raise_msix();
        }
    }

    /// The device model panicked while it ran the ring (caught by the
    /// caller): halt with [`halt::INTERNAL`], so the driver sees the ring
    /// stop with a reason instead of a device that no longer completes.
    pub(crate) fn halt_internal(&self, ring: &mut Ring) {
        self.halt(ring, halt::INTERNAL, 0);
    }

    #[cold]
    fn halt_on(&self, ring: &mut Ring, f: Fault, code: u8) -> Step {
        match f {
            Fault::BusMaster => self.halt(ring, halt::BUS_MASTER, 0),
            Fault::Dma(e) => self.halt(ring, code, e.iova),
        }
        Step::Stop
    }

    #[inline]
    fn should_stop(&self, stop: &AtomicBool) -> bool {
        stop.load(Ordering::Acquire)
            || self.aborting.load(Ordering::Acquire) != 0
            || self.paused.load(Ordering::Acquire)
    }

    /// Act on the registers until there is nothing to do: ring reset,
    /// disable, enable, then consume descriptors until HEAD == TAIL, a
    /// halt, a disable, or `stop` / a reset in progress.
    pub(crate) fn service(&self, c: &mut Consumer, stop: &AtomicBool) {
        let r = self.reg_file();
        loop {
            let ring = &mut c.ring;
            let fresh = ring.fresh.take();
            if self.should_stop(stop) {
                self.publish(ring);
                return;
            }
            let ctrl = load32(r, regs::REG_CTRL);
            if ctrl & regs::CTRL_RESET != 0 {
                ring.reset();
                reg(r, regs::REG_TAIL).store(0, Ordering::Release);
                reg(r, regs::REG_ERR_IOVA).store(0, Ordering::Release);
                reg(r, regs::REG_ERR_CODE).store(0, Ordering::Release);
                reg(r, regs::REG_CTRL).fetch_and(!u64::from(regs::CTRL_RESET | regs::CTRL_ENABLE), Ordering::AcqRel);
                self.publish(ring);
                continue;
            }
            if ctrl & regs::CTRL_ENABLE == 0 {
                if ring.enabled || ring.halted {
                    ring.enabled = false;
                    ring.halted = false;
                    ring.halt_code = 0;
                    self.publish(ring);
                }
                return;
            }
            if ring.halted {
                return;
            }
            if !ring.enabled && !self.enable(ring) {
                return;
            }
            let tail = load32(r, regs::REG_TAIL);
            if tail >= ring.size {
                self.halt(ring, halt::BAD_TAIL, 0);
                return;
            }
            if tail == ring.head {
                if fresh != Some(tail) {
                    self.publish(ring);
                }
                return;
            }
            if let Step::Stop = self.process_one(c, ctrl, stop) {
                return;
            }
        }
    }

    /// `CTRL.ENABLE` seen: latch and check `RING_BASE` and `RING_SIZE`;
    /// false if that halted the ring.
    #[cold]
    fn enable(&self, ring: &mut Ring) -> bool {
        let r = self.reg_file();
        ring.enabled = true;
        let base = reg(r, regs::REG_RING_BASE).load(Ordering::Acquire);
        let size = load32(r, regs::REG_RING_SIZE);
        let ok = size.is_power_of_two()
            && (2..=regs::MAX_RING_SIZE).contains(&size)
            && base.is_multiple_of(regs::DESC_SIZE)
            && base.checked_add((u64::from(size) - 1) * regs::DESC_SIZE).is_some()
            && ring.head < size;
        if !ok {
            self.halt(ring, halt::BAD_RING, 0);
            return false;
        }
        ring.base = base;
        ring.size = size;
        self.publish(ring);
        true
    }

    /// Run the descriptor at HEAD, through the port the ring holds while
    /// no `set_dma_port` replaced it.
    #[inline]
    fn process_one(&self, c: &mut Consumer, ctrl: u32, stop: &AtomicBool) -> Step {
        let gen = self.port_gen.load(Ordering::Acquire);
        if c.port.as_ref().is_some_and(|p| p.gen != gen) {
            c.port = None;
        }
        let cached = c.port.get_or_insert_with(|| CachedPort { gen, port: self.port() });
        self.process_with(&*cached.port, &mut c.ring, ctrl, stop)
    }

    #[inline]
    fn process_with(&self, port: &dyn DmaPort, ring: &mut Ring, ctrl: u32, stop: &AtomicBool) -> Step {
        let bus = Bus { port, inner: self };
        let index = ring.head;
        let addr = ring.base + u64::from(index) * regs::DESC_SIZE;
        // The fetch, the data requests and the completion record in one
        // DMA-fence section (one locked instruction per descriptor, not
        // one per request). Halts, interrupts and the register mirror
        // come after it.
        let done = {
            let _hold = uiommufd_memory::dma_fence::hold();
            self.fetch_run_complete(&bus, ring, index, addr, stop)
        };
        let (desc_flags, code, result) = match done {
            Ok(done) => done,
            Err(Stopped::Halt(f, code)) => return self.halt_on(ring, f, code),
            Err(Stopped::Aborted) => {
                self.publish(ring);
                return Step::Stop;
            }
        };
        ring.head = (index + 1) & (ring.size - 1);
        ring.completed += 1;
        let failed = status::is_error(code);
        if failed {
            ring.errors += 1;
            ring.error_seen = true;
            let iova = if matches!(code, status::READ_FAULT | status::WRITE_FAULT) { result } else { 0 };
            self.record_error(code, iova, index);
        }
        let tail = self.publish(ring);
        if desc_flags & flags::IRQ != 0 {
            self.raise_msix();
        }
        if failed && ctrl & regs::CTRL_HALT_ON_ERROR != 0 {
            self.halt(ring, halt::DESC_ERROR, 0);
            return Step::Stop;
        }
        if tail == ring.head {
            // Idle, and the registers say so: stop without another look. A
            // `CTRL` or `TAIL` written since is one the next service acts
            // on, as if it came just after this one (the worker compares
            // both with what it saw before this service).
            return Step::Stop;
        }
        ring.fresh = Some(tail);
        Step::Next
    }

    /// Fetch the descriptor at `index` (at `addr`), run it and write its
    /// completion record: the descriptor's flags, its status and result.
    #[inline(always)]
    fn fetch_run_complete(
        &self,
        bus: &Bus<'_>,
        ring: &mut Ring,
        index: u32,
        addr: u64,
        stop: &AtomicBool,
    ) -> Result<(u8, u32, u64), Stopped> {
        let mut raw = [0u8; regs::DESC_SIZE as usize];
        bus.read(addr, &mut raw, None, false).map_err(|f| Stopped::Halt(f, halt::DESC_FETCH_FAULT))?;
        let d = Descriptor::from_bytes(&raw);
        // A COPY without PASID, within the length limit and not wrapping,
        // with nothing to resume: what every check of `execute` lets
        // through to the same one request, tested at once.
        let plain_copy = d.opcode == opcode::COPY
            && d.flags & !flags::IRQ == 0
            && d.len.wrapping_sub(1) < regs::MAX_XFER
            && range_ok(d.dst, d.len)
            && range_ok(d.src, d.len)
            && ring.resume.is_none();
        let (start, ran) = if plain_copy {
            let ran = match bus.copy(d.dst, d.src, d.len, None, false) {
                Ok(()) => Ok((status::SUCCESS, 0)),
                Err(f) => data_fault(f),
            };
            (0, ran)
        } else {
            let start = match ring.resume.take() {
                Some((i, done)) if i == index => done,
                _ => 0,
            };
            (start, self.execute(&mut ring.scratch, bus, &d, start, stop))
        };
        let (code, result) = match ran {
            Ok(c) => c,
            Err(Interrupted::BusMaster) => {
                // Nothing of it was issued since `start`: keep that.
                ring.resume = (start != 0).then_some((index, start));
                return Err(Stopped::Halt(Fault::BusMaster, 0));
            }
            Err(Interrupted::Aborted { done }) => {
                ring.resume = (done != 0).then_some((index, done));
                return Err(Stopped::Aborted);
            }
        };
        bus.complete(addr, result, code).map_err(|f| Stopped::Halt(f, halt::COMPLETION_FAULT))?;
        Ok((d.flags, code, result))
    }

    /// Validate and run one descriptor's operation from byte `start` (its
    /// progress before an interruption; COPY is one request and always
    /// starts at 0); `(status, result)`.
    fn execute(
        &self,
        scratch: &mut Vec<u8>,
        bus: &Bus<'_>,
        d: &Descriptor,
        start: u64,
        stop: &AtomicBool,
    ) -> Result<(u32, u64), Interrupted> {
        if d.opcode > opcode::COMPARE {
            return Ok((status::BAD_OPCODE, 0));
        }
        if d.flags & !flags::KNOWN != 0 {
            return Ok((status::BAD_FLAGS, 0));
        }
        let ctl = self.ctl.load(Ordering::Acquire);
        let pasid = if d.flags & flags::PASID != 0 {
            let width = self.pasid_width.map_or(0, u32::from);
            if ctl & CTL_PASID == 0 || u64::from(d.pasid) >> width != 0 {
                return Ok((status::BAD_PASID, 0));
            }
            Some(d.pasid)
        } else {
            None
        };
        let privileged = d.flags & flags::PRIV != 0;
        if privileged && (pasid.is_none() || ctl & CTL_PRIV == 0) {
            return Ok((status::BAD_PASID, 0));
        }
        if d.opcode == opcode::NOP {
            return Ok((status::SUCCESS, 0));
        }
        if d.len > regs::MAX_XFER {
            return Ok((status::BAD_LENGTH, 0));
        }
        if d.len == 0 {
            return Ok((status::SUCCESS, 0));
        }
        let src_used = matches!(d.opcode, opcode::COPY | opcode::COMPARE);
        if !range_ok(d.dst, d.len) || (src_used && !range_ok(d.src, d.len)) {
            return Ok((status::BAD_LENGTH, 0));
        }
        match d.opcode {
            opcode::COPY => match bus.copy(d.dst, d.src, d.len, pasid, privileged) {
                Ok(()) => Ok((status::SUCCESS, 0)),
                Err(f) => data_fault(f),
            },
            opcode::FILL => {
                let chunk = FILL_CHUNK.min(d.len as usize);
                scratch.resize(chunk.max(scratch.len()), 0);
                let pattern = d.pattern.to_le_bytes();
                for (i, b) in scratch[..chunk].iter_mut().enumerate() {
                    *b = pattern[i % 8];
                }
                // `start` is a multiple of the chunk, so the pattern stays
                // aligned.
                let mut done = start.min(d.len);
                while done < d.len {
                    if self.should_stop(stop) {
                        return Err(Interrupted::Aborted { done });
                    }
                    let n = (d.len - done).min(chunk as u64) as usize;
                    if let Err(f) = bus.write(d.dst + done, &scratch[..n], pasid, privileged) {
                        return data_fault(f);
                    }
                    done += n as u64;
                }
                Ok((status::SUCCESS, 0))
            }
            _ => {
                scratch.resize((2 * COMPARE_CHUNK).max(scratch.len()), 0);
                let (a, b) = scratch.split_at_mut(COMPARE_CHUNK);
                let mut done = start.min(d.len);
                while done < d.len {
                    if self.should_stop(stop) {
                        return Err(Interrupted::Aborted { done });
                    }
                    let n = (d.len - done).min(COMPARE_CHUNK as u64) as usize;
                    if let Err(f) = bus.read(d.src + done, &mut a[..n], pasid, privileged) {
                        return data_fault(f);
                    }
                    if let Err(f) = bus.read(d.dst + done, &mut b[..n], pasid, privileged) {
                        return data_fault(f);
                    }
                    if let Some(i) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
                        return Ok((status::MISMATCH, done + i as u64));
                    }
                    done += n as u64;
                }
                Ok((status::SUCCESS, 0))
            }
        }
    }
}
