//! VFIO type1 container semantics on an iommufd (`vfio_compat.c`).
//!
//! A program written for `/dev/vfio/vfio` talks to one implicit address
//! space: the context's *compat IOAS* (`IOMMU_VFIO_IOAS`), an ordinary IOAS
//! that iommufd objects can use too. Every type1 operation here resolves it
//! first and fails with `ENODEV` when there is none (or it was destroyed).
//!
//! The two type1 flavours differ in one thing: v1 (`VFIO_TYPE1_IOMMU`) may
//! unmap part of an earlier mapping, v2 may not. v1 is emulated by disabling
//! large pages on the IOAS when it is selected (so no IOPTE spans a future
//! cut) and by cutting areas at the edges of every unmap.
//!
//! What is deliberately not modelled: the no-IOMMU mode (no device of ours
//! can request it, so `VFIO_NOIOMMU_IOMMU` is reported as unsupported, as a
//! kernel built without `CONFIG_VFIO_NOIOMMU` does), `VFIO_UPDATE_VADDR` and
//! dirty tracking through `VFIO_IOMMU_DIRTY_PAGES`, which iommufd refuses too.

use std::sync::Mutex;

use uiommufd_abi::vfio as v;
use uiommufd_hw::Prot;

use crate::account::Account;
use crate::ctx::AccountMode;
use crate::error::{einval, Result};
use crate::object::ObjectId;
use crate::pages::page_size;
use crate::Iommufd;

/// The IOMMU model selected with `VFIO_SET_IOMMU`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type1 {
    /// `VFIO_TYPE1_IOMMU`: unmaps may cut existing mappings; no large pages.
    V1,
    /// `VFIO_TYPE1v2_IOMMU`: unmaps must cover whole mappings.
    V1v2,
}

impl Type1 {
    /// The type for a raw `VFIO_SET_IOMMU` argument (a C `unsigned long`).
    pub fn from_raw(raw: u64) -> Option<Type1> {
        match raw {
            r if r == v::VFIO_TYPE1_IOMMU as u64 => Some(Type1::V1),
            r if r == v::VFIO_TYPE1v2_IOMMU as u64 => Some(Type1::V1v2),
            _ => None,
        }
    }
}

/// What `VFIO_IOMMU_GET_INFO` reports, before it is laid out as a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type1Info {
    /// `iova_pgsizes`: the page sizes every domain of the IOAS can map.
    pub iova_pgsizes: u64,
    /// The IOVA ranges not reserved, as inclusive `(start, last)` pairs
    /// (`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`).
    pub iova_ranges: Vec<(u64, u64)>,
    /// Mappings still available (`VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`).
    pub dma_avail: u32,
}

/// The outcome of `VFIO_IOMMU_UNMAP_DMA` once the request was accepted: the
/// bytes unmapped are reported to the user even when the unmap stopped
/// part way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Type1Unmap {
    pub unmapped: u64,
    pub result: Result<()>,
}

impl Type1Unmap {
    /// The bytes unmapped, or the error that stopped the unmap.
    pub fn into_result(self) -> Result<u64> {
        self.result.map(|()| self.unmapped)
    }
}

/// iommufd's mapping limit comes from the memory cgroup, not from a count;
/// like the kernel, report `u32::MAX` rather than VFIO's `u16::MAX`
/// default (some users, s390 QEMU among them, need more than that).
const DMA_AVAIL: u32 = u32::MAX;

/// Serialises [`Iommufd::vfio_compat_ioas_create`] so two creators cannot
/// both install an IOAS.
static COMPAT_CREATE: Mutex<()> = Mutex::new(());

impl Iommufd {
    /// `VFIO_GET_API_VERSION`.
    pub fn vfio_api_version(&self) -> u32 {
        v::VFIO_API_VERSION
    }

    /// `iommufd_vfio_compat_ioas_create`: what attaching the first VFIO
    /// group does — make sure a compat IOAS exists, creating an ordinary,
    /// user-visible IOAS if there is none. Returns the compat IOAS's ID.
    ///
    /// `VFIO_SET_IOMMU` never creates one: on a bare iommufd it answers
    /// `ENODEV` until user space (or this call) provides the IOAS.
    pub fn vfio_compat_ioas_create(&self) -> Result<ObjectId> {
        let _serial = COMPAT_CREATE.lock().unwrap_or_else(|p| p.into_inner());
        let (pending, ioas) = self.ioas_alloc_pending()?;
        if let Ok(existing) = self.vfio_ioas() {
            // Dropping `pending` gives its ID back: nothing was created.
            return Ok(existing.id());
        }
        let id = pending.id();
        pending.publish(ioas);
        // Only a concurrent IOMMU_DESTROY of the fresh ID can fail this.
        self.vfio_ioas_set(id)?;
        Ok(id)
    }

    /// `VFIO_CHECK_EXTENSION`: 1 if `ext` (a C `unsigned long`) is supported,
    /// 0 if not. `VFIO_DMA_CC_IOMMU` depends on the compat IOAS's domains and
    /// fails with `ENODEV` when there is no compat IOAS.
    pub fn vfio_check_extension(&self, ext: u64) -> Result<u32> {
        let Ok(ext) = u32::try_from(ext) else { return Ok(0) };
        match ext {
            v::VFIO_TYPE1_IOMMU | v::VFIO_TYPE1v2_IOMMU | v::VFIO_UNMAP_ALL => Ok(1),
            v::VFIO_DMA_CC_IOMMU => self.vfio_cc_iommu().map(u32::from),
            // VFIO_NOIOMMU_IOMMU (no no-IOMMU mode here), the withdrawn
            // VFIO_TYPE1_NESTING_IOMMU, VFIO_UPDATE_VADDR (iommufd cannot
            // swap the memory behind a mapping safely), and anything else.
            _ => Ok(0),
        }
    }

    /// `iommufd_vfio_cc_iommu`: DMA is cache coherent unless a paging HWPT
    /// of the compat IOAS does not enforce coherency. With no HWPT at all
    /// the answer is yes.
    pub fn vfio_cc_iommu(&self) -> Result<bool> {
        let ioas = self.vfio_ioas()?;
        let hwpts = ioas.hwpts();
        Ok(hwpts.iter().filter_map(|w| w.upgrade()).all(|h| h.enforce_cache_coherency()))
    }

    /// `VFIO_SET_IOMMU` with a raw type: anything but the two type1 models
    /// is `EINVAL` (checked before the compat IOAS).
    pub fn vfio_set_iommu_raw(&self, raw: u64) -> Result<()> {
        let t = Type1::from_raw(raw).ok_or(einval("only the type1 IOMMU models are emulated"))?;
        self.vfio_set_iommu(t)
    }

    /// `VFIO_SET_IOMMU`: needs a compat IOAS (`ENODEV`). [`Type1::V1`]
    /// disables large pages on it, which fails with `EINVAL` once domains
    /// hold mappings. Selecting a model again (or the other one) is
    /// allowed; v1v2 does not re-enable large pages.
    pub fn vfio_set_iommu(&self, t: Type1) -> Result<()> {
        let ioas = self.vfio_ioas()?;
        match t {
            Type1::V1 => ioas.iopt().set_large_pages(false),
            Type1::V1v2 => Ok(()),
        }
    }

    /// `VFIO_IOMMU_MAP_DMA`: map `size` bytes of user memory at `vaddr` at
    /// exactly `iova`. `flags` are `VFIO_DMA_MAP_FLAG_READ`/`WRITE` (others
    /// are `EINVAL`); no flag at all is accepted and maps with neither
    /// permission. Accounting follows the context's `RLIMIT_MODE`, which is
    /// process accounting for a context opened as `/dev/vfio/vfio`.
    pub fn vfio_map_dma(&self, flags: u32, vaddr: u64, iova: u64, size: u64) -> Result<()> {
        if flags & !(v::VFIO_DMA_MAP_FLAG_READ | v::VFIO_DMA_MAP_FLAG_WRITE) != 0 {
            return Err(einval("unknown MAP_DMA flags"));
        }
        let mut prot = Prot::CACHE;
        if flags & v::VFIO_DMA_MAP_FLAG_READ != 0 {
            prot = prot | Prot::READ;
        }
        if flags & v::VFIO_DMA_MAP_FLAG_WRITE != 0 {
            prot = prot | Prot::WRITE;
        }
        let ioas = self.vfio_ioas()?;
        let mode = Account::mode_for(self.account_mode() == AccountMode::Process);
        ioas.iopt().map_user(vaddr, size, Some(iova), prot, mode).map(drop)
    }

    /// `VFIO_IOMMU_UNMAP_DMA`. With `VFIO_DMA_UNMAP_FLAG_ALL` (and `iova`
    /// and `size` both 0, else `EINVAL`) everything goes; otherwise the
    /// mappings inside `[iova, iova + size)`. Unmapping nothing succeeds.
    /// A mapping crossing an edge of the range is `ENOENT`, unless the
    /// IOAS is in type1 v1 mode (large pages disabled): then the mappings
    /// are first cut at both edges.
    ///
    /// `Err` means the request was refused before anything was unmapped;
    /// `Ok` carries how much was unmapped and how the unmap ended.
    pub fn vfio_unmap_dma(&self, flags: u32, iova: u64, size: u64) -> Result<Type1Unmap> {
        if flags & !v::VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            return Err(einval("unknown UNMAP_DMA flags"));
        }
        let ioas = self.vfio_ioas()?;
        let iopt = ioas.iopt();
        let (result, unmapped) = if flags & v::VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            if iova != 0 || size != 0 {
                return Err(einval("UNMAP_ALL takes iova and size 0"));
            }
            iopt.unmap_all()
        } else {
            if !iopt.large_pages() {
                // Cut so that `iova - 1` and the range's last byte end
                // areas. The arithmetic wraps like the kernel's unsigned
                // long; a range starting at 0 needs no cut in front.
                let cuts = [iova.wrapping_add(size).wrapping_sub(1), iova.wrapping_sub(1)];
                iopt.cut_iova(&cuts[..if iova != 0 { 2 } else { 1 }])?;
            }
            iopt.unmap(iova, size)
        };
        Ok(Type1Unmap { unmapped, result })
    }

    /// `VFIO_IOMMU_GET_INFO`'s content for the compat IOAS.
    pub fn vfio_iommu_info(&self) -> Result<Type1Info> {
        let ioas = self.vfio_ioas()?;
        let iopt = ioas.iopt();
        let (iova_ranges, _) = iopt.iova_ranges();
        Ok(Type1Info { iova_pgsizes: type1_pgsizes(iopt), iova_ranges, dma_avail: DMA_AVAIL })
    }
}

/// `iommufd_get_pagesizes`: the page sizes every domain supports, with the
/// sub-page sizes folded into `PAGE_SIZE` (as VFIO reports them), and then
/// — as a number, not as a bitmap — at least the IOAS's IOVA alignment.
fn type1_pgsizes(iopt: &crate::io_pagetable::IoPagetable) -> u64 {
    let ps = page_size();
    let mut bitmap = iopt.domains().iter().fold(u64::MAX, |acc, d| acc & d.domain.pgsize_bitmap());
    if bitmap & (ps - 1) != 0 {
        bitmap = (bitmap & !(ps - 1)) | ps;
    }
    bitmap.max(iopt.iova_alignment())
}

#[cfg(test)]
mod tests;
