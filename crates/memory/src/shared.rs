//! Shared register memory.
//!
//! A device whose BAR a program may `mmap`, or an IOMMU whose register page
//! it may (a Tegra241 CMDQV's VINTF page), keeps those registers in a memfd
//! ([`SharedMemory`]) mapped `MAP_SHARED` into this process; the shim maps
//! the same file into the program, so the program's loads and stores and
//! the model's see one memory. Program stores do not trap: the model learns
//! of them only by reading the memory (see the DMA engine's worker).
//!
//! The access model, which is what makes this sound:
//! - Every access this process makes goes through a 64-bit atomic on an
//!   8-byte-aligned word ([`AtomicU64::from_ptr`]); no Rust reference to the
//!   plain bytes ever exists, because another mapping (the program's) may
//!   store to them at any time. Narrower accesses are a load of the
//!   containing word, or a compare-exchange loop on it, so no two accesses in
//!   this process mix sizes and a narrow write never loses a concurrent
//!   store to the other bytes of its word.
//! - The mapping is page aligned and a multiple of 8 bytes long; it stays
//!   mapped until the [`SharedMapping`] drops, and the memfd is sealed
//!   against shrinking, so no access can hit a truncated page (`SIGBUS`).
//!
//! Offsets are byte offsets from the start of the mapping; `len` is in
//! bytes. Accessors with a fixed width (`load_u64`, `store_u32`, …) take
//! offsets the caller computed from its own constants and panic on a
//! misaligned or out-of-range one (a bug in the device, not input); the
//! sized [`SharedMapping::read`]/[`SharedMapping::write`] validate a
//! caller's access and return `EINVAL`.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use uiommufd_abi::Errno;

use crate::sys::out_of_the_way;

fn last_errno() -> Errno {
    Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
}

/// A `MAP_SHARED`, read-write mapping of a file, accessed only atomically.
pub struct SharedMapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; every
// access through it is atomic (see the module comment), so sharing and
// sending the handle between threads is sound.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only ever yields atomic accesses.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Map the first `len` bytes of `fd` shared and read-write.
    ///
    /// `len` must be a non-zero multiple of 8 (`EINVAL`), and the file at
    /// least `len` bytes long (a shorter file would fault on access; the
    /// check is the caller's, as with any `mmap`).
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> Result<Self, Errno> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a fresh mapping at an address the kernel picks; it
        // replaces nothing, and the kernel validates `fd` and `len`.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(last_errno());
        }
        let addr = NonNull::new(addr.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        Ok(SharedMapping { addr, len })
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a mapping has at least one word.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The word holding byte `offset`, which must lie in the mapping.
    #[inline]
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset < self.len, "offset {offset:#x} outside a {:#x}-byte mapping", self.len);
        let index = offset / 8;
        // SAFETY: `index * 8 + 8 <= len` (len is a multiple of 8), so the
        // word lies inside the mapping, which lives as long as `&self`; the
        // base is page aligned, so the word is 8-byte aligned; and every
        // access this process makes to it is through an `AtomicU64` of the
        // same size (module comment), so the atomic view is never mixed
        // with a non-atomic or differently sized one.
        unsafe { AtomicU64::from_ptr(self.addr.as_ptr().add(index * 8).cast::<u64>()) }
    }

    /// The whole mapping as its words (word `i` holds bytes `8 * i ..
    /// 8 * i + 8`): for a caller that indexes registers by constants, so
    /// that the bounds check is one per view rather than one per access.
    #[inline]
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` is a multiple of 8 and the base is page aligned,
        // so the slice covers exactly the mapping, in aligned words; it
        // lives as long as `&self`; and every access this process makes
        // is through an `AtomicU64` of a whole word (module comment), which
        // is all a `&[AtomicU64]` allows.
        unsafe { std::slice::from_raw_parts(self.addr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Load the 8-byte word at `offset` (8-aligned).
    #[inline]
    pub fn load_u64(&self, offset: usize) -> u64 {
        assert!(offset.is_multiple_of(8), "misaligned u64 offset {offset:#x}");
        self.word(offset).load(Ordering::Acquire)
    }

    /// Store the 8-byte word at `offset` (8-aligned).
    #[inline]
    pub fn store_u64(&self, offset: usize, value: u64) {
        assert!(offset.is_multiple_of(8), "misaligned u64 offset {offset:#x}");
        self.word(offset).store(value, Ordering::Release)
    }

    /// Load the 4-byte value at `offset` (4-aligned).
    #[inline]
    pub fn load_u32(&self, offset: usize) -> u32 {
        assert!(offset.is_multiple_of(4), "misaligned u32 offset {offset:#x}");
        (self.word(offset).load(Ordering::Acquire) >> ((offset % 8) * 8)) as u32
    }

    /// Store the 4-byte value at `offset` (4-aligned), leaving the other
    /// half of its word as it is at the moment of the store.
    pub fn store_u32(&self, offset: usize, value: u32) {
        assert!(offset.is_multiple_of(4), "misaligned u32 offset {offset:#x}");
        let shift = (offset % 8) * 8;
        self.update_u64(offset & !7, |w| (w & !(0xffff_ffffu64 << shift)) | (u64::from(value) << shift));
    }

    /// Atomically replace the word at `offset` (8-aligned) with `f(old)`;
    /// returns the old value. `f` may run more than once.
    pub fn update_u64(&self, offset: usize, mut f: impl FnMut(u64) -> u64) -> u64 {
        assert!(offset.is_multiple_of(8), "misaligned u64 offset {offset:#x}");
        let word = self.word(offset);
        let mut old = word.load(Ordering::Acquire);
        loop {
            match word.compare_exchange_weak(old, f(old), Ordering::AcqRel, Ordering::Acquire) {
                Ok(v) => return v,
                Err(v) => old = v,
            }
        }
    }

    /// Zero the whole mapping, word by word.
    pub fn zero(&self) {
        for off in (0..self.len).step_by(8) {
            self.word(off).store(0, Ordering::Release);
        }
    }

    /// Check a register access: 1, 2, 4 or 8 bytes, naturally aligned,
    /// inside the mapping. Returns the byte shift inside the word.
    #[inline]
    fn check_access(&self, offset: u64, size: usize) -> Result<usize, Errno> {
        if !matches!(size, 1 | 2 | 4 | 8) || !offset.is_multiple_of(size as u64) {
            return Err(Errno::EINVAL);
        }
        match offset.checked_add(size as u64) {
            Some(end) if end <= self.len as u64 => Ok((offset % 8) as usize * 8),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Read a 1, 2, 4 or 8-byte naturally aligned value at `offset` into
    /// `buf` (little-endian, as a PCIe device's registers are); `EINVAL`
    /// for any other size, alignment or range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let shift = self.check_access(offset, buf.len())?;
        let word = self.word(offset as usize).load(Ordering::Acquire) >> shift;
        buf.copy_from_slice(&word.to_le_bytes()[..buf.len()]);
        Ok(())
    }

    /// Write a 1, 2, 4 or 8-byte naturally aligned value at `offset`,
    /// changing only the bits set in `writable` (a mask over the containing
    /// 8-byte word, bit 0 = bit 0 of the word's first byte); `EINVAL` for
    /// any other size, alignment or range.
    #[inline]
    pub fn write(&self, offset: u64, data: &[u8], writable: u64) -> Result<(), Errno> {
        let shift = self.check_access(offset, data.len())?;
        let value = register_value(data)? << shift;
        let width = if data.len() == 8 { u64::MAX } else { ((1u64 << (data.len() * 8)) - 1) << shift };
        let mask = width & writable;
        if mask != 0 {
            self.update_u64(offset as usize & !7, |w| (w & !mask) | (value & mask));
        }
        Ok(())
    }
}

/// The value of a 1, 2, 4 or 8-byte register access, little-endian (as a
/// PCIe device's registers are); `EINVAL` for any other size.
#[inline]
pub fn register_value(data: &[u8]) -> Result<u64, Errno> {
    Ok(match *data {
        [a] => u64::from(a),
        [a, b] => u64::from(u16::from_le_bytes([a, b])),
        [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
        _ => return Err(Errno::EINVAL),
    })
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the range is our own mapping, and `&mut self` proves no
        // access through it is in flight. A failure only leaks address
        // space.
        let _ = unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// A memfd of fixed size, mapped shared into this process: register memory
/// a program can map too.
pub struct SharedMemory {
    // Field order: unmap before closing (either order is correct; this one
    // reads naturally).
    map: SharedMapping,
    fd: OwnedFd,
}

impl SharedMemory {
    /// Create a memfd named `name` of `len` bytes (a non-zero multiple of
    /// 8; a page multiple for `mmap` by others), sealed against growing and
    /// shrinking, and map it.
    pub fn new(name: &CStr, len: usize) -> Result<Self, Errno> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: `name` is a valid C string; the flags are valid.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if raw < 0 {
            return Err(last_errno());
        }
        // Out of the program's way: it must see the descriptor numbers it
        // would see without us.
        let raw = out_of_the_way(raw);
        // SAFETY: memfd_create returned a fresh descriptor that nothing else
        // owns (moved, it is still ours alone).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len).map_err(|_| Errno::EINVAL)?;
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(last_errno());
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an int argument and only changes the
        // seals of our own descriptor's file.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(last_errno());
        }
        let map = SharedMapping::map(fd.as_fd(), len)?;
        Ok(SharedMemory { map, fd })
    }

    /// The memfd, for a shim to `mmap` into the program.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// This process's mapping.
    pub fn mapping(&self) -> &SharedMapping {
        &self.map
    }

    /// A second descriptor of the memfd (close-on-exec, out of the
    /// program's way), for a registry that hands the memory out by `mmap`
    /// on its own terms.
    pub fn dup_fd(&self) -> Result<OwnedFd, Errno> {
        let dup = self.fd.try_clone().map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EMFILE)))?;
        let raw = out_of_the_way(std::os::fd::IntoRawFd::into_raw_fd(dup));
        // SAFETY: `raw` is the duplicate we own alone (moved, still ours).
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Where this process's mapping lies: `start..end` in its address space.
    pub fn view(&self) -> std::ops::Range<u64> {
        let start = self.map.addr.as_ptr() as u64;
        start..start + self.map.len as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_access_and_masks() {
        let m = SharedMemory::new(c"t", 4096).unwrap();
        let map = m.mapping();
        map.write(8, &0x1122_3344u32.to_le_bytes(), u64::MAX).unwrap();
        map.write(12, &0xaabbu16.to_le_bytes(), u64::MAX).unwrap();
        assert_eq!(map.load_u64(8), 0x0000_aabb_1122_3344);
        // Only the writable bits change.
        map.write(8, &u64::MAX.to_le_bytes(), 0xff00).unwrap();
        assert_eq!(map.load_u64(8), 0x0000_aabb_1122_ff44);
        let mut b = [0u8; 2];
        map.read(12, &mut b).unwrap();
        assert_eq!(u16::from_le_bytes(b), 0xaabb);
        assert_eq!(map.read(13, &mut b), Err(Errno::EINVAL));
        assert_eq!(map.read(4095, &mut [0u8; 1]).map(|_| ()), Ok(()));
        assert_eq!(map.read(4096, &mut [0u8; 1]), Err(Errno::EINVAL));
        assert_eq!(map.read(0, &mut [0u8; 3]), Err(Errno::EINVAL));
        assert_eq!(map.write(u64::MAX - 3, &[0u8; 4], u64::MAX), Err(Errno::EINVAL));
        // A second mapping of the same memfd sees the same memory.
        let other = SharedMapping::map(m.fd(), 4096).unwrap();
        assert_eq!(other.load_u32(8), 0x1122_ff44);
        other.store_u32(4092, 7);
        assert_eq!(map.load_u32(4092), 7);
    }
}
