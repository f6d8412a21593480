//! What the engine needs to know about a device behind an IOMMU: the
//! kernel's `struct device` as seen through `iommu_ops` (capabilities,
//! reserved regions, domain allocation, attach compatibility), and the
//! vIOMMU driver interface (`iommufd_viommu_ops` one way, the `driver.c`
//! helpers the other way).

use std::sync::{Arc, Weak};

use uiommufd_abi::Errno;

use crate::{Domain, UserData, UserDataArray};

/// `enum iommu_cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// DMA is cache coherent with the CPU (`IOMMU_CAP_CACHE_COHERENCY`);
    /// iommufd refuses to bind a device without it.
    CacheCoherency,
    /// The IOMMU can force snooping of DMA the device marks no-snoop
    /// (`IOMMU_CAP_ENFORCE_CACHE_COHERENCY`).
    EnforceCacheCoherency,
    /// The IOMMU can track dirty pages (`IOMMU_CAP_DIRTY_TRACKING`).
    DirtyTracking,
}

/// `enum iommu_resv_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResvKind {
    /// Must be identity mapped and may not be used otherwise.
    Direct,
    /// Identity mapped by the firmware, may be relaxed (ignored by iommufd).
    DirectRelaxable,
    /// May not be used for DMA at all.
    Reserved,
    /// A hardware MSI doorbell window.
    Msi,
    /// A software-managed MSI window.
    SwMsi,
}

/// `struct iommu_resv_region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegion {
    pub start: u64,
    pub length: u64,
    pub kind: ResvKind,
}

/// Flags of a paging domain request (`IOMMU_HWPT_ALLOC_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRequest {
    pub nest_parent: bool,
    pub dirty_tracking: bool,
    pub pasid: bool,
}

/// A device as its IOMMU driver presents it. (`any_domain()` from the
/// supertrait gives the concrete model for driver-specific hooks.)
pub trait IommuDevice: crate::AnyDomain + Send + Sync {
    /// A human-readable name (`mock0`, `0000:00:02.0`).
    fn name(&self) -> String;

    /// `device_iommu_capable`.
    fn capable(&self, cap: Cap) -> bool;

    /// `IOMMU_CAP_PCI_ATS_SUPPORTED`: the device may use ATS behind this
    /// IOMMU (a PCI function with the ATS capability and an IOMMU with a
    /// device TLB). No device we emulate has ATS, and the mock's driver
    /// never reports it.
    fn pci_ats_supported(&self) -> bool {
        false
    }

    /// `iommu_get_resv_regions`.
    fn reserved_regions(&self) -> Vec<ResvRegion> {
        Vec::new()
    }

    /// `domain_alloc_paging_flags` / `domain_alloc_user` for a paging domain.
    fn alloc_paging(&self, req: &PagingRequest) -> Result<Arc<dyn Domain>, Errno>;

    /// [`alloc_paging`](Self::alloc_paging) with driver data (`IOMMU_HWPT_ALLOC`
    /// of a paging HWPT with `data_len != 0`). Drivers that take none refuse
    /// it with `EOPNOTSUPP`, as VT-d's and SMMUv3's do.
    fn alloc_paging_data(&self, req: &PagingRequest, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>, Errno> {
        let _ = (req, data);
        Err(Errno::EOPNOTSUPP)
    }

    /// The driver's attach-time compatibility check (`EINVAL` when the
    /// domain cannot serve this device).
    fn check_attach(&self, domain: &dyn Domain) -> Result<(), Errno>;

    /// log2 of the number of PASIDs the device supports (0: none).
    fn max_pasid_log2(&self) -> u32 {
        0
    }

    /// Whether the IOMMU takes a nested domain's PASID table from the guest
    /// (`user_pasid_table`: SMMUv3's CD table, the selftest mock): a PASID
    /// without an attachment of its own then reaches the requester ID's
    /// nested domain, which picks the stage 1 by PASID.
    fn user_pasid_table(&self) -> bool {
        false
    }

    /// Allocate a nested domain on `parent` from driver-specific `data`
    /// (`domain_alloc_nested`). `flags` are the HWPT flags other than
    /// `FAULT_ID_VALID`.
    fn alloc_nested(
        &self,
        parent: &Arc<dyn Domain>,
        flags: u32,
        data: &mut UserData<'_>,
    ) -> Result<Arc<dyn Domain>, Errno> {
        let _ = (parent, flags, data);
        Err(Errno::EOPNOTSUPP)
    }

    /// The driver's `hw_info`: for the requested type (`in_type`, 0 for the
    /// default) the reported type and its data. A driver without hardware
    /// information reports type 0 (`IOMMU_HW_INFO_TYPE_NONE`) and no data.
    fn hw_info(&self, in_type: u32) -> Result<(u32, Vec<u8>), Errno> {
        let _ = in_type;
        Ok((0, Vec::new()))
    }

    /// Whether `domain` came from this device's IOMMU driver (the kernel's
    /// `domain->owner == ops` check for nesting parents).
    fn owns_domain(&self, domain: &dyn Domain) -> bool;

    /// Which IOMMU instance serves the device (the kernel's
    /// `__iommu_get_iommu_dev`): a vIOMMU only takes devices of the instance
    /// it was created on. Devices behind the same IOMMU report the same value.
    fn iommu_instance(&self) -> usize {
        0
    }

    /// The attach-time check for a PASID (`set_dev_pasid`); by default the
    /// same as [`check_attach`](Self::check_attach).
    fn check_attach_pasid(&self, pasid: u32, domain: &dyn Domain) -> Result<(), Errno> {
        let _ = pasid;
        self.check_attach(domain)
    }

    /// A DMA request of this device failed to translate in `domain`, the
    /// domain it went to (`pasid`: the request's PASID, if it had one). A
    /// driver whose IOMMU reports such faults through its own queues
    /// handles it here and answers `Some(reported)` (SMMUv3:
    /// `arm_smmu_handle_event()`, a nested master's stage 1 fault going to
    /// its vIOMMU's event queue); `None` leaves the fault to the engine
    /// (the HWPT's fault queue, for IOPF-capable domains).
    fn dma_fault(
        &self,
        domain: &dyn Domain,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
        privileged: bool,
    ) -> Option<bool> {
        let _ = (domain, pasid, iova, write, privileged);
        None
    }

    /// The attachment at `pasid` (0: the requester ID) went away: the device
    /// is blocked there now.
    fn detached(&self, pasid: u32) {
        let _ = pasid;
    }

    /// Whether the driver can build a vIOMMU of `viommu_type` for this device
    /// (the kernel's `get_viommu_size()` returning non-zero).
    fn viommu_supported(&self, viommu_type: u32) -> bool {
        let _ = viommu_type;
        false
    }

    /// `viommu_init`: the driver half of a new vIOMMU of `viommu_type` over
    /// the nesting parent `parent`, with the driver data of the allocation
    /// when user space gave some. `core` reaches the engine's half (events,
    /// vDEVICE lookups) once the vIOMMU exists.
    fn viommu_init(
        &self,
        viommu_type: u32,
        parent: &Arc<dyn Domain>,
        data: Option<&mut UserData<'_>>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<ViommuInit, Errno> {
        let _ = (viommu_type, parent, data, core);
        Err(Errno::EOPNOTSUPP)
    }
}

/// What the engine offers a vIOMMU driver (the kernel's `driver.c` helpers:
/// `iommufd_viommu_report_event`, `iommufd_viommu_find_dev`,
/// `iommufd_viommu_get_vdev_id`, `iommufd_viommu_alloc_mmap`).
pub trait ViommuCore: Send + Sync {
    /// Queue `data` on the vIOMMU's event queue of `veventq_type`
    /// (`EOPNOTSUPP` when there is none).
    fn report_event(&self, veventq_type: u32, data: &[u8]) -> Result<(), Errno>;

    /// The device behind virtual ID `virt_id`, if a vDEVICE has it.
    fn find_dev(&self, virt_id: u64) -> Option<Arc<dyn IommuDevice>>;

    /// The virtual ID of `dev` on this vIOMMU, if it has a vDEVICE here.
    fn vdev_id(&self, dev: &dyn IommuDevice) -> Option<u64>;

    /// Reserve `length` bytes of the file's mmap offset space for a driver
    /// region; returns the offset user space would pass to `mmap`.
    fn alloc_mmap(&self, length: u64) -> Result<u64, Errno>;

    /// `iommufd_viommu_alloc_mmap` with the memory: register `length` bytes
    /// of memfd `backing` as a region user space can `mmap` through the
    /// iommufd file; returns its offset. `driver_view` is where the driver
    /// keeps the same memory mapped itself, if it does (that mapping is not
    /// the program's). The default reserves the offset only (nothing can be
    /// mapped).
    fn alloc_mmap_backed(
        &self,
        length: u64,
        backing: std::os::fd::OwnedFd,
        driver_view: Option<std::ops::Range<u64>>,
    ) -> Result<u64, Errno> {
        drop((backing, driver_view));
        self.alloc_mmap(length)
    }

    /// Whether the program maps the region at `offset` now (its `mmap`
    /// through the iommufd file, not yet unmapped).
    fn mmap_in_use(&self, offset: u64) -> bool {
        let _ = offset;
        false
    }
}

/// The result of [`IommuDevice::viommu_init`].
pub struct ViommuInit {
    pub driver: Arc<dyn ViommuDriver>,
    /// Driver data to copy back to the user's buffer (truncated to its
    /// length), as `iommu_copy_struct_to_user` does.
    pub user_out: Option<Vec<u8>>,
}

/// The driver half of a vIOMMU (`struct iommufd_viommu_ops`). Every hook
/// defaults to `EOPNOTSUPP`, as a missing op does in the kernel.
pub trait ViommuDriver: crate::AnyDomain + Send + Sync {
    /// `alloc_domain_nested`: a nested domain of this vIOMMU. `flags` are the
    /// HWPT flags other than `FAULT_ID_VALID`.
    fn alloc_domain_nested(&self, flags: u32, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>, Errno> {
        let _ = (flags, data);
        Err(Errno::EOPNOTSUPP)
    }

    /// Whether `cache_invalidate` exists at all.
    fn can_invalidate(&self) -> bool {
        false
    }

    /// `cache_invalidate`: driver-defined requests; on return
    /// `array.entry_num` is the number handled.
    fn cache_invalidate(&self, array: &mut UserDataArray<'_>) -> Result<(), Errno> {
        array.entry_num = 0;
        Err(Errno::EOPNOTSUPP)
    }

    /// User space mapped the driver region at `offset` (see
    /// [`ViommuCore::alloc_mmap_backed`]): its stores to that memory do not
    /// trap, so a driver serving registers there must start watching it.
    fn mmap_notify(&self, offset: u64) {
        let _ = offset;
    }

    /// Whether HW queues of `queue_type` exist (`get_hw_queue_size` non-zero).
    fn hw_queue_supported(&self, queue_type: u32) -> bool {
        let _ = queue_type;
        false
    }

    /// `hw_queue_init_phys`: bring up queue `index` of `length` bytes whose
    /// guest memory starts at nesting-parent IOVA `base_iova`, physically
    /// at `base_pa`.
    fn hw_queue_init(
        &self,
        queue_type: u32,
        index: u32,
        base_iova: u64,
        base_pa: u64,
        length: u64,
    ) -> Result<HwQueueInit, Errno> {
        let _ = (queue_type, index, base_iova, base_pa, length);
        Err(Errno::EOPNOTSUPP)
    }

    /// `vdevice_init`: the driver's part of a new vDEVICE giving `dev` the
    /// virtual ID `virt_id` (e.g. Tegra241 CMDQV's StreamID replacement).
    /// The handle, if any, is dropped when the vDEVICE goes.
    fn vdevice_init(&self, dev: &Arc<dyn IommuDevice>, virt_id: u64) -> Result<Option<Box<dyn Send + Sync>>, Errno> {
        let _ = (dev, virt_id);
        Ok(None)
    }
}

/// The result of [`ViommuDriver::hw_queue_init`].
pub struct HwQueueInit {
    /// The driver's queue; dropping it tears the queue down.
    pub handle: Box<dyn Send + Sync>,
    /// The index of another queue of this vIOMMU that must outlive this one
    /// (`iommufd_hw_queue_depend`).
    pub depends_on: Option<u32>,
}
