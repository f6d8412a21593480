//! Capability, user and resource-limit changes.

use libc::{c_int, c_void};

use crate::real;

// Capability changes: the engine caches the effective set (every map asks
// for CAP_IPC_LOCK, as the kernel's `capable()` does); these calls may
// change it, so the cache is dropped after each.

/// # Safety
/// C `capset(2)`.
#[no_mangle]
pub unsafe extern "C" fn capset(hdr: *mut c_void, data: *const c_void) -> c_int {
    // SAFETY: forwarded per capset(2).
    let rc = unsafe { real::capset(hdr, data) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

/// # Safety
/// C `setuid(2)`.
#[no_mangle]
pub unsafe extern "C" fn setuid(uid: libc::uid_t) -> c_int {
    // SAFETY: forwarded per setuid(2).
    let rc = unsafe { real::setuid(uid) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

/// # Safety
/// C `seteuid(2)`.
#[no_mangle]
pub unsafe extern "C" fn seteuid(uid: libc::uid_t) -> c_int {
    // SAFETY: forwarded per seteuid(2).
    let rc = unsafe { real::seteuid(uid) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

/// # Safety
/// C `setreuid(2)`.
#[no_mangle]
pub unsafe extern "C" fn setreuid(ruid: libc::uid_t, euid: libc::uid_t) -> c_int {
    // SAFETY: forwarded per setreuid(2).
    let rc = unsafe { real::setreuid(ruid, euid) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

/// # Safety
/// C `setresuid(2)`.
#[no_mangle]
pub unsafe extern "C" fn setresuid(ruid: libc::uid_t, euid: libc::uid_t, suid: libc::uid_t) -> c_int {
    // SAFETY: forwarded per setresuid(2).
    let rc = unsafe { real::setresuid(ruid, euid, suid) };
    uiommufd_memory::sys::capabilities_changed();
    rc
}

// Resource-limit changes: the engine caches RLIMIT_MEMLOCK (every charged
// map reads it, as the kernel's accounting does from the task); a change
// of this process's limits drops the cache. (Another process's `prlimit`
// on this one, or a raw system call, is seen within a bounded number of
// charges: `uiommufd_memory::sys::memlock_limit`.) Only RLIMIT_MEMLOCK is
// looked at, and before anything else: sanitizer runtimes call setrlimit
// for other limits while they start, before their shadow memory exists,
// when no instrumented code of ours may run.

/// # Safety
/// C `setrlimit(2)`.
#[no_mangle]
pub unsafe extern "C" fn setrlimit(resource: c_int, rl: *const libc::rlimit) -> c_int {
    // SAFETY: forwarded per setrlimit(2).
    let rc = unsafe { real::setrlimit(resource, rl) };
    memlock_changed(resource, true);
    rc
}

/// # Safety
/// C `setrlimit64(2)`.
#[no_mangle]
pub unsafe extern "C" fn setrlimit64(resource: c_int, rl: *const libc::rlimit64) -> c_int {
    // SAFETY: forwarded per setrlimit(2).
    let rc = unsafe { real::setrlimit64(resource, rl) };
    memlock_changed(resource, true);
    rc
}

/// # Safety
/// C `prlimit(2)`.
#[no_mangle]
pub unsafe extern "C" fn prlimit(
    pid: libc::pid_t,
    resource: c_int,
    new: *const libc::rlimit,
    old: *mut libc::rlimit,
) -> c_int {
    // SAFETY: forwarded per prlimit(2).
    let rc = unsafe { real::prlimit(pid, resource, new, old) };
    memlock_changed(resource, !new.is_null());
    rc
}

/// # Safety
/// C `prlimit64(2)`.
#[no_mangle]
pub unsafe extern "C" fn prlimit64(
    pid: libc::pid_t,
    resource: c_int,
    new: *const libc::rlimit64,
    old: *mut libc::rlimit64,
) -> c_int {
    // SAFETY: forwarded per prlimit(2).
    let rc = unsafe { real::prlimit64(pid, resource, new, old) };
    memlock_changed(resource, !new.is_null());
    rc
}

/// A call that may have set `resource` (`set`) ran: drop the engine's
/// cached `RLIMIT_MEMLOCK` when it was that limit.
#[inline(always)]
fn memlock_changed(resource: c_int, set: bool) {
    if set && resource == libc::RLIMIT_MEMLOCK as c_int {
        uiommufd_memory::sys::limits_changed();
    }
}
