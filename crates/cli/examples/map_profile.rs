//! A loop of IOAS map+unmap pairs (4 KiB, or LEN bytes) through an
//! `IoasHandle` with N mock domains, for instruction profiles:
//!
//! ```sh
//! cargo build --release -p uiommufd --example map_profile
//! valgrind --tool=callgrind --toggle-collect='*map_profile::pairs*' \
//!     target/release/examples/map_profile 1 2000 [LEN] [id]
//! ```
//!
//! With a fourth argument `id` the pairs go through `Iommufd::ioas_map` and
//! `Iommufd::ioas_unmap` by object ID (a table lookup per call, as the
//! ioctls do) instead of the handle.
//!
//! The pages are charged as for the process running it: not at all with
//! `CAP_IPC_LOCK` (root), against the user's locked pages with
//! `UIOMMUFD_CAP_IPC_LOCK=0` (a VMM running as a normal user), and against
//! the process's with `MAP_PROFILE_RLIMIT_MODE=1` as well
//! (`IOMMU_OPTION_RLIMIT_MODE`, which needs `CAP_SYS_RESOURCE`: root, or
//! `UIOMMUFD_CAP_SYS_RESOURCE=1`).
use std::hint::black_box;
use std::sync::Arc;

use uiommufd_abi::iommufd as abi;
use uiommufd_core::{hwpt, selftest, IoasHandle, Iommufd};

const RW: u32 = abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE | abi::IOMMU_IOAS_MAP_FIXED_IOVA;
const IOVA: u64 = uiommufd_abi::test_cmd::MOCK_APERTURE_START;

#[inline(never)]
fn pairs(h: &IoasHandle, va: u64, len: u64, n: u64) {
    for _ in 0..n {
        h.map(RW, black_box(va), len, IOVA).expect("map");
        h.unmap(IOVA, len).expect("unmap");
    }
}

#[inline(never)]
fn pairs_by_id(ctx: &Iommufd, ioas: u32, va: u64, len: u64, n: u64) {
    for _ in 0..n {
        ctx.ioas_map(black_box(ioas), RW, black_box(va), len, IOVA).expect("map");
        ctx.ioas_unmap(black_box(ioas), IOVA, len).expect("unmap");
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let domains: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let len: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4096);
    let by_id = args.next().as_deref() == Some("id");
    let ctx = Iommufd::new();
    if std::env::var("MAP_PROFILE_RLIMIT_MODE").as_deref() == Ok("1") {
        ctx.option(abi::IOMMU_OPTION_RLIMIT_MODE, abi::IOMMU_OPTION_OP_SET, 0, 1).expect("RLIMIT_MODE");
    }
    let ioas = ctx.ioas_alloc().expect("ioas");
    let leaked: &'static Arc<Iommufd> = Box::leak(Box::new(Arc::clone(&ctx)));
    let mut devs = Vec::new();
    if domains > 0 {
        let dev = selftest::mock_domain(leaked, ioas, 0).expect("mock device");
        for _ in 1..domains {
            let mut reader = |_: &mut [u8]| Ok(());
            let data = uiommufd_hw::UserData { data_type: 0, len: 0, reader: &mut reader };
            let args = hwpt::HwptAllocArgs { flags: 0, dev_id: dev.idev_id, pt_id: ioas, fault_id: 0, data };
            let mut holder = None;
            hwpt::hwpt_alloc(leaked, &mut holder, args).expect("hwpt").publish();
        }
        devs.push(dev);
    }
    let buf = vec![0x5au8; (len + (2 << 20)) as usize];
    let va = (buf.as_ptr() as u64).next_multiple_of(2 << 20);
    let h = ctx.ioas_handle(ioas).expect("handle");
    let run = |n| if by_id { pairs_by_id(&ctx, ioas, va, len, n) } else { pairs(&h, va, len, n) };
    run(10);
    let t = std::time::Instant::now();
    run(n);
    eprintln!("{domains} domain(s): {:.1} ns per pair", t.elapsed().as_nanos() as f64 / n as f64);
    drop(devs);
}
