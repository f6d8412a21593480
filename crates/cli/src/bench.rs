//! `uiommufd bench`: the hot paths, each measured beside a reference: one
//! taken in the same run where there is a physical one (a plain `memcpy`
//! of the same size for data movement; for IOAS map/unmap the same
//! operation through the ioctl path), or else the fixed figure of the
//! kernel the target was set against, stated in the row. The ratio
//! is reference time / our time (higher is better); rows with a target say
//! whether this run met it. docs/BENCHMARKS.md explains each case.
//!
//! Harness: every case runs a warm-up, then `ROUNDS` rounds of a fixed
//! iteration count; the reported time per operation is the median round.
//! One-shot cases (the large map) report the median of `ROUNDS` runs.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use uiommufd_abi as abi;
use uiommufd_core::io_pagetable::new_token;
use uiommufd_core::pages::frames;
use uiommufd_core::Iommufd;
use uiommufd_core::{hwpt, selftest};
use uiommufd_dispatch::{File, LocalFds};
use uiommufd_hw::{Domain, Prot};
use zerocopy::IntoBytes;

use crate::bench_guest::vtd_domain;

pub(crate) const ROUNDS: usize = 7;

/// Median nanoseconds per call of `f` over `ROUNDS` rounds of `iters`.
pub(crate) fn measure(iters: u64, mut f: impl FnMut()) -> f64 {
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

/// Nanoseconds per call of `f(false)` (the reference) and of `f(true)`
/// (ours), measured interleaved: each of the `ROUNDS` rounds runs `iters`
/// calls of each in `SLICES` slices that alternate between the two (the
/// order swapped every pair), and each side's figure is the median over
/// all its slices. A change of load on the shared machine (other builds
/// start and stop within a run) then falls on both alike instead of on
/// whichever ran during it, and a slice the scheduler preempted is an
/// outlier rather than part of a round's sum. The same calls and iteration
/// counts as [`measure`] of each separately.
pub(crate) fn measure_vs(iters: u64, mut f: impl FnMut(bool)) -> (f64, f64) {
    const SLICES: u64 = 8;
    for _ in 0..iters.div_ceil(10).max(1) {
        f(false);
        f(true);
    }
    let (mut reference, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for slice in 0..SLICES {
            let n = (iters / SLICES + u64::from(slice < iters % SLICES)).max(1);
            for side in [slice % 2 == 1, slice % 2 == 0] {
                let t = Instant::now();
                for _ in 0..n {
                    f(side);
                }
                let ns = t.elapsed().as_nanos() as f64 / n as f64;
                if side { &mut ours } else { &mut reference }.push(ns);
            }
        }
    }
    reference.sort_by(f64::total_cmp);
    ours.sort_by(f64::total_cmp);
    (reference[reference.len() / 2], ours[ours.len() / 2])
}

/// Median of `ROUNDS` runs of `f`, which returns nanoseconds.
fn median_of(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..ROUNDS).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[ROUNDS / 2]
}

pub(crate) fn fmt_ns(ns: f64) -> String {
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
pub(crate) struct Region {
    pub(crate) addr: u64,
    base: u64,
    len: usize,
}

impl Region {
    pub(crate) fn new(len: usize, populate: bool) -> Region {
        Self::try_new(len, populate).unwrap_or_else(|| panic!("cannot reserve {len} bytes"))
    }

    /// `None` if the address space cannot be reserved.
    fn try_new(len: usize, populate: bool) -> Option<Region> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // Huge alignment helps the kernel (and us) use large pages.
        let align = 1usize << 30;
        // SAFETY: a fresh anonymous reservation at a kernel-chosen address.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), len + align, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return None;
        }
        let addr = (p as usize).next_multiple_of(align);
        if populate {
            // SAFETY: touching our own fresh mapping.
            unsafe { std::ptr::write_bytes(addr as *mut u8, 0x5a, len) };
        }
        Some(Region { addr: addr as u64, base: p as u64, len: len + align })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly our own reservation; nothing pins it
        // any more (every case unmaps before its region goes).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// What a row must achieve.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// At most this many nanoseconds per operation.
    MaxNs(f64),
    /// At least this ratio (reference / ours).
    MinRatio(f64),
    /// At most the reference plus this many nanoseconds.
    MaxOverRef(f64),
}

impl Target {
    /// The target as text and whether `row` meets it.
    pub(crate) fn judge(self, row: &Row) -> (String, bool) {
        let reference = row.reference.as_ref().map(|(_, ns)| *ns);
        match self {
            Target::MaxNs(max) => (format!("<= {}", fmt_ns(max)), row.ours <= max),
            Target::MinRatio(min) => (format!(">= {min:.2}x"), reference.is_some_and(|r| r / row.ours >= min)),
            Target::MaxOverRef(extra) => {
                (format!("<= ref + {}", fmt_ns(extra)), reference.is_some_and(|r| row.ours <= r + extra))
            }
        }
    }
}

pub(crate) struct Row {
    pub(crate) case: String,
    pub(crate) ours: f64,
    pub(crate) reference: Option<(String, f64)>,
    pub(crate) target: Option<Target>,
}

impl Row {
    pub(crate) fn new(case: impl Into<String>, ours: f64) -> Row {
        Row { case: case.into(), ours, reference: None, target: None }
    }
    pub(crate) fn vs(mut self, name: impl Into<String>, ns: f64) -> Row {
        self.reference = Some((name.into(), ns));
        self
    }
    pub(crate) fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self
    }
}

fn rows_table(title: &str, rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut out = format!("\n{title}\n");
    let _ = writeln!(out, "{:<58} {:>10} {:>30} {:>6}  target", "case", "per op", "reference", "ratio");
    for r in rows {
        let (reference, ratio) = match &r.reference {
            Some((name, ns)) => (format!("{name} {}", fmt_ns(*ns)), format!("{:.2}", ns / r.ours)),
            None => ("-".into(), "-".into()),
        };
        let target = match r.target {
            None => String::new(),
            Some(t) => {
                let (what, met) = t.judge(r);
                format!("{what}: {}", if met { "met" } else { "MISSED" })
            }
        };
        let _ = writeln!(out, "{:<58} {:>10} {:>30} {:>6}  {}", r.case, fmt_ns(r.ours), reference, ratio, target);
    }
    out.pop();
    out
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

/// The kernel's own page-table code for one 4 KiB map + unmap pair (the
/// issue's reference figure; not measurable here).
const KERNEL_PT_PAIR_NS: f64 = 120.0;

fn bench_map_unmap(quick: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let sizes: &[(u64, &str, u64)] = &[(4096, "4 KiB", 200_000), (2 << 20, "2 MiB", 2_000), (1 << 30, "1 GiB", 5)];
    let region = Region::new(1 << 30, false);
    let fds = LocalFds::default();
    for &(len, name, iters) in sizes {
        let iters = if quick { iters.div_ceil(20) } else { iters };
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
            // The same through a typed handle (no object-table lookup).
            let handle = ctx.ioas_handle(ioas).expect("handle");
            let by_handle = measure(iters, || {
                handle.map(RW, region.addr, len, IOVA).expect("map");
                handle.unmap(IOVA, len).expect("unmap");
            });
            let case = format!("IOAS map+unmap {name}, {domains} mock domain(s), Rust API");
            let mut row = Row::new(case, api).vs("ioctl path", ioctl);
            if len == 4096 && domains == 1 {
                rows.push(row);
                row = Row::new("  (same) vs the kernel's page-table code alone", api)
                    .vs("kernel (fixed)", KERNEL_PT_PAIR_NS)
                    .target(Target::MaxNs(100.0));
            }
            rows.push(row);
            let case = format!("IOAS map+unmap {name}, {domains} mock domain(s), IoasHandle");
            let mut row = Row::new(case, by_handle).vs("ioctl path", ioctl);
            if len == 4096 && domains >= 1 {
                row = row.target(Target::MaxNs(if domains == 1 { 100.0 } else { 150.0 }));
            }
            rows.push(row);
            if len == 4096 && domains == 1 {
                // A VMM run as a user: the pages charged to RLIMIT_MEMLOCK
                // and shown in VmPin (docs/BENCHMARKS.md, seventh round).
                let charged = uiommufd_memory::sys::with_ipc_lock_forced(false, || {
                    measure(iters, || {
                        handle.map(RW, region.addr, len, IOVA).expect("map");
                        handle.unmap(IOVA, len).expect("unmap");
                    })
                });
                let case = format!("IOAS map+unmap {name}, {domains} mock domain(s), IoasHandle, without CAP_IPC_LOCK");
                rows.push(Row::new(case, charged).vs("with it", by_handle));
            }
        }
    }
    rows
}

/// VFIO type1 mapping 16 GiB of 4 KiB pages on a fast server (the issue's
/// reference figure).
const TYPE1_16G_NS: f64 = 260e6;

/// Map `len` bytes of untouched anonymous memory in one IOAS_MAP, with
/// the domain `domain` attached (none: only the IOAS), then unmap it.
/// Returns (map, unmap) nanoseconds, medians of `ROUNDS` runs.
fn big_map(region: &Region, len: u64, iova: u64, domain: Option<Arc<dyn Domain>>) -> Result<(f64, f64), String> {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().expect("ioas");
    if let Some(d) = domain {
        ctx.ioas(ioas).expect("ioas").iopt().add_domain(new_token(), d).map_err(|e| e.to_string())?;
    }
    let mut unmaps = Vec::new();
    let map = median_of(|| {
        let t = Instant::now();
        ctx.ioas_map(ioas, RW, region.addr, len, iova).expect("map");
        let map = t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        ctx.ioas_unmap(ioas, iova, len).expect("unmap");
        unmaps.push(t.elapsed().as_nanos() as f64);
        map
    });
    unmaps.sort_by(f64::total_cmp);
    Ok((map, unmaps[unmaps.len() / 2]))
}

fn bench_big_map(quick: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let len: u64 = if quick { 1 << 30 } else { 16 << 30 };
    let gib = len >> 30;
    let Some(region) = Region::try_new(len as usize, false) else {
        eprintln!("\n(large map skipped: cannot mmap {gib} GiB of address space)");
        return rows;
    };
    // The reference scales with the size in --quick mode.
    let reference = TYPE1_16G_NS * gib as f64 / 16.0;
    let target = 8e6 * gib as f64 / 16.0;
    match big_map(&region, len, 1 << 32, None) {
        Ok((map, unmap)) => {
            rows.push(Row::new(format!("map {gib} GiB of 4 KiB pages, no domain (pins nothing)"), map));
            rows.push(Row::new(format!("unmap {gib} GiB, no domain"), unmap));
        }
        Err(e) => eprintln!("(no-domain large map failed: {e})"),
    }
    // The mock's aperture is [16 MiB, 2 GiB): 1 GiB is the largest
    // power of two it can take.
    let mock_len = 1u64 << 30;
    let (ctx, ioas, devs) = ioas_with_domains(1);
    let mut unmaps = Vec::new();
    let map = median_of(|| {
        let t = Instant::now();
        ctx.ioas_map(ioas, RW, region.addr, mock_len, 1 << 30).expect("map");
        let map = t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        ctx.ioas_unmap(ioas, 1 << 30, mock_len).expect("unmap");
        unmaps.push(t.elapsed().as_nanos() as f64);
        map
    });
    unmaps.sort_by(f64::total_cmp);
    drop(devs);
    rows.push(
        Row::new("map 1 GiB of 4 KiB pages, 1 mock domain (aperture < 2 GiB)", map)
            .vs("type1, per GiB (fixed)", TYPE1_16G_NS / 16.0)
            .target(Target::MaxNs(8e6 / 16.0)),
    );
    rows.push(Row::new("unmap 1 GiB, 1 mock domain", unmaps[unmaps.len() / 2]));
    match big_map(&region, len, 1 << 32, Some(Arc::new(vtd_domain()))) {
        Ok((map, unmap)) => {
            rows.push(
                Row::new(format!("map {gib} GiB of 4 KiB pages, 1 VT-d domain (one call)"), map)
                    .vs(format!("type1 {gib} GiB (fixed)"), reference)
                    .target(Target::MaxNs(target)),
            );
            rows.push(Row::new(format!("unmap {gib} GiB, 1 VT-d domain"), unmap));
        }
        Err(e) => eprintln!("(VT-d large map failed: {e})"),
    }
    rows
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
            let mut row = Row::new(format!("ACCESS_RW read {name}, {path}"), ns).vs(format!("memcpy {name}"), memcpy);
            if len == 65536 && !slow {
                row = row.target(Target::MinRatio(0.9));
            }
            rows.push(row);
        }
    }
    drop(devs);
    rows
}

/// `frames::read_phys` / `write_phys` / `copy_phys` on pinned program
/// memory (what emulated device DMA does after translation), against
/// `memcpy` of the same size between the same kind of buffers.
fn bench_frames(quick: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    const LEN: u64 = 1 << 20;
    let region = Region::new(LEN as usize, true);
    let ps = 4096u64;
    let runs = match frames::pin_user(region.addr, LEN / ps, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("\n(frames benchmark skipped: pinning failed: {e:?})");
            return rows;
        }
    };
    let pa = |off: u64| -> u64 {
        let r = runs
            .iter()
            .find(|r| off / ps >= (r.va - region.addr) / ps && off / ps < (r.va - region.addr) / ps + r.npages);
        let r = r.expect("pinned");
        (r.pfn + (off / ps - (r.va - region.addr) / ps)) * ps + off % ps
    };
    for &(len, name, target) in &[(4096usize, "4 KiB", 0.9), (65536, "64 KiB", 0.97)] {
        let iters = if quick { 5_000 } else { 100_000 } * 4096 / len as u64;
        // The device's buffer page-aligned, as the region is: glibc's
        // `memcpy` (`rep movsb` here) runs many times slower between ends
        // that differ modulo 32, which a heap buffer's 16-byte alignment
        // would make the reference.
        let mut store = vec![0u8; len + 4096];
        let at = store.as_ptr().align_offset(4096);
        let buf = &mut store[at..at + len];
        let src_va = region.addr;
        let dst_va = region.addr + LEN / 2;
        let memcpy_in = |buf: &mut [u8]| {
            // SAFETY: `len` bytes of our own populated region into `buf`
            // (`len` long); nothing else uses either meanwhile.
            unsafe { std::ptr::copy_nonoverlapping(black_box(src_va) as *const u8, buf.as_mut_ptr(), len) };
            black_box(buf);
        };
        let memcpy_mm = || {
            // SAFETY: between two disjoint halves of our own populated
            // region, which nothing else uses meanwhile.
            unsafe { std::ptr::copy_nonoverlapping(black_box(src_va) as *const u8, black_box(dst_va) as *mut u8, len) };
        };
        let (src_pa, dst_pa) = (pa(0), pa(LEN / 2));
        // Each beside its reference, measured interleaved.
        let (memcpy_r, read) = measure_vs(iters, |ours| {
            if ours {
                frames::read_phys(black_box(src_pa), buf).expect("read_phys");
                black_box(&mut *buf);
            } else {
                memcpy_in(buf);
            }
        });
        let (memcpy_w, write) = measure_vs(iters, |ours| {
            if ours {
                frames::write_phys(black_box(dst_pa), black_box(&*buf)).expect("write_phys");
            } else {
                memcpy_in(buf);
            }
        });
        let (memcpy_c, copy) = measure_vs(iters, |ours| {
            if ours {
                frames::copy_phys(black_box(dst_pa), black_box(src_pa), len).expect("copy_phys");
            } else {
                memcpy_mm();
            }
        });
        let t = Target::MinRatio(target);
        rows.push(Row::new(format!("read_phys {name}"), read).vs(format!("memcpy {name}"), memcpy_r).target(t));
        rows.push(Row::new(format!("write_phys {name}"), write).vs(format!("memcpy {name}"), memcpy_w).target(t));
        rows.push(Row::new(format!("copy_phys {name}"), copy).vs(format!("memcpy {name}"), memcpy_c).target(t));
    }
    for r in &runs {
        frames::unpin(r.pfn, r.npages);
    }
    rows
}

/// Device DMA through the IOMMU: a bound device's port (what the DMA
/// engine's COPY uses: translate both ends through the attached domain,
/// copy frame to frame) and the DMA engine itself running one COPY
/// descriptor, against `memcpy` of the same size between the same buffers.
fn bench_dma(quick: bool) -> Vec<Row> {
    use uiommufd_core::device::{self, NO_PASID};
    use uiommufd_core::dma::DevicePort;
    use uiommufd_devices::dma_engine::regs::{self, Descriptor};
    use uiommufd_devices::platform::{parse_iommu, IommuModel};
    use uiommufd_devices::{DmaEngine, DmaEngineOptions, PciDevice};
    use uiommufd_hw::device::IommuDevice;
    use uiommufd_hw::dma::{DmaAttrs, DmaPort};

    let mut rows = Vec::new();
    const LEN: u64 = 4 << 20;
    const IOVA: u64 = 1 << 30;
    let region = Region::new(LEN as usize, true);
    // VT-d maps the 2 MiB-aligned 4 MiB with 2 MiB leaves, or, mapped in
    // 1 MiB pieces, with 4 KiB leaves (a translation per page); the mock
    // IOMMU has 2 KiB entries (with 1 MiB spans). AMD's v1 table takes the
    // 4 MiB as one page (two level-1 entries, size-encoded), or with
    // `amd_iommu=nohugepages` 4 KiB leaves.
    for (model, label, piece) in [
        ("vtd", "VT-d, 2 MiB leaves", LEN),
        ("vtd", "VT-d, 4 KiB leaves", 1 << 20),
        ("amd", "AMD v1, one 4 MiB page", LEN),
        ("amd:pgsizes=4k", "AMD v1, 4 KiB leaves", LEN),
        ("mock", "mock", LEN / 2),
    ] {
        let ctx = Iommufd::new();
        let ioas = ctx.ioas_alloc().expect("ioas");
        let iova = if model == "mock" { abi::test_cmd::MOCK_APERTURE_START } else { IOVA };
        let len_mapped = if model == "mock" { LEN / 2 } else { LEN };
        for off in (0..len_mapped).step_by(piece as usize) {
            ctx.ioas_map(ioas, RW, region.addr + off, piece, iova + off).expect("map");
        }
        let idev: Arc<dyn IommuDevice> = match parse_iommu(model).expect("model") {
            IommuModel::Vtd(unit) => Arc::new(uiommufd_hw::vtd::device::VtdDevice::new(&unit, "0000:00:04.0")),
            IommuModel::Mock => Arc::new(uiommufd_hw::mock::MockDevice::new(0).expect("mock")),
            IommuModel::Smmuv3(unit, _) => {
                Arc::new(uiommufd_hw::smmuv3::SmmuDevice::new(&unit, "0000:00:04.0", 0x20).expect("smmu master"))
            }
            IommuModel::Amd(unit) => Arc::new(uiommufd_hw::amd::AmdDevice::new(&unit, "0000:00:04.0", 0x20)),
        };
        let (_, edge) = device::bind(&ctx, idev).expect("bind");
        edge.arc().change_pt(&ctx, NO_PASID, ioas, false).expect("attach");
        let port = DevicePort::new(edge.arc());
        let engine =
            DmaEngine::with_options("bench", DmaEngineOptions { worker: false, ..Default::default() }).expect("engine");
        engine.set_dma_port(Arc::clone(&port) as _);
        let mut cmd = [0u8; 2];
        engine.config_read(4, &mut cmd).expect("config");
        engine.config_write(4, &(u16::from_le_bytes(cmd) | 4).to_le_bytes()).expect("bus master");
        // The ring (1024 descriptors of 64 bytes) in the first 64 KiB; the
        // source at 64 KiB and the destination at 1 MiB + 64 KiB: disjoint,
        // outside the ring, and inside the 2 MiB the mock maps.
        const RING: u64 = 1024;
        const SRC: u64 = RING * 64;
        const DST: u64 = (1 << 20) + SRC;
        engine.write_reg64(regs::REG_RING_BASE, iova).expect("ring");
        engine.write_reg32(regs::REG_RING_SIZE, RING as u32).expect("ring size");
        engine.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).expect("enable");
        let mut tail = 0u32;
        for &(len, name, target) in &[(4096u64, "4 KiB", 0.9), (65536, "64 KiB", 0.97)] {
            let iters = if quick { 5_000 } else { 100_000 } * 4096 / len;
            let (src, dst) = (SRC, DST);
            debug_assert!(src + len <= dst && dst + len <= len_mapped);
            let memcpy = || {
                // SAFETY: between two disjoint parts (SRC and DST are 1 MiB
                // apart, len is at most 64 KiB) of our own populated
                // region, which nothing else writes meanwhile.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        black_box(region.addr + src) as *const u8,
                        black_box(region.addr + dst) as *mut u8,
                        len as usize,
                    )
                };
            };
            let attrs = DmaAttrs::default();
            // Beside the reference, measured interleaved.
            let (memcpy_ns, ns) = measure_vs(iters, |ours| {
                if ours {
                    port.dma_copy(black_box(iova + dst), iova + src, len, attrs).expect("dma_copy");
                } else {
                    memcpy();
                }
            });
            rows.push(
                Row::new(format!("{label}: device DMA copy {name} (port)"), ns)
                    .vs(format!("memcpy {name}"), memcpy_ns)
                    .target(Target::MinRatio(target)),
            );
            let desc = Descriptor::copy(iova + dst, iova + src, len).to_bytes();
            let (memcpy_ns, ns) = measure_vs(iters, |ours| {
                if !ours {
                    return memcpy();
                }
                let slot = (tail % RING as u32) as u64;
                // SAFETY: the ring slot lies in our own populated region.
                unsafe { std::ptr::copy_nonoverlapping(desc.as_ptr(), (region.addr + slot * 64) as *mut u8, 64) };
                tail = tail.wrapping_add(1);
                engine.write_reg32(regs::REG_TAIL, tail % RING as u32).expect("doorbell");
                engine.run_until_idle();
            });
            rows.push(
                Row::new(format!("{label}: DMA engine COPY descriptor {name}"), ns)
                    .vs(format!("memcpy {name}"), memcpy_ns),
            );
        }
        drop(engine);
        edge.arc().detach(&ctx, NO_PASID);
        ctx.ioas_unmap(ioas, 0, u64::MAX).expect("unmap");
    }
    rows
}

/// The VT-d second-stage model's map and unmap of 256 contiguous 4 KiB
/// pages in one call, against the kernel's figures for the same
/// (`intel_iommu_map_pages` / `unmap_pages`).
fn bench_vtd(quick: bool) -> Vec<Row> {
    let (map, unmap) = map_unmap_256(&vtd_domain(), quick);
    vec![
        Row::new("VT-d second stage: map 256 x 4 KiB (one call)", map)
            .vs("kernel (fixed)", 332.0)
            .target(Target::MaxNs(120.0)),
        Row::new("VT-d second stage: unmap 256 x 4 KiB (one call)", unmap)
            .vs("kernel (fixed)", 200.0)
            .target(Target::MaxNs(100.0)),
    ]
}

/// Median nanoseconds of one `map_pages` and one `unmap_pages` call of 256
/// contiguous 4 KiB pages on `d`, 64 different 2 MiB blocks per round.
pub(crate) fn map_unmap_256(d: &dyn Domain, quick: bool) -> (f64, f64) {
    const K4: u64 = 1 << 12;
    const SLOTS: u64 = 64;
    let rounds = if quick { 200 } else { 5_000 };
    // Warm the tables of every slot: 256 pages at the start of 64
    // different 2 MiB blocks.
    for i in 0..SLOTS {
        d.map_pages(i << 21, 1 << 32, K4, 256, Prot::READ | Prot::WRITE).expect("map");
        d.unmap_pages(i << 21, K4, 256);
    }
    let mut maps = Vec::new();
    let mut unmaps = Vec::new();
    for _ in 0..ROUNDS {
        let (mut map_ns, mut unmap_ns) = (0u128, 0u128);
        for _ in 0..rounds {
            let t = Instant::now();
            for i in 0..SLOTS {
                d.map_pages(black_box(i << 21), 1 << 32, K4, 256, Prot::READ | Prot::WRITE).expect("map");
            }
            let t1 = Instant::now();
            for i in 0..SLOTS {
                black_box(d.unmap_pages(black_box(i << 21), K4, 256));
            }
            map_ns += (t1 - t).as_nanos();
            unmap_ns += t1.elapsed().as_nanos();
        }
        maps.push(map_ns as f64 / (rounds * SLOTS) as f64);
        unmaps.push(unmap_ns as f64 / (rounds * SLOTS) as f64);
    }
    maps.sort_by(f64::total_cmp);
    unmaps.sort_by(f64::total_cmp);
    (maps[ROUNDS / 2], unmaps[ROUNDS / 2])
}

/// What `uiommufd bench` prints and saves.
pub struct BenchArgs {
    pub quick: bool,
    /// Add the scale cases (millions of mappings, threads; minutes).
    pub scale: bool,
    /// Print the run as JSON on stdout (the tables go to stderr).
    pub json: bool,
    /// A saved `--json` run: print each case's ratio to it.
    pub compare: Option<std::path::PathBuf>,
}

pub fn bench(args: BenchArgs) -> Result<ExitCode, String> {
    let BenchArgs { quick, scale, json, compare } = args;
    let saved = match &compare {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(crate::bench_report::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    // With --json, stdout carries only the JSON.
    let say = |s: String| if json { eprintln!("{s}") } else { println!("{s}") };
    say(format!(
        "uiommufd bench{}: ratio = reference time / our time (higher is better)",
        if quick { " --quick" } else { "" }
    ));
    // What the copies' references are measured against depends on the CPU.
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown".into());
    say(format!("CPU: {cpu}; guarded copies: {}", uiommufd_memory::guard::copy_routine()));
    // UIOMMUFD_BENCH_ONLY=word runs only the sections whose title has it
    // (for profiling one case).
    let only = std::env::var("UIOMMUFD_BENCH_ONLY").ok();
    type Section = (&'static str, fn(bool) -> Vec<Row>);
    let mut sections: Vec<Section> = vec![
        ("IOAS map + unmap (selftest mock IOMMU)", bench_map_unmap),
        ("Large map (one IOMMU_IOAS_MAP of untouched anonymous memory)", bench_big_map),
        ("Emulated-device access (IOMMU_TEST_OP_ACCESS_RW engine path)", bench_access_rw),
        ("Device DMA copies through frames (after translation)", bench_frames),
        ("Device DMA through the IOMMU (bound device's port; DMA engine)", bench_dma),
        ("IOAS map + unmap through the shim (ioctl on /dev/iommu)", crate::bench_shim::bench_shim),
        ("VT-d page-table model", bench_vtd),
        ("Arm SMMUv3 model (beside VT-d in the same run)", crate::bench_smmu::bench_smmu),
        ("AMD-Vi model (beside VT-d in the same run)", crate::bench_amd::bench_amd),
    ];
    if scale {
        sections.push(("Scale (many mappings, threads, devices)", crate::bench_scale::bench_scale));
    }
    let mut records = Vec::new();
    let total = sections.len();
    for (i, (title, run)) in sections.into_iter().enumerate() {
        if only.as_deref().is_none_or(|w| title.contains(w)) {
            let rows = crate::progress::step(i + 1, total, title, || run(quick));
            say(rows_table(title, &rows));
            records.extend(rows.iter().map(|r| crate::bench_report::Record::of(title, r)));
        }
    }
    if let Some(saved) = saved {
        let path = compare.as_ref().expect("read above").display().to_string();
        say(format!("\nCompared with {path} (saved/now above 1: faster now)"));
        say(crate::bench_report::compare(&saved, &records));
    }
    if json {
        print!("{}", crate::bench_report::to_json(quick, &records));
    }
    Ok(ExitCode::SUCCESS)
}
