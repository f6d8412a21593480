//! The DMA engine's programming interface: BAR0 registers, the MSI-X BAR,
//! config space and the descriptor ring, driven by the input over a
//! [`TestMemory`] (ring memory, read-write, read-only and write-only data,
//! holes). The engine runs without a worker: the ring moves only in
//! `run_until_idle`, so a run is deterministic.
//!
//! After every run of the ring (`docs/devices/dma-engine.md`):
//! - the model never failed (no `INTERNAL` halt: it would mean a caught
//!   panic);
//! - an enabled ring that is not halted is idle (`HEAD == TAIL`);
//! - `ERRORS <= COMPLETED`, and `COMPLETED` only grows between ring
//!   resets;
//! - with Bus Master Enable clear, not one request reached the port.

use std::sync::Arc;

use uiommufd_abi::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX};
use uiommufd_devices::config::{cap_id, command, header, pcie};
use uiommufd_devices::dma_engine::regs::{self, halt, Descriptor};
use uiommufd_devices::dma_engine::{DmaEngine, DmaEngineOptions};
use uiommufd_devices::pci::PciDevice;
use uiommufd_devices::testing::{find_capability, CountingTrigger, Perm, TestMemory};

use crate::Input;

const MAX_STEPS: usize = 96;
const RING: u64 = 0x1_0000;
const RING_SLOTS: u64 = 32;
const DATA: u64 = 0x2_0000;
const DATA_LEN: usize = 0x1_0000;
const RO: u64 = 0x4_0000;
const WO: u64 = 0x5_0000;
const SMALL: usize = 0x1000;

fn addr(input: &mut Input<'_>) -> u64 {
    match input.below(8) {
        0 => input.u64(),
        1 => RO + input.below(SMALL as u64),
        2 => WO + input.below(SMALL as u64),
        3 => RING + input.below(RING_SLOTS * regs::DESC_SIZE),
        4 => DATA + DATA_LEN as u64 - input.below(64),
        _ => DATA + input.below(DATA_LEN as u64),
    }
}

fn descriptor(input: &mut Input<'_>) -> Descriptor {
    if input.below(8) == 0 {
        let mut raw = [0u8; 64];
        let b = input.bytes(64);
        raw[..b.len()].copy_from_slice(b);
        return Descriptor::from_bytes(&raw);
    }
    let opcode = input.below(5) as u8;
    let flags = if input.below(4) == 0 { input.u8() } else { 0 };
    let pasid = if input.below(4) == 0 { input.u32() & 0x1f_ffff } else { 0 };
    let (src, dst) = (addr(input), addr(input));
    let len = match input.below(8) {
        0 => input.u64(),
        1 => 0,
        2 => regs::MAX_XFER + input.below(2),
        3 => input.below(0x20000),
        _ => input.below(512),
    };
    let pattern = input.u64();
    Descriptor { opcode, flags, pasid, src, dst, len, pattern, result: 0, status: 0 }
}

fn config_write(dev: &DmaEngine, off: u64, v: u32, size: usize) {
    let _ = dev.region_write(VFIO_PCI_CONFIG_REGION_INDEX, off, &v.to_le_bytes()[..size]);
}

fn config_u16(dev: &DmaEngine, off: u64) -> u16 {
    let mut b = [0u8; 2];
    dev.config_read(off, &mut b).expect("config read");
    u16::from_le_bytes(b)
}

/// The target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let options = DmaEngineOptions {
        pasid_width: if input.below(4) == 0 { None } else { Some(1 + input.below(20) as u8) },
        privileged_mode: input.bool(),
        worker: false,
    };
    let dev = DmaEngine::with_options("fuzz", options).expect("a DMA engine");
    let mem = TestMemory::new();
    mem.map(RING, (RING_SLOTS * regs::DESC_SIZE) as usize, Perm::RW);
    mem.map(DATA, DATA_LEN, Perm::RW);
    mem.map(RO, SMALL, Perm::RO);
    mem.map(WO, SMALL, Perm::WO);
    dev.set_dma_port(mem.clone());
    let irq = CountingTrigger::new();
    let pcie_cap = u64::from(find_capability(&dev, cap_id::PCI_EXPRESS).expect("PCIe capability"));
    let mut last_completed = 0u64;
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        match input.below(12) {
            0 | 1 => {
                let slot = input.below(RING_SLOTS);
                mem.host_write(RING + slot * regs::DESC_SIZE, &descriptor(&mut input).to_bytes());
            }
            2..=4 => {
                let (off, value) = match input.below(8) {
                    0 => (regs::REG_CTRL, u64::from(input.below(16) as u32)),
                    1 => (regs::REG_RING_BASE, if input.bool() { RING } else { addr(&mut input) }),
                    2 => (regs::REG_RING_SIZE, if input.bool() { 1 << input.below(6) } else { input.u64() }),
                    3 => (input.below(0x1100), input.u64()),
                    _ => (regs::REG_TAIL, input.below(RING_SLOTS + 2)),
                };
                let size = if input.below(4) == 0 { input.pick(&[1usize, 2, 3, 8]) } else { 4 };
                let _ = dev.region_write(VFIO_PCI_BAR0_REGION_INDEX, off, &value.to_le_bytes()[..size]);
            }
            5 => {
                // Config space: Bus Master Enable, FLR, or anything.
                match input.below(4) {
                    0 => {
                        let v = config_u16(&dev, u64::from(header::COMMAND)) ^ command::BUS_MASTER;
                        config_write(&dev, u64::from(header::COMMAND), u32::from(v), 2);
                    }
                    1 if input.below(4) == 0 => {
                        config_write(&dev, pcie_cap + u64::from(pcie::DEVCTL), u32::from(pcie::DEVCTL_FLR), 2);
                        last_completed = 0;
                    }
                    _ => {
                        let off = input.below(0x1010);
                        let size = input.pick(&[1usize, 2, 4]);
                        // Not an FLR by accident: the counters' check
                        // needs to know about resets.
                        let v = input.u32();
                        let devctl = pcie_cap + u64::from(pcie::DEVCTL);
                        let flr = off < devctl + 2 && off + size as u64 > devctl;
                        config_write(&dev, off, if flr { 0 } else { v }, size);
                    }
                }
            }
            6 => {
                let off = input.below(0x48);
                let v = input.u64();
                let size = input.pick(&[1usize, 4, 8]);
                let _ = dev.region_write(regs::MSIX_BAR, off, &v.to_le_bytes()[..size]);
            }
            7 => {
                let t: Option<Arc<dyn uiommufd_devices::irq::IrqTrigger>> =
                    if input.bool() { Some(irq.clone()) } else { None };
                let _ = dev.set_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX, 0, vec![t]);
            }
            8 => {
                let mut b = [0u8; 8];
                let n = input.pick(&[1usize, 2, 4, 8]);
                let index = input.pick(&[VFIO_PCI_BAR0_REGION_INDEX, regs::MSIX_BAR, VFIO_PCI_CONFIG_REGION_INDEX, 9]);
                let _ = dev.region_read(index, input.below(0x1100), &mut b[..n]);
            }
            9 if input.below(8) == 0 => {
                dev.reset();
                last_completed = 0;
            }
            _ => {
                let bus_master = config_u16(&dev, u64::from(header::COMMAND)) & command::BUS_MASTER != 0;
                let ctrl = dev.read_reg32(regs::REG_CTRL).expect("CTRL");
                mem.take_log();
                let st = dev.run_until_idle();
                let log = mem.take_log();
                if st.halted() {
                    assert_ne!(st.halt_code(), halt::INTERNAL, "the model failed: {st:?}");
                }
                if st.enabled() && !st.halted() && ctrl & regs::CTRL_ENABLE != 0 {
                    assert_eq!(st.head, st.tail, "an enabled ring left work undone: {st:?}");
                }
                assert!(st.errors <= st.completed, "{st:?}");
                if ctrl & regs::CTRL_RESET != 0 {
                    last_completed = 0;
                }
                assert!(st.completed >= last_completed, "COMPLETED went back: {st:?}");
                last_completed = st.completed;
                if !bus_master {
                    assert!(log.is_empty(), "requests with Bus Master Enable clear: {log:?}");
                }
            }
        }
    }
}
