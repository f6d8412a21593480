//! I/O page fault queues (`fault.c`).
//!
//! A fault object collects page requests of devices attached to HWPTs
//! allocated with its ID (`IOMMU_HWPT_FAULT_ID_VALID`). User space reads
//! them from the fault file descriptor, whole groups at a time, as
//! `struct iommu_hwpt_pgfault` records, and answers each group by writing a
//! `struct iommu_hwpt_page_response` with the group's cookie.
//!
//! Readiness: the object owns an eventfd whose counter is non-zero exactly
//! while groups wait to be read; the file descriptor user space polls is
//! backed by that eventfd, so `poll`/`epoll` work unchanged.
//!
//! Groups still waiting, delivered or not, when their device detaches are
//! answered `INVALID` automatically, as are all groups when the object goes.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use uiommufd_abi as abi;
use uiommufd_memory::sys::ReadyFlag;
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{einval, Error, Result};
use crate::object::{ObjHeader, Object, ObjectId, ObjectKind, ObjectType};
use crate::Errno;

/// One page request (`struct iopf_fault`), before it gets a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub flags: u32,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub addr: u64,
}

/// A group of page requests from one device attachment.
#[derive(Clone, Debug)]
struct Group {
    dev_id: ObjectId,
    /// Which attachment raised it (device token, PASID).
    handle: (u64, u32),
    faults: Vec<PageRequest>,
}

#[derive(Default)]
struct State {
    deliver: VecDeque<Group>,
    /// Delivered, awaiting a response: cookie -> group.
    response: BTreeMap<u32, Group>,
}

/// `struct iommufd_fault`.
pub struct Fault {
    hdr: ObjHeader,
    state: Mutex<State>,
    event: ReadyFlag,
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fault").field("id", &self.hdr.id()).finish()
    }
}

const FAULT_SIZE: usize = core::mem::size_of::<abi::IommuHwptPgfault>();
const RESPONSE_SIZE: usize = core::mem::size_of::<abi::IommuHwptPageResponse>();

impl Fault {
    pub fn new(id: ObjectId) -> Result<Fault> {
        let event = ReadyFlag::new().map_err(|e| Error::new(e, "no eventfd for the fault queue"))?;
        Ok(Fault { hdr: ObjHeader::new(id), state: Mutex::default(), event })
    }

    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    /// The eventfd that is readable while groups wait.
    pub fn readiness_fd(&self) -> RawFd {
        self.event.fd()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the eventfd reflect whether groups wait to be read.
    fn sync_ready(&self, st: &State) {
        self.event.set(!st.deliver.is_empty());
    }

    /// `iommufd_fault_iopf_handler`: queue a group raised by device
    /// `dev_id` through attachment `handle`.
    pub fn report(&self, dev_id: ObjectId, handle: (u64, u32), faults: Vec<PageRequest>) {
        let mut st = self.lock();
        st.deliver.push_back(Group { dev_id, handle, faults });
        self.sync_ready(&st);
    }

    /// `read(2)` of up to `count` bytes (iommufd_fault_fops_read): whole
    /// groups, each record handed to `sink` with its offset in the
    /// caller's buffer. `ESPIPE` for a count that is not a multiple of the
    /// record, `EINVAL` when even the first group does not fit. A group
    /// whose records `sink` cannot write goes back to the head of the
    /// queue, unanswerable (its cookie freed), and ends the read: `EFAULT`
    /// if it was the first, else the bytes of the groups before it. Each
    /// group delivered gets the lowest free cookie from 1, as the kernel's
    /// `XA_FLAGS_ALLOC1` xarray gives.
    pub fn read(
        &self,
        count: usize,
        mut sink: impl FnMut(usize, &[u8]) -> std::result::Result<(), Errno>,
    ) -> Result<usize> {
        if !count.is_multiple_of(FAULT_SIZE) {
            return Err(Error::new(Errno::ESPIPE, "read size is not a multiple of the fault record"));
        }
        let mut st = self.lock();
        let mut done = 0usize;
        let mut rc = Ok(());
        while let Some(group) = st.deliver.pop_front() {
            let need = group.faults.len() * FAULT_SIZE;
            if done >= count || need > count - done {
                st.deliver.push_front(group);
                if done == 0 {
                    rc = Err(einval("the buffer does not fit the first fault group"));
                }
                break;
            }
            let Some(cookie) = lowest_free_cookie(&st.response) else {
                st.deliver.push_front(group);
                rc = Err(Error::new(Errno::EBUSY, "no free cookie"));
                break;
            };
            let mut group_done = done;
            let mut copied = Ok(());
            for f in &group.faults {
                let rec = abi::IommuHwptPgfault {
                    flags: f.flags,
                    dev_id: group.dev_id,
                    pasid: f.pasid,
                    grpid: f.grpid,
                    perm: f.perm,
                    __reserved: 0,
                    addr: f.addr,
                    length: 0,
                    cookie,
                };
                copied = sink(group_done, rec.as_bytes());
                if copied.is_err() {
                    break;
                }
                group_done += FAULT_SIZE;
            }
            if let Err(e) = copied {
                st.deliver.push_front(group);
                rc = Err(Error::new(e, "writing the fault records"));
                break;
            }
            st.response.insert(cookie, group);
            done = group_done;
        }
        self.sync_ready(&st);
        match rc {
            Err(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// `write(2)` of `count` bytes of responses
    /// (iommufd_fault_fops_write), each record read by `source` at its
    /// offset in the caller's buffer. A bad code, an unknown cookie or an
    /// unreadable record stops the batch (its errno if it was the first).
    pub fn write(
        &self,
        count: usize,
        mut source: impl FnMut(usize, &mut [u8]) -> std::result::Result<(), Errno>,
    ) -> Result<usize> {
        if !count.is_multiple_of(RESPONSE_SIZE) {
            return Err(Error::new(Errno::ESPIPE, "write size is not a multiple of the response record"));
        }
        let mut st = self.lock();
        let mut done = 0usize;
        let mut rc = einval("bad response code or unknown cookie");
        while done < count {
            let mut raw = [0u8; RESPONSE_SIZE];
            if let Err(e) = source(done, &mut raw) {
                rc = Error::new(e, "reading the responses");
                break;
            }
            let r = abi::IommuHwptPageResponse::read_from_bytes(&raw).expect("sized");
            if r.code != abi::IOMMUFD_PAGE_RESP_SUCCESS && r.code != abi::IOMMUFD_PAGE_RESP_INVALID {
                break;
            }
            if st.response.remove(&r.cookie).is_none() {
                break;
            }
            done += RESPONSE_SIZE;
        }
        if done == 0 {
            return Err(rc);
        }
        Ok(done)
    }

    /// `iommufd_auto_response_faults`: answer every group of `handle`.
    pub fn auto_respond(&self, handle: (u64, u32)) {
        let mut st = self.lock();
        let before = st.deliver.len();
        st.deliver.retain(|g| g.handle != handle);
        let dropped = before - st.deliver.len();
        st.response.retain(|_, g| g.handle != handle);
        if dropped != 0 {
            self.sync_ready(&st);
        }
    }

    /// Groups waiting to be read, and groups awaiting a response.
    pub fn pending(&self) -> (usize, usize) {
        let st = self.lock();
        (st.deliver.len(), st.response.len())
    }

    /// Every group held, for tools (`uiommufd inspect`): the device that
    /// raised it, its cookie once read (`None`: waiting to be read) and
    /// its page requests; those to be read first, in order.
    pub fn groups(&self) -> Vec<(ObjectId, Option<u32>, Vec<PageRequest>)> {
        let st = self.lock();
        let waiting = st.deliver.iter().map(|g| (g.dev_id, None, g.faults.clone()));
        waiting.chain(st.response.iter().map(|(c, g)| (g.dev_id, Some(*c), g.faults.clone()))).collect()
    }
}

/// The lowest cookie from 1 that no delivered group holds.
fn lowest_free_cookie(response: &BTreeMap<u32, Group>) -> Option<u32> {
    let mut want = 1u32;
    for &k in response.keys() {
        if k != want {
            break;
        }
        want = want.checked_add(1)?;
    }
    Some(want)
}

impl ObjectType for Fault {
    const KIND: ObjectKind = ObjectKind::Fault;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Fault(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Fault(o) => Some(o),
            _ => None,
        }
    }
}

/// `IOMMU_FAULT_QUEUE_ALLOC` (engine half): reserve and build a fault
/// object. The caller gives it a descriptor and publishes it.
pub fn fault_alloc(ctx: &crate::Iommufd, flags: u32) -> Result<(crate::object::Pending<'_>, Arc<Fault>)> {
    if flags != 0 {
        return Err(crate::error::eopnotsupp("FAULT_QUEUE_ALLOC flags must be 0"));
    }
    let pending = ctx.objects().reserve()?;
    let fault = Arc::new(Fault::new(pending.id())?);
    Ok((pending, fault))
}
