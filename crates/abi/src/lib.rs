//! The iommufd user ABI, byte for byte.
//!
//! This crate holds only facts: `#[repr(C)]` structs whose layout equals the
//! kernel's uAPI (`include/uapi/linux/iommufd.h` of Linux v7.3, the selftest
//! mock ABI of `drivers/iommu/iommufd/iommufd_test.h`, and the VFIO pieces
//! iommufd serves), ioctl numbers, flag bits and errno values. It has no
//! logic and no `unsafe`: every struct derives zerocopy's traits so that
//! parsing a user buffer is a checked copy, never a transmute.
//!
//! Invariants:
//! - every struct's size and every field offset equal the C definition; this
//!   is asserted at compile time (`const` checks next to each struct) and in
//!   tests against the `iommufd-bindings` crate and our own C headers;
//! - names follow the C ones: `struct iommu_ioas_map` is [`IommuIoasMap`],
//!   fields keep their C names (`type` becomes `type_`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[macro_use]
mod macros;

pub mod errno;
pub mod ioctl;
pub mod iommufd;
pub mod test_cmd;
pub mod vfio;

pub use errno::Errno;
pub use iommufd::*;
