//! One user command in flight (`struct iommufd_ucmd`).

use std::sync::Arc;

use uiommufd_abi::Errno;
use uiommufd_core::error::{ErrnoExt, Result};
use uiommufd_core::Iommufd;

use crate::file::FdHost;
use uiommufd_memory::user;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// How much of a too-long user struct we scan per read when checking that
/// its unknown tail is zero.
const ZERO_CHECK_CHUNK: usize = 4096;

/// A command being executed: the context, the user buffer and its size.
pub struct Ucmd<'a> {
    pub ctx: &'a Arc<Iommufd>,
    /// Gives new files their descriptors.
    pub host: &'a dyn FdHost,
    /// User address of the command struct.
    pub ubuffer: u64,
    /// The `size` the user wrote in the struct's first field.
    pub user_size: u32,
}

impl<'a> Ucmd<'a> {
    pub(crate) fn new(ctx: &'a Arc<Iommufd>, host: &'a dyn FdHost, ubuffer: u64, user_size: u32) -> Self {
        Ucmd { ctx, host, ubuffer, user_size }
    }

    /// `copy_struct_from_user` into a `T`: zero-extend a short struct,
    /// require zeros past `size_of::<T>()` in a long one.
    pub fn read<T: FromBytes + IntoBytes>(&self) -> Result<T> {
        let ksize = core::mem::size_of::<T>();
        let usize_ = self.user_size as usize;
        let mut cmd = T::new_zeroed();
        if usize_ > ksize {
            check_zeroed_user(uaddr(self.ubuffer, ksize as u64).ctx("the command tail")?, usize_ - ksize)?;
        }
        let n = ksize.min(usize_);
        user::copy_from_user(&mut cmd.as_mut_bytes()[..n], self.ubuffer).ctx("reading the command")?;
        Ok(cmd)
    }

    /// `iommufd_ucmd_respond`: copy the whole struct back, truncated to the
    /// user's size.
    pub fn respond<T: IntoBytes + Immutable>(&self, cmd: &T) -> Result<()> {
        let bytes = cmd.as_bytes();
        let n = bytes.len().min(self.user_size as usize);
        user::copy_to_user(self.ubuffer, &bytes[..n]).ctx("writing the reply")
    }

    /// Copy one field back at byte `offset` of the user struct, as handlers
    /// that reply with a single field do (`IOMMU_OPTION` writes `val64`).
    pub fn respond_field(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        user::copy_to_user(uaddr(self.ubuffer, offset as u64).ctx("writing the reply")?, bytes).ctx("writing the reply")
    }
}

/// User address `base + off`: a sum past the address space is a pointer
/// the kernel's `access_ok` refuses, `EFAULT`.
fn uaddr(base: u64, off: u64) -> std::result::Result<u64, Errno> {
    base.checked_add(off).ok_or(Errno::EFAULT)
}

/// `check_zeroed_user`: `E2BIG` at the first non-zero byte, `EFAULT` if the
/// range cannot be read.
fn check_zeroed_user(addr: u64, len: usize) -> Result<()> {
    let mut buf = [0u8; ZERO_CHECK_CHUNK];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(ZERO_CHECK_CHUNK);
        user::copy_from_user(&mut buf[..n], uaddr(addr, done as u64).ctx("reading the command tail")?)
            .ctx("reading the command tail")?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(uiommufd_core::Error::new(Errno::E2BIG, "unknown trailing fields are not zero"));
        }
        done += n;
    }
    Ok(())
}

/// A reader for driver data at user address `uptr` of `ulen` bytes, with
/// `copy_struct_from_user` rules against the kernel size (the buffer's).
pub fn struct_reader(uptr: u64, ulen: u64) -> impl FnMut(&mut [u8]) -> std::result::Result<(), Errno> {
    move |buf: &mut [u8]| read_struct(uptr, ulen, buf)
}

/// An entry reader for an array of `entry_len`-byte records at `uptr`.
pub fn array_reader(uptr: u64, entry_len: u64) -> impl FnMut(u32, &mut [u8]) -> std::result::Result<(), Errno> {
    move |index: u32, buf: &mut [u8]| {
        let at = uptr.checked_add(entry_len.checked_mul(index as u64).ok_or(Errno::EOVERFLOW)?).ok_or(Errno::EFAULT)?;
        read_struct(at, entry_len, buf)
    }
}

fn read_struct(uptr: u64, ulen: u64, buf: &mut [u8]) -> std::result::Result<(), Errno> {
    buf.fill(0);
    let ksize = buf.len() as u64;
    let n = ksize.min(ulen) as usize;
    if ulen > ksize {
        check_zeroed_user(uaddr(uptr, ksize)?, (ulen - ksize) as usize).map_err(|e| e.errno)?;
    }
    user::copy_from_user(&mut buf[..n], uptr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User pointers near the top of the address space with lengths that
    /// carry the sum past it: `EFAULT`, as `access_ok` answers, never an
    /// overflow.
    #[test]
    fn pointer_plus_size_past_the_top_is_efault() {
        let mut buf = [0u8; 8];
        for uptr in [u64::MAX, u64::MAX - 3, u64::MAX - 8] {
            assert_eq!(struct_reader(uptr, 64)(&mut buf), Err(Errno::EFAULT));
            assert_eq!(array_reader(uptr, 64)(1, &mut buf), Err(Errno::EFAULT));
            assert_eq!(check_zeroed_user(uptr, 4096).map_err(|e| e.errno), Err(Errno::EFAULT));
        }
        assert_eq!(array_reader(8, u64::MAX)(2, &mut buf), Err(Errno::EOVERFLOW));
    }
}
