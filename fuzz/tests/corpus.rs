//! The fuzz targets on stable, without the fuzzer: every input of the
//! committed corpus (`fuzz/corpus/<target>.hex`, one input per line in
//! hex: the fuzzer's findings minimised to what adds coverage, and every
//! crash it found), then a few hundred pseudo-random inputs per target. A
//! crash the fuzzer finds goes into the corpus, so it is a regression test
//! here from then on (`scripts/fuzz.sh`).
//!
//! `UIOMMUFD_FUZZ_EXTRA=N` changes the number of random inputs per target.

use std::path::Path;

use uiommufd_fuzz::{Rng, TARGETS};

fn target(name: &str) -> fn(&[u8]) {
    TARGETS.iter().find(|t| t.0 == name).expect("a target").1
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex line");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn replay(name: &str, default_extra: u64) {
    let run = target(name);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let inputs: Vec<Vec<u8>> = text.lines().map(|l| unhex(l.trim())).collect();
    assert!(inputs.len() > 10, "{}: too small a corpus", path.display());
    for (i, data) in inputs.iter().enumerate() {
        let r = std::panic::catch_unwind(|| run(data));
        assert!(r.is_ok(), "{name}: corpus input {} (line {}) fails", hex(data), i + 1);
    }
    let extra = std::env::var("UIOMMUFD_FUZZ_EXTRA").ok().and_then(|v| v.parse().ok()).unwrap_or(default_extra);
    let mut rng = Rng(0x00c0_ffee ^ name.len() as u64);
    for i in 0..extra {
        let len = (rng.next() % 600) as usize;
        let data = rng.bytes(len);
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{name}: random input {i} fails: {}", hex(&data));
    }
    eprintln!("{name}: {} corpus inputs and {extra} random ones", inputs.len());
}

#[test]
fn ioctl_seq_corpus() {
    use std::sync::atomic::Ordering::Relaxed;
    use uiommufd_fuzz::ioctl_seq::{PAGES_CHECKED, PIN_COUNTS_CHECKED};
    replay("ioctl_seq", 200);
    // The corpus reaches attached domains with areas in them.
    let (pages, pins) = (PAGES_CHECKED.load(Relaxed), PIN_COUNTS_CHECKED.load(Relaxed));
    eprintln!("ioctl_seq: {pages} domain pages and {pins} pin counts checked");
    assert!(
        pages > 1000 && pins > 100,
        "the corpus no longer reaches attached areas: {pages} pages, {pins} pin counts"
    );
}

#[test]
fn walker_corpus() {
    replay("walker", 500);
}

#[test]
fn dma_engine_corpus() {
    replay("dma_engine", 500);
}

#[test]
fn vfio_cdev_corpus() {
    replay("vfio_cdev", 100);
}
