//! [`Iommufd`]: one open `/dev/iommu` and every command on it.

use std::os::fd::BorrowedFd;
use std::path::Path;

use uiommufd_abi as abi;
use uiommufd_abi::Errno;
use zerocopy::{FromBytes, IntoBytes};

use crate::backend::{Backend, Handle};
use crate::data::{HwInfoData, HwptData, InvalidateEntry};
use crate::error::{Error, InvalidateError, Result};
use crate::ids::*;
use crate::queue::{EventQueue, FaultQueue};
use crate::selftest::Selftest;

/// `size_of::<T>()` as the `size`/`argsz` field of a uAPI struct.
pub(crate) fn size32<T>() -> u32 {
    size_of::<T>() as u32
}

/// One open `/dev/iommu`: an iommufd context with its objects.
///
/// Every method is one command of the kernel's uAPI (named in its
/// documentation), with the kernel's checks and errnos, on whichever
/// [`Backend`] opened it. Objects live until [`destroy`](Iommufd::destroy)
/// or until the `Iommufd` is dropped (closing the file destroys them all,
/// as in the kernel).
///
/// ```
/// use uiommufd_api::{Backend, Iommufd};
///
/// let fd = Iommufd::open(&Backend::emulated())?;
/// let ioas = fd.ioas_alloc()?;
/// fd.destroy(ioas)?;
/// // An ID that is gone: the kernel's ENOENT.
/// assert_eq!(fd.destroy(ioas).unwrap_err().errno(), uiommufd_api::Errno::ENOENT);
/// # Ok::<(), uiommufd_api::Error>(())
/// ```
pub struct Iommufd {
    pub(crate) handle: Handle,
}

impl std::fmt::Debug for Iommufd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iommufd").field("fd", &self.handle.number()).field("backend", &self.backend()).finish()
    }
}

/// Options of `IOMMU_OPTION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IommuOption {
    /// `IOMMU_OPTION_RLIMIT_MODE` (global): 0 charges pinned pages to the
    /// user, 1 to the process. Setting it needs `CAP_SYS_RESOURCE`.
    RlimitMode,
    /// `IOMMU_OPTION_HUGE_PAGES` (per IOAS): 1 lets the IOAS map with huge
    /// IOMMU pages (the default), 0 maps page by page.
    HugePages,
}

impl IommuOption {
    fn id(self) -> u32 {
        match self {
            IommuOption::RlimitMode => abi::IOMMU_OPTION_RLIMIT_MODE,
            IommuOption::HugePages => abi::IOMMU_OPTION_HUGE_PAGES,
        }
    }
}

/// The usable IOVA space of an IOAS (`IOMMU_IOAS_IOVA_RANGES`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IovaRanges {
    /// The ranges, in increasing order.
    pub ranges: Vec<IovaRange>,
    /// The alignment every mapping's IOVA must have.
    pub alignment: u64,
}

/// What `IOMMU_GET_HW_INFO` says about the IOMMU behind a device.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HwInfo {
    /// `enum iommu_hw_info_type` of [`data`](HwInfo::data).
    pub data_type: u32,
    /// The driver's description, as many bytes as the driver has (the
    /// kernel's `data_len` on return).
    pub raw: Vec<u8>,
    /// PASID width of the device (0: no PASID).
    pub max_pasid_log2: u8,
    /// `IOMMU_HW_CAP_*` bits.
    pub capabilities: u64,
}

impl HwInfo {
    /// The driver data as `T`, when it is of `T`'s type (zero-extended if
    /// the driver wrote less than `T`).
    pub fn data<T: HwInfoData>(&self) -> Option<T> {
        if self.data_type != T::INFO_TYPE {
            return None;
        }
        let mut buf = vec![0u8; size_of::<T>().max(self.raw.len())];
        buf[..self.raw.len()].copy_from_slice(&self.raw);
        T::read_from_prefix(&buf).ok().map(|(v, _)| v)
    }
}

/// An `IOMMU_HWPT_ALLOC` request, built up and passed to
/// [`Iommufd::hwpt_alloc`].
///
/// ```
/// # use uiommufd_api::*;
/// # fn f(fd: &Iommufd, dev: DeviceId, ioas: IoasId) -> Result<()> {
/// let parent = fd.hwpt_alloc(&HwptAlloc::new(dev, ioas).flags(HwptFlags::NEST_PARENT))?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HwptAlloc<'a> {
    dev: DeviceId,
    pt: PtId,
    flags: HwptFlags,
    data_type: u32,
    data: &'a [u8],
    fault: Option<FaultId>,
}

impl<'a> HwptAlloc<'a> {
    /// A paging HWPT for device `dev` on IOAS `pt`, or (with
    /// [`data`](HwptAlloc::data)) a nested HWPT on parent HWPT or vIOMMU
    /// `pt`.
    pub fn new(dev: DeviceId, pt: impl Into<PtId>) -> HwptAlloc<'a> {
        HwptAlloc { dev, pt: pt.into(), flags: HwptFlags::EMPTY, data_type: 0, data: &[], fault: None }
    }

    /// Allocation flags.
    pub fn flags(mut self, flags: HwptFlags) -> Self {
        self.flags = flags;
        self
    }

    /// The driver data of a nested HWPT (its type comes with `T`).
    pub fn data<T: HwptData>(mut self, data: &'a T) -> Self {
        self.data_type = T::DATA_TYPE;
        self.data = data.as_bytes();
        self
    }

    /// Driver data by type number and bytes, for types this crate does not
    /// know.
    pub fn raw_data(mut self, data_type: u32, data: &'a [u8]) -> Self {
        self.data_type = data_type;
        self.data = data;
        self
    }

    /// Report the HWPT's I/O page faults to fault queue `fault`
    /// (`IOMMU_HWPT_FAULT_ID_VALID`).
    pub fn fault(mut self, fault: FaultId) -> Self {
        self.fault = Some(fault);
        self
    }
}

impl Iommufd {
    /// Open `/dev/iommu` on `backend`.
    pub fn open(backend: &Backend) -> Result<Iommufd> {
        Ok(Iommufd { handle: Handle::open(backend, Path::new("/dev/iommu"))? })
    }

    /// The backend this file was opened on.
    pub fn backend(&self) -> Backend {
        self.handle.backend()
    }

    /// The descriptor number (of the process for the kernel, of the engine's
    /// table for the emulated backend).
    pub fn raw_fd(&self) -> i32 {
        self.handle.number()
    }

    /// `IOMMU_DESTROY`: destroy object `id` (`EBUSY` while something depends
    /// on it, `ENOENT` if there is no such object).
    pub fn destroy(&self, id: impl Into<ObjectId>) -> Result<()> {
        let mut cmd = abi::IommuDestroy { size: size32::<abi::IommuDestroy>(), id: id.into().0 };
        self.handle.ioctl_plain("IOMMU_DESTROY", abi::IOMMU_DESTROY, &mut cmd).map(drop)
    }

    /// `IOMMU_IOAS_ALLOC`: a new, empty IO address space.
    pub fn ioas_alloc(&self) -> Result<IoasId> {
        let mut cmd = abi::IommuIoasAlloc { size: size32::<abi::IommuIoasAlloc>(), ..Default::default() };
        self.handle.ioctl_plain("IOMMU_IOAS_ALLOC", abi::IOMMU_IOAS_ALLOC, &mut cmd)?;
        Ok(IoasId(cmd.out_ioas_id))
    }

    /// `IOMMU_IOAS_MAP`: map `length` bytes of this process's memory at
    /// `user_va` into `ioas` at `iova` (`None`: the IOAS picks an address
    /// every attached domain can translate). Returns the IOVA. The pages
    /// are pinned until unmapped.
    ///
    /// # Safety
    ///
    /// Devices attached to `ioas` may read and (with
    /// [`MapFlags::WRITEABLE`]) write the memory at any time until it is
    /// unmapped, concurrently with this program. The caller must keep the
    /// range allocated for as long as it is mapped (with the emulated
    /// backend, device writes land in this process's pages themselves) and
    /// must not hold Rust references to memory a device may write while it
    /// may write it; access it through raw pointers, volatile or atomic
    /// operations. This is the contract `KVM_SET_USER_MEMORY_REGION` has.
    pub unsafe fn ioas_map(
        &self,
        ioas: IoasId,
        user_va: u64,
        length: u64,
        iova: Option<u64>,
        flags: MapFlags,
    ) -> Result<u64> {
        let fixed = if iova.is_some() { abi::IOMMU_IOAS_MAP_FIXED_IOVA } else { 0 };
        let mut cmd = abi::IommuIoasMap {
            size: size32::<abi::IommuIoasMap>(),
            flags: flags.0 | fixed,
            ioas_id: ioas.0,
            user_va,
            length,
            iova: iova.unwrap_or(0),
            ..Default::default()
        };
        // SAFETY: `user_va` is only pinned, never read or written by the
        // call itself (a bad address is EFAULT); what devices do with it
        // later is the caller's contract above.
        unsafe { self.handle.ioctl("IOMMU_IOAS_MAP", abi::IOMMU_IOAS_MAP, &mut cmd)? };
        Ok(cmd.iova)
    }

    /// `IOMMU_IOAS_MAP_FILE`: map `length` bytes of file `fd` (a memfd)
    /// from offset `start` into `ioas` at `iova` (`None`: the IOAS picks).
    /// Returns the IOVA.
    pub fn ioas_map_file(
        &self,
        ioas: IoasId,
        fd: BorrowedFd<'_>,
        start: u64,
        length: u64,
        iova: Option<u64>,
        flags: MapFlags,
    ) -> Result<u64> {
        use std::os::fd::AsRawFd;
        let fixed = if iova.is_some() { abi::IOMMU_IOAS_MAP_FIXED_IOVA } else { 0 };
        let mut cmd = abi::IommuIoasMapFile {
            size: size32::<abi::IommuIoasMapFile>(),
            flags: flags.0 | fixed,
            ioas_id: ioas.0,
            fd: fd.as_raw_fd(),
            start,
            length,
            iova: iova.unwrap_or(0),
        };
        self.handle.ioctl_plain("IOMMU_IOAS_MAP_FILE", abi::IOMMU_IOAS_MAP_FILE, &mut cmd)?;
        Ok(cmd.iova)
    }

    /// `IOMMU_IOAS_UNMAP`: unmap every whole mapping inside
    /// `[iova, iova + length)`; returns the bytes unmapped (`ENOENT` if
    /// nothing was mapped there).
    pub fn ioas_unmap(&self, ioas: IoasId, iova: u64, length: u64) -> Result<u64> {
        let mut cmd = abi::IommuIoasUnmap { size: size32::<abi::IommuIoasUnmap>(), ioas_id: ioas.0, iova, length };
        self.handle.ioctl_plain("IOMMU_IOAS_UNMAP", abi::IOMMU_IOAS_UNMAP, &mut cmd)?;
        Ok(cmd.length)
    }

    /// `IOMMU_IOAS_UNMAP` of the whole IOVA space (`iova` 0, `length`
    /// `u64::MAX`); returns the bytes unmapped (0 if none).
    pub fn ioas_unmap_all(&self, ioas: IoasId) -> Result<u64> {
        self.ioas_unmap(ioas, 0, u64::MAX)
    }

    /// `IOMMU_IOAS_COPY`: map into `dst` at `dst_iova` (`None`: `dst`
    /// picks) the pages `src` maps at `[src_iova, src_iova + length)`,
    /// without pinning them again. Returns the IOVA in `dst`.
    pub fn ioas_copy(
        &self,
        dst: IoasId,
        dst_iova: Option<u64>,
        src: IoasId,
        src_iova: u64,
        length: u64,
        flags: MapFlags,
    ) -> Result<u64> {
        let fixed = if dst_iova.is_some() { abi::IOMMU_IOAS_MAP_FIXED_IOVA } else { 0 };
        let mut cmd = abi::IommuIoasCopy {
            size: size32::<abi::IommuIoasCopy>(),
            flags: flags.0 | fixed,
            dst_ioas_id: dst.0,
            src_ioas_id: src.0,
            length,
            dst_iova: dst_iova.unwrap_or(0),
            src_iova,
        };
        self.handle.ioctl_plain("IOMMU_IOAS_COPY", abi::IOMMU_IOAS_COPY, &mut cmd)?;
        Ok(cmd.dst_iova)
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the IOVA ranges `ioas` can map today (what
    /// every attached device and reserved region leaves), and the alignment
    /// mappings need.
    pub fn ioas_iova_ranges(&self, ioas: IoasId) -> Result<IovaRanges> {
        let mut ranges: Vec<abi::IommuIovaRange> = Vec::new();
        loop {
            let mut cmd = abi::IommuIoasIovaRanges {
                size: size32::<abi::IommuIoasIovaRanges>(),
                ioas_id: ioas.0,
                num_iovas: ranges.len() as u32,
                allowed_iovas: if ranges.is_empty() { 0 } else { ranges.as_mut_ptr() as u64 },
                ..Default::default()
            };
            // SAFETY: `allowed_iovas` is null or `ranges`, `num_iovas`
            // entries long; the kernel writes at most that many.
            match unsafe { self.handle.ioctl("IOMMU_IOAS_IOVA_RANGES", abi::IOMMU_IOAS_IOVA_RANGES, &mut cmd) } {
                Ok(_) => {
                    ranges.truncate(cmd.num_iovas as usize);
                    let ranges = ranges.iter().map(|r| IovaRange { start: r.start, last: r.last }).collect();
                    return Ok(IovaRanges { ranges, alignment: cmd.out_iova_alignment });
                }
                // EMSGSIZE: the array was too small; `num_iovas` says how
                // many there are now (ranges may change between calls).
                Err(e) if e.errno() == Errno::EMSGSIZE && cmd.num_iovas as usize > ranges.len() => {
                    ranges.resize(cmd.num_iovas as usize, Default::default());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `IOMMU_IOAS_ALLOW_IOVAS`: restrict where `ioas` may place mappings
    /// it picks the IOVA of, and keep devices whose reserved regions
    /// intersect `ranges` from attaching (empty: allow everything again).
    pub fn ioas_allow_iovas(&self, ioas: IoasId, ranges: &[IovaRange]) -> Result<()> {
        let raw: Vec<abi::IommuIovaRange> =
            ranges.iter().map(|r| abi::IommuIovaRange { start: r.start, last: r.last }).collect();
        let mut cmd = abi::IommuIoasAllowIovas {
            size: size32::<abi::IommuIoasAllowIovas>(),
            ioas_id: ioas.0,
            num_iovas: raw.len() as u32,
            allowed_iovas: raw.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `allowed_iovas` is `raw`, `num_iovas` entries, only read.
        unsafe { self.handle.ioctl("IOMMU_IOAS_ALLOW_IOVAS", abi::IOMMU_IOAS_ALLOW_IOVAS, &mut cmd) }.map(drop)
    }

    /// `IOMMU_IOAS_CHANGE_PROCESS`: charge the pinned pages of file-backed
    /// mappings to the calling process (after `fork`, say).
    pub fn ioas_change_process(&self) -> Result<()> {
        let mut cmd = abi::IommuIoasChangeProcess { size: size32::<abi::IommuIoasChangeProcess>(), __reserved: 0 };
        self.handle.ioctl_plain("IOMMU_IOAS_CHANGE_PROCESS", abi::IOMMU_IOAS_CHANGE_PROCESS, &mut cmd).map(drop)
    }

    fn option(&self, option: IommuOption, op: u16, object: Option<ObjectId>, val: u64) -> Result<u64> {
        let mut cmd = abi::IommuOption {
            size: size32::<abi::IommuOption>(),
            option_id: option.id(),
            op,
            object_id: object.map_or(0, |o| o.0),
            val64: val,
            ..Default::default()
        };
        self.handle.ioctl_plain("IOMMU_OPTION", abi::IOMMU_OPTION, &mut cmd)?;
        Ok(cmd.val64)
    }

    /// `IOMMU_OPTION` get: the value of `option` (of `object`, for
    /// per-object options; `None` for global ones).
    pub fn option_get(&self, option: IommuOption, object: Option<ObjectId>) -> Result<u64> {
        self.option(option, abi::IOMMU_OPTION_OP_GET, object, 0)
    }

    /// `IOMMU_OPTION` set: give `option` (of `object`) the value `val`.
    pub fn option_set(&self, option: IommuOption, object: Option<ObjectId>, val: u64) -> Result<()> {
        self.option(option, abi::IOMMU_OPTION_OP_SET, object, val).map(drop)
    }

    fn vfio_ioas(&self, op: u16, ioas: u32) -> Result<u32> {
        let mut cmd =
            abi::IommuVfioIoas { size: size32::<abi::IommuVfioIoas>(), ioas_id: ioas, op, ..Default::default() };
        self.handle.ioctl_plain("IOMMU_VFIO_IOAS", abi::IOMMU_VFIO_IOAS, &mut cmd)?;
        Ok(cmd.ioas_id)
    }

    /// `IOMMU_VFIO_IOAS` get: the IOAS the VFIO type1 compatibility layer
    /// uses (created on first use).
    pub fn vfio_ioas_get(&self) -> Result<IoasId> {
        self.vfio_ioas(abi::IOMMU_VFIO_IOAS_GET, 0).map(IoasId)
    }

    /// `IOMMU_VFIO_IOAS` set: make `ioas` the compatibility IOAS.
    pub fn vfio_ioas_set(&self, ioas: IoasId) -> Result<()> {
        self.vfio_ioas(abi::IOMMU_VFIO_IOAS_SET, ioas.0).map(drop)
    }

    /// `IOMMU_VFIO_IOAS` clear: forget the compatibility IOAS.
    pub fn vfio_ioas_clear(&self) -> Result<()> {
        self.vfio_ioas(abi::IOMMU_VFIO_IOAS_CLEAR, 0).map(drop)
    }

    /// `IOMMU_HWPT_ALLOC`: a paging HWPT on an IOAS, or a nested HWPT on a
    /// nesting parent or vIOMMU, as `req` describes.
    pub fn hwpt_alloc(&self, req: &HwptAlloc<'_>) -> Result<HwptId> {
        let mut flags = req.flags.0;
        if req.fault.is_some() {
            flags |= abi::IOMMU_HWPT_FAULT_ID_VALID;
        }
        let mut cmd = abi::IommuHwptAlloc {
            size: size32::<abi::IommuHwptAlloc>(),
            flags,
            dev_id: req.dev.0,
            pt_id: req.pt.0,
            data_type: req.data_type,
            data_len: req.data.len() as u32,
            data_uptr: if req.data.is_empty() { 0 } else { req.data.as_ptr() as u64 },
            fault_id: req.fault.map_or(0, |f| f.0),
            ..Default::default()
        };
        // SAFETY: `data_uptr` is null or `req.data`, `data_len` bytes, only
        // read.
        unsafe { self.handle.ioctl("IOMMU_HWPT_ALLOC", abi::IOMMU_HWPT_ALLOC, &mut cmd)? };
        Ok(HwptId(cmd.out_hwpt_id))
    }

    /// `IOMMU_HWPT_INVALIDATE`: hand `entries` to the driver of nested HWPT
    /// or vIOMMU `id`. Returns how many were handled (all of them); on
    /// failure the error says how many were handled before it.
    pub fn hwpt_invalidate<E: InvalidateEntry>(
        &self,
        id: impl Into<ObjectId>,
        entries: &[E],
    ) -> Result<u32, InvalidateError> {
        self.hwpt_invalidate_raw(id, E::DATA_TYPE, size_of::<E>() as u32, entries.as_bytes(), entries.len() as u32)
    }

    /// `IOMMU_HWPT_INVALIDATE` with the request as numbers: `entry_num`
    /// entries of `entry_len` bytes each in `data` (which must hold them
    /// all; `EINVAL` otherwise, before the call).
    pub fn hwpt_invalidate_raw(
        &self,
        id: impl Into<ObjectId>,
        data_type: u32,
        entry_len: u32,
        data: &[u8],
        entry_num: u32,
    ) -> Result<u32, InvalidateError> {
        const OP: &str = "IOMMU_HWPT_INVALIDATE";
        if (entry_len as u64) * (entry_num as u64) > data.len() as u64 {
            let error = Error::new(Errno::EINVAL, OP, Some("the entries do not fit the buffer".into()));
            return Err(InvalidateError { error, handled: 0 });
        }
        let mut cmd = abi::IommuHwptInvalidate {
            size: size32::<abi::IommuHwptInvalidate>(),
            hwpt_id: id.into().0,
            data_uptr: if data.is_empty() { 0 } else { data.as_ptr() as u64 },
            data_type,
            entry_len,
            entry_num,
            ..Default::default()
        };
        // SAFETY: `data_uptr` is `data` (null when empty), which holds
        // `entry_num * entry_len` bytes (checked above), only read.
        match unsafe { self.handle.ioctl(OP, abi::IOMMU_HWPT_INVALIDATE, &mut cmd) } {
            Ok(_) => Ok(cmd.entry_num),
            Err(error) => Err(InvalidateError { error, handled: cmd.entry_num }),
        }
    }

    /// `IOMMU_HWPT_SET_DIRTY_TRACKING`: start or stop tracking which pages
    /// DMA writes through `hwpt` (allocated with
    /// [`HwptFlags::DIRTY_TRACKING`]).
    pub fn hwpt_set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> Result<()> {
        let mut cmd = abi::IommuHwptSetDirtyTracking {
            size: size32::<abi::IommuHwptSetDirtyTracking>(),
            flags: if enable { abi::IOMMU_HWPT_DIRTY_TRACKING_ENABLE } else { 0 },
            hwpt_id: hwpt.0,
            __reserved: 0,
        };
        self.handle.ioctl_plain("IOMMU_HWPT_SET_DIRTY_TRACKING", abi::IOMMU_HWPT_SET_DIRTY_TRACKING, &mut cmd).map(drop)
    }

    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`: set bit `n` of `bitmap` (bit 0 of
    /// word 0 first) for each `page_size` page `n` of
    /// `[iova, iova + length)` DMA dirtied, and clear the dirty state
    /// unless `no_clear`. `bitmap` must hold a bit per page (`EINVAL`
    /// otherwise, before the call).
    pub fn hwpt_get_dirty_bitmap(
        &self,
        hwpt: HwptId,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
        no_clear: bool,
    ) -> Result<()> {
        const OP: &str = "IOMMU_HWPT_GET_DIRTY_BITMAP";
        check_bitmap(OP, length, page_size, bitmap.len())?;
        let mut cmd = abi::IommuHwptGetDirtyBitmap {
            size: size32::<abi::IommuHwptGetDirtyBitmap>(),
            hwpt_id: hwpt.0,
            flags: if no_clear { abi::IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR } else { 0 },
            iova,
            length,
            page_size,
            data: bitmap.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `data` is `bitmap`, which holds a bit for each page of
        // the range (checked above); the kernel writes no further.
        unsafe { self.handle.ioctl(OP, abi::IOMMU_HWPT_GET_DIRTY_BITMAP, &mut cmd) }.map(drop)
    }

    /// `IOMMU_GET_HW_INFO`: what the IOMMU behind bound device `dev` is and
    /// can do.
    pub fn get_hw_info(&self, dev: DeviceId) -> Result<HwInfo> {
        self.hw_info(dev, None)
    }

    /// `IOMMU_GET_HW_INFO` asking for the description of type `data_type`
    /// (`IOMMU_HW_INFO_FLAG_INPUT_TYPE`; `EOPNOTSUPP` if the driver has no
    /// such description).
    pub fn get_hw_info_of_type(&self, dev: DeviceId, data_type: u32) -> Result<HwInfo> {
        self.hw_info(dev, Some(data_type))
    }

    fn hw_info(&self, dev: DeviceId, in_type: Option<u32>) -> Result<HwInfo> {
        // Larger than any driver's description today; the kernel zero-fills
        // what it does not write and reports how much it has.
        let mut buf = [0u8; 256];
        let mut cmd = abi::IommuHwInfo {
            size: size32::<abi::IommuHwInfo>(),
            flags: if in_type.is_some() { abi::IOMMU_HW_INFO_FLAG_INPUT_TYPE } else { 0 },
            dev_id: dev.0,
            data_len: buf.len() as u32,
            data_uptr: buf.as_mut_ptr() as u64,
            ..Default::default()
        };
        if let Some(t) = in_type {
            cmd.set_in_data_type(t);
        }
        // SAFETY: `data_uptr` is `buf`, `data_len` bytes.
        unsafe { self.handle.ioctl("IOMMU_GET_HW_INFO", abi::IOMMU_GET_HW_INFO, &mut cmd)? };
        let len = (cmd.data_len as usize).min(buf.len());
        Ok(HwInfo {
            data_type: cmd.out_data_type,
            raw: buf[..len].to_vec(),
            max_pasid_log2: cmd.out_max_pasid_log2,
            capabilities: cmd.out_capabilities,
        })
    }

    /// `IOMMU_FAULT_QUEUE_ALLOC`: a queue the I/O page faults of HWPTs
    /// allocated with [`HwptAlloc::fault`] arrive on.
    pub fn fault_queue_alloc(&self) -> Result<FaultQueue> {
        const OP: &str = "IOMMU_FAULT_QUEUE_ALLOC";
        let mut cmd = abi::IommuFaultAlloc { size: size32::<abi::IommuFaultAlloc>(), ..Default::default() };
        self.handle.ioctl_plain(OP, abi::IOMMU_FAULT_QUEUE_ALLOC, &mut cmd)?;
        let handle = self.handle.adopt(OP, cmd.out_fault_fd as i32)?;
        Ok(FaultQueue { id: FaultId(cmd.out_fault_id), handle })
    }

    /// `IOMMU_VIOMMU_ALLOC`: a virtual IOMMU of type `viommu_type`
    /// (`IOMMU_VIOMMU_TYPE_*`) for device `dev`, over nesting-parent HWPT
    /// `parent`.
    pub fn viommu_alloc(&self, dev: DeviceId, parent: HwptId, viommu_type: u32) -> Result<ViommuId> {
        self.viommu_alloc_raw(dev, parent, viommu_type, &mut [])
    }

    /// [`viommu_alloc`](Iommufd::viommu_alloc) with driver data, which the
    /// driver reads and may write back (a Tegra241 CMDQV's mmap window).
    pub fn viommu_alloc_with<T: IntoBytes + FromBytes>(
        &self,
        dev: DeviceId,
        parent: HwptId,
        viommu_type: u32,
        data: &mut T,
    ) -> Result<ViommuId> {
        self.viommu_alloc_raw(dev, parent, viommu_type, data.as_mut_bytes())
    }

    fn viommu_alloc_raw(&self, dev: DeviceId, parent: HwptId, viommu_type: u32, data: &mut [u8]) -> Result<ViommuId> {
        let mut cmd = abi::IommuViommuAlloc {
            size: size32::<abi::IommuViommuAlloc>(),
            type_: viommu_type,
            dev_id: dev.0,
            hwpt_id: parent.0,
            data_len: data.len() as u32,
            data_uptr: if data.is_empty() { 0 } else { data.as_mut_ptr() as u64 },
            ..Default::default()
        };
        // SAFETY: `data_uptr` is null or `data`, `data_len` bytes.
        unsafe { self.handle.ioctl("IOMMU_VIOMMU_ALLOC", abi::IOMMU_VIOMMU_ALLOC, &mut cmd)? };
        Ok(ViommuId(cmd.out_viommu_id))
    }

    /// `IOMMU_VDEVICE_ALLOC`: present device `dev` under `viommu` with the
    /// guest's ID for it (`virt_id`: a vSID, vRID...).
    pub fn vdevice_alloc(&self, viommu: ViommuId, dev: DeviceId, virt_id: u64) -> Result<VdeviceId> {
        let mut cmd = abi::IommuVdeviceAlloc {
            size: size32::<abi::IommuVdeviceAlloc>(),
            viommu_id: viommu.0,
            dev_id: dev.0,
            virt_id,
            ..Default::default()
        };
        self.handle.ioctl_plain("IOMMU_VDEVICE_ALLOC", abi::IOMMU_VDEVICE_ALLOC, &mut cmd)?;
        Ok(VdeviceId(cmd.out_vdevice_id))
    }

    /// `IOMMU_VEVENTQ_ALLOC`: an event queue of type `veventq_type` on
    /// `viommu`, holding at most `depth` events.
    pub fn veventq_alloc(&self, viommu: ViommuId, veventq_type: u32, depth: u32) -> Result<EventQueue> {
        const OP: &str = "IOMMU_VEVENTQ_ALLOC";
        let mut cmd = abi::IommuVeventqAlloc {
            size: size32::<abi::IommuVeventqAlloc>(),
            viommu_id: viommu.0,
            type_: veventq_type,
            veventq_depth: depth,
            ..Default::default()
        };
        self.handle.ioctl_plain(OP, abi::IOMMU_VEVENTQ_ALLOC, &mut cmd)?;
        let handle = self.handle.adopt(OP, cmd.out_veventq_fd as i32)?;
        Ok(EventQueue { id: VeventqId(cmd.out_veventq_id), handle })
    }

    /// `IOMMU_HW_QUEUE_ALLOC`: hand the guest queue memory at
    /// `[iova, iova + length)` of the vIOMMU's nesting parent to its
    /// hardware queue `index` of type `queue_type`.
    pub fn hw_queue_alloc(
        &self,
        viommu: ViommuId,
        queue_type: u32,
        index: u32,
        iova: u64,
        length: u64,
    ) -> Result<HwQueueId> {
        let mut cmd = abi::IommuHwQueueAlloc {
            size: size32::<abi::IommuHwQueueAlloc>(),
            viommu_id: viommu.0,
            type_: queue_type,
            index,
            nesting_parent_iova: iova,
            length,
            ..Default::default()
        };
        self.handle.ioctl_plain("IOMMU_HW_QUEUE_ALLOC", abi::IOMMU_HW_QUEUE_ALLOC, &mut cmd)?;
        Ok(HwQueueId(cmd.out_hw_queue_id))
    }

    /// The selftest's commands (`IOMMU_TEST_CMD`), served by kernels built
    /// with `CONFIG_IOMMUFD_TEST` and by the engine.
    pub fn selftest(&self) -> Selftest<'_> {
        Selftest { fd: self }
    }
}

/// `EINVAL` unless `words` 64-bit words hold a bit for each `page_size`
/// page of `length` bytes. A zero or odd page size is left to the kernel
/// to refuse (it does before touching the bitmap).
pub(crate) fn check_bitmap(op: &'static str, length: u64, page_size: u64, words: usize) -> Result<()> {
    if page_size == 0 {
        return Ok(());
    }
    let pages = length.div_ceil(page_size);
    if pages.div_ceil(64) > words as u64 {
        return Err(Error::new(Errno::EINVAL, op, Some("the bitmap has fewer bits than the range has pages".into())));
    }
    Ok(())
}
