//! The DMA path: a device's request, translated by the domain it is
//! attached to, reaching emulated physical frames.
//!
//! [`DevicePort`] is the [`DmaPort`] of one bound device. Each request
//! (address, length, read or write, and the PCIe attributes in
//! [`DmaAttrs`]) goes to the HWPT attached at its PASID (no PASID: the
//! requester ID's attachment); nothing attached means blocked, and a device
//! that was unbound reaches nothing at all. The domain translates page by
//! page through the model's own walk and IOTLB (`Domain::translate`); the
//! model also sets dirty bits when tracking is on, as hardware does. Bytes
//! move with [`frames`] copies, so a page the program has since unmapped is
//! still the pinned page and never whatever the program mapped there later.
//!
//! Each request runs in a [`dma_fence`] section: frames are released only
//! after requests that may have translated to them have finished, as an
//! IOTLB invalidation waits for requests that used the old entries.
//!
//! A failed translation stops the request at the failing address. When the
//! HWPT has a fault queue (an IOPF-capable domain) the fault becomes a page
//! request there; otherwise only the device sees the error.
//!
//! Coherency: a write carrying No Snoop into a domain that does not force
//! snooping is *non-coherent*: on real hardware the CPU caches may still
//! hold old data until cache maintenance. Such writes are counted, and in
//! strict mode ([`uiommufd_memory::coherency`]) the program pages they hit
//! are watched until [`flush_caches`] so a premature read is reported.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use uiommufd_abi as abi;
use uiommufd_hw::dma::{DmaAttrs, DmaError, DmaFaultReason, DmaPort};
use uiommufd_hw::{Access, Domain, Fault as XlateFault};
use uiommufd_memory::{coherency, dma_fence, frames};

use crate::device::{Device, NO_PASID};
use crate::fault::PageRequest;

/// Counters of one port, for tools and tests.
#[derive(Debug, Default)]
pub struct DmaStats {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub faults: AtomicU64,
    /// Bytes written with No Snoop into a domain that does not force
    /// snooping.
    pub noncoherent_bytes: AtomicU64,
}

/// The DMA port of a bound device (see the module documentation).
pub struct DevicePort {
    dev: Weak<Device>,
    next_grpid: AtomicU32,
    stats: DmaStats,
}

impl DevicePort {
    pub fn new(dev: &Arc<Device>) -> Arc<DevicePort> {
        Arc::new(DevicePort { dev: Arc::downgrade(dev), next_grpid: AtomicU32::new(1), stats: DmaStats::default() })
    }

    pub fn stats(&self) -> &DmaStats {
        &self.stats
    }

    /// The domain serving `attrs`, and whether its HWPT has a fault queue.
    fn target(&self, iova: u64, write: bool, attrs: &DmaAttrs) -> Result<(Arc<Device>, Arc<dyn Domain>), DmaError> {
        let blocked = DmaError { iova, write, reason: DmaFaultReason::Blocked, reported: false };
        let dev = self.dev.upgrade().ok_or(blocked)?;
        let domain = dev.dma_domain(attrs.pasid.unwrap_or(NO_PASID)).ok_or(blocked)?;
        Ok((dev, domain))
    }

    /// A translation failure at `iova`: counted, and reported to the fault
    /// queue of the HWPT when it has one.
    fn fault(&self, dev: &Device, iova: u64, write: bool, attrs: &DmaAttrs, f: XlateFault) -> DmaError {
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        let reason = match f {
            XlateFault::NotPresent => DmaFaultReason::NotPresent,
            XlateFault::Permission => DmaFaultReason::Permission,
            XlateFault::OutOfRange => DmaFaultReason::OutOfRange,
        };
        let mut flags = abi::IOMMU_PGFAULT_FLAGS_LAST_PAGE;
        if attrs.pasid.is_some() {
            flags |= abi::IOMMU_PGFAULT_FLAGS_PASID_VALID;
        }
        let mut perm = if write { abi::IOMMU_PGFAULT_PERM_WRITE } else { abi::IOMMU_PGFAULT_PERM_READ };
        if attrs.privileged {
            perm |= abi::IOMMU_PGFAULT_PERM_PRIV;
        }
        let req = PageRequest {
            flags,
            pasid: attrs.pasid.unwrap_or(0),
            grpid: self.next_grpid.fetch_add(1, Ordering::Relaxed) & 0x1ff,
            perm,
            addr: iova & !(uiommufd_memory::page_size() as u64 - 1),
        };
        let reported = dev.report_fault(req, false);
        DmaError { iova, write, reason, reported }
    }

    /// Walk `[iova, iova + len)` translation by translation, handing each
    /// physically contiguous piece `(paddr, offset, n)` to `each`.
    fn walk(
        &self,
        iova: u64,
        len: u64,
        write: bool,
        attrs: &DmaAttrs,
        mut each: impl FnMut(u64, u64, u64) -> Result<(), uiommufd_abi::Errno>,
    ) -> Result<(), DmaError> {
        if len == 0 {
            return Ok(());
        }
        let (dev, domain) = self.target(iova, write, attrs)?;
        // Frames translated here stay allocated until the section ends.
        let _inflight = dma_fence::enter();
        let access = if write { Access::Write } else { Access::Read };
        let noncoherent = write && attrs.no_snoop && !domain.enforce_cache_coherency();
        let mut done = 0u64;
        while done < len {
            let at = iova.wrapping_add(done);
            if at < iova {
                // The request wrapped past the top of the address space.
                return Err(self.fault(&dev, at, write, attrs, XlateFault::OutOfRange));
            }
            let t = domain.translate(at, access).map_err(|f| self.fault(&dev, at, write, attrs, f))?;
            let n = (len - done).min(t.len.max(1));
            each(t.paddr, done, n).map_err(|_| {
                self.stats.faults.fetch_add(1, Ordering::Relaxed);
                DmaError { iova: at, write, reason: DmaFaultReason::Memory, reported: false }
            })?;
            if noncoherent {
                self.noncoherent(t.paddr, n);
            }
            done += n;
        }
        Ok(())
    }

    fn noncoherent(&self, paddr: u64, n: u64) {
        self.stats.noncoherent_bytes.fetch_add(n, Ordering::Relaxed);
        if !coherency::strict() {
            return;
        }
        let ps = uiommufd_memory::page_size() as u64;
        let mut pa = paddr & !(ps - 1);
        while pa < paddr + n {
            if let Some(page) = frames::program_page(pa) {
                coherency::watch(page, page_prot(page));
            }
            pa += ps;
        }
    }
}

/// The protection of the program page at `page` (for strict mode, which
/// restores it after a watch).
fn page_prot(page: u64) -> i32 {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let Ok(maps) = uiommufd_memory::vma::current() else { return rw };
    maps.iter().find(|v| v.start <= page && page < v.end).map_or(rw, |v| v.prot())
}

impl DmaPort for DevicePort {
    fn dma_read(&self, iova: u64, buf: &mut [u8], attrs: DmaAttrs) -> Result<(), DmaError> {
        let r = self.walk(iova, buf.len() as u64, false, &attrs, |pa, off, n| {
            frames::read_phys(pa, &mut buf[off as usize..(off + n) as usize])
        });
        if r.is_ok() {
            self.stats.bytes_read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        r
    }

    fn dma_write(&self, iova: u64, data: &[u8], attrs: DmaAttrs) -> Result<(), DmaError> {
        let r = self.walk(iova, data.len() as u64, true, &attrs, |pa, off, n| {
            frames::write_phys(pa, &data[off as usize..(off + n) as usize])
        });
        if r.is_ok() {
            self.stats.bytes_written.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        r
    }

    /// Frame to frame, no bounce buffer: each step copies the largest piece
    /// contiguous on both sides.
    fn dma_copy(&self, dst: u64, src: u64, len: u64, attrs: DmaAttrs) -> Result<(), DmaError> {
        if len == 0 {
            return Ok(());
        }
        let (dev, sdom) = self.target(src, false, &attrs)?;
        let (_, ddom) = self.target(dst, true, &attrs)?;
        let _inflight = dma_fence::enter();
        let noncoherent = attrs.no_snoop && !ddom.enforce_cache_coherency();
        let mut done = 0u64;
        while done < len {
            let (s, d) = (src.wrapping_add(done), dst.wrapping_add(done));
            if s < src {
                return Err(self.fault(&dev, s, false, &attrs, XlateFault::OutOfRange));
            }
            if d < dst {
                return Err(self.fault(&dev, d, true, &attrs, XlateFault::OutOfRange));
            }
            let ts = sdom.translate(s, Access::Read).map_err(|f| self.fault(&dev, s, false, &attrs, f))?;
            let td = ddom.translate(d, Access::Write).map_err(|f| self.fault(&dev, d, true, &attrs, f))?;
            let n = (len - done).min(ts.len.max(1)).min(td.len.max(1));
            frames::copy_phys(td.paddr, ts.paddr, n as usize).map_err(|_| {
                self.stats.faults.fetch_add(1, Ordering::Relaxed);
                DmaError { iova: d, write: true, reason: DmaFaultReason::Memory, reported: false }
            })?;
            if noncoherent {
                self.noncoherent(td.paddr, n);
            }
            done += n;
        }
        self.stats.bytes_read.fetch_add(len, Ordering::Relaxed);
        self.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

/// The cache maintenance operation of the coherency contract (a guest's
/// `wbinvd`, as a VMM performs it on the guest's behalf): after it the
/// program may read whatever non-coherent DMA wrote. A no-op unless strict
/// mode watches pages.
pub fn flush_caches() {
    coherency::flush_caches();
}
