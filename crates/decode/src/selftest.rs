//! `IOMMU_TEST_CMD` (`drivers/iommu/iommufd/iommufd_test.h`): the op, then
//! the members of the op's union member inline (`{size=72,
//! op=MOCK_DOMAIN, id=1} => {out_stdev_id=2, out_hwpt_id=3,
//! out_idev_id=1}`).

use core::mem::size_of;

use uiommufd_abi::test_cmd::*;

use crate::class::{IOMMUFD, TEST};
use crate::fields;
use crate::ioctl::{Arg, Call, Cmd};
use crate::out::{Fmt::*, Names, F};

pub(crate) const OPS: Names = &[
    (IOMMU_TEST_OP_ADD_RESERVED as u64, "ADD_RESERVED"),
    (IOMMU_TEST_OP_MOCK_DOMAIN as u64, "MOCK_DOMAIN"),
    (IOMMU_TEST_OP_MD_CHECK_MAP as u64, "MD_CHECK_MAP"),
    (IOMMU_TEST_OP_MD_CHECK_REFS as u64, "MD_CHECK_REFS"),
    (IOMMU_TEST_OP_CREATE_ACCESS as u64, "CREATE_ACCESS"),
    (IOMMU_TEST_OP_DESTROY_ACCESS_PAGES as u64, "DESTROY_ACCESS_PAGES"),
    (IOMMU_TEST_OP_ACCESS_PAGES as u64, "ACCESS_PAGES"),
    (IOMMU_TEST_OP_ACCESS_RW as u64, "ACCESS_RW"),
    (IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT as u64, "SET_TEMP_MEMORY_LIMIT"),
    (IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE as u64, "MOCK_DOMAIN_REPLACE"),
    (IOMMU_TEST_OP_ACCESS_REPLACE_IOAS as u64, "ACCESS_REPLACE_IOAS"),
    (IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS as u64, "MOCK_DOMAIN_FLAGS"),
    (IOMMU_TEST_OP_DIRTY as u64, "DIRTY"),
    (IOMMU_TEST_OP_MD_CHECK_IOTLB as u64, "MD_CHECK_IOTLB"),
    (IOMMU_TEST_OP_TRIGGER_IOPF as u64, "TRIGGER_IOPF"),
    (IOMMU_TEST_OP_DEV_CHECK_CACHE as u64, "DEV_CHECK_CACHE"),
    (IOMMU_TEST_OP_TRIGGER_VEVENT as u64, "TRIGGER_VEVENT"),
    (IOMMU_TEST_OP_PASID_ATTACH as u64, "PASID_ATTACH"),
    (IOMMU_TEST_OP_PASID_REPLACE as u64, "PASID_REPLACE"),
    (IOMMU_TEST_OP_PASID_DETACH as u64, "PASID_DETACH"),
    (IOMMU_TEST_OP_PASID_CHECK_HWPT as u64, "PASID_CHECK_HWPT"),
    (IOMMU_TEST_OP_DMABUF_GET as u64, "DMABUF_GET"),
    (IOMMU_TEST_OP_DMABUF_REVOKE as u64, "DMABUF_REVOKE"),
];

const DEV_FLAGS: Names = &[
    (MOCK_FLAGS_DEVICE_NO_DIRTY as u64, "NO_DIRTY"),
    (MOCK_FLAGS_DEVICE_HUGE_IOVA as u64, "HUGE_IOVA"),
    (MOCK_FLAGS_DEVICE_PASID as u64, "PASID"),
];
const ACCESS_CREATE_FLAGS: Names = &[(MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES as u64, "NEEDS_PIN_PAGES")];
const ACCESS_PAGES_FLAGS: Names = &[(MOCK_FLAGS_ACCESS_WRITE as u64, "WRITE"), (MOCK_FLAGS_ACCESS_SYZ as u64, "SYZ")];
const ACCESS_RW_FLAGS: Names =
    &[(MOCK_ACCESS_RW_WRITE as u64, "WRITE"), (MOCK_ACCESS_RW_SLOW_PATH as u64, "SLOW_PATH")];
/// `enum iommu_hwpt_pgfault_perm`.
pub(crate) const PERMS: Names = &[
    (uiommufd_abi::IOMMU_PGFAULT_PERM_READ as u64, "READ"),
    (uiommufd_abi::IOMMU_PGFAULT_PERM_WRITE as u64, "WRITE"),
    (uiommufd_abi::IOMMU_PGFAULT_PERM_EXEC as u64, "EXEC"),
    (uiommufd_abi::IOMMU_PGFAULT_PERM_PRIV as u64, "PRIV"),
];

fn open_flags(o: &mut crate::out::Out<'_>, v: u64) {
    crate::io::open_flags(o, v as i32);
}

/// The union member of `op` (offsets within it).
fn member(op: u32) -> &'static [F] {
    match op {
        IOMMU_TEST_OP_ADD_RESERVED => fields!(TestAddReserved { start: u64 = Hex, length: u64 = Hex }),
        IOMMU_TEST_OP_MOCK_DOMAIN => fields!(TestMockDomain {
            out_stdev_id: u32 = Out(&Dec),
            out_hwpt_id: u32 = Out(&Dec),
            out_idev_id: u32 = Out(&Dec),
        }),
        IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS => fields!(TestMockDomainFlags {
            out_stdev_id: u32 = Out(&Dec),
            out_hwpt_id: u32 = Out(&Dec),
            out_idev_id: u32 = Out(&Dec),
            dev_flags: u32 = Flags(DEV_FLAGS),
        }),
        IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE => fields!(TestMockDomainReplace { pt_id: u32 = Dec }),
        IOMMU_TEST_OP_MD_CHECK_MAP => fields!(TestCheckMap { iova: u64 = Hex, length: u64 = Hex, uptr: u64 = Ptr }),
        IOMMU_TEST_OP_MD_CHECK_REFS => {
            fields!(TestCheckRefs { length: u64 = Hex, uptr: u64 = Ptr, refs: u32 = Dec, __pad: u32 = Rsv })
        }
        IOMMU_TEST_OP_CREATE_ACCESS => {
            fields!(TestCreateAccess { out_access_fd: u32 = Out(&Signed), flags: u32 = Flags(ACCESS_CREATE_FLAGS) })
        }
        IOMMU_TEST_OP_DESTROY_ACCESS_PAGES => fields!(TestDestroyAccessPages { access_pages_id: u32 = Dec }),
        IOMMU_TEST_OP_ACCESS_PAGES => fields!(TestAccessPages {
            flags: u32 = Flags(ACCESS_PAGES_FLAGS),
            out_access_pages_id: u32 = Out(&Dec),
            iova: u64 = Hex,
            length: u64 = Hex,
            uptr: u64 = Ptr,
        }),
        IOMMU_TEST_OP_ACCESS_RW => fields!(TestAccessRw {
            iova: u64 = Hex,
            length: u64 = Hex,
            uptr: u64 = Ptr,
            flags: u32 = Flags(ACCESS_RW_FLAGS),
            __pad: u32 = Rsv,
        }),
        IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT => fields!(TestMemoryLimit { limit: u32 = Dec }),
        IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => fields!(TestAccessReplaceIoas { ioas_id: u32 = Dec }),
        IOMMU_TEST_OP_DIRTY => fields!(TestDirty {
            flags: u32 = Hex,
            __pad: u32 = Rsv,
            iova: u64 = Hex,
            length: u64 = Hex,
            page_size: u64 = Hex,
            uptr: u64 = Ptr,
            out_nr_dirty: u64 = Out(&Dec),
        }),
        IOMMU_TEST_OP_MD_CHECK_IOTLB => fields!(TestCheckIotlb { id: u32 = Dec, iotlb: u32 = Hex }),
        IOMMU_TEST_OP_TRIGGER_IOPF => fields!(TestTriggerIopf {
            dev_id: u32 = Dec,
            pasid: u32 = Dec,
            grpid: u32 = Dec,
            perm: u32 = Flags(PERMS),
            addr: u64 = Hex,
        }),
        IOMMU_TEST_OP_DEV_CHECK_CACHE => fields!(TestCheckDevCache { id: u32 = Dec, cache: u32 = Hex }),
        IOMMU_TEST_OP_TRIGGER_VEVENT => fields!(TestTriggerVevent { dev_id: u32 = Dec }),
        IOMMU_TEST_OP_PASID_ATTACH => fields!(TestPasidAttach { pasid: u32 = Dec, pt_id: u32 = Dec }),
        IOMMU_TEST_OP_PASID_REPLACE => fields!(TestPasidReplace { pasid: u32 = Dec, pt_id: u32 = Dec }),
        IOMMU_TEST_OP_PASID_DETACH => fields!(TestPasidDetach { pasid: u32 = Dec }),
        IOMMU_TEST_OP_PASID_CHECK_HWPT => fields!(TestPasidCheck { pasid: u32 = Dec, hwpt_id: u32 = Dec }),
        IOMMU_TEST_OP_DMABUF_GET => fields!(TestDmabufGet { length: u32 = Hex, open_flags: u32 = With(open_flags) }),
        IOMMU_TEST_OP_DMABUF_REVOKE => fields!(TestDmabufRevoke { dmabuf_fd: i32 = Signed, revoked: u32 = Dec }),
        _ => &[],
    }
}

/// Every op's member, for the layout test.
#[cfg(test)]
pub(crate) fn members() -> impl Iterator<Item = (u64, &'static [F])> {
    OPS.iter().map(|&(op, _)| (op, member(op as u32)))
}

/// The union: the op's member, its fields inline.
fn payload(c: &mut Call<'_, '_>, _f: &F) {
    let op = c.e(4, 4) as u32;
    let base = core::mem::offset_of!(IommuTestCmd, payload);
    c.fields(member(op), base);
}

pub(crate) const CMDS: &[Cmd] = &[Cmd {
    request: IOMMU_TEST_CMD,
    name: "IOMMU_TEST_CMD",
    class: IOMMUFD | TEST,
    arg: Arg::Struct {
        len: size_of::<IommuTestCmd>(),
        fields: fields!(IommuTestCmd {
            size: u32 = Dec,
            op: u32 = Enum(OPS),
            id: u32 = Dec,
            __reserved: u32 = Rsv,
            payload: [u64; 6] = Custom(payload),
            last: u32 = Rsv,
            __pad: u32 = Rsv,
        }),
        extra: None,
    },
}];
