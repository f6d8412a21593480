//! The per-file context (`struct iommufd_ctx`) and its options.
//!
//! One [`Iommufd`] exists per open of `/dev/iommu` (or of `/dev/vfio/vfio`,
//! which differs only in its default accounting mode). Closing the file is
//! dropping the context: every object is destroyed, leaves first.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use uiommufd_abi as abi;

use crate::error::{einval, eopnotsupp, eperm, Result};
use crate::ioas::{Ioas, IoasHandle};
use crate::object::{Borrowed, ObjectId, ObjectType, Pending, Table};
use crate::release::KernelRelease;

/// How pinned pages are charged against `RLIMIT_MEMLOCK`
/// (`IOMMU_OPTION_RLIMIT_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountMode {
    /// Value 0: charged to the user (the iommufd default).
    User = 0,
    /// Value 1: charged to the process's `mm` (VFIO type1's behaviour).
    Process = 1,
}

/// Which device node the context was opened through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenedAs {
    /// `/dev/iommu`.
    Iommu,
    /// `/dev/vfio/vfio` served by iommufd: defaults to process accounting.
    VfioContainer,
}

/// One open iommufd: its objects and options.
pub struct Iommufd {
    objects: Table,
    account_mode: AtomicU8,
    /// The IOAS VFIO compatibility uses (`ictx->vfio_ioas`): not a
    /// dependency edge; it lapses when the IOAS is destroyed.
    vfio_ioas: Mutex<Option<(ObjectId, Weak<Ioas>)>>,
    /// The kernel release whose answers this context gives.
    release: &'static KernelRelease,
    /// Driver regions user space maps through the file (`ictx->mt_mmap`).
    mmaps: Arc<crate::mmap::MmapSpace>,
}

impl Default for Iommufd {
    fn default() -> Self {
        Self::open(OpenedAs::Iommu)
    }
}

impl Iommufd {
    /// A fresh context, as `open("/dev/iommu")` creates.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::open(OpenedAs::Iommu))
    }

    /// A fresh context opened through `how`, answering as the process's
    /// release ([`KernelRelease::process_default`]).
    pub fn open(how: OpenedAs) -> Self {
        Self::open_as(how, KernelRelease::process_default())
    }

    /// A fresh context opened through `how`, answering as `release`.
    pub fn open_as(how: OpenedAs, release: &'static KernelRelease) -> Self {
        // The VmPin/VmLck table must exist before the program forks.
        uiommufd_memory::vmstat::init();
        let mode = match how {
            OpenedAs::Iommu => AccountMode::User,
            OpenedAs::VfioContainer => AccountMode::Process,
        };
        Iommufd {
            objects: Table::default(),
            account_mode: AtomicU8::new(mode as u8),
            vfio_ioas: Mutex::new(None),
            release,
            mmaps: Arc::default(),
        }
    }

    /// The kernel release this context emulates.
    pub fn release(&self) -> &'static KernelRelease {
        self.release
    }

    /// The object table (typed lookups for the layers above).
    pub fn objects(&self) -> &Table {
        &self.objects
    }

    /// Borrow object `id` as a `T` for one operation (`ENOENT` otherwise).
    #[inline]
    pub fn get<T: ObjectType>(&self, id: ObjectId) -> Result<Borrowed<T>> {
        self.objects.get(id)
    }

    /// `IOMMU_DESTROY`. A vIOMMU one of whose regions the program has
    /// mapped is in use (`EBUSY`: the kernel's vma holds its users count).
    pub fn destroy(&self, id: ObjectId) -> Result<()> {
        if let Ok(viommu) = self.get::<crate::viommu::Viommu>(id) {
            if self.mmaps.mapped_by(&viommu) {
                return Err(crate::error::ebusy("a region of the vIOMMU is mapped"));
            }
        }
        self.objects.destroy(id)
    }

    /// The context's mmap space (driver regions for `mmap(2)`).
    pub fn mmap_space(&self) -> &Arc<crate::mmap::MmapSpace> {
        &self.mmaps
    }

    /// `IOMMU_IOAS_ALLOC`, reserve half: the caller publishes with
    /// [`Pending::publish`] once nothing else can fail (for example after
    /// copying the ID back to the user).
    pub fn ioas_alloc_pending(&self) -> Result<(Pending<'_>, Arc<Ioas>)> {
        let pending = self.objects.reserve()?;
        let ioas = Arc::new(Ioas::new(pending.id()));
        Ok((pending, ioas))
    }

    /// `IOMMU_IOAS_ALLOC`: a new, empty IO address space.
    pub fn ioas_alloc(&self) -> Result<ObjectId> {
        let (pending, ioas) = self.ioas_alloc_pending()?;
        let id = pending.id();
        pending.publish(ioas);
        Ok(id)
    }

    /// Borrow IOAS `id` (`ENOENT` if it is not one).
    #[inline]
    pub fn ioas(&self, id: ObjectId) -> Result<Borrowed<Ioas>> {
        self.get::<Ioas>(id)
    }

    /// A typed handle on IOAS `id` (`ENOENT` if it is not one): map and
    /// unmap without a table lookup per call. See [`IoasHandle`].
    pub fn ioas_handle(self: &Arc<Self>, id: ObjectId) -> Result<IoasHandle> {
        let ioas = self.ioas(id)?;
        Ok(IoasHandle::new(Arc::clone(self), Arc::clone(ioas.arc())))
    }

    /// `IOMMU_IOAS_MAP`: see [`Ioas::map`].
    pub fn ioas_map(&self, ioas_id: ObjectId, flags: u32, user_va: u64, length: u64, iova: u64) -> Result<u64> {
        crate::ioas::check_map_flags(flags, &[iova, length])?;
        self.ioas(ioas_id)?.map(flags, user_va, length, iova, self.account_mode() == AccountMode::Process)
    }

    /// `IOMMU_IOAS_UNMAP`: see [`Ioas::unmap`].
    pub fn ioas_unmap(&self, ioas_id: ObjectId, iova: u64, length: u64) -> Result<u64> {
        self.ioas(ioas_id)?.unmap(iova, length)
    }

    /// `IOMMU_IOAS_COPY`: returns the destination IOVA.
    pub fn ioas_copy(
        &self,
        dst: ObjectId,
        src: ObjectId,
        flags: u32,
        length: u64,
        dst_iova: u64,
        src_iova: u64,
    ) -> Result<u64> {
        crate::ioas::check_map_flags(flags, &[length, src_iova, dst_iova])?;
        let list = self.ioas(src)?.iopt().get_pages(src_iova, length)?;
        let dst = self.ioas(dst)?;
        let fixed = (flags & crate::ioas::map_flags::FIXED_IOVA != 0).then_some(dst_iova);
        dst.iopt().map_pages(list, length, fixed, crate::ioas::prot_from_flags(flags))
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the usable ranges and the IOVA alignment.
    pub fn ioas_iova_ranges(&self, ioas_id: ObjectId) -> Result<(Vec<(u64, u64)>, u64)> {
        Ok(self.ioas(ioas_id)?.iopt().iova_ranges())
    }

    /// `IOMMU_IOAS_ALLOW_IOVAS`: each range must have `start < last` and
    /// must not overlap another (`EINVAL`).
    pub fn ioas_allow_iovas(&self, ioas_id: ObjectId, ranges: Vec<(u64, u64)>) -> Result<()> {
        let ioas = self.ioas(ioas_id)?;
        check_allowed(&ranges)?;
        ioas.iopt().set_allowed(ranges)
    }

    fn vfio_slot(&self) -> std::sync::MutexGuard<'_, Option<(ObjectId, Weak<Ioas>)>> {
        self.vfio_ioas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VFIO compatibility IOAS, if set and still alive (`ENODEV`
    /// otherwise).
    pub fn vfio_ioas(&self) -> Result<Borrowed<Ioas>> {
        let slot = self.vfio_slot().clone();
        if let Some((id, weak)) = slot {
            if let Ok(ioas) = self.get::<Ioas>(id) {
                if weak.as_ptr() == Arc::as_ptr(ioas.arc()) {
                    return Ok(ioas);
                }
            }
        }
        Err(crate::error::enodev("no VFIO compatibility IOAS"))
    }

    /// `IOMMU_VFIO_IOAS_GET`.
    pub fn vfio_ioas_get(&self) -> Result<ObjectId> {
        Ok(self.vfio_ioas()?.id())
    }

    /// `IOMMU_VFIO_IOAS_SET`.
    pub fn vfio_ioas_set(&self, ioas_id: ObjectId) -> Result<()> {
        let ioas = self.ioas(ioas_id)?;
        *self.vfio_slot() = Some((ioas_id, Arc::downgrade(ioas.arc())));
        Ok(())
    }

    /// `IOMMU_VFIO_IOAS_CLEAR`.
    pub fn vfio_ioas_clear(&self) {
        *self.vfio_slot() = None;
    }

    pub fn account_mode(&self) -> AccountMode {
        match self.account_mode.load(Ordering::Acquire) {
            0 => AccountMode::User,
            _ => AccountMode::Process,
        }
    }

    /// `IOMMU_OPTION`: get (returns the value) or set (returns `val`) one
    /// option, with the kernel's checks in the kernel's order.
    pub fn option(&self, option_id: u32, op: u16, object_id: ObjectId, val: u64) -> Result<u64> {
        match option_id {
            abi::IOMMU_OPTION_RLIMIT_MODE => self.option_rlimit_mode(op, object_id, val),
            abi::IOMMU_OPTION_HUGE_PAGES => {
                let ioas = self.get::<Ioas>(object_id)?;
                match op {
                    abi::IOMMU_OPTION_OP_GET => Ok(ioas.huge_pages() as u64),
                    abi::IOMMU_OPTION_OP_SET => match val {
                        0 | 1 => ioas.set_huge_pages(val == 1).map(|()| val),
                        _ => Err(einval("HUGE_PAGES takes 0 or 1")),
                    },
                    _ => Err(eopnotsupp("unknown option op")),
                }
            }
            _ => Err(eopnotsupp("unknown option")),
        }
    }

    fn option_rlimit_mode(&self, op: u16, object_id: ObjectId, val: u64) -> Result<u64> {
        if object_id != 0 {
            return Err(eopnotsupp("RLIMIT_MODE is global: object_id must be 0"));
        }
        match op {
            abi::IOMMU_OPTION_OP_GET => Ok((self.account_mode() == AccountMode::Process) as u64),
            abi::IOMMU_OPTION_OP_SET => {
                if !uiommufd_memory::sys::capable_sys_resource() {
                    return Err(eperm("RLIMIT_MODE needs CAP_SYS_RESOURCE"));
                }
                // The kernel checks emptiness before the value, under the
                // object table's lock (ioas.c, iommufd_option_rlimit_mode):
                // a bad value with objects around is EBUSY.
                self.objects.with_empty(|| {
                    let mode = match val {
                        0 => AccountMode::User,
                        1 => AccountMode::Process,
                        _ => return Err(einval("RLIMIT_MODE takes 0 or 1")),
                    };
                    self.account_mode.store(mode as u8, Ordering::Release);
                    Ok(val)
                })?
            }
            _ => Err(eopnotsupp("unknown option op")),
        }
    }
}

/// `iommufd_ioas_load_iovas`: each range is non-empty and disjoint from
/// the ones before it.
pub fn check_allowed(ranges: &[(u64, u64)]) -> Result<()> {
    for (i, &(s, l)) in ranges.iter().enumerate() {
        if s >= l {
            return Err(einval("allowed range has start >= last"));
        }
        if ranges[..i].iter().any(|&(ps, pl)| s <= pl && ps <= l) {
            return Err(einval("allowed ranges overlap"));
        }
    }
    Ok(())
}

impl Drop for Iommufd {
    fn drop(&mut self) {
        self.objects.destroy_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Errno;

    #[test]
    fn ioas_alloc_and_destroy() {
        let ctx = Iommufd::new();
        let a = ctx.ioas_alloc().unwrap();
        let b = ctx.ioas_alloc().unwrap();
        assert_eq!((a, b), (1, 2));
        ctx.destroy(a).unwrap();
        assert_eq!(ctx.destroy(a).unwrap_err().errno, Errno::ENOENT);
        assert_eq!(ctx.objects().len(), 1);
    }

    #[test]
    fn huge_pages_option_is_per_ioas() {
        let ctx = Iommufd::new();
        let get = |id| ctx.option(abi::IOMMU_OPTION_HUGE_PAGES, abi::IOMMU_OPTION_OP_GET, id, 0);
        assert_eq!(get(0).unwrap_err().errno, Errno::ENOENT);
        let id = ctx.ioas_alloc().unwrap();
        assert_eq!(get(id).unwrap(), 1);
        let set = |v| ctx.option(abi::IOMMU_OPTION_HUGE_PAGES, abi::IOMMU_OPTION_OP_SET, id, v);
        assert_eq!(set(2).unwrap_err().errno, Errno::EINVAL);
        set(0).unwrap();
        assert_eq!(get(id).unwrap(), 0);
        set(1).unwrap();
        assert_eq!(get(id).unwrap(), 1);
        assert_eq!(ctx.option(abi::IOMMU_OPTION_HUGE_PAGES, 7, id, 0).unwrap_err().errno, Errno::EOPNOTSUPP);
    }

    #[test]
    fn rlimit_mode_rules() {
        let ctx = Iommufd::new();
        let rl = |op, obj, v| ctx.option(abi::IOMMU_OPTION_RLIMIT_MODE, op, obj, v);
        assert_eq!(rl(abi::IOMMU_OPTION_OP_GET, 0, 9).unwrap(), 0);
        assert_eq!(rl(abi::IOMMU_OPTION_OP_GET, 1, 0).unwrap_err().errno, Errno::EOPNOTSUPP);
        assert_eq!(ctx.option(99, 0, 0, 0).unwrap_err().errno, Errno::EOPNOTSUPP);
        if uiommufd_memory::sys::capable_sys_resource() {
            assert_eq!(rl(abi::IOMMU_OPTION_OP_SET, 0, 2).unwrap_err().errno, Errno::EINVAL);
            rl(abi::IOMMU_OPTION_OP_SET, 0, 1).unwrap();
            assert_eq!(ctx.account_mode(), AccountMode::Process);
            ctx.ioas_alloc().unwrap();
            assert_eq!(rl(abi::IOMMU_OPTION_OP_SET, 0, 0).unwrap_err().errno, Errno::EBUSY);
        } else {
            assert_eq!(rl(abi::IOMMU_OPTION_OP_SET, 0, 1).unwrap_err().errno, Errno::EPERM);
        }
        let vfio = Iommufd::open(OpenedAs::VfioContainer);
        assert_eq!(vfio.account_mode(), AccountMode::Process);
    }
}
