//! Handlers for the core iommufd commands: parse, check in the kernel's
//! order, call the engine, reply.

use core::mem::offset_of;

use uiommufd_abi as abi;
use uiommufd_core::error::{eopnotsupp, ErrnoExt, Error, Result};
use uiommufd_core::Errno;
use uiommufd_memory::user;
use zerocopy::{FromBytes, IntoBytes};

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
    cmd.dst_iova = u.ctx.ioas_copy(cmd.dst_ioas_id, cmd.src_ioas_id, cmd.flags, cmd.length, cmd.dst_iova, cmd.src_iova)?;
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

/// A command whose engine side does not exist yet: the struct is still
/// parsed under the common rules, then the request is refused.
pub fn not_yet<T: FromBytes + IntoBytes>(u: &mut Ucmd) -> Result<i32> {
    let _cmd: T = u.read()?;
    Err(eopnotsupp("this command is not implemented yet"))
}
