//! Whole calls decoded against a fake memory, the "kernel" of each test
//! writing its answer between entry and exit as the engine would.

use std::cell::RefCell;

use uiommufd_abi::test_cmd::*;
use uiommufd_abi::vfio::*;
use uiommufd_abi::*;
use zerocopy::IntoBytes;

use crate::io::{Buf, Rw};
use crate::out::{Fmt, F};
use crate::*;

/// Memory of the bytes put there, writable between entry and exit.
#[derive(Default)]
struct Fake(RefCell<std::collections::BTreeMap<u64, u8>>);

impl Fake {
    fn put(&self, addr: u64, bytes: &[u8]) -> u64 {
        let mut m = self.0.borrow_mut();
        for (i, b) in bytes.iter().enumerate() {
            m.insert(addr + i as u64, *b);
        }
        addr
    }
}

impl Mem for Fake {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let m = self.0.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            match m.get(&(addr + i as u64)) {
                Some(v) => *b = *v,
                None => return false,
            }
        }
        true
    }
}

const ARG: u64 = 0x1000;

/// `ioctl(3<label>, ...)` of `request` with `arg`, `kernel` running in
/// between.
fn ioctl_with(
    mem: &Fake,
    opts: Options,
    kind: FileKind,
    request: u32,
    arg: u64,
    kernel: impl FnOnce(&Fake) -> Result<i64, (Errno, &'static str)>,
) -> String {
    let mut s = String::new();
    let mut o = Out::new(&mut s, mem, &opts);
    o.fmt(format_args!("ioctl({}, ", Fd(3, "/dev/iommu")));
    let call = Ioctl::enter(kind, request as u64, arg, &mut o);
    let r = kernel(mem);
    call.exit(&mut o, r.map_err(|e| e.0));
    o.s(")");
    ret(&mut o, r);
    s
}

fn ioctl(
    mem: &Fake,
    kind: FileKind,
    request: u32,
    kernel: impl FnOnce(&Fake) -> Result<i64, (Errno, &'static str)>,
) -> String {
    ioctl_with(mem, Options::default(), kind, request, ARG, kernel)
}

const IOMMUFD: FileKind = FileKind::Iommufd;

#[test]
fn ioas_alloc_map_unmap_destroy() {
    let m = Fake::default();
    m.put(ARG, IommuIoasAlloc { size: 12, flags: 0, out_ioas_id: 0 }.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_IOAS_ALLOC, |m| {
        m.put(ARG + 8, &3u32.to_le_bytes());
        Ok(0)
    });
    assert_eq!(line, "ioctl(3</dev/iommu>, IOMMU_IOAS_ALLOC, {size=12, flags=0} => {out_ioas_id=3}) = 0");

    // The brief's example: a fixed IOVA, nothing written back.
    let map = IommuIoasMap {
        size: 40,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
        ioas_id: 2,
        user_va: 0x7f3a_0000_0000,
        length: 0x10000,
        iova: 0x2000,
        ..Default::default()
    };
    m.put(ARG, map.as_bytes());
    assert_eq!(
        ioctl(&m, IOMMUFD, IOMMU_IOAS_MAP, |_| Ok(0)),
        "ioctl(3</dev/iommu>, IOMMU_IOAS_MAP, {size=40, flags=FIXED_IOVA|WRITEABLE|READABLE, ioas_id=2, \
         user_va=0x7f3a00000000, length=0x10000, iova=0x2000}) = 0"
    );
    // The kernel picks the IOVA: it shows after the call.
    m.put(ARG, IommuIoasMap { flags: IOMMU_IOAS_MAP_READABLE, iova: 0, ..map }.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_IOAS_MAP, |m| {
        m.put(ARG + 32, &0x100_0000u64.to_le_bytes());
        Ok(0)
    });
    assert!(line.ends_with("length=0x10000, iova=0} => {iova=0x1000000}) = 0"), "{line}");
    // Redacted addresses for diffs.
    let redacted =
        ioctl_with(&m, Options { redact: true, ..Options::default() }, IOMMUFD, IOMMU_IOAS_MAP, ARG, |_| Ok(0));
    assert!(redacted.contains("user_va=<ptr>,"), "{redacted}");

    // A reserved field that is set is shown; an unmap's length comes back.
    m.put(ARG, IommuIoasUnmap { size: 24, ioas_id: 2, iova: 0, length: u64::MAX }.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_IOAS_UNMAP, |m| {
        m.put(ARG + 16, &0x10000u64.to_le_bytes());
        Ok(0)
    });
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, IOMMU_IOAS_UNMAP, {size=24, ioas_id=2, iova=0, length=0xffffffffffffffff} => \
         {length=0x10000}) = 0"
    );

    // A failure: the errno's name, its text and the engine's reason.
    m.put(ARG, IommuDestroy { size: 8, id: 9 }.as_bytes());
    assert_eq!(
        ioctl(&m, IOMMUFD, IOMMU_DESTROY, |_| Err((Errno::ENOENT, "no object with this ID"))),
        "ioctl(3</dev/iommu>, IOMMU_DESTROY, {size=8, id=9}) = -1 ENOENT (No such file or directory) \
         [no object with this ID]"
    );
}

#[test]
fn unreadable_short_and_unknown() {
    let m = Fake::default();
    // The struct cannot be read: its address, as strace prints it.
    let line = ioctl_with(&m, Options::default(), IOMMUFD, IOMMU_IOAS_ALLOC, 0, |_| Err((Errno::EFAULT, "")));
    assert_eq!(line, "ioctl(3</dev/iommu>, IOMMU_IOAS_ALLOC, NULL) = -1 EFAULT (Bad address)");
    // A short struct: only the fields it has.
    m.put(ARG, &IommuHwptAlloc { size: 20, flags: 0, dev_id: 1, pt_id: 2, ..Default::default() }.as_bytes()[..20]);
    let line = ioctl(&m, IOMMUFD, IOMMU_HWPT_ALLOC, |m| {
        m.put(ARG + 16, &7u32.to_le_bytes());
        Ok(0)
    });
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, IOMMU_HWPT_ALLOC, {size=20, flags=0, dev_id=1, pt_id=2} => {out_hwpt_id=7}) = 0"
    );
    // An unknown request.
    let line = ioctl(&m, IOMMUFD, uiommufd_abi::ioctl::io(IOMMUFD_TYPE, 0x7f), |_| Err((Errno::ENOTTY, "unknown")));
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, _IOC(_IOC_NONE, 0x3b, 0x7f, 0), 0x1000) = -1 ENOTTY (Inappropriate ioctl for device) [unknown]"
    );
    // VFIO numbers mean what the file says.
    assert_eq!(
        ioctl_name(FileKind::VfioDevice, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO as u64),
        Some("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO")
    );
    assert_eq!(ioctl_name(FileKind::VfioContainer, VFIO_IOMMU_GET_INFO as u64), Some("VFIO_IOMMU_GET_INFO"));
    assert_eq!(ioctl_name(FileKind::Iommufd, VFIO_DEVICE_BIND_IOMMUFD as u64), None);
}

#[test]
fn iova_ranges_arrays_abbreviate() {
    let m = Fake::default();
    let ranges: Vec<u8> = (0..4u64).flat_map(|i| [i << 24, (i << 24) + 0xfff]).flat_map(u64::to_le_bytes).collect();
    let at = m.put(0x8000, &ranges);
    m.put(ARG, IommuIoasAllowIovas { size: 24, ioas_id: 1, num_iovas: 4, __reserved: 0, allowed_iovas: at }.as_bytes());
    let opts = Options { strsize: 2, redact: false };
    let line = ioctl_with(&m, opts, IOMMUFD, IOMMU_IOAS_ALLOW_IOVAS, ARG, |_| Ok(0));
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, IOMMU_IOAS_ALLOW_IOVAS, {size=24, ioas_id=1, num_iovas=4, \
         allowed_iovas=[{start=0, last=0xfff}, {start=0x1000000, last=0x1000fff}, ...]}) = 0"
    );
    // IOVA_RANGES with room for one: EMSGSIZE and the count the kernel needs.
    m.put(
        ARG,
        IommuIoasIovaRanges { size: 32, ioas_id: 1, num_iovas: 1, allowed_iovas: 0x9000, ..Default::default() }
            .as_bytes(),
    );
    m.put(0x9000, &[0u8; 16]);
    let line = ioctl(&m, IOMMUFD, IOMMU_IOAS_IOVA_RANGES, |m| {
        m.put(ARG + 8, &2u32.to_le_bytes());
        Err((Errno::EMSGSIZE, ""))
    });
    assert!(line.ends_with("allowed_iovas=0x9000} => {num_iovas=2}) = -1 EMSGSIZE (Message too long)"), "{line}");
    m.put(ARG + 8, &1u32.to_le_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_IOAS_IOVA_RANGES, |m| {
        m.put(ARG + 24, &4096u64.to_le_bytes());
        m.put(0x9000, &ranges[16..32]);
        Ok(0)
    });
    assert!(
        line.ends_with("num_iovas=1, allowed_iovas=0x9000} => {allowed_iovas=[{start=0x1000000, last=0x1000fff}], out_iova_alignment=0x1000}) = 0"),
        "{line}"
    );
}

#[test]
fn hw_info_decoded_per_type() {
    let m = Fake::default();
    let info = IommuHwInfo { size: 40, dev_id: 1, data_len: 64, data_uptr: 0x9000, ..Default::default() };
    m.put(ARG, info.as_bytes());
    m.put(0x9000, &[0u8; 64]);
    // VT-d: the raw registers with their fields.
    let vtd = IommuHwInfoVtd { cap_reg: 0xd2008c22260286, ecap_reg: 0xf42, ..Default::default() };
    let line = ioctl(&m, IOMMUFD, IOMMU_GET_HW_INFO, |m| {
        m.put(0x9000, vtd.as_bytes());
        m.put(ARG + 12, &24u32.to_le_bytes());
        m.put(ARG + 24, &IOMMU_HW_INFO_TYPE_INTEL_VTD.to_le_bytes());
        m.put(ARG + 28, &[20]);
        m.put(ARG + 32, &u64::from(IOMMU_HW_CAP_DIRTY_TRACKING).to_le_bytes());
        Ok(0)
    });
    assert!(line.starts_with("ioctl(3</dev/iommu>, IOMMU_GET_HW_INFO, {size=40, flags=0, dev_id=1, data_len=64, data_uptr=0x9000} => {data_len=24, data={flags=0, cap_reg=0xd2008c22260286 /* "), "{line}");
    assert!(line.contains(" SAGAW=0x2 MGAW=0x26 "), "{line}");
    assert!(line.contains("ecap_reg=0xf42 /* "), "{line}");
    assert!(
        line.ends_with(", out_data_type=INTEL_VTD, out_max_pasid_log2=20, out_capabilities=DIRTY_TRACKING}) = 0"),
        "{line}"
    );
    // The selftest's.
    m.put(ARG, info.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_GET_HW_INFO, |m| {
        m.put(0x9000, IommuTestHwInfo { flags: 0, test_reg: IOMMU_HW_INFO_SELFTEST_REGVAL }.as_bytes());
        m.put(ARG + 12, &8u32.to_le_bytes());
        m.put(ARG + 24, &IOMMU_HW_INFO_TYPE_SELFTEST.to_le_bytes());
        Ok(0)
    });
    assert!(line.contains("=> {data_len=8, data={flags=0, test_reg=0xdeadbeef}, out_data_type=SELFTEST, "), "{line}");
    // SMMUv3: six ID registers.
    m.put(ARG, info.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_GET_HW_INFO, |m| {
        let s = IommuHwInfoArmSmmuv3 { idr: [1, 0, 0, 0, 0, 5], iidr: 0x43b, aidr: 2, ..Default::default() };
        m.put(0x9000, s.as_bytes());
        m.put(ARG + 12, &40u32.to_le_bytes());
        m.put(ARG + 24, &IOMMU_HW_INFO_TYPE_ARM_SMMUV3.to_le_bytes());
        Ok(0)
    });
    assert!(line.contains("data={flags=0, idr=[0x1 /* S2P */, 0, 0, 0, 0, 0x5 /* "), "{line}");
    assert!(line.contains("out_data_type=ARM_SMMUV3"), "{line}");
    // AMD: EFR by the fields Linux names.
    m.put(ARG, info.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_GET_HW_INFO, |m| {
        m.put(0x9000, IommuHwInfoAmd { efr: (1 << 4) | (1 << 7) | (0xf << 32), efr2: 0 }.as_bytes());
        m.put(ARG + 12, &16u32.to_le_bytes());
        m.put(ARG + 24, &IOMMU_HW_INFO_TYPE_AMD.to_le_bytes());
        Ok(0)
    });
    assert!(line.contains("data={efr=0xf00000090 /* GTSUP GASUP PASMAX=0xf */, efr2=0}"), "{line}");
}

#[test]
fn hwpt_alloc_and_invalidate_data() {
    let m = Fake::default();
    let data = m.put(0x9000, IommuHwptSelftest { iotlb: IOMMU_TEST_IOTLB_DEFAULT, pagetable_type: 0 }.as_bytes());
    let alloc = IommuHwptAlloc {
        size: 48,
        flags: IOMMU_HWPT_FAULT_ID_VALID,
        dev_id: 1,
        pt_id: 2,
        data_type: IOMMU_HWPT_DATA_SELFTEST,
        data_len: 8,
        data_uptr: data,
        fault_id: 6,
        ..Default::default()
    };
    m.put(ARG, alloc.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_HWPT_ALLOC, |m| {
        m.put(ARG + 16, &8u32.to_le_bytes());
        Ok(0)
    });
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, IOMMU_HWPT_ALLOC, {size=48, flags=FAULT_ID_VALID, dev_id=1, pt_id=2, data_type=SELFTEST, \
         data_len=8, data_uptr={iotlb=0xbadbeef, pagetable_type=DEFAULT}, fault_id=6} => {out_hwpt_id=8}) = 0"
    );
    // A guest STE with its fields.
    let ste = m.put(0xa000, IommuHwptArmSmmuv3 { ste: [0xb | 0x1234_5000, 2] }.as_bytes());
    m.put(
        ARG,
        IommuHwptAlloc { flags: 0, data_type: IOMMU_HWPT_DATA_ARM_SMMUV3, data_len: 16, data_uptr: ste, ..alloc }
            .as_bytes(),
    );
    let line = ioctl(&m, IOMMUFD, IOMMU_HWPT_ALLOC, |_| Ok(0));
    assert!(line.contains("data_uptr={ste=[0x1234500b, 0x2] /* V=1 CONFIG=S1_TRANS S1FMT=0 S1CONTEXTPTR=0x12345000 S1CDMAX=0 S1DSS=2 EATS=0 */}"), "{line}");

    // VT-d invalidation entries, abbreviated, and how many were done.
    let entries: Vec<u8> = (0..3u64)
        .flat_map(|i| {
            IommuHwptVtdS1Invalidate { addr: i << 12, npages: 1, flags: IOMMU_VTD_INV_FLAGS_LEAF, __reserved: 0 }
                .as_bytes()
                .to_vec()
        })
        .collect();
    let at = m.put(0xb000, &entries);
    let inv = IommuHwptInvalidate {
        size: 32,
        hwpt_id: 9,
        data_uptr: at,
        data_type: 0,
        entry_len: 24,
        entry_num: 3,
        __reserved: 0,
    };
    m.put(ARG, inv.as_bytes());
    let opts = Options { strsize: 2, redact: false };
    let line = ioctl_with(&m, opts, IOMMUFD, IOMMU_HWPT_INVALIDATE, ARG, |m| {
        m.put(ARG + 24, &1u32.to_le_bytes());
        Err((Errno::EINVAL, "bad entry"))
    });
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, IOMMU_HWPT_INVALIDATE, {size=32, hwpt_id=9, data_uptr=[{addr=0, npages=1, flags=LEAF}, \
         {addr=0x1000, npages=1, flags=LEAF}, ...], data_type=VTD_S1, entry_len=24, entry_num=3} => {entry_num=1}) \
         = -1 EINVAL (Invalid argument) [bad entry]"
    );
    // SMMUv3 commands by opcode.
    let cmds: Vec<u8> =
        [[0x12u64 | (5 << 48), 0x4000 | 1], [0x46, 0]].iter().flat_map(|c| c.as_bytes().to_vec()).collect();
    let at = m.put(0xc000, &cmds);
    m.put(ARG, IommuHwptInvalidate { data_uptr: at, data_type: 1, entry_len: 16, entry_num: 2, ..inv }.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_HWPT_INVALIDATE, |_| Ok(0));
    assert!(
        line.contains("data_uptr=[{opcode=CMD_TLBI_NH_VA, vmid=0, asid=5, addr=0x4000, leaf=1}, {opcode=CMD_SYNC}], data_type=ARM_SMMUV3"),
        "{line}"
    );
}

#[test]
fn selftest_ops() {
    let m = Fake::default();
    let mut cmd = IommuTestCmd::new(IOMMU_TEST_OP_MOCK_DOMAIN);
    cmd.id = 2;
    m.put(ARG, cmd.as_bytes());
    let line = ioctl(&m, IOMMUFD, IOMMU_TEST_CMD, |m| {
        m.put(ARG + 16, TestMockDomain { out_stdev_id: 3, out_hwpt_id: 4, out_idev_id: 5 }.as_bytes());
        Ok(0)
    });
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, IOMMU_TEST_CMD, {size=72, op=MOCK_DOMAIN, id=2} => {out_stdev_id=3, out_hwpt_id=4, out_idev_id=5}) = 0"
    );
    let mut cmd = IommuTestCmd::new(IOMMU_TEST_OP_ACCESS_RW);
    cmd.id = 7;
    cmd.set_payload(&TestAccessRw { iova: 0x1000, length: 16, uptr: 0x5000, flags: MOCK_ACCESS_RW_WRITE, __pad: 0 });
    m.put(ARG, cmd.as_bytes());
    assert_eq!(
        ioctl(&m, IOMMUFD, IOMMU_TEST_CMD, |_| Ok(0)),
        "ioctl(3</dev/iommu>, IOMMU_TEST_CMD, {size=72, op=ACCESS_RW, id=7, iova=0x1000, length=0x10, uptr=0x5000, flags=WRITE}) = 0"
    );
}

#[test]
fn vfio_requests() {
    let m = Fake::default();
    let c = FileKind::VfioContainer;
    assert_eq!(
        ioctl_with(&m, Options::default(), c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU as u64, |_| Ok(1)),
        "ioctl(3</dev/iommu>, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) = 1"
    );
    assert_eq!(
        ioctl_with(&m, Options::default(), c, VFIO_GET_API_VERSION, 0, |_| Ok(0)),
        "ioctl(3</dev/iommu>, VFIO_GET_API_VERSION) = 0"
    );
    m.put(0x2000, b"0000:00:04.0\0");
    let g = FileKind::VfioGroup;
    assert_eq!(
        ioctl_with(&m, Options::default(), g, VFIO_GROUP_GET_DEVICE_FD, 0x2000, |_| Ok(7)),
        "ioctl(3</dev/iommu>, VFIO_GROUP_GET_DEVICE_FD, \"0000:00:04.0\") = 7"
    );
    m.put(0x3000, &5i32.to_le_bytes());
    assert_eq!(
        ioctl_with(&m, Options::default(), g, VFIO_GROUP_SET_CONTAINER, 0x3000, |_| Ok(0)),
        "ioctl(3</dev/iommu>, VFIO_GROUP_SET_CONTAINER, [5]) = 0"
    );
    // A region's info with its capability chain.
    let d = FileKind::VfioDevice;
    m.put(ARG, &[0u8; 64]);
    m.put(ARG, VfioRegionInfo { argsz: 64, index: VFIO_PCI_BAR0_REGION_INDEX, ..Default::default() }.as_bytes());
    let line = ioctl(&m, d, VFIO_DEVICE_GET_REGION_INFO, |m| {
        let flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS;
        m.put(ARG, VfioRegionInfo { argsz: 64, flags, index: 0, cap_offset: 32, size: 0x1000, offset: 0 }.as_bytes());
        m.put(
            ARG + 32,
            VfioRegionInfoCapSparseMmap {
                header: VfioInfoCapHeader { id: 1, version: 1, next: 0 },
                nr_areas: 1,
                reserved: 0,
            }
            .as_bytes(),
        );
        m.put(ARG + 48, VfioRegionSparseMmapArea { offset: 0, size: 0x1000 }.as_bytes());
        Ok(0)
    });
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, VFIO_DEVICE_GET_REGION_INFO, {argsz=64, index=BAR0} => {flags=READ|MMAP|CAPS, cap_offset=32, \
         size=0x1000, offset=0, caps=[{version=1, id=SPARSE_MMAP, areas=[{offset=0, size=0x1000}]}]}) = 0"
    );
    // SET_IRQS with eventfds; bind with the devid back; a feature.
    let mut set = VfioIrqSet {
        argsz: 28,
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: 2,
    }
    .as_bytes()
    .to_vec();
    set.extend_from_slice(&[9i32.to_le_bytes(), (-1i32).to_le_bytes()].concat());
    m.put(ARG, &set);
    assert_eq!(
        ioctl(&m, d, VFIO_DEVICE_SET_IRQS, |_| Ok(0)),
        "ioctl(3</dev/iommu>, VFIO_DEVICE_SET_IRQS, {argsz=28, flags=DATA_EVENTFD|ACTION_TRIGGER, index=MSIX, start=0, count=2, data=[9, -1]}) = 0"
    );
    m.put(ARG, VfioDeviceBindIommufd { argsz: 24, flags: 0, iommufd: 3, out_devid: 0, token_uuid_ptr: 0 }.as_bytes());
    let line = ioctl(&m, d, VFIO_DEVICE_BIND_IOMMUFD, |m| {
        m.put(ARG + 12, &1u32.to_le_bytes());
        Ok(0)
    });
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, VFIO_DEVICE_BIND_IOMMUFD, {argsz=24, flags=0, iommufd=3} => {out_devid=1}) = 0"
    );
    let mut feat =
        VfioDeviceFeature { argsz: 16, flags: VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE }
            .as_bytes()
            .to_vec();
    feat.extend_from_slice(
        VfioDeviceFeatureMigState { device_state: VFIO_DEVICE_STATE_STOP_COPY, data_fd: -1 }.as_bytes(),
    );
    m.put(ARG, &feat);
    let line = ioctl(&m, d, VFIO_DEVICE_FEATURE, |m| {
        m.put(ARG + 12, &8i32.to_le_bytes());
        Ok(0)
    });
    assert_eq!(
        line,
        "ioctl(3</dev/iommu>, VFIO_DEVICE_FEATURE, {argsz=16, flags=SET|MIG_DEVICE_STATE, data={device_state=STOP_COPY}} => {data={data_fd=8}}) = 0"
    );
}

#[test]
fn file_operations() {
    let m = Fake::default();
    let opts = Options::default();
    let line = |f: &dyn Fn(&mut Out<'_>)| {
        let mut s = String::new();
        f(&mut Out::new(&mut s, &m, &opts));
        s
    };
    // A fault queue's records.
    let fault = IommuHwptPgfault {
        flags: IOMMU_PGFAULT_FLAGS_LAST_PAGE,
        dev_id: 1,
        perm: IOMMU_PGFAULT_PERM_READ,
        addr: 0x1000,
        length: 0x1000,
        cookie: 4,
        ..Default::default()
    };
    m.put(0x4000, fault.as_bytes());
    let rd = Rw {
        name: "read",
        kind: FileKind::FaultQueue,
        fd: &Fd(5, "iommufd-fault"),
        buf: Buf::Single(0x4000),
        count: 80,
        pos: None,
        flags: None,
    };
    assert_eq!(
        line(&|o| {
            io::rw(o, &rd, Some(40));
            ret(o, Ok(40))
        }),
        "read(5<iommufd-fault>, [{flags=LAST_PAGE, dev_id=1, pasid=0, grpid=0, perm=READ, addr=0x1000, length=0x1000, cookie=4}], 80) = 40"
    );
    m.put(0x5000, IommuHwptPageResponse { cookie: 4, code: IOMMUFD_PAGE_RESP_SUCCESS }.as_bytes());
    let wr = Rw { name: "write", buf: Buf::Single(0x5000), count: 8, ..rd };
    assert_eq!(line(&|o| io::rw(o, &wr, Some(8))), "write(5<iommufd-fault>, [{cookie=4, code=SUCCESS}], 8)");
    // A selftest vEVENTQ: headers and records; a lost-events header.
    let mut ev = IommufdVeventHeader { flags: 0, sequence: 0 }.as_bytes().to_vec();
    ev.extend_from_slice(&0x99u32.to_le_bytes());
    ev.extend_from_slice(IommufdVeventHeader { flags: IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence: 1 }.as_bytes());
    m.put(0x6000, &ev);
    let rv = Rw { kind: FileKind::Veventq(IOMMU_VEVENTQ_TYPE_SELFTEST), buf: Buf::Single(0x6000), count: 64, ..rd };
    assert_eq!(
        line(&|o| io::rw(o, &rv, Some(20))),
        "read(5<iommufd-fault>, [{sequence=0, data={virt_id=0x99}}, {flags=LOST_EVENTS, sequence=1}], 64)"
    );
    // Device bytes at a region offset; the vector form.
    m.put(0x7000, &[0x86, 0x80, 0x34, 0x12]);
    let pr = Rw {
        name: "pread",
        kind: FileKind::VfioDevice,
        fd: &Fd(5, "vfio-device"),
        buf: Buf::Single(0x7000),
        count: 4,
        pos: Some((VFIO_PCI_CONFIG_REGION_INDEX as i64) << 40),
        ..rd
    };
    assert_eq!(
        line(&|o| io::rw(o, &pr, Some(4))),
        "pread64(5<vfio-device>, \"\\x86\\x80\\x34\\x12\" /* 0x12348086 */, 4, CONFIG+0)"
    );
    m.put(0x8000, &[0x7000u64, 2, 0x7002, 2].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let pv = Rw {
        name: "preadv",
        buf: Buf::Vector { iov: 0x8000, iovcnt: 2 },
        pos: Some(((VFIO_PCI_CONFIG_REGION_INDEX as i64) << 40) + 2),
        ..pr
    };
    assert_eq!(
        line(&|o| io::rw(o, &pv, Some(3))),
        "preadv(5<vfio-device>, [{iov_base=\"\\x86\\x80\" /* 0x8086 */, iov_len=2}, {iov_base=\"\\x34\" /* 0x34 */, iov_len=2}], 2, CONFIG+0x2)"
    );
    assert_eq!(
        line(&|o| {
            io::mmap(o, FileKind::VfioDevice, 0, 0x1000, 3, 1, &Fd(7, "vfio-device"), 0);
            ret_ptr(o, Ok(0x7f00_0000_0000))
        }),
        "mmap(NULL, 0x1000, PROT_READ|PROT_WRITE, MAP_SHARED, 7<vfio-device>, BAR0+0) = 0x7f0000000000"
    );
    // poll: the array before, the ready ones after.
    m.put(0x9000, &[5i32.to_le_bytes(), [1, 0, 1, 0]].concat());
    m.put(0x9008, &[0i32.to_le_bytes(), [1, 0, 0, 0]].concat());
    assert_eq!(
        line(&|o| {
            io::poll(o, "poll", 0x9000, 2, &-1, &|o, fd| {
                o.fmt(format_args!("{}", Fd(fd, if fd == 5 { "iommufd-pgfault" } else { "" })))
            });
            io::poll_ret(o, 0x9000, 2, 1)
        }),
        "poll([{fd=5<iommufd-pgfault>, events=POLLIN}, {fd=0, events=POLLIN}], 2, -1) = 1 ([{fd=5, revents=POLLIN}])"
    );
    assert_eq!(
        line(&|o| {
            io::open(o, "/dev/iommu", libc::O_RDWR | libc::O_CLOEXEC);
            ret(o, Ok(3))
        }),
        "open(\"/dev/iommu\", O_RDWR|O_CLOEXEC) = 3"
    );
    assert_eq!(
        line(&|o| {
            io::lseek(o, &Fd(3, "iommufd"), 0, 1);
            ret(o, Err((Errno::ESPIPE, "")))
        }),
        "lseek(3<iommufd>, 0, SEEK_CUR) = -1 ESPIPE (Illegal seek)"
    );
}

/// Every table's fields tile its struct exactly (the types written beside
/// the field names are the struct's), so no field is read at the wrong
/// width.
#[test]
fn field_tables_tile_their_structs() {
    fn check(name: &str, fields: &[F], size: usize) {
        let mut at = 0;
        for f in fields {
            assert_eq!(f.off, at, "{name}: {} at {} (expected {at})", f.name, f.off);
            at = f.end();
        }
        assert_eq!(at, size, "{name}: the fields end at {at}, the struct at {size}");
    }
    for c in crate::ioctl::all_commands() {
        if let crate::ioctl::Arg::Struct { len, fields, .. } = c.arg {
            check(c.name, fields, len);
            for f in fields {
                if let Fmt::Custom(_) | Fmt::Out(_) = f.fmt {
                    continue;
                }
                assert!(
                    f.len <= 8 || matches!(f.fmt, Fmt::Bytes(_) | Fmt::Rsv),
                    "{}: {} is {} bytes",
                    c.name,
                    f.name,
                    f.len
                );
            }
        }
    }
    // The selftest's union members fit the union.
    for (op, fields) in selftest::members() {
        if let Some(last) = fields.last() {
            assert!(last.end() <= TEST_CMD_PAYLOAD_SIZE, "op {op}");
        }
        let mut at = 0;
        for f in fields {
            assert_eq!(f.off, at, "op {op}: {}", f.name);
            at = f.end();
        }
    }
    // Every iommufd command of the 7.3 uAPI has a decoder.
    for nr in IOMMUFD_CMD_BASE..=IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA {
        let request = uiommufd_abi::ioctl::io(IOMMUFD_TYPE, nr);
        assert!(ioctl_name(FileKind::Iommufd, request as u64).is_some(), "{request:#x}");
    }
    assert_eq!(ioctl_name(FileKind::Iommufd, IOMMU_TEST_CMD as u64), Some("IOMMU_TEST_CMD"));
}
