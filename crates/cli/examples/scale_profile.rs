//! Map N separate 4 KiB pages of one buffer at N IOVAs, then unmap them
//! all, through an `IoasHandle` with one mock domain (first pins and
//! releases, the scale case's pattern), for instruction profiles:
//! `valgrind --tool=callgrind --toggle-collect='*scale_profile::rounds*'`.
use std::hint::black_box;
use std::sync::Arc;

use uiommufd_abi::iommufd as abi;
use uiommufd_core::{selftest, IoasHandle, Iommufd};

const RW: u32 = abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE | abi::IOMMU_IOAS_MAP_FIXED_IOVA;
const IOVA: u64 = uiommufd_abi::test_cmd::MOCK_APERTURE_START;

#[inline(never)]
fn rounds(h: &IoasHandle, va: u64, n: u64, r: u64) {
    for _ in 0..r {
        for i in 0..n {
            h.map(RW, black_box(va + i * 4096), 4096, IOVA + i * 4096).expect("map");
        }
        for i in 0..n {
            h.unmap(IOVA + i * 4096, 4096).expect("unmap");
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let r: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().expect("ioas");
    let leaked: &'static Arc<Iommufd> = Box::leak(Box::new(Arc::clone(&ctx)));
    let dev = selftest::mock_domain(leaked, ioas, 0).expect("mock device");
    let buf = vec![0x5au8; (n * 4096 + 4096) as usize];
    let va = (buf.as_ptr() as u64).next_multiple_of(4096);
    let h = ctx.ioas_handle(ioas).expect("handle");
    rounds(&h, va, n, 1);
    rounds(&h, va, n, r);
    drop(dev);
}
