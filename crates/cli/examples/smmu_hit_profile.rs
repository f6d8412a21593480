//! Loops of the `bench_smmu` rows' translations for instruction profiles:
//! the SMMUv3 nested TLB hit and stage 1 warm walk beside VT-d's nested
//! IOTLB hit and second-stage walk (docs/BENCHMARKS.md, "Arm SMMUv3
//! model, beside VT-d in the same run"):
//!
//! ```sh
//! cargo build --release -p uiommufd --example smmu_hit_profile
//! valgrind --tool=callgrind --toggle-collect='*smmu_hit_profile::run_loop*' \
//!     target/release/examples/smmu_hit_profile smmu_hit 2000
//! ```
//!
//! Modes: `smmu_hit`, `vtd_hit`, `smmu_walk`, `vtd_walk`; per translation =
//! (count at N=2000 - count at N=1000) / 1000.
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, RwLock, Weak};

use uiommufd_abi::{self as abi, Errno};
use uiommufd_hw::device::{IommuDevice, PagingRequest, ViommuCore};
use uiommufd_hw::smmuv3::guest;
use uiommufd_hw::smmuv3::lpae::mair;
use uiommufd_hw::smmuv3::ste::stef;
use uiommufd_hw::smmuv3::{SmmuDevice, SmmuIommu, SmmuRegs};
use uiommufd_hw::vtd::fl::fspte;
use uiommufd_hw::vtd::sl::SlConfig;
use uiommufd_hw::vtd::{VtdDevice, VtdIommu, VtdRegs};
use uiommufd_hw::{Access, Domain, Prot, UserData};
use zerocopy::IntoBytes;

const K4: u64 = 1 << 12;
const HOST: u64 = 1 << 32;
const RAM: u64 = 64 << 20;
const IOVA: u64 = 0x12_3456_7000;
const TARGET_GPA: u64 = 0x30_0000;
const VSID: u64 = 7;

#[derive(Clone, Default)]
struct Mem(Arc<RwLock<HashMap<u64, u64>>>);
impl Mem {
    fn set(&self, gpa: u64, v: u64) {
        self.0.write().unwrap().insert(HOST + gpa, v);
    }
    fn reader(&self) -> Arc<dyn Fn(u64) -> Result<u64, Errno> + Send + Sync> {
        let m = self.clone();
        Arc::new(move |pa| Ok(m.0.read().unwrap().get(&pa).copied().unwrap_or(0)))
    }
    fn four_levels(&self, root: u64, iova: u64, table: u64, leaf: u64) {
        let mut at = root;
        for level in 0..4u32 {
            let idx = guest::index(iova, level);
            let next = if level == 3 { TARGET_GPA | leaf } else { (root + K4 * u64::from(level + 1)) | table };
            self.set(at + idx * 8, next);
            at = root + K4 * u64::from(level + 1);
        }
    }
}
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
fn user_data<R>(data_type: u32, bytes: &[u8], f: impl FnOnce(&mut UserData<'_>) -> R) -> R {
    let mut rd = |buf: &mut [u8]| {
        buf.copy_from_slice(&bytes[..buf.len()]);
        Ok(())
    };
    f(&mut UserData { data_type, len: bytes.len() as u32, reader: &mut rd })
}
fn smmu_nested() -> (Arc<dyn Domain>, Box<dyn std::any::Any>) {
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
    mem.set(cd, guest::cd_word0(5));
    mem.set(cd + 8, 0x20_0000);
    mem.set(cd + 24, mair::VALUE);
    mem.four_levels(0x20_0000, IOVA, guest::TABLE, guest::PAGE);
    let vste = abi::IommuHwptArmSmmuv3 { ste: [stef::V | stef::CFG_S1_TRANS << stef::CFG_SHIFT | cd, 0] };
    let nested = user_data(abi::IOMMU_HWPT_DATA_ARM_SMMUV3, vste.as_bytes(), |d| init.driver.alloc_domain_nested(0, d))
        .expect("nested domain");
    dev.check_attach(&*nested).expect("attach");
    (nested, Box::new((dev, parent, core, init.driver)))
}
fn vtd_nested() -> (Arc<dyn Domain>, Box<dyn std::any::Any>) {
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

#[inline(never)]
fn run_loop_hit(d: &dyn Domain, n: u64) {
    let t0 = std::time::Instant::now();
    let d = black_box(d);
    let mut i = 0u64;
    for _ in 0..n {
        i = i.wrapping_add(8);
        black_box(d.translate(black_box(IOVA + (i & 0xff8)), Access::Read).ok());
    }
    if n > 100_000 {
        eprintln!("{:.2} ns", t0.elapsed().as_nanos() as f64 / n as f64);
    }
}
#[inline(never)]
fn run_loop_walk(d: &dyn Domain, n: u64) {
    let t0 = std::time::Instant::now();
    let d = black_box(d);
    let mut i = 0u64;
    for _ in 0..n {
        i = i.wrapping_add(1);
        black_box(d.translate(black_box((i & 1023) << 12), Access::Read).ok());
    }
    if n > 100_000 {
        eprintln!("{:.2} ns", t0.elapsed().as_nanos() as f64 / n as f64);
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    match mode.as_str() {
        "smmu_hit" | "vtd_hit" => {
            let (d, _k) = if mode == "smmu_hit" { smmu_nested() } else { vtd_nested() };
            let t = d.translate(IOVA, Access::Read).expect("maps");
            assert_eq!(t.paddr, HOST + TARGET_GPA);
            run_loop_hit(&*d, n);
        }
        "smmu_walk" => {
            let unit = SmmuIommu::new(SmmuRegs::default()).expect("SMMU");
            let master = SmmuDevice::new(&unit, "0000:00:04.0", 0x20).expect("master");
            let s1 = master.alloc_paging(&PagingRequest::default()).expect("s1");
            s1.map_pages(0, HOST, K4, 1024, Prot::READ | Prot::WRITE | Prot::CACHE).expect("map");
            run_loop_walk(&*s1, n);
        }
        "vtd_walk" => {
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
            let d = uiommufd_hw::vtd::sl::VtdSlDomain::new(cfg).expect("vtd");
            d.map_pages(0, HOST, K4, 1024, Prot::READ | Prot::WRITE | Prot::CACHE).expect("map");
            run_loop_walk(&d, n);
        }
        _ => panic!("mode"),
    }
}
