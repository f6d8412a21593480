//! Test fixtures for devices: a memory port that records every request, a
//! trigger that counts, and a minimal DMA-engine ring driver.
//!
//! [`TestMemory`] is an identity-mapped "IOVA space": ranges of bytes with
//! read/write permissions, no translation. It implements [`DmaPort`]
//! exactly as the trait promises (a request that fails part way has
//! transferred the bytes before the faulting address; `dma_copy` copies
//! range to range, no bounce through the default), and logs each request
//! with its attributes and outcome, so tests can check what reached the
//! port, in which order, with which PASID and No Snoop bit.
//!
//! The host-side helpers (`map`, `host_read`, `host_write`) stand for the
//! test's own CPU accesses: they are not logged and they panic on misuse
//! (an unmapped address), which in a fixture is a bug in the test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uiommufd_hw::dma::{DmaAttrs, DmaError, DmaFaultReason, DmaPort};

use crate::config::{cap_id, header, pasid, pcie};
use crate::dma_engine::regs::{self, Descriptor};
use crate::dma_engine::DmaEngine;
use crate::irq::IrqTrigger;
use crate::pci::PciDevice;

/// Access rights of a [`TestMemory`] range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    pub read: bool,
    pub write: bool,
}

impl Perm {
    pub const RW: Perm = Perm { read: true, write: true };
    pub const RO: Perm = Perm { read: true, write: false };
    pub const WO: Perm = Perm { read: false, write: true };
}

/// The kind of a recorded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaOp {
    Read,
    Write,
    /// `dma_copy` from `src` (the record's `iova` is the destination).
    Copy {
        src: u64,
    },
}

/// One request as it reached the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRecord {
    pub op: DmaOp,
    pub iova: u64,
    pub len: u64,
    pub attrs: DmaAttrs,
    pub result: Result<(), DmaError>,
}

struct Range {
    iova: u64,
    perm: Perm,
    data: Vec<u8>,
}

impl Range {
    fn contains(&self, iova: u64) -> bool {
        iova >= self.iova && iova - self.iova < self.data.len() as u64
    }
}

#[derive(Default)]
struct State {
    ranges: Vec<Range>,
    log: Vec<DmaRecord>,
}

fn fault(iova: u64, write: bool, reason: DmaFaultReason) -> DmaError {
    DmaError { iova, write, reason, reported: false }
}

impl State {
    /// Index of the range holding `iova` with the needed permission.
    fn find(&self, iova: u64, write: bool) -> Result<usize, DmaError> {
        let i =
            self.ranges.iter().position(|r| r.contains(iova)).ok_or(fault(iova, write, DmaFaultReason::NotPresent))?;
        let p = self.ranges[i].perm;
        if (write && !p.write) || (!write && !p.read) {
            return Err(fault(iova, write, DmaFaultReason::Permission));
        }
        Ok(i)
    }

    /// Walk `[iova, iova + len)` range by range: `f(range index, offset in
    /// range, offset in request, bytes)`.
    fn walk(
        &mut self,
        iova: u64,
        len: u64,
        write: bool,
        mut f: impl FnMut(&mut Range, usize, usize, usize),
    ) -> Result<(), DmaError> {
        let mut done = 0u64;
        while done < len {
            let addr = iova.checked_add(done).ok_or(fault(iova, write, DmaFaultReason::OutOfRange))?;
            let i = self.find(addr, write)?;
            let r = &mut self.ranges[i];
            let off = (addr - r.iova) as usize;
            let n = ((len - done) as usize).min(r.data.len() - off);
            f(r, off, done as usize, n);
            done += n as u64;
        }
        Ok(())
    }
}

/// An identity-mapped memory that records every DMA request.
#[derive(Default)]
pub struct TestMemory {
    state: Mutex<State>,
}

impl std::fmt::Debug for TestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("TestMemory").field("ranges", &s.ranges.len()).field("log", &s.log.len()).finish()
    }
}

impl TestMemory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add `len` zeroed bytes at `iova` with `perm`. Panics if the range
    /// is empty, wraps, or overlaps another.
    pub fn map(&self, iova: u64, len: usize, perm: Perm) {
        assert!(len > 0 && iova.checked_add(len as u64 - 1).is_some(), "bad range {iova:#x}+{len:#x}");
        let mut s = self.lock();
        let last = iova + (len as u64 - 1);
        assert!(
            !s.ranges.iter().any(|r| iova < r.iova + r.data.len() as u64 && r.iova <= last),
            "range {iova:#x}+{len:#x} overlaps"
        );
        s.ranges.push(Range { iova, perm, data: vec![0; len] });
    }

    /// Remove the range starting at `iova`; returns whether there was one.
    pub fn unmap(&self, iova: u64) -> bool {
        let mut s = self.lock();
        let before = s.ranges.len();
        s.ranges.retain(|r| r.iova != iova);
        s.ranges.len() != before
    }

    /// Change the permission of the range starting at `iova`.
    pub fn set_perm(&self, iova: u64, perm: Perm) {
        let mut s = self.lock();
        let r = s.ranges.iter_mut().find(|r| r.iova == iova).expect("no range starts there");
        r.perm = perm;
    }

    /// CPU write, not logged, ignoring permissions. Panics if unmapped.
    pub fn host_write(&self, iova: u64, data: &[u8]) {
        let mut s = self.lock();
        let mut done = 0;
        while done < data.len() {
            let addr = iova + done as u64;
            let r = s.ranges.iter_mut().find(|r| r.contains(addr)).expect("host_write to unmapped memory");
            let off = (addr - r.iova) as usize;
            let n = (data.len() - done).min(r.data.len() - off);
            r.data[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// CPU read, not logged, ignoring permissions. Panics if unmapped.
    pub fn host_read(&self, iova: u64, len: usize) -> Vec<u8> {
        let s = self.lock();
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let addr = iova + out.len() as u64;
            let r = s.ranges.iter().find(|r| r.contains(addr)).expect("host_read of unmapped memory");
            let off = (addr - r.iova) as usize;
            let n = (len - out.len()).min(r.data.len() - off);
            out.extend_from_slice(&r.data[off..off + n]);
        }
        out
    }

    /// The requests so far, oldest first.
    pub fn log(&self) -> Vec<DmaRecord> {
        self.lock().log.clone()
    }

    /// The requests so far, clearing the log.
    pub fn take_log(&self) -> Vec<DmaRecord> {
        std::mem::take(&mut self.lock().log)
    }
}

impl DmaPort for TestMemory {
    fn dma_read(&self, iova: u64, buf: &mut [u8], attrs: DmaAttrs) -> Result<(), DmaError> {
        let mut s = self.lock();
        let result = s.walk(iova, buf.len() as u64, false, |r, off, at, n| {
            buf[at..at + n].copy_from_slice(&r.data[off..off + n]);
        });
        s.log.push(DmaRecord { op: DmaOp::Read, iova, len: buf.len() as u64, attrs, result });
        result
    }

    fn dma_write(&self, iova: u64, data: &[u8], attrs: DmaAttrs) -> Result<(), DmaError> {
        let mut s = self.lock();
        let result = s.walk(iova, data.len() as u64, true, |r, off, at, n| {
            r.data[off..off + n].copy_from_slice(&data[at..at + n]);
        });
        s.log.push(DmaRecord { op: DmaOp::Write, iova, len: data.len() as u64, attrs, result });
        result
    }

    fn dma_copy(&self, dst: u64, src: u64, len: u64, attrs: DmaAttrs) -> Result<(), DmaError> {
        let mut s = self.lock();
        let mut copy = || -> Result<(), DmaError> {
            let mut done = 0u64;
            while done < len {
                let sa = src.checked_add(done).ok_or(fault(src, false, DmaFaultReason::OutOfRange))?;
                let da = dst.checked_add(done).ok_or(fault(dst, true, DmaFaultReason::OutOfRange))?;
                let si = s.find(sa, false)?;
                let di = s.find(da, true)?;
                let (so, dof) = ((sa - s.ranges[si].iova) as usize, (da - s.ranges[di].iova) as usize);
                let n = ((len - done) as usize).min(s.ranges[si].data.len() - so).min(s.ranges[di].data.len() - dof);
                if si == di {
                    s.ranges[si].data.copy_within(so..so + n, dof);
                } else {
                    let chunk = s.ranges[si].data[so..so + n].to_vec();
                    s.ranges[di].data[dof..dof + n].copy_from_slice(&chunk);
                }
                done += n as u64;
            }
            Ok(())
        };
        let result = copy();
        s.log.push(DmaRecord { op: DmaOp::Copy { src }, iova: dst, len, attrs, result });
        result
    }
}

/// A trigger that counts how often it fired.
#[derive(Debug, Default)]
pub struct CountingTrigger(AtomicU64);

impl CountingTrigger {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl IrqTrigger for CountingTrigger {
    fn fire(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Poll `cond` until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn config_u16(dev: &dyn PciDevice, offset: u16) -> u16 {
    let mut b = [0u8; 2];
    dev.config_read(u64::from(offset), &mut b).expect("config read");
    u16::from_le_bytes(b)
}

fn config_set_u16(dev: &dyn PciDevice, offset: u16, value: u16) {
    dev.config_write(u64::from(offset), &value.to_le_bytes()).expect("config write");
}

/// Offset of standard capability `id`, found by walking the list through
/// `config_read` as a driver would.
pub fn find_capability(dev: &dyn PciDevice, id: u8) -> Option<u16> {
    let mut b = [0u8; 1];
    dev.config_read(u64::from(header::CAPABILITIES_POINTER), &mut b).ok()?;
    let mut off = u16::from(b[0] & !3);
    for _ in 0..48 {
        if off < 0x40 {
            return None;
        }
        let v = config_u16(dev, off);
        if v as u8 == id {
            return Some(off);
        }
        off = (v >> 8) & !3;
    }
    None
}

/// Offset of extended capability `id`.
pub fn find_ext_capability(dev: &dyn PciDevice, id: u16) -> Option<u16> {
    let mut off = 0x100u16;
    for _ in 0..1024 {
        let mut b = [0u8; 4];
        dev.config_read(u64::from(off), &mut b).ok()?;
        let h = u32::from_le_bytes(b);
        if h == 0 {
            return None;
        }
        if h & 0xffff == u32::from(id) {
            return Some(off);
        }
        off = (h >> 20) as u16 & !3;
        if off < 0x100 {
            return None;
        }
    }
    None
}

/// Set or clear Command bits (Bus Master Enable, Memory Space).
pub fn set_command_bits(dev: &dyn PciDevice, bits: u16, on: bool) {
    let v = config_u16(dev, header::COMMAND);
    config_set_u16(dev, header::COMMAND, if on { v | bits } else { v & !bits });
}

/// Set or clear Device Control's Enable No Snoop.
pub fn set_no_snoop(dev: &dyn PciDevice, on: bool) {
    let cap = find_capability(dev, cap_id::PCI_EXPRESS).expect("no PCIe capability");
    let off = cap + pcie::DEVCTL;
    let v = config_u16(dev, off) & !pcie::DEVCTL_FLR;
    config_set_u16(dev, off, if on { v | pcie::DEVCTL_NO_SNOOP } else { v & !pcie::DEVCTL_NO_SNOOP });
}

/// Write the PASID Control register.
pub fn set_pasid_control(dev: &dyn PciDevice, ctrl: u16) {
    let cap = find_ext_capability(dev, cap_id::EXT_PASID).expect("no PASID capability");
    config_set_u16(dev, cap + pasid::CTRL, ctrl);
}

/// A driver's view of one DMA-engine ring in [`TestMemory`].
#[derive(Debug)]
pub struct TestRing {
    pub base: u64,
    pub size: u32,
    tail: u32,
}

impl TestRing {
    /// Map a ring of `size` descriptors at `base` in `mem`, enable Bus
    /// Master and Memory Space, program `RING_BASE`/`RING_SIZE` with
    /// `ctrl_extra` bits, and set `CTRL.ENABLE` (through `region_write`).
    pub fn setup(dev: &DmaEngine, mem: &TestMemory, base: u64, size: u32, ctrl_extra: u32) -> TestRing {
        mem.map(base, size as usize * regs::DESC_SIZE as usize, Perm::RW);
        set_command_bits(dev, crate::config::command::BUS_MASTER | crate::config::command::MEMORY_SPACE, true);
        dev.write_reg64(regs::REG_RING_BASE, base).expect("RING_BASE");
        dev.write_reg32(regs::REG_RING_SIZE, size).expect("RING_SIZE");
        dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE | ctrl_extra).expect("CTRL");
        TestRing { base, size, tail: 0 }
    }

    /// The driver's tail (not yet rung, perhaps).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// IOVA of slot `index`.
    pub fn slot(&self, index: u32) -> u64 {
        self.base + u64::from(index) * regs::DESC_SIZE
    }

    /// Write `d` (status cleared) at the tail slot and advance the local
    /// tail; returns the slot index. Does not ring the doorbell.
    pub fn push(&mut self, mem: &TestMemory, d: Descriptor) -> u32 {
        let index = self.tail;
        let d = Descriptor { status: regs::status::NONE, result: 0, ..d };
        mem.host_write(self.slot(index), &d.to_bytes());
        self.tail = (self.tail + 1) % self.size;
        index
    }

    /// Write `TAIL` through `region_write`.
    pub fn doorbell(&self, dev: &DmaEngine) {
        dev.write_reg32(regs::REG_TAIL, self.tail).expect("TAIL");
    }

    /// Push each of `descs`, ring once; the slot indexes.
    pub fn submit(&mut self, dev: &DmaEngine, mem: &TestMemory, descs: &[Descriptor]) -> Vec<u32> {
        let v = descs.iter().map(|d| self.push(mem, *d)).collect();
        self.doorbell(dev);
        v
    }

    /// The descriptor in slot `index` as the device left it.
    pub fn completion(&self, mem: &TestMemory, index: u32) -> Descriptor {
        let b = mem.host_read(self.slot(index), regs::DESC_SIZE as usize);
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&b);
        Descriptor::from_bytes(&raw)
    }
}
