//! Legacy VFIO groups through the library: the type1 sequence a QEMU,
//! DPDK or SPDK user makes (container, group, SET_CONTAINER, SET_IOMMU,
//! MAP_DMA, GET_DEVICE_FD), the errnos of each group ioctl in the wrong
//! state, the exclusion between a group and its devices' cdevs, and a DMA
//! engine copying through memory mapped with `VFIO_IOMMU_MAP_DMA`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uiommufd_abi::vfio::{self as v};
use uiommufd_abi::{self as abi, Errno};
use uiommufd_devices::dma_engine::regs::{self, Descriptor};
use uiommufd_devices::DmaEngine;
use uiommufd_hw::mock::MockDevice;
use zerocopy::{FromBytes, IntoBytes};

use crate::{FdHost, File, LocalFds, Node, VfioDevice, VfioGroup};

const BDF: &str = "0000:00:04.0";
const BAR0: u64 = 0;
const CONFIG: u64 = (v::VFIO_PCI_CONFIG_REGION_INDEX as u64) << v::VFIO_PCI_OFFSET_SHIFT;
/// Where the mock IOMMU's aperture starts: an IOVA every model accepts.
const IOVA: u64 = abi::test_cmd::MOCK_APERTURE_START;

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

/// A [`LocalFds`] that records the close-on-exec flag of every install
/// and can be told to refuse the next one (`EMFILE`).
#[derive(Default)]
struct Fds {
    inner: LocalFds,
    cloexec: Mutex<Vec<bool>>,
    refuse_next: Mutex<bool>,
}

impl FdHost for Fds {
    fn install(&self, file: Arc<File>, cloexec: bool) -> Result<i32, Errno> {
        if std::mem::take(&mut *self.refuse_next.lock().unwrap()) {
            return Err(Errno::EMFILE);
        }
        self.cloexec.lock().unwrap().push(cloexec);
        self.inner.install(file, cloexec)
    }

    fn uninstall(&self, fd: i32) {
        self.inner.uninstall(fd)
    }

    fn get(&self, fd: i32) -> Option<Arc<File>> {
        self.inner.get(fd)
    }
}

/// One DMA engine behind the mock IOMMU, alone in IOMMU group 0, and a
/// container (`/dev/vfio/vfio`) open.
struct Env {
    fds: Fds,
    container: i32,
    engine: Arc<DmaEngine>,
    dev: Arc<VfioDevice>,
}

impl Env {
    fn new() -> Env {
        let engine = Arc::new(DmaEngine::new("dma-engine0").unwrap());
        let mock = Arc::new(MockDevice::new(0).unwrap());
        let dev = VfioDevice::new(0, BDF, engine.clone(), mock);
        let fds = Fds::default();
        let container = fds.install(Arc::new(File::open(Node::VfioContainer)), true).unwrap();
        Env { fds, container, engine, dev }
    }

    fn group(&self) -> &Arc<VfioGroup> {
        self.dev.group()
    }

    /// `open("/dev/vfio/0")`.
    fn open_group(&self) -> Result<i32, Errno> {
        let f = File::open_vfio_group(self.group())?;
        Ok(self.fds.install(Arc::new(f), true).unwrap())
    }

    /// `open("/dev/vfio/devices/vfio0")`.
    fn open_cdev(&self) -> i32 {
        self.fds.install(Arc::new(File::open_vfio_device(&self.dev)), true).unwrap()
    }

    fn close(&self, fd: i32) {
        self.fds.inner.close(fd).unwrap();
    }

    fn file(&self, fd: i32) -> Arc<File> {
        self.fds.get(fd).unwrap()
    }

    fn raw(&self, fd: i32, req: u32, arg: u64) -> Result<i32, Errno> {
        self.file(fd).ioctl(&self.fds, req as u64, arg).map_err(|e| e.errno)
    }

    fn ioctl<T: IntoBytes + FromBytes + ?Sized>(&self, fd: i32, req: u32, arg: &mut T) -> Result<i32, Errno> {
        self.raw(fd, req, arg.as_mut_bytes().as_mut_ptr() as u64)
    }

    fn status(&self, group: i32) -> Result<u32, Errno> {
        let mut s = v::VfioGroupStatus { argsz: 8, flags: 0xdead };
        self.ioctl(group, v::VFIO_GROUP_GET_STATUS, &mut s)?;
        Ok(s.flags)
    }

    fn set_container(&self, group: i32, container: i32) -> Result<i32, Errno> {
        let mut fd = container;
        self.ioctl(group, v::VFIO_GROUP_SET_CONTAINER, &mut fd)
    }

    fn get_device_fd(&self, group: i32, name: &str) -> Result<i32, Errno> {
        let mut s = name.as_bytes().to_vec();
        s.push(0);
        self.raw(group, v::VFIO_GROUP_GET_DEVICE_FD, s.as_ptr() as u64)
    }

    fn bind(&self, dev: i32, iommufd: i32) -> Result<i32, Errno> {
        let mut b = v::VfioDeviceBindIommufd { argsz: 16, iommufd, ..Default::default() };
        self.ioctl(dev, v::VFIO_DEVICE_BIND_IOMMUFD, &mut b)
    }

    fn map_dma(&self, container: i32, vaddr: u64, iova: u64, size: u64) -> Result<i32, Errno> {
        let flags = v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE;
        let mut m = v::VfioIommuType1DmaMap { argsz: 32, flags, vaddr, iova, size };
        self.ioctl(container, v::VFIO_IOMMU_MAP_DMA, &mut m)
    }

    /// `IOMMU_VFIO_IOAS` GET on `fd`: the compat IOAS.
    fn compat_ioas(&self, fd: i32) -> Result<u32, Errno> {
        let mut c = abi::IommuVfioIoas { size: 12, op: abi::IOMMU_VFIO_IOAS_GET, ..Default::default() };
        self.ioctl(fd, abi::IOMMU_VFIO_IOAS, &mut c)?;
        Ok(c.ioas_id)
    }

    fn destroy(&self, fd: i32, id: u32) -> Result<i32, Errno> {
        let mut d = abi::IommuDestroy { size: 8, id };
        self.ioctl(fd, abi::IOMMU_DESTROY, &mut d)
    }

    /// `f` on the device file behind `fd` (which it must not keep: the
    /// file closes when its last reference goes).
    fn device_file<R>(&self, fd: i32, f: impl FnOnce(&crate::VfioDeviceFile) -> R) -> R {
        match &*self.file(fd) {
            File::VfioDevice(d) => f(d),
            _ => panic!("not a device file"),
        }
    }

    fn ctx(&self, fd: i32) -> Arc<uiommufd_core::Iommufd> {
        match &*self.file(fd) {
            File::Iommufd(ctx) => Arc::clone(ctx),
            _ => unreachable!("not an iommufd"),
        }
    }

    fn pread(&self, fd: i32, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
        self.file(fd).read(buf.as_mut_ptr() as u64, buf.len(), Some(off as i64)).map_err(|e| e.errno)
    }

    fn pwrite(&self, fd: i32, buf: &[u8], off: u64) -> Result<usize, Errno> {
        self.file(fd).write(buf.as_ptr() as u64, buf.len(), Some(off as i64)).map_err(|e| e.errno)
    }

    fn read32(&self, fd: i32, off: u64) -> u32 {
        let mut b = [0u8; 4];
        assert_eq!(self.pread(fd, &mut b, off), Ok(4));
        u32::from_le_bytes(b)
    }

    fn write32(&self, fd: i32, off: u64, val: u32) {
        assert_eq!(self.pwrite(fd, &val.to_le_bytes(), off), Ok(4));
    }

    fn write64(&self, fd: i32, off: u64, val: u64) {
        assert_eq!(self.pwrite(fd, &val.to_le_bytes(), off), Ok(8));
    }

    /// Memory Space and Bus Master on, through config space.
    fn enable_function(&self, fd: i32) {
        let mut cmd = [0u8; 2];
        self.pread(fd, &mut cmd, CONFIG + 4).unwrap();
        let cmd = u16::from_le_bytes(cmd) | 0b110;
        assert_eq!(self.pwrite(fd, &cmd.to_le_bytes(), CONFIG + 4), Ok(2));
    }

    /// Run one COPY of `len` bytes from IOVA `src` to `dst` on the engine
    /// behind device descriptor `fd`, with its ring at IOVA `ring` (whose
    /// memory is at `ring_mem` in this process); returns the descriptor's
    /// completion status.
    fn engine_copy(&self, fd: i32, ring: u64, ring_mem: u64, src: u64, dst: u64, len: u64) -> u32 {
        self.enable_function(fd);
        assert_eq!(self.read32(fd, BAR0 + regs::REG_ID), regs::ID_VALUE);
        self.write64(fd, BAR0 + regs::REG_RING_BASE, ring);
        self.write32(fd, BAR0 + regs::REG_RING_SIZE, 16);
        self.write32(fd, BAR0 + regs::REG_CTRL, regs::CTRL_ENABLE);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.read32(fd, BAR0 + regs::REG_STATUS) & regs::STATUS_ENABLED == 0 {
            assert!(Instant::now() < deadline, "the ring never enabled");
            std::thread::yield_now();
        }
        let head = self.read32(fd, BAR0 + regs::REG_HEAD);
        let slot = u64::from(head % 16);
        poke(ring_mem + slot * 64, &Descriptor::copy(dst, src, len).to_bytes());
        self.write32(fd, BAR0 + regs::REG_TAIL, head + 1);
        while self.read32(fd, BAR0 + regs::REG_HEAD) != head + 1 {
            assert!(Instant::now() < deadline, "the copy never completed");
            std::thread::yield_now();
        }
        u32::from_le_bytes(peek(ring_mem + slot * 64 + 0x38, 4).try_into().unwrap())
    }
}

/// The whole legacy sequence (Documentation/driver-api/vfio.rst, QEMU's
/// `vfio_connect_container`): the device's DMA goes through what the
/// program mapped with `VFIO_IOMMU_MAP_DMA`.
#[test]
fn type1_sequence_reaches_the_device_and_its_dma_lands() {
    let env = Env::new();
    let c = env.container;
    assert_eq!(env.raw(c, v::VFIO_GET_API_VERSION, 0), Ok(v::VFIO_API_VERSION as i32));
    assert_eq!(env.raw(c, v::VFIO_CHECK_EXTENSION, v::VFIO_TYPE1v2_IOMMU as u64), Ok(1));
    assert_eq!(env.raw(c, v::VFIO_CHECK_EXTENSION, v::VFIO_TYPE1_IOMMU as u64), Ok(1));
    // iommufd's compat: no group, no compat IOAS: ENODEV (the legacy
    // container says EINVAL).
    assert_eq!(env.raw(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1v2_IOMMU as u64), Err(Errno::ENODEV));

    let g = env.open_group().unwrap();
    assert_eq!(env.status(g), Ok(v::VFIO_GROUP_FLAGS_VIABLE));
    assert_eq!(env.set_container(g, c), Ok(0));
    assert_eq!(env.status(g), Ok(v::VFIO_GROUP_FLAGS_VIABLE | v::VFIO_GROUP_FLAGS_CONTAINER_SET));
    assert_eq!(env.raw(c, v::VFIO_SET_IOMMU, 2), Err(Errno::EINVAL), "SPAPR is not emulated");
    assert_eq!(env.raw(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1v2_IOMMU as u64), Ok(0));
    let mut info = [0u8; 256];
    info[..4].copy_from_slice(&256u32.to_ne_bytes());
    assert_eq!(env.ioctl(c, v::VFIO_IOMMU_GET_INFO, &mut info), Ok(0));
    let head = v::VfioIommuType1Info::read_from_prefix(&info).unwrap().0;
    assert_ne!(head.flags & v::VFIO_IOMMU_INFO_CAPS, 0);
    assert_ne!(head.iova_pgsizes & page(), 0);

    let pages = 8;
    let mem = buffer(pages);
    assert_eq!(env.map_dma(c, mem, IOVA, pages * page()), Ok(0));

    let d = env.get_device_fd(g, BDF).unwrap();
    assert!(*env.fds.cloexec.lock().unwrap().last().unwrap(), "O_CLOEXEC");
    assert!(env.device_file(d, |f| f.from_group()));
    assert!(env.dev.is_bound());
    // Bound in the container's context and attached to its compat IOAS.
    let ctx = env.ctx(c);
    let ioas = env.compat_ioas(c).unwrap();
    assert_eq!(env.destroy(c, ioas), Err(Errno::EBUSY), "the device's domain uses it");
    let attached = env.device_file(d, |f| f.iommufd_device().unwrap().attached(uiommufd_core::device::NO_PASID));
    assert!(attached.is_some());
    assert_eq!(env.status(g), Ok(v::VFIO_GROUP_FLAGS_VIABLE | v::VFIO_GROUP_FLAGS_CONTAINER_SET));

    let mut dinfo = v::VfioDeviceInfo { argsz: 24, ..Default::default() };
    assert_eq!(env.ioctl(d, v::VFIO_DEVICE_GET_INFO, &mut dinfo), Ok(0));
    assert_ne!(dinfo.flags & v::VFIO_DEVICE_FLAGS_PCI, 0);
    let mut region = v::VfioRegionInfo { argsz: 32, index: v::VFIO_PCI_BAR0_REGION_INDEX, ..Default::default() };
    assert_eq!(env.ioctl(d, v::VFIO_DEVICE_GET_REGION_INFO, &mut region), Ok(0));
    assert_ne!(region.flags & v::VFIO_REGION_INFO_FLAG_MMAP, 0);

    // Ring in page 0, source in pages 1-2, destination in 4-5.
    let len = 2 * page();
    let pattern: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
    poke(mem + page(), &pattern);
    let status = env.engine_copy(d, IOVA, mem, IOVA + page(), IOVA + 4 * page(), len);
    assert_eq!(status, regs::status::SUCCESS);
    assert_eq!(peek(mem + 4 * page(), len as usize), pattern, "the copy landed in our memory");

    // Closing the device file unbinds: the device object and the domain go,
    // the compat IOAS and its mapping stay.
    env.close(d);
    assert!(!env.dev.is_bound());
    assert_eq!(env.engine.ring_state().head, 0, "reset at close");
    assert_eq!(ctx.objects().len(), 1, "only the compat IOAS is left");
    let mut unmap = v::VfioIommuType1DmaUnmap { argsz: 24, iova: IOVA, size: pages * page(), ..Default::default() };
    assert_eq!(env.ioctl(c, v::VFIO_IOMMU_UNMAP_DMA, &mut unmap), Ok(0));
    assert_eq!(unmap.size, pages * page());
    assert_eq!(env.raw(g, v::VFIO_GROUP_UNSET_CONTAINER, 0), Ok(0));
    assert_eq!(env.status(g), Ok(v::VFIO_GROUP_FLAGS_VIABLE));
    env.close(g);
    assert!(!env.group().is_open());
    env.close(c);
}

/// The checks of each group ioctl, in the kernel's order.
#[test]
fn group_ioctls_fail_in_the_wrong_state() {
    let env = Env::new();
    let c = env.container;
    let g = env.open_group().unwrap();
    assert_eq!(env.open_group(), Err(Errno::EBUSY), "one open of the node at a time");
    assert_eq!(env.raw(g, abi::ioctl::io(v::VFIO_TYPE, v::VFIO_BASE + 7), 0), Err(Errno::ENOTTY));
    assert_eq!(env.raw(g, v::VFIO_GET_API_VERSION, 0), Err(Errno::ENOTTY), "a container request");

    // GET_STATUS: the struct, then argsz.
    assert_eq!(env.raw(g, v::VFIO_GROUP_GET_STATUS, 0), Err(Errno::EFAULT));
    let mut s = v::VfioGroupStatus { argsz: 7, flags: 0 };
    assert_eq!(env.ioctl(g, v::VFIO_GROUP_GET_STATUS, &mut s), Err(Errno::EINVAL));

    // Without a container.
    assert_eq!(env.raw(g, v::VFIO_GROUP_UNSET_CONTAINER, 0), Err(Errno::EINVAL));
    assert_eq!(env.raw(g, v::VFIO_GROUP_GET_DEVICE_FD, 0), Err(Errno::EFAULT));
    assert_eq!(env.get_device_fd(g, "0000:00:05.0"), Err(Errno::ENODEV), "the name is looked up first");
    assert_eq!(env.get_device_fd(g, BDF), Err(Errno::EINVAL), "no container");
    let token = format!("{BDF} vf_token=bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3");
    assert_eq!(env.get_device_fd(g, &token), Err(Errno::EINVAL), "not an SR-IOV function");
    assert_eq!(env.get_device_fd(g, &format!("{BDF} bogus")), Err(Errno::EINVAL));
    assert_eq!(env.get_device_fd(g, &format!("{BDF}x")), Err(Errno::ENODEV));
    let long = vec![b'0'; page() as usize + 1];
    assert_eq!(env.raw(g, v::VFIO_GROUP_GET_DEVICE_FD, long.as_ptr() as u64), Err(Errno::EINVAL));

    // SET_CONTAINER: the pointer, the descriptor, the group's state, the
    // kind of file.
    assert_eq!(env.raw(g, v::VFIO_GROUP_SET_CONTAINER, 0), Err(Errno::EFAULT));
    assert_eq!(env.set_container(g, 999_999), Err(Errno::EBADF));
    assert_eq!(env.set_container(g, -1), Err(Errno::EBADF));
    assert_eq!(env.set_container(g, 0), Err(Errno::EBADFD), "stdin is open but no container");
    assert_eq!(env.set_container(g, g), Err(Errno::EBADFD), "a group is no container");
    let cdev = env.open_cdev();
    assert_eq!(env.set_container(g, cdev), Err(Errno::EBADFD));
    env.close(cdev);
    assert_eq!(env.status(g), Ok(v::VFIO_GROUP_FLAGS_VIABLE), "failures set nothing");
    assert_eq!(env.set_container(g, c), Ok(0));
    assert_eq!(env.set_container(g, c), Err(Errno::EINVAL), "already set");
    assert_eq!(env.set_container(g, 0), Err(Errno::EINVAL), "already set comes before the kind");
    assert_eq!(env.set_container(g, 999_999), Err(Errno::EBADF), "the descriptor comes first");

    // No VFIO_SET_IOMMU needed with an iommufd container (the legacy
    // container's vfio_group_use_container would say EINVAL).
    let d = env.get_device_fd(g, BDF).unwrap();
    // The cdev-only requests on a group's device file.
    assert_eq!(env.bind(d, c), Err(Errno::EINVAL));
    let mut a = v::VfioDeviceAttachIommufdPt { argsz: 12, pt_id: env.compat_ioas(c).unwrap(), ..Default::default() };
    assert_eq!(env.ioctl(d, v::VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a), Err(Errno::ENOTTY));
    let mut dt = v::VfioDeviceDetachIommufdPt { argsz: 8, ..Default::default() };
    assert_eq!(env.ioctl(d, v::VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut dt), Err(Errno::ENOTTY));
    // A group's device passes group descriptors to a hot reset.
    let mut hr = v::VfioPciHotReset { argsz: 12, flags: 0, count: 0 };
    assert_eq!(env.ioctl(d, v::VFIO_DEVICE_PCI_HOT_RESET, &mut hr), Err(Errno::EINVAL));
    hr.count = 1;
    assert_eq!(env.ioctl(d, v::VFIO_DEVICE_PCI_HOT_RESET, &mut hr), Err(Errno::ENODEV));
    assert_eq!(env.raw(d, v::VFIO_DEVICE_RESET, 0), Ok(0));
    env.close(d);

    // Without a compat IOAS (destroyed by the program) the device cannot
    // attach: ENODEV, and it is left closed.
    let ioas = env.compat_ioas(c).unwrap();
    assert_eq!(env.destroy(c, ioas), Ok(0));
    assert_eq!(env.get_device_fd(g, BDF), Err(Errno::ENODEV));
    assert!(!env.dev.is_bound());
    assert!(env.ctx(c).objects().is_empty(), "no device object left behind");

    // A descriptor that cannot be installed leaves the device closed too.
    assert_eq!(env.raw(g, v::VFIO_GROUP_UNSET_CONTAINER, 0), Ok(0));
    assert_eq!(env.set_container(g, c), Ok(0), "a new compat IOAS");
    *env.fds.refuse_next.lock().unwrap() = true;
    assert_eq!(env.get_device_fd(g, BDF), Err(Errno::EMFILE));
    assert!(!env.dev.is_bound());
    env.close(g);
}

/// `/dev/iommu` serves as a container too; a compat IOAS the program chose
/// with `IOMMU_VFIO_IOAS` is the one the device attaches to.
#[test]
fn dev_iommu_as_the_container() {
    let env = Env::new();
    let iommufd = env.fds.install(Arc::new(File::open(Node::Iommu)), true).unwrap();
    assert_eq!(env.compat_ioas(iommufd), Err(Errno::ENODEV));
    let mut alloc = abi::IommuIoasAlloc { size: 12, ..Default::default() };
    env.ioctl(iommufd, abi::IOMMU_IOAS_ALLOC, &mut alloc).unwrap();
    let mine = alloc.out_ioas_id;
    let mut set = abi::IommuVfioIoas { size: 12, ioas_id: mine, op: abi::IOMMU_VFIO_IOAS_SET, ..Default::default() };
    assert_eq!(env.ioctl(iommufd, abi::IOMMU_VFIO_IOAS, &mut set), Ok(0));
    let g = env.open_group().unwrap();
    assert_eq!(env.set_container(g, iommufd), Ok(0));
    assert_eq!(env.compat_ioas(iommufd), Ok(mine), "SET_CONTAINER kept the program's IOAS");
    let d = env.get_device_fd(g, BDF).unwrap();
    let hwpt = env.device_file(d, |f| f.iommufd_device().unwrap().attached(uiommufd_core::device::NO_PASID));
    let hwpt = hwpt.unwrap();
    assert_ne!(hwpt, mine, "an automatic HWPT of that IOAS");
    assert_eq!(env.destroy(iommufd, mine), Err(Errno::EBUSY));
    env.close(d);
    env.close(g);
    assert_eq!(env.destroy(iommufd, mine), Ok(0));
    env.close(iommufd);
}

/// A device is open through one path at a time: its group node and its
/// cdev exclude each other (`vfio_group_fops_open`,
/// `vfio_device_block_group`, `vfio_df_open`); the group path may open the
/// device several times.
#[test]
fn one_open_per_device_across_cdev_and_group() {
    let env = Env::new();
    let c = env.container;
    // A bound cdev blocks the group node; an unbound one does not.
    let cdev = env.open_cdev();
    assert_eq!(env.bind(cdev, c), Ok(0));
    assert_eq!(env.open_group(), Err(Errno::EBUSY));
    env.close(cdev);
    let cdev = env.open_cdev();
    let g = env.open_group().unwrap();
    // The open group node blocks a cdev bind.
    assert_eq!(env.bind(cdev, c), Err(Errno::EBUSY));
    assert!(!env.dev.is_bound());
    assert_eq!(env.set_container(g, c), Ok(0));
    let d1 = env.get_device_fd(g, BDF).unwrap();
    let d2 = env.get_device_fd(g, BDF).unwrap();
    assert_ne!(d1, d2);
    assert_eq!(env.device_file(d1, |f| f.devid()), env.device_file(d2, |f| f.devid()), "one binding for both");
    // Closing the group node leaves the device files working; the cdev
    // still cannot bind the device they hold open.
    env.close(g);
    assert_eq!(env.bind(cdev, c), Err(Errno::EINVAL));
    assert_eq!(env.read32(d2, CONFIG), 0x5544_1234, "vendor and device ID");
    let reopened = env.open_group().unwrap();
    assert_eq!(env.status(reopened), Ok(0), "not viable: the device is owned");
    env.close(reopened);
    env.close(d1);
    assert!(env.dev.is_bound(), "the second file still has it open");
    env.close(d2);
    assert!(!env.dev.is_bound());
    // Now the cdev binds, and the group node is blocked again.
    assert_eq!(env.bind(cdev, c), Ok(0));
    assert_eq!(env.open_group(), Err(Errno::EBUSY));
    env.close(cdev);
    let g = env.open_group().unwrap();
    env.close(g);
}

/// With an iommufd container, UNSET_CONTAINER (like closing the node) is
/// allowed while a device file is open (`vfio_group_ioctl_unset_container`
/// is EBUSY only for a legacy container with users): the file keeps its
/// binding, and its DMA still goes through the old compat IOAS.
#[test]
fn unset_container_while_a_device_is_open_keeps_the_device() {
    let env = Env::new();
    let c = env.container;
    let g = env.open_group().unwrap();
    assert_eq!(env.set_container(g, c), Ok(0));
    let pages = 4;
    let mem = buffer(pages);
    assert_eq!(env.map_dma(c, mem, IOVA, pages * page()), Ok(0));
    let d = env.get_device_fd(g, BDF).unwrap();
    assert_eq!(env.raw(g, v::VFIO_GROUP_UNSET_CONTAINER, 0), Ok(0));
    assert_eq!(env.raw(g, v::VFIO_GROUP_UNSET_CONTAINER, 0), Err(Errno::EINVAL));
    assert_eq!(env.status(g), Ok(0), "no container, and the device is owned");
    assert_eq!(env.get_device_fd(g, BDF), Err(Errno::EINVAL));
    poke(mem + page(), &[0x5a; 64]);
    assert_eq!(env.engine_copy(d, IOVA, mem, IOVA + page(), IOVA + 2 * page(), 64), regs::status::SUCCESS);
    assert_eq!(peek(mem + 2 * page(), 64), vec![0x5a; 64]);
    // Another container: a second open shares the first binding, made in
    // the first container's context.
    let other = env.fds.install(Arc::new(File::open(Node::VfioContainer)), true).unwrap();
    assert_eq!(env.set_container(g, other), Ok(0));
    let d2 = env.get_device_fd(g, BDF).unwrap();
    let devid = env.device_file(d2, |f| f.devid()).unwrap();
    assert_eq!(env.ctx(c).objects().kind_of(devid), Some(uiommufd_core::object::ObjectKind::Device));
    assert!(env.ctx(other).objects().kind_of(devid).is_none());
    env.close(d);
    env.close(d2);
    assert!(!env.dev.is_bound());
    assert_eq!(env.ctx(c).objects().len(), 1, "the device object and its domain are gone");
    env.close(g);
    env.close(other);
    env.close(c);
}

/// Without a platform, no group node exists.
#[test]
fn group_nodes_need_a_platform_device() {
    if std::env::var_os("UIOMMUFD_DEVICES").is_none() {
        assert!(VfioGroup::global(0).is_none());
        assert_eq!(File::try_open(Node::VfioGroup(0)).err(), Some(Errno::ENODEV));
        let f = File::open(Node::VfioGroup(0));
        let e = f.ioctl(&LocalFds::default(), v::VFIO_GROUP_GET_STATUS as u64, 0).unwrap_err();
        assert_eq!(e.errno, Errno::ENODEV);
    }
    // Platform devices in one group share it.
    let p = uiommufd_devices::platform::Platform::new("mock", "dma-engine;dma-engine").unwrap();
    let devs = VfioDevice::register_platform(&p);
    assert_eq!(devs.iter().map(|d| d.group().number()).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(devs[1].group().devices().len(), 1);
    assert_eq!(devs[1].group().devices()[0].bdf(), "0000:00:05.0");
}
