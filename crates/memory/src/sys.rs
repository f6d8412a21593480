//! Small OS queries the engine needs to decide like the kernel does.

/// `CAP_SYS_RESOURCE` from `<linux/capability.h>`.
const CAP_SYS_RESOURCE: u32 = 24;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The engine's `capable(CAP_SYS_RESOURCE)`.
///
/// True when the process holds `CAP_SYS_RESOURCE` in its effective set (the
/// kernel's rule) or runs as root. The second half is a deliberate
/// divergence: container runtimes commonly drop `CAP_SYS_RESOURCE` from
/// root, and since uiommufd's memory accounting is emulated, root's wish to
/// change it is honoured. `UIOMMUFD_CAP_SYS_RESOURCE=0|1` forces the answer
/// (for tests of both outcomes).
pub fn capable_sys_resource() -> bool {
    match std::env::var("UIOMMUFD_CAP_SYS_RESOURCE").as_deref() {
        Ok("0") => return false,
        Ok("1") => return true,
        _ => {}
    }
    // SAFETY: geteuid has no preconditions.
    has_cap_sys_resource() || unsafe { libc::geteuid() } == 0
}

/// Whether `CAP_SYS_RESOURCE` is in this process's effective set.
pub fn has_cap_sys_resource() -> bool {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData records (version 3) into `data` and
    // may update `hdr`; both are live, correctly sized and exclusively ours.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    let word = (CAP_SYS_RESOURCE / 32) as usize;
    data[word].effective & (1 << (CAP_SYS_RESOURCE % 32)) != 0
}
