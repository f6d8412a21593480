//! Virtual event queues (`eventq.c`, `IOMMUFD_OBJ_VEVENTQ`).
//!
//! A vEVENTQ carries the events of one type that a vIOMMU's driver reports
//! for the guest (for example SMMUv3 event records). A vIOMMU has at most one
//! queue per type. User space reads the queue's file descriptor: every event
//! is a `struct iommufd_vevent_header` followed by the driver's data.
//!
//! Model (after `iommufd_viommu_report_event` and
//! `iommufd_veventq_fops_read`):
//! - every reported event gets the next sequence number, counting from 0 and
//!   wrapping from `i32::MAX` back to 0;
//! - at most `veventq_depth` events wait; a report into a full queue is
//!   lost, and a header-only record with `IOMMU_VEVENTQ_FLAG_LOST_EVENTS`
//!   (one per queue) moves to the tail carrying that report's sequence
//!   number. The next event that fits replaces the marker if it is still
//!   the last record, so the loss then shows only as a gap in the sequence;
//! - `read` hands out whole records, stops at the first one that does not
//!   fit and returns 0 (not an error) when nothing fits or nothing waits;
//!   a record that cannot be copied to user space stays queued.
//!
//! Readiness: as for fault queues, the object owns an eventfd whose counter
//! is non-zero exactly while records wait, and the descriptor user space
//! polls is backed by it. (The kernel reports only `EPOLLIN` for a vEVENTQ;
//! an eventfd is also always writable, so `EPOLLOUT` shows too.)

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use uiommufd_abi as abi;
use uiommufd_memory::sys::ReadyFlag;
use zerocopy::IntoBytes;

use crate::error::{einval, eopnotsupp, Error, Result};
use crate::object::{Borrowed, Dep, ObjHeader, Object, ObjectId, ObjectKind, ObjectType, Pending};
use crate::viommu::Viommu;
use crate::Errno;

const HEADER_SIZE: usize = core::mem::size_of::<abi::IommufdVeventHeader>();

/// One record waiting to be read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Record {
    Event {
        sequence: u32,
        data: Vec<u8>,
    },
    /// The lost-events marker (`veventq->lost_events_header`).
    Lost {
        sequence: u32,
    },
}

impl Record {
    fn len(&self) -> usize {
        match self {
            Record::Event { data, .. } => HEADER_SIZE + data.len(),
            Record::Lost { .. } => HEADER_SIZE,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let (flags, sequence, data): (u32, u32, &[u8]) = match self {
            Record::Event { sequence, data } => (0, *sequence, data),
            Record::Lost { sequence } => (abi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS, *sequence, &[]),
        };
        let mut out = abi::IommufdVeventHeader { flags, sequence }.as_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }
}

#[derive(Default)]
struct State {
    deliver: VecDeque<Record>,
    /// Events (not the marker) waiting.
    num_events: u32,
    /// The sequence number the next report gets.
    sequence: u32,
}

/// `struct iommufd_veventq`.
pub struct Veventq {
    hdr: ObjHeader,
    viommu: Dep<Viommu>,
    veventq_type: u32,
    depth: u32,
    state: Mutex<State>,
    event: ReadyFlag,
}

impl std::fmt::Debug for Veventq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Veventq").field("id", &self.id()).field("type", &self.veventq_type).finish()
    }
}

impl Veventq {
    fn new(id: ObjectId, viommu: &Borrowed<Viommu>, veventq_type: u32, depth: u32) -> Result<Veventq> {
        let event = ReadyFlag::new().map_err(|e| Error::new(e, "no eventfd for the event queue"))?;
        Ok(Veventq {
            hdr: ObjHeader::new(id),
            viommu: Dep::new(viommu),
            veventq_type,
            depth,
            state: Mutex::default(),
            event,
        })
    }

    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn veventq_type(&self) -> u32 {
        self.veventq_type
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The eventfd that is readable while records wait.
    pub fn readiness_fd(&self) -> RawFd {
        self.event.fd()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the eventfd reflect whether records wait.
    fn sync_ready(&self, st: &State) {
        self.event.set(!st.deliver.is_empty());
    }

    /// `iommufd_viommu_report_event` for this queue: queue `data`, or record
    /// the loss when the queue is full.
    pub(crate) fn report(&self, data: &[u8]) {
        let mut st = self.lock();
        let sequence = st.sequence;
        st.sequence = sequence.wrapping_add(1) & i32::MAX as u32;
        // `iommufd_vevent_handler`: a marker still at the tail gives way to
        // whatever comes next (possibly the marker again, renumbered).
        if matches!(st.deliver.back(), Some(Record::Lost { .. })) {
            st.deliver.pop_back();
        }
        if st.num_events == self.depth {
            st.deliver.push_back(Record::Lost { sequence });
        } else {
            st.deliver.push_back(Record::Event { sequence, data: data.to_vec() });
            st.num_events += 1;
        }
        self.sync_ready(&st);
    }

    /// `read(2)` of up to `count` bytes (at least a record header, `EINVAL`
    /// otherwise): whole records, in order, each
    /// handed to `write(offset, bytes)`. A record stays queued if it does
    /// not fit or `write` fails; a failure on the first record is returned
    /// (`EFAULT` for a bad buffer), later ones end the read early. Returns
    /// the bytes produced.
    pub fn read(
        &self,
        count: usize,
        mut write: impl FnMut(usize, &[u8]) -> std::result::Result<(), Errno>,
    ) -> Result<usize> {
        // The smallest read is one record header, queued or not
        // (`iommufd_veventq_fops_read`).
        if count < core::mem::size_of::<abi::IommufdVeventHeader>() {
            return Err(einval("a read must take at least a vEVENT header"));
        }
        let mut st = self.lock();
        let mut done = 0usize;
        let mut failure = None;
        while let Some(rec) = st.deliver.front() {
            // The header must fit; an event must fit whole: a first event
            // that does not is `EINVAL`. The marker is only a header.
            let hdr = core::mem::size_of::<abi::IommufdVeventHeader>();
            if count - done < hdr {
                break;
            }
            if count - done < rec.len() {
                if done == 0 {
                    failure = Some(Errno::EINVAL);
                }
                break;
            }
            if let Err(e) = write(done, &rec.bytes()) {
                failure = Some(e);
                break;
            }
            done += rec.len();
            if let Some(Record::Event { .. }) = st.deliver.pop_front() {
                st.num_events -= 1;
            }
        }
        self.sync_ready(&st);
        match failure {
            Some(e) if done == 0 => Err(Error::new(e, "the first record does not fit or cannot be written")),
            _ => Ok(done),
        }
    }

    /// Make the next report use sequence number `sequence` (tests of the
    /// wrap-around).
    #[cfg(test)]
    pub(crate) fn set_sequence_for_test(&self, sequence: u32) {
        self.lock().sequence = sequence;
    }

    /// The records waiting, for tools (`uiommufd inspect`): each one's
    /// sequence number and data length (`None`: the lost-events marker).
    pub fn records(&self) -> Vec<(u32, Option<usize>)> {
        let st = self.lock();
        st.deliver
            .iter()
            .map(|r| match r {
                Record::Event { sequence, data } => (*sequence, Some(data.len())),
                Record::Lost { sequence } => (*sequence, None),
            })
            .collect()
    }

    /// Records waiting: `(events, whether the lost-events marker is queued)`.
    pub fn pending(&self) -> (u32, bool) {
        let st = self.lock();
        (st.num_events, st.deliver.iter().any(|r| matches!(r, Record::Lost { .. })))
    }
}

impl Drop for Veventq {
    fn drop(&mut self) {
        // `iommufd_veventq_abort`: leave the vIOMMU's list; waiting records
        // go with the queue.
        let me = self as *const Veventq;
        self.viommu.veventqs_write().retain(|(_, w)| w.as_ptr() != me && w.strong_count() != 0);
    }
}

impl ObjectType for Veventq {
    const KIND: ObjectKind = ObjectKind::Veventq;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Veventq(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Veventq(o) => Some(o),
            _ => None,
        }
    }
}

/// The deepest vEVENTQ mainline allows (eventq.c, `VEVENTQ_MAX_DEPTH`: "an
/// arbitrary upper bound that fits all existing HWs").
pub const VEVENTQ_MAX_DEPTH: u32 = 1 << 19;

/// `IOMMU_VEVENTQ_ALLOC` (engine half), checked in the kernel's order:
/// unknown flags, a non-zero reserved field or the default type are
/// `EOPNOTSUPP`, depth 0 or above [`VEVENTQ_MAX_DEPTH`] is `EINVAL`, an unknown vIOMMU `ENOENT`, a second
/// queue of one type `EEXIST`. Any other type is accepted: the driver
/// decides what it reports. The caller gives the queue a descriptor and
/// publishes it.
pub fn veventq_alloc(
    ctx: &crate::Iommufd,
    flags: u32,
    reserved: u32,
    viommu_id: ObjectId,
    veventq_type: u32,
    depth: u32,
) -> Result<(Pending<'_>, Arc<Veventq>)> {
    if flags != 0 || reserved != 0 || veventq_type == abi::IOMMU_VEVENTQ_TYPE_DEFAULT {
        return Err(eopnotsupp("VEVENTQ_ALLOC takes no flags and a non-default type"));
    }
    if depth == 0 || depth > VEVENTQ_MAX_DEPTH {
        return Err(einval("veventq_depth is zero or above VEVENTQ_MAX_DEPTH"));
    }
    let viommu = ctx.get::<Viommu>(viommu_id)?;
    let mut list = viommu.veventqs_write();
    if list.iter().any(|(ty, w)| *ty == veventq_type && w.strong_count() != 0) {
        return Err(crate::error::eexist("the vIOMMU already has a queue of this type"));
    }
    let pending = ctx.objects().reserve()?;
    let queue = Arc::new(Veventq::new(pending.id(), &viommu, veventq_type, depth)?);
    list.push((veventq_type, Arc::downgrade(&queue)));
    drop(list);
    Ok((pending, queue))
}
