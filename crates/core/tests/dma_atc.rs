//! The port's translation cache (`crate::atc`, a device's ATC) is never
//! used past what invalidates it: an unmap (the very next request after
//! `IOMMU_IOAS_UNMAP` returns faults or reaches the new mapping, and a
//! device hammering the IOVA meanwhile never writes the old page after the
//! unmap returned), a change of the attached domain, a relocation of the
//! pinned pages the program unmaps, and a dirty-bit harvest.
//!
//! Each case first warms the cache with the same requests, through the
//! mock IOMMU (2 KiB entries) and the VT-d second stage (4 KiB and 2 MiB
//! leaves), so a cache that survived the change would be used.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use uiommufd_abi::test_cmd::MOCK_APERTURE_START;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::{Iommufd, ObjectId};
use uiommufd_devices::platform::{parse_iommu, IommuModel};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::dma::{DmaAttrs, DmaFaultReason, DmaPort};
use uiommufd_hw::mock::MockDevice;
use uiommufd_hw::vtd::device::VtdDevice;
use uiommufd_memory::frames;

const RW: u32 = 1 | 2 | 4; // FIXED_IOVA | WRITEABLE | READABLE
const NS: DmaAttrs = DmaAttrs { pasid: None, no_snoop: false, privileged: false };
const MIB2: u64 = 2 << 20;

/// Anonymous memory, 2 MiB aligned (so VT-d can use 2 MiB leaves).
struct Mem {
    base: u64,
    addr: u64,
    len: u64,
}

impl Mem {
    fn new(len: u64, fill: u8) -> Mem {
        let total = len + MIB2;
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let addr = (p as u64).next_multiple_of(MIB2);
        // SAFETY: our own mapping.
        unsafe { std::ptr::write_bytes(addr as *mut u8, fill, len as usize) };
        Mem { base: p as u64, addr, len: total }
    }

    fn byte(&self, off: u64) -> u8 {
        // SAFETY: inside our mapping; device writes are plain stores too.
        unsafe { std::ptr::read_volatile((self.addr + off) as *const u8) }
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unpinned by then.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
    }
}

/// The IOMMUs the cases run on: a device, where its IOVAs start, and how
/// the test maps `len` bytes (in one piece, or in 1 MiB pieces so that
/// VT-d uses 4 KiB leaves).
struct Model {
    name: &'static str,
    iova: u64,
    piece: u64,
}

const MODELS: [Model; 3] = [
    Model { name: "mock", iova: MOCK_APERTURE_START, piece: MIB2 },
    Model { name: "vtd", iova: 1 << 30, piece: MIB2 },
    Model { name: "vtd", iova: 1 << 30, piece: 1 << 20 },
];

fn device(name: &str) -> Arc<dyn IommuDevice> {
    match name {
        "mock" => Arc::new(MockDevice::new(0).unwrap()),
        _ => {
            let IommuModel::Vtd(unit) = parse_iommu("vtd").unwrap() else { unreachable!() };
            Arc::new(VtdDevice::new(&unit, "0000:00:04.0"))
        }
    }
}

fn map(ctx: &Iommufd, ioas: ObjectId, m: &Model, mem: &Mem, len: u64) {
    for off in (0..len).step_by(m.piece as usize) {
        ctx.ioas_map(ioas, RW, mem.addr + off, m.piece.min(len - off), m.iova + off).unwrap();
    }
}

struct Bound {
    _edge: uiommufd_core::object::Dep<device::Device>,
    dev: Arc<device::Device>,
    port: Arc<DevicePort>,
}

fn bind(ctx: &Arc<Iommufd>, m: &Model, pt: ObjectId) -> Bound {
    let (_, edge) = device::bind(ctx, device(m.name)).unwrap();
    let dev = Arc::clone(edge.arc());
    dev.change_pt(ctx, NO_PASID, pt, false).unwrap();
    let port = DevicePort::new(&dev);
    Bound { _edge: edge, dev, port }
}

/// Read, write and copy through `port` a few times, so the cache holds
/// both pages and both directions.
fn warm(port: &DevicePort, iova: u64) {
    let mut b = [0u8; 64];
    for _ in 0..4 {
        port.dma_read(iova, &mut b, NS).unwrap();
        port.dma_write(iova + 4096, &b, NS).unwrap();
        port.dma_copy(iova + 8192, iova, 4096, NS).unwrap();
    }
}

#[test]
fn nothing_cached_is_used_after_the_unmap_returns() {
    for m in &MODELS {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        let a = Mem::new(MIB2, 0xaa);
        let b = Mem::new(MIB2, 0xbb);
        map(&ctx, ioas, m, &a, MIB2);
        let d = bind(&ctx, m, ioas);
        warm(&d.port, m.iova);
        // Unmapped: every kind of request faults at once.
        ctx.ioas_unmap(ioas, m.iova, MIB2).unwrap();
        let mut got = [0u8; 16];
        let e = d.port.dma_read(m.iova, &mut got, NS).unwrap_err();
        assert_eq!(e.reason, DmaFaultReason::NotPresent, "{}: read after unmap", m.name);
        let e = d.port.dma_write(m.iova + 4096, &[0x11; 16], NS).unwrap_err();
        assert_eq!(e.reason, DmaFaultReason::NotPresent, "{}: write after unmap", m.name);
        let e = d.port.dma_copy(m.iova + 8192, m.iova, 4096, NS).unwrap_err();
        assert_eq!(e.reason, DmaFaultReason::NotPresent, "{}: copy after unmap", m.name);
        assert_eq!(a.byte(4096), 0xaa, "{}: the unmapped page was written", m.name);
        // Mapped again to other memory: requests reach that.
        map(&ctx, ioas, m, &b, MIB2);
        d.port.dma_read(m.iova, &mut got, NS).unwrap();
        assert_eq!(got, [0xbb; 16], "{}: read the old page", m.name);
        d.port.dma_write(m.iova + 4096, &[0x22; 16], NS).unwrap();
        assert_eq!((a.byte(4096), b.byte(4096)), (0xaa, 0x22), "{}: write after remap", m.name);
        d.dev.detach(&ctx, NO_PASID);
        ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    }
}

#[test]
fn a_device_hammering_the_iova_stops_writing_the_old_page_when_the_unmap_returns() {
    for m in &MODELS {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        let a = Mem::new(MIB2, 0);
        let b = Mem::new(MIB2, 0);
        map(&ctx, ioas, m, &a, MIB2);
        let d = bind(&ctx, m, ioas);
        let stop = AtomicBool::new(false);
        let (landed, faulted) = (AtomicU64::new(0), AtomicU64::new(0));
        // Waits that fail instead of hanging (and stop the writer first).
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let t = std::time::Instant::now();
            while !done() {
                if t.elapsed() > std::time::Duration::from_secs(30) {
                    stop.store(true, Ordering::Relaxed);
                    panic!("{}: {what}", m.name);
                }
                std::thread::yield_now();
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut n = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_add(1) | 1;
                    match d.port.dma_write(m.iova + 4096, &[n; 64], NS) {
                        Ok(()) => landed.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            assert_eq!(e.reason, DmaFaultReason::NotPresent);
                            faulted.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
            wait("no writes landed", &|| landed.load(Ordering::Relaxed) >= 1000);
            ctx.ioas_unmap(ioas, m.iova, MIB2).unwrap();
            // From here on the old page is the program's alone.
            let snapshot = a.byte(4096);
            let f0 = faulted.load(Ordering::Relaxed);
            wait("writes still land after the unmap returned", &|| faulted.load(Ordering::Relaxed) >= f0 + 1000);
            let after = a.byte(4096);
            if after != snapshot {
                stop.store(true, Ordering::Relaxed);
                panic!("{}: written after the unmap returned", m.name);
            }
            // Mapped to other memory, the writes go there.
            map(&ctx, ioas, m, &b, MIB2);
            let l0 = landed.load(Ordering::Relaxed);
            wait("no writes land after the remap", &|| landed.load(Ordering::Relaxed) >= l0 + 1000);
            stop.store(true, Ordering::Relaxed);
        });
        assert_ne!(b.byte(4096), 0, "{}: the new page got no writes", m.name);
        d.dev.detach(&ctx, NO_PASID);
        ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    }
}

#[test]
fn attaching_another_ioas_stops_cached_translations_of_the_first() {
    for m in &MODELS {
        let ctx = Iommufd::new();
        let (ioas1, ioas2) = (ctx.ioas_alloc().unwrap(), ctx.ioas_alloc().unwrap());
        let a = Mem::new(MIB2, 0xaa);
        let b = Mem::new(MIB2, 0xbb);
        map(&ctx, ioas1, m, &a, MIB2);
        map(&ctx, ioas2, m, &b, MIB2);
        let d = bind(&ctx, m, ioas1);
        warm(&d.port, m.iova);
        d.dev.change_pt(&ctx, NO_PASID, ioas2, true).unwrap();
        let mut got = [0u8; 16];
        d.port.dma_read(m.iova, &mut got, NS).unwrap();
        assert_eq!(got, [0xbb; 16], "{}: read through the old domain", m.name);
        d.dev.detach(&ctx, NO_PASID);
        assert_eq!(d.port.dma_read(m.iova, &mut got, NS).unwrap_err().reason, DmaFaultReason::Blocked);
        ctx.ioas_unmap(ioas1, 0, u64::MAX).unwrap();
        ctx.ioas_unmap(ioas2, 0, u64::MAX).unwrap();
    }
}

#[test]
fn a_device_gone_while_attached_reaches_nothing_through_its_cache() {
    for m in &MODELS {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        let a = Mem::new(MIB2, 0xaa);
        map(&ctx, ioas, m, &a, MIB2);
        let Bound { _edge, dev, port } = bind(&ctx, m, ioas);
        warm(&port, m.iova);
        // The device object goes while attached (its file closed): the
        // destroy detaches it; the IOAS and its mappings stay, and so does
        // the port.
        let id = dev.id();
        drop((_edge, dev));
        ctx.destroy(id).unwrap();
        let (first, second) = (a.byte(4096), a.byte(8192));
        let err = port.dma_write(m.iova + 4096, &[0x5a; 64], NS).unwrap_err();
        assert_eq!(err.reason, DmaFaultReason::Blocked, "{}: write", m.name);
        let err = port.dma_copy(m.iova + 8192, m.iova + 4096, 4096, NS).unwrap_err();
        assert_eq!(err.reason, DmaFaultReason::Blocked, "{}: copy", m.name);
        assert_eq!((a.byte(4096), a.byte(8192)), (first, second), "{}: a cached page was written", m.name);
    }
}

#[test]
fn writes_after_the_program_unmaps_pinned_pages_reach_the_pinned_page() {
    for m in &MODELS {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        let a = Mem::new(MIB2, 0x11);
        map(&ctx, ioas, m, &a, MIB2);
        let d = bind(&ctx, m, ioas);
        warm(&d.port, m.iova);
        // The program unmaps (the shim calls the hook first) and maps
        // something new at the same address.
        frames::before_munmap(a.addr, MIB2);
        // The hook moved the pages out, leaving a hole that any thread of
        // this test binary may have been given meanwhile (a new thread's
        // stack landed there once, and MAP_FIXED then zeroed it): map there
        // only if the hole is still free.
        // SAFETY: a new mapping where nothing is mapped (NOREPLACE).
        let again = unsafe {
            libc::mmap(
                a.addr as *mut libc::c_void,
                MIB2 as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        let replaced = again as u64 == a.addr;
        if !replaced {
            if again != libc::MAP_FAILED {
                // A kernel that took the address as a hint.
                // SAFETY: the mapping just made, ours.
                unsafe { libc::munmap(again, MIB2 as usize) };
            }
            // Someone else's memory is in the hole now: give back the rest
            // of ours and never touch the hole.
            // SAFETY: the parts of our reservation around the hole.
            unsafe {
                libc::munmap(a.base as *mut libc::c_void, (a.addr - a.base) as usize);
                let end = a.addr + MIB2;
                libc::munmap(end as *mut libc::c_void, (a.base + a.len - end) as usize);
            }
        }
        d.port.dma_write(m.iova + 4096, &[0x22; 64], NS).unwrap();
        d.port.dma_copy(m.iova + 8192, m.iova + 4096, 64, NS).unwrap();
        if replaced {
            assert!((0..3 * 4096).all(|o| a.byte(o) == 0), "{}: the new mapping saw device writes", m.name);
        }
        let mut got = [0u8; 64];
        d.port.dma_read(m.iova + 8192, &mut got, NS).unwrap();
        assert_eq!(got, [0x22; 64], "{}: the pinned page lost the writes", m.name);
        d.dev.detach(&ctx, NO_PASID);
        ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
        if !replaced {
            std::mem::forget(a);
        }
    }
}

/// A completion record's two writes (`dma_write_then`) land whatever the
/// cache holds of them: the second in the first's entry, before it, in
/// another page (another entry with 4 KiB leaves), or in a page that is
/// not mapped (the first lands, the second faults).
#[test]
fn write_pairs_land_in_every_layout() {
    for m in &MODELS {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        let a = Mem::new(MIB2, 0);
        map(&ctx, ioas, m, &a, 64 << 10);
        let d = bind(&ctx, m, ioas);
        warm(&d.port, m.iova);
        let cases: [(u64, u64); 4] = [(0x30, 0x38), (0x138, 0x130), (0x2000, 0x5000), (0x7000, 0x3008)];
        for (round, (x, y)) in cases.into_iter().enumerate() {
            let v = round as u8 + 1;
            for _ in 0..3 {
                d.port.dma_write_then((m.iova + x, &[v; 8]), (m.iova + y, &[v + 0x10; 4]), NS).unwrap();
                assert_eq!(a.byte(x), v, "{}: first of ({x:#x}, {y:#x})", m.name);
                assert!((0..4).all(|i| a.byte(y + i) == v + 0x10), "{}: second of ({x:#x}, {y:#x})", m.name);
            }
        }
        // The second write past the mapping: the first still lands.
        let e = d.port.dma_write_then((m.iova + 0x40, &[0x77; 8]), (m.iova + (64 << 10), &[1; 4]), NS).unwrap_err();
        assert_eq!((e.reason, e.iova), (DmaFaultReason::NotPresent, m.iova + (64 << 10)), "{}", m.name);
        assert_eq!(a.byte(0x40), 0x77, "{}: the first write of a failed pair", m.name);
        d.dev.detach(&ctx, NO_PASID);
        ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    }
}

/// A DMA engine runs a descriptor's requests under one fence hold: an
/// unmap that begins meanwhile returns only after the hold ends (or the
/// port quiesces it to report a fault), and the holder's request after
/// the unmap returned faults (its cached translation is not used).
#[test]
fn an_unmap_waits_for_a_hold_and_nothing_cached_is_used_after_it() {
    for m in &MODELS {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().unwrap();
        let a = Mem::new(MIB2, 0x33);
        map(&ctx, ioas, m, &a, MIB2);
        let d = bind(&ctx, m, ioas);
        warm(&d.port, m.iova);
        let unmapped = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let hold = uiommufd_memory::dma_fence::hold();
                let mut got = [0u8; 16];
                d.port.dma_read(m.iova, &mut got, NS).unwrap();
                tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
                assert!(!unmapped.load(Ordering::SeqCst), "{}: the unmap returned inside a hold", m.name);
                // Still inside the hold, the unmap under way: a request
                // sees the old page or the fault (it re-reads the cache
                // generation, which the unmap bumped before it waited).
                match d.port.dma_read(m.iova, &mut got, NS) {
                    Ok(()) => assert_eq!(got, [0x33; 16], "{}", m.name),
                    Err(e) => assert_eq!(e.reason, DmaFaultReason::NotPresent, "{}", m.name),
                }
                drop(hold);
                let t = std::time::Instant::now();
                while !unmapped.load(Ordering::SeqCst) {
                    assert!(t.elapsed() < std::time::Duration::from_secs(30), "{}: the unmap hung", m.name);
                    std::thread::yield_now();
                }
                let e = d.port.dma_read(m.iova, &mut got, NS).unwrap_err();
                assert_eq!(e.reason, DmaFaultReason::NotPresent, "{}: read after the unmap", m.name);
            });
            rx.recv().unwrap();
            ctx.ioas_unmap(ioas, m.iova, MIB2).unwrap();
            unmapped.store(true, Ordering::SeqCst);
        });
        d.dev.detach(&ctx, NO_PASID);
        ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    }
}
