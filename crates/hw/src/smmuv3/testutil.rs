//! Test fixtures: a vIOMMU core double and a guest with memory behind an
//! SMMU (a nesting parent mapping guest RAM, a vSMMU, a vDEVICE), with
//! helpers that build CD tables and stage 1 tables in guest memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use uiommufd_abi::{Errno, IommuHwptArmSmmuv3, IOMMU_HWPT_DATA_ARM_SMMUV3, IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3};
use zerocopy::IntoBytes;

use super::device::{SmmuDevice, SmmuIommu};
use super::lpae::desc;
use super::regs::SmmuRegs;
use super::ste::stef;
use super::viommu::SmmuViommu;
use crate::device::{IommuDevice, PagingRequest, ViommuCore, ViommuDriver};
use crate::{Domain, Prot, UserData, UserDataArray};

/// The engine half of a vIOMMU, for tests: vDEVICEs and a log of events.
#[derive(Default)]
pub struct TestCore {
    pub vdevs: Mutex<Vec<(u64, Arc<dyn IommuDevice>)>>,
    pub events: Mutex<Vec<(u32, Vec<u8>)>>,
    /// mmap offsets handed out so far.
    pub mmaps: Mutex<u64>,
}

impl ViommuCore for TestCore {
    fn report_event(&self, veventq_type: u32, data: &[u8]) -> Result<(), Errno> {
        self.events.lock().unwrap().push((veventq_type, data.to_vec()));
        Ok(())
    }

    fn find_dev(&self, virt_id: u64) -> Option<Arc<dyn IommuDevice>> {
        self.vdevs.lock().unwrap().iter().find(|(id, _)| *id == virt_id).map(|(_, d)| Arc::clone(d))
    }

    fn vdev_id(&self, dev: &dyn IommuDevice) -> Option<u64> {
        let vdevs = self.vdevs.lock().unwrap();
        vdevs.iter().find(|(_, d)| std::ptr::addr_eq(Arc::as_ptr(d), dev as *const dyn IommuDevice)).map(|(id, _)| *id)
    }

    fn alloc_mmap(&self, length: u64) -> Result<u64, Errno> {
        let mut next = self.mmaps.lock().unwrap();
        let at = 0x1000 + *next;
        *next += length;
        Ok(at)
    }
}

/// Guest RAM starts at this host physical address.
pub const HOST_BASE: u64 = 1 << 32;
/// Guest RAM size (mapped by the nesting parent with 2MB blocks).
pub const RAM: u64 = 64 << 20;
/// The master's StreamID and its virtual StreamID.
pub const SID: u32 = 0x10;
pub const VSID: u64 = 7;
/// Where the fixtures put guest structures.
pub const CD_TABLE: u64 = 0x10_0000;
pub const S1_ROOT: u64 = 0x20_0000;
const S1_TABLES: u64 = 0x20_1000;

pub const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);
pub const RWC: Prot = Prot(Prot::READ.0 | Prot::WRITE.0 | Prot::CACHE.0);

pub use super::guest::{cd_word0 as guest_cd_word0, PAGE};

/// The guest STE of a linear CD table at [`CD_TABLE`] with `cdmax`
/// SubstreamID bits and `dss`.
pub fn vste_linear(cdmax: u64, dss: u64) -> [u64; 2] {
    [stef::V | stef::CFG_S1_TRANS << 1 | CD_TABLE | cdmax << stef::S1CDMAX_SHIFT, dss]
}

/// A guest behind an SMMU.
pub struct Guest {
    pub unit: Arc<SmmuIommu>,
    pub dev: Arc<SmmuDevice>,
    pub parent: Arc<dyn Domain>,
    pub core: Arc<TestCore>,
    pub viommu: Arc<SmmuViommu>,
    /// Host memory: 8-byte words by host physical address.
    pub mem: Arc<RwLock<HashMap<u64, u64>>>,
    /// Next free guest page for stage 1 tables.
    next_table: Mutex<u64>,
}

impl Guest {
    /// The default SMMU.
    pub fn new() -> Guest {
        Self::with_regs(SmmuRegs::default())
    }

    pub fn with_regs(regs: SmmuRegs) -> Guest {
        Self::with_params(regs, super::info::DriverParams::default())
    }

    pub fn with_params(regs: SmmuRegs, params: super::info::DriverParams) -> Guest {
        let unit = SmmuIommu::with_params(regs, params).unwrap();
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
        let dev = Arc::new(SmmuDevice::new(&unit, "0000:01:00.0", SID).unwrap().with_pasid(20));
        let parent = dev.alloc_paging(&PagingRequest { nest_parent: true, ..Default::default() }).unwrap();
        crate::map(&*parent, 0, HOST_BASE, RAM, RWC, 0).unwrap();
        let core = Arc::new(TestCore::default());
        let dyn_dev: Arc<dyn IommuDevice> = dev.clone();
        core.vdevs.lock().unwrap().push((VSID, dyn_dev));
        let weak: Weak<dyn ViommuCore> = Arc::downgrade(&core) as Weak<dyn ViommuCore>;
        let viommu = SmmuViommu::init(&unit, &parent, weak).unwrap();
        Guest { unit, dev, parent, core, viommu, mem, next_table: Mutex::new(S1_TABLES) }
    }

    /// Write a word of guest memory.
    pub fn write(&self, gpa: u64, v: u64) {
        self.mem.write().unwrap().insert(HOST_BASE + gpa, v);
    }

    pub fn read(&self, gpa: u64) -> u64 {
        self.mem.read().unwrap().get(&(HOST_BASE + gpa)).copied().unwrap_or(0)
    }

    /// Write the CD at `gpa`: `w0`, TTB0, no TTB1, the driver's MAIR.
    pub fn write_cd(&self, gpa: u64, w0: u64, ttb0: u64) {
        self.write(gpa, w0);
        self.write(gpa + 8, ttb0);
        self.write(gpa + 16, 0);
        self.write(gpa + 24, 0xf404_ff44);
    }

    /// Map the 4KB page at `iova` to `gpa` with `attrs` in the 4-level
    /// table at `root`, creating tables as needed.
    pub fn map_s1(&self, root: u64, iova: u64, gpa: u64, attrs: u64) {
        self.map_s1_at(root, iova, gpa, attrs, 3);
    }

    /// Map a leaf at lookup level `leaf_level` (3: 4KB, 2: 2MB, 1: 1GB).
    pub fn map_s1_at(&self, root: u64, iova: u64, gpa: u64, attrs: u64, leaf_level: u32) {
        let mut table = root;
        for level in 0..leaf_level {
            let idx = (iova >> (12 + 9 * (3 - level))) & 511;
            let e = self.read(table + idx * 8);
            table = if e & desc::VALID != 0 {
                e & desc::ADDR
            } else {
                let mut next = self.next_table.lock().unwrap();
                let t = *next;
                *next += 0x1000;
                self.write(table + idx * 8, t | desc::TYPE_TABLE);
                t
            };
        }
        let idx = (iova >> (12 + 9 * (3 - leaf_level))) & 511;
        let ty = if leaf_level == 3 { 0 } else { desc::TYPE };
        self.write(table + idx * 8, gpa | (attrs & !ty));
    }

    /// The address of the level 3 descriptor mapping `iova` (after
    /// [`map_s1`](Self::map_s1)).
    pub fn pte_addr(&self, root: u64, iova: u64) -> u64 {
        let mut table = root;
        for level in 0..3 {
            let idx = (iova >> (12 + 9 * (3 - level))) & 511;
            table = self.read(table + idx * 8) & desc::ADDR;
        }
        table + ((iova >> 12) & 511) * 8
    }

    /// A nested domain of the vSMMU from guest STE words.
    pub fn nested(&self, ste: [u64; 2]) -> Result<Arc<dyn Domain>, Errno> {
        self.nested_raw(IOMMU_HWPT_DATA_ARM_SMMUV3, 16, 0, ste)
    }

    pub fn nested_raw(&self, ty: u32, len: u32, flags: u32, ste: [u64; 2]) -> Result<Arc<dyn Domain>, Errno> {
        let arg = IommuHwptArmSmmuv3 { ste };
        let bytes = arg.as_bytes().to_vec();
        let mut rd = move |buf: &mut [u8]| -> Result<(), Errno> {
            let n = buf.len().min(bytes.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            Ok(())
        };
        let mut data = UserData { data_type: ty, len, reader: &mut rd };
        self.viommu.alloc_domain_nested(flags, &mut data)
    }

    /// A nested domain attached to the master.
    pub fn attached(&self, ste: [u64; 2]) -> Arc<dyn Domain> {
        let d = self.nested(ste).unwrap();
        self.dev.check_attach(&*d).unwrap();
        d
    }

    /// `IOMMU_HWPT_INVALIDATE` on the vIOMMU with 16-byte commands.
    pub fn invalidate(&self, cmds: &[[u64; 2]]) -> (Result<(), Errno>, u32) {
        let bytes: Vec<u8> = cmds.iter().flat_map(|c| c.as_bytes().to_vec()).collect();
        self.invalidate_raw(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, &bytes, 16, cmds.len() as u32)
    }

    /// The same with raw entries of `entry_len` bytes, read with the
    /// extensible-struct rules (zero-extended when short, `E2BIG` for
    /// non-zero bytes past 16, `EFAULT` past the buffer).
    pub fn invalidate_raw(&self, ty: u32, bytes: &[u8], entry_len: u32, num: u32) -> (Result<(), Errno>, u32) {
        let len = entry_len as usize;
        let mut reader = |i: u32, buf: &mut [u8]| -> Result<(), Errno> {
            let start = i as usize * len;
            let src = bytes.get(start..start + len).ok_or(Errno::EFAULT)?;
            let n = len.min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            buf[n..].fill(0);
            if src[n..].iter().any(|&b| b != 0) {
                return Err(Errno::E2BIG);
            }
            Ok(())
        };
        let mut array = UserDataArray { data_type: ty, entry_len, entry_num: num, reader: &mut reader };
        let r = self.viommu.cache_invalidate(&mut array);
        (r, array.entry_num)
    }
}
