//! NVIDIA Tegra241 CMDQV ("command queue virtualization"), the SMMUv3
//! extension of Grace-class parts, and what Linux 7.3's
//! `drivers/iommu/arm/arm-smmu-v3/tegra241-cmdqv.c` lets user space do with
//! it: a vIOMMU of type `IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV` owns a virtual
//! interface (VINTF), its VCMDQs are `IOMMU_HW_QUEUE_ALLOC`ed in guest
//! memory, and the guest drives them itself through the VINTF's MMIO page
//! (mmap'ed from the iommufd): commands it writes into a queue are consumed
//! by the SMMU without a trap to the host.
//!
//! Model:
//! - [`Cmdqv`]: the unit's `PARAM` (version, VINTFs, VCMDQs, StreamID
//!   mappings per VINTF) and VINTF allocation (VINTF 0 is the kernel's);
//!   `IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV` reports it
//!   (`tegra241_cmdqv_hw_info()`);
//! - [`Vintf`]: one user VINTF, the vIOMMU's driver half. It is an ARM
//!   vSMMU too (nested domains, `IOMMU_HWPT_INVALIDATE` of the commands a
//!   VCMDQ does not take, events) and adds: vDEVICEs program a pair of
//!   `SID_MATCH`/`SID_REPLACE` registers (`tegra241_vintf_init_vsid()`),
//!   HW queues become logical VCMDQs with the driver's checks
//!   (`tegra241_vintf_alloc_lvcmdq_user()`), and the VINTF page 0 (the
//!   LVCMDQs' `CONS`, `PROD`, `CONFIG`, `STATUS`, `GERROR`, `GERRORN`,
//!   0x80 bytes each) is served by [`Vintf::mmio_read`] / [`Vintf::mmio_write`];
//! - a write of `PROD` to an enabled LVCMDQ makes the model consume the
//!   commands between `CONS` and `PROD` from the queue memory (the physical
//!   pages the core pinned), as the hardware does. A guest-owned queue
//!   (`HYP_OWN` clear) takes `CMD_TLBI_NH_ASID`, `CMD_TLBI_NH_VA`,
//!   `CMD_ATC_INV` and `CMD_SYNC` (the set the driver's
//!   `tegra241_guest_vcmdq_supports_cmd()` relies on); the VMID is the
//!   VINTF's and a virtual StreamID is replaced through the SID table. Any
//!   other command, a RES0 bit set or an unmapped virtual StreamID stops
//!   the queue with `CONS.ERR = CERROR_ILL`, toggles `GERROR` and reports
//!   the LVCMDQ in an `IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV` event
//!   (`tegra241_vintf_user_handle_error()`); acknowledging through
//!   `GERRORN` resumes it.
//!
//! The `PARAM` defaults (version 1, 4 VINTFs, 16 VCMDQs so 4 per VINTF, 16
//! StreamID mappings) are the model's, configurable; NVIDIA documents the
//! real part's in its TRM only.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_abi::{
    Errno, IommuHwInfoTegra241Cmdqv, IommuVeventTegra241Cmdqv, IommuViommuTegra241Cmdqv,
    IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
};
use zerocopy::IntoBytes;

use super::cmd::{self, op};
use super::device::{SmmuDevice, SmmuIommu};
use super::viommu::SmmuViommu;
use crate::device::{HwQueueInit, IommuDevice, ViommuCore, ViommuDriver};
use crate::{Domain, UserData, UserDataArray};

/// `CMDQV_PARAM` fields (`TEGRA241_CMDQV_PARAM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdqvParams {
    /// `CMDQV_VER` (bits 3:0).
    pub version: u8,
    /// `CMDQV_NUM_VCMDQ_LOG2` (bits 7:4).
    pub log2_vcmdqs: u8,
    /// `CMDQV_NUM_VINTF_LOG2` (bits 11:8).
    pub log2_vintfs: u8,
    /// `CMDQV_NUM_SID_PER_VM_LOG2` (bits 15:12).
    pub log2_sids_per_vintf: u8,
}

impl Default for CmdqvParams {
    fn default() -> Self {
        CmdqvParams { version: 1, log2_vcmdqs: 4, log2_vintfs: 2, log2_sids_per_vintf: 4 }
    }
}

impl CmdqvParams {
    /// The `PARAM` register.
    pub const fn param(&self) -> u32 {
        (self.version as u32 & 0xf)
            | (self.log2_vcmdqs as u32 & 0xf) << 4
            | (self.log2_vintfs as u32 & 0xf) << 8
            | (self.log2_sids_per_vintf as u32 & 0xf) << 12
    }

    pub const fn num_vintfs(&self) -> u32 {
        1 << self.log2_vintfs
    }

    /// `num_lvcmdqs_per_vintf = num_vcmdqs / num_vintfs`.
    pub const fn lvcmdqs_per_vintf(&self) -> u32 {
        (1u32 << self.log2_vcmdqs) / self.num_vintfs()
    }

    pub const fn sids_per_vintf(&self) -> u32 {
        1 << self.log2_sids_per_vintf
    }
}

/// The size of a VINTF's page 0, the mmap'able window.
pub const VINTF_PAGE_SIZE: u64 = 64 << 10;
/// Bytes of one LVCMDQ's registers in page 0.
pub const LVCMDQ_STRIDE: u64 = 0x80;
/// LVCMDQ page 0 register offsets (`TEGRA241_VCMDQ_*`).
pub mod reg {
    pub const CONS: u64 = 0x00;
    pub const PROD: u64 = 0x04;
    pub const CONFIG: u64 = 0x08;
    pub const STATUS: u64 = 0x0c;
    pub const GERROR: u64 = 0x10;
    pub const GERRORN: u64 = 0x14;
    /// `CONFIG.EN` / `STATUS.ENABLED`.
    pub const EN: u32 = 1 << 0;
    /// `CONS.ERR` (bits 30:24): the command error.
    pub const CONS_ERR_SHIFT: u32 = 24;
    pub const CONS_ERR: u32 = 0x7f << 24;
    /// `CMDQ_ERR_CERROR_ILL_IDX`.
    pub const CERROR_ILL: u32 = 1;
    /// `GERROR.CMDQ_ERR` (bit 0).
    pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
}
/// `VCMDQ_ADDR`: the queue base bits a `BASE` register holds (47:5).
pub const VCMDQ_ADDR: u64 = ((1u64 << 48) - 1) & !0x1f;
/// `CMDQ_ENT_SZ_SHIFT`: commands are 16 bytes.
const CMD_SHIFT: u32 = 4;
/// The largest virtual StreamID a `SID_MATCH` register holds (20 bits).
pub const VSID_MAX: u64 = (1 << 20) - 1;

/// The CMDQV of an SMMU.
pub struct Cmdqv {
    params: CmdqvParams,
    /// VINTFs in use; VINTF 0 is the kernel's own.
    vintfs: Mutex<Vec<bool>>,
}

impl core::fmt::Debug for Cmdqv {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cmdqv").field("params", &self.params).finish_non_exhaustive()
    }
}

impl Cmdqv {
    pub fn new(params: CmdqvParams) -> Self {
        let mut used = vec![false; params.num_vintfs() as usize];
        used[0] = true;
        Cmdqv { params, vintfs: Mutex::new(used) }
    }

    pub fn params(&self) -> &CmdqvParams {
        &self.params
    }

    /// `tegra241_cmdqv_hw_info()`.
    pub fn hw_info(&self) -> IommuHwInfoTegra241Cmdqv {
        IommuHwInfoTegra241Cmdqv {
            flags: 0,
            version: self.params.version,
            log2vcmdqs: self.params.lvcmdqs_per_vintf().trailing_zeros() as u8,
            log2vsids: self.params.log2_sids_per_vintf,
            __reserved: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<bool>> {
        self.vintfs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `ida_alloc_max()` of a VINTF index: the lowest free (`ENOSPC`).
    fn alloc_vintf(&self) -> Result<u32, Errno> {
        let mut used = self.lock();
        let idx = used.iter().position(|u| !u).ok_or(Errno::ENOSPC)?;
        used[idx] = true;
        Ok(idx as u32)
    }

    fn free_vintf(&self, idx: u32) {
        if let Some(u) = self.lock().get_mut(idx as usize) {
            *u = false;
        }
    }

    /// VINTFs in use by user space.
    pub fn user_vintfs(&self) -> usize {
        self.lock().iter().skip(1).filter(|&&u| u).count()
    }
}

/// `offsetofend(struct iommu_viommu_tegra241_cmdqv, out_vintf_mmap_length)`.
pub const VIOMMU_TEGRA241_MIN_LEN: usize = 16;

/// One logical VCMDQ's state.
#[derive(Clone, Copy, Debug, Default)]
struct Lvcmdq {
    /// `BASE` (page 1): the queue's physical address and log2 entries.
    base_pa: u64,
    log2size: u32,
    cons: u32,
    prod: u32,
    config: u32,
    gerror: u32,
    gerrorn: u32,
}

impl Lvcmdq {
    /// Index mask plus the wrap bit.
    fn wrap_mask(&self) -> u32 {
        (2u32 << self.log2size) - 1
    }

    fn halted(&self) -> bool {
        self.gerror != self.gerrorn
    }
}

/// A user VINTF: the driver half of an `IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV`.
pub struct Vintf {
    me: Weak<Vintf>,
    vsmmu: Arc<SmmuViommu>,
    cmdqv: Arc<Cmdqv>,
    idx: u32,
    mmap_offset: u64,
    /// `SID_MATCH`/`SID_REPLACE` pairs: `(virtual, physical)`.
    sids: Mutex<Vec<Option<(u32, u32)>>>,
    lvcmdqs: Mutex<Vec<Option<Lvcmdq>>>,
    /// Commands consumed, for tools.
    consumed: AtomicU32,
}

impl core::fmt::Debug for Vintf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vintf").field("idx", &self.idx).field("vmid", &self.vsmmu.vmid()).finish_non_exhaustive()
    }
}

impl Vintf {
    /// `tegra241_cmdqv_init_vintf_user()` after `arm_vsmmu_init()`: the
    /// user data is required (`EINVAL`) and read as
    /// `struct iommu_viommu_tegra241_cmdqv`; a free VINTF (`ENOSPC`); its
    /// page 0 gets an mmap offset; the offset and length go back to the
    /// user.
    pub fn init(
        unit: &Arc<SmmuIommu>,
        cmdqv: &Arc<Cmdqv>,
        parent: &Arc<dyn Domain>,
        data: Option<&mut UserData<'_>>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<(Arc<Vintf>, Vec<u8>), Errno> {
        let vsmmu = SmmuViommu::init(unit, parent, core.clone())?;
        let data = data.ok_or(Errno::EINVAL)?;
        let mut arg: IommuViommuTegra241Cmdqv = data.read(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, VIOMMU_TEGRA241_MIN_LEN)?;
        let idx = cmdqv.alloc_vintf()?;
        let mmap_offset = match core.upgrade().ok_or(Errno::ENOENT).and_then(|c| c.alloc_mmap(VINTF_PAGE_SIZE)) {
            Ok(o) => o,
            Err(e) => {
                cmdqv.free_vintf(idx);
                return Err(e);
            }
        };
        arg.out_vintf_mmap_offset = mmap_offset;
        arg.out_vintf_mmap_length = VINTF_PAGE_SIZE;
        let p = cmdqv.params;
        let vintf = Arc::new_cyclic(|me| Vintf {
            me: me.clone(),
            vsmmu,
            cmdqv: Arc::clone(cmdqv),
            idx,
            mmap_offset,
            sids: Mutex::new(vec![None; p.sids_per_vintf() as usize]),
            lvcmdqs: Mutex::new(vec![None; p.lvcmdqs_per_vintf() as usize]),
            consumed: AtomicU32::new(0),
        });
        Ok((vintf, arg.as_bytes().to_vec()))
    }

    pub fn index(&self) -> u32 {
        self.idx
    }

    pub fn vmid(&self) -> u16 {
        self.vsmmu.vmid()
    }

    /// The mmap offset of page 0 (what the user got back).
    pub fn mmap_offset(&self) -> u64 {
        self.mmap_offset
    }

    /// The ARM vSMMU half.
    pub fn vsmmu(&self) -> &Arc<SmmuViommu> {
        &self.vsmmu
    }

    /// Commands the VCMDQs consumed.
    pub fn consumed(&self) -> u32 {
        self.consumed.load(Ordering::Relaxed)
    }

    fn queues(&self) -> MutexGuard<'_, Vec<Option<Lvcmdq>>> {
        self.lvcmdqs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sid_table(&self) -> MutexGuard<'_, Vec<Option<(u32, u32)>>> {
        self.sids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The physical StreamID the SID table maps `vsid` to.
    pub fn replace_sid(&self, vsid: u32) -> Option<u32> {
        self.sid_table().iter().flatten().find(|(v, _)| *v == vsid).map(|&(_, p)| p)
    }

    /// A read of the VINTF's page 0 at `offset` (32-bit registers; 0 for
    /// what is not a register of an allocated LVCMDQ).
    pub fn mmio_read(&self, offset: u64) -> u32 {
        let (lidx, r) = ((offset / LVCMDQ_STRIDE) as usize, offset % LVCMDQ_STRIDE);
        let queues = self.queues();
        let Some(Some(q)) = queues.get(lidx) else { return 0 };
        match r {
            reg::CONS => q.cons,
            reg::PROD => q.prod,
            reg::CONFIG => q.config,
            reg::STATUS => q.config & reg::EN,
            reg::GERROR => q.gerror,
            reg::GERRORN => q.gerrorn,
            _ => 0,
        }
    }

    /// A write to the VINTF's page 0: `CONFIG` enables or disables an
    /// LVCMDQ, `PROD` hands it commands, `GERRORN` acknowledges an error
    /// (and resumes the queue); writes elsewhere are ignored. Commands are
    /// consumed before this returns.
    pub fn mmio_write(&self, offset: u64, value: u32) {
        let (lidx, r) = ((offset / LVCMDQ_STRIDE) as usize, offset % LVCMDQ_STRIDE);
        {
            let mut queues = self.queues();
            let Some(Some(q)) = queues.get_mut(lidx) else { return };
            match r {
                reg::PROD => q.prod = value & q.wrap_mask(),
                reg::CONFIG => q.config = value & reg::EN,
                reg::GERRORN => q.gerrorn = value & reg::GERROR_CMDQ_ERR,
                _ => return,
            }
        }
        self.consume(lidx);
    }

    /// The VCMDQ's command processing: from `CONS` to `PROD`, while
    /// enabled and not halted by an error.
    fn consume(&self, lidx: usize) {
        let unit = Arc::clone(self.vsmmu.unit());
        loop {
            let mut queues = self.queues();
            let Some(Some(q)) = queues.get_mut(lidx) else { return };
            if q.config & reg::EN == 0 || q.halted() || q.cons & q.wrap_mask() == q.prod {
                return;
            }
            let slot = u64::from(q.cons & ((1 << q.log2size) - 1));
            let at = q.base_pa + (slot << CMD_SHIFT);
            let read = unit.read_phys(at).and_then(|w0| Ok([w0, unit.read_phys(at + 8)?]));
            let converted = read.map_err(|_| ()).and_then(|c| self.convert(c).map_err(|_| ()));
            match converted {
                Ok(c) => {
                    q.cons = (q.cons & !reg::CONS_ERR).wrapping_add(1) & q.wrap_mask();
                    drop(queues);
                    unit.issue(&[c]);
                    self.consumed.fetch_add(1, Ordering::Relaxed);
                }
                Err(()) => {
                    q.cons = q.cons & !reg::CONS_ERR | reg::CERROR_ILL << reg::CONS_ERR_SHIFT;
                    q.gerror ^= reg::GERROR_CMDQ_ERR;
                    drop(queues);
                    self.report_error(lidx);
                    return;
                }
            }
        }
    }

    /// What a guest-owned VCMDQ executes, and how: the VINTF's VMID in
    /// TLBIs, the replaced StreamID in `ATC_INV` (an unmapped one is an
    /// error); `CMD_SYNC` as it is.
    fn convert(&self, c: [u64; 2]) -> Result<[u64; 2], Errno> {
        match cmd::opcode(&c) {
            op::CMD_SYNC => return Ok(c),
            op::TLBI_NH_ASID | op::TLBI_NH_VA | op::ATC_INV => {}
            _ => return Err(Errno::EIO),
        }
        self.vsmmu.validate_user_cmd(&c)?;
        let mut c = c;
        if cmd::opcode(&c) == op::ATC_INV {
            let sid = self.replace_sid(cmd::sid(&c)).ok_or(Errno::EIO)?;
            c[0] = c[0] & !cmd::f::SID | u64::from(sid) << cmd::f::SID_SHIFT;
        } else {
            c[0] = c[0] & !cmd::f::VMID | u64::from(self.vmid()) << cmd::f::VMID_SHIFT;
        }
        Ok(c)
    }

    /// `tegra241_vintf_user_handle_error()`: the LVCMDQ error map as an
    /// `IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV` event.
    fn report_error(&self, lidx: usize) {
        let mut map = [0u64; 2];
        for (i, q) in self.queues().iter().enumerate() {
            if q.is_some_and(|q| q.halted()) && i < 128 {
                map[i / 64] |= 1 << (i % 64);
            }
        }
        map[lidx / 64] |= 1 << (lidx % 64);
        let evt = IommuVeventTegra241Cmdqv { lvcmdq_err_map: [map[0].to_le(), map[1].to_le()] };
        if let Some(core) = self.vsmmu.core() {
            let _ = core.report_event(IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, evt.as_bytes());
        }
    }
}

impl Drop for Vintf {
    /// `tegra241_cmdqv_destroy_vintf_user()`.
    fn drop(&mut self) {
        self.cmdqv.free_vintf(self.idx);
    }
}

/// A logical VCMDQ allocated by user space: unmapped when dropped.
struct UserLvcmdq {
    vintf: Arc<Vintf>,
    lidx: usize,
}

impl Drop for UserLvcmdq {
    /// `tegra241_vintf_destroy_lvcmdq_user()`.
    fn drop(&mut self) {
        if let Some(slot) = self.vintf.queues().get_mut(self.lidx) {
            *slot = None;
        }
    }
}

/// A `SID_MATCH`/`SID_REPLACE` pair a vDEVICE holds: cleared when dropped.
struct VsidSlot {
    vintf: Arc<Vintf>,
    slot: usize,
}

impl Drop for VsidSlot {
    /// `tegra241_vintf_destroy_vsid()`.
    fn drop(&mut self) {
        if let Some(s) = self.vintf.sid_table().get_mut(self.slot) {
            *s = None;
        }
    }
}

impl ViommuDriver for Vintf {
    /// `arm_vsmmu_alloc_domain_nested()`.
    fn alloc_domain_nested(&self, flags: u32, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>, Errno> {
        self.vsmmu.alloc_domain_nested(flags, data)
    }

    fn can_invalidate(&self) -> bool {
        true
    }

    /// `arm_vsmmu_cache_invalidate()`: commands the VCMDQs do not take go
    /// through the kernel's queue as for an ARM_SMMUV3 vIOMMU.
    fn cache_invalidate(&self, array: &mut UserDataArray<'_>) -> Result<(), Errno> {
        self.vsmmu.cache_invalidate(array)
    }

    /// `tegra241_vintf_get_vcmdq_size()`.
    fn hw_queue_supported(&self, queue_type: u32) -> bool {
        queue_type == IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV
    }

    /// `tegra241_vintf_alloc_lvcmdq_user()`, in the driver's order: the
    /// type (`EOPNOTSUPP`), the index within the VINTF's LVCMDQs
    /// (`EINVAL`), once (`EEXIST`), in ascending order (`EIO` while the one
    /// below is free); a power-of-two length of 32 bytes up to `2^CMDQS`
    /// commands (`EINVAL`); a base inside `VCMDQ_ADDR` aligned to the
    /// length (`EINVAL`). The queue depends on the one below it.
    fn hw_queue_init(
        &self,
        queue_type: u32,
        index: u32,
        _base_iova: u64,
        base_pa: u64,
        length: u64,
    ) -> Result<HwQueueInit, Errno> {
        if !self.hw_queue_supported(queue_type) {
            return Err(Errno::EOPNOTSUPP);
        }
        let lidx = index as usize;
        let mut queues = self.queues();
        if lidx >= queues.len() {
            return Err(Errno::EINVAL);
        }
        if queues[lidx].is_some() {
            return Err(Errno::EEXIST);
        }
        if lidx > 0 && queues[lidx - 1].is_none() {
            return Err(Errno::EIO);
        }
        let cmdqs = self.vsmmu.unit().regs().idr1.cmdqs();
        if !length.is_power_of_two() || length < 32 || length > 1u64 << (cmdqs + CMD_SHIFT).min(63) {
            return Err(Errno::EINVAL);
        }
        if base_pa & !VCMDQ_ADDR != 0 || base_pa & (length - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let log2size = length.trailing_zeros() - CMD_SHIFT;
        queues[lidx] = Some(Lvcmdq { base_pa, log2size, ..Default::default() });
        drop(queues);
        let vintf = self.me.upgrade().ok_or(Errno::ENOENT)?;
        Ok(HwQueueInit { handle: Box::new(UserLvcmdq { vintf, lidx }), depends_on: index.checked_sub(1) })
    }

    /// `tegra241_vintf_init_vsid()`: a virtual StreamID of at most 20 bits
    /// (`EINVAL`), an SMMU master (one stream), a free `SID_MATCH` /
    /// `SID_REPLACE` pair (`ENOSPC`).
    fn vdevice_init(&self, dev: &Arc<dyn IommuDevice>, virt_id: u64) -> Result<Option<Box<dyn Send + Sync>>, Errno> {
        if virt_id > VSID_MAX {
            return Err(Errno::EINVAL);
        }
        let master = SmmuDevice::of(dev).ok_or(Errno::EOPNOTSUPP)?;
        let mut sids = self.sid_table();
        let slot = sids.iter().position(Option::is_none).ok_or(Errno::ENOSPC)?;
        sids[slot] = Some((virt_id as u32, master.sid()));
        drop(sids);
        let vintf = self.me.upgrade().ok_or(Errno::ENOENT)?;
        Ok(Some(Box::new(VsidSlot { vintf, slot })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::info::DriverParams;
    use crate::smmuv3::regs::SmmuRegs;
    use crate::smmuv3::testutil::*;
    use uiommufd_abi::{IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV, IOMMU_VIOMMU_TYPE_ARM_SMMUV3};

    fn guest() -> Guest {
        Guest::with_params(SmmuRegs::default(), DriverParams { tegra241_cmdqv: true, ..Default::default() })
    }

    /// `IOMMU_VIOMMU_ALLOC` of type TEGRA241_CMDQV with `len` bytes of data.
    fn vintf(g: &Guest, len: Option<u32>) -> Result<(Arc<dyn ViommuDriver>, Vec<u8>), Errno> {
        let core: Arc<dyn ViommuCore> = g.core.clone();
        let weak = Arc::downgrade(&core);
        let mut rd = |buf: &mut [u8]| {
            buf.fill(0);
            Ok(())
        };
        let mut data = len.map(|len| UserData { data_type: IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, len, reader: &mut rd });
        let init = g.dev.viommu_init(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, &g.parent, data.as_mut(), weak)?;
        Ok((init.driver, init.user_out.unwrap_or_default()))
    }

    fn of(d: &Arc<dyn ViommuDriver>) -> &Vintf {
        let d: &dyn ViommuDriver = d.as_ref();
        d.any_domain().downcast_ref::<Vintf>().unwrap()
    }

    #[test]
    fn hw_info_and_vintf_allocation() {
        let g = guest();
        let (ty, data) = g.dev.hw_info(IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV).unwrap();
        assert_eq!(ty, IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV);
        // flags 0, version 1, log2 4 LVCMDQs per VINTF, log2 16 SIDs.
        assert_eq!(data, vec![0, 0, 0, 0, 1, 2, 4, 0]);
        assert_eq!(CmdqvParams::default().param(), 0x4241);
        assert!(g.dev.viommu_supported(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV));
        // Without a CMDQV: neither the type nor its hw_info.
        let plain = Guest::new();
        assert!(!plain.dev.viommu_supported(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV));
        assert!(plain.dev.viommu_supported(IOMMU_VIOMMU_TYPE_ARM_SMMUV3));
        assert_eq!(plain.dev.hw_info(IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV).err(), Some(Errno::EOPNOTSUPP));
        // The user data is required and must reach out_vintf_mmap_length.
        assert_eq!(vintf(&g, None).err(), Some(Errno::EINVAL));
        assert_eq!(vintf(&g, Some(8)).err(), Some(Errno::EINVAL));
        let (a, out) = vintf(&g, Some(16)).unwrap();
        let word = |i: usize| u64::from_le_bytes(out[8 * i..8 * i + 8].try_into().unwrap());
        assert_eq!((word(0), word(1)), (of(&a).mmap_offset(), VINTF_PAGE_SIZE));
        assert_eq!(of(&a).index(), 1);
        assert_eq!(of(&a).vmid(), g.viommu.vmid());
        // Three user VINTFs of four (VINTF 0 is the kernel's).
        let b = vintf(&g, Some(16)).unwrap();
        let c = vintf(&g, Some(16)).unwrap();
        assert_eq!(vintf(&g, Some(16)).err(), Some(Errno::ENOSPC));
        assert_eq!(g.unit.cmdqv().unwrap().user_vintfs(), 3);
        drop(b);
        assert_eq!(of(&vintf(&g, Some(16)).unwrap().0).index(), 2);
        drop((a, c));
    }

    #[test]
    fn hw_queues_with_the_drivers_checks() {
        let g = guest();
        let (v, _) = vintf(&g, Some(16)).unwrap();
        let ty = IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV;
        let base = HOST_BASE + 0x40_0000;
        assert_eq!(v.hw_queue_init(0xdead, 0, 0, base, 4096).err(), Some(Errno::EOPNOTSUPP));
        assert_eq!(v.hw_queue_init(ty, 4, 0, base, 4096).err(), Some(Errno::EINVAL));
        assert_eq!(v.hw_queue_init(ty, 1, 0, base, 4096).err(), Some(Errno::EIO));
        // IDR1.CMDQS 19: at most 2^19 commands of 16 bytes.
        for bad_len in [16, 48, 1u64 << 24] {
            assert_eq!(v.hw_queue_init(ty, 0, 0, base, bad_len).err(), Some(Errno::EINVAL), "{bad_len}");
        }
        assert_eq!(v.hw_queue_init(ty, 0, 0, base + 0x800, 4096).err(), Some(Errno::EINVAL));
        assert_eq!(v.hw_queue_init(ty, 0, 0, 1 << 48, 4096).err(), Some(Errno::EINVAL));
        let q0 = v.hw_queue_init(ty, 0, 0, base, 1 << 20).unwrap();
        assert_eq!(q0.depends_on, None);
        assert_eq!(v.hw_queue_init(ty, 0, 0, base, 4096).err(), Some(Errno::EEXIST));
        let q1 = v.hw_queue_init(ty, 1, 0, base + 0x10_0000, 32).unwrap();
        assert_eq!(q1.depends_on, Some(0));
        drop(q1);
        assert!(v.hw_queue_init(ty, 1, 0, base + 0x10_0000, 32).is_ok());
    }

    #[test]
    fn vdevices_program_the_sid_table() {
        let g = guest();
        let (v, _) = vintf(&g, Some(16)).unwrap();
        let dev: Arc<dyn IommuDevice> = g.dev.clone();
        assert_eq!(v.vdevice_init(&dev, 1 << 20).err(), Some(Errno::EINVAL));
        let slot = v.vdevice_init(&dev, VSID).unwrap();
        assert_eq!(of(&v).replace_sid(VSID as u32), Some(SID));
        let more: Vec<_> = (0..15).map(|i| v.vdevice_init(&dev, 100 + i).unwrap()).collect();
        assert_eq!(v.vdevice_init(&dev, 200).err(), Some(Errno::ENOSPC));
        drop(slot);
        assert_eq!(of(&v).replace_sid(VSID as u32), None);
        drop(more);
    }

    /// A guest drives its VCMDQ through page 0: commands are consumed from
    /// the queue memory, with the VINTF's VMID; an illegal one halts the
    /// queue with CERROR_ILL and reports it; GERRORN resumes it.
    #[test]
    fn the_guest_queue_is_consumed() {
        let g = guest();
        let (v, _) = vintf(&g, Some(16)).unwrap();
        let vintf = of(&v);
        let dev: Arc<dyn IommuDevice> = g.dev.clone();
        let _vsid = v.vdevice_init(&dev, VSID).unwrap();
        let q = 0x40_0000u64;
        let _queue = v.hw_queue_init(IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, 0, 0, HOST_BASE + q, 64 * 16).unwrap();
        let put = |slot: u64, c: [u64; 2]| {
            g.write(q + slot * 16, c[0]);
            g.write(q + slot * 16 + 8, c[1]);
        };
        // A TLB entry of the vSMMU's VMID, ASID 5.
        let tlb = g.unit.tlb();
        let vmid = vintf.vmid();
        assert!(tlb.insert(tlb.generation(), vmid, 5, false, 0x7000, 12, 1));
        // Not enabled: PROD alone consumes nothing.
        put(0, cmd::tlbi_nh_va(0x99, 5, 0x7000, true));
        put(1, cmd::cmd_sync());
        vintf.mmio_write(reg::PROD, 2);
        assert_eq!((vintf.mmio_read(reg::CONS), vintf.mmio_read(reg::STATUS)), (0, 0));
        vintf.mmio_write(reg::CONFIG, reg::EN);
        assert_eq!((vintf.mmio_read(reg::CONS), vintf.mmio_read(reg::STATUS)), (2, 1));
        assert!(tlb.lookup(vmid, 5, 0x7000).is_none(), "the guest's TLBI with the VINTF's VMID");
        assert_eq!(vintf.consumed(), 2);
        // ATC_INV of the virtual StreamID reaches the physical one.
        put(2, cmd::atc_inv(VSID as u32, None, 0, 52, false));
        vintf.mmio_write(reg::PROD, 3);
        assert_eq!(vintf.mmio_read(reg::CONS), 3);
        assert_eq!(g.unit.cmd_stats().atc_inv, 1);
        // CFGI_STE is not a guest queue's command: CERROR_ILL, GERROR,
        // an event with LVCMDQ 0's bit.
        put(3, cmd::cfgi_ste(SID, true));
        put(4, cmd::cmd_sync());
        vintf.mmio_write(reg::PROD, 5);
        assert_eq!(vintf.mmio_read(reg::CONS), 3 | reg::CERROR_ILL << 24);
        assert_eq!(vintf.mmio_read(reg::GERROR), 1);
        let events = g.core.events.lock().unwrap().clone();
        assert_eq!(events, vec![(IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, [1u64.to_le_bytes(), [0; 8]].concat())]);
        // The guest replaces it with a CMD_SYNC and acknowledges.
        put(3, cmd::cmd_sync());
        vintf.mmio_write(reg::GERRORN, 1);
        assert_eq!(vintf.mmio_read(reg::CONS), 5);
        // The queue wraps (64 entries: index bits 5:0, wrap bit 6).
        for i in 5..64 {
            put(i, cmd::cmd_sync());
        }
        vintf.mmio_write(reg::PROD, 64);
        assert_eq!(vintf.mmio_read(reg::CONS), 64);
        put(0, cmd::tlbi_nh_asid(0, 5));
        vintf.mmio_write(reg::PROD, 65);
        assert_eq!(vintf.mmio_read(reg::CONS), 65);
        // Registers of an LVCMDQ that is not allocated read 0.
        assert_eq!(vintf.mmio_read(LVCMDQ_STRIDE + reg::STATUS), 0);
    }
}
