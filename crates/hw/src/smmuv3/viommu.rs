//! The SMMUv3 vIOMMU (`struct arm_vsmmu`, `arm-smmu-v3-iommufd.c`): nested
//! domains from guest STEs, and the guest's invalidation commands passed
//! to the SMMU's command queue.
//!
//! Model (mainline `arm_vsmmu_init()`, `arm_vsmmu_alloc_domain_nested()`,
//! `arm_vsmmu_cache_invalidate()`, `arm_vsmmu_convert_user_cmd()`,
//! `arm_vmaster_report_event()`):
//! - a vSMMU sits on a stage 2 nesting parent of the same SMMU and uses
//!   its VMID;
//! - `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3` requests are 128-bit
//!   commands. The whole array is copied first (`EINVAL` for another data
//!   type or an empty array, `E2BIG`/`EFAULT` from the copy; nothing is
//!   handled then). Each command is converted in turn: `TLBI_NH_ALL`,
//!   `TLBI_NH_ASID`, `TLBI_NH_VA`, `TLBI_NH_VAA` get the vSMMU's VMID;
//!   `TLBI_NSNH_ALL` becomes `TLBI_NH_ALL` of that VMID; `ATC_INV`,
//!   `CFGI_CD`, `CFGI_CD_ALL` get the StreamID of the device whose vDEVICE
//!   has the command's virtual StreamID (`EIO` without one); any other
//!   opcode is `EIO`. Converted commands go to the SMMU in batches of
//!   `CMDQ_BATCH_ENTRIES - 1` (63); a conversion error stops the loop
//!   *before* the current batch is issued, so commands converted since the
//!   last batch are counted in `entry_num` but never reach the SMMU (the
//!   driver's behaviour).
//! - events of a master attached to one of its nested domains (not stage 2
//!   faults) go to the vIOMMU's `IOMMU_VEVENTQ_TYPE_ARM_SMMUV3` queue with
//!   the StreamID replaced by the virtual one.

use std::sync::{Arc, Weak};

use uiommufd_abi::{
    Errno, IommuHwptArmSmmuv3, IommuVeventArmSmmuv3, IOMMU_HWPT_DATA_ARM_SMMUV3, IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
    IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
};
use zerocopy::IntoBytes;

use super::cmd::{self, op};
use super::device::{SmmuDevice, SmmuIommu};
use super::domain::SmmuDomain;
use super::event::rec;
use super::info::CMDQ_BATCH_ENTRIES;
use super::nested::SmmuNested;
use super::ste::validate_vste;
use crate::device::{ViommuCore, ViommuDriver};
use crate::{Domain, UserData, UserDataArray};

/// `offsetofend(struct iommu_hwpt_arm_smmuv3, ste)`.
pub const HWPT_ARM_SMMUV3_MIN_LEN: usize = 16;

/// An SMMUv3 vIOMMU.
pub struct SmmuViommu {
    me: Weak<SmmuViommu>,
    unit: Arc<SmmuIommu>,
    parent: Arc<dyn Domain>,
    vmid: u16,
    core: Weak<dyn ViommuCore>,
}

impl core::fmt::Debug for SmmuViommu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmmuViommu").field("unit", &self.unit.name()).field("vmid", &self.vmid).finish()
    }
}

impl SmmuViommu {
    /// `arm_vsmmu_init()`: `EINVAL` unless `parent` is a stage 2 domain of
    /// `unit`.
    pub fn init(
        unit: &Arc<SmmuIommu>,
        parent: &Arc<dyn Domain>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<Arc<Self>, Errno> {
        let s2 = parent.as_any().downcast_ref::<SmmuDomain>().ok_or(Errno::EINVAL)?;
        if s2.unit() != unit.id() {
            return Err(Errno::EINVAL);
        }
        let vmid = s2.vmid().ok_or(Errno::EINVAL)?;
        Ok(Arc::new_cyclic(|me| SmmuViommu {
            me: me.clone(),
            unit: Arc::clone(unit),
            parent: Arc::clone(parent),
            vmid,
            core,
        }))
    }

    pub fn vmid(&self) -> u16 {
        self.vmid
    }

    pub fn unit(&self) -> &Arc<SmmuIommu> {
        &self.unit
    }

    pub fn parent(&self) -> &Arc<dyn Domain> {
        &self.parent
    }

    pub fn core(&self) -> Option<Arc<dyn ViommuCore>> {
        self.core.upgrade()
    }

    /// `arm_vsmmu_vsid_to_sid()`: the StreamID of the device behind
    /// virtual StreamID `vsid` (`EIO` without a vDEVICE for it).
    pub fn vsid_to_sid(&self, vsid: u32) -> Result<u32, Errno> {
        let core = self.core.upgrade().ok_or(Errno::EIO)?;
        let dev = core.find_dev(u64::from(vsid)).ok_or(Errno::EIO)?;
        let dev: &dyn crate::device::IommuDevice = dev.as_ref();
        let smmu = dev.any_domain().downcast_ref::<SmmuDevice>().ok_or(Errno::EIO)?;
        Ok(smmu.sid())
    }

    /// `arm_vsmmu_convert_user_cmd()`.
    pub fn convert_user_cmd(&self, c: [u64; 2]) -> Result<[u64; 2], Errno> {
        let mut c = c;
        match cmd::opcode(&c) {
            op::TLBI_NSNH_ALL => c = cmd::tlbi_nh_all(self.vmid),
            op::TLBI_NH_VA | op::TLBI_NH_VAA | op::TLBI_NH_ALL | op::TLBI_NH_ASID => {
                c[0] = c[0] & !cmd::f::VMID | u64::from(self.vmid) << cmd::f::VMID_SHIFT;
            }
            op::ATC_INV | op::CFGI_CD | op::CFGI_CD_ALL => {
                let sid = self.vsid_to_sid(cmd::sid(&c))?;
                c[0] = c[0] & !cmd::f::SID | u64::from(sid) << cmd::f::SID_SHIFT;
            }
            _ => return Err(Errno::EIO),
        }
        Ok(c)
    }

    /// `arm_vmaster_report_event()`: queue the event record `evt` of a
    /// master with virtual StreamID `vsid` on the vIOMMU's SMMUv3 event
    /// queue (`EOPNOTSUPP` without one).
    pub fn report_event(&self, vsid: u64, evt: [u64; 4]) -> Result<(), Errno> {
        let core = self.core.upgrade().ok_or(Errno::ENOENT)?;
        let mut e = evt;
        e[0] = e[0] & !rec::SID_MASK | (vsid << rec::SID_SHIFT) & rec::SID_MASK;
        let vevt = IommuVeventArmSmmuv3 { evt: e };
        core.report_event(IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, vevt.as_bytes())
    }
}

impl ViommuDriver for SmmuViommu {
    /// `arm_vsmmu_alloc_domain_nested()`: `EOPNOTSUPP` for any flag; the
    /// copy of `struct iommu_hwpt_arm_smmuv3` (`EINVAL` for another data
    /// type or fewer than 16 bytes, `E2BIG`/`EFAULT`); then
    /// `arm_smmu_validate_vste()` (`EIO`).
    fn alloc_domain_nested(&self, flags: u32, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>, Errno> {
        if flags != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let arg: IommuHwptArmSmmuv3 = data.read(IOMMU_HWPT_DATA_ARM_SMMUV3, HWPT_ARM_SMMUV3_MIN_LEN)?;
        let (ste, ats) = validate_vste(arg.ste)?;
        Ok(Arc::new(SmmuNested::new(&self.unit, self.me.clone(), &self.parent, ste, ats)?))
    }

    fn can_invalidate(&self) -> bool {
        true
    }

    /// `arm_vsmmu_cache_invalidate()` (see the module doc).
    fn cache_invalidate(&self, array: &mut UserDataArray<'_>) -> Result<(), Errno> {
        let num = array.entry_num as usize;
        array.entry_num = 0;
        // iommu_copy_struct_from_full_user_array().
        if array.data_type != IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 || num == 0 {
            return Err(Errno::EINVAL);
        }
        let mut cmds: Vec<[u64; 2]> = Vec::new();
        cmds.try_reserve_exact(num).map_err(|_| Errno::ENOMEM)?;
        for i in 0..num {
            let mut c = [0u64; 2];
            (array.reader)(i as u32, c.as_mut_bytes())?;
            cmds.push([u64::from_le(c[0]), u64::from_le(c[1])]);
        }
        let mut last = 0usize;
        let mut cur = 0usize;
        let mut ret = Ok(());
        while cur != num {
            match self.convert_user_cmd(cmds[cur]) {
                Ok(c) => cmds[cur] = c,
                Err(e) => {
                    ret = Err(e);
                    break;
                }
            }
            cur += 1;
            if cur != num && cur - last != CMDQ_BATCH_ENTRIES - 1 {
                continue;
            }
            self.unit.issue(&cmds[last..cur]);
            last = cur;
        }
        array.entry_num = cur as u32;
        ret
    }
}
