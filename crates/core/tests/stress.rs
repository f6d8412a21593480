//! Randomized concurrency stress: 8 threads map, unmap, copy, access and
//! attach/detach mock domains on two IOASes at once. After every round a
//! checker, with all threads parked, verifies the engine's core invariants:
//!
//! - every domain of an IOAS maps exactly the IOAS's areas: each mock page
//!   of an area translates to the frame of the area's pages at the right
//!   offset, and nothing outside the areas is mapped;
//! - every `Pages` pins exactly the pages its domain-filled areas cover
//!   (each page once, however many domains), and the frame table's total
//!   pin count is the sum of those;
//! - the mock domains saw no malformed map/unmap sequence.
//!
//! At the end everything is torn down and no pin, frame or charge remains.
//! Runs in its own process (an integration test) because it checks global
//! frame counts.

use std::sync::{Arc, Barrier, Mutex};

use uiommufd_abi::test_cmd::{MOCK_APERTURE_START, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES};
use uiommufd_core::invariants::{check_mappings, MappingsCheck};
use uiommufd_core::pages::page_size;
use uiommufd_core::selftest;
use uiommufd_core::Iommufd;
use uiommufd_hw::mock::MOCK_IO_PAGE_SIZE;
use uiommufd_memory::frames;

const THREADS: usize = 8;
const ROUNDS: usize = 40;
const OPS_PER_ROUND: usize = 25;
/// IOVA slots per IOAS; each slot holds at most one mapping.
const SLOTS: u64 = 32;
const SLOT_SIZE: u64 = 64 * 1024;
const BUF_PAGES: u64 = 64;
const RW: u32 = 1 | 2 | 4; // FIXED_IOVA | WRITEABLE | READABLE

/// xorshift64*: small, seedable, good enough to shuffle operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn slot_iova(slot: u64) -> u64 {
    MOCK_APERTURE_START + slot * SLOT_SIZE
}

struct World {
    ctx: Arc<Iommufd>,
    ioas: [u32; 2],
    buf: u64,
}

/// Successful operations by kind: map, unmap, copy, access pin, attach,
/// detach, access rw.
type Stats = [u64; 7];

fn one_op(
    w: &World,
    rng: &mut Rng,
    devices: &mut Vec<selftest::PendingMockDevice<'static>>,
    ctx_static: &'static Arc<Iommufd>,
    stats: &mut Stats,
) {
    let ps = page_size();
    let ioas = w.ioas[rng.below(2) as usize];
    let slot = rng.below(SLOTS);
    match rng.below(9) {
        0..=2 => {
            let first = rng.below(BUF_PAGES - 16);
            let pages = 1 + rng.below(16);
            if w.ctx.ioas_map(ioas, RW, w.buf + first * ps, pages * ps, slot_iova(slot)).is_ok() {
                stats[0] += 1;
            }
        }
        3 | 4 => {
            if w.ctx.ioas_unmap(ioas, slot_iova(slot), SLOT_SIZE).is_ok() {
                stats[1] += 1;
            }
        }
        5 => {
            let other = w.ioas[rng.below(2) as usize];
            let dst = rng.below(SLOTS);
            let len = (1 + rng.below(4)) * ps;
            if w.ctx.ioas_copy(other, ioas, RW, len, slot_iova(dst), slot_iova(slot)).is_ok() {
                stats[2] += 1;
            }
        }
        6 => {
            // An access pins, reads through the pinned frames, unpins.
            if let Ok(acc) = selftest::create_access(&w.ctx, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES) {
                if let Ok(id) = acc.access_pages(slot_iova(slot), ps, 0, 0) {
                    let mut b = vec![0u8; ps as usize];
                    // Readable through its frame, unless a concurrent unmap
                    // has already taken the pin back (then the item is gone).
                    if acc.access().rw(slot_iova(slot), &mut b, false, true).is_ok() {
                        stats[3] += 1;
                    }
                    let _ = acc.destroy_access_pages(id);
                }
                acc.release();
            }
        }
        7 => {
            if devices.len() < 2 {
                if let Ok(d) = selftest::mock_domain(ctx_static, ioas, 0) {
                    devices.push(d);
                    stats[4] += 1;
                }
            } else {
                let d = devices.swap_remove(rng.below(devices.len() as u64) as usize);
                drop(d); // unpublished: dropping detaches and unbinds
                stats[5] += 1;
            }
        }
        _ => {
            let mut b = vec![0u8; 64];
            let (write, slow) = (rng.below(2) == 0, rng.below(2) == 0);
            if w.ctx.ioas(ioas).is_ok_and(|i| i.iopt().access_rw(slot_iova(slot) + 8, &mut b, write, slow).is_ok()) {
                stats[6] += 1;
            }
        }
    }
}

/// Check the invariants; all other threads are parked. No access
/// outlives its operation, so pin counts are exact.
fn check(w: &World) {
    let how = MappingsCheck {
        window: slot_iova(0)..slot_iova(SLOTS),
        step: MOCK_IO_PAGE_SIZE,
        max_area_bytes: u64::MAX,
        accesses_may_pin: false,
    };
    if let Err(e) = check_mappings(&w.ctx, &w.ioas, &how) {
        panic!("{e}");
    }
}

#[test]
fn eight_threads_keep_the_invariants() {
    let ps = page_size();
    let ctx = Iommufd::new();
    let ctx_static: &'static Arc<Iommufd> = Box::leak(Box::new(Arc::clone(&ctx)));
    let ioas = [ctx.ioas_alloc().unwrap(), ctx.ioas_alloc().unwrap()];
    let mut mem = vec![0u8; ((BUF_PAGES + 1) * ps) as usize];
    let buf = (mem.as_mut_ptr() as u64).next_multiple_of(ps);
    let world = Arc::new(World { ctx: Arc::clone(&ctx), ioas, buf });
    let barrier = Arc::new(Barrier::new(THREADS));
    let seed = std::env::var("UIOMMUFD_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    let totals = Arc::new(Mutex::new([0u64; 7]));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (w, barrier, totals) = (Arc::clone(&world), Arc::clone(&barrier), Arc::clone(&totals));
            std::thread::spawn(move || {
                let mut rng = Rng(seed.wrapping_add((t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
                let mut devices = Vec::new();
                let mut stats = [0u64; 7];
                // A panic must not strand the others at the barrier: every
                // worker keeps meeting it, and the panic is re-raised at the
                // end (a hang would hide the failure).
                let mut failure = None;
                for _ in 0..ROUNDS {
                    if failure.is_none() {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            for _ in 0..OPS_PER_ROUND {
                                one_op(&w, &mut rng, &mut devices, ctx_static, &mut stats);
                            }
                        }));
                        failure = r.err();
                    }
                    // Park everyone; the leader checks.
                    if barrier.wait().is_leader() {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&w)));
                        if failure.is_none() {
                            failure = r.err();
                        }
                    }
                    barrier.wait();
                }
                let mut t = totals.lock().unwrap();
                for (a, b) in t.iter_mut().zip(stats) {
                    *a += b;
                }
                drop(t);
                drop(devices);
                if let Some(p) = failure {
                    std::panic::resume_unwind(p);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a worker panicked");
    }
    check(&world);
    let totals = *totals.lock().unwrap();
    eprintln!("successful ops [map, unmap, copy, access pin, attach, detach, access rw]: {totals:?}");
    // The run must have exercised every kind of operation for real.
    assert!(totals.iter().all(|&n| n >= 20), "too few successful operations: {totals:?}");
    // Tear everything down: nothing may stay pinned.
    for &i in &ioas {
        let _ = ctx.ioas_unmap(i, 0, u64::MAX);
    }
    assert_eq!(frames::total_pins(), 0);
    drop(world);
    drop(ctx);
    assert_eq!(frames::pinned_pages(), 0);
    drop(mem);
}
