//! sigaction and signal: the program's handlers for the signals our fault
//! handler guards are chained behind it.

use libc::c_int;

use crate::real;

/// # Safety
/// C `sigaction(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    // While our fault handler guards SIGSEGV/SIGBUS, the program's handler
    // for them is recorded as the one ours passes foreign faults to.
    // SAFETY: per sigaction(2), `act` is null or a valid sigaction.
    let new = unsafe { act.as_ref() }.copied();
    if let Some(prev) = uiommufd_memory::guard::chain_sigaction(sig, new) {
        if !old.is_null() {
            // SAFETY: per sigaction(2), `old` is null or writable.
            unsafe { *old = prev };
        }
        return 0;
    }
    // SAFETY: forwarded per sigaction(2).
    unsafe { real::sigaction(sig, act, old) }
}

/// # Safety
/// C `signal(2)` (BSD semantics, as glibc's).
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if !matches!(sig, libc::SIGSEGV | libc::SIGBUS) {
        // SAFETY: forwarded per signal(2).
        return unsafe { real::signal(sig, handler) };
    }
    // SAFETY: all-zero is a valid sigaction (SIG_DFL, no flags).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: all-zero is a valid sigaction.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    if unsafe { sigaction(sig, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}
