//! The files iommufd creates for events: fault queues and vIOMMU event
//! queues. Both are read with `read(2)`; a fault queue takes the answers
//! with `write(2)`. Poll [`AsFd::as_fd`] for readability before reading
//! (a read of an empty queue returns 0 bytes).

use std::os::fd::{AsFd, BorrowedFd};

use uiommufd_abi as abi;
use zerocopy::{FromBytes, IntoBytes};

use crate::backend::Handle;
use crate::error::Result;
use crate::ids::{FaultId, VeventqId};

/// A fault queue (`IOMMU_FAULT_QUEUE_ALLOC`): I/O page faults of the HWPTs
/// allocated with it, and their responses.
pub struct FaultQueue {
    pub(crate) id: FaultId,
    pub(crate) handle: Handle,
}

impl std::fmt::Debug for FaultQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultQueue").field("id", &self.id).field("fd", &self.handle.number()).finish()
    }
}

impl FaultQueue {
    /// Its object ID (for [`HwptAlloc::fault`](crate::HwptAlloc::fault)).
    pub fn id(&self) -> FaultId {
        self.id
    }

    /// Read pending faults into `out`; returns how many were read (whole
    /// groups only; 0 when none is pending).
    pub fn read(&self, out: &mut [abi::IommuHwptPgfault]) -> Result<usize> {
        let n = self.handle.read(out.as_mut_bytes(), None)?;
        Ok(n / size_of::<abi::IommuHwptPgfault>())
    }

    /// Answer fault groups (by the `cookie` of their last fault); returns
    /// how many responses were taken.
    pub fn respond(&self, responses: &[abi::IommuHwptPageResponse]) -> Result<usize> {
        let n = self.handle.write(responses.as_bytes(), None)?;
        Ok(n / size_of::<abi::IommuHwptPageResponse>())
    }
}

impl AsFd for FaultQueue {
    /// A descriptor that polls readable while faults are pending.
    fn as_fd(&self) -> BorrowedFd<'_> {
        // Both backends have one for a fault queue.
        self.handle.poll_fd().expect("a fault queue has a readiness descriptor")
    }
}

/// A vIOMMU event queue (`IOMMU_VEVENTQ_ALLOC`).
pub struct EventQueue {
    pub(crate) id: VeventqId,
    pub(crate) handle: Handle,
}

impl std::fmt::Debug for EventQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventQueue").field("id", &self.id).field("fd", &self.handle.number()).finish()
    }
}

/// One event of a vIOMMU event queue: its header and its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vevent<T> {
    /// Sequence number and flags (`IOMMU_VEVENTQ_FLAG_LOST_EVENTS`: events
    /// were dropped before this one, and the record is empty).
    pub header: abi::IommufdVeventHeader,
    /// The driver's record (zeroed when the header reports lost events).
    pub record: T,
}

impl EventQueue {
    /// Its object ID.
    pub fn id(&self) -> VeventqId {
        self.id
    }

    /// Read raw events (each a header and a record) into `buf`; returns the
    /// bytes read.
    pub fn read_raw(&self, buf: &mut [u8]) -> Result<usize> {
        self.handle.read(buf, None)
    }

    /// Read up to `max` events whose records are `T`
    /// (`IommuVeventArmSmmuv3`, ...).
    pub fn read<T: FromBytes + IntoBytes + Copy>(&self, max: usize) -> Result<Vec<Vevent<T>>> {
        let hdr = size_of::<abi::IommufdVeventHeader>();
        let rec = size_of::<T>();
        let mut buf = vec![0u8; max * (hdr + rec)];
        let n = self.handle.read(&mut buf, None)?;
        let mut out = Vec::new();
        let mut at = 0;
        while at + hdr <= n {
            let Ok((header, _)) = abi::IommufdVeventHeader::read_from_prefix(&buf[at..]) else { break };
            at += hdr;
            // A lost-events header stands alone.
            if header.flags & abi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
                out.push(Vevent { header, record: T::new_zeroed() });
                continue;
            }
            let Ok((record, _)) = T::read_from_prefix(&buf[at..n]) else { break };
            at += rec;
            out.push(Vevent { header, record });
        }
        Ok(out)
    }
}

impl AsFd for EventQueue {
    /// A descriptor that polls readable while events are pending.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.handle.poll_fd().expect("an event queue has a readiness descriptor")
    }
}
