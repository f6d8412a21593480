//! Shared by the nested-translation tests: guest RAM that the "guest"
//! writes directly, and the DMA engine's descriptor ring in it.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use uiommufd_devices::dma_engine::regs::{self, Descriptor};
use uiommufd_devices::DmaEngine;

pub const PS: u64 = 4096;

/// Page-aligned memory of the test, mapped at guest physical address
/// `base` (an IOVA of the nest parent).
pub struct GuestRam {
    mem: Vec<u8>,
    off: usize,
    base: u64,
}

impl GuestRam {
    /// `pages` zeroed guest pages from guest physical address `base`.
    pub fn new(base: u64, pages: u64) -> GuestRam {
        let mem = vec![0u8; ((pages + 1) * PS) as usize];
        let off = (mem.as_ptr() as u64).next_multiple_of(PS) as usize - mem.as_ptr() as usize;
        GuestRam { mem, off, base }
    }

    /// The host virtual address of guest page 0 (what the VMM maps).
    pub fn host(&self) -> u64 {
        self.mem.as_ptr() as u64 + self.off as u64
    }

    /// Guest page number `page`.
    pub fn page(&mut self, page: u64) -> &mut [u8] {
        let at = self.off + (page * PS) as usize;
        &mut self.mem[at..at + PS as usize]
    }

    /// Store `v` little-endian at guest physical address `gpa`.
    pub fn set_u64(&mut self, gpa: u64, v: u64) {
        let at = self.off + (gpa - self.base) as usize;
        self.mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Write `d` into slot `slot` of the descriptor ring in guest page
    /// `ring_page`, ring the engine's doorbell, wait until it is idle, and
    /// return the descriptor as the engine left it.
    pub fn run(&mut self, engine: &DmaEngine, ring_page: u64, slot: u32, d: Descriptor) -> Descriptor {
        let off = slot as usize * 64;
        self.page(ring_page)[off..off + 64].copy_from_slice(&d.to_bytes());
        engine.write_reg32(regs::REG_TAIL, slot + 1).unwrap();
        engine.run_until_idle();
        let mut b = [0u8; 64];
        b.copy_from_slice(&self.page(ring_page)[off..off + 64]);
        Descriptor::from_bytes(&b)
    }
}
