//! `VFIO_DEVICE_FEATURE_DMA_BUF` through the real ioctl paths: a BAR of one
//! DMA engine exported, imported into an IOAS with `IOMMU_IOAS_MAP_FILE`,
//! and reached by another device's DMA (peer to peer, as Linux 7.3 does
//! it); the feature's checks, and revocation by Memory Space Enable.

use std::sync::Arc;

use uiommufd_abi::vfio::{self as v};
use uiommufd_abi::{self as abi, Errno};
use uiommufd_core::device::Device;
use uiommufd_core::dma::DevicePort;
use uiommufd_devices::DmaEngine;
use uiommufd_hw::dma::{DmaAttrs, DmaPort};
use uiommufd_hw::mock::MockDevice;
use zerocopy::IntoBytes;

use crate::vfio_device_tests::Env;
use crate::{FdHost, File, VfioDevice};

const CONFIG: u64 = (v::VFIO_PCI_CONFIG_REGION_INDEX as u64) << v::VFIO_PCI_OFFSET_SHIFT;

/// `VFIO_DEVICE_FEATURE` with `flags` (index included) and the dma-buf
/// request `req` followed by `ranges`, in a buffer claiming `argsz`.
fn feature(
    env: &Env,
    fd: i32,
    flags: u32,
    req: v::VfioDeviceFeatureDmaBuf,
    ranges: &[(u64, u64)],
) -> Result<i32, Errno> {
    let mut buf = Vec::new();
    let hdr = v::VfioDeviceFeature { argsz: 0, flags };
    buf.extend_from_slice(hdr.as_bytes());
    buf.extend_from_slice(req.as_bytes());
    for &(offset, length) in ranges {
        buf.extend_from_slice(v::VfioRegionDmaRange { offset, length }.as_bytes());
    }
    let argsz = buf.len() as u32;
    buf[..4].copy_from_slice(&argsz.to_ne_bytes());
    env.raw(fd, v::VFIO_DEVICE_FEATURE, buf.as_mut_ptr() as u64)
}

fn get(index: u32, n: u32) -> (u32, v::VfioDeviceFeatureDmaBuf) {
    let req = v::VfioDeviceFeatureDmaBuf { region_index: index, nr_ranges: n, ..Default::default() };
    (v::VFIO_DEVICE_FEATURE_GET | v::VFIO_DEVICE_FEATURE_DMA_BUF, req)
}

#[test]
fn feature_checks() {
    let env = Env::new();
    let fd = env.open();
    env.bind(fd).unwrap();
    let page = uiommufd_memory::page_size() as u64;
    let (flags, req) = get(0, 1);
    let probe = v::VFIO_DEVICE_FEATURE_PROBE | flags;
    assert_eq!(feature(&env, fd, probe, req, &[(0, page)]), Ok(0));
    let set = v::VFIO_DEVICE_FEATURE_SET | v::VFIO_DEVICE_FEATURE_DMA_BUF;
    assert_eq!(feature(&env, fd, set, req, &[(0, page)]), Err(Errno::EINVAL), "GET only");
    assert_eq!(feature(&env, fd, flags, get(0, 0).1, &[]), Err(Errno::EINVAL), "no ranges");
    let with_flags = v::VfioDeviceFeatureDmaBuf { flags: 1, ..req };
    assert_eq!(feature(&env, fd, flags, with_flags, &[(0, page)]), Err(Errno::EINVAL));
    assert_eq!(feature(&env, fd, flags, get(1, 1).1, &[(0, page)]), Err(Errno::ENODEV), "no BAR 1");
    assert_eq!(feature(&env, fd, flags, get(v::VFIO_PCI_ROM_REGION_INDEX, 1).1, &[(0, page)]), Err(Errno::ENODEV));
    assert_eq!(feature(&env, fd, flags, req, &[(0, 0)]), Err(Errno::EINVAL), "empty range");
    assert_eq!(feature(&env, fd, flags, req, &[(1, page)]), Err(Errno::EINVAL), "unaligned");
    assert_eq!(feature(&env, fd, flags, req, &[(page, page)]), Err(Errno::EINVAL), "past BAR 0");
    assert_eq!(feature(&env, fd, flags, req, &[(u64::MAX & !(page - 1), page)]), Err(Errno::EOVERFLOW));
    let dfd = feature(&env, fd, flags, req, &[(0, page)]).unwrap();
    assert!(matches!(env.fds.get(dfd).as_deref(), Some(File::DmaBuf(_))));
}

/// Another device's DMA to the IOVA where a BAR is mapped lands in the
/// BAR (peer to peer); with Memory Space Enable off the dma-buf is
/// revoked and the IOVA leads nowhere.
#[test]
fn peer_to_peer_dma_reaches_the_bar() {
    let env = Env::new();
    let page = uiommufd_memory::page_size() as u64;
    // The exporter: the environment's device, memory enabled.
    let fd_a = env.open();
    env.bind(fd_a).unwrap();
    env.enable_function(fd_a);
    // The peer: a second engine behind its own mock IOMMU device.
    let engine_b = Arc::new(DmaEngine::new("dma-engine1").unwrap());
    let dev_b = VfioDevice::new(1, "0000:00:05.0", engine_b, Arc::new(MockDevice::new(0).unwrap()));
    let fd_b = env.fds.install(Arc::new(File::open_vfio_device(&dev_b)), true).unwrap();
    let devid_b = env.bind(fd_b).unwrap();
    let ioas = env.ioas_alloc();
    env.attach(fd_b, ioas).unwrap();

    let (flags, req) = get(0, 1);
    let dfd = feature(&env, fd_a, flags, req, &[(0, page)]).unwrap();
    let mut m = abi::IommuIoasMapFile {
        size: 40,
        flags: abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        fd: dfd,
        start: 0,
        length: page,
        iova: 0,
    };
    env.ioctl(env.iommufd, abi::IOMMU_IOAS_MAP_FILE, &mut m).unwrap();

    let ctx = match env.fds.get(env.iommufd).as_deref() {
        Some(File::Iommufd(ctx)) => Arc::clone(ctx),
        _ => unreachable!(),
    };
    let port = DevicePort::new(ctx.get::<Device>(devid_b).unwrap().arc());
    // Into the BAR's last bytes, clear of the engine's registers.
    let at = page - 64;
    port.dma_write(m.iova + at, &[0x5a; 64], DmaAttrs::default()).unwrap();
    let mut bar = vec![0u8; 64];
    assert_eq!(env.pread(fd_a, &mut bar, at), Ok(64));
    assert_eq!(bar, vec![0x5a; 64], "the peer's write is in the BAR");
    let mut back = [0u8; 8];
    port.dma_read(m.iova + at, &mut back, DmaAttrs::default()).unwrap();
    assert_eq!(back, [0x5a; 8]);

    // Memory Space Enable off: revoked, the peer's DMA faults; a new
    // import is ENODEV.
    let mut cmd = [0u8; 2];
    env.pread(fd_a, &mut cmd, CONFIG + 4).unwrap();
    let off = u16::from_le_bytes(cmd) & !0b10;
    assert_eq!(env.pwrite(fd_a, &off.to_le_bytes(), CONFIG + 4), Ok(2));
    assert!(port.dma_write(m.iova + at, &[1; 8], DmaAttrs::default()).is_err());
    let mut again = abi::IommuIoasMapFile { iova: 0, ..m };
    assert_eq!(env.ioctl(env.iommufd, abi::IOMMU_IOAS_MAP_FILE, &mut again), Err(Errno::ENODEV));
    // Back on: a new import works, the old one stays revoked.
    env.enable_function(fd_a);
    env.ioctl(env.iommufd, abi::IOMMU_IOAS_MAP_FILE, &mut again).unwrap();
    port.dma_write(again.iova + at, &[7; 8], DmaAttrs::default()).unwrap();
    assert!(port.dma_write(m.iova + at, &[1; 8], DmaAttrs::default()).is_err());
    // Several ranges export, but iommufd imports one range only.
    let two = feature(&env, fd_a, flags, get(0, 2).1, &[(0, page), (0, page)]).unwrap();
    let mut t = abi::IommuIoasMapFile { fd: two, iova: 0, ..m };
    assert_eq!(env.ioctl(env.iommufd, abi::IOMMU_IOAS_MAP_FILE, &mut t), Err(Errno::EOPNOTSUPP));
}
