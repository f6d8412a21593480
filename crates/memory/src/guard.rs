//! Guarded access to user memory at `memcpy` speed.
//!
//! The kernel copies to and from user memory with plain instructions and an
//! *exception table*: when one of the listed instructions faults, the fault
//! handler resumes execution at a fixup that reports `-EFAULT`. We do the
//! same in user space. A few routines written in assembly (copies: plain
//! moves up to 64 bytes, an AVX loop beyond, `rep movsb` without AVX; a
//! one-byte read probe, a one-byte atomic write probe) run the accesses; a
//! `SIGSEGV`/`SIGBUS` handler that recognises a fault at one of
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

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        // The AVX copy, for more than 64 bytes. Up to 128: two ymm moves
        // from the start and two ending at the end (overlapping). Beyond:
        // the first 32 and the last 128 bytes are loaded up front; the
        // loop then moves 128 bytes per iteration through four ymm
        // registers to a destination aligned to 32 bytes (a store that
        // splits a cache line costs twice), until at most 128 bytes are
        // left, which the saved last 128 bytes cover. No `rep movsb`: its
        // microcode starts slowly, and on AMD Zen 3 it runs ~20 times
        // slower when source and destination differ in their offset
        // modulo 32 (measured: 36 us for 64 KiB against 1.5 us). Every
        // instruction between _avx and _avx_end may fault; the fixup
        // clears the upper ymm state first. Used only where the CPU has
        // AVX (see `copy`).
        ".p2align 4",
        ".globl uiommufd_guard_copy_avx",
        ".hidden uiommufd_guard_copy_avx",
        "uiommufd_guard_copy_avx:",
        "    cmp rdx, 128",
        "    jbe 5f",
        "    vmovdqu ymm4, [rsi]",
        "    vmovdqu ymm5, [rsi + rdx - 128]",
        "    vmovdqu ymm6, [rsi + rdx - 96]",
        "    vmovdqu ymm7, [rsi + rdx - 64]",
        "    vmovdqu ymm8, [rsi + rdx - 32]",
        "    vmovdqu [rdi], ymm4",
        // Skip to the next 32-byte boundary of the destination (0 to 31
        // bytes, which the first 32 covered); what is left after the last
        // full 128 (at most 128 bytes) the last 128 cover.
        "    mov rcx, rdi",
        "    neg rcx",
        "    and ecx, 31",
        "    add rsi, rcx",
        "    add rdi, rcx",
        "    sub rdx, rcx",
        "    cmp rdx, 128",
        "    jbe 3f",
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
        "    ja 2b",
        // rdi + rdx is still the end.
        "3:",
        "    vmovdqu [rdi + rdx - 128], ymm5",
        "    vmovdqu [rdi + rdx - 96], ymm6",
        "    vmovdqu [rdi + rdx - 64], ymm7",
        "    vmovdqu [rdi + rdx - 32], ymm8",
        "    vzeroupper",
        "    xor eax, eax",
        "    ret",
        "5:",
        "    vmovdqu ymm0, [rsi]",
        "    vmovdqu ymm1, [rsi + 32]",
        "    vmovdqu ymm2, [rsi + rdx - 64]",
        "    vmovdqu ymm3, [rsi + rdx - 32]",
        "    vmovdqu [rdi], ymm0",
        "    vmovdqu [rdi + 32], ymm1",
        "    vmovdqu [rdi + rdx - 64], ymm2",
        "    vmovdqu [rdi + rdx - 32], ymm3",
        "    vzeroupper",
        "    xor eax, eax",
        "    ret",
        // The AVX-512 copy, for more than 64 bytes, where the CPU has
        // AVX-512F and its vendor's `memcpy` uses it (Intel: glibc's
        // `__memmove_avx512_unaligned_erms`): the shape of the AVX loop
        // with 64-byte moves (zmm0-8 only, which `vzeroupper` clears).
        // Up to 128 bytes: the AVX routine's short case. Up to 256: two
        // zmm moves from the start, two ending at the end. Beyond: the
        // first 64 and the last 256 loaded up front, 256 a loop iteration
        // to a destination aligned to 64 bytes (one cache line a store).
        // Inside _avx.._avx_end, so a fault takes the AVX fixup.
        ".p2align 4",
        ".globl uiommufd_guard_copy_avx512",
        ".hidden uiommufd_guard_copy_avx512",
        "uiommufd_guard_copy_avx512:",
        "    cmp rdx, 256",
        "    jbe 6f",
        "    vmovdqu64 zmm4, [rsi]",
        "    vmovdqu64 zmm5, [rsi + rdx - 256]",
        "    vmovdqu64 zmm6, [rsi + rdx - 192]",
        "    vmovdqu64 zmm7, [rsi + rdx - 128]",
        "    vmovdqu64 zmm8, [rsi + rdx - 64]",
        "    vmovdqu64 [rdi], zmm4",
        "    mov rcx, rdi",
        "    neg rcx",
        "    and ecx, 63",
        "    add rsi, rcx",
        "    add rdi, rcx",
        "    sub rdx, rcx",
        "    cmp rdx, 256",
        "    jbe 3f",
        "2:",
        "    vmovdqu64 zmm0, [rsi]",
        "    vmovdqu64 zmm1, [rsi + 64]",
        "    vmovdqu64 zmm2, [rsi + 128]",
        "    vmovdqu64 zmm3, [rsi + 192]",
        "    vmovdqu64 [rdi], zmm0",
        "    vmovdqu64 [rdi + 64], zmm1",
        "    vmovdqu64 [rdi + 128], zmm2",
        "    vmovdqu64 [rdi + 192], zmm3",
        "    add rsi, 256",
        "    add rdi, 256",
        "    sub rdx, 256",
        "    cmp rdx, 256",
        "    ja 2b",
        "3:",
        "    vmovdqu64 [rdi + rdx - 256], zmm5",
        "    vmovdqu64 [rdi + rdx - 192], zmm6",
        "    vmovdqu64 [rdi + rdx - 128], zmm7",
        "    vmovdqu64 [rdi + rdx - 64], zmm8",
        "    vzeroupper",
        "    xor eax, eax",
        "    ret",
        "6:",
        "    cmp rdx, 128",
        "    jbe uiommufd_guard_copy_avx",
        "    vmovdqu64 zmm0, [rsi]",
        "    vmovdqu64 zmm1, [rsi + 64]",
        "    vmovdqu64 zmm2, [rsi + rdx - 128]",
        "    vmovdqu64 zmm3, [rsi + rdx - 64]",
        "    vmovdqu64 [rdi], zmm0",
        "    vmovdqu64 [rdi + 64], zmm1",
        "    vmovdqu64 [rdi + rdx - 128], zmm2",
        "    vmovdqu64 [rdi + rdx - 64], zmm3",
        "    vzeroupper",
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
        // Short copies (0 to 64 bytes: descriptors, completion records,
        // register-sized values), where `rep movsb` starts slowly: all the
        // loads, then all the stores, each piece a move from the start and
        // one ending at the end (overlapping when the length is not the
        // piece's double). Every instruction between _small and _small_end
        // may fault; the plain fixup returns (nothing is pushed here, and
        // only SSE2 registers are used: no upper ymm state to clear).
        ".p2align 4",
        ".globl uiommufd_guard_copy_small",
        ".hidden uiommufd_guard_copy_small",
        "uiommufd_guard_copy_small:",
        "    cmp rdx, 16",
        "    jb 4f",
        "    cmp rdx, 32",
        "    ja 5f",
        "    movdqu xmm0, [rsi]",
        "    movdqu xmm1, [rsi + rdx - 16]",
        "    movdqu [rdi], xmm0",
        "    movdqu [rdi + rdx - 16], xmm1",
        "    xor eax, eax",
        "    ret",
        "5:",
        "    movdqu xmm0, [rsi]",
        "    movdqu xmm1, [rsi + 16]",
        "    movdqu xmm2, [rsi + rdx - 32]",
        "    movdqu xmm3, [rsi + rdx - 16]",
        "    movdqu [rdi], xmm0",
        "    movdqu [rdi + 16], xmm1",
        "    movdqu [rdi + rdx - 32], xmm2",
        "    movdqu [rdi + rdx - 16], xmm3",
        "    xor eax, eax",
        "    ret",
        "4:",
        "    cmp rdx, 8",
        "    jb 6f",
        "    mov rax, [rsi]",
        "    mov rcx, [rsi + rdx - 8]",
        "    mov [rdi], rax",
        "    mov [rdi + rdx - 8], rcx",
        "    xor eax, eax",
        "    ret",
        "6:",
        "    cmp rdx, 4",
        "    jb 7f",
        "    mov eax, [rsi]",
        "    mov ecx, [rsi + rdx - 4]",
        "    mov [rdi], eax",
        "    mov [rdi + rdx - 4], ecx",
        "    xor eax, eax",
        "    ret",
        "7:",
        // 1 to 3 bytes: the first, the last and the middle one.
        "    test rdx, rdx",
        "    jz 8f",
        "    movzx eax, byte ptr [rsi]",
        "    movzx ecx, byte ptr [rsi + rdx - 1]",
        "    mov [rdi], al",
        "    mov [rdi + rdx - 1], cl",
        "    shr rdx, 1",
        "    movzx eax, byte ptr [rsi + rdx]",
        "    mov [rdi + rdx], al",
        "8:",
        "    xor eax, eax",
        "    ret",
        ".globl uiommufd_guard_copy_small_end",
        ".hidden uiommufd_guard_copy_small_end",
        "uiommufd_guard_copy_small_end:",
        // The routine for a copy's length, where the CPU has AVX (the
        // statics are `detect`'s): up to 64 bytes the short moves; from
        // REP_FROM `rep movsb`, but only to a destination aligned to a
        // cache line (glibc aligns it first: to a heap buffer's 16-byte
        // alignment it ran 6 % slower than the AVX loop for 64 KiB, the
        // ACCESS_RW rows of docs/BENCHMARKS.md "Sixth session: copies on
        // Intel"); below ZMM_BELOW (set only where the CPU has AVX-512F
        // and the OS keeps its state) the AVX-512 loop; else the AVX loop.
        // One direct call from `call_copy`, with no function pointer to
        // hold and no GOT load per static. Nothing here can fault.
        ".p2align 4",
        ".globl uiommufd_guard_copy_any",
        ".hidden uiommufd_guard_copy_any",
        "uiommufd_guard_copy_any:",
        "    cmp rdx, 64",
        "    jbe uiommufd_guard_copy_small",
        "    cmp rdx, qword ptr [rip + {rep_from}]",
        "    jb 9f",
        "    test dil, 63",
        "    jz uiommufd_guard_copy",
        "9:",
        "    cmp rdx, qword ptr [rip + {zmm_below}]",
        "    jb uiommufd_guard_copy_avx512",
        "    jmp uiommufd_guard_copy_avx",
        // The signal restorer: rt_sigreturn, spelled as the bytes unwinders
        // (libgcc's fallback) recognise as a signal frame, so backtraces
        // taken in a program's crash handler reach the faulting code.
        ".p2align 4",
        "    nop",
        ".globl uiommufd_guard_restorer",
        ".hidden uiommufd_guard_restorer",
        "uiommufd_guard_restorer:",
        "    .byte 0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00",
        "    syscall",
        ".popsection",
        rep_from = sym REP_FROM,
        zmm_below = sym ZMM_BELOW,
    );

    extern "C" {
        fn uiommufd_guard_copy(dst: *mut u8, src: *const u8, len: usize) -> u32;
        fn uiommufd_guard_copy_avx(dst: *mut u8, src: *const u8, len: usize) -> u32;
        fn uiommufd_guard_copy_small(dst: *mut u8, src: *const u8, len: usize) -> u32;
        fn uiommufd_guard_copy_any(dst: *mut u8, src: *const u8, len: usize) -> u32;
        static uiommufd_guard_copy_small_end: u8;
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

    extern "C" {
        static uiommufd_guard_restorer: u8;
    }

    extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO
        // handlers; we read and write only the saved instruction pointer.
        let gregs = unsafe { &mut (*(uctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
        let ip = gregs[libc::REG_RIP as usize] as usize;
        let in_avx = (uiommufd_guard_copy_avx as *const () as usize..&raw const uiommufd_guard_copy_avx_end as usize)
            .contains(&ip);
        let in_small = (uiommufd_guard_copy_small as *const () as usize
            ..&raw const uiommufd_guard_copy_small_end as usize)
            .contains(&ip);
        let ours = in_avx || in_small || insn_addrs().contains(&ip);
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
        let code = unsafe { (*info).si_code };
        if sig == libc::SIGSEGV && code > 0 {
            // Bit 1 of the page-fault error code: the access was a write.
            let write = gregs[libc::REG_ERR as usize] & 2 != 0;
            // SAFETY: for a fault the kernel fills si_addr.
            let addr = unsafe { (*info).si_addr() } as u64;
            if crate::coherency::on_fault(addr, ours, write) {
                // A strict-coherency watch ended: retry the access.
                return;
            }
        }
        let rip = &mut gregs[libc::REG_RIP as usize];
        if in_avx && code > 0 {
            *rip = &raw const uiommufd_guard_avx_fixup as usize as libc::greg_t;
            return;
        }
        if ours && code > 0 {
            *rip = &raw const uiommufd_guard_fixup as usize as libc::greg_t;
            return;
        }
        super::chain::deliver(sig, info, uctx);
    }

    /// Our handler for `sig`, as the kernel takes it: with `SA_RESTORER`
    /// and our own restorer (x86-64 requires one; glibc's is not ours to
    /// call).
    pub fn our_action() -> Option<super::chain::KSigaction> {
        Some(super::chain::KSigaction {
            handler: on_fault as *const () as usize,
            flags: (libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER) as u64 | super::chain::SA_RESTORER,
            restorer: &raw const uiommufd_guard_restorer as usize,
            mask: 0,
        })
    }

    /// The CPU has AVX (set before the handler is marked installed).
    static AVX: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Copies of at least this many bytes use `rep movsb` (where the CPU
    /// has AVX; `usize::MAX`: never). Set by [`detect`].
    static REP_FROM: AtomicUsize = AtomicUsize::new(usize::MAX);
    /// Copies of 65 bytes up to (not including) this many use the AVX-512
    /// loop (where the CPU has AVX; 0: never). Set by [`detect`].
    static ZMM_BELOW: AtomicUsize = AtomicUsize::new(0);

    /// Which routine copies of more than 64 bytes take.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kernel {
        /// The AVX loop at every size.
        Avx,
        /// The AVX-512 loop below 32 KiB, `rep movsb` from there.
        Avx512,
        /// `rep movsb` from 4 KiB, the AVX loop below.
        Rep,
    }

    /// Learn what [`copy`] may use (before the first guarded copy), and
    /// choose the routine for copies of more than 64 bytes as the CPU's
    /// own `memcpy` would, measured on each machine class
    /// (docs/BENCHMARKS.md, "Sixth session: copies on Intel"):
    /// - AMD (Zen 3): the AVX loop at every size. `rep movsb` starts
    ///   slowly and runs ~20 times slower when the two ends differ in
    ///   their offset modulo 32 (36 us for 64 KiB against 1.5 us).
    /// - Intel with fast `rep movsb` (CPUID.7.0:EBX.ERMS), AVX-512F and
    ///   AVX-VNNI (Sapphire Rapids class, whose glibc `memcpy` is its
    ///   AVX-512 variant): the AVX-512 loop below 32 KiB (4 KiB in 19 ns against
    ///   29 ns for the AVX loop and 22 ns for glibc's), `rep movsb` from
    ///   there (the AVX-512 loop falls 5-10 % behind once the data is in
    ///   L2; glibc switches at 8 KiB).
    /// - Other Intel with ERMS: `rep movsb` from 4 KiB (glibc's threshold
    ///   for its AVX variant), the AVX loop below.
    ///
    /// `UIOMMUFD_GUARD_COPY=avx|avx512|rep` overrides the choice (for
    /// measuring one against another; a routine the CPU lacks is not
    /// taken).
    pub fn detect() {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        let avx = std::arch::is_x86_feature_detected!("avx");
        let avx512 = avx && std::arch::is_x86_feature_detected!("avx512f");
        // CPUID is safe on x86-64; leaf 7 is read only when leaf 0 reports it.
        let vendor = __cpuid(0);
        let intel = (vendor.ebx, vendor.edx, vendor.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e);
        let erms = vendor.eax >= 7 && __cpuid_count(7, 0).ebx & (1 << 9) != 0;
        // AVX-VNNI (CPUID.(7,1):EAX bit 4): Intel CPUs that have it keep
        // their frequency under 512-bit loads and stores (glibc's rule for
        // taking its AVX-512 `memcpy`; Skylake-SP and Cascade Lake lack it).
        let zmm_fast = avx512 && vendor.eax >= 7 && __cpuid_count(7, 1).eax & (1 << 4) != 0;
        let chosen = match std::env::var("UIOMMUFD_GUARD_COPY").as_deref() {
            Ok("avx") => Kernel::Avx,
            Ok("avx512") if avx512 => Kernel::Avx512,
            Ok("rep") => Kernel::Rep,
            _ if intel && erms && zmm_fast => Kernel::Avx512,
            _ if intel && erms => Kernel::Rep,
            _ => Kernel::Avx,
        };
        set_kernel(chosen);
        AVX.store(avx, Ordering::Relaxed);
    }

    /// Take `k` for copies of more than 64 bytes from now on (every
    /// routine gives the same result: a copy racing this takes either).
    pub fn set_kernel(k: Kernel) {
        let (zmm_below, rep_from) = match k {
            Kernel::Avx => (0, usize::MAX),
            Kernel::Avx512 => (32 << 10, 32 << 10),
            Kernel::Rep => (0, 4 << 10),
        };
        ZMM_BELOW.store(zmm_below, Ordering::Relaxed);
        REP_FROM.store(rep_from, Ordering::Relaxed);
    }

    /// The routine copies of more than 64 bytes take.
    pub fn kernel() -> Kernel {
        match (ZMM_BELOW.load(Ordering::Relaxed), REP_FROM.load(Ordering::Relaxed)) {
            (0, usize::MAX) => Kernel::Avx,
            (0, _) => Kernel::Rep,
            _ => Kernel::Avx512,
        }
    }

    /// Whether the CPU has AVX (after [`detect`]).
    pub fn has_avx() -> bool {
        AVX.load(Ordering::Relaxed)
    }

    /// Whether the CPU can run `k` (after [`detect`]).
    #[cfg(test)]
    pub fn supports(k: Kernel) -> bool {
        match k {
            Kernel::Avx | Kernel::Rep => has_avx(),
            Kernel::Avx512 => has_avx() && std::arch::is_x86_feature_detected!("avx512f"),
        }
    }

    /// The routines copies take, in words.
    pub fn describe() -> &'static str {
        if !has_avx() {
            return "rep movsb (no AVX)";
        }
        match kernel() {
            Kernel::Avx => "AVX loop",
            Kernel::Avx512 => "AVX-512 loop below 32 KiB, rep movsb from 32 KiB",
            Kernel::Rep => "AVX loop below 4 KiB, rep movsb from 4 KiB",
        }
    }

    /// [`copy`] where the CPU has AVX: the routine for the length, which
    /// `uiommufd_guard_copy_any` chooses, by [`call_copy`].
    ///
    /// # Safety
    /// As for [`copy`]; the CPU has AVX.
    #[inline(always)]
    pub unsafe fn copy_avx(dst: *mut u8, src: *const u8, len: usize) -> bool {
        // SAFETY: forwarded contract (`detect` sets ZMM_BELOW only where
        // the CPU has AVX-512F and the OS keeps its state); faults anywhere
        // in the routines are recovered by the handler.
        unsafe { call_copy(dst, src, len) }
    }

    /// Call `uiommufd_guard_copy_any` from inline assembly that names
    /// exactly the registers the routines use (rax, rcx, rdx, rsi, rdi and
    /// xmm0-8, whose upper halves they clear; r8-r11 they leave alone), so
    /// the caller keeps its values in the others across the call. A call
    /// by the C ABI clobbers all nine caller-saved registers, and a device
    /// port's request then saved its values on the stack around the copy:
    /// on the Intel host each such store cost about a third of a
    /// nanosecond of a 4 KiB copy's ~17 (docs/BENCHMARKS.md, "Seventh
    /// session: the 4 KiB port copy on the Intel host").
    ///
    /// # Safety
    /// The contract of [`copy`] holds for these arguments, and the CPU
    /// has AVX.
    #[inline(always)]
    unsafe fn call_copy(dst: *mut u8, src: *const u8, len: usize) -> bool {
        let failed: u32;
        // SAFETY: the routines follow the C ABI's stack rules (no red
        // zone is assumed: the block may push) and touch no register but
        // the ones named; the caller's contract covers the memory.
        unsafe {
            core::arch::asm!(
                "call {any}",
                any = sym uiommufd_guard_copy_any,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                inout("rdx") len => _,
                out("eax") failed,
                out("rcx") _,
                out("xmm0") _,
                out("xmm1") _,
                out("xmm2") _,
                out("xmm3") _,
                out("xmm4") _,
                out("xmm5") _,
                out("xmm6") _,
                out("xmm7") _,
                out("xmm8") _,
            );
        }
        failed == 0
    }

    /// Copy `len` bytes; false if a fault stopped it.
    ///
    /// # Safety
    /// `dst..dst+len` must be memory the caller may write and nothing else
    /// reads meanwhile; `src` may be any address.
    #[inline(always)]
    pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> bool {
        if AVX.load(Ordering::Relaxed) {
            // SAFETY: forwarded contract; the CPU has AVX.
            return unsafe { copy_avx(dst, src, len) };
        }
        if len <= 64 {
            // SAFETY: forwarded contract; faults anywhere in the routine
            // are recovered by the handler.
            return unsafe { uiommufd_guard_copy_small(dst, src, len) == 0 };
        }
        // SAFETY: forwarded contract; faults are recovered by the handler.
        unsafe { uiommufd_guard_copy(dst, src, len) == 0 }
    }

    #[inline]
    pub fn probe_read(addr: u64) -> bool {
        // SAFETY: the probe only reads one byte; faults are recovered.
        unsafe { uiommufd_guard_read(addr as *const u8) == 0 }
    }

    #[inline]
    pub fn probe_write(addr: u64) -> bool {
        // SAFETY: an atomic add of zero leaves the byte unchanged for every
        // concurrent reader or writer; faults are recovered.
        unsafe { uiommufd_guard_write(addr as *mut u8) == 0 }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub fn detect() {}
    pub fn has_avx() -> bool {
        false
    }
    pub fn describe() -> &'static str {
        "none"
    }
    pub unsafe fn copy_avx(_: *mut u8, _: *const u8, _: usize) -> bool {
        false
    }
    pub fn our_action() -> Option<super::chain::KSigaction> {
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
/// Installed (`STATE` 2) on a CPU with AVX: the copies' common case in one
/// load (see [`try_copy_user`]). Set after `STATE`.
static AVX_READY: AtomicBool = AtomicBool::new(false);

/// The routines guarded copies take on this CPU, in words (for reports
/// beside measurements): "system calls" where guarded access is not in
/// use.
pub fn copy_routine() -> &'static str {
    if available() {
        imp::describe()
    } else {
        "system calls"
    }
}

/// Whether guarded access is in use (installing the handler on first call).
/// `UIOMMUFD_GUARDED_COPY=0` disables it.
#[inline]
pub fn available() -> bool {
    match STATE.load(Ordering::Acquire) {
        2 => true,
        0 => install(),
        _ => false,
    }
}

/// The first call of [`available`]: install the handler (or not).
#[cold]
fn install() -> bool {
    let off = std::env::var_os("UIOMMUFD_GUARDED_COPY").is_some_and(|v| v == "0");
    // One thread installs; a racing one waits for it and sees the
    // outcome (never our own handler recorded as the program's).
    chain::locked(|| {
        if STATE.load(Ordering::Acquire) == 0 {
            let s = if off {
                3
            } else if imp::our_action().is_some_and(|a| {
                imp::detect();
                chain::install(&a)
            }) {
                2
            } else {
                1
            };
            STATE.store(s, Ordering::Release);
            if s == 2 && imp::has_avx() {
                AVX_READY.store(true, Ordering::Release);
            }
        }
    });
    STATE.load(Ordering::Acquire) == 2
}

/// The program's `sigaction(sig, new, old)`. For a signal our handler
/// guards, while it is installed, the program's disposition is recorded as
/// the one ours passes foreign signals to, and `old` gets the recorded one;
/// otherwise `forward` makes the real call. Both under the lock that
/// orders them against the install, so a disposition the program sets
/// while we install is never lost. Async-signal-safe (no allocation; the
/// lock is taken with every signal blocked), as `sigaction` must be.
pub fn program_sigaction(
    sig: libc::c_int,
    new: Option<&libc::sigaction>,
    old: Option<&mut libc::sigaction>,
    forward: impl FnOnce() -> libc::c_int,
) -> libc::c_int {
    let Some(slot) = chain::slot(sig) else { return forward() };
    chain::locked(|| {
        if STATE.load(Ordering::Acquire) != 2 {
            return forward();
        }
        let prev = slot.read();
        if let Some(n) = new {
            slot.write(chain::KSigaction::from_libc(n));
        }
        if let Some(o) = old {
            *o = prev.to_libc();
        }
        0
    })
}

/// For the fork protocol: the chain lock is held across `fork` by the
/// forking thread (bounded: its holders only run a few instructions and
/// one system call), so the child never inherits it held.
pub fn fork_prepare() {
    chain::lock();
}

/// After `fork`, in the parent and in the child.
pub fn fork_done() {
    chain::unlock();
}

/// The program's view of the signals our handler guards, and what our
/// handler does with a signal that is not one of its own faults: what the
/// kernel would have done with the program's disposition.
mod chain {
    use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

    /// `SA_RESTORER` (x86-64): `restorer` is where a handler returns to.
    pub const SA_RESTORER: u64 = 0x0400_0000;

    /// The kernel's `struct sigaction` (rt_sigaction with an 8-byte set).
    #[repr(C)]
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct KSigaction {
        pub handler: usize,
        pub flags: u64,
        pub restorer: usize,
        pub mask: u64,
    }

    impl KSigaction {
        const DFL: KSigaction = KSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };

        pub fn from_libc(a: &libc::sigaction) -> KSigaction {
            // SAFETY: glibc's sigset_t starts with the kernel's 64-bit set
            // (bit n - 1 for signal n) and is at least 8 bytes long.
            let mask = unsafe { (&raw const a.sa_mask).cast::<u64>().read_unaligned() };
            KSigaction {
                handler: a.sa_sigaction,
                flags: a.sa_flags as u32 as u64,
                restorer: a.sa_restorer.map_or(0, |f| f as usize),
                mask,
            }
        }

        pub fn to_libc(self) -> libc::sigaction {
            // SAFETY: sigaction is a plain C struct for which all-zero is
            // valid (SIG_DFL, empty set, no flags).
            let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
            a.sa_sigaction = self.handler;
            a.sa_flags = self.flags as libc::c_int;
            // SAFETY: a restorer we were given is a function address (0 is
            // None).
            a.sa_restorer = unsafe { std::mem::transmute::<usize, Option<extern "C" fn()>>(self.restorer) };
            // SAFETY: as in from_libc.
            unsafe { (&raw mut a.sa_mask).cast::<u64>().write_unaligned(self.mask) };
            a
        }
    }

    /// `rt_sigaction(2)`, the system call itself (never an interposed
    /// libc function: ours records instead of installing). 0 or -errno.
    pub fn rt_sigaction(sig: libc::c_int, new: Option<&KSigaction>, old: Option<&mut KSigaction>) -> i64 {
        let new = new.map_or(std::ptr::null(), |n| n as *const KSigaction);
        let old = old.map_or(std::ptr::null_mut(), |o| o as *mut KSigaction);
        // SAFETY: both pointers are null or to a KSigaction, the kernel's
        // layout, with an 8-byte set. Async-signal-safe.
        let rc = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, new, old, 8usize) };
        if rc < 0 {
            -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL))
        } else {
            0
        }
    }

    /// `rt_sigprocmask(2)` with the kernel's 64-bit set; returns the old
    /// mask.
    fn sigprocmask(how: libc::c_int, set: u64) -> u64 {
        let mut old = 0u64;
        // SAFETY: pointers to live u64s, the kernel's set size.
        unsafe { libc::syscall(libc::SYS_rt_sigprocmask, how, &raw const set, &raw mut old, 8usize) };
        old
    }

    fn bit(sig: libc::c_int) -> u64 {
        1u64 << (sig - 1)
    }

    /// A recorded disposition: a sequence lock over atomics, written under
    /// [`locked`], read without a lock from the signal handler.
    pub struct Slot {
        seq: AtomicU32,
        handler: AtomicUsize,
        flags: AtomicU64,
        restorer: AtomicUsize,
        mask: AtomicU64,
    }

    impl Slot {
        const fn new() -> Slot {
            Slot {
                seq: AtomicU32::new(0),
                handler: AtomicUsize::new(libc::SIG_DFL),
                flags: AtomicU64::new(0),
                restorer: AtomicUsize::new(0),
                mask: AtomicU64::new(0),
            }
        }

        pub fn read(&self) -> KSigaction {
            loop {
                let s1 = self.seq.load(Ordering::Acquire);
                let k = KSigaction {
                    handler: self.handler.load(Ordering::Relaxed),
                    flags: self.flags.load(Ordering::Relaxed),
                    restorer: self.restorer.load(Ordering::Relaxed),
                    mask: self.mask.load(Ordering::Relaxed),
                };
                fence(Ordering::Acquire);
                if s1 & 1 == 0 && self.seq.load(Ordering::Relaxed) == s1 {
                    return k;
                }
                std::hint::spin_loop();
            }
        }

        /// Only under [`locked`].
        pub fn write(&self, k: KSigaction) {
            let s = self.seq.load(Ordering::Relaxed);
            self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
            fence(Ordering::Release);
            self.handler.store(k.handler, Ordering::Relaxed);
            self.flags.store(k.flags, Ordering::Relaxed);
            self.restorer.store(k.restorer, Ordering::Relaxed);
            self.mask.store(k.mask, Ordering::Relaxed);
            self.seq.store(s.wrapping_add(2), Ordering::Release);
        }
    }

    /// The program's dispositions: 0 SIGSEGV, 1 SIGBUS.
    static SLOTS: [Slot; 2] = [Slot::new(), Slot::new()];

    pub fn slot(sig: libc::c_int) -> Option<&'static Slot> {
        match sig {
            libc::SIGSEGV => Some(&SLOTS[0]),
            libc::SIGBUS => Some(&SLOTS[1]),
            _ => None,
        }
    }

    static LOCK: AtomicBool = AtomicBool::new(false);

    /// Take the lock with every signal blocked (so a handler on this
    /// thread can never wait for it); returns the mask to restore.
    pub fn lock() -> u64 {
        let old = sigprocmask(libc::SIG_BLOCK, !0);
        while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        FORK_MASK.store(old, Ordering::Relaxed);
        old
    }

    /// The mask [`lock`] saved, for [`unlock`] after fork.
    static FORK_MASK: AtomicU64 = AtomicU64::new(0);

    pub fn unlock() {
        let old = FORK_MASK.load(Ordering::Relaxed);
        LOCK.store(false, Ordering::Release);
        sigprocmask(libc::SIG_SETMASK, old);
    }

    /// Run `f` holding the lock. Its holders run a few instructions and at
    /// most one system call, so waiting for it is bounded.
    pub fn locked<R>(f: impl FnOnce() -> R) -> R {
        lock();
        let r = f();
        unlock();
        r
    }

    /// Install `ours` for SIGSEGV and SIGBUS, recording what was there as
    /// the program's disposition. Under [`locked`].
    pub fn install(ours: &KSigaction) -> bool {
        for sig in [libc::SIGSEGV, libc::SIGBUS] {
            let slot = slot(sig).expect("a guarded signal");
            let mut cur = KSigaction::DFL;
            if rt_sigaction(sig, None, Some(&mut cur)) != 0 {
                return false;
            }
            // Recorded first: a fault right after the install must find it.
            slot.write(if cur.handler == ours.handler { KSigaction::DFL } else { cur });
            let mut old = KSigaction::DFL;
            if rt_sigaction(sig, Some(ours), Some(&mut old)) != 0 {
                return false;
            }
            // Changed in between by a direct system call: that one.
            if old != cur && old.handler != ours.handler {
                slot.write(old);
            }
        }
        true
    }

    /// Whether the signal is a fault of the instruction it interrupted
    /// (re-running the instruction raises it again), rather than sent
    /// (`kill`, `raise`, `sigqueue`: `si_code <= 0`) or an asynchronous
    /// machine-check report.
    fn is_fault(sig: libc::c_int, code: libc::c_int) -> bool {
        /// `BUS_MCEERR_AO`: memory corruption found, action optional.
        const BUS_MCEERR_AO: libc::c_int = 5;
        code > 0 && !(sig == libc::SIGBUS && code == BUS_MCEERR_AO)
    }

    /// The kernel's default action for `sig`, which for SIGSEGV and SIGBUS
    /// ends the process: the disposition reset with the system call, then
    /// a fault re-runs its instruction and a sent signal is sent again.
    fn default_action(sig: libc::c_int, fault: bool) {
        rt_sigaction(sig, Some(&KSigaction::DFL), None);
        if !fault {
            sigprocmask(libc::SIG_UNBLOCK, bit(sig));
            // SAFETY: raw system calls on our own process and thread.
            unsafe {
                let pid = libc::syscall(libc::SYS_getpid);
                let tid = libc::syscall(libc::SYS_gettid);
                libc::syscall(libc::SYS_tgkill, pid, tid, sig);
            }
        }
    }

    /// A signal our handler got that is not a fault of one of our guarded
    /// instructions: do what the kernel would have done with the program's
    /// disposition. Runs in the signal handler: no allocation, no lock
    /// but the chain lock (see [`locked`]).
    pub fn deliver(sig: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
        let Some(slot) = slot(sig) else { return };
        // SAFETY: the kernel passes a valid siginfo_t to SA_SIGINFO handlers.
        let fault = is_fault(sig, unsafe { (*info).si_code });
        let act = slot.read();
        match act.handler {
            libc::SIG_DFL => default_action(sig, fault),
            // A fault cannot be ignored (the kernel forces the default
            // action); a sent signal can.
            libc::SIG_IGN if fault => default_action(sig, true),
            libc::SIG_IGN => {}
            h => {
                if act.flags & libc::SA_RESETHAND as u64 != 0 {
                    // Reset only if the program did not change it meanwhile.
                    locked(|| {
                        if slot.read() == act {
                            slot.write(KSigaction::DFL);
                        }
                    });
                }
                // Block what the kernel blocks while the handler runs; the
                // mask in `uctx` restores ours on return.
                let mut block = act.mask;
                if act.flags & libc::SA_NODEFER as u64 == 0 {
                    block |= bit(sig);
                }
                sigprocmask(libc::SIG_BLOCK, block);
                if act.flags & libc::SA_SIGINFO as u64 != 0 {
                    // SAFETY: the program registered this handler with
                    // SA_SIGINFO; we pass the kernel's arguments on.
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        unsafe { std::mem::transmute(h) };
                    f(sig, info, uctx);
                } else {
                    // SAFETY: a plain handler registered without SA_SIGINFO.
                    let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                    f(sig);
                }
            }
        }
    }
}

/// Copy `src` (user memory, any address) into `dst`. False after a fault.
#[inline]
pub fn copy_in(dst: &mut [u8], src: u64) -> bool {
    // SAFETY: `dst` is an exclusive slice we write; `src` is only read, and
    // a fault there is recovered by the handler.
    unsafe { imp::copy(dst.as_mut_ptr(), src as *const u8, dst.len()) }
}

/// Copy `src` into user memory at `dst` (any address). False after a fault.
#[inline]
pub fn copy_out(dst: u64, src: &[u8]) -> bool {
    // SAFETY: `src` is only read; writes to `dst` that fault are recovered.
    // The destination is user memory the caller asked us to write, never a
    // Rust-owned object.
    unsafe { imp::copy(dst as *mut u8, src.as_ptr(), src.len()) }
}

/// Copy `len` bytes between two user addresses. False after a fault.
#[inline]
pub fn copy_user(dst: u64, src: u64, len: usize) -> bool {
    // SAFETY: both ends are user memory (never Rust-owned objects) the
    // caller asked us to copy between; faults on either are recovered.
    unsafe { imp::copy(dst as *mut u8, src as *const u8, len) }
}

/// [`copy_user`] when guarded access is in use (`None`: it is not), in
/// one check where the CPU has AVX (the device copies' hot path).
#[inline(always)]
pub fn try_copy_user(dst: u64, src: u64, len: usize) -> Option<bool> {
    if AVX_READY.load(Ordering::Acquire) {
        // SAFETY: both ends are user memory (never Rust-owned objects) the
        // caller asked us to copy between; faults on either are recovered;
        // the CPU has AVX.
        return Some(unsafe { imp::copy_avx(dst as *mut u8, src as *const u8, len) });
    }
    try_copy_user_slow(dst, src, len)
}

/// Proof that guarded copies run on the AVX routines here (the handler is
/// installed and the CPU has AVX), for a hot path that calls nothing but
/// its copy: take it with [`lean`] before the path begins, so the copy
/// itself has no other way out, and copy with [`Lean::copy`].
#[derive(Clone, Copy)]
pub struct Lean(());

/// A [`Lean`], where the AVX routines are ready.
#[inline(always)]
pub fn lean() -> Option<Lean> {
    AVX_READY.load(Ordering::Acquire).then_some(Lean(()))
}

impl Lean {
    /// [`try_copy_user`]'s copy, clobbering only the routine's own
    /// registers (`imp::call_copy`); false if a fault stopped it.
    #[inline(always)]
    pub fn copy(self, dst: u64, src: u64, len: usize) -> bool {
        // SAFETY: as in `try_copy_user` (both ends are user memory the
        // caller asked us to copy between; faults are recovered); the
        // token proves the CPU has AVX and the handler is installed.
        unsafe { imp::copy_avx(dst as *mut u8, src as *const u8, len) }
    }
}

/// [`try_copy_user`] before the handler is installed, without AVX or
/// without guarded access.
#[inline(never)]
fn try_copy_user_slow(dst: u64, src: u64, len: usize) -> Option<bool> {
    available().then(|| copy_user(dst, src, len))
}

/// Whether the byte at `addr` can be read.
#[inline]
pub fn probe_read(addr: u64) -> bool {
    imp::probe_read(addr)
}

/// Whether the byte at `addr` can be written (checked by an atomic add of
/// zero, which faults in the page for writing without changing it).
#[inline]
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

    /// `n` read-write 4 KiB pages followed by an inaccessible one (unmap
    /// `n + 1` pages at the end).
    fn pages_then_hole(n: usize) -> u64 {
        let ps = 4096usize;
        // SAFETY: a fresh anonymous mapping owned by the caller.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (n + 1) * ps,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        assert_ne!(base, libc::MAP_FAILED as u64);
        // SAFETY: the last page of that mapping.
        assert_eq!(unsafe { libc::mprotect((base + (n * ps) as u64) as *mut libc::c_void, ps, libc::PROT_NONE) }, 0);
        base
    }

    /// Every length the short routine serves (0 to 64 bytes, overlapping
    /// pieces), whole, and stopped by a fault on the last byte of either
    /// end.
    #[test]
    fn short_copies_of_every_length() {
        let _g = crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        if !available() {
            return;
        }
        let ps = 4096usize;
        let base = pages_then_hole(1);
        let src: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        for len in 0..=64usize {
            let mut dst = [0xeeu8; 80];
            assert!(copy_in(&mut dst[3..3 + len], src.as_ptr() as u64 + 5), "length {len}");
            assert_eq!(&dst[3..3 + len], &src[5..5 + len], "length {len}");
            assert!(dst[..3].iter().chain(&dst[3 + len..]).all(|&b| b == 0xee), "length {len} wrote outside");
            if len == 0 {
                continue;
            }
            // Ending one byte into the hole: read side, then write side.
            let at = base + (ps - len + 1) as u64;
            assert!(!copy_in(&mut dst[..len], at), "length {len} read past the end");
            assert!(!copy_out(at, &src[..len]), "length {len} wrote past the end");
            let inside = base + (ps - len) as u64;
            assert!(copy_out(inside, &src[..len]), "length {len} at the end");
            assert!(copy_in(&mut dst[..len], inside));
            assert_eq!(&dst[..len], &src[..len]);
        }
        // SAFETY: our mapping.
        unsafe { libc::munmap(base as *mut libc::c_void, 2 * ps) };
    }

    /// The vector routine (more than 64 bytes): every length up to a few
    /// loop iterations at every destination offset modulo 32 (the head
    /// and tail pieces overlap the loop differently for each), and
    /// lengths around a page at odd offsets; exactly the bytes asked for
    /// are written. Then stopped by a fault on the last byte of either
    /// end.
    /// `f` once with each routine for copies of more than 64 bytes that
    /// the CPU has (the choice restored after), so every routine's
    /// results and fault recovery are checked on any machine that has it.
    fn each_kernel(mut f: impl FnMut(&str)) {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            use imp::Kernel;
            let was = imp::kernel();
            for k in [Kernel::Avx, Kernel::Avx512, Kernel::Rep] {
                if imp::supports(k) {
                    imp::set_kernel(k);
                    f(&format!("{k:?}"));
                }
            }
            imp::set_kernel(was);
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        f("default");
    }

    #[test]
    fn vector_copies_of_every_length_and_offset() {
        let _g = crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        if !available() {
            return;
        }
        each_kernel(vector_copies);
    }

    fn vector_copies(kernel: &str) {
        let src: Vec<u8> = (0..40000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut dst = vec![0u8; 40000];
        let lens = (65..=600).chain([4095, 4096, 4097, 8191, 8192, 8193, 8900, 32767, 32768, 32769, 33100]);
        for len in lens {
            for (d, s) in (0..32usize).map(|d| (d, (d * 7 + 3) % 41)) {
                dst.fill(0xee);
                assert!(copy_in(&mut dst[d..d + len], src.as_ptr() as u64 + s as u64), "{kernel}: length {len} at {d}");
                assert!(dst[d..d + len] == src[s..s + len], "{kernel}: length {len} at {d}");
                assert!(
                    dst[..d].iter().chain(&dst[d + len..]).all(|&b| b == 0xee),
                    "{kernel}: length {len} at {d} spilled"
                );
            }
        }
        let ps = 4096usize;
        let pages = 9;
        let base = pages_then_hole(pages);
        for len in [65, 100, 128, 129, 200, 256, 257, 4096, 3 * ps, pages * ps] {
            let at = base + (pages * ps - len + 1) as u64;
            assert!(!copy_in(&mut dst[..len], at), "{kernel}: length {len} read past the end");
            assert!(!copy_out(at, &src[..len]), "{kernel}: length {len} wrote past the end");
            let inside = base + (pages * ps - len) as u64;
            assert!(copy_out(inside, &src[..len]), "{kernel}: length {len} at the end");
            assert!(copy_in(&mut dst[..len], inside));
            assert!(dst[..len] == src[..len], "{kernel}: length {len} at the end");
        }
        // SAFETY: our mapping.
        unsafe { libc::munmap(base as *mut libc::c_void, (pages + 1) * ps) };
    }

    #[test]
    fn large_and_aliased_copies_stop_at_the_fault() {
        // Mappings of other tests must not land where ours was.
        let _g = crate::frames::tests::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        if !available() {
            return;
        }
        each_kernel(|_| large_and_aliased_copies());
    }

    fn large_and_aliased_copies() {
        let ps = 4096usize;
        let base = pages_then_hole(2);
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
        // Large, not aliased, into the hole.
        assert!(!copy_out(base + 8, &src));
        // SAFETY: our mapping.
        unsafe { libc::munmap(base as *mut libc::c_void, 3 * ps) };
        // To a destination aligned to a cache line, large enough for
        // `rep movsb` where a routine takes it (from 32 KiB): whole, then
        // with the source running into the hole.
        let n = 9 * ps;
        let base = pages_then_hole(18);
        let src: Vec<u8> = (0..n).map(|i| (i * 13 + 5) as u8).collect();
        let upper = base + n as u64;
        assert!(copy_out(upper, &src));
        assert!(copy_user(base, upper, n), "up to the hole's edge");
        let mut back = vec![0u8; n];
        assert!(copy_in(&mut back, base));
        assert!(back == src);
        assert!(!copy_user(base, upper + 64, n), "the read crosses into the hole");
        // SAFETY: our mapping.
        unsafe { libc::munmap(base as *mut libc::c_void, 19 * ps) };
    }
}
