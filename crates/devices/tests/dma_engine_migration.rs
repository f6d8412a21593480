//! Live migration of the DMA engine (`DeviceMigration`): a stopped engine
//! issues nothing; its saved state (registers, ring position, the progress
//! of a descriptor stopped part way, a pending interrupt) loaded into
//! another engine over a copy of the memory goes on exactly where the first
//! one stopped; bad states are refused without changing anything.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use uiommufd_abi::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
use uiommufd_abi::Errno;
use uiommufd_devices::config::{cap_id, msix};
use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
use uiommufd_devices::dma_engine::{DmaEngine, DmaEngineOptions};
use uiommufd_devices::irq::IrqTrigger;
use uiommufd_devices::pci::{DeviceMigration, PciDevice};
use uiommufd_devices::testing::{find_capability, wait_until, CountingTrigger, DmaOp, Perm, TestMemory, TestRing};
use uiommufd_hw::dma::{DmaAttrs, DmaError, DmaPort};

const RING: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const LEN: usize = 0x4_0000; // four FILL chunks of 64 KiB
const WAIT: Duration = Duration::from_secs(10);
const PATTERN: u64 = 0x0123_4567_89ab_cdef;

/// A port in front of a `TestMemory` that, once armed, holds the N-th
/// write request (counting from arming) until released.
struct GatePort {
    mem: Arc<TestMemory>,
    writes: AtomicUsize,
    hold_at: AtomicUsize,
    held: AtomicBool,
    open: Mutex<bool>,
    cv: Condvar,
}

impl GatePort {
    fn new(mem: Arc<TestMemory>) -> Arc<GatePort> {
        Arc::new(GatePort {
            mem,
            writes: AtomicUsize::new(0),
            hold_at: AtomicUsize::new(usize::MAX),
            held: AtomicBool::new(false),
            open: Mutex::new(false),
            cv: Condvar::new(),
        })
    }
    fn arm(&self, nth: usize) {
        *self.open.lock().unwrap() = false;
        self.writes.store(0, Ordering::SeqCst);
        self.hold_at.store(nth, Ordering::SeqCst);
    }
    fn release(&self) {
        self.hold_at.store(usize::MAX, Ordering::SeqCst);
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl DmaPort for GatePort {
    fn dma_read(&self, iova: u64, buf: &mut [u8], attrs: DmaAttrs) -> Result<(), DmaError> {
        self.mem.dma_read(iova, buf, attrs)
    }
    fn dma_write(&self, iova: u64, data: &[u8], attrs: DmaAttrs) -> Result<(), DmaError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.hold_at.load(Ordering::SeqCst) {
            self.held.store(true, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
        }
        self.mem.dma_write(iova, data, attrs)
    }
    fn dma_copy(&self, dst: u64, src: u64, len: u64, attrs: DmaAttrs) -> Result<(), DmaError> {
        self.mem.dma_copy(dst, src, len, attrs)
    }
}

fn memory() -> Arc<TestMemory> {
    let mem = TestMemory::new();
    mem.map(DATA, LEN, Perm::RW);
    mem
}

/// What guest RAM migration does: the destination's memory holds what the
/// source's held.
fn copy_memory(from: &TestMemory, to: &TestMemory, ring: &TestRing) {
    let ring_len = ring.size as usize * regs::DESC_SIZE as usize;
    to.map(ring.base, ring_len, Perm::RW);
    to.host_write(ring.base, &from.host_read(ring.base, ring_len));
    to.host_write(DATA, &from.host_read(DATA, LEN));
}

fn filled(mem: &TestMemory, from: usize, to: usize) -> bool {
    let p = PATTERN.to_le_bytes();
    mem.host_read(DATA + from as u64, to - from).iter().enumerate().all(|(i, &b)| b == p[(from + i) % 8])
}

#[test]
fn a_descriptor_stopped_part_way_finishes_on_the_engine_that_loads_its_state() {
    let src = DmaEngine::new("mig-src").unwrap();
    let mem = memory();
    let gate = GatePort::new(mem.clone());
    src.set_dma_port(gate.clone());
    let mut ring = TestRing::setup(&src, &mem, RING, 8, 0);
    ring.submit(&src, &mem, &[Descriptor::nop()]);
    assert!(wait_until(WAIT, || src.ring_state().completed == 1));

    // A FILL of four chunks; hold the second chunk's write, stop meanwhile.
    gate.arm(2);
    let index = ring.submit(&src, &mem, &[Descriptor::fill(DATA, LEN as u64, PATTERN)])[0];
    assert!(wait_until(WAIT, || gate.held.load(Ordering::SeqCst)));
    std::thread::scope(|s| {
        let stopper = s.spawn(|| src.stop());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!stopper.is_finished(), "stop waits for the request in flight");
        gate.release();
        stopper.join().unwrap();
    });
    let before = src.ring_state();
    assert_eq!((before.head, before.tail, before.completed), (index, index + 1, 1));
    assert_eq!(ring.completion(&mem, index).status, status::NONE);
    assert!(filled(&mem, 0, 2 * 0x1_0000) && mem.host_read(DATA + 0x2_0000, 8) == vec![0; 8]);

    // Stopped: a doorbell issues nothing.
    mem.take_log();
    ring.submit(&src, &mem, &[Descriptor::fill(DATA, 8, 7)]);
    std::thread::sleep(Duration::from_millis(50));
    assert!(mem.log().is_empty(), "a stopped engine issues no request: {:?}", mem.log());

    let state = src.save();
    assert_eq!(state.len(), src.saved_size());

    // The destination: another engine, memory copied, state loaded.
    let dst = DmaEngine::new("mig-dst").unwrap();
    let mem2 = memory();
    copy_memory(&mem, &mem2, &ring);
    dst.set_dma_port(mem2.clone());
    dst.stop();
    dst.load(&state).unwrap();
    let loaded = dst.ring_state();
    assert_eq!((loaded.head, loaded.tail, loaded.completed, loaded.status), (before.head, index + 2, 1, before.status));
    dst.run();
    assert!(wait_until(WAIT, || dst.ring_state().completed == 3));
    let log = mem2.log();
    let first_data = log.iter().find(|r| r.op == DmaOp::Write && r.iova >= DATA).unwrap();
    assert_eq!(first_data.iova, DATA + 0x2_0000, "resumed at the third chunk, not from the start");
    assert_eq!(ring.completion(&mem2, index).status, status::SUCCESS);
    assert!(filled(&mem2, 8, LEN), "the whole FILL landed");
    assert_eq!(ring.completion(&mem2, index + 1).status, status::SUCCESS);

    // And the source, run again (a failed migration), goes on too.
    src.run();
    assert!(wait_until(WAIT, || src.ring_state().completed == 3));
    assert!(filled(&mem, 8, LEN));
}

#[test]
fn interrupts_wait_while_stopped_and_a_pending_one_migrates() {
    let (src, mem) = (DmaEngine::new("mig-irq").unwrap(), memory());
    src.set_dma_port(mem.clone());
    let trig = CountingTrigger::new();
    src.set_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX, 0, vec![Some(trig.clone() as Arc<dyn IrqTrigger>)]).unwrap();
    let ctl = u64::from(find_capability(&src, cap_id::MSIX).unwrap() + msix::CONTROL);
    let mut b = [0u8; 2];
    src.config_read(ctl, &mut b).unwrap();
    let unmasked = u16::from_le_bytes(b);
    src.config_write(ctl, &(unmasked | msix::CONTROL_FUNCTION_MASK).to_le_bytes()).unwrap();
    let mut ring = TestRing::setup(&src, &mem, RING, 8, 0);
    ring.submit(&src, &mem, &[Descriptor::nop().with_irq()]);
    assert!(wait_until(WAIT, || src.read_msix64(regs::MSIX_PBA).unwrap() == 1));
    assert_eq!(trig.count(), 0);

    src.stop();
    src.config_write(ctl, &unmasked.to_le_bytes()).unwrap();
    assert_eq!(trig.count(), 0, "no interrupt while stopped");
    let state = src.save();

    let dst = DmaEngine::new("mig-irq-dst").unwrap();
    let trig2 = CountingTrigger::new();
    dst.set_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX, 0, vec![Some(trig2.clone() as Arc<dyn IrqTrigger>)]).unwrap();
    dst.stop();
    dst.load(&state).unwrap();
    assert_eq!(dst.read_msix64(regs::MSIX_PBA).unwrap(), 1);
    dst.run();
    assert_eq!(trig2.count(), 1, "the pending message is delivered once running");
    assert_eq!(dst.read_msix64(regs::MSIX_PBA).unwrap(), 0);
    src.run();
    assert_eq!(trig.count(), 1);
}

#[test]
fn bad_states_are_refused_and_change_nothing() {
    let (src, mem) = (DmaEngine::new("mig-bad").unwrap(), memory());
    src.set_dma_port(mem.clone());
    let mut ring = TestRing::setup(&src, &mem, RING, 8, 0);
    ring.submit(&src, &mem, &[Descriptor::nop(), Descriptor::nop()]);
    assert!(wait_until(WAIT, || src.ring_state().completed == 2));
    src.stop();
    let good = src.save();

    let dst = DmaEngine::new("mig-bad-dst").unwrap();
    dst.stop();
    let fresh = dst.ring_state();
    let mut bad = Vec::new();
    bad.push(good[..good.len() - 1].to_vec()); // short
    bad.push([good.clone(), vec![0]].concat()); // long
    let mut v = good.clone();
    v[0] ^= 1; // magic
    bad.push(v);
    let mut v = good.clone();
    v[4] = 2; // version
    bad.push(v);
    let ring_at = 12 + regs::MEM_SIZE as usize + 4096;
    let mut v = good.clone();
    v[ring_at + 12..ring_at + 16].copy_from_slice(&3u32.to_le_bytes()); // size not a power of two
    bad.push(v);
    let mut v = good.clone();
    v[ring_at + 16..ring_at + 20].copy_from_slice(&8u32.to_le_bytes()); // HEAD == size
    bad.push(v);
    let mut v = good.clone();
    v[ring_at] = 2; // not a boolean
    bad.push(v);
    for (i, b) in bad.iter().enumerate() {
        assert_eq!(dst.load(b), Err(Errno::EINVAL), "bad state {i}");
        assert_eq!(dst.ring_state(), fresh, "bad state {i} changed the device");
    }
    // An engine with other options does not take it either.
    let other =
        DmaEngine::with_options("mig-other", DmaEngineOptions { pasid_width: Some(8), ..Default::default() }).unwrap();
    other.stop();
    assert_eq!(other.load(&good), Err(Errno::EINVAL));
    dst.load(&good).unwrap();
    assert_eq!(dst.ring_state().completed, 2);
}
