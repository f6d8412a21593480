//! The vIOMMU family on the selftest mock, through the engine API: the
//! checks mainline's `iommufd_viommu` and `iommufd_device_pasid` selftests
//! make, restated for the engine.

use std::sync::Arc;

use uiommufd_abi::test_cmd as t;
use uiommufd_abi::{self as abi, Errno};
use uiommufd_hw::{UserData, UserDataArray};
use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::hwpt::{self, HwptAllocArgs};
use crate::ioas::map_flags;
use crate::selftest::{self as st, mock_domain};
use crate::veventq::{veventq_alloc, Veventq};
use uiommufd_memory::frames::pin_count;

fn ps() -> u64 {
    page_size()
}

/// `pages` fresh pages of private anonymous memory (leaked).
fn buffer(pages: u64) -> u64 {
    let len = (pages * ps()) as usize;
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as u64
}

fn errno<T>(r: Result<T>) -> Errno {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.errno,
    }
}

/// `IOMMU_HWPT_ALLOC` with optional driver data.
fn hwpt_alloc(
    ctx: &Iommufd,
    dev: ObjectId,
    pt: ObjectId,
    flags: u32,
    fault: ObjectId,
    data: Option<&[u8]>,
) -> Result<ObjectId> {
    let bytes = data.unwrap_or(&[]).to_vec();
    let mut reader = move |buf: &mut [u8]| {
        buf.fill(0);
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    };
    let (data_type, len) = match data {
        Some(d) => (t::IOMMU_HWPT_DATA_SELFTEST, d.len() as u32),
        None => (abi::IOMMU_HWPT_DATA_NONE, 0),
    };
    let args = HwptAllocArgs {
        flags,
        dev_id: dev,
        pt_id: pt,
        fault_id: fault,
        data: UserData { data_type, len, reader: &mut reader },
    };
    let mut holder = None;
    let p = hwpt::hwpt_alloc(ctx, &mut holder, args)?;
    let id = p.id();
    p.publish();
    Ok(id)
}

fn nested_data() -> Vec<u8> {
    t::IommuHwptSelftest { iotlb: t::IOMMU_TEST_IOTLB_DEFAULT, pagetable_type: 0 }.as_bytes()[..4].to_vec()
}

/// `IOMMU_VIOMMU_ALLOC`; the driver data round-trips through `data`.
fn viommu_alloc_with(
    ctx: &Iommufd,
    dev: ObjectId,
    hwpt: ObjectId,
    ty: u32,
    data: Option<&mut Vec<u8>>,
) -> Result<ObjectId> {
    let len = data.as_ref().map_or(0, |d| d.len());
    let input = data.as_ref().map(|d| d.to_vec()).unwrap_or_default();
    let mut reader = move |buf: &mut [u8]| {
        buf.fill(0);
        let n = buf.len().min(input.len());
        buf[..n].copy_from_slice(&input[..n]);
        Ok(())
    };
    let user = (len != 0).then_some(UserData { data_type: ty, len: len as u32, reader: &mut reader });
    let mut out = Vec::new();
    let mut write_back = |b: &[u8]| {
        out = b.to_vec();
        Ok(())
    };
    let (pending, v) = viommu_alloc(ctx, 0, ty, dev, hwpt, user, &mut write_back)?;
    let id = pending.id();
    pending.publish(v);
    if let Some(d) = data {
        let n = d.len().min(out.len());
        d[..n].copy_from_slice(&out[..n]);
    }
    Ok(id)
}

fn vdev(ctx: &Iommufd, viommu: ObjectId, dev: ObjectId, virt_id: u64) -> Result<ObjectId> {
    let p = vdevice_alloc(ctx, viommu, dev, virt_id)?;
    let id = p.id();
    p.publish();
    Ok(id)
}

fn veventq(ctx: &Iommufd, viommu: ObjectId, ty: u32, depth: u32) -> Result<(ObjectId, Arc<Veventq>)> {
    let (p, q) = veventq_alloc(ctx, 0, 0, viommu, ty, depth)?;
    let id = p.id();
    p.publish(Arc::clone(&q));
    Ok((id, q))
}

fn hw_queue(ctx: &Arc<Iommufd>, viommu: ObjectId, ty: u32, index: u32, iova: u64, len: u64) -> Result<ObjectId> {
    let (p, q) = hw_queue_alloc(ctx, 0, viommu, ty, index, iova, len)?;
    let id = p.id();
    p.publish(q);
    Ok(id)
}

/// The `iommufd_viommu` fixture: a mock device on an IOAS, a nesting
/// parent, a selftest vIOMMU and a nested HWPT of that vIOMMU.
struct Fixture {
    ctx: Arc<Iommufd>,
    ioas: ObjectId,
    stdev: ObjectId,
    dev: ObjectId,
    parent: ObjectId,
    viommu: ObjectId,
    nested: ObjectId,
}

fn fixture() -> Fixture {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let md = mock_domain(&ctx, ioas, 0).unwrap();
    let (stdev, dev) = (md.stdev_id, md.idev_id);
    md.publish();
    let parent = hwpt_alloc(&ctx, dev, ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, 0, None).unwrap();
    let viommu = viommu_alloc_with(&ctx, dev, parent, t::IOMMU_VIOMMU_TYPE_SELFTEST, None).unwrap();
    let nested = hwpt_alloc(&ctx, dev, viommu, 0, 0, Some(&nested_data())).unwrap();
    Fixture { ctx, ioas, stdev, dev, parent, viommu, nested }
}

/// Read everything `q` holds into records `(flags, sequence, data)`.
fn read_all(q: &Veventq, count: usize) -> Vec<(u32, u32, Vec<u8>)> {
    let mut buf = vec![0u8; count];
    let n = q
        .read(count, |at, b| {
            buf[at..at + b.len()].copy_from_slice(b);
            Ok(())
        })
        .unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < n {
        let (h, _) = abi::IommufdVeventHeader::read_from_prefix(&buf[at..]).unwrap();
        at += 8;
        let data = if h.flags & abi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
            Vec::new()
        } else {
            at += 4;
            buf[at - 4..at].to_vec()
        };
        out.push((h.flags, h.sequence, data));
    }
    out
}

fn virt(id: u32) -> Vec<u8> {
    id.to_ne_bytes().to_vec()
}

const LOST: u32 = abi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS;

#[test]
fn viommu_alloc_checks_in_kernel_order() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel = t::IOMMU_VIOMMU_TYPE_SELFTEST;
    let mut none = |_: &[u8]| Ok(());
    assert_eq!(errno(viommu_alloc(ctx, 1, sel, f.dev, f.parent, None, &mut none)), Errno::EOPNOTSUPP);
    assert_eq!(
        errno(viommu_alloc(ctx, 0, abi::IOMMU_VIOMMU_TYPE_DEFAULT, f.dev, f.parent, None, &mut none)),
        Errno::EOPNOTSUPP
    );
    assert_eq!(errno(viommu_alloc(ctx, 0, sel, 0, f.parent, None, &mut none)), Errno::ENOENT);
    assert_eq!(errno(viommu_alloc(ctx, 0, 0xdead, f.dev, f.parent, None, &mut none)), Errno::EOPNOTSUPP);
    // The type is checked before the HWPT.
    assert_eq!(errno(viommu_alloc(ctx, 0, 0xdead, f.dev, 0, None, &mut none)), Errno::EOPNOTSUPP);
    assert_eq!(errno(viommu_alloc(ctx, 0, sel, f.dev, 0, None, &mut none)), Errno::ENOENT);
    // An IOAS is not a paging HWPT.
    assert_eq!(errno(viommu_alloc(ctx, 0, sel, f.dev, f.ioas, None, &mut none)), Errno::ENOENT);
    let plain = hwpt_alloc(ctx, f.dev, f.ioas, 0, 0, None).unwrap();
    assert_eq!(errno(viommu_alloc(ctx, 0, sel, f.dev, plain, None, &mut none)), Errno::EINVAL);
    ctx.destroy(plain).unwrap();
    // The parent is held by the vIOMMU, the vIOMMU by its nested HWPT.
    assert_eq!(errno(ctx.destroy(f.parent)), Errno::EBUSY);
    assert_eq!(errno(ctx.destroy(f.viommu)), Errno::EBUSY);
    ctx.destroy(f.nested).unwrap();
    ctx.destroy(f.viommu).unwrap();
    ctx.destroy(f.parent).unwrap();
    // Failed allocations left no IDs behind.
    let again = viommu_alloc_with(
        ctx,
        f.dev,
        hwpt_alloc(ctx, f.dev, f.ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, 0, None).unwrap(),
        sel,
        None,
    );
    assert!(again.is_ok());
}

#[test]
fn viommu_data_loops_back() {
    let f = fixture();
    let sel = t::IOMMU_VIOMMU_TYPE_SELFTEST;
    let mut data = t::IommuViommuSelftest { in_data: 0xbeef, ..Default::default() }.as_bytes().to_vec();
    let id = viommu_alloc_with(&f.ctx, f.dev, f.parent, sel, Some(&mut data)).unwrap();
    let out = t::IommuViommuSelftest::read_from_bytes(&data).unwrap();
    assert_eq!(out.out_data, 0xbeef);
    assert_eq!(out.out_mmap_length, 2 * uiommufd_hw::mock::HOST_PAGE_SIZE);
    assert!(out.out_mmap_offset >= ps() && out.out_mmap_offset.is_multiple_of(ps()));
    let v = f.ctx.get::<Viommu>(id).unwrap();
    let mock = v.driver().unwrap().as_ref().any_domain().downcast_ref::<uiommufd_hw::mock::MockViommu>().unwrap();
    assert_eq!(mock.page_word(), 0xbeef);
    assert_eq!(mock.mmap_region(), Some((out.out_mmap_offset, out.out_mmap_length)));
    drop(v);
    // Destroying the vIOMMU destroys its region (and closes its memory):
    // the offset no longer maps, and nothing is left registered.
    let regions = f.ctx.mmap_space().len();
    f.ctx.destroy(id).unwrap();
    assert_eq!(f.ctx.mmap_space().len(), regions - 1);
    assert!(f.ctx.mmap_space().lookup(out.out_mmap_offset, out.out_mmap_length).is_err());
    // Too short to hold `out_data`.
    let mut short = vec![0u8; 4];
    assert_eq!(errno(viommu_alloc_with(&f.ctx, f.dev, f.parent, sel, Some(&mut short))), Errno::EINVAL);
    // A failed write-back fails the allocation and leaves nothing.
    let before = f.ctx.objects().len();
    let input = t::IommuViommuSelftest::default().as_bytes().to_vec();
    let mut reader = move |b: &mut [u8]| {
        b.copy_from_slice(&input[..b.len()]);
        Ok(())
    };
    let user = Some(UserData { data_type: sel, len: 24, reader: &mut reader });
    let mut fail = |_: &[u8]| Err(Errno::EFAULT);
    assert_eq!(errno(viommu_alloc(&f.ctx, 0, sel, f.dev, f.parent, user, &mut fail)), Errno::EFAULT);
    assert_eq!(f.ctx.objects().len(), before);
}

#[test]
fn nested_hwpt_on_a_viommu() {
    let f = fixture();
    let ctx = &f.ctx;
    let data = nested_data();
    // Flags other than FAULT_ID_VALID/PASID, and missing data.
    assert_eq!(errno(hwpt_alloc(ctx, f.dev, f.viommu, 1 << 31, 0, Some(&data))), Errno::EOPNOTSUPP);
    assert_eq!(
        errno(hwpt_alloc(ctx, f.dev, f.viommu, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, 0, Some(&data))),
        Errno::EOPNOTSUPP
    );
    // A fault queue that does not exist, after the domain was built.
    assert_eq!(
        errno(hwpt_alloc(ctx, f.dev, f.viommu, abi::IOMMU_HWPT_FAULT_ID_VALID, u32::MAX, Some(&data))),
        Errno::ENOENT
    );
    let (fp, fault) = crate::fault::fault_alloc(ctx, 0).unwrap();
    let fault_id = fp.id();
    fp.publish(fault);
    let iopf = hwpt_alloc(ctx, f.dev, f.viommu, abi::IOMMU_HWPT_FAULT_ID_VALID, fault_id, Some(&data)).unwrap();
    // No vDEVICE yet: the mock refuses to attach its nested domain.
    assert_eq!(errno(st::mock_domain_replace(ctx, f.stdev, iopf)), Errno::ENOENT);
    let vdev_id = vdev(ctx, f.viommu, f.dev, 0x99).unwrap();
    assert_eq!(st::mock_domain_replace(ctx, f.stdev, iopf).unwrap(), iopf);
    assert_eq!(errno(ctx.destroy(iopf)), Errno::EBUSY);
    st::trigger_iopf(ctx, f.dev, 0, 1, abi::IOMMU_PGFAULT_PERM_READ, 0).unwrap();
    assert_eq!(ctx.get::<crate::fault::Fault>(fault_id).unwrap().pending(), (1, 0));
    st::mock_domain_replace(ctx, f.stdev, f.ioas).unwrap();
    ctx.destroy(iopf).unwrap();
    ctx.destroy(fault_id).unwrap();
    ctx.destroy(vdev_id).unwrap();
}

#[test]
fn vdevice_rules_and_events() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel_q = t::IOMMU_VEVENTQ_TYPE_SELFTEST;
    assert_eq!(errno(vdevice_alloc(ctx, 0, f.dev, 0x99)), Errno::ENOENT);
    assert_eq!(errno(vdevice_alloc(ctx, f.viommu, 0, 0x99)), Errno::ENOENT);
    // Must allocate a vDEVICE before attaching to a nested HWPT.
    assert_eq!(errno(st::mock_domain_replace(ctx, f.stdev, f.nested)), Errno::ENOENT);

    let (qid, q) = veventq(ctx, f.viommu, sel_q, 2).unwrap();
    assert_eq!(errno(veventq(ctx, f.viommu, sel_q, 2)), Errno::EEXIST);
    let v99 = vdev(ctx, f.viommu, f.dev, 0x99).unwrap();
    st::mock_domain_replace(ctx, f.stdev, f.nested).unwrap();
    st::trigger_vevent(ctx, f.dev).unwrap();
    assert_eq!(read_all(&q, 12), vec![(0, 0, virt(0x99))]);
    // One vDEVICE per device.
    assert_eq!(errno(vdevice_alloc(ctx, f.viommu, f.dev, 0x99)), Errno::EEXIST);
    assert_eq!(errno(vdevice_alloc(ctx, f.viommu, f.dev, 0x77)), Errno::EEXIST);
    st::mock_domain_replace(ctx, f.stdev, f.ioas).unwrap();
    // Off the nested domain the device reports nothing.
    assert_eq!(errno(st::trigger_vevent(ctx, f.dev)), Errno::ENOENT);
    ctx.destroy(v99).unwrap();

    // One device per virtual ID.
    let md2 = mock_domain(ctx, f.ioas, 0).unwrap();
    let dev2 = md2.idev_id;
    md2.publish();
    let v88 = vdev(ctx, f.viommu, f.dev, 0x88).unwrap();
    assert_eq!(errno(vdevice_alloc(ctx, f.viommu, dev2, 0x88)), Errno::EEXIST);
    assert_eq!(f.ctx.get::<Viommu>(f.viommu).unwrap().virt_ids(), vec![0x88]);

    st::mock_domain_replace(ctx, f.stdev, f.nested).unwrap();
    // Depth 2: the third event is lost, and the marker carries its number.
    for _ in 0..3 {
        st::trigger_vevent(ctx, f.dev).unwrap();
    }
    assert_eq!(q.pending(), (2, true));
    assert_eq!(read_all(&q, 3 * 12), vec![(0, 1, virt(0x88)), (0, 2, virt(0x88)), (LOST, 3, vec![])]);
    assert_eq!(q.pending(), (0, false));
    // The loss is over once read.
    st::trigger_vevent(ctx, f.dev).unwrap();
    assert_eq!(read_all(&q, 12), vec![(0, 4, virt(0x88))]);
    assert_eq!(read_all(&q, 12), vec![]);

    // Overflow again, read one event, then a new event replaces the marker
    // at the tail: the loss shows only as a gap in the numbers.
    for _ in 0..3 {
        st::trigger_vevent(ctx, f.dev).unwrap();
    }
    assert_eq!(read_all(&q, 12), vec![(0, 5, virt(0x88))]);
    st::trigger_vevent(ctx, f.dev).unwrap();
    assert_eq!(q.pending(), (2, false));
    assert_eq!(read_all(&q, 100), vec![(0, 6, virt(0x88)), (0, 8, virt(0x88))]);

    // Buffers: a record is never split; a first event that does not fit
    // whole is EINVAL, as is a buffer shorter than a header (7.3's
    // iommufd_veventq_fops_read); the marker needs only its header.
    st::trigger_vevent(ctx, f.dev).unwrap();
    assert_eq!(q.read(11, |_, _| Ok(())).unwrap_err().errno, Errno::EINVAL);
    assert_eq!(q.read(7, |_, _| Ok(())).unwrap_err().errno, Errno::EINVAL);
    assert_eq!(read_all(&q, 12), vec![(0, 9, virt(0x88))]);
    assert_eq!(q.read(0, |_, _| Ok(())).unwrap_err().errno, Errno::EINVAL, "even when empty");
    assert_eq!(read_all(&q, 8), vec![], "an empty queue reads 0 bytes");
    for _ in 0..3 {
        st::trigger_vevent(ctx, f.dev).unwrap();
    }
    assert_eq!(read_all(&q, 24 + 8), vec![(0, 10, virt(0x88)), (0, 11, virt(0x88)), (LOST, 12, vec![])]);
    // A record that cannot be written stays queued.
    st::trigger_vevent(ctx, f.dev).unwrap();
    assert_eq!(q.read(12, |_, _| Err(Errno::EFAULT)).unwrap_err().errno, Errno::EFAULT);
    assert_eq!(read_all(&q, 12), vec![(0, 13, virt(0x88))]);

    // The vIOMMU stays while its queue, vDEVICE and nested HWPT exist.
    assert_eq!(errno(ctx.destroy(f.viommu)), Errno::EBUSY);
    st::mock_domain_replace(ctx, f.stdev, f.ioas).unwrap();
    ctx.destroy(v88).unwrap();
    drop(q);
    ctx.destroy(qid).unwrap();
    // Without a queue of the type, reporting is EOPNOTSUPP.
    let v = vdev(ctx, f.viommu, f.dev, 0x66).unwrap();
    st::mock_domain_replace(ctx, f.stdev, f.nested).unwrap();
    assert_eq!(errno(st::trigger_vevent(ctx, f.dev)), Errno::EOPNOTSUPP);
    st::mock_domain_replace(ctx, f.stdev, f.ioas).unwrap();
    ctx.destroy(v).unwrap();
    ctx.destroy(f.nested).unwrap();
    ctx.destroy(f.viommu).unwrap();
}

#[test]
fn veventq_alloc_checks_and_sequence_wrap() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel_q = t::IOMMU_VEVENTQ_TYPE_SELFTEST;
    assert_eq!(errno(veventq_alloc(ctx, 1, 0, f.viommu, sel_q, 2)), Errno::EOPNOTSUPP);
    assert_eq!(errno(veventq_alloc(ctx, 0, 1, f.viommu, sel_q, 2)), Errno::EOPNOTSUPP);
    assert_eq!(errno(veventq_alloc(ctx, 0, 0, f.viommu, abi::IOMMU_VEVENTQ_TYPE_DEFAULT, 2)), Errno::EOPNOTSUPP);
    assert_eq!(errno(veventq_alloc(ctx, 0, 0, f.viommu, sel_q, 0)), Errno::EINVAL);
    assert_eq!(errno(veventq_alloc(ctx, 0, 0, 0, sel_q, 2)), Errno::ENOENT);
    // Another type may live next to it.
    let (a, qa) = veventq(ctx, f.viommu, sel_q, 4).unwrap();
    let (b, _qb) = veventq(ctx, f.viommu, abi::IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 4).unwrap();
    // Sequence numbers wrap from i32::MAX to 0.
    qa.set_sequence_for_test(i32::MAX as u32);
    let v = f.ctx.get::<Viommu>(f.viommu).unwrap();
    v.report_event(sel_q, &virt(1)).unwrap();
    v.report_event(sel_q, &virt(2)).unwrap();
    assert_eq!(v.report_event(sel_q, &[]), Err(Errno::EINVAL));
    assert_eq!(read_all(&qa, 24), vec![(0, i32::MAX as u32, virt(1)), (0, 0, virt(2))]);
    drop(v);
    drop(qa);
    ctx.destroy(a).unwrap();
    ctx.destroy(b).unwrap();
}

#[test]
fn viommu_invalidation_reaches_device_caches() {
    let f = fixture();
    let ctx = &f.ctx;
    let ty = t::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
    let v99 = vdev(ctx, f.viommu, f.dev, 0x99).unwrap();
    let check_all = |val: u32| (0..t::MOCK_DEV_CACHE_NUM).all(|i| st::dev_check_cache(ctx, f.dev, i, val).is_ok());
    assert!(check_all(t::IOMMU_TEST_DEV_CACHE_DEFAULT));
    assert_eq!(
        errno(st::dev_check_cache(ctx, f.dev, t::MOCK_DEV_CACHE_ID_MAX + 1, t::IOMMU_TEST_DEV_CACHE_DEFAULT)),
        Errno::EINVAL
    );
    let inv = |flags: u32, vdev_id: u32, cache_id: u32| t::IommuViommuInvalidateSelftest { flags, vdev_id, cache_id };
    // Runs one request array; returns (result, entry_num).
    let run = |data_type: u32, entry_len: u32, reqs: &[t::IommuViommuInvalidateSelftest]| {
        let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.as_bytes().to_vec()).collect();
        let mut reader = |i: u32, buf: &mut [u8]| {
            buf.fill(0);
            let at = (i * entry_len) as usize;
            let n = (entry_len as usize).min(buf.len());
            buf[..n].copy_from_slice(&bytes[at..at + n]);
            Ok(())
        };
        let mut array = UserDataArray { data_type, entry_len, entry_num: reqs.len() as u32, reader: &mut reader };
        let r = hwpt::invalidate(ctx, f.viommu, &mut array).map_err(|e| e.errno);
        (r, array.entry_num)
    };
    let sz = 12;
    // An empty array only checks the type.
    assert_eq!(run(ty, sz, &[]), (Ok(()), 0));
    assert_eq!(run(t::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID, sz, &[inv(0, 0x99, 0)]), (Err(Errno::EINVAL), 0));
    assert_eq!(run(ty, sz, &[inv(0xffff_ffff, 0x99, 0)]), (Err(Errno::EOPNOTSUPP), 0));
    assert_eq!(run(ty, sz, &[inv(0, 0x99, t::MOCK_DEV_CACHE_ID_MAX + 1)]), (Err(Errno::EINVAL), 0));
    assert_eq!(run(ty, sz, &[inv(0, 0x9, 0)]), (Err(Errno::EINVAL), 0));
    // A short entry is zero-extended: vdev_id 0 is unknown.
    assert_eq!(run(ty, 1, &[inv(0, 0x99, 0)]), (Err(Errno::EINVAL), 0));
    assert!(check_all(t::IOMMU_TEST_DEV_CACHE_DEFAULT));
    // The first request runs, the second is bad: entry_num reports 1.
    assert_eq!(run(ty, sz, &[inv(0, 0x99, 0), inv(0xffff_ffff, 0x99, 1)]), (Err(Errno::EOPNOTSUPP), 1));
    assert_eq!(run(ty, sz, &[inv(0, 0x99, 0), inv(0, 0x99, t::MOCK_DEV_CACHE_ID_MAX + 1)]), (Err(Errno::EINVAL), 1));
    st::dev_check_cache(ctx, f.dev, 0, 0).unwrap();
    st::dev_check_cache(ctx, f.dev, 1, t::IOMMU_TEST_DEV_CACHE_DEFAULT).unwrap();
    assert_eq!(run(ty, sz, &[inv(0, 0x99, 1)]), (Ok(()), 1));
    assert_eq!(run(ty, sz, &[inv(0, 0x99, 2), inv(0, 0x99, 3)]), (Ok(()), 2));
    assert!(check_all(0));
    assert_eq!(run(ty, sz, &[inv(t::IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0)]), (Ok(()), 1));
    // An unknown ID, and an ID that is no vIOMMU or nested HWPT.
    let mut nothing = |_: u32, _: &mut [u8]| Ok(());
    let mut array = UserDataArray { data_type: ty, entry_len: sz, entry_num: 1, reader: &mut nothing };
    assert_eq!(errno(hwpt::invalidate(ctx, 0, &mut array)), Errno::ENOENT);
    assert_eq!(array.entry_num, 0);
    ctx.destroy(v99).unwrap();
}

#[test]
fn unbinding_tombstones_the_vdevice() {
    let f = fixture();
    let ctx = &f.ctx;
    let v = vdev(ctx, f.viommu, f.dev, 0x99).unwrap();
    st::mock_domain_replace(ctx, f.stdev, f.nested).unwrap();
    // The device may go while it has a vDEVICE; the vDEVICE goes with it.
    ctx.destroy(f.stdev).unwrap();
    assert_eq!(errno(ctx.destroy(v)), Errno::ENOENT);
    assert_eq!(errno(ctx.destroy(f.dev)), Errno::ENOENT);
    assert!(ctx.get::<Viommu>(f.viommu).unwrap().virt_ids().is_empty());
    // The tombstoned ID is not handed out again, though lower and higher
    // ones are.
    let fresh: Vec<ObjectId> = (0..8).map(|_| ctx.ioas_alloc().unwrap()).collect();
    assert!(fresh.iter().any(|&i| i < v) && fresh.iter().any(|&i| i > v));
    assert!(!fresh.contains(&v));
    // Nothing holds the vIOMMU but its nested HWPT now.
    ctx.destroy(f.nested).unwrap();
    ctx.destroy(f.viommu).unwrap();
    ctx.destroy(f.parent).unwrap();
}

#[test]
fn closing_with_everything_alive_tears_down() {
    let f = fixture();
    let ctx = &f.ctx;
    let _v = vdev(ctx, f.viommu, f.dev, 0x99).unwrap();
    st::mock_domain_replace(ctx, f.stdev, f.nested).unwrap();
    let (_q, queue) = veventq(ctx, f.viommu, t::IOMMU_VEVENTQ_TYPE_SELFTEST, 2).unwrap();
    st::trigger_vevent(ctx, f.dev).unwrap();
    let buf = buffer(1);
    let iova = ctx.ioas_map(f.ioas, map_flags::READABLE | map_flags::WRITEABLE, buf, ps(), 0).unwrap();
    hw_queue(ctx, f.viommu, t::IOMMU_HW_QUEUE_TYPE_SELFTEST, 0, iova, ps()).unwrap();
    drop(queue);
    ctx.objects().destroy_all();
    assert!(ctx.objects().is_empty());
    st::md_check_refs(buf, ps(), 0).unwrap();
}

#[test]
fn hw_queue_rules() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel = t::IOMMU_HW_QUEUE_TYPE_SELFTEST;
    let base = t::MOCK_APERTURE_START;
    let p = ps();
    assert_eq!(
        errno(hw_queue_alloc(ctx, 0, f.viommu, abi::IOMMU_HW_QUEUE_TYPE_DEFAULT, 0, base, p)),
        Errno::EOPNOTSUPP
    );
    assert_eq!(errno(hw_queue_alloc(ctx, 1, f.viommu, sel, 0, base, p)), Errno::EOPNOTSUPP);
    assert_eq!(errno(hw_queue_alloc(ctx, 0, f.viommu, sel, 0, base, 0)), Errno::EINVAL);
    assert_eq!(errno(hw_queue_alloc(ctx, 0, f.viommu, sel, 0, u64::MAX, p)), Errno::EOVERFLOW);
    assert_eq!(errno(hw_queue_alloc(ctx, 0, 0, sel, 0, base, p)), Errno::ENOENT);
    assert_eq!(errno(hw_queue_alloc(ctx, 0, f.viommu, 0x1234, 0, base, p)), Errno::EOPNOTSUPP);
    // Nothing is mapped there yet.
    assert_eq!(errno(hw_queue_alloc(ctx, 0, f.viommu, sel, 0, base, p)), Errno::ENOENT);
    let before = ctx.objects().len();

    let buf = buffer(2);
    let rw = map_flags::READABLE | map_flags::WRITEABLE | map_flags::FIXED_IOVA;
    ctx.ioas_map(f.ioas, rw, buf, p, base).unwrap();
    ctx.ioas_map(f.ioas, rw, buf + p, p, base + p).unwrap();
    let mapped = pin_count(buf);
    // Index 1 before 0, and past the maximum.
    assert_eq!(errno(hw_queue_alloc(ctx, 0, f.viommu, sel, 1, base, p)), Errno::EIO);
    assert_eq!(errno(hw_queue_alloc(ctx, 0, f.viommu, sel, t::IOMMU_TEST_HW_QUEUE_MAX, base, p)), Errno::EINVAL);
    assert_eq!(ctx.objects().len(), before, "failed allocations leave no object");
    assert_eq!(pin_count(buf), mapped, "failed allocations leave no pin");

    let q0 = hw_queue(ctx, f.viommu, sel, 0, base, p).unwrap();
    assert_eq!(errno(hw_queue_alloc(ctx, 0, f.viommu, sel, 0, base, p)), Errno::EEXIST);
    // The internal access took the next ID and cannot be destroyed.
    let access_id = ctx.get::<HwQueue>(q0).unwrap().access_id().unwrap();
    assert_eq!(access_id, q0 + 1);
    assert_eq!(errno(ctx.destroy(access_id)), Errno::EBUSY);
    // The second page is not pinned, so it unmaps; the pinned first page is
    // locked by the queue (EBUSY at once, and the area stays usable).
    ctx.ioas_unmap(f.ioas, base + p, p).unwrap();
    assert_eq!(ctx.ioas_unmap(f.ioas, base, p).unwrap_err().errno, Errno::EBUSY);
    // Index 1, not page aligned, inside the pinned page.
    let q1 = hw_queue(ctx, f.viommu, sel, 1, base + p / 2, p / 2).unwrap();
    assert_eq!(ctx.get::<HwQueue>(q1).unwrap().range(), (base + p / 2, p / 2));
    // Queue 1 depends on queue 0, and both on the vIOMMU.
    assert_eq!(errno(ctx.destroy(q0)), Errno::EBUSY);
    assert_eq!(errno(ctx.destroy(f.viommu)), Errno::EBUSY);
    // The pinned page still cannot be unmapped.
    assert_eq!(ctx.ioas_unmap(f.ioas, base, p).unwrap_err().errno, Errno::EBUSY);
    // Descending order works and releases every pin.
    ctx.destroy(q1).unwrap();
    ctx.destroy(q0).unwrap();
    assert_eq!(errno(ctx.destroy(access_id)), Errno::ENOENT);
    assert_eq!(pin_count(buf), mapped);
    ctx.ioas_unmap(f.ioas, base, p).unwrap();
    st::md_check_refs(buf, 2 * p, 0).unwrap();
}

#[test]
fn hw_queue_memory_must_be_contiguous() {
    let f = fixture();
    let ctx = &f.ctx;
    let sel = t::IOMMU_HW_QUEUE_TYPE_SELFTEST;
    let base = t::MOCK_APERTURE_START;
    let p = ps();
    let rw = map_flags::READABLE | map_flags::WRITEABLE | map_flags::FIXED_IOVA;
    // Two separate buffers, the higher IOVA pinned first: their frames do
    // not follow each other in IOVA order.
    let (a, b) = (buffer(1), buffer(1));
    ctx.ioas_map(f.ioas, rw, b, p, base + p).unwrap();
    ctx.ioas_map(f.ioas, rw, a, p, base).unwrap();
    let (before, mapped) = (ctx.objects().len(), pin_count(a));
    assert_eq!(errno(hw_queue_alloc(ctx, 0, f.viommu, sel, 0, base, 2 * p)), Errno::EFAULT);
    assert_eq!((ctx.objects().len(), pin_count(a)), (before, mapped));
    // One page at a time is fine.
    let q = hw_queue(ctx, f.viommu, sel, 0, base + p, p).unwrap();
    ctx.destroy(q).unwrap();
}

#[test]
fn pasid_attach_rules() {
    for pasid_capable in [false, true] {
        pasid_attach_rules_variant(pasid_capable);
    }
}

fn pasid_attach_rules_variant(pasid_capable: bool) {
    let ctx = Iommufd::new();
    let ctx = &ctx;
    let ioas = ctx.ioas_alloc().unwrap();
    let md = mock_domain(ctx, ioas, t::MOCK_FLAGS_DEVICE_PASID).unwrap();
    let (stdev, dev) = (md.stdev_id, md.idev_id);
    md.publish();
    let no_pasid = (!pasid_capable).then(|| {
        let md = mock_domain(ctx, ioas, 0).unwrap();
        let id = md.stdev_id;
        md.publish();
        id
    });
    let check = |pasid: u32, hwpt: ObjectId| st::pasid_check_hwpt(ctx, stdev, pasid, hwpt);
    let data = nested_data();
    let pasid_flag = abi::IOMMU_HWPT_ALLOC_PASID;

    // Detaching what is not attached is no error.
    st::pasid_detach(ctx, stdev, 100).unwrap();
    let parent = hwpt_alloc(ctx, dev, ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, 0, None).unwrap();
    let nested0 = hwpt_alloc(ctx, dev, parent, pasid_flag, 0, Some(&data)).unwrap();
    let nested1 = hwpt_alloc(ctx, dev, parent, pasid_flag, 0, Some(&data)).unwrap();
    let viommu = viommu_alloc_with(ctx, dev, parent, t::IOMMU_VIOMMU_TYPE_SELFTEST, None).unwrap();
    hwpt_alloc(ctx, dev, viommu, pasid_flag, 0, Some(&data)).unwrap();
    let s2 = hwpt_alloc(ctx, dev, ioas, pasid_flag, 0, None).unwrap();

    // The RID on a HWPT that is not PASID capable: no PASID attaches.
    st::mock_domain_replace(ctx, stdev, parent).unwrap();
    assert_eq!(errno(st::pasid_attach(ctx, stdev, 100, s2)), Errno::EINVAL);
    // The RID on a PASID-capable HWPT: PASIDs attach, and then the RID
    // cannot move to one that is not.
    st::mock_domain_replace(ctx, stdev, s2).unwrap();
    assert_eq!(st::pasid_attach(ctx, stdev, 100, nested0).unwrap(), nested0);
    assert_eq!(errno(st::mock_domain_replace(ctx, stdev, parent)), Errno::EINVAL);
    st::pasid_detach(ctx, stdev, 100).unwrap();
    check(100, 0).unwrap();

    if let Some(np) = no_pasid {
        // A device without PASIDs may use PASID-capable HWPTs on its RID but
        // attaches no PASID at all.
        st::mock_domain_replace(ctx, np, nested0).unwrap();
        st::mock_domain_replace(ctx, np, ioas).unwrap();
        assert_eq!(errno(st::pasid_attach(ctx, np, 100, parent)), Errno::EINVAL);
        assert_eq!(errno(st::pasid_attach(ctx, np, 100, s2)), Errno::EINVAL);
    }

    assert_eq!(errno(st::pasid_attach(ctx, stdev, 100, parent)), Errno::EINVAL);
    check(100, 0).unwrap();
    // An IOAS would need an automatic domain, which is never PASID capable.
    assert_eq!(errno(st::pasid_attach(ctx, stdev, 100, ioas)), Errno::EINVAL);
    check(100, 0).unwrap();
    st::pasid_attach(ctx, stdev, 100, s2).unwrap();
    check(100, s2).unwrap();
    assert_eq!(errno(check(100, nested0)), Errno::EINVAL);
    assert_eq!(errno(check(100, 0)), Errno::EINVAL);
    assert_eq!(errno(check(100, ioas)), Errno::EINVAL);
    assert_eq!(errno(check(100, 9999)), Errno::ENOENT);
    // Attaching an attached PASID is EBUSY, with another HWPT or the same.
    assert_eq!(errno(st::pasid_attach(ctx, stdev, 100, nested0)), Errno::EBUSY);
    st::pasid_detach(ctx, stdev, 100).unwrap();
    st::pasid_attach(ctx, stdev, 100, nested0).unwrap();
    check(100, nested0).unwrap();
    assert_eq!(errno(st::pasid_attach(ctx, stdev, 100, nested0)), Errno::EBUSY);
    // An attached HWPT is busy.
    assert_eq!(errno(ctx.destroy(nested0)), Errno::EBUSY);
    st::pasid_detach(ctx, stdev, 100).unwrap();

    // Replace.
    assert_eq!(errno(st::pasid_replace(ctx, stdev, 200, s2)), Errno::EINVAL);
    st::pasid_attach(ctx, stdev, 200, s2).unwrap();
    assert_eq!(errno(st::pasid_replace(ctx, stdev, 200, ioas)), Errno::EINVAL);
    check(200, s2).unwrap();
    assert_eq!(st::pasid_replace(ctx, stdev, 200, nested0).unwrap(), nested0);
    check(200, nested0).unwrap();
    st::pasid_replace(ctx, stdev, 200, nested1).unwrap();
    check(200, nested1).unwrap();
    st::pasid_detach(ctx, stdev, 200).unwrap();

    // The reserved PASID: the mock fails the replace after an attach, and
    // the old HWPT stays.
    let rsv = t::IOMMU_TEST_PASID_RESERVED;
    st::pasid_attach(ctx, stdev, rsv, s2).unwrap();
    assert_eq!(errno(st::pasid_replace(ctx, stdev, rsv, nested0)), Errno::ENOMEM);
    check(rsv, s2).unwrap();
    st::pasid_detach(ctx, stdev, rsv).unwrap();
    // Detaching disarmed it: attach and replace work in a row again... once.
    st::pasid_attach(ctx, stdev, rsv, s2).unwrap();
    st::pasid_detach(ctx, stdev, rsv).unwrap();

    // Faults through a PASID.
    let (fp, fault) = crate::fault::fault_alloc(ctx, 0).unwrap();
    let fault_id = fp.id();
    fp.publish(fault);
    let iopf =
        hwpt_alloc(ctx, dev, parent, abi::IOMMU_HWPT_FAULT_ID_VALID | pasid_flag, fault_id, Some(&data)).unwrap();
    st::pasid_attach(ctx, stdev, 2048, iopf).unwrap();
    check(2048, iopf).unwrap();
    st::trigger_iopf(ctx, dev, 2048, 1, abi::IOMMU_PGFAULT_PERM_READ, 0).unwrap();
    assert_eq!(ctx.get::<crate::fault::Fault>(fault_id).unwrap().pending(), (1, 0));
    st::pasid_replace(ctx, stdev, 2048, s2).unwrap();
    // The pending group was answered when the PASID left the HWPT.
    assert_eq!(ctx.get::<crate::fault::Fault>(fault_id).unwrap().pending(), (0, 0));
    check(2048, s2).unwrap();
    st::pasid_detach(ctx, stdev, 2048).unwrap();
    ctx.destroy(iopf).unwrap();
    ctx.destroy(fault_id).unwrap();
    st::mock_domain_replace(ctx, stdev, ioas).unwrap();

    // PASIDs beyond the device's width.
    assert_eq!(errno(st::pasid_attach(ctx, stdev, 1 << t::MOCK_PASID_WIDTH, s2)), Errno::EINVAL);
    assert_eq!(errno(st::pasid_attach(ctx, 9999, 100, s2)), Errno::ENOENT);
}
