//! Live migration of the DMA engine: stop, run, and its state as bytes
//! (`docs/devices/dma-engine.md`, "Live migration").
//!
//! Stop sets `paused` and joins the worker: the descriptor in flight stops
//! at its next request boundary (FILL and COMPARE between chunks; COPY is
//! one request and finishes), its progress is kept in the ring's `resume`,
//! and nothing else is issued: no fetch, no data, no completion, no
//! interrupt. A held-back MSI-X message stays pending. Run clears `paused`
//! and restarts the worker, which goes on at HEAD, from the progress of an
//! interrupted descriptor.
//!
//! The saved state, little-endian:
//!
//! | bytes | what |
//! | --- | --- |
//! | 4 | magic `UDMS` |
//! | 4 | version (1) |
//! | 1, 1, 2 | PASID width (`FFh`: no PASID capability), privileged mode, 0 |
//! | 8192 | the device's memory: BAR0's registers, BAR2's MSI-X table and PBA |
//! | 4096 | config space |
//! | 1 × 4, 8, 4, 4, 8, 8 | ring: enabled, halted, halt code, error seen; base, size, head, completed, errors |
//! | 1, 4, 8 | interrupted descriptor: present, index, bytes done |
//! | 1 | an MSI-X message is pending |
//!
//! Loading checks everything before changing anything: magic, version, the
//! options (a state from an engine with another PASID width is refused),
//! the ring's consistency (size a power of two in range, HEAD below it,
//! base aligned) and the total length. Config space is taken through its
//! write masks ([`ConfigSpace::restore`](crate::config::ConfigSpace::restore)),
//! and MSI-X Enable then follows the interrupt triggers VFIO attached on
//! this side, as it always does.

use std::sync::atomic::Ordering;

use uiommufd_abi::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
use uiommufd_abi::Errno;

use super::ring::Ring;
use super::{lock, regs, DmaEngine};
use crate::config::CONFIG_SPACE_SIZE;
use crate::pci::DeviceMigration;

const MAGIC: &[u8; 4] = b"UDMS";
const VERSION: u32 = 1;
const BAR_LEN: usize = regs::MEM_SIZE as usize;
/// magic, version, options; BAR0; config; ring; resume; MSI-X pending.
const STATE_LEN: usize = 12 + BAR_LEN + CONFIG_SPACE_SIZE + (4 + 8 + 4 + 4 + 8 + 8) + (1 + 4 + 8) + 1;

/// The options as the state records them.
fn options_bytes(e: &DmaEngine) -> [u8; 4] {
    let o = e.options();
    [o.pasid_width.unwrap_or(0xff), o.privileged_mode as u8, 0, 0]
}

/// A cursor over a saved state; every read past the end is `EINVAL`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Errno> {
        if self.0.len() < n {
            return Err(Errno::EINVAL);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Errno> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, Errno> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Errno::EINVAL),
        }
    }
    fn u32(&mut self) -> Result<u32, Errno> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Errno::EINVAL)?))
    }
    fn u64(&mut self) -> Result<u64, Errno> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Errno::EINVAL)?))
    }
}

/// The ring fields a state carries.
struct RingImage {
    enabled: bool,
    halted: bool,
    halt_code: u8,
    error_seen: bool,
    base: u64,
    size: u32,
    head: u32,
    completed: u64,
    errors: u64,
    resume: Option<(u32, u64)>,
}

impl RingImage {
    /// An enabled ring's geometry as `service` latched it; a disabled one
    /// has none yet (0) but HEAD must still fit a ring it may enable.
    fn consistent(&self) -> bool {
        let geometry = if self.enabled {
            self.size.is_power_of_two()
                && (2..=regs::MAX_RING_SIZE).contains(&self.size)
                && self.base.is_multiple_of(regs::DESC_SIZE)
                && self.head < self.size
        } else {
            self.head < regs::MAX_RING_SIZE
        };
        let resume = self.resume.is_none_or(|(i, done)| i == self.head && done <= regs::MAX_XFER);
        geometry && resume && self.errors <= self.completed
    }
}

impl DeviceMigration for DmaEngine {
    fn stop(&self) {
        let mut slot = lock(&self.worker);
        self.inner.paused.store(true, Ordering::SeqCst);
        Self::stop_worker(&mut slot, &self.inner);
        // A `run_until_idle` caller holding the ring sees `paused` at its
        // next boundary; once we get the lock, nothing runs.
        drop(self.inner.lock_ring());
    }

    fn run(&self) {
        let mut slot = lock(&self.worker);
        if !self.inner.paused.swap(false, Ordering::SeqCst) {
            return;
        }
        if self.options.worker {
            if slot.as_ref().is_none_or(|w| w.handle.is_finished()) {
                Self::stop_worker(&mut slot, &self.inner);
                self.spawn_worker(&mut slot);
            }
            // Pending work (a loaded ring, doorbells while stopped) runs now.
            self.inner.kick();
        }
        drop(slot);
        self.inner.deliver_pending_msix();
    }

    fn saved_size(&self) -> usize {
        STATE_LEN
    }

    fn save(&self) -> Vec<u8> {
        let ring = self.inner.lock_ring();
        let mut out = Vec::with_capacity(STATE_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&options_bytes(self));
        let m = self.inner.regs.mapping();
        for off in (0..BAR_LEN).step_by(8) {
            out.extend_from_slice(&m.load_u64(off).to_le_bytes());
        }
        let mut cfg = vec![0u8; CONFIG_SPACE_SIZE];
        // Cannot fail: the whole of config space.
        let _ = lock(&self.inner.config).read(0, &mut cfg);
        out.extend_from_slice(&cfg);
        out.extend_from_slice(&[ring.enabled as u8, ring.halted as u8, ring.halt_code, ring.error_seen as u8]);
        out.extend_from_slice(&ring.base.to_le_bytes());
        out.extend_from_slice(&ring.size.to_le_bytes());
        out.extend_from_slice(&ring.head.to_le_bytes());
        out.extend_from_slice(&ring.completed.to_le_bytes());
        out.extend_from_slice(&ring.errors.to_le_bytes());
        let (has, index, done) = ring.resume.map_or((0u8, 0, 0), |(i, d)| (1, i, d));
        out.push(has);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&done.to_le_bytes());
        out.push(self.inner.msix_pending.load(Ordering::Acquire) as u8);
        debug_assert_eq!(out.len(), STATE_LEN);
        out
    }

    fn load(&self, state: &[u8]) -> Result<(), Errno> {
        let mut r = Reader(state);
        if r.take(4)? != MAGIC || r.u32()? != VERSION || r.take(4)? != options_bytes(self) {
            return Err(Errno::EINVAL);
        }
        let bar = r.take(BAR_LEN)?;
        let cfg = r.take(CONFIG_SPACE_SIZE)?;
        let image = RingImage {
            enabled: r.bool()?,
            halted: r.bool()?,
            halt_code: r.u8()?,
            error_seen: r.bool()?,
            base: r.u64()?,
            size: r.u32()?,
            head: r.u32()?,
            completed: r.u64()?,
            errors: r.u64()?,
            resume: {
                let (has, index, done) = (r.bool()?, r.u32()?, r.u64()?);
                has.then_some((index, done))
            },
        };
        let pending = r.bool()?;
        if !r.0.is_empty() || !image.consistent() {
            return Err(Errno::EINVAL);
        }
        {
            let mut ring = self.inner.lock_ring();
            let scratch = std::mem::take(&mut ring.scratch);
            **ring = Ring {
                enabled: image.enabled,
                halted: image.halted,
                halt_code: image.halt_code,
                error_seen: image.error_seen,
                base: image.base,
                size: image.size,
                head: image.head,
                completed: image.completed,
                errors: image.errors,
                resume: image.resume,
                scratch,
                ..Ring::default()
            };
            let m = self.inner.regs.mapping();
            for (i, w) in bar.chunks_exact(8).enumerate() {
                m.store_u64(i * 8, u64::from_le_bytes(w.try_into().map_err(|_| Errno::EINVAL)?));
            }
            self.inner.msix_pending.store(pending, Ordering::Release);
            let mut c = lock(&self.inner.config);
            c.restore(cfg)?;
            self.inner.refresh_ctl(&c);
        }
        // MSI-X Enable is VFIO's (the triggers attached here), not the
        // source's.
        self.sync_msix_enable(VFIO_PCI_MSIX_IRQ_INDEX);
        Ok(())
    }
}
