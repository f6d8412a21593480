//! IOMMU hardware models.
//!
//! The engine (`uiommufd-core`) talks to every IOMMU through [`Domain`], the
//! equivalent of the kernel's `struct iommu_domain` + `iommu_domain_ops`: a
//! translation context that maps IOVA pages to *physical addresses*. Physical
//! addresses here are emulated ones (`pfn << PAGE_SHIFT | offset`) handed out
//! by `uiommufd-memory`'s frame table; no page table ever stores a host
//! pointer.
//!
//! Invariants every model keeps:
//! - `map_pages` maps `pgcount` pages of exactly `pgsize` (one of the sizes in
//!   `pgsize_bitmap`), with `iova` and `paddr` aligned to `pgsize`; on failure
//!   it reports how much it mapped so the caller can undo it;
//! - `unmap_pages` removes whatever leaves lie in the range and returns the
//!   number of bytes unmapped; it never fails;
//! - readers (`iova_to_phys`, `translate`) take no lock that writers of other
//!   IOVA ranges hold.
//!
//! [`map`] and [`unmap`] split a byte range into the largest page sizes the
//! domain supports, as the kernel's `iommu_map()`/`iommu_unmap()` do.
//!
//! The models hold no `unsafe`: page tables are atomics and `OnceBox`es.
#![forbid(unsafe_code)]

use core::any::Any;

use uiommufd_abi::Errno;

pub mod amd;
pub mod device;
pub mod dma;
pub mod mock;
pub mod pt;
pub mod regfield;
pub mod smmuv3;
mod tlbcache;
pub mod vtd;
pub mod x86_64;

/// Mapping permissions and attributes, with the kernel's `IOMMU_*` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prot(pub u32);

impl Prot {
    pub const READ: Prot = Prot(1 << 0);
    pub const WRITE: Prot = Prot(1 << 1);
    /// DMA is cache coherent (snooped).
    pub const CACHE: Prot = Prot(1 << 2);
    pub const NOEXEC: Prot = Prot(1 << 3);
    pub const MMIO: Prot = Prot(1 << 4);
    pub const PRIV: Prot = Prot(1 << 5);

    pub const fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}

/// The IOVA window a domain can translate (`iommu_domain_geometry`),
/// inclusive at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aperture {
    pub start: u64,
    pub last: u64,
}

/// The kind of DMA access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A successful translation: `len` bytes starting at `iova` map to the
/// physically contiguous range starting at `paddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub paddr: u64,
    /// Bytes from `paddr` to the end of the leaf page that holds it.
    pub len: u64,
    pub prot: Prot,
}

/// One leaf of a page table as the model holds it (for tools: `uiommufd
/// inspect`): the IOVA range it maps, where to, with which permissions,
/// and the raw entry at its level (0 is the last level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The first IOVA it maps.
    pub iova: u64,
    /// The bytes it maps (its level's size).
    pub size: u64,
    /// The output address of `iova`.
    pub paddr: u64,
    /// Its permissions.
    pub prot: Prot,
    /// The raw entry.
    pub entry: u64,
    /// Its level (0: the last).
    pub level: u32,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No leaf maps the IOVA.
    NotPresent,
    /// A leaf maps it without the permission the access needs.
    Permission,
    /// The IOVA is outside what the domain can address.
    OutOfRange,
}

/// Gives every `'static` type an `&dyn Any` view, so [`Domain::as_any`]
/// needs no code in implementations. Not meant to be called directly: on an
/// `Arc<dyn Domain>` it would see the `Arc`, use `as_any`.
#[doc(hidden)]
pub trait AnyDomain: Any {
    fn any_domain(&self) -> &dyn Any;
}

impl<T: Any> AnyDomain for T {
    fn any_domain(&self) -> &dyn Any {
        self
    }
}

/// A translation context of an IOMMU (the kernel's paging `iommu_domain`).
pub trait Domain: AnyDomain + Send + Sync {
    /// The concrete model, for model-specific hooks (the selftest's
    /// `get_md_pagetable`): `domain.as_any().downcast_ref::<MockDomain>()`.
    fn as_any(&self) -> &dyn Any {
        self.any_domain()
    }

    /// A nested (stage-1 over a parent) domain rather than a paging one.
    fn is_nested(&self) -> bool {
        false
    }

    /// Dirty-tracking operations, when the domain was allocated with
    /// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` (the kernel's `domain->dirty_ops`).
    fn dirty_ops(&self) -> Option<&dyn DirtyOps> {
        None
    }

    /// Whether the domain forces snooping of no-snoop DMA (the coherency
    /// mode is fixed before the first map).
    fn enforce_cache_coherency(&self) -> bool {
        false
    }

    /// Whether the hardware snoops DMA the device marks No Snoop (what the
    /// DMA path counts as coherent). Normally what the driver answers in
    /// [`enforce_cache_coherency`](Self::enforce_cache_coherency); a driver
    /// that answers more than its hardware does (AMD's v2 domains) says
    /// so here.
    fn forces_snoop(&self) -> bool {
        self.enforce_cache_coherency()
    }

    /// `cache_invalidate_user`: driver-defined invalidation requests from
    /// user space. On return `array.entry_num` is the number handled.
    fn cache_invalidate_user(&self, array: &mut UserDataArray<'_>) -> Result<(), Errno> {
        array.entry_num = 0;
        Err(Errno::EOPNOTSUPP)
    }

    /// Bitmap of the page sizes this domain can map (bit n set: `1 << n`).
    fn pgsize_bitmap(&self) -> u64;

    /// The IOVA window.
    fn aperture(&self) -> Aperture;

    /// Map `pgcount` pages of `pgsize` bytes at `iova` to `paddr`.
    /// Returns `Err((errno, bytes_mapped))` if it stopped part way.
    fn map_pages(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)>;

    /// `iommu_map()` of `size` bytes at `iova` to `paddr` (what [`map`]
    /// does). The default, [`map_split`], splits the range into page sizes
    /// and calls [`map_pages`](Self::map_pages) for each. A model may take a
    /// shorter way for ranges it can map in one go, with exactly the
    /// default's outcome: the same entries, errors and leftovers.
    fn map_range(&self, iova: u64, paddr: u64, size: u64, prot: Prot, max_pgsize: u64) -> Result<(), Errno> {
        map_split(self, iova, paddr, size, prot, max_pgsize)
    }

    /// `iommu_unmap()` of `size` bytes at `iova` without the invalidation
    /// of devices' translation caches that [`unmap`] adds; returns the bytes
    /// unmapped. The default, [`unmap_split`], calls
    /// [`unmap_pages`](Self::unmap_pages) per page-size chunk; as for
    /// [`map_range`](Self::map_range), an override must have its outcome.
    fn unmap_range(&self, iova: u64, size: u64, max_pgsize: u64) -> u64 {
        unmap_split(self, iova, size, max_pgsize)
    }

    /// Unmap the leaves covering `pgcount` pages of `pgsize` bytes at `iova`;
    /// returns the bytes unmapped. Callers go through [`unmap`], which also
    /// invalidates devices' translation caches (`uiommufd_memory::atc`):
    /// for a paging domain this is the only way a present translation
    /// changes (besides dirty bits, which the engine's harvest covers).
    fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64;

    /// The physical address `iova` maps to, if any (`iommu_iova_to_phys`).
    /// The default translates a read, falling back to a write so that
    /// write-only mappings resolve too (the kernel ignores permissions here).
    fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        match self.translate(iova, Access::Read) {
            Ok(t) => Some(t.paddr),
            Err(Fault::Permission) => self.translate(iova, Access::Write).ok().map(|t| t.paddr),
            Err(_) => None,
        }
    }

    /// Translate one DMA access at `iova`.
    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault>;

    /// Call `f` for each leaf overlapping `len` bytes at `iova`, in IOVA
    /// order, reading the table only: no cache is filled and no accessed or
    /// dirty bit is set (what a debugger's dump must not disturb). `false`
    /// if the model does not show its table this way (the default).
    fn leaves(&self, iova: u64, len: u64, f: &mut dyn FnMut(Leaf)) -> bool {
        let _ = (iova, len, f);
        false
    }

    /// Translate one DMA access tagged with `pasid` through a nested domain
    /// whose PASID (substream) table is the guest's, attached at the
    /// requester ID (an SMMUv3 CD table selects the stage 1 by SubstreamID).
    /// Domains without such a table translate as for the requester ID.
    fn translate_pasid(&self, pasid: u32, iova: u64, access: Access) -> Result<Translation, Fault> {
        let _ = pasid;
        self.translate(iova, access)
    }
}

/// Mask of bits `0..=n`.
const fn genmask(n: u32) -> u64 {
    if n >= 63 {
        u64::MAX
    } else {
        (1u64 << (n + 1)) - 1
    }
}

/// Choose the page size for the next chunk of a map or unmap of `size`
/// bytes at `iova` (to `paddr`), as the kernel's `iommu_pgsize()` does: the
/// largest supported size that fits in `size` and that both addresses are
/// aligned to. Returns `(pgsize, pgcount)`; the count stops at the boundary
/// where the next larger size becomes usable, if the range reaches past it.
#[inline]
pub fn pgsize(bitmap: u64, iova: u64, paddr: u64, size: u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    let addr_merge = iova | paddr;
    let mut sizes = bitmap & genmask(63 - size.leading_zeros());
    if addr_merge != 0 {
        sizes &= genmask(addr_merge.trailing_zeros());
    }
    if sizes == 0 {
        return None;
    }
    let idx = 63 - sizes.leading_zeros();
    let pgsize = 1u64 << idx;
    let mut size = size;
    let larger = bitmap & !genmask(idx);
    if larger != 0 {
        let next = 1u64 << larger.trailing_zeros();
        // A larger page only helps if both addresses sit at the same offset
        // within it.
        if (iova ^ paddr) & (next - 1) == 0 {
            let offset = next - (addr_merge & (next - 1));
            if offset.checked_add(next).is_some_and(|end| end <= size) {
                size = offset;
            }
        }
    }
    Some((pgsize, size >> idx))
}

/// `iommu_map()`: map `size` bytes at `iova` to `paddr`, splitting into the
/// largest page sizes allowed, restricted to `max_pgsize` when non-zero. On
/// failure everything this call mapped is unmapped again.
///
/// `EINVAL` if the addresses or size are not aligned to the smallest page
/// size (or no page size is left), `EOVERFLOW` if either range wraps past
/// the end of the 64-bit address space; otherwise the domain's error.
///
/// The domain's [`Domain::map_range`] does it ([`map_split`] unless the
/// model has a shorter way).
#[inline]
pub fn map(domain: &dyn Domain, iova: u64, paddr: u64, size: u64, prot: Prot, max_pgsize: u64) -> Result<(), Errno> {
    domain.map_range(iova, paddr, size, prot, max_pgsize)
}

/// [`map`] the general way: the checks, then one
/// [`map_pages`](Domain::map_pages) per chunk [`pgsize`] picks, and on
/// failure [`Domain::unmap_range`] of what was mapped.
pub fn map_split<D: Domain + ?Sized>(
    domain: &D,
    iova: u64,
    paddr: u64,
    size: u64,
    prot: Prot,
    max_pgsize: u64,
) -> Result<(), Errno> {
    let bitmap = restrict(domain.pgsize_bitmap(), max_pgsize);
    let min = bitmap & bitmap.wrapping_neg();
    if min == 0 || (iova | paddr | size) & (min - 1) != 0 {
        return Err(Errno::EINVAL);
    }
    if size != 0 && (iova.checked_add(size - 1).is_none() || paddr.checked_add(size - 1).is_none()) {
        return Err(Errno::EOVERFLOW);
    }
    // Below, `done <= size`, so `iova + done` and `paddr + done` cannot wrap.
    let mut done = 0u64;
    let mut failure = None;
    while done < size {
        let Some((pgsize, count)) = pgsize(bitmap, iova + done, paddr + done, size - done) else {
            failure = Some(Errno::EINVAL);
            break;
        };
        if let Err((e, mapped)) = domain.map_pages(iova + done, paddr + done, pgsize, count, prot) {
            done += mapped.min(size - done);
            failure = Some(e);
            break;
        }
        done += pgsize * count;
    }
    match failure {
        None => Ok(()),
        Some(e) => {
            if done != 0 && domain.unmap_range(iova, done, 0) != 0 {
                uiommufd_memory::atc::invalidate();
            }
            Err(e)
        }
    }
}

/// `iommu_unmap()`: unmap `size` bytes at `iova`; returns bytes unmapped.
/// Like the kernel, it picks page sizes as if `paddr == iova`, stops at the
/// first chunk the domain unmaps nothing of, and does nothing (returns 0)
/// for a range not aligned to the smallest page size or wrapping around.
///
/// The domain's [`Domain::unmap_range`] does it ([`unmap_split`] unless the
/// model has a shorter way); then devices' translation caches are
/// invalidated if anything went.
#[inline]
pub fn unmap(domain: &dyn Domain, iova: u64, size: u64, max_pgsize: u64) -> u64 {
    let done = domain.unmap_range(iova, size, max_pgsize);
    if done != 0 {
        // Devices' translation caches may hold what just went (the
        // kernel's iotlb_sync; see `uiommufd_memory::atc`).
        uiommufd_memory::atc::invalidate();
    }
    done
}

/// [`unmap`] of one range from each of `domains`, with one invalidation
/// of devices' translation caches after all of them instead of one per
/// domain (the engine taking an area out of every domain of an IOAS before
/// it unpins the memory). Returns whether anything was unmapped.
pub fn unmap_each<'a>(
    domains: impl IntoIterator<Item = &'a dyn Domain>,
    iova: u64,
    size: u64,
    max_pgsize: u64,
) -> bool {
    let mut any = false;
    for domain in domains {
        any |= domain.unmap_range(iova, size, max_pgsize) != 0;
    }
    if any {
        uiommufd_memory::atc::invalidate();
    }
    any
}

/// [`unmap`] the general way, without the invalidation: one
/// [`unmap_pages`](Domain::unmap_pages) per chunk [`pgsize`] picks.
pub fn unmap_split<D: Domain + ?Sized>(domain: &D, iova: u64, size: u64, max_pgsize: u64) -> u64 {
    let bitmap = restrict(domain.pgsize_bitmap(), max_pgsize);
    let min = bitmap & bitmap.wrapping_neg();
    if min == 0 || (iova | size) & (min - 1) != 0 {
        return 0;
    }
    if size != 0 && iova.checked_add(size - 1).is_none() {
        return 0;
    }
    let mut done = 0u64;
    while done < size {
        let cur = iova + done;
        let Some((pgsize, count)) = pgsize(bitmap, cur, cur, size - done) else { break };
        let n = domain.unmap_pages(cur, pgsize, count);
        if n == 0 {
            break;
        }
        done = done.saturating_add(n).min(size);
    }
    done
}

/// `bitmap` without the sizes above `max_pgsize` (0: no limit).
#[inline]
fn restrict(bitmap: u64, max_pgsize: u64) -> u64 {
    if max_pgsize == 0 {
        bitmap
    } else {
        bitmap & genmask(63 - max_pgsize.leading_zeros())
    }
}

/// `struct iommu_dirty_ops`.
pub trait DirtyOps: Send + Sync {
    /// Start or stop recording dirty bits.
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno>;

    /// Report each dirty leaf in `[iova, iova + length)` through `record`
    /// as `(iova, size)`, clearing the bits unless `no_clear`. With `record`
    /// `None` the bits are only cleared (what enabling tracking does first).
    fn read_and_clear_dirty(
        &self,
        iova: u64,
        length: u64,
        no_clear: bool,
        record: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<(), Errno>;
}

/// Reads one user-supplied struct with the kernel's extensible-struct
/// rules: zero-extend a short one, `E2BIG` for non-zero bytes past what the
/// kernel knows, `EFAULT` for bad memory. The buffer length is the kernel's
/// struct size.
pub type StructReader<'a> = dyn FnMut(&mut [u8]) -> Result<(), Errno> + 'a;

/// Driver-specific data passed with an allocation (`struct iommu_user_data`).
pub struct UserData<'a> {
    pub data_type: u32,
    pub len: u32,
    pub reader: &'a mut StructReader<'a>,
}

impl UserData<'_> {
    /// `iommu_copy_struct_from_user`: the data must be of `data_type`, at
    /// least `min_len` bytes and no longer than `T` (`EINVAL` otherwise).
    pub fn read<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &mut self,
        data_type: u32,
        min_len: usize,
    ) -> Result<T, Errno> {
        self.read_sized(data_type, min_len, core::mem::size_of::<T>())
    }

    /// [`read`](Self::read) for a kernel whose struct is the first `ksize`
    /// bytes of `T` (an older release's shorter version); the rest of `T`
    /// stays zero.
    pub fn read_sized<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &mut self,
        data_type: u32,
        min_len: usize,
        ksize: usize,
    ) -> Result<T, Errno> {
        let len = self.len as usize;
        let ksize = ksize.min(core::mem::size_of::<T>());
        if self.data_type != data_type || len < min_len || len > ksize {
            return Err(Errno::EINVAL);
        }
        let mut v = T::new_zeroed();
        (self.reader)(&mut v.as_mut_bytes()[..ksize])?;
        Ok(v)
    }
}

/// Reads entry `index` of a user array into a kernel-sized buffer with the
/// extensible-struct rules, honouring the array's `entry_len`.
pub type EntryReader<'a> = dyn FnMut(u32, &mut [u8]) -> Result<(), Errno> + 'a;

/// An array of driver-specific requests (`struct iommu_user_data_array`).
pub struct UserDataArray<'a> {
    pub data_type: u32,
    pub entry_len: u32,
    /// In: entries supplied. Out: entries handled.
    pub entry_num: u32,
    pub reader: &'a mut EntryReader<'a>,
}

impl UserDataArray<'_> {
    /// `iommu_copy_struct_from_user_array`: entries shorter than `min_len`
    /// or longer than `T` are `EINVAL`.
    pub fn read<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &mut self,
        data_type: u32,
        index: u32,
        min_len: usize,
    ) -> Result<T, Errno> {
        let len = self.entry_len as usize;
        if self.data_type != data_type || len < min_len || len > core::mem::size_of::<T>() {
            return Err(Errno::EINVAL);
        }
        let mut v = T::new_zeroed();
        (self.reader)(index, v.as_mut_bytes())?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K4: u64 = 0x1000;
    const M2: u64 = 0x20_0000;
    const G1: u64 = 0x4000_0000;
    const X86: u64 = K4 | M2 | G1;

    #[test]
    fn genmask_edges() {
        assert_eq!(genmask(0), 1);
        assert_eq!(genmask(11), 0xfff);
        assert_eq!(genmask(63), u64::MAX);
    }

    #[test]
    fn pgsize_hand_computed() {
        // Nothing to map, or too small for the smallest page.
        assert_eq!(pgsize(X86, 0, 0, 0), None);
        assert_eq!(pgsize(X86, 0, 0, 0x800), None);
        assert_eq!(pgsize(0, 0, 0, K4), None);
        // Addresses aligned below the smallest page.
        assert_eq!(pgsize(X86, 0x800, 0, K4), None);
        // One small page.
        assert_eq!(pgsize(X86, 0, 0, K4), Some((K4, 1)));
        // 4 MiB at 2 MiB: two large pages; 1 GiB is out of reach, so no cap.
        assert_eq!(pgsize(X86, M2, M2, 2 * M2), Some((M2, 2)));
        // 3 MiB at 0: one 2 MiB page; the remainder is a later call.
        assert_eq!(pgsize(X86 & !G1, 0, 0, 3 << 20), Some((M2, 1)));
        // 4 MiB at 4 KiB: small pages up to the 2 MiB boundary only
        // (offset 0x1ff000 plus a whole 2 MiB fit in the size).
        assert_eq!(pgsize(X86, K4, K4, 2 * M2), Some((K4, 0x1ff)));
        // Just one page short of the boundary, and exactly enough.
        assert_eq!(pgsize(X86, 0x1f_f000, 0x1f_f000, M2 + K4), Some((K4, 1)));
        assert_eq!(pgsize(X86, 0x1f_f000, 0x1f_f000, M2), Some((K4, 0x200)));
        // Differently offset within 2 MiB: large pages can never be used,
        // so no cap at the boundary.
        assert_eq!(pgsize(X86, K4, 2 * K4, 2 * M2), Some((K4, 0x400)));
        assert_eq!(pgsize(X86, M2, K4, 2 * M2), Some((K4, 0x400)));
        // 1 GiB + 2 MiB at 1 GiB - 2 MiB: one 2 MiB page then the boundary.
        assert_eq!(pgsize(X86, G1 - M2, G1 - M2, G1 + M2), Some((M2, 1)));
        // ... but with only 1 GiB left, 2 MiB pages all the way.
        assert_eq!(pgsize(X86, G1 - M2, G1 - M2, G1), Some((M2, 0x200)));
        // Top of the address space: the boundary arithmetic must not wrap.
        let top = !(K4 - 1);
        assert_eq!(pgsize(X86, top, top, K4), Some((K4, 1)));
        assert_eq!(pgsize(K4 | 1 << 63, K4, K4, top), Some((K4, ((1u64 << 63) - K4) >> 12)));
        // The mock's sizes: 2 KiB and 1 MiB.
        let mock = 0x800 | 0x10_0000;
        assert_eq!(pgsize(mock, 0x100_0000, 0x4000_0000, 0x20_0000), Some((0x10_0000, 2)));
        assert_eq!(pgsize(mock, 0x100_0800, 0x4000_0800, 0x20_0000), Some((0x800, 0x1ff)));
        assert_eq!(pgsize(mock, 0x100_0000, 0x4000_0800, 0x20_0000), Some((0x800, 0x400)));
    }

    #[test]
    fn restrict_caps_sizes() {
        assert_eq!(restrict(X86, 0), X86);
        assert_eq!(restrict(X86, K4), K4);
        assert_eq!(restrict(X86, M2), K4 | M2);
        // Not a power of two: everything up to its top bit.
        assert_eq!(restrict(X86, 3 * M2), K4 | M2);
        assert_eq!(restrict(X86, u64::MAX), X86);
    }

    /// A domain that records calls and maps nothing beyond a limit.
    struct Recorder {
        bitmap: u64,
        fail_at: u64,
        calls: std::sync::Mutex<Vec<(bool, u64, u64, u64)>>,
    }

    impl Domain for Recorder {
        fn pgsize_bitmap(&self) -> u64 {
            self.bitmap
        }
        fn aperture(&self) -> Aperture {
            Aperture { start: 0, last: u64::MAX }
        }
        fn map_pages(
            &self,
            iova: u64,
            _paddr: u64,
            pgsize: u64,
            pgcount: u64,
            _prot: Prot,
        ) -> Result<(), (Errno, u64)> {
            self.calls.lock().unwrap().push((true, iova, pgsize, pgcount));
            let end = iova + pgsize * pgcount;
            if end > self.fail_at {
                return Err((Errno::ENOMEM, self.fail_at.saturating_sub(iova)));
            }
            Ok(())
        }
        fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
            self.calls.lock().unwrap().push((false, iova, pgsize, pgcount));
            pgsize * pgcount
        }
        fn translate(&self, _iova: u64, _access: Access) -> Result<Translation, Fault> {
            Err(Fault::NotPresent)
        }
    }

    #[test]
    fn as_any_sees_the_model_through_arc() {
        let d: std::sync::Arc<dyn Domain> =
            std::sync::Arc::new(Recorder { bitmap: K4, fail_at: 0, calls: Default::default() });
        assert!(d.as_any().downcast_ref::<Recorder>().is_some());
        let r: &dyn Domain = &*d;
        assert!(r.as_any().downcast_ref::<Recorder>().is_some());
    }

    #[test]
    fn map_and_unmap_split_like_the_kernel() {
        let d = Recorder { bitmap: K4 | M2, fail_at: u64::MAX, calls: Default::default() };
        map(&d, M2 - K4, M2 - K4, M2 + 2 * K4, Prot::READ, 0).unwrap();
        // The kernel's unmap chooses sizes with paddr = iova, so it splits
        // at the same places even for a differently aligned paddr.
        assert_eq!(unmap(&d, M2 - K4, M2 + 2 * K4, 0), M2 + 2 * K4);
        let calls = d.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                (true, M2 - K4, K4, 1),
                (true, M2, M2, 1),
                (true, 2 * M2, K4, 1),
                (false, M2 - K4, K4, 1),
                (false, M2, M2, 1),
                (false, 2 * M2, K4, 1),
            ]
        );
    }

    #[test]
    fn map_rejects_and_unwinds() {
        let d = Recorder { bitmap: K4 | M2, fail_at: M2 + K4, calls: Default::default() };
        assert_eq!(map(&d, 0x800, 0, K4, Prot::READ, 0), Err(Errno::EINVAL));
        assert_eq!(map(&d, 0, 0, K4 + 1, Prot::READ, 0), Err(Errno::EINVAL));
        assert_eq!(map(&d, !0xfff, 0, 2 * K4, Prot::READ, 0), Err(Errno::EOVERFLOW));
        assert_eq!(map(&d, 0, !0xfff, 2 * K4, Prot::READ, 0), Err(Errno::EOVERFLOW));
        assert!(d.calls.lock().unwrap().is_empty());
        // Fails part way through the second chunk: all of it is unmapped.
        assert_eq!(map(&d, 0, 0, 4 * M2, Prot::READ, K4), Err(Errno::ENOMEM));
        let calls = d.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![(true, 0, K4, 2048), (false, 0, M2, 1), (false, M2, K4, 1)]);
        assert_eq!(unmap(&d, 0x800, K4, 0), 0);
        assert_eq!(unmap(&d, !0xfff, 2 * K4, 0), 0);
        assert_eq!(map(&d, 0, 0, 0, Prot::READ, 0), Ok(()));
        assert_eq!(unmap(&d, 0, 0, 0), 0);
    }
}
