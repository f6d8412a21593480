//! `VFIO_DEVICE_FEATURE_DMA_BUF` (Linux 7.3, `vfio_pci_dmabuf.c`): a slice
//! of a BAR exported as a dma-buf, which `IOMMU_IOAS_MAP_FILE` imports so
//! that another device's DMA reaches the BAR (peer to peer).
//!
//! Model. The exported memory is the BAR's own memory: the memfd an
//! emulated function keeps its mmap-able BAR in (`PciDevice::region_mmap_fd`),
//! so a peer's DMA lands where the program's mapping of the BAR and the
//! device itself see it. A dma-buf is revoked while the function's Memory
//! Space Enable is off (as `vfio_pci_dma_buf_move` does on COMMAND writes)
//! and for good when the device file closes (`vfio_pci_dma_buf_cleanup`).
//!
//! Checks in the kernel's order: the feature supports only GET
//! (`vfio_check_feature`: `EINVAL`, PROBE succeeds); `argsz` must cover
//! `struct vfio_device_feature_dma_buf` (`EINVAL`); no ranges or non-zero
//! flags `EINVAL`; a region that is not an implemented BAR `ENODEV`; each
//! range non-empty and page aligned, their total not wrapping (`EINVAL`);
//! a range past the end of the BAR `EINVAL` (`EOVERFLOW` if it wraps).
//! iommufd imports single-range dma-bufs only (`EOPNOTSUPP` at
//! `IOMMU_IOAS_MAP_FILE`).
//!
//! Divergence: only a BAR with memory behind it (the DMA engine's BAR 0)
//! can be exported; another implemented BAR is `EINVAL` (the kernel's
//! p2pdma provider would accept it).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Weak};

use uiommufd_abi::vfio as v;
use uiommufd_core::dmabuf::{DmaBuf, Exporter};
use uiommufd_core::error::{einval, ErrnoExt, Error, Result};
use uiommufd_core::Errno;
use uiommufd_memory::user;
use zerocopy::{FromZeros, IntoBytes};

use crate::file::{FdHost, File};
use crate::vfio_device::VfioDevice;

/// The dma-bufs a device exported (`vdev->dmabufs`).
#[derive(Default)]
pub(crate) struct Exports {
    list: Mutex<Vec<Weak<DmaBuf>>>,
}

impl Exports {
    fn live(&self) -> Vec<Arc<DmaBuf>> {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() != 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    /// `vfio_pci_dma_buf_move`: revoke (or make available again) every
    /// export whose state differs.
    pub(crate) fn set_revoked(&self, revoked: bool) {
        for buf in self.live() {
            if buf.revoked() != revoked {
                buf.set_revoked(revoked);
            }
        }
    }
}

/// `vfio_pci_core_feature_dma_buf` for feature `feature` with `flags`, the
/// data at `data` of `argsz` bytes: `None` if it is another feature.
pub(crate) fn feature(
    dev: &Arc<VfioDevice>,
    host: &dyn FdHost,
    feature: u32,
    flags: u32,
    data: u64,
    argsz: usize,
) -> Option<Result<i32>> {
    (feature == v::VFIO_DEVICE_FEATURE_DMA_BUF).then(|| export(dev, host, flags, data, argsz))
}

fn export(dev: &Arc<VfioDevice>, host: &dyn FdHost, flags: u32, data: u64, argsz: usize) -> Result<i32> {
    let get_set = v::VFIO_DEVICE_FEATURE_GET | v::VFIO_DEVICE_FEATURE_SET;
    if flags & get_set & !v::VFIO_DEVICE_FEATURE_GET != 0 {
        return Err(einval("the feature supports GET only"));
    }
    if flags & v::VFIO_DEVICE_FEATURE_PROBE != 0 {
        return Ok(0);
    }
    if flags & get_set == 0 {
        return Err(einval("neither GET nor SET"));
    }
    let hdr = core::mem::size_of::<v::VfioDeviceFeatureDmaBuf>();
    if argsz < hdr {
        return Err(einval("argsz does not cover the feature's data"));
    }
    let mut req = v::VfioDeviceFeatureDmaBuf::new_zeroed();
    user::copy_from_user(req.as_mut_bytes(), data).ctx("reading the request")?;
    if req.nr_ranges == 0 || req.flags != 0 {
        return Err(einval("no ranges, or flags"));
    }
    let index = req.region_index;
    let bar = dev.pci().region_info(index).map(|r| r.size).unwrap_or(0);
    if index >= v::VFIO_PCI_ROM_REGION_INDEX || bar == 0 {
        return Err(Error::new(Errno::ENODEV, "not an implemented BAR"));
    }
    let ranges = read_ranges(data.wrapping_add(hdr as u64), req.nr_ranges)?;
    // validate_dmabuf_input.
    let page = uiommufd_memory::page_size() as u64;
    let mut length = 0u64;
    for r in &ranges {
        if r.length == 0 || !r.offset.is_multiple_of(page) || !r.length.is_multiple_of(page) {
            return Err(einval("a range is empty or not page aligned"));
        }
        length = length.checked_add(r.length).ok_or(einval("the ranges' total wraps"))?;
    }
    // vfio_pci_core_fill_phys_vec, against the BAR.
    for r in &ranges {
        let end = r.offset.checked_add(r.length).ok_or(Error::new(Errno::EOVERFLOW, "a range wraps"))?;
        if end > bar {
            return Err(einval("a range reaches past the BAR"));
        }
    }
    let (memory, len) = dev.pci().region_mmap_fd(index).ok_or(einval("the BAR has no memory to export"))?;
    if bar > len {
        return Err(einval("the BAR has no memory to export"));
    }
    let memory = uiommufd_memory::sys::private_dup(memory.as_raw_fd()).ctx("keeping the BAR's memory")?;
    let buf = DmaBuf::new_ranges(Exporter::VfioPci, Arc::new(memory), ranges[0].offset, length, ranges.len() as u32);
    if !dev.memory_enabled() {
        buf.set_revoked(true);
    }
    dev.dmabufs().list.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&buf));
    let cloexec = req.open_flags & libc::O_CLOEXEC as u32 != 0;
    host.install(Arc::new(File::DmaBuf(buf)), cloexec).map_err(|e| Error::new(e, "no descriptor for the dma-buf"))
}

/// `memdup_array_user` of `n` ranges at `at`.
fn read_ranges(at: u64, n: u32) -> Result<Vec<v::VfioRegionDmaRange>> {
    let size = core::mem::size_of::<v::VfioRegionDmaRange>() as u64;
    let total = u64::from(n).checked_mul(size).ok_or(Error::new(Errno::EOVERFLOW, "too many ranges"))?;
    if total > 1 << 30 {
        return Err(Error::new(Errno::ENOMEM, "too many ranges"));
    }
    let mut out = vec![v::VfioRegionDmaRange::default(); n as usize];
    user::copy_from_user(out.as_mut_bytes(), at).ctx("reading the ranges")?;
    Ok(out)
}
