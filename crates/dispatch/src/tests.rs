//! The user-command rules, exercised through the real dispatch path with
//! real (and deliberately bad) user pointers.

use std::sync::Arc;

use uiommufd_abi as abi;
use uiommufd_abi::Errno;
use uiommufd_core::Iommufd;
use zerocopy::{FromBytes, IntoBytes};

use crate::{iommufd_ioctl, LocalFds, OPS};

fn ioctl<T: IntoBytes + FromBytes + ?Sized>(ctx: &Arc<Iommufd>, req: u32, arg: &mut T) -> Result<i32, Errno> {
    raw(ctx, req as u64, arg.as_mut_bytes().as_mut_ptr() as u64)
}

fn raw(ctx: &Arc<Iommufd>, req: u64, arg: u64) -> Result<i32, Errno> {
    iommufd_ioctl(ctx, &LocalFds::default(), req, arg).map_err(|e| e.errno)
}

#[test]
fn unknown_and_mismatched_requests_are_enotty() {
    let ctx = Iommufd::new();
    let mut cmd = abi::IommuDestroy { size: 8, id: 0 };
    // Below the iommufd range: the VFIO compat path, which does not know it.
    assert_eq!(ioctl(&ctx, abi::ioctl::io(abi::IOMMUFD_TYPE, 0x7f), &mut cmd), Err(Errno::ENOTTY));
    // Past the table.
    assert_eq!(ioctl(&ctx, abi::ioctl::io(abi::IOMMUFD_TYPE, 0xa1), &mut cmd), Err(Errno::ENOTTY));
    // Inside the range but no command there.
    assert_eq!(ioctl(&ctx, abi::ioctl::io(abi::IOMMUFD_TYPE, 0x9f), &mut cmd), Err(Errno::ENOTTY));
    // Right nr, wrong type byte or direction bits.
    assert_eq!(ioctl(&ctx, abi::ioctl::io(b'T' as u32, 0x80), &mut cmd), Err(Errno::ENOTTY));
    let with_size = abi::ioctl::ioc(abi::ioctl::IOC_WRITE, abi::IOMMUFD_TYPE, 0x80, 8);
    assert_eq!(ioctl(&ctx, with_size, &mut cmd), Err(Errno::ENOTTY));
    // The upper 32 bits of the C `unsigned long` request are ignored.
    let wide = (1u64 << 32) | abi::IOMMU_DESTROY as u64;
    assert_eq!(raw(&ctx, wide, cmd.as_mut_bytes().as_mut_ptr() as u64), Err(Errno::ENOENT));
}

#[test]
fn bad_pointers_are_efault() {
    let ctx = Iommufd::new();
    assert_eq!(raw(&ctx, abi::IOMMU_DESTROY as u64, 0), Err(Errno::EFAULT));
    assert_eq!(raw(&ctx, abi::IOMMU_IOAS_ALLOC as u64, 16), Err(Errno::EFAULT));
    // A reply that cannot be written leaves no IOAS behind.
    let mut cmd = abi::IommuIoasAlloc { size: 12, ..Default::default() };
    let p = read_only_copy(cmd.as_bytes());
    assert_eq!(raw(&ctx, abi::IOMMU_IOAS_ALLOC as u64, p), Err(Errno::EFAULT));
    assert!(ctx.objects().is_empty());
    // The ID it would have used is free again.
    ioctl(&ctx, abi::IOMMU_IOAS_ALLOC, &mut cmd).unwrap();
    assert_eq!(cmd.out_ioas_id, 1);
}

#[test]
fn size_rules_hold_for_every_command() {
    let ctx = Iommufd::new();
    for op in OPS.iter().flatten() {
        // A buffer big enough for the struct plus a tail.
        let mut buf = vec![0u8; op.size + 64];
        let call = |buf: &mut Vec<u8>, size: u32| {
            buf[..4].copy_from_slice(&size.to_ne_bytes());
            raw(&ctx, op.ioctl as u64, buf.as_mut_ptr() as u64)
        };
        assert_eq!(call(&mut buf, op.min_size as u32 - 1), Err(Errno::EINVAL), "{}", op.name);
        assert_eq!(call(&mut buf, 0), Err(Errno::EINVAL), "{}", op.name);
        buf[op.size] = 0xff;
        assert_eq!(call(&mut buf, op.size as u32 + 1), Err(Errno::E2BIG), "{}", op.name);
        buf[op.size] = 0;
        buf[op.size + 63] = 1;
        assert_eq!(call(&mut buf, op.size as u32 + 64), Err(Errno::E2BIG), "{}", op.name);
        buf[op.size + 63] = 0;
        // Exact size and a zero tail give the same answer.
        buf[4..].fill(0);
        let exact = call(&mut buf, op.size as u32);
        buf[4..].fill(0);
        let longer = call(&mut buf, op.size as u32 + 64);
        assert_eq!(exact.is_ok(), longer.is_ok(), "{}", op.name);
        if let (Err(a), Err(b)) = (exact, longer) {
            assert_eq!(a, b, "{}", op.name);
        }
    }
}

#[test]
fn zero_tail_running_into_unmapped_memory_is_efault() {
    let ctx = Iommufd::new();
    // Two pages; the second is unmapped, and the struct ends the first.
    // SAFETY: a fresh private anonymous mapping we own.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: unmapping the second page of our own mapping.
    assert_eq!(unsafe { libc::munmap((p as usize + 4096) as *mut _, 4096) }, 0);
    for op in OPS.iter().flatten() {
        let at = p as u64 + 4096 - op.size as u64;
        uiommufd_memory::copy_to_user(at, &u32::MAX.to_ne_bytes()).unwrap();
        // The (zero) tail runs off the mapping: the kernel faults, not E2BIG.
        assert_eq!(raw(&ctx, op.ioctl as u64, at), Err(Errno::EFAULT), "{}", op.name);
    }
}

#[test]
fn short_struct_is_zero_extended() {
    let ctx = Iommufd::new();
    let mut cmd = abi::IommuIoasAlloc { size: 12, ..Default::default() };
    ioctl(&ctx, abi::IOMMU_IOAS_ALLOC, &mut cmd).unwrap();
    // IOMMU_OPTION with only up to val64 is its full size; use DESTROY with
    // a size exactly covering `id`.
    let mut d = abi::IommuDestroy { size: 8, id: cmd.out_ioas_id };
    ioctl(&ctx, abi::IOMMU_DESTROY, &mut d).unwrap();
    assert_eq!(ioctl(&ctx, abi::IOMMU_DESTROY, &mut d), Err(Errno::ENOENT));
}

#[test]
fn reply_never_exceeds_user_size() {
    let ctx = Iommufd::new();
    // size = 12 exactly: out_ioas_id is written; bytes after it are not.
    let mut buf = [0u8; 20];
    buf[..4].copy_from_slice(&12u32.to_ne_bytes());
    buf[12..].fill(0xaa);
    // Bytes past `size` must be zero for the call to be accepted when the
    // size covers them, but here size=12 so the tail is never read.
    raw(&ctx, abi::IOMMU_IOAS_ALLOC as u64, buf.as_mut_ptr() as u64).unwrap();
    assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 1);
    assert!(buf[12..].iter().all(|&b| b == 0xaa));
}

#[test]
fn option_writes_only_val64() {
    let ctx = Iommufd::new();
    let mut cmd = abi::IommuOption {
        size: 24,
        option_id: abi::IOMMU_OPTION_RLIMIT_MODE,
        op: abi::IOMMU_OPTION_OP_GET,
        val64: 7,
        ..Default::default()
    };
    ioctl(&ctx, abi::IOMMU_OPTION, &mut cmd).unwrap();
    assert_eq!(cmd.val64, 0);
    cmd.__reserved = 1;
    assert_eq!(ioctl(&ctx, abi::IOMMU_OPTION, &mut cmd), Err(Errno::EOPNOTSUPP));
    cmd.__reserved = 0;
    cmd.option_id = 77;
    assert_eq!(ioctl(&ctx, abi::IOMMU_OPTION, &mut cmd), Err(Errno::EOPNOTSUPP));
}

#[test]
fn ioas_alloc_flags_and_destroy() {
    let ctx = Iommufd::new();
    let mut cmd = abi::IommuIoasAlloc { size: 12, flags: 1, out_ioas_id: 0 };
    assert_eq!(ioctl(&ctx, abi::IOMMU_IOAS_ALLOC, &mut cmd), Err(Errno::EOPNOTSUPP));
    cmd.flags = 0;
    ioctl(&ctx, abi::IOMMU_IOAS_ALLOC, &mut cmd).unwrap();
    assert_eq!(cmd.out_ioas_id, 1);
    let mut d = abi::IommuDestroy { size: 8, id: 1 };
    ioctl(&ctx, abi::IOMMU_DESTROY, &mut d).unwrap();
}

/// A fresh page holding `bytes` and then made read-only, to provoke reply
/// faults. The mapping is leaked (tests are short-lived).
fn read_only_copy(bytes: &[u8]) -> u64 {
    // SAFETY: a new private anonymous page; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: `p` is a writable page we own; `bytes` is shorter than a page.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len()) };
    // SAFETY: changing protection of the page we just mapped.
    assert_eq!(unsafe { libc::mprotect(p, 4096, libc::PROT_READ) }, 0);
    p as u64
}
