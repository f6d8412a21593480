//! Hardware page tables (`hw_pagetable.c`).
//!
//! A paging HWPT wraps one IOMMU domain that mirrors an IOAS: it is added to
//! the IOAS's io_pagetable on creation (filled with every area) and removed
//! when the HWPT is destroyed. Devices attach to HWPTs; each attachment is a
//! dependency edge, so a HWPT in use cannot be destroyed (`EBUSY`).
//!
//! *Auto domains* are HWPTs the engine created itself when a device attached
//! to an IOAS; they are shared by compatible devices and destroyed with
//! their last attachment, as in the kernel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use uiommufd_hw::Domain;

use crate::fault::Fault;
use crate::io_pagetable::new_token;
use crate::ioas::Ioas;
use crate::object::{Borrowed, Dep, ObjHeader, Object, ObjectId, ObjectKind, ObjectType};
use crate::Result;

/// `struct iommufd_hwpt_paging`.
pub struct HwptPaging {
    hdr: ObjHeader,
    ioas: Dep<Ioas>,
    domain: Arc<dyn Domain>,
    /// Identity of the domain in the io_pagetable.
    token: u64,
    auto_domain: AtomicBool,
    nest_parent: bool,
    dirty_tracking: bool,
    enforce_cache_coherency: bool,
    /// Allocated with `IOMMU_HWPT_ALLOC_PASID`.
    pasid: bool,
    /// Added to the io_pagetable (filled and kept in sync).
    in_iopt: AtomicBool,
    /// Where I/O page faults of attached devices go.
    fault: Option<Dep<Fault>>,
}

impl std::fmt::Debug for HwptPaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HwptPaging").field("id", &self.id()).field("ioas", &self.ioas.id()).finish()
    }
}

/// How a paging HWPT is being created.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagingFlags {
    pub nest_parent: bool,
    pub dirty_tracking: bool,
    pub enforce_cache_coherency: bool,
    pub pasid: bool,
}

impl HwptPaging {
    /// Build a paging HWPT over `domain` for `ioas` (not yet in the
    /// io_pagetable; the caller adds it).
    pub fn new(id: ObjectId, ioas: &Borrowed<Ioas>, domain: Arc<dyn Domain>, flags: PagingFlags) -> Self {
        HwptPaging {
            hdr: ObjHeader::new(id),
            ioas: Dep::new(ioas),
            domain,
            token: new_token(),
            auto_domain: AtomicBool::new(false),
            nest_parent: flags.nest_parent,
            dirty_tracking: flags.dirty_tracking,
            enforce_cache_coherency: flags.enforce_cache_coherency,
            pasid: flags.pasid,
            in_iopt: AtomicBool::new(false),
            fault: None,
        }
    }

    /// Route page faults to `fault` (`IOMMU_HWPT_FAULT_ID_VALID`); only
    /// before the HWPT is published.
    pub fn with_fault(mut self, fault: Option<Dep<Fault>>) -> Self {
        self.fault = fault;
        self
    }

    pub fn fault(&self) -> Option<&Arc<Fault>> {
        self.fault.as_ref().map(|d| d.arc())
    }

    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn ioas(&self) -> &Arc<Ioas> {
        self.ioas.arc()
    }

    pub fn domain(&self) -> &Arc<dyn Domain> {
        &self.domain
    }

    pub fn is_auto(&self) -> bool {
        self.auto_domain.load(Ordering::Acquire)
    }

    pub fn set_auto(&self) {
        self.auto_domain.store(true, Ordering::Release);
    }

    pub fn nest_parent(&self) -> bool {
        self.nest_parent
    }

    pub fn dirty_tracking(&self) -> bool {
        self.dirty_tracking
    }

    pub fn enforce_cache_coherency(&self) -> bool {
        self.enforce_cache_coherency
    }

    /// May be attached to PASIDs (`IOMMU_HWPT_ALLOC_PASID`).
    pub fn pasid_compat(&self) -> bool {
        self.pasid
    }

    /// `iopt_table_add_domain`: fill the domain with the IOAS's mappings
    /// and keep it in sync from now on. The caller, holding the IOAS's HWPT
    /// list lock, adds the HWPT to that list.
    pub fn add_to_iopt(&self) -> Result<()> {
        self.ioas().iopt().add_domain(self.token, Arc::clone(&self.domain))?;
        self.in_iopt.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for HwptPaging {
    fn drop(&mut self) {
        if self.in_iopt.load(Ordering::Acquire) {
            let me = self as *const HwptPaging;
            self.ioas().hwpts().retain(|w| w.as_ptr() != me && w.strong_count() != 0);
            self.ioas().iopt().remove_domain(self.token);
        }
    }
}

impl ObjectType for HwptPaging {
    const KIND: ObjectKind = ObjectKind::HwptPaging;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::HwptPaging(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::HwptPaging(o) => Some(o),
            _ => None,
        }
    }
}

/// `struct iommufd_hwpt_nested`: a driver-specific stage-1 domain over a
/// nesting-parent paging HWPT.
pub struct HwptNested {
    hdr: ObjHeader,
    parent: Dep<HwptPaging>,
    domain: Arc<dyn Domain>,
    fault: Option<Dep<Fault>>,
    pasid: bool,
    /// The vIOMMU it was allocated through (`hwpt_nested->viommu`).
    viommu: Option<Dep<crate::viommu::Viommu>>,
}

impl std::fmt::Debug for HwptNested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HwptNested").field("id", &self.id()).field("parent", &self.parent.id()).finish()
    }
}

impl HwptNested {
    pub fn new(
        id: ObjectId,
        parent: &Borrowed<HwptPaging>,
        domain: Arc<dyn Domain>,
        fault: Option<Dep<Fault>>,
        pasid: bool,
    ) -> Self {
        HwptNested { hdr: ObjHeader::new(id), parent: Dep::new(parent), domain, fault, pasid, viommu: None }
    }

    /// Belong to `viommu` (allocated with a vIOMMU as `pt_id`); only before
    /// the HWPT is published.
    pub fn with_viommu(mut self, viommu: Dep<crate::viommu::Viommu>) -> Self {
        self.viommu = Some(viommu);
        self
    }

    /// The vIOMMU the HWPT was allocated through, if any.
    pub fn viommu(&self) -> Option<&Arc<crate::viommu::Viommu>> {
        self.viommu.as_ref().map(|d| d.arc())
    }

    /// May be attached to PASIDs (`IOMMU_HWPT_ALLOC_PASID`).
    pub fn pasid_compat(&self) -> bool {
        self.pasid
    }

    pub fn id(&self) -> ObjectId {
        self.hdr.id()
    }

    pub fn parent(&self) -> &Arc<HwptPaging> {
        self.parent.arc()
    }

    pub fn domain(&self) -> &Arc<dyn Domain> {
        &self.domain
    }

    pub fn fault(&self) -> Option<&Arc<Fault>> {
        self.fault.as_ref().map(|d| d.arc())
    }
}

impl ObjectType for HwptNested {
    const KIND: ObjectKind = ObjectKind::HwptNested;
    fn header(&self) -> &ObjHeader {
        &self.hdr
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::HwptNested(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::HwptNested(o) => Some(o),
            _ => None,
        }
    }
}

/// A dependency edge on either kind of HWPT (what an attachment holds).
pub enum HwptDep {
    Paging(Dep<HwptPaging>),
    Nested(Dep<HwptNested>),
}

impl HwptDep {
    pub fn id(&self) -> ObjectId {
        match self {
            HwptDep::Paging(h) => h.id(),
            HwptDep::Nested(h) => h.id(),
        }
    }

    pub fn domain(&self) -> &Arc<dyn Domain> {
        match self {
            HwptDep::Paging(h) => h.domain(),
            HwptDep::Nested(h) => h.domain(),
        }
    }

    /// The paging HWPT whose IOAS this attachment uses (the parent for a
    /// nested one).
    pub fn paging(&self) -> &Arc<HwptPaging> {
        match self {
            HwptDep::Paging(h) => h.arc(),
            HwptDep::Nested(h) => h.parent(),
        }
    }

    pub fn fault(&self) -> Option<&Arc<Fault>> {
        match self {
            HwptDep::Paging(h) => h.fault(),
            HwptDep::Nested(h) => h.fault(),
        }
    }

    /// Same HWPT object?
    pub fn same(&self, other: &HwptDep) -> bool {
        match (self, other) {
            (HwptDep::Paging(a), HwptDep::Paging(b)) => Arc::ptr_eq(a.arc(), b.arc()),
            (HwptDep::Nested(a), HwptDep::Nested(b)) => Arc::ptr_eq(a.arc(), b.arc()),
            _ => false,
        }
    }

    /// An automatically created paging HWPT (destroyed with its last user).
    pub fn is_auto(&self) -> bool {
        matches!(self, HwptDep::Paging(h) if h.is_auto())
    }
}

/// Input of `IOMMU_HWPT_ALLOC`.
pub struct HwptAllocArgs<'a> {
    pub flags: u32,
    pub dev_id: ObjectId,
    pub pt_id: ObjectId,
    pub fault_id: ObjectId,
    /// Driver data (`data_type`, `data_len`, a reader of `data_uptr`).
    pub data: uiommufd_hw::UserData<'a>,
}

/// A HWPT built by [`hwpt_alloc`], published by [`PendingHwpt::publish`].
pub struct PendingHwpt<'a> {
    /// Holds the IOAS's HWPT list lock until publication, as the kernel holds
    /// `ioas->mutex`, so automatic domain selection never sees it half made.
    /// First field: dropped first, so an unpublished HWPT's teardown (which
    /// takes that lock) runs after it is released.
    _list: Option<std::sync::MutexGuard<'a, Vec<std::sync::Weak<HwptPaging>>>>,
    pending: crate::object::Pending<'a>,
    hwpt: Object,
}

impl PendingHwpt<'_> {
    pub fn id(&self) -> ObjectId {
        self.pending.id()
    }

    pub fn publish(self) {
        let PendingHwpt { pending, hwpt, _list } = self;
        match hwpt {
            Object::HwptPaging(h) => pending.publish(h),
            Object::HwptNested(h) => pending.publish(h),
            _ => unreachable!("only HWPTs are built here"),
        }
    }
}

/// `iommufd_hwpt_alloc`: a paging HWPT on an IOAS or a nested one on a
/// nesting-parent HWPT, checked in the kernel's order.
pub fn hwpt_alloc<'c>(
    ctx: &'c crate::Iommufd,
    ioas_holder: &'c mut Option<Borrowed<Ioas>>,
    args: HwptAllocArgs<'_>,
) -> Result<PendingHwpt<'c>> {
    use uiommufd_abi as abi;
    use uiommufd_hw::device::PagingRequest;

    use crate::error::{einval, eopnotsupp, ErrnoExt};

    let HwptAllocArgs { flags, dev_id, pt_id, fault_id, mut data } = args;
    if (data.data_type == abi::IOMMU_HWPT_DATA_NONE) != (data.len == 0) {
        return Err(einval("data_type and data_len disagree"));
    }
    let idev = ctx.get::<crate::device::Device>(dev_id)?;
    let kind = ctx.objects().kind_of(pt_id).ok_or(einval("no IOAS or HWPT with this ID"))?;
    let fault_valid = flags & abi::IOMMU_HWPT_FAULT_ID_VALID != 0;
    let fault = || -> Result<Option<Dep<Fault>>> {
        if fault_valid {
            Ok(Some(Dep::new(&ctx.get::<Fault>(fault_id)?)))
        } else {
            Ok(None)
        }
    };
    match kind {
        ObjectKind::Ioas => {
            if flags & !ctx.release().hwpt_paging_flags != 0 {
                return Err(eopnotsupp("unknown HWPT flags"));
            }
            let dirty = flags & abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0;
            let nest_parent = flags & abi::IOMMU_HWPT_ALLOC_NEST_PARENT != 0;
            if dirty && !idev.dev().capable(uiommufd_hw::device::Cap::DirtyTracking) {
                return Err(eopnotsupp("the device's IOMMU cannot track dirty pages"));
            }
            if fault_valid && nest_parent {
                return Err(eopnotsupp("a nesting parent cannot take faults"));
            }
            *ioas_holder = Some(ctx.get::<Ioas>(pt_id)?);
            let ioas = ioas_holder.as_ref().expect("just set");
            let list = ioas.hwpts();
            let pending = ctx.objects().reserve()?;
            let req =
                PagingRequest { nest_parent, dirty_tracking: dirty, pasid: flags & abi::IOMMU_HWPT_ALLOC_PASID != 0 };
            let domain = if data.len != 0 {
                idev.dev().alloc_paging_data(&req, &mut data).ctx("the driver refused the paging domain's data")?
            } else {
                idev.dev().alloc_paging(&req).ctx("allocating a paging domain")?
            };
            let pf = PagingFlags {
                nest_parent,
                dirty_tracking: dirty,
                enforce_cache_coherency: idev.enforce_cache_coherency(),
                pasid: req.pasid,
            };
            let hwpt = Arc::new(HwptPaging::new(pending.id(), ioas, domain, pf).with_fault(fault()?));
            hwpt.add_to_iopt()?;
            let mut list = list;
            list.push(Arc::downgrade(&hwpt));
            Ok(PendingHwpt { pending, hwpt: Object::HwptPaging(hwpt), _list: Some(list) })
        }
        ObjectKind::HwptPaging => {
            if flags & !ctx.release().hwpt_nested_flags != 0 || data.len == 0 {
                return Err(eopnotsupp("nested HWPTs take only FAULT_ID_VALID/PASID and need data"));
            }
            let parent = ctx.get::<HwptPaging>(pt_id)?;
            if parent.is_auto() || !parent.nest_parent() || !idev.dev().owns_domain(parent.domain().as_ref()) {
                return Err(einval("the parent is not a nesting parent of this IOMMU"));
            }
            let pending = ctx.objects().reserve()?;
            let dflags = flags & !abi::IOMMU_HWPT_FAULT_ID_VALID;
            let domain =
                idev.dev().alloc_nested(parent.domain(), dflags, &mut data).ctx("allocating a nested domain")?;
            let pasid = flags & abi::IOMMU_HWPT_ALLOC_PASID != 0;
            let hwpt = Arc::new(HwptNested::new(pending.id(), &parent, domain, fault()?, pasid));
            Ok(PendingHwpt { pending, hwpt: Object::HwptNested(hwpt), _list: None })
        }
        ObjectKind::Viommu => {
            // `iommufd_viommu_alloc_hwpt_nested`.
            let viommu = ctx.get::<crate::viommu::Viommu>(pt_id)?;
            viommu.check_nested_alloc(&idev, flags, data.len)?;
            let pending = ctx.objects().reserve()?;
            let domain = viommu.alloc_domain_nested(flags & !abi::IOMMU_HWPT_FAULT_ID_VALID, &mut data)?;
            let parent = Borrowed::detached(viommu.parent());
            let pasid = flags & abi::IOMMU_HWPT_ALLOC_PASID != 0;
            let hwpt = HwptNested::new(pending.id(), &parent, domain, fault()?, pasid).with_viommu(Dep::new(&viommu));
            Ok(PendingHwpt { pending, hwpt: Object::HwptNested(Arc::new(hwpt)), _list: None })
        }
        _ => Err(einval("not an IOAS or a paging HWPT")),
    }
}

/// `IOMMU_GET_HW_INFO` result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HwInfo {
    pub data_type: u32,
    pub data: Vec<u8>,
    pub capabilities: u64,
    pub max_pasid_log2: u8,
}

/// `iommufd_get_hw_info` (engine half): `in_type` is the requested type,
/// `IOMMU_HW_INFO_TYPE_DEFAULT` unless `IOMMU_HW_INFO_FLAG_INPUT_TYPE`.
pub fn get_hw_info(ctx: &crate::Iommufd, dev_id: ObjectId, in_type: u32) -> Result<HwInfo> {
    use crate::error::ErrnoExt;
    use uiommufd_abi as abi;
    let idev = ctx.get::<crate::device::Device>(dev_id)?;
    let (data_type, data) = idev.dev().hw_info(in_type).ctx("the driver has no such hardware information")?;
    let mut capabilities = 0u64;
    if idev.dev().capable(uiommufd_hw::device::Cap::DirtyTracking) {
        capabilities |= abi::IOMMU_HW_CAP_DIRTY_TRACKING as u64;
    }
    if ctx.release().hw_info_ats_not_supported && !idev.dev().pci_ats_supported() {
        capabilities |= abi::IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED as u64;
    }
    Ok(HwInfo { data_type, data, capabilities, max_pasid_log2: idev.dev().max_pasid_log2() as u8 })
}

/// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
pub fn set_dirty_tracking(ctx: &crate::Iommufd, hwpt_id: ObjectId, enable: bool) -> Result<()> {
    let hwpt = ctx.get::<HwptPaging>(hwpt_id)?;
    hwpt.ioas().iopt().set_dirty_tracking(hwpt.domain().as_ref(), enable)
}

/// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
pub fn get_dirty_bitmap(ctx: &crate::Iommufd, hwpt_id: ObjectId, b: &crate::io_pagetable::DirtyBitmap) -> Result<()> {
    let hwpt = ctx.get::<HwptPaging>(hwpt_id)?;
    hwpt.ioas().iopt().read_and_clear_dirty(hwpt.domain().as_ref(), b, ctx.release().dirty_bitmap_reports_errors)
}

/// `IOMMU_HWPT_INVALIDATE` on a nested HWPT or a vIOMMU; any other object
/// is the release's `invalidate_other_object` (an unknown ID is `ENOENT`).
/// On return `array.entry_num` holds the number of requests handled, also
/// on failure.
pub fn invalidate(ctx: &crate::Iommufd, hwpt_id: ObjectId, array: &mut uiommufd_hw::UserDataArray<'_>) -> Result<()> {
    if ctx.objects().kind_of(hwpt_id) == Some(ObjectKind::Viommu) {
        return crate::viommu::cache_invalidate(ctx, hwpt_id, array);
    }
    let hwpt = match ctx.get::<HwptNested>(hwpt_id) {
        Ok(h) => h,
        Err(e) => {
            array.entry_num = 0;
            return match ctx.objects().kind_of(hwpt_id) {
                Some(_) => Err(crate::Error::new(ctx.release().invalidate_other_object, "not a nested HWPT or vIOMMU")),
                None => Err(e),
            };
        }
    };
    hwpt.domain()
        .cache_invalidate_user(array)
        .map_err(|e| crate::Error::new(e, "the driver refused an invalidation request"))
}
