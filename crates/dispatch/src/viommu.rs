//! Handlers for the vIOMMU family: `IOMMU_VIOMMU_ALLOC`,
//! `IOMMU_VDEVICE_ALLOC`, `IOMMU_VEVENTQ_ALLOC`, `IOMMU_HW_QUEUE_ALLOC`.
//! The engine side is `uiommufd_core::viommu` / `uiommufd_core::veventq`;
//! each handler parses, calls it, replies, and publishes only after the
//! reply, so a failed reply leaves nothing behind.

use std::sync::Arc;

use uiommufd_abi as abi;
use uiommufd_core::error::{Error, Result};
use uiommufd_core::{veventq, viommu};
use uiommufd_memory::user;

use crate::file::{File, VeventqFile};
use crate::ucmd::Ucmd;

/// `IOMMU_VIOMMU_ALLOC`. The driver data (if `data_len` is not 0) is read
/// and written back in place, truncated to `data_len`.
pub fn viommu_alloc(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuViommuAlloc = u.read()?;
    let (uptr, ulen) = (cmd.data_uptr, cmd.data_len as usize);
    let mut reader = crate::ucmd::struct_reader(uptr, ulen as u64);
    let data =
        (ulen != 0).then_some(uiommufd_hw::UserData { data_type: cmd.type_, len: cmd.data_len, reader: &mut reader });
    let mut write_back = |out: &[u8]| user::copy_to_user(uptr, &out[..ulen.min(out.len())]);
    let (pending, obj) =
        viommu::viommu_alloc(u.ctx, cmd.flags, cmd.type_, cmd.dev_id, cmd.hwpt_id, data, &mut write_back)?;
    cmd.out_viommu_id = pending.id();
    u.respond(&cmd)?;
    pending.publish(obj);
    Ok(0)
}

/// `IOMMU_VDEVICE_ALLOC`.
pub fn vdevice_alloc(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuVdeviceAlloc = u.read()?;
    let pending = viommu::vdevice_alloc(u.ctx, cmd.viommu_id, cmd.dev_id, cmd.virt_id)?;
    cmd.out_vdevice_id = pending.id();
    u.respond(&cmd)?;
    pending.publish();
    Ok(0)
}

/// `IOMMU_VEVENTQ_ALLOC`: a vEVENTQ object and its descriptor.
pub fn veventq_alloc(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuVeventqAlloc = u.read()?;
    let (pending, queue) =
        veventq::veventq_alloc(u.ctx, cmd.flags, cmd.__reserved, cmd.viommu_id, cmd.type_, cmd.veventq_depth)?;
    let file = VeventqFile::new(u.ctx, &queue);
    let fd = u
        .host
        .install(Arc::new(File::Veventq(file)), true)
        .map_err(|e| Error::new(e, "no descriptor for the event queue"))?;
    cmd.out_veventq_id = pending.id();
    cmd.out_veventq_fd = fd as u32;
    if let Err(e) = u.respond(&cmd) {
        u.host.uninstall(fd);
        return Err(e);
    }
    pending.publish(queue);
    Ok(0)
}

/// `IOMMU_HW_QUEUE_ALLOC`.
pub fn hw_queue_alloc(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuHwQueueAlloc = u.read()?;
    let (pending, queue) = viommu::hw_queue_alloc(
        u.ctx,
        cmd.flags,
        cmd.viommu_id,
        cmd.type_,
        cmd.index,
        cmd.nesting_parent_iova,
        cmd.length,
    )?;
    cmd.out_hw_queue_id = pending.id();
    u.respond(&cmd)?;
    pending.publish(queue);
    Ok(0)
}
