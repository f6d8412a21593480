//! `IOMMU_IOAS_MAP_FILE` and `IOMMU_IOAS_CHANGE_PROCESS` with real files:
//! memfds, regular files on tmpfs and on a disk file system, pipes.
//!
//! Devices are the selftest's mock domains; what a device sees is read by
//! translating the IOVA in the domain and reading the frame
//! (`frames::read_phys`), since file pages have no user address to compare
//! with. Runs in its own process (an integration test), one test at a time,
//! because it checks global frame and charge counts and forks.

use std::ffi::CString;
use std::sync::{Arc, Mutex, MutexGuard};

use uiommufd_abi::test_cmd::{MOCK_APERTURE_START, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES};
use uiommufd_core::account::{locked_pages, AccountMode};
use uiommufd_core::io_pagetable::PagesSlice;
use uiommufd_core::ioas::map_flags;
use uiommufd_core::object::ObjectId;
use uiommufd_core::pages::{page_size, Pages};
use uiommufd_core::{selftest, Errno, Iommufd};
use uiommufd_hw::Prot;
use uiommufd_memory::{filemap, frames};

const RW: u32 = map_flags::READABLE | map_flags::WRITEABLE;

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn ps() -> u64 {
    page_size()
}

/// An owned descriptor, closed on drop.
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this test opened.
        unsafe { libc::close(self.0) };
    }
}

fn memfd(len: u64, flags: u32) -> Fd {
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"map-file-test".as_ptr(), flags) };
    assert!(fd >= 0);
    // SAFETY: sizing our own memfd.
    assert_eq!(unsafe { libc::ftruncate(fd, len as i64) }, 0);
    Fd(fd)
}

/// A fresh regular file in `dir`, `len` bytes, unlinked, opened with
/// `oflags` (`O_RDWR` or `O_RDONLY`).
fn regular_file(dir: &str, len: u64, oflags: i32) -> Fd {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = format!("{dir}/uiommufd-map-file-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let c = CString::new(path).expect("no NUL");
    // SAFETY: creating a file by a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) };
    assert!(fd >= 0, "cannot create a file in {dir}");
    // SAFETY: sizing our own file, then unlinking it (the descriptor keeps it).
    unsafe {
        assert_eq!(libc::ftruncate(fd, len as i64), 0);
        libc::unlink(c.as_ptr());
    }
    if oflags == libc::O_RDWR {
        return Fd(fd);
    }
    let proc = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    // SAFETY: reopening our own file through procfs, then closing the first
    // descriptor.
    let fd2 = unsafe {
        let fd2 = libc::open(proc.as_ptr(), oflags);
        libc::close(fd);
        fd2
    };
    assert!(fd2 >= 0);
    Fd(fd2)
}

fn is_tmpfs(fd: &Fd) -> bool {
    let mut s = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills `s`.
    assert_eq!(unsafe { libc::fstatfs(fd.0, s.as_mut_ptr()) }, 0);
    // SAFETY: filled above.
    (unsafe { s.assume_init() }.f_type as u64 & 0xffff_ffff) == 0x0102_1994
}

fn pwrite(fd: &Fd, off: u64, data: &[u8]) {
    // SAFETY: writing from a live buffer into our own file.
    let n = unsafe { libc::pwrite(fd.0, data.as_ptr().cast(), data.len(), off as i64) };
    assert_eq!(n, data.len() as isize);
}

fn pread(fd: &Fd, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: reading from our own file into a live buffer.
    let n = unsafe { libc::pread(fd.0, v.as_mut_ptr().cast(), len, off as i64) };
    assert_eq!(n, len as isize);
    v
}

/// A context with one IOAS and, when `domain`, a mock device attached to
/// it; returns the context, the IOAS and the HWPT (0 without).
fn setup(domain: bool) -> (Arc<Iommufd>, ObjectId, ObjectId) {
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    let mut hwpt = 0;
    if domain {
        let p = selftest::mock_domain(&ctx, ioas, 0).unwrap();
        hwpt = p.hwpt_id;
        p.publish();
    }
    (ctx, ioas, hwpt)
}

/// Run `f` on each physical piece of `[iova, iova + len)` in `hwpt`.
fn dma(ctx: &Iommufd, hwpt: ObjectId, iova: u64, len: usize, mut f: impl FnMut(u64, usize, usize)) {
    let (_h, domain) = selftest::mock_domain_of(ctx, hwpt).unwrap();
    let mut done = 0;
    while done < len {
        let at = iova + done as u64;
        let pa = domain.iova_to_phys(at).expect("IOVA is mapped");
        let n = (len - done).min((ps() - at % ps()) as usize);
        f(pa, done, n);
        done += n;
    }
}

/// What the device behind `hwpt` reads at `iova`.
fn dma_read(ctx: &Iommufd, hwpt: ObjectId, iova: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    dma(ctx, hwpt, iova, len, |pa, off, n| frames::read_phys(pa, &mut out[off..off + n]).unwrap());
    out
}

/// The device behind `hwpt` writes `data` at `iova`.
fn dma_write(ctx: &Iommufd, hwpt: ObjectId, iova: u64, data: &[u8]) {
    dma(ctx, hwpt, iova, data.len(), |pa, off, n| frames::write_phys(pa, &data[off..off + n]).unwrap());
}

#[test]
fn device_sees_and_writes_the_file() {
    let _g = serial();
    let baseline = frames::total_pins();
    let (ctx, ioas, hwpt) = setup(true);
    let f = memfd(4 * ps(), 0);
    pwrite(&f, 0, b"first page");
    pwrite(&f, ps() + 7, b"second page");
    let iova = ctx.ioas_map_file(ioas, RW, f.0, 0, 2 * ps(), 0).unwrap();
    assert_eq!(frames::total_pins(), baseline + 2, "a domain pins the pages at once");
    assert_eq!(dma_read(&ctx, hwpt, iova, 10), b"first page");
    assert_eq!(dma_read(&ctx, hwpt, iova + ps() + 7, 11), b"second page");
    // Device writes land in the file; the program's writes reach the device.
    dma_write(&ctx, hwpt, iova + 100, b"from the device");
    assert_eq!(pread(&f, 100, 15), b"from the device");
    pwrite(&f, ps(), b"new");
    assert_eq!(dma_read(&ctx, hwpt, iova + ps(), 3), b"new");
    // The descriptor is not needed once mapped.
    drop(f);
    assert_eq!(dma_read(&ctx, hwpt, iova, 5), b"first");
    assert_eq!(ctx.ioas_unmap(ioas, iova, 2 * ps()).unwrap(), 2 * ps());
    assert_eq!(frames::total_pins(), baseline, "unmap releases every pin");
}

#[test]
fn offsets_within_the_file() {
    let _g = serial();
    let (ctx, ioas, hwpt) = setup(true);
    let f = memfd(8 * ps(), 0);
    pwrite(&f, 3 * ps(), b"page three");
    pwrite(&f, 5 * ps() - 4, b"abcdefgh");
    // A page-aligned start at a fixed IOVA.
    let at = MOCK_APERTURE_START + 0x40_0000;
    let iova = ctx.ioas_map_file(ioas, RW | map_flags::FIXED_IOVA, f.0, 3 * ps(), ps(), at).unwrap();
    assert_eq!(iova, at);
    assert_eq!(dma_read(&ctx, hwpt, at, 10), b"page three");
    // A start mid-page (no domain asks for alignment): the IOVA keeps the
    // offset within the page, and an access reads from the right byte.
    let (ctx2, ioas2, _) = setup(false);
    let sub = ctx2.ioas_map_file(ioas2, RW, f.0, 5 * ps() - 4, 8, 0).unwrap();
    assert_eq!(sub % ps(), ps() - 4);
    let acc = selftest::create_access(&ctx2, ioas2, 0).unwrap();
    let mut buf = [0u8; 8];
    acc.access().rw(sub, &mut buf, false, false).unwrap();
    assert_eq!(&buf, b"abcdefgh");
    // Writes through the access land in the file, fast path or slow.
    acc.access().rw(sub + 2, &mut { *b"ZZ" }, true, false).unwrap();
    acc.access().rw(sub + 4, &mut { *b"YY" }, true, true).unwrap();
    assert_eq!(pread(&f, 5 * ps() - 4, 8), b"abZZYYgh");
}

#[test]
fn accesses_and_copies_share_the_file_frames() {
    let _g = serial();
    let baseline = frames::total_pins();
    let (ctx, ioas, _) = setup(false);
    let f = memfd(2 * ps(), 0);
    pwrite(&f, 0, b"hello");
    let iova = ctx.ioas_map_file(ioas, RW, f.0, 0, 2 * ps(), 0).unwrap();
    assert_eq!(frames::total_pins(), baseline, "no domain, no pins");
    // Copied into a second IOAS with a domain: the same file pages.
    let dst = ctx.ioas_alloc().unwrap();
    let p = selftest::mock_domain(&ctx, dst, 0).unwrap();
    let hwpt = p.hwpt_id;
    p.publish();
    let d_iova = ctx.ioas_copy(dst, ioas, RW, 2 * ps(), 0, iova).unwrap();
    assert_eq!(dma_read(&ctx, hwpt, d_iova, 5), b"hello");
    assert_eq!(frames::total_pins(), baseline + 2);
    // An access pin of the same pages shares the frames: pinned once.
    let acc = selftest::create_access(&ctx, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES).unwrap();
    let pinned = acc.access().pin(iova, ps(), true).unwrap();
    assert_eq!(frames::total_pins(), baseline + 2);
    acc.access().unpin(pinned);
    drop(acc);
    ctx.ioas_unmap(dst, 0, u64::MAX).unwrap();
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    assert_eq!(frames::total_pins(), baseline);
}

#[test]
fn regular_files_and_other_descriptors() {
    let _g = serial();
    let baseline = frames::total_pins();
    let (ctx, ioas, hwpt) = setup(true);
    // A regular file on tmpfs is shmem: it works like a memfd.
    let shm = regular_file("/dev/shm", 2 * ps(), libc::O_RDWR);
    pwrite(&shm, ps() + 1, b"tmpfs");
    let iova = ctx.ioas_map_file(ioas, RW, shm.0, ps(), ps(), 0).unwrap();
    assert_eq!(dma_read(&ctx, hwpt, iova + 1, 5), b"tmpfs");
    dma_write(&ctx, hwpt, iova + 1, b"TMPFS");
    assert_eq!(pread(&shm, ps() + 1, 5), b"TMPFS");
    ctx.ioas_unmap(ioas, iova, ps()).unwrap();
    // A file on a disk file system cannot be pinned (the kernel's
    // memfd_pin_folios takes shmem and hugetlbfs only): EINVAL with a
    // domain to pin for, accepted without one, and then EINVAL for an
    // access, which pins.
    let disk = regular_file(env!("CARGO_TARGET_TMPDIR"), 2 * ps(), libc::O_RDWR);
    if !is_tmpfs(&disk) {
        assert_eq!(ctx.ioas_map_file(ioas, RW, disk.0, 0, ps(), 0).unwrap_err().errno, Errno::EINVAL);
        let (ctx2, ioas2, _) = setup(false);
        let at = ctx2.ioas_map_file(ioas2, RW, disk.0, 0, ps(), 0).unwrap();
        let acc = selftest::create_access(&ctx2, ioas2, 0).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(acc.access().rw(at, &mut b, false, false).unwrap_err().errno, Errno::EINVAL);
    }
    // So is a pipe.
    let mut p = [0i32; 2];
    // SAFETY: pipe writes two descriptors into `p`.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    let (r, w) = (Fd(p[0]), Fd(p[1]));
    assert_eq!(ctx.ioas_map_file(ioas, map_flags::READABLE, r.0, 0, ps(), 0).unwrap_err().errno, Errno::EINVAL);
    drop((r, w));
    assert_eq!(ctx.ioas(ioas).unwrap().iopt().num_areas(), 0);
    assert_eq!(frames::total_pins(), baseline);
}

#[test]
fn bad_requests() {
    let _g = serial();
    let (ctx, ioas, hwpt) = setup(true);
    let f = memfd(4 * ps(), libc::MFD_ALLOW_SEALING);
    let err =
        |flags, fd, start, length, iova| ctx.ioas_map_file(ioas, flags, fd, start, length, iova).unwrap_err().errno;
    // Checks before the IOAS lookup.
    assert_eq!(err(1 << 3 | RW, f.0, 0, ps(), 0), Errno::EOPNOTSUPP);
    assert_eq!(err(RW, f.0, 0, u64::MAX, 0), Errno::EOVERFLOW);
    assert_eq!(err(RW | map_flags::FIXED_IOVA, f.0, 0, ps(), u64::MAX), Errno::EOVERFLOW);
    assert_eq!(err(0, f.0, 0, ps(), 0), Errno::EINVAL);
    assert_eq!(ctx.ioas_map_file(999, RW, f.0, 0, ps(), 0).unwrap_err().errno, Errno::ENOENT);
    // The file range.
    assert_eq!(err(RW, f.0, 0, 0, 0), Errno::EINVAL);
    assert_eq!(err(RW, f.0, u64::MAX - 10, 12, 0), Errno::EOVERFLOW);
    assert_eq!(err(RW, -1, 0, 0, 0), Errno::EINVAL, "length is checked before the descriptor");
    // The descriptor: not open, or O_PATH.
    assert_eq!(err(RW, -1, 0, ps(), 0), Errno::EBADF);
    assert_eq!(err(RW, 1 << 20, 0, ps(), 0), Errno::EBADF);
    let path = CString::new("/dev/shm").unwrap();
    // SAFETY: opening a directory as O_PATH.
    let opath = Fd(unsafe { libc::open(path.as_ptr(), libc::O_PATH) });
    assert!(opath.0 >= 0);
    assert_eq!(err(RW, opath.0, 0, ps(), 0), Errno::EBADF);
    // WRITEABLE needs a descriptor open for writing.
    let ro = regular_file("/dev/shm", ps(), libc::O_RDONLY);
    assert_eq!(err(RW, ro.0, 0, ps(), 0), Errno::EPERM);
    let iova = ctx.ioas_map_file(ioas, map_flags::READABLE, ro.0, 0, ps(), 0).unwrap();
    ctx.ioas_unmap(ioas, iova, ps()).unwrap();
    // A writable mapping holds off write seals (the kernel's
    // mapping_map_writable), and a write-sealed file cannot be mapped
    // WRITEABLE.
    let iova = ctx.ioas_map_file(ioas, RW, f.0, 0, ps(), 0).unwrap();
    // SAFETY: sealing our own memfd.
    assert_eq!(unsafe { libc::fcntl(f.0, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) }, -1);
    ctx.ioas_unmap(ioas, iova, ps()).unwrap();
    // SAFETY: sealing our own memfd.
    assert_eq!(unsafe { libc::fcntl(f.0, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) }, 0);
    assert_eq!(err(RW, f.0, 0, ps(), 0), Errno::EPERM);
    let iova = ctx.ioas_map_file(ioas, map_flags::READABLE, f.0, 0, ps(), 0).unwrap();
    assert_eq!(dma_read(&ctx, hwpt, iova, 1), [0]);
    ctx.ioas_unmap(ioas, iova, ps()).unwrap();
    // Past the end of the file: pinning for the domain fails, and the map
    // with it.
    let g = memfd(2 * ps(), 0);
    assert_eq!(err(RW, g.0, 0, 2 * ps() + 1, 0), Errno::EINVAL);
    assert_eq!(err(RW, g.0, 2 * ps(), ps(), 0), Errno::EINVAL);
    // SAFETY: truncating our own memfd.
    assert_eq!(unsafe { libc::ftruncate(g.0, 0) }, 0);
    assert_eq!(err(RW, g.0, 0, ps(), 0), Errno::EINVAL);
    // IOVA rules are those of IOMMU_IOAS_MAP.
    let h = memfd(2 * ps(), 0);
    let at = ctx.ioas_map_file(ioas, RW, h.0, 0, ps(), 0).unwrap();
    assert_eq!(err(RW | map_flags::FIXED_IOVA, h.0, 0, ps(), at), Errno::EEXIST);
    ctx.ioas_unmap(ioas, at, ps()).unwrap();
    assert_eq!(ctx.ioas(ioas).unwrap().iopt().num_areas(), 0);
}

#[test]
fn truncation_under_a_pin_is_efault_not_a_crash() {
    let _g = serial();
    let (ctx, ioas, hwpt) = setup(true);
    let f = memfd(2 * ps(), 0);
    let iova = ctx.ioas_map_file(ioas, RW, f.0, 0, 2 * ps(), 0).unwrap();
    // SAFETY: truncating our own memfd under the mapping.
    assert_eq!(unsafe { libc::ftruncate(f.0, ps() as i64) }, 0);
    let (_h, domain) = selftest::mock_domain_of(&ctx, hwpt).unwrap();
    let pa = domain.iova_to_phys(iova + ps()).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(frames::read_phys(pa, &mut b), Err(Errno::EFAULT));
    assert_eq!(frames::write_phys(pa, &b), Err(Errno::EFAULT));
    assert_eq!(dma_read(&ctx, hwpt, iova, 4), [0; 4]);
    ctx.ioas_unmap(ioas, iova, 2 * ps()).unwrap();
}

#[test]
fn change_process_takes_only_file_mappings() {
    let _g = serial();
    let (ctx, ioas, _) = setup(true);
    // Nothing mapped: nothing to do.
    ctx.ioas_change_process().unwrap();
    let f = memfd(4 * ps(), 0);
    let a = ctx.ioas_map_file(ioas, RW, f.0, 0, 2 * ps(), 0).unwrap();
    let other = ctx.ioas_alloc().unwrap();
    ctx.ioas_map_file(other, RW, f.0, 2 * ps(), ps(), 0).unwrap();
    let locked = locked_pages();
    ctx.ioas_change_process().unwrap();
    assert_eq!(locked_pages(), locked, "already charged to this process: nothing moves");
    // A user mapping in any IOAS makes it fail.
    let mut buf = vec![0u8; 3 * ps() as usize];
    let va = (buf.as_mut_ptr() as u64).next_multiple_of(ps());
    let u = ctx.ioas_map(other, RW, va, ps(), 0).unwrap();
    assert_eq!(ctx.ioas_change_process().unwrap_err().errno, Errno::EINVAL);
    assert_eq!(locked_pages(), locked);
    ctx.ioas_unmap(other, u, ps()).unwrap();
    ctx.ioas_change_process().unwrap();
    ctx.ioas_unmap(ioas, a, 2 * ps()).unwrap();
    drop(buf);
}

/// Set `RLIMIT_MEMLOCK`'s soft limit to `pages` pages, as a library user
/// does: telling the engine, which caches the limit.
fn set_memlock(pages: u64) {
    set_memlock_unannounced(pages);
    uiommufd_memory::sys::limits_changed();
}

#[test]
fn change_process_moves_the_charges_of_an_inherited_engine() {
    let _g = serial();
    let f = memfd(2 * ps(), 0);
    let ctx = Iommufd::new();
    let ioas = ctx.ioas_alloc().unwrap();
    // File pages charged to the user counter whatever our capabilities.
    let info = filemap::inspect(f.0).unwrap();
    let pages = Pages::new_file(f.0, &info, 0, 2 * ps(), true, AccountMode::User).unwrap();
    let slice = PagesSlice { pages: Arc::new(pages), start_byte: 0, length: 2 * ps() };
    let iova = ctx.ioas(ioas).unwrap().iopt().map_pages(vec![slice], 2 * ps(), None, Prot::READ | Prot::WRITE).unwrap();
    let acc = selftest::create_access(&ctx, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES).unwrap();
    let before = locked_pages().0;
    let pinned = acc.access().pin(iova, 2 * ps(), false).unwrap();
    assert_eq!(locked_pages().0, before + 2);
    // In this process the pages are ours already.
    ctx.ioas_change_process().unwrap();
    assert_eq!(locked_pages().0, before + 2);
    // A child inherits the engine: there the pages belong to its parent,
    // and taking them over charges the child first (all or nothing).
    // SAFETY: the child only runs engine code that no other thread of this
    // test binary can be holding locks of (tests are serialized), then
    // leaves with _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        let code = (|| {
            let locked = locked_pages().0;
            set_memlock(locked + 1);
            if ctx.ioas_change_process().map_err(|e| e.errno) != Err(Errno::ENOMEM) || locked_pages().0 != locked {
                return 1;
            }
            set_memlock(u64::MAX);
            if ctx.ioas_change_process().is_err() || locked_pages().0 != locked {
                return 2;
            }
            // Now the child's own: nothing left to charge.
            set_memlock(locked);
            if ctx.ioas_change_process().is_err() {
                return 3;
            }
            0
        })();
        // SAFETY: leaving the forked child without running the parent's
        // exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status), "child died: {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child check failed");
    acc.access().unpin(pinned);
    drop(acc);
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    assert_eq!(locked_pages().0, before);
}

/// Free huge pages of the default size (`HugePages_Free`).
fn free_huge_pages() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("HugePages_Free:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn hugetlbfs_memfd() {
    let _g = serial();
    let huge = 2u64 << 20;
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"map-file-huge".as_ptr(), libc::MFD_HUGETLB) };
    if fd < 0 {
        return; // No hugetlbfs here.
    }
    let f = Fd(fd);
    // SAFETY: sizing our own memfd.
    if unsafe { libc::ftruncate(f.0, 2 * huge as i64) } != 0 {
        return;
    }
    let baseline = frames::total_pins();
    // Without a domain nothing is pinned: the mapping is accepted.
    let (ctx0, ioas0, _) = setup(false);
    let at = ctx0.ioas_map_file(ioas0, RW, f.0, huge + ps(), 2 * ps(), 0).unwrap();
    assert_eq!(at % ps(), 0);
    ctx0.ioas_unmap(ioas0, at, 2 * ps()).unwrap();
    let (ctx, ioas, hwpt) = setup(true);
    match ctx.ioas_map_file(ioas, RW, f.0, huge + ps(), 2 * ps(), 0) {
        Ok(iova) => {
            dma_write(&ctx, hwpt, iova + 3, b"huge");
            assert_eq!(dma_read(&ctx, hwpt, iova + 3, 4), b"huge");
            ctx.ioas_unmap(ioas, iova, 2 * ps()).unwrap();
        }
        // No huge page to back it: the pin fails (EINVAL here, see filemap).
        Err(e) => {
            assert_eq!(e.errno, Errno::EINVAL);
            assert_eq!(free_huge_pages(), 0);
        }
    }
    assert_eq!(frames::total_pins(), baseline);
}

/// Set `RLIMIT_MEMLOCK`'s soft limit behind the engine's back (no
/// `limits_changed`), as a raw system call or another process would.
fn set_memlock_unannounced(pages: u64) {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on our own limits.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl), 0);
        rl.rlim_cur = if pages == u64::MAX { rl.rlim_max } else { (pages * ps()).min(rl.rlim_max) };
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl), 0);
    }
}

/// The engine caches `RLIMIT_MEMLOCK` (a `getrlimit` per charged map was
/// most of its time): an announced change is seen at once, a raise is seen
/// at once even unannounced (a charge is refused only on the limit as it
/// is now), and an unannounced lowering within a bounded number of charges.
#[test]
fn memlock_limit_cache_sees_changes() {
    let _g = serial();
    let acc = uiommufd_core::account::Account::new(AccountMode::Process);
    let base = locked_pages().1;
    // Announced lowering: refused at once.
    set_memlock(base);
    assert_eq!(acc.charge(1).map_err(|e| e.errno), Err(Errno::ENOMEM));
    // Unannounced raise: seen by the charge that the cache would refuse.
    set_memlock_unannounced(base + 1);
    acc.charge(1).expect("a raised limit is honoured at once");
    acc.credit(1);
    // Unannounced lowering: seen within the recheck bound.
    set_memlock_unannounced(base);
    let refused = (0..1000).position(|_| match acc.charge(1) {
        Ok(()) => {
            acc.credit(1);
            false
        }
        Err(e) => {
            assert_eq!(e.errno, Errno::ENOMEM);
            true
        }
    });
    assert!(refused.is_some_and(|n| n <= 256), "a lowered limit is seen within 256 charges: {refused:?}");
    set_memlock(u64::MAX);
    acc.charge(1).expect("unlimited again");
    acc.credit(1);
    assert_eq!(locked_pages().1, base);
}
