//! The Rust twin of `examples/c/dma_copy.c`, through the library instead of
//! ioctls: build the emulated machine, bind the DMA engine to an iommufd
//! context, attach it to an IOAS, map a buffer, and let the device copy,
//! fill and compare through the IOMMU, waiting for its MSI-X interrupt.
//!
//! ```sh
//! cargo run --release -p uiommufd --example dma_copy            # VT-d
//! cargo run --release -p uiommufd --example dma_copy -- mock    # selftest mock IOMMU
//! ```

use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use uiommufd_abi::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX};
use uiommufd_core::device::{self, NO_PASID};
use uiommufd_core::dma::DevicePort;
use uiommufd_core::Iommufd;
use uiommufd_devices::dma_engine::regs::{self, status, Descriptor};
use uiommufd_devices::platform::Platform;
use uiommufd_devices::IrqTrigger;

const PS: usize = 4096;
const CHUNK: u64 = 64 * 1024;

/// An interrupt counter a thread can wait on (what an eventfd is to C).
#[derive(Default)]
struct Interrupts {
    count: Mutex<u64>,
    cv: Condvar,
}

impl IrqTrigger for Interrupts {
    fn fire(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }
}

impl Interrupts {
    fn wait_for(&self, n: u64) -> bool {
        let g = self.count.lock().unwrap();
        let (g, _) = self.cv.wait_timeout_while(g, Duration::from_secs(5), |c| *c < n).unwrap();
        *g >= n
    }
}

fn run(iommu: &str) -> Result<(), String> {
    let platform = Platform::new(iommu, "dma-engine")?;
    let dev = &platform.devices[0];
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().map_err(|e| e.to_string())?;

    let (devid, edge) = device::bind(&ctx, Arc::clone(&dev.iommu)).map_err(|e| e.to_string())?;
    let hwpt = edge.arc().change_pt(&ctx, NO_PASID, ioas, false).map_err(|e| e.to_string())?;
    dev.pci.set_dma_port(DevicePort::new(edge.arc()));

    // Our buffer: the ring in the first page, then source, destination and
    // a fill target of 64 KiB each.
    let len = PS + 3 * CHUNK as usize;
    let mut mem = vec![0u8; len + PS];
    let off = (mem.as_ptr() as usize).next_multiple_of(PS) - mem.as_ptr() as usize;
    let host = mem.as_ptr() as u64 + off as u64;
    // IOMMU_IOAS_MAP without FIXED_IOVA: the IOAS picks an address the
    // attached domain can translate (hence attach first).
    let iova = ctx.ioas_map(ioas, 2 | 4, host, len as u64, 0).map_err(|e| e.to_string())?;
    println!(
        "{} ({}): device {devid} attached to IOAS {ioas} through HWPT {hwpt}; buffer at IOVA {iova:#x}",
        dev.bdf,
        platform.iommu.name()
    );

    let irqs = Arc::new(Interrupts::default());
    dev.pci
        .set_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX, 0, vec![Some(Arc::clone(&irqs) as Arc<dyn IrqTrigger>)])
        .map_err(|e| format!("MSI-X: {e}"))?;
    let mut cmd = [0u8; 2];
    dev.pci.config_read(4, &mut cmd).map_err(|e| e.to_string())?;
    dev.pci.config_write(4, &(u16::from_le_bytes(cmd) | 0x6).to_le_bytes()).map_err(|e| e.to_string())?;
    let reg = |offset: u64, value: u64| {
        dev.pci.region_write(VFIO_PCI_BAR0_REGION_INDEX, offset, &value.to_le_bytes()).map_err(|e| e.to_string())
    };

    let buf = &mut mem[off..off + len];
    for (i, b) in buf[PS..PS + CHUNK as usize].iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let (src, dst, fill) = (iova + PS as u64, iova + PS as u64 + CHUNK, iova + PS as u64 + 2 * CHUNK);
    let descs = [
        Descriptor::copy(dst, src, CHUNK),
        Descriptor::fill(fill, CHUNK, 0xfeed_f00d_dead_beef),
        Descriptor::compare(src, dst, CHUNK).with_irq(),
    ];
    for (i, d) in descs.iter().enumerate() {
        buf[i * 64..(i + 1) * 64].copy_from_slice(&d.to_bytes());
    }
    reg(regs::REG_RING_BASE, iova)?;
    reg(regs::REG_RING_SIZE, 16)?;
    reg(regs::REG_CTRL, regs::CTRL_ENABLE as u64)?;
    // The doorbell: the device's worker runs the ring and interrupts.
    reg(regs::REG_TAIL, descs.len() as u64)?;
    if !irqs.wait_for(1) {
        return Err("no completion interrupt within 5 s".into());
    }

    let buf = &mem[off..off + len];
    let completion = |i: usize| {
        let mut b = [0u8; 64];
        b.copy_from_slice(&buf[i * 64..(i + 1) * 64]);
        Descriptor::from_bytes(&b)
    };
    for i in 0..descs.len() {
        let c = completion(i);
        if c.status != status::SUCCESS {
            return Err(format!("descriptor {i} completed with status {:#x} (result {:#x})", c.status, c.result));
        }
    }
    let (s, rest) = buf[PS..].split_at(CHUNK as usize);
    let (d, f) = rest.split_at(CHUNK as usize);
    if s != d {
        return Err("the copy did not land in our memory".into());
    }
    if !f.chunks(8).all(|w| w == 0xfeed_f00d_dead_beef_u64.to_le_bytes()) {
        return Err("the fill did not land in our memory".into());
    }
    println!("copied and filled {CHUNK} bytes each, compared equal; MSI-X fired");
    println!("OK: the device's DMA landed in this program's memory");

    dev.pci.clear_irq_triggers(VFIO_PCI_MSIX_IRQ_INDEX).map_err(|e| e.to_string())?;
    dev.pci.reset();
    dev.pci.set_dma_port(Arc::new(uiommufd_hw::dma::BlockedPort));
    edge.arc().detach(&ctx, NO_PASID);
    ctx.ioas_unmap(ioas, 0, u64::MAX).map_err(|e| e.to_string())?;
    Ok(())
}

fn main() -> ExitCode {
    let iommu = std::env::args().nth(1).unwrap_or_else(|| "vtd".into());
    match run(&iommu) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dma_copy: {e}");
            ExitCode::FAILURE
        }
    }
}
