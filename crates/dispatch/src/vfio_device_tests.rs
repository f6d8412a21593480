//! VFIO device cdevs through the library: a DMA engine bound, attached and
//! driven with the same ioctls, `pread`/`pwrite` and `mmap` a C program
//! uses, with descriptor numbers from [`LocalFds`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use uiommufd_abi::vfio::{self as v};
use uiommufd_abi::{self as abi, Errno};
use uiommufd_devices::dma_engine::regs::{self, Descriptor};
use uiommufd_devices::platform::Platform;
use uiommufd_devices::DmaEngine;
use uiommufd_hw::mock::MockDevice;
use zerocopy::{FromBytes, IntoBytes};

use crate::{FdHost, File, LocalFds, Node, VfioDevice};

const BAR0: u64 = 0;
const BAR2: u64 = 2 << v::VFIO_PCI_OFFSET_SHIFT;
const CONFIG: u64 = (v::VFIO_PCI_CONFIG_REGION_INDEX as u64) << v::VFIO_PCI_OFFSET_SHIFT;

fn page() -> u64 {
    uiommufd_memory::page_size() as u64
}

/// `pages` zeroed pages of our own, never freed (DMA targets must outlive
/// the devices that may still hold them pinned).
fn buffer(pages: u64) -> u64 {
    // SAFETY: a fresh private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (pages * page()) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as u64
}

fn peek(addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    uiommufd_memory::copy_from_user(&mut b, addr).unwrap();
    b
}

fn poke(addr: u64, data: &[u8]) {
    uiommufd_memory::copy_to_user(addr, data).unwrap();
}

pub(crate) struct Env {
    pub(crate) fds: LocalFds,
    pub(crate) iommufd: i32,
    pub(crate) engine: Arc<DmaEngine>,
    pub(crate) dev: Arc<VfioDevice>,
}

impl Env {
    pub(crate) fn new() -> Env {
        let engine = Arc::new(DmaEngine::new("dma-engine0").unwrap());
        let mock = Arc::new(MockDevice::new(abi::test_cmd::MOCK_FLAGS_DEVICE_PASID).unwrap());
        let dev = VfioDevice::new(0, "0000:00:04.0", engine.clone(), mock);
        let fds = LocalFds::default();
        let iommufd = fds.install(Arc::new(File::open(Node::Iommu)), true).unwrap();
        Env { fds, iommufd, engine, dev }
    }

    pub(crate) fn open(&self) -> i32 {
        self.fds.install(Arc::new(File::open_vfio_device(&self.dev)), true).unwrap()
    }

    pub(crate) fn file(&self, fd: i32) -> Arc<File> {
        self.fds.get(fd).unwrap()
    }

    pub(crate) fn raw(&self, fd: i32, req: u32, arg: u64) -> Result<i32, Errno> {
        self.file(fd).ioctl(&self.fds, req as u64, arg).map_err(|e| e.errno)
    }

    pub(crate) fn ioctl<T: IntoBytes + FromBytes + ?Sized>(
        &self,
        fd: i32,
        req: u32,
        arg: &mut T,
    ) -> Result<i32, Errno> {
        self.raw(fd, req, arg.as_mut_bytes().as_mut_ptr() as u64)
    }

    pub(crate) fn bind(&self, fd: i32) -> Result<u32, Errno> {
        let mut b = v::VfioDeviceBindIommufd { argsz: 16, iommufd: self.iommufd, ..Default::default() };
        self.ioctl(fd, v::VFIO_DEVICE_BIND_IOMMUFD, &mut b)?;
        Ok(b.out_devid)
    }

    pub(crate) fn attach(&self, fd: i32, pt_id: u32) -> Result<u32, Errno> {
        let mut a = v::VfioDeviceAttachIommufdPt { argsz: 12, pt_id, ..Default::default() };
        self.ioctl(fd, v::VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a)?;
        Ok(a.pt_id)
    }

    pub(crate) fn ioas_alloc(&self) -> u32 {
        let mut c = abi::IommuIoasAlloc { size: 12, ..Default::default() };
        self.ioctl(self.iommufd, abi::IOMMU_IOAS_ALLOC, &mut c).unwrap();
        c.out_ioas_id
    }

    /// IOMMU_IOAS_MAP without a fixed IOVA: returns the IOVA chosen.
    pub(crate) fn map(&self, ioas: u32, addr: u64, len: u64) -> u64 {
        let mut m = abi::IommuIoasMap {
            size: core::mem::size_of::<abi::IommuIoasMap>() as u32,
            flags: abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            user_va: addr,
            length: len,
            ..Default::default()
        };
        self.ioctl(self.iommufd, abi::IOMMU_IOAS_MAP, &mut m).unwrap();
        m.iova
    }

    pub(crate) fn destroy(&self, id: u32) -> Result<i32, Errno> {
        let mut d = abi::IommuDestroy { size: 8, id };
        self.ioctl(self.iommufd, abi::IOMMU_DESTROY, &mut d)
    }

    pub(crate) fn pread(&self, fd: i32, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
        self.file(fd).read(buf.as_mut_ptr() as u64, buf.len(), Some(off as i64)).map_err(|e| e.errno)
    }

    pub(crate) fn pwrite(&self, fd: i32, buf: &[u8], off: u64) -> Result<usize, Errno> {
        self.file(fd).write(buf.as_ptr() as u64, buf.len(), Some(off as i64)).map_err(|e| e.errno)
    }

    pub(crate) fn read32(&self, fd: i32, off: u64) -> u32 {
        let mut b = [0u8; 4];
        assert_eq!(self.pread(fd, &mut b, off), Ok(4));
        u32::from_le_bytes(b)
    }

    pub(crate) fn write32(&self, fd: i32, off: u64, val: u32) {
        assert_eq!(self.pwrite(fd, &val.to_le_bytes(), off), Ok(4));
    }

    pub(crate) fn write64(&self, fd: i32, off: u64, val: u64) {
        assert_eq!(self.pwrite(fd, &val.to_le_bytes(), off), Ok(8));
    }

    /// Memory Space and Bus Master on, through config space.
    pub(crate) fn enable_function(&self, fd: i32) {
        let mut cmd = [0u8; 2];
        self.pread(fd, &mut cmd, CONFIG + 4).unwrap();
        let cmd = u16::from_le_bytes(cmd) | 0b110;
        assert_eq!(self.pwrite(fd, &cmd.to_le_bytes(), CONFIG + 4), Ok(2));
    }

    /// SET_IRQS with `data` after the header.
    pub(crate) fn set_irqs(
        &self,
        fd: i32,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
    ) -> Result<i32, Errno> {
        let hdr = v::VfioIrqSet { argsz: (20 + data.len()) as u32, flags, index, start, count };
        let mut buf = hdr.as_bytes().to_vec();
        buf.extend_from_slice(data);
        self.raw(fd, v::VFIO_DEVICE_SET_IRQS, buf.as_mut_ptr() as u64)
    }
}

fn eventfd() -> i32 {
    // SAFETY: creating a descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    fd
}

/// The eventfd's counter (0 if nothing was signalled).
fn take(efd: i32) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: reading 8 bytes into a local buffer.
    let n = unsafe { libc::read(efd, b.as_mut_ptr().cast(), 8) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        0
    }
}

fn wait_for(efd: i32, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = take(efd);
        if n != 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn close_fd(fd: i32) {
    // SAFETY: closing a descriptor this test created.
    unsafe { libc::close(fd) };
}

#[test]
fn before_bind_only_bind_is_allowed() {
    let env = Env::new();
    let fd = env.open();
    let mut info = v::VfioDeviceInfo { argsz: 24, ..Default::default() };
    assert_eq!(env.ioctl(fd, v::VFIO_DEVICE_GET_INFO, &mut info), Err(Errno::EINVAL));
    assert_eq!(env.attach(fd, 1), Err(Errno::EINVAL));
    assert_eq!(env.raw(fd, abi::ioctl::io(v::VFIO_TYPE, 0x7f), 0), Err(Errno::EINVAL), "even unknown requests");
    let mut b = [0u8; 4];
    assert_eq!(env.pread(fd, &mut b, 0), Err(Errno::EINVAL));
    let File::VfioDevice(f) = &*env.file(fd) else { unreachable!() };
    assert_eq!(f.mmap_target(0, 4096, true).unwrap_err().errno, Errno::EINVAL);
    assert!(f.devid().is_none());
}

#[test]
fn bind_checks_in_the_kernels_order() {
    let env = Env::new();
    let fd = env.open();
    let bind = |b: &mut v::VfioDeviceBindIommufd| env.ioctl(fd, v::VFIO_DEVICE_BIND_IOMMUFD, b);
    let ok = v::VfioDeviceBindIommufd { argsz: 16, iommufd: env.iommufd, ..Default::default() };
    assert_eq!(env.raw(fd, v::VFIO_DEVICE_BIND_IOMMUFD, 0), Err(Errno::EFAULT));
    assert_eq!(bind(&mut v::VfioDeviceBindIommufd { argsz: 15, ..ok }), Err(Errno::EINVAL));
    assert_eq!(bind(&mut v::VfioDeviceBindIommufd { flags: 2, ..ok }), Err(Errno::EINVAL));
    assert_eq!(bind(&mut v::VfioDeviceBindIommufd { iommufd: -1, ..ok }), Err(Errno::EINVAL));
    // A long struct: the tail must be zero.
    let mut long = [0u8; 32];
    long[..24].copy_from_slice(v::VfioDeviceBindIommufd { argsz: 32, ..ok }.as_bytes());
    long[28] = 1;
    assert_eq!(env.ioctl(fd, v::VFIO_DEVICE_BIND_IOMMUFD, &mut long), Err(Errno::E2BIG));
    // The VF token is read, then refused: not an SR-IOV function.
    let uuid = [7u8; 16];
    let token = v::VfioDeviceBindIommufd {
        argsz: 24,
        flags: v::VFIO_DEVICE_BIND_FLAG_TOKEN,
        token_uuid_ptr: uuid.as_ptr() as u64,
        ..ok
    };
    assert_eq!(bind(&mut token.clone()), Err(Errno::EINVAL));
    assert_eq!(bind(&mut v::VfioDeviceBindIommufd { token_uuid_ptr: 8, ..token }), Err(Errno::EFAULT));
    // Not a descriptor at all, and one that is not an iommufd.
    assert_eq!(bind(&mut v::VfioDeviceBindIommufd { iommufd: 999_999, ..ok }), Err(Errno::EBADF));
    assert_eq!(bind(&mut v::VfioDeviceBindIommufd { iommufd: fd, ..ok }), Err(Errno::EBADFD));
    assert_eq!(bind(&mut v::VfioDeviceBindIommufd { iommufd: 0, ..ok }), Err(Errno::EBADFD), "stdin is open");
    assert!(!env.dev.is_bound());

    let devid = env.bind(fd).unwrap();
    assert!(env.dev.is_bound());
    assert_eq!(env.bind(fd), Err(Errno::EINVAL), "one bind per file");
    // Another file may open the device but not bind it while it is bound.
    let other = env.open();
    assert_eq!(env.bind(other), Err(Errno::EINVAL));
    // The device object is the binder's: destroying it is EBUSY.
    assert_eq!(env.destroy(devid), Err(Errno::EBUSY));
    env.fds.close(fd).unwrap();
    assert!(!env.dev.is_bound());
    assert_eq!(env.destroy(devid), Err(Errno::ENOENT), "closing unbound it");
    let devid2 = env.bind(other).unwrap();
    assert_ne!(devid2, 0);
    // A failed reply of out_devid leaves the device unbound.
    env.fds.close(other).unwrap();
    let third = env.open();
    let ro = read_only_copy(ok.as_bytes());
    assert_eq!(env.raw(third, v::VFIO_DEVICE_BIND_IOMMUFD, ro), Err(Errno::EFAULT));
    assert!(!env.dev.is_bound());
    let File::Iommufd(ctx) = &*env.file(env.iommufd) else { unreachable!() };
    assert!(ctx.objects().is_empty(), "no device object left behind");
}

/// `bytes` in a page of its own that is then made read-only.
fn read_only_copy(bytes: &[u8]) -> u64 {
    let p = buffer(1);
    poke(p, bytes);
    // SAFETY: changing the protection of our own mapping.
    assert_eq!(unsafe { libc::mprotect(p as *mut libc::c_void, page() as usize, libc::PROT_READ) }, 0);
    p
}

#[test]
fn attach_and_detach() {
    let env = Env::new();
    let fd = env.open();
    let devid = env.bind(fd).unwrap();
    assert_eq!(env.attach(fd, 99), Err(Errno::ENOENT));
    assert_eq!(env.attach(fd, devid), Err(Errno::EINVAL), "not a page table");
    let ioas = env.ioas_alloc();
    let raw_attach = |argsz: u32, flags: u32, pasid: u32| {
        let mut a = v::VfioDeviceAttachIommufdPt { argsz, flags, pt_id: ioas, pasid };
        env.ioctl(fd, v::VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a).map(|_| a.pt_id)
    };
    assert_eq!(raw_attach(11, 0, 0), Err(Errno::EINVAL));
    assert_eq!(raw_attach(16, 2, 0), Err(Errno::EINVAL));
    assert_eq!(raw_attach(12, v::VFIO_DEVICE_ATTACH_PASID, 1), Err(Errno::EINVAL), "argsz without pasid");
    // An automatic domain is never PASID capable.
    assert_eq!(raw_attach(16, v::VFIO_DEVICE_ATTACH_PASID, 1), Err(Errno::EINVAL));
    let hwpt = env.attach(fd, ioas).unwrap();
    assert_ne!(hwpt, ioas, "the automatic HWPT's ID comes back");
    assert_eq!(env.attach(fd, ioas), Ok(hwpt), "attaching again replaces with the same");
    assert_eq!(env.destroy(ioas), Err(Errno::EBUSY));
    // A PASID-capable HWPT for PASID 1.
    let mut alloc = abi::IommuHwptAlloc {
        size: core::mem::size_of::<abi::IommuHwptAlloc>() as u32,
        flags: abi::IOMMU_HWPT_ALLOC_PASID,
        dev_id: devid,
        pt_id: ioas,
        ..Default::default()
    };
    env.ioctl(env.iommufd, abi::IOMMU_HWPT_ALLOC, &mut alloc).unwrap();
    let pasid_hwpt = alloc.out_hwpt_id;
    // The RID's automatic HWPT is not PASID capable: move the RID first.
    assert_eq!(env.attach(fd, pasid_hwpt), Ok(pasid_hwpt));
    let mut a =
        v::VfioDeviceAttachIommufdPt { argsz: 16, flags: v::VFIO_DEVICE_ATTACH_PASID, pt_id: pasid_hwpt, pasid: 1 };
    assert_eq!(env.ioctl(fd, v::VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a), Ok(0));
    assert_eq!(a.pt_id, pasid_hwpt);
    let attached = |pasid| {
        let File::VfioDevice(f) = &*env.file(fd) else { unreachable!() };
        f.iommufd_device().unwrap().attached(pasid)
    };
    assert_eq!(attached(1), Some(pasid_hwpt));
    // Detach: bad forms, then PASID 1, then the RID; twice is fine.
    let detach = |argsz: u32, flags: u32, pasid: u32| {
        let mut d = v::VfioDeviceDetachIommufdPt { argsz, flags, pasid };
        env.ioctl(fd, v::VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut d)
    };
    assert_eq!(detach(7, 0, 0), Err(Errno::EINVAL));
    assert_eq!(detach(12, 4, 0), Err(Errno::EINVAL));
    assert_eq!(detach(8, v::VFIO_DEVICE_DETACH_PASID, 1), Err(Errno::EINVAL));
    assert_eq!(detach(12, v::VFIO_DEVICE_DETACH_PASID, 1), Ok(0));
    assert_eq!(attached(1), None);
    assert_eq!(detach(12, v::VFIO_DEVICE_DETACH_PASID, 1), Ok(0));
    assert_eq!(detach(8, 0, 0), Ok(0));
    assert_eq!(detach(8, 0, 0), Ok(0));
    assert_eq!(env.destroy(pasid_hwpt), Ok(0));
    // Closing while attached releases the attachment and its auto domain.
    let hwpt = env.attach(fd, ioas).unwrap();
    env.fds.close(fd).unwrap();
    assert_eq!(env.destroy(hwpt), Err(Errno::ENOENT));
    assert_eq!(env.destroy(ioas), Ok(0));
}

#[test]
fn info_ioctls() {
    let env = Env::new();
    let fd = env.open();
    env.bind(fd).unwrap();
    // GET_INFO writes at most argsz bytes.
    let mut info = [0xaau8; 24];
    info[..4].copy_from_slice(&16u32.to_ne_bytes());
    env.ioctl(fd, v::VFIO_DEVICE_GET_INFO, &mut info).unwrap();
    let got = v::VfioDeviceInfo::read_from_bytes(&info).unwrap();
    assert_eq!(got.flags, v::VFIO_DEVICE_FLAGS_PCI | v::VFIO_DEVICE_FLAGS_RESET);
    assert_eq!((got.num_regions, got.num_irqs), (9, 5));
    assert_eq!(&info[16..], &[0xaa; 8]);
    let mut short = v::VfioDeviceInfo { argsz: 15, ..Default::default() };
    assert_eq!(env.ioctl(fd, v::VFIO_DEVICE_GET_INFO, &mut short), Err(Errno::EINVAL));

    let region = |index: u32, argsz: u32| {
        let mut buf = [0u8; 40];
        buf[..12].copy_from_slice(v::VfioRegionInfo { argsz, index, ..Default::default() }.as_bytes()[..12].as_ref());
        env.ioctl(fd, v::VFIO_DEVICE_GET_REGION_INFO, &mut buf).map(|_| {
            (
                v::VfioRegionInfo::read_from_bytes(&buf[..32]).unwrap(),
                v::VfioInfoCapHeader::read_from_bytes(&buf[32..]).unwrap(),
            )
        })
    };
    let rw = v::VFIO_REGION_INFO_FLAG_READ | v::VFIO_REGION_INFO_FLAG_WRITE;
    // BAR0: the registers, mappable, no capability (the MSI-X table is in
    // BAR2, which is small and not mappable: no MSI-X mappable capability
    // either).
    let (bar0, _) = region(0, 32).unwrap();
    assert_eq!((bar0.size, bar0.offset, bar0.argsz, bar0.cap_offset), (4096, 0, 32, 0));
    assert_eq!(bar0.flags, rw | v::VFIO_REGION_INFO_FLAG_MMAP);
    let (bar2, _) = region(2, 32).unwrap();
    assert_eq!((bar2.size, bar2.offset, bar2.flags, bar2.argsz), (64, 2 << 40, rw, 32));
    // The upper half of the 64-bit BAR, absent BARs and the ROM: size 0.
    for index in [1, 3, 4, 5, 6] {
        let (r, _) = region(index, 32).unwrap();
        assert_eq!((r.size, r.flags, r.offset), (0, 0, (index as u64) << 40), "region {index}");
    }
    let (cfg, _) = region(7, 32).unwrap();
    assert_eq!((cfg.size, cfg.flags, cfg.offset), (4096, rw, CONFIG));
    assert_eq!(region(8, 32).unwrap_err(), Errno::EINVAL, "no VGA");
    assert_eq!(region(9, 32).unwrap_err(), Errno::EINVAL);
    assert_eq!(region(0, 31).unwrap_err(), Errno::EINVAL);

    let irq = |index: u32| {
        let mut i = v::VfioIrqInfo { argsz: 16, index, ..Default::default() };
        env.ioctl(fd, v::VFIO_DEVICE_GET_IRQ_INFO, &mut i).map(|_| (i.flags, i.count))
    };
    let e = v::VFIO_IRQ_INFO_EVENTFD;
    assert_eq!(irq(0), Ok((e | v::VFIO_IRQ_INFO_MASKABLE | v::VFIO_IRQ_INFO_AUTOMASKED, 0)));
    assert_eq!(irq(1), Ok((e | v::VFIO_IRQ_INFO_NORESIZE, 0)));
    assert_eq!(irq(2), Ok((e, 1)));
    assert_eq!(irq(3), Ok((e | v::VFIO_IRQ_INFO_NORESIZE, 1)));
    assert_eq!(irq(4), Ok((e | v::VFIO_IRQ_INFO_NORESIZE, 1)));
    assert_eq!(irq(5), Err(Errno::EINVAL));

    // Hot reset: no slot or bus reset on the root bus.
    let mut hr = v::VfioPciHotResetInfo { argsz: 12, ..Default::default() };
    assert_eq!(env.ioctl(fd, v::VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, &mut hr), Err(Errno::ENODEV));
    let mut h = v::VfioPciHotReset { argsz: 12, count: 1, ..Default::default() };
    assert_eq!(env.ioctl(fd, v::VFIO_DEVICE_PCI_HOT_RESET, &mut h), Err(Errno::EINVAL));
    // Features: the header is checked; migration is offered (its tests are
    // in vfio_migration_tests), nothing else.
    let feature = |flags: u32| {
        let mut f = v::VfioDeviceFeature { argsz: 8, flags };
        env.ioctl(fd, v::VFIO_DEVICE_FEATURE, &mut f)
    };
    assert_eq!(feature(v::VFIO_DEVICE_FEATURE_GET | v::VFIO_DEVICE_FEATURE_SET | 1), Err(Errno::EINVAL));
    assert_eq!(feature(1 << 20), Err(Errno::EINVAL));
    assert_eq!(feature(v::VFIO_DEVICE_FEATURE_PROBE | v::VFIO_DEVICE_FEATURE_GET | 1), Ok(0));
    assert_eq!(feature(v::VFIO_DEVICE_FEATURE_PROBE | v::VFIO_DEVICE_FEATURE_SET | 3), Err(Errno::ENOTTY), "low power");
    assert_eq!(
        feature(v::VFIO_DEVICE_FEATURE_PROBE | v::VFIO_DEVICE_FEATURE_SET | 6),
        Err(Errno::ENOTTY),
        "DMA logging"
    );
    assert_eq!(env.raw(fd, v::VFIO_DEVICE_IOEVENTFD, 0), Err(Errno::ENOTTY));
    assert_eq!(env.raw(fd, abi::IOMMU_IOAS_ALLOC, 0), Err(Errno::ENOTTY));
}

#[test]
fn set_irqs_validation_and_loopback() {
    let env = Env::new();
    let fd = env.open();
    env.bind(fd).unwrap();
    use v::{
        VFIO_IRQ_SET_ACTION_MASK as MASK, VFIO_IRQ_SET_ACTION_TRIGGER as TRIGGER, VFIO_IRQ_SET_DATA_BOOL as BOOL,
        VFIO_IRQ_SET_DATA_EVENTFD as EVENTFD, VFIO_IRQ_SET_DATA_NONE as NONE,
    };
    const MSIX: u32 = v::VFIO_PCI_MSIX_IRQ_INDEX;
    let efd = eventfd();
    let fdb = efd.to_ne_bytes();
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, 5, 0, 1, &fdb), Err(Errno::EINVAL), "no such index");
    assert_eq!(env.set_irqs(fd, EVENTFD | BOOL | TRIGGER, MSIX, 0, 1, &fdb), Err(Errno::EINVAL));
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER | (1 << 6), MSIX, 0, 1, &fdb), Err(Errno::EINVAL));
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, MSIX, 1, 1, &fdb), Err(Errno::EINVAL), "one vector");
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, MSIX, 0, 1, &fdb[..3]), Err(Errno::EINVAL), "short data");
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, MSIX, 0, u32::MAX, &[]), Err(Errno::EINVAL));
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, 0, 0, 1, &fdb), Err(Errno::EINVAL), "no INTx pin");
    assert_eq!(env.set_irqs(fd, NONE | MASK, MSIX, 0, 1, &[]), Err(Errno::ENOTTY), "MSI-X masking");
    assert_eq!(env.set_irqs(fd, NONE | TRIGGER, MSIX, 0, 1, &[]), Err(Errno::EINVAL), "not enabled");
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, MSIX, 0, 0, &[]), Err(Errno::ERANGE), "enable nothing");
    let mut pipe = [0i32; 2];
    // SAFETY: creating descriptors into a local array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, MSIX, 0, 1, &pipe[0].to_ne_bytes()), Err(Errno::EINVAL));
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, MSIX, 0, 1, &999_999i32.to_ne_bytes()), Err(Errno::EBADF));
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, MSIX, 0, 1, &env.iommufd.to_ne_bytes()), Err(Errno::EINVAL));

    // Enable MSI-X with the eventfd; the program may close its copy.
    let dup = {
        // SAFETY: duplicating our own descriptor.
        unsafe { libc::dup(efd) }
    };
    assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, MSIX, 0, 1, &dup.to_ne_bytes()), Ok(0));
    close_fd(dup);
    assert_eq!(env.set_irqs(fd, NONE | TRIGGER, MSIX, 0, 1, &[]), Ok(0));
    assert_eq!(take(efd), 1, "DATA_NONE loopback");
    assert_eq!(env.set_irqs(fd, BOOL | TRIGGER, MSIX, 0, 1, &[0]), Ok(0));
    assert_eq!(take(efd), 0);
    assert_eq!(env.set_irqs(fd, BOOL | TRIGGER, MSIX, 0, 1, &[1]), Ok(0));
    assert_eq!(take(efd), 1);
    // The function fires it too.
    use uiommufd_devices::PciDevice;
    env.engine.trigger_irq(MSIX, 0, 1).unwrap();
    assert_eq!(take(efd), 1);
    // Disable: DATA_NONE, count 0.
    assert_eq!(env.set_irqs(fd, NONE | TRIGGER, MSIX, 0, 0, &[]), Ok(0));
    env.engine.trigger_irq(MSIX, 0, 1).unwrap();
    assert_eq!(take(efd), 0);
    assert_eq!(env.set_irqs(fd, NONE | TRIGGER, MSIX, 0, 1, &[]), Err(Errno::EINVAL));

    // ERR and REQ: one eventfd each, loopback, release with -1.
    for index in [v::VFIO_PCI_ERR_IRQ_INDEX, v::VFIO_PCI_REQ_IRQ_INDEX] {
        assert_eq!(env.set_irqs(fd, NONE | TRIGGER, index, 0, 1, &[]), Err(Errno::EINVAL), "no eventfd yet");
        assert_eq!(env.set_irqs(fd, NONE | MASK, index, 0, 1, &[]), Err(Errno::ENOTTY));
        assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, index, 0, 1, &fdb), Ok(0));
        assert_eq!(env.set_irqs(fd, NONE | TRIGGER, index, 0, 1, &[]), Ok(0));
        assert_eq!(take(efd), 1);
        assert_eq!(env.set_irqs(fd, EVENTFD | TRIGGER, index, 0, 1, &(-1i32).to_ne_bytes()), Ok(0));
        assert_eq!(env.set_irqs(fd, NONE | TRIGGER, index, 0, 1, &[]), Err(Errno::EINVAL));
    }
    for f in [efd, pipe[0], pipe[1]] {
        close_fd(f);
    }
}

/// The whole path: bind, attach, map a buffer, program the ring through
/// `pwrite`, see the copies land in our memory and the interrupt arrive.
#[test]
fn dma_engine_copies_into_program_memory() {
    let env = Env::new();
    let fd = env.open();
    env.bind(fd).unwrap();
    let ioas = env.ioas_alloc();
    env.attach(fd, ioas).unwrap();
    let pages = 8;
    let mem = buffer(pages);
    let iova = env.map(ioas, mem, pages * page());
    // Ring of 16 descriptors in page 0, source in 1-2, destination in 3-4.
    let (ring, src, dst) = (iova, iova + page(), iova + 3 * page());
    let len = 2 * page();
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    poke(mem + page(), &pattern);

    // BAR accesses need Memory Space Enable.
    let mut id = [0u8; 4];
    assert_eq!(env.pread(fd, &mut id, BAR0 + regs::REG_ID), Err(Errno::EIO));
    env.enable_function(fd);
    assert_eq!(env.read32(fd, BAR0 + regs::REG_ID), regs::ID_VALUE);
    // The MSI-X table reads as all-ones and ignores writes; the PBA does not.
    let mut table = [0u8; 16];
    assert_eq!(env.pread(fd, &mut table, BAR2 + regs::MSIX_TABLE), Ok(16));
    assert_eq!(table, [0xff; 16]);
    assert_eq!(env.pwrite(fd, &[0; 8], BAR2 + regs::MSIX_TABLE), Ok(8));
    let mut pba = [0xffu8; 8];
    assert_eq!(env.pread(fd, &mut pba, BAR2 + regs::MSIX_PBA), Ok(8));
    assert_eq!(pba, [0; 8]);
    // Reads past the BAR are cut at its end, or EINVAL from its end on.
    let mut tail = [0u8; 16];
    assert_eq!(env.pread(fd, &mut tail, BAR0 + 4096 - 8), Ok(8));
    assert_eq!(env.pread(fd, &mut tail, BAR0 + 4096), Err(Errno::EINVAL));
    // A whole-BAR read in one call (split the kernel's way).
    let mut whole = vec![0u8; 4096];
    assert_eq!(env.pread(fd, &mut whole, BAR0), Ok(4096));
    assert_eq!(&whole[..4], &regs::ID_VALUE.to_le_bytes());

    let efd = eventfd();
    let flags = v::VFIO_IRQ_SET_DATA_EVENTFD | v::VFIO_IRQ_SET_ACTION_TRIGGER;
    assert_eq!(env.set_irqs(fd, flags, v::VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, &efd.to_ne_bytes()), Ok(0));

    env.write64(fd, BAR0 + regs::REG_RING_BASE, ring);
    env.write32(fd, BAR0 + regs::REG_RING_SIZE, 16);
    env.write32(fd, BAR0 + regs::REG_CTRL, regs::CTRL_ENABLE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.read32(fd, BAR0 + regs::REG_STATUS) & regs::STATUS_ENABLED == 0 {
        assert!(Instant::now() < deadline, "the ring never enabled");
        std::thread::yield_now();
    }
    let descs = [
        Descriptor::copy(dst, src, len),
        Descriptor::fill(dst + len - 64, 64, 0x0123_4567_89ab_cdef),
        Descriptor::compare(src, dst, 64).with_irq(),
    ];
    let ring_mem = mem;
    for (i, d) in descs.iter().enumerate() {
        poke(ring_mem + i as u64 * 64, &d.to_bytes());
    }
    env.write32(fd, BAR0 + regs::REG_TAIL, descs.len() as u32);
    assert_eq!(wait_for(efd, Duration::from_secs(10)), 1, "the completion interrupt");
    assert_eq!(env.read32(fd, BAR0 + regs::REG_HEAD), 3);
    let statuses: Vec<u32> =
        (0..3).map(|i| u32::from_le_bytes(peek(ring_mem + i * 64 + 0x38, 4).try_into().unwrap())).collect();
    assert_eq!(statuses, [regs::status::SUCCESS; 3]);
    let got = peek(mem + 3 * page(), len as usize);
    assert_eq!(&got[..(len - 64) as usize], &pattern[..(len - 64) as usize]);
    assert_eq!(&got[(len - 64) as usize..], &[0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01].repeat(8)[..]);

    // VFIO_DEVICE_RESET: the ring is back to its power-on state, the
    // config space the program set up is kept.
    assert_eq!(env.raw(fd, v::VFIO_DEVICE_RESET, 0), Ok(0));
    assert_eq!(env.read32(fd, BAR0 + regs::REG_HEAD), 0);
    assert_eq!(env.read32(fd, BAR0 + regs::REG_CTRL), 0);

    // Closing unbinds: DMA is blocked and the engine is reset.
    env.fds.close(fd).unwrap();
    assert_eq!(env.engine.ring_state().head, 0);
    close_fd(efd);
}

#[test]
fn config_space_and_mmap() {
    let env = Env::new();
    let fd = env.open();
    env.bind(fd).unwrap();
    // Config space: any length inside 4 KiB, EFAULT across its end.
    let mut hdr = [0u8; 64];
    assert_eq!(env.pread(fd, &mut hdr, CONFIG), Ok(64));
    assert_eq!(&hdr[..4], &[0x34, 0x12, 0x44, 0x55], "vendor 1234h, device 5544h");
    let mut odd = [0u8; 3];
    assert_eq!(env.pread(fd, &mut odd, CONFIG + 1), Ok(3));
    assert_eq!(odd, [0x12, 0x44, 0x55]);
    let mut b = [0u8; 8];
    assert_eq!(env.pread(fd, &mut b, CONFIG + 4092), Err(Errno::EFAULT));
    assert_eq!(env.pread(fd, &mut b, CONFIG + 4096), Err(Errno::EFAULT));
    assert_eq!(env.pread(fd, &mut b, 9 << 40), Err(Errno::EINVAL), "no region 9");
    assert_eq!(env.pread(fd, &mut b, 1 << 40), Err(Errno::EINVAL), "BAR1 is the upper half");
    assert_eq!(env.pread(fd, &mut b, 6 << 40), Err(Errno::EINVAL), "no ROM");
    assert_eq!(env.pwrite(fd, &b, 6 << 40), Err(Errno::EINVAL));
    assert_eq!(env.pread(fd, &mut [], 9 << 40), Ok(0), "count 0 reads nothing");
    assert_eq!(env.file(fd).read(b.as_mut_ptr() as u64, 8, Some(-1)).unwrap_err().errno, Errno::EINVAL);
    assert_eq!(env.pread(fd, &mut b, CONFIG), Ok(8));
    assert_eq!(env.file(fd).read(8, 8, Some(CONFIG as i64)).unwrap_err().errno, Errno::EFAULT);

    // mmap: BAR0 only, MAP_SHARED, inside the BAR.
    let f = env.file(fd);
    let File::VfioDevice(vf) = &*f else { unreachable!() };
    assert_eq!(vf.mmap_target(0, 4096, false).unwrap_err().errno, Errno::EINVAL, "private");
    assert_eq!(vf.mmap_target(0, 8192, true).unwrap_err().errno, Errno::EINVAL, "past the BAR");
    assert_eq!(vf.mmap_target(4096, 4096, true).unwrap_err().errno, Errno::EINVAL, "past the BAR");
    assert_eq!(vf.mmap_target(CONFIG, 4096, true).unwrap_err().errno, Errno::EINVAL, "config space");
    assert_eq!(vf.mmap_target(1 << 40, 4096, true).unwrap_err().errno, Errno::EINVAL, "absent BAR");
    assert_eq!(vf.mmap_target(9 << 40, 4096, true).unwrap_err().errno, Errno::EINVAL);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let bar = f.mmap(0, 4096, rw, libc::MAP_SHARED, 0).unwrap();
    assert_eq!(u32::from_le_bytes(peek(bar, 4).try_into().unwrap()), regs::ID_VALUE);
    // Stores through the mapping reach the registers.
    poke(bar + regs::REG_RING_SIZE, &64u32.to_le_bytes());
    env.enable_function(fd);
    assert_eq!(env.read32(fd, BAR0 + regs::REG_RING_SIZE), 64);
    // SAFETY: unmapping the mapping made above.
    assert_eq!(unsafe { libc::munmap(bar as *mut libc::c_void, 4096) }, 0);
    assert_eq!(f.mmap(0, 4096, rw, libc::MAP_PRIVATE, 0).unwrap_err().errno, Errno::EINVAL);
}

#[test]
fn platform_devices_open_through_their_nodes() {
    // The registry over the process's platform: empty without
    // UIOMMUFD_DEVICES, so the node is a file that answers ENODEV.
    if std::env::var_os("UIOMMUFD_DEVICES").is_none() {
        assert!(VfioDevice::global(0).is_none());
        assert_eq!(File::try_open(Node::VfioDevice(0)).err(), Some(Errno::ENODEV));
        let f = File::open(Node::VfioDevice(0));
        assert_eq!(f.ioctl(&LocalFds::default(), v::VFIO_DEVICE_GET_INFO as u64, 0).unwrap_err().errno, Errno::ENODEV);
    }
    // A platform built here registers the same way.
    let p = Platform::new("mock", "dma-engine:pasid=0,bdf=0000:01:00.0").unwrap();
    let dev = VfioDevice::from_platform(&p.devices[0]);
    assert_eq!((dev.index(), dev.bdf()), (0, "0000:01:00.0"));
    let fds = LocalFds::default();
    let iommufd = fds.install(Arc::new(File::open(Node::Iommu)), true).unwrap();
    let fd = fds.install(Arc::new(File::open_vfio_device(&dev)), true).unwrap();
    let mut b = v::VfioDeviceBindIommufd { argsz: 16, iommufd, ..Default::default() };
    let f = fds.get(fd).unwrap();
    f.ioctl(&fds, v::VFIO_DEVICE_BIND_IOMMUFD as u64, b.as_mut_bytes().as_mut_ptr() as u64).unwrap();
    assert_ne!(b.out_devid, 0);
    // Without a PASID capability the device takes no PASID attachment.
    let mut a = v::VfioDeviceAttachIommufdPt { argsz: 16, flags: v::VFIO_DEVICE_ATTACH_PASID, pt_id: 1, pasid: 1 };
    let e = f.ioctl(&fds, v::VFIO_DEVICE_ATTACH_IOMMUFD_PT as u64, a.as_mut_bytes().as_mut_ptr() as u64);
    assert!(e.is_err());
}
