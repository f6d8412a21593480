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
//! # DMA through an emulated device
//!
//! The DMA engine of `docs/devices/dma-engine.md` behind an Arm SMMUv3,
//! driven as a VFIO driver drives a PCI device: bus mastering on in config
//! space, a descriptor ring in mapped memory, registers in BAR0. Its FILL
//! lands in this program's memory, translated by the SMMU's page tables.
//!
//! ```
//! use uiommufd_api::abi::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
//! use uiommufd_api::{Backend, Emulated, Iommufd, MapFlags, VfioDevice};
//!
//! let backend = Backend::Emulated(Emulated::with_platform("smmuv3", "dma-engine")?);
//! let fd = Iommufd::open(&backend)?;
//! let dev = VfioDevice::open(&backend, "/dev/vfio/devices/vfio0")?;
//! dev.bind(&fd)?;
//! let ioas = fd.ioas_alloc()?;
//! dev.attach(ioas)?;
//!
//! // Two pages: the descriptor ring, then the buffer the engine fills.
//! let layout = std::alloc::Layout::from_size_align(8192, 4096).unwrap();
//! // SAFETY: a non-zero size.
//! let mem = unsafe { std::alloc::alloc_zeroed(layout) };
//! // SAFETY: `mem` stays allocated until after the unmap below; this
//! // program reads what the device writes only once the device is done.
//! let iova = unsafe { fd.ioas_map(ioas, mem as u64, 8192, None, MapFlags::RW)? };
//!
//! // One FILL descriptor (opcode 2): destination, length, 8-byte pattern.
//! let pattern = 0x1122_3344_5566_7788u64;
//! let mut desc = [0u8; 64];
//! desc[0] = 2;
//! desc[0x10..0x18].copy_from_slice(&(iova + 4096).to_le_bytes());
//! desc[0x18..0x20].copy_from_slice(&4096u64.to_le_bytes());
//! desc[0x20..0x28].copy_from_slice(&pattern.to_le_bytes());
//! // SAFETY: the first 64 bytes of `mem`; the device is not running yet.
//! unsafe { std::ptr::copy_nonoverlapping(desc.as_ptr(), mem, 64) };
//!
//! // Memory Space and Bus Master Enable (Command register bits 1, 2),
//! // then RING_BASE, RING_SIZE, CTRL.ENABLE and the TAIL doorbell in BAR0.
//! let cfg = dev.region_info(VFIO_PCI_CONFIG_REGION_INDEX)?.offset;
//! let bar0 = dev.region_info(VFIO_PCI_BAR0_REGION_INDEX)?.offset;
//! let mut command = [0u8; 2];
//! dev.read_at(&mut command, cfg + 4)?;
//! dev.write_at(&(u16::from_le_bytes(command) | 6).to_le_bytes(), cfg + 4)?;
//! for (reg, value) in [(0x20, iova), (0x28, 2), (0x10, 1), (0x38, 1)] {
//!     dev.write_at(&u64::to_le_bytes(value), bar0 + reg)?;
//! }
//! // The engine runs on its own thread: wait for COMPLETED to count it.
//! let mut completed = [0u8; 8];
//! for _ in 0..5000 {
//!     dev.read_at(&mut completed, bar0 + 0x40)?;
//!     if u64::from_le_bytes(completed) == 1 {
//!         break;
//!     }
//!     std::thread::sleep(std::time::Duration::from_millis(1));
//! }
//! assert_eq!(u64::from_le_bytes(completed), 1);
//!
//! // SAFETY: inside `mem`; the device finished with it (COMPLETED above).
//! let (status, filled) = unsafe {
//!     ((mem.add(0x38) as *const u32).read_volatile(), std::slice::from_raw_parts(mem.add(4096), 4096))
//! };
//! assert_eq!(status, 1, "SUCCESS");
//! assert!(filled.chunks(8).all(|w| w == pattern.to_le_bytes()));
//!
//! dev.detach()?;
//! fd.ioas_unmap_all(ioas)?;
//! // SAFETY: allocated above with `layout`, no longer mapped.
//! unsafe { std::alloc::dealloc(mem, layout) };
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
#![deny(missing_docs)]

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
