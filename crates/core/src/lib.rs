//! The uiommufd engine: the model of `drivers/iommu/iommufd/`.
//!
//! One [`Iommufd`] is one open `/dev/iommu`: a table of objects (IOAS,
//! HWPT, device, access, ...) addressed by 32-bit IDs, plus the options of
//! that file. Everything the engine does hangs off that context; there is no
//! hidden global state.
//!
//! Module map (each mirrors a kernel file of the same concept):
//! - [`object`]: the ID table, typed lookups, the users/short-term counts,
//!   reserve → build → publish;
//! - [`ctx`]: the per-file context and the global options;
//! - [`release`]: the kernel release a context emulates (7.3 or 6.12) and
//!   every difference between them;
//! - [`ioas`], [`io_pagetable`]: IO address spaces and their IOVA map;
//! - [`pages`], [`account`]: pinned user pages and their accounting;
//!   [`dmabuf`]: imported dma-bufs (exported by the selftest or vfio-pci);
//! - [`hwpt`], [`device`]: hardware page tables and bound devices;
//! - [`access`]: emulated devices reaching IOAS memory by CPU;
//! - [`selftest`]: the kernel selftest's mock devices and checks;
//! - [`vfio_compat`]: VFIO type1 container semantics on the compat IOAS;
//! - [`viommu`], [`veventq`]: virtual IOMMUs with their vDEVICEs, HW queues
//!   and event queues; [`mmap`]: the driver regions `mmap(2)` of the file
//!   reaches.
//!
//! Invariants kept across the engine:
//! - every failure is an [`Error`] carrying the kernel's errno;
//! - a failed create leaves no ID, no object and no side effect behind;
//! - destroy never fails for lack of memory.
//!
//! The engine holds no `unsafe` of its own: raw memory and system calls live in
//! `uiommufd-memory` (unit tests here may use `unsafe` to set up memory).
#![cfg_attr(not(test), forbid(unsafe_code))]

pub mod access;
pub mod account;
mod atc;
pub mod ctx;
pub mod device;
pub mod dma;
pub mod dmabuf;
pub mod error;
pub mod fault;
pub mod hwpt;
pub mod invariants;
pub mod io_pagetable;
pub mod ioas;
pub mod map_file;
pub mod mmap;
pub mod object;
pub mod pages;
pub mod release;
pub mod selftest;
pub mod veventq;
pub mod vfio_compat;
pub mod viommu;

pub use ctx::{AccountMode, Iommufd};
pub use error::{Error, Result};
pub use ioas::IoasHandle;
pub use object::{ObjectId, ObjectKind};
pub use release::KernelRelease;
pub use uiommufd_abi::Errno;
