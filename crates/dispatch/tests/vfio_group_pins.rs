//! A legacy VFIO group user leaves no pinned page behind, whichever order
//! it closes its container, group and device descriptors in.
//!
//! Its own test binary: the frame table's pin count is process-wide, so
//! no other test may pin while this one compares it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uiommufd_abi::vfio as v;
use uiommufd_abi::Errno;
use uiommufd_devices::dma_engine::regs::{self, Descriptor};
use uiommufd_devices::DmaEngine;
use uiommufd_dispatch::{FdHost, File, LocalFds, Node, VfioDevice};
use uiommufd_hw::mock::MockDevice;
use uiommufd_memory::frames;
use zerocopy::IntoBytes;

const BDF: &str = "0000:00:04.0";
const IOVA: u64 = uiommufd_abi::test_cmd::MOCK_APERTURE_START;
const CONFIG: u64 = (v::VFIO_PCI_CONFIG_REGION_INDEX as u64) << v::VFIO_PCI_OFFSET_SHIFT;

fn page() -> u64 {
    uiommufd_memory::page_size() as u64
}

fn buffer(pages: u64) -> u64 {
    // SAFETY: a fresh private anonymous mapping, never unmapped (a device
    // may hold its pages).
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

struct Env {
    fds: LocalFds,
    dev: Arc<VfioDevice>,
}

impl Env {
    fn ioctl(&self, fd: i32, req: u32, arg: u64) -> Result<i32, Errno> {
        self.fds.get(fd).unwrap().ioctl(&self.fds, req as u64, arg).map_err(|e| e.errno)
    }

    fn pwrite(&self, fd: i32, buf: &[u8], off: u64) {
        let f = self.fds.get(fd).unwrap();
        assert_eq!(f.write(buf.as_ptr() as u64, buf.len(), Some(off as i64)).unwrap(), buf.len());
    }

    fn read32(&self, fd: i32, off: u64) -> u32 {
        let mut b = [0u8; 4];
        let f = self.fds.get(fd).unwrap();
        assert_eq!(f.read(b.as_mut_ptr() as u64, 4, Some(off as i64)).unwrap(), 4);
        u32::from_le_bytes(b)
    }

    /// Container, group, SET_CONTAINER, SET_IOMMU, MAP_DMA of `mem`,
    /// GET_DEVICE_FD, and one COPY by the engine inside `mem`: returns
    /// `(container, group, device)`.
    fn type1_user(&self, mem: u64, pages: u64) -> (i32, i32, i32) {
        let c = self.fds.install(Arc::new(File::open(Node::VfioContainer)), true).unwrap();
        let g = self.fds.install(Arc::new(File::open_vfio_group(self.dev.group()).unwrap()), true).unwrap();
        let mut cfd = c;
        assert_eq!(self.ioctl(g, v::VFIO_GROUP_SET_CONTAINER, cfd.as_mut_bytes().as_mut_ptr() as u64), Ok(0));
        assert_eq!(self.ioctl(c, v::VFIO_SET_IOMMU, v::VFIO_TYPE1v2_IOMMU as u64), Ok(0));
        let flags = v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE;
        let mut map = v::VfioIommuType1DmaMap { argsz: 32, flags, vaddr: mem, iova: IOVA, size: pages * page() };
        assert_eq!(self.ioctl(c, v::VFIO_IOMMU_MAP_DMA, map.as_mut_bytes().as_mut_ptr() as u64), Ok(0));
        assert_eq!(frames::total_pins(), 0, "no domain yet, nothing pinned");
        let name = format!("{BDF}\0");
        let d = self.ioctl(g, v::VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as u64).unwrap();
        assert!(frames::total_pins() >= pages, "the device's domain pins the mapping");

        // Memory Space and Bus Master on; one COPY from page 1 to page 2.
        self.pwrite(d, &0x6u16.to_le_bytes(), CONFIG + 4);
        uiommufd_memory::copy_to_user(mem + page(), &[0xa5; 128]).unwrap();
        uiommufd_memory::copy_to_user(mem, &Descriptor::copy(IOVA + 2 * page(), IOVA + page(), 128).to_bytes())
            .unwrap();
        self.pwrite(d, &IOVA.to_le_bytes(), regs::REG_RING_BASE);
        self.pwrite(d, &16u32.to_le_bytes(), regs::REG_RING_SIZE);
        self.pwrite(d, &regs::CTRL_ENABLE.to_le_bytes(), regs::REG_CTRL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.read32(d, regs::REG_STATUS) & regs::STATUS_ENABLED == 0 {
            assert!(Instant::now() < deadline, "the ring never enabled");
            std::thread::yield_now();
        }
        self.pwrite(d, &1u32.to_le_bytes(), regs::REG_TAIL);
        while self.read32(d, regs::REG_HEAD) != 1 {
            assert!(Instant::now() < deadline, "the copy never completed");
            std::thread::yield_now();
        }
        let mut got = [0u8; 128];
        uiommufd_memory::copy_from_user(&mut got, mem + 2 * page()).unwrap();
        assert_eq!(got, [0xa5; 128]);
        (c, g, d)
    }
}

#[test]
fn closing_a_group_user_releases_every_pin() {
    assert_eq!(frames::total_pins(), 0);
    let engine = Arc::new(DmaEngine::new("dma-engine0").unwrap());
    let mock = Arc::new(MockDevice::new(0).unwrap());
    let env = Env { fds: LocalFds::default(), dev: VfioDevice::new(0, BDF, engine, mock) };
    let pages = 4;
    let mem = buffer(pages);

    // Device first, then group, then container.
    let (c, g, d) = env.type1_user(mem, pages);
    for fd in [d, g, c] {
        env.fds.close(fd).unwrap();
    }
    assert!(!env.dev.is_bound());
    assert_eq!(frames::total_pins(), 0);

    // Container and group first: the device file holds the context (and
    // so the mapping) until it closes.
    let (c, g, d) = env.type1_user(mem, pages);
    env.fds.close(c).unwrap();
    env.fds.close(g).unwrap();
    assert!(frames::total_pins() >= pages, "the device's context keeps the mapping");
    assert!(env.dev.is_bound());
    env.fds.close(d).unwrap();
    assert!(!env.dev.is_bound());
    assert_eq!(frames::total_pins(), 0);
}
