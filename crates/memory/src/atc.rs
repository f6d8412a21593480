//! The generation that validates device translation caches.
//!
//! A device port may remember what an IOVA translated to, down to the host
//! address of the frame (`uiommufd-core`'s per-device cache, modelled on a
//! PCIe Address Translation Cache), and skip both the IOMMU model and the
//! frame registry on the next request. Such an entry is only as good as
//! the two facts it combines: the domain's translation and the frame's
//! host memory. Everything that can change either, for a mapping that
//! exists, bumps this one global generation *after* the change: an unmap
//! (`uiommufd_hw::unmap`, after the page table and the model's IOTLB let
//! go), a dirty-bit harvest or a switch of dirty tracking (so the next
//! write walks and sets the dirty bit again), a change of the domain a
//! device is attached to, and a relocation or move of pinned frames (see
//! `Relocation`). A cached entry carries the generation read at the start
//! of the request that filled it, so one filled across a change is stale
//! from birth.
//!
//! Requests read the generation inside their [`crate::dma_fence`] section;
//! the bump is sequentially consistent with the section's entry, so a
//! request that begins after an unmap returned never uses what the unmap
//! removed, and one still running when frames are released is waited for
//! by the grace period that precedes every release.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Relocations in progress: no cache may be filled meanwhile.
static RELOCATING: AtomicUsize = AtomicUsize::new(0);

/// The current generation (read inside a DMA-fence section).
#[inline]
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// Every cached translation filled before this call is stale.
pub fn invalidate() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// A change of pinned frames' host memory in progress (the frame registry's
/// relocation and move on the program's `munmap`, `madvise` and `mremap`;
/// an owner dropping its mapped frames before it unmaps them).
/// Begun outside the registry lock: it stops new fills, invalidates, and
/// waits for requests that may be using older entries; the registry then
/// changes under its write lock, and fills resume when this is dropped.
/// (A fill looks its host up under the registry's read lock and checks
/// [`fills_allowed`] there, so it either sees the change done or sees it
/// coming.)
pub(crate) struct Relocation(());

impl Relocation {
    pub(crate) fn begin() -> Relocation {
        RELOCATING.fetch_add(1, Ordering::SeqCst);
        invalidate();
        crate::dma_fence::synchronize();
        Relocation(())
    }
}

impl Drop for Relocation {
    fn drop(&mut self) {
        RELOCATING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a cache may be filled now (false during a relocation).
pub(crate) fn fills_allowed() -> bool {
    RELOCATING.load(Ordering::SeqCst) == 0
}

/// Calls [`invalidate`] when dropped: put at the top of a function that
/// changes translations (a dirty-bit harvest), so the bump follows the
/// change on every way out.
pub struct InvalidateOnDrop;

impl Drop for InvalidateOnDrop {
    fn drop(&mut self) {
        invalidate();
    }
}
