//! `uiommufd bench`: the hot paths, each measured beside a reference taken
//! in the same run (a plain `memcpy` for data movement; for IOAS map/unmap,
//! the same operation through the other path), so the figures are ratios on
//! this machine rather than bare times.
//!
//! Harness: every case runs a warm-up, then `ROUNDS` rounds of a fixed
//! iteration count; the reported time per operation is the median round.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use uiommufd_abi as abi;
use uiommufd_core::Iommufd;
use uiommufd_core::{hwpt, selftest};
use uiommufd_dispatch::{File, LocalFds};
use zerocopy::IntoBytes;

const ROUNDS: usize = 7;

/// Median nanoseconds per call of `f` over `ROUNDS` rounds of `iters`.
fn measure(iters: u64, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.div_ceil(10).max(1) {
        f();
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// Anonymous memory that is reserved but not touched (page tables, not
/// pages, are what map/unmap work on).
struct Region {
    addr: u64,
}

impl Region {
    fn new(len: usize, populate: bool) -> Region {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // Huge alignment helps the kernel (and us) use large pages.
        let align = 1usize << 30;
        // SAFETY: a fresh anonymous reservation at a kernel-chosen address.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), len + align, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        assert_ne!(p, libc::MAP_FAILED, "cannot reserve {len} bytes");
        let addr = (p as usize).next_multiple_of(align);
        if populate {
            // SAFETY: touching our own fresh mapping.
            unsafe { std::ptr::write_bytes(addr as *mut u8, 0x5a, len) };
        }
        Region { addr: addr as u64 }
    }
}

struct Row {
    case: String,
    ours: f64,
    reference: Option<(String, f64)>,
}

fn print_rows(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!("{:<52} {:>12} {:>28} {:>8}", "case", "per op", "reference", "ratio");
    for r in rows {
        match &r.reference {
            Some((name, ns)) => println!(
                "{:<52} {:>12} {:>28} {:>8.2}",
                r.case,
                fmt_ns(r.ours),
                format!("{name} {}", fmt_ns(*ns)),
                ns / r.ours
            ),
            None => println!("{:<52} {:>12} {:>28} {:>8}", r.case, fmt_ns(r.ours), "-", "-"),
        }
    }
}

/// An IOAS mirrored by `domains` mock IOMMU domains: one mock device
/// attached (its automatic domain) plus explicitly allocated paging HWPTs,
/// each with a domain of its own.
fn ioas_with_domains(domains: usize) -> (Arc<Iommufd>, u32, Vec<selftest::PendingMockDevice<'static>>) {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().expect("ioas");
    if domains == 0 {
        return (ctx, ioas, Vec::new());
    }
    // The pending device borrows the context: keep it alive for the run.
    let leaked: &'static Arc<Iommufd> = Box::leak(Box::new(Arc::clone(&ctx)));
    let dev = selftest::mock_domain(leaked, ioas, 0).expect("mock device");
    for _ in 1..domains {
        let mut reader = |_: &mut [u8]| Ok(());
        let data = uiommufd_hw::UserData { data_type: 0, len: 0, reader: &mut reader };
        let args = hwpt::HwptAllocArgs { flags: 0, dev_id: dev.idev_id, pt_id: ioas, fault_id: 0, data };
        let mut holder = None;
        hwpt::hwpt_alloc(leaked, &mut holder, args).expect("hwpt").publish();
    }
    (ctx, ioas, vec![dev])
}

const RW: u32 = abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE | abi::IOMMU_IOAS_MAP_FIXED_IOVA;
const IOVA: u64 = abi::test_cmd::MOCK_APERTURE_START;

fn bench_map_unmap(quick: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let sizes: &[(u64, &str, u64)] = &[(4096, "4 KiB", 20_000), (2 << 20, "2 MiB", 2_000), (1 << 30, "1 GiB", 5)];
    let region = Region::new(1 << 30, false);
    let fds = LocalFds::default();
    for &(len, name, iters) in sizes {
        let iters = if quick { iters.div_ceil(10) } else { iters };
        for domains in 0..=2 {
            let (ctx, ioas, _devs) = ioas_with_domains(domains);
            let api = measure(iters, || {
                ctx.ioas_map(ioas, RW, region.addr, len, IOVA).expect("map");
                ctx.ioas_unmap(ioas, IOVA, len).expect("unmap");
            });
            // The same through the ioctl path the shim serves.
            let file = File::Iommufd(Arc::clone(&ctx));
            let mut map = abi::IommuIoasMap {
                size: size_of::<abi::IommuIoasMap>() as u32,
                flags: RW,
                ioas_id: ioas,
                user_va: region.addr,
                length: len,
                iova: IOVA,
                ..Default::default()
            };
            let mut unmap = abi::IommuIoasUnmap {
                size: size_of::<abi::IommuIoasUnmap>() as u32,
                ioas_id: ioas,
                iova: IOVA,
                length: len,
            };
            let ioctl = measure(iters, || {
                let m = map.as_mut_bytes().as_mut_ptr() as u64;
                file.ioctl(&fds, abi::IOMMU_IOAS_MAP as u64, m).expect("map ioctl");
                unmap.length = len;
                let u = unmap.as_mut_bytes().as_mut_ptr() as u64;
                file.ioctl(&fds, abi::IOMMU_IOAS_UNMAP as u64, u).expect("unmap ioctl");
            });
            rows.push(Row {
                case: format!("IOAS map+unmap {name}, {domains} mock domain(s), Rust API"),
                ours: api,
                reference: Some(("ioctl path".into(), ioctl)),
            });
        }
    }
    rows
}

fn bench_big_map(quick: bool) -> Vec<Row> {
    let len: u64 = if quick { 1 << 30 } else { 16 << 30 };
    let region = Region::new(len as usize, false);
    let (ctx, ioas, _devs) = ioas_with_domains(1);
    let t = Instant::now();
    ctx.ioas_map(ioas, RW, region.addr, len, IOVA).expect("map");
    let map = t.elapsed().as_nanos() as f64;
    let t = Instant::now();
    ctx.ioas_unmap(ioas, IOVA, len).expect("unmap");
    let unmap = t.elapsed().as_nanos() as f64;
    let gib = len >> 30;
    vec![
        Row { case: format!("map {gib} GiB of 4 KiB pages, 1 mock domain (one call)"), ours: map, reference: None },
        Row { case: format!("unmap {gib} GiB, 1 mock domain (one call)"), ours: unmap, reference: None },
    ]
}

fn bench_access_rw(quick: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let region = Region::new(1 << 20, true);
    let (ctx, ioas, devs) = ioas_with_domains(1);
    let iova = ctx.ioas_map(ioas, RW & !abi::IOMMU_IOAS_MAP_FIXED_IOVA, region.addr, 1 << 20, 0).expect("map");
    let access = selftest::create_access(&ctx, ioas, 0).expect("access");
    for &(len, name) in &[(4096usize, "4 KiB"), (65536, "64 KiB")] {
        let iters = if quick { 2_000 } else { 20_000 };
        let mut buf = vec![0u8; len];
        let src = vec![0xa5u8; len];
        let memcpy = measure(iters, || {
            buf.copy_from_slice(black_box(&src));
            black_box(&mut buf);
        });
        for (slow, path) in [(false, "fast path"), (true, "slow path (pinned frames)")] {
            let ns = measure(iters, || {
                access.access().rw(iova, &mut buf, false, slow).expect("rw");
                black_box(&mut buf);
            });
            rows.push(Row {
                case: format!("ACCESS_RW read {name}, {path}"),
                ours: ns,
                reference: Some((format!("memcpy {name}"), memcpy)),
            });
        }
    }
    drop(devs);
    rows
}

pub fn bench(quick: bool) -> Result<ExitCode, String> {
    println!(
        "uiommufd bench{}: ratio = reference time / our time (higher is better)",
        if quick { " --quick" } else { "" }
    );
    print_rows("IOAS map + unmap (selftest mock IOMMU)", &bench_map_unmap(quick));
    print_rows("Large map", &bench_big_map(quick));
    print_rows("Emulated-device access (IOMMU_TEST_OP_ACCESS_RW engine path)", &bench_access_rw(quick));
    Ok(ExitCode::SUCCESS)
}
