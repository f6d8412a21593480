//! The SMMUv3 vIOMMU (`struct arm_vsmmu`, `arm-smmu-v3-iommufd.c`): nested
//! domains from guest STEs, and the guest's invalidation commands passed
//! to the SMMU's command queue.
//!
//! Model (Linux 7.3 `arm_vsmmu_init()`, `arm_vsmmu_alloc_domain_nested()`,
//! `arm_vsmmu_cache_invalidate()`, `arm_vsmmu_convert_user_cmd()`,
//! `arm_vmaster_report_event()`):
//! - a vSMMU sits on a stage 2 nesting parent of the same SMMU and uses
//!   its VMID;
//! - `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3` requests are 128-bit
//!   commands. The whole array is copied first (`EINVAL` for another data
//!   type or an empty array, `E2BIG`/`EFAULT` from the copy; nothing is
//!   handled then). Each command is validated
//!   (`arm_vsmmu_validate_user_cmd()`: the opcode and every set bit must be
//!   one a guest may use on this SMMU, else `EIO`) and converted in turn: `TLBI_NH_ALL`,
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
use super::info::{feat, CMDQ_BATCH_ENTRIES};
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

    /// `arm_vsmmu_validate_range()`: the range fields of a TLBI_NH_VA /
    /// NH_VAA that the specification defines as reserved (`EIO`): with TG
    /// 0, NUM/SCALE/TTL must be 0; TTL 1 with a 16KB TG needs DS; NUM 0,
    /// SCALE 0 and TTL 0 together are reserved.
    fn validate_range(&self, c: &[u64; 2]) -> Result<(), Errno> {
        let range = c[0] & (cmd::f::NUM | cmd::f::SCALE) != 0;
        let ttl = (c[1] & cmd::f::TTL) >> cmd::f::TTL_SHIFT;
        let tg = (c[1] & cmd::f::TG) >> cmd::f::TG_SHIFT;
        let info = self.unit.info();
        if tg == 0 {
            return if range || ttl != 0 { Err(Errno::EIO) } else { Ok(()) };
        }
        if tg == 2 && ttl == 1 && !info.has(feat::DS) {
            return Err(Errno::EIO);
        }
        if !range && ttl == 0 {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// `arm_vsmmu_validate_user_cmd()`: only the opcodes a guest may issue,
    /// and in them only the fields this SMMU defines for the guest (`EIO`
    /// for any other bit: a RES0 or Secure bit would make the shared queue
    /// stop with `CERROR_ILL`). ASIDs beyond `asid_bits`, range fields
    /// without `RIL` (and SCALE above 31 without DS), `ATC_INV` without ATS
    /// or with a Size above 52, SubstreamIDs without substreams are all
    /// `EIO`; out-of-range addresses and IDs are not (they are the guest's
    /// own CONSTRAINED UNPREDICTABLE).
    pub fn validate_user_cmd(&self, c: &[u64; 2]) -> Result<(), Errno> {
        let info = self.unit.info();
        let asid_mask = ((1u64 << info.asid_bits) - 1) << cmd::f::ASID_SHIFT;
        let mut allowed = [cmd::f::OP, 0u64];
        match cmd::opcode(c) {
            op::TLBI_NSNH_ALL => {}
            code @ (op::TLBI_NH_VA | op::TLBI_NH_VAA) => {
                if code == op::TLBI_NH_VA {
                    allowed[0] |= asid_mask;
                }
                if info.range_inv() {
                    self.validate_range(c)?;
                    allowed[0] |= cmd::f::NUM | cmd::f::SCALE;
                    allowed[1] |= cmd::f::TG | cmd::f::TTL;
                    if !info.has(feat::DS) {
                        allowed[0] &= !(1 << 25);
                    }
                }
                allowed[0] |= cmd::f::VMID;
                allowed[1] |= cmd::f::LEAF | cmd::f::VA;
            }
            code @ (op::TLBI_NH_ASID | op::TLBI_NH_ALL) => {
                if code == op::TLBI_NH_ASID {
                    allowed[0] |= asid_mask;
                }
                allowed[0] |= cmd::f::VMID;
            }
            op::ATC_INV => {
                if !info.has(feat::ATS) {
                    return Err(Errno::EIO);
                }
                if c[1] & cmd::f::ATC_SIZE > cmd::f::ATC_SIZE_ALL {
                    return Err(Errno::EIO);
                }
                if info.ssid_bits != 0 {
                    allowed[0] |= cmd::f::SSV | cmd::f::SSID | cmd::f::ATC_GLOBAL;
                }
                allowed[0] |= cmd::f::SID;
                allowed[1] |= cmd::f::ATC_SIZE | cmd::f::ATC_ADDR;
            }
            code @ (op::CFGI_CD | op::CFGI_CD_ALL) => {
                if code == op::CFGI_CD {
                    if info.ssid_bits != 0 {
                        allowed[0] |= cmd::f::SSID;
                    }
                    allowed[1] |= cmd::f::CFGI_LEAF;
                }
                allowed[0] |= cmd::f::SID;
            }
            _ => return Err(Errno::EIO),
        }
        if c[0] & !allowed[0] != 0 || c[1] & !allowed[1] != 0 {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// `arm_vsmmu_convert_user_cmd()`: validated, then the vSMMU's VMID or
    /// the physical StreamID put in.
    pub fn convert_user_cmd(&self, c: [u64; 2]) -> Result<[u64; 2], Errno> {
        self.validate_user_cmd(&c)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::cmd::{self, RangeFields};
    use crate::smmuv3::regs::SmmuRegs;
    use crate::smmuv3::testutil::*;

    const VSID32: u32 = VSID as u32;

    /// Every opcode a guest may issue, with every field it may set.
    #[test]
    fn guest_commands_accepted_and_converted() {
        let g = Guest::new();
        let vmid = g.viommu.vmid();
        let ok = |c: [u64; 2]| g.viommu.convert_user_cmd(c);
        // NSNH_ALL becomes NH_ALL of the vSMMU's VMID.
        assert_eq!(ok(cmd::tlbi_nsnh_all()), Ok(cmd::tlbi_nh_all(vmid)));
        // The guest's VMID field is replaced.
        assert_eq!(ok(cmd::tlbi_nh_all(0x77)), Ok(cmd::tlbi_nh_all(vmid)));
        assert_eq!(ok(cmd::tlbi_nh_asid(0x77, 0xffff)), Ok(cmd::tlbi_nh_asid(vmid, 0xffff)));
        let va = with_range_ok(cmd::tlbi_nh_va(3, 0x42, 0xffff_ffff_ffff_f000, true));
        assert_eq!(ok(va).unwrap()[0] & cmd::f::VMID, u64::from(vmid) << 32);
        assert!(ok(with_range_ok(cmd::tlbi_nh_vaa(3, 0x1000, false))).is_ok());
        // Substream fields of ATC_INV and CFGI_CD; the StreamID becomes the
        // physical one.
        let atc = ok(cmd::atc_inv(VSID32, Some(0xf_ffff), 0x1000, 52, true)).unwrap();
        assert_eq!(atc, cmd::atc_inv(SID, Some(0xf_ffff), 0x1000, 52, true));
        assert_eq!(ok(cmd::cfgi_cd(VSID32, 5, true)), Ok(cmd::cfgi_cd(SID, 5, true)));
        assert_eq!(ok(cmd::cfgi_cd_all(VSID32)), Ok(cmd::cfgi_cd_all(SID)));
    }

    /// A range that `arm_vsmmu_validate_range()` accepts.
    fn with_range_ok(c: [u64; 2]) -> [u64; 2] {
        cmd::with_range(c, RangeFields { tg: 1, scale: 2, num: 3, ttl: 3 })
    }

    /// `arm_vsmmu_validate_user_cmd()`: what is `EIO`.
    #[test]
    fn guest_commands_rejected() {
        let g = Guest::new();
        let eio = |c: [u64; 2]| assert_eq!(g.viommu.convert_user_cmd(c), Err(Errno::EIO), "{c:x?}");
        // Opcodes a guest may not issue.
        for c in [
            cmd::cfgi_ste(VSID32, true),
            cmd::tlbi_s12_vmall(1),
            cmd::cmd_sync(),
            [u64::from(op::TLBI_EL2_ALL), 0],
            [u64::from(op::CFGI_ALL), 0],
            [0xff, 0],
        ] {
            eio(c);
        }
        // Stray bits: an ASID on NH_ALL, SSV on CFGI_CD, word 1 of
        // NH_ASID, a Secure bit (word 0 bit 10), Leaf on CFGI_CD_ALL.
        eio([cmd::tlbi_nh_all(0)[0] | 1 << 48, 0]);
        eio([cmd::cfgi_cd(VSID32, 1, true)[0] | cmd::f::SSV, 1]);
        eio([cmd::tlbi_nh_asid(0, 1)[0], 1]);
        eio([cmd::tlbi_nh_all(0)[0] | 1 << 10, 0]);
        eio([cmd::cfgi_cd_all(VSID32)[0], 1]);
        // Range fields: with TG 0 nothing else; NUM = SCALE = TTL = 0 with
        // a TG; SCALE above 31 and TTL 1 with 16KB only with DS.
        eio(cmd::with_range(cmd::tlbi_nh_va(0, 1, 0, true), RangeFields { tg: 0, scale: 0, num: 1, ttl: 0 }));
        eio(cmd::with_range(cmd::tlbi_nh_va(0, 1, 0, true), RangeFields { tg: 0, scale: 0, num: 0, ttl: 2 }));
        eio(cmd::with_range(cmd::tlbi_nh_va(0, 1, 0, true), RangeFields { tg: 1, scale: 0, num: 0, ttl: 0 }));
        eio(cmd::with_range(cmd::tlbi_nh_vaa(0, 0, true), RangeFields { tg: 1, scale: 32, num: 0, ttl: 0 }));
        eio(cmd::with_range(cmd::tlbi_nh_vaa(0, 0, true), RangeFields { tg: 2, scale: 0, num: 1, ttl: 1 }));
        // ATC_INV: Size above 52; an unknown virtual StreamID.
        eio(cmd::atc_inv(VSID32, None, 0, 53, false));
        eio(cmd::cfgi_cd(VSID32 + 1, 0, true));
        eio(cmd::atc_inv(VSID32 + 1, None, 0, 0, false));
        // On an SMMU with DS the same SCALE and TTL are fine.
        let ds = Guest::with_regs(SmmuRegs::builder().raw(|r| r.idr5 = r.idr5.with_ds(1)).build());
        let c = cmd::with_range(cmd::tlbi_nh_vaa(0, 0, true), RangeFields { tg: 2, scale: 32, num: 0, ttl: 1 });
        assert!(ds.viommu.convert_user_cmd(c).is_ok());
        // Without RIL the range fields are RES0; with 8-bit ASIDs the upper
        // ASID byte is too; without ATS there is no ATC_INV; without
        // substreams no SubstreamID.
        let small = Guest::with_regs(
            SmmuRegs::builder().ril(false).id_widths(false, true).ats_pri(false, false).stream_bits(16, 0).build(),
        );
        let eio = |c: [u64; 2]| assert_eq!(small.viommu.convert_user_cmd(c), Err(Errno::EIO), "{c:x?}");
        eio(with_range_ok(cmd::tlbi_nh_vaa(0, 0, true)));
        eio(cmd::tlbi_nh_asid(0, 0x100));
        eio(cmd::atc_inv(VSID32, None, 0, 0, false));
        eio(cmd::cfgi_cd(VSID32, 1, true));
        assert!(small.viommu.convert_user_cmd(cmd::tlbi_nh_asid(0, 0xff)).is_ok());
        assert!(small.viommu.convert_user_cmd(cmd::cfgi_cd(VSID32, 0, true)).is_ok());
    }

    /// `arm_vsmmu_cache_invalidate()`: the array as a whole, `entry_num`
    /// the index of the first failing command, and the commands of the
    /// batch it was in never issued.
    #[test]
    fn invalidation_arrays() {
        let g = Guest::new();
        let issued = |g: &Guest| g.unit.cmd_stats().commands;
        assert_eq!(g.invalidate(&[cmd::tlbi_nh_all(0), cmd::cfgi_cd_all(VSID32)]), (Ok(()), 2));
        assert_eq!(issued(&g), 2);
        // The third command fails: two handled, none of them issued.
        let cmds = [cmd::tlbi_nh_all(0), cmd::tlbi_nsnh_all(), cmd::cfgi_ste(VSID32, true), cmd::tlbi_nh_all(0)];
        assert_eq!(g.invalidate(&cmds), (Err(Errno::EIO), 2));
        assert_eq!(issued(&g), 2);
        // 63 commands make a batch: a failure at index 70 leaves 63 issued.
        let mut many = vec![cmd::tlbi_nh_asid(0, 1); 70];
        many.push([0xff, 0]);
        assert_eq!(g.invalidate(&many), (Err(Errno::EIO), 70));
        assert_eq!(issued(&g), 2 + 63);
        // The array itself: another type or none at all is EINVAL, a
        // short entry is zero-extended, a long one with data E2BIG.
        let bytes = cmd::tlbi_nh_all(0).as_bytes().to_vec();
        assert_eq!(g.invalidate_raw(0, &bytes, 16, 1), (Err(Errno::EINVAL), 0));
        assert_eq!(g.invalidate_raw(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, &bytes, 16, 0), (Err(Errno::EINVAL), 0));
        assert_eq!(g.invalidate_raw(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, &bytes[..8], 8, 1), (Ok(()), 1));
        let mut long = bytes.clone();
        long.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(g.invalidate_raw(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, &long, 24, 1), (Err(Errno::E2BIG), 0));
        long[16..].fill(0);
        assert_eq!(g.invalidate_raw(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, &long, 24, 1), (Ok(()), 1));
    }
}
