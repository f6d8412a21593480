//! The VFIO requests (`include/uapi/linux/vfio.h`): the type1 container
//! requests an iommufd answers, the group's, the device's (with the
//! capability chains of the INFO replies, SET_IRQS data, the device
//! features) and the migration data file's.

use core::mem::size_of;

use uiommufd_abi::vfio::*;

use crate::class::{DEVICE, MIGRATION, VFIO, VFIO_CONTAINER, VFIO_DEVICE, VFIO_GROUP};
use crate::fields;
use crate::ioctl::{Arg, Call, Cmd, Phase};
use crate::out::{le, Fmt::*, Names, Out, F};

const EXTENSIONS: Names = &[
    (VFIO_TYPE1_IOMMU as u64, "VFIO_TYPE1_IOMMU"),
    (VFIO_SPAPR_TCE_IOMMU as u64, "VFIO_SPAPR_TCE_IOMMU"),
    (VFIO_TYPE1v2_IOMMU as u64, "VFIO_TYPE1v2_IOMMU"),
    (VFIO_DMA_CC_IOMMU as u64, "VFIO_DMA_CC_IOMMU"),
    (VFIO_EEH as u64, "VFIO_EEH"),
    (VFIO_TYPE1_NESTING_IOMMU as u64, "VFIO_TYPE1_NESTING_IOMMU"),
    (VFIO_SPAPR_TCE_v2_IOMMU as u64, "VFIO_SPAPR_TCE_v2_IOMMU"),
    (VFIO_NOIOMMU_IOMMU as u64, "VFIO_NOIOMMU_IOMMU"),
    (VFIO_UNMAP_ALL as u64, "VFIO_UNMAP_ALL"),
    (VFIO_UPDATE_VADDR as u64, "VFIO_UPDATE_VADDR"),
];

const INFO_FLAGS: Names = &[(VFIO_IOMMU_INFO_PGSIZES as u64, "PGSIZES"), (VFIO_IOMMU_INFO_CAPS as u64, "CAPS")];
const MAP_FLAGS: Names = &[
    (VFIO_DMA_MAP_FLAG_READ as u64, "READ"),
    (VFIO_DMA_MAP_FLAG_WRITE as u64, "WRITE"),
    (VFIO_DMA_MAP_FLAG_VADDR as u64, "VADDR"),
];
const UNMAP_FLAGS: Names = &[
    (VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP as u64, "GET_DIRTY_BITMAP"),
    (VFIO_DMA_UNMAP_FLAG_ALL as u64, "ALL"),
    (VFIO_DMA_UNMAP_FLAG_VADDR as u64, "VADDR"),
];
const DIRTY_FLAGS: Names = &[
    (VFIO_IOMMU_DIRTY_PAGES_FLAG_START as u64, "START"),
    (VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP as u64, "STOP"),
    (VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP as u64, "GET_BITMAP"),
];
const GROUP_FLAGS: Names =
    &[(VFIO_GROUP_FLAGS_VIABLE as u64, "VIABLE"), (VFIO_GROUP_FLAGS_CONTAINER_SET as u64, "CONTAINER_SET")];
const DEVICE_FLAGS: Names = &[
    (VFIO_DEVICE_FLAGS_RESET as u64, "RESET"),
    (VFIO_DEVICE_FLAGS_PCI as u64, "PCI"),
    (VFIO_DEVICE_FLAGS_PLATFORM as u64, "PLATFORM"),
    (VFIO_DEVICE_FLAGS_AMBA as u64, "AMBA"),
    (VFIO_DEVICE_FLAGS_CCW as u64, "CCW"),
    (VFIO_DEVICE_FLAGS_AP as u64, "AP"),
    (VFIO_DEVICE_FLAGS_FSL_MC as u64, "FSL_MC"),
    (VFIO_DEVICE_FLAGS_CAPS as u64, "CAPS"),
    (VFIO_DEVICE_FLAGS_CDX as u64, "CDX"),
];
const REGION_FLAGS: Names = &[
    (VFIO_REGION_INFO_FLAG_READ as u64, "READ"),
    (VFIO_REGION_INFO_FLAG_WRITE as u64, "WRITE"),
    (VFIO_REGION_INFO_FLAG_MMAP as u64, "MMAP"),
    (VFIO_REGION_INFO_FLAG_CAPS as u64, "CAPS"),
];
/// vfio-pci's fixed region indexes.
pub(crate) const REGIONS: Names = &[
    (VFIO_PCI_BAR0_REGION_INDEX as u64, "BAR0"),
    (VFIO_PCI_BAR1_REGION_INDEX as u64, "BAR1"),
    (VFIO_PCI_BAR2_REGION_INDEX as u64, "BAR2"),
    (VFIO_PCI_BAR3_REGION_INDEX as u64, "BAR3"),
    (VFIO_PCI_BAR4_REGION_INDEX as u64, "BAR4"),
    (VFIO_PCI_BAR5_REGION_INDEX as u64, "BAR5"),
    (VFIO_PCI_ROM_REGION_INDEX as u64, "ROM"),
    (VFIO_PCI_CONFIG_REGION_INDEX as u64, "CONFIG"),
    (VFIO_PCI_VGA_REGION_INDEX as u64, "VGA"),
];
const IRQS: Names = &[
    (VFIO_PCI_INTX_IRQ_INDEX as u64, "INTX"),
    (VFIO_PCI_MSI_IRQ_INDEX as u64, "MSI"),
    (VFIO_PCI_MSIX_IRQ_INDEX as u64, "MSIX"),
    (VFIO_PCI_ERR_IRQ_INDEX as u64, "ERR"),
    (VFIO_PCI_REQ_IRQ_INDEX as u64, "REQ"),
];
const IRQ_INFO_FLAGS: Names = &[
    (VFIO_IRQ_INFO_EVENTFD as u64, "EVENTFD"),
    (VFIO_IRQ_INFO_MASKABLE as u64, "MASKABLE"),
    (VFIO_IRQ_INFO_AUTOMASKED as u64, "AUTOMASKED"),
    (VFIO_IRQ_INFO_NORESIZE as u64, "NORESIZE"),
];
const IRQ_SET_FLAGS: Names = &[
    (VFIO_IRQ_SET_DATA_NONE as u64, "DATA_NONE"),
    (VFIO_IRQ_SET_DATA_BOOL as u64, "DATA_BOOL"),
    (VFIO_IRQ_SET_DATA_EVENTFD as u64, "DATA_EVENTFD"),
    (VFIO_IRQ_SET_ACTION_MASK as u64, "ACTION_MASK"),
    (VFIO_IRQ_SET_ACTION_UNMASK as u64, "ACTION_UNMASK"),
    (VFIO_IRQ_SET_ACTION_TRIGGER as u64, "ACTION_TRIGGER"),
];
const HOT_RESET_FLAGS: Names =
    &[(VFIO_PCI_HOT_RESET_FLAG_DEV_ID as u64, "DEV_ID"), (VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED as u64, "DEV_ID_OWNED")];
const FEATURES: Names = &[
    (VFIO_DEVICE_FEATURE_MIGRATION as u64, "MIGRATION"),
    (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE as u64, "MIG_DEVICE_STATE"),
    (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE as u64, "MIG_DATA_SIZE"),
    (VFIO_DEVICE_FEATURE_DMA_BUF as u64, "DMA_BUF"),
    (VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 as u64, "MIG_PRECOPY_INFOv2"),
];
const FEATURE_OPS: Names = &[
    (VFIO_DEVICE_FEATURE_GET as u64, "GET"),
    (VFIO_DEVICE_FEATURE_SET as u64, "SET"),
    (VFIO_DEVICE_FEATURE_PROBE as u64, "PROBE"),
];
const MIGRATION_FLAGS: Names =
    &[(VFIO_MIGRATION_STOP_COPY, "STOP_COPY"), (VFIO_MIGRATION_P2P, "P2P"), (VFIO_MIGRATION_PRE_COPY, "PRE_COPY")];
const MIG_STATES: Names = &[
    (VFIO_DEVICE_STATE_ERROR as u64, "ERROR"),
    (VFIO_DEVICE_STATE_STOP as u64, "STOP"),
    (VFIO_DEVICE_STATE_RUNNING as u64, "RUNNING"),
    (VFIO_DEVICE_STATE_STOP_COPY as u64, "STOP_COPY"),
    (VFIO_DEVICE_STATE_RESUMING as u64, "RESUMING"),
    (VFIO_DEVICE_STATE_RUNNING_P2P as u64, "RUNNING_P2P"),
    (VFIO_DEVICE_STATE_PRE_COPY as u64, "PRE_COPY"),
    (VFIO_DEVICE_STATE_PRE_COPY_P2P as u64, "PRE_COPY_P2P"),
];
const BIND_FLAGS: Names = &[(VFIO_DEVICE_BIND_FLAG_TOKEN as u64, "TOKEN")];
const PASID_FLAGS: Names = &[(VFIO_DEVICE_ATTACH_PASID as u64, "PASID")];
const PRECOPY_FLAGS: Names = &[(VFIO_PRECOPY_INFO_REINIT as u64, "REINIT")];

/// `struct vfio_device_ioeventfd` (not served; decoded so that a program
/// that tries it sees what it asked).
#[repr(C)]
#[derive(zerocopy::FromBytes)]
struct VfioDeviceIoeventfd {
    argsz: u32,
    flags: u32,
    offset: u64,
    data: u64,
    fd: i32,
    reserved: u32,
}

const IOEVENTFD_FLAGS: Names = &[(1, "8"), (2, "16"), (4, "32"), (8, "64")];

const fn st(request: u32, name: &'static str, class: u32, len: usize, fields: &'static [F]) -> Cmd {
    Cmd { request, name, class: VFIO | class, arg: Arg::Struct { len, fields, extra: None } }
}

const fn st_x(
    request: u32,
    name: &'static str,
    class: u32,
    len: usize,
    fields: &'static [F],
    extra: fn(&mut Call<'_, '_>),
) -> Cmd {
    Cmd { request, name, class: VFIO | class, arg: Arg::Struct { len, fields, extra: Some(extra) } }
}

const fn other(request: u32, name: &'static str, class: u32, arg: Arg) -> Cmd {
    Cmd { request, name, class: VFIO | class, arg }
}

pub(crate) const CONTAINER: &[Cmd] = &[
    other(VFIO_GET_API_VERSION, "VFIO_GET_API_VERSION", VFIO_CONTAINER, Arg::None),
    other(VFIO_CHECK_EXTENSION, "VFIO_CHECK_EXTENSION", VFIO_CONTAINER, Arg::Int(Enum(EXTENSIONS))),
    other(VFIO_SET_IOMMU, "VFIO_SET_IOMMU", VFIO_CONTAINER, Arg::Int(Enum(EXTENSIONS))),
    st_x(
        VFIO_IOMMU_GET_INFO,
        "VFIO_IOMMU_GET_INFO",
        VFIO_CONTAINER,
        size_of::<VfioIommuType1Info>(),
        fields!(VfioIommuType1Info {
            argsz: u32 = Dec,
            flags: u32 = Out(&Flags(INFO_FLAGS)),
            iova_pgsizes: u64 = Out(&Hex),
            cap_offset: u32 = Out(&Dec),
            pad: u32 = Rsv,
        }),
        iommu_info_caps,
    ),
    st(
        VFIO_IOMMU_MAP_DMA,
        "VFIO_IOMMU_MAP_DMA",
        VFIO_CONTAINER,
        size_of::<VfioIommuType1DmaMap>(),
        fields!(VfioIommuType1DmaMap {
            argsz: u32 = Dec,
            flags: u32 = Flags(MAP_FLAGS),
            vaddr: u64 = Ptr,
            iova: u64 = Hex,
            size: u64 = Hex,
        }),
    ),
    st_x(
        VFIO_IOMMU_UNMAP_DMA,
        "VFIO_IOMMU_UNMAP_DMA",
        VFIO_CONTAINER,
        size_of::<VfioIommuType1DmaUnmap>(),
        fields!(VfioIommuType1DmaUnmap {
            argsz: u32 = Dec,
            flags: u32 = Flags(UNMAP_FLAGS),
            iova: u64 = Hex,
            size: u64 = Hex,
        }),
        unmap_bitmap,
    ),
    other(VFIO_IOMMU_ENABLE, "VFIO_IOMMU_ENABLE", VFIO_CONTAINER, Arg::None),
    other(VFIO_IOMMU_DISABLE, "VFIO_IOMMU_DISABLE", VFIO_CONTAINER, Arg::None),
    st_x(
        VFIO_IOMMU_DIRTY_PAGES,
        "VFIO_IOMMU_DIRTY_PAGES",
        VFIO_CONTAINER,
        size_of::<VfioIommuType1DirtyBitmap>(),
        fields!(VfioIommuType1DirtyBitmap { argsz: u32 = Dec, flags: u32 = Flags(DIRTY_FLAGS) }),
        dirty_pages_get,
    ),
];

pub(crate) const GROUP: &[Cmd] = &[
    st(
        VFIO_GROUP_GET_STATUS,
        "VFIO_GROUP_GET_STATUS",
        VFIO_GROUP,
        size_of::<VfioGroupStatus>(),
        fields!(VfioGroupStatus { argsz: u32 = Dec, flags: u32 = Out(&Flags(GROUP_FLAGS)) }),
    ),
    other(VFIO_GROUP_SET_CONTAINER, "VFIO_GROUP_SET_CONTAINER", VFIO_GROUP, Arg::IntPtr),
    other(VFIO_GROUP_UNSET_CONTAINER, "VFIO_GROUP_UNSET_CONTAINER", VFIO_GROUP, Arg::None),
    other(VFIO_GROUP_GET_DEVICE_FD, "VFIO_GROUP_GET_DEVICE_FD", VFIO_GROUP, Arg::Str),
];

const DEV: u32 = VFIO_DEVICE | DEVICE;

pub(crate) const DEVICE_CMDS: &[Cmd] = &[
    st_x(
        VFIO_DEVICE_GET_INFO,
        "VFIO_DEVICE_GET_INFO",
        DEV,
        size_of::<VfioDeviceInfo>(),
        fields!(VfioDeviceInfo {
            argsz: u32 = Dec,
            flags: u32 = Out(&Flags(DEVICE_FLAGS)),
            num_regions: u32 = Out(&Dec),
            num_irqs: u32 = Out(&Dec),
            cap_offset: u32 = Out(&Dec),
            pad: u32 = Rsv,
        }),
        device_info_caps,
    ),
    st_x(
        VFIO_DEVICE_GET_REGION_INFO,
        "VFIO_DEVICE_GET_REGION_INFO",
        DEV,
        size_of::<VfioRegionInfo>(),
        fields!(VfioRegionInfo {
            argsz: u32 = Dec,
            flags: u32 = Out(&Flags(REGION_FLAGS)),
            index: u32 = Enum(REGIONS),
            cap_offset: u32 = Out(&Dec),
            size: u64 = Out(&Hex),
            offset: u64 = Out(&Hex),
        }),
        region_info_caps,
    ),
    st(
        VFIO_DEVICE_GET_IRQ_INFO,
        "VFIO_DEVICE_GET_IRQ_INFO",
        DEV,
        size_of::<VfioIrqInfo>(),
        fields!(VfioIrqInfo {
            argsz: u32 = Dec,
            flags: u32 = Out(&Flags(IRQ_INFO_FLAGS)),
            index: u32 = Enum(IRQS),
            count: u32 = Out(&Dec),
        }),
    ),
    st_x(
        VFIO_DEVICE_SET_IRQS,
        "VFIO_DEVICE_SET_IRQS",
        DEV,
        size_of::<VfioIrqSet>(),
        fields!(VfioIrqSet {
            argsz: u32 = Dec,
            flags: u32 = Flags(IRQ_SET_FLAGS),
            index: u32 = Enum(IRQS),
            start: u32 = Dec,
            count: u32 = Dec,
        }),
        irq_set_data,
    ),
    other(VFIO_DEVICE_RESET, "VFIO_DEVICE_RESET", DEV, Arg::None),
    st_x(
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
        "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
        DEV,
        size_of::<VfioPciHotResetInfo>(),
        fields!(VfioPciHotResetInfo {
            argsz: u32 = Dec,
            flags: u32 = Out(&Flags(HOT_RESET_FLAGS)),
            count: u32 = Out(&Dec),
        }),
        hot_reset_devices,
    ),
    st_x(
        VFIO_DEVICE_PCI_HOT_RESET,
        "VFIO_DEVICE_PCI_HOT_RESET",
        DEV,
        size_of::<VfioPciHotReset>(),
        fields!(VfioPciHotReset { argsz: u32 = Dec, flags: u32 = Hex, count: u32 = Dec }),
        hot_reset_fds,
    ),
    st(
        VFIO_DEVICE_IOEVENTFD,
        "VFIO_DEVICE_IOEVENTFD",
        DEV,
        size_of::<VfioDeviceIoeventfd>(),
        fields!(VfioDeviceIoeventfd {
            argsz: u32 = Dec,
            flags: u32 = Flags(IOEVENTFD_FLAGS),
            offset: u64 = With(region_offset),
            data: u64 = Hex,
            fd: i32 = Signed,
            reserved: u32 = Rsv,
        }),
    ),
    st_x(
        VFIO_DEVICE_FEATURE,
        "VFIO_DEVICE_FEATURE",
        DEV,
        size_of::<VfioDeviceFeature>(),
        fields!(VfioDeviceFeature { argsz: u32 = Dec, flags: u32 = With(feature_flags) }),
        feature_data,
    ),
    st(
        VFIO_DEVICE_BIND_IOMMUFD,
        "VFIO_DEVICE_BIND_IOMMUFD",
        DEV,
        size_of::<VfioDeviceBindIommufd>(),
        fields!(VfioDeviceBindIommufd {
            argsz: u32 = Dec,
            flags: u32 = Flags(BIND_FLAGS),
            iommufd: i32 = Signed,
            out_devid: u32 = Out(&Dec),
            token_uuid_ptr: u64 = Custom(token),
        }),
    ),
    st(
        VFIO_DEVICE_ATTACH_IOMMUFD_PT,
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        DEV,
        size_of::<VfioDeviceAttachIommufdPt>(),
        fields!(VfioDeviceAttachIommufdPt {
            argsz: u32 = Dec,
            flags: u32 = Flags(PASID_FLAGS),
            pt_id: u32 = Dec,
            pasid: u32 = Custom(pasid),
        }),
    ),
    st(
        VFIO_DEVICE_DETACH_IOMMUFD_PT,
        "VFIO_DEVICE_DETACH_IOMMUFD_PT",
        DEV,
        size_of::<VfioDeviceDetachIommufdPt>(),
        fields!(VfioDeviceDetachIommufdPt {
            argsz: u32 = Dec,
            flags: u32 = Flags(PASID_FLAGS),
            pasid: u32 = Custom(pasid)
        }),
    ),
];

pub(crate) const MIGRATION_CMDS: &[Cmd] = &[st(
    VFIO_MIG_GET_PRECOPY_INFO,
    "VFIO_MIG_GET_PRECOPY_INFO",
    MIGRATION,
    size_of::<VfioPrecopyInfo>(),
    fields!(VfioPrecopyInfo {
        argsz: u32 = Dec,
        flags: u32 = Out(&Flags(PRECOPY_FLAGS)),
        initial_bytes: u64 = Out(&Dec),
        dirty_bytes: u64 = Out(&Dec),
    }),
)];

/// A device file offset as vfio-pci lays regions out: `CONFIG+0x4`.
pub(crate) fn region_offset(o: &mut Out<'_>, off: u64) {
    let index = vfio_pci_offset_to_index(off);
    match REGIONS.iter().find(|(i, _)| *i == index) {
        Some((_, name)) => {
            o.s(name);
            o.s("+");
            o.hex(off & VFIO_PCI_OFFSET_MASK);
        }
        None => o.hex(off),
    }
}

/// `pasid` means something only with the PASID flag.
fn pasid(c: &mut Call<'_, '_>, f: &F) {
    if c.phase == Phase::Enter && c.e(4, 4) as u32 & VFIO_DEVICE_ATTACH_PASID != 0 {
        c.key(f.name);
        c.o.dec(f.get(c.entry));
    }
}

/// `token_uuid_ptr`, with the flag that makes it read.
fn token(c: &mut Call<'_, '_>, f: &F) {
    if c.phase == Phase::Enter && c.e(4, 4) as u32 & VFIO_DEVICE_BIND_FLAG_TOKEN != 0 {
        c.key(f.name);
        c.o.bytes(f.get(c.entry), 16);
    }
}

/// `VFIO_DEVICE_FEATURE`'s flags: what to do and the feature.
fn feature_flags(o: &mut Out<'_>, v: u64) {
    let ops = v & !(VFIO_DEVICE_FEATURE_MASK as u64);
    if ops != 0 {
        o.flags(ops, FEATURE_OPS);
        o.s("|");
    }
    o.enm(v & VFIO_DEVICE_FEATURE_MASK as u64, FEATURES);
}

/// Walk a capability chain in the reply at `arg` (`argsz` bytes), from
/// `first`: each header, and what `each` says of it.
fn cap_chain(c: &mut Call<'_, '_>, first: u64, each: fn(&mut Out<'_>, u16, u64)) {
    let argsz = c.x(0, 4).max(c.e(0, 4));
    let arg = c.arg;
    let mut off = first;
    c.key("caps");
    let o = &mut *c.o;
    o.s("[");
    for i in 0..16 {
        if off == 0 || off.saturating_add(size_of::<VfioInfoCapHeader>() as u64) > argsz {
            break;
        }
        let mut h = [0u8; 8];
        if !o.mem.read(arg + off, &mut h) {
            break;
        }
        if i > 0 {
            o.s(", ");
        }
        let (id, version, next) = (le(&h, 0, 2) as u16, le(&h, 2, 2), le(&h, 4, 4));
        o.reset_sep();
        o.obj(|o| {
            o.key("version");
            o.dec(version);
            each(o, id, arg + off);
        });
        if next <= off {
            break;
        }
        off = next;
    }
    o.s("]");
}

/// A struct of a capability at `at` (its header included).
fn cap_struct(o: &mut Out<'_>, at: u64, size: usize, fields: &[F]) {
    let mut b = [0u8; 64];
    if o.mem.read(at, &mut b[..size]) {
        for f in fields {
            o.key(f.name);
            crate::out::value(o, &f.fmt, f, &b[..size]);
        }
    }
}

fn iommu_info_caps(c: &mut Call<'_, '_>) {
    if !c.out_ok() || c.x(4, 4) as u32 & VFIO_IOMMU_INFO_CAPS == 0 {
        return;
    }
    cap_chain(c, c.x(16, 4), |o, id, at| match id {
        VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
            o.key("id");
            o.s("IOVA_RANGE");
            let mut b = [0u8; 4];
            if o.mem.read(at + 8, &mut b) {
                let n = u32::from_le_bytes(b) as u64;
                o.key("nr_iovas");
                o.dec(n);
                o.key("iova_ranges");
                o.array::<VfioIovaRange>(at + size_of::<VfioIommuType1InfoCapIovaRange>() as u64, n, 16, |o, r| {
                    o.obj(|o| {
                        o.key("start");
                        o.hex(r.start);
                        o.key("end");
                        o.hex(r.end);
                    })
                });
            }
        }
        VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION => {
            o.key("id");
            o.s("MIGRATION");
            cap_struct(
                o,
                at,
                size_of::<VfioIommuType1InfoCapMigration>(),
                &[
                    F { name: "flags", off: 8, len: 4, fmt: Hex },
                    F { name: "pgsize_bitmap", off: 16, len: 8, fmt: Hex },
                    F { name: "max_dirty_bitmap_size", off: 24, len: 8, fmt: Hex },
                ],
            );
        }
        VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
            o.key("id");
            o.s("DMA_AVAIL");
            cap_struct(o, at, 12, &[F { name: "avail", off: 8, len: 4, fmt: Dec }]);
        }
        _ => {
            o.key("id");
            o.dec(id as u64);
        }
    });
}

fn device_info_caps(c: &mut Call<'_, '_>) {
    if !c.out_ok() || c.x(4, 4) as u32 & VFIO_DEVICE_FLAGS_CAPS == 0 {
        return;
    }
    cap_chain(c, c.x(16, 4), |o, id, _| {
        o.key("id");
        o.enm(id as u64, &[(VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP as u64, "PCI_ATOMIC_COMP")]);
    });
}

fn region_info_caps(c: &mut Call<'_, '_>) {
    if !c.out_ok() || c.x(4, 4) as u32 & VFIO_REGION_INFO_FLAG_CAPS == 0 {
        return;
    }
    cap_chain(c, c.x(12, 4), |o, id, at| match id {
        VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
            o.key("id");
            o.s("SPARSE_MMAP");
            let mut b = [0u8; 4];
            if o.mem.read(at + 8, &mut b) {
                let n = u32::from_le_bytes(b) as u64;
                o.key("areas");
                let first = at + size_of::<VfioRegionInfoCapSparseMmap>() as u64;
                o.array::<VfioRegionSparseMmapArea>(first, n, 16, |o, a| {
                    o.obj(|o| {
                        o.key("offset");
                        o.hex(a.offset);
                        o.key("size");
                        o.hex(a.size);
                    })
                });
            }
        }
        VFIO_REGION_INFO_CAP_TYPE => {
            o.key("id");
            o.s("TYPE");
            cap_struct(
                o,
                at,
                16,
                &[F { name: "type", off: 8, len: 4, fmt: Hex }, F { name: "subtype", off: 12, len: 4, fmt: Hex }],
            );
        }
        VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => {
            o.key("id");
            o.s("MSIX_MAPPABLE");
        }
        _ => {
            o.key("id");
            o.dec(id as u64);
        }
    });
}

/// The `data[]` of SET_IRQS: a bool or an eventfd per IRQ.
fn irq_set_data(c: &mut Call<'_, '_>) {
    if c.phase != Phase::Enter {
        return;
    }
    let (flags, count) = (c.e(4, 4) as u32, c.e(16, 4));
    let at = c.arg + size_of::<VfioIrqSet>() as u64;
    match flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
        VFIO_IRQ_SET_DATA_BOOL => {
            c.key("data");
            c.o.array::<u8>(at, count, 1, |o, b| o.dec(*b as u64));
        }
        VFIO_IRQ_SET_DATA_EVENTFD => {
            c.key("data");
            c.o.array::<i32>(at, count, 4, |o, fd| o.signed(*fd as i64));
        }
        _ => {}
    }
}

/// The `devices[]` the kernel fills for GET_PCI_HOT_RESET_INFO.
fn hot_reset_devices(c: &mut Call<'_, '_>) {
    if !c.out_ok() {
        return;
    }
    let room = (c.e(0, 4) as usize).saturating_sub(size_of::<VfioPciHotResetInfo>()) / 8;
    let n = c.x(8, 4).min(room as u64);
    let dev_id = c.x(4, 4) as u32 & VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0;
    c.key("devices");
    c.o.array::<[u8; 8]>(c.arg + size_of::<VfioPciHotResetInfo>() as u64, n, 8, |o, d| {
        o.obj(|o| {
            o.key(if dev_id { "devid" } else { "group_id" });
            o.signed(le(d, 0, 4) as u32 as i32 as i64);
            o.key("segment");
            o.hex(le(d, 4, 2));
            o.key("bus");
            o.hex(d[6] as u64);
            o.key("devfn");
            o.fmt(format_args!("PCI_DEVFN({}, {})", d[7] >> 3, d[7] & 7));
        })
    });
}

/// The `group_fds[]` of PCI_HOT_RESET.
fn hot_reset_fds(c: &mut Call<'_, '_>) {
    if c.phase == Phase::Enter && c.e(8, 4) > 0 {
        c.key("group_fds");
        let n = c.e(8, 4);
        c.o.array::<i32>(c.arg + size_of::<VfioPciHotReset>() as u64, n, 4, |o, fd| o.signed(*fd as i64));
    }
}

/// The `struct vfio_bitmap` after UNMAP_DMA with GET_DIRTY_BITMAP.
fn unmap_bitmap(c: &mut Call<'_, '_>) {
    if c.e(4, 4) as u32 & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP == 0 {
        return;
    }
    let at = c.arg + size_of::<VfioIommuType1DmaUnmap>() as u64;
    let (iova, size) = (c.e(8, 8), c.e(16, 8));
    bitmap(c, at, iova, size);
}

/// `struct vfio_iommu_type1_dirty_bitmap_get` of DIRTY_PAGES GET_BITMAP.
fn dirty_pages_get(c: &mut Call<'_, '_>) {
    if c.e(4, 4) as u32 & VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP == 0 {
        return;
    }
    let at = c.arg + size_of::<VfioIommuType1DirtyBitmap>() as u64;
    let mut b = [0u8; 16];
    if !c.o.mem.read(at, &mut b) {
        return;
    }
    let (iova, size) = (le(&b, 0, 8), le(&b, 8, 8));
    if c.phase == Phase::Enter {
        c.key("iova");
        c.o.hex(iova);
        c.key("size");
        c.o.hex(size);
    }
    bitmap(c, at + 16, iova, size);
}

/// A `struct vfio_bitmap` at `at` for `[iova, iova + size)`: its fields
/// before the call, the dirty IOVAs after.
fn bitmap(c: &mut Call<'_, '_>, at: u64, iova: u64, size: u64) {
    let mut b = [0u8; 24];
    if !c.o.mem.read(at, &mut b) {
        return;
    }
    let (pgsize, data) = (le(&b, 0, 8), le(&b, 16, 8));
    match c.phase {
        Phase::Enter => {
            c.key("bitmap");
            let fields = fields!(VfioBitmap { pgsize: u64 = Hex, size: u64 = Hex, data: u64 = Ptr });
            crate::out::all_fields(c.o, &b, fields);
        }
        Phase::Exit if c.ok && pgsize != 0 => {
            c.key("dirty");
            crate::payload::dirty_iovas(c.o, data, iova, size.div_ceil(pgsize), pgsize);
        }
        Phase::Exit => {}
    }
}

/// The feature's data after the header, by feature and direction.
fn feature_data(c: &mut Call<'_, '_>) {
    let flags = c.e(4, 4) as u32;
    if flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
        return;
    }
    let at = c.arg + size_of::<VfioDeviceFeature>() as u64;
    let data_len = (c.e(0, 4) as usize).saturating_sub(size_of::<VfioDeviceFeature>());
    let get = flags & VFIO_DEVICE_FEATURE_GET != 0;
    let set = flags & VFIO_DEVICE_FEATURE_SET != 0;
    const STATE: &[F] = fields!(VfioDeviceFeatureMigState { device_state: u32 = Enum(MIG_STATES) });
    const DATA_FD: &[F] = &[F { name: "data_fd", off: 4, len: 4, fmt: Signed }];
    // What is shown before the call and after it.
    let (before, after): (&[F], &[F]) = match flags & VFIO_DEVICE_FEATURE_MASK {
        VFIO_DEVICE_FEATURE_MIGRATION if get => {
            (&[], fields!(VfioDeviceFeatureMigration { flags: u64 = Flags(MIGRATION_FLAGS) }))
        }
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE if set => (STATE, DATA_FD),
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE if get => (&[], STATE),
        VFIO_DEVICE_FEATURE_MIG_DATA_SIZE if get => {
            (&[], fields!(VfioDeviceFeatureMigDataSize { stop_copy_length: u64 = Dec }))
        }
        VFIO_DEVICE_FEATURE_DMA_BUF => {
            if c.phase == Phase::Enter {
                dma_buf(c, at, data_len);
            }
            return;
        }
        _ => {
            if c.phase == Phase::Enter && data_len > 0 && set {
                c.key("data");
                c.o.bytes(at, data_len);
            }
            return;
        }
    };
    let fields = match c.phase {
        Phase::Enter => before,
        Phase::Exit if c.out_ok() => after,
        Phase::Exit => &[],
    };
    if fields.is_empty() || data_len == 0 {
        return;
    }
    let mut b = [0u8; 16];
    let n = data_len.min(b.len());
    if !c.o.mem.read(at, &mut b[..n]) {
        return;
    }
    c.key("data");
    crate::out::all_fields(c.o, &b[..n], fields);
}

fn dma_buf(c: &mut Call<'_, '_>, at: u64, len: usize) {
    let mut b = [0u8; 16];
    if len < b.len() || !c.o.mem.read(at, &mut b) {
        return;
    }
    c.key("data");
    let n = le(&b, 12, 4);
    let o = &mut *c.o;
    o.obj(|o| {
        o.key("region_index");
        o.enm(le(&b, 0, 4), REGIONS);
        o.key("open_flags");
        crate::io::open_flags(o, le(&b, 4, 4) as i32);
        o.key("flags");
        o.hex(le(&b, 8, 4));
        o.key("nr_ranges");
        o.dec(n);
        o.key("dma_ranges");
        o.array::<VfioRegionDmaRange>(at + 16, n, 16, |o, r| {
            o.obj(|o| {
                o.key("offset");
                o.hex(r.offset);
                o.key("length");
                o.hex(r.length);
            })
        });
    });
}
