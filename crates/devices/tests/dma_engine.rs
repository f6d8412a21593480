//! The DMA engine against a recording memory port: ring protocol, the three
//! operations, faults, the PCIe attributes (No Snoop, PASID, Bus Master),
//! interrupts, reset, the mmap doorbell, and many engines at once.

use std::sync::Arc;
use std::time::Duration;

use uiommufd_abi::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR1_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_PCI_ROM_REGION_INDEX,
};
use uiommufd_abi::Errno;
use uiommufd_devices::config::{cap_id, command, header, msix, pasid, pcie};
use uiommufd_devices::dma_engine::regs::{self, halt, status, Descriptor};
use uiommufd_devices::dma_engine::{DmaEngine, DmaEngineOptions};
use uiommufd_devices::irq::IrqTrigger;
use uiommufd_devices::mmio::SharedMapping;
use uiommufd_devices::pci::{reset_function, PciDevice, RegionFlags};
use uiommufd_devices::testing::{
    find_capability, find_ext_capability, set_command_bits, set_no_snoop, set_pasid_control, wait_until,
    CountingTrigger, DmaOp, Perm, TestMemory, TestRing,
};
use uiommufd_hw::dma::{DmaFaultReason, DmaPort};

const RING: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const DATA_LEN: usize = 0x4_0000;
const WAIT: Duration = Duration::from_secs(5);

/// An engine without a worker (the ring moves only in `run_until_idle`)
/// and its memory, with a data window mapped.
fn sync_engine() -> (DmaEngine, Arc<TestMemory>) {
    engine_with(DmaEngineOptions { worker: false, ..DmaEngineOptions::default() })
}

fn engine_with(options: DmaEngineOptions) -> (DmaEngine, Arc<TestMemory>) {
    let dev = DmaEngine::with_options("dma-test", options).unwrap();
    let mem = TestMemory::new();
    mem.map(DATA, DATA_LEN, Perm::RW);
    dev.set_dma_port(mem.clone());
    (dev, mem)
}

fn cfg_u16(dev: &dyn PciDevice, off: u16) -> u16 {
    let mut b = [0u8; 2];
    dev.config_read(u64::from(off), &mut b).unwrap();
    u16::from_le_bytes(b)
}

fn cfg_u32(dev: &dyn PciDevice, off: u16) -> u32 {
    let mut b = [0u8; 4];
    dev.config_read(u64::from(off), &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn cfg_w32(dev: &dyn PciDevice, off: u16, v: u32) {
    dev.config_write(u64::from(off), &v.to_le_bytes()).unwrap();
}

fn bar0_image(dev: &DmaEngine) -> Vec<u64> {
    (0..regs::BAR0_SIZE).step_by(8).map(|o| dev.read_reg64(o).unwrap()).collect()
}

fn config_image(dev: &dyn PciDevice) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    dev.config_read(0, &mut v).unwrap();
    v
}

/// Descriptor-fetch reads in the log, as ring slot indexes.
fn fetched_slots(mem: &TestMemory, ring: &TestRing) -> Vec<u32> {
    mem.log()
        .iter()
        .filter(|r| r.op == DmaOp::Read && r.len == regs::DESC_SIZE && r.iova >= ring.base)
        .filter(|r| r.iova < ring.base + u64::from(ring.size) * regs::DESC_SIZE)
        .map(|r| ((r.iova - ring.base) / regs::DESC_SIZE) as u32)
        .collect()
}

#[test]
fn ring_order_and_wraparound() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 4, 0);
    let fills: Vec<_> = (0..3).map(|i| Descriptor::fill(DATA + i * 8, 8, 0x1111 * (i + 1))).collect();
    let slots = ring.submit(&dev, &mem, &fills);
    assert_eq!(slots, vec![0, 1, 2]);
    let st = dev.run_until_idle();
    assert_eq!((st.head, st.tail, st.completed, st.errors), (3, 3, 3, 0));
    assert!(st.enabled() && !st.busy() && !st.halted());
    // Three more: slots 3, 0, 1 — the tail and the head wrap.
    let more: Vec<_> = (3..6).map(|i| Descriptor::fill(DATA + i * 8, 8, 0x1111 * (i + 1))).collect();
    assert_eq!(ring.submit(&dev, &mem, &more), vec![3, 0, 1]);
    assert_eq!(dev.read_reg32(regs::REG_TAIL).unwrap(), 2);
    let st = dev.run_until_idle();
    assert_eq!((st.head, st.completed), (2, 6));
    assert_eq!(fetched_slots(&mem, &ring), vec![0, 1, 2, 3, 0, 1]);
    for i in 0..6u64 {
        let v = u64::from_le_bytes(mem.host_read(DATA + i * 8, 8).try_into().unwrap());
        assert_eq!(v, 0x1111 * (i + 1), "fill {i}");
    }
    // The six completions were written in ring order, result then status.
    let log = mem.log();
    let status_writes: Vec<_> = log
        .iter()
        .filter(|r| r.op == DmaOp::Write && (r.iova - RING) % regs::DESC_SIZE == regs::DESC_STATUS)
        .map(|r| ((r.iova - RING) / regs::DESC_SIZE) as u32)
        .collect();
    assert_eq!(status_writes, vec![0, 1, 2, 3, 0, 1]);
    for w in log.windows(2) {
        if w[1].op == DmaOp::Write && (w[1].iova - RING) % regs::DESC_SIZE == regs::DESC_STATUS {
            assert_eq!(w[0].iova, w[1].iova - 8, "result written right before status");
        }
    }
    for slot in [2, 3, 0, 1] {
        assert_eq!(ring.completion(&mem, slot).status, status::SUCCESS);
    }
}

#[test]
fn copy_fill_compare_results_land_in_memory() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 16, 0);
    let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    mem.host_write(DATA, &src);
    let dst = DATA + 0x1000;
    let fill_at = DATA + 0x2000;
    let big_fill = DATA + 0x1_0000;
    let big_len = 150 * 1024;
    let slots = ring.submit(
        &dev,
        &mem,
        &[
            Descriptor::copy(dst, DATA, 300),
            Descriptor::fill(fill_at, 100, 0x0123_4567_89ab_cdef),
            Descriptor::compare(DATA, dst, 300),
            Descriptor::fill(big_fill, big_len, 0xa5a5_5a5a_0f0f_f0f0),
            Descriptor::nop(),
        ],
    );
    let st = dev.run_until_idle();
    assert_eq!((st.completed, st.errors), (5, 0));
    assert_eq!(mem.host_read(dst, 300), src);
    let pattern = 0x0123_4567_89ab_cdefu64.to_le_bytes();
    let filled = mem.host_read(fill_at, 104);
    for (i, b) in filled.iter().enumerate().take(100) {
        assert_eq!(*b, pattern[i % 8], "fill byte {i}");
    }
    assert_eq!(&filled[100..], &[0; 4], "fill stops at len");
    let big = mem.host_read(big_fill, big_len as usize);
    let p = 0xa5a5_5a5a_0f0f_f0f0u64.to_le_bytes();
    assert!(big.iter().enumerate().all(|(i, b)| *b == p[i % 8]));
    for s in &slots {
        let c = ring.completion(&mem, *s);
        assert_eq!((c.status, c.result), (status::SUCCESS, 0), "slot {s}");
    }
    let log = mem.log();
    // COPY is one dma_copy of the whole length, not reads and writes.
    let copies: Vec<_> = log.iter().filter(|r| matches!(r.op, DmaOp::Copy { .. })).collect();
    assert_eq!(copies.len(), 1);
    assert_eq!((copies[0].op, copies[0].iova, copies[0].len), (DmaOp::Copy { src: DATA }, dst, 300));
    // FILL writes in bounded chunks.
    let big_writes: Vec<_> =
        log.iter().filter(|r| r.op == DmaOp::Write && r.iova >= big_fill && r.iova < big_fill + big_len).collect();
    assert!(big_writes.len() >= 3 && big_writes.iter().all(|r| r.len <= 64 * 1024));
    assert_eq!(big_writes.iter().map(|r| r.len).sum::<u64>(), big_len);

    // COMPARE reports the first differing offset.
    mem.host_write(dst + 77, &[!src[77]]);
    mem.host_write(dst + 200, &[!src[200]]);
    let s = ring.submit(&dev, &mem, &[Descriptor::compare(DATA, dst, 300)])[0];
    let st = dev.run_until_idle();
    let c = ring.completion(&mem, s);
    assert_eq!((c.status, c.result), (status::MISMATCH, 77));
    assert_eq!(st.errors, 0, "a mismatch is not an error");
    // Zero-length operations succeed without touching data.
    mem.take_log();
    let s = ring.submit(&dev, &mem, &[Descriptor::copy(0xdead_0000, 0xbeef_0000, 0)])[0];
    dev.run_until_idle();
    assert_eq!(ring.completion(&mem, s).status, status::SUCCESS);
    assert!(mem.log().iter().all(|r| !matches!(r.op, DmaOp::Copy { .. })));
}

#[test]
fn faults_give_status_and_iova_and_the_ring_goes_on() {
    let (dev, mem) = sync_engine();
    let ro = DATA + DATA_LEN as u64 + 0x1000;
    mem.map(ro, 0x1000, Perm::RO);
    let rw_end = DATA + DATA_LEN as u64; // unmapped gap follows
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, 0);
    let s = ring.submit(
        &dev,
        &mem,
        &[
            Descriptor::copy(0x9000_0000, DATA, 64),                  // unmapped destination
            Descriptor::fill(ro + 16, 32, 1),                         // read-only destination
            Descriptor::fill(rw_end - 16, 32, 0x4242_4242_4242_4242), // runs off the end
            Descriptor::compare(DATA, 0x7000_0000, 8),                // second buffer unmapped
            Descriptor::nop(),
        ],
    );
    let st = dev.run_until_idle();
    assert_eq!((st.head, st.completed, st.errors), (5, 5, 4));
    assert!(!st.halted() && st.status & regs::STATUS_ERROR != 0);
    let c: Vec<_> = s.iter().map(|i| ring.completion(&mem, *i)).collect();
    assert_eq!((c[0].status, c[0].result), (status::WRITE_FAULT, 0x9000_0000));
    assert_eq!((c[1].status, c[1].result), (status::WRITE_FAULT, ro + 16));
    assert_eq!((c[2].status, c[2].result), (status::WRITE_FAULT, rw_end));
    assert_eq!((c[3].status, c[3].result), (status::READ_FAULT, 0x7000_0000));
    assert_eq!(c[4].status, status::SUCCESS);
    // The bytes before the fault were written, as a real device would.
    assert_eq!(mem.host_read(rw_end - 16, 16), vec![0x42; 16]);
    // The read-only page saw no change.
    assert_eq!(mem.host_read(ro, 0x1000), vec![0; 0x1000]);
    // The error registers hold the last error.
    assert_eq!((st.err_code, st.err_index, st.err_iova), (status::READ_FAULT, 3, 0x7000_0000));
    let reasons: Vec<_> = mem.log().iter().filter_map(|r| r.result.err()).map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        vec![
            DmaFaultReason::NotPresent,
            DmaFaultReason::Permission,
            DmaFaultReason::NotPresent,
            DmaFaultReason::NotPresent
        ]
    );
}

#[test]
fn halt_on_error_stops_after_the_failed_descriptor() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, regs::CTRL_HALT_ON_ERROR);
    let s = ring.submit(&dev, &mem, &[Descriptor::copy(0x9000_0000, DATA, 64), Descriptor::fill(DATA, 8, 7)]);
    let st = dev.run_until_idle();
    assert!(st.halted());
    assert_eq!(st.halt_code(), halt::DESC_ERROR);
    assert_eq!((st.head, st.completed, st.errors), (1, 1, 1));
    assert_eq!((st.err_code, st.err_index, st.err_iova), (status::WRITE_FAULT, 0, 0x9000_0000));
    assert_eq!(ring.completion(&mem, s[1]).status, status::NONE, "the next one did not run");
    // A doorbell does not restart a halted ring.
    ring.doorbell(&dev);
    assert!(dev.run_until_idle().halted());
    // Disable (the halt clears), then enable again: it resumes at HEAD.
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_HALT_ON_ERROR).unwrap();
    let st = dev.run_until_idle();
    assert!(!st.halted() && !st.enabled());
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_HALT_ON_ERROR | regs::CTRL_ENABLE).unwrap();
    let st = dev.run_until_idle();
    assert_eq!((st.head, st.completed), (2, 2));
    assert_eq!(ring.completion(&mem, s[1]).status, status::SUCCESS);
}

#[test]
fn fetch_and_completion_faults_halt() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 4, 0);
    ring.push(&mem, Descriptor::fill(DATA, 8, 0x77));
    // The ring page becomes write-only: the fetch fails.
    mem.set_perm(RING, Perm::WO);
    ring.doorbell(&dev);
    let st = dev.run_until_idle();
    assert!(st.halted());
    assert_eq!(st.halt_code(), halt::DESC_FETCH_FAULT);
    assert_eq!((st.err_code, st.err_iova, st.head, st.completed), (u32::from(halt::DESC_FETCH_FAULT), RING, 0, 0));
    assert_eq!(mem.host_read(DATA, 8), vec![0; 8], "nothing ran");
    // Read-only: fetched and executed, but the completion cannot be written.
    mem.set_perm(RING, Perm::RO);
    dev.write_reg32(regs::REG_CTRL, 0).unwrap();
    dev.run_until_idle();
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
    let st = dev.run_until_idle();
    assert_eq!(st.halt_code(), halt::COMPLETION_FAULT);
    assert_eq!((st.err_iova, st.head), (RING + regs::DESC_RESULT, 0));
    assert_eq!(mem.host_read(DATA, 1), vec![0x77]);
    // Writable again: the descriptor at HEAD runs again and completes.
    mem.set_perm(RING, Perm::RW);
    dev.write_reg32(regs::REG_CTRL, 0).unwrap();
    dev.run_until_idle();
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
    let st = dev.run_until_idle();
    assert_eq!((st.head, st.completed, st.halted()), (1, 1, false));
    assert_eq!(ring.completion(&mem, 0).status, status::SUCCESS);
}

#[test]
fn blocked_until_a_port_is_set() {
    let dev = DmaEngine::with_options("blocked", DmaEngineOptions { worker: false, ..Default::default() }).unwrap();
    let mem = TestMemory::new();
    mem.map(DATA, 4096, Perm::RW);
    let mut ring = TestRing::setup(&dev, &mem, RING, 4, 0);
    ring.submit(&dev, &mem, &[Descriptor::fill(DATA, 8, 1)]);
    let st = dev.run_until_idle();
    assert_eq!(st.halt_code(), halt::DESC_FETCH_FAULT);
    assert!(mem.log().is_empty());
    dev.set_dma_port(mem.clone());
    dev.write_reg32(regs::REG_CTRL, 0).unwrap();
    dev.run_until_idle();
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
    assert_eq!(dev.run_until_idle().completed, 1);
}

#[test]
fn no_snoop_follows_device_control() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, 0);
    // Power-on: Enable No Snoop is set, so every request carries it.
    ring.submit(&dev, &mem, &[Descriptor::copy(DATA + 0x100, DATA, 16), Descriptor::fill(DATA, 8, 1)]);
    dev.run_until_idle();
    let log = mem.take_log();
    assert!(!log.is_empty() && log.iter().all(|r| r.attrs.no_snoop), "{log:?}");
    set_no_snoop(&dev, false);
    ring.submit(&dev, &mem, &[Descriptor::copy(DATA + 0x100, DATA, 16), Descriptor::compare(DATA, DATA, 8)]);
    dev.run_until_idle();
    let log = mem.take_log();
    assert!(!log.is_empty() && log.iter().all(|r| !r.attrs.no_snoop), "{log:?}");
    set_no_snoop(&dev, true);
    ring.submit(&dev, &mem, &[Descriptor::fill(DATA, 8, 2)]);
    dev.run_until_idle();
    assert!(mem.take_log().iter().all(|r| r.attrs.no_snoop));
}

#[test]
fn pasid_needs_pasid_enable_and_is_carried_when_set() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 16, 0);
    let d = Descriptor::fill(DATA, 64, 0x5555).with_pasid(5);
    let s = ring.submit(&dev, &mem, &[d, d.privileged()]);
    let st = dev.run_until_idle();
    assert_eq!(ring.completion(&mem, s[0]).status, status::BAD_PASID);
    assert_eq!(ring.completion(&mem, s[1]).status, status::BAD_PASID);
    assert_eq!((st.errors, st.err_code), (2, status::BAD_PASID));
    let log = mem.take_log();
    assert!(log.iter().all(|r| r.attrs.pasid.is_none() && !r.attrs.privileged));
    assert!(log.iter().all(|r| r.iova < DATA || r.iova >= DATA + 64), "no data request was issued");
    assert_eq!(mem.host_read(DATA, 64), vec![0; 64]);

    // PASID Enable: the data requests carry the PASID; the ring's own
    // requests (fetch, completion) do not.
    set_pasid_control(&dev, pasid::CTRL_ENABLE);
    let s = ring.submit(
        &dev,
        &mem,
        &[
            d,
            Descriptor::copy(DATA + 0x100, DATA, 8).with_pasid(0xf_ffff),
            d.privileged(),                                   // no Privileged Mode Enable yet
            Descriptor::fill(DATA, 8, 1).with_pasid(1 << 20), // beyond 20 bits
            Descriptor::fill(DATA, 8, 1).privileged(),        // PRIV without PASID
        ],
    );
    dev.run_until_idle();
    let codes: Vec<_> = s.iter().map(|i| ring.completion(&mem, *i).status).collect();
    assert_eq!(codes, vec![status::SUCCESS, status::SUCCESS, status::BAD_PASID, status::BAD_PASID, status::BAD_PASID]);
    let log = mem.take_log();
    let data: Vec<_> = log.iter().filter(|r| r.iova >= DATA && r.iova < DATA + 0x1000).collect();
    assert_eq!(data.len(), 2);
    assert_eq!((data[0].op, data[0].attrs.pasid, data[0].attrs.privileged), (DmaOp::Write, Some(5), false));
    assert_eq!(data[1].attrs.pasid, Some(0xf_ffff));
    assert!(log.iter().filter(|r| r.iova >= RING && r.iova < RING + 0x1000).all(|r| r.attrs.pasid.is_none()));
    assert_eq!(mem.host_read(DATA, 8), 0x5555u64.to_le_bytes().to_vec());

    // Privileged Mode Enable: privileged requests with the PASID.
    set_pasid_control(&dev, pasid::CTRL_ENABLE | pasid::CTRL_PRIVILEGED);
    let s = ring.submit(&dev, &mem, &[d.privileged()]);
    dev.run_until_idle();
    assert_eq!(ring.completion(&mem, s[0]).status, status::SUCCESS);
    let log = mem.take_log();
    let w: Vec<_> = log.iter().filter(|r| r.iova == DATA).collect();
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].attrs.pasid, w[0].attrs.privileged), (Some(5), true));

    // PASID Enable cleared again: rejected again.
    set_pasid_control(&dev, 0);
    let s = ring.submit(&dev, &mem, &[d]);
    dev.run_until_idle();
    assert_eq!(ring.completion(&mem, s[0]).status, status::BAD_PASID);
}

#[test]
fn without_pasid_capability_pasid_descriptors_fail() {
    let (dev, mem) = engine_with(DmaEngineOptions { pasid_width: None, worker: false, ..Default::default() });
    assert_eq!(find_ext_capability(&dev, cap_id::EXT_PASID), None);
    assert_eq!(dev.pasid_width(), None);
    let mut ring = TestRing::setup(&dev, &mem, RING, 4, 0);
    let s = ring.submit(&dev, &mem, &[Descriptor::fill(DATA, 8, 1).with_pasid(0)]);
    dev.run_until_idle();
    assert_eq!(ring.completion(&mem, s[0]).status, status::BAD_PASID);
    // A narrower width bounds the PASID.
    let (dev, mem) = engine_with(DmaEngineOptions { pasid_width: Some(4), worker: false, ..Default::default() });
    set_pasid_control(&dev, pasid::CTRL_ENABLE);
    let mut ring = TestRing::setup(&dev, &mem, RING, 4, 0);
    let s = ring.submit(
        &dev,
        &mem,
        &[Descriptor::fill(DATA, 8, 1).with_pasid(15), Descriptor::fill(DATA, 8, 1).with_pasid(16)],
    );
    dev.run_until_idle();
    assert_eq!(ring.completion(&mem, s[0]).status, status::SUCCESS);
    assert_eq!(ring.completion(&mem, s[1]).status, status::BAD_PASID);
}

#[test]
fn bus_master_disabled_means_no_dma() {
    let (dev, mem) = sync_engine();
    let trig = CountingTrigger::new();
    dev.set_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX, 0, vec![Some(trig.clone() as Arc<dyn IrqTrigger>)]).unwrap();
    let mut ring = TestRing::setup(&dev, &mem, RING, 4, regs::CTRL_HALT_IRQ);
    set_command_bits(&dev, command::BUS_MASTER, false);
    ring.submit(&dev, &mem, &[Descriptor::fill(DATA, 8, 9).with_irq()]);
    let st = dev.run_until_idle();
    assert!(st.halted());
    assert_eq!(st.halt_code(), halt::BUS_MASTER);
    assert_eq!(st.err_code, u32::from(halt::BUS_MASTER));
    assert!(mem.log().is_empty(), "a request reached the port: {:?}", mem.log());
    assert_eq!(trig.count(), 0, "MSI-X is a memory write: no Bus Master, no interrupt");
    // Bus Master on, ring re-enabled: it runs.
    set_command_bits(&dev, command::BUS_MASTER, true);
    dev.write_reg32(regs::REG_CTRL, 0).unwrap();
    dev.run_until_idle();
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
    let st = dev.run_until_idle();
    assert_eq!((st.completed, st.halted()), (1, false));
    assert_eq!(mem.host_read(DATA, 1), vec![9]);
    assert_eq!(trig.count(), 1);
}

#[test]
fn interrupts_fire_once_per_flagged_completion() {
    let (dev, mem) = sync_engine();
    assert_eq!(dev.irq_count(VFIO_PCI_MSIX_IRQ_INDEX), 1);
    assert_eq!(dev.irq_count(VFIO_PCI_INTX_IRQ_INDEX), 0);
    assert_eq!(dev.irq_count(VFIO_PCI_MSI_IRQ_INDEX), 0);
    let trig = CountingTrigger::new();
    let t = || vec![Some(trig.clone() as Arc<dyn IrqTrigger>)];
    assert_eq!(dev.set_irq_triggers(VFIO_PCI_INTX_IRQ_INDEX, 0, t()), Err(Errno::EINVAL));
    assert_eq!(dev.set_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX, 1, t()), Err(Errno::EINVAL));
    let mcap = find_capability(&dev, cap_id::MSIX).unwrap();
    assert_eq!(cfg_u16(&dev, mcap + msix::CONTROL) & msix::CONTROL_ENABLE, 0);
    dev.set_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX, 0, t()).unwrap();
    assert_ne!(cfg_u16(&dev, mcap + msix::CONTROL) & msix::CONTROL_ENABLE, 0, "MSI-X enabled with a trigger");

    let mut ring = TestRing::setup(&dev, &mem, RING, 8, 0);
    ring.submit(
        &dev,
        &mem,
        &[
            Descriptor::nop().with_irq(),
            Descriptor::nop(),
            Descriptor::copy(0x9000_0000, DATA, 8).with_irq(), // fails, still interrupts
            Descriptor::fill(DATA, 8, 1),
            Descriptor::fill(DATA, 8, 1).with_irq(),
        ],
    );
    dev.run_until_idle();
    assert_eq!(trig.count(), 3);
    dev.run_until_idle();
    assert_eq!(trig.count(), 3, "no interrupt without a completion");

    // Function Mask: held pending (PBA bit 0), delivered on unmask.
    let ctl = mcap + msix::CONTROL;
    let v = cfg_u16(&dev, ctl);
    dev.config_write(u64::from(ctl), &(v | msix::CONTROL_FUNCTION_MASK).to_le_bytes()).unwrap();
    ring.submit(&dev, &mem, &[Descriptor::nop().with_irq(), Descriptor::nop().with_irq()]);
    dev.run_until_idle();
    assert_eq!(trig.count(), 3);
    assert_eq!(dev.read_msix64(regs::MSIX_PBA).unwrap(), 1);
    dev.config_write(u64::from(ctl), &v.to_le_bytes()).unwrap();
    assert_eq!(trig.count(), 4, "one pending message, delivered once");
    assert_eq!(dev.read_msix64(regs::MSIX_PBA).unwrap(), 0);

    // Halt interrupt.
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE | regs::CTRL_HALT_IRQ).unwrap();
    dev.write_reg32(regs::REG_TAIL, 99).unwrap();
    assert_eq!(dev.run_until_idle().halt_code(), halt::BAD_TAIL);
    assert_eq!(trig.count(), 5);

    // VFIO loopback trigger, then clearing: MSI-X off, nothing fires.
    dev.trigger_irq(VFIO_PCI_MSIX_IRQ_INDEX, 0, 1).unwrap();
    assert_eq!(trig.count(), 6);
    assert_eq!(dev.trigger_irq(VFIO_PCI_MSIX_IRQ_INDEX, 0, 2), Err(Errno::EINVAL));
    dev.clear_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX).unwrap();
    assert_eq!(cfg_u16(&dev, ctl) & msix::CONTROL_ENABLE, 0);
    dev.trigger_irq(VFIO_PCI_MSIX_IRQ_INDEX, 0, 1).unwrap();
    assert_eq!(trig.count(), 6);
}

#[test]
fn reset_restores_power_on_state() {
    let (dev, mem) = sync_engine();
    let fresh = DmaEngine::with_options("fresh", DmaEngineOptions { worker: false, ..Default::default() }).unwrap();
    assert_eq!(bar0_image(&dev), bar0_image(&fresh));
    assert_eq!(config_image(&dev), config_image(&fresh));
    // Dirty everything.
    cfg_w32(&dev, header::BAR0, 0xfebf_0000);
    set_no_snoop(&dev, false);
    set_pasid_control(&dev, pasid::CTRL_ENABLE);
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, regs::CTRL_HALT_IRQ);
    ring.submit(&dev, &mem, &[Descriptor::fill(DATA, 8, 1), Descriptor::copy(0x9000_0000, DATA, 8)]);
    dev.run_until_idle();
    dev.region_write(regs::MSIX_BAR, regs::MSIX_TABLE, &0xfee0_0000u64.to_le_bytes()).unwrap();
    assert_ne!(bar0_image(&dev), bar0_image(&fresh));
    assert_ne!(config_image(&dev), config_image(&fresh));
    dev.reset();
    assert_eq!(bar0_image(&dev), bar0_image(&fresh));
    assert_eq!(config_image(&dev), config_image(&fresh));
    let st = dev.ring_state();
    assert_eq!((st.status, st.head, st.tail, st.completed, st.errors), (0, 0, 0, 0, 0));
    assert_eq!(dev.read_reg32(regs::REG_ID).unwrap(), regs::ID_VALUE);
    assert_eq!(dev.read_msix64(regs::MSIX_TABLE + 8).unwrap() >> 32, 1, "vector masked at reset");
    // Bus Master is off after reset: the old ring does not run.
    dev.write_reg64(regs::REG_RING_BASE, RING).unwrap();
    dev.write_reg32(regs::REG_RING_SIZE, 8).unwrap();
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
    dev.write_reg32(regs::REG_TAIL, 1).unwrap();
    mem.take_log();
    assert_eq!(dev.run_until_idle().halt_code(), halt::BUS_MASTER);
    assert!(mem.log().is_empty());

    // Initiate FLR through Device Control does the same.
    let p = find_capability(&dev, cap_id::PCI_EXPRESS).unwrap();
    set_command_bits(&dev, command::BUS_MASTER, true);
    let devctl = cfg_u16(&dev, p + pcie::DEVCTL);
    dev.config_write(u64::from(p + pcie::DEVCTL), &(devctl | pcie::DEVCTL_FLR).to_le_bytes()).unwrap();
    assert_eq!(bar0_image(&dev), bar0_image(&fresh));
    assert_eq!(config_image(&dev), config_image(&fresh));
}

#[test]
fn reset_function_keeps_config_and_resets_the_ring() {
    let (dev, mem) = sync_engine();
    cfg_w32(&dev, header::BAR0, 0xfebf_0000);
    set_pasid_control(&dev, pasid::CTRL_ENABLE);
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, 0);
    ring.submit(&dev, &mem, &[Descriptor::nop()]);
    dev.run_until_idle();
    let before = config_image(&dev);
    reset_function(&dev).unwrap();
    assert_eq!(config_image(&dev), before, "VFIO_DEVICE_RESET restores config space");
    let st = dev.ring_state();
    assert_eq!((st.status, st.head, st.completed), (0, 0, 0));
}

#[test]
fn config_space_registers() {
    let (dev, _mem) = sync_engine();
    assert_eq!(cfg_u32(&dev, 0), 0x5544_1234);
    assert_eq!(cfg_u32(&dev, 8) >> 8, 0x08_80_00);
    assert_eq!(cfg_u16(&dev, header::STATUS) & 0x10, 0x10, "capability list");
    // RO identity and class.
    cfg_w32(&dev, 0, u32::MAX);
    cfg_w32(&dev, 8, 0);
    assert_eq!(cfg_u32(&dev, 0), 0x5544_1234);
    assert_eq!(cfg_u32(&dev, 8), 0x0880_0001);
    // BAR0: 64-bit, 4 KiB; BAR2: 32-bit, 64 bytes; sizing by all-ones.
    cfg_w32(&dev, 0x10, u32::MAX);
    cfg_w32(&dev, 0x14, u32::MAX);
    assert_eq!(cfg_u32(&dev, 0x10), 0xffff_f004);
    assert_eq!(cfg_u32(&dev, 0x14), u32::MAX);
    cfg_w32(&dev, 0x18, u32::MAX);
    assert_eq!(cfg_u32(&dev, 0x18), 0xffff_ffc0, "BAR2: 64 bytes, 32-bit memory");
    for off in [0x1c, 0x20, 0x24, 0x30] {
        cfg_w32(&dev, off, u32::MAX);
        assert_eq!(cfg_u32(&dev, off), 0);
    }
    // PCIe capability: RCiEP, FLR, No Snoop enabled by default.
    let p = find_capability(&dev, cap_id::PCI_EXPRESS).unwrap();
    assert_eq!(cfg_u16(&dev, p + pcie::CAPS), 0x0092);
    assert_ne!(cfg_u32(&dev, p + pcie::DEVCAP) & pcie::DEVCAP_FLR, 0);
    assert_ne!(cfg_u16(&dev, p + pcie::DEVCTL) & pcie::DEVCTL_NO_SNOOP, 0);
    // MSI-X: one vector, table at BAR2 + 0, PBA at BAR2 + 0x20 (a BAR of
    // its own: no register shares its 4 KiB, PCIe r5.0 §6.8.2).
    assert_eq!(p, 0x40);
    let m = find_capability(&dev, cap_id::MSIX).unwrap();
    assert_eq!(m, 0x7c);
    assert_eq!(cfg_u16(&dev, m + msix::CONTROL) & msix::CONTROL_TABLE_SIZE, 0);
    assert_eq!(cfg_u32(&dev, m + msix::TABLE), 0x2);
    assert_eq!(cfg_u32(&dev, m + msix::PBA), 0x22);
    // PASID: at 0x100 or above, width 20, privileged mode, no execute.
    let x = find_ext_capability(&dev, cap_id::EXT_PASID).unwrap();
    assert!(x >= 0x100);
    assert_eq!(cfg_u16(&dev, x + pasid::CAP), (20 << 8) | pasid::CAP_PRIVILEGED);
    set_pasid_control(&dev, 0x7);
    assert_eq!(cfg_u16(&dev, x + pasid::CTRL), pasid::CTRL_ENABLE | pasid::CTRL_PRIVILEGED);
    assert_eq!(dev.pasid_width(), Some(20));
    // The config region is the same space.
    let mut b = [0u8; 4];
    dev.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x5544_1234);
    assert_eq!(dev.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 4095, &mut b), Err(Errno::EINVAL));
}

#[test]
fn regions_and_bar_access_rules() {
    let (dev, _mem) = sync_engine();
    let r0 = dev.region_info(VFIO_PCI_BAR0_REGION_INDEX).unwrap();
    assert_eq!(r0.size, 4096);
    assert!(r0.flags.contains(RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MMAP));
    let r2 = dev.region_info(regs::MSIX_BAR).unwrap();
    assert_eq!((r2.size, r2.flags), (64, RegionFlags::READ | RegionFlags::WRITE), "MSI-X: small, not mappable");
    assert!(dev.region_mmap_fd(regs::MSIX_BAR).is_none());
    assert_eq!(dev.region_read(regs::MSIX_BAR, 64, &mut [0u8; 4]), Err(Errno::EINVAL));
    assert_eq!(dev.region_read(regs::MSIX_BAR, 60, &mut [0u8; 8]), Err(Errno::EINVAL));
    assert_eq!(dev.region_info(VFIO_PCI_BAR1_REGION_INDEX).unwrap().size, 0);
    assert_eq!(dev.region_info(VFIO_PCI_ROM_REGION_INDEX).unwrap().flags, RegionFlags::NONE);
    assert_eq!(dev.region_info(VFIO_PCI_CONFIG_REGION_INDEX).unwrap().size, 4096);
    assert_eq!(dev.region_info(VFIO_PCI_NUM_REGIONS), Err(Errno::EINVAL));
    assert!(dev.region_mmap_fd(VFIO_PCI_CONFIG_REGION_INDEX).is_none());

    assert_eq!(dev.read_reg32(regs::REG_ID).unwrap().to_le_bytes(), *b"UDMA");
    assert_eq!(regs::ID_VALUE, 0x414d_4455);
    assert_eq!(dev.read_reg32(regs::REG_VERSION).unwrap(), regs::VERSION_VALUE);
    assert_eq!(dev.read_reg64(regs::REG_CAP).unwrap(), regs::CAP_VALUE);
    let mut b3 = [0u8; 3];
    assert_eq!(dev.region_read(0, 0, &mut b3), Err(Errno::EINVAL));
    assert_eq!(dev.region_read(0, 2, &mut [0u8; 4]), Err(Errno::EINVAL));
    assert_eq!(dev.region_read(0, 4096, &mut [0u8; 1]), Err(Errno::EINVAL));
    assert_eq!(dev.region_write(0, 4092, &[0u8; 8]), Err(Errno::EINVAL));
    assert_eq!(dev.region_read(VFIO_PCI_BAR1_REGION_INDEX, 0, &mut [0u8; 4]), Err(Errno::EINVAL));
    assert_eq!(dev.region_read(42, 0, &mut [0u8; 4]), Err(Errno::EINVAL));
    // RO registers ignore writes; RW ones take every access width.
    dev.write_reg32(regs::REG_HEAD, 5).unwrap();
    dev.write_reg64(regs::REG_COMPLETED, 5).unwrap();
    dev.write_reg32(regs::REG_ID, 0).unwrap();
    assert_eq!(dev.read_reg32(regs::REG_HEAD).unwrap(), 0);
    assert_eq!(dev.read_reg64(regs::REG_COMPLETED).unwrap(), 0);
    assert_eq!(dev.read_reg32(regs::REG_ID).unwrap(), regs::ID_VALUE);
    dev.region_write(0, regs::REG_RING_BASE + 2, &0xbeefu16.to_le_bytes()).unwrap();
    dev.region_write(0, regs::REG_RING_BASE + 7, &[0x12]).unwrap();
    dev.write_reg32(regs::REG_RING_BASE + 4, 0x0034_5678 | dev.read_reg32(regs::REG_RING_BASE + 4).unwrap()).unwrap();
    assert_eq!(dev.read_reg64(regs::REG_RING_BASE).unwrap(), 0x1234_5678_beef_0000);
    dev.write_reg32(regs::REG_CTRL, !regs::CTRL_ENABLE & !regs::CTRL_RESET).unwrap();
    assert_eq!(dev.read_reg32(regs::REG_CTRL).unwrap(), regs::CTRL_HALT_ON_ERROR | regs::CTRL_HALT_IRQ);
    // A whole-register write (the doorbell's) and narrower ones agree.
    dev.write_reg32(regs::REG_TAIL, 0x1234_5678).unwrap();
    dev.region_write(0, regs::REG_TAIL + 2, &[0xab]).unwrap();
    dev.region_write(0, regs::REG_TAIL + 4, &[0xff; 4]).unwrap();
    assert_eq!(dev.read_reg64(regs::REG_TAIL).unwrap(), 0x12ab_5678);
    dev.write_reg64(regs::REG_TAIL, u64::MAX).unwrap();
    assert_eq!(dev.read_reg64(regs::REG_TAIL).unwrap(), 0xffff_ffff);
    assert_eq!(dev.write_reg32(regs::REG_TAIL + 2, 0), Err(Errno::EINVAL));
}

#[test]
fn ring_configuration_errors() {
    let (dev, mem) = sync_engine();
    set_command_bits(&dev, command::BUS_MASTER, true);
    for (base, size) in [(RING, 3u32), (RING, 1), (RING, 1 << 16), (RING + 8, 4), (u64::MAX - 63, 4)] {
        dev.write_reg64(regs::REG_RING_BASE, base).unwrap();
        dev.write_reg32(regs::REG_RING_SIZE, size).unwrap();
        dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
        let st = dev.run_until_idle();
        assert!(st.halted() && st.enabled(), "base {base:#x} size {size}");
        assert_eq!(st.halt_code(), halt::BAD_RING);
        dev.write_reg32(regs::REG_CTRL, 0).unwrap();
        assert_eq!(dev.run_until_idle().status, 0);
    }
    let mut ring = TestRing::setup(&dev, &mem, RING, 4, 0);
    ring.submit(&dev, &mem, &[Descriptor::nop()]);
    dev.write_reg32(regs::REG_TAIL, 4).unwrap();
    assert_eq!(dev.run_until_idle().halt_code(), halt::BAD_TAIL);
    assert!(mem.log().is_empty());
}

#[test]
fn descriptor_validation() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, 0);
    let bad_op = Descriptor { opcode: 9, ..Descriptor::nop() };
    let bad_flags = Descriptor { flags: 0x80, ..Descriptor::fill(DATA, 8, 0) };
    let s = ring.submit(
        &dev,
        &mem,
        &[
            bad_op,
            bad_flags,
            Descriptor::fill(DATA, regs::MAX_XFER + 1, 0),
            Descriptor::fill(u64::MAX - 3, 8, 0),
            Descriptor::copy(DATA, u64::MAX, 2),
            Descriptor::fill(u64::MAX - 7, 8, 0), // ends exactly at 2^64: valid, but unmapped
        ],
    );
    let st = dev.run_until_idle();
    let codes: Vec<_> = s.iter().map(|i| ring.completion(&mem, *i).status).collect();
    assert_eq!(
        codes,
        vec![
            status::BAD_OPCODE,
            status::BAD_FLAGS,
            status::BAD_LENGTH,
            status::BAD_LENGTH,
            status::BAD_LENGTH,
            status::WRITE_FAULT
        ]
    );
    assert_eq!(st.errors, 6);
    assert_eq!(st.err_iova, u64::MAX - 7);
    let data_requests = mem.log().iter().filter(|r| r.iova < RING || r.iova >= RING + 0x1000).count();
    assert_eq!(data_requests, 1, "only the last one reached the port");
}

/// COPY's checks, in the datasheet's order, whether a descriptor takes
/// the engine's one-request path for a plain COPY or the general one: each
/// bad field gives its status with no data request, and the good ones
/// (with `IRQ`, reaching exactly 2^64) issue their one copy.
#[test]
fn copy_checks_in_order() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 16, 0);
    let copy = |len| Descriptor::copy(DATA + 0x1000, DATA, len);
    mem.host_write(DATA, &[0x5a; 64]);
    let s = ring.submit(
        &dev,
        &mem,
        &[
            Descriptor { opcode: 4, ..copy(8) },
            Descriptor { flags: 0x08, ..copy(8) },
            copy(8).privileged(),
            copy(regs::MAX_XFER + 1),
            Descriptor::copy(u64::MAX, DATA, 2),
            Descriptor::copy(DATA, u64::MAX - 6, 8),
            copy(0),
            copy(64).with_irq(),
            Descriptor::copy(u64::MAX - 7, DATA, 8), // ends exactly at 2^64: valid, but unmapped
        ],
    );
    let st = dev.run_until_idle();
    let codes: Vec<_> = s.iter().map(|i| ring.completion(&mem, *i).status).collect();
    assert_eq!(
        codes,
        vec![
            status::BAD_OPCODE,
            status::BAD_FLAGS,
            status::BAD_PASID,
            status::BAD_LENGTH,
            status::BAD_LENGTH,
            status::BAD_LENGTH,
            status::SUCCESS,
            status::SUCCESS,
            status::WRITE_FAULT
        ]
    );
    assert_eq!((st.completed, st.errors, st.err_iova), (9, 7, u64::MAX - 7));
    assert_eq!(mem.host_read(DATA + 0x1000, 64), vec![0x5a; 64]);
    let data_requests = mem.log().iter().filter(|r| r.iova < RING || r.iova >= RING + 0x1000).count();
    assert_eq!(data_requests, 2, "only the last two reached the port");
}

#[test]
fn ring_reset_bit() {
    let (dev, mem) = sync_engine();
    let mut ring = TestRing::setup(&dev, &mem, RING, 4, 0);
    ring.submit(&dev, &mem, &[Descriptor::nop(), Descriptor::copy(0x9000_0000, DATA, 8)]);
    let st = dev.run_until_idle();
    assert_eq!((st.head, st.completed, st.errors), (2, 2, 1));
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE | regs::CTRL_RESET).unwrap();
    let st = dev.run_until_idle();
    assert_eq!((st.status, st.head, st.tail, st.completed, st.errors, st.err_code, st.err_iova), (0, 0, 0, 0, 0, 0, 0));
    assert_eq!(dev.read_reg32(regs::REG_CTRL).unwrap(), 0, "RESET self-clears and disables");
    assert_eq!(dev.read_reg64(regs::REG_RING_BASE).unwrap(), RING, "base kept");
    // A fresh start at slot 0.
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
    mem.host_write(RING, &Descriptor::nop().to_bytes());
    dev.write_reg32(regs::REG_TAIL, 1).unwrap();
    let st = dev.run_until_idle();
    assert_eq!((st.head, st.completed), (1, 1));
}

/// A port whose writes to one IOVA panic: a bug in the IOMMU model behind
/// the device, as the engine would meet it.
struct PanickingPort(Arc<TestMemory>, u64);

impl DmaPort for PanickingPort {
    fn dma_read(
        &self,
        iova: u64,
        buf: &mut [u8],
        attrs: uiommufd_hw::dma::DmaAttrs,
    ) -> Result<(), uiommufd_hw::dma::DmaError> {
        self.0.dma_read(iova, buf, attrs)
    }
    fn dma_write(
        &self,
        iova: u64,
        data: &[u8],
        attrs: uiommufd_hw::dma::DmaAttrs,
    ) -> Result<(), uiommufd_hw::dma::DmaError> {
        assert!(iova != self.1, "injected: a bug in the port");
        self.0.dma_write(iova, data, attrs)
    }
}

/// A panic in the device model while the worker runs the ring is caught:
/// the ring halts with INTERNAL (26h) for the driver to see, and a ring
/// reset brings the device back (the worker is still there). Without the
/// catch the worker thread dies and nothing completes again.
#[test]
fn a_panic_in_the_worker_halts_the_ring() {
    let (dev, mem) = engine_with(DmaEngineOptions::default());
    let bomb = DATA + 0x1000;
    dev.set_dma_port(Arc::new(PanickingPort(mem.clone(), bomb)));
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, 0);
    ring.submit(&dev, &mem, &[Descriptor::fill(DATA, 8, 1), Descriptor::fill(bomb, 8, 2)]);
    assert!(wait_until(WAIT, || dev.ring_state().halted()), "{:?}", dev.ring_state());
    let st = dev.ring_state();
    assert_eq!((st.halt_code(), st.err_code, st.head, st.completed), (halt::INTERNAL, 0x26, 1, 1), "{st:?}");
    assert!(dev.worker_running());
    // Reset the ring, then it runs again on the same worker.
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE | regs::CTRL_RESET).unwrap();
    assert!(wait_until(WAIT, || dev.read_reg32(regs::REG_CTRL).unwrap() == 0));
    dev.write_reg32(regs::REG_CTRL, regs::CTRL_ENABLE).unwrap();
    mem.host_write(RING, &Descriptor::fill(DATA + 8, 8, 3).to_bytes());
    dev.write_reg32(regs::REG_TAIL, 1).unwrap();
    assert!(wait_until(WAIT, || dev.ring_state().head == 1), "{:?}", dev.ring_state());
    assert_eq!(u64::from_le_bytes(mem.host_read(DATA + 8, 8).try_into().unwrap()), 3);
}

#[test]
fn pwrite_doorbell_wakes_the_worker() {
    let (dev, mem) = engine_with(DmaEngineOptions::default());
    assert!(!dev.worker_running(), "started lazily");
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, 0);
    assert!(dev.worker_running());
    for round in 0..20u64 {
        ring.submit(&dev, &mem, &[Descriptor::fill(DATA + round * 8, 8, round)]);
        let tail = ring.tail();
        assert!(wait_until(WAIT, || dev.ring_state().head == tail), "round {round}: {:?}", dev.ring_state());
    }
    assert_eq!(dev.ring_state().completed, 20);
    // Reset stops the worker (no mmap: it restarts on the next write).
    dev.reset();
    assert!(!dev.worker_running());
}

/// A doorbell reaches a worker that is spinning, going to sleep or asleep
/// (the doorbell only wakes it when it sleeps: a lost wake-up leaves the
/// descriptor pending for ever, since without an mmap it sleeps without a
/// timeout).
#[test]
fn doorbells_reach_the_worker_whenever_it_goes_to_sleep() {
    let (dev, mem) = engine_with(DmaEngineOptions::default());
    let mut ring = TestRing::setup(&dev, &mem, RING, 8, 0);
    for round in 0..300u64 {
        ring.submit(&dev, &mem, &[Descriptor::fill(DATA + (round % 64) * 8, 8, round)]);
        let tail = ring.tail();
        assert!(wait_until(WAIT, || dev.ring_state().head == tail), "round {round}: {:?}", dev.ring_state());
        // Ring again at varying points of the worker's way to sleep.
        match round % 3 {
            0 => {}
            1 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(round % 50)),
        }
    }
    assert_eq!(dev.ring_state().completed, 300);
}

/// Threads named `dma-engine:<name>` (comm is cut at 15 bytes).
fn worker_threads(name: &str) -> usize {
    let want = format!("dma-engine:{name}");
    let want = &want[..want.len().min(15)];
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == want)
        .count()
}

/// Whether descriptor `fd` is still the BAR memfd of engine `name`.
fn is_bar_memfd(fd: i32, name: &str) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|p| p.to_string_lossy().contains(&format!("uiommufd:{name}:bar0")))
}

#[test]
fn drop_joins_the_worker() {
    use std::os::fd::AsRawFd;
    let dev = DmaEngine::new("zq1").unwrap();
    let fd = dev.region_mmap_fd(VFIO_PCI_BAR0_REGION_INDEX).unwrap().0.as_raw_fd();
    assert!(dev.worker_running());
    // A thread names itself once it runs: wait for that.
    assert!(wait_until(WAIT, || worker_threads("zq1") == 1));
    dev.reset();
    assert!(dev.worker_running(), "mmap exposed: restarted after reset");
    assert!(wait_until(WAIT, || worker_threads("zq1") == 1));
    assert!(is_bar_memfd(fd, "zq1"));
    drop(dev);
    // The worker shares the device's state; it is gone (memfd closed) the
    // moment drop returns only if the worker was joined.
    assert!(!is_bar_memfd(fd, "zq1"), "the worker still holds the device");
    // The kernel may list an exiting task for a moment after the join.
    assert!(wait_until(WAIT, || worker_threads("zq1") == 0), "no worker outlives the device");
}

#[test]
fn mmap_doorbell_is_polled() {
    let (dev, mem) = engine_with(DmaEngineOptions::default());
    let (fd, len) = dev.region_mmap_fd(VFIO_PCI_BAR0_REGION_INDEX).unwrap();
    let bar = SharedMapping::map(fd, len as usize).unwrap();
    assert_eq!(bar.load_u32(regs::REG_ID as usize), regs::ID_VALUE);
    set_command_bits(&dev, command::BUS_MASTER, true);
    mem.map(RING, 16 * 64, Perm::RW);
    // The program programs the ring with plain stores: no region_write.
    bar.store_u64(regs::REG_RING_BASE as usize, RING);
    bar.store_u32(regs::REG_RING_SIZE as usize, 16);
    bar.store_u32(regs::REG_CTRL as usize, regs::CTRL_ENABLE);
    assert!(wait_until(WAIT, || bar.load_u32(regs::REG_STATUS as usize) & regs::STATUS_ENABLED != 0));
    let mut tail = 0u32;
    for round in 0..3u64 {
        for i in 0..5u64 {
            let d = Descriptor::fill(DATA + (round * 5 + i) * 8, 8, round * 5 + i + 1);
            mem.host_write(RING + u64::from(tail) * 64, &d.to_bytes());
            tail = (tail + 1) % 16;
        }
        if round == 2 {
            // Let the worker back off to its longest sleep first.
            std::thread::sleep(Duration::from_millis(30));
        }
        bar.store_u32(regs::REG_TAIL as usize, tail);
        let t0 = std::time::Instant::now();
        assert!(
            wait_until(WAIT, || bar.load_u32(regs::REG_HEAD as usize) == tail),
            "round {round}: head {} tail {tail}",
            bar.load_u32(regs::REG_HEAD as usize)
        );
        assert!(t0.elapsed() < Duration::from_secs(1), "took {:?}", t0.elapsed());
    }
    assert_eq!(bar.load_u64(regs::REG_COMPLETED as usize), 15);
    for i in 0..15u64 {
        assert_eq!(mem.host_read(DATA + i * 8, 8), (i + 1).to_le_bytes().to_vec());
    }
    // The device's view and the program's are the same memory.
    assert_eq!(dev.ring_state().head, tail);
}

#[test]
fn run_until_idle_and_the_worker_never_double_consume() {
    let (dev, mem) = engine_with(DmaEngineOptions::default());
    let dev = Arc::new(dev);
    let mut ring = TestRing::setup(&dev, &mem, RING, 64, 0);
    let n = 400u64;
    let src: Vec<u8> = (0..n * 8).map(|i| (i * 13) as u8).collect();
    mem.host_write(DATA, &src);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let helper = {
        let (dev, stop) = (dev.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                dev.run_until_idle();
            }
        })
    };
    for i in 0..n {
        while (ring.tail() + 1) % ring.size == dev.ring_state().head {
            std::thread::yield_now();
        }
        ring.push(&mem, Descriptor::copy(DATA + 0x1000 + i * 8, DATA + i * 8, 8));
        ring.doorbell(&dev);
    }
    let tail = ring.tail();
    assert!(wait_until(WAIT, || dev.ring_state().head == tail));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    helper.join().unwrap();
    let st = dev.ring_state();
    assert_eq!((st.completed, st.errors), (n, 0));
    let copies = mem.log().iter().filter(|r| matches!(r.op, DmaOp::Copy { .. })).count() as u64;
    assert_eq!(copies, n, "each descriptor consumed exactly once");
    assert_eq!(mem.host_read(DATA + 0x1000, src.len()), src);
}

#[test]
fn many_engines_share_one_port() {
    const ENGINES: u64 = 4;
    const PER_ENGINE: u64 = 150;
    let mem = TestMemory::new();
    let region = 0x10_0000u64;
    for e in 0..ENGINES {
        let src = DATA + e * region;
        mem.map(src, 2 * PER_ENGINE as usize * 64, Perm::RW);
        let bytes: Vec<u8> = (0..PER_ENGINE * 64).map(|i| (i as u8) ^ (e as u8 * 31)).collect();
        mem.host_write(src, &bytes);
    }
    let threads: Vec<_> = (0..ENGINES)
        .map(|e| {
            let mem = mem.clone();
            std::thread::spawn(move || {
                let dev = Arc::new(DmaEngine::new(&format!("multi{e}")).unwrap());
                dev.set_dma_port(mem.clone() as Arc<dyn DmaPort>);
                let trig = CountingTrigger::new();
                dev.set_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX, 0, vec![Some(trig.clone() as Arc<dyn IrqTrigger>)])
                    .unwrap();
                let mut ring = TestRing::setup(&dev, &mem, RING + e * 0x1_0000, 8, 0);
                // A reader hammering the registers meanwhile.
                let reader = {
                    let dev = dev.clone();
                    std::thread::spawn(move || {
                        for _ in 0..2000 {
                            let st = dev.ring_state();
                            assert!(st.head < 8 && st.errors == 0);
                        }
                    })
                };
                let src = DATA + e * region;
                let dst = src + PER_ENGINE * 64;
                for i in 0..PER_ENGINE {
                    assert!(wait_until(WAIT, || (ring.tail() + 1) % ring.size != dev.ring_state().head));
                    ring.push(&mem, Descriptor::copy(dst + i * 64, src + i * 64, 64).with_irq());
                    ring.doorbell(&dev);
                }
                let tail = ring.tail();
                assert!(wait_until(WAIT, || dev.ring_state().head == tail));
                reader.join().unwrap();
                let st = dev.ring_state();
                assert_eq!((st.completed, st.errors), (PER_ENGINE, 0));
                assert_eq!(trig.count(), PER_ENGINE);
                assert_eq!(
                    mem.host_read(dst, (PER_ENGINE * 64) as usize),
                    mem.host_read(src, (PER_ENGINE * 64) as usize)
                );
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let copies = mem.log().iter().filter(|r| matches!(r.op, DmaOp::Copy { .. })).count() as u64;
    assert_eq!(copies, ENGINES * PER_ENGINE);
}
