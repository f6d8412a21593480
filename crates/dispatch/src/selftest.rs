//! `IOMMU_TEST_CMD`: decoding of the kernel selftest's mock-driver
//! operations (`drivers/iommu/iommufd/selftest.c`). The engine side lives in
//! `uiommufd_core::selftest`; this file only moves bytes and replies.

use std::sync::Arc;

use uiommufd_abi::test_cmd::{self as t, IommuTestCmd};
use uiommufd_core::dmabuf::{DmaBuf, Exporter};
use uiommufd_core::error::{eopnotsupp, ErrnoExt, Error, Result};
use uiommufd_core::selftest as st;
use uiommufd_core::Errno;

use crate::file::File;
use crate::ucmd::Ucmd;

pub fn execute(u: &mut Ucmd) -> Result<i32> {
    let mut cmd: IommuTestCmd = u.read()?;
    if !u.ctx.release().has_test_op(cmd.op) {
        return Err(eopnotsupp("selftest op unknown to this release"));
    }
    match cmd.op {
        t::IOMMU_TEST_OP_ADD_RESERVED => {
            let c: t::TestAddReserved = cmd.payload_as();
            st::add_reserved(u.ctx, cmd.id, c.start, c.length)?;
        }
        t::IOMMU_TEST_OP_MOCK_DOMAIN | t::IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS => {
            let flags = if cmd.op == t::IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS {
                cmd.payload_as::<t::TestMockDomainFlags>().dev_flags
            } else {
                0
            };
            let pending = st::mock_domain(u.ctx, cmd.id, flags)?;
            let mut c: t::TestMockDomainFlags = cmd.payload_as();
            c.out_stdev_id = pending.stdev_id;
            c.out_hwpt_id = pending.hwpt_id;
            c.out_idev_id = pending.idev_id;
            if cmd.op == t::IOMMU_TEST_OP_MOCK_DOMAIN {
                cmd.set_payload(&t::TestMockDomain {
                    out_stdev_id: c.out_stdev_id,
                    out_hwpt_id: c.out_hwpt_id,
                    out_idev_id: c.out_idev_id,
                });
            } else {
                cmd.set_payload(&c);
            }
            // A failed reply drops `pending`, which unbinds the device.
            u.respond(&cmd)?;
            pending.publish();
        }
        t::IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE => {
            let mut c: t::TestMockDomainReplace = cmd.payload_as();
            c.pt_id = st::mock_domain_replace(u.ctx, cmd.id, c.pt_id)?;
            cmd.set_payload(&c);
            u.respond(&cmd)?;
        }
        t::IOMMU_TEST_OP_MD_CHECK_MAP => {
            let c: t::TestCheckMap = cmd.payload_as();
            st::md_check_map(u.ctx, cmd.id, c.iova, c.length, c.uptr)?;
        }
        t::IOMMU_TEST_OP_MD_CHECK_REFS => {
            let c: t::TestCheckRefs = cmd.payload_as();
            st::md_check_refs(c.uptr, c.length, c.refs)?;
        }
        t::IOMMU_TEST_OP_CREATE_ACCESS => {
            let mut c: t::TestCreateAccess = cmd.payload_as();
            let access = st::create_access(u.ctx, cmd.id, c.flags)?;
            let fd = u
                .host
                .install(Arc::new(File::SelftestAccess(access)), true)
                .map_err(|e| Error::new(e, "no descriptor for the access"))?;
            c.out_access_fd = fd as u32;
            cmd.set_payload(&c);
            if let Err(e) = u.respond(&cmd) {
                u.host.uninstall(fd);
                return Err(e);
            }
        }
        t::IOMMU_TEST_OP_ACCESS_PAGES => {
            let mut c: t::TestAccessPages = cmd.payload_as();
            st::SelftestAccess::check_pages_args(c.length, c.flags)?;
            let access = staccess(u, cmd.id)?;
            let id = access.access_pages(c.iova, c.length, c.uptr, c.flags)?;
            c.out_access_pages_id = id;
            cmd.set_payload(&c);
            if let Err(e) = u.respond(&cmd) {
                access.forget_pages(id);
                return Err(e);
            }
        }
        t::IOMMU_TEST_OP_DESTROY_ACCESS_PAGES => {
            let c: t::TestDestroyAccessPages = cmd.payload_as();
            staccess(u, cmd.id)?.destroy_access_pages(c.access_pages_id)?;
        }
        t::IOMMU_TEST_OP_ACCESS_RW => {
            let c: t::TestAccessRw = cmd.payload_as();
            st::SelftestAccess::check_rw_args(c.length, c.flags)?;
            staccess(u, cmd.id)?.access_rw(c.iova, c.length, c.uptr, c.flags)?;
        }
        t::IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => {
            let c: t::TestAccessReplaceIoas = cmd.payload_as();
            staccess(u, cmd.id)?.replace_ioas(u.ctx, c.ioas_id)?;
        }
        t::IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT => {
            let c: t::TestMemoryLimit = cmd.payload_as();
            st::set_temp_memory_limit(c.limit)?;
        }
        t::IOMMU_TEST_OP_DIRTY => {
            let mut c: t::TestDirty = cmd.payload_as();
            c.out_nr_dirty = st::dirty(u.ctx, cmd.id, c.iova, c.length, c.page_size, c.uptr)?;
            cmd.set_payload(&c);
            u.respond(&cmd)?;
        }
        t::IOMMU_TEST_OP_MD_CHECK_IOTLB => {
            let c: t::TestCheckIotlb = cmd.payload_as();
            st::md_check_iotlb(u.ctx, cmd.id, c.id, c.iotlb)?;
        }
        t::IOMMU_TEST_OP_TRIGGER_IOPF => {
            let c: t::TestTriggerIopf = cmd.payload_as();
            st::trigger_iopf(u.ctx, c.dev_id, c.pasid, c.grpid, c.perm, c.addr)?;
        }
        t::IOMMU_TEST_OP_DEV_CHECK_CACHE => {
            let c: t::TestCheckDevCache = cmd.payload_as();
            st::dev_check_cache(u.ctx, cmd.id, c.id, c.cache)?;
        }
        t::IOMMU_TEST_OP_TRIGGER_VEVENT => {
            let c: t::TestTriggerVevent = cmd.payload_as();
            st::trigger_vevent(u.ctx, c.dev_id)?;
        }
        t::IOMMU_TEST_OP_PASID_ATTACH => {
            let mut c: t::TestPasidAttach = cmd.payload_as();
            c.pt_id = st::pasid_attach(u.ctx, cmd.id, c.pasid, c.pt_id)?;
            cmd.set_payload(&c);
            if let Err(e) = u.respond(&cmd) {
                let _ = st::pasid_detach(u.ctx, cmd.id, c.pasid);
                return Err(e);
            }
        }
        t::IOMMU_TEST_OP_PASID_REPLACE => {
            let mut c: t::TestPasidReplace = cmd.payload_as();
            c.pt_id = st::pasid_replace(u.ctx, cmd.id, c.pasid, c.pt_id)?;
            cmd.set_payload(&c);
            u.respond(&cmd)?;
        }
        t::IOMMU_TEST_OP_PASID_DETACH => {
            let c: t::TestPasidDetach = cmd.payload_as();
            st::pasid_detach(u.ctx, cmd.id, c.pasid)?;
        }
        t::IOMMU_TEST_OP_PASID_CHECK_HWPT => {
            let c: t::TestPasidCheck = cmd.payload_as();
            st::pasid_check_hwpt(u.ctx, cmd.id, c.pasid, c.hwpt_id)?;
        }
        t::IOMMU_TEST_OP_DMABUF_GET => {
            // `iommufd_test_dmabuf_get`. The descriptor is the op's result,
            // as the selftests expect (7.3.4 returns 0 instead, leaving the
            // new descriptor unknown to the caller: a kernel bug,
            // docs/CONFORMANCE.md).
            let c: t::TestDmabufGet = cmd.payload_as();
            let buf = DmaBuf::selftest(u64::from(c.length)).ctx("bad dma-buf length")?;
            let cloexec = c.open_flags & libc::O_CLOEXEC as u32 != 0;
            let fd = u
                .host
                .install(Arc::new(File::DmaBuf(buf)), cloexec)
                .map_err(|e| Error::new(e, "no descriptor for the dma-buf"))?;
            return Ok(fd);
        }
        t::IOMMU_TEST_OP_DMABUF_REVOKE => {
            // `iommufd_test_dmabuf_revoke`: `dma_buf_get` (EBADF, EINVAL for
            // a file that is no dma-buf), the selftest's own buffers only.
            let c: t::TestDmabufRevoke = cmd.payload_as();
            let buf = dmabuf_of(u, c.dmabuf_fd)?;
            if buf.exporter() != Exporter::Selftest {
                return Err(eopnotsupp("not a selftest dma-buf"));
            }
            buf.set_revoked(c.revoked != 0);
        }
        _ => return Err(eopnotsupp("unknown or unsupported selftest op")),
    }
    Ok(0)
}

/// `dma_buf_get(fd)`: the dma-buf behind descriptor `fd` (`EBADF` if it is
/// not open, `EINVAL` if it is not a dma-buf).
pub(crate) fn dmabuf_of(u: &Ucmd, fd: i32) -> Result<Arc<DmaBuf>> {
    match u.host.get(fd).as_deref() {
        Some(File::DmaBuf(b)) => Ok(Arc::clone(b)),
        Some(_) => Err(Error::new(Errno::EINVAL, "not a dma-buf")),
        None if u.host.fd_is_open(fd) => Err(Error::new(Errno::EINVAL, "not a dma-buf")),
        None => Err(Error::new(Errno::EBADF, "no such descriptor")),
    }
}

/// `iommufd_access_get`: the selftest access behind descriptor `fd`
/// (`EBADFD` if it is anything else).
fn staccess(u: &Ucmd, fd: u32) -> Result<Arc<st::SelftestAccess>> {
    match u.host.get(fd as i32).as_deref() {
        Some(File::SelftestAccess(a)) => Ok(Arc::clone(a)),
        _ => Err(Error::new(Errno::EBADFD, "not a test access descriptor")),
    }
}
