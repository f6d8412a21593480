//! Randomized ioctls against the dispatcher: every command number of
//! iommufd, the selftest and the VFIO type1 compatibility, plus random ones,
//! with argument structs of random sizes whose fields are drawn from values
//! that matter (IDs of live objects, zero, all-ones, page-aligned and
//! misaligned addresses and lengths, pointers into our memory, to nowhere,
//! to an inaccessible page, and to the command itself).
//!
//! What must hold whatever the input: no panic, no crash (a bad user
//! pointer is `EFAULT`, never a fault in the engine), every failure carries
//! a real errno, and closing the context releases everything: no pin, no
//! charge, no frame stays. Deterministic (seeded); `UIOMMUFD_FUZZ_ITERS`
//! and `UIOMMUFD_FUZZ_SEED` vary the run. Its own process: it checks global
//! counts.

use uiommufd_abi::test_cmd::{MOCK_APERTURE_START, MOCK_PAGE_SIZE};
use uiommufd_dispatch::{File, LocalFds, Node};
use uiommufd_memory::frames;

use uiommufd_memory::rng::XorShift64 as Rng;

const PS: u64 = 4096;
const ARENA_PAGES: u64 = 64;

/// Memory the fuzzer owns: an arena of pages for data and commands, and a
/// page with no access at all.
struct Memory {
    base: u64,
    len: u64,
}

impl Memory {
    fn new() -> Memory {
        let len = (ARENA_PAGES + 1) * PS;
        // SAFETY: a fresh anonymous mapping owned by this test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        assert_ne!(base, libc::MAP_FAILED as u64);
        // SAFETY: the last page of our own mapping.
        let rc =
            unsafe { libc::mprotect((base + ARENA_PAGES * PS) as *mut libc::c_void, PS as usize, libc::PROT_NONE) };
        assert_eq!(rc, 0);
        Memory { base, len }
    }
    fn no_access(&self) -> u64 {
        self.base + ARENA_PAGES * PS
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: our own mapping, released after every context closed.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
    }
}

/// `_IO(';', nr)`.
const fn io(nr: u32) -> u64 {
    ((b';' as u32) << 8 | nr) as u64
}

#[test]
fn random_ioctls_never_crash_and_leak_nothing() {
    let iters: u64 = std::env::var("UIOMMUFD_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let seed: u64 = std::env::var("UIOMMUFD_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_f00d);
    let mut rng = Rng(seed | 1);
    let mem = Memory::new();
    // The command struct lives at the start of the last arena page.
    let cmd_at = mem.base + (ARENA_PAGES - 1) * PS;

    // (request, the size of the struct this version knows: 0 for none).
    use std::mem::size_of;
    use uiommufd_abi as abi;
    let mut commands: Vec<(u64, u64)> = [
        (abi::IOMMU_DESTROY, size_of::<abi::IommuDestroy>()),
        (abi::IOMMU_IOAS_ALLOC, size_of::<abi::IommuIoasAlloc>()),
        (abi::IOMMU_IOAS_ALLOW_IOVAS, size_of::<abi::IommuIoasAllowIovas>()),
        (abi::IOMMU_IOAS_COPY, size_of::<abi::IommuIoasCopy>()),
        (abi::IOMMU_IOAS_IOVA_RANGES, size_of::<abi::IommuIoasIovaRanges>()),
        (abi::IOMMU_IOAS_MAP, size_of::<abi::IommuIoasMap>()),
        (abi::IOMMU_IOAS_UNMAP, size_of::<abi::IommuIoasUnmap>()),
        (abi::IOMMU_OPTION, size_of::<abi::IommuOption>()),
        (abi::IOMMU_VFIO_IOAS, size_of::<abi::IommuVfioIoas>()),
        (abi::IOMMU_HWPT_ALLOC, size_of::<abi::IommuHwptAlloc>()),
        (abi::IOMMU_GET_HW_INFO, size_of::<abi::IommuHwInfo>()),
        (abi::IOMMU_HWPT_SET_DIRTY_TRACKING, size_of::<abi::IommuHwptSetDirtyTracking>()),
        (abi::IOMMU_HWPT_GET_DIRTY_BITMAP, size_of::<abi::IommuHwptGetDirtyBitmap>()),
        (abi::IOMMU_HWPT_INVALIDATE, size_of::<abi::IommuHwptInvalidate>()),
        (abi::IOMMU_FAULT_QUEUE_ALLOC, size_of::<abi::IommuFaultAlloc>()),
        (abi::IOMMU_IOAS_MAP_FILE, size_of::<abi::IommuIoasMapFile>()),
        (abi::IOMMU_VIOMMU_ALLOC, size_of::<abi::IommuViommuAlloc>()),
        (abi::IOMMU_VDEVICE_ALLOC, size_of::<abi::IommuVdeviceAlloc>()),
        (abi::IOMMU_IOAS_CHANGE_PROCESS, size_of::<abi::IommuIoasChangeProcess>()),
        (abi::IOMMU_VEVENTQ_ALLOC, size_of::<abi::IommuVeventqAlloc>()),
        (abi::IOMMU_HW_QUEUE_ALLOC, size_of::<abi::IommuHwQueueAlloc>()),
        (abi::test_cmd::IOMMU_TEST_CMD, size_of::<abi::test_cmd::IommuTestCmd>()),
    ]
    .iter()
    .map(|&(r, n)| (r as u64, n as u64))
    .collect();
    // The selftest command more often: it is what builds devices and
    // domains. VFIO type1 on the iommufd: argsz-first structs, any size.
    for _ in 0..4 {
        commands.push((abi::test_cmd::IOMMU_TEST_CMD as u64, size_of::<abi::test_cmd::IommuTestCmd>() as u64));
    }
    commands.extend((100..=117).map(|nr| (io(nr), 0)));
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errnos = std::collections::BTreeMap::<i32, u64>::new();

    let per_ctx = 2_000;
    let mut done = 0;
    while done < iters {
        let fds = LocalFds::default();
        let file = File::open(if rng.below(4) == 0 { Node::VfioContainer } else { Node::Iommu });
        // IDs the context handed out so far (the interesting ones).
        let mut ids: Vec<u64> = vec![0, 1, 2, 3];
        for _ in 0..per_ctx.min(iters - done) {
            done += 1;
            let (req, known) = if rng.below(20) == 0 { (io(rng.below(256) as u32), 0) } else { rng.pick(&commands) };
            // A struct of the known length mostly, else of a random one;
            // its fields from the interesting values.
            let len = if known != 0 && rng.below(4) != 0 {
                known
            } else {
                rng.pick(&[0u64, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72, 80, 96, 128, 200])
            };
            let mut buf = vec![0u8; 256];
            let mut off = 0usize;
            while off + 8 <= len as usize {
                let v: u64 = match rng.below(14) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => rng.pick(&ids),
                    3 => rng.pick(&ids) | (rng.pick(&ids) << 32),
                    4 => mem.base + rng.below(ARENA_PAGES - 1) * PS,
                    5 => mem.base + rng.below((ARENA_PAGES - 1) * PS),
                    6 => mem.no_access(),
                    7 => rng.pick(&[0x10u64, 0xdead_0000, 0xffff_8000_0000_0000, 1 << 47]),
                    8 => (1 + rng.below(16)) * PS,
                    9 => MOCK_APERTURE_START + rng.below(256) * MOCK_PAGE_SIZE,
                    10 => rng.below(64) as u64 | ((rng.below(8) as u64) << 32),
                    11 => cmd_at,
                    12 => 1 << rng.below(64),
                    _ => rng.next(),
                };
                buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
                off += 8;
            }
            // The size/argsz word: usually the length, sometimes wrong.
            if len >= 4 {
                let size = match rng.below(6) {
                    0 => rng.below(300) as u32,
                    1 => len as u32 + 8,
                    _ => len as u32,
                };
                buf[..4].copy_from_slice(&size.to_le_bytes());
            }
            if req == uiommufd_abi::test_cmd::IOMMU_TEST_CMD as u64 && len >= 8 && rng.below(8) != 0 {
                // A selftest op that exists, mostly.
                buf[4..8].copy_from_slice(&(1 + rng.below(23) as u32).to_le_bytes());
            }
            let arg = match rng.below(30) {
                0 => 0,
                1 => mem.no_access(),
                2 => mem.no_access() - 8,
                _ => {
                    // SAFETY: the last arena page is ours, and nothing else
                    // is using it during the call.
                    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), cmd_at as *mut u8, 256) };
                    cmd_at
                }
            };
            match file.ioctl(&fds, req, arg) {
                Ok(_) => {
                    ok += 1;
                    // Output IDs land at various offsets; collect small values.
                    for w in 0..16 {
                        // SAFETY: reading back our own command page.
                        let v = unsafe { std::ptr::read_unaligned((cmd_at + w * 4) as *const u32) } as u64;
                        if (1..64).contains(&v) && !ids.contains(&v) {
                            ids.push(v);
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    assert!(e.errno.0 > 0 && e.errno.0 < 134, "ioctl {req:#x} failed with errno {:?}", e.errno);
                    *errnos.entry(e.errno.0).or_default() += 1;
                }
            }
        }
        drop(file);
        drop(fds);
        assert_eq!(frames::total_pins(), 0, "closing the context left pins behind (seed {seed})");
        assert_eq!(uiommufd_core::account::locked_pages(), (0, 0), "charges left behind (seed {seed})");
    }
    eprintln!("{ok} ioctls succeeded, {failed} failed; errnos: {errnos:?}");
    assert!(ok > iters / 50, "too few ioctls got past validation: {ok}");
    assert!(errnos.len() >= 6, "the inputs reach too few error paths: {errnos:?}");
    // The temporary memory limit is global; restore it.
    uiommufd_core::selftest::set_temp_memory_limit(65536).unwrap();
    drop(mem);
}

/// The same against a VFIO device cdev (a DMA engine behind the mock
/// IOMMU): random device ioctls, region reads and writes at random offsets
/// and sizes, with the device bound and attached part of the time.
#[test]
fn random_device_calls_never_crash_and_leak_nothing() {
    use std::sync::Arc;

    use uiommufd_abi::vfio;
    use uiommufd_dispatch::vfio_device::VfioDevice;
    use uiommufd_dispatch::FdHost;

    let iters: u64 = std::env::var("UIOMMUFD_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let seed: u64 = std::env::var("UIOMMUFD_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0xdecafbad);
    let mut rng = Rng(seed | 1);
    let mem = Memory::new();
    let cmd_at = mem.base + (ARENA_PAGES - 1) * PS;
    let requests: Vec<u64> = (100..=125).map(io).collect();
    let mut errnos = std::collections::BTreeMap::<i32, u64>::new();
    let mut ok = 0u64;
    let mut done = 0;
    while done < iters {
        let platform = uiommufd_devices::platform::Platform::new("mock", "dma-engine").unwrap();
        let pd = &platform.devices[0];
        let dev = VfioDevice::new(0, &pd.bdf, Arc::clone(&pd.pci), Arc::clone(&pd.iommu));
        let fds = LocalFds::default();
        let iommufd = fds.install(Arc::new(File::open(Node::Iommu)), true).unwrap();
        let file = File::open_vfio_device(&dev);
        for _ in 0..1_000.min(iters - done) {
            done += 1;
            let mut buf = [0u8; 128];
            for w in 0..16 {
                let v: u64 = match rng.below(10) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => rng.below(16),
                    3 => iommufd as u64 | (rng.below(8) << 32),
                    4 => mem.base + rng.below(ARENA_PAGES - 1) * PS,
                    5 => mem.no_access(),
                    6 => rng.below(10) << 40 | rng.below(0x1000),
                    7 => 1 << rng.below(64),
                    _ => rng.next(),
                };
                buf[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            let argsz = rng.pick(&[0u32, 8, 12, 16, 20, 24, 32, 64, 128, 4096]);
            buf[..4].copy_from_slice(&argsz.to_le_bytes());
            // SAFETY: the last arena page is ours and idle during the call.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), cmd_at as *mut u8, buf.len()) };
            let r = match rng.below(10) {
                0..=5 => {
                    let mut req = rng.pick(&requests);
                    if rng.below(3) == 0 {
                        // Bind to our iommufd, properly, to reach the deeper states.
                        req = vfio::VFIO_DEVICE_BIND_IOMMUFD as u64;
                        let b = [16u32, 0, iommufd as u32, 0];
                        // SAFETY: as above.
                        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr().cast::<u8>(), cmd_at as *mut u8, 16) };
                    }
                    file.ioctl(&fds, req, if rng.below(20) == 0 { mem.no_access() } else { cmd_at }).map(|_| 0)
                }
                6..=7 => {
                    let off = (rng.below(10) << 40) | rng.below(0x1100);
                    let n = rng.pick(&[1usize, 2, 3, 4, 8, 16, 64, 4096]);
                    file.read(mem.base, n, Some(off as i64))
                }
                _ => {
                    let off = (rng.below(10) << 40) | rng.below(0x1100);
                    let n = rng.pick(&[1usize, 2, 4, 8, 16]);
                    file.write(mem.base + rng.below(PS), n, Some(off as i64))
                }
            };
            match r {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(e.errno.0 > 0 && e.errno.0 < 134, "errno {:?}", e.errno);
                    *errnos.entry(e.errno.0).or_default() += 1;
                }
            }
        }
        drop(file);
        drop(dev);
        drop(platform);
        drop(fds);
        assert_eq!(frames::total_pins(), 0, "pins left behind (seed {seed})");
    }
    eprintln!("{ok} device calls succeeded; errnos: {errnos:?}");
    assert!(ok > iters / 50, "too few calls got past validation: {ok}");
    drop(mem);
}
