//! Answers of the real kernels, pinned. Each test names the behaviour it
//! holds us to and the kernel's answer as the oracle gave it (the same
//! program run as root inside Linux 7.3.4 and 6.12.118 built with
//! `CONFIG_IOMMUFD_TEST`, `../shared/oracle`); most were found by the
//! differential checker (`tests/diff/iommufd_diff.c`). Where the releases
//! differ, both are run: a context opened as 6.12 must give 6.12's answer.

use std::sync::Arc;

use uiommufd_abi::test_cmd::{self as t, IommuTestCmd};
use uiommufd_abi::{self as abi, Errno};
use uiommufd_core::ctx::OpenedAs;
use uiommufd_core::release::{KernelRelease, LINUX_6_12, LINUX_7_3};
use uiommufd_core::Iommufd;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::{iommufd_ioctl, LocalFds};

const PS: u64 = 4096;

struct Env {
    ctx: Arc<Iommufd>,
    fds: LocalFds,
}

/// `pages` fresh pages of shared anonymous memory, filled with `fill`
/// (leaked: pinned pages must outlive every context).
fn buffer(pages: u64, fill: u8) -> u64 {
    let len = (pages * PS) as usize;
    // SAFETY: a new shared anonymous mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: the mapping is ours and `len` bytes long.
    unsafe { std::ptr::write_bytes(p as *mut u8, fill, len) };
    p as u64
}

fn byte_at(addr: u64) -> u8 {
    // SAFETY: callers pass addresses inside buffers from `buffer`.
    unsafe { *(addr as *const u8) }
}

impl Env {
    fn new(release: &'static KernelRelease) -> Env {
        Env { ctx: Arc::new(Iommufd::open_as(OpenedAs::Iommu, release)), fds: LocalFds::default() }
    }

    fn ioctl<T: IntoBytes + FromBytes>(&self, req: u32, arg: &mut T) -> Result<i32, Errno> {
        iommufd_ioctl(&self.ctx, &self.fds, req as u64, arg.as_mut_bytes().as_mut_ptr() as u64).map_err(|e| e.errno)
    }

    fn test_cmd<P: IntoBytes + FromBytes + Immutable>(&self, op: u32, id: u32, payload: &mut P) -> Result<i32, Errno> {
        let mut cmd = IommuTestCmd::new(op);
        cmd.id = id;
        cmd.set_payload(payload);
        let r = self.ioctl(t::IOMMU_TEST_CMD, &mut cmd)?;
        *payload = cmd.payload_as();
        Ok(r)
    }

    fn ioas(&self) -> u32 {
        let mut c = abi::IommuIoasAlloc { size: 12, ..Default::default() };
        self.ioctl(abi::IOMMU_IOAS_ALLOC, &mut c).unwrap();
        c.out_ioas_id
    }

    fn map(&self, ioas: u32, va: u64, length: u64, iova: u64) {
        let mut c = abi::IommuIoasMap {
            size: 40,
            flags: abi::IOMMU_IOAS_MAP_FIXED_IOVA | abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            user_va: va,
            length,
            iova,
            ..Default::default()
        };
        self.ioctl(abi::IOMMU_IOAS_MAP, &mut c).unwrap();
    }

    /// `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`: (stdev, hwpt, idev).
    fn mock_domain(&self, pt: u32, dev_flags: u32) -> Result<(u32, u32, u32), Errno> {
        let mut c = t::TestMockDomainFlags { dev_flags, ..Default::default() };
        self.test_cmd(t::IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt, &mut c)?;
        Ok((c.out_stdev_id, c.out_hwpt_id, c.out_idev_id))
    }

    fn hwpt_alloc(&self, dev: u32, pt: u32, flags: u32) -> Result<u32, Errno> {
        let mut c = abi::IommuHwptAlloc { size: 48, flags, dev_id: dev, pt_id: pt, ..Default::default() };
        self.ioctl(abi::IOMMU_HWPT_ALLOC, &mut c).map(|_| c.out_hwpt_id)
    }

    fn check_map(&self, hwpt: u32, iova: u64, length: u64, uptr: u64) -> Result<i32, Errno> {
        self.test_cmd(t::IOMMU_TEST_OP_MD_CHECK_MAP, hwpt, &mut t::TestCheckMap { iova, length, uptr })
    }
}

/// A mock device on a fresh IOAS with `pages` pages mapped at
/// `MOCK_APERTURE_START`: (env, ioas, hwpt, idev, buffer).
fn mapped(release: &'static KernelRelease, pages: u64) -> (Env, u32, u32, u32, u64) {
    let env = Env::new(release);
    let ioas = env.ioas();
    let (_, hwpt, idev) = env.mock_domain(ioas, 0).unwrap();
    let buf = buffer(pages, 0x5a);
    env.map(ioas, buf, pages * PS, t::MOCK_APERTURE_START);
    (env, ioas, hwpt, idev, buf)
}

/// `iommufd_access_rw` copies area by area and stops at the first gap: a
/// write running past the mapped range has still written the covered part
/// when it fails with `ENOENT` (both releases; oracle: the byte at the last
/// mapped page reads 0x77 after the failed write, on the fast and the slow
/// path).
#[test]
fn access_rw_past_the_end_writes_the_covered_prefix() {
    for rel in [&LINUX_7_3, &LINUX_6_12] {
        let (env, ioas, _, _, buf) = mapped(rel, 4);
        let mut ca = t::TestCreateAccess::default();
        env.test_cmd(t::IOMMU_TEST_OP_CREATE_ACCESS, ioas, &mut ca).unwrap();
        for (fill, flags) in
            [(0x77u8, t::MOCK_ACCESS_RW_WRITE), (0x66, t::MOCK_ACCESS_RW_WRITE | t::MOCK_ACCESS_RW_SLOW_PATH)]
        {
            let src = vec![fill; 2 * PS as usize];
            let mut rw = t::TestAccessRw {
                iova: t::MOCK_APERTURE_START + 3 * PS,
                length: 2 * PS,
                uptr: src.as_ptr() as u64,
                flags,
                ..Default::default()
            };
            assert_eq!(env.test_cmd(t::IOMMU_TEST_OP_ACCESS_RW, ca.out_access_fd, &mut rw), Err(Errno::ENOENT));
            assert_eq!(byte_at(buf + 3 * PS), fill, "{}: the covered page was written", rel.name);
        }
        // A read that fails copies nothing back (the selftest's bounce
        // buffer reaches the user only on success).
        let dst = vec![0u8; 2 * PS as usize];
        let mut rw = t::TestAccessRw {
            iova: t::MOCK_APERTURE_START + 3 * PS,
            length: 2 * PS,
            uptr: dst.as_ptr() as u64,
            ..Default::default()
        };
        assert_eq!(env.test_cmd(t::IOMMU_TEST_OP_ACCESS_RW, ca.out_access_fd, &mut rw), Err(Errno::ENOENT));
        assert_eq!(dst[0], 0);
        // Starting in a gap copies nothing.
        let src = vec![0x11u8; 2 * PS as usize];
        let mut rw = t::TestAccessRw {
            iova: t::MOCK_APERTURE_START - PS,
            length: 2 * PS,
            uptr: src.as_ptr() as u64,
            flags: 1,
            ..Default::default()
        };
        assert_eq!(env.test_cmd(t::IOMMU_TEST_OP_ACCESS_RW, ca.out_access_fd, &mut rw), Err(Errno::ENOENT));
        assert_eq!(byte_at(buf), 0x5a);
    }
}

/// `IOMMU_OPTION` RLIMIT_MODE OP_SET: the kernel checks that the context
/// holds no object before it looks at the value (ioas.c,
/// `iommufd_option_rlimit_mode`): an out-of-range value is `EBUSY` once an
/// object exists, `EINVAL` before (oracle, both releases).
#[test]
fn rlimit_mode_checks_for_objects_before_the_value() {
    for rel in [&LINUX_7_3, &LINUX_6_12] {
        let env = Env::new(rel);
        let mut o = abi::IommuOption {
            size: 24,
            option_id: abi::IOMMU_OPTION_RLIMIT_MODE,
            op: abi::IOMMU_OPTION_OP_SET,
            val64: 2,
            ..Default::default()
        };
        assert_eq!(env.ioctl(abi::IOMMU_OPTION, &mut o), Err(Errno::EINVAL));
        env.ioas();
        assert_eq!(env.ioctl(abi::IOMMU_OPTION, &mut o), Err(Errno::EBUSY));
    }
}

/// `IOMMU_HWPT_GET_DIRTY_BITMAP` of a dirty-capable HWPT whose walk fails.
/// 6.12 answers the walk's error (`EINVAL`: tracking off, or a hole in the
/// IOAS); 7.3 answers 0, because `iommu_read_and_clear_dirty()` drops the
/// result of `iova_bitmap_for_each()`. In both, bits harvested before the
/// hole are written, and a bitmap the kernel cannot pin loses its bits
/// without an error. Oracle (7.3.4 and 6.12.118, 4 pages mapped at the
/// aperture start, 4 KiB bitmap pages): tracking off -> 0 / `EINVAL`, the
/// bitmap untouched; tracking on, every page dirty, 8 pages asked -> 0 /
/// `EINVAL` with bitmap 0xf; the bitmap at address 8 -> 0 in both, and the
/// dirty bits are cleared all the same.
#[test]
fn dirty_bitmap_walk_failure() {
    for (rel, failed) in [(&LINUX_7_3, Ok(0)), (&LINUX_6_12, Err(Errno::EINVAL))] {
        let (env, ioas, _, idev, _) = mapped(rel, 4);
        let hwpt = env.hwpt_alloc(idev, ioas, abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING).unwrap();
        let get = |iova: u64, pages: u64, data: u64| {
            let mut c = abi::IommuHwptGetDirtyBitmap {
                size: 48,
                hwpt_id: hwpt,
                iova,
                length: pages * PS,
                page_size: PS,
                data,
                ..Default::default()
            };
            env.ioctl(abi::IOMMU_HWPT_GET_DIRTY_BITMAP, &mut c)
        };
        let start = t::MOCK_APERTURE_START;
        let mut bitmap = [0u64; 2];
        let bm = bitmap.as_mut_ptr() as u64;
        // Tracking off: the mock's walk fails.
        assert_eq!(get(start, 4, bm), failed, "{}: tracking off", rel.name);
        assert_eq!(get(start + (1 << 20), 16, bm), failed, "{}: nothing mapped", rel.name);
        assert_eq!(bitmap, [0; 2], "{}: the bitmap is not written", rel.name);

        let mut on = abi::IommuHwptSetDirtyTracking {
            size: 16,
            flags: abi::IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
            hwpt_id: hwpt,
            ..Default::default()
        };
        env.ioctl(abi::IOMMU_HWPT_SET_DIRTY_TRACKING, &mut on).unwrap();
        let dirty_all = || {
            let ones = [u64::MAX; 1];
            let mut d = t::TestDirty {
                iova: start,
                length: 4 * PS,
                page_size: t::MOCK_PAGE_SIZE,
                uptr: ones.as_ptr() as u64,
                ..Default::default()
            };
            env.test_cmd(t::IOMMU_TEST_OP_DIRTY, hwpt, &mut d).unwrap();
        };
        // The four mapped pages, then a hole: the bits of the mapped part
        // are written before the walk stops.
        dirty_all();
        assert_eq!(get(start, 8, bm), failed, "{}: a hole", rel.name);
        assert_eq!(bitmap[0], 0xf, "{}: the covered prefix is harvested", rel.name);
        // A bitmap nobody can write: no error, the bits are gone.
        dirty_all();
        assert_eq!(get(start, 4, 8), Ok(0), "{}: an unwritable bitmap", rel.name);
        bitmap = [0; 2];
        assert_eq!(get(start, 4, bm), Ok(0));
        assert_eq!(bitmap[0], 0, "{}: the failed harvest cleared the dirty bits", rel.name);
    }
}

/// `IOMMU_TEST_OP_MD_CHECK_MAP`: 7.3 looks the HWPT up before it checks
/// alignment (a bad ID with a misaligned IOVA is `ENOENT`); 6.12 checks
/// alignment first (`EINVAL`). Both answer `EINVAL` for an aligned IOVA the
/// domain does not map, `EINVAL` for a misaligned one of a real HWPT and
/// `ENOENT` for an ID that is not a mock HWPT (oracle).
#[test]
fn md_check_map_order() {
    for (rel, bad_id_misaligned) in [(&LINUX_7_3, Errno::ENOENT), (&LINUX_6_12, Errno::EINVAL)] {
        let (env, ioas, hwpt, _, buf) = mapped(rel, 4);
        let start = t::MOCK_APERTURE_START;
        assert_eq!(env.check_map(hwpt, start, PS, buf), Ok(0));
        assert_eq!(env.check_map(hwpt, start + (1 << 20), PS, buf), Err(Errno::EINVAL), "{}: unmapped", rel.name);
        assert_eq!(env.check_map(hwpt, start + 0x123, PS, buf), Err(Errno::EINVAL));
        assert_eq!(env.check_map(999, start + 0x123, PS, buf), Err(bad_id_misaligned), "{}", rel.name);
        assert_eq!(env.check_map(hwpt, start, PS, buf + PS), Err(Errno::EINVAL), "another page");
        assert_eq!(env.check_map(ioas, start, PS, buf), Err(Errno::ENOENT), "an IOAS is no mock HWPT");
    }
}

/// `IOMMU_HWPT_INVALIDATE` of a paging HWPT or an IOAS: 7.3 looks any
/// object up and refuses its type (`EINVAL`, hw_pagetable.c); 6.12 looks
/// for a nested HWPT (`ENOENT`). An unknown ID is `ENOENT` in both; the
/// reply's `entry_num` is 0.
#[test]
fn invalidate_of_what_is_not_nested() {
    for (rel, errno) in [(&LINUX_7_3, Errno::EINVAL), (&LINUX_6_12, Errno::ENOENT)] {
        let (env, ioas, hwpt, _, _) = mapped(rel, 1);
        for (id, want) in [(hwpt, errno), (ioas, errno), (999, Errno::ENOENT)] {
            let mut c = abi::IommuHwptInvalidate { size: 32, hwpt_id: id, entry_num: 0, ..Default::default() };
            assert_eq!(env.ioctl(abi::IOMMU_HWPT_INVALIDATE, &mut c), Err(want), "{} id {id}", rel.name);
            assert_eq!(c.entry_num, 0);
        }
    }
}

/// `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`: `MOCK_FLAGS_DEVICE_HUGE_IOVA` (1 << 1)
/// exists in 6.12's mock only, `MOCK_FLAGS_DEVICE_PASID` (1 << 2) in 7.3's
/// only; an unknown flag is `EINVAL` (selftest.c, `mock_dev_create`).
#[test]
fn mock_device_flags_of_each_release() {
    let env = Env::new(&LINUX_7_3);
    let ioas = env.ioas();
    assert_eq!(env.mock_domain(ioas, t::MOCK_FLAGS_DEVICE_HUGE_IOVA), Err(Errno::EINVAL));
    assert!(env.mock_domain(ioas, t::MOCK_FLAGS_DEVICE_PASID).is_ok());
    let env = Env::new(&LINUX_6_12);
    let ioas = env.ioas();
    assert!(env.mock_domain(ioas, t::MOCK_FLAGS_DEVICE_HUGE_IOVA).is_ok());
    assert_eq!(env.mock_domain(ioas, t::MOCK_FLAGS_DEVICE_PASID), Err(Errno::EINVAL));
    assert_eq!(env.mock_domain(ioas, 8), Err(Errno::EINVAL));
}

/// `IOMMU_GET_HW_INFO` of a mock device: 7.3 adds
/// `IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED` (1 << 3) because the mock's driver
/// does not report `IOMMU_CAP_PCI_ATS_SUPPORTED`: oracle caps 0x9 with dirty
/// tracking; 6.12 reports 0x1. 6.12 also takes no flags (`EOPNOTSUPP` for
/// `IOMMU_HW_INFO_FLAG_INPUT_TYPE`).
#[test]
fn hw_info_capabilities_of_each_release() {
    for (rel, caps) in [(&LINUX_7_3, 0x9u64), (&LINUX_6_12, 0x1)] {
        let (env, _, _, idev, _) = mapped(rel, 1);
        let mut info = t::IommuTestHwInfo::default();
        let mut c = abi::IommuHwInfo {
            size: 40,
            dev_id: idev,
            data_len: 8,
            data_uptr: info.as_mut_bytes().as_mut_ptr() as u64,
            ..Default::default()
        };
        env.ioctl(abi::IOMMU_GET_HW_INFO, &mut c).unwrap();
        assert_eq!(c.out_capabilities, caps, "{}", rel.name);
        assert_eq!(info.test_reg, t::IOMMU_HW_INFO_SELFTEST_REGVAL);
        c.flags = abi::IOMMU_HW_INFO_FLAG_INPUT_TYPE;
        c.set_in_data_type(t::IOMMU_HW_INFO_TYPE_SELFTEST);
        let want = if rel.hw_info_flags == 0 { Err(Errno::EOPNOTSUPP) } else { Ok(0) };
        assert_eq!(env.ioctl(abi::IOMMU_GET_HW_INFO, &mut c), want, "{}", rel.name);
    }
}

/// 6.12's `iommufd_ioctl_ops[]` ends at `IOMMU_FAULT_QUEUE_ALLOC` (0x8e) and
/// its `iommufd_test()` at `IOMMU_TEST_OP_TRIGGER_IOPF`: later commands are
/// `ENOTTY`, later ops `EOPNOTSUPP`; 7.3 has them.
#[test]
fn commands_and_ops_of_each_release() {
    let old = Env::new(&LINUX_6_12);
    let new = Env::new(&LINUX_7_3);
    let mut c = abi::IommuIoasMapFile { size: 40, ..Default::default() };
    assert_eq!(old.ioctl(abi::IOMMU_IOAS_MAP_FILE, &mut c), Err(Errno::ENOTTY));
    assert_eq!(new.ioctl(abi::IOMMU_IOAS_MAP_FILE, &mut c), Err(Errno::EINVAL), "length 0");
    let mut g = abi::IommuIoasNoiommuGetPa { size: 40, ..Default::default() };
    assert_eq!(old.ioctl(abi::IOMMU_IOAS_NOIOMMU_GET_PA, &mut g), Err(Errno::ENOTTY));
    let mut v = abi::IommuViommuAlloc { size: 40, ..Default::default() };
    assert_eq!(old.ioctl(abi::IOMMU_VIOMMU_ALLOC, &mut v), Err(Errno::ENOTTY));
    let mut cache = t::TestCheckDevCache::default();
    assert_eq!(old.test_cmd(t::IOMMU_TEST_OP_DEV_CHECK_CACHE, 0, &mut cache), Err(Errno::EOPNOTSUPP));
    assert_eq!(new.test_cmd(t::IOMMU_TEST_OP_DEV_CHECK_CACHE, 0, &mut cache), Err(Errno::ENOENT));
}

/// 6.12's `struct iommu_hwpt_selftest` is `iotlb` alone (4 bytes); longer
/// data is `EINVAL` (`iommu_copy_struct_from_user`), which is why 6.12's
/// own suite, built against mainline headers, fails `alloc_hwpt_nested`
/// on the real 6.12.118.
#[test]
fn hwpt_selftest_data_size_of_each_release() {
    for (rel, eight_bytes) in [(&LINUX_7_3, true), (&LINUX_6_12, false)] {
        let (env, ioas, _, idev, _) = mapped(rel, 1);
        let parent = env.hwpt_alloc(idev, ioas, abi::IOMMU_HWPT_ALLOC_NEST_PARENT).unwrap();
        let data = t::IommuHwptSelftest { iotlb: t::IOMMU_TEST_IOTLB_DEFAULT, pagetable_type: 0 };
        for len in [4u32, 8] {
            let mut c = abi::IommuHwptAlloc {
                size: 48,
                dev_id: idev,
                pt_id: parent,
                data_type: t::IOMMU_HWPT_DATA_SELFTEST,
                data_len: len,
                data_uptr: data.as_bytes().as_ptr() as u64,
                ..Default::default()
            };
            let r = env.ioctl(abi::IOMMU_HWPT_ALLOC, &mut c);
            let ok = len == 4 || eight_bytes;
            assert_eq!(r.is_ok(), ok, "{} len {len}: {r:?}", rel.name);
            if !ok {
                assert_eq!(r, Err(Errno::EINVAL));
            }
        }
    }
}

/// `IOMMU_IOAS_NOIOMMU_GET_PA` (7.3, with `CONFIG_IOMMUFD_NOIOMMU`'s rules,
/// ioas.c): flags or reserved bits `EOPNOTSUPP`, length 0 `EINVAL`, IOVA
/// `ULONG_MAX` `EOVERFLOW`, an unknown IOAS or an unmapped IOVA `ENOENT`,
/// an area of a domain that is not a no-IOMMU domain `EOPNOTSUPP`; a size
/// below `out_phys` is `EINVAL`. (The oracle kernel is built without
/// `CONFIG_IOMMUFD_NOIOMMU` and answers `EOPNOTSUPP` past the size check.)
#[test]
fn noiommu_get_pa_rules() {
    if !uiommufd_memory::sys::capable_sys_rawio() {
        return;
    }
    let (env, ioas, _, _, _) = mapped(&LINUX_7_3, 1);
    let ok = abi::IommuIoasNoiommuGetPa {
        size: 40,
        ioas_id: ioas,
        iova: t::MOCK_APERTURE_START,
        length: PS,
        ..Default::default()
    };
    let call = |mut c: abi::IommuIoasNoiommuGetPa| env.ioctl(abi::IOMMU_IOAS_NOIOMMU_GET_PA, &mut c);
    assert_eq!(call(ok), Err(Errno::EOPNOTSUPP));
    assert_eq!(call(abi::IommuIoasNoiommuGetPa { flags: 1, ..ok }), Err(Errno::EOPNOTSUPP));
    assert_eq!(call(abi::IommuIoasNoiommuGetPa { __reserved: 1, ..ok }), Err(Errno::EOPNOTSUPP));
    assert_eq!(call(abi::IommuIoasNoiommuGetPa { length: 0, ..ok }), Err(Errno::EINVAL));
    assert_eq!(call(abi::IommuIoasNoiommuGetPa { iova: u64::MAX, ..ok }), Err(Errno::EOVERFLOW));
    assert_eq!(call(abi::IommuIoasNoiommuGetPa { ioas_id: 999, ..ok }), Err(Errno::ENOENT));
    assert_eq!(call(abi::IommuIoasNoiommuGetPa { iova: 0, ..ok }), Err(Errno::ENOENT));
    assert_eq!(call(abi::IommuIoasNoiommuGetPa { size: 32, ..ok }), Err(Errno::EINVAL));
}

/// `IOMMU_TEST_OP_DMABUF_GET` / `DMABUF_REVOKE` (selftest.c): a length of 0
/// or above 512 pages is `EINVAL`; revoking through a descriptor that is
/// not open is `EBADF`, through one that is no dma-buf `EINVAL` (oracle).
/// The op returns the new descriptor, as the selftests expect (7.3.4
/// returns 0 and leaves the descriptor unknown: a kernel bug we do not
/// copy).
#[test]
fn dmabuf_get_and_revoke_errnos() {
    let env = Env::new(&LINUX_7_3);
    for len in [0u32, 513 * PS as u32] {
        let mut g = t::TestDmabufGet { length: len, open_flags: libc::O_CLOEXEC as u32 };
        assert_eq!(env.test_cmd(t::IOMMU_TEST_OP_DMABUF_GET, 0, &mut g), Err(Errno::EINVAL), "length {len}");
    }
    let mut g = t::TestDmabufGet { length: 100, open_flags: libc::O_CLOEXEC as u32 };
    let fd = env.test_cmd(t::IOMMU_TEST_OP_DMABUF_GET, 0, &mut g).unwrap();
    assert!(fd >= 0);
    let revoke = |fd: i32, revoked: u32| {
        env.test_cmd(t::IOMMU_TEST_OP_DMABUF_REVOKE, 0, &mut t::TestDmabufRevoke { dmabuf_fd: fd, revoked })
    };
    assert_eq!(revoke(fd, 1), Ok(0));
    assert_eq!(revoke(fd, 0), Ok(0));
    assert_eq!(revoke(-1, 1), Err(Errno::EBADF));
    // SAFETY: opening /dev/null read-only.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    assert_eq!(revoke(null, 1), Err(Errno::EINVAL));
    // SAFETY: closing our descriptor.
    unsafe { libc::close(null) };
    assert_eq!(Env::new(&LINUX_6_12).test_cmd(t::IOMMU_TEST_OP_DMABUF_GET, 0, &mut g), Err(Errno::EOPNOTSUPP));
}

/// `IOMMU_IOAS_MAP_FILE` of a dma-buf (7.3): the range must lie inside the
/// buffer (`EINVAL`, also for length 0); a revoked buffer cannot be mapped
/// (`ENODEV`); a revocation takes the memory out of every domain, and of
/// domains attached later, while the area stays (it can be unmapped); an
/// access cannot reach dma-buf memory (`EINVAL`). After the exporter makes
/// the buffer available again, a new mapping works.
#[test]
fn dmabuf_map_file_and_revoke() {
    use uiommufd_core::hwpt::HwptPaging;
    let (env, ioas, hwpt, idev, _) = mapped(&LINUX_7_3, 1);
    let size = 4 * PS;
    let mut g = t::TestDmabufGet { length: size as u32, open_flags: 0 };
    let dfd = env.test_cmd(t::IOMMU_TEST_OP_DMABUF_GET, 0, &mut g).unwrap();
    let map = |start: u64, length: u64, iova: Option<u64>| {
        let mut c = abi::IommuIoasMapFile {
            size: 40,
            flags: abi::IOMMU_IOAS_MAP_READABLE
                | abi::IOMMU_IOAS_MAP_WRITEABLE
                | if iova.is_some() { abi::IOMMU_IOAS_MAP_FIXED_IOVA } else { 0 },
            ioas_id: ioas,
            fd: dfd,
            start,
            length,
            iova: iova.unwrap_or(0),
        };
        env.ioctl(abi::IOMMU_IOAS_MAP_FILE, &mut c).map(|_| c.iova)
    };
    assert_eq!(map(0, 0, None), Err(Errno::EINVAL));
    assert_eq!(map(size, size, None), Err(Errno::EINVAL));
    assert_eq!(map(0, size + 1, None), Err(Errno::EINVAL));
    let iova = map(0, size, None).unwrap();
    let phys = |hwpt: u32| env.ctx.get::<HwptPaging>(hwpt).unwrap().domain().iova_to_phys(iova);
    assert!(phys(hwpt).is_some(), "the mock domain maps the buffer");
    // An access cannot reach it.
    let mut ca = t::TestCreateAccess::default();
    env.test_cmd(t::IOMMU_TEST_OP_CREATE_ACCESS, ioas, &mut ca).unwrap();
    let buf = [0u8; 16];
    let mut rw = t::TestAccessRw { iova, length: 16, uptr: buf.as_ptr() as u64, ..Default::default() };
    assert_eq!(env.test_cmd(t::IOMMU_TEST_OP_ACCESS_RW, ca.out_access_fd, &mut rw), Err(Errno::EINVAL));
    let revoke = |revoked: u32| {
        env.test_cmd(t::IOMMU_TEST_OP_DMABUF_REVOKE, 0, &mut t::TestDmabufRevoke { dmabuf_fd: dfd, revoked })
    };
    revoke(1).unwrap();
    assert_eq!(phys(hwpt), None, "revoked: out of the domain");
    let later = env.hwpt_alloc(idev, ioas, 0).unwrap();
    assert_eq!(phys(later), None, "and out of domains attached later");
    assert_eq!(map(0, size, None), Err(Errno::ENODEV));
    revoke(0).unwrap();
    let again = map(0, size, None).unwrap();
    assert_ne!(again, iova);
    // The revoked area is still there: unmap it and map the buffer back.
    let mut u = abi::IommuIoasUnmap { size: 24, ioas_id: ioas, iova, length: size };
    env.ioctl(abi::IOMMU_IOAS_UNMAP, &mut u).unwrap();
    assert_eq!(map(0, size, Some(iova)), Ok(iova));
    assert!(phys(hwpt).is_some() && phys(later).is_some());
}
