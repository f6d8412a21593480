//! DMA transactions as a device issues them, and the port they go through.
//!
//! An emulated device never touches memory itself: it hands each read or
//! write, with the attributes a PCIe request carries (PASID prefix, No Snoop
//! attribute, privileged mode), to a [`DmaPort`]. The engine
//! (`uiommufd-core`) implements the port for a bound device: it finds the
//! HWPT attached at the request's PASID, translates through the domain (the
//! model's IOTLB and walk), and reaches the emulated physical frames. A
//! device that is not bound, or bound but not attached, is blocked: every
//! request fails with [`DmaFaultReason::Blocked`] and touches nothing.

use core::fmt;

/// The attributes of one DMA request (PCIe TLP prefix and attribute bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaAttrs {
    /// The PASID TLP prefix; `None` is a request without PASID (the
    /// requester ID's own address space).
    pub pasid: Option<u32>,
    /// The No Snoop attribute (PCIe Base spec, "Attributes" field): the
    /// write may bypass CPU cache snooping unless the IOMMU forces snoop.
    /// A device sets it only while No Snoop is enabled in its Device
    /// Control register.
    pub no_snoop: bool,
    /// Privileged-mode request (the PASID prefix's PMR bit).
    pub privileged: bool,
}

/// Why a DMA request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaFaultReason {
    /// The device (or this PASID of it) is attached to nothing.
    Blocked,
    /// No translation for the address.
    NotPresent,
    /// A translation without the needed read or write permission.
    Permission,
    /// The address is outside what the domain translates.
    OutOfRange,
    /// The translation pointed at memory that is gone (a frame released
    /// under an in-flight request, or a mapping the program pulled away
    /// behind the shim's back).
    Memory,
}

/// A failed DMA request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaError {
    /// The first address that failed.
    pub iova: u64,
    pub write: bool,
    pub reason: DmaFaultReason,
    /// The fault went into the HWPT's fault queue (an IOPF-capable
    /// domain): user space will see it as a page request.
    pub reported: bool,
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.write { "write" } else { "read" };
        write!(f, "DMA {what} at IOVA {:#x} failed: {:?}", self.iova, self.reason)?;
        if self.reported {
            write!(f, " (reported to the fault queue)")?;
        }
        Ok(())
    }
}

impl std::error::Error for DmaError {}

/// Where a device's DMA goes.
///
/// Implementations translate and copy page by page; a request that fails
/// part way has transferred the bytes before [`DmaError::iova`] (as real
/// hardware would have, in order).
pub trait DmaPort: Send + Sync {
    /// Read `buf.len()` bytes at `iova` into `buf`.
    fn dma_read(&self, iova: u64, buf: &mut [u8], attrs: DmaAttrs) -> Result<(), DmaError>;
    /// Write `data` at `iova`.
    fn dma_write(&self, iova: u64, data: &[u8], attrs: DmaAttrs) -> Result<(), DmaError>;

    /// Write `first`, then `second` (each `(iova, bytes)`), with `attrs`:
    /// two requests in that order (a completion record written field by
    /// field, the later field the one a driver polls); the second is not
    /// issued when the first fails. The default makes two `dma_write`
    /// calls; a port may serve both at once, keeping the order.
    fn dma_write_then(&self, first: (u64, &[u8]), second: (u64, &[u8]), attrs: DmaAttrs) -> Result<(), DmaError> {
        self.dma_write(first.0, first.1, attrs)?;
        self.dma_write(second.0, second.1, attrs)
    }

    /// Copy `len` bytes from `src` to `dst` (a DMA engine's memory-to-memory
    /// copy: reads then writes, both with `attrs`). The default bounces
    /// through a buffer; a port that can reach both ends directly copies
    /// without one.
    fn dma_copy(&self, dst: u64, src: u64, len: u64, attrs: DmaAttrs) -> Result<(), DmaError> {
        let mut buf = vec![0u8; len.min(64 * 1024) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.dma_read(src.wrapping_add(done), &mut buf[..n], attrs)?;
            self.dma_write(dst.wrapping_add(done), &buf[..n], attrs)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A port that reaches nothing: a device nobody has bound.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockedPort;

impl DmaPort for BlockedPort {
    fn dma_read(&self, iova: u64, _buf: &mut [u8], _attrs: DmaAttrs) -> Result<(), DmaError> {
        Err(DmaError { iova, write: false, reason: DmaFaultReason::Blocked, reported: false })
    }
    fn dma_write(&self, iova: u64, _data: &[u8], _attrs: DmaAttrs) -> Result<(), DmaError> {
        Err(DmaError { iova, write: true, reason: DmaFaultReason::Blocked, reported: false })
    }
}
