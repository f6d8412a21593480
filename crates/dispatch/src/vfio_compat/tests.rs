//! The VFIO container ioctls through the real dispatch path, with real
//! (and deliberately bad) user pointers.

use uiommufd_abi::test_cmd::{MOCK_APERTURE_LAST, MOCK_APERTURE_START};
use uiommufd_core::vfio_compat::Type1;
use uiommufd_core::ObjectId;

use super::*;
use crate::{iommufd_ioctl, LocalFds};

fn raw(ctx: &Arc<Iommufd>, req: u32, arg: u64) -> std::result::Result<i32, Errno> {
    iommufd_ioctl(ctx, &LocalFds::default(), req as u64, arg).map_err(|e| e.errno)
}

fn call<T: IntoBytes + FromBytes>(ctx: &Arc<Iommufd>, req: u32, arg: &mut T) -> std::result::Result<i32, Errno> {
    raw(ctx, req, arg.as_mut_bytes().as_mut_ptr() as u64)
}

const RW: u32 = v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE;

fn ps() -> u64 {
    uiommufd_memory::page_size() as u64
}

/// `pages` fresh private pages; `prot` applied after `init` is copied in.
/// Leaked on purpose (tests are short-lived).
fn pages_with(pages: u64, init: &[u8], prot: i32) -> u64 {
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
    // SAFETY: `p` is a writable mapping of `len >= init.len()` bytes.
    unsafe { std::ptr::copy_nonoverlapping(init.as_ptr(), p.cast::<u8>(), init.len()) };
    // SAFETY: changing the protection of the mapping we just made.
    assert_eq!(unsafe { libc::mprotect(p, len, prot) }, 0);
    p as u64
}

/// A context whose compat IOAS has a mock domain, in type1 mode `t`.
fn compat(t: Type1) -> (Arc<Iommufd>, ObjectId) {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    uiommufd_core::selftest::mock_domain(&ctx, ioas, 0).unwrap().publish();
    ctx.vfio_ioas_set(ioas).unwrap();
    let want = match t {
        Type1::V1 => v::VFIO_TYPE1_IOMMU,
        Type1::V1v2 => v::VFIO_TYPE1v2_IOMMU,
    };
    // Through the ioctl: the argument is the integer itself.
    assert_eq!(raw(&ctx, v::VFIO_SET_IOMMU, want as u64), Ok(0));
    (ctx, ioas)
}

#[test]
fn integer_argument_requests() {
    let ctx = Iommufd::new();
    assert_eq!(raw(&ctx, v::VFIO_GET_API_VERSION, 0xdead_beef), Ok(v::VFIO_API_VERSION as i32));
    assert_eq!(raw(&ctx, v::VFIO_CHECK_EXTENSION, v::VFIO_TYPE1v2_IOMMU as u64), Ok(1));
    assert_eq!(raw(&ctx, v::VFIO_CHECK_EXTENSION, v::VFIO_TYPE1_IOMMU as u64), Ok(1));
    assert_eq!(raw(&ctx, v::VFIO_CHECK_EXTENSION, v::VFIO_UNMAP_ALL as u64), Ok(1));
    assert_eq!(raw(&ctx, v::VFIO_CHECK_EXTENSION, v::VFIO_UPDATE_VADDR as u64), Ok(0));
    assert_eq!(raw(&ctx, v::VFIO_CHECK_EXTENSION, (1 << 40) | v::VFIO_TYPE1v2_IOMMU as u64), Ok(0));
    assert_eq!(raw(&ctx, v::VFIO_CHECK_EXTENSION, v::VFIO_DMA_CC_IOMMU as u64), Err(Errno::ENODEV));
    // iommufd.set_iommu_cmd: no compat IOAS.
    assert_eq!(raw(&ctx, v::VFIO_SET_IOMMU, v::VFIO_TYPE1v2_IOMMU as u64), Err(Errno::ENODEV));
    assert_eq!(raw(&ctx, v::VFIO_SET_IOMMU, v::VFIO_TYPE1_IOMMU as u64), Err(Errno::ENODEV));
    assert_eq!(raw(&ctx, v::VFIO_SET_IOMMU, v::VFIO_SPAPR_TCE_IOMMU as u64), Err(Errno::EINVAL));
    // With one, the CC answer reflects the mock domain (not coherent).
    let (ctx, _) = compat(Type1::V1v2);
    assert_eq!(raw(&ctx, v::VFIO_CHECK_EXTENSION, v::VFIO_DMA_CC_IOMMU as u64), Ok(0));
}

#[test]
fn other_vfio_requests_are_enotty() {
    let (ctx, _) = compat(Type1::V1v2);
    for req in [v::VFIO_IOMMU_DIRTY_PAGES, v::VFIO_IOMMU_ENABLE, v::VFIO_IOMMU_DISABLE, v::VFIO_DEVICE_GET_INFO] {
        assert_eq!(raw(&ctx, req, 0), Err(Errno::ENOTTY), "{req:#x}");
    }
    // The request must match exactly, direction and size bits included.
    let sized = uiommufd_abi::ioctl::ioc(uiommufd_abi::ioctl::IOC_WRITE, v::VFIO_TYPE, v::VFIO_BASE + 2, 4);
    assert_eq!(raw(&ctx, sized, v::VFIO_TYPE1v2_IOMMU as u64), Err(Errno::ENOTTY));
}

#[test]
fn map_and_unmap_argument_rules() {
    // iommufd.map_cmd / unmap_cmd: argsz, then flags, then the compat IOAS.
    let ctx = Iommufd::new();
    let mut map = v::VfioIommuType1DmaMap { argsz: 1, iova: MOCK_APERTURE_START, size: ps(), ..Default::default() };
    assert_eq!(call(&ctx, v::VFIO_IOMMU_MAP_DMA, &mut map), Err(Errno::EINVAL));
    map.argsz = 31;
    assert_eq!(call(&ctx, v::VFIO_IOMMU_MAP_DMA, &mut map), Err(Errno::EINVAL));
    map.argsz = 32;
    map.flags = 1 << 31;
    assert_eq!(call(&ctx, v::VFIO_IOMMU_MAP_DMA, &mut map), Err(Errno::EINVAL));
    map.flags = RW;
    assert_eq!(call(&ctx, v::VFIO_IOMMU_MAP_DMA, &mut map), Err(Errno::ENODEV));
    // A larger argsz is fine (nothing past the struct is read).
    map.argsz = 4096;
    assert_eq!(call(&ctx, v::VFIO_IOMMU_MAP_DMA, &mut map), Err(Errno::ENODEV));

    let mut unmap = v::VfioIommuType1DmaUnmap { argsz: 1, iova: MOCK_APERTURE_START, size: ps(), ..Default::default() };
    assert_eq!(call(&ctx, v::VFIO_IOMMU_UNMAP_DMA, &mut unmap), Err(Errno::EINVAL));
    unmap.argsz = 24;
    unmap.flags = 1 << 31;
    assert_eq!(call(&ctx, v::VFIO_IOMMU_UNMAP_DMA, &mut unmap), Err(Errno::EINVAL));
    unmap.flags = 0;
    assert_eq!(call(&ctx, v::VFIO_IOMMU_UNMAP_DMA, &mut unmap), Err(Errno::ENODEV));
    assert_eq!(unmap.size, ps(), "nothing is written back on refusal");

    // Bad pointers, and structs running into an unmapped page.
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_MAP_DMA, 0), Err(Errno::EFAULT));
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_UNMAP_DMA, 8), Err(Errno::EFAULT));
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_GET_INFO, 16), Err(Errno::EFAULT));
    let two = pages_with(2, &[], libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: unmapping the second page of our own mapping.
    assert_eq!(unsafe { libc::munmap((two + ps()) as *mut libc::c_void, ps() as usize) }, 0);
    let tail = |n: u64| two + ps() - n;
    uiommufd_memory::copy_to_user(tail(24), &32u32.to_ne_bytes()).unwrap();
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_MAP_DMA, tail(24)), Err(Errno::EFAULT));
    uiommufd_memory::copy_to_user(tail(16), &24u32.to_ne_bytes()).unwrap();
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_UNMAP_DMA, tail(16)), Err(Errno::EFAULT));
    // GET_INFO reads only up to iova_pgsizes: 16 bytes before the hole
    // are enough to get as far as the missing compat IOAS.
    uiommufd_memory::copy_to_user(tail(16), &24u32.to_ne_bytes()).unwrap();
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_GET_INFO, tail(16)), Err(Errno::ENODEV));
    uiommufd_memory::copy_to_user(tail(8), &24u32.to_ne_bytes()).unwrap();
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_GET_INFO, tail(8)), Err(Errno::EFAULT));
}

#[test]
fn map_and_unmap_through_the_ioctls() {
    for t in [Type1::V1, Type1::V1v2] {
        let (ctx, ioas) = compat(t);
        let buf = pages_with(4, &[], libc::PROT_READ | libc::PROT_WRITE);
        let mut map =
            v::VfioIommuType1DmaMap { argsz: 32, flags: RW, vaddr: buf, iova: MOCK_APERTURE_START, size: 4 * ps() };
        assert_eq!(call(&ctx, v::VFIO_IOMMU_MAP_DMA, &mut map), Ok(0));
        assert_eq!(ctx.ioas(ioas).unwrap().iopt().num_areas(), 1);

        // Unmapping the middle: v1 cuts, v1v2 refuses and reports 0 bytes.
        let mut buf24 = [0xaau8; 40];
        let unmap = v::VfioIommuType1DmaUnmap { argsz: 24, flags: 0, iova: MOCK_APERTURE_START + ps(), size: ps() };
        buf24[..24].copy_from_slice(unmap.as_bytes());
        let r = raw(&ctx, v::VFIO_IOMMU_UNMAP_DMA, buf24.as_mut_ptr() as u64);
        let back = v::VfioIommuType1DmaUnmap::read_from_bytes(&buf24[..24]).unwrap();
        assert!(buf24[24..].iter().all(|&b| b == 0xaa), "written past the struct");
        match t {
            Type1::V1 => assert_eq!((r, back.size), (Ok(0), ps())),
            Type1::V1v2 => assert_eq!((r, back.size), (Err(Errno::ENOENT), 0)),
        }
        assert_eq!((back.argsz, back.flags, back.iova), (24, 0, MOCK_APERTURE_START + ps()));

        // UNMAP_ALL wants iova and size 0.
        let mut all = v::VfioIommuType1DmaUnmap { argsz: 24, flags: v::VFIO_DMA_UNMAP_FLAG_ALL, iova: 0, size: 1 };
        assert_eq!(call(&ctx, v::VFIO_IOMMU_UNMAP_DMA, &mut all), Err(Errno::EINVAL));
        assert_eq!(all.size, 1);
        all.size = 0;
        assert_eq!(call(&ctx, v::VFIO_IOMMU_UNMAP_DMA, &mut all), Ok(0));
        let left = if t == Type1::V1 { 3 * ps() } else { 4 * ps() };
        assert_eq!(all.size, left);
        // Empty: success, 0 bytes.
        all.size = 0;
        assert_eq!(call(&ctx, v::VFIO_IOMMU_UNMAP_DMA, &mut all), Ok(0));
        assert_eq!(all.size, 0);
    }
}

#[test]
fn unmap_reply_fault_is_efault_but_the_unmap_happened() {
    let (ctx, ioas) = compat(Type1::V1v2);
    let buf = pages_with(1, &[], libc::PROT_READ | libc::PROT_WRITE);
    let mut map = v::VfioIommuType1DmaMap { argsz: 32, flags: RW, vaddr: buf, iova: MOCK_APERTURE_START, size: ps() };
    assert_eq!(call(&ctx, v::VFIO_IOMMU_MAP_DMA, &mut map), Ok(0));
    let unmap = v::VfioIommuType1DmaUnmap { argsz: 24, flags: 0, iova: MOCK_APERTURE_START, size: ps() };
    let ro = pages_with(1, unmap.as_bytes(), libc::PROT_READ);
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_UNMAP_DMA, ro), Err(Errno::EFAULT));
    assert_eq!(ctx.ioas(ioas).unwrap().iopt().num_areas(), 0);
    // A refused request writes nothing, so a read-only struct is no fault.
    let bad = v::VfioIommuType1DmaUnmap { argsz: 24, flags: 1 << 31, iova: 0, size: 0 };
    let ro = pages_with(1, bad.as_bytes(), libc::PROT_READ);
    assert_eq!(raw(&ctx, v::VFIO_IOMMU_UNMAP_DMA, ro), Err(Errno::EINVAL));
}

#[test]
fn get_info_without_compat_ioas_and_with_short_argsz() {
    let ctx = Iommufd::new();
    let mut info = v::VfioIommuType1Info { argsz: 1, ..Default::default() };
    assert_eq!(call(&ctx, v::VFIO_IOMMU_GET_INFO, &mut info), Err(Errno::EINVAL));
    info.argsz = 15;
    assert_eq!(call(&ctx, v::VFIO_IOMMU_GET_INFO, &mut info), Err(Errno::EINVAL));
    info.argsz = 24;
    assert_eq!(call(&ctx, v::VFIO_IOMMU_GET_INFO, &mut info), Err(Errno::ENODEV));
    assert_eq!(info, v::VfioIommuType1Info { argsz: 24, ..Default::default() }, "nothing written");
}

/// The full reply for the mock domain: fixed struct, DMA_AVAIL at 24
/// (12 bytes, padded to 16), IOVA_RANGE at 40 with one range.
const FULL: u64 = 24 + 16 + 32;

/// Run GET_INFO with `argsz` in a buffer of 0xaa bytes; returns the result
/// and the buffer.
fn get_info_in(ctx: &Arc<Iommufd>, argsz: u32) -> (std::result::Result<i32, Errno>, Vec<u8>) {
    let mut buf = vec![0xaau8; 256];
    buf[..4].copy_from_slice(&argsz.to_ne_bytes());
    let r = raw(ctx, v::VFIO_IOMMU_GET_INFO, buf.as_mut_ptr() as u64);
    (r, buf)
}

fn at<T: FromBytes>(buf: &[u8], off: u64) -> T {
    T::read_from_prefix(&buf[off as usize..]).unwrap().0
}

/// What `VFIO_IOMMU_GET_INFO` reports with 7.3's mock domain: every power
/// of two from a page up (the 2 KiB size folded into a page).
fn mock_pgsizes() -> u64 {
    use uiommufd_hw::Domain;
    let sizes =
        uiommufd_hw::mock::MockDomain::generic(uiommufd_hw::mock::MockIommuPt::Default, false).unwrap().pgsize_bitmap();
    (sizes & !(ps() - 1)) | ps()
}

#[test]
fn get_info_full_reply_and_cap_chain() {
    for t in [Type1::V1, Type1::V1v2] {
        let (ctx, _) = compat(t);
        let (r, buf) = get_info_in(&ctx, FULL as u32);
        assert_eq!(r, Ok(0));
        let info: v::VfioIommuType1Info = at(&buf, 0);
        assert_eq!(info.argsz as u64, FULL);
        assert_eq!(info.flags, v::VFIO_IOMMU_INFO_PGSIZES | v::VFIO_IOMMU_INFO_CAPS);
        assert_eq!(info.iova_pgsizes, mock_pgsizes());
        assert_eq!(info.cap_offset, 24);
        let dma: v::VfioIommuType1InfoDmaAvail = at(&buf, 24);
        assert_eq!(dma.header, v::VfioInfoCapHeader { id: v::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, version: 1, next: 40 });
        assert_eq!(dma.avail, u32::MAX);
        assert!(buf[36..40].iter().all(|&b| b == 0xaa), "padding is not written");
        let iova: v::VfioIommuType1InfoCapIovaRange = at(&buf, 40);
        assert_eq!(
            iova.header,
            v::VfioInfoCapHeader { id: v::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version: 1, next: 0 }
        );
        assert_eq!((iova.nr_iovas, iova.reserved), (1, 0));
        let range: v::VfioIovaRange = at(&buf, 56);
        assert_eq!((range.start, range.end), (MOCK_APERTURE_START, MOCK_APERTURE_LAST));
        assert!(buf[FULL as usize..].iter().all(|&b| b == 0xaa));
    }
}

#[test]
fn get_info_argsz_sweep_writes_nothing_past_argsz() {
    let (ctx, _) = compat(Type1::V1v2);
    for argsz in 16..=FULL as u32 + 40 {
        let (r, buf) = get_info_in(&ctx, argsz);
        assert_eq!(r, Ok(0), "argsz {argsz}");
        assert!(buf[argsz as usize..].iter().all(|&b| b == 0xaa), "argsz {argsz}: written past argsz");
        // argsz always comes back as the full size.
        assert_eq!(at::<u32>(&buf, 0) as u64, FULL, "argsz {argsz}");
        assert_eq!(at::<u32>(&buf, 4), v::VFIO_IOMMU_INFO_PGSIZES | v::VFIO_IOMMU_INFO_CAPS);
        assert_eq!(at::<u64>(&buf, 8), mock_pgsizes());
        if argsz >= 20 {
            let cap_offset = at::<u32>(&buf, 16);
            assert_eq!(cap_offset, if argsz as u64 >= FULL { 24 } else { 0 }, "argsz {argsz}");
        }
        // Each capability appears exactly when it fits whole.
        let dma_written = buf[24] != 0xaa;
        assert_eq!(dma_written, argsz >= 24 + 12, "argsz {argsz}");
        // Its `next` is 0 as written, and links to IOVA_RANGE once the
        // buffer reaches where that capability starts.
        let next = if argsz >= 40 {
            40
        } else if argsz >= 36 {
            0
        } else {
            0xaaaa_aaaa
        };
        assert_eq!(at::<u32>(&buf, 28), next, "argsz {argsz}");
        let range_written = buf[56] != 0xaa;
        assert_eq!(range_written, argsz >= 72, "argsz {argsz}");
    }
}

#[test]
fn info_reply_layout_for_several_ranges() {
    let info = Type1Info { iova_pgsizes: 0x1000, iova_ranges: vec![(0, 9), (20, 29), (40, u64::MAX)], dma_avail: 7 };
    let full = 24 + 16 + 16 + 3 * 16;
    for argsz in 16..=full + 8 {
        let writes = info_reply(&info, argsz);
        for w in &writes {
            assert!(w.offset + w.bytes.len() as u64 <= argsz as u64, "argsz {argsz}: {w:?}");
        }
        // The fixed struct is always the last write and says the full size.
        let last = writes.last().unwrap();
        assert_eq!(last.offset, 0);
        assert_eq!(last.bytes.len(), (argsz as usize).min(24));
        assert_eq!(u32::from_ne_bytes(last.bytes[..4].try_into().unwrap()), full);
        // Ranges that fit are written even while the header does not.
        let ranges = writes.iter().filter(|w| w.offset >= 56 && w.bytes.len() == 16).count() as u32;
        assert_eq!(ranges, argsz.saturating_sub(56) / 16, "argsz {argsz}");
    }
    let writes = info_reply(&info, full);
    let hdr = writes.iter().find(|w| w.offset == 40).unwrap();
    let cap = v::VfioIommuType1InfoCapIovaRange::read_from_bytes(&hdr.bytes).unwrap();
    assert_eq!(cap.nr_iovas, 3);
    let third = writes.iter().find(|w| w.offset == 56 + 32).unwrap();
    assert_eq!(v::VfioIovaRange::read_from_bytes(&third.bytes).unwrap(), v::VfioIovaRange { start: 40, end: u64::MAX });
    let link = writes.iter().find(|w| w.offset == 28).unwrap();
    assert_eq!(link.bytes, 40u32.to_ne_bytes());
}
