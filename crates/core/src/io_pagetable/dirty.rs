//! Dirty tracking over an io_pagetable (`io_pagetable.c`: the
//! `iopt_*_dirty*` functions, and `iova_bitmap.c`).
//!
//! The user's bitmap has one bit per `page_size` bytes of IOVA from `iova`,
//! little-endian within bytes, at any byte address. Dirty leaves reported by
//! the domain are clipped to the requested range and ORed into it; bits are
//! never cleared in user memory. The bitmap is processed in windows so a
//! huge range costs bounded memory.

use uiommufd_hw::Domain;
use uiommufd_memory::user;

use super::{lock_read, IoPagetable};
use crate::error::{einval, eopnotsupp, eoverflow, ErrnoExt, Result};

/// Bitmap bytes per window (512 Ki bits).
const WINDOW_BYTES: u64 = 64 * 1024;

/// A request of `IOMMU_HWPT_GET_DIRTY_BITMAP`.
#[derive(Clone, Copy, Debug)]
pub struct DirtyBitmap {
    pub iova: u64,
    pub length: u64,
    pub page_size: u64,
    /// User address of the bitmap.
    pub data: u64,
    /// Leave the dirty bits set (`IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`).
    pub no_clear: bool,
}

impl IoPagetable {
    /// `iommufd_check_iova_range`.
    pub fn check_dirty_range(&self, b: &DirtyBitmap) -> Result<u64> {
        let align = self.iova_alignment();
        if b.length == 0 {
            return Err(einval("length is zero"));
        }
        let last = b.iova.checked_add(b.length - 1).ok_or(eoverflow("IOVA range wraps"))?;
        let end = last.checked_add(1);
        let aligned = |a: u64| end.is_none_or(|e| e & (a - 1) == 0) && b.iova & (a - 1) == 0;
        if !aligned(align) {
            return Err(einval("range is not aligned to the IOAS alignment"));
        }
        if b.page_size == 0 || !b.page_size.is_power_of_two() {
            return Err(einval("page_size must be a power of two"));
        }
        if !aligned(b.page_size) {
            return Err(einval("range is not aligned to page_size"));
        }
        Ok(last)
    }

    /// `iopt_set_dirty_tracking`: enabling first clears stale dirty bits of
    /// every mapped area, so the first harvest starts clean.
    pub fn set_dirty_tracking(&self, domain: &dyn Domain, enable: bool) -> Result<()> {
        let ops = domain.dirty_ops().ok_or(eopnotsupp("the domain cannot track dirty pages"))?;
        // Afterwards, device writes walk again to set dirty bits.
        let _atc = uiommufd_memory::atc::InvalidateOnDrop;
        let st = lock_read(&self.iova);
        if enable {
            for (iova, a) in st.areas.iter() {
                if a.pages.is_some() {
                    ops.read_and_clear_dirty(iova, a.len(iova), false, None).ctx("clearing dirty bits")?;
                }
            }
        }
        ops.set_dirty_tracking(enable).ctx("switching dirty tracking")
    }

    /// `iopt_read_and_clear_dirty_data`: harvest dirty bits of
    /// `[b.iova, b.iova + b.length)` into the user bitmap. The range must be
    /// covered by contiguous areas (the walk fails with `EINVAL` at the
    /// first hole; what it harvested before stays written).
    ///
    /// The kernel (`iova_bitmap.c`) pins the user's bitmap lazily, only
    /// where a bit is to be set, and a page it cannot pin loses its bits
    /// silently (no error in either release, oracle). `report_errors` is the
    /// release's `dirty_bitmap_reports_errors`: 6.12 answers the walk's
    /// error, 7.3 answers 0 whatever happened (oracle).
    pub fn read_and_clear_dirty(&self, domain: &dyn Domain, b: &DirtyBitmap, report_errors: bool) -> Result<()> {
        let last = self.check_dirty_range(b)?;
        let ops = domain.dirty_ops().ok_or(eopnotsupp("the domain cannot track dirty pages"))?;
        // Cleared dirty bits: device writes must walk again to set them.
        let _atc = uiommufd_memory::atc::InvalidateOnDrop;
        let st = lock_read(&self.iova);
        let nbits = (last - b.iova) / b.page_size + 1;
        let window_bits = WINDOW_BYTES * 8;
        let mut first_bit = 0u64;
        let mut buf = Vec::new();
        let mut walk = Ok(());
        while first_bit < nbits && walk.is_ok() {
            let bits = (nbits - first_bit).min(window_bits);
            let w_iova = b.iova + first_bit * b.page_size;
            let w_last = w_iova + (bits * b.page_size - 1);
            // Bits [first_bit, first_bit + bits) live in these bytes; windows
            // start on byte boundaries, so no byte is shared between them.
            let byte0 = first_bit / 8;
            let nbytes = (first_bit + bits).div_ceil(8) - byte0;
            buf.clear();
            buf.resize(nbytes as usize, 0);
            let mut set = |iova: u64, len: u64| {
                let s = iova.max(w_iova);
                let e = iova.saturating_add(len - 1).min(w_last);
                if s > e {
                    return;
                }
                let (bs, be) = ((s - b.iova) / b.page_size, (e - b.iova) / b.page_size);
                for bit in bs..=be {
                    let rel = bit - byte0 * 8;
                    buf[(rel / 8) as usize] |= 1 << (rel % 8);
                }
            };
            // Walk the contiguous areas of this window.
            let mut cur = w_iova;
            walk = loop {
                let Some((_, a)) = st.areas.at_or_before(cur).filter(|(_, a)| a.last >= cur && a.pages.is_some())
                else {
                    break Err(einval("range is not fully mapped"));
                };
                let piece_last = a.last.min(w_last);
                let r = ops.read_and_clear_dirty(cur, piece_last - cur + 1, b.no_clear, Some(&mut set));
                if let Err(e) = r.ctx("reading dirty bits") {
                    break Err(e);
                }
                if piece_last == w_last {
                    break Ok(());
                }
                cur = piece_last + 1;
            };
            or_into_user(b.data.wrapping_add(byte0), &buf);
            first_bit += bits;
        }
        if report_errors {
            walk
        } else {
            Ok(())
        }
    }
}

/// OR `bits` into user memory at `addr`, a user page at a time and only
/// where a byte is non-zero, as the kernel's lazily pinned bitmap does (a
/// page that cannot be read and written keeps its old bits).
fn or_into_user(addr: u64, bits: &[u8]) {
    const PAGE: u64 = 4096;
    let mut off = 0usize;
    while off < bits.len() {
        let at = addr.wrapping_add(off as u64);
        let chunk = ((PAGE - at % PAGE) as usize).min(bits.len() - off);
        let src = &bits[off..off + chunk];
        if let Some(first) = src.iter().position(|&x| x != 0) {
            let last = src.iter().rposition(|&x| x != 0).unwrap_or(first);
            let mut cur = vec![0u8; last - first + 1];
            let uaddr = at.wrapping_add(first as u64);
            if user::copy_from_user(&mut cur, uaddr).is_ok() {
                cur.iter_mut().zip(&src[first..=last]).for_each(|(d, s)| *d |= s);
                // A page readable but not writable loses its bits, as one
                // the kernel cannot pin for writing.
                let _ = user::copy_to_user(uaddr, &cur);
            }
        }
        off += chunk;
    }
}
