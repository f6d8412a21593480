//! Handlers for the file-backed IOAS commands: `IOMMU_IOAS_MAP_FILE` and
//! `IOMMU_IOAS_CHANGE_PROCESS` (see `uiommufd_core::map_file`).
//!
//! The descriptor in `IOMMU_IOAS_MAP_FILE` is one of the calling program's
//! own: the engine runs inside that program and uses the number as it is.
//! Divergence: under an in-process [`crate::LocalFds`] host the numbers of
//! served files are not descriptors of the process, so such a number is
//! looked up among the real ones like any other (usually `EBADF`), where the
//! kernel would find an iommufd file and fail its pins with `EINVAL`. Under
//! the preload shim a served descriptor is a real one (of `/dev/null`, a
//! character device), which gets the kernel's answer.

use uiommufd_abi as abi;
use uiommufd_core::error::{eopnotsupp, Result};

use crate::ucmd::Ucmd;

/// `IOMMU_IOAS_MAP_FILE`: the chosen (or fixed) IOVA goes back in `iova`.
pub fn ioas_map_file(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: abi::IommuIoasMapFile = u.read()?;
    cmd.iova = match u.host.get(cmd.fd).as_deref() {
        // A dma-buf we serve (`dma_buf_get` succeeds).
        Some(crate::File::DmaBuf(buf)) => {
            u.ctx.ioas_map_dmabuf(cmd.ioas_id, cmd.flags, buf, cmd.start, cmd.length, cmd.iova)?
        }
        _ => u.ctx.ioas_map_file(cmd.ioas_id, cmd.flags, cmd.fd, cmd.start, cmd.length, cmd.iova)?,
    };
    u.respond(&cmd)?;
    Ok(0)
}

/// `IOMMU_IOAS_CHANGE_PROCESS`.
pub fn ioas_change_process(u: &mut Ucmd) -> Result<i32> {
    let cmd: abi::IommuIoasChangeProcess = u.read()?;
    if cmd.__reserved != 0 {
        return Err(eopnotsupp("IOAS_CHANGE_PROCESS reserved field must be 0"));
    }
    u.ctx.ioas_change_process()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use uiommufd_abi as abi;
    use uiommufd_abi::Errno;
    use uiommufd_core::Iommufd;
    use zerocopy::IntoBytes;

    use crate::{iommufd_ioctl, LocalFds};

    fn ioctl<T: IntoBytes + zerocopy::FromBytes>(ctx: &Arc<Iommufd>, req: u32, arg: &mut T) -> Result<i32, Errno> {
        iommufd_ioctl(ctx, &LocalFds::default(), req as u64, arg.as_mut_bytes().as_mut_ptr() as u64)
            .map_err(|e| e.errno)
    }

    #[test]
    fn map_file_and_change_process_through_ioctl() {
        let ps = uiommufd_memory::page_size() as u64;
        let ctx = Iommufd::new();
        let mut alloc = abi::IommuIoasAlloc { size: 12, ..Default::default() };
        ioctl(&ctx, abi::IOMMU_IOAS_ALLOC, &mut alloc).unwrap();
        // SAFETY: memfd_create with a NUL-terminated name, then sizing it.
        let fd = unsafe {
            let fd = libc::memfd_create(c"dispatch-map-file".as_ptr(), 0);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, 2 * ps as i64), 0);
            fd
        };
        let mut cmd = abi::IommuIoasMapFile {
            size: 40,
            flags: abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: alloc.out_ioas_id,
            fd,
            start: ps,
            length: ps,
            iova: 0,
        };
        ioctl(&ctx, abi::IOMMU_IOAS_MAP_FILE, &mut cmd).unwrap();
        assert_ne!(cmd.iova, 0, "the chosen IOVA is written back");
        let mut cp = abi::IommuIoasChangeProcess { size: 8, __reserved: 1 };
        assert_eq!(ioctl(&ctx, abi::IOMMU_IOAS_CHANGE_PROCESS, &mut cp), Err(Errno::EOPNOTSUPP));
        cp.__reserved = 0;
        ioctl(&ctx, abi::IOMMU_IOAS_CHANGE_PROCESS, &mut cp).unwrap();
        // A bad descriptor.
        cmd.fd = -1;
        assert_eq!(ioctl(&ctx, abi::IOMMU_IOAS_MAP_FILE, &mut cmd), Err(Errno::EBADF));
        // SAFETY: closing our memfd.
        unsafe { libc::close(fd) };
    }
}
