//! Dispatch: from an ioctl on an iommufd file to the engine and back.
//!
//! This layer owns the kernel's user-command rules (`iommufd_fops_ioctl` and
//! `copy_struct_from_user`), implemented once for every command:
//!
//! 1. an ioctl number outside the iommufd range goes to the VFIO type1
//!    compatibility path, which answers `ENOTTY` for what it does not know;
//! 2. the leading `u32 size` is read first (`EFAULT` if unreadable);
//! 3. the request must match the table entry exactly and the emulated
//!    release must have the command (`ENOTTY` otherwise);
//! 4. `size` below the command's mandatory prefix is `EINVAL`;
//! 5. a shorter struct is zero-extended; a longer one must be zero past what
//!    we know (`E2BIG`), read from user memory (`EFAULT` if unreadable);
//! 6. the handler runs on a private copy and writes back only what the
//!    kernel writes back, never more than the user's `size`.
//!
//! Every user pointer is touched through `uiommufd_memory::user`, so a bad
//! pointer is `EFAULT` and never a crash.
//!
//! The other files uiommufd serves live here too ([`file`](mod@file)): VFIO
//! device cdevs over emulated PCI functions ([`vfio_device`]), the legacy VFIO
//! group nodes in front of them ([`vfio_group`]), fault and event queues,
//! the selftest's access, fail-nth.

pub mod file;
mod handlers;
pub mod inspect;
mod map_file;
mod selftest;
pub mod status;
mod table;
mod ucmd;
mod vfio_compat;
pub mod vfio_device;
mod vfio_dmabuf;
pub mod vfio_group;
pub mod vfio_migration;
mod viommu;

pub use file::{FdHost, File, IoCaps, LocalFds, Node};
pub use table::{op_name, OPS};
pub use ucmd::Ucmd;
pub use vfio_device::{VfioDevice, VfioDeviceFile};
pub use vfio_group::{VfioGroup, VfioGroupFile};

use std::sync::Arc;

use uiommufd_abi::test_cmd::IOMMU_TEST_CMD as TEST_CMD;
use uiommufd_abi::{ioctl, Errno, IOMMUFD_CMD_BASE};
use uiommufd_core::error::ErrnoExt;
use uiommufd_core::{Error, Iommufd};

/// Run ioctl `request` with argument `arg` on the iommufd context `ctx`.
///
/// Returns the ioctl's non-negative result, or the error whose errno the
/// caller must report (its context says which check failed).
pub fn iommufd_ioctl(ctx: &Arc<Iommufd>, host: &dyn FdHost, request: u64, arg: u64) -> Result<i32, Error> {
    // The kernel's `cmd` is an unsigned int: the upper half of the C
    // `unsigned long request` is dropped before anything looks at it.
    let cmd = request as u32;
    let nr = ioctl::ioc_nr(cmd);
    let Some(slot) = nr.checked_sub(IOMMUFD_CMD_BASE).filter(|i| (*i as usize) < OPS.len()) else {
        return vfio_compat_ioctl(ctx, cmd, arg);
    };
    let mut size = [0u8; 4];
    uiommufd_memory::copy_from_user(&mut size, arg).ctx("reading the command size")?;
    let user_size = u32::from_ne_bytes(size);
    let op = match &OPS[slot as usize] {
        Some(op) if op.ioctl == cmd && (nr == ioctl::ioc_nr(TEST_CMD) || ctx.release().has_command(nr)) => op,
        _ => return Err(Error::new(Errno::ENOTTY, "unknown iommufd command")),
    };
    if (user_size as usize) < op.min_size {
        return Err(Error::new(Errno::EINVAL, "size is below the command's mandatory fields"));
    }
    let mut ucmd = Ucmd::new(ctx, host, arg, user_size);
    (op.execute)(&mut ucmd)
}

/// The VFIO type1 container ioctls served on an iommufd (`vfio_compat.c`);
/// anything else outside the iommufd table is `ENOTTY`.
fn vfio_compat_ioctl(ctx: &Arc<Iommufd>, cmd: u32, arg: u64) -> Result<i32, Error> {
    vfio_compat::ioctl(ctx, cmd, arg)
}

#[cfg(test)]
mod kernel_answers_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vfio_device_tests;
#[cfg(test)]
mod vfio_dmabuf_tests;
#[cfg(test)]
mod vfio_group_tests;
#[cfg(test)]
mod vfio_migration_tests;
#[cfg(test)]
mod viommu_tests;
