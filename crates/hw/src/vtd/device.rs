//! A VT-d unit and the devices behind it, as the Linux intel-iommu driver
//! presents them to the iommu core (`intel_iommu_ops`).
//!
//! Model: [`VtdIommu`] is one remapping unit (a DRHD): its registers, what
//! the driver derived from them ([`VtdInfo`]), its IOTLB and its domain
//! IDs. [`VtdDevice`] is a PCI device behind it, with the PCI capabilities
//! the driver and core look at (PASID width and features, ATS) and its
//! RMRRs; it implements [`IommuDevice`] with the driver's rules:
//! - `capable`: `intel_iommu_capable()`;
//! - `reserved_regions`: `intel_iommu_get_resv_regions()`;
//! - `alloc_paging`: `intel_iommu_domain_alloc_second_stage()` (this model
//!   allocates second-stage domains only, see below);
//! - `alloc_nested`: `intel_iommu_domain_alloc_nested()`;
//! - `check_attach` / `check_attach_pasid`: `paging_domain_compatible()`,
//!   `intel_nested_attach_dev()`, `intel_iommu_set_dev_pasid()`,
//!   `intel_nested_set_dev_pasid()`;
//! - `hw_info`: `intel_iommu_hw_info()`; `max_pasid_log2` and
//!   [`VtdDevice::out_capabilities`]: what `iommufd_get_hw_info()` reports.
//!
//! Physical memory: nested translation reads the guest's first-stage
//! tables. The unit reads host physical memory through a reader the
//! engine installs ([`VtdIommu::set_phys_reader`]); until then table reads
//! fail (`EFAULT`) and nested translations fault.
//!
//! Not modelled: first-stage paging domains for the host (newer kernels
//! prefer them for flag-less allocations when ECAP.FSTS is set), identity
//! and blocking domains, SVA, device-TLB (ATS) invalidation, page
//! requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use uiommufd_abi::{Errno, IOMMU_HWPT_ALLOC_PASID, IOMMU_HW_INFO_TYPE_DEFAULT, IOMMU_HW_INFO_TYPE_INTEL_VTD};
use zerocopy::IntoBytes;

use super::info::{DeviceProps, DriverParams, VtdInfo};
use super::iotlb::{DomainIds, Iotlb};
use super::nested::{GpaReader, NestedCaps, VtdNested};
use super::regs::VtdRegs;
use super::sl::VtdSlDomain;
use crate::device::{Cap, IommuDevice, PagingRequest, ResvKind, ResvRegion};
use crate::{Access, Domain, UserData};

/// Reads the 64-bit word at a host physical address.
pub type PhysReader = Arc<dyn Fn(u64) -> Result<u64, Errno> + Send + Sync>;

static NEXT_UNIT: AtomicUsize = AtomicUsize::new(0);

/// One VT-d remapping unit.
pub struct VtdIommu {
    id: usize,
    info: VtdInfo,
    iotlb: Arc<Iotlb>,
    dids: Arc<DomainIds>,
    phys: Arc<RwLock<Option<PhysReader>>>,
}

impl core::fmt::Debug for VtdIommu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VtdIommu").field("name", &self.name()).field("regs", &self.info.regs).finish_non_exhaustive()
    }
}

impl VtdIommu {
    /// A unit with `regs` and the default driver parameters. `ENODEV` if
    /// the driver would not use it for DMA remapping (no usable address
    /// width, `alloc_iommu()`).
    pub fn new(regs: VtdRegs) -> Result<Arc<Self>, Errno> {
        Self::with_params(regs, DriverParams::default())
    }

    pub fn with_params(regs: VtdRegs, params: DriverParams) -> Result<Arc<Self>, Errno> {
        let info = VtdInfo::new(regs, params)?;
        Ok(Arc::new(VtdIommu {
            id: NEXT_UNIT.fetch_add(1, Ordering::Relaxed),
            info,
            iotlb: Arc::new(Iotlb::new()),
            dids: DomainIds::new(info.ndoms()),
            phys: Arc::new(RwLock::new(None)),
        }))
    }

    /// A process-unique instance number.
    pub fn id(&self) -> usize {
        self.id
    }

    /// `dmar<N>`.
    pub fn name(&self) -> String {
        format!("dmar{}", self.id)
    }

    pub fn info(&self) -> &VtdInfo {
        &self.info
    }

    pub fn regs(&self) -> &VtdRegs {
        &self.info.regs
    }

    pub fn iotlb(&self) -> &Arc<Iotlb> {
        &self.iotlb
    }

    pub fn domain_ids(&self) -> &Arc<DomainIds> {
        &self.dids
    }

    /// Install how the unit reads host physical memory (the frame table).
    pub fn set_phys_reader(&self, reader: PhysReader) {
        *self.phys.write().unwrap_or_else(|e| e.into_inner()) = Some(reader);
    }
}

/// A PCI device behind a [`VtdIommu`].
#[derive(Debug)]
pub struct VtdDevice {
    name: String,
    iommu: Arc<VtdIommu>,
    props: DeviceProps,
    rmrrs: Vec<ResvRegion>,
}

impl VtdDevice {
    /// A device named `name` (a BDF such as `0000:00:02.0`) without PASID
    /// or ATS capabilities.
    pub fn new(iommu: &Arc<VtdIommu>, name: impl Into<String>) -> Self {
        VtdDevice { name: name.into(), iommu: Arc::clone(iommu), props: DeviceProps::default(), rmrrs: Vec::new() }
    }

    /// A PCI PASID capability with `bits` of PASID and the Execute /
    /// Privileged Mode features.
    pub fn with_pasid(mut self, bits: u32, exec: bool, privileged: bool) -> Self {
        self.props.pasid_bits = bits;
        self.props.pasid_exec = exec;
        self.props.pasid_priv = privileged;
        self
    }

    /// A PCI ATS capability the DMAR tables allow.
    pub fn with_ats(mut self, ats: bool) -> Self {
        self.props.ats = ats;
        self
    }

    /// An RMRR covering the device: identity-mapped memory, relaxable for
    /// USB and graphics devices (`device_rmrr_is_relaxable()`).
    pub fn with_rmrr(mut self, start: u64, length: u64, relaxable: bool) -> Self {
        let kind = if relaxable { ResvKind::DirectRelaxable } else { ResvKind::Direct };
        self.rmrrs.push(ResvRegion { start, length, kind });
        self
    }

    pub fn iommu(&self) -> &Arc<VtdIommu> {
        &self.iommu
    }

    pub fn props(&self) -> &DeviceProps {
        &self.props
    }

    /// The VT-d device behind a device handle, if it is one.
    pub fn of(dev: &Arc<dyn IommuDevice>) -> Option<&VtdDevice> {
        let dev: &dyn IommuDevice = dev.as_ref();
        dev.any_domain().downcast_ref::<VtdDevice>()
    }

    /// `out_capabilities` of `IOMMU_GET_HW_INFO` for this device.
    pub fn out_capabilities(&self) -> u64 {
        self.iommu.info.device_out_capabilities(&self.props)
    }

    fn info(&self) -> &VtdInfo {
        &self.iommu.info
    }
}

impl IommuDevice for VtdDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// `intel_iommu_capable()`: DMA is always coherent (the driver answers
    /// true unconditionally: non-coherent page walks are handled with
    /// cache flushes, and no-snoop DMA is what enforcement is for);
    /// enforcement needs ECAP.SC; dirty tracking `ssads_supported()`.
    fn capable(&self, cap: Cap) -> bool {
        match cap {
            Cap::CacheCoherency => true,
            Cap::EnforceCacheCoherency => self.info().snoop_control(),
            Cap::DirtyTracking => self.info().ssads_supported(),
        }
    }

    /// `intel_iommu_get_resv_regions()`: the device's RMRRs, then the
    /// interrupt window `0xfee00000..=0xfeefffff` as `IOMMU_RESV_MSI`.
    fn reserved_regions(&self) -> Vec<ResvRegion> {
        let mut v = self.rmrrs.clone();
        v.push(self.info().msi_region());
        v
    }

    /// `intel_iommu_domain_alloc_second_stage()`: `EOPNOTSUPP` for a
    /// nesting parent without `nested_supported()`, dirty tracking without
    /// `ssads_supported()`, or a scalable-mode unit without ECAP.SSTS.
    fn alloc_paging(&self, req: &PagingRequest) -> Result<Arc<dyn Domain>, Errno> {
        let info = self.info();
        if (req.nest_parent && !info.nested_supported()) || (req.dirty_tracking && !info.ssads_supported()) {
            return Err(Errno::EOPNOTSUPP);
        }
        if info.sm_supported() && info.ecap().ssts() == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(Arc::new(VtdSlDomain::for_unit(info, req.nest_parent, req.dirty_tracking)?))
    }

    /// Second-stage domains: `paging_domain_compatible()`; nested ones:
    /// `intel_nested_attach_dev()` ([`VtdNested::check_unit`]); anything
    /// else is another driver's domain (`EINVAL`).
    fn check_attach(&self, domain: &dyn Domain) -> Result<(), Errno> {
        let any = domain.as_any();
        if let Some(sl) = any.downcast_ref::<VtdSlDomain>() {
            return sl.config().check_unit(self.info());
        }
        if let Some(n) = any.downcast_ref::<VtdNested>() {
            return n.check_unit(self.info());
        }
        Err(Errno::EINVAL)
    }

    /// `intel_iommu_set_dev_pasid()` (6.12: `EOPNOTSUPP` without
    /// `pasid_supported()`, `EINVAL` for a domain with dirty tracking,
    /// then the attach checks) and `intel_nested_set_dev_pasid()`.
    fn check_attach_pasid(&self, pasid: u32, domain: &dyn Domain) -> Result<(), Errno> {
        let _ = pasid;
        let any = domain.as_any();
        if let Some(sl) = any.downcast_ref::<VtdSlDomain>() {
            if !self.info().pasid_supported() {
                return Err(Errno::EOPNOTSUPP);
            }
            if sl.config().dirty_ops {
                return Err(Errno::EINVAL);
            }
            return sl.config().check_unit(self.info());
        }
        if let Some(n) = any.downcast_ref::<VtdNested>() {
            if !self.info().pasid_supported() {
                return Err(Errno::EOPNOTSUPP);
            }
            return n.check_unit_pasid(self.info());
        }
        Err(Errno::EINVAL)
    }

    /// `ilog2(dev->iommu->max_pasids)`: the smaller of the device's and
    /// the unit's PASID widths, 0 without PASID support on either side.
    fn max_pasid_log2(&self) -> u32 {
        self.info().device_max_pasid_log2(self.props.pasid_bits)
    }

    /// `intel_iommu_domain_alloc_nested()`: `EOPNOTSUPP` without
    /// `nested_supported()` or with flags other than
    /// `IOMMU_HWPT_ALLOC_PASID`, then the data checks of
    /// [`VtdNested::read_user_data`]; `ENOSPC` when the unit has no domain
    /// ID left (the driver finds that out at attach, in
    /// `domain_attach_iommu()`; the model assigns the ID here).
    fn alloc_nested(
        &self,
        parent: &Arc<dyn Domain>,
        flags: u32,
        data: &mut UserData<'_>,
    ) -> Result<Arc<dyn Domain>, Errno> {
        let info = self.info();
        if !info.nested_supported() || flags & !IOMMU_HWPT_ALLOC_PASID != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let s1 = VtdNested::read_user_data(parent, data)?;
        let sl = parent.as_any().downcast_ref::<VtdSlDomain>().ok_or(Errno::EINVAL)?;
        let caps = NestedCaps { fs1gp: info.cap().fs1gp() != 0, addr_bits: sl.config().gaw };
        let lease = self.iommu.dids.alloc()?;
        let reader: GpaReader = {
            let parent = Arc::clone(parent);
            let phys = Arc::clone(&self.iommu.phys);
            Arc::new(move |gpa| {
                let hpa = parent.translate(gpa, Access::Read).map_err(|_| Errno::EFAULT)?.paddr;
                let phys = phys.read().unwrap_or_else(|e| e.into_inner());
                match phys.as_ref() {
                    Some(read) => read(hpa),
                    None => Err(Errno::EFAULT),
                }
            })
        };
        Ok(Arc::new(VtdNested::new(parent, s1, caps, Arc::clone(&self.iommu.iotlb), lease, reader)?))
    }

    /// `intel_iommu_hw_info()`: `EOPNOTSUPP` for a requested type other
    /// than the default or `IOMMU_HW_INFO_TYPE_INTEL_VTD`.
    fn hw_info(&self, in_type: u32) -> Result<(u32, Vec<u8>), Errno> {
        if in_type != IOMMU_HW_INFO_TYPE_DEFAULT && in_type != IOMMU_HW_INFO_TYPE_INTEL_VTD {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok((IOMMU_HW_INFO_TYPE_INTEL_VTD, self.info().hw_info().as_bytes().to_vec()))
    }

    fn owns_domain(&self, domain: &dyn Domain) -> bool {
        let any = domain.as_any();
        any.is::<VtdSlDomain>() || any.is::<VtdNested>()
    }

    fn iommu_instance(&self) -> usize {
        self.iommu.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::fl::fspte;
    use crate::vtd::info::{SZ_1G, SZ_2M, SZ_4K};
    use crate::vtd::regs::VtdRegsBuilder;
    use crate::Prot;
    use std::collections::HashMap;
    use uiommufd_abi::{
        IommuHwInfoVtd, IommuHwptVtdS1, IOMMU_HWPT_DATA_VTD_S1, IOMMU_HW_CAP_DIRTY_TRACKING,
        IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED, IOMMU_HW_CAP_PCI_PASID_EXEC, IOMMU_HW_CAP_PCI_PASID_PRIV,
        IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
    };
    use zerocopy::FromBytes;

    const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);

    fn server() -> Arc<VtdIommu> {
        VtdIommu::new(VtdRegs::default()).unwrap()
    }

    fn client() -> Arc<VtdIommu> {
        VtdIommu::new(VtdRegs::from_raw(0x00d2_008c_4066_0462, 0xf050da)).unwrap()
    }

    fn nest_parent(dev: &VtdDevice) -> Arc<dyn Domain> {
        dev.alloc_paging(&PagingRequest { nest_parent: true, ..Default::default() }).unwrap()
    }

    fn alloc_nested(
        dev: &VtdDevice,
        parent: &Arc<dyn Domain>,
        s1: IommuHwptVtdS1,
        flags: u32,
    ) -> Result<Arc<dyn Domain>, Errno> {
        let bytes = s1.as_bytes().to_vec();
        let mut rd = move |buf: &mut [u8]| -> Result<(), Errno> {
            buf.copy_from_slice(&bytes[..buf.len()]);
            Ok(())
        };
        let mut data = UserData { data_type: IOMMU_HWPT_DATA_VTD_S1, len: 24, reader: &mut rd };
        dev.alloc_nested(parent, flags, &mut data)
    }

    #[test]
    fn capabilities_and_info() {
        let dev = VtdDevice::new(&server(), "0000:3a:00.0").with_pasid(20, true, true).with_ats(true);
        assert!(dev.capable(Cap::CacheCoherency));
        assert!(dev.capable(Cap::EnforceCacheCoherency));
        assert!(dev.capable(Cap::DirtyTracking));
        assert_eq!(dev.max_pasid_log2(), 20);
        assert_eq!(
            dev.out_capabilities(),
            u64::from(IOMMU_HW_CAP_DIRTY_TRACKING | IOMMU_HW_CAP_PCI_PASID_EXEC | IOMMU_HW_CAP_PCI_PASID_PRIV)
        );
        let (ty, data) = dev.hw_info(0).unwrap();
        assert_eq!(ty, IOMMU_HW_INFO_TYPE_INTEL_VTD);
        let hw = IommuHwInfoVtd::read_from_bytes(&data).unwrap();
        assert_eq!(hw.flags, IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17);
        assert_eq!((hw.cap_reg, hw.ecap_reg), (VtdRegs::default().cap.0, VtdRegs::default().ecap.0));
        assert_eq!(dev.hw_info(IOMMU_HW_INFO_TYPE_INTEL_VTD).unwrap().0, IOMMU_HW_INFO_TYPE_INTEL_VTD);
        assert_eq!(dev.hw_info(2), Err(Errno::EOPNOTSUPP));
        // The client unit: no SSADS, no PASID, legacy mode.
        let c = VtdDevice::new(&client(), "0000:00:02.0").with_pasid(20, true, true);
        assert!(c.capable(Cap::EnforceCacheCoherency));
        assert!(!c.capable(Cap::DirtyTracking));
        assert_eq!(c.max_pasid_log2(), 0);
        assert_eq!(c.out_capabilities(), u64::from(IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED));
        assert_eq!(c.name(), "0000:00:02.0");
        assert_ne!(dev.iommu_instance(), c.iommu_instance());
        assert!(server().name().starts_with("dmar"));
    }

    #[test]
    fn reserved_regions_end_with_the_interrupt_window() {
        let dev = VtdDevice::new(&server(), "0000:00:14.0").with_rmrr(0x7c00_0000, 0x80_0000, true);
        assert_eq!(
            dev.reserved_regions(),
            vec![
                ResvRegion { start: 0x7c00_0000, length: 0x80_0000, kind: ResvKind::DirectRelaxable },
                ResvRegion { start: 0xfee0_0000, length: 0x10_0000, kind: ResvKind::Msi },
            ]
        );
    }

    #[test]
    fn paging_allocation_rules() {
        let c = VtdDevice::new(&client(), "c");
        assert_eq!(
            c.alloc_paging(&PagingRequest { nest_parent: true, ..Default::default() }).err(),
            Some(Errno::EOPNOTSUPP)
        );
        assert_eq!(
            c.alloc_paging(&PagingRequest { dirty_tracking: true, ..Default::default() }).err(),
            Some(Errno::EOPNOTSUPP)
        );
        let d = c.alloc_paging(&PagingRequest::default()).unwrap();
        assert!(d.enforce_cache_coherency());
        assert_eq!(d.aperture().last, (1 << 39) - 1);
        assert_eq!(d.pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G);
        assert!(d.dirty_ops().is_none());
        assert!(c.owns_domain(&*d));
        assert_eq!(c.check_attach(&*d), Ok(()));
        // Scalable mode without second-stage support.
        let r = VtdRegsBuilder::from(VtdRegs::default()).scalable_mode(true, true, false).build();
        let fs_only = VtdDevice::new(&VtdIommu::new(r).unwrap(), "f");
        assert_eq!(fs_only.alloc_paging(&PagingRequest::default()).err(), Some(Errno::EOPNOTSUPP));
        let s = VtdDevice::new(&server(), "s");
        let d = s.alloc_paging(&PagingRequest { nest_parent: true, dirty_tracking: true, pasid: true }).unwrap();
        assert!(d.dirty_ops().is_some());
        assert_eq!(d.aperture().last, (1 << 57) - 1);
    }

    #[test]
    fn attach_compatibility() {
        let s = VtdDevice::new(&server(), "s");
        let c = VtdDevice::new(&client(), "c");
        // A snooping 5-level domain from the server unit on the client unit:
        // coherency and width differ.
        let d = s.alloc_paging(&PagingRequest::default()).unwrap();
        assert_eq!(c.check_attach(&*d), Err(Errno::EINVAL));
        // Enforced snooping onto a unit without SC.
        let nosc = VtdIommu::new(VtdRegsBuilder::from(VtdRegs::default()).snoop_control(false).build()).unwrap();
        let nosc = VtdDevice::new(&nosc, "n");
        assert_eq!(nosc.check_attach(&*d), Err(Errno::EINVAL));
        // ...but a domain from the non-SC unit attaches to the SC one.
        let d2 = nosc.alloc_paging(&PagingRequest::default()).unwrap();
        assert!(!d2.enforce_cache_coherency());
        assert_eq!(s.check_attach(&*d2), Ok(()));
        // Dirty tracking onto a unit without SSADS.
        let nossads =
            VtdDevice::new(&VtdIommu::new(VtdRegsBuilder::from(VtdRegs::default()).ssads(false).build()).unwrap(), "x");
        let dd = s.alloc_paging(&PagingRequest { dirty_tracking: true, ..Default::default() }).unwrap();
        assert_eq!(nossads.check_attach(&*dd), Err(Errno::EINVAL));
        // 1 GiB pages onto a unit with 2 MiB only.
        let no1g = VtdDevice::new(
            &VtdIommu::new(VtdRegsBuilder::from(VtdRegs::default()).second_stage_large_pages(true, false).build())
                .unwrap(),
            "y",
        );
        assert_eq!(no1g.check_attach(&*d), Err(Errno::EINVAL));
        assert_eq!(s.check_attach(&*no1g.alloc_paging(&PagingRequest::default()).unwrap()), Ok(()));
        // Caching mode needs IOTLB sync on map.
        let cm = VtdDevice::new(
            &VtdIommu::new(VtdRegsBuilder::from(VtdRegs::default()).caching_mode(true).build()).unwrap(),
            "z",
        );
        assert_eq!(cm.check_attach(&*d), Err(Errno::EINVAL));
        assert_eq!(s.check_attach(&*cm.alloc_paging(&PagingRequest::default()).unwrap()), Ok(()));
        // Another driver's domain.
        let mock = crate::mock::MockDomain::new(false).unwrap();
        assert_eq!(s.check_attach(&mock), Err(Errno::EINVAL));
        assert!(!s.owns_domain(&mock));
        // PASID attach: unit without PASID, dirty-tracking domain.
        assert_eq!(
            c.check_attach_pasid(1, &*c.alloc_paging(&PagingRequest::default()).unwrap()),
            Err(Errno::EOPNOTSUPP)
        );
        assert_eq!(s.check_attach_pasid(1, &*dd), Err(Errno::EINVAL));
        assert_eq!(s.check_attach_pasid(1, &*d), Ok(()));
    }

    #[test]
    fn nested_allocation_rules() {
        let s = VtdDevice::new(&server(), "s");
        let parent = nest_parent(&s);
        let s1 = IommuHwptVtdS1 { flags: 0, pgtbl_addr: 0x1000, addr_width: 48, __reserved: 0 };
        let n = alloc_nested(&s, &parent, s1, 0).unwrap();
        assert!(n.is_nested());
        assert!(s.owns_domain(&*n));
        assert_eq!(s.check_attach(&*n), Ok(()));
        assert_eq!(s.check_attach_pasid(3, &*n), Ok(()));
        assert_eq!(alloc_nested(&s, &parent, s1, IOMMU_HWPT_ALLOC_PASID).map(|_| ()), Ok(()));
        assert_eq!(alloc_nested(&s, &parent, s1, 1).err(), Some(Errno::EOPNOTSUPP));
        // A parent that is not a nesting parent.
        let plain = s.alloc_paging(&PagingRequest::default()).unwrap();
        assert_eq!(alloc_nested(&s, &plain, s1, 0).err(), Some(Errno::EINVAL));
        // A unit without nesting.
        let c = VtdDevice::new(&client(), "c");
        assert_eq!(alloc_nested(&c, &parent, s1, 0).err(), Some(Errno::EOPNOTSUPP));
        // Width problems show at attach.
        let bad = alloc_nested(&s, &parent, IommuHwptVtdS1 { addr_width: 39, ..s1 }, 0).unwrap();
        assert_eq!(s.check_attach(&*bad), Err(Errno::EINVAL));
        // Domain IDs run out (16 on an ND=0 unit, 2 reserved).
        let small = VtdIommu::new(VtdRegsBuilder::from(VtdRegs::default()).domain_ids(0).build()).unwrap();
        let sd = VtdDevice::new(&small, "t");
        let p = nest_parent(&sd);
        let held: Vec<_> = (0..14).map(|_| alloc_nested(&sd, &p, s1, 0).unwrap()).collect();
        assert_eq!(alloc_nested(&sd, &p, s1, 0).err(), Some(Errno::ENOSPC));
        drop(held);
        assert!(alloc_nested(&sd, &p, s1, 0).is_ok());
    }

    /// End to end through the device: the engine's frame table is a
    /// HashMap of host frames behind the unit's physical reader.
    #[test]
    fn nested_translation_through_the_unit() {
        let unit = server();
        let frames: Arc<RwLock<HashMap<u64, u64>>> = Arc::new(RwLock::new(HashMap::new()));
        {
            let frames = Arc::clone(&frames);
            unit.set_phys_reader(Arc::new(move |hpa| Ok(frames.read().unwrap().get(&hpa).copied().unwrap_or(0))));
        }
        let dev = VtdDevice::new(&unit, "0000:3a:00.0");
        let parent = nest_parent(&dev);
        // Guest RAM [0, 16 MiB) at host 4 GiB.
        crate::map(&*parent, 0, 1 << 32, 16 << 20, RW, 0).unwrap();
        let s1 = IommuHwptVtdS1 { flags: 0, pgtbl_addr: 0x1000, addr_width: 48, __reserved: 0 };
        let n = alloc_nested(&dev, &parent, s1, 0).unwrap();
        // Before the guest builds its table: not present.
        assert_eq!(n.translate(0x2000, Access::Read), Err(crate::Fault::NotPresent));
        let host = |gpa: u64| (1u64 << 32) + gpa;
        let e = fspte::P | fspte::RW | fspte::US;
        {
            let mut f = frames.write().unwrap();
            f.insert(host(0x1000), 0x2000 | e);
            f.insert(host(0x2000), 0x3000 | e);
            f.insert(host(0x3000), 0x4000 | e);
            f.insert(host(0x4000 + 8 * 2), 0x80_0000 | e);
        }
        // The earlier fault was not cached.
        let t = n.translate(0x2010, Access::Write).unwrap();
        assert_eq!(t.paddr, host(0x80_0010));
        assert_eq!(t.prot, RW | Prot::CACHE);
        let stats = unit.iotlb().stats();
        assert_eq!(stats.tlb_entries, 1);
        assert_eq!(stats.psc_entries, 3);
        drop(n);
        assert_eq!(unit.iotlb().stats().tlb_entries, 0);
    }
}
