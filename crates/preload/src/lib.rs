//! The preload shim: `/dev/iommu` for programs that do not know us.
//!
//! Loaded with `LD_PRELOAD`, this library interposes the libc calls that
//! create, duplicate, close and drive file descriptors. A call on a path or
//! descriptor we serve goes to the engine; every other call goes straight to
//! the next definition (libc) with its arguments untouched.
//!
//! Design:
//! - [`fdtable`]: every fake descriptor is backed by a *real* kernel
//!   descriptor (an open of `/dev/null`), so numbers never collide with the
//!   program's own files, and close-on-exec, `poll` and descriptor passing
//!   keep working. The table maps descriptor numbers to shared
//!   [`uiommufd_dispatch::File`]s; lookups for descriptors that are not ours
//!   cost one atomic load and take no lock.
//! - [`real`]: the next definitions of the interposed symbols, resolved once
//!   with `dlsym(RTLD_NEXT)`.
//! - [`entry`]: the `extern "C"` entry points. Each catches unwinds: a panic
//!   here would be a crash of someone else's program.
//!
//! Environment: `UIOMMUFD_TRACE=1` logs every call on a served descriptor to
//! stderr; `UIOMMUFD_IOMMU` names the IOMMU model (only `mock` exists).

pub mod entry;
pub mod fdtable;
mod path;
mod real;
mod trace;
