//! The AMD model against the driver's rules and the spec's encodings:
//! allocation, attach and the DTEs written, flushes, dirty tracking, the
//! v2 domain, the vIOMMU and nested translation through guest tables.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};

use proptest::prelude::*;
use uiommufd_abi::{
    Errno, IommuHwInfoAmd, IommuHwptAmdGuest, IOMMU_HWPT_DATA_AMD_GUEST, IOMMU_HWPT_DATA_VTD_S1,
    IOMMU_HW_INFO_TYPE_AMD, IOMMU_HW_INFO_TYPE_INTEL_VTD,
};
use zerocopy::{FromBytes, IntoBytes};

use super::cmd::{self, op};
use super::device::{AmdDevice, AmdIommu};
use super::domain::{AmdV1Domain, AmdV2Domain};
use super::dte::{self, Dte};
use super::event;
use super::info::{DriverParams, PgtableMode};
use super::nested::{AmdNested, NestedFault, GCR3_VALID};
use super::regs::AmdRegs;
use super::v1::pte;
use super::viommu::AmdViommu;
use crate::device::{Cap, IommuDevice, PagingRequest, ViommuCore, ViommuDriver};
use crate::x86_64::fspte;
use crate::{Access, Domain, Fault, Prot, UserData};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);
/// DeviceID of 00:04.0.
const DEVID: u16 = 0x20;

fn unit_with(params: DriverParams) -> Arc<AmdIommu> {
    AmdIommu::with_params(AmdRegs::default(), params).unwrap()
}

fn unit() -> Arc<AmdIommu> {
    unit_with(DriverParams::default())
}

fn req(dirty: bool, nest: bool, pasid: bool) -> PagingRequest {
    PagingRequest { dirty_tracking: dirty, nest_parent: nest, pasid }
}

fn v1(d: &Arc<dyn Domain>) -> &AmdV1Domain {
    d.as_any().downcast_ref::<AmdV1Domain>().unwrap()
}

/// The commands consumed since `from` (an index into the history).
fn commands_since(u: &AmdIommu, from: usize) -> Vec<[u64; 2]> {
    u.recent_commands()[from..].to_vec()
}

#[test]
fn capabilities_and_hw_info() {
    let u = unit();
    let dev = AmdDevice::new(&u, "0000:00:04.0", DEVID);
    assert!(dev.capable(Cap::CacheCoherency) && dev.capable(Cap::EnforceCacheCoherency));
    assert!(dev.capable(Cap::DirtyTracking));
    let (ty, data) = dev.hw_info(0).unwrap();
    assert_eq!(ty, IOMMU_HW_INFO_TYPE_AMD);
    let hw = IommuHwInfoAmd::read_from_bytes(&data).unwrap();
    assert_eq!((hw.efr, hw.efr2), (0x25bf732fa2295afe, 0x1d));
    assert_eq!(dev.hw_info(IOMMU_HW_INFO_TYPE_AMD).unwrap().0, IOMMU_HW_INFO_TYPE_AMD);
    assert_eq!(dev.hw_info(IOMMU_HW_INFO_TYPE_INTEL_VTD), Err(Errno::EOPNOTSUPP));
    // Without CONFIG_AMD_IOMMU_IOMMUFD: no hw_info (type NONE, no data),
    // no vIOMMU.
    let u0 = unit_with(DriverParams { iommufd: false, ..DriverParams::default() });
    let d0 = AmdDevice::new(&u0, "0000:00:04.0", DEVID);
    assert_eq!(d0.hw_info(IOMMU_HW_INFO_TYPE_INTEL_VTD), Ok((0, Vec::new())));
    assert!(!d0.viommu_supported(1));
    assert!(dev.viommu_supported(1) && dev.viommu_supported(77));
    // Reserved: the MSI window and the HT range.
    let r = dev.reserved_regions();
    assert_eq!((r[0].start, r[1].start), (0xfee0_0000, 0xfd_0000_0000));
}

#[test]
fn max_pasids_like_the_iommu_core() {
    let u = unit();
    // A 20-bit PCI PASID capability on a 16-bit IOMMU: (1 << 16) - 1
    // PASIDs, so ilog2 says 15.
    assert_eq!(AmdDevice::new(&u, "a", 1).with_pasid(20).max_pasid_log2(), 15);
    assert_eq!(AmdDevice::new(&u, "b", 2).with_pasid(8).max_pasid_log2(), 8);
    assert_eq!(AmdDevice::new(&u, "c", 3).max_pasid_log2(), 0);
    // No GT: the IOMMU has no PASIDs.
    let q = AmdIommu::with_params(AmdRegs::from_raw(0x29d3 & !(1 << 4), 0), DriverParams::default()).unwrap();
    assert_eq!(AmdDevice::new(&q, "d", 4).with_pasid(20).max_pasid_log2(), 0);
}

#[test]
fn paging_allocation_follows_the_flags_switch() {
    let u = unit();
    let dev = AmdDevice::new(&u, "0000:00:04.0", DEVID);
    let kind = |d: &Arc<dyn Domain>| {
        if d.as_any().is::<AmdV1Domain>() {
            "v1"
        } else if d.as_any().is::<AmdV2Domain>() {
            "v2"
        } else {
            "?"
        }
    };
    for (dirty, nest, pasid, want) in [
        (false, false, false, Ok("v1")),
        (true, false, false, Ok("v1")),
        (false, true, false, Ok("v1")),
        (true, true, false, Ok("v1")),
        (false, false, true, Ok("v2")),
        (true, false, true, Err(Errno::EOPNOTSUPP)),
        (false, true, true, Err(Errno::EOPNOTSUPP)),
    ] {
        let got = dev.alloc_paging(&req(dirty, nest, pasid)).map(|d| kind(&d));
        assert_eq!(got, want, "dirty={dirty} nest={nest} pasid={pasid}");
    }
    // amd_iommu=pgtbl_v2: the default is a v2 domain.
    let u2 = unit_with(DriverParams { pgtable: PgtableMode::V2, ..DriverParams::default() });
    let d2 = AmdDevice::new(&u2, "0000:00:04.0", DEVID);
    assert_eq!(kind(&d2.alloc_paging(&req(false, false, false)).unwrap()), "v2");
    // QEMU's amd-iommu as the oracle kernel (7.3.4) answers
    // IOMMU_HWPT_ALLOC for its flags: 0 ok; NEST_PARENT (no GIoSup),
    // PASID, and the combinations EOPNOTSUPP. (DIRTY_TRACKING is refused
    // by iommufd before the driver: no IOMMU_CAP_DIRTY_TRACKING.)
    let q = AmdIommu::with_params(
        AmdRegs::from_raw(0x29d3, 0),
        DriverParams { vasize: 48, la57: false, ..DriverParams::default() },
    )
    .unwrap();
    let qd = AmdDevice::new(&q, "0000:00:03.0", 0x18);
    assert!(!qd.capable(Cap::DirtyTracking));
    assert!(qd.alloc_paging(&req(false, false, false)).is_ok());
    for (dirty, nest, pasid) in [(false, true, false), (false, false, true), (false, true, true)] {
        assert_eq!(qd.alloc_paging(&req(dirty, nest, pasid)).err(), Some(Errno::EOPNOTSUPP));
    }
    let d = qd.alloc_paging(&req(false, false, false)).unwrap();
    // The oracle's IOVA ranges end at 2^48 - 1.
    assert_eq!(d.aperture().last, (1 << 48) - 1);
}

#[test]
fn attach_writes_the_v1_dte_and_flushes_it() {
    let u = unit();
    let dev = AmdDevice::new(&u, "0000:00:04.0", DEVID);
    assert_eq!(dev.dte(), Dte::clear());
    let d = dev.alloc_paging(&req(false, false, false)).unwrap();
    let id = v1(&d).id();
    let before = u.recent_commands().len();
    dev.check_attach(&*d).unwrap();
    let dte = dev.dte();
    // V | TV | Mode 3 | root | IR | IW, DomainID.
    let root = v1(&d).root();
    assert_eq!(dte.0, [1 | 2 | 3 << 9 | root | 1 << 61 | 1 << 62, u64::from(id), 0, 0]);
    let cmds = commands_since(&u, before);
    assert_eq!(cmds[0], cmd::inv_dte(DEVID));
    assert_eq!(cmd::opcode(&cmds[1]), op::COMPLETION_WAIT);
    // Attaching the same domain again does nothing.
    let n = u.recent_commands().len();
    dev.check_attach(&*d).unwrap();
    assert_eq!(u.recent_commands().len(), n);
    // PASID attach: no paging domain has set_dev_pasid in 7.3.
    assert_eq!(dev.check_attach_pasid(1, &*d), Err(Errno::EOPNOTSUPP));
    // Blocking: the DTE is cleared (V only) and the old domain flushed.
    let n = u.recent_commands().len();
    dev.detached(0);
    assert_eq!(dev.dte(), Dte::clear());
    let cmds = commands_since(&u, n);
    assert!(cmds.contains(&cmd::inv_iommu_pages(0, u64::MAX, id, 0, cmd::PAGES_PDE)), "{cmds:x?}");
    assert!(cmds.contains(&cmd::inv_dte(DEVID)));
}

#[test]
fn mapping_high_grows_the_table_and_rewrites_dtes() {
    let u = unit();
    let dev = AmdDevice::new(&u, "0000:00:04.0", DEVID);
    let d = dev.alloc_paging(&req(false, false, false)).unwrap();
    dev.check_attach(&*d).unwrap();
    let root3 = dev.dte().host_root();
    assert_eq!(dev.dte().mode(), 3);
    crate::map(&*d, 1 << 40, 0x1_0000_0000, K4, RW, 0).unwrap();
    // 2^40 needs four levels: the DTE now points at the 4-level root.
    assert_eq!(dev.dte().mode(), 4);
    assert_ne!(dev.dte().host_root(), root3);
    assert_eq!(v1(&d).table().node_pa(0, 2).unwrap(), root3);
    crate::map(&*d, 1 << 60, 0x1_0000_0000, K4, RW, 0).unwrap();
    assert_eq!(dev.dte().mode(), 6);
    assert_eq!(d.translate((1 << 60) + 5, Access::Read).unwrap().paddr, 0x1_0000_0005);
}

#[test]
fn v1_entries_carry_fc_and_the_iotlb_is_stale_until_flushed() {
    let u = unit();
    let dev = AmdDevice::new(&u, "0000:00:04.0", DEVID);
    let d = dev.alloc_paging(&req(false, false, false)).unwrap();
    let id = v1(&d).id();
    crate::map(&*d, 0x10_0000, 0x1_0000_0000, K4, RW, 0).unwrap();
    // Linux writes FC with IR/IW (PT_FEAT_AMDV1_FORCE_COHERENCE).
    let (e, _) = v1(&d).table().walk(0x10_0000).unwrap();
    assert_eq!(e, 0x7000_0001_0000_0001);
    let t = d.translate(0x10_0123, Access::Write).unwrap();
    assert_eq!(t.paddr, 0x1_0000_0123);
    assert!(t.prot.contains(Prot::CACHE));
    assert!(d.enforce_cache_coherency() && d.forces_snoop());
    // Behind the driver's back: the table changes, the IOTLB does not.
    v1(&d).table().unmap(0x10_0000, K4, 1);
    assert_eq!(d.translate(0x10_0123, Access::Read).unwrap().paddr, 0x1_0000_0123);
    // The driver's unmap flush (INVALIDATE_IOMMU_PAGES of the domain).
    u.issue(&[cmd::inv_iommu_pages(0x10_0000, 0x10_0fff, id, 0, 0)]);
    assert_eq!(d.translate(0x10_0123, Access::Read), Err(Fault::NotPresent));
    // Another domain ID's flush does not reach it.
    crate::map(&*d, 0x20_0000, 0x1_0000_0000, K4, RW, 0).unwrap();
    d.translate(0x20_0000, Access::Read).unwrap();
    v1(&d).table().unmap(0x20_0000, K4, 1);
    u.issue(&[cmd::inv_iommu_pages(0, u64::MAX, id + 1, 0, 0)]);
    assert!(d.translate(0x20_0000, Access::Read).is_ok());
    // A proper unmap flushes: INVALIDATE_IOMMU_PAGES for the range, then
    // COMPLETION_WAIT.
    crate::map(&*d, 0x30_0000, 0x1_0000_0000, K4, RW, 0).unwrap();
    d.translate(0x30_0000, Access::Read).unwrap();
    let n = u.recent_commands().len();
    assert_eq!(crate::unmap(&*d, 0x30_0000, K4, 0), K4);
    let cmds = commands_since(&u, n);
    assert_eq!(cmds[0], [0x3000_0000_0000_0000 | u64::from(id) << 32, 0x30_0000]);
    assert_eq!(cmd::opcode(&cmds[1]), op::COMPLETION_WAIT);
    assert_eq!(d.translate(0x30_0000, Access::Read), Err(Fault::NotPresent));
    // Unmapping a whole 2 MiB of small pages frees a table: PDE.
    crate::map(&*d, 0x40_0000, 0x1_0000_0000, M2, RW, 4 * K4).unwrap();
    let n = u.recent_commands().len();
    crate::unmap(&*d, 0x40_0000, M2, 0);
    assert_eq!(commands_since(&u, n)[0][1], 0x40_0000 | 0xff000 | cmd::PAGES_SIZE | cmd::PAGES_PDE);
}

#[test]
fn contiguous_pages_through_the_domain() {
    let u = unit();
    let dev = AmdDevice::new(&u, "0000:00:04.0", DEVID);
    let d = dev.alloc_paging(&req(true, false, false)).unwrap();
    // 64 KiB physically contiguous and aligned: one 64 KiB page (16
    // entries, NextLevel 7), as iommu_map picks the largest size.
    crate::map(&*d, 0x11_0000, 0x2_0011_0000, 1 << 16, RW, 0).unwrap();
    let (e, level) = v1(&d).table().walk(0x11_8000).unwrap();
    assert_eq!((e, level), (0x7000_0002_0011_7e01, 0));
}

#[test]
fn dirty_tracking_sets_had_marks_and_harvests() {
    let u = unit();
    let dev = AmdDevice::new(&u, "0000:00:04.0", DEVID);
    let d = dev.alloc_paging(&req(true, false, false)).unwrap();
    let id = v1(&d).id();
    dev.check_attach(&*d).unwrap();
    crate::map(&*d, 0, 0x1_0000_0000, 1 << 16, RW, 0).unwrap();
    crate::map(&*d, 0x10_0000, 0x1_0010_0000, K4, RW, 0).unwrap();
    // Off: translations mark nothing.
    d.translate(0x10_0000, Access::Write).unwrap();
    assert_eq!(v1(&d).table().walk(0x10_0000).unwrap().0 & (pte::A | pte::D), 0);
    let ops = d.dirty_ops().unwrap();
    let n = u.recent_commands().len();
    ops.set_dirty_tracking(true).unwrap();
    // HAD in the DTE (bits 8:7), the DTE flushed, the domain flushed.
    assert_eq!(dev.dte().had(), 3);
    let cmds = commands_since(&u, n);
    assert!(cmds.contains(&cmd::inv_dte(DEVID)));
    assert!(cmds.contains(&cmd::inv_iommu_pages(0, u64::MAX, id, 0, cmd::PAGES_PDE)));
    // A read caches the page without D; the write that follows walks again
    // and sets D.
    d.translate(0x10_0000, Access::Read).unwrap();
    assert_eq!(v1(&d).table().walk(0x10_0000).unwrap().0 & (pte::A | pte::D), pte::A);
    d.translate(0x10_0008, Access::Write).unwrap();
    assert_eq!(v1(&d).table().walk(0x10_0000).unwrap().0 & pte::D, pte::D);
    // A write to one 4 KiB of the 64 KiB page dirties all of it.
    d.translate(0x3000, Access::Write).unwrap();
    let mut seen = Vec::new();
    let mut rec = |iova: u64, len: u64| seen.push((iova, len));
    ops.read_and_clear_dirty(0, 1 << 30, false, Some(&mut rec)).unwrap();
    assert_eq!(seen, vec![(0, 1 << 16), (0x10_0000, K4)]);
    // Cleared: the next harvest is empty, and iommufd's sync flushed the
    // IOTLB so that the next write sets D again.
    let mut seen2 = Vec::new();
    let mut rec2 = |iova: u64, len: u64| seen2.push((iova, len));
    ops.read_and_clear_dirty(0, 1 << 30, false, Some(&mut rec2)).unwrap();
    assert!(seen2.is_empty());
    d.translate(0x10_0010, Access::Write).unwrap();
    assert_eq!(v1(&d).table().walk(0x10_0000).unwrap().0 & pte::D, pte::D);
    // A dirty-tracking domain on a part without HDSup: EINVAL at attach.
    let nohd = AmdIommu::with_params(AmdRegs::from_raw(0x25bf732fa2295afe & !(1 << 52), 0x1d), DriverParams::default())
        .unwrap();
    let dev2 = AmdDevice::new(&nohd, "0000:00:05.0", 0x28);
    assert_eq!(dev2.alloc_paging(&req(true, false, false)).err(), Some(Errno::EOPNOTSUPP));
}

#[test]
fn v2_domains_use_the_gcr3_table_and_do_not_force_snoop() {
    let u = unit();
    let dev = AmdDevice::new(&u, "0000:00:04.0", DEVID).with_pasid(20);
    let d = dev.alloc_paging(&req(false, false, true)).unwrap();
    assert_eq!(d.pgsize_bitmap(), K4 | M2 | 1 << 30);
    // 5-level guest tables on this part: 56 address bits, no sign extension.
    assert_eq!(d.aperture().last, (1 << 56) - 1);
    assert!(d.enforce_cache_coherency(), "what the driver answers");
    assert!(!d.forces_snoop(), "what the v2 format can do");
    dev.check_attach(&*d).unwrap();
    let dte = dev.dte();
    // V, TV, GV, GIoV, GLX 1 (65535 PASIDs need two GCR3 levels), IR,
    // IW, 5-level guest paging; Mode 0 (no host table).
    assert!(dte.valid() && dte.tv() && dte.gv() && dte.giov());
    assert_eq!((dte.glx(), dte.gpt_levels(), dte.mode()), (1, 5, 0));
    assert_ne!(dte.domid(), d.as_any().downcast_ref::<AmdV2Domain>().unwrap().id());
    crate::map(&*d, 0x4000, 0x1_2345_6000, K4, Prot::READ, 0).unwrap();
    let t = d.translate(0x4567, Access::Read).unwrap();
    assert_eq!(t.paddr, 0x1_2345_6567);
    assert_eq!(d.translate(0x4567, Access::Write), Err(Fault::Permission));
    // An unmap flushes PASID 0 of the device's domain ID with GN.
    let n = u.recent_commands().len();
    crate::unmap(&*d, 0x4000, K4, 0);
    assert_eq!(commands_since(&u, n)[0], cmd::inv_iommu_pages(0x4000, 0x4fff, dte.domid(), 0, cmd::PAGES_GN));
    // A part with GLXSup 0 cannot give a PASID device a v2 domain.
    let glx0 = AmdIommu::with_params(AmdRegs::from_raw(0x25bf732fa2295afe & !(3 << 14), 0x1d), DriverParams::default())
        .unwrap();
    let dev0 = AmdDevice::new(&glx0, "0000:00:05.0", 0x28).with_pasid(20);
    let d0 = dev0.alloc_paging(&req(false, false, true)).unwrap();
    assert_eq!(dev0.check_attach(&*d0), Err(Errno::EINVAL));
    let dev1 = AmdDevice::new(&glx0, "0000:00:06.0", 0x30);
    assert_eq!(dev1.check_attach(&*d0), Ok(()));
}

// ---- nested translation ----

/// The engine half of a vIOMMU, for tests.
#[derive(Default)]
struct TestCore;

impl ViommuCore for TestCore {
    fn report_event(&self, _veventq_type: u32, _data: &[u8]) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    fn find_dev(&self, _virt_id: u64) -> Option<Arc<dyn IommuDevice>> {
        None
    }
    fn vdev_id(&self, _dev: &dyn IommuDevice) -> Option<u64> {
        None
    }
    fn alloc_mmap(&self, _length: u64) -> Result<u64, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}

/// Guest RAM at this host physical address, 64 MiB, mapped by the nest
/// parent at GPA 0.
const HOST_BASE: u64 = 1 << 32;
const RAM: u64 = 64 << 20;
const GCR3_TABLE: u64 = 0x10_0000;
const GCR3_L0: u64 = 0x10_1000;
const TABLES: u64 = 0x20_0000;
/// P | R/W | U/S | A, what a guest Linux writes (generic_pt x86_64).
const GT: u64 = fspte::P | fspte::RW | fspte::US | fspte::A;

struct Guest {
    unit: Arc<AmdIommu>,
    dev: Arc<AmdDevice>,
    parent: Arc<dyn Domain>,
    viommu: Arc<AmdViommu>,
    _core: Arc<TestCore>,
    mem: Arc<RwLock<HashMap<u64, u64>>>,
    next_table: Mutex<u64>,
}

impl Guest {
    fn new(params: DriverParams) -> Guest {
        Self::with_parent(params, false)
    }

    /// With a nest parent allocated with dirty tracking or not.
    fn with_parent(params: DriverParams, dirty: bool) -> Guest {
        let unit = unit_with(params);
        let mem: Arc<RwLock<HashMap<u64, u64>>> = Arc::default();
        {
            let mem = Arc::clone(&mem);
            unit.set_phys_reader(Arc::new(move |pa| {
                if !(HOST_BASE..HOST_BASE + RAM).contains(&pa) {
                    return Err(Errno::EFAULT);
                }
                Ok(mem.read().unwrap().get(&pa).copied().unwrap_or(0))
            }));
        }
        let dev = Arc::new(AmdDevice::new(&unit, "0000:00:04.0", DEVID).with_pasid(20));
        let parent = dev.alloc_paging(&req(dirty, true, false)).unwrap();
        // In 2 MiB pages (unrestricted, 64 MiB aligned would be one page).
        crate::map(&*parent, 0, HOST_BASE, RAM, RW, M2).unwrap();
        let core = Arc::new(TestCore);
        let weak: Weak<dyn ViommuCore> = Arc::downgrade(&core) as Weak<dyn ViommuCore>;
        let viommu = AmdViommu::init(&unit, &parent, weak).unwrap();
        Guest { unit, dev, parent, viommu, _core: core, mem, next_table: Mutex::new(TABLES) }
    }

    fn write(&self, gpa: u64, v: u64) {
        self.mem.write().unwrap().insert(HOST_BASE + gpa, v);
    }

    fn read(&self, gpa: u64) -> u64 {
        self.mem.read().unwrap().get(&(HOST_BASE + gpa)).copied().unwrap_or(0)
    }

    /// Map `iova` to `gpa` with a leaf at `leaf_level` (0: 4 KiB, 1: 2 MiB,
    /// 2: 1 GiB) in the `levels`-level table at `root`.
    fn map_guest(&self, root: u64, levels: u32, iova: u64, gpa: u64, bits: u64, leaf_level: u32) {
        let mut table = root;
        for level in (leaf_level + 1..levels).rev() {
            let idx = (iova >> (12 + 9 * level)) & 511;
            let e = self.read(table + idx * 8);
            table = if e & fspte::P != 0 {
                e & fspte::ADDR
            } else {
                let mut next = self.next_table.lock().unwrap();
                let t = *next;
                *next += K4;
                self.write(table + idx * 8, t | GT);
                t
            };
        }
        let idx = (iova >> (12 + 9 * leaf_level)) & 511;
        let ps = if leaf_level > 0 { fspte::PS } else { 0 };
        self.write(table + idx * 8, gpa | bits | ps);
    }

    /// A fresh guest table root.
    fn table(&self) -> u64 {
        let mut next = self.next_table.lock().unwrap();
        let t = *next;
        *next += K4;
        t
    }

    /// The GCR3 entry of `pasid` in a two-level GCR3 table at
    /// [`GCR3_TABLE`] (GLX 1): its root in entry `pasid >> 9`.
    fn set_gcr3(&self, pasid: u32, cr3: u64) {
        self.write(GCR3_TABLE + u64::from(pasid >> 9) * 8, GCR3_L0 | GCR3_VALID);
        self.write(GCR3_L0 + u64::from(pasid & 511) * 8, cr3 | GCR3_VALID);
    }

    fn nested_raw(&self, ty: u32, len: u32, gdte: [u64; 4]) -> Result<Arc<AmdNested>, Errno> {
        let bytes = IommuHwptAmdGuest { dte: gdte }.as_bytes().to_vec();
        let mut rd = move |buf: &mut [u8]| -> Result<(), Errno> {
            let n = buf.len().min(bytes.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            Ok(())
        };
        let mut data = UserData { data_type: ty, len, reader: &mut rd };
        self.viommu.alloc_nested(&mut data)
    }

    /// A guest DTE: V, GV, GIoV, GLX 1, the GCR3 table, `gdom`, 4-level.
    fn gdte(gdom: u16) -> [u64; 4] {
        let g = GCR3_TABLE;
        [
            dte::V | dte::GV | dte::GIOV | 1 << dte::GLX_SHIFT | ((g >> 12) & 7) << dte::GCR3_14_12_SHIFT,
            u64::from(gdom) | ((g >> 15) & 0xffff) << dte::GCR3_30_15_SHIFT,
            0,
            0,
        ]
    }

    fn nested(&self, gdom: u16) -> Arc<AmdNested> {
        self.nested_raw(IOMMU_HWPT_DATA_AMD_GUEST, 32, Self::gdte(gdom)).unwrap()
    }
}

#[test]
fn linux_73_allocates_no_nested_domain_through_the_viommu() {
    let g = Guest::new(DriverParams::default());
    let mut rd = |_: &mut [u8]| -> Result<(), Errno> { Ok(()) };
    let mut data = UserData { data_type: IOMMU_HWPT_DATA_AMD_GUEST, len: 32, reader: &mut rd };
    // amd_viommu_ops has only .destroy in 7.3.
    assert_eq!(g.viommu.alloc_domain_nested(0, &mut data).err(), Some(Errno::EOPNOTSUPP));
    assert!(!g.viommu.can_invalidate());
    // The parent-HWPT path (domain_alloc_nested) does not exist either.
    let mut data = UserData { data_type: IOMMU_HWPT_DATA_AMD_GUEST, len: 32, reader: &mut rd };
    assert_eq!(g.dev.alloc_nested(&g.parent, 0, &mut data).err(), Some(Errno::EOPNOTSUPP));
    // With the follow-up's wiring it allocates.
    let g = Guest::new(DriverParams { nested_alloc: true, ..DriverParams::default() });
    let bytes = IommuHwptAmdGuest { dte: Guest::gdte(3) }.as_bytes().to_vec();
    let mut rd = move |buf: &mut [u8]| -> Result<(), Errno> {
        buf.copy_from_slice(&bytes[..buf.len()]);
        Ok(())
    };
    let mut data = UserData { data_type: IOMMU_HWPT_DATA_AMD_GUEST, len: 32, reader: &mut rd };
    assert!(g.viommu.alloc_domain_nested(0, &mut data).unwrap().is_nested());
}

#[test]
fn guest_dtes_are_checked_as_the_driver_does() {
    let g = Guest::new(DriverParams::default());
    let ok = Guest::gdte(3);
    assert!(g.nested_raw(IOMMU_HWPT_DATA_AMD_GUEST, 32, ok).is_ok());
    // Another data type: EOPNOTSUPP; a short struct: EINVAL.
    assert_eq!(g.nested_raw(IOMMU_HWPT_DATA_VTD_S1, 32, ok).err(), Some(Errno::EOPNOTSUPP));
    assert_eq!(g.nested_raw(IOMMU_HWPT_DATA_AMD_GUEST, 24, ok).err(), Some(Errno::EINVAL));
    // The guest must not set Mode or a host root pointer.
    let mut bad = ok;
    bad[0] |= 4 << dte::MODE_SHIFT;
    assert_eq!(g.nested_raw(IOMMU_HWPT_DATA_AMD_GUEST, 32, bad).err(), Some(Errno::EINVAL));
    // 5-level guest tables: fine on this host (LA57, GATS 1) ...
    let mut five = ok;
    five[2] |= dte::GUEST_PGTABLE_5_LEVEL << dte::GPT_LEVEL_SHIFT;
    assert!(g.nested_raw(IOMMU_HWPT_DATA_AMD_GUEST, 32, five).is_ok());
    // ... not on a 4-level one: EOPNOTSUPP.
    let g4 = Guest::new(DriverParams { la57: false, ..DriverParams::default() });
    assert_eq!(g4.nested_raw(IOMMU_HWPT_DATA_AMD_GUEST, 32, five).err(), Some(Errno::EOPNOTSUPP));
}

#[test]
fn guest_domain_ids_share_a_host_domain_id() {
    let g = Guest::new(DriverParams::default());
    let a = g.nested(3);
    let b = g.nested(3);
    let c = g.nested(4);
    assert_eq!(a.hdom_id(), b.hdom_id());
    assert_ne!(a.hdom_id(), c.hdom_id());
    assert_ne!(a.hdom_id(), v1(&g.parent).id());
    let h = a.hdom_id();
    drop(a);
    assert_eq!(g.viommu.domain_ids().len(), 2);
    drop(b);
    assert_eq!(g.viommu.domain_ids(), vec![(4, c.hdom_id())]);
    // The host domain ID went back to the pool.
    let d = g.nested(9);
    assert_eq!(d.hdom_id(), h);
}

#[test]
fn nested_dte_and_translation_through_both_tables() {
    let g = Guest::new(DriverParams::default());
    let root = g.table();
    g.set_gcr3(0, root);
    g.set_gcr3(0x345, root);
    g.map_guest(root, 4, 0x40_0000, 0x80_5000, GT | fspte::D, 0);
    // A read-only 2 MiB guest page.
    g.map_guest(root, 4, 0x60_0000, 0xa0_0000, fspte::P | fspte::US | fspte::A, 1);
    let n = g.nested(3);
    g.dev.check_attach(&*n).unwrap();
    let dte = g.dev.dte();
    // The parent's v1 entry with the host domain ID, plus GV and the
    // guest's GIoV, GLX and GCR3 root pointer.
    let p = v1(&g.parent);
    assert_eq!(dte.0[0], Dte::v1(0, p.root(), p.mode(), false).0[0] | dte::GV | dte::GIOV | 1 << 56);
    assert_eq!(dte.domid(), n.hdom_id());
    assert_eq!(dte.gcr3_root(), GCR3_TABLE);
    // Without PASID (GIoV): PASID 0's table.
    let t = n.translate(0x40_0123, Access::Write).unwrap();
    assert_eq!(t.paddr, HOST_BASE + 0x80_5123);
    assert!(t.prot.contains(Prot::CACHE), "the parent's FC");
    // With PASID 0x345 (second level of the GCR3 table).
    assert_eq!(n.translate_pasid(0x345, 0x60_1000, Access::Read).unwrap().paddr, HOST_BASE + 0xa0_1000);
    assert_eq!(n.translate_pasid(0x345, 0x60_1000, Access::Write), Err(Fault::Permission));
    // No GCR3 entry for PASID 7.
    assert_eq!(n.translate_req(Some(7), 0x40_0000, Access::Read, false), Err(NestedFault::Gcr3 { pasid: 7 }));
    // Without GIoV requests without PASID see the parent only.
    let mut no_giov = Guest::gdte(5);
    no_giov[0] &= !dte::GIOV;
    let m = g.nested_raw(IOMMU_HWPT_DATA_AMD_GUEST, 32, no_giov).unwrap();
    assert_eq!(m.translate(0x40_0123, Access::Read).unwrap().paddr, HOST_BASE + 0x40_0123);
}

#[test]
fn nested_iotlb_is_stale_until_the_parent_flush_reaches_its_host_domain_id() {
    let g = Guest::new(DriverParams::default());
    let root = g.table();
    g.set_gcr3(0, root);
    g.map_guest(root, 4, 0x40_0000, 0x80_5000, GT, 0);
    let n = g.nested(3);
    g.dev.check_attach(&*n).unwrap();
    assert_eq!(n.translate(0x40_0000, Access::Read).unwrap().paddr, HOST_BASE + 0x80_5000);
    // The guest remaps the page: the IOTLB still has the old translation.
    g.map_guest(root, 4, 0x40_0000, 0x90_7000, GT, 0);
    assert_eq!(n.translate(0x40_0000, Access::Read).unwrap().paddr, HOST_BASE + 0x80_5000);
    // A guest-style invalidation of another PASID does not help...
    g.unit.issue(&[cmd::inv_iommu_pages(0x40_0000, 0x40_0fff, n.hdom_id(), 1, cmd::PAGES_GN)]);
    assert_eq!(n.translate(0x40_0000, Access::Read).unwrap().paddr, HOST_BASE + 0x80_5000);
    // ... PASID 0's does.
    g.unit.issue(&[cmd::inv_iommu_pages(0x40_0000, 0x40_0fff, n.hdom_id(), 0, cmd::PAGES_GN)]);
    assert_eq!(n.translate(0x40_0000, Access::Read).unwrap().paddr, HOST_BASE + 0x90_7000);
    // Stale again, then what the kernel sends on any unmap of the parent:
    // INVALIDATE_IOMMU_PAGES (GN=0) for the parent's ID and every host
    // domain ID of the vIOMMU.
    g.map_guest(root, 4, 0x40_0000, 0x81_0000, GT, 0);
    assert_eq!(n.translate(0x40_0000, Access::Read).unwrap().paddr, HOST_BASE + 0x90_7000);
    let before = g.unit.recent_commands().len();
    assert_eq!(crate::unmap(&*g.parent, RAM - M2, M2, 0), M2);
    let cmds = commands_since(&g.unit, before);
    let pid = v1(&g.parent).id();
    assert_eq!(cmds[0], cmd::inv_iommu_pages(RAM - M2, RAM - 1, pid, 0, 0));
    assert_eq!(cmds[1], cmd::inv_iommu_pages(RAM - M2, RAM - 1, n.hdom_id(), 0, 0));
    assert_eq!(n.translate(0x40_0000, Access::Read).unwrap().paddr, HOST_BASE + 0x81_0000);
}

#[test]
fn nested_faults_are_logged_as_the_spec_says() {
    let g = Guest::new(DriverParams::default());
    let root = g.table();
    g.set_gcr3(0, root);
    g.map_guest(root, 4, 0x40_0000, 0x80_5000, fspte::P | fspte::US | fspte::A, 0);
    // A guest page whose GPA the parent does not map.
    g.map_guest(root, 4, 0x50_0000, RAM + 0x1000, GT, 0);
    let n = g.nested(3);
    g.dev.check_attach(&*n).unwrap();
    let _ = g.unit.take_events();
    // Not present in the guest table, write, PASID 0: GN, RW.
    assert_eq!(g.dev.dma_fault(&*n, None, 0x70_0000, true, false), Some(false));
    // Permission: a write to the read-only page: GN, PR, PE, RW.
    g.dev.dma_fault(&*n, None, 0x40_0000, true, false);
    // The parent has no mapping for the GPA: GN clear, the host domain ID,
    // the GPA.
    g.dev.dma_fault(&*n, None, 0x50_0000, false, false);
    let (events, lost) = g.unit.take_events();
    assert!(!lost);
    let e: Vec<String> = events.iter().map(event::describe).collect();
    assert_eq!(e.len(), 3);
    let us = event::flag::US;
    assert_eq!(events[0], [0x2000_0000_0000_0020 | u64::from(event::flag::GN | event::flag::RW | us) << 48, 0x70_0000]);
    assert_eq!(
        (events[1][0] >> 48) as u16 & 0xfff,
        event::flag::GN | event::flag::PR | event::flag::PE | event::flag::RW | us
    );
    assert_eq!(events[2], [0x2000_0000_0000_0020 | u64::from(n.hdom_id()) << 32, RAM + 0x1000]);
    assert!(e[2].starts_with("Event logged [IO_PAGE_FAULT device=0000:00:04.0 domain="), "{}", e[2]);
}

#[test]
fn nested_dirty_tracking_marks_the_parent() {
    let g = Guest::with_parent(DriverParams::default(), true);
    let root = g.table();
    g.set_gcr3(0, root);
    g.map_guest(root, 4, 0x40_0000, 0x80_5000, GT, 0);
    let n = g.nested(3);
    g.dev.check_attach(&*n).unwrap();
    // Off: a write marks nothing in the parent.
    n.translate(0x40_0000, Access::Write).unwrap();
    let parent = v1(&g.parent);
    assert_eq!(parent.table().walk(0x80_5000).unwrap().0 & (pte::A | pte::D), 0);
    // On: HAD in the nested DTE, and the write (after the flush of the
    // host domain IDs) sets D in the parent's 2 MiB leaf.
    g.parent.dirty_ops().unwrap().set_dirty_tracking(true).unwrap();
    assert_eq!(g.dev.dte().had(), 3);
    assert!(g.dev.dte().gv(), "still the nested entry");
    n.translate(0x40_0000, Access::Read).unwrap();
    assert_eq!(parent.table().walk(0x80_5000).unwrap().0 & pte::D, 0);
    n.translate(0x40_0008, Access::Write).unwrap();
    let (e, level) = parent.table().walk(0x80_5000).unwrap();
    assert_eq!((e & pte::D, level), (pte::D, 1));
    let mut seen = Vec::new();
    let mut rec = |iova: u64, len: u64| seen.push((iova, len));
    g.parent.dirty_ops().unwrap().read_and_clear_dirty(0, RAM, false, Some(&mut rec)).unwrap();
    assert!(seen.contains(&(0x80_0000, M2)), "{seen:x?}");
}

// ---- property test: the nested walk against a reference map ----

#[derive(Clone, Debug)]
struct GuestMap {
    iova_slot: u64,
    gpa_slot: u64,
    leaf_level: u32,
    writable: bool,
}

fn guest_map() -> impl Strategy<Value = GuestMap> {
    (0u64..64, 0u64..16, prop_oneof![4 => Just(0u32), 1 => Just(1u32)], any::<bool>())
        .prop_map(|(iova_slot, gpa_slot, leaf_level, writable)| GuestMap { iova_slot, gpa_slot, leaf_level, writable })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn nested_walk_matches_reference(maps in proptest::collection::vec(guest_map(), 1..24), probes in proptest::collection::vec(0u64..(1 << 30), 32)) {
        let g = Guest::new(DriverParams::default());
        let root = g.table();
        g.set_gcr3(0, root);
        // Reference: guest pages by IOVA -> (size, gpa, writable); later
        // maps of the same slot replace earlier ones, as writing a PTE does.
        let mut model: BTreeMap<u64, (u64, u64, bool)> = BTreeMap::new();
        for m in &maps {
            let size = 1u64 << (12 + 9 * m.leaf_level);
            // IOVAs spread over 1 GiB at 16 MiB strides (distinct PDs), GPAs
            // in the parent's 64 MiB above the tables.
            let iova = (m.iova_slot << 24) + if m.leaf_level == 0 { (m.gpa_slot & 7) << 12 } else { 0 };
            let gpa = (32 << 20) + (m.gpa_slot << 21);
            if model
                .range(iova.saturating_sub(M2 - 1)..iova + size)
                .any(|(&i, &(s, _, _))| i + s > iova && !(i == iova && s == size))
            {
                continue;
            }
            let bits = fspte::P | fspte::US | fspte::A | if m.writable { fspte::RW } else { 0 };
            g.map_guest(root, 4, iova, gpa, bits, m.leaf_level);
            model.insert(iova, (size, gpa, m.writable));
        }
        let n = g.nested(3);
        for &p in &probes {
            // Probe near mapped pages as well as anywhere.
            for iova in [p, model.keys().nth((p as usize) % model.len().max(1)).copied().unwrap_or(0) + (p & 0xfff)] {
                let want = model.range(..=iova).next_back().and_then(|(&i, &(s, gpa, w))| {
                    (iova < i + s).then(|| (HOST_BASE + gpa + (iova - i), w))
                });
                for access in [Access::Read, Access::Write] {
                    let got = n.translate(iova, access);
                    match want {
                        None => prop_assert_eq!(got, Err(Fault::NotPresent), "iova {:#x}", iova),
                        Some((pa, w)) => {
                            if access == Access::Write && !w {
                                prop_assert_eq!(got, Err(Fault::Permission), "iova {:#x}", iova);
                            } else {
                                prop_assert_eq!(got.map(|t| t.paddr), Ok(pa), "iova {:#x}", iova);
                            }
                        }
                    }
                }
            }
        }
        // The IOTLB entries made by all that serve the same answers.
        for &p in &probes {
            let a = n.translate(p, Access::Read).map(|t| t.paddr);
            let b = n.translate(p, Access::Read).map(|t| t.paddr);
            prop_assert_eq!(a, b);
        }
    }
}

/// Rough costs of the v1 domain's map/unmap and their parts. Run with
/// `cargo test -p uiommufd-hw --release -- --ignored --nocapture amd_timing`.
#[test]
#[ignore]
fn amd_timing() {
    let u = unit();
    let d = u.alloc_v1(false, false).unwrap();
    let n = 20_000u64;
    let t = std::time::Instant::now();
    for i in 0..n {
        let iova = (i % 64) << 21;
        d.map_pages(iova, 1 << 32, K4, 256, RW).unwrap();
        d.unmap_pages(iova, K4, 256);
    }
    println!("map+unmap 256: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
    let t = std::time::Instant::now();
    for i in 0..n {
        let iova = (i % 64) << 21;
        d.table().map(iova, 1 << 32, K4, 256, RW).unwrap();
        d.table().unmap(iova, K4, 256);
    }
    println!("table map+unmap 256: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
    let (mut m, mut um) = (0u128, 0u128);
    for i in 0..n {
        let iova = (i % 64) << 21;
        let t = std::time::Instant::now();
        d.map_pages(iova, 1 << 32, K4, 256, RW).unwrap();
        let t1 = std::time::Instant::now();
        d.unmap_pages(iova, K4, 256);
        m += (t1 - t).as_nanos();
        um += t1.elapsed().as_nanos();
    }
    println!("domain map {:.1} unmap {:.1}", m as f64 / n as f64, um as f64 / n as f64);
    let (mut m, mut um) = (0u128, 0u128);
    for i in 0..n {
        let iova = (i % 64) << 21;
        let t = std::time::Instant::now();
        d.table().map(iova, 1 << 32, K4, 256, RW).unwrap();
        let t1 = std::time::Instant::now();
        d.table().unmap(iova, K4, 256);
        m += (t1 - t).as_nanos();
        um += t1.elapsed().as_nanos();
    }
    println!("table map {:.1} unmap {:.1}", m as f64 / n as f64, um as f64 / n as f64);
    let t = std::time::Instant::now();
    for _ in 0..n {
        d.flush_pages(0, 0xfffff, 0);
    }
    println!("flush: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
    let t = std::time::Instant::now();
    for _ in 0..n {
        u.issue(&[cmd::inv_iommu_pages(0, 0xfffff, 1, 0, 0)]);
    }
    println!("issue one inv: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(u.host_tlb().stats());
    }
    println!("stats: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
}

#[test]
fn an_iommu_caching_non_present_entries_gets_map_flushes() {
    // A virtual IOMMU (NpCache): amd_iommu_iotlb_sync_map() flushes what a
    // map wrote, with PDE; bare metal flushes nothing on map.
    for (np_cache, want) in [(true, true), (false, false)] {
        let u = unit_with(DriverParams { np_cache, ..DriverParams::default() });
        let d = u.alloc_v1(false, false).unwrap();
        let n = u.recent_commands().len();
        crate::map(&*d, 0x20_0000, 1 << 32, 2 * K4, RW, 0).unwrap();
        let inv = cmd::inv_iommu_pages(0x20_0000, 0x20_1fff, d.id(), 0, cmd::PAGES_PDE);
        assert_eq!(commands_since(&u, n).contains(&inv), want, "np_cache={np_cache}");
    }
}
