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
//! - [`ioas`]: IO address spaces.
//!
//! Invariants kept across the engine:
//! - every failure is an [`Error`] carrying the kernel's errno;
//! - a failed create leaves no ID, no object and no side effect behind;
//! - destroy never fails for lack of memory.

pub mod ctx;
pub mod error;
pub mod ioas;
pub mod object;

pub use ctx::{AccountMode, Iommufd};
pub use error::{Error, Result};
pub use object::{ObjectId, ObjectKind};
pub use uiommufd_abi::Errno;
