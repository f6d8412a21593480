//! Handlers for the core iommufd commands: parse, check in the kernel's
//! order, call the engine, reply.

use core::mem::offset_of;

use uiommufd_abi as abi;
use uiommufd_core::error::{eopnotsupp, ErrnoExt, Error, Result};
use uiommufd_core::Errno;
use uiommufd_memory::user;
use zerocopy::IntoBytes;

use crate::ucmd::Ucmd;

/// `IOMMU_DESTROY`.
pub fn destroy(u: &mut Ucmd) -> Result<i32> {
    let cmd: abi::IommuDestroy = u.read()?;
    u.ctx.destroy(cmd.id)?;
    Ok(0)
}

/// `IOMMU_IOAS_ALLOC`: reserve, reply, then publish, so a failed reply
/// leaves no IOAS behind.
pub fn ioas_alloc(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuIoasAlloc = u.read()?;
    if cmd.flags != 0 {
        return Err(eopnotsupp("IOAS_ALLOC flags must be 0"));
    }
    let (pending, ioas) = u.ctx.ioas_alloc_pending()?;
    cmd.out_ioas_id = pending.id();
    u.respond(&cmd)?;
    pending.publish(ioas);
    Ok(0)
}

/// `IOMMU_OPTION`: only `val64` is written back.
pub fn option(u: &mut Ucmd) -> Result<i32> {
    let cmd: abi::IommuOption = u.read()?;
    if cmd.__reserved != 0 {
        return Err(eopnotsupp("IOMMU_OPTION reserved field must be 0"));
    }
    let val = u.ctx.option(cmd.option_id, cmd.op, cmd.object_id, cmd.val64)?;
    u.respond_field(offset_of!(abi::IommuOption, val64), &val.to_ne_bytes())?;
    Ok(0)
}

/// `IOMMU_IOAS_MAP`.
pub fn ioas_map(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuIoasMap = u.read()?;
    if cmd.__reserved != 0 {
        return Err(eopnotsupp("IOAS_MAP reserved field must be 0"));
    }
    cmd.iova = u.ctx.ioas_map(cmd.ioas_id, cmd.flags, cmd.user_va, cmd.length, cmd.iova)?;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_IOAS_UNMAP`: the unmapped length goes back in `length`.
pub fn ioas_unmap(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuIoasUnmap = u.read()?;
    cmd.length = u.ctx.ioas_unmap(cmd.ioas_id, cmd.iova, cmd.length)?;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_IOAS_COPY`.
pub fn ioas_copy(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuIoasCopy = u.read()?;
    cmd.dst_iova =
        u.ctx.ioas_copy(cmd.dst_ioas_id, cmd.src_ioas_id, cmd.flags, cmd.length, cmd.dst_iova, cmd.src_iova)?;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_IOAS_IOVA_RANGES`: fill what fits, report the total, and fail
/// with `EMSGSIZE` (after replying) when the array was too small.
pub fn ioas_iova_ranges(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuIoasIovaRanges = u.read()?;
    if cmd.__reserved != 0 {
        return Err(eopnotsupp("IOVA_RANGES reserved field must be 0"));
    }
    let (ranges, align) = u.ctx.ioas_iova_ranges(cmd.ioas_id)?;
    let max = cmd.num_iovas as usize;
    let elm = core::mem::size_of::<abi::IommuIovaRange>() as u64;
    for (i, &(start, last)) in ranges.iter().take(max).enumerate() {
        let r = abi::IommuIovaRange { start, last };
        user::copy_to_user(cmd.allowed_iovas.wrapping_add(i as u64 * elm), r.as_bytes()).ctx("writing the ranges")?;
    }
    cmd.num_iovas = ranges.len() as u32;
    cmd.out_iova_alignment = align;
    u.respond(&cmd)?;
    if ranges.len() > max {
        return Err(Error::new(Errno::EMSGSIZE, "the range array is too small"));
    }
    Ok(0)
}

/// `IOMMU_IOAS_NOIOMMU_GET_PA` with the rules of a kernel built with
/// `CONFIG_IOMMUFD_NOIOMMU` (ioas.c, `iommufd_ioas_noiommu_get_pa`).
pub fn ioas_noiommu_get_pa(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuIoasNoiommuGetPa = u.read()?;
    if !uiommufd_memory::sys::capable_sys_rawio() {
        return Err(Error::new(Errno::EPERM, "NOIOMMU_GET_PA needs CAP_SYS_RAWIO"));
    }
    if cmd.flags != 0 || cmd.__reserved != 0 {
        return Err(eopnotsupp("NOIOMMU_GET_PA flags and reserved field must be 0"));
    }
    if cmd.length == 0 {
        return Err(Error::new(Errno::EINVAL, "length is zero"));
    }
    if cmd.iova == u64::MAX {
        return Err(Error::new(Errno::EOVERFLOW, "IOVA is ULONG_MAX"));
    }
    let (phys, length) = u.ctx.ioas(cmd.ioas_id)?.iopt().get_phys(cmd.iova, cmd.length)?;
    cmd.out_phys = phys;
    cmd.length = length;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_IOAS_ALLOW_IOVAS`.
pub fn ioas_allow_iovas(u: &mut Ucmd) -> Result<i32> {
    let cmd: abi::IommuIoasAllowIovas = u.read()?;
    if cmd.__reserved != 0 {
        return Err(eopnotsupp("ALLOW_IOVAS reserved field must be 0"));
    }
    // The kernel looks the IOAS up before it reads the array.
    drop(u.ctx.ioas(cmd.ioas_id)?);
    let elm = core::mem::size_of::<abi::IommuIovaRange>() as u64;
    let mut ranges = Vec::new();
    for i in 0..cmd.num_iovas as u64 {
        let mut r = abi::IommuIovaRange::default();
        user::copy_from_user(r.as_mut_bytes(), cmd.allowed_iovas.wrapping_add(i * elm)).ctx("reading the ranges")?;
        ranges.push((r.start, r.last));
        // Check as we go, as the kernel does while loading its tree.
        uiommufd_core::ctx::check_allowed(&ranges)?;
    }
    u.ctx.ioas_allow_iovas(cmd.ioas_id, ranges)?;
    Ok(0)
}

/// `IOMMU_VFIO_IOAS`: get, set or clear the VFIO compatibility IOAS.
pub fn vfio_ioas(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuVfioIoas = u.read()?;
    if cmd.__reserved != 0 {
        return Err(eopnotsupp("VFIO_IOAS reserved field must be 0"));
    }
    match cmd.op {
        abi::IOMMU_VFIO_IOAS_GET => {
            cmd.ioas_id = u.ctx.vfio_ioas_get()?;
            u.respond(&cmd)?;
        }
        abi::IOMMU_VFIO_IOAS_SET => u.ctx.vfio_ioas_set(cmd.ioas_id)?,
        abi::IOMMU_VFIO_IOAS_CLEAR => u.ctx.vfio_ioas_clear(),
        _ => return Err(eopnotsupp("unknown VFIO_IOAS op")),
    }
    Ok(0)
}

/// `IOMMU_HWPT_ALLOC`.
pub fn hwpt_alloc(u: &mut Ucmd) -> Result<i32> {
    use uiommufd_core::hwpt::{self, HwptAllocArgs};
    let mut cmd: abi::IommuHwptAlloc = u.read()?;
    if cmd.__reserved != 0 {
        return Err(eopnotsupp("HWPT_ALLOC reserved field must be 0"));
    }
    let mut reader = crate::ucmd::struct_reader(cmd.data_uptr, cmd.data_len as u64);
    let data = uiommufd_hw::UserData { data_type: cmd.data_type, len: cmd.data_len, reader: &mut reader };
    let args = HwptAllocArgs { flags: cmd.flags, dev_id: cmd.dev_id, pt_id: cmd.pt_id, fault_id: cmd.fault_id, data };
    let mut ioas = None;
    let pending = hwpt::hwpt_alloc(u.ctx, &mut ioas, args)?;
    cmd.out_hwpt_id = pending.id();
    u.respond(&cmd)?;
    pending.publish();
    Ok(0)
}

/// The kernel's `clear_user`: zero `len` bytes of user memory at `addr`
/// in place, a chunk at a time (`len` is the user's, up to 4 GiB: never a
/// buffer of that size here). `EFAULT` at the first chunk that cannot be
/// written; the chunks before it stay cleared, as the kernel's do.
fn clear_user(addr: u64, len: usize) -> std::result::Result<(), uiommufd_abi::Errno> {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(ZEROS.len());
        user::copy_to_user(addr.wrapping_add(done as u64), &ZEROS[..n])?;
        done += n;
    }
    Ok(())
}

/// `IOMMU_GET_HW_INFO`: copy the driver data truncated to the user's
/// buffer, zero the rest of it, report the full length.
pub fn get_hw_info(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuHwInfo = u.read()?;
    if cmd.flags & !u.ctx.release().hw_info_flags != 0 {
        return Err(eopnotsupp("unknown GET_HW_INFO flags"));
    }
    if cmd.__reserved != [0; 3] {
        return Err(eopnotsupp("GET_HW_INFO reserved fields must be 0"));
    }
    if cmd.flags & abi::IOMMU_HW_INFO_FLAG_INPUT_TYPE == 0 {
        cmd.set_in_data_type(abi::IOMMU_HW_INFO_TYPE_DEFAULT);
    }
    let info = uiommufd_core::hwpt::get_hw_info(u.ctx, cmd.dev_id, cmd.in_data_type())?;
    let ulen = cmd.data_len as usize;
    let n = ulen.min(info.data.len());
    user::copy_to_user(cmd.data_uptr, &info.data[..n]).ctx("writing the hardware information")?;
    if n < ulen {
        clear_user(cmd.data_uptr.wrapping_add(n as u64), ulen - n).ctx("clearing the rest of the buffer")?;
    }
    cmd.data_len = info.data.len() as u32;
    cmd.out_data_type = info.data_type;
    cmd.out_capabilities = info.capabilities;
    cmd.out_max_pasid_log2 = info.max_pasid_log2;
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
pub fn hwpt_set_dirty_tracking(u: &mut Ucmd) -> Result<i32> {
    let cmd: abi::IommuHwptSetDirtyTracking = u.read()?;
    if cmd.flags & !abi::IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0 {
        return Err(eopnotsupp("unknown dirty tracking flags"));
    }
    let enable = cmd.flags & abi::IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0;
    uiommufd_core::hwpt::set_dirty_tracking(u.ctx, cmd.hwpt_id, enable)?;
    Ok(0)
}

/// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
pub fn hwpt_get_dirty_bitmap(u: &mut Ucmd) -> Result<i32> {
    let cmd: abi::IommuHwptGetDirtyBitmap = u.read()?;
    if cmd.flags & !abi::IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0 || cmd.__reserved != 0 {
        return Err(eopnotsupp("unknown dirty bitmap flags"));
    }
    let b = uiommufd_core::io_pagetable::DirtyBitmap {
        iova: cmd.iova,
        length: cmd.length,
        page_size: cmd.page_size,
        data: cmd.data,
        no_clear: cmd.flags & abi::IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0,
    };
    uiommufd_core::hwpt::get_dirty_bitmap(u.ctx, cmd.hwpt_id, &b)?;
    Ok(0)
}

/// Bound on one `IOMMU_HWPT_INVALIDATE` call, far above real batches.
const INVALIDATE_ENTRY_NUM_MAX: u32 = 1 << 19;

/// `IOMMU_HWPT_INVALIDATE`: `entry_num` is always written back with the
/// number of requests handled.
pub fn hwpt_invalidate(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuHwptInvalidate = u.read()?;
    let ps = uiommufd_memory::page_size() as u32;
    let r = if cmd.__reserved != 0 {
        cmd.entry_num = 0;
        Err(eopnotsupp("HWPT_INVALIDATE reserved field must be 0"))
    } else if cmd.entry_num != 0
        && (cmd.data_uptr == 0 || cmd.entry_len == 0 || cmd.entry_len > ps || cmd.entry_num > INVALIDATE_ENTRY_NUM_MAX)
    {
        cmd.entry_num = 0;
        Err(Error::new(Errno::EINVAL, "bad invalidation array"))
    } else {
        let mut reader = crate::ucmd::array_reader(cmd.data_uptr, cmd.entry_len as u64);
        let mut array = uiommufd_hw::UserDataArray {
            data_type: cmd.data_type,
            entry_len: cmd.entry_len,
            entry_num: cmd.entry_num,
            reader: &mut reader,
        };
        let r = uiommufd_core::hwpt::invalidate(u.ctx, cmd.hwpt_id, &mut array);
        cmd.entry_num = array.entry_num;
        r
    };
    u.respond(&cmd)?;
    r.map(|()| 0)
}

/// `IOMMU_FAULT_QUEUE_ALLOC`: a fault object and its descriptor.
pub fn fault_alloc(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuFaultAlloc = u.read()?;
    let (pending, fault) = uiommufd_core::fault::fault_alloc(u.ctx, cmd.flags)?;
    let file = crate::file::FaultFile::new(u.ctx, &fault);
    let fd = u
        .host
        .install(std::sync::Arc::new(crate::File::Fault(file)), true)
        .map_err(|e| Error::new(e, "no descriptor for the fault queue"))?;
    cmd.out_fault_id = pending.id();
    cmd.out_fault_fd = fd as u32;
    if let Err(e) = u.respond(&cmd) {
        u.host.uninstall(fd);
        return Err(e);
    }
    pending.publish(fault);
    Ok(0)
}
