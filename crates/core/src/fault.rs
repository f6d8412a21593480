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
    next_cookie: u32,
    /// Responses received, for tests: (cookie, code).
    answered: Vec<(u32, u32)>,
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

    /// `read(2)`: fill `buf` with whole groups; `ESPIPE` for a length that is
    /// not a multiple of the record, `EINVAL` when even the first group does
    /// not fit. Returns the bytes produced.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        if !buf.len().is_multiple_of(FAULT_SIZE) {
            return Err(Error::new(Errno::ESPIPE, "read size is not a multiple of the fault record"));
        }
        let mut st = self.lock();
        let mut done = 0usize;
        while let Some(group) = st.deliver.front() {
            let need = group.faults.len() * FAULT_SIZE;
            if need > buf.len() - done {
                if done == 0 {
                    return Err(einval("the buffer does not fit the first fault group"));
                }
                break;
            }
            let group = st.deliver.pop_front().expect("front exists");
            st.next_cookie = st.next_cookie.wrapping_add(1).max(1);
            let cookie = st.next_cookie;
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
                buf[done..done + FAULT_SIZE].copy_from_slice(rec.as_bytes());
                done += FAULT_SIZE;
            }
            st.response.insert(cookie, group);
        }
        self.sync_ready(&st);
        Ok(done)
    }

    /// `write(2)`: responses, as many as `data` holds. A bad code or an
    /// unknown cookie stops the batch (`EINVAL` if it was the first).
    pub fn write(&self, data: &[u8]) -> Result<usize> {
        if !data.len().is_multiple_of(RESPONSE_SIZE) {
            return Err(Error::new(Errno::ESPIPE, "write size is not a multiple of the response record"));
        }
        let mut st = self.lock();
        let mut done = 0usize;
        while done < data.len() {
            let r = abi::IommuHwptPageResponse::read_from_bytes(&data[done..done + RESPONSE_SIZE]).expect("sized");
            if r.code != abi::IOMMUFD_PAGE_RESP_SUCCESS && r.code != abi::IOMMUFD_PAGE_RESP_INVALID {
                break;
            }
            if st.response.remove(&r.cookie).is_none() {
                break;
            }
            st.answered.push((r.cookie, r.code));
            done += RESPONSE_SIZE;
        }
        if done == 0 {
            return Err(einval("bad response code or unknown cookie"));
        }
        Ok(done)
    }

    /// `iommufd_auto_response_faults`: answer every group of `handle`.
    pub fn auto_respond(&self, handle: (u64, u32)) {
        let mut st = self.lock();
        let before = st.deliver.len();
        st.deliver.retain(|g| g.handle != handle);
        let dropped = before - st.deliver.len();
        let gone: Vec<u32> = st.response.iter().filter(|(_, g)| g.handle == handle).map(|(&c, _)| c).collect();
        for c in gone {
            st.response.remove(&c);
            st.answered.push((c, abi::IOMMUFD_PAGE_RESP_INVALID));
        }
        if dropped != 0 {
            self.sync_ready(&st);
        }
    }

    /// Groups waiting to be read, and groups awaiting a response.
    pub fn pending(&self) -> (usize, usize) {
        let st = self.lock();
        (st.deliver.len(), st.response.len())
    }

    /// Responses received so far as `(cookie, code)`.
    pub fn answered(&self) -> Vec<(u32, u32)> {
        self.lock().answered.clone()
    }
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
