//! sigaction and the signal family: while our fault handler guards
//! SIGSEGV/SIGBUS, the program's handlers for them are recorded and run by
//! ours for every signal that is not one of our own faults (see
//! `uiommufd_memory::guard`). These calls are async-signal-safe, as the
//! libc ones are: a program's crash handler may call them.

use libc::c_int;

use crate::real;

/// # Safety
/// C `sigaction(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    // SAFETY: per sigaction(2), `act` is null or a valid sigaction, and
    // `old` null or writable (libc's own reads and writes them in user
    // space too).
    let (new, old_ref) = unsafe { (act.as_ref(), old.as_mut()) };
    // SAFETY: forwarded per sigaction(2).
    uiommufd_memory::guard::program_sigaction(sig, new, old_ref, || unsafe { real::sigaction(sig, act, old) })
}

/// # Safety
/// glibc's `__sigaction` (the same call).
#[no_mangle]
pub unsafe extern "C" fn __sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    // SAFETY: per sigaction(2).
    unsafe { sigaction(sig, act, old) }
}

/// `signal`-style calls on a guarded signal: install `handler` with
/// `flags` (and `sig` itself in the mask unless `SA_NODEFER`), through
/// [`sigaction`]; the previous handler or `SIG_ERR`.
fn signal_with(sig: c_int, handler: libc::sighandler_t, flags: c_int) -> libc::sighandler_t {
    // SAFETY: all-zero is a valid sigaction (SIG_DFL, empty set, no flags).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    if flags & libc::SA_NODEFER == 0 {
        // SAFETY: `act.sa_mask` is a valid sigset_t; `sig` is 1..=64.
        unsafe { libc::sigaddset(&mut act.sa_mask, sig) };
    }
    // SAFETY: all-zero is a valid sigaction.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    if unsafe { sigaction(sig, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

fn guarded(sig: c_int) -> bool {
    matches!(sig, libc::SIGSEGV | libc::SIGBUS)
}

/// # Safety
/// C `signal(2)` (BSD semantics, as glibc's).
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if !guarded(sig) {
        // SAFETY: forwarded per signal(2).
        return unsafe { real::signal(sig, handler) };
    }
    signal_with(sig, handler, libc::SA_RESTART)
}

/// # Safety
/// glibc's `bsd_signal` (= `signal`).
#[no_mangle]
pub unsafe extern "C" fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: per signal(2).
    unsafe { signal(sig, handler) }
}

/// # Safety
/// glibc's `sysv_signal`: one-shot (`SA_RESETHAND | SA_NODEFER`).
#[no_mangle]
pub unsafe extern "C" fn sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if !guarded(sig) {
        // SAFETY: forwarded per signal(2).
        return unsafe { real::sysv_signal(sig, handler) };
    }
    signal_with(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER)
}

/// # Safety
/// glibc's `__sysv_signal` (what `signal` is with `-D_XOPEN_SOURCE`).
#[no_mangle]
pub unsafe extern "C" fn __sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: per signal(2).
    unsafe { sysv_signal(sig, handler) }
}

/// # Safety
/// glibc's `ssignal` (= `signal`).
#[no_mangle]
pub unsafe extern "C" fn ssignal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: per signal(2).
    unsafe { signal(sig, handler) }
}

/// `SIG_HOLD`.
const SIG_HOLD: libc::sighandler_t = 2;

/// # Safety
/// C `sigset(3)`: `SIG_HOLD` blocks the signal; a disposition installs it
/// (no flags) and unblocks the signal; the answer is `SIG_HOLD` if the
/// signal was blocked, else the previous disposition.
#[no_mangle]
pub unsafe extern "C" fn sigset(sig: c_int, disp: libc::sighandler_t) -> libc::sighandler_t {
    if !guarded(sig) {
        // SAFETY: forwarded per sigset(3).
        return unsafe { real::sigset(sig, disp) };
    }
    // SAFETY: all-zero sigset_t values are valid; `sig` is 1..=64.
    let (mut set, mut was) = unsafe { (std::mem::zeroed::<libc::sigset_t>(), std::mem::zeroed::<libc::sigset_t>()) };
    // SAFETY: as above.
    unsafe { libc::sigaddset(&mut set, sig) };
    let (prev, how) = if disp == SIG_HOLD {
        // SAFETY: all-zero is a valid sigaction; a query only.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a live local to fill.
        if unsafe { sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            return libc::SIG_ERR;
        }
        (old.sa_sigaction, libc::SIG_BLOCK)
    } else {
        let prev = signal_with(sig, disp, 0);
        if prev == libc::SIG_ERR {
            return prev;
        }
        (prev, libc::SIG_UNBLOCK)
    };
    // SAFETY: live local sets.
    if unsafe { libc::pthread_sigmask(how, &set, &mut was) } != 0 {
        return libc::SIG_ERR;
    }
    // SAFETY: a valid set.
    if unsafe { libc::sigismember(&was, sig) } == 1 {
        SIG_HOLD
    } else {
        prev
    }
}
