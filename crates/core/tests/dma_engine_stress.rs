//! Several DMA engines, each with its own worker thread, stream descriptors
//! through the IOMMU while other threads map and unmap the data slots they
//! target.
//!
//! Every slot maps only its own buffer when mapped, and every descriptor
//! writes the tag of its target slot. Whatever the interleaving, each
//! descriptor completes (the ring never halts: its own memory stays
//! mapped), either with success or with a read/write fault naming an
//! address of its slot; at the end every buffer holds only its own tag or
//! zeroes, and nothing stays pinned.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::Iommufd;
use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
use uiommufd_devices::platform::{parse_iommu, IommuModel};
use uiommufd_devices::testing::set_command_bits;
use uiommufd_devices::{DmaEngine, PciDevice};
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::vtd::device::VtdDevice;
use uiommufd_memory::frames;

const PS: u64 = 4096;
const ENGINES: usize = 3;
const RING: u32 = 64;
const SLOTS: u64 = 8;
const SLOT_LEN: u64 = 4 * PS;
const RING_IOVA: u64 = 1 << 30;
const DATA_IOVA: u64 = 2 << 30;
const BATCHES: usize = 200;

fn slot_iova(s: u64) -> u64 {
    DATA_IOVA + s * 2 * SLOT_LEN
}

use uiommufd_memory::rng::XorShift64 as Rng;

/// Page-aligned memory of `len` bytes.
struct Mem {
    v: Vec<u8>,
    off: usize,
}
impl Mem {
    fn new(len: u64) -> Mem {
        let v = vec![0u8; (len + PS) as usize];
        let off = (v.as_ptr() as u64).next_multiple_of(PS) as usize - v.as_ptr() as usize;
        Mem { v, off }
    }
    fn addr(&self) -> u64 {
        self.v.as_ptr() as u64 + self.off as u64
    }
}

#[test]
fn dma_engines_stream_while_the_program_maps_and_unmaps() {
    let IommuModel::Vtd(unit) = parse_iommu("vtd").unwrap() else { unreachable!() };
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let rings = Mem::new(ENGINES as u64 * PS);
    ctx.ioas_map(ioas, 7, rings.addr(), ENGINES as u64 * PS, RING_IOVA).unwrap();
    let data = Mem::new(SLOTS * SLOT_LEN);
    let buf = |s: u64| data.addr() + s * SLOT_LEN;

    let mut engines = Vec::new();
    let mut edges = Vec::new();
    for i in 0..ENGINES {
        let vdev: Arc<dyn IommuDevice> = Arc::new(VtdDevice::new(&unit, format!("0000:00:{:02x}.0", 4 + i)));
        let (_, edge) = device::bind(&ctx, vdev).unwrap();
        edge.arc().change_pt(&ctx, NO_PASID, ioas, false).unwrap();
        let e = DmaEngine::new(&format!("dma{i}")).unwrap();
        e.set_dma_port(DevicePort::new(edge.arc()));
        set_command_bits(&e, 0x6, true);
        e.write_reg64(regs::REG_RING_BASE, RING_IOVA + i as u64 * PS).unwrap();
        e.write_reg32(regs::REG_RING_SIZE, RING).unwrap();
        e.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
        engines.push(e);
        edges.push(edge);
    }

    let stop = AtomicBool::new(false);
    let (ok, faulted, maps) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        // Mappers: each owns half the slots.
        for m in 0..2u64 {
            let (ctx, stop, maps) = (&ctx, &stop, &maps);
            s.spawn(move || {
                let mut rng = Rng(0xabcdef + m);
                while !stop.load(Ordering::Relaxed) {
                    let slot = (rng.next() % (SLOTS / 2)) * 2 + m;
                    if ctx.ioas_map(ioas, 7, buf(slot), SLOT_LEN, slot_iova(slot)).is_ok() {
                        maps.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ctx.ioas_unmap(ioas, slot_iova(slot), SLOT_LEN).unwrap();
                    }
                    std::thread::yield_now();
                }
            });
        }
        // Drivers: each feeds its own engine in batches and checks every
        // completion.
        let drivers: Vec<_> = engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (ok, faulted) = (&ok, &faulted);
                let ring = rings.addr() + i as u64 * PS;
                s.spawn(move || {
                    let mut rng = Rng(0x1234 + i as u64);
                    let mut tail = 0u32;
                    for _ in 0..BATCHES {
                        let n = 1 + (rng.next() % (RING as u64 / 2)) as u32;
                        let mut expect = Vec::new();
                        for _ in 0..n {
                            let slot = rng.next() % SLOTS;
                            let off = rng.next() % (SLOT_LEN - 256);
                            let len = 1 + rng.next() % (SLOT_LEN - off);
                            let tag = slot + 1;
                            let d = if rng.next().is_multiple_of(2) {
                                Descriptor::fill(slot_iova(slot) + off, len, tag * 0x0101_0101_0101_0101)
                            } else {
                                // Copy within the slot: only its own bytes move.
                                let half = SLOT_LEN / 2;
                                Descriptor::copy(slot_iova(slot) + half, slot_iova(slot), half.min(len))
                            };
                            let at = ring + tail as u64 * 64;
                            // SAFETY: the ring slot is our own mapped memory;
                            // the device reads it only after the doorbell.
                            unsafe { std::ptr::copy_nonoverlapping(d.to_bytes().as_ptr(), at as *mut u8, 64) };
                            expect.push((tail, slot));
                            tail = (tail + 1) % RING;
                        }
                        e.write_reg32(regs::REG_TAIL, tail).unwrap();
                        let deadline = Instant::now() + Duration::from_secs(20);
                        while e.read_reg32(regs::REG_HEAD).unwrap() != tail {
                            assert!(Instant::now() < deadline, "engine {i} stalled: {:?}", e.ring_state());
                            std::thread::yield_now();
                        }
                        for (t, slot) in expect {
                            let mut b = [0u8; 64];
                            // SAFETY: reading our own ring slot after HEAD passed it.
                            unsafe {
                                std::ptr::copy_nonoverlapping((ring + t as u64 * 64) as *const u8, b.as_mut_ptr(), 64)
                            };
                            let c = Descriptor::from_bytes(&b);
                            match c.status {
                                status::SUCCESS => ok.fetch_add(1, Ordering::Relaxed),
                                status::READ_FAULT | status::WRITE_FAULT => {
                                    let (lo, hi) = (slot_iova(slot), slot_iova(slot) + SLOT_LEN);
                                    assert!(
                                        (lo..hi).contains(&c.result),
                                        "fault at {:#x} outside slot {slot}",
                                        c.result
                                    );
                                    faulted.fetch_add(1, Ordering::Relaxed)
                                }
                                other => panic!("engine {i}: descriptor completed with status {other:#x}"),
                            };
                        }
                    }
                })
            })
            .collect();
        for d in drivers {
            d.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (ok, faulted, maps) = (ok.into_inner(), faulted.into_inner(), maps.into_inner());
    eprintln!("{ok} descriptors succeeded, {faulted} faulted, {maps} maps");
    assert!(ok > 100 && faulted > 50 && maps > 10, "too little traffic: {ok} {faulted} {maps}");
    for s in 0..SLOTS {
        let at = (buf(s) - data.v.as_ptr() as u64) as usize;
        let tag = s as u8 + 1;
        assert!(data.v[at..at + SLOT_LEN as usize].iter().all(|&b| b == 0 || b == tag), "slot {s} got foreign data");
    }
    for e in &engines {
        assert_eq!(e.ring_state().status & regs::STATUS_HALTED, 0, "no ring halted");
    }
    drop(engines);
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    drop(edges);
    assert_eq!(frames::total_pins(), 0);
}
