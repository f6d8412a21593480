//! The DMA path through the mock IOMMU: what a device can and cannot reach.
//!
//! Each test binds a mock device, attaches it, and issues DMA through its
//! [`DevicePort`], checking the bytes in the program's own memory.

use std::sync::Arc;

use uiommufd_abi::test_cmd::MOCK_APERTURE_START;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::hwpt::{self, HwptAllocArgs};
use uiommufd_core::{fault, Iommufd, ObjectId};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::dma::{DmaAttrs, DmaFaultReason, DmaPort};
use uiommufd_hw::mock::MockDevice;
use uiommufd_hw::UserData;
use uiommufd_memory::frames;

const READ: u32 = 4; // IOMMU_IOAS_MAP_READABLE
const WRITE: u32 = 2; // IOMMU_IOAS_MAP_WRITEABLE
const FIXED: u32 = 1; // IOMMU_IOAS_MAP_FIXED_IOVA
const IOVA: u64 = MOCK_APERTURE_START;

fn ps() -> u64 {
    uiommufd_memory::page_size() as u64
}

/// Page-aligned memory owned by the test.
struct Buf {
    mem: Vec<u8>,
    off: usize,
    len: usize,
}

impl Buf {
    fn new(pages: u64) -> Buf {
        let len = (pages * ps()) as usize;
        let mem = vec![0u8; len + ps() as usize];
        let off = (mem.as_ptr() as u64).next_multiple_of(ps()) as usize - mem.as_ptr() as usize;
        Buf { mem, off, len }
    }
    fn addr(&self) -> u64 {
        self.mem.as_ptr() as u64 + self.off as u64
    }
    fn bytes(&self) -> &[u8] {
        &self.mem[self.off..self.off + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.off..self.off + self.len]
    }
}

struct Dev {
    _edge: uiommufd_core::object::Dep<device::Device>,
    dev: Arc<device::Device>,
    port: Arc<DevicePort>,
}

fn bind(ctx: &Arc<Iommufd>, pt: ObjectId) -> Dev {
    let mock: Arc<dyn IommuDevice> = Arc::new(MockDevice::new(0).unwrap());
    let (_, edge) = device::bind(ctx, mock).unwrap();
    let dev = Arc::clone(edge.arc());
    dev.change_pt(ctx, NO_PASID, pt, false).unwrap();
    let port = DevicePort::new(&dev);
    Dev { _edge: edge, dev, port }
}

const NS: DmaAttrs = DmaAttrs { pasid: None, no_snoop: false, privileged: false };

#[test]
fn device_writes_land_in_program_memory_and_reads_see_it() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let mut buf = Buf::new(4);
    for (i, b) in buf.bytes_mut().iter_mut().enumerate() {
        *b = i as u8;
    }
    ctx.ioas_map(ioas, FIXED | READ | WRITE, buf.addr(), 4 * ps(), IOVA).unwrap();
    let d = bind(&ctx, ioas);
    // A write straddling a page boundary.
    let data: Vec<u8> = (0..100u8).map(|x| x ^ 0x5a).collect();
    d.port.dma_write(IOVA + ps() - 50, &data, NS).unwrap();
    assert_eq!(&buf.bytes()[(ps() - 50) as usize..(ps() + 50) as usize], &data[..]);
    // Read back what the program had.
    let mut got = vec![0u8; 2 * ps() as usize];
    d.port.dma_read(IOVA + ps() + 50, &mut got, NS).unwrap();
    assert_eq!(&got[..], &buf.bytes()[(ps() + 50) as usize..(3 * ps() + 50) as usize]);
    // Copy page 0 to page 3 without a bounce buffer.
    d.port.dma_copy(IOVA + 3 * ps(), IOVA, ps(), NS).unwrap();
    let (a, b) = buf.bytes().split_at(3 * ps() as usize);
    assert_eq!(&a[..ps() as usize], b);
    assert_eq!(d.port.stats().faults.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn outside_the_mappings_faults_and_nothing_is_written() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let buf = Buf::new(2);
    ctx.ioas_map(ioas, FIXED | READ | WRITE, buf.addr(), 2 * ps(), IOVA).unwrap();
    let d = bind(&ctx, ioas);
    // The write runs off the end of the mapping: the bytes before the end
    // land, the fault names the first unmapped address.
    let data = vec![0xeeu8; 200];
    let e = d.port.dma_write(IOVA + 2 * ps() - 100, &data, NS).unwrap_err();
    assert_eq!((e.iova, e.write, e.reason, e.reported), (IOVA + 2 * ps(), true, DmaFaultReason::NotPresent, false));
    assert!(buf.bytes()[(2 * ps() - 100) as usize..].iter().all(|&b| b == 0xee));
    // Below the aperture.
    let mut r = [0u8; 8];
    assert_eq!(d.port.dma_read(0x1000, &mut r, NS).unwrap_err().reason, DmaFaultReason::OutOfRange);
}

#[test]
fn read_only_mappings_refuse_device_writes() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let buf = Buf::new(1);
    ctx.ioas_map(ioas, FIXED | READ, buf.addr(), ps(), IOVA).unwrap();
    let d = bind(&ctx, ioas);
    let e = d.port.dma_write(IOVA, &[1, 2, 3], NS).unwrap_err();
    assert_eq!(e.reason, DmaFaultReason::Permission);
    assert!(buf.bytes().iter().all(|&b| b == 0));
    let mut r = [9u8; 3];
    d.port.dma_read(IOVA, &mut r, NS).unwrap();
    assert_eq!(r, [0, 0, 0]);
    // A copy into it fails on the write side.
    assert_eq!(d.port.dma_copy(IOVA + 8, IOVA, 8, NS).unwrap_err().reason, DmaFaultReason::Permission);
}

#[test]
fn a_device_cannot_reach_another_ioas() {
    let ctx = Iommufd::new();
    let (a, b) = (ctx.ioas_alloc().unwrap(), ctx.ioas_alloc().unwrap());
    let (buf_a, buf_b) = (Buf::new(1), Buf::new(1));
    ctx.ioas_map(a, FIXED | READ | WRITE, buf_a.addr(), ps(), IOVA).unwrap();
    ctx.ioas_map(b, FIXED | READ | WRITE, buf_b.addr(), ps(), IOVA + 16 * ps()).unwrap();
    let d = bind(&ctx, a);
    assert_eq!(d.port.dma_write(IOVA + 16 * ps(), &[7; 16], NS).unwrap_err().reason, DmaFaultReason::NotPresent);
    assert!(buf_b.bytes().iter().all(|&x| x == 0));
    // Replaced onto b, the same device reaches b and no longer a.
    d.dev.change_pt(&ctx, NO_PASID, b, true).unwrap();
    d.port.dma_write(IOVA + 16 * ps(), &[7; 16], NS).unwrap();
    assert_eq!(&buf_b.bytes()[..16], &[7; 16]);
    assert_eq!(d.port.dma_write(IOVA, &[1], NS).unwrap_err().reason, DmaFaultReason::NotPresent);
}

#[test]
fn detached_or_unbound_devices_reach_nothing() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let buf = Buf::new(1);
    ctx.ioas_map(ioas, FIXED | READ | WRITE, buf.addr(), ps(), IOVA).unwrap();
    let d = bind(&ctx, ioas);
    // A PASID with no attachment of its own is blocked.
    let tagged = DmaAttrs { pasid: Some(5), ..NS };
    assert_eq!(d.port.dma_write(IOVA, &[1], tagged).unwrap_err().reason, DmaFaultReason::Blocked);
    d.dev.detach(&ctx, NO_PASID);
    assert_eq!(d.port.dma_write(IOVA, &[1], NS).unwrap_err().reason, DmaFaultReason::Blocked);
    let port = Arc::clone(&d.port);
    let id = d.dev.id();
    drop(d);
    ctx.destroy(id).unwrap();
    assert_eq!(port.dma_write(IOVA, &[1], NS).unwrap_err().reason, DmaFaultReason::Blocked);
    assert!(buf.bytes().iter().all(|&x| x == 0));
}

#[test]
fn faults_go_to_the_hwpt_fault_queue() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let d = bind(&ctx, ioas);
    let (pending, fq) = fault::fault_alloc(&ctx, 0).unwrap();
    let fault_id = pending.id();
    pending.publish(Arc::clone(&fq));
    let mut holder = None;
    let mut reader = |_: &mut [u8]| Ok(());
    let args = HwptAllocArgs {
        flags: uiommufd_abi::IOMMU_HWPT_FAULT_ID_VALID,
        dev_id: d.dev.id(),
        pt_id: ioas,
        fault_id,
        data: UserData { data_type: 0, len: 0, reader: &mut reader },
    };
    let p = hwpt::hwpt_alloc(&ctx, &mut holder, args).unwrap();
    let hwpt_id = p.id();
    p.publish();
    drop(holder);
    d.dev.change_pt(&ctx, NO_PASID, hwpt_id, true).unwrap();
    let e = d.port.dma_write(IOVA + 0x1234, &[1, 2], NS).unwrap_err();
    assert!(e.reported, "the fault should have gone to the queue");
    let mut rec = vec![0u8; std::mem::size_of::<uiommufd_abi::IommuHwptPgfault>()];
    let len = rec.len();
    let n = fq.read(len, |at, b| {
        rec[at..at + b.len()].copy_from_slice(b);
        Ok(())
    });
    assert_eq!(n.unwrap(), len);
    let f: uiommufd_abi::IommuHwptPgfault = zerocopy::FromBytes::read_from_bytes(&rec[..]).unwrap();
    assert_eq!(f.dev_id, d.dev.id());
    assert_eq!(f.addr, (IOVA + 0x1234) & !(ps() - 1));
    assert_eq!(f.perm, uiommufd_abi::IOMMU_PGFAULT_PERM_WRITE);
    assert_ne!(f.flags & uiommufd_abi::IOMMU_PGFAULT_FLAGS_LAST_PAGE, 0);
    assert_eq!(f.flags & uiommufd_abi::IOMMU_PGFAULT_FLAGS_PASID_VALID, 0);
}

#[test]
fn device_writes_after_munmap_reach_the_pinned_page_not_the_new_mapping() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let len = 2 * ps();
    // SAFETY: a fresh anonymous mapping we own.
    let va = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    assert_ne!(va, libc::MAP_FAILED as u64);
    // SAFETY: the mapping is ours and `len` long.
    unsafe { std::ptr::write_bytes(va as *mut u8, 0x11, len as usize) };
    ctx.ioas_map(ioas, FIXED | READ | WRITE, va, len, IOVA).unwrap();
    let d = bind(&ctx, ioas);
    // The program unmaps (the shim calls the hook first), and maps
    // something new at the same address.
    frames::before_munmap(va, len);
    // SAFETY: unmapping and remapping our own range.
    unsafe {
        assert_eq!(libc::munmap(va as *mut libc::c_void, len as usize), 0);
        let again = libc::mmap(
            va as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        assert_eq!(again as u64, va);
    }
    d.port.dma_write(IOVA + 8, &[0x22; 8], NS).unwrap();
    // SAFETY: reading our new mapping.
    let fresh = unsafe { std::slice::from_raw_parts(va as *const u8, len as usize) };
    assert!(fresh.iter().all(|&b| b == 0), "the new mapping must not see device writes");
    let mut got = [0u8; 16];
    d.port.dma_read(IOVA, &mut got, NS).unwrap();
    assert_eq!(got, [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22]);
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    // SAFETY: our mapping.
    unsafe { libc::munmap(va as *mut libc::c_void, len as usize) };
}

#[test]
fn coherency_outcomes_follow_the_domain_and_the_no_snoop_bit() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let buf = Buf::new(1);
    ctx.ioas_map(ioas, FIXED | READ | WRITE, buf.addr(), ps(), IOVA).unwrap();
    let d = bind(&ctx, ioas);
    // The selftest mock IOMMU cannot force snooping (as in the kernel).
    assert!(!d.dev.enforced_coherent());
    assert_eq!(d.dev.dma_coherent_now(NO_PASID), Some(false));
    let stats = d.port.stats();
    d.port.dma_write(IOVA, &[1; 64], NS).unwrap();
    assert_eq!(stats.noncoherent_bytes.load(std::sync::atomic::Ordering::Relaxed), 0, "snooped write");
    d.port.dma_write(IOVA, &[1; 64], DmaAttrs { no_snoop: true, ..NS }).unwrap();
    assert_eq!(stats.noncoherent_bytes.load(std::sync::atomic::Ordering::Relaxed), 64, "no-snoop write");
    // Reads never count.
    let mut r = [0u8; 64];
    d.port.dma_read(IOVA, &mut r, DmaAttrs { no_snoop: true, ..NS }).unwrap();
    assert_eq!(stats.noncoherent_bytes.load(std::sync::atomic::Ordering::Relaxed), 64);
}
