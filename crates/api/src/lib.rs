//! iommufd for Rust programs, on the real kernel or on the uiommufd engine,
//! with the same types, calls and errors.
//!
//! A VMM or user-space driver writes against [`Iommufd`] (one open
//! `/dev/iommu`) and [`VfioDevice`] (one VFIO device cdev), and picks the
//! [`Backend`] at start-up:
//!
//! - [`Backend::Kernel`]: the running Linux kernel's `/dev/iommu` and
//!   `/dev/vfio/devices/vfioN`, through system calls. This is what runs on
//!   hardware, and under `uiommufd run` (whose shim serves those nodes).
//! - [`Backend::Emulated`]: the uiommufd engine in this process, over a
//!   software IOMMU (the kernel selftest's mock, Intel VT-d, Arm SMMUv3 or
//!   AMD-Vi) and emulated devices ([`Emulated::with_platform`]). No root,
//!   no hardware, no preloading.
//!
//! Each call is one command of the kernel's uAPI with the structs of
//! [`uiommufd_abi`]; the emulated backend runs them through the same
//! dispatcher the `LD_PRELOAD` shim uses, so both backends accept and refuse
//! the same requests with the same errno. An [`Error`] carries the errno,
//! the command, and — from the engine — which check refused it. IDs are
//! typed ([`IoasId`], [`HwptId`], [`DeviceId`], ...).
//!
//! # IOAS map and unmap
//!
//! A mock device of the kernel selftest (`IOMMU_TEST_CMD`, served by the
//! engine and by kernels built with `CONFIG_IOMMUFD_TEST`) attached to an
//! IOAS, eight pages mapped, checked in the mock IOMMU's page table, and
//! unmapped:
//!
//! ```
//! use uiommufd_api::{Backend, Errno, Iommufd, MapFlags};
//!
//! let fd = Iommufd::open(&Backend::emulated())?;
//! let ioas = fd.ioas_alloc()?;
//! let mock = fd.selftest().mock_domain(ioas)?;
//!
//! let len = 8 * 4096;
//! let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
//! // SAFETY: a non-zero size.
//! let mem = unsafe { std::alloc::alloc_zeroed(layout) };
//! // SAFETY: `mem` stays allocated until after the unmap below, and no
//! // device is programmed to write it.
//! let iova = unsafe { fd.ioas_map(ioas, mem as u64, len as u64, None, MapFlags::RW)? };
//! fd.selftest().check_map(mock.hwpt, iova, len as u64, mem as u64)?;
//!
//! assert_eq!(fd.ioas_unmap(ioas, iova, len as u64)?, len as u64);
//! // Nothing is mapped there any more: the kernel's ENOENT.
//! assert_eq!(fd.ioas_unmap(ioas, iova, len as u64).unwrap_err().errno(), Errno::ENOENT);
//! // SAFETY: allocated above with `layout`, no longer mapped.
//! unsafe { std::alloc::dealloc(mem, layout) };
//! # Ok::<(), uiommufd_api::Error>(())
//! ```
//!
//! # A device bound and attached
//!
//! A DMA engine behind an Intel VT-d unit, as `/dev/vfio/devices/vfio0`:
//! bound to the iommufd, attached to an IOAS, asked what its IOMMU is.
//! With [`Backend::Kernel`] the same code drives a device bound to
//! `vfio-pci`.
//!
//! ```
//! use uiommufd_api::abi::IommuHwInfoVtd;
//! use uiommufd_api::{Backend, Emulated, Iommufd, VfioDevice};
//!
//! let backend = Backend::Emulated(Emulated::with_platform("vtd", "dma-engine")?);
//! let fd = Iommufd::open(&backend)?;
//! let dev = VfioDevice::open(&backend, "/dev/vfio/devices/vfio0")?;
//! let dev_id = dev.bind(&fd)?;
//! let ioas = fd.ioas_alloc()?;
//! let hwpt = dev.attach(ioas)?;
//!
//! let info = fd.get_hw_info(dev_id)?;
//! let vtd: IommuHwInfoVtd = info.data().expect("a VT-d unit");
//! assert_ne!(vtd.cap_reg, 0);
//! println!("device {dev_id} attached through HWPT {hwpt}; cap {:#x}", vtd.cap_reg);
//! # Ok::<(), uiommufd_api::Error>(())
//! ```
//!
//! # A nested HWPT and its invalidation
//!
//! A nesting parent on the IOAS, a vIOMMU over it, a nested HWPT with the
//! driver's data (here the mock driver's: an IOTLB value), and an
//! invalidation request the driver handles:
//!
//! ```
//! use uiommufd_api::abi::test_cmd::{
//!     IommuHwptInvalidateSelftest, IommuHwptSelftest, IOMMU_TEST_INVALIDATE_FLAG_ALL,
//!     IOMMU_VIOMMU_TYPE_SELFTEST,
//! };
//! use uiommufd_api::{Backend, HwptAlloc, HwptFlags, Iommufd};
//!
//! let fd = Iommufd::open(&Backend::emulated())?;
//! let ioas = fd.ioas_alloc()?;
//! let mock = fd.selftest().mock_domain(ioas)?;
//! let parent = fd.hwpt_alloc(&HwptAlloc::new(mock.dev, ioas).flags(HwptFlags::NEST_PARENT))?;
//! let viommu = fd.viommu_alloc(mock.dev, parent, IOMMU_VIOMMU_TYPE_SELFTEST)?;
//! let data = IommuHwptSelftest { iotlb: 0x1234, ..Default::default() };
//! let nested = fd.hwpt_alloc(&HwptAlloc::new(mock.dev, viommu).data(&data))?;
//! fd.selftest().check_iotlb(nested, 0, 0x1234)?;
//!
//! let inv = [IommuHwptInvalidateSelftest { flags: IOMMU_TEST_INVALIDATE_FLAG_ALL, iotlb_id: 0 }];
//! assert_eq!(fd.hwpt_invalidate(nested, &inv)?, 1);
//! fd.selftest().check_iotlb(nested, 0, 0)?;
//! # Ok::<(), uiommufd_api::Error>(())
//! ```
//!
//! # Safety
//!
//! Mapping memory for DMA is `unsafe` ([`Iommufd::ioas_map`]): a device may
//! write it at any time, which Rust's aliasing rules cannot see. Everything
//! else is safe: the API sets every user pointer of a command from a slice
//! of the right length.

#![deny(unsafe_op_in_unsafe_fn)]

mod backend;
mod data;
mod error;
mod ids;
mod iommufd;
mod queue;
mod selftest;
mod vfio;

pub use backend::Backend;
#[cfg(feature = "emulated")]
pub use backend::Emulated;
pub use data::{HwInfoData, HwptData, InvalidateEntry};
pub use error::{Error, InvalidateError, Result};
pub use ids::{
    DeviceId, FaultId, HwQueueId, HwptFlags, HwptId, IoasId, IovaRange, MapFlags, MockDeviceId, ObjectId, PtId,
    VdeviceId, VeventqId, ViommuId,
};
pub use iommufd::{HwInfo, HwptAlloc, IommuOption, Iommufd, IovaRanges};
pub use queue::{EventQueue, FaultQueue, Vevent};
pub use selftest::{MockAccess, MockDevice, Selftest};
pub use uiommufd_abi as abi;
pub use uiommufd_abi::Errno;
pub use vfio::VfioDevice;
