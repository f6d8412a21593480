//! Randomized concurrency stress of HWPTs, nesting, PASIDs and dirty
//! tracking, on top of the map/unmap/copy/access traffic of `stress.rs`.
//!
//! 8 threads share two IOASes and, through small shared pools, explicit
//! paging HWPTs (any mix of `NEST_PARENT`, `DIRTY_TRACKING` and `PASID`),
//! nested HWPTs on them (the mock's `IOMMU_HWPT_DATA_SELFTEST`) and mock
//! devices (with and without PASID support or dirty tracking). They:
//!
//! - map, unmap and copy on both IOASes and read through accesses;
//! - allocate and destroy paging and nested HWPTs (`EBUSY` while in use),
//!   and invalidate nested ones (checking the mock IOTLB afterwards);
//! - create and destroy mock devices, replace, detach and re-attach their
//!   requester ID, attach, replace and detach PASIDs, to IOASes, paging and
//!   nested HWPTs, obeying or deliberately breaking the PASID rules;
//! - switch dirty tracking, mark pages dirty and read dirty bitmaps.
//!
//! Sharing rules of the test itself (not of the engine): an ID is destroyed
//! only by the thread that took it out of its pool, so no thread destroys a
//! recycled ID; IDs read from a pool without taking them may be stale, and
//! then name another object or nothing, which the engine must take in its
//! stride. A device is taken out of its pool for every attachment change, so
//! the pool records exactly what each device is attached to.
//!
//! After every round the leader, with all threads parked, checks:
//!
//! - the object table: exactly the IOASes, devices and HWPTs the pools
//!   hold plus automatic domains that are in use, no access left, no
//!   reserved ID without an object (tombstone or lost reservation), the
//!   live count matching; every object's dependency count is exactly its
//!   edges (attachments, nested children, HWPTs of an IOAS, the binder);
//! - each device's attachments equal the pool's record, and obey the PASID
//!   rules (a PASID only on a PASID-capable HWPT; while one is attached the
//!   requester ID only on such a HWPT);
//! - each IOAS's HWPT list, its io_pagetable's domains and the paging HWPTs
//!   on it in the table are the same set; every domain maps exactly the
//!   IOAS's areas to the right frames, as in `stress.rs`; the mock domains
//!   saw no malformed map/unmap;
//! - every `Pages` pins exactly the pages its domain-filled areas cover and
//!   the frame table's pin total is their sum;
//! - dirty tracking round-trips: on a tracking HWPT, marking an area dirty
//!   then harvesting reports every page once and clears it; a HWPT not
//!   tracking refuses both.
//!
//! At the end everything is destroyed and no object, pin, frame or charge
//! remains. Runs in its own process because it checks global frame counts.
//! A watchdog aborts with the operation each thread is in if the run stops
//! making progress (a deadlock would otherwise hang the suite).
//!
//! This test found engine races, now fixed: automatic domain selection
//! dropped HWPTs under the IOAS list lock (a self-deadlock) and could pick a
//! reused ID; a device object outlived its unbind while a short-term borrow
//! of it was held; marking dirty racing an unmap left dirty bits in emptied
//! slots.
//!
//! The one tolerance left is kernel behaviour: automatic domains left
//! without users by a racing lookup (see [`check_objects`]);
//! `UIOMMUFD_STRESS_STRICT=orphan-auto` fails on them instead (see
//! [`strict`]). `UIOMMUFD_STRESS_SEED` and `UIOMMUFD_STRESS_ROUNDS` vary the
//! run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uiommufd_abi::test_cmd::{
    self as t, MOCK_APERTURE_START, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES, MOCK_FLAGS_DEVICE_HUGE_IOVA,
    MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_PASID,
};
use uiommufd_abi::{self as abi, Errno};
use uiommufd_core::device::NO_PASID;
use uiommufd_core::hwpt::{self, HwptAllocArgs, HwptNested, HwptPaging};
use uiommufd_core::invariants::{check_mappings, MappingsCheck};
use uiommufd_core::io_pagetable::DirtyBitmap;
use uiommufd_core::object::ObjectType;
use uiommufd_core::pages::page_size;
use uiommufd_core::selftest::{self, SelftestDevice};
use uiommufd_core::{Iommufd, ObjectId, ObjectKind};
use uiommufd_hw::mock::{MockDomain, MOCK_IO_PAGE_SIZE};
use uiommufd_hw::{UserData, UserDataArray};
use uiommufd_memory::frames;

const THREADS: usize = 8;
/// Rounds (`UIOMMUFD_STRESS_ROUNDS` overrides, for soak runs).
const ROUNDS: usize = 1500;
const OPS_PER_ROUND: usize = 40;
/// IOVA slots per IOAS; each slot holds at most one mapping.
const SLOTS: u64 = 32;
const SLOT_SIZE: u64 = 64 * 1024;
const BUF_PAGES: u64 = 64;
const RW: u32 = 1 | 2 | 4; // FIXED_IOVA | WRITEABLE | READABLE
/// The PASIDs the threads use besides the requester ID;
/// `IOMMU_TEST_PASID_RESERVED` makes every other attach of it fail.
const PASIDS: [u32; 3] = [1, 2, t::IOMMU_TEST_PASID_RESERVED];
/// Pool caps: at a cap, an allocation turns into a destroy.
const MAX_DEVICES: usize = 12;
const MAX_PAGING: usize = 12;
const MAX_NESTED: usize = 10;
/// IDs the checker scans; the pools' caps keep every ID far below it.
const ID_SCAN: ObjectId = 256;
/// A round that does not finish in this long is a deadlock.
const WATCHDOG: Duration = Duration::from_secs(60);

/// xorshift64*: small, seedable, good enough to shuffle operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.below(v.len() as u64) as usize])
    }
}

fn slot_iova(slot: u64) -> u64 {
    MOCK_APERTURE_START + slot * SLOT_SIZE
}

/// The operations, with their weights (out of 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Map,
    Unmap,
    Copy,
    AccessPin,
    AccessRw,
    HwptAlloc,
    HwptDestroy,
    NestedAlloc,
    NestedInvalidate,
    NestedDestroy,
    DeviceCreate,
    DeviceDestroy,
    RidReplace,
    RidDetachAttach,
    PasidAttach,
    PasidReplace,
    PasidDetach,
    DirtyTracking,
    MarkDirty,
    DirtyBitmap,
}

const OPS: [(Op, u64); 20] = [
    (Op::Map, 14),
    (Op::Unmap, 8),
    (Op::Copy, 5),
    (Op::AccessPin, 3),
    (Op::AccessRw, 3),
    (Op::HwptAlloc, 6),
    (Op::HwptDestroy, 5),
    (Op::NestedAlloc, 5),
    (Op::NestedInvalidate, 3),
    (Op::NestedDestroy, 4),
    (Op::DeviceCreate, 4),
    (Op::DeviceDestroy, 3),
    (Op::RidReplace, 7),
    (Op::RidDetachAttach, 2),
    (Op::PasidAttach, 7),
    (Op::PasidReplace, 5),
    (Op::PasidDetach, 4),
    (Op::DirtyTracking, 4),
    (Op::MarkDirty, 4),
    (Op::DirtyBitmap, 4),
];

/// What each thread is doing, for the watchdog.
static CURRENT: [AtomicUsize; THREADS] = [const { AtomicUsize::new(usize::MAX) }; THREADS];
static ROUND: AtomicUsize = AtomicUsize::new(0);

/// An explicit paging HWPT of the pool.
#[derive(Clone, Copy, Debug)]
struct PagingRec {
    id: ObjectId,
    ioas: ObjectId,
    flags: u32,
}

/// A nested HWPT of the pool.
#[derive(Clone, Copy, Debug)]
struct NestedRec {
    id: ObjectId,
    parent: ObjectId,
    pasid: bool,
}

/// A published mock device of the pool and what it is attached to.
#[derive(Clone, Debug)]
struct DevRec {
    stdev_id: ObjectId,
    idev_id: ObjectId,
    flags: u32,
    /// PASID (0: the requester ID) -> HWPT ID.
    attached: BTreeMap<u32, ObjectId>,
}

#[derive(Default)]
struct Pools {
    paging: Vec<PagingRec>,
    nested: Vec<NestedRec>,
    devices: Vec<DevRec>,
}

struct World {
    ctx: Arc<Iommufd>,
    ctx_static: &'static Arc<Iommufd>,
    ioas: [ObjectId; 2],
    buf: u64,
    pools: Mutex<Pools>,
    /// Set by the first failure: the others stop operating and checking, so
    /// the first report is not buried under its consequences.
    failed: AtomicBool,
}

impl World {
    fn pools(&self) -> MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Successes per operation, failures per operation and errno, and a few
/// outcomes worth reporting.
#[derive(Default)]
struct Stats {
    ok: BTreeMap<Op, u64>,
    err: BTreeMap<(Op, i32), u64>,
    /// The engine's reason for the first failure of each kind.
    why: BTreeMap<(Op, i32), &'static str>,
    /// Destroys refused with `EBUSY` (the HWPT was attached or a parent).
    busy_destroys: u64,
    /// Attachment changes refused by the PASID rules (deliberate).
    pasid_rule_refusals: u64,
    /// Mock IOTLB entries seen cleared after an invalidation.
    iotlb_checked: u64,
    /// Pages `IOMMU_TEST_OP_DIRTY` found mapped and marked.
    pages_marked: u64,
    /// Leader dirty round-trips (mark, harvest, harvest again).
    dirty_roundtrips: u64,
    /// Automatic domains found without users and destroyed by the checker.
    orphan_autos: u64,
}

impl Stats {
    fn ok(&mut self, op: Op) {
        *self.ok.entry(op).or_default() += 1;
    }

    /// Record a failure; an errno no path of `op` can produce is a bug.
    fn err(&mut self, op: Op, e: uiommufd_core::Error) {
        assert!(allowed(op, e.errno), "{op:?} failed with an unexpected {e:?}");
        *self.err.entry((op, e.errno.0)).or_default() += 1;
        self.why.entry((op, e.errno.0)).or_insert(e.context);
    }

    fn note<T>(&mut self, op: Op, r: &uiommufd_core::Result<T>) {
        match r {
            Ok(_) => self.ok(op),
            Err(e) => self.err(op, *e),
        }
    }

    fn merge(&mut self, o: &Stats) {
        for (k, v) in &o.ok {
            *self.ok.entry(*k).or_default() += v;
        }
        for (k, v) in &o.err {
            *self.err.entry(*k).or_default() += v;
        }
        for (k, v) in &o.why {
            self.why.entry(*k).or_insert(v);
        }
        self.busy_destroys += o.busy_destroys;
        self.pasid_rule_refusals += o.pasid_rule_refusals;
        self.iotlb_checked += o.iotlb_checked;
        self.pages_marked += o.pages_marked;
        self.dirty_roundtrips += o.dirty_roundtrips;
        self.orphan_autos += o.orphan_autos;
    }
}

/// The errnos each operation may legitimately fail with here. Anything
/// else (`EDEADLK`, `EFAULT`, `EIO`, ...) is an engine bug.
fn allowed(op: Op, e: Errno) -> bool {
    let ok: &[Errno] = match op {
        // Occupied slot, nothing to copy, or a range being (un)mapped.
        Op::Map | Op::Copy => &[Errno::EEXIST, Errno::ENOENT, Errno::EBUSY, Errno::EINVAL],
        Op::Unmap => &[Errno::ENOENT, Errno::EBUSY],
        Op::AccessPin | Op::AccessRw => &[Errno::ENOENT, Errno::EBUSY, Errno::EINVAL],
        // Stale IDs, a device without dirty tracking, a non-parent, bad data.
        Op::HwptAlloc | Op::NestedAlloc => &[Errno::ENOENT, Errno::EINVAL, Errno::EOPNOTSUPP],
        Op::HwptDestroy | Op::NestedDestroy => &[Errno::EBUSY],
        Op::NestedInvalidate => &[Errno::EINVAL, Errno::EOPNOTSUPP],
        Op::DeviceCreate => &[Errno::ENOENT, Errno::EINVAL],
        Op::DeviceDestroy => &[],
        // EBUSY: the PASID is attached; ENOMEM: IOMMU_TEST_PASID_RESERVED's
        // armed failure.
        Op::RidReplace | Op::RidDetachAttach | Op::PasidAttach | Op::PasidReplace => {
            &[Errno::ENOENT, Errno::EINVAL, Errno::EBUSY, Errno::ENOMEM]
        }
        Op::PasidDetach => &[],
        Op::DirtyTracking => &[Errno::ENOENT, Errno::EOPNOTSUPP],
        Op::MarkDirty | Op::DirtyBitmap => &[Errno::ENOENT, Errno::EINVAL, Errno::EOPNOTSUPP],
    };
    ok.contains(&e)
}

/// Whether HWPT `id` may carry PASIDs (`None`: no HWPT with that ID).
fn pasid_compat(ctx: &Iommufd, id: ObjectId) -> Option<bool> {
    match ctx.objects().kind_of(id)? {
        ObjectKind::HwptPaging => ctx.get::<HwptPaging>(id).ok().map(|h| h.pasid_compat()),
        ObjectKind::HwptNested => ctx.get::<HwptNested>(id).ok().map(|h| h.pasid_compat()),
        _ => None,
    }
}

/// The attachments of a device as the engine has them.
fn attachments(ctx: &Iommufd, stdev_id: ObjectId) -> BTreeMap<u32, ObjectId> {
    let st = ctx.get::<SelftestDevice>(stdev_id).expect("a pooled mock device is alive");
    let dev = st.device().expect("a pooled mock device is bound");
    [NO_PASID].iter().chain(&PASIDS).filter_map(|&p| dev.attached(p).map(|h| (p, h))).collect()
}

/// The PASID rules over one device's attachments.
fn check_pasid_rules(ctx: &Iommufd, d: &DevRec, att: &BTreeMap<u32, ObjectId>) {
    let compat = |h: ObjectId| pasid_compat(ctx, h).unwrap_or_else(|| panic!("attached to {h}, which is no HWPT"));
    let any_pasid = att.keys().any(|&p| p != NO_PASID);
    if any_pasid {
        assert!(d.flags & MOCK_FLAGS_DEVICE_PASID != 0, "a PASID is attached on a device without PASIDs: {d:?}");
        if let Some(&rid) = att.get(&NO_PASID) {
            assert!(compat(rid), "RID on non-PASID-capable HWPT {rid} while PASIDs are attached: {att:?}");
        }
    }
    for (&p, &h) in att {
        if p != NO_PASID {
            assert!(compat(h), "PASID {p} attached to non-PASID-capable HWPT {h}");
        }
    }
}

/// After a successful attachment change on a device held exclusively: the
/// engine agrees with the record, the PASID rules hold, and an IOAS target
/// got an automatic domain of that IOAS.
fn check_device(w: &World, d: &DevRec, pasid: u32, target: ObjectId) {
    let att = attachments(&w.ctx, d.stdev_id);
    assert_eq!(att, d.attached, "device {} attachments differ from what its operations did", d.stdev_id);
    check_pasid_rules(&w.ctx, d, &att);
    if w.ioas.contains(&target) {
        let h = *att.get(&pasid).expect("just attached");
        // Attached: nobody can destroy it or recycle its ID meanwhile.
        let hw = w.ctx.get::<HwptPaging>(h).expect("an IOAS attachment uses a paging HWPT");
        assert!(hw.is_auto(), "attaching to IOAS {target} gave the explicit HWPT {h}");
        assert_eq!(hw.ioas().id(), target, "attaching to IOAS {target} gave a domain of another IOAS");
    }
}

/// An attachment target: an IOAS, a pooled paging or nested HWPT (maybe
/// stale), or rarely no object at all; `compat_pct` percent of the time a
/// PASID-capable HWPT (the others often break the PASID rules on purpose).
fn pick_pt(w: &World, rng: &mut Rng, compat_pct: u64) -> ObjectId {
    let ioas = w.ioas[rng.below(2) as usize];
    let p = w.pools();
    let paging: Vec<ObjectId> = p.paging.iter().map(|h| h.id).collect();
    let nested: Vec<ObjectId> = p.nested.iter().map(|h| h.id).collect();
    let compat: Vec<ObjectId> = p
        .paging
        .iter()
        .filter(|h| h.flags & abi::IOMMU_HWPT_ALLOC_PASID != 0)
        .map(|h| h.id)
        .chain(p.nested.iter().filter(|h| h.pasid).map(|h| h.id))
        .collect();
    drop(p);
    if rng.below(100) < compat_pct {
        if let Some(id) = rng.pick(&compat) {
            return id;
        }
    }
    match rng.below(40) {
        0 => 0,
        1..=11 => ioas,
        12..=29 => rng.pick(&paging).unwrap_or(ioas),
        _ => rng.pick(&nested).unwrap_or(ioas),
    }
}

fn take_device(w: &World, rng: &mut Rng) -> Option<DevRec> {
    let mut p = w.pools();
    if p.devices.is_empty() {
        return None;
    }
    let i = rng.below(p.devices.len() as u64) as usize;
    Some(p.devices.swap_remove(i))
}

fn put_device(w: &World, d: DevRec) {
    w.pools().devices.push(d);
}

/// Any pooled device's ID, without taking it (maybe stale by use time).
fn any_idev(w: &World, rng: &mut Rng) -> Option<ObjectId> {
    let ids: Vec<ObjectId> = w.pools().devices.iter().map(|d| d.idev_id).collect();
    rng.pick(&ids)
}

/// `IOMMU_HWPT_ALLOC` with optional driver data, published at once.
fn alloc_hwpt(
    ctx: &Iommufd,
    dev: ObjectId,
    pt: ObjectId,
    flags: u32,
    data: Option<(u32, Vec<u8>)>,
) -> uiommufd_core::Result<ObjectId> {
    let (data_type, bytes) = data.unwrap_or((abi::IOMMU_HWPT_DATA_NONE, Vec::new()));
    let len = bytes.len() as u32;
    let mut reader = move |buf: &mut [u8]| {
        buf.fill(0);
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    };
    let args = HwptAllocArgs {
        flags,
        dev_id: dev,
        pt_id: pt,
        fault_id: 0,
        data: UserData { data_type, len, reader: &mut reader },
    };
    let mut holder = None;
    let pending = hwpt::hwpt_alloc(ctx, &mut holder, args)?;
    let id = pending.id();
    pending.publish();
    Ok(id)
}

fn op_hwpt_alloc(w: &World, rng: &mut Rng, st: &mut Stats) {
    if w.pools().paging.len() >= MAX_PAGING {
        return op_hwpt_destroy(w, rng, st);
    }
    let Some(dev) = any_idev(w, rng) else { return };
    let ioas = w.ioas[rng.below(2) as usize];
    let bits = rng.below(8) as u32;
    let mut flags = 0;
    if bits & 1 != 0 {
        flags |= abi::IOMMU_HWPT_ALLOC_NEST_PARENT;
    }
    if bits & 2 != 0 {
        flags |= abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
    }
    if bits & 4 != 0 {
        flags |= abi::IOMMU_HWPT_ALLOC_PASID;
    }
    let r = alloc_hwpt(&w.ctx, dev, ioas, flags, None);
    st.note(Op::HwptAlloc, &r);
    if let Ok(id) = r {
        w.pools().paging.push(PagingRec { id, ioas, flags });
    }
}

fn op_hwpt_destroy(w: &World, rng: &mut Rng, st: &mut Stats) {
    let rec = {
        let mut p = w.pools();
        if p.paging.is_empty() {
            return;
        }
        let i = rng.below(p.paging.len() as u64) as usize;
        p.paging.swap_remove(i)
    };
    let r = w.ctx.destroy(rec.id);
    st.note(Op::HwptDestroy, &r);
    if r.is_err() {
        st.busy_destroys += 1;
        w.pools().paging.push(rec);
    }
}

fn nested_data(rng: &mut Rng) -> (u32, Vec<u8>) {
    let mut bytes = t::IOMMU_TEST_IOTLB_DEFAULT.to_le_bytes().to_vec();
    if rng.below(2) == 0 {
        bytes.extend_from_slice(&0u32.to_le_bytes()); // pagetable_type
    }
    // Now and then a type the mock does not know.
    let ty = if rng.below(20) == 0 { 0xbeef } else { t::IOMMU_HWPT_DATA_SELFTEST };
    (ty, bytes)
}

fn op_nested_alloc(w: &World, rng: &mut Rng, st: &mut Stats) {
    if w.pools().nested.len() >= MAX_NESTED {
        return op_nested_destroy(w, rng, st);
    }
    let Some(dev) = any_idev(w, rng) else { return };
    let (parents, any): (Vec<ObjectId>, Vec<ObjectId>) = {
        let p = w.pools();
        let parents = p.paging.iter().filter(|h| h.flags & abi::IOMMU_HWPT_ALLOC_NEST_PARENT != 0).map(|h| h.id);
        (parents.collect(), p.paging.iter().map(|h| h.id).collect())
    };
    // Mostly a nesting parent; sometimes any paging HWPT (not a parent:
    // refused).
    let parent = if rng.below(10) == 0 { rng.pick(&any) } else { rng.pick(&parents) };
    let Some(parent) = parent else { return };
    let flags = if rng.below(2) == 0 { abi::IOMMU_HWPT_ALLOC_PASID } else { 0 };
    let r = alloc_hwpt(&w.ctx, dev, parent, flags, Some(nested_data(rng)));
    st.note(Op::NestedAlloc, &r);
    if let Ok(id) = r {
        // Not pooled yet: nobody destroys it, its ID cannot be recycled. The
        // parent is read back, the pooled one may have been stale.
        let h = w.ctx.get::<HwptNested>(id).expect("just published");
        let rec = NestedRec { id, parent: h.parent().id(), pasid: flags != 0 };
        assert_eq!(h.pasid_compat(), rec.pasid);
        drop(h);
        w.pools().nested.push(rec);
    }
}

fn op_nested_destroy(w: &World, rng: &mut Rng, st: &mut Stats) {
    let rec = {
        let mut p = w.pools();
        if p.nested.is_empty() {
            return;
        }
        let i = rng.below(p.nested.len() as u64) as usize;
        p.nested.swap_remove(i)
    };
    let r = w.ctx.destroy(rec.id);
    st.note(Op::NestedDestroy, &r);
    if r.is_err() {
        st.busy_destroys += 1;
        w.pools().nested.push(rec);
    }
}

/// `IOMMU_HWPT_INVALIDATE` of a nested HWPT taken from the pool; every
/// request handled must have cleared its mock IOTLB entries.
fn op_nested_invalidate(w: &World, rng: &mut Rng, st: &mut Stats) {
    let rec = {
        let mut p = w.pools();
        if p.nested.is_empty() {
            return;
        }
        let i = rng.below(p.nested.len() as u64) as usize;
        p.nested.swap_remove(i)
    };
    let n = 1 + rng.below(2) as u32;
    let reqs: Vec<(u32, u32)> = (0..n)
        .map(|_| match rng.below(16) {
            0 => (0, t::MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1), // refused: EINVAL
            1 => (1 << 7, 0),                                 // unknown flag: EOPNOTSUPP
            2..=5 => (t::IOMMU_TEST_INVALIDATE_FLAG_ALL, 0),
            _ => (0, rng.below(t::MOCK_NESTED_DOMAIN_IOTLB_NUM as u64) as u32),
        })
        .collect();
    let bytes: Vec<u8> = reqs.iter().flat_map(|&(f, id)| [f.to_le_bytes(), id.to_le_bytes()].concat()).collect();
    let mut reader = |i: u32, buf: &mut [u8]| {
        buf.fill(0);
        let at = i as usize * 8;
        let k = buf.len().min(8);
        buf[..k].copy_from_slice(&bytes[at..at + k]);
        Ok(())
    };
    let mut array = UserDataArray {
        data_type: t::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
        entry_len: 8,
        entry_num: n,
        reader: &mut reader,
    };
    let r = hwpt::invalidate(&w.ctx, rec.id, &mut array);
    let handled = array.entry_num;
    if r.is_ok() {
        assert_eq!(handled, n, "a successful invalidation handled only part of the array");
    }
    st.note(Op::NestedInvalidate, &r);
    for &(flags, id) in &reqs[..handled as usize] {
        let ids: Vec<u32> = if flags & t::IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
            (0..t::MOCK_NESTED_DOMAIN_IOTLB_NUM).collect()
        } else {
            vec![id]
        };
        for i in ids {
            selftest::md_check_iotlb(&w.ctx, rec.id, i, 0)
                .unwrap_or_else(|e| panic!("IOTLB entry {i} of nested HWPT {} not cleared: {e:?}", rec.id));
            st.iotlb_checked += 1;
        }
    }
    w.pools().nested.push(rec);
}

fn op_device_create(w: &World, rng: &mut Rng, st: &mut Stats) {
    if w.pools().devices.len() >= MAX_DEVICES {
        return op_device_destroy(w, rng, st);
    }
    let mut flags = 0;
    if rng.below(10) < 6 {
        flags |= MOCK_FLAGS_DEVICE_PASID;
    }
    if rng.below(5) == 0 {
        flags |= MOCK_FLAGS_DEVICE_NO_DIRTY;
    }
    if rng.below(10) == 0 {
        flags |= MOCK_FLAGS_DEVICE_HUGE_IOVA;
    }
    let pt = pick_pt(w, rng, if flags & MOCK_FLAGS_DEVICE_PASID != 0 { 40 } else { 0 });
    match selftest::mock_domain(w.ctx_static, pt, flags) {
        Ok(d) => {
            st.ok(Op::DeviceCreate);
            let rec = DevRec {
                stdev_id: d.stdev_id,
                idev_id: d.idev_id,
                flags,
                attached: BTreeMap::from([(NO_PASID, d.hwpt_id)]),
            };
            d.publish();
            check_device(w, &rec, NO_PASID, pt);
            put_device(w, rec);
        }
        Err(e) => st.err(Op::DeviceCreate, e),
    }
}

fn op_device_destroy(w: &World, rng: &mut Rng, st: &mut Stats) {
    let Some(d) = take_device(w, rng) else { return };
    // Nobody else borrows a mock device object: destroy cannot be busy.
    let r = w.ctx.destroy(d.stdev_id);
    st.note(Op::DeviceDestroy, &r);
}

/// Attachment changes on one device taken from the pool.
fn op_attach(w: &World, rng: &mut Rng, st: &mut Stats, op: Op) {
    let Some(mut d) = take_device(w, rng) else { return };
    let ctx = &w.ctx;
    // PASID operations, and any operation on a device with PASIDs attached,
    // mostly pick PASID-capable HWPTs; RID operations of PASID-capable
    // devices often do, so that PASIDs can be attached next.
    let pasid_op = matches!(op, Op::PasidAttach | Op::PasidReplace);
    let compat_pct = if pasid_op || d.attached.keys().any(|&p| p != NO_PASID) {
        75
    } else if d.flags & MOCK_FLAGS_DEVICE_PASID != 0 {
        40
    } else {
        0
    };
    let pt = pick_pt(w, rng, compat_pct);
    // Replace and detach mostly name an attached PASID.
    let attached_pasids: Vec<u32> = d.attached.keys().copied().filter(|&p| p != NO_PASID).collect();
    let pick_pasid = |rng: &mut Rng| match rng.pick(&attached_pasids) {
        Some(p) if !matches!(op, Op::PasidAttach) && rng.below(5) != 0 => p,
        _ => PASIDS[rng.below(PASIDS.len() as u64) as usize],
    };
    let pasid_dev = d.flags & MOCK_FLAGS_DEVICE_PASID != 0;
    let (pasid, r) = match op {
        Op::RidReplace => (NO_PASID, selftest::mock_domain_replace(ctx, d.stdev_id, pt)),
        Op::RidDetachAttach => {
            if d.attached.contains_key(&NO_PASID) {
                let r = selftest::pasid_detach(ctx, d.stdev_id, NO_PASID).map(|()| 0);
                (NO_PASID, r)
            } else {
                (NO_PASID, selftest::pasid_attach(ctx, d.stdev_id, NO_PASID, pt))
            }
        }
        Op::PasidAttach => {
            let p = pick_pasid(rng);
            (p, selftest::pasid_attach(ctx, d.stdev_id, p, pt))
        }
        Op::PasidReplace => {
            let p = pick_pasid(rng);
            (p, selftest::pasid_replace(ctx, d.stdev_id, p, pt))
        }
        Op::PasidDetach => {
            let p = pick_pasid(rng);
            (p, selftest::pasid_detach(ctx, d.stdev_id, p).map(|()| 0))
        }
        _ => unreachable!(),
    };
    let was = d.attached.get(&pasid).copied();
    // What a successful attach or replace targeted (checked for IOASes).
    let mut target = 0;
    match (op, r) {
        (Op::PasidDetach, Ok(_)) => {
            st.ok(op);
            d.attached.remove(&pasid);
        }
        (Op::RidDetachAttach, Ok(_)) if was.is_some() => {
            st.ok(op);
            d.attached.remove(&NO_PASID);
        }
        (_, Ok(h)) => {
            st.ok(op);
            // Success only where the kernel allows it.
            match op {
                Op::RidReplace | Op::PasidReplace => {
                    assert!(was.is_some(), "{op:?} of unattached PASID {pasid} succeeded")
                }
                Op::PasidAttach | Op::RidDetachAttach => {
                    assert!(was.is_none() || was == Some(h), "{op:?} of attached PASID {pasid} succeeded")
                }
                _ => {}
            }
            if pasid != NO_PASID {
                assert!(pasid_dev, "PASID {pasid} attached on a device without PASIDs");
            }
            d.attached.insert(pasid, h);
            target = pt;
        }
        (_, Err(e)) => {
            if e.errno == Errno::EINVAL && e.context.contains("PASID") {
                st.pasid_rule_refusals += 1;
            }
            st.err(op, e);
        }
    }
    // A failed change leaves no trace: the record stays the truth.
    check_device(w, &d, pasid, target);
    put_device(w, d);
}

/// A pooled paging HWPT (maybe stale), preferring dirty-tracking ones.
fn pick_paging(w: &World, rng: &mut Rng) -> Option<PagingRec> {
    let p = w.pools();
    let dirty: Vec<PagingRec> =
        p.paging.iter().filter(|h| h.flags & abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0).copied().collect();
    if rng.below(5) != 0 && !dirty.is_empty() {
        return rng.pick(&dirty);
    }
    rng.pick(&p.paging)
}

fn op_dirty(w: &World, rng: &mut Rng, st: &mut Stats, op: Op) {
    let Some(rec) = pick_paging(w, rng) else { return };
    let ctx = &w.ctx;
    match op {
        Op::DirtyTracking => {
            let r = hwpt::set_dirty_tracking(ctx, rec.id, rng.below(3) != 0);
            st.note(op, &r);
        }
        Op::MarkDirty => {
            let bits = (rng.next() as u32).to_le_bytes();
            let iova = slot_iova(rng.below(SLOTS));
            let r = selftest::dirty(ctx, rec.id, iova, SLOT_SIZE, MOCK_IO_PAGE_SIZE, bits.as_ptr() as u64);
            if let Ok(n) = r {
                st.pages_marked += n;
            }
            st.note(op, &r);
        }
        _ => {
            // The area at a slot if there is one (then the range is mapped),
            // else the bare slot (refused).
            let iova = slot_iova(rng.below(SLOTS));
            let area = ctx.ioas(rec.ioas).ok().and_then(|i| i.iopt().areas().into_iter().find(|a| a.iova == iova));
            let length = area.map_or(SLOT_SIZE, |a| a.last - a.iova + 1);
            let mut bitmap = vec![0u8; (length / MOCK_IO_PAGE_SIZE).div_ceil(8) as usize];
            let b = DirtyBitmap {
                iova,
                length,
                page_size: MOCK_IO_PAGE_SIZE,
                data: bitmap.as_mut_ptr() as u64,
                no_clear: rng.below(4) == 0,
            };
            let r = hwpt::get_dirty_bitmap(ctx, rec.id, &b);
            st.note(op, &r);
        }
    }
}

fn one_op(w: &World, rng: &mut Rng, st: &mut Stats, tid: usize) {
    let ps = page_size();
    let mut x = rng.below(100);
    let op = OPS
        .iter()
        .find(|&&(_, wt)| {
            let hit = x < wt;
            x = x.wrapping_sub(wt);
            hit
        })
        .expect("weights add up to 100")
        .0;
    CURRENT[tid].store(op as usize, Ordering::Relaxed);
    let ioas = w.ioas[rng.below(2) as usize];
    let slot = rng.below(SLOTS);
    match op {
        Op::Map => {
            let first = rng.below(BUF_PAGES - 16);
            let pages = 1 + rng.below(16);
            let r = w.ctx.ioas_map(ioas, RW, w.buf + first * ps, pages * ps, slot_iova(slot));
            st.note(op, &r);
        }
        Op::Unmap => {
            let r = w.ctx.ioas_unmap(ioas, slot_iova(slot), SLOT_SIZE);
            st.note(op, &r);
        }
        Op::Copy => {
            let other = w.ioas[rng.below(2) as usize];
            let dst = rng.below(SLOTS);
            let len = (1 + rng.below(4)) * ps;
            let r = w.ctx.ioas_copy(other, ioas, RW, len, slot_iova(dst), slot_iova(slot));
            st.note(op, &r);
        }
        Op::AccessPin => {
            // An access pins, reads through the pinned frames, unpins.
            let acc = selftest::create_access(&w.ctx, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
                .expect("creating an access on a live IOAS");
            let r = acc.access_pages(slot_iova(slot), ps, 0, 0).and_then(|id| {
                let mut b = vec![0u8; ps as usize];
                // Readable through its frame, unless a concurrent unmap has
                // already taken the pin back (then the item is gone).
                let r = acc.access().rw(slot_iova(slot), &mut b, false, true);
                let _ = acc.destroy_access_pages(id);
                r
            });
            st.note(op, &r);
            acc.release();
        }
        Op::AccessRw => {
            let mut b = vec![0u8; 64];
            let (write, slow) = (rng.below(2) == 0, rng.below(2) == 0);
            let r = w.ctx.ioas(ioas).and_then(|i| i.iopt().access_rw(slot_iova(slot) + 8, &mut b, write, slow));
            st.note(op, &r);
        }
        Op::HwptAlloc => op_hwpt_alloc(w, rng, st),
        Op::HwptDestroy => op_hwpt_destroy(w, rng, st),
        Op::NestedAlloc => op_nested_alloc(w, rng, st),
        Op::NestedInvalidate => op_nested_invalidate(w, rng, st),
        Op::NestedDestroy => op_nested_destroy(w, rng, st),
        Op::DeviceCreate => op_device_create(w, rng, st),
        Op::DeviceDestroy => op_device_destroy(w, rng, st),
        Op::RidReplace | Op::RidDetachAttach | Op::PasidAttach | Op::PasidReplace | Op::PasidDetach => {
            op_attach(w, rng, st, op)
        }
        Op::DirtyTracking | Op::MarkDirty | Op::DirtyBitmap => op_dirty(w, rng, st, op),
    }
    CURRENT[tid].store(usize::MAX, Ordering::Relaxed);
}

/// The object table holds exactly what the pools say, plus automatic
/// domains in use; no ID is reserved without an object.
fn check_objects(w: &World, pools: &Pools, out: &mut CheckOut) -> BTreeMap<ObjectId, ObjectKind> {
    let table = w.ctx.objects();
    let scan =
        || -> BTreeMap<ObjectId, ObjectKind> { (1..ID_SCAN).filter_map(|id| Some((id, table.kind_of(id)?))).collect() };
    let mut kinds = scan();
    // Kernel behaviour, not a bug: an automatic domain's last detach only
    // *tries* to destroy it (`iommufd_object_put_and_try_destroy`, which
    // does not wait for short-term users), so a concurrent lookup of its ID
    // keeps it alive without users. The kernel's comment there tells user
    // space not to race accesses to automatic HWPTs; this test does exactly
    // that on purpose, with IDs that went stale and were recycled for
    // automatic domains. Such an orphan must stay healthy (the rest of the
    // check covers its list entry and its mappings) and be destroyable,
    // which is how user space gets rid of it; it is counted and reported.
    let orphans: Vec<ObjectId> = kinds
        .iter()
        .filter(|&(_, &k)| k == ObjectKind::HwptPaging)
        .filter(|&(&id, _)| {
            let h = w.ctx.get::<HwptPaging>(id).expect("live");
            h.is_auto() && h.header().users() == 0
        })
        .map(|(&id, _)| id)
        .collect();
    if !orphans.is_empty() && !strict("orphan-auto") {
        check_ioas_mappings(w, &kinds);
        for id in orphans {
            w.ctx.destroy(id).expect("destroying an automatic domain nobody uses");
            out.orphan_autos += 1;
        }
        kinds = scan();
    }
    assert_eq!(kinds.len(), table.len(), "live objects beyond ID {ID_SCAN}, or a wrong live count");
    // Reservations hand out the lowest free IDs: every ID below the scan
    // limit is live, handed to us, or reserved by nobody (a tombstone or a
    // lost reservation: nothing should be pending between rounds).
    let mut mine = Vec::new();
    loop {
        let p = table.reserve().expect("reserving an ID");
        let id = p.id();
        mine.push(p);
        if id >= ID_SCAN {
            break;
        }
    }
    let free: BTreeSet<ObjectId> = mine.iter().map(|p| p.id()).collect();
    drop(mine);
    let orphans: Vec<ObjectId> = (1..ID_SCAN).filter(|id| !kinds.contains_key(id) && !free.contains(id)).collect();
    assert!(orphans.is_empty(), "IDs reserved without a live object: {orphans:?}");

    let of =
        |k: ObjectKind| -> BTreeSet<ObjectId> { kinds.iter().filter(|(_, &v)| v == k).map(|(&id, _)| id).collect() };
    assert_eq!(of(ObjectKind::Ioas), w.ioas.iter().copied().collect(), "the IOASes");
    assert_eq!(
        of(ObjectKind::Selftest),
        pools.devices.iter().map(|d| d.stdev_id).collect(),
        "mock device objects differ from the pool"
    );
    assert_eq!(
        of(ObjectKind::Device),
        pools.devices.iter().map(|d| d.idev_id).collect(),
        "bound device objects differ from the pool's devices (one outlived its unbind?)"
    );
    assert_eq!(of(ObjectKind::HwptNested), pools.nested.iter().map(|h| h.id).collect(), "nested HWPTs");
    let explicit: BTreeSet<ObjectId> = of(ObjectKind::HwptPaging)
        .into_iter()
        .filter(|&id| !w.ctx.get::<HwptPaging>(id).expect("live").is_auto())
        .collect();
    assert_eq!(explicit, pools.paging.iter().map(|h| h.id).collect(), "explicit paging HWPTs");
    let others: Vec<_> = kinds
        .iter()
        .filter(|(_, k)| {
            !matches!(
                k,
                ObjectKind::Ioas
                    | ObjectKind::Selftest
                    | ObjectKind::Device
                    | ObjectKind::HwptNested
                    | ObjectKind::HwptPaging
            )
        })
        .collect();
    assert!(others.is_empty(), "objects nobody made or kept: {others:?}");

    for rec in &pools.paging {
        let h = w.ctx.get::<HwptPaging>(rec.id).expect("pooled");
        assert_eq!(h.ioas().id(), rec.ioas);
        assert_eq!(h.nest_parent(), rec.flags & abi::IOMMU_HWPT_ALLOC_NEST_PARENT != 0);
        assert_eq!(h.dirty_tracking(), rec.flags & abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0);
        assert_eq!(h.pasid_compat(), rec.flags & abi::IOMMU_HWPT_ALLOC_PASID != 0);
    }
    for rec in &pools.nested {
        let h = w.ctx.get::<HwptNested>(rec.id).expect("pooled");
        assert_eq!(h.parent().id(), rec.parent);
        assert_eq!(h.pasid_compat(), rec.pasid);
    }
    kinds
}

/// Every object's dependency count is exactly its edges; attachments are
/// the recorded ones and obey the PASID rules.
fn check_edges(w: &World, pools: &Pools, kinds: &BTreeMap<ObjectId, ObjectKind>) {
    let ctx = &w.ctx;
    let mut edges: HashMap<ObjectId, u32> = HashMap::new();
    for d in &pools.devices {
        let att = attachments(ctx, d.stdev_id);
        assert_eq!(att, d.attached, "device {} attachments differ from what its operations did", d.stdev_id);
        check_pasid_rules(ctx, d, &att);
        for &h in att.values() {
            *edges.entry(h).or_default() += 1;
        }
        let dev = ctx.get::<uiommufd_core::device::Device>(d.idev_id).expect("bound");
        assert_eq!(dev.header().users(), 1, "device {}: only its binder depends on it", d.idev_id);
    }
    for n in &pools.nested {
        *edges.entry(n.parent).or_default() += 1;
    }
    let mut per_ioas: HashMap<ObjectId, u32> = HashMap::new();
    for (&id, &k) in kinds {
        let want = edges.get(&id).copied().unwrap_or(0);
        match k {
            ObjectKind::HwptPaging => {
                let h = ctx.get::<HwptPaging>(id).expect("live");
                *per_ioas.entry(h.ioas().id()).or_default() += 1;
                assert_eq!(h.header().users(), want, "paging HWPT {id}: users differ from its edges");
                if h.is_auto() {
                    assert!(want > 0, "automatic domain {id} outlived its last attachment");
                }
            }
            ObjectKind::HwptNested => {
                let h = ctx.get::<HwptNested>(id).expect("live");
                assert_eq!(h.header().users(), want, "nested HWPT {id}: users differ from its attachments");
            }
            _ => {}
        }
    }
    for &i in &w.ioas {
        let ioas = ctx.ioas(i).unwrap();
        let want = per_ioas.get(&i).copied().unwrap_or(0);
        assert_eq!(ioas.header().users(), want, "IOAS {i}: users differ from its HWPTs (no access is left)");
    }
}

/// Each IOAS: its HWPT list, its domains and the table agree; every domain
/// maps exactly the areas; pins match (as `stress.rs`).
fn check_ioas_mappings(w: &World, kinds: &BTreeMap<ObjectId, ObjectKind>) {
    let ctx = &w.ctx;
    for &ioas_id in &w.ioas {
        let ioas = ctx.ioas(ioas_id).unwrap();
        let mut in_table: BTreeMap<ObjectId, *const ()> = BTreeMap::new();
        for (&id, &k) in kinds {
            if k == ObjectKind::HwptPaging {
                let h = ctx.get::<HwptPaging>(id).expect("live");
                if h.ioas().id() == ioas_id {
                    in_table.insert(id, Arc::as_ptr(h.domain()) as *const ());
                }
            }
        }
        // Upgraded under the list lock, dropped after it (dropping a HWPT
        // takes that lock).
        let listed: Vec<Arc<HwptPaging>> = ioas.hwpts().iter().filter_map(|wk| wk.upgrade()).collect();
        let listed: BTreeMap<ObjectId, *const ()> =
            listed.iter().map(|h| (h.id(), Arc::as_ptr(h.domain()) as *const ())).collect();
        assert_eq!(listed, in_table, "IOAS {ioas_id}: its HWPT list differs from the table");
        let domains = ioas.iopt().domains();
        let dptrs: BTreeSet<*const ()> = domains.iter().map(|d| Arc::as_ptr(&d.domain) as *const ()).collect();
        assert_eq!(dptrs.len(), domains.len(), "IOAS {ioas_id}: a domain is attached twice");
        assert_eq!(
            dptrs,
            in_table.values().copied().collect(),
            "IOAS {ioas_id}: its domains differ from its paging HWPTs"
        );
    }
    // No access is left between rounds: pin counts are exact.
    let how = MappingsCheck {
        window: slot_iova(0)..slot_iova(SLOTS),
        step: MOCK_IO_PAGE_SIZE,
        max_area_bytes: u64::MAX,
        accesses_may_pin: false,
    };
    if let Err(e) = check_mappings(ctx, &w.ioas, &how) {
        panic!("{e}");
    }
}

/// Dirty tracking round-trips on every dirty-capable pooled HWPT.
fn check_dirty(w: &World, pools: &Pools) -> u64 {
    let ctx = &w.ctx;
    let mut roundtrips = 0;
    for rec in &pools.paging {
        let (_h, dom) = selftest::mock_domain_of(ctx, rec.id).expect("pooled");
        let mock = dom.as_any().downcast_ref::<MockDomain>().expect("mock");
        let capable = rec.flags & abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0;
        assert_eq!(mock.has_dirty_ops(), capable);
        assert!(capable || !mock.dirty_tracking(), "tracking on a HWPT without dirty tracking");
        let areas = ctx.ioas(rec.ioas).unwrap().iopt().areas();
        let Some(a) = areas.first() else { continue };
        let length = a.last - a.iova + 1;
        let nbits = length / MOCK_IO_PAGE_SIZE;
        let nbytes = nbits.div_ceil(8) as usize;
        let ones = vec![0xffu8; nbytes];
        let mut bitmap = vec![0u8; nbytes];
        let harvest = |bitmap: &mut Vec<u8>| {
            bitmap.fill(0);
            let b = DirtyBitmap {
                iova: a.iova,
                length,
                page_size: MOCK_IO_PAGE_SIZE,
                data: bitmap.as_mut_ptr() as u64,
                no_clear: false,
            };
            hwpt::get_dirty_bitmap(ctx, rec.id, &b)
        };
        if mock.dirty_tracking() {
            let marked = selftest::dirty(ctx, rec.id, a.iova, length, MOCK_IO_PAGE_SIZE, ones.as_ptr() as u64)
                .expect("marking a mapped area dirty");
            assert_eq!(marked, nbits, "HWPT {}: not every page of area {:#x} is mapped", rec.id, a.iova);
            harvest(&mut bitmap).expect("harvesting a tracking HWPT");
            let set = (0..nbits).filter(|&i| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0).count() as u64;
            assert_eq!(set, nbits, "HWPT {}: the harvest lost dirty pages of area {:#x}", rec.id, a.iova);
            harvest(&mut bitmap).expect("harvesting a tracking HWPT");
            assert!(bitmap.iter().all(|&b| b == 0), "HWPT {}: the harvest did not clear the dirty bits", rec.id);
            roundtrips += 1;
        } else {
            let e = selftest::dirty(ctx, rec.id, a.iova, length, MOCK_IO_PAGE_SIZE, ones.as_ptr() as u64);
            assert_eq!(e.unwrap_err().errno, Errno::EINVAL, "marking dirty without tracking");
            bitmap.fill(0);
            let got = harvest(&mut bitmap).map_err(|e| e.errno);
            // A capable HWPT: EINVAL on 6.12 (its mock refuses), 0 on 7.3,
            // whose generic page table harvests bits marked while tracking
            // was on (Linux 7.3.4, crates/api's selftest_flows transcript);
            // a second harvest finds them cleared.
            let want = match (capable, ctx.release().dirty_bitmap_reports_errors) {
                (false, _) => Err(Errno::EOPNOTSUPP),
                (true, true) => Err(Errno::EINVAL),
                (true, false) => Ok(()),
            };
            assert_eq!(got, want, "harvesting without tracking");
            if got.is_ok() {
                harvest(&mut bitmap).expect("harvesting again");
            }
            assert!(bitmap.iter().all(|&b| b == 0), "HWPT {}: a harvest without tracking wrote bits", rec.id);
        }
    }
    roundtrips
}

/// What a check found besides failures.
#[derive(Default)]
struct CheckOut {
    dirty_roundtrips: u64,
    /// Automatic domains left without users by a racing lookup (kernel
    /// behaviour).
    orphan_autos: u64,
}

/// Whether the tolerance for `what` is off: `UIOMMUFD_STRESS_STRICT` is `1`
/// (all off) or a comma-separated list; the only one is `orphan-auto` (fail
/// on automatic domains left without users, kernel behaviour).
fn strict(what: &str) -> bool {
    std::env::var("UIOMMUFD_STRESS_STRICT").is_ok_and(|v| v == "1" || v.split(',').any(|w| w == what))
}

/// Check the invariants; all other threads are parked.
fn check(w: &World) -> CheckOut {
    let mut out = CheckOut::default();
    let pools = w.pools();
    let kinds = check_objects(w, &pools, &mut out);
    check_edges(w, &pools, &kinds);
    check_ioas_mappings(w, &kinds);
    out.dirty_roundtrips = check_dirty(w, &pools);
    out
}

#[test]
fn hwpts_nesting_pasids_and_dirty_tracking_keep_the_invariants() {
    let start = Instant::now();
    let ps = page_size();
    let ctx = Iommufd::new();
    let ctx_static: &'static Arc<Iommufd> = Box::leak(Box::new(Arc::clone(&ctx)));
    let ioas = [ctx.ioas_alloc().unwrap(), ctx.ioas_alloc().unwrap()];
    let mut mem = vec![0u8; ((BUF_PAGES + 1) * ps) as usize];
    let buf = (mem.as_mut_ptr() as u64).next_multiple_of(ps);
    let world = Arc::new(World {
        ctx: Arc::clone(&ctx),
        ctx_static,
        ioas,
        buf,
        pools: Mutex::default(),
        failed: AtomicBool::new(false),
    });
    // One PASID-capable device per IOAS to start with.
    for &i in &ioas {
        let d = selftest::mock_domain(ctx_static, i, MOCK_FLAGS_DEVICE_PASID).unwrap();
        let rec = DevRec {
            stdev_id: d.stdev_id,
            idev_id: d.idev_id,
            flags: MOCK_FLAGS_DEVICE_PASID,
            attached: BTreeMap::from([(NO_PASID, d.hwpt_id)]),
        };
        d.publish();
        world.pools().devices.push(rec);
    }

    // The watchdog: a deadlock aborts with what every thread was doing.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let (mut seen, mut since) = (usize::MAX, Instant::now());
        while let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(Duration::from_millis(200)) {
            let round = ROUND.load(Ordering::Relaxed);
            if round != seen {
                (seen, since) = (round, Instant::now());
                continue;
            }
            if since.elapsed() < WATCHDOG {
                continue;
            }
            let names: Vec<String> = CURRENT
                .iter()
                .map(|c| match c.load(Ordering::Relaxed) {
                    usize::MAX => "idle".to_string(),
                    i => format!("{:?}", OPS[i].0),
                })
                .collect();
            eprintln!("stress_hwpt: no progress for {WATCHDOG:?} after round {round}: threads are in {names:?}");
            std::process::abort();
        }
    });

    let barrier = Arc::new(Barrier::new(THREADS));
    // Unoptimized builds run a fifth of the rounds (same coverage per round).
    let default_rounds = if cfg!(debug_assertions) { ROUNDS / 5 } else { ROUNDS };
    let rounds = std::env::var("UIOMMUFD_STRESS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_rounds);
    let seed = std::env::var("UIOMMUFD_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    let totals = Arc::new(Mutex::new(Stats::default()));
    let handles: Vec<_> = (0..THREADS)
        .map(|tid| {
            let (w, barrier, totals) = (Arc::clone(&world), Arc::clone(&barrier), Arc::clone(&totals));
            std::thread::spawn(move || {
                let mut rng = Rng(seed.wrapping_add((tid as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
                let mut stats = Stats::default();
                // A panic must not strand the others at the barrier: every
                // worker keeps meeting it, and the panic is re-raised at the
                // end (a hang would hide the failure).
                let mut failure = None;
                for round in 0..rounds {
                    if failure.is_none() && !w.failed.load(Ordering::Acquire) {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            for _ in 0..OPS_PER_ROUND {
                                one_op(&w, &mut rng, &mut stats, tid);
                            }
                        }));
                        if r.is_err() {
                            w.failed.store(true, Ordering::Release);
                            CURRENT[tid].store(usize::MAX, Ordering::Relaxed);
                        }
                        failure = r.err();
                    }
                    // Park everyone; the leader checks.
                    let leader = barrier.wait().is_leader();
                    if leader {
                        ROUND.store(round + 1, Ordering::Relaxed);
                    }
                    if leader && !w.failed.load(Ordering::Acquire) {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&w)));
                        match r {
                            Ok(o) => {
                                stats.dirty_roundtrips += o.dirty_roundtrips;
                                stats.orphan_autos += o.orphan_autos;
                            }
                            Err(p) => {
                                w.failed.store(true, Ordering::Release);
                                failure.get_or_insert(p);
                            }
                        }
                    }
                    barrier.wait();
                }
                totals.lock().unwrap_or_else(|p| p.into_inner()).merge(&stats);
                if let Some(p) = failure {
                    std::panic::resume_unwind(p);
                }
            })
        })
        .collect();
    let mut panicked = false;
    for h in handles {
        panicked |= h.join().is_err();
    }
    assert!(!panicked, "a worker or the checker failed (see the first panic above)");
    let last = check(&world);
    let run_time = start.elapsed();

    let mut totals = std::mem::take(&mut *totals.lock().unwrap());
    totals.orphan_autos += last.orphan_autos;
    eprintln!("stress_hwpt: seed {seed}, {THREADS} threads x {rounds} rounds x {OPS_PER_ROUND} ops in {run_time:?}");
    for &(op, _) in &OPS {
        let fails: Vec<String> = totals
            .err
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(k @ (_, e), n)| format!("{:?} x{n} ({})", Errno(*e), totals.why[k]))
            .collect();
        eprintln!("  {op:?}: {} ok; failed: {}", totals.ok.get(&op).copied().unwrap_or(0), fails.join(", "));
    }
    eprintln!(
        "  busy destroys {}, PASID-rule refusals {}, IOTLB entries seen cleared {}, pages marked dirty {}, \
         dirty round-trips {}",
        totals.busy_destroys,
        totals.pasid_rule_refusals,
        totals.iotlb_checked,
        totals.pages_marked,
        totals.dirty_roundtrips
    );
    eprintln!(
        "  automatic domains left without users by a racing lookup of their ID (kernel behaviour) and destroyed: {}",
        totals.orphan_autos
    );
    // The run must have exercised every kind of operation for real.
    for &(op, _) in &OPS {
        let n = totals.ok.get(&op).copied().unwrap_or(0);
        assert!(n >= 50, "only {n} successful {op:?}: the run does not test it");
    }
    for (what, n) in [
        ("busy destroys", totals.busy_destroys),
        ("PASID-rule refusals", totals.pasid_rule_refusals),
        ("IOTLB checks", totals.iotlb_checked),
        ("pages marked dirty", totals.pages_marked),
        ("dirty round-trips", totals.dirty_roundtrips),
    ] {
        assert!(n >= 50, "only {n} {what}");
    }

    // Tear everything down, users first: nothing may stay pinned, charged
    // or in the table.
    let pools = std::mem::take(&mut *world.pools());
    for d in &pools.devices {
        ctx.destroy(d.stdev_id).expect("destroying a mock device");
    }
    for h in &pools.nested {
        ctx.destroy(h.id).expect("destroying a nested HWPT");
    }
    for h in &pools.paging {
        ctx.destroy(h.id).expect("destroying a paging HWPT");
    }
    assert_eq!(ctx.objects().len(), 2, "only the IOASes remain");
    for &i in &ioas {
        ctx.ioas_unmap(i, 0, u64::MAX).expect("unmapping everything");
    }
    assert_eq!(frames::total_pins(), 0);
    ctx.objects().destroy_all();
    assert!(ctx.objects().is_empty());
    ctx.objects().with_empty(|| ()).expect("no ID stays reserved after destroy_all");
    drop(world);
    drop(ctx);
    assert_eq!(frames::pinned_pages(), 0);
    assert_eq!(uiommufd_core::account::locked_pages(), (0, 0));
    drop(mem);
    done_tx.send(()).unwrap();
    watchdog.join().unwrap();
}
