//! What iommufd commands point at: IOVA range arrays, the driver data of
//! HWPT_ALLOC, VIOMMU_ALLOC and GET_HW_INFO per type (raw registers with
//! their fields named), invalidation entries per type (SMMUv3 commands by
//! opcode), dirty bitmaps.

use core::mem::size_of;

use uiommufd_abi::iommufd::*;
use uiommufd_abi::test_cmd::*;
use uiommufd_hw::smmuv3::ste::stef;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::fields;
use crate::ioctl::{Call, Phase};
use crate::out::{all_fields, user_struct, Fmt, Fmt::*, Names, Out, F};

fn range(o: &mut Out<'_>, r: &IommuIovaRange) {
    o.obj(|o| {
        o.key("start");
        o.hex(r.start);
        o.key("last");
        o.hex(r.last);
    });
}

/// `allowed_iovas` of IOAS_ALLOW_IOVAS: `num_iovas` ranges, an input.
pub(crate) fn iova_ranges_in(c: &mut Call<'_, '_>, f: &F) {
    if c.phase == Phase::Enter {
        c.key(f.name);
        let n = c.e(8, 4);
        c.o.array(f.get(c.entry), n, size_of::<IommuIovaRange>(), range);
    }
}

/// `allowed_iovas` of IOAS_IOVA_RANGES: an output buffer of `num_iovas`
/// ranges (the kernel writes `num_iovas` back, the ranges only if they
/// fit).
pub(crate) fn iova_ranges_out(c: &mut Call<'_, '_>, f: &F) {
    match c.phase {
        Phase::Enter => {
            c.key(f.name);
            c.o.ptr(f.get(c.entry));
        }
        Phase::Exit if c.out_ok() => {
            let n = c.e(8, 4).min(c.x(8, 4));
            c.key(f.name);
            c.o.array(f.get(c.entry), n, size_of::<IommuIovaRange>(), range);
        }
        Phase::Exit => {}
    }
}

/// Hexadecimal, then the fields of a register that are not zero, as a
/// comment: `0xd2008c22260286 /* ND=0x6 AFL SAGAW=0x4 ... */`.
fn reg<'f>(o: &mut Out<'_>, v: u64, fields: impl Iterator<Item = (&'f str, u32, u32)>) {
    o.hex(v);
    let mut first = true;
    for (name, lo, width) in fields {
        let mask = if width >= 64 { u64::MAX } else { (1u64 << width) - 1 };
        let x = (v >> lo) & mask;
        if x == 0 {
            continue;
        }
        o.s(if first { " /* " } else { " " });
        first = false;
        o.s(name);
        if width > 1 {
            o.s("=");
            o.hex(x);
        }
    }
    if !first {
        o.s(" */");
    }
}

fn vtd_cap(o: &mut Out<'_>, v: u64) {
    use uiommufd_hw::vtd::Cap;
    reg(o, v, Cap::FIELDS.iter().map(|f| (f.name, f.lo, f.width)));
}

fn vtd_ecap(o: &mut Out<'_>, v: u64) {
    use uiommufd_hw::vtd::Ecap;
    reg(o, v, Ecap::FIELDS.iter().map(|f| (f.name, f.lo, f.width)));
}

/// `idr[6]` of the SMMUv3 info: each register with its fields.
fn smmu_idrs(o: &mut Out<'_>, b: &[u8]) {
    use uiommufd_hw::smmuv3::regs::{Idr0, Idr1, Idr2, Idr3, Idr4, Idr5};
    let tables = [Idr0::FIELDS, Idr1::FIELDS, Idr2::FIELDS, Idr3::FIELDS, Idr4::FIELDS, Idr5::FIELDS];
    o.s("[");
    for (i, t) in tables.iter().enumerate() {
        if i > 0 {
            o.s(", ");
        }
        let v = crate::out::le(b, i * 4, 4);
        reg(o, v, t.iter().map(|f| (f.name, f.lo, f.width)));
    }
    o.s("]");
}

fn smmu_iidr(o: &mut Out<'_>, v: u64) {
    use uiommufd_hw::smmuv3::regs::Iidr;
    reg(o, v, Iidr::FIELDS.iter().map(|f| (f.name, f.lo, f.width)));
}

fn smmu_aidr(o: &mut Out<'_>, v: u64) {
    use uiommufd_hw::smmuv3::regs::Aidr;
    reg(o, v, Aidr::FIELDS.iter().map(|f| (f.name, f.lo, f.width)));
}

/// AMD IOMMU Extended Feature Register (AMD I/O Virtualization Technology
/// Specification 48882, MMIO offset 0030h), the fields Linux names
/// (`FEATURE_*`).
const AMD_EFR: &[(&str, u32, u32)] = &[
    ("PREFSUP", 0, 1),
    ("PPRSUP", 1, 1),
    ("XTSUP", 2, 1),
    ("NXSUP", 3, 1),
    ("GTSUP", 4, 1),
    ("IASUP", 6, 1),
    ("GASUP", 7, 1),
    ("HESUP", 8, 1),
    ("PCSUP", 9, 1),
    ("HATS", 10, 2),
    ("GATS", 12, 2),
    ("GLXSUP", 14, 2),
    ("GAMSUP_VAPIC", 21, 1),
    ("PASMAX", 32, 5),
    ("GIOSUP", 48, 1),
    ("HASUP", 49, 1),
    ("EPHSUP", 50, 1),
    ("HDSUP", 52, 1),
    ("SNPSUP", 63, 1),
];

/// The Extended Feature 2 Register (MMIO offset 01A0h).
const AMD_EFR2: &[(&str, u32, u32)] = &[
    ("SEVSNPIO_SUP", 1, 1),
    ("GCR3TRPMODE", 3, 1),
    ("SNPAVICSUP", 5, 3),
    ("NUMINTREMAPSUP", 8, 2),
    ("HTRANGEIGNORE", 11, 1),
    ("SNPPAGEMODE0SUP", 13, 1),
];

fn amd_efr(o: &mut Out<'_>, v: u64) {
    reg(o, v, AMD_EFR.iter().copied());
}

fn amd_efr2(o: &mut Out<'_>, v: u64) {
    reg(o, v, AMD_EFR2.iter().copied());
}

/// `[w0, w1, ...]`: little-endian 64-bit words.
fn words(o: &mut Out<'_>, b: &[u8]) {
    o.s("[");
    for (i, w) in b.chunks(8).enumerate() {
        if i > 0 {
            o.s(", ");
        }
        o.hex(crate::out::le(w, 0, 8));
    }
    o.s("]");
}

/// A guest stream table entry (IHI 0070 §5.2), words 0 and 1: the raw
/// words, then the fields the vSMMU looks at.
fn ste(o: &mut Out<'_>, b: &[u8]) {
    words(o, b);
    let w0 = crate::out::le(b, 0, 8);
    let w1 = crate::out::le(b, 8, 8);
    let cfg = (w0 & stef::CFG) >> stef::CFG_SHIFT;
    let cfg = match cfg {
        stef::CFG_ABORT => "ABORT",
        stef::CFG_BYPASS => "BYPASS",
        stef::CFG_S1_TRANS => "S1_TRANS",
        stef::CFG_S2_TRANS => "S2_TRANS",
        stef::CFG_NESTED => "NESTED",
        _ => "RESERVED",
    };
    o.fmt(format_args!(" /* V={} CONFIG={cfg}", w0 & stef::V));
    if w0 & stef::CFG != 0 {
        o.fmt(format_args!(
            " S1FMT={} S1CONTEXTPTR={:#x} S1CDMAX={} S1DSS={} EATS={}",
            (w0 & stef::S1FMT) >> stef::S1FMT_SHIFT,
            w0 & stef::S1CTXPTR,
            (w0 & stef::S1CDMAX) >> stef::S1CDMAX_SHIFT,
            w1 & stef::S1DSS,
            (w1 & stef::EATS) >> stef::EATS_SHIFT,
        ));
    }
    o.s(" */");
}

/// One SMMUv3 command (IHI 0070 §4), by opcode, with the fields that
/// opcode has.
fn smmu_cmd(o: &mut Out<'_>, b: &[u8]) {
    use uiommufd_hw::smmuv3::cmd::{f, op};
    let w = [crate::out::le(b, 0, 8), crate::out::le(b, 8, 8)];
    let opcode = (w[0] & f::OP) as u8;
    let name = match opcode {
        op::PREFETCH_CFG => "CMD_PREFETCH_CONFIG",
        op::PREFETCH_ADDR => "CMD_PREFETCH_ADDR",
        op::CFGI_STE => "CMD_CFGI_STE",
        op::CFGI_ALL => "CMD_CFGI_ALL",
        op::CFGI_CD => "CMD_CFGI_CD",
        op::CFGI_CD_ALL => "CMD_CFGI_CD_ALL",
        op::TLBI_NH_ALL => "CMD_TLBI_NH_ALL",
        op::TLBI_NH_ASID => "CMD_TLBI_NH_ASID",
        op::TLBI_NH_VA => "CMD_TLBI_NH_VA",
        op::TLBI_NH_VAA => "CMD_TLBI_NH_VAA",
        op::TLBI_EL2_ALL => "CMD_TLBI_EL2_ALL",
        op::TLBI_EL2_ASID => "CMD_TLBI_EL2_ASID",
        op::TLBI_EL2_VA => "CMD_TLBI_EL2_VA",
        op::TLBI_S12_VMALL => "CMD_TLBI_S12_VMALL",
        op::TLBI_S2_IPA => "CMD_TLBI_S2_IPA",
        op::TLBI_NSNH_ALL => "CMD_TLBI_NSNH_ALL",
        op::ATC_INV => "CMD_ATC_INV",
        op::PRI_RESP => "CMD_PRI_RESP",
        op::RESUME => "CMD_RESUME",
        op::CMD_SYNC => "CMD_SYNC",
        _ => "",
    };
    o.obj(|o| {
        o.key("opcode");
        if name.is_empty() {
            o.hex(opcode as u64);
        } else {
            o.s(name);
        }
        let sid = (w[0] & f::SID) >> f::SID_SHIFT;
        let ssid = (w[0] & f::SSID) >> f::SSID_SHIFT;
        let vmid = (w[0] & f::VMID) >> f::VMID_SHIFT;
        let asid = (w[0] & f::ASID) >> f::ASID_SHIFT;
        let field = |o: &mut Out<'_>, k: &str, v: u64, hex: bool| {
            o.key(k);
            if hex {
                o.hex(v)
            } else {
                o.dec(v)
            }
        };
        match opcode {
            op::CFGI_STE | op::CFGI_CD | op::CFGI_CD_ALL => {
                field(o, "sid", sid, false);
                if opcode == op::CFGI_CD {
                    field(o, "ssid", ssid, false);
                }
                if opcode != op::CFGI_CD_ALL {
                    field(o, "leaf", w[1] & f::CFGI_LEAF, false);
                }
            }
            op::CFGI_ALL => field(o, "range", w[1] & f::CFGI_RANGE, false),
            op::TLBI_NH_ALL | op::TLBI_S12_VMALL => field(o, "vmid", vmid, false),
            op::TLBI_NH_ASID | op::TLBI_EL2_ASID => {
                field(o, "vmid", vmid, false);
                field(o, "asid", asid, false);
            }
            op::TLBI_NH_VA | op::TLBI_NH_VAA | op::TLBI_EL2_VA | op::TLBI_S2_IPA => {
                field(o, "vmid", vmid, false);
                if matches!(opcode, op::TLBI_NH_VA | op::TLBI_EL2_VA) {
                    field(o, "asid", asid, false);
                }
                let addr = if opcode == op::TLBI_S2_IPA { w[1] & f::IPA } else { w[1] & f::VA };
                field(o, "addr", addr, true);
                field(o, "leaf", w[1] & f::LEAF, false);
                let tg = (w[1] & f::TG) >> f::TG_SHIFT;
                if tg != 0 {
                    field(o, "tg", tg, false);
                    field(o, "num", (w[0] & f::NUM) >> f::NUM_SHIFT, false);
                    field(o, "scale", (w[0] & f::SCALE) >> f::SCALE_SHIFT, false);
                    field(o, "ttl", (w[1] & f::TTL) >> f::TTL_SHIFT, false);
                }
            }
            op::ATC_INV => {
                field(o, "sid", sid, false);
                if w[0] & f::SSV != 0 {
                    field(o, "ssid", ssid, false);
                }
                field(o, "global", u64::from(w[1] & f::ATC_GLOBAL != 0), false);
                field(o, "size", w[1] & f::ATC_SIZE, false);
                field(o, "addr", w[1] & f::ATC_ADDR, true);
            }
            op::TLBI_NSNH_ALL | op::TLBI_EL2_ALL | op::CMD_SYNC => {}
            _ => {
                o.key("cmd");
                words(o, b);
            }
        }
    });
}

const VTD_S1_FLAGS: Names =
    &[(IOMMU_VTD_S1_SRE as u64, "SRE"), (IOMMU_VTD_S1_EAFE as u64, "EAFE"), (IOMMU_VTD_S1_WPE as u64, "WPE")];

const MOCK_PT_TYPES: Names = &[(MOCK_IOMMUPT_DEFAULT as u64, "DEFAULT"), (MOCK_IOMMUPT_HUGE as u64, "HUGE")];

/// The driver data of IOMMU_HWPT_ALLOC, by `data_type`.
pub(crate) fn hwpt_data(c: &mut Call<'_, '_>, f: &F) {
    if c.phase != Phase::Enter {
        return;
    }
    let (ty, len, addr) = (c.e(24, 4) as u32, c.e(28, 4) as usize, f.get(c.entry));
    c.key(f.name);
    let o = &mut *c.o;
    if len == 0 {
        o.ptr(addr);
        return;
    }
    match ty {
        IOMMU_HWPT_DATA_VTD_S1 => user_struct(
            o,
            addr,
            len,
            size_of::<IommuHwptVtdS1>(),
            fields!(IommuHwptVtdS1 {
                flags: u64 = Flags(VTD_S1_FLAGS),
                pgtbl_addr: u64 = Hex,
                addr_width: u32 = Dec,
                __reserved: u32 = Rsv,
            }),
        ),
        IOMMU_HWPT_DATA_ARM_SMMUV3 => user_struct(
            o,
            addr,
            len,
            size_of::<IommuHwptArmSmmuv3>(),
            fields!(IommuHwptArmSmmuv3 { ste: [u64; 2] = Bytes(ste) }),
        ),
        IOMMU_HWPT_DATA_AMD_GUEST => user_struct(
            o,
            addr,
            len,
            size_of::<IommuHwptAmdGuest>(),
            fields!(IommuHwptAmdGuest { dte: [u64; 4] = Bytes(words) }),
        ),
        IOMMU_HWPT_DATA_SELFTEST => user_struct(
            o,
            addr,
            len,
            size_of::<IommuHwptSelftest>(),
            fields!(IommuHwptSelftest { iotlb: u32 = Hex, pagetable_type: u32 = Enum(MOCK_PT_TYPES) }),
        ),
        _ => o.bytes(addr, len),
    }
}

const VTD_INFO_FLAGS: Names = &[(IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 as u64, "ERRATA_772415_SPR17")];
const SMMU_INFO_FLAGS: Names = &[(IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI as u64, "ERRATA_REPEAT_TLBI_CFGI")];

/// `data_uptr` of IOMMU_GET_HW_INFO: the buffer before the call, the
/// driver's info by `out_data_type` after it (as much of it as fits both
/// the buffer and what the kernel wrote).
pub(crate) fn hw_info_data(c: &mut Call<'_, '_>, f: &F) {
    let addr = f.get(c.entry);
    match c.phase {
        Phase::Enter => {
            c.key(f.name);
            c.o.ptr(addr);
        }
        Phase::Exit if c.out_ok() => {
            let len = c.e(12, 4).min(c.x(12, 4)) as usize;
            if len == 0 || addr == 0 {
                return;
            }
            c.key("data");
            let ty = c.x(24, 4) as u32;
            let o = &mut *c.o;
            match ty {
                IOMMU_HW_INFO_TYPE_INTEL_VTD => user_struct(
                    o,
                    addr,
                    len,
                    size_of::<IommuHwInfoVtd>(),
                    fields!(IommuHwInfoVtd {
                        flags: u32 = Flags(VTD_INFO_FLAGS),
                        __reserved: u32 = Rsv,
                        cap_reg: u64 = With(vtd_cap),
                        ecap_reg: u64 = With(vtd_ecap),
                    }),
                ),
                IOMMU_HW_INFO_TYPE_ARM_SMMUV3 => user_struct(
                    o,
                    addr,
                    len,
                    size_of::<IommuHwInfoArmSmmuv3>(),
                    fields!(IommuHwInfoArmSmmuv3 {
                        flags: u32 = Flags(SMMU_INFO_FLAGS),
                        __reserved: u32 = Rsv,
                        idr: [u32; 6] = Bytes(smmu_idrs),
                        iidr: u32 = With(smmu_iidr),
                        aidr: u32 = With(smmu_aidr),
                    }),
                ),
                IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV => user_struct(
                    o,
                    addr,
                    len,
                    size_of::<IommuHwInfoTegra241Cmdqv>(),
                    fields!(IommuHwInfoTegra241Cmdqv {
                        flags: u32 = Hex,
                        version: u8 = Dec,
                        log2vcmdqs: u8 = Dec,
                        log2vsids: u8 = Dec,
                        __reserved: u8 = Rsv,
                    }),
                ),
                IOMMU_HW_INFO_TYPE_AMD => user_struct(
                    o,
                    addr,
                    len,
                    size_of::<IommuHwInfoAmd>(),
                    fields!(IommuHwInfoAmd { efr: u64 = With(amd_efr), efr2: u64 = With(amd_efr2) }),
                ),
                IOMMU_HW_INFO_TYPE_SELFTEST => user_struct(
                    o,
                    addr,
                    len,
                    size_of::<IommuTestHwInfo>(),
                    fields!(IommuTestHwInfo { flags: u32 = Hex, test_reg: u32 = Hex }),
                ),
                _ => o.bytes(addr, len),
            }
        }
        Phase::Exit => {}
    }
}

const VTD_INV_FLAGS: Names = &[(IOMMU_VTD_INV_FLAGS_LEAF as u64, "LEAF")];
const TEST_INV_FLAGS: Names = &[(IOMMU_TEST_INVALIDATE_FLAG_ALL as u64, "ALL")];

/// `entry_num` entries of `T` every `stride` bytes at `addr`, each shown
/// with `fields`.
fn entries<T: FromBytes + IntoBytes + Immutable>(o: &mut Out<'_>, addr: u64, n: u64, stride: usize, fields: &[F]) {
    o.array::<T>(addr, n, stride, |o, e| all_fields(o, e.as_bytes(), fields));
}

/// `data_uptr` of IOMMU_HWPT_INVALIDATE: the entries by `data_type`.
pub(crate) fn invalidate_entries(c: &mut Call<'_, '_>, f: &F) {
    if c.phase != Phase::Enter {
        return;
    }
    let (addr, ty, len, n) = (f.get(c.entry), c.e(16, 4) as u32, c.e(20, 4) as usize, c.e(24, 4));
    c.key(f.name);
    let o = &mut *c.o;
    if n == 0 || len == 0 {
        o.ptr(addr);
        return;
    }
    match ty {
        IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 => entries::<IommuHwptVtdS1Invalidate>(
            o,
            addr,
            n,
            len,
            fields!(IommuHwptVtdS1Invalidate {
                addr: u64 = Hex,
                npages: u64 = Dec,
                flags: u32 = Flags(VTD_INV_FLAGS),
                __reserved: u32 = Rsv,
            }),
        ),
        IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 => {
            o.array::<IommuViommuArmSmmuv3Invalidate>(addr, n, len, |o, e| smmu_cmd(o, e.cmd.as_bytes()))
        }
        // The HWPT's and the vIOMMU's mock entries share the type number;
        // the vIOMMU's is the longer.
        IOMMU_HWPT_INVALIDATE_DATA_SELFTEST if len >= size_of::<IommuViommuInvalidateSelftest>() => {
            entries::<IommuViommuInvalidateSelftest>(
                o,
                addr,
                n,
                len,
                fields!(IommuViommuInvalidateSelftest {
                    flags: u32 = Flags(TEST_INV_FLAGS),
                    vdev_id: u32 = Dec,
                    cache_id: u32 = Dec,
                }),
            )
        }
        IOMMU_HWPT_INVALIDATE_DATA_SELFTEST => entries::<IommuHwptInvalidateSelftest>(
            o,
            addr,
            n,
            len,
            fields!(IommuHwptInvalidateSelftest { flags: u32 = Flags(TEST_INV_FLAGS), iotlb_id: u32 = Dec }),
        ),
        _ => o.ptr(addr),
    }
}

/// A struct at a user address with input and output fields (`Fmt::Out`):
/// its inputs before the call as `name={...}`, its outputs after a
/// successful one as `data={...}`.
fn in_out_struct(c: &mut Call<'_, '_>, name: &str, addr: u64, len: usize, size: usize, fields: &[F]) {
    let mut buf = [0u8; 64];
    let n = len.min(size).min(buf.len());
    let want_out = c.phase == Phase::Exit;
    if want_out && !c.out_ok() {
        return;
    }
    let mine = |f: &&F| matches!(f.fmt, Fmt::Out(_)) == want_out;
    if !fields.iter().any(|f| mine(&f)) {
        if !want_out {
            c.key(name);
            c.o.ptr(addr);
        }
        return;
    }
    c.key(if want_out { "data" } else { name });
    if addr == 0 || !c.o.mem.read(addr, &mut buf[..n]) {
        c.o.ptr(addr);
        return;
    }
    let o = &mut *c.o;
    o.obj(|o| {
        for f in fields.iter().filter(mine) {
            if f.end() <= n {
                o.key(f.name);
                crate::out::value(o, &f.fmt, f, &buf[..n]);
            }
        }
    });
}

/// `data_uptr` of IOMMU_VIOMMU_ALLOC, by `type`.
pub(crate) fn viommu_data(c: &mut Call<'_, '_>, f: &F) {
    let (ty, len, addr) = (c.e(8, 4) as u32, c.e(24, 4) as usize, f.get(c.entry));
    match ty {
        _ if len == 0 => {
            if c.phase == Phase::Enter {
                c.key(f.name);
                c.o.ptr(addr);
            }
        }
        IOMMU_VIOMMU_TYPE_SELFTEST => in_out_struct(
            c,
            f.name,
            addr,
            len,
            size_of::<IommuViommuSelftest>(),
            fields!(IommuViommuSelftest {
                in_data: u32 = Hex,
                out_data: u32 = Out(&Hex),
                out_mmap_offset: u64 = Out(&Hex),
                out_mmap_length: u64 = Out(&Hex),
            }),
        ),
        IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV => in_out_struct(
            c,
            f.name,
            addr,
            len,
            size_of::<IommuViommuTegra241Cmdqv>(),
            fields!(IommuViommuTegra241Cmdqv {
                out_vintf_mmap_offset: u64 = Out(&Hex),
                out_vintf_mmap_length: u64 = Out(&Hex),
            }),
        ),
        _ => {
            if c.phase == Phase::Enter {
                c.key(f.name);
                c.o.bytes(addr, len);
            }
        }
    }
}

/// The most bitmap bytes read to show a dirty bitmap (8 Mi pages).
const BITMAP_MAX: u64 = 1 << 20;

/// `data` of IOMMU_HWPT_GET_DIRTY_BITMAP: after the call, the IOVAs of the
/// dirty pages (bit `i` is the page at `iova + i * page_size`) and how
/// many of how many pages were dirty.
pub(crate) fn dirty_bitmap(c: &mut Call<'_, '_>, f: &F) {
    let addr = f.get(c.entry);
    match c.phase {
        Phase::Enter => {
            c.key(f.name);
            c.o.ptr(addr);
        }
        Phase::Exit if c.out_ok() => {
            let (iova, length, page_size) = (c.e(16, 8), c.e(24, 8), c.e(32, 8));
            if page_size == 0 || addr == 0 {
                return;
            }
            c.key("dirty");
            dirty_iovas(c.o, addr, iova, length.div_ceil(page_size), page_size);
        }
        Phase::Exit => {}
    }
}

/// `[iova, ...] /* N of M pages */` for a bitmap of `pages` bits at
/// `addr`, bit `i` for `iova + i * page_size`.
pub(crate) fn dirty_iovas(o: &mut Out<'_>, addr: u64, iova: u64, pages: u64, page_size: u64) {
    let bytes = pages.div_ceil(8).min(BITMAP_MAX);
    let mut count = 0u64;
    let mut shown = 0usize;
    let mut chunk = [0u8; 64];
    o.s("[");
    let mut off = 0u64;
    while off < bytes {
        let n = (bytes - off).min(chunk.len() as u64) as usize;
        if !o.mem.read(addr + off, &mut chunk[..n]) {
            break;
        }
        for (i, &b) in chunk[..n].iter().enumerate() {
            for bit in 0..8u64 {
                let page = (off + i as u64) * 8 + bit;
                if b & (1 << bit) == 0 || page >= pages {
                    continue;
                }
                count += 1;
                if shown < o.opts.strsize {
                    if shown > 0 {
                        o.s(", ");
                    }
                    o.hex(iova.wrapping_add(page.wrapping_mul(page_size)));
                } else if shown == o.opts.strsize {
                    o.s(", ...");
                }
                shown += 1;
            }
        }
        off += n as u64;
    }
    o.s("]");
    let more = if pages.div_ceil(8) > bytes { "+" } else { "" };
    o.fmt(format_args!(" /* {count}{more} of {pages} pages */"));
}
