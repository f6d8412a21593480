//! Guarded access to user memory at `memcpy` speed.
//!
//! The kernel copies to and from user memory with plain instructions and an
//! *exception table*: when one of the listed instructions faults, the fault
//! handler resumes execution at a fixup that reports `-EFAULT`. We do the
//! same in user space. A few routines written in assembly (a `rep movsb`
//! copy, a one-byte read probe, a one-byte atomic write probe) run the
//! accesses; a `SIGSEGV`/`SIGBUS` handler that recognises a fault at one of
//! their instructions moves the saved instruction pointer to the fixup,
//! which returns a failure code. Faults anywhere else are passed on to the
//! handler that was installed before ours (or to the default action).
//!
//! The handler is installed on first use. Where it cannot be (another
//! architecture, or `sigaction` failing) [`available`] is false and callers
//! use the slower system-call path instead, with the same results.
//!
//! Invariant: the handler only ever redirects faults whose instruction
//! pointer is exactly one of our guarded instructions; it does not touch any
//! other state and never runs Rust code that could allocate or lock.

use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::mem::MaybeUninit;
    use std::sync::atomic::{AtomicPtr, Ordering};

    // (dst rdi, src rsi, len rdx) -> eax 0, or 1 after a fault.
    // (addr rdi) -> eax 0, or 1 after a fault.
    core::arch::global_asm!(
        ".pushsection .text.uiommufd_guard,\"ax\",@progbits",
        ".p2align 4",
        ".globl uiommufd_guard_copy",
        ".hidden uiommufd_guard_copy",
        "uiommufd_guard_copy:",
        "    mov rcx, rdx",
        ".globl uiommufd_guard_copy_insn",
        ".hidden uiommufd_guard_copy_insn",
        "uiommufd_guard_copy_insn:",
        "    rep movsb",
        "    xor eax, eax",
        "    ret",
        ".globl uiommufd_guard_read",
        ".hidden uiommufd_guard_read",
        "uiommufd_guard_read:",
        ".globl uiommufd_guard_read_insn",
        ".hidden uiommufd_guard_read_insn",
        "uiommufd_guard_read_insn:",
        "    movzx eax, byte ptr [rdi]",
        "    xor eax, eax",
        "    ret",
        ".globl uiommufd_guard_write",
        ".hidden uiommufd_guard_write",
        "uiommufd_guard_write:",
        ".globl uiommufd_guard_write_insn",
        ".hidden uiommufd_guard_write_insn",
        "uiommufd_guard_write_insn:",
        "    lock add byte ptr [rdi], 0",
        "    xor eax, eax",
        "    ret",
        ".globl uiommufd_guard_fixup",
        ".hidden uiommufd_guard_fixup",
        "uiommufd_guard_fixup:",
        "    mov eax, 1",
        "    ret",
        // The AVX copy: 128 bytes per iteration through four ymm registers,
        // the tail with `rep movsb`. Every instruction between _start and
        // _end may fault; the fixup clears the upper ymm state first. Used
        // only where the CPU has AVX, for copies up to 8 KiB (see `copy`).
        ".p2align 4",
        ".globl uiommufd_guard_copy_avx",
        ".hidden uiommufd_guard_copy_avx",
        "uiommufd_guard_copy_avx:",
        "    cmp rdx, 128",
        "    jb 3f",
        "2:",
        "    vmovdqu ymm0, [rsi]",
        "    vmovdqu ymm1, [rsi + 32]",
        "    vmovdqu ymm2, [rsi + 64]",
        "    vmovdqu ymm3, [rsi + 96]",
        "    vmovdqu [rdi], ymm0",
        "    vmovdqu [rdi + 32], ymm1",
        "    vmovdqu [rdi + 64], ymm2",
        "    vmovdqu [rdi + 96], ymm3",
        "    add rsi, 128",
        "    add rdi, 128",
        "    sub rdx, 128",
        "    cmp rdx, 128",
        "    jae 2b",
        "    vzeroupper",
        "3:",
        "    mov rcx, rdx",
        "    rep movsb",
        "    xor eax, eax",
        "    ret",
        ".globl uiommufd_guard_copy_avx_end",
        ".hidden uiommufd_guard_copy_avx_end",
        "uiommufd_guard_copy_avx_end:",
        ".globl uiommufd_guard_avx_fixup",
        ".hidden uiommufd_guard_avx_fixup",
        "uiommufd_guard_avx_fixup:",
        "    vzeroupper",
        "    mov eax, 1",
        "    ret",
        ".popsection",
    );

    extern "C" {
        fn uiommufd_guard_copy(dst: *mut u8, src: *const u8, len: usize) -> u32;
        fn uiommufd_guard_copy_avx(dst: *mut u8, src: *const u8, len: usize) -> u32;
        static uiommufd_guard_copy_avx_end: u8;
        static uiommufd_guard_avx_fixup: u8;
        fn uiommufd_guard_read(addr: *const u8) -> u32;
        fn uiommufd_guard_write(addr: *mut u8) -> u32;
        static uiommufd_guard_copy_insn: u8;
        static uiommufd_guard_read_insn: u8;
        static uiommufd_guard_write_insn: u8;
        static uiommufd_guard_fixup: u8;
    }

    fn insn_addrs() -> [usize; 3] {
        [
            &raw const uiommufd_guard_copy_insn as usize,
            &raw const uiommufd_guard_read_insn as usize,
            &raw const uiommufd_guard_write_insn as usize,
        ]
    }

    /// The handlers that were installed before ours: index 0 SIGSEGV, 1 SIGBUS.
    static PREV: [AtomicPtr<libc::sigaction>; 2] =
        [AtomicPtr::new(std::ptr::null_mut()), AtomicPtr::new(std::ptr::null_mut())];

    extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO
        // handlers; we read and write only the saved instruction pointer.
        let gregs = unsafe { &mut (*(uctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
        let ip = gregs[libc::REG_RIP as usize] as usize;
        let in_avx = (uiommufd_guard_copy_avx as *const () as usize..&raw const uiommufd_guard_copy_avx_end as usize)
            .contains(&ip);
        let ours = in_avx || insn_addrs().contains(&ip);
        if sig == libc::SIGSEGV {
            // Bit 1 of the page-fault error code: the access was a write.
            let write = gregs[libc::REG_ERR as usize] & 2 != 0;
            // SAFETY: for SIGSEGV the kernel fills si_addr.
            let addr = unsafe { (*info).si_addr() } as u64;
            if crate::coherency::on_fault(addr, ours, write) {
                // A strict-coherency watch ended: retry the access.
                return;
            }
        }
        let rip = &mut gregs[libc::REG_RIP as usize];
        if in_avx {
            *rip = &raw const uiommufd_guard_avx_fixup as usize as libc::greg_t;
            return;
        }
        if ours {
            *rip = &raw const uiommufd_guard_fixup as usize as libc::greg_t;
            return;
        }
        let prev = PREV[if sig == libc::SIGBUS { 1 } else { 0 }].load(Ordering::Acquire);
        // SAFETY: `prev` is null or a leaked sigaction written once before
        // our handler was installed.
        let Some(prev) = (unsafe { prev.as_ref() }) else {
            reset_default(sig);
            return;
        };
        match prev.sa_sigaction {
            libc::SIG_DFL | libc::SIG_IGN => reset_default(sig),
            h if prev.sa_flags & libc::SA_SIGINFO != 0 => {
                // SAFETY: the previous handler was registered with this
                // signature (SA_SIGINFO); we forward the same arguments.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, uctx);
            }
            h => {
                // SAFETY: a plain handler registered without SA_SIGINFO.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
        }
    }

    /// Let the faulting instruction re-run under the default action (which
    /// terminates the process as it would have without us).
    fn reset_default(sig: libc::c_int) {
        // SAFETY: resetting a disposition is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }

    pub fn install() -> bool {
        for (i, sig) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
            let mut new: libc::sigaction = unsafe_zeroed();
            new.sa_sigaction = on_fault as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            let mut old = MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: valid pointers to a filled sigaction and an output slot.
            if unsafe { libc::sigaction(sig, &new, old.as_mut_ptr()) } != 0 {
                return false;
            }
            // SAFETY: sigaction filled `old`.
            let old = Box::new(unsafe { old.assume_init() });
            PREV[i].store(Box::into_raw(old), Ordering::Release);
        }
        true
    }

    /// Swap the handler our handler chains to for `sig` (what the program
    /// thinks it installed), returning the previous one. `None` if `sig` is
    /// not one we guard.
    pub fn swap_chained(sig: libc::c_int, new: Option<libc::sigaction>) -> Option<libc::sigaction> {
        let slot = match sig {
            libc::SIGSEGV => &PREV[0],
            libc::SIGBUS => &PREV[1],
            _ => return None,
        };
        // SAFETY: a plain C struct; all-zero is SIG_DFL with no flags.
        let dfl: libc::sigaction = unsafe_zeroed();
        let cur = slot.load(Ordering::Acquire);
        // SAFETY: null or a leaked sigaction published with Release.
        let old = unsafe { cur.as_ref() }.copied().unwrap_or(dfl);
        if let Some(n) = new {
            // Leaked on purpose: the handler may read the old one while we
            // swap, so it is never freed.
            slot.store(Box::into_raw(Box::new(n)), Ordering::Release);
        }
        Some(old)
    }

    fn unsafe_zeroed() -> libc::sigaction {
        // SAFETY: sigaction is a plain C struct for which all-zero is valid.
        unsafe { MaybeUninit::zeroed().assume_init() }
    }

    /// Copy `len` bytes; false if a fault stopped it.
    ///
    /// # Safety
    /// `dst..dst+len` must be memory the caller may write and nothing else
    /// reads meanwhile; `src` may be any address.
    pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> bool {
        static AVX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // `rep movsb` starts slowly (and more so when the two ends alias
        // modulo 4 KiB, as page-to-page copies do); for large copies it is
        // the fastest there is.
        if (256..=8192).contains(&len) && *AVX.get_or_init(|| std::arch::is_x86_feature_detected!("avx")) {
            // SAFETY: forwarded contract; the CPU has AVX; faults anywhere
            // in the routine are recovered by the handler.
            return unsafe { uiommufd_guard_copy_avx(dst, src, len) == 0 };
        }
        // SAFETY: forwarded contract; faults are recovered by the handler.
        unsafe { uiommufd_guard_copy(dst, src, len) == 0 }
    }

    pub fn probe_read(addr: u64) -> bool {
        // SAFETY: the probe only reads one byte; faults are recovered.
        unsafe { uiommufd_guard_read(addr as *const u8) == 0 }
    }

    pub fn probe_write(addr: u64) -> bool {
        // SAFETY: an atomic add of zero leaves the byte unchanged for every
        // concurrent reader or writer; faults are recovered.
        unsafe { uiommufd_guard_write(addr as *mut u8) == 0 }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub fn install() -> bool {
        false
    }
    pub fn swap_chained(_: libc::c_int, _: Option<libc::sigaction>) -> Option<libc::sigaction> {
        None
    }
    pub unsafe fn copy(_: *mut u8, _: *const u8, _: usize) -> bool {
        false
    }
    pub fn probe_read(_: u64) -> bool {
        false
    }
    pub fn probe_write(_: u64) -> bool {
        false
    }
}

/// 0 unknown, 1 unavailable, 2 installed, 3 disabled by the user.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether guarded access is in use (installing the handler on first call).
/// `UIOMMUFD_GUARDED_COPY=0` disables it.
pub fn available() -> bool {
    match STATE.load(Ordering::Acquire) {
        2 => true,
        0 => {
            let off = std::env::var_os("UIOMMUFD_GUARDED_COPY").is_some_and(|v| v == "0");
            let s = if off {
                3
            } else if imp::install() {
                2
            } else {
                1
            };
            // Two threads may race here; both install, the second chains to
            // the first, and the outcome is the same.
            STATE.store(s, Ordering::Release);
            s == 2
        }
        _ => false,
    }
}

/// The program installs a handler for `sig`: while our handler is in place
/// for a signal we guard, record `new` as the one ours passes foreign faults
/// to and return what was recorded before (the program's view of the old
/// disposition). `None` means: not ours, perform the real `sigaction`.
pub fn chain_sigaction(sig: libc::c_int, new: Option<libc::sigaction>) -> Option<libc::sigaction> {
    if STATE.load(Ordering::Acquire) != 2 {
        return None;
    }
    imp::swap_chained(sig, new)
}

/// Copy `src` (user memory, any address) into `dst`. False after a fault.
pub fn copy_in(dst: &mut [u8], src: u64) -> bool {
    // SAFETY: `dst` is an exclusive slice we write; `src` is only read, and
    // a fault there is recovered by the handler.
    unsafe { imp::copy(dst.as_mut_ptr(), src as *const u8, dst.len()) }
}

/// Copy `src` into user memory at `dst` (any address). False after a fault.
pub fn copy_out(dst: u64, src: &[u8]) -> bool {
    // SAFETY: `src` is only read; writes to `dst` that fault are recovered.
    // The destination is user memory the caller asked us to write, never a
    // Rust-owned object.
    unsafe { imp::copy(dst as *mut u8, src.as_ptr(), src.len()) }
}

/// Copy `len` bytes between two user addresses. False after a fault.
pub fn copy_user(dst: u64, src: u64, len: usize) -> bool {
    // SAFETY: both ends are user memory (never Rust-owned objects) the
    // caller asked us to copy between; faults on either are recovered.
    unsafe { imp::copy(dst as *mut u8, src as *const u8, len) }
}

/// Whether the byte at `addr` can be read.
pub fn probe_read(addr: u64) -> bool {
    imp::probe_read(addr)
}

/// Whether the byte at `addr` can be written (checked by an atomic add of
/// zero, which faults in the page for writing without changing it).
pub fn probe_write(addr: u64) -> bool {
    imp::probe_write(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_ops_recover_from_faults() {
        if !available() {
            return;
        }
        let mut buf = [0u8; 16];
        let data = *b"0123456789abcdef";
        assert!(copy_in(&mut buf, data.as_ptr() as u64));
        assert_eq!(buf, data);
        assert!(!copy_in(&mut buf, 0));
        assert!(!copy_in(&mut buf, u64::MAX - 8));
        assert!(!copy_out(8, &buf));
        assert!(!probe_read(0));
        assert!(probe_read(data.as_ptr() as u64));
        let ro = data.as_ptr() as u64; // in .rodata? no: on the stack, writable
        assert!(probe_write(ro));
        // A read-only page: the code of this very function.
        assert!(!probe_write(guarded_ops_recover_from_faults as fn() as usize as u64));
        assert!(probe_read(guarded_ops_recover_from_faults as fn() as usize as u64));
    }

    #[test]
    fn large_and_aliased_copies_stop_at_the_fault() {
        // Mappings of other tests must not land where ours was.
        let _g = crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        if !available() {
            return;
        }
        let ps = 4096usize;
        // Three pages, the last inaccessible.
        // SAFETY: a fresh anonymous mapping owned by this test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * ps,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        assert_ne!(base, libc::MAP_FAILED as u64);
        // SAFETY: the third page of our mapping.
        assert_eq!(unsafe { libc::mprotect((base + 2 * ps as u64) as *mut libc::c_void, ps, libc::PROT_NONE) }, 0);
        let src: Vec<u8> = (0..2 * ps).map(|i| (i * 7) as u8).collect();
        // Page-aliased (the vector path), whole, then running into the hole.
        assert!(copy_out(base, &src[..ps]));
        assert!(copy_user(base + ps as u64, base, ps));
        let mut back = vec![0u8; 2 * ps];
        assert!(copy_in(&mut back, base));
        assert_eq!(&back[..ps], &src[..ps]);
        assert_eq!(&back[ps..], &src[..ps]);
        assert!(!copy_user(base + ps as u64 + 512, base, ps), "the write crosses into the hole");
        assert!(!copy_in(&mut back, base + ps as u64 + 100), "the read crosses into the hole");
        // Large, not aliased (rep movsb), into the hole.
        assert!(!copy_out(base + 8, &src));
        // SAFETY: our mapping.
        unsafe { libc::munmap(base as *mut libc::c_void, 3 * ps) };
    }
}
