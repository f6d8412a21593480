//! Loops of device DMA as `uiommufd bench` measures it (a 4 KiB or 64 KiB
//! copy through a bound device's port, or a DMA engine COPY descriptor from
//! the doorbell to completion, between disjoint buffers outside the
//! descriptor ring), for instruction profiles of the per-request work:
//!
//! ```sh
//! cargo build --release -p uiommufd --example dma_profile
//! valgrind --tool=callgrind --toggle-collect='*dma_profile::port_loop*' \
//!     target/release/examples/dma_profile vtd port 4096 2000
//! valgrind --tool=callgrind --toggle-collect='*dma_profile::engine_loop*' \
//!     target/release/examples/dma_profile mock engine 4096 2000
//! ```
//!
//! Models: `vtd` (2 MiB leaves), `vtd4k` (4 KiB leaves), `amd4k`, `mock`;
//! modes: `port`, `engine`, `memcpy` (the reference), `guard` (the
//! guarded copy alone between the same two buffers), `read_phys`,
//! `write_phys` and `copy_phys` (the frames copies, after translation, into
//! and out of a page-aligned buffer as `uiommufd bench` measures them; the
//! model does not matter), and `unmap`: 4 KiB
//! map+unmap pairs in the IOAS the device is attached to while another
//! thread that has done DMA is alive (a VMM with a DMA worker: every unmap
//! then waits for a DMA-fence grace period).
use std::hint::black_box;
use std::sync::Arc;

use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::Iommufd;
use uiommufd_devices::dma_engine::regs::{self, Descriptor};
use uiommufd_devices::platform::{parse_iommu, IommuModel};
use uiommufd_devices::{DmaEngine, DmaEngineOptions, PciDevice};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::dma::{DmaAttrs, DmaPort};

const RW: u32 = 1 | 2 | 4;
const LEN: u64 = 4 << 20;
const RING: u64 = 1024;
const SRC: u64 = RING * 64;
const DST: u64 = (1 << 20) + SRC;

#[inline(never)]
fn port_loop(port: &DevicePort, iova: u64, len: u64, n: u64) {
    for _ in 0..n {
        port.dma_copy(black_box(iova + DST), iova + SRC, len, DmaAttrs::default()).expect("dma_copy");
    }
}

#[inline(never)]
fn engine_loop(engine: &DmaEngine, ring: u64, desc: &[u8; 64], tail: &mut u32, n: u64) {
    for _ in 0..n {
        let slot = (*tail % RING as u32) as u64;
        // SAFETY: the ring slot lies in our own populated buffer.
        unsafe { std::ptr::copy_nonoverlapping(desc.as_ptr(), (ring + slot * 64) as *mut u8, 64) };
        *tail = tail.wrapping_add(1);
        engine.write_reg32(regs::REG_TAIL, *tail % RING as u32).expect("doorbell");
        engine.run_until_idle();
    }
}

#[inline(never)]
fn unmap_loop(ctx: &Iommufd, ioas: u32, va: u64, iova: u64, n: u64) {
    for _ in 0..n {
        ctx.ioas_map(ioas, RW, black_box(va), 4096, iova).expect("map");
        ctx.ioas_unmap(ioas, iova, 4096).expect("unmap");
    }
}

/// Which frames copy [`frames_loop`] runs.
#[derive(Clone, Copy)]
enum Phys {
    Read,
    Write,
    Copy,
}

#[inline(never)]
fn frames_loop(what: Phys, src_pa: u64, dst_pa: u64, buf: &mut [u8], n: u64) {
    use uiommufd_memory::frames;
    for _ in 0..n {
        match what {
            Phys::Read => frames::read_phys(black_box(src_pa), buf).expect("read_phys"),
            Phys::Write => frames::write_phys(black_box(dst_pa), buf).expect("write_phys"),
            Phys::Copy => frames::copy_phys(black_box(dst_pa), black_box(src_pa), buf.len()).expect("copy_phys"),
        }
        black_box(&mut *buf);
    }
}

/// The guarded copy alone, between the port copy's two host addresses.
#[inline(never)]
fn guard_loop(base: u64, len: u64, n: u64) {
    for _ in 0..n {
        assert!(uiommufd_memory::user::copy_own_known(black_box(base + DST), black_box(base + SRC), len as usize));
    }
}

#[inline(never)]
fn memcpy_loop(base: u64, len: u64, n: u64) {
    for _ in 0..n {
        // SAFETY: disjoint parts of our own buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                black_box(base + SRC) as *const u8,
                black_box(base + DST) as *mut u8,
                len as usize,
            )
        };
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "vtd".into());
    let mode = args.next().unwrap_or_else(|| "port".into());
    let len: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4096);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    assert!(len <= 1 << 20, "at most 1 MiB");
    let (spec, piece) = match model.as_str() {
        "vtd" => ("vtd", LEN),
        "vtd4k" => ("vtd", 1 << 20),
        "amd4k" => ("amd:pgsizes=4k", LEN),
        "mock" => ("mock", LEN / 2),
        m => panic!("unknown model {m}"),
    };
    let mut buf = vec![0x5au8; (LEN + (2 << 20)) as usize];
    let base = (buf.as_mut_ptr() as u64).next_multiple_of(2 << 20);
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().expect("ioas");
    let iova = if model == "mock" { uiommufd_abi::test_cmd::MOCK_APERTURE_START } else { 1 << 30 };
    let mapped = if model == "mock" { LEN / 2 } else { LEN };
    for off in (0..mapped).step_by(piece as usize) {
        ctx.ioas_map(ioas, RW, base + off, piece, iova + off).expect("map");
    }
    let idev: Arc<dyn IommuDevice> = match parse_iommu(spec).expect("model") {
        IommuModel::Vtd(unit) => Arc::new(uiommufd_hw::vtd::device::VtdDevice::new(&unit, "0000:00:04.0")),
        IommuModel::Mock => Arc::new(uiommufd_hw::mock::MockDevice::new(0).expect("mock")),
        IommuModel::Amd(unit) => Arc::new(uiommufd_hw::amd::AmdDevice::new(&unit, "0000:00:04.0", 0x20)),
        IommuModel::Smmuv3(..) => panic!("not here"),
    };
    let (_, edge) = device::bind(&ctx, idev).expect("bind");
    edge.arc().change_pt(&ctx, NO_PASID, ioas, false).expect("attach");
    let port = DevicePort::new(edge.arc());
    let engine =
        DmaEngine::with_options("profile", DmaEngineOptions { worker: false, ..Default::default() }).expect("engine");
    engine.set_dma_port(Arc::clone(&port) as _);
    let mut cmd = [0u8; 2];
    engine.config_read(4, &mut cmd).expect("config");
    engine.config_write(4, &(u16::from_le_bytes(cmd) | 4).to_le_bytes()).expect("bus master");
    engine.write_reg64(regs::REG_RING_BASE, iova).expect("ring");
    engine.write_reg32(regs::REG_RING_SIZE, RING as u32).expect("ring size");
    engine.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).expect("enable");
    let desc = Descriptor::copy(iova + DST, iova + SRC, len).to_bytes();
    let mut tail = 0u32;
    let worker_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = (mode == "unmap").then(|| {
        let (port, stop) = (Arc::clone(&port), Arc::clone(&worker_stop));
        let worker = std::thread::spawn(move || {
            port.dma_copy(iova + DST, iova + SRC, 4096, DmaAttrs::default()).expect("dma_copy");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        worker
    });
    let pair_iova = iova + mapped + (2 << 20);
    let pa = |va: u64| uiommufd_memory::frames::pfn_at(va).expect("pinned") * 4096 + va % 4096;
    let (src_pa, dst_pa) = (pa(base + SRC), pa(base + DST));
    let mut store = vec![0u8; len as usize + 4096];
    let at = store.as_ptr().align_offset(4096);
    let phys_buf = &mut store[at..at + len as usize];
    let mut run = |n: u64, tail: &mut u32| match mode.as_str() {
        "unmap" => unmap_loop(&ctx, ioas, base, pair_iova, n),
        "port" => port_loop(&port, iova, len, n),
        "engine" => engine_loop(&engine, base, &desc, tail, n),
        "memcpy" => memcpy_loop(base, len, n),
        "guard" => guard_loop(base, len, n),
        "read_phys" => frames_loop(Phys::Read, src_pa, dst_pa, phys_buf, n),
        "write_phys" => frames_loop(Phys::Write, src_pa, dst_pa, phys_buf, n),
        "copy_phys" => frames_loop(Phys::Copy, src_pa, dst_pa, phys_buf, n),
        m => panic!("unknown mode {m}"),
    };
    run(100, &mut tail);
    if let Ok(rounds) = std::env::var("VS_MEMCPY").map(|r| r.parse::<usize>().expect("rounds")) {
        // Wall time beside memcpy, interleaved slices of `n` (min and
        // median of each): a rough check on a noisy host.
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = std::time::Instant::now();
            run(n, &mut tail);
            ours.push(t.elapsed().as_nanos() as f64 / n as f64);
            let t = std::time::Instant::now();
            memcpy_loop(base, len, n);
            reference.push(t.elapsed().as_nanos() as f64 / n as f64);
        }
        for v in [&mut ours, &mut reference] {
            v.sort_by(f64::total_cmp);
        }
        let (m, r) = (ours.len() / 2, reference.len() / 2);
        eprintln!(
            "{model} {mode} {len}: min {:.1} ns (memcpy {:.1}, ratio {:.2}), median {:.1} ns (memcpy {:.1}, ratio {:.2})",
            ours[0],
            reference[0],
            reference[0] / ours[0],
            ours[m],
            reference[r],
            reference[r] / ours[m]
        );
    }
    let t = std::time::Instant::now();
    run(n, &mut tail);
    eprintln!("{model} {mode} {len}: {:.1} ns per operation", t.elapsed().as_nanos() as f64 / n as f64);
    worker_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(w) = worker {
        w.join().expect("worker");
    }
    drop(engine);
    edge.arc().detach(&ctx, NO_PASID);
    ctx.ioas_unmap(ioas, 0, u64::MAX).expect("unmap");
    drop(buf);
}
