//! Object IDs as types, and the flag sets of the commands.
//!
//! iommufd names every object by a 32-bit ID in one space per open file. The
//! API gives each kind its own type so that an IOAS cannot be passed where a
//! device is expected; [`ObjectId`] is any of them (what `IOMMU_DESTROY`
//! takes) and [`PtId`] whatever a page table can hang off (an IOAS, a HWPT
//! or a vIOMMU). The raw number stays public: IDs are what the kernel
//! prints and what other programs pass around.

use std::fmt;

macro_rules! id_type {
    ($($(#[$meta:meta])* $name:ident;)*) => {$(
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<$name> for ObjectId {
            fn from(id: $name) -> ObjectId {
                ObjectId(id.0)
            }
        }
    )*};
}

/// Any object's ID (what [`Iommufd::destroy`](crate::Iommufd::destroy)
/// takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub u32);

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

id_type! {
    /// An IO address space (`IOMMU_IOAS_ALLOC`).
    IoasId;
    /// A hardware page table (`IOMMU_HWPT_ALLOC`, or the one attaching to
    /// an IOAS picked or created).
    HwptId;
    /// A device bound to the iommufd (`VFIO_DEVICE_BIND_IOMMUFD`, or a
    /// selftest mock device).
    DeviceId;
    /// A virtual IOMMU (`IOMMU_VIOMMU_ALLOC`).
    ViommuId;
    /// A device's presence under a vIOMMU (`IOMMU_VDEVICE_ALLOC`).
    VdeviceId;
    /// A fault queue (`IOMMU_FAULT_QUEUE_ALLOC`).
    FaultId;
    /// A vIOMMU event queue (`IOMMU_VEVENTQ_ALLOC`).
    VeventqId;
    /// A vIOMMU's hardware queue (`IOMMU_HW_QUEUE_ALLOC`).
    HwQueueId;
    /// The selftest's mock device object (`IOMMU_TEST_OP_MOCK_DOMAIN`),
    /// apart from the [`DeviceId`] it is bound as.
    MockDeviceId;
}

/// What a page table can be allocated on or attached to: an IOAS, a HWPT
/// (a nesting parent, or a HWPT to attach) or a vIOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PtId(pub u32);

impl fmt::Display for PtId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<IoasId> for PtId {
    fn from(id: IoasId) -> PtId {
        PtId(id.0)
    }
}

impl From<HwptId> for PtId {
    fn from(id: HwptId) -> PtId {
        PtId(id.0)
    }
}

impl From<ViommuId> for PtId {
    fn from(id: ViommuId) -> PtId {
        PtId(id.0)
    }
}

macro_rules! flag_type {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $flag:ident = $value:expr;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name(pub u32);

        impl $name {
            /// No flag.
            pub const EMPTY: $name = $name(0);
            $($(#[$fmeta])* pub const $flag: $name = $name($value);)*

            /// Whether every flag of `other` is set.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name {
                $name(self.0 | rhs.0)
            }
        }
    };
}

flag_type! {
    /// Permissions of a mapping (`IOMMU_IOAS_MAP_*`; the fixed-IOVA flag
    /// comes from passing an IOVA).
    MapFlags {
        /// Devices may read the memory.
        READABLE = uiommufd_abi::IOMMU_IOAS_MAP_READABLE;
        /// Devices may write the memory.
        WRITEABLE = uiommufd_abi::IOMMU_IOAS_MAP_WRITEABLE;
    }
}

impl MapFlags {
    /// Read and write.
    pub const RW: MapFlags = MapFlags(MapFlags::READABLE.0 | MapFlags::WRITEABLE.0);
}

flag_type! {
    /// Flags of a HWPT allocation (`IOMMU_HWPT_ALLOC_*`; the fault-queue flag
    /// comes from [`HwptAlloc::fault`](crate::HwptAlloc::fault)).
    HwptFlags {
        /// A paging HWPT other (nested) HWPTs and vIOMMUs can be built on.
        NEST_PARENT = uiommufd_abi::IOMMU_HWPT_ALLOC_NEST_PARENT;
        /// A paging HWPT whose IOMMU can track which pages DMA dirtied.
        DIRTY_TRACKING = uiommufd_abi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
        /// A HWPT that can be attached to PASIDs as well as to a device.
        PASID = uiommufd_abi::IOMMU_HWPT_ALLOC_PASID;
    }
}

/// One inclusive IOVA interval `[start, last]` (`struct iommu_iova_range`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IovaRange {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub last: u64,
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.start, self.last)
    }
}
