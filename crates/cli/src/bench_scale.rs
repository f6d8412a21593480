//! `uiommufd bench --scale`: many mappings and several threads.
//!
//! - One IOAS with N separate 4 KiB mappings (N = 1 k, 100 k, 1 M; with
//!   `--quick` 1 k, 10 k, 100 k) through a VT-d second-stage domain: the
//!   mean time of a map while the IOAS fills, of an emulated-device
//!   access (`IOMMU_TEST_OP_ACCESS_RW`, 64 bytes) at random mapped IOVAs,
//!   and of an unmap while it empties; with the memory each mapping costs
//!   (resident memory before and after, over N). Times per operation that
//!   stay flat (or grow like log N) as N grows by 1000x are the point.
//! - 1 TiB of IOVA (64 GiB with `--quick`) mapped in 2 MiB pieces, all
//!   of the same 2 MiB of memory (2 MiB leaves).
//! - Two threads mapping and unmapping 4 KiB, in separate IOASes and in
//!   one IOAS, against one thread alone in the same run.
//! - Two devices copying 4 KiB by DMA at once, against one alone.
//!
//! Every mapping of the first two cases maps pages of one small buffer
//! (a page may be pinned many times), so the frames behind them stay few
//! and the memory measured is the engine's per-mapping cost.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use uiommufd_abi as abi;
use uiommufd_core::io_pagetable::new_token;
use uiommufd_core::{selftest, Iommufd};

use crate::bench::{measure, Region, Row};
use crate::bench_guest::vtd_domain;

const RW: u32 = abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE | abi::IOMMU_IOAS_MAP_FIXED_IOVA;
const K4: u64 = 4096;
const M2: u64 = 2 << 20;
/// Where the scale cases' IOVAs start (inside every model's aperture but
/// the mock's).
const BASE: u64 = 1 << 32;

/// Resident bytes of this process (`/proc/self/statm`).
fn resident() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096 // statm counts pages of the kernel's PAGE_SIZE (4 KiB on x86-64)
}

/// Give the memory earlier cases freed back to the system, so that what a
/// case's mappings take shows as resident growth instead of reusing it.
fn trim() {
    // SAFETY: glibc's `malloc_trim` only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
}

use uiommufd_memory::rng::XorShift64 as Rng;

/// A fresh IOAS with a VT-d second-stage domain.
fn vtd_ioas() -> (Arc<Iommufd>, u32) {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().expect("ioas");
    let d: Arc<dyn uiommufd_hw::Domain> = Arc::new(vtd_domain());
    ctx.ioas(ioas).expect("ioas").iopt().add_domain(new_token(), d).expect("domain");
    (ctx, ioas)
}

fn fmt_bytes(b: f64) -> String {
    if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// The kernel's memory per IOMMU_IOAS_MAP (Linux 7.3, x86-64, no lock
/// debugging), from the structure layouts in `io_pagetable.h`: one
/// `struct iopt_area` (two 48-byte interval-tree nodes, three pointers,
/// four 32-bit fields: 144 bytes) from the 192-byte kmalloc cache, and one
/// `struct iopt_pages` (refcount, a 24-byte mutex, three counts, three
/// owner pointers, the type, a 48-byte union for the dma-buf case, the
/// flags, an empty xarray and two cached rb-roots: 192 bytes) from the same
/// cache. The pinned PFNs of an area mapped into a domain live in the
/// domain's page table (its storage domain), not in the xarray, so
/// nothing else is allocated per mapping; page-table pages come on top,
/// as here.
const KERNEL_AREA_BYTES: f64 = 192.0 + 192.0;

/// Bytes of one VT-d model page-table node: 512 entries and 512 child
/// links (the kernel's table page is the 4 KiB of entries alone).
const PT_NODE_BYTES: f64 = 8200.0;

/// The parts of a mapping's memory: what the engine's structures hold
/// (capacities) and the page-table nodes (`pt_bytes` in all), per mapping,
/// beside the resident growth measured (`resident`, per mapping): the
/// difference is the allocator's rounding and headers.
fn breakdown(ctx: &Iommufd, ioas: u32, n: u64, pt_bytes: f64, resident: f64) -> String {
    let m = ctx.ioas(ioas).expect("ioas").iopt().memory_use();
    let per = |b: usize| fmt_bytes(b as f64 / n as f64);
    let known = m.slot_bytes + m.index_bytes + m.pages_bytes + m.pin_record_bytes;
    format!(
        "    per mapping: area slot {}, IOVA index {}, Pages {} ({} B each), pin records {}, \
         page tables {}; allocator and the rest {}",
        per(m.slot_bytes),
        per(m.index_bytes),
        per(m.pages_bytes),
        m.pages_bytes / m.pages.max(1),
        per(m.pin_record_bytes),
        fmt_bytes(pt_bytes / n as f64),
        fmt_bytes((resident - (known as f64 + pt_bytes) / n as f64).max(0.0)),
    )
}

/// N separate 4 KiB mappings: map, access, unmap.
fn many_mappings(n: u64, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    const BUF_PAGES: u64 = 1024;
    let buf = Region::new((BUF_PAGES * K4) as usize, true);
    let (ctx, ioas) = vtd_ioas();
    let label = match n {
        n if n >= 1_000_000 => format!("{} M", n / 1_000_000),
        n if n >= 1000 => format!("{} k", n / 1000),
        n => n.to_string(),
    };
    let iova = |i: u64| BASE + i * 2 * K4;
    trim();
    let before = resident();
    let t = Instant::now();
    for i in 0..n {
        ctx.ioas_map(ioas, RW, buf.addr + (i % BUF_PAGES) * K4, K4, iova(i)).expect("map");
    }
    let map = t.elapsed().as_nanos() as f64 / n as f64;
    let per_mapping = resident().saturating_sub(before) as f64 / n as f64;
    notes.push(format!(
        "{label} x 4 KiB mappings: {} resident per mapping (the kernel: {} of slab per mapping, from its structures)",
        fmt_bytes(per_mapping),
        fmt_bytes(KERNEL_AREA_BYTES)
    ));
    // Every mapping takes 8 KiB of IOVA: one leaf table per 256 of them.
    notes.push(breakdown(&ctx, ioas, n, (n * 2 * K4).div_ceil(M2) as f64 * PT_NODE_BYTES, per_mapping));
    rows.push(Row::new(format!("map 4 KiB into an IOAS filling to {label} mappings (mean)"), map));
    let access = selftest::create_access(&ctx, ioas, 0).expect("access");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut b = [0u8; 64];
    let rw = measure(20_000, || {
        let i = rng.next() % n;
        access.access().rw(black_box(iova(i)), &mut b, false, false).expect("rw");
    });
    rows.push(Row::new(format!("ACCESS_RW 64 B at a random one of {label} mappings"), rw));
    drop(access);
    let t = Instant::now();
    for i in 0..n {
        ctx.ioas_unmap(ioas, iova(i), K4).expect("unmap");
    }
    let unmap = t.elapsed().as_nanos() as f64 / n as f64;
    rows.push(Row::new(format!("unmap 4 KiB from an IOAS emptying from {label} mappings (mean)"), unmap));
}

/// `len` bytes of IOVA mapped in 2 MiB pieces of one 2 MiB buffer.
fn huge_iova(len: u64, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let buf = Region::new(M2 as usize, true);
    let (ctx, ioas) = vtd_ioas();
    let n = len / M2;
    let label = if len >= 1 << 40 { format!("{} TiB", len >> 40) } else { format!("{} GiB", len >> 30) };
    trim();
    let before = resident();
    let t = Instant::now();
    for i in 0..n {
        ctx.ioas_map(ioas, RW, buf.addr, M2, BASE + i * M2).expect("map");
    }
    let map = t.elapsed().as_nanos() as f64 / n as f64;
    let per_mapping = resident().saturating_sub(before) as f64 / n as f64;
    notes.push(format!("{label} in 2 MiB mappings: {} resident per mapping", fmt_bytes(per_mapping)));
    // One level-2 table per 512 mappings.
    notes.push(breakdown(&ctx, ioas, n, n.div_ceil(512) as f64 * PT_NODE_BYTES, per_mapping));
    let t = Instant::now();
    for i in 0..n {
        ctx.ioas_unmap(ioas, BASE + i * M2, M2).expect("unmap");
    }
    let unmap = t.elapsed().as_nanos() as f64 / n as f64;
    rows.push(Row::new(format!("map 2 MiB, filling {label} of IOVA (mean)"), map));
    rows.push(Row::new(format!("unmap 2 MiB, emptying {label} of IOVA (mean)"), unmap));
}

/// Nanoseconds per 4 KiB map+unmap pair, aggregated over `threads`
/// threads doing `iters` pairs each, in one IOAS (`shared`) or one each.
fn threads_mapping(threads: usize, shared: bool, iters: u64, buf: &Region) -> f64 {
    let (ctx, ioas) = vtd_ioas();
    let ioases: Vec<(Arc<Iommufd>, u32)> =
        (0..threads).map(|i| if shared || i == 0 { (Arc::clone(&ctx), ioas) } else { vtd_ioas() }).collect();
    let barrier = Barrier::new(threads);
    let spans = std::thread::scope(|s| {
        let workers: Vec<_> = ioases
            .iter()
            .enumerate()
            .map(|(i, (ctx, ioas))| {
                let barrier = &barrier;
                s.spawn(move || {
                    let (va, iova) = (buf.addr + i as u64 * K4, BASE + i as u64 * M2);
                    barrier.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        ctx.ioas_map(*ioas, RW, va, K4, iova).expect("map");
                        ctx.ioas_unmap(*ioas, iova, K4).expect("unmap");
                    }
                    (t, Instant::now())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).collect::<Vec<_>>()
    });
    wall_ns(&spans) / (iters * threads as u64) as f64
}

/// Nanoseconds from the first worker's start to the last one's end, each
/// worker timing itself (a coordinator reading the clock after a start
/// barrier can be descheduled past the whole run on a loaded machine).
fn wall_ns(spans: &[(Instant, Instant)]) -> f64 {
    let start = spans.iter().map(|s| s.0).min().expect("a worker");
    let end = spans.iter().map(|s| s.1).max().expect("a worker");
    end.duration_since(start).as_nanos() as f64
}

/// Nanoseconds per 4 KiB DMA copy, aggregated over `devices` devices
/// (one thread each) bound to one IOAS through VT-d.
fn devices_copying(devices: usize, iters: u64, buf: &Region) -> f64 {
    use uiommufd_core::device::{self, NO_PASID};
    use uiommufd_core::dma::DevicePort;
    use uiommufd_devices::platform::{parse_iommu, IommuModel};
    use uiommufd_hw::device::IommuDevice;
    use uiommufd_hw::dma::{DmaAttrs, DmaPort};

    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().expect("ioas");
    ctx.ioas_map(ioas, RW, buf.addr, M2, BASE).expect("map");
    let IommuModel::Vtd(unit) = parse_iommu("vtd").expect("vtd") else { unreachable!() };
    let mut ports = Vec::new();
    let mut edges = Vec::new();
    for i in 0..devices {
        let bdf = format!("0000:00:{:02x}.0", 4 + i);
        let idev: Arc<dyn IommuDevice> = Arc::new(uiommufd_hw::vtd::device::VtdDevice::new(&unit, &bdf));
        let (_, edge) = device::bind(&ctx, idev).expect("bind");
        edge.arc().change_pt(&ctx, NO_PASID, ioas, false).expect("attach");
        ports.push(DevicePort::new(edge.arc()));
        edges.push(edge);
    }
    let barrier = Barrier::new(devices);
    let spans = std::thread::scope(|s| {
        let workers: Vec<_> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let barrier = &barrier;
                s.spawn(move || {
                    // Each device its own 128 KiB: source, then destination.
                    let base = BASE + i as u64 * (128 << 10);
                    barrier.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        port.dma_copy(base + (64 << 10), base, K4, DmaAttrs::default()).expect("dma");
                    }
                    (t, Instant::now())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).collect::<Vec<_>>()
    });
    let ns = wall_ns(&spans) / (iters * devices as u64) as f64;
    for e in &edges {
        e.arc().detach(&ctx, NO_PASID);
    }
    ctx.ioas_unmap(ioas, 0, u64::MAX).expect("unmap");
    ns
}

/// Whether the case `name` runs: `UIOMMUFD_SCALE_ONLY` (a comma list of
/// `many`, `huge`, `threads`, `devices`) picks some, for profiling one.
fn wanted(name: &str) -> bool {
    std::env::var("UIOMMUFD_SCALE_ONLY").map_or(true, |v| v.split(',').any(|w| w == name))
}

pub(crate) fn bench_scale(quick: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let default: &[u64] = if quick { &[1_000, 10_000, 100_000] } else { &[1_000, 100_000, 1_000_000] };
    // `UIOMMUFD_SCALE_N=1000000` (a comma list): other numbers of mappings.
    let sizes: Vec<u64> = std::env::var("UIOMMUFD_SCALE_N")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec());
    if wanted("many") {
        for &n in &sizes {
            many_mappings(n, &mut rows, &mut notes);
        }
    }
    if wanted("huge") {
        huge_iova(if quick { 64 << 30 } else { 1 << 40 }, &mut rows, &mut notes);
    }
    if !wanted("threads") && !wanted("devices") {
        for n in notes {
            eprintln!("  {n}");
        }
        return rows;
    }

    let buf = Region::new(M2 as usize, true);
    if wanted("threads") {
        let iters = if quick { 20_000 } else { 200_000 };
        // A warm-up first: the first IOASes of the run grow their arenas.
        threads_mapping(2, true, iters / 10, &buf);
        let one = threads_mapping(1, false, iters, &buf);
        rows.push(Row::new("map+unmap 4 KiB, 1 thread (VT-d domain)", one));
        for (shared, what) in [(false, "separate IOASes"), (true, "one IOAS")] {
            let two = threads_mapping(2, shared, iters, &buf);
            rows.push(
                Row::new(format!("map+unmap 4 KiB, 2 threads, {what} (per pair, aggregate)"), two).vs("1 thread", one),
            );
        }
    }
    if wanted("devices") {
        let iters = if quick { 50_000 } else { 500_000 };
        devices_copying(2, iters / 10, &buf);
        let one = devices_copying(1, iters, &buf);
        rows.push(Row::new("DMA copy 4 KiB through VT-d, 1 device", one));
        let two = devices_copying(2, iters, &buf);
        rows.push(Row::new("DMA copy 4 KiB, 2 devices at once (per copy, aggregate)", two).vs("1 device", one));
    }
    for n in notes {
        eprintln!("  {n}");
    }
    eprintln!("  (threads: ratio = 1-thread time per op / aggregate time per op, i.e. the speed-up; {} cores here)", {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    });
    rows
}
