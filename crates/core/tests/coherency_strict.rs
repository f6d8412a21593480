//! Strict coherency mode: a program that reads what a non-snooped DMA write
//! left behind, before cache maintenance, is caught; one that performs the
//! maintenance first is not. Its own process: strict mode and the fault
//! handler are process-wide.

use std::sync::Arc;

use uiommufd_abi::test_cmd::MOCK_APERTURE_START;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::{flush_caches, DevicePort};
use uiommufd_core::Iommufd;
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::dma::{DmaAttrs, DmaPort};
use uiommufd_hw::mock::MockDevice;
use uiommufd_memory::coherency;

const IOVA: u64 = MOCK_APERTURE_START;

#[test]
fn premature_reads_of_noncoherent_dma_are_reported() {
    if !coherency::set_strict(true) {
        eprintln!("strict coherency needs the guarded-access fault handler (x86-64 Linux); skipped");
        return;
    }
    let ps = uiommufd_memory::page_size();
    let len = 2 * ps;
    // SAFETY: a fresh anonymous mapping owned by this test.
    let va = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    assert_ne!(va, libc::MAP_FAILED as u64);
    let read_byte = |at: u64| -> u8 {
        // SAFETY: inside our mapping; a watched page faults into the
        // engine's handler, which ends the watch and lets the read retry.
        unsafe { std::ptr::read_volatile(at as *const u8) }
    };

    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.ioas_map(ioas, 1 | 2 | 4, va, len as u64, IOVA).unwrap();
    let mock: Arc<dyn IommuDevice> = Arc::new(MockDevice::new(0).unwrap());
    let (_, edge) = device::bind(&ctx, mock).unwrap();
    edge.arc().change_pt(&ctx, NO_PASID, ioas, false).unwrap();
    let port = DevicePort::new(edge.arc());
    let snooped = DmaAttrs::default();
    let no_snoop = DmaAttrs { no_snoop: true, ..snooped };

    // A snooped write is coherent: nothing to watch.
    port.dma_write(IOVA, &[1; 8], snooped).unwrap();
    assert_eq!(coherency::watched_pages(), 0);
    assert_eq!(read_byte(va), 1);

    // A non-snooped write into the mock's non-enforcing domain: the page is
    // watched; reading it now is the bug strict mode exists for.
    port.dma_write(IOVA + 16, &[2; 8], no_snoop).unwrap();
    assert_eq!(coherency::watched_pages(), 1);
    // The device writing again is not the program's access.
    port.dma_write(IOVA + 24, &[3; 8], no_snoop).unwrap();
    assert_eq!(coherency::take_violations().0, 0, "device DMA into a watched page is no violation");
    assert_eq!(coherency::watched_pages(), 1);
    assert_eq!(read_byte(va + 16), 2, "the access goes on after the report");
    let (n, v) = coherency::take_violations();
    assert_eq!(n, 1);
    assert_eq!(v, [coherency::Violation { page: va, write: false }]);
    assert_eq!(coherency::watched_pages(), 0);

    // The same sequence with cache maintenance first: no report.
    port.dma_write(IOVA + ps as u64, &[4; 8], no_snoop).unwrap();
    assert_eq!(coherency::watched_pages(), 1);
    flush_caches();
    assert_eq!(coherency::watched_pages(), 0);
    assert_eq!(read_byte(va + ps as u64), 4);
    assert_eq!(coherency::take_violations().0, 0);

    // A program write counts too (a later write-back could clobber it).
    port.dma_write(IOVA, &[5; 8], no_snoop).unwrap();
    // SAFETY: inside our mapping (see read_byte).
    unsafe { std::ptr::write_volatile((va + 100) as *mut u8, 9) };
    let (n, v) = coherency::take_violations();
    assert_eq!((n, v[0].write), (1, true));

    coherency::set_strict(false);
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    drop(edge);
    // SAFETY: our mapping, no longer pinned.
    unsafe { libc::munmap(va as *mut libc::c_void, len) };
}
