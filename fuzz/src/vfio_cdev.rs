//! A VFIO device cdev (a DMA engine behind the mock IOMMU) and the iommufd
//! it binds to, driven by the input: bind, attach and detach an IOAS,
//! IOAS alloc and map of user memory, reset, region reads and writes at
//! any offset (BAR0 registers, so the engine's worker runs the ring over
//! the mapped memory), and raw VFIO ioctls of random bytes.
//!
//! What must hold whatever the input: no panic, every failure a real
//! errno, and nothing pinned once the device, its file and the iommufd
//! are gone.

use std::sync::Arc;

use uiommufd_abi as abi;
use uiommufd_abi::test_cmd::MOCK_APERTURE_START;
use uiommufd_abi::vfio;
use uiommufd_devices::dma_engine::regs;
use uiommufd_dispatch::vfio_device::VfioDevice;
use uiommufd_dispatch::{FdHost, File, LocalFds, Node};
use uiommufd_memory::frames;

use crate::mem::{le32, Arena, Cmd, PS};
use crate::Input;

const MAX_STEPS: usize = 48;
const ARENA_PAGES: u64 = 32;

/// `_IO(';', nr)`.
const fn vfio_io(nr: u32) -> u64 {
    ((b';' as u32) << 8 | nr) as u64
}

fn check(r: Result<i32, uiommufd_core::Error>) -> Option<i32> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(e.errno.0 > 0 && e.errno.0 < 134, "errno {:?}", e.errno);
            None
        }
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let _g = crate::global();
    let mut input = Input::new(data);
    let arena = Arena::new(ARENA_PAGES);
    let cmd_at = arena.base + (ARENA_PAGES - 1) * PS;
    {
        let platform = uiommufd_devices::platform::Platform::new("mock", "dma-engine").expect("a platform");
        let pd = &platform.devices[0];
        let dev = VfioDevice::new(0, &pd.bdf, Arc::clone(&pd.pci), Arc::clone(&pd.iommu));
        let fds = LocalFds::default();
        let iommufd_file = Arc::new(File::open(Node::Iommu));
        let iommufd = fds.install(Arc::clone(&iommufd_file), true).expect("a descriptor");
        let file = File::open_vfio_device(&dev);
        let mut ioas: Vec<u32> = Vec::new();
        let call = |f: &File, req: u64, cmd: &Cmd| {
            arena.put(cmd_at, &cmd.0);
            check(f.ioctl(&fds, req, cmd_at)).map(|_| arena.get(cmd_at, cmd.0.len()))
        };
        for _ in 0..MAX_STEPS {
            if input.is_empty() {
                break;
            }
            match input.below(12) {
                0 => {
                    let mut c = Cmd::sized(16);
                    c.u32(4, 0).u32(8, if input.below(8) == 0 { input.u32() } else { iommufd as u32 });
                    call(&file, u64::from(vfio::VFIO_DEVICE_BIND_IOMMUFD), &c);
                }
                1 => {
                    if let Some(out) = call(&iommufd_file, u64::from(abi::IOMMU_IOAS_ALLOC), &Cmd::sized(12)) {
                        ioas.push(le32(&out, 8));
                    }
                }
                2 => {
                    let id = if ioas.is_empty() { input.below(8) as u32 } else { input.pick(&ioas) };
                    let mut c = Cmd::sized(40);
                    let pages = 1 + input.below(8);
                    let va = arena.base + input.below(ARENA_PAGES - 9) * PS;
                    let iova = MOCK_APERTURE_START + input.below(16) * PS * 8;
                    c.u32(4, 7).u32(8, id).u64(16, va).u64(24, pages * PS).u64(32, iova);
                    call(&iommufd_file, u64::from(abi::IOMMU_IOAS_MAP), &c);
                }
                3 => {
                    let pt =
                        if ioas.is_empty() || input.below(8) == 0 { input.below(8) as u32 } else { input.pick(&ioas) };
                    let mut c = Cmd::sized(12);
                    c.u32(8, pt);
                    let req = if input.below(4) == 0 {
                        vfio::VFIO_DEVICE_DETACH_IOMMUFD_PT
                    } else {
                        vfio::VFIO_DEVICE_ATTACH_IOMMUFD_PT
                    };
                    call(&file, u64::from(req), &c);
                }
                4 => {
                    let _ = check(file.ioctl(&fds, u64::from(vfio::VFIO_DEVICE_RESET), 0));
                }
                5..=7 => {
                    // BAR0 registers, mostly: ring base in the mock
                    // aperture, sizes, CTRL, TAIL.
                    let (off, v) = match input.below(6) {
                        0 => (regs::REG_RING_BASE, MOCK_APERTURE_START + input.below(16) * PS * 8),
                        1 => (regs::REG_RING_SIZE, 1 << input.below(8)),
                        2 => (regs::REG_CTRL, input.below(16)),
                        3 => (regs::REG_TAIL, input.below(64)),
                        _ => (input.below(0x1100), input.u64()),
                    };
                    let index = if input.below(8) == 0 { input.below(10) } else { 0 };
                    let n = input.pick(&[4usize, 8, 1, 2]);
                    arena.put(arena.base, &v.to_le_bytes());
                    let r = file.write(arena.base, n, Some(((index << 40) | off) as i64));
                    if let Err(e) = r {
                        assert!(e.errno.0 > 0 && e.errno.0 < 134, "errno {:?}", e.errno);
                    }
                }
                8 => {
                    // Config space: Command (Bus Master Enable) or anywhere.
                    let (off, v) = if input.bool() { (4, 0x6) } else { (input.below(0x1010), input.u32() as u64) };
                    arena.put(arena.base, &v.to_le_bytes());
                    let n = input.pick(&[1usize, 2, 4]);
                    let pos = (u64::from(vfio::VFIO_PCI_CONFIG_REGION_INDEX) << 40) | off;
                    let _ = file.write(arena.base, n, Some(pos as i64));
                }
                9 => {
                    let off = (input.below(10) << 40) | input.below(0x1100);
                    let n = input.pick(&[1usize, 2, 4, 8, 64, 4096]);
                    if let Err(e) = file.read(arena.base, n, Some(off as i64)) {
                        assert!(e.errno.0 > 0 && e.errno.0 < 134, "errno {:?}", e.errno);
                    }
                }
                _ => {
                    // Any VFIO device ioctl with random bytes.
                    let req = vfio_io(100 + input.below(26) as u32);
                    let mut c = Cmd(input.bytes(64).to_vec());
                    c.0.resize(64, 0);
                    c.u32(0, input.pick(&[0u32, 8, 12, 16, 20, 24, 32, 64]));
                    let arg = if input.below(16) == 0 { arena.no_access() } else { cmd_at };
                    arena.put(cmd_at, &c.0);
                    let _ = check(file.ioctl(&fds, req, arg));
                }
            }
        }
        // Stop the engine's worker before the memory goes.
        dev.pci().reset();
        drop(file);
        drop(dev);
        drop(platform);
        drop(iommufd_file);
        drop(fds);
    }
    assert_eq!(frames::total_pins(), 0, "pins left behind");
    drop(arena);
}
