//! uiommufd's fuzz targets, each a function of one byte string that
//! panics when an invariant breaks (libFuzzer reports the panic as a
//! crash). The byte string is read as a program of operations through
//! [`Input`], which answers zero once it runs out, so every prefix of an
//! input is an input too and the fuzzer's mutations stay meaningful.
//!
//! - [`ioctl_seq`]: iommufd ioctls through the dispatcher, structured
//!   (IOAS alloc/map/unmap/copy, mock devices and HWPTs, accesses, destroy)
//!   and raw, with the engine's invariants checked after every call and
//!   nothing left pinned or charged when the context closes;
//! - [`walker`]: every page-table format's map/unmap/translate against a
//!   reference map, and the x86 first-stage walker over guest tables built
//!   from the input;
//! - [`dma_engine`]: the DMA engine's BAR0 registers, config space and
//!   descriptor ring over a test memory;
//! - [`vfio_cdev`]: a VFIO device cdev (a DMA engine behind the mock IOMMU)
//!   with its ioctls and region reads and writes.
//!
//! `libfuzzer/` wraps each in a libFuzzer target; `tests/corpus.rs`
//! replays `corpus/<target>.hex` as an ordinary test.

pub mod dma_engine;
pub mod ioctl_seq;
mod mem;
pub mod vfio_cdev;
pub mod walker;

use std::sync::{Mutex, MutexGuard};

/// The targets by name (as in `corpus/<name>` and `libfuzzer/fuzz_targets`).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("ioctl_seq", ioctl_seq::run),
    ("walker", walker::run),
    ("dma_engine", dma_engine::run),
    ("vfio_cdev", vfio_cdev::run),
];

/// Targets that check process-wide counts (pins, charges) take this, so
/// that test threads running two of them at once do not see each other's
/// pins.
pub(crate) fn global() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fuzz input as a stream of little-endian integers; zeros after the
/// end.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A value below `n` from one byte (or two for `n` > 256); 0 for `n`
    /// = 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else if n <= 256 {
            u64::from(self.u8()) % n
        } else {
            u64::from(self.u16()) % n
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// xorshift64: the corpus test's generator of extra inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
