//! Many concurrent DMA streams from several devices while the program maps
//! and unmaps under them.
//!
//! Each IOVA slot, when mapped, maps its own buffer; a device writing into a
//! slot writes that slot's tag. Whatever the interleaving, a request either
//! lands in the buffer mapped at its IOVA or faults (not present): at the
//! end every buffer holds only its own tag or its initial zeroes, no DMA
//! error other than a translation fault occurred, and nothing stays pinned.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use uiommufd_abi::test_cmd::MOCK_APERTURE_START;
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::Iommufd;
use uiommufd_hw::device::IommuDevice;
use uiommufd_hw::dma::{DmaAttrs, DmaFaultReason, DmaPort};
use uiommufd_hw::mock::MockDevice;
use uiommufd_memory::frames;

const SLOTS: u64 = 16;
const SLOT_PAGES: u64 = 4;
const DEVICES: usize = 3;
const MAPPERS: usize = 2;
const MAPPER_ROUNDS: usize = 20_000;

/// Enough device traffic during the maps for the test to mean something.
fn enough(landed: u64, faulted: u64) -> bool {
    landed > 1000 && faulted > 100
}

fn ps() -> u64 {
    uiommufd_memory::page_size() as u64
}

fn slot_iova(s: u64) -> u64 {
    MOCK_APERTURE_START + s * SLOT_PAGES * ps() * 2
}

use uiommufd_memory::rng::XorShift64 as Rng;

#[test]
fn concurrent_dma_while_mapping_and_unmapping() {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let slot_len = (SLOT_PAGES * ps()) as usize;
    let mut mem = vec![0u8; SLOTS as usize * slot_len + ps() as usize];
    let base = (mem.as_mut_ptr() as u64).next_multiple_of(ps());
    let buf = |s: u64| base + s * slot_len as u64;

    let mut ports = Vec::new();
    let mut edges = Vec::new();
    for _ in 0..DEVICES {
        let mock: Arc<dyn IommuDevice> = Arc::new(MockDevice::new(0).unwrap());
        let (_, edge) = device::bind(&ctx, mock).unwrap();
        edge.arc().change_pt(&ctx, NO_PASID, ioas, false).unwrap();
        ports.push(DevicePort::new(edge.arc()));
        edges.push(edge);
    }
    let stop = AtomicBool::new(false);
    let (landed, faulted, maps) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for (i, port) in ports.iter().enumerate() {
            let (stop, landed, faulted, maps) = (&stop, &landed, &faulted, &maps);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + i as u64);
                let mut tmp = vec![0u8; slot_len];
                // Traffic counts from the first map on: before it every
                // request faults, and on a loaded machine these threads
                // could spend their whole share of the processor there.
                while maps.load(Ordering::Relaxed) == 0 && !stop.load(Ordering::Relaxed) {
                    std::thread::yield_now();
                }
                while !stop.load(Ordering::Relaxed) {
                    let slot = rng.next() % SLOTS;
                    let off = rng.next() % (slot_len as u64 - 64);
                    let n = 1 + (rng.next() % (slot_len as u64 - off)) as usize;
                    let tag = [slot as u8 + 1; 1];
                    let data = vec![tag[0]; n];
                    let r = match rng.next() % 3 {
                        0 => port.dma_write(slot_iova(slot) + off, &data, DmaAttrs::default()),
                        1 => port.dma_read(slot_iova(slot) + off, &mut tmp[..n], DmaAttrs::default()).map(|_| {
                            assert!(
                                tmp[..n].iter().all(|&b| b == 0 || b == tag[0]),
                                "read another slot's data through slot {slot}"
                            );
                        }),
                        _ => port.dma_copy(
                            slot_iova(slot),
                            slot_iova(slot) + off,
                            n.min(slot_len / 2) as u64,
                            DmaAttrs::default(),
                        ),
                    };
                    match r {
                        Ok(()) => landed.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            assert_eq!(e.reason, DmaFaultReason::NotPresent, "{e}");
                            faulted.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
        let mut mappers = Vec::new();
        for m in 0..MAPPERS {
            let (ctx, maps, landed, faulted) = (&ctx, &maps, &landed, &faulted);
            mappers.push(s.spawn(move || {
                let mut rng = Rng(0x1234_5678 + m as u64);
                // At least MAPPER_ROUNDS, and on until the devices' traffic
                // has met the check below (bounded): on a loaded machine
                // the scheduler may run the mappers' rounds while the
                // device threads wait for a processor, and then no request
                // would have raced a map at all.
                let start = std::time::Instant::now();
                for round in 0.. {
                    if round >= MAPPER_ROUNDS
                        && (enough(landed.load(Ordering::Relaxed), faulted.load(Ordering::Relaxed))
                            || start.elapsed() > std::time::Duration::from_secs(30))
                    {
                        break;
                    }
                    // Each mapper owns half the slots, so a slot maps only its buffer.
                    let slot = (rng.next() % (SLOTS / 2)) * 2 + m as u64;
                    if ctx.ioas_map(ioas, 1 | 2 | 4, buf(slot), slot_len as u64, slot_iova(slot)).is_ok() {
                        maps.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ctx.ioas_unmap(ioas, slot_iova(slot), slot_len as u64).unwrap();
                    }
                }
            }));
        }
        for h in mappers {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (landed, faulted, maps) = (landed.into_inner(), faulted.into_inner(), maps.into_inner());
    eprintln!("{landed} requests landed, {faulted} faulted, {maps} maps");
    assert!(enough(landed, faulted) && maps > 500, "too little traffic: {landed} {faulted} {maps}");
    for s in 0..SLOTS {
        let b = &mem[(buf(s) - mem.as_ptr() as u64) as usize..][..slot_len];
        assert!(b.iter().all(|&x| x == 0 || x == s as u8 + 1), "slot {s}'s buffer got another slot's data");
    }
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    drop(edges);
    assert_eq!(frames::total_pins(), 0);
}
