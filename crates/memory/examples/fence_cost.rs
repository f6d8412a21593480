//! What DMA-fence grace periods cost while a DMA thread runs: one thread
//! loops over 4 KiB copies, each in a read-side section (as a device port's
//! requests), while the main thread calls `dma_fence::synchronize` (as every
//! unpin does) back to back or with a gap between calls. Prints the mean
//! time per `synchronize` and the DMA thread's time per request.
//!
//! ```sh
//! cargo run --release -p uiommufd-memory --example fence_cost [MS_PER_CASE]
//! ```
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uiommufd_memory::dma_fence;

/// Start a DMA thread; it counts its requests until told to stop.
fn dma_thread(stop: Arc<AtomicBool>, requests: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let src = vec![1u8; 4096];
        let mut dst = vec![0u8; 4096];
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..256 {
                let section = dma_fence::enter();
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
                drop(section);
            }
            n += 256;
            requests.store(n, Ordering::Relaxed);
        }
    })
}

/// One case: `gap` between grace periods (`None`: no grace periods).
fn case(gap: Option<Duration>, run: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let t = dma_thread(Arc::clone(&stop), Arc::clone(&requests));
    // Past the thread's promotion to light sections.
    while requests.load(Ordering::Relaxed) < 4096 {
        std::thread::yield_now();
    }
    let (start, before) = (Instant::now(), requests.load(Ordering::Relaxed));
    let (mut syncs, mut in_sync) = (0u64, Duration::ZERO);
    let mut times = Vec::new();
    while start.elapsed() < run {
        match gap {
            None => std::thread::sleep(Duration::from_millis(1)),
            Some(gap) => {
                let t0 = Instant::now();
                dma_fence::synchronize();
                let took = t0.elapsed();
                in_sync += took;
                syncs += 1;
                times.push(took);
                let t1 = Instant::now();
                while t1.elapsed() < gap {
                    std::hint::spin_loop();
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let done = requests.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let what = match gap {
        None => "no grace periods".to_string(),
        Some(g) if g.is_zero() => "grace periods back to back".to_string(),
        Some(g) => format!("a grace period every {} µs", g.as_micros()),
    };
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    let per_sync = if syncs == 0 {
        String::from("-")
    } else {
        format!(
            "mean {:.2} µs, median {:.2}, 90% {:.2}, 99% {:.2}",
            in_sync.as_secs_f64() * 1e6 / syncs as f64,
            at(0.5),
            at(0.9),
            at(0.99)
        )
    };
    println!(
        "{what:<30} DMA thread {:.1} ns per 4 KiB request; synchronize: {per_sync} ({syncs} calls)",
        elapsed.as_secs_f64() * 1e9 / done.max(1) as f64
    );
}

fn main() {
    let ms = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let run = Duration::from_millis(ms);
    // This thread has a slot too, as an unmapping thread that did DMA.
    drop(dma_fence::enter());
    case(None, run);
    for gap in [0, 10, 100, 1000] {
        case(Some(Duration::from_micros(gap)), run);
    }
}
