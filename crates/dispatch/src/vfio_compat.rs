//! Decoding of the VFIO type1 container ioctls served on an iommufd
//! (`iommufd_vfio_ioctl`).
//!
//! Every request whose number falls outside the iommufd table lands here.
//! These commands do not follow the iommufd size rules: each reads a fixed
//! prefix of its struct (`EFAULT` if unreadable), checks `argsz` against
//! that prefix (`EINVAL`), and writes back only what the kernel writes
//! back. `VFIO_CHECK_EXTENSION` and `VFIO_SET_IOMMU` take a plain integer,
//! `VFIO_GET_API_VERSION` nothing. Unknown requests are `ENOTTY` (the
//! kernel's `ENOIOCTLCMD` as `ioctl(2)` reports it).

use core::mem::{offset_of, size_of};
use std::sync::Arc;

use uiommufd_abi::vfio as v;
use uiommufd_abi::Errno;
use uiommufd_core::error::{einval, ErrnoExt, Error, Result};
use uiommufd_core::vfio_compat::Type1Info;
use uiommufd_core::Iommufd;
use uiommufd_memory::user;
use zerocopy::{FromBytes, IntoBytes};

/// Run VFIO container request `cmd` with argument `arg`.
pub(crate) fn ioctl(ctx: &Arc<Iommufd>, cmd: u32, arg: u64) -> Result<i32> {
    match cmd {
        v::VFIO_GET_API_VERSION => Ok(ctx.vfio_api_version() as i32),
        v::VFIO_SET_IOMMU => ctx.vfio_set_iommu_raw(arg).map(|()| 0),
        v::VFIO_CHECK_EXTENSION => ctx.vfio_check_extension(arg).map(|r| r as i32),
        v::VFIO_IOMMU_GET_INFO => get_info(ctx, arg),
        v::VFIO_IOMMU_MAP_DMA => map_dma(ctx, arg),
        v::VFIO_IOMMU_UNMAP_DMA => unmap_dma(ctx, arg),
        // VFIO_IOMMU_DIRTY_PAGES included: iommufd has its own dirty
        // tracking and does not serve type1's.
        _ => Err(Error::new(Errno::ENOTTY, "unknown ioctl")),
    }
}

/// The C name of VFIO container request `cmd`, for traces.
pub fn ioctl_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        v::VFIO_GET_API_VERSION => "VFIO_GET_API_VERSION",
        v::VFIO_CHECK_EXTENSION => "VFIO_CHECK_EXTENSION",
        v::VFIO_SET_IOMMU => "VFIO_SET_IOMMU",
        v::VFIO_IOMMU_GET_INFO => "VFIO_IOMMU_GET_INFO",
        v::VFIO_IOMMU_MAP_DMA => "VFIO_IOMMU_MAP_DMA",
        v::VFIO_IOMMU_UNMAP_DMA => "VFIO_IOMMU_UNMAP_DMA",
        v::VFIO_IOMMU_DIRTY_PAGES => "VFIO_IOMMU_DIRTY_PAGES",
        _ => return None,
    })
}

/// Read the first `N` bytes of the user struct at `arg` into a `T`.
fn read_prefix<T: FromBytes + IntoBytes>(arg: u64, n: usize) -> Result<T> {
    let mut t = T::new_zeroed();
    user::copy_from_user(&mut t.as_mut_bytes()[..n], arg).ctx("reading the VFIO command")?;
    Ok(t)
}

/// `VFIO_IOMMU_MAP_DMA`: the whole struct (up to `size`) is mandatory.
fn map_dma(ctx: &Iommufd, arg: u64) -> Result<i32> {
    const MINSZ: usize = offset_of!(v::VfioIommuType1DmaMap, size) + size_of::<u64>();
    let m: v::VfioIommuType1DmaMap = read_prefix(arg, MINSZ)?;
    if (m.argsz as usize) < MINSZ {
        return Err(einval("MAP_DMA argsz is below the struct"));
    }
    ctx.vfio_map_dma(m.flags, m.vaddr, m.iova, m.size)?;
    Ok(0)
}

/// `VFIO_IOMMU_UNMAP_DMA`: once accepted, the struct goes back with `size`
/// set to the bytes unmapped, whatever the outcome; a reply that cannot be
/// written turns the result into `EFAULT`.
fn unmap_dma(ctx: &Iommufd, arg: u64) -> Result<i32> {
    const MINSZ: usize = offset_of!(v::VfioIommuType1DmaUnmap, size) + size_of::<u64>();
    let mut u: v::VfioIommuType1DmaUnmap = read_prefix(arg, MINSZ)?;
    if (u.argsz as usize) < MINSZ {
        return Err(einval("UNMAP_DMA argsz is below the struct"));
    }
    let out = ctx.vfio_unmap_dma(u.flags, u.iova, u.size)?;
    u.size = out.unmapped;
    user::copy_to_user(arg, &u.as_bytes()[..MINSZ]).ctx("writing the UNMAP_DMA reply")?;
    out.result.map(|()| 0)
}

/// `VFIO_IOMMU_GET_INFO`.
fn get_info(ctx: &Iommufd, arg: u64) -> Result<i32> {
    const MINSZ: usize = offset_of!(v::VfioIommuType1Info, iova_pgsizes) + size_of::<u64>();
    let head: v::VfioIommuType1Info = read_prefix(arg, MINSZ)?;
    if (head.argsz as usize) < MINSZ {
        return Err(einval("GET_INFO argsz is below the mandatory fields"));
    }
    let info = ctx.vfio_iommu_info()?;
    for w in info_reply(&info, head.argsz) {
        user::copy_to_user(arg.wrapping_add(w.offset), &w.bytes).ctx("writing the GET_INFO reply")?;
    }
    Ok(0)
}

/// One piece of a reply: `bytes` go at `offset` in the user's buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Write {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Adds one capability's writes at offset `at` given `avail` bytes of room
/// there; returns the capability's unpadded size (needed room or not).
type CapFill = fn(&Type1Info, u64, u64, &mut Vec<Write>) -> u64;

/// The writes `VFIO_IOMMU_GET_INFO` makes into a buffer of `argsz` bytes,
/// in the kernel's order (`iommufd_vfio_iommu_get_info`).
///
/// The capability chain follows the fixed struct: DMA_AVAIL, then
/// IOVA_RANGE, each starting 8-byte aligned. A capability (and each of its
/// ranges) is written only if it fits entirely in `argsz`; a `next` link is
/// written as soon as `argsz` reaches the start of the capability it points
/// to, even if that one does not fit and stays unwritten. `cap_offset` is
/// set only when the whole chain fits; in any case `argsz` comes back as
/// the size needed for all of it, and `flags` always announce PGSIZES and
/// CAPS. Of the fixed struct itself at most `argsz` bytes are written.
/// Nothing is ever written at or past `argsz`.
pub(crate) fn info_reply(info: &Type1Info, argsz: u32) -> Vec<Write> {
    let argsz = argsz as u64;
    let head = size_of::<v::VfioIommuType1Info>() as u64;
    let mut writes = Vec::new();
    let mut total = head;
    let mut last_cap: Option<u64> = None;
    let fills: [CapFill; 2] = [cap_dma_avail, cap_iova_range];
    for fill in fills {
        // No room at all and a little room behave alike: every write below
        // is conditional on its whole extent fitting in `avail`.
        let avail = argsz.saturating_sub(total);
        let size = fill(info, total, avail, &mut writes).next_multiple_of(8);
        if let Some(prev) = last_cap {
            if argsz >= total {
                let next = offset_of!(v::VfioInfoCapHeader, next) as u64;
                writes.push(Write { offset: prev + next, bytes: (total as u32).to_ne_bytes().to_vec() });
            }
        }
        last_cap = Some(total);
        total += size;
    }
    let reply = v::VfioIommuType1Info {
        argsz: total as u32,
        flags: v::VFIO_IOMMU_INFO_PGSIZES | v::VFIO_IOMMU_INFO_CAPS,
        iova_pgsizes: info.iova_pgsizes,
        cap_offset: if argsz >= total { head as u32 } else { 0 },
        pad: 0,
    };
    let n = argsz.min(head) as usize;
    writes.push(Write { offset: 0, bytes: reply.as_bytes()[..n].to_vec() });
    writes
}

/// `iommufd_fill_cap_dma_avail`: returns the capability's unpadded size.
fn cap_dma_avail(info: &Type1Info, at: u64, avail: u64, writes: &mut Vec<Write>) -> u64 {
    let cap = v::VfioIommuType1InfoDmaAvail {
        header: v::VfioInfoCapHeader { id: v::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, version: 1, next: 0 },
        avail: info.dma_avail,
    };
    let size = size_of::<v::VfioIommuType1InfoDmaAvail>() as u64;
    if avail >= size {
        writes.push(Write { offset: at, bytes: cap.as_bytes().to_vec() });
    }
    size
}

/// `iommufd_fill_cap_iova`: each range that fits, then the header if the
/// whole array fits. Returns the capability's unpadded size.
fn cap_iova_range(info: &Type1Info, at: u64, avail: u64, writes: &mut Vec<Write>) -> u64 {
    let hdr = size_of::<v::VfioIommuType1InfoCapIovaRange>() as u64;
    let elm = size_of::<v::VfioIovaRange>() as u64;
    let mut n = 0u64;
    for &(start, end) in &info.iova_ranges {
        if avail >= hdr + elm * (n + 1) {
            let r = v::VfioIovaRange { start, end };
            writes.push(Write { offset: at + hdr + elm * n, bytes: r.as_bytes().to_vec() });
        }
        n += 1;
    }
    let size = hdr + elm * n;
    if avail >= size {
        let cap = v::VfioIommuType1InfoCapIovaRange {
            header: v::VfioInfoCapHeader { id: v::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version: 1, next: 0 },
            nr_iovas: n as u32,
            reserved: 0,
        };
        writes.push(Write { offset: at, bytes: cap.as_bytes().to_vec() });
    }
    size
}

#[cfg(test)]
mod tests;
