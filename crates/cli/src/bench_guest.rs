//! Guest set-ups of the SMMUv3 and VT-d benchmark rows (`bench_smmu`,
//! `bench_amd`), shared with `examples/smmu_hit_profile.rs` (which
//! includes this file as a module): nested domains over guest tables in a
//! word map standing for physical memory, and the VT-d second-stage
//! domain the walk rows use. Nothing here depends on the rest of the
//! binary.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use uiommufd_abi::{self as abi, Errno};
use uiommufd_hw::device::{IommuDevice, PagingRequest, ViommuCore};
use uiommufd_hw::smmuv3::guest;
use uiommufd_hw::smmuv3::lpae::mair;
use uiommufd_hw::smmuv3::ste::stef;
use uiommufd_hw::smmuv3::{SmmuDevice, SmmuIommu, SmmuRegs};
use uiommufd_hw::vtd::fl::fspte;
use uiommufd_hw::vtd::sl::{SlConfig, VtdSlDomain};
use uiommufd_hw::vtd::{VtdDevice, VtdIommu, VtdRegs};
use uiommufd_hw::{Domain, Prot, UserData};
use zerocopy::IntoBytes;

pub(crate) const K4: u64 = 1 << 12;
/// Guest RAM: 64 MiB at host physical 4 GiB.
pub(crate) const HOST: u64 = 1 << 32;
pub(crate) const RAM: u64 = 64 << 20;
/// The guest IOVA both guests map, to guest physical 3 MiB.
pub(crate) const IOVA: u64 = 0x12_3456_7000;
pub(crate) const TARGET_GPA: u64 = 0x30_0000;
const VSID: u64 = 7;

/// Physical memory as 64-bit words.
#[derive(Clone, Default)]
pub(crate) struct Mem(Arc<RwLock<HashMap<u64, u64>>>);

impl Mem {
    pub(crate) fn set(&self, gpa: u64, v: u64) {
        self.0.write().unwrap().insert(HOST + gpa, v);
    }
    pub(crate) fn reader(&self) -> Arc<dyn Fn(u64) -> Result<u64, Errno> + Send + Sync> {
        let m = self.clone();
        Arc::new(move |pa| Ok(m.0.read().unwrap().get(&pa).copied().unwrap_or(0)))
    }
    /// A 4-level table of 4 KiB pages from `root` mapping `iova` to
    /// `target`, tables at `root + 0x1000..`, in either format.
    pub(crate) fn four_levels(&self, root: u64, iova: u64, table: u64, leaf: u64) {
        let mut at = root;
        for level in 0..4u32 {
            let idx = guest::index(iova, level);
            let next = if level == 3 { TARGET_GPA | leaf } else { (root + K4 * u64::from(level + 1)) | table };
            self.set(at + idx * 8, next);
            at = root + K4 * u64::from(level + 1);
        }
    }
}

/// The engine half of a vIOMMU with one vDEVICE.
struct OneVdev(Arc<dyn IommuDevice>);

impl ViommuCore for OneVdev {
    fn report_event(&self, _ty: u32, _data: &[u8]) -> Result<(), Errno> {
        Ok(())
    }
    fn find_dev(&self, virt_id: u64) -> Option<Arc<dyn IommuDevice>> {
        (virt_id == VSID).then(|| Arc::clone(&self.0))
    }
    fn vdev_id(&self, dev: &dyn IommuDevice) -> Option<u64> {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), dev as *const dyn IommuDevice).then_some(VSID)
    }
    fn alloc_mmap(&self, _length: u64) -> Result<u64, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}

pub(crate) fn user_data<R>(data_type: u32, bytes: &[u8], f: impl FnOnce(&mut UserData<'_>) -> R) -> R {
    let mut rd = |buf: &mut [u8]| {
        buf.copy_from_slice(&bytes[..buf.len()]);
        Ok(())
    };
    f(&mut UserData { data_type, len: bytes.len() as u32, reader: &mut rd })
}

/// A nested domain of an SMMUv3 vIOMMU, attached: the guest's CD 0 and
/// 4-level stage 1 in guest memory. Returns it with what keeps it alive.
pub(crate) fn smmu_nested() -> (Arc<dyn Domain>, Box<dyn std::any::Any>) {
    let mem = Mem::default();
    let unit = SmmuIommu::new(SmmuRegs::default()).expect("SMMU");
    unit.set_phys_reader(mem.reader());
    let dev: Arc<dyn IommuDevice> = Arc::new(SmmuDevice::new(&unit, "0000:00:04.0", 0x20).expect("master"));
    let parent = dev.alloc_paging(&PagingRequest { nest_parent: true, ..Default::default() }).expect("parent");
    uiommufd_hw::map(&*parent, 0, HOST, RAM, Prot::READ | Prot::WRITE | Prot::CACHE, 0).expect("stage 2");
    let core: Arc<dyn ViommuCore> = Arc::new(OneVdev(Arc::clone(&dev)));
    let weak: Weak<dyn ViommuCore> = Arc::downgrade(&core);
    let init = dev.viommu_init(abi::IOMMU_VIOMMU_TYPE_ARM_SMMUV3, &parent, None, weak).expect("vSMMU");
    let cd = 0x10_0000;
    let w0 = guest::cd_word0(5);
    mem.set(cd, w0);
    mem.set(cd + 8, 0x20_0000);
    mem.set(cd + 24, mair::VALUE);
    mem.four_levels(0x20_0000, IOVA, guest::TABLE, guest::PAGE);
    let vste = abi::IommuHwptArmSmmuv3 { ste: [stef::V | stef::CFG_S1_TRANS << stef::CFG_SHIFT | cd, 0] };
    let nested = user_data(abi::IOMMU_HWPT_DATA_ARM_SMMUV3, vste.as_bytes(), |d| init.driver.alloc_domain_nested(0, d))
        .expect("nested domain");
    dev.check_attach(&*nested).expect("attach");
    (nested, Box::new((dev, parent, core, init.driver)))
}

/// A VT-d nested domain, attached: the guest's 4-level first stage.
pub(crate) fn vtd_nested() -> (Arc<dyn Domain>, Box<dyn std::any::Any>) {
    let mem = Mem::default();
    let unit = VtdIommu::new(VtdRegs::default()).expect("VT-d");
    unit.set_phys_reader(mem.reader());
    let dev: Arc<dyn IommuDevice> = Arc::new(VtdDevice::new(&unit, "0000:00:04.0"));
    let parent = dev.alloc_paging(&PagingRequest { nest_parent: true, ..Default::default() }).expect("parent");
    uiommufd_hw::map(&*parent, 0, HOST, RAM, Prot::READ | Prot::WRITE | Prot::CACHE, 0).expect("second stage");
    let bits = fspte::P | fspte::RW | fspte::US;
    mem.four_levels(0x20_0000, IOVA, bits, bits);
    let s1 = abi::IommuHwptVtdS1 { flags: 0, pgtbl_addr: 0x20_0000, addr_width: 48, __reserved: 0 };
    let nested = user_data(abi::IOMMU_HWPT_DATA_VTD_S1, s1.as_bytes(), |d| dev.alloc_nested(&parent, 0, d))
        .expect("nested domain");
    dev.check_attach(&*nested).expect("attach");
    (nested, Box::new((dev, parent)))
}

/// A VT-d second-stage domain (4 levels, 48-bit, 4 KiB / 2 MiB / 1 GiB
/// leaves) as the Intel driver allocates for a modern unit.
pub(crate) fn vtd_domain() -> VtdSlDomain {
    let cfg = SlConfig {
        agaw: 2,
        gaw: 48,
        pgsize_bitmap: K4 | (K4 << 9) | (K4 << 18),
        force_snooping: false,
        nest_parent: false,
        dirty_ops: false,
        coherent: true,
        iotlb_sync_map: false,
    };
    VtdSlDomain::new(cfg).expect("vtd domain")
}
