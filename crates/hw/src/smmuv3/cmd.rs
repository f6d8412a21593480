//! SMMUv3 commands (IHI 0070 §4 "Commands": §4.3 configuration
//! invalidation, §4.4 TLB invalidation, §4.5 ATC invalidation): 128-bit
//! commands as the command queue holds them (two little-endian 64-bit
//! words), field masks as the driver's `CMDQ_*`, builders, and the decoding
//! of TLB invalidation ranges.
//!
//! Range invalidation (§4.4.1, `SMMU_IDR3.RIL`): a `CMD_TLBI_NH_VA`,
//! `CMD_TLBI_NH_VAA`, `CMD_TLBI_EL2_VA` or `CMD_TLBI_S2_IPA` with a non-zero
//! TG covers `(NUM + 1) * 2^SCALE` pages of the granule TG selects (1: 4KB,
//! 2: 16KB, 3: 64KB) from Address; TTL (when non-zero) names the level of
//! the leaf entries, a hint the model does not need (it invalidates leaves
//! of any size in the range, which the architecture allows). With TG zero,
//! or on an SMMU without RIL (where the fields are RES0), the command
//! covers the entries that translate Address. A TG naming a granule the
//! SMMU does not support is treated as every address, which is the safe
//! reading of the CONSTRAINED UNPREDICTABLE case.
//! [`encode_tlbi_range`] is the driver's side (`__arm_smmu_tlb_inv_range()`).

use super::info::{SmmuInfo, SZ_16K, SZ_4K, SZ_64K};

/// Opcodes (`CMDQ_OP_*`).
pub mod op {
    pub const PREFETCH_CFG: u8 = 0x01;
    pub const PREFETCH_ADDR: u8 = 0x02;
    pub const CFGI_STE: u8 = 0x03;
    pub const CFGI_ALL: u8 = 0x04;
    pub const CFGI_CD: u8 = 0x05;
    pub const CFGI_CD_ALL: u8 = 0x06;
    pub const TLBI_NH_ALL: u8 = 0x10;
    pub const TLBI_NH_ASID: u8 = 0x11;
    pub const TLBI_NH_VA: u8 = 0x12;
    pub const TLBI_NH_VAA: u8 = 0x13;
    pub const TLBI_EL2_ALL: u8 = 0x20;
    pub const TLBI_EL2_ASID: u8 = 0x21;
    pub const TLBI_EL2_VA: u8 = 0x22;
    pub const TLBI_S12_VMALL: u8 = 0x28;
    pub const TLBI_S2_IPA: u8 = 0x2a;
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    pub const ATC_INV: u8 = 0x40;
    pub const PRI_RESP: u8 = 0x41;
    pub const RESUME: u8 = 0x44;
    pub const CMD_SYNC: u8 = 0x46;
}

/// Command fields (`CMDQ_*`).
pub mod f {
    use crate::smmuv3::ste::genmask;
    pub const OP: u64 = 0xff;
    pub const SSV: u64 = 1 << 11;
    /// CFGI_* and ATC_INV: SubstreamID (31:12), StreamID (63:32).
    pub const SSID_SHIFT: u32 = 12;
    pub const SSID: u64 = genmask(31, 12);
    pub const SID_SHIFT: u32 = 32;
    pub const SID: u64 = genmask(63, 32);
    /// CFGI_STE/CFGI_CD word 1: Leaf.
    pub const CFGI_LEAF: u64 = 1 << 0;
    /// CFGI_STE_RANGE / CFGI_ALL word 1: Range.
    pub const CFGI_RANGE: u64 = 0x1f;
    /// TLBI word 0.
    pub const NUM_SHIFT: u32 = 12;
    pub const NUM: u64 = genmask(16, 12);
    pub const SCALE_SHIFT: u32 = 20;
    /// Bits 25:20 (`CMDQ_TLBI_0_SCALE`); bit 25 (SCALE above 31) is RES0
    /// without `IDR5.DS`.
    pub const SCALE: u64 = genmask(25, 20);
    pub const VMID_SHIFT: u32 = 32;
    pub const VMID: u64 = genmask(47, 32);
    pub const ASID_SHIFT: u32 = 48;
    pub const ASID: u64 = genmask(63, 48);
    /// TLBI word 1.
    pub const LEAF: u64 = 1 << 0;
    pub const TTL_SHIFT: u32 = 8;
    pub const TTL: u64 = genmask(9, 8);
    pub const TG_SHIFT: u32 = 10;
    pub const TG: u64 = genmask(11, 10);
    pub const VA: u64 = genmask(63, 12);
    pub const IPA: u64 = genmask(51, 12);
    /// ATC_INV.
    pub const ATC_GLOBAL: u64 = 1 << 9;
    /// `ATC_INV_SIZE_ALL`: a Size of 52 invalidates everything.
    pub const ATC_SIZE_ALL: u64 = 52;
    pub const ATC_SIZE: u64 = 0x3f;
    pub const ATC_ADDR: u64 = genmask(63, 12);
}

/// The opcode of a command.
pub const fn opcode(cmd: &[u64; 2]) -> u8 {
    (cmd[0] & f::OP) as u8
}

/// The StreamID of a CFGI or ATC_INV command.
pub const fn sid(cmd: &[u64; 2]) -> u32 {
    (cmd[0] >> f::SID_SHIFT) as u32
}

/// The SubstreamID of a CFGI_CD or ATC_INV command.
pub const fn ssid(cmd: &[u64; 2]) -> u32 {
    ((cmd[0] & f::SSID) >> f::SSID_SHIFT) as u32
}

/// The VMID of a TLBI command.
pub const fn vmid(cmd: &[u64; 2]) -> u16 {
    ((cmd[0] & f::VMID) >> f::VMID_SHIFT) as u16
}

/// The ASID of a TLBI command.
pub const fn asid(cmd: &[u64; 2]) -> u16 {
    (cmd[0] >> f::ASID_SHIFT) as u16
}

/// `CMD_TLBI_NH_ALL` for `vmid`.
pub const fn tlbi_nh_all(vmid: u16) -> [u64; 2] {
    [op::TLBI_NH_ALL as u64 | (vmid as u64) << f::VMID_SHIFT, 0]
}

/// `CMD_TLBI_NH_ASID`.
pub const fn tlbi_nh_asid(vmid: u16, asid: u16) -> [u64; 2] {
    [op::TLBI_NH_ASID as u64 | (vmid as u64) << f::VMID_SHIFT | (asid as u64) << f::ASID_SHIFT, 0]
}

/// `CMD_TLBI_NH_VA` without a range: the entries translating `addr`.
pub const fn tlbi_nh_va(vmid: u16, asid: u16, addr: u64, leaf: bool) -> [u64; 2] {
    [
        op::TLBI_NH_VA as u64 | (vmid as u64) << f::VMID_SHIFT | (asid as u64) << f::ASID_SHIFT,
        (addr & f::VA) | leaf as u64,
    ]
}

/// `CMD_TLBI_NH_VAA` without a range.
pub const fn tlbi_nh_vaa(vmid: u16, addr: u64, leaf: bool) -> [u64; 2] {
    [op::TLBI_NH_VAA as u64 | (vmid as u64) << f::VMID_SHIFT, (addr & f::VA) | leaf as u64]
}

/// A range for a TLBI command: TG (1: 4KB, 2: 16KB, 3: 64KB), SCALE, NUM
/// (the field: the count minus one) and TTL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeFields {
    pub tg: u64,
    pub scale: u64,
    pub num: u64,
    pub ttl: u64,
}

/// `cmd` with the range fields set.
pub const fn with_range(mut cmd: [u64; 2], r: RangeFields) -> [u64; 2] {
    cmd[0] = cmd[0] & !(f::NUM | f::SCALE) | (r.num << f::NUM_SHIFT) & f::NUM | (r.scale << f::SCALE_SHIFT) & f::SCALE;
    cmd[1] = cmd[1] & !(f::TG | f::TTL) | (r.tg << f::TG_SHIFT) & f::TG | (r.ttl << f::TTL_SHIFT) & f::TTL;
    cmd
}

/// `CMD_TLBI_NSNH_ALL`.
pub const fn tlbi_nsnh_all() -> [u64; 2] {
    [op::TLBI_NSNH_ALL as u64, 0]
}

/// `CMD_TLBI_S12_VMALL`.
pub const fn tlbi_s12_vmall(vmid: u16) -> [u64; 2] {
    [op::TLBI_S12_VMALL as u64 | (vmid as u64) << f::VMID_SHIFT, 0]
}

/// `CMD_CFGI_CD`.
pub const fn cfgi_cd(sid: u32, ssid: u32, leaf: bool) -> [u64; 2] {
    [op::CFGI_CD as u64 | ((ssid as u64) << f::SSID_SHIFT) & f::SSID | (sid as u64) << f::SID_SHIFT, leaf as u64]
}

/// `CMD_CFGI_CD_ALL`.
pub const fn cfgi_cd_all(sid: u32) -> [u64; 2] {
    [op::CFGI_CD_ALL as u64 | (sid as u64) << f::SID_SHIFT, 0]
}

/// `CMD_CFGI_STE`.
pub const fn cfgi_ste(sid: u32, leaf: bool) -> [u64; 2] {
    [op::CFGI_STE as u64 | (sid as u64) << f::SID_SHIFT, leaf as u64]
}

/// `CMD_ATC_INV` (`arm_smmu_atc_inv_to_cmd()`'s fields).
pub const fn atc_inv(sid: u32, ssid: Option<u32>, addr: u64, size: u32, global: bool) -> [u64; 2] {
    let mut w0 = op::ATC_INV as u64 | (sid as u64) << f::SID_SHIFT;
    if let Some(s) = ssid {
        w0 |= f::SSV | ((s as u64) << f::SSID_SHIFT) & f::SSID;
    }
    if global {
        w0 |= f::ATC_GLOBAL;
    }
    [w0, (addr & f::ATC_ADDR) | (size as u64 & f::ATC_SIZE)]
}

/// `CMD_SYNC` (no completion signal).
pub const fn cmd_sync() -> [u64; 2] {
    [op::CMD_SYNC as u64, 0]
}

/// The addresses a TLBI-by-address command covers, inclusive:
/// `start..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiRange {
    pub start: u64,
    pub last: u64,
}

/// Decode the address range of a `CMD_TLBI_NH_VA`/`NH_VAA`/`EL2_VA` (see
/// the module doc) on `info`'s SMMU.
pub fn tlbi_range(cmd: &[u64; 2], info: &SmmuInfo) -> TlbiRange {
    let addr = cmd[1] & f::VA;
    let tg = (cmd[1] & f::TG) >> f::TG_SHIFT;
    if !info.range_inv() || tg == 0 {
        return TlbiRange { start: addr, last: addr };
    }
    let (gran, supported) = match tg {
        1 => (12, info.regs.idr5.gran4k() != 0),
        2 => (14, info.regs.idr5.gran16k() != 0),
        _ => (16, info.regs.idr5.gran64k() != 0),
    };
    if !supported {
        return TlbiRange { start: 0, last: u64::MAX };
    }
    let num = ((cmd[0] & f::NUM) >> f::NUM_SHIFT) + 1;
    let scale = (cmd[0] & f::SCALE) >> f::SCALE_SHIFT;
    let start = addr & !((1u64 << gran) - 1);
    // (NUM + 1) << (SCALE + granule) bytes, at most 32 << (63 + 16).
    let len = u128::from(num) << (scale + gran);
    let last = (u128::from(start) + len - 1).min(u128::from(u64::MAX)) as u64;
    TlbiRange { start, last }
}

/// `__arm_smmu_tlb_inv_range()`: the commands the driver issues to
/// invalidate `size` bytes at `iova` with `granule` leaves (`leaf`: leaf
/// entries only) for a domain with `pgsize_bitmap`, from `base` (opcode,
/// VMID, ASID set). With `ril` it uses range commands (TG from the
/// smallest page size, TTL from the granule for leaf invalidations), else
/// one command per `granule`.
pub fn encode_tlbi_range(
    base: [u64; 2],
    iova: u64,
    size: u64,
    granule: u64,
    leaf: bool,
    pgsize_bitmap: u64,
    ril: bool,
) -> Vec<[u64; 2]> {
    let mut out = Vec::new();
    if size == 0 {
        return out;
    }
    let end = iova.saturating_add(size);
    let mut cmd = base;
    if leaf {
        cmd[1] |= f::LEAF;
    }
    let mut iova = iova;
    let mut num_pages = 0u64;
    let mut tg = 0u32;
    let mut inv_range = granule;
    if ril {
        tg = pgsize_bitmap.trailing_zeros();
        num_pages = size >> tg;
        let mut r = RangeFields { tg: u64::from((tg - 10) / 2), ..Default::default() };
        if leaf {
            r.ttl = u64::from(4 - ((granule.trailing_zeros() - 3) / (tg - 3)));
        } else if num_pages & 31 == 1 {
            num_pages += 1;
        }
        cmd = with_range(cmd, r);
    }
    while iova < end {
        if ril {
            let scale = num_pages.trailing_zeros();
            let num = (num_pages >> scale) & 31;
            let r = RangeFields {
                tg: (cmd[1] & f::TG) >> f::TG_SHIFT,
                ttl: (cmd[1] & f::TTL) >> f::TTL_SHIFT,
                scale: u64::from(scale),
                num: num - 1,
            };
            cmd = with_range(cmd, r);
            inv_range = num << (scale + tg);
            num_pages -= num << scale;
        }
        cmd[1] = cmd[1] & !f::VA | (iova & f::VA);
        out.push(cmd);
        iova = iova.saturating_add(inv_range);
    }
    out
}

/// Granule sizes by TG.
pub const TG_SIZES: [u64; 4] = [0, SZ_4K, SZ_16K, SZ_64K];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::regs::SmmuRegs;

    fn info() -> SmmuInfo {
        SmmuInfo::from_regs(SmmuRegs::default()).unwrap()
    }

    #[test]
    fn builders_by_hand() {
        assert_eq!(tlbi_nh_all(5), [0x0000_0005_0000_0010, 0]);
        assert_eq!(tlbi_nh_asid(5, 0x42), [0x0042_0005_0000_0011, 0]);
        assert_eq!(tlbi_nh_va(5, 0x42, 0x1234_5678, true), [0x0042_0005_0000_0012, 0x1234_5001]);
        assert_eq!(tlbi_nh_vaa(1, 0xffff_0000_0000_1fff, false), [0x0000_0001_0000_0013, 0xffff_0000_0000_1000]);
        assert_eq!(cfgi_cd(0x10, 3, true), [0x0000_0010_0000_3005, 1]);
        assert_eq!(cfgi_cd_all(0x10), [0x0000_0010_0000_0006, 0]);
        assert_eq!(cfgi_ste(7, false), [0x0000_0007_0000_0003, 0]);
        assert_eq!(atc_inv(0x10, Some(1), 0x8000, 3, false), [0x0000_0010_0000_1840, 0x8003]);
        assert_eq!(atc_inv(0x10, None, 0, 52, true), [0x0000_0010_0000_0240, 52]);
        assert_eq!(tlbi_nsnh_all(), [0x30, 0]);
        assert_eq!(tlbi_s12_vmall(9), [0x0000_0009_0000_0028, 0]);
        assert_eq!(cmd_sync(), [0x46, 0]);
        let c = tlbi_nh_va(5, 0x42, 0x20_0000, false);
        assert_eq!((opcode(&c), vmid(&c), asid(&c)), (op::TLBI_NH_VA, 5, 0x42));
        let c = cfgi_cd(0xabcd, 0xfffff, false);
        assert_eq!((sid(&c), ssid(&c)), (0xabcd, 0xfffff));
        // TG 4KB, SCALE 3, NUM 5 (6 chunks), TTL 3.
        let r = with_range(tlbi_nh_va(1, 2, 0x10_0000, true), RangeFields { tg: 1, scale: 3, num: 5, ttl: 3 });
        assert_eq!(r[0], 0x0002_0001_0030_5012);
        assert_eq!(r[1], 0x10_0000 | 1 << 10 | 3 << 8 | 1);
    }

    #[test]
    fn range_decoding() {
        let i = info();
        // 6 * 2^3 pages of 4KB from 1MB.
        let r = with_range(tlbi_nh_va(1, 2, 0x10_0000, true), RangeFields { tg: 1, scale: 3, num: 5, ttl: 3 });
        assert_eq!(tlbi_range(&r, &i), TlbiRange { start: 0x10_0000, last: 0x10_0000 + 48 * 0x1000 - 1 });
        // 64KB granule, one page, an unaligned address.
        let r = with_range(tlbi_nh_va(1, 2, 0x12_3000, true), RangeFields { tg: 3, ..Default::default() });
        assert_eq!(tlbi_range(&r, &i), TlbiRange { start: 0x12_0000, last: 0x12_ffff });
        // 16KB is not supported by the default SMMU: everything.
        let r = with_range(tlbi_nh_va(1, 2, 0x4000, true), RangeFields { tg: 2, ..Default::default() });
        assert_eq!(tlbi_range(&r, &i), TlbiRange { start: 0, last: u64::MAX });
        // TG 0: the one address; without RIL the fields are ignored.
        let r = tlbi_nh_va(1, 2, 0x5000, false);
        assert_eq!(tlbi_range(&r, &i), TlbiRange { start: 0x5000, last: 0x5000 });
        let no_ril = SmmuInfo::from_regs(SmmuRegs::builder().ril(false).build()).unwrap();
        let r = with_range(tlbi_nh_va(1, 2, 0x5000, true), RangeFields { tg: 1, scale: 9, num: 31, ttl: 0 });
        assert_eq!(tlbi_range(&r, &no_ril), TlbiRange { start: 0x5000, last: 0x5000 });
        // The largest range does not wrap.
        let r = with_range(tlbi_nh_va(1, 2, u64::MAX & f::VA, true), RangeFields { tg: 3, scale: 31, num: 31, ttl: 0 });
        assert_eq!(tlbi_range(&r, &i).last, u64::MAX);
    }

    /// The driver's range encoding, decoded again, covers exactly the
    /// pages asked for (NUM has 5 bits, so one command per set bit group).
    #[test]
    fn driver_ranges_round_trip() {
        let i = info();
        let base = tlbi_nh_va(3, 4, 0, false);
        let bitmap = SZ_4K | (1 << 21) | (1 << 30);
        for (iova, pages) in [(0x1000u64, 1u64), (0x20_0000, 512), (0x3000, 0x12345), (0, 33), (0x7000, 31)] {
            let size = pages * SZ_4K;
            let cmds = encode_tlbi_range(base, iova, size, SZ_4K, true, bitmap, true);
            let mut next = iova;
            for c in &cmds {
                assert_eq!(opcode(c), op::TLBI_NH_VA);
                assert_eq!((c[1] & f::TTL) >> f::TTL_SHIFT, 3, "leaf 4KB entries are level 3");
                let r = tlbi_range(c, &i);
                assert_eq!(r.start, next);
                next = r.last + 1;
            }
            assert_eq!(next, iova + size, "{pages} pages");
            assert!(cmds.len() <= 4);
        }
        // Non-leaf: no TTL, and a lone 1-page chunk becomes 2 pages.
        let cmds = encode_tlbi_range(base, 0, SZ_4K, SZ_4K, false, bitmap, true);
        assert_eq!(cmds.len(), 1);
        let r = tlbi_range(&cmds[0], &i);
        assert_eq!((r.start, r.last), (0, 2 * SZ_4K - 1));
        assert_eq!(cmds[0][1] & f::TTL, 0);
        // Leaf invalidation of 2MB blocks: TTL 2.
        let cmds = encode_tlbi_range(base, 0, 1 << 22, 1 << 21, true, bitmap, true);
        assert_eq!((cmds[0][1] & f::TTL) >> f::TTL_SHIFT, 2);
        // Without RIL: one command per granule.
        let cmds = encode_tlbi_range(base, 0x4000, 3 * SZ_4K, SZ_4K, true, bitmap, false);
        assert_eq!(cmds.iter().map(|c| c[1] & f::VA).collect::<Vec<_>>(), vec![0x4000, 0x5000, 0x6000]);
        assert!(encode_tlbi_range(base, 0, 0, SZ_4K, true, bitmap, true).is_empty());
        assert_eq!(TG_SIZES[1], SZ_4K);
    }
}
