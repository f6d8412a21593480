//! The preload shim: `/dev/iommu`, and VFIO devices, for programs that do
//! not know us.
//!
//! Loaded with `LD_PRELOAD`, this library interposes the libc calls that
//! create, duplicate, close and drive file descriptors. A call on a path or
//! descriptor we serve goes to the engine; every other call goes straight to
//! the next definition (libc) with its arguments untouched.
//!
//! Design:
//! - [`fdtable`]: every fake descriptor is backed by a *real* kernel
//!   descriptor (an open of `/dev/null`), so numbers never collide with the
//!   program's own files, and close-on-exec and `poll` keep working
//!   (`handoff` carries descriptors across `execve` and `SCM_RIGHTS`). The table maps descriptor numbers to shared
//!   [`uiommufd_dispatch::File`]s; lookups for descriptors that are not ours
//!   cost one atomic load and take no lock.
//! - [`real`]: the next definitions of the interposed symbols, resolved once
//!   with `dlsym(RTLD_NEXT)`.
//! - [`entry`]: the `extern "C"` entry points. Each catches unwinds: a panic
//!   here would be a crash of someone else's program.
//!
//! - `handoff`: across `execve` and `SCM_RIGHTS`, descriptors whose file
//!   holds no state are opened afresh in the new image (the receiver), the
//!   others fail with `EIO`.
//!
//! - [`fork_server`]: after `fork`, the child's inherited descriptors
//!   are [`fork_server::Remote`] entries whose calls the parent's engine
//!   runs (the kernel shares one file between them); a thread in the
//!   parent serves its children.
//!
//! - [`path`]: which paths name served nodes (`/dev/iommu`,
//!   `/dev/vfio/vfio`, `/dev/vfio/devices/vfioN`, fail-nth) and which are
//!   redirected to stand-in directories (the emulated devices' sysfs
//!   entries, debugfs under fault injection).
//!
//! Environment (set by `uiommufd run`): `UIOMMUFD_TRACE=1` logs every call
//! on a served descriptor to stderr; `UIOMMUFD_IOMMU` names the IOMMU model
//! (`mock`, `vtd[:...]`) and `UIOMMUFD_DEVICES` the emulated devices (see
//! `uiommufd_devices::platform`); `UIOMMUFD_SYSFS` is the directory holding
//! their sysfs entries; `UIOMMUFD_FAULT_INJECTION=1` and `UIOMMUFD_DEBUGFS`
//! turn on fault injection; `UIOMMUFD_FORK_SHARE=0` gives a forked child a
//! private copy of the engine state instead of the parent's files.

// The shim is no library: its docs are for its maintainers and link its
// private helpers.
#![allow(rustdoc::private_intra_doc_links)]

pub mod entry;

/// Run when the library is loaded, before the program's `main`: the fork
/// handlers are registered before any thread can take a lock they cover.
extern "C" fn on_load() {
    let _ = std::panic::catch_unwind(fdtable::ensure_atfork);
    // Served descriptors an exec left us (see `handoff`).
    let _ = std::panic::catch_unwind(handoff::adopt);
}

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

pub mod fdtable;
pub mod fork_server;
mod handoff;
mod inspect;
mod path;
mod real;
mod trace;
