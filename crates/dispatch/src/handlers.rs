//! Handlers for the core iommufd commands: parse, check in the kernel's
//! order, call the engine, reply.

use core::mem::offset_of;

use uiommufd_abi as abi;
use uiommufd_core::error::{eopnotsupp, Result};
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

/// A command whose engine side does not exist yet: the struct is still
/// parsed under the common rules, then the request is refused.
pub fn not_yet<T: FromBytes + IntoBytes>(u: &mut Ucmd) -> Result<i32> {
    let _cmd: T = u.read()?;
    Err(eopnotsupp("this command is not implemented yet"))
}
