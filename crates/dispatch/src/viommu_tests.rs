//! The vIOMMU family through the real ioctl path: structs in this process's
//! memory, descriptors from a [`LocalFds`] host, records read through the
//! served vEVENTQ file. The sequences follow what mainline's selftests
//! (`iommufd_viommu`, `iommufd_device_pasid`) check.

use std::sync::Arc;

use uiommufd_abi::test_cmd::{self as t, IommuTestCmd};
use uiommufd_abi::{self as abi, Errno};
use uiommufd_core::Iommufd;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::{iommufd_ioctl, FdHost, LocalFds};

struct Env {
    ctx: Arc<Iommufd>,
    fds: LocalFds,
}

fn page() -> u64 {
    uiommufd_memory::page_size() as u64
}

/// `pages` fresh pages of private anonymous memory (leaked).
fn buffer(pages: u64) -> u64 {
    let len = (pages * page()) as usize;
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

impl Env {
    fn new() -> Env {
        Env { ctx: Iommufd::new(), fds: LocalFds::default() }
    }

    fn ioctl<T: IntoBytes + FromBytes>(&self, req: u32, arg: &mut T) -> Result<i32, Errno> {
        iommufd_ioctl(&self.ctx, &self.fds, req as u64, arg.as_mut_bytes().as_mut_ptr() as u64).map_err(|e| e.errno)
    }

    fn test_cmd<P: IntoBytes + FromBytes + Immutable>(&self, op: u32, id: u32, payload: &mut P) -> Result<(), Errno> {
        let mut cmd = IommuTestCmd::new(op);
        cmd.id = id;
        cmd.set_payload(payload);
        self.ioctl(t::IOMMU_TEST_CMD, &mut cmd)?;
        *payload = cmd.payload_as();
        Ok(())
    }

    fn destroy(&self, id: u32) -> Result<(), Errno> {
        self.ioctl(abi::IOMMU_DESTROY, &mut abi::IommuDestroy { size: 8, id }).map(drop)
    }

    fn ioas_alloc(&self) -> u32 {
        let mut c = abi::IommuIoasAlloc { size: 12, ..Default::default() };
        self.ioctl(abi::IOMMU_IOAS_ALLOC, &mut c).unwrap();
        c.out_ioas_id
    }

    fn map(&self, ioas: u32, va: u64, length: u64, iova: u64) {
        let mut c = abi::IommuIoasMap {
            size: core::mem::size_of::<abi::IommuIoasMap>() as u32,
            flags: abi::IOMMU_IOAS_MAP_FIXED_IOVA | abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            user_va: va,
            length,
            iova,
            ..Default::default()
        };
        self.ioctl(abi::IOMMU_IOAS_MAP, &mut c).unwrap();
    }

    fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<i32, Errno> {
        let mut c = abi::IommuIoasUnmap { size: 24, ioas_id: ioas, iova, length };
        self.ioctl(abi::IOMMU_IOAS_UNMAP, &mut c)
    }

    /// `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`: (stdev, hwpt, idev).
    fn mock_domain(&self, pt: u32, dev_flags: u32) -> (u32, u32, u32) {
        let mut c = t::TestMockDomainFlags { dev_flags, ..Default::default() };
        self.test_cmd(t::IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt, &mut c).unwrap();
        (c.out_stdev_id, c.out_hwpt_id, c.out_idev_id)
    }

    fn replace(&self, stdev: u32, pt: u32) -> Result<u32, Errno> {
        let mut c = t::TestMockDomainReplace { pt_id: pt };
        self.test_cmd(t::IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, &mut c).map(|()| c.pt_id)
    }

    fn hwpt_alloc(
        &self,
        dev: u32,
        pt: u32,
        flags: u32,
        fault: u32,
        data: Option<&mut t::IommuHwptSelftest>,
    ) -> Result<u32, Errno> {
        let (data_type, data_len, data_uptr) = match data {
            Some(d) => (t::IOMMU_HWPT_DATA_SELFTEST, 8, d as *mut _ as u64),
            None => (abi::IOMMU_HWPT_DATA_NONE, 0, 0),
        };
        let mut c = abi::IommuHwptAlloc {
            size: core::mem::size_of::<abi::IommuHwptAlloc>() as u32,
            flags,
            dev_id: dev,
            pt_id: pt,
            data_type,
            data_len,
            data_uptr,
            fault_id: fault,
            ..Default::default()
        };
        self.ioctl(abi::IOMMU_HWPT_ALLOC, &mut c).map(|_| c.out_hwpt_id)
    }

    fn viommu_alloc(&self, dev: u32, hwpt: u32, ty: u32, data: Option<&mut [u8]>) -> Result<u32, Errno> {
        let (data_len, data_uptr) = match data {
            Some(d) => (d.len() as u32, d.as_mut_ptr() as u64),
            None => (0, 0),
        };
        let mut c = abi::IommuViommuAlloc {
            size: 40,
            type_: ty,
            dev_id: dev,
            hwpt_id: hwpt,
            data_len,
            data_uptr,
            ..Default::default()
        };
        self.ioctl(abi::IOMMU_VIOMMU_ALLOC, &mut c).map(|_| c.out_viommu_id)
    }

    fn vdevice_alloc(&self, viommu: u32, dev: u32, virt_id: u64) -> Result<u32, Errno> {
        let mut c = abi::IommuVdeviceAlloc { size: 24, viommu_id: viommu, dev_id: dev, virt_id, ..Default::default() };
        self.ioctl(abi::IOMMU_VDEVICE_ALLOC, &mut c).map(|_| c.out_vdevice_id)
    }

    /// `IOMMU_VEVENTQ_ALLOC`: (id, fd).
    fn veventq_alloc(&self, viommu: u32, ty: u32, depth: u32) -> Result<(u32, i32), Errno> {
        let mut c = abi::IommuVeventqAlloc {
            size: 32,
            viommu_id: viommu,
            type_: ty,
            veventq_depth: depth,
            ..Default::default()
        };
        self.ioctl(abi::IOMMU_VEVENTQ_ALLOC, &mut c).map(|_| (c.out_veventq_id, c.out_veventq_fd as i32))
    }

    fn hw_queue_alloc(&self, viommu: u32, ty: u32, index: u32, iova: u64, length: u64) -> Result<u32, Errno> {
        let mut c = abi::IommuHwQueueAlloc {
            size: 40,
            viommu_id: viommu,
            type_: ty,
            index,
            nesting_parent_iova: iova,
            length,
            ..Default::default()
        };
        self.ioctl(abi::IOMMU_HW_QUEUE_ALLOC, &mut c).map(|_| c.out_hw_queue_id)
    }

    fn trigger_vevents(&self, dev: u32, n: u32) -> Result<(), Errno> {
        for _ in 0..n {
            self.test_cmd(t::IOMMU_TEST_OP_TRIGGER_VEVENT, 0, &mut t::TestTriggerVevent { dev_id: dev })?;
        }
        Ok(())
    }

    fn check_cache(&self, dev: u32, id: u32, cache: u32) -> Result<(), Errno> {
        self.test_cmd(t::IOMMU_TEST_OP_DEV_CHECK_CACHE, dev, &mut t::TestCheckDevCache { id, cache })
    }

    /// `IOMMU_HWPT_INVALIDATE` on `id`: (result, entry_num written back).
    fn invalidate<E: IntoBytes + Immutable>(
        &self,
        id: u32,
        data_type: u32,
        entry_len: u32,
        reqs: &[E],
    ) -> (Result<i32, Errno>, u32) {
        let uptr = if reqs.is_empty() { 0 } else { reqs.as_bytes().as_ptr() as u64 };
        let mut c = abi::IommuHwptInvalidate {
            size: 32,
            hwpt_id: id,
            data_uptr: uptr,
            data_type,
            entry_len,
            entry_num: reqs.len() as u32,
            __reserved: 0,
        };
        let r = self.ioctl(abi::IOMMU_HWPT_INVALIDATE, &mut c);
        (r, c.entry_num)
    }

    fn pasid(&self, op: u32, stdev: u32, pasid: u32, pt: u32) -> Result<u32, Errno> {
        let mut c = t::TestPasidAttach { pasid, pt_id: pt };
        self.test_cmd(op, stdev, &mut c).map(|()| c.pt_id)
    }

    fn pasid_check(&self, stdev: u32, pasid: u32, hwpt: u32) -> Result<(), Errno> {
        self.test_cmd(t::IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev, &mut t::TestPasidCheck { pasid, hwpt_id: hwpt })
    }

    /// Read up to `count` bytes from served descriptor `fd`.
    fn read(&self, fd: i32, count: usize) -> Result<Vec<u8>, Errno> {
        let file = self.fds.get(fd).ok_or(Errno::EBADF)?;
        let mut buf = vec![0u8; count];
        let n = file.read(buf.as_mut_ptr() as u64, count, None).map_err(|e| e.errno)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// Whether the descriptor backing a served file is readable now.
fn readable(env: &Env, fd: i32) -> bool {
    let file = env.fds.get(fd).unwrap();
    let raw = file.readiness_fd().unwrap();
    let mut p = libc::pollfd { fd: raw, events: libc::POLLIN, revents: 0 };
    // SAFETY: polling one pollfd we own, without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}

/// Records `(flags, sequence, virt_id)` in a vEVENTQ read.
fn records(bytes: &[u8]) -> Vec<(u32, u32, Option<u32>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (h, _) = abi::IommufdVeventHeader::read_from_prefix(&bytes[at..]).unwrap();
        at += 8;
        if h.flags & abi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
            out.push((h.flags, h.sequence, None));
        } else {
            let (e, _) = t::IommuViommuEventSelftest::read_from_prefix(&bytes[at..]).unwrap();
            at += 4;
            out.push((h.flags, h.sequence, Some(e.virt_id)));
        }
    }
    out
}

/// The `iommufd_viommu` fixture (`mock_viommu` variant).
struct Fixture {
    env: Env,
    ioas: u32,
    stdev: u32,
    dev: u32,
    hwpt: u32,
    viommu: u32,
    nested: u32,
}

fn fixture() -> Fixture {
    let env = Env::new();
    let ioas = env.ioas_alloc();
    let (stdev, _, dev) = env.mock_domain(ioas, 0);
    let hwpt = env.hwpt_alloc(dev, ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, 0, None).unwrap();
    let viommu = env.viommu_alloc(dev, hwpt, t::IOMMU_VIOMMU_TYPE_SELFTEST, None).unwrap();
    let mut data = t::IommuHwptSelftest { iotlb: t::IOMMU_TEST_IOTLB_DEFAULT, pagetable_type: 0 };
    let nested = env.hwpt_alloc(dev, viommu, 0, 0, Some(&mut data)).unwrap();
    Fixture { env, ioas, stdev, dev, hwpt, viommu, nested }
}

#[test]
fn viommu_negative_tests() {
    let f = fixture();
    let env = &f.env;
    assert_eq!(env.viommu_alloc(f.dev, 0, t::IOMMU_VIOMMU_TYPE_SELFTEST, None), Err(Errno::ENOENT));
    let plain = env.hwpt_alloc(f.dev, f.ioas, 0, 0, None).unwrap();
    assert_eq!(env.viommu_alloc(f.dev, plain, t::IOMMU_VIOMMU_TYPE_SELFTEST, None), Err(Errno::EINVAL));
    env.destroy(plain).unwrap();
    assert_eq!(env.viommu_alloc(f.dev, f.hwpt, 0xdead, None), Err(Errno::EOPNOTSUPP));
    assert_eq!(env.destroy(f.hwpt), Err(Errno::EBUSY));
    assert_eq!(env.destroy(f.viommu), Err(Errno::EBUSY));
    // The `no_viommu` variant: no device at all.
    assert_eq!(env.viommu_alloc(0, 0, t::IOMMU_VIOMMU_TYPE_SELFTEST, None), Err(Errno::ENOENT));
    assert_eq!(env.vdevice_alloc(0, 0, 0x99), Err(Errno::ENOENT));
    // Flags are refused; the reserved field is not looked at (as mainline).
    let mut c = abi::IommuViommuAlloc {
        size: 40,
        flags: 1,
        type_: t::IOMMU_VIOMMU_TYPE_SELFTEST,
        dev_id: f.dev,
        hwpt_id: f.hwpt,
        ..Default::default()
    };
    assert_eq!(env.ioctl(abi::IOMMU_VIOMMU_ALLOC, &mut c), Err(Errno::EOPNOTSUPP));
    c.flags = 0;
    c.__reserved = 7;
    env.ioctl(abi::IOMMU_VIOMMU_ALLOC, &mut c).unwrap();
    env.destroy(c.out_viommu_id).unwrap();
}

#[test]
fn viommu_alloc_with_data() {
    let f = fixture();
    let env = &f.env;
    let mut data = t::IommuViommuSelftest { in_data: 0xbeef, ..Default::default() };
    let id = env.viommu_alloc(f.dev, f.hwpt, t::IOMMU_VIOMMU_TYPE_SELFTEST, Some(data.as_mut_bytes())).unwrap();
    assert_eq!(data.out_data, data.in_data);
    assert_eq!(data.out_mmap_length, 2 * 4096);
    assert_ne!(data.out_mmap_offset, 0);
    // Only `data_len` bytes are written back.
    let mut short = [0u8; 12];
    short[..4].copy_from_slice(&0x1234u32.to_ne_bytes());
    short[8..].fill(0xaa);
    let mut tail = [0xaau8; 4];
    tail.copy_from_slice(&short[8..]);
    let id2 = env.viommu_alloc(f.dev, f.hwpt, t::IOMMU_VIOMMU_TYPE_SELFTEST, Some(&mut short[..8])).unwrap();
    assert_eq!(u32::from_ne_bytes(short[4..8].try_into().unwrap()), 0x1234);
    assert_eq!(short[8..], tail);
    // Non-zero bytes past the known struct.
    let mut long = [0u8; 32];
    long[30] = 1;
    assert_eq!(env.viommu_alloc(f.dev, f.hwpt, t::IOMMU_VIOMMU_TYPE_SELFTEST, Some(&mut long)), Err(Errno::E2BIG));
    // A write-back that faults.
    let mut bad = abi::IommuViommuAlloc {
        size: 40,
        type_: t::IOMMU_VIOMMU_TYPE_SELFTEST,
        dev_id: f.dev,
        hwpt_id: f.hwpt,
        data_len: 24,
        data_uptr: read_only_zeros(),
        ..Default::default()
    };
    assert_eq!(env.ioctl(abi::IOMMU_VIOMMU_ALLOC, &mut bad), Err(Errno::EFAULT));
    env.destroy(id2).unwrap();
    env.destroy(id).unwrap();
}

#[test]
fn vdevice_alloc_and_events() {
    let f = fixture();
    let env = &f.env;
    let sel_q = t::IOMMU_VEVENTQ_TYPE_SELFTEST;
    let mut prev_seq: i64 = -1;
    // Must allocate a vDEVICE before attaching to a nested HWPT.
    assert_eq!(env.replace(f.stdev, f.nested), Err(Errno::ENOENT));
    let (qid, qfd) = env.veventq_alloc(f.viommu, sel_q, 2).unwrap();
    assert_eq!(env.veventq_alloc(f.viommu, sel_q, 2), Err(Errno::EEXIST));
    assert!(!readable(env, qfd));
    let vdev = env.vdevice_alloc(f.viommu, f.dev, 0x99).unwrap();
    env.replace(f.stdev, f.nested).unwrap();
    env.trigger_vevents(f.dev, 1).unwrap();
    assert!(readable(env, qfd));
    let got = records(&env.read(qfd, 12).unwrap());
    assert_eq!(got, vec![(0, 0, Some(0x99))]);
    assert_eq!(got[0].1 as i64 - prev_seq, 1);
    prev_seq = got[0].1 as i64;
    assert!(!readable(env, qfd));
    assert_eq!(env.vdevice_alloc(f.viommu, f.dev, 0x99), Err(Errno::EEXIST));
    env.replace(f.stdev, f.ioas).unwrap();
    env.destroy(vdev).unwrap();

    // Again with 0x88; three events overflow a queue of depth 2.
    let vdev = env.vdevice_alloc(f.viommu, f.dev, 0x88).unwrap();
    env.replace(f.stdev, f.nested).unwrap();
    env.trigger_vevents(f.dev, 3).unwrap();
    let got = records(&env.read(qfd, 3 * 12).unwrap());
    assert_eq!(got, vec![(0, 1, Some(0x88)), (0, 2, Some(0x88)), (abi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 3, None)]);
    assert_eq!(got[0].1 as i64 - prev_seq, 1);
    prev_seq = got[2].1 as i64;
    // The overflow is gone after those reads.
    env.trigger_vevents(f.dev, 1).unwrap();
    let got = records(&env.read(qfd, 12).unwrap());
    assert_eq!(got, vec![(0, 4, Some(0x88))]);
    assert_eq!(got[0].1 as i64 - prev_seq, 1);
    // Nothing waiting reads 0 bytes.
    assert_eq!(env.read(qfd, 12).unwrap(), Vec::<u8>::new());

    // The queue file: no write, no position, no ioctl.
    let file = env.fds.get(qfd).unwrap();
    let mut b = [0u8; 12];
    assert_eq!(file.write(b.as_mut_ptr() as u64, 12, None).unwrap_err().errno, Errno::EINVAL);
    assert_eq!(file.read(b.as_mut_ptr() as u64, 12, Some(8)).unwrap_err().errno, Errno::ESPIPE);
    assert_eq!(file.ioctl(&env.fds, 0, 0).unwrap_err().errno, Errno::ENOTTY);
    // A bad buffer faults and loses nothing.
    env.trigger_vevents(f.dev, 1).unwrap();
    assert_eq!(file.read(8, 12, None).unwrap_err().errno, Errno::EFAULT);
    assert_eq!(records(&env.read(qfd, 12).unwrap()), vec![(0, 5, Some(0x88))]);
    drop(file);

    // The open descriptor holds the queue.
    assert_eq!(env.destroy(qid), Err(Errno::EBUSY));
    env.fds.close(qfd).unwrap();
    env.replace(f.stdev, f.ioas).unwrap();
    env.destroy(vdev).unwrap();
    env.destroy(qid).unwrap();
    // No queue: the trigger reports EOPNOTSUPP.
    let vdev = env.vdevice_alloc(f.viommu, f.dev, 0x77).unwrap();
    env.replace(f.stdev, f.nested).unwrap();
    assert_eq!(env.trigger_vevents(f.dev, 1), Err(Errno::EOPNOTSUPP));
    env.replace(f.stdev, f.ioas).unwrap();
    env.destroy(vdev).unwrap();
    // Argument checks.
    let mut c = abi::IommuVeventqAlloc {
        size: 32,
        viommu_id: f.viommu,
        type_: sel_q,
        veventq_depth: 2,
        __reserved: 1,
        ..Default::default()
    };
    assert_eq!(env.ioctl(abi::IOMMU_VEVENTQ_ALLOC, &mut c), Err(Errno::EOPNOTSUPP));
    assert_eq!(env.veventq_alloc(f.viommu, sel_q, 0), Err(Errno::EINVAL));
    assert_eq!(env.veventq_alloc(f.viommu, abi::IOMMU_VEVENTQ_TYPE_DEFAULT, 2), Err(Errno::EOPNOTSUPP));
    assert_eq!(env.veventq_alloc(0, sel_q, 2), Err(Errno::ENOENT));
}

#[test]
fn vdevice_cache() {
    let f = fixture();
    let env = &f.env;
    let ty = t::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
    let inv = |flags: u32, vdev_id: u32, cache_id: u32| t::IommuViommuInvalidateSelftest { flags, vdev_id, cache_id };
    let check_all = |v: u32| (0..t::MOCK_DEV_CACHE_NUM).for_each(|i| env.check_cache(f.dev, i, v).unwrap());
    let vdev = env.vdevice_alloc(f.viommu, f.dev, 0x99).unwrap();
    check_all(t::IOMMU_TEST_DEV_CACHE_DEFAULT);
    let sz = 12;
    let none: [t::IommuViommuInvalidateSelftest; 0] = [];
    assert_eq!(env.invalidate(f.viommu, ty, sz, &none), (Ok(0), 0));
    assert_eq!(
        env.invalidate(f.viommu, t::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID, sz, &[inv(0, 0, 0)]),
        (Err(Errno::EINVAL), 0)
    );
    // Entry sizes: one byte more (reads into the next zeroed entry, whose
    // vdev_id 0 is unknown) and one byte.
    let two = [inv(0, 0, 0), inv(0, 0, 0)];
    assert_eq!(env.invalidate(f.viommu, ty, sz + 1, &two[..1]), (Err(Errno::EINVAL), 0));
    assert_eq!(env.invalidate(f.viommu, ty, 1, &two[..1]), (Err(Errno::EINVAL), 0));
    assert_eq!(env.invalidate(f.viommu, ty, sz, &[inv(0xffff_ffff, 0x99, 0)]), (Err(Errno::EOPNOTSUPP), 0));
    // No array behind a non-empty count, and a zero entry length.
    let mut c = abi::IommuHwptInvalidate {
        size: 32,
        hwpt_id: f.viommu,
        data_uptr: 0,
        data_type: ty,
        entry_len: sz,
        entry_num: 1,
        __reserved: 0,
    };
    assert_eq!(env.ioctl(abi::IOMMU_HWPT_INVALIDATE, &mut c), Err(Errno::EINVAL));
    assert_eq!(c.entry_num, 0);
    let reqs = [inv(0, 0x99, 0)];
    assert_eq!(env.invalidate(f.viommu, ty, 0, &reqs), (Err(Errno::EINVAL), 0));
    assert_eq!(
        env.invalidate(f.viommu, ty, sz, &[inv(0, 0x99, t::MOCK_DEV_CACHE_ID_MAX + 1)]),
        (Err(Errno::EINVAL), 0)
    );
    assert_eq!(env.invalidate(f.viommu, ty, sz, &[inv(0, 0x9, 0)]), (Err(Errno::EINVAL), 0));
    // The first request runs, the second fails: entry_num is 1.
    assert_eq!(
        env.invalidate(f.viommu, ty, sz, &[inv(0, 0x99, 0), inv(0xffff_ffff, 0x99, 1)]),
        (Err(Errno::EOPNOTSUPP), 1)
    );
    env.check_cache(f.dev, 0, 0).unwrap();
    for i in 1..4 {
        env.check_cache(f.dev, i, t::IOMMU_TEST_DEV_CACHE_DEFAULT).unwrap();
    }
    assert_eq!(
        env.invalidate(f.viommu, ty, sz, &[inv(0, 0x99, 0), inv(0, 0x99, t::MOCK_DEV_CACHE_ID_MAX + 1)]),
        (Err(Errno::EINVAL), 1)
    );
    assert_eq!(env.invalidate(f.viommu, ty, sz, &[inv(0, 0x99, 1)]), (Ok(0), 1));
    env.check_cache(f.dev, 1, 0).unwrap();
    assert_eq!(env.check_cache(f.dev, 2, 0), Err(Errno::EINVAL));
    assert_eq!(env.invalidate(f.viommu, ty, sz, &[inv(0, 0x99, 2), inv(0, 0x99, 3)]), (Ok(0), 2));
    check_all(0);
    assert_eq!(env.invalidate(f.viommu, ty, sz, &[inv(t::IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0)]), (Ok(0), 1));
    check_all(0);
    // The nested HWPT still invalidates its own IOTLB; a paging HWPT is not
    // a target (7.3: EINVAL for any object that is neither a nested HWPT
    // nor a vIOMMU; release_tests pins 6.12's ENOENT).
    let iotlb = [t::IommuHwptInvalidateSelftest { flags: t::IOMMU_TEST_INVALIDATE_FLAG_ALL, iotlb_id: 0 }];
    assert_eq!(env.invalidate(f.nested, t::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, &iotlb), (Ok(0), 1));
    assert_eq!(env.invalidate(f.hwpt, t::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, &iotlb), (Err(Errno::EINVAL), 0));
    env.destroy(vdev).unwrap();
}

#[test]
fn hw_queue() {
    let f = fixture();
    let env = &f.env;
    let sel = t::IOMMU_HW_QUEUE_TYPE_SELFTEST;
    let (iova, iova2) = (t::MOCK_APERTURE_START, t::MOCK_APERTURE_START + page());
    let p = page();
    assert_eq!(env.hw_queue_alloc(f.viommu, abi::IOMMU_HW_QUEUE_TYPE_DEFAULT, 0, iova, p), Err(Errno::EOPNOTSUPP));
    assert_eq!(env.hw_queue_alloc(f.viommu, sel, 0, iova, 0), Err(Errno::EINVAL));
    assert_eq!(env.hw_queue_alloc(f.viommu, sel, 0, u64::MAX, p), Err(Errno::EOVERFLOW));
    assert_eq!(env.hw_queue_alloc(f.viommu, sel, 0, iova, p), Err(Errno::ENOENT));
    let buf = buffer(2);
    env.map(f.ioas, buf, p, iova);
    env.map(f.ioas, buf + p, p, iova2);
    assert_eq!(env.hw_queue_alloc(f.viommu, sel, 1, iova, p), Err(Errno::EIO));
    assert_eq!(env.hw_queue_alloc(f.viommu, sel, t::IOMMU_TEST_HW_QUEUE_MAX, iova, p), Err(Errno::EINVAL));
    let q0 = env.hw_queue_alloc(f.viommu, sel, 0, iova, p).unwrap();
    assert_eq!(env.hw_queue_alloc(f.viommu, sel, 0, iova, p), Err(Errno::EEXIST));
    // The unpinned second page unmaps; the queue's page is locked.
    env.unmap(f.ioas, iova2, p).unwrap();
    assert_eq!(env.unmap(f.ioas, iova, p), Err(Errno::EBUSY));
    let q1 = env.hw_queue_alloc(f.viommu, sel, 1, iova + p / 2, p / 2).unwrap();
    assert_eq!(env.destroy(q0), Err(Errno::EBUSY));
    assert_eq!(env.destroy(f.viommu), Err(Errno::EBUSY));
    assert_eq!(env.unmap(f.ioas, iova, p), Err(Errno::EBUSY));
    env.destroy(q1).unwrap();
    env.destroy(q0).unwrap();
    env.unmap(f.ioas, iova, p).unwrap();
}

#[test]
fn vdevice_tombstone() {
    let f = fixture();
    let env = &f.env;
    let vdev = env.vdevice_alloc(f.viommu, f.dev, 0x99).unwrap();
    env.destroy(f.stdev).unwrap();
    assert_eq!(env.destroy(vdev), Err(Errno::ENOENT));
    // Closing still frees everything.
    env.destroy(f.nested).unwrap();
    env.destroy(f.viommu).unwrap();
}

#[test]
fn nested_iopf_through_a_viommu() {
    let f = fixture();
    let env = &f.env;
    let mut data = t::IommuHwptSelftest { iotlb: t::IOMMU_TEST_IOTLB_DEFAULT, pagetable_type: 0 };
    let mut fa = abi::IommuFaultAlloc { size: 16, ..Default::default() };
    env.ioctl(abi::IOMMU_FAULT_QUEUE_ALLOC, &mut fa).unwrap();
    let flags = abi::IOMMU_HWPT_FAULT_ID_VALID;
    assert_eq!(env.hwpt_alloc(f.dev, f.viommu, flags, u32::MAX, Some(&mut data)), Err(Errno::ENOENT));
    assert_eq!(
        env.hwpt_alloc(f.dev, f.viommu, flags | 1 << 31, fa.out_fault_id, Some(&mut data)),
        Err(Errno::EOPNOTSUPP)
    );
    let iopf = env.hwpt_alloc(f.dev, f.viommu, flags, fa.out_fault_id, Some(&mut data)).unwrap();
    assert_eq!(env.replace(f.stdev, iopf), Err(Errno::ENOENT));
    let vdev = env.vdevice_alloc(f.viommu, f.dev, 0x99).unwrap();
    env.replace(f.stdev, iopf).unwrap();
    assert_eq!(env.destroy(iopf), Err(Errno::EBUSY));
    let mut trig = t::TestTriggerIopf {
        dev_id: f.dev,
        pasid: 0,
        grpid: 0x2,
        perm: abi::IOMMU_PGFAULT_PERM_READ,
        addr: 0xdead_beef,
    };
    env.test_cmd(t::IOMMU_TEST_OP_TRIGGER_IOPF, 0, &mut trig).unwrap();
    let got = env.read(fa.out_fault_fd as i32, 40).unwrap();
    let (rec, _) = abi::IommuHwptPgfault::read_from_prefix(&got).unwrap();
    assert_eq!((rec.dev_id, rec.grpid, rec.addr), (f.dev, 2, 0xdead_beef));
    env.replace(f.stdev, f.ioas).unwrap();
    env.destroy(iopf).unwrap();
    env.fds.close(fa.out_fault_fd as i32).unwrap();
    env.destroy(fa.out_fault_id).unwrap();
    env.destroy(vdev).unwrap();
}

#[test]
fn device_pasid_ops() {
    for pasid_capable in [false, true] {
        let env = Env::new();
        let ioas = env.ioas_alloc();
        let (stdev, _, dev) = env.mock_domain(ioas, t::MOCK_FLAGS_DEVICE_PASID);
        let no_pasid = (!pasid_capable).then(|| env.mock_domain(ioas, 0).0);
        let mut data = t::IommuHwptSelftest { iotlb: t::IOMMU_TEST_IOTLB_DEFAULT, pagetable_type: 0 };
        let pf = abi::IOMMU_HWPT_ALLOC_PASID;
        let (attach, replace, detach) =
            (t::IOMMU_TEST_OP_PASID_ATTACH, t::IOMMU_TEST_OP_PASID_REPLACE, t::IOMMU_TEST_OP_PASID_DETACH);

        env.pasid(detach, stdev, 100, 0).unwrap();
        let parent = env.hwpt_alloc(dev, ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT, 0, None).unwrap();
        let n0 = env.hwpt_alloc(dev, parent, pf, 0, Some(&mut data)).unwrap();
        let n1 = env.hwpt_alloc(dev, parent, pf, 0, Some(&mut data)).unwrap();
        let viommu = env.viommu_alloc(dev, parent, t::IOMMU_VIOMMU_TYPE_SELFTEST, None).unwrap();
        env.hwpt_alloc(dev, viommu, pf, 0, Some(&mut data)).unwrap();
        let s2 = env.hwpt_alloc(dev, ioas, pf, 0, None).unwrap();

        env.replace(stdev, parent).unwrap();
        assert_eq!(env.pasid(attach, stdev, 100, s2), Err(Errno::EINVAL));
        env.replace(stdev, s2).unwrap();
        // The HWPT ID comes back in the payload.
        assert_eq!(env.pasid(attach, stdev, 100, n0), Ok(n0));
        assert_eq!(env.replace(stdev, parent), Err(Errno::EINVAL));
        env.pasid(detach, stdev, 100, 0).unwrap();
        env.pasid_check(stdev, 100, 0).unwrap();
        if let Some(np) = no_pasid {
            env.replace(np, n0).unwrap();
            env.replace(np, ioas).unwrap();
            assert_eq!(env.pasid(attach, np, 100, parent), Err(Errno::EINVAL));
            assert_eq!(env.pasid(attach, np, 100, s2), Err(Errno::EINVAL));
        }
        assert_eq!(env.pasid(attach, stdev, 100, parent), Err(Errno::EINVAL));
        assert_eq!(env.pasid(attach, stdev, 100, ioas), Err(Errno::EINVAL));
        env.pasid_check(stdev, 100, 0).unwrap();
        env.pasid(attach, stdev, 100, s2).unwrap();
        env.pasid_check(stdev, 100, s2).unwrap();
        assert_eq!(env.pasid(attach, stdev, 100, n0), Err(Errno::EBUSY));
        env.pasid(detach, stdev, 100, 0).unwrap();
        env.pasid(attach, stdev, 100, n0).unwrap();
        assert_eq!(env.pasid(attach, stdev, 100, n0), Err(Errno::EBUSY));
        env.pasid(detach, stdev, 100, 0).unwrap();

        assert_eq!(env.pasid(replace, stdev, 200, s2), Err(Errno::EINVAL));
        env.pasid(attach, stdev, 200, s2).unwrap();
        assert_eq!(env.pasid(replace, stdev, 200, ioas), Err(Errno::EINVAL));
        env.pasid_check(stdev, 200, s2).unwrap();
        assert_eq!(env.pasid(replace, stdev, 200, n0), Ok(n0));
        env.pasid_check(stdev, 200, n0).unwrap();
        env.pasid(replace, stdev, 200, n1).unwrap();
        env.pasid_check(stdev, 200, n1).unwrap();
        env.pasid(detach, stdev, 200, 0).unwrap();

        let rsv = t::IOMMU_TEST_PASID_RESERVED;
        env.pasid(attach, stdev, rsv, s2).unwrap();
        assert_eq!(env.pasid(replace, stdev, rsv, n0), Err(Errno::ENOMEM));
        env.pasid_check(stdev, rsv, s2).unwrap();
        env.pasid(detach, stdev, rsv, 0).unwrap();
        env.replace(stdev, ioas).unwrap();
        // Unknown mock device.
        assert_eq!(env.pasid(attach, 9999, 100, s2), Err(Errno::ENOENT));
        assert_eq!(env.pasid_check(9999, 100, 0), Err(Errno::ENOENT));
    }
}

/// A fresh zeroed page made read-only (leaked).
fn read_only_zeros() -> u64 {
    let p = buffer(1);
    // SAFETY: changing protection of a page we just mapped.
    assert_eq!(unsafe { libc::mprotect(p as *mut _, page() as usize, libc::PROT_READ) }, 0);
    p
}
