//! Type1 semantics on the compat IOAS, and the area cut behind type1 v1.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};

use uiommufd_abi::test_cmd::{MOCK_APERTURE_LAST, MOCK_APERTURE_START};
use uiommufd_hw::mock::MockDomain;
use uiommufd_hw::{Access as DmaAccess, Aperture, Domain, Fault, Translation};

use super::*;
use crate::account::AccountMode as PagesAccount;
use crate::io_pagetable::{new_token, IoPagetable, UnmapNotify};
use crate::selftest::{md_check_map, md_check_refs, mock_domain};
use crate::Errno;

const RW: u32 = v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE;

fn ps() -> u64 {
    page_size()
}

/// `pages` fresh pages of private anonymous memory, touched so they exist.
/// Leaked: tests are short-lived and pins may outlive a failed assertion.
fn buffer(pages: u64) -> u64 {
    let len = (pages * ps()) as usize;
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as u64
}

fn errno<T: std::fmt::Debug>(r: Result<T>) -> Errno {
    r.unwrap_err().errno
}

/// A context whose compat IOAS has one mock domain, in type1 mode `t`.
/// Returns the context and the mock domain's HWPT ID.
fn compat_with_domain(t: Type1) -> (Arc<Iommufd>, ObjectId) {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let dev = mock_domain(&ctx, ioas, 0).unwrap();
    let hwpt = dev.hwpt_id;
    dev.publish();
    ctx.vfio_ioas_set(ioas).unwrap();
    ctx.vfio_set_iommu(t).unwrap();
    (ctx, hwpt)
}

#[test]
fn argument_checks_come_before_the_missing_compat_ioas() {
    let ctx = Iommufd::new();
    let raw = |t: u32| ctx.vfio_set_iommu_raw(t as u64);
    assert_eq!(errno(raw(v::VFIO_TYPE1v2_IOMMU)), Errno::ENODEV);
    assert_eq!(errno(raw(v::VFIO_TYPE1_IOMMU)), Errno::ENODEV);
    assert_eq!(errno(raw(v::VFIO_SPAPR_TCE_IOMMU)), Errno::EINVAL);
    assert_eq!(errno(raw(v::VFIO_NOIOMMU_IOMMU)), Errno::EINVAL);
    // The type is a C unsigned long: high bits make it another type.
    assert_eq!(errno(ctx.vfio_set_iommu_raw((1 << 32) | 3)), Errno::EINVAL);

    assert_eq!(errno(ctx.vfio_map_dma(1 << 31, 0, MOCK_APERTURE_START, ps())), Errno::EINVAL);
    assert_eq!(errno(ctx.vfio_map_dma(v::VFIO_DMA_MAP_FLAG_VADDR, 0, 0, ps())), Errno::EINVAL);
    assert_eq!(errno(ctx.vfio_map_dma(RW, 0, MOCK_APERTURE_START, ps())), Errno::ENODEV);

    assert_eq!(errno(ctx.vfio_unmap_dma(1 << 31, 0, ps())), Errno::EINVAL);
    assert_eq!(errno(ctx.vfio_unmap_dma(v::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 0, ps())), Errno::EINVAL);
    assert_eq!(errno(ctx.vfio_unmap_dma(v::VFIO_DMA_UNMAP_FLAG_VADDR, 0, ps())), Errno::EINVAL);
    assert_eq!(errno(ctx.vfio_unmap_dma(0, MOCK_APERTURE_START, ps())), Errno::ENODEV);
    // UNMAP_ALL's own iova/size rule needs the IOAS first.
    assert_eq!(errno(ctx.vfio_unmap_dma(v::VFIO_DMA_UNMAP_FLAG_ALL, 1, 0)), Errno::ENODEV);

    assert_eq!(errno(ctx.vfio_iommu_info()), Errno::ENODEV);
    assert_eq!(errno(ctx.vfio_check_extension(v::VFIO_DMA_CC_IOMMU as u64)), Errno::ENODEV);

    // A compat IOAS that was destroyed is no compat IOAS.
    let id = ctx.ioas_alloc().unwrap();
    ctx.vfio_ioas_set(id).unwrap();
    ctx.vfio_set_iommu(Type1::V1v2).unwrap();
    ctx.destroy(id).unwrap();
    assert_eq!(errno(ctx.vfio_set_iommu(Type1::V1v2)), Errno::ENODEV);
}

#[test]
fn extensions_are_answered_like_the_kernel() {
    let ctx = Iommufd::new();
    let ext = |e: u64| ctx.vfio_check_extension(e).unwrap();
    assert_eq!(ext(v::VFIO_TYPE1_IOMMU as u64), 1);
    assert_eq!(ext(v::VFIO_TYPE1v2_IOMMU as u64), 1);
    assert_eq!(ext(v::VFIO_UNMAP_ALL as u64), 1);
    assert_eq!(ext(v::VFIO_UPDATE_VADDR as u64), 0);
    assert_eq!(ext(v::VFIO_TYPE1_NESTING_IOMMU as u64), 0);
    assert_eq!(ext(v::VFIO_NOIOMMU_IOMMU as u64), 0);
    assert_eq!(ext(v::VFIO_SPAPR_TCE_IOMMU as u64), 0);
    assert_eq!(ext(v::VFIO_EEH as u64), 0);
    assert_eq!(ext((1 << 32) | v::VFIO_TYPE1v2_IOMMU as u64), 0);
    assert_eq!(ctx.vfio_api_version(), 0);
}

#[test]
fn cache_coherency_follows_the_compat_ioas_hwpts() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.vfio_ioas_set(ioas).unwrap();
    // No HWPT at all: nothing breaks coherency.
    assert_eq!(ctx.vfio_check_extension(v::VFIO_DMA_CC_IOMMU as u64).unwrap(), 1);
    // The mock IOMMU cannot enforce coherency.
    let dev = mock_domain(&ctx, ioas, 0).unwrap();
    let hwpt = dev.hwpt_id;
    dev.publish();
    assert!(!ctx.get::<crate::hwpt::HwptPaging>(hwpt).unwrap().enforce_cache_coherency());
    assert_eq!(ctx.vfio_check_extension(v::VFIO_DMA_CC_IOMMU as u64).unwrap(), 0);
    assert!(!ctx.vfio_cc_iommu().unwrap());
}

#[test]
fn set_iommu_v1_disables_large_pages_v1v2_does_not() {
    for (t, huge) in [(Type1::V1, false), (Type1::V1v2, true)] {
        let (ctx, _) = compat_with_domain(t);
        let ioas = ctx.vfio_ioas().unwrap();
        assert_eq!(ioas.huge_pages(), huge, "{t:?}");
        // Selecting again is fine, and v1v2 after v1 keeps them disabled.
        ctx.vfio_set_iommu(Type1::V1v2).unwrap();
        assert_eq!(ioas.huge_pages(), huge, "{t:?}");
        ctx.vfio_set_iommu(t).unwrap();
    }
    // v1 cannot be selected once a domain holds mappings.
    let (ctx, _) = compat_with_domain(Type1::V1v2);
    let buf = buffer(1);
    ctx.vfio_map_dma(RW, buf, MOCK_APERTURE_START, ps()).unwrap();
    assert_eq!(errno(ctx.vfio_set_iommu(Type1::V1)), Errno::EINVAL);
    assert!(ctx.vfio_ioas().unwrap().huge_pages());
    // Without a domain, mappings do not stand in the way.
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.vfio_ioas_set(ioas).unwrap();
    ctx.vfio_map_dma(RW, buf, MOCK_APERTURE_START, ps()).unwrap();
    ctx.vfio_set_iommu(Type1::V1).unwrap();
    assert!(!ctx.vfio_ioas().unwrap().huge_pages());
}

#[test]
fn map_is_fixed_iova_with_converted_permissions() {
    let (ctx, hwpt) = compat_with_domain(Type1::V1v2);
    let buf = buffer(4);
    let iopt = |f: &dyn Fn(&IoPagetable)| f(ctx.vfio_ioas().unwrap().iopt());
    ctx.vfio_map_dma(v::VFIO_DMA_MAP_FLAG_READ, buf, MOCK_APERTURE_START, 2 * ps()).unwrap();
    ctx.vfio_map_dma(v::VFIO_DMA_MAP_FLAG_WRITE, buf + 2 * ps(), MOCK_APERTURE_START + 2 * ps(), ps()).unwrap();
    iopt(&|io| {
        let areas = io.areas();
        assert_eq!(areas.len(), 2);
        assert_eq!((areas[0].iova, areas[0].prot), (MOCK_APERTURE_START, Prot::CACHE | Prot::READ));
        assert_eq!((areas[1].iova, areas[1].prot), (MOCK_APERTURE_START + 2 * ps(), Prot::CACHE | Prot::WRITE));
    });
    md_check_map(&ctx, hwpt, MOCK_APERTURE_START, 3 * ps(), buf).unwrap();
    // The IOVA is taken as given: overlapping is EEXIST, outside the
    // aperture (reserved) is EINVAL, and a zero size is EINVAL.
    assert_eq!(errno(ctx.vfio_map_dma(RW, buf, MOCK_APERTURE_START + ps(), ps())), Errno::EEXIST);
    assert_eq!(errno(ctx.vfio_map_dma(RW, buf, MOCK_APERTURE_START - ps(), ps())), Errno::EINVAL);
    assert_eq!(errno(ctx.vfio_map_dma(RW, buf, MOCK_APERTURE_START + 8 * ps(), 0)), Errno::EINVAL);
    // Not page aligned for a type1 v1 IOAS.
    let (ctx1, _) = compat_with_domain(Type1::V1);
    assert_eq!(errno(ctx1.vfio_map_dma(RW, buf, MOCK_APERTURE_START + ps() / 2, ps())), Errno::EINVAL);
}

#[test]
fn unmap_reports_bytes_and_unmap_all_rules() {
    let (ctx, _) = compat_with_domain(Type1::V1v2);
    let buf = buffer(4);
    let len = 4 * ps();
    ctx.vfio_map_dma(RW, buf, MOCK_APERTURE_START, len).unwrap();
    assert_eq!(ctx.vfio_unmap_dma(0, MOCK_APERTURE_START, len).unwrap().into_result().unwrap(), len);
    md_check_refs(buf, len, 0).unwrap();
    // Unmapping nothing succeeds with 0 bytes.
    assert_eq!(ctx.vfio_unmap_dma(0, MOCK_APERTURE_START, len).unwrap(), Type1Unmap { unmapped: 0, result: Ok(()) });
    // A zero size is refused by the unmap itself.
    let r = ctx.vfio_unmap_dma(0, MOCK_APERTURE_START, 0).unwrap();
    assert_eq!((r.unmapped, r.result.unwrap_err().errno), (0, Errno::EINVAL));

    ctx.vfio_map_dma(RW, buf, MOCK_APERTURE_START, len).unwrap();
    let all = v::VFIO_DMA_UNMAP_FLAG_ALL;
    assert_eq!(errno(ctx.vfio_unmap_dma(all, MOCK_APERTURE_START, len)), Errno::EINVAL);
    assert_eq!(errno(ctx.vfio_unmap_dma(all, 0, 1)), Errno::EINVAL);
    assert_eq!(errno(ctx.vfio_unmap_dma(all, 1, 0)), Errno::EINVAL);
    assert_eq!(ctx.vfio_ioas().unwrap().iopt().num_areas(), 1, "a refused UNMAP_ALL unmaps nothing");
    ctx.vfio_map_dma(RW, buf, MOCK_APERTURE_START + 8 * ps(), ps()).unwrap();
    assert_eq!(ctx.vfio_unmap_dma(all, 0, 0).unwrap().into_result().unwrap(), len + ps());
    assert_eq!(ctx.vfio_unmap_dma(all, 0, 0).unwrap().into_result().unwrap(), 0);
}

#[test]
fn v1_unmap_cuts_mappings_and_v1v2_refuses() {
    let n = 8;
    for t in [Type1::V1, Type1::V1v2] {
        let (ctx, hwpt) = compat_with_domain(t);
        let buf = buffer(n);
        let base = MOCK_APERTURE_START;
        ctx.vfio_map_dma(RW, buf, base, n * ps()).unwrap();
        md_check_refs(buf, n * ps(), 1).unwrap();
        // Pages 2 and 3 of one mapping.
        let r = ctx.vfio_unmap_dma(0, base + 2 * ps(), 2 * ps()).unwrap();
        let iopt_areas = ctx.vfio_ioas().unwrap().iopt().areas();
        if t == Type1::V1v2 {
            assert_eq!((r.unmapped, r.result.unwrap_err().errno), (0, Errno::ENOENT));
            assert_eq!(iopt_areas.len(), 1);
            md_check_refs(buf, n * ps(), 1).unwrap();
            // The last page alone crosses the mapping's start edge too.
            let r = ctx.vfio_unmap_dma(0, base + (n - 1) * ps(), ps()).unwrap();
            assert_eq!(r.result.unwrap_err().errno, Errno::ENOENT);
            continue;
        }
        assert_eq!(r.into_result().unwrap(), 2 * ps());
        // Two areas are left, on the same pages, the second further in.
        assert_eq!(iopt_areas.len(), 2);
        let (a, b) = (&iopt_areas[0], &iopt_areas[1]);
        assert_eq!((a.iova, a.last, a.start_byte), (base, base + 2 * ps() - 1, 0));
        assert_eq!((b.iova, b.last, b.start_byte), (base + 4 * ps(), base + n * ps() - 1, 4 * ps()));
        assert!(Arc::ptr_eq(a.pages.as_ref().unwrap(), b.pages.as_ref().unwrap()));
        // The domain and the pins follow exactly.
        md_check_map(&ctx, hwpt, base, 2 * ps(), buf).unwrap();
        md_check_map(&ctx, hwpt, base + 4 * ps(), (n - 4) * ps(), buf + 4 * ps()).unwrap();
        assert!(md_check_map(&ctx, hwpt, base + 2 * ps(), ps(), buf + 2 * ps()).is_err());
        md_check_refs(buf, 2 * ps(), 1).unwrap();
        md_check_refs(buf + 2 * ps(), 2 * ps(), 0).unwrap();
        md_check_refs(buf + 4 * ps(), (n - 4) * ps(), 1).unwrap();
        // The first page (a cut only at its end) and the last one (a cut
        // only at its start).
        assert_eq!(ctx.vfio_unmap_dma(0, base, ps()).unwrap().into_result().unwrap(), ps());
        assert_eq!(ctx.vfio_unmap_dma(0, base + (n - 1) * ps(), ps()).unwrap().into_result().unwrap(), ps());
        // A range spanning a hole and parts of two areas.
        assert_eq!(ctx.vfio_unmap_dma(0, base + ps(), 4 * ps()).unwrap().into_result().unwrap(), 2 * ps());
        md_check_refs(buf, 5 * ps(), 0).unwrap();
        md_check_refs(buf + 5 * ps(), 2 * ps(), 1).unwrap();
        // Cuts that would split a page are refused before anything goes.
        let r = ctx.vfio_unmap_dma(0, base + 5 * ps() + ps() / 2, ps());
        assert_eq!(errno(r), Errno::EINVAL);
        md_check_refs(buf + 5 * ps(), 2 * ps(), 1).unwrap();
        assert_eq!(ctx.vfio_unmap_dma(v::VFIO_DMA_UNMAP_FLAG_ALL, 0, 0).unwrap().into_result().unwrap(), 2 * ps());
        md_check_refs(buf, n * ps(), 0).unwrap();
    }
}

#[test]
fn info_reports_pgsizes_and_the_usable_ranges() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.vfio_ioas_set(ioas).unwrap();
    // No domain: every size from a page up, and the whole IOVA space.
    let info = ctx.vfio_iommu_info().unwrap();
    assert_eq!(info.iova_pgsizes, !(ps() - 1));
    assert_eq!(info.iova_ranges, vec![(0, u64::MAX)]);
    assert_eq!(info.dma_avail, u32::MAX);
    // 7.3's mock domain maps every power of two from half a page up
    // (generic_pt's AMDv1): VFIO folds the sub-page size into a page.
    let mock_sizes =
        uiommufd_hw::mock::MockDomain::generic(uiommufd_hw::mock::MockIommuPt::Default, false).unwrap().pgsize_bitmap();
    for t in [Type1::V1, Type1::V1v2] {
        let (ctx, _) = compat_with_domain(t);
        let info = ctx.vfio_iommu_info().unwrap();
        assert_eq!(info.iova_pgsizes, (mock_sizes & !(ps() - 1)) | ps(), "{t:?}");
        assert_eq!(info.iova_ranges, vec![(MOCK_APERTURE_START, MOCK_APERTURE_LAST)]);
    }
    // Reserved ranges split the usable space.
    let (ctx, _) = compat_with_domain(Type1::V1v2);
    let id = ctx.vfio_ioas_get().unwrap();
    crate::selftest::add_reserved(&ctx, id, MOCK_APERTURE_START + 0x10000, 0x1000).unwrap();
    let info = ctx.vfio_iommu_info().unwrap();
    assert_eq!(
        info.iova_ranges,
        vec![(MOCK_APERTURE_START, MOCK_APERTURE_START + 0xffff), (MOCK_APERTURE_START + 0x11000, MOCK_APERTURE_LAST)]
    );
}

#[test]
fn compat_ioas_create_reuses_an_existing_one() {
    let ctx = Iommufd::new();
    let a = ctx.vfio_compat_ioas_create().unwrap();
    assert_eq!(ctx.vfio_ioas_get().unwrap(), a);
    assert!(ctx.ioas(a).is_ok(), "an ordinary, visible IOAS");
    assert_eq!(ctx.vfio_compat_ioas_create().unwrap(), a);
    assert_eq!(ctx.objects().len(), 1, "no second IOAS");
    let b = ctx.ioas_alloc().unwrap();
    ctx.vfio_ioas_set(b).unwrap();
    assert_eq!(ctx.vfio_compat_ioas_create().unwrap(), b);
    ctx.vfio_ioas_clear();
    let c = ctx.vfio_compat_ioas_create().unwrap();
    assert!(c != a && c != b);
    assert_eq!(ctx.objects().len(), 3);
}

// ---------------------------------------------------------------------
// IoPagetable::cut_iova on its own.

/// Map `pages` pages of a fresh buffer at `iova` in `iopt`.
fn map(iopt: &IoPagetable, iova: u64, pages: u64) -> u64 {
    let buf = buffer(pages);
    iopt.map_user(buf, pages * ps(), Some(iova), Prot::READ | Prot::WRITE, PagesAccount::None).unwrap();
    buf
}

fn starts(iopt: &IoPagetable) -> Vec<(u64, u64, u64)> {
    iopt.areas().iter().map(|a| (a.iova, a.last, a.start_byte)).collect()
}

#[test]
fn cut_splits_at_any_aligned_iova_and_skips_edges_and_holes() {
    let iopt = IoPagetable::new();
    let base = 0x10_0000;
    map(&iopt, base, 4);
    // Without domains or accesses the alignment is a byte.
    assert_eq!(iopt.iova_alignment(), 1);
    // Edges of the area and IOVA outside any area change nothing.
    iopt.cut_iova(&[base, base + 4 * ps() - 1, base - 1, base + 4 * ps(), u64::MAX]).unwrap();
    assert_eq!(starts(&iopt), vec![(base, base + 4 * ps() - 1, 0)]);
    // Cuts apply in order; the second falls in the right half of the first.
    iopt.cut_iova(&[base + 99, base + ps() - 1]).unwrap();
    assert_eq!(
        starts(&iopt),
        vec![(base, base + 99, 0), (base + 100, base + ps() - 1, 100), (base + ps(), base + 4 * ps() - 1, ps())]
    );
    let areas = iopt.areas();
    assert!(areas.windows(2).all(|w| Arc::ptr_eq(w[0].pages.as_ref().unwrap(), w[1].pages.as_ref().unwrap())));
    // The pieces unmap one by one.
    assert_eq!(iopt.unmap(base + 100, ps() - 100), (Ok(()), ps() - 100));
    assert_eq!(iopt.unmap_all(), (Ok(()), 100 + 3 * ps()));
}

#[test]
fn cut_must_follow_the_alignment() {
    let iopt = IoPagetable::new();
    iopt.set_large_pages(false).unwrap();
    assert_eq!(iopt.iova_alignment(), ps());
    let base = 0x10_0000;
    map(&iopt, base, 4);
    assert_eq!(iopt.cut_iova(&[base + ps()]).unwrap_err().errno, Errno::EINVAL);
    // A refused cut stops the walk but keeps the cuts before it.
    let r = iopt.cut_iova(&[base + ps() - 1, base + 2 * ps() + 7, base + 3 * ps() - 1]);
    assert_eq!(r.unwrap_err().errno, Errno::EINVAL);
    assert_eq!(starts(&iopt), vec![(base, base + ps() - 1, 0), (base + ps(), base + 4 * ps() - 1, ps())]);
}

#[test]
fn cut_of_an_area_filled_into_a_domain_needs_large_pages_disabled() {
    let base = MOCK_APERTURE_START;
    // Large pages enabled: the domain might hold an IOPTE across the cut.
    let iopt = IoPagetable::new();
    iopt.add_domain(new_token(), Arc::new(MockDomain::new(true).unwrap())).unwrap();
    map(&iopt, base, 4);
    assert_eq!(iopt.cut_iova(&[base + ps() - 1]).unwrap_err().errno, Errno::EINVAL);
    // Edges are still fine: they cut nothing.
    iopt.cut_iova(&[base + 4 * ps() - 1]).unwrap();
    assert_eq!(iopt.num_areas(), 1);
    // Large pages disabled before the domain filled anything.
    let iopt = IoPagetable::new();
    iopt.set_large_pages(false).unwrap();
    iopt.add_domain(new_token(), Arc::new(MockDomain::new(true).unwrap())).unwrap();
    let buf = map(&iopt, base, 4);
    iopt.cut_iova(&[base + ps() - 1, base + 3 * ps() - 1]).unwrap();
    assert_eq!(iopt.num_areas(), 3);
    assert_eq!(iopt.unmap(base + ps(), 2 * ps()), (Ok(()), 2 * ps()));
    md_check_refs(buf, ps(), 1).unwrap();
    md_check_refs(buf + ps(), 2 * ps(), 0).unwrap();
    md_check_refs(buf + 3 * ps(), ps(), 1).unwrap();
    assert_eq!(iopt.unmap_all(), (Ok(()), 2 * ps()));
    md_check_refs(buf, 4 * ps(), 0).unwrap();
}

/// An access driver that never gives its pins back.
struct Stubborn;

impl UnmapNotify for Stubborn {
    fn unmap(&self, _iova: u64, _length: u64) {}
}

#[test]
fn cut_is_refused_while_an_access_holds_pins() {
    let iopt = IoPagetable::new();
    let driver: Arc<dyn UnmapNotify> = Arc::new(Stubborn);
    let weak: Weak<dyn UnmapNotify> = Arc::downgrade(&driver);
    iopt.add_access(new_token(), ps(), weak).unwrap();
    let base = 0x10_0000;
    map(&iopt, base, 4);
    let pins = iopt.access_pin(base + 3 * ps(), ps(), false).unwrap();
    // The pin is in the last page; the area as a whole cannot be split.
    assert_eq!(iopt.cut_iova(&[base + ps() - 1]).unwrap_err().errno, Errno::EINVAL);
    // An unmap that the access ignores marks the area as going away:
    // from then on the area is busy.
    let (r, n) = iopt.unmap(base, 4 * ps());
    assert_eq!((r.unwrap_err().errno, n), (Errno::EDEADLK, 0));
    assert_eq!(iopt.cut_iova(&[base + ps() - 1]).unwrap_err().errno, Errno::EBUSY);
    iopt.access_unpin(&pins);
    assert_eq!(iopt.unmap(base, 4 * ps()), (Ok(()), 4 * ps()));
}

/// A mock domain whose first map stops until the test lets it go.
struct Gated {
    inner: MockDomain,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Domain for Gated {
    fn pgsize_bitmap(&self) -> u64 {
        self.inner.pgsize_bitmap()
    }
    fn aperture(&self) -> Aperture {
        self.inner.aperture()
    }
    fn map_pages(
        &self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        pgcount: u64,
        prot: Prot,
    ) -> std::result::Result<(), (Errno, u64)> {
        if let Some(tx) = self.entered.lock().unwrap().take() {
            tx.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        self.inner.map_pages(iova, paddr, pgsize, pgcount, prot)
    }
    fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
        self.inner.unmap_pages(iova, pgsize, pgcount)
    }
    fn translate(&self, iova: u64, access: DmaAccess) -> std::result::Result<Translation, Fault> {
        self.inner.translate(iova, access)
    }
}

#[test]
fn cut_is_busy_while_the_area_is_being_mapped() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let domain = Gated {
        inner: MockDomain::new(false).unwrap(),
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    };
    let iopt = IoPagetable::new();
    iopt.set_large_pages(false).unwrap();
    iopt.add_domain(new_token(), Arc::new(domain)).unwrap();
    let base = MOCK_APERTURE_START;
    // Large enough for the general map path, which publishes a placeholder
    // area before it fills the domains (a small map holds the IOAS lock
    // throughout: nothing sees it half built).
    let pages = 128;
    let buf = buffer(pages);
    std::thread::scope(|s| {
        let mapper = s.spawn(|| iopt.map_user(buf, pages * ps(), Some(base), Prot::READ, PagesAccount::None));
        entered_rx.recv().unwrap();
        // The area exists but has no pages yet.
        assert_eq!(iopt.cut_iova(&[base + ps() - 1]).unwrap_err().errno, Errno::EBUSY);
        // Its edges need no split and are not refused.
        iopt.cut_iova(&[base]).unwrap();
        release_tx.send(()).unwrap();
        assert_eq!(mapper.join().unwrap().unwrap(), base);
    });
    iopt.cut_iova(&[base + ps() - 1]).unwrap();
    assert_eq!(iopt.num_areas(), 2);
    assert_eq!(iopt.unmap_all(), (Ok(()), pages * ps()));
}
